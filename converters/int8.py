"""Static INT8 quantization with explicit Q/DQ, in the flavour the target runs fastest and correctly.

Steps (each a function, so the accuracy guard can re-run the cheap ones):

1. ``prepare``: ``onnxruntime.quantization.quant_pre_process`` (shape inference, Conv+BatchNorm folding
   and other graph simplifications) and a unique name for every node (the handle of nodes_to_exclude).
2. ``calibrate`` / ``calibrate_graphs``: activation ranges with MinMax, Entropy or Percentile from feed
   dicts (every graph of a bundle in one pass over the data), fed in chunks so memory stays bounded
   (ORT's histogram calibrators keep every activation of one ``collect_data`` call in memory; MinMax
   merges ranges between chunks). Done once; the ranges are reused for every flavour and every guard step.
3. ``quantize``: Q/DQ insertion with per-channel weights, from the cached ranges, in a flavour:

   ``u8s8``  uint8 activations (asymmetric), int8 weights: ONNX Runtime's fast path on x86. Without VNNI
             the weights use 7 bits (``reduce_range``) to avoid int16 saturation in the u8*s8 kernels.
   ``s8s8``  int8 activations (asymmetric) and weights: ONNX Runtime's default, fast on ARM / VNNI.
   ``trt``   TensorRT explicit quantization: int8 symmetric activations and weights (zero point 0),
             per-channel weights, Q/DQ only on the inputs of Conv/ConvTranspose/Gemm/MatMul and the
             residual input of Add (the Conv side of a residual Add stays float so TensorRT fuses
             Conv+Add), no Q/DQ on op outputs, biases or graph outputs, Softmax and the rest in float.
   ``ov``    OpenVINO (converters/openvino.py): as ``trt`` but both inputs of an Add keep their Q/DQ
             (OpenVINO fuses a quantized Add into the convolution before it as a post-op).

   In every flavour graph outputs stay float (no 8-bit rounding of the logits a decision reads).
4. ``choose_flavour`` (target onnxruntime): the candidates are timed interleaved on the actual model on
   this CPU, together with FP32, and the fastest that is as close to FP32 as the others wins. The
   numbers are recorded, because Q/DQ INT8 can be slower than FP32 where the kernels do not fuse.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import logging
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnx
import onnxruntime
import onnxruntime.quantization as q
from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

from edgemm.converters import qdq
from edgemm.converters.frontend import waveform_front_end
from edgemm.converters.graphs import (constant_names, consumers, drop_unused_initializers, name_nodes, producers,
                                      topological_sort)
from edgemm.converters.timing import time_models
from edgemm.errors import EdgemmError
from edgemm.runners.onnxruntime import OnnxRuntimeRunner

log = logging.getLogger(__name__)

CALIB_METHODS = ("minmax", "entropy", "percentile")
FLAVOURS = ("u8s8", "s8s8", "trt", "ov")
TARGETS = ("onnxruntime", "tensorrt", "openvino")
ORT_CANDIDATES = ("u8s8", "s8s8")

# Ops whose inputs TensorRT wants quantized (its INT8 kernels); everything else stays float there.
TRT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add")
# The ops INT8 speeds up (integer GEMM/convolution kernels): what comes after the last of them gains nothing.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Activations that follow a layer and are quantized (or removed) together with it.
TRAILING_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish", "Sigmoid", "Tanh", "Gelu")
# Ops that only move or select values: ORT quantizes them when their input already is; never a group.
MOVEMENT_OPS = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "MaxPool", "Slice", "Split",
                "Gather", "Pad", "Resize", "Identity", "Expand", "Tile", "DepthToSpace", "SpaceToDepth")

# Bounded calibration memory: samples per collect_data call come from this budget.
CALIB_MEMORY_MB = 512
ENTROPY_BINS = 2048  # histogram bins searched for the KL-optimal threshold of 128 levels (TensorRT's setting)


# --------------------------------------------------------------------------------------------------
# Settings and the CPU
# --------------------------------------------------------------------------------------------------


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_vnni() -> bool:
    """True when the CPU has an 8-bit dot-product instruction (x86 VNNI, ARM dotprod)."""
    flags = cpu_flags()
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


@dataclass
class FlavourSpec:
    name: str
    activation: str  # "uint8" | "int8"
    weight: str = "int8"
    symmetric_activations: bool = False
    reduce_range: bool = False
    op_types: tuple[str, ...] | None = None  # None: everything ORT can quantize
    outputs_float: tuple[str, ...] = ()  # op types whose outputs get no Q/DQ
    quantize_bias: bool = True
    signed_symmetric: bool = False  # tensors with a negative calibrated minimum: int8 symmetric instead
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        a = "u8" if self.activation == "uint8" else "s8"
        sym = " symmetric" if self.symmetric_activations else ""
        if self.signed_symmetric:
            a, sym = "u8 (zero point 0) where non-negative, else s8", " symmetric"
        rr = ", 7-bit weights (reduce_range)" if self.reduce_range else ""
        return f"{self.name}: {a} activations{sym}, s8 per-channel weights{rr}"


def flavour_spec(name: str) -> FlavourSpec:
    if name == "u8s8":
        # Without VNNI the x86 u8*s8 kernels (vpmaddubsw) add pairs of products in int16 and can saturate;
        # ORT's guidance is 7-bit weights there.
        rr = is_x86() and not has_vnni()
        return FlavourSpec("u8s8", "uint8", reduce_range=rr,
                           notes=["reduce_range on: this x86 CPU has no VNNI"] if rr else [])
    if name == "s8s8":
        return FlavourSpec("s8s8", "int8")
    if name == "trt":
        return FlavourSpec("trt", "int8", symmetric_activations=True, op_types=TRT_OPS,
                           outputs_float=TRT_OPS, quantize_bias=False)
    if name == "ov":
        # As NNCF places them for OpenVINO's CPU: uint8 with zero point 0 where the calibrated range is
        # non-negative (after a ReLU), int8 symmetric elsewhere (quantize() sets the signed ones per tensor).
        # x86 VNNI's vpdpbusd multiplies u8 by s8; oneDNN runs s8 activations with a +128 shift and a
        # compensation term (resnet_digits: 1.76x OpenVINO FP32 all-s8, 2.87x u8), and asymmetric u8 on a
        # signed tensor with a zero-point correction (PP-OCRv4 det: 1.56x against 1.74x all-s8).
        return FlavourSpec("ov", "uint8", op_types=TRT_OPS, outputs_float=TRT_OPS, quantize_bias=False,
                           signed_symmetric=True)
    raise EdgemmError(f"INT8 flavour: {name} | Unknown; expected one of {', '.join(FLAVOURS)}.")


# --------------------------------------------------------------------------------------------------
# 1. Prepare
# --------------------------------------------------------------------------------------------------


def prepare(model, workdir: str | Path | None = None):
    """quant_pre_process (shape inference, BatchNorm folding, simplifications) and unique node names."""
    with tempfile.TemporaryDirectory(prefix="edgemm-int8-", dir=workdir) as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "prepared.onnx"
        m = onnx.ModelProto()
        m.CopyFrom(model)
        name_nodes(m)  # before: the optimizer keeps names of nodes it does not fuse away
        onnx.save(m, str(src))
        try:
            # ONNX shape inference is enough for most graphs; ORT's symbolic shape inference (sympy, slow
            # to import) only runs when some tensor is left without a shape.
            with _quiet():
                q.quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
            if not _shapes_complete(onnx.load(str(dst), load_external_data=False)) and _has_sympy():
                with _quiet():
                    q.quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        except Exception as exc:  # noqa: BLE001 - fall back to the plain graph, with a note
            log.warning("quant_pre_process failed (%s); quantizing the graph without it", exc)
            dst = src
        out = onnx.load(str(dst))
    name_nodes(out)
    return out


def _has_sympy() -> bool:
    return importlib.util.find_spec("sympy") is not None


def _shapes_complete(model) -> bool:
    """Every tensor a node produces has a known type and rank (what the quantizer needs)."""
    known = {vi.name for vi in list(model.graph.value_info) + list(model.graph.output)
             if vi.type.tensor_type.HasField("shape")}
    return all(o in known for n in model.graph.node for o in n.output if o)


@contextlib.contextmanager
def _quiet():
    """ORT's quantization tools print progress to stdout and log warnings; keep the CLI's output clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


