"""CUDA discovery, memory, streams, events and graphs (edgemm/runners/cuda.py).

Here (no GPU): the no-device paths run for real, through the cuda-python bindings installed in the venv
(cudaGetDeviceCount answers cudaErrorInsufficientDriver) and through libcuda/ctypes. On a machine with a CUDA
GPU the memory/stream/graph tests run on it; they are skipped elsewhere with the probe's reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edgemm.errors import EdgemmError
from edgemm.runners import cuda
from tests.conftest import REPO

PROBE = cuda.probe()
HAS_CUDA_PYTHON = cuda._probe_cuda_python().reason.find("is not installed") < 0
gpu = pytest.mark.skipif(not (PROBE.found and PROBE.binding), reason=f"needs a CUDA GPU: {PROBE.reason or 'none'}")
no_gpu = pytest.mark.skipif(PROBE.found, reason="checks the no-GPU path; this machine has a GPU")


def _run_py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


# -- without a GPU (runs here) -------------------------------------------------------------------


@no_gpu
@pytest.mark.skipif(not HAS_CUDA_PYTHON, reason="cuda-python (cuda-bindings) is not installed")
def test_probe_without_a_driver_says_why_through_cuda_python():
    p = cuda.probe(refresh=True)
    assert not p.found and p.binding is None
    assert "cuda-python" in p.reason
    # cuda-bindings 13.x returns cudaErrorInsufficientDriver; 12.x raises "Failed to dlopen libcuda.so.1".
    assert "cudaErrorInsufficientDriver" in p.reason or "libcuda" in p.reason
    assert "\n" not in p.reason


@no_gpu
def test_require_device_is_one_clear_error():
    with pytest.raises(EdgemmError) as err:
        cuda.require_device(what="The tensorrt backend")
    msg = str(err.value)
    assert msg.startswith("CUDA device | None found (") and "--backend onnxruntime" in msg
    assert "\n" not in msg
    with pytest.raises(EdgemmError, match="CUDA device") as err:
        cuda.open_cuda(what="The tensorrt backend")
    assert str(err.value) == msg  # open_cuda is require_device plus the binding it found: the same one probe


@no_gpu
def test_probe_without_any_binding_asks_the_driver_and_never_raises():
    # Block both bindings in a fresh interpreter: the ImportError branches and the ctypes libcuda probe run.
    r = _run_py("""
        import sys, json
        sys.modules['cuda'] = None; sys.modules['pycuda'] = None
        from edgemm.runners.cuda import probe
        p = probe()
        print(json.dumps({'found': p.found, 'reason': p.reason}))
    """)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert not out["found"]
    assert "cuda-python is not installed" in out["reason"] and "pycuda is not installed" in out["reason"]
    assert "libcuda" in out["reason"]


def test_unknown_binding_is_a_user_error():
    with pytest.raises(EdgemmError, match="CUDA binding: cupy"):
        cuda.probe("cupy")


def test_importing_edgemm_gpu_modules_imports_no_gpu_library():
    r = _run_py("""
        import sys
        import edgemm.runners.cuda, edgemm.runners.tensorrt, edgemm.power, edgemm.watchdog, edgemm.converters.tensorrt
        import edgemm.runners
        from edgemm.cli import build_parser
        build_parser()
        loaded = [m for m in ('tensorrt', 'cuda', 'cuda.bindings', 'pycuda', 'jtop') if m in sys.modules]
        print(loaded)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_device_info_describes_itself():
    orin = cuda.DeviceInfo(0, "Orin", (8, 7), 16, 64 * 2**30, True, "cuda-python", 12060)
    assert (orin.cc, orin.sm) == ("8.7", "sm_87")
    assert orin.describe() == "Orin (sm_87, 16 SMs, integrated)"
    d = orin.to_dict()
    assert d["cuda_driver"] == "12.6" and d["compute_capability"] == "8.7" and d["integrated"] is True
    h200 = cuda.DeviceInfo(0, "NVIDIA H200", (9, 0), 132, 141 * 2**30, False, "cuda-python", 13000)
    assert h200.describe() == "NVIDIA H200 (sm_90, 132 SMs, 141 GiB)"


