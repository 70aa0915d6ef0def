"""CUDA for the TensorRT runner: device discovery that never crashes, buffers, one stream, events, graphs.

Three layers, each usable without the next:

* ``probe()`` finds CUDA devices and never raises, never crashes: it asks cuda-python, then pycuda, then the
  driver library itself (``libcuda.so.1`` through ctypes, discovery only). It returns the devices found, or
  the reason there are none (no driver, a cuda-python built for a newer CUDA than the driver, ...).
  Nothing may touch a TensorRT object before this found a device: tensorrt-lean without a driver
  segfaults on its first call.
* ``open_cuda()`` opens one device through a Python binding: cuda-python (``from cuda.bindings import
  runtime``, NVIDIA's choice in its TensorRT samples since 10.14), or pycuda where that is what the device
  has. Both are imported here, lazily, never at module import.
* ``Cuda`` owns what it allocates: device buffers, pinned (optionally mapped) host buffers, streams,
  events and CUDA graphs; ``close()`` frees all of it.

Jetson: the GPU is integrated (``cudaDevAttrIntegrated``) and shares DRAM with the CPU, so a mapped pinned
host buffer (``cudaHostAlloc(..., cudaHostAllocMapped)``) is directly readable by the GPU: no H2D/D2H copies
at all (zero-copy). On Xavier and Orin the GPU snoops the CPU caches (I/O coherency), so the CPU side stays
cached too. On a discrete GPU the runner keeps the classic pinned staging buffer + device buffer + async
copies on one stream, as NVIDIA's samples do.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from edgemm.errors import EdgemmError

log = logging.getLogger(__name__)

INSTALL_HINT = ("install the CUDA Python bindings of the device's CUDA version, e.g. `pip install "
                "'cuda-python>=12.6,<12.7'` on JetPack 6 (CUDA 12.6), 'cuda-python>=13.0,<13.1' on JetPack 7.0 "
                "(deploy/jetson/install.sh picks it)")
# PyPI's aarch64 cuda-python wheels are built for ARM servers (SBSA), not for L4T: on a Jetson they may import
# and then fail at their first call. pycuda (built on the device) is the fallback.
TEGRA_HINT = ("on a Jetson, PyPI's aarch64 cuda-python wheels are built for ARM servers (SBSA) and may fail on "
              "L4T: build cuda-python from source against JetPack's CUDA (as jetson-containers does), or install "
              "pycuda, which builds on the device: `PATH=/usr/local/cuda/bin:$PATH pip install pycuda`")
BINDINGS = ("cuda-python", "pycuda")


class CudaError(EdgemmError):
    """A CUDA call failed (out of memory, a bad launch, a lost device): one line naming the call."""


# --------------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    compute_capability: tuple[int, int]
    multiprocessors: int
    total_memory: int  # bytes; on Jetson this is the shared system DRAM
    integrated: bool  # Jetson / Tegra: host and device share the same physical memory
    binding: str  # what found it: cuda-python, pycuda, or libcuda (discovery only)
    driver_version: int | None = None  # CUDA version the driver supports, e.g. 12060

    @property
    def cc(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"

    @property
    def sm(self) -> str:
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"

    def describe(self) -> str:
        kind = "integrated" if self.integrated else f"{self.total_memory / 2**30:.0f} GiB"
        return f"{self.name} ({self.sm}, {self.multiprocessors} SMs, {kind})"

    def to_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "compute_capability": self.cc,
                "multiprocessors": self.multiprocessors, "total_memory_mb": self.total_memory // 2**20,
                "integrated": self.integrated, "binding": self.binding,
                "cuda_driver": _fmt_cuda_version(self.driver_version)}


@dataclass(frozen=True)
class Probe:
    devices: tuple[DeviceInfo, ...] = ()
    reason: str = ""  # why there is no usable device or binding; "" when all is well
    binding: str | None = None  # the Python binding that works here (None: none does)

    @property
    def found(self) -> bool:
        return bool(self.devices)

    def device(self, index: int = 0) -> DeviceInfo | None:
        return self.devices[index] if 0 <= index < len(self.devices) else None


def _fmt_cuda_version(v: int | None) -> str | None:
    if not v:
        return None
    return f"{v // 1000}.{(v % 1000) // 10}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _import_cudart():
    """The CUDA runtime module of cuda-python (``cuda.bindings.runtime`` since 12.6, ``cuda.cudart`` before)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # cuda-python < 12.6
    return cudart


