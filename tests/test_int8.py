"""Static INT8 Q/DQ: each flavour checked against the float model, TensorRT placement rules, bounded-memory
calibration, layer groups for the guard, and the measured flavour choice (no timing assertions)."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgemm.converters import graphs, int8, qdq
from edgemm.errors import EdgemmError
from tests.onnx_models import _init, _model, if_branch_model, residual_cnn_model


def feeds(n, seed=0, shape=(1, 3, 16, 16), name="x"):
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def run(model, fs):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, f)[0] for f in fs])


def cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def cnn():
    model = residual_cnn_model(hw=16, channels=16)
    prepared = int8.prepare(model)
    cal = int8.calibrate(prepared, feeds(24), "minmax")
    return model, prepared, cal


def _activation_q_nodes(model):
    inits = {i.name: i for i in model.graph.initializer}
    return [(n, numpy_helper.to_array(inits[n.input[2]])) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits]


@pytest.mark.parametrize("flavour,zp_dtype", [("u8s8", np.uint8), ("s8s8", np.int8), ("trt", np.int8)])
def test_flavours_are_close_to_float(cnn, flavour, zp_dtype):
    model, prepared, cal = cnn
    q = int8.quantize(prepared, cal, flavour)
    assert qdq.qdq_counts(q)["QuantizeLinear"] > 0
    test = feeds(16, seed=5)
    ref, out = run(model, test), run(q, test)
    assert cosine(ref, out) > 0.99
    assert np.mean(ref.argmax(1) == out.argmax(1)) >= 0.8
    zps = _activation_q_nodes(q)
    assert zps and all(z.dtype == zp_dtype for _, z in zps)
    if flavour == "trt":
        assert all(np.all(z == 0) for _, z in zps)  # symmetric: zero point 0
    # weights are per-channel: each Conv's weight DQ has one scale per output channel
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    producer = graphs.producers(q)
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    for conv in convs:
        dq = producer[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        assert inits[dq.input[1]].shape == (inits[dq.input[0]].shape[0],)


def test_graph_outputs_stay_float(cnn):
    _, prepared, cal = cnn
    for flavour in int8.FLAVOURS:
        q = int8.quantize(prepared, cal, flavour)
        producer = graphs.producers(q)
        assert producer["logits"].op_type == "Gemm", flavour
        used = {i for n in q.graph.node for i in n.input}
        assert all(i.name in used for i in q.graph.initializer), "no orphaned scales/zero points"


def softmax_model():
    """x -> Conv -> Relu -> Conv (+ residual Add with the first Relu) -> GAP -> Flatten -> Gemm -> Softmax."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Add", ["c2", "r1"], ["add"], name="add"),
        helper.make_node("Relu", ["add"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "fw", "fb"], ["logits"], transB=1, name="fc"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax"),
    ]
    inits = [_init("w1", rng.standard_normal((8, 3, 3, 3)) * 0.3), _init("b1", rng.standard_normal(8) * 0.1),
             _init("w2", rng.standard_normal((8, 8, 3, 3)) * 0.2), _init("b2", rng.standard_normal(8) * 0.1),
             _init("fw", rng.standard_normal((5, 8))), _init("fb", np.zeros(5))]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                  [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 5])], inits, "softmax")


def test_tensorrt_placement():
    model = softmax_model()
    prepared = int8.prepare(model)
    cal = int8.calibrate(prepared, feeds(16), "minmax", symmetric=True)
    q = int8.quantize(prepared, cal, "trt")
    producer, readers = graphs.producers(q), graphs.consumers(q)

    def from_dq(t):
        return t in producer and producer[t].op_type == "DequantizeLinear"

    # Q/DQ only on the inputs of Conv/Gemm/MatMul/Add: every activation DQ feeds one of those.
    for n in q.graph.node:
        if n.op_type == "DequantizeLinear":
            assert all(c.op_type in int8.TRT_OPS for c in readers[n.output[0]]), n.name
    # Softmax and the graph output stay float; no Q/DQ after Conv/Gemm outputs into Relu.
    softmax = next(n for n in q.graph.node if n.op_type == "Softmax")
    assert producer[softmax.input[0]].op_type == "Gemm"
    assert producer["probs"].op_type == "Softmax"
    relu1 = next(n for n in q.graph.node if n.name == "relu1")
    assert producer[relu1.input[0]].op_type == "Conv"
    # Residual Add: the Conv side is float (TensorRT fuses it), the other side is quantized.
    add = next(n for n in q.graph.node if n.op_type == "Add")
    assert sorted(from_dq(i) for i in add.input) == [False, True]
    assert producer[[i for i in add.input if not from_dq(i)][0]].op_type == "Conv"
    # Biases are not quantized (no int32 initializers), activations and weights are int8 with zero point 0.
    assert not [i for i in q.graph.initializer if i.data_type == TensorProto.INT32]
    for n in q.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            zp = numpy_helper.to_array(next(i for i in q.graph.initializer if i.name == n.input[2]))
            assert zp.dtype == np.int8 and np.all(zp == 0)
    test = feeds(8, seed=9)
    assert cosine(run(model, test), run(q, test)) > 0.99


