"""INT8 for ``--target openvino``: Q/DQ graphs that OpenVINO's low-precision transformations run as integer
kernels, chosen by measurement under OpenVINO on this machine.

Four candidates, all ONNX graphs with explicit Q/DQ (the bundle stays ONNX: OpenVINO reads it directly and
ONNX Runtime still runs it):

  ``ov``    edgemm's own placement (converters.int8 flavour ``ov``) from the calibration ranges edgemm
            computed: symmetric per-channel int8 weights, int8 symmetric activations only on the inputs of
            Conv/ConvTranspose/Gemm/MatMul and of Add (OpenVINO fuses an Add into the convolution before it
            as a post-op), no Q/DQ on op outputs, biases or graph outputs.
  ``nncf``  NNCF's post-training quantization (``nncf.quantize``, the tool OpenVINO's own documentation
            uses) on the same calibration samples: its placement follows OpenVINO's CPU hardware config
            (symmetric, unsigned where a range is non-negative, e.g. after a ReLU), and it adds fast bias
            correction (the per-channel mean shift int8 weights cause).
  ``u8s8``  the ONNX Runtime flavour (uint8 activations on every quantizable op): on this machine OpenVINO ran
            it as fast as the two above on a YOLOv8n export (benchmarks/RESULTS.md), so it competes too.
  ``nncf-sq``  only for a graph with attention (a Softmax fed by a MatMul of two activations): NNCF with
            ``model_type=TRANSFORMER`` (no Q/DQ inside LayerNorm and the elementwise ops around attention),
            the PERFORMANCE preset kept (TRANSFORMER's default, MIXED, puts asymmetric activations on the
            convolutions, which OpenVINO's CPU plugin then runs in float: 0.96x FP32 on PP-OCRv4's recogniser)
            and SmoothQuant on the convolutions (each input channel's range moved partly into the weights).
            On PP-OCRv4's recogniser (a conv backbone, then attention) plain ``nncf`` lost 5 points of text
            lines read exactly: one per-tensor activation whose channels span 0.06 to 3.3 (the first block's
            output) left its small channels a few int8 steps; with SmoothQuant it reads as FP32 does, at the
            same speed (benchmarks/RESULTS.md section 10). SmoothQuant on MatMuls stays off: it bought nothing
            there, and OpenVINO 2026.4 ran a small attention graph with it wrongly (logits cosine 0.3-0.7
            against FP32; ONNX Runtime ran the same graph right).

``ov`` and ``u8s8`` use edgemm's calibration ranges (asymmetric; the quantizer makes ``ov``'s symmetric from
them); NNCF collects its own statistics from the same samples.

All are timed interleaved with the FP32 graph under OpenVINO on this CPU and checked for closeness to FP32
on the calibration feeds; the fastest candidate that is as close as the closest one wins (as for the ONNX
Runtime flavours). The accuracy guard re-quantizes the chosen candidate with layers kept in float: NNCF's
``ignored_scope`` for ``nncf``, nodes_to_exclude for the others.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
from typing import Iterable


from edgemm.converters import int8
from edgemm.converters.frontend import waveform_front_end
from edgemm.converters.graphs import constant_names, producers
from edgemm.converters.int8 import pick_fastest
from edgemm.lazy import import_optional
from edgemm.errors import EdgemmError
from edgemm.runners.openvino import OpenVINORunner, compile_crash

log = logging.getLogger(__name__)

CANDIDATES = ("ov", "nncf", "u8s8", "nncf-sq")
ATTENTION_ONLY = ("nncf-sq",)  # candidates tried only on graphs with attention (has_attention)
SQ_ALPHAS = {"convolution": 0.8, "matmul": -1}  # nncf-sq's SmoothQuant strengths (-1: off; module docstring)
NNCF_SAMPLES = 300  # NNCF's default subset_size: the calibration samples kept in memory for it
INSTALL_HINT = "--target openvino needs the openvino extra: pip install 'edgemm[openvino]'."


def check_installed() -> None:
    """openvino and nncf import (checked before any work)."""
    import_optional("openvino", INSTALL_HINT)
    import_optional("nncf", INSTALL_HINT)


def has_attention(model) -> bool:
    """Some Softmax is fed by a MatMul of two activations (q @ k^T), directly or through the elementwise
    scaling, masking and reshaping between them (Mul, Div, Add, Reshape, Flatten, Transpose...)."""
    consts = constant_names(model)
    producer = producers(model)
    # (Flatten and Reshape: a Softmax of opset < 13 on a 2-D view, as PP-OCRv4's recogniser has it)
    passing = {"Mul", "Div", "Add", "Sub", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Cast", "Where"}
    for softmax in (n for n in model.graph.node if n.op_type == "Softmax"):
        node = producer.get(softmax.input[0])
        for _ in range(8):  # a few steps back along the first non-constant input
            if node is None:
                break
            if node.op_type == "MatMul":
                if not any(i in consts for i in node.input):
                    return True
                break
            if node.op_type not in passing:
                break
            node = next((producer.get(i) for i in node.input if i not in consts and i in producer), None)
    return False


def candidates_for(prepared) -> tuple[str, ...]:
    """The candidates worth trying on this graph (ATTENTION_ONLY ones where it has attention)."""
    return tuple(c for c in CANDIDATES if c not in ATTENTION_ONLY or has_attention(prepared))


def nncf_options(candidate: str) -> dict:
    """nncf.quantize arguments of an NNCF candidate (module docstring)."""
    if candidate != "nncf-sq":
        return {}
    nncf = import_optional("nncf", INSTALL_HINT)
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    return {"model_type": nncf.ModelType.TRANSFORMER, "preset": nncf.QuantizationPreset.PERFORMANCE,
            "advanced_parameters": AdvancedQuantizationParameters(
                smooth_quant_alphas=AdvancedSmoothQuantParameters(**SQ_ALPHAS))}


def nncf_quantize(prepared, feeds: list[dict], ignored: Iterable[str] = (), **options):
    """NNCF post-training quantization of a prepared ONNX model on these feeds; ignored nodes stay float.
    options: further nncf.quantize arguments (model_type, fast_bias_correction, advanced_parameters)."""
    nncf = import_optional("nncf", INSTALL_HINT)
    # The tail after the last compute op stays float here too (int8.tail_nodes): NNCF quantized the driving
    # detector's box decode, which cost 1.6 points of mAP@0.5 that no guard step could win back.
    ignored = sorted(set(ignored) | int8.tail_nodes(prepared) | waveform_front_end(prepared))  # as int8.quantize
    scope = nncf.IgnoredScope(names=ignored, validate=False) if ignored else None
    # NNCF logs through its own logger and draws progress bars on stdout: keep the CLI's output clean.
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return nncf.quantize(prepared, nncf.Dataset(feeds), subset_size=len(feeds), ignored_scope=scope,
                                 **options)
    finally:
        nncf_log.setLevel(level)


def quantize(candidate: str, prepared, calibration, feeds: list[dict], exclude: Iterable[str] = (), workdir=None):
    """One candidate's Q/DQ model (see the module docstring)."""
    if candidate.startswith("nncf"):
        return nncf_quantize(prepared, feeds, exclude, **nncf_options(candidate))
    return int8.quantize(prepared, calibration, candidate, exclude, workdir=workdir)


