"""Preprocessing baked into the graph (edgemm convert --bake-preprocess): the same numbers as the Python path.

Tolerances, as measured and held here:
  video (any colour, layout, dtype, stretch or letterbox)  bit for bit: max abs difference 0
  log-mel, conv form of the STFT (the default)              max abs 1e-5 on the normalised log-mel
                                                            (measured 5.2e-6: a pure tone's leakage floor)
  linear mel, conv form                                     relative 1e-5 (measured 9.4e-7)
  log-mel, ONNX STFT op under ONNX Runtime's CPU provider   max abs 0.1 (measured 0.078 on a pure tone:
                                                            its float32 DFT of n_fft 400 has a higher floor
                                                            in bins 100 dB below the peak; 5e-4 on a voice-like
                                                            signal), which is why conv is the default
  model outputs on the shipped reference bundles           max abs 1e-5 (measured 0 for video, 1.9e-6 audio)
"""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgemm.bundle import Manifest, load_bundle, manifest_from_dict
from edgemm.converters import bake
from edgemm.converters.convert import ConvertOptions, bake_parts
from edgemm.converters.graphs import cpu_session
from edgemm.errors import EdgemmError
from edgemm.preprocess import mel_filterbank, preprocess_audio, preprocess_video
from tests import onnx_models
from tests.conftest import REPO, run_cli

REFERENCE = REPO / "edgemm" / "reference" / "models"
REFERENCE_BUNDLES = ["driving_detector", "driving_audio", "avdigits_late", "avdigits_intermediate"]
LOGMEL_CONV_TOL = 1e-5
LOGMEL_STFT_OP_TOL = 0.1
OUTPUT_TOL = 1e-5


def _tap(spec: dict, shape: list) -> tuple[Manifest, onnx.ModelProto]:
    """A graph whose output is its input: baked, it is the preprocessing itself, to compare number by number."""
    dtype = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "uint8": TensorProto.UINT8}[
        spec.get("dtype", "float32")]
    graph = helper.make_graph([helper.make_node("Identity", [spec["name"]], ["out"])], "tap",
                              [helper.make_tensor_value_info(spec["name"], dtype, shape)],
                              [helper.make_tensor_value_info("out", dtype, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    manifest = manifest_from_dict({"graphs": {"model": {"file": "m.onnx", "inputs": [{**spec, "shape": shape}],
                                                        "outputs": [{"name": "out"}]}}})
    return manifest, model


def _bake_and_run(manifest, model, parts, feed_from, form="conv"):
    baked = bake.bake_bundle(manifest, {"model": model}, parts, form, "test")
    spec0 = manifest.graphs["model"].inputs[0]
    spec1 = baked.manifest.graphs["model"].inputs[0]
    session = cpu_session(baked.models["model"])
    return spec0, spec1, session, baked


def test_gray_formula_is_opencvs_bit_for_bit():
    rng = np.random.default_rng(0)
    wb, wg, wr = (int(w) for w in bake.GRAY_BGR_WEIGHTS)
    for shape in [(1, 1, 3), (7, 13, 3), (32, 32, 3), (720, 1280, 3)]:
        f = rng.integers(0, 256, shape, dtype=np.uint8)
        x = f.astype(np.int64)
        ours = (x[..., 0] * wb + x[..., 1] * wg + x[..., 2] * wr + (1 << (bake.GRAY_SHIFT - 1))) >> bake.GRAY_SHIFT
        assert np.array_equal(ours, cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)), shape


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("color", ["rgb", "bgr", "gray"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "uint8"])
def test_baked_video_gives_the_python_numbers_exactly(layout, color, dtype):
    c = 1 if color == "gray" else 3
    shape = [1, c, 24, 40] if layout == "NCHW" else [1, 24, 40, c]
    pre = {"size": [24, 40], "color": color, "scale": 1 / 255, "mean": [0.485, 0.456, 0.406][:c],
           "std": [0.229, 0.224, 0.225][:c], "resize": "letterbox" if color == "rgb" else "stretch"}
    manifest, model = _tap({"name": "video", "modality": "video", "dtype": dtype, "layout": layout,
                            "preprocess": pre}, shape)
    old, new, session, baked = _bake_and_run(manifest, model, ("video",), None)
    assert (new.dtype, new.layout, new.shape, new.preprocess.baked) == ("uint8", "NHWC", [1, 24, 40, 3], True)
    rng = np.random.default_rng(1)
    for frame in (rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),  # resized (and letterboxed for rgb)
                  rng.integers(0, 256, (24, 40, 3), dtype=np.uint8),  # the model size already
                  rng.integers(0, 256, (50, 60), dtype=np.uint8)):  # a gray camera
        raw = preprocess_video(frame, new)
        assert raw.dtype == np.uint8 and raw.shape == (1, 24, 40, 3)
        got = session.run(None, {"video": raw})[0]
        want = preprocess_video(frame, old)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want), float(np.max(np.abs(got.astype(np.float64) - want)))


