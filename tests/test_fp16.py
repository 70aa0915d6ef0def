"""FP16 conversion: I/O types kept, overflowing (and flushed-to-zero) ops kept in FP32, checked against FP32."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgemm.converters import fp16
from edgemm.bundle import detect_precision
from tests.onnx_models import _init, _model, if_branch_model, residual_cnn_model, shape_range_model


def run(model, feed):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def risky_model():
    """y = ((x*1000)*100) * 1e-5 + MatMul(x, W) and z = (x*1e-9)*1e9: FP16 overflows the first
    (|x| * 1e5 > 65504) and flushes the second to zero (1e-9 < 2^-24); FP32 computes both fine."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Mul", ["x", "k1000"], ["a"], name="scale_up"),
        helper.make_node("Mul", ["a", "k100"], ["big"], name="overflow"),
        helper.make_node("Mul", ["big", "k1e-5"], ["back"], name="scale_down"),
        helper.make_node("MatMul", ["x", "w"], ["mm"], name="matmul"),
        helper.make_node("Add", ["back", "mm"], ["y"], name="add"),
        helper.make_node("Mul", ["x", "k1e-9"], ["tiny"], name="shrink"),
        helper.make_node("Mul", ["tiny", "k1e9"], ["z"], name="grow"),
    ]
    inits = [_init("k1000", np.array(1000.0)), _init("k100", np.array(100.0)), _init("k1e-5", np.array(1e-5)),
             _init("w", rng.standard_normal((4, 4)) * 0.5), _init("k1e-9", np.array(1e-9)), _init("k1e9", np.array(1e9))]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
                   helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])], inits, "risky")


def feeds(n, shape=(1, 4), name="x", seed=0):
    rng = np.random.default_rng(seed)
    return [{name: (rng.standard_normal(shape) * 2).astype(np.float32)} for _ in range(n)]


def test_naive_fp16_breaks_this_model():
    """The premise of the next test: without the range scan, FP16 gives Inf and zeros here."""
    model = risky_model()
    naive = fp16.to_fp16(model, [])
    f = feeds(1)[0]
    (y_ref, z_ref), (y, z) = run(model, f), run(naive, f)
    broken = [not np.allclose(got, ref, rtol=0.05, atol=0.05) for ref, got in ((y_ref, y), (z_ref, z))]
    assert any(broken)


def test_overflowing_ops_stay_fp32_and_results_match():
    model = risky_model()
    res = fp16.convert_fp16(model, feeds(8))
    kept = {k["node"] for k in res.kept_fp32}
    assert {"overflow", "scale_down"} <= kept  # produces / reads the tensor beyond the FP16 range
    assert {"shrink", "grow"} <= kept  # produces / reads values FP16 flushes to zero
    assert "matmul" not in kept and "scale_up" not in kept  # in range: converted
    for k in res.kept_fp32:
        assert k["reason"]
    # I/O dtypes are kept
    ins = {i.name: i.type.tensor_type.elem_type for i in res.model.graph.input}
    outs = {o.name: o.type.tensor_type.elem_type for o in res.model.graph.output}
    assert ins == {"x": TensorProto.FLOAT} and outs == {"y": TensorProto.FLOAT, "z": TensorProto.FLOAT}
    for f in feeds(4, seed=3):
        ref, got = run(model, f), run(res.model, f)
        for r, g in zip(ref, got):
            assert np.all(np.isfinite(g))
            np.testing.assert_allclose(g, r, rtol=2e-2, atol=2e-2)
    assert res.samples == 8


def test_cnn_converts_fully_and_closely():
    model = residual_cnn_model(hw=16, channels=16)
    fs = feeds(6, shape=(1, 3, 16, 16))
    res = fp16.convert_fp16(model, fs)
    assert res.kept_fp32 == []
    assert detect_precision(res.model) == "fp16"
    for f in feeds(3, shape=(1, 3, 16, 16), seed=7):
        (ref,), (got,) = run(model, f), run(res.model, f)
        assert got.dtype == np.float32
        cos = float(ref.ravel() @ got.ravel() / (np.linalg.norm(ref) * np.linalg.norm(got)))
        assert cos > 0.9999
        np.testing.assert_allclose(got, ref, atol=5e-2 * np.abs(ref).max())


def test_nan_found_after_conversion_goes_back_to_fp32(monkeypatch):
    """An op whose overflow only shows in FP16 (the scan saw it in range) is found by the NaN/Inf check:
    Exp of values around 12 gives ~1.6e5, beyond FP16; with the scan's threshold disabled only the check
    after conversion can find it, and it must move Exp and then its readers (which see the same value) to FP32."""
    nodes = [helper.make_node("Add", ["x", "twelve"], ["s"], name="shift"),
             helper.make_node("Exp", ["s"], ["e"], name="exp"),
             helper.make_node("ReduceMean", ["e"], ["m"], keepdims=1, axes=[1], name="mean"),
             helper.make_node("Div", ["e", "m"], ["y"], name="normalise")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                   [_init("twelve", np.array(12.0))], "exp")
    monkeypatch.setattr(fp16, "OVERFLOW_MARGIN", 1e9)  # the scan flags nothing
    res = fp16.convert_fp16(model, feeds(4, shape=(1, 8)))
    assert res.rounds >= 2
    assert any("NaN/Inf" in k["reason"] for k in res.kept_fp32)
    for f in feeds(2, shape=(1, 8), seed=5):
        (ref,), (got,) = run(model, f), run(res.model, f)
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, ref, rtol=2e-2)


