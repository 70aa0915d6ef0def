"""Preprocessing baked into the graph (``edgemm convert --bake-preprocess``).

A baked video input takes the camera's frame as it comes off the resize: uint8, NHWC, in the camera's own
colour order (BGR, OpenCV's), already resized or letterboxed to the model size by the runtime. The graph
then does what ``edgemm.preprocess.image_to_chw`` does in Python: colour order (BGR -> RGB as a Gather of
the channel axis, or OpenCV's integer BGR -> gray formula, bit for bit), the cast, x * scale, (x - mean) /
std and the layout. The arithmetic is the Python path's (one multiply by scale / std, one subtraction of
mean / std, in float32), so the model sees the same numbers.

A baked audio input (``--bake-preprocess video,audio``) takes the window's waveform (float32, (N, samples),
layout NS) and the graph computes the (log-)mel spectrogram of ``edgemm.preprocess.log_mel``: periodic Hann,
centre=False framing, power spectrum, edgemm's own HTK mel filterbank (stored as a constant), log(x +
offset), (x - mean) / std. The STFT is computed in one of two forms:

  conv  the DFT as a strided Conv whose kernels are the windowed cos/sin basis (and the power spectrum
        folded into the mel MatMul). Any opset, any backend: TensorRT before 10.5 (JetPack 6) has no STFT
        importer, and TensorRT 10.5+ lowers STFT to these convolutions itself.
  stft  ONNX's STFT op (opset 17; the graph is upgraded with ONNX's version converter if older).

ONNX's MelWeightMatrix is not used: it rounds every filter edge to an FFT bin and spaces the mel points by
(high - low) / (n_mels + 2), so its filters are not the ones the model was trained with (the test
tests/test_bake.py::test_mel_weight_matrix_is_not_edgemms_filterbank shows the difference); the filterbank
the Python path uses is stored instead, so both paths multiply by the same matrix.

Prepended nodes use only ops whose signature is the same in every opset since 7 (Gather, Transpose, Cast,
Mul, Sub, Div, Add, MatMul, Floor, Conv, Log, Reshape), so the graph's opset and IR version stay as they were
(the stft form excepted).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgemm.bundle import GraphSpec, InputSpec, Manifest
from edgemm.errors import EdgemmError

PARTS = ("video", "audio")
AUDIO_FORMS = ("conv", "stft")
STFT_OPSET = 17
# OpenCV's BGR -> gray for 8-bit images: (3735 B + 19235 G + 9798 R + 2^14) >> 15, its integer formula
# (tests/test_bake.py checks it against cv2.cvtColor bit for bit).
GRAY_BGR_WEIGHTS = (3735.0, 19235.0, 9798.0)
GRAY_SHIFT = 15
_ONNX_TYPE = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "uint8": TensorProto.UINT8,
              "float64": TensorProto.DOUBLE}


def parse_parts(text: str) -> tuple[str, ...]:
    """'video', 'video,audio' or 'none' -> the parts to bake (() for none)."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if items == ["none"]:
        return ()
    bad = [t for t in items if t not in PARTS]
    if bad or not items:
        raise EdgemmError(f"--bake-preprocess: {text} | Unknown part {bad[0] if bad else '(empty)'}; expected video, "
                          "audio, video,audio or none.")
    return tuple(p for p in PARTS if p in items)


def is_baked(spec: InputSpec) -> bool:
    return bool(spec.preprocess is not None and getattr(spec.preprocess, "baked", False))


def baked_inputs(manifest: Manifest) -> list[str]:
    return [f"{g.name}.{s.name}" for g, s in manifest.all_inputs() if is_baked(s)]


def check_bakeable(manifest: Manifest, parts: tuple[str, ...], where: str) -> list[tuple[GraphSpec, InputSpec]]:
    """The inputs to bake, or a one-line EdgemmError naming the one that cannot be and why."""
    if baked_inputs(manifest):
        raise EdgemmError(f"--bake-preprocess | {where} is already baked ({', '.join(baked_inputs(manifest))}); "
                          "expected an unbaked bundle.")
    todo = [(g, s) for g, s in manifest.all_inputs() if s.modality in parts]
    if not todo:
        raise EdgemmError(f"--bake-preprocess {','.join(parts)} | {where} has no {' or '.join(parts)} input; expected "
                          "a bundle with one (see edgemm info).")
    for g, s in todo:
        at = f"--bake-preprocess | Input {g.name}.{s.name}"
        if s.modality == "video":
            if s.preprocess.frames != 1 or s.layout not in ("NCHW", "NHWC"):
                raise EdgemmError(f"{at}: takes {s.preprocess.frames} frame(s) in layout {s.layout}; expected one "
                                  "frame, NCHW or NHWC.")
            if s.dtype not in _ONNX_TYPE:
                raise EdgemmError(f"{at}: dtype {s.dtype}; expected float32, float16 or uint8.")
        else:
            if s.preprocess.feature == "waveform":
                raise EdgemmError(f"{at}: takes the waveform already; expected a logmel or mel input.")
            if s.dtype not in ("float32", "float16"):
                raise EdgemmError(f"{at}: dtype {s.dtype}; expected float32 or float16.")
    return todo


