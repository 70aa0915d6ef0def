"""Small ONNX graph helpers every converter step shares (one place each).

``save_model``     an onnx.ModelProto to a path inside a bundle, its folder made first (a manifest may
                   name graph files in subfolders, "enc/video.onnx").
``cpu_session``    an ONNX Runtime CPU session for a ModelProto; a model ORT cannot load is an EdgemmError.
``with_outputs``   a copy that also returns intermediate tensors, each declared with its own element type.
``dynamic_batch``  whether every input of a set of runners takes any batch (first dim not fixed).

Graph structure, for every pass that edits a graph (pruning, Q/DQ surgery, FP16, layer groups):
``producers`` / ``consumers`` (tensor -> node(s)), ``constant_names`` (initializers and Constant outputs), ``node_indices`` (the same by node position, for
passes that record edits by index), ``attr`` (a node attribute as a Python value), ``name_nodes``,
``topological_sort`` and ``drop_unused_initializers``.

Control flow (If / Loop / Scan): a body may read any value of the graph around it by name, without it being
one of the node's inputs (openWakeWord's hey_jarvis reads its second model's weights so). ``outer_reads`` names
those values, ``reads`` is a node's inputs with them, and ``topological_sort`` / ``drop_unused_initializers``
count them as read; ``rename_outer_read`` points a body's reads at another tensor. ``producers`` and
``consumers`` see only the explicit inputs (what a pass that rewires ``node.input`` can change).

onnx-graphsurgeon (what Polygraphy edits graphs with) was weighed: a pure-Python wheel (py2.py3-none-any,
so it installs here and on aarch64). It would not make this code shorter: every pass here starts from and
hands on the ModelProto that ONNX Runtime's quantizer and onnxconverter-common produce, and the pruner
records its edits by node position; gs.import_onnx/export_onnx around each pass would add two conversions
(and a toposort/cleanup contract) for what two dictionaries give, so these few helpers stay.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from edgemm.errors import EdgemmError


def save_model(model, path: str | Path) -> Path:
    """onnx.save into path, creating its folder (graph files may live in subfolders of a bundle)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def copy_model(model):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def cpu_session(model, threads: int | None = None, optimize: bool = True, what: str = "Model"):
    """An onnxruntime CPU InferenceSession for a ModelProto (or serialized bytes).

    optimize=False disables graph fusions, for when the tensors measured must be the graph's own (the FP16
    range scan). A model ORT refuses raises EdgemmError naming ``what``.
    """
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model if isinstance(model, (bytes, bytearray)) else model.SerializeToString()
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
        raise EdgemmError(f"{what} | onnxruntime cannot load it: {first_line(exc)}") from exc


FLOAT_TYPES = (1, 10)  # onnx.TensorProto.FLOAT, FLOAT16


def tensor_types(model) -> dict[str, int]:
    """Element type of every tensor the graph declares (inputs, outputs, value_info), shape inference where
    the graph does not say."""

    def declared(m) -> dict[str, int]:
        return {vi.name: vi.type.tensor_type.elem_type for vi in
                list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input)
                if vi.type.tensor_type.elem_type}

    types = declared(model)
    made = {o for n in model.graph.node for o in n.output if o}
    if made - set(types):
        try:
            types = declared(onnx.shape_inference.infer_shapes(model)) | types
        except Exception:  # noqa: BLE001 - fall back to what the graph declares
            pass
    return types


def with_outputs(model, names: Iterable[str] | None = None, float_only: bool = True):
    """A copy of the model that also returns intermediate tensors, each with its real element type.

    names: the tensors to expose; None: every tensor a node produces (only FLOAT/FLOAT16 ones with
    float_only). A named tensor whose type nothing declares is taken as FLOAT (what a float model makes).
    """
    m = copy_model(model)
    types = tensor_types(m)
    have = {o.name for o in m.graph.output}
    if names is None:
        wanted = [o for n in m.graph.node for o in n.output if o]
        if float_only:
            wanted = [o for o in wanted if types.get(o) in FLOAT_TYPES]
    else:
        wanted = list(names)
    for name in wanted:
        if name not in have:
            m.graph.output.append(helper.make_tensor_value_info(name, types.get(name, TensorProto.FLOAT), None))
            have.add(name)
    return m


