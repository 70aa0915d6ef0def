"""`edgemm convert` end to end on real (small) models: the bundle it writes, its provenance and report, and
every bad input refused with one line, exit 1, and nothing left behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgemm.converters.convert import ConvertOptions, convert
from edgemm.bundle import file_sha256, load_bundle
from edgemm.cli import main
from edgemm.errors import EdgemmError
from tests.onnx_models import residual_cnn_model, write_av_bundle, write_intermediate_bundle
from tests.conftest import run_cli_without
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
    import edgemm.converters.convert as C

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
    import edgemm.converters.convert as C

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


def _engine_builder_here() -> bool:
    """Whether this machine can build TensorRT engines (a CUDA GPU and the full tensorrt package)."""
    from edgemm.converters.tensorrt import BuilderUnavailable, _require_builder

    try:
        _require_builder("edgemm convert ...")
    except BuilderUnavailable:
        return False
    return True


def test_tensorrt_target_writes_trt_ready_qdq_and_the_engine_where_it_can(cnn, tmp_path):
    """Both branches are asserted, and which one runs is what this machine can do: without a GPU/TensorRT
    the Q/DQ graph is written and the report says to build on the device; with them the engine is built
    and recorded in the manifest."""
    model, calib, _ = cnn
    out = tmp_path / "trt"
    report = convert(model, out, ConvertOptions(precision="int8", calib=calib, target="tensorrt", threads=1,
                                                bench_seconds=0.2, quiet=True))
    trt = report["conversion"]["tensorrt"]
    engine = load_bundle(out).manifest.graphs["model"].engine
    if not _engine_builder_here():
        assert trt["engine"] is None
        assert "device" in trt["reason"] or "TensorRT" in trt["reason"]
        assert engine is None
    else:
        assert engine is not None and (out / engine["file"]).is_file()
        assert engine["tensorrt_version"] and engine["compute_capability"]
        assert trt["model"]["tensorrt_version"] == engine["tensorrt_version"] and trt["model"]["seconds"] > 0
    q = load_bundle(out).load_graph("model")
    zps = [i for i in q.graph.initializer if i.name.endswith("zero_point")]
    assert zps and all(onnx.numpy_helper.to_array(z).dtype == np.int8 and not onnx.numpy_helper.to_array(z).any()
                       for z in zps)
    assert report["conversion"]["int8_flavours"] == {"model": "trt"}
    # The layers INT8 does not cover run in FP16 in the engine: FP16 Q/DQ scales (a DequantizeLinear's output
    # type is its scale's under strong typing), opset 19 for that, I/O types unchanged, outputs still close.
    scales = {n.input[1] for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    inits = {i.name: i for i in q.graph.initializer}
    assert scales and all(inits[s].data_type == onnx.TensorProto.FLOAT16 for s in scales if s in inits)
    assert next(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) >= 19
    assert q.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert "fp16" in report["conversion"] and report["closeness"]["logits"]["cosine"] > 0.99


def test_tensorrt_target_defaults_to_fp16(cnn, tmp_path):
    """trtexec --fp16 is what users compare with: --target tensorrt without --precision gives FP16 graphs
    (I/O types kept); --precision fp32 keeps FP32."""
    model, calib, _ = cnn
    report = convert(model, tmp_path / "fp16", ConvertOptions(calib=calib, target="tensorrt", threads=1,
                                                              bench_seconds=0.2, quiet=True))
    assert report["conversion"]["precision"] == "fp16" and "default" in report["conversion"]["precision_note"]
    g = load_bundle(tmp_path / "fp16").load_graph("model")
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in g.graph.initializer)
    assert load_bundle(tmp_path / "fp16").manifest.provenance["precision"] == "fp16"
    report = convert(model, tmp_path / "fp32", ConvertOptions(precision="fp32", target="tensorrt", threads=1,
                                                              bench_seconds=0.2, quiet=True))
    g = load_bundle(tmp_path / "fp32").load_graph("model")
    assert not any(i.data_type == onnx.TensorProto.FLOAT16 for i in g.graph.initializer)
    # The onnxruntime target keeps its FP32 default.
    from edgemm.converters.convert import resolve_precision

    assert resolve_precision(ConvertOptions()) == "fp32"


def test_onnxruntime_int8_bundle_is_refused_for_tensorrt_with_the_command_that_works(cnn, tmp_path, capsys):
    """u8s8 (non-zero zero points) cannot be parsed by TensorRT: building on the Jetson from a bundle quantized
    for ONNX Runtime is refused before any work, with the command that quantizes the float model for TensorRT."""
    model, calib, _ = cnn
    ort_int8 = tmp_path / "ort-int8.edgemm"
    convert(model, ort_int8, ConvertOptions(precision="int8", calib=calib, flavour="u8s8", threads=1,
                                            bench_seconds=0.2, quiet=True))
    out = tmp_path / "trt"
    assert main(["convert", str(ort_int8), "-o", str(out), "--target", "tensorrt", "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Quantized for ONNX Runtime (recorded flavour model: u8s8)" in err
    assert f"edgemm convert {model} -o {out} --precision int8 --calib {calib} --target tensorrt" in err
    assert not out.exists()


def test_tensorrt_target_without_eval_says_the_accuracy_is_on_the_calibration_data(cnn, tmp_path, capsys):
    model, calib, test = cnn
    base = ["convert", str(model), "--precision", "int8", "--calib", str(calib), "--target", "tensorrt",
            "--bench-seconds", "0.1", "-q"]
    assert main(base + ["-o", str(tmp_path / "a")]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if "%" in line or "closeness" in line]
    assert printed and all("on the calibration data" in line for line in printed), printed
    assert main(base + ["-o", str(tmp_path / "b"), "--eval", str(test)]) == 0
    assert "calibration" not in capsys.readouterr().out


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
    # Data that does not fit the model is refused before any work: no progress line before the error
    # (these runs are not --quiet), for calibration and evaluation folders alike.
    _refused(capsys, base + ["--precision", "int8", "--calib", str(wrong)], out, "(1, 3, 8, 8)")
    _refused(capsys, base + ["--precision", "int8", "--calib", str(calib), "--eval", str(wrong)], out, "(1, 3, 8, 8)")
    _refused(capsys, ["convert", str(tmp_path / "nope.onnx"), "-o", str(out)], out, "File not found")
    _refused(capsys, base + ["--target", "tensorrt", "--shape", "x:1x3,2"], out, "Shape: x:1x3,2")
    _refused(capsys, base + ["--target", "tensorrt", "--max-batch", "0"], out, "Max batch: 0")
    _refused(capsys, base + ["--workspace", "512"], out, "--workspace | Is a TensorRT build option")
    _refused(capsys, base + ["--target", "tensorrt", "--workspace", "0"], out, "Workspace: 0 MB")
    _refused(capsys, base + ["--target", "tensorrt", "--builder-opt-level", "6"], out, "Builder optimization level: 6")
    _refused(capsys, base + ["--target", "tensorrt", "--dla", "-1"], out, "DLA core: -1")
    _refused(capsys, base + ["--target", "tensorrt", "--dla", "0", "--precision", "fp32"], out, "DLA | Computes in FP16")


def test_fp16_without_its_extra_is_refused_in_one_line_naming_it(cnn, tmp_path):
    """After `pip install -e '.[demo]'` onnxconverter-common is absent: a line naming the extra, no traceback."""
    model, calib, _ = cnn
    out = tmp_path / "fp16"
    proc = run_cli_without(["onnxconverter_common"], "convert", model, "-o", out, "--precision", "fp16",
                           "--calib", calib)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "onnxconverter" in err and "edgemm[convert]" in err
    assert not out.exists() and not leftovers(tmp_path, "fp16")


def test_one_npz_file_serves_as_calibration_and_evaluation_data(cnn, tmp_path, capsys):
    model, calib, test = cnn
    out = tmp_path / "int8"
    assert main(["convert", str(model), "-o", str(out), "--precision", "int8", "--calib", str(calib / "c.npz"),
                 "--eval", str(test / "t.npz"), "--bench-seconds", "0.1", "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"] == str(test / "t.npz") and report["samples"] == 60
    assert report["conversion"]["int8"]["model"]["calibration"]["samples"] == 24
    (tmp_path / "notes.txt").write_text("x")
    _refused(capsys, ["convert", str(model), "-o", str(tmp_path / "o"), "--precision", "int8", "--calib",
                      str(tmp_path / "notes.txt")], tmp_path / "o", "Is a file; expected a folder")


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
    """Evaluation labels that do not fit the model (class 99 of 10) are found only at validation, after the
    graphs were written to the temporary folder: OUT must not appear and the temporary folder must be gone."""
    model, calib, _ = cnn
    bad_eval = tmp_path / "badeval"
    bad_eval.mkdir()
    np.savez(bad_eval / "e.npz", x=np.zeros((2, 3, 16, 16), np.float32), label=np.full(2, 99, np.int64))
    out = tmp_path / "late"
    err = _refused(capsys, ["convert", str(model), "-o", str(out), "--precision", "int8", "--calib", str(calib),
                            "--flavour", "u8s8", "--eval", str(bad_eval), "--bench-seconds", "0.1", "-q"], out,
                   "Label 99 for logits is out of range")
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


# -- data, limits and what the report says about the delivered model ------------------------------------


def _labelled_folder(folder: Path, model, x, name="x", dtype=np.float32):
    """x (as dtype) with the float model's own predictions as labels: float scores 100 %."""
    folder.mkdir(parents=True)
    y = ort.InferenceSession(model.SerializeToString()).run(None, {name: x.astype(np.float32)})[0].argmax(1)
    np.savez(folder / "d.npz", **{name: x.astype(dtype)}, label=y)
    return folder


