"""Audio front ends that INT8 cannot hold: a raw waveform's STFT and the spectrum it gives stay float.

A waveform input feeds an STFT (a Conv with one input channel and a 1-D kernel: Silero, openWakeWord's mel
front end), whose real/imaginary parts are squared, summed (and square-rooted) into a linear power or
magnitude spectrum, read by the next layer (a Conv, the mel filterbank's MatMul). Speech spans 60 dB and
more in that spectrum; 8-bit linear steps hold 48 dB of the waveform and about half of that of its power,
so quiet bands and quiet frames round to zero. Measured (benchmarks/RESULTS.md §12): the Silero v6 VAD's
probability over a speech stream fell from cosine 1.000 to 0.971 against FP32 (speech/non-speech decisions
agreeing on 91.5 % of 32 ms frames) with the waveform, the STFT and the magnitude quantized, and came back to
0.999 (98.8 %) with them and the Conv reading the magnitude kept float; openWakeWord's log-mel front end
stays at cosine 0.93 with anything up to its filterbank quantized.

``waveform_front_end(model)`` names those nodes: everything reachable from a graph input that reaches such
an STFT Conv through data-movement ops only, up to and including the next compute op after the STFT (the
layer reading the spectrum). ``converters.int8.quantize`` keeps them float, in every flavour.
"""

from __future__ import annotations

from edgemm.converters.graphs import producers
from edgemm.errors import EdgemmError

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops that only move or reshape the waveform on its way to the STFT (no arithmetic on the samples).
_MOVES = ("Pad", "Unsqueeze", "Reshape", "Squeeze", "Transpose", "Identity", "Cast", "Slice", "Flatten")

REASON = ("waveform front end: 8-bit linear steps cannot hold a raw waveform's STFT and its spectrum "
          "(60+ dB of speech); kept float up to the layer reading the spectrum")


def _is_stft_conv(node, weights: dict) -> bool:
    """A Conv over a 1-D signal with a single input channel (weight [C_out, 1, k]) whose weight is constant."""
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
        return False
    dims = list(weights[node.input[1]].dims)
    return len(dims) == 3 and dims[1] == 1


def waveform_front_end(model) -> set[str]:
    """Names of the nodes of every waveform front end of the graph (see the module's docstring)."""
    g = model.graph
    weights = {i.name: i for i in g.initializer}
    inits = set(weights)
    prod = producers(model)
    out: set[str] = set()
    for inp in g.input:
        if inp.name in inits:
            continue
        # Compute levels in topological order: how many compute ops lie between the input and each tensor.
        level = {inp.name: 0}
        nodes = []
        found = False
        for n in g.node:
            ins = [level[i] for i in n.input if i in level]
            if not ins:
                continue
            lv = max(ins)
            if lv >= 2:
                continue  # beyond the layer reading the spectrum
            if lv == 0 and n.op_type in COMPUTE_OPS:
                if not (_is_stft_conv(n, weights) and _only_moves(n.input[0], inp.name, prod)):
                    break  # the input's first layer is not an STFT of a waveform: not a front end
                found = True
            nodes.append(n.name)
            for o in n.output:
                level[o] = lv + (1 if n.op_type in COMPUTE_OPS else 0)
        if found:
            out.update(nodes)
    return out


def _only_moves(tensor: str, source: str, prod) -> bool:
    """tensor comes from source through data-movement ops only."""
    while tensor != source:
        p = prod.get(tensor)
        if p is None or p.op_type not in _MOVES:
            return False
        tensor = p.input[0]
    return True


def check_left_to_quantize(quantized: dict, prepared: dict, where: str) -> None:
    """Refuse INT8 in one line when a waveform front end kept float leaves no Q/DQ in any graph: the bundle
    would be FP32 under an INT8 label (openWakeWord's mel front end: STFT, power, filterbank, then a float log)."""
    if any(n.op_type == "QuantizeLinear" for m in quantized.values() for n in m.graph.node):
        return
    fronts = {g: waveform_front_end(m) for g, m in prepared.items()}
    if not any(fronts.values()):
        return
    stft = sorted(n.name for g, m in prepared.items() for n in m.graph.node
                  if n.name in fronts[g] and n.op_type in COMPUTE_OPS)
    raise EdgemmError(f"INT8: {where} | Nothing left to quantize: its waveform front end (layers "
                      f"{', '.join(stft)}) stays float, since 8-bit steps cannot hold a raw waveform's STFT and "
                      "spectrum (60+ dB of speech), and what follows it is float post-processing; keep this model "
                      "in FP32 (--precision fp32).")
