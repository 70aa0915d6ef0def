"""Check this machine for edgemm: JetPack/L4T, CUDA, cuDNN, TensorRT, the CUDA bindings, power mode and clocks,
the user's groups, cameras and microphones; each missing piece with its fix. The first thing to run on a Jetson.

Runs anywhere: off a Jetson, or without a GPU, it says so and what still works (the CPU backends). Nothing is
changed. Exit 0 when no check failed, 1 when one did (a check that does not apply to this machine is not a
failure). Example:  edgemm doctor --json doctor.json
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

# L4T major.minor -> (JetPack, TensorRT it ships). edgemm needs TensorRT 10 (JetPack 6.1+ or 7).
JETPACKS = {(35, None): ("5.x", "8.5"), (36, 3): ("6.0", "8.6"), (36, 4): ("6.1/6.2", "10.3"), (38, None): ("7.0/7.1", "10.13"),
            (39, None): ("7.2", "10.16")}
TEGRA_RELEASE = "/etc/nv_tegra_release"


@dataclasses.dataclass
class Check:
    name: str
    status: str  # "ok", "warn", "fail" or "n/a" (does not apply to this machine)
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = {"ok": "ok  ", "warn": "warn", "fail": "FAIL", "n/a": "n/a "}[self.status]
        return f"[{mark}] {self.name}: {self.detail}" + (f"\n       fix: {self.fix}" if self.fix else "")


def add_arguments(p) -> None:
    p.add_argument("--json", metavar="PATH", help="also write the checks as JSON ('-' for stdout only)")
    p.add_argument("--tegra-release", default=TEGRA_RELEASE, metavar="FILE",
                   help=f"read the L4T release from FILE (default {TEGRA_RELEASE})")


def jetpack_of(line: str) -> dict | None:
    """'# R36 (release), REVISION: 4.3, ...' -> {'l4t': '36.4.3', 'jetpack': '6.1/6.2', 'tensorrt': '10.3'}."""
    m = re.search(r"R(\d+) \(release\), REVISION: (\d+)\.(\d+)", line)
    if not m:
        return None
    major, rev, patch = (int(x) for x in m.groups())
    jp, trt = JETPACKS.get((major, rev)) or JETPACKS.get((major, None)) or ("unknown", "unknown")
    return {"l4t": f"{major}.{rev}.{patch}", "jetpack": jp, "tensorrt": trt}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _run(cmd: list[str]) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (p.stdout or p.stderr).strip() if p.returncode == 0 else None


# -- the checks: each takes the facts gathered so far and returns one Check ---------------------------------


def check_platform(facts: dict) -> Check:
    jp = facts["jetpack"]
    if jp is None:
        return Check("platform", "n/a", f"not a Jetson (no {facts['tegra_release']}); CPU backends run here, the "
                                        "TensorRT engine is built on the device")
    if jp["tensorrt"] in ("8.5", "8.6", "unknown"):
        return Check("platform", "fail", f"L4T R{jp['l4t']} (JetPack {jp['jetpack']}, TensorRT {jp['tensorrt']})",
                     "edgemm needs TensorRT 10: flash JetPack 6.1+ (L4T R36.4) or JetPack 7")
    return Check("platform", "ok", f"L4T R{jp['l4t']}, JetPack {jp['jetpack']} (TensorRT {jp['tensorrt']})")


def check_cuda(facts: dict) -> Check:
    from edgemm.runners.cuda import binding_fix

    p = facts["probe"]
    toolkit = facts.get("cuda_toolkit")
    tk = f"; CUDA toolkit {toolkit}" if toolkit else ""
    if p.found and p.binding:
        devs = ", ".join(d.describe() for d in p.devices)
        driver = p.devices[0].to_dict()["cuda_driver"]
        return Check("CUDA", "ok", f"{devs} via {p.binding} (driver CUDA {driver}){tk}")
    if p.found:  # a device, but no binding that works
        return Check("CUDA", "fail", p.reason.split(". Fix:")[0] + tk,
                     binding_fix(p.devices, tegra=facts["jetpack"] is not None or None))
    if facts["jetpack"] is None:
        return Check("CUDA", "n/a", f"no usable NVIDIA GPU here ({p.reason}); the CPU backend runs: --backend "
                                    "onnxruntime")
    return Check("CUDA", "fail", p.reason, "is the user in groups video and render? (see the groups check); "
                                           "else reinstall JetPack's CUDA")


def check_bindings(facts: dict) -> Check:
    found = {name: _version(dist) for name, dist in (("cuda-python", "cuda-python"), ("cuda-bindings", "cuda-bindings"),
                                                      ("pycuda", "pycuda"))}
    have = ", ".join(f"{k} {v}" for k, v in found.items() if v) or "none"
    works = facts["probe"].binding
    if works:
        return Check("CUDA bindings", "ok", f"{have}; {works} works")
    if facts["probe"].found or facts["jetpack"] is not None:
        from edgemm.runners.cuda import binding_fix

        return Check("CUDA bindings", "fail", f"{have}; none works",
                     binding_fix(facts["probe"].devices, tegra=facts["jetpack"] is not None or None))
    return Check("CUDA bindings", "n/a", f"{have} (no GPU here to use them)")


def check_tensorrt(facts: dict) -> Check:
    from edgemm.runners.tensorrt import TENSORRT_HINT

    version = _version("tensorrt") or _version("tensorrt-cu12") or _version("tensorrt-cu13")
    if not (facts["probe"].found and facts["probe"].binding):
        # Never import tensorrt without a device (tensorrt-lean segfaults without a driver): report the package.
        what = f"tensorrt {version} installed" if version else "not installed"
        return Check("TensorRT", "n/a" if facts["jetpack"] is None else "fail",
                     f"{what}; not loaded (no usable CUDA device)", "" if facts["jetpack"] is None else TENSORRT_HINT)
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        return Check("TensorRT", "fail", f"not importable ({str(exc).splitlines()[0]})", TENSORRT_HINT)
    builder = hasattr(trt, "Builder") and hasattr(trt, "OnnxParser")
    return Check("TensorRT", "ok" if builder else "warn", f"{trt.__version__}" + ("" if builder else
                 " (runtime only: engines cannot be built here)"), "" if builder else TENSORRT_HINT)


def check_cudnn(facts: dict) -> Check:
    header = next((h for h in ("/usr/include/cudnn_version.h", "/usr/include/aarch64-linux-gnu/cudnn_version.h",
                               "/usr/local/cuda/include/cudnn_version.h") if os.path.exists(h)), None)
    if header:
        text = Path(header).read_text(errors="replace")
        parts = [re.search(rf"#define CUDNN_{k}\s+(\d+)", text) for k in ("MAJOR", "MINOR", "PATCHLEVEL")]
        if all(parts):
            return Check("cuDNN", "ok", ".".join(m.group(1) for m in parts))
    libs = glob.glob("/usr/lib/*/libcudnn.so*") + glob.glob("/usr/local/cuda/lib64/libcudnn.so*")
    if libs:
        return Check("cuDNN", "ok", f"{os.path.basename(sorted(libs)[-1])} (no header to read the version from)")
    if facts["jetpack"] is None:
        return Check("cuDNN", "n/a", "not found (TensorRT 10 does not need it; onnxruntime's CUDA EP does)")
    return Check("cuDNN", "warn", "not found (TensorRT 10 does not need it; onnxruntime's CUDA EP does)",
                 "sudo apt-get install nvidia-cudnn (JetPack)")


def check_power(facts: dict) -> Check:
    if facts["jetpack"] is None:
        return Check("power mode", "n/a", "not a Jetson")
    mode = _run(["nvpmodel", "-q"])
    if mode is None:
        return Check("power mode", "warn", "nvpmodel -q gave nothing (it may need root)",
                     "sudo deploy/jetson/power.sh show")
    mode = " ".join(mode.split())
    gpu = sorted(glob.glob("/sys/devices/platform/*gpu*/devfreq/*/cur_freq") + glob.glob("/sys/devices/gpu.0/devfreq/*/cur_freq"))
    clock = ""
    if gpu:
        try:
            clock = f"; GPU clock {int(Path(gpu[0]).read_text()) / 1e6:.0f} MHz"
        except (OSError, ValueError):
            pass
    return Check("power mode", "ok", mode + clock, "for benchmarks pin the clocks: sudo deploy/jetson/power.sh max")


def check_groups(facts: dict) -> Check:
    import grp
    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name
    mine = {grp.getgrgid(g).gr_name for g in os.getgroups()} | {grp.getgrgid(os.getgid()).gr_name}
    exists = {g.gr_name for g in grp.getgrall()}
    # video: the GPU (/dev/nvhost-*) and cameras; render: CUDA as non-root on JetPack 6+; audio: microphones.
    needed = [g for g in ("video", "render", "audio") if g in exists]
    missing = [g for g in needed if g not in mine]
    if os.getuid() == 0:
        return Check("groups", "ok", "root (every device is reachable; the service user may lack groups: run this "
                                     "as that user, e.g. sudo -u edgemm edgemm doctor)")
    if missing:
        return Check("groups", "fail" if facts["jetpack"] is not None else "warn",
                     f"{user} is not in {', '.join(missing)}",
                     f"sudo usermod -aG {','.join(missing)} {user} (then log in again)")
    return Check("groups", "ok", f"{user} in {', '.join(needed) or 'none needed'}")


def check_cameras(facts: dict) -> Check:
    v4l2 = sorted(glob.glob("/dev/video*"))
    csi = os.path.exists("/tmp/argus_socket")
    parts = [f"V4L2 {' '.join(v4l2)}" if v4l2 else "no V4L2 camera"]
    if facts["jetpack"] is not None:
        parts.append("nvargus-daemon socket present (csi://N)" if csi else "no nvargus-daemon socket")
    if v4l2 or csi:
        return Check("cameras", "ok", "; ".join(parts))
    fix = "sudo systemctl restart nvargus-daemon (CSI) or plug a USB camera" if facts["jetpack"] is not None else ""
    return Check("cameras", "warn" if facts["jetpack"] is not None else "n/a", "; ".join(parts) +
                 " (test://video and files still work)", fix)


def check_audio(facts: dict) -> Check:
    try:
        cards = Path("/proc/asound/cards").read_text()
    except OSError:
        cards = ""
    names = [line.split("]:", 1)[1].strip() for line in cards.splitlines() if "]:" in line]
    if names:
        return Check("audio", "ok", "ALSA cards: " + "; ".join(names))
    return Check("audio", "warn" if facts["jetpack"] is not None else "n/a",
                 "no ALSA sound card (test://audio and WAV files still work)",
                 "plug a USB microphone; list devices with: python3 -m sounddevice" if facts["jetpack"] is not None else "")


CHECKS = (check_platform, check_cuda, check_bindings, check_tensorrt, check_cudnn, check_power, check_groups,
          check_cameras, check_audio)


def gather(tegra_release: str = TEGRA_RELEASE) -> dict:
    from edgemm.runners.cuda import probe

    try:
        first = Path(tegra_release).read_text().splitlines()[0]
    except (OSError, IndexError):
        first = ""
    toolkit = None
    try:
        toolkit = json.loads(Path("/usr/local/cuda/version.json").read_text())["cuda"]["version"]
    except (OSError, ValueError, KeyError):
        pass
    return {"tegra_release": tegra_release, "jetpack": jetpack_of(first) if first else None, "probe": probe(),
            "cuda_toolkit": toolkit}


def run(args) -> int:
    facts = gather(args.tegra_release)
    checks = [check(facts) for check in CHECKS]
    if args.json != "-":
        for c in checks:
            print(c.line())
        failed = [c.name for c in checks if c.status == "fail"]
        print(f"{len(failed)} check(s) failed: {', '.join(failed)}" if failed else "no check failed")
    if args.json:
        data = json.dumps({"checks": [dataclasses.asdict(c) for c in checks], "jetpack": facts["jetpack"],
                           "python": sys.version.split()[0]}, indent=2)
        if args.json == "-":
            print(data)
        else:
            from edgemm.outputs import write_atomic

            write_atomic(args.json, data.encode())
    return 1 if any(c.status == "fail" for c in checks) else 0
