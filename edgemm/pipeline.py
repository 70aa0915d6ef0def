"""The streaming pipeline: capture threads -> bounded ports -> one inference worker -> decisions -> sinks.

    camera ──capture thread──► video port (flow limiter: at most N frames in flight) ─┐
                                                                                       ├─► worker ─► sinks
    microphone ──capture thread──► AudioRing (by sample index, drift-corrected) ──────┘   (step())

- Ports are bounded. A live source drops the oldest queued frame when the worker is busy, so latency
  never grows with a slow model; a file source blocks instead and loses nothing. Audio goes into a ring
  of fixed size (live: the oldest is overwritten; file: the reader waits for the worker to catch up).
- One worker (the thread calling ``step()``) runs the model; inference never runs concurrently with
  itself, which is what a GPU wants and what keeps the latency accounting honest.
- A source that fails (SourceError) or goes silent is reopened with exponential backoff by its capture
  thread; loss and recovery are events, and meanwhile the other modality is fused alone (``degraded``).
  A live source whose thread crashes (a bug: any other exception) is reopened the same way; one that
  keeps crashing, or a file that crashes, fails the run: ``step()`` raises ``CaptureFailed``.
  Microphone overflows are counted, never fatal.
- Live frames are prepared (resized, normalised) in the capture thread while the model runs, except those
  that will not be used: dropped at the entry, likely replaced before the worker is free, or not due for
  a video encoder running at its own rate. Audio-only ticks on a file step through all of it.
- Everything is bounded (queues, ring, frame history, latency statistics by reservoir sampling), so
  memory stays flat however long it runs.

The main loop reads like jetson-utils' video-viewer::

    with Pipeline(bundle, video=cam, audio=mic, sinks=[make_sink("console")]) as pipe:
        while pipe.is_streaming():
            pipe.step()
        print(pipe.summary())
"""

from __future__ import annotations

import collections
import logging
import random
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgemm import bench, watchdog
from edgemm.bundle import Bundle
from edgemm.decisions import AlertRule, Decisions, decode_output
from edgemm.decisions import attribution as attribution_of
from edgemm.errors import EdgemmError
from edgemm.fusion import FusionModel
from edgemm.scheduler import LiveFusion, LiveSettings, Prepared, StepResult, Tick
from edgemm.sinks import Sink
from edgemm.sources.base import AudioBlock, EndOfStream, Frame, Source, SourceError, now
from edgemm.sync import AudioRing

log = logging.getLogger("edgemm.pipeline")

STAGES = ("capture", "preprocess", "infer", "postprocess", "sink", "total")
FILE_AUDIO_WAIT_S = 5.0  # a frame from a file waits this long at most for its audio (ended audio: not at all)


@dataclass
class PipelineSettings(LiveSettings):
    max_in_flight: int = 2  # frames admitted and not yet finished; 2 = one in the model, the newest waiting
    stale_s: float = 0.5  # a source that delivered nothing this long counts as lost (at least 4 periods)
    stall_reopen_s: float = 5.0  # ... and is closed and reopened after this long
    reconnect_initial_s: float = 0.5  # backoff before the first reopen, doubled each failure
    reconnect_max_s: float = 10.0
    ring_s: float = 10.0  # audio kept, seconds
    tick_hz: float | None = None  # inference rate while there is no video (None: camera rate, else 10 Hz)
    read_timeout_s: float = 0.2
    reservoir: int = 20000  # latency samples kept per stage for the percentiles (uniform over the run)
    max_capture_crashes: int = 3  # a live source crashing this often in a row fails the run (step() raises)
    # Python hands the GIL to a waiting thread after this long (default 5 ms). The worker spends its time
    # in the model with the GIL released; when the model returns while a capture thread runs Python code,
    # the worker waits up to this long for the GIL. 1 ms while streaming (restored on close); None: leave it.
    gil_switch_interval_s: float | None = 0.001


class Reservoir:
    """A fixed-size uniform sample of a stream (Vitter's algorithm R) plus exact count/min/max/sum."""

    def __init__(self, size: int, seed: int = 0):
        self.size = size
        self.values: list[float] = []
        self.count = 0
        self._rng = random.Random(seed)

    def add(self, x: float) -> None:
        self.count += 1
        if len(self.values) < self.size:
            self.values.append(x)
        else:
            j = self._rng.randrange(self.count)
            if j < self.size:
                self.values[j] = x

    def stats_ms(self, scale: float = 1.0) -> dict | None:
        """latency_stats of the sample, in ms (values are seconds unless scale says otherwise)."""
        if not self.values:
            return None
        st = bench.latency_stats(np.asarray(self.values) * scale)
        st["count"] = self.count
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in st.items()}


