"""edgemm's runner and `edgemm bench` against a plain onnxruntime loop on the same model, in one run.

Two comparisons, both as ratios of medians (edgemm / plain), so machine noise cancels:
  1. in-process: blocks of `edgemm.bench.run` (the code `edgemm bench` runs) alternated with blocks of a bare
     `session.run` loop on an identically configured session;
  2. end to end: the `edgemm bench --json` command alternated with a subprocess running the plain loop.
Models are generated here (never seen by the tests): a small CNN where per-call overhead would show, and a
ResNet-like CNN where the model dominates.

    python benchmarks/bench_runner.py [--rounds 5] [--iterations 300] [--threads 1] [--markdown]
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
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgemm import bench
from edgemm.feeds import synthesize
from edgemm.runners.onnxruntime import OnnxRuntimeRunner

PLAIN_LOOP = """
import json, sys, time
import numpy as np, onnxruntime as ort
model, iterations, threads, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
opts = ort.SessionOptions(); opts.intra_op_num_threads = threads; opts.inter_op_num_threads = 1
sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
feed = {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
        for i in sess.get_inputs()}
end = time.perf_counter() + warmup
while time.perf_counter() < end:
    sess.run(None, feed)
samples = []
for _ in range(iterations):
    t = time.perf_counter(); sess.run(None, feed); samples.append(time.perf_counter() - t)
print(json.dumps({"p50_ms": float(np.median(samples) * 1e3)}))
"""


def conv_net(name: str, size: int, widths: tuple[int, ...], blocks: int, seed: int = 0) -> onnx.ModelProto:
    """A residual CNN: stem conv, then per width `blocks` residual blocks (conv-relu-conv + skip), GAP, Gemm."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def conv(x, cin, cout, stride, tag, relu=True):
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{tag}_w"), numpy_helper.from_array(np.zeros(cout, np.float32), f"{tag}_b")])
        nodes.append(helper.make_node("Conv", [x, f"{tag}_w", f"{tag}_b"], [f"{tag}_c"], pads=[1, 1, 1, 1],
                                      strides=[stride, stride]))
        if relu:
            nodes.append(helper.make_node("Relu", [f"{tag}_c"], [f"{tag}_r"]))
            return f"{tag}_r"
        return f"{tag}_c"

    x = conv("image", 3, widths[0], 2, "stem")
    cin = widths[0]
    for si, width in enumerate(widths):
        for bi in range(blocks):
            stride = 2 if bi == 0 and si > 0 else 1
            tag = f"s{si}b{bi}"
            if stride != 1 or cin != width:
                x = conv(x, cin, width, stride, tag + "_down")
            y = conv(x, width, width, 1, tag + "_1")
            y = conv(y, width, width, 1, tag + "_2", relu=False)
            nodes.append(helper.make_node("Add", [x, y], [tag + "_sum"]))
            nodes.append(helper.make_node("Relu", [tag + "_sum"], [tag + "_out"]))
            x, cin = tag + "_out", width
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]), helper.make_node("Flatten", ["gap"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1)]
    inits += [numpy_helper.from_array(rng.standard_normal((10, cin)).astype(np.float32) * 0.1, "fc_w"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fc_b")]
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def plain_block(sess, feed, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        sess.run(None, feed)
        out.append(time.perf_counter() - t)
    return out


def in_process(path: Path, rounds: int, iterations: int, threads: int) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    with OnnxRuntimeRunner(path) as probe:
        feed = synthesize(probe.input_metadata())  # the very same inputs for both
    ours, plain = [], []
    for _ in range(rounds):
        target = bench.Target("edgemm", OnnxRuntimeRunner(path, threads=threads), feed=feed)
        bench.run([target], iterations=iterations, warmup_s=0.2)
        ours += target.samples
        end = time.perf_counter() + 0.2  # the same warm-up footing as bench.run
        while time.perf_counter() < end:
            sess.run(None, feed)
        plain += plain_block(sess, feed, iterations)
    return {"edgemm_p50_ms": float(np.median(ours) * 1e3), "plain_p50_ms": float(np.median(plain) * 1e3),
            "ratio": float(np.median(ours) / np.median(plain))}


def end_to_end(path: Path, rounds: int, iterations: int, threads: int, tmp: Path) -> dict:
    ours, plain = [], []
    for r in range(rounds):
        out = tmp / f"bench{r}.json"
        subprocess.run([sys.executable, "-m", "edgemm", "bench", str(path), "--iterations", str(iterations),
                        "--threads", str(threads), "--json", str(out)], check=True, capture_output=True)
        ours.append(json.loads(out.read_text())["latency_ms"]["p50"])
        proc = subprocess.run([sys.executable, "-c", PLAIN_LOOP, str(path), str(iterations), str(threads), "0.2"],
                              check=True, capture_output=True, text=True)
        plain.append(json.loads(proc.stdout)["p50_ms"])
    return {"edgemm_p50_ms": float(np.median(ours)), "plain_p50_ms": float(np.median(plain)),
            "ratio": float(np.median(ours) / np.median(plain))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--markdown", action="store_true", help="print a markdown table for RESULTS.md")
    args = ap.parse_args()
    models = {
        "small CNN 64x64 (overhead-sensitive)": conv_net("small", 64, (16, 32), 1, seed=1),
        "ResNet-like 128x128 (model-dominated)": conv_net("resnetish", 128, (32, 64, 128), 2, seed=2),
    }
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for label, model in models.items():
            path = tmp / f"{model.graph.name}.onnx"
            onnx.save(model, str(path))
            a = in_process(path, args.rounds, args.iterations, args.threads)
            b = end_to_end(path, args.rounds, max(50, args.iterations // 2), args.threads, tmp)
            rows.append((label, a, b))
            print(f"{label}: in-process {a}, end-to-end {b}", file=sys.stderr)
    m = bench.machine()
    if args.markdown:
        print(f"Command: `python benchmarks/bench_runner.py --rounds {args.rounds} --iterations {args.iterations} "
              f"--threads {args.threads} --markdown`  ")
        print(f"Machine: {m['cpu']}, {m['cores']} cores, onnxruntime {m.get('onnxruntime')}, Python {m['python']}\n")
        print("| model | in-process p50 edgemm / plain (ms) | ratio | `edgemm bench` vs plain loop p50 (ms) | ratio |")
        print("|---|---|---|---|---|")
        for label, a, b in rows:
            print(f"| {label} | {a['edgemm_p50_ms']:.3f} / {a['plain_p50_ms']:.3f} | {a['ratio']:.3f} | "
                  f"{b['edgemm_p50_ms']:.3f} / {b['plain_p50_ms']:.3f} | {b['ratio']:.3f} |")
    else:
        print(json.dumps({"machine": m, "results": [{"model": l, "in_process": a, "end_to_end": b} for l, a, b in rows]},
                         indent=2))


if __name__ == "__main__":
    main()
