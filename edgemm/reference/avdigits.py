"""AV-digits: in-cabin voice + gesture commands, rendered offline from data that ships in packages.

A command is a digit 0-9 that the occupant both shows to the cabin camera (a real handwritten digit
from scikit-learn's ``load_digits``, 8x8, drawn on a card held up in front of the camera) and says
aloud (espeak-ng speech, many voices). This module holds everything that turns that raw material into
camera frames and microphone audio, and the corruptions (hand over the lens, low light, road noise, a
silent microphone) that make fusion worth having.

It needs only numpy and OpenCV, so the generator (benchmarks/avdigits/generate.py, which also needs
scikit-learn and espeak-ng) and ``edgemm demo`` (which needs neither) render with the same code.
The model input specs below are the single definition the training recipe writes into every manifest,
and the runtime preprocesses with: what the models saw in training is what they see in the field.
"""

from __future__ import annotations

import cv2
import numpy as np

from edgemm.bundle import AudioPreprocess, InputSpec, VideoPreprocess

SAMPLE_RATE = 16000
FRAME_HW = (96, 96)  # camera frame (height, width) the cabin camera delivers (a region of interest)
LABELS = [str(d) for d in range(10)]
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
GENDERS = ["female", "male"]

# The model inputs. Every reference bundle uses these names and this preprocessing.
VIDEO_PRE = VideoPreprocess(size=(32, 32), color="gray", scale=1.0 / 255.0, mean=(0.45,), std=(0.25,),
                            resize="stretch")
# Log-mel over the last second of audio; mean/std standardise the log energies seen in training
# (measured on the training split of the generated set, seed 0: -4.61 and 3.96).
AUDIO_PRE = AudioPreprocess(sample_rate=SAMPLE_RATE, window_s=1.0, feature="logmel", n_fft=400, hop_length=160,
                            n_mels=40, fmin=50.0, fmax=7600.0, log_offset=1e-6, mean=-4.6, std=4.0)


# Fixed severities of the test conditions (the generator's test split, the tests, the demo clip).
TEST_OCCLUSION = 0.75  # a hand spanning ~3/4 of the card
TEST_LOW_LIGHT = dict(gain=0.14, noise=28.0)  # night: 14 % of the light, heavy sensor noise
TEST_SNR_DB = -16.0  # road noise 16 dB louder than the speech


def video_spec(name: str = "video") -> InputSpec:
    return InputSpec(name, "video", "float32", ["N", 1, *VIDEO_PRE.size], "NCHW", VIDEO_PRE)


def audio_spec(name: str = "audio") -> InputSpec:
    return InputSpec(name, "audio", "float32", ["N", 1, AUDIO_PRE.n_mels, AUDIO_PRE.n_frames], "NCMT", AUDIO_PRE)


# --------------------------------------------------------------------------------------------------
# Camera frames
# --------------------------------------------------------------------------------------------------


