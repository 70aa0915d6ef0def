"""The AV-digits reference models that ship in the package, their data generator and training recipe.

Accuracy floors come from the committed evaluation (benchmarks/models/avdigits_eval.json, written by
benchmarks/eval_reference.py), recomputed here on the same fixed subset rendered from the material that
ships in edgemm/reference/data. A broken preprocessing path (a wrong normalisation, colour order, or a
missing log) collapses these figures, as the negative control below shows.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgemm.bundle import load_bundle
from edgemm.fusion import FusionModel
from edgemm.reference import DEMO_MATERIAL, MODELS, model_path
from edgemm.reference import avdigits as av
from edgemm.reference.clip import render_samples

ROOT = Path(__file__).resolve().parents[1]
EVAL_JSON = ROOT / "benchmarks" / "models" / "avdigits_eval.json"
TOLERANCE = 0.05  # library versions (OpenCV resize, FFT) may move a few samples, never 5 points
# The AV-digits bundles (the driving ones shipped beside them are checked in tests/test_driving.py).
SHIPPED = sorted(p for p in MODELS.glob("avdigits_*") if (p / "manifest.json").exists())


def committed():
    return json.loads(EVAL_JSON.read_text())


def accuracy(bundle_path, data, present=None, member=None) -> float:
    with FusionModel(load_bundle(bundle_path)) as fm:
        tensors = {"video": data["video"], "audio": data["audio"]}
        logits = fm.member(member, tensors)["digit"] if member else fm.infer(tensors, present).outputs["digit"]
    return float(np.mean(logits.argmax(1) == data["label"]))


@pytest.fixture(scope="module")
def subset():
    """The committed subset: n pairs per condition, rendered from the shipped test-split material."""
    spec = committed()["subset"]
    conds = {"clean": ("clean", "clean"), "video occluded": ("occluded", "clean"),
             "audio noisy": ("clean", "noisy"), "both degraded": ("lowlight", "noisy")}
    return {c: render_samples(spec["n"], spec["seed"], "test", v, a) for c, (v, a) in conds.items()}


def test_shipped_models_exist_and_validate():
    names = [p.name for p in SHIPPED]
    assert "avdigits_intermediate" in names and "avdigits_late" in names, names
    assert DEMO_MATERIAL.is_file()
    for path in SHIPPED:
        b = load_bundle(path)  # validates the manifest against every graph
        m = b.manifest
        assert m.provenance["precision"] == "fp32"
        assert m.modalities() == ["video", "audio"]
        specs = {s.modality: s for _, s in m.all_inputs() if s.modality in ("video", "audio")}
        # The manifest carries the exact preprocessing the models were trained with.
        assert specs["video"].preprocess == av.VIDEO_PRE
        assert specs["audio"].preprocess == av.AUDIO_PRE
        with FusionModel(b) as fm:
            assert fm.output_specs["digit"].labels == av.LABELS
        total = sum((path / g.file).stat().st_size for g in m.graphs.values())
        assert total < 1_000_000, f"{path.name}: {total} bytes; reference models must stay small"


def test_intermediate_manifest_is_complete():
    m = load_bundle(model_path("avdigits_intermediate")).manifest
    assert m.fusion.form == "intermediate"
    assert m.fusion.encoders == {"video": "video_encoder", "audio": "audio_encoder"}
    assert set(m.fusion.rates_hz) == {"video", "audio"}
    head = m.graphs[m.fusion.head]
    assert {s.presence_of for s in head.inputs if s.modality == "presence"} == {"video", "audio"}
    assert {s.source for s in head.inputs if s.modality == "embedding"} == {"video_encoder.embedding",
                                                                              "audio_encoder.embedding"}


@pytest.mark.parametrize("name", ["avdigits_intermediate", "avdigits_late"])
def test_shipped_models_reach_committed_accuracy(name, subset):
    want = committed()["subset"]["accuracy"][name]
    for cond, data in subset.items():
        got = accuracy(model_path(name), data)
        assert got >= want[cond] - TOLERANCE, f"{name} {cond}: {got:.3f} < committed {want[cond]:.3f} - {TOLERANCE}"


def test_fusion_beats_each_sensor_alone_under_corruption(subset):
    """The reason to fuse. One sensor degraded: fusion keeps the intact sensor's accuracy, far above the
    degraded one's. Both degraded: fusion beats the better sensor alone by a wide margin."""
    late = model_path("avdigits_late")  # its members are the camera-only and microphone-only models
    fusion = model_path("avdigits_intermediate")
    for cond, degraded, intact in (("video occluded", "video", "audio"), ("audio noisy", "audio", "video")):
        data = subset[cond]
        alone = {m: accuracy(late, data, member=m) for m in ("video", "audio")}
        fused = accuracy(fusion, data)
        assert fused >= alone[intact] - 0.02, f"{cond}: fusion {fused:.3f}, alone {alone}"
        assert fused >= alone[degraded] + 0.2, f"{cond}: fusion {fused:.3f}, alone {alone}"
    data = subset["both degraded"]
    alone = {m: accuracy(late, data, member=m) for m in ("video", "audio")}
    fused = accuracy(fusion, data)
    assert fused >= max(alone.values()) + 0.1, f"both degraded: fusion {fused:.3f}, alone {alone}"


