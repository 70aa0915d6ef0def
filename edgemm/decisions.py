"""From raw model outputs to what a user acts on: labels and scores, alerts, attribution.

``decode``         turns each decision output into JSON-able values by its task (classification: softmax when
                   the scores are logits, top label and score; multilabel: sigmoid and the labels above 0.5;
                   regression: the values; embeddings: only their size). Detection outputs need the frame
                   and the tracker's state, so ``Decisions.decode`` does them (edgemm/detection.py,
                   edgemm/tracking.py): boxes in source-frame pixels, labels, track ids and counts per label.
``AlertMonitor``   watches one score over time: an exponential moving average with a time constant (results
                   do not arrive at a fixed rate), hysteresis (on above ``on``, off below ``off``) and a
                   minimum duration before an alert starts or ends, so one noisy frame never pages anyone.
                   It emits ``alert_start`` / ``alert_end`` events.
``attribution``    how much of the reported score each modality carries: the score of the reported label
                   with everything, minus the score with that modality left out (late fusion: the other
                   members combined; intermediate: the head with that embedding zeroed and flagged absent;
                   early: optionally, the whole model with that input zeroed). ``scheduler.py`` produces the
                   "left out" outputs; this module turns them into numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from edgemm.bundle import OutputSpec, VideoPreprocess
from edgemm.detection import Boxes, decode_boxes, label_of, part_names, to_record, to_source, visible
from edgemm.errors import EdgemmError

MAX_VALUES = 16  # regression / other outputs larger than this are summarised, not dumped into every record


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def scores_of(value: np.ndarray, spec: OutputSpec) -> np.ndarray:
    """Per-class scores in [0, 1] of the first batch item (classification: probabilities; multilabel:
    sigmoid when logits); for other tasks the raw values, flattened."""
    v = np.asarray(value, np.float64)
    v = v[0] if v.ndim >= 2 else v
    v = v.reshape(-1)
    if spec.task == "classification":
        if spec.scores != "logits":
            return v
        e = np.exp(v - v.max())
        return e / e.sum()
    if spec.task == "multilabel":
        return _sigmoid(v) if spec.scores == "logits" else v
    return v


def _label(spec: OutputSpec, i: int) -> str:
    return spec.labels[i] if spec.labels and i < len(spec.labels) else str(i)


SMALL = 64  # classes up to which a classification is decoded in plain Python (see _classes)


def _classes(value: np.ndarray, spec: OutputSpec) -> list[float]:
    """scores_of for a classification of at most SMALL classes, as a list: this runs for every result on
    the inference thread, and on a 10-class vector numpy's fixed cost per call (about a microsecond, six
    calls) was most of the decoding's time; the same float64 arithmetic in Python costs a fraction."""
    v = value[0] if value.ndim >= 2 else value
    x = [float(a) for a in np.ravel(v).tolist()]
    if spec.scores != "logits":
        return x
    m = max(x)
    e = [math.exp(a - m) for a in x]
    total = sum(e)
    return [a / total for a in e]


def decode_output(value: np.ndarray, spec: OutputSpec, top_k: int = 3) -> dict:
    """One output -> a small JSON-able dict."""
    if spec.task == "classification":
        value = np.asarray(value)
        if value.size <= SMALL or (value.ndim >= 2 and value[0].size <= SMALL):
            p = _classes(value, spec)
            order = sorted(range(len(p)), key=p.__getitem__, reverse=True)[:top_k]
            top = [[_label(spec, i), round(p[i], 6)] for i in order]
        else:
            q = scores_of(value, spec)
            order = np.argsort(-q, kind="stable")[:top_k].tolist()
            top = [[_label(spec, i), round(s, 6)] for i, s in zip(order, q[order].tolist())]
        return {"label": top[0][0], "index": order[0], "score": top[0][1], "top": top}
    if spec.task == "multilabel":
        p = scores_of(value, spec)
        on = [i for i in np.argsort(-p) if p[i] >= 0.5]
        return {"labels": [_label(spec, int(i)) for i in on],
                "scores": {_label(spec, i): round(float(p[i]), 6) for i in range(p.size)}}
    v = np.asarray(value)
    if spec.task == "embedding" or v.size > MAX_VALUES:
        flat = v.astype(np.float64).reshape(-1)
        return {"shape": list(v.shape), "norm": round(float(np.linalg.norm(flat)), 6),
                "mean": round(float(flat.mean()), 6) if flat.size else 0.0}
    return {"values": [round(float(x), 6) for x in np.asarray(v, np.float64).reshape(-1)]}


