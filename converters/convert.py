"""`edgemm convert`: prune -> quantize (FP16 / INT8) -> accuracy guard -> validate -> TensorRT -> bundle.

One function, ``convert(model, out, ConvertOptions(...))``, runs the whole chain on every graph of a
bundle (a plain .onnx too) and writes OUT atomically: the converted graphs, the manifest with its
provenance (source hashes, precision, every converter setting, the INT8 flavour and why, the layers
kept in float), and the validation report (report.json, report.md, confusion.png) with accuracy,
closeness, latency and size before and after. A failure at any step leaves no OUT behind.

The pieces: converters.calibration (feeds), converters.fp16, converters.int8, converters.guard,
converters.prune (pruning), converters.validate (metrics and report), converters.tensorrt (engines),
converters.timing (side-by-side latency), converters.graphs (saving, sessions, exposed tensors).

Each step reads the calibration data in one pass that feeds every graph (pruning, the FP16 range scan,
INT8 calibration); the few feeds the latency measurement needs are kept from that pass.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import logging
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import onnx
import onnxruntime

from edgemm import __version__
from edgemm.bench import machine
from edgemm.bundle import MANIFEST_NAME, Bundle, atomic_output_dir, file_sha256, load_bundle
from edgemm.converters import bake, fp16, frontend, guard, int8, openvino, opsets, prune, qdq, stateful
from edgemm.converters.calibration import GraphFeeds, graph_order
from edgemm.converters.data import DataFolder, decision_graph
from edgemm.converters.detection_nms import append_efficient_nms, detection_output
from edgemm.converters.graphs import copy_model, name_nodes, save_model
from edgemm.converters.tensorrt import BuilderUnavailable, EngineOptions, asymmetric_qdq, build_engines, \
    check_build_options, check_shapes, for_fp16
from edgemm.converters.timing import time_models
from edgemm.converters.validate import below_floor, compare_bundles, size_section, write_report
from edgemm.errors import EdgemmError
from edgemm.feeds import onnx_input_metadata, synthesize
from edgemm.outputs import write_atomic, write_json
from edgemm.runners.openvino import OpenVINORunner
from edgemm.shapes import parse_shape_spec, shape_overrides

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_CALIB_LIMIT = 512  # TensorRT and ORT guidance: a few hundred representative samples
FLAVOUR_TIMING_S = 2.0
MIN_INT8_SPEEDUP = 0.95  # below this (beyond timing noise) a graph's INT8 is slower than FP32: keep FP32
BENCH_S = 3.0
PRUNE_SAMPLES = 256  # calibration samples pruning holds in memory (importance, re-fit, final check)
SAMPLE_FEEDS = 8  # feeds per graph for the INT8 flavour check and timing
# Without --max-drop, an INT8 or FP16 graph must stay this close to the original on the data (each output's
# mean cosine): on PP-OCRv4's recogniser (RESULTS.md section 10) mean cosine 0.990 read as many text lines
# as FP32, 0.973 lost 5 points, 0.904 lost 77. Below it convert refuses: a graph that far off is not shipped.
MIN_COSINE = 0.99
# Said wherever an accuracy measured on --calib (no --eval given) is shown: it is the data the model was
# calibrated on, so the figure is optimistic.
CALIBRATION_ACCURACY_NOTE = ("no --eval given: measured on the calibration data (optimistic; give a held-out "
                             "--eval folder for a fair figure)")


@dataclass
class ConvertOptions:
    precision: str | None = None  # None: fp16 with --target tensorrt (as trtexec --fp16), else fp32
    calib: str | Path | None = None
    calib_limit: int | None = DEFAULT_CALIB_LIMIT
    calib_method: str = "minmax"
    eval: str | Path | None = None
    eval_limit: int | None = None
    max_drop: float | None = None
    min_cosine: float = MIN_COSINE  # the closeness floor without --max-drop (0: none)
    prune: str | None = None
    target: str = "onnxruntime"
    force: bool = False
    threads: int | None = None
    bench_seconds: float = BENCH_S
    flavour: str | None = None  # force an INT8 flavour (u8s8, s8s8, trt); None: by target and measurement
    guard_iterations: int | None = None
    quiet: bool = False
    # TensorRT engine build (--target tensorrt, on the device)
    max_batch: int = 1
    shapes: list[str] = field(default_factory=list)  # NAME:MIN,OPT,MAX optimization profile overrides
    timing_cache: str | None = None
    workspace_mb: int | None = None  # TensorRT workspace limit (default: all of the device's memory)
    builder_opt_level: int | None = None  # TensorRT builder optimization level 0..5
    dla: int | None = None  # DLA core, with GPU fallback (Orin NX / AGX Orin)
    nms_in_engine: bool = False  # EfficientNMS appended to a YOLO detector's graph (converters/detection_nms.py)
    bake_preprocess: str | None = None  # "video", "video,audio", "none"; None: the target's default (BAKE_DEFAULTS)
    bake_stft: str = "conv"  # how a baked log-mel computes its STFT (converters/bake.py)
    bake_reason: str | None = None  # set by convert(): why those parts (asked, or the target's default)

    def settings(self) -> dict:
        d = asdict(self)
        for k in ("calib", "eval"):
            d[k] = str(d[k]) if d[k] is not None else None
        d.pop("quiet")
        d.pop("force")
        d.pop("bake_reason")
        return d


def _say(msg: str, opts: ConvertOptions) -> None:
    log.info(msg)
    if not opts.quiet:
        print(f"edgemm convert: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Checks that fail before any work
# --------------------------------------------------------------------------------------------------


def resolve_precision(opts: ConvertOptions) -> str:
    """The precision asked, else FP16 for a TensorRT engine (trtexec --fp16 is what users compare with; an
    FP32 graph under strong typing builds an FP32/TF32 engine), else FP32."""
    if opts.precision is not None:
        return opts.precision
    return "fp16" if opts.target == "tensorrt" else "fp32"


def _engine_options(opts: ConvertOptions) -> EngineOptions:
    return EngineOptions(max_batch=opts.max_batch, opt_batch=1, shapes=dict(parse_shape_spec(s) for s in opts.shapes),
                         timing_cache=opts.timing_cache, workspace_mb=opts.workspace_mb,
                         builder_optimization_level=opts.builder_opt_level, dla_core=opts.dla)


def check_tensorrt_ready(bundle: Bundle, out: str | Path) -> None:
    """An INT8 bundle quantized for ONNX Runtime (uint8, or non-zero zero points) cannot become a TensorRT
    engine: its float graph is not in the bundle, so refuse with the command that quantizes for TensorRT."""
    bad = {g: asymmetric_qdq(bundle.load_graph(g, load_weights=True)) for g in bundle.manifest.graphs}
    bad = {g: nodes for g, nodes in bad.items() if nodes}
    if not bad:
        return
    prov = bundle.manifest.provenance or {}
    flavours = prov.get("int8_flavour")
    settings = prov.get("settings") or {}
    source = prov.get("source_model") or "FLOAT_MODEL.onnx"
    calib = settings.get("calib") or "CALIB_DIR"
    g, nodes = next(iter(bad.items()))
    recorded = f" (recorded flavour {json_flavours(flavours)})" if flavours else ""
    raise EdgemmError(f"Model: {bundle.source or bundle.root} | Quantized for ONNX Runtime{recorded}: graph {g} has "
                      f"{len(nodes)} Q/DQ node(s) with uint8 or non-zero zero points ({nodes[0]}, ...), which "
                      "TensorRT refuses; expected symmetric INT8. Quantize the float model for TensorRT: edgemm "
                      f"convert {source} -o {out} --precision int8 --calib {calib} --target tensorrt")


def json_flavours(flavours) -> str:
    if isinstance(flavours, dict):
        return ", ".join(f"{g}: {f}" for g, f in flavours.items())
    return str(flavours)


# Preprocessing baked into the graph by default, per target: a part is baked by default where the baked graph
# took less CPU per call than the Python path in every case measured (two models, frames at 720p and at the
# model size, three interleaved runs: benchmarks/bench_bake.py, benchmarks/RESULTS.md §14). A tie keeps the
# Python path: an unbaked bundle also reads tensor data folders and can be quantized again.
# TensorRT stays unbaked until measured on a device (bench_bake.py --backends tensorrt): no GPU here.
BAKE_DEFAULTS = {
    "onnxruntime": ((), "the baked graph measured no faster under ONNX Runtime on the CPU (0.94-1.006x the "
                        "Python path's CPU time for video, 1.03-1.05x with the log-mel)"),
    "openvino": (("video",), "the baked video preprocessing measured faster under OpenVINO on the CPU (0.92-0.99x "
                             "the Python path's CPU time; the log-mel 0.98-1.01x, not baked)"),
    "tensorrt": ((), "not measured on a GPU yet (benchmarks/bench_bake.py --backends tensorrt on the device)"),
}


def bake_parts(opts: ConvertOptions) -> tuple[tuple[str, ...], str]:
    """The parts to bake and why: those asked with --bake-preprocess, else the target's default."""
    if opts.bake_preprocess is not None:
        return bake.parse_parts(opts.bake_preprocess), "asked (--bake-preprocess)"
    parts, why = BAKE_DEFAULTS[opts.target]
    return parts, f"default for target {opts.target}: {why}"


