"""Small ONNX graph helpers every converter step shares (one place each).

``save_model``     an onnx.ModelProto to a path inside a bundle, its folder made first (a manifest may
                   name graph files in subfolders, "enc/video.onnx").
``cpu_session``    an ONNX Runtime CPU session for a ModelProto; a model ORT cannot load is an EdgemmError.
``with_outputs``   a copy that also returns intermediate tensors, each declared with its own element type.
``dynamic_batch``  whether every input of a set of runners takes any batch (first dim not fixed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

from edgemm.errors import EdgemmError


def save_model(model, path: str | Path) -> Path:
    """onnx.save into path, creating its folder (graph files may live in subfolders of a bundle)."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def copy_model(model):
    import onnx

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
    import onnxruntime as ort

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
    import onnx

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
    from onnx import TensorProto, helper

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
