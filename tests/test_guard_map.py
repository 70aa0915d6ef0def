"""The accuracy guard on a labelled detector: it measures COCO mAP@0.5 against the folder's box labels (as
`edgemm eval` does, through the letterbox), rejects a graph that loses mAP although its boxes still agree with
float's, and keeps box agreement where the folder has no labels."""

from __future__ import annotations


import numpy as np
import pytest

from edgemm.bundle import load_bundle
from edgemm.converters.data import DataFolder, Sample
from edgemm.converters.detection_eval import evaluate_detection, output_agreement
from edgemm.converters.guard import BundleEvaluator, accuracy_guard
from edgemm.errors import EdgemmError
from tests import onnx_models
from tests.onnx_models import write_square_scenes

pytest.importorskip("pycocotools")

def _detector(folder, box, conf=0.5, resize=None):
    manifest = onnx_models.detector_manifest({"format": "yolov8", "conf": conf}, [{"name": "output0"}])
    if resize:
        manifest["graphs"]["model"]["inputs"][0]["preprocess"]["resize"] = resize
    return onnx_models.write_detector_bundle(folder, onnx_models.colour_detector(box=box), manifest)


def _samples(bundle, data):
    return list(DataFolder(data, bundle, "Evaluation data").single_samples())


# Letterboxed scenes: 96x192 frames into the 64x64 input (scale 1/3, 16 px of padding above and below), 24 px
# squares on a 24 px grid, so each lands on one stride-8 cell. One square labelled with the wrong class and one
# label with nothing drawn: the mAP is neither 0 nor 100, so agreeing with `edgemm eval` means something.
WIDE = [([((24, 24), 24, 2, None), ((120, 48), 24, 1, None)], []),
        ([((48, 0), 24, 0, None), ((144, 72), 24, 2, 1)], [((96, 24), 24, 0)]),
        ([((0, 48), 24, 1, None)], [])]


@pytest.mark.parametrize("coco", [False, True])
def test_guard_metric_of_a_labelled_detector_is_map_as_eval_reports_it(tmp_path, coco):
    data = write_square_scenes(tmp_path / "data", WIDE, (96, 192), coco)
    path = _detector(tmp_path / "det", box=8.0, resize="letterbox")
    bundle = load_bundle(path)
    samples = _samples(bundle, data)
    assert all(s.truth is not None and s.truth[0].frame_hw == (96, 192) for s in samples)
    with BundleEvaluator(bundle, samples) as ev:
        ev.set_reference({"model": bundle.load_graph("model")})
        metric = ev.metric(ev.reference)
        assert ev.metric_name == "mAP@0.5 (%)" and ev.metric_note is None
        # The same figure `edgemm eval` computes on the folder (its own decode of each image, in source pixels).
        independent = evaluate_detection(load_bundle(path), data)["model"]["map50"]
        assert metric == pytest.approx(100 * independent, abs=1e-9)
        assert 20 < metric < 90
        # On a subset (the guard's ranking) it is the mAP of those images only.
        sub = np.array([0, 2])
        assert ev.metric(ev.reference[sub], sub) == pytest.approx(100.0)  # two scenes whose squares are all found


# Square scenes (64x64, the input's size): 8 px squares on stride-8 cells, off the frame's edges (where a
# larger box clipped to the frame would fit the truth again).
SQUARE = [([((16, 24), 8, 2, None)], []), ([((40, 8), 8, 1, None), ((8, 48), 8, 2, None)], []),
          ([((32, 32), 8, 0, None)], []), ([((8, 16), 8, 1, None), ((48, 40), 8, 0, None)], [])]


def test_guard_rejects_a_graph_that_loses_map_though_its_boxes_agree_with_float(tmp_path):
    """Float draws 10 px boxes on the 8 px objects (IoU 0.64 with the truth: found); the candidate 12 px boxes
    (IoU 0.44 with the truth: every object missed, but 0.69 with float's boxes: full agreement). By box
    agreement the candidate costs nothing; by mAP@0.5 it costs all 100 points."""
    data = write_square_scenes(tmp_path / "data", SQUARE, (64, 64))
    bundle = load_bundle(_detector(tmp_path / "det", box=10.0))
    float_model = bundle.load_graph("model")
    candidate = onnx_models.colour_detector(box=12.0)
    labelled = _samples(bundle, data)
    unlabelled = [Sample(s.tensors, s.labels, s.name) for s in labelled]

    def quantize_fn(graph, exclude):  # "keeping the box layer float" gives the float graph back
        return float_model if "boxes" in exclude else candidate

    def guard(samples, groups, max_drop=1.0):
        return accuracy_guard(BundleEvaluator(bundle, samples), {"model": float_model}, quantize_fn,
                              {"model": groups}, max_drop, quantized={"model": candidate})

    by_map = guard(labelled, [])
    assert by_map.metric_name == "mAP@0.5 (%)"
    assert by_map.metric_float == pytest.approx(100.0) and by_map.metric_all_quantized == pytest.approx(0.0)
    assert not by_map.within_budget and by_map.stop_reason == "every quantized layer group tried"

    by_agreement = guard(unlabelled, [])  # what the guard measured before: the candidate passes
    assert by_agreement.metric_name == "box F1 x 100 vs float (IoU >= 0.5)"
    assert by_agreement.within_budget and by_agreement.drop == pytest.approx(0.0)

    fixed = guard(labelled, [["boxes"]])  # given the group to keep float, the guard keeps it
    assert fixed.within_budget and fixed.excluded == {"model": ["boxes"]} and fixed.drop == pytest.approx(0.0)