def cabin_background(rng: np.random.Generator, hw=FRAME_HW) -> np.ndarray:
    """A procedural cabin scene: a tinted gradient (window light), blurred texture (upholstery) and
    a few darker blocks (seat, pillar, headrest). BGR uint8."""
    h, w = hw
    base = rng.uniform(40, 200, size=3)
    tint = rng.uniform(-40, 40, size=3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)
    img = base[None, None, :] + ramp[:, :, None] * tint[None, None, :]
    texture = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), rng.uniform(1.0, 4.0))
    img += texture[:, :, None] * rng.uniform(5, 25)
    for _ in range(rng.integers(1, 4)):
        x0, y0 = rng.integers(-w // 4, w), rng.integers(-h // 4, h)
        bw, bh = rng.integers(w // 6, w // 2), rng.integers(h // 6, h // 2)
        shade = rng.uniform(0.3, 0.8)
        img[max(0, y0):y0 + bh, max(0, x0):x0 + bw] *= shade
    return np.clip(img, 0, 255).astype(np.uint8)


def photo_background(photo: np.ndarray, rng: np.random.Generator, hw=FRAME_HW) -> np.ndarray:
    """A random crop of a photograph (BGR uint8), scaled to the frame: real texture for training."""
    h, w = hw
    ph, pw = photo.shape[:2]
    size = int(rng.integers(min(ph, pw) // 4, min(ph, pw) // 2))
    y0, x0 = int(rng.integers(0, ph - size)), int(rng.integers(0, pw - size))
    crop = photo[y0:y0 + size, x0:x0 + size]
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA)


def render_frame(digit: np.ndarray, rng: np.random.Generator, background: np.ndarray | None = None,
                 hw=FRAME_HW) -> np.ndarray:
    """A camera frame of an 8x8 digit (values 0..16) drawn on a card held up to the camera.

    The card is placed with a random shift, rotation and size on a background, then lit unevenly
    and given sensor noise. Returns BGR uint8 (H, W, 3).
    """
    h, w = hw
    bg = cabin_background(rng, hw) if background is None else background.copy()
    card = int(rng.uniform(0.62, 0.85) * min(h, w))
    ink = np.clip(np.asarray(digit, np.float32) / 16.0, 0, 1)
    glyph = cv2.resize(ink, (int(card * 0.8), int(card * 0.8)), interpolation=cv2.INTER_CUBIC)
    glyph = np.clip(glyph, 0, 1)
    alpha = np.zeros((card, card), np.float32)
    m = (card - glyph.shape[0]) // 2
    alpha[m:m + glyph.shape[0], m:m + glyph.shape[1]] = glyph
    paper = rng.uniform(185, 250) + rng.uniform(-15, 15, size=3)
    pen = rng.uniform(0, 70) + rng.uniform(-15, 15, size=3)
    card_img = paper[None, None, :] * (1 - alpha[:, :, None]) + pen[None, None, :] * alpha[:, :, None]

    angle = rng.uniform(-15, 15)
    cx = w / 2 + rng.uniform(-0.09, 0.09) * w
    cy = h / 2 + rng.uniform(-0.09, 0.09) * h
    M = cv2.getRotationMatrix2D((card / 2, card / 2), angle, 1.0)
    M[0, 2] += cx - card / 2
    M[1, 2] += cy - card / 2
    warped = cv2.warpAffine(card_img.astype(np.float32), M, (w, h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(np.ones((card, card), np.float32), M, (w, h), flags=cv2.INTER_LINEAR)[:, :, None]
    img = bg.astype(np.float32) * (1 - mask) + warped * mask

    # Uneven cabin light: a global gain and a gradient across the frame, then sensor noise.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    grad = 1.0 + rng.uniform(0.0, 0.35) * (np.cos(a) * (xx / w - 0.5) + np.sin(a) * (yy / h - 0.5)) * 2
    img = img * rng.uniform(0.6, 1.25) * grad[:, :, None]
    img += rng.normal(0, rng.uniform(1.0, 6.0), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def occlude(frame: np.ndarray, rng: np.random.Generator, coverage: float = 0.6) -> np.ndarray:
    """A hand in front of the lens: a skin-toned, soft-edged blob over a large part of the card.

    coverage ~ the fraction of the card's width the hand spans (the card fills ~3/4 of the frame).
    """
    h, w = frame.shape[:2]
    out = frame.astype(np.float32)
    mask = np.zeros((h, w), np.float32)
    cx = int(w / 2 + rng.uniform(-0.15, 0.15) * w)
    cy = int(h / 2 + rng.uniform(-0.15, 0.15) * h)
    ax = int(coverage * 0.75 * w * rng.uniform(0.45, 0.6))
    ay = int(coverage * 0.75 * h * rng.uniform(0.55, 0.8))
    cv2.ellipse(mask, (cx, cy), (ax, ay), rng.uniform(0, 180), 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 2.0)[:, :, None]
    red = rng.uniform(140, 235)
    green = red * rng.uniform(0.65, 0.85)
    skin = np.array([green * rng.uniform(0.75, 0.9), green, red], np.float32)  # BGR
    shade = skin[None, None, :] * (0.85 + 0.3 * cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 3))[:, :, None]
    out = out * (1 - mask) + shade * mask
    return np.clip(out, 0, 255).astype(np.uint8)


def low_light(frame: np.ndarray, rng: np.random.Generator, gain: float = 0.2, noise: float = 22.0) -> np.ndarray:
    """Night driving: the image is dark and the sensor's gain makes it noisy."""
    out = frame.astype(np.float32) * gain + rng.normal(0, noise, frame.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Microphone audio
# --------------------------------------------------------------------------------------------------


def cabin_noise(n: int, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Road and engine noise: brown (1/f^2) rumble, an engine hum with harmonics, some broadband
    hiss, with a slowly varying level. Unit RMS, float32."""
    brown = np.cumsum(rng.normal(0, 1, n))
    brown -= np.convolve(brown, np.ones(801) / 801, mode="same")  # remove the drift (high-pass ~20 Hz)
    t = np.arange(n) / sr
    f0 = rng.uniform(25, 60)
    hum = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) for k in range(1, 6))
    hiss = rng.normal(0, 1, n)
    x = (brown / (np.std(brown) + 1e-9) * rng.uniform(0.6, 1.0) + hum / (np.std(hum) + 1e-9) * rng.uniform(0.2, 0.6)
         + hiss * rng.uniform(0.05, 0.3))
    level = 1.0 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t + rng.uniform(0, 2 * np.pi))
    x = x * level
    return (x / (np.sqrt(np.mean(x ** 2)) + 1e-9)).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def trim_silence(x: np.ndarray, threshold: float = 0.02, pad: int = 400) -> np.ndarray:
    """Cut leading and trailing silence (relative to the peak) off a synthesised word."""
    env = np.abs(x) > threshold * (np.max(np.abs(x)) + 1e-9)
    idx = np.flatnonzero(env)
    if idx.size == 0:
        return x[:0]
    return x[max(0, idx[0] - pad): idx[-1] + pad]


def place_word(word: np.ndarray, n: int, offset: int) -> np.ndarray:
    """A window of n samples with the word starting at sample offset (cut if it runs past the end)."""
    out = np.zeros(n, np.float32)
    end = min(n, offset + len(word))
    if end > offset:
        out[offset:end] = word[: end - offset]
    return out


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float, speech_rms: float | None = None) -> np.ndarray:
    """speech + noise scaled so the speech-to-noise power ratio is snr_db (speech power measured on the
    word itself, not on the silence around it)."""
    s = speech_rms if speech_rms is not None else rms(speech[np.abs(speech) > 1e-4]) if np.any(np.abs(speech) > 1e-4) else 0.05
    return (speech + noise * (s / 10 ** (snr_db / 20.0))).astype(np.float32)


def limit(x: np.ndarray, peak: float = 0.99) -> np.ndarray:
    """Keep a mix inside [-1, 1] by scaling (a real microphone chain has an AGC), never clipping."""
    m = float(np.max(np.abs(x))) if x.size else 0.0
    return (x * (peak / m)).astype(np.float32) if m > peak else x.astype(np.float32)
