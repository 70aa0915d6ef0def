#!/usr/bin/env python3
"""The driving detector's INT8 graphs scored on held-out scenes: what `bench_backends.py --suite driving` chose.

bench_backends converts the shipped detector with `--max-drop 1` and `--eval` the 296-frame test subset
(scenes 200005, 200007, 200000, 200001; day and night), then scores the chosen graphs on those same frames:
the guard picked the graphs on the data they are judged on. This script makes the same two conversions the
same way (bench_backends.driving_cases and convert_all: ORT INT8, and `--target openvino`; NNCF's forced
graph is left out) and scores them on test scenes the subset does not use, in every camera condition,
each graph on the runtime it is made for:

  FP32      the shipped graph on onnxruntime (the reference the drops are taken from) and on openvino
  ORT INT8  the onnxruntime-target graph on onnxruntime
  OV INT8   the `--target openvino` graph on openvino

Frames are rendered by bench_backends.render_driving (eval_driving.py's scenes and 4 Hz steps, written as
PNG + YOLO txt) and scored as the table and `edgemm eval` score them (converters.detection_eval.detect: the
runtime's decode and record of the boxes; detection_eval.coco_map: pycocotools mAP@0.5), per condition and
over all conditions' frames together.

Usage:  python benchmarks/driving_heldout.py [--scenes 10] [--threads 1] [--ov-flavour ov|nncf|u8s8]
        [--calib-conditions every|one] [--guard-condition night] [--json build/driving-heldout.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_backends as bb  # noqa: E402  (benchmarks/, beside this script)

from edgemm import bench  # noqa: E402
from edgemm.bundle import load_bundle  # noqa: E402
from edgemm.converters.detection_eval import MAP_CONF, coco_map, detect, read_folder  # noqa: E402
from edgemm.reference import driving as dr  # noqa: E402

# variant -> (bundle key, backend); "fp32" is the shipped graph
VARIANTS = {"FP32 (ORT)": ("fp32", "onnxruntime"), "FP32 (OV)": ("fp32", "openvino"),
            "ORT INT8": ("ort_int8", "onnxruntime"), "OV INT8": ("ov_int8", "openvino")}
REFERENCE = "FP32 (ORT)"


def heldout_seeds(n: int) -> tuple[list[int], list[int]]:
    """The first n test scenes that the benchmark's subset does not use, and the subset's scenes."""
    ev = json.loads((ROOT / "benchmarks" / "models" / "driving_eval.json").read_text())
    used = ev["subset"]["seeds"]
    return [s for s in ev["test_seeds"] if s not in used][:n], used


def score(images, found, conditions) -> dict:
    """mAP@0.5 (%) per condition and over every frame, with the objects counted per class."""
    out = {}
    for cond in (*conditions, "all"):
        idx = [i for i, im in enumerate(images) if cond == "all" or im.path.stem.split("_")[1] == cond]
        truth = [images[i].truth for i in idx]
        m = coco_map(truth, [found[i] for i in idx], dr.CLASSES)
        out[cond] = {"map50": round(100 * m["map50"], 2), "frames": len(idx), "ap50_per_class": m["per_class_ap50"],
                     "objects": {c: int(sum((t.classes == k).sum() for t in truth)) for k, c in enumerate(dr.CLASSES)}}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=10, help="held-out test scenes (of 26)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ov-flavour", choices=("ov", "nncf", "u8s8"),
                    help="force the --target openvino graph's flavour (default: chosen by timing, as bench_backends)")
    ap.add_argument("--calib-conditions", choices=("every", "one"), default="every",
                    help="calibration frames: every camera condition of each moment (320, default), or one random "
                         "condition per moment (64, the set before 2026-12-06)")
    ap.add_argument("--guard-condition", choices=dr.CONDITIONS,
                    help="the guard judges only this condition's frames of the subset (148 at night): `--eval` "
                         "a folder of the condition a budget must hold in (default: the whole 296-frame subset)")
    ap.add_argument("--json", help="also write every figure here")
    args = ap.parse_args(argv)
    t0, load0 = time.monotonic(), os.getloadavg()[0]
    seeds, used = heldout_seeds(args.scenes)
    with tempfile.TemporaryDirectory(prefix="driving-heldout-") as work:
        work = Path(work)
        # the 296-frame subset and the calibration frames
        case = bb.driving_cases(work, lambda name: True, args.calib_conditions == "every")[0]
        if args.guard_condition:
            part = work / "driving" / f"test-{args.guard_condition}"
            part.mkdir()
            for p in case.test.iterdir():
                if p.stem.split("_")[1] == args.guard_condition:
                    shutil.copy(p, part / p.name)
            if not any(part.iterdir()):
                raise SystemExit(f"the subset has no {args.guard_condition} frames (it has {case.source})")
            case = dataclasses.replace(case, test=part)
        paths, reports = bb.convert_all(case, work, args.threads, keys=("ort_int8", "ov_int8"),
                                       options={"ov_int8": {"flavour": args.ov_flavour}} if args.ov_flavour else None)
        print(f"converted ({time.monotonic() - t0:.0f} s): {json.dumps(reports)}", file=sys.stderr, flush=True)
        bb.render_driving(seeds, dr.CONDITIONS, work / "heldout")
        images = read_folder(work / "heldout")
        paths["fp32"] = case.model
        results = {}
        for name, (key, backend) in VARIANTS.items():
            if key not in paths:
                results[name] = {"error": reports[key].get("error", "not made")}
                continue
            found = detect(load_bundle(paths[key]), images, MAP_CONF, backend, args.threads)
            results[name] = score(images, found, dr.CONDITIONS)
            print(f"  {name}: {json.dumps({c: r['map50'] for c, r in results[name].items()})} "
                  f"({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
    ref = results[REFERENCE]
    for name, r in results.items():
        if name != REFERENCE and "error" not in r:
            for c in r:
                r[c]["drop"] = round(ref[c]["map50"] - r[c]["map50"], 2)
    payload = {"command": "python benchmarks/driving_heldout.py " + " ".join(argv or sys.argv[1:]),
               "machine": bench.machine(), "load": (load0, os.getloadavg()[0]), "seconds": round(time.monotonic() - t0),
               "heldout_seeds": seeds, "subset_seeds": used, "conversions": reports, "results": results}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=1, default=str))
    conds = (*dr.CONDITIONS, "all")
    print(f"held-out scenes {seeds}; {ref['all']['frames']} frames; load {payload['load'][0]:.1f} -> "
          f"{payload['load'][1]:.1f}; {payload['seconds']} s")
    print("| variant | " + " | ".join(conds) + " |\n|---|" + "---:|" * len(conds))
    for name, r in results.items():
        if "error" in r:
            print(f"| {name} | failed: {r['error'][:80]} |")
            continue
        cells = [f"{r[c]['map50']:.2f}" + (f" ({-r[c]['drop']:+.2f})" if "drop" in r[c] else "") for c in conds]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("objects: " + json.dumps({c: ref[c]["objects"] for c in conds}))
    for name, r in results.items():  # AP@0.5 by class: where a drop comes from
        if "error" not in r:
            print(f"{name} AP@0.5 by class: " + json.dumps({c: r[c]["ap50_per_class"] for c in conds}))
    for key, rep in reports.items():
        print(f"{key}: {bb.flavours(rep.get('flavours', []))} kept float {rep.get('kept_float')}, "
              f"x FP32 on its runtime {rep.get('speedup')}"
              f"{bb.guard_note(rep.get('guard'))}" if "error" not in rep else f"{key}: failed: {rep['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
