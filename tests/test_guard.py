"""The accuracy guard on a model with one layer that quantizes badly: it must find that layer, keep it in
float, get within budget, undo steps that do not help, and say when a budget cannot be met."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgemm.converters import graphs, int8
from edgemm.converters.data import Sample
from edgemm.converters.guard import BundleEvaluator, accuracy_guard
from edgemm.bundle import load_bundle
from edgemm.errors import EdgemmError
from tests import onnx_models
from tests.onnx_models import _init, _model


def outlier_model():
    """fc1 gives one channel ~400x the others; fc2 ignores that channel and reads the small ones. One
    8-bit scale for fc1's output covers the outlier, so fc2's real inputs round to a few levels: quantizing
    fc2's input ruins the decision, every other layer quantizes well."""
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((16, 8)) * 0.4
    w1 = rng.standard_normal((16, 16)) * 0.3
    w1[0] *= 400
    w2 = rng.standard_normal((16, 16)) * 0.3
    w2[:, 0] *= 5e-4
    w3 = rng.standard_normal((4, 16)) * 0.5
    nodes = [helper.make_node("Gemm", ["x", "w0", "b0"], ["h0"], transB=1, name="fc0"),
             helper.make_node("Relu", ["h0"], ["r0"], name="relu0"),
             helper.make_node("Gemm", ["r0", "w1", "b1"], ["h1"], transB=1, name="fc1"),
             helper.make_node("Gemm", ["h1", "w2", "b2"], ["h2"], transB=1, name="fc2"),
             helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
             helper.make_node("Gemm", ["r2", "w3", "b3"], ["logits"], transB=1, name="fc3")]
    inits = [_init("w0", w0), _init("b0", np.zeros(16)), _init("w1", w1), _init("b1", np.zeros(16)),
             _init("w2", w2), _init("b2", np.zeros(16)), _init("w3", w3), _init("b3", np.zeros(4))]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits, "outlier")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guard")
    model = outlier_model()
    onnx.save(model, str(tmp / "outlier.onnx"))
    bundle = load_bundle(tmp / "outlier.onnx")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0].argmax(1)  # float is 100 %
    samples = [Sample({"x": x[i:i + 1]}, {"logits": y[i:i + 1]}, f"s{i}") for i in range(len(y))]
    prepared = int8.prepare(model)
    calibs = {s: int8.calibrate(prepared, [{"x": x[i:i + 1]} for i in range(64)], "minmax", symmetric=s)
              for s in (False, True)}
    return bundle, model, samples, prepared, calibs


def _run_guard(setup, flavour, max_drop, labels=True, **kw):
    bundle, model, samples, prepared, calibs = setup
    cal = calibs[flavour == "trt"]
    if not labels:
        samples = [Sample(s.tensors, {}, s.name) for s in samples]
    evaluator = BundleEvaluator(bundle, samples)

    def quantize_fn(graph, exclude):
        return int8.quantize(prepared, cal, flavour, exclude)

    quantized = quantize_fn("model", [])
    groups = {"model": int8.quantized_groups(prepared, quantized)}
    return accuracy_guard(evaluator, {"model": model}, quantize_fn, groups, max_drop,
                          quantized={"model": quantized}, **kw)


@pytest.mark.parametrize("flavour", ["u8s8", "trt"])
def test_guard_keeps_the_bad_layer_in_float(setup, flavour):
    res = _run_guard(setup, flavour, max_drop=4.0)
    assert res.metric_float == pytest.approx(100.0)
    assert res.metric_float - res.metric_all_quantized > 20  # the premise: quantizing everything hurts a lot
    assert res.within_budget and res.drop <= 4.0
    assert res.excluded["model"] == ["fc2", "relu2"]  # that one layer (and its Relu), nothing else
    kept = [s for s in res.steps if s.kept_float]
    assert kept and kept[0].group[0] == "fc2" and kept[0].metric_after - kept[0].metric_before > 20
    assert res.ranking[0]["layers"][0] == "fc2"  # ranked the worst
    # the delivered model really has fc2 computing on float inputs, the other layers still quantized
    q = res.models["model"]
    producer = graphs.producers(q)
    fc2 = next(n for n in q.graph.node if n.name == "fc2")
    assert producer[fc2.input[0]].op_type == "Gemm"
    for name in ("fc1", "fc3"):
        node = next(n for n in q.graph.node if n.name == name)
        assert producer[node.input[0]].op_type == "DequantizeLinear"
    d = res.to_dict()
    assert d["layers_kept_float"]["model"] and d["steps"][0]["gain_points"] > 20


def test_loose_budget_changes_nothing(setup):
    res = _run_guard(setup, "u8s8", max_drop=80.0)
    assert res.within_budget and not res.steps and res.excluded == {"model": []}
    assert res.stop_reason.startswith("within budget with every layer")