def test_empty_feeds_are_refused():
    from edgemm.errors import EdgemmError

    with pytest.raises(EdgemmError, match="no samples"):
        fp16.convert_fp16(risky_model(), [])


def upsample_model():
    """An exported-upsampling pattern: Resize scales computed from the feature map's own shape,
    Shape -> Slice -> Cast(to=float) -> Div -> Concat -> Resize. onnxconverter_common declares the Cast's
    output FP16 but leaves to=FLOAT (its issue #320), which ONNX Runtime refuses to load."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Shape", ["c"], ["shp"], name="shape"),
        helper.make_node("Slice", ["shp", "s0", "s1"], ["hw"], name="slice"),
        helper.make_node("Cast", ["hw"], ["hwf"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Div", ["target", "hwf"], ["ratio"], name="div"),
        helper.make_node("Concat", ["ones", "ratio"], ["scales"], axis=0, name="concat"),
        helper.make_node("Resize", ["c", "", "scales"], ["y"], mode="nearest", name="resize"),
    ]
    inits = [_init("w", rng.standard_normal((4, 3, 3, 3)) * 0.3),
             numpy_helper.from_array(np.array([2], np.int64), "s0"),
             numpy_helper.from_array(np.array([4], np.int64), "s1"), _init("target", np.array([16.0, 16.0])),
             _init("ones", np.array([1.0, 1.0]))]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "H", "W"])], inits, "upsample")


def test_cast_to_float_inside_converted_ops_is_retargeted():
    model = upsample_model()
    res = fp16.convert_fp16(model, feeds(4, shape=(1, 3, 8, 8)))
    cast = next(n for n in res.model.graph.node if n.name == "cast")
    assert next(a.i for a in cast.attribute if a.name == "to") == TensorProto.FLOAT16
    for f in feeds(2, shape=(1, 3, 8, 8), seed=4):
        (ref,), (got,) = run(model, f), run(res.model, f)
        assert got.shape == ref.shape == (1, 4, 16, 16) and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, atol=2e-2 * np.abs(ref).max())
    # Counted on the result: Conv, Div and Concat compute in FP16; Resize (kept FP32 by the converter),
    # the integer Shape/Slice and the Casts do not.
    assert res.fp16_nodes == 3 and res.total_nodes == 7


def test_a_model_onnxruntime_cannot_load_is_one_line():
    from edgemm.errors import EdgemmError

    nodes = [helper.make_node("NoSuchOp", ["x"], ["y"], domain="com.example", name="custom")]
    model = helper.make_model(
        helper.make_graph(nodes, "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    with pytest.raises(EdgemmError) as exc:
        fp16.convert_fp16(model, feeds(1))
    assert "FP16 range scan" in str(exc.value) and "onnxruntime cannot load it" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_if_body_reads_fp32_values_from_outside():
    """openWakeWord's hey_jarvis: the If (kept FP32) has a then-branch that runs a second MLP on the outer input
    with outer weights, and an else-branch that returns the outer Sigmoid. onnxconverter-common converted those
    weights and that Sigmoid to FP16 and left the bodies FP32 ("Type parameter (T) of Optype (MatMul) bound to
    different types"). The bodies must read FP32: the original weights, the Sigmoid through a Cast."""
    from onnx import checker

    from edgemm.converters.graphs import outer_reads, with_outputs

    model = if_branch_model()
    fs = feeds(24, shape=(1, 16), seed=2)
    res = fp16.convert_fp16(model, fs)
    checker.check_model(res.model)
    inits = {i.name: i.data_type for i in res.model.graph.initializer}
    verify = next(n for n in res.model.graph.node if n.op_type == "If")
    assert all(inits.get(r, TensorProto.FLOAT) == TensorProto.FLOAT for r in outer_reads(verify))
    assert inits.get("w1") == TensorProto.FLOAT16  # the first stage is converted
    first_stage = [run(with_outputs(model, ["p"]), f)[1].item() for f in fs]
    assert 4 <= sum(p >= 0.5 for p in first_stage) <= 20  # both branches run
    ref, got = np.concatenate([run(model, f)[0] for f in fs]), np.concatenate([run(res.model, f)[0] for f in fs])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=5e-3)


def test_range_limit_from_shape_arithmetic():
    """Ultralytics' YOLOv8 anchors: Shape -> Gather -> Cast(float) -> Range, Range kept FP32 by the converter,
    on a dynamic HxW input whose output is also declared in value_info (as Ultralytics exports do).
    onnxconverter-common's FP16 cast pair between the Cast and the Range was collapsed onto the int64 Gather
    ("Type parameter (T) of Optype (Range) bound to different types (tensor(float) and tensor(int64))"), and the
    output's value_info, retyped FP16, turned the output's Cast into an FP16 one."""
    model = shape_range_model()
    model.graph.value_info.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, "H", "W"]))
    fs = [{"x": f["x"]} for f in feeds(1, shape=(1, 3, 8, 12)) + feeds(1, shape=(1, 3, 6, 10), seed=1)]
    res = fp16.convert_fp16(model, fs)
    assert res.fp16_nodes >= 1  # the Conv and the additions compute in FP16
    for shape in ((1, 3, 8, 12), (1, 3, 20, 40)):  # another size than the scan saw: the Range follows it
        f = feeds(1, shape=shape, seed=9)[0]
        (ref,), (got,) = run(model, f), run(res.model, f)
        assert got.shape == ref.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, atol=1e-2 * np.abs(ref).max())
