"""Measure a model's task metrics on labelled data (accuracy, precision/recall/F1, MSE/MAE, ablation).

Runs any bundle (or plain .onnx) over a data folder and prints accuracy, macro precision/recall/F1 and
the confusion matrix for classification outputs, MSE/MAE/R^2 for regression outputs, and for
multimodal bundles the same with each modality missing (as the fusion form handles it at run time).
With --against ORIGINAL both models run on the same samples and the drop in points and the output
closeness are reported too. Data format: see `edgemm convert --help` (npz keyed by input name with a
`label` key, or media files with labels.csv). Detectors report COCO mAP@0.5 and mAP@0.5:0.95 (pycocotools),
AP per class and precision/recall at the model's threshold on images with YOLO txt labels or a COCO JSON;
with --against, the mAP drop and how well the boxes agree with the original's.
Examples:
  edgemm eval model.edgemm --data data/test
  edgemm eval pruned.edgemm --against model.edgemm --data data/test --report report/ --json eval.json
"""

from __future__ import annotations

import sys
from pathlib import Path

from edgemm.errors import EdgemmError
from edgemm.runners import BACKEND_HELP, parse_backend
from edgemm.shapes import SHAPE_HELP, shape_overrides

# --help imports every command: modules that load onnx, onnxruntime or cv2, or that only run() needs
# (outputs, power), are imported inside functions.


# Every numeric flag, finite and in range (checked by the CLI before the command runs: edgemm.errors.check_numbers).
NUMBER_BOUNDS = {
    "threads": ("Threads", "", {"minimum": 1, "maximum": 1024}),
    "limit": ("Limit", "", {"minimum": 1, "maximum": 10**9}),
    "latency": ("Latency", "s", {"positive": True, "maximum": 3600}),
}

def add_arguments(p) -> None:
    p.add_argument("model", metavar="MODEL", help="bundle folder or .onnx file")
    p.add_argument("--data", required=True, metavar="DIR", help="evaluation folder (.npz with labels, or media + labels.csv) or one .npz file")
    p.add_argument("--against", metavar="ORIGINAL", help="also run this (original) model and compare: drop and closeness")
    p.add_argument("--backend", default="onnxruntime", metavar="B", help=BACKEND_HELP)
    p.add_argument("--threads", type=int, metavar="N", help="intra-op threads (default: the backend's own)")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate at most N samples")
    p.add_argument("--no-ablation", action="store_true", help="skip the per-modality ablation runs")
    p.add_argument("--latency", type=float, metavar="S",
                   help="with --against: also measure both models' latency, interleaved, for S seconds")
    p.add_argument("--shape", action="append", default=[], metavar="NAME:DIMS", help=SHAPE_HELP)
    p.add_argument("--json", metavar="PATH", help="write the full results as JSON ('-' for stdout)")
    p.add_argument("--report", metavar="DIR", help="write report.json, report.md and confusion.png into DIR")


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:6.2f} %"


def _print_model(title: str, s: dict, out) -> None:
    print(f"{title}: {s['model']} ({s['fusion']} fusion; {s['backend']})", file=out)
    for name, m in s["outputs"].items():
        if m["task"] == "classification":
            print(f"  {name}: accuracy {_pct(m['accuracy'])}, precision {_pct(m['precision_macro'])}, "
                  f"recall {_pct(m['recall_macro'])}, F1 {_pct(m['f1_macro'])} (macro over {len(m['labels'])} "
                  f"classes), {m['samples']} samples", file=out)
        elif m["task"] == "multilabel":
            print(f"  {name}: subset accuracy {_pct(m['subset_accuracy'])}, F1 macro {_pct(m['f1_macro'])}, "
                  f"micro {_pct(m['f1_micro'])}, {m['samples']} samples", file=out)
        else:
            r2 = "n/a" if m.get("r2") is None else f"{m['r2']:.4f}"
            print(f"  {name}: MSE {m['mse']:.6g}, MAE {m['mae']:.6g}, RMSE {m['rmse']:.6g}, R^2 {r2}, "
                  f"{m['samples']} samples", file=out)