def test_a_step_that_hurts_in_combination_is_undone(setup):
    """Reverting a group can hurt once others are reverted (errors that cancelled no longer do); the guard
    re-measures every step on the whole set and undoes such a step. Here reverting fc3 together with fc2
    is made harmful for real: that combination is quantized from ranges calibrated on shrunken inputs, so
    fc1's output clips. Alone (as ranked), reverting fc3 is harmless."""
    bundle, model, samples, prepared, calibs = setup
    rng = np.random.default_rng(2)
    shrunk = int8.calibrate(prepared, [{"x": (rng.standard_normal((1, 8)) * 0.02).astype(np.float32)}
                                       for _ in range(16)], "minmax")

    def quantize_fn(graph, exclude):
        cal = shrunk if {"fc2", "fc3"} <= set(exclude) else calibs[False]
        return int8.quantize(prepared, cal, "u8s8", exclude)

    quantized = quantize_fn("model", [])
    groups = {"model": int8.quantized_groups(prepared, quantized)}
    res = accuracy_guard(BundleEvaluator(bundle, samples), {"model": model}, quantize_fn, groups, 0.0,
                         quantized={"model": quantized})
    by_layer = {s.group[0]: s for s in res.steps}
    assert by_layer["fc2"].kept_float
    assert not by_layer["fc3"].kept_float and by_layer["fc3"].metric_after < by_layer["fc3"].metric_before
    assert "fc3" not in res.excluded["model"]
    assert res.metric_final == pytest.approx(max(s.metric_after for s in res.steps if s.kept_float))
    assert len(res.steps) == res.groups_total  # every group tried: the budget of 0 points is never met
    assert not res.within_budget and res.stop_reason == "every quantized layer group tried"


def test_iteration_cap(setup):
    """A budget of 0 points is out of reach here (the previous test: even with fc2 in float the metric stays
    below float's), so one step is taken, and the guard stops at the cap and says so."""
    res = _run_guard(setup, "u8s8", max_drop=0.0, max_iterations=1)
    assert len(res.steps) == 1 and res.steps[0].group[0] == "fc2" and res.steps[0].kept_float
    assert not res.within_budget and res.stop_reason == "iteration cap (1) reached"


def test_without_labels_the_guard_uses_agreement_with_float(setup):
    res = _run_guard(setup, "u8s8", max_drop=4.0, labels=False)
    assert res.metric_name.startswith("top-1 agreement")
    assert res.within_budget and "fc2" in res.excluded["model"]


def test_negative_budget_is_refused(setup):
    with pytest.raises(EdgemmError, match="Max drop"):
        _run_guard(setup, "u8s8", max_drop=-1)


def _scaled(model, name, factor):
    """A copy of model with initializer `name` multiplied by factor (another candidate of that graph)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for i, init in enumerate(m.graph.initializer):
        if init.name == name:
            m.graph.initializer[i].CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) * factor, name))
    return m


def test_evaluator_reuses_runners_and_encoder_outputs(tmp_path):
    """Intermediate fusion: a candidate that changes only the head reuses the encoders' sessions and outputs,
    and gives exactly what a fresh evaluation gives; a changed encoder is run again."""
    from edgemm.fusion import FusionModel
    from tests.onnx_models import write_intermediate_bundle

    bundle = load_bundle(write_intermediate_bundle(tmp_path / "mid"))
    rng = np.random.default_rng(4)
    samples = [Sample({"video": rng.standard_normal((1, 3, 32, 32)).astype(np.float32),
                       "audio": rng.standard_normal((1, 1, 64, 98)).astype(np.float32)}, {}, f"s{i}")
               for i in range(10)]
    models = {g: bundle.load_graph(g) for g in bundle.manifest.graphs}
    head_w = next(i.name for i in models["head"].graph.initializer if len(i.dims) == 2)
    enc_w = next(i.name for i in models["video_encoder"].graph.initializer if len(i.dims) >= 2)
    with FusionModel(bundle) as fm:
        direct = np.concatenate([fm.infer(s.tensors).outputs["logits"] for s in samples])
    with BundleEvaluator(bundle, samples, batch=4) as ev:
        np.testing.assert_allclose(ev.outputs(models), direct, rtol=1e-5, atol=1e-6)
        encoders = {g: ev._runner(g, models[g]) for g in ("video_encoder", "audio_encoder")}
        new_head = {**models, "head": _scaled(models["head"], head_w, 0.5)}
        got = ev.outputs(new_head, np.array([7, 1, 3]))
        assert all(ev._runner(g, models[g]) is r for g, r in encoders.items())  # same sessions
        new_enc = {**models, "video_encoder": _scaled(models["video_encoder"], enc_w, -1.0)}
        got_enc = ev.outputs(new_enc)
    with BundleEvaluator(bundle, samples) as fresh:
        np.testing.assert_allclose(got, fresh.outputs(new_head)[[7, 1, 3]], rtol=1e-6)
        np.testing.assert_allclose(got_enc, fresh.outputs(new_enc), rtol=1e-6)
    assert not np.allclose(got_enc, direct)  # the changed encoder really ran


def test_guard_samples_spread_over_the_folder_and_say_when_capped(tmp_path):
    """A cap takes samples spread over the whole folder, the last part included: files 0, 2, 4, 6, 8 of
    ten (reading limit + 1 to learn of the cap and dropping one gave 0, 1, 3, 5, 6)."""
    from edgemm.converters.data import DataFolder
    from edgemm.converters.guard import guard_samples

    onnx.save(onnx_models.mlp_model(), tmp_path / "m.onnx")
    bundle = load_bundle(tmp_path / "m.onnx")
    data = tmp_path / "data"
    data.mkdir()
    for i in range(10):
        np.savez(data / f"s{i:02d}.npz", x=np.full((1, 8), i, np.float32))
    folder = DataFolder(data, bundle)
    kept, capped = guard_samples(folder, 5)
    assert [int(s.tensors["x"][0, 0]) for s in kept] == [0, 2, 4, 6, 8] and capped
    kept, capped = guard_samples(folder, 10)
    assert len(kept) == 10 and not capped
    np.savez(data / "rows.npz", x=np.zeros((6, 8), np.float32))  # rows of one file count, from its header
    assert folder.sample_count() == 10 and DataFolder(data, bundle).sample_count() == 16
