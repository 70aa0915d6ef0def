"""Timing loops and statistics shared by `edgemm bench`, the pipeline and the scripts in benchmarks/.

Several targets (model x backend) are measured interleaved, one inference of each in turn, so that
whatever else the machine is doing hits all of them alike: compare them as ratios within one run.
"""

from __future__ import annotations

import os
import platform
import random
import resource
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import onnxruntime

from edgemm.errors import EdgemmError, number_problem
from edgemm.lazy import import_pyplot
from edgemm.outputs import save_figure
from edgemm.feeds import feed_batch, refused_feed
from edgemm.runners.base import BaseRunner, check_feed

PERCENTILES = (50, 90, 95, 99)


def latency_stats(samples_s) -> dict[str, float]:
    """min, mean, p50, p90, p95, p99, max (and std) in milliseconds from samples in seconds."""
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("no samples")
    stats = {"min": float(ms.min()), "mean": float(ms.mean())}
    stats.update({f"p{p}": float(np.percentile(ms, p)) for p in PERCENTILES})
    stats.update({"max": float(ms.max()), "std": float(ms.std())})
    return stats


class Reservoir:
    """A fixed-size uniform sample of a stream (Vitter's algorithm R) plus exact count/min/max/sum: the
    latency percentiles of a run of any length in bounded memory. The percentiles come from the sample; min,
    max and mean are exact (a rare spike is what a sample misses, and what the max is for)."""

    def __init__(self, size: int, seed: int = 0):
        self.size = size
        # The whole sample is allocated and written now, not grown as values come: a long run's memory is
        # flat from its first result. A list of Python floats grew by ~40 B a value until full, and the skew
        # sample (only results with audio add to it) was still filling after 30 minutes: the soak read that
        # as a leak of 2 MB/h.
        self._buf = np.full(size, np.nan)
        self._n = 0
        self.count = 0
        self.min = float("inf")
        self.max = float("-inf")
        self.sum = 0.0
        self._rng = random.Random(seed)

    @property
    def values(self) -> np.ndarray:
        """The sample so far (a view)."""
        return self._buf[:self._n]

    def add(self, x: float) -> None:
        self.count += 1
        self.sum += x
        self.min = min(self.min, x)
        self.max = max(self.max, x)
        if self._n < self.size:
            self._buf[self._n] = x
            self._n += 1
        else:
            j = self._rng.randrange(self.count)
            if j < self.size:
                self._buf[j] = x

    def stats_ms(self, scale: float = 1.0) -> dict | None:
        """latency_stats of the sample, in ms (values are seconds unless scale says otherwise), with the exact
        min, max and mean of everything added."""
        if not self._n:
            return None
        st = latency_stats(self.values * scale)
        ms = 1e3 * scale
        st.update(min=self.min * ms, max=self.max * ms, mean=self.sum / self.count * ms, count=self.count)
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in st.items()}


