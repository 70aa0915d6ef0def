"""Run a model live on a camera and a microphone (or files, streams, test patterns) and report results.

Each inference fuses the newest frame with the audio window ending at the frame's capture time; results go
to the sinks (console by default), a summary (fps, drops, latency percentiles, A/V skew) to stderr at the end.
A lost camera or microphone is reopened with backoff while the other modality runs alone (--max-source-loss:
exit 1 when one stays lost, for a service manager to restart); --wait-for-sources waits for one missing at
start. Ctrl-C / SIGTERM flush the sinks and exit 0 (within 5 s, whatever state the sources are in). Examples:
  edgemm run model.edgemm --video v4l2:///dev/video0 --audio mic://default
  edgemm run model.onnx --video clip.mp4 --audio clip.wav --sink jsonl:out.jsonl --sink video:out.mp4
  edgemm run model.edgemm --video rtsp://cam/stream --audio mic://2 --sink mqtt://broker:1883/cabin \\
      --alert drowsy:0.7:0.5:1.0 --duration 3600
  edgemm run model.onnx --video door=rtsp://cam1/s --video yard=rtsp://cam2/s --sink jsonl:out.jsonl \\
      --sink door=video:door.mp4      (several cameras: one batched inference; records carry "camera")
  edgemm run --config /etc/edgemm/run.json      (keys: the long option names, e.g. "video", "sinks", "alerts")
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from edgemm.errors import EdgemmError, check_numbers, number_problem
from edgemm.runners import BACKEND_HELP, parse_backend
from edgemm.shapes import SHAPE_HELP, shape_overrides

# --help imports every command: modules that load onnx, onnxruntime or cv2, or that only run() needs
# (outputs, power), are imported inside functions.

CONFIG_KEYS = {
    "model": str, "video": (str, list), "audio": str, "sinks": list, "duration": (int, float), "threads": int,
    "backend": str, "alerts": list, "max_in_flight": int, "max_skew_ms": (int, float), "attribution": str,
    "tick_hz": (int, float), "rates_hz": dict, "max_age_s": (int, float), "summary_json": str, "quiet": bool,
    "shape": list, "conf": (int, float), "iou": (int, float), "metrics": (int, str),
    "wait_for_sources": (int, float), "max_source_loss": (int, float), "batch_size": int,
    "batch_timeout_ms": (int, float),
}

# Every number from a flag or the config, finite and in range (edgemm.errors.check_numbers): a NaN duration
# once ran forever, a NaN skew bound let everything through.
NUMBER_BOUNDS = {
    "duration": ("Duration", "s", {"positive": True}),
    "threads": ("Threads", "", {"minimum": 1, "maximum": 1024}),
    "max_in_flight": ("Frames in flight", "", {"minimum": 1, "maximum": 64}),
    "max_skew_ms": ("A/V skew bound", "ms", {"minimum": 0, "maximum": 60000}),
    "tick_hz": ("Tick rate", "Hz", {"positive": True, "maximum": 1000}),
    "max_age_s": ("Embedding age bound", "s", {"minimum": 0, "maximum": 3600}),
    "conf": ("Score threshold (--conf)", "", {"minimum": 0, "maximum": 1}),
    "iou": ("NMS IoU threshold (--iou)", "", {"minimum": 0, "maximum": 1}),
    "wait_for_sources": ("Wait for sources", "s", {"minimum": 0, "maximum": 7 * 86400}),
    "max_source_loss": ("Maximum source loss", "s", {"positive": True, "maximum": 7 * 86400}),
    "batch_size": ("Batch size", "", {"minimum": 1, "maximum": 256}),  # frames of several cameras per inference
    "batch_timeout_ms": ("Batch timeout", "ms", {"minimum": 0, "maximum": 10000}),
}


def add_arguments(p) -> None:
    p.add_argument("model", nargs="?", metavar="MODEL", help="bundle folder, manifest.json or .onnx file")
    p.add_argument("--video", action="append", metavar="[NAME=]URI",
                   help="camera, stream or file: v4l2:///dev/video0, csi://0, rtsp://..., clip.mp4, test://video; "
                        "repeatable: several cameras, named NAME (default cam0, cam1, ...), batched into one "
                        "inference")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help="several cameras: frames per inference (default: the number of cameras, while batches "
                        "pay on the backend: one call per frame where a batch row costs nearly a call)")
    p.add_argument("--batch-timeout-ms", type=float, metavar="MS",
                   help="several cameras: run a partial batch once its oldest frame has waited this long "
                        "(default 15 ms)")
    p.add_argument("--audio", metavar="URI", help="microphone or file: mic://default, mic://NAME, speech.wav, "
                                                  "test://audio")
    p.add_argument("--sink", action="append", dest="sinks", metavar="SPEC",
                   help="console (default), jsonl:PATH, video:PATH.mp4, mqtt://HOST[:PORT]/TOPIC, http://HOST:PORT "
                        "(web view), rtsp://HOST:PORT/PATH; repeatable; NAME=SPEC: only camera NAME's results "
                        "(with several cameras, video: without NAME= writes PATH.NAME.mp4 per camera)")
    p.add_argument("--metrics", metavar="[HOST:]PORT", help="serve Prometheus metrics at http://HOST:PORT/metrics "
                                                              "(all interfaces unless HOST is given)")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: until the sources "
                                                               "end or Ctrl-C)")
    p.add_argument("--threads", type=int, metavar="N", help="intra-op threads of the model (default: the backend's)")
    p.add_argument("--backend", metavar="B", help=BACKEND_HELP)
    p.add_argument("--alert", action="append", dest="alerts", metavar="LABEL[:ON[:OFF[:MIN_S]]]",
                   help="raise alert events while LABEL's smoothed score is high (hysteresis ON/OFF, minimum "
                        "duration MIN_S); repeatable")
    p.add_argument("--max-in-flight", type=int, metavar="N", help="frames admitted at once (default 2: one in the "
                                                                  "model, the newest waiting)")
    p.add_argument("--max-skew-ms", type=float, metavar="MS", help="A/V skew bound (default 40 ms)")
    p.add_argument("--attribution", choices=("auto", "off", "ablation"),
                   help="per-modality attribution: auto (late/intermediate fusion), off, ablation (also early "
                        "fusion: reruns the model per modality)")
    p.add_argument("--shape", action="append", metavar="NAME:DIMS", help=SHAPE_HELP)
    p.add_argument("--conf", type=float, metavar="P", help="detection score threshold (overrides the manifest's)")
    p.add_argument("--iou", type=float, metavar="P", help="detection NMS IoU threshold (overrides the manifest's)")
    p.add_argument("--tick-hz", type=float, metavar="HZ", help="inference rate while there is no video "
                                                               "(default: the camera's rate, else 10)")
    p.add_argument("--wait-for-sources", type=float, metavar="S",
                   help="a camera or microphone missing at start is waited for up to S seconds (events "
                        "source_waiting / source_opened), then the run fails (default 0: fails at once)")
    p.add_argument("--max-source-loss", type=float, metavar="S",
                   help="a source lost for more than S seconds ends the run with exit code 1, so that a service "
                        "manager restarts it (default: never; lost sources are reopened with backoff meanwhile)")
    p.add_argument("--summary-json", metavar="PATH", help="also write the summary as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary on stderr")
    p.add_argument("--config", metavar="JSON", help="a JSON file with any of the options above (long names, "
                                                    "'sinks' and 'alerts' as lists); command-line options win")


def load_config(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise EdgemmError(f"Config: {path} | File not found; expected a JSON file.") from None
    except json.JSONDecodeError as exc:
        raise EdgemmError(f"Config: {path} | Not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).") from None
    if not isinstance(data, dict):
        raise EdgemmError(f"Config: {path} | Expected a JSON object of options.")
    for key, value in data.items():
        k = key.replace("-", "_")
        if k not in CONFIG_KEYS:
            raise EdgemmError(f"Config: {path} | Unknown key {key!r}; expected some of {', '.join(sorted(CONFIG_KEYS))}.")
        want = CONFIG_KEYS[k]
        if not isinstance(value, want) or isinstance(value, bool) and want is not bool:
            names = want.__name__ if isinstance(want, type) else "number"
            raise EdgemmError(f"Config: {path} | Key {key!r} is {json.dumps(value)}; expected a {names}.")
        if k == "sinks" and not all(isinstance(v, str) for v in value):
            raise EdgemmError(f"Config: {path} | Key {key!r} is {json.dumps(value)}; expected a list of sink specs "
                              "(strings such as \"jsonl:/var/log/edgemm/results.jsonl\").")
        if k in ("shape", "video") and isinstance(value, list) and not all(isinstance(v, str) for v in value):
            example = "\"NAME:DIMS\" strings such as \"input:1x512\"" if k == "shape" else \
                "\"NAME=URI\" strings such as \"door=rtsp://cam1/stream\""
            raise EdgemmError(f"Config: {path} | Key {key!r} is {json.dumps(value)}; expected a list of {example}.")
        if k == "alerts" and not all(isinstance(v, (str, dict)) for v in value):
            raise EdgemmError(f"Config: {path} | Key {key!r} is {json.dumps(value)}; expected a list of "
                              "\"LABEL:ON:OFF:MIN_S\" strings or {\"label\": ..., \"on\": ...} objects.")
    return {k.replace("-", "_"): v for k, v in data.items()}


def merged_options(args) -> dict:
    """Config file values overridden by what was given on the command line."""
    opts = load_config(args.config) if args.config else {}
    for key in CONFIG_KEYS:
        value = getattr(args, key, None)
        if value is not None and value is not False:
            opts[key] = value
    return opts


def _audio_options(uri: str, rate: int) -> dict:
    """Ask an audio source for the model's sample rate unless the URI names one itself."""
    from edgemm.sources.uri import parse_uri

    return {} if "sample_rate" in parse_uri(uri).options else {"sample_rate": rate}


