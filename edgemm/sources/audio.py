"""Microphones (PortAudio through sounddevice) and WAV files, delivered as fixed-size timestamped blocks.

Microphone: PortAudio calls ``_callback`` from its own thread with whatever the driver has (any size);
the callback stores the samples in a bounded ring and ``read(timeout)`` cuts blocks of ``block`` samples.

Time comes from the sample count, never from when a block happened to be read: sample n was captured at
``t0 + n / sample_rate``. ``t0`` is anchored once, over the callbacks of the first ``anchor_s`` (0.25 s) after
opening, to the earliest estimate of when the first sample was captured: the driver's ADC time mapped onto
``now()`` (``inputBufferAdcTime + now() - currentTime``), bounded by "arrival minus the callback's duration"
(a sample cannot be captured after it arrived; JACK reports the callback time as ADC time). A single first
callback is often late; the earliest of a dozen is not. Blocks are held back until then.
Every block also carries ``t_arrival``, the ``now()`` of the callback that completed it, so ``edgemm.sync``
can measure how the device's sample clock drifts against the monotonic clock and correct it.

Faults are not fatal: a driver overflow (``status.input_overflow``, e.g. the Python process held the GIL too
long) is counted in ``stats.overflows`` and, as the driver lost samples, the gap is estimated locally, from the
time between this callback and the previous one (the driver's own capture times when it gives them, taken
before our callback waited for the GIL; else arrival times), and filled with zeros so the sample count keeps
matching time (``stats.extra['filled_samples']``). A local estimate, because "t0 + samples / nominal rate"
drifts from the real clock by the crystal's error: after an hour at 100 ppm, 360 ms. When the consumer is
slower than the microphone, the ring drops its oldest whole blocks (``stats.dropped`` blocks). A device that
stops calling back for ``stall_timeout`` seconds raises SourceError from ``read()``.

Reopening (``close()`` then ``open()``, what the pipeline does after a SourceError) starts a new timeline:
the sample index restarts at 0 and ``t0`` is anchored again over the new stream's first ``anchor_s``, as at
the first opening (the device may have come back with another clock, another latency, or be another
device). A consumer starts a new epoch then (``edgemm.sync.AudioRing.reset()``, which the pipeline calls
after every reopening; the ring also sees the index go backwards).
"""

from __future__ import annotations

import collections
import logging
import math
import threading

import numpy as np

from edgemm.errors import EdgemmError
from edgemm.lazy import import_optional
from edgemm.media import read_wav
from edgemm.preprocess import resample as resample_fn
from edgemm.sources.base import AudioBlock, Source, SourceError, now
from edgemm.sources.patterns import ArrayAudioSource, block_size, default_block

log = logging.getLogger("edgemm.sources")

SD_HINT = "pip install sounddevice; it needs the PortAudio library (Debian/Ubuntu: apt install libportaudio2)."

_lock = threading.Lock()
_open_streams = 0  # PortAudio can only rescan devices (terminate + initialize) while no stream is open
_abandoned: list = []  # streams whose close() hung (JACK server gone): kept alive, never touched again


def _sd():
    return import_optional("sounddevice", SD_HINT)


def refresh_devices() -> bool:
    """Make PortAudio scan the devices again (it lists them once, at initialisation: a JACK server or USB
    microphone that appeared later is invisible until then). Only possible while no stream is open;
    returns whether it happened."""
    sd = _sd()
    with _lock:
        if _open_streams:
            return False
        sd._terminate()  # sounddevice has no public rescan; these are its own init/exit calls
        sd._initialize()
        return True


def list_input_devices() -> list[dict]:
    """[{'index', 'name', 'hostapi', 'channels', 'default_samplerate'}] for every device that can capture."""
    sd = _sd()
    out = []
    for info in sd.query_devices():
        if info["max_input_channels"] > 0:
            out.append({"index": info["index"], "name": info["name"],
                        "hostapi": sd.query_hostapis(info["hostapi"])["name"],
                        "channels": info["max_input_channels"], "default_samplerate": info["default_samplerate"]})
    return out


def _device_list_text() -> str:
    devices = list_input_devices()
    if not devices:
        return "none (no input device is visible to PortAudio)"
    return ", ".join(f"[{d['index']}] '{d['name']}' ({d['hostapi']}, {d['default_samplerate']:g} Hz)" for d in devices)


