"""Old opsets before INT8: per-channel Q/DQ (DequantizeLinear's axis) needs opset 13.

A model below 13 is upgraded with ONNX's version converter; where the converter cannot (an op it has no
adapter for, or a result ONNX Runtime will not load), the model stays as it is and its weights are
quantized per tensor, which every opset since 10 can express. Either way the reason goes into the report.
"""

from __future__ import annotations

from dataclasses import dataclass

QDQ_PER_CHANNEL_OPSET = 13


@dataclass
class QdqReady:
    model: object  # onnx.ModelProto, upgraded where that was needed and possible
    per_channel: bool
    note: str | None = None  # what was done and why, for the report (None: nothing to do)


def default_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def ready_for_qdq(model) -> QdqReady:
    """The model at an opset where per-channel Q/DQ is valid, or the reason it is quantized per tensor."""
    opset = default_opset(model)
    if opset >= QDQ_PER_CHANNEL_OPSET:
        return QdqReady(model, True)
    try:
        upgraded = upgrade_opset(model, QDQ_PER_CHANNEL_OPSET)
    except Exception as exc:  # the converter's and ORT's errors are many kinds; each means "cannot upgrade"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return QdqReady(model, False, f"opset {opset} could not be upgraded to {QDQ_PER_CHANNEL_OPSET} ({reason}); "
                                      "weights quantized per tensor (per-channel Q/DQ needs opset 13)")
    return QdqReady(upgraded, True, f"upgraded from opset {opset} to {QDQ_PER_CHANNEL_OPSET} with ONNX's version "
                                    "converter (per-channel Q/DQ needs opset 13)")


def upgrade_opset(model, opset: int):
    """The model converted to opset with ONNX's version converter, checked and loaded by ONNX Runtime; any
    failure raises (the caller says what it does instead)."""
    import onnx
    from onnx import version_converter

    upgraded = version_converter.convert_version(model, opset)
    onnx.checker.check_model(upgraded)
    _loads_in_onnxruntime(upgraded)
    return upgraded


def _loads_in_onnxruntime(model) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
