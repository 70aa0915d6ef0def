"""Preprocessing baked into the graph against the Python path, per CPU backend, in one interleaved run.

For each backend (ONNX Runtime's CPU provider; OpenVINO when it is installed) and each model, the variants
run round-robin, one call each in turn, on the same frames and audio windows, so that machine noise hits
them alike:

  python       the unbaked bundle: edgemm.preprocess (resize, colour, scale/mean/std, layout; the log-mel
               incrementally, as the live pipeline computes it: AudioFeatureStream) then the model
  baked-video  the same model converted with --bake-preprocess video: the resized uint8 frame goes in
  baked-av     --bake-preprocess video,audio: the waveform goes in too (the log-mel is computed whole in
               the graph every call; the conv form of the STFT)

The order alternates (forward, then reversed) from round to round. Besides wall time, the CPU time the
process spent per call (time.process_time: every thread of it, ONNX Runtime's and OpenVINO's included) is
reported as a mean: on a shared machine a call preempted half-way costs wall time but not CPU time, so the
CPU ratio is the steadier figure of the work each variant does. A call is what a live tick costs on the inference path: preprocessing plus the model, timed together. The
frames are given at 720p (the resize is then in every variant, the same work) and at the model size (what
the source hands over when it scales at decode, issue 13 item 2); the audio window moves by one 30 fps frame
per call on the 10 ms hop grid, as live audio does.

Models: the pipeline benchmark's early-fusion CNN (video 3x224x224 RGB ImageNet mean/std, log-mel 1x64x98;
about 0.16 GMAC) and the shipped driving detector (192x192 letterboxed RGB; video only). First, the log-mel
alone: edgemm's Python log-mel of a whole window against the baked graph in both STFT forms.

  python benchmarks/bench_bake.py [--calls 300] [--threads 1] [--backends onnxruntime,openvino] [--json out.json]

On a Jetson, --backends tensorrt measures the same with FP16 engines (the default of convert --target tensorrt),
which is what decides BAKE_DEFAULTS["tensorrt"] in converters/convert.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import write_bundle  # noqa: E402  (the pipeline benchmark's model, the same bytes)

from edgemm.bench import machine  # noqa: E402
from edgemm.bundle import load_bundle  # noqa: E402
from edgemm.converters.convert import ConvertOptions, convert  # noqa: E402
from edgemm.preprocess import AudioFeatureStream, preprocess_video  # noqa: E402
from edgemm.runners import make_runner  # noqa: E402
from edgemm.threads import limit_blas_threads  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DETECTOR = REPO / "edgemm" / "reference" / "models" / "driving_detector"
RATE, HOP, FPS = 16000, 160, 30


def variants(src: Path, tmp: Path, has_audio: bool, backend: str) -> dict[str, Path]:
    """The bundle unbaked and baked; for TensorRT each converted with its engine (FP16, built here)."""
    engine = backend == "tensorrt"
    out = {}
    for parts in ((), ("video",)) + ((("video", "audio"),) if has_audio else ()):
        name = {(): "python", ("video",): "baked-video"}.get(parts, "baked-av")
        if not parts and not engine:
            out[name] = src
            continue
        dest = tmp / f"{src.name}-{backend}-{name}"
        convert(src, dest, ConvertOptions(bake_preprocess=",".join(parts) or "none", quiet=True, bench_seconds=0.2,
                                          target="tensorrt" if engine else "onnxruntime"))
        if engine and load_bundle(dest).engine_path("model") is None:
            raise SystemExit(f"bench_bake: no TensorRT engine was built for {src.name} (no GPU or TensorRT here)")
        out[name] = dest
    return out


def audio_windows(n: int, window: int) -> tuple[np.ndarray, list[int]]:
    """A test signal and the first sample of each tick's window: ends on the hop grid nearest the frame."""
    rng = np.random.default_rng(0)
    total = window + int(n / FPS * RATE) + HOP
    t = np.arange(total) / RATE
    signal = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(total)).astype(np.float32)
    ends = [window + int(round(k * RATE / FPS / HOP)) * HOP for k in range(n)]
    return signal, [e - window for e in ends]