class FlowLimiter:
    """The entry of a port: at most ``max_in_flight`` items admitted and not yet ``done()``.

    drop_oldest (live): when full, the newest item replaces the oldest one still waiting; if every admitted
    item is already being processed the new one is dropped at the entry (MediaPipe's FlowLimiter).
    block (file): put() waits for room, so nothing is lost.
    """

    def __init__(self, max_in_flight: int, drop_oldest: bool):
        if max_in_flight < 1:
            raise EdgemmError(f"Flow limit: {max_in_flight} | Expected at least 1 frame in flight.")
        self.max_in_flight = max_in_flight
        self.drop_oldest = drop_oldest
        self._q: collections.deque = collections.deque()
        self._in_flight = 0
        self._cond = threading.Condition()
        self.admitted = 0
        self.dropped = 0

    def put(self, item, stop: threading.Event | None = None) -> bool:
        with self._cond:
            if self._in_flight < self.max_in_flight:
                return self._admit(item)
            if self.drop_oldest:
                self.dropped += 1
                if self._q:
                    self._q.popleft()  # replaced by the newest: in-flight count unchanged
                    self._q.append(item)
                    self.admitted += 1
                    self._cond.notify_all()
                    return True
                return False
            while self._in_flight >= self.max_in_flight:
                if stop is not None and stop.is_set():
                    return False
                self._cond.wait(0.1)
            return self._admit(item)

    def _admit(self, item) -> bool:
        self._q.append(item)
        self._in_flight += 1
        self.admitted += 1
        self._cond.notify_all()
        return True

    def entry(self) -> str:
        """What put() would do with an item now: 'admit', 'replace' (the waiting one) or 'drop'."""
        with self._cond:
            if self._in_flight < self.max_in_flight or not self.drop_oldest:
                return "admit"
            return "replace" if self._q else "drop"

    def get(self, timeout: float | None = None):
        with self._cond:
            if not self._q:
                self._cond.wait(timeout)
            return self._q.popleft() if self._q else None

    def done(self) -> None:
        with self._cond:
            self._in_flight = max(0, self._in_flight - 1)
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._q)


@dataclass
class _VideoItem:
    frame: Frame
    prepared: Prepared | None  # None: not prepared in the capture thread (the worker builds the tensors)
    t_in: float  # now() when the capture thread got it (glass time for files read faster than real time)


class CaptureFailed(EdgemmError):
    """A capture thread kept crashing (a bug in a source, or data the model's preprocessing refuses).

    Raised from ``Pipeline.step()``, so ``edgemm run`` exits 1 with one line and a service manager restarts
    it; the traceback is in the log."""


