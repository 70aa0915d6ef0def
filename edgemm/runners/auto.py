"""``--backend auto``: the fastest backend present on this machine whose outputs agree with the reference.

On activation the runner looks the choice up in a small JSON cache keyed by the graph file's hash, the
threads and the machine (CPU, cores, architecture, runtime versions). On a miss it runs a short trial: every
candidate that is installed and activates (ONNX Runtime on the CPU, ONNX Runtime's GPU providers where
they really run, OpenVINO, the bundle's TensorRT engine) infers one synthesised feed; those whose outputs
agree with ONNX Runtime on the CPU (the reference: the runtime every converter measures with; for an INT8
graph, within the closeness floor convert holds INT8 to, COSINE_MIN_INT8) are timed
interleaved, and the fastest wins. The choice is printed to stderr once and recorded in the cache
(``EDGEMM_AUTO_CACHE`` names the file; default ~/.cache/edgemm/auto-backend.json), so a service restart
does not repeat the trial. The chosen runner then does the work; this one only delegates to it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort

from edgemm import bench
from edgemm.bundle import detect_precision, file_sha256
from edgemm.errors import EdgemmError
from edgemm.feeds import synthesize
from edgemm.outputs import write_json
from edgemm.runners import make_runner
from edgemm.runners.base import BaseRunner

log = logging.getLogger(__name__)

REFERENCE = "onnxruntime"
TRIAL_S = 1.0  # interleaved timing of all candidates together (a few hundred inferences of a small model)
# Agreement with the reference: outputs as close as FP32 kernels of two runtimes are (different summation
# order, fused activations), far tighter than any INT8 or FP16 rounding.
COSINE_MIN = 0.9999
# A quantized (Q/DQ) graph's int8 rounding is not one runtime's to another's (requantisation, activations
# fused into the convolution, VNNI against reference kernels): OpenVINO ran CenterFace's NNCF graph at
# cosine 0.9927 to ONNX Runtime, and auto fell back to ONNX Runtime at 79 ms against OpenVINO's 11.5 ms.
# Agreement for such a graph is the closeness floor `edgemm convert` holds an INT8 graph to against FP32
# (converters/convert.py MIN_COSINE), still far above a runtime that computes the graph wrongly; and for an
# output that quantization itself moved further from FP32 (CenterFace's sub-cell offsets: cosine 0.958 on
# its data, 0.98 between the two runtimes on the trial's noise), what the conversion measured for it.
COSINE_MIN_INT8 = 0.99
REL_MAX_ABS = 1e-3
# ... or differences below this outright: an output that is ~0 on the trial's feed (PP-OCR's text map on an
# input without text peaks at 1e-6) has a cosine of rounding noise and no scale to be relative to.
ABS_MAX = 1e-5


def cache_path() -> Path:
    value = os.environ.get("EDGEMM_AUTO_CACHE")
    if value:
        return Path(value)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgemm" / "auto-backend.json"


def machine_key(threads: int | None) -> str:
    """What makes a timing valid elsewhere: CPU, cores, architecture, the runtimes' versions, threads."""
    m = bench.machine()
    return "|".join(str(v) for v in (m["cpu"], m["cores"], platform.machine(), m.get("onnxruntime"),
                                     m.get("openvino"), f"threads={threads}"))


def candidates(bundle, graph: str) -> list[str]:
    """Backend specs worth trying here, the reference first. Only what is installed; whether it really
    runs is found out by activating it."""
    out = [REFERENCE]
    available = set(ort.get_available_providers())
    for option, provider in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        if provider in available:
            out.append(f"onnxruntime:{option}")
    if importlib.util.find_spec("openvino") is not None:
        out.append("openvino")
    if bundle.manifest.graphs[graph].engine and importlib.util.find_spec("tensorrt") is not None:
        out.append("tensorrt")
    return out


def int8_closeness(bundle) -> dict[str, float]:
    """Per output, the mean cosine to FP32 that `edgemm convert` measured for this INT8 bundle on its data
    (report.json's closeness); empty where the bundle has no such report (a Q/DQ model from elsewhere)."""
    try:
        close = json.loads((bundle.root / "report.json").read_text()).get("closeness") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return {n: float(c["cosine"]) for n, c in close.items() if isinstance(c, dict) and "cosine" in c}


def agrees(reference: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
           cosine_min: float = COSINE_MIN, per_output: Mapping[str, float] | None = None) -> tuple[bool, str]:
    """Whether every output matches the reference's as closely as two FP32 runtimes do (cosine_min; for a
    quantized graph COSINE_MIN_INT8, or per output no less than quantization itself kept it to FP32:
    per_output, int8_closeness); and why not."""
    for name, ref in reference.items():
        out = outputs.get(name)
        if out is None or out.shape != ref.shape:
            return False, f"output {name}: shape {None if out is None else out.shape}, expected {ref.shape}"
        a, b = ref.astype(np.float64).ravel(), out.astype(np.float64).ravel()
        if not np.all(np.isfinite(b)):
            return False, f"output {name}: not finite"
        scale = max(float(np.max(np.abs(a))) if a.size else 0.0, 1e-6)
        err = float(np.max(np.abs(a - b))) if a.size else 0.0
        den = float(np.linalg.norm(a) * np.linalg.norm(b))
        cos = float(a @ b / den) if den > 0 else 1.0 if err == 0 else 0.0
        if err > max(REL_MAX_ABS * scale, ABS_MAX) and cos < min(cosine_min, (per_output or {}).get(name, 1.0)):
            return False, f"output {name}: cosine {cos:.6f}, max abs difference {err:.3g}"
    return True, ""