@dataclass
class _Builder:
    """Nodes and initializers to prepend, with names made unique against the graph's."""

    prefix: str
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)

    def const(self, name: str, value: np.ndarray) -> str:
        full = f"{self.prefix}/{name}"
        self.inits.append(numpy_helper.from_array(np.asarray(value), full))
        return full

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        out = f"{self.prefix}/{name}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


def _video_nodes(b: _Builder, raw: str, spec: InputSpec) -> str:
    """uint8 NHWC BGR -> the tensor the model's input expects (image_to_chw's numbers)."""
    from edgemm.preprocess import _affine  # the same gain/offset the Python path multiplies by

    pre = spec.preprocess
    x = raw
    channel_axis = 1 if spec.layout == "NCHW" else 3
    if spec.layout == "NCHW":
        x = b.node("Transpose", [x], "to_nchw", perm=[0, 3, 1, 2])  # on the uint8 pixels: a quarter the bytes
    if pre.color == "rgb":
        # After the transpose: ONNX Runtime gathers whole planes along axis 1 about 8x faster than it gathers
        # along the last axis (0.16 vs 1.3 ms at 224x224 here).
        x = b.node("Gather", [x, b.const("bgr_to_rgb", np.array([2, 1, 0], np.int64))], "to_rgb", axis=channel_axis)
    if pre.color == "gray":
        # OpenCV's integer formula, exactly: weights, + 2^14, / 2^15, floor (exact in float32: < 2^24).
        x = b.node("Cast", [x], "to_float", to=TensorProto.FLOAT)
        x = _gray_sum(b, x, channel_axis)
        x = b.node("Add", [x, b.const("gray_round", np.float32(1 << (GRAY_SHIFT - 1)))], "gray_rounded")
        x = b.node("Mul", [x, b.const("gray_shift", np.float32(1.0 / (1 << GRAY_SHIFT)))], "gray_shifted")
        x = b.node("Floor", [x], "gray")
        if spec.dtype == "uint8":
            return b.node("Cast", [x], "gray_uint8", to=TensorProto.UINT8)
    elif spec.dtype == "uint8":
        return b.node("Identity", [x], "pixels")
    else:
        x = b.node("Cast", [x], "to_float", to=TensorProto.FLOAT)
    gain, offset = _affine(pre.scale, tuple(pre.mean), tuple(pre.std))
    channels = 1 if pre.color == "gray" else 3
    shape = [1, channels, 1, 1] if channel_axis == 1 else [1, 1, 1, channels]
    gain = np.broadcast_to(gain.reshape(-1), (channels,)).reshape(shape).astype(np.float32)
    offset = np.broadcast_to(offset.reshape(-1), (channels,)).reshape(shape).astype(np.float32)
    x = b.node("Mul", [x, b.const("gain", gain)], "scaled")
    x = b.node("Sub", [x, b.const("offset", offset)], "normalised")
    if spec.dtype != "float32":
        x = b.node("Cast", [x], "to_input_type", to=_ONNX_TYPE[spec.dtype])
    return x


def _gray_sum(b: _Builder, x: str, axis: int) -> str:
    """3735 B + 19235 G + 9798 R over the channel axis, keeping it (width 1): a 1x1 Conv in NCHW, a MatMul with a
    column in NHWC (ops whose signature no opset changed; exact: integer values below 2^24)."""
    w = np.asarray(GRAY_BGR_WEIGHTS, np.float32)
    if axis == 1:
        return b.node("Conv", [x, b.const("gray_weights", w.reshape(1, 3, 1, 1))], "gray_sum")
    return b.node("MatMul", [x, b.const("gray_weights", w.reshape(3, 1))], "gray_sum")


