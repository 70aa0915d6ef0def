"""Calibration data for the converters: per-graph feeds streamed from a data folder.

``GraphFeeds`` turns the samples of a ``converters.data.DataFolder`` into the feed of each graph of a
bundle, one sample at a time (batch 1), so memory stays bounded however large the folder is:

  early fusion        the one graph takes the sample's tensors (plus presence flags = 1, states = 0);
  intermediate fusion each encoder takes its modality's tensors; the head's embedding inputs come from
                      running the (float) encoders on the same sample, as they would on the device;
  late fusion         each member takes its own modality's tensors.

``iter_feeds()`` gives, per sample, the feeds of every graph at once, so one pass over the folder (and
one run of the encoders) serves every graph of a conversion step; ``iter_graph(g)`` the feeds of one.
``CalibrationReader`` wraps one graph's feeds as an ONNX Runtime ``CalibrationDataReader``
(``get_next()`` returns a feed dict or None, ``rewind()`` starts over); ``--calib-limit`` caps the
number of samples. Every feed is checked against the graph's own inputs, so a folder made for another
model fails with one line naming the file, the tensor and what was expected. The feed of a graph is
built by ``edgemm.fusion.graph_feed``, the function the runtime uses: presence flags 1, states 0.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from edgemm.converters.data import DataFolder, Sample
from edgemm.bundle import Bundle
from edgemm.errors import EdgemmError
from edgemm.feeds import onnx_input_metadata
from edgemm.fusion import FusionModel, graph_feed
from edgemm.runners.base import TensorMeta, check_feed

def graph_order(bundle: Bundle) -> list[str]:
    """Graphs in the order data flows through them (encoders before the head)."""
    m = bundle.manifest
    names = list(m.graphs)
    if m.fusion.form == "intermediate" and m.fusion.head in names:
        names.remove(m.fusion.head)
        names.append(m.fusion.head)
    return names


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
            raise EdgemmError(f"{self.what}: {self.data.source} | Holds no samples; expected at least one.")

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
            feed = graph_feed(spec, meta, tensors, where=where)
            check_feed(feed, meta, what=f"{where} | graph {g}, tensor")
            out[g] = feed
        return out

    def iter_feeds(self, graphs: list[str] | None = None) -> Iterator[dict[str, dict[str, np.ndarray]]]:
        """Per sample, graph -> feed for the given graphs (default: all): one pass serves them all."""
        for sample in self.samples():
            yield self.feeds_for(sample, graphs)

    def iter_graph(self, graph: str) -> Iterator[dict[str, np.ndarray]]:
        for feeds in self.iter_feeds([graph]):
            yield feeds[graph]

    def _embeddings(self, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
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


class CalibrationReader:
    """ONNX Runtime ``CalibrationDataReader`` over one graph of a bundle, streamed from a folder.

    ``get_next()`` returns the next feed dict (batch 1) or None at the end; ``rewind()`` starts over.
    That is the whole protocol: ORT's ABC recognises any class with ``get_next`` (its __subclasshook__),
    and inheriting from it would bring its ``__len__``, which raises, so that even ``if reader:`` failed.
    (converters.int8.calibrate feeds its calibrators in bounded chunks itself; this reader is for handing
    a folder to ORT's own ``quantize_static``.)
    """

    def __init__(self, feeds: GraphFeeds, graph: str):
        self.feeds, self.graph = feeds, graph
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def get_next(self):
        if self._it is None:
            self._it = self.feeds.iter_graph(self.graph)
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None