def test_calibration_in_chunks_gives_the_same_minmax_ranges(cnn):
    _, prepared, _ = cnn
    whole = int8.calibrate(prepared, feeds(10), "minmax")
    chunked = int8.calibrate(prepared, feeds(10), "minmax", memory_mb=1e-9)  # one sample per collect_data
    assert chunked.chunk == 1 and whole.chunk > 10 and chunked.samples == whole.samples == 10
    a, b = whole.ranges.data, chunked.ranges.data
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(np.asarray(a[k].range_value, np.float64), np.asarray(b[k].range_value, np.float64),
                                   rtol=1e-6)


def test_one_pass_calibrates_every_graph_as_alone(cnn):
    """calibrate_graphs: each sample's feeds of all graphs in one pass, chunked, give each graph the ranges
    it gets calibrated on its own."""
    _, prepared, _ = cnn
    other = int8.prepare(residual_cnn_model(hw=8, channels=8, seed=3, input_name="y"))
    a_feeds, b_feeds = feeds(9), feeds(9, seed=2, shape=(1, 3, 8, 8), name="y")
    both = int8.calibrate_graphs({"a": prepared, "b": other},
                                 ({"a": fa, "b": fb} for fa, fb in zip(a_feeds, b_feeds)), "minmax", memory_mb=1e-9)
    for g, model, fs in (("a", prepared, a_feeds), ("b", other, b_feeds)):
        alone = int8.calibrate(model, fs, "minmax")
        assert both[g].samples == 9 and both[g].chunk == 1
        assert set(both[g].ranges.data) == set(alone.ranges.data)
        for k, v in alone.ranges.data.items():
            np.testing.assert_allclose(np.asarray(both[g].ranges.data[k].range_value, np.float64),
                                       np.asarray(v.range_value, np.float64), rtol=1e-6)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_methods_in_chunks(cnn, method, monkeypatch):
    monkeypatch.setattr(int8, "ENTROPY_BINS", 512)  # the KL search is linear in bins; 2048 is slow for a test
    model, prepared, _ = cnn
    cal = int8.calibrate(prepared, feeds(12), method, memory_mb=1e-9)
    assert cal.chunk == 1 and cal.method == method
    # both clip outliers: some tensor's range is tighter than its min/max over the same samples
    mm = int8.calibrate(prepared, feeds(12), "minmax")
    hi = {k: float(np.max(v.range_value[1])) for k, v in cal.ranges.data.items()}
    factor = 0.95 if method == "entropy" else 0.999  # 99.999th percentile of a few samples clips a little
    assert any(hi[k] < factor * float(np.max(v.range_value[1])) for k, v in mm.ranges.data.items() if k in hi)
    q = int8.quantize(prepared, cal, "u8s8")
    test = feeds(8, seed=4)
    assert cosine(run(model, test), run(q, test)) > 0.98


def test_bad_method_flavour_and_empty_feeds(cnn):
    _, prepared, cal = cnn
    with pytest.raises(EdgemmError, match="Calibration method: kl"):
        int8.calibrate(prepared, feeds(2), "kl")
    with pytest.raises(EdgemmError, match="INT8 flavour: u16"):
        int8.quantize(prepared, cal, "u16")
    with pytest.raises(EdgemmError, match="no samples"):
        int8.calibrate(prepared, [], "minmax")
    with pytest.raises(EdgemmError, match="Target: gpu"):
        int8.target_flavour("gpu")