def _audio_nodes(b: _Builder, wave: str, spec: InputSpec, form: str) -> str:
    """float32 (N, samples) -> the (log-)mel tensor the model's input expects (log_mel's numbers)."""
    from edgemm.preprocess import _hann, mel_filterbank

    pre = spec.preprocess
    n_fft, hop, n_frames = pre.n_fft, pre.hop_length, pre.n_frames
    bins = n_fft // 2 + 1
    fmax = pre.fmax if pre.fmax else pre.sample_rate / 2.0
    bank = mel_filterbank(pre.sample_rate, n_fft, pre.n_mels, float(pre.fmin), float(fmax))  # (n_mels, bins)
    window = _hann(n_fft)
    if form == "conv":
        k = np.arange(n_fft)[None, :] * np.arange(bins)[:, None]
        angle = 2.0 * np.pi * (k % n_fft) / n_fft  # (k mod n_fft: exact angles for large products)
        basis = np.concatenate([np.cos(angle), -np.sin(angle)]) * window.astype(np.float64)[None, :]
        x = b.node("Reshape", [wave, b.const("as_signal", np.array([-1, 1, pre.window_samples], np.int64))], "signal")
        y = b.node("Conv", [x, b.const("dft_basis", basis.astype(np.float32)[:, None, :])], "dft",
                   kernel_shape=[n_fft], strides=[hop])  # (N, 2 * bins, frames): real parts, then imaginary
        y = b.node("Mul", [y, y], "dft_squared")
        # re^2 + im^2 then the filterbank = the filterbank twice, side by side, times the squares.
        mel = b.node("MatMul", [b.const("mel_bank", np.concatenate([bank, bank], axis=1)), y], "mel")
    else:
        x = b.node("Reshape", [wave, b.const("as_signal", np.array([-1, pre.window_samples, 1], np.int64))], "signal")
        y = b.node("STFT", [x, b.const("frame_step", np.array(hop, np.int64)), b.const("window", window),
                            b.const("frame_length", np.array(n_fft, np.int64))], "stft", onesided=1)
        y = b.node("Mul", [y, y], "stft_squared")  # (N, frames, bins, 2)
        y = b.node("Reshape", [y, b.const("as_parts", np.array([-1, n_frames, 2 * bins], np.int64))], "parts")
        # (N, frames, bins * [re, im]) @ the filterbank with each row repeated for re and im -> (N, frames, mels)
        mel = b.node("MatMul", [y, b.const("mel_bank", np.repeat(bank.T, 2, axis=0))], "mel_tf")
        mel = b.node("Transpose", [mel], "mel", perm=[0, 2, 1])
    if pre.feature == "logmel":
        mel = b.node("Add", [mel, b.const("log_offset", np.float32(pre.log_offset))], "mel_offset")
        mel = b.node("Log", [mel], "log_mel")
    mel = b.node("Sub", [mel, b.const("feature_mean", np.float32(pre.mean))], "centred")
    mel = b.node("Div", [mel, b.const("feature_std", np.float32(pre.std))], "standardised")
    shape = [-1, 1, pre.n_mels, n_frames] if spec.layout == "NCMT" else [-1, pre.n_mels, n_frames]
    mel = b.node("Reshape", [mel, b.const("to_layout", np.array(shape, np.int64))], "features")
    if spec.dtype != "float32":
        mel = b.node("Cast", [mel], "to_input_type", to=_ONNX_TYPE[spec.dtype])
    return mel


def _batch_dim(model, name: str):
    vi = next(v for v in model.graph.input if v.name == name)
    d = vi.type.tensor_type.shape.dim[0] if vi.type.tensor_type.shape.dim else None
    if d is not None and d.HasField("dim_value") and d.dim_value > 0:
        return d.dim_value
    return d.dim_param if d is not None and d.dim_param else "N"


def _baked_spec(spec: InputSpec, batch) -> InputSpec:
    new = copy.deepcopy(spec)
    new.preprocess.baked = True
    if spec.modality == "video":
        h, w = spec.preprocess.size
        new.dtype, new.layout, new.shape = "uint8", "NHWC", [batch, h, w, 3]
    else:
        new.dtype, new.layout, new.shape = "float32", "NS", [batch, spec.preprocess.window_samples]
    return new


def bake_graph(model, graph: GraphSpec, names: list[str], form: str = "conv"):
    """A copy of model whose inputs ``names`` (video or audio inputs of graph) take the raw camera frame or
    waveform, with the preprocessing prepended; and the GraphSpec describing it."""
    model = copy.deepcopy(model)
    graph = copy.deepcopy(graph)
    if form == "stft" and any(graph.input(n).modality == "audio" for n in names):
        model = _at_least_opset(model, STFT_OPSET, graph.file)
    taken = {n.name for n in model.graph.node} | {t for n in model.graph.node for t in (*n.input, *n.output)} \
        | {i.name for i in model.graph.initializer}
    prepended, inits = [], []
    for name in names:
        spec = graph.input(name)
        prefix = f"bake/{name}"
        while any(t.startswith(prefix) for t in taken):
            prefix += "_"
        b = _Builder(prefix)
        batch = _batch_dim(model, name)
        out = _video_nodes(b, name, spec) if spec.modality == "video" else _audio_nodes(b, name, spec, form)
        # The model's own uses of the input now read the prepended nodes' result.
        for node in model.graph.node:
            for i, t in enumerate(node.input):
                if t == name:
                    node.input[i] = out
        for o in model.graph.output:
            if o.name == name:
                raise EdgemmError(f"--bake-preprocess | Input {graph.name}.{name} is also an output of {graph.file}; "
                                  "expected an input the graph computes from.")
        new = _baked_spec(spec, batch)
        vi = next(v for v in model.graph.input if v.name == name)
        vi.CopyFrom(helper.make_tensor_value_info(name, _ONNX_TYPE[new.dtype], new.shape))
        prepended += b.nodes
        inits += b.inits
        graph.inputs[[s.name for s in graph.inputs].index(name)] = new
    nodes = prepended + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits)
    onnx.checker.check_model(model)
    return model, graph


