"""Channel pruning and 2:4 sparsity on real ONNX graphs built with onnx.helper, checked against the float model."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from edgemm.converters import prune as P
from edgemm.converters.graphs import cpu_session
from edgemm.converters.prune_graph import ChannelGraph, prepare
from edgemm.errors import EdgemmError
from edgemm.modelinfo import count_parameters, estimate_macs
from tests.onnx_models import mobile_cnn_model, residual_cnn_model


def _feeds(model, n, seed):
    shape = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    name = model.graph.input[0].name
    return [{name: rng.standard_normal([1, *shape[1:]]).astype(np.float32)} for _ in range(n)]


def _run(model, x):
    sess = cpu_session(model)
    return sess.run(None, {model.graph.input[0].name: x})[0]


def _rel_err(model, ref_model, x):
    ref = _run(ref_model, x)
    return float(np.abs(_run(model, x) - ref).mean() / np.abs(ref).mean())


def _weights(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _node(model, name):
    return next(n for n in model.graph.node if n.name == name)


@pytest.fixture(scope="module")
def resnet():
    return residual_cnn_model()


@pytest.fixture(scope="module")
def held_out(resnet):
    return np.concatenate([f["x"] for f in _feeds(resnet, 48, seed=99)])


def test_channel_groups_follow_residual_and_concat(resnet):
    cg = ChannelGraph(prepare(resnet))
    groups = {tuple(cg.graph.node[s].name for s in g.sources): g for g in cg.groups()}
    # The residual Add couples the stem with the block's last conv: one group, one channel set.
    assert ("stem", "b1.2") in groups and groups[("stem", "b1.2")].prunable
    # The two Concat branches stay separate groups, both read by the strided conv.
    for branch in ("ca", "cb"):
        consumers = {cg.graph.node[c].name for c, _ in groups[(branch,)].consumers}
        assert consumers == {"down"}
    # The classifier feeds the graph output: never pruned.
    assert not groups[("fc2",)].prunable
    assert "graph output" in groups[("fc2",)].blocks[0]


def test_prune_channels_shrinks_and_runs(resnet, held_out):
    feeds = _feeds(resnet, 64, seed=1)
    pruned, info = P.prune(resnet, "channels:0.5", feeds, round_to=None)
    onnx.checker.check_model(pruned, full_check=True)
    assert info["parameters"]["after"] < 0.5 * info["parameters"]["before"]
    assert info["macs"]["after"] < 0.5 * info["macs"]["before"]
    assert info["parameters"]["after"] == count_parameters(pruned)
    assert info["macs"]["after"] == estimate_macs(pruned)
    w = _weights(pruned)
    assert w["stem.w"].shape[0] == 8 and w["b1.1.w"].shape == (8, 8, 3, 3)
    assert w["fc2.w"].shape == (10, 12)  # classifier: inputs pruned, outputs kept
    out = _run(pruned, held_out)
    assert out.shape == (held_out.shape[0], 10) and np.all(np.isfinite(out))
    assert info["groups_pruned"] == 6 and info["groups_skipped"] == 1
    json.dumps(info)  # goes into the bundle's provenance and the report as it is


def test_reconstruction_brings_outputs_closer(resnet, held_out):
    feeds = _feeds(resnet, 96, seed=2)
    sliced, info_s = P.prune(resnet, "channels:0.5", feeds, reconstruct=False, round_to=None)
    rebuilt, info_r = P.prune(resnet, "channels:0.5", feeds, reconstruct=True, round_to=None)
    assert info_r["reconstruct"] and not info_s["reconstruct"]
    recs = info_r["steps"][0]["reconstruction"]
    assert {r["layer"] for r in recs} >= {"b1.1", "b1.2", "down", "fc1", "fc2"}
    assert all(r["error_reconstructed"] <= r["error_sliced"] + 1e-9 for r in recs)
    err_sliced, err_rebuilt = _rel_err(sliced, resnet, held_out), _rel_err(rebuilt, resnet, held_out)
    assert err_rebuilt < 0.6 * err_sliced, (err_sliced, err_rebuilt)
    # Same structure either way: reconstruction re-fits weights, it does not change what is kept.
    assert info_r["macs"]["after"] == info_s["macs"]["after"]


def test_coupled_groups_keep_one_channel_set(resnet):
    pruned, _ = P.prune(resnet, "channels:0.5", None, round_to=None)
    w0, w1 = _weights(resnet), _weights(pruned)

    def kept(name):  # which original channels survive, read from a per-channel parameter's values
        return [int(np.flatnonzero(w0[name] == v)[0]) for v in w1[name]]

    stem_kept = kept("stem.g")
    assert stem_kept == kept("b1.2.g")  # the residual Add's two inputs keep the same channels
    assert len(stem_kept) == 8
    # The stem's filters are the original ones at those indices; b1.1 reads exactly those input channels.
    np.testing.assert_array_equal(w1["stem.w"], w0["stem.w"][stem_kept])
    b11_kept = kept("b1.1.g")
    np.testing.assert_array_equal(w1["b1.1.w"], w0["b1.1.w"][b11_kept][:, stem_kept])
    # The conv after the Concat reads ca's kept channels, then cb's, offset by ca's width.
    ca_kept = kept("ca.bias")
    cb_rows = [int(np.flatnonzero(np.all(w0["cb.w"][:, stem_kept] == r, axis=(1, 2, 3)))[0]) for r in w1["cb.w"]]
    down_kept = kept("down.g")
    expect = w0["down.w"][down_kept][:, ca_kept + [8 + i for i in cb_rows]]
    np.testing.assert_array_equal(w1["down.w"], expect)


def test_weight_importance_drops_channels_batchnorm_silenced(resnet):
    pruned, _ = P.prune(resnet, "channels:0.25", None, importance="l2", round_to=None)
    w0, w1 = _weights(resnet), _weights(pruned)
    scale = np.abs(w0["b1.1.g"]) / np.sqrt(w0["b1.1.v"] + 1e-5)
    norms = np.sqrt((w0["b1.1.w"].reshape(16, -1) ** 2).sum(axis=1)) * scale
    removed = sorted(set(w0["b1.1.g"]) - set(w1["b1.1.g"]))
    removed_idx = sorted(int(np.flatnonzero(w0["b1.1.g"] == v)[0]) for v in removed)
    assert removed_idx == sorted(np.argsort(norms)[:4].tolist())


def test_activation_importance_needs_and_uses_data(resnet, held_out):
    with pytest.raises(EdgemmError, match="calibration data"):
        P.prune(resnet, "channels:0.3", None, importance="activation")
    pruned, info = P.prune(resnet, "channels:0.5", _feeds(resnet, 48, seed=3), importance="activation", round_to=None)
    assert info["importance"] == "activation" and info["groups_pruned"] == 6
    assert _rel_err(pruned, resnet, held_out) < 0.5


def test_unfollowable_op_skips_its_layer_with_a_reason(held_out):
    model = residual_cnn_model(side_op="lrn")
    pruned, info = P.prune(model, "channels:0.5", _feeds(model, 32, seed=4), round_to=None)
    skipped = {tuple(s["layers"]): s["reason"] for s in info["steps"][0]["skipped"]}
    assert "LRN" in skipped[("down",)] and "side/lrn" in skipped[("down",)]
    w = _weights(pruned)
    assert w["down.w"].shape[0] == 32  # left whole
    assert w["stem.w"].shape[0] == 8  # the rest is still pruned
    onnx.checker.check_model(pruned, full_check=True)
    assert _run(pruned, held_out).shape == (held_out.shape[0], 10)


def test_depthwise_squeeze_excitation_reshape_matmul():
    model = mobile_cnn_model()
    x = np.concatenate([f["x"] for f in _feeds(model, 32, seed=5)])
    feeds = _feeds(model, 64, seed=6)
    sliced, _ = P.prune(model, "channels:0.5", feeds, reconstruct=False, round_to=None)
    pruned, info = P.prune(model, "channels:0.5", feeds, round_to=None)
    groups = {tuple(g["layers"]): g for g in info["steps"][0]["groups"]}
    assert groups[("expand", "se.fc2")]["kept"] == 16  # coupled through the excitation Mul
    w = _weights(pruned)
    assert w["dw.w"].shape == (16, 1, 3, 3) and w["dw.b"].shape == (16,)
    assert next(a.i for a in _node(pruned, "dw").attribute if a.name == "group") == 16
    assert w["cls.w"].shape == (8 * 6 * 6, 5)  # the Reshape target followed the kept channels
    assert list(w["flat.shape"]) == [-1, 8 * 36]
    assert _rel_err(pruned, model, x) < _rel_err(sliced, model, x)


def test_2_4_sparsity_pattern_and_marker(resnet, held_out):
    feeds = _feeds(resnet, 64, seed=7)
    plain, info_p = P.prune(resnet, "2:4", None)
    fitted, info = P.prune(resnet, "2:4", feeds)
    assert info["sparsity"] == "2:4" and info_p["sparsity"] == "2:4"
    skipped = {s["layer"]: s["reason"] for s in info["steps"][0]["skipped"]}
    assert "stem" in skipped and "multiple of 4" in skipped["stem"]  # 3 input channels
    for model in (plain, fitted):
        w = _weights(model)
        for name in ("b1.1.w", "down.w", "fc1.w", "fc2.w"):
            arr = w[name]
            k_axis_first = np.moveaxis(arr, 1, 0)  # (C_in, C_out, ...) for Conv and Gemm (transB) alike
            groups = k_axis_first.reshape(arr.shape[1] // 4, 4, -1)
            assert np.all((groups == 0).sum(axis=1) >= 2), name
    assert info["parameters"]["nonzero_after"] < info["parameters"]["before"]
    assert _rel_err(fitted, resnet, held_out) < _rel_err(plain, resnet, held_out)


def test_channels_then_2_4(resnet, held_out):
    pruned, info = P.prune(resnet, "channels:0.5+2:4", _feeds(resnet, 32, seed=8), round_to=None)
    assert [s["method"] for s in info["steps"]] == ["channels", "2:4"]
    assert info["sparsity"] == "2:4"
    assert _weights(pruned)["b1.1.w"].shape == (8, 8, 3, 3)
    assert np.isfinite(_run(pruned, held_out)).all()


@pytest.mark.parametrize("spec", ["channels:1.5", "channels:0", "3:4", "channels", "prune", "2:4+2:4"])
def test_bad_spec(spec, resnet):
    with pytest.raises(EdgemmError, match="Prune spec"):
        P.prune(resnet, spec)


def test_bad_importance_and_feeds(resnet):
    with pytest.raises(EdgemmError, match="importance"):
        P.prune(resnet, "channels:0.3", importance="random")
    with pytest.raises(EdgemmError, match="no tensor for input x"):
        P.prune(resnet, "channels:0.3", [{"y": np.zeros((1, 3, 16, 16), np.float32)}])


def test_round_to_keeps_multiples():
    model = residual_cnn_model(channels=32)
    pruned, info = P.prune(model, "channels:0.3", None, round_to=8)
    for g in info["steps"][0]["groups"]:
        if g["channels"] % 8 == 0 and g["channels"] >= 16:
            assert g["kept"] % 8 == 0
    assert _weights(pruned)["stem.w"].shape[0] == 24


def test_verify_rejects_a_broken_rewiring(resnet):
    """The safety net itself: a graph sliced on one side only must not pass."""
    m = onnx.ModelProto()
    m.CopyFrom(resnet)
    for i, init in enumerate(m.graph.initializer):
        if init.name == "b1.1.w":
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init)[:8], "b1.1.w"))
    with pytest.raises(P._VerifyError):
        P.verify(m, resnet)


def test_feeds_from_reader_and_callable(resnet):
    feeds = _feeds(resnet, 10, seed=9)

    class Reader:  # the ONNX Runtime CalibrationDataReader protocol
        def __init__(self):
            self.i = 0

        def get_next(self):
            self.i += 1
            return feeds[self.i - 1] if self.i <= len(feeds) else None

        def rewind(self):
            self.i = 0

    for source in (Reader(), lambda: iter(feeds), iter(feeds), feeds):
        batches = P.materialize_feeds(source, resnet, max_samples=7)
        assert sum(b["x"].shape[0] for b in batches) == 7


def test_gemm_without_transb_and_matmul_sources():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="g1"),
             helper.make_node("Relu", ["h"], ["hr"], name="r"),
             helper.make_node("MatMul", ["hr", "w2"], ["m"], name="mm"),
             helper.make_node("Tanh", ["m"], ["mt"], name="t"),
             helper.make_node("Gemm", ["mt", "w3"], ["y"], name="g3", transB=1)]
    inits = [numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((16, 12)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal((4, 12)).astype(np.float32), "w3")]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 8])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = [{"x": rng.standard_normal((1, 8)).astype(np.float32)} for _ in range(200)]
    x = rng.standard_normal((64, 8)).astype(np.float32)
    sliced, _ = P.prune(model, "channels:0.5", feeds, reconstruct=False, round_to=None)
    pruned, info = P.prune(model, "channels:0.5", feeds, round_to=None)
    w = _weights(pruned)
    assert w["w1"].shape == (8, 8) and w["b1"].shape == (8,) and w["w2"].shape == (8, 6) and w["w3"].shape == (4, 6)
    assert _rel_err(pruned, model, x) < _rel_err(sliced, model, x)
    onnx.checker.check_model(pruned, full_check=True)


def test_a_group_whose_rewiring_fails_verification_is_left_alone(resnet, held_out, monkeypatch):
    """Fault injection: the rewiring of one group is corrupted; the safety net must leave that group whole."""
    real = P.apply_edits

    def corrupting(model, cg, keep):
        out = real(model, cg, keep)
        fc1_root = next(g.root for g in cg.groups() if [cg.graph.node[s].name for s in g.sources] == ["fc1"])
        if fc1_root in keep:  # drop one more input column of fc2 than fc1 lost outputs: shapes disagree
            for i, init in enumerate(out.graph.initializer):
                if init.name == "fc2.w":
                    w = numpy_helper.to_array(init)
                    out.graph.initializer[i].CopyFrom(numpy_helper.from_array(w[:, :-1], "fc2.w"))
        return out

    monkeypatch.setattr(P, "apply_edits", corrupting)
    pruned, info = P.prune(resnet, "channels:0.5", _feeds(resnet, 16, seed=10), round_to=None)
    skipped = {tuple(s["layers"]): s["reason"] for s in info["steps"][0]["skipped"]}
    assert "failed verification" in skipped[("fc1",)]
    assert _weights(pruned)["fc1.w"].shape == (24, 16)  # fc1 whole; its input (down) still pruned
    assert info["groups_pruned"] == 5
    onnx.checker.check_model(pruned, full_check=True)
    assert _run(pruned, held_out).shape == (held_out.shape[0], 10)


def test_video_conv3d_model():
    """NCTHW clips through Conv (3-D kernels): channels are sliced; the re-fit handles only the layers it can."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Conv", ["clip", "c1.w", "c1.b"], ["c1"], name="c1", pads=[1] * 6),
             helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
             helper.make_node("Conv", ["r1", "c2.w"], ["c2"], name="c2", pads=[1] * 6),
             helper.make_node("Relu", ["c2"], ["r2"], name="r2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], name="fc", transB=1)]
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n) for n, s in
             (("c1.w", (8, 3, 3, 3, 3)), ("c1.b", (8,)), ("c2.w", (8, 8, 3, 3, 3)), ("fc.w", (4, 8)), ("fc.b", (4,)))]
    g = helper.make_graph(nodes, "c3d", [helper.make_tensor_value_info("clip", onnx.TensorProto.FLOAT, ["N", 3, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = [{"clip": rng.standard_normal((1, 3, 4, 8, 8)).astype(np.float32)} for _ in range(24)]
    pruned, info = P.prune(model, "channels:0.5+2:4", feeds, round_to=None)
    w = _weights(pruned)
    assert w["c1.w"].shape[0] == 4 and w["c2.w"].shape[:2] == (4, 4) and w["fc.w"].shape == (4, 4)
    assert [r["layer"] for r in info["steps"][0]["reconstruction"]] == ["fc"]  # c2 (3-D) is sliced, not re-fitted
    groups = np.moveaxis(w["c2.w"], 1, 0).reshape(1, 4, -1)
    assert np.all((groups == 0).sum(axis=1) >= 2)
    assert cpu_session(pruned).run(None, feeds[0])[0].shape == (1, 4)


@pytest.mark.parametrize("shape,attrs,kernel", [
    ((2, 3, 9, 11), {"strides": [2, 1], "pads": [1, 1, 1, 1], "dilations": [1, 2]}, [3, 3]),
    ((3, 4, 20), {"strides": [2], "pads": [1, 1]}, [3]),
    ((2, 5, 8, 8), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, [3, 3]),
])
def test_im2col_of_sampled_positions_equals_the_full_expansion(shape, attrs, kernel):
    """Reconstruction gathers only the sampled output positions (the full im2col of a large map is k*k
    times the input): the rows must be exactly those of the full expansion."""
    from edgemm.converters.prune_lsq import im2col

    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    s = attrs.get("strides", [1] * len(kernel))
    if attrs.get("auto_pad") == "SAME_UPPER":
        out = [-(-d // st) for d, st in zip(shape[2:], s)]
    else:
        p, d = attrs.get("pads"), attrs.get("dilations", [1] * len(kernel))
        out = [(shape[2 + i] + p[i] + p[i + len(kernel)] - ((kernel[i] - 1) * d[i] + 1)) // s[i] + 1
               for i in range(len(kernel))]
    full = im2col(x, attrs, kernel, out)
    picks = np.sort(np.stack([rng.choice(full.shape[1], 5, replace=False) for _ in range(shape[0])]), axis=1)
    np.testing.assert_array_equal(im2col(x, attrs, kernel, out, picks=picks),
                                  np.take_along_axis(full, picks[:, :, None], axis=1))


def test_reconstruction_in_target_groups_gives_the_same_model(resnet, monkeypatch):
    """With a tiny target budget every wave gets its own pass of the original model: the fitted weights
    must be identical to fitting with all targets in memory (200 samples: positions are sampled too)."""
    feeds = _feeds(resnet, 200, seed=11)
    whole, _ = P.prune(resnet, "channels:0.5+2:4", feeds, round_to=None)
    monkeypatch.setattr(P, "TARGET_MEMORY_MB", 1e-6)
    grouped, _ = P.prune(resnet, "channels:0.5+2:4", feeds, round_to=None)
    a, b = _weights(whole), _weights(grouped)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_2_4_layer_whose_fit_breaks_the_graph_keeps_its_weights(resnet, held_out, monkeypatch):
    """Fault injection: the re-fit of one layer returns NaN; that layer keeps its dense weights (reported),
    every other layer is still 2:4, and the graph verifies."""
    from edgemm.converters import prune_lsq

    real = prune_lsq.solve_masked
    calls = []

    def broken_for_fc1(stats, w0, mask):
        W, rec = real(stats, w0, mask)
        calls.append(w0.shape)
        if w0.shape == (33, 24):  # fc1: 32 inputs + bias row, 24 outputs
            W = np.full_like(W, np.nan)
        return W, rec

    monkeypatch.setattr(prune_lsq, "solve_masked", broken_for_fc1)
    pruned, info = P.prune(resnet, "2:4", _feeds(resnet, 16, seed=12))
    assert (33, 24) in calls  # the premise: fc1 was re-fitted
    step = info["steps"][0]
    reasons = {s["layer"]: s["reason"] for s in step["skipped"]}
    assert "failed verification" in reasons["fc1"] and "non-finite" in reasons["fc1"]
    w = _weights(pruned)
    np.testing.assert_array_equal(w["fc1.w"], _weights(resnet)["fc1.w"])  # dense, as it was
    groups = np.moveaxis(w["fc2.w"], 1, 0).reshape(w["fc2.w"].shape[1] // 4, 4, -1)
    assert np.all((groups == 0).sum(axis=1) >= 2)  # the others are 2:4
    assert "fc1" not in [r["layer"] for r in step["reconstruction"]] and step["layers"]
    assert np.isfinite(_run(pruned, held_out)).all()


def test_an_original_graph_onnxruntime_cannot_run_is_one_line():
    """The check's reference run fails (a Reshape the check input does not fit): EdgemmError, not a traceback."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["h"], transB=1, name="fc"),
             helper.make_node("Reshape", ["h", "shape"], ["y"], name="reshape")]
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([3, -1], np.int64), "shape")]
    g = helper.make_graph(nodes, "bad", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 8])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, "K"])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with pytest.raises(EdgemmError, match=r"Pruning check \| The original graph fails in onnxruntime"):
        P.prune(model, "2:4", None)