def test_float64_data_works_for_calibration_guard_and_validation(tmp_path):
    """np.savez of plain numpy gives float64: the guard (like calibration and validation) must accept it."""
    model = residual_cnn_model(hw=16, channels=16)
    path = tmp_path / "cnn.onnx"
    onnx.save(model, str(path))
    rng = np.random.default_rng(0)
    calib = _labelled_folder(tmp_path / "calib", model, rng.standard_normal((16, 3, 16, 16)), dtype=np.float64)
    test = _labelled_folder(tmp_path / "test", model, rng.standard_normal((30, 3, 16, 16)), dtype=np.float64)
    report = convert(path, tmp_path / "out", ConvertOptions(precision="int8", calib=calib, eval=test, max_drop=5.0,
                                                            threads=1, bench_seconds=0.1, flavour="u8s8", quiet=True))
    assert report["conversion"]["accuracy_guard"]["samples"] == 30
    assert report["primary"]["original"] == pytest.approx(1.0)


def test_guard_sample_cap_follows_the_limits_and_is_reported(cnn, tmp_path):
    model, calib, test = cnn  # 24 calibration samples, 60 test samples
    # Without --eval the guard measures on the calibration data, as many samples as --calib-limit.
    report = convert(model, tmp_path / "a", ConvertOptions(precision="int8", calib=calib, calib_limit=10,
                                                           max_drop=100.0, threads=1, bench_seconds=0.1,
                                                           flavour="u8s8", quiet=True))
    g = report["conversion"]["accuracy_guard"]
    assert g["samples"] == 10 and "--calib-limit" in g["sample_cap"]
    assert report["samples"] == 10  # validation reads the same samples
    report = convert(model, tmp_path / "b", ConvertOptions(precision="int8", calib=calib, eval=test, eval_limit=25,
                                                           max_drop=100.0, threads=1, bench_seconds=0.1,
                                                           flavour="u8s8", quiet=True))
    g = report["conversion"]["accuracy_guard"]
    assert g["samples"] == 25 and "--eval-limit" in g["sample_cap"]
    report = convert(model, tmp_path / "c", ConvertOptions(precision="int8", calib=calib, eval=test, max_drop=100.0,
                                                           threads=1, bench_seconds=0.1, flavour="u8s8", quiet=True))
    assert report["conversion"]["accuracy_guard"]["samples"] == 60
    assert "sample_cap" not in report["conversion"]["accuracy_guard"]  # all of it: nothing to say


