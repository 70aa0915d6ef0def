"""Convert a model for the device: FP16, accuracy-guarded INT8, pruning, TensorRT engine, with a report.

MODEL is a bundle folder or a plain .onnx file; OUT is a new bundle folder (refused if it exists unless
--force; a failed conversion leaves nothing behind). OUT holds the converted graph(s), the manifest with
provenance (source hashes, every setting, the INT8 flavour and the layers kept in float) and the
validation report: report.json, report.md and confusion.png (accuracy before/after, output closeness,
latency and size before/after measured interleaved on this machine).

INT8 Q/DQ follows --target: onnxruntime (default) times uint8- and int8-activation variants against FP32 on
THIS CPU and keeps the fastest that is as accurate; openvino does the same under OpenVINO with edgemm's
OpenVINO placement, NNCF's post-training quantization and u8s8 as the candidates (latency before/after is then
measured under OpenVINO); tensorrt uses TensorRT's symmetric S8S8 placement and
builds the engine when a GPU and TensorRT are here (otherwise it says to build on the device).
--max-drop POINTS keeps the layers that cost the most accuracy in float until the drop is within budget.

Examples:
  edgemm convert model.onnx -o model-int8.edgemm --precision int8 --calib data/calib --eval data/test --max-drop 1
  edgemm convert model.edgemm -o model-fp16.edgemm --precision fp16 --calib data/calib
  edgemm convert model.edgemm -o model-trt.edgemm --precision int8 --calib data/calib --target tensorrt
  edgemm convert model.edgemm -o pruned.edgemm --prune channels:0.3 --calib data/calib --eval data/test
  edgemm convert model.edgemm -o baked.edgemm --bake-preprocess video,audio

--bake-preprocess puts the preprocessing into the graph (converters/bake.py): the model takes the resized
uint8 BGR frame (and with audio, the waveform) and the manifest says so; the outputs of the baked and the
unbaked graph on the same frames are compared and the largest difference is printed.
"""

from __future__ import annotations

import json

# Modules that load onnx, onnxruntime or cv2 are imported inside functions: --help imports every command.


# The data folder formats, documented here once (converters/data.py implements them; the CLI shows this
# text without importing converters).
DATA_FORMAT = """\
  1. .npz files, each keyed by input name with a leading batch dimension (any number of samples per file);
     float64 arrays are cast to the input's dtype; tensors for inputs the model does not have are ignored,
     so one folder serves several models. Optional labels under "label" (the primary output) or
     "label:<output>": class indices for classification, numbers for regression. In a multi-graph bundle
     an input name stands for every graph input of that name.
  2. Raw media grouped by file stem: s001.png (or .jpg/.bmp, or a video file: its middle frames) and
     s001.wav make one sample, turned into tensors by the bundle's own preprocessing; WAVs at another
     sample rate are resampled. Optional labels.csv with a header name,label (or name,label:<output>,...);
     values are class indices, class names or numbers. For a detector, box labels as `edgemm eval` reads
     them (a YOLO txt per image, beside it or in labels/, or a COCO JSON): the accuracy guard then
     measures mAP@0.5; without them, agreement with the float model's boxes.
  Files are read one at a time: memory stays bounded however large the folder is. One .npz file may be
  given instead of a folder.
  For a model with recurrent state (inputs with state_of), each file is a stream for calibration and the
  INT8 check: a WAV is cut into the input's windows every hop, as `edgemm run` cuts it, and the samples of
  an .npz are consecutive chunks, each starting from the state the float model left (--calib-limit and
  --eval-limit then count chunks).
"""


# Every numeric flag, finite and in range (checked by the CLI before the command runs: edgemm.errors.check_numbers).
NUMBER_BOUNDS = {
    "calib_limit": ("Calibration limit", "", {"minimum": 1, "maximum": 10**7}),
    "eval_limit": ("Evaluation limit", "", {"minimum": 1, "maximum": 10**7}),
    "max_drop": ("Max drop", "points", {"minimum": 0, "maximum": 100}),
    "min_cosine": ("Min cosine", "", {"minimum": 0, "maximum": 1}),
    "max_batch": ("Max batch", "", {"minimum": 1, "maximum": 4096}),
    "workspace": ("Workspace", "MB", {"minimum": 1, "maximum": 2**20}),
    "builder_opt_level": ("Builder optimization level", "", {"minimum": 0, "maximum": 5}),
    "dla": ("DLA core", "", {"minimum": 0, "maximum": 7}),
    "threads": ("Threads", "", {"minimum": 1, "maximum": 1024}),
    "bench_seconds": ("Bench seconds", "s", {"positive": True, "maximum": 3600}),
}

