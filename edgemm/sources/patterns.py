"""Sources that need no device: test patterns and in-memory arrays, paced like a sensor or not at all.

- ``test://video?size=640x480&fps=30&pattern=bars``: moving colour bars with the frame number burned in,
  both as text and as a binary code strip along the top that ``decode_frame_counter`` reads back (it
  survives JPEG/H.264), so a test can tell which frame a result came from.
- ``test://audio?kind=tone&freq=440&sample_rate=16000``: tone, chirp, noise or silence, generated from the
  sample index so blocks join without clicks.
- ``ArrayVideoSource`` / ``ArrayAudioSource``: frames or a waveform you already hold (``WavSource`` is one).

Timing, one rule for all of them: item k has the time ``start + k * period`` on ``now()``'s clock (audio:
the time of its first sample). ``live`` sources are paced by the clock and, like a camera, skip what the
consumer was too slow to take (video: the latest frame wins; audio: at most ``buffer_s`` is kept, as in
a microphone's ring buffer); ``realtime`` finite sources deliver every item, each no earlier than its
time; the rest deliver every item as fast as it is read.
"""

from __future__ import annotations

import math
import threading

import cv2
import numpy as np

from edgemm.errors import EdgemmError
from edgemm.sources.base import AudioBlock, EndOfStream, Frame, Source, SourceError, now


class PacedSource(Source):
    """Items k = 0, 1, ... at ``start + k * period``; subclasses make item k with ``_make(k, t)``."""

    # Audio blocks are "captured" once their last sample is: item k is due at the END of its period.
    due_at_end = False

    def __init__(self, uri: str, period: float, count: int | None = None, live: bool = True,
                 realtime: bool = True, loop: bool = False, start_time: float | None = None,
                 max_lag: int = 0, name: str | None = None):
        super().__init__(uri)
        if period <= 0:
            raise EdgemmError(f"Source: {uri} | Item period {period} s; expected a positive rate.")
        if count is not None and count <= 0:
            raise EdgemmError(f"Source: {uri} | Source is empty; expected at least one frame or sample.")
        self.period = float(period)
        self.count = count  # None: endless
        self.live = bool(live)
        self.realtime = bool(realtime) or self.live
        self.loop = bool(loop)
        self.start_time = start_time  # now()-time of item 0; None: when opened
        self.max_lag = int(max_lag)  # live only: how many due items may wait before the oldest are skipped
        self.name = name or uri
        self._start = 0.0
        self._next = 0
        self._open = False
        self._opened_once = False
        self._wake = threading.Event()

    def open(self) -> None:
        if self._open:
            return
        if self._opened_once and self.live:
            # A live source carries on on the same timeline, like a sensor: what came due while it was closed
            # is a gap in the item numbers, never a restart at 0 or a shift of the clock.
            due = math.floor((now() - self._start) / self.period) - (1 if self.due_at_end else 0)
            self._next = max(self._next, due)
            self.stats.reopened += 1
        else:
            self._start = now() if self.start_time is None else float(self.start_time)
            self._next = 0
        self._opened_once = True
        self._open = True
        self._wake.clear()

    def close(self) -> None:
        self._open = False
        self._wake.set()  # a read() waiting for its item returns None at once

    def time_of(self, k: int) -> float:
        return self._start + k * self.period

    def read(self, timeout: float | None = None):
        if not self._open:
            raise SourceError(f"Source: {self.name} | read() before open() or after close(); expected an open source.")
        k = self._next
        if self.count is not None and not self.loop and k >= self.count:
            raise EndOfStream(f"Source: {self.name} | End of stream after {self.count} items.")
        if self.realtime:
            t_now = now()
            if self.live:
                latest = math.floor((t_now - self._start) / self.period) - (1 if self.due_at_end else 0)
                if self.count is not None and not self.loop:
                    latest = min(latest, self.count - 1)
                if latest - k > self.max_lag:  # the consumer fell behind: skip the oldest, as a sensor would
                    skipped = latest - k - self.max_lag
                    self.stats.dropped += skipped
                    k += skipped
            wait = self.time_of(k + (1 if self.due_at_end else 0)) - t_now
            if wait > 0:
                if timeout is not None and wait > timeout:
                    self._wake.wait(max(0.0, timeout))
                    return None
                if self._wake.wait(wait):  # closed meanwhile
                    return None
        item = self._make(k, self.time_of(k))
        self._next = k + 1
        self.stats.delivered += 1
        return item

    def _make(self, k: int, t: float):
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------- video

class GeneratedVideoSource(PacedSource):
    modality = "video"

    def __init__(self, uri: str, render, fps: float, size: tuple[int, int] | None = None, **kw):
        super().__init__(uri, 1.0 / float(fps), **kw)
        self.fps = float(fps)
        self.size = size  # (width, height) when known
        self._render = render

    def _make(self, k: int, t: float) -> Frame:
        index = k % self.count if (self.count and self.loop) else k
        return Frame(self._render(index, k), t, k, self.name)


