"""Detection end to end: every output format decoded from real ONNX heads, letterbox round trip, NMS against a
plain reference, tracking through an occlusion, inference from Ultralytics metadata, `edgemm run` on a video."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgemm.bundle import VideoPreprocess, load_bundle
from edgemm.decisions import Decisions
from edgemm.detection import Boxes, iou_matrix, nms, nms_numpy, to_source
from edgemm.preprocess import geometry, letterbox, preprocess_video
from edgemm.tracking import Tracker
from tests import onnx_models
from tests.onnx_models import write_square_scenes
from tests.conftest import run_cli
from tests.rigs import require

NAMES = "{0: 'red', 1: 'green', 2: 'blue'}"


def _scene(hw=(96, 128), squares=(((48, 16), 16, 2),)) -> np.ndarray:
    """A dark BGR frame with pure-colour squares: ((x, y), side, channel) with channel 2 = red in BGR."""
    frame = np.zeros((*hw, 3), np.uint8)
    for (x, y), side, ch in squares:
        frame[y:y + side, x:x + side, ch] = 255
    return frame


def _infer(bundle, frame):
    graph = bundle.manifest.graphs["model"]
    spec = graph.inputs[0]
    sess = ort.InferenceSession(str(bundle.graph_path()))
    return dict(zip([o.name for o in graph.outputs], sess.run(None, {spec.name: preprocess_video(frame, spec)})))


@pytest.mark.parametrize("fmt", ["yolov8", "yolov5"])
def test_yolo_heads_find_the_square_in_source_pixels(tmp_path, fmt):
    out = "output0"
    manifest = onnx_models.detector_manifest({"format": fmt, "conf": 0.5, "iou": 0.3}, [{"name": out}])
    bundle = load_bundle(onnx_models.write_detector_bundle(tmp_path / fmt, onnx_models.colour_detector(fmt=fmt),
                                                           manifest))
    pre = bundle.manifest.graphs["model"].inputs[0].preprocess
    assert pre.resize == "letterbox"  # the default for a detector's image
    frame = _scene()  # 96x128: letterboxed to 64x64 with 8 rows of padding above and below
    decisions = Decisions(dict((o.name, o) for o in bundle.manifest.graphs["model"].outputs), image=pre)
    rec = decisions.decode(_infer(bundle, frame), 0.0, frame.shape[:2])[out]
    assert rec["counts"] == {"red": 1}, rec
    (det,) = rec["detections"]
    x1, y1, x2, y2 = det["box"]
    # The square spans x 48..64, y 16..32: one stride-8 cell of the 64x64 input (scale 0.5, 8 rows of padding
    # on top); the head's boxes are 24 input pixels (48 source pixels) wide, centred on that cell.
    assert [(x1 + x2) / 2, (y1 + y2) / 2] == [56, 24], det
    assert abs((x2 - x1) - 48) < 0.5 and det["label"] == "red" and det["class"] == 0 and det["track"] == 1


def _decode_constant(tmp_path, outputs, detection, names, hw=(64, 64), frame_hw=(64, 64)):
    model = onnx_models.constant_detector(outputs, hw)
    manifest = onnx_models.detector_manifest(detection, [{"name": n, "dtype": str(outputs[n].dtype)} for n in names], hw)
    bundle = load_bundle(onnx_models.write_detector_bundle(tmp_path / "b", model, manifest))
    specs = {o.name: o for o in bundle.manifest.graphs["model"].outputs}
    pre = bundle.manifest.graphs["model"].inputs[0].preprocess
    frame = np.zeros((*frame_hw, 3), np.uint8)
    return Decisions(specs, image=pre).decode(_infer(bundle, frame), 0.0, frame_hw)


def test_end2end_normalised_boxes_are_scaled_and_thresholded(tmp_path):
    rows = np.array([[[0.25, 0.25, 0.5, 0.5, 0.9, 2], [0.0, 0.0, 0.1, 0.1, 0.1, 1]]], np.float32)
    got = _decode_constant(tmp_path, {"dets": rows}, {"format": "end2end", "normalized": True}, ["dets"],
                           frame_hw=(128, 128))
    assert got["dets"]["detections"] == [{"box": [32.0, 32.0, 64.0, 64.0], "label": "blue", "class": 2,
                                          "score": 0.9, "track": 1}]


def test_efficient_nms_uses_num_detections(tmp_path):
    outputs = {"num_dets": np.array([[2]], np.int32),
               "det_boxes": np.array([[[1, 2, 11, 12], [20, 20, 30, 40], [0, 0, 5, 5]]], np.float32),
               "det_scores": np.array([[0.9, 0.8, 0.7]], np.float32),
               "det_classes": np.array([[1, 0, 2]], np.int32)}
    parts = {"num": "num_dets", "boxes": "det_boxes", "scores": "det_scores", "classes": "det_classes"}
    got = _decode_constant(tmp_path, outputs, {"format": "efficient_nms", "parts": parts}, list(outputs))
    assert list(got) == ["num_dets"]  # the parts are decoded with it, not on their own
    assert [d["box"] for d in got["num_dets"]["detections"]] == [[1, 2, 11, 12], [20, 20, 30, 40]]
    assert got["num_dets"]["counts"] == {"green": 1, "red": 1}


def test_boxes_scores_labels_centre_encoding(tmp_path):
    outputs = {"boxes": np.array([[10, 10, 4, 6]], np.float32), "scores": np.array([0.5], np.float32),
               "labels": np.array([2], np.int64)}
    det = {"format": "boxes_scores_labels", "box": "cxcywh",
           "parts": {"boxes": "boxes", "scores": "scores", "labels": "labels"}}
    got = _decode_constant(tmp_path, outputs, det, list(outputs))
    assert got["boxes"]["detections"][0]["box"] == [8.0, 7.0, 12.0, 13.0]


def test_letterbox_round_trip():
    pre = VideoPreprocess(size=(64, 64), resize="letterbox")
    for src in ((96, 128), (128, 96), (480, 640), (64, 64)):
        g = geometry(src, pre.size, "letterbox")
        pts = np.array([[0, 0, src[1], src[0]], [10.5, 20.25, 30, 40]], np.float32)
        inp = pts.copy()
        inp[:, [0, 2]] = pts[:, [0, 2]] * g.sx + g.left
        inp[:, [1, 3]] = pts[:, [1, 3]] * g.sy + g.top
        assert np.allclose(to_source(inp, src, pre), pts, atol=1e-3)
    img = letterbox(_scene((96, 128), ()), (64, 64))
    assert img.shape == (64, 64, 3) and (img[:8] == 114).all() and (img[-8:] == 114).all() and (img[8:56] == 0).all()
    # boxes outside the picture are clipped to the frame
    assert to_source(np.array([[-5, 0, 70, 64]], np.float32), (96, 128), pre).tolist() == [[0, 0, 128, 96]]


def _reference_nms(xyxy, scores, classes, iou):
    keep = []
    for i in sorted(range(len(scores)), key=lambda k: -scores[k]):
        if all(classes[i] != classes[j] or iou_matrix(xyxy[i:i + 1], xyxy[j:j + 1])[0, 0] <= iou for j in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_a_plain_reference(seed):
    rng = np.random.default_rng(seed)
    n = 200
    xy = rng.uniform(0, 100, (n, 2))
    wh = rng.uniform(5, 40, (n, 2))
    boxes = Boxes(np.hstack([xy, xy + wh]).astype(np.float32), rng.uniform(0, 1, n).astype(np.float32),
                  rng.integers(0, 3, n))
    for agnostic in (False, True):
        classes = np.zeros(n, int) if agnostic else boxes.classes
        ref = _reference_nms(boxes.xyxy, boxes.scores, classes, 0.45)
        assert nms(boxes, 0.45, 1000, agnostic).tolist() == ref  # OpenCV's
        assert nms_numpy(boxes, 0.45, 1000, agnostic).tolist() == ref
    assert len(nms(boxes, 0.45, 3)) == 3 and len(nms_numpy(boxes, 0.45, 3)) == 3


def test_tracks_survive_an_occlusion_and_stay_apart():
    tracker = Tracker(max_age_s=1.0)
    ids_a, ids_b, events = [], [], []
    for f in range(30):
        t = f / 10
        a = [10 + 4 * f, 20, 30 + 4 * f, 60]  # moving right
        b = [200 - 3 * f, 80, 220 - 3 * f, 120]  # moving left, hidden for frames 10..16 (0.7 s)
        rows = [a] + ([] if 10 <= f <= 16 else [b])
        boxes = Boxes(np.array(rows, np.float32), np.full(len(rows), 0.9, np.float32), np.zeros(len(rows), int))
        ids, changes = tracker.update(boxes, t)
        events += [(kind, tr.id) for kind, tr in changes]
        ids_a.append(ids[0])
        if len(ids) > 1:
            ids_b.append(ids[1])
    assert len(set(ids_a)) == 1 and len(set(ids_b)) == 1 and ids_a[0] != ids_b[0]
    assert sorted(events) == [("entered", 1), ("entered", 2)]
    # weak detections continue a track but never start one
    weak = Boxes(np.array([[0, 0, 5, 5]], np.float32), np.array([0.3], np.float32), np.zeros(1, int))
    assert tracker.update(weak, 3.1)[0] == [None]
    # both leave once unseen longer than max_age_s
    assert sorted(k for k, _ in tracker.update(Boxes.empty(), 5.0)[1]) == ["left", "left"]


def test_ultralytics_metadata_is_read_and_info_lists_it(tmp_path):
    path = tmp_path / "yolo.onnx"
    onnx.save(onnx_models.colour_detector(metadata={"task": "detect", "imgsz": "[64, 64]", "names": NAMES,
                                                    "stride": "32"}), str(path))
    b = load_bundle(path)
    out = b.manifest.graphs["model"].outputs[0]
    assert out.detection.format == "yolov8" and out.labels == ["red", "green", "blue"]
    assert b.manifest.graphs["model"].inputs[0].preprocess.resize == "letterbox"
    proc = run_cli("info", path)
    assert proc.returncode == 0, proc.stderr
    assert "format yolov8, from the model metadata" in proc.stdout and "3 class names" in proc.stdout
    # without metadata the output shape alone says yolov5 / yolov8
    onnx.save(onnx_models.colour_detector(fmt="yolov5"), str(path))
    assert load_bundle(path).manifest.graphs["model"].outputs[0].detection.format == "yolov5"

    # An export at dynamic H x W names the anchors by an expression of them (NudeNet's YOLOv8n): with the
    # metadata's task, that is the anchor count of its imgsz.
    model = onnx_models.colour_detector(metadata={"task": "detect", "imgsz": "[64, 64]", "names": NAMES})
    for vi in (model.graph.input[0], model.graph.output[0]):
        for k, name in ((0, "batch"), (-1, "(floor(height/8) * floor(width/8) + ...)")):
            vi.type.tensor_type.shape.dim[k].dim_param = name
    onnx.save(model, str(path))
    out = load_bundle(path).manifest.graphs["model"].outputs[0]
    assert out.detection.format == "yolov8" and out.labels == ["red", "green", "blue"]
    del model.metadata_props[:]  # without the metadata's word, a [N, 7, ?] output is not taken for a detector
    onnx.save(model, str(path))
    assert load_bundle(path).manifest.graphs["model"].outputs[0].detection is None


@pytest.mark.parametrize("change, needle", [
    ({"format": "end2end"}, "end2end expects [N, K, 6]"),
    ({"format": "ssd"}, "expected one of yolov5"),
    ({"format": "yolov8", "labels": ["red"]}, "has 1 labels but output0 [1, 7, 84] has 3 classes"),
    ({"format": "yolov8", "conf": 2}, "detection.conf: expected a number in [0, 1]"),
    ({"format": "efficient_nms"}, "needs the outputs of roles num, boxes, scores, classes"),
])
def test_bad_detection_manifests_are_one_line_errors(tmp_path, change, needle):
    labels = change.pop("labels", ("red", "green", "blue"))
    manifest = onnx_models.detector_manifest(change, [{"name": "output0"}], labels=labels)
    folder = onnx_models.write_detector_bundle(tmp_path / "bad", onnx_models.colour_detector(), manifest)
    proc = run_cli("info", folder)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr, proc.stderr


def test_run_on_a_video_writes_boxes_tracks_alerts_and_an_annotated_video(tmp_path):
    require("ffmpeg")
    import cv2

    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (128, 96))
    for f in range(20):
        writer.write(_scene(squares=(((8 + 4 * f, 16), 32, 2),)))
    writer.release()
    model = tmp_path / "yolov8n.onnx"
    onnx.save(onnx_models.colour_detector(metadata={"task": "detect", "imgsz": "[64, 64]", "names": NAMES}),
              str(model))
    out, video = tmp_path / "out.jsonl", tmp_path / "boxes.mp4"
    proc = run_cli("run", model, "--video", clip, "--sink", f"video:{video}", "--sink", f"jsonl:{out}",
                   "--alert", "red:0.6:0.4:0.5", "--conf", "0.5", "--iou", "0.2", "--quiet")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    results = [x for x in lines if x["type"] == "result"]
    assert len(results) == 20
    dets = [r["outputs"]["output0"]["detections"] for r in results]
    assert all(len(d) == 1 and d[0]["label"] == "red" for d in dets)
    assert len({d[0]["track"] for d in dets}) == 1  # one object, one id all the way
    centres = [(d[0]["box"][0] + d[0]["box"][2]) / 2 for d in dets]
    assert centres[-1] - centres[0] > 50  # it moved right by 76 px, and the boxes followed
    assert all("postprocess" in r["latency_ms"] for r in results)
    events = [x["event"] for x in lines if x["type"] == "event"]
    assert "alert_start" in events and "alert_end" in events
    cap = cv2.VideoCapture(str(video))
    ok, first = cap.read()
    assert ok and first.shape == (96, 128, 3)
    cap.release()
    probe = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries", "stream=nb_read_frames",
                            "-of", "csv=p=0", str(video)], capture_output=True, text=True, timeout=30)
    assert probe.stdout.strip() == "20"


def _labelled_folder(folder, coco: bool):
    """Three 64x64 scenes, each with 8x8 colour squares on stride-8 cells, and their boxes as labels."""
    scenes = [[((16, 24), 8, 2)], [((40, 8), 8, 1), ((8, 48), 8, 2)], [((32, 32), 8, 0)]]
    return write_square_scenes(folder, [([(xy, side, ch, None) for xy, side, ch in sq], []) for sq in scenes],
                               (64, 64), coco)


@pytest.mark.parametrize("coco", [False, True])
def test_eval_reports_coco_map_and_the_drop_against_another_model(tmp_path, coco):
    pytest.importorskip("pycocotools")
    data = _labelled_folder(tmp_path / "data", coco)
    bundles = {}
    for name, box in (("exact", 8.0), ("loose", 10.0)):
        manifest = onnx_models.detector_manifest({"format": "yolov8", "conf": 0.5}, [{"name": "output0"}])
        bundles[name] = onnx_models.write_detector_bundle(tmp_path / name, onnx_models.colour_detector(box=box),
                                                          manifest)
    proc = run_cli("eval", bundles["loose"], "--against", bundles["exact"], "--data", data, "--json",
                   tmp_path / "eval.json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["images"] == 3 and report["objects"] == 4
    exact, loose = report["original"], report["model"]
    assert exact["map50"] == 1.0 and exact["map"] == 1.0 and exact["precision"] == exact["recall"] == 1.0
    assert exact["per_class_ap"] == {"red": 1.0, "green": 1.0, "blue": 1.0}
    # 10 px boxes on 8 px objects: IoU 0.64, right at 0.5, wrong at 0.65 and above
    assert loose["map50"] == 1.0 and 0.2 < loose["map"] < 0.5
    assert loose["per_class_ap50"] == {"red": 1.0, "green": 1.0, "blue": 1.0} and max(loose["per_class_ap"].values()) < 0.5
    assert report["drop_points"]["map50"] == 0.0 and report["drop_points"]["map"] > 50
    assert report["agreement"]["box_f1"] == 1.0
    assert "mAP@0.5 1.0000" in proc.stdout and "Drop: mAP@0.5 +0.00 points" in proc.stdout


def test_eval_on_a_folder_without_labels_is_one_line(tmp_path):
    pytest.importorskip("pycocotools")
    data = _labelled_folder(tmp_path / "data", False)
    (data / "s1.txt").unlink()
    manifest = onnx_models.detector_manifest({"format": "yolov8"}, [{"name": "output0"}])
    model = onnx_models.write_detector_bundle(tmp_path / "m", onnx_models.colour_detector(), manifest)
    proc = run_cli("eval", model, "--data", data)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1 and "s1.txt" in proc.stderr


def test_eval_against_the_original_without_labels_compares_the_boxes(tmp_path):
    """No box labels (none ship with most public detectors): `eval --against` compares the two models output
    by output, with the F1 of the boxes against the original's, instead of refusing."""
    data = _labelled_folder(tmp_path / "data", False)
    for txt in data.glob("*.txt"):
        txt.unlink()
    bundles = {}
    for name, box in (("exact", 8.0), ("shifted", 24.0)):  # 24 px boxes on 8 px objects: IoU 0.11
        manifest = onnx_models.detector_manifest({"format": "yolov8", "conf": 0.5}, [{"name": "output0"}])
        bundles[name] = onnx_models.write_detector_bundle(tmp_path / name, onnx_models.colour_detector(box=box),
                                                          manifest)
    for other, f1 in (("exact", 1.0), ("shifted", 0.0)):
        proc = run_cli("eval", bundles[other], "--against", bundles["exact"], "--data", data, "--json",
                       tmp_path / "e.json")
        assert proc.returncode == 0, proc.stderr
        close = json.loads((tmp_path / "e.json").read_text())["closeness"]["output0"]
        assert close["box_f1"] == f1 and close["boxes"] == 4
        assert f"box F1 {f1:.4f} against the original's boxes (4 of them)" in proc.stdout


