#!/usr/bin/env python3
"""Evaluate the AV-digits reference models: every model, clean and with each modality corrupted or missing,
FP32 against INT8 and pruned versions made by the converters. Writes a markdown table and a JSON file.

Conditions (the test split of benchmarks/avdigits/generate.py: unseen images, unseen speakers):
  clean           both sensors fine (quiet cabin noise, 15-35 dB SNR)
  video occluded  a hand over ~3/4 of the card          audio noisy    road noise at -16 dB SNR
  video night     14 % light, heavy sensor noise        audio silent   the occupant only gestured
  video missing   no camera (FusionModel: present=False) audio missing  no microphone
  both degraded   video night + audio noisy at once
"Missing" is handled as each fusion form does at run time: early/multitask zero the input, intermediate
zeroes the embedding and sets its presence flag to 0, late leaves the member out. A single-modality
model whose only sensor is missing sees a blank input: its figure is what it then answers (chance).

Metrics: accuracy, macro recall and macro F1 of the digit output (converters.validate, the metrics
`edgemm eval` reports). Also the fixed subset rendered from the material that ships in the package
(edgemm/reference/data), whose figures tests/test_reference.py checks the shipped models against.

Usage:  python benchmarks/eval_reference.py [--data build/avdigits] [--models benchmarks/models]
        [--no-convert] [--out benchmarks/avdigits/results.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgemm.bundle import load_bundle  # noqa: E402
from edgemm.fusion import FusionModel  # noqa: E402

MODELS = ["video", "audio", "early", "intermediate", "late", "multitask"]
FUSION = ["early", "intermediate", "late", "multitask"]
# column -> (video variant, audio variant, missing modality)
CONDITIONS = {
    "clean": ("clean", "clean", None),
    "video occluded": ("occluded", "clean", None),
    "video night": ("lowlight", "clean", None),
    "video missing": ("clean", "clean", "video"),
    "audio noisy": ("clean", "noisy", None),
    "audio silent": ("clean", "silent", None),
    "audio missing": ("clean", "clean", "audio"),
    "both degraded": ("lowlight", "noisy", None),
}
CORRUPTED = [c for c in CONDITIONS if c != "clean"]
MATCH = 0.01  # "matches the better single sensor": within 1 point
SUBSET = {"n": 200, "seed": 7}  # the shipped-material subset the tests reproduce
SUBSET_CONDITIONS = {"clean": ("clean", "clean"), "video occluded": ("occluded", "clean"),
                     "audio noisy": ("clean", "noisy"), "both degraded": ("lowlight", "noisy")}


def metrics(y_true, logits, labels) -> dict:
    from edgemm.converters.validate import classification_metrics

    m = classification_metrics(y_true, np.asarray(logits).argmax(1), labels)
    return {"accuracy": round(m["accuracy"], 4), "recall": round(m["recall_macro"], 4), "f1": round(m["f1_macro"], 4)}


def run_conditions(bundle_path: Path, test: dict, conditions=CONDITIONS, threads=None) -> dict:
    bundle = load_bundle(bundle_path)
    out = {}
    with FusionModel(bundle, threads=threads) as fm:
        labels = fm.output_specs["digit"].labels
        for name, (v, a, missing) in conditions.items():
            tensors = {"video": test[f"video_{v}"], "audio": test[f"audio_{a}"]}
            present = {missing: False} if missing else None
            logits = fm.infer(tensors, present).outputs["digit"]
            out[name] = metrics(test["label"], logits, labels)
    return out


def subset_figures(bundle_path: Path) -> dict:
    """Accuracy on the fixed subset rendered from the shipped material (what the tests recompute)."""
    from edgemm.reference.clip import render_samples

    data = {}
    for v, a in SUBSET_CONDITIONS.values():
        s = render_samples(SUBSET["n"], SUBSET["seed"], "test", v, a)
        data[f"video_{v}"], data[f"audio_{a}"], data["label"] = s["video"], s["audio"], s["label"]
    conds = {k: (v, a, None) for k, (v, a) in SUBSET_CONDITIONS.items()}
    return {k: r["accuracy"] for k, r in run_conditions(bundle_path, data, conds).items()}


def convert_variants(models: Path, data: Path, work: Path, names: list[str], log=print) -> dict:
    """INT8 (accuracy-guarded, ORT flavour chosen by measurement) and channel-pruned (30 %) versions."""
    from edgemm.converters.convert import ConvertOptions, convert

    made = {}
    for name in names:
        src = models / f"avdigits_{name}"
        for variant, opts in (
            ("int8", ConvertOptions(precision="int8", calib=data / "calib", eval=data / "eval" / "clean",
                                    max_drop=1.0, bench_seconds=1.0, quiet=True, force=True)),
            ("pruned", ConvertOptions(precision="fp32", prune="channels:0.3", calib=data / "calib",
                                      eval=data / "eval" / "clean", bench_seconds=1.0, quiet=True, force=True)),
        ):
            dest = work / f"avdigits_{name}-{variant}"
            t0 = time.perf_counter()
            try:
                report = convert(src, dest, opts)
            except Exception as exc:  # noqa: BLE001 - report the failure in the table, keep going
                log(f"  {name} {variant}: conversion failed: {exc}")
                made[(name, variant)] = {"error": str(exc).splitlines()[0]}
                continue
            lat = report.get("latency_ms_p50", {})
            size = report.get("size_bytes", {})
            made[(name, variant)] = {
                "path": str(dest.resolve().relative_to(ROOT)) if dest.resolve().is_relative_to(ROOT) else str(dest),
                "seconds": round(time.perf_counter() - t0, 1),
                "latency_p50_ms": {g: v for g, v in lat.items()},
                "size_bytes": {g: v for g, v in size.items()},
                "flavour": {g: v["flavour"]["chosen"] for g, v in report.get("conversion", {}).get("int8", {}).items()},
            }
            log(f"  {name} {variant}: -> {dest} ({made[(name, variant)]['seconds']} s)")
    return made


def pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def table(results: dict, metric: str, rows: list[str], title: str) -> list[str]:
    cols = list(CONDITIONS)
    lines = [f"**{title}** (%, test split, {results['_n']} pairs)", "",
             "| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in rows:
        if r not in results:
            continue
        cells = []
        for c in cols:
            v = results[r][c][metric]
            best_uni = max(results[u][c][metric] for u in ("video", "audio") if u in results)
            bold = r in FUSION and c in CORRUPTED and v > best_uni
            cells.append(f"**{pct(v)}**" if bold else pct(v))
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / "build" / "avdigits"))
    p.add_argument("--models", default=str(ROOT / "benchmarks" / "models"))
    p.add_argument("--work", default=str(ROOT / "build" / "avdigits_converted"), help="converted bundles go here")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "avdigits" / "results.md"))
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "models" / "avdigits_eval.json"))
    p.add_argument("--no-convert", action="store_true", help="FP32 only (no INT8 / pruned columns)")
    p.add_argument("--convert-only", help="comma-separated models to convert (default: all)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    data, models = Path(args.data), Path(args.models)
    t0 = time.perf_counter()
    with np.load(data / "test.npz") as d:
        test = {k: d[k] for k in d.files}
    meta = json.loads((data / "meta.json").read_text())
    results = {"_n": int(len(test["label"]))}
    for name in MODELS:
        path = models / f"avdigits_{name}"
        if not path.exists():
            print(f"  {name}: {path} missing, skipped")
            continue
        results[name] = run_conditions(path, test, threads=args.threads)
        print(f"  {name:<12} " + "  ".join(f"{c}={pct(r['accuracy'])}" for c, r in results[name].items()), flush=True)

    subset = {}
    from edgemm.reference import MODELS as SHIPPED

    for folder in sorted(SHIPPED.iterdir()) if SHIPPED.exists() else []:
        b = load_bundle(folder)
        if b.manifest.fusion.form == "late":  # the members too: what each sensor alone gets
            subset[folder.name] = subset_figures(folder)
            for mod in ("video", "audio"):
                subset[f"{folder.name}:{mod}"] = subset_figures(models / f"avdigits_{mod}")
        else:
            subset[folder.name] = subset_figures(folder)
        print(f"  subset {folder.name}: {subset[folder.name]}", flush=True)

    variants = {}
    conv_rows = {}
    if not args.no_convert:
        names = args.convert_only.split(",") if args.convert_only else [m for m in MODELS if m != "late"]
        variants = convert_variants(models, data, Path(args.work), names)
        for (name, variant), info in variants.items():
            if "path" in info:
                conv_rows[(name, variant)] = run_conditions(ROOT / info["path"], test, threads=args.threads)

    # ---- claims, computed from the numbers -----------------------------------------------------------
    # With one sensor degraded the other is intact, and the fair question is whether fusion keeps the
    # intact sensor's accuracy (it cannot know which sensor to trust from a label); with both degraded,
    # whether it beats the better of the two.
    claims = []
    for c in CORRUPTED:
        uni = {u: results[u][c]["accuracy"] for u in ("video", "audio")}
        best_uni = max(uni.values())
        fus = {f: results[f][c]["accuracy"] for f in FUSION if f in results}
        verdict = {f: "beats" if v > best_uni else "matches" if v >= best_uni - MATCH else "below"
                   for f, v in fus.items()}
        claims.append((c, uni, fus, verdict))

    lines = ["## AV-digits reference models", "",
             f"Generated offline by `benchmarks/avdigits/generate.py` (seed {meta['seed']}): "
             f"{meta['counts']['train']['pairs']} train / {meta['counts']['val']['pairs']} val / "
             f"{meta['counts']['test']['pairs']} test pairs of a real handwritten digit (scikit-learn) shown to a "
             f"96x96 cabin camera and the digit spoken by espeak-ng ({len(meta['speakers'])} synthetic speakers; test "
             "images and test speakers never seen in training). Trained by `benchmarks/train_reference.py`, "
             "evaluated by `benchmarks/eval_reference.py` on ONNX Runtime (CPU). Bold: a fusion model above the "
             "better single-sensor model in a degraded condition.", ""]
    lines += table(results, "accuracy", MODELS, "Accuracy") + [""]
    lines += table(results, "recall", MODELS, "Macro recall") + [""]
    lines += table(results, "f1", MODELS, "Macro F1") + [""]
    lines += [f"Fusion against the single sensors (accuracy; \"matches\": within {100 * MATCH:.0f} point of the better "
              "one). A single-sensor model whose sensor is missing sees a blank input and answers at chance.", ""]
    for c, uni, fus, verdict in claims:
        lines.append(f"- {c}: camera alone {pct(uni['video'])} %, microphone alone {pct(uni['audio'])} %; "
                     + ", ".join(f"{f} {pct(v)} % ({verdict[f]})" for f, v in fus.items()))
    lines.append("")
    if variants:
        cols = ["clean", "video occluded", "audio noisy", "both degraded"]
        lines += ["**FP32 against INT8 and pruned** (accuracy %, same test pairs; INT8 by `edgemm convert --precision "
                  "int8 --max-drop 1` with the ONNX Runtime flavour measured fastest here; pruned: 30 % of the "
                  "channels of every layer removed by `--prune channels:0.3`, no fine-tuning)", "",
                  "| model | variant | " + " | ".join(cols) + " | size (kB) | p50 latency (ms) |",
                  "|---|---|" + "---:|" * (len(cols) + 2)]
        for name in MODELS:
            if name not in results:
                continue
            lines.append(f"| {name} | fp32 | " + " | ".join(pct(results[name][c]["accuracy"]) for c in cols) + " | | |")
            for variant in ("int8", "pruned"):
                info = variants.get((name, variant))
                if info is None:
                    continue
                if "error" in info:
                    lines.append(f"| {name} | {variant} | failed: {info['error'][:80]} |" + " |" * (len(cols) + 1))
                    continue
                r = conv_rows[(name, variant)]
                size = sum(v["after"] for v in info["size_bytes"].values()) / 1e3
                before = sum(v["before"] for v in info["size_bytes"].values()) / 1e3
                lat_all = info["latency_p50_ms"]
                lat_all = lat_all.get("all graphs") or next(iter(lat_all.values()), None)
                lat = f"{lat_all['before']:.3f} -> {lat_all['after']:.3f}" if lat_all else "n/a"
                flav = f" ({', '.join(sorted(set(info['flavour'].values())))})" if info.get("flavour") else ""
                lines.append(f"| {name} | {variant}{flav} | " + " | ".join(pct(r[c]["accuracy"]) for c in cols)
                             + f" | {before:.0f} -> {size:.0f} | {lat} |")
        lines.append("")
    lines += [f"Shipped-material subset ({SUBSET['n']} pairs rendered from edgemm/reference/data, seed {SUBSET['seed']}; "
              "tests/test_reference.py checks the shipped models against these):", ""]
    for k, v in subset.items():
        lines.append(f"- {k}: " + ", ".join(f"{c} {pct(x)} %" for c, x in v.items()))
    lines += ["", f"(evaluation took {time.perf_counter() - t0:.0f} s)", ""]
    text = "\n".join(lines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    payload = {"test_pairs": results["_n"], "fp32": {k: v for k, v in results.items() if k != "_n"},
               "converted": {f"{n}-{v}": {"info": variants[(n, v)], "results": conv_rows.get((n, v))}
                             for (n, v) in variants},
               "subset": {"n": SUBSET["n"], "seed": SUBSET["seed"], "accuracy": subset},
               "claims": [{"condition": c, "single_sensor": u, "fusion": f, "verdict": v} for c, u, f, v in claims]}
    Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
