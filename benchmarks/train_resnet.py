"""Train the ResNet-class reference CNN for the converter benchmarks, on data generated from shipped data.

Data: scikit-learn's ``load_digits`` (1797 real handwritten 8x8 digits, no download) rendered as 64x64
camera-like BGR frames: random scale, rotation, position, foreground/background colours and sensor
noise. Frames go through ``edgemm.preprocess.preprocess_video`` with the manifest's own preprocessing,
the one implementation the device uses too. The digits are split once (fixed seed) into
train / calibration (validation) / test, so no test digit is ever seen in training or calibration.

Model: a small ResNet (stem conv stride 2, three stages of basic residual blocks with BatchNorm,
32-64-128 channels, global average pool, linear classifier), 0.38 M parameters, 68 M MACs at 64x64.
The ONNX graph is written with onnx.helper from the trained weights (Conv + BatchNormalization kept
separate, as exporters emit them, so converters see the real thing) and checked against PyTorch.

Writes (paths are stable; other benchmarks and helpers use them):
  benchmarks/models/resnet_digits/         bundle: manifest.json (labels, preprocessing) + model.onnx
  benchmarks/data/resnet_digits/calib/     validation split, .npz (keys: image, label), 50 samples a file
  benchmarks/data/resnet_digits/test/      test split, two renderings of every test digit
The data folders are regenerated bit-for-bit by ``--data-only`` (no torch needed), so they need not be
committed. Run:  python benchmarks/train_resnet.py   (2-15 minutes on 2 CPU cores, depending on their load;
24 epochs reach 98.6 % on the 900 test frames)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgemm.bundle import manifest_from_dict  # noqa: E402
from edgemm.errors import EdgemmError  # noqa: E402
from edgemm.lazy import import_optional  # noqa: E402
from edgemm.preprocess import preprocess_video  # noqa: E402

MODEL_DIR = ROOT / "benchmarks" / "models" / "resnet_digits"
DATA_DIR = ROOT / "benchmarks" / "data" / "resnet_digits"
SIZE = 64
CHANNELS = (32, 64, 128)
BLOCKS = (1, 2, 1)  # basic blocks per stage
SEED = 20240611
SPLIT = {"calib": 250, "test": 450}  # digits; the rest (1097) train
TEST_RENDERINGS = 2
PER_FILE = 50
BATCH = 32
EPOCHS = 24
INPUT, OUTPUT = "image", "logits"


def manifest_dict() -> dict:
    return {
        "format": "edgemm-bundle", "version": 1, "name": "resnet_digits",
        "fusion": {"form": "early"},
        "graphs": {"model": {
            "file": "model.onnx",
            "inputs": [{"name": INPUT, "modality": "video", "dtype": "float32", "shape": ["N", 3, SIZE, SIZE],
                        "layout": "NCHW",
                        "preprocess": {"size": [SIZE, SIZE], "color": "rgb", "scale": 1 / 255,
                                       "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}],
            "outputs": [{"name": OUTPUT, "task": "classification", "shape": ["N", 10],
                         "labels": [str(i) for i in range(10)], "scores": "logits"}],
        }},
        "provenance": {"precision": "fp32"},
    }


# --------------------------------------------------------------------------------------------------
# Data: real handwritten digits rendered as camera frames
# --------------------------------------------------------------------------------------------------


def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One 8x8 digit (0..16) -> a 64x64 BGR uint8 frame with random pose, colours and noise."""
    import cv2

    glyph = cv2.resize((digit / 16.0).astype(np.float32), (32, 32), interpolation=cv2.INTER_CUBIC)
    glyph = np.clip(glyph, 0, 1)
    scale = rng.uniform(0.7, 1.05)
    angle = rng.uniform(-18, 18)
    cx, cy = SIZE / 2 + rng.uniform(-9, 9), SIZE / 2 + rng.uniform(-9, 9)
    m = cv2.getRotationMatrix2D((16, 16), angle, scale)
    m[:, 2] += (cx - 16, cy - 16)
    alpha = cv2.warpAffine(glyph, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderValue=0)[:, :, None]
    # Light ink on a darker background (as an IR-lit cabin camera sees a card or a display), with a
    # random brightness, contrast and colour tint per frame.
    fg = rng.uniform(150, 240) + rng.uniform(-20, 20, 3)
    bg = rng.uniform(10, 100) + rng.uniform(-20, 20, 3)
    # A soft illumination gradient across the frame, as a cabin camera sees.
    grad = np.linspace(-1, 1, SIZE)[None, :, None] * rng.uniform(-25, 25)
    img = bg * (1 - alpha) + fg * alpha + grad + rng.normal(0, 6, (SIZE, SIZE, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    # scikit-learn ships the digits (no download) but is not in the README's `.[demo]` install: said in one line.
    datasets = import_optional("sklearn.datasets", "the digits come from scikit-learn: pip install -e '.[convert]'")
    digits = datasets.load_digits()
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(digits.target))
    n_cal, n_test = SPLIT["calib"], SPLIT["test"]
    parts = {"calib": order[:n_cal], "test": order[n_cal:n_cal + n_test], "train": order[n_cal + n_test:]}
    return {k: (digits.images[idx], digits.target[idx]) for k, idx in parts.items()}


def to_tensors(frames: list[np.ndarray], spec) -> np.ndarray:
    return np.concatenate([preprocess_video(f, spec) for f in frames], axis=0)


def write_data(spec) -> dict[str, int]:
    """Render the calibration and test splits into .npz folders (deterministic)."""
    parts = splits()
    counts = {}
    for name, renderings in (("calib", 1), ("test", TEST_RENDERINGS)):
        images, labels = parts[name]
        rng = np.random.default_rng(SEED + (1 if name == "calib" else 2))
        frames, ys = [], []
        for r in range(renderings):
            for img, y in zip(images, labels):
                frames.append(render(img, rng))
                ys.append(int(y))
        folder = DATA_DIR / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for i in range(0, len(frames), PER_FILE):
            x = to_tensors(frames[i:i + PER_FILE], spec)
            np.savez(folder / f"{name}_{i // PER_FILE:03d}.npz", **{INPUT: x, "label": np.array(ys[i:i + PER_FILE], np.int64)})
        counts[name] = len(frames)
    return counts


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


def build_torch_model():
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return self.relu(y + (self.down(x) if self.down is not None else x))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            c0 = CHANNELS[0]
            self.stem = nn.Sequential(nn.Conv2d(3, c0, 3, 2, 1, bias=False), nn.BatchNorm2d(c0), nn.ReLU())
            blocks, cin = [], c0
            for i, (c, n) in enumerate(zip(CHANNELS, BLOCKS)):
                for j in range(n):
                    blocks.append(Block(cin, c, 2 if (j == 0 and i > 0) else 1))
                    cin = c
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(cin, 10)

        def forward(self, x):
            x = self.blocks(self.stem(x))
            return self.fc(x.mean(dim=(2, 3)))

    return ResNet()


def to_onnx(net):
    """The trained network as an ONNX graph written node by node (Conv, BatchNormalization, Relu, Add...)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def param(name, t):
        inits.append(numpy_helper.from_array(t.detach().cpu().numpy().astype(np.float32), name))
        return name

    def conv_bn(x, conv, bn, prefix, relu):
        w = param(f"{prefix}.conv.weight", conv.weight)
        y = f"{prefix}.conv"
        k = conv.kernel_size[0]
        nodes.append(helper.make_node("Conv", [x, w], [y], name=f"{prefix}/Conv", kernel_shape=[k, k],
                                      strides=list(conv.stride), pads=[conv.padding[0]] * 4))
        ins = [y] + [param(f"{prefix}.bn.{n}", getattr(bn, a)) for n, a in
                     (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"), ("var", "running_var"))]
        z = f"{prefix}.bn"
        nodes.append(helper.make_node("BatchNormalization", ins, [z], name=f"{prefix}/BatchNormalization",
                                      epsilon=bn.eps))
        if relu:
            nodes.append(helper.make_node("Relu", [z], [f"{prefix}.relu"], name=f"{prefix}/Relu"))
            return f"{prefix}.relu"
        return z

    x = conv_bn(INPUT, net.stem[0], net.stem[1], "stem", True)
    for i, b in enumerate(net.blocks):
        p = f"block{i}"
        y = conv_bn(x, b.conv1, b.bn1, f"{p}.1", True)
        y = conv_bn(y, b.conv2, b.bn2, f"{p}.2", False)
        short = conv_bn(x, b.down[0], b.down[1], f"{p}.down", False) if b.down is not None else x
        nodes.append(helper.make_node("Add", [y, short], [f"{p}.add"], name=f"{p}/Add"))
        nodes.append(helper.make_node("Relu", [f"{p}.add"], [f"{p}.out"], name=f"{p}/Relu"))
        x = f"{p}.out"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="head/GlobalAveragePool"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="head/Flatten", axis=1))
    nodes.append(helper.make_node("Gemm", ["flat", param("fc.weight", net.fc.weight), param("fc.bias", net.fc.bias)],
                                  [OUTPUT], name="head/Gemm", transB=1))
    graph = helper.make_graph(nodes, "resnet_digits",
                              [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgemm-train")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def load_split(name: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for f in sorted((DATA_DIR / name).glob("*.npz")):
        with np.load(f) as d:
            xs.append(d[INPUT])
            ys.append(d["label"])
    return np.concatenate(xs), np.concatenate(ys)


def train(spec, epochs: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(SEED)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(SEED + 3)
    images, labels = splits()["train"]
    net = build_torch_model()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    steps_per_epoch = int(np.ceil(len(labels) / BATCH))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * steps_per_epoch)
    cal_x, cal_y = load_split("calib")
    start = time.monotonic()
    for epoch in range(epochs):
        # Fresh renderings every epoch: the augmentation (pose, colour, noise) is the renderer itself.
        x = torch.from_numpy(to_tensors([render(im, rng) for im in images], spec))
        y = torch.from_numpy(labels.astype(np.int64))
        net.train()
        perm = torch.randperm(len(y))
        total = 0.0
        for i in range(0, len(y), BATCH):
            idx = perm[i:i + BATCH]
            loss = F.cross_entropy(net(x[idx]), y[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        net.eval()
        with torch.no_grad():
            acc = float((net(torch.from_numpy(cal_x)).argmax(1).numpy() == cal_y).mean())
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(y):.3f}, calib accuracy {100 * acc:.2f} %, "
              f"{time.monotonic() - start:.0f} s", flush=True)
    return {"net": net, "train_s": time.monotonic() - start, "calib_accuracy": acc}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-only", action="store_true", help="only (re)generate the calib/test folders")
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    manifest = manifest_from_dict(manifest_dict())
    spec = manifest.graphs["model"].inputs[0]
    try:
        counts = write_data(spec)
    except EdgemmError as exc:
        print(f"train_resnet: error: {exc}", file=sys.stderr)
        return 1
    print(f"data: {counts} samples -> {DATA_DIR}")
    if args.data_only:
        return 0

    import onnx
    import onnxruntime as ort
    import torch

    result = train(spec, args.epochs, args.threads)
    net = result["net"].eval()
    model = to_onnx(net)
    test_x, test_y = load_split("test")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = np.concatenate([sess.run(None, {INPUT: test_x[i:i + 100]})[0] for i in range(0, len(test_y), 100)])
    with torch.no_grad():
        ref = net(torch.from_numpy(test_x[:100])).numpy()
    diff = float(np.abs(ref - logits[:100]).max())
    assert diff < 1e-3, f"ONNX graph disagrees with PyTorch (max abs diff {diff})"
    test_acc = float((logits.argmax(1) == test_y).mean())
    print(f"test accuracy (ONNX Runtime, {len(test_y)} samples): {100 * test_acc:.2f} %; ONNX vs PyTorch max abs diff {diff:.2e}")

    md = manifest_dict()
    md["provenance"].update({
        "trained_by": "benchmarks/train_resnet.py", "seed": SEED, "epochs": args.epochs,
        "data": "sklearn load_digits rendered as 64x64 frames", "train_samples": int(len(splits()["train"][1])),
        "calib_accuracy": round(100 * result["calib_accuracy"], 2), "test_accuracy": round(100 * test_acc, 2),
        "test_samples": int(len(test_y)),
    })
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(MODEL_DIR / "model.onnx"))
    (MODEL_DIR / "manifest.json").write_text(json.dumps(md, indent=2) + "\n")
    print(f"bundle -> {MODEL_DIR} ({(MODEL_DIR / 'model.onnx').stat().st_size / 1e6:.2f} MB), "
          f"trained in {result['train_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
