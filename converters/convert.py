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
from typing import Any


from edgemm.bundle import MANIFEST_NAME, Bundle, atomic_output_dir, file_sha256, load_bundle
from edgemm.errors import EdgemmError
from edgemm.outputs import write_atomic, write_json
from edgemm.shapes import parse_shape_spec, shape_overrides

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_CALIB_LIMIT = 512  # TensorRT and ORT guidance: a few hundred representative samples
FLAVOUR_TIMING_S = 2.0
MIN_INT8_SPEEDUP = 0.95  # below this (beyond timing noise) a graph's INT8 is slower than FP32: keep FP32
BENCH_S = 3.0
PRUNE_SAMPLES = 256  # calibration samples pruning holds in memory (importance, re-fit, final check)
SAMPLE_FEEDS = 8  # feeds per graph for the INT8 flavour check and timing


@dataclass
class ConvertOptions:
    precision: str | None = None  # None: fp16 with --target tensorrt (as trtexec --fp16), else fp32
    calib: str | Path | None = None
    calib_limit: int | None = DEFAULT_CALIB_LIMIT
    calib_method: str = "minmax"
    eval: str | Path | None = None
    eval_limit: int | None = None
    max_drop: float | None = None
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

    def settings(self) -> dict:
        d = asdict(self)
        for k in ("calib", "eval"):
            d[k] = str(d[k]) if d[k] is not None else None
        d.pop("quiet")
        d.pop("force")
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


def _engine_options(opts: ConvertOptions):
    from edgemm.converters.tensorrt import EngineOptions

    return EngineOptions(max_batch=opts.max_batch, opt_batch=1, shapes=dict(parse_shape_spec(s) for s in opts.shapes),
                         timing_cache=opts.timing_cache, workspace_mb=opts.workspace_mb,
                         builder_optimization_level=opts.builder_opt_level, dla_core=opts.dla)


def check_tensorrt_ready(bundle: Bundle, out: str | Path) -> None:
    """An INT8 bundle quantized for ONNX Runtime (uint8, or non-zero zero points) cannot become a TensorRT
    engine: its float graph is not in the bundle, so refuse with the command that quantizes for TensorRT."""
    from edgemm.converters.tensorrt import asymmetric_qdq

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


def check_options(model: str | Path, out: str | Path, opts: ConvertOptions) -> None:
    from edgemm.converters import int8

    if opts.precision is not None and opts.precision not in PRECISIONS:
        raise EdgemmError(f"Precision: {opts.precision} | Unknown; expected one of {', '.join(PRECISIONS)}.")
    if opts.calib_method not in int8.CALIB_METHODS:
        raise EdgemmError(f"Calibration method: {opts.calib_method} | Unknown; expected one of "
                          f"{', '.join(int8.CALIB_METHODS)}.")
    int8.target_flavour(opts.target)
    if opts.target == "openvino":
        from edgemm.converters import openvino

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
        from edgemm.converters.tensorrt import check_build_options

        check_build_options(_engine_options(opts))
    if opts.shapes:
        shape_overrides(opts.shapes)  # the format, and one --shape per input, now
    if opts.precision == "int8":
        int8.check_onnxruntime()  # before minutes of calibration, not after
    if opts.prune:
        from edgemm.converters.prune import parse_spec

        parse_spec(opts.prune)
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
    from edgemm.converters.graphs import save_model

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
    from edgemm.converters.calibration import GraphFeeds, graph_order

    graphs = graph_order(bundle)
    if calib is not None:
        out: dict[str, list[dict]] = {g: [] for g in graphs}
        with GraphFeeds(bundle, calib, limit=limit, progress=False, threads=threads) as gf:
            for s in gf.samples():
                for g, f in gf.feeds_for(s).items():
                    out[g].append(f)
        return out
    from edgemm.feeds import onnx_input_metadata, synthesize

    return {g: [synthesize(onnx_input_metadata(bundle.load_graph(g, load_weights=False)), bundle.manifest.graphs[g], 1, i)
                for i in range(limit)] for g in graphs}