def _video_options(uri: str, bundle, sinks=()) -> dict:
    """Ask the video source to scale while decoding to what the model takes (sources/__init__.py: an ffmpeg
    process for files and streams, nvvidconv in NVMM for a CSI camera), so a full-size frame never reaches
    the CPU: out_size is the model's input size and resize its stretch or letterbox (letterboxed frames come
    at the size that keeps the aspect ratio; preprocessing pads them).

    Not when the URI sets out_size itself (out_size=full keeps the camera's size), when a sink draws on the
    frames (video:, rtsp:, http: need them at the camera's size, with the boxes in its pixels), when the
    video inputs want different sizes or fits, or for sources that cannot scale: gst:// (a user's pipeline,
    whose frame size edgemm cannot know to map boxes back; out_size in its URI stretches) and test patterns.
    A V4L2 camera is set to a smaller mode of its own (when the URI gives no size=). Tracking needs no
    full-size frame: it follows the boxes, which come back in the camera's pixels either way (Frame.full_hw)."""
    from edgemm.media import IMAGE_SUFFIXES
    from edgemm.sources.uri import NETWORK_SCHEMES, parse_uri

    parsed = parse_uri(uri)
    scheme = parsed.scheme
    if scheme not in ("", "file", "csi", "v4l2", *NETWORK_SCHEMES) or "out_size" in parsed.options:
        return {}
    if scheme in ("", "file") and not parsed.location.isdigit() and Path(parsed.location).suffix.lower() in IMAGE_SUFFIXES:
        return {}
    if any(getattr(sink, "draws_frames", False) for sink in sinks):
        return {}
    video = [s for _, s in bundle.manifest.all_inputs() if s.modality == "video"]
    sizes = {tuple(s.preprocess.size) for s in video}
    fits = {s.preprocess.resize or "stretch" for s in video}
    if len(sizes) != 1 or len(fits) != 1:
        return {}
    h, w = sizes.pop()
    return {"out_size": (w, h), "resize": fits.pop()}


