"""`edgemm demo --scenario driving`: a rendered drive, the detector in INT8 streamed in real time, a siren.

  1. renders a drive (drive.mp4 at 10 fps + drive.wav, default 20 s) with edgemm/reference/driving.py from
     test-split scene seeds: traffic first, then an emergency vehicle whose siren is heard before it comes
     into view in the oncoming lane;
  2. converts the shipped detector (edgemm/reference/models/driving_detector) to INT8 with `edgemm convert`,
     calibrated on frames of validation-split scenes;
  3. streams drive.mp4 through the runtime in real time (as a camera delivers it), the `video:` sink writing
     drive-boxes.mp4 with boxes and track ids;
  4. runs the siren classifier (driving_audio) on drive.wav, one 1 s window every 0.25 s. It runs offline, on
     the file, after the stream: the detector bundle is video-only, and one pipeline carries one model;
  5. fuses both with the shipped late-fusion rule (driving_fusion.json: smoothed siren probability and best
     emergency-vehicle box score, logistic regression, thresholds), draws the event's banner into
     drive-boxes.mp4 (a pass over the file, as the decision needs the audio), and ends with mAP against the renderer's
     boxes, the event's F1 and detection delay (fusion, audio alone, camera alone), latency percentiles and
     drops, and demo.png.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from edgemm.commands.run import build, stream
from edgemm.errors import EdgemmError
from edgemm.reference import model_path
from edgemm.sink_base import Sink

FPS = 10.0
SCENE_S = 10.0  # a rendered scene's layout is made for 10 s; a longer drive is two scenes
TEST_SEEDS = 200000  # the data set's test split starts here (benchmarks/driving/generate.py)
VAL_SEEDS = 100000
EARLY_S = 0.5  # an alarm this long before the siren's onset still counts (as benchmarks/eval_driving.py)


def _step(n: int, text: str) -> None:
    print(f"\n[{n}/5] {text}", flush=True)


def _in_view(sc, start: float, end: float) -> bool:
    from edgemm.reference import driving as dr

    return any((dr.render_frame(sc, t)[2] == dr.EMERGENCY).any() for t in np.arange(start, end, 0.5))


def pick_scenes(seed: int, duration: float):
    """(traffic scene or None, siren scene, where the drive enters the siren scene). The first test-split seeds
    from `seed` on: one with no siren (only for drives over 10 s) and one whose siren starts at least 1.5 s
    into its part of the drive and whose vehicle comes into the camera's view within it."""
    from edgemm.reference import driving as dr

    length = min(duration, SCENE_S)
    siren = quiet = None
    for s in range(TEST_SEEDS + seed * 100, TEST_SEEDS + seed * 100 + 400):
        sc = dr.make_scene(s)
        if quiet is None and sc.siren is None:
            quiet = sc
        if siren is None and sc.siren is not None and any(th.cls == dr.EMERGENCY for th in sc.things):
            # enter the scene 1.5 s before the siren (or at its start), as long as the part fits in it
            start = min(max(0.0, sc.siren["onset"] - 1.5), SCENE_S - length)
            if sc.siren["onset"] - start >= 1.5 - 1e-9 and _in_view(sc, sc.siren["onset"], start + length):
                siren = (sc, start)
        if siren is not None and quiet is not None:
            break
    if siren is None:
        raise EdgemmError(f"Seed: {seed} | No scene with a siren and its vehicle in view within {length:g} s among "
                          "its 400 seeds; expected another --seed or a longer --duration.")
    return (quiet if duration > SCENE_S else None), *siren


