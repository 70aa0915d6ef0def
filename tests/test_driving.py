"""The driving reference: scene rendering, the data set generator, the training recipe, and the shipped models
checked against the committed evaluation (benchmarks/models/driving_eval.json, written by
benchmarks/eval_driving.py) on a small subset of test scenes rendered here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgemm.bundle import load_bundle
from edgemm.fusion import FusionModel
from edgemm.preprocess import preprocess_video
from edgemm.reference import driving as dr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
MODELS = ROOT / "benchmarks" / "models"
EVAL_JSON = MODELS / "driving_eval.json"
TOLERANCE = 0.05  # library versions (OpenCV drawing, FFT) may move a few boxes or windows, never 5 points


def ev():
    import eval_driving

    return eval_driving


def one_car_scene(**kw) -> dr.Scene:
    sc = dr.Scene(seed=1, speed=10.0, shake=0.0)
    sc.things.append(dr.Thing(0, 0.0, 20.0, 0.0, 1.8, 1.5, (30, 30, 150)))
    for k, v in kw.items():
        setattr(sc, k, v)
    return sc


def test_box_is_the_projection_of_the_object():
    sc = one_car_scene()
    frame, boxes, classes = dr.render_frame(sc, 0.0, "day")
    assert frame.shape == (dr.SIZE, dr.SIZE, 3) and frame.dtype == np.uint8
    assert list(classes) == [0]
    hy = dr.SIZE * dr.HORIZON
    want = [dr.SIZE / 2 - dr.FOCAL * 0.9 / 20, hy + dr.FOCAL * (dr.CAM_HEIGHT - 1.5) / 20,
            dr.SIZE / 2 + dr.FOCAL * 0.9 / 20, hy + dr.FOCAL * dr.CAM_HEIGHT / 20]
    assert np.allclose(boxes[0], want, atol=0.01)
    # the pixels inside the box are the car's, not the road's
    x1, y1, x2, y2 = boxes[0].astype(int)
    road = frame[y2 + 5, x1:x2].astype(float).mean(0)
    car = frame[(y1 + y2) // 2, x1 + 1:x2 - 1].astype(float).mean(0)
    assert np.abs(car - road).sum() > 60


def test_hidden_objects_are_not_ground_truth():
    sc = one_car_scene()
    sc.things.append(dr.Thing(1, 0.0, 10.0, 0.0, 2.5, 3.6, (80, 80, 80)))  # a truck right in front of it
    _, boxes, classes = dr.render_frame(sc, 0.0, "day")
    assert list(classes) == [1]
    far = one_car_scene()
    far.things[0] = dr.Thing(1, 0.0, 80.0, 0.0, 2.5, 3.6, (80, 80, 80))
    assert len(dr.render_frame(far, 0.0, "day")[1]) == 1
    assert len(dr.render_frame(far, 0.0, "fog")[1]) == 0  # no camera sees through 80 m of this fog


def test_conditions_change_the_picture_not_the_boxes():
    sc = dr.make_scene(200003)
    frames = {c: dr.render_frame(sc, 5.0, c) for c in ("day", "night", "rain")}
    assert frames["night"][0].mean() < 0.4 * frames["day"][0].mean()
    assert np.array_equal(frames["day"][1], frames["rain"][1])
    again = dr.render_frame(sc, 5.0, "day")
    assert np.array_equal(again[0], frames["day"][0])  # deterministic from the seed


def _dominant_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * dr.SAMPLE_RATE / len(x))


def test_siren_doppler_and_distance():
    """A hi-lo siren coming at 30 m/s sounds higher than one leaving at 30 m/s (f c / (c + v)), and louder
    when near (1 / distance)."""
    def siren(z0, vz):
        sc = dr.Scene(seed=0, speed=0.0, shake=0.0)
        sc.siren = dict(pattern="hilo", onset=0.0, x=3.0, z0=z0, vz=vz, level=1.0)
        return dr.render_audio(sc)["siren"]

    coming, going = siren(330.0, -30.0), siren(10.0, 30.0)
    n = int(0.5 * dr.SAMPLE_RATE)  # the first half second: the low tone of hi-lo
    a, b = _dominant_hz(coming[:n]), _dominant_hz(going[:n])
    assert a / b == pytest.approx((343 + 30) / (343 - 30), rel=0.03)
    near = np.sqrt(np.mean(coming[-n:] ** 2))  # at 30-45 m
    far = np.sqrt(np.mean(coming[n:2 * n] ** 2))  # at 300-315 m
    assert 6 < near / far < 11


def test_window_truth_and_snr():
    sc = dr.make_scene(next(s for s in range(200000, 200100) if dr.make_scene(s).siren is not None))
    parts = dr.render_audio(sc)
    onset = sc.siren["onset"]
    assert dr.window_truth(parts, onset - 0.01)[0] != 1
    label, snr = dr.window_truth(parts, sc.duration)
    assert label == 1 and np.isfinite(snr)
    masked = dr.render_audio(sc, masked=True)
    assert dr.window_truth(masked, sc.duration)[1] < snr - 3


def test_map_of_perfect_and_of_shifted_boxes():
    gt = [(np.array([[10, 10, 50, 40]], np.float32), np.array([0]))]
    perfect = [(gt[0][0], np.array([0.9], np.float32), np.array([0]))]
    assert ev().coco_map(gt, perfect)["map"] == pytest.approx(1.0)
    shifted = [(gt[0][0] + 25, np.array([0.9], np.float32), np.array([0]))]
    assert ev().coco_map(gt, shifted)["map50"] == 0.0


# --------------------------------------------------------------------------------------------------
# The shipped models against the committed figures
# --------------------------------------------------------------------------------------------------


def committed():
    return json.loads(EVAL_JSON.read_text())


def test_shipped_bundles_are_small_and_in_yolov8_layout():
    det = load_bundle(MODELS / "driving_detector")
    out = det.manifest.graphs["model"].outputs[0]
    assert out.task == "detection" and det.manifest.provenance["format"] == "yolov8"
    assert det.manifest.provenance["labels"] == dr.CLASSES
    assert out.shape[1] == 4 + len(dr.CLASSES)
    for name in ("driving_detector", "driving_audio", "driving_intermediate"):
        size = sum(p.stat().st_size for p in (MODELS / name).glob("*.onnx"))
        assert size < 2_000_000, (name, size)
    aud = load_bundle(MODELS / "driving_audio")
    assert aud.manifest.graphs["model"].outputs[0].labels == dr.AUDIO_LABELS
    import onnx

    meta = {p.key: p.value for p in onnx.load(MODELS / "driving_detector" / "model.onnx").metadata_props}
    assert meta["task"] == "detect" and meta["imgsz"] == f"[{dr.SIZE}, {dr.SIZE}]"


def test_intermediate_bundle_encodes_with_the_shipped_weights_and_survives_a_lost_sensor():
    """The intermediate bundle's encoders are the shipped detector and siren classifier (the same raw outputs),
    its head passes their outputs on for the runtime to decode, and with the camera or the microphone missing
    it still answers (the presence flags it was fitted with)."""
    sc = dr.make_scene(next(s for s in range(200000, 200100) if dr.make_scene(s).siren is not None))
    frame = dr.render_frame(sc, 9.0, "night")[0]
    mix = dr.render_audio(sc)["mix"]
    from edgemm.preprocess import preprocess_audio

    x = {"images": preprocess_video(frame, dr.video_spec()),
         "audio": preprocess_audio(mix[-dr.SAMPLE_RATE:], dr.audio_spec())}
    mid = load_bundle(MODELS / "driving_intermediate")
    assert mid.manifest.fusion.form == "intermediate" and set(mid.manifest.fusion.rates_hz) == {"video", "audio"}
    with FusionModel(load_bundle(MODELS / "driving_detector")) as det, \
            FusionModel(load_bundle(MODELS / "driving_audio")) as aud, FusionModel(mid) as fm:
        full = fm.infer(x)
        assert np.allclose(full.outputs["output0"], det.infer(x).outputs["output0"], atol=1e-4)
        assert np.allclose(full.outputs["siren"], aud.infer(x).outputs["event"], atol=1e-4)
        p_full = float(np.exp(full.outputs["event"][0, 1]) / np.exp(full.outputs["event"][0]).sum())
        assert p_full > 0.5  # the siren sounds at the end of this scene
        no_cam = fm.infer(x, present={"video": False})
        assert no_cam.degraded == ["video"] and not no_cam.outputs["output0"].any()
        assert float(np.exp(no_cam.outputs["event"][0, 1]) / np.exp(no_cam.outputs["event"][0]).sum()) > 0.5


def test_detector_boxes_are_in_input_pixels():
    """The bundle's detection block lets the runtime (edgemm.detection) decode it: a near car is found where it is."""
    from edgemm.detection import decode_boxes

    sc = one_car_scene()
    sc.things[0].z0 = 12.0
    frame, boxes, _ = dr.render_frame(sc, 0.0, "day")
    with FusionModel(load_bundle(MODELS / "driving_detector")) as fm:
        spec = fm.manifest.graphs["model"].inputs[0]
        out_spec = fm.manifest.graphs["model"].outputs[0]
        assert out_spec.detection.format == "yolov8" and out_spec.labels == dr.CLASSES
        d = decode_boxes(fm.infer({"images": preprocess_video(frame, spec)}).outputs, out_spec, (dr.SIZE, dr.SIZE),
                         conf=0.3)
    got, scores, classes = d.xyxy, d.scores, d.classes
    assert 0 in classes, (got, scores, classes)
    b, g = got[list(classes).index(0)], boxes[0]
    inter = max(0, min(b[2], g[2]) - max(b[0], g[0])) * max(0, min(b[3], g[3]) - max(b[1], g[1]))
    union = (b[2] - b[0]) * (b[3] - b[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
    assert inter / union > 0.5, (b, g)


@pytest.fixture(scope="module")
def subset_results():
    c = committed()
    sub = c["subset"]
    scenes = [dr.make_scene(s) for s in sub["seeds"]]
    e = ev()
    res = e.evaluate(MODELS / "driving_detector", MODELS / "driving_audio", MODELS / "driving_intermediate", scenes,
                     c["fusion"], sub["cameras"], {k: e.EVENT_CONDITIONS[k] for k in sub["events"]},
                     log=lambda *_: None)
    return sub["results"], res


def test_shipped_detector_reaches_committed_map(subset_results):
    want, got = subset_results
    for cond, m in want["map"].items():
        assert got["map"][cond]["map50"] >= m["map50"] - TOLERANCE, (cond, got["map"][cond], m)


def test_shipped_audio_reaches_committed_siren_f1(subset_results):
    want, got = subset_results
    for cond, m in want["siren"].items():
        assert got["siren"][cond]["f1"] >= m["f1"] - TOLERANCE, (cond, got["siren"][cond], m)


def test_fused_event_matches_committed_outcome(subset_results):
    """Event-level outcomes over the 4 subset scenes are whole counts: they must be what was committed."""
    want, got = subset_results
    for cond, kinds in want["event"].items():
        for kind, m in kinds.items():
            assert got["event"][cond][kind]["tp"] >= m["tp"] and got["event"][cond][kind]["fp"] <= m["fp"], \
                (cond, kind, got["event"][cond][kind], m)


def test_committed_table_says_what_the_json_says():
    text = (ROOT / "benchmarks" / "driving" / "results.md").read_text()
    res = committed()["results"]
    for cond, m in res["map"].items():
        assert f"| {cond} | {100 * m['map50']:.1f} | {100 * m['map']:.1f} |" in text


# --------------------------------------------------------------------------------------------------
# Generator and recipe
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("driving") / "set"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "driving" / "generate.py"), "--small", "--out", str(out)],
                   check=True, capture_output=True, timeout=300)
    return out