def primary_output(specs: Mapping[str, OutputSpec]) -> str:
    """The output decisions, alerts and `label` in data folders refer to: the first classification (or
    multilabel) output, else the first decoded detection output, else the first regression output, else the
    first."""
    for tasks in (("classification", "multilabel"), ("detection",), ("regression",)):
        for name, spec in specs.items():
            if spec.task in tasks and (spec.task != "detection" or spec.detection is not None):
                return name
    return next(iter(specs))


def decode(outputs: Mapping[str, np.ndarray], specs: Mapping[str, OutputSpec]) -> dict[str, dict]:
    """Outputs decoded on their own (detection outputs and their parts excluded: see Decisions.decode)."""
    parts = part_names(specs)
    return {name: decode_output(outputs[name], spec) for name, spec in specs.items()
            if name in outputs and spec.detection is None and name not in parts}


def target_score(value: np.ndarray, spec: OutputSpec, index: int) -> float:
    """The score a decision rests on: probability of class `index` (classification/multilabel), else the
    value at `index`."""
    s = scores_of(value, spec)
    return float(s[index]) if 0 <= index < s.size else float("nan")


def attribution(full: Mapping[str, np.ndarray], without: Mapping[str, Mapping[str, np.ndarray] | None],
                specs: Mapping[str, OutputSpec], output: str | None = None, index: int | None = None) -> dict:
    """Leave-one-out attribution of the primary output's reported score to each modality.

    without[m] are the outputs with modality m left out (None when nothing is left, i.e. m was the only
    modality: then m carries the whole score). Returns {modality: score(all) - score(without m)} plus
    "output", "label" and "score" it refers to.
    """
    output = output or primary_output(specs)
    spec = specs[output]
    if index is None:
        s = scores_of(full[output], spec)
        index = int(np.argmax(s)) if spec.task in ("classification", "multilabel") else 0
    base = target_score(full[output], spec, index)
    out: dict = {"output": output, "score": round(base, 6)}
    if spec.task in ("classification", "multilabel"):
        out["label"] = _label(spec, index)
    for mod, outs in without.items():
        other = 0.0 if outs is None else target_score(outs[output], spec, index)
        out[mod] = round(base - other, 6)
    return out


# --------------------------------------------------------------------------------------------------
# Alerts
# --------------------------------------------------------------------------------------------------


@dataclass
class AlertRule:
    """Raise an alert while a label's score stays high.

    on / off:      hysteresis thresholds on the smoothed score (off <= on): it takes `on` to start, and the
                   score must fall below `off` to end, so a score hovering at the threshold does not flap.
    min_on_s:      the smoothed score must stay >= on this long before the alert starts.
    min_off_s:     and < off this long before it ends.
    smoothing_s:   time constant of the moving average (0: none).
    """

    label: str | int
    name: str = ""
    output: str | None = None  # default: the primary output
    on: float = 0.6
    off: float = 0.4
    min_on_s: float = 0.5
    min_off_s: float = 0.0
    smoothing_s: float = 0.3

    def __post_init__(self):
        self.name = self.name or str(self.label)
        if not (0 <= self.off <= self.on):
            raise EdgemmError(f"Alert: {self.name} | on {self.on}, off {self.off}; expected 0 <= off <= on.")
        if self.min_on_s < 0 or self.min_off_s < 0 or self.smoothing_s < 0:
            raise EdgemmError(f"Alert: {self.name} | Durations must be >= 0 seconds.")

    @classmethod
    def parse(cls, text: str) -> AlertRule:
        """LABEL[:ON[:OFF[:MIN_ON_S]]], e.g. "drowsy:0.7:0.5:1.0" (the CLI's --alert)."""
        parts = text.split(":")
        try:
            nums = [float(p) for p in parts[1:]]
        except ValueError:
            raise EdgemmError(f"Alert: {text} | Expected LABEL[:ON[:OFF[:MIN_ON_S]]] with numbers, "
                              "e.g. drowsy:0.7:0.5:1.0.") from None
        if not parts[0] or len(nums) > 3:
            raise EdgemmError(f"Alert: {text} | Expected LABEL[:ON[:OFF[:MIN_ON_S]]], e.g. drowsy:0.7:0.5:1.0.")
        kw: dict = {"label": parts[0]}
        if nums:
            kw["on"] = nums[0]
            kw["off"] = nums[1] if len(nums) > 1 else min(nums[0], cls.off)
        if len(nums) > 2:
            kw["min_on_s"] = nums[2]
        return cls(**kw)

    @classmethod
    def from_dict(cls, d: dict) -> AlertRule:
        """{"label": "drowsy", "on": 0.7, ...} (a config file's alerts); every value type is checked."""
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown or "label" not in d:
            raise EdgemmError(f"Alert: {d} | Expected keys {', '.join(sorted(known))} with at least label.")
        for key, value in d.items():
            if key == "label":
                ok = isinstance(value, (str, int)) and not isinstance(value, bool)
                want = "a label name or class index"
            elif key in ("name", "output"):
                ok = isinstance(value, str) or (key == "output" and value is None)
                want = "a string"
            else:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                want = "a number"
            if not ok:
                raise EdgemmError(f"Alert: {d.get('label')} | {key} is {value!r}; expected {want}.")
        return cls(**d)


