"""Latency of several models side by side: the one place the converters time anything.

``time_models`` measures ONNX models (ModelProto, serialized bytes or a path, run by ONNX Runtime on the
CPU) or ready runners of any backend, interleaved one inference of each in turn with ``edgemm.bench.run``
so that machine noise hits all alike. Used by the INT8 flavour choice, the before/after latency of
``edgemm convert``, ``edgemm eval --against --latency`` and the pruning benchmark. Compare the results as
ratios within one run, never across runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgemm import bench
from edgemm.feeds import synthesize
from edgemm.runners.base import BaseRunner
from edgemm.runners.onnxruntime import OnnxRuntimeRunner

WARMUP_S = 0.3


def _runner(label: str, model: Any, threads: int | None, graph_spec=None):
    if isinstance(model, BaseRunner):
        return model
    if isinstance(model, (str, Path, bytes)):
        return OnnxRuntimeRunner(model, "cpu", threads, name=label, graph_spec=graph_spec)
    return OnnxRuntimeRunner(model.SerializeToString(), "cpu", threads, name=label, graph_spec=graph_spec)


def time_models(models: Mapping[str, Any], feed: Mapping[str, np.ndarray] | None = None,
                feeds: Mapping[str, Mapping[str, np.ndarray]] | None = None, threads: int | None = None,
                duration_s: float = 2.0, warmup_s: float = WARMUP_S,
                graph_specs: Mapping[str, Any] | None = None) -> dict[str, dict]:
    """Interleaved latency of every model; label -> edgemm.bench result plus "speedup" over the first.

    models: label -> onnx.ModelProto, bytes, path (ONNX Runtime CPU, ``threads`` intra-op threads) or a
            runner of any backend (used as given; it is deactivated when the run ends).
    feed / feeds: one feed for all, or one per label; a label with neither gets inputs synthesised from
            its runner's metadata and ``graph_specs[label]`` (plausible ranges, dynamic dims filled).
    """
    feeds = feeds or {}
    graph_specs = graph_specs or {}
    targets = []
    for label, model in models.items():
        spec = graph_specs.get(label)
        given = feeds.get(label, feed)
        targets.append(bench.Target(
            label, _runner(label, model, threads, spec), feed=dict(given) if given is not None else None,
            make_feed=lambda run, spec=spec: synthesize(run.input_metadata(), spec)))
    results = bench.run(targets, duration_s=duration_s, warmup_s=warmup_s)
    out = {}
    ref = results[0]["latency_ms"]["p50"]
    for r in results:
        p50 = r["latency_ms"]["p50"]
        r["speedup"] = ref / p50 if p50 > 0 else float("nan")
        out[r["model"]] = r
    return out
