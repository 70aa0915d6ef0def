"""The runner interface on ONNX Runtime: input checks with clear messages, outputs against numpy."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest

from edgemm.bundle import load_bundle
from edgemm.errors import EdgemmError
from edgemm.feeds import synthesize
from edgemm.runners import make_runner, parse_backend
from edgemm.runners.onnxruntime import OnnxRuntimeRunner
from tests import onnx_models


def test_infer_matches_numpy(tmp_path):
    model = onnx_models.mlp_model(features=8, hidden=16, outputs=3)
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path))
    w = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    expected = np.maximum(x @ w["w1"].T + w["b1"], 0) @ w["w2"].T + w["b2"]
    with OnnxRuntimeRunner(path, threads=1) as runner:
        out = runner.infer({"x": x})
        assert runner.last_inference_time > 0
        assert runner.describe() == "onnxruntime cpu, 1 threads"
    np.testing.assert_allclose(out["y"], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("feed, message", [
    ({}, "Input tensor: x | Missing from the feed; expected inputs: x."),
    ({"x": np.zeros((1, 8), np.float32), "z": np.zeros(1, np.float32)}, "Input tensor: z | Not an input of the model"),
    ({"x": np.zeros((1, 8), np.int32)}, "Input tensor: x | Received dtype int32; expected float32."),
    ({"x": np.zeros((1, 7), np.float32)}, "Input tensor: x | Received shape (1, 7); expected (N, 8)."),
    ({"x": np.zeros((8,), np.float32)}, "Input tensor: x | Received shape (8,); expected (N, 8)."),
])
def test_input_checks(tmp_path, feed, message):
    path = tmp_path / "mlp.onnx"
    onnx.save(onnx_models.mlp_model(), str(path))
    with OnnxRuntimeRunner(path) as runner:
        with pytest.raises(EdgemmError) as err:
            runner.infer(feed)
    assert str(err.value).startswith(message)


def test_runner_must_be_active(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(onnx_models.mlp_model(), str(path))
    runner = OnnxRuntimeRunner(path)
    with pytest.raises(RuntimeError, match="activated"):
        runner.infer({"x": np.zeros((1, 8), np.float32)})


def test_unavailable_gpu_provider_is_a_clear_error(tmp_path):
    """This CPU-only onnxruntime has no CUDA EP: asking for it must say so, not crash or silently use the CPU."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    path = tmp_path / "mlp.onnx"
    onnx.save(onnx_models.mlp_model(), str(path))
    with pytest.raises(EdgemmError, match=re.escape("Provider: cuda | Not available")):
        OnnxRuntimeRunner(path, provider="cuda").activate()
    with OnnxRuntimeRunner(path, provider="auto") as runner:  # auto falls back to what really runs
        assert runner.provider == "cpu"


def test_parse_backend():
    assert parse_backend("ort") == ("onnxruntime", None)
    assert parse_backend("onnxruntime:cuda") == ("onnxruntime", "cuda")
    with pytest.raises(EdgemmError, match=re.escape("Backend: tensorflow | Unknown")):
        parse_backend("tensorflow")
    with pytest.raises(EdgemmError, match="Unknown onnxruntime provider rocm"):
        parse_backend("onnxruntime:rocm")


def test_make_runner_for_each_graph_of_a_bundle(tmp_path):
    bundle = load_bundle(onnx_models.write_intermediate_bundle(tmp_path / "inter"))
    for graph in bundle.manifest.graphs:
        with make_runner(bundle, graph) as runner:
            feed = synthesize(runner.input_metadata(), bundle.manifest.graphs[graph], batch=2)
            out = runner.infer(feed)
            assert all(v.shape[0] == 2 for v in out.values())
    with pytest.raises(EdgemmError, match="Has 3 graphs"):
        make_runner(bundle)


def test_weights_listed_as_inputs_become_constants(tmp_path):
    """An old export lists its weights as graph inputs too: ONNX Runtime would fold none of them (CenterFace
    ran 2.4x slower). The runner's session no longer takes them as inputs, and computes the same."""
    from edgemm.runners.onnxruntime import OnnxRuntimeRunner, weights_as_constants

    model = onnx_models.residual_cnn_model(hw=8, channels=4, classes=3)
    plain = tmp_path / "plain.onnx"
    onnx.save(model, plain)
    model.graph.input.extend(onnx.helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
                             for i in model.graph.initializer)
    listed = tmp_path / "listed.onnx"
    onnx.save(model, listed)
    assert weights_as_constants(str(plain)) == str(plain)  # nothing to change: the file itself
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    outs = {}
    for path in (plain, listed):
        with OnnxRuntimeRunner(path, threads=1) as r:
            assert [i.name for i in r.session.get_inputs()] == ["x"]
            assert r.session.get_overridable_initializers() == []  # constants ONNX Runtime may fold
            outs[path.name] = r.infer({"x": x})
    np.testing.assert_allclose(outs["listed.onnx"]["logits"], outs["plain.onnx"]["logits"], rtol=1e-5, atol=1e-6)
