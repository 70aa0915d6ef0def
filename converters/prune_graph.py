"""Channel dependency analysis on an ONNX graph: which output channels can be removed together.

The pruner never guesses: it follows the channel axis of every Conv/Gemm/MatMul output through the
graph, DepGraph-style, and records every place that must change when a channel goes away.

A *channel space* is a set of channels that must be removed together. Each Conv (group 1), Gemm,
MatMul (constant 2-D weight) and ConvTranspose output opens a new space (its *source*). The space
follows the tensor through ops that keep channels apart (Relu, Clip, pooling, BatchNormalization,
depthwise Conv, Flatten/Reshape into a Gemm, element-wise ops with per-channel constants, ...) and
ends where a Conv/Gemm/MatMul reads it (its input channels are sliced). Element-wise ops between two
traced tensors (a residual Add, a squeeze-excitation Mul) *couple* their spaces: they are merged into
one group with one shared channel set. A Concat along the channel axis lays several spaces side by
side (each keeps its own channel set; consumers slice by the concatenated index list).

Anything the analysis cannot follow *blocks* the spaces that reach it, with a reason: a graph output
(the classifier's logits are never pruned), an op that mixes channels in a way we cannot rewrite
(Softmax over channels, LRN, Split, a Reshape with a computed shape, ...). A blocked group is left
exactly as it was and reported; nothing is ever half-rewired.

The analysis produces ``Edit`` records (an initializer sliced along an axis, a Conv ``group``
attribute, a Reshape target); ``apply_edits`` turns chosen channel sets into a new graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from edgemm.converters.graphs import attr, copy_model, node_indices

# Ops that act on each element alone (shape kept): channels pass straight through.
UNARY = {
    "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Gelu", "Mish", "Erf", "Identity", "Dropout", "Neg", "Abs", "Exp", "Log",
    "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Cast", "ThresholdedRelu", "Swish",
}
# Spatial pooling over NC... tensors: the channel axis (1) is kept.
POOL = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
# Element-wise with broadcasting: traced inputs are coupled, constant inputs are sliced per channel.
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "PRelu", "Pow"}
REDUCE = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare",
          "ReduceLogSumExp", "ReduceProd"}
LAYERS = ("Conv", "Gemm", "MatMul", "ConvTranspose")  # the ops that own output channels


@dataclass
class Seg:
    """A run of channels of one space along a tensor's channel axis (repeat: features per channel)."""

    space: int
    size: int
    repeat: int = 1


@dataclass
class ChanInfo:
    """How a tensor's channel axis maps to spaces."""

    axis: int  # non-negative axis index
    rank: int
    segs: list[Seg]

    @property
    def width(self) -> int:
        return sum(s.size * s.repeat for s in self.segs)


@dataclass
class Edit:
    """One change a channel selection causes.

    kind "init":    slice initializer ``name`` along ``axis`` by the index list of ``segs``
    kind "group":   set the ``group`` attribute of node ``node`` to the kept width of ``segs``
    kind "reshape": set element ``axis`` of the constant shape ``name`` to the kept width of ``segs``
    """

    kind: str
    node: int
    name: str
    axis: int
    segs: list[Seg]


@dataclass
class Space:
    id: int
    size: int
    sources: list[int] = field(default_factory=list)  # node indices whose output channels these are
    blocks: list[str] = field(default_factory=list)
    edits: list[Edit] = field(default_factory=list)
    consumers: list[tuple[int, str]] = field(default_factory=list)  # (node index, input tensor) that read it
    fixed: bool = False  # channels of an untraced tensor (a Concat part we cannot touch)


@dataclass
class Group:
    """A union of coupled spaces: one channel set, chosen once, applied everywhere."""

    root: int
    size: int
    sources: list[int]
    blocks: list[str]
    edits: list[Edit]
    consumers: list[tuple[int, str]]
    spaces: list[int]

    @property
    def prunable(self) -> bool:
        return bool(self.sources) and not self.blocks