def test_generator_small_set(small_set):
    meta = json.loads((small_set / "meta.json").read_text())
    seeds = {k: set(v) for k, v in meta["seeds"].items()}
    assert not (seeds["train"] & seeds["val"]) and not (seeds["train"] & seeds["test"]) \
        and not (seeds["val"] & seeds["test"])
    train = np.load(small_set / "train.npz")
    assert train["frames"].shape[1:] == (dr.SIZE, dr.SIZE, 3) and train["frames"].dtype == np.uint8
    assert train["audio"].shape[1:] == (1, dr.AUDIO_PRE.n_mels, dr.AUDIO_PRE.n_frames)
    b = train["box_xyxy"]
    assert len(b) > 0 and np.all(b >= 0) and np.all(b <= dr.SIZE) and np.all(b[:, 2] > b[:, 0])
    assert set(np.unique(train["box_image"])) <= set(range(len(train["frames"])))
    assert set(np.unique(train["audio_label"])) <= {0, 1, 2} and 1 in train["audio_label"]
    # the audio normalisation fits the features (standardised log-mel)
    assert abs(float(train["audio"].mean())) < 1.5 and 0.4 < float(train["audio"].std()) < 2.5


def test_training_smoke(small_set, tmp_path):
    pytest.importorskip("torch")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_driving.py"), "--data", str(small_set), "--out",
           str(tmp_path), "--epochs", "1", "--audio-epochs", "1"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    for name in ("driving_detector", "driving_audio"):
        assert load_bundle(tmp_path / name).manifest.provenance["trained_by"] == "benchmarks/train_driving.py"


def test_packaged_driving_models_are_the_trained_ones():
    """`edgemm demo --scenario driving` runs the copies inside the package: they must be the bundles that
    benchmarks/train_driving.py wrote and the committed figures were measured on (recopy after retraining)."""
    repo = Path(__file__).resolve().parent.parent
    for name in ("driving_detector/model.onnx", "driving_detector/manifest.json", "driving_audio/model.onnx",
                 "driving_audio/manifest.json", "driving_fusion.json", "driving_intermediate/manifest.json",
                 "driving_intermediate/video_encoder.onnx", "driving_intermediate/audio_encoder.onnx",
                 "driving_intermediate/head.onnx"):
        trained, packaged = repo / "benchmarks/models" / name, repo / "edgemm/reference/models" / name
        assert packaged.read_bytes() == trained.read_bytes(), name
