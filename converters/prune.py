"""Pruning on the ONNX graph itself (no PyTorch): whole output channels, or 2:4 semi-structured sparsity.

``prune(model, "channels:0.3", calib_feeds)`` removes 30 % of the output channels of every Conv/Gemm/
MatMul group it can rewire safely (``converters.prune_graph`` finds the groups: BatchNorm, depthwise
convs, the next layer's input channels, residual Adds and Concats are followed DepGraph-style), chosen
by importance:

  l1 / l2     the norm of each output channel's filter, scaled by the BatchNorm that follows it
              (a filter BatchNorm shrinks to nothing is unimportant however large its weights)
  activation  each channel's energy as the next layers see it on calibration data:
              sum over consumers of E[x_c^2] * ||W_next[:, c]||^2

then re-fits every layer that reads pruned channels by least squares on calibration activations
(``converters.prune_lsq``) so its outputs match the original model's, without retraining.

``prune(model, "2:4", ...)`` zeroes 2 of every 4 consecutive input weights of each Conv/Gemm/MatMul
whose input dimension is a multiple of 4 (by magnitude, or by |w| * input norm with
importance="activation"), re-fits the surviving weights per output row when calibration data is given,
and records ``info["sparsity"] = "2:4"`` so the TensorRT build enables sparse weights. Dense CPU kernels
do not run faster on 2:4 weights; the speed-up needs sparse tensor cores (Ampere and later, Orin).

Specs may be combined with "+": ``channels:0.3+2:4``.

Every result is checked (onnx.checker with strict shape inference, and a real ONNX Runtime run against
the original's output shapes). A group whose rewiring fails the check is left alone and reported, and so
is a 2:4 layer whose new weights fail it; the returned graph is never broken. Layers feeding graph outputs
are never pruned in their output channels.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Iterable, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from edgemm.converters import prune_lsq
from edgemm.converters.graphs import attr, copy_model, cpu_session, first_line, with_outputs
from edgemm.converters.prune_graph import ChannelGraph, Group, apply_edits, node_label, prepare
from edgemm.errors import EdgemmError
from edgemm.feeds import onnx_input_metadata, synthesize
from edgemm.modelinfo import count_parameters, estimate_macs
from edgemm.threads import limit_blas_threads

log = logging.getLogger(__name__)

IMPORTANCE = ("l1", "l2", "activation")
SPEC_HELP = "channels:RATIO (0 < RATIO < 1, the fraction of channels removed per layer group), 2:4, or both as channels:RATIO+2:4"
ROWS_PER_LAYER = 24000  # output positions sampled per layer for reconstruction (bounded cost and memory)
# Reconstruction targets (the original model's sampled outputs) held at once: layers are fitted in groups
# of waves whose targets fit; each further group costs one more pass of the original model.
TARGET_MEMORY_MB = 256


# --------------------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------------------


def parse_spec(spec: str) -> list[tuple[str, float | None]]:
    """"channels:0.3" -> [("channels", 0.3)]; "2:4" -> [("2:4", None)]; "channels:0.3+2:4" -> both."""
    steps: list[tuple[str, float | None]] = []
    for part in str(spec).replace(" ", "").split("+"):
        m = re.fullmatch(r"channels:([0-9]*\.?[0-9]+)(%?)", part)
        if m:
            ratio = float(m.group(1)) / (100 if m.group(2) else 1)
            if not 0 < ratio < 1:
                raise EdgemmError(f"Prune spec: {spec} | Ratio {m.group(1)}{m.group(2)} is out of range; expected {SPEC_HELP}.")
            steps.append(("channels", ratio))
        elif part == "2:4":
            steps.append(("2:4", None))
        else:
            raise EdgemmError(f"Prune spec: {spec} | Unknown; expected {SPEC_HELP}.")
    kinds = [k for k, _ in steps]
    if len(set(kinds)) != len(kinds):
        raise EdgemmError(f"Prune spec: {spec} | Names a method twice; expected {SPEC_HELP}.")
    steps.sort(key=lambda s: s[0] != "channels")  # channels first: 2:4 masks the final shapes
    return steps


# --------------------------------------------------------------------------------------------------
# Calibration feeds and running graphs
# --------------------------------------------------------------------------------------------------


def materialize_feeds(calib_feeds, model, max_samples: int = 256, batch: int = 32) -> list[dict[str, np.ndarray]]:
    """Calibration feeds as a list of batched feed dicts (at most max_samples samples in all).

    Accepts a list, any iterable or generator of feed dicts, a callable returning one, or an ONNX
    Runtime CalibrationDataReader (``get_next()``). Feeds of batch 1 are stacked into batches when the
    model's batch dimension is dynamic (faster; results are the same).
    """
    if calib_feeds is None:
        return []
    if callable(calib_feeds) and not hasattr(calib_feeds, "get_next"):
        calib_feeds = calib_feeds()
    if hasattr(calib_feeds, "get_next"):
        reader = calib_feeds
        if hasattr(reader, "rewind"):
            reader.rewind()
        calib_feeds = iter(reader.get_next, None)
    inits = {i.name for i in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    dynamic = all(vi.type.tensor_type.shape.dim and not vi.type.tensor_type.shape.dim[0].dim_value for vi in inputs)
    names = {vi.name for vi in inputs}
    out: list[dict[str, np.ndarray]] = []
    pending: list[dict[str, np.ndarray]] = []
    count = 0

    def flush():
        if pending:
            out.append({k: np.concatenate([p[k] for p in pending]) for k in pending[0]})
            pending.clear()

    for feed in calib_feeds:
        if not isinstance(feed, Mapping):
            raise EdgemmError(f"Calibration data | Got a {type(feed).__name__}; expected feed dicts keyed by input name.")
        missing = names - set(feed)
        if missing:
            raise EdgemmError(f"Calibration data | A feed has no tensor for input {sorted(missing)[0]}; "
                              f"expected keys {', '.join(sorted(names))}.")
        feed = {k: np.asarray(v) for k, v in feed.items() if k in names}
        n = next(iter(feed.values())).shape[0] if feed and next(iter(feed.values())).ndim else 1
        if dynamic and pending and (sum(next(iter(p.values())).shape[0] for p in pending) + n > batch or any(
                p[k].shape[1:] != feed[k].shape[1:] for p in pending[:1] for k in feed)):
            flush()
        if dynamic:
            pending.append(feed)
        else:
            out.append(feed)
        count += n
        if count >= max_samples:
            break
    flush()
    return out


class _VerifyError(Exception):
    pass


class Verifier:
    """Checks candidate graphs against the reference (original) graph: onnx.checker with strict shape
    inference, then an ONNX Runtime run on one feed giving outputs of the reference's shapes, all finite.
    The reference runs once, however many candidates are checked."""

    def __init__(self, reference, feed: Mapping[str, np.ndarray] | None = None, threads: int | None = None):
        self.feed = dict(feed) if feed is not None else synthesize(onnx_input_metadata(reference))
        self.threads = threads
        sess = cpu_session(reference, threads, what="Pruning check: the original graph")
        try:
            ref = sess.run(None, self.feed)
        except Exception as exc:  # ORT's own error types
            raise EdgemmError(f"Pruning check | The original graph fails in onnxruntime on the check input "
                              f"({first_line(exc)}); expected a graph onnxruntime can run.") from exc
        self.outputs = [(o.name, r.shape) for o, r in zip(reference.graph.output, ref)]

    def check(self, model) -> None:
        """Raise _VerifyError (with the reason) unless model passes."""
        try:
            onnx.checker.check_model(model)
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        except Exception as exc:
            raise _VerifyError(f"onnx checker: {first_line(exc)}") from exc
        try:
            sess = cpu_session(model, self.threads)
        except EdgemmError as exc:
            raise _VerifyError(f"onnxruntime cannot load it: {first_line(exc.__cause__ or exc)}") from exc
        try:
            got = sess.run(None, self.feed)
        except Exception as exc:
            raise _VerifyError(f"onnxruntime run: {first_line(exc)}") from exc
        for (name, shape), g_ in zip(self.outputs, got):
            if shape != g_.shape:
                raise _VerifyError(f"output {name} has shape {g_.shape}, expected {shape}")
            if np.issubdtype(g_.dtype, np.floating) and not np.all(np.isfinite(g_)):
                raise _VerifyError(f"output {name} has non-finite values")


def verify(model, reference, feed: Mapping[str, np.ndarray] | None = None, threads: int | None = None) -> None:
    """Raise _VerifyError unless the model passes the checker, strict shape inference, and runs in ONNX
    Runtime with outputs of the reference model's shapes and finite values (see Verifier)."""
    Verifier(reference, feed, threads).check(model)


