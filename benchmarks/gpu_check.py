"""GPU checks of edgemm's CUDA and TensorRT code, for a machine with a CUDA GPU (run by gpu_check.sh).

  python benchmarks/gpu_check.py OUT_DIR

Writes OUT_DIR/cuda.json: the device, and the CUDA memory paths the TensorRT runner uses, measured with CUDA
events (pinned H2D/D2H bandwidth at several sizes, zero-copy reads of mapped host memory, per-copy launch cost
with and without a CUDA graph). When TensorRT is importable too: builds an engine for the reference test
model, checks it against ONNX Runtime with every runner option, and writes OUT_DIR/tensorrt.json.
Never touches TensorRT before a CUDA device was found.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgemm.runners import cuda  # noqa: E402


# What only a machine with TensorRT can confirm (listed when tensorrt does not import).
NEEDS_TENSORRT = ["engine build (FP16 default, INT8 Q/DQ with FP16 scales, --workspace, --builder-opt-level)",
                  "TensorRTRunner against ONNX Runtime (copy, zero-copy, CUDA graph, spin-wait)",
                  "the zero-copy/copy choice at the first inference (integrated GPUs only)",
                  "DLA build with GPU fallback (Orin NX / AGX only)", "edgemm bench --backend tensorrt:graph:spin"]


def median_ms(c, s, work, n=10):
    """Median event-timed duration of work() enqueued on stream s."""
    e0, e1 = c.event(), c.event(blocking=True)
    work()
    c.synchronize(s)
    out = []
    for _ in range(n):
        c.record(e0, s)
        work()
        c.record(e1, s)
        c.wait(e1)
        out.append(c.elapsed_ms(e0, e1))
    return float(np.median(out))


def mapped_read(c, n: int) -> dict:
    """A GPU kernel (cupy's sum) reading n bytes of mapped pinned host memory, vs the same from device memory."""
    try:
        import cupy
    except ImportError:
        return {"skipped": "cupy is not installed"}
    mapped = c.host_buffer(n, mapped=True)
    host = mapped.view(np.float32, (n // 4,))
    host[:] = 1.0
    mem = cupy.cuda.UnownedMemory(mapped.device_ptr, n, mapped)
    zero_copy = cupy.ndarray((n // 4,), cupy.float32, cupy.cuda.MemoryPointer(mem, 0))
    on_device = cupy.ones((n // 4,), cupy.float32)

    def timed(x):
        e0, e1 = cupy.cuda.Event(), cupy.cuda.Event()
        float(x.sum())
        out = []
        for _ in range(10):
            e0.record()
            x.sum()
            e1.record()
            e1.synchronize()
            out.append(cupy.cuda.get_elapsed_time(e0, e1))
        return float(np.median(out))

    assert float(zero_copy.sum()) == n // 4, "the kernel did not read what the CPU wrote"
    zc, dev = timed(zero_copy), timed(on_device)
    return {"mapped_ms": zc, "device_ms": dev, "mapped_GBps": n / zc / 1e6, "device_GBps": n / dev / 1e6}


def cuda_checks() -> dict:
    res: dict = {}
    with cuda.open_cuda() as c:
        res["device"] = c.device.to_dict()
        res["binding"] = c.binding
        s = c.stream()
        for mib in (1, 16, 256):
            n = mib << 20
            h, back, d = c.host_buffer(n), c.host_buffer(n), c.device_buffer(n)
            h.raw[:] = np.random.default_rng(mib).integers(0, 255, n, dtype=np.uint8)
            h2d = median_ms(c, s, lambda: c.copy_htod_async(d, h, n, s))
            d2h = median_ms(c, s, lambda: c.copy_dtoh_async(back, d, n, s))
            assert np.array_equal(back.raw, h.raw), "round trip changed the data"
            res[f"pinned_{mib}MiB"] = {"h2d_ms": h2d, "d2h_ms": d2h, "h2d_GBps": n / h2d / 1e6, "d2h_GBps": n / d2h / 1e6}
            # The runner's I/O on an integrated GPU: mapped pinned memory used as the staging buffer of copies
            # (the copy mode of its zero-copy/copy choice) must copy as fast as plain pinned memory.
            m = c.host_buffer(n, mapped=True)
            m.raw[:] = h.raw
            res[f"mapped_staging_{mib}MiB"] = {"h2d_ms": median_ms(c, s, lambda: c.copy_htod_async(d, m, n, s))}
            res[f"mapped_kernel_read_{mib}MiB"] = mapped_read(c, n)
        # Launch cost: 200 small copies enqueued one by one vs replayed from one CUDA graph.
        k, n = 200, 4096
        src, dst = c.host_buffer(n), c.device_buffer(n)
        t0 = time.perf_counter()
        for _ in range(k):
            c.copy_htod_async(dst, src, n, s)
        c.synchronize(s)
        res["launch_200_copies_host_ms"] = (time.perf_counter() - t0) * 1e3
        if c.supports_graphs:
            with c.capture(s) as captured:
                for _ in range(k):
                    c.copy_htod_async(dst, src, n, s)
            g = captured[0]
            c.launch(g, s)
            c.synchronize(s)
            t0 = time.perf_counter()
            c.launch(g, s)
            c.synchronize(s)
            res["graph_200_copies_host_ms"] = (time.perf_counter() - t0) * 1e3
    # Spin-wait (tensorrt:spin) sets the device's scheduling flag: in a fresh process, as the runner would.
    spin = subprocess.run([sys.executable, "-c", "from edgemm.runners import cuda\n"
                           "with cuda.open_cuda(spin=True) as c: print(c.binding, c.spin)"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    res["spin_wait_flag"] = {"rc": spin.returncode, "out": (spin.stdout + spin.stderr).strip()[-500:]}
    if spin.returncode != 0:
        raise RuntimeError(f"spin-wait could not be set: {res['spin_wait_flag']['out']}")
    return res


def tensorrt_checks(tmp: Path) -> dict:
    import onnxruntime as ort

    from edgemm.converters.tensorrt import EngineOptions, build_engines
    from edgemm.bundle import load_bundle, write_bundle
    from edgemm.feeds import synthesize
    from edgemm.runners.tensorrt import TensorRTRunner
    from tests import onnx_models

    src = onnx_models.write_av_bundle(tmp / "av.edgemm")
    bundle = load_bundle(src)
    t0 = time.perf_counter()
    b = build_engines(bundle, EngineOptions(max_batch=8, timing_cache=tmp / "cache.timing"))["model"]
    build_s = time.perf_counter() - t0
    manifest = bundle.manifest
    manifest.graphs["model"].engine = b.info
    out = write_bundle(manifest, {"model.onnx": bundle.load_graph("model"), b.file: b.plan}, tmp / "av-trt.edgemm")
    res = {"tensorrt": b.info["tensorrt_version"], "build_s": build_s, "engine_bytes": len(b.plan), "runs": {}}
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    spec = load_bundle(out).manifest.graphs["model"]
    for zero_copy in (False, True):
        for graph in (False, True):
            key = f"zero_copy={zero_copy},cuda_graph={graph}"
            with TensorRTRunner.from_bundle(load_bundle(out), zero_copy=zero_copy, cuda_graph=graph) as r:
                worst, split = 0.0, []
                for batch in (1, 4, 1, 8):
                    feed = synthesize(r.input_metadata(), spec, batch=batch, seed=batch)
                    got = r.infer(feed)["logits"]
                    worst = max(worst, float(np.abs(got - sess.run(None, feed)[0]).max()))
                feed = synthesize(r.input_metadata(), spec, batch=1)
                for _ in range(200):
                    r.infer(feed)
                    split.append(r.last_breakdown)
                res["runs"][key] = {"max_abs_diff_vs_ort": worst, "describe": r.describe(),
                                    **{k: float(np.median([s[k] for s in split])) for k in ("h2d", "compute", "d2h")}}
    bench_json = tmp / "bench.json"
    # The CLI path of the runner options too: tensorrt:graph:spin must reach TensorRTRunner (describe() says so).
    cmd = [sys.executable, "-m", "edgemm", "bench", str(out), "--backend", "tensorrt", "--backend", "tensorrt:graph:spin",
           "--backend", "onnxruntime", "--duration", "3", "--json", str(bench_json)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=180)
    res["bench_stdout"] = p.stdout
    res["bench_rc"] = p.returncode
    # convert --target tensorrt with its defaults (FP16 engine) and the build options.
    cmd = [sys.executable, "-m", "edgemm", "convert", str(src), "-o", str(tmp / "av-fp16.edgemm"), "--target", "tensorrt",
           "--workspace", "512", "--builder-opt-level", "2", "--bench-seconds", "0.5", "-q"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    res["convert_fp16_rc"] = p.returncode
    res["convert_fp16_out"] = (p.stdout + p.stderr)[-2000:]
    if p.returncode == 0:
        res["convert_fp16_engine"] = load_bundle(tmp / "av-fp16.edgemm").manifest.graphs["model"].engine
    if bench_json.exists():
        res["bench"] = json.loads(bench_json.read_text())["results"]
    return res


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "gpu_check_out")
    out.mkdir(parents=True, exist_ok=True)
    p = cuda.probe()
    summary = {"probe": {"found": p.found, "binding": p.binding, "reason": p.reason,
                         "devices": [d.to_dict() for d in p.devices]}}
    if not (p.found and p.binding):
        print(f"no usable CUDA device: {p.reason}")
        (out / "cuda.json").write_text(json.dumps(summary, indent=2))
        return 1  # this script is for a machine with a GPU: finding none is a failed check
    summary["cuda"] = cuda_checks()
    (out / "cuda.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary["cuda"], indent=2))
    trt = subprocess.run([sys.executable, "-c", "import tensorrt; print(tensorrt.__version__)"], capture_output=True,
                         text=True, timeout=120)
    if trt.returncode != 0:
        msg = (trt.stderr.strip().splitlines() or ["crashed"])[-1]
        print(f"TensorRT not importable here ({msg}). Measured without it: pinned/mapped copies, CUDA graphs, "
              f"spin-wait, the binding fallback. Need TensorRT (not checked): {', '.join(NEEDS_TENSORRT)}")
        (out / "tensorrt.json").write_text(json.dumps({"skipped": msg, "not_checked": NEEDS_TENSORRT}, indent=2))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        res = tensorrt_checks(Path(tmp))
    (out / "tensorrt.json").write_text(json.dumps(res, indent=2, default=str))
    print(json.dumps({k: v for k, v in res.items() if k != "bench"}, indent=2, default=str))
    return 0 if res["bench_rc"] == 0 and res["convert_fp16_rc"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
