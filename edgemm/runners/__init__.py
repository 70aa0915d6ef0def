"""Runners: one interface (``BaseRunner``) over every backend.

Backends are named on the command line as ``BACKEND[:OPTION]``:
  onnxruntime           ONNX Runtime on the CPU (the embedded default; alias ``ort``)
  onnxruntime:cuda      ONNX Runtime with the CUDA EP (``:tensorrt`` for the TensorRT EP, ``:auto`` for the best that runs)
  tensorrt              a TensorRT engine from the bundle (edgemm/runners/tensorrt.py; needs a CUDA GPU)
Modules for GPU backends are imported only when such a runner is made.
"""

from __future__ import annotations

from edgemm.errors import EdgemmError
from edgemm.runners.base import BaseRunner, TensorMeta, check_feed

BACKENDS = ("onnxruntime", "tensorrt")
_ALIASES = {"ort": "onnxruntime", "trt": "tensorrt"}


def parse_backend(spec: str) -> tuple[str, str | None]:
    """'onnxruntime:cuda' -> ('onnxruntime', 'cuda'). Raises EdgemmError for an unknown backend."""
    backend, _, option = spec.partition(":")
    backend = _ALIASES.get(backend, backend)
    if backend not in BACKENDS:
        raise EdgemmError(f"Backend: {spec} | Unknown; expected one of onnxruntime[:cpu|cuda|tensorrt|auto], tensorrt.")
    if backend == "onnxruntime":
        from edgemm.runners.onnxruntime import PROVIDERS

        if option and option not in PROVIDERS and option != "auto":
            raise EdgemmError(f"Backend: {spec} | Unknown onnxruntime provider {option}; "
                              f"expected one of auto, {', '.join(PROVIDERS)}.")
    return backend, option or None


def make_runner(bundle, graph: str | None = None, backend: str = "onnxruntime", threads: int | None = None,
                name: str | None = None) -> BaseRunner:
    """A runner for one graph of a bundle on the given backend (not yet activated)."""
    graph = graph or bundle.single_graph
    spec = bundle.manifest.graphs[graph]
    kind, option = parse_backend(backend)
    label = name or (bundle.name if len(bundle.manifest.graphs) == 1 else f"{bundle.name}/{graph}")
    if kind == "onnxruntime":
        from edgemm.runners.onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(bundle.graph_path(graph), provider=option or "cpu", threads=threads,
                                 name=label, graph_spec=spec)
    from edgemm.runners.tensorrt import TensorRTRunner  # lazy: tensorrt and CUDA are imported only here

    return TensorRTRunner.from_bundle(bundle, graph, name=label)


__all__ = ["BaseRunner", "TensorMeta", "check_feed", "make_runner", "parse_backend", "BACKENDS"]
