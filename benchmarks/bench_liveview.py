"""What the web view costs the pipeline: throughput with one viewer watching at 15 fps against none.

Two pipelines on the same model, sources and thread count, stepped in alternating segments (A B, B A,
A B, ...) so machine noise hits both alike: A has a JSON-lines sink only; B adds ``--sink http://127.0.0.1:0``
(MJPEG at the default cap of 15 fps) and one viewer, a separate process reading the MJPEG stream as a
browser does. Both are fed as fast as they take frames (in-memory frames, file semantics: nothing
dropped), so results per second is the pipeline's throughput. The viewer counts the frames it received
(the web view must have delivered ~15 fps while B ran) and the CPU time the frame thread spent per frame.
Reported: the ratio of the totals and the median of the per-round ratios (robust to a burst of load in one
segment on a shared machine), and -- the figure that holds on a crowded machine -- the process's CPU time
per result on each side: their ratio is the throughput ratio of a pipeline bound by the CPU. Everything is
measured twice, the web view's pipeline made second and then first (the order alone moved the figures),
and the geometric mean of the two is the result. Goal: B/A >= 0.95 (the view costs <= 5 %).

The model is bench_pipeline.py's early-fusion CNN (width 1: ~0.16 GMAC; 2: ~0.6 GMAC).

  python benchmarks/bench_liveview.py [--rounds 4] [--segment 4] [--size 1280x720] [--width 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import write_bundle  # noqa: E402 - the same model as the pipeline benchmark

from edgemm.bundle import load_bundle  # noqa: E402
from edgemm.pipeline import Pipeline  # noqa: E402
from edgemm.sinks import make_sink  # noqa: E402
from edgemm.sources.patterns import ArrayAudioSource, ArrayVideoSource  # noqa: E402

# The viewer: reads multipart parts and prints how many JPEGs arrived, once a second.
VIEWER = textwrap.dedent("""
    import sys, time, urllib.request
    n, t0 = 0, time.monotonic()
    with urllib.request.urlopen(sys.argv[1]) as r:
        while True:
            line = r.readline()
            if not line:
                break
            if line.lower().startswith(b"content-length:"):
                size = int(line.split(b":")[1])
                r.readline()
                r.read(size)
                n += 1
                if time.monotonic() - t0 >= 1.0:
                    print(n, flush=True)
                    t0 = time.monotonic()
