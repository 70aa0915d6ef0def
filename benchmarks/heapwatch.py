"""What grows in a long `edgemm run`: the command run in this process under tracemalloc, with a heap snapshot
every --every seconds, and the snapshots compared afterwards.

    python benchmarks/heapwatch.py --every 120 --out DIR [--reservoir N] -- run MODEL --video ... --sink ...
    python benchmarks/heapwatch.py --compare DIR          # growth per allocation site, snapshot to snapshot

Each look writes DIR/snap-NNN.tracemalloc (tracemalloc's own format) and one line of DIR/heap.jsonl: the time,
RSS, what tracemalloc traces (Python's allocations; native libraries' own malloc is not in it), and the live
objects per type (gc), so a leak of Python objects shows as a rising traced total and a rising type, and
growth that is not Python objects (the allocator's fragmentation, ONNX Runtime, OpenCV) as RSS rising while
the traced total stays flat.

--reservoir N caps the latency reservoirs (20,000 samples each by default) at N, so that they are full, and
the run's memory should be flat, after N results instead of after ~11 minutes.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import gc
import json
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                               "uordblks", "fordblks", "keepcost")]


def mallinfo() -> dict:
    """glibc's own account: heap taken from the OS (arena, mmapped), in use (uordblks) and free in it
    (fordblks). In use flat while the heap grows: fragmentation; in use growing while tracemalloc's total is
    flat: native allocations (ONNX Runtime, OpenCV, PortAudio)."""
    try:
        f = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return {}
    f.restype = _Mallinfo2
    m = f()
    return {"heap_mb": round((m.arena + m.hblkhd) / 2**20, 3), "in_use_mb": round((m.uordblks + m.hblkhd) / 2**20, 3),
            "free_mb": round(m.fordblks / 2**20, 3)}


def look(out: Path, k: int, t0: float) -> None:
    if tracemalloc.is_tracing():
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        snap.dump(str(out / f"snap-{k:03d}.tracemalloc"))
    types = collections.Counter(type(o).__name__ for o in gc.get_objects())
    cur, peak = tracemalloc.get_traced_memory()
    row = {"k": k, "s": round(time.time() - t0, 1), "rss_mb": round(rss_mb(), 2), "traced_mb": round(cur / 2**20, 3),
           "traced_peak_mb": round(peak / 2**20, 3), "tracemalloc_own_mb": round(tracemalloc.get_tracemalloc_memory() / 2**20, 3),
           **mallinfo(), "gc_objects": sum(types.values()),
           "types": dict(types.most_common(40))}
    with open(out / "heap.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def watch(out: Path, every: float, trim_s: float = 0.0) -> None:
    t0, k = time.time(), 0
    trim = ctypes.CDLL(None).malloc_trim if trim_s else None
    next_look, next_trim = t0 + every, t0 + (trim_s or 1e18)
    while True:
        time.sleep(max(0.0, min(next_look, next_trim) - time.time()))
        if time.time() >= next_trim:  # give glibc's free pages back to the OS (a remedy to try, not edgemm's)
            trim(0)
            next_trim += trim_s
        if time.time() >= next_look:
            look(out, k, t0)
            k += 1
            next_look += every


def cap_reservoirs(n: int) -> None:
    from edgemm import bench

    init = bench.Reservoir.__init__

    def capped(self, size, *a, **kw):
        init(self, min(size, n), *a, **kw)

    bench.Reservoir.__init__ = capped


def compare(folder: Path, top: int = 15) -> None:
    rows = [json.loads(line) for line in open(folder / "heap.jsonl")]
    print("| look | s | RSS (MB) | traced (MB) | tracemalloc's own (MB) | malloc heap / in use / free (MB) | gc objects |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['k']} | {r['s']} | {r['rss_mb']} | {r['traced_mb']} | {r.get('tracemalloc_own_mb')} | "
              f"{r.get('heap_mb')} / {r.get('in_use_mb')} / {r.get('free_mb')} | {r['gc_objects']} |")
    snaps = sorted(folder.glob("snap-*.tracemalloc"))
    if len(snaps) < 2:
        return
    first, last = rows[0], rows[-1]
    grew = {t: last["types"].get(t, 0) - n for t, n in first["types"].items()}
    print("\nlive objects per type, first look to last (the 40 commonest):",
          {t: d for t, d in sorted(grew.items(), key=lambda x: -abs(x[1])) if d}.__repr__()[:1500])
    a, b = tracemalloc.Snapshot.load(str(snaps[0])), tracemalloc.Snapshot.load(str(snaps[-1]))
    hours = (last["s"] - first["s"]) / 3600
    print(f"\ngrowth per allocation site, {snaps[0].name} -> {snaps[-1].name} ({hours * 60:.1f} min):")
    for st in b.compare_to(a, "lineno")[:top]:
        print(f"  {st.size_diff / 2**20 / hours:+8.3f} MB/h  {st.count_diff:+7d} blocks  {st.traceback}")
    # A leak grows at every look; a temporary that happened to be alive at one look does not.
    sizes = []
    for path in snaps:
        stats = tracemalloc.Snapshot.load(str(path)).statistics("lineno")
        sizes.append({str(st.traceback): (st.size, st.count) for st in stats})
    sites = sorted(sizes[-1], key=lambda s: sizes[-1][s][1] - sizes[0].get(s, (0, 0))[1], reverse=True)[:top]
    print("\nblocks alive per look, the sites that gained the most blocks:")
    for s in sites:
        print(f"  {s}: " + " ".join(str(z.get(s, (0, 0))[1]) for z in sizes))
    print("\n... by traceback, the 5 largest:")
    for st in b.compare_to(a, "traceback")[:5]:
        print(f"  {st.size_diff / 2**20 / hours:+8.3f} MB/h  {st.count_diff:+7d} blocks")
        for line in st.traceback.format()[-10:]:
            print("     ", line)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rest = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--every", type=float, default=120.0, help="seconds between snapshots")
    ap.add_argument("--out", help="folder for the snapshots")
    ap.add_argument("--frames", type=int, default=8,
                    help="frames kept per allocation; 0: no tracemalloc (RSS, malloc's account and gc counts only)")
    ap.add_argument("--reservoir", type=int, help="cap the latency reservoirs at this many samples")
    ap.add_argument("--trim", type=float, default=0.0, metavar="S", help="call glibc's malloc_trim(0) every S seconds")
    ap.add_argument("--compare", help="print what grew in this folder's snapshots")
    a = ap.parse_args(argv)
    if a.compare:
        compare(Path(a.compare))
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    if a.reservoir:
        cap_reservoirs(a.reservoir)
    if a.frames:
        tracemalloc.start(a.frames)
    threading.Thread(target=watch, args=(out, a.every, a.trim), name="heapwatch", daemon=True).start()
    from edgemm.cli import main as edgemm_main

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return edgemm_main(rest)


if __name__ == "__main__":
    sys.exit(main())
