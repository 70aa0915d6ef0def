"""Models as they come from the wild: stateful streaming audio models, constant inputs, dynamic shapes set
with --shape, Constant-node and subgraph weights, old opsets. Real ONNX models built here with onnx.helper."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgemm.bundle import load_bundle
from edgemm.media import write_wav
from edgemm.modelinfo import count_parameters, estimate_macs
from tests.conftest import run_cli

WINDOW = 512
STATE = 16


def vad_like(path, opset: int = 17):
    """A VAD-like recurrent model shaped like Silero's: input [?, ?] waveform, state [2, ?, STATE] in and
    stateN out, an int64 scalar sr. state' = tanh(state @ W + frame @ U * sr / 16000); output = sigmoid(..)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((WINDOW, STATE)) * 0.05).astype(np.float32), "U"),
             numpy_helper.from_array((rng.standard_normal((STATE, STATE)) * 0.5).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((STATE, 1)).astype(np.float32), "V"),
             numpy_helper.from_array(np.array(16000.0, np.float32), "ref_sr")]
    nodes = [
        helper.make_node("MatMul", ["input", "U"], ["xu"]),
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["srf", "ref_sr"], ["srs"]),
        helper.make_node("Mul", ["xu", "srs"], ["xs"]),
        helper.make_node("MatMul", ["state", "W"], ["sw"]),  # [2, ?, S]
        helper.make_node("Add", ["sw", "xs"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["stateN"]),
        helper.make_node("ReduceMean", ["stateN"], ["h"], axes=[0], keepdims=0),  # [?, S]
        helper.make_node("MatMul", ["h", "V"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "vad_like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, None]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, None, STATE]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, None, STATE])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def offline(model_path, samples: np.ndarray) -> list[float]:
    """The model run window by window over the whole file, the state carried by hand."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, STATE), np.float32)
    out = []
    for k in range(len(samples) // WINDOW):
        y, state = sess.run(None, {"input": samples[None, k * WINDOW:(k + 1) * WINDOW].astype(np.float32),
                                   "state": state, "sr": np.array(16000, np.int64)})
        out.append(float(y.reshape(-1)[0]))
    return out


def test_vad_manifest_inferred_with_state_pair_constant_and_window(tmp_path):
    bundle = load_bundle(vad_like(tmp_path / "vad.onnx"), shapes={"input": [1, WINDOW]})
    specs = {s.name: s for s in bundle.manifest.graphs["model"].inputs}
    assert specs["state"].modality == "state" and specs["state"].state_of == "stateN"
    assert specs["sr"].value == 16000
    assert specs["input"].modality == "audio" and specs["input"].preprocess.feature == "waveform"
    assert specs["input"].preprocess.window_samples == WINDOW and specs["input"].preprocess.hop == WINDOW


def test_streamed_vad_matches_offline_window_by_window(tmp_path):
    model = vad_like(tmp_path / "vad.onnx")
    t = np.arange(16000 * 2) / 16000
    rng = np.random.default_rng(1)
    # Speech-like bursts over noise, so the state has something to remember.
    samples = (0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 1.5 * t) > 0)
               + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
    write_wav(tmp_path / "speech.wav", samples, 16000)
    manifest = {"name": "vad", "graphs": {"model": {"file": "vad.onnx", "inputs": [
        {"name": "input", "modality": "audio", "layout": "NS", "shape": [1, WINDOW],
         "preprocess": {"feature": "waveform", "sample_rate": 16000, "window": WINDOW, "hop": WINDOW}},
        {"name": "state", "modality": "state", "state_of": "stateN"},
        {"name": "sr", "modality": "other", "dtype": "int64", "value": 16000}],
        "outputs": [{"name": "output", "task": "regression"}, {"name": "stateN", "task": "other"}]}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    proc = run_cli("run", str(tmp_path), "--audio", str(tmp_path / "speech.wav"),
                   "--sink", f"jsonl:{tmp_path / 'out.jsonl'}", "--quiet")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    streamed = [r["outputs"]["output"]["values"][0] for r in records if "outputs" in r]
    expected = offline(model, read_back(tmp_path / "speech.wav"))
    assert len(streamed) == len(expected) == 2 * 16000 // WINDOW
    np.testing.assert_allclose(streamed, expected, atol=2e-6)
    # Without the carried state the outputs differ: the test can fail.
    fresh = offline_without_state(model, read_back(tmp_path / "speech.wav"))
    assert np.max(np.abs(np.array(fresh) - np.array(expected))) > 1e-3


def read_back(path):
    from edgemm.media import read_wav

    samples, rate = read_wav(path)
    assert rate == 16000
    return samples


def offline_without_state(model_path, samples):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return [float(sess.run(None, {"input": samples[None, k * WINDOW:(k + 1) * WINDOW].astype(np.float32),
                                  "state": np.zeros((2, 1, STATE), np.float32),
                                  "sr": np.array(16000, np.int64)})[0].reshape(-1)[0])
            for k in range(len(samples) // WINDOW)]


def test_bench_shape_flag_and_one_line_refusal(tmp_path):
    model = vad_like(tmp_path / "vad.onnx")
    proc = run_cli("bench", str(model), "--iterations", "3", "--warmup", "0", "--shape", "input:1x512")
    assert proc.returncode == 0, proc.stderr
    # Without --shape the dynamic length is guessed (16000 samples) and the model refuses it: one line that
    # names the shapes tried and the flag to set.
    proc = run_cli("bench", str(model), "--iterations", "3", "--warmup", "0")
    err = proc.stderr.strip()
    assert proc.returncode == 1 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "input:1x16000" in err and "--shape" in err
    proc = run_cli("bench", str(model), "--shape", "input:1x3x512")
    assert proc.returncode == 1 and "rank" in proc.stderr and "Traceback" not in proc.stderr


def test_parameters_count_constant_nodes_and_subgraphs(tmp_path):
    w = np.ones((8, 4), np.float32)
    then_g = helper.make_graph([helper.make_node("Constant", [], ["tw"], value=numpy_helper.from_array(w * 2, "tw"))],
                               "then", [], [helper.make_tensor_value_info("tw", TensorProto.FLOAT, [8, 4])])
    else_g = helper.make_graph([helper.make_node("Constant", [], ["ew"], value=numpy_helper.from_array(w * 3, "ew"))],
                               "else", [], [helper.make_tensor_value_info("ew", TensorProto.FLOAT, [8, 4])])
    nodes = [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones((4, 8), np.float32), "c")),
             helper.make_node("If", ["flag"], ["wsel"], then_branch=then_g, else_branch=else_g),
             helper.make_node("MatMul", ["x", "wsel"], ["y0"]),
             helper.make_node("MatMul", ["y0", "c"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
                                       helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    assert count_parameters(m) == 32 + 32 + 32
    assert estimate_macs(m) == 8 * 4 + 4 * 8


def _conv_model(opset: int, extra_op: str | None = None):
    w = numpy_helper.from_array(np.ones((3, 2, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c" if extra_op else "y"])]
    if extra_op:
        nodes.append(helper.make_node(extra_op, ["c"], ["y"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_old_opset_upgraded_for_per_channel_qdq_else_per_tensor():
    from edgemm.converters.opsets import ready_for_qdq

    ready = ready_for_qdq(_conv_model(11))
    assert ready.per_channel and "upgraded from opset 11 to 13" in ready.note
    assert next(o.version for o in ready.model.opset_import if o.domain == "") == 13
    assert ready_for_qdq(_conv_model(13)).note is None
    # An op the version converter has no adapter for: the model stays, weights go per tensor, and why.
    stuck = ready_for_qdq(_conv_model(11, "NotAnOnnxOp"))
    assert not stuck.per_channel and "per tensor" in stuck.note and stuck.model.opset_import[0].version == 11


def _io_model(inputs, outputs, metadata=None):
    """A model with the given (name, type, shape) inputs and outputs: each output is an Identity of input 0."""
    nodes = [helper.make_node("Identity", [inputs[0][0]], [o[0]]) for o in outputs]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(*i) for i in inputs],
                          [helper.make_tensor_value_info(*o) for o in outputs])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    for k, v in (metadata or {}).items():
        m.metadata_props.add(key=k, value=v)
    return m


def test_lstm_state_pairs_h_c_to_hn_cn_and_ultralytics_imgsz(tmp_path):
    from edgemm.manifest_inference import infer_manifest

    f = TensorProto.FLOAT
    vad = _io_model([("input", f, ["seq", 576]), ("h", f, [1, 1, 128]), ("c", f, [1, 1, 128])],
                    [("probs", f, ["seq"]), ("hn", f, [1, 1, 128]), ("cn", f, [1, 1, 128])])
    manifest, notes = infer_manifest(vad, "vad.onnx")
    specs = {s.name: s for s in manifest.graphs["model"].inputs}
    assert (specs["h"].state_of, specs["c"].state_of) == ("hn", "cn")
    assert specs["input"].modality == "audio" and specs["input"].preprocess.window_samples == 576
    assert specs["input"].preprocess.hop == 576  # stateful: windows back to back
    yolo = _io_model([("images", f, ["batch", 3, "height", "width"])], [("output0", f, ["batch", 22, "n"])],
                     {"imgsz": "[320, 320]", "task": "detect"})
    manifest, notes = infer_manifest(yolo, "yolo.onnx")
    spec = manifest.graphs["model"].inputs[0]
    assert spec.preprocess.size == (320, 320) and spec.shape[2:] == [320, 320]
    assert any("imgsz" in n for n in notes)
    # --shape wins over the metadata, and a fixed dim cannot be changed.
    manifest, _ = infer_manifest(yolo, "yolo.onnx", shapes={"images": [1, 3, 640, 480]})
    assert manifest.graphs["model"].inputs[0].preprocess.size == (640, 480)
    from edgemm.errors import EdgemmError

    with pytest.raises(EdgemmError, match="only dynamic dims"):
        infer_manifest(yolo, "yolo.onnx", shapes={"images": [1, 1, 64, 64]})
