"""Importing optional, heavy or hardware-bound modules when they are used, never at import time.

tensorrt, the CUDA bindings, sounddevice, paho-mqtt, matplotlib, torch, openvino and nncf may be missing (a CPU-only or a
device install), or present but unusable (tensorrt-lean without a GPU driver segfaults on first use;
sounddevice raises OSError without the PortAudio library). Code that needs one imports it inside the
function that uses it, through ``import_optional`` (or ``import_pyplot``), so that a failure is one
EdgemmError that says what to install. Everything else (numpy, onnx, onnxruntime, cv2, the standard
library, edgemm's own modules) is imported at the top of a module.
"""

from __future__ import annotations

import importlib

from edgemm.errors import EdgemmError


def import_optional(name: str, install_hint: str = ""):
    """Import a module now, or raise EdgemmError naming the module and how to get it."""
    try:
        return importlib.import_module(name)
    except (ImportError, OSError) as exc:  # OSError: a wheel whose shared library is missing
        hint = f" Note: {install_hint}" if install_hint else ""
        raise EdgemmError(f"Module: {name} | Could not be imported ({exc}).{hint}") from exc


def import_pyplot():
    """matplotlib.pyplot drawing into files (the Agg backend: a device has no display), or EdgemmError."""
    matplotlib = import_optional("matplotlib", "pip install matplotlib (or the edgemm[demo] extra)")
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")