def add_arguments(p) -> None:
    p.epilog = "Calibration / evaluation data folders (--calib, --eval):\n" + DATA_FORMAT
    p.add_argument("model", metavar="MODEL", help="bundle folder or .onnx file")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output bundle folder (must not exist)")
    p.add_argument("--precision", metavar="P",
                   help="fp32, fp16 or int8 (default: fp32; fp16 with --target tensorrt, as trtexec --fp16; int8 "
                        "for TensorRT runs the layers it does not cover in fp16)")
    p.add_argument("--calib", metavar="DIR", help="calibration data folder or one .npz file (needed for int8)")
    p.add_argument("--calib-limit", type=int, default=512, metavar="N",
                   help="use at most N calibration samples (default 512)")
    p.add_argument("--calib-method", default="minmax", metavar="M", help="minmax (default), entropy or percentile")
    p.add_argument("--eval", metavar="DIR", help="labelled evaluation folder (or one .npz file): accuracy before/after, the guard's metric")
    p.add_argument("--eval-limit", type=int, metavar="N", help="evaluate at most N samples")
    p.add_argument("--max-drop", type=float, metavar="POINTS",
                   help="accuracy budget in points: keep the most harmful layers in float until within it")
    p.add_argument("--min-cosine", type=float, metavar="C",
                   help="without --max-drop, refuse an int8/fp16 model whose outputs' mean cosine to the original "
                        "falls below C on the --eval (else --calib) data (default 0.99; 0: no floor)")
    p.add_argument("--prune", metavar="SPEC", help="channels:RATIO (remove that fraction of channels) or 2:4")
    p.add_argument("--target", default="onnxruntime", metavar="T",
                   help="onnxruntime (default: the flavour fastest on this CPU), openvino (Q/DQ for OpenVINO's "
                        "INT8 kernels: edgemm's placement, NNCF's or u8s8, the fastest under OpenVINO here) "
                        "or tensorrt")
    p.add_argument("--max-batch", type=int, default=1, metavar="N",
                   help="TensorRT: largest batch of a dynamic batch axis in the engine's profile (default 1)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME:MIN,OPT,MAX",
                   help="TensorRT: profile of an input's dynamic axes, e.g. audio:1x1x64x50,1x1x64x98,1x1x64x200; "
                        "repeatable")
    p.add_argument("--nms-in-engine", action="store_true",
                   help="TensorRT: append EfficientNMS to a yolov8/yolov5 detector so the engine returns final boxes "
                        "(the bundle then runs on TensorRT only)")
    p.add_argument("--bake-preprocess", nargs="?", const="video", metavar="PARTS",
                   help="bake the preprocessing into the graph: video (the default PARTS: the model takes the resized "
                        "uint8 BGR frame, NHWC, and does colour, scale/mean/std and layout itself), video,audio (also "
                        "the log-mel: it takes the waveform) or none. Default by --target, as measured (RESULTS.md §14): "
                        "video for openvino, none for onnxruntime, none for tensorrt (not measured yet)")
    p.add_argument("--bake-stft", default="conv", metavar="FORM",
                   help="how a baked log-mel computes its STFT: conv (default: the DFT as a convolution, any opset and "
                        "TensorRT version) or stft (ONNX's STFT op, opset 17)")
    p.add_argument("--timing-cache", metavar="PATH", help="TensorRT: timing cache file (default: a per-user cache)")
    p.add_argument("--workspace", type=int, metavar="MB",
                   help="TensorRT: workspace limit in MB (default: the device's memory, all of an Orin Nano's "
                        "shared 8 GB); trtexec --memPoolSize=workspace:MB")
    p.add_argument("--builder-opt-level", type=int, metavar="N",
                   help="TensorRT: builder optimization level 0..5 (default 3; higher builds longer, may run faster)")
    p.add_argument("--dla", type=int, metavar="CORE",
                   help="TensorRT: run on DLA core CORE (Orin NX / AGX Orin), layers DLA cannot run fall back to "
                        "the GPU and are listed in the report; trtexec --useDLACore CORE --allowGPUFallback")
    p.add_argument("--flavour", metavar="F", help="force the INT8 Q/DQ flavour: u8s8, s8s8, trt; ov, nncf, u8s8 or "
                   "nncf-sq with --target openvino (default: by --target)")
    p.add_argument("--threads", type=int, metavar="N", help="intra-op threads for timing and evaluation")
    p.add_argument("--bench-seconds", type=float, default=3.0, metavar="S",
                   help="seconds of interleaved latency measurement before/after (default 3)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary")


def run(args) -> int:
    from edgemm.converters.convert import ConvertOptions, convert

    opts = ConvertOptions(precision=args.precision, calib=args.calib, calib_limit=args.calib_limit,
                          calib_method=args.calib_method, eval=args.eval, eval_limit=args.eval_limit,
                          max_drop=args.max_drop, prune=args.prune, target=args.target, force=args.force,
                          threads=args.threads, bench_seconds=args.bench_seconds, flavour=args.flavour,
                          quiet=args.quiet, max_batch=args.max_batch, shapes=args.shape,
                          timing_cache=args.timing_cache, workspace_mb=args.workspace,
                          builder_opt_level=args.builder_opt_level, dla=args.dla,
                          nms_in_engine=args.nms_in_engine, bake_preprocess=args.bake_preprocess,
                          bake_stft=args.bake_stft,
                          **({"min_cosine": args.min_cosine} if args.min_cosine is not None else {}))
    report = convert(args.model, args.output, opts)
    print(summary(report, args.output))
    return 0


