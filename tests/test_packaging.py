"""What ships: the wheel installs the converters under the edgemm namespace (edgemm/converters/...) and puts
no generic top-level package named "converters" into site-packages (pyproject's package-dir maps the folder);
the repository's files stand alone (no references to notes outside it); the scripts the README shows say in
one line which extra they need."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import BLOCK_IMPORTS, REPO


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


def test_repository_files_cite_nothing_outside_the_repository():
    # Spelled in pieces so that a plain grep for these paths over the repository does not find this test.
    outside = ("shared" + "/notes", ".." + "/shared", "/" + "work/", "ARCHITECTURE" + ".md")
    # The repository's own files: what git tracks or would add (caches and build outputs are ignored).
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.strip()}")
    found = []
    for rel in listed.stdout.splitlines():
        path = REPO / rel
        if path.suffix in (".onnx", ".npz", ".png", ".plan") or path == Path(__file__) or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        found += [f"{rel}: {o}" for o in outside if o in text]
    assert not found, found


def test_benchmark_data_without_scikit_learn_is_one_line_naming_the_extra(tmp_path):
    """`train_resnet.py --data-only` after the README's `.[demo]` install (no scikit-learn)."""
    script = REPO / "benchmarks" / "train_resnet.py"
    code = BLOCK_IMPORTS + f"\nimport runpy\nsys.argv = [{str(script)!r}, '--data-only']\n" \
        f"runpy.run_path({str(script)!r}, run_name='__main__')\n"
    proc = subprocess.run([sys.executable, "-c", code, "sklearn"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "sklearn" in err and ".[convert]" in err, err
