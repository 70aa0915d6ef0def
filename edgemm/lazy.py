"""Lazy imports of optional, heavy or hardware-bound modules.

tensorrt, the CUDA bindings and sounddevice are never imported when edgemm is imported: they may be
missing (a CPU-only install), or present but unusable (tensorrt-lean without a GPU driver segfaults on
first use; sounddevice raises OSError without the PortAudio library). The import happens on first
attribute access, and a failure becomes an EdgemmError that says what to install.
"""

from __future__ import annotations

import importlib
import types

from edgemm.errors import EdgemmError


class LazyModule(types.ModuleType):
    """A stand-in module that imports the real one on first attribute access."""

    def __init__(self, name: str, install_hint: str):
        super().__init__(name)
        self._lazy_name = name
        self._lazy_hint = install_hint
        self._lazy_module = None

    def _load(self):
        if self._lazy_module is None:
            self._lazy_module = import_optional(self._lazy_name, self._lazy_hint)
        return self._lazy_module

    def __getattr__(self, attr):
        if attr.startswith("_lazy_"):
            raise AttributeError(attr)
        return getattr(self._load(), attr)

    def __dir__(self):
        return dir(self._load())


def lazy_import(name: str, install_hint: str = "") -> LazyModule:
    """Return a module proxy; the import runs (and may fail with EdgemmError) on first use."""
    return LazyModule(name, install_hint)


def import_optional(name: str, install_hint: str = ""):
    """Import a module now, or raise EdgemmError naming the module and how to get it."""
    try:
        return importlib.import_module(name)
    except (ImportError, OSError) as exc:  # OSError: a wheel whose shared library is missing
        hint = f" Note: {install_hint}" if install_hint else ""
        raise EdgemmError(f"Module: {name} | Could not be imported ({exc}).{hint}") from exc


def is_available(name: str) -> bool:
    """True when the module imports (it is then imported). Never raises."""
    try:
        importlib.import_module(name)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not usable here"
        return False
