"""What copying the inputs costs an OpenVINO call: `InferRequest.infer(..., share_inputs=False)` (OpenVINO
copies every input into its own tensor, its default) against `share_inputs=True` (it reads the arrays in
place; what edgemm's OpenVINO runner does), on the streaming benchmark's early-fusion CNN (video 3x224x224 +
log-mel 1x64x98, about 0.16 GMAC), one thread, the two interleaved in rounds. CPU time of the calling thread
per call (OpenVINO runs a one-thread inference on the caller's thread: the process's CPU time is the same),
so other work on the machine does not inflate it.

    python benchmarks/ov_share_inputs.py [--rounds 20] [--calls 100]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import av_cnn  # noqa: E402
from edgemm.runners.openvino import openvino  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--calls", type=int, default=100)
    args = ap.parse_args(argv)
    ov = openvino()
    core = ov.Core()
    model = core.read_model(av_cnn(1).SerializeToString(), b"")
    compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1,
                                                 "ENABLE_CPU_PINNING": False, "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    rng = np.random.default_rng(0)
    feed = {p.any_name: rng.standard_normal([d.get_length() if d.is_static else 1 for d in p.partial_shape],
                                            dtype=np.float32) for p in compiled.inputs}
    outs = list(compiled.outputs)
    ms: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(10):
        request.infer(feed)
    for _ in range(args.rounds):
        for share in (False, True):
            t0 = time.thread_time()
            for _ in range(args.calls):
                request.infer(feed, share_inputs=share)
                [np.array(request.get_tensor(p).data, copy=True) for p in outs]
            ms[share].append((time.thread_time() - t0) / args.calls * 1e3)
    copy, shared = float(np.median(ms[False])), float(np.median(ms[True]))
    print(f"inputs {', '.join(f'{k} {tuple(v.shape)}' for k, v in feed.items())}; {args.rounds} rounds x "
          f"{args.calls} calls each, CPU ms per call (median of rounds)")
    print(f"share_inputs=False (copy): {copy:.3f} ms")
    print(f"share_inputs=True (edgemm): {shared:.3f} ms  ({copy - shared:+.3f} ms saved, {copy / shared:.3f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