def _trial(bundle, graph: str, threads: int | None, name: str) -> dict:
    """Run the trial: {"backend": spec, "p50_ms": {spec: ms}, "rejected": {spec: reason}}."""
    spec = bundle.manifest.graphs[graph]
    quantized = detect_precision(bundle.load_graph(graph, load_weights=False)) == "int8"
    rejected: dict[str, str] = {}
    agreeing: list[tuple[str, BaseRunner]] = []
    feed = reference = None
    for backend in candidates(bundle, graph):
        runner = make_runner(bundle, graph, backend, threads, name=backend)
        try:
            runner.activate()
            if feed is None:
                feed = synthesize(runner.input_metadata(), spec)
            outputs = runner.infer(feed)
        except EdgemmError as exc:
            if backend == REFERENCE:
                raise
            rejected[backend] = str(exc)
            continue
        finally:
            runner.deactivate()
        if reference is None:
            reference = outputs
            ok, why = True, ""
        else:
            ok, why = agrees(reference, outputs, COSINE_MIN_INT8, int8_closeness(bundle)) if quantized \
                else agrees(reference, outputs)
        if ok:
            agreeing.append((backend, runner))
        else:
            rejected[backend] = f"disagrees with {REFERENCE}: {why}"
    if len(agreeing) == 1:
        return {"backend": REFERENCE, "p50_ms": {}, "rejected": rejected}
    results = bench.run([bench.Target(b, r, feed=feed) for b, r in agreeing], duration_s=TRIAL_S, warmup_s=0.1)
    # One thread each: CPU time per inference, which other jobs on a shared machine do not inflate (as
    # converters.int8.pick_fastest); with more threads the wall time is the latency that matters.
    measure = "cpu_ms" if threads == 1 else "latency_ms"
    p50 = {r["model"]: r[measure]["p50"] for r in results}
    return {"backend": min(p50, key=p50.get), "p50_ms": p50, "rejected": rejected}


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # absent or damaged: the trial runs again and rewrites it


def choose(bundle, graph: str, threads: int | None, name: str) -> tuple[dict, bool]:
    """The trial's result for this graph on this machine, from the cache or run now; (result, from_cache)."""
    path = cache_path()
    key = f"{file_sha256(bundle.graph_path(graph))}|{machine_key(threads)}"
    cache = _read_cache(path)
    if key in cache and isinstance(cache[key], dict) and "backend" in cache[key]:
        return cache[key], True
    result = _trial(bundle, graph, threads, name)
    cache[key] = result
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, cache)
    except (OSError, EdgemmError) as exc:  # a read-only home: the choice still holds for this run
        log.warning("backend auto: could not write the cache %s (%s)", path, exc)
    return result, False


def summary(name: str, result: dict, from_cache: bool) -> str:
    p50 = result["p50_ms"]
    timed = ", ".join(f"{b} {ms:.3f} ms" for b, ms in sorted(p50.items(), key=lambda kv: kv[1]))
    parts = [f"edgemm: backend auto for {name}: {result['backend']}"]
    parts.append(f"(p50 {timed})" if timed else "(the only backend here that runs and agrees)")
    if result["rejected"]:
        parts.append("; not used: " + "; ".join(f"{b}: {why}" for b, why in result["rejected"].items()))
    if from_cache:
        parts.append(f"[cached in {cache_path()}]")
    return " ".join(parts)


class AutoRunner(BaseRunner):
    """Delegates to the runner of the backend the trial chose (see the module docstring)."""

    backend = "auto"

    def __init__(self, bundle, graph: str, threads: int | None = None, name: str | None = None):
        super().__init__(name or bundle.name)
        self.bundle, self.graph, self.threads = bundle, graph, threads
        self.chosen: str | None = None
        self.inner: BaseRunner | None = None

    def activate_impl(self) -> None:
        result, cached = choose(self.bundle, self.graph, self.threads, self.name)
        print(summary(self.name, result, cached), file=sys.stderr, flush=True)
        self.chosen = result["backend"]
        self.inner = make_runner(self.bundle, self.graph, self.chosen, self.threads, name=self.name)
        self.inner.activate()

    def deactivate_impl(self) -> None:
        if self.inner is not None:
            self.inner.deactivate()
            self.inner = None

    def input_metadata_impl(self):
        return self.inner.input_metadata()

    def output_metadata_impl(self):
        return self.inner.output_metadata()

    def infer_impl(self, feed):
        outputs = self.inner.infer_impl(feed)  # the feed was checked once, by this runner's infer()
        self.last_breakdown = self.inner.last_breakdown
        return outputs

    def describe(self) -> str:
        return f"auto -> {self.inner.describe()}" if self.inner is not None else "auto"
