"""Audio/video time alignment on the one pipeline clock.

Cameras stamp frames with the host's monotonic clock (``edgemm.sources.base.now``). Microphones stamp
audio by its sample count: sample n of a stream opened at t0 was captured at t0 + n / rate. Those two
clocks drift apart: an audio crystal is off by tens of ppm, so after an hour of driving "1 s of samples"
is no longer 1 s of host time, and a window cut by sample count slides away from the frames it should
go with. This module keeps them together:

``DriftEstimator``  fits the arrival time of each audio block against its sample count (the earliest
                    arrivals, i.e. the least delayed ones, define the line); its slope is the real
                    sample period on the host clock, reported in ppm against the nominal rate.
``AudioRing``       holds the recent audio by sample index and returns the window ending at any host
                    instant t, through the drift-corrected map from sample index to host time; where
                    samples are missing (not yet arrived, overwritten, a gap after an overflow, before
                    the first sample since the source was (re)opened) it zero-pads and says how many.
``AudioRing.align`` picks the window for a video frame: the one ending at the frame's capture time when
                    the audio has arrived that far, else the newest audio within ``max_skew_s``; the
                    A/V skew (frame time minus window end) is therefore bounded and reported.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass

import numpy as np

from edgemm.preprocess import Resampler
from edgemm.sources.base import AudioBlock, now

__all__ = ["AudioRing", "AudioWindow", "DriftEstimator", "now"]

log = logging.getLogger("edgemm.sync")

MAX_DRIFT = 0.005  # 5000 ppm: audio crystals are off by tens of ppm, a cheap USB codec by a few hundred
RESTAMP_S = 0.05  # a block stamped this far off its epoch's line starts a new epoch (sample-count rounding is ~1e-4 s)


class DriftEstimator:
    """Drift of an audio sample clock against the host clock, from (sample count, arrival time) pairs.

    A block's last sample reaches us a little after it was captured: the delay is the driver's buffering
    plus scheduling noise, never negative. So a least-squares line through all arrivals is pulled up by
    late blocks; instead the fit is repeated on the points at or below the previous line (the
    earliest-arriving half), which converges on the lower envelope: the line of "capture + minimum
    delay". Its slope is the real duration of one sample in host seconds.
    """

    def __init__(self, sample_rate: float, history_s: float = 120.0, min_span_s: float = 5.0,
                 point_interval_s: float = 0.05, refit_points: int = 20):
        self.sample_rate = float(sample_rate)
        self.history_s = history_s
        self.min_span_s = min_span_s
        self.point_interval_s = point_interval_s  # keep the point count (and the fit's cost) bounded
        self.refit_points = refit_points  # drift changes over minutes: refitting every second is plenty
        self._points: collections.deque[tuple[int, float]] = collections.deque(
            maxlen=int(history_s / point_interval_s) + 8)
        self._fit: tuple[float, float] | None = None  # (slope s/sample, intercept s) of arrival vs index
        self._new_points = 0  # points added since the last fit: refit only every refit_points
        self._bucket = None  # the point interval the newest point belongs to

    def reset(self) -> None:
        self._points.clear()
        self._fit = None
        self._new_points = 0

    def add(self, n_end: int, t_arrival: float) -> None:
        """One block: the index just past its last sample, and now() when it arrived."""
        pts = self._points
        bucket = int(t_arrival // self.point_interval_s)
        if pts and bucket == self._bucket:
            # One point per interval: the least delayed arrival (earliest relative to its sample count).
            n0, t0 = pts[-1]
            if t_arrival - n_end / self.sample_rate < t0 - n0 / self.sample_rate:
                pts[-1] = (n_end, t_arrival)
            return
        self._bucket = bucket
        pts.append((n_end, t_arrival))
        while pts and pts[-1][1] - pts[0][1] > self.history_s:
            pts.popleft()
        self._new_points += 1

    @property
    def span_s(self) -> float:
        return self._points[-1][1] - self._points[0][1] if len(self._points) > 1 else 0.0

    def fit(self) -> tuple[float, float] | None:
        """(slope, intercept) of arrival = intercept + slope * index, or None before min_span_s of data."""
        if self._new_points == 0 or (self._fit is not None and self._new_points < self.refit_points):
            return self._fit
        if self.span_s < self.min_span_s or len(self._points) < 8:
            return None
        self._new_points = 0
        pts = np.asarray(self._points, dtype=np.float64)
        n = pts[:, 0]
        # Fit in seconds relative to the first point so the float64 arithmetic keeps microseconds.
        x = (n - n[0]) / self.sample_rate
        y = pts[:, 1] - pts[0, 1]
        keep = np.ones(len(x), bool)
        slope, icpt = 1.0, 0.0
        for _ in range(4):
            slope, icpt = np.polyfit(x[keep], y[keep], 1)
            resid = y - (icpt + slope * x)
            new_keep = resid <= np.median(resid[keep])
            if new_keep.sum() < 4 or np.array_equal(new_keep, keep):
                break
            keep = new_keep
        # Move the line down onto the earliest arrivals: the minimum delay, not the typical one.
        icpt += float(np.min(y - (icpt + slope * x)))
        per_sample = slope / self.sample_rate
        self._fit = (per_sample, pts[0, 1] + icpt - n[0] * per_sample)
        return self._fit

    @property
    def ppm(self) -> float | None:
        """How fast the audio clock runs against the host clock, in parts per million (+: more samples
        per host second than the nominal rate); None until enough data was seen."""
        f = self.fit()
        if f is None:
            return None
        return (1.0 / (f[0] * self.sample_rate) - 1.0) * 1e6


@dataclass
class AudioWindow:
    samples: np.ndarray  # float32, exactly the requested length, zeros where missing
    t_start: float  # host time of the first sample
    t_end: float  # host time just past the last sample
    missing: int  # samples that were not available (zero-padded)
    skew_s: float | None = None  # frame time minus t_end, when cut for a frame
    waited_s: float = 0.0  # how long align() waited for the audio to arrive
    first: int | None = None  # ring index of the first sample (None: the ring was empty)
    epoch: tuple[int, int] = (0, 0)  # (resets, gap count) of the ring: changes when the timeline does

    @property
    def missing_fraction(self) -> float:
        return self.missing / max(1, len(self.samples))


class AudioRing:
    """The recent audio of one source by sample index; thread-safe (capture thread pushes, worker reads).

    A reopened source starts a new epoch (``reset()``, which the pipeline calls after every reopening;
    also detected when a sample index goes backwards): its content, its clock anchor, the drift fit and
    the resampler are dropped, and the next block anchors the map afresh from the source's own stamps.
    Drift correction therefore restarts too: for the first ``DriftEstimator.min_span_s`` after a reopening
    the map is the nominal rate from the new anchor (a crystal off by 100 ppm drifts 0.5 ms in that time).

    Blocks at another rate than the ring's are resampled on the way in by one streaming
    ``edgemm.preprocess.Resampler`` per epoch (no clicks at block edges; about a millisecond of
    look-ahead held back until the next block, or until ``mark_ended()`` flushes it).
    """

    def __init__(self, sample_rate: int, capacity_s: float = 10.0, correct_drift: bool = True,
                 drift: DriftEstimator | None = None):
        self.sample_rate = int(sample_rate)
        self.capacity = int(round(capacity_s * sample_rate))
        self._buf = np.zeros(self.capacity, np.float32)
        self._valid = np.zeros(self.capacity, bool)
        self.correct_drift = correct_drift
        self.drift = drift or DriftEstimator(sample_rate)
        self._cond = threading.Condition()
        self.resets = 0
        self.gap_samples = 0  # samples skipped by the source (index jumps: overflows)
        self.gaps = 0  # ... how many times
        self.pushed_samples = 0
        self.ended = False  # the source said it has nothing more (a file at its end)
        self._consumer_t: float | None = None  # newest instant a consumer asked for (file back-pressure)
        self._clear()

    def _clear(self) -> None:
        self._end = None  # index just past the newest sample held
        self._begin = None  # first index of this epoch
        self._anchor: tuple[int, float] | None = None  # (index, host time) from the source's own stamps
        self._offset: float | None = None  # fitted line minus host time, frozen when the fit starts
        self._warned = False
        self._valid[:] = False
        self._resampler = None  # one per epoch, for a source at another rate than the ring's
        self._res_ref: tuple[int, float, int] | None = None  # (input index, its time, input rate)
        self.drift.reset()

    def reset(self) -> None:
        """Start a new epoch (the source was reopened and its sample count restarts)."""
        with self._cond:
            self._clear()
            self.ended = False
            self.resets += 1
            self._cond.notify_all()

    def mark_ended(self) -> None:
        with self._cond:
            rs = self._resampler
            if rs is not None and not rs.finished:  # the end of the stream: the filter's tail is due now
                first = rs.next_output
                tail = rs.process((), final=True)
                if tail.size:
                    self._write(tail, first, self._resampled_time(first))
            self.ended = True
            self._cond.notify_all()

    # -- writing ---------------------------------------------------------------------------------------
    def push(self, block: AudioBlock) -> None:
        samples = np.asarray(block.samples, np.float32).reshape(-1)
        if samples.size == 0:
            return
        first_in = int(block.first_sample)
        with self._cond:
            if block.sample_rate == self.sample_rate:
                self._restart_if_restamped(first_in, float(block.t))
                self._restart_if_backwards(first_in, samples.size)
                self._write(samples, first_in, float(block.t))
                n_end = first_in + samples.size
            else:
                # Sources are asked for the model's rate; this is the fallback for one that cannot deliver
                # it. One streaming resampler per epoch: blocks join without edge clicks, and the output
                # lags the input only by the filter's look-ahead (about a millisecond).
                scale = self.sample_rate / block.sample_rate
                self._restart_if_restamped(round(first_in * scale), float(block.t))
                self._restart_if_backwards(round(first_in * scale), round(samples.size * scale))
                self._res_ref = (first_in, float(block.t), int(block.sample_rate))
                for first, out in self._resample(int(block.sample_rate), first_in, samples):
                    self._write(out, first, self._resampled_time(first))
                n_end = round((first_in + samples.size) * scale)
            if block.t_arrival:
                # The arrival is of the block's last input sample, whatever the resampler still holds back.
                self.drift.add(n_end, float(block.t_arrival))
                if self._offset is None and self.correct_drift and self._anchor is not None:
                    self._time_of(self._anchor[0])  # freezes the offset as soon as the first fit exists
            self._cond.notify_all()

    def _restart_if_restamped(self, first: int, t: float) -> None:
        if self._anchor is None:
            return
        n0, t0 = self._anchor
        if abs(t - (t0 + (first - n0) / self.sample_rate)) > RESTAMP_S:
            # The source put this block off the epoch's line: a microphone placed its samples on the timeline
            # afresh after a stall (edgemm/sources/audio.py: _reanchor). Its stamps are the truth: new epoch.
            self._clear()
            self.resets += 1

    def _restart_if_backwards(self, first: int, n: int) -> None:
        if self._end is not None and first < self._end - n:
            # The count went backwards: the source restarted without telling us.
            self._clear()
            self.resets += 1

    def _resample(self, rate: int, first_in: int, samples: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """(first output index, samples) pieces for one block at another rate, on the ring's sample grid."""
        pieces = []
        rs = self._resampler
        if rs is not None and (rs.rate_in != rate or first_in != rs.n_in):
            if rs.rate_in == rate and first_in > rs.n_in:
                # Samples the source lost: flush what the filter holds, then start again after the gap (on
                # the same output grid, so the gap stays a gap of the right length).
                pieces.append((rs.next_output, rs.process((), final=True)))
            rs = None
        if rs is None:
            rs = self._resampler = Resampler(rate, self.sample_rate, start=first_in)
        pieces.append((rs.next_output, rs.process(samples)))
        return [(first, out) for first, out in pieces if out.size]

    def _resampled_time(self, index: int) -> float:
        first_in, t, rate = self._res_ref
        return t + (index * rate / self.sample_rate - first_in) / rate

    def _write(self, samples: np.ndarray, first: int, t_first: float) -> None:
        n = samples.size
        if self._end is None:
            self._begin = first
            self._anchor = (first, t_first)
            self._end = first
        if first > self._end:  # a gap: samples the source lost (overflow): mark them missing
            gap = first - self._end
            self.gap_samples += gap
            self.gaps += 1
            self._set_valid(self._end, min(gap, self.capacity), False)
        if n > self.capacity:
            samples, first, n = samples[-self.capacity:], first + n - self.capacity, self.capacity
        pos = first % self.capacity
        k = min(n, self.capacity - pos)
        self._buf[pos:pos + k] = samples[:k]
        self._buf[:n - k] = samples[k:]
        self._set_valid(first, n, True)
        self._end = max(self._end, first + n)
        self.pushed_samples += n

    def _set_valid(self, first: int, n: int, value: bool) -> None:
        pos = first % self.capacity
        k = min(n, self.capacity - pos)
        self._valid[pos:pos + k] = value
        self._valid[:n - k] = value

    def wait_for_room(self, t_end: float, window_s: float, stop: threading.Event | None = None,
                      poll_s: float = 0.1) -> None:
        """Block a file reader while t_end is further ahead of the consumer than the ring can hold.

        Live audio never waits (the oldest is overwritten); a file must not lose what a video frame
        will still ask for, so its reader waits for the consumer to catch up.
        """
        with self._cond:
            while not (stop and stop.is_set()):
                c = self._consumer_t
                limit = self.capacity / self.sample_rate - window_s - 0.5
                if c is None and self._end is not None and self._begin is not None:
                    # Nothing consumed yet: keep the first capacity worth (video may start late).
                    if (self._end - self._begin) / self.sample_rate < limit:
                        return
                elif c is None or t_end - c < limit:
                    return
                self._cond.wait(poll_s)

    # -- the clock map -----------------------------------------------------------------------------------
    def time_of(self, index: float) -> float:
        """Host time of a sample index (drift-corrected once the fit has enough data)."""
        with self._cond:
            return self._time_of(index)

    def _time_of(self, index: float) -> float:
        if self._anchor is None:
            raise ValueError("no audio yet")
        n0, t0 = self._anchor
        nominal = t0 + (index - n0) / self.sample_rate
        if not self.correct_drift:
            return nominal
        fit = self.drift.fit()
        if fit is None:
            return nominal
        slope, icpt = fit
        if abs(slope * self.sample_rate - 1.0) > MAX_DRIFT:
            # Far beyond any crystal: the arrivals are not paced by the sample clock (a stalled driver, a
            # suspended machine). Trust the sample count rather than a nonsensical line.
            if not self._warned:
                self._warned = True
                log.warning("audio clock fit of %.0f ppm is implausible; drift correction paused", self.drift.ppm)
            return nominal
        if self._offset is None:
            # The first fit of the epoch (a few seconds in, before any drift has built up) fixes the offset
            # between the line (capture + minimum delivery delay) and the source's own stamps at the start;
            # from then on the line, refitted on recent arrivals, carries the map.
            self._offset = (icpt + slope * n0) - t0
        return icpt + slope * index - self._offset

    def _index_at(self, t: float) -> float:
        n0, _ = self._anchor
        # time_of is affine in the index: invert it from two points.
        a = self._time_of(n0)
        b = self._time_of(n0 + self.sample_rate)
        return n0 + (t - a) * self.sample_rate / (b - a)

    def index_at(self, t: float) -> float:
        with self._cond:
            return self._index_at(t)

    @property
    def ppm(self) -> float | None:
        with self._cond:
            return self.drift.ppm

    def first_t(self) -> float | None:
        """Host time of the first sample of this epoch, or None when empty."""
        with self._cond:
            return None if self._begin is None else self._time_of(self._begin)

    def latest_t(self) -> float | None:
        """Host time just past the newest sample held, or None when empty."""
        with self._cond:
            return None if self._end is None else self._time_of(self._end)

    # -- reading ---------------------------------------------------------------------------------------
    def window(self, t_end: float, n_samples: int, grid: int = 1) -> AudioWindow:
        """The n_samples ending at host time t_end; zeros (counted in ``missing``) where there is no data.

        ``grid`` > 1 moves the end to a multiple of grid samples (the nearest one that has arrived, if t_end's
        has), so that successive windows differ by whole STFT hops and their features can be computed
        incrementally (``edgemm.preprocess.AudioFeatureStream``); the window then ends up to a hop from t_end.
        """
        with self._cond:
            return self._window(t_end, n_samples, grid)

    def _window(self, t_end: float, n_samples: int, grid: int = 1, min_end: int | None = None) -> AudioWindow:
        out = np.zeros(n_samples, np.float32)
        if self._end is None:
            return AudioWindow(out, t_end - n_samples / self.sample_rate, t_end, n_samples)
        end = int(round(self._index_at(t_end)))
        if grid > 1:
            end = self._snap(end, grid, min_end)
        start = end - n_samples
        lo = max(start, self._begin, self._end - self.capacity)
        hi = min(end, self._end)
        have = 0
        if hi > lo:
            pos = lo % self.capacity
            k = hi - lo
            first = min(k, self.capacity - pos)
            dst = out[lo - start:hi - start]
            dst[:first] = self._buf[pos:pos + first]
            dst[first:] = self._buf[:k - first]
            valid = np.concatenate([self._valid[pos:pos + first], self._valid[:k - first]])
            dst[~valid] = 0.0
            have = int(valid.sum())
        return AudioWindow(out, self._time_of(start), self._time_of(end), n_samples - have, first=start,
                           epoch=(self.resets, self.gaps))

    def _snap(self, end: int, grid: int, min_end: int | None) -> int:
        """The grid point nearest to index end; the one below rather than one not yet arrived (when end has),
        and the one above when the one below is before min_end (the skew bound)."""
        lo = end - end % grid
        hi = lo + grid
        pick = lo if end - lo <= hi - end else hi
        if pick == hi and hi > self._end >= end:
            pick = lo
        if min_end is not None and pick < min_end:
            pick = hi
        return pick

    def align(self, t_frame: float, n_samples: int, max_skew_s: float, wait_s: float = 0.0,
              grid: int = 1) -> AudioWindow:
        """The audio window to fuse with a frame captured at t_frame.

        Ends at t_frame when the audio has arrived that far (waiting up to wait_s for it); else at the
        newest audio, as long as that is within max_skew_s of the frame; else at t_frame - max_skew_s
        with the not-yet-arrived tail zero-padded (``missing``). ``grid``: as in ``window``, the end moved
        to a grid point within the bound. |skew| never exceeds max_skew_s (given a grid step below it).
        """
        with self._cond:
            if self._consumer_t is None or t_frame > self._consumer_t:
                self._consumer_t = t_frame
                self._cond.notify_all()
            start = now()
            deadline = start + wait_s
            while True:
                latest = None if self._end is None else self._time_of(self._end)
                if latest is not None and latest >= t_frame:
                    end = t_frame
                    break
                left = deadline - now()
                if left <= 0 or self.ended:
                    end = t_frame if latest is None else max(latest, t_frame - max_skew_s)
                    break
                self._cond.wait(left)
            min_end = None
            if grid > 1:
                min_end = int(np.ceil(self._index_at(t_frame - max_skew_s) - 1e-6)) if self._end is not None else None
            w = self._window(end, n_samples, grid, min_end)
            w.skew_s = t_frame - (end if grid == 1 else w.t_end)  # (grid 1: the instant asked, not rounded)
            w.waited_s = now() - start
            return w

    def note_consumed(self, t: float) -> None:
        """The consumer has moved on to instant t (lets a file reader that waits for room go on)."""
        with self._cond:
            if self._consumer_t is None or t > self._consumer_t:
                self._consumer_t = t
                self._cond.notify_all()

    def stats(self) -> dict:
        with self._cond:
            return {"pushed_samples": self.pushed_samples, "gap_samples": self.gap_samples, "resets": self.resets,
                    "drift_ppm": self.drift.ppm, "drift_fit_span_s": round(self.drift.span_s, 3)}
