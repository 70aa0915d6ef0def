"""`edgemm convert` end to end on real (small) models: the bundle it writes, its provenance and report, and
every bad input refused with one line, exit 1, and nothing left behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from converters.convert import ConvertOptions, convert
from edgemm.bundle import file_sha256, load_bundle
from edgemm.cli import main
from edgemm.errors import EdgemmError
from tests.onnx_models import residual_cnn_model, write_av_bundle, write_intermediate_bundle
from tests.test_calibration import write_av_npz


def cnn_bundle(tmp: Path, n_calib=24, n_test=60):
    """residual_cnn_model as a plain .onnx, with calibration and labelled test folders (labels: FP32's own
    predictions on the test inputs, so FP32 scores 100 % and drops are the conversion's alone)."""
    model = residual_cnn_model(hw=16, channels=16)
    path = tmp / "cnn.onnx"
    onnx.save(model, str(path))
    rng = np.random.default_rng(0)
    calib, test = tmp / "calib", tmp / "test"
    calib.mkdir()
    test.mkdir()
    np.savez(calib / "c.npz", x=rng.standard_normal((n_calib, 3, 16, 16)).astype(np.float32))
    x = rng.standard_normal((n_test, 3, 16, 16)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0].argmax(1)
    np.savez(test / "t.npz", x=x, label=y)
    return path, calib, test


def leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}")]


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    return cnn_bundle(tmp_path_factory.mktemp("cnn"))


def test_int8_bundle_report_and_provenance(cnn, tmp_path):
    model, calib, test = cnn
    out = tmp_path / "int8.edgemm"
    report = convert(model, out, ConvertOptions(precision="int8", calib=calib, eval=test, threads=1,
                                                bench_seconds=0.3, flavour="u8s8", quiet=True))
    bundle = load_bundle(out)
    prov = bundle.manifest.provenance
    assert prov["precision"] == "int8" and prov["int8_flavour"] == {"model": "u8s8"}
    assert prov["source_graphs"]["model"]["sha256"] == file_sha256(model)
    assert prov["calibration_method"] == "minmax" and prov["calibration_samples"] == {"model": 24}
    assert prov["settings"]["calib"] == str(calib)
    q = bundle.load_graph("model")
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in q.graph.node}
    for name in ("report.json", "report.md", "confusion.png"):
        assert (out / name).exists(), name
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["primary"]["original"] == pytest.approx(1.0)
    assert on_disk["primary"]["drop_points"] <= 10
    assert on_disk["closeness"]["logits"]["cosine"] > 0.99
    lat = on_disk["latency_ms_p50"]["model"]
    assert lat["before"] > 0 and lat["after"] > 0
    assert on_disk["size_bytes"]["model"]["after"] < on_disk["size_bytes"]["model"]["before"]
    assert on_disk["converted"]["model"] == str(out)
    assert report["conversion"]["int8"]["model"]["flavour"]["chosen"] == "u8s8"
    assert not leftovers(tmp_path, "int8.edgemm")


def test_int8_flavour_chosen_by_timing_on_this_cpu(cnn, tmp_path, monkeypatch, capsys):
    import converters.convert as C

    monkeypatch.setattr(C, "FLAVOUR_TIMING_S", 0.3)
    model, calib, _ = cnn
    out = tmp_path / "auto"
    assert main(["convert", str(model), "-o", str(out), "--precision", "int8", "--calib", str(calib),
                 "--threads", "1", "--bench-seconds", "0.3", "-q"]) == 0
    text = capsys.readouterr().out
    assert "int8 model: flavour" in text and "x FP32" in text
    flav = json.loads((out / "report.json").read_text())["conversion"]["int8"]["model"]["flavour"]
    assert flav["chosen"] in flav["candidates"] and set(flav["candidates"]) == {"u8s8", "s8s8"}
    for c in flav["candidates"].values():
        assert c["p50_ms"] > 0 and c["speedup_vs_fp32"] > 0


def test_graph_stays_fp32_where_int8_is_not_faster(cnn, tmp_path, monkeypatch):
    """The decision rule (not the timing): a graph whose best INT8 flavour is below the speed-up floor stays FP32."""
    import converters.convert as C

    monkeypatch.setattr(C, "FLAVOUR_TIMING_S", 0.2)
    monkeypatch.setattr(C, "MIN_INT8_SPEEDUP", 1e9)  # no flavour can be that fast
    model, calib, _ = cnn
    out = tmp_path / "stays"
    report = convert(model, out, ConvertOptions(precision="int8", calib=calib, threads=1, bench_seconds=0.2,
                                                quiet=True))
    flav = report["conversion"]["int8"]["model"]["flavour"]
    assert flav["chosen"] == "fp32" and "slower than FP32" in flav["why"]
    bundle = load_bundle(out)
    assert bundle.manifest.provenance["precision"] == "fp32"  # the only graph stayed FP32
    assert "QuantizeLinear" not in {n.op_type for n in bundle.load_graph("model").graph.node}


