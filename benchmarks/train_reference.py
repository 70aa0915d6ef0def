#!/usr/bin/env python3
"""Train the reference audio-visual models on AV-digits and export them as edgemm bundles.

One family of encoder designs, fused at three depths, plus baselines and a two-head model:

  avdigits_video         video-only baseline: video encoder + classifier
  avdigits_audio         audio-only baseline: audio encoder + classifier
  avdigits_early         early fusion: each modality's first conv block (stem), feature maps
                         concatenated, then one shared trunk (one graph)
  avdigits_intermediate  intermediate fusion: full video and audio encoders (separate graphs, each run
                         at its own rate on the device) -> 64-d embeddings -> a fusion head that also
                         takes a presence flag per modality
  avdigits_late          late fusion: the two baselines as members, probabilities averaged (weighted_mean)
  avdigits_multitask     one graph, shared encoders, two heads: the digit command and the speaker's
                         voice (female/male)

Every fusion model is trained with modality dropout (p=0.2 per modality, never both): the missing
modality's input (early, multitask) or embedding (intermediate, with its presence flag at 0) is zeroed,
exactly what edgemm.fusion does at run time when a sensor is missing. The training data already carries
corruptions (benchmarks/avdigits/generate.py); the features come from edgemm.preprocess, the runtime's
own transforms, so the models see in training the numbers they see on the device.

Needs PyTorch (CPU is enough): pip install torch==2.13.0. About 5-10 minutes on 2 CPU cores.
Usage:  python benchmarks/train_reference.py [--data build/avdigits] [--out benchmarks/models]
        [--epochs 14] [--only early,intermediate] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgemm.bundle import FusionSpec, GraphSpec, InputSpec, Manifest, OutputSpec, load_bundle, write_bundle  # noqa: E402
from edgemm.reference import avdigits as av  # noqa: E402

EMB = 64
OPSET = 17
P_DROP = {"video": 0.2, "audio": 0.3}  # modality dropout; audio more often: it is the easier sensor
AUX_WEIGHT = 0.5  # per-modality auxiliary losses (intermediate, multitask)
RATES_HZ = {"video": 10.0, "audio": 5.0}  # intermediate encoders' rates on the device
SHIP = ["avdigits_intermediate", "avdigits_late"]  # copied into edgemm/reference/models: the demo runs the first;
# the second holds the camera-only and microphone-only models, for the demo's "what each sensor alone gets"


def build_models():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def block(cin, cout, pool=True):
        layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        if pool:
            layers.append(nn.MaxPool2d(2))
        return nn.Sequential(*layers)

    def stem(cout=16):
        # A strided first conv halves the resolution at a quarter of the cost of conv + max-pool.
        return nn.Sequential(nn.Conv2d(1, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    class Encoder(nn.Module):
        """One design for both modalities ("sharing encoder designs"): a frame [N,1,32,32] or a log-mel
        [N,1,40,98] -> [N,EMB]. stem (stride 2), three blocks (the first two pool), global pool, fc."""

        def __init__(self):
            super().__init__()
            self.stem = stem()
            self.trunk = nn.Sequential(block(16, 32), block(32, 48), block(48, 64, pool=False))
            self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64, EMB), nn.ReLU())

        def forward(self, x):
            x = self.trunk(self.stem(x))
            return self.fc(F.adaptive_avg_pool2d(x, 1))

    class Unimodal(nn.Module):
        def __init__(self, modality):
            super().__init__()
            self.modality = modality
            self.encoder = Encoder()
            self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(EMB, 10))

        def forward(self, x):
            return self.head(self.encoder(x))

    class Early(nn.Module):
        """Fusion after the first conv block: the audio map is resized onto the video map's 16x16 grid,
        the two are stacked as channels and one trunk sees both from there on."""

        def __init__(self):
            super().__init__()
            self.video_stem, self.audio_stem = stem(), stem()
            self.trunk = nn.Sequential(block(32, 48), block(48, 64), block(64, 64, pool=False))
            self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64, EMB), nn.ReLU(), nn.Dropout(0.2), nn.Linear(EMB, 10))

        def forward(self, video, audio):
            v = self.video_stem(video)
            a = F.interpolate(self.audio_stem(audio), size=v.shape[-2:], mode="bilinear", align_corners=False)
            x = self.trunk(torch.cat([v, a], dim=1))
            return self.fc(F.adaptive_avg_pool2d(x, 1))

    class Head(nn.Module):
        """Embeddings and presence flags -> digit logits."""

        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2 * EMB + 2, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 10))

        def forward(self, video_emb, audio_emb, video_present, audio_present):
            return self.net(torch.cat([video_emb, audio_emb, video_present, audio_present], dim=1))

    class Intermediate(nn.Module):
        def __init__(self):
            super().__init__()
            self.video_encoder, self.audio_encoder, self.head = Encoder(), Encoder(), Head()
            # Training only (never exported): a classifier per embedding keeps each encoder useful on its
            # own, so the weaker camera is not starved by the easier microphone (modality imbalance).
            self.aux = nn.ModuleDict({"video": nn.Linear(EMB, 10), "audio": nn.Linear(EMB, 10)})

        def forward(self, video, audio, video_present, audio_present, aux=False):
            ev, ea = self.video_encoder(video), self.audio_encoder(audio)
            # A missing modality's embedding is zeroed, as edgemm.fusion.FusionModel.fuse does.
            out = self.head(ev * video_present, ea * audio_present, video_present, audio_present)
            return (out, {"video": self.aux["video"](ev), "audio": self.aux["audio"](ea)}) if aux else out

    class MultiTask(nn.Module):
        """Shared encoders, fused embedding, two heads: the digit command and the speaker's voice."""

        def __init__(self):
            super().__init__()
            self.video_encoder, self.audio_encoder = Encoder(), Encoder()
            self.shared = nn.Sequential(nn.Linear(2 * EMB, 64), nn.ReLU(), nn.Dropout(0.2))
            self.digit = nn.Linear(64, 10)
            self.speaker = nn.Linear(64, 2)
            self.aux = nn.ModuleDict({"video": nn.Linear(EMB, 10), "audio": nn.Linear(EMB, 10)})  # training only

        def forward(self, video, audio, aux=False):
            ev, ea = self.video_encoder(video), self.audio_encoder(audio)
            h = self.shared(torch.cat([ev, ea], dim=1))
            out = (self.digit(h), self.speaker(h))
            return (out, {"video": self.aux["video"](ev), "audio": self.aux["audio"](ea)}) if aux else out

    return dict(Unimodal=Unimodal, Early=Early, Intermediate=Intermediate, MultiTask=MultiTask, Head=Head)


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def load_split(data: Path, split: str):
    import torch

    d = np.load(data / f"{split}.npz")
    return {k: torch.from_numpy(d[k]) for k in ("video", "audio", "label", "gender")}


