#!/usr/bin/env python3
"""Evaluate the driving reference models on the test scenes, in every condition, and fit + score the fusion.

Each test scene (seeds never used in training or validation) is rendered at 4 Hz from t = 1 s to its end in
every camera condition (day, dusk, night, rain, fog) with its microphone track plain, with rain, or masked
(broadband noise that lowers the siren's SNR by 3-10 dB). The detector and the audio classifier run through
edgemm.fusion.FusionModel with the runtime's own preprocessing.

  detector   COCO mAP@0.5 and mAP@0.5:0.95 per camera condition (pycocotools, the library `edgemm eval` uses)
  audio      siren precision / recall / F1 per audio condition, siren recall per SNR band
  event      "emergency vehicle approaching": audio alone (smoothed siren probability), camera alone (smoothed
             best emergency-vehicle box score), late fusion (each calibrated to P(event) by a logistic, then
             a noisy OR: edgemm.reference.driving.late_fusion; written to benchmarks/models/driving_fusion.json),
             intermediate fusion (the driving_intermediate bundle: both models as encoders, a small head fitted
             on the validation scenes' embeddings, benchmarks/driving_intermediate.py); every threshold chosen
             on the validation runs for event-level F1. Scored: event-level precision / recall / F1 per scene
             (an alarm more than 0.5 s before the siren's onset, or in a scene without an approaching
             emergency vehicle, is a false alarm) and the delay from the siren's onset
  variants   the detector converted to INT8 (edgemm convert, calibrated on validation frames) and pruned
             (channels:0.3): size, mAP and latency measured interleaved here

Boxes are decoded by the runtime (edgemm.detection.decode_boxes, from the bundle's yolov8 detection block) and
scored by the runtime's mAP (converters.detection_eval.coco_map, pycocotools), as `edgemm eval` does.
Usage:  python benchmarks/eval_driving.py [--data build/driving] [--scenes 30] [--no-convert]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgemm.bundle import load_bundle  # noqa: E402
from edgemm.fusion import FusionModel, softmax  # noqa: E402
from edgemm.preprocess import preprocess_audio, preprocess_video  # noqa: E402
from edgemm.reference import driving as dr  # noqa: E402

import driving_intermediate as di  # noqa: E402  (benchmarks/, beside this script)

MODELS = ROOT / "benchmarks" / "models"
STEP_S = 0.25
EMA = 0.5  # smoothing of the per-step scores: s <- EMA * s + (1 - EMA) * new
CAMERA_MIN_SCORE = 0.05  # emergency-vehicle boxes from this score up feed the camera's event score
EARLY_S = 0.5  # an alarm this long before the onset still counts (the siren ramps up)
EVENT_CONDITIONS = {  # name -> (camera condition, audio variant)
    "day": ("day", "plain"), "dusk": ("dusk", "plain"), "night": ("night", "plain"), "rain": ("rain", "rain"),
    "fog": ("fog", "plain"), "siren masked": ("day", "masked"), "night + masked": ("night", "masked"),
}
DEGRADED = ["night", "fog", "siren masked", "night + masked"]
SUBSET = {"siren_scenes": 2, "other_scenes": 2, "cameras": ["day", "night"],
          "events": ["day", "night", "siren masked"]}  # what tests/test_driving.py recomputes
INT8_FLAVOUR = "u8s8"  # activations uint8, weights int8: ONNX Runtime's VNNI path on x86
SNR_BANDS = [(-np.inf, -10), (-10, -5), (-5, 0), (0, np.inf)]


def coco_map(gts: list[tuple[np.ndarray, np.ndarray]], dets: list[tuple]) -> dict:
    """COCO mAP over images (converters.detection_eval, as `edgemm eval`): gts[i] = (boxes, classes),
    dets[i] = (boxes, scores, classes)."""
    from edgemm.converters.detection_eval import coco_map as runtime_map
    from edgemm.detection import Boxes

    truth = [Boxes(np.asarray(b, np.float32).reshape(-1, 4), np.ones(len(c), np.float32), np.asarray(c, np.int64))
             for b, c in gts]
    found = [Boxes(*d) for d in dets]
    m = runtime_map(truth, found, dr.CLASSES)
    return {"map50": m["map50"], "map": m["map"]}


def steps(sc: dr.Scene) -> np.ndarray:
    return np.arange(1.0, sc.duration + 1e-6, STEP_S)


def detect_scene(fm: FusionModel, sc: dr.Scene, condition: str, enc: FusionModel | None = None) -> dict:
    """Frames of a scene at every step: ground truth, detections (conf 0.001, for mAP) and the best
    emergency-vehicle score (conf 0.05) per step; with ``enc`` (the intermediate bundle) also its video
    encoder's outputs on the same frames."""
    from edgemm.detection import decode_boxes

    spec = fm.manifest.graphs["model"].inputs[0]
    out_spec = fm.manifest.graphs["model"].outputs[0]
    gts, dets, ev, emb = [], [], [], []
    for t in steps(sc):
        frame, boxes, classes = dr.render_frame(sc, float(t), condition)
        x = preprocess_video(frame, spec)
        if enc is None:
            raw = fm.infer({spec.name: x}).outputs
        else:  # the encoder is the detector's graph plus the embedding: its raw output is the detector's
            emb.append(enc.encode("video", {spec.name: x}))
            raw = {out_spec.name: emb[-1][f"{enc.encoder_graph('video')}.{out_spec.name}"]}
        b = decode_boxes(raw, out_spec, (dr.SIZE, dr.SIZE), conf=0.001)
        gts.append((boxes, classes))
        d = (b.xyxy, b.scores, b.classes)
        dets.append(d)
        sel = (d[2] == dr.EMERGENCY) & (d[1] >= CAMERA_MIN_SCORE)
        ev.append(float(d[1][sel].max()) if sel.any() else 0.0)
    return {"gts": gts, "dets": dets, "ev": np.array(ev), "emb": emb}


