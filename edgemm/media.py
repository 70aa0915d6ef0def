"""Reading media files: WAV audio and video clips, with clear errors for what is not readable."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import cv2
import numpy as np

from edgemm.errors import EdgemmError


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A WAV file -> (mono float32 samples in [-1, 1], sample rate). PCM 8/16/24/32-bit and IEEE float."""
    path = Path(path)
    if not path.is_file():
        raise EdgemmError(f"Audio file: {path} | File not found; expected a WAV file.")
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
        data = _pcm_to_float(raw, width)
    except wave.Error as exc:
        if "unknown format: 3" not in str(exc):  # 3 = IEEE float, which the wave module does not read
            raise EdgemmError(f"Audio file: {path} | Not a readable WAV ({exc}); expected PCM or float WAV.") from exc
        data, rate, channels = _read_float_wav(path)
    except (EOFError, OSError) as exc:
        raise EdgemmError(f"Audio file: {path} | Not a readable WAV ({exc}); expected PCM or float WAV.") from exc
    if channels > 1:
        data = data[: len(data) // channels * channels].reshape(-1, channels).mean(axis=1)
    return data.astype(np.float32), rate


def _pcm_to_float(raw: bytes, width: int) -> np.ndarray:
    if width == 1:
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    if width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        return v.astype(np.float32) / float(1 << 23)
    if width == 4:
        return np.frombuffer(raw, "<i4").astype(np.float32) / float(1 << 31)
    raise wave.Error(f"unsupported sample width {width}")


def _read_float_wav(path: Path) -> tuple[np.ndarray, int, int]:
    data = path.read_bytes()
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise EdgemmError(f"Audio file: {path} | Not a RIFF/WAVE file; expected a WAV file.")
    pos, fmt, samples = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + size]
        if cid == b"fmt ":
            fmt = struct.unpack("<HHIIHH", body[:16])
        elif cid == b"data":
            samples = body
        pos += 8 + size + (size & 1)
    if fmt is None or samples is None or fmt[0] != 3 or fmt[5] not in (32, 64):
        raise EdgemmError(f"Audio file: {path} | Unsupported WAV encoding; expected PCM or 32/64-bit float.")
    arr = np.frombuffer(samples[: len(samples) // (fmt[5] // 8) * (fmt[5] // 8)], "<f4" if fmt[5] == 32 else "<f8")
    return arr.astype(np.float32), fmt[2], fmt[1]


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Mono float samples in [-1, 1] -> 16-bit PCM WAV."""
    pcm = (np.clip(np.asarray(samples, np.float32), -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())


def read_video_frames(path: str | Path, max_frames: int | None = None, start: int | str = 0) -> list[np.ndarray]:
    """BGR frames of a video file (all, or max_frames from ``start``), or one image file as a single frame.

    start: the index of the first frame, or "middle" for the max_frames frames at the middle of the clip.
    Only the frames returned are held in memory: the decoder seeks (CAP_PROP_POS_FRAMES) where the
    container allows it and otherwise skips with grab() (decoded, never converted or kept). "middle" takes
    the clip's length from the container's frame count; when the container does not give one, a first
    pass counts the frames with grab().
    """
    path = Path(path)
    if not path.is_file():
        raise EdgemmError(f"Video file: {path} | File not found; expected an image or video file.")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise EdgemmError(f"Image file: {path} | Not a readable image; expected PNG, JPEG or BMP.")
        return [img]
    middle = start == "middle"
    if middle:
        start = 0 if max_frames is None else max(0, (_frame_count(path, counted=False) - max_frames) // 2)
    elif not isinstance(start, int) or start < 0:
        raise EdgemmError(f"Video file: {path} | Start frame {start!r}; expected a frame index >= 0 or 'middle'.")
    frames = _read_frames(path, start, max_frames)
    if not frames and middle and start > 0:
        # The container's frame count was more than the frames it holds: count them, then read again.
        start = max(0, (_frame_count(path, counted=True) - max_frames) // 2)
        frames = _read_frames(path, start, max_frames)
    if not frames:
        raise EdgemmError(f"Video file: {path} | No frames could be read"
                          f"{f' from frame {start}' if start else ''}; expected a video OpenCV can decode.")
    return frames


def _frame_count(path: Path, counted: bool) -> int:
    """The number of frames: the container's figure, or (counted, or when it has none) by grabbing them all."""
    cap = cv2.VideoCapture(str(path))
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
        if n > 0 and not counted:
            return n
        n = 0
        while cap.isOpened() and cap.grab():
            n += 1
        return n
    finally:
        cap.release()


def _read_frames(path: Path, start: int, max_frames: int | None) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    try:
        if start > 0 and not (cap.set(cv2.CAP_PROP_POS_FRAMES, start)
                              and int(cap.get(cv2.CAP_PROP_POS_FRAMES)) == start):
            cap.release()  # no (exact) seek in this container: decode from the start, keeping nothing
            cap = cv2.VideoCapture(str(path))
            for _ in range(start):
                if not cap.grab():
                    return []
        frames = []
        while cap.isOpened() and (max_frames is None or len(frames) < max_frames):
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
        return frames
    finally:
        cap.release()


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm"}
AUDIO_SUFFIXES = {".wav"}
