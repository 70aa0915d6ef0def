"""The image and audio transforms a manifest names.

One implementation serves the live pipeline, calibration and evaluation in the converters, and the
training of the reference models, so that a model sees the same numbers in training, in conversion
and on the device.

Video: camera frames arrive as BGR uint8 (OpenCV's convention), any size.
Audio: mono float32 waveforms in [-1, 1] at the manifest's sample rate.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass

import cv2
import numpy as np

from edgemm.bundle import AudioPreprocess, InputSpec, VideoPreprocess
from edgemm.errors import EdgemmError

def np_dtype(name: str) -> np.dtype:
    """The numpy dtype of a manifest dtype name (they are numpy's own names)."""
    return np.dtype(name)


# --------------------------------------------------------------------------------------------------
# Video
# --------------------------------------------------------------------------------------------------


def resize(frame: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize to (h, w): area averaging when shrinking (no aliasing of fine patterns), bilinear when enlarging.

    OpenCV's INTER_AREA is fast only for integer factors: 1280x720 -> 224x224 in one step cost 3.3 ms here,
    more than a small model. Halving with INTER_AREA while the frame is at least twice the target, then one
    area step, costs 1.4 ms and stays within 1.4/255 (mean) of the one-step result.
    """
    while frame.shape[0] >= 2 * h and frame.shape[1] >= 2 * w:
        frame = cv2.resize(frame, (frame.shape[1] // 2, frame.shape[0] // 2), interpolation=cv2.INTER_AREA)
    shrink = frame.shape[0] > h or frame.shape[1] > w
    out = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out[:, :, None] if out.ndim == 2 else out


@dataclass(frozen=True)
class Geometry:
    """Source frame -> model input: x_in = x_src * sx + left, y_in = y_src * sy + top."""

    sx: float
    sy: float
    left: int
    top: int
    new_w: int
    new_h: int


def geometry(src_hw: tuple[int, int], dst_hw: tuple[int, int], mode: str) -> Geometry:
    h, w = src_hw
    dh, dw = dst_hw
    if mode == "stretch":
        return Geometry(dw / w, dh / h, 0, 0, dw, dh)
    r = min(dh / h, dw / w)
    nw, nh = max(1, int(round(w * r))), max(1, int(round(h * r)))
    return Geometry(nw / w, nh / h, (dw - nw) // 2, (dh - nh) // 2, nw, nh)


def letterbox(frame: np.ndarray, dst_hw: tuple[int, int], pad_value: int = 114) -> np.ndarray:
    """Resize keeping the aspect ratio, centred on a pad_value background of dst_hw (as YOLO trains)."""
    g = geometry(frame.shape[:2], dst_hw, "letterbox")
    img = resize(frame, g.new_h, g.new_w)
    out = np.full((dst_hw[0], dst_hw[1], img.shape[2]), pad_value, np.uint8)
    out[g.top:g.top + g.new_h, g.left:g.left + g.new_w] = img
    return out


def fit_frame(frame: np.ndarray, pre: VideoPreprocess) -> np.ndarray:
    """One BGR uint8 frame (H, W, 3) or gray (H, W) resized or letterboxed to the model size: (h, w, C)."""
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3 or frame.shape[2] not in (1, 3, 4):
        raise EdgemmError(f"Video frame | Received shape {frame.shape}; expected (height, width, 3) BGR or (height, width) gray.")
    h, w = pre.size
    if pre.resize == "letterbox" and frame.shape[:2] != (h, w):
        return letterbox(frame, (h, w), pre.pad_value)
    if frame.shape[0] != h or frame.shape[1] != w:
        return resize(frame, h, w)
    return frame


def baked_frame(frame: np.ndarray, pre: VideoPreprocess) -> np.ndarray:
    """What a baked graph (edgemm convert --bake-preprocess) takes: the resized frame, (h, w, 3) uint8 in the
    camera's colour order; the graph does the rest. A gray camera's frame is repeated to three channels (the
    graph's BGR -> gray of three equal channels is that value, exactly)."""
    img = fit_frame(frame, pre)
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    img = img[:, :, :3]
    # A frame already at the model size is the source's own buffer, which it may reuse for the next frame
    # while this one waits for the model: copied, as the Python path's new tensor would be.
    return np.array(img, order="C", copy=True) if np.shares_memory(img, frame) or not img.flags.c_contiguous else img


def image_to_chw(frame: np.ndarray, pre: VideoPreprocess, normalise: bool = True) -> np.ndarray:
    """One BGR uint8 frame (H, W, 3) or gray (H, W) -> float32 (C, h, w) as the manifest describes."""
    frame = fit_frame(frame, pre)
    channels = frame.shape[2]
    if pre.color == "gray":
        img = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)[:, :, None] if channels >= 3 else frame
    elif channels == 1:
        img = np.repeat(frame, 3, axis=2)
    else:
        img = frame[:, :, :3]
        if pre.color == "rgb":
            img = img[:, :, ::-1]
    if not normalise:
        return np.ascontiguousarray(img.transpose(2, 0, 1))
    # (x * scale - mean) / std as one multiply-add straight from the uint8 pixels: a fifth of the passes
    # over the image of the step-by-step form (1.0 ms -> 0.1 ms at 224x224 here), same values to 1e-6.
    gain, offset = _affine(pre.scale, tuple(pre.mean), tuple(pre.std))
    out = np.empty((img.shape[2], img.shape[0], img.shape[1]), np.float32)
    np.multiply(img.transpose(2, 0, 1), gain, out=out)
    out -= offset
    return out


@functools.lru_cache(maxsize=32)
def _affine(scale: float, mean: tuple, std: tuple) -> tuple[np.ndarray, np.ndarray]:
    std_ = np.asarray(std, np.float64).reshape(-1, 1, 1)
    gain = (scale / std_).astype(np.float32)
    offset = (np.asarray(mean, np.float64).reshape(-1, 1, 1) / std_).astype(np.float32)
    return gain, offset


def preprocess_video(frames: list[np.ndarray] | np.ndarray, spec: InputSpec) -> np.ndarray:
    """Frame(s), oldest first, -> the input tensor with a batch of 1 in the spec's layout and dtype."""
    pre: VideoPreprocess = spec.preprocess
    if isinstance(frames, np.ndarray) and frames.ndim in (2, 3):
        frames = [frames]
    frames = list(frames)
    if len(frames) < pre.frames:  # too few yet (start-up): repeat the oldest, as a still scene would
        frames = [frames[0]] * (pre.frames - len(frames)) + frames
    frames = frames[-pre.frames:]
    if pre.baked:  # one frame, NHWC (the manifest checked): the resize only
        return baked_frame(frames[-1], pre)[None]
    as_uint8 = spec.dtype == "uint8"
    chws = [image_to_chw(f, pre, normalise=not as_uint8) for f in frames]
    layout = spec.layout or "NCHW"
    if layout == "NCHW":
        x = chws[-1][None]
    elif layout == "NHWC":
        x = chws[-1].transpose(1, 2, 0)[None]
    elif layout == "NTCHW":
        x = np.stack(chws)[None]
    else:  # NCTHW
        x = np.stack(chws, axis=1)[None]
    return np.ascontiguousarray(x.astype(np_dtype(spec.dtype), copy=False))


# --------------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------------


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)  # HTK mel scale


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular HTK-scale mel filters, (n_mels, n_fft // 2 + 1), float32."""
    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    mel_points = np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2)
    hz = _mel_to_hz(mel_points)
    lower, centre, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (freqs[None, :] - lower) / np.maximum(centre - lower, 1e-9)
    down = (upper - freqs[None, :]) / np.maximum(upper - centre, 1e-9)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _hann(n: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)  # periodic Hann


def fit_window(waveform: np.ndarray, n_samples: int) -> np.ndarray:
    """The last n_samples of a waveform, zero-padded at the front when it is shorter."""
    waveform = np.asarray(waveform, np.float32).reshape(-1)
    if waveform.size >= n_samples:
        return waveform[waveform.size - n_samples:]
    return np.concatenate([np.zeros(n_samples - waveform.size, np.float32), waveform])


def log_mel(waveform: np.ndarray, pre: AudioPreprocess) -> np.ndarray:
    """(n_mels, n_frames) log-mel (or mel) power spectrogram of exactly one window, float32."""
    x = fit_window(waveform, pre.window_samples)
    return _mel_columns(x, pre, 0, pre.n_frames)


def _mel_columns(x: np.ndarray, pre: AudioPreprocess, first: int, count: int) -> np.ndarray:
    """Columns first .. first + count - 1 of the window x's (normalised) log-mel: STFT frame k starts at
    sample k * hop_length (centre=False). The one computation for whole windows and for new columns."""
    hop = pre.hop_length
    seg = x[first * hop:(first + count - 1) * hop + pre.n_fft]
    frames = np.lib.stride_tricks.sliding_window_view(seg, pre.n_fft)[::hop][:count] * _hann(pre.n_fft)
    power = np.abs(np.fft.rfft(frames, n=pre.n_fft, axis=1)).astype(np.float32) ** 2
    fmax = pre.fmax if pre.fmax else pre.sample_rate / 2.0
    bank = mel_filterbank(pre.sample_rate, pre.n_fft, pre.n_mels, float(pre.fmin), float(fmax))
    # A float32 product's rounding depends on how many columns BLAS multiplies at once, so a column computed
    # alone differs from the same column in a whole window by a float32 step: after the log about 1e-7, but
    # in a linear mel power of 1800 it is 1e-4. Linear mel is therefore multiplied in float64 (5x the cost of
    # this product, 0.1 ms a window), the log-mel in float32.
    if pre.feature == "mel":
        bank, power = bank.astype(np.float64), power.astype(np.float64)
    mel = (bank @ power.T).astype(np.float32)
    if pre.feature == "logmel":
        mel = np.log(mel + np.float32(pre.log_offset))
    return ((mel - np.float32(pre.mean)) / np.float32(pre.std)).astype(np.float32)


def _audio_tensor(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A (n_mels, n_frames) feature or a (n_samples,) waveform -> the input tensor in the spec's layout."""
    x = x[None]
    if (spec.layout or "NCMT") in ("NCMT", "NCS"):
        x = x[:, None]
    return np.ascontiguousarray(x.astype(np_dtype(spec.dtype), copy=False))


def preprocess_audio(waveform: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A mono waveform (the window ending at the inference instant) -> the input tensor, batch of 1."""
    pre: AudioPreprocess = spec.preprocess
    if pre.baked:  # the graph computes the feature (and its normalisation) from the samples
        return _audio_tensor(fit_window(waveform, pre.window_samples), spec)
    if pre.feature == "waveform":
        x = fit_window(waveform, pre.window_samples)
        return _audio_tensor((x - np.float32(pre.mean)) / np.float32(pre.std), spec)
    return _audio_tensor(log_mel(waveform, pre), spec)


class AudioFeatureStream:
    """``preprocess_audio`` for the successive windows of one stream, computing only the new STFT columns.

    Consecutive windows of a live stream overlap almost entirely: a 1 s window moved on by one 30 fps
    frame has 3 new columns of its 98. Each call gets the window's samples, the stream index of its first
    sample and an epoch (anything that changes when the stream's timeline does: a reopened source, a gap).
    When the window moved by whole hops within the same epoch, the columns it shares with the previous
    window are kept and only the rest are computed; a column is shared only if all of its samples are the
    same as last time (so a tail that was zero-padded because it had not arrived yet is computed again
    once it has). Anything else (another epoch, a shift that is not whole hops, a window that moved back)
    recomputes every column. The numbers are those of ``preprocess_audio`` on the same samples (the same
    code, on fewer columns). Thread-safe: the capture thread and the worker may both cut windows.
    """

    def __init__(self, spec: InputSpec):
        self.spec = spec
        self.pre: AudioPreprocess = spec.preprocess
        self._lock = threading.Lock()
        self.computed = 0  # columns computed, and taken over from the previous window (for tests/benchmarks)
        self.reused = 0
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._x: np.ndarray | None = None  # the previous window's samples
            self._first: int | None = None
            self._epoch = None
            self._cols: np.ndarray | None = None

    def __call__(self, waveform: np.ndarray, first: int | None = None, epoch=None) -> np.ndarray:
        """The input tensor for the window ``waveform`` whose first sample is stream index ``first``
        (None: unknown, computed whole)."""
        pre = self.pre
        if pre.takes_waveform or first is None:
            return preprocess_audio(waveform, self.spec)
        x = fit_window(waveform, pre.window_samples).copy()  # kept: the caller's buffer may be reused
        first += waveform.size - x.size  # (a short waveform is zero-padded in front)
        with self._lock:
            old, keep = self._shared_columns(x, first, epoch)
            n = pre.n_frames
            if keep == 0:
                cols = _mel_columns(x, pre, 0, n)
            elif keep < n:
                cols = np.concatenate([self._cols[:, old:old + keep], _mel_columns(x, pre, keep, n - keep)], axis=1)
            else:  # the same window again (never modified in place: a new array replaces it)
                cols = self._cols
            self._x, self._first, self._epoch, self._cols = x, first, epoch, cols
            self.computed += n - keep
            self.reused += keep
        return _audio_tensor(cols, self.spec)

    def _shared_columns(self, x: np.ndarray, first: int, epoch) -> tuple[int, int]:
        """(i, k): the first k columns of the window x are the previous window's columns i .. i + k - 1."""
        if self._cols is None or epoch != self._epoch:
            return 0, 0
        hop, n = self.pre.hop_length, self.pre.n_frames
        shift = first - self._first
        if shift < 0 or shift % hop:
            return 0, 0
        keep = n - shift // hop
        if keep <= 0:
            return 0, 0
        # Column j uses samples j * hop .. j * hop + n_fft - 1: shared while those are unchanged.
        span = (keep - 1) * hop + self.pre.n_fft
        diff = np.flatnonzero(x[:span] != self._x[shift:shift + span])
        if diff.size:
            keep = min(keep, max(0, (int(diff[0]) - self.pre.n_fft) // hop + 1))
        return shift // hop, keep


# Resampling: one streaming polyphase resampler for files, live streams and training data alike.
RESAMPLE_ZERO_CROSSINGS = 16  # filter half-length, in periods of the lower of the two rates
RESAMPLE_KAISER_BETA = 8.0  # about 80 dB stopband


@functools.lru_cache(maxsize=16)
def _polyphase_bank(up: int, down: int) -> tuple[np.ndarray, int]:
    """The windowed-sinc low-pass at the upsampled rate (rate_in * up), split into its ``up`` phases.

    Cutoff at the lower Nyquist frequency, min(rate_in, rate_out) / 2, i.e. 1 / max(up, down) of the
    upsampled Nyquist; Kaiser window; ``half`` taps either side of the centre, so the filter is
    linear-phase and centred (no delay). Gain ``up`` makes up for the zeros that upsampling inserts.
    Row p holds taps p, p + up, p + 2 up, ... (zero-padded to one length): the phase used for an
    output whose position on the upsampled grid is p past an input sample.
    """
    wider = max(up, down)
    half = RESAMPLE_ZERO_CROSSINGS * wider
    k = np.arange(-half, half + 1, dtype=np.float64)
    h = np.sinc(k / wider) * np.kaiser(2 * half + 1, RESAMPLE_KAISER_BETA)
    h *= up / h.sum()
    taps = -(-(2 * half + 1) // up)
    bank = np.zeros((up, taps), np.float64)
    for p in range(up):
        row = h[p::up]
        bank[p, :len(row)] = row
    return bank, half


class Resampler:
    """Streaming polyphase resampling from rate_in to rate_out (integers, e.g. 48000 -> 16000).

    ``process(block)`` returns every output sample it can compute so far; blocks of any size give the
    same samples as one call on the whole signal (the filter state, i.e. the recent input and the output
    position, carries over between calls). Output sample n sits at time n / rate_out after the first
    input sample (the filter is centred, so there is no delay): it waits for the look-ahead it needs
    (``RESAMPLE_ZERO_CROSSINGS`` samples of the lower rate), and ``process(..., final=True)`` flushes the
    end as if zeros followed. Before the first sample the signal counts as zero too. The total output
    length is ceil(n_in * rate_out / rate_in), as scipy's resample_poly gives.

    ``start`` puts the first input sample at index ``start`` of an endless input timeline (earlier input
    counts as zero); outputs are then numbered on that timeline's output grid, from
    ``ceil(start * rate_out / rate_in)`` (``next_output``), so a stream restarted after a gap stays on the
    same grid.
    """

    CHUNK = 4096  # outputs computed per vectorised step (bounds the temporary gather array)

    def __init__(self, rate_in: int, rate_out: int, start: int = 0):
        rate_in, rate_out = int(rate_in), int(rate_out)
        if rate_in <= 0 or rate_out <= 0:
            raise EdgemmError(f"Resampling: {rate_in} Hz -> {rate_out} Hz | Expected positive sample rates.")
        g = math.gcd(rate_in, rate_out)
        self.rate_in, self.rate_out = rate_in, rate_out
        self.up, self.down = rate_out // g, rate_in // g
        self.identity = self.up == self.down
        if not self.identity:
            self._bank, self._half = _polyphase_bank(self.up, self.down)
        self.start = int(start)
        self.n_in = self.start  # index one past the last input sample received
        self.next_output = -(-self.start * self.up // self.down)  # index of the next output sample
        self._buf = np.zeros(0, np.float64)  # input samples from index self._buf_start on
        self._buf_start = self.start
        self.finished = False

    def _last_input(self, n: np.ndarray | int):
        """Index of the newest input sample output n needs, and the filter phase for it."""
        pos = n * self.down + self._half
        return pos // self.up, pos % self.up

    def process(self, block, final: bool = False) -> np.ndarray:
        x = np.asarray(block, np.float64).reshape(-1)
        if self.finished:
            if x.size:
                raise EdgemmError("Resampling | Input after the final block; expected a new Resampler.")
            return np.zeros(0, np.float32)
        if self.identity:
            self.n_in += x.size
            self.next_output = self.n_in
            self.finished = final
            return x.astype(np.float32)
        if x.size:
            self._buf = np.concatenate([self._buf, x]) if self._buf.size else x.copy()
            self.n_in += x.size
        if final:
            end = -(-self.n_in * self.up // self.down)  # ceil(n_in * up / down): everything there is
        else:
            # Outputs whose newest input sample has arrived: last_input(n) <= n_in - 1.
            end = ((self.n_in - 1) * self.up + self.up - 1 - self._half) // self.down + 1
        end = max(end, self.next_output)
        taps = self._bank.shape[1]
        pieces = []
        for lo in range(self.next_output, end, self.CHUNK):
            n = np.arange(lo, min(end, lo + self.CHUNK), dtype=np.int64)
            last, phase = self._last_input(n)
            idx = last[:, None] - np.arange(taps, dtype=np.int64)[None, :] - self._buf_start
            inside = (idx >= 0) & (idx < self._buf.size)  # before the start or past the end: zeros
            vals = np.where(inside, self._buf[np.clip(idx, 0, max(self._buf.size - 1, 0))] if self._buf.size
                            else 0.0, 0.0)
            pieces.append(np.einsum("ij,ij->i", self._bank[phase], vals))
        self.next_output = end
        if final:
            self.finished = True
            self._buf = np.zeros(0, np.float64)
        else:
            # Keep only the input the next outputs can still reach.
            oldest = int(self._last_input(self.next_output)[0]) - taps + 1
            drop = min(max(0, oldest - self._buf_start), self._buf.size)
            if drop:
                self._buf = self._buf[drop:]
                self._buf_start += drop
        if not pieces:
            return np.zeros(0, np.float32)
        return np.concatenate(pieces).astype(np.float32)


def resample(waveform: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling of a whole signal: ``Resampler(rate_in, rate_out).process(x, final=True)``.

    The one implementation for WAV files, live streams at another rate and training data; no scipy
    needed. Output length ceil(len * rate_out / rate_in); sample n at time n / rate_out.
    """
    if int(rate_in) == int(rate_out):
        return np.asarray(waveform, np.float32).reshape(-1)
    return Resampler(rate_in, rate_out).process(waveform, final=True)
