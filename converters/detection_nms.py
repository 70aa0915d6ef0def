"""NMS inside the TensorRT engine (``edgemm convert --target tensorrt --nms-in-engine``).

A yolov8 / yolov5 detection output is split into boxes [N, A, 4] (centre + size) and class scores [N, A, C]
(yolov5: objectness x class score) and fed to TensorRT's EfficientNMS_TRT plugin, which the ONNX parser
imports by its op name. The graph then ends in the plugin's four outputs (num_detections [N, 1] int32,
detection_boxes [N, K, 4] corners, detection_scores [N, K], detection_classes [N, K] int32), and the
manifest output becomes format efficient_nms with those parts: the device returns final boxes, and the
runtime only maps them back to the frame. ONNX Runtime cannot run the plugin, so such a bundle runs on the
TensorRT backend only; without --nms-in-engine the engine returns the raw head and edgemm decodes it.
"""

from __future__ import annotations

import copy

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edgemm.bundle import DetectionSpec, GraphSpec, OutputSpec

PLUGIN_DOMAIN = "TRT"  # as Ultralytics' TensorRT exports write it; the parser finds the plugin by op name
PARTS = {"num": "num_detections", "boxes": "detection_boxes", "scores": "detection_scores",
         "classes": "detection_classes"}


def detection_output(graph: GraphSpec) -> OutputSpec | None:
    """The graph's raw YOLO output NMS can be appended to, if any."""
    return next((o for o in graph.outputs if o.detection is not None and o.detection.format in ("yolov8", "yolov5")),
                None)


def append_efficient_nms(model, graph: GraphSpec):
    """A copy of model ending in EfficientNMS_TRT over its YOLO output, and the graph's new output specs."""
    spec = detection_output(graph)  # convert checked that there is one before any work
    det = spec.detection
    m = copy.deepcopy(model)
    g = m.graph
    raw = spec.name

    def const(name, values):
        g.initializer.append(numpy_helper.from_array(np.asarray(values, np.int64), name))

    nodes = []
    rows = raw
    if det.format == "yolov8":  # [N, 4 + C, A] -> [N, A, 4 + C]
        rows = f"{raw}_rows"
        nodes.append(helper.make_node("Transpose", [raw], [rows], perm=[0, 2, 1]))
    const("nms_axis2", [2])
    const("nms_0", [0])
    const("nms_4", [4])
    const("nms_5", [5])
    const("nms_end", [2 ** 62])
    nodes.append(helper.make_node("Slice", [rows, "nms_0", "nms_4", "nms_axis2"], ["nms_boxes"]))
    if det.format == "yolov8":
        nodes.append(helper.make_node("Slice", [rows, "nms_4", "nms_end", "nms_axis2"], ["nms_scores"]))
    else:  # yolov5: objectness x class scores
        nodes += [helper.make_node("Slice", [rows, "nms_4", "nms_5", "nms_axis2"], ["nms_obj"]),
                  helper.make_node("Slice", [rows, "nms_5", "nms_end", "nms_axis2"], ["nms_cls"]),
                  helper.make_node("Mul", ["nms_cls", "nms_obj"], ["nms_scores"])]
    nodes.append(helper.make_node(
        "EfficientNMS_TRT", ["nms_boxes", "nms_scores"], list(PARTS.values()), domain=PLUGIN_DOMAIN,
        plugin_version="1", background_class=-1, box_coding=1 if det.box_encoding == "cxcywh" else 0,
        iou_threshold=float(det.iou), score_threshold=float(det.conf), max_output_boxes=int(det.max_det),
        score_activation=0, class_agnostic=int(det.agnostic)))
    g.node.extend(nodes)
    batch = spec.shape[0] if spec.shape else "N"
    k = det.max_det
    outs = [helper.make_tensor_value_info(PARTS["num"], TensorProto.INT32, [batch, 1]),
            helper.make_tensor_value_info(PARTS["boxes"], TensorProto.FLOAT, [batch, k, 4]),
            helper.make_tensor_value_info(PARTS["scores"], TensorProto.FLOAT, [batch, k]),
            helper.make_tensor_value_info(PARTS["classes"], TensorProto.INT32, [batch, k])]
    kept = [o for o in g.output if o.name != raw]
    del g.output[:]
    g.output.extend(kept + outs)
    if not any(op.domain == PLUGIN_DOMAIN for op in m.opset_import):
        m.opset_import.append(helper.make_opsetid(PLUGIN_DOMAIN, 1))
    new = DetectionSpec(format="efficient_nms", box="xyxy", normalized=det.normalized, conf=det.conf, iou=det.iou,
                        max_det=det.max_det, agnostic=det.agnostic, parts=dict(PARTS), track=det.track,
                        events=det.events)
    specs = [o for o in graph.outputs if o.name != raw] + [
        OutputSpec(PARTS["num"], "detection", "int32", [batch, 1], spec.labels, detection=new),
        OutputSpec(PARTS["boxes"], "detection", "float32", [batch, k, 4]),
        OutputSpec(PARTS["scores"], "detection", "float32", [batch, k]),
        OutputSpec(PARTS["classes"], "detection", "int32", [batch, k])]
    return m, specs
