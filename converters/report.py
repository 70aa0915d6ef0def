"""The validation report on disk: report.json (everything), report.md (a readable summary) and
confusion.png (confusion matrices of the first classification output, where one exists).

The report dict comes from ``converters.validate.evaluate`` (one model: "outputs", "ablation") or
``compare_bundles`` ("original", "converted", "drop_points", "closeness", "primary"). Whatever else a
converter adds is rendered too: a section whose values carry "before"/"after" becomes a before/after
table (latency, size, parameters, MACs), anything else a nested list. matplotlib is imported only to draw
the PNG; without it the PNG is skipped and the summary says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgemm.outputs import jsonable, save_figure, write_atomic, write_json

KNOWN = {"data", "samples", "original", "converted", "drop_points", "closeness", "primary", "outputs", "ablation",
         "model", "name", "backend", "fusion", "modalities", "labelled", "title"}
MAX_CONFUSION_CLASSES = 40  # beyond this a confusion-matrix picture is unreadable


def primary_metric(metrics: Mapping) -> tuple[str, float | None, bool]:
    """(name, value, higher_is_better) of the headline metric of one output's metrics."""
    task = metrics.get("task")
    if task == "classification":
        return "accuracy", metrics.get("accuracy"), True
    if task == "multilabel":
        return "f1_macro", metrics.get("f1_macro"), True
    return "mse", metrics.get("mse"), False


def write_report(out_dir, report: dict) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md"}
    clean = jsonable(report)
    write_json(paths["json"], clean)
    notes = []
    png = out / "confusion.png"
    try:
        if plot_confusion(clean, png):
            paths["png"] = png
    except ImportError:
        notes.append("confusion.png not drawn: matplotlib is not installed (pip install matplotlib)")
    write_atomic(paths["md"], render_markdown(clean, png.name if "png" in paths else None, notes))
    return paths


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f} %"


def _num(v, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.3e}"
        return f"{v:.{digits}f}"
    return str(v)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines + [""]


FRACTION_KEYS = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted", "subset_accuracy",
                 "hamming_accuracy", "f1_micro")
ERROR_KEYS = ("mse", "mae", "rmse", "r2", "max_abs_error")


def _metric_rows(outs: list[Mapping[str, dict]], drops: Mapping[str, dict] | None) -> list[list[str]]:
    rows = []
    names = list(outs[0])
    for name in names:
        for key in FRACTION_KEYS + ERROR_KEYS:
            vals = [o.get(name, {}).get(key) for o in outs]
            if all(v is None for v in vals):
                continue
            fmt = _pct if key in FRACTION_KEYS else _num
            row = [name, key] + [fmt(v) for v in vals]
            if drops is not None:
                d = drops.get(name, {})
                row.append(_num(d.get(key), 2) if key in FRACTION_KEYS else _num(d.get(f"{key}_increase")))
            rows.append(row)
    return rows


def _per_class(name: str, per_model: list[tuple[str, dict]]) -> list[str]:
    """One per-class table; with two models each cell reads "original -> converted"."""
    ms = [(t, m) for t, m in per_model if m.get("per_class")]
    if not ms:
        return []
    first = ms[0][1]["per_class"]
    rows = []
    for i, c in enumerate(first):
        row = [c["label"]]
        for key in ("precision", "recall", "f1"):
            row.append(" -> ".join(_pct(m["per_class"][i][key]) for _, m in ms if i < len(m["per_class"])))
        row.append(str(c["support"]))
        rows.append(row)
    title = " -> ".join(t for t, _ in ms)
    return [f"### Per class: {name} ({title})", ""] + _table(["class", "precision", "recall", "F1", "support"], rows)


def _ablation(summaries: list[tuple[str, dict]]) -> list[str]:
    if not any(s.get("ablation") for _, s in summaries):
        return []
    lines = ["## Per-modality ablation", "",
             "Each modality missing in turn, handled as the bundle's fusion form does at run time.", ""]
    head = ["condition", "output"]
    for title, _ in summaries:
        head += [f"metric ({title})", f"agreement with full ({title})"]
    rows = []
    first = summaries[0][1]
    for cond, entry in first.get("ablation", {}).items():
        outputs = set(entry.get("outputs", {})) | set(entry.get("agreement_with_full", {}))
        for out in sorted(outputs):
            row = [cond, out]
            for _, s in summaries:
                e = s.get("ablation", {}).get(cond, {})
                m = e.get("outputs", {}).get(out)
                if m:
                    key, val, _ = primary_metric(m)
                    row.append(f"{key} {_pct(val) if key != 'mse' else _num(val)}")
                else:
                    row.append("no labels")
                agree = e.get("agreement_with_full", {}).get(out)
                row.append(_pct(agree) if agree is not None else "n/a")
            rows.append(row)
    # The full-model figure, for reference.
    return lines + _table(head, rows)


