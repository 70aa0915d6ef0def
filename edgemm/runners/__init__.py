"""Runners: one interface (``BaseRunner``) over every backend.

Backends are named on the command line as ``BACKEND[:OPTION...]``:
  onnxruntime           ONNX Runtime on the CPU (the embedded default; alias ``ort``)
  onnxruntime:cuda      ONNX Runtime with the CUDA EP (``:tensorrt`` for the TensorRT EP, ``:auto`` for the best that runs)
  tensorrt              a TensorRT engine from the bundle (edgemm/runners/tensorrt.py; needs a CUDA GPU; alias ``trt``)
  tensorrt:graph        ... replaying the engine as a CUDA graph (less launch cost per layer; needs cuda-python)
  tensorrt:spin         ... busy-waiting for the GPU instead of sleeping (lower latency, one CPU core busy)
  tensorrt:copy         ... with H2D/D2H copies through device buffers, even on Jetson (default there: zero-copy)
  openvino              the OpenVINO runtime on the CPU, reading the ONNX graph directly (edgemm/runners/openvino.py;
                        the ``openvino`` extra; alias ``ov``)
  auto                  the fastest of the backends present here whose outputs agree with ONNX Runtime's, by a
                        short timed trial cached per model and machine (edgemm/runners/auto.py)
TensorRT options combine: ``tensorrt:graph:spin`` (trtexec's ``--useCudaGraph --useSpinWait``).
Modules for GPU backends and OpenVINO are imported only when such a runner is made.
"""

from __future__ import annotations

from edgemm.errors import EdgemmError
from edgemm.runners.base import BaseRunner, TensorMeta, check_feed

BACKENDS = ("onnxruntime", "tensorrt", "openvino", "auto")
_ALIASES = {"ort": "onnxruntime", "trt": "tensorrt", "ov": "openvino"}
# tensorrt:OPTION -> TensorRTRunner keyword argument. Without "copy" the runner decides zero-copy itself
# (on integrated GPUs, i.e. Jetson).
TENSORRT_OPTIONS = {"graph": ("cuda_graph", True), "spin": ("spin_wait", True), "copy": ("zero_copy", False)}
_EXPECTED = "expected one of onnxruntime[:cpu|cuda|tensorrt|auto], tensorrt[:graph][:spin][:copy], openvino, auto"
# The --backend help of every command.
BACKEND_HELP = ("onnxruntime (default, CPU), onnxruntime:cuda, onnxruntime:tensorrt, onnxruntime:auto, or a bundle's "
                "engine: tensorrt[:graph][:spin][:copy]; openvino (CPU, the openvino extra); auto (the fastest "
                "present backend that agrees with onnxruntime, by a short trial cached per model and machine)")


def parse_backend(spec: str) -> tuple[str, str | None]:
    """'onnxruntime:cuda' -> ('onnxruntime', 'cuda'); 'trt:graph:spin' -> ('tensorrt', 'graph:spin').

    Raises EdgemmError for an unknown backend, provider or TensorRT option.
    """
    backend, _, option = spec.partition(":")
    backend = _ALIASES.get(backend, backend)
    if backend not in BACKENDS:
        raise EdgemmError(f"Backend: {spec} | Unknown; {_EXPECTED}.")
    if backend == "onnxruntime":
        from edgemm.runners.onnxruntime import PROVIDERS  # (imports onnxruntime: not on --help's path)

        if option and option not in PROVIDERS and option != "auto":
            raise EdgemmError(f"Backend: {spec} | Unknown onnxruntime provider {option}; "
                              f"expected one of auto, {', '.join(PROVIDERS)}.")
    elif backend in ("openvino", "auto"):
        if option:
            raise EdgemmError(f"Backend: {spec} | {backend} takes no options; expected plain {backend} "
                              "(threads come from --threads).")
    elif option:
        tensorrt_options(option, spec)
    return backend, option or None


def tensorrt_options(option: str | None, spec: str | None = None) -> dict:
    """'graph:spin' -> {'cuda_graph': True, 'spin_wait': True}: keyword arguments for TensorRTRunner."""
    kwargs: dict = {}
    for name in option.split(":") if option else []:
        if name not in TENSORRT_OPTIONS:
            raise EdgemmError(f"Backend: {spec or 'tensorrt:' + option} | Unknown tensorrt option '{name}'; "
                              f"expected any of graph (CUDA graph), spin (spin-wait), copy (no zero-copy), "
                              f"joined by ':' (tensorrt:graph:spin).")
        key, value = TENSORRT_OPTIONS[name]
        kwargs[key] = value
    return kwargs


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
    if kind == "openvino":
        from edgemm.runners.openvino import OpenVINORunner  # lazy: openvino is an optional extra

        return OpenVINORunner(bundle.graph_path(graph), threads=threads, name=label)
    if kind == "auto":
        from edgemm.runners.auto import AutoRunner

        return AutoRunner(bundle, graph, threads=threads, name=label)
    # Lazy, as onnxruntime above: this package is on --help's path (BACKEND_HELP); tensorrt and the CUDA
    # bindings themselves are imported through edgemm.lazy when a runner activates.
    from edgemm.runners.tensorrt import TensorRTRunner

    return TensorRTRunner.from_bundle(bundle, graph, name=label, **tensorrt_options(option, backend))


__all__ = ["BaseRunner", "TensorMeta", "check_feed", "make_runner", "parse_backend", "tensorrt_options", "BACKENDS",
           "TENSORRT_OPTIONS"]
