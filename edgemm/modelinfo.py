"""What a model is: parameters, size, precision and a MACs estimate, read from the ONNX graph."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgemm.bundle import Bundle, detect_precision
from edgemm.feeds import concrete_shape, onnx_input_metadata


@dataclass
class GraphInfo:
    parameters: int
    size_bytes: int
    macs: int | None  # Conv/Gemm/MatMul multiply-accumulates at batch 1; None if shapes are unknown
    precision: str
    opset: int
    ops: dict[str, int]


def all_graphs(graph):
    """A graph and every subgraph of its If / Loop / Scan nodes, depth first."""
    yield graph
    for node in graph.node:
        for a in node.attribute:
            for g in ([a.g] if a.type == a.GRAPH else list(a.graphs)):
                yield from all_graphs(g)


def _weight_elements(tensor) -> int:
    n = int(np.prod(tensor.dims)) if tensor.dims else 1
    return n if n > 1 and tensor.data_type != 7 else 0  # int64 tensors are shapes/axes, not weights


def count_parameters(model) -> int:
    """Elements of the weights: initializers and Constant nodes, in the main graph and in subgraphs
    (scalars and int64 shape tensors excluded)."""
    total = 0
    for g in all_graphs(model.graph):
        total += sum(_weight_elements(i) for i in g.initializer)
        for node in g.node:
            if node.op_type == "Constant":
                total += sum(_weight_elements(a.t) for a in node.attribute if a.name == "value")
    return total


def _static_model(model, batch: int = 1, graph_spec=None):
    """A copy with every dynamic input dim fixed (batch, then manifest sizes), shapes inferred."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    specs = {s.name: s for s in graph_spec.inputs} if graph_spec is not None else {}
    metas = onnx_input_metadata(m)
    for vi in m.graph.input:
        if vi.name in metas:
            for d, v in zip(vi.type.tensor_type.shape.dim, concrete_shape(metas[vi.name], specs.get(vi.name), batch)):
                d.dim_value = v
    return onnx.shape_inference.infer_shapes(m, data_prop=True)


def estimate_macs(model, graph_spec=None) -> int | None:
    """Multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul (and their quantized forms) at batch 1."""
    try:
        m = _static_model(model, 1, graph_spec)
    except Exception:  # shape inference can fail on custom ops: then we do not guess
        return None
    shapes: dict[str, list[int]] = {}
    graphs = list(all_graphs(m.graph))
    for g in graphs:
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            tt = vi.type.tensor_type
            if tt.HasField("shape"):  # (unknown or symbolic dims are 0: such a layer is not counted)
                shapes[vi.name] = [max(d.dim_value, 0) if d.HasField("dim_value") else 0 for d in tt.shape.dim]
        for init in g.initializer:
            shapes[init.name] = list(init.dims)
        for node in g.node:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value":
                        shapes[node.output[0]] = list(a.t.dims)

    def attr(node, name, default):
        for a in node.attribute:
            if a.name == name:
                return a.i if a.type == a.INT else list(a.ints)
        return default

    total, known = 0, False
    for node in (n for g in graphs for n in g.node):
        op = node.op_type
        out = shapes.get(node.output[0]) if node.output else None
        if op in ("Conv", "ConvInteger", "QLinearConv"):
            w = shapes.get(node.input[3] if op == "QLinearConv" else node.input[1])
            if out and w and all(out) and all(w):
                total += int(np.prod(out)) * int(np.prod(w[1:]))  # W: (Cout, Cin/group, k...)
                known = True
        elif op == "ConvTranspose":
            x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
            if x and w and all(x) and all(w):
                total += int(np.prod(x)) * int(np.prod(w[1:]))  # W: (Cin, Cout/group, k...)
                known = True
        elif op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
            a = shapes.get(node.input[0])
            if out and a and all(out) and all(a):
                k = a[-2] if op == "Gemm" and attr(node, "transA", 0) else a[-1]
                total += int(np.prod(out)) * k
                known = True
    return total if known else None


def graph_info(model, path: Path | None = None, graph_spec=None) -> GraphInfo:
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    size = path.stat().st_size if path is not None and path.exists() else model.ByteSize()
    return GraphInfo(count_parameters(model), size, estimate_macs(model, graph_spec), detect_precision(model), opset, ops)


def bundle_info(bundle: Bundle) -> dict:
    """Everything `edgemm info` shows, as a JSON-able dict."""
    man = bundle.manifest
    graphs = {}
    for gname, g in man.graphs.items():
        model = bundle.load_graph(gname, load_weights=False)  # counts come from dims; no weights needed
        info = graph_info(model, bundle.graph_path(gname), g)
        graphs[gname] = {
            "file": g.file,
            "parameters": info.parameters,
            "size_bytes": info.size_bytes,
            "macs": info.macs,
            "precision": info.precision,
            "opset": info.opset,
            "nodes": sum(info.ops.values()),
            "inputs": [{"name": s.name, "modality": s.modality, "dtype": s.dtype, "shape": s.shape,
                        "layout": s.layout} for s in g.inputs],
            "outputs": [{"name": s.name, "task": s.task, "dtype": s.dtype, "shape": s.shape,
                         "classes": len(s.labels) if s.labels else None} for s in g.outputs],
            "engine": g.engine,
        }
    return {
        "name": man.name,
        "source": str(bundle.source or bundle.root),
        "manifest": "inferred" if man.inferred else "bundle",
        "fusion": man.fusion.form,
        "modalities": man.modalities(),
        "precision": man.provenance.get("precision") or _overall_precision([g["precision"] for g in graphs.values()]),
        "graphs": graphs,
        "parameters": sum(g["parameters"] for g in graphs.values()),
        "macs": sum(g["macs"] or 0 for g in graphs.values()) or None,
        "size_bytes": sum(g["size_bytes"] for g in graphs.values()),
        "provenance": man.provenance,
        "notes": bundle.notes,
    }


def _overall_precision(per_graph: list[str]) -> str:
    """One precision for a bundle without a recorded one: what its graphs share, else mixed."""
    return per_graph[0] if len(set(per_graph)) == 1 else "mixed"