def check_inputs(bundle) -> None:
    """Every model input must be fed by a source, the pipeline or another graph: else one line, exit 1."""
    for graph, spec in bundle.manifest.all_inputs():
        if spec.modality == "other" and spec.value is None:
            raise EdgemmError(f"Model: {bundle.source or bundle.root} | Input {spec.name} ({graph.name}) cannot be "
                              f"fed by a camera or a microphone (modality unknown, shape {spec.shape}); expected "
                              "video/audio inputs, or a manifest that says what it is (or a constant \"value\").")
        if spec.modality == "embedding" and not spec.source:
            raise EdgemmError(f"Model: {bundle.source or bundle.root} | Input {spec.name} ({graph.name}) is an "
                              "embedding with no source graph; expected \"source\": \"graph.output\" in the manifest.")


def build(opts: dict):
    """Everything validated and constructed, nothing started: bad input fails here, before any thread runs."""
    from edgemm.bundle import load_bundle
    from edgemm.decisions import AlertRule
    from edgemm.pipeline import Pipeline, PipelineSettings
    from edgemm.sinks import make_sink

    if not opts.get("model"):
        raise EdgemmError("Model: (none) | No model given; expected MODEL (a bundle or .onnx) or \"model\" in --config.")
    backend = opts.get("backend") or "onnxruntime"
    parse_backend(backend)
    check_numbers(opts, NUMBER_BOUNDS)  # the config's numbers too, not only the flags' (the CLI checks those)
    rates = _rates(opts["rates_hz"]) if opts.get("rates_hz") else None
    if opts.get("summary_json"):
        _check_writable(opts["summary_json"])
    bundle = load_bundle(opts["model"], shapes=shape_overrides(opts.get("shape")))
    check_inputs(bundle)
    mods = bundle.manifest.modalities()
    for mod in mods:
        if not opts.get(mod):
            example = "v4l2:///dev/video0, clip.mp4 or test://video" if mod == "video" else \
                "mic://default, speech.wav or test://audio"
            article = "an" if mod == "audio" else "a"
            raise EdgemmError(f"Model: {opts['model']} | Has {article} {mod} input but no --{mod} was given; "
                              f"expected --{mod} URI (e.g. {example}).")
    from edgemm.multicam import camera_names, parse_cameras, route_sinks

    cams = parse_cameras(opts.get("video"))
    names = camera_names(cams)
    # Sinks are made (not opened) before the sources: a bad spec or camera name fails before a camera is probed.
    specs = list(opts.get("sinks") or ["console"])
    if opts.get("metrics") is not None:
        specs.append(f"metrics:{opts['metrics']}")
    shared_specs, own_specs = route_sinks(specs, names or ["cam0"])
    sinks = [make_sink(s) for s in shared_specs]
    camera_sinks = {n: [make_sink(s) for s in own] for n, own in own_specs.items()}
    audio = None
    videos = []
    wait = bool(opts.get("wait_for_sources"))
    if "video" in mods:
        videos = [(n, _make_source(uri, "video", wait,
                                   **_video_options(uri, bundle, sinks + camera_sinks.get(n, []))))
                  for n, (_, uri) in zip(names, cams)]
    if opts.get("audio") and "audio" in mods:
        rate = next(s.preprocess.sample_rate for _, s in bundle.manifest.all_inputs() if s.modality == "audio")
        audio = _make_source(opts["audio"], "audio", wait, **_audio_options(opts["audio"], rate))
    for mod in ("video", "audio"):
        if opts.get(mod) and mod not in mods:
            print(f"edgemm run: note: the model has no {mod} input; --{mod} is not used", file=sys.stderr)
    alerts = []
    for a in opts.get("alerts") or []:
        alerts.append(AlertRule.from_dict(a) if isinstance(a, dict) else AlertRule.parse(str(a)))
    settings = PipelineSettings()
    if opts.get("max_in_flight") is not None:
        settings.max_in_flight = opts["max_in_flight"]
    if opts.get("max_skew_ms") is not None:
        settings.max_skew_s = opts["max_skew_ms"] / 1e3
    if opts.get("attribution"):
        settings.attribution = opts["attribution"]
    if opts.get("tick_hz") is not None:
        settings.tick_hz = float(opts["tick_hz"])
    if rates:
        settings.rates_hz = rates
    for key in ("conf", "iou"):
        if opts.get(key) is not None:
            setattr(settings, key, float(opts[key]))
    if opts.get("max_age_s") is not None:
        settings.max_age_s = float(opts["max_age_s"])
    if opts.get("wait_for_sources") is not None:
        settings.wait_for_sources_s = float(opts["wait_for_sources"])
    if opts.get("max_source_loss") is not None:
        settings.max_source_loss_s = float(opts["max_source_loss"])
    batching = opts.get("batch_size") is not None or opts.get("batch_timeout_ms") is not None
    if len(videos) > 1 or batching:
        return _multicamera(opts, bundle, videos, audio, sinks, camera_sinks, settings, alerts, backend)
    name, video = videos[0] if videos else (None, None)
    sinks += camera_sinks.get(name or "cam0", [])
    return Pipeline(bundle, video=video, audio=audio, sinks=sinks, settings=settings, alerts=alerts,
                    backend=backend, threads=opts.get("threads"), duration_s=opts.get("duration"),
                    camera=cams[0][0] if cams else None)