# --------------------------------------------------------------------------------------------------
# 2. Calibrate (bounded memory)
# --------------------------------------------------------------------------------------------------


class _ListReader:
    """Hands a list of feeds to one ``collect_data`` call (ORT's CalibrationDataReader protocol)."""

    def __init__(self, feeds: list[dict]):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # ORT never rewinds during collect_data
        raise TypeError("a calibration chunk cannot be rewound")


@dataclass
class Calibration:
    """Activation ranges of a prepared model (ORT TensorsData) and how they were obtained."""

    ranges: object  # onnxruntime.quantization.calibrate.TensorsData
    method: str
    symmetric: bool
    samples: int
    chunk: int

    def cache_file(self, folder: Path) -> Path:
        """The ranges in ORT's calibration cache format (what quantize_static reads back)."""
        path = Path(folder) / f"calibration-{self.method}.json"
        if not path.exists():
            save_tensors_data(self.ranges, path)
        return path


def calibrate(prepared, feeds: Iterable[dict], method: str = "minmax", symmetric: bool = False,
              memory_mb: float = CALIB_MEMORY_MB, workdir: str | Path | None = None) -> Calibration:
    """Activation ranges of every tensor ORT may quantize, from feeds (dicts), memory bounded."""
    return calibrate_graphs({"model": prepared}, ({"model": f} for f in feeds), method, symmetric, memory_mb,
                            workdir)["model"]


