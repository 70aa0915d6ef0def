"""Measure the sources on the real stand-ins: the JACK dummy microphone's rate, drift and arrival jitter
as seen through edgemm's MicSource, the ffmpeg loopback cameras' open time, first-second burst and steady
rate, and the cost of the 720p test pattern. Prints a markdown table for benchmarks/RESULTS.md.

    python benchmarks/measure_sources.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edgemm.sources import open_source  # noqa: E402
from edgemm.sources.base import now  # noqa: E402
from tests import rigs  # noqa: E402


def measure_mic(seconds: float, rate: int = 16000, period: int = 256) -> dict:
    with rigs.JackServer(rate=rate, period=period) as server:
        server.add_tone("tone")
        server.use_in_process()
        src = open_source("mic://tone", sample_rate=rate)
        blocks = []
        with src:
            end = now() + seconds
            while now() < end:
                blocks.append(src.read(2.0))
            # Cost of read() itself: let 1 s pile up in the ring, then take it block by block.
            time.sleep(1.0)
            read_cost = []
            while True:
                t = time.perf_counter()
                b = src.read(0)
                if b is None:
                    break
                read_cost.append(time.perf_counter() - t)
        n_end = np.array([b.first_sample + len(b.samples) for b in blocks], np.float64)
        arr = np.array([b.t_arrival for b in blocks])
        # Arrival time against sample count: slope = seconds per sample of the device clock on now()'s clock.
        slope, icpt = np.polyfit(n_end, arr, 1)
        resid = arr - (slope * n_end + icpt)
        lag = arr - np.array([b.t_end for b in blocks])
        slope_se = resid.std() / (np.sqrt(len(n_end)) * n_end.std())  # standard error of the fitted slope
        return {
            "jack": f"dummy {rate} Hz, period {period}", "seconds": seconds, "blocks": len(blocks),
            "block": src.block, "rate_fit_hz": 1.0 / slope, "drift_ppm": (1.0 / slope / rate - 1) * 1e6,
            "drift_ppm_1sigma": slope_se / slope * 1e6,
            "jitter_std_ms": resid.std() * 1e3, "jitter_p99_ms": np.percentile(np.abs(resid), 99) * 1e3,
            "lag_min_ms": lag.min() * 1e3, "lag_median_ms": np.median(lag) * 1e3, "lag_max_ms": lag.max() * 1e3,
            "overflows": src.stats.overflows, "dropped": src.stats.dropped,
            "rate_measured": src.stats.extra.get("rate_measured"),
            "read_us_median": float(np.median(read_cost)) * 1e6,
            "read_us_p99": float(np.percentile(read_cost, 99)) * 1e6,
        }


def measure_camera(kind: str, seconds: float) -> dict:
    with rigs.FfmpegStream(kind) as cam:
        src = open_source(cam.url)
        t = now()
        src.open()
        opened = now() - t
        try:
            frames = []
            end = now() + seconds
            while now() < end:
                frames.append(src.read(2.0))
        finally:
            src.close()
    ts = np.array([f.t for f in frames])
    first_second = int((ts < ts[0] + 1.0).sum())
    steady = ts[ts > ts[0] + 1.5]
    return {"stream": f"HTTP {kind} 320x240 @30", "open_s": opened, "cap_prop_fps": src.fps,
            "frames_first_second": first_second,
            "steady_fps": (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else float("nan"),
            "dropped": src.stats.dropped}


def measure_pattern(n: int = 60) -> dict:
    src = open_source("test://video?size=1280x720&live=false&realtime=false")
    with src:
        src.read(0)
        t = time.perf_counter()
        for _ in range(n):
            src.read(0)
        per = (time.perf_counter() - t) / n
    return {"pattern": "test://video 1280x720", "ms_per_frame": per * 1e3}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args(argv)
    mic = measure_mic(args.seconds)
    cams = [measure_camera(k, min(args.seconds, 5.0)) for k in ("mjpeg", "mpegts")]
    pat = measure_pattern()
    print("| microphone (JACK dummy via PortAudio) | value |\n|---|---|")
    for k, v in mic.items():
        print(f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |")
    print("\n| camera (ffmpeg on loopback) | open s | CAP_PROP_FPS | frames in 1st s | steady fps | dropped |")
    print("|---|---|---|---|---|---|")
    for c in cams:
        print(f"| {c['stream']} | {c['open_s']:.2f} | {c['cap_prop_fps']} | {c['frames_first_second']} | "
              f"{c['steady_fps']:.2f} | {c['dropped']} |")
    print(f"\n{pat['pattern']}: {pat['ms_per_frame']:.2f} ms per frame to render")
    return 0


if __name__ == "__main__":
    sys.exit(main())
