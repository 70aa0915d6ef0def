"""Input feeds for a model: synthesised from its metadata and manifest, or read from an .npz file.

Synthetic values are plausible for what each input is (a normalised image, a log-mel spectrogram, a
waveform, a presence flag, a zero recurrent state), so that timing and calibration-free checks see the
same code paths as real data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from edgemm.bundle import DTYPES, GraphSpec, InputSpec, onnx_io
from edgemm.errors import EdgemmError
from edgemm.runners.base import TensorMeta, check_feed


def concrete_shape(meta: TensorMeta, spec: InputSpec | None, batch: int) -> tuple[int, ...]:
    """Fill dynamic dims: the manifest's shape (or --shape) where it fixes them, else the first is the batch and
    the rest come from the manifest's preprocessing."""
    sizes = spec.axis_sizes() if spec is not None and len(spec.layout or "") == len(meta.shape) else {}
    declared = spec.shape if spec is not None and len(spec.shape) == len(meta.shape) else [None] * len(meta.shape)
    shape = []
    for axis, (d, given) in enumerate(zip(meta.shape, declared)):
        if isinstance(d, int) and d > 0:
            shape.append(d)
        elif isinstance(given, int) and given > 0 and (axis > 0 or batch == 1):
            shape.append(given)
        elif axis == 0:
            shape.append(batch)
        else:
            shape.append(sizes[axis][0] if axis in sizes else 1)
    return tuple(shape)


def onnx_input_metadata(model) -> dict[str, TensorMeta]:
    """TensorMeta of the real inputs of an onnx.ModelProto (initializers excluded), from the graph itself."""
    out = {}
    for name, dtype, shape in onnx_io(model)[0]:
        if dtype not in DTYPES:
            raise EdgemmError(f"Input tensor: {name} | Has ONNX element type {dtype.split('-')[-1]}; expected one of "
                              f"{', '.join(DTYPES)}.")
        out[name] = TensorMeta(name, np.dtype(dtype), tuple(d if d else None for d in shape))
    return out


def synthesize(metadata: Mapping[str, TensorMeta], graph: GraphSpec | None = None, batch: int = 1,
               seed: int = 0) -> dict[str, np.ndarray]:
    """One feed of plausible random values for every input."""
    rng = np.random.default_rng(seed)
    specs = {s.name: s for s in graph.inputs} if graph is not None else {}
    feed = {}
    for name, meta in metadata.items():
        spec = specs.get(name)
        shape = concrete_shape(meta, spec, batch)
        modality = spec.modality if spec else "other"
        dt = meta.dtype
        if spec is not None and spec.value is not None:
            x = constant_value(spec, shape)
        elif modality == "presence":
            x = np.ones(shape)
        elif modality == "state":
            x = np.zeros(shape)
        elif dt == np.bool_:
            x = rng.random(shape) > 0.5
        elif np.issubdtype(dt, np.integer):
            # Token ids, indices, counts: small non-negative values are valid for all of them.
            high = 256 if dt == np.uint8 else 10
            x = rng.integers(0, high, size=shape)
        elif modality == "video":
            pre = spec.preprocess
            x = rng.integers(0, 256, size=shape).astype(np.float32) * pre.scale
            layout = spec.layout or "NCHW"
            if len(layout) == len(shape):  # normalise per channel, wherever the channel axis is
                bshape = [1] * len(shape)
                bshape[layout.index("C")] = -1
                x = (x - np.asarray(pre.mean, np.float32).reshape(bshape)) / np.asarray(pre.std, np.float32).reshape(bshape)
        elif modality == "audio" and spec.preprocess.takes_waveform:
            x = rng.uniform(-0.5, 0.5, size=shape)
        else:  # spectrograms, embeddings, anything else: roughly standardised values
            x = rng.standard_normal(shape)
        feed[name] = np.array(x, dtype=dt, order="C")  # (not ascontiguousarray: it turns scalars into 1-d)
    return feed


def constant_value(spec: InputSpec, shape: tuple[int, ...]) -> np.ndarray:
    """A manifest input's constant "value" (a sample rate, a threshold), broadcast to its shape."""
    return np.array(np.broadcast_to(np.asarray(spec.value), shape), dtype=spec.dtype)


def describe_feed(feed: Mapping[str, np.ndarray]) -> str:
    """'input:1x16000, state:2x1x128, sr:scalar': the shapes a model was given, as --shape writes them."""
    return ", ".join(f"{k}:{'x'.join(map(str, v.shape)) or 'scalar'}" for k, v in feed.items())


def refused_feed(model: str, feed: Mapping[str, np.ndarray], exc: Exception, synthesised: bool) -> EdgemmError:
    """One line for a model that fails on the inputs it was given: the shapes tried and what to set."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    reason = reason.split("Status Message: ")[-1][:300]
    hint = ("; set the input shapes with --shape NAME:DIMS (e.g. --shape " + next(iter(feed), "x") + ":1x...)"
            " or give real inputs with --inputs F.npz" if synthesised else
            "; expected what the manifest says it takes: set the shapes (--shape, or the manifest's shape and "
            "preprocess window/size)")
    return EdgemmError(f"Model: {model} | Fails on {'synthesised ' if synthesised else ''}inputs "
                       f"{describe_feed(feed)} ({reason}){hint}.")


def load_npz(path: str | Path, metadata: Mapping[str, TensorMeta]) -> dict[str, np.ndarray]:
    """Read an .npz keyed by input name and check it against the model (names, dtypes, shapes)."""
    path = Path(path)
    if not path.is_file():
        raise EdgemmError(f"Inputs file: {path} | File not found; expected an .npz keyed by input name.")
    try:
        with np.load(path, allow_pickle=False) as data:
            feed = {k: np.array(data[k], order="C") for k in data.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled), OSError
        raise EdgemmError(f"Inputs file: {path} | Not a readable .npz ({exc}); expected numpy.savez output.") from exc
    # A file of a calibration/evaluation folder works too: its labels are not inputs.
    feed = {k: v for k, v in feed.items() if k != "label" and not k.startswith("label:")}
    check_feed(feed, metadata, what=f"Inputs file {path}, tensor")
    return feed


def feed_batch(feed: Mapping[str, np.ndarray], metadata: Mapping[str, TensorMeta], default: int = 1) -> int:
    """The batch a feed carries: the first dim of an input whose first dim is dynamic."""
    for name, meta in metadata.items():
        if meta.shape and not isinstance(meta.shape[0], int) and name in feed and feed[name].ndim:
            return int(feed[name].shape[0])
    return default
