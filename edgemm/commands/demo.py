"""See the whole job on this machine: data, INT8 conversion, live streaming, accuracy and latency.

With no camera, microphone or GPU needed, it
  1. renders a 19 s in-cabin clip (clip.mp4 + clip.wav): an occupant shows and says 12 digit commands,
     with a hand over the lens, loud road noise, night, and night with road noise along the way
     (test-split digits and voices);
  2. converts the shipped reference fusion model (AV-digits, intermediate fusion) to INT8 with
     `edgemm convert`, calibrated on separate validation-split material;
  3. streams the clip through the runtime in real time, as a camera and a microphone deliver it,
     printing results as they come with their latency;
  4. ends with accuracy against the clip's ground truth (per command and per result, per condition,
     and what the camera or the microphone alone would have got), latency percentiles, drops, and a
     plot (demo.png).
With --video/--audio it runs the same converted model on real devices instead (no ground truth).
Examples:
  edgemm demo                                   artefacts in ./edgemm-demo
  edgemm demo --out /tmp/demo --precision fp32
  edgemm demo --video v4l2:///dev/video0 --audio mic://default --duration 30
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from edgemm.commands.run import build, stream
from edgemm.errors import EdgemmError
from edgemm.reference import model_path
from edgemm.runners import BACKEND_HELP
from edgemm.sink_base import Sink

# --help imports every command: modules that load onnx, onnxruntime or cv2 (the reference clip, bundles, the
# converters), or matplotlib, are imported inside functions.


# Every numeric flag, finite and in range (checked by the CLI before the command runs: edgemm.errors.check_numbers).
NUMBER_BOUNDS = {
    "duration": ("Duration", "s", {"positive": True, "maximum": 86400}),
    "commands": ("Commands", "", {"minimum": 1, "maximum": 60}),  # the clip is rendered: 1.6 s each
    "threads": ("Threads", "", {"minimum": 1, "maximum": 1024}),
    "every": ("Every", "", {"minimum": 1, "maximum": 10**6}),
    "seed": ("Seed", "", {"minimum": 0, "maximum": 2**32 - 1}),
}

def add_arguments(p) -> None:
    p.add_argument("--out", default="edgemm-demo", metavar="DIR", help="folder for the artefacts (default ./edgemm-demo)")
    p.add_argument("--model", metavar="BUNDLE", help="fusion bundle to run (default: the shipped AV-digits reference, "
                                                     "intermediate fusion)")
    p.add_argument("--precision", default="int8", choices=("int8", "fp16", "fp32"),
                   help="convert the model to this precision first (default int8)")
    p.add_argument("--video", metavar="URI", help="a real camera (v4l2:///dev/video0, rtsp://...) instead of the clip")
    p.add_argument("--audio", metavar="URI", help="a real microphone (mic://default) instead of the clip")
    p.add_argument("--duration", type=float, metavar="S", help="with --video/--audio: stop after S seconds (default 20)")
    p.add_argument("--commands", type=int, metavar="N", help="commands in the clip (default 12; 1.6 s each)")
    p.add_argument("--backend", default="onnxruntime", metavar="B", help=BACKEND_HELP)
    p.add_argument("--threads", type=int, metavar="N", help="intra-op threads of the model")
    p.add_argument("--every", type=int, default=3, metavar="K", help="print every K-th result (default 3; 1: all)")
    p.add_argument("--no-plot", action="store_true", help="do not draw demo.png")
    p.add_argument("--seed", type=int, default=0, help="seed of the clip's rendering (default 0)")
    p.add_argument("--scenario", default="cabin", choices=("cabin", "driving"),
                   help="cabin: digit commands shown and said (default); driving: a rendered drive, the INT8 "
                        "detector streamed with boxes and track ids, a siren, the fused emergency-vehicle event "
                        "(edgemm/commands/_demo_driving.py; --duration is the drive's length, 4 to 20 s)")


# --------------------------------------------------------------------------------------------------


def _step(n: int, text: str) -> None:
    print(f"\n[{n}/4] {text}", flush=True)


def _script(n: int | None):
    from edgemm.reference.clip import DEFAULT_CONDITIONS, DEFAULT_DIGITS

    if n is None:
        return DEFAULT_DIGITS, DEFAULT_CONDITIONS
    if n < 1 or n > 60:
        raise EdgemmError(f"Commands: {n} | Expected 1 to 60 commands in the clip.")
    # Keep the conditions in blocks, in the default order, whatever the length.
    digits = [DEFAULT_DIGITS[i % len(DEFAULT_DIGITS)] for i in range(n)]
    conds = [DEFAULT_CONDITIONS[min(len(DEFAULT_CONDITIONS) - 1, i * len(DEFAULT_CONDITIONS) // n)] for i in range(n)]
    return digits, conds


def _check_clip_model(bundle) -> None:
    """The clip's ground truth is AV-digits commands: the model must answer in those labels."""
    from edgemm.reference.avdigits import LABELS

    outs = [o for g in bundle.manifest.graphs.values() for o in g.outputs if o.task == "classification"]
    if not any(o.labels == LABELS for o in outs) or not bundle.manifest.modalities():
        raise EdgemmError(f"Model: {bundle.source or bundle.root} | Does not answer AV-digits commands from a camera "
                          "or a microphone; expected a model with a 10-class digit output such as "
                          "benchmarks/models/avdigits_early "
                          "(run other models on sensors with --video/--audio, or with `edgemm run`).")


