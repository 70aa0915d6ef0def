"""Metrics against hand-computed values (and scikit-learn when installed), evaluation of real bundles of every
fusion form on generated labelled data, comparison of a float and a pruned bundle, and the report files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgemm.converters import validate as V
from edgemm.converters.prune import prune
from edgemm.bundle import load_bundle, write_bundle
from edgemm.errors import EdgemmError
from edgemm.fusion import FusionModel
from tests.onnx_models import residual_cnn_model, write_av_bundle, write_intermediate_bundle, write_late_bundle


# -- metrics -------------------------------------------------------------------------------------------


def test_classification_metrics_by_hand():
    y_true = [0, 0, 1, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 0, 1]
    m = V.classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(3 / 6)
    # class a: tp 1, fp 1, fn 1 -> p 1/2, r 1/2; b: tp 2, fp 2, fn 1 -> p 1/2, r 2/3; c: never predicted -> 0
    pc = {c["label"]: c for c in m["per_class"]}
    assert pc["a"]["precision"] == pytest.approx(0.5) and pc["a"]["recall"] == pytest.approx(0.5)
    assert pc["b"]["precision"] == pytest.approx(0.5) and pc["b"]["recall"] == pytest.approx(2 / 3)
    assert pc["b"]["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert pc["c"]["precision"] == 0 and pc["c"]["recall"] == 0 and pc["c"]["support"] == 1
    assert m["precision_macro"] == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert m["recall_macro"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert m["confusion"] == [[1, 1, 0], [1, 2, 0], [0, 1, 0]]


def test_classification_metrics_match_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 7, 500)
    y_pred = np.where(rng.random(500) < 0.6, y_true, rng.integers(0, 6, 500))  # class 6 never predicted
    m = V.classification_metrics(y_true, y_pred, 7)
    labels = list(range(7))
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y_true, y_pred))
    for avg in ("macro", "weighted"):
        f1 = sk.f1_score(y_true, y_pred, labels=labels, average=avg, zero_division=0)
        assert m[f"f1_{avg}"] == pytest.approx(f1)
    assert m["precision_macro"] == pytest.approx(sk.precision_score(y_true, y_pred, labels=labels, average="macro",
                                                                    zero_division=0))
    assert m["recall_macro"] == pytest.approx(sk.recall_score(y_true, y_pred, labels=labels, average="macro",
                                                              zero_division=0))
    p, r, f, s = sk.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    np.testing.assert_allclose([c["f1"] for c in m["per_class"]], f)
    np.testing.assert_array_equal([c["support"] for c in m["per_class"]], s)
    np.testing.assert_array_equal(m["confusion"], sk.confusion_matrix(y_true, y_pred, labels=labels))


def test_regression_metrics_by_hand_and_sklearn():
    t = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.5, 2.0, 2.0, 4.0])
    m = V.regression_metrics(t, p)
    assert m["mse"] == pytest.approx((0.25 + 0 + 1 + 0) / 4)
    assert m["mae"] == pytest.approx(1.5 / 4)
    assert m["rmse"] == pytest.approx(math.sqrt(1.25 / 4))
    assert m["r2"] == pytest.approx(1 - 1.25 / 5.0)
    assert m["max_abs_error"] == 1.0
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    t, p = rng.standard_normal((50, 1)), rng.standard_normal((50, 1))
    m = V.regression_metrics(t, p)
    assert m["mse"] == pytest.approx(sk.mean_squared_error(t, p))
    assert m["mae"] == pytest.approx(sk.mean_absolute_error(t, p))
    assert m["r2"] == pytest.approx(sk.r2_score(t, p))


def test_multilabel_metrics_match_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    t = rng.random((80, 4)) < 0.4
    p = np.where(rng.random((80, 4)) < 0.7, t, ~t)
    m = V.multilabel_metrics(t, p)
    assert m["subset_accuracy"] == pytest.approx(sk.accuracy_score(t, p))
    assert m["f1_macro"] == pytest.approx(sk.f1_score(t, p, average="macro", zero_division=0))
    assert m["f1_micro"] == pytest.approx(sk.f1_score(t, p, average="micro", zero_division=0))


def test_out_of_range_labels_are_user_errors():
    with pytest.raises(EdgemmError, match="out of range"):
        V.classification_metrics([0, 5], [0, 1], 3)
    with pytest.raises(EdgemmError, match="Regression targets"):
        V.regression_metrics(np.zeros((4, 2)), np.zeros((4, 3)))


def test_closeness_by_hand():
    ref = [{"y": np.array([[1.0, 0.0, -2.0]]), "e": np.array([[3.0, 4.0]])},
           {"y": np.array([[0.0, 1.0, 0.5]]), "e": np.array([[1.0, 0.0]])}]
    cand = [{"y": np.array([[1.1, 0.0, -2.0]]), "e": np.array([[3.0, 4.0]])},
            {"y": np.array([[0.0, 1.0, 0.5]]), "e": np.array([[0.0, 1.0]])}]
    c = V.closeness(ref, cand)
    assert c["y"]["max_abs"] == pytest.approx(0.1)
    assert c["y"]["mean_abs"] == pytest.approx(0.1 / 6)
    assert c["y"]["max_rel"] == pytest.approx(0.1)  # |1.1 - 1| / |1|
    assert c["y"]["top1_agreement"] == 1.0
    cos0 = (1.1 + 4) / (math.sqrt(5) * math.sqrt(1.21 + 4))
    assert c["y"]["cosine"] == pytest.approx((cos0 + 1) / 2)
    assert c["e"]["cosine_min"] == pytest.approx(0.0)  # orthogonal second sample
    assert c["e"]["top1_agreement"] == 0.5


# -- bundles over data ---------------------------------------------------------------------------------


def _sensor_data(folder: Path, bundle, n_files=2, per_file=12, seed=0, labels="model", classes=10) -> Path:
    """Random video/audio tensors; labels = the bundle's own predictions with a few flipped (known accuracy)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with FusionModel(bundle) as fm:
        for i in range(n_files):
            tensors = {"video": rng.standard_normal((per_file, 3, 32, 32)).astype(np.float32),
                       "audio": rng.standard_normal((per_file, 1, 64, 98)).astype(np.float32)}
            pred = fm.infer(tensors).outputs["logits"].argmax(axis=1)
            if labels == "model":
                y = pred.copy()
                y[::4] = (y[::4] + 1) % classes  # every 4th sample wrong: accuracy exactly 75 %
                np.savez(folder / f"part{i}.npz", **tensors, label=y)
            else:
                np.savez(folder / f"part{i}.npz", **tensors)
    return folder


