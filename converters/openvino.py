"""INT8 for ``--target openvino``: Q/DQ graphs that OpenVINO's low-precision transformations run as integer
kernels, chosen by measurement under OpenVINO on this machine.

Three candidates, all ONNX graphs with explicit Q/DQ (the bundle stays ONNX: OpenVINO reads it directly and
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
from edgemm.converters.int8 import pick_fastest
from edgemm.lazy import import_optional
from edgemm.errors import EdgemmError
from edgemm.runners.openvino import OpenVINORunner, compile_crash

log = logging.getLogger(__name__)

CANDIDATES = ("ov", "nncf", "u8s8")
NNCF_SAMPLES = 300  # NNCF's default subset_size: the calibration samples kept in memory for it
INSTALL_HINT = "--target openvino needs the openvino extra: pip install 'edgemm[openvino]'."


def check_installed() -> None:
    """openvino and nncf import (checked before any work)."""
    import_optional("openvino", INSTALL_HINT)
    import_optional("nncf", INSTALL_HINT)


def nncf_quantize(prepared, feeds: list[dict], ignored: Iterable[str] = ()):
    """NNCF post-training quantization of a prepared ONNX model on these feeds; ignored nodes stay float."""
    nncf = import_optional("nncf", INSTALL_HINT)
    # The tail after the last compute op stays float here too (int8.tail_nodes): NNCF quantized the driving
    # detector's box decode, which cost 1.6 points of mAP@0.5 that no guard step could win back.
    ignored = sorted(set(ignored) | int8.tail_nodes(prepared))
    scope = nncf.IgnoredScope(names=ignored, validate=False) if ignored else None
    # NNCF logs through its own logger and draws progress bars on stdout: keep the CLI's output clean.
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return nncf.quantize(prepared, nncf.Dataset(feeds), subset_size=len(feeds), ignored_scope=scope)
    finally:
        nncf_log.setLevel(level)


def quantize(candidate: str, prepared, calibration, feeds: list[dict], exclude: Iterable[str] = (), workdir=None):
    """One candidate's Q/DQ model (see the module docstring)."""
    if candidate == "nncf":
        return nncf_quantize(prepared, feeds, exclude)
    return int8.quantize(prepared, calibration, candidate, exclude, workdir=workdir)


def choose(prepared, float_model, calibration, feeds: list[dict], threads: int | None = None,
           duration_s: float = 2.0, candidates: Iterable[str] = CANDIDATES, check_feeds: int = 8,
           workdir=None) -> dict:
    """Quantize each candidate, check closeness to FP32 and time them interleaved with FP32 under OpenVINO.

    Returns {"flavour", "models": {name: ModelProto}, "candidates": {name: {...}}, "fp32_p50_ms"}, the shape
    converters.int8.choose_flavour returns for the ONNX Runtime flavours.
    """
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
    if candidate == "ov":
        return int8.flavour_spec("ov").describe() + ", Q/DQ on the inputs of Conv/Gemm/MatMul/Add only"
    return int8.flavour_spec(candidate).describe()


def versions() -> dict[str, str]:
    out = {}
    for dist in ("openvino", "nncf"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out