def _convert(model: Path, precision: str, out: Path, threads, backend: str = "onnxruntime") -> tuple[Path, str]:
    """Run `edgemm convert` on the model; returns (bundle to run, precision it has)."""
    from edgemm.reference.clip import calibration_folder, calibration_samples

    if precision == "fp32":
        print(f"  running the FP32 model as it is: {model}")
        return model, "fp32"
    if not converters_importable():
        return model, "fp32"
    # Calibration and the accuracy guard's evaluation both come from validation-split material (other
    # images and speakers than the clip's), rendered with different seeds.
    calib = calibration_folder(out / "calib", n=64, seed=1)
    evald = out / "eval"
    evald.mkdir(parents=True, exist_ok=True)
    np.savez(evald / "eval.npz", **calibration_samples(n=100, seed=2))
    dest = out / f"model-{precision}"
    argv = [str(model), "-o", str(dest), "--precision", precision, "--calib", str(calib), "--eval", str(evald),
            "--max-drop", "1.0", "--bench-seconds", "1", "--force", "--quiet"]
    if threads:
        argv += ["--threads", str(threads)]
    if backend.startswith("tensorrt") or backend.endswith(":tensorrt"):
        argv += ["--target", "tensorrt"]  # TensorRT's symmetric Q/DQ placement, and the engine where it can build
    elif backend in ("openvino", "ov"):
        argv += ["--target", "openvino"]  # Q/DQ that OpenVINO's INT8 kernels run, timed under OpenVINO
    run_convert(argv)
    return dest, precision


def converters_importable() -> bool:
    """The converters ship with edgemm, but a dependency of theirs may be missing here: then the demo runs
    the FP32 model and says so plainly."""
    try:
        import edgemm.converters.convert  # noqa: F401
    except ImportError as exc:
        print(f"  NOTE: the converters are not importable here ({exc}); running the FP32 model instead")
        return False
    return True