def make_drive(out: Path, duration: float, seed: int) -> dict:
    """Render drive.mp4 + drive.wav; returns the truth: boxes per frame, siren onset, audio parts."""
    import cv2

    from edgemm.media import write_wav
    from edgemm.reference import driving as dr

    quiet, siren, enter = pick_scenes(seed, duration)
    # parts of the drive: (scene, drive time it starts at, length, scene time it starts at)
    parts = [(quiet, 0.0, duration - SCENE_S, 0.0)] if quiet is not None else []
    offset = duration - min(duration, SCENE_S)
    parts.append((siren, offset, min(duration, SCENE_S), enter))
    n_frames = int(round(duration * FPS))
    tmp = out / ".drive.partial.mp4"
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (dr.SIZE, dr.SIZE))
    if not writer.isOpened():
        raise EdgemmError(f"Demo drive: {tmp} | OpenCV could not open an MP4 writer; expected an OpenCV build with FFMPEG.")
    boxes, classes = [], []
    try:
        for k in range(n_frames):
            t = k / FPS
            sc, t0, _, enter_at = next(p for p in reversed(parts) if t >= p[1])
            frame, b, c = dr.render_frame(sc, t - t0 + enter_at, "day")
            writer.write(frame)
            boxes.append(b)
            classes.append(c)
    finally:
        writer.release()
    tracks = {k: [] for k in ("mix", "siren")}
    for sc, _, length, enter_at in parts:
        a = dr.render_audio(sc)
        i = int(round(enter_at * dr.SAMPLE_RATE))
        for k in tracks:
            tracks[k].append(a[k][i:i + int(round(length * dr.SAMPLE_RATE))])
    audio = {k: np.concatenate(v) for k, v in tracks.items()}
    video_path, audio_path = out / "drive.mp4", out / "drive.wav"
    tmp.replace(video_path)
    write_wav(audio_path, audio["mix"], dr.SAMPLE_RATE)
    return {"video": video_path, "audio": audio_path, "duration": duration, "boxes": boxes, "classes": classes,
            "onset": offset + siren.siren["onset"] - enter, "siren": audio["siren"], "mix": audio["mix"],
            "seeds": [p[0].seed for p in parts], "pattern": siren.siren["pattern"]}


def convert_detector(model: Path, out: Path, threads) -> tuple[Path, str]:
    """`edgemm convert` to INT8, calibrated on frames of validation-split scenes (never the drive's)."""
    from edgemm.commands.demo import converters_importable, run_convert
    from edgemm.preprocess import preprocess_video
    from edgemm.reference import driving as dr

    if not converters_importable():
        return model, "fp32"
    calib = out / "calib"
    calib.mkdir(parents=True, exist_ok=True)
    spec = dr.video_spec()
    frames = [dr.render_frame(dr.make_scene(VAL_SEEDS + s), t, c)[0]
              for s in range(16) for t, c in zip((1.0, 3.5, 6.0, 8.5), dr.CONDITIONS)]
    np.savez(calib / "frames.npz", images=np.concatenate([preprocess_video(f, spec) for f in frames]))
    dest = out / "model-int8"
    argv = [str(model), "-o", str(dest), "--precision", "int8", "--calib", str(calib), "--bench-seconds", "1",
            "--force", "--quiet"] + (["--threads", str(threads)] if threads else [])
    run_convert(argv)
    return dest, "int8"


class _DriveCollector(Sink):
    """Keeps every streamed result (media time, boxes, latency) and prints some as they come."""

    name = "demo"

    def __init__(self, every: int, start_time_of, primary: str):
        self.every, self.start_time_of, self.primary = max(1, every), start_time_of, primary
        self.rows: list[dict] = []

    def result(self, record, frame=None):
        out = record["outputs"][self.primary]
        t0 = self.start_time_of()
        t = max(0.0, record["t"] - (t0 if t0 is not None else record["t"]))
        row = {"t": t, "detections": out.get("detections", []), "latency_ms": record["latency_ms"].get("total")}
        self.rows.append(row)
        if (len(self.rows) - 1) % self.every == 0:
            counts = ", ".join(f"{n} {k}" for k, n in sorted(out.get("counts", {}).items())) or "nothing"
            print(f"  t={t:6.2f}s  {counts}  latency {row['latency_ms']:.1f} ms", flush=True)


def siren_probabilities(drive: dict, steps: np.ndarray) -> np.ndarray:
    """The siren classifier's probability on the 1 s window ending at each step (offline, on the wav)."""
    from edgemm.bundle import load_bundle
    from edgemm.fusion import FusionModel
    from edgemm.preprocess import preprocess_audio
    from edgemm.reference import driving as dr

    bundle = load_bundle(model_path("driving_audio"))
    spec = bundle.manifest.graphs["model"].inputs[0]
    p = []
    with FusionModel(bundle) as fm:
        for t in steps:
            b = int(round(t * dr.SAMPLE_RATE))
            logits = fm.infer({spec.name: preprocess_audio(drive["mix"][max(0, b - dr.SAMPLE_RATE):b], spec)}
                              ).outputs["event"][0]
            e = np.exp(logits - logits.max())
            p.append(float(e[dr.AUDIO_LABELS.index("siren")] / e.sum()))
    return np.array(p)