def calibrate_graphs(prepared: Mapping[str, object], feeds: Iterable[Mapping[str, dict]], method: str = "minmax",
                     symmetric: bool = False, memory_mb: float = CALIB_MEMORY_MB,
                     workdir: str | Path | None = None) -> dict[str, Calibration]:
    """calibrate for every graph of a bundle from ONE pass over the data; graph -> Calibration.

    feeds yields, per sample, graph -> feed (converters.calibration.GraphFeeds.iter_feeds). Samples are
    buffered in chunks sized so that one chunk's feeds plus the largest graph's activations for it fit in
    memory_mb; each chunk goes to every graph's calibrator in turn (ORT's histogram calibrators keep every
    activation of one ``collect_data`` call; MinMax merges its ranges between calls, so chunking does not
    change MinMax ranges at all).
    """
    methods = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
               "percentile": q.CalibrationMethod.Percentile}
    if method not in methods:
        raise EdgemmError(f"Calibration method: {method} | Unknown; expected one of {', '.join(CALIB_METHODS)}.")
    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    it = iter(feeds)
    graphs = list(prepared)
    extra = {"symmetric": symmetric}
    if method == "entropy":
        # ORT's entropy defaults (128 bins for 128 quantized bins) leave no threshold to search, so it
        # returns the min/max range; 2048 histogram bins for 128 levels is TensorRT's KL calibration.
        extra.update(num_bins=ENTROPY_BINS, num_quantized_bins=128)
    with tempfile.TemporaryDirectory(prefix="edgemm-calib-", dir=workdir) as tmp:
        calibrators = {}
        try:
            for i, g in enumerate(graphs):
                path = Path(tmp) / f"prepared-{i}.onnx"
                onnx.save(prepared[g], str(path))
                with _quiet():
                    calibrators[g] = create_calibrator(path, op_types,
                                                       augmented_model_path=str(Path(tmp) / f"augmented-{i}.onnx"),
                                                       calibrate_method=methods[method], extra_options=extra)
            first = next(it, None)
            if first is None:
                raise EdgemmError("Calibration data | Holds no samples; expected at least one.")
            # Samples per chunk from the memory one sample takes: its feeds (all graphs) and the augmented
            # model's outputs of the largest graph.
            outputs = max(sum(np.asarray(v).nbytes for v in calibrators[g].infer_session.run(None, dict(first[g])))
                          for g in graphs)
            inputs = sum(np.asarray(v).nbytes for g in graphs for v in first[g].values())
            chunk = int(max(1, min(1024, memory_mb * 2**20 // max(outputs + inputs, 1))))

            def collect(chunk_feeds: list[Mapping[str, dict]]) -> None:
                for g in graphs:
                    with _quiet():
                        calibrators[g].collect_data(_ListReader([dict(s[g]) for s in chunk_feeds]))

            total = 0
            pending: list[Mapping[str, dict]] = [first]
            for sample in it:
                if len(pending) >= chunk:
                    collect(pending)
                    total += len(pending)
                    pending = []
                pending.append(sample)
            collect(pending)
            total += len(pending)
            ranges = {}
            for g in graphs:
                with _quiet():
                    ranges[g] = calibrators[g].compute_data()
        finally:
            calibrators.clear()
    return {g: Calibration(ranges[g], method, symmetric, total, chunk) for g in graphs}


# --------------------------------------------------------------------------------------------------
# 3. Quantize
# --------------------------------------------------------------------------------------------------


def tail_nodes(model) -> set[str]:
    """Nodes after the last compute op on every path: no Conv/Gemm/MatMul consumes what they produce,
    directly or further on (a detector's box decode: anchors plus distances times strides, Gather, Concat).

    INT8 buys nothing there (elementwise ops on small tensors, ahead of the float graph outputs) and costs
    accuracy (box coordinates in 8 bits are whole pixels apart); and OpenVINO 2026.4's CPU plugin died with
    SIGFPE compiling the driving detector's Q/DQ box decode (a Concat of quantized Unsqueezes). They stay float
    (the driving detector: 1.9 points of mAP@0.5 lost with its decode quantized, 0.1 without).
    """
    if not any(n.op_type in COMPUTE_OPS for n in model.graph.node):
        return set()
    cons = consumers(model)
    feeds_compute: dict[str, bool] = {}  # node name -> some compute op is reachable from its outputs

    for node in reversed(list(model.graph.node)):  # topological order: consumers are decided first
        feeds_compute[node.name] = any(c.op_type in COMPUTE_OPS or feeds_compute.get(c.name, False)
                                       for out in node.output for c in cons.get(out, []))
    return {n.name for n in model.graph.node if n.op_type not in COMPUTE_OPS and not feeds_compute[n.name]}


def constant_adds(model) -> set[str]:
    """Add nodes with a constant input (a bias: a LayerNorm's beta, a learnable affine after an activation).

    The ``ov`` flavour quantizes an Add's inputs so that OpenVINO fuses a residual Add (two activations) into
    the convolution before it; an Add of a constant gains nothing in int8, and one (PP-OCRv4 recogniser's
    last LayerNorm bias, ahead of a Reshape into a Conv: found by bisecting) made OpenVINO 2026.4's CPU
    plugin die with SIGFPE compiling the graph. Those stay float in ``ov``."""
    consts = constant_names(model)
    return {n.name for n in model.graph.node if n.op_type == "Add" and any(i in consts for i in n.input)}


def quantize(prepared, calibration: Calibration, flavour: str | FlavourSpec, nodes_to_exclude: Iterable[str] = (),
             per_channel: bool = True, workdir: str | Path | None = None):
    """A Q/DQ model from the prepared model and cached ranges. Excluded nodes stay float, and so does the
    graph's tail after its last compute op (tail_nodes) and a raw waveform's STFT front end (converters.frontend)."""
    spec = flavour if isinstance(flavour, FlavourSpec) else flavour_spec(flavour)
    nodes_to_exclude = set(nodes_to_exclude) | tail_nodes(prepared) | waveform_front_end(prepared)
    if spec.name == "ov":
        nodes_to_exclude |= constant_adds(prepared)
    nodes_to_exclude = sorted(nodes_to_exclude)
    qtype = {"uint8": q.QuantType.QUInt8, "int8": q.QuantType.QInt8}
    extra = {
        "ActivationSymmetric": spec.symmetric_activations,
        "WeightSymmetric": True,
        "QuantizeBias": spec.quantize_bias,
    }
    if spec.outputs_float:
        extra["OpTypesToExcludeOutputQuantization"] = list(spec.outputs_float)
    if spec.signed_symmetric:
        extra["TensorQuantOverrides"] = {
            name: [{"quant_type": q.QuantType.QInt8, "symmetric": True}]
            for name, data in calibration.ranges.items() if float(np.min(data.range_value[0])) < 0}
    kwargs = dict(quant_format=q.QuantFormat.QDQ, per_channel=per_channel, reduce_range=spec.reduce_range,
                  activation_type=qtype[spec.activation], weight_type=qtype[spec.weight],
                  nodes_to_exclude=list(nodes_to_exclude), extra_options=extra)
    if spec.op_types:
        kwargs["op_types_to_quantize"] = list(spec.op_types)
    methods = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
               "percentile": q.CalibrationMethod.Percentile}
    check_onnxruntime()
    with tempfile.TemporaryDirectory(prefix="edgemm-quant-", dir=workdir) as tmp:
        src, dst = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        onnx.save(prepared, str(src))
        with _quiet():
            q.quantize_static(str(src), str(dst), None, calibrate_method=methods[calibration.method],
                              calibration_cache_path=str(calibration.cache_file(Path(tmp))), **kwargs)
        model = onnx.load(str(dst))
    removed = qdq.keep_outputs_float(model, prepared)
    if spec.name == "trt":
        removed += qdq.trt_residual_placement(model, prepared)
    excluded = set(nodes_to_exclude)
    if excluded:
        removed += qdq.float_inputs(model, excluded, prepared)
    if removed:
        topological_sort(model)  # re-created activations were appended at the end
        drop_unused_initializers(model)
    return model


def check_onnxruntime() -> None:
    """The installed onnxruntime can quantize from cached calibration ranges (checked before any work)."""
    if "calibration_cache_path" not in inspect.signature(q.quantize_static).parameters:
        raise EdgemmError(f"Module: onnxruntime {onnxruntime.__version__} | Too old for cached calibration ranges; "
                          "expected onnxruntime >= 1.24 (pip install -U onnxruntime).")


# --------------------------------------------------------------------------------------------------
# Layer groups (what the accuracy guard can keep in float)
# --------------------------------------------------------------------------------------------------


def quantized_groups(prepared, quantized) -> list[list[str]]:
    """Groups of node names (a layer and the activations that follow it) that the quantizer quantized.

    Excluding a whole group keeps that layer in float (ORT would otherwise quantize a following Relu on
    its own). Only layers that compute (not reshape/pool-max ops, which follow their neighbours) form groups.
    """
    qnames = set()
    prod_q = producers(quantized)
    for n in quantized.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if any(prod_q.get(i) is not None and prod_q[i].op_type == "DequantizeLinear" for i in n.input):
            qnames.add(n.name)
    layers = {n.name for n in prepared.graph.node
              if n.name in qnames and n.op_type not in MOVEMENT_OPS and n.op_type not in TRAILING_ACTIVATIONS}
    return layer_groups(prepared, layers)


def layer_groups(model, layers: set[str]) -> list[list[str]]:
    """Each node named in layers, with the activations that alone consume its output, as one group."""
    cons = consumers(model)
    groups = []
    for n in model.graph.node:
        if n.name not in layers:
            continue
        group, cur = [n.name], n
        while cur.output:
            nxt = cons.get(cur.output[0], [])
            if len(nxt) == 1 and nxt[0].op_type in TRAILING_ACTIVATIONS:
                cur = nxt[0]
                group.append(cur.name)
            else:
                break
        groups.append(group)
    return groups


# --------------------------------------------------------------------------------------------------
# 4. Choose the flavour for this CPU by measuring it
# --------------------------------------------------------------------------------------------------


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else float(np.allclose(a, b))


def choose_flavour(prepared, float_model, calibration: Calibration, feeds: list[dict], threads: int | None = None,
                   candidates: Iterable[str] = ORT_CANDIDATES, duration_s: float = 2.0,
                   per_channel: bool = True, nodes_to_exclude: Iterable[str] = ()) -> dict:
    """Quantize in each candidate flavour, check closeness to FP32 on a few feeds, time them interleaved
    with FP32 on this CPU, and pick the fastest that is as close as the best candidate.

    One runner per model serves both the closeness check and the timing (sessions are built once).
    Returns {"flavour", "models": {name: ModelProto}, "candidates": {name: {...}}, "fp32_p50_ms"}.
    """
    models = {c: quantize(prepared, calibration, c, list(nodes_to_exclude), per_channel=per_channel)
              for c in candidates}
    runners = {label: OnnxRuntimeRunner(m.SerializeToString(), "cpu", threads, name=label)
               for label, m in {"fp32": float_model, **models}.items()}
    chosen, info, fp32 = pick_fastest(runners, feeds, {c: flavour_spec(c).describe() for c in models}, threads,
                                      duration_s)
    return {"flavour": chosen, "models": models, "candidates": info, "fp32_p50_ms": fp32,
            "threads": threads, "timing_s": duration_s}


def pick_fastest(runners: dict, feeds: list[dict], settings: dict[str, str], threads: int | None,
                 duration_s: float) -> tuple[str, dict[str, dict], float]:
    """Check each candidate runner's closeness to runners["fp32"] on the feeds, time all interleaved on the
    first feed, and pick the fastest that is as close as the closest. Returns (chosen, info, fp32 p50 ms);
    the runners are deactivated at the end. Shared by the ONNX Runtime flavours and the OpenVINO candidates."""
    info: dict[str, dict] = {}
    names = [c for c in runners if c != "fp32"]
    try:
        for r in runners.values():
            r.activate()
        refs = [runners["fp32"].infer(f) for f in feeds]
        for c in names:
            outs = [runners[c].infer(f) for f in feeds]
            cos = [min(cosine(ref[k], out[k]) for k in ref) for ref, out in zip(refs, outs)]
            info[c] = {"cosine_min": float(np.min(cos)), "cosine_mean": float(np.mean(cos)), "settings": settings[c]}
        timing = time_models(runners, feed=feeds[0], threads=threads, duration_s=duration_s)
    finally:
        for r in runners.values():
            r.deactivate()
    # One thread: compare CPU time per inference, which the other jobs of a shared machine do not inflate
    # (wall p50 swung 1.7-30 ms for one model at load 25 on 2 cores); with more threads CPU time adds them up
    # and wall time is the latency that matters.
    measure = "cpu_ms" if threads == 1 else "latency_ms"
    fp32 = timing["fp32"][measure]["p50"]
    for c in names:
        p50 = timing[c][measure]["p50"]
        info[c].update(p50_ms=p50, speedup_vs_fp32=fp32 / p50 if p50 > 0 else float("nan"))
    best_cos = max(v["cosine_mean"] for v in info.values())
    # "Correct": within a hair of the closest candidate (int8 flavours differ in rounding, not in kind).
    ok = [c for c in names if info[c]["cosine_mean"] >= best_cos - 0.01]
    return min(ok, key=lambda c: info[c]["p50_ms"]), info, fp32


def target_flavour(target: str) -> str | None:
    """The flavour a target fixes (tensorrt), or None where it is chosen by measurement (onnxruntime, and
    openvino among converters.openvino.CANDIDATES)."""
    if target not in TARGETS:
        raise EdgemmError(f"Target: {target} | Unknown; expected one of {', '.join(TARGETS)}.")
    return "trt" if target == "tensorrt" else None


def env_flavour() -> str | None:
    """EDGEMM_INT8_FLAVOUR forces a flavour (tests, reproducible benchmarks); None: choose by timing."""
    value = os.environ.get("EDGEMM_INT8_FLAVOUR")
    if value and value not in FLAVOURS:
        raise EdgemmError(f"EDGEMM_INT8_FLAVOUR: {value} | Unknown; expected one of {', '.join(FLAVOURS)}.")
    return value or None