def _at_least_opset(model, opset: int, what: str):
    from edgemm.converters.opsets import default_opset, upgrade_opset

    if default_opset(model) >= opset:
        return model
    try:
        return upgrade_opset(model, opset)
    except Exception as exc:  # the version converter's and ORT's errors are many kinds
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise EdgemmError(f"--bake-preprocess | {what} is opset {default_opset(model)} and cannot be upgraded to "
                          f"{opset} for ONNX's STFT ({reason}); expected the conv form (the default).") from exc


@dataclass
class Baked:
    """What baking hands on: the graphs (all of them, baked or not), the manifest describing them, the record."""

    models: dict
    manifest: Manifest
    record: dict


def bake_bundle(manifest: Manifest, models: dict, parts: tuple[str, ...], form: str, where: str) -> Baked:
    """Bake the preprocessing of every ``parts`` input of every graph; models maps graph -> ModelProto."""
    if form not in AUDIO_FORMS:
        raise EdgemmError(f"Audio STFT form: {form} | Unknown; expected one of {', '.join(AUDIO_FORMS)}.")
    todo = check_bakeable(manifest, parts, where)
    manifest = copy.deepcopy(manifest)
    models = dict(models)
    for gname in manifest.graphs:
        names = [s.name for g, s in todo if g.name == gname]
        if names:
            models[gname], manifest.graphs[gname] = bake_graph(models[gname], manifest.graphs[gname], names, form)
    record = {"parts": list(parts), "inputs": [f"{g.name}.{s.name}" for g, s in todo]}
    if "audio" in parts and any(s.modality == "audio" for _, s in todo):
        record["audio_stft"] = form
    return Baked(models, manifest, record)


# Camera frames for the agreement check: a size that is not the model's (so the resize and, for a detector,
# the letterbox padding are in it) and one that is.
CHECK_FRAME_SIZES = ((480, 640), None)


def agreement(before: tuple[Manifest, dict], after: tuple[Manifest, dict], threads: int | None = None,
              seed: int = 0) -> dict[str, float]:
    """Largest absolute difference of every graph's outputs, unbaked (Python preprocessing) vs baked, on the
    same camera frames and audio windows; graph -> max abs (0.0 for graphs without baked inputs)."""
    from edgemm.converters.graphs import cpu_session
    from edgemm.feeds import onnx_input_metadata, synthesize
    from edgemm.preprocess import preprocess_audio, preprocess_video

    (m0, models0), (m1, models1) = before, after
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    for gname, g1 in m1.graphs.items():
        g0 = m0.graphs[gname]
        baked = [s for s in g1.inputs if is_baked(s)]
        if not baked:
            out[gname] = 0.0
            continue
        s0, s1 = cpu_session(models0[gname], threads), cpu_session(models1[gname], threads)
        worst = 0.0
        for i, size in enumerate(CHECK_FRAME_SIZES):
            common = synthesize(onnx_input_metadata(models0[gname]), g0, 1, seed + i)
            f0, f1 = dict(common), dict(common)
            for spec in baked:
                old = g0.input(spec.name)
                if spec.modality == "video":
                    h, w = size or old.preprocess.size
                    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                    f0[spec.name], f1[spec.name] = preprocess_video(frame, old), preprocess_video(frame, spec)
                else:
                    pre = old.preprocess
                    t = np.arange(pre.window_samples) / pre.sample_rate
                    wave = (0.3 * np.sin(2 * np.pi * 440.0 * (i + 1) * t)
                            + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
                    f0[spec.name], f1[spec.name] = preprocess_audio(wave, old), preprocess_audio(wave, spec)
            r0, r1 = s0.run(None, f0), s1.run(None, f1)
            for a, b in zip(r0, r1):
                if np.issubdtype(np.asarray(a).dtype, np.number) and np.asarray(a).size:
                    worst = max(worst, float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))))
        out[gname] = worst
    return out
