"""The OpenVINO backend and --backend auto, on real ONNX models run by the real openvino wheel."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from edgemm.bundle import load_bundle
from edgemm.errors import EdgemmError
from edgemm.runners import make_runner, parse_backend
from tests import onnx_models
from tests.conftest import REPO

pytest.importorskip("openvino")


@pytest.fixture(autouse=True)
def private_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEMM_OPENVINO_CACHE", str(tmp_path / "ov-cache"))
    monkeypatch.setenv("EDGEMM_AUTO_CACHE", str(tmp_path / "auto.json"))


@pytest.fixture
def cnn(tmp_path):
    path = tmp_path / "cnn.onnx"
    onnx.save(onnx_models.residual_cnn_model(hw=16), str(path))
    return load_bundle(path)


def test_openvino_matches_onnxruntime(cnn, tmp_path):
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with make_runner(cnn, backend="onnxruntime", threads=1) as ort_runner:
        ref = ort_runner.infer({"x": x})["logits"]
    with make_runner(cnn, backend="ov", threads=1) as runner:
        assert runner.describe() == "openvino cpu, 1 threads"
        assert runner.input_metadata()["x"].shape == (None, 3, 16, 16)
        out = runner.infer({"x": x})
        again = runner.infer({"x": x[:1]})
    np.testing.assert_allclose(out["logits"], ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(again["logits"], ref[:1], rtol=1e-4, atol=1e-4)
    assert out["logits"] is not again["logits"] and out["logits"].shape == (2, 10)  # fresh arrays each call
    assert any((tmp_path / "ov-cache").iterdir())  # the compiled model was cached


def test_openvino_reads_inputs_in_place_and_hands_out_its_own_outputs(cnn):
    """Inputs are shared with OpenVINO, not copied: a strided view (the channels of an NHWC frame) must still
    read right, and a buffer the caller refills afterwards must not change an output already returned."""
    rng = np.random.default_rng(1)
    nhwc = rng.standard_normal((1, 16, 16, 3)).astype(np.float32)
    view = nhwc.transpose(0, 3, 1, 2)  # not C-contiguous
    with make_runner(cnn, backend="onnxruntime", threads=1) as ort_runner:
        ref = ort_runner.infer({"x": np.ascontiguousarray(view)})["logits"]
    buf = np.ascontiguousarray(view)
    with make_runner(cnn, backend="ov", threads=1) as runner:
        from_view = runner.infer({"x": view})["logits"]
        first = runner.infer({"x": buf})["logits"]
        kept = first.copy()
        buf[:] = rng.standard_normal(buf.shape)
        second = runner.infer({"x": buf})["logits"]
    np.testing.assert_allclose(from_view, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(first, kept)
    assert not np.allclose(second, first)


@pytest.mark.parametrize("feed, message", [
    ({}, "Input tensor: x | Missing from the feed; expected inputs: x."),
    ({"x": np.zeros((1, 3, 16, 16), np.float64)}, "Input tensor: x | Received dtype float64; expected float32."),
    ({"x": np.zeros((1, 3, 8, 16), np.float32)}, "Input tensor: x | Received shape (1, 3, 8, 16); expected (?, 3, 16, 16)."),
])
def test_openvino_input_checks(cnn, feed, message):
    with make_runner(cnn, backend="openvino") as runner:
        with pytest.raises(EdgemmError) as e:
            runner.infer(feed)
    assert str(e.value).startswith(message)


def test_backend_names():
    assert parse_backend("openvino") == ("openvino", None)
    assert parse_backend("ov") == ("openvino", None)
    assert parse_backend("auto") == ("auto", None)
    with pytest.raises(EdgemmError, match=r"Backend: openvino:gpu \| openvino takes no options"):
        parse_backend("openvino:gpu")
    with pytest.raises(EdgemmError, match="openvino, auto"):
        parse_backend("nope")


def test_malformed_model_is_one_line(tmp_path):
    from edgemm.runners.openvino import OpenVINORunner

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(EdgemmError, match=r"^Model: bad.onnx \| OpenVINO could not load it: "):
        OpenVINORunner(bad).activate()


def test_auto_chooses_an_agreeing_backend_and_caches(cnn, tmp_path, capsys):
    from edgemm.runners import auto

    with make_runner(cnn, backend="auto", threads=1) as runner:
        chosen = runner.chosen
        assert chosen in ("onnxruntime", "openvino")
        assert runner.describe().startswith("auto -> " + chosen.split(":")[0])
        out = runner.infer({"x": np.ones((1, 3, 16, 16), np.float32)})
    assert out["logits"].shape == (1, 10)
    said = capsys.readouterr().err
    assert f"backend auto for cnn: {chosen} (p50 " in said and "openvino" in said and "cached" not in said
    cache = json.loads((tmp_path / "auto.json").read_text())
    (entry,) = cache.values()
    assert set(entry["p50_ms"]) == {"onnxruntime", "openvino"} and entry["backend"] == chosen
    # Second time: from the cache, no trial.
    with make_runner(cnn, backend="auto", threads=1) as runner:
        assert runner.chosen == chosen
    assert "[cached in" in capsys.readouterr().err
    # Another thread count is another machine configuration: its own entry.
    assert auto.machine_key(1) != auto.machine_key(2)


def test_auto_rejects_a_backend_that_disagrees():
    ref = {"y": np.array([[1.0, 2.0, 3.0]], np.float32)}
    assert auto_agrees(ref, {"y": ref["y"] + 1e-5})[0]
    ok, why = auto_agrees(ref, {"y": np.array([[3.0, 2.0, 1.0]], np.float32)})
    assert not ok and why.startswith("output y: cosine")
    assert not auto_agrees(ref, {"y": np.zeros((1, 4), np.float32)})[0]
    assert not auto_agrees(ref, {"y": np.full((1, 3), np.nan, np.float32)})[0]
    # An output that is ~0 on the trial's feed agrees when the differences are, whatever its cosine.
    tiny = {"y": np.array([[8e-7, 1e-7, 3e-7]], np.float32)}
    assert auto_agrees(tiny, {"y": np.array([[7e-7, 2e-7, 1e-7]], np.float32)})[0]
    assert not auto_agrees(tiny, {"y": np.array([[8e-7, 1e-7, 0.5]], np.float32)})[0]
    # A quantized graph's runtimes agree within the INT8 closeness floor: cosine 0.9994 passes there only.
    from edgemm.runners.auto import COSINE_MIN_INT8, agrees

    off = {"y": np.array([[1.1, 2.0, 2.9]], np.float32)}  # cosine 0.9994, max abs 0.1
    assert not agrees(ref, off)[0] and agrees(ref, off, COSINE_MIN_INT8)[0]
    far = {"y": np.array([[1.5, 2.0, 2.5]], np.float32)}  # cosine 0.983
    assert not agrees(ref, far, COSINE_MIN_INT8)[0]
    # ... unless quantization itself left that output further from FP32 (the conversion's measure, per output)
    assert agrees(ref, far, COSINE_MIN_INT8, {"y": 0.95})[0] and not agrees(ref, far, COSINE_MIN_INT8, {"z": 0.95})[0]


def auto_agrees(ref, out):
    from edgemm.runners.auto import agrees

    return agrees(ref, out)


def test_missing_openvino_is_one_line_naming_the_extra(tmp_path):
    """With openvino not importable, --backend openvino fails with one line that names the extra."""
    path = tmp_path / "cnn.onnx"
    onnx.save(onnx_models.residual_cnn_model(hw=16), str(path))
    code = ("import sys, importlib.abc\n"
            "class B(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'openvino': raise ImportError('blocked')\n"
            "sys.meta_path.insert(0, B())\n"
            "from edgemm.cli import main\n"
            f"sys.exit(main(['bench', {str(path)!r}, '--backend', 'openvino', '--iterations', '2']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Module: openvino | Could not be imported" in proc.stderr and "edgemm[openvino]" in proc.stderr


def test_bench_cli_compares_openvino(cli, tmp_path):
    path = tmp_path / "cnn.onnx"
    onnx.save(onnx_models.residual_cnn_model(hw=16), str(path))
    proc = cli("bench", path, "--backend", "onnxruntime", "--backend", "openvino", "--iterations", "20",
               "--threads", "1", env={"EDGEMM_OPENVINO_CACHE": ""})
    assert proc.returncode == 0, proc.stderr
    assert "openvino cpu, 1 threads" in proc.stdout


# --------------------------------------------------------------------------------------------------
# convert --target openvino
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cnn_data(tmp_path_factory):
    from tests.test_convert_cli import cnn_bundle

    return cnn_bundle(tmp_path_factory.mktemp("cnn-ov"))


def test_convert_for_openvino_times_both_candidates_under_openvino(cnn_data, tmp_path):
    from edgemm.converters.convert import ConvertOptions, convert

    model, calib, test = cnn_data
    out = tmp_path / "ov-int8.edgemm"
    # (unbaked: the check below feeds the float tensor; baking, the default for openvino, is tests/test_bake.py's)
    report = convert(model, out, ConvertOptions(precision="int8", target="openvino", calib=calib, eval=test,
                                                max_drop=5, threads=1, bench_seconds=0.3, quiet=True,
                                                bake_preprocess="none"))
    gi = report["conversion"]["int8"]["model"]
    cands = gi["flavour"]["candidates"]
    assert set(cands) == {"ov", "nncf", "u8s8"}
    chosen = gi["flavour"]["chosen"]
    assert chosen in ("ov", "nncf", "u8s8", "fp32")
    if chosen != "fp32":  # the one kept is the fastest of those as close to FP32 as the closest
        close = [c for c, v in cands.items() if v["cosine_mean"] >= max(x["cosine_mean"] for x in cands.values()) - 0.01]
        assert chosen == min(close, key=lambda c: cands[c]["p50_ms"])
    assert "openvino CPU" in report["latency_setup"]["method"]
    prov = load_bundle(out).manifest.provenance
    assert {"openvino", "nncf"} <= set(prov["tools"]) and prov["settings"]["target"] == "openvino"
    assert report["conversion"]["accuracy_guard"]["drop_points"] <= 5
    # The bundle runs on OpenVINO and on ONNX Runtime alike, with outputs close to FP32.
    x = np.random.default_rng(3).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with make_runner(load_bundle(model), backend="onnxruntime") as r:
        ref = r.infer({"x": x})["logits"]
    for backend in ("openvino", "onnxruntime"):
        with make_runner(load_bundle(out), backend=backend) as r:
            got = r.infer({"x": x})["logits"]
        cos = float(ref.ravel() @ got.ravel() / np.linalg.norm(ref) / np.linalg.norm(got))
        assert cos > 0.98, (backend, cos)
    # --backend auto on it: OpenVINO is a candidate (an INT8 graph's rounding differs between runtimes within
    # COSINE_MIN_INT8), not rejected for missing the FP32 runtimes' 0.9999.
    from edgemm.runners import auto

    assert set(auto.int8_closeness(load_bundle(out))) == {"logits"}  # the conversion's own closeness
    trial = auto._trial(load_bundle(out), "model", 1, "t")
    assert trial["rejected"] == {} and set(trial["p50_ms"]) == {"onnxruntime", "openvino"}, trial


@pytest.mark.parametrize("candidate", ["ov", "nncf"])
def test_openvino_candidates_place_symmetric_qdq_on_layer_inputs(cnn_data, candidate):
    """Both candidates: zero points 0 (symmetric; NNCF makes non-negative ranges unsigned), per-channel Conv weights, no Q/DQ on graph outputs;
    the guard's exclusions keep a layer's inputs float."""
    from edgemm.converters import int8, openvino
    from edgemm.converters.calibration import GraphFeeds

    model, calib, _ = cnn_data
    bundle = load_bundle(model)
    prepared = int8.prepare(bundle.load_graph("model"))
    with GraphFeeds(bundle, calib, progress=False) as gf:
        feeds = [f["model"] for f in gf.iter_feeds()]
    cal = int8.calibrate(prepared, feeds)
    q = openvino.quantize(candidate, prepared, cal, feeds)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
    zps = [inits[n.input[2]] for n in q.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zps and all(z.dtype in (np.int8, np.uint8) and not z.any() for z in zps)
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    prod = {o: n for n in q.graph.node for o in n.output}
    weight_dq = prod[convs[0].input[1]]
    assert weight_dq.op_type == "DequantizeLinear" and inits[weight_dq.input[1]].size == 16  # per channel
    assert prod[convs[0].input[0]].op_type == "DequantizeLinear"  # activation quantized
    assert all(prod[o.name].op_type != "DequantizeLinear" for o in q.graph.output)
    kept = openvino.quantize(candidate, prepared, cal, feeds, exclude=[convs[1].name])
    kprod = {o: n for n in kept.graph.node for o in n.output}
    conv = next(n for n in kept.graph.node if n.name == convs[1].name)
    assert kprod[conv.input[0]].op_type != "DequantizeLinear"


def test_convert_openvino_refusals(cnn_data, tmp_path, capsys):
    from edgemm.cli import main

    model, calib, _ = cnn_data
    out = tmp_path / "o.edgemm"
    rc = main(["convert", str(model), "-o", str(out), "--precision", "int8", "--calib", str(calib),
               "--target", "openvino", "--flavour", "trt"])
    assert rc == 1 and not out.exists()
    err = capsys.readouterr().err
    assert "INT8 flavour: trt | Not one for --target openvino; expected one of ov, nncf, u8s8, nncf-sq" in err


@pytest.mark.parametrize("backend", ["openvino", "auto"])
def test_eval_and_fusion_on_openvino_and_auto(cli, tmp_path, backend):
    """The same metrics on every backend: a multi-graph bundle through FusionModel, and edgemm eval."""
    from edgemm.fusion import FusionModel

    bundle_dir = onnx_models.write_intermediate_bundle(tmp_path / "inter.edgemm")
    bundle = load_bundle(bundle_dir)
    rng = np.random.default_rng(0)
    tensors = {"video": rng.standard_normal((4, 3, 32, 32)).astype(np.float32),
               "audio": rng.standard_normal((4, 1, 64, 98)).astype(np.float32)}
    with FusionModel(bundle) as ref_fm, FusionModel(bundle, backend, 1) as fm:
        ref = ref_fm.infer(tensors).outputs["logits"]
        got = fm.infer(tensors).outputs["logits"]
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4)
    data = tmp_path / "data"
    data.mkdir()
    np.savez(data / "a.npz", **tensors, label=ref.argmax(1))
    env = {"EDGEMM_OPENVINO_CACHE": str(tmp_path / "ov"), "EDGEMM_AUTO_CACHE": str(tmp_path / "auto.json")}
    r = cli("eval", bundle_dir, "--data", data, "--backend", backend, "--threads", "1", env=env)
    assert r.returncode == 0, r.stderr
    assert "logits: accuracy 100.00 %" in r.stdout
    if backend == "auto":
        assert "backend auto for av-intermediate-test/head: " in r.stderr


# --------------------------------------------------------------------------------------------------
# INT8 candidates for graphs with attention, and the ov placement's Adds (small graphs made here)
# --------------------------------------------------------------------------------------------------


def _const(name, value):
    return onnx.numpy_helper.from_array(np.asarray(value, np.float32), name)


def _conv_attention_model(attention=True):
    """A conv stem, then one self-attention block over its 128 positions (q @ k^T scaled, Softmax, @ v, a
    projection and a residual Add), then a pooled linear head: PP-OCRv4's recogniser in miniature. Without
    attention the block is a plain linear layer and the head ends in a Softmax over a constant weight."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    def w(*shape):  # fan-in scaled weights
        return rng.standard_normal(shape) / np.sqrt(shape[-2] if len(shape) == 2 else np.prod(shape[1:]))

    nodes = [helper.make_node("Conv", ["x", "cw"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["flat"], name="flatten"),
             helper.make_node("Transpose", ["flat"], ["t"], name="tokens", perm=[0, 2, 1])]
    inits = [_const("cw", w(8, 3, 3, 3)), onnx.numpy_helper.from_array(np.array([1, 8, 128], np.int64), "shape")]
    if attention:
        nodes += [helper.make_node("MatMul", ["t", "wq"], ["q"], name="q"),
                  helper.make_node("MatMul", ["t", "wk"], ["k"], name="k"),
                  helper.make_node("MatMul", ["t", "wv"], ["v"], name="v"),
                  helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
                  helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
                  helper.make_node("Mul", ["s", "scale"], ["ss"], name="scale"),
                  # (a 2-D Softmax behind a Flatten, as exporters of opset < 13 write it)
                  helper.make_node("Flatten", ["ss"], ["fs"], name="flat_scores", axis=2),
                  helper.make_node("Softmax", ["fs"], ["p"], name="softmax", axis=-1),
                  helper.make_node("MatMul", ["p", "v"], ["o"], name="attend"),
                  helper.make_node("MatMul", ["o", "wo"], ["po"], name="proj"),
                  helper.make_node("Add", ["po", "t"], ["h"], name="residual")]
        inits += [_const(n, w(8, 8)) for n in ("wq", "wk", "wv", "wo")] + [_const("scale", 8 ** -0.5)]
    else:
        nodes += [helper.make_node("MatMul", ["t", "wo"], ["h"], name="proj")]
        inits += [_const("wo", w(8, 8))]
    nodes += [helper.make_node("ReduceMean", ["h"], ["m"], name="pool", axes=[1], keepdims=0),
              helper.make_node("MatMul", ["m", "wc"], ["logits"], name="head"),
              helper.make_node("Softmax", ["logits"], ["y"], name="probs", axis=-1)]
    inits += [_const("wc", w(8, 4))]
    graph = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
                               helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _feeds(n, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 8, 16)).astype(np.float32)} for _ in range(n)]