def measure(original: Bundle, converted: Bundle, feeds: dict[str, list[dict]], threads, seconds: float,
            target: str = "onnxruntime") -> dict:
    """Latency (interleaved, per graph), size, parameters and MACs before and after; on OpenVINO for
    --target openvino (the runtime the graphs are made for), else on ONNX Runtime's CPU provider."""
    from edgemm.converters.timing import time_models
    from edgemm.converters.validate import size_section

    models, graph_feeds = {}, {}
    for g in original.manifest.graphs:
        for label, b in (("before", original), ("after", converted)):
            if target == "openvino":
                from edgemm.runners.openvino import OpenVINORunner

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


def convert(model: str | Path, out: str | Path, opts: ConvertOptions | None = None) -> dict:
    """Convert a bundle (or .onnx) into OUT. Returns the report dict (also written as OUT/report.json)."""
    opts = opts or ConvertOptions()
    check_options(model, out, opts)
    from edgemm.converters.calibration import GraphFeeds, graph_order
    from edgemm.converters.data import DataFolder
    from edgemm.converters.graphs import save_model

    started = time.monotonic()
    precision_defaulted = opts.precision is None
    opts = dataclasses.replace(opts, precision=resolve_precision(opts))
    bundle = load_bundle(model, shapes=shape_overrides(opts.shapes))
    if opts.target == "tensorrt":
        check_tensorrt_ready(bundle, out)
    # Data folders (their first sample against every graph's inputs) and --shape names are checked
    # against the model before any work.
    for folder, what in ((opts.calib, "Calibration data"), (opts.eval, "Evaluation data")):
        if folder is not None:
            with GraphFeeds(bundle, DataFolder(folder, bundle, what), limit=1, what=what, progress=False,
                            threads=opts.threads) as gf:
                next(gf.iter_feeds(), None)
    if opts.shapes:
        from edgemm.converters.tensorrt import check_shapes

        check_shapes(bundle, dict(parse_shape_spec(s) for s in opts.shapes))
    if opts.nms_in_engine:
        from edgemm.converters.data import decision_graph
        from edgemm.converters.detection_nms import detection_output

        g = decision_graph(bundle)
        if detection_output(bundle.manifest.graphs[g]) is None:
            raise EdgemmError(f"--nms-in-engine | Graph {g} has no yolov8 or yolov5 detection output; expected "
                              "a raw YOLO head (end2end and efficient_nms outputs are already after NMS).")
    graphs = graph_order(bundle)
    originals = {g: bundle.load_graph(g) for g in graphs}
    report: dict[str, Any] = {"title": f"edgemm convert: {bundle.name} -> {opts.precision}"
                              + (f", pruned {opts.prune}" if opts.prune else "")
                              + (f", target {opts.target}" if opts.target != "onnxruntime" else "")}
    conversion: dict[str, Any] = {"precision": opts.precision, "target": opts.target}
    if precision_defaulted and opts.target == "tensorrt":
        conversion["precision_note"] = "fp16: the default for --target tensorrt (--precision fp32 keeps FP32)"
    provenance_extra: dict[str, Any] = {}
    # The first few feeds of each graph, kept from whichever pass over the calibration data runs first
    # (for the latency measurement): no extra pass over the data for them.
    first_feeds: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="edgemm-convert-") as work:
        work = Path(work)
        current = dict(originals)
        stage = bundle

        # 1. Prune -------------------------------------------------------------------------------------
        if opts.prune:
            from edgemm.converters.prune import prune

            feeds: dict[str, list[dict]] = {g: [] for g in graphs}
            if opts.calib is not None:
                # One pass over the data for every graph (and one run of the encoders for a head's feeds).
                limit = min(opts.calib_limit or PRUNE_SAMPLES, PRUNE_SAMPLES)
                _say(f"pruning: reading {limit} calibration samples from {opts.calib}", opts)
                with GraphFeeds(stage, opts.calib, limit=limit, threads=opts.threads) as gf:
                    for sample in _recording(gf.iter_feeds(), first_feeds, 1):
                        for g, f in sample.items():
                            feeds[g].append(f)
            prune_info = {}
            for g in graphs:
                _say(f"pruning graph {g} ({opts.prune})", opts)
                current[g], prune_info[g] = prune(current[g], opts.prune, feeds[g] or None,
                                                  importance="activation" if feeds[g] else "l1",
                                                  threads=opts.threads, max_samples=PRUNE_SAMPLES)
                feeds[g] = []  # release this graph's samples before the next one
            stage = stage_bundle(bundle, current, work / "pruned")
            conversion["prune"] = prune_info
            provenance_extra["prune"] = opts.prune

        # 2. Quantize ------------------------------------------------------------------------------------
        guard_setup = None
        if opts.precision == "fp16":
            guard_setup = _fp16(stage, current, graphs, opts, conversion, first_feeds)
        elif opts.precision == "int8":
            guard_setup = _int8(stage, current, graphs, opts, conversion, work, first_feeds)

        # 3. Accuracy guard --------------------------------------------------------------------------------
        if opts.max_drop is not None:
            current = _guard(bundle, originals, current, guard_setup, opts, conversion)
        if opts.precision == "int8" and opts.target == "tensorrt":
            # The layers INT8 does not cover run in FP16 in the engine (FP16 Q/DQ scales under strong typing),
            # as trtexec --int8 --fp16 would; checked for overflow like any FP16 conversion.
            _fp16(stage_bundle(bundle, current, work / "int8"), current, graphs, opts, conversion, first_feeds)

        # 4. Write, validate, measure, build -----------------------------------------------------------------
        manifest = copy.deepcopy(bundle.manifest)
        manifest.inferred = False
        parent = dict(bundle.manifest.provenance)
        manifest.provenance = _provenance(bundle, opts, conversion, provenance_extra, parent)
        with atomic_output_dir(out, opts.force) as tmp:
            for g, spec in manifest.graphs.items():
                spec.engine = None
                save_model(current[g], tmp / spec.file)
            write_json(tmp / MANIFEST_NAME, manifest.to_dict())
            converted = load_bundle(tmp)  # a bundle that does not load must not replace anything
            feeds = first_feeds if all(first_feeds.get(g) for g in graphs) else \
                _sample_feeds(stage, opts.calib, 1, opts.threads)
            _say(f"measuring latency before/after ({opts.bench_seconds:g} s, interleaved)", opts)
            perf = measure(bundle, converted, feeds, opts.threads, opts.bench_seconds, opts.target)
            report.update(perf)
            data = opts.eval if opts.eval is not None else opts.calib
            if data is not None:
                from edgemm.converters.validate import compare_bundles

                _say(f"validating on {data}", opts)
                limit = opts.eval_limit if opts.eval is not None else opts.calib_limit
                comparison = compare_bundles(bundle, converted, data, threads=opts.threads, limit=limit)
                if opts.eval is None:
                    comparison["note"] = ("no --eval given: measured on the calibration data (optimistic; "
                                          "give a held-out --eval folder for a fair figure)")
                if "converted" in comparison:  # it ran from the temporary folder that becomes OUT
                    comparison["converted"]["model"] = str(out)
                report.update(comparison)
            else:
                report["note"] = "no --eval or --calib data: accuracy and closeness not measured"
            if opts.target == "tensorrt":
                _tensorrt(converted, current, manifest, tmp, opts, conversion)
            conversion["seconds"] = round(time.monotonic() - started, 1)
            report["conversion"] = conversion
            report["provenance"] = manifest.provenance
            report["machine"] = _machine()
            report["warnings"] = _warnings(report, opts)
            from edgemm.converters.validate import write_report

            write_report(tmp, report)
    for w in report["warnings"]:
        _say(f"warning: {w}", opts)
    return report


