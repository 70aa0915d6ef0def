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
