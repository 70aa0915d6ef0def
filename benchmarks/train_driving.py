#!/usr/bin/env python3
"""Train the driving reference models on the offline driving set and export them as edgemm bundles.

  driving_detector  a small anchor-free detector exported in the YOLOv8 output layout: one output
                    [N, 4 + classes, anchors] = cx, cy, w, h in input pixels, then per-class scores
                    (sigmoid, no objectness); anchors on strides 8 and 16 (576 + 144 at 192x192)
  driving_audio     an audio event classifier (none / siren / horn) on 1 s of log-mel
  driving_fusion.json  the late fusion of the two into "emergency vehicle approaching", fitted on the
                    validation scenes (benchmarks/eval_driving.py applies and scores it)

Training: each GT box goes to the level its size fits (longest side <= 40 px: stride 8), its positives are
the anchors of that level within 1.5 strides of its centre and inside it; loss = BCE on all class scores
(targets: the IoU of the positives' predicted boxes, so scores rank boxes by quality) + GIoU on the
positives. Needs PyTorch (CPU): pip install torch==2.13.0. Fixed seeds.
Usage:  python benchmarks/train_driving.py [--data build/driving] [--out benchmarks/models] [--epochs 16]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgemm.bundle import (  # noqa: E402
    DetectionSpec, FusionSpec, GraphSpec, Manifest, OutputSpec, load_bundle, write_bundle)
from edgemm.reference import driving as dr  # noqa: E402

STRIDES = (8, 16)
LEVEL_SPLIT_PX = 40
OVERSAMPLE = 5
OPSET = 17
EMA_DECAY = 0.998  # weight averaging of the detector (see train_detector)


def anchors() -> tuple[np.ndarray, np.ndarray]:
    """Anchor centres [A, 2] (pixels) and strides [A], level by level, row-major (the export's order)."""
    pts, strides = [], []
    for s in STRIDES:
        g = dr.SIZE // s
        yy, xx = np.mgrid[0:g, 0:g]
        pts.append(np.stack([(xx.ravel() + 0.5) * s, (yy.ravel() + 0.5) * s], 1))
        strides.append(np.full(g * g, s))
    return np.concatenate(pts).astype(np.float32), np.concatenate(strides).astype(np.float32)


# Channel widths: stem (two stride-2 convs), P3 (stride 8), P4 (stride 16), head. Wide enough that each conv
# does real work: a narrower net ran at 0.65 ms where ONNX Runtime's per-op overhead ate the INT8 speed-up.
WIDTHS = (24, 48, 80, 112, 80)


def build_detector(n_classes: int, widths: tuple = WIDTHS):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def cbr(cin, cout, stride=1):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            s1, s2, c3, c4, ch = widths
            self.stem = nn.Sequential(cbr(3, s1, 2), cbr(s1, s2, 2))
            self.p3 = nn.Sequential(cbr(s2, c3, 2), cbr(c3, c3))
            self.p4 = nn.Sequential(cbr(c3, c4, 2), cbr(c4, c4))
            self.head3 = nn.Sequential(nn.Conv2d(c3 + c4, ch, 1), nn.ReLU(), cbr(ch, ch), nn.Conv2d(ch, 4 + n_classes, 1))
            self.head4 = nn.Sequential(cbr(c4, ch), nn.Conv2d(ch, 4 + n_classes, 1))
            pts, strides = anchors()
            self.register_buffer("pts", torch.from_numpy(pts).T.contiguous())  # [2, A]
            self.register_buffer("strides", torch.from_numpy(strides)[None])  # [1, A]
            prior = -4.6  # start the class scores near 1 %: most anchors are background
            for h in (self.head3, self.head4):
                nn.init.constant_(h[-1].bias[4:], prior)

        def raw(self, x):
            """[N, 4 + C, A] raw: ltrb (before softplus) and class logits."""
            p3 = self.p3(self.stem(x))
            p4 = self.p4(p3)
            up = F.interpolate(p4, size=p3.shape[-2:], mode="nearest")
            o3 = self.head3(torch.cat([p3, up], 1)).flatten(2)
            o4 = self.head4(p4).flatten(2)
            return torch.cat([o3, o4], 2)

        def boxes(self, raw):
            ltrb = F.softplus(raw[:, :4]) * self.strides
            x1, y1 = self.pts[0] - ltrb[:, 0], self.pts[1] - ltrb[:, 1]
            x2, y2 = self.pts[0] + ltrb[:, 2], self.pts[1] + ltrb[:, 3]
            return torch.stack([x1, y1, x2, y2], 1)  # [N, 4, A]

        def forward(self, x):  # the export: YOLOv8 layout
            raw = self.raw(x)
            b = self.boxes(raw)
            cxcywh = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0],
                                  b[:, 3] - b[:, 1]], 1)
            return torch.cat([cxcywh, torch.sigmoid(raw[:, 4:])], 1)

    return Detector()


