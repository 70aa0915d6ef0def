"""Accuracy guard (``--max-drop POINTS``): keep in float the layers that cost the most, until within budget.

The idea is OpenVINO NNCF's ``quantize_with_accuracy_control``, applied to explicit Q/DQ models of any
flavour (ONNX Runtime's u8s8/s8s8 and TensorRT's symmetric s8s8, for which no tool does it today):

1. Quantize everything; measure the metric on the evaluation set. Within budget: done.
2. Rank the quantized layer groups (a layer plus the activation fused with it) by their effect: each group
   is reverted to float on its own and the model re-measured on a ranking subset. The gain in the metric
   ranks first; the reduction of the output error against the float model breaks ties (a metric on a
   few hundred samples moves in whole samples; the output error moves with every layer).
3. Revert groups in rank order, re-measuring the whole evaluation set after each; a step that does not
   help (metric not better, and output error not lower at an equal metric) is undone. Stop when within
   budget, when every group has been tried, or at the iteration cap.

The metric, in points (higher is better): with labels, accuracy x 100 (classification), mean per-label
accuracy x 100 (multilabel), R^2 x 100 (regression), COCO mAP@0.5 x 100 (single-output detectors whose data
folder has box labels: YOLO txt or COCO JSON, as `edgemm eval` reads them); without labels, agreement with
the float model: top-1 agreement x 100 for classification outputs, box agreement (F1 of boxes matched by
class and IoU >= 0.5, x 100) for single-output detectors, whose raw tensors a cosine would judge by their
coordinates, mean cosine similarity x 100 otherwise. Box agreement is no stand-in for mAP: on the driving
detector it stayed within 1 point for INT8 graphs that lost 2.3-2.5 points of mAP@0.5 (benchmarks/RESULTS.md
section 10): it counts matches with float's boxes at the manifest's threshold, while mAP ranks every
candidate by score against the truth.
Q/DQ models are run by ONNX Runtime on the CPU, which computes exactly what the Q/DQ graph specifies;
a TensorRT engine built from it can differ from that by its own kernel rounding.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgemm.converters.data import DataFolder, Sample, primary_output
from edgemm.converters.detection_eval import MAP_CONF, agreement, coco_map, record_boxes
from edgemm.converters.graphs import dynamic_batch
from edgemm.bundle import Bundle
from edgemm.detection import Boxes, decode_boxes, num_classes, to_record, to_source, visible
from edgemm.errors import EdgemmError
from edgemm.fusion import FusionModel
from edgemm.runners.onnxruntime import OnnxRuntimeRunner

log = logging.getLogger(__name__)

EVAL_BATCH = 64
RANK_SAMPLES = 300
MAX_ITERATIONS = 40
# The guard measures many candidates on the same samples, so it holds them in memory: at most this many
# unless a limit (--eval-limit, or --calib-limit when it measures on the calibration data) says otherwise.
GUARD_MAX_SAMPLES = 2000


# --------------------------------------------------------------------------------------------------
# Running a whole bundle from in-memory graphs
# --------------------------------------------------------------------------------------------------


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class _CachedOutputs:
    """A runner whose outputs are remembered per evaluation sample: a graph fed only from the samples
    (an encoder, a late member) gives the same outputs for the same model and sample, so when a candidate
    changes another graph (the head) it is not run again. ``ids`` names the samples of the next feed."""

    def __init__(self, runner, n_samples: int):
        self.runner = runner
        self.ids: np.ndarray | None = None
        self._values: dict[str, np.ndarray] | None = None
        self._have = np.zeros(n_samples, bool)
        self._cacheable = True

    def __getattr__(self, name):  # metadata, describe, is_active ... of the real runner
        return getattr(self.runner, name)

    def infer(self, feed, check_inputs: bool = True):
        ids = self.ids
        if ids is not None and self._values is not None and self._have[ids].all():
            return {k: v[ids] for k, v in self._values.items()}
        out = self.runner.infer(feed, check_inputs)
        if ids is not None and self._cacheable:
            if any(np.ndim(v) == 0 or np.shape(v)[0] != len(ids) for v in out.values()):
                self._cacheable = False  # an output without a batch axis: nothing to key by sample
            else:
                if self._values is None:
                    n = len(self._have)
                    self._values = {k: np.zeros((n, *np.shape(v)[1:]), np.asarray(v).dtype) for k, v in out.items()}
                for k, v in out.items():
                    self._values[k][ids] = v
                self._have[ids] = True
        return out


class BundleEvaluator:
    """Runs a bundle whose graphs are given as ModelProtos on cached samples; computes the metric.

    Sessions are built once per (graph, model): a candidate that changes one graph reuses the runners of
    the others, and the outputs of graphs fed only from the samples (encoders, late members) are reused
    too. Per graph the runner of the pinned model (the guard's current one) and of the latest other model
    are kept; older ones are released.
    """

    def __init__(self, bundle: Bundle, samples: list[Sample], threads: int | None = None, batch: int = EVAL_BATCH):
        if not samples:
            raise EdgemmError("Evaluation data | Holds no samples; expected at least one.")
        self.bundle, self.samples, self.threads, self.batch = bundle, samples, threads, batch
        self.output = primary_output(bundle)
        self.spec = next(o for g in bundle.manifest.graphs.values() for o in g.outputs if o.name == self.output)
        # What a candidate's outputs are judged on: the primary output, and for a detector whose boxes span
        # several outputs (CenterFace's heatmap, scale and offset; EfficientNMS's four) those parts too, each
        # sample's flattened into one row (_packed) so that the guard's arrays stay one per candidate.
        parts = list(self.spec.detection.parts.values()) if self.spec.detection else []
        self._judged = [self.output] + [p for p in parts if p != self.output]
        self._row_shapes: dict[str, tuple] = {}
        labelled = [s.labels.get(self.output) for s in samples]
        self.labels = np.concatenate(labelled) if all(x is not None for x in labelled) else None
        self.image = None  # the detector's video preprocessing (letterbox or stretch), for mapping boxes
        self.class_names: list[str] = []
        self.truth, self.metric_note = self._box_truth(samples)
        self.reference: np.ndarray | None = None  # the float model's judged outputs (_packed), for closeness
        # The fusion logic of the bundle's form; its runners are swapped for the cached ones of each call.
        self._fm = FusionModel(bundle, "onnxruntime", threads)
        self._runners: dict[str, list[tuple[object, object]]] = {g: [] for g in bundle.manifest.graphs}
        self._pinned: dict[str, int] = {}
        # Graphs whose outputs are worth keeping: fed only from the samples, in a bundle of several graphs
        # (a single early-fusion graph changes with every candidate).
        self._sample_fed = {g: len(bundle.manifest.graphs) > 1 and
                            not any(s.modality == "embedding" and s.source for s in spec.inputs)
                            for g, spec in bundle.manifest.graphs.items()}

    @property
    def _boxes(self) -> bool:
        """A detector: judged by mAP@0.5 on box labels, else by box agreement with float."""
        return self.spec.detection is not None

    def _packed(self, outputs: dict) -> np.ndarray:
        """The judged outputs of one batch: the primary output itself, or with parts, each sample's judged
        outputs flattened into one float32 row (shapes kept in _row_shapes for _decode; integer parts such as
        EfficientNMS's counts and classes are exact in float32)."""
        if len(self._judged) == 1:
            return np.asarray(outputs[self.output])
        arrays = [np.asarray(outputs[n]) for n in self._judged]
        self._row_shapes = {n: a.shape[1:] for n, a in zip(self._judged, arrays)}
        return np.concatenate([a.reshape(len(a), -1).astype(np.float32) for a in arrays], axis=1)

    def _decode(self, out: np.ndarray, k: int, size: tuple[int, int], conf: float | None = None) -> Boxes:
        """The boxes of sample k of a judged batch, decoded as the runtime decodes them."""
        if len(self._judged) == 1:
            return decode_boxes({self.output: out[k:k + 1]}, self.spec, size, conf=conf)
        outs, start = {}, 0
        for name, shape in self._row_shapes.items():
            n = int(np.prod(shape))
            outs[name] = out[k, start:start + n].reshape(1, *shape)
            start += n
        return decode_boxes(outs, self.spec, size, conf=conf)

    def _box_truth(self, samples: list[Sample]):
        """(truth per sample, note): the box labels when every sample has them, and for a detector without
        them, a note that says it is judged by box agreement instead of mAP."""
        if not self._boxes:
            return None, None
        truth = [t for s in samples for t in (s.truth if s.truth is not None else [None] * s.batch)]
        graph = next(g for g in self.bundle.manifest.graphs.values() if any(o.name == self.output for o in g.outputs))
        self.image = next((i.preprocess for i in graph.inputs if i.modality == "video"), None)
        have = sum(t is not None for t in truth)
        if have == len(truth) and self.image is not None:
            n = max([num_classes(self.spec) or 0] + [int(c) + 1 for t in truth for c in t.boxes.classes])
            self.class_names = self.spec.labels or [str(c) for c in range(max(n, 1))]
            return truth, None
        why = "no box labels in the data (YOLO txt or a COCO JSON beside the images)" if not have else \
            f"{len(truth) - have} of {len(truth)} samples have no box labels"
        return None, f"{why}: judged by box agreement with the float model, not mAP"

    @property
    def metric_name(self) -> str:
        if self.truth is not None:
            return "mAP@0.5 (%)"
        if self._boxes:
            return "box F1 x 100 vs float (IoU >= 0.5)"
        if self.labels is None:
            return "top-1 agreement with float (%)" if self.spec.task == "classification" else "cosine x 100 vs float"
        return {"classification": "accuracy (%)", "multilabel": "mean label accuracy (%)",
                "regression": "R^2 x 100"}.get(self.spec.task, "cosine x 100 vs labels")

    def pin(self, models: dict[str, object]) -> None:
        """Keep the runners of these models (the guard's current models) while candidates come and go."""
        self._pinned = {g: id(m) for g, m in models.items()}

    def _runner(self, graph: str, model):
        entries = self._runners[graph]
        for i, (m, r) in enumerate(entries):
            if m is model:
                entries.append(entries.pop(i))  # most recently used last
                return r
        runner = OnnxRuntimeRunner(model.SerializeToString(), "cpu", self.threads, name=graph,
                                   graph_spec=self.bundle.manifest.graphs[graph])
        runner.activate()
        if self._sample_fed[graph]:
            runner = _CachedOutputs(runner, len(self.samples))
        entries.append((model, runner))
        pinned = self._pinned.get(graph)
        while len(entries) > 2:  # release the oldest that is not pinned
            k = next(i for i, (m, _) in enumerate(entries) if id(m) != pinned)
            _, old = entries.pop(k)
            old.deactivate()
        return runner

    def close(self) -> None:
        for entries in self._runners.values():
            for _, r in entries:
                r.deactivate()
            entries.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def outputs(self, models: dict[str, object], idx: np.ndarray | None = None) -> np.ndarray:
        """The judged outputs (_packed) for the samples (all, or the indices idx), stacked along the batch."""
        idx = np.arange(len(self.samples)) if idx is None else np.asarray(idx)
        runners = {g: self._runner(g, models[g]) for g in self.bundle.manifest.graphs}
        self._fm.use_runners(runners)
        step = self.batch if dynamic_batch(runners.values()) else 1
        outs = []
        for start in range(0, len(idx), step):
            ids = idx[start:start + step]
            for r in runners.values():
                if isinstance(r, _CachedOutputs):
                    r.ids = ids
            part = [self.samples[i] for i in ids]
            tensors = {k: np.concatenate([s.tensors[k] for s in part]) for k in part[0].tensors}
            outs.append(self._packed(self._fm.infer(tensors).outputs))
        return np.concatenate(outs)

    def set_reference(self, float_models: dict[str, object]) -> None:
        self.reference = self.outputs(float_models)

    def metric(self, out: np.ndarray, idx: np.ndarray | None = None) -> float:
        idx = np.arange(len(out)) if idx is None else idx
        task = self.spec.task
        probs_given = self.spec.scores == "probabilities"
        if self.truth is not None:
            return self._map50(out, idx)
        if self._boxes:  # in the output's own units (size 1 x 1): both sides alike
            ref = [self._decode(self.reference, i, (1, 1)) for i in idx]
            return 100.0 * agreement(ref, [self._decode(out, k, (1, 1)) for k in range(len(out))],
                                     self.spec.detection.conf)["box_f1"]
        if self.labels is not None:
            y = self.labels[idx]
            if task == "classification":
                return 100.0 * float(np.mean(out.argmax(-1) == y.reshape(-1)))
            if task == "multilabel":
                p = out if probs_given else _sigmoid(out)
                return 100.0 * float(np.mean((p > 0.5) == (y > 0.5)))
            if task == "regression":
                y = y.reshape(out.shape).astype(np.float64)
                ss_res = float(np.sum((out - y) ** 2))
                ss_tot = float(np.sum((y - y.mean(axis=0)) ** 2)) or 1.0
                return 100.0 * (1.0 - ss_res / ss_tot)
        ref = self.reference[idx]
        if task == "classification":
            return 100.0 * float(np.mean(out.argmax(-1) == ref.argmax(-1)))
        a = out.reshape(len(out), -1).astype(np.float64)
        b = ref.reshape(len(ref), -1).astype(np.float64)
        den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cos = np.where(den > 0, np.sum(a * b, axis=1) / np.where(den > 0, den, 1), 1.0)
        return 100.0 * float(np.mean(cos))

    def _map50(self, out: np.ndarray, idx: np.ndarray) -> float:
        """mAP@0.5 x 100 (detection_eval.coco_map) of the raw outputs against the box labels. The boxes are
        decoded as `edgemm eval` and the runtime decode them (every candidate down to MAP_CONF, the manifest's
        NMS), mapped back through the letterbox or stretch into each image's pixels, where the labels are,
        and rounded as the runtime's record reports them. IoU is the same either way round (both sides under
        one affine map), but only this way are boxes clipped to the frame and those wholly in the padding
        dropped as the runtime reports them, so the float model's figure here is the one `edgemm eval`
        gives on the same folder."""
        truth = [self.truth[i] for i in idx]
        found = []
        for k, t in enumerate(truth):
            b = self._decode(out, k, self.image.size, conf=MAP_CONF)
            if len(b):
                b = visible(Boxes(to_source(b.xyxy, t.frame_hw, self.image), b.scores, b.classes))
            found.append(record_boxes(to_record(b, self.spec)["detections"]))  # rounded as eval scores them
        return 100.0 * coco_map([t.boxes for t in truth], found, self.class_names)["map50"]

    def error(self, out: np.ndarray, idx: np.ndarray | None = None) -> float:
        """Output error against the float model, normalised by the float output's power (NNCF's ranking proxy)."""
        ref = self.reference if idx is None else self.reference[idx]
        den = float(np.mean(ref.astype(np.float64) ** 2)) or 1.0
        return float(np.mean((out.astype(np.float64) - ref) ** 2)) / den


# --------------------------------------------------------------------------------------------------
# The guard
# --------------------------------------------------------------------------------------------------


@dataclass
class GuardStep:
    graph: str
    group: list[str]
    metric_before: float
    metric_after: float
    error_before: float
    error_after: float
    kept_float: bool
    rank_gain: float

    def to_dict(self) -> dict:
        return {"graph": self.graph, "layers": self.group, "metric_before": round(self.metric_before, 4),
                "metric_after": round(self.metric_after, 4),
                "gain_points": round(self.metric_after - self.metric_before, 4),
                "output_error_before": self.error_before, "output_error_after": self.error_after,
                "kept_float": self.kept_float, "rank_gain_points": round(self.rank_gain, 4)}


@dataclass
class GuardResult:
    models: dict[str, object]
    excluded: dict[str, list[str]]
    metric_name: str
    metric_float: float
    metric_all_quantized: float
    metric_final: float
    max_drop: float
    within_budget: bool
    steps: list[GuardStep] = field(default_factory=list)
    ranking: list[dict] = field(default_factory=list)
    groups_total: int = 0
    seconds: float = 0.0
    stop_reason: str = ""

    @property
    def drop(self) -> float:
        return self.metric_float - self.metric_final

    def to_dict(self) -> dict:
        return {
            "metric": self.metric_name, "max_drop_points": self.max_drop,
            "metric_float": round(self.metric_float, 4), "metric_all_quantized": round(self.metric_all_quantized, 4),
            "metric_final": round(self.metric_final, 4), "drop_points": round(self.drop, 4),
            "within_budget": self.within_budget, "stop_reason": self.stop_reason,
            "groups_quantized": self.groups_total, "layers_kept_float": self.excluded,
            "steps": [s.to_dict() for s in self.steps], "ranking": self.ranking[:10], "seconds": round(self.seconds, 1),
        }


QuantizeFn = Callable[[str, list[str]], object]  # (graph, nodes to exclude) -> quantized ModelProto


def _say(msg: str, quiet: bool) -> None:
    log.info(msg)
    if not quiet:
        print(f"edgemm convert: {msg}", file=sys.stderr, flush=True)


def accuracy_guard(evaluator: BundleEvaluator, float_models: dict[str, object], quantize_fn: QuantizeFn,
                   groups: dict[str, list[list[str]]], max_drop: float, rank_samples: int = RANK_SAMPLES,
                   max_iterations: int = MAX_ITERATIONS, quantized: dict[str, object] | None = None,
                   quiet: bool = True, seed: int = 0) -> GuardResult:
    """Quantize all, then keep the most harmful layer groups in float until the drop is within max_drop.

    float_models / quantized: graph -> ModelProto (the all-quantized models, if already made).
    groups: graph -> quantized layer groups (lists of node names; see converters.int8.quantized_groups).
    """
    if max_drop < 0:
        raise EdgemmError(f"Max drop: {max_drop} | Expected a non-negative number of points.")
    start = time.monotonic()
    if evaluator.reference is None:
        evaluator.set_reference(float_models)
    metric_float = evaluator.metric(evaluator.reference)
    current = dict(quantized) if quantized else {g: quantize_fn(g, []) for g in float_models}
    evaluator.pin(current)
    out = evaluator.outputs(current)
    metric_q, err_q = evaluator.metric(out), evaluator.error(out)
    all_groups = [(g, grp) for g in groups for grp in groups[g]]
    result = GuardResult(current, {g: [] for g in float_models}, evaluator.metric_name, metric_float, metric_q,
                         metric_q, max_drop, metric_float - metric_q <= max_drop, groups_total=len(all_groups))
    _say(f"accuracy guard: float {metric_float:.2f}, all quantized {metric_q:.2f} ({evaluator.metric_name}); "
         f"drop {metric_float - metric_q:.2f} points, budget {max_drop:g}", quiet)
    if result.within_budget:
        result.stop_reason = "within budget with every layer quantized"
        result.seconds = time.monotonic() - start
        return result

    # Rank on a subset: each group reverted on its own.
    n = len(evaluator.samples)
    rng = np.random.default_rng(seed)
    subset = np.sort(rng.choice(n, size=min(rank_samples, n), replace=False))
    base_out = out[subset]
    base_metric, base_err = evaluator.metric(base_out, subset), evaluator.error(base_out, subset)
    ranking = []
    for i, (g, grp) in enumerate(all_groups):
        trial = dict(current)
        trial[g] = quantize_fn(g, list(grp))
        o = evaluator.outputs(trial, subset)
        ranking.append({"graph": g, "layers": grp, "gain_points": evaluator.metric(o, subset) - base_metric,
                        "error_reduction": base_err - evaluator.error(o, subset)})
        if not quiet:
            sys.stderr.write(f"\redgemm convert: ranking layers {i + 1}/{len(all_groups)}")
    if not quiet and all_groups:
        sys.stderr.write("\n")
    ranking.sort(key=lambda r: (r["gain_points"], r["error_reduction"]), reverse=True)
    result.ranking = [{**r, "gain_points": round(r["gain_points"], 4)} for r in ranking]

    excluded: dict[str, list[str]] = {g: [] for g in float_models}
    metric_cur, err_cur = metric_q, err_q
    iterations = 0
    for r in ranking:
        if metric_float - metric_cur <= max_drop:
            break
        if iterations >= max_iterations:
            break
        iterations += 1
        g, grp = r["graph"], r["layers"]
        trial_excl = excluded[g] + list(grp)
        trial = dict(current)
        trial[g] = quantize_fn(g, trial_excl)
        o = evaluator.outputs(trial)
        m, e = evaluator.metric(o), evaluator.error(o)
        better = m > metric_cur + 1e-9 or (abs(m - metric_cur) <= 1e-9 and e < err_cur)
        result.steps.append(GuardStep(g, list(grp), metric_cur, m, err_cur, e, better, r["gain_points"]))
        _say(f"accuracy guard: {'keep' if better else 'undo'} {'+'.join(grp)} in float: "
             f"{metric_cur:.2f} -> {m:.2f}", quiet)
        if better:
            excluded[g] = trial_excl
            current = trial
            evaluator.pin(current)
            metric_cur, err_cur = m, e
    result.models = current
    result.excluded = excluded
    result.metric_final = metric_cur
    result.within_budget = metric_float - metric_cur <= max_drop
    if result.within_budget:
        result.stop_reason = f"within budget after {iterations} step(s)"
    elif iterations >= max_iterations:
        result.stop_reason = f"iteration cap ({max_iterations}) reached"
    else:
        result.stop_reason = "every quantized layer group tried"
    result.seconds = time.monotonic() - start
    return result


def guard_samples(folder: DataFolder, limit: int) -> tuple[list[Sample], bool]:
    """Evaluation samples in memory (the guard measures many candidates on the same set): at most limit,
    spread over the folder. Returns (samples, capped): capped when the folder holds more, counted from its
    file list and .npz headers, so that the spread is over limit samples (reading limit + 1 to find out, and
    dropping the last, left out the sample nearest the folder's end)."""
    return list(folder.single_samples(limit=limit)), folder.sample_count() > limit
