"""The demo's in-cabin clip and calibration data, rendered from the AV-digits material that ships.

``make_clip`` writes a short clip as a camera and a microphone would record it: an MP4 (OpenCV) of
an occupant showing a sequence of digit commands on a card, a 16 kHz WAV of the same occupant saying
them, and ``truth.json`` with each command's time span, digit and condition. The conditions change
along the clip so that fusion has something to do: clean, a hand over the lens, loud road noise,
night. Digits and voices come from the test split (images and speakers never seen in training).

``calibration_folder`` writes INT8 calibration samples (model inputs, `edgemm convert` folder format)
from validation-split material, never from the clip's own material.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from edgemm.errors import EdgemmError
from edgemm.media import write_wav
from edgemm.preprocess import preprocess_audio, preprocess_video
from edgemm.reference import DEMO_MATERIAL
from edgemm.reference import avdigits as av

CONDITIONS = {
    "clean": "clean",
    "occluded": "hand over the lens",
    "noisy": "loud road noise (-16 dB SNR)",
    "night": "night: dark, noisy image",
    "night+noisy": "night and road noise at once",
}
# The default script: 12 commands of 1.6 s (19.2 s), through every condition.
DEFAULT_DIGITS = [4, 7, 1, 9, 0, 3, 8, 2, 6, 5, 1, 7]
DEFAULT_CONDITIONS = (["clean"] * 2 + ["occluded"] * 2 + ["noisy"] * 3 + ["night"] * 2 + ["night+noisy"] * 3)
WORD_AT_S = 0.25  # the word starts this long after the card appears
CLEAN_SNR_DB = 25.0


@dataclass
class Segment:
    index: int
    start_s: float
    end_s: float
    digit: int
    condition: str
    word_start_s: float
    word_end_s: float
    voice: str
    image_id: int


@dataclass
class Clip:
    video: Path
    audio: Path
    truth: Path
    segments: list[Segment]
    fps: float
    duration_s: float

    def segment_at(self, t: float) -> Segment | None:
        """The command on screen at media time t (seconds from the clip's start)."""
        for s in self.segments:
            if s.start_s <= t < s.end_s:
                return s
        return None


def load_material(path: Path = DEMO_MATERIAL) -> dict[str, np.ndarray]:
    if not Path(path).is_file():
        raise EdgemmError(f"Demo material: {path} | Not found; expected the npz that ships in edgemm/reference/data "
                          "(reinstall edgemm, or regenerate it with benchmarks/avdigits/generate.py --demo-material).")
    with np.load(path, allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


def _words(m: dict, prefix: str = "") -> list[np.ndarray]:
    ends = np.cumsum(m[f"{prefix}word_lengths"])
    packed = m[f"{prefix}words"].astype(np.float32) / 32767.0
    return [packed[e - n:e] for e, n in zip(ends, m[f"{prefix}word_lengths"])]


def _pick(m: dict, prefix: str, digit: int, k: int) -> tuple[int, int]:
    """Index of the k-th image and the k-th word of this digit in the material (cycling)."""
    imgs = np.flatnonzero(m[f"{prefix}digits"] == digit)
    words = np.flatnonzero(m[f"{prefix}word_digits"] == digit)
    if imgs.size == 0 or words.size == 0:
        raise EdgemmError(f"Demo material | Has no image or recording of digit {digit}; expected every digit 0-9.")
    return int(imgs[k % imgs.size]), int(words[k % words.size])


def _jitter(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A hand-held card moves a little and the sensor adds fresh noise every frame."""
    h, w = base.shape[:2]
    M = np.float32([[1, 0, rng.normal(0, 0.6)], [0, 1, rng.normal(0, 0.6)]])
    moved = cv2.warpAffine(base, M, (w, h), borderMode=cv2.BORDER_REFLECT)
    return np.clip(moved.astype(np.float32) + rng.normal(0, 2.0, moved.shape), 0, 255).astype(np.uint8)


def make_clip(out_dir: str | Path, digits: list[int] | None = None, conditions: list[str] | None = None,
              segment_s: float = 1.6, fps: float = 15.0, seed: int = 0, material: Path = DEMO_MATERIAL) -> Clip:
    """Render the clip into out_dir (clip.mp4, clip.wav, truth.json) and describe it."""
    digits = list(DEFAULT_DIGITS if digits is None else digits)
    conditions = list(DEFAULT_CONDITIONS if conditions is None else conditions)
    if len(conditions) != len(digits):
        raise EdgemmError(f"Demo clip | {len(digits)} digits but {len(conditions)} conditions; expected one each.")
    for c in conditions:
        if c not in CONDITIONS:
            raise EdgemmError(f"Demo clip: condition {c!r} | Unknown; expected one of {', '.join(CONDITIONS)}.")
    m = load_material(material)
    words = _words(m)
    sr = av.SAMPLE_RATE
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_frames_seg = max(1, int(round(segment_s * fps)))
    segment_s = n_frames_seg / fps  # whole frames per command, so the video and the truth agree
    duration = len(digits) * segment_s
    total = int(round(duration * sr))
    audio = av.cabin_noise(total, rng)  # the cabin is never silent; scaled below
    speech = np.zeros(total, np.float32)
    boost = np.zeros(total, np.float32)  # extra road noise, where the script says so
    segments: list[Segment] = []
    video_tmp = out / ".clip.partial.mp4"
    writer = cv2.VideoWriter(str(video_tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (av.FRAME_HW[1], av.FRAME_HW[0]))
    if not writer.isOpened():
        raise EdgemmError(f"Demo clip: {video_tmp} | OpenCV could not open an MP4 writer; expected an OpenCV build with FFMPEG.")
    used: dict[int, int] = {}
    word_rms = []
    try:
        for i, (digit, cond) in enumerate(zip(digits, conditions)):
            k = used.get(digit, 0)
            used[digit] = k + 1
            img_i, word_i = _pick(m, "", digit, k)
            start = i * segment_s
            seg_rng = np.random.default_rng([seed, i])
            base = av.render_frame(m["images"][img_i], seg_rng)
            hand_seed = int(seg_rng.integers(1 << 31))
            for _ in range(n_frames_seg):
                frame = _jitter(base, seg_rng)
                if cond == "occluded":  # the same hand, held still, over each frame
                    frame = av.occlude(frame, np.random.default_rng(hand_seed), av.TEST_OCCLUSION)
                elif cond in ("night", "night+noisy"):
                    frame = av.low_light(frame, seg_rng, **av.TEST_LOW_LIGHT)
                writer.write(frame)
            word = words[word_i] * seg_rng.uniform(0.3, 0.5)
            w0 = int(round((start + WORD_AT_S) * sr))
            w1 = min(total, w0 + len(word))
            speech[w0:w1] += word[: w1 - w0]
            word_rms.append(av.rms(word))
            if cond in ("noisy", "night+noisy"):
                s0, s1 = int(round(start * sr)), min(total, int(round((start + segment_s) * sr)))
                ramp = min(800, (s1 - s0) // 4)
                env = np.ones(s1 - s0, np.float32)
                env[:ramp] = np.linspace(0, 1, ramp)
                env[-ramp:] = np.linspace(1, 0, ramp)
                boost[s0:s1] = env * av.rms(word) / 10 ** (av.TEST_SNR_DB / 20.0)
            segments.append(Segment(i, round(start, 4), round(start + segment_s, 4), int(digit), cond,
                                    round(w0 / sr, 4), round(w1 / sr, 4), str(m["voices"][word_i]),
                                    int(m["image_ids"][img_i])))
    finally:
        writer.release()
    floor = float(np.median(word_rms)) / 10 ** (CLEAN_SNR_DB / 20.0)
    noise_level = np.maximum(floor, boost)
    mix = av.limit(speech + audio * noise_level)
    video_path, audio_path, truth_path = out / "clip.mp4", out / "clip.wav", out / "truth.json"
    video_tmp.replace(video_path)
    write_wav(audio_path, mix, sr)
    clip = Clip(video_path, audio_path, truth_path, segments, fps, duration)
    truth = {"fps": fps, "sample_rate": sr, "duration_s": duration, "segment_s": segment_s, "seed": seed,
             "conditions": CONDITIONS, "segments": [asdict(s) for s in segments]}
    truth_path.write_text(json.dumps(truth, indent=1) + "\n")
    return clip


VIDEO_CONDITIONS = ("clean", "occluded", "lowlight", "random")
AUDIO_CONDITIONS = ("clean", "noisy", "silent", "random")


def render_samples(n: int, seed: int, split: str = "test", video: str = "clean", audio: str = "clean",
                   material: Path = DEMO_MATERIAL) -> dict[str, np.ndarray]:
    """n model-input pairs (keys video, audio, label) rendered from the shipped material.

    split "test" uses the clip's test-split material, "calib" the validation-split material. video and
    audio name a fixed condition at the test severity, or "random" for the training mix (p=0.25 of a
    random corruption at a random severity), as INT8 calibration wants. The same seed gives the same
    samples, and the three fixed conditions of one seed share everything but the corruption.
    """
    if video not in VIDEO_CONDITIONS or audio not in AUDIO_CONDITIONS:
        raise EdgemmError(f"Samples: video={video}, audio={audio} | Expected video in {', '.join(VIDEO_CONDITIONS)} "
                          f"and audio in {', '.join(AUDIO_CONDITIONS)}.")
    prefix = {"test": "", "calib": "calib_"}[split]
    m = load_material(material)
    words = _words(m, prefix)
    vs, as_ = av.video_spec(), av.audio_spec()
    win = av.AUDIO_PRE.window_samples
    out_v, out_a, labels = [], [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        digit = i % 10
        img_i, word_i = _pick(m, prefix, digit, int(rng.integers(100)))
        frame = av.render_frame(m[f"{prefix}images"][img_i], rng)
        vrng = np.random.default_rng([seed, i, 1])
        if video == "occluded":
            frame = av.occlude(frame, vrng, av.TEST_OCCLUSION)
        elif video == "lowlight":
            frame = av.low_light(frame, vrng, **av.TEST_LOW_LIGHT)
        elif video == "random" and vrng.random() < 0.25:
            frame = av.occlude(frame, vrng, vrng.uniform(0.4, 0.9)) if vrng.random() < 0.5 else \
                av.low_light(frame, vrng, vrng.uniform(0.1, 0.35), vrng.uniform(10, 35))
        word = words[word_i] * rng.uniform(0.1, 0.6)
        speech = av.place_word(word, win, int(rng.integers(0, max(1, win - len(word)))))
        noise = av.cabin_noise(win, rng)
        snr = rng.uniform(15, 35)
        arng = np.random.default_rng([seed, i, 2])
        if audio == "noisy" or (audio == "random" and arng.random() < 0.25):
            snr = av.TEST_SNR_DB if audio == "noisy" else arng.uniform(-18, 3)
        mixed = av.mix_at_snr(speech, noise, snr, speech_rms=av.rms(word))
        if audio == "silent":
            mixed = mixed - speech
        out_v.append(preprocess_video(frame, vs))
        out_a.append(preprocess_audio(av.limit(mixed), as_))
        labels.append(digit)
    return {"video": np.concatenate(out_v), "audio": np.concatenate(out_a), "label": np.array(labels, np.int64)}


def calibration_samples(n: int = 64, seed: int = 1) -> dict[str, np.ndarray]:
    """INT8 calibration pairs from validation-split material, clean and corrupted as in training."""
    return render_samples(n, seed, split="calib", video="random", audio="random")


def calibration_folder(folder: str | Path, n: int = 64, seed: int = 1) -> Path:
    """Write calibration_samples as one npz in the `edgemm convert --calib` folder format."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "calibration.npz", **calibration_samples(n, seed))
    return folder