def test_graph_files_in_subfolders(tmp_path):
    """A manifest may name graph files in subfolders ("enc/video.onnx"): every step writes them there."""
    root = write_intermediate_bundle(tmp_path / "mid")
    manifest = json.loads((root / "manifest.json").read_text())
    for g, spec in manifest["graphs"].items():
        new = f"{'enc' if g.endswith('encoder') else 'head'}/{spec['file']}"
        (root / new).parent.mkdir(exist_ok=True)
        (root / spec["file"]).rename(root / new)
        spec["file"] = new
    (root / "manifest.json").write_text(json.dumps(manifest))
    data = write_av_npz(tmp_path / "calib", files=1, per_file=8)
    out = tmp_path / "sub-int8"
    convert(root, out, ConvertOptions(precision="int8", prune="channels:0.25", calib=data, max_drop=100.0,
                                      threads=1, bench_seconds=0.1, flavour="u8s8", quiet=True))
    bundle = load_bundle(out)
    assert bundle.manifest.graphs["video_encoder"].file == "enc/video_encoder.onnx"
    for g in bundle.manifest.graphs:
        assert "QuantizeLinear" in {n.op_type for n in bundle.load_graph(g).graph.node}


def test_int8_report_describes_the_model_after_the_guard(tmp_path):
    """Q/DQ counts in the report are those of the delivered model, once the guard kept a layer in float."""
    from edgemm.converters.qdq import qdq_counts
    from tests.test_guard import outlier_model

    model = outlier_model()
    path = tmp_path / "outlier.onnx"
    onnx.save(model, str(path))
    rng = np.random.default_rng(1)
    calib = _labelled_folder(tmp_path / "calib", model, rng.standard_normal((64, 8)))
    test = _labelled_folder(tmp_path / "test", model, rng.standard_normal((200, 8)))
    out = tmp_path / "guarded"
    report = convert(path, out, ConvertOptions(precision="int8", calib=calib, eval=test, max_drop=4.0, threads=1,
                                               bench_seconds=0.1, flavour="u8s8", quiet=True))
    assert report["conversion"]["accuracy_guard"]["layers_kept_float"]["model"]  # the guard did keep a layer
    delivered = load_bundle(out).load_graph("model")
    assert report["conversion"]["int8"]["model"]["qdq"] == qdq_counts(delivered)