def test_groups_and_exclusion_keep_a_layer_float(cnn):
    _, prepared, cal = cnn
    q = int8.quantize(prepared, cal, "u8s8")
    groups = int8.quantized_groups(prepared, q)
    names = {n.name for n in prepared.graph.node}
    assert groups and all(set(g) <= names for g in groups)
    ops = {n.name: n.op_type for n in prepared.graph.node}
    assert any(ops[g[0]] == "Conv" and len(g) > 1 and ops[g[1]] == "Relu" for g in groups)  # layer + its Relu
    target = next(g for g in groups if ops[g[0]] == "Conv")
    q2 = int8.quantize(prepared, cal, "u8s8", nodes_to_exclude=target)
    producer = graphs.producers(q2)
    conv = next(n for n in q2.graph.node if n.name == target[0])
    assert not any(i in producer and producer[i].op_type == "DequantizeLinear" for i in conv.input)
    assert len(int8.quantized_groups(prepared, q2)) == len(groups) - 1


def test_choose_flavour_measures_candidates(cnn):
    model, prepared, cal = cnn
    choice = int8.choose_flavour(prepared, model, cal, feeds(3), threads=1, duration_s=0.3)
    assert choice["flavour"] in int8.ORT_CANDIDATES
    for name, c in choice["candidates"].items():
        assert c["p50_ms"] > 0 and c["speedup_vs_fp32"] > 0 and c["cosine_mean"] > 0.99
    assert choice["fp32_p50_ms"] > 0
    assert set(choice["models"]) == set(int8.ORT_CANDIDATES)


def test_prepare_names_every_node():
    model = residual_cnn_model(hw=8, channels=8)
    for n in model.graph.node:
        n.name = ""
    prepared = int8.prepare(model)
    names = [n.name for n in prepared.graph.node]
    assert all(names) and len(set(names)) == len(names)
    # BatchNorm was folded into the convolutions
    assert "BatchNormalization" not in {n.op_type for n in prepared.graph.node}
    assert "BatchNormalization" in {n.op_type for n in model.graph.node}
    onnx.checker.check_model(prepared)


def relu_output_model():
    """x -> Gemm -> Relu -> Gemm -> Relu -> emb: an embedding output that ends in a Relu, as encoders do."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "w0", "b0"], ["h0"], transB=1, name="fc0"),
             helper.make_node("Relu", ["h0"], ["r0"], name="relu0"),
             helper.make_node("Gemm", ["r0", "w1", "b1"], ["h1"], transB=1, name="fc1"),
             helper.make_node("Relu", ["h1"], ["emb"], name="relu1")]
    inits = [_init("w0", rng.standard_normal((16, 8))), _init("b0", np.zeros(16)),
             _init("w1", rng.standard_normal((6, 16)) * 0.3), _init("b1", rng.standard_normal(6))]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                  [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", 6])], inits, "relu_out")


@pytest.mark.parametrize("flavour", int8.FLAVOURS)
@pytest.mark.parametrize("exclude", [[], ["fc1", "relu1"]])
def test_folded_activations_come_back_when_qdq_is_removed(flavour, exclude):
    """ORT folds a Relu into the Q that follows it; where edgemm removes that Q/DQ (a float graph output, a
    layer kept in float) the Relu must be computed again, or negative values leak out."""
    model = relu_output_model()
    x = np.random.default_rng(1).standard_normal((100, 8)).astype(np.float32)
    prepared = int8.prepare(model)
    cal = int8.calibrate(prepared, [{"x": x[i:i + 1]} for i in range(32)], "minmax", symmetric=flavour == "trt")
    q = int8.quantize(prepared, cal, flavour, exclude)
    onnx.checker.check_model(q)
    ref = run(model, [{"x": x}])
    out = run(q, [{"x": x}])
    assert out.min() >= 0.0
    assert cosine(ref, out) > 0.99
    producer = graphs.producers(q)
    assert producer["emb"].op_type == "Relu"
    if exclude:  # fc1 reads relu0's float output (a re-created Relu when relu0 was folded)
        fc1 = next(n for n in q.graph.node if n.name == "fc1")
        assert producer[fc1.input[0]].op_type == "Relu"


def test_two_float_readers_of_one_folded_activation_share_it():
    """Two layers kept in float that read the same quantized Relu output (a feature map that feeds both the
    next stage and a skip connection, as in the driving detector): the folded Relu is re-created once and
    both read it. Re-created per reader, ONNX Runtime refused the graph ("two nodes with same node name")."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "w0", "b0"], ["h0"], transB=1, name="fc0"),
             helper.make_node("Relu", ["h0"], ["r0"], name="relu0"),
             helper.make_node("Gemm", ["r0", "w1", "b1"], ["a"], transB=1, name="fc1"),
             helper.make_node("Gemm", ["r0", "w2", "b2"], ["b"], transB=1, name="fc2"),
             helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    inits = [_init("w0", rng.standard_normal((16, 8))), _init("b0", np.zeros(16)),
             _init("w1", rng.standard_normal((6, 16)) * 0.3), _init("b1", rng.standard_normal(6)),
             _init("w2", rng.standard_normal((6, 16)) * 0.3), _init("b2", rng.standard_normal(6))]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])], inits, "two_readers")
    x = np.random.default_rng(1).standard_normal((100, 8)).astype(np.float32)
    prepared = int8.prepare(model)
    cal = int8.calibrate(prepared, [{"x": x[i:i + 1]} for i in range(32)], "minmax")
    q = int8.quantize(prepared, cal, "u8s8", ["fc1", "fc2"])
    onnx.checker.check_model(q)
    names = [n.name for n in q.graph.node]
    assert len(names) == len(set(names)), names
    producer = graphs.producers(q)
    readers = [next(n for n in q.graph.node if n.name == f) for f in ("fc1", "fc2")]
    assert readers[0].input[0] == readers[1].input[0] and producer[readers[0].input[0]].op_type == "Relu"
    assert cosine(run(model, [{"x": x}]), run(q, [{"x": x}])) > 0.99