def test_guard_through_convert(cnn, tmp_path):
    model, calib, test = cnn
    out = tmp_path / "guarded"
    report = convert(model, out, ConvertOptions(precision="int8", calib=calib, eval=test, max_drop=0.0, threads=1,
                                                bench_seconds=0.2, flavour="u8s8", quiet=True))
    g = report["conversion"]["accuracy_guard"]
    assert g["metric"] == "accuracy (%)" and g["metric_float"] == pytest.approx(100.0)
    assert g["drop_points"] <= 0.0 and g["within_budget"]
    if g["metric_all_quantized"] < 100.0:
        assert any(g["layers_kept_float"].values())
    # the written model reaches the guard's figure on the evaluation data
    assert report["primary"]["drop_points"] == pytest.approx(0.0, abs=1e-9)
    prov = load_bundle(out).manifest.provenance["accuracy_guard"]
    assert prov["max_drop_points"] == 0.0 and prov["layers_kept_float"] == g["layers_kept_float"]


def test_tensorrt_target_without_gpu_writes_trt_ready_qdq(cnn, tmp_path):
    model, calib, _ = cnn
    out = tmp_path / "trt"
    report = convert(model, out, ConvertOptions(precision="int8", calib=calib, target="tensorrt", threads=1,
                                                bench_seconds=0.2, quiet=True))
    trt = report["conversion"]["tensorrt"]
    if trt.get("engine", True) is None:  # no GPU/TensorRT here: the reason says to build on the device
        assert "device" in trt["reason"] or "TensorRT" in trt["reason"]
        assert load_bundle(out).manifest.graphs["model"].engine is None
    q = load_bundle(out).load_graph("model")
    zps = [i for i in q.graph.initializer if i.name.endswith("zero_point")]
    assert zps and all(onnx.numpy_helper.to_array(z).dtype == np.int8 and not onnx.numpy_helper.to_array(z).any()
                       for z in zps)
    assert report["conversion"]["int8_flavours"] == {"model": "trt"}


def test_fp16_keeps_io_types(cnn, tmp_path, capsys):
    model, calib, test = cnn
    out = tmp_path / "fp16"
    assert main(["convert", str(model), "-o", str(out), "--precision", "fp16", "--calib", str(calib),
                 "--eval", str(test), "--bench-seconds", "0.2", "-q"]) == 0
    bundle = load_bundle(out)
    assert bundle.manifest.provenance["precision"] == "fp16"
    m = bundle.load_graph("model")
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)
    rep = json.loads((out / "report.json").read_text())
    assert rep["closeness"]["logits"]["cosine"] > 0.999
    assert "closeness logits" in capsys.readouterr().out


def test_multi_graph_bundle_converts_every_graph(tmp_path):
    root = write_intermediate_bundle(tmp_path / "mid")
    data = write_av_npz(tmp_path / "calib", files=1, per_file=8)
    out = tmp_path / "mid-int8"
    report = convert(root, out, ConvertOptions(precision="int8", calib=data, threads=1, max_drop=100.0,
                                               bench_seconds=0.2, flavour="u8s8", quiet=True))
    bundle = load_bundle(out)
    assert bundle.manifest.fusion.form == "intermediate"
    for g in ("video_encoder", "audio_encoder", "head"):
        ops = {n.op_type for n in bundle.load_graph(g).graph.node}
        assert "QuantizeLinear" in ops, g
    assert set(report["conversion"]["int8_flavours"]) == {"video_encoder", "audio_encoder", "head"}
    assert "all graphs" in report["latency_ms_p50"]
    assert "calibration data" in report["note"]  # no --eval: measured on --calib, and said so
    assert report["closeness"]["logits"]["cosine"] > 0.99
    assert report["conversion"]["accuracy_guard"]["within_budget"]  # the guard ran over the whole bundle
    assert "ablation" in report["original"]  # per-modality ablation of a multimodal bundle


# -- bad input: one line, exit 1, nothing written ---------------------------------------------------------


def _refused(capsys, argv, out: Path, match: str):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert match in err, err
    assert not out.exists()
    assert not leftovers(out.parent, out.name)
    return err


