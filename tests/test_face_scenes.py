"""The face scenes made from scikit-image's wheel (benchmarks/face_scenes.py): labels, the YOLO folder, and
FP32 CenterFace, as edgemm runs and decodes it, finding the labelled faces. Skipped where the wheel cannot be
fetched (or, for the last test, the zoo cache has no CenterFace)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import face_scenes as fs  # noqa: E402
import zoo  # noqa: E402


@pytest.fixture(scope="module")
def scenes():
    try:
        return fs.scenes(12, seed=0)
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"scikit-image's wheel not fetched (is PyPI reachable?): {exc}")


def test_labels_inside_the_image_and_apart(scenes):
    for img, boxes in scenes + fs.scenes(6, seed=0, astronaut=0.5):
        assert img.shape == (*fs.SIZE, 3) and img.dtype == np.uint8
        assert 1 <= len(boxes) <= 6
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= fs.SIZE[1]).all() and (boxes[:, 3] <= fs.SIZE[0]).all()
        assert (boxes[:, 2:] - boxes[:, :2] >= 0.5 * fs.HEIGHTS[0]).all()  # (the label: 0.6-0.9 of the side)
        for i in range(len(boxes)):
            for j in range(i):
                a, b = boxes[i], boxes[j]
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)


def test_seeds_differ_and_repeat(scenes):
    again = fs.scenes(2, seed=0)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(scenes, again))
    assert not np.array_equal(fs.scenes(1, seed=1)[0][0], scenes[0][0])


def test_yolo_folder_round_trips(scenes, tmp_path):
    pytest.importorskip("pycocotools")  # (converters.detection_eval's import chain)
    from converters.detection_eval import read_folder

    fs.write_folder(tmp_path, 3, seed=0)
    read = read_folder(tmp_path)
    assert [p.path.name for p in read] == ["0_0000.png", "0_0001.png", "0_0002.png"]
    for item, (_, boxes) in zip(read, scenes[:3]):
        assert np.allclose(item.truth.xyxy, boxes, atol=0.01) and (item.truth.classes == 0).all()


def test_fp32_centerface_finds_the_labelled_faces(tmp_path, monkeypatch):
    cf = next(m for m in zoo.ZOO if m.name == "centerface")
    if not zoo.model_path(cf).is_file():
        pytest.skip("the zoo cache has no CenterFace (python benchmarks/zoo.py --only centerface fetches it)")
    pytest.importorskip("pycocotools")
    monkeypatch.setenv("EDGEMM_RESHAPE_CACHE", str(tmp_path / "reshaped"))
    test = fs.scenes(8, seed=1, heights=(60, 200), astronaut=0.3)
    dets = fs.detect(fs.detector(zoo.model_path(cf)), [img for img, _ in test], 0.2)  # edgemm's own decode
    s = fs.score([fs.truth_boxes(b) for _, b in test], dets, 0.2)
    assert s["faces"] >= 16 and s["recall"] >= 0.9 and s["precision"] >= 0.9, s
    # The label convention fits the model's boxes: 0.75 here; the pasted squares as labels give 0.36, and
    # squares of 0.9 of the side 0.59.
    assert s["map"] >= 0.65, s