def test_the_tail_is_what_follows_the_last_weighted_layer():
    """A detector's box decoding (here: Sigmoid and a scale after the last Gemm) is the tail the converter
    keeps in float; the layers before it, and a model without weights, give nothing."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "w0", "b0"], ["h0"], transB=1, name="fc0"),
             helper.make_node("Relu", ["h0"], ["r0"], name="relu0"),
             helper.make_node("Gemm", ["r0", "w1", "b1"], ["h1"], transB=1, name="fc1"),
             helper.make_node("Sigmoid", ["h1"], ["s"], name="sig"),
             helper.make_node("Mul", ["s", "k"], ["y"], name="scale")]
    inits = [_init("w0", rng.standard_normal((16, 8))), _init("b0", np.zeros(16)),
             _init("w1", rng.standard_normal((6, 16))), _init("b1", np.zeros(6)), _init("k", np.full(6, 192.0))]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])], inits, "tail")
    assert sorted(int8.tail_nodes(int8.prepare(model))) == ["scale", "sig"]
    no_weights = _model([helper.make_node("Sigmoid", ["x"], ["y"], name="sig")],
                        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], [], "plain")
    assert int8.tail_nodes(no_weights) == set()


def test_entropy_searches_a_clipping_threshold(cnn, monkeypatch):
    """With ORT's own entropy defaults (128 bins for 128 levels) there is no threshold to search and the
    result equals min/max; edgemm's histogram (ENTROPY_BINS) makes KL calibration clip outliers."""
    monkeypatch.setattr(int8, "ENTROPY_BINS", 512)
    _, prepared, _ = cnn
    mm = int8.calibrate(prepared, feeds(12), "minmax")
    ent = int8.calibrate(prepared, feeds(12), "entropy")
    ratios = [float(np.max(ent.ranges.data[k].range_value[1])) / float(np.max(v.range_value[1]))
              for k, v in mm.ranges.data.items() if float(np.max(v.range_value[1])) > 0]
    assert min(ratios) < 0.9 and max(ratios) <= 1.0 + 1e-6


def test_ov_flavour_unsigned_after_relu_signed_elsewhere(cnn):
    """The ov flavour places activations as NNCF does for OpenVINO's CPU: uint8 with zero point 0 where the
    calibrated range is non-negative, int8 symmetric where it is not (the graph input here is signed)."""
    model, prepared, cal = cnn
    q = int8.quantize(prepared, cal, "ov")
    zps = {n.input[0]: z for n, z in _activation_q_nodes(q)}
    assert zps and all(not z.any() for z in zps.values())
    signed = {name for name, data in cal.ranges.items() if float(np.min(data.range_value[0])) < 0}
    assert zps["x"].dtype == np.int8 and "x" in signed
    assert any(z.dtype == np.uint8 for z in zps.values())
    assert all((z.dtype == np.int8) == (name in signed) for name, z in zps.items())
    test = feeds(8, seed=3)
    assert cosine(run(model, test), run(q, test)) > 0.99


