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

``convert_fp16_graphs`` does this for every graph of a bundle from ONE pass over the calibration data
(each sample's feeds of all graphs at once); ``convert_fp16`` is the one-graph form.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
from onnx import TensorProto, helper

from edgemm.converters.graphs import consumers, copy_model, cpu_session, drop_unused_initializers, first_line, \
    name_nodes, outer_reads, producers, reads, rename_outer_read, subgraphs, tensor_types, topological_sort, \
    with_outputs
from edgemm.errors import EdgemmError
from edgemm.lazy import import_optional

# onnxconverter-common is an extra (edgemm[convert]): imported where FP16 conversion starts, never at import.
FP16_EXTRA = "FP16 conversion needs onnxconverter-common: pip install 'edgemm[convert]'"

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


def _scan_session(model, what: str):
    # No graph fusions: the tensors measured must be the ones the FP16 graph will compute.
    return cpu_session(with_outputs(model), optimize=False, what=what)


class RangeScan:
    """Per-tensor magnitude statistics of every float tensor of one model, one feed at a time; the first
    ``keep`` feeds are kept for the NaN/Inf check after conversion."""

    def __init__(self, model, keep: int = 0, what: str = "FP16 range scan"):
        self.sess = _scan_session(model, what)
        self.names = [o.name for o in self.sess.get_outputs()]
        self.stats = {n: TensorRange() for n in self.names}
        self.count = 0
        self.keep = keep
        self.kept_feeds: list[dict] = []

    def add(self, feed: Mapping[str, np.ndarray]) -> None:
        for name, value in zip(self.names, self.sess.run(None, dict(feed))):
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                self.stats[name].update(value)
        if len(self.kept_feeds) < self.keep:
            self.kept_feeds.append(dict(feed))
        self.count += 1


def range_scan(model, feeds: Iterable[dict]) -> tuple[dict[str, TensorRange], int]:
    """Per-tensor magnitude statistics of every float tensor over the feeds (one sample in memory)."""
    scan = RangeScan(model)
    for feed in feeds:
        scan.add(feed)
    if scan.count == 0:
        raise EdgemmError("Calibration data | Holds no samples; expected at least one for the FP16 range scan.")
    return scan.stats, scan.count


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


# onnxconverter_common converts inside If/Loop/Scan bodies but not the values the bodies take from the outer
# graph, so ONNX Runtime rejects the result (an If branch typed float16 against a float32 output): such
# control flow stays FP32, with everything it reads and returns (_fp32_for_bodies: the values its bodies read
# from outside, which the converter does not see as the node's inputs).
SUBGRAPH_OPS = ["If", "Loop", "Scan"]


def require_converter():
    """onnxconverter_common's float16 module, or one EdgemmError naming the extra to install."""
    return import_optional("onnxconverter_common.float16", FP16_EXTRA)


def to_fp16(model, block_nodes: list[str]):
    """The FP16 conversion itself (I/O types kept, the named nodes in FP32), its known flaws repaired."""
    float16 = require_converter()
    try:
        with warnings.catch_warnings():
            # It warns for every constant it clamps into FP16's range; the range scan and the NaN/Inf check
            # are what decide whether that matters.
            warnings.simplefilter("ignore", UserWarning)
            out = float16.convert_float_to_float16(model, keep_io_types=True, max_finite_val=FP16_MAX,
                                                   min_positive_val=FP16_TINY, node_block_list=block_nodes,
                                                   op_block_list=float16.DEFAULT_OP_BLOCK_LIST + SUBGRAPH_OPS)
    except Exception as exc:  # noqa: BLE001 - the converter raises bare exceptions on unsupported graphs
        raise EdgemmError(f"FP16 conversion | onnxconverter_common failed: {first_line(exc)}") from exc
    _drop_io_value_info(out)
    _fix_cast_targets(out)
    _fp32_for_bodies(model, out, set(block_nodes), set(float16.DEFAULT_OP_BLOCK_LIST + SUBGRAPH_OPS))
    _collapse_cast_pairs(out)
    _restore_output_types(model, out)
    return out


def _drop_io_value_info(model) -> int:
    """value_info entries that repeat a graph input or output go: the converter retypes them to FP16 while
    keep_io_types leaves the output itself FP32, and _fix_cast_targets would then retarget the output's Cast
    to FP16 (Ultralytics' YOLOv8 exports declare ``output0`` in value_info too). The graph's own input/output
    declarations stay.
    Returns the number removed."""
    io = {v.name for v in list(model.graph.input) + list(model.graph.output)}
    keep = [vi for vi in model.graph.value_info if vi.name not in io]
    dropped = len(model.graph.value_info) - len(keep)
    if dropped:
        del model.graph.value_info[:]
        model.graph.value_info.extend(keep)
    return dropped


def _fp32_for_bodies(original, converted, block_nodes: set[str], block_ops: set[str]) -> int:
    """The bodies of control flow kept in FP32 read FP32 values from the graph around them.

    A body may read outer values by name without their being the node's inputs (openWakeWord's hey_jarvis: its
    If's then-branch runs a second model on the outer input and the outer weights; the else-branch returns an
    outer Sigmoid). onnxconverter_common casts only a blocked node's inputs to FP32, so it converts those
    weights and that Sigmoid to FP16 while the body stays FP32, and ONNX Runtime refuses the graph (Gemm bound
    to float and float16). Such a read goes to the original FP32 weight (an initializer copy ``NAME_fp32``
    where FP16 readers keep the converted one) or to a Cast to FP32 of the computed value. Returns the
    number of reads redirected."""
    orig_inits = {i.name: i for i in original.graph.initializer}
    inits = {i.name: i for i in converted.graph.initializer}
    types = tensor_types(converted) | {name: i.data_type for name, i in inits.items()}
    made = {o for n in converted.graph.node for o in n.output}
    fixed = 0
    for node in list(converted.graph.node):
        if not subgraphs(node) or not (node.op_type in block_ops or node.name in block_nodes):
            continue  # the converter converted these bodies itself
        for name in sorted(outer_reads(node)):
            if types.get(name) != TensorProto.FLOAT16:
                continue
            fp32 = f"{name}_fp32"
            if name in inits and orig_inits.get(name) is not None and orig_inits[name].data_type == TensorProto.FLOAT:
                if fp32 not in inits:
                    inits[fp32] = converted.graph.initializer.add()
                    inits[fp32].CopyFrom(orig_inits[name])
                    inits[fp32].name = fp32
            elif fp32 not in made:
                converted.graph.node.append(helper.make_node("Cast", [name], [fp32], to=TensorProto.FLOAT,
                                                             name=f"{name}_to_fp32"))
                made.add(fp32)
            rename_outer_read(node, name, fp32)
            fixed += 1
    if fixed:
        topological_sort(converted)  # the Casts were appended: before the node that reads them
        drop_unused_initializers(converted)  # FP16 copies only the bodies read
    return fixed


def _fix_cast_targets(model) -> int:
    """A Cast(to=FLOAT) of the source graph whose output the converter declared FLOAT16 is made to cast to
    FLOAT16: onnxconverter_common 1.15/1.16 retypes the output but leaves ``to`` (its issue #320), and ONNX
    Runtime refuses the graph (e.g. Shape -> Cast(float) -> Div -> Resize scales, in exported upsampling).
    Its readers were converted to FP16 and expect that type. Returns the number of Casts changed."""
    declared = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
    fixed = 0
    for node in model.graph.node:
        if _cast_to(node) == TensorProto.FLOAT and declared.get(node.output[0]) == TensorProto.FLOAT16:
            for a in node.attribute:
                if a.name == "to":
                    a.i = TensorProto.FLOAT16
            fixed += 1
    return fixed


def _cast_to(node) -> int | None:
    if node.op_type != "Cast":
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _collapse_cast_pairs(model) -> int:
    """X -> Cast(FP16) -> Cast(FP32) chains: the second Cast reads X itself.

    onnxconverter_common 1.16 routes even an edge between two blocked nodes through FP16, which brings
    back exactly the overflow the block list was for. Where X is FP32 the pair goes (the reader takes X);
    where X is not float (Ultralytics' anchors: Shape -> Gather -> Cast(float) -> Range, Range kept in FP32),
    the second Cast stays and converts X itself: integers cast once to FP32 are exact, and the reader keeps
    the FP32 input its type constraint asks for (removing the pair handed Range an int64 limit beside FP32
    start and delta). Returns the number of chains shortened.
    """
    outputs = {o.name for o in model.graph.output}
    readers = consumers(model)
    types = tensor_types(model) | {i.name: i.data_type for i in model.graph.initializer}
    in_bodies = {r for n in model.graph.node for r in outer_reads(n)}  # read inside an If/Loop body
    bypassed = 0
    for c1 in list(model.graph.node):
        if _cast_to(c1) != TensorProto.FLOAT16:
            continue
        src = c1.input[0]
        for c2 in readers.get(c1.output[0], []):
            if _cast_to(c2) != TensorProto.FLOAT or c2.output[0] in outputs:
                continue
            if types.get(src) != TensorProto.FLOAT or c2.output[0] in in_bodies:
                c2.input[0] = src
                bypassed += 1
                continue
            for reader in readers.get(c2.output[0], []):
                for k, name in enumerate(reader.input):
                    if name == c2.output[0]:
                        reader.input[k] = src
            model.graph.node.remove(c2)
            bypassed += 1
        still_read = any(c1.output[0] in reads(n) for n in model.graph.node)
        if not still_read and c1.output[0] not in outputs:
            model.graph.node.remove(c1)
    return bypassed


def _restore_output_types(original, converted) -> None:
    """keep_io_types is not kept when a graph output comes from a node in node_block_list:
    onnxconverter_common 1.16 then casts the FP32 result to FP16 and declares the output FP16. The
    manifest promises the original dtype, so such an output gets a Cast back to it."""
    want = {o.name: o.type.tensor_type.elem_type for o in original.graph.output}
    producer = producers(converted)
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
    m = with_outputs(fp16_model)
    sess = cpu_session(m, optimize=False, what="FP16 conversion: the converted graph")
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


def fp16_node_count(converted) -> int:
    """Nodes of a converted graph that compute in FP16: those (other than Casts) with an FP16 output.
    Counted on the model itself, so ops onnxconverter_common keeps in FP32 anyway (Resize, TopK, ...) and
    integer shape arithmetic do not count."""
    types = tensor_types(converted)
    return sum(1 for n in converted.graph.node
               if n.op_type != "Cast" and any(types.get(o) == TensorProto.FLOAT16 for o in n.output))


def convert_fp16(model, feeds: Iterable[dict], check_limit: int = 32) -> Fp16Result:
    """FP16 with I/O types kept; nodes at risk of overflow (on the feeds) stay FP32; NaN/Inf checked.

    feeds: calibration feed dicts for this graph (streamed once for the scan; the first ``check_limit``
    are kept for the NaN/Inf check).
    """
    return convert_fp16_graphs({"model": model}, ({"model": f} for f in feeds), check_limit)["model"]


def convert_fp16_graphs(models: Mapping[str, object], feeds: Iterable[Mapping[str, dict]],
                        check_limit: int = 32) -> dict[str, Fp16Result]:
    """convert_fp16 for several graphs from one pass over the data: feeds yields, per sample, graph -> feed
    (converters.calibration.GraphFeeds.iter_feeds). Returns graph -> Fp16Result."""
    named = {}
    scans = {}
    for g, model in models.items():
        m = copy_model(model)
        name_nodes(m)
        named[g] = m
        scans[g] = RangeScan(m, keep=check_limit, what=f"FP16 range scan: graph {g}")
    for sample in feeds:
        for g, scan in scans.items():
            scan.add(sample[g])
    if not scans or next(iter(scans.values())).count == 0:
        raise EdgemmError("Calibration data | Holds no samples; expected at least one for the FP16 range scan.")
    return {g: _convert_scanned(named[g], scans[g]) for g in models}


def _convert_scanned(m, scan: RangeScan) -> Fp16Result:
    kept = risky_nodes(m, scan.stats)
    block = [k["node"] for k in kept]
    producer = producers(m)
    rounds = 1
    while True:
        out = to_fp16(m, block)
        bad = _first_nonfinite(out, scan.kept_feeds)
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
    return Fp16Result(out, kept, scan.count, rounds, fp16_node_count(out), len(m.graph.node))