def node_label(node, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


class ChannelGraph:
    """The channel analysis of one model (after ``prepare``: Constant nodes folded to initializers)."""

    def __init__(self, model):
        self.model = model
        self.graph = g = model.graph
        self.inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        self.shapes = _inferred_shapes(model)
        self.outputs = {o.name for o in g.output}
        self.consumers: dict[str, list[int]] = node_indices(g)[1]  # tensor -> indices of the nodes reading it
        self.spaces: list[Space] = []
        self.parent: list[int] = []
        self.info: dict[str, ChanInfo] = {}
        self._analyse()

    # -- union-find over spaces ----------------------------------------------------------------------
    def new_space(self, size: int, source: int | None = None, fixed: bool = False) -> int:
        sid = len(self.spaces)
        self.spaces.append(Space(sid, size, [source] if source is not None else [], fixed=fixed))
        self.parent.append(sid)
        if fixed:
            self.spaces[sid].blocks.append("holds channels of a tensor the pruner does not own")
        return sid

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int, where: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        sa, sb = self.spaces[ra], self.spaces[rb]
        self.parent[rb] = ra
        sa.sources += sb.sources
        sa.blocks += sb.blocks
        sa.edits += sb.edits
        sa.consumers += sb.consumers
        sa.fixed = sa.fixed or sb.fixed
        if sa.size != sb.size:
            sa.blocks.append(f"{where} couples {sa.size} with {sb.size} channels")

    def block(self, info: ChanInfo | None, reason: str) -> None:
        if info is None:
            return
        for s in info.segs:
            sp = self.spaces[self.find(s.space)]
            if reason not in sp.blocks:
                sp.blocks.append(reason)

    def edit(self, info: ChanInfo, kind: str, node: int, name: str, axis: int) -> None:
        e = Edit(kind, node, name, axis, list(info.segs))
        for s in {s.space for s in info.segs}:
            self.spaces[self.find(s)].edits.append(e)

    def consume(self, info: ChanInfo, node: int, tensor: str) -> None:
        for s in {s.space for s in info.segs}:
            self.spaces[self.find(s)].consumers.append((node, tensor))

    # -- helpers -------------------------------------------------------------------------------------
    def shape(self, name: str) -> list | None:
        if name in self.inits:
            return list(self.inits[name].shape)
        return self.shapes.get(name)

    def const(self, name: str):
        return self.inits.get(name)

    def _single_seg_repeat1(self, info: ChanInfo) -> bool:
        return all(s.repeat == 1 for s in info.segs)

    # -- the walk ------------------------------------------------------------------------------------
    def _analyse(self) -> None:
        for idx, node in enumerate(self.graph.node):
            traced = {t: self.info[t] for t in node.input if t in self.info}
            try:
                self._visit(idx, node, traced)
            except _Unsupported as exc:
                reason = f"{node.op_type} node {node_label(node, idx)!r} {exc}"
                for info in traced.values():
                    self.block(info, reason)
                for t in node.output:
                    self.info.pop(t, None)
        for name in self.outputs:
            if name in self.info:
                self.block(self.info[name], f"reaches graph output {name!r} (output channels are never pruned)")

    def _visit(self, idx: int, node, traced: dict[str, ChanInfo]) -> None:
        if node.op_type in LAYERS:
            self._layer(idx, node, traced)
            return
        if not traced:
            return
        if node.domain not in ("", "ai.onnx"):
            raise _Unsupported(f"(domain {node.domain}) is not an op the pruner knows")
        handler = HANDLERS.get(node.op_type)
        if handler is None:
            raise _Unsupported("is not an op the pruner can follow through")
        handler(self, idx, node, traced)

    # -- one handler per op kind (HANDLERS maps op types to them): how channels pass through ----------
    def _unary(self, idx: int, node, traced: dict[str, ChanInfo]) -> None:
        if any(t in traced for t in node.input[1:]):
            raise _Unsupported("takes a traced tensor as a parameter")
        for out in node.output:
            if out:
                self.info[out] = traced.get(node.input[0])

    def _pool(self, idx: int, node, traced: dict[str, ChanInfo]) -> None:
        xi = traced.get(node.input[0])
        if xi is None or xi.axis != 1 or not self._single_seg_repeat1(xi):
            raise _Unsupported("pools over the channel axis")
        if len(node.output) > 1 and node.output[1] and self.consumers.get(node.output[1]):
            raise _Unsupported("has its indices output used (they encode channel positions)")
        self.info[node.output[0]] = xi

    def _normalization(self, idx: int, node, traced: dict[str, ChanInfo]) -> None:
        xi = traced.get(node.input[0])
        if xi is None or xi.axis != 1 or any(t in traced for t in node.input[1:]):
            raise _Unsupported("normalises a traced tensor on an axis other than channels")
        for slot in range(1, len(node.input)):
            self.edit(xi, "init", idx, node.input[slot], 0)
            if node.input[slot] not in self.inits:
                raise _Unsupported("has non-constant parameters")
        self.info[node.output[0]] = xi

    def _flatten(self, idx: int, node, traced: dict[str, ChanInfo]) -> None:
        xi = traced.get(node.input[0])
        axis = attr(node, "axis", 1)
        shape = self.shape(node.input[0])
        if axis < 0 and shape:
            axis += len(shape)
        if xi.axis == 1 and axis == 1 and shape and all(isinstance(d, int) and d > 0 for d in shape[2:]):
            rep = int(np.prod(shape[2:])) if len(shape) > 2 else 1
            self.info[node.output[0]] = ChanInfo(1, 2, [Seg(s.space, s.size, s.repeat * rep) for s in xi.segs])
            return
        raise _Unsupported("flattens the channel axis in a way the pruner cannot follow")

    def _transpose(self, idx: int, node, traced: dict[str, ChanInfo]) -> None:
        xi = traced.get(node.input[0])
        perm = attr(node, "perm")
        if perm is None or not self._single_seg_repeat1(xi):
            raise _Unsupported("transposes without a perm the pruner can follow")
        self.info[node.output[0]] = ChanInfo(perm.index(xi.axis), xi.rank, xi.segs)

    def _softmax(self, idx: int, node, traced: dict[str, ChanInfo]) -> None:
        xi = traced.get(node.input[0])
        axis = attr(node, "axis", -1)
        axis = axis + xi.rank if axis < 0 else axis
        if axis == xi.axis:
            raise _Unsupported("normalises across channels")
        self.info[node.output[0]] = xi

    def _pad(self, idx: int, node, traced: dict[str, ChanInfo]) -> None:
        xi = traced.get(node.input[0])
        pads = self.const(node.input[1]) if len(node.input) > 1 and node.input[1] else attr(node, "pads")
        axes = self.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        if pads is None or any(t in traced for t in node.input[1:]):
            raise _Unsupported("pads with a computed amount")
        pads = np.asarray(pads).ravel()
        axes = list(range(xi.rank)) if axes is None else [int(a) % xi.rank for a in np.asarray(axes).ravel()]
        n = len(axes)
        if xi.axis in axes and (pads[axes.index(xi.axis)] != 0 or pads[n + axes.index(xi.axis)] != 0):
            raise _Unsupported("pads the channel axis")
        self.info[node.output[0]] = xi

    def _resize(self, idx: int, node, traced: dict[str, ChanInfo]) -> None:
        xi = traced.get(node.input[0])
        op = node.op_type
        scales_name = node.input[2] if op == "Resize" and len(node.input) > 2 else (
            node.input[1] if op == "Upsample" and len(node.input) > 1 else "")
        scales = self.const(scales_name) if scales_name else None
        if scales is None or scales.size != xi.rank or scales[xi.axis] != 1 or any(
                t in traced for t in node.input[1:]):
            raise _Unsupported("resizes with sizes or scales the pruner cannot check")
        self.info[node.output[0]] = xi

    def _slice(self, idx: int, node, traced: dict[str, ChanInfo]) -> None:
        xi = traced.get(node.input[0])
        axes_name = node.input[3] if len(node.input) > 3 else ""
        axes = self.const(axes_name) if axes_name else None
        if axes is None or any(t in traced for t in node.input[1:]):
            raise _Unsupported("slices without constant axes")
        if xi.axis in [int(a) % xi.rank for a in np.asarray(axes).ravel()]:
            raise _Unsupported("slices the channel axis")
        self.info[node.output[0]] = xi

    def _shape_of(self, idx: int, node, traced: dict[str, ChanInfo]) -> None:
        xi = traced.get(node.input[0])
        start = attr(node, "start", 0)
        for c in self.consumers.get(node.output[0], []):
            cn = self.graph.node[c]
            ind = self.const(cn.input[1]) if cn.op_type == "Gather" and len(cn.input) > 1 else None
            if ind is None or xi.axis - start in np.asarray(ind).ravel() % xi.rank:
                raise _Unsupported("reads the shape of a traced tensor and may use its channel count")

    def _layer(self, idx: int, node, traced: dict[str, ChanInfo]) -> None:
        op = node.op_type
        x = node.input[0]
        xi = traced.get(x)
        if any(t in traced for t in node.input[1:]):
            raise _Unsupported("takes a traced tensor as its weights")
        w = self.const(node.input[1]) if len(node.input) > 1 else None
        out = node.output[0]
        if w is None:
            if xi is not None:
                raise _Unsupported("has non-constant weights")
            return
        if op == "Conv":
            group = attr(node, "group", 1)
            if group == 1:
                if xi is not None:
                    if xi.axis != 1 or not self._single_seg_repeat1(xi):
                        raise _Unsupported("reads a tensor whose channel axis is not its input channels")
                    self.edit(xi, "init", idx, node.input[1], 1)
                    self.consume(xi, idx, x)
                sid = self.new_space(w.shape[0], idx)
                self.edit(ChanInfo(1, w.ndim, [Seg(sid, w.shape[0])]), "init", idx, node.input[1], 0)
                if len(node.input) > 2 and node.input[2]:
                    self.edit(ChanInfo(1, 1, [Seg(sid, w.shape[0])]), "init", idx, node.input[2], 0)
                self.info[out] = ChanInfo(1, w.ndim, [Seg(sid, w.shape[0])])
                return
            # Depthwise (one filter per input channel): channels pass through, filters are sliced.
            if xi is None:
                return
            if w.shape[1] == 1 and w.shape[0] == group and xi.width == group and xi.axis == 1 and \
                    self._single_seg_repeat1(xi):
                self.edit(xi, "init", idx, node.input[1], 0)
                if len(node.input) > 2 and node.input[2]:
                    self.edit(xi, "init", idx, node.input[2], 0)
                self.edit(xi, "group", idx, "", 0)
                self.info[out] = xi
                return
            raise _Unsupported(f"is a grouped convolution (group {group}) that is not depthwise")
        if op == "ConvTranspose":
            if attr(node, "group", 1) != 1:
                if xi is not None:
                    raise _Unsupported("is a grouped transposed convolution")
                return
            if xi is not None:
                if xi.axis != 1 or not self._single_seg_repeat1(xi):
                    raise _Unsupported("reads a tensor whose channel axis is not its input channels")
                self.edit(xi, "init", idx, node.input[1], 0)
                self.consume(xi, idx, x)
            sid = self.new_space(w.shape[1], idx)
            self.edit(ChanInfo(1, w.ndim, [Seg(sid, w.shape[1])]), "init", idx, node.input[1], 1)
            if len(node.input) > 2 and node.input[2]:
                self.edit(ChanInfo(1, 1, [Seg(sid, w.shape[1])]), "init", idx, node.input[2], 0)
            self.info[out] = ChanInfo(1, w.ndim, [Seg(sid, w.shape[1])])
            return
        if op == "Gemm":
            trans_a, trans_b = attr(node, "transA", 0), attr(node, "transB", 0)
            if xi is not None:
                if trans_a or xi.axis != 1 or xi.rank != 2:
                    raise _Unsupported("reads its input transposed")
                self.edit(xi, "init", idx, node.input[1], 1 if trans_b else 0)
                self.consume(xi, idx, x)
            n_out = w.shape[0] if trans_b else w.shape[1]
            sid = self.new_space(n_out, idx)
            self.edit(ChanInfo(1, 2, [Seg(sid, n_out)]), "init", idx, node.input[1], 0 if trans_b else 1)
            if len(node.input) > 2 and node.input[2]:
                c = self.const(node.input[2])
                if c is None:
                    self.block(ChanInfo(1, 2, [Seg(sid, n_out)]), f"Gemm node {node_label(node, idx)!r} has a computed bias")
                elif c.ndim >= 1 and c.shape[-1] == n_out:
                    self.edit(ChanInfo(c.ndim - 1, c.ndim, [Seg(sid, n_out)]), "init", idx, node.input[2], c.ndim - 1)
            self.info[out] = ChanInfo(1, 2, [Seg(sid, n_out)])
            return
        # MatMul with a constant 2-D right-hand side: a Linear layer without bias.
        if w.ndim != 2:
            if xi is not None:
                raise _Unsupported("multiplies by a weight that is not 2-D")
            return
        if xi is not None:
            if xi.axis != xi.rank - 1:
                raise _Unsupported("contracts an axis other than the channels")
            self.edit(xi, "init", idx, node.input[1], 0)
            self.consume(xi, idx, x)
        sid = self.new_space(w.shape[1], idx)
        self.edit(ChanInfo(1, 2, [Seg(sid, w.shape[1])]), "init", idx, node.input[1], 1)
        rank = xi.rank if xi is not None else len(self.shape(x) or [0, 0])
        self.info[out] = ChanInfo(rank - 1, rank, [Seg(sid, w.shape[1])])

    def _elementwise(self, idx: int, node, traced: dict[str, ChanInfo]) -> None:
        out_shape = self.shape(node.output[0])
        ranks = [len(self.shape(t) or []) for t in node.input if t]
        rank = len(out_shape) if out_shape is not None else max(i.rank for i in traced.values())
        if any(r > rank for r in ranks):
            raise _Unsupported("has inputs of unknown rank")
        aligned = []
        for t in node.input:
            if t in traced:
                i = traced[t]
                aligned.append(ChanInfo(i.axis + rank - i.rank, rank, i.segs))
        first = aligned[0]
        for other in aligned[1:]:
            same = other.axis == first.axis and len(other.segs) == len(first.segs) and all(
                a.size == b.size and a.repeat == b.repeat for a, b in zip(first.segs, other.segs))
            if not same:
                raise _Unsupported("combines tensors whose channels do not line up")
            for a, b in zip(first.segs, other.segs):
                self.union(a.space, b.space, f"{node.op_type} node {node_label(node, idx)!r}")
        for slot, t in enumerate(node.input):
            if not t or t in traced:
                continue
            shape = self.shape(t)
            if shape is None:
                raise _Unsupported(f"has input {t!r} of unknown shape")
            ax = first.axis - (rank - len(shape))
            if ax < 0 or shape[ax] == 1:
                continue  # broadcast along the channels: unaffected by pruning
            if t in self.inits and shape[ax] == first.width:
                self.edit(ChanInfo(ax, len(shape), first.segs), "init", idx, t, ax)
                continue
            raise _Unsupported(f"combines the channels with {t!r}, which the pruner cannot slice")
        self.info[node.output[0]] = first

    def _concat(self, idx: int, node, traced: dict[str, ChanInfo]) -> None:
        any_info = next(iter(traced.values()))
        axis = attr(node, "axis", 1)
        axis = axis + any_info.rank if axis < 0 else axis
        if axis != any_info.axis or any(i.axis != axis for i in traced.values()):
            # Concatenated along another axis: every part keeps the same channels, so they are coupled.
            if len(traced) != len([t for t in node.input if t]):
                raise _Unsupported("concatenates traced and untraced tensors along a non-channel axis")
            infos = list(traced.values())
            for other in infos[1:]:
                if other.axis != any_info.axis or len(other.segs) != len(any_info.segs):
                    raise _Unsupported("concatenates tensors whose channels do not line up")
                for a, b in zip(any_info.segs, other.segs):
                    self.union(a.space, b.space, f"Concat node {node_label(node, idx)!r}")
            self.info[node.output[0]] = any_info
            return
        segs: list[Seg] = []
        for t in node.input:
            if t in traced:
                segs += traced[t].segs
            else:
                shape = self.shape(t)
                if not shape or not isinstance(shape[axis], int) or shape[axis] <= 0:
                    raise _Unsupported(f"concatenates {t!r}, whose channel count is unknown")
                segs.append(Seg(self.new_space(shape[axis], fixed=True), shape[axis]))
        self.info[node.output[0]] = ChanInfo(axis, any_info.rank, segs)

    def _reshape(self, idx: int, node, traced: dict[str, ChanInfo]) -> None:
        xi = traced.get(node.input[0])
        target = self.const(node.input[1])
        in_shape, out_shape = self.shape(node.input[0]), self.shape(node.output[0])
        if target is None:
            raise _Unsupported("reshapes to a computed shape")
        if in_shape is None or out_shape is None or len(out_shape) != 2 or xi.axis != 1:
            raise _Unsupported("reshapes in a way the pruner cannot follow")
        tail = in_shape[2:]
        if not all(isinstance(d, int) and d > 0 for d in tail):
            raise _Unsupported("reshapes a tensor of unknown spatial size")
        rep = int(np.prod(tail)) if tail else 1
        if out_shape[1] != xi.width * rep:
            raise _Unsupported("reshapes the channels into another layout")
        info = ChanInfo(1, 2, [Seg(s.space, s.size, s.repeat * rep) for s in xi.segs])
        if int(np.asarray(target).ravel()[1]) not in (-1, 0):  # an explicit feature count must follow
            self.edit(info, "reshape", idx, node.input[1], 1)
        self.info[node.output[0]] = info

    def _squeeze(self, idx: int, node, traced: dict[str, ChanInfo]) -> None:
        xi, op = traced.get(node.input[0]), node.op_type
        axes = attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            c = self.const(node.input[1])
            axes = None if c is None else [int(a) for a in np.asarray(c).ravel()]
        if axes is None or not self._single_seg_repeat1(xi):
            raise _Unsupported("has axes the pruner cannot read")
        if op == "Squeeze":
            axes = sorted(a % xi.rank for a in axes)
            if xi.axis in axes:
                raise _Unsupported("squeezes the channel axis")
            self.info[node.output[0]] = ChanInfo(xi.axis - sum(a < xi.axis for a in axes), xi.rank - len(axes), xi.segs)
        else:
            rank = xi.rank + len(axes)
            axes = sorted(a % rank for a in axes)
            kept = [i for i in range(rank) if i not in axes]
            self.info[node.output[0]] = ChanInfo(kept[xi.axis], rank, xi.segs)

    def _reduce(self, idx: int, node, traced: dict[str, ChanInfo]) -> None:
        xi = traced.get(node.input[0])
        axes = attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            c = self.const(node.input[1])
            if c is None:
                raise _Unsupported("reduces over computed axes")
            axes = [int(a) for a in np.asarray(c).ravel()]
        if not axes:
            raise _Unsupported("reduces over every axis")
        axes = sorted(a % xi.rank for a in axes)
        if xi.axis in axes or not self._single_seg_repeat1(xi):
            raise _Unsupported("reduces over the channel axis")
        if attr(node, "keepdims", 1):
            self.info[node.output[0]] = xi
        else:
            self.info[node.output[0]] = ChanInfo(xi.axis - sum(a < xi.axis for a in axes), xi.rank - len(axes), xi.segs)

    # -- results -------------------------------------------------------------------------------------
    def groups(self) -> list[Group]:
        roots: dict[int, list[int]] = {}
        for s in range(len(self.spaces)):
            roots.setdefault(self.find(s), []).append(s)
        out = []
        for root, members in roots.items():
            sp = self.spaces[root]
            if not sp.sources:
                continue
            out.append(Group(root, sp.size, sorted(set(sp.sources)), list(dict.fromkeys(sp.blocks)), sp.edits,
                             list(dict.fromkeys(sp.consumers)), members))
        out.sort(key=lambda g: min(g.sources))
        return out


class _Unsupported(Exception):
    pass


# Op type -> how its output's channels follow its input's (ChannelGraph._visit dispatches on it). An op
# missing here blocks the channels that reach it.
HANDLERS = {
    **dict.fromkeys(UNARY, ChannelGraph._unary),
    **dict.fromkeys(POOL, ChannelGraph._pool),
    "BatchNormalization": ChannelGraph._normalization,
    "InstanceNormalization": ChannelGraph._normalization,
    **dict.fromkeys(ELEMENTWISE, ChannelGraph._elementwise),
    "Concat": ChannelGraph._concat,
    "Flatten": ChannelGraph._flatten,
    "Reshape": ChannelGraph._reshape,
    "Squeeze": ChannelGraph._squeeze,
    "Unsqueeze": ChannelGraph._squeeze,
    "Transpose": ChannelGraph._transpose,
    **dict.fromkeys(REDUCE, ChannelGraph._reduce),
    **dict.fromkeys(("Softmax", "LogSoftmax", "Hardmax"), ChannelGraph._softmax),
    "Pad": ChannelGraph._pad,
    "Resize": ChannelGraph._resize,
    "Upsample": ChannelGraph._resize,
    "Slice": ChannelGraph._slice,
    "Shape": ChannelGraph._shape_of,
}


def _inferred_shapes(model) -> dict[str, list]:
    """Tensor name -> shape (ints; dynamic dims as strings/None) from ONNX shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:
        inferred = model
    shapes = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    return shapes


def prepare(model):
    """A copy of the model with Constant nodes folded into initializers (so weights look alike)."""
    m = copy_model(model)
    g = m.graph
    outputs = {o.name for o in g.output}
    keep = []
    for n in g.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.output[0] not in outputs:
            value = None
            for a in n.attribute:
                if a.name == "value":
                    value = numpy_helper.to_array(a.t)
                elif a.name in ("value_float", "value_int"):
                    value = np.array(a.f if a.name == "value_float" else a.i,
                                     np.float32 if a.name == "value_float" else np.int64)
                elif a.name in ("value_floats", "value_ints"):
                    value = np.array(list(a.floats) if a.name == "value_floats" else list(a.ints),
                                     np.float32 if a.name == "value_floats" else np.int64)
            if value is not None:
                g.initializer.append(numpy_helper.from_array(value, n.output[0]))
                continue
        keep.append(n)
    if len(keep) != len(g.node):
        del g.node[:]
        g.node.extend(keep)
    return m


def keep_indices(segs: list[Seg], keep: dict[int, np.ndarray], find) -> np.ndarray:
    """The index list along an axis laid out as segs, given the kept channels of each group root."""
    parts, offset = [], 0
    for s in segs:
        kept = keep.get(find(s.space))
        kept = np.arange(s.size) if kept is None else kept
        idx = (kept[:, None] * s.repeat + np.arange(s.repeat)[None, :]).ravel() + offset
        parts.append(idx)
        offset += s.size * s.repeat
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def apply_edits(model, cg: ChannelGraph, keep: dict[int, np.ndarray]):
    """A new model with the kept channels of each group (root -> sorted kept indices) applied.

    Initializers shared by several nodes are copied first, so one node's slice never changes another's.
    """
    m = copy_model(model)
    g = m.graph
    edits = {}
    for root in keep:
        for e in cg.spaces[root].edits:
            edits[id(e)] = e
    edits = list(edits.values())
    arrays = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    uses: dict[str, int] = {}
    for n in g.node:
        for t in n.input:
            if t in arrays:
                uses[t] = uses.get(t, 0) + 1
    # Per (node, initializer) the slices to take, in any order (they are on different axes).
    renamed: dict[tuple[int, str], str] = {}
    new_arrays: dict[str, np.ndarray] = {}
    for e in edits:
        if e.kind == "group":
            continue
        key = (e.node, e.name)
        if key not in renamed:
            name = e.name
            if uses.get(name, 0) > 1 or any(out.name == name for out in g.output):
                name = f"{e.name}__pruned_{e.node}"
                node = g.node[e.node]
                for slot, t in enumerate(node.input):
                    if t == e.name:
                        node.input[slot] = name
            renamed[key] = name
            new_arrays[name] = arrays[e.name]
    for e in edits:
        idx = keep_indices(e.segs, keep, cg.find)
        if e.kind == "init":
            name = renamed[(e.node, e.name)]
            new_arrays[name] = np.take(new_arrays[name], idx, axis=e.axis)
        elif e.kind == "reshape":
            name = renamed[(e.node, e.name)]
            arr = new_arrays[name].copy()
            arr.flat[e.axis] = len(idx)
            new_arrays[name] = arr
        elif e.kind == "group":
            node = g.node[e.node]
            for a in node.attribute:
                if a.name == "group":
                    a.i = len(idx)
    originals = {i.name for i in g.initializer}
    for name, arr in new_arrays.items():
        tensor = numpy_helper.from_array(np.ascontiguousarray(arr), name)
        if name in originals:
            for i, init in enumerate(g.initializer):
                if init.name == name:
                    g.initializer[i].CopyFrom(tensor)
                    break
        else:
            g.initializer.append(tensor)
    # Originals that lost every user to a renamed copy are dropped.
    used = {t for n in g.node for t in n.input} | {o.name for o in g.output} | {i.name for i in g.input}
    orphaned = {e.name for e in edits if renamed.get((e.node, e.name), e.name) != e.name} - used
    kept_inits = [i for i in g.initializer if i.name not in orphaned]
    if len(kept_inits) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(kept_inits)
    # Intermediate shapes changed: drop stale value_info (inference fills it again where needed).
    del g.value_info[:]
    return m
