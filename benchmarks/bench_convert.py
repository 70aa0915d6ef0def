"""Converter benchmark: FP32 vs edgemm INT8 vs ONNX Runtime quantize_static defaults vs FP16, in one run.

For every model (the ResNet-class CNN of benchmarks/train_resnet.py, and the AV-digits reference fusion
models of benchmarks/train_reference.py where they and their data exist):

  fp32            the trained model
  int8 edgemm     `edgemm convert --precision int8 --max-drop 1` (flavour chosen by timing on this CPU,
                  accuracy guard on the test split)
  int8 ort-default onnxruntime.quantization.quantize_static with its defaults (QDQ, S8S8, per-tensor,
                  MinMax, no pre-processing) on the same calibration samples
  int8 trt-qdq    edgemm's TensorRT Q/DQ flavour (symmetric S8S8); its accuracy is what ORT computes
                  from the Q/DQ graph, its CPU latency says nothing about TensorRT (listed, not timed)
  fp16            `edgemm convert --precision fp16`

Accuracy and closeness come from edgemm.converters.validate.compare_bundles on the test split; latency from
converters.timing (edgemm.bench.run), all variants interleaved one inference at a time (batch 1), so the
ratios hold even on a busy machine. Prints markdown (and writes it with --out).

Usage:  python benchmarks/bench_convert.py [--threads 1] [--seconds 12] [--out results.md] [--only resnet_digits]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgemm.converters.calibration import CalibrationReader, GraphFeeds, graph_order  # noqa: E402
from edgemm.converters.convert import ConvertOptions, convert, stage_bundle  # noqa: E402
from edgemm.converters.timing import time_models  # noqa: E402
from edgemm.converters.validate import compare_bundles  # noqa: E402
from edgemm.bundle import load_bundle  # noqa: E402
from edgemm.errors import EdgemmError  # noqa: E402
from edgemm.outputs import write_atomic, write_json  # noqa: E402

MODELS = {
    # name: (bundle, calibration folder, test folder)
    "resnet_digits": ("benchmarks/models/resnet_digits", "benchmarks/data/resnet_digits/calib",
                      "benchmarks/data/resnet_digits/test"),
    "avdigits_early": ("benchmarks/models/avdigits_early", "build/avdigits/calib", "build/avdigits/eval/clean"),
    "avdigits_intermediate": ("benchmarks/models/avdigits_intermediate", "build/avdigits/calib",
                              "build/avdigits/eval/clean"),
    "avdigits_late": ("benchmarks/models/avdigits_late", "build/avdigits/calib", "build/avdigits/eval/clean"),
    "avdigits_multitask": ("benchmarks/models/avdigits_multitask", "build/avdigits/calib",
                           "build/avdigits/eval/clean"),
}
MAX_DROP = 1.0
CALIB_LIMIT = 512


def ort_default(bundle, calib, limit, work: Path):
    """quantize_static with its defaults, graph by graph, on the same calibration samples."""
    from onnxruntime.quantization import quantize_static

    models = {}
    with GraphFeeds(bundle, calib, limit=limit, progress=False) as gf:
        for g in graph_order(bundle):
            out = work / f"ortdefault-{g}.onnx"
            quantize_static(str(bundle.graph_path(g)), str(out), CalibrationReader(gf, g))
            import onnx

            models[g] = onnx.load(str(out))
    return stage_bundle(bundle, models, work / "ort-default")


def trt_qdq(bundle, calib, limit, work: Path):
    from edgemm.converters import int8

    graphs = graph_order(bundle)
    prepared = {g: int8.prepare(bundle.load_graph(g)) for g in graphs}
    with GraphFeeds(bundle, calib, limit=limit, progress=False) as gf:
        cals = int8.calibrate_graphs(prepared, gf.iter_feeds(), "minmax", symmetric=True)
    models = {g: int8.quantize(prepared[g], cals[g], "trt") for g in graphs}
    return stage_bundle(bundle, models, work / "trt-qdq")


def first_feeds(bundle, calib) -> dict[str, dict]:
    with GraphFeeds(bundle, calib, limit=1, progress=False) as gf:
        return next(gf.iter_feeds())


def time_variants(variants: dict, feeds: dict, threads: int, seconds: float) -> dict[str, float]:
    """Sum over graphs of the median latency (ms) of each variant, all timed interleaved in one run."""
    models, graph_feeds = {}, {}
    for label, b in variants.items():
        for g in b.manifest.graphs:
            models[f"{label}|{g}"] = b.graph_path(g)
            graph_feeds[f"{label}|{g}"] = feeds[g]
    results = time_models(models, feeds=graph_feeds, threads=threads, duration_s=seconds, warmup_s=0.5)
    out: dict[str, float] = {}
    for key, r in results.items():
        label = key.split("|")[0]
        out[label] = out.get(label, 0.0) + r["latency_ms"]["p50"]
    out["_iterations"] = next(iter(results.values()))["iterations"]
    return out


def size_mb(bundle) -> float:
    return sum(bundle.graph_path(g).stat().st_size for g in bundle.manifest.graphs) / 1e6


def bench_model(name, bundle_dir, calib, test, threads, seconds, work: Path) -> dict:
    bundle = load_bundle(ROOT / bundle_dir)
    calib, test = ROOT / calib, ROOT / test
    variants = {"fp32": bundle}
    notes: dict[str, str] = {}
    details: dict = {}
    t0 = time.monotonic()
    try:
        rep = convert(bundle.root, work / "int8", ConvertOptions(
            precision="int8", calib=calib, calib_limit=CALIB_LIMIT, eval=test, max_drop=MAX_DROP, threads=threads,
            bench_seconds=1.0, quiet=True))
        variants["int8 edgemm"] = load_bundle(work / "int8")
        details["int8"] = rep["conversion"]
    except EdgemmError as exc:
        notes["int8 edgemm"] = str(exc)
    details["int8_seconds"] = round(time.monotonic() - t0, 1)
    variants["int8 ort-default"] = ort_default(bundle, calib, CALIB_LIMIT, work)
    variants["int8 trt-qdq"] = trt_qdq(bundle, calib, CALIB_LIMIT, work)
    rep16 = convert(bundle.root, work / "fp16", ConvertOptions(precision="fp16", calib=calib, calib_limit=CALIB_LIMIT,
                                                               threads=threads, bench_seconds=0.5, quiet=True))
    variants["fp16"] = load_bundle(work / "fp16")
    details["fp16"] = rep16["conversion"]["fp16"]

    rows = {}
    for label, b in variants.items():
        cmp = compare_bundles(bundle, b, test, threads=threads, ablation=False)
        prim = cmp["primary"]
        close = cmp["closeness"].get(prim["output"], {})
        rows[label] = {"accuracy": 100 * prim["converted"], "drop": prim.get("drop_points"),
                       "cosine": close.get("cosine"), "cosine_min": close.get("cosine_min"),
                       "top1": close.get("top1_agreement"), "max_abs": close.get("max_abs"),
                       "size_mb": size_mb(b), "samples": cmp["samples"]}
    timed = {k: v for k, v in variants.items() if k != "int8 trt-qdq"}
    lat = time_variants(timed, first_feeds(bundle, calib), threads, seconds)
    for label in timed:
        rows[label]["p50_ms"] = lat[label]
        rows[label]["speedup"] = lat["fp32"] / lat[label]
    return {"name": name, "rows": rows, "notes": notes, "details": details, "iterations": lat["_iterations"],
            "graphs": list(bundle.manifest.graphs), "fusion": bundle.manifest.fusion.form}


def markdown(results: list[dict], args, machine: dict, command: str) -> str:
    lines = ["## Converters: INT8, FP16 and ONNX Runtime's defaults (ONNX Runtime, CPU)", "",
             f"Command: `{command}`  ", f"Machine: {machine['cpu']}, {machine['cores']} cores visible "
             f"(shared with other jobs), {machine['os']}, onnxruntime {machine.get('onnxruntime')}, "
             f"int8 dot product: {machine.get('int8_dot_product')}  ",
             f"Latency: batch 1, {args.threads} intra-op thread(s), all variants interleaved in one "
             f"{args.seconds:g} s run (`edgemm.bench.run`); p50 summed over a bundle's graphs. "
             "Accuracy: the test split, top-1.", ""]
    for r in results:
        lines += [f"### {r['name']} ({r['fusion']} fusion, graphs: {', '.join(r['graphs'])}; "
                  f"{r['rows']['fp32']['samples']} test samples; {r['iterations']} timed inferences each)", "",
                  "| variant | accuracy | drop (points) | p50 ms | speed-up vs FP32 | size MB | cosine (mean / min) | top-1 agreement |",
                  "|---|---|---|---|---|---|---|---|"]
        for label, v in r["rows"].items():
            p50 = f"{v['p50_ms']:.3f}" if "p50_ms" in v else "not timed"
            sp = f"{v['speedup']:.2f}x" if "speedup" in v else "n/a (TensorRT flavour)"
            drop = "" if label == "fp32" else f"{v['drop']:.2f}"
            cos = "" if label == "fp32" else f"{v['cosine']:.5f} / {v['cosine_min']:.5f}"
            top1 = "" if label == "fp32" else f"{100 * v['top1']:.2f} %"
            lines.append(f"| {label} | {v['accuracy']:.2f} % | {drop} | {p50} | {sp} | {v['size_mb']:.2f} | {cos} | {top1} |")
        for label, n in r["notes"].items():
            lines.append(f"\n{label}: not produced: {n}")
        d = r["details"].get("int8")
        if d:
            lines.append("")
            for g, gi in d["int8"].items():
                f = gi["flavour"]
                cands = ", ".join(f"{k} {c['speedup_vs_fp32']:.2f}x" for k, c in f.get("candidates", {}).items())
                lines.append(f"- int8 edgemm, graph {g}: flavour **{f['chosen']}** ({f['why']}; candidates vs FP32 in "
                             f"the converter's own timing: {cands}); calibration {gi['calibration']['method']} on "
                             f"{gi['calibration']['samples']} samples")
            g = d.get("accuracy_guard")
            if g:
                kept = {k: v for k, v in g.get("layers_kept_float", {}).items() if v}
                lines.append(f"- accuracy guard (budget {g['max_drop_points']:g} point): float {g['metric_float']:.2f}, "
                             f"all quantized {g.get('metric_all_quantized', g['metric_final']):.2f}, final "
                             f"{g['metric_final']:.2f}; kept in float: {json.dumps(kept) if kept else 'none'}")
            lines.append(f"- edgemm int8 conversion time: {r['details']['int8_seconds']:.0f} s (incl. guard and report)")
        f16 = r["details"].get("fp16")
        if f16:
            kept = {g: [k["node"] for k in v["kept_fp32"]] for g, v in f16.items() if v["kept_fp32"]}
            lines.append(f"- fp16: ops kept in FP32 for range: {json.dumps(kept) if kept else 'none'}")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=12.0, help="interleaved timing per model (all variants)")
    ap.add_argument("--only", help="comma-separated model names (default: every model that exists)")
    ap.add_argument("--out", help="also write the markdown here")
    ap.add_argument("--json", help="also write the raw results as JSON")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else list(MODELS)
    if not (ROOT / MODELS["resnet_digits"][2]).exists():
        print("regenerating benchmarks/data/resnet_digits (python benchmarks/train_resnet.py --data-only)", file=sys.stderr)
        import train_resnet  # noqa: PLC0415 - same folder

        train_resnet.main(["--data-only"])
    results = []
    for name in names:
        bundle_dir, calib, test = MODELS[name]
        if not (ROOT / bundle_dir).exists() or not (ROOT / calib).exists() or not (ROOT / test).exists():
            print(f"skipping {name}: model or data not present", file=sys.stderr)
            continue
        print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix=f"bench-convert-{name}-") as work:
            results.append(bench_model(name, bundle_dir, calib, test, args.threads, args.seconds, Path(work)))
    from edgemm.converters.convert import _machine

    command = "python benchmarks/bench_convert.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    text = markdown(results, args, _machine(), command.strip())
    print(text)
    if args.out:
        write_atomic(args.out, text + "\n")
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