def check_options(model: str | Path, out: str | Path, opts: ConvertOptions) -> None:
    if opts.precision is not None and opts.precision not in PRECISIONS:
        raise EdgemmError(f"Precision: {opts.precision} | Unknown; expected one of {', '.join(PRECISIONS)}.")
    if opts.calib_method not in int8.CALIB_METHODS:
        raise EdgemmError(f"Calibration method: {opts.calib_method} | Unknown; expected one of "
                          f"{', '.join(int8.CALIB_METHODS)}.")
    int8.target_flavour(opts.target)
    if opts.target == "openvino":
        openvino.check_installed()  # the runtime measures the conversion: needed before any work
        if opts.flavour is not None and opts.flavour not in openvino.CANDIDATES:
            raise EdgemmError(f"INT8 flavour: {opts.flavour} | Not one for --target openvino; expected one of "
                              f"{', '.join(openvino.CANDIDATES)} (or no flavour: chosen by timing under OpenVINO).")
    elif opts.flavour is not None and opts.flavour not in int8.FLAVOURS:
        raise EdgemmError(f"INT8 flavour: {opts.flavour} | Unknown; expected one of {', '.join(int8.FLAVOURS)}.")
    if opts.target == "tensorrt" and opts.flavour not in (None, "trt"):
        raise EdgemmError(f"INT8 flavour: {opts.flavour} | TensorRT needs symmetric S8S8 Q/DQ; expected trt "
                          "(or no flavour) with --target tensorrt.")
    for name, value in (("Calibration limit", opts.calib_limit), ("Evaluation limit", opts.eval_limit),
                        ("Threads", opts.threads)):
        if value is not None and value < 1:
            raise EdgemmError(f"{name}: {value} | Expected a positive number.")
    if opts.max_drop is not None and opts.max_drop < 0:
        raise EdgemmError(f"Max drop: {opts.max_drop} | Expected a non-negative number of points.")
    if not 0 <= opts.min_cosine <= 1:
        raise EdgemmError(f"Min cosine: {opts.min_cosine} | Expected a number from 0 to 1.")
    if not opts.bench_seconds or opts.bench_seconds <= 0:
        raise EdgemmError(f"Bench seconds: {opts.bench_seconds} | Expected a positive number of seconds.")
    if opts.nms_in_engine and opts.target != "tensorrt":
        raise EdgemmError("--nms-in-engine | Puts NMS into a TensorRT engine; expected --target tensorrt.")
    if opts.max_batch is None or opts.max_batch < 1:
        raise EdgemmError(f"Max batch: {opts.max_batch} | Expected a positive batch size.")
    trt_only = [f for f, v in (("--workspace", opts.workspace_mb), ("--builder-opt-level", opts.builder_opt_level),
                               ("--dla", opts.dla)) if v is not None]
    if trt_only and opts.target != "tensorrt":
        raise EdgemmError(f"{trt_only[0]} | Is a TensorRT build option; expected --target tensorrt with it.")
    if opts.dla is not None and resolve_precision(opts) == "fp32":
        raise EdgemmError("DLA | Computes in FP16 or INT8 only; expected --precision fp16 or int8 (or none: FP16 is "
                          "the default for --target tensorrt) with --dla.")
    if opts.target == "tensorrt":
        check_build_options(_engine_options(opts))
    if opts.shapes:
        shape_overrides(opts.shapes)  # the format, and one --shape per input, now
    bake_parts(opts)  # (after the target's check: the default is looked up by target)
    if opts.bake_stft not in bake.AUDIO_FORMS:
        raise EdgemmError(f"--bake-stft: {opts.bake_stft} | Unknown; expected one of {', '.join(bake.AUDIO_FORMS)}.")
    if opts.precision == "int8":
        int8.check_onnxruntime()  # before minutes of calibration, not after
    if resolve_precision(opts) == "fp16" or (opts.precision == "int8" and opts.target == "tensorrt"):
        fp16.require_converter()  # an extra (edgemm[convert]): one line naming it, before any work
    if opts.prune:
        prune.parse_spec(opts.prune)
    if opts.precision == "int8" and opts.calib is None:
        raise EdgemmError("Calibration data | --precision int8 needs --calib DIR (a folder of .npz files or media "
                          "files); expected representative inputs to measure activation ranges on.")
    if opts.max_drop is not None and opts.eval is None and opts.calib is None:
        raise EdgemmError("Max drop | Needs --eval DIR (labelled samples) or at least --calib DIR to measure the drop on.")
    out = Path(out)
    if out.exists() and not opts.force:
        raise EdgemmError(f"Output: {out} | Already exists; expected a new path (or pass --force to replace it).")
    m, o = Path(model).resolve(), out.resolve()
    if o == m or m in o.parents or o in m.parents:
        # Inside the model's folder, or holding the model (which --force would delete): never.
        raise EdgemmError(f"Output: {out} | Is the model itself, inside it or holds it; expected a separate path.")


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def stage_bundle(bundle: Bundle, models: dict[str, Any], folder: Path) -> Bundle:
    """The bundle with some graphs replaced, written to folder (later stages read graphs by path)."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = copy.deepcopy(bundle.manifest)
    manifest.inferred = False
    for g, spec in manifest.graphs.items():
        spec.engine = None
        save_model(models[g], folder / spec.file)
    return Bundle(root=folder, manifest=manifest, source=bundle.source)


def _recording(samples, store: dict[str, list], n: int):
    """Pass per-sample feeds (graph -> feed) through, keeping the first n of each graph in store: the few
    feeds timing needs come from the pass that runs anyway, not from another pass over the data."""
    for sample in samples:
        for g, feed in sample.items():
            kept = store.setdefault(g, [])
            if len(kept) < n:
                kept.append(feed)
        yield sample


def _sample_feeds(bundle: Bundle, calib, limit: int, threads) -> dict[str, list[dict]]:
    """A few per-graph feeds (for timing and checks): from the calibration data, else synthesised."""
    graphs = graph_order(bundle)
    if calib is not None:
        out: dict[str, list[dict]] = {g: [] for g in graphs}
        with GraphFeeds(bundle, calib, limit=limit, progress=False, threads=threads) as gf:
            for s in gf.samples():
                for g, f in gf.feeds_for(s).items():
                    out[g].append(f)
        return out
    return {g: [synthesize(onnx_input_metadata(bundle.load_graph(g, load_weights=False)), bundle.manifest.graphs[g], 1, i)
                for i in range(limit)] for g in graphs}


def measure(original: Bundle, converted: Bundle, feeds: dict[str, list[dict]], threads, seconds: float,
            target: str = "onnxruntime") -> dict:
    """Latency (interleaved, per graph), size, parameters and MACs before and after; on OpenVINO for
    --target openvino (the runtime the graphs are made for), else on ONNX Runtime's CPU provider."""
    models, graph_feeds = {}, {}
    for g in original.manifest.graphs:
        for label, b in (("before", original), ("after", converted)):
            if target == "openvino":
                models[f"{g}:{label}"] = OpenVINORunner(b.graph_path(g), threads, name=f"{g}:{label}")
            else:
                models[f"{g}:{label}"] = b.graph_path(g)
            graph_feeds[f"{g}:{label}"] = feeds[g][0]
    results = time_models(models, feeds=graph_feeds, threads=threads, duration_s=seconds)
    sizes = size_section(original, converted)["graphs"]
    latency = {}
    for g in original.manifest.graphs:
        b, a = results[f"{g}:before"]["latency_ms"], results[f"{g}:after"]["latency_ms"]
        latency[g] = {"before": b["p50"], "after": a["p50"], "p90_before": b["p90"], "p90_after": a["p90"],
                      "speedup": b["p50"] / a["p50"] if a["p50"] > 0 else None}
    if len(latency) > 1:
        tb = sum(v["before"] for v in latency.values())
        ta = sum(v["after"] for v in latency.values())
        latency["all graphs"] = {"before": tb, "after": ta, "speedup": tb / ta if ta else None}
    return {"latency_ms_p50": latency,
            "size_bytes": {g: v["size_bytes"] for g, v in sizes.items()},
            "parameters": {g: v["parameters"] for g, v in sizes.items()},
            "macs": {g: v["macs"] for g, v in sizes.items()},
            "latency_setup": {"method": "converters.timing (edgemm.bench.run), interleaved, batch 1, "
                                        + ("openvino CPU" if target == "openvino" else "onnxruntime CPU"),
                              "threads": threads, "seconds": seconds,
                              "iterations": results[next(iter(results))]["iterations"]}}