class Capture(threading.Thread):
    """Reads one source until stopped; reopens it with exponential backoff when it fails or stalls.

    An unexpected exception (not a SourceError) is a crash: a live source is then treated as lost and
    reopened like after a SourceError (the traceback is logged once), unless it crashes
    ``max_capture_crashes`` times in a row without delivering anything in between; a file is not reopened
    (it would replay from the start). Then the failure is kept in ``fatal`` and ``Pipeline.step()`` raises it.
    """

    def __init__(self, pipeline: Pipeline, source: Source, modality: str):
        super().__init__(name=f"edgemm-capture-{modality}", daemon=True)
        self.p = pipeline
        self.source = source
        self.modality = modality
        self.live = bool(getattr(source, "live", True))
        self.up = True  # the pipeline opened it before starting us
        self.ended = False
        self.reconnects = 0
        self.failures = 0
        self.crashes = 0
        self._crashes_in_a_row = 0
        self.fatal: BaseException | None = None
        self.items = 0
        self.last_item: float | None = None  # now() of the last delivery (or of the last reopening)
        self.period: float | None = None  # EMA of the delivery interval
        self._skip_period = False  # the next interval spans a reopening: not a delivery period
        self.lost_at: float | None = None
        self.last_error = ""
        self._is_open = True
        self._close_lock = threading.Lock()

    @property
    def uri(self) -> str:
        return getattr(self.source, "uri", self.modality)

    def _stale_after(self) -> float:
        return max(self.p.settings.stale_s, 4 * (self.period or 0.0))

    def _lost(self, reason: str) -> None:
        if self.up:
            self.up = False
            self.lost_at = now()
            self.p._event({"event": "source_lost", "modality": self.modality, "source": self.uri, "reason": reason})
            log.warning("%s source %s lost: %s", self.modality, self.uri, reason)

    def _recovered(self) -> None:
        if not self.up:
            self.up = True
            down = now() - (self.lost_at or now())
            self.p._event({"event": "source_recovered", "modality": self.modality, "source": self.uri,
                           "down_s": round(down, 3), "reconnects": self.reconnects})
            log.warning("%s source %s recovered after %.1f s", self.modality, self.uri, down)
            self.p._modality_recovered(self.modality)

    def _close_source(self) -> None:
        with self._close_lock:  # the thread and Pipeline.close() may both get here
            if not self._is_open:
                return
            self._is_open = False
            try:
                self.source.close()
            except Exception as exc:  # noqa: BLE001 - a broken device may fail to close; we reopen anyway
                log.debug("closing %s: %s", self.uri, exc)

    def _reopen(self) -> bool:
        """Close and reopen with backoff until it opens or the pipeline stops. True when open again."""
        s = self.p.settings
        self._close_source()
        delay = s.reconnect_initial_s
        while not self.p._stop.is_set():
            if self.p._stop.wait(delay):
                return False
            self.reconnects += 1
            try:
                self.source.open()
                self._is_open = True
                if self.modality == "audio" and self.p.ring is not None:
                    # A reopened source is a new timeline (a microphone counts samples from 0 again and
                    # anchors its clock afresh): the ring starts a new epoch (content, anchor, drift fit).
                    self.p.ring.reset()
                # Silence is measured from now: a source that needs a moment before its first item (a
                # microphone anchoring its clock, a stream waiting for a keyframe) is not lost again at
                # once, and the wait is not a delivery period.
                self.last_item = now()
                self._skip_period = True
                return True
            except (SourceError, EdgemmError, OSError) as exc:
                self.failures += 1
                self.last_error = str(exc)
                log.info("reopening %s failed (%s); next try in %.1f s", self.uri, exc, min(delay * 2, s.reconnect_max_s))
                delay = min(delay * 2, s.reconnect_max_s)
        return False

    def run(self) -> None:
        try:
            while not self.p._stop.is_set():
                try:
                    if not self._read_one():
                        return
                except Exception as exc:  # noqa: BLE001 - a bug in a source or in preparing its data
                    if not self._crashed(exc):
                        return
        finally:
            self._close_source()

    def _read_one(self) -> bool:
        """Read and deliver one item (or handle the source's end or failure). False: the thread is done."""
        s = self.p.settings
        try:
            item = self.source.read(s.read_timeout_s)
        except EndOfStream as exc:
            if not self.live:
                self.ended = True
                if self.modality == "audio" and self.p.ring is not None:
                    self.p.ring.mark_ended()
                self.p._event({"event": "source_ended", "modality": self.modality, "source": self.uri})
                return False
            self.last_error = str(exc)
            self._lost(f"stream ended ({exc})")
            return self._reopen()
        except SourceError as exc:
            self.last_error = str(exc)
            self._lost(str(exc))
            return self._reopen()
        t = now()
        if item is None:
            quiet = t - (self.last_item or self.p.started_at or t)
            if self.up and quiet > self._stale_after():
                self._lost(f"no data for {quiet:.1f} s")
            if quiet > max(s.stall_reopen_s, self._stale_after()):
                return self._reopen()
            return True
        if self.last_item is not None and not self._skip_period:
            dt = t - self.last_item
            self.period = dt if self.period is None else 0.9 * self.period + 0.1 * dt
        self._skip_period = False
        self.last_item = t
        self.items += 1
        self._recovered()
        self.p._deliver(self.modality, item, self)
        self._crashes_in_a_row = 0
        return True

    def _crashed(self, exc: BaseException) -> bool:
        """An unexpected exception in this thread. True: carry on (reopened); False: the thread is done."""
        self.crashes += 1
        self._crashes_in_a_row += 1
        self.last_error = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line
        if self.crashes == 1:
            log.exception("capture thread for %s crashed", self.uri)
        else:
            log.warning("capture thread for %s crashed again (%d times): %s", self.uri, self.crashes, self.last_error)
        limit = self.p.settings.max_capture_crashes
        if self.live and self._crashes_in_a_row < limit:
            self._lost(f"capture crashed: {self.last_error}")
            return self._reopen()
        self._lost(f"capture failed: {self.last_error}")
        why = (f"crashed {self._crashes_in_a_row} times in a row" if self.live else "crashed reading a file")
        self.fatal = CaptureFailed(f"Capture: {self.uri} | The {self.modality} capture {why} ({self.last_error}); "
                                   "expected a source that delivers frames/blocks the model's preprocessing "
                                   "accepts (traceback in the log).")
        return False


