"""Several cameras on one model: a pipeline per camera, their model calls batched into one inference.

    camera "door" ──capture──► port (drop policy) ──► worker "door" ─┐               ┌─► decisions, sinks
    camera "yard" ──capture──► port (drop policy) ──► worker "yard" ─┼─► batcher ──► │   (per camera)
    camera "gate" ──capture──► port (drop policy) ──► worker "gate" ─┘  (one call)   └─►
    microphone ──one capture──► each camera's audio ring (shared across the batch)

- Each camera is a whole ``Pipeline`` (edgemm/pipeline.py) named after it: its own capture thread, flow
  limiter (live: the newest frame replaces the oldest waiting one; file: blocking), schedule, recurrent state,
  tracking, alerts and records, which carry ``"camera"``. A lost camera is that pipeline's lost source: it is
  reopened with backoff, its own results say ``degraded: ["video"]`` (fused on audio alone, if the model has
  audio) and its events ``source_lost``; the other cameras' pipelines do not notice.
- Each pipeline's worker runs in a thread of its own; their model calls meet in an ``InferenceBatcher``
  (edgemm/batching.py), the stream muxer: one call with a batch of N when the graph takes a batch, pushed when
  ``batch_size`` cameras wait (fewer when fewer cameras are up) or the oldest has waited ``batch_timeout_s``;
  with no batch size asked for, it checks that batches pay on this backend and stops batching where not.
- A microphone is read by one capture thread, which feeds every camera's audio ring: each camera's frame is
  fused with the audio window ending at its own capture time.
- Sinks: one sink of a kind that takes records only (console, jsonl, mqtt) is shared: every camera's records
  go to it, each with its camera's name. A sink that draws frames or reads a pipeline (video:, http://,
  rtsp://, metrics:) belongs to one camera: ``NAME=SPEC`` names it (``door=video:door.mp4``); an unnamed
  ``video:PATH`` records every camera, each in its own file (``out.mp4`` -> ``out.door.mp4``). Any sink can
  be limited to one camera with ``NAME=``.

The owner of the shared runners, the microphone's capture and the shared sinks is ``MultiCamera``; it has the
same face as a Pipeline (context manager, ``is_streaming``, ``step``, ``stop``, ``summary``), so ``edgemm
run`` streams either.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from pathlib import Path

from edgemm.batching import CameraRunner, InferenceBatcher, check_batching
from edgemm.bundle import Bundle
from edgemm.capture import Capture
from edgemm.errors import EdgemmError
from edgemm.fusion import FusionModel
from edgemm.pipeline import Pipeline, PipelineSettings, Streaming
from edgemm.sink_base import Sink
from edgemm.sources.base import Source, now

log = logging.getLogger("edgemm.multicam")

NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
# Sinks that take frames or read a pipeline: one per camera.
CAMERA_SINKS = ("video:", "http://", "rtsp://", "metrics:")
DEFAULT_BATCH_TIMEOUT_S = 0.015  # under half a frame at 30 fps: a partial batch costs a camera at most this


def split_name(value: str) -> tuple[str | None, str]:
    """``NAME=REST`` -> (NAME, REST); anything else (a URI with ``=`` in its query, a path) -> (None, value)."""
    name, sep, rest = value.partition("=")
    if sep and rest and NAME.fullmatch(name):
        return name, rest
    return None, value


def parse_cameras(values: str | Iterable[str] | None) -> list[tuple[str | None, str]]:
    """--video values -> [(name or None, uri)]; a plain URI is named cam0, cam1... by its place later."""
    if values is None:
        return []
    values = [values] if isinstance(values, str) else list(values)
    cams = [split_name(v.strip()) for v in values]
    seen: set[str] = set()
    for name, uri in cams:
        if name in seen:
            raise EdgemmError(f"Video: {name}={uri} | Camera name {name!r} is given twice; expected one name per "
                              "camera (--video NAME=URI).")
        if name is not None:
            seen.add(name)
    return cams


def camera_names(cams: list[tuple[str | None, str]]) -> list[str]:
    """Every camera's name: its own, or cam<i> (skipping names given to others)."""
    taken = {n for n, _ in cams if n}
    out, i = [], 0
    for name, _ in cams:
        if name is None:
            while f"cam{i}" in taken:
                i += 1
            name = f"cam{i}"
            taken.add(name)
        out.append(name)
    return out


