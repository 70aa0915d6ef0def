"""PP-OCRv4's text detector, FP32 against converted graphs, scored on pages of rendered text
(benchmarks/ocr_text.py pages(): 2-6 lines of known text and place per 320 x 320 page, seed 0; the zoo
calibrates on seed 1): the lines found, and the boxes' agreement with FP32's, so that an output cosine can be
read as what a user of the detector gets.

Boxes as rapidocr finds them, simplified: the probability map thresholded at 0.3, each connected region whose
mean probability reaches 0.5 taken as a box, its bounding rectangle grown by area x 1.6 / perimeter (the DB
"unclip" that undoes the training's shrink; rapidocr grows the rotated polygon). A line is found when a box
overlaps its drawn rectangle with IoU >= 0.5; agreement with FP32 is the F1 of boxes matched at IoU >= 0.5, and
the mean IoU of those matches (how far the boxes moved).

    python benchmarks/ocr_det_text.py --graph int8=build/follow/ocr_det-accepted [--graph NAME=PATH ...]

A PATH is an .onnx file or a bundle folder (its .onnx is run by ONNX Runtime on the CPU, as the guard runs
Q/DQ graphs); FP32 is the zoo's cached model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import ocr_text  # noqa: E402
import zoo  # noqa: E402

THRESH, BOX_THRESH, UNCLIP = 0.3, 0.5, 1.6  # rapidocr 1.4.4's Det settings


def boxes(prob: np.ndarray) -> list[tuple[float, float, float, float]]:
    """(x0, y0, x1, y1) boxes of one H x W probability map."""
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats((prob > THRESH).astype(np.uint8), connectivity=4)
    out = []
    for k in range(1, n):
        x, y, w, h, area = stats[k]
        if area < 3 or prob[labels == k].mean() < BOX_THRESH:
            continue
        d = w * h * UNCLIP / (2 * (w + h))
        out.append((x - d, y - d, x + w + d, y + h + d))
    return out


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def matched(found, wanted) -> list[float]:
    """The IoUs of greedy one-to-one matches at IoU >= 0.5."""
    left, out = list(found), []
    for w in wanted:
        best = max(left, key=lambda f: iou(f, w), default=None)
        if best is not None and iou(best, w) >= 0.5:
            left.remove(best)
            out.append(iou(best, w))
    return out


def main(argv=None) -> int:
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--graph", action="append", default=[], help="NAME=PATH (.onnx or bundle folder)")
    ap.add_argument("--pages", type=int, default=200)
    args = ap.parse_args(argv)
    model = zoo.fetch([m for m in zoo.ZOO if m.name == "ocr_det"])["ocr_det"]["path"]
    graphs = {"fp32": Path(model)}
    for g in args.graph:
        name, path = g.split("=", 1)
        path = Path(path)
        graphs[name] = next(path.glob("*.onnx")) if path.is_dir() else path
    pages = ocr_text.pages(args.pages, seed=0)
    truth = [[b for _, b in lines] for _, lines in pages]
    maps = {}
    for name, path in graphs.items():
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        maps[name] = [sess.run(None, {"x": ocr_text.det_feed(img)})[0][0, 0] for img, _ in pages]
    ref = [boxes(m) for m in maps["fp32"]]
    n_lines, n_ref = sum(map(len, truth)), sum(map(len, ref))
    print(f"| graph | map cosine to FP32 (mean / min) | lines found of {n_lines} | boxes | box F1 vs FP32 | "
          "mean IoU with FP32's box |")
    print("|---|---|---|---|---|---|")
    for name, ms in maps.items():
        cos = [float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
               for a, b in zip(ms, maps["fp32"])]
        found = [boxes(m) for m in ms]
        hits = sum(len(matched(f, t)) for f, t in zip(found, truth))
        n = sum(map(len, found))
        agree = [x for f, r in zip(found, ref) for x in matched(f, r)]
        f1 = 2 * len(agree) / (n + n_ref) if n + n_ref else 1.0
        print(f"| {name} | {np.mean(cos):.4f} / {np.min(cos):.4f} | {hits} ({100 * hits / n_lines:.1f} %) | {n} | "
              f"{100 * f1:.1f} | {np.mean(agree):.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