def _is_before_after(v) -> bool:
    return isinstance(v, Mapping) and ("before" in v or "after" in v)


def _cell(v) -> str:
    if isinstance(v, (Mapping, list, tuple)):
        return json.dumps(v, separators=(",", ":"), default=str).replace("|", "/")
    return _num(v).replace("|", "/")


def _before_after_table(key: str, rows: list[tuple[str, Mapping]]) -> list[str]:
    timing = any(w in key.lower() for w in ("latency", "time", "ms"))

    def ratio(b, a):
        if isinstance(b, (int, float)) and isinstance(a, (int, float)) and a and b and not isinstance(b, bool):
            return f"{b / a:.2f}x" if timing else f"{a / b:.3f}"
        return ""

    body = []
    for label, d in rows:
        b, a = d.get("before"), d.get("after")
        extra = ", ".join(f"{k} {_cell(v)}" for k, v in d.items() if k not in ("before", "after"))
        body.append([label, _cell(b), _cell(a), ratio(b, a), extra])
    return _table(["", "before", "after", "speed-up" if timing else "after/before", "notes"], body)


def _section(key: str, value: Any, level: int) -> list[str]:
    """A report section of any shape: before/after tables, tables for lists of records, lists for the rest."""
    title = str(key).replace("_", " ")
    title = title[:1].upper() + title[1:]
    head = [f"{'#' * min(level, 6)} {title}", ""]
    if _is_before_after(value):
        return head + _before_after_table(str(key), [(title, value)])
    if isinstance(value, Mapping):
        rows = [(k, v) for k, v in value.items() if _is_before_after(v)]
        simple = [(k, v) for k, v in value.items() if not _is_before_after(v) and not isinstance(v, (Mapping, list))]
        nested = [(k, v) for k, v in value.items() if not _is_before_after(v) and isinstance(v, (Mapping, list))]
        lines = list(head)
        if rows:
            lines += _before_after_table(str(key), rows)
        if simple:
            lines += [f"- **{k}**: {_cell(v)}" for k, v in simple] + [""]
        for k, v in nested:
            if not v:
                continue
            if level >= 5:
                lines += [f"- **{k}**: `{_cell(v)}`", ""]
            else:
                lines += _section(k, v, level + 1)
        return lines
    if isinstance(value, list):
        if value and all(isinstance(v, Mapping) for v in value):
            if level < 5 and any(isinstance(x, (Mapping, list)) and x for v in value for x in v.values()):
                lines = list(head)  # records with structure of their own: one subsection each
                for i, v in enumerate(value[:50], 1):
                    tag = next((str(v[k]) for k in ("name", "method", "layer", "graph") if k in v), "")
                    lines += _section(f"{title} {i}{': ' + tag if tag else ''}", v, level + 1)
                return lines
            cols = list(dict.fromkeys(k for v in value for k in v))
            rows = [[_cell(v.get(c)) if c in v else "" for c in cols] for v in value[:200]]
            more = [f"... {len(value) - 200} more in report.json", ""] if len(value) > 200 else []
            return head + _table(cols, rows) + more
        return head + [f"- {_cell(v)}" for v in value] + [""]
    return head + [_cell(value), ""]


