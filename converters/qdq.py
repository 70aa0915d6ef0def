"""Q/DQ surgery on a quantized ONNX graph: where ORT's QDQ quantizer's placement is not what we deliver.

``keep_outputs_float``      Q/DQ pairs ending in a graph output are removed: decisions read the float result.
``trt_residual_placement``  an Add fed by a layer keeps that input float (TensorRT fuses it as the residual).
``float_inputs``            nodes kept in float (the accuracy guard's exclusions) read float activations.
``bypass_qdq``              the one edit all three make: readers skip a Q->DQ pair, with a Relu/Clip the
                            quantizer folded into the Q re-created from the float graph.
``qdq_counts``              how many Q and DQ nodes a graph holds (reported per graph).
"""

from __future__ import annotations

import onnx

from edgemm.converters.graphs import consumers, producers, reads

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the layers a residual Add can fuse into

FOLDABLE_ACTIVATIONS = ("Relu", "Clip")


def _float_source(model, qn, prepared) -> tuple[str, object | None]:
    """The tensor holding the float value a Q/DQ pair stands for, and a node to add when it must be recomputed.

    ORT's QDQ quantizer removes a Relu/Clip whose output it quantizes (the Q's range clips the same way),
    so the Q's input is the value BEFORE the activation. Whoever reads past the Q/DQ in float needs the
    activation back: it is re-created from the prepared (float) graph.
    """
    src = qn.input[0]
    if prepared is None or not qn.input[1].endswith("_scale"):
        return src, None
    orig = qn.input[1][: -len("_scale")]  # ORT names a tensor's scale "<tensor>_scale"
    pprod = producers(prepared)
    act = pprod.get(orig)
    if act is None or act.op_type not in FOLDABLE_ACTIVATIONS or any(n.name == act.name for n in model.graph.node):
        return src, None
    before = pprod.get(act.input[0])
    here = producers(model).get(src)
    if before is None or here is None or before.name != here.name:
        return src, None
    again = next((n for n in model.graph.node if n.name == f"{act.name}_float"), None)
    if again is not None:  # a reader of another DQ of the same Q had it re-created: one node, shared
        return again.output[0], None
    node = onnx.NodeProto()
    node.CopyFrom(act)
    node.name = f"{act.name}_float"
    node.input[0] = src
    del node.output[:]
    node.output.append(f"{orig}_float")
    have = {i.name for i in model.graph.initializer}
    for extra in list(act.input)[1:]:  # Clip's min / max
        if extra and extra not in have:
            init = next((i for i in prepared.graph.initializer if i.name == extra), None)
            if init is not None:
                model.graph.initializer.append(init)
    return node.output[0], node


def bypass_qdq(model, dq_node, prepared=None, readers=None) -> bool:
    """Remove a Q->DQ pair (DQ given) on an activation: its readers (all, or those given) read the float
    value again (with a Relu/Clip the quantizer folded into the Q re-created). The Q/DQ stays while other
    readers use it."""
    prod = producers(model)
    qn = prod.get(dq_node.input[0])
    if qn is None or qn.op_type != "QuantizeLinear":
        return False
    dst = dq_node.output[0]
    src, act = _float_source(model, qn, prepared)
    graph_outputs = {o.name for o in model.graph.output}
    cons = consumers(model)
    if dst in graph_outputs:
        if act is not None:
            act.output[0] = dst  # the activation computes the output itself
            model.graph.node.remove(dq_node)
            model.graph.node.append(act)
        else:
            # The float tensor must keep the output's name: rename the producer's output instead.
            p = prod.get(src)
            if p is None or len(cons.get(src, [])) != 1:
                return False
            p.output[list(p.output).index(src)] = dst
            model.graph.node.remove(dq_node)
    else:
        if act is not None:
            model.graph.node.append(act)
        for c in (readers if readers is not None else cons.get(dst, [])):
            for k, name in enumerate(c.input):
                if name == dst:
                    c.input[k] = src
    drop_dead_qdq(model)
    return True


def float_inputs(model, nodes: set[str], prepared=None) -> int:
    """Excluded nodes read their activations in float.

    ORT's nodes_to_exclude only stops a node from asking for quantized inputs; a producer that is itself
    quantized still puts Q/DQ on its output and every reader, the excluded node included, gets the
    rounded value. Keeping a layer in float has to mean it computes on float inputs, so its inputs are
    rewired past the DQ to the float tensor (the Q/DQ stays for readers that are quantized).
    """
    inits = {i.name for i in model.graph.initializer}
    rewired = 0
    for name in [n.name for n in model.graph.node if n.name in nodes]:
        node = next(n for n in model.graph.node if n.name == name)
        prod = producers(model)
        for inp in list(node.input):
            dq = prod.get(inp)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            qn = prod.get(dq.input[0])
            if qn is None or qn.op_type != "QuantizeLinear" or qn.input[0] in inits:
                continue  # a weight stored as int8 + DQ: not an activation
            rewired += bypass_qdq(model, dq, prepared, readers=[node])
            prod = producers(model)
    return rewired


def drop_dead_qdq(model) -> None:
    """Remove Q/DQ nodes nothing reads any more, an If/Loop body included (repeat: a dead DQ can leave its Q
    dead)."""
    outputs = {o.name for o in model.graph.output}
    while True:
        used = {i for n in model.graph.node for i in reads(n)} | outputs
        dead = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            model.graph.node.remove(n)


def keep_outputs_float(model, prepared=None) -> int:
    """Drop Q/DQ pairs that end in a graph output: decisions read the layer's float result."""
    outs = {o.name for o in model.graph.output}
    removed = 0
    for n in list(model.graph.node):
        if n.op_type == "DequantizeLinear" and n.output[0] in outs and n in model.graph.node:
            removed += bypass_qdq(model, n, prepared)
    return removed


def trt_residual_placement(model, prepared=None) -> int:
    """For TensorRT: an Add fed by a Conv/Gemm/MatMul keeps that input float, so TensorRT can fuse the
    Add into the layer as its residual (the other input stays quantized). Returns pairs removed."""
    prod = producers(model)
    removed = 0
    for add in [n for n in model.graph.node if n.op_type == "Add"]:
        dqs = [prod.get(i) for i in add.input]
        sources = []
        for dq in dqs:
            qn = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            sources.append(prod.get(qn.input[0]) if qn is not None and qn.op_type == "QuantizeLinear" else None)
        for dq, src in zip(dqs, sources):
            if src is not None and src.op_type in WEIGHTED_OPS:
                removed += bypass_qdq(model, dq, prepared, readers=[add])
                prod = producers(model)
                break  # one side only: the residual (other) input keeps its Q/DQ
    return removed


def qdq_counts(model) -> dict[str, int]:
    ops = [n.op_type for n in model.graph.node]
    return {"QuantizeLinear": ops.count("QuantizeLinear"), "DequantizeLinear": ops.count("DequantizeLinear")}
