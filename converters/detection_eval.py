"""Detection accuracy: COCO mAP@0.5 and mAP@0.5:0.95 with pycocotools, per-class AP, precision/recall at the
model's own threshold, and, between two models, how well their boxes agree (IoU matching).

A detection data folder holds images (png/jpg/bmp) and their boxes, either as YOLO txt files (one per image,
beside it or in a `labels/` subfolder: `class cx cy w h` per line, normalised to the image size), or as one
COCO JSON (`images`, `annotations` with `bbox` [x, y, w, h] in pixels, `categories`; category ids are taken
in sorted order as class 0, 1, ...). Boxes are compared in the source image's pixels, where the runtime
reports them.

pycocotools was chosen over faster-coco-eval (a drop-in, faster on large sets): both install here and have
aarch64 wheels; pycocotools is the reference implementation the field quotes, and a few hundred images
take well under a second either way. It is imported only here (the `convert` and `eval` commands).
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgemm.bundle import Bundle, OutputSpec
from edgemm.decisions import Decisions, primary_output
from edgemm.detection import Boxes, decode_boxes, match_boxes
from edgemm.errors import EdgemmError
from edgemm.lazy import import_optional
from edgemm.media import IMAGE_SUFFIXES
from edgemm.preprocess import preprocess_video
from edgemm.runners import make_runner

MAP_CONF = 0.001  # mAP ranks every candidate, as COCO evaluation does; P/R use the manifest's threshold


@dataclass
class LabelledImage:
    path: Path
    truth: Boxes  # source pixels, score 1


def _yolo_txt(txt: Path, hw: tuple[int, int]) -> Boxes:
    rows = []
    for n, line in enumerate(txt.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            c, cx, cy, w, h = (float(v) for v in line.split()[:5])
        except ValueError:
            raise EdgemmError(f"Labels: {txt}:{n} | Expected 'class cx cy w h' (normalised), got {line!r}.") from None
        H, W = hw
        rows.append([int(c), (cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H])
    a = np.asarray(rows, np.float64).reshape(-1, 5)
    return Boxes(a[:, 1:].astype(np.float32), np.ones(len(a), np.float32), a[:, 0].astype(np.int64))


class BoxLabels:
    """The box labels of a detection data folder: its COCO JSON (the first *.json in it), else a YOLO txt per
    image. Shared by `edgemm eval` (read_folder) and the accuracy guard's data (converters.data.DataFolder),
    so both read the same truth from the same folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        jsons = sorted(self.folder.glob("*.json"))
        self.coco = _read_coco(jsons[0]) if jsons else None  # file name -> Boxes

    @property
    def needs_size(self) -> bool:
        """YOLO txt boxes are normalised: the image's size turns them into pixels."""
        return self.coco is None

    def _txt(self, image: Path) -> Path | None:
        return next((t for t in (image.with_suffix(".txt"), self.folder / "labels" / f"{image.stem}.txt")
                     if t.exists()), None)

    def present(self, images) -> bool:
        """Whether the folder labels these images at all: a COCO JSON, or a txt for at least one of them
        (then every one needs its own, as `edgemm eval` requires)."""
        return self.coco is not None or any(self._txt(Path(p)) is not None for p in images)

    def truth(self, image: Path, hw: tuple[int, int] | None = None) -> Boxes:
        """The image's boxes in its pixels (hw: its height and width, needed for YOLO txt)."""
        if self.coco is not None:
            return self.coco.get(image.name, Boxes.empty())
        txt = self._txt(image)
        if txt is None:
            raise EdgemmError(f"Labels: {image} | No {image.stem}.txt beside it or in labels/; expected YOLO txt "
                              "labels (an empty file for an image without objects) or a COCO JSON in the folder.")
        return _yolo_txt(txt, hw)