def _err_name(rt, err) -> str:
    try:
        e, name = rt.cudaGetErrorName(err)
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - only used to word a message
        return str(err)


def _probe_cuda_python() -> Probe:
    try:
        rt = _import_cudart()
    except Exception as exc:  # ImportError, or a broken install
        return Probe(reason=f"cuda-python is not installed ({_first_line(exc)})")
    try:
        # cuda-python 12.x raises RuntimeError("Failed to dlopen libcuda.so.1") without a driver; 13.x
        # returns cudaErrorInsufficientDriver. Either way: a reason, never a crash.
        err, count = rt.cudaGetDeviceCount()
    except Exception as exc:  # noqa: BLE001
        return Probe(reason=f"cuda-python: cudaGetDeviceCount failed ({_first_line(exc)})")
    if err != rt.cudaError_t.cudaSuccess:
        name = _err_name(rt, err)
        reason = f"cuda-python: cudaGetDeviceCount returned {name}"
        if name == "cudaErrorInsufficientDriver":
            driver = rt.cudaDriverGetVersion()[1]
            runtime = rt.cudaRuntimeGetVersion()[1]
            if not driver:
                reason += " (no NVIDIA driver is loaded on this machine)"
            else:
                reason += (f" (the driver supports CUDA {_fmt_cuda_version(driver)}, these bindings need CUDA "
                           f"{_fmt_cuda_version(runtime)}: {INSTALL_HINT})")
        elif name == "cudaErrorNoDevice":
            reason += " (the driver sees no CUDA device)"
        return Probe(reason=reason)
    devices = []
    A = rt.cudaDeviceAttr
    try:
        driver = rt.cudaDriverGetVersion()[1]
        for i in range(count):
            def attr(a, i=i):
                e, v = rt.cudaDeviceGetAttribute(a, i)
                if e != rt.cudaError_t.cudaSuccess:
                    raise RuntimeError(f"cudaDeviceGetAttribute({a}) returned {_err_name(rt, e)}")
                return int(v)

            e, prop = rt.cudaGetDeviceProperties(i)
            if e != rt.cudaError_t.cudaSuccess:
                raise RuntimeError(f"cudaGetDeviceProperties returned {_err_name(rt, e)}")
            name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
            devices.append(DeviceInfo(
                index=i, name=name.split("\x00", 1)[0].strip(),
                compute_capability=(attr(A.cudaDevAttrComputeCapabilityMajor), attr(A.cudaDevAttrComputeCapabilityMinor)),
                multiprocessors=attr(A.cudaDevAttrMultiProcessorCount), total_memory=int(prop.totalGlobalMem),
                integrated=bool(attr(A.cudaDevAttrIntegrated)), binding="cuda-python", driver_version=driver))
    except Exception as exc:  # noqa: BLE001
        return Probe(reason=f"cuda-python: reading the device properties failed ({_first_line(exc)})")
    return Probe(devices=tuple(devices), binding="cuda-python")


def _probe_pycuda() -> Probe:
    try:
        import pycuda.driver as drv
    except Exception as exc:  # noqa: BLE001 - ImportError, or a pycuda built against a missing libcuda
        return Probe(reason=f"pycuda is not installed ({_first_line(exc)})")
    try:
        drv.init()
        devices = []
        for i in range(drv.Device.count()):
            d = drv.Device(i)
            devices.append(DeviceInfo(
                index=i, name=d.name(), compute_capability=tuple(d.compute_capability()),
                multiprocessors=d.get_attribute(drv.device_attribute.MULTIPROCESSOR_COUNT),
                total_memory=int(d.total_memory()), integrated=bool(d.get_attribute(drv.device_attribute.INTEGRATED)),
                binding="pycuda", driver_version=drv.get_driver_version()))
    except Exception as exc:  # noqa: BLE001
        return Probe(reason=f"pycuda: {_first_line(exc)}")
    if not devices:
        return Probe(reason="pycuda: the driver sees no CUDA device")
    return Probe(devices=tuple(devices), binding="pycuda")