class Ema:
    """Exponential moving average with a time constant: right for irregularly spaced samples."""

    def __init__(self, tau_s: float):
        self.tau_s = tau_s
        self.value: float | None = None
        self.t: float | None = None

    def update(self, t: float, x: float) -> float:
        if self.value is None or self.tau_s <= 0 or self.t is None:
            self.value = x
        else:
            dt = max(0.0, t - self.t)
            a = 1.0 - math.exp(-dt / self.tau_s)
            self.value += a * (x - self.value)
        self.t = t
        return self.value


class AlertMonitor:
    """One rule's state over time; ``update(t, score)`` returns the events it raises (possibly none)."""

    def __init__(self, rule: AlertRule):
        self.rule = rule
        self.ema = Ema(rule.smoothing_s)
        self.active = False
        self.since: float | None = None  # when the pending transition's condition started holding
        self.started: float | None = None  # onset of the active alert
        self.peak = 0.0
        self.count = 0

    def update(self, t: float, score: float) -> list[dict]:
        r = self.rule
        s = self.ema.update(t, score)
        events: list[dict] = []
        if not self.active:
            if s >= r.on:
                self.since = t if self.since is None else self.since
                if t - self.since >= r.min_on_s:
                    self.active, self.started, self.peak = True, self.since, s
                    self.count += 1
                    events.append({"event": "alert_start", "alert": r.name, "label": str(r.label),
                                   "t": round(self.started, 6), "t_confirmed": round(t, 6), "score": round(s, 6)})
                    self.since = None
            else:
                self.since = None
        else:
            self.peak = max(self.peak, s)
            if s < r.off:
                self.since = t if self.since is None else self.since
                if t - self.since >= r.min_off_s:
                    events.append({"event": "alert_end", "alert": r.name, "label": str(r.label),
                                   "t": round(self.since, 6), "t_confirmed": round(t, 6), "score": round(s, 6),
                                   "duration_s": round(self.since - self.started, 6), "peak": round(self.peak, 6)})
                    self.active, self.since, self.started = False, None, None
            else:
                self.since = None
        return events

    def close(self, t: float) -> list[dict]:
        """End an active alert at shutdown, so every start has an end in the log."""
        if not self.active:
            return []
        self.active = False
        return [{"event": "alert_end", "alert": self.rule.name, "label": str(self.rule.label), "t": round(t, 6),
                 "t_confirmed": round(t, 6), "score": round(self.ema.value or 0.0, 6),
                 "duration_s": round(t - (self.started or t), 6), "peak": round(self.peak, 6), "reason": "shutdown"}]


