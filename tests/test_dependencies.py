"""Every edgemm and converters module imports, and every command's --help works, without the optional
libraries: no tensorrt, no CUDA binding, no sounddevice/PortAudio, no paho-mqtt, torch, matplotlib,
prometheus_client, openvino or nncf.

The subprocess installs an import hook that makes those modules fail to import exactly as they do on a
machine without them (ImportError; sounddevice raises OSError there when PortAudio is missing), so the test
holds whatever this machine happens to have installed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import BLOCK_IMPORTS, REPO

OPTIONAL = ["tensorrt", "tensorrt_lean", "tensorrt_dispatch", "cuda", "pycuda", "sounddevice", "_sounddevice",
            "paho", "torch", "torchaudio", "torchvision", "matplotlib", "onnxconverter_common", "sklearn",
            "scipy", "jtop", "prometheus_client", "gi", "openvino", "nncf"]

SCRIPT = BLOCK_IMPORTS + textwrap.dedent("""
    import importlib, pkgutil, io, contextlib

    imported = []
    for pkg_name in ("edgemm", "edgemm.converters"):
        pkg = importlib.import_module(pkg_name)
        imported.append(pkg_name)
        for info in pkgutil.walk_packages(pkg.__path__, pkg_name + "."):
            if info.name.endswith("__main__"):  # runs the CLI when imported
                continue
            importlib.import_module(info.name)
            imported.append(info.name)
    leaked = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
    assert not leaked, leaked

    from edgemm.cli import build_parser, main
    commands = sorted(build_parser()._subparsers._group_actions[0].choices)
    for cmd in [None] + commands:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                main(([cmd] if cmd else []) + ["--help"])
            except SystemExit as e:
                assert e.code == 0, (cmd, e.code)
        assert "usage:" in out.getvalue(), cmd
    print("MODULES", len(imported))
    print("COMMANDS", ",".join(commands))
""")


def test_imports_and_help_without_optional_libraries():
    proc = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(OPTIONAL)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert int(lines["MODULES"]) >= 15
    assert {"info", "bench"} <= set(lines["COMMANDS"].split(","))


def test_blocking_really_blocks():
    """The hook must make a blocked module fail, or the test above proves nothing."""
    code = SCRIPT.split("imported = []")[0] + "\nimport numpy\n"
    proc = subprocess.run([sys.executable, "-c", code, "numpy"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode != 0 and "blocked by the test" in proc.stderr
