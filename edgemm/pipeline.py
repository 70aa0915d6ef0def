"""The streaming pipeline: the loop that joins capture, sync, the model, decisions and sinks (start, step, stop).

    camera ──capture thread──► video port (flow limiter: at most N frames in flight) ─┐
                                                                                       ├─► worker ──► sinks thread
    microphone ──capture thread──► AudioRing (by sample index, drift-corrected) ──────┘   (step())   (bounded FIFO)

- Ports are bounded. A live source drops the oldest queued frame when the worker is busy, so latency
  never grows with a slow model; a file source blocks instead and loses nothing. Audio goes into a ring
  of fixed size (live: the oldest is overwritten; file: the reader waits for the worker to catch up).
- One worker (the thread calling ``step()``) runs the model; inference never runs concurrently with
  itself, which is what a GPU wants and what keeps the latency accounting honest. Sinks write on a thread
  of their own (edgemm/sink_thread.py), in order, so a video encode or a disk stall does not hold up the
  next inference.
- A source that fails (SourceError) or goes silent is reopened with exponential backoff by its capture
  thread (edgemm/capture.py); loss and recovery are events, and meanwhile the other modality is fused
  alone (``degraded``). One lost for longer than ``max_source_loss_s`` fails the run (``step()`` raises
  SourceLostTooLong), so that a supervisor starts a fresh process. A source that cannot be opened at
  start is tried again for ``wait_for_sources_s`` (events ``source_waiting`` / ``source_opened``).
  A live source whose thread crashes (a bug: any other exception) is reopened the same way; one that
  keeps crashing, or a file that crashes, fails the run: ``step()`` raises ``CaptureFailed``.
  Microphone overflows are counted, never fatal.
- Live frames are prepared (resized, normalised) in the capture thread while the model runs, except those
  that will not be used: dropped at the entry, likely replaced before the worker is free, or not due for
  a video encoder running at its own rate. Audio-only ticks on a file step through all of it.
- Everything is bounded (queues, ring, frame history, latency statistics by reservoir sampling), so
  memory stays flat however long it runs.
- What runs at each tick is LiveFusion's (edgemm/scheduler.py, ``Pipeline.scheduler``); the summary is
  data (``summary()``); the command turns it into lines (edgemm/commands/run.py).

The main loop reads like jetson-utils' video-viewer::

    with Pipeline(bundle, video=cam, audio=mic, sinks=[make_sink("console")]) as pipe:
        while pipe.is_streaming():
            pipe.step()
        print(format_summary(pipe.summary()))
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgemm import bench, watchdog
from edgemm.bench import Reservoir
from edgemm.bundle import Bundle
from edgemm.capture import Capture, CaptureFailed, CaptureSettings, FlowLimiter, SourceLostTooLong, open_waiting
from edgemm.decisions import AlertRule, Decisions, decode_output
from edgemm.decisions import attribution as attribution_of
from edgemm.errors import EdgemmError
from edgemm.fusion import FusionModel
from edgemm.scheduler import LiveFusion, LiveSettings, Prepared, StepResult, Tick
from edgemm.sink_thread import SinkThread
from edgemm.sinks import Sink, SinkHealth
from edgemm.sources.base import AudioBlock, Frame, Source, now
from edgemm.sync import AudioRing
from edgemm.threads import limit_blas_threads

log = logging.getLogger("edgemm.pipeline")

STAGES = ("capture", "preprocess", "infer", "postprocess", "sink", "total")
CAPTURE_JOIN_S = 2.0  # close() waits this long in all for the capture threads to end
SINK_JOIN_S = 2.0  # ... and this long for the sinks to write what is queued (with the above: < 5 s)
FILE_AUDIO_WAIT_S = 5.0  # a frame from a file waits this long at most for its audio (ended audio: not at all)


@dataclass
class PipelineSettings(LiveSettings, CaptureSettings):
    max_in_flight: int = 2  # frames admitted and not yet finished; 2 = one in the model, the newest waiting
    ring_s: float = 10.0  # audio kept, seconds
    tick_hz: float | None = None  # inference rate while there is no video (None: camera rate, else 10 Hz)
    reservoir: int = 20000  # latency samples kept per stage for the percentiles (uniform over the run)
    conf: float | None = None  # detection score / NMS IoU thresholds overriding the manifest's (--conf, --iou)
    iou: float | None = None
    # Python hands the GIL to a waiting thread after this long (default 5 ms). The worker spends its time
    # in the model with the GIL released; when the model returns while a capture thread runs Python code,
    # the worker waits up to this long for the GIL. 1 ms while streaming (restored on close); None: leave it.
    gil_switch_interval_s: float | None = 0.001


@dataclass
class _VideoItem:
    frame: Frame
    prepared: Prepared | None  # None: not prepared in the capture thread (the worker builds the tensors)
    t_in: float  # now() when the capture thread got it (glass time for files read faster than real time)


class Streaming:
    """``with`` starts it and always closes it, also when starting fails halfway (what was opened is closed)."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()


