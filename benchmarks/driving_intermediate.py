"""The intermediate-fusion variant of "emergency vehicle approaching": both trained models as encoders, one head.

  video_encoder  the detector's graph with one more output, ``embedding`` [N, C4 + classes]: its stride-16
                 features averaged over the image, then the best score of each class over all anchors
  audio_encoder  the siren classifier's graph with one more output, ``embedding`` [N, 48]: the pooled
                 features its last layer reads (its ``event`` logits stay an output)
  head           a small MLP (standardise, 32 ReLU units, one logit) on both embeddings, the siren logits and
                 a presence flag per modality, fitted on validation scenes with each modality dropped at
                 random (so a lost camera or microphone is an input it has seen, not zeros it never met);
                 it also passes the detector's raw output and the siren logits through, so the runtime
                 decodes boxes (YOLOv8 layout) and the siren probability from the same bundle, live

The encoders are the shipped graphs plus a few nodes (no retraining): the detector and the siren classifier
of the bundle are byte-for-byte the weights of driving_detector and driving_audio. The runtime runs the
encoders at their own rates (``fusion.rates_hz``) and the head on their freshest embeddings
(edgemm/scheduler.py). benchmarks/eval_driving.py fits the head and scores it; `edgemm demo --scenario
driving` streams it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgemm.bundle import (FusionSpec, GraphSpec, InputSpec, Manifest, OutputSpec, load_bundle, write_bundle)
from edgemm.reference import driving as dr

EVENT_LABELS = ["none", "approaching"]
HIDDEN = 32
RATES_HZ = {"video": 10.0, "audio": 4.0}  # the detector on every frame of a 10 fps camera; the siren every 0.25 s
DROP = 0.15  # fraction of training rows with the camera (and, separately, the microphone) missing


def _graph(bundle_root: Path):
    import onnx

    m = load_bundle(bundle_root).manifest
    g = m.graphs["model"]
    return onnx.load(str(Path(bundle_root) / g.file)), g


def _node(model, op: str, where: str):
    nodes = [n for n in model.graph.node if n.op_type == op]
    if len(nodes) != 1:
        raise ValueError(f"{where}: expected one {op} node, found {len(nodes)}")
    return nodes[0]


def video_encoder(detector: Path):
    """(ONNX model, embedding size): the detector plus GAP(P4 features) ++ max score per class."""
    import onnx
    from onnx import TensorProto, helper

    model, spec = _graph(detector)
    p4 = _node(model, "Resize", "detector").input[0]  # the stride-16 features the top-down path upsamples
    scores = _node(model, "Sigmoid", "detector").output[0]  # [N, classes, anchors]
    g = model.graph
    g.node.extend([
        helper.make_node("GlobalAveragePool", [p4], ["enc/gap"]),
        helper.make_node("Flatten", ["enc/gap"], ["enc/gap_flat"], axis=1),
        helper.make_node("ReduceMax", [scores], ["enc/best"], axes=[2], keepdims=0),
        helper.make_node("Concat", ["enc/gap_flat", "enc/best"], ["embedding"], axis=1)])
    inferred = onnx.shape_inference.infer_shapes(model)
    dims = {v.name: v for v in inferred.graph.value_info}
    c4 = dims[p4].type.tensor_type.shape.dim[1].dim_value
    size = int(c4) + len(dr.CLASSES)
    g.output.append(helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", size]))
    onnx.checker.check_model(model)
    return model, size, spec


def audio_encoder(audio: Path):
    import onnx
    from onnx import TensorProto, helper

    model, spec = _graph(audio)
    gemm = _node(model, "Gemm", "siren classifier")
    w = next(i for i in model.graph.initializer if i.name == gemm.input[1])
    size = int(w.dims[1])  # Gemm (transB): weight [classes, features]
    model.graph.node.append(helper.make_node("Identity", [gemm.input[0]], ["embedding"]))
    model.graph.output.append(helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", size]))
    onnx.checker.check_model(model)
    return model, size, spec


def head_rows(video_emb: np.ndarray, audio_emb: np.ndarray, siren_logits: np.ndarray, video_on: np.ndarray,
              audio_on: np.ndarray) -> np.ndarray:
    """The head's input rows as the ONNX head builds them (a missing modality: zeros, flag 0)."""
    v = video_emb * video_on[:, None]
    a = np.concatenate([audio_emb, siren_logits], 1) * audio_on[:, None]
    return np.concatenate([v, a, video_on[:, None], audio_on[:, None]], 1).astype(np.float32)


