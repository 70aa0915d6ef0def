"""Synthetic inputs: right dtypes and shapes, plausible ranges, dynamic dims, scalars, int64 and state."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest

from edgemm.bundle import load_bundle
from edgemm.errors import EdgemmError
from edgemm.feeds import load_npz, synthesize
from edgemm.runners.onnxruntime import OnnxRuntimeRunner
from tests import onnx_models


def test_synthesised_av_inputs_follow_the_manifest(av_bundle):
    bundle = load_bundle(av_bundle)
    with OnnxRuntimeRunner(bundle.graph_path(), graph_spec=bundle.manifest.graphs["model"]) as r:
        feed = synthesize(r.input_metadata(), bundle.manifest.graphs["model"], batch=3)
        r.infer(feed)
    assert feed["video"].shape == (3, 3, 32, 32) and feed["audio"].shape == (3, 1, 64, 98)
    # Normalised with mean 0.5 and std 0.25 from pixels in [0, 1]: values in [-2, 2].
    assert feed["video"].min() >= -2.0 - 1e-6 and feed["video"].max() <= 2.0 + 1e-6
    assert feed["video"].std() > 0.5


def test_odd_inputs(tmp_path):
    path = tmp_path / "odd.onnx"
    onnx.save(onnx_models.odd_inputs_model(), str(path))
    bundle = load_bundle(path)
    with OnnxRuntimeRunner(path) as r:
        feed = synthesize(r.input_metadata(), bundle.manifest.graphs["model"], batch=2)
        out = r.infer(feed)
    assert feed["tokens"].dtype == np.int64 and feed["tokens"].shape == (2, 1) and feed["tokens"].min() >= 0
    assert feed["gain"].shape == () and feed["gain"].dtype == np.float32
    assert np.all(feed["hidden_state"] == 0) and feed["hidden_state"].shape == (1, 4)
    assert out["score"].shape == (2, 1)


def test_load_npz_checks_names_and_shapes(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(onnx_models.mlp_model(), str(path))
    with OnnxRuntimeRunner(path) as r:
        meta = r.input_metadata()
        np.savez(tmp_path / "good.npz", x=np.ones((2, 8), np.float32))
        assert load_npz(tmp_path / "good.npz", meta)["x"].shape == (2, 8)
        np.savez(tmp_path / "wrong_name.npz", y=np.ones((2, 8), np.float32))
        with pytest.raises(EdgemmError, match=re.escape("tensor: x | Missing")):
            load_npz(tmp_path / "wrong_name.npz", meta)
        np.savez(tmp_path / "wrong_shape.npz", x=np.ones((2, 9), np.float32))
        with pytest.raises(EdgemmError, match=r"Received shape \(2, 9\); expected \(N, 8\)"):
            load_npz(tmp_path / "wrong_shape.npz", meta)
        (tmp_path / "junk.npz").write_text("junk")
        with pytest.raises(EdgemmError, match="Not a readable .npz"):
            load_npz(tmp_path / "junk.npz", meta)