@pytest.mark.parametrize("form", ["early", "intermediate", "late"])
def test_evaluate_every_fusion_form_with_ablation(tmp_path, form):
    writer = {"early": write_av_bundle, "intermediate": write_intermediate_bundle, "late": write_late_bundle}[form]
    bundle = load_bundle(writer(tmp_path / "b"))
    data = _sensor_data(tmp_path / "data", bundle)
    r = V.evaluate(bundle, data)
    m = r["outputs"]["logits"]
    assert r["samples"] == 24 and r["labelled"] == 24
    assert m["accuracy"] == pytest.approx(0.75)
    assert sum(c["support"] for c in m["per_class"]) == 24
    assert set(r["ablation"]) == {"without_video", "without_audio"}
    for cond in r["ablation"].values():
        assert "accuracy" in cond["outputs"]["logits"]
        assert 0.0 <= cond["agreement_with_full"]["logits"] <= 1.0
    assert r["primary"]["metric"] == "accuracy" and r["primary"]["original"] == pytest.approx(0.75)
    # Evaluated one by one (fixed batch 1) the figures are the same as in batches.
    again = V.evaluate(bundle, data, batch=1, limit=10)
    assert again["samples"] == 10


def test_evaluate_without_labels_and_limit(tmp_path):
    bundle = load_bundle(write_av_bundle(tmp_path / "b"))
    data = _sensor_data(tmp_path / "data", bundle, labels=None)
    r = V.evaluate(bundle, data, limit=5)
    assert r["samples"] == 5 and r["labelled"] == 0 and r["outputs"] == {}
    assert r["ablation"]["without_audio"]["outputs"] == {}