# --------------------------------------------------------------------------------------------------
# Importance
# --------------------------------------------------------------------------------------------------


def _arrays(model) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _out_channel_rows(node, arrays) -> np.ndarray:
    """The weights of each output channel of a layer as rows [C_out, ...]."""
    w = arrays[node.input[1]]
    if node.op_type == "Conv":
        return w.reshape(w.shape[0], -1)
    if node.op_type == "ConvTranspose":
        return np.moveaxis(w, 1, 0).reshape(w.shape[1], -1)
    if node.op_type == "Gemm":
        return w if attr(node, "transB", 0) else w.T
    return w.T  # MatMul [K, M]


def _in_channel_cols(node, arrays) -> np.ndarray:
    """The weights reading each input feature of a layer as rows [F_in, ...]."""
    w = arrays[node.input[1]]
    if node.op_type == "Conv":
        return np.moveaxis(w, 1, 0).reshape(w.shape[1], -1)
    if node.op_type == "ConvTranspose":
        return w.reshape(w.shape[0], -1)
    if node.op_type == "Gemm":
        return w.T if attr(node, "transB", 0) else w
    return w  # MatMul [K, M]


def _bn_scale(cg: ChannelGraph, node_idx: int, arrays) -> np.ndarray | None:
    """|gamma| / sqrt(var + eps) of the BatchNormalization that alone reads this layer's output."""
    out = cg.graph.node[node_idx].output[0]
    users = cg.consumers.get(out, [])
    if len(users) != 1 or out in cg.outputs:
        return None
    bn = cg.graph.node[users[0]]
    if bn.op_type != "BatchNormalization":
        return None
    eps = attr(bn, "epsilon", 1e-5)
    return np.abs(arrays[bn.input[1]]) / np.sqrt(arrays[bn.input[4]] + eps)