def _multicamera(opts, bundle, videos, audio, sinks, camera_sinks, settings, alerts, backend):
    from edgemm.multicam import DEFAULT_BATCH_TIMEOUT_S, MultiCamera

    if not videos:
        raise EdgemmError(f"Model: {opts['model']} | Has no video input; expected a model that takes frames for "
                          "several cameras (--batch-size, --batch-timeout-ms).")
    timeout_ms = opts.get("batch_timeout_ms")
    return MultiCamera(bundle, videos, audio=audio, shared_sinks=sinks, camera_sinks=camera_sinks,
                       settings=settings, alerts=alerts, backend=backend, threads=opts.get("threads"),
                       duration_s=opts.get("duration"), batch_size=opts.get("batch_size"),
                       batch_timeout_s=DEFAULT_BATCH_TIMEOUT_S if timeout_ms is None else timeout_ms / 1e3)


def _make_source(uri: str, modality: str, wait: bool, **options):
    """The source, checked now; one that is not there yet (SourceMissing) is made when opened instead, when
    the run waits for its sources (the pipeline then tries to open it until --wait-for-sources runs out)."""
    from edgemm.sources import open_source
    from edgemm.sources.base import SourceMissing
    from edgemm.sources.late import LateSource

    try:
        return open_source(uri, modality, **options)
    except SourceMissing:
        if not wait:
            raise
        return LateSource(uri, modality, lambda: open_source(uri, modality, **options))


