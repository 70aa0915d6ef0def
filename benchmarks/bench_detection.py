"""Decode + NMS of a YOLOv8-format output at 640x640 (8,400 candidates, 80 classes): p50/p99 in ms.

    python benchmarks/bench_detection.py [--iterations 3000] [--objects 20] [--json out.json]

The output is synthetic but shaped like a real one: every anchor gets a low background score (sigmoid of
logits around -7), and each object lights up the ~30 anchors around it (jittered boxes, its class high).
Measured, one call of each in turn so machine noise hits all alike:

  decode+nms (opencv)    edgemm.detection.decode_boxes: threshold, top-k, cv2.dnn.NMSBoxesBatched (the runtime's)
  decode+nms (numpy)     the same decode with the greedy numpy NMS (the fallback for OpenCV < 4.7)
  postprocess (full)     Decisions.decode: the above plus letterbox mapping to a 1280x720 frame, the tracker
                         and the record (what `latency_ms.postprocess` of `edgemm run` holds)

A dense case (--dense: 1,000 candidates over the threshold, the top-k cap) shows the worst case.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from edgemm.bundle import DetectionSpec, OutputSpec, VideoPreprocess
from edgemm.decisions import Decisions
from edgemm.detection import DECODERS, Boxes, _to_xyxy, decode_boxes, nms_numpy


def yolov8_output(objects: int, classes: int = 80, size: int = 640, dense: bool = False, seed: int = 0):
    rng = np.random.default_rng(seed)
    anchors = sum((size // s) ** 2 for s in (8, 16, 32))
    out = np.empty((1, 4 + classes, anchors), np.float32)
    out[0, :2] = rng.uniform(0, size, (2, anchors))
    out[0, 2:4] = rng.uniform(8, 64, (2, anchors))
    out[0, 4:] = 1 / (1 + np.exp(-rng.normal(-7, 1.5, (classes, anchors))))
    for _ in range(objects):
        centre, wh, cls = rng.uniform(50, size - 50, 2), rng.uniform(20, 150, 2), rng.integers(classes)
        near = rng.choice(anchors, 30, replace=False)
        out[0, :2, near] = centre + rng.normal(0, 3, (30, 2))
        out[0, 2:4, near] = wh * rng.uniform(0.9, 1.1, (30, 2))
        out[0, 4 + cls, near] = rng.uniform(0.3, 0.95, 30)
    if dense:
        idx = rng.choice(anchors, 1000, replace=False)
        out[0, 4 + rng.integers(classes, size=1000), idx] = rng.uniform(0.3, 0.9, 1000)
    return out


def numpy_decode(outs, spec: OutputSpec) -> Boxes:
    """decode_boxes with the numpy NMS (the fallback for OpenCV builds without NMSBoxesBatched)."""
    raw = DECODERS["yolov8"](outs, spec)
    raw = Boxes(_to_xyxy(raw.xyxy, "cxcywh"), raw.scores, raw.classes)
    return raw.take(nms_numpy(raw, spec.detection.iou, spec.detection.max_det))


def stats(samples: list[float]) -> dict:
    a = np.asarray(samples) * 1e3
    return {"p50": round(float(np.percentile(a, 50)), 4), "p99": round(float(np.percentile(a, 99)), 4),
            "mean": round(float(a.mean()), 4), "max": round(float(a.max()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--objects", type=int, default=20)
    ap.add_argument("--dense", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    out = yolov8_output(args.objects, dense=args.dense)
    spec = OutputSpec("output0", "detection", shape=list(out.shape), labels=[f"c{i}" for i in range(80)],
                      detection=DetectionSpec("yolov8"))
    outs = {"output0": out}
    decisions = Decisions({"output0": spec}, image=VideoPreprocess(size=(640, 640), resize="letterbox"))
    a, b = decode_boxes(outs, spec, (640, 640)), numpy_decode(outs, spec)
    same = np.array_equal(a.xyxy, b.xyxy)
    cases = {"decode+nms (opencv)": lambda: decode_boxes(outs, spec, (640, 640)),
             "decode+nms (numpy)": lambda: numpy_decode(outs, spec),
             "postprocess (full)": lambda: decisions.decode(outs, time.monotonic(), (720, 1280))}
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(200):  # warm-up
        for fn in cases.values():
            fn()
    for _ in range(args.iterations):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    result = {"candidates": int(out.shape[2]), "classes": 80, "objects": args.objects, "dense": args.dense,
              "kept": len(a), "numpy_equals_opencv": same, "iterations": args.iterations,
              "ms": {k: stats(v) for k, v in times.items()},
              "machine": f"{platform.machine()} {platform.processor() or ''} python {platform.python_version()}"}
    for k, v in result["ms"].items():
        print(f"{k:22s} p50 {v['p50']:.3f} ms  p99 {v['p99']:.3f} ms  max {v['max']:.3f} ms")
    print(f"kept {len(a)} boxes; numpy and OpenCV NMS keep the same boxes: {same}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