# --------------------------------------------------------------------------------------------------
# The chain
# --------------------------------------------------------------------------------------------------


@dataclass
class Pruned:
    """What pruning hands on: the pruned graphs, their bundle (later stages read graphs by path), each
    graph's pruning record, and the first feed of each graph kept from its pass over the data."""

    models: dict[str, Any]
    bundle: Bundle
    info: dict[str, dict]
    first_feeds: dict[str, list[dict]]


@dataclass
class Quantized:
    """What FP16 or INT8 hands on: the all-quantized graphs, the conversion record (``{"fp16": ...}`` or
    ``{"int8": ..., "int8_flavours": ...}``), and what the accuracy guard needs to redo it with layers kept
    in float: ``quantize_fn(graph, excluded_nodes) -> model`` and each graph's layer groups."""

    models: dict[str, Any]
    record: dict[str, Any]
    quantize_fn: Callable[[str, list[str]], Any] | None  # None: nothing quantized (fp32)
    groups: dict[str, list[list[str]]]
    first_feeds: dict[str, list[dict]]


@dataclass
class Guarded:
    """What the accuracy guard hands on: the delivered graphs, its record, and the nodes it kept in float."""

    models: dict[str, Any]
    record: dict[str, Any]
    excluded: dict[str, list[str]] = field(default_factory=dict)