def camera_scores(rows: list[dict], steps: np.ndarray, step_s: float) -> np.ndarray:
    """The best emergency-vehicle box score among the streamed results of each step (0 when none)."""
    out = np.zeros(len(steps))
    for r in rows:
        k = int(np.searchsorted(steps, r["t"] - 1e-9))  # results in (step - step_s, step] belong to step
        if k < len(steps) and r["t"] > steps[k] - step_s:
            out[k] = max([out[k]] + [d["score"] for d in r["detections"] if d["label"] == "emergency"])
    return out


def smooth(x: np.ndarray, ema: float) -> np.ndarray:
    out, s = np.empty_like(x), 0.0
    for i, v in enumerate(x):
        s = ema * s + (1 - ema) * v
        out[i] = s
    return out


def event_score(steps: np.ndarray, fired: np.ndarray, onset: float) -> dict:
    """One drive, one event: caught (and when), missed, or a false alarm before the siren's onset."""
    at = steps[fired]
    fp = int(np.any(at < onset - EARLY_S))
    late = at[at >= onset - EARLY_S]
    tp = int(late.size > 0)
    prec, rec = tp / max(1, tp + fp), float(tp)
    return {"tp": tp, "fp": fp, "fn": 1 - tp, "f1": round(2 * prec * rec / max(1e-9, prec + rec), 4),
            "delay_s": round(max(0.0, float(late[0] - onset)), 2) if tp else None,
            "first_alarm_s": round(float(at[0]), 2) if at.size else None}


def fuse(drive: dict, rows: list[dict], fusion: dict) -> dict:
    steps = np.arange(1.0, drive["duration"] + 1e-6, fusion["step_s"])
    p_siren = siren_probabilities(drive, steps)
    cam = camera_scores(rows, steps, fusion["step_s"])
    a, v = smooth(p_siren, fusion["ema"]), smooth(cam, fusion["ema"])
    x = np.stack([a, v, a * v], 1)
    late = 1 / (1 + np.exp(-(x @ np.asarray(fusion["weights"]) + fusion["bias"])))
    fired = {"late fusion": late >= fusion["late_threshold"], "audio alone": a >= fusion["audio_threshold"],
             "camera alone": v >= fusion["camera_threshold"]}
    return {"steps": steps, "p_siren": p_siren, "camera": cam, "late": late, "fired": fired,
            "events": {k: event_score(steps, f, drive["onset"]) for k, f in fired.items()}}


