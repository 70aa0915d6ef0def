"""Calibration data for the converters: per-graph feeds streamed from a data folder.

``GraphFeeds`` turns the samples of a ``converters.data.DataFolder`` into the feed of each graph of a
bundle, one sample at a time (batch 1), so memory stays bounded however large the folder is:

  early fusion        the one graph takes the sample's tensors (plus presence flags = 1, states = 0);
  intermediate fusion each encoder takes its modality's tensors; the head's embedding inputs come from
                      running the (float) encoders on the same sample, as they would on the device;
  late fusion         each member takes its own modality's tensors.

``CalibrationReader`` wraps it as an ONNX Runtime ``CalibrationDataReader`` for one graph
(``get_next()`` returns a feed dict or None, ``rewind()`` starts over); ``--calib-limit`` caps the
number of samples. Every feed is checked against the graph's own inputs, so a folder made for another
model fails with one line naming the file, the tensor and what was expected.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from converters.data import DataFolder, Sample
from edgemm.bundle import Bundle, GraphSpec
from edgemm.errors import EdgemmError
from edgemm.feeds import concrete_shape, onnx_input_metadata
from edgemm.runners.base import TensorMeta, check_feed

try:  # the ABC only adds __iter__/__next__; duck typing is all quantize_static needs
    from onnxruntime.quantization import CalibrationDataReader as _ReaderBase
except ImportError:  # pragma: no cover - onnxruntime is a core dependency
    _ReaderBase = object


def graph_order(bundle: Bundle) -> list[str]:
    """Graphs in the order data flows through them (encoders before the head)."""
    m = bundle.manifest
    names = list(m.graphs)
    if m.fusion.form == "intermediate" and m.fusion.head in names:
        names.remove(m.fusion.head)
        names.append(m.fusion.head)
    return names


def graph_feed(spec: GraphSpec, meta: Mapping[str, TensorMeta], tensors: Mapping[str, np.ndarray],
               where: str = "Calibration data") -> dict[str, np.ndarray]:
    """The feed of one graph from a sample's tensors (input name, or "graph.output" for embeddings).

    Presence flags are 1 (every modality present) and recurrent states are zeros, as at start-up.
    """
    batch = next((v.shape[0] for v in tensors.values() if getattr(v, "ndim", 0) > 0), 1)
    feed = {}
    for s in spec.inputs:
        m = meta.get(s.name)
        if m is None:
            continue
        if s.modality == "presence":
            feed[s.name] = np.ones(concrete_shape(m, s, batch), dtype=m.dtype)
        elif s.modality == "state":
            feed[s.name] = np.zeros(concrete_shape(m, s, batch), dtype=m.dtype)
        else:
            key = s.source if s.modality == "embedding" and s.source else s.name
            if key not in tensors:
                raise EdgemmError(f"{where} | Has no tensor for input {s.name} of graph {spec.name}"
                                  f"{f' (from {key})' if key != s.name else ''}; expected it in every sample.")
            feed[s.name] = tensors[key]
    return feed


class GraphFeeds:
    """Streams per-graph feeds for the samples of a data folder (batch 1 each, at most ``limit``)."""

    def __init__(self, bundle: Bundle, folder: str | Path | DataFolder, limit: int | None = None,
                 what: str = "Calibration data", progress: bool | None = None, threads: int | None = None):
        if limit is not None and limit < 1:
            raise EdgemmError(f"{what} limit: {limit} | Expected a positive number of samples.")
        self.bundle = bundle
        self.data = folder if isinstance(folder, DataFolder) else DataFolder(folder, bundle, what)
        self.what = what
        self.limit = limit
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.threads = threads
        self._meta: dict[str, dict[str, TensorMeta]] = {}
        self._encoders = None  # FusionModel over the float bundle, for head feeds (intermediate fusion)

    # -- metadata -------------------------------------------------------------------------------------
    def metadata(self, graph: str) -> dict[str, TensorMeta]:
        if graph not in self._meta:
            self._meta[graph] = onnx_input_metadata(self.bundle.load_graph(graph, load_weights=False))
        return self._meta[graph]

    def needs_encoders(self, graph: str) -> bool:
        spec = self.bundle.manifest.graphs[graph]
        return any(s.modality == "embedding" and s.source for s in spec.inputs)

    # -- iteration ------------------------------------------------------------------------------------
    def samples(self) -> Iterator[Sample]:
        n = 0
        for sample in self.data.single_samples(progress=self.progress, limit=self.limit):
            yield sample
            n += 1
        if n == 0:
            raise EdgemmError(f"{self.what}: {self.data.folder} | Holds no samples; expected at least one.")

    def feeds_for(self, sample: Sample, graphs: list[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
        """Feeds of the given graphs (default: all) for one sample, checked against each graph."""
        graphs = graphs or graph_order(self.bundle)
        tensors: dict[str, np.ndarray] = dict(sample.tensors)
        if any(self.needs_encoders(g) for g in graphs):
            tensors.update(self._embeddings(tensors))
        out = {}
        for g in graphs:
            spec = self.bundle.manifest.graphs[g]
            meta = self.metadata(g)
            where = f"{self.what}: {self.data.folder / sample.name}"
            feed = graph_feed(spec, meta, tensors, where)
            feed = {k: _as_dtype(v, meta[k], where) for k, v in feed.items()}
            check_feed(feed, meta, what=f"{where} | graph {g}, tensor")
            out[g] = feed
        return out

    def iter_graph(self, graph: str) -> Iterator[dict[str, np.ndarray]]:
        for sample in self.samples():
            yield self.feeds_for(sample, [graph])[graph]

    def _embeddings(self, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from edgemm.fusion import FusionModel

        m = self.bundle.manifest
        if self._encoders is None:
            self._encoders = FusionModel(self.bundle, "onnxruntime", self.threads).__enter__()
        out = {}
        for modality in m.fusion.encoders:
            out.update(self._encoders.encode(modality, tensors))
        return out

    def close(self) -> None:
        if self._encoders is not None:
            self._encoders.__exit__(None, None, None)
            self._encoders = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _as_dtype(value: np.ndarray, meta: TensorMeta, where: str) -> np.ndarray:
    """float64 data for a float32 input is converted (numpy's default); anything else must match."""
    if value.dtype != meta.dtype and value.dtype.kind == "f" and meta.dtype.kind == "f":
        return value.astype(meta.dtype)
    return value


class CalibrationReader(_ReaderBase):
    """ONNX Runtime ``CalibrationDataReader`` over one graph of a bundle, streamed from a folder.

    ``get_next()`` returns the next feed dict (batch 1) or None at the end; ``rewind()`` starts over.
    ``chunk(n)`` makes the reader stop (return None) after n more feeds without losing its place, so a
    histogram calibrator (which keeps every activation of one ``collect_data`` call in memory) can be
    fed in bounded pieces.
    """

    def __init__(self, feeds: GraphFeeds, graph: str):
        self.feeds, self.graph = feeds, graph
        self._it = None
        self._left: int | None = None
        self.count = 0  # feeds handed out since the last rewind
        self.exhausted = False

    def get_next(self):
        if self._left is not None and self._left <= 0:
            return None
        if self._it is None:
            self._it = self.feeds.iter_graph(self.graph)
        try:
            feed = next(self._it)
        except StopIteration:
            self.exhausted = True
            return None
        self.count += 1
        if self._left is not None:
            self._left -= 1
        return feed

    def rewind(self) -> None:
        self._it = None
        self._left = None
        self.count = 0
        self.exhausted = False

    def chunk(self, n: int | None) -> "CalibrationReader":
        self._left = n
        return self

    def __len__(self) -> int:  # the number of samples is known only once read; ORT asks only for strides
        raise TypeError("CalibrationReader streams its folder; its length is not known in advance")