""")


def _sources(size: str):
    w, h = map(int, size.split("x"))
    frames = [np.random.default_rng(k).integers(0, 256, (h, w, 3), dtype=np.uint8) for k in range(8)]
    video = ArrayVideoSource(frames, fps=30.0, loop=True, realtime=False)
    audio = ArrayAudioSource(np.random.default_rng(2).uniform(-0.5, 0.5, 10 * 16000).astype(np.float32), 16000,
                             loop=True, realtime=False)
    return video, audio


def measure(bundle_path: Path, tmp: Path, rounds: int, segment_s: float, threads: int, size: str,
            viewers: int = 1, web_first: bool = False) -> dict:
    bundle = load_bundle(bundle_path)
    va, aa = _sources(size)
    vb, ab = _sources(size)
    web = make_sink("http://127.0.0.1:0")

    def pipeline(video, audio, name, with_web):
        sinks = [make_sink(f"jsonl:{tmp / name}")] + ([web] if with_web else [])
        return Pipeline(bundle, video=video, audio=audio, sinks=sinks, threads=threads)

    # Which of the two is made (and started) first is switched by web_first: that alone gave one side a
    # steady edge on this machine, so main() measures both ways and reports their geometric mean.
    first = pipeline(va, aa, "a.jsonl", web_first)
    second = pipeline(vb, ab, "b.jsonl", not web_first)
    viewed, plain = (first, second) if web_first else (second, first)
    per_round, n_a, t_a, n_b, t_b = [], 0, 0.0, 0, 0.0
    sent_b, viewer_s = 0, 0.0
    cpu = {False: 0.0, True: 0.0}  # CPU seconds of this process (all its threads) while each side ran
    with first, second:
        procs = [subprocess.Popen([sys.executable, "-c", VIEWER, web.url + "stream.mjpg"], stdout=subprocess.PIPE,
                                  text=True) for _ in range(viewers)]
        try:
            deadline = time.monotonic() + 10
            while web.viewers < viewers and time.monotonic() < deadline:
                viewed.step(timeout=1.0)
            if web.viewers < viewers:
                raise SystemExit("the viewer did not connect")
            for seg in range(rounds + 1):  # the first round warms both up and is not counted
                counts = {}
                # A B, then B A: neither side always runs right after the other's segment.
                for pipe in ((plain, viewed) if seg % 2 else (viewed, plain)):
                    sent0 = web.frames_sent
                    t0, c0 = time.perf_counter(), time.process_time()
                    n = 0
                    while time.perf_counter() - t0 < segment_s:
                        if pipe.step(timeout=1.0) is not None:
                            n += 1
                    dt = time.perf_counter() - t0
                    counts[pipe is viewed] = (n, dt)
                    if seg:
                        cpu[pipe is viewed] += time.process_time() - c0
                    if seg and pipe is viewed:
                        sent_b += web.frames_sent - sent0
                        viewer_s += dt
                if seg:
                    (na, ta), (nb, tb) = counts[False], counts[True]
                    n_a, t_a, n_b, t_b = n_a + na, t_a + ta, n_b + nb, t_b + tb
                    per_round.append(round((nb / tb) / (na / ta), 4))
        finally:
            for viewer in procs:
                viewer.terminate()
                viewer.wait(10)
    fps_a, fps_b = n_a / t_a, n_b / t_b
    return {"frames": size, "threads": threads, "viewers": viewers, "web_first": web_first, "plain_per_s": round(fps_a, 2), "viewed_per_s": round(fps_b, 2),
            "ratio": round(fps_b / fps_a, 4), "ratio_median": round(float(np.median(per_round)), 4),
            "cpu_ms_per_result_plain": round(1e3 * cpu[False] / n_a, 3),
            "cpu_ms_per_result_viewed": round(1e3 * cpu[True] / n_b, 3),
            # The throughput ratio a pipeline bound by the CPU would see (every thread's work competing for
            # the same cores); where the model runs on a GPU or a core of its own, the cost is smaller.
            "cpu_bound_ratio": round((cpu[False] / n_a) / (cpu[True] / n_b), 4),
            "ratio_per_round": per_round,
            # CPU time of the web view's frame thread (drawing + JPEG), per frame and per second of viewing
            "encode_cpu_ms_per_frame": round(1e3 * web.tap.cpu_s / max(1, web.tap.delivered), 3),
            "viewer_fps": round(sent_b / viewer_s, 2), "encoded": web.tap.delivered, "offered": web.tap.offered}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4, help="alternating segments of each side (after one warm-up)")
    p.add_argument("--segment", type=float, default=4.0, help="seconds per segment of each side")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--width", type=int, default=1, help="model width (1: ~0.16 GMAC, 2: ~0.6 GMAC)")
    p.add_argument("--sizes", default="1280x720,640x480", help="camera frame sizes to measure")
    p.add_argument("--viewers", type=int, default=1, help="0: the web view is there but nobody watches")
    p.add_argument("--json", help="write the figures as JSON")
    a = p.parse_args(argv)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        bundle = write_bundle(Path(tmp) / "model.edgemm", a.width)
        for size in a.sizes.split(","):
            both = [measure(bundle, Path(tmp), a.rounds, a.segment, a.threads, size, a.viewers, web_first)
                    for web_first in (False, True)]
            r = {"frames": size, "viewers": a.viewers, "width": a.width, "threads": a.threads,
                 "ratio": round(float(np.sqrt(both[0]["ratio"] * both[1]["ratio"])), 4),
                 "cpu_bound_ratio": round(float(np.sqrt(both[0]["cpu_bound_ratio"]
                                                        * both[1]["cpu_bound_ratio"])), 4),
                 "runs": both}
            out.append(r)
            for run in both:
                print(f"  web view made {'first' if run['web_first'] else 'second'}: {run['plain_per_s']}/s without, "
                      f"{run['viewed_per_s']}/s with, ratio {run['ratio']} (median of rounds {run['ratio_median']}); "
                      f"viewer received {run['viewer_fps']} fps; drawing + JPEG {run['encode_cpu_ms_per_frame']} ms "
                      f"CPU per frame; CPU per result {run['cpu_ms_per_result_plain']} ms without, "
                      f"{run['cpu_ms_per_result_viewed']} ms with: CPU-bound ratio {run['cpu_bound_ratio']}")
            print(f"web view, {a.viewers} viewer(s) at 15 fps, {size} frames, model width {a.width}, {a.threads} "
                  f"thread(s): throughput ratio {r['ratio']}, CPU-bound ratio {r['cpu_bound_ratio']} (geometric "
                  "means of both orders)", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