def test_guard_metric_of_a_detector_is_box_agreement():
    from edgemm.converters.detection_eval import output_agreement

    frames = [_scene((64, 64), [((16, 24), 8, 2), ((40, 40), 8, 1)]), _scene((64, 64), [((8, 8), 8, 0)])]
    spec = onnx_models.detector_manifest({"format": "yolov8", "conf": 0.5}, [{"name": "output0"}])
    from edgemm.bundle import manifest_from_dict

    out_spec = manifest_from_dict(spec).graphs["model"].outputs[0]
    x = np.concatenate([f[None, :, :, ::-1].transpose(0, 3, 1, 2) / 255.0 for f in frames]).astype(np.float32)

    def run(box):
        sess = ort.InferenceSession(onnx_models.colour_detector(box=box).SerializeToString())
        return np.concatenate([sess.run(None, {"images": x[i:i + 1]})[0] for i in range(len(x))])

    ref = run(8.0)
    assert output_agreement(ref, ref, out_spec) == 1.0
    assert output_agreement(ref, run(10.0), out_spec) == 1.0  # IoU 0.64: the same objects
    assert output_agreement(ref, run(24.0), out_spec) == 0.0  # IoU 0.11: none found where float found them


def test_int8_convert_of_a_detector_guards_box_agreement(tmp_path):
    from edgemm.converters.convert import ConvertOptions, convert

    manifest = onnx_models.detector_manifest({"format": "yolov8", "conf": 0.5}, [{"name": "output0"}])
    model = onnx_models.write_detector_bundle(tmp_path / "det", onnx_models.colour_detector(conv=True, box=8.0),
                                              manifest)
    rng = np.random.default_rng(0)
    calib = tmp_path / "calib"
    calib.mkdir()
    frames = [_scene((64, 64), [((int(rng.integers(0, 7)) * 8, int(rng.integers(0, 7)) * 8), 8, int(rng.integers(3)))])
              for _ in range(16)]
    x = np.concatenate([f[None, :, :, ::-1].transpose(0, 3, 1, 2) / 255.0 for f in frames]).astype(np.float32)
    np.savez(calib / "c.npz", images=x)
    report = convert(model, tmp_path / "int8", ConvertOptions(precision="int8", calib=calib, max_drop=0.0,
                                                              threads=1, bench_seconds=0.1, flavour="u8s8",
                                                              quiet=True))
    g = report["conversion"]["accuracy_guard"]
    assert g["metric"] == "box F1 x 100 vs float (IoU >= 0.5)" and g["metric_float"] == pytest.approx(100.0)
    assert g["within_budget"]
    assert "no box labels" in g["metric_note"] and "not mAP" in g["metric_note"]  # the report says why not mAP


