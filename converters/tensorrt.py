"""TensorRT engine build (`edgemm convert ... --target tensorrt`), run on the device that will use the engine.

Called by the convert orchestrator (converters/convert.py) after the graphs are prepared (FP16, INT8 Q/DQ,
pruned); it returns engine bytes and the info to record in the manifest, and writes nothing itself:

    from edgemm.converters.tensorrt import EngineOptions, build_engines

    builds = build_engines(bundle, EngineOptions(max_batch=1), models={"model": prepared_onnx})
    for graph, b in builds.items():
        files[b.file] = b.plan                    # serialized engine (bytes), e.g. "model.plan"
        manifest.graphs[graph].engine = b.info    # {"file", "tensorrt_version", "gpu", "compute_capability", ...}
    write_bundle(manifest, files, out, force)

build_engines(bundle, options=None, graphs=None, models=None) -> dict[str, EngineBuild]
    bundle   edgemm.bundle.Bundle, or anything load_bundle accepts (bundle folder, manifest.json, plain .onnx)
    options  EngineOptions: max_batch / opt_batch for a dynamic batch axis, shapes (per-input min/opt/max
             overrides, see edgemm.shapes.parse_shape_spec for the CLI form "name:1x3x224x224,1x3x224x224,4x3x224x224"),
             workspace_mb, timing_cache (path, None: default per-user cache, False: none), sparse (None: auto
             from provenance or 2:4 weights), builder_optimization_level, dla_core (DLA with GPU fallback,
             each fallen-back layer listed in the engine info), verbose
    graphs   graph names to build (default: every graph of the bundle)
    models   {graph: onnx.ModelProto | bytes | path} for prepared graphs not yet on disk (default: bundle files)
Raises one EdgemmError when there is no CUDA GPU or no TensorRT here (build on the device: the message gives
the command), when the ONNX parser rejects a graph, when a dynamic axis has no size, or when the build fails.

Strongly typed networks (TensorRT 10.x and 11.x): precision comes from the graph itself (FP16 tensors, INT8
Q/DQ), never from builder flags; 11.x removed BuilderFlag.FP16/INT8 and silently ignores nothing here because
they are never set. Optimization profiles cover dynamic axes: the batch axis (1..max_batch) and any axis the
manifest's preprocessing fixes (image size, frames, mel bins, audio window). A timing cache makes rebuilds on
the same device fast. SPARSE_WEIGHTS is set after 2:4 pruning (TensorRT uses sparse kernels only where faster).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
from onnx import numpy_helper, version_converter

from edgemm.bundle import Bundle, GraphSpec, load_bundle, onnx_io
from edgemm.errors import EdgemmError
from edgemm.outputs import write_atomic
from edgemm.runners import cuda
from edgemm.runners.tensorrt import make_logger, rebuild_command
from edgemm.shapes import Shape, check_profile

log = logging.getLogger(__name__)



@dataclass
class EngineOptions:
    max_batch: int = 1  # a dynamic batch axis gets the profile 1..max_batch (edge streaming runs batch 1)
    opt_batch: int = 1  # the batch the kernels are tuned for
    shapes: dict[str, tuple[Shape, Shape, Shape]] = field(default_factory=dict)  # input -> (min, opt, max)
    workspace_mb: int | None = None  # None: TensorRT's default (the device's memory)
    timing_cache: Path | str | bool | None = None  # None: default_timing_cache(); False: no cache
    sparse: bool | None = None  # None: on when the bundle was 2:4 pruned (provenance or weights say so)
    builder_optimization_level: int | None = None  # 0..5, TensorRT's default 3
    dla_core: int | None = None  # build for this DLA core, layers DLA cannot run fall back to the GPU
    verbose: bool = False


@dataclass
class EngineBuild:
    graph: str
    file: str  # file name inside the bundle
    plan: bytes  # the serialized engine
    info: dict[str, Any]  # goes to manifest.graphs[graph].engine
    seconds: float
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Pure helpers (run anywhere; tested without a GPU)
# --------------------------------------------------------------------------------------------------


def profile_shapes(inputs: list[tuple[str, Shape]], graph: GraphSpec | None, options: EngineOptions) -> dict[str, tuple[Shape, Shape, Shape]]:
    """min/opt/max for every input with a dynamic axis (-1), from the manifest, the batch options and overrides."""
    if options.max_batch < 1 or not 1 <= options.opt_batch <= options.max_batch:
        raise EdgemmError(f"Batch | Expected 1 <= opt_batch ({options.opt_batch}) <= max_batch ({options.max_batch}).")
    specs = {s.name: s for s in graph.inputs} if graph is not None else {}
    known = {name for name, _ in inputs}
    for name in options.shapes:
        if name not in known:
            raise EdgemmError(f"Shape: {name} | Not an input of the graph; expected one of {', '.join(sorted(known))}.")
    profiles = {}
    for name, shape in inputs:
        shape = tuple(int(d) for d in shape)
        if name in options.shapes:
            prof = tuple(tuple(int(d) for d in s) for s in options.shapes[name])
            check_profile(name, prof, rank=len(shape))
            for axis, d in enumerate(shape):
                if d >= 0 and any(s[axis] != d for s in prof):
                    raise EdgemmError(f"Shape: {name} | Axis {axis} is fixed at {d} in the graph; the profile gives "
                                      f"{prof[0][axis]}..{prof[2][axis]}.")
            profiles[name] = prof
            continue
        if all(d >= 0 for d in shape):
            continue
        spec = specs.get(name)
        sizes = {axis: size for axis, (size, _) in spec.axis_sizes().items()} if spec is not None else {}
        lo, opt, hi = [], [], []
        for axis, d in enumerate(shape):
            if d >= 0:
                dims = (d, d, d)
            elif axis == 0:
                dims = (1, options.opt_batch, options.max_batch)
            elif axis in sizes:
                dims = (sizes[axis],) * 3
            else:
                example = "x".join(str(x if x >= 0 else 1) for x in shape)
                raise EdgemmError(f"Input tensor: {name} | Axis {axis} of {shape} is dynamic and the manifest gives no "
                                  f"size for it; give its range, e.g. --shape {name}:{example},{example},{example}.")
            for acc, v in zip((lo, opt, hi), dims):
                acc.append(v)
        profiles[name] = (tuple(lo), tuple(opt), tuple(hi))
    return profiles


def _reduction_axis(node, input_index: int) -> int | None:
    """The axis a weight is reduced over (where 2:4 sparsity is laid out), or None when not a GEMM/conv weight."""
    if node.op_type == "Conv" and input_index == 1:
        return 1  # [K, C/g, kh, kw]: groups of 4 input channels
    if node.op_type == "Gemm" and input_index == 1:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 1 if trans_b else 0
    if node.op_type == "MatMul" and input_index == 1:
        return 0  # B is [K, N]
    return None


def is_2_4_sparse(weight: np.ndarray, axis: int) -> bool:
    """True when every group of 4 consecutive values along axis has at least 2 zeros (needs a multiple of 4)."""
    w = np.asarray(weight)
    if w.ndim < 2 or w.shape[axis] % 4 or w.size == 0:
        return False
    moved = np.moveaxis(w, axis, -1)
    groups = moved.reshape(-1, moved.shape[-1] // 4, 4)
    return bool(((groups == 0).sum(axis=-1) >= 2).all())


def sparse_weight_stats(model) -> tuple[int, int]:
    """(2:4-sparse weights, eligible weights) of the Conv/Gemm/MatMul layers of an ONNX model (Q/DQ included)."""
    inits = {i.name: i for i in model.graph.initializer}
    produced_by_dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    sparse = eligible = 0
    for node in model.graph.node:
        for idx, name in enumerate(node.input):
            axis = _reduction_axis(node, idx)
            if axis is None:
                continue
            src = name
            if src not in inits and src in produced_by_dq:  # INT8 Q/DQ graphs: the weight feeds a DequantizeLinear
                src = produced_by_dq[src].input[0]
            if src not in inits:
                continue
            w = numpy_helper.to_array(inits[src])
            if w.ndim < 2 or w.shape[axis] % 4:
                continue
            eligible += 1
            sparse += is_2_4_sparse(w, axis)
    return sparse, eligible


def provenance_says_2_4(provenance: Mapping | None) -> bool:
    """Whether the converters recorded 2:4 pruning ("prune": "2:4", "sparsity": "2:4", "sparse_weights": true, ...)."""

    def walk(obj) -> bool:
        if isinstance(obj, Mapping):
            if obj.get("sparse_weights") is True:
                return True
            return any(walk(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return any(walk(v) for v in obj)
        return isinstance(obj, str) and obj.strip() == "2:4"

    return walk(provenance or {})


def check_build_options(options: EngineOptions) -> None:
    """--workspace, --builder-opt-level and --dla values, checked before any conversion work."""
    if options.workspace_mb is not None and options.workspace_mb < 1:
        raise EdgemmError(f"Workspace: {options.workspace_mb} MB | Expected a positive size in MB (e.g. 1024 on an "
                          "8 GB Orin Nano, whose GPU shares the system memory).")
    level = options.builder_optimization_level
    if level is not None and not 0 <= level <= 5:
        raise EdgemmError(f"Builder optimization level: {level} | Expected 0..5 (TensorRT's default is 3; higher "
                          "builds slower and may find faster kernels).")
    if options.dla_core is not None and options.dla_core < 0:
        raise EdgemmError(f"DLA core: {options.dla_core} | Expected 0 or 1 (Orin NX and AGX Orin have two DLA cores).")


def apply_build_options(trt, builder, network, config, options: EngineOptions) -> dict:
    """Workspace limit, builder optimization level and DLA placement on the builder config (trtexec's
    --memPoolSize=workspace:N, --builderOptimizationLevel, --useDLACore N --allowGPUFallback). Returns what
    was set, for the build report: with DLA, every layer DLA cannot run and that therefore runs on the GPU."""
    info: dict[str, Any] = {"workspace_mb": options.workspace_mb,
                            "builder_optimization_level": options.builder_optimization_level}
    if options.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mb) << 20)
    if options.builder_optimization_level is not None:
        config.builder_optimization_level = int(options.builder_optimization_level)
    if options.dla_core is None:
        return info
    cores = int(builder.num_DLA_cores)
    if options.dla_core >= cores:
        have = f"{cores} DLA core(s)" if cores else "no DLA (Orin Nano, Thor and discrete GPUs have none)"
        raise EdgemmError(f"DLA core: {options.dla_core} | This device has {have}; expected a core below {cores} "
                          "or no --dla.")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = int(options.dla_core)
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    fallback = [{"layer": layer.name, "type": str(layer.type).rsplit(".", 1)[-1]} for layer in layers
                if not config.can_run_on_DLA(layer)]
    info.update(dla_core=int(options.dla_core), dla_layers=len(layers) - len(fallback),
                gpu_fallback_layers=fallback)
    return info


QDQ_FP16_OPSET = 19  # QuantizeLinear/DequantizeLinear take FP16 inputs and scales from opset 19


def qdq_nodes(model) -> list:
    return [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def asymmetric_qdq(model) -> list[str]:
    """Q/DQ nodes TensorRT's ONNX parser refuses: uint8 or a non-zero zero point (ONNX Runtime's u8s8 and
    asymmetric s8s8 flavours). TensorRT's INT8 is symmetric: int8, zero point 0."""
    inits = {i.name: i for i in model.graph.initializer}
    consts = {n.output[0]: next((a.t for a in n.attribute if a.name == "value"), None)
              for n in model.graph.node if n.op_type == "Constant"}
    bad = []
    for n in qdq_nodes(model):
        if len(n.input) < 3 or not n.input[2]:
            continue  # no zero point: 0, uint8 by default only for QuantizeLinear without one (int8 here)
        tensor = inits.get(n.input[2]) or consts.get(n.input[2])
        if tensor is None:
            continue
        zp = numpy_helper.to_array(tensor)
        if zp.dtype == np.uint8 or np.any(zp != 0):
            bad.append(n.name or n.output[0])
    return bad