def test_missing_sensor_degrades_gracefully(subset):
    data = subset["clean"]
    path = model_path("avdigits_intermediate")
    full = accuracy(path, data)
    for mod in ("video", "audio"):
        assert accuracy(path, data, present={mod: False}) >= 0.6 * full, mod


def test_runtime_preprocessing_makes_the_numbers_the_models_were_trained_on():
    """The raw frames and audio of a few test pairs, kept with the features the models were trained on:
    today's edgemm.preprocess must make the same numbers. If it fails, the transform changed (even a
    different resize path moves the features): regenerate the data and retrain the reference models."""
    from edgemm.preprocess import preprocess_audio, preprocess_video

    with np.load(ROOT / "benchmarks" / "models" / "avdigits_fingerprint.npz") as fp:
        frames, windows, video, audio = fp["frames"], fp["windows"], fp["video"], fp["audio"]
    spec = load_bundle(model_path("avdigits_intermediate")).manifest.graphs["video_encoder"].inputs[0]
    now = np.concatenate([preprocess_video(f, spec) for f in frames])
    # OpenCV versions may round a pixel differently; a changed transform moves the mean by ~0.02 or more.
    assert np.mean(np.abs(now - video)) < 0.005, np.mean(np.abs(now - video))
    spec = load_bundle(model_path("avdigits_intermediate")).manifest.graphs["audio_encoder"].inputs[0]
    now = np.concatenate([preprocess_audio(w, spec) for w in windows])
    assert np.mean(np.abs(now - audio)) < 1e-3, np.mean(np.abs(now - audio))


def test_broken_preprocessing_falls_below_the_floor():
    """Negative control: audio features from a mel spectrogram without the log (a plausible bug) fail the
    floor the shipped model meets with the right features, on the same microphone windows."""
    from edgemm.preprocess import preprocess_audio
    from edgemm.reference.clip import _words, load_material

    floor = committed()["subset"]["accuracy"]["avdigits_intermediate"]["clean"] - TOLERANCE
    material = load_material()
    words = _words(material)
    rng = np.random.default_rng(0)
    win = av.AUDIO_PRE.window_samples
    labels = np.arange(40) % 10
    windows = []
    for i, label in enumerate(labels):
        w = words[int(np.flatnonzero(material["word_digits"] == label)[i % 2])] * 0.4
        windows.append(av.mix_at_snr(av.place_word(w, win, int(rng.integers(0, win - len(w)))),
                                     av.cabin_noise(win, rng), 25.0, speech_rms=av.rms(w)))
    good = av.audio_spec()
    broken = dataclasses.replace(good, preprocess=dataclasses.replace(good.preprocess, feature="mel"))
    scores = {}
    for name, spec in (("good", good), ("broken", broken)):
        data = {"audio": np.concatenate([preprocess_audio(x, spec) for x in windows]),
                "video": np.zeros((len(labels), 1, 32, 32), np.float32), "label": labels}
        scores[name] = accuracy(model_path("avdigits_intermediate"), data, present={"video": False})
    assert scores["good"] >= floor, scores
    assert scores["broken"] < floor, scores