def convert(model: str | Path, out: str | Path, opts: ConvertOptions | None = None) -> dict:
    """Convert a bundle (or .onnx) into OUT. Returns the report dict (also written as OUT/report.json)."""
    opts = opts or ConvertOptions()
    check_options(model, out, opts)
    started = time.monotonic()
    precision_defaulted = opts.precision is None
    opts = dataclasses.replace(opts, precision=resolve_precision(opts))
    bundle = load_bundle(model, shapes=shape_overrides(opts.shapes))
    if opts.target == "tensorrt":
        check_tensorrt_ready(bundle, out)
    opts = dataclasses.replace(opts, bake_preprocess=_check_bake(bundle, opts), bake_reason=bake_parts(opts)[1])
    _check_against_model(bundle, opts)
    graphs = graph_order(bundle)
    originals = {g: bundle.load_graph(g) for g in graphs}
    report: dict[str, Any] = {"title": f"edgemm convert: {bundle.name} -> {opts.precision}"
                              + (f", pruned {opts.prune}" if opts.prune else "")
                              + (f", target {opts.target}" if opts.target != "onnxruntime" else "")}
    with tempfile.TemporaryDirectory(prefix="edgemm-convert-") as work:
        work = Path(work)
        pruned = _prune(bundle, originals, graphs, opts, work) if opts.prune else Pruned(originals, bundle, {}, {})
        quantized = QUANTIZERS[opts.precision](pruned.bundle, pruned.models, graphs, opts, work)
        guarded = _guard(bundle, originals, quantized, opts) if opts.max_drop is not None else \
            Guarded(quantized.models, {})
        streams = _check_streams(bundle, originals, guarded.models, opts)
        # For TensorRT the layers INT8 does not cover run in FP16 in the engine (FP16 Q/DQ scales under strong
        # typing), as trtexec --int8 --fp16 would; checked for overflow like any FP16 conversion.
        mixed = _fp16(stage_bundle(bundle, guarded.models, work / "int8"), guarded.models, graphs, opts, work) \
            if opts.precision == "int8" and opts.target == "tensorrt" else None
        conversion = ({"precision": opts.precision, "target": opts.target}
                      | ({"precision_note": "fp16: the default for --target tensorrt (--precision fp32 keeps FP32)"}
                         if precision_defaulted and opts.target == "tensorrt" else {})
                      | ({"prune": pruned.info} if opts.prune else {})
                      | _describe_final(guarded.models, guarded.excluded, quantized.record)
                      | ({"accuracy_guard": guarded.record} if guarded.record else {})
                      | ({"stream_closeness": streams} if streams else {})
                      | (mixed.record if mixed else {}))
        # The latency measurement's feeds: those kept from the first full pass over the data, if any ran.
        first_feeds = next((f for f in (pruned.first_feeds, quantized.first_feeds) if all(f.get(g) for g in graphs)),
                           None)
        report.update(_write(bundle, pruned.bundle, mixed.models if mixed else guarded.models, out, opts, conversion,
                             first_feeds, report, started))
    for w in report["warnings"]:
        _say(f"warning: {w}", opts)
    return report


def _check_bake(bundle: Bundle, opts: ConvertOptions) -> str:
    """The parts to bake for this bundle, as --bake-preprocess spells them ("none" for nothing), checked now.

    Asked parts must all be bakeable (one line naming the input otherwise); a target's default bakes what the
    bundle has and can bake. A bundle already baked can still get an FP32 engine but not be calibrated,
    converted to FP16 or pruned: its inputs are camera frames, those steps' data are the graph's float tensors
    (and onnxconverter-common's FP16 pass drops the prepended cast to float). Baking comes after them."""
    where = str(bundle.source or bundle.root)
    if bundle.manifest.baked and (opts.precision in ("int8", "fp16") or opts.prune):
        step = f"--precision {opts.precision}" if opts.precision != "fp32" else "--prune"
        raise EdgemmError(f"Model: {where} | Preprocessing is baked into the graph "
                          f"({', '.join(bake.baked_inputs(bundle.manifest))}); {step} needs the unbaked bundle: "
                          "convert that, with --bake-preprocess in the same call.")
    parts, _ = bake_parts(opts)
    if opts.bake_preprocess is None:
        parts = tuple(p for p in parts if not bundle.manifest.baked and _bakeable(bundle, p))
    if parts:
        bake.check_bakeable(bundle.manifest, parts, where)
    return ",".join(parts) or "none"


def _bakeable(bundle: Bundle, part: str) -> bool:
    try:
        bake.check_bakeable(bundle.manifest, (part,), "")
    except EdgemmError:
        return False
    return True


def _check_against_model(bundle: Bundle, opts: ConvertOptions) -> None:
    """Data folders (their first sample against every graph's inputs) and --shape names, checked against
    the model before any work."""
    for folder, what in ((opts.calib, "Calibration data"), (opts.eval, "Evaluation data")):
        if folder is not None:
            with GraphFeeds(bundle, DataFolder(folder, bundle, what), limit=1, what=what, progress=False,
                            threads=opts.threads) as gf:
                next(gf.iter_feeds(), None)
    if opts.shapes:
        check_shapes(bundle, dict(parse_shape_spec(s) for s in opts.shapes))
    if opts.nms_in_engine:
        g = decision_graph(bundle)
        if detection_output(bundle.manifest.graphs[g]) is None:
            raise EdgemmError(f"--nms-in-engine | Graph {g} has no yolov8 or yolov5 detection output; expected "
                              "a raw YOLO head (end2end and efficient_nms outputs are already after NMS).")


def _prune(bundle: Bundle, originals: dict, graphs: list[str], opts: ConvertOptions, work: Path) -> Pruned:
    feeds: dict[str, list[dict]] = {g: [] for g in graphs}
    first_feeds: dict[str, list[dict]] = {}
    if opts.calib is not None:
        # One pass over the data for every graph (and one run of the encoders for a head's feeds).
        limit = min(opts.calib_limit or PRUNE_SAMPLES, PRUNE_SAMPLES)
        _say(f"pruning: reading {limit} calibration samples from {opts.calib}", opts)
        with GraphFeeds(bundle, opts.calib, limit=limit, threads=opts.threads) as gf:
            for sample in _recording(gf.iter_feeds(), first_feeds, 1):
                for g, f in sample.items():
                    feeds[g].append(f)
    models, info = {}, {}
    for g in graphs:
        _say(f"pruning graph {g} ({opts.prune})", opts)
        models[g], info[g] = prune.prune(originals[g], opts.prune, feeds[g] or None,
                                         importance="activation" if feeds[g] else "l1",
                                         threads=opts.threads, max_samples=PRUNE_SAMPLES)
        feeds[g] = []  # release this graph's samples before the next one
    return Pruned(models, stage_bundle(bundle, models, work / "pruned"), info, first_feeds)