@pytest.mark.parametrize("fmt", ["yolov8", "yolov5"])
def test_nms_in_engine_graph_ends_in_efficient_nms(tmp_path, fmt):
    from edgemm.converters.convert import ConvertOptions, convert

    manifest = onnx_models.detector_manifest({"format": fmt, "conf": 0.4, "iou": 0.5, "max_det": 50},
                                             [{"name": "output0"}])
    model = onnx_models.write_detector_bundle(tmp_path / "det", onnx_models.colour_detector(fmt=fmt), manifest)
    out = tmp_path / "trt"
    report = convert(model, out, ConvertOptions(target="tensorrt", nms_in_engine=True, bench_seconds=0.1,
                                                quiet=True))
    assert report["conversion"]["nms_in_engine"]["plugin"] == "EfficientNMS_TRT"
    bundle = load_bundle(out)  # the manifest matches the rewritten graph
    graph = bundle.load_graph()
    onnx.checker.check_model(graph)
    (nms_node,) = [n for n in graph.graph.node if n.op_type == "EfficientNMS_TRT"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nms_node.attribute}
    assert attrs["box_coding"] == 1 and attrs["max_output_boxes"] == 50 and attrs["background_class"] == -1
    assert attrs["score_threshold"] == pytest.approx(0.4) and attrs["iou_threshold"] == pytest.approx(0.5)
    spec = bundle.manifest.graphs["model"].outputs[0]
    assert spec.detection.format == "efficient_nms" and spec.labels == ["red", "green", "blue"]
    assert [o.name for o in graph.graph.output] == list(spec.detection.parts.values())
    # Up to the plugin the graph runs anywhere: its inputs are the head's boxes and (objectness x) class scores
    up_to = onnx.ModelProto()
    up_to.CopyFrom(graph)
    up_to.graph.node.remove(nms_node)
    del up_to.graph.output[:]
    up_to.graph.output.extend([onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                               for n in ("nms_boxes", "nms_scores")])
    frame = _scene((64, 64), [((16, 24), 8, 2)])
    x = frame[None, :, :, ::-1].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    boxes, scores = ort.InferenceSession(up_to.SerializeToString()).run(None, {"images": x})
    assert boxes.shape == (1, 84, 4) and scores.shape == (1, 84, 3) and scores[0, :, 0].max() == pytest.approx(1.0)


