"""Power and energy on Jetson, sampled from tegrastats (or jtop) around a benchmark.

tegrastats prints one line per interval; its power rails are "NAME current/average" (JetPack 7.2 adds a
peak: "current/average/peak"), in mW. Their names and units differ by generation (real lines in
tests/test_power.py):

  JetPack 4, Nano / TX1     POM_5V_IN 2132/2132 POM_5V_GPU 78/78 POM_5V_CPU 275/275           (mW, no unit)
  JetPack 4, TX2            VDD_IN 1790/1790 VDD_SYS_GPU 153/153 VDD_SYS_SOC 459/459 ...
  JetPack 4, AGX Xavier     GPU 0/0 CPU 311/311 SOC 1557/1557 CV 0/0 VDDRQ 311/311 SYS5V 2081/2081  (no total)
  JetPack 5/6, Orin NX/Nano VDD_IN 4824mW/4824mW VDD_CPU_GPU_CV 518mW/518mW VDD_SOC 1475mW/1475mW
  JetPack 5/6, AGX Orin     VDD_GPU_SOC 2004mW/2004mW VDD_CPU_CV 400mW/400mW VIN_SYS_5V0 2818mW/2818mW  (no total)
  JetPack 7, Thor           VDD_GPU 3561mW/3561mW VDD_CPU_SOC_MSS 7910mW/7910mW VIN_SYS_5V0 ... VIN 26686mW/26686mW
  JetPack 7.2, AGX Orin     VDD_GPU_SOC 5139mW/5139mW/5139mW VDD_CPU_CV ... VIN_SYS_5V0 ...

The board's input power is the total rail when there is one (VDD_IN, POM_5V_IN, VIN), else the sum of the
module rails (AGX Xavier, AGX Orin: as jtop does). Either way it is the module, not the carrier board.

Energy per inference is the board's mean power over the timed window times the mean latency; with an idle
baseline measured before the model runs, the part the inference adds is reported too. When several
targets are measured interleaved, the board power is shared by all of them: each gets its latency share.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from edgemm.errors import EdgemmError
from edgemm.lazy import import_optional

log = logging.getLogger(__name__)

TOTAL_RAILS = ("VDD_IN", "POM_5V_IN", "VIN")
# "NAME 123/456" (no unit: the slash is required, so "APE 174" is not a rail), "NAME 123mW/456mW",
# "NAME 123mW/456mW/789mW", "NAME 123mW". The lookahead refuses "RAM 1655/3956MB", "SWAP 0/1978MB",
# "IRAM 0/252kB(...)": a unit other than mW right after the numbers.
_NUM = r"\d+(?:\.\d+)?"
_RAIL = re.compile(rf"(?<![\w@])([A-Z][A-Z0-9_]*)[ @](?:({_NUM})mW(?:/{_NUM}mW){{0,2}}|({_NUM})/{_NUM}(?:/{_NUM})?)(?![\w/])")
_NOT_RAILS = {"RAM", "SWAP", "IRAM", "LFB"}


@dataclass
class PowerSample:
    t: float  # time.perf_counter() when read (the clock edgemm.bench uses)
    total_mw: float
    rails: dict[str, float] = field(default_factory=dict)  # current mW per rail
    total_from: str = ""  # the total rail's name, or "sum of N rails"


def parse_tegrastats(line: str, t: float | None = None) -> PowerSample | None:
    """The power rails of one tegrastats line (None when it has none, e.g. a non-root run on some images)."""
    rails = {}
    for name, with_unit, without_unit in _RAIL.findall(line):
        if name not in _NOT_RAILS:
            rails[name] = float(with_unit or without_unit)
    if not rails:
        return None
    total_mw, total_from = total_power(rails)
    return PowerSample(t=time.perf_counter() if t is None else t, total_mw=total_mw, rails=rails, total_from=total_from)


def total_power(rails: dict[str, float]) -> tuple[float, str]:
    for name in TOTAL_RAILS:
        if name in rails:
            return rails[name], name
    return float(sum(rails.values())), f"sum of {len(rails)} rails"


def energy_j(samples: list[PowerSample], t0: float, t1: float) -> float:
    """Energy in joules between t0 and t1: the integral of the piecewise-linear power curve (trapezoids),
    held flat before the first sample and after the last."""
    if t1 <= t0 or not samples:
        return 0.0
    samples = sorted(samples, key=lambda s: s.t)
    ts = np.array([s.t for s in samples])
    mw = np.array([s.total_mw for s in samples])
    inside = (ts > t0) & (ts < t1)
    pts = np.concatenate([[t0], ts[inside], [t1]])
    curve = np.interp(pts, ts, mw)  # flat beyond the ends, as np.interp holds the end values
    return float(np.trapezoid(curve, pts) if hasattr(np, "trapezoid") else np.trapz(curve, pts)) / 1e3


def is_jetson() -> bool:
    if os.path.exists("/etc/nv_tegra_release"):
        return True
    try:
        with open("/proc/device-tree/compatible", "rb") as f:
            return b"nvidia,tegra" in f.read()
    except OSError:
        return False


def available() -> str | None:
    """The power source usable here: 'tegrastats', 'jtop', or None (not a Jetson, or neither tool)."""
    if shutil.which("tegrastats"):
        return "tegrastats"
    if is_jetson():
        try:
            import_optional("jtop")  # jetson-stats, optional
            return "jtop"
        except Exception:  # noqa: BLE001 - not installed, or its service is not running
            return None
    return None


class PowerSampler:
    """Samples board power in the background. Use as a context manager around a benchmark:

        with PowerSampler() as power:          # measures an idle baseline first (idle_s)
            ... run ...
            stats = power.window(t0, t1)       # perf_counter times of the timed loop
    """

    def __init__(self, interval_ms: int = 100, source: str | None = None, idle_s: float = 1.0,
                 command: list[str] | None = None):
        self.interval_ms = int(interval_ms)
        self.source = source or available()
        self.idle_s = idle_s
        self.command = command  # a tegrastats command line (tests run a real process that prints real lines)
        self.samples: list[PowerSample] = []
        self.idle_w: float | None = None
        self.error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> "PowerSampler":
        if self.source is None and self.command is None:
            raise EdgemmError("Power | No power source here; expected a Jetson with tegrastats (or jtop).")
        if self.command is not None or self.source == "tegrastats":
            cmd = self.command or ["tegrastats", "--interval", str(self.interval_ms)]
            try:
                self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                              bufsize=1)
            except OSError as exc:
                raise EdgemmError(f"Power | Could not start {cmd[0]} ({exc.strerror}).") from exc
            self._thread = threading.Thread(target=self._read_tegrastats, name="edgemm-power", daemon=True)
        else:
            self._thread = threading.Thread(target=self._read_jtop, name="edgemm-power", daemon=True)
        self._thread.start()
        if self.idle_s > 0:
            t0 = time.perf_counter()
            time.sleep(self.idle_s)
            idle = self.window(t0, time.perf_counter(), wait=True)
            self.idle_w = idle["mean_w"] if idle else None
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._thread is not None:
            # The reader ends at the pipe's end of file (the process is gone); closing the pipe under it
            # would make it fail on a closed file instead.
            self._thread.join(timeout=2)
        if self._proc is not None and self._proc.stdout and not (self._thread and self._thread.is_alive()):
            self._proc.stdout.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- readers -----------------------------------------------------------------------------------
    def _add(self, sample: PowerSample | None) -> None:
        if sample is not None:
            with self._lock:
                self.samples.append(sample)

    def _read_tegrastats(self) -> None:
        lines = 0
        for line in self._proc.stdout:
            if self._stop.is_set():
                break
            lines += 1
            self._add(parse_tegrastats(line))
        if lines and not self.samples:
            self.error = "tegrastats printed no power rails (on some images it needs root: run with sudo)"

    def _read_jtop(self) -> None:
        try:
            jtop = import_optional("jtop", "pip install jetson-stats").jtop
        except Exception as exc:  # noqa: BLE001
            self.error = f"jtop is not usable ({exc})"
            return
        try:
            with jtop(interval=self.interval_ms / 1000) as jetson:
                while not self._stop.is_set() and jetson.ok():
                    power = jetson.power  # {'rail': {name: {'power': mW, ...}}, 'tot': {'power': mW, ...}}
                    rails = {k: float(v.get("power", 0)) for k, v in power.get("rail", {}).items()}
                    tot = power.get("tot", {})
                    if "power" in tot:
                        self._add(PowerSample(time.perf_counter(), float(tot["power"]), rails,
                                              tot.get("name") or f"sum of {len(rails)} rails"))
        except Exception as exc:  # noqa: BLE001 - jtop's service may be down: report, do not crash the bench
            self.error = f"jtop: {exc}"

    # -- results -----------------------------------------------------------------------------------
    def window(self, t0: float, t1: float, wait: bool = True) -> dict | None:
        """Mean power and energy between t0 and t1 (perf_counter). wait: let a sample after t1 arrive first."""
        if wait:
            deadline = time.perf_counter() + max(3 * self.interval_ms / 1000, 0.5)
            while time.perf_counter() < deadline and not self._stop.is_set():
                with self._lock:
                    if self.samples and self.samples[-1].t >= t1:
                        break
                if self._proc is not None and self._proc.poll() is not None:
                    break
                time.sleep(self.interval_ms / 4000)
        with self._lock:
            samples = list(self.samples)
        inside = [s for s in samples if t0 <= s.t <= t1]
        if not samples or t1 <= t0:
            return None
        e = energy_j(samples, t0, t1)
        return {"mean_w": e / (t1 - t0), "energy_j": e, "samples": len(inside),
                "rail": samples[-1].total_from,
                "rails_mean_w": {k: sum(s.rails.get(k, 0.0) for s in inside) / len(inside) / 1e3
                                 for k in (inside[-1].rails if inside else {})}}

    def annotate(self, results: list[dict], t0: float, t1: float) -> dict | None:
        """Add a "power" entry to each bench result: board power over the timed window, energy per inference."""
        w = self.window(t0, t1)
        if w is None:
            if self.error:
                log.warning("power: %s", self.error)
            return None
        for r in results:
            lat_s = r["latency_ms"]["mean"] / 1e3
            entry = {"source": self.source or "tegrastats", "rail": w["rail"], "mean_w": w["mean_w"],
                     "energy_j": w["energy_j"], "samples": w["samples"],
                     "energy_per_inference_mj": w["mean_w"] * lat_s * 1e3 / r.get("batch", 1)}
            if self.idle_w is not None:
                entry["idle_w"] = self.idle_w
                entry["dynamic_energy_per_inference_mj"] = max(w["mean_w"] - self.idle_w, 0.0) * lat_s * 1e3 / r.get("batch", 1)
            if len(results) > 1:
                entry["shared_by"] = len(results)  # interleaved targets share the board's power
            if w["samples"] < 2:
                entry["note"] = "fewer than 2 power samples in the timed window: run longer (--duration)"
            r["power"] = entry
        return w