def _signals():
    rng = np.random.default_rng(2)
    t = np.arange(16000) / 16000
    return {"silence": np.zeros(16000), "tone": 0.9 * np.sin(2 * np.pi * 1000 * t),
            "noise": rng.uniform(-1, 1, 16000), "quiet": 1e-4 * rng.standard_normal(16000),
            "voice-like": 0.1 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))
            + 0.01 * rng.standard_normal(16000)}


@pytest.mark.parametrize("feature,layout,form", [("logmel", "NCMT", "conv"), ("logmel", "NMT", "conv"),
                                                  ("mel", "NCMT", "conv"), ("logmel", "NCMT", "stft")])
def test_baked_log_mel_agrees_with_edgemms_python_log_mel(feature, layout, form):
    pre = {"sample_rate": 16000, "window_s": 1.0, "feature": feature, "n_fft": 400, "hop_length": 160,
           "n_mels": 40, "fmin": 50.0, "fmax": 7600.0, "mean": -4.6, "std": 4.0}
    shape = [1, 1, 40, 98] if layout == "NCMT" else [1, 40, 98]
    manifest, model = _tap({"name": "audio", "modality": "audio", "layout": layout, "preprocess": pre}, shape)
    old, new, session, baked = _bake_and_run(manifest, model, ("audio",), None, form)
    assert (new.layout, new.shape, new.preprocess.baked) == ("NS", [1, 16000], True)
    opset = bake.STFT_OPSET if form == "stft" else 13  # the conv form leaves the graph's opset as it was
    assert baked.models["model"].opset_import[0].version == opset
    worst = {}
    for name, wave in _signals().items():
        wave = wave.astype(np.float32)
        got = session.run(None, {"audio": preprocess_audio(wave, new)})[0]
        want = preprocess_audio(wave, old)
        assert got.shape == want.shape
        diff = np.abs(got - want)
        worst[name] = float(diff.max() if feature == "logmel" else (diff / np.maximum(np.abs(want), 1e-3)).max())
    tol = {"conv": LOGMEL_CONV_TOL, "stft": LOGMEL_STFT_OP_TOL}[form]
    assert max(worst.values()) <= tol, worst


def test_onnx_mel_weight_matrix_is_not_edgemms_filterbank():
    """Why the baked log-mel stores edgemm's filterbank instead of using MelWeightMatrix: ONNX's op (run by
    ONNX Runtime's CPU provider) rounds the filter edges to FFT bins, so its filters differ by whole weights."""
    consts = [helper.make_tensor("n", TensorProto.INT64, [], [40]), helper.make_tensor("d", TensorProto.INT64, [], [400]),
              helper.make_tensor("sr", TensorProto.INT64, [], [16000]),
              helper.make_tensor("lo", TensorProto.FLOAT, [], [50.0]), helper.make_tensor("hi", TensorProto.FLOAT, [], [7600.0])]
    graph = helper.make_graph([helper.make_node("MelWeightMatrix", ["n", "d", "sr", "lo", "hi"], ["w"])], "mel", [],
                              [helper.make_tensor_value_info("w", TensorProto.FLOAT, None)], consts)
    onnx_bank = cpu_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])).run(None, {})[0]
    ours = mel_filterbank(16000, 400, 40, 50.0, 7600.0)
    assert onnx_bank.T.shape == ours.shape
    assert np.abs(onnx_bank.T - ours).max() > 0.5


@pytest.mark.parametrize("name", REFERENCE_BUNDLES)
def test_shipped_reference_bundles_give_the_same_outputs_baked(name):
    bundle = load_bundle(REFERENCE / name)
    models = {g: bundle.load_graph(g) for g in bundle.manifest.graphs}
    baked = bake.bake_bundle(bundle.manifest, models, ("video", "audio"), "conv", name)
    diff = bake.agreement((bundle.manifest, models), (baked.manifest, baked.models))
    assert set(diff) == set(bundle.manifest.graphs)
    assert max(diff.values()) <= OUTPUT_TOL, diff
    for g, spec in baked.manifest.all_inputs():
        if spec.modality == "video":
            assert diff[g.name] == 0.0 and spec.dtype == "uint8", (g.name, diff)


