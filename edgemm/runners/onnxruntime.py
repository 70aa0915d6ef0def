"""ONNX Runtime runner: the embedded default, on the CPU everywhere and on CUDA/TensorRT EPs where real.

Execution providers are chosen by what actually works, not by what is listed: a wrong-architecture GPU
build of onnxruntime still lists CUDAExecutionProvider and then fails at the first run
(cudaErrorNoKernelImageForDevice), so a GPU provider is only used after a real test inference on it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from edgemm.errors import EdgemmError
from edgemm.feeds import synthesize
from edgemm.runners.base import BaseRunner, TensorMeta

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
# "auto" tries these in order and keeps the first that passes a real inference.
AUTO_ORDER = ("tensorrt", "cuda", "cpu")

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def weights_as_constants(model: str | bytes) -> str | bytes:
    """The model with its weights no longer listed as graph inputs (bundle.unlist_weights), in memory, so
    that ONNX Runtime folds them (CenterFace: 68.8 against 28.8 ms, benchmarks/RESULTS.md section 10); the
    path itself where nothing is listed, or where weights live in external files (bytes are left as given)."""
    if not isinstance(model, str):
        return model
    import onnx

    from edgemm.bundle import unlist_weights

    try:
        m = onnx.load(model, load_external_data=False)
    except Exception:  # noqa: BLE001 - not readable here: the session says what is wrong with it
        return model
    if any(i.data_location == onnx.TensorProto.EXTERNAL for i in m.graph.initializer) or not unlist_weights(m):
        return model
    return m.SerializeToString()


def _meta(nodes) -> dict[str, TensorMeta]:
    out = {}
    for n in nodes:
        dtype = _ORT_TYPES.get(n.type)
        if dtype is None:
            raise EdgemmError(f"Tensor: {n.name} | Has type {n.type}; expected a numeric tensor type.")
        shape = tuple(d if isinstance(d, int) else (d or None) for d in n.shape)
        out[n.name] = TensorMeta(n.name, np.dtype(dtype), shape)
    return out


def ort_cache_dir() -> Path:
    """Where the TensorRT EP keeps its engines and timings (building them takes minutes on a Jetson)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgemm" / "ort-tensorrt"


def _provider_chain(provider: str) -> list:
    """The providers a session is given, best first. TensorRT is followed by CUDA so that nodes TensorRT
    rejects stay on the GPU (ONNX Runtime's recommendation), and keeps its engines in a cache so that a
    service restart does not rebuild them."""
    if provider == "tensorrt":
        cache = ort_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        trt = (PROVIDERS["tensorrt"], {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                                       "trt_timing_cache_enable": True})
        return [trt, PROVIDERS["cuda"], PROVIDERS["cpu"]]
    if provider == "cuda":
        return [PROVIDERS["cuda"], PROVIDERS["cpu"]]
    return [PROVIDERS["cpu"]]


class OnnxRuntimeRunner(BaseRunner):
    """Runs an ONNX model (path or serialized bytes) with onnxruntime.

    provider: "cpu" (default), "cuda", "tensorrt", or "auto" (best provider that really runs).
    threads:  intra-op threads (None: onnxruntime's default, one per physical core).
    """

    backend = "onnxruntime"

    def __init__(self, model: str | Path | bytes, provider: str = "cpu", threads: int | None = None,
                 name: str | None = None, graph_spec=None, optimization: str = "all"):
        super().__init__(name or (Path(model).name if not isinstance(model, bytes) else None))
        if provider not in PROVIDERS and provider != "auto":
            raise EdgemmError(f"Provider: {provider} | Unknown; expected one of auto, {', '.join(PROVIDERS)}.")
        if threads is not None and threads < 1:
            raise EdgemmError(f"Threads: {threads} | Expected a positive number of threads.")
        self.model = str(model) if isinstance(model, Path) else model
        self.requested_provider = provider
        self.threads = threads
        self.optimization = optimization
        self.graph_spec = graph_spec  # manifest entry, used to synthesise a plausible probe input
        self.session = None
        self.provider: str | None = None

    def _session(self, provider: str):
        opts = ort.SessionOptions()
        # Fatal only: a failing kernel also raises, and edgemm reports that in one line; provider fallbacks
        # are reported by edgemm itself.
        opts.log_severity_level = 4
        if self.threads:
            opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[self.optimization]
        if PROVIDERS[provider] not in ort.get_available_providers():
            raise EdgemmError(f"Provider: {provider} | Not available in this onnxruntime build "
                              f"(available: {', '.join(ort.get_available_providers())}).")
        providers = _provider_chain(provider)
        try:
            sess = ort.InferenceSession(weights_as_constants(self.model), sess_options=opts, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EdgemmError(f"Model: {self.name} | onnxruntime could not load it: {first}") from exc
        if sess.get_providers()[0] != PROVIDERS[provider]:  # listed, but the session could not take it
            raise EdgemmError(f"Provider: {provider} | Could not be initialised (the session fell back to "
                              f"{sess.get_providers()[0]}).")
        return sess

    def _probe(self, sess, provider: str) -> None:
        """A real inference: the only proof that a GPU provider works on this device."""
        feed = synthesize(_meta(sess.get_inputs()), self.graph_spec)
        try:
            sess.run(None, feed)
        except Exception as exc:
            raise EdgemmError(f"Provider: {provider} | Listed but a test inference failed "
                              f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}).") from exc

    def activate_impl(self) -> None:
        if self.requested_provider != "auto":
            self.session = self._session(self.requested_provider)
            if self.requested_provider != "cpu":
                self._probe(self.session, self.requested_provider)
            self.provider = self.requested_provider
        else:
            available = set(ort.get_available_providers())
            for provider in AUTO_ORDER:
                if PROVIDERS[provider] not in available:
                    continue
                try:
                    sess = self._session(provider)
                    if provider != "cpu":
                        self._probe(sess, provider)
                except EdgemmError as exc:
                    if provider == "cpu":
                        raise
                    log.warning("%s; falling back", exc)
                    continue
                self.session, self.provider = sess, provider
                break
        self._inputs = _meta(self.session.get_inputs())
        self._outputs = _meta(self.session.get_outputs())
        self._output_names = list(self._outputs)

    def deactivate_impl(self) -> None:
        self.session = None

    def input_metadata_impl(self):
        return self._inputs

    def output_metadata_impl(self):
        return self._outputs

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self._output_names, dict(feed))
        return dict(zip(self._output_names, values))

    @classmethod
    def preload(cls) -> None:
        """Import onnxruntime and create its process-wide environment with one tiny session."""
        if getattr(cls, "_preloaded", False):
            return
        vi = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "preload", [vi],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), opts, providers=[PROVIDERS["cpu"]]).run(
            None, {"x": np.zeros(1, np.float32)})
        cls._preloaded = True

    def describe(self) -> str:
        threads = f", {self.threads} threads" if self.threads else ""
        return f"onnxruntime {self.provider or self.requested_provider}{threads}"