def test_host_buffer_views_are_typed_and_bounded():
    raw = np.zeros(64, np.uint8)
    buf = cuda.HostBuffer(ptr=raw.ctypes.data, nbytes=64, raw=raw)
    v = buf.view(np.float32, (2, 4))
    v[:] = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert np.array_equal(raw[:32].view(np.float32), np.arange(8, dtype=np.float32))
    assert buf.view(np.float32, ()).shape == ()  # a scalar input still gets one element
    with pytest.raises(cuda.CudaError, match="72 bytes asked of a 64-byte buffer"):
        buf.view(np.float64, (9,))


# -- on a CUDA GPU (skipped here with the probe's reason) ------------------------------------------


def _bindings():
    out = []
    for b in cuda.BINDINGS:
        p = cuda.probe(b)
        out.append(pytest.param(b, marks=pytest.mark.skipif(not (p.found and p.binding), reason=f"{b}: {p.reason}")))
    return out


@gpu
@pytest.mark.parametrize("binding", _bindings())
def test_h2d_d2h_roundtrip_on_one_stream_with_event_timing(binding):
    with cuda.open_cuda(binding=binding) as c:
        n = 16 * 2**20  # 16 MiB: a copy long enough for the events to see
        src, dst = c.host_buffer(n), c.host_buffer(n)
        dev = c.device_buffer(n)
        data = np.random.default_rng(0).integers(0, 255, n, dtype=np.uint8)
        src.raw[:] = data
        s = c.stream()
        e0, e1, e2 = c.event(), c.event(), c.event(blocking=True)
        c.record(e0, s)
        c.copy_htod_async(dev, src, n, s)
        c.record(e1, s)
        c.copy_dtoh_async(dst, dev, n, s)
        c.record(e2, s)
        c.wait(e2)
        assert np.array_equal(dst.raw, data)
        h2d, d2h = c.elapsed_ms(e0, e1), c.elapsed_ms(e1, e2)
        assert h2d > 0 and d2h > 0
    assert c.closed and not c._device_buffers and not c._host_buffers


@gpu
def test_mapped_pinned_memory_is_read_by_a_gpu_kernel_without_a_copy():
    cupy = pytest.importorskip("cupy", reason="a GPU kernel is needed to read mapped memory: cupy runs one")
    with cuda.open_cuda() as c:
        n = 1 << 20
        mapped = c.host_buffer(4 * n, mapped=True)
        assert mapped.device_ptr is not None
        values = mapped.view(np.float32, (n,))
        values[:] = np.arange(n, dtype=np.float32) % 1000
        # A cupy array over the mapped device pointer: its reduction kernel reads the host memory directly.
        mem = cupy.cuda.UnownedMemory(mapped.device_ptr, 4 * n, mapped)
        on_gpu = cupy.ndarray((n,), cupy.float32, cupy.cuda.MemoryPointer(mem, 0))
        assert float(on_gpu.sum()) == float(values.sum(dtype=np.float64))
        values[:] = 1.0  # the CPU writes, the GPU sees it: no copy in between
        assert float(on_gpu.sum()) == float(n)


@gpu
@pytest.mark.skipif(not cuda.probe("cuda-python").binding,
                    reason=f"CUDA graphs need a GPU through cuda-python: {cuda.probe('cuda-python').reason}")
def test_cuda_graph_replays_captured_copies_from_the_same_buffers():
    with cuda.open_cuda(binding="cuda-python") as c:
        n = 4096
        src, dst = c.host_buffer(n), c.host_buffer(n)
        dev = c.device_buffer(n)
        s = c.stream()
        src.raw[:] = 1
        dst.raw[:] = 0  # cudaHostAlloc does not promise zeroed memory
        with c.capture(s) as captured:
            c.copy_htod_async(dev, src, n, s)
            c.copy_dtoh_async(dst, dev, n, s)
        graph = captured[0]
        c.synchronize(s)
        assert not dst.raw.any(), "capturing must not run the work"
        for value in (7, 42):
            src.raw[:] = value
            c.launch(graph, s)
            c.synchronize(s)
            assert (dst.raw == value).all()
        c.destroy_graph(graph)