def test_real_conv_model_outputs_agree_baked():
    model = onnx_models.av_early_model()
    manifest = manifest_from_dict(onnx_models.av_manifest())
    baked = bake.bake_bundle(manifest, {"model": model}, ("video", "audio"), "conv", "av")
    diff = bake.agreement((manifest, {"model": model}), (baked.manifest, baked.models))
    assert diff["model"] <= OUTPUT_TOL, diff
    video_only = bake.bake_bundle(manifest, {"model": model}, ("video",), "conv", "av")
    assert bake.agreement((manifest, {"model": model}), (video_only.manifest, video_only.models))["model"] == 0.0


def test_manifest_records_baking_and_checks_it():
    manifest = manifest_from_dict(onnx_models.av_manifest())
    baked = bake.bake_bundle(manifest, {"model": onnx_models.av_early_model()}, ("video", "audio"), "conv", "av")
    d = baked.manifest.to_dict()
    assert d["version"] == 2 and manifest.to_dict()["version"] == 1  # an older edgemm refuses the baked one
    ins = {i["name"]: i for i in d["graphs"]["model"]["inputs"]}
    assert ins["video"]["preprocess"]["baked"] is True and ins["audio"]["preprocess"]["baked"] is True
    assert "baked" not in json.dumps(manifest.to_dict())
    again = manifest_from_dict(d)
    assert [s.preprocess.baked for s in again.graphs["model"].inputs] == [True, True]
    bad = json.loads(json.dumps(d))
    bad["graphs"]["model"]["inputs"][0]["dtype"] = "float32"
    with pytest.raises(EdgemmError, match=r"inputs\[0\]\.preprocess\.baked: a baked video input takes one uint8"):
        manifest_from_dict(bad)
    bad = json.loads(json.dumps(d))
    bad["version"] = 3
    with pytest.raises(EdgemmError, match="reads manifest version 2 and older, got 3"):
        manifest_from_dict(bad)


def test_bake_refusals_name_the_input():
    manifest = manifest_from_dict(onnx_models.av_manifest())
    model = onnx_models.av_early_model()
    baked = bake.bake_bundle(manifest, {"model": model}, ("video",), "conv", "av")
    with pytest.raises(EdgemmError, match="already baked"):
        bake.bake_bundle(baked.manifest, baked.models, ("audio",), "conv", "av")
    stacked = onnx_models.av_manifest()
    stacked["graphs"]["model"]["inputs"][0].update(layout="NTCHW", shape=["N", 2, 3, 32, 32])
    stacked["graphs"]["model"]["inputs"][0]["preprocess"]["frames"] = 2
    with pytest.raises(EdgemmError, match=r"Input model\.video: takes 2 frame\(s\) in layout NTCHW"):
        bake.check_bakeable(manifest_from_dict(stacked), ("video",), "av")
    for text in ("vid", "", "video,foo"):
        with pytest.raises(EdgemmError, match="expected video, audio, video,audio or none"):
            bake.parse_parts(text)
    assert bake.parse_parts("audio,video") == ("video", "audio") and bake.parse_parts("none") == ()


def test_defaults_per_target():
    assert bake_parts(ConvertOptions(target="onnxruntime", bake_preprocess="video"))[0] == ("video",)
    assert bake_parts(ConvertOptions(target="openvino", bake_preprocess="none"))[0] == ()
    expected = {"onnxruntime": (), "openvino": ("video",), "tensorrt": ()}  # RESULTS.md §14
    for target, parts in expected.items():
        got, why = bake_parts(ConvertOptions(target=target))
        assert got == parts and "measured" in why, (target, why)