def fit_head(video_emb, audio_emb, siren_logits, y, seed: int = 0) -> dict:
    """An MLP on the validation rows, each row also seen with the camera or the microphone missing."""
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(seed)
    n = len(y)
    v_on = (rng.random(n) >= DROP).astype(np.float32)
    a_on = np.where(v_on == 0, 1.0, (rng.random(n) >= DROP)).astype(np.float32)  # never both missing
    full = head_rows(video_emb, audio_emb, siren_logits, np.ones(n, np.float32), np.ones(n, np.float32))
    dropped = head_rows(video_emb, audio_emb, siren_logits, v_on, a_on)
    x, yy = np.concatenate([full, dropped]), np.concatenate([y, y]).astype(int)
    mean, std = x.mean(0), x.std(0) + 1e-3
    mlp = MLPClassifier((HIDDEN,), alpha=1e-3, max_iter=400, early_stopping=True, random_state=seed)
    mlp.fit((x - mean) / std, yy)
    return {"mean": mean, "std": std, "w1": mlp.coefs_[0], "b1": mlp.intercepts_[0], "w2": mlp.coefs_[1][:, 0],
            "b2": float(mlp.intercepts_[1][0]), "train_accuracy": float(mlp.score((x - mean) / std, yy))}


def head_probability(head: dict, rows: np.ndarray) -> np.ndarray:
    """The head's P(approaching), as the ONNX head computes it (for scoring without a session)."""
    h = np.maximum(0.0, ((rows - head["mean"]) / head["std"]) @ head["w1"] + head["b1"])
    return 1 / (1 + np.exp(-(h @ head["w2"] + head["b2"])))