def _machine() -> dict:
    from edgemm.bench import machine

    from edgemm.converters.int8 import has_vnni

    m = machine()
    m["int8_dot_product"] = "VNNI/dotprod" if has_vnni() else "none (no VNNI)"
    return m


def _fp16(stage: Bundle, current: dict, graphs: list[str], opts: ConvertOptions, conversion: dict,
          first_feeds: dict):
    from edgemm.converters import fp16
    from edgemm.converters.calibration import GraphFeeds

    _say(f"FP16: range scan of {len(graphs)} graph(s) "
         f"{'on ' + str(opts.calib) if opts.calib else 'on synthetic inputs'}", opts)
    from edgemm.converters.tensorrt import for_fp16

    models = {g: for_fp16(current[g]) for g in graphs}
    if opts.calib is not None:
        with GraphFeeds(stage, opts.calib, limit=opts.calib_limit, threads=opts.threads) as gf:
            results = fp16.convert_fp16_graphs(models, _recording(gf.iter_feeds(), first_feeds, 1))
    else:
        synthetic = _sample_feeds(stage, None, 8, opts.threads)
        results = fp16.convert_fp16_graphs(models, ({g: synthetic[g][i] for g in graphs} for i in range(8)))
    fp16_info = {}
    block: dict[str, list[str]] = {}
    bases = {}
    for g in graphs:
        res = results[g]
        bases[g] = models[g]
        block[g] = [k["node"] for k in res.kept_fp32]
        current[g] = res.model
        fp16_info[g] = res.summary() | {"feeds": "calibration" if opts.calib else "synthetic (no --calib)"}
        if opts.calib is None:
            fp16_info[g]["note"] = "range scan on synthetic inputs: give --calib for a real overflow check"
    conversion["fp16"] = fp16_info

    def quantize_fn(g, exclude):
        from edgemm.converters.fp16 import _convert

        return _convert(_named(bases[g]), block[g] + list(exclude))

    def groups_for(g):
        return _compute_groups(_named(bases[g]), exclude=set(block[g]))

    return {"quantize_fn": quantize_fn, "groups": {g: groups_for(g) for g in graphs}, "quantized": dict(current)}