class Pipeline:
    """A running bundle on live or file sources. Use as a context manager; call step() until not streaming."""

    def __init__(self, model: Bundle | FusionModel, video: Source | None = None, audio: Source | None = None,
                 sinks: Iterable[Sink] = (), settings: PipelineSettings | None = None,
                 alerts: Iterable[AlertRule] = (), backend: str = "onnxruntime", threads: int | None = None,
                 duration_s: float | None = None):
        self.settings = s = settings or PipelineSettings()
        self.model = model if isinstance(model, FusionModel) else FusionModel(model, backend, threads)
        self.manifest = self.model.manifest
        self.modalities = self.manifest.modalities()
        self.sources = {m: src for m, src in (("video", video), ("audio", audio)) if src is not None}
        for mod in self.modalities:
            if mod not in self.sources:
                article = "an" if mod == "audio" else "a"
                raise EdgemmError(f"Model: {self.manifest.name} | Has {article} {mod} input but no {mod} source "
                                  f"was given; expected --{mod} URI.")
        for mod in list(self.sources):
            if mod not in self.modalities:
                log.warning("the model has no %s input: the %s source is not used", mod, mod)
                del self.sources[mod]
        if not self.sources:
            raise EdgemmError(f"Model: {self.manifest.name} | Has no video or audio input; expected a model "
                              "whose inputs a camera or a microphone can feed.")
        self.ring = None
        audio_specs = [sp for _, sp in self.manifest.all_inputs() if sp.modality == "audio"]
        if audio_specs:
            rate = audio_specs[0].preprocess.sample_rate
            # Only a live device's arrival times follow its sample clock; a file read ahead or paced by us
            # says nothing about drift, so its sample count is taken as the truth.
            self.ring = AudioRing(rate, capacity_s=max(s.ring_s, 2 * max(sp.preprocess.window_s for sp in audio_specs)),
                                  correct_drift=bool(getattr(self.sources.get("audio"), "live", True)))
        self.live = LiveFusion(self.model, self.ring, s)
        if self.ring is not None and not getattr(self.sources.get("audio"), "live", True):
            self.live.audio_wait_s = FILE_AUDIO_WAIT_S
        self.decisions = Decisions(dict(self.model.output_specs), list(alerts))
        self.sinks = list(sinks)
        self.duration_s = duration_s
        video_src = self.sources.get("video")
        self.video_port = FlowLimiter(s.max_in_flight, drop_oldest=bool(getattr(video_src, "live", True)))
        self.captures: dict[str, Capture] = {}
        self._stop = threading.Event()
        self._events: collections.deque = collections.deque(maxlen=10000)
        self._recovered_mods: collections.deque = collections.deque(maxlen=16)
        self.started_at: float | None = None
        self._opened: list[Any] = []
        self._last_sink_s = 0.0
        self._last_tick_t: float | None = None
        self._watchdog = None
        self._busy_since: float | None = None  # now() when the worker took the tick it is running
        self._work_s: float | None = None  # EMA of the worker's time per video tick
        self.prepared_frames = 0  # frames whose tensors the capture thread made
        self._blas = None
        self._switch_interval: float | None = None
        # statistics
        self.results = 0
        self.worker_idle_s = 0.0
        self.lat = {k: Reservoir(s.reservoir, seed=i) for i, k in enumerate(STAGES)}
        self.skew = Reservoir(s.reservoir, seed=99)
        self.overhead = Reservoir(s.reservoir, seed=98)  # per-result work beyond the model (s)
        self.worker_overhead = Reservoir(s.reservoir, seed=97)  # ... of it on the inference worker
        self.degraded_counts: collections.Counter = collections.Counter()
        self.event_counts: collections.Counter = collections.Counter()
        self.rss_start = None
        self.final_summary: dict | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self) -> None:
        """Open the sinks and the model, then the sources (last, so a camera's first frame is fresh), and
        start the capture threads. Sources from ``open_source`` were validated when made; a failure to open
        here is still a user error (EdgemmError) and everything opened so far is closed again."""
        # A camera's or a file's frame rate is known only once it is open (after the sinks): "video_fps"
        # asks for it when a sink needs it (the video sink, at its first frame).
        context = {"fps": getattr(self.sources.get("video"), "fps", None), "video_fps": self.video_fps,
                   "model": self.manifest.name}
        for sink in self.sinks:
            sink.open(context)
            self._opened.append(sink)
        self.model.__enter__()
        self._opened.append(self.model)
        self._watchdog = watchdog.ping  # systemd READY=1, then WATCHDOG=1 from the worker loop
        self._blas = _limit_blas_threads()
        if self.settings.gil_switch_interval_s:
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(self.settings.gil_switch_interval_s)
        files = [src for src in self.sources.values() if not getattr(src, "live", True)]
        if len(files) == len(self.sources) and all(getattr(f, "start_time", 0) is None for f in files):
            # A clip and its soundtrack: one media epoch, so frame k and the audio at its time line up.
            start = now() + 0.05
            for f in files:
                f.start_time = start
        for src in self.sources.values():
            src.open()
            self._opened.append(src)
        self.rss_start = bench.rss_mb()
        self.started_at = now()
        for mod, src in self.sources.items():
            cap = Capture(self, src, mod)
            self.captures[mod] = cap
            cap.start()

    def stop(self) -> None:
        """Ask the pipeline to stop (thread- and signal-safe); is_streaming() turns False."""
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        if self._watchdog is not None:
            watchdog.notify("STOPPING=1")  # systemd: a clean stop, not a hang (flushing sinks may take a moment)
            self._watchdog = None
        for cap in self.captures.values():
            cap.join(timeout=3.0)
        for cap in self.captures.values():
            if cap.is_alive():
                log.warning("capture thread for %s did not stop in time", cap.uri)
        end_t = now()
        events = self.decisions.close(end_t) if self.started_at is not None else []
        self._drain_events(events)
        if self.started_at is not None:
            self.final_summary = summary = self.summary()
            for sink in self.sinks:
                if sink in self._opened:
                    try:
                        sink.summary(summary)
                    except Exception:  # a failing sink must not keep the others from closing
                        log.exception("sink %s failed writing the summary", sink.name)
        captured = {id(c.source): c for c in self.captures.values()}
        for obj in reversed(self._opened):
            try:
                if isinstance(obj, FusionModel):
                    obj.__exit__(None, None, None)
                elif isinstance(obj, Sink):
                    obj.close()
                elif id(obj) in captured:
                    captured[id(obj)]._close_source()  # idempotent; the thread closed it unless it hung
                else:
                    obj.close()  # opened, but start() failed before its capture thread began
            except Exception:  # close everything else regardless
                log.exception("closing %s failed", obj)
        self._opened.clear()
        if self._blas is not None:
            self._blas.restore_original_limits()
            self._blas = None
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
            self._switch_interval = None

    def video_fps(self) -> float | None:
        """The video source's frame rate: what it says once open (a file's, a camera's mode), else what it
        measured, else None."""
        src = self.sources.get("video")
        if src is None:
            return None
        fps = getattr(src, "fps", None)
        if not fps:
            fps = getattr(getattr(src, "stats", None), "extra", {}).get("fps_measured")
        return float(fps) if fps else None

    def _failure(self) -> CaptureFailed | None:
        return next((c.fatal for c in self.captures.values() if c.fatal is not None), None)

    def is_streaming(self) -> bool:
        if self._stop.is_set():
            return False
        if self._failure() is not None:
            return True  # the next step() raises it
        if self.duration_s is not None and self.started_at is not None and now() - self.started_at >= self.duration_s:
            return False
        video = self.captures.get("video")
        if video is not None:  # a clip is over when its video is (queued frames still get inferred)
            return not video.ended or len(self.video_port) > 0
        audio = self.captures.get("audio")
        return audio is None or not audio.ended or self._audio_ticks_left()

    # -- from the capture threads ----------------------------------------------------------------------
    def _event(self, event: dict) -> None:
        self._events.append({**event, "t": round(now(), 6)})

    def _modality_recovered(self, mod: str) -> None:
        self._recovered_mods.append(mod)

    def _deliver(self, modality: str, item, cap: Capture) -> None:
        if modality == "video":
            t_in = now()
            prepared = self.live.prepare(item) if self._worth_preparing(cap) else None
            if prepared is not None and prepared.video:
                self.prepared_frames += 1
            self.video_port.put(_VideoItem(item, prepared, t_in), self._stop)
        elif self.ring is not None:
            block: AudioBlock = item
            if not cap.live:
                self.ring.wait_for_room(block.t_end, self.live.max_window / self.ring.sample_rate, self._stop)
            self.ring.push(block)

    def _worth_preparing(self, cap: Capture) -> bool:
        """Whether to prepare a live frame in the capture thread: not when it is dropped at the entry, nor
        when it replaces the waiting frame and the worker will still be busy when the next frame comes (it
        would be replaced in turn). A wrong guess costs little: an unprepared frame is prepared by the
        worker (VideoPrep builds whatever is missing)."""
        entry = self.video_port.entry()
        if entry == "drop":
            return False
        if entry == "replace":
            busy, work = self._busy_since, self._work_s
            if busy is not None and work is not None and cap.period and busy + work > now() + cap.period:
                return False
        return True

    # -- the worker --------------------------------------------------------------------------------------
    def _drain_events(self, extra: list[dict] = ()) -> None:
        events = []
        while self._events:
            events.append(self._events.popleft())
        events += list(extra)
        for ev in events:
            self.event_counts[ev["event"]] += 1
            for sink in self.sinks:
                try:
                    sink.event(ev)
                except Exception:  # one sink failing must not stop the others or the run
                    log.exception("sink %s failed on an event", sink.name)

    def _present(self) -> dict[str, bool]:
        """Sources that are up. Audio from a file that has ended still counts: the ring holds it, and the
        missing fraction of each window decides."""
        return {m: (m in self.captures and self.captures[m].up and (m == "audio" or not self.captures[m].ended))
                for m in self.modalities}

    def _tick_period(self) -> float:
        if self.settings.tick_hz:
            return 1.0 / self.settings.tick_hz
        vp = self.captures.get("video")
        if vp is not None and vp.period:
            return vp.period
        hops = [s.preprocess.hop / s.preprocess.sample_rate for _, s in self.live.audio_inputs if s.preprocess.hop]
        if hops:  # a streaming audio model asks for its step in samples (a VAD: 512 at 16 kHz)
            return min(hops)
        rates = [r for r in (self.manifest.fusion.rates_hz or {}).values()] + list(self.settings.rates_hz.values())
        return 1.0 / max(rates) if rates else 0.1

    def _audio_target(self, latest: float, period: float) -> float:
        """The instant of the next tick on the audio timeline.

        Live audio ticks at the present: the first tick at the newest audio, and after a gap (or a worker
        slower than the tick rate) it jumps to the present rather than working through the past. Audio
        from a file loses nothing, however fast it is read: the first tick at the first full window, then
        every period, all the way through.
        """
        cap = self.captures.get("audio")
        live = cap is None or cap.live
        if self._last_tick_t is None:
            if live:
                return latest
            first = self.ring.first_t()
            window_s = self.live.max_window / self.ring.sample_rate
            target = (first if first is not None else latest) + (window_s or period)
            return min(target, latest) if self.ring.ended else target  # a file shorter than one window
        target = self._last_tick_t + period
        if live and target < latest - 2 * period:
            target = latest
        return target

    def _audio_ticks_left(self) -> bool:
        if self.ring is None or "audio" not in self.captures:
            return False
        latest = self.ring.latest_t()
        return latest is not None and latest >= self._audio_target(latest, self._tick_period()) - 1e-9

    def _next_tick(self, timeout: float) -> tuple[Tick, _VideoItem | None] | None:
        present = self._present()
        video_cap = self.captures.get("video")
        video_expected = video_cap is not None and not video_cap.ended and present.get("video")
        if video_expected or (video_cap is not None and len(self.video_port)):
            item = self.video_port.get(timeout)
            if item is not None:
                present = self._present()
                present["video"] = True  # this frame is here, whatever the state says now
                return Tick(item.frame.t, item.frame, item.prepared, present), item
            if video_expected:
                return None
            present = self._present()
        # No video (lost, ended, or not used): tick on the audio timeline.
        if not present.get("audio") and not (self.ring is not None and "audio" in self.captures
                                              and self.captures["audio"].ended and self._audio_ticks_left()):
            time.sleep(min(timeout, 0.05))
            return None
        period = self._tick_period()
        deadline = now() + timeout
        while True:
            latest = self.ring.latest_t()
            if latest is not None:
                target = self._audio_target(latest, period)
                if latest >= target - 1e-9:
                    self._last_tick_t = target
                    return Tick(target, None, None, {**present, "video": False}), None
            if now() >= deadline or self._stop.is_set():
                return None
            time.sleep(min(0.005, max(0.0, deadline - now())))

    def step(self, timeout: float = 0.25) -> dict | None:
        """Wait up to timeout for the next tick, run it, and hand the result to the sinks. Returns the record."""
        self._drain_events()
        failure = self._failure()
        if failure is not None:
            raise failure
        if self._watchdog is not None:
            self._watchdog()
        while self._recovered_mods:
            self.live.reset_modality(self._recovered_mods.popleft())
        t0 = time.perf_counter()
        got = self._next_tick(timeout)
        self.worker_idle_s += time.perf_counter() - t0  # waiting for data: the sources, not the model, limit
        if got is None:
            return None
        tick, item = got
        busy = self._busy_since = now()
        try:
            return self._run_tick(tick, item)
        finally:
            self._busy_since = None
            if item is not None:
                self.video_port.done()
                work = now() - busy
                self._work_s = work if self._work_s is None else 0.8 * self._work_s + 0.2 * work

    def _run_tick(self, tick: Tick, item: _VideoItem | None) -> dict | None:
        t_pick = now()
        if item is not None:
            self._last_tick_t = tick.t
        res: StepResult | None = self.live.step(tick)
        if res is None:
            return None
        p0 = time.perf_counter()
        record = self._record(res)
        events = self.decisions.alerts(res.t, res.outputs)
        record["alerts"] = self.decisions.active_alerts()
        post_s = time.perf_counter() - p0 + res.attribution_s
        capture_prep_s = item.prepared.work_s if item is not None and item.prepared is not None else 0.0
        prep_s = res.preprocess_s + capture_prep_s
        t_result = now()
        # Glass time: the capture time; a file read faster than real time stamps frames with media times
        # ahead of the clock, so there the time it entered the pipeline stands in.
        t_glass = min(tick.t, item.t_in) if item else min(tick.t, t_pick)
        lat = {
            # glass -> worker (waiting for the audio included), less the preprocessing done meanwhile in the
            # capture thread, plus any wait for audio in the worker
            "capture": max(0.0, (t_pick - t_glass) - capture_prep_s) + res.wait_s,
            "preprocess": prep_s,
            "infer": res.infer_s,
            "postprocess": post_s,
            "sink": self._last_sink_s,  # the previous result's: a record cannot hold its own writing time
            "total": t_result - t_glass,
        }
        record["latency_ms"] = {k: round(v * 1e3, 3) for k, v in lat.items()}
        s0 = time.perf_counter()
        frame = tick.frame.image if tick.frame is not None else None
        for sink in self.sinks:
            try:
                sink.result(record, frame)
            except EdgemmError:
                raise
            except Exception:  # a sink failing (disk full, broker gone) must not stop inference
                log.exception("sink %s failed on a result", sink.name)
        self._drain_events(events)
        self._last_sink_s = time.perf_counter() - s0
        # statistics (bounded)
        self.results += 1
        for k, v in lat.items():
            self.lat[k].add(v)
        # Work for this result beyond running the model (waiting for data excluded): on the worker, which
        # costs throughput, and in all, with the preprocessing the capture thread did in parallel.
        worker = (now() - t_pick) - res.infer_s - res.wait_s
        self.worker_overhead.add(worker)
        self.overhead.add(worker + capture_prep_s)
        if res.skew_s is not None:
            self.skew.add(res.skew_s)
        for m in res.degraded:
            self.degraded_counts[m] += 1
        return record

    def _record(self, res: StepResult) -> dict:
        specs = self.decisions.specs
        outputs = self.decisions.decode(res.outputs)
        attribution = None
        if res.without is not None:
            attribution = attribution_of(res.outputs, res.without, specs, self.decisions.primary)
            attribution["method"] = {"late": "leave_one_out_members", "intermediate": "leave_one_out_embeddings",
                                     "early": "ablation"}[self.live.form]
        if res.per_modality:
            attribution = attribution or {}
            primary = self.decisions.primary
            attribution["members"] = {m: {k: v for k, v in decode_output(outs[primary], specs[primary]).items()
                                          if k != "top"} for m, outs in res.per_modality.items()}
        return {
            "t": round(res.t, 6),
            "wall_time": round(time.time(), 3),
            "outputs": outputs,
            "degraded": res.degraded,
            "attribution": attribution,
            "skew_ms": None if res.skew_s is None else round(res.skew_s * 1e3, 3),
            "audio_missing": None if res.audio_missing is None else round(res.audio_missing, 4),
            "ages_ms": {m: round(a * 1e3, 2) for m, a in res.ages_s.items()},
            "ran": res.ran,
        }

    # -- the end -----------------------------------------------------------------------------------------
    def summary(self) -> dict:
        elapsed = (now() - self.started_at) if self.started_at else 0.0
        ports: dict[str, dict] = {}
        cap = self.captures.get("video")
        if cap is not None:
            st = cap.source.stats
            ports["video"] = {"captured": cap.items, "admitted": self.video_port.admitted,
                              "dropped": self.video_port.dropped, "source_dropped": st.dropped,
                              "prepared": self.prepared_frames,
                              "policy": "drop_oldest" if self.video_port.drop_oldest else "block"}
        cap = self.captures.get("audio")
        if cap is not None and self.ring is not None:
            st = cap.source.stats
            ring = self.ring.stats()
            ports["audio"] = {"blocks": cap.items, "samples": ring["pushed_samples"], "gap_samples": ring["gap_samples"],
                              "source_dropped": st.dropped, "overflows": st.overflows,
                              "drift_ppm": None if ring["drift_ppm"] is None else round(ring["drift_ppm"], 2)}
        lat = {k: r.stats_ms() for k, r in self.lat.items() if r.count}
        skew = self.skew.stats_ms()
        if self.skew.values:
            skew["abs_p99"] = round(float(np.percentile(np.abs(self.skew.values), 99) * 1e3), 4)
            skew["bound_ms"] = round(self.settings.max_skew_s * 1e3, 3)
        return {
            "model": self.manifest.name, "form": self.live.form,
            "duration_s": round(elapsed, 3), "results": self.results,
            "worker_idle_s": round(self.worker_idle_s, 3),
            "fps": round(self.results / elapsed, 3) if elapsed > 0 else 0.0,
            "ports": ports, "latency_ms": lat, "skew_ms": skew,
            "overhead_ms": self.overhead.stats_ms(),
            "worker_overhead_ms": self.worker_overhead.stats_ms(),
            "reconnects": {m: c.reconnects for m, c in self.captures.items()},
            "capture_crashes": {m: c.crashes for m, c in self.captures.items() if c.crashes},
            "overflows": sum(c.source.stats.overflows for c in self.captures.values()),
            "degraded_results": dict(self.degraded_counts),
            "events": dict(self.event_counts),
            "rss_mb": {"start": round(self.rss_start or 0.0, 1), "end": round(bench.rss_mb(), 1)},
        }

    def run(self, duration_s: float | None = None) -> dict:
        """Step until the sources end, stop() is called or duration_s passes; returns the summary."""
        if duration_s is not None:
            self.duration_s = duration_s
        while self.is_streaming():
            self.step()
        return self.summary()


