"""PP-OCRv4's text recogniser converted to INT8 for ONNX Runtime (`--target onnxruntime`), each way a user can
go, scored by recognised text (benchmarks/ocr_text.py: lines rendered here, read with rapidocr's own pre- and
post-processing):

  default       `edgemm convert --precision int8` as it is: the closeness floor (--min-cosine 0.99) judges it
  max-drop      `--max-drop 1`: the accuracy guard keeps the costliest layers float (no labels: cosine x 100)
  accepted      `--min-cosine 0`: the graph the floor refuses, delivered anyway, to score what it would read
  nncf-sq       the graph `--target openvino` chooses (NNCF, transformer placement, SmoothQuant on convolutions)
                run by ONNX Runtime instead of OpenVINO

Calibrated on --calib-n text lines (seed 1), scored on --lines others (seed 0), FP32 on the same lines. CPU time
p50 of one inference under ONNX Runtime, one thread, the graphs interleaved.

    python benchmarks/ocr_rec_ort_int8.py [--skip max-drop] [--json build/rec-ort.json]

The model comes from the zoo's cache (benchmarks/zoo.py fetches it). `max-drop` takes about 25 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import ocr_text  # noqa: E402
import zoo  # noqa: E402

WAYS = {"default": [], "max-drop": ["--max-drop", "1"], "accepted": ["--min-cosine", "0"],
        "nncf-sq": ["--target", "openvino", "--flavour", "nncf-sq", "--bake-preprocess", "none", "--min-cosine", "0"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calib-n", type=int, default=64)
    ap.add_argument("--lines", type=int, default=500)
    ap.add_argument("--skip", action="append", default=[], choices=list(WAYS))
    ap.add_argument("--rounds", type=int, default=60, help="interleaved timing rounds")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    import onnxruntime as ort

    model = zoo.fetch([m for m in zoo.ZOO if m.name == "ocr_rec"])["ocr_rec"]["path"]
    test = ocr_text.lines(args.lines, seed=0)
    feeds = [{"x": ocr_text.feed(img, ocr_text.WIDTH)} for img, _ in test]
    chars = ocr_text.characters(model)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        calib = work / "calib"
        calib.mkdir()
        for i, (img, _) in enumerate(ocr_text.lines(args.calib_n, seed=1)):
            np.savez(calib / f"s{i:03d}.npz", x=ocr_text.feed(img, ocr_text.WIDTH))
        graphs = {"fp32": str(model)}
        for way, extra in WAYS.items():
            if way in args.skip:
                continue
            out, t0 = work / way, time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "edgemm", "convert", str(model), "-o", str(out),
                                   "--precision", "int8", "--calib", str(calib), "--shape", "x:1x3x48x320",
                                   "--threads", "1", "-q", *extra], capture_output=True, text=True, cwd=ROOT)
            r = results[way] = {"seconds": round(time.monotonic() - t0)}
            if proc.returncode:
                r["refused"] = proc.stderr.strip().splitlines()[-1]
            else:
                rep = json.loads((out / "report.json").read_text())
                r["cosine"] = {k: round(v["cosine"], 4) for k, v in rep["closeness"].items()}
                graphs[way] = str(next(out.glob("*.onnx")))
            print(way, r, flush=True)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sessions = {k: ort.InferenceSession(p, so, providers=["CPUExecutionProvider"]) for k, p in graphs.items()}
        for k, s in sessions.items():
            read = [ocr_text.decode(s.run(None, f)[0], chars) for f in feeds]
            results.setdefault(k, {})["read"] = ocr_text.score(read, [t for _, t in test])
        cpu: dict[str, list[float]] = {k: [] for k in sessions}
        for i in range(args.rounds):
            for k, s in sessions.items():
                c = time.thread_time()
                s.run(None, feeds[i % len(feeds)])
                cpu[k].append(time.thread_time() - c)
    fp32 = float(np.median(cpu["fp32"]))
    for k, v in cpu.items():
        results[k]["cpu_p50_ms"] = round(1e3 * float(np.median(v)), 3)
        results[k]["vs_fp32"] = round(fp32 / float(np.median(v)), 3)
    print("| graph | convert | lines read exactly % | chars % | ORT CPU p50 ms | vs ORT FP32 |")
    print("|---|---|---|---|---|---|")
    for k, r in results.items():
        how = r.get("refused") or (f"ok, cosine {r['cosine']}" if "cosine" in r else "the model")
        read = r.get("read")
        print(f"| {k} | {how} | {read['exact_pct'] if read else '-'} | "
              f"{round(read['char_acc_pct'], 2) if read else '-'} | {r.get('cpu_p50_ms', '-')} | {r.get('vs_fp32', '-')} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