def measure(paths: dict[str, Path], backend: str, frame: np.ndarray, calls: int, threads: int) -> dict:
    bundles = {k: load_bundle(p) for k, p in paths.items()}
    runners = {k: make_runner(b, "model", backend, threads) for k, b in bundles.items()}
    for r in runners.values():
        r.activate()
    specs = {k: {s.name: s for s in b.manifest.graphs["model"].inputs} for k, b in bundles.items()}
    audio = next((s for s in specs["python"].values() if s.modality == "audio"), None)
    streams = {k: AudioFeatureStream(s["audio"]) for k, s in specs.items()} if audio else {}
    if audio:
        signal, firsts = audio_windows(calls + 20, audio.preprocess.window_samples)
    times: dict[str, list[float]] = {k: [] for k in paths}
    cpu: dict[str, list[float]] = {k: [] for k in paths}
    try:
        order = list(runners)
        for i in range(calls + 20):  # the first 20: warm-up, not counted
            # Every other round in reverse: no variant always runs first (after the others warmed the caches).
            for k in (order if i % 2 else order[::-1]):
                r = runners[k]
                t0, c0 = time.perf_counter(), time.process_time()
                feed = {}
                for name, s in specs[k].items():
                    if s.modality == "video":
                        feed[name] = preprocess_video(frame, s)
                    elif s.modality == "audio":
                        a = firsts[i]
                        feed[name] = streams[k](signal[a:a + s.preprocess.window_samples], a, 0)
                r.infer(feed)
                if i >= 20:
                    times[k].append(time.perf_counter() - t0)
                    cpu[k].append(time.process_time() - c0)
    finally:
        for r in runners.values():
            r.deactivate()
    out = {}
    base, cpu_base = np.median(times["python"]), np.mean(cpu["python"])
    for k, ts in times.items():
        ms = np.asarray(ts) * 1e3
        out[k] = {"p50_ms": round(float(np.median(ms)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
                  "vs_python_p50": round(float(np.median(ts) / base), 3),
                  "cpu_mean_ms": round(float(np.mean(cpu[k]) * 1e3), 3),
                  "cpu_vs_python": round(float(np.mean(cpu[k]) / cpu_base), 3)}
    return out


def log_mel_forms(calls: int, threads: int) -> dict:
    """The log-mel alone (the pipeline model's: 1 s, n_fft 400, hop 160, 64 mels), interleaved per call: edgemm's
    Python log-mel of the whole window, the baked graph with the conv form and with ONNX's STFT op (both on
    ONNX Runtime's CPU provider), CPU time per call."""
    from onnx import TensorProto, helper

    from edgemm.bundle import manifest_from_dict
    from edgemm.converters import bake
    from edgemm.converters.graphs import cpu_session
    from edgemm.preprocess import preprocess_audio

    spec = {"name": "audio", "modality": "audio", "shape": [1, 1, 64, 98], "preprocess": {"n_mels": 64}}
    manifest = manifest_from_dict({"graphs": {"model": {"file": "m.onnx", "inputs": [spec],
                                                        "outputs": [{"name": "out"}]}}})
    tap = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["audio"], ["out"])], "tap",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, 1, 64, 98])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 64, 98])]),
        opset_imports=[helper.make_opsetid("", 13)])
    old = manifest.graphs["model"].inputs[0]
    wave = np.random.default_rng(0).uniform(-0.5, 0.5, 16000).astype(np.float32)
    ref = preprocess_audio(wave, old)
    steps, diff = {"python": lambda: preprocess_audio(wave, old)}, {}
    for form in bake.AUDIO_FORMS:
        baked = bake.bake_bundle(manifest, {"model": tap}, ("audio",), form, "tap")
        session = cpu_session(baked.models["model"], threads)
        feed = {"audio": preprocess_audio(wave, baked.manifest.graphs["model"].inputs[0])}
        steps[f"graph-{form}"] = lambda s=session, f=feed: s.run(None, f)
        diff[f"graph-{form}"] = float(np.abs(steps[f"graph-{form}"]()[0] - ref).max())
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    wall: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(calls + 10):
        for k in (list(steps) if i % 2 else list(steps)[::-1]):
            t0, c0 = time.perf_counter(), time.process_time()
            steps[k]()
            if i >= 10:
                cpu[k].append(time.process_time() - c0)
                wall[k].append(time.perf_counter() - t0)
    # (CPU time counts every thread: numpy's BLAS threads spinning on the filterbank product count too.)
    return {k: {"p50_ms": round(float(np.median(wall[k]) * 1e3), 3), "cpu_mean_ms": round(float(np.mean(v) * 1e3), 3),
                "max_abs_vs_python": diff.get(k, 0.0)} for k, v in cpu.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=300, help="calls per variant and case (default 300)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of every runner (default 1)")
    ap.add_argument("--backends", default="onnxruntime,openvino",
                    help="comma-separated: onnxruntime, openvino (skipped if not installed), tensorrt (on a GPU: "
                         "engines built here, FP16)")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--only-log-mel", action="store_true", help="only the log-mel forms (conv, STFT op, Python)")
    args = ap.parse_args(argv)
    # numpy's BLAS limited to one thread, as the pipeline runs it (edgemm/threads.py): unlimited, its spinning
    # threads made the Python log-mel 0.56 ms -> 400 ms p50 on this loaded machine.
    with limit_blas_threads(1):
        return _run(args)


def _run(args) -> int:
    import importlib.util

    backends = [b for b in args.backends.split(",") if b != "openvino" or importlib.util.find_spec("openvino")]
    rng = np.random.default_rng(1)
    results: dict = {"machine": machine(), "calls": args.calls, "threads": args.threads, "cases": {}}
    results["log_mel"] = forms = log_mel_forms(args.calls, args.threads)
    print("log-mel alone (ONNX Runtime CPU): " + "; ".join(
        f"{k} p50 {v['p50_ms']:.3f} ms, CPU {v['cpu_mean_ms']:.3f} ms (max abs vs Python {v['max_abs_vs_python']:.2g})"
        for k, v in forms.items()), flush=True)
    if args.only_log_mel:
        backends = []
    with tempfile.TemporaryDirectory(prefix="bench-bake-") as tmp:
        tmp = Path(tmp)
        sources = {"av-cnn-224": (write_bundle(tmp / "av-cnn-224"), True), "detector-192": (DETECTOR, False)}
        for backend in backends:
            for model, (src, has_audio) in sources.items():
                paths = variants(src, tmp, has_audio, backend)
                size = tuple(load_bundle(paths["python"]).manifest.graphs["model"].inputs[0].preprocess.size)
                for label, (h, w) in (("720p", (720, 1280)), ("model size", size)):
                    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                    key = f"{backend} / {model} / frames {label}"
                    results["cases"][key] = r = measure(paths, backend, frame, args.calls, args.threads)
                    print(f"{key}: " + "; ".join(
                        f"{k} p50 {v['p50_ms']:.3f} ms p99 {v['p99_ms']:.3f} ms ({v['vs_python_p50']:.3f}x), "
                        f"CPU {v['cpu_mean_ms']:.3f} ms ({v['cpu_vs_python']:.3f}x)" for k, v in r.items()), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