def weight_importance(cg: ChannelGraph, group: Group, arrays, p: int) -> np.ndarray:
    score = np.zeros(group.size)
    for s in group.sources:
        node = cg.graph.node[s]
        rows = _out_channel_rows(node, arrays).astype(np.float64)
        norm = np.abs(rows).sum(axis=1) if p == 1 else np.sqrt((rows ** 2).sum(axis=1))
        scale = _bn_scale(cg, s, arrays)
        if scale is not None:
            norm = norm * scale
        score += norm / (norm.mean() or 1.0)  # sources of a coupled group count alike
    return score


def activation_importance(cg: ChannelGraph, groups: list[Group], arrays, feeds, threads) -> dict[int, np.ndarray | str]:
    """Per group: sum over its consumer layers of E[x_c^2] * ||W_next[:, c]||^2, each consumer normalised.
    A group whose consumer reads another number of channels than the traced tensor holds (a reshape the
    channel trace did not see through) gets the reason it cannot be followed instead of a score."""
    tensors = sorted({t for g in groups for _, t in g.consumers})
    sums: dict[str, np.ndarray] = {}
    count: dict[str, int] = {}
    sess = cpu_session(with_outputs(cg.model, tensors), threads, what="Pruning: activation importance")
    for feed in feeds:
        values = dict(zip(tensors, sess.run(tensors, dict(feed))))
        for t, v in values.items():
            info = cg.info[t]
            v = np.moveaxis(v.astype(np.float64), info.axis, -1).reshape(-1, v.shape[info.axis])
            sums[t] = sums.get(t, 0) + (v ** 2).sum(axis=0)
            count[t] = count.get(t, 0) + v.shape[0]
    out = {}
    for g in groups:
        score = np.zeros(g.size)
        members = set(g.spaces)
        for node_idx, t in g.consumers:
            node = cg.graph.node[node_idx]
            energy = sums[t] / max(count[t], 1)
            col = (_in_channel_cols(node, arrays).astype(np.float64) ** 2).sum(axis=1)
            if energy.shape != col.shape:
                out[g.root] = (f"{node.name or node.op_type} reads {col.size} channels where {t} holds "
                               f"{energy.size}: not followed")
                break
            contrib = energy * col
            offset = 0
            part = np.zeros(g.size)
            for seg in cg.info[t].segs:
                width = seg.size * seg.repeat
                if cg.find(seg.space) == g.root and seg.space in members:
                    part += contrib[offset:offset + width].reshape(seg.size, seg.repeat).sum(axis=1)
                offset += width
            score += part / (part.mean() or 1.0)
        else:
            out[g.root] = np.sqrt(score)
    return out


def _n_keep(size: int, ratio: float, round_to: int | None) -> int:
    keep = max(1, int(round(size * (1 - ratio))))
    if round_to and round_to > 1 and size % round_to == 0 and size >= 2 * round_to:
        keep = max(round_to, int(round(keep / round_to)) * round_to)
    return min(keep, size)


# --------------------------------------------------------------------------------------------------
# Reconstruction (shared by channel pruning and 2:4)
# --------------------------------------------------------------------------------------------------


def _ancestors(graph) -> list[int]:
    """Bitmask of upstream nodes for every node (index order is topological in ONNX)."""
    producer = {t: i for i, n in enumerate(graph.node) for t in n.output}
    anc = []
    for n in graph.node:
        mask = 0
        for t in n.input:
            p = producer.get(t)
            if p is not None:
                mask |= (1 << p) | anc[p]
        anc.append(mask)
    return anc


def _waves(graph, layers: list[int]) -> list[list[int]]:
    """Split layers (topological order) into waves whose inputs do not depend on a layer of the same wave."""
    anc = _ancestors(graph)
    waves: list[list[int]] = []
    cur: list[int] = []
    for li in layers:
        if any(anc[li] >> w & 1 for w in cur):
            waves.append(cur)
            cur = []
        cur.append(li)
    if cur:
        waves.append(cur)
    return waves


def _picks(positions: int, n: int, max_rows: int, seed: int) -> np.ndarray | None:
    """Output positions sampled per sample ([n, max_rows]), or None to use them all."""
    if positions <= max_rows:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(np.stack([rng.choice(positions, max_rows, replace=False) for _ in range(n)]), axis=1)


