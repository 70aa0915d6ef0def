"""FP16 conversion that keeps the model's I/O types and keeps in FP32 what would overflow.

1. ``range_scan``: the FP32 model runs on calibration feeds with every float intermediate tensor exposed
   as an output; per tensor the largest magnitude and the share of non-zero values below FP16's
   smallest subnormal (2^-24, they become 0) are accumulated one sample at a time (bounded memory).
2. Nodes that produce or consume a tensor above the FP16 range (|x| > 65504, with a safety margin:
   sums of in-range values overflow later in the op) or that would flush most of their values to zero
   are kept in FP32 (``node_block_list``); ops FP16 cannot hold (onnxconverter_common's default block
   list: Resize, TopK, NonMaxSuppression, ...) stay FP32 too.
3. ``onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True)`` converts the rest; inputs
   and outputs keep their dtypes, so the manifest and the device code do not change.
4. The FP16 model runs on the same feeds: any NaN/Inf in an intermediate tensor sends the node that first
   produced it back to FP32, and the conversion is redone (a few rounds at most); a model that still
   produces NaN/Inf is refused with the name of the tensor.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from edgemm.errors import EdgemmError

log = logging.getLogger(__name__)

FP16_MAX = 65504.0
FP16_TINY = 2.0 ** -24  # smallest positive subnormal
OVERFLOW_MARGIN = 0.5  # keep FP32 from half of FP16's maximum: reductions and sums grow inside the op
UNDERFLOW_SHARE = 0.5  # keep FP32 when more than half of a tensor's non-zero values would flush to 0
MAX_ROUNDS = 4


@dataclass
class TensorRange:
    max_abs: float = 0.0
    nonzero: int = 0
    underflow: int = 0  # non-zero values with |x| < 2^-24
    nonfinite: int = 0

    def update(self, x: np.ndarray) -> None:
        a = np.abs(x.astype(np.float32, copy=False)).ravel()
        finite = np.isfinite(a)
        self.nonfinite += int((~finite).sum())
        a = a[finite]
        if a.size:
            self.max_abs = max(self.max_abs, float(a.max()))
            nz = a[a > 0]
            self.nonzero += int(nz.size)
            self.underflow += int((nz < FP16_TINY).sum())

    @property
    def underflow_share(self) -> float:
        return self.underflow / self.nonzero if self.nonzero else 0.0


@dataclass
class Fp16Result:
    model: object  # onnx.ModelProto
    kept_fp32: list[dict] = field(default_factory=list)  # {"node", "op", "reason"}
    samples: int = 0
    rounds: int = 1
    fp16_nodes: int = 0
    total_nodes: int = 0

    def summary(self) -> dict:
        return {"kept_fp32": self.kept_fp32, "scan_samples": self.samples, "rounds": self.rounds,
                "fp16_nodes": self.fp16_nodes, "total_nodes": self.total_nodes}


def _with_intermediate_outputs(model):
    """A copy whose graph outputs also list every float tensor a node produces (types from inference)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(m)
    except Exception:  # noqa: BLE001 - fall back to what the graph declares
        inferred = m
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
    have = {o.name for o in m.graph.output}
    for node in m.graph.node:
        for out in node.output:
            if out and out not in have and types.get(out) in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
                m.graph.output.append(onnx.helper.make_tensor_value_info(out, types[out], None))
                have.add(out)
    return m


def _session(model):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # No graph fusions: the tensors measured must be the ones the FP16 graph will compute.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def range_scan(model, feeds: Iterable[dict]) -> tuple[dict[str, TensorRange], int]:
    """Per-tensor magnitude statistics of every float tensor over the feeds (one sample in memory)."""
    m = _with_intermediate_outputs(model)
    sess = _session(m)
    names = [o.name for o in sess.get_outputs()]
    stats = {n: TensorRange() for n in names}
    count = 0
    for feed in feeds:
        for name, value in zip(names, sess.run(None, feed)):
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                stats[name].update(value)
        count += 1
    if count == 0:
        raise EdgemmError("Calibration data | Holds no samples; expected at least one for the FP16 range scan.")
    return stats, count


def risky_nodes(model, stats: dict[str, TensorRange]) -> list[dict]:
    """Nodes to keep in FP32, each with the tensor and the reason."""
    limit = FP16_MAX * OVERFLOW_MARGIN
    bad: dict[str, str] = {}
    for name, st in stats.items():
        if st.max_abs > limit or st.nonfinite:
            bad[name] = f"|x| up to {st.max_abs:.4g} (FP16 max {FP16_MAX:.0f})"
        elif st.nonzero and st.underflow_share > UNDERFLOW_SHARE:
            bad[name] = f"{100 * st.underflow_share:.0f}% of non-zero values below FP16's smallest ({FP16_TINY:.2g})"
    kept: dict[str, dict] = {}
    for node in model.graph.node:
        for t in list(node.output) + list(node.input):
            if t in bad and node.name not in kept:
                role = "produces" if t in node.output else "reads"
                kept[node.name] = {"node": node.name, "op": node.op_type, "reason": f"{role} {t}: {bad[t]}"}
    return list(kept.values())