def _tail_model():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
             helper.make_node("Mul", ["c2", "stride"], ["m"], name="decode_mul"),
             helper.make_node("Add", ["m", "anchor"], ["a"], name="decode_add"),
             helper.make_node("Concat", ["a", "c2"], ["y"], name="decode_concat", axis=1)]
    inits = [_init("w1", rng.standard_normal((8, 3, 3, 3)) * 0.3), _init("w2", rng.standard_normal((4, 8, 1, 1)) * 0.3),
             _init("stride", np.full((1, 1, 1, 1), 8.0)), _init("anchor", rng.uniform(0, 64, (1, 4, 16, 16)))]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], inits)
    return int8.prepare(model)


def test_tail_after_the_last_compute_op_stays_float():
    """A detector-style decode after the last Conv (scale, offset, concat) gets no Q/DQ in any flavour
    (NNCF's included, where it is installed)."""
    from edgemm.converters import openvino

    prepared = _tail_model()
    assert int8.tail_nodes(prepared) == {"decode_mul", "decode_add", "decode_concat"}
    fs = feeds(8)
    cal = int8.calibrate(prepared, fs, "minmax")
    nncf = importlib.util.find_spec("nncf") is not None
    for flavour in ("u8s8", "s8s8", "ov") + (("nncf",) if nncf else ()):
        q = openvino.quantize(flavour, prepared, cal, fs)
        prod = {o: n for n in q.graph.node for o in n.output}
        tail = [n for n in q.graph.node if n.name.startswith("decode_")]
        assert len(tail) == 3
        assert all(prod[i].op_type != "DequantizeLinear" for n in tail for i in n.input if i in prod), flavour
        conv2 = next(n for n in q.graph.node if n.name == "conv2")
        assert prod[conv2.input[0]].op_type == "DequantizeLinear"  # the compute op itself is still INT8


def _clear_of_threshold(model, fs, threshold=0.5, margin=0.02):
    """The feeds whose first-stage probability is clear of the If's threshold (8-bit rounding cannot flip the
    branch), and how many of them take the then-branch."""
    sess = ort.InferenceSession(graphs.with_outputs(model, ["p"]).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    ps = [float(sess.run(["p"], f)[0].ravel()[0]) for f in fs]
    kept = [f for f, p in zip(fs, ps) if abs(p - threshold) > margin]
    return kept, sum(p >= threshold for p in ps if abs(p - threshold) > margin)


@pytest.mark.parametrize("flavour", int8.FLAVOURS)
def test_if_body_reading_outer_weights_loads_in_every_flavour(flavour):
    """openWakeWord's hey_jarvis: an If body reads the outer input and the outer weights of a second MLP by
    name. The float tail after the last MatMul (Sigmoid, GreaterOrEqual, If) is rewired past its Q/DQ, and the
    clean-up after that dropped the weights only the body reads (ONNX Runtime: "Nodes in a graph must be
    topologically sorted ... input 'w2'"). Every flavour must load and stay close on both branches."""
    model = if_branch_model()
    fs = feeds(32, shape=(1, 16))
    prepared = int8.prepare(model)
    cal = int8.calibrate(prepared, fs, "minmax")
    q = int8.quantize(prepared, cal, flavour)
    assert {"w2", "w2b"} <= {i.name for i in q.graph.initializer}
    assert graphs.outer_reads(next(n for n in q.graph.node if n.op_type == "If")) >= {"x", "w2", "w2b", "p"}
    clear, then_count = _clear_of_threshold(model, fs)
    assert len(clear) >= 24 and 4 <= then_count <= len(clear) - 4  # both branches are exercised
    ref, got = run(model, clear), run(q, clear)
    assert cosine(ref, got) > 0.999
    np.testing.assert_allclose(got, ref, atol=0.02)


def test_topological_sort_counts_what_a_body_reads():
    """A node whose body reads an outer value goes after that value's producer, though it is not one of the
    node's inputs (a pass that appends such a producer, as the FP16 pass appends Casts, relies on it)."""
    model = if_branch_model()
    verify = next(n for n in model.graph.node if n.op_type == "If")
    model.graph.node.append(helper.make_node("Neg", ["w2"], ["w2_neg"], name="negate"))  # appended after the If
    graphs.rename_outer_read(verify, "w2", "w2_neg")
    assert "w2_neg" in graphs.outer_reads(verify) and "w2_neg" not in verify.input
    graphs.topological_sort(model)
    order = [n.name for n in model.graph.node]
    assert order.index("verify") > order.index("negate")
    onnx.checker.check_model(model)
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