def rss_mb() -> float:
    """Resident set size of this process now, in MiB (Linux /proc; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if platform.system() == "Linux" else kb / 2**20


def machine() -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version()}
    info["onnxruntime"] = onnxruntime.__version__
    import importlib.metadata

    try:  # the distribution's version: importing openvino itself costs a second
        info["openvino"] = importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        pass
    return info


@dataclass
class Target:
    """One thing to measure: an (inactive) runner and the feed to give it."""

    label: str
    runner: BaseRunner
    feed: Mapping[str, np.ndarray] | None = None  # None: synthesised once the runner is active
    make_feed: Callable[[BaseRunner], Mapping[str, np.ndarray]] | None = None
    batch: int = 1
    synthesised: bool = True  # the feed is made up (a refusal then suggests --shape), not the user's
    samples: list[float] = field(default_factory=list)
    cpu_samples: list[float] = field(default_factory=list)  # process CPU seconds per inference
    breakdowns: list[dict[str, float]] = field(default_factory=list)
    memory: dict[str, float] = field(default_factory=dict)


def _infer_once(t: Target) -> float:
    cpu = time.process_time()
    t.runner.infer(t.feed, check_inputs=False)
    # CPU time of the whole process (every thread of the runtime): on a machine shared with other jobs the
    # wall time also holds the time the scheduler gave to others, the CPU time does not.
    t.cpu_samples.append(time.process_time() - cpu)
    if t.runner.last_breakdown:
        t.breakdowns.append(dict(t.runner.last_breakdown))
    return t.runner.last_inference_time


def run(targets: list[Target], iterations: int | None = None, duration_s: float | None = None,
        warmup_s: float = 0.2, warmup_iterations: int = 2, power=None) -> list[dict]:
    """Activate each target in turn (memory measured around it), warm it up, then time all interleaved.

    Exactly one of iterations / duration_s sets the length (iterations per target, or wall time for all).
    power: a started edgemm.power.PowerSampler (Jetson); each result then gets board power and energy per
    inference over the timed loop. Returns one result dict per target, the shape `edgemm bench --json` writes.
    """
    if (iterations is None) == (duration_s is None):
        raise EdgemmError("Benchmark length | Give exactly one of --iterations and --duration.")
    if iterations is not None and iterations < 1:
        raise EdgemmError(f"Iterations: {iterations} | Expected a positive number.")
    if duration_s is not None and number_problem(duration_s, positive=True):  # NaN would time forever
        raise EdgemmError(f"Duration: {duration_s} | Expected a finite, positive number of seconds.")
    # Process-wide one-time costs (importing the backend, its thread pools) are paid before any memory
    # is measured, so that the first target is not charged for them.
    for runner_type in {type(t.runner) for t in targets}:
        runner_type.preload()
    active: list[Target] = []
    try:
        for t in targets:
            before = rss_mb()
            t.runner.activate()
            active.append(t)
            after_load = rss_mb()
            if t.feed is None:
                t.feed = t.make_feed(t.runner)
            check_feed(t.feed, t.runner.input_metadata())  # once, outside the timed loop
            t.batch = feed_batch(t.feed, t.runner.input_metadata(), t.batch)
            try:
                t.runner.infer(t.feed, check_inputs=False)
            except Exception as exc:  # the model itself refuses these inputs: say which, in one line
                raise refused_feed(t.label, t.feed, exc, t.synthesised) from exc
            # Warm-up: at least warmup_iterations, and at least warmup_s of wall time (trtexec: 200 ms).
            end = time.perf_counter() + warmup_s
            n = 0
            while n < warmup_iterations or time.perf_counter() < end:
                t.runner.infer(t.feed, check_inputs=False)
                n += 1
            t.breakdowns.clear()
            t.cpu_samples.clear()
            t.memory = {"load_mb": after_load - before, "after_warmup_mb": rss_mb() - before}
        start = time.perf_counter()
        i = 0
        while True:
            if iterations is not None and i >= iterations:
                break
            if duration_s is not None and time.perf_counter() - start >= duration_s and i > 0:
                break
            for t in targets:
                t.samples.append(_infer_once(t))
            i += 1
        wall = time.perf_counter() - start
    finally:
        for t in active:
            t.runner.deactivate()
    peak = peak_rss_mb()
    results = [_result(t, wall, peak) for t in targets]
    if power is not None:
        power.annotate(results, start, start + wall)
    return results


def _result(t: Target, wall_s: float, peak_mb: float) -> dict:
    busy = float(np.sum(t.samples))
    res = {
        "model": t.label,
        "backend": t.runner.describe(),
        "batch": t.batch,
        "iterations": len(t.samples),
        "latency_ms": latency_stats(t.samples),
        "cpu_ms": latency_stats(t.cpu_samples),
        # Inferences per second of this target's own busy time: with interleaving, the wall time is
        # shared by all targets, so each one's throughput is what it would sustain alone.
        "throughput_per_s": t.batch * len(t.samples) / busy if busy > 0 else float("nan"),
        "memory_mb": {**{k: round(v, 2) for k, v in t.memory.items()}, "process_peak_mb": round(peak_mb, 2)},
        "wall_s": wall_s,
    }
    if t.breakdowns:
        keys = t.breakdowns[0].keys()
        res["breakdown_ms"] = {k: latency_stats([b[k] / 1e3 for b in t.breakdowns]) for k in keys}
    return res


def format_table(results: list[dict]) -> str:
    """A fixed-width table of the results, one row per target."""
    cols = ("min", "mean", "p50", "p90", "p95", "p99", "max")
    head = f"{'model':<28} {'backend':<34} " + " ".join(f"{c:>8}" for c in cols) + f" {'inf/s':>9} {'mem MB':>8}"
    lines = [head, "-" * len(head)]
    for r in results:
        lat = r["latency_ms"]
        lines.append(f"{r['model'][:28]:<28} {r['backend'][:34]:<34} " + " ".join(f"{lat[c]:8.3f}" for c in cols)
                     + f" {r['throughput_per_s']:9.1f} {r['memory_mb'].get('after_warmup_mb', 0):8.1f}")
    lines.append("latency in ms per inference; mem MB: resident memory the model added (load + warm-up)")
    for r in results:
        for phase, st in r.get("breakdown_ms", {}).items():
            lines.append(f"  {r['model']} {phase}: median {st['p50']:.3f} ms, p99 {st['p99']:.3f} ms")
        if "power" in r:
            pw = r["power"]
            idle = f", idle {pw['idle_w']:.2f} W, {pw['dynamic_energy_per_inference_mj']:.2f} mJ above idle" if "idle_w" in pw else ""
            lines.append(f"  {r['model']} power: {pw['mean_w']:.2f} W ({pw['rail']}), "
                         f"{pw['energy_per_inference_mj']:.2f} mJ per inference{idle}")
    return "\n".join(lines)


def plot_cdf(results: list[dict], samples: list[list[float]], path: str) -> None:
    """Latency CDF of each target, one line each, written as PNG."""
    plt = import_pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r, s in zip(results, samples):
        ms = np.sort(np.asarray(s) * 1e3)
        ax.plot(ms, np.arange(1, ms.size + 1) / ms.size, label=f"{r['model']} ({r['backend']})")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of inferences")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