def draw_banner(path: Path, rows: list[dict], fused: dict) -> int:
    """Draw the fused event into drive-boxes.mp4 after the stream (the decision needs the whole audio pass):
    a banner on each frame whose step has the late-fusion alarm on, and the emergency-vehicle boxes outlined
    as where it is. The video sink wrote one frame per result, in order. Returns the frames with the banner."""
    import os

    import cv2

    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS) or FPS
    tmp = path.with_name(f".{path.stem}.banner{path.suffix}")
    writer = None
    on = fused["fired"]["late fusion"]
    shown = 0
    try:
        for r in rows:
            ok, img = cap.read()
            if not ok:
                break
            if writer is None:
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (img.shape[1], img.shape[0]))
            k = int(np.searchsorted(fused["steps"], r["t"] + 1e-9)) - 1  # the last step at or before this frame
            if k >= 0 and on[k]:
                shown += 1
                h, w = img.shape[:2]
                cv2.rectangle(img, (0, h - 18), (w, h), (0, 0, 200), -1)
                cv2.putText(img, "EMERGENCY VEHICLE APPROACHING", (4, h - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.38,
                            (255, 255, 255), 1, cv2.LINE_AA)
                for d in r["detections"]:
                    if d["label"] == "emergency" and d["score"] >= 0.25:
                        x1, y1, x2, y2 = (int(round(v)) for v in d["box"])
                        cv2.rectangle(img, (x1 - 2, y1 - 2), (x2 + 2, y2 + 2), (0, 0, 255), 2)
            writer.write(img)
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    if writer is not None:
        os.replace(tmp, path)
    return shown


def detection_map(drive: dict, rows: list[dict]) -> dict:
    from edgemm.converters.detection_eval import coco_map
    from edgemm.detection import Boxes
    from edgemm.reference import driving as dr

    truth, found = [], []
    for r in rows:
        k = min(len(drive["boxes"]) - 1, int(round(r["t"] * FPS)))
        truth.append(Boxes(drive["boxes"][k], np.ones(len(drive["classes"][k]), np.float32), drive["classes"][k]))
        d = r["detections"]
        found.append(Boxes(np.array([x["box"] for x in d], np.float32).reshape(-1, 4),
                           np.array([x["score"] for x in d], np.float32), np.array([x["class"] for x in d], np.int64)))
    m = coco_map(truth, found, dr.CLASSES)
    return {"map50": round(float(m["map50"]), 4), "map": round(float(m["map"]), 4), "frames": len(rows)}


def _figure(plt, drive: dict, rows: list[dict], fused: dict, title: str, conf: float):
    """Detections against the objects in view, and the siren probability and the fused score against the
    siren's truth. The stream keeps boxes from 0.05 (the fusion's camera feature); the count is of confident ones."""
    from edgemm.reference import driving as dr

    fig, (ax, axs) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    frames_t = np.arange(len(drive["boxes"])) / FPS
    ax.plot(frames_t, [len(c) for c in drive["classes"]], color="k", lw=2, label="objects in view (truth)")
    ax.plot([r["t"] for r in rows], [sum(d["score"] >= conf for d in r["detections"]) for r in rows], ".", ms=4,
            color="#1f77b4", label=f"detections, score >= {conf:g} (streamed)")
    ax.plot([r["t"] for r in rows], [sum(d["label"] == "emergency" for d in r["detections"]) for r in rows], ".",
            ms=5, color="#d62728", label="emergency-vehicle boxes")
    ax.plot(frames_t, [int(np.sum(c == dr.EMERGENCY)) for c in drive["classes"]], color="#d62728", lw=1, ls="--",
            label="emergency vehicle in view (truth)")
    ax.set_ylabel("objects")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_title(title, fontsize=10)
    axs.axvspan(drive["onset"], drive["duration"], color="#fde0dd", label="siren sounding (truth)")
    axs.plot(fused["steps"], fused["p_siren"], color="#3182bd", label="siren probability")
    axs.plot(fused["steps"], fused["late"], color="#d62728", lw=2, label="late fusion score")
    for name, f in fused["fired"].items():
        e = fused["events"][name]
        if e["first_alarm_s"] is not None:
            axs.axvline(e["first_alarm_s"], ls=":", color={"late fusion": "#d62728", "audio alone": "#3182bd"}
                        .get(name, "#8c6d31"), label=f"first alarm, {name}")
    axs.set_ylim(-0.02, 1.02)
    axs.set_ylabel("probability")
    axs.set_xlabel("drive time (s)")
    axs.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    return fig


def run(args) -> int:
    from edgemm.bundle import load_bundle
    from edgemm.outputs import save_figure, write_json
    from edgemm.commands.demo import _files_line

    if args.video or args.audio or args.model or args.commands is not None:
        raise EdgemmError("Scenario: driving | Runs its own rendered drive and shipped models; expected no "
                          "--video, --audio, --model or --commands (those are the cabin scenario's).")
    duration = 20.0 if args.duration is None else args.duration
    if not 4 <= duration <= 2 * SCENE_S:
        raise EdgemmError(f"Duration: {duration:g} | Expected 4 to {2 * SCENE_S:g} seconds of drive.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    det_path = model_path("driving_detector")
    bundle = load_bundle(det_path)
    fusion = json.loads(model_path("driving_fusion.json").read_text())
    print(f"edgemm demo --scenario driving: detector {bundle.name}, siren classifier driving_audio, late fusion "
          f"({fusion['fitted_on']}); artefacts in {out}/")

    _step(1, f"Rendering a {duration:g} s drive (test-split scenes, day)")
    drive = make_drive(out, duration, args.seed)
    print(f"  {drive['video']} ({FPS:g} fps), {drive['audio']} (16 kHz); scenes {drive['seeds']}; "
          f"{drive['pattern']} siren from {drive['onset']:.2f} s")

    precision = "fp32"
    run_model = det_path
    _step(2, "Converting the detector to INT8 with `edgemm convert`")
    if args.precision == "int8":
        run_model, precision = convert_detector(det_path, out, args.threads)
    else:
        print(f"  --precision {args.precision}: running the FP32 detector as it is")

    _step(3, "Streaming the drive's video in real time through the detector (boxes + track ids to drive-boxes.mp4)")
    opts = {"model": str(run_model), "video": f"file://{drive['video'].resolve()}", "audio": None,
            # the late-fusion rule was fitted on emergency-vehicle boxes from score 0.05 up
            "conf": fusion["camera_threshold"],
            "sinks": [f"jsonl:{out / 'results.jsonl'}?mode=w", f"video:{out / 'drive-boxes.mp4'}"],
            "backend": args.backend, "threads": args.threads, "duration": None}
    pipeline = build(opts)
    src = pipeline.sources.get("video")
    collector = _DriveCollector(args.every, lambda: getattr(src, "start_time", None), pipeline.decisions.primary)
    pipeline.add_sink(collector, first=True)
    summary = stream(pipeline)
    rows = collector.rows
    if not rows:
        raise EdgemmError("Demo: driving | No result came out of the pipeline; expected detections on every frame.")

    _step(4, "Siren classifier on the drive's audio (offline on drive.wav, 1 s windows every 0.25 s), late fusion")
    fused = fuse(drive, rows, fusion)
    banner = draw_banner(out / "drive-boxes.mp4", rows, fused)
    print(f"  the event banner is on {banner} of {len(rows)} frames of drive-boxes.mp4", flush=True)

    _step(5, "Summary")
    try:
        m = detection_map(drive, rows)
    except EdgemmError as exc:  # pycocotools absent: the rest of the summary stands without the mAP
        m = {"map50": None, "map": None, "frames": len(rows), "skipped": str(exc)}
    lat = (summary.get("latency_ms") or {}).get("total") or {}
    infer = (summary.get("latency_ms") or {}).get("infer") or {}
    v = (summary.get("ports") or {}).get("video", {})
    print(f"  model        {bundle.name}, {precision}, backend {args.backend}; {summary.get('results')} results in "
          f"{summary.get('duration_s', 0):.1f} s ({summary.get('fps', 0):.1f}/s)")
    if m["map50"] is None:
        print(f"  mAP          skipped: {m['skipped']}")
    else:
        print(f"  mAP          @0.5 {100 * m['map50']:.1f}, @0.5:0.95 {100 * m['map']:.1f} on {m['frames']} streamed "
              "frames (renderer's boxes, pycocotools)")
    for name, e in fused["events"].items():
        when = f"caught {e['delay_s']:.2f} s after the siren's onset" if e["tp"] else "missed"
        print(f"  event        {name:<13} F1 {e['f1']:.2f} ({when}{'; false alarm before onset' if e['fp'] else ''})")
    if lat:
        print(f"  latency      capture to result p50 {lat['p50']:.1f} ms, p90 {lat['p90']:.1f}, p99 {lat['p99']:.1f}, "
              f"max {lat['max']:.1f}; inference alone p50 {infer.get('p50', 0):.2f} ms")
    print(f"  drops        video {v.get('dropped', 0)} of {v.get('captured', 0)} frames dropped "
          f"({v.get('source_dropped', 0)} at the source), {sum((summary.get('reconnects') or {}).values())} reconnects")

    plot, note = out / "demo.png", None
    if args.no_plot:
        note = "plot skipped (--no-plot)"
    else:
        from edgemm.lazy import import_pyplot

        try:
            plt = import_pyplot()
            e = fused["events"]["late fusion"]
            title = (f"edgemm demo --scenario driving ({precision})"
                     + ("" if m["map50"] is None else f": mAP@0.5 {100 * m['map50']:.0f}") + "; emergency vehicle "
                     "approaching " + (f"caught {e['delay_s']:.2f} s after the siren" if e["tp"] else "missed"))
            conf = bundle.manifest.graphs['model'].outputs[0].detection.conf
            save_figure(_figure(plt, drive, rows, fused, title, conf), plot)
        except EdgemmError:
            note = "plot skipped: matplotlib is not installed (pip install matplotlib)"
    report = {"scenario": "driving", "model": bundle.name, "ran": str(run_model), "precision": precision,
              "backend": args.backend, "drive": {"duration_s": duration, "fps": FPS, "seeds": drive["seeds"],
                                                 "siren_onset_s": round(drive["onset"], 3), "pattern": drive["pattern"]},
              "map": m, "events": fused["events"], "banner_frames": banner, "fusion": fusion,
              "timeline": {"t": fused["steps"].round(3).tolist(), "p_siren": fused["p_siren"].round(4).tolist(),
                           "camera": fused["camera"].round(4).tolist(), "late": fused["late"].round(4).tolist()},
              "latency_ms": {"total": lat, "infer": infer}, "pipeline": summary,
              "seconds": round(time.perf_counter() - t_start, 1)}
    write_json(out / "summary.json", report, indent=1)
    print(f"  {note}" if note else f"  plot         {plot}")
    made = [out / "summary.json", out / "results.jsonl", out / "drive-boxes.mp4", drive["video"], drive["audio"],
            plot if note is None else None] + ([run_model, out / "calib"] if precision != "fp32" else [])
    print(f"  files        {_files_line(out, made)}  ({report['seconds']:.0f} s in all)")
    return 0
