"""Validation: task metrics, output closeness and per-modality ablation of a bundle on labelled data.

``evaluate(bundle, data)``            task metrics of one bundle (what `edgemm eval` prints)
``compare_bundles(orig, conv, data)`` both on the same samples: metrics, drop in points, closeness of
                                      every output, ablation (what `edgemm convert` writes as its report)
``write_report(out_dir, report)``     report.json, report.md and confusion.png (converters/report.py)

Metrics are computed here in numpy (scikit-learn is not needed at run time; the tests check against it):
  classification  accuracy, precision / recall / F1 per class (with support) and macro-averaged over
                  every class of the output (a class never predicted scores precision 0, as sklearn's
                  zero_division=0), weighted F1, confusion matrix (rows: true, columns: predicted)
  multilabel      subset accuracy, per-label and macro precision / recall / F1 (scores > 0.5 as probabilities,
                  > 0 as logits)
  regression      MSE, MAE, RMSE, R^2, max abs error
Metrics are fractions in JSON (accuracy 0.97); drops are in percentage points (0.97 -> 0.96 is 1.0).

Closeness per output (converted vs original): max_abs, mean_abs, max_rel (|a - b| / |a|, where |a|
below 0.1 % of the sample's largest magnitude is replaced by that floor so zero crossings do not read as
infinite), cosine similarity per sample (mean and min), and top-1 agreement for score outputs.

Ablation (multimodal bundles): every sample is run again with each modality missing, the way the
bundle's fusion form handles it at run time (``FusionModel.infer(..., present={m: False})``: early
fusion zeroes the tensors, intermediate zeroes the embeddings, late drops the member).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from edgemm.bundle import OutputSpec, load_bundle
from edgemm.converters.detection_eval import agreement
from edgemm.converters.data import DataFolder, Sample, primary_output
from edgemm.converters.graphs import dynamic_batch
from edgemm.converters.report import primary_metric
from edgemm.converters.report import write_report as _write
from edgemm.converters.timing import time_models
from edgemm.detection import decode_boxes
from edgemm.fusion import FusionModel
from edgemm.modelinfo import bundle_info
from edgemm.runners import make_runner

from edgemm.errors import EdgemmError

log = logging.getLogger(__name__)

DECISION_TASKS = ("classification", "multilabel", "regression")
BATCH = 32  # samples per inference when every graph has a dynamic batch dimension


# --------------------------------------------------------------------------------------------------
# Metrics (numpy only)
# --------------------------------------------------------------------------------------------------


def _labels_list(labels, y_true, y_pred) -> list[str]:
    if labels is None:
        k = int(max(np.max(y_true, initial=-1), np.max(y_pred, initial=-1))) + 1
        return [str(i) for i in range(k)]
    if isinstance(labels, (int, np.integer)):
        return [str(i) for i in range(int(labels))]
    return [str(x) for x in labels]


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Counts [true, predicted] over classes 0..n_classes-1."""
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 per class; 0 where undefined (sklearn's zero_division=0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        r = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
        f = np.where(p + r > 0, 2 * p * r / np.where(p + r > 0, p + r, 1), 0.0)
    return p, r, f


def classification_metrics(y_true, y_pred, labels=None) -> dict:
    """Accuracy, per-class and macro precision/recall/F1 with support, confusion matrix.

    y_true, y_pred: class indices (n,). labels: class names, a class count, or None (from the data).
    Macro averages are over every class of the output, present in the data or not.
    """
    y_true = np.asarray(y_true).reshape(-1).astype(np.int64)
    y_pred = np.asarray(y_pred).reshape(-1).astype(np.int64)
    if y_true.shape != y_pred.shape:
        raise EdgemmError(f"Metrics | {y_true.size} labels but {y_pred.size} predictions; expected one per sample.")
    names = _labels_list(labels, y_true, y_pred)
    k = len(names)
    bad = y_true[(y_true < 0) | (y_true >= k)]
    if bad.size:
        raise EdgemmError(f"Labels | Class index {int(bad[0])} is out of range; expected 0..{k - 1} "
                          f"({k} classes).")
    n = int(y_true.size)
    if n == 0:
        return {"task": "classification", "samples": 0, "labels": names}
    cm = confusion_matrix(y_true, np.clip(y_pred, 0, k - 1), k)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    p, r, f = _prf(tp, predicted - tp, support - tp)
    return {
        "task": "classification",
        "samples": n,
        "accuracy": float(tp.sum() / n),
        "precision_macro": float(p.mean()),
        "recall_macro": float(r.mean()),
        "f1_macro": float(f.mean()),
        "f1_weighted": float((f * support).sum() / n),
        "per_class": [{"label": names[i], "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                       "support": int(support[i])} for i in range(k)],
        "labels": names,
        "confusion": cm.tolist(),
    }


def multilabel_metrics(y_true, y_pred, labels=None) -> dict:
    """Subset accuracy, per-label and macro precision/recall/F1 for 0/1 matrices (n, L)."""
    y_true = np.asarray(y_true).astype(bool)
    y_pred = np.asarray(y_pred).astype(bool)
    if y_true.shape != y_pred.shape or y_true.ndim != 2:
        raise EdgemmError(f"Labels | Multilabel targets of shape {y_true.shape} for predictions {y_pred.shape}; "
                          "expected one 0/1 row per sample.")
    k = y_true.shape[1]
    names = _labels_list(labels if labels is not None else k, np.zeros(0), np.zeros(0))
    tp = (y_true & y_pred).sum(axis=0).astype(np.float64)
    fp = (~y_true & y_pred).sum(axis=0).astype(np.float64)
    fn = (y_true & ~y_pred).sum(axis=0).astype(np.float64)
    p, r, f = _prf(tp, fp, fn)
    mp, mr, mf = _prf(np.array([tp.sum()]), np.array([fp.sum()]), np.array([fn.sum()]))
    n = y_true.shape[0]
    return {
        "task": "multilabel", "samples": int(n),
        "subset_accuracy": float((y_true == y_pred).all(axis=1).mean()) if n else 0.0,
        "hamming_accuracy": float((y_true == y_pred).mean()) if n else 0.0,
        "precision_macro": float(p.mean()), "recall_macro": float(r.mean()), "f1_macro": float(f.mean()),
        "f1_micro": float(mf[0]),
        "per_class": [{"label": names[i], "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                       "support": int(y_true[:, i].sum())} for i in range(k)],
        "labels": names,
    }


def regression_metrics(y_true, y_pred) -> dict:
    """MSE, MAE, RMSE, R^2 (over all values; 1 - SSE / SST) and the largest absolute error."""
    y_true = np.asarray(y_true, np.float64)
    y_pred = np.asarray(y_pred, np.float64)
    n = y_true.shape[0] if y_true.ndim else 1
    t, p = y_true.reshape(n, -1), (y_pred.reshape(n, -1) if y_pred.size == y_true.size else None)
    if p is None:
        raise EdgemmError(f"Labels | Regression targets of shape {y_true.shape} for outputs of shape "
                          f"{y_pred.shape}; expected one target per output value.")
    if n == 0:
        return {"task": "regression", "samples": 0}
    err = p - t
    sst = float(((t - t.mean(axis=0)) ** 2).sum())
    sse = float((err ** 2).sum())
    return {
        "task": "regression", "samples": int(n),
        "mse": float((err ** 2).mean()), "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err ** 2).mean())),
        "r2": float(1 - sse / sst) if sst > 0 else None,
        "max_abs_error": float(np.abs(err).max()),
    }


# --------------------------------------------------------------------------------------------------
# Closeness of outputs
# --------------------------------------------------------------------------------------------------


@dataclass
class _CloseAcc:
    n: int = 0
    elements: int = 0
    max_abs: float = 0.0
    sum_abs: float = 0.0
    max_rel: float = 0.0
    cos: list[float] = field(default_factory=list)
    agree: int = 0
    agree_n: int = 0
    shape_mismatch: str | None = None
    # Over all samples as one vector: the only cosine that means anything for an output of one value per
    # sample (a VAD's probability), where the per-sample cosine is the sign.
    dot: float = 0.0
    ref_sq: float = 0.0
    cand_sq: float = 0.0


class Closeness:
    """Streaming closeness of candidate outputs to reference outputs, per output name."""

    def __init__(self, argmax_outputs: Iterable[str] | None = None, detections: Mapping[str, OutputSpec] | None = None):
        self.acc: dict[str, _CloseAcc] = {}
        # Outputs whose argmax means something (class scores); None: every 2-D output with several columns.
        self.argmax_outputs = set(argmax_outputs) if argmax_outputs is not None else None
        # Detection outputs edgemm decodes (and their parts): what their closeness means is the boxes', decoded
        # on both sides, not the raw maps' (CenterFace's sub-cell offsets: cosine 0.78 for boxes that agree
        # at F1 0.945).
        self.detections = {n: s for n, s in (detections or {}).items() if s.detection is not None}
        self._boxes: dict[str, tuple[list, list]] = {n: ([], []) for n in self.detections}

    def update(self, ref: Mapping[str, np.ndarray], cand: Mapping[str, np.ndarray]) -> None:
        for name, r in ref.items():
            if name not in cand:
                continue
            a = self.acc.setdefault(name, _CloseAcc())
            r = np.asarray(r, np.float64)
            c = np.asarray(cand[name], np.float64)
            if r.shape != c.shape:
                a.shape_mismatch = f"{c.shape} vs {r.shape}"
                continue
            n = r.shape[0] if r.ndim else 1
            r2, c2 = r.reshape(n, -1), c.reshape(n, -1)
            diff = np.abs(r2 - c2)
            floor = np.maximum(1e-3 * np.abs(r2).max(axis=1, keepdims=True), 1e-12)
            rel = diff / np.maximum(np.abs(r2), floor)
            a.n += n
            a.elements += diff.size
            a.max_abs = max(a.max_abs, float(diff.max(initial=0)))
            a.sum_abs += float(diff.sum())
            a.max_rel = max(a.max_rel, float(rel.max(initial=0)))
            nr, nc = np.linalg.norm(r2, axis=1), np.linalg.norm(c2, axis=1)
            denom = nr * nc
            cos = np.where(denom > 0, (r2 * c2).sum(axis=1) / np.where(denom > 0, denom, 1),
                           np.where((nr == 0) & (nc == 0), 1.0, 0.0))
            a.cos.extend(float(x) for x in cos)
            a.dot += float((r2 * c2).sum())
            a.ref_sq += float((r2 * r2).sum())
            a.cand_sq += float((c2 * c2).sum())
            scores = self.argmax_outputs is None or name in self.argmax_outputs
            if scores and r2.shape[1] > 1 and r.ndim == 2:
                a.agree += int((r2.argmax(axis=1) == c2.argmax(axis=1)).sum())
                a.agree_n += n
        for name, spec in self.detections.items():
            need = [name, *spec.detection.parts.values()]
            if not all(k in ref and k in cand for k in need):
                continue
            refs, cands = self._boxes[name]
            for i in range(np.shape(ref[name])[0]):  # in the output's own units (size 1 x 1): both sides alike
                refs.append(decode_boxes({k: np.asarray(ref[k])[i:i + 1] for k in need}, spec, (1, 1)))
                cands.append(decode_boxes({k: np.asarray(cand[k])[i:i + 1] for k in need}, spec, (1, 1)))

    def result(self) -> dict[str, dict]:
        out = {}
        for name, a in self.acc.items():
            if a.shape_mismatch and not a.n:
                out[name] = {"error": f"shapes differ: {a.shape_mismatch}"}
                continue
            d = {"samples": a.n, "max_abs": a.max_abs, "mean_abs": a.sum_abs / max(a.elements, 1),
                 "max_rel": a.max_rel, "cosine": float(np.mean(a.cos)) if a.cos else None,
                 "cosine_min": float(np.min(a.cos)) if a.cos else None,
                 "cosine_all": cosine_from_sums(a.dot, a.ref_sq, a.cand_sq), "values_per_sample": a.elements // max(a.n, 1)}
            if a.agree_n:
                d["top1_agreement"] = a.agree / a.agree_n
            out[name] = d
        for name, spec in self.detections.items():
            refs, cands = self._boxes[name]
            found = sum(int((r.scores >= spec.detection.conf).sum()) for r in refs)
            # Where the original found no box at all (a person detector on photographs without people), box
            # agreement is vacuous: the raw outputs' cosine is all there is to judge.
            if found and "error" not in out.get(name, {"error": ""}):
                agree = agreement(refs, cands, spec.detection.conf)
                out[name].update(box_f1=agree["box_f1"], box_precision=agree["precision"],
                                 box_recall=agree["recall"], boxes=found)
                for part in spec.detection.parts.values():
                    if part != name and part in out:
                        out[part]["part_of"] = name  # judged through the boxes it decodes into
        return out


def cosine_from_sums(dot: float, ref_sq: float, cand_sq: float) -> float:
    """The cosine of two vectors accumulated as sums (r.c, r.r, c.c); 1 when both are zero, 0 when one is."""
    den = np.sqrt(ref_sq) * np.sqrt(cand_sq)
    return float(dot / den) if den > 0 else float(ref_sq == cand_sq)


# The floor of a detection output edgemm decodes: the F1 of its boxes against the original's (same class, IoU
# >= 0.5, at the manifest's conf). A sanity floor, as the cosine's is: a graph whose boxes are broken (F1 far
# below 1) is refused, while box agreement is no measure of a small mAP loss (it stayed above 0.99 for INT8
# graphs of the driving detector that lost 2.3-2.5 points of mAP@0.5; judge those with --max-drop and labels).
# CenterFace's ONNX Runtime INT8, -0.14 points of mAP@0.5 on labelled faces, agrees at F1 0.965.
MIN_BOX_F1 = 0.9


def floor_measure(entry: dict, floor: float) -> tuple[str, float, float] | None:
    """(what, value, least) a closeness floor judges an output by: box F1 for a decoded detection output
    (at least MIN_BOX_F1, or floor if lower), nothing for a part of one (its boxes are judged), else the
    mean per-sample cosine, or for an output of one value per sample (whose per-sample cosine is only its
    sign) the cosine over all samples (at least floor)."""
    if "box_f1" in entry:
        return "box F1 against the original's boxes", entry["box_f1"], min(MIN_BOX_F1, floor)
    if "part_of" in entry:
        return None
    cos = entry.get("cosine_all") if entry.get("values_per_sample", 2) < 2 else entry.get("cosine")
    return None if cos is None else ("cosine", cos, floor)


def below_floor(close: Mapping[str, dict], floor: float) -> list[tuple[str, str, float, float]]:
    """The outputs below their floor (floor_measure), worst first: [(name, what, value, least)]."""
    low = [(name, *m) for name, entry in close.items() if (m := floor_measure(entry, floor)) and m[1] < m[2]]
    return sorted(low, key=lambda x: x[2])


def closeness(ref_outputs: Sequence[Mapping[str, np.ndarray]], cand_outputs: Sequence[Mapping[str, np.ndarray]]) -> dict:
    """Per output: max_abs, max_rel, mean_abs, cosine (mean per sample), cosine_min, top1_agreement."""
    c = Closeness()
    for r, k in zip(ref_outputs, cand_outputs):
        c.update(r, k)
    return c.result()


# --------------------------------------------------------------------------------------------------
# Running bundles over data
# --------------------------------------------------------------------------------------------------


def _decision_specs(fm) -> dict:
    return {n: s for n, s in fm.output_specs.items() if s.task in DECISION_TASKS}


def _predict(spec, values: np.ndarray) -> np.ndarray:
    if spec.task == "classification":
        return np.asarray(values).reshape(values.shape[0], -1).argmax(axis=1)
    if spec.task == "multilabel":
        return np.asarray(values) > (0.5 if spec.scores == "probabilities" else 0.0)
    return np.asarray(values)


def _check_labels(spec, name: str, y: np.ndarray, n_out: int, where: str) -> np.ndarray:
    if spec.task == "classification":
        y = np.asarray(y)
        if y.ndim > 1 and y.shape[1:] != (1,) * (y.ndim - 1):
            raise EdgemmError(f"{where} | Labels for {name} have shape {y.shape}; expected one class index per sample.")
        if not np.issubdtype(y.dtype, np.integer):
            if not np.all(np.mod(y, 1) == 0):
                raise EdgemmError(f"{where} | Labels for {name} are not whole numbers; expected class indices.")
        y = y.reshape(-1).astype(np.int64)
        bad = y[(y < 0) | (y >= n_out)]
        if bad.size:
            raise EdgemmError(f"{where} | Label {int(bad[0])} for {name} is out of range; expected a class index "
                              f"0..{n_out - 1}.")
    return y


def _chunks(data, limit: int | None, batch: int, progress: bool = False) -> Iterator:
    """Samples of the folder in chunks of at most `batch`, at most `limit` samples in all: with a limit below
    the folder's samples, those spread over it that calibration and the guard take too
    (DataFolder.single_samples), so every figure of a conversion is measured on the same kind of subset."""
    if limit is not None:
        part: list[Sample] = []
        for one in data.single_samples(progress=progress, limit=limit):
            if part and (len(part) == batch or _keys(one) != _keys(part[0])):
                yield _stack(part)
                part = []
            part.append(one)
        if part:
            yield _stack(part)
        return
    done = 0
    for s in data.samples(progress=progress):
        for i in range(0, s.batch, batch):
            if limit is not None and done >= limit:
                return
            j = min(s.batch, i + batch)
            if limit is not None:
                j = min(j, i + limit - done)
            yield Sample({k: v[i:j] for k, v in s.tensors.items()}, {k: v[i:j] for k, v in s.labels.items()},
                         f"{s.name}[{i}:{j}]")
            done += j - i


def _keys(s: Sample) -> tuple:
    return tuple(s.tensors), tuple(s.labels)


def _stack(part: list[Sample]) -> Sample:
    name = part[0].name if len(part) == 1 else f"{part[0].name}..{part[-1].name}"
    return Sample({k: np.concatenate([p.tensors[k] for p in part]) for k in part[0].tensors},
                  {k: np.concatenate([p.labels[k] for p in part]) for k in part[0].labels}, name)


class _Collector:
    """Predictions and labels of the decision outputs for one model and one condition."""

    def __init__(self, specs):
        self.specs = specs
        self.pred: dict[str, list] = {n: [] for n in specs}
        self.true: dict[str, list] = {n: [] for n in specs}
        self.width: dict[str, int] = {}

    def add(self, outputs: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], where: str) -> None:
        for name, spec in self.specs.items():
            if name not in labels or name not in outputs:
                continue
            values = outputs[name]
            n_out = int(np.prod(values.shape[1:])) if values.ndim > 1 else 1
            y = _check_labels(spec, name, labels[name], n_out, where)
            self.width[name] = n_out
            self.pred[name].append(_predict(spec, values))
            self.true[name].append(y)

    def metrics(self) -> dict[str, dict]:
        out = {}
        for name, spec in self.specs.items():
            if not self.true[name]:
                continue
            t, p = np.concatenate(self.true[name]), np.concatenate(self.pred[name])
            if spec.task == "classification":
                out[name] = classification_metrics(t, p, spec.labels or self.width[name])
            elif spec.task == "multilabel":
                out[name] = multilabel_metrics(t, p, spec.labels)
            else:
                out[name] = regression_metrics(t, p)
        return out


def _conditions(bundle, ablation: bool) -> list[tuple[str, dict]]:
    """("full", {}) then ("without_<modality>", {modality: False}) for multimodal bundles."""
    conds = [("full", {})]
    mods = bundle.manifest.modalities()
    if ablation and len(mods) > 1:
        conds += [(f"without_{m}", {m: False}) for m in mods]
    return conds


def _data_folder(data, bundle, what: str):
    return data if hasattr(data, "samples") else DataFolder(data, bundle, what)


def _where(data, sample) -> str:
    return f"Evaluation data: {Path(getattr(data, 'folder', '')) / sample.name.split('[')[0]}"


def evaluate(bundle, data, backend: str = "onnxruntime", threads: int | None = None, limit: int | None = None,
             ablation: bool = True, batch: int | None = None, progress: bool = False) -> dict:
    """Task metrics of every decision output with labels, plus per-modality ablation (multimodal bundles).

    bundle: a Bundle or a path; data: a DataFolder or a folder path.
    """
    report = compare_bundles(bundle, None, data, backend, threads, limit, ablation, batch, progress=progress)
    return report["original"] | {"data": report["data"], "samples": report["samples"], "primary": report["primary"]}


def compare_bundles(original, converted, data, backend: str = "onnxruntime", threads: int | None = None,
                    limit: int | None = None, ablation: bool = True, batch: int | None = None,
                    converted_backend: str | None = None, progress: bool = False) -> dict:
    """Both bundles on the same samples: metrics, drop in points, closeness of every output, ablation.

    converted may be None (then only the original is evaluated: what `evaluate` returns).
    Returns {"data", "samples", "original": {...}, "converted": {...}, "drop_points": {...},
    "closeness": {...}, "primary": {...}}.
    """
    if limit is not None and limit < 1:
        raise EdgemmError(f"Limit: {limit} | Expected a positive number of samples.")
    bundles = [b if hasattr(b, "manifest") else load_bundle(b) for b in (original, converted) if b is not None]
    folder = _data_folder(data, bundles[0], "Evaluation data")
    models = [FusionModel(b, be, threads) for b, be in zip(bundles, (backend, converted_backend or backend))]
    for fm in models[1:]:
        if set(_decision_specs(fm)) != set(_decision_specs(models[0])):
            raise EdgemmError(f"Converted model: {bundles[1].source or bundles[1].root} | Has decision outputs "
                              f"{', '.join(_decision_specs(fm))}; expected those of the original "
                              f"({', '.join(_decision_specs(models[0]))}).")
    conds = _conditions(bundles[0], ablation)
    collectors = [{c: _Collector(_decision_specs(fm)) for c, _ in conds} for fm in models]
    cls = [n for n, sp in _decision_specs(models[0]).items() if sp.task == "classification"]
    members = list(bundles[0].manifest.fusion.members) if bundles[0].manifest.fusion.form == "late" else []
    detections = {o.name: o for g in bundles[0].manifest.graphs.values() for o in g.outputs if o.detection}
    close = Closeness(cls + [f"{m}:{n}" for m in members for n in cls], detections)
    ablation_agree = [{c: Closeness(cls) for c, _ in conds[1:]} for _ in models]
    n = 0
    labelled = 0
    entered = []
    try:
        for fm in models:
            entered.append(fm.__enter__())
        size = batch or (BATCH if dynamic_batch(r for fm in models for r in fm.runners.values()) else 1)
        for sample in _chunks(folder, limit, size, progress):
            where = _where(folder, sample)
            full_results = []
            for mi, fm in enumerate(models):
                for cname, present in conds:
                    try:
                        res = fm.infer(sample.tensors, present)
                    except EdgemmError as exc:
                        raise EdgemmError(f"{where} | {exc}") from exc
                    collectors[mi][cname].add(res.outputs, sample.labels, where)
                    if cname == "full":
                        full_results.append(res)
                    else:
                        ablation_agree[mi][cname].update(full_results[mi].outputs, res.outputs)
            if len(full_results) == 2:
                ref, cand = full_results
                close.update(_all_outputs(ref), _all_outputs(cand))
            n += sample.batch
            labelled += sample.batch if sample.labels else 0
    finally:
        for fm in entered:
            fm.__exit__(None, None, None)
    if n == 0:
        raise EdgemmError(f"Evaluation data: {folder.source} | Holds no samples; expected at least one.")
    summaries = []
    for mi, (b, fm) in enumerate(zip(bundles, models)):
        full = collectors[mi]["full"].metrics()
        summary = {"model": str(b.source or b.root), "name": b.name, "backend": fm.runners[fm.decision_graph].describe()
                   if hasattr(fm.runners[fm.decision_graph], "describe") else backend,
                   "fusion": b.manifest.fusion.form, "modalities": b.manifest.modalities(),
                   "labelled": labelled, "outputs": full}
        if len(conds) > 1:
            abl = {}
            agree = {c: r for c, r in ((c, ablation_agree[mi][c].result()) for c, _ in conds[1:])}
            for cname, present in conds[1:]:
                entry = {"missing": [m for m, v in present.items() if not v],
                         "outputs": collectors[mi][cname].metrics(),
                         "agreement_with_full": {o: v.get("top1_agreement") for o, v in agree[cname].items()
                                                 if "top1_agreement" in v}}
                abl[cname] = entry
            summary["ablation"] = abl
        summaries.append(summary)
    report = {"data": str(folder.source), "samples": n, "original": summaries[0]}
    if len(summaries) == 2:
        report["converted"] = summaries[1]
        report["drop_points"] = drop_points(summaries[0]["outputs"], summaries[1]["outputs"])
        report["closeness"] = close.result()
    report["primary"] = _primary(report, primary_output(bundles[0]))
    return report


def _all_outputs(res) -> dict[str, np.ndarray]:
    """Decision outputs, plus intermediate embeddings and late members' outputs (prefixed)."""
    out = dict(res.outputs)
    out.update({k: v for k, v in res.embeddings.items()})
    for mod, outs in res.per_modality.items():
        out.update({f"{mod}:{k}": v for k, v in outs.items()})
    return out


def drop_points(orig: Mapping[str, dict], conv: Mapping[str, dict]) -> dict[str, dict]:
    """Per output, original minus converted of each headline metric: percentage points for fractions
    (accuracy, F1, ...), a relative increase for errors (mse, mae)."""
    out = {}
    for name, om in orig.items():
        cm = conv.get(name)
        if not cm:
            continue
        d = {}
        for key in ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "subset_accuracy",
                    "f1_micro", "hamming_accuracy"):
            if om.get(key) is not None and cm.get(key) is not None:
                d[key] = 100.0 * (om[key] - cm[key])
        for key in ("mse", "mae"):
            if om.get(key) is not None and cm.get(key) is not None:
                d[f"{key}_increase"] = cm[key] - om[key]
                d[f"{key}_ratio"] = cm[key] / om[key] if om[key] else None
        out[name] = d
    return out


def _primary(report: dict, preferred: str | None = None) -> dict | None:
    """The headline (what `edgemm convert` and `edgemm eval` print first): the bundle's primary output (the
    one `edgemm run` decides on and `label` refers to) when it has labels, else the first labelled
    decision output; its metric and the drop."""
    outs = report["original"]["outputs"]
    if not outs:
        return None
    name = preferred if preferred in outs else next(iter(outs))
    metric, value, higher = primary_metric(outs[name])
    p = {"output": name, "metric": metric, "higher_is_better": higher, "original": value}
    if "converted" in report:
        cv = report["converted"]["outputs"].get(name, {}).get(metric)
        p["converted"] = cv
        if value is not None and cv is not None:
            p["drop_points"] = 100.0 * (value - cv) if metric != "mse" else None
            p["change"] = cv - value
    return p


def write_report(out_dir, report: dict) -> dict[str, Path]:
    """Write report.json, report.md and (where it fits) confusion.png into out_dir; returns their paths."""
    return _write(out_dir, report)


# --------------------------------------------------------------------------------------------------
# Size and latency before/after (sections of the report)
# --------------------------------------------------------------------------------------------------


def size_section(original, converted) -> dict:
    """{"parameters"|"macs"|"size_bytes"|"precision": {"before", "after"}} over all graphs of two bundles,
    and the same per graph under "graphs" (graph -> {"parameters"|"macs"|"size_bytes": {"before", "after"}})."""
    a, b = (bundle_info(x if hasattr(x, "manifest") else load_bundle(x)) for x in (original, converted))
    keys = ("parameters", "macs", "size_bytes")
    out: dict = {k: {"before": a[k], "after": b[k]} for k in keys}
    out["precision"] = {"before": a["precision"], "after": b["precision"]}
    out["graphs"] = {g: {k: {"before": a["graphs"][g][k], "after": b["graphs"][g][k]} for k in keys}
                     for g in a["graphs"] if g in b["graphs"]}
    return out


def latency_section(original, converted, backend: str = "onnxruntime", threads: int | None = 1,
                    duration_s: float = 3.0, converted_backend: str | None = None) -> dict:
    """Median/p90 latency per graph of both bundles, measured interleaved in one run (converters.timing),
    with synthesised batch-1 inputs; "speedup" is before / after of the medians (sum over graphs in "total")."""
    bundles = [x if hasattr(x, "manifest") else load_bundle(x) for x in (original, converted)]
    runners, specs = {}, {}
    for tag, b, be in (("before", bundles[0], backend), ("after", bundles[1], converted_backend or backend)):
        for g, spec in b.manifest.graphs.items():
            runners[f"{tag}:{g}"] = make_runner(b, g, be, threads)
            specs[f"{tag}:{g}"] = spec
    results = time_models(runners, threads=threads, duration_s=duration_s, graph_specs=specs)
    out: dict = {}
    tot_b = tot_a = 0.0
    for g in bundles[0].manifest.graphs:
        rb, ra = results.get(f"before:{g}"), results.get(f"after:{g}")
        if rb is None or ra is None:
            continue
        b50, a50 = rb["latency_ms"]["p50"], ra["latency_ms"]["p50"]
        tot_b, tot_a = tot_b + b50, tot_a + a50
        out[f"{g} median ms"] = {"before": b50, "after": a50, "p90_before": rb["latency_ms"]["p90"],
                                 "p90_after": ra["latency_ms"]["p90"], "backend_after": ra["backend"]}
    if len(out) > 1:
        out["total median ms"] = {"before": tot_b, "after": tot_a}
    out["method"] = {"iterations": min(r["iterations"] for r in results.values()), "batch": 1,
                     "threads": threads, "interleaved": True}
    return out