def dropout_masks(n, gen, p=P_DROP):
    """Per-sample presence flags: video missing with p["video"], audio with p["audio"], never both."""
    import torch

    r = torch.rand(n, generator=gen)
    video = (r >= p["video"]).float()
    audio = ((r < p["video"]) | (r >= p["video"] + p["audio"])).float()
    return video[:, None], audio[:, None]


def forward(kind, model, batch, present=None, aux=False):
    """Run a model on a batch dict; present = (video_flag, audio_flag) tensors [N,1] or None (all there).
    aux=True (intermediate, multitask): also the per-modality auxiliary logits."""
    v, a = batch["video"], batch["audio"]
    if present is not None and kind in ("early", "multitask"):
        v = v * present[0][:, :, None, None]  # zero the missing modality's input, as the runtime does
        a = a * present[1][:, :, None, None]
    if kind == "video":
        return model(v)
    if kind == "audio":
        return model(a)
    if kind == "early":
        return model(v, a)
    if kind == "multitask":
        return model(v, a, aux=aux)
    import torch

    n = v.shape[0]
    pv, pa = present if present is not None else (torch.ones(n, 1), torch.ones(n, 1))
    return model(v, a, pv, pa, aux=aux)


def evaluate_torch(kind, model, data, present=None, batch=256):
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(data["label"]), batch):
            b = {k: t[i:i + batch] for k, t in data.items()}
            p = None if present is None else tuple(x[i:i + batch] for x in present)
            out = forward(kind, model, b, p)
            logits = out[0] if isinstance(out, tuple) else out
            correct += int((logits.argmax(1) == b["label"]).sum())
    return correct / len(data["label"])