def _write(bundle: Bundle, stage: Bundle, delivered: dict, out, opts: ConvertOptions, conversion: dict,
           first_feeds: dict | None, report: dict, started: float) -> dict:
    """Write OUT atomically (graphs, manifest with provenance, engines, report): validate and measure the
    converted bundle from the temporary folder that becomes OUT. Returns the report's further sections."""
    manifest = copy.deepcopy(bundle.manifest)
    manifest.inferred = False
    manifest.provenance = _provenance(bundle, opts, conversion, dict(bundle.manifest.provenance))
    sections: dict[str, Any] = {}
    conversion = dict(conversion)
    with atomic_output_dir(out, opts.force) as tmp:
        for g, spec in manifest.graphs.items():
            spec.engine = None
            save_model(delivered[g], tmp / spec.file)
        write_json(tmp / MANIFEST_NAME, manifest.to_dict())
        converted = load_bundle(tmp)  # a bundle that does not load must not replace anything
        feeds = first_feeds or _sample_feeds(stage, opts.calib, 1, opts.threads)
        _say(f"measuring latency before/after ({opts.bench_seconds:g} s, interleaved)", opts)
        sections.update(measure(bundle, converted, feeds, opts.threads, opts.bench_seconds, opts.target))
        data = opts.eval if opts.eval is not None else opts.calib
        if data is not None:
            _say(f"validating on {data}", opts)
            limit = opts.eval_limit if opts.eval is not None else opts.calib_limit
            comparison = compare_bundles(bundle, converted, data, threads=opts.threads, limit=limit)
            if opts.eval is None:
                comparison["note"] = CALIBRATION_ACCURACY_NOTE
            if "converted" in comparison:  # it ran from the temporary folder that becomes OUT
                comparison["converted"]["model"] = str(out)
            sections.update(comparison)
            # A stateful model is held to the floor over streams (its state carried), not on single windows.
            close = stateful.floor_closeness(comparison.get("closeness", {}), conversion.get("stream_closeness"))
            conversion.update(_closeness_floor(close, comparison["samples"], data, opts))
        else:
            sections["note"] = "no --eval or --calib data: accuracy and closeness not measured"
        parts, why = bake.parse_parts(opts.bake_preprocess), opts.bake_reason or bake_parts(opts)[1]
        conversion["bake_preprocess"] = {"parts": [], "why": why}
        if parts:
            delivered, conversion["bake_preprocess"] = _bake(manifest, delivered, parts, why, tmp, opts)
        if opts.target == "tensorrt":
            if opts.nms_in_engine:
                delivered, conversion["nms_in_engine"] = _nms_in_engine(converted, delivered, manifest, tmp)
            conversion["tensorrt"] = _tensorrt(converted, delivered, manifest, tmp, opts)
        conversion["seconds"] = round(time.monotonic() - started, 1)
        sections["conversion"] = conversion
        sections["provenance"] = manifest.provenance
        sections["machine"] = _machine()
        sections["warnings"] = _warnings(sections, opts)
        write_report(tmp, report | sections)
    return sections


def _closeness_floor(close: dict, samples: int, data, opts: ConvertOptions) -> dict:
    """Hold an INT8 or FP16 conversion that no --max-drop judges to --min-cosine against the original, on
    every output: raises (so nothing is written) when an output is further off. With --prune the outputs
    move by design, so a miss is only a warning. Returns the report's record of the check."""
    if opts.precision == "fp32" or opts.max_drop is not None or opts.min_cosine <= 0:
        return {}
    low = below_floor(close, opts.min_cosine)
    record = {"closeness_floor": {"min_cosine": opts.min_cosine, "met": not low,
                                  "below": [{"output": n, "measure": m, "value": round(v, 5), "least": least}
                                            for n, m, v, least in low]}}
    if not low:
        return record
    name, measure, value, least = low[0]
    what = f"Output {name}: {measure} {value:.3f} against the original on {samples} samples of {data}"
    if opts.prune:
        record["closeness_floor"]["note"] = (f"{what}, below {least:g}; pruning changes the outputs: give "
                                             "labelled --eval data and --max-drop to judge it")
        return record
    which = "--min-cosine" if measure == "cosine" else "the floor for boxes; --min-cosine 0 lifts it"
    raise EdgemmError(f"{opts.precision.upper()} closeness | {what}; expected at least {least:g} ({which}). Give "
                      "--max-drop POINTS (with labelled --eval data where you have it) to keep the layers that cost "
                      "most in float"
                      + (", try --target openvino" if opts.precision == "int8" and opts.target == "onnxruntime"
                         else "")
                      + ", or pass --min-cosine 0 to accept it.")


def _machine() -> dict:
    m = machine()
    m["int8_dot_product"] = "VNNI/dotprod" if int8.has_vnni() else "none (no VNNI)"
    return m


def _fp32(stage: Bundle, models: dict, graphs: list[str], opts: ConvertOptions, work: Path) -> Quantized:
    """No quantization: the (pruned) graphs go on as they are; the guard only checks them."""
    return Quantized(models, {}, None, {}, {})


def _fp16(stage: Bundle, models: dict, graphs: list[str], opts: ConvertOptions, work: Path) -> Quantized:
    _say(f"FP16: range scan of {len(graphs)} graph(s) "
         f"{'on ' + str(opts.calib) if opts.calib else 'on synthetic inputs'}", opts)
    first_feeds: dict[str, list[dict]] = {}
    models = {g: for_fp16(models[g]) for g in graphs}
    if opts.calib is not None:
        with GraphFeeds(stage, opts.calib, limit=opts.calib_limit, threads=opts.threads) as gf:
            results = fp16.convert_fp16_graphs(models, _recording(gf.iter_feeds(), first_feeds, 1))
    else:
        synthetic = _sample_feeds(stage, None, 8, opts.threads)
        results = fp16.convert_fp16_graphs(models, ({g: synthetic[g][i] for g in graphs} for i in range(8)))
    info = {}
    for g in graphs:
        info[g] = results[g].summary() | {"feeds": "calibration" if opts.calib else "synthetic (no --calib)"}
        if opts.calib is None:
            info[g]["note"] = "range scan on synthetic inputs: give --calib for a real overflow check"
    block = {g: [k["node"] for k in results[g].kept_fp32] for g in graphs}
    named = {g: _named(models[g]) for g in graphs}

    def quantize_fn(g, exclude):
        return fp16.to_fp16(copy_model(named[g]), block[g] + list(exclude))

    groups = {g: _compute_groups(named[g], exclude=set(block[g])) for g in graphs}
    return Quantized({g: results[g].model for g in graphs}, {"fp16": info}, quantize_fn, groups, first_feeds)


