"""Channel pruning and 2:4 sparsity on a trained CNN, without retraining: accuracy, size and speed in one run.

For the FP32 bundle and each pruned variant (channels:RATIO with and without least-squares reconstruction,
and 2:4), on the same machine in the same run:
  accuracy on the test split and its drop in points (converters.validate.compare_bundles, same samples),
  top-1 agreement and cosine of the logits against FP32,
  parameters and MACs (edgemm.modelinfo),
  latency in ONNX Runtime, all variants interleaved one inference at a time (converters.timing), as a
  speed-up ratio over FP32 (medians), at the given intra-op thread count.
Calibration (importance by activations, reconstruction) uses the calib split only; the test split is never
seen by the pruner.

Run (from the repository root):
  python benchmarks/bench_prune.py                       # the ResNet bundle written by benchmarks/train_resnet.py
  python benchmarks/bench_prune.py --ratios 0.3,0.5 --duration 10 --threads 1 --json build/bench_prune.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgemm.converters.calibration import GraphFeeds  # noqa: E402
from edgemm.converters.prune import prune  # noqa: E402
from edgemm.converters.timing import time_models  # noqa: E402
from edgemm.converters.validate import compare_bundles  # noqa: E402
from edgemm.bench import machine  # noqa: E402
from edgemm.bundle import load_bundle, write_bundle  # noqa: E402
from edgemm.errors import EdgemmError  # noqa: E402
from edgemm.outputs import write_json  # noqa: E402

DEFAULT_MODEL = ROOT / "benchmarks" / "models" / "resnet_digits"
DEFAULT_DATA = ROOT / "benchmarks" / "data" / "resnet_digits"


def variants(ratios: list[float], importance: str, with_sparse: bool) -> list[tuple[str, str, bool]]:
    """(label, spec, reconstruct) for every pruned model measured."""
    out = []
    for r in ratios:
        out.append((f"channels:{r:g} sliced", f"channels:{r:g}", False))
        out.append((f"channels:{r:g} + LS", f"channels:{r:g}", True))
    if with_sparse:
        out.append(("2:4 masked", "2:4", False))
        out.append(("2:4 + LS", "2:4", True))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="bundle folder (default: the ResNet bundle)")
    ap.add_argument("--calib", type=Path, default=DEFAULT_DATA / "calib")
    ap.add_argument("--test", type=Path, default=DEFAULT_DATA / "test")
    ap.add_argument("--ratios", default="0.3,0.4,0.5", help="channel ratios to remove, comma-separated")
    ap.add_argument("--importance", default="l1", choices=("l1", "l2", "activation"))
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--calib-limit", type=int, default=256)
    ap.add_argument("--no-sparse", action="store_true", help="skip the 2:4 variant")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds of interleaved latency measurement")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads for the latency run")
    ap.add_argument("--json", type=Path, help="write all results as JSON")
    args = ap.parse_args(argv)

    bundle = load_bundle(args.model)
    graph = bundle.single_graph
    model = bundle.load_graph(graph)
    ratios = [float(r) for r in args.ratios.split(",") if r]
    started = time.monotonic()
    feeds_source = GraphFeeds(bundle, args.calib, limit=args.calib_limit, progress=False)
    calib = list(feeds_source.iter_graph(graph))
    print(f"model {args.model} ({bundle.name}); calibration: {len(calib)} samples from {args.calib}", flush=True)

    rows = []
    pruned_models = {"fp32": model}
    with tempfile.TemporaryDirectory(prefix="bench_prune.") as tmp:
        for label, spec, rec in variants(ratios, args.importance, not args.no_sparse):
            t = time.monotonic()
            pm, info = prune(model, spec, calib, importance=args.importance, reconstruct=rec,
                             round_to=args.round_to, threads=1)
            prune_s = time.monotonic() - t
            man = bundle.manifest
            man.provenance = {**man.provenance, "converter": {"prune": spec, "reconstruct": rec,
                                                              **({"sparsity": info["sparsity"]} if "sparsity" in info else {})}}
            out = write_bundle(man, {man.graphs[graph].file: pm}, Path(tmp) / label.replace(" ", "_").replace(":", "-"))
            cmp = compare_bundles(bundle, load_bundle(out), args.test, ablation=False)
            prim = cmp["primary"]
            close = cmp["closeness"][prim["output"]]
            rows.append({"variant": label, "spec": spec, "reconstruct": rec, "prune_s": round(prune_s, 1),
                         "accuracy_fp32": prim["original"], "accuracy": prim["converted"],
                         "drop_points": prim["drop_points"], "top1_agreement": close.get("top1_agreement"),
                         "cosine": close["cosine"], "parameters": info["parameters"], "macs": info["macs"],
                         "groups_pruned": info.get("groups_pruned"), "groups_skipped": info.get("groups_skipped"),
                         "info": info})
            pruned_models[label] = pm
            print(f"  {label:<22} accuracy {100 * prim['converted']:.2f} % (fp32 {100 * prim['original']:.2f} %, "
                  f"drop {prim['drop_points']:+.2f} points), params {info['parameters']['after']:,}, "
                  f"MACs {info['macs']['after']:,}, pruned in {prune_s:.1f} s", flush=True)

    sample = next(iter(calib))
    lat = time_models(pruned_models, feed=sample, threads=args.threads, duration_s=args.duration)
    fp32_ms = lat["fp32"]["latency_ms"]["p50"]
    for r in rows:
        res = lat[r["variant"]]
        r["latency_ms_p50"] = res["latency_ms"]["p50"]
        r["latency_ms_p90"] = res["latency_ms"]["p90"]
        r["speedup"] = res["speedup"]

    print()
    print(f"FP32: {fp32_ms:.3f} ms median, {rows[0]['parameters']['before']:,} parameters, "
          f"{rows[0]['macs']['before']:,} MACs; ONNX Runtime CPU, {args.threads} thread(s), batch 1, "
          f"{lat['fp32']['iterations']} interleaved iterations each")
    head = "| variant | accuracy | drop (points) | top-1 agree | params | MACs | median ms | speed-up |"
    print(head)
    print("|---|---|---|---|---|---|---|---|")
    print(f"| fp32 | {100 * rows[0]['accuracy_fp32']:.2f} % | - | - | {rows[0]['parameters']['before']:,} | "
          f"{rows[0]['macs']['before']:,} | {fp32_ms:.3f} | 1.00x |")
    for r in rows:
        print(f"| {r['variant']} | {100 * r['accuracy']:.2f} % | {r['drop_points']:+.2f} | "
              f"{100 * r['top1_agreement']:.1f} % | {r['parameters']['after']:,} "
              f"({r['parameters']['after'] / r['parameters']['before']:.2f}) | {r['macs']['after']:,} "
              f"({r['macs']['after'] / r['macs']['before']:.2f}) | {r['latency_ms_p50']:.3f} | {r['speedup']:.2f}x |")
    print(f"machine: {machine()}; total {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
                               "fp32_latency_ms": lat["fp32"]["latency_ms"], "rows": rows})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except EdgemmError as exc:
        print(f"bench_prune: error: {exc}", file=sys.stderr)
        sys.exit(1)
