"""Where INT8 loses on PP-OCR's text orientation classifier (a 48 x 192 MobileNet of depthwise and pointwise
convolutions) under OpenVINO: NNCF's graph with everything quantized, with the depthwise convolutions kept
float, and with the pointwise ones kept float, against FP32, timed interleaved (CPU time, one thread), then
OpenVINO's per-layer counters (PERF_COUNT) summed by layer type and kernel.

    python benchmarks/ocr_cls_int8.py [--seconds 20] [--profile-runs 200] [--batch 6]

Calibrated on 64 rendered text lines (benchmarks/ocr_text.py), half of them upside down; orientation accuracy
on 500 other lines. --batch N: the graphs fixed at N lines per call, as rapidocr runs the classifier (its
config.yaml: `cls_batch_num: 6`); calibrated and scored N lines at a time (the last batch padded).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import ocr_text  # noqa: E402
import zoo  # noqa: E402

from edgemm.converters import int8, openvino, opsets  # noqa: E402
from edgemm.converters.timing import time_models  # noqa: E402
from edgemm.runners.openvino import OpenVINORunner, static_onnx  # noqa: E402

LINE = (3, 48, ocr_text.CLS_WIDTH)


def batches(images: list, n: int) -> list[np.ndarray]:
    """The lines' classifier feeds, n to a batch (the last one padded with its last line repeated)."""
    x = [ocr_text.feed(img, ocr_text.CLS_WIDTH) for img in images]
    x += [x[-1]] * (-len(x) % n)
    return [np.concatenate(x[i:i + n]) for i in range(0, len(x), n)]


def profile(model: bytes, feed: np.ndarray, runs: int) -> dict:
    """Mean microseconds per inference by (layer type, kernel), and layer counts, from PERF_COUNT."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(io.BytesIO(model)), "CPU", {
        "PERF_COUNT": True, "INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False})
    req = compiled.create_infer_request()
    us, count = defaultdict(float), defaultdict(int)
    for i in range(runs + 5):
        req.infer({0: feed})
        if i < 5:
            continue
        for p in req.get_profiling_info():
            if p.status == p.Status.EXECUTED:
                us[(p.node_type, p.exec_type)] += p.real_time.total_seconds() * 1e6 / runs
                count[(p.node_type, p.exec_type)] += i == 5
    return {k: (count[k], v) for k, v in us.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--profile-runs", type=int, default=200)
    ap.add_argument("--batch", type=int, default=1, help="lines per call (rapidocr: 6)")
    args = ap.parse_args(argv)
    import onnx

    path = zoo.model_path(next(m for m in zoo.ZOO if m.name == "ocr_cls"))
    fp32 = onnx.load_from_string(static_onnx(path, {"x": (args.batch, *LINE)}))
    prepared = int8.prepare(opsets.ready_for_qdq(fp32).model)
    feeds = [{"x": x} for x in batches([img for img, _ in ocr_text.oriented(64, seed=1)], args.batch)]
    convs = {n.name: n for n in prepared.graph.node if n.op_type == "Conv"}
    dw = {k for k, n in convs.items() if any(a.name == "group" and a.i > 1 for a in n.attribute)}
    graphs = {"fp32": prepared.SerializeToString(),
              "int8 (NNCF)": openvino.nncf_quantize(prepared, feeds).SerializeToString(),
              f"int8, {len(dw)} depthwise float": openvino.nncf_quantize(prepared, feeds, dw).SerializeToString(),
              f"int8, {len(convs) - len(dw)} other convs float":
                  openvino.nncf_quantize(prepared, feeds, set(convs) - dw).SerializeToString()}
    test = ocr_text.oriented(500, seed=0)
    labels = np.asarray([label for _, label in test])
    test_batches = batches([img for img, _ in test], args.batch)
    runners = {k: OpenVINORunner(g, 1, name=k) for k, g in graphs.items()}
    acc = {}
    for k, r in runners.items():
        with r:
            pred = np.concatenate([next(iter(r.infer({"x": x}).values())).argmax(-1) for x in test_batches])
        acc[k] = 100 * float(np.mean(pred[:len(test)] == labels))
    feed = test_batches[0]
    timing = time_models(runners, feed={"x": feed}, threads=1, duration_s=args.seconds)
    base = timing["fp32"]["cpu_ms"]["p50"]
    print(f"load average {os.getloadavg()[0]:.1f}; {timing['fp32']['iterations']} inferences each, "
          f"{args.batch} line(s) per inference")
    print("| graph | orientation accuracy % | CPU p50 ms | vs OV FP32 |\n|---|---|---|---|")
    for k, t in timing.items():
        print(f"| {k} | {acc[k]:.1f} | {t['cpu_ms']['p50']:.3f} | {base / t['cpu_ms']['p50']:.2f}x |")
    print("\nPERF_COUNT, microseconds per inference (layers):")
    for k in ("fp32", "int8 (NNCF)", f"int8, {len(dw)} depthwise float"):
        prof = profile(graphs[k], feed, args.profile_runs)
        top = sorted(prof.items(), key=lambda kv: -kv[1][1])[:6]
        print(f"- {k}: total {sum(v for _, v in prof.values()):.0f}; "
              + "; ".join(f"{t} {e} {v:.0f} ({n})" for (t, e), (n, v) in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