def _named(model):
    m = copy_model(model)
    name_nodes(m)
    return m


def _compute_groups(model, exclude: set[str]) -> list[list[str]]:
    """Layer groups of a float model (a computing node and the activations fused with it)."""
    skip = set(int8.MOVEMENT_OPS) | set(int8.TRAILING_ACTIVATIONS) | {"Constant", "Shape", "Cast"}
    return int8.layer_groups(model, {n.name for n in model.graph.node
                                     if n.name not in exclude and n.op_type not in skip})


def _int8(stage: Bundle, models: dict, graphs: list[str], opts: ConvertOptions, work: Path) -> Quantized:
    on_openvino = opts.target == "openvino"
    fixed = int8.target_flavour(opts.target) or opts.flavour or (None if on_openvino else int8.env_flavour())
    flavours, info = {}, {}
    prepared, per_channel, opset_notes = {}, {}, {}
    for g in graphs:
        ready = opsets.ready_for_qdq(models[g])
        models[g], per_channel[g] = ready.model, ready.per_channel
        if ready.note:
            opset_notes[g] = ready.note
            _say(f"INT8: graph {g}: {ready.note}", opts)
        _say(f"INT8: graph {g}: preparing (shape inference, BatchNorm folding)", opts)
        prepared[g] = int8.prepare(models[g], work)
    # What follows a graph's last compute op (a detector's box decode) stays float: int8.quantize and
    # openvino.quantize leave it out themselves; it is counted here for the report.
    tails = {g: int8.tail_nodes(prepared[g]) for g in graphs}
    symmetric = fixed == "trt"
    carried = f" as streams with the state carried ({stateful.describe_states(stage)})" \
        if stateful.stateful_graphs(stage) else ""
    _say(f"INT8: calibrating {len(graphs)} graph(s) ({opts.calib_method}) on {opts.calib}{carried}", opts)
    # One pass over the data calibrates every graph; it also keeps the feeds the flavour timing needs
    # (only when the flavour is chosen by timing); for OpenVINO, NNCF's calibration subset as well.
    # A stateful graph is calibrated on consecutive chunks with the state its float graph carries
    # (converters/stateful.py): zeros alone never show the ranges a state grows to.
    sample_feeds: dict[str, list[dict]] = {}
    keep = openvino.NNCF_SAMPLES if on_openvino else 1 if fixed else SAMPLE_FEEDS
    with stateful.calibration_feeds(stage, opts.calib, opts.calib_limit, opts.threads) as gf:
        samples = _recording(gf.iter_feeds(), sample_feeds, keep)
        calibs = int8.calibrate_graphs(prepared, samples, opts.calib_method, symmetric, workdir=work)
    quantized = dict(models)
    for g in graphs:
        gi: dict[str, Any] = {"calibration": {"method": opts.calib_method, "samples": calibs[g].samples,
                                              "samples_per_chunk": calibs[g].chunk, "symmetric_ranges": symmetric},
                              "per_channel": per_channel[g]}
        if g in opset_notes:
            gi["opset"] = opset_notes[g]
        if fixed:
            flavours[g] = fixed
            if on_openvino:
                quantized[g] = openvino.quantize(fixed, prepared[g], calibs[g], sample_feeds[g], workdir=work)
            else:
                quantized[g] = int8.quantize(prepared[g], calibs[g], fixed, per_channel=per_channel[g], workdir=work)
            why = {"trt": "target tensorrt: symmetric S8S8, zero point 0, TensorRT placement"}.get(
                fixed, "forced (--flavour or EDGEMM_INT8_FLAVOUR)")
            settings = openvino.describe(fixed) if on_openvino else int8.flavour_spec(fixed).describe()
            gi["flavour"] = {"chosen": fixed, "why": why, "settings": settings}
        else:
            runtime = "OpenVINO" if on_openvino else "ONNX Runtime"
            _say(f"INT8: graph {g}: timing the Q/DQ flavours against FP32 under {runtime} on this CPU", opts)
            if on_openvino:
                choice = openvino.choose(prepared[g], models[g], calibs[g], sample_feeds[g], opts.threads,
                                        duration_s=FLAVOUR_TIMING_S, workdir=work)
            else:
                choice = int8.choose_flavour(prepared[g], models[g], calibs[g], sample_feeds[g], opts.threads,
                                             duration_s=FLAVOUR_TIMING_S, per_channel=per_channel[g])
            best = choice["candidates"][choice["flavour"]]
            others = ", ".join(f"{k} {v['speedup_vs_fp32']:.2f}x" if "speedup_vs_fp32" in v else f"{k} {v['rejected']}"
                               for k, v in choice["candidates"].items())
            gi["flavour"] = {"fp32_p50_ms": choice["fp32_p50_ms"], "candidates": choice["candidates"],
                             "threads": opts.threads, "timing_s": FLAVOUR_TIMING_S}
            if best["speedup_vs_fp32"] < MIN_INT8_SPEEDUP:
                # INT8 that is slower than FP32 where it will run is worse than nothing: this graph stays
                # FP32 (small graphs: Q/DQ overhead exceeds the integer kernels' gain).
                flavours[g] = "fp32"
                gi["flavour"].update(chosen="fp32", why=f"every INT8 flavour was slower than FP32 on this CPU "
                                                          f"({others}); kept in FP32")
                _say(f"INT8: graph {g}: kept FP32, INT8 is slower here ({others})", opts)
            else:
                flavours[g] = choice["flavour"]
                quantized[g] = choice["models"][choice["flavour"]]
                gi["flavour"].update(chosen=choice["flavour"], why="fastest on this CPU (interleaved timing) "
                                                                   "among flavours as close to FP32")
                _say(f"INT8: graph {g}: {choice['flavour']} chosen ({others} vs FP32)", opts)
        gi["qdq"] = qdq.qdq_counts(quantized[g])
        if tails[g]:
            gi["float_tail"] = len(tails[g])
        front = frontend.waveform_front_end(prepared[g])  # int8.quantize keeps it float: said in the report
        if front:
            ops = {n.name: n.op_type for n in prepared[g].graph.node}
            gi["kept_float"] = [{"node": n, "op": ops[n], "reason": frontend.REASON} for n in sorted(front)]
        info[g] = gi
    frontend.check_left_to_quantize(quantized, prepared, str(stage.source or stage.root))
    floats = {g: models[g] for g in graphs if flavours[g] == "fp32"}

    def quantize_fn(g, exclude):
        if g in floats:
            return floats[g]
        if on_openvino:
            return openvino.quantize(flavours[g], prepared[g], calibs[g], sample_feeds[g], exclude, workdir=work)
        return int8.quantize(prepared[g], calibs[g], flavours[g], exclude, per_channel=per_channel[g],
                             workdir=work)

    groups = {g: [] if g in floats else int8.quantized_groups(prepared[g], quantized[g]) for g in graphs}
    first_feeds = {g: sample_feeds[g][:1] for g in graphs}
    return Quantized(quantized, {"int8": info, "int8_flavours": flavours}, quantize_fn, groups, first_feeds)


