"""`edgemm doctor`: runs on any machine and says what is there, what is missing and the fix.

Here (no GPU, not a Jetson) the command runs for real and must say so cleanly; the Jetson branches are
driven by real L4T release files like the ones JetPack installs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgemm.commands import doctor
from edgemm.runners import cuda
from tests.conftest import REPO

PROBE = cuda.probe()


def _doctor(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgemm", "doctor", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


@pytest.mark.parametrize("line,expected", [
    ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64", ("36.4.3", "6.1/6.2", "10.3")),
    ("# R36 (release), REVISION: 3.0, GCID: 1, BOARD: generic", ("36.3.0", "6.0", "8.6")),
    ("# R35 (release), REVISION: 5.0, GCID: 1", ("35.5.0", "5.x", "8.5")),
    ("# R38 (release), REVISION: 2.0, GCID: 1", ("38.2.0", "7.0/7.1", "10.13")),
])
def test_jetpack_from_the_l4t_release(line, expected):
    jp = doctor.jetpack_of(line)
    assert (jp["l4t"], jp["jetpack"], jp["tensorrt"]) == expected
    assert doctor.jetpack_of("not a release line") is None


@pytest.mark.skipif(PROBE.found, reason="checks the no-GPU path; this machine has a GPU")
def test_off_a_jetson_without_a_gpu_it_says_so_and_passes(tmp_path):
    r = _doctor("--tegra-release", str(tmp_path / "absent"), "--json", str(tmp_path / "d.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[n/a ] platform: not a Jetson" in r.stdout and "no check failed" in r.stdout
    assert "[n/a ] CUDA: no usable NVIDIA GPU here" in r.stdout and "--backend onnxruntime" in r.stdout
    assert "Traceback" not in r.stderr
    checks = {c["name"]: c for c in json.loads((tmp_path / "d.json").read_text())["checks"]}
    assert set(checks) == {"platform", "CUDA", "CUDA bindings", "TensorRT", "cuDNN", "power mode", "groups",
                           "cameras", "audio"}
    assert checks["TensorRT"]["status"] == "n/a" and "not loaded" in checks["TensorRT"]["detail"]


@pytest.mark.skipif(PROBE.found, reason="checks the no-GPU path; this machine has a GPU")
def test_on_a_jetson_without_a_usable_gpu_each_failure_has_its_fix(tmp_path):
    """The same machine seen as a JetPack 6.2 board: no CUDA device is a failure there, with the fix."""
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n")
    r = _doctor("--tegra-release", str(release), "--json", "-")
    assert r.returncode == 1
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["platform"]["status"] == "ok" and "JetPack 6.1/6.2" in checks["platform"]["detail"]
    for name in ("CUDA", "CUDA bindings", "TensorRT"):
        assert checks[name]["status"] == "fail" and checks[name]["fix"], checks[name]
    assert "python3-libnvinfer" in checks["TensorRT"]["fix"]
    assert "SBSA" in checks["CUDA bindings"]["fix"] and "pycuda" in checks["CUDA bindings"]["fix"]


def test_an_old_jetpack_is_a_failure_with_the_reflash_fix():
    c = doctor.check_platform({"jetpack": doctor.jetpack_of("# R36 (release), REVISION: 3.0, GCID: 1"),
                               "tegra_release": "x"})
    assert c.status == "fail" and "JetPack 6.1+" in c.fix