def near_tie_model():
    """Two logits that differ by ~0.1 % of their size: FP16 rounding in the last layer flips some decisions,
    keeping that layer in FP32 brings them back."""
    from onnx import TensorProto, helper

    from tests.onnx_models import _init, _model

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 32)) * 0.5
    base = rng.standard_normal((32, 1)) * 2.0
    w2 = np.hstack([base, base + rng.standard_normal((32, 1)) * 2e-3])
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu1"),
             helper.make_node("MatMul", ["r", "w2"], ["logits"], name="fc2")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
                  [_init("w1", w1), _init("w2", w2)], "tie")


def test_fp16_provenance_lists_the_layers_the_guard_kept(tmp_path):
    from edgemm.converters.fp16 import fp16_node_count

    model = near_tie_model()
    path = tmp_path / "tie.onnx"
    onnx.save(model, str(path))
    rng = np.random.default_rng(1)
    calib = _labelled_folder(tmp_path / "calib", model, rng.standard_normal((16, 16)) * 4)
    test = _labelled_folder(tmp_path / "test", model, rng.standard_normal((200, 16)) * 4)
    out = tmp_path / "fp16"
    report = convert(path, out, ConvertOptions(precision="fp16", calib=calib, eval=test, max_drop=0.0, threads=1,
                                               bench_seconds=0.1, quiet=True))
    guard = report["conversion"]["accuracy_guard"]
    assert guard["metric_all_quantized"] < 100.0 and guard["layers_kept_float"]["model"]  # the premise
    kept = guard["layers_kept_float"]["model"]
    prov = load_bundle(out).manifest.provenance
    assert set(kept) <= set(prov["kept_fp32"]["model"])
    info = report["conversion"]["fp16"]["model"]
    assert any(k["node"] in kept and "accuracy guard" in k["reason"] for k in info["kept_fp32"])
    assert info["fp16_nodes"] == fp16_node_count(load_bundle(out).load_graph("model"))


# -- options checked before any work -------------------------------------------------------------------


def test_engine_options_are_checked_by_convert_itself(cnn, tmp_path):
    """Python callers of convert() get the same checks as the CLI, before the model is even loaded."""
    missing = tmp_path / "not-there.onnx"  # never read: every option fails first
    for opts, match in ((ConvertOptions(bench_seconds=0), "Bench seconds: 0"),
                        (ConvertOptions(max_batch=0), "Max batch: 0"),
                        (ConvertOptions(shapes=["x:1x3,2"]), "Shape: x:1x3,2"),
                        (ConvertOptions(shapes=["x:1x3x16x16", "x:2x3x16x16"]), "more than once")):
        with pytest.raises(EdgemmError, match=match):
            convert(missing, tmp_path / "o", opts)