def _named(model):
    from edgemm.converters.graphs import copy_model
    from edgemm.converters.int8 import name_nodes

    m = copy_model(model)
    name_nodes(m)
    return m


def _compute_groups(model, exclude: set[str]) -> list[list[str]]:
    """Layer groups of a float model (a computing node and the activations fused with it)."""
    from edgemm.converters.int8 import MOVEMENT_OPS, TRAILING_ACTIVATIONS, layer_groups

    skip = set(MOVEMENT_OPS) | set(TRAILING_ACTIVATIONS) | {"Constant", "Shape", "Cast"}
    return layer_groups(model, {n.name for n in model.graph.node if n.name not in exclude and n.op_type not in skip})


def _int8(stage: Bundle, current: dict, graphs: list[str], opts: ConvertOptions, conversion: dict, work: Path,
          first_feeds: dict):
    from edgemm.converters import int8, opsets
    from edgemm.converters.calibration import GraphFeeds

    on_openvino = opts.target == "openvino"
    if on_openvino:
        from edgemm.converters import openvino as ov_int8
    fixed = int8.target_flavour(opts.target) or opts.flavour or (None if on_openvino else int8.env_flavour())
    flavours, info = {}, {}
    prepared, per_channel, opset_notes = {}, {}, {}
    for g in graphs:
        ready = opsets.ready_for_qdq(current[g])
        current[g], per_channel[g] = ready.model, ready.per_channel
        if ready.note:
            opset_notes[g] = ready.note
            _say(f"INT8: graph {g}: {ready.note}", opts)
        _say(f"INT8: graph {g}: preparing (shape inference, BatchNorm folding)", opts)
        prepared[g] = int8.prepare(current[g], work)
    symmetric = fixed == "trt"
    _say(f"INT8: calibrating {len(graphs)} graph(s) ({opts.calib_method}) on {opts.calib}", opts)
    # One pass over the data calibrates every graph; it also keeps the feeds the flavour timing needs
    # (only when the flavour is chosen by timing); for OpenVINO, NNCF's calibration subset as well.
    sample_feeds: dict[str, list[dict]] = {}
    keep = ov_int8.NNCF_SAMPLES if on_openvino else 1 if fixed else SAMPLE_FEEDS
    with GraphFeeds(stage, opts.calib, limit=opts.calib_limit, threads=opts.threads) as gf:
        samples = _recording(gf.iter_feeds(), sample_feeds, keep)
        calibs = int8.calibrate_graphs(prepared, samples, opts.calib_method, symmetric, workdir=work)
    for g in graphs:
        first_feeds.setdefault(g, sample_feeds[g][:1])
        gi: dict[str, Any] = {"calibration": {"method": opts.calib_method, "samples": calibs[g].samples,
                                              "samples_per_chunk": calibs[g].chunk, "symmetric_ranges": symmetric},
                              "per_channel": per_channel[g]}
        if g in opset_notes:
            gi["opset"] = opset_notes[g]
        if fixed:
            flavours[g] = fixed
            if on_openvino:
                current[g] = ov_int8.quantize(fixed, prepared[g], calibs[g], sample_feeds[g], workdir=work)
            else:
                current[g] = int8.quantize(prepared[g], calibs[g], fixed, per_channel=per_channel[g], workdir=work)
            why = {"trt": "target tensorrt: symmetric S8S8, zero point 0, TensorRT placement"}.get(
                fixed, "forced (--flavour or EDGEMM_INT8_FLAVOUR)")
            settings = ov_int8.describe(fixed) if on_openvino else int8.flavour_spec(fixed).describe()
            gi["flavour"] = {"chosen": fixed, "why": why, "settings": settings}
        else:
            runtime = "OpenVINO" if on_openvino else "ONNX Runtime"
            _say(f"INT8: graph {g}: timing the Q/DQ flavours against FP32 under {runtime} on this CPU", opts)
            if on_openvino:
                choice = ov_int8.choose(prepared[g], current[g], calibs[g], sample_feeds[g], opts.threads,
                                        duration_s=FLAVOUR_TIMING_S, workdir=work)
            else:
                choice = int8.choose_flavour(prepared[g], current[g], calibs[g], sample_feeds[g], opts.threads,
                                             duration_s=FLAVOUR_TIMING_S, per_channel=per_channel[g])
            best = choice["candidates"][choice["flavour"]]
            others = ", ".join(f"{k} {v['speedup_vs_fp32']:.2f}x" for k, v in choice["candidates"].items())
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
                current[g] = choice["models"][choice["flavour"]]
                gi["flavour"].update(chosen=choice["flavour"], why="fastest on this CPU (interleaved timing) "
                                                                   "among flavours as close to FP32")
                _say(f"INT8: graph {g}: {choice['flavour']} chosen ({others} vs FP32)", opts)
        gi["qdq"] = int8.qdq_counts(current[g])
        info[g] = gi
    conversion["int8"] = info
    conversion["int8_flavours"] = flavours
    floats = {g: current[g] for g in graphs if flavours[g] == "fp32"}

    def quantize_fn(g, exclude):
        if g in floats:
            return floats[g]
        if on_openvino:
            return ov_int8.quantize(flavours[g], prepared[g], calibs[g], sample_feeds[g], exclude, workdir=work)
        return int8.quantize(prepared[g], calibs[g], flavours[g], exclude, per_channel=per_channel[g],
                             workdir=work)

    groups = {g: [] if g in floats else int8.quantized_groups(prepared[g], current[g]) for g in graphs}
    return {"quantize_fn": quantize_fn, "groups": groups, "quantized": dict(current)}