def _one_line_error(proc, *needles):
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_convert_cli_bakes_and_every_command_runs_the_baked_bundle(tmp_path):
    import subprocess

    src = tmp_path / "late"
    shutil.copytree(REFERENCE / "avdigits_late", src)
    out = tmp_path / "late-baked"
    proc = run_cli("convert", src, "-o", out, "--bake-preprocess", "video,audio", "--bench-seconds", "0.3", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "preprocessing: baked into the graph (video.video, audio.audio, STFT as conv" in proc.stdout, proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["version"] == 2
    assert manifest["provenance"]["bake_preprocess"]["max_abs_diff_vs_python"]["audio"] <= OUTPUT_TOL
    info = run_cli("info", out)
    assert info.returncode == 0 and info.stdout.count("(baked: in the graph)") == 2, info.stdout
    assert "uint8" in info.stdout and "[N,32,32,3]" in info.stdout
    bench = run_cli("bench", out)
    assert bench.returncode == 0, bench.stderr
    # The live pipeline on a clip: the same results from the baked and the unbaked bundle.
    common = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    subprocess.run(common + ["-f", "lavfi", "-i", "testsrc=size=160x120:rate=30", "-t", "1", "-c:v", "libx264",
                             "-pix_fmt", "yuv420p", str(tmp_path / "clip.mp4")], check=True, timeout=60)
    subprocess.run(common + ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000", "-t", "1",
                             str(tmp_path / "tone.wav")], check=True, timeout=60)
    rows = {}
    for label, model in (("python", src), ("baked", out)):
        jsonl = tmp_path / f"{label}.jsonl"
        proc = run_cli("run", model, "--video", f"file://{tmp_path / 'clip.mp4'}?realtime=0",
                       "--audio", f"file://{tmp_path / 'tone.wav'}?realtime=0", "--sink", f"jsonl:{jsonl}")
        assert proc.returncode == 0, proc.stderr
        rows[label] = [r for r in map(json.loads, jsonl.read_text().splitlines()) if r["type"] == "result"]
    assert len(rows["python"]) == len(rows["baked"]) == 30
    for a, b in zip(rows["python"], rows["baked"]):
        oa, ob = a["outputs"]["digit"], b["outputs"]["digit"]
        assert oa["label"] == ob["label"] and abs(oa["score"] - ob["score"]) <= 1e-5, (oa, ob)
    # Tensors preprocessed for the unbaked model do not fit: one line that says what the baked input takes.
    np.savez(tmp_path / "pre.npz", video=np.zeros((2, 1, 32, 32), np.float32), audio=np.zeros((2, 1, 40, 98)),
             label=np.zeros(2, np.int64))
    _one_line_error(run_cli("eval", out, "--data", tmp_path / "pre.npz"), "baked into the graph", "uint8 camera frames")
    # A baked bundle cannot be calibrated or pruned; it says to convert the unbaked one.
    _one_line_error(run_cli("convert", out, "-o", tmp_path / "x", "--precision", "int8", "--calib", tmp_path / "pre.npz"),
                    "Preprocessing is baked", "--bake-preprocess in the same call")
    assert not (tmp_path / "x").exists()


def test_convert_cli_bake_errors_are_one_line(tmp_path):
    audio_only = REFERENCE / "driving_audio"
    _one_line_error(run_cli("convert", audio_only, "-o", tmp_path / "a", "--bake-preprocess", "video"),
                    "--bake-preprocess video", "has no video input")
    _one_line_error(run_cli("convert", audio_only, "-o", tmp_path / "b", "--bake-preprocess", "colour"),
                    "Unknown part colour")
    _one_line_error(run_cli("convert", audio_only, "-o", tmp_path / "c", "--bake-preprocess", "audio",
                            "--bake-stft", "fft"), "--bake-stft: fft", "expected one of conv, stft")
    wave = tmp_path / "wave"
    wave.mkdir()
    onnx.save(onnx_models.mlp_model(features=16000, hidden=4, input_name="audio"), str(wave / "model.onnx"))
    (wave / "manifest.json").write_text(json.dumps({"graphs": {"model": {"file": "model.onnx", "inputs": [
        {"name": "audio", "modality": "audio", "layout": "NS", "shape": ["N", 16000],
         "preprocess": {"feature": "waveform"}}], "outputs": [{"name": "y"}]}}}))
    _one_line_error(run_cli("convert", wave, "-o", tmp_path / "d", "--bake-preprocess", "audio"),
                    "Input model.audio: takes the waveform already")
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_openvino_target_bakes_video_by_default_and_runs_under_openvino(tmp_path):
    pytest.importorskip("openvino")
    from edgemm.converters.convert import convert
    from edgemm.runners import make_runner

    out = tmp_path / "ov.edgemm"
    report = convert(REFERENCE / "avdigits_late", out, ConvertOptions(target="openvino", bench_seconds=0.2,
                                                                        quiet=True))
    record = report["conversion"]["bake_preprocess"]
    assert record["parts"] == ["video"] and record["inputs"] == ["video.video"]
    assert record["why"].startswith("default for target openvino") and record["max_abs_diff_vs_python"]["video"] == 0
    bundle = load_bundle(out)
    assert [s.preprocess.baked for _, s in bundle.manifest.all_inputs()] == [True, False]
    frame = np.random.default_rng(4).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    with make_runner(bundle, "video", backend="openvino") as r:
        got = r.infer({"video": preprocess_video(frame, bundle.manifest.graphs["video"].inputs[0])})
    source = load_bundle(REFERENCE / "avdigits_late")
    with make_runner(source, "video", backend="onnxruntime") as r:
        want = r.infer({"video": preprocess_video(frame, source.manifest.graphs["video"].inputs[0])})
    for name in want:
        assert np.abs(got[name] - want[name]).max() <= 1e-4
