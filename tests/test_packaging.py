"""The wheel installs the converters under the edgemm namespace (edgemm/converters/...) and puts no generic
top-level package named "converters" into site-packages (pyproject's package-dir maps the folder)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from tests.conftest import REPO


def test_wheel_holds_edgemm_converters_and_no_top_level_converters(tmp_path):
    # Built from a copy: pip builds in the source tree, which must not gain build/ or egg-info folders.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("edgemm", "converters"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                           str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("edgemm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    converters = {p.name for p in (REPO / "converters").glob("*.py")}
    assert {n.split("/")[-1] for n in names if n.startswith("edgemm/converters/")} == converters
    assert not [n for n in names if n.startswith("converters/")]
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"edgemm"}