def test_attention_is_found_and_gets_the_transformer_candidate():
    """A Softmax over q @ k^T (through its scaling) is attention; a Softmax over a linear layer with a
    constant weight (a classifier head) is not. Only the first graph gets nncf-sq among its candidates."""
    from edgemm.converters import int8, openvino

    with_attn, without = (int8.prepare(_conv_attention_model(a)) for a in (True, False))
    assert openvino.has_attention(with_attn) and not openvino.has_attention(without)
    assert openvino.candidates_for(with_attn) == ("ov", "nncf", "u8s8", "nncf-sq")
    assert openvino.candidates_for(without) == ("ov", "nncf", "u8s8")


def test_nncf_sq_is_symmetric_smoothed_and_close():
    """nncf-sq: every activation zero point 0 (the PERFORMANCE preset: TRANSFORMER's default MIXED gives
    convolutions asymmetric activations, which OpenVINO's CPU ran in float), SmoothQuant's scale ahead of
    the convolution, the convolution and the attention MatMuls quantized, logits close to FP32 on OpenVINO
    (with SmoothQuant on the MatMuls too, OpenVINO ran this graph's logits at cosine 0.3-0.7)."""
    pytest.importorskip("nncf")
    from edgemm.converters import int8, openvino
    from edgemm.runners.openvino import OpenVINORunner

    model = _conv_attention_model()
    prepared = int8.prepare(model)
    feeds = _feeds(16)
    q = openvino.quantize("nncf-sq", prepared, None, feeds)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
    prod = {o: n for n in q.graph.node for o in n.output}
    zps = [inits[n.input[2]] for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    assert zps and all(not z.any() for z in zps)
    assert any("smooth" in n.name.lower() for n in q.graph.node), [n.name for n in q.graph.node]
    for name in ("conv", "scores"):
        node = next(n for n in q.graph.node if n.name == name)
        assert prod[node.input[0]].op_type == "DequantizeLinear", name
    test = _feeds(8, seed=1)
    with OpenVINORunner(model.SerializeToString(), 1) as ref, OpenVINORunner(q.SerializeToString(), 1) as got:
        a = np.concatenate([ref.infer(f)["logits"].ravel() for f in test])
        b = np.concatenate([got.infer(f)["logits"].ravel() for f in test])
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.98


def test_ov_placement_keeps_adds_of_a_constant_float():
    """The ov flavour quantizes a residual Add's inputs (OpenVINO fuses it into the layer before) but not an
    Add of a constant (a LayerNorm's bias: one such Q/DQ Add made OpenVINO's compiler die with SIGFPE)."""
    from onnx import TensorProto, helper

    from edgemm.converters import int8

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),  # (else the affine folds into conv1)
             helper.make_node("Mul", ["r1", "gamma"], ["g"], name="affine_mul"),
             helper.make_node("Add", ["g", "beta"], ["b"], name="bias_add"),
             helper.make_node("Conv", ["b", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "b"], ["res"], name="residual"),
             helper.make_node("Conv", ["res", "w3"], ["y"], name="conv3")]
    inits = [_const("w1", rng.standard_normal((8, 3, 3, 3)) * 0.3),
             _const("w2", rng.standard_normal((8, 8, 3, 3)) * 0.1),
             _const("w3", rng.standard_normal((4, 8, 1, 1)) * 0.3), _const("gamma", rng.uniform(0.5, 2, (1, 8, 1, 1))),
             _const("beta", rng.standard_normal((1, 8, 1, 1)))]
    graph = helper.make_graph(nodes, "adds", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 16])], inits)
    prepared = int8.prepare(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert int8.constant_adds(prepared) == {"bias_add"}
    feeds = _feeds(8)
    q = int8.quantize(prepared, int8.calibrate(prepared, feeds), "ov")
    prod = {o: n for n in q.graph.node for o in n.output}
    node = {n.name: n for n in q.graph.node}
    assert all(prod[i].op_type != "DequantizeLinear" for i in node["bias_add"].input if i in prod)
    assert sum(prod[i].op_type == "DequantizeLinear" for i in node["residual"].input if i in prod) >= 1
    assert prod[node["conv2"].input[0]].op_type == "DequantizeLinear"  # the bias Add's output still feeds int8