def route_sinks(specs: Iterable[str], names: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Sink specs -> (shared specs, camera -> its own specs): see the module's doc for the rule."""
    shared: list[str] = []
    own: dict[str, list[str]] = {n: [] for n in names}
    for raw in specs:
        name, spec = split_name(raw.strip())
        if name is not None:
            if name not in own:
                raise EdgemmError(f"Sink: {raw} | No camera named {name!r}; expected one of {', '.join(names)}.")
            own[name].append(spec)
        elif spec.startswith("video:") and len(names) > 1:
            path = Path(spec[len("video:"):])
            for n in names:
                own[n].append(f"video:{path.with_name(f'{path.stem}.{n}{path.suffix}')}")
        elif spec.startswith(CAMERA_SINKS) and len(names) > 1:
            raise EdgemmError(f"Sink: {raw} | Shows one camera; with several cameras expected NAME={spec} "
                              f"(NAME one of {', '.join(names)}).")
        elif len(names) == 1:  # one camera: every sink is its own, in the order given
            own[names[0]].append(spec)
        else:
            shared.append(spec)
    return shared, own


class SharedSink(Sink):
    """One camera's handle on a sink all cameras write to: calls are serialised (the cameras' workers are
    threads), and opening and closing are the owner's, once."""

    def __init__(self, sink: Sink, lock: threading.Lock):
        self.sink = sink
        self._lock = lock
        self.name = sink.name

    @property
    def label(self) -> str:
        return self.sink.label

    def lost(self) -> int:
        return self.sink.lost()

    def counts(self) -> dict:
        return self.sink.counts()

    def result(self, record, frame=None) -> None:
        with self._lock:
            self.sink.result(record, frame)

    def event(self, event) -> None:
        with self._lock:
            self.sink.event(event)

    def summary(self, summary) -> None:
        with self._lock:
            self.sink.summary(summary)


class MultiCamera(Streaming):
    """Several cameras (and at most one microphone) on one bundle; see the module's doc."""

    def __init__(self, bundle: Bundle, cameras: list[tuple[str, Source]], audio: Source | None = None,
                 shared_sinks: Iterable[Sink] = (), camera_sinks: dict[str, list[Sink]] | None = None,
                 settings: PipelineSettings | None = None, alerts=(), backend: str = "onnxruntime",
                 threads: int | None = None, duration_s: float | None = None, batch_size: int | None = None,
                 batch_timeout_s: float = DEFAULT_BATCH_TIMEOUT_S):
        if not cameras:
            raise EdgemmError(f"Model: {bundle.manifest.name} | No camera given; expected --video NAME=URI.")
        self.settings = settings or PipelineSettings()
        self.batch_size = len(cameras) if batch_size is None else batch_size
        self.adaptive = batch_size is None  # a batch size asked for is kept; the default checks batches pay
        check_batching(self.batch_size, batch_timeout_s)  # (now: the batchers are made once the model is open)
        self.batch_timeout_s = batch_timeout_s
        self.duration_s = duration_s
        self.model = FusionModel(bundle, backend, threads)  # owns the runners every camera's calls go to
        self.batchers: dict[str, InferenceBatcher] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.audio = audio
        self.audio_capture: Capture | None = None
        if audio is not None and "audio" in self.model.manifest.modalities():
            self.audio_capture = Capture(audio, "audio", self.settings, self._stop, self._deliver_audio,
                                         self._on_audio_event, self._on_audio_reopened)
        shared = {"audio": self.audio_capture} if self.audio_capture is not None else {}
        self._sink_lock = threading.Lock()
        self.shared_sinks = list(shared_sinks)
        camera_sinks = camera_sinks or {}
        self.pipelines: dict[str, Pipeline] = {}
        for name, video in cameras:
            sinks = [SharedSink(s, self._sink_lock) for s in self.shared_sinks] + list(camera_sinks.get(name, []))
            self.pipelines[name] = Pipeline(FusionModel(bundle, backend, threads), video=video,
                                            audio=audio if shared else None, sinks=sinks, settings=self.settings,
                                            alerts=alerts, backend=backend, threads=threads,
                                            duration_s=duration_s, camera=name, shared_captures=shared)
        self._workers: dict[str, threading.Thread] = {}
        self._errors: list[BaseException] = []
        self._opened: list = []
        self.started_at: float | None = None
        self.final_summary: dict | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self.model.__enter__()
        self._opened.append(self.model)
        self.batchers = {g: InferenceBatcher(r, self.batch_size, self.batch_timeout_s, self._cameras_due,
                                             adaptive=self.adaptive)
                         for g, r in self.model.runners.items()}
        for name, pipe in self.pipelines.items():
            pipe.model.use_runners({g: CameraRunner(b, name) for g, b in self.batchers.items()})
        if self.audio_capture is not None:
            self.audio.open()
            self._opened.append(self.audio_capture)
        for pipe in self.pipelines.values():  # opens its camera and its own sinks, starts its capture
            self._opened.append(pipe)  # (closed also when it fails halfway: it closes what it opened)
            pipe.start()
        first = next(iter(self.pipelines.values()))
        context = {"fps": getattr(first.sources.get("video"), "fps", None), "video_fps": first.video_fps,
                   "model": self.model.manifest.name}
        for sink in self.shared_sinks:
            sink.open(context)
            self._opened.append(sink)
        self.started_at = now()
        if self.audio_capture is not None:
            self.audio_capture.started_at = now()
            self.audio_capture.start()
        for name, pipe in self.pipelines.items():
            t = threading.Thread(target=self._work, args=(pipe,), name=f"edgemm-worker-{name}", daemon=True)
            self._workers[name] = t
            t.start()

    def _work(self, pipe: Pipeline) -> None:
        try:
            while not self._stop.is_set() and pipe.is_streaming():
                pipe.step()
        except BaseException as exc:  # raised by step() in the main thread (CaptureFailed, a model error)
            self._errors.append(exc)
        finally:
            self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        for pipe in self.pipelines.values():
            pipe.stop()
        self._wake.set()

    def close(self) -> None:
        self.stop()
        for t in self._workers.values():
            t.join(timeout=5.0)
        if self.audio_capture is not None and self.audio_capture.is_alive():
            self.audio_capture.join(timeout=3.0)
        # The cameras' pipelines first (they send their summaries to the shared sinks), then the rest.
        first = [o for o in self._opened if isinstance(o, Pipeline)]
        for obj in list(reversed(first)) + [o for o in reversed(self._opened) if not isinstance(o, Pipeline)]:
            try:
                if isinstance(obj, Pipeline):
                    obj.close()
                elif isinstance(obj, Capture):
                    obj.close_source()
                elif isinstance(obj, FusionModel):
                    obj.__exit__(None, None, None)
                else:
                    obj.close()
            except Exception:  # close everything else regardless
                log.exception("closing %s failed", obj)
        if self.started_at is not None and self.final_summary is None:
            self.final_summary = self.summary()
        self._opened.clear()

    def is_streaming(self) -> bool:
        if self._errors:
            return True  # the next step() raises it
        if self._stop.is_set():
            return False
        if self.duration_s is not None and self.started_at is not None and now() - self.started_at >= self.duration_s:
            return False
        return any(t.is_alive() for t in self._workers.values())

    def step(self, timeout: float = 0.25) -> None:
        """The workers run the cameras; the caller's thread waits here and raises what a worker raised."""
        if self._errors:
            self.stop()
            raise self._errors[0]
        self._wake.wait(timeout)
        self._wake.clear()

    # -- the shared microphone -------------------------------------------------------------------------------
    def _deliver_audio(self, block, cap: Capture) -> None:
        for name, pipe in self.pipelines.items():
            worker = self._workers.get(name)
            if worker is None or worker.is_alive():  # (a camera that is done would hold a file's audio back)
                pipe._deliver_audio(block, cap)

    def _on_audio_event(self, event: dict) -> None:
        for pipe in self.pipelines.values():  # each camera's results degrade: each says so
            pipe._on_capture_event(dict(event))

    def _on_audio_reopened(self) -> None:
        for pipe in self.pipelines.values():
            pipe.ring.reset()

    def _cameras_due(self, waiting: set, left_s: float) -> int:
        """How many cameras a batch should hold: those waiting in it, and those whose worker may ask within
        left_s (a frame queued, or the camera's next frame due by then: its last one plus its period, with
        a millisecond for preparing it). A camera that is lost, ended or not due does not hold a batch."""
        t = now()
        due = 0
        for name, pipe in self.pipelines.items():
            if name in waiting:
                due += 1
                continue
            worker = self._workers.get(name)
            if worker is None or not worker.is_alive() or not any(pipe._present().values()):
                continue
            cap = pipe.captures.get("video")
            if cap is None or not cap.up or cap.period is None or cap.last_item is None or len(pipe.video_port):
                due += 1  # no frame timing to go by (audio ticks, a camera starting): wait for it
                continue
            late = t - (cap.last_item + cap.period)  # > 0: the next frame is overdue
            if late < 0.5 * cap.period and cap.last_item + cap.period + 0.001 <= t + left_s:
                due += 1
        return due

    # -- the end -----------------------------------------------------------------------------------------
    def summary(self) -> dict:
        cams = {name: (pipe.final_summary or pipe.summary()) for name, pipe in self.pipelines.items()}
        elapsed = (now() - self.started_at) if self.started_at else 0.0
        results = sum(c["results"] for c in cams.values())
        return {"model": self.model.manifest.name, "cameras": cams, "results": results,
                "duration_s": round(elapsed, 3), "fps": round(results / elapsed, 3) if elapsed > 0 else 0.0,
                "batching": {g: b.stats() for g, b in self.batchers.items()}}