def build_audio():
    import torch.nn as nn

    def cbr(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.MaxPool2d(2))

    return nn.Sequential(cbr(1, 16), cbr(16, 32), cbr(32, 48), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Dropout(0.2), nn.Linear(48, len(dr.AUDIO_LABELS)))


def assign(boxes: np.ndarray, classes: np.ndarray, pts: np.ndarray, strides: np.ndarray):
    """Targets of one image: class per anchor (-1 background) and its GT box [A, 4]."""
    a = len(pts)
    cls = np.full(a, -1, np.int64)
    tgt = np.zeros((a, 4), np.float32)
    area_won = np.full(a, np.inf)
    for b, c in zip(boxes, classes):
        side = max(b[2] - b[0], b[3] - b[1])
        level = STRIDES[0] if side <= LEVEL_SPLIT_PX else STRIDES[1]
        ctr = np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])
        on = strides == level
        near = np.all(np.abs(pts - ctr) <= 1.5 * level, 1)
        inside = (pts[:, 0] > b[0]) & (pts[:, 0] < b[2]) & (pts[:, 1] > b[1]) & (pts[:, 1] < b[3])
        pos = on & near & inside
        if not pos.any():
            d = np.where(on, np.sum((pts - ctr) ** 2, 1), np.inf)
            pos = np.zeros(a, bool)
            pos[int(np.argmin(d))] = True
        area = (b[2] - b[0]) * (b[3] - b[1])
        pos &= area < area_won  # the smaller box keeps a contested anchor
        cls[pos], tgt[pos], area_won[pos] = c, b, area
    return cls, tgt