def summary(report: dict, out) -> str:
    from edgemm.converters.convert import CALIBRATION_ACCURACY_NOTE

    conv = report.get("conversion", {})
    # Without --eval the figures are measured on the calibration data: said where they are printed.
    on_calib = " - on the calibration data (no --eval: optimistic)" if report.get("note") == \
        CALIBRATION_ACCURACY_NOTE else ""
    lines = [f"{report.get('title', 'converted')} -> {out}"]
    for g, v in report.get("latency_ms_p50", {}).items():
        sp = v.get("speedup")
        lines.append(f"  latency {g}: {v['before']:.3f} ms -> {v['after']:.3f} ms (p50), "
                     f"{sp:.2f}x" if sp else f"  latency {g}: n/a")
    for g, v in report.get("size_bytes", {}).items():
        lines.append(f"  size {g}: {v['before'] / 1e6:.2f} MB -> {v['after'] / 1e6:.2f} MB")
    for g, v in conv.get("int8", {}).items():
        f = v["flavour"]
        extra = ""
        if "candidates" in f:
            extra = " (" + ", ".join(f"{k} {c['speedup_vs_fp32']:.2f}x FP32" for k, c in f["candidates"].items()) + ")"
        lines.append(f"  int8 {g}: flavour {f['chosen']}{extra}")
    prim = report.get("primary")
    if prim and prim.get("original") is not None:
        drop = prim.get("drop_points")
        lines.append(f"  {prim['output']} {prim['metric']}: {100 * prim['original']:.2f} % -> "
                     f"{100 * prim['converted']:.2f} % (drop {drop:.2f} points) on {report.get('samples')} samples"
                     f"{on_calib}" if prim.get("converted") is not None and drop is not None else
                     f"  {prim['output']} {prim['metric']}: {prim['original']}{on_calib}")
    close = report.get("closeness") or {}
    for name, c in list(close.items())[:4]:
        if isinstance(c, dict) and c.get("cosine") is not None:
            agree = f", top-1 agreement {100 * c['top1_agreement']:.2f} %" if "top1_agreement" in c else \
                f", box F1 {c['box_f1']:.3f} against the original's boxes" if "box_f1" in c else \
                f" (a part of {c['part_of']}: judged by its boxes)" if "part_of" in c else ""
            lines.append(f"  closeness {name}: cosine {c['cosine']:.5f}, max abs {c['max_abs']:.4g}{agree}{on_calib}")
    for gname, outs in ((conv.get("stream_closeness") or {}).get("graphs") or {}).items():
        for name, c in list(outs.items())[:4]:
            agree = f", decisions agree on {100 * c['decision_agreement']:.1f} %" if "decision_agreement" in c else ""
            lines.append(f"  over streams, state carried: {name}: cosine {c['cosine']:.5f}, max abs {c['max_abs']:.4g}"
                         f"{agree} ({c['chunks']} chunks)")
    g = conv.get("accuracy_guard")
    if g and "layers_kept_float" in g:
        kept = {k: v for k, v in g["layers_kept_float"].items() if v}
        lines.append(f"  accuracy guard: drop {g['drop_points']:.2f} points of {g['metric']} (budget "
                     f"{g['max_drop_points']:g}); kept in float: {json_compact(kept) if kept else 'none'}")
        if g.get("metric_note"):
            lines.append(f"  accuracy guard: {g['metric_note']}")
    trt = conv.get("tensorrt")
    if trt and trt.get("engine", True) is None:
        lines.append("  TensorRT engine: not built here (see report.md); build it on the device from this bundle")
    elif trt:
        for g, info in trt.items():
            if info.get("dla_core") is not None:
                fallback = info.get("gpu_fallback_layers") or []
                names = ", ".join(x["layer"] for x in fallback[:8]) + (", ..." if len(fallback) > 8 else "")
                lines.append(f"  TensorRT {g}: {info.get('dla_layers')} layer(s) on DLA core {info['dla_core']}, "
                             f"{len(fallback)} on the GPU" + (f" ({names})" if fallback else ""))
    lines.append(_bake_line(conv.get("bake_preprocess")))
    for w in report.get("warnings", []):
        lines.append(f"  warning: {w}")
    lines.append(f"  report: {out}/report.md")
    return "\n".join(lines)


def _bake_line(record: dict | None) -> str:
    if not record or not record.get("parts"):
        why = f" ({record['why']})" if record and record.get("why") else ""
        return f"  preprocessing: in Python{why}; --bake-preprocess video[,audio] bakes it into the graph"
    diff = max((record.get("max_abs_diff_vs_python") or {0: 0.0}).values())
    stft = f", STFT as {record['audio_stft']}" if record.get("audio_stft") else ""
    return (f"  preprocessing: baked into the graph ({', '.join(record['inputs'])}{stft}; {record['why']}); "
            f"outputs within {diff:.3g} of the Python path")


def json_compact(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))
