#!/usr/bin/env python3
"""Generate AV-digits, an offline AV-MNIST-style data set framed as in-cabin voice + gesture commands.

Video: the 1797 real handwritten digits of scikit-learn's ``load_digits`` (8x8), each drawn on a card
held up to a cabin camera (96x96 frames: random placement, rotation, size, background, uneven light,
sensor noise; see edgemm/reference/avdigits.py). Audio: the digit's word spoken by espeak-ng over
104 synthetic speakers (8 English accents x 13 voice variants, female f1-f5 and male m1-m7/default),
at random speeds and pitches, resampled to 16 kHz, placed at a random point of a 1 s window over
cabin noise.

Honest splits:
  * images: contiguous blocks of the original order, 70/15/15 (sklearn has no writer ids, so a
    writer may appear in two splits; no image does).
  * speakers: 70/15/15 at random per gender; no test speaker is ever heard in training.
  * backgrounds: training crops come from china.jpg, validation/test crops from flower.jpg (plus
    procedural cabin scenes everywhere).

Corruptions (the reason fusion is worth having):
  training: each pair independently gets, with p=0.3, a video corruption (hand over the lens or
  low light at a random severity) and, with p=0.3, an audio corruption (road noise at a random SNR
  in [-18, 3] dB, or a silent occupant: cabin noise only). Modality dropout (a sensor missing
  altogether) is applied by the training recipe, not here.
  test: every pair is stored clean and with each corruption at a fixed severity, so every model is
  scored on the same underlying samples in every condition.

Output (default build/avdigits, a few hundred MB at most; nothing here is committed):
  train.npz, val.npz   video [N,1,32,32], audio [N,1,40,98] float32 model inputs (edgemm.preprocess),
                       label, gender, speaker, image, and the corruption applied
  test.npz             video_<clean|occluded|lowlight>, audio_<clean|noisy|silent>, label, gender, ...
  eval/<condition>/    the test split in `edgemm eval` / `edgemm convert --calib` folder format
  calib/               512 clean training pairs in that format, for INT8 calibration
  fingerprint.npz      raw frames and audio of a few test pairs with their features (see the tests)
  meta.json            everything needed to reproduce and describe the set
With --demo-material PATH it also writes the small raw test material edgemm demo renders its clip from.

Usage:  python benchmarks/avdigits/generate.py [--out build/avdigits] [--seed 0] [--small]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from edgemm.media import read_wav  # noqa: E402
from edgemm.preprocess import preprocess_audio, preprocess_video, resample  # noqa: E402
from edgemm.reference import avdigits as av  # noqa: E402

ACCENTS = ["en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd"]
VARIANTS = {"": "male", "m1": "male", "m2": "male", "m3": "male", "m4": "male", "m5": "male", "m6": "male",
            "m7": "male", "f1": "female", "f2": "female", "f3": "female", "f4": "female", "f5": "female"}
SPLITS = ("train", "val", "test")
PAIRS_PER_IMAGE = {"train": 3, "val": 2, "test": 3}
RENDITIONS = 2  # recordings per (speaker, digit), each at its own speed and pitch

# Fixed test severities (training draws from wider ranges around them); one definition in avdigits.py.
TEST_OCCLUSION, TEST_LOW_LIGHT, TEST_SNR_DB = av.TEST_OCCLUSION, av.TEST_LOW_LIGHT, av.TEST_SNR_DB
CLEAN_SNR_DB = (15.0, 35.0)  # a quiet cabin still has some noise


def speakers() -> list[dict]:
    out = []
    for accent in ACCENTS:
        for variant, gender in VARIANTS.items():
            voice = f"{accent}+{variant}" if variant else accent
            out.append({"voice": voice, "gender": gender})
    return out


def split_speakers(spk: list[dict], rng: np.random.Generator) -> None:
    """Assign speakers to splits 70/15/15, separately per gender so every split has both."""
    for gender in av.GENDERS:
        idx = [i for i, s in enumerate(spk) if s["gender"] == gender]
        idx = list(rng.permutation(idx))
        n = len(idx)
        n_val, n_test = max(1, round(0.15 * n)), max(1, round(0.15 * n))
        for j, i in enumerate(idx):
            spk[i]["split"] = "test" if j < n_test else "val" if j < n_test + n_val else "train"


def synthesise(jobs: list[dict], workers: int) -> list[np.ndarray]:
    """espeak-ng each job (voice, word, speed, pitch) -> trimmed float32 word at 16 kHz."""
    tmp = Path(tempfile.mkdtemp(prefix="avdigits-tts-"))

    def one(i_job):
        i, job = i_job
        path = tmp / f"{i}.wav"
        cmd = ["espeak-ng", "-v", job["voice"], "-s", str(job["speed"]), "-p", str(job["pitch"]), "-w", str(path),
               av.WORDS[job["digit"]]]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        x, sr = read_wav(path)
        path.unlink()
        x = resample(x, sr, av.SAMPLE_RATE)
        x = av.trim_silence(x)[: av.SAMPLE_RATE - 800]  # at most 0.95 s, so a word fits one window
        return x / (np.max(np.abs(x)) + 1e-9)

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, enumerate(jobs)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_photos() -> dict[str, np.ndarray]:
    import cv2
    import sklearn

    folder = Path(sklearn.__file__).parent / "datasets" / "images"
    return {name: cv2.imread(str(folder / f"{name}.jpg"), cv2.IMREAD_COLOR) for name in ("china", "flower")}


def background(rng, photo):
    return av.cabin_background(rng) if rng.random() < 0.5 else av.photo_background(photo, rng)


def audio_window(word: np.ndarray, rng: np.random.Generator, snr_db: float | None, silent: bool = False) -> np.ndarray:
    """One 1 s microphone window: the word at a random offset over cabin noise at snr_db."""
    n = av.AUDIO_PRE.window_samples
    level = rng.uniform(0.1, 0.6)  # how loud the occupant speaks / how far from the microphone
    word = word * level
    offset = int(rng.integers(0, max(1, n - len(word))))
    speech = av.place_word(word, n, offset)
    noise = av.cabin_noise(n, rng)
    snr = rng.uniform(*CLEAN_SNR_DB) if snr_db is None else snr_db
    mixed = av.mix_at_snr(speech, noise, snr, speech_rms=av.rms(word))
    if silent:  # the occupant only gestured: the microphone hears the cabin, at the same noise level
        mixed = mixed - speech
    return av.limit(mixed)


def video_features(frames: list[np.ndarray]) -> np.ndarray:
    """Camera frames -> the model's video input, by the runtime's own preprocessing."""
    spec = av.video_spec()
    return np.concatenate([preprocess_video(f, spec) for f in frames])


def audio_features(windows: list[np.ndarray]) -> np.ndarray:
    """Microphone windows -> the model's audio input (log-mel), by the runtime's own preprocessing."""
    spec = av.audio_spec()
    return np.concatenate([preprocess_audio(w, spec) for w in windows])


def make_split(split, images, targets, image_ids, clips, rng, photo, small):
    """Pairs for one split; training pairs carry random corruptions, test pairs every fixed one."""
    by_digit = {d: [c for c in clips if c["digit"] == d] for d in range(10)}
    rows = []
    for img, digit, image_id in zip(images, targets, image_ids):
        for _ in range(PAIRS_PER_IMAGE[split] if not small else 1):
            rows.append((img, int(digit), int(image_id), by_digit[int(digit)][rng.integers(len(by_digit[int(digit)]))]))
    out: dict[str, list] = {k: [] for k in ("label", "gender", "speaker", "image", "video_corruption", "audio_corruption")}
    frames: dict[str, list] = {}
    windows: dict[str, list] = {}
    for img, digit, image_id, clip in rows:
        frame = av.render_frame(img, rng, background(rng, photo))
        out["label"].append(digit)
        out["gender"].append(av.GENDERS.index(clip["gender"]))
        out["speaker"].append(clip["speaker"])
        out["image"].append(image_id)
        if split == "test":
            frames.setdefault("clean", []).append(frame)
            frames.setdefault("occluded", []).append(av.occlude(frame, rng, TEST_OCCLUSION))
            frames.setdefault("lowlight", []).append(av.low_light(frame, rng, **TEST_LOW_LIGHT))
            state = rng.bit_generator.state  # the same offset and noise for the three audio conditions
            windows.setdefault("clean", []).append(audio_window(clip["wave"], rng, None))
            rng.bit_generator.state = state
            windows.setdefault("noisy", []).append(audio_window(clip["wave"], rng, TEST_SNR_DB))
            rng.bit_generator.state = state
            windows.setdefault("silent", []).append(audio_window(clip["wave"], rng, None, silent=True))
            out["video_corruption"].append("")
            out["audio_corruption"].append("")
            continue
        vc = ac = ""
        if split == "train" and rng.random() < 0.3:
            if rng.random() < 0.5:
                vc, frame = "occluded", av.occlude(frame, rng, rng.uniform(0.4, 0.9))
            else:
                vc, frame = "lowlight", av.low_light(frame, rng, gain=rng.uniform(0.1, 0.35), noise=rng.uniform(10, 35))
        snr, silent = None, False
        if split == "train" and rng.random() < 0.3:
            if rng.random() < 0.75:
                ac, snr = "noisy", rng.uniform(-18.0, 3.0)
            else:
                ac, silent = "silent", True
        frames.setdefault("clean", []).append(frame)
        windows.setdefault("clean", []).append(audio_window(clip["wave"], rng, snr, silent))
        out["video_corruption"].append(vc)
        out["audio_corruption"].append(ac)
    arrays = {k: np.asarray(v) for k, v in out.items()}
    for k in ("label", "gender", "speaker", "image"):
        arrays[k] = arrays[k].astype(np.int64)
    if split == "test":
        for cond in frames:
            arrays[f"video_{cond}"] = video_features(frames[cond])
        for cond in windows:
            arrays[f"audio_{cond}"] = audio_features(windows[cond])
        # Raw sensor data of two test pairs and the features made from them: the training recipe keeps
        # this next to the models, and a test checks that today's edgemm.preprocess still makes the
        # same numbers from it (a changed transform means the models must be retrained).
        arrays["_fingerprint"] = {"frames": np.stack(frames["clean"][:1] + frames["lowlight"][:1]),
                                  "windows": np.stack(windows["noisy"][:1]),
                                  "video": np.concatenate([arrays["video_clean"][:1], arrays["video_lowlight"][:1]]),
                                  "audio": arrays["audio_noisy"][:1]}
    else:
        arrays["video"], arrays["audio"] = video_features(frames["clean"]), audio_features(windows["clean"])
    return arrays, frames, windows


TEST_CONDITIONS = {  # eval folder -> (video variant, audio variant)
    "clean": ("clean", "clean"),
    "video_occluded": ("occluded", "clean"),
    "video_lowlight": ("lowlight", "clean"),
    "audio_noisy": ("clean", "noisy"),
    "audio_silent": ("clean", "silent"),
    "both_degraded": ("lowlight", "noisy"),
}


def write_folder(folder: Path, video: np.ndarray, audio: np.ndarray, label: np.ndarray, gender: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "data.npz", video=video, audio=audio, label=label, **{"label:speaker": gender})


def _pick_material(images, targets, image_ids, clips, rng, per_digit):
    """per_digit images and per_digit recordings of every digit (different speakers where possible)."""
    out = {"images": [], "digits": [], "image_ids": [], "words": [], "voices": [], "genders": []}
    for d in range(10):
        idx = [i for i, t in enumerate(targets) if t == d]
        for i in rng.choice(idx, size=per_digit, replace=len(idx) < per_digit):  # (tiny --small sets repeat)
            out["images"].append(np.round(images[i]).astype(np.uint8))
            out["image_ids"].append(int(image_ids[i]))
            out["digits"].append(d)
        pool = [c for c in clips if c["digit"] == d]
        for j in rng.choice(len(pool), size=per_digit, replace=len(pool) < per_digit):
            out["words"].append(pool[j]["wave"])
            out["voices"].append(pool[j]["voice"])
            out["genders"].append(pool[j]["gender"])
    return out


def write_demo_material(path: Path, test: tuple, val: tuple, rng) -> None:
    """Raw material edgemm demo renders from, so it needs neither scikit-learn nor espeak-ng:
    the clip from test images and test speakers (2 per digit); INT8 calibration samples from the
    validation split (2 images and 1 recording per digit), never from the clip's own material."""
    arrays = {}
    for prefix, (images, targets, ids, clips), per_digit in (("", test, 2), ("calib_", val, 2)):
        m = _pick_material(images, targets, ids, clips, rng, per_digit)
        if prefix:  # one recording per digit is enough for calibration ranges
            m["words"], m["voices"], m["genders"] = m["words"][::2], m["voices"][::2], m["genders"][::2]
        packed = np.concatenate(m["words"])
        arrays.update({
            f"{prefix}images": np.stack(m["images"]), f"{prefix}digits": np.array(m["digits"]),
            f"{prefix}image_ids": np.array(m["image_ids"]),
            f"{prefix}words": (np.clip(packed, -1, 1) * 32767).astype(np.int16),
            f"{prefix}word_lengths": np.array([len(w) for w in m["words"]]),
            f"{prefix}word_digits": np.repeat(np.arange(10), len(m["words"]) // 10),
            f"{prefix}voices": np.array(m["voices"]), f"{prefix}genders": np.array(m["genders"]),
        })
    arrays["sample_rate"] = np.array(av.SAMPLE_RATE)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "build" / "avdigits"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--small", action="store_true", help="a tiny set (tests): few speakers and images, 1 pair each")
    p.add_argument("--workers", type=int, default=2, help="parallel espeak-ng processes")
    p.add_argument("--demo-material", metavar="PATH", help="also write the raw demo material (npz) here")
    args = p.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("generate: espeak-ng is not installed (apt-get install espeak-ng)", file=sys.stderr)
        return 1
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        print("generate: scikit-learn is not installed (the digits come from it): pip install -e '.[convert]'",
              file=sys.stderr)
        return 1

    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    digits = load_digits()
    images, targets = digits.images, digits.target
    n = len(images)
    bounds = {"train": (0, int(0.7 * n)), "val": (int(0.7 * n), int(0.85 * n)), "test": (int(0.85 * n), n)}

    spk = speakers()
    split_speakers(spk, rng)
    if args.small:  # two speakers of each gender per split keep the test quick
        keep = []
        for split in SPLITS:
            for g in av.GENDERS:
                keep += [s for s in spk if s["split"] == split and s["gender"] == g][:1]
        spk = keep
    for i, s in enumerate(spk):
        s["id"] = i

    jobs = []
    for s in spk:
        for d in range(10):
            for _ in range(RENDITIONS if not args.small else 1):
                jobs.append({"voice": s["voice"], "gender": s["gender"], "speaker": s["id"], "split": s["split"],
                             "digit": d, "speed": int(rng.integers(115, 190)), "pitch": int(rng.integers(25, 75))})
    waves = synthesise(jobs, args.workers)
    for job, w in zip(jobs, waves):
        job["wave"] = w
    t_tts = time.perf_counter() - t0
    photos = load_photos()

    tmp_out = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp_out, ignore_errors=True)
    tmp_out.mkdir(parents=True)
    counts = {}
    test_arrays = None
    material = {}
    for split in SPLITS:
        lo, hi = bounds[split]
        ids = np.arange(lo, hi)
        if args.small:
            ids = ids[:30]
        clips = [j for j in jobs if j["split"] == split]
        photo = photos["china" if split == "train" else "flower"]
        arrays, _, _ = make_split(split, images[ids], targets[ids], ids, clips, rng, photo, args.small)
        fingerprint = arrays.pop("_fingerprint", None)
        if fingerprint is not None:
            np.savez_compressed(tmp_out / "fingerprint.npz", **fingerprint)
        np.savez(tmp_out / f"{split}.npz", **arrays)
        counts[split] = {"pairs": int(len(arrays["label"])), "images": int(len(ids)),
                         "speakers": sorted({int(c["speaker"]) for c in clips})}
        if split == "test":
            test_arrays = arrays
        if split == "train":
            sel = np.flatnonzero((arrays["video_corruption"] == "") & (arrays["audio_corruption"] == ""))
            sel = rng.permutation(sel)[:512]
            write_folder(tmp_out / "calib", arrays["video"][sel], arrays["audio"][sel], arrays["label"][sel],
                         arrays["gender"][sel])
        material[split] = (images[ids], targets[ids], ids, clips)
    if args.demo_material:
        write_demo_material(Path(args.demo_material), material["test"], material["val"], rng)
    for cond, (v, a) in TEST_CONDITIONS.items():
        write_folder(tmp_out / "eval" / cond, test_arrays[f"video_{v}"], test_arrays[f"audio_{a}"],
                     test_arrays["label"], test_arrays["gender"])

    espeak_version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip()
    meta = {
        "name": "avdigits", "seed": args.seed, "small": args.small,
        "labels": av.LABELS, "words": av.WORDS, "genders": av.GENDERS,
        "video": {"frame_hw": av.FRAME_HW, "input": av.video_spec().preprocess.__dict__},
        "audio": {"sample_rate": av.SAMPLE_RATE, "input": av.audio_spec().preprocess.__dict__},
        "image_split": {k: list(map(int, v)) for k, v in bounds.items()},
        "speakers": [{k: v for k, v in s.items()} for s in spk],
        "counts": counts, "renditions_per_speaker_digit": RENDITIONS,
        "test_conditions": TEST_CONDITIONS,
        "test_severity": {"occlusion": TEST_OCCLUSION, "low_light": TEST_LOW_LIGHT, "snr_db": TEST_SNR_DB},
        "clean_snr_db": CLEAN_SNR_DB, "espeak_ng": espeak_version,
        "seconds": {"tts": round(t_tts, 1), "total": round(time.perf_counter() - t0, 1)},
    }
    (tmp_out / "meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp_out, out)
    print(f"avdigits: {counts['train']['pairs']} train / {counts['val']['pairs']} val / {counts['test']['pairs']} test "
          f"pairs, {len(spk)} speakers, {len(jobs)} recordings -> {out} "
          f"({meta['seconds']['total']} s, of which speech synthesis {meta['seconds']['tts']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