def test_shape_names_are_checked_against_the_graphs_first(cnn, tmp_path, capsys):
    model, calib, _ = cnn
    out = tmp_path / "o"
    err = _refused(capsys, ["convert", str(model), "-o", str(out), "--precision", "int8", "--calib", str(calib),
                            "--target", "tensorrt", "--shape", "video:1x3x16x16"], out, "Shape: video")
    assert "expected one of x" in err  # before any progress line (not --quiet): no work was done
    _refused(capsys, ["convert", str(model), "-o", str(out), "--target", "tensorrt", "--shape",
                      "x:1x3x16,1x3x16,1x3x16"], out, "Shape: x")  # rank 3 for a rank-4 input


def test_shape_profiles_go_to_the_graph_that_has_the_input(tmp_path):
    """In a bundle of several graphs each --shape names one graph's input: the others do not see it."""
    from edgemm.converters.tensorrt import EngineOptions, _graph_options, check_shapes

    bundle = load_bundle(write_intermediate_bundle(tmp_path / "mid"))
    prof = ((1, 1, 64, 98),) * 3
    check_shapes(bundle, {"audio": prof})
    opts = EngineOptions(shapes={"audio": prof})
    assert _graph_options(bundle, "audio_encoder", opts).shapes == {"audio": prof}
    assert _graph_options(bundle, "video_encoder", opts).shapes == {}
    with pytest.raises(EdgemmError, match="Not an input of the model"):
        check_shapes(bundle, {"mic": prof})


def test_each_conversion_step_reads_the_data_once(tmp_path, monkeypatch):
    """One pass over the calibration folder per step feeds every graph (and runs the encoders once),
    instead of one pass per graph: here the check of the first sample, the INT8 calibration (which also
    keeps the feeds for timing) and the validation."""
    from edgemm.converters.data import DataFolder

    root = write_intermediate_bundle(tmp_path / "mid")
    data = write_av_npz(tmp_path / "calib", files=2, per_file=4)
    passes = []
    real = DataFolder.samples

    def counted(self, *args, **kwargs):
        passes.append(self.what)
        yield from real(self, *args, **kwargs)

    monkeypatch.setattr(DataFolder, "samples", counted)
    convert(root, tmp_path / "out", ConvertOptions(precision="int8", calib=data, threads=1, bench_seconds=0.1,
                                                   flavour="u8s8", quiet=True))
    assert len(passes) == 3, passes


