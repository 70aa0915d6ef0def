"""`edgemm demo --scenario driving`: a rendered drive streamed through the runtime, camera and microphone live.

  1. renders a drive (drive.mp4 at 10 fps + drive.wav, default 20 s) with edgemm/reference/driving.py from
     test-split scene seeds: traffic first, then an emergency vehicle whose siren is heard before it comes
     into view in the oncoming lane;
  2. converts the shipped intermediate-fusion bundle (edgemm/reference/models/driving_intermediate: the
     driving detector and the siren classifier as encoders, a small head) to INT8 with `edgemm convert`,
     calibrated on frames and microphone windows of validation-split scenes;
  3. streams drive.mp4 and drive.wav through the runtime in real time, as a camera and a microphone deliver
     them: the detector runs on every frame, the siren classifier on the microphone path at its own rate
     (the bundle's fusion.rates_hz, 4 Hz on the last 1 s), the head on their freshest embeddings; the
     `video:` sink writes drive-boxes.mp4 with boxes and track ids. The event is decided LIVE, step by step
     as results arrive (LiveEvent): late fusion (driving_fusion.json: smoothed siren probability and best
     emergency-vehicle box score, logistic regression, thresholds), the intermediate head's probability,
     and each modality alone; an alarm is printed when it starts;
  4. draws the live late-fusion decision as a banner into drive-boxes.mp4 (a pass over the written file: the
     video sink writes boxes, the banner is the demo's own);
  5. ends with mAP against the renderer's boxes, the event's F1 and detection delay (late and intermediate
     fusion, audio alone, camera alone), latency percentiles and drops, and demo.png.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from edgemm.commands.run import build, stream
from edgemm.errors import EdgemmError
from edgemm.reference import model_path
from edgemm.reference.driving import late_fusion
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


def convert_bundle(model: Path, out: Path, threads) -> tuple[Path, str]:
    """`edgemm convert` to INT8, calibrated on frames and microphone windows of validation-split scenes
    (never the drive's), plain and masked."""
    from edgemm.commands.demo import converters_importable, run_convert
    from edgemm.preprocess import preprocess_audio, preprocess_video
    from edgemm.reference import driving as dr

    if not converters_importable():
        return model, "fp32"
    calib = out / "calib"
    calib.mkdir(parents=True, exist_ok=True)
    vspec, aspec = dr.video_spec(), dr.audio_spec()
    frames, windows = [], []
    for s in range(16):
        sc = dr.make_scene(VAL_SEEDS + s)
        mix = dr.render_audio(sc, masked=s % 3 == 0)["mix"]
        for t, c in zip((1.0, 3.5, 6.0, 8.5), dr.CONDITIONS):
            frames.append(preprocess_video(dr.render_frame(sc, t, c)[0], vspec))
            b = int(round(t * dr.SAMPLE_RATE))
            windows.append(preprocess_audio(mix[b - dr.SAMPLE_RATE:b], aspec))
    np.savez(calib / "frames.npz", images=np.concatenate(frames), audio=np.concatenate(windows))
    dest = out / "model-int8"
    argv = [str(model), "-o", str(dest), "--precision", "int8", "--calib", str(calib), "--bench-seconds", "1",
            "--force", "--quiet"] + (["--threads", str(threads)] if threads else [])
    run_convert(argv)
    return dest, "int8"


class LiveEvent:
    """The event "emergency vehicle approaching", decided step by step as the stream's results arrive.

    Steps of ``fusion["step_s"]`` from 1 s on, as the fusion was fitted (benchmarks/eval_driving.py): the
    results in (step - step_s, step] belong to the step; a step closes when a later result arrives. Per step:
    the freshest siren probability, the best emergency-vehicle box score and the head's probability of the
    event, each smoothed (EMA); late fusion, the head and each modality alone decide by their thresholds."""

    KINDS = ("late fusion", "intermediate fusion", "audio alone", "camera alone")

    def __init__(self, fusion: dict, say=print):
        self.f, self.say = fusion, say
        self.step_s, self.ema = fusion["step_s"], fusion["ema"]
        self.next_t = 1.0
        self.fresh = {"p_siren": 0.0, "camera": 0.0, "p_event": 0.0}
        self.smooth = {k: 0.0 for k in self.fresh}
        self.steps: list[dict] = []
        self.on = {k: False for k in self.KINDS}

    def add(self, t: float, p_siren: float | None, camera: float, p_event: float | None) -> None:
        while t > self.next_t + 1e-9:
            self._close()
        if p_siren is not None:
            self.fresh["p_siren"] = p_siren
        if p_event is not None:
            self.fresh["p_event"] = p_event
        self.fresh["camera"] = max(self.fresh["camera"], camera)

    def _close(self) -> None:
        for k, v in self.fresh.items():
            self.smooth[k] = self.ema * self.smooth[k] + (1 - self.ema) * v
        a, v, m = self.smooth["p_siren"], self.smooth["camera"], self.smooth["p_event"]
        late = float(late_fusion(self.f, a, v))
        fired = {"late fusion": late >= self.f["late_threshold"],
                 "intermediate fusion": m >= self.f["intermediate_threshold"],
                 "audio alone": a >= self.f["audio_threshold"], "camera alone": v >= self.f["camera_threshold"]}
        for k, f in fired.items():
            if f and not self.on[k]:
                self.say(f"  t={self.next_t:6.2f}s  ALARM ({k}): emergency vehicle approaching")
            self.on[k] = bool(f)
        self.steps.append({"t": self.next_t, **dict(self.fresh), "late": float(late), "intermediate": m,
                           "fired": {k: bool(f) for k, f in fired.items()}})
        self.fresh["camera"] = 0.0  # the box score is the best of its step; the probabilities stay the freshest
        self.next_t += self.step_s

    def close(self, end: float) -> None:
        while self.next_t <= end + 1e-9:
            self._close()


def _probability(out: dict | None, label: str) -> float | None:
    """The probability of `label` in a decoded classification output (its top list has every label here)."""
    if not out:
        return None
    return next((p for name, p in out.get("top", []) if name == label), 0.0)


class _DriveCollector(Sink):
    """Keeps every streamed result (media time, boxes, siren and event probabilities, latency), feeds the live
    event decision, and prints some results as they come."""

    name = "demo"

    def __init__(self, every: int, start_time_of, live: LiveEvent, boxes: str = "output0"):
        # (not "event": Sink.event receives the pipeline's events)
        self.every, self.start_time_of, self.live, self.boxes = max(1, every), start_time_of, live, boxes
        self.rows: list[dict] = []

    def result(self, record, frame=None):
        outs = record["outputs"]
        t0 = self.start_time_of()
        t = max(0.0, record["t"] - (t0 if t0 is not None else record["t"]))
        dets = (outs.get(self.boxes) or {}).get("detections", [])
        # a modality the head ran without (not yet heard, or stale) has no probability this tick
        degraded = record.get("degraded") or []
        row = {"t": t, "detections": dets, "latency_ms": record["latency_ms"].get("total"),
               "p_siren": None if "audio" in degraded else _probability(outs.get("siren"), "siren"),
               "p_event": _probability(outs.get("event"), "approaching")}
        self.rows.append(row)
        self.live.add(t, row["p_siren"], max([0.0] + [d["score"] for d in dets if d["label"] == "emergency"]),
                       row["p_event"])
        if (len(self.rows) - 1) % self.every == 0:
            counts = ", ".join(f"{n} {k}" for k, n in sorted((outs.get(self.boxes) or {}).get("counts", {}).items()))
            siren = "—" if row["p_siren"] is None else f"{row['p_siren']:.2f}"
            print(f"  t={t:6.2f}s  {counts or 'nothing'}; siren p {siren}; latency {row['latency_ms']:.1f} ms",
                  flush=True)


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


def fused_timeline(drive: dict, event: LiveEvent) -> dict:
    """The live decisions, as arrays over the steps, and each kind's event score on this drive."""
    event.close(drive["duration"])
    st = event.steps
    steps = np.array([s["t"] for s in st])
    fired = {k: np.array([s["fired"][k] for s in st], bool) for k in LiveEvent.KINDS}
    return {"steps": steps, "p_siren": np.array([s["p_siren"] for s in st]),
            "camera": np.array([s["camera"] for s in st]), "late": np.array([s["late"] for s in st]),
            "intermediate": np.array([s["intermediate"] for s in st]), "fired": fired,
            "events": {k: event_score(steps, f, drive["onset"]) for k, f in fired.items()}}


def draw_banner(path: Path, rows: list[dict], fused: dict) -> int:
    """Draw the live late-fusion decision into drive-boxes.mp4 after the stream (the video sink draws boxes
    and track ids; the banner is this demo's): a banner on each frame whose step had the alarm on, and the
    emergency-vehicle boxes outlined as where it is. The video sink wrote one frame per result, in order.
    Returns the frames with the banner."""
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
    axs.plot(fused["steps"], fused["intermediate"], color="#2ca02c", lw=1.5, label="intermediate head (smoothed)")
    for name, f in fused["fired"].items():
        e = fused["events"][name]
        if e["first_alarm_s"] is not None:
            axs.axvline(e["first_alarm_s"], ls=":", color={"late fusion": "#d62728", "audio alone": "#3182bd", "intermediate fusion": "#2ca02c"}
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
    mid_path = model_path("driving_intermediate")
    bundle = load_bundle(mid_path)
    fusion = json.loads(model_path("driving_fusion.json").read_text())
    rates = ", ".join(f"{m} {hz:g} Hz" for m, hz in bundle.manifest.fusion.rates_hz.items())
    print(f"edgemm demo --scenario driving: {bundle.name} (detector + siren classifier as encoders at {rates}, "
          f"a fused head), late fusion ({fusion['fitted_on']}); artefacts in {out}/")

    _step(1, f"Rendering a {duration:g} s drive (test-split scenes, day)")
    drive = make_drive(out, duration, args.seed)
    print(f"  {drive['video']} ({FPS:g} fps), {drive['audio']} (16 kHz); scenes {drive['seeds']}; "
          f"{drive['pattern']} siren from {drive['onset']:.2f} s")

    precision = "fp32"
    run_model = mid_path
    _step(2, "Converting the bundle (detector, siren classifier, head) to INT8 with `edgemm convert`")
    if args.precision == "int8":
        run_model, precision = convert_bundle(mid_path, out, args.threads)
    else:
        print(f"  --precision {args.precision}: running the FP32 bundle as it is")

    _step(3, "Streaming the drive's camera and microphone in real time: boxes + track ids to drive-boxes.mp4, "
             "the siren classifier on the microphone path, the event decided live")
    opts = {"model": str(run_model), "video": f"file://{drive['video'].resolve()}",
            "audio": f"file://{drive['audio'].resolve()}",
            # the late-fusion rule was fitted on emergency-vehicle boxes from this score up
            "conf": fusion["camera_min_score"],
            "sinks": [f"jsonl:{out / 'results.jsonl'}?mode=w", f"video:{out / 'drive-boxes.mp4'}"],
            "backend": args.backend, "threads": args.threads, "duration": None}
    pipeline = build(opts)
    src = pipeline.sources.get("video")
    event = LiveEvent(fusion)
    collector = _DriveCollector(args.every, lambda: getattr(src, "start_time", None), event)
    pipeline.add_sink(collector, first=True)
    summary = stream(pipeline)
    rows = collector.rows
    if not rows:
        raise EdgemmError("Demo: driving | No result came out of the pipeline; expected detections on every frame.")
    fused = fused_timeline(drive, event)

    _step(4, "The live late-fusion alarm as a banner in drive-boxes.mp4")
    banner = draw_banner(out / "drive-boxes.mp4", rows, fused)
    print(f"  the event banner is on {banner} of {len(rows)} frames of drive-boxes.mp4", flush=True)

    _step(5, "Summary")
    try:
        m = detection_map(drive, rows)
    except EdgemmError as exc:  # pycocotools absent: the rest of the summary stands without the mAP
        m = {"map50": None, "map": None, "frames": len(rows), "skipped": str(exc)}
    lat = (summary.get("latency_ms") or {}).get("total") or {}
    infer = (summary.get("latency_ms") or {}).get("infer") or {}
    v, a = ((summary.get("ports") or {}).get(k, {}) for k in ("video", "audio"))
    print(f"  model        {bundle.name}, {precision}, backend {args.backend}; {summary.get('results')} results in "
          f"{summary.get('duration_s', 0):.1f} s ({summary.get('fps', 0):.1f}/s)")
    if m["map50"] is None:
        print(f"  mAP          skipped: {m['skipped']}")
    else:
        print(f"  mAP          @0.5 {100 * m['map50']:.1f}, @0.5:0.95 {100 * m['map']:.1f} on {m['frames']} streamed "
              "frames (renderer's boxes, pycocotools)")
    for name, e in fused["events"].items():
        when = f"caught {e['delay_s']:.2f} s after the siren's onset" if e["tp"] else "missed"
        print(f"  event        {name:<19} F1 {e['f1']:.2f} ({when}{'; false alarm before onset' if e['fp'] else ''})")
    if lat:
        print(f"  latency      capture to result p50 {lat['p50']:.1f} ms, p90 {lat['p90']:.1f}, p99 {lat['p99']:.1f}, "
              f"max {lat['max']:.1f}; inference alone p50 {infer.get('p50', 0):.2f} ms")
    print(f"  drops        video {v.get('dropped', 0)} of {v.get('captured', 0)} frames dropped "
          f"({v.get('source_dropped', 0)} at the source); audio {a.get('dropped', 0)} dropped; "
          f"{sum((summary.get('reconnects') or {}).values())} reconnects")

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
            conf = next(o.detection.conf for g in bundle.manifest.graphs.values() for o in g.outputs
                        if o.detection is not None)
            save_figure(_figure(plt, drive, rows, fused, title, conf), plot)
        except EdgemmError:
            note = "plot skipped: matplotlib is not installed (pip install matplotlib)"
    report = {"scenario": "driving", "model": bundle.name, "ran": str(run_model), "precision": precision,
              "backend": args.backend, "drive": {"duration_s": duration, "fps": FPS, "seeds": drive["seeds"],
                                                 "siren_onset_s": round(drive["onset"], 3), "pattern": drive["pattern"]},
              "map": m, "events": fused["events"], "banner_frames": banner, "fusion": fusion,
              "timeline": {"t": fused["steps"].round(3).tolist(), "p_siren": fused["p_siren"].round(4).tolist(),
                           "camera": fused["camera"].round(4).tolist(), "late": fused["late"].round(4).tolist(),
                           "intermediate": fused["intermediate"].round(4).tolist()},
              "latency_ms": {"total": lat, "infer": infer}, "pipeline": summary,
              "seconds": round(time.perf_counter() - t_start, 1)}
    write_json(out / "summary.json", report, indent=1)
    print(f"  {note}" if note else f"  plot         {plot}")
    made = [out / "summary.json", out / "results.jsonl", out / "drive-boxes.mp4", drive["video"], drive["audio"],
            plot if note is None else None] + ([run_model, out / "calib"] if precision != "fp32" else [])
    print(f"  files        {_files_line(out, made)}  ({report['seconds']:.0f} s in all)")
    return 0