def _limit_blas_threads():
    """One BLAS thread while streaming; returns the limiter to restore on close (None without threadpoolctl).

    The audio front end does a small matrix product per inference (the mel filterbank). OpenBLAS splits
    it over all cores and its idle threads spin, fighting the model's own thread pool and the capture
    threads: measured here on 2 cores, the log-mel took 40-80 ms instead of 0.3 ms inside the pipeline.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        log.info("threadpoolctl is not installed: BLAS keeps its default threads (set OPENBLAS_NUM_THREADS=1)")
        return None
    return threadpool_limits(limits=1, user_api="blas")


def format_summary(s: dict) -> str:
    """The end-of-run summary as a few human lines."""
    lines = [f"{s['results']} results in {s['duration_s']:.1f} s ({s['fps']:.1f}/s), "
             f"model {s['model']} ({s['form']} fusion)"]
    for port, p in s["ports"].items():
        lines.append(f"  {port}: " + ", ".join(f"{k} {v}" for k, v in p.items()))
    for stage in STAGES:
        st = s["latency_ms"].get(stage)
        if st:
            lines.append(f"  {stage:<11} p50 {st['p50']:8.2f} ms  p90 {st['p90']:8.2f}  p99 {st['p99']:8.2f}  "
                         f"max {st['max']:8.2f}")
    if s.get("skew_ms"):
        sk = s["skew_ms"]
        lines.append(f"  A/V skew    p50 {sk['p50']:8.2f} ms  |p99| {sk.get('abs_p99', 0):.2f} ms  "
                     f"(bound {sk.get('bound_ms')} ms)")
    if s.get("overhead_ms"):
        o, w = s["overhead_ms"], s["worker_overhead_ms"]
        lines.append(f"  work beyond the model per result: p50 {o['p50']:.3f} ms, p99 {o['p99']:.3f} ms "
                     f"(on the inference thread: p50 {w['p50']:.3f} ms, p99 {w['p99']:.3f} ms)")
    if s.get("capture_crashes"):
        lines.append(f"  capture crashes {s['capture_crashes']} (tracebacks in the log)")
    lines.append(f"  reconnects {s['reconnects']}, overflows {s['overflows']}, "
                 f"degraded results {s['degraded_results']}, events {s['events']}")
    return "\n".join(lines)
