"""CPU backends x precisions, with ONNX Runtime FP32 as 1.00x: where edgemm stands against plain OpenVINO.

For every model (single-graph bundles or .onnx files):

  ORT FP32          the model on ONNX Runtime's CPU provider (the reference, 1.00x)
  ORT INT8          `edgemm convert --precision int8` (target onnxruntime: flavour chosen by timing here)
  OV FP32           the model on OpenVINO (edgemm's runner: latency hint, FP32, no CPU pinning)
  OV on ORT INT8    OpenVINO running the onnxruntime-target INT8 graph (what a user gets without --target)
  OV INT8           `edgemm convert --precision int8 --target openvino` (edgemm's OpenVINO placement or
                    NNCF's PTQ, whichever is faster under OpenVINO here), run on OpenVINO

Both conversions run with `--max-drop 1` where a labelled --eval folder exists (accuracy drop reported), else
calibrate on the given folder or on synthesised inputs (closeness to FP32 only: cosine of the outputs).
All five variants of a model are timed interleaved one inference at a time (edgemm.bench.run, batch 1,
--threads intra-op threads each), so the ratios hold on a busy machine; compare ratios, not milliseconds.

Usage:  python benchmarks/bench_backends.py [--threads 1] [--seconds 10] [--model NAME=PATH[,CALIB[,EVAL]]]...
        (default models: the ResNet-class CNN and the AV-digits early-fusion reference model)
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgemm import bench  # noqa: E402
from edgemm.bundle import load_bundle  # noqa: E402
from edgemm.converters.convert import ConvertOptions, convert  # noqa: E402
from edgemm.feeds import synthesize  # noqa: E402
from edgemm.runners.onnxruntime import OnnxRuntimeRunner  # noqa: E402
from edgemm.runners.openvino import OpenVINORunner  # noqa: E402

DEFAULT_MODELS = {
    "resnet_digits": ("benchmarks/models/resnet_digits", "benchmarks/data/resnet_digits/calib",
                      "benchmarks/data/resnet_digits/test"),
    "avdigits_early": ("benchmarks/models/avdigits_early", None, None),
}
SYNTHETIC_SAMPLES = 64
VARIANTS = ("ORT FP32", "ORT INT8", "OV FP32", "OV on ORT INT8", "OV INT8")


def synthetic_folder(bundle, folder: Path) -> Path:
    """Calibration inputs synthesised from the manifest (plausible ranges), for models without data."""
    from edgemm.feeds import onnx_input_metadata

    folder.mkdir(parents=True)
    graph = bundle.single_graph
    meta = onnx_input_metadata(bundle.load_graph(graph, load_weights=False))
    feeds = [synthesize(meta, bundle.manifest.graphs[graph], 1, seed) for seed in range(SYNTHETIC_SAMPLES)]
    np.savez(folder / "synthetic.npz", **{k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]})
    return folder


def bench_model(name: str, path: str, calib: str | None, test: str | None, threads: int, seconds: float,
                work: Path) -> dict:
    model_path = ROOT / path  # an absolute path stays as it is
    bundle = load_bundle(model_path)
    graph = bundle.single_graph
    synthetic = calib is None
    calib_dir = synthetic_folder(bundle, work / f"{name}-calib") if synthetic else ROOT / calib
    test_dir = ROOT / test if test else None
    # (unbaked for both targets: every variant is timed on the same preprocessed float feed)
    common = dict(precision="int8", calib=calib_dir, eval=test_dir, max_drop=1.0 if test_dir else None,
                  threads=threads, bench_seconds=1.0, quiet=True, bake_preprocess="none")
    started = time.monotonic()
    reports = {target: convert(model_path, work / f"{name}-{target}", ConvertOptions(target=target, **common))
               for target in ("onnxruntime", "openvino")}
    convert_s = time.monotonic() - started
    fp32 = bundle.graph_path(graph)
    ort_int8, ov_int8 = (load_bundle(work / f"{name}-{t}").graph_path(graph) for t in ("onnxruntime", "openvino"))
    runners = {"ORT FP32": OnnxRuntimeRunner(fp32, threads=threads), "ORT INT8": OnnxRuntimeRunner(ort_int8, threads=threads),
               "OV FP32": OpenVINORunner(fp32, threads), "OV on ORT INT8": OpenVINORunner(ort_int8, threads),
               "OV INT8": OpenVINORunner(ov_int8, threads)}
    from edgemm.converters.calibration import GraphFeeds

    with GraphFeeds(bundle, calib_dir, limit=1, progress=False) as gf:
        feed = next(gf.iter_feeds())[graph]
    results = bench.run([bench.Target(k, r, feed=feed) for k, r in runners.items()], duration_s=seconds)
    p50 = {r["model"]: r["latency_ms"]["p50"] for r in results}
    quality = {}
    for target, rep in reports.items():
        prim = rep.get("primary") or {}
        close = next(iter((rep.get("closeness") or {}).values()), {}) or {}
        quality[target] = {"drop_points": prim.get("drop_points"), "metric": prim.get("metric"),
                           "cosine": close.get("cosine"),
                           "flavour": rep["conversion"]["int8"][graph]["flavour"]["chosen"],
                           "candidates": {k: round(v["speedup_vs_fp32"], 2) for k, v in
                                          rep["conversion"]["int8"][graph]["flavour"].get("candidates", {}).items()}}
    return {"name": name, "p50_ms": p50, "iterations": results[0]["iterations"], "quality": quality,
            "synthetic_calibration": synthetic, "convert_s": round(convert_s, 1)}


def markdown(results: list[dict], command: str, machine: dict, threads: int) -> str:
    lines = [f"Command: `{command}`  ",
             f"Machine: {machine['cpu']}, {machine['cores']} cores visible (shared with other jobs), onnxruntime "
             f"{machine.get('onnxruntime')}, openvino {machine.get('openvino')}  ",
             f"Latency: p50, batch 1, {threads} thread(s) each, the five variants of a model interleaved in one run; "
             "ratio = ORT FP32 p50 / variant p50.", "",
             "| model | " + " | ".join(VARIANTS) + " | edgemm best vs OV FP32 | OV INT8 vs OV FP32 | INT8 quality |",
             "|---|" + "---|" * (len(VARIANTS) + 3)]
    for r in results:
        p = r["p50_ms"]
        ref = p["ORT FP32"]
        cells = [f"{ref / p[v]:.2f}x ({p[v]:.3f} ms)" for v in VARIANTS]
        best = min(p[v] for v in ("ORT FP32", "ORT INT8", "OV FP32", "OV INT8"))
        q = []
        for target, label in (("onnxruntime", "ORT"), ("openvino", "OV")):
            qi = r["quality"][target]
            what = (f"drop {qi['drop_points']:.2f} pt" if qi["drop_points"] is not None else
                    f"cosine {qi['cosine']:.4f}" if qi["cosine"] is not None else "n/a")
            q.append(f"{label} {qi['flavour']} {what}")
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {p['OV FP32'] / best:.2f}x | "
                     f"{p['OV FP32'] / p['OV INT8']:.2f}x | " + "; ".join(q) + " |")
    lines.append("")
    for r in results:
        cands = {t: q["candidates"] for t, q in r["quality"].items()}
        lines.append(f"- {r['name']}: {r['iterations']} timed inferences per variant; converter's own candidate "
                     f"timings (x FP32 of its runtime): {cands}"
                     + ("; calibrated on synthesised inputs (no data folder): closeness only" if
                        r["synthetic_calibration"] else ""))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10.0, help="interleaved timing per model (all variants)")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=PATH[,CALIB[,EVAL]]",
                    help="a model to measure instead of the defaults (repeatable)")
    ap.add_argument("--out", help="also write the markdown here")
    args = ap.parse_args(argv)
    models = {}
    for spec in args.model:
        name, _, rest = spec.partition("=")
        parts = rest.split(",") + [None, None]
        models[name] = (parts[0], parts[1] or None, parts[2] or None)
    models = models or DEFAULT_MODELS
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as work:
        for name, (path, calib, test) in models.items():
            if calib and not (ROOT / calib).exists():
                print(f"skipping {name}: no {calib} (python benchmarks/train_resnet.py --data-only makes it)",
                      file=sys.stderr)
                continue
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            results.append(bench_model(name, path, calib, test, args.threads, args.seconds, Path(work)))
    command = "python benchmarks/bench_backends.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    text = markdown(results, command.strip(), bench.machine(), args.threads)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