def listen_scene(fm: FusionModel, sc: dr.Scene, variant: str, enc: FusionModel | None = None) -> dict:
    spec = fm.manifest.graphs["model"].inputs[0]
    parts = dr.render_audio(sc, masked=variant == "masked", rain=variant == "rain")
    p, label, snr, emb = [], [], [], []
    for t in steps(sc):
        b = int(round(t * dr.SAMPLE_RATE))
        x = preprocess_audio(parts["mix"][b - dr.SAMPLE_RATE:b], spec)
        if enc is None:
            logits = fm.infer({spec.name: x}).outputs["event"][0]
        else:  # the encoder is the classifier's graph plus the embedding
            emb.append(enc.encode("audio", {spec.name: x}))
            logits = emb[-1][f"{enc.encoder_graph('audio')}.event"][0]
        e = np.exp(logits - logits.max())
        p.append(float(e[1] / e.sum()))
        lab, s = dr.window_truth(parts, float(t))
        label.append(lab)
        snr.append(s)
    return {"p_siren": np.array(p), "label": np.array(label), "snr": np.array(snr), "emb": emb}


def smooth(x: np.ndarray) -> np.ndarray:
    out, s = np.empty_like(x), 0.0
    for i, v in enumerate(x):
        s = EMA * s + (1 - EMA) * v
        out[i] = s
    return out


def features(audio: dict, video: dict, enc: FusionModel | None = None) -> np.ndarray:
    """Per step: smoothed siren probability, smoothed best emergency-vehicle score, their product, and (with
    the intermediate bundle) its head's smoothed probability of the event on the two steps' embeddings."""
    a, v = smooth(audio["p_siren"]), smooth(video["ev"])
    cols = [a, v, a * v]
    if enc is not None:
        p = [softmax(enc.fuse({**ve, **ae})["event"][0])[1] for ve, ae in zip(video["emb"], audio["emb"])]
        cols.append(smooth(np.array(p)))
    return np.stack(cols, 1)


