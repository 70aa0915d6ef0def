"""PP-OCRv4's text recogniser (SVTR-LCNet: a conv backbone, then attention blocks) in INT8 under OpenVINO:
NNCF's options tried one by one, each scored by recognised text, closeness to FP32 and CPU time.

Variants (each an nncf.quantize of the same prepared graph, the graph's float tail ignored as the converter
does; all on the same calibration samples):

  default       the converter's `nncf` candidate (performance preset, fast bias correction)
  transformer   model_type=TRANSFORMER (attention-aware placement; SmoothQuant on MatMuls, alpha 0.95)
  transformer-nosq   the same without SmoothQuant
  transformer-perf   model_type=TRANSFORMER with the PERFORMANCE preset (symmetric activations: the
                     TRANSFORMER default is MIXED, asymmetric, which OpenVINO's CPU ran in float)
  transformer-perf-nosq   the same without SmoothQuant
  transformer-perf-sqconvA   transformer-perf with SmoothQuant on convolutions too, alpha A (0.15, 0.5, 0.8):
                     each input channel's range moved partly into the convolution's weights
  transformer-perf-sqconv0.8-nomm   SmoothQuant on convolutions only (alpha 0.8), none on MatMuls
  attn-float    default, with the attention MatMuls (two activation inputs) and Softmax kept float
  head-float    default, with every MatMul after the conv backbone (attention + linear layers + head) float
  bias-full     fast_bias_correction=False (the full bias correction)
  mixed         preset MIXED (asymmetric activations)

Calibration: --calib photos (the zoo's: crops of two photographs, no text) or text (lines rendered by
benchmarks/ocr_text.py, another seed than the test lines). Scored on --lines test lines: exact lines and
character accuracy (benchmarks/ocr_text.py), the worst / mean output cosine against FP32, and CPU time p50
of one inference on OpenVINO, one thread, all variants interleaved (edgemm.bench).

    python benchmarks/ocr_rec_int8.py --calib text --variants default,transformer --json build/rec.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import ocr_text  # noqa: E402
import zoo  # noqa: E402

from edgemm.converters import int8, openvino, opsets  # noqa: E402
from edgemm.converters.int8 import cosine  # noqa: E402
from edgemm.converters.timing import time_models  # noqa: E402
from edgemm.runners.openvino import OpenVINORunner, compile_crash, static_onnx  # noqa: E402

SHAPE = (1, 3, 48, 320)


def attention_matmuls(model) -> set[str]:
    """MatMuls whose two inputs are both activations (q @ k^T, attn @ v), and the Softmax nodes."""
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return {n.name for n in model.graph.node
            if (n.op_type == "MatMul" and not any(i in consts for i in n.input)) or n.op_type == "Softmax"}


def after_backbone(model) -> set[str]:
    """Every MatMul and Softmax (the attention blocks, their linear layers and the head: the part after
    the convolutional backbone)."""
    return {n.name for n in model.graph.node if n.op_type in ("MatMul", "Softmax", "Gemm")}


def variants(nncf, prepared) -> dict:
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    perf = nncf.QuantizationPreset.PERFORMANCE
    no_sq = AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))
    return {
        "default": ({}, set()),
        "transformer": ({"model_type": nncf.ModelType.TRANSFORMER}, set()),
        "transformer-nosq": ({"model_type": nncf.ModelType.TRANSFORMER, "advanced_parameters": no_sq}, set()),
        "transformer-perf": ({"model_type": nncf.ModelType.TRANSFORMER, "preset": perf}, set()),
        "transformer-perf-nosq": ({"model_type": nncf.ModelType.TRANSFORMER, "preset": perf,
                                   "advanced_parameters": no_sq}, set()),
        **{f"transformer-perf-sqconv{a}": ({"model_type": nncf.ModelType.TRANSFORMER, "preset": perf,
                                            "advanced_parameters": AdvancedQuantizationParameters(
                                                smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=a))},
                                           set()) for a in (0.15, 0.5, 0.8)},
        "transformer-perf-sqconv0.8-nomm": ({"model_type": nncf.ModelType.TRANSFORMER, "preset": perf,
                                             "advanced_parameters": AdvancedQuantizationParameters(
                                                 smooth_quant_alphas=AdvancedSmoothQuantParameters(
                                                     convolution=0.8, matmul=-1))}, set()),
        "attn-float": ({}, attention_matmuls(prepared)),
        "head-float": ({}, after_backbone(prepared)),
        "bias-full": ({"fast_bias_correction": False}, set()),
        "mixed": ({"preset": nncf.QuantizationPreset.MIXED}, set()),
    }


def calibration(kind: str, n: int) -> list[dict]:
    if kind == "text":
        return [{"x": ocr_text.feed(img)} for img, _ in ocr_text.lines(n, seed=1)]
    models = zoo.fetch([m for m in zoo.ZOO if m.name == "ocr_rec"])
    folder = zoo.make_calibration("ocr_rec", models, ROOT / "build" / "zoo")
    feeds = []
    for f in sorted(folder.glob("*.npz"))[:n]:
        with np.load(f) as z:
            feeds.append({"x": z["x"].astype(np.float32)})
    return feeds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calib", choices=("photos", "text"), default="text")
    ap.add_argument("--calib-n", type=int, default=64, help="calibration samples (photos: at most 20)")
    ap.add_argument("--variants", default="default,transformer,transformer-nosq,attn-float,head-float,bias-full")
    ap.add_argument("--lines", type=int, default=300, help="labelled test lines")
    ap.add_argument("--seconds", type=float, default=30.0, help="interleaved timing, all variants together")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    nncf = openvino.import_optional("nncf", openvino.INSTALL_HINT)
    path = zoo.model_path(next(m for m in zoo.ZOO if m.name == "ocr_rec"))
    chars = ocr_text.characters(path)
    import onnx

    fp32 = onnx.load_from_string(static_onnx(path, {"x": SHAPE}))
    ready = opsets.ready_for_qdq(fp32).model
    prepared = int8.prepare(ready)
    feeds = calibration(args.calib, args.calib_n)
    graphs = {"fp32": fp32}
    info: dict[str, dict] = {"fp32": {}}
    table = variants(nncf, prepared)
    for name in args.variants.split(","):
        options, ignored = table[name]
        t0 = time.monotonic()
        q = openvino.nncf_quantize(prepared, feeds, ignored, **options)
        info[name] = {"quantize_s": round(time.monotonic() - t0, 1), "ignored": len(ignored)}
        why = compile_crash(q.SerializeToString(), {"x": SHAPE})
        if why:
            info[name]["rejected"] = why
            continue
        graphs[name] = q
        print(f"{name}: quantized in {info[name]['quantize_s']} s", file=sys.stderr, flush=True)
    test = ocr_text.lines(args.lines, seed=0)
    truth = [t for _, t in test]
    runners = {k: OpenVINORunner(g.SerializeToString(), 1, name=k) for k, g in graphs.items()}
    ref = None
    for k, r in runners.items():
        with r:
            outs = [next(iter(r.infer({"x": ocr_text.feed(img)}).values())) for img, _ in test]
        info[k].update(ocr_text.score([ocr_text.decode(o, chars) for o in outs], truth))
        if ref is None:
            ref = outs
        cos = [cosine(a, b) for a, b in zip(ref, outs)]
        info[k].update(cosine_min=float(np.min(cos)), cosine_mean=float(np.mean(cos)))
    timing = time_models(runners, feed={"x": ocr_text.feed(test[0][0])}, threads=1, duration_s=args.seconds)
    base = timing["fp32"]["cpu_ms"]["p50"]
    for k, t in timing.items():
        info[k].update(cpu_p50_ms=t["cpu_ms"]["p50"], wall_p50_ms=t["latency_ms"]["p50"],
                       vs_ov_fp32=base / t["cpu_ms"]["p50"], iterations=t["iterations"])
    print(f"calibration: {args.calib} x {len(feeds)}; test: {args.lines} rendered lines; load {os.getloadavg()}")
    print("| variant | exact lines % | char acc % | cosine min / mean | CPU p50 ms | vs OV FP32 |")
    print("|---|---|---|---|---|---|")
    for k, v in info.items():
        if "rejected" in v:
            print(f"| {k} | rejected: {v['rejected']} | | | | |")
            continue
        print(f"| {k} | {v['exact_pct']:.1f} | {v['char_acc_pct']:.2f} | {v['cosine_min']:.4f} / "
              f"{v['cosine_mean']:.4f} | {v['cpu_p50_ms']:.2f} | {v['vs_ov_fp32']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"calib": args.calib, "n": len(feeds), "load": os.getloadavg(),
                                               "results": info}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