def run_convert(argv: list[str]) -> None:
    """`edgemm convert ARGV`, shown as the user would type it and timed."""
    from edgemm.commands import convert as convert_cmd

    parser = argparse.ArgumentParser(add_help=False)
    convert_cmd.add_arguments(parser)
    args = parser.parse_args(argv)
    print(f"  edgemm convert {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    convert_cmd.run(args)
    print(f"  converted in {time.perf_counter() - t0:.1f} s", flush=True)


class _Collector(Sink):
    """A pipeline sink that keeps every result, prints some as they come
    and closes each command with its decision."""

    name = "demo"

    def __init__(self, clip, every: int, start_time_of, primary: str):
        self.clip = clip
        self.every = max(1, every)
        self.start_time_of = start_time_of  # callable -> the clip's time 0 on the pipeline clock (None: live)
        self.primary = primary  # the decision output (edgemm.decisions.primary_output)
        self._t_first: float | None = None
        self.rows: list[dict] = []
        self._seg = None
        self._seg_rows: list[dict] = []

    # Sink protocol -----------------------------------------------------------------------------------
    def event(self, event):
        rest = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("event", "t"))
        print(f"  EVENT {event['event']} {rest}", flush=True)

    def close(self):
        self._close_segment()

    def result(self, record, frame=None):
        out = record["outputs"][self.primary]
        if self._t_first is None:
            self._t_first = record["t"]
        t0 = self.start_time_of()
        media_t = record["t"] - (t0 if t0 is not None else self._t_first)  # live: from the first result
        if -0.05 < media_t < 0:  # the first frame, at media time 0, less rounding of the record's time
            media_t = 0.0
        seg = self.clip.segment_at(media_t) if self.clip else None
        row = {"t": media_t, "label": out.get("label"), "score": out.get("score"), "top": out.get("top", []),
               "latency_ms": record["latency_ms"].get("total"), "infer_ms": record["latency_ms"].get("infer"),
               "ran": list(record.get("ran") or []),
               "degraded": list(record.get("degraded") or []), "truth": None if seg is None else str(seg.digit),
               "segment": None if seg is None else seg.index, "condition": None if seg is None else seg.condition}
        self.rows.append(row)
        if self.clip is not None and seg is not self._seg:
            self._close_segment()
            self._seg, self._seg_rows = seg, []
        self._seg_rows.append(row)
        if (len(self.rows) - 1) % self.every == 0:
            mark = "" if row["truth"] is None else ("  ok " if row["label"] == row["truth"] else "  MISS")
            truth = "" if row["truth"] is None else f"  truth {row['truth']}"
            deg = f"  missing: {','.join(row['degraded'])}" if row["degraded"] else ""
            said = (f"predicted {row['label']} ({row['score']:.2f})" if row["score"] is not None
                    else f"output {out.get('label', out.get('values'))}")  # regression / embedding outputs
            print(f"  t={media_t:6.2f}s  {said}{truth}{mark}  latency {row['latency_ms']:.1f} ms{deg}", flush=True)

    def _close_segment(self):
        if self._seg is None or not self._seg_rows:
            return
        from edgemm.reference.clip import CONDITIONS

        seg, label, n = self._seg, *decide(self._seg_rows)
        lat = sorted(r["latency_ms"] for r in self._seg_rows)
        ok = "correct" if label == str(seg.digit) else "WRONG"
        print(f"  == command {seg.index + 1}: shown and said {seg.digit} ({CONDITIONS[seg.condition]}) -> decided "
              f"{label} from {n} results: {ok}; latency max {lat[-1]:.1f} ms", flush=True)
        self._seg = None


def decide(rows: list[dict]) -> tuple[str | None, int]:
    """A command's decision: the label with the highest mean probability over its results (top-3 each)."""
    totals: dict[str, float] = {}
    for r in rows:
        for label, p in r["top"] or [[r["label"], r["score"]]]:
            totals[label] = totals.get(label, 0.0) + float(p)
    if not totals:
        return None, 0
    return max(totals, key=totals.get), len(rows)


def _files_line(out: Path, paths) -> str:
    """What the demo made, in one style: the folder once, then names in it (folders with a slash).
    Paths outside it (a model run as it is) are not the demo's and are left out."""
    names = []
    for p in paths:
        if p is None or not Path(p).exists():
            continue
        try:
            rel = Path(p).resolve().relative_to(out.resolve())
        except ValueError:
            continue
        names.append(rel.as_posix() + ("/" if Path(p).is_dir() else ""))
    return f"{out}/: " + ", ".join(dict.fromkeys(names))


def _pc(k: int, n: int) -> str:
    return f"{100 * k / n:.0f} %" if n else "-"