# CUdevice_attribute values (cuda.h): stable across CUDA versions.
_CU_MULTIPROCESSOR_COUNT, _CU_INTEGRATED, _CU_CC_MAJOR, _CU_CC_MINOR = 16, 18, 75, 76


def _probe_libcuda() -> Probe:
    """Ask the driver itself through ctypes: finds devices without any Python CUDA binding (not enough to run)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        return Probe(reason=f"libcuda.so.1 cannot be loaded: no NVIDIA driver ({_first_line(exc)})")

    def call(fn, *args):
        r = getattr(lib, fn)(*args)
        if r != 0:
            name = ctypes.c_char_p()
            try:
                lib.cuGetErrorName(r, ctypes.byref(name))
                label = name.value.decode() if name.value else str(r)
            except Exception:  # noqa: BLE001
                label = str(r)
            raise RuntimeError(f"{fn} returned {label}")

    try:
        call("cuInit", 0)
        count, driver = ctypes.c_int(), ctypes.c_int()
        call("cuDriverGetVersion", ctypes.byref(driver))
        call("cuDeviceGetCount", ctypes.byref(count))
        devices = []
        for i in range(count.value):
            dev = ctypes.c_int()
            call("cuDeviceGet", ctypes.byref(dev), i)
            buf = ctypes.create_string_buffer(256)
            call("cuDeviceGetName", buf, 256, dev)

            def attr(a, dev=dev):
                v = ctypes.c_int()
                call("cuDeviceGetAttribute", ctypes.byref(v), a, dev)
                return v.value

            mem = ctypes.c_size_t()
            call("cuDeviceTotalMem_v2", ctypes.byref(mem), dev)
            devices.append(DeviceInfo(
                index=i, name=buf.value.decode(errors="replace"), compute_capability=(attr(_CU_CC_MAJOR), attr(_CU_CC_MINOR)),
                multiprocessors=attr(_CU_MULTIPROCESSOR_COUNT), total_memory=mem.value,
                integrated=bool(attr(_CU_INTEGRATED)), binding="libcuda", driver_version=driver.value))
    except Exception as exc:  # noqa: BLE001
        return Probe(reason=f"libcuda: {_first_line(exc)}")
    if not devices:
        return Probe(reason="libcuda: the driver sees no CUDA device")
    return Probe(devices=tuple(devices))


def is_tegra() -> bool:
    """A Jetson (L4T): the release file JetPack installs is there."""
    return os.path.exists("/etc/nv_tegra_release")


def binding_fix(devices=(), tegra: bool | None = None) -> str:
    """What to install when no Python CUDA binding works (the Jetson-specific advice on Jetson)."""
    tegra = (any(d.integrated for d in devices) or is_tegra()) if tegra is None else tegra
    return f"{INSTALL_HINT}; {TEGRA_HINT}" if tegra else INSTALL_HINT


_PROBES = {"cuda-python": _probe_cuda_python, "pycuda": _probe_pycuda}


@functools.lru_cache(maxsize=None)
def _probe_cached(order: tuple[str, ...]) -> Probe:
    return first_working(order, _PROBES, _probe_libcuda)


def first_working(order, probes, driver_probe) -> Probe:
    """The first binding in order that finds a device. Every binding is tried: one that imports but fails
    its first call (cuda-python's SBSA wheel on L4T) does not hide a pycuda that works."""
    reasons = []
    for binding in order:
        p = probes[binding]()
        if p.found:
            return p
        reasons.append(p.reason)
    # No binding works. Ask the driver directly, so that the message can tell "no GPU" from "GPU, wrong binding".
    drv = driver_probe()
    if drv.found:
        names = ", ".join(d.describe() for d in drv.devices)
        return Probe(devices=drv.devices, reason=f"CUDA device {names} found, but no usable Python CUDA binding: "
                                                 f"{'; '.join(reasons)}. Fix: {binding_fix(drv.devices)}")
    # The driver's own word adds something only when no binding could even ask it.
    if all("is not installed" in r for r in reasons):
        reasons.append(drv.reason)
    return Probe(reason="; ".join(reasons))


def probe(binding: str | None = None, refresh: bool = False) -> Probe:
    """Find CUDA devices. Never raises and never touches TensorRT; the result is cached per process."""
    if binding is not None and binding not in BINDINGS:
        raise EdgemmError(f"CUDA binding: {binding} | Unknown; expected one of {', '.join(BINDINGS)}.")
    order = (binding,) if binding else BINDINGS
    if refresh:
        _probe_cached.cache_clear()
    return _probe_cached(order)


def require_device(index: int = 0, what: str = "This backend", binding: str | None = None) -> DeviceInfo:
    """The device to run on, with a usable binding, or one EdgemmError saying why there is none."""
    p = probe(binding)
    if not p.found:
        raise EdgemmError(f"CUDA device | None found ({p.reason}). {what} needs an NVIDIA GPU: run it on the "
                          "Jetson, or use --backend onnxruntime here.")
    if p.binding is None:
        raise EdgemmError(f"CUDA binding | {p.reason}")
    dev = p.device(index)
    if dev is None:
        raise EdgemmError(f"CUDA device: {index} | Not present; this machine has {len(p.devices)} "
                          f"({', '.join(d.describe() for d in p.devices)}).")
    return dev


# --------------------------------------------------------------------------------------------------
# Resources
# --------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class DeviceBuffer:
    ptr: int
    nbytes: int


@dataclass(eq=False)
class HostBuffer:
    """Pinned host memory. ``device_ptr`` is set when it is mapped into the GPU's address space (zero-copy)."""

    ptr: int
    nbytes: int
    raw: np.ndarray  # uint8 view of the whole buffer (valid until the Cuda that made it is closed)
    device_ptr: int | None = None
    _owner: object = field(default=None, repr=False)  # pycuda keeps the allocation alive here

    def view(self, dtype, shape) -> np.ndarray:
        """A typed view of the first bytes of the buffer, shaped as given."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize > self.nbytes:
            raise CudaError(f"Host buffer | {count * dtype.itemsize} bytes asked of a {self.nbytes}-byte buffer.")
        return self.raw[: count * dtype.itemsize].view(dtype).reshape(shape)


@dataclass(eq=False)
class Stream:
    handle: int  # cudaStream_t as an int: what TensorRT's execute_async_v3 takes
    obj: object = field(repr=False, default=None)


@dataclass(eq=False)
class Event:
    obj: object = field(repr=False, default=None)


@dataclass(eq=False)
class CudaGraph:
    graph: object = field(repr=False, default=None)
    exec: object = field(repr=False, default=None)


class _CudaPythonApi:
    """The runtime API through cuda-python (``cuda.bindings.runtime``), as NVIDIA's TensorRT samples use it."""

    name = "cuda-python"
    supports_graphs = True

    def __init__(self, device: int, spin: bool = False):
        self.rt = _import_cudart()
        self.device = device
        self.check(self.rt.cudaSetDevice(device), f"cudaSetDevice({device})")
        if spin:
            # trtexec --useSpinWait: the device's wait policy must be "spin". Left automatic, the driver may
            # pick blocking sync on Tegra (low-power heuristic) and every wait sleeps. On a device already
            # initialised the runtime overwrites the previous flags (cudaSetDeviceFlags' documented contract);
            # read them back to be sure.
            rt = self.rt
            self.check(rt.cudaSetDeviceFlags(rt.cudaDeviceScheduleSpin), "cudaSetDeviceFlags(cudaDeviceScheduleSpin)")
            flags = int(self.check(rt.cudaGetDeviceFlags(), "cudaGetDeviceFlags"))
            if flags & int(rt.cudaDeviceScheduleMask) != int(rt.cudaDeviceScheduleSpin):
                raise CudaError(f"CUDA: cudaSetDeviceFlags | The device kept scheduling flags {flags:#x}; "
                                "expected cudaDeviceScheduleSpin for spin-wait.")

    def smoke_test(self) -> None:
        """One real allocation: a binding that imports but cannot work here (wrong platform) fails now."""
        self.free(self.malloc(256))

    def check(self, result, what: str):
        err, rest = result[0], result[1:]
        if err != self.rt.cudaError_t.cudaSuccess:
            raise CudaError(f"CUDA: {what} | Failed with {_err_name(self.rt, err)}.")
        return rest[0] if len(rest) == 1 else (rest or None)

    def make_current(self) -> None:
        # The runtime API keeps the current device per host thread.
        self.check(self.rt.cudaSetDevice(self.device), f"cudaSetDevice({self.device})")

    def malloc(self, nbytes: int) -> DeviceBuffer:
        return DeviceBuffer(int(self.check(self.rt.cudaMalloc(nbytes), f"cudaMalloc({nbytes} bytes)")), nbytes)

    def free(self, buf: DeviceBuffer) -> None:
        self.check(self.rt.cudaFree(buf.ptr), "cudaFree")

    def host_alloc(self, nbytes: int, mapped: bool) -> HostBuffer:
        flags = self.rt.cudaHostAllocMapped if mapped else self.rt.cudaHostAllocDefault
        ptr = int(self.check(self.rt.cudaHostAlloc(nbytes, flags), f"cudaHostAlloc({nbytes} bytes)"))
        raw = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr))
        dptr = None
        if mapped:  # with unified addressing (every 64-bit platform) no cudaDeviceMapHost flag is needed
            dptr = int(self.check(self.rt.cudaHostGetDevicePointer(ptr, 0), "cudaHostGetDevicePointer"))
        return HostBuffer(ptr=ptr, nbytes=nbytes, raw=raw, device_ptr=dptr)

    def host_free(self, buf: HostBuffer) -> None:
        self.check(self.rt.cudaFreeHost(buf.ptr), "cudaFreeHost")

    def stream(self) -> Stream:
        s = self.check(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")
        return Stream(handle=int(s), obj=s)

    def stream_sync(self, s: Stream) -> None:
        self.check(self.rt.cudaStreamSynchronize(s.obj), "cudaStreamSynchronize")

    def stream_destroy(self, s: Stream) -> None:
        self.check(self.rt.cudaStreamDestroy(s.obj), "cudaStreamDestroy")

    def event(self, blocking: bool) -> Event:
        # Blocking sync puts the waiting CPU thread to sleep instead of spinning: on a 6-core Jetson the CPU
        # is needed for decoding and pre-processing (trtexec does the same unless --useSpinWait).
        flags = self.rt.cudaEventBlockingSync if blocking else self.rt.cudaEventDefault
        return Event(self.check(self.rt.cudaEventCreateWithFlags(flags), "cudaEventCreateWithFlags"))

    def event_record(self, e: Event, s: Stream) -> None:
        self.check(self.rt.cudaEventRecord(e.obj, s.obj), "cudaEventRecord")

    def event_sync(self, e: Event) -> None:
        self.check(self.rt.cudaEventSynchronize(e.obj), "cudaEventSynchronize")

    def elapsed_ms(self, start: Event, end: Event) -> float:
        return float(self.check(self.rt.cudaEventElapsedTime(start.obj, end.obj), "cudaEventElapsedTime"))

    def event_destroy(self, e: Event) -> None:
        self.check(self.rt.cudaEventDestroy(e.obj), "cudaEventDestroy")

    def htod_async(self, dst: int, src: HostBuffer, nbytes: int, s: Stream) -> None:
        self.check(self.rt.cudaMemcpyAsync(dst, src.ptr, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, s.obj),
                   f"cudaMemcpyAsync(host to device, {nbytes} bytes)")

    def dtoh_async(self, dst: HostBuffer, src: int, nbytes: int, s: Stream) -> None:
        self.check(self.rt.cudaMemcpyAsync(dst.ptr, src, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, s.obj),
                   f"cudaMemcpyAsync(device to host, {nbytes} bytes)")

    def begin_capture(self, s: Stream) -> None:
        # Thread-local mode: other threads of the pipeline may keep calling CUDA while this one captures.
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self.check(self.rt.cudaStreamBeginCapture(s.obj, mode), "cudaStreamBeginCapture")

    def end_capture(self, s: Stream) -> CudaGraph:
        graph = self.check(self.rt.cudaStreamEndCapture(s.obj), "cudaStreamEndCapture")
        try:
            exe = self.check(self.rt.cudaGraphInstantiateWithFlags(graph, 0), "cudaGraphInstantiateWithFlags")
        except CudaError:
            self.rt.cudaGraphDestroy(graph)
            raise
        return CudaGraph(graph=graph, exec=exe)

    def graph_launch(self, g: CudaGraph, s: Stream) -> None:
        self.check(self.rt.cudaGraphLaunch(g.exec, s.obj), "cudaGraphLaunch")

    def graph_destroy(self, g: CudaGraph) -> None:
        self.check(self.rt.cudaGraphExecDestroy(g.exec), "cudaGraphExecDestroy")
        self.check(self.rt.cudaGraphDestroy(g.graph), "cudaGraphDestroy")

    def close(self) -> None:
        pass


_CU_CTX_SCHED_SPIN = 0x01  # CUctx_flags (cuda.h)


def _primary_context_spin(device: int) -> None:
    """Spin-wait scheduling for the device's primary context, through the driver (pycuda has no call for it):
    cuDevicePrimaryCtxSetFlags_v2 before the context is retained, as cudaSetDeviceFlags does for the runtime."""
    lib = ctypes.CDLL("libcuda.so.1")
    dev = ctypes.c_int()
    for fn, args in (("cuDeviceGet", (ctypes.byref(dev), device)),
                     ("cuDevicePrimaryCtxSetFlags_v2", (dev, ctypes.c_uint(_CU_CTX_SCHED_SPIN)))):
        r = getattr(lib, fn)(*args)
        if r != 0:
            raise CudaError(f"CUDA: {fn} | Failed with CUresult {r}; spin-wait cannot be set.")


class _PyCudaApi:
    """The driver API through pycuda (built from source on Jetson), sharing the device's primary context with
    TensorRT. No CUDA graph capture here: use cuda-python for that."""

    name = "pycuda"
    supports_graphs = False

    def __init__(self, device: int, spin: bool = False):
        import pycuda.driver as drv

        self.drv = drv
        drv.init()
        if spin:
            _primary_context_spin(device)
        self.ctx = drv.Device(device).retain_primary_context()
        self.ctx.push()
        self._owner_thread = threading.get_ident()
        self._pushed = threading.local()
        self._pushed.value = True

    def smoke_test(self) -> None:
        self.free(self.malloc(256))

    def _guard(self, what: str, fn, *args):
        try:
            return fn(*args)
        except self.drv.Error as exc:
            raise CudaError(f"CUDA: {what} | Failed with {_first_line(exc)}.") from exc

    def make_current(self) -> None:
        # pycuda's current context is per thread: push the primary context once on each new thread.
        if not getattr(self._pushed, "value", False):
            self.ctx.push()
            self._pushed.value = True

    def malloc(self, nbytes: int) -> DeviceBuffer:
        alloc = self._guard(f"mem_alloc({nbytes} bytes)", self.drv.mem_alloc, nbytes)
        buf = DeviceBuffer(int(alloc), nbytes)
        buf._alloc = alloc  # keep the pycuda object alive as long as the buffer
        return buf

    def free(self, buf: DeviceBuffer) -> None:
        self._guard("free", buf._alloc.free)

    def host_alloc(self, nbytes: int, mapped: bool) -> HostBuffer:
        flags = self.drv.host_alloc_flags.DEVICEMAP if mapped else 0
        arr = self._guard(f"pagelocked_empty({nbytes} bytes)", self.drv.pagelocked_empty, nbytes, np.uint8, "C", flags)
        dptr = int(arr.base.get_device_pointer()) if mapped else None
        return HostBuffer(ptr=int(arr.ctypes.data), nbytes=nbytes, raw=arr, device_ptr=dptr, _owner=arr)

    def host_free(self, buf: HostBuffer) -> None:
        self._guard("free host", buf._owner.base.free)

    def stream(self) -> Stream:
        s = self._guard("Stream", self.drv.Stream)
        return Stream(handle=int(s.handle), obj=s)

    def stream_sync(self, s: Stream) -> None:
        self._guard("Stream.synchronize", s.obj.synchronize)

    def stream_destroy(self, s: Stream) -> None:
        pass  # pycuda destroys the stream with its object

    def event(self, blocking: bool) -> Event:
        flags = self.drv.event_flags.BLOCKING_SYNC if blocking else 0
        return Event(self._guard("Event", self.drv.Event, flags))

    def event_record(self, e: Event, s: Stream) -> None:
        self._guard("Event.record", e.obj.record, s.obj)

    def event_sync(self, e: Event) -> None:
        self._guard("Event.synchronize", e.obj.synchronize)

    def elapsed_ms(self, start: Event, end: Event) -> float:
        return float(self._guard("Event.time_since", end.obj.time_since, start.obj))

    def event_destroy(self, e: Event) -> None:
        pass

    def htod_async(self, dst: int, src: HostBuffer, nbytes: int, s: Stream) -> None:
        self._guard(f"memcpy_htod_async({nbytes} bytes)", self.drv.memcpy_htod_async, dst, src.raw[:nbytes], s.obj)

    def dtoh_async(self, dst: HostBuffer, src: int, nbytes: int, s: Stream) -> None:
        self._guard(f"memcpy_dtoh_async({nbytes} bytes)", self.drv.memcpy_dtoh_async, dst.raw[:nbytes], src, s.obj)

    def begin_capture(self, s: Stream) -> None:
        raise CudaError("CUDA graphs | Not supported through pycuda here; install cuda-python to capture graphs.")

    end_capture = graph_launch = graph_destroy = begin_capture

    def close(self) -> None:
        if threading.get_ident() == self._owner_thread:
            with contextlib.suppress(Exception):
                self.ctx.pop()


class Cuda:
    """One device through one binding. Owns every buffer, stream, event and graph it made; close() frees them.

    Not thread-safe: one runner uses it from one thread at a time (it may change threads between calls).
    """

    def __init__(self, device: DeviceInfo, binding: str, spin: bool = False):
        self.device = device
        self.binding = binding
        self.spin = spin  # the device's wait policy is spin (set before any work; process-wide for the device)
        api = _CudaPythonApi if binding == "cuda-python" else _PyCudaApi
        self._api = api(device.index, spin)
        self._thread = threading.get_ident()
        self._device_buffers: list[DeviceBuffer] = []
        self._host_buffers: list[HostBuffer] = []
        self._streams: list[Stream] = []
        self._events: list[Event] = []
        self._graphs: list[CudaGraph] = []
        self.closed = False

    @property
    def supports_graphs(self) -> bool:
        return self._api.supports_graphs

    def make_current(self) -> None:
        """Call at the start of each inference: cheap when the thread did not change."""
        tid = threading.get_ident()
        if tid != self._thread:
            self._api.make_current()
            self._thread = tid

    # -- allocation --------------------------------------------------------------------------------
    def device_buffer(self, nbytes: int) -> DeviceBuffer:
        buf = self._api.malloc(max(int(nbytes), 1))
        self._device_buffers.append(buf)
        return buf

    def host_buffer(self, nbytes: int, mapped: bool = False) -> HostBuffer:
        """Pinned host memory; mapped=True also maps it for the GPU (HostBuffer.device_ptr): zero-copy."""
        buf = self._api.host_alloc(max(int(nbytes), 1), mapped)
        self._host_buffers.append(buf)
        return buf

    def stream(self) -> Stream:
        s = self._api.stream()
        self._streams.append(s)
        return s

    def event(self, blocking: bool = False) -> Event:
        e = self._api.event(blocking)
        self._events.append(e)
        return e

    # -- work --------------------------------------------------------------------------------------
    def copy_htod_async(self, dst: DeviceBuffer | int, src: HostBuffer, nbytes: int, stream: Stream) -> None:
        if nbytes:
            self._api.htod_async(dst.ptr if isinstance(dst, DeviceBuffer) else int(dst), src, nbytes, stream)

    def copy_dtoh_async(self, dst: HostBuffer, src: DeviceBuffer | int, nbytes: int, stream: Stream) -> None:
        if nbytes:
            self._api.dtoh_async(dst, src.ptr if isinstance(src, DeviceBuffer) else int(src), nbytes, stream)

    def record(self, event: Event, stream: Stream) -> None:
        self._api.event_record(event, stream)

    def wait(self, event: Event) -> None:
        self._api.event_sync(event)

    def synchronize(self, stream: Stream) -> None:
        self._api.stream_sync(stream)

    def elapsed_ms(self, start: Event, end: Event) -> float:
        return self._api.elapsed_ms(start, end)

    @contextlib.contextmanager
    def capture(self, stream: Stream) -> Iterator[list]:
        """Capture the work enqueued on stream inside the block into a CUDA graph (yielded list gets it).

        Capture always ends, even when the block fails, so the stream is never left capturing.
        """
        self._api.begin_capture(stream)
        out: list[CudaGraph] = []
        try:
            yield out
        except BaseException:
            with contextlib.suppress(Exception):
                g = self._api.end_capture(stream)
                self._api.graph_destroy(g)
            raise
        g = self._api.end_capture(stream)
        self._graphs.append(g)
        out.append(g)

    def launch(self, graph: CudaGraph, stream: Stream) -> None:
        self._api.graph_launch(graph, stream)

    def destroy_graph(self, graph: CudaGraph) -> None:
        if graph in self._graphs:
            self._graphs.remove(graph)
            self._api.graph_destroy(graph)

    # -- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Free everything, in reverse order of dependence. Best effort: one failure does not leak the rest."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self.make_current()
        for s in self._streams:
            with contextlib.suppress(Exception):
                self._api.stream_sync(s)
        for items, fn in ((self._graphs, self._api.graph_destroy), (self._events, self._api.event_destroy),
                          (self._streams, self._api.stream_destroy), (self._host_buffers, self._api.host_free),
                          (self._device_buffers, self._api.free)):
            for item in items:
                try:
                    fn(item)
                except Exception as exc:  # noqa: BLE001 - keep freeing the rest
                    log.debug("CUDA cleanup: %s", exc)
            items.clear()
        self._api.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_cuda(index: int = 0, binding: str | None = None, what: str = "This backend", spin: bool = False) -> Cuda:
    """Open device ``index`` through cuda-python (or pycuda); one EdgemmError when that is impossible.

    The binding the probe found must also work: one real allocation. When it fails (cuda-python's PyPI
    aarch64 wheels are built for ARM servers, not L4T), the next binding that finds the device is used; when
    none works, the error says what to install. ``spin``: busy-wait scheduling for the device (trtexec's
    --useSpinWait), set before any work is queued.
    """
    dev = require_device(index, what=what, binding=binding)
    failures = []
    for name in [dev.binding] + [b for b in BINDINGS if b != dev.binding and binding is None]:
        if name != dev.binding:
            other = probe(name).device(index)
            if other is None:
                continue
            dev = other
        c = None
        try:
            c = Cuda(dev, name, spin=spin)
            c._api.smoke_test()
            if failures:
                log.warning("CUDA: %s failed here (%s); using %s", failures[0][0], failures[0][1], name)
            return c
        except Exception as exc:  # noqa: BLE001 - ImportError, CudaError, a binding's own error type
            failures.append((name, _first_line(exc)))
            if c is not None:
                with contextlib.suppress(Exception):
                    c.close()
    tried = "; ".join(f"{n}: {why}" for n, why in failures)
    raise EdgemmError(f"CUDA binding | {dev.describe()} was found but no binding works with it ({tried}). "
                      f"Fix: {binding_fix([dev])}")