def _guard(bundle: Bundle, originals: dict, current: dict, setup: dict | None, opts: ConvertOptions,
           conversion: dict) -> dict:
    from edgemm.converters import guard
    from edgemm.converters.data import DataFolder

    on_eval = opts.eval is not None
    data = opts.eval if on_eval else opts.calib
    folder = DataFolder(data, bundle, "Evaluation data" if on_eval else "Calibration data")
    # The guard holds its samples in memory (it measures many candidates on them): at most the limit the
    # user gave for this folder, else GUARD_MAX_SAMPLES.
    limit = (opts.eval_limit if on_eval else opts.calib_limit) or guard.GUARD_MAX_SAMPLES
    samples, capped = guard.load_samples(folder.single_samples(limit=limit + 1), limit)
    cap_note = None
    if capped:
        why = ("--eval-limit" if opts.eval_limit else f"at most {guard.GUARD_MAX_SAMPLES} by default") if on_eval \
            else ("--calib-limit" if opts.calib_limit else f"at most {guard.GUARD_MAX_SAMPLES} by default")
        cap_note = f"measured on the first {limit} samples of {data} ({why}); the rest were not read"
        _say(f"accuracy guard: {cap_note}", opts)
    with guard.BundleEvaluator(bundle, samples, opts.threads) as evaluator:
        evaluator.set_reference(originals)
        if setup is None:  # fp32 (pruning only): nothing to keep in float, only a check
            out = evaluator.outputs(current)
            m_float, m = evaluator.metric(evaluator.reference), evaluator.metric(out)
            conversion["accuracy_guard"] = {"metric": evaluator.metric_name, "metric_float": m_float,
                                            "metric_final": m, "drop_points": m_float - m,
                                            "max_drop_points": opts.max_drop, "samples": len(samples),
                                            "note": "fp32: no quantized layers to keep in float; checked only"}
            if cap_note:
                conversion["accuracy_guard"]["sample_cap"] = cap_note
            if m_float - m > opts.max_drop:
                raise EdgemmError(f"Accuracy guard | Drop of {m_float - m:.2f} points ({evaluator.metric_name}) "
                                  f"exceeds --max-drop {opts.max_drop:g}; expected a milder --prune ratio or a "
                                  "larger budget.")
            return current
        kwargs = {"max_iterations": opts.guard_iterations} if opts.guard_iterations else {}
        result = guard.accuracy_guard(evaluator, originals, setup["quantize_fn"], setup["groups"], opts.max_drop,
                                      quantized=setup["quantized"], quiet=opts.quiet, **kwargs)
    conversion["accuracy_guard"] = result.to_dict() | {"data": str(data), "samples": len(samples)}
    if cap_note:
        conversion["accuracy_guard"]["sample_cap"] = cap_note
    if not on_eval:
        conversion["accuracy_guard"]["note"] = "measured on the calibration data (no --eval given)"
    if not result.within_budget:
        raise EdgemmError(f"Accuracy guard | Best drop {result.drop:.2f} points ({result.metric_name}) exceeds "
                          f"--max-drop {opts.max_drop:g} ({result.stop_reason}); expected a larger budget, another "
                          "--calib-method, more calibration data, or a milder --prune.")
    kept = sum(1 for s in result.steps if s.kept_float)
    _say(f"accuracy guard: drop {result.drop:.2f} points within {opts.max_drop:g}; {kept} layer group(s) kept "
         "in float", opts)
    _describe_final(result.models, result.excluded, conversion)
    return result.models