def _output_rows(node, y: np.ndarray) -> np.ndarray:
    """A layer's output as rows [n, P, M] (Conv: one row per output position)."""
    if node.op_type == "Conv":
        return y.reshape(y.shape[0], y.shape[1], -1).transpose(0, 2, 1)
    return y.reshape(y.shape[0], -1, y.shape[-1])


def _input_rows(node, x: np.ndarray, w_shape, out_spatial, picks: np.ndarray | None = None) -> np.ndarray:
    """A layer's input as rows [n, P, K] matching _output_rows (im2col for a Conv), only the picked
    positions ([n, R]) when given."""
    if node.op_type == "Conv":
        attrs = {a: attr(node, a) for a in ("strides", "dilations", "pads", "auto_pad")}
        attrs = {k: v for k, v in attrs.items() if v is not None}
        return prune_lsq.im2col(x, attrs, list(w_shape[2:]), list(out_spatial), picks)
    return _take_rows(x.reshape(x.shape[0], -1, x.shape[-1]), picks)


def _take_rows(rows: np.ndarray, picks: np.ndarray | None) -> np.ndarray:
    return rows if picks is None else np.take_along_axis(rows, picks[:, :, None], axis=1)


def _layer_matrix(node, arrays) -> tuple[np.ndarray, bool]:
    """The layer as W0 [K(+1), M] for rows @ W0 (+ bias row), and whether it has that bias row."""
    w = arrays[node.input[1]].astype(np.float64)
    op = node.op_type
    if op == "Conv":
        W = w.reshape(w.shape[0], -1).T
        b = arrays[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0])
        return np.vstack([W, b[None]]), True
    if op == "Gemm":
        alpha, beta = attr(node, "alpha", 1.0), attr(node, "beta", 1.0)
        W = (w.T if attr(node, "transB", 0) else w) * alpha
        m = W.shape[1]
        c = np.zeros(m)
        if len(node.input) > 2 and node.input[2]:
            c = np.broadcast_to(arrays[node.input[2]].astype(np.float64).reshape(-1), (m,)) * beta
        return np.vstack([W, c[None]]), True
    return w, False  # MatMul


def _write_layer(model, node_idx: int, W: np.ndarray, bias: bool) -> None:
    """Write a fitted [K(+1), M] matrix back into the layer's initializers (a bias is added if missing)."""
    g = model.graph
    node = g.node[node_idx]
    inits = {i.name: k for k, i in enumerate(g.initializer)}
    old = numpy_helper.to_array(g.initializer[inits[node.input[1]]])
    Wm, b = (W[:-1], W[-1]) if bias else (W, None)
    op = node.op_type
    if op == "Conv":
        new_w = Wm.T.reshape(old.shape)
    elif op == "Gemm":
        alpha = attr(node, "alpha", 1.0)
        new_w = (Wm.T if attr(node, "transB", 0) else Wm) / alpha
    else:
        new_w = Wm
    g.initializer[inits[node.input[1]]].CopyFrom(numpy_helper.from_array(new_w.astype(old.dtype), node.input[1]))
    if b is None:
        return
    if op == "Gemm":
        b = b / attr(node, "beta", 1.0)
    if len(node.input) > 2 and node.input[2]:
        name = node.input[2]
        g.initializer[inits[name]].CopyFrom(numpy_helper.from_array(b.astype(old.dtype), name))
    elif np.any(b != 0):
        name = f"{node.output[0]}__bias"
        g.initializer.append(numpy_helper.from_array(b.astype(old.dtype), name))
        while len(node.input) < 2:
            node.input.append("")
        if len(node.input) == 2:
            node.input.append(name)
        else:
            node.input[2] = name