def test_guard_without_box_labels_keeps_box_agreement_and_says_so(tmp_path):
    data = write_square_scenes(tmp_path / "data", SQUARE, (64, 64))
    for txt in data.glob("*.txt"):
        txt.unlink()
    bundle = load_bundle(_detector(tmp_path / "det", box=10.0))
    samples = _samples(bundle, data)
    assert all(s.truth is None for s in samples)
    candidate = onnx_models.colour_detector(box=24.0)
    with BundleEvaluator(bundle, samples) as ev:
        ev.set_reference({"model": bundle.load_graph("model")})
        assert ev.metric_name == "box F1 x 100 vs float (IoU >= 0.5)"
        assert "no box labels" in ev.metric_note and "not mAP" in ev.metric_note
        out = ev.outputs({"model": candidate})
        spec = bundle.manifest.graphs["model"].outputs[0]
        assert ev.metric(out) == pytest.approx(100 * output_agreement(ev.reference, out, spec))
        assert ev.metric(out) < 50  # 24 px boxes on 8 px objects: few matches


def test_a_folder_labelled_in_part_is_refused_in_one_line(tmp_path):
    data = write_square_scenes(tmp_path / "data", SQUARE, (64, 64))
    (data / "s2.txt").unlink()
    bundle = load_bundle(_detector(tmp_path / "det", box=10.0))
    with pytest.raises(EdgemmError, match="s2.txt"):
        _samples(bundle, data)


def test_int8_convert_of_a_labelled_detector_guards_map(tmp_path):
    from edgemm.converters.convert import ConvertOptions, convert

    manifest = onnx_models.detector_manifest({"format": "yolov8", "conf": 0.5}, [{"name": "output0"}])
    model = onnx_models.write_detector_bundle(tmp_path / "det", onnx_models.colour_detector(conv=True, box=8.0),
                                              manifest)
    data = write_square_scenes(tmp_path / "data", SQUARE * 3, (64, 64))
    report = convert(model, tmp_path / "int8", ConvertOptions(precision="int8", calib=data, max_drop=1.0, threads=1,
                                                              bench_seconds=0.1, flavour="u8s8", quiet=True))
    g = report["conversion"]["accuracy_guard"]
    assert g["metric"] == "mAP@0.5 (%)" and "metric_note" not in g
    assert g["metric_float"] == pytest.approx(100 * evaluate_detection(load_bundle(model), data)["model"]["map50"])
    assert g["metric_float"] == pytest.approx(100.0) and g["within_budget"]
    assert load_bundle(tmp_path / "int8").manifest.provenance["accuracy_guard"]["metric"] == "mAP@0.5 (%)"


def test_guard_judges_a_detector_of_several_outputs_by_map(tmp_path):
    """CenterFace's boxes come from three outputs (heatmap, scale, offset): the guard decodes them all, so
    it measures mAP@0.5 on labels, and box agreement without (it judged the heatmap alone by cosine)."""
    import cv2
    import onnx

    path = tmp_path / "faces.onnx"
    onnx.save(onnx_models.centerface_like(placeholder=(1, 3, 32, 64), box=4.0), path)
    bigger = onnx_models.centerface_like(placeholder=(1, 3, 32, 64), box=8.0)  # boxes of 8 px: IoU 0.25
    data = tmp_path / "data"
    data.mkdir()
    for i, cells in enumerate([[(8, 8), (40, 20)], [(20, 12)], [(0, 0), (52, 24)]]):
        frame = np.zeros((32, 64, 3), np.uint8)
        for x, y in cells:
            frame[y:y + 4, x:x + 4] = 255
        cv2.imwrite(str(data / f"s{i}.png"), frame)
        (data / f"s{i}.txt").write_text("".join(f"0 {(x + 2) / 64} {(y + 2) / 32} {4 / 64} {4 / 32}\n"
                                                for x, y in cells))
    bundle = load_bundle(path)
    labelled = _samples(bundle, data)
    with BundleEvaluator(bundle, labelled) as ev:
        ev.set_reference({"model": bundle.load_graph("model")})
        assert ev.metric_name == "mAP@0.5 (%)"
        assert ev.metric(ev.reference) == pytest.approx(100.0)
        assert ev.metric(ev.outputs({"model": bigger})) == pytest.approx(0.0)
    unlabelled = [Sample(s.tensors, s.labels, s.name) for s in labelled]
    with BundleEvaluator(bundle, unlabelled) as ev:
        ev.set_reference({"model": bundle.load_graph("model")})
        assert ev.metric_name.startswith("box F1") and ev.metric(ev.reference) == pytest.approx(100.0)
        assert ev.metric(ev.outputs({"model": bigger})) == pytest.approx(0.0)