def _print_classes(m: dict, out) -> None:
    labels = m["labels"]
    if len(labels) > 30:
        return
    width = max(5, max(len(x) for x in labels))
    print(f"    {'class':<{width}} {'precision':>9} {'recall':>9} {'F1':>9} {'support':>8}", file=out)
    for c in m["per_class"]:
        print(f"    {c['label']:<{width}} {_pct(c['precision']):>9} {_pct(c['recall']):>9} {_pct(c['f1']):>9} "
              f"{c['support']:>8}", file=out)
    print("    confusion (rows: true, columns: predicted):", file=out)
    cw = max(3, max(len(str(v)) for row in m["confusion"] for v in row))
    print(f"    {'':<{width}} " + " ".join(f"{x[:cw]:>{cw}}" for x in labels), file=out)
    for label, row in zip(labels, m["confusion"]):
        print(f"    {label:<{width}} " + " ".join(f"{v:>{cw}}" for v in row), file=out)


def run(args) -> int:
    from edgemm.converters.validate import compare_bundles, latency_section, size_section, write_report
    from edgemm.bundle import load_bundle
    from edgemm.outputs import require_folder

    parse_backend(args.backend)
    if args.latency is not None and not args.against:
        raise EdgemmError("Latency | --latency S needs --against ORIGINAL.")
    if args.json and args.json != "-":
        require_folder(args.json)  # fail now, not after the whole evaluation
    shapes = shape_overrides(args.shape)
    model = load_bundle(args.model, shapes=shapes)
    original = load_bundle(args.against, shapes=shapes) if args.against else None
    if _is_detector(model) and (original is None or _box_labelled(args.data)):
        return _run_detection(args, model, original)
    if original is not None:
        report = compare_bundles(original, model, args.data, backend=args.backend, threads=args.threads,
                                 limit=args.limit, ablation=not args.no_ablation, progress=sys.stderr.isatty())
        report["size"] = size_section(original, model)
        if args.latency:
            report["latency"] = latency_section(original, model, args.backend, args.threads or 1, args.latency)
    else:
        report = compare_bundles(model, None, args.data, backend=args.backend, threads=args.threads,
                                 limit=args.limit, ablation=not args.no_ablation, progress=sys.stderr.isatty())
    out = sys.stderr if args.json == "-" else sys.stdout
    summaries = [("original", report["original"]), ("model", report["converted"])] if original else \
        [("model", report["original"])]
    print(f"Data: {report['data']} ({report['samples']} samples, {summaries[0][1]['labelled']} labelled)", file=out)
    for title, s in summaries:
        _print_model(title, s, out)
    main = summaries[-1][1]
    for name, m in main["outputs"].items():
        if m["task"] == "classification":
            print(f"  per class ({name}):", file=out)
            _print_classes(m, out)
    if not main["outputs"]:
        print("No labels in the data: task metrics need a `label` key per .npz (or labels.csv for media).", file=out)
    if original is not None:
        for name, d in report["drop_points"].items():
            if "accuracy" in d:
                print(f"Drop {name}: accuracy {d['accuracy']:+.2f} points, F1 macro {d.get('f1_macro', 0):+.2f} points",
                      file=out)
            elif "mse_increase" in d:
                print(f"Change {name}: MSE {d['mse_increase']:+.6g}", file=out)
        print("Closeness to the original:", file=out)
        for name, c in report["closeness"].items():
            if "error" in c:
                print(f"  {name}: {c['error']}", file=out)
                continue
            agree = f", top-1 agreement {_pct(c['top1_agreement'])}" if "top1_agreement" in c else \
                f", box F1 {c['box_f1']:.4f} against the original's boxes ({c['boxes']} of them)" if "box_f1" in c \
                else ""
            print(f"  {name}: max abs {c['max_abs']:.4g}, max rel {c['max_rel']:.4g}, mean abs {c['mean_abs']:.4g}, "
                  f"cosine {c['cosine']:.6f} (min {c['cosine_min']:.6f}){agree}", file=out)
        size = report["size"]
        print(f"Size: {size['parameters']['before']:,} -> {size['parameters']['after']:,} parameters, "
              f"{size['size_bytes']['before']:,} -> {size['size_bytes']['after']:,} bytes, MACs "
              f"{size['macs']['before'] or 0:,} -> {size['macs']['after'] or 0:,}", file=out)
        for key, v in (report.get("latency") or {}).items():
            if "before" in v:
                print(f"Latency {key}: {v['before']:.3f} -> {v['after']:.3f} ({v['before'] / v['after']:.2f}x)", file=out)
    for title, s in summaries:
        for cond, e in (s.get("ablation") or {}).items():
            parts = []
            for name, m in e["outputs"].items():
                if m["task"] == "classification":
                    parts.append(f"{name} accuracy {_pct(m['accuracy'])}")
                elif m["task"] == "regression":
                    parts.append(f"{name} MSE {m['mse']:.6g}")
            for name, a in e["agreement_with_full"].items():
                if a is not None:
                    parts.append(f"{name} agrees with full {_pct(a)}")
            print(f"Ablation ({title}) {cond}: " + ("; ".join(parts) or "n/a"), file=out)
    if args.report:
        paths = write_report(args.report, report)
        print("Report: " + ", ".join(str(p) for p in paths.values()), file=out)
    _write_json(args, report)
    return 0