def giou(a, b):
    import torch

    ix1, iy1 = torch.max(a[:, 0], b[:, 0]), torch.max(a[:, 1], b[:, 1])
    ix2, iy2 = torch.min(a[:, 2], b[:, 2]), torch.min(a[:, 3], b[:, 3])
    inter = (ix2 - ix1).clamp(0) * (iy2 - iy1).clamp(0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a + area_b - inter + 1e-6
    iou = inter / union
    cx1, cy1 = torch.min(a[:, 0], b[:, 0]), torch.min(a[:, 1], b[:, 1])
    cx2, cy2 = torch.max(a[:, 2], b[:, 2]), torch.max(a[:, 3], b[:, 3])
    hull = (cx2 - cx1) * (cy2 - cy1) + 1e-6
    return iou - (hull - union) / hull, iou


def to_tensor_images(frames: np.ndarray):
    """BGR uint8 [N,H,W,3] -> the model input, as edgemm.preprocess makes it (RGB, /255, NCHW)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(frames[..., ::-1].transpose(0, 3, 1, 2))).float() / 255.0


def train_detector(data: dict, epochs: int, seed: int, log=print, checkpoint=None, checkpoint_every: int = 0):
    """Train; the weights kept (and exported) are an exponential moving average of the trained ones, which
    is good at any point of the schedule: ``checkpoint(model, info)`` gets it every ``checkpoint_every``
    epochs, so a run cut short still leaves a usable model behind."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    n_cls = len(dr.CLASSES)
    model = build_detector(n_cls)
    pts, strides = anchors()
    frames = data["frames"]
    n = len(frames)
    t_cls = np.full((n, len(pts)), -1, np.int64)
    t_box = np.zeros((n, len(pts), 4), np.float32)
    for i in range(n):
        sel = data["box_image"] == i
        t_cls[i], t_box[i] = assign(data["box_xyxy"][sel], data["box_class"][sel], pts, strides)
    t_cls, t_box = torch.from_numpy(t_cls), torch.from_numpy(t_box)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    bs = 32
    # Emergency vehicles are rare (a few % of the boxes): their frames are seen OVERSAMPLE times per epoch.
    ev_frames = np.unique(data["box_image"][data["box_class"] == dr.EMERGENCY])
    pool = torch.from_numpy(np.concatenate([np.arange(n)] + [ev_frames] * (OVERSAMPLE - 1)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * ((len(pool) + bs - 1) // bs),
                                                pct_start=0.15)
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(EMA_DECAY),
                                              use_buffers=True)
    t0 = time.perf_counter()
    history = []
    for epoch in range(epochs):
        model.train()
        order = pool[torch.randperm(len(pool), generator=gen)]
        total = 0.0
        for i in range(0, len(order), bs):
            idx = order[i:i + bs]
            x = to_tensor_images(frames[idx.numpy()])
            tc, tb = t_cls[idx], t_box[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5  # horizontal flip: boxes mirrored
            if flip.any():
                x[flip] = x[flip].flip(-1)
            raw = model.raw(x)
            boxes = model.boxes(raw).permute(0, 2, 1)  # [B, A, 4]
            if flip.any():
                # mirror the predictions back instead of re-assigning: anchors are symmetric per row, so the
                # prediction at mirrored anchor j answers for the box at anchor j
                g3, g4 = dr.SIZE // STRIDES[0], dr.SIZE // STRIDES[1]
                perm = np.concatenate([np.arange(g3 * g3).reshape(g3, g3)[:, ::-1].ravel(),
                                       g3 * g3 + np.arange(g4 * g4).reshape(g4, g4)[:, ::-1].ravel()])
                perm = torch.from_numpy(perm.copy())
                fb = boxes[flip][:, perm]
                boxes = boxes.clone()
                boxes[flip] = torch.stack([dr.SIZE - fb[..., 2], fb[..., 1], dr.SIZE - fb[..., 0], fb[..., 3]], -1)
                logits_all = raw[:, 4:].permute(0, 2, 1).clone()
                logits_all[flip] = logits_all[flip][:, perm]
            else:
                logits_all = raw[:, 4:].permute(0, 2, 1)
            pos = tc >= 0
            n_pos = max(1, int(pos.sum()))
            target = torch.zeros_like(logits_all)
            loss_box = torch.zeros(())
            if pos.any():
                g, iou = giou(boxes[pos], tb[pos])
                loss_box = (1 - g).sum() / n_pos
                target[pos, tc[pos]] = iou.detach().clamp(0.05)
            loss_cls = F.binary_cross_entropy_with_logits(logits_all, target, reduction="sum") / n_pos
            loss = loss_cls + 2.0 * loss_box
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            ema.update_parameters(model)
            total += float(loss.detach()) * len(idx)
        history.append({"epoch": epoch + 1, "loss": round(total / len(order), 4)})
        log(f"  detector epoch {epoch + 1}/{epochs} loss {total / len(order):.4f} ({time.perf_counter() - t0:.0f} s)")
        info = {"epochs": epochs, "epochs_done": epoch + 1, "history": history, "frames": n,
                "train_seconds": round(time.perf_counter() - t0, 1), "widths": list(WIDTHS), "ema_decay": EMA_DECAY}
        if checkpoint is not None and checkpoint_every and (epoch + 1) % checkpoint_every == 0 and epoch + 1 < epochs:
            ema.module.eval()
            checkpoint(ema.module, info)
    ema.module.eval()
    return ema.module, info


def train_audio(train: dict, val: dict, epochs: int, seed: int, log=print):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_audio()
    x, y = torch.from_numpy(train["audio"]), torch.from_numpy(train["audio_label"])
    xv, yv = torch.from_numpy(val["audio"]), torch.from_numpy(val["audio_label"])
    n, bs = len(y), 64
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * ((n + bs - 1) // bs), pct_start=0.2)
    best, best_state, t0 = -1.0, None, time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, bs):
            idx = order[i:i + bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(xv).argmax(1) == yv).float().mean())
        log(f"  audio epoch {epoch + 1}/{epochs} val acc {acc:.4f} ({time.perf_counter() - t0:.0f} s)")
        if acc >= best:
            best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    return model, {"epochs": epochs, "val_accuracy": round(best, 4), "train_seconds": round(time.perf_counter() - t0, 1)}


def to_onnx(module, example, input_name: str, output_name: str, metadata: dict | None = None):
    import onnx
    import torch

    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buf, input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: "N"}, output_name: {0: "N"}}, opset_version=OPSET,
                          dynamo=False, do_constant_folding=True)
    model = onnx.load_from_string(buf.getvalue())
    for k, v in (metadata or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    return model


def export_detector(model, out: Path, info: dict, meta: dict) -> Path:
    import torch

    n_anchor = len(anchors()[0])
    # Ultralytics' metadata keys, so a runtime that reads YOLO exports' metadata knows what this is.
    md = {"task": "detect", "imgsz": str([dr.SIZE, dr.SIZE]), "stride": str(max(STRIDES)),
          "names": str({i: c for i, c in enumerate(dr.CLASSES)}), "format": "yolov8"}
    graph = to_onnx(model, torch.zeros(1, 3, dr.SIZE, dr.SIZE), "images", "output0", md)
    # The runtime's detection block: edgemm.detection decodes it (YOLOv8 layout), NMS, tracking, boxes drawn.
    out_spec = OutputSpec("output0", "detection", "float32", ["N", 4 + len(dr.CLASSES), n_anchor], list(dr.CLASSES),
                          detection=DetectionSpec(format="yolov8", conf=0.25, iou=0.6))
    provenance = {"precision": "fp32", "trained_by": "benchmarks/train_driving.py", "format": "yolov8",
                  "labels": dr.CLASSES, "box": "cxcywh pixels of the input", "strides": list(STRIDES),
                  "data": {"name": "driving", "generator": "benchmarks/driving/generate.py", "seed": meta["seed"],
                           "stats": meta["stats"]["train"]}, **info}
    manifest = Manifest("driving_detector", {"model": GraphSpec("model", "model.onnx", [dr.video_spec()], [out_spec])},
                        FusionSpec("early"), provenance)
    path = write_bundle(manifest, {"model.onnx": graph}, out / "driving_detector", force=True)
    load_bundle(path)
    return path


def export_audio(model, out: Path, info: dict, meta: dict) -> Path:
    import torch

    graph = to_onnx(model, torch.zeros(1, 1, dr.AUDIO_PRE.n_mels, dr.AUDIO_PRE.n_frames), "audio", "event")
    out_spec = OutputSpec("event", "classification", "float32", ["N", len(dr.AUDIO_LABELS)], list(dr.AUDIO_LABELS),
                          "logits")
    provenance = {"precision": "fp32", "trained_by": "benchmarks/train_driving.py",
                  "data": {"name": "driving", "generator": "benchmarks/driving/generate.py", "seed": meta["seed"],
                           "stats": meta["stats"]["train"]["audio_windows"]}, **info}
    manifest = Manifest("driving_audio", {"model": GraphSpec("model", "model.onnx", [dr.audio_spec()], [out_spec])},
                        FusionSpec("early"), provenance)
    path = write_bundle(manifest, {"model.onnx": graph}, out / "driving_audio", force=True)
    load_bundle(path)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / "build" / "driving"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "models"))
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--audio-epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="detector,audio")
    p.add_argument("--max-images", type=int, default=None, help="train the detector on the first N frames only")
    p.add_argument("--max-windows", type=int, default=None, help="train the audio model on N random windows only")
    p.add_argument("--checkpoint-every", type=int, default=4, help="export the detector every K epochs as well (0: never)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    data, out = Path(args.data), Path(args.out)
    meta = json.loads((data / "meta.json").read_text())
    train = dict(np.load(data / "train.npz"))
    val = dict(np.load(data / "val.npz"))
    if args.max_images:
        keep = train["box_image"] < args.max_images
        train["frames"] = train["frames"][:args.max_images]
        for k in ("box_xyxy", "box_class", "box_image"):
            train[k] = train[k][keep]
    if args.max_windows and args.max_windows < len(train["audio_label"]):
        sel = np.sort(np.random.default_rng(args.seed).permutation(len(train["audio_label"]))[:args.max_windows])
        for k in ("audio", "audio_label", "audio_snr_db", "audio_scene"):
            train[k] = train[k][sel]
    log_path = out / "driving_training.json"
    infos = json.loads(log_path.read_text())["models"] if log_path.exists() else {}
    t0 = time.perf_counter()
    if "audio" in args.only:
        model, infos["audio"] = train_audio(train, val, args.audio_epochs, args.seed + 1)
        print(f"-> {export_audio(model, out, infos['audio'], meta)}")
    if "detector" in args.only:
        def checkpoint(model, info):
            print(f"-> checkpoint {export_detector(model, out, info, meta)} after epoch {info['epochs_done']}",
                  flush=True)

        model, infos["detector"] = train_detector(train, args.epochs, args.seed, checkpoint=checkpoint,
                                                  checkpoint_every=args.checkpoint_every)
        path = export_detector(model, out, infos["detector"], meta)
        x = to_tensor_images(val["frames"][:8])
        import onnxruntime as ort

        got = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"]).run(
            None, {"images": x.numpy()})[0]
        with torch.no_grad():
            diff = float(np.max(np.abs(got - model(x).numpy())))
        print(f"-> {path} (ONNX vs torch max diff {diff:.1e})")
    if log_path.exists():  # another run (--only) may have trained the other model meanwhile
        infos = json.loads(log_path.read_text())["models"] | {k: v for k, v in infos.items() if k in args.only}
    log_path.write_text(json.dumps({"seed": args.seed, "models": infos,
                                    "seconds_last_run": round(time.perf_counter() - t0, 1)}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