def late_score(fusion: dict, x: np.ndarray) -> np.ndarray:
    return dr.late_fusion(fusion, x[:, 0], x[:, 1])


DECIDE_SCORE = {  # kind -> the per-step score its alarm thresholds
    "audio": lambda f, x: x[:, 0],
    "camera": lambda f, x: x[:, 1],
    "late": late_score,
    "intermediate": lambda f, x: x[:, 3],
}
KINDS = tuple(DECIDE_SCORE)


def decisions(kind: str, fusion: dict, x: np.ndarray) -> np.ndarray:
    return DECIDE_SCORE[kind](fusion, x) >= fusion[f"{kind}_threshold"]


def event_scores(scenes: list[dr.Scene], on: list[np.ndarray]) -> dict:
    """Event-level precision / recall / F1 over scenes and the detection delay of the events caught."""
    tp = fp = fn = 0
    delays = []
    for sc, d in zip(scenes, on):
        t = steps(sc)
        fired = t[d]
        if sc.siren is None:
            fp += int(fired.size > 0)
            continue
        onset = sc.siren["onset"]
        if np.any(fired < onset - EARLY_S):
            fp += 1
        late = fired[fired >= onset - EARLY_S]
        if late.size:
            tp += 1
            delays.append(max(0.0, float(late[0] - onset)))
        else:
            fn += 1
    prec = tp / max(1, tp + fp)
    rec = tp / max(1, tp + fn)
    return {"precision": round(prec, 4), "recall": round(rec, 4), "f1": round(2 * prec * rec / max(1e-9, prec + rec), 4),
            "tp": tp, "fp": fp, "fn": fn, "delay_median_s": round(float(np.median(delays)), 2) if delays else None,
            "delay_mean_s": round(float(np.mean(delays)), 2) if delays else None}


def best_event_threshold(scenes: list[dr.Scene], scores: list[np.ndarray]) -> float:
    """The alarm threshold with the best event-level F1 on these scenes (then the shortest mean delay): the
    figure the table reports, so every kind (each modality alone, each fusion) is tuned for it alike."""
    best, thr = None, 0.5
    for c in np.round(np.linspace(0.02, 0.98, 49), 3):
        e = event_scores(scenes, [s >= c for s in scores])
        key = (e["f1"], -(e["delay_mean_s"] if e["delay_mean_s"] is not None else np.inf))
        if best is None or key > best:
            best, thr = key, float(c)
    return thr