def test_bad_inputs_are_refused(cnn, tmp_path, capsys):
    model, calib, test = cnn
    out = tmp_path / "o"
    base = ["convert", str(model), "-o", str(out)]
    _refused(capsys, base + ["--precision", "int4"], out, "Precision: int4")
    _refused(capsys, base + ["--precision", "int8"], out, "needs --calib")
    _refused(capsys, base + ["--precision", "int8", "--calib", str(tmp_path / "missing")], out, "Not found")
    (tmp_path / "empty").mkdir()
    _refused(capsys, base + ["--precision", "int8", "--calib", str(tmp_path / "empty")], out, "Is empty")
    _refused(capsys, base + ["--prune", "rows:0.5"], out, "Prune spec: rows:0.5")
    _refused(capsys, base + ["--precision", "int8", "--calib", str(calib), "--calib-method", "kl"], out,
             "Calibration method: kl")
    _refused(capsys, base + ["--target", "coreml"], out, "Target: coreml")
    _refused(capsys, base + ["--precision", "int8", "--calib", str(calib), "--calib-limit", "0"], out,
             "Calibration limit: 0")
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    np.savez(wrong / "w.npz", x=np.zeros((2, 3, 8, 8), np.float32))
    _refused(capsys, base + ["--precision", "int8", "--calib", str(wrong)], out, "(1, 3, 8, 8)")
    _refused(capsys, ["convert", str(tmp_path / "nope.onnx"), "-o", str(out)], out, "File not found")
    _refused(capsys, base + ["--target", "tensorrt", "--shape", "x:1x3,2"], out, "Shape: x:1x3,2")
    _refused(capsys, base + ["--target", "tensorrt", "--max-batch", "0"], out, "Max batch: 0")


def test_existing_out_is_refused_unless_forced(cnn, tmp_path, capsys):
    model, calib, _ = cnn
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["convert", str(model), "-o", str(out), "--bench-seconds", "0.1", "-q"]) == 1
    err = capsys.readouterr().err
    assert "Already exists" in err and len(err.strip().splitlines()) == 1
    assert (out / "keep.txt").read_text() == "mine"
    assert main(["convert", str(model), "-o", str(out), "--bench-seconds", "0.1", "-q", "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / "manifest.json").exists()


def test_failure_late_in_the_chain_leaves_nothing(cnn, tmp_path, capsys):
    """Evaluation data that does not fit the model fails only at validation, after the graphs were written
    to the temporary folder: OUT must not appear and the temporary folder must be gone."""
    model, calib, _ = cnn
    bad_eval = tmp_path / "badeval"
    bad_eval.mkdir()
    np.savez(bad_eval / "e.npz", x=np.zeros((2, 3, 8, 8), np.float32), label=np.zeros(2, np.int64))
    out = tmp_path / "late"
    err = _refused(capsys, ["convert", str(model), "-o", str(out), "--precision", "int8", "--calib", str(calib),
                            "--flavour", "u8s8", "--eval", str(bad_eval), "--bench-seconds", "0.1", "-q"], out, "8, 8)")
    assert "badeval" in err


def test_unreachable_budget_fails_cleanly(tmp_path, capsys):
    """An unreachable budget (pruning alone costs more than allowed; nothing to keep in float in FP32)."""
    model, calib, test = cnn_bundle(tmp_path)
    out = tmp_path / "pruned"
    err = _refused(capsys, ["convert", str(model), "-o", str(out), "--prune", "channels:0.75", "--calib", str(calib),
                            "--eval", str(test), "--max-drop", "0", "--bench-seconds", "0.1", "-q"], out,
                   "Accuracy guard")
    assert "--max-drop 0" in err


def test_subprocess_error_has_no_traceback(cnn, tmp_path, cli):
    model, _, _ = cnn
    r = cli("convert", model, "-o", tmp_path / "x", "--precision", "int8")
    assert r.returncode == 1
    assert r.stderr.strip().startswith("edgemm convert: error:") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_options_are_checked_before_loading(tmp_path):
    with pytest.raises(EdgemmError, match="Max drop"):
        convert(tmp_path / "m.onnx", tmp_path / "o", ConvertOptions(max_drop=-1))
    bundle = write_av_bundle(tmp_path / "b")
    with pytest.raises(EdgemmError, match="Is the model itself"):
        convert(bundle, bundle.parent, ConvertOptions(force=True))
    with pytest.raises(EdgemmError, match="Is the model itself"):
        convert(bundle, bundle / "sub", ConvertOptions(force=True))


def test_prune_then_int8_chain(cnn, tmp_path):
    model, calib, test = cnn
    out = tmp_path / "pruned-int8"
    report = convert(model, out, ConvertOptions(precision="int8", prune="channels:0.25", calib=calib, eval=test,
                                                threads=1, bench_seconds=0.2, flavour="u8s8", quiet=True))
    bundle = load_bundle(out)
    assert bundle.manifest.provenance["prune"] == "channels:0.25"
    info = report["conversion"]["prune"]["model"]
    assert info["parameters"]["after"] < info["parameters"]["before"]
    assert report["macs"]["model"]["after"] < report["macs"]["model"]["before"]
    assert "QuantizeLinear" in {n.op_type for n in bundle.load_graph("model").graph.node}
    assert report["primary"]["converted"] is not None