def _describe_final(models: dict, excluded: dict[str, list[str]], conversion: dict) -> None:
    """The per-graph details recorded during quantization describe the all-quantized models; after the
    guard kept layers in float they must describe the models delivered: Q/DQ counts, the nodes kept in
    FP32 (each with its reason), the nodes that compute in FP16."""
    from edgemm.converters.fp16 import fp16_node_count
    from edgemm.converters.int8 import qdq_counts

    for g, gi in conversion.get("int8", {}).items():
        gi["qdq"] = qdq_counts(models[g])
    for g, gi in conversion.get("fp16", {}).items():
        ops = {n.name: n.op_type for n in models[g].graph.node}
        have = {k["node"] for k in gi["kept_fp32"]}
        gi["kept_fp32"] = gi["kept_fp32"] + [
            {"node": n, "op": ops.get(n, "?"), "reason": "accuracy guard: kept in float to stay within --max-drop"}
            for n in excluded.get(g, []) if n not in have]
        gi["fp16_nodes"] = fp16_node_count(models[g])


def _tensorrt(converted: Bundle, current: dict, manifest, tmp: Path, opts: ConvertOptions, conversion: dict) -> None:
    from edgemm.converters.tensorrt import BuilderUnavailable, build_engines

    if opts.nms_in_engine:
        _nms_in_engine(converted, current, manifest, tmp, conversion)
    options = _engine_options(opts)
    try:
        builds = build_engines(converted, options, models=current)
    except BuilderUnavailable as exc:
        # The TensorRT-ready Q/DQ graphs are still the product on a machine without a GPU: the engine is
        # built on the device (it is tied to its GPU and TensorRT version). Any other build failure (parser,
        # profile, builder) is the user's to see: it propagates and nothing is written.
        conversion["tensorrt"] = {"engine": None, "reason": str(exc)}
        _say(f"no TensorRT engine built: {exc}", opts)
        return
    for g, b in builds.items():
        (tmp / b.file).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(tmp / b.file, b.plan)
        manifest.graphs[g].engine = b.info
    write_json(tmp / MANIFEST_NAME, manifest.to_dict())
    load_bundle(tmp)
    conversion["tensorrt"] = {g: {**b.info, "seconds": b.seconds, "warnings": b.warnings} for g, b in builds.items()}