def fit_fusion(scenes: list[dr.Scene], det: FusionModel, aud: FusionModel, enc: FusionModel, rng: np.random.Generator,
               passes: int = 2) -> tuple[dict, dict]:
    """Thresholds of the single modalities, the late-fusion logistic regression and the intermediate-fusion
    head, on validation scenes, each seen ``passes`` times in a random camera condition and audio variant.
    ``enc`` is the intermediate bundle (its encoders; its head is refitted here). Returns (fusion, head)."""
    from sklearn.linear_model import LogisticRegression

    xs, ys, rows, runs = [], [], {"v": [], "a": [], "s": []}, []
    for sc in scenes:
        for _ in range(passes):
            cond = dr.CONDITIONS[int(rng.integers(len(dr.CONDITIONS)))]
            variant = ["plain", "masked", "rain"][int(rng.integers(3))]
            a, v = listen_scene(aud, sc, variant, enc), detect_scene(det, sc, cond, enc)
            xs.append(features(a, v))
            ys.append(np.array([sc.event(t) for t in steps(sc)]))
            runs.append(sc)
            rows["v"] += [e["video_encoder.embedding"][0] for e in v["emb"]]
            rows["a"] += [e["audio_encoder.embedding"][0] for e in a["emb"]]
            rows["s"] += [e["audio_encoder.event"][0] for e in a["emb"]]
    x, y = np.concatenate(xs), np.concatenate(ys)
    head = di.fit_head(np.array(rows["v"]), np.array(rows["a"]), np.array(rows["s"]), y)
    ones = np.ones(len(y), np.float32)
    p_head = di.head_probability(head, di.head_rows(np.array(rows["v"]), np.array(rows["a"]), np.array(rows["s"]),
                                                     ones, ones))
    # the smoothed head probability, scene by scene (as features() smooths it)
    bounds = np.cumsum([0] + [len(c) for c in xs])
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        xs[i] = np.concatenate([xs[i], smooth(p_head[lo:hi])[:, None]], 1)
    # late fusion: each modality's smoothed score calibrated to P(event) on its own, then a noisy OR
    calib = {k: LogisticRegression(C=10.0).fit(x[:, [i]], y) for i, k in ((0, "audio"), (1, "camera"))}
    fusion = {"rule": "noisy-or of per-modality calibrations: 1 - (1 - sigmoid(wa a + ba)) (1 - sigmoid(wv v + bv))",
              "calibration": {k: [round(float(m.coef_[0][0]), 4), round(float(m.intercept_[0]), 4)]
                              for k, m in calib.items()},
              "features": {"a": "siren probability, EMA-smoothed per step",
                           "v": "best emergency-vehicle box score (from camera_min_score), EMA-smoothed per step"},
              "camera_min_score": CAMERA_MIN_SCORE, "ema": EMA, "step_s": STEP_S,
              "fitted_on": f"{len(scenes)} validation scenes x {passes} random conditions",
              "thresholds_by": "event-level F1 on the validation runs, then the shortest mean delay"}
    for kind in KINDS:
        fusion[f"{kind}_threshold"] = best_event_threshold(runs, [DECIDE_SCORE[kind](fusion, xx) for xx in xs])
    fusion["intermediate"] = {"bundle": "driving_intermediate", "hidden": di.HIDDEN,
                              "train_accuracy": round(head["train_accuracy"], 4), "rows": int(len(y))}
    return fusion, head


def siren_prf(audio: list[dict], threshold: float = 0.5) -> dict:
    label = np.concatenate([a["label"] for a in audio]) == 1
    pred = np.concatenate([a["p_siren"] for a in audio]) >= threshold
    tp = int(np.sum(pred & label))
    p, r = tp / max(1, pred.sum()), tp / max(1, label.sum())
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / max(1e-9, p + r), 4)}


def recall_by_snr(audio: list[dict], threshold: float = 0.5) -> dict:
    label = np.concatenate([a["label"] for a in audio]) == 1
    pred = np.concatenate([a["p_siren"] for a in audio]) >= threshold
    snr = np.concatenate([a["snr"] for a in audio])
    out = {}
    for lo, hi in SNR_BANDS:
        sel = label & (snr >= lo) & (snr < hi)
        out[f"{lo:g}..{hi:g} dB"] = {"recall": round(float(pred[sel].mean()), 4) if sel.any() else None,
                                     "windows": int(sel.sum())}
    return out


def convert_detector(src: Path, work: Path, val_frames: np.ndarray) -> dict:
    """INT8 (calibrated on validation frames) and pruned versions of the detector by the converters."""
    from edgemm.converters.convert import ConvertOptions, convert

    calib = work / "calib"
    calib.mkdir(parents=True, exist_ok=True)
    spec = dr.video_spec()
    np.savez(calib / "frames.npz", images=np.concatenate([preprocess_video(f, spec) for f in val_frames[:128]]))
    made = {}
    # u8s8 fixed: on this loaded machine the converter's own timing could pick a different flavour run to run
    for name, opts in (("int8", ConvertOptions(precision="int8", calib=calib, bench_seconds=1.0, quiet=True,
                                               force=True, flavour=INT8_FLAVOUR)),
                       ("pruned", ConvertOptions(precision="fp32", prune="channels:0.3", calib=calib,
                                                 bench_seconds=1.0, quiet=True, force=True))):
        dest = work / f"driving_detector-{name}"
        report = convert(src, dest, opts)
        made[name] = {"path": dest, "flavour": {g: v["flavour"]["chosen"]
                                                for g, v in report.get("conversion", {}).get("int8", {}).items()}}
    return made