def _guard(bundle: Bundle, originals: dict, quantized: Quantized, opts: ConvertOptions) -> Guarded:
    on_eval = opts.eval is not None
    data = opts.eval if on_eval else opts.calib
    folder = DataFolder(data, bundle, "Evaluation data" if on_eval else "Calibration data")
    # The guard holds its samples in memory (it measures many candidates on them): at most the limit the
    # user gave for this folder, else GUARD_MAX_SAMPLES.
    limit = (opts.eval_limit if on_eval else opts.calib_limit) or guard.GUARD_MAX_SAMPLES
    samples, capped = guard.guard_samples(folder, limit)
    cap_note = None
    if capped:
        why = ("--eval-limit" if opts.eval_limit else f"at most {guard.GUARD_MAX_SAMPLES} by default") if on_eval \
            else ("--calib-limit" if opts.calib_limit else f"at most {guard.GUARD_MAX_SAMPLES} by default")
        cap_note = f"measured on {limit} samples spread over {data} ({why}); the rest were not read"
        _say(f"accuracy guard: {cap_note}", opts)
    with guard.BundleEvaluator(bundle, samples, opts.threads) as evaluator:
        metric_note = {"metric_note": evaluator.metric_note} if evaluator.metric_note else {}
        if metric_note:
            _say(f"accuracy guard: {evaluator.metric_note}", opts)
        evaluator.set_reference(originals)
        if quantized.quantize_fn is None:  # fp32 (pruning only): nothing to keep in float, only a check
            out = evaluator.outputs(quantized.models)
            m_float, m = evaluator.metric(evaluator.reference), evaluator.metric(out)
            record = {"metric": evaluator.metric_name, "metric_float": m_float, "metric_final": m,
                      "drop_points": m_float - m, "max_drop_points": opts.max_drop, "samples": len(samples),
                      "note": "fp32: no quantized layers to keep in float; checked only"} | metric_note
            if cap_note:
                record["sample_cap"] = cap_note
            if m_float - m > opts.max_drop:
                raise EdgemmError(f"Accuracy guard | Drop of {m_float - m:.2f} points ({evaluator.metric_name}) "
                                  f"exceeds --max-drop {opts.max_drop:g}; expected a milder --prune ratio or a "
                                  "larger budget.")
            return Guarded(quantized.models, record)
        kwargs = {"max_iterations": opts.guard_iterations} if opts.guard_iterations else {}
        result = guard.accuracy_guard(evaluator, originals, quantized.quantize_fn, quantized.groups, opts.max_drop,
                                      quantized=quantized.models, quiet=opts.quiet, **kwargs)
    record = result.to_dict() | metric_note | {"data": str(data), "samples": len(samples)}
    if cap_note:
        record["sample_cap"] = cap_note
    if not on_eval:
        record["note"] = "measured on the calibration data (no --eval given)"
    if not result.within_budget:
        raise EdgemmError(f"Accuracy guard | Best drop {result.drop:.2f} points ({result.metric_name}) exceeds "
                          f"--max-drop {opts.max_drop:g} ({result.stop_reason}); expected a larger budget, another "
                          "--calib-method, more calibration data, or a milder --prune.")
    kept = sum(1 for s in result.steps if s.kept_float)
    _say(f"accuracy guard: drop {result.drop:.2f} points within {opts.max_drop:g}; {kept} layer group(s) kept "
         "in float", opts)
    return Guarded(result.models, record, result.excluded)


def _check_streams(bundle: Bundle, originals: dict, models: dict, opts: ConvertOptions) -> dict | None:
    """INT8 of a model with recurrent state, judged over streams with each model carrying its own state
    (converters/stateful.py): refused in one line when far from FP32; else the record for the report."""
    if opts.precision != "int8" or not stateful.stateful_graphs(bundle):
        return None
    data, limit, what = stateful.data_for_check(opts)
    _say(f"INT8: checking against FP32 over streams of {data} with the state carried "
         f"({stateful.describe_states(bundle)})", opts)
    record = stateful.check_streams(bundle, originals, models, data, limit, opts.threads, what=what)
    g, out = record["verdict"]["graph"], record["verdict"]["output"]
    d = record["graphs"][g][out]
    agree = f", decisions agree on {d['decision_agreement']:.1%}" if "decision_agreement" in d else ""
    _say(f"INT8: {out} over {record['chunks']} chunks: cosine {d['cosine']:.4f}, max abs {d['max_abs']:.3g}{agree}",
         opts)
    return record


def _describe_final(models: dict, excluded: dict[str, list[str]], record: dict) -> dict:
    """The quantization record describes the all-quantized models; after the guard kept layers in float
    it must describe the models delivered: Q/DQ counts, the nodes kept in FP32 (each with its reason),
    the nodes that compute in FP16. Returns the record updated (a copy)."""
    record = copy.deepcopy(record)
    for g, gi in record.get("int8", {}).items():
        gi["qdq"] = qdq.qdq_counts(models[g])
    for g, gi in record.get("fp16", {}).items():
        ops = {n.name: n.op_type for n in models[g].graph.node}
        have = {k["node"] for k in gi["kept_fp32"]}
        gi["kept_fp32"] = gi["kept_fp32"] + [
            {"node": n, "op": ops.get(n, "?"), "reason": "accuracy guard: kept in float to stay within --max-drop"}
            for n in excluded.get(g, []) if n not in have]
        gi["fp16_nodes"] = fp16.fp16_node_count(models[g])
    return record