def dynamic_batch(runners: Iterable) -> bool:
    """True when every input of every (active) runner has a first dim that is not fixed: samples can be
    stacked into one inference. A scalar input, or one with a fixed first dim, means batch 1."""
    for r in runners:
        metas: Mapping = r.input_metadata()
        for meta in metas.values():
            if not meta.shape or isinstance(meta.shape[0], int):
                return False
    return True


# --------------------------------------------------------------------------------------------------
# Graph structure
# --------------------------------------------------------------------------------------------------


def node_indices(graph) -> tuple[dict[str, int], dict[str, list[int]]]:
    """(producer, consumers) by node position: tensor -> index of the node that makes it, tensor -> indices
    of the nodes that read it (in graph order, a node once per input slot that reads it)."""
    producer: dict[str, int] = {}
    readers: dict[str, list[int]] = {}
    for i, n in enumerate(graph.node):
        for t in n.input:
            if t:
                readers.setdefault(t, []).append(i)
        for t in n.output:
            if t:
                producer[t] = i
    return producer, readers


def constant_names(model) -> set[str]:
    """Tensors whose value is in the graph: initializers and the outputs of Constant nodes."""
    names = {i.name for i in model.graph.initializer}
    return names | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}


def producers(model) -> dict[str, onnx.NodeProto]:
    """Tensor name -> the node that makes it."""
    nodes = model.graph.node
    return {t: nodes[i] for t, i in node_indices(model.graph)[0].items()}


def consumers(model) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it."""
    nodes = model.graph.node
    return {t: [nodes[i] for i in idx] for t, idx in node_indices(model.graph)[1].items()}


def attr(node, name: str, default=None):
    """A node attribute as a Python value (int, float, str, or a list of ints/floats); default when absent."""
    for a in node.attribute:
        if a.name == name:
            if a.type == a.INT:
                return a.i
            if a.type == a.INTS:
                return list(a.ints)
            if a.type == a.FLOAT:
                return a.f
            if a.type == a.STRING:
                return a.s.decode()
            if a.type == a.FLOATS:
                return list(a.floats)
    return default


def name_nodes(model) -> None:
    """Give every node a unique name (quantizer exclusions and reports refer to nodes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)


def subgraphs(node) -> list:
    """The graphs a node holds as attributes (If's branches, Loop's and Scan's bodies)."""
    out = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append(a.g)
        out.extend(a.graphs)
    return out


def _defined(graph) -> set[str]:
    return ({i.name for i in graph.input} | {i.name for i in graph.initializer}
            | {o for n in graph.node for o in n.output if o})


def outer_reads(node) -> set[str]:
    """Names a node's bodies read from the graph around the node (at any depth), not through its inputs."""
    found: set[str] = set()
    for g in subgraphs(node):
        local = _defined(g)
        for n in g.node:
            found.update(i for i in n.input if i and i not in local)
            found.update(r for r in outer_reads(n) if r not in local)
        found.update(o.name for o in g.output if o.name not in local)  # a body may return an outer value as is
    return found


def reads(node) -> list[str]:
    """Every tensor a node reads: its inputs, then the outer values its bodies read."""
    return [i for i in node.input if i] + sorted(outer_reads(node) - set(node.input))


def rename_outer_read(node, old: str, new: str) -> None:
    """A node's bodies read ``new`` where they read the outer value ``old`` (bodies that define ``old``
    themselves keep theirs)."""
    for g in subgraphs(node):
        if old in _defined(g):
            continue
        for n in g.node:
            for k, name in enumerate(n.input):
                if name == old:
                    n.input[k] = new
            rename_outer_read(n, old, new)
        for o in g.output:
            if o.name == old:  # returned as is (a body's outputs are matched by position, not by name)
                o.name = new


def topological_sort(model) -> None:
    """Nodes in an order where every input is made before it is read (after a pass appended nodes); the values
    a node's bodies read from outside count as its inputs."""
    made = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    pending = list(model.graph.node)
    needs = {id(n): reads(n) for n in pending}
    ordered = []
    while pending:
        rest = []
        for n in pending:
            if all(i in made for i in needs[id(n)]):
                ordered.append(n)
                made.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # a cycle or a missing input: leave the order as it was
            return
        pending = rest
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def drop_unused_initializers(model) -> None:
    """Initializers no node (nor a node's body) or output reads any more (ORT would warn about each one at
    load)."""
    used = {i for n in model.graph.node for i in reads(n)} | {o.name for o in model.graph.output}
    keep = [init for init in model.graph.initializer if init.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