# --------------------------------------------------------------------------------------------------
# The generator and the recipe (offline; skipped where their tools are missing)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    pytest.importorskip("sklearn")
    out = tmp_path_factory.mktemp("avdigits") / "set"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "avdigits" / "generate.py"), "--small", "--out", str(out),
           "--demo-material", str(out.parent / "material.npz")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return out


def test_generator_small_set(small_set):
    meta = json.loads((small_set / "meta.json").read_text())
    train, test = np.load(small_set / "train.npz"), np.load(small_set / "test.npz")
    assert train["video"].shape[1:] == (1, 32, 32) and train["audio"].shape[1:] == (1, 40, 98)
    assert train["video"].dtype == np.float32
    # honest splits: no image and no speaker in two splits
    assert not set(train["image"]) & set(test["image"])
    assert not set(train["speaker"]) & set(test["speaker"])
    assert set(meta["counts"]) == {"train", "val", "test"}
    # every test pair in every condition, the same pairs
    for key in ("video_clean", "video_occluded", "video_lowlight", "audio_clean", "audio_noisy", "audio_silent"):
        assert test[key].shape[0] == test["label"].shape[0], key
    assert not np.allclose(test["video_clean"], test["video_occluded"])
    assert not np.allclose(test["audio_clean"], test["audio_noisy"])
    # the features are the runtime's own: recomputed from the raw frames and audio kept in the fingerprint
    from edgemm.preprocess import preprocess_audio, preprocess_video

    with np.load(small_set / "fingerprint.npz") as fp:
        video = np.concatenate([preprocess_video(f, av.video_spec()) for f in fp["frames"]])
        audio = np.concatenate([preprocess_audio(w, av.audio_spec()) for w in fp["windows"]])
        assert np.array_equal(video, fp["video"]) and np.array_equal(audio, fp["audio"])
    # and the manifest's audio normalisation fits them (standardised log-mel)
    assert abs(float(train["audio"].mean())) < 1.0 and 0.5 < float(train["audio"].std()) < 2.0
    # eval folders in the converters' data-folder format
    from edgemm.converters.data import DataFolder

    bundle = load_bundle(model_path("avdigits_intermediate"))
    for cond in ("clean", "both_degraded"):
        folder = DataFolder(small_set / "eval" / cond, bundle)
        sample = next(iter(folder.samples()))
        assert set(sample.tensors) == {"video", "audio"}
    assert (small_set.parent / "material.npz").is_file()


def test_generator_is_deterministic(small_set, tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "avdigits" / "generate.py"), "--small", "--out", str(tmp_path / "again")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    a, b = np.load(small_set / "test.npz"), np.load(tmp_path / "again" / "test.npz")
    for k in a.files:
        assert np.array_equal(a[k], b[k]), k


def test_training_smoke(small_set, tmp_path):
    pytest.importorskip("torch")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_reference.py"), "--data", str(small_set), "--out",
           str(tmp_path), "--checkpoints", str(tmp_path / "ckpt"), "--smoke", "--only", "video,audio,intermediate"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    for name in ("avdigits_video", "avdigits_audio", "avdigits_intermediate", "avdigits_late"):
        b = load_bundle(tmp_path / name)
        assert b.manifest.provenance["trained_by"] == "benchmarks/train_reference.py"