@gpu
def test_a_failed_capture_leaves_the_stream_usable():
    with cuda.open_cuda() as c:
        if not c.supports_graphs:
            pytest.skip("CUDA graphs need cuda-python")
        s = c.stream()
        with pytest.raises(RuntimeError, match="inside capture"):
            with c.capture(s):
                raise RuntimeError("inside capture")
        buf, dev = c.host_buffer(64), c.device_buffer(64)
        c.copy_htod_async(dev, buf, 64, s)
        c.synchronize(s)


# -- binding fallback, spin-wait (logic here; the real bindings where they run) ------------------------


def test_a_binding_that_fails_does_not_hide_the_next_one():
    """cuda-python installed but failing (PyPI's SBSA aarch64 wheel on L4T) must not stop the search: pycuda,
    when it finds the device, is used. The probes are the results each binding's probe returns."""
    orin = cuda.DeviceInfo(0, "Orin", (8, 7), 16, 8 * 2**30, True, "pycuda", 12060)
    probes = {"cuda-python": lambda: cuda.Probe(reason="cuda-python: cudaGetDeviceCount returned cudaErrorNotSupported"),
              "pycuda": lambda: cuda.Probe(devices=(orin,), binding="pycuda")}
    p = cuda.first_working(cuda.BINDINGS, probes, lambda: pytest.fail("the driver is asked only when no binding works"))
    assert p.found and p.binding == "pycuda"
    # Neither works but the driver sees the Orin: the fix names the Jetson-specific way out.
    probes["pycuda"] = lambda: cuda.Probe(reason="pycuda is not installed (No module named 'pycuda')")
    drv = cuda.Probe(devices=(orin,))
    p = cuda.first_working(cuda.BINDINGS, probes, lambda: drv)
    assert p.found and p.binding is None
    assert "cudaErrorNotSupported" in p.reason and "pycuda is not installed" in p.reason
    assert "SBSA" in p.reason and "pip install pycuda" in p.reason


@no_gpu
@pytest.mark.skipif(not HAS_CUDA_PYTHON, reason="cuda-python (cuda-bindings) is not installed")
def test_every_binding_is_asked_even_when_cuda_python_says_no_driver():
    p = cuda.probe(refresh=True)
    assert "cuda-python" in p.reason and "pycuda" in p.reason  # pycuda was tried after cuda-python failed


@no_gpu
@pytest.mark.skipif(not HAS_CUDA_PYTHON, reason="cuda-python (cuda-bindings) is not installed")
def test_spin_wait_flag_goes_through_the_real_bindings():
    """The spin-wait call itself is made (and its failure reported in one line) by the installed cuda-bindings:
    without a driver cudaSetDevice fails first, so the error is CudaError, never an AttributeError."""
    with pytest.raises(cuda.CudaError, match=r"CUDA: cudaSetDevice\(0\) \| Failed with cudaErrorInsufficientDriver"):
        cuda._CudaPythonApi(0, spin=True)
    rt = cuda._import_cudart()
    err, = rt.cudaSetDeviceFlags(rt.cudaDeviceScheduleSpin)  # the exact call the runner makes, no driver here
    assert err == rt.cudaError_t.cudaErrorInsufficientDriver
    assert int(rt.cudaDeviceScheduleMask) & int(rt.cudaDeviceScheduleSpin) == int(rt.cudaDeviceScheduleSpin)


@gpu
def test_spin_wait_sets_the_device_scheduling_flag():
    r = _run_py("""
        from edgemm.runners import cuda
        rt = cuda._import_cudart()
        with cuda.open_cuda(binding='cuda-python', spin=True) as c:
            err, flags = rt.cudaGetDeviceFlags()
            print(int(flags) & int(rt.cudaDeviceScheduleMask) == int(rt.cudaDeviceScheduleSpin))
    """)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stdout + r.stderr