def _nms_in_engine(converted: Bundle, current: dict, manifest, tmp: Path, conversion: dict) -> None:
    """Append EfficientNMS to the decision graph (after the guard, latency and validation ran on the plain
    graph, which ONNX Runtime can run) and rewrite its file and the manifest before the engine build."""
    from edgemm.converters.data import decision_graph
    from edgemm.converters.detection_nms import append_efficient_nms
    from edgemm.converters.graphs import save_model

    g = decision_graph(converted)
    current[g], manifest.graphs[g].outputs = append_efficient_nms(current[g], manifest.graphs[g])
    save_model(current[g], tmp / manifest.graphs[g].file)
    write_json(tmp / MANIFEST_NAME, manifest.to_dict())
    load_bundle(tmp)
    conversion["nms_in_engine"] = {"graph": g, "plugin": "EfficientNMS_TRT",
                                   "outputs": [o.name for o in manifest.graphs[g].outputs]}


def _provenance(bundle: Bundle, opts: ConvertOptions, conversion: dict, extra: dict, parent: dict) -> dict:
    import onnx
    import onnxruntime

    from edgemm import __version__

    sources = {}
    for g in bundle.manifest.graphs:
        p = bundle.graph_path(g)
        sources[g] = {"file": str(p), "sha256": file_sha256(p)}
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
        from edgemm.converters.openvino import versions

        prov["tools"].update(versions())
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
    prov.update(extra)
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
    return out


def guard_budget_line(report: dict) -> str | None:
    g = report.get("conversion", {}).get("accuracy_guard")
    if not g:
        return None
    return (f"accuracy guard: {g['metric']}: float {g['metric_float']:.2f}, final {g['metric_final']:.2f} "
            f"(drop {g['drop_points']:.2f}, budget {g['max_drop_points']:g})")