def outlier_matmul(tmp: Path) -> tuple[Path, Path]:
    """y = x @ W where x's first channel spans +-1000 and W ignores it: a per-tensor INT8 scale for x (about 8
    per step) rounds every channel that matters to zero. A graph that far from FP32 must not ship quietly."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    w[0] = 0.0
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 8])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "outlier", [x], [y],
                                   [onnx.numpy_helper.from_array(w, "w")])
    path = tmp / "outlier.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)]), str(path))
    data = rng.standard_normal((32, 8)).astype(np.float32)
    data[:, 0] = rng.uniform(-1000, 1000, 32)
    data[:, 1:] *= 0.01
    calib = tmp / "calib.npz"
    np.savez(calib, x=data)
    return path, calib


def test_int8_far_from_fp32_is_refused_unless_judged_or_accepted(tmp_path, capsys):
    """The closeness floor: without --max-drop, INT8 whose output's cosine to FP32 is below --min-cosine
    (0.99) is refused in one line naming the output, and nothing is written; --max-drop (the guard keeps the
    MatMul in float) or --min-cosine 0 (accepted as it is) deliver it, and the report records the check."""
    model, calib = outlier_matmul(tmp_path)
    base = ["convert", str(model), "--precision", "int8", "--calib", str(calib), "--flavour", "u8s8",
            "--bench-seconds", "0.1", "-q"]
    out = tmp_path / "refused"
    err = _refused(capsys, base + ["-o", str(out)], out, "INT8 closeness | Output y: cosine")
    assert "expected at least 0.99 (--min-cosine)" in err and "--max-drop" in err

    accepted = tmp_path / "accepted"
    assert main(base + ["-o", str(accepted), "--min-cosine", "0"]) == 0
    report = json.loads((accepted / "report.json").read_text())
    assert report["closeness"]["y"]["cosine"] < 0.5  # the floor judged a real gap
    assert "closeness_floor" not in report["conversion"]

    guarded = tmp_path / "guarded"
    assert main(base + ["-o", str(guarded), "--max-drop", "1"]) == 0
    report = json.loads((guarded / "report.json").read_text())
    assert report["closeness"]["y"]["cosine"] > 0.99
    assert "closeness_floor" not in report["conversion"]  # the guard judged it


def test_int8_close_to_fp32_records_the_floor_it_met(cnn, tmp_path):
    model, calib, _ = cnn
    report = convert(model, tmp_path / "o", ConvertOptions(precision="int8", calib=calib, threads=1, bench_seconds=0.1,
                                                           flavour="u8s8", quiet=True))
    assert report["conversion"]["closeness_floor"] == {"min_cosine": 0.99, "met": True, "below": []}


def test_the_floor_judges_one_value_per_sample_over_all_samples():
    """A per-sample cosine of one value is its sign: a VAD probability off by half still scores 1.0 per sample,
    so the floor takes the cosine over all samples for such outputs."""
    from edgemm.converters.validate import Closeness, below_floor

    ref = np.linspace(0.01, 1.0, 50).reshape(50, 1)
    cand = ref[::-1].copy()  # every sign right, every value wrong
    c = Closeness()
    c.update({"p": ref, "v": np.tile(ref, (1, 4))}, {"p": cand, "v": np.tile(ref, (1, 4))})
    close = c.result()
    assert close["p"]["cosine"] == pytest.approx(1.0) and close["p"]["values_per_sample"] == 1
    assert [low[0] for low in below_floor(close, 0.99)] == ["p"]
    assert close["p"]["cosine_all"] < 0.99 and close["v"]["cosine_all"] == pytest.approx(1.0)


def test_the_floor_judges_a_decoded_detector_by_its_boxes():
    """CenterFace's sub-cell offsets move a lot in INT8 (cosine 0.78) while its boxes agree (F1 0.97): the
    floor judges a detection output edgemm decodes, with its parts, by the F1 of its boxes against the
    original's, and still refuses boxes that moved."""
    from edgemm.bundle import DetectionSpec, OutputSpec
    from edgemm.converters.validate import MIN_BOX_F1, Closeness, below_floor

    spec = OutputSpec("heat", "detection", shape=[2, 1, 8, 8], labels=["face"],
                      detection=DetectionSpec("centerface", conf=0.35, iou=0.3,
                                              parts={"scale": "scale", "offset": "offset"}))
    rng = np.random.default_rng(0)
    heat = np.zeros((2, 1, 8, 8), np.float32)
    heat[0, 0, 2, 3] = heat[0, 0, 6, 5] = heat[1, 0, 4, 4] = 0.9
    scale = np.full((2, 2, 8, 8), np.log(16 / 4), np.float32)  # 16 px faces
    offset = rng.uniform(-0.05, 0.05, (2, 2, 8, 8)).astype(np.float32)
    ref = {"heat": heat, "scale": scale, "offset": offset}

    def judged(cand):
        c = Closeness(detections={"heat": spec})
        c.update(ref, cand)
        return c.result()

    noisy = {**ref, "offset": -offset + rng.uniform(-0.2, 0.2, offset.shape).astype(np.float32)}  # +-1 px
    close = judged(noisy)
    assert close["offset"]["cosine"] < 0.5 and close["offset"]["part_of"] == "heat"
    assert close["heat"]["box_f1"] == 1.0 and below_floor(close, 0.99) == []
    moved = {**ref, "heat": np.roll(heat, 2, axis=3)}  # every face 8 px away: IoU 1/3
    close = judged(moved)
    assert close["heat"]["box_f1"] == 0.0
    assert below_floor(close, 0.99) == [("heat", "box F1 against the original's boxes", 0.0, MIN_BOX_F1)]
    # No box in the original at all: agreement would be vacuous, so the maps' cosines are judged.
    empty = {**ref, "heat": np.zeros_like(heat)}
    close = Closeness(detections={"heat": spec})
    close.update(empty, {**empty, "offset": noisy["offset"]})
    close = close.result()
    assert "box_f1" not in close["heat"] and "part_of" not in close["offset"]
    assert [low[0] for low in below_floor(close, 0.99)] == ["offset"]
