"""Measure latency percentiles, throughput and memory of one or more models and backends.

Several MODELs and/or --backend options are measured side by side, interleaved one inference at a time
so that machine noise hits all alike. Inputs are synthesised from the manifest unless --inputs is given.
Rows, JSON and plot legend name each MODEL by the shortest end of its path that tells it apart from the
others (a/model.onnx and b/model.onnx: a/model, b/model), or by NAME when given as NAME=PATH.
Examples:
  edgemm bench model.onnx --iterations 500 --json bench.json
  edgemm bench fp32.edgemm int8.edgemm --duration 10 --threads 2 --plot cdf.png
  edgemm bench fp32=a/model.onnx int8=b/model.onnx --json - | jq .results
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from edgemm.errors import EdgemmError
from edgemm.lazy import import_pyplot
from edgemm.runners import BACKEND_HELP, make_runner, parse_backend
from edgemm.shapes import SHAPE_HELP, shape_overrides

# --help imports every command: modules that load onnx, onnxruntime or cv2, or that only run() needs
# (outputs, power), are imported inside functions.


# Every numeric flag, finite and in range (checked by the CLI before the command runs: edgemm.errors.check_numbers).
NUMBER_BOUNDS = {
    "iterations": ("Iterations", "", {"minimum": 1, "maximum": 10**8}),
    "duration": ("Duration", "s", {"positive": True, "maximum": 86400}),
    "warmup": ("Warm-up", "s", {"minimum": 0, "maximum": 3600}),
    "batch": ("Batch", "", {"minimum": 1, "maximum": 4096}),  # synthesised inputs: memory grows with it
    "threads": ("Threads", "", {"minimum": 1, "maximum": 1024}),
    "seed": ("Seed", "", {"minimum": 0, "maximum": 2**32 - 1}),
}

def add_arguments(p) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL", help="bundle folders or .onnx files (NAME=PATH names one)")
    p.add_argument("--backend", action="append", metavar="B", help=BACKEND_HELP + "; repeat to compare backends")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--iterations", type=int, metavar="N", help="timed inferences per target")
    length.add_argument("--duration", type=float, metavar="S", help="seconds to time for (default 3, as trtexec)")
    p.add_argument("--warmup", type=float, default=0.2, metavar="S", help="warm-up seconds per target (default 0.2)")
    p.add_argument("--batch", type=int, default=1, metavar="N", help="batch size for synthesised inputs (default 1)")
    p.add_argument("--threads", type=int, metavar="N", help="intra-op threads (default: the backend's own)")
    p.add_argument("--graph", metavar="NAME", help="only this graph of a multi-graph bundle (default: all)")
    p.add_argument("--inputs", metavar="F.npz", help="inputs keyed by input name instead of synthetic ones")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic inputs")
    p.add_argument("--shape", action="append", default=[], metavar="NAME:DIMS", help=SHAPE_HELP)
    p.add_argument("--json", metavar="PATH", help="write results as JSON ('-': to stdout, the table to stderr)")
    p.add_argument("--plot", metavar="PNG", help="write a latency CDF plot")
    p.add_argument("--power", choices=("auto", "off", "on"), default="auto",
                   help="board power and energy per inference from tegrastats/jtop (auto: on a Jetson)")


def run(args) -> int:
    from edgemm import bench
    from edgemm import power as power_mod
    from edgemm.bundle import load_bundle
    from edgemm.feeds import load_npz, synthesize
    from edgemm.outputs import require_folder, to_json, write_json

    backends = args.backend or ["onnxruntime"]
    for b in backends:
        parse_backend(b)  # unknown backends fail before anything is loaded
    for path in (args.json if args.json != "-" else None, args.plot):
        if path:
            require_folder(path)  # fail now, not after the whole benchmark
    if args.plot:
        import_pyplot()  # refused now, not after the whole measurement
    paths, names = split_names(args.models)
    shapes = shape_overrides(args.shape)
    bundles = [load_bundle(m, shapes=shapes) for m in paths]
    labels = model_labels(paths, [b.name for b in bundles], names)

    targets = []
    for path, bundle, model_label in zip(paths, bundles, labels):
        graphs = list(bundle.manifest.graphs)
        if args.graph:
            if args.graph not in graphs:
                raise EdgemmError(f"Graph: {args.graph} | Not in {path}; expected one of {', '.join(graphs)}.")
            graphs = [args.graph]
        for gname in graphs:
            spec = bundle.manifest.graphs[gname]
            for b in backends:
                label = model_label if len(graphs) == 1 else f"{model_label}/{gname}"
                runner = make_runner(bundle, gname, b, threads=args.threads, name=label)

                def make_feed(r, spec=spec, path=path):
                    meta = r.input_metadata()
                    if args.inputs:
                        return load_npz(args.inputs, meta)
                    # A model with a batch dim has at least one input whose first dim is dynamic; fixed
                    # first dims elsewhere (recurrent state, flags) are left as they are.
                    if args.batch > 1 and all(m.shape and isinstance(m.shape[0], int) for m in meta.values()):
                        m = next(iter(meta.values()))
                        raise EdgemmError(f"Model: {path} | Input {m.name} has a fixed batch of {m.shape[0]}; "
                                          f"expected a dynamic first dim for --batch {args.batch}.")
                    return synthesize(meta, spec, batch=args.batch, seed=args.seed)

                targets.append(bench.Target(label=label, runner=runner, make_feed=make_feed, batch=args.batch,
                                            synthesised=not args.inputs))

    duration = args.duration if args.duration is not None or args.iterations is not None else 3.0
    sampler = None
    if args.power == "on" or (args.power == "auto" and power_mod.available()):
        sampler = power_mod.PowerSampler().start()  # measures the idle baseline before any model loads
    try:
        results = bench.run(targets, iterations=args.iterations,
                            duration_s=duration if args.iterations is None else None, warmup_s=args.warmup,
                            power=sampler)
    finally:
        if sampler is not None:
            sampler.stop()
    out = sys.stderr if args.json == "-" else sys.stdout  # `--json -`: stdout holds the JSON alone
    print(bench.format_table(results), file=out)
    if len(results) > 1:
        base = results[0]["latency_ms"]["p50"]
        print("median latency relative to the first row: "
              + ", ".join(f"{r['model']} {r['backend']}: {r['latency_ms']['p50'] / base:.3f}x" for r in results[1:]),
              file=out)
    if args.json:
        doc = {**results[0], "results": results, "machine": bench.machine()}
        if args.json == "-":
            print(to_json(doc, indent=2))
        else:
            write_json(args.json, doc)
    if args.plot:
        bench.plot_cdf(results, [t.samples for t in targets], args.plot)
    return 0


def split_names(models: list[str]) -> tuple[list[str], list[str | None]]:
    """MODEL arguments -> (paths, names): NAME=PATH gives the row its name (an existing path that holds
    '=' is taken as a path)."""
    paths, names = [], []
    for m in models:
        name, sep, path = m.partition("=")
        if sep and name and path and not os.path.exists(m):
            paths.append(path)
            names.append(name)
        else:
            paths.append(m)
            names.append(None)
    return paths, names


def model_labels(paths: list[str], stems: list[str], names: list[str | None]) -> list[str]:
    """One label per model: its NAME where given, else the shortest end of its path (the file or folder
    named by the model's own name) that no other model's label shares. The same path given twice is
    told apart by its position (#2)."""
    parts = [Path(os.path.abspath(p)).parent.parts + (stem,) for p, stem in zip(paths, stems)]

    def tail(i: int, k: int) -> str:
        return "/".join(parts[i][-k:])

    labels = []
    for i, name in enumerate(names):
        if name:
            labels.append(name)
            continue
        k = 1
        while k < len(parts[i]) and any(tail(i, k) == tail(j, k) for j in range(len(paths))
                                        if j != i and names[j] is None and parts[j] != parts[i]):
            k += 1
        labels.append(tail(i, k))
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label}#{seen[label]}"
    return labels