def resolve_input_device(uri: str, spec, sample_rate: int, channels: int = 1, error=EdgemmError) -> tuple[int, dict]:
    """A device given as 'default', an index or (part of) a name -> (index, info), checked to capture
    ``channels`` float32 channels at ``sample_rate``. Raises ``error`` listing the input devices."""
    sd = _sd()

    def lookup():
        if spec is None or str(spec).strip().lower() in ("", "default"):
            return sd.query_devices(kind="input")  # PortAudio's default input; ValueError/PortAudioError if none
        text = str(spec).strip()
        if text.lstrip("-").isdigit():
            info = sd.query_devices(int(text))
            if info["max_input_channels"] < 1:
                raise ValueError(f"device {text} has no input channels")
            return info
        return sd.query_devices(text, kind="input")  # substring match; ValueError if none or ambiguous

    try:
        info = lookup()
    except (ValueError, sd.PortAudioError):
        # Maybe it appeared after PortAudio was initialised (JACK started later, USB mic plugged in).
        if not refresh_devices():
            info = None
        else:
            try:
                info = lookup()
            except (ValueError, sd.PortAudioError):
                info = None
    if info is None:
        raise error(f"Microphone: {uri} | No input device {spec!r}; expected 'default', an index or a name "
                    f"among: {_device_list_text()}.")
    index = int(info["index"])
    try:
        sd.check_input_settings(device=index, samplerate=float(sample_rate), channels=channels, dtype="float32")
    except (ValueError, sd.PortAudioError) as exc:
        raise error(f"Microphone: {uri} | Device [{index}] '{info['name']}' cannot capture {channels} channel(s) at "
                    f"{sample_rate} Hz ({exc}); expected a rate it supports (its default is "
                    f"{info['default_samplerate']:g} Hz): set ?sample_rate= or choose a device that resamples "
                    "(e.g. ALSA 'default' or 'pulse').") from None
    return index, info