def test_nms_in_engine_needs_a_yolo_head(tmp_path):
    rows = np.zeros((1, 5, 6), np.float32)
    manifest = onnx_models.detector_manifest({"format": "end2end"}, [{"name": "dets"}])
    model = onnx_models.write_detector_bundle(tmp_path / "e2e", onnx_models.constant_detector({"dets": rows}),
                                              manifest)
    proc = run_cli("convert", model, "-o", tmp_path / "out", "--target", "tensorrt", "--nms-in-engine")
    assert proc.returncode == 1 and "no yolov8 or yolov5 detection output" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.tensorrt
def test_engine_with_nms_returns_final_boxes(tmp_path):
    from edgemm.converters.convert import ConvertOptions, convert
    from edgemm.runners import make_runner
    from tests.test_convert_cli import _engine_builder_here

    if not _engine_builder_here():
        pytest.skip("needs TensorRT and a CUDA GPU to build the engine")
    manifest = onnx_models.detector_manifest({"format": "yolov8", "conf": 0.5, "iou": 0.3}, [{"name": "output0"}])
    model = onnx_models.write_detector_bundle(tmp_path / "det", onnx_models.colour_detector(), manifest)
    convert(model, tmp_path / "trt", ConvertOptions(target="tensorrt", nms_in_engine=True, bench_seconds=0.1,
                                                    quiet=True))
    bundle = load_bundle(tmp_path / "trt")
    graph = bundle.manifest.graphs["model"]
    frame = _scene()
    with make_runner(bundle, "model", "tensorrt") as runner:
        outs = runner.infer({"images": preprocess_video(frame, graph.inputs[0])})
    specs = {o.name: o for o in graph.outputs}
    rec = Decisions(specs, image=graph.inputs[0].preprocess).decode(outs, 0.0, frame.shape[:2])["num_detections"]
    assert rec["counts"] == {"red": 1}
    x1, y1, x2, y2 = rec["detections"][0]["box"]
    assert [(x1 + x2) / 2, (y1 + y2) / 2] == [56, 24]