def head_graph(head: dict, v_size: int, a_size: int, n_siren: int, det_shape: list):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f32 = TensorProto.FLOAT
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in
             (("mean", head["mean"]), ("std", head["std"]), ("w1", head["w1"]), ("b1", head["b1"]),
              ("w2", np.stack([-head["w2"] / 2, head["w2"] / 2], 1)), ("b2", [-head["b2"] / 2, head["b2"] / 2]))]
    nodes = [
        # zeros and flag 0 for a missing modality come from the runtime (fusion.graph_feed); the flags are
        # features too, as in fit_head
        helper.make_node("Mul", ["video_emb", "video_present"], ["v"]),
        helper.make_node("Concat", ["audio_emb", "siren_in"], ["a0"], axis=1),
        helper.make_node("Mul", ["a0", "audio_present"], ["a"]),
        helper.make_node("Concat", ["v", "a", "video_present", "audio_present"], ["x"], axis=1),
        helper.make_node("Sub", ["x", "mean"], ["xc"]),
        helper.make_node("Div", ["xc", "std"], ["xs"]),
        helper.make_node("Gemm", ["xs", "w1", "b1"], ["h0"]),
        helper.make_node("Relu", ["h0"], ["h"]),
        # two logits (-z/2, z/2): their softmax is sigmoid(z), the MLP's probability
        helper.make_node("Gemm", ["h", "w2", "b2"], ["event"]),
        helper.make_node("Identity", ["det_in"], ["output0"]),
        helper.make_node("Identity", ["siren_in"], ["siren"]),
    ]
    inputs = [helper.make_tensor_value_info("video_emb", f32, ["N", v_size]),
              helper.make_tensor_value_info("audio_emb", f32, ["N", a_size]),
              helper.make_tensor_value_info("siren_in", f32, ["N", n_siren]),
              helper.make_tensor_value_info("det_in", f32, ["N", *det_shape[1:]]),
              helper.make_tensor_value_info("video_present", f32, ["N", 1]),
              helper.make_tensor_value_info("audio_present", f32, ["N", 1])]
    outputs = [helper.make_tensor_value_info("event", f32, ["N", 2]),
               helper.make_tensor_value_info("output0", f32, ["N", *det_shape[1:]]),
               helper.make_tensor_value_info("siren", f32, ["N", n_siren])]
    graph = helper.make_graph(nodes, "driving_head", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def blank_head(size: int) -> dict:
    """A head that says nothing (probability 0.5): the bundle's encoders run before its head is fitted."""
    return {"mean": np.zeros(size), "std": np.ones(size), "w1": np.zeros((size, HIDDEN)), "b1": np.zeros(HIDDEN),
            "w2": np.zeros(HIDDEN), "b2": 0.0}


def write_intermediate(detector: Path, audio: Path, head: dict | None, out: Path, provenance: dict) -> Path:
    """The bundle: encoders from the shipped models, the fitted head (None: blank_head); written to
    out/driving_intermediate."""
    vmodel, v_size, vspec = video_encoder(detector)
    amodel, a_size, aspec = audio_encoder(audio)
    det_out = vspec.outputs[0]
    siren_out = aspec.outputs[0]
    if head is None:
        head = blank_head(v_size + a_size + len(siren_out.labels) + 2)
    hmodel = head_graph(head, v_size, a_size, len(siren_out.labels), det_out.shape)
    emb = lambda name, size, src: InputSpec(name, "embedding", "float32", ["N", size], source=src)  # noqa: E731
    graphs = {
        "video_encoder": GraphSpec("video_encoder", "video_encoder.onnx", vspec.inputs,
                                   [det_out, OutputSpec("embedding", "embedding", "float32", ["N", v_size])]),
        "audio_encoder": GraphSpec("audio_encoder", "audio_encoder.onnx", aspec.inputs,
                                   [siren_out, OutputSpec("embedding", "embedding", "float32", ["N", a_size])]),
        "head": GraphSpec("head", "head.onnx", [
            emb("video_emb", v_size, "video_encoder.embedding"), emb("audio_emb", a_size, "audio_encoder.embedding"),
            emb("siren_in", len(siren_out.labels), f"audio_encoder.{siren_out.name}"),
            emb("det_in", det_out.shape[1], f"video_encoder.{det_out.name}"),
            InputSpec("video_present", "presence", "float32", ["N", 1], presence_of="video"),
            InputSpec("audio_present", "presence", "float32", ["N", 1], presence_of="audio")], [
            OutputSpec("event", "classification", "float32", ["N", 2], EVENT_LABELS, "logits"),
            OutputSpec(det_out.name, "detection", "float32", det_out.shape, det_out.labels,
                       detection=det_out.detection),
            OutputSpec("siren", "classification", "float32", siren_out.shape, siren_out.labels, "logits")]),
    }
    # the head's detection input has the detector's full shape (anchors too)
    graphs["head"].inputs[3] = InputSpec("det_in", "embedding", "float32", list(det_out.shape),
                                         source=f"video_encoder.{det_out.name}")
    manifest = Manifest("driving_intermediate", graphs,
                        FusionSpec("intermediate", encoders={"video": "video_encoder", "audio": "audio_encoder"},
                                   head="head", rates_hz=dict(RATES_HZ), max_age_s=1.0), provenance)
    path = write_bundle(manifest, {"video_encoder.onnx": vmodel, "audio_encoder.onnx": amodel, "head.onnx": hmodel},
                        out / "driving_intermediate", force=True)
    load_bundle(path)
    return path