def _percentiles(values_ms) -> dict:
    from edgemm.bench import latency_stats

    v = [x / 1e3 for x in values_ms if x is not None]
    if not v:
        return {}
    stats = latency_stats(v)
    return {k: round(stats[k], 3) for k in ("p50", "p90", "p99", "max")} | {"count": len(v)}


def _alone(clip, rows: list[dict], late_model: Path) -> dict:
    """What the camera alone and the microphone alone would have decided on the same clip: the two
    single-modality reference models (the members of the shipped late-fusion bundle) run offline on the
    frame and audio window of every streamed result."""
    from edgemm.bundle import load_bundle
    from edgemm.fusion import FusionModel
    from edgemm.media import read_video_frames, read_wav
    from edgemm.preprocess import preprocess_audio, preprocess_video

    bundle = load_bundle(late_model)
    frames = read_video_frames(clip.video)
    wav, sr = read_wav(clip.audio)
    specs = {s.modality: s for _, s in bundle.manifest.all_inputs() if s.modality in ("video", "audio")}
    win = specs["audio"].preprocess.window_samples
    video, audio = [], []
    for r in rows:
        k = min(len(frames) - 1, max(0, int(round(r["t"] * clip.fps))))
        end = int(round(r["t"] * sr))
        video.append(preprocess_video(frames[k], specs["video"]))
        audio.append(preprocess_audio(wav[max(0, end - win):max(0, end)], specs["audio"]))
    out = {}
    with FusionModel(bundle) as fm:
        tensors = {"video": np.concatenate(video), "audio": np.concatenate(audio)}
        for mod in ("video", "audio"):
            logits = fm.member(mod, tensors)["digit"]
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            labels = fm.output_specs["digit"].labels
            out[mod] = [{"label": labels[int(i)], "top": [[labels[int(j)], float(q[j])] for j in np.argsort(-q)[:3]]}
                        for i, q in zip(p.argmax(1), p)]
    return out


def _score(clip, rows: list[dict], alone: dict | None) -> dict:
    from edgemm.reference.clip import CONDITIONS

    scored = [r for r in rows if r["truth"] is not None]
    res = {"results": len(rows), "results_scored": len(scored),
           "result_accuracy": round(sum(r["label"] == r["truth"] for r in scored) / len(scored), 4) if scored else None}
    commands, by_cond = [], {}
    for seg in clip.segments:
        seg_rows = [r for r in scored if r["segment"] == seg.index]
        label, n = decide(seg_rows)
        entry = {"index": seg.index, "digit": str(seg.digit), "condition": seg.condition, "decided": label,
                 "results": n, "correct": label == str(seg.digit)}
        if alone:
            for mod, preds in alone.items():
                mine = [preds[i] for i, r in enumerate(rows) if r["segment"] == seg.index]
                entry[f"{mod}_alone"] = decide(mine)[0]
        commands.append(entry)
        c = by_cond.setdefault(seg.condition, {"name": CONDITIONS[seg.condition], "commands": 0, "correct": 0,
                                               "video_alone": 0, "audio_alone": 0, "results": 0,
                                               "results_correct": 0, "results_video_alone": 0,
                                               "results_audio_alone": 0})
        for i, r in enumerate(rows):
            if r["segment"] == seg.index and r["truth"] is not None:
                c["results"] += 1
                c["results_correct"] += r["label"] == r["truth"]
                for mod in ("video", "audio"):
                    if alone:
                        c[f"results_{mod}_alone"] += alone[mod][i]["label"] == r["truth"]
        c["commands"] += 1
        c["correct"] += entry["correct"]
        for mod in ("video", "audio"):
            if entry.get(f"{mod}_alone") is not None:
                c[f"{mod}_alone"] += entry[f"{mod}_alone"] == entry["digit"]
    res["commands"] = commands
    res["command_accuracy"] = round(sum(c["correct"] for c in commands) / len(commands), 4) if commands else None
    res["by_condition"] = by_cond
    if alone:
        for mod in ("video", "audio"):
            res[f"{mod}_alone_command_accuracy"] = round(
                sum(c.get(f"{mod}_alone") == c["digit"] for c in commands) / len(commands), 4)
            res[f"{mod}_alone_result_accuracy"] = round(
                sum(p["label"] == r["truth"] for p, r in zip(alone[mod], rows) if r["truth"] is not None)
                / max(1, len(scored)), 4)
    return res


