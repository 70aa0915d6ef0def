"""The runner interface every backend implements, in the Polygraphy manner.

A runner is a context manager: ``activate()`` loads the model and allocates what it needs,
``deactivate()`` frees it. ``infer(feed)`` is fixed here: it checks names, dtypes and shapes against
the model's own metadata with one clear message per problem, times the call, and hands over to the
backend's ``infer_impl``. Backends override only the ``*_impl`` hooks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from edgemm.errors import EdgemmError


@dataclass(frozen=True)
class TensorMeta:
    name: str
    dtype: np.dtype
    shape: tuple  # ints for fixed dims; None or a symbolic name (str) for dynamic dims

    def shape_str(self) -> str:
        return "(" + ", ".join("?" if d is None else str(d) for d in self.shape) + ")"


def check_feed(feed: Mapping[str, np.ndarray], metadata: Mapping[str, TensorMeta], what: str = "Input tensor") -> None:
    """Raise EdgemmError naming the first tensor whose name, dtype or shape does not fit."""
    expected = ", ".join(metadata) or "none"
    for name in metadata:
        if name not in feed:
            raise EdgemmError(f"{what}: {name} | Missing from the feed; expected inputs: {expected}.")
    for name, value in feed.items():
        meta = metadata.get(name)
        if meta is None:
            raise EdgemmError(f"{what}: {name} | Not an input of the model; expected inputs: {expected}.")
        if not isinstance(value, np.ndarray):
            raise EdgemmError(f"{what}: {name} | Received {type(value).__name__}; expected a numpy array.")
        if value.dtype != meta.dtype:
            raise EdgemmError(f"{what}: {name} | Received dtype {value.dtype}; expected {meta.dtype}.")
        if len(value.shape) != len(meta.shape) or any(
            isinstance(d, int) and d != v for d, v in zip(meta.shape, value.shape)
        ):
            hint = ""
            if len(value.shape) == len(meta.shape):  # fixed dims that may be an export's placeholders
                hint = (f" If the graph's fixed dims are placeholders, --shape {name}:DIMS on the .onnx runs a copy "
                        f"at that size (what was fed: {'x'.join(map(str, value.shape))}).")
            raise EdgemmError(f"{what}: {name} | Received shape {tuple(value.shape)}; expected {meta.shape_str()}."
                              + hint)


class BaseRunner:
    """Base class of all runners. Subclasses implement the ``*_impl`` methods only."""

    backend = "base"

    def __init__(self, name: str | None = None):
        self.name = name or type(self).__name__
        self.is_active = False
        self.last_inference_time: float | None = None  # seconds, wall clock around infer_impl
        self.last_breakdown: dict[str, float] | None = None  # ms per phase, where a backend measures it

    # -- lifecycle ---------------------------------------------------------------------------------
    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.deactivate()

    def activate(self) -> None:
        if not self.is_active:
            self.activate_impl()
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self.is_active = False
            self.deactivate_impl()

    # -- metadata ----------------------------------------------------------------------------------
    def input_metadata(self) -> dict[str, TensorMeta]:
        self._require_active("input_metadata")
        return self.input_metadata_impl()

    def output_metadata(self) -> dict[str, TensorMeta]:
        self._require_active("output_metadata")
        return self.output_metadata_impl()

    # -- inference ---------------------------------------------------------------------------------
    def infer(self, feed: Mapping[str, np.ndarray], check_inputs: bool = True) -> dict[str, np.ndarray]:
        """Run one inference. The outputs belong to the caller: every backend returns fresh arrays."""
        self._require_active("infer")
        if check_inputs:
            check_feed(feed, self.input_metadata())
        start = time.perf_counter()
        outputs = self.infer_impl(feed)
        self.last_inference_time = time.perf_counter() - start
        return outputs

    def _require_active(self, what: str) -> None:
        if not self.is_active:
            raise RuntimeError(f"{self.name} | Must be activated (use it as a context manager) before {what}()")

    # -- hooks -------------------------------------------------------------------------------------
    def activate_impl(self) -> None:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        raise NotImplementedError

    def input_metadata_impl(self) -> dict[str, TensorMeta]:
        raise NotImplementedError

    def output_metadata_impl(self) -> dict[str, TensorMeta]:
        raise NotImplementedError

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @classmethod
    def preload(cls) -> None:
        """Pay the backend's process-wide one-time costs now (imports, global state); idempotent."""

    def describe(self) -> str:
        """A short description of what actually runs (backend, device, provider)."""
        return self.backend