def _read_coco(path: Path) -> dict[str, Boxes]:
    coco = json.loads(path.read_text())
    try:
        cats = {c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
        anns: dict = {}
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            anns.setdefault(a["image_id"], []).append([cats[a["category_id"]], x, y, x + w, y + h])
        out = {}
        for im in coco["images"]:
            a = np.asarray(anns.get(im["id"], []), np.float64).reshape(-1, 5)
            out[im["file_name"]] = Boxes(a[:, 1:].astype(np.float32), np.ones(len(a), np.float32),
                                         a[:, 0].astype(np.int64))
    except (KeyError, TypeError, ValueError) as exc:
        raise EdgemmError(f"Labels: {path} | Not COCO detection JSON ({exc!r}); expected images, "
                          "annotations with bbox and category_id, categories.") from None
    return out


def read_folder(folder: str | Path) -> list[LabelledImage]:
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgemmError(f"Data: {folder} | Not a folder; expected images with YOLO txt labels or a COCO JSON.")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise EdgemmError(f"Data: {folder} | No images (png, jpg, bmp); expected a detection data folder.")
    labels = BoxLabels(folder)
    return [LabelledImage(p, labels.truth(p, cv2.imread(str(p)).shape[:2] if labels.needs_size else None))
            for p in images]


def detect(bundle: Bundle, images: list[LabelledImage], conf: float, backend: str = "onnxruntime",
           threads: int | None = None) -> list[Boxes]:
    """Run a single-graph detector over the images as the runtime does; boxes in source pixels."""
    graph = bundle.manifest.graphs[bundle.single_graph]
    specs = {o.name: o for o in graph.outputs}
    name = primary_output(specs)
    video = next(s for s in graph.inputs if s.modality == "video")
    for s in specs.values():
        if s.detection is not None:
            s.detection.track = False
    decisions = Decisions(specs, image=video.preprocess, conf=conf)
    results = []
    with make_runner(bundle, graph.name, backend, threads) as runner:
        for item in images:
            frame = cv2.imread(str(item.path))
            outs = runner.infer({video.name: preprocess_video(frame, video)})
            results.append(record_boxes(decisions.decode(outs, 0.0, frame.shape[:2])[name]["detections"]))
    return results


def record_boxes(detections: list[dict]) -> Boxes:
    """Boxes from the runtime's record of them (edgemm.detection.to_record: corners to 0.1 px, scores to 4
    decimals): what `edgemm eval` and the accuracy guard score, so that both give the same mAP. The rounding
    is not negligible on small objects: on the driving detector's 80 test frames it moved mAP@0.5 by 1.8
    points (benchmarks/RESULTS.md section 10)."""
    return Boxes(np.asarray([d["box"] for d in detections], np.float32).reshape(-1, 4),
                 np.asarray([d["score"] for d in detections], np.float32),
                 np.asarray([d["class"] for d in detections], np.int64))


def coco_map(truth: list[Boxes], dets: list[Boxes], labels: list[str]) -> dict:
    """mAP@0.5, mAP@0.5:0.95, and AP@0.5:0.95 and AP@0.5 per class, by pycocotools."""
    # pycocotools is in the convert extra, not the README's `.[demo]` install: one line naming it when absent.
    COCO = import_optional("pycocotools.coco", "COCO mAP needs pycocotools: pip install 'edgemm[convert]'").COCO
    COCOeval = import_optional("pycocotools.cocoeval").COCOeval

    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    gt = {"images": [{"id": i} for i in range(len(truth))], "categories": [{"id": c} for c in range(len(labels))],
          "annotations": []}
    for i, t in enumerate(truth):
        for b, c in zip(t.xyxy, t.classes):
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": int(c),
                                      "bbox": xywh(b), "area": float((b[2] - b[0]) * (b[3] - b[1])), "iscrowd": 0})
    found = [{"image_id": i, "category_id": int(c), "bbox": xywh(b), "score": float(s)}
             for i, d in enumerate(dets) for b, s, c in zip(d.xyxy, d.scores, d.classes)]
    if not gt["annotations"] or not found:
        return {"map50": 0.0, "map": 0.0, "per_class_ap": {}, "per_class_ap50": {}}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(found), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [iou thresholds, recall, classes, areas, max dets]
    per_class, per_class50 = {}, {}
    for k, c in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        if (p > -1).any():
            per_class[labels[c]] = round(float(p[p > -1].mean()), 4)
            p50 = p[0]  # the first IoU threshold, 0.5: what a class adds to mAP@0.5
            per_class50[labels[c]] = round(float(p50[p50 > -1].mean()), 4) if (p50 > -1).any() else 0.0
    return {"map50": round(float(ev.stats[1]), 4), "map": round(float(ev.stats[0]), 4), "per_class_ap": per_class,
            "per_class_ap50": per_class50}


def precision_recall(truth: list[Boxes], dets: list[Boxes], conf: float) -> dict:
    kept = [d.take(np.flatnonzero(d.scores >= conf)) for d in dets]
    tp = sum(len(match_boxes(k, t, 0.5)) for k, t in zip(kept, truth))
    n_det, n_true = sum(len(k) for k in kept), sum(len(t) for t in truth)
    return {"conf": conf, "precision": round(tp / n_det, 4) if n_det else 0.0,
            "recall": round(tp / n_true, 4) if n_true else 0.0}


def agreement(reference: list[Boxes], candidate: list[Boxes], conf: float) -> dict:
    """F1 of the candidate's boxes against the reference model's (same class, IoU >= 0.5), at conf: the
    guard's measure where there are no labels; coordinates do not swamp it as they do a cosine."""
    ref = [r.take(np.flatnonzero(r.scores >= conf)) for r in reference]
    pr = precision_recall(ref, candidate, conf)
    p, r = pr["precision"], pr["recall"]
    return {"box_f1": round(2 * p * r / (p + r), 4) if p + r else (1.0 if not any(map(len, ref)) else 0.0),
            "precision": p, "recall": r}


def output_agreement(reference: np.ndarray, candidate: np.ndarray, spec: OutputSpec) -> float:
    """Box F1 between two batches of one raw detection output (batch along axis 0), decoded by the spec."""
    size = (1, 1)  # boxes stay in the output's own units: both sides alike

    def boxes(batch):
        return [decode_boxes({spec.name: batch[i:i + 1]}, spec, size) for i in range(len(batch))]
    return agreement(boxes(reference), boxes(candidate), spec.detection.conf)["box_f1"]


def evaluate_detection(model: Bundle, data, original: Bundle | None = None, backend: str = "onnxruntime",
                       threads: int | None = None, limit: int | None = None) -> dict:
    images = read_folder(data)[:limit]
    graph = model.manifest.graphs[model.single_graph]
    spec = {o.name: o for o in graph.outputs}[primary_output({o.name: o for o in graph.outputs})]
    labels = spec.labels or [str(i) for i in range(1 + max((int(c) for im in images for c in im.truth.classes),
                                                               default=0))]
    truth = [im.truth for im in images]
    conf = spec.detection.conf
    report = {"data": str(data), "images": len(images), "objects": int(sum(len(t) for t in truth)), "task": "detection"}
    models = [("model", model)] + ([("original", original)] if original is not None else [])
    found = {}
    for key, bundle in models:
        found[key] = detect(bundle, images, MAP_CONF, backend, threads)
        report[key] = {**coco_map(truth, found[key], labels), **precision_recall(truth, found[key], conf)}
    if original is not None:
        report["drop_points"] = {k: round(100 * (report["original"][k] - report["model"][k]), 2) for k in ("map50", "map")}
        report["agreement"] = agreement(found["original"], found["model"], conf)
    return report