def test_evaluate_bad_data(tmp_path):
    bundle = load_bundle(write_av_bundle(tmp_path / "b"))
    with pytest.raises(EdgemmError, match="Not found"):
        V.evaluate(bundle, tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    np.savez(bad / "x.npz", video=np.zeros((2, 3, 16, 16), np.float32), audio=np.zeros((2, 1, 64, 98), np.float32),
             label=np.array([0, 1]))
    with pytest.raises(EdgemmError, match=r"x\.npz.*video.*shape"):
        V.evaluate(bundle, bad)
    np.savez(bad / "x.npz", video=np.zeros((2, 3, 32, 32), np.float32), audio=np.zeros((2, 1, 64, 98), np.float32),
             label=np.array([0, 12]))
    with pytest.raises(EdgemmError, match="Label 12 for logits is out of range"):
        V.evaluate(bundle, bad)


def _cnn_bundle(folder: Path, model) -> Path:
    from edgemm.manifest_inference import infer_manifest

    manifest, _ = infer_manifest(model, "model.onnx", name="cnn")
    return write_bundle(manifest, {"model.onnx": model}, folder)


def _cnn_data(folder: Path, model, n=64, seed=0) -> Path:
    from edgemm.converters.graphs import cpu_session as _session

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 16, 16)).astype(np.float32)
    y = _session(model).run(None, {"x": x})[0].argmax(axis=1)
    np.savez(folder / "test.npz", x=x, label=y)
    return folder


def test_compare_float_and_pruned_bundles_and_report(tmp_path):
    model = residual_cnn_model()
    orig = load_bundle(_cnn_bundle(tmp_path / "orig", model))
    rng = np.random.default_rng(5)
    pruned, info = prune(model, "channels:0.5", [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
                                                  for _ in range(64)], round_to=None)
    conv = load_bundle(_cnn_bundle(tmp_path / "pruned", pruned))
    data = _cnn_data(tmp_path / "data", model)
    r = V.compare_bundles(orig, conv, data)
    assert r["original"]["outputs"]["logits"]["accuracy"] == 1.0  # labels are the original's predictions
    acc = r["converted"]["outputs"]["logits"]["accuracy"]
    assert r["drop_points"]["logits"]["accuracy"] == pytest.approx(100 * (1 - acc))
    c = r["closeness"]["logits"]
    assert c["top1_agreement"] == pytest.approx(acc)
    assert 0 < c["max_abs"] and c["mean_abs"] <= c["max_abs"] and -1 <= c["cosine_min"] <= c["cosine"] <= 1
    assert r["primary"]["drop_points"] == pytest.approx(100 * (1 - acc))
    # Sections a converter adds are rendered too.
    r["latency_ms"] = {"before": 2.0, "after": 1.0}
    r["size"] = {"parameters": info["parameters"], "macs": info["macs"]}
    r["pruning"] = info
    paths = V.write_report(tmp_path / "report", r)
    assert {p.name for p in paths.values()} == {"report.json", "report.md", "confusion.png"}
    loaded = json.loads(paths["json"].read_text())
    assert loaded["converted"]["outputs"]["logits"]["confusion"] == r["converted"]["outputs"]["logits"]["confusion"]
    md = paths["md"].read_text()
    for text in ("## Task metrics", "## Output closeness", "## Latency ms", "2.00x", "## Size", "## Pruning",
                 "drop", "confusion.png"):
        assert text in md, text
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_json_has_no_nan(tmp_path):
    r = {"data": "d", "samples": 1, "original": {"outputs": {}, "model": "m"}, "weird": {"before": float("nan"),
                                                                                       "after": 1.0}}
    paths = V.write_report(tmp_path / "r", r)
    assert json.loads(paths["json"].read_text())["weird"]["before"] is None
    assert "png" not in paths  # nothing to draw without a classification output


def test_regression_outputs(tmp_path):
    model = onnx.load_from_string(residual_cnn_model(classes=1).SerializeToString())
    from edgemm.manifest_inference import infer_manifest

    manifest, _ = infer_manifest(model, "model.onnx")
    assert manifest.graphs["model"].outputs[0].task == "regression"
    folder = write_bundle(manifest, {"model.onnx": model}, tmp_path / "reg")
    from edgemm.converters.graphs import cpu_session as _session

    rng = np.random.default_rng(3)
    x = rng.standard_normal((20, 3, 16, 16)).astype(np.float32)
    y = _session(model).run(None, {"x": x})[0] + 0.5
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "a.npz", x=x, label=y.astype(np.float32))
    r = V.evaluate(folder, tmp_path / "data")
    m = r["outputs"]["logits"]
    assert m["task"] == "regression" and m["mse"] == pytest.approx(0.25, rel=1e-4) and m["mae"] == pytest.approx(0.5, rel=1e-4)
    assert r["primary"]["metric"] == "mse"