def bundle_bytes(path: Path) -> int:
    m = load_bundle(path).manifest
    return sum((path / g.file).stat().st_size for g in m.graphs.values())


def interleaved_latency(paths: dict[str, Path], frames: np.ndarray, rounds: int = 200) -> dict:
    """p50 / p90 ms of one inference of each model in turn (so machine noise hits all alike)."""
    spec = dr.video_spec()
    x = [preprocess_video(f, spec) for f in frames]
    from contextlib import ExitStack

    times = {k: [] for k in paths}
    with ExitStack() as stack:
        fms = {k: stack.enter_context(FusionModel(load_bundle(p), threads=1)) for k, p in paths.items()}
        for fm in fms.values():
            fm.infer({"images": x[0]})
        for i in range(rounds):
            for k, fm in fms.items():
                t0 = time.perf_counter()
                fm.infer({"images": x[i % len(x)]})
                times[k].append((time.perf_counter() - t0) * 1000)
    return {k: {"p50": round(float(np.percentile(v, 50)), 3), "p90": round(float(np.percentile(v, 90)), 3)}
            for k, v in times.items()}


def evaluate(det_path: Path, aud_path: Path, mid_path: Path, scenes: list[dr.Scene], fusion: dict,
             cam_conditions=dr.CONDITIONS, event_conditions=EVENT_CONDITIONS, log=print) -> dict:
    """Every figure of the table on the given scenes (the tests call this on the shipped subset)."""
    with FusionModel(load_bundle(det_path), threads=2) as det, FusionModel(load_bundle(aud_path), threads=2) as aud, \
            FusionModel(load_bundle(mid_path), threads=2) as mid:
        vids = {c: [detect_scene(det, sc, c, mid) for sc in scenes] for c in cam_conditions}
        log(f"  detector done on {len(scenes)} scenes x {len(cam_conditions)} conditions")
        auds = {v: [listen_scene(aud, sc, v, mid) for sc in scenes] for v in ("plain", "rain", "masked")}
        feats = {name: [features(a, v, mid) for a, v in zip(auds[variant], vids[cam])]
                 for name, (cam, variant) in event_conditions.items() if cam in vids}
    result = {"scenes": len(scenes), "frames_per_condition": sum(len(steps(s)) for s in scenes)}
    result["map"] = {c: coco_map([g for v in vids[c] for g in v["gts"]], [d for v in vids[c] for d in v["dets"]])
                     for c in cam_conditions}
    result["siren"] = {v: siren_prf(a) for v, a in auds.items()}
    result["siren_recall_by_snr"] = {v: recall_by_snr(a) for v, a in auds.items()}
    result["event"] = {}
    for name, xs in feats.items():
        result["event"][name] = {k: event_scores(scenes, [decisions(k, fusion, x) for x in xs]) for k in KINDS}
    return result


def beats_single(e: dict, kind: str) -> bool:
    """Fusion above the better single modality: a higher F1, or the same F1 and a shorter median delay."""
    def delay(k):
        d = e[k]["delay_median_s"]
        return np.inf if d is None else d
    best = max(("audio", "camera"), key=lambda k: (e[k]["f1"], -delay(k)))
    return e[kind]["f1"] > e[best]["f1"] or (e[kind]["f1"] == e[best]["f1"] > 0 and delay(kind) < delay(best))


def _cells(e: dict) -> list[str]:
    f1 = [f"{100 * e[k]['f1']:.1f}" for k in KINDS]
    dl = ["—" if e[k]["delay_median_s"] is None else f"{e[k]['delay_median_s']:.2f}" for k in KINDS]
    for i, k in enumerate(KINDS[2:], 2):  # bold: the fusion beats the better single modality
        if beats_single(e, k):
            f1[i], dl[i] = f"**{f1[i]}**", f"**{dl[i]}**"
    return f1 + dl


