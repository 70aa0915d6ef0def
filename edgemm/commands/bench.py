"""Measure latency percentiles, throughput and memory of one or more models and backends.

Several MODELs and/or --backend options are measured side by side, interleaved one inference at a time
so that machine noise hits all alike. Inputs are synthesised from the manifest unless --inputs is given.
Examples:
  edgemm bench model.onnx --iterations 500 --json bench.json
  edgemm bench fp32.edgemm int8.edgemm --duration 10 --threads 2 --plot cdf.png
"""

from __future__ import annotations

from edgemm.errors import EdgemmError
from edgemm.runners import BACKEND_HELP, make_runner, parse_backend
from edgemm.shapes import SHAPE_HELP, shape_overrides

# --help imports every command: modules that load onnx, onnxruntime or cv2, or that only run() needs
# (outputs, power), are imported inside functions.


def add_arguments(p) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL", help="bundle folders or .onnx files")
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
    p.add_argument("--json", metavar="PATH", help="write results as JSON")
    p.add_argument("--plot", metavar="PNG", help="write a latency CDF plot")
    p.add_argument("--power", choices=("auto", "off", "on"), default="auto",
                   help="board power and energy per inference from tegrastats/jtop (auto: on a Jetson)")


def run(args) -> int:
    from edgemm import bench
    from edgemm import power as power_mod
    from edgemm.bundle import load_bundle
    from edgemm.feeds import load_npz, synthesize
    from edgemm.outputs import require_folder, write_json

    backends = args.backend or ["onnxruntime"]
    for b in backends:
        parse_backend(b)  # unknown backends fail before anything is loaded
    if args.batch < 1:
        raise EdgemmError(f"Batch: {args.batch} | Expected a positive batch size.")
    for path in (args.json, args.plot):
        if path:
            require_folder(path)  # fail now, not after the whole benchmark
    shapes = shape_overrides(args.shape)
    bundles = [load_bundle(m, shapes=shapes) for m in args.models]

    targets = []
    for path, bundle in zip(args.models, bundles):
        graphs = list(bundle.manifest.graphs)
        if args.graph:
            if args.graph not in graphs:
                raise EdgemmError(f"Graph: {args.graph} | Not in {path}; expected one of {', '.join(graphs)}.")
            graphs = [args.graph]
        for gname in graphs:
            spec = bundle.manifest.graphs[gname]
            for b in backends:
                runner = make_runner(bundle, gname, b, threads=args.threads)
                label = runner.name if len(args.models) > 1 or len(graphs) > 1 else bundle.name

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
    print(bench.format_table(results))
    if len(results) > 1:
        base = results[0]["latency_ms"]["p50"]
        print("median latency relative to the first row: "
              + ", ".join(f"{r['model']} {r['backend']}: {r['latency_ms']['p50'] / base:.3f}x" for r in results[1:]))
    if args.json:
        write_json(args.json, {**results[0], "results": results, "machine": bench.machine()})
    if args.plot:
        bench.plot_cdf(results, [t.samples for t in targets], args.plot)
    return 0