def reconstruct(original, current, layers: list[int], out_index: Mapping[int, np.ndarray], feeds,
                threads: int | None = None, masks: Mapping[int, np.ndarray] | None = None,
                mask_fn=None, refit: bool = True, progress=None) -> list[dict]:
    """Re-fit each layer (node index, same in both models) of `current` on calibration feeds, in waves.

    out_index[layer]: the original output channels the layer keeps (absent: all). masks[layer], or
    mask_fn(layer, stats, W0) -> mask, restricts each output column to a support (2:4). Returns one
    record per layer. `current` is modified in place.
    """
    results = []
    n_samples = sum(next(iter(f.values())).shape[0] for f in feeds) or 1
    max_rows = max(8, ROWS_PER_LAYER // n_samples)
    y_names = {li: original.graph.node[li].output[0] for li in layers}
    orig_sess = cpu_session(with_outputs(original, list(y_names.values())), threads,
                            what="Pruning: the original graph")

    def target_rows(li: int, b: int, y: np.ndarray):
        """The layer's sampled output rows for feed b (positions drawn per layer and feed, so the same
        positions are read from the pruned model's input later)."""
        node = original.graph.node[li]
        idx = out_index.get(li)
        if idx is not None:
            y = np.take(y, idx, axis=1 if node.op_type == "Conv" else y.ndim - 1)
        rows = _output_rows(node, y)
        picks = _picks(rows.shape[1], rows.shape[0], max_rows, seed=li * 100003 + b)
        return picks, _take_rows(rows, picks).astype(np.float32), y.shape[2:]

    # Targets of every layer at once can be large (a MobileNet: ~1 GB): the waves are fitted in groups
    # whose targets fit in TARGET_MEMORY_MB, the original model running once per group.
    waves = _waves(current.graph, layers)
    first = dict(zip(layers, orig_sess.run([y_names[li] for li in layers], dict(feeds[0]))))
    per_feed0 = {li: target_rows(li, 0, y)[1].nbytes for li, y in first.items()}
    size = {li: per_feed0[li] * n_samples / max(next(iter(feeds[0].values())).shape[0], 1) for li in layers}
    del first
    budget = TARGET_MEMORY_MB * 2**20
    groups: list[list[list[int]]] = []
    used = budget + 1
    for wave in waves:
        need = sum(size[li] for li in wave)
        if groups and used + need <= budget:
            groups[-1].append(wave)
            used += need
        else:
            groups.append([wave])
            used = need
    for group in groups:
        names = [li for wave in group for li in wave]
        targets: dict[int, list[tuple[np.ndarray | None, np.ndarray, tuple]]] = {li: [] for li in names}
        for b, feed in enumerate(feeds):
            ys = orig_sess.run([y_names[li] for li in names], dict(feed))
            for li, y in zip(names, ys):
                targets[li].append(target_rows(li, b, y))
        for wave in group:
            results += _fit_wave(current, wave, targets, feeds, threads, masks, mask_fn, refit, progress)
    return results


def _fit_wave(current, wave: list[int], targets, feeds, threads, masks, mask_fn, refit, progress) -> list[dict]:
    """Re-fit the layers of one wave (their inputs do not depend on each other) from one pass of `current`."""
    results = []
    arrays = _arrays(current)
    x_names = [current.graph.node[li].input[0] for li in wave]
    cur_sess = cpu_session(with_outputs(current, x_names), threads, what="Pruning: the pruned graph")
    stats: dict[int, prune_lsq.LayerStats] = {}
    w0s: dict[int, np.ndarray] = {}
    has_bias: dict[int, bool] = {}
    for li in wave:
        W0, bias = _layer_matrix(current.graph.node[li], arrays)
        w0s[li], has_bias[li] = W0, bias
        stats[li] = prune_lsq.LayerStats(W0.shape[0] - (1 if bias else 0), W0.shape[1], bias)
    sample = 0
    for b, feed in enumerate(feeds):
        xs = cur_sess.run(x_names, dict(feed))
        for li, x in zip(wave, xs):
            node = current.graph.node[li]
            picks, yr, out_spatial = targets[li][b]
            rows = _input_rows(node, x, arrays[node.input[1]].shape, out_spatial, picks)
            stats[li].add_samples(rows, yr, sample)
        sample += xs[0].shape[0]
    for li in wave:
        targets.pop(li, None)
    for li in wave:
        node = current.graph.node[li]
        mask = None
        if masks is not None and li in masks:
            mask = masks[li]
        elif mask_fn is not None:
            mask = mask_fn(li, stats[li], w0s[li])
        if not refit:  # only the mask (2:4 without reconstruction); the fit is still reported
            W = w0s[li] if mask is None else w0s[li] * mask
            err = prune_lsq.fit_error(W, stats[li].total()) / max(prune_lsq._variance(stats[li].total()), 1e-30)
            rec = {"lambda": None, "rows": stats[li].rows, "error_sliced": round(err, 6),
                   "error_reconstructed": round(err, 6)}
        elif mask is not None:
            W, rec = prune_lsq.solve_masked(stats[li], w0s[li], mask)
        else:
            W, rec = prune_lsq.solve(stats[li], w0s[li])
        _write_layer(current, li, W, has_bias[li])
        results.append({"layer": node_label(node, li), "op": node.op_type, **rec})
        if progress:
            progress(results[-1])
    return results


# --------------------------------------------------------------------------------------------------
# Channel pruning
# --------------------------------------------------------------------------------------------------


def _refittable(node, arrays) -> bool:
    """Layers the least-squares re-fit handles: 1-D/2-D Conv (group 1), Gemm (A not transposed), MatMul."""
    w = arrays.get(node.input[1]) if len(node.input) > 1 else None
    if w is None:
        return False
    if node.op_type == "Conv":
        return attr(node, "group", 1) == 1 and w.ndim in (3, 4)
    if node.op_type == "Gemm":
        return not attr(node, "transA", 0)
    return node.op_type == "MatMul" and w.ndim == 2


def _shared_weights(model) -> set[int]:
    """Layers whose weight initializer is also read by another node: re-fitting one would change the other."""
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for t in set(n.input):
            uses[t] = uses.get(t, 0) + 1
    return {i for i, n in enumerate(model.graph.node) if len(n.input) > 1 and uses.get(n.input[1], 0) > 1}


def _count(model) -> dict[str, Any]:
    return {"parameters": count_parameters(model), "macs": estimate_macs(model)}


def _group_record(cg: ChannelGraph, g: Group, kept: int | None = None, reason: str | None = None) -> dict:
    rec = {"layers": [node_label(cg.graph.node[s], s) for s in g.sources], "channels": g.size,
           "coupled": len(g.sources) > 1}
    if kept is not None:
        rec["kept"] = kept
    if reason is not None:
        rec["reason"] = reason
    return rec


def prune_channels(model, ratio: float, feeds: list, importance: str = "l1", reconstruct_layers: bool = True,
                   round_to: int | None = 8, exclude: Iterable[str] = (), threads: int | None = None,
                   check_feed=None) -> tuple[Any, dict]:
    m = prepare(model)
    cg = ChannelGraph(m)
    groups = cg.groups()
    arrays = _arrays(m)
    exclude = set(exclude)
    skipped, candidates = [], []
    for g in groups:
        names = {cg.graph.node[s].name for s in g.sources}
        if g.blocks:
            extra = f" (and {len(g.blocks) - 1} more)" if len(g.blocks) > 1 else ""
            skipped.append(_group_record(cg, g, reason=g.blocks[0] + extra))
        elif names & exclude:
            skipped.append(_group_record(cg, g, reason="excluded by option"))
        else:
            candidates.append(g)
    if importance == "activation":
        if not feeds:
            raise EdgemmError("Prune importance: activation | Needs calibration data; expected --calib DIR "
                              "(or importance l1/l2).")
        scores = activation_importance(cg, candidates, arrays, feeds, threads)
    else:
        scores = {g.root: weight_importance(cg, g, arrays, 1 if importance == "l1" else 2) for g in candidates}
    keep: dict[int, np.ndarray] = {}
    for g in candidates:
        if isinstance(scores[g.root], str):
            skipped.append(_group_record(cg, g, reason=scores[g.root]))
            continue
        n = _n_keep(g.size, ratio, round_to)
        if n >= g.size:
            skipped.append(_group_record(cg, g, reason=f"{ratio:g} of {g.size} channels rounds to none"))
            continue
        order = np.argsort(-scores[g.root], kind="stable")
        keep[g.root] = np.sort(order[:n])
    # Rewire, then prove the graph sound; groups whose rewiring does not pass are left alone.
    feed = check_feed if check_feed is not None else (feeds[0] if feeds else None)
    verifier = Verifier(m, feed, threads)
    by_root = {g.root: g for g in candidates}
    pruned = apply_edits(m, cg, keep)
    try:
        verifier.check(pruned)
    except _VerifyError:
        # Add the groups one at a time, keeping each only if the graph still verifies with it.
        good: dict[int, np.ndarray] = {}
        for root in list(keep):
            try:
                verifier.check(apply_edits(m, cg, {**good, root: keep[root]}))
                good[root] = keep[root]
            except _VerifyError as exc:
                skipped.append(_group_record(cg, by_root[root], reason=f"rewired graph failed verification ({exc})"))
        keep = good
        pruned = apply_edits(m, cg, keep)
    pruned_groups = [g for g in candidates if g.root in keep]
    # Layers whose input channels changed are re-fitted; a layer keeps its own kept output channels.
    records = []
    if reconstruct_layers and feeds and keep:
        out_index = {}
        for g in pruned_groups:
            for s in g.sources:
                out_index[s] = keep[g.root]
        shared = _shared_weights(pruned)
        arrays_p = _arrays(pruned)
        layers = sorted({c for g in pruned_groups for c, _ in g.consumers
                         if c not in shared and _refittable(pruned.graph.node[c], arrays_p)})
        sliced = copy_model(pruned)
        records = reconstruct(m, pruned, layers, out_index, feeds, threads)
        try:
            verifier.check(pruned)
        except _VerifyError as exc:  # e.g. a numerically broken fit: keep the plainly sliced layers
            log.warning("reconstructed graph failed verification (%s); keeping the sliced layers", exc)
            pruned, records = sliced, [{"note": f"reconstruction discarded: {exc}"}]
    info = {
        "method": "channels", "ratio": ratio, "importance": importance, "round_to": round_to,
        "reconstruct": bool(reconstruct_layers and feeds and keep),
        "groups": [_group_record(cg, g, kept=len(keep[g.root])) for g in pruned_groups],
        "skipped": skipped,
        "reconstruction": records,
    }
    if reconstruct_layers and not feeds:
        info["notes"] = ["no calibration data: layers were sliced, not reconstructed"]
    return pruned, info


# --------------------------------------------------------------------------------------------------
# 2:4 semi-structured sparsity
# --------------------------------------------------------------------------------------------------


def sparse_layers(model, exclude: Iterable[str] = ()) -> tuple[list[int], list[dict]]:
    """Layers eligible for 2:4 (input dim a multiple of 4, constant weights) and why others are not."""
    arrays = _arrays(model)
    exclude = set(exclude)
    ok, skipped = [], []
    for i, n in enumerate(model.graph.node):
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2 or n.input[1] not in arrays:
            continue
        w = arrays[n.input[1]]
        label = node_label(n, i)
        if n.name in exclude:
            skipped.append({"layer": label, "reason": "excluded by option"})
            continue
        if n.op_type == "Conv" and attr(n, "group", 1) != 1:
            skipped.append({"layer": label, "reason": "grouped/depthwise convolution"})
            continue
        if n.op_type == "MatMul" and w.ndim != 2:
            continue
        k = _in_channel_cols(n, arrays).shape[0]
        if k % 4:
            skipped.append({"layer": label, "reason": f"{k} input channels is not a multiple of 4"})
            continue
        ok.append(i)
    return ok, skipped


def _mask_2_4(score_kxm: np.ndarray, spatial: int) -> np.ndarray:
    """Keep the 2 largest of every 4 consecutive input channels (per output, per kernel position).

    score is [K, M] with K = C_in * spatial in (channel, kernel position) order.
    """
    k, m = score_kxm.shape
    c = k // spatial
    s = score_kxm.reshape(c // 4, 4, spatial, m)
    order = np.argsort(-s, axis=1, kind="stable")
    mask = np.zeros_like(s, dtype=bool)
    np.put_along_axis(mask, order[:, :2], True, axis=1)
    return mask.reshape(k, m)


def _spatial(node, arrays) -> int:
    w = arrays[node.input[1]]
    return int(np.prod(w.shape[2:])) if node.op_type == "Conv" else 1


def _keep_verified_layers(original, candidate, layers: list[int], verifier: Verifier) -> tuple[Any, list[dict]]:
    """original with the new weights of each layer of candidate added one at a time, kept only while the
    graph verifies; returns (model, skipped records of the layers that failed)."""
    new_arrays = _arrays(candidate)
    current = copy_model(original)
    failed = []
    for li in layers:
        node = candidate.graph.node[li]
        W, bias = _layer_matrix(node, new_arrays)
        trial = copy_model(current)
        _write_layer(trial, li, W, bias)
        try:
            verifier.check(trial)
            current = trial
        except _VerifyError as exc:
            failed.append({"layer": node_label(node, li), "reason": f"2:4 weights failed verification ({exc})"})
    return current, failed


def prune_2_4(model, feeds: list, importance: str = "l1", reconstruct_layers: bool = True,
              exclude: Iterable[str] = (), threads: int | None = None, check_feed=None) -> tuple[Any, dict]:
    m = prepare(model)
    layers, skipped = sparse_layers(m, exclude)
    shared = _shared_weights(m)
    skipped += [{"layer": node_label(m.graph.node[i], i), "reason": "its weights are shared with another node"}
                for i in layers if i in shared]
    layers = [i for i in layers if i not in shared]
    current = copy_model(m)
    arrays = _arrays(m)
    records = []
    if importance == "activation" and not feeds:
        raise EdgemmError("Prune importance: activation | Needs calibration data; expected --calib DIR (or l1/l2).")
    plain = layers
    if feeds and (reconstruct_layers or importance == "activation"):
        fit = [li for li in layers if _refittable(m.graph.node[li], arrays)]
        plain = [li for li in layers if li not in fit]

        def mask_fn(li, stats, W0):
            node = m.graph.node[li]
            k = W0.shape[0] - (1 if stats.bias else 0)
            score = np.abs(W0[:k])
            if importance == "activation":  # Wanda: |w| * ||x|| of the input it multiplies
                score = score * np.sqrt(np.diag(stats.total().A)[:k])[:, None]
            mask = _mask_2_4(score, _spatial(node, arrays))
            if stats.bias:
                mask = np.vstack([mask, np.ones((1, mask.shape[1]), bool)])
            return mask

        records = reconstruct(m, current, fit, {}, feeds, threads, mask_fn=mask_fn, refit=reconstruct_layers)
    if plain:  # by magnitude alone (no data, or a layer shape the re-fit does not handle)
        arrays = _arrays(current)
        for li in plain:
            node = current.graph.node[li]
            W0, bias = _layer_matrix(node, arrays)
            k = W0.shape[0] - (1 if bias else 0)
            mask = _mask_2_4(np.abs(W0[:k]), _spatial(node, arrays))
            if bias:
                mask = np.vstack([mask, np.ones((1, mask.shape[1]), bool)])
            _write_layer(current, li, W0 * mask, bias)
    feed = check_feed if check_feed is not None else (feeds[0] if feeds else None)
    verifier = Verifier(m, feed, threads)
    try:
        verifier.check(current)
    except _VerifyError:
        # Like a channel group: a layer whose 2:4 weights break the graph (a numerically broken fit) keeps
        # its dense weights; the others are kept one at a time while the graph still verifies.
        current, failed = _keep_verified_layers(m, current, layers, verifier)
        skipped += failed
        bad = {f["layer"] for f in failed}
        layers = [li for li in layers if node_label(m.graph.node[li], li) not in bad]
        records = [r for r in records if r.get("layer") not in bad]
    new_arrays = _arrays(current)
    zeros = total = 0
    per_layer = []
    for li in layers:
        node = current.graph.node[li]
        w = new_arrays[node.input[1]]
        z = int((w == 0).sum())
        zeros, total = zeros + z, total + w.size
        per_layer.append({"layer": node_label(node, li), "weights": int(w.size), "zero_fraction": round(z / w.size, 4)})
    info = {"method": "2:4", "sparsity": "2:4", "importance": importance,
            "reconstruct": bool(reconstruct_layers and feeds), "layers": per_layer, "skipped": skipped,
            "zero_fraction": round(zeros / total, 4) if total else 0.0, "reconstruction": records,
            "note": "2:4 weights run at dense speed on CPUs; TensorRT uses sparse tensor cores "
                    "(Ampere and later, Jetson Orin) when the engine is built with sparse weights"}
    return current, info


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def prune(model, spec: str, calib_feeds=None, importance: str = "l1", reconstruct: bool = True,
          round_to: int | None = 8, exclude: Iterable[str] = (), max_samples: int = 256,
          threads: int | None = None) -> tuple[Any, dict]:
    """Prune an onnx.ModelProto by spec; returns (new model, info dict).

    spec:        "channels:RATIO", "2:4" or "channels:RATIO+2:4"
    calib_feeds: feed dicts (list, iterable, callable or CalibrationDataReader) for activation
                 importance, reconstruction and the final check; None: weight norms, no reconstruction
    importance:  l1 | l2 | activation
    reconstruct: re-fit the layers after each pruned group by least squares (needs calib_feeds)
    round_to:    kept channel counts are rounded to a multiple of this (for layers whose width already
                 is one): tensor cores and CPU vector kernels work in blocks of 8/16 channels
    exclude:     node names never pruned (their output channels, or their weights for 2:4)

    info: {"spec", "steps": [per-method info], "parameters"/"macs": {"before", "after"}, and for 2:4
    "sparsity": "2:4" (what the TensorRT build reads to enable sparse weights)}.
    """
    with limit_blas_threads(threads):
        return _prune(model, spec, calib_feeds, importance, reconstruct, round_to, exclude, max_samples, threads)


def _prune(model, spec, calib_feeds, importance, reconstruct, round_to, exclude, max_samples, threads):
    steps = parse_spec(spec)
    if importance not in IMPORTANCE:
        raise EdgemmError(f"Prune importance: {importance} | Unknown; expected one of {', '.join(IMPORTANCE)}.")
    feeds = materialize_feeds(calib_feeds, model, max_samples)
    before = _count(model)
    check = feeds[0] if feeds else None
    current = model
    step_infos = []
    for kind, ratio in steps:
        try:
            if kind == "channels":
                current, info = prune_channels(current, ratio, feeds, importance, reconstruct, round_to, exclude,
                                               threads, check)
            else:
                current, info = prune_2_4(current, feeds, importance, reconstruct, exclude, threads, check)
        except _VerifyError as exc:  # a check nothing above could route around: one line, naming the spec
            raise EdgemmError(f"Prune {spec} | The pruned graph failed verification ({exc}); expected a graph "
                              "that onnxruntime runs with the original's output shapes.") from exc
        step_infos.append(info)
    after = _count(current)
    info: dict[str, Any] = {
        "spec": spec, "importance": importance, "reconstruct": bool(reconstruct and feeds),
        "calibration_samples": sum(next(iter(f.values())).shape[0] for f in feeds) if feeds else 0,
        "parameters": {"before": before["parameters"], "after": after["parameters"]},
        "macs": {"before": before["macs"], "after": after["macs"]},
        "steps": step_infos,
    }
    sparse = next((s for s in step_infos if s["method"] == "2:4"), None)
    if sparse is not None:
        info["sparsity"] = "2:4"
        info["parameters"]["nonzero_after"] = _nonzero_params(current)
    chan = next((s for s in step_infos if s["method"] == "channels"), None)
    if chan is not None:
        info["groups_pruned"] = len(chan["groups"])
        info["groups_skipped"] = len(chan["skipped"])
    return current, info


def _nonzero_params(model) -> int:
    total = 0
    for name, arr in _arrays(model).items():
        if arr.size > 1 and arr.dtype != np.int64:
            total += int(np.count_nonzero(arr))
    return total