def _convert(model, block_nodes: list[str]):
    from onnxconverter_common import float16

    import warnings

    try:
        with warnings.catch_warnings():
            # It warns for every constant it clamps into FP16's range; the range scan and the NaN/Inf check
            # are what decide whether that matters.
            warnings.simplefilter("ignore", UserWarning)
            out = float16.convert_float_to_float16(model, keep_io_types=True, max_finite_val=FP16_MAX,
                                                   min_positive_val=FP16_TINY, node_block_list=block_nodes,
                                                   op_block_list=float16.DEFAULT_OP_BLOCK_LIST)
    except Exception as exc:  # noqa: BLE001 - the converter raises bare exceptions on unsupported graphs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgemmError(f"FP16 conversion | onnxconverter_common failed: {first}") from exc
    _collapse_cast_pairs(out)
    _restore_output_types(model, out)
    return out


def _cast_to(node) -> int | None:
    if node.op_type != "Cast":
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _collapse_cast_pairs(model) -> int:
    """FP32 -> Cast(FP16) -> Cast(FP32) chains between two nodes kept in FP32 read the FP32 value directly.

    onnxconverter_common 1.16 routes even an edge between two blocked nodes through FP16, which brings
    back exactly the overflow the block list was for. Returns the number of Casts bypassed.
    """
    from onnx import TensorProto

    outputs = {o.name for o in model.graph.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    bypassed = 0
    for c1 in list(model.graph.node):
        if _cast_to(c1) != TensorProto.FLOAT16:
            continue
        src = c1.input[0]
        for c2 in consumers.get(c1.output[0], []):
            if _cast_to(c2) != TensorProto.FLOAT or c2.output[0] in outputs:
                continue
            for reader in consumers.get(c2.output[0], []):
                for k, name in enumerate(reader.input):
                    if name == c2.output[0]:
                        reader.input[k] = src
            model.graph.node.remove(c2)
            bypassed += 1
        still_read = any(c1.output[0] in n.input for n in model.graph.node)
        if not still_read and c1.output[0] not in outputs:
            model.graph.node.remove(c1)
    return bypassed


def _restore_output_types(original, converted) -> None:
    """keep_io_types is not kept when a graph output comes from a node in node_block_list:
    onnxconverter_common 1.16 then casts the FP32 result to FP16 and declares the output FP16. The
    manifest promises the original dtype, so such an output gets a Cast back to it."""
    from onnx import helper

    want = {o.name: o.type.tensor_type.elem_type for o in original.graph.output}
    producer = {o: n for n in converted.graph.node for o in n.output}
    for out in converted.graph.output:
        t = want.get(out.name)
        if t is None or out.type.tensor_type.elem_type == t:
            continue
        node = producer.get(out.name)
        if node is not None and node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to":
                    a.i = t
        else:
            fixed = f"{out.name}_as_fp16"
            if node is not None:
                node.output[list(node.output).index(out.name)] = fixed
            converted.graph.node.append(helper.make_node("Cast", [fixed], [out.name], to=t,
                                                         name=f"{out.name}_restore_type"))
        out.type.tensor_type.elem_type = t


def _first_nonfinite(fp16_model, feeds: list[dict]) -> str | None:
    """Name of the first (graph order) tensor holding NaN/Inf on any feed, or None."""
    m = _with_intermediate_outputs(fp16_model)
    sess = _session(m)
    names = [o.name for o in sess.get_outputs()]
    order = {}
    for i, node in enumerate(m.graph.node):
        for o in node.output:
            order[o] = i
    for feed in feeds:
        bad = [n for n, v in zip(names, sess.run(None, feed))
               if isinstance(v, np.ndarray) and v.dtype.kind == "f" and not np.all(np.isfinite(v))]
        if bad:
            return min(bad, key=lambda n: order.get(n, 1 << 30))
    return None


def convert_fp16(model, feeds: Iterable[dict], check_limit: int = 32) -> Fp16Result:
    """FP16 with I/O types kept; nodes at risk of overflow (on the feeds) stay FP32; NaN/Inf checked.

    feeds: calibration feed dicts for this graph (streamed once for the scan; the first ``check_limit``
    are kept for the NaN/Inf check).
    """
    from converters.int8 import name_nodes
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    name_nodes(m)
    kept_feeds: list[dict] = []

    def remember(it):
        for f in it:
            if len(kept_feeds) < check_limit:
                kept_feeds.append(f)
            yield f

    stats, count = range_scan(m, remember(feeds))
    kept = risky_nodes(m, stats)
    block = [k["node"] for k in kept]
    producer = {o: n for n in m.graph.node for o in n.output}
    rounds = 1
    while True:
        out = _convert(m, block)
        bad = _first_nonfinite(out, kept_feeds)
        if bad is None:
            break
        # Map the FP16 graph's tensor back to the FP32 node that makes it (names survive the conversion);
        # when that node already runs in FP32, its value itself is beyond FP16: its readers move to FP32.
        node = producer.get(bad)
        if node is not None and node.name not in block:
            move = [node]
        else:
            move = [n for n in m.graph.node if bad in n.input and n.name not in block]
        if not move or rounds >= MAX_ROUNDS:
            raise EdgemmError(f"FP16 conversion | Tensor {bad} is NaN/Inf in FP16 on the calibration data even "
                              "with the overflowing ops in FP32; expected finite values (keep this model FP32 or INT8).")
        for n in move:
            role = "makes" if bad in n.output else "reads"
            kept.append({"node": n.name, "op": n.op_type, "reason": f"{role} {bad}, NaN/Inf in FP16"})
            block.append(n.name)
        rounds += 1
    total = len(out.graph.node)
    fp16_nodes = sum(1 for n in m.graph.node if n.name not in set(block))
    return Fp16Result(out, kept, count, rounds, fp16_nodes, len(m.graph.node) if total else 0)