def _plot(path: Path, clip, rows: list[dict], alone: dict | None, title: str, who: str = "fusion") -> str | None:
    """Timeline of predictions against the truth, and latency per result. Returns a note when skipped."""
    from edgemm.lazy import import_pyplot
    from edgemm.outputs import save_figure

    try:
        plt = import_pyplot()
    except EdgemmError:
        return "plot skipped: matplotlib is not installed (pip install matplotlib)"
    save_figure(_figure(plt, clip, rows, alone, title, who), path)
    return None


def _ran_label(ran: tuple[str, ...]) -> str:
    """The graphs run for a result, in words: the latency panel's bands are these sets."""
    if ran == ("head",):
        return "head only (embeddings reused)"
    return " + ".join(g.replace("_", " ") for g in ran)


def _figure(plt, clip, rows: list[dict], alone: dict | None, title: str, who: str = "fusion"):
    from matplotlib.patches import Patch

    from edgemm.reference.clip import CONDITIONS

    fig, (ax, axl) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    shades = {"clean": "#ffffff", "occluded": "#f3e1c7", "noisy": "#d7e6f5", "night": "#d9d9d9",
              "night+noisy": "#c6c3dc"}
    if clip is not None:
        seen = set()
        for seg in clip.segments:
            lab = CONDITIONS[seg.condition] if seg.condition not in seen else None
            seen.add(seg.condition)
            ax.axvspan(seg.start_s, seg.end_s, color=shades.get(seg.condition, "#ffffff"), alpha=0.8, lw=0, label=lab)
            ax.hlines(seg.digit, seg.start_s, seg.end_s, colors="k", lw=3, label="truth" if seg.index == 0 else None)
            ax.hlines(-0.45, seg.word_start_s, seg.word_end_s, colors="#9467bd", lw=4,
                      label="word spoken" if seg.index == 0 else None)
    t = [r["t"] for r in rows]
    y = [int(r["label"]) if r["label"] is not None and str(r["label"]).isdigit() else -1 for r in rows]
    if alone:
        for mod, dy, color in (("video", -0.22, "#8c6d31"), ("audio", 0.22, "#3182bd")):
            ya = [int(p["label"]) + dy for p in alone[mod]]
            ax.scatter(t, ya, s=6, c=color, alpha=0.6, label=f"{'camera' if mod == 'video' else 'microphone'} alone")
    ok = [r["truth"] is None or r["label"] == r["truth"] for r in rows]
    ax.scatter([a for a, g in zip(t, ok) if g], [b for b, g in zip(y, ok) if g], s=14, c="#2ca02c",
               label=f"{who} (streamed)", zorder=3)
    ax.scatter([a for a, g in zip(t, ok) if not g], [b for b, g in zip(y, ok) if not g], s=22, c="#d62728",
               marker="x", label=f"{who}, wrong", zorder=4)
    ax.set_yticks(range(10))
    ax.set_ylabel("digit command")
    ax.set_ylim(-0.7, 9.7)
    legend = ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    for handle in legend.legend_handles:  # condition shades get an outline: "clean" is white on white
        if isinstance(handle, Patch):
            handle.set_edgecolor("#888888")
            handle.set_linewidth(0.6)
    ax.set_title(title, fontsize=10)
    lat = [r["latency_ms"] for r in rows]
    # The latency comes in bands, one per set of graphs run for a result: an encoder runs at its own rate
    # and the head reuses the other's embedding in between. Each band is coloured and named.
    bands: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        bands.setdefault(tuple(r.get("ran") or ()), []).append(i)
    colors = ("#555555", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b")
    for k, (ran, idx) in enumerate(sorted(bands.items(), key=lambda b: len(b[0]))):
        axl.plot([t[i] for i in idx], [lat[i] for i in idx], ".", ms=3, color=colors[k % len(colors)],
                 label=_ran_label(ran) if ran else "result")
    if lat:
        for q, ls in ((50, "-"), (99, "--")):
            v = float(np.percentile(lat, q))
            axl.axhline(v, ls=ls, color="#d62728", lw=1, label=f"p{q} {v:.1f} ms")
        axl.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    axl.set_ylabel("latency (ms)\ncapture to result")
    axl.set_xlabel("clip time (s)    (colours: the graphs run for each result; each graph's first runs are "
                   "slower, warming up)")
    fig.tight_layout()
    return fig


def run(args) -> int:
    from edgemm.bundle import load_bundle
    from edgemm.outputs import write_json

    if getattr(args, "scenario", "cabin") == "driving":
        from edgemm.commands import _demo_driving as demo_driving

        return demo_driving.run(args)
    live = bool(args.video or args.audio)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else model_path("avdigits_intermediate")
    bundle = load_bundle(model)  # fails here, with one line, on a broken bundle
    if not live:
        _check_clip_model(bundle)
    t_start = time.perf_counter()
    print(f"edgemm demo: model {bundle.name} ({bundle.manifest.fusion.form} fusion of "
          f"{' + '.join(bundle.manifest.modalities())}); artefacts in {out}/")

    clip = None
    if live:
        _step(1, f"Live sensors: video {args.video or '(none)'}, audio {args.audio or '(none)'} (no ground truth)")
    else:
        from edgemm.reference.clip import make_clip

        digits, conds = _script(args.commands)
        _step(1, f"Making the clip: {len(digits)} voice + gesture commands, test-split digits and voices")
        clip = make_clip(out, digits, conds, seed=args.seed)
        print(f"  {clip.video} ({clip.duration_s:.1f} s, {clip.fps:g} fps), {clip.audio} (16 kHz), {clip.truth}")
        print("  script: " + ", ".join(f"{s.digit}" + ("" if s.condition == "clean" else f" [{s.condition}]")
                                       for s in clip.segments))

    _step(2, f"Converting the model to {args.precision.upper()} with `edgemm convert`")
    run_model, precision = _convert(model, args.precision, out, args.threads, args.backend)

    duration = args.duration if args.duration is not None else (20.0 if live else None)
    _step(3, ("Streaming the live sensors" if live else "Streaming the clip in real time (as a camera and a microphone "
              "deliver it)") + (f" for {duration:g} s" if duration else ""))
    opts = {"model": str(run_model), "video": args.video or (None if live else f"file://{clip.video.resolve()}"),
            "audio": args.audio or (None if live else f"file://{clip.audio.resolve()}"),
            "sinks": [f"jsonl:{out / 'results.jsonl'}?mode=w"], "backend": args.backend, "threads": args.threads,
            "duration": duration}
    pipeline = build(opts)
    ref_source = pipeline.sources.get("video") or pipeline.sources.get("audio")
    collector = _Collector(clip, args.every, lambda: getattr(ref_source, "start_time", None),
                           primary=pipeline.decisions.primary)
    pipeline.add_sink(collector, first=True)
    summary = stream(pipeline)
    rows = collector.rows

    _step(4, "Summary")
    alone = None
    if clip is not None and rows:
        late = model_path("avdigits_late")
        if late.exists():
            alone = _alone(clip, rows, late)
    score = _score(clip, rows, alone) if clip is not None else {"results": len(rows)}
    ports = summary.get("ports", {})
    lat = summary.get("latency_ms", {})
    total, infer = lat.get("total") or {}, lat.get("infer") or {}
    fused = len(bundle.manifest.modalities()) > 1
    kind = f"{summary.get('form')} fusion" if fused else f"{bundle.manifest.modalities()[0]} only"
    print(f"  model        {bundle.name}, {precision}, {kind}, backend {args.backend}; "
          f"{summary.get('results')} results in {summary.get('duration_s', 0):.1f} s ({summary.get('fps', 0):.1f}/s)")
    if clip is not None and score.get("commands"):
        n_cmd = len(score["commands"])
        n_ok = sum(c["correct"] for c in score["commands"])
        print(f"  accuracy     commands {n_ok}/{n_cmd} ({100 * score['command_accuracy']:.1f} %), "
              f"results {100 * (score['result_accuracy'] or 0):.1f} % of {score['results_scored']}")
        who = [("fusion" if fused else bundle.name, "correct", "results_correct")]
        if alone:
            who += [("camera alone", "video_alone", "results_video_alone"),
                    ("microphone alone", "audio_alone", "results_audio_alone")]
        print(("    " + " " * 30 + "".join(f"{name:<20}" for name, _, _ in who)).rstrip())
        print(("    " + " " * 30 + "commands  results   " * len(who)).rstrip())
        for c in score["by_condition"].values():
            cells = "".join(f"{str(c[k]) + '/' + str(c['commands']):<10}{_pc(c[r], c['results']):<10}" for _, k, r in who)
            print(f"    {c['name']:<30}{cells}".rstrip())
        if alone:
            print(f"  alone        the camera-only model decides {100 * score['video_alone_command_accuracy']:.1f} % of the "
                  f"commands ({100 * score['video_alone_result_accuracy']:.1f} % of results), the microphone-only model "
                  f"{100 * score['audio_alone_command_accuracy']:.1f} % ({100 * score['audio_alone_result_accuracy']:.1f} %)"
                  "\n               (the single-sensor reference models, run offline on the same frames and windows)")
    if total:
        print(f"  latency      capture to result p50 {total['p50']:.1f} ms, p90 {total['p90']:.1f}, "
              f"p99 {total['p99']:.1f}, max {total['max']:.1f}; inference alone p50 {infer.get('p50', 0):.2f} ms")
    v, a = ports.get("video", {}), ports.get("audio", {})
    drops = []
    if v:
        drops.append(f"video {v.get('dropped', 0)} of {v.get('captured', 0)} frames dropped "
                     f"({v.get('source_dropped', 0)} at the source)")
    if a:
        drops.append(f"audio {a.get('gap_samples', 0)} samples of gaps, {a.get('overflows', 0)} overflows")
    drops.append(f"{sum((summary.get('reconnects') or {}).values())} reconnects")
    print("  drops        " + ", ".join(drops))
    deg = summary.get("degraded_results") or {}
    if deg:
        print("  degraded     " + ", ".join(f"{m} missing in {n} results" for m, n in deg.items()))

    title = f"edgemm demo: {bundle.name} ({precision}) on {'live sensors' if live else 'the AV-digits clip'}"
    if score.get("command_accuracy") is not None:
        title += f"; commands {100 * score['command_accuracy']:.0f} % correct"
    plot = out / "demo.png"
    note = "plot skipped (--no-plot)" if args.no_plot else _plot(plot, clip, rows, alone, title,
                                                                   "fusion" if fused else bundle.name)
    report = {"model": bundle.name, "ran": str(run_model), "precision": precision, "backend": args.backend,
              "live": live, "clip": None if clip is None else str(clip.truth), "score": score,
              "latency_ms": {"total": total, "infer": infer,
                             "from_results": _percentiles(r["latency_ms"] for r in rows)},
              "pipeline": summary, "seconds": round(time.perf_counter() - t_start, 1)}
    write_json(out / "summary.json", report, indent=1)
    print(f"  {note}" if note else f"  plot         {plot}")
    made = [out / "summary.json", out / "results.jsonl", plot if note is None else None]
    if precision != "fp32":  # the converted model and the data its conversion was calibrated and checked on
        made += [run_model, out / "calib", out / "eval"]
    if clip is not None:
        made += [clip.video, clip.audio, clip.truth]
    print(f"  files        {_files_line(out, made)}  ({report['seconds']:.0f} s in all)")
    if not live and not rows:
        print("edgemm demo: error: no result came out of the pipeline", file=sys.stderr)
        return 1
    return 0
