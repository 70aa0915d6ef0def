#!/usr/bin/env python3
"""Generate the offline driving set: forward-camera frames with boxes and time-aligned microphone audio.

Every scene is a seed (edgemm/reference/driving.py draws its layout and renders any instant of it under
any condition). Splits share no scene seed: train seeds from 0, validation from 100000, test from 200000.

  train.npz   detector frames [N,192,192,3] uint8 BGR (random instants of the training scenes, each in a
              random condition: day/dusk/night/rain/fog), their boxes (box_xyxy, box_class, box_image), and
              1 s audio windows every 0.5 s as log-mel features [M,1,40,98] with labels (none/siren/horn)
              and the siren's SNR (30 % of the scenes with masking noise, 20 % with rain)
  val.npz     the same for the validation scenes
  meta.json   seeds of every split (the test scenes are rendered by the evaluation in every condition)

Usage:  python benchmarks/driving/generate.py [--out build/driving] [--scenes 500] [--small]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from edgemm.preprocess import preprocess_audio  # noqa: E402
from edgemm.reference import driving as dr  # noqa: E402

SPLIT_BASE = {"train": 0, "val": 100000, "test": 200000}
FRAMES_PER_SCENE = 8  # training/validation frames drawn per scene (instant and condition at random)
AUDIO_STEP_S = 0.5


def split_seeds(split: str, n: int) -> list[int]:
    return [SPLIT_BASE[split] + i for i in range(n)]


def make_split(seeds: list[int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    frames, boxes, classes, owner, conds = [], [], [], [], []
    feats, labels, snrs, win_scene = [], [], [], []
    spec = dr.audio_spec()
    for seed in seeds:
        sc = dr.make_scene(seed)
        has_ev = any(th.cls == dr.EMERGENCY for th in sc.things)
        for k in range(FRAMES_PER_SCENE):
            cond = dr.CONDITIONS[int(rng.integers(len(dr.CONDITIONS)))]
            # emergency vehicles come into view late: half of their scene's frames from its last 40 %
            lo = 0.6 * sc.duration if has_ev and k % 2 else 0.0
            f, b, c = dr.render_frame(sc, float(rng.uniform(lo, sc.duration)), cond)
            owner += [len(frames)] * len(b)
            frames.append(f)
            boxes.append(b)
            classes.append(c)
            conds.append(cond)
        parts = dr.render_audio(sc, masked=bool(rng.random() < 0.3), rain=bool(rng.random() < 0.2))
        for t in np.arange(1.0, sc.duration + 1e-6, AUDIO_STEP_S):
            a, b = int((t - 1.0) * dr.SAMPLE_RATE), int(t * dr.SAMPLE_RATE)
            feats.append(preprocess_audio(parts["mix"][a:b], spec))
            label, snr = dr.window_truth(parts, float(t))
            labels.append(label)
            snrs.append(snr)
            win_scene.append(seed)
    return {"frames": np.stack(frames), "box_xyxy": np.concatenate(boxes).reshape(-1, 4).astype(np.float32),
            "box_class": np.concatenate(classes).astype(np.int64), "box_image": np.array(owner, np.int64),
            "condition": np.array(conds), "audio": np.concatenate(feats), "audio_label": np.array(labels, np.int64),
            "audio_snr_db": np.array(snrs, np.float32), "audio_scene": np.array(win_scene, np.int64)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "build" / "driving"))
    p.add_argument("--scenes", type=int, default=500, help="training scenes (validation: a fifth, test: 60)")
    p.add_argument("--test-scenes", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--small", action="store_true", help="a tiny set (tests)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    n_train = 12 if args.small else args.scenes
    counts = {"train": n_train, "val": max(4, n_train // 5), "test": 6 if args.small else args.test_scenes}
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    stats = {}
    for split in ("train", "val"):
        arrays = make_split(split_seeds(split, counts[split]), rng)
        np.savez(tmp / f"{split}.npz", **arrays)
        stats[split] = {"scenes": counts[split], "frames": int(len(arrays["frames"])),
                        "boxes": {c: int(np.sum(arrays["box_class"] == i)) for i, c in enumerate(dr.CLASSES)},
                        "audio_windows": {c: int(np.sum(arrays["audio_label"] == i))
                                          for i, c in enumerate(dr.AUDIO_LABELS)}}
    meta = {"name": "driving", "seed": args.seed, "small": args.small, "classes": dr.CLASSES,
            "audio_labels": dr.AUDIO_LABELS, "conditions": list(dr.CONDITIONS), "frame_size": dr.SIZE,
            "seeds": {s: split_seeds(s, counts[s]) for s in ("train", "val", "test")}, "stats": stats,
            "video": {"input": dr.VIDEO_PRE.__dict__}, "audio": {"input": dr.AUDIO_PRE.__dict__},
            "seconds": round(time.perf_counter() - t0, 1)}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    print(f"driving: {json.dumps(stats)} -> {out} ({meta['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