def _rates(rates: dict) -> dict[str, float]:
    """{"video": 15, "audio": 5}: a positive rate per modality (they override fusion.rates_hz)."""
    out = {}
    for mod, hz in rates.items():
        if mod not in ("video", "audio"):
            raise EdgemmError(f"Rates: {mod!r} | Unknown modality; expected \"video\" and/or \"audio\" in rates_hz.")
        if number_problem(hz, positive=True):
            raise EdgemmError(f"Rates: {mod}={json.dumps(hz)} | Expected a positive number of runs per second.")
        out[mod] = float(hz)
    return out


def _check_writable(path) -> None:
    """The summary is written after the run: refuse an unwritable path now, not an hour later."""
    from edgemm.outputs import require_folder

    p = require_folder(path, "Summary JSON")
    if p.is_dir():
        raise EdgemmError(f"Summary JSON: {p} | Is a folder; expected a file path.")
    if not os.access(p.parent, os.W_OK | os.X_OK):
        raise EdgemmError(f"Summary JSON: {p} | Folder {p.parent} is not writable; expected a writable folder.")


def stream(pipeline) -> dict:
    """Step the pipeline until its sources end, its duration passes or SIGINT/SIGTERM; return its summary."""

    def on_signal(signum, frame):  # flush and leave through the normal path: sinks close, exit 0
        pipeline.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pipeline:
            while pipeline.is_streaming():
                pipeline.step()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return pipeline.final_summary or pipeline.summary()