def markdown(res: dict, fusion: dict, variants: dict, meta: dict, seconds: float) -> str:
    L = ["## Driving reference models", "",
         f"Offline synthetic driving set (`benchmarks/driving/generate.py`, seed {meta['seed']}): "
         f"{meta['stats']['train']['scenes']} training / {meta['stats']['val']['scenes']} validation scenes, "
         f"{res['scenes']} test scenes (no seed shared), each test scene rendered at 4 Hz in every condition "
         f"({res['frames_per_condition']} frames per condition). Trained by `benchmarks/train_driving.py`, scored "
         "by `benchmarks/eval_driving.py` on ONNX Runtime (CPU, this 2-core machine). Detector 192x192, YOLOv8 "
         "output layout; mAP by pycocotools (as `edgemm eval`).", "",
         "| camera condition | mAP@0.5 | mAP@0.5:0.95 |", "|---|---:|---:|"]
    for c, m in res["map"].items():
        L.append(f"| {c} | {100 * m['map50']:.1f} | {100 * m['map']:.1f} |")
    L += ["", "**Siren** (audio classifier, 1 s windows every 0.25 s, siren when p >= 0.5)", "",
          "| audio condition | precision | recall | F1 | " + " | ".join(f"recall at SNR {b}" for b in
                                                                      res["siren_recall_by_snr"]["plain"]) + " |",
          "|---|---:|---:|---:|" + "---:|" * len(SNR_BANDS)]
    for v, m in res["siren"].items():
        bands = res["siren_recall_by_snr"][v]
        cells = [f"{100 * b['recall']:.0f} ({b['windows']})" if b["recall"] is not None else "—" for b in bands.values()]
        L.append(f"| {v} | {100 * m['precision']:.1f} | {100 * m['recall']:.1f} | {100 * m['f1']:.1f} | "
                 + " | ".join(cells) + " |")
    L += ["", "**Event \"emergency vehicle approaching\"** (event-level F1 over test scenes; median delay from the "
          "siren's onset, s). Audio alone: smoothed siren probability; camera alone: smoothed best emergency-"
          f"vehicle box score; late fusion: each calibrated to P(event) by a logistic (audio {fusion['calibration']['audio']}, "
          f"camera {fusion['calibration']['camera']}), combined as a noisy OR; fitted on {fusion['fitted_on']}, "
          "every threshold chosen there for event-level F1; intermediate fusion: the driving_intermediate bundle's "
          "head (an MLP on both models' embeddings) on the same frames and windows, its probability smoothed alike. "
          "Bold: the fusion beats the better single modality (higher F1, or equal F1 and shorter delay).", "",
          "| condition | audio F1 | camera F1 | late F1 | intermediate F1 | audio delay | camera delay | late delay | "
          "intermediate delay |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c, e in res["event"].items():
        L.append(f"| {c} | " + " | ".join(_cells(e)) + " |")
    if variants:
        L += ["", "**Detector variants** (day and night mAP@0.5 on the same test frames; latency: one 192x192 frame, "
              "1 thread, interleaved in one run, p50 / p90 ms)", "",
              "| variant | size (kB) | mAP@0.5 day | mAP@0.5 night | latency p50 | latency p90 |",
              "|---|---:|---:|---:|---:|---:|"]
        for k, v in variants.items():
            L.append(f"| {k} | {v['bytes'] / 1e3:.0f} | {100 * v['map']['day']['map50']:.1f} | "
                     f"{100 * v['map']['night']['map50']:.1f} | {v['latency']['p50']:.2f} | {v['latency']['p90']:.2f} |")
    L += ["", f"(evaluation took {seconds:.0f} s)", ""]
    return "\n".join(L)


def subset_seeds(test_seeds: list[int]) -> list[int]:
    """The first test scenes with an approaching emergency vehicle that comes into view, and the first without."""
    def seen(sc):
        return sc.siren is not None and any(th.cls == dr.EMERGENCY for th in sc.things)

    siren = [s for s in test_seeds if seen(dr.make_scene(s))][:SUBSET["siren_scenes"]]
    other = [s for s in test_seeds if dr.make_scene(s).siren is None][:SUBSET["other_scenes"]]
    return siren + other


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / "build" / "driving"))
    p.add_argument("--models", default=str(MODELS))
    p.add_argument("--scenes", type=int, default=30, help="test scenes (default 30)")
    p.add_argument("--variant-scenes", type=int, default=10, help="test scenes the converted detectors are scored on")
    p.add_argument("--val-scenes", type=int, default=40, help="validation scenes to fit the fusion on (twice each)")
    p.add_argument("--work", default=str(ROOT / "build" / "driving_converted"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "driving" / "results.md"))
    p.add_argument("--no-convert", action="store_true")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    data, models = Path(args.data), Path(args.models)
    meta = json.loads((data / "meta.json").read_text())
    det_path, aud_path = models / "driving_detector", models / "driving_audio"
    rng = np.random.default_rng(0)
    val_scenes = [dr.make_scene(s) for s in meta["seeds"]["val"][:args.val_scenes]]
    # the encoders first (a head that says nothing), then the head fitted on their embeddings
    provenance = {"precision": "fp32", "made_by": "benchmarks/eval_driving.py (benchmarks/driving_intermediate.py)",
                  "encoders": {"video": "driving_detector", "audio": "driving_audio"}}
    blank = di.write_intermediate(det_path, aud_path, None, Path(args.work), provenance)
    with FusionModel(load_bundle(det_path), threads=2) as det, FusionModel(load_bundle(aud_path), threads=2) as aud, \
            FusionModel(load_bundle(blank), threads=2) as enc:
        fusion, head = fit_fusion(val_scenes, det, aud, enc, rng)
    mid_path = di.write_intermediate(det_path, aud_path, head, models,
                                     {**provenance, "head": {"fitted_on": fusion["fitted_on"], **fusion["intermediate"]}})
    (models / "driving_fusion.json").write_text(json.dumps(fusion, indent=1) + "\n")
    print(f"  fusion fitted: {fusion}", flush=True)
    test_seeds = meta["seeds"]["test"][:args.scenes]
    scenes = [dr.make_scene(s) for s in test_seeds]
    res = evaluate(det_path, aud_path, mid_path, scenes, fusion)
    print(json.dumps(res["map"]), flush=True)
    sub_seeds = subset_seeds(test_seeds)
    subset = evaluate(det_path, aud_path, mid_path, [dr.make_scene(s) for s in sub_seeds], fusion, SUBSET["cameras"],
                      {k: EVENT_CONDITIONS[k] for k in SUBSET["events"]})
    variants = {}
    if not args.no_convert:
        val = np.load(data / "val.npz")
        made = convert_detector(det_path, Path(args.work), val["frames"])
        paths = {"fp32": det_path, **{k: v["path"] for k, v in made.items()}}
        lat = interleaved_latency(paths, val["frames"][:32])
        for k, path in paths.items():
            with FusionModel(load_bundle(path), threads=2) as fm:
                maps = {}
                for c in ("day", "night"):
                    vids = [detect_scene(fm, sc, c) for sc in scenes[:args.variant_scenes]]
                    maps[c] = coco_map([g for v in vids for g in v["gts"]], [d for v in vids for d in v["dets"]])
            variants[k] = {"bytes": bundle_bytes(path), "map": maps, "latency": lat[k],
                           "flavour": made.get(k, {}).get("flavour")}
            print(f"  {k}: {variants[k]}", flush=True)
    text = markdown(res, fusion, variants, meta, time.perf_counter() - t0)
    Path(args.out).write_text(text)
    payload = {"test_seeds": test_seeds, "results": res, "fusion": fusion,
               "subset": {"seeds": sub_seeds, **SUBSET, "results": subset},
               "variants": {k: {kk: vv for kk, vv in v.items()} for k, v in variants.items()}}
    (models / "driving_eval.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