@dataclass
class Decisions:
    """Everything after the model: decoding, tracking, alert monitors. One per pipeline.

    image:      the preprocessing of the video input detection boxes refer to (size, letterbox or stretch),
                to map boxes back to the source frame; without it boxes stay in input pixels.
    conf, iou:  overrides of every detection output's thresholds (the CLI's --conf, --iou).
    """

    specs: dict[str, OutputSpec]
    rules: list[AlertRule] = field(default_factory=list)
    image: VideoPreprocess | None = None
    conf: float | None = None
    iou: float | None = None

    def __post_init__(self):
        from edgemm.tracking import Tracker

        self.trackers = {n: Tracker() for n, s in self.specs.items() if s.detection is not None and s.detection.track}
        self._track_events: list[dict] = []
        self.primary = primary_output(self.specs)
        self.monitors: list[tuple[AlertMonitor, str, int]] = []
        for rule in self.rules:
            out = rule.output or self.primary
            if out not in self.specs:
                raise EdgemmError(f"Alert: {rule.name} | Output {out} is not a decision output; expected one of "
                                  f"{', '.join(self.specs)}.")
            self.monitors.append((AlertMonitor(rule), out, self._index(rule, self.specs[out])))

    @staticmethod
    def _index(rule: AlertRule, spec: OutputSpec) -> int:
        labels = spec.labels or []
        if isinstance(rule.label, str) and rule.label in labels:
            return labels.index(rule.label)
        try:
            i = int(rule.label)
        except (TypeError, ValueError):
            raise EdgemmError(f"Alert: {rule.name} | Label {rule.label!r} is not one of the output's labels "
                              f"({', '.join(labels[:12])}{', ...' if len(labels) > 12 else ''}).") from None
        n = len(labels) if labels else None
        if i < 0 or (n is not None and i >= n):
            raise EdgemmError(f"Alert: {rule.name} | Index {i} is out of range; expected 0..{(n or 1) - 1}.")
        return i

    def decode(self, outputs: Mapping[str, np.ndarray], t: float = 0.0,
               frame_hw: tuple[int, int] | None = None) -> dict[str, dict]:
        """Every decision output decoded; detections in the pixels of a frame of frame_hw (when given)."""
        decoded = decode(outputs, self.specs)
        for name, spec in self.specs.items():
            if spec.detection is None or name not in outputs:
                continue
            size = self.image.size if self.image is not None else (0, 0)
            boxes = decode_boxes(outputs, spec, size, self.conf, self.iou)
            if self.image is not None and frame_hw is not None and len(boxes):
                boxes = visible(Boxes(to_source(boxes.xyxy, frame_hw, self.image), boxes.scores, boxes.classes))
            tracks = None
            if name in self.trackers:
                tracks, changes = self.trackers[name].update(boxes, t)
                if spec.detection.events:
                    self._track_events += [self._track_event(kind, tr, spec, name, t) for kind, tr in changes]
            decoded[name] = to_record(boxes, spec, tracks)
        return decoded

    @staticmethod
    def _track_event(kind: str, track, spec: OutputSpec, output: str, t: float) -> dict:
        return {"event": f"object_{kind}", "output": output, "track": track.id, "label": label_of(spec, track.cls),
                "t": round(t if kind == "entered" else track.last_seen, 6)}

    def alerts(self, t: float, outputs: Mapping[str, np.ndarray], decoded: Mapping[str, dict] | None = None) -> list[dict]:
        """Alert (and tracking) events of this result. Detection rules watch the count of their label in
        `decoded` (Decisions.decode's result for the same outputs): on 0.6 means "one in view"."""
        events, self._track_events = self._track_events, []
        for monitor, out, index in self.monitors:
            spec = self.specs[out]
            if spec.detection is not None:
                label = label_of(spec, index)
                score = float((decoded or {}).get(out, {}).get("counts", {}).get(label, 0))
            else:
                score = target_score(outputs[out], spec, index)
            events += monitor.update(t, score)
        return events

    def active_alerts(self) -> list[str]:
        return [m.rule.name for m, _, _ in self.monitors if m.active]

    def close(self, t: float) -> list[dict]:
        events: list[dict] = []
        for monitor, _, _ in self.monitors:
            events += monitor.close(t)
        for name, tracker in self.trackers.items():
            if self.specs[name].detection.events:
                events += [self._track_event(kind, tr, self.specs[name], name, t) for kind, tr in tracker.close()]
        return events