def render_markdown(report: dict, png: str | None = None, notes: list[str] | None = None) -> str:
    comparing = "converted" in report
    if comparing:
        summaries = [("original", report["original"]), ("converted", report["converted"])]
    elif "original" in report:
        summaries = [("model", report["original"])]
    else:
        summaries = [("model", report)]
    first = summaries[0][1]
    title = report.get("title") or ("Conversion validation report" if comparing else "Evaluation report")
    lines = [f"# {title}", ""]
    for label, s in summaries:
        lines.append(f"- {label}: `{s.get('model', s.get('name', '?'))}` ({s.get('fusion', '?')} fusion, "
                     f"modalities: {', '.join(s.get('modalities') or []) or 'none'}; {s.get('backend', '')})")
    lines.append(f"- data: `{report.get('data', '?')}`, {report.get('samples', '?')} samples, "
                 f"{first.get('labelled', 0)} with labels")
    prim = report.get("primary")
    if prim and prim.get("original") is not None:
        if comparing and prim.get("converted") is not None:
            if prim["metric"] == "mse":
                lines.append(f"- **{prim['output']} {prim['metric']}: {_num(prim['original'])} -> "
                             f"{_num(prim['converted'])}**")
            else:
                lines.append(f"- **{prim['output']} {prim['metric']}: {_pct(prim['original'])} -> "
                             f"{_pct(prim['converted'])} (drop {prim.get('drop_points', 0):.2f} points)**")
        else:
            val = _pct(prim["original"]) if prim["metric"] != "mse" else _num(prim["original"])
            lines.append(f"- **{prim['output']} {prim['metric']}: {val}**")
    lines.append("")
    outs = [s.get("outputs", {}) for _, s in summaries]
    if any(outs):
        lines += ["## Task metrics", ""]
        head = ["output", "metric"] + [t for t, _ in summaries] + (["drop (points)"] if comparing else [])
        lines += _table(head, _metric_rows(outs, report.get("drop_points") if comparing else None))
        for name in summaries[0][1].get("outputs", {}):
            lines += _per_class(name, [(t, s.get("outputs", {}).get(name, {})) for t, s in summaries])
        if png:
            lines += [f"![confusion matrices]({png})", ""]
    else:
        lines += ["No labels in the data: task metrics need `label` keys (see `edgemm convert --help`, data format).", ""]
    if report.get("closeness"):
        lines += ["## Output closeness (converted vs original)", ""]
        rows = [[n, _num(c.get("max_abs")), _num(c.get("max_rel")), _num(c.get("mean_abs")),
                 f"{_num(c.get('cosine'), 6)} / {_num(c.get('cosine_min'), 6)}",
                 _pct(c["top1_agreement"]) if c.get("top1_agreement") is not None
                 else f"box F1 {c['box_f1']:.3f}" if c.get("box_f1") is not None else "n/a"]
                for n, c in report["closeness"].items() if "error" not in c]
        rows += [[n, c["error"], "", "", "", ""] for n, c in report["closeness"].items() if "error" in c]
        lines += _table(["output", "max abs", "max rel", "mean abs", "cosine mean / min", "top-1 / box agreement"],
                        rows)
    lines += _ablation(summaries)
    for key, value in report.items():
        if key in KNOWN or value in (None, {}, []):
            continue
        lines += _section(key, value, 2)
    for n in notes or []:
        lines += [f"> {n}", ""]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------------------------------
# Confusion matrix picture
# --------------------------------------------------------------------------------------------------


def plot_confusion(report: dict, path: Path) -> bool:
    """Draw the confusion matrix of the first classification output (original and converted side by side)."""
    if "converted" in report:
        panels = [("original", report["original"]), ("converted", report["converted"])]
    elif "original" in report:
        panels = [("model", report["original"])]
    else:
        panels = [("model", report)]
    name = next((n for n, m in panels[0][1].get("outputs", {}).items()
                 if m.get("task") == "classification" and m.get("confusion")), None)
    if name is None:
        return False
    labels = panels[0][1]["outputs"][name]["labels"]
    if len(labels) > MAX_CONFUSION_CLASSES:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [(t, s["outputs"][name]) for t, s in panels if name in s.get("outputs", {})]
    k = len(labels)
    size = max(3.5, 0.35 * k + 2)
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size), squeeze=False)
    for ax, (title, m) in zip(axes[0], panels):
        cm = np.asarray(m["confusion"], dtype=np.float64)
        rows = cm.sum(axis=1, keepdims=True)
        norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        if k <= 20:
            for i in range(k):
                for j in range(k):
                    if cm[i, j]:
                        ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        ax.set_xticklabels(labels, rotation=90, fontsize=7)
        ax.set_yticklabels(labels, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{name} ({title}): accuracy {100 * m['accuracy']:.2f} %", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return True