class Pipeline(Streaming):
    """A running bundle on live or file sources. Use as a context manager; call step() until not streaming."""

    def __init__(self, model: Bundle | FusionModel, video: Source | None = None, audio: Source | None = None,
                 sinks: Iterable[Sink] = (), settings: PipelineSettings | None = None,
                 alerts: Iterable[AlertRule] = (), backend: str = "onnxruntime", threads: int | None = None,
                 duration_s: float | None = None, camera: str | None = None,
                 shared_captures: dict[str, Capture] | None = None):
        self.settings = s = settings or PipelineSettings()
        # Several cameras (edgemm/multicam.py): each has a Pipeline named after it, its records and events say
        # which, and a source they share (the microphone) is read by one Capture the owner runs and hands in.
        self.camera = camera
        self.shared_captures = dict(shared_captures or {})
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
        self.scheduler = LiveFusion(self.model, self.ring, s)
        if self.ring is not None and not getattr(self.sources.get("audio"), "live", True):
            self.scheduler.audio_wait_s = FILE_AUDIO_WAIT_S
            self.scheduler.audio_grid = 1  # a file's windows end exactly at the frame (skew 0), features whole
        image = next((sp.preprocess for g, sp in self.manifest.all_inputs()
                      if sp.modality == "video" and g.name == self.model.decision_graph), None)
        self.decisions = Decisions(dict(self.model.output_specs), list(alerts), image, s.conf, s.iou)
        self.sinks: list[Sink] = []
        self.sink_health: list[SinkHealth] = []  # one per sink: failures logged once, counted per sink
        self.duration_s = duration_s
        video_src = self.sources.get("video")
        self.video_port = FlowLimiter(s.max_in_flight, drop_oldest=bool(getattr(video_src, "live", True)))
        self.captures: dict[str, Capture] = {}
        self._stop = threading.Event()
        self._events: collections.deque = collections.deque(maxlen=10000)
        self._recovered_mods: collections.deque = collections.deque(maxlen=16)
        self.started_at: float | None = None
        for sink in sinks:
            self.add_sink(sink)
        self._opened: list[Any] = []
        self._sinks: SinkThread | None = None  # the sinks' thread, from start() (edgemm/sink_thread.py)
        self._last_tick_t: float | None = None
        self._watchdog = None
        # The watchdog is pinged for progress only (see _progress): the last value it was pinged at.
        self._pinged_progress: int | None = None
        self.prepared_frames = 0  # frames whose tensors the capture thread made
        self.prepared_taken = 0  # ... of them, those the worker took (the rest: replaced or left at the end)
        self.stale_frames = 0  # frames captured before a result already given (not run: results keep capture order)
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
    def add_sink(self, sink: Sink, first: bool = False) -> None:
        """Add a sink before start() (first: it sees each result before the others)."""
        if self.started_at is not None:
            raise RuntimeError("add_sink() after start()")
        where = 0 if first else len(self.sinks)
        self.sinks.insert(where, sink)
        self.sink_health.insert(where, SinkHealth(sink))

    def start(self) -> None:
        """Open the model, then the sources, then the sinks, and start the capture threads. Sources from
        ``open_source`` were validated when made; a failure to open here is still a user error (EdgemmError)
        and everything opened so far is closed again."""
        self.model.__enter__()
        self._opened.append(self.model)
        self._watchdog = watchdog.ping  # systemd READY=1, then WATCHDOG=1 from the worker loop
        # One BLAS thread while streaming (restored on close): see edgemm/threads.py for why.
        self._blas = limit_blas_threads(1)
        if self.settings.gil_switch_interval_s:
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(self.settings.gil_switch_interval_s)
        files = [src for src in self.sources.values() if not getattr(src, "live", True)]
        if len(files) == len(self.sources) and all(getattr(f, "start_time", 0) is None for f in files):
            # A clip and its soundtrack: one media epoch, so frame k and the audio at its time line up.
            start = now() + 0.05
            for f in files:
                f.start_time = start
        for mod, src in self.sources.items():
            if mod in self.shared_captures:
                continue
            # Missing at start: waited for (settings.wait_for_sources_s, with events) or a one-line error.
            if not open_waiting(src, mod, self.settings, self._stop, self._on_capture_event):
                return  # stopped while waiting (SIGTERM): nothing more to start; is_streaming() is False
            self._opened.append(src)
        # Sinks open only once the sources have: a camera that is not there must not leave an empty results
        # file (or a broker session) behind. The capture threads start after them, so frames stay fresh.
        # "video_fps" asks for the source's frame rate when a sink needs it (the video sink, at its first frame).
        # "pipeline": the metrics sink reads drops, reconnects, overflows and drift from it when scraped.
        context = {"fps": getattr(self.sources.get("video"), "fps", None), "video_fps": self.video_fps,
                   "model": self.manifest.name, "pipeline": self}
        for sink in self.sinks:
            sink.open(context)
            self._opened.append(sink)
        self._sinks = SinkThread(self.sink_health, name=f"edgemm-sinks-{self.camera}" if self.camera else "edgemm-sinks")
        self._sinks.start()
        self.rss_start = bench.rss_mb()
        self.started_at = now()
        self.captures.update(self.shared_captures)
        for mod, src in self.sources.items():
            if mod in self.shared_captures:
                continue
            on_reopened = self.ring.reset if mod == "audio" and self.ring is not None else None
            deliver = self._deliver_frame if mod == "video" else self._deliver_audio
            cap = Capture(src, mod, self.settings, self._stop, deliver, self._on_capture_event, on_reopened)
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
        # One deadline for all the capture threads (not one per thread): every exit ends within 5 s of a stop.
        # A thread still in a source's open() or read() then (a stream's connect) is left behind: it is a
        # daemon thread, and the sources are closed below regardless.
        deadline = now() + CAPTURE_JOIN_S
        own = [c for m, c in self.captures.items() if m not in self.shared_captures]
        for cap in own:
            cap.join(timeout=max(0.0, deadline - now()))
        for cap in own:
            if cap.is_alive():
                log.warning("capture thread for %s did not stop in time", cap.uri)
        end_t = now()
        events = self.decisions.close(end_t) if self.started_at is not None else []
        self._drain_events(events)
        # What is queued for the sinks is written first (bounded: a hung sink is left behind, and then not
        # called again, since it would hang this thread too).
        sinks_done = self._sinks is None or self._sinks.close(SINK_JOIN_S)
        if self.started_at is not None:
            self.final_summary = summary = self.summary()
            for health in self.sink_health if sinks_done else ():
                if health.sink in self._opened:  # a failing sink must not keep the others from closing
                    health.call("summary", summary)
        captured = {id(c.source): c for c in self.captures.values()}
        for obj in reversed(self._opened):
            if isinstance(obj, Sink) and not sinks_done:
                continue  # hung in a write: closing it would hang too
            try:
                if isinstance(obj, FusionModel):
                    obj.__exit__(None, None, None)
                elif isinstance(obj, Sink):
                    obj.close()
                elif id(obj) in captured:
                    captured[id(obj)].close_source()  # idempotent; the thread closed it unless it hung
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

    def _failure(self) -> EdgemmError | None:
        """What ends the run with an error: a capture that kept crashing, a sink that cannot work as
        configured, or a source lost for longer than max_source_loss_s (so that the supervisor restarts the
        process)."""
        fatal = next((c.fatal for c in self.captures.values() if c.fatal is not None), None)
        if fatal is None and self._sinks is not None and self._sinks.error is not None:
            return self._sinks.error  # a sink that cannot work as configured (e.g. no video writer)
        limit = self.settings.max_source_loss_s
        if fatal is None and limit:
            for cap in self.captures.values():
                down = now() - cap.lost_at if not cap.up and cap.lost_at is not None else 0.0
                if down > limit:
                    return SourceLostTooLong(
                        f"{cap.modality.capitalize()} source: {cap.uri} | Lost for {down:.0f} s, longer than "
                        f"--max-source-loss {limit:g} s ({' '.join(cap.last_error.split()) or 'no data'}); "
                        "exiting so that the service manager restarts edgemm.")
        return fatal

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
    def _on_capture_event(self, event: dict) -> None:
        if event["event"] == "source_ended" and event["modality"] == "audio" and self.ring is not None:
            self.ring.mark_ended()
        self._events.append(event)
        if event["event"] == "source_recovered":
            self._recovered_mods.append(event["modality"])  # the worker resets its schedule for it

    def _deliver_frame(self, frame: Frame, cap: Capture) -> None:
        t_in = now()
        # Frames that will not reach the worker (dropped at the entry, or replaced by the next one before the
        # worker is free) are not prepared. A wrong guess costs little: the worker prepares what is missing.
        prepared = self.scheduler.prepare(frame) if self.video_port.will_be_taken(cap.period) else None
        if prepared is not None and prepared.video:
            self.prepared_frames += 1
        self.video_port.put(_VideoItem(frame, prepared, t_in), self._stop)

    def _deliver_audio(self, block: AudioBlock, cap: Capture) -> None:
        if not cap.live:
            self.ring.wait_for_room(block.t_end, self.scheduler.max_window / self.ring.sample_rate, self._stop)
        self.ring.push(block)

    # -- the worker --------------------------------------------------------------------------------------
    def _drain_events(self, extra: list[dict] = ()) -> None:
        events = []
        while self._events:
            events.append(self._events.popleft())
        events += list(extra)
        for ev in events:
            if self.camera is not None:
                ev.setdefault("camera", self.camera)
            self.event_counts[ev["event"]] += 1
            self._to_sinks("event", ev)

    def _to_sinks(self, method: str, *args) -> None:
        if self._sinks is not None:
            self._sinks.put(method, *args, stop=self._stop)
        else:  # before start(): nothing is open yet, but the events still count
            for health in self.sink_health:
                if health.sink in self._opened:
                    health.call(method, *args)

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
        hops = [s.preprocess.hop / s.preprocess.sample_rate for _, s in self.scheduler.audio_inputs if s.preprocess.hop]
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
            window_s = self.scheduler.max_window / self.ring.sample_rate
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
            if item is not None and self._last_tick_t is not None and item.frame.t < self._last_tick_t:
                # Captured before the last tick: an audio tick went ahead while the camera was coming back (the
                # frame read, not yet delivered). Results go out in capture order, as consumers assume (a
                # soak saw t go back 4 ms in the file and over MQTT), so the frame is dropped, and counted.
                self.video_port.done()
                self.stale_frames += 1
                return None
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
        self._ping_watchdog()
        while self._recovered_mods:
            self.scheduler.reset_modality(self._recovered_mods.popleft())
        t0 = time.perf_counter()
        got = self._next_tick(timeout)
        self.worker_idle_s += time.perf_counter() - t0  # waiting for data: the sources, not the model, limit
        if got is None:
            return None
        tick, item = got
        try:
            return self._run_tick(tick, item)
        finally:
            if item is not None:
                self.video_port.done()

    def _ping_watchdog(self) -> None:
        """systemd: READY=1 at the first step, then WATCHDOG=1 only when something progressed since the last
        ping (a result, a source's item, a reopened source), never for a loop turn alone: a capture stuck in
        a read that never returns, with no other source delivering, stops the pings and systemd restarts us."""
        progress = self._progress()
        if self._watchdog is None or progress == self._pinged_progress:
            return
        self._pinged_progress = progress
        self._watchdog()

    def _progress(self) -> int:
        """Results, items the sources delivered, and lost sources opened again (failed attempts are not
        progress): counted where they happen, summed here."""
        return self.results + sum(c.items + c.reopened for c in self.captures.values())

    def _run_tick(self, tick: Tick, item: _VideoItem | None) -> dict | None:
        t_pick = now()
        if item is not None:
            self._last_tick_t = tick.t
        res: StepResult | None = self.scheduler.step(tick)
        if res is None:
            return None
        p0 = time.perf_counter()
        record = self._record(res, tick.frame.source_hw if tick.frame is not None else None)
        events = self.decisions.alerts(res.t, res.outputs, record["outputs"])
        record["alerts"] = self.decisions.active_alerts()
        post_s = time.perf_counter() - p0 + res.attribution_s
        capture_prep_s = item.prepared.work_s if item is not None and item.prepared is not None else 0.0
        capture_cpu_s = item.prepared.cpu_s if item is not None and item.prepared is not None else 0.0
        if item is not None and item.prepared is not None and item.prepared.video:
            self.prepared_taken += 1
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
            # the sinks' time over the previous result (on their thread: a record cannot hold its own)
            "sink": self._sinks.last_result_s if self._sinks is not None else 0.0,
            "total": t_result - t_glass,
        }
        record["latency_ms"] = {k: round(v * 1e3, 3) for k, v in lat.items()}
        frame = tick.frame.image if tick.frame is not None else None
        self._to_sinks("result", record, frame)  # written on the sinks' thread (edgemm/sink_thread.py)
        self._drain_events(events)
        # statistics (bounded)
        self.results += 1
        for k, v in lat.items():
            self.lat[k].add(v)
        # Work for this result beyond running the model (waiting for data excluded): on the worker, which
        # costs throughput (wall time: waiting there for the GIL delays the next inference too), and in all,
        # with the preprocessing the capture thread and the writing the sinks' thread did in parallel. Those
        # two count their CPU time: on two cores busy with decoding and inference their wall time is mostly
        # being preempted, which is the machine's load, not their work (the "preprocess" and "sink" latency
        # stages keep the wall times). The sinks' figure is the previous result's, as in the "sink" stage.
        worker = (now() - t_pick) - res.infer_s - res.wait_s
        self.worker_overhead.add(worker)
        sink_cpu_s = self._sinks.last_result_cpu_s if self._sinks is not None else 0.0
        self.overhead.add(worker + capture_cpu_s + sink_cpu_s)
        if res.skew_s is not None:
            self.skew.add(res.skew_s)
        for m in res.degraded:
            self.degraded_counts[m] += 1
        return record

    def _record(self, res: StepResult, frame_hw: tuple[int, int] | None) -> dict:
        specs = self.decisions.specs
        outputs = self.decisions.decode(res.outputs, res.t, frame_hw)
        attribution = None
        if res.without is not None:
            attribution = attribution_of(res.outputs, res.without, specs, self.decisions.primary)
            attribution["method"] = {"late": "leave_one_out_members", "intermediate": "leave_one_out_embeddings",
                                     "early": "ablation"}[self.scheduler.form]
        if res.per_modality:
            attribution = attribution or {}
            primary = self.decisions.primary
            attribution["members"] = {m: {k: v for k, v in decode_output(outs[primary], specs[primary]).items()
                                          if k != "top"} for m, outs in res.per_modality.items()}
        camera = {} if self.camera is None else {"camera": self.camera}
        return {
            **camera,
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
                              "prepared_dropped": self.prepared_frames - self.prepared_taken,
                              "stale": self.stale_frames,
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
        if len(self.skew.values):
            skew["abs_p99"] = round(float(np.percentile(np.abs(self.skew.values), 99) * 1e3), 4)
            skew["bound_ms"] = round(self.settings.max_skew_s * 1e3, 3)
        return {
            **({} if self.camera is None else {"camera": self.camera}),
            "model": self.manifest.name, "form": self.scheduler.form,
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
            "sinks": {h.sink.label: self._sink_counts(h) for h in self.sink_health},
            "rss_mb": {"start": round(self.rss_start or 0.0, 1), "end": round(bench.rss_mb(), 1)},
        }

    def _sink_counts(self, health: SinkHealth) -> dict:
        counts = health.counts()
        if self._sinks is not None and self._sinks.unwritten:  # left in the queue by a hung sink at the end
            counts["lost"] += self._sinks.unwritten
        return counts

    def run(self, duration_s: float | None = None) -> dict:
        """Step until the sources end, stop() is called or duration_s passes; returns the summary."""
        if duration_s is not None:
            self.duration_s = duration_s
        while self.is_streaming():
            self.step()
        return self.summary()