# --precision -> the stage that quantizes the (pruned) graphs
QUANTIZERS: dict[str, Callable[..., Quantized]] = {"fp32": _fp32, "fp16": _fp16, "int8": _int8}


def _tensorrt(converted: Bundle, models: dict, manifest, tmp: Path, opts: ConvertOptions) -> dict:
    """Engines into tmp (recorded in its manifest); the conversion's tensorrt record."""
    try:
        builds = build_engines(converted, _engine_options(opts), models=models)
    except BuilderUnavailable as exc:
        # The TensorRT-ready Q/DQ graphs are still the product on a machine without a GPU: the engine is
        # built on the device (it is tied to its GPU and TensorRT version). Any other build failure (parser,
        # profile, builder) is the user's to see: it propagates and nothing is written.
        _say(f"no TensorRT engine built: {exc}", opts)
        return {"engine": None, "reason": str(exc)}
    for g, b in builds.items():
        (tmp / b.file).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(tmp / b.file, b.plan)
        manifest.graphs[g].engine = b.info
    write_json(tmp / MANIFEST_NAME, manifest.to_dict())
    load_bundle(tmp)
    return {g: {**b.info, "seconds": b.seconds, "warnings": b.warnings} for g, b in builds.items()}


def _bake(manifest, models: dict, parts: tuple[str, ...], why: str, tmp: Path, opts: ConvertOptions):
    """Prepend the preprocessing to the delivered graphs (after latency and accuracy were measured on them, with
    the Python preprocessing), check the baked graphs give the same outputs, and rewrite OUT's graphs and
    manifest (in place: TensorRT builds its engine from them). Returns the graphs and the record."""
    _say(f"baking the {' and '.join(parts)} preprocessing into the graph(s)", opts)
    baked = bake.bake_bundle(manifest, models, parts, opts.bake_stft, str(tmp))
    diff = bake.agreement((manifest, models), (baked.manifest, baked.models), opts.threads)
    record = baked.record | {"why": why, "max_abs_diff_vs_python": diff}
    for g, spec in baked.manifest.graphs.items():
        manifest.graphs[g] = spec
        save_model(baked.models[g], tmp / spec.file)
    manifest.provenance["bake_preprocess"] = record
    write_json(tmp / MANIFEST_NAME, manifest.to_dict())
    load_bundle(tmp)
    return baked.models, record


def _nms_in_engine(converted: Bundle, models: dict, manifest, tmp: Path) -> tuple[dict, dict]:
    """Append EfficientNMS to the decision graph (after the guard, latency and validation ran on the plain
    graph, which ONNX Runtime can run) and rewrite its file and the manifest before the engine build.
    Returns the graphs with it, and its record."""
    g = decision_graph(converted)
    models = dict(models)
    models[g], manifest.graphs[g].outputs = append_efficient_nms(models[g], manifest.graphs[g])
    save_model(models[g], tmp / manifest.graphs[g].file)
    write_json(tmp / MANIFEST_NAME, manifest.to_dict())
    load_bundle(tmp)
    return models, {"graph": g, "plugin": "EfficientNMS_TRT", "outputs": [o.name for o in manifest.graphs[g].outputs]}


def _provenance(bundle: Bundle, opts: ConvertOptions, conversion: dict, parent: dict) -> dict:
    sources = {}
    for g in bundle.manifest.graphs:
        p = bundle.graph_path(g)
        sources[g] = {"file": str(p), "sha256": file_sha256(p)}
        if bundle.source and bundle.source.is_file() and bundle.source.suffix == ".onnx" and bundle.source != p:
            # --shape on fixed dims: the graph is a copy at that size (edgemm/reshape.py); name the original too
            sources[g]["reshaped_from"] = {"file": str(bundle.source), "sha256": file_sha256(bundle.source)}
    prov: dict[str, Any] = {
        "precision": opts.precision,
        "converter": f"edgemm convert {__version__}",
        "converted_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source_model": str(bundle.source or bundle.root),
        "source_graphs": sources,
        "settings": opts.settings(),
        "tools": {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
    }
    if opts.target == "openvino":
        prov["tools"].update(openvino.versions())
    if "int8" in conversion:
        prov["int8_flavour"] = conversion["int8_flavours"]
        kinds = set(conversion["int8_flavours"].values())
        if "fp32" in kinds:  # INT8 was slower than FP32 for these graphs: they stayed FP32
            prov["precision"] = "fp32" if kinds == {"fp32"} else "mixed"
        prov["calibration_method"] = opts.calib_method
        prov["calibration_samples"] = {g: v["calibration"]["samples"] for g, v in conversion["int8"].items()}
    if "fp16" in conversion:
        prov["kept_fp32"] = {g: [k["node"] for k in v["kept_fp32"]] for g, v in conversion["fp16"].items()}
    guard = conversion.get("accuracy_guard")
    if guard:
        prov["accuracy_guard"] = {"max_drop_points": opts.max_drop, "metric": guard.get("metric"),
                                  "drop_points": guard.get("drop_points"),
                                  "layers_kept_float": guard.get("layers_kept_float", {})}
    if opts.prune:
        prov["prune"] = opts.prune
    if parent:
        prov["parent_provenance"] = {k: v for k, v in parent.items() if k != "precision"} | {
            "precision": parent.get("precision", "fp32")}
    return prov


def _warnings(report: dict, opts: ConvertOptions) -> list[str]:
    out = []
    lat = report.get("latency_ms_p50", {})
    for g, v in lat.items():
        sp = v.get("speedup")
        if opts.precision in ("int8", "fp16") and opts.target != "tensorrt" and sp is not None and sp < 1.0:
            out.append(f"graph {g}: the {opts.precision} model is SLOWER than the original on this CPU "
                       f"({sp:.2f}x); {opts.target}'s kernels do not fuse it here. On a GPU build with TensorRT.")
    if opts.precision == "fp16" and opts.target == "onnxruntime":
        out.append("FP16 on the CPU: onnxruntime runs most FP16 ops through casts; FP16 pays off on GPUs "
                   "(TensorRT, CUDA EP), not here")
    floor = report.get("conversion", {}).get("closeness_floor", {})
    if floor.get("note"):
        out.append(f"closeness floor: {floor['note']}")
    return out
