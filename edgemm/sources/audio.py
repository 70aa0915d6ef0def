"""Microphones (PortAudio through sounddevice) and WAV files, delivered as fixed-size timestamped blocks.

Microphone: PortAudio runs in a capture process of its own (edgemm/sources/mic_worker.py: in-process,
a dead audio server leaves PortAudio unable to close, re-initialise or exit); a reader thread here hands
each of its callbacks (whatever the driver has, any size, with the driver's times) to ``_callback``, which
stores the samples in a bounded ring; ``read(timeout)`` cuts blocks of ``block`` samples. Every opening
starts a new process, so PortAudio lists the devices afresh (a restarted audio server, a microphone plugged
in later); closing kills it (SIGKILL: nothing to wait for).

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
stops calling back for ``stall_timeout`` seconds raises SourceError from ``read()``; so does one that delivers
nothing but exact digital zeros for ``silence_s`` seconds, which no microphone makes (every real one has a
noise floor) but PortAudio feeds when the JACK client or device behind the stream went away. From then on
blocks of exact zeros are dropped, across reopenings, until real signal returns: the pipeline keeps the
modality degraded until then.

Reopening (``close()`` then ``open()``, what the pipeline does after a SourceError) starts a new timeline:
the sample index restarts at 0 and ``t0`` is anchored again over the new stream's first ``anchor_s``, as at
the first opening (the device may have come back with another clock, another latency, or be another
device). A consumer starts a new epoch then (``edgemm.sync.AudioRing.reset()``, which the pipeline calls
after every reopening; the ring also sees the index go backwards).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import logging
import math
import subprocess
import sys
import threading
from types import SimpleNamespace

import numpy as np

from edgemm.errors import EdgemmError
from edgemm.media import read_wav
from edgemm.preprocess import resample as resample_fn
from edgemm.sources import mic_worker
from edgemm.sources.base import AudioBlock, Source, SourceError, SourceMissing, now
from edgemm.sources.patterns import ArrayAudioSource, block_size, default_block

log = logging.getLogger("edgemm.sources")

PIPE_BYTES = 1 << 20  # the capture process's pipe (Linux's default limit for an unprivileged process)


class _Worker:
    """One capture process (edgemm/sources/mic_worker.py) and the thread reading its messages.

    ``handshake`` holds its first message (``I`` info or ``E`` error) once it came; ``on_block(payload)`` and
    ``on_end(reason)`` are called in the reader thread. ``kill()`` never waits long: SIGKILL, then at most
    ``KILL_WAIT_S`` for the kernel to reap it."""

    KILL_WAIT_S = 1.0

    def __init__(self, cfg: dict, on_block, on_end):
        self.proc = subprocess.Popen([sys.executable, mic_worker.__file__, json.dumps(cfg)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)  # a terminal's Ctrl-C is for edgemm, which closes us
        with contextlib.suppress(OSError, AttributeError):  # Linux: 64 KiB -> 1 MiB, ~16 s of 16 kHz mono
            # The pipe holds what the process captured while this process could not read (the GIL held by a
            # long C call, a loaded machine): its callbacks are never held up by us.
            fcntl.fcntl(self.proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self.handshake: tuple[bytes, dict] | None = None
        self.came = threading.Event()
        self.stderr: collections.deque = collections.deque(maxlen=5)  # its last lines, for error messages
        self._on_block, self._on_end = on_block, on_end
        self.killed = False
        threading.Thread(target=self._read, name="edgemm-mic-reader", daemon=True).start()
        threading.Thread(target=self._read_stderr, name="edgemm-mic-stderr", daemon=True).start()

    def _read(self) -> None:
        out = self.proc.stdout
        reason = "the capture process exited"
        try:
            while True:
                head = out.read(mic_worker.FRAME.size)
                if len(head) < mic_worker.FRAME.size:
                    break
                kind, size = mic_worker.FRAME.unpack(head)
                payload = out.read(size) if size else b""
                if len(payload) < size:
                    break
                if kind == b"B":
                    self._on_block(payload)
                elif kind in (b"I", b"E"):
                    self.handshake = (kind, json.loads(payload))
                    self.came.set()
                elif kind == b"F":
                    reason = "PortAudio stopped the input stream"
        except (OSError, ValueError):  # the pipe closed under us (kill())
            pass
        self.came.set()
        if not self.killed:
            tail = " | ".join(self.stderr)
            self._on_end(reason + (f" ({tail})" if tail else ""))

    def _read_stderr(self) -> None:
        try:
            for line in self.proc.stderr:
                text = line.decode(errors="replace").strip()
                if text:
                    self.stderr.append(text)
                    log.debug("mic worker %d: %s", self.proc.pid, text)
        except (OSError, ValueError):
            pass

    def kill(self) -> None:
        self.killed = True
        try:
            self.proc.kill()  # nothing in it is worth waiting for: PortAudio may be wedged (see mic_worker)
        except OSError:
            pass
        try:
            self.proc.wait(self.KILL_WAIT_S)
        except subprocess.TimeoutExpired:  # stuck in the kernel (a driver): the reaper gets it later
            log.warning("microphone capture process %d did not exit at once after SIGKILL", self.proc.pid)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                pipe.close()
            except OSError:
                pass


def _worker_error(worker: _Worker, uri: str, timeout: float, error=SourceError) -> SourceError:
    if worker.handshake is None:
        tail = " | ".join(worker.stderr)
        return error(f"Microphone: {uri} | The capture process gave no answer within {timeout:g} s"
                     f"{' (' + tail + ')' if tail else ''}; expected it to open the device.")
    msg = worker.handshake[1].get("message", "unknown error")
    missing = worker.handshake[1].get("missing")
    return (SourceMissing if missing else error)(msg)


def probe_input_device(uri: str, device, sample_rate: int, channels: int = 1, timeout: float = 10.0) -> dict:
    """Check in a capture process (a fresh PortAudio, so it sees devices that appeared since) that the device
    exists and captures ``channels`` float32 channels at ``sample_rate``: its info, else SourceMissing (not
    there, may appear) or EdgemmError (there, but unusable as asked), listing the input devices."""
    cfg = {"uri": uri, "device": device, "sample_rate": int(sample_rate), "channels": int(channels), "check": True}
    worker = _Worker(cfg, lambda payload: None, lambda reason: None)
    try:
        worker.came.wait(timeout)
        if worker.handshake is not None and worker.handshake[0] == b"I":
            return worker.handshake[1]
        raise _worker_error(worker, uri, timeout, error=EdgemmError)
    finally:
        worker.kill()


class MicSource(Source):
    """``mic://DEVICE``: a PortAudio input, captured by a child process (edgemm/sources/mic_worker.py, for
    why), its callbacks turned into blocks through a ring buffer here."""

    modality = "audio"
    live = True

    # Callbacks this far apart mean the stream stalled (a driver buffer holds well under this): see _callback.
    STALL_S = 0.5

    def __init__(self, uri: str, device=None, sample_rate: int = 16000, block: int | None = None,
                 buffer_s: float = 2.0, stall_timeout: float = 2.0, channels: int = 1, latency=0.05,
                 anchor_s: float = 0.25, silence_s: float = 3.0, open_timeout: float = 5.0,
                 name: str | None = None):
        super().__init__(uri)
        self.sample_rate = int(sample_rate)
        self.block = int(block or default_block(self.sample_rate))
        self.channels = int(channels)
        self.latency = latency
        self.stall_timeout = float(stall_timeout)
        self.anchor_s = max(0.0, float(anchor_s))
        # Exact digital zeros this long are no microphone's (every real one has a noise floor): a JACK client
        # that went away, a disconnected port, a muted stream. 0: never.
        self.silence_s = max(0.0, float(silence_s))
        # A capture process that has not opened the device within this is killed and the opening fails (tried
        # again with backoff): starting one takes ~0.3 s, ~1.5 s on a loaded machine; an audio server that is
        # just starting may leave it hanging in its connect.
        self.open_timeout = float(open_timeout)
        self.name = name or uri
        self.device_spec = device
        # Checked now, so a missing device or an unsupported rate stops the run before anything starts.
        info = probe_input_device(uri, device, self.sample_rate, self.channels, max(15.0, 3 * self.open_timeout))
        self.device_index, self.device_name = int(info["index"]), info["name"]
        blocks = max(2, math.ceil(buffer_s * self.sample_rate / self.block))
        self.capacity = blocks * self.block
        self._buf = np.zeros(self.capacity, np.float32)
        self._head = 0  # absolute index of the oldest unread sample
        self._tail = 0  # absolute index one past the newest sample (samples captured, gaps filled)
        self._arrivals: collections.deque = collections.deque()  # (tail after a callback, now() at it)
        self._t0: float | None = None  # now()-time of sample 0
        self._anchored = False  # this opening's place on the timeline is fixed (after anchor_s)
        self._pending: list = []  # callbacks of the anchoring window: (samples, frames, t_arrival, t_first)
        self._anchoring_since: float | None = None  # arrival of this opening's first callback
        self._cond = threading.Condition()
        self._worker: _Worker | None = None
        self._error: SourceError | None = None
        self._last_callback = 0.0
        self._rate_ref: tuple[int, float] | None = None  # (tail, arrival) at the first callback
        self._prev_cb: tuple[float | None, float, int] | None = None  # previous callback: (ADC time, arrival, frames)
        self._generation = 0  # which opening a callback belongs to
        self._zero_run = 0  # samples since the last one that was not exactly zero (callbacks only, not gaps)
        self._await_signal = False  # after digital silence: hand out nothing until a sample is not zero
        self._is_open = False
        self._opened_once = False
        self.stats.extra.update(filled_samples=0, dropped_samples=0, callbacks=0, silent_dropped=0, reanchored=0,
                                device=self.device_name)

    # ---------------------------------------------------------------------------------- open / close

    def open(self) -> None:
        if self._is_open:
            return
        with self._cond:
            # Every opening is a new timeline: sample 0 is its first sample, anchored afresh (_anchor). What
            # was not read from the previous opening is dropped.
            self._generation += 1
            generation = self._generation
            self._head = self._tail = 0
            self._t0 = None
            self._arrivals.clear()
            self._anchored = False
            self._pending = []
            self._anchoring_since = None
            self._rate_ref = None
            self._prev_cb = None
            self._error = None
            self._zero_run = 0
            self._last_callback = now()
        cfg = {"uri": self.uri, "device": self.device_spec, "sample_rate": self.sample_rate,
               "channels": self.channels, "latency": self.latency}
        # A new process is a freshly initialised PortAudio: the device is looked up again (it may have come
        # back with another index, behind a restarted audio server).
        worker = _Worker(cfg, lambda payload: self._on_block(payload, generation),
                         lambda reason: self._on_end(reason, generation))
        self._worker = worker
        if not worker.came.wait(self.open_timeout) or worker.handshake is None or worker.handshake[0] != b"I":
            self._worker = None
            worker.kill()
            raise _worker_error(worker, self.uri, self.open_timeout)
        info = worker.handshake[1]
        self.device_index, self.device_name = int(info["index"]), info["name"]
        self.stats.extra["device"] = self.device_name
        self.stats.extra["latency_s"] = info.get("latency")
        if self._opened_once:
            self.stats.reopened += 1
        self._opened_once = True
        with self._cond:
            self._is_open = True

    def close(self) -> None:
        with self._cond:
            self._is_open = False
            self._generation += 1  # whatever the old process still sends is not on any timeline
            self._cond.notify_all()
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.kill()  # bounded (KILL_WAIT_S): closing never blocks the pipeline or its exit

    # ------------------------------------------------------------------------------- the reader thread

    def _on_block(self, payload: bytes, generation: int) -> None:
        frames, adc, cur, t_arrival, flags = mic_worker.BLOCK.unpack_from(payload)
        data = np.frombuffer(payload, np.float32, offset=mic_worker.BLOCK.size).reshape(frames, self.channels)
        self._callback(data, frames, SimpleNamespace(inputBufferAdcTime=adc, currentTime=cur),
                       SimpleNamespace(input_overflow=bool(flags & mic_worker.OVERFLOW)), generation, t_arrival)

    def _on_end(self, reason: str, generation: int) -> None:
        with self._cond:
            if generation == self._generation and self._is_open and self._error is None:
                self._error = SourceError(f"Microphone: {self.uri} | The input stream stopped: {reason}; expected "
                                          "it to keep running.")
            self._cond.notify_all()

    def _callback(self, indata, frames, time_info, status, generation: int | None = None,
                  t_arrival: float | None = None) -> None:
        """One PortAudio callback: its samples (frames x channels), its time info and status. ``t_arrival``:
        when it ran (the capture process's clock is ``now()``'s); now when not given."""
        t_arrival = now() if t_arrival is None else t_arrival
        try:
            x = indata[:, 0] if indata.shape[1] == 1 else indata.mean(axis=1)
            with self._cond:
                if generation is not None and generation != self._generation:
                    return  # a stream of an earlier opening (its close hung): not on this timeline
                self.stats.extra["callbacks"] += 1
                self._last_callback = t_arrival
                nonzero = np.flatnonzero(x)
                self._zero_run = self._zero_run + len(x) if nonzero.size == 0 else len(x) - 1 - int(nonzero[-1])
                if status.input_overflow:
                    self.stats.overflows += 1
                sr = self.sample_rate
                adc, cur = time_info.inputBufferAdcTime, time_info.currentTime
                adc = adc if adc > 0 and cur > 0 else None
                prev, self._prev_cb = self._prev_cb, (adc, t_arrival, frames)
                t_first_bound = t_arrival - frames / sr  # the first sample was captured no later than this
                if self._anchored and prev is not None and t_arrival - prev[1] > self.STALL_S:
                    self._reanchor()
                if not self._anchored:
                    t_first = t_first_bound
                    if adc is not None:
                        t_first = min(t_first_bound, adc + (t_arrival - cur))
                    if self._anchoring_since is None:
                        self._anchoring_since = t_arrival
                    if status.input_overflow and self._pending:
                        if t_arrival - self._anchoring_since < max(1.0, 4 * self.anchor_s):
                            # Samples were lost inside the window: the callbacks before the loss no longer line
                            # up with those after it. Start the window again (a start-up glitch; counted as
                            # dropped).
                            lost = sum(p[1] for p in self._pending)
                            self.stats.extra["dropped_samples"] += lost
                            self.stats.dropped += -(-lost // self.block)
                            self._pending = []
                        else:
                            # Losses keep coming (a loaded machine, an audio server running late): restarting
                            # for ever delivered nothing at all. Anchor on what lined up; this callback then
                            # goes on as any later one, its loss measured and filled.
                            self._anchor()
                    if not self._anchored:
                        self._pending.append((np.array(x, np.float32), frames, t_arrival, t_first))
                        if t_arrival - self._pending[0][2] >= self.anchor_s:
                            self._anchor()
                        self._cond.notify_all()
                        return
                if prev is not None and status.input_overflow:
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

    def _reanchor(self) -> None:
        """After a stall far longer than any driver buffer (an audio server frozen, a device wedged and back):
        place what follows on the timeline afresh, as at an opening.

        Counting the lost samples does not work here: the driver's clock stops with its server (a JACK server
        stopped for 0.98 s resumed with its frame time 0.46 s on, then caught up in a burst of callbacks), so
        neither its stamps nor the callbacks' arrivals say how much of the stall's audio is gone. Filling by
        the stamps left the count half the stall behind the host clock for ever (44 % of every later window
        "not yet arrived"; after a second stall the audio stayed degraded). The stall is a gap of unknown
        length: the samples go on counting, but their time comes from the next ``anchor_s`` of callbacks
        (``_anchor``); the ring sees the new stamps and starts a new epoch. What was not read yet is dropped
        (blocks are stamped when read, and those came before the gap)."""
        unread = self._tail - self._head
        if unread:
            self.stats.extra["dropped_samples"] += unread
            self.stats.dropped += -(-unread // self.block)
        # Whole blocks from here on: the next sample starts one, so no block straddles the gap.
        self._tail += (-self._tail) % self.block
        self._head = self._tail
        self._arrivals.clear()
        self._rate_ref = None
        self._anchored = False
        self._pending = []
        self._anchoring_since = None
        self.stats.extra["reanchored"] += 1

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
        self._t0 = start - self._tail / sr  # (the tail is 0 here at an opening, on after a stall: _reanchor)
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
                self._check_silence()
                if self._error is not None:
                    raise self._error
                if self._tail - self._head >= self.block:
                    block = self._take_block()
                    if self._await_signal:
                        if not block.samples.any():
                            self.stats.extra["silent_dropped"] += 1
                            continue
                        self._await_signal = False  # real signal again: the pipeline sees it as recovered
                    return block
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

    def _check_silence(self) -> None:
        """Exact zeros for ``silence_s``: the source fails (the pipeline marks audio lost and reopens it), and
        from then on blocks of exact zeros are dropped, also after reopening, until a sample is not zero."""
        if not self.silence_s or self._await_signal or self._error is not None:
            return
        if self._zero_run >= self.silence_s * self.sample_rate:
            self._await_signal = True
            self._error = SourceError(f"Microphone: {self.uri} | Digital silence: nothing but exact zeros for "
                                      f"{self._zero_run / self.sample_rate:.1f} s (silence_s {self.silence_s:g}); "
                                      "expected a microphone's signal (a JACK client or device that went away is "
                                      "fed as zeros).")

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