def train(kind, model, train_data, val_data, epochs, seed, smoke=False, log=print):
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    n = len(train_data["label"])
    bs = 64
    steps = epochs * ((n + bs - 1) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=max(steps, 1), pct_start=0.2)
    fusion = kind in ("early", "intermediate", "multitask")
    best, best_state, history = -1.0, None, []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        total, seen = 0.0, 0
        for i in range(0, n, bs):
            idx = order[i:i + bs]
            b = {k: t[idx] for k, t in train_data.items()}
            present = dropout_masks(len(idx), gen) if fusion else None
            has_aux = kind in ("intermediate", "multitask")
            out = forward(kind, model, b, present, aux=has_aux)
            aux = None
            if has_aux:
                out, aux = out
            if kind == "multitask":
                digit, speaker = out
                # The speaker's voice is only knowable when the audio is there.
                w = present[1][:, 0]
                loss = F.cross_entropy(digit, b["label"]) + 0.5 * (
                    F.cross_entropy(speaker, b["gender"], reduction="none") * w).sum() / w.sum().clamp(min=1)
            else:
                loss = F.cross_entropy(out, b["label"])
            if aux is not None:
                for m, flag in zip(("video", "audio"), present):
                    w = flag[:, 0]
                    loss = loss + AUX_WEIGHT * (F.cross_entropy(aux[m], b["label"], reduction="none") * w).sum() \
                        / w.sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            if smoke and seen >= 4 * bs:
                break
        acc = evaluate_torch(kind, model, val_data)
        history.append({"epoch": epoch + 1, "loss": round(total / seen, 4), "val_accuracy": round(acc, 4)})
        log(f"  {kind:<12} epoch {epoch + 1:>2}/{epochs}  loss {total / seen:.4f}  val acc {acc:.4f}  "
            f"({time.perf_counter() - t0:.0f} s)")
        if acc >= best:
            best, best_state = acc, {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    return {"val_accuracy": round(best, 4), "epochs": epochs, "history": history,
            "train_seconds": round(time.perf_counter() - t0, 1)}


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def to_onnx(module, args, input_names, output_names):
    """A torch module -> onnx.ModelProto with a dynamic batch dim "N" on every input and output."""
    import io

    import onnx
    import torch

    buf = io.BytesIO()
    axes = {name: {0: "N"} for name in [*input_names, *output_names]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(module, args, buf, input_names=input_names, output_names=output_names,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)
    model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model)
    return model


def digit_output():
    return OutputSpec("digit", "classification", "float32", ["N", 10], list(av.LABELS), "logits")


def embedding_output():
    return OutputSpec("embedding", "embedding", "float32", ["N", EMB])


def count_params(module) -> int:
    """Parameters that ship (the training-only auxiliary heads excluded)."""
    return int(sum(p.numel() for n, p in module.named_parameters() if not n.startswith("aux.")))


def export(kind, model, out: Path, info: dict, data_meta: dict, force=True) -> Path:
    """Write the trained model as a bundle with a complete manifest; return its folder."""
    import torch

    n = 2
    video = torch.zeros(n, 1, *av.VIDEO_PRE.size)
    audio = torch.zeros(n, 1, av.AUDIO_PRE.n_mels, av.AUDIO_PRE.n_frames)
    provenance = {
        "precision": "fp32", "trained_by": "benchmarks/train_reference.py", "framework": f"torch {torch.__version__}",
        "data": {k: data_meta.get(k) for k in ("name", "seed", "counts")} | {"generator": "benchmarks/avdigits/generate.py"},
        "modality_dropout": P_DROP if kind in ("early", "intermediate", "multitask") else 0.0,
        **{k: v for k, v in info.items() if k != "history"},
        "parameters": count_params(model),
    }
    name = f"avdigits_{kind}"
    if kind in ("video", "audio"):
        spec = av.video_spec() if kind == "video" else av.audio_spec()
        graph = to_onnx(model, (video if kind == "video" else audio,), [kind], ["digit"])
        manifest = Manifest(name, {"model": GraphSpec("model", "model.onnx", [spec], [digit_output()])},
                            FusionSpec("early"), provenance)
        files = {"model.onnx": graph}
    elif kind == "early":
        graph = to_onnx(model, (video, audio), ["video", "audio"], ["digit"])
        manifest = Manifest(name, {"model": GraphSpec("model", "model.onnx", [av.video_spec(), av.audio_spec()],
                                                      [digit_output()])}, FusionSpec("early"), provenance)
        files = {"model.onnx": graph}
    elif kind == "multitask":
        graph = to_onnx(model, (video, audio), ["video", "audio"], ["digit", "speaker"])
        speaker = OutputSpec("speaker", "classification", "float32", ["N", 2], list(av.GENDERS), "logits")
        manifest = Manifest(name, {"model": GraphSpec("model", "model.onnx", [av.video_spec(), av.audio_spec()],
                                                      [digit_output(), speaker])}, FusionSpec("early"), provenance)
        files = {"model.onnx": graph}
    elif kind == "intermediate":
        emb, flag = torch.zeros(n, EMB), torch.ones(n, 1)
        files = {
            "video_encoder.onnx": to_onnx(model.video_encoder, (video,), ["video"], ["embedding"]),
            "audio_encoder.onnx": to_onnx(model.audio_encoder, (audio,), ["audio"], ["embedding"]),
            "head.onnx": to_onnx(model.head, (emb, emb, flag, flag),
                                 ["video_emb", "audio_emb", "video_present", "audio_present"], ["digit"]),
        }
        head_inputs = [
            InputSpec("video_emb", "embedding", "float32", ["N", EMB], source="video_encoder.embedding"),
            InputSpec("audio_emb", "embedding", "float32", ["N", EMB], source="audio_encoder.embedding"),
            InputSpec("video_present", "presence", "float32", ["N", 1], presence_of="video"),
            InputSpec("audio_present", "presence", "float32", ["N", 1], presence_of="audio"),
        ]
        graphs = {
            "video_encoder": GraphSpec("video_encoder", "video_encoder.onnx", [av.video_spec()], [embedding_output()]),
            "audio_encoder": GraphSpec("audio_encoder", "audio_encoder.onnx", [av.audio_spec()], [embedding_output()]),
            "head": GraphSpec("head", "head.onnx", head_inputs, [digit_output()]),
        }
        fusion = FusionSpec("intermediate", encoders={"video": "video_encoder", "audio": "audio_encoder"},
                            head="head", rates_hz=dict(RATES_HZ), max_age_s=1.0)
        manifest = Manifest(name, graphs, fusion, provenance)
    else:
        raise ValueError(kind)
    path = write_bundle(manifest, files, out / name, force=force)
    load_bundle(path)  # validated against the graphs (write_bundle does too; this is the public path)
    return path


def export_late(out: Path, video_bundle: Path, audio_bundle: Path, infos: dict, force=True) -> Path:
    """Late fusion: the two baselines as members; equal weights on their probabilities."""
    members = {}
    for mod, src in (("video", video_bundle), ("audio", audio_bundle)):
        b = load_bundle(src)
        g = b.manifest.graphs["model"]
        members[mod] = GraphSpec(mod, f"{mod}.onnx", g.inputs, g.outputs)
    provenance = {"precision": "fp32", "trained_by": "benchmarks/train_reference.py",
                  "members_from": {"video": "avdigits_video", "audio": "avdigits_audio"},
                  "member_val_accuracy": {m: infos[m]["val_accuracy"] for m in ("video", "audio")}}
    manifest = Manifest("avdigits_late", members,
                        FusionSpec("late", members={"video": "video", "audio": "audio"}, rule="weighted_mean",
                                   weights={"video": 1.0, "audio": 1.0}), provenance)
    files = {"video.onnx": video_bundle / "model.onnx", "audio.onnx": audio_bundle / "model.onnx"}
    return write_bundle(manifest, files, out / "avdigits_late", force=force)


def check_export(kind, model, bundle_path: Path, val) -> float:
    """Run the exported bundle through edgemm.fusion on validation data; its outputs must match torch."""
    import torch

    from edgemm.bundle import load_bundle
    from edgemm.fusion import FusionModel

    bundle = load_bundle(bundle_path)
    n = min(64, len(val["label"]))
    tensors = {"video": val["video"][:n].numpy(), "audio": val["audio"][:n].numpy()}
    with FusionModel(bundle) as fm:
        got = fm.infer(tensors).outputs["digit"]
    with torch.no_grad():
        ref = forward(kind, model, {k: t[:n] for k, t in val.items()})
        ref = (ref[0] if isinstance(ref, tuple) else ref).numpy()
    diff = float(np.max(np.abs(got - ref)))
    if diff > 1e-3:
        raise RuntimeError(f"{bundle_path}: ONNX output differs from torch by {diff:.2e}")
    return diff


def init_from_unimodal(kind, model, checkpoints: Path, log=print) -> list[str]:
    """Start a fusion model's encoders from the trained single-modality models (unimodal pre-training,
    then fusion fine-tuning): each encoder arrives knowing its sensor, so the head learns to weigh
    evidence instead of one sensor learning to ignore the other. Early fusion takes the stems only."""
    import torch

    done = []
    for mod in ("video", "audio"):
        ckpt = checkpoints / f"{mod}.pt"
        if not ckpt.exists():
            log(f"  note: {ckpt} not found; {kind}'s {mod} side starts from scratch (train {mod} first)")
            continue
        state = torch.load(ckpt, map_location="cpu")
        enc = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        if kind == "early":
            stem = getattr(model, f"{mod}_stem")
            stem.load_state_dict({k[len("stem."):]: v for k, v in enc.items() if k.startswith("stem.")})
        else:
            getattr(model, f"{mod}_encoder").load_state_dict(enc)
        done.append(mod)
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / "build" / "avdigits"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "models"))
    p.add_argument("--checkpoints", default=str(ROOT / "build" / "avdigits_checkpoints"),
                   help="PyTorch weights of every trained model (not committed); fusion models start from the "
                        "video and audio ones")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", help="comma-separated subset of: video,audio,early,intermediate,multitask (fusion models "
                                  "start from the video and audio checkpoints; late fusion is rebuilt from the "
                                  "video and audio bundles in --out)")
    p.add_argument("--smoke", action="store_true", help="a few batches per model (tests)")
    p.add_argument("--no-ship", action="store_true", help="do not copy the demo's models into edgemm/reference/models")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    data, out, checkpoints = Path(args.data), Path(args.out), Path(args.checkpoints)
    checkpoints.mkdir(parents=True, exist_ok=True)
    meta = json.loads((data / "meta.json").read_text())
    train_data, val_data = load_split(data, "train"), load_split(data, "val")
    kinds = ["video", "audio", "early", "intermediate", "multitask"]
    if args.only:
        kinds = [k for k in args.only.split(",") if k in kinds]
    classes = build_models()
    log_path = out / "avdigits_training.json"
    infos = json.loads(log_path.read_text())["models"] if log_path.exists() and not args.smoke else {}
    paths = {}
    t_all = time.perf_counter()
    for kind in kinds:
        i = ["video", "audio", "early", "intermediate", "multitask"].index(kind)
        torch.manual_seed(args.seed + i)
        model = {"video": lambda: classes["Unimodal"]("video"), "audio": lambda: classes["Unimodal"]("audio"),
                 "early": classes["Early"], "intermediate": classes["Intermediate"],
                 "multitask": classes["MultiTask"]}[kind]()
        init = init_from_unimodal(kind, model, checkpoints) if kind not in ("video", "audio") else []
        print(f"{kind}: {count_params(model)} parameters" + (f"; {' and '.join(init)} from the unimodal models"
                                                              if init else ""))
        infos[kind] = train(kind, model, train_data, val_data, 1 if args.smoke else args.epochs, args.seed + i,
                            smoke=args.smoke)
        infos[kind]["initialised_from"] = init
        torch.save(model.state_dict(), checkpoints / f"{kind}.pt")
        paths[kind] = export(kind, model, out, infos[kind], meta)
        diff = check_export(kind, model, paths[kind], val_data)
        print(f"  -> {paths[kind]}  (val acc {infos[kind]['val_accuracy']:.4f}; ONNX vs torch max diff {diff:.1e})")
    if (out / "avdigits_video").exists() and (out / "avdigits_audio").exists() and "video" in infos and "audio" in infos:
        paths["late"] = export_late(out, out / "avdigits_video", out / "avdigits_audio", infos)
        print(f"late: -> {paths['late']}")
    log_path.write_text(json.dumps({"seed": args.seed, "epochs": args.epochs, "smoke": args.smoke,
                                    "modality_dropout": P_DROP, "aux_weight": AUX_WEIGHT,
                                    "seconds_last_run": round(time.perf_counter() - t_all, 1),
                                    "models": infos}, indent=1) + "\n")
    if (data / "fingerprint.npz").exists() and not args.smoke:
        # Raw sensor data and the features the models were trained on: tests/test_reference.py checks
        # that edgemm.preprocess still makes these numbers.
        shutil.copyfile(data / "fingerprint.npz", out / "avdigits_fingerprint.npz")
    if not args.no_ship and not args.smoke:
        for name in SHIP:
            src = out / name
            if src.exists():
                dest = ROOT / "edgemm" / "reference" / "models" / name
                shutil.rmtree(dest, ignore_errors=True)
                shutil.copytree(src, dest)
                print(f"shipped {name} -> {dest}")
    print(f"done in {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