def two_output_model():
    """x -> Gemm -> "age" [N, 1] (regression, listed first) and Gemm -> "drowsy" [N, 3] (classification)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "wa"], ["age"], transB=1, name="age_head"),
             helper.make_node("Gemm", ["x", "wd"], ["drowsy"], transB=1, name="drowsy_head")]
    inits = [numpy_helper.from_array(rng.standard_normal((1, 8)).astype(np.float32), "wa"),
             numpy_helper.from_array(rng.standard_normal((3, 8)).astype(np.float32), "wd")]
    g = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                          [helper.make_tensor_value_info("age", TensorProto.FLOAT, ["N", 1]),
                           helper.make_tensor_value_info("drowsy", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_eval_and_run_lead_with_the_same_output(tmp_path):
    """The output `label` means, the guard measures and eval reports first is the one the live pipeline
    decides on (edgemm.decisions.primary_output): here the classification, not the regression listed first."""
    from edgemm.converters.data import primary_output
    from edgemm.decisions import primary_output as decisions_primary

    model = two_output_model()
    onnx.save(model, str(tmp_path / "two.onnx"))
    bundle = load_bundle(tmp_path / "two.onnx")
    with FusionModel(bundle) as fm:
        assert primary_output(bundle) == decisions_primary(fm.output_specs) == "drowsy"
    rng = np.random.default_rng(1)
    x = rng.standard_normal((12, 8)).astype(np.float32)
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "a.npz", x=x, **{"label:age": rng.standard_normal((12, 1)).astype(np.float32),
                                                   "label:drowsy": rng.integers(0, 3, 12)})
    r = V.evaluate(bundle, tmp_path / "data", ablation=False)
    assert set(r["outputs"]) == {"age", "drowsy"}
    assert r["primary"]["output"] == "drowsy" and r["primary"]["metric"] == "accuracy"


def test_dynamic_batch_needs_a_free_first_dim_on_every_input(tmp_path):
    from edgemm.converters.graphs import dynamic_batch
    from edgemm.runners.onnxruntime import OnnxRuntimeRunner
    from onnx import TensorProto, helper

    def runner(shape):
        g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        r = OnnxRuntimeRunner(m.SerializeToString())
        r.activate()
        return r

    free, fixed, scalar = runner(["N", 4]), runner([1, 4]), runner([])
    assert dynamic_batch([free]) and not dynamic_batch([free, fixed]) and not dynamic_batch([scalar])


def test_time_models_side_by_side(tmp_path):
    """One timing function for ModelProtos, paths and runners alike; results keyed by label, with the
    speed-up over the first (no timing assertions: only that every target was measured)."""
    from edgemm.converters.timing import time_models
    from edgemm.runners.onnxruntime import OnnxRuntimeRunner

    model = residual_cnn_model()
    onnx.save(model, str(tmp_path / "m.onnx"))
    feed = {"x": np.zeros((1, 3, 16, 16), np.float32)}
    res = time_models({"proto": model, "path": tmp_path / "m.onnx",
                       "runner": OnnxRuntimeRunner(tmp_path / "m.onnx", threads=1)},
                      feed=feed, threads=1, duration_s=0.1, warmup_s=0.0)
    assert list(res) == ["proto", "path", "runner"]
    assert res["proto"]["speedup"] == pytest.approx(1.0)
    assert all(r["iterations"] == res["proto"]["iterations"] > 0 and r["latency_ms"]["p50"] > 0 for r in res.values())
    synthesised = time_models({"m": model}, duration_s=0.05, warmup_s=0.0)  # no feed: made from the inputs
    assert synthesised["m"]["iterations"] > 0


def test_size_section_totals_and_per_graph(tmp_path):
    root = write_intermediate_bundle(tmp_path / "mid")
    s = V.size_section(root, root)
    assert set(s["graphs"]) == {"video_encoder", "audio_encoder", "head"}
    for key in ("parameters", "size_bytes"):
        assert s[key]["before"] == s[key]["after"] == sum(v[key]["before"] for v in s["graphs"].values())