class MicSource(Source):
    """``mic://DEVICE``: a PortAudio input through sounddevice, callback into a ring buffer."""

    modality = "audio"
    live = True

    # Callbacks this far apart mean the stream stalled (a driver buffer holds well under this): see _callback.
    STALL_S = 0.5

    def __init__(self, uri: str, device=None, sample_rate: int = 16000, block: int | None = None,
                 buffer_s: float = 2.0, stall_timeout: float = 2.0, channels: int = 1, latency=0.05,
                 anchor_s: float = 0.25, name: str | None = None):
        super().__init__(uri)
        self.sample_rate = int(sample_rate)
        self.block = int(block or default_block(self.sample_rate))
        self.channels = int(channels)
        self.latency = latency
        self.stall_timeout = float(stall_timeout)
        self.anchor_s = max(0.0, float(anchor_s))
        self.name = name or uri
        self.device_spec = device
        # Checked now, so a missing device or an unsupported rate stops the run before anything starts.
        self.device_index, info = resolve_input_device(uri, device, self.sample_rate, self.channels)
        self.device_name = info["name"]
        blocks = max(2, math.ceil(buffer_s * self.sample_rate / self.block))
        self.capacity = blocks * self.block
        self._buf = np.zeros(self.capacity, np.float32)
        self._head = 0  # absolute index of the oldest unread sample
        self._tail = 0  # absolute index one past the newest sample (samples captured, gaps filled)
        self._arrivals: collections.deque = collections.deque()  # (tail after a callback, now() at it)
        self._t0: float | None = None  # now()-time of sample 0
        self._anchored = False  # this opening's place on the timeline is fixed (after anchor_s)
        self._pending: list = []  # callbacks of the anchoring window: (samples, frames, t_arrival, t_first)
        self._cond = threading.Condition()
        self._stream = None
        self._error: SourceError | None = None
        self._last_callback = 0.0
        self._rate_ref: tuple[int, float] | None = None  # (tail, arrival) at the first callback
        self._prev_cb: tuple[float | None, float, int] | None = None  # previous callback: (ADC time, arrival, frames)
        self._generation = 0  # which opening a callback belongs to (a stream whose close hung may still call)
        self._is_open = False
        self._opened_once = False
        self.stats.extra.update(filled_samples=0, dropped_samples=0, callbacks=0, device=self.device_name)

    # ---------------------------------------------------------------------------------- open / close

    def open(self) -> None:
        global _open_streams
        if self._is_open:
            return
        sd = _sd()
        if self._opened_once:
            # The device may have gone and come back with another index: look it up again (retryable).
            self.device_index, info = resolve_input_device(self.uri, self.device_spec, self.sample_rate,
                                                           self.channels, error=SourceError)
            self.device_name = info["name"]
        with self._cond:
            # Every opening is a new timeline: sample 0 is its first sample, anchored afresh (_anchor). What
            # was not read from the previous opening is dropped.
            self._generation += 1
            self._head = self._tail = 0
            self._t0 = None
            self._arrivals.clear()
            self._anchored = False
            self._pending = []
            self._rate_ref = None
            self._prev_cb = None
            self._error = None
            self._last_callback = now()
        try:
            stream = self._start_stream(sd)
        except (sd.PortAudioError, ValueError) as exc:
            # A device that was unplugged and plugged back may sit at a stale entry of PortAudio's list:
            # rescan once and try again before giving up (the pipeline retries with backoff after that).
            if not (self._opened_once and refresh_devices()):
                raise SourceError(f"Microphone: {self.uri} | Could not start capture on [{self.device_index}] "
                                  f"'{self.device_name}' ({exc}); expected a working input device.") from None
            self.device_index, info = resolve_input_device(self.uri, self.device_spec, self.sample_rate,
                                                           self.channels, error=SourceError)
            self.device_name = info["name"]
            try:
                stream = self._start_stream(sd)
            except (sd.PortAudioError, ValueError) as exc2:
                raise SourceError(f"Microphone: {self.uri} | Could not start capture on [{self.device_index}] "
                                  f"'{self.device_name}' ({exc2}); expected a working input device.") from None
        with _lock:
            _open_streams += 1
        self._stream = stream
        if self._opened_once:
            self.stats.reopened += 1
        self._opened_once = True
        self.stats.extra["latency_s"] = float(stream.latency) if stream.latency < 60 else None
        with self._cond:
            self._is_open = True

    def _start_stream(self, sd):
        generation = self._generation

        def callback(indata, frames, time_info, status):
            self._callback(indata, frames, time_info, status, generation)

        stream = sd.InputStream(device=self.device_index, samplerate=self.sample_rate, channels=self.channels,
                                dtype="float32", latency=self.latency, callback=callback,
                                finished_callback=self._finished)
        try:
            stream.start()
        except Exception:
            stream.close(ignore_errors=True)
            raise
        return stream

    def close(self) -> None:
        global _open_streams
        with self._cond:
            self._is_open = False
            self._cond.notify_all()
        stream, self._stream = self._stream, None
        if stream is None:
            return

        def stop():
            try:
                stream.abort(ignore_errors=True)
                stream.close(ignore_errors=True)
            except Exception:  # noqa: BLE001 - closing must not raise
                pass

        # PortAudio's close hangs forever when the JACK server died under the stream: never block on it.
        closer = threading.Thread(target=stop, name=f"edgemm-mic-close-{self.name}", daemon=True)
        closer.start()
        closer.join(timeout=2.0)
        if closer.is_alive():
            log.warning("Microphone: %s | Closing the stream hung (audio server gone?); abandoning it.", self.uri)
            _abandoned.append(stream)
            return  # PortAudio is wedged: keep counting the stream as open so nobody re-initialises it
        with _lock:
            _open_streams = max(0, _open_streams - 1)

    # -------------------------------------------------------------------------------- PortAudio thread

    def _finished(self) -> None:
        with self._cond:
            if self._is_open and self._error is None:
                self._error = SourceError(f"Microphone: {self.uri} | The input stream stopped; expected it to "
                                          "keep running.")
            self._cond.notify_all()

    def _callback(self, indata, frames, time_info, status, generation: int | None = None) -> None:
        t_arrival = now()
        try:
            x = indata[:, 0] if indata.shape[1] == 1 else indata.mean(axis=1)
            with self._cond:
                if generation is not None and generation != self._generation:
                    return  # a stream of an earlier opening (its close hung): not on this timeline
                self.stats.extra["callbacks"] += 1
                self._last_callback = t_arrival
                if status.input_overflow:
                    self.stats.overflows += 1
                sr = self.sample_rate
                adc, cur = time_info.inputBufferAdcTime, time_info.currentTime
                adc = adc if adc > 0 and cur > 0 else None
                prev, self._prev_cb = self._prev_cb, (adc, t_arrival, frames)
                t_first_bound = t_arrival - frames / sr  # the first sample was captured no later than this
                if not self._anchored:
                    t_first = t_first_bound
                    if adc is not None:
                        t_first = min(t_first_bound, adc + (t_arrival - cur))
                    if status.input_overflow and self._pending:
                        # Samples were lost inside the window: the callbacks before the loss no longer line up
                        # with those after it. Start the window again (a start-up glitch; counted as dropped).
                        lost = sum(p[1] for p in self._pending)
                        self.stats.extra["dropped_samples"] += lost
                        self.stats.dropped += -(-lost // self.block)
                        self._pending = []
                    self._pending.append((np.array(x, np.float32), frames, t_arrival, t_first))
                    if t_arrival - self._pending[0][2] >= self.anchor_s:
                        self._anchor()
                    self._cond.notify_all()
                    return
                # A stall far longer than any driver buffer (an audio server frozen, a device wedged and back)
                # lost what was played meanwhile even when no overflow is flagged (measured as for an overflow:
                # the driver's capture times where it has them, else the host clock). Without this the sample
                # count would lag the host clock by the stall for ever, and every window after it would be
                # "not yet arrived": audio stayed degraded after a frozen JACK server came back.
                stalled = prev is not None and t_arrival - prev[1] > self.STALL_S
                if prev is not None and (status.input_overflow or stalled):
                    # The driver dropped samples: fill them with zeros, so that "sample n was captured at
                    # t0 + n / sr" stays true after the gap.
                    lost = self._lost_samples(prev, adc, t_arrival, frames)
                    if lost >= max(frames, 1):  # shorter than a callback: timing noise, not a loss
                        self._write_zeros(lost)
                        self.stats.extra["filled_samples"] += lost
                self._write(np.asarray(x, np.float32))
                self._arrivals.append((self._tail, t_arrival))
                self._note_rate(t_arrival)
                self._cond.notify_all()
        except Exception as exc:  # noqa: BLE001 - an exception here would stop PortAudio silently
            with self._cond:
                self._error = SourceError(f"Microphone: {self.uri} | Capture callback failed ({exc}).")
                self._cond.notify_all()

    def _lost_samples(self, prev: tuple[float | None, float, int], adc: float | None, t_arrival: float,
                      frames: int) -> int:
        """Samples the driver lost between the previous callback and this one, estimated over that interval
        only (so the crystal's drift since the stream started does not enter).

        With the driver's capture times (ADC time of each buffer's first sample, read by PortAudio before
        our callback waited for the GIL), the first samples of the two buffers are ``adc - prev_adc`` apart:
        the previous buffer's frames plus what was lost. Without them, arrivals: the callbacks completed
        ``t_arrival - prev_arrival`` apart, this buffer's frames plus what was lost (later by any scheduling
        delay of the previous callback, hence only whole callbacks count).
        """
        prev_adc, prev_arrival, prev_frames = prev
        if adc is not None and prev_adc is not None and adc > prev_adc:
            lost = round((adc - prev_adc) * self.sample_rate) - prev_frames
        else:
            lost = round((t_arrival - prev_arrival) * self.sample_rate) - frames
        return min(lost, int(60 * self.sample_rate))  # a clock that jumped is not a minute of lost audio

    def _anchor(self) -> None:
        """Place this opening's samples on the timeline, from the callbacks of its first ``anchor_s``.

        A callback can only be late, never early (it runs after its samples were captured), so the earliest
        estimate of when the opening's first sample was captured, over a few callbacks, is the best one: a
        single first callback is often delayed (stream start-up, a busy machine) and would stamp the whole
        stream late. Nothing is delivered before this, so no timestamp ever changes after it was handed out.
        """
        sr = self.sample_rate
        offset, start = 0, None
        for _, frames, _, t_first in self._pending:
            s = t_first - offset / sr
            start = s if start is None else min(start, s)
            offset += frames
        self._t0 = start - self._tail / sr  # (the tail is 0 here: nothing of this opening is written yet)
        for samples, _, t_arrival, _ in self._pending:
            self._write(samples)
            self._arrivals.append((self._tail, t_arrival))
            self._note_rate(t_arrival)
        self._pending = []
        self._anchored = True

    def _note_rate(self, t_arrival: float) -> None:
        if self._rate_ref is None:
            self._rate_ref = (self._tail, t_arrival)
        elif t_arrival - self._rate_ref[1] > 0.5:
            # Samples per second of now()'s clock since the stream started: the device clock as seen from
            # here (sync.py fits drift properly; this is for summaries and quick checks).
            n0, t0 = self._rate_ref
            self.stats.extra["rate_measured"] = (self._tail - n0) / (t_arrival - t0)

    def _make_room(self, n: int) -> None:
        over = self._tail + n - self._head - self.capacity
        if over > 0:  # drop the oldest whole blocks, so blocks stay on the sample grid
            drop = -(-over // self.block) * self.block
            self._head += drop
            self.stats.dropped += drop // self.block
            self.stats.extra["dropped_samples"] += drop

    def _write(self, x: np.ndarray) -> None:
        if len(x) > self.capacity:  # a callback bigger than the whole ring: keep its newest part
            skip = len(x) - self.capacity
            self._write_zeros(skip)  # advances the indices; those zeros are then dropped below
            x = x[skip:]
        self._make_room(len(x))
        pos = self._tail % self.capacity
        first = min(len(x), self.capacity - pos)
        self._buf[pos:pos + first] = x[:first]
        self._buf[:len(x) - first] = x[first:]
        self._tail += len(x)

    def _write_zeros(self, n: int) -> None:
        while n > 0:
            step = min(n, self.capacity)
            self._write(np.zeros(step, np.float32))
            n -= step

    # --------------------------------------------------------------------------------------------- read

    def read(self, timeout: float | None = None) -> AudioBlock | None:
        deadline = None if timeout is None else now() + max(0.0, timeout)
        with self._cond:
            while True:
                if not self._is_open:
                    raise SourceError(f"Microphone: {self.uri} | read() before open() or after close(); expected "
                                      "an open source.")
                if self._tail - self._head >= self.block:
                    return self._take_block()
                if self._error is not None:
                    raise self._error
                t_now = now()
                silent = t_now - self._last_callback
                if silent > self.stall_timeout:
                    self._error = SourceError(f"Microphone: {self.uri} | No audio for {silent:.1f} s (stall "
                                              f"timeout {self.stall_timeout:g} s); expected the device to keep "
                                              "delivering samples.")
                    raise self._error
                wait = self._last_callback + self.stall_timeout - t_now
                if deadline is not None:
                    if deadline <= t_now:
                        return None
                    wait = min(wait, deadline - t_now)
                self._cond.wait(max(wait, 0.0005))

    def _take_block(self) -> AudioBlock:
        first = self._head
        end = first + self.block
        pos = first % self.capacity
        if pos + self.block <= self.capacity:
            samples = self._buf[pos:pos + self.block].copy()
        else:
            samples = np.concatenate([self._buf[pos:], self._buf[:self.block - (self.capacity - pos)]])
        self._head = end
        while self._arrivals and self._arrivals[0][0] < end:
            self._arrivals.popleft()
        t_arrival = self._arrivals[0][1] if self._arrivals else now()
        self.stats.delivered += 1
        return AudioBlock(samples, self._t0 + first / self.sample_rate, self.sample_rate, first, t_arrival,
                          self.name)


class WavSource(ArrayAudioSource):
    """``file://x.wav``: a WAV file resampled to ``sample_rate`` (saying so in the log), in blocks, paced as
    live (``realtime=True``) or as fast as read; nothing is dropped unless ``live=True``."""

    def __init__(self, uri: str, path, sample_rate: int | None = None, resample: bool = True,
                 block: int | None = None, block_s: float | None = None, **kw):
        data, rate = read_wav(path)
        if sample_rate and int(sample_rate) != rate:
            if not resample:
                raise EdgemmError(f"Audio file: {path} | Sample rate {rate} Hz; expected {int(sample_rate)} Hz "
                                  "(resampling is off: resample=false).")
            log.info("Audio file: %s | Resampling %d Hz -> %d Hz.", path, rate, int(sample_rate))
            data = resample_fn(data, rate, int(sample_rate))
            self.resampled_from = rate
            rate = int(sample_rate)
        else:
            self.resampled_from = None
        self.path = str(path)
        super().__init__(data, rate, block=block_size(rate, block, block_s), uri=uri, **kw)