class ColourBarsSource(GeneratedVideoSource):
    """Moving colour bars (or noise) with the frame number as text and as a machine-readable code strip."""

    def __init__(self, uri: str, size=(640, 480), fps: float = 30.0, pattern: str = "bars", frames=None,
                 seed: int = 0, **kw):
        w, h = size
        self._base = _colour_bars(w, h)
        self._pattern = pattern
        self._seed = seed
        super().__init__(uri, self._draw, fps, size=(w, h), count=frames, **kw)

    def _draw(self, index: int, seq: int) -> np.ndarray:
        w, h = self.size
        if self._pattern == "noise":
            img = np.random.default_rng((self._seed, index)).integers(0, 256, (h, w, 3), dtype=np.uint8)
        else:
            img = np.roll(self._base, (index * 4) % w, axis=1)
        return burn_frame_counter(img, seq)


def _colour_bars(w: int, h: int) -> np.ndarray:
    # SMPTE-like bars in BGR: white, yellow, cyan, green, magenta, red, blue.
    colours = np.array([[235, 235, 235], [16, 235, 235], [235, 235, 16], [16, 235, 16], [235, 16, 235],
                        [16, 16, 235], [235, 16, 16]], np.uint8)
    cols = (np.arange(w) * len(colours) // max(w, 1)).clip(0, len(colours) - 1)
    row = colours[cols]
    img = np.repeat(row[None], h, axis=0)
    # A grey ramp in the bottom quarter so the image is not flat (scalers, encoders and models see detail).
    ramp = np.linspace(0, 255, w, dtype=np.float32).astype(np.uint8)
    img[h * 3 // 4:] = ramp[None, :, None]
    return np.ascontiguousarray(img)


COUNTER_BITS = 32


def _cell(w: int, h: int) -> int:
    return max(2, min(h // 12, w // (COUNTER_BITS + 2)))


def burn_frame_counter(img: np.ndarray, seq: int) -> np.ndarray:
    """Write seq into the frame: a strip of white/black cells (reference white, reference black, then 32 bits,
    most significant first) along the top, and as text for people. Returns the same array."""
    h, w = img.shape[:2]
    c = _cell(w, h)
    bits = [1, 0] + [(int(seq) >> (COUNTER_BITS - 1 - i)) & 1 for i in range(COUNTER_BITS)]
    for i, b in enumerate(bits):
        img[0:c, i * c:(i + 1) * c] = 255 if b else 0
    scale = max(0.4, h / 480.0)
    cv2.putText(img, f"{seq}", (c, c * 2 + int(24 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                max(1, int(3 * scale)), cv2.LINE_AA)
    cv2.putText(img, f"{seq}", (c, c * 2 + int(24 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                max(1, int(scale)), cv2.LINE_AA)
    return img


def decode_frame_counter(img: np.ndarray) -> int | None:
    """Read back the number burn_frame_counter wrote (also after resizing-free lossy coding); None if absent."""
    h, w = img.shape[:2]
    c = _cell(w, h)
    if w < (COUNTER_BITS + 2) * c:
        return None
    grey = img[0:c].astype(np.float32).mean(axis=2) if img.ndim == 3 else img[0:c].astype(np.float32)
    lo, hi = max(0, c // 4), max(1, c - c // 4)  # cell centres: away from edges blurred by the codec
    levels = [grey[lo:hi, i * c + lo:i * c + hi].mean() for i in range(COUNTER_BITS + 2)]
    white, black = levels[0], levels[1]
    if white - black < 64:
        return None
    threshold = (white + black) / 2
    value = 0
    for level in levels[2:]:
        value = (value << 1) | int(level > threshold)
    return value


class ArrayVideoSource(GeneratedVideoSource):
    """Frames you already hold (a list or an (N, H, W, 3) array of BGR uint8), at ``fps``."""

    def __init__(self, frames, fps: float = 30.0, uri: str = "array://video", live: bool = False, **kw):
        self._frames = list(frames) if not isinstance(frames, np.ndarray) else frames
        if len(self._frames) == 0:
            raise EdgemmError(f"Source: {uri} | No frames given; expected at least one BGR image.")
        first = np.asarray(self._frames[0])
        if first.ndim != 3 or first.shape[2] != 3 or first.dtype != np.uint8:
            raise EdgemmError(f"Source: {uri} | Frame of shape {first.shape} {first.dtype}; expected (H, W, 3) "
                              "uint8 BGR.")
        # The same array each time it is due: frames are read-only downstream (sinks draw on a copy).
        super().__init__(uri, lambda i, _seq: self._frames[i], fps,
                         size=(first.shape[1], first.shape[0]), count=len(self._frames), live=live, **kw)


# ----------------------------------------------------------------------------------------------- audio

class GeneratedAudioSource(PacedSource):
    """Fixed-size blocks of a signal given as ``generate(first_sample, n) -> float32``."""

    modality = "audio"
    due_at_end = True

    def __init__(self, uri: str, generate, sample_rate: int, block: int, total: int | None = None,
                 buffer_s: float = 2.0, **kw):
        if block <= 0:
            raise EdgemmError(f"Source: {uri} | Block of {block} samples; expected a positive block size.")
        count = None if total is None else max(1, math.ceil(total / block))
        max_lag = max(1, int(buffer_s * sample_rate / block))
        super().__init__(uri, block / float(sample_rate), count=count, max_lag=max_lag, **kw)
        self.sample_rate = int(sample_rate)
        self.block = int(block)
        self.total = total  # samples in one pass, None: endless
        self._generate = generate

    def _make(self, k: int, t: float) -> AudioBlock:
        first = k * self.block
        n = self.block
        if self.total is not None:
            if self.loop:
                idx = (np.arange(first, first + n) % self.total)
                samples = self._generate_indices(idx)
            else:
                n = min(n, self.total - first)  # the last block of a file may be short: nothing is lost
                samples = self._generate(first, n)
        else:
            samples = self._generate(first, n)
        return AudioBlock(np.asarray(samples, np.float32), t, self.sample_rate, first, now(), self.name)

    def _generate_indices(self, idx: np.ndarray) -> np.ndarray:
        # Looping: the indices wrap at most once per block when block <= total, but handle any case.
        out = np.empty(len(idx), np.float32)
        start = 0
        while start < len(idx):
            first = int(idx[start])
            run = min(len(idx) - start, self.total - first)
            out[start:start + run] = self._generate(first, run)
            start += run
        return out


class ArrayAudioSource(GeneratedAudioSource):
    """A mono waveform you already hold (float32 in [-1, 1]) at ``sample_rate``."""

    def __init__(self, samples, sample_rate: int, block: int | None = None, uri: str = "array://audio",
                 live: bool = False, **kw):
        data = np.asarray(samples, np.float32)
        if data.ndim != 1 or len(data) == 0:
            raise EdgemmError(f"Source: {uri} | Waveform of shape {data.shape}; expected a non-empty mono (N,) "
                              "array.")
        self.samples = data
        block = block or default_block(sample_rate)
        super().__init__(uri, lambda first, n: data[first:first + n], sample_rate, block, total=len(data),
                         live=live, **kw)


def default_block(sample_rate: int) -> int:
    """20 ms: the hop of most speech front ends, and fine-grained enough to cut a window at any instant."""
    return max(1, int(round(sample_rate * 0.02)))


def block_size(sample_rate: int, block: int | None = None, block_s: float | None = None) -> int:
    """Samples per block: ``block`` if given, else ``block_s`` seconds at the rate, else 20 ms."""
    if block is None and block_s is not None:
        block = max(1, round(block_s * sample_rate))
    return int(block) if block else default_block(sample_rate)


AUDIO_KINDS = ("tone", "chirp", "noise", "silence")


def audio_pattern(kind: str, sample_rate: int, freq: float = 440.0, freq_end: float = 4000.0,
                  period_s: float = 1.0, amplitude: float = 0.5, seed: int = 0):
    """generate(first_sample, n) for a test signal, continuous across blocks (computed from the sample index)."""
    sr = float(sample_rate)

    def tone(first, n):
        i = np.arange(first, first + n, dtype=np.float64)
        return (amplitude * np.sin(2 * np.pi * freq * i / sr)).astype(np.float32)

    def chirp(first, n):
        tau = (np.arange(first, first + n, dtype=np.float64) / sr) % period_s
        phase = 2 * np.pi * (freq * tau + (freq_end - freq) * tau ** 2 / (2 * period_s))
        return (amplitude * np.sin(phase)).astype(np.float32)

    def noise(first, n):
        # Seeded by the sample index, so the same sample always has the same value.
        out = np.empty(n, np.float32)
        pos = 0
        while pos < n:
            chunk_id, offset = divmod(first + pos, 4096)
            vals = np.random.default_rng((seed, chunk_id)).uniform(-amplitude, amplitude, 4096).astype(np.float32)
            take = min(n - pos, 4096 - offset)
            out[pos:pos + take] = vals[offset:offset + take]
            pos += take
        return out

    def silence(first, n):
        return np.zeros(n, np.float32)

    return {"tone": tone, "chirp": chirp, "noise": noise, "silence": silence}[kind]
