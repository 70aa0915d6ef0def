"""deploy/jetson: install script, systemd unit, container recipe, power script, and the watchdog protocol.

Linters run for real (shellcheck, systemd-analyze verify, hadolint); the install script runs in --dry-run
mode against real /etc/nv_tegra_release lines of each JetPack; pip resolves the Jetson requirements for
aarch64 / Python 3.10 under the script's constraints (needs PyPI); the watchdog talks to a real datagram
socket, the way systemd listens.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edgemm import watchdog
from tests.conftest import REPO

DEPLOY = REPO / "deploy" / "jetson"
INSTALL = DEPLOY / "install.sh"
POWER = DEPLOY / "power.sh"
UNIT = DEPLOY / "edgemm.service"

# Real first lines of /etc/nv_tegra_release, and what the script must make of them.
RELEASES = {
    "jp62": "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025",
    "jp70": "# R38 (release), REVISION: 2.0, GCID: 41844464, BOARD: generic, EABI: aarch64, DATE: Fri Aug 22 00:55:42 UTC 2025",
    "jp72": "# R39 (release), REVISION: 2.0, GCID: 67890, BOARD: generic",
    "jp60": "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, DATE: Mon May  6 17:34:21 UTC 2024",
    "jp51": "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023",
}


def _tool(name: str) -> str:
    path = shutil.which(name) or (shutil.which(name, path=str(Path(sys.executable).parent)))
    if not path:
        pytest.skip(f"{name} is not installed (apt/pip: see the report for .ci/run)")
    return path


def _install(tmp_path, *args, release: str | None = "jp62") -> subprocess.CompletedProcess:
    cmd = ["bash", str(INSTALL), "--dry-run", "--no-apt", *args]
    if release:
        f = tmp_path / "nv_tegra_release"
        f.write_text(RELEASES[release] + "\n# KERNEL_VARIANT: oot\n")
        cmd += ["--tegra-release", str(f)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _written(stdout: str, path: str) -> str:
    """The content a --dry-run would write to path."""
    m = re.search(rf"^\+ write {re.escape(path)}:\n((?:    .*\n|\n)*)", stdout, re.M)
    assert m, f"{path} not written:\n{stdout}"
    return "\n".join(line[4:] for line in m.group(1).splitlines())


# -- shell scripts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", [INSTALL, POWER], ids=lambda p: p.name)
def test_shellcheck_passes(script):
    r = subprocess.run([_tool("shellcheck"), "--severity=style", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert os.access(script, os.X_OK), f"{script.name} must be executable"


def test_install_plans_jetpack_6_with_system_opencv_kept(tmp_path):
    r = _install(tmp_path, "--system-opencv", "yes", "--extras", "mqtt,live", "--render-group", "no")
    assert r.returncode == 0, r.stderr
    assert "L4T R36.4: JetPack 6" in r.stderr and "CUDA 12.6: cuda-python>=12.6,<12.7" in r.stderr
    out = r.stdout
    assert "python3 -m venv --system-site-packages /opt/edgemm/venv" in out
    cons = _written(out, "/opt/edgemm/constraints.txt")
    assert "numpy<2" in cons.splitlines()
    for wheel in ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"):
        assert f"{wheel}<0" in cons.splitlines()
    pip_line = next(line for line in out.splitlines() if "requirements-jetson.txt" in line)
    assert "cuda-python\\>=12.6\\,\\<12.7" in pip_line and "paho-mqtt" in pip_line and "opencv" not in pip_line
    assert "prometheus-client" in pip_line
    assert f"pip install --no-deps {REPO}" in out
    unit = _written(out, "/etc/systemd/system/edgemm.service")
    assert unit == UNIT.read_text().rstrip("\n")


@pytest.mark.parametrize("release,cuda", [("jp70", "13.0"), ("jp72", "13.2")])
def test_install_plans_jetpack_7_with_its_cuda(tmp_path, release, cuda):
    r = _install(tmp_path, "--system-opencv", "no", "--no-service", release=release)
    assert r.returncode == 0, r.stderr
    major, minor = cuda.split(".")
    assert "JetPack 7" in r.stderr and f"cuda-python>={cuda},<{major}.{int(minor) + 1}" in r.stderr
    # No system OpenCV: the headless wheel is installed and nothing forbids it.
    assert "opencv-python-headless\\>=4.8" in r.stdout
    assert "opencv" not in _written(r.stdout, "/opt/edgemm/constraints.txt")
    assert "systemctl" not in r.stdout


@pytest.mark.parametrize("release,why", [("jp60", "JetPack 6.0 with TensorRT 8.6"), ("jp51", "JetPack 5 with TensorRT 8.5")])
def test_install_refuses_jetpacks_without_tensorrt_10(tmp_path, release, why):
    r = _install(tmp_path, release=release)
    assert r.returncode == 1 and why in r.stderr and r.stdout == ""


def test_install_off_a_jetson_asks_for_the_jetpack(tmp_path):
    r = _install(tmp_path, "--tegra-release", str(tmp_path / "missing"), release=None)
    assert r.returncode == 1 and "not a Jetson (inside a container pass --jetpack 6 or 7)" in r.stderr
    r = _install(tmp_path, "--jetpack", "6", "--cuda", "12.6", "--prefix", "/srv/edgemm", "--system-opencv", "yes",
                 release=None)
    assert r.returncode == 0, r.stderr
    unit = _written(r.stdout, "/etc/systemd/system/edgemm.service")
    assert "ExecStart=/srv/edgemm/venv/bin/edgemm run --config /etc/edgemm/run.json" in unit
    for bad in (["--jetpack", "5"], ["--cuda", "twelve"], ["--bogus"], ["--system-opencv", "maybe"]):
        r = _install(tmp_path, *bad)
        assert r.returncode == 1, bad


def _as_nobody() -> list[str]:
    """The command prefix that runs a command as an unprivileged user: none when we are not root, else setpriv
    (util-linux) to nobody, so the root check is exercised where tests run as root (containers, CI)."""
    if os.geteuid() != 0:
        return []
    prefix = [_tool("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups"]
    if subprocess.run([*prefix, "test", "-r", str(INSTALL)]).returncode != 0:
        pytest.skip(f"user nobody cannot read {INSTALL} (checkout not world-readable)")
    return prefix


def test_install_needs_root_unless_dry_run():
    # --jetpack/--cuda instead of a release file: nobody cannot read pytest's tmp_path (0700, root's).
    args = ["--jetpack", "6", "--cuda", "12.6", "--no-apt"]
    r = subprocess.run([*_as_nobody(), "bash", str(INSTALL), *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "run as root (sudo), or with --dry-run" in r.stderr, r.stderr
    assert r.stdout == ""
    r = subprocess.run([*_as_nobody(), "bash", str(INSTALL), *args, "--dry-run"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "python3 -m venv --system-site-packages" in r.stdout, r.stderr


def _toml_dependencies(text: str) -> list[str]:
    """[project] dependencies from pyproject.toml text: tomllib (3.11+), tomli, or, on a bare Python 3.10 (the
    Jetson's), a scanner for the one array we need (strings, comments, commas; brackets inside strings)."""
    for name in ("tomllib", "tomli"):
        try:
            toml = __import__(name)
        except ImportError:
            continue
        return toml.loads(text)["project"]["dependencies"]
    return _scan_dependencies(text)


def _scan_dependencies(text: str) -> list[str]:
    project = re.search(r"^\[project\][ \t]*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    assert project, "pyproject.toml has no [project] table"
    start = re.search(r"^dependencies\s*=\s*\[", project.group(1), re.M)
    assert start, "[project] has no dependencies array"
    body, i, deps = project.group(1), start.end(), []
    while True:
        assert i < len(body), "unterminated dependencies array"
        ch = body[i]
        if ch == "]":
            return deps
        if ch == "#":
            i = body.find("\n", i)
            i = len(body) if i < 0 else i
        elif ch in "\"'":
            end = body.index(ch, i + 1)
            deps.append(body[i + 1:end])
            i = end + 1
        else:
            assert ch in " \t\r\n,", f"unexpected {ch!r} in the dependencies array"
            i += 1


def test_dependency_scanner_reads_what_tomllib_reads():
    text = (REPO / "pyproject.toml").read_text()
    tomllib = pytest.importorskip("tomllib")  # here only to check the Python 3.10 fallback against the real parser
    assert _scan_dependencies(text) == tomllib.loads(text)["project"]["dependencies"]
    tricky = '[project]\nname = "x"\ndependencies = [\n  "a[extra]>=1",  # a comment ]\n  \'b<2\',\n]\n[tool.x]\n'
    assert _scan_dependencies(tricky) == tomllib.loads(tricky)["project"]["dependencies"] == ["a[extra]>=1", "b<2"]


def test_jetson_requirements_are_pyproject_dependencies_without_opencv():
    deps = _toml_dependencies((REPO / "pyproject.toml").read_text())
    want = sorted(d for d in deps if not d.startswith("opencv"))
    have = sorted(line.strip() for line in (DEPLOY / "requirements-jetson.txt").read_text().splitlines()
                  if line.strip() and not line.startswith("#"))
    assert have == want


# What pip prints when it cannot reach the index at all (urllib3 / socket errors), as opposed to an answer.
NETWORK_ERRORS = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable",
                  "Max retries exceeded", "Name or service not known", "Connection refused", "ConnectTimeoutError")


def _network_error(stderr: str) -> bool:
    return any(e in stderr for e in NETWORK_ERRORS)


def _pip_resolve(tmp_path, constraints: str, *reqs: str) -> subprocess.CompletedProcess:
    (tmp_path / "c.txt").write_text(constraints)
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
           "--target", str(tmp_path / "t"), "--python-version", "3.10", "--implementation", "cp",
           "--only-binary=:all:", "--platform", "manylinux2014_aarch64", "--platform", "manylinux_2_17_aarch64",
           "--platform", "manylinux_2_28_aarch64", "-c", str(tmp_path / "c.txt"),
           "-r", str(DEPLOY / "requirements-jetson.txt"), *reqs, "--report", str(tmp_path / "report.json")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_pip_on_jetpack_6_installs_no_opencv_and_refuses_one(tmp_path):
    """What pip would do on a JetPack 6 Jetson (aarch64, Python 3.10) under install.sh's constraints."""
    r = _install(tmp_path, "--system-opencv", "yes", "--no-service")
    constraints = _written(r.stdout, "/opt/edgemm/constraints.txt")
    res = _pip_resolve(tmp_path, constraints, "cuda-python>=12.6,<12.7")
    if res.returncode != 0 and _network_error(res.stderr):
        pytest.skip(f"PyPI not reachable: {res.stderr.strip().splitlines()[-1:]}")
    # Anything else is what this test is for: "No matching distribution found" (no aarch64/cp310 wheel),
    # ResolutionImpossible (a constraint conflict).
    assert res.returncode == 0, res.stderr
    installed = {i["metadata"]["name"].lower(): i["metadata"]["version"]
                 for i in json.loads((tmp_path / "report.json").read_text())["install"]}
    assert not [n for n in installed if n.startswith("opencv")]
    assert int(installed["numpy"].split(".")[0]) < 2
    assert installed["cuda-python"].startswith("12.6")
    assert {"onnx", "onnxruntime", "sounddevice"} <= set(installed)
    # Anything that pulls an OpenCV wheel in is stopped by pip itself.
    res = _pip_resolve(tmp_path, constraints, "opencv-python-headless>=4.8")
    assert res.returncode != 0 and "ResolutionImpossible" in res.stderr


# -- systemd unit --------------------------------------------------------------------------------------


def _verify_unit(tmp_path, text: str) -> subprocess.CompletedProcess:
    # verify checks that ExecStart's program exists: point it at a real executable, keep everything else.
    unit = tmp_path / "edgemm.service"
    unit.write_text(text.replace("/opt/edgemm/venv/bin/edgemm", shutil.which("true")))
    return subprocess.run([_tool("systemd-analyze"), "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60)


def test_unit_passes_systemd_analyze_verify(tmp_path):
    r = _verify_unit(tmp_path, UNIT.read_text())
    # verify exits 0 even on unknown keys or bad values: it must also print nothing.
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stdout + r.stderr


def test_systemd_analyze_catches_a_broken_unit(tmp_path):
    r = _verify_unit(tmp_path, UNIT.read_text().replace("Type=notify", "Type=notfy").replace("Restart=", "Restartt="))
    assert "Failed to parse service type" in r.stderr and "Unknown key 'Restartt'" in r.stderr


def test_unit_runs_edgemm_run_with_restart_and_watchdog():
    keys = dict(line.split("=", 1) for line in UNIT.read_text().splitlines() if "=" in line and not line.startswith("#"))
    assert keys["ExecStart"] == "/opt/edgemm/venv/bin/edgemm run --config /etc/edgemm/run.json"
    assert keys["Type"] == "notify" and keys["NotifyAccess"] == "main" and keys["WatchdogSec"] == "30"
    assert keys["Restart"] == "on-failure" and keys["User"] == "edgemm"
    # The default video source csi://0 goes through nvargus-daemon's socket /tmp/argus_socket: a private /tmp
    # would hide it ("Connecting to nvargus-daemon failed"), and a bind of the socket goes stale when the daemon
    # recreates it. Neither may come back.
    assert "PrivateTmp" not in keys and "BindPaths" not in keys and "BindReadOnlyPaths" not in keys
    assert json.loads((DEPLOY / "run.json").read_text())["video"] == "csi://0"
    assert 'PREFIX=/opt/edgemm' in INSTALL.read_text()


def test_example_run_config_is_valid_for_edgemm_run():
    from edgemm.commands.run import load_config

    cfg = load_config(str(DEPLOY / "run.json"))
    assert cfg["backend"] == "tensorrt" and cfg["model"] == "/var/lib/edgemm/model.edgemm"
    assert cfg["sinks"] == ["jsonl:/var/log/edgemm/results.jsonl?max_mb=50&keep=9"]


def test_example_run_config_bounds_what_its_jsonl_sinks_keep_on_disk():
    """A service runs for months: 541 B per result at 30 per second is 1.4 GB a day unless the file rotates."""
    from edgemm.commands.run import load_config
    from edgemm.sinks import JsonlSink, make_sink

    sinks = [make_sink(s) for s in load_config(str(DEPLOY / "run.json"))["sinks"]]
    jsonl = [s for s in sinks if isinstance(s, JsonlSink)]
    assert jsonl
    for s in jsonl:
        assert s.max_bytes is not None and s.max_bytes * (s.keep + 1) <= 1e9, s.label


def test_restart_limits_agree_with_waiting_and_loss_limits():
    """A camera that takes minutes to appear must not make systemd give up for good (issue 15): the service
    waits for missing sources in the process, exits only after a source was lost for max_source_loss, and
    so never starts StartLimitBurst times within StartLimitIntervalSec for a missing or lost device. Its
    start timeout is extended while it waits (EXTEND_TIMEOUT_USEC), so that one may stay short."""
    from edgemm.commands.run import load_config

    keys = dict(line.split("=", 1) for line in UNIT.read_text().splitlines() if "=" in line and not line.startswith("#"))
    cfg = load_config(str(DEPLOY / "run.json"))
    interval, burst, restart = (int(keys[k]) for k in ("StartLimitIntervalSec", "StartLimitBurst", "RestartSec"))
    shortest_failing_run = min(cfg["wait_for_sources"], cfg["max_source_loss"])
    starts_per_interval = interval / (shortest_failing_run + restart) + 1  # +1: one at each end of the window
    assert starts_per_interval < burst, (starts_per_interval, burst)
    assert cfg["wait_for_sources"] >= 300  # generous: a USB camera or an audio server after a slow boot
    assert float(keys["TimeoutStopSec"]) > 5  # every exit ends within 5 s of SIGTERM (tests/test_source_faults.py)


# -- container recipe ---------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln.strip() else "")
            for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_dockerfile_passes_hadolint():
    r = subprocess.run([_tool("hadolint"), str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_builds_on_l4t_jetpack_with_the_install_script():
    ins = _instructions(DEPLOY / "Dockerfile")
    args = {v.split("=", 1)[0]: v.split("=", 1)[1] for k, v in ins if k == "ARG" and "=" in v}
    assert args["BASE_IMAGE"] == "nvcr.io/nvidia/l4t-jetpack:r36.4.0" and args["JETPACK"] == "6"
    assert ("FROM", "${BASE_IMAGE}") in ins
    for kind, value in ins:
        if kind == "COPY":
            *sources, _dest = value.split()
            for src in sources:
                matches = list(REPO.glob(src))
                assert matches or src.endswith("*"), f"COPY source {src} is not in the repository"
    run = " ".join(v for k, v in ins if k == "RUN")
    assert "./deploy/jetson/install.sh --jetpack \"${JETPACK}\"" in run and "--no-service" in run


# -- power.sh ----------------------------------------------------------------------------------------

NVPMODEL_CONF = """\
< PARAM TYPE=FILE NAME=CPU_ONLINE >
CORE_0 /sys/devices/system/cpu/cpu0/online
< POWER_MODEL ID=0 NAME=MAXN >
CPU_ONLINE CORE_0 1
< POWER_MODEL ID=1 NAME=10W >
CPU_ONLINE CORE_0 1
< POWER_MODEL ID=2 NAME=15W >
< POWER_MODEL ID=3 NAME=25W >
< POWER_MODEL ID=4 NAME=MAXN_SUPER >
< PM_CONFIG DEFAULT=2 >
"""


def _power(tmp_path, *args, path: str = "/usr/bin:/bin", **env_vars):
    conf = tmp_path / "nvpmodel.conf"
    conf.write_text(NVPMODEL_CONF)
    env = {k: v for k, v in os.environ.items() if k != "EDGEMM"}
    env.update({"NVPMODEL_CONF": str(conf), "PATH": path, **env_vars})
    return subprocess.run(["bash", str(POWER), *args], capture_output=True, text=True, env=env, timeout=30)


# Stand-ins for the board's tools, which only a Jetson has: each records its call, jetson_clocks --store/--restore
# write/read the state file as the real one does. `sudo` runs the command (power.sh elevates with sudo when not
# root). What is tested is power.sh's own order of calls: what it saves, pins, restores and deletes, and when.
BOARD_TOOLS = {
    "jetson_clocks": 'echo "jetson_clocks $*" >>"$CALLS"\n'
                     'case $1 in --store) echo saved >"$2" ;; --restore) test -f "$2" || exit 9 ;; esac',
    "nvpmodel": 'echo "nvpmodel $*" >>"$CALLS"',
    "edgemm": 'echo "edgemm $*" >>"$CALLS"; exit "${EDGEMM_EXIT:-0}"',
    "sudo": 'exec "$@"',
}


@pytest.fixture
def board(tmp_path):
    """power.sh with the stand-ins first on PATH; returns run(*args, **env) -> (result, calls, state file)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in BOARD_TOOLS.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    state, calls = tmp_path / "state" / "jetson_clocks.conf", tmp_path / "calls.txt"

    def run(*args, tools=bin_dir, **env):
        calls.write_text("")
        r = _power(tmp_path, *args, path=f"{tools}:/usr/bin:/bin", EDGEMM_CLOCKS_STATE=str(state), CALLS=str(calls),
                   **env)
        return r, [c.strip() for c in calls.read_text().splitlines()], state

    return run


def test_power_bench_pins_runs_edgemm_from_path_and_restores(board, tmp_path):
    r, calls, state = board("bench", "/var/lib/edgemm/model.edgemm", "--backend", "tensorrt:graph")
    assert r.returncode == 0, r.stderr
    assert calls == [f"jetson_clocks --store {state}", "jetson_clocks",
                     "edgemm bench /var/lib/edgemm/model.edgemm --backend tensorrt:graph",
                     f"jetson_clocks --restore {state}"]
    assert not state.exists()
    # A failing bench still restores the clocks, and its exit status is the script's.
    r, calls, state = board("bench", "m.edgemm", EDGEMM_EXIT="3")
    assert r.returncode == 3 and calls[-1] == f"jetson_clocks --restore {state}" and not state.exists()


def test_power_bench_after_max_leaves_the_clocks_max_pinned(board):
    r, calls, state = board("max")
    assert r.returncode == 0, r.stderr
    assert calls == ["nvpmodel -m 4", f"jetson_clocks --store {state}", "jetson_clocks"]  # MAXN_SUPER
    r, calls, _ = board("bench", "m.edgemm")
    # The state saved by max is the pre-max clocks: bench must neither restore them nor delete them.
    assert r.returncode == 0, r.stderr
    assert calls == ["jetson_clocks", "edgemm bench m.edgemm"] and state.exists()
    assert "stay pinned" in r.stderr
    r, calls, _ = board("unlock")
    assert r.returncode == 0 and calls == [f"jetson_clocks --restore {state}"] and not state.exists()


def test_power_bench_without_edgemm_fails_before_touching_the_clocks(board, tmp_path):
    if Path("/opt/edgemm/venv/bin/edgemm").exists() or shutil.which("edgemm", path="/usr/bin:/bin"):
        pytest.skip("edgemm is installed system-wide here: power.sh would find it")
    tools = tmp_path / "no-edgemm"
    tools.mkdir()
    for name in ("jetson_clocks", "sudo"):
        os.symlink(tmp_path / "bin" / name, tools / name)
    # Under sudo the venv is off PATH: the default is then where install.sh puts edgemm.
    r, calls, state = board("bench", "m.edgemm", tools=tools)
    assert r.returncode == 1 and "edgemm not found at '/opt/edgemm/venv/bin/edgemm'" in r.stderr
    assert calls == [] and not state.exists()
    r, calls, _ = board("bench", "m.edgemm", tools=tools, EDGEMM=str(tmp_path / "bin" / "edgemm"))
    assert r.returncode == 0 and "edgemm bench m.edgemm" in calls


def test_power_lists_the_boards_modes(tmp_path):
    r = _power(tmp_path, "list")
    assert r.returncode == 0
    assert r.stdout.splitlines() == ["0\tMAXN", "1\t10W", "2\t15W (default)", "3\t25W", "4\tMAXN_SUPER"]


def test_power_resolves_mode_names_before_calling_nvpmodel(tmp_path):
    if shutil.which("nvpmodel"):
        pytest.skip("a real nvpmodel is here: do not switch the board's mode from a test")
    r = _power(tmp_path, "mode", "25w")
    assert r.returncode == 1 and "nvpmodel not found" in r.stderr  # the name resolved: it got to nvpmodel
    r = _power(tmp_path, "mode", "40W")
    assert r.returncode == 1 and "no power mode '40W'" in r.stderr
    r = _power(tmp_path, "frobnicate")
    assert r.returncode == 1 and "unknown command" in r.stderr
    assert "power.sh bench ARGS" in _power(tmp_path, "--help").stdout


# -- the watchdog protocol ---------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    """A datagram socket where systemd would listen; returns a function that reads what was sent."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setattr(watchdog, "_process_watchdog", None)
    yield lambda: sock.recv(4096).decode()
    sock.close()


def test_watchdog_ready_status_ping_and_stopping(notify_socket):
    now = [0.0]
    wd = watchdog.Watchdog(clock=lambda: now[0])
    assert wd.interval_s == 2.0
    assert wd.ready("streaming") and notify_socket() == "READY=1\nSTATUS=streaming"
    assert not wd.kick(), "right after READY no ping is due"
    now[0] = 0.6  # past a quarter of 2 s
    assert wd.kick() and notify_socket() == "WATCHDOG=1"
    now[0] = 0.9
    assert not wd.kick()
    assert wd.status("camera lost") and notify_socket() == "STATUS=camera lost"
    assert wd.stopping() and notify_socket() == "STOPPING=1"


def test_module_ping_is_the_pipelines_hook(notify_socket):
    # The pipeline pings through the module function (tests/test_pipeline.py runs it under a socket).
    import edgemm.pipeline

    assert edgemm.pipeline.watchdog is watchdog
    assert watchdog.ping() and notify_socket().startswith("READY=1")
    watchdog._process_watchdog._last = float("-inf")
    assert watchdog.ping() and notify_socket() == "WATCHDOG=1"


def test_abstract_socket_address(monkeypatch):
    name = f"edgemm-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        assert watchdog.notify("READY=1") and sock.recv(64) == b"READY=1"
    finally:
        sock.close()


def test_watchdog_is_inert_outside_systemd(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    wd = watchdog.Watchdog()
    assert wd.interval_s is None and not wd.ready() and not wd.kick()
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")  # armed for another process
    assert watchdog.watchdog_interval_s() is None
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert not watchdog.notify("READY=1")  # no listener: False, never an exception


# -- benchmarks/gpu_check.sh ------------------------------------------------------------------------


def test_gpu_check_exit_status_says_the_checks_failed(tmp_path):
    """Here there is no GPU: the measurements find no device, so the script must exit non-zero (it used to
    end with an echo and exit 0 whatever happened)."""
    import sys

    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable,
               GPU_CHECK_TESTS="tests/test_cuda.py::test_unknown_binding_is_a_user_error")
    r = subprocess.run(["bash", "benchmarks/gpu_check.sh"], capture_output=True, text=True, cwd=REPO, env=env,
                       timeout=240)
    assert r.returncode == 1, r.stdout[-2000:]
    assert "pytest exit: 0" in r.stdout and "GPU CHECK FAILED (pytest 0, measurements 1)" in r.stdout
    assert json.loads((tmp_path / "cuda.json").read_text())["probe"]["found"] is False


@pytest.mark.parametrize("render", ["yes", "no"])
def test_service_user_gets_render_where_cuda_needs_it(tmp_path, render):
    """JetPack 6+: CUDA as a non-root user needs group render as well as video; the unit's
    SupplementaryGroups follow (naming a group that does not exist would stop the unit from starting)."""
    r = _install(tmp_path, "--system-opencv", "yes", "--render-group", render)
    assert r.returncode == 0, r.stderr
    groups = "video,audio,render" if render == "yes" else "video,audio"
    user_line = next(line for line in r.stdout.splitlines() if "useradd" in line or "usermod" in line)
    assert user_line.endswith(f"--groups {groups.replace(',', chr(92) + ',')} edgemm"), user_line  # %q quoting
    unit = _written(r.stdout, "/etc/systemd/system/edgemm.service")
    assert f"SupplementaryGroups={groups.replace(',', ' ')}" in unit.splitlines()
    # Default: render where the group exists on this machine (getent, as on the device).
    here = subprocess.run(["getent", "group", "render"], capture_output=True).returncode == 0
    auto = _written(_install(tmp_path, "--system-opencv", "yes").stdout, "/etc/systemd/system/edgemm.service")
    assert ("SupplementaryGroups=video audio render" in auto.splitlines()) == here
    bad = _install(tmp_path, "--render-group", "maybe")
    assert bad.returncode == 1 and "--render-group must be yes or no" in bad.stderr


def test_install_checks_the_gpu_as_the_service_user():
    script = INSTALL.read_text()
    check = script[script.index("# --- Check what actually runs"):]
    assert 'runuser -u "$SERVICE_USER" --' in check and '"${as_user[@]}" "$VENV/bin/python"' in check
    # ... and only after the service block created the user.
    assert script.index("# --- The service") < script.index("# --- Check what actually runs")
