"""Reading media files: WAV audio and video clips, with clear errors for what is not readable."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import cv2
import numpy as np

from edgemm.errors import EdgemmError


WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT, WAVE_FORMAT_EXTENSIBLE = 1, 3, 0xFFFE


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A WAV file -> (mono float32 samples in [-1, 1], sample rate).

    PCM 8/16/24/32-bit and IEEE float 32/64-bit, plain or WAVE_FORMAT_EXTENSIBLE (what sox and ffmpeg write
    for 24-bit, float and multichannel audio: the real format is the first two bytes of its sub-format GUID).
    One RIFF parser for all of them: Python's wave module reads only plain PCM before 3.12.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgemmError(f"Audio file: {path} | File not found; expected a WAV file.")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EdgemmError(f"Audio file: {path} | Not readable ({exc.strerror or exc}); expected a WAV file.") from exc
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise EdgemmError(f"Audio file: {path} | Not a RIFF/WAVE file; expected a WAV file.")
    pos, fmt, samples = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + size]  # a streamed WAV may claim more than there is: take what is there
        if cid == b"fmt " and len(body) >= 16:
            fmt = body
        elif cid == b"data":
            samples = body
        pos += 8 + size + (size & 1)
    if fmt is None or samples is None:
        raise EdgemmError(f"Audio file: {path} | No {'fmt' if fmt is None else 'data'} chunk; expected a WAV file.")
    tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == WAVE_FORMAT_EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]
    width = block_align // channels if channels else 0  # the container: 24-bit samples padded to 32 keep 4
    if tag == WAVE_FORMAT_PCM and width in (1, 2, 3, 4):
        out = _pcm_to_float(samples[: len(samples) // width * width], width)
    elif tag == WAVE_FORMAT_IEEE_FLOAT and width in (4, 8):
        out = np.frombuffer(samples[: len(samples) // width * width], "<f4" if width == 4 else "<f8")
    else:
        raise EdgemmError(f"Audio file: {path} | Unsupported WAV encoding (format {tag:#06x}, {bits}-bit); expected "
                          "PCM 8/16/24/32-bit or float 32/64-bit.")
    if channels > 1:
        out = out[: len(out) // channels * channels].reshape(-1, channels).mean(axis=1)
    return out.astype(np.float32), rate


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
    return np.frombuffer(raw, "<i4").astype(np.float32) / float(1 << 31)


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
