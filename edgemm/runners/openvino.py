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
Dynamic input dimensions (a batch "N", a detector's free height and width) are fixed to the first feed's
shape before compiling, and recompiled (once per new shape) when a feed differs: OpenVINO's CPU plugin runs a
model compiled for dynamic shapes with shape-generic kernels and per-inference shape inference, which made
the driving detector (1x3x192x192) 2.1x slower than the same graph compiled static on this machine.
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


def static_onnx(model: str | Path | bytes, shapes: Mapping[str, tuple]) -> bytes:
    """The serialized ONNX graph with these inputs' dimensions fixed."""
    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    for value in proto.graph.input:
        if value.name in shapes:
            for dim, size in zip(value.type.tensor_type.shape.dim, shapes[value.name]):
                dim.Clear()
                dim.dim_value = int(size)
    return proto.SerializeToString()


_PROBE = """
import sys, openvino as ov
core = ov.Core()
core.compile_model(core.read_model(sys.argv[1]), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
"""


def compile_crash(model: bytes, shapes: Mapping[str, tuple], timeout_s: float = 600) -> str | None:
    """Why OpenVINO cannot compile this graph, found out in a child process (None: it compiles).

    OpenVINO 2026.4's CPU plugin killed the whole process with SIGFPE compiling some Q/DQ graphs (the Q/DQ
    box decode of the driving detector, a Q/DQ candidate of PP-OCRv4's recogniser): a converter that tries
    candidate graphs asks here first, so a crash costs one candidate, not the conversion."""
    import signal
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgemm-ov-probe-") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(static_onnx(model, shapes))
        try:
            proc = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return f"OpenVINO did not compile it within {timeout_s:g} s"
    if proc.returncode == 0:
        return None
    if proc.returncode < 0:
        return f"OpenVINO crashed compiling it ({signal.Signals(-proc.returncode).name})"
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return f"OpenVINO could not compile it: {lines[-1] if lines else f'exit {proc.returncode}'}"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
        self._model = None  # the read ov.Model while some input dimension is dynamic (reshaped per feed)
        self._by_shape: dict = {}  # feed shapes -> (compiled model, infer request) for a dynamic model

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
        self._core = ov.Core()
        try:
            # Bytes are read in memory; a path is read from the file (the compiled-model cache is keyed by the
            # model's content and the properties).
            model = self._core.read_model(io.BytesIO(self.model) if isinstance(self.model, bytes) else str(self.model))
            static = all(port.get_partial_shape().is_static for port in model.inputs)
            # A dynamic model is compiled per feed shape, on first use (_static_request).
            self._model = None if static else model
            self.compiled = self._core.compile_model(model, self.device, self.properties()) if static else None
        except Exception as exc:  # OpenVINO raises RuntimeError with a multi-line trace of its frontends
            raise EdgemmError(f"Model: {self.name} | OpenVINO could not load it: {_first_line(exc)}") from exc
        ported = self.compiled if static else model
        self.request = self.compiled.create_infer_request() if static else None
        names = self._names = _onnx_io_names(self.model)
        self._inputs = _meta(ported.inputs, names)
        self._outputs = _meta(ported.outputs, names)
        self._input_ports = {_port_name(port, names): port for port in ported.inputs}
        self._output_ports = [(port, _port_name(port, names)) for port in ported.outputs]
        self._by_shape = {}

    def _static_request(self, feed: Mapping[str, np.ndarray]):
        """The infer request of the model compiled for these feed shapes (compiled on first use)."""
        key = tuple((name, feed[name].shape) for name in sorted(feed))
        entry = self._by_shape.get(key)
        if entry is None:
            # The ONNX graph with its inputs' dimensions fixed, read anew: ov.Model.reshape() re-infers
            # shapes through OpenVINO's own ops and crashed the process (SIGFPE) on Q/DQ graphs here.
            model = self._core.read_model(io.BytesIO(static_onnx(self.model, {k: v.shape for k, v in feed.items()})))
            try:
                compiled = self._core.compile_model(model, self.device, self.properties())
            except Exception as exc:  # noqa: BLE001 - a shape the graph cannot take: say so in one line
                raise EdgemmError(f"Model: {self.name} | OpenVINO could not compile it for input shapes "
                                  f"{dict(key)}: {_first_line(exc)}") from exc
            ports = {_port_name(port, self._names): port for port in compiled.inputs}
            outs = [(port, _port_name(port, self._names)) for port in compiled.outputs]
            entry = self._by_shape[key] = (compiled.create_infer_request(), ports, outs)
        return entry

    def deactivate_impl(self) -> None:
        self.request = None
        self.compiled = None
        self._model = None
        self._by_shape = {}

    def input_metadata_impl(self):
        return self._inputs

    def output_metadata_impl(self):
        return self._outputs

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._model is None:
            request, ports, outs = self.request, self._input_ports, self._output_ports
        else:
            request, ports, outs = self._static_request(feed)
        # share_inputs: OpenVINO reads the arrays in place instead of copying them into its own tensors (the
        # call is synchronous, so nothing changes them meanwhile): 0.08 ms less CPU per call on the streaming
        # benchmark's 1.7 ms model, about 5 % (RESULTS.md section 5.2). A shared array must be C-contiguous.
        request.infer({ports[k]: np.ascontiguousarray(v) for k, v in feed.items()}, share_inputs=True)
        # The request's output tensors are reused by the next inference: hand out copies.
        return {name: np.array(request.get_tensor(port).data, copy=True) for port, name in outs}

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