def for_fp16(model):
    """A Q/DQ graph made ready for FP16 float parts: opset 19 or later, where Q/DQ take FP16 inputs and scales.
    Under strong typing a DequantizeLinear's output has its scale's type, so FP32 scales would keep every
    layer between Q/DQ pairs in FP32. Graphs without Q/DQ are returned as they are."""
    if not qdq_nodes(model):
        return model
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= QDQ_FP16_OPSET:
        return model
    try:
        return version_converter.convert_version(model, QDQ_FP16_OPSET)
    except Exception as exc:  # noqa: BLE001 - the converter raises bare errors for ops it cannot adapt
        raise EdgemmError(f"FP16 float parts | The INT8 graph (opset {opset}) could not be moved to opset "
                          f"{QDQ_FP16_OPSET}, which FP16 Q/DQ scales need ({str(exc).splitlines()[0]}); expected a "
                          "graph the ONNX version converter handles, or --precision fp32.") from exc


def default_timing_cache(trt_version: str, device) -> Path:
    """Per-user cache of tactic timings, one file per TensorRT version and GPU (a cache does not transfer)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgemm"
    return base / f"tensorrt-{trt_version}-{device.sm}-{device.multiprocessors}sm.timing"


# --------------------------------------------------------------------------------------------------
# The build (needs TensorRT and a CUDA GPU)
# --------------------------------------------------------------------------------------------------


class BuilderUnavailable(EdgemmError):
    """No GPU, no tensorrt or only its runtime here: the engine must be built on the device itself."""


def _require_builder(command: str):
    """(device, tensorrt) or one EdgemmError that says to build on the device. Device first: never touch
    TensorRT without one (tensorrt-lean segfaults without a driver)."""
    p = cuda.probe()
    if not p.found:
        raise BuilderUnavailable(f"TensorRT engine build | No CUDA GPU here ({p.reason}). An engine is tied to the GPU "
                                 f"and TensorRT version that built it: run this on the device (the Jetson): {command}")
    try:
        trt = importlib.import_module("tensorrt")
    except (ImportError, OSError) as exc:
        raise BuilderUnavailable(f"TensorRT engine build | tensorrt is not importable ({exc}). On Jetson install "
                                 f"JetPack's python3-libnvinfer (deploy/jetson/install.sh), then run on the device: "
                                 f"{command}") from exc
    if not hasattr(trt, "Builder") or not hasattr(trt, "OnnxParser"):
        raise BuilderUnavailable("TensorRT engine build | Only the TensorRT runtime is installed (no Builder/OnnxParser: "
                                 f"tensorrt-lean or -dispatch); install the full tensorrt package, then run: {command}")
    return p.devices[0], trt


def build_engines(bundle: Bundle | str | Path, options: EngineOptions | None = None, graphs: list[str] | None = None,
                  models: Mapping[str, Any] | None = None) -> dict[str, EngineBuild]:
    """Build one engine per graph (see the module docstring). Nothing is written except the timing cache."""
    options = options or EngineOptions()
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    names = list(graphs or bundle.manifest.graphs)
    for g in names:
        if g not in bundle.manifest.graphs:
            raise EdgemmError(f"Graph: {g} | Not in the bundle; expected one of {', '.join(bundle.manifest.graphs)}.")
    models = dict(models or {})
    check_shapes(bundle, options.shapes)
    command = rebuild_command(bundle.source or bundle.root)
    device, trt = _require_builder(command)
    return {g: _build_one(trt, device, bundle, g, models.get(g), _graph_options(bundle, g, options)) for g in names}


def _graph_options(bundle: Bundle, graph: str, options: EngineOptions) -> EngineOptions:
    """The options for one graph: only the --shape profiles of its own inputs (in a bundle of several
    graphs each --shape names the input of one of them)."""
    own = {s.name for s in bundle.manifest.graphs[graph].inputs}
    return dataclasses.replace(options, shapes={n: p for n, p in options.shapes.items() if n in own})


def check_shapes(bundle: Bundle, shapes: Mapping[str, tuple[Shape, Shape, Shape]]) -> None:
    """Each --shape profile names an input of some graph of the bundle and fits it (rank, fixed axes):
    checked from the ONNX graphs alone, before any conversion work, TensorRT or not."""
    if not shapes:
        return
    found: dict[str, list[tuple[str, Shape]]] = {}
    for g in bundle.manifest.graphs:
        for name, _, dims in onnx_io(bundle.load_graph(g, load_weights=False))[0]:
            found.setdefault(name, []).append((g, tuple(d if isinstance(d, int) and d > 0 else -1 for d in dims)))
    for name, prof in shapes.items():
        if name not in found:
            raise EdgemmError(f"Shape: {name} | Not an input of the model; expected one of {', '.join(sorted(found))}.")
        for g, dims in found[name]:
            profile_shapes([(name, dims)], bundle.manifest.graphs[g], EngineOptions(shapes={name: prof}))


def _onnx_source(bundle: Bundle, graph: str, model) -> tuple[Path | None, bytes | None, Any]:
    """(path to parse from, or bytes to parse) plus the ModelProto for inspection."""
    if model is None:
        path = bundle.graph_path(graph)
        return path, None, onnx.load(str(path))
    if isinstance(model, (str, os.PathLike)):
        return Path(model), None, onnx.load(str(model))
    if isinstance(model, (bytes, bytearray)):
        return None, bytes(model), onnx.load_from_string(bytes(model))
    return None, model.SerializeToString(), model  # ModelProto (weights inline)


def _build_one(trt, device, bundle: Bundle, graph: str, model, options: EngineOptions) -> EngineBuild:
    spec = bundle.manifest.graphs[graph]
    path, data, proto = _onnx_source(bundle, graph, model)
    where = f"TensorRT engine build: {graph}"
    logger = make_logger(trt, options.verbose)
    start = time.perf_counter()

    builder = trt.Builder(logger)
    # Strongly typed: required on 10.x for graph-defined precision, accepted (and always on) in 11.x.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external weight files next to the ONNX file; bytes carry their weights inline.
    ok = parser.parse_from_file(str(path)) if path is not None else parser.parse(data)
    if not ok:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or [logger.last_error()]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise EdgemmError(f"{where} | The ONNX parser rejected {spec.file}: {errors[0]}{more}")

    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    for t in inputs:
        if t.is_shape_tensor:
            raise EdgemmError(f"{where} | Input {t.name} is a shape tensor; expected data inputs only.")
    profiles = profile_shapes([(t.name, tuple(t.shape)) for t in inputs], spec, options)

    config = builder.create_builder_config()
    if profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profiles.items():
            profile.set_shape(name, lo, opt, hi)
        if config.add_optimization_profile(profile) < 0:
            raise EdgemmError(f"{where} | TensorRT rejected the optimization profile {profiles} ({logger.last_error()}).")
    build_info = apply_build_options(trt, builder, network, config, options)

    sparse, why = options.sparse, "asked for" if options.sparse else "off"
    if sparse is None:
        n_sparse, n_eligible = sparse_weight_stats(proto)
        if provenance_says_2_4(bundle.manifest.provenance):
            sparse, why = True, "provenance records 2:4 pruning"
        elif n_sparse:
            sparse, why = True, f"{n_sparse} of {n_eligible} weights are 2:4 sparse"
        else:
            sparse, why = False, "no 2:4 sparse weights"
    if sparse:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)

    cache_path = None
    if options.timing_cache is not False:
        custom = options.timing_cache not in (None, True)
        cache_path = Path(options.timing_cache) if custom else default_timing_cache(trt.__version__, device)
        old = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = config.create_timing_cache(old)
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            log.warning("timing cache %s does not match this device or TensorRT; starting a new one", cache_path)
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EdgemmError(f"{where} | TensorRT could not build the engine: {logger.last_error()}")
    plan_bytes = bytes(plan)
    seconds = time.perf_counter() - start

    if cache_path is not None:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
        except OSError as exc:  # a cache is an optimisation: never fail the build for it
            log.warning("could not save the timing cache %s: %s", cache_path, exc)

    onnx_bytes = data if data is not None else Path(path).read_bytes()
    file = Path(spec.file).with_suffix(".plan").as_posix()  # next to its graph (subfolders included)
    info = {
        "file": file,
        "tensorrt_version": trt.__version__,
        "gpu": device.name,
        "compute_capability": device.cc,
        "multiprocessors": device.multiprocessors,
        "integrated": device.integrated,
        "cuda_driver": device.to_dict()["cuda_driver"],
        "strongly_typed": True,
        **{k: v for k, v in build_info.items() if v is not None},
        "sparse_weights": bool(sparse),
        "sparse_reason": why,
        "profiles": {n: {"min": list(lo), "opt": list(o), "max": list(hi)} for n, (lo, o, hi) in profiles.items()},
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "build_s": round(seconds, 2),
    }
    log.info("built %s for %s in %.1f s (%d bytes)", file, device.describe(), seconds, len(plan_bytes))
    if build_info.get("gpu_fallback_layers"):
        log.warning("%s: %d layer(s) run on the GPU, not DLA core %d: %s", graph, len(build_info["gpu_fallback_layers"]),
                    build_info["dla_core"], ", ".join(x["layer"] for x in build_info["gpu_fallback_layers"][:10]))
    return EngineBuild(graph=graph, file=file, plan=plan_bytes, info=info, seconds=seconds,
                       warnings=list(logger.warnings))