def choose(prepared, float_model, calibration, feeds: list[dict], threads: int | None = None,
           duration_s: float = 2.0, candidates: Iterable[str] | None = None, check_feeds: int = 8,
           workdir=None) -> dict:
    """Quantize each candidate (default: candidates_for the graph), check closeness to FP32 and time them
    interleaved with FP32 under OpenVINO.

    Returns {"flavour", "models": {name: ModelProto}, "candidates": {name: {...}}, "fp32_p50_ms"}, the shape
    converters.int8.choose_flavour returns for the ONNX Runtime flavours.
    """
    candidates = candidates_for(prepared) if candidates is None else candidates
    models = {c: quantize(c, prepared, calibration, feeds, workdir=workdir) for c in candidates}
    shapes = {k: v.shape for k, v in feeds[0].items()}
    crashed = {c: why for c, m in models.items() if (why := compile_crash(m.SerializeToString(), shapes))}
    models = {c: m for c, m in models.items() if c not in crashed}
    if not models:
        raise EdgemmError("INT8 for OpenVINO | No candidate graph compiles here: "
                          + "; ".join(f"{c}: {why}" for c, why in crashed.items()) + "; expected at least one.")
    runners = {label: OpenVINORunner(m.SerializeToString(), threads, name=label)
               for label, m in {"fp32": float_model, **models}.items()}
    chosen, info, fp32 = pick_fastest(runners, feeds[:check_feeds], {c: describe(c) for c in models}, threads,
                                      duration_s)
    info.update({c: {"rejected": why, "settings": describe(c)} for c, why in crashed.items()})
    return {"flavour": chosen, "models": models, "candidates": info, "fp32_p50_ms": fp32,
            "threads": threads, "timing_s": duration_s, "timed_on": "openvino"}


def describe(candidate: str) -> str:
    if candidate == "nncf":
        return ("nncf: NNCF post-training quantization (performance preset: symmetric int8 weights per channel "
                "and activations, OpenVINO CPU placement, fast bias correction)")
    if candidate == "nncf-sq":
        return (f"nncf-sq: NNCF post-training quantization for a graph with attention (model_type TRANSFORMER, "
                f"performance preset: symmetric int8, SmoothQuant on convolutions, alpha {SQ_ALPHAS['convolution']})")
    if candidate == "ov":
        return int8.flavour_spec("ov").describe() + ", Q/DQ on the inputs of Conv/Gemm/MatMul/Add only"
    return int8.flavour_spec(candidate).describe()


def versions() -> dict[str, str]:
    out = {}
    for dist in ("openvino", "nncf"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out