def _write_json(args, report: dict) -> None:
    """--json PATH, or the report on stdout with --json - (the human summary went to stderr)."""
    from edgemm.outputs import to_json, write_json

    if args.json == "-":
        print(to_json(report, indent=2))
    elif args.json:
        write_json(args.json, report)


def _is_detector(bundle) -> bool:
    from edgemm.converters.data import primary_output

    graph = bundle.manifest.graphs[bundle.single_graph] if len(bundle.manifest.graphs) == 1 else None
    return graph is not None and graph.output(primary_output(bundle)).detection is not None


def _box_labelled(data) -> bool:
    """Whether data is a folder of images with box labels (what a detector's mAP needs). Without them, a
    detector evaluated --against its original is compared output by output instead (the closeness, with the
    F1 of its boxes against the original's: validate.Closeness), rather than refused."""
    from edgemm.converters.detection_eval import BoxLabels
    from edgemm.media import IMAGE_SUFFIXES

    folder = Path(data)
    images = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES] if folder.is_dir() else []
    return bool(images) and BoxLabels(folder).present(images)


def _run_detection(args, model, original) -> int:
    """COCO mAP (pycocotools), per-class AP and P/R at the model's threshold; with --against, the drop and
    how well the boxes agree."""
    from edgemm.converters.detection_eval import evaluate_detection
    from edgemm.lazy import import_optional
    from edgemm.outputs import write_json

    import_optional("pycocotools", "pip install pycocotools (or edgemm[convert])")
    report = evaluate_detection(model, args.data, original, args.backend, args.threads, args.limit)
    out = sys.stderr if args.json == "-" else sys.stdout
    print(f"Data: {report['data']} ({report['images']} images, {report['objects']} objects)", file=out)
    for key in ("original", "model") if original is not None else ("model",):
        r = report[key]
        print(f"{key}: mAP@0.5 {r['map50']:.4f}, mAP@0.5:0.95 {r['map']:.4f}; at conf {r['conf']}: precision "
              f"{r['precision']:.4f}, recall {r['recall']:.4f}", file=out)
        print("  AP@0.5:0.95 per class: " + ", ".join(f"{k} {v:.4f}" for k, v in r["per_class_ap"].items()),
              file=out)
    if original is not None:
        d, a = report["drop_points"], report["agreement"]
        print(f"Drop: mAP@0.5 {d['map50']:+.2f} points, mAP@0.5:0.95 {d['map']:+.2f} points; boxes agree with the "
              f"original: F1 {a['box_f1']:.4f} (IoU >= 0.5, same class)", file=out)
    if args.report:
        path = write_json(Path(args.report) / "report.json", report)
        print(f"Report: {path}", file=out)
    _write_json(args, report)
    return 0
