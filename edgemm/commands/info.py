"""Show what a model expects and what it is: inputs, outputs, modalities, precision, size, MACs.

MODEL is a bundle folder or a plain .onnx file (its manifest is then inferred; the notes say what was
assumed). Example:  edgemm info model.onnx
"""

from __future__ import annotations

from edgemm.shapes import SHAPE_HELP, shape_overrides


def add_arguments(p) -> None:
    p.add_argument("model", metavar="MODEL", help="bundle folder or .onnx file")
    p.add_argument("--shape", action="append", default=[], metavar="NAME:DIMS", help=SHAPE_HELP)
    p.add_argument("--json", metavar="PATH", help="also write the information as JSON ('-' for stdout only)")


def _shape(shape) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def _preprocess(spec) -> str:
    pre = spec.preprocess
    if pre is None:
        return f"flags {spec.presence_of}" if spec.presence_of else (f"from {spec.source}" if spec.source else "")
    # A baked input is handed the resized BGR frame or the waveform; the rest is done in the graph.
    baked = " (baked: in the graph)" if pre.baked else ""
    if spec.modality == "video":
        frames = f", {pre.frames} frames" if pre.frames > 1 else ""
        return (f"{pre.color} {pre.size[0]}x{pre.size[1]}{frames}, scale {pre.scale:.6g}, "
                f"mean {list(pre.mean)}, std {list(pre.std)}{baked}")
    if pre.feature == "waveform":
        return f"waveform {pre.sample_rate} Hz, {pre.window_s:g} s"
    return (f"{pre.feature} {pre.sample_rate} Hz, {pre.window_s:g} s window, {pre.n_mels} mels, "
            f"n_fft {pre.n_fft}, hop {pre.hop_length}{baked}")


def _human(n: float | None, unit: str = "") -> str:
    if n is None:
        return "unknown"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".strip()


def run(args) -> int:
    from edgemm.bundle import load_bundle
    from edgemm.modelinfo import bundle_info


    bundle = load_bundle(args.model, shapes=shape_overrides(args.shape))
    info = bundle_info(bundle)
    if args.json:
        from edgemm.outputs import to_json, write_json

        if args.json == "-":
            print(to_json(info, indent=2))
            return 0
        write_json(args.json, info)
    print(f"Model:      {info['source']} ({'manifest inferred' if info['manifest'] == 'inferred' else 'bundle'})")
    print(f"Fusion:     {info['fusion']}    modalities: {', '.join(info['modalities']) or 'none'}    "
          f"precision: {info['precision']}")
    print(f"Total:      {_human(info['parameters'])} parameters, {_human(info['macs'], 'MACs')} (batch 1), "
          f"{_human(info['size_bytes'], 'B')}")
    for gname, g in info["graphs"].items():
        spec = bundle.manifest.graphs[gname]
        print(f"\nGraph {gname} ({g['file']}): {_human(g['parameters'])} parameters, {_human(g['macs'], 'MACs')}, "
              f"{_human(g['size_bytes'], 'B')}, opset {g['opset']}, {g['nodes']} nodes, {g['precision']}")
        if g["engine"]:
            e = g["engine"]
            print(f"  engine: {e['file']} (TensorRT {e.get('tensorrt_version', '?')}, {e.get('gpu', '?')})")
        print("  inputs:")
        for s in spec.inputs:
            print(f"    {s.name:<18} {s.modality:<9} {s.dtype:<8} {_shape(s.shape):<20} {s.layout or '':<6} {_preprocess(s)}")
        print("  outputs:")
        for s in spec.outputs:
            extra = f"{len(s.labels)} classes ({s.scores})" if s.labels else ""
            if s.detection is not None:
                d = s.detection
                extra = (f"{d.format}, {len(s.labels) if s.labels else '?'} classes, conf {d.conf}, iou {d.iou}"
                         + (f", parts {', '.join(d.parts.values())}" if d.parts else ""))
            print(f"    {s.name:<18} {s.task:<14} {s.dtype:<8} {_shape(s.shape):<20} {extra}")
    if info["provenance"] and info["manifest"] != "inferred":
        print("\nProvenance: " + ", ".join(f"{k}={v}" for k, v in info["provenance"].items() if not isinstance(v, dict)))
    if bundle.notes:
        print("\nNotes (manifest inferred from the ONNX file; write a manifest to change these):")
        for n in bundle.notes:
            print(f"  - {n}")
    return 0