def run(args) -> int:
    opts = merged_options(args)
    summary = stream(build(opts))
    if not opts.get("quiet"):
        print(format_summary(summary), file=sys.stderr)
    if opts.get("summary_json"):
        from edgemm.outputs import write_json

        write_json(opts["summary_json"], summary)
    return 0


def _words(value) -> str:
    """A summary value as a person reads it: no Python reprs (None, {}, quotes, underscores)."""
    if value is None:
        return "n/a"
    if isinstance(value, dict):
        return ", ".join(f"{_words(k)} {_words(v)}" for k, v in value.items()) or "none"
    if isinstance(value, str):
        return value.replace("_", " ")
    return str(value)


def format_summary(s: dict) -> str:
    """The end-of-run summary (Pipeline.summary(), or MultiCamera.summary()) as a few human lines."""
    if "cameras" in s:
        return _format_cameras(s)
    lines = [f"{s['results']} results in {s['duration_s']:.1f} s ({s['fps']:.1f}/s), "
             f"model {s['model']} ({s['form']} fusion)"]
    for port, p in s["ports"].items():
        lines.append(f"  {port}: {_words(p)}")
    for stage, st in s["latency_ms"].items():
        lines.append(f"  {stage:<11} p50 {st['p50']:8.2f} ms  p90 {st['p90']:8.2f}  p99 {st['p99']:8.2f}  "
                     f"max {st['max']:8.2f}")
    if s.get("skew_ms"):
        sk = s["skew_ms"]
        lines.append(f"  A/V skew    p50 {sk['p50']:8.2f} ms  |p99| {sk.get('abs_p99', 0):.2f} ms  "
                     f"(bound {sk.get('bound_ms')} ms)")
    if s.get("overhead_ms"):
        o, w = s["overhead_ms"], s["worker_overhead_ms"]
        lines.append(f"  work beyond the model per result: p50 {o['p50']:.3f} ms, p99 {o['p99']:.3f} ms "
                     f"(on the inference thread: p50 {w['p50']:.3f} ms, p99 {w['p99']:.3f} ms)")
    if s.get("capture_crashes"):
        lines.append(f"  capture crashes: {_words(s['capture_crashes'])} (tracebacks in the log)")
    lines.append(f"  reconnects: {_words(s['reconnects'])}; overflows: {s['overflows']}; "
                 f"degraded results: {_words(s['degraded_results'])}; events: {_words(s['events'])}")
    for label, c in s.get("sinks", {}).items():
        if "buffered" in c:  # a store-and-forward sink (MQTT)
            lines.append(f"  sink {label}: {c['published']} published, {c['buffered']} buffered (at most "
                         f"{c['buffered_max']}), {c['dropped']} dropped, {c['disconnects']} disconnects")
        if c["failures"] or c["lost"]:
            lines.append(f"  sink {label}: {c['written']} written, {c['failures']} failed writes, "
                         f"{c['lost']} records lost")
    return "\n".join(lines)


def _format_cameras(s: dict) -> str:
    """Several cameras: the totals, the batches, then each camera's summary indented."""
    lines = [f"{s['results']} results in {s['duration_s']:.1f} s ({s['fps']:.1f}/s) from {len(s['cameras'])} "
             f"cameras, model {s['model']}"]
    for graph, b in s["batching"].items():
        infer = b["infer_ms"] or {}
        lines.append(f"  batches ({graph}): {b['calls']} calls, mean size {b['mean_size']} (max {b['batch_size']}, "
                     f"timeout {b['timeout_ms']} ms{'' if b['batched'] else ', one call per frame'}); "
                     f"model p50 {infer.get('p50', 0):.2f} ms, p99 {infer.get('p99', 0):.2f} ms per call")
    for name, cam in s["cameras"].items():
        lines.append(f"camera {name}:")
        lines += ["  " + line for line in format_summary(cam).splitlines()]
    return "\n".join(lines)
