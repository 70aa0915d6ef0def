"""OpenVINO runner: Intel's CPU runtime, reading the ONNX file directly (no IR conversion step).

Chosen over ONNX Runtime's OpenVINO execution provider because that EP ships as a separate wheel
(onnxruntime-openvino) that replaces the plain onnxruntime package edgemm depends on (both install the
module ``onnxruntime``), has no aarch64 wheels, and lags OpenVINO releases; the ``openvino`` wheel installs
next to onnxruntime on x86 and on aarch64 (Jetson's CPU) and runs the same ONNX graphs, Q/DQ INT8 included
(its low-precision transformations turn Q/DQ pairs into integer kernels).

Settings: ``threads`` (INFERENCE_NUM_THREADS), the LATENCY performance hint (batch 1, one stream: what a
streaming pipeline wants), FP32 inference precision (OpenVINO would otherwise pick BF16 on CPUs that have
AMX, and the outputs would no longer agree with the reference), and a model cache directory so that a
restart does not recompile (``EDGEMM_OPENVINO_CACHE``, default ~/.cache/edgemm/openvino; empty disables it).
CPU pinning is off: OpenVINO pins its inference threads to cores by default, and a pinned thread that shares
its core with the pipeline's capture and preprocessing threads (or any other process) waits for it; on this
2-core machine pinning made the same model 1x-5x slower from run to run (0.86 ms unpinned against 2.8-7.3 ms).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx

from edgemm.errors import EdgemmError
from edgemm.lazy import import_optional
from edgemm.runners.base import BaseRunner, TensorMeta

INSTALL_HINT = "the OpenVINO backend needs the openvino extra: pip install 'edgemm[openvino]'."


def openvino():
    """The openvino module, or one EdgemmError naming the extra to install."""
    return import_optional("openvino", INSTALL_HINT)


def cache_dir() -> Path | None:
    """Where compiled models are cached (None: caching off)."""
    value = os.environ.get("EDGEMM_OPENVINO_CACHE")
    if value is not None:
        return Path(value) if value else None
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgemm" / "openvino"


def _onnx_io_names(model: str | Path | bytes) -> set[str]:
    """The graph's input and output names as the ONNX file spells them (the names feeds and fusion maps use)."""
    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model), load_external_data=False)
    return {v.name for v in list(proto.graph.input) + list(proto.graph.output)}


def _port_name(port, names: set[str]) -> str:
    """OpenVINO gives a tensor every name it had on the way (an output named "emb" made by node "ef" is
    {"ef", "emb"}): the ONNX graph's own name is the one to use."""
    mine = sorted(port.get_names() & names)
    return mine[0] if mine else port.get_any_name()


def _meta(ports, names: set[str]) -> dict[str, TensorMeta]:
    out = {}
    for port in ports:
        name = _port_name(port, names)
        try:
            dtype = np.dtype(port.get_element_type().to_dtype())
        except Exception as exc:  # noqa: BLE001 - OpenVINO types numpy has no name for (e.g. string)
            raise EdgemmError(f"Tensor: {name} | Has type {port.get_element_type()}; expected a numeric tensor "
                              "type.") from exc
        shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
        out[name] = TensorMeta(name, dtype, shape)
    return out


class OpenVINORunner(BaseRunner):
    """Runs an ONNX model (path or serialized bytes) with the OpenVINO runtime on the CPU.

    threads: inference threads (None: OpenVINO's default, one per physical core).
    """

    backend = "openvino"

    def __init__(self, model: str | Path | bytes, threads: int | None = None, name: str | None = None,
                 device: str = "CPU"):
        super().__init__(name or (Path(model).name if not isinstance(model, bytes) else None))
        if threads is not None and threads < 1:
            raise EdgemmError(f"Threads: {threads} | Expected a positive number of threads.")
        self.model = model
        self.threads = threads
        self.device = device
        self.compiled = None
        self.request = None

    def properties(self) -> dict:
        props = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False}
        if self.threads:
            props["INFERENCE_NUM_THREADS"] = self.threads
        cache = cache_dir()
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            props["CACHE_DIR"] = str(cache)
        return props

    def activate_impl(self) -> None:
        ov = openvino()
        core = ov.Core()
        try:
            # A path compiles straight from the file (the cache is keyed by it); bytes are read in memory.
            model = str(self.model) if not isinstance(self.model, bytes) else core.read_model(io.BytesIO(self.model))
            self.compiled = core.compile_model(model, self.device, self.properties())
        except Exception as exc:  # OpenVINO raises RuntimeError with a multi-line trace of its frontends
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EdgemmError(f"Model: {self.name} | OpenVINO could not load it: {first}") from exc
        self.request = self.compiled.create_infer_request()
        names = _onnx_io_names(self.model)
        self._inputs = _meta(self.compiled.inputs, names)
        self._outputs = _meta(self.compiled.outputs, names)
        self._input_ports = {_port_name(port, names): port for port in self.compiled.inputs}
        self._output_ports = [(port, _port_name(port, names)) for port in self.compiled.outputs]

    def deactivate_impl(self) -> None:
        self.request = None
        self.compiled = None

    def input_metadata_impl(self):
        return self._inputs

    def output_metadata_impl(self):
        return self._outputs

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.request.infer({self._input_ports[k]: v for k, v in feed.items()})
        # The request's output tensors are reused by the next inference: hand out copies.
        return {name: np.array(self.request.get_tensor(port).data, copy=True) for port, name in self._output_ports}

    @classmethod
    def preload(cls) -> None:
        """Import openvino and load the CPU plugin once (its first Core is the slow part)."""
        if getattr(cls, "_preloaded", False):
            return
        openvino().Core().get_property("CPU", "FULL_DEVICE_NAME")
        cls._preloaded = True

    def describe(self) -> str:
        threads = f", {self.threads} threads" if self.threads else ""
        return f"openvino {self.device.lower()}{threads}"
