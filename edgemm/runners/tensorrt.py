"""TensorRT runner: a bundle's engine on the GPU, with the same interface as the ONNX Runtime runner.

Order of things in ``activate()`` is deliberate: a CUDA device is found first (``edgemm.runners.cuda.probe``,
which never crashes), only then is tensorrt imported and touched (tensorrt-lean without a driver segfaults),
then the engine's recorded TensorRT version and GPU are checked against this device, with the exact
``edgemm convert`` command to rebuild when they do not match. Buffers are allocated once, at the profile's
largest shapes; each inference is: copy into pinned memory, H2D, ``execute_async_v3``, D2H, all on one
stream, timed by CUDA events so that ``last_breakdown`` gives trtexec's H2D / GPU compute / D2H split.

On Jetson (integrated GPU, shared DRAM) the I/O tensors can live in mapped pinned memory that the GPU reads
and writes directly: zero-copy, no H2D/D2H at all. But pinned host memory is uncached for the Jetson GPU, so
kernels that read their input more than once (convolutions) can lose more than the copy costs, and then the
time hides in "GPU compute" rather than in H2D. So by default, on an integrated GPU, the first inference runs
both ways (``IO_TRIALS`` each, interleaved) and the faster one is kept; ``io_choice`` and ``describe()`` say
which and by how much. Discrete GPUs always copy. Optional CUDA graph capture removes the per-layer launch
cost (recaptured after an input shape change, as TensorRT requires: one plain enqueue first, then capture).

TensorRT 10.x and 11.x name-based API only (``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``), checked against NVIDIA's samples
(samples/python/common_runtime.py) and Polygraphy's TrtRunner.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
from pathlib import Path
from typing import Mapping

import numpy as np

from edgemm.errors import EdgemmError
from edgemm.lazy import import_optional
from edgemm.runners import cuda
from edgemm.runners.base import BaseRunner, TensorMeta

log = logging.getLogger(__name__)

TENSORRT_HINT = ("TensorRT comes with JetPack: `sudo apt-get install python3-libnvinfer` "
                 "(deploy/jetson/install.sh), or `pip install tensorrt` on x86 and JetPack 7")


# --------------------------------------------------------------------------------------------------
# Pure logic on the recorded engine info (testable anywhere)
# --------------------------------------------------------------------------------------------------


def version_tuple(version: str | None) -> tuple[int, ...]:
    """'10.3.0.30' -> (10, 3, 0): engines are tied to major.minor.patch (the build number does not matter)."""
    if not version:
        return ()
    parts = []
    for p in str(version).split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def rebuild_command(source: str | Path | None) -> str:
    """The command that builds a fresh engine for this device from the bundle's ONNX graphs.

    The new bundle goes next to the source, unless that is inside the installed edgemm package (the
    reference models) or a folder the user cannot write: then into the current folder."""
    src = Path(source) if source else Path("MODEL.edgemm")
    stem, suffix = (src.stem, src.suffix) if src.suffix in (".edgemm", ".onnx") else (src.name, "")
    name = f"{stem}-trt{'.edgemm' if suffix else ''}"
    package = Path(__file__).resolve().parents[1]
    folder = src.resolve().parent
    theirs = package in folder.parents or folder == package or (folder.is_dir() and not os.access(folder, os.W_OK))
    out = Path(name) if theirs else src.with_name(name)
    return f"edgemm convert {shlex.quote(str(src))} -o {shlex.quote(str(out))} --target tensorrt"


def check_engine_compat(info: Mapping | None, trt_version: str, device, rebuild: str, what: str = "engine") -> list[str]:
    """Refuse an engine built for another TensorRT version or GPU; return warnings for softer mismatches.

    TensorRT engines run only on the TensorRT version (major.minor.patch) and the GPU architecture (compute
    capability) they were built for. Same architecture, other model (an Orin Nano engine on an AGX Orin, a
    different SM count): TensorRT warns that performance or even correctness may suffer, so we warn too.
    """
    info = dict(info or {})
    warnings: list[str] = []
    built = info.get("tensorrt_version")
    if built is None:
        warnings.append(f"TensorRT {what}: no TensorRT version recorded; if it fails to load, rebuild it here: {rebuild}")
    elif version_tuple(built) != version_tuple(trt_version):
        raise EdgemmError(f"TensorRT {what} | Built with TensorRT {built}, this device has TensorRT {trt_version}; "
                          f"an engine only runs on the version that built it. Rebuild it here: {rebuild}")
    cc = info.get("compute_capability")
    gpu = info.get("gpu") or "an unrecorded GPU"
    if cc is None:
        warnings.append(f"TensorRT {what}: no GPU recorded; if it fails to load, rebuild it here: {rebuild}")
    elif str(cc) != device.cc:
        raise EdgemmError(f"TensorRT {what} | Built for {gpu} (compute capability {cc}), this device is "
                          f"{device.name} (compute capability {device.cc}); an engine only runs on the GPU "
                          f"architecture it was built for. Rebuild it here: {rebuild}")
    else:
        if info.get("gpu") and info["gpu"] != device.name:
            warnings.append(f"TensorRT {what}: built on {info['gpu']}, running on {device.name} (same architecture "
                            f"{device.cc}); TensorRT does not recommend this. For best speed rebuild here: {rebuild}")
        sms = info.get("multiprocessors")
        if sms and int(sms) != device.multiprocessors:
            warnings.append(f"TensorRT {what}: built for a GPU with {sms} SMs, this one has {device.multiprocessors}; "
                            f"tactics were timed on the other. For best speed rebuild here: {rebuild}")
    return warnings


def make_logger(trt, verbose: bool = False):
    """A TensorRT logger that keeps errors (for one clear EdgemmError) and forwards the rest to logging."""

    class EdgemmTrtLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.warnings: list[str] = []

        def log(self, severity, msg):
            if severity <= trt.ILogger.Severity.ERROR:
                self.errors.append(msg)
                log.debug("TensorRT error: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                self.warnings.append(msg)
                log.debug("TensorRT warning: %s", msg)
            elif verbose:
                log.debug("TensorRT: %s", msg)

        def last_error(self, default: str = "no error message from TensorRT") -> str:
            return self.errors[-1].strip().splitlines()[0] if self.errors else default

    return EdgemmTrtLogger()


def np_dtype(trt, trt_dtype, name: str) -> np.dtype:
    try:
        return np.dtype(trt.nptype(trt_dtype))
    except TypeError as exc:  # BF16, FP8, INT4, FP4 have no numpy type
        raise EdgemmError(f"Tensor: {name} | Has TensorRT type {trt_dtype}, which numpy cannot hold; expected "
                          "float32/float16/int8/int32/int64/uint8/bool I/O (keep graph I/O in those types).") from exc


IO_TRIALS = 5  # inferences per I/O mode when choosing zero-copy or copy on an integrated GPU


def faster_io_mode(zero_copy_ms: list[float], copy_ms: list[float]) -> dict:
    """Which I/O mode to keep from the whole-inference times (H2D + compute + D2H) of each: the lower median;
    on a tie zero-copy (it needs no device buffers)."""
    zc, cp = float(np.median(zero_copy_ms)), float(np.median(copy_ms))
    return {"chosen": "zero-copy" if zc <= cp else "copy", "zero_copy_ms": round(zc, 4), "copy_ms": round(cp, 4),
            "trials": len(zero_copy_ms)}


def _volume(shape) -> int:
    return int(np.prod([int(d) for d in shape], dtype=np.int64)) if len(shape) else 1


# --------------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------------


class TensorRTRunner(BaseRunner):
    """Runs a serialized TensorRT engine (a bundle's ``engine`` entry) on a CUDA GPU.

    engine:      the plan file (path) or its bytes
    engine_info: what was recorded when it was built ({"tensorrt_version", "gpu", "compute_capability", ...})
    zero_copy:   map pinned host memory for the GPU instead of copying (None: on integrated GPUs, i.e. Jetson,
                 whichever of the two measures faster at the first inference; discrete GPUs copy)
    cuda_graph:  capture the engine's enqueue into a CUDA graph and replay it (cuda-python only)
    spin_wait:   busy-wait for the GPU instead of sleeping (lower latency, one CPU core busy; trtexec --useSpinWait:
                 the device's scheduling flag is set to spin before any work, process-wide for that device)

    On the command line: ``--backend tensorrt:graph:spin`` (cuda_graph, spin_wait), ``tensorrt:copy``
    (zero_copy=False); see edgemm.runners.
    """

    backend = "tensorrt"

    def __init__(self, engine: str | Path | bytes, engine_info: Mapping | None = None, name: str | None = None,
                 graph_spec=None, zero_copy: bool | None = None, cuda_graph: bool = False, spin_wait: bool = False,
                 device: int = 0, binding: str | None = None, rebuild_hint: str | None = None):
        super().__init__(name or (Path(engine).name if not isinstance(engine, (bytes, bytearray)) else None))
        self.engine_source = engine
        self.engine_info = dict(engine_info or {})
        self.graph_spec = graph_spec
        self.zero_copy_requested = zero_copy
        self.cuda_graph_requested = cuda_graph
        self.spin_wait = spin_wait
        self.device_index = device
        self.binding = binding
        self.rebuild = rebuild_hint or rebuild_command(None)
        self.warnings: list[str] = []
        # What ran (kept after deactivate, for describe() in bench results).
        self.device = None
        self.trt_version = None
        self.zero_copy = False
        self.io_choice: dict | None = None  # the measured zero-copy/copy choice (integrated GPUs, automatic mode)
        self.cuda_graph = False
        self._reset()

    @classmethod
    def from_bundle(cls, bundle, graph: str | None = None, name: str | None = None, **kwargs) -> "TensorRTRunner":
        """The runner for one graph's engine; one clear error (with the build command) when there is none."""
        graph = graph or bundle.single_graph
        spec = bundle.manifest.graphs[graph]
        rebuild = rebuild_command(bundle.source or bundle.root)
        if not spec.engine:
            raise EdgemmError(f"Bundle: {bundle.source or bundle.root} | Graph {graph} has no TensorRT engine; "
                              f"build one on the device that will run it: {rebuild}")
        path = bundle.engine_path(graph)
        if not path.is_file():
            raise EdgemmError(f"TensorRT engine: {path} | File not found; rebuild it: {rebuild}")
        return cls(path, engine_info=spec.engine, name=name, graph_spec=spec, rebuild_hint=rebuild, **kwargs)

    def _reset(self) -> None:
        """Forget every TensorRT and CUDA resource (they are freed by _release)."""
        self.trt = self.cuda = None
        self._logger = self._runtime = self._engine = self._context = None
        self._inputs: dict[str, TensorMeta] = {}
        self._outputs: dict[str, TensorMeta] = {}
        self._host: dict = {}  # name -> HostBuffer (pinned staging, or the mapped I/O buffer itself in zero-copy)
        self._dev: dict = {}  # name -> DeviceBuffer (not used in zero-copy)
        self._shapes: dict[str, tuple] = {}  # current concrete shapes of every I/O tensor
        self._stream = None
        self._events = ()
        self._graph = None
        self._measure_io = False  # the next inference chooses between zero-copy and copy

    # -- activation --------------------------------------------------------------------------------
    def activate_impl(self) -> None:
        try:
            self._activate(cuda, import_optional)
        except BaseException:
            self._release()
            raise

    def _activate(self, cuda, import_optional) -> None:
        # 1. A device and a working CUDA binding (one probe), before anything touches TensorRT.
        self.cuda = cuda.open_cuda(self.device_index, self.binding, what="The tensorrt backend", spin=self.spin_wait)
        self.device = self.cuda.device
        # 2. TensorRT itself, and the engine's version/GPU against this device.
        trt = self.trt = import_optional("tensorrt", TENSORRT_HINT)
        self.trt_version = trt.__version__
        self.warnings = check_engine_compat(self.engine_info, self.trt_version, self.device, self.rebuild)
        for w in self.warnings:
            log.warning("%s", w)
        # 3. Deserialize.
        plan = self.engine_source
        if not isinstance(plan, (bytes, bytearray)):
            try:
                plan = Path(plan).read_bytes()
            except OSError as exc:
                raise EdgemmError(f"TensorRT engine: {self.engine_source} | Cannot be read ({exc.strerror}).") from exc
        self._logger = make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        dla_core = self.engine_info.get("dla_core")
        if dla_core is not None:
            # An engine with DLA layers runs them on the DLA core the runtime names (set before deserializing).
            if dla_core >= self._runtime.num_DLA_cores:
                raise EdgemmError(f"TensorRT engine: {self.name} | Built for DLA core {dla_core}; this device has "
                                  f"{self._runtime.num_DLA_cores} DLA core(s). Rebuild it here: {self.rebuild}")
            self._runtime.DLA_core = int(dla_core)
        if hasattr(trt, "init_libnvinfer_plugins"):  # engines with TensorRT's standard plugins need them registered
            trt.init_libnvinfer_plugins(self._logger, "")
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise EdgemmError(f"TensorRT engine: {self.name} | Could not be deserialized "
                              f"({self._logger.last_error()}). Rebuild it here: {self.rebuild}")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise EdgemmError(f"TensorRT engine: {self.name} | Could not create an execution context "
                              f"({self._logger.last_error()}); the GPU may be out of memory.")
        # 4. I/O, buffers at the largest shapes, stream, events.
        self.zero_copy = self.device.integrated if self.zero_copy_requested is None else bool(self.zero_copy_requested)
        # Integrated GPU, nothing asked: measure zero-copy against copy at the first inference.
        self._measure_io = self.device.integrated and self.zero_copy_requested is None
        self.cuda_graph = bool(self.cuda_graph_requested)
        if self.cuda_graph and not self.cuda.supports_graphs:
            log.warning("CUDA graphs need cuda-python (this device uses %s); running without", self.cuda.binding)
            self.cuda_graph = False
        self._setup_io()
        self._stream = self.cuda.stream()
        # Four events: before H2D, after H2D, after compute, after D2H. The last one is waited on.
        self._events = (self.cuda.event(), self.cuda.event(), self.cuda.event(),
                        self.cuda.event(blocking=not self.spin_wait))

    def _setup_io(self) -> None:
        trt, engine, ctx = self.trt, self._engine, self._context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        max_shapes: dict[str, tuple] = {}
        for name in names:
            mode = engine.get_tensor_mode(name)
            dtype = np_dtype(trt, engine.get_tensor_dtype(name), name)
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            meta = TensorMeta(name, dtype, tuple(None if d < 0 else d for d in shape))
            if mode == trt.TensorIOMode.INPUT:
                if engine.is_shape_inference_io(name):
                    raise EdgemmError(f"Input tensor: {name} | Is a shape tensor (its values set output shapes); "
                                      "expected data inputs only.")
                self._inputs[name] = meta
                if any(d < 0 for d in shape):
                    # get_tensor_profile_shape -> [min, opt, max] of optimization profile 0 (the one we build).
                    max_shapes[name] = tuple(int(d) for d in engine.get_tensor_profile_shape(name, 0)[2])
                else:
                    max_shapes[name] = shape
            elif mode == trt.TensorIOMode.OUTPUT:
                self._outputs[name] = meta
        # Output sizes at the largest input shapes: set every input to its profile maximum and ask.
        for name, shape in max_shapes.items():
            self._set_input_shape(name, shape)
        for name in self._outputs:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise EdgemmError(f"Output tensor: {name} | Has a data-dependent shape {shape}; the tensorrt backend "
                                  "needs output shapes that follow from the input shapes.")
            max_shapes[name] = shape
        for name, shape in max_shapes.items():
            meta = self._inputs.get(name) or self._outputs[name]
            nbytes = _volume(shape) * meta.dtype.itemsize
            # Mapped host memory serves both modes: the GPU's buffer in zero-copy, the pinned staging buffer
            # of the copies otherwise. Device buffers only where copies may run.
            self._host[name] = self.cuda.host_buffer(nbytes, mapped=self.zero_copy or self._measure_io)
            if not self.zero_copy or self._measure_io:
                self._dev[name] = self.cuda.device_buffer(nbytes)
        self._bind(self.zero_copy)
        self._shapes = dict(max_shapes)

    def _bind(self, zero_copy: bool) -> None:
        """Point TensorRT at the mapped host buffers (zero-copy) or the device buffers. Addresses change only
        here (at activation, and while the I/O mode is chosen), so CUDA graphs stay valid across calls."""
        self.zero_copy = zero_copy
        for name, host in self._host.items():
            address = host.device_ptr if zero_copy else self._dev[name].ptr
            if not self._context.set_tensor_address(name, int(address)):
                raise EdgemmError(f"Tensor: {name} | TensorRT refused its address ({self._logger.last_error()}).")

    def _set_input_shape(self, name: str, shape: tuple) -> None:
        if not self._context.set_input_shape(name, tuple(int(d) for d in shape)):
            try:
                lo, _, hi = (tuple(int(d) for d in s) for s in self._engine.get_tensor_profile_shape(name, 0))
                built = f"shapes from {lo} to {hi}"
            except Exception:  # noqa: BLE001 - a static input has no profile: its one shape is the engine's
                built = f"shape {tuple(int(d) for d in self._engine.get_tensor_shape(name))}"
            raise EdgemmError(f"Input tensor: {name} | Received shape {tuple(shape)}; the engine was built for {built}. "
                              f"Rebuild it for these shapes: {self.rebuild} --shape {name}:MIN,OPT,MAX")

    def deactivate_impl(self) -> None:
        self._release()

    def _release(self) -> None:
        # TensorRT objects first (the context uses the engine, the engine the runtime), then CUDA memory.
        self._graph = None
        self._context = None
        self._engine = None
        self._runtime = None
        if self.cuda is not None:
            self.cuda.close()
        self._reset()

    # -- metadata ----------------------------------------------------------------------------------
    def input_metadata_impl(self):
        return self._inputs

    def output_metadata_impl(self):
        return self._outputs

    # -- inference ---------------------------------------------------------------------------------
    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda, ctx = self.cuda, self._context
        cuda.make_current()
        shapes_changed = False
        for name, meta in self._inputs.items():
            value = np.asarray(feed[name])
            if value.dtype != meta.dtype:  # infer(check_inputs=False) skips the base check: be safe here
                value = value.astype(meta.dtype)
            shape = tuple(value.shape)
            if shape != self._shapes.get(name):
                self._set_input_shape(name, shape)
                self._shapes[name] = shape
                shapes_changed = True
            np.copyto(self._host[name].view(meta.dtype, shape), value, casting="no")
        if shapes_changed:
            for name in self._outputs:
                self._shapes[name] = tuple(int(d) for d in ctx.get_tensor_shape(name))
            self._drop_graph()
        if self._measure_io:
            self._choose_io_mode()
        if self.cuda_graph and self._graph is None:
            self._capture()
        self._enqueue_and_wait()
        # Copies, not views: the pinned buffers are reused by the next call and freed by deactivate().
        return {name: self._host[name].view(meta.dtype, self._shapes[name]).copy()
                for name, meta in self._outputs.items()}

    def _choose_io_mode(self) -> None:
        """Run the current inputs IO_TRIALS times each way, interleaved, and keep the faster I/O mode."""
        self._measure_io = False
        times: dict[bool, list[float]] = {True: [], False: []}
        for mode in (True, False):  # one warm-up each (first-touch of the buffers, lazy kernel loading)
            self._bind(mode)
            self._enqueue_and_wait()
        for _ in range(IO_TRIALS):
            for mode in (True, False):
                self._bind(mode)
                self._enqueue_and_wait()
                times[mode].append(sum(self.last_breakdown.values()))
        self.io_choice = faster_io_mode(times[True], times[False])
        self._bind(self.io_choice["chosen"] == "zero-copy")
        log.info("%s: I/O %s (zero-copy %.3f ms, copy %.3f ms per inference, median of %d)", self.name,
                 self.io_choice["chosen"], self.io_choice["zero_copy_ms"], self.io_choice["copy_ms"], IO_TRIALS)

    def _enqueue_and_wait(self) -> None:
        """H2D (unless zero-copy), the engine (or its CUDA graph), D2H, on one stream; last_breakdown is set."""
        cuda, ctx, stream = self.cuda, self._context, self._stream
        ev_start, ev_h2d, ev_compute, ev_end = self._events
        cuda.record(ev_start, stream)
        if not self.zero_copy:
            for name, meta in self._inputs.items():
                cuda.copy_htod_async(self._dev[name], self._host[name],
                                     _volume(self._shapes[name]) * meta.dtype.itemsize, stream)
        cuda.record(ev_h2d, stream)
        if self._graph is not None:
            cuda.launch(self._graph, stream)
        elif not ctx.execute_async_v3(stream.handle):
            raise EdgemmError(f"TensorRT engine: {self.name} | execute_async_v3 failed ({self._logger.last_error()}).")
        cuda.record(ev_compute, stream)
        if not self.zero_copy:
            for name, meta in self._outputs.items():
                cuda.copy_dtoh_async(self._host[name], self._dev[name],
                                     _volume(self._shapes[name]) * meta.dtype.itemsize, stream)
        cuda.record(ev_end, stream)
        cuda.wait(ev_end)
        self.last_breakdown = {"h2d": cuda.elapsed_ms(ev_start, ev_h2d),
                               "compute": cuda.elapsed_ms(ev_h2d, ev_compute),
                               "d2h": cuda.elapsed_ms(ev_compute, ev_end)}

    def _capture(self) -> None:
        """Capture one enqueue into a CUDA graph. TensorRT wants one plain enqueue after any shape change first."""
        cuda, ctx, stream = self.cuda, self._context, self._stream
        if not ctx.execute_async_v3(stream.handle):
            raise EdgemmError(f"TensorRT engine: {self.name} | execute_async_v3 failed ({self._logger.last_error()}).")
        cuda.synchronize(stream)
        try:
            with cuda.capture(stream) as captured:
                if not ctx.execute_async_v3(stream.handle):
                    raise RuntimeError(self._logger.last_error("enqueue failed during capture"))
            self._graph = captured[0]
        except Exception as exc:  # noqa: BLE001 - some engines cannot be captured: run them without a graph
            log.warning("%s: CUDA graph capture failed (%s); running without CUDA graphs", self.name, exc)
            self.cuda_graph = False
            self._graph = None
            with contextlib.suppress(Exception):
                cuda.synchronize(stream)

    def _drop_graph(self) -> None:
        if self._graph is not None:
            with contextlib.suppress(Exception):
                self.cuda.destroy_graph(self._graph)
            self._graph = None

    def describe(self) -> str:
        if self.device is None:
            return "tensorrt"
        io = "zero-copy" if self.zero_copy else None
        if self.io_choice:
            c = self.io_choice
            io = f"{c['chosen']} (measured: zero-copy {c['zero_copy_ms']:.3f} ms, copy {c['copy_ms']:.3f} ms)"
        extras = [x for x, on in ((io, io), ("CUDA graph", self.cuda_graph), ("spin-wait", self.spin_wait),
                                  (f"DLA core {self.engine_info.get('dla_core')}",
                                   self.engine_info.get("dla_core") is not None)) if on]
        return f"tensorrt {self.trt_version} {self.device.name} {self.device.sm}" + (f" {', '.join(extras)}" if extras else "")
