"""Shared fixtures: real ONNX models and bundles written to a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from tests import onnx_models

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def av_onnx(tmp_path) -> Path:
    """A plain two-input (video, audio) ONNX file with no manifest."""
    path = tmp_path / "av.onnx"
    onnx.save(onnx_models.av_early_model(), str(path))
    return path


@pytest.fixture
def av_bundle(tmp_path) -> Path:
    return onnx_models.write_av_bundle(tmp_path / "av.edgemm")


def run_cli(*args, cwd=None, timeout=300, env=None) -> subprocess.CompletedProcess:
    """Run `python -m edgemm ARGS` in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "edgemm", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=timeout, env=full_env)


@pytest.fixture
def cli():
    return run_cli


# Python code that makes the modules named in sys.argv[1] (comma-separated) fail to import exactly as on a
# machine without them (ImportError), whatever this machine has installed.
BLOCK_IMPORTS = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, Block())
for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]
"""


def run_cli_without(blocked: list[str], *args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """run_cli with the named modules made unimportable: what a user without that extra sees."""
    code = BLOCK_IMPORTS + "\nfrom edgemm.cli import main\nsys.exit(main(sys.argv[2:]))\n"
    return subprocess.run([sys.executable, "-c", code, ",".join(blocked), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or REPO, timeout=timeout)
