"""Live scheduling of a fusion bundle: what runs at each tick of the pipeline, on which data.

A tick is one inference instant ``t``: the capture time of a video frame, or, while there is no video
(a camera lost, an audio-only model), an instant on the audio timeline. At each tick:

  early:        the one model runs on the frame and the audio window ending at t (``AudioRing.align``).
  intermediate: each encoder runs when its own rate says it is due (``fusion.rates_hz``, in seconds of
                capture time, not in frame counts); its embedding is cached with the capture time it
                describes; the head runs on the freshest embeddings. An embedding older than
                ``max_age_s`` counts as missing (zeroed, presence flag 0): a timestamp bound, so a silent
                sensor never stalls fusion and never feeds stale evidence.
  late:         each member runs at its rate (every tick by default); fresh member outputs are combined
                by the manifest's rule; a stale or missing member is left out.

A modality is missing when its source is down, when its data is older than the bound, or (audio) when
more than ``max_audio_missing`` of the window is not there. ``StepResult.degraded`` lists the missing
modalities; models with presence inputs get 0 for them (``FusionModel.run_graph``).

Attribution (optional) is the "left out" half of a leave-one-out: late fusion recombines the other
members (free), intermediate fusion reruns the head with one embedding absent (cheap), early fusion reruns
the whole model with one input zeroed (costly: only when asked, ``attribution="ablation"``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from edgemm.bundle import InputSpec
from edgemm.errors import EdgemmError
from edgemm.fusion import SENSORS, FusionModel
from edgemm.preprocess import AudioFeatureStream, preprocess_video
from edgemm.sources.base import Frame
from edgemm.sync import AudioRing, AudioWindow


@dataclass
class LiveSettings:
    max_skew_s: float = 0.040  # A/V skew bound: the audio window ends within this of the frame time
    audio_wait_s: float = 0.020  # how long a frame may wait for its audio to arrive
    max_audio_missing: float = 0.5  # more of the window missing than this: audio counts as absent
    max_age_s: float | None = None  # None: the manifest's fusion.max_age_s
    rates_hz: dict[str, float] = field(default_factory=dict)  # override/extend fusion.rates_hz (late too)
    attribution: str = "auto"  # auto (late, intermediate), off, ablation (also early: reruns the model)


@dataclass
class Prepared:
    """What the capture thread prepared for one frame, while the worker was busy with the previous one."""

    video: dict[tuple[str, str], np.ndarray]  # (graph, input) -> tensor
    audio: dict[tuple[str, str], np.ndarray] | None = None  # audio tensors cut for this frame (every-tick inputs)
    window: AudioWindow | None = None
    work_s: float = 0.0  # preprocessing time (wall: the "preprocess" latency stage)
    cpu_s: float = 0.0  # ... the capture thread's CPU time for it (the work, whatever preempted the thread)
    wait_s: float = 0.0  # time spent waiting for the audio to reach the frame


@dataclass
class Tick:
    t: float  # the instant the inference is about (frame capture time, or audio time)
    frame: Frame | None = None  # the newest frame, None when video is missing or not used
    prepared: Prepared | None = None  # tensors made in the capture thread
    present: dict[str, bool] = field(default_factory=dict)  # modality -> its source is up


@dataclass
class StepResult:
    t: float
    outputs: dict[str, np.ndarray]
    degraded: list[str]
    without: dict[str, dict | None] | None = None  # modality -> outputs with it left out (attribution)
    per_modality: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # late: members used
    ages_s: dict[str, float] = field(default_factory=dict)  # age of each modality's evidence at t
    ran: list[str] = field(default_factory=list)  # graphs run this tick
    skew_s: float | None = None  # frame time minus end of the audio window used
    audio_missing: float | None = None  # fraction of the audio window zero-padded
    preprocess_s: float = 0.0  # building tensors (video prepared at capture is not in here)
    wait_s: float = 0.0  # waiting for the audio to catch up with the frame (capture, not work)
    infer_s: float = 0.0
    attribution_s: float = 0.0


class RateGate:
    """Due at `rate_hz` on a timeline of tick instants that may be irregular (frames, jitter, drops).

    A tick counts as on time up to a quarter period early, so an encoder at 15 Hz on a 30 fps camera runs
    on every second frame despite jitter; the schedule advances by whole periods so the average rate is
    the asked one, and restarts from now after a gap (no burst of catch-up runs).
    """

    def __init__(self, rate_hz: float | None):
        self.period = 1.0 / rate_hz if rate_hz else 0.0
        self.next: float | None = None

    def would_run(self, t: float) -> bool:
        """What due(t) would answer, without moving the schedule."""
        return not self.period or self.next is None or t >= self.next - 0.25 * self.period

    def would_run_after(self, t: float, t_prev: float | None) -> bool:
        """What due(t) will answer once the ticks up to t_prev (which this gate may not have seen yet) have
        run: for preparing data ahead of the worker. Each on-time threshold (``next - period / 4``, then one
        period apart) is taken by the first tick at or after it, so after t_prev the pending threshold is
        the first one past t_prev. A guess (a gap resets the schedule; a dropped tick takes nothing)."""
        if not self.period or self.next is None:
            return True
        first = self.next - 0.25 * self.period
        if t_prev is not None and t_prev >= first:
            first += (math.floor((t_prev - first) / self.period) + 1) * self.period
        return t >= first

    def due(self, t: float) -> bool:
        if not self.would_run(t):
            return False
        if not self.period:
            return True
        if self.next is None or t - self.next >= self.period:
            self.next = t + self.period
        else:
            self.next += self.period
        return True

    def reset(self) -> None:
        self.next = None


def _video_key(spec: InputSpec) -> tuple:
    p = spec.preprocess
    return (tuple(p.size), p.color, p.scale, tuple(p.mean), tuple(p.std), spec.dtype, spec.layout, p.resize,
            p.pad_value, p.baked)


class VideoPrep:
    """Frame -> tensors of every video input of the bundle, deduplicated across identical specs.

    Single-frame inputs are prepared by ``prepare`` (the capture thread calls it, so resizing overlaps
    the previous inference); inputs that stack several frames are built by ``tensors`` from the frame
    history kept by the worker.
    """

    def __init__(self, model: FusionModel):
        self.inputs: list[tuple[str, InputSpec]] = [(g, s) for g, gs in model.manifest.graphs.items()
                                                    for s in gs.inputs if s.modality == "video"]
        self.history = max([s.preprocess.frames for _, s in self.inputs] or [1])
        self._single = [(g, s) for g, s in self.inputs if s.preprocess.frames == 1]

    def prepare(self, frame: Frame) -> dict[tuple[str, str], np.ndarray]:
        done: dict[tuple, np.ndarray] = {}
        out = {}
        for g, s in self._single:
            key = _video_key(s)
            if key not in done:
                done[key] = preprocess_video(frame.image, s)
            out[(g, s.name)] = done[key]
        return out

    def tensors(self, history: list[Frame], prepared: dict | None) -> dict[tuple[str, str], np.ndarray]:
        out = dict(prepared or {})
        done: dict[tuple, np.ndarray] = {}
        for g, s in self.inputs:
            if (g, s.name) in out:
                continue
            key = _video_key(s) + (s.preprocess.frames,)
            if key not in done:
                done[key] = preprocess_video([f.image for f in history], s)
            out[(g, s.name)] = done[key]
        return out


class LiveFusion:
    """Runs a FusionModel tick by tick. Owns the per-modality caches; not thread-safe (one worker)."""

    def __init__(self, model: FusionModel, ring: AudioRing | None, settings: LiveSettings | None = None):
        self.model = model
        model.streaming = True  # recurrent state is carried from tick to tick (FusionModel.run_graph)
        self.manifest = m = model.manifest
        self.form = model.form
        self.ring = ring
        self.s = settings or LiveSettings()
        self.modalities = m.modalities()
        self.max_age_s = self.s.max_age_s if self.s.max_age_s is not None else m.fusion.max_age_s
        # A live microphone is waited for briefly (then the skew bound applies); audio from a file always
        # comes, so a frame waits for all of it and file runs are aligned exactly (the pipeline sets this).
        self.audio_wait_s = self.s.audio_wait_s
        rates = dict(m.fusion.rates_hz) | dict(self.s.rates_hz)
        self.gates = {mod: RateGate(rates.get(mod)) for mod in SENSORS}
        self.video = VideoPrep(model)
        self.audio_inputs = [(g, s) for g, gs in m.graphs.items() for s in gs.inputs if s.modality == "audio"]
        self.max_window = max([s.preprocess.window_samples for _, s in self.audio_inputs] or [0])
        # Successive windows share all but a few STFT columns: each input keeps its columns and computes only
        # the new ones, for which windows end on a grid of whole hops (of every spectrogram input). The
        # pipeline sets the grid to 1 for audio from a file, whose windows end exactly at the frame.
        self.audio_streams = {(g, s.name): AudioFeatureStream(s) for g, s in self.audio_inputs}
        hops = [s.preprocess.hop_length for _, s in self.audio_inputs if not s.preprocess.takes_waveform]
        self.audio_grid = math.lcm(*hops) if hops else 1
        self._frames: deque[Frame] = deque(maxlen=self.video.history)
        # Audio needed at every tick (early fusion, or an audio encoder/member without a rate) is cut and
        # featurised in the capture thread with the frame; rate-limited encoders get theirs when due.
        self.audio_every_tick = bool(self.audio_inputs) and (self.form == "early" or not self.gates["audio"].period)
        self._cache: dict[str, tuple[dict[str, np.ndarray], float]] = {}  # modality -> (outputs, capture t)
        self._prepared_t: float | None = None  # capture time of the last frame prepare() saw
        if self.audio_inputs and ring is not None:
            rate = {s.preprocess.sample_rate for _, s in self.audio_inputs}
            if len(rate) > 1:
                raise EdgemmError(f"Bundle: {m.name} | Audio inputs at several sample rates ({sorted(rate)}); "
                                  "expected one rate for the microphone.")
        attribution = self.s.attribution
        if attribution not in ("auto", "off", "ablation"):
            raise EdgemmError(f"Attribution: {attribution} | Unknown; expected auto, off or ablation.")
        self.attribute = attribution == "ablation" or (attribution == "auto" and self.form != "early")
        # What runs at a tick, by fusion form (the manifest has checked the form is one of these).
        self._run_form = {"early": self._step_early, "intermediate": self._step_intermediate,
                          "late": self._step_late}[self.form]

    # -- data for one tick -----------------------------------------------------------------------------
    def prepare(self, frame: Frame) -> Prepared:
        """Called by the video capture thread: the frame's video tensors and, where every tick needs them,
        its audio tensors (waiting, within the skew bound, for the audio to reach the frame)."""
        t0, c0 = time.perf_counter(), time.thread_time()
        # A video encoder (or member) at its own rate that will not run on this frame needs no tensors: on
        # a 30 fps camera a 5 Hz encoder skips 25 frames in 30. (The gate is the worker's; read here without
        # a lock, a stale answer only moves the work: VideoPrep.tensors builds anything missing.)
        if self.form == "early":
            video_due = True
        else:
            video_due = self.gates["video"].would_run_after(frame.t, self._prepared_t)
            self._prepared_t = frame.t
        video = self.video.prepare(frame) if video_due else {}
        prepared = Prepared(video)
        if self.audio_every_tick and self.ring is not None:
            prepared.audio, prepared.window = self._audio(frame.t, True)
            prepared.wait_s = prepared.window.waited_s
        prepared.work_s = time.perf_counter() - t0 - prepared.wait_s
        prepared.cpu_s = time.thread_time() - c0  # (waiting for audio costs no CPU)
        return prepared

    def video_due(self, t: float) -> bool:
        """Whether the video graph would run on a frame captured at t (always in early fusion)."""
        return self.form == "early" or self.gates["video"].would_run(t)

    def _audio(self, t: float, video_tick: bool) -> tuple[dict[tuple[str, str], np.ndarray], AudioWindow | None]:
        """Audio tensors for every audio input, cut from one window ending at the aligned instant."""
        if not self.audio_inputs or self.ring is None:
            return {}, None
        if video_tick:
            w = self.ring.align(t, self.max_window, self.s.max_skew_s, self.audio_wait_s, self.audio_grid)
        else:
            w = self.ring.window(t, self.max_window, self.audio_grid)
            self.ring.note_consumed(t)
        out = {}
        for g, s in self.audio_inputs:
            cut = len(w.samples) - s.preprocess.window_samples
            first = None if w.first is None else w.first + cut
            out[(g, s.name)] = self.audio_streams[(g, s.name)](w.samples[cut:], first, w.epoch)
        return out, w

    @staticmethod
    def _graph_feed(graph: str, tensors: Mapping[tuple[str, str], np.ndarray]) -> dict[str, np.ndarray]:
        return {name: v for (g, name), v in tensors.items() if g == graph}

    # -- the tick ----------------------------------------------------------------------------------------
    def step(self, tick: Tick) -> StepResult | None:
        t0 = time.perf_counter()
        present = {mod: bool(tick.present.get(mod, True)) for mod in self.modalities}
        video_tick = tick.frame is not None
        if "video" in present:
            present["video"] = present["video"] and video_tick
        tensors: dict[tuple[str, str], np.ndarray] = {}
        prepared = tick.prepared
        if video_tick and "video" in self.modalities:
            self._frames.append(tick.frame)
            if self.video_due(tick.t):  # (an encoder at its own rate that is not due needs no tensors)
                tensors.update(self.video.tensors(list(self._frames), prepared.video if prepared else None))
        window = None
        waited = 0.0
        if present.get("audio"):
            audio = {}
            if prepared is not None and prepared.window is not None:
                audio, window = prepared.audio, prepared.window  # cut in the capture thread
            elif self.audio_every_tick or self.gates["audio"].would_run(tick.t):
                audio, window = self._audio(tick.t, video_tick)
                waited = window.waited_s if window is not None else 0.0
            # (else: an encoder at its own rate that is not due: no window is cut this tick)
            if window is not None and window.missing_fraction > self.s.max_audio_missing:
                present["audio"] = False
            else:
                tensors.update(audio)
            if window is not None and window.missing_fraction > 0:
                self.model.reset_state("audio")  # a gap: what the state remembers no longer leads here
        for mod in self.modalities:
            if not present[mod]:
                self.model.reset_state(mod)  # lost or stale: the stream starts afresh when it is back
        if not any(present.values()) and self.form == "early":
            return None
        prep = time.perf_counter() - t0 - waited
        res = self._run_form(tick.t, tensors, present)
        if res is None:
            return None
        res.preprocess_s += prep
        res.wait_s = waited
        if window is not None and present.get("audio"):
            res.skew_s = window.skew_s
            res.audio_missing = window.missing_fraction
        return res

    def _timed(self, res: StepResult, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        res.infer_s += time.perf_counter() - t0
        return out

    def _step_early(self, t, tensors, present) -> StepResult:
        graph = self.model.decision_graph
        feed = self._graph_feed(graph, tensors)
        res = StepResult(t, {}, [m for m in self.modalities if not present[m]], ran=[graph])
        res.outputs = self._timed(res, self.model.run_graph, graph, feed, present)
        res.ages_s = {m: 0.0 for m in self.modalities if present[m]}
        if self.attribute and self.s.attribution == "ablation":
            t1 = time.perf_counter()
            alive = [m for m in self.modalities if present[m]]
            res.without = {m: (self.model.run_graph(graph, feed, {**present, m: False}, advance=False)
                               if len(alive) > 1 else None) for m in alive}
            res.attribution_s = time.perf_counter() - t1
        return res

    def _fresh(self, t: float) -> dict[str, float]:
        """Modality -> age of its cached evidence, for those within max_age_s of t."""
        ages = {m: t - ct for m, (_, ct) in self._cache.items()}
        return {m: a for m, a in ages.items() if a <= self.max_age_s}

    def _run_due(self, t, tensors, present, res: StepResult, run) -> None:
        for mod in self.modalities:
            if not present[mod]:
                continue
            if not self.gates[mod].due(t):
                continue
            graph = self._graph_of(mod)
            outputs = self._timed(res, run, mod, self._graph_feed(graph, tensors))
            self._cache[mod] = (outputs, t)
            res.ran.append(graph)

    def _graph_of(self, mod: str) -> str:
        f = self.manifest.fusion
        return f.encoders[mod] if self.form == "intermediate" else f.members[mod]

    def _step_intermediate(self, t, tensors, present) -> StepResult | None:
        res = StepResult(t, {}, [])
        self._run_due(t, tensors, present, res, self.model.encode)
        fresh = self._fresh(t)
        if not fresh:
            return None
        embeddings: dict[str, np.ndarray] = {}
        for mod in fresh:  # a stale or never-seen modality's embeddings are zeros (fusion.graph_feed)
            embeddings.update(self._cache[mod][0])
        head_present = {m: m in fresh for m in self.manifest.fusion.encoders}
        res.degraded = [m for m in self.modalities if not head_present.get(m, False)]
        res.ages_s = fresh
        res.outputs = self._timed(res, self.model.fuse, embeddings, head_present)
        res.ran.append(self.manifest.fusion.head)
        if self.attribute:
            t1 = time.perf_counter()
            res.without = {m: (self.model.fuse(embeddings, {**head_present, m: False})
                               if len(fresh) > 1 else None) for m in fresh}
            res.attribution_s = time.perf_counter() - t1
        return res

    def _step_late(self, t, tensors, present) -> StepResult | None:
        res = StepResult(t, {}, [])
        self._run_due(t, tensors, present, res, self.model.member)
        fresh = self._fresh(t)
        if not fresh:
            return None
        members = {m: self._cache[m][0] for m in self.manifest.fusion.members if m in fresh}
        res.per_modality = members
        res.degraded = [m for m in self.modalities if m not in fresh]
        res.ages_s = fresh
        t1 = time.perf_counter()
        res.outputs = self.model.combine(members)
        res.infer_s += time.perf_counter() - t1
        if self.attribute:
            t1 = time.perf_counter()
            res.without = {m: (self.model.combine({k: v for k, v in members.items() if k != m})
                               if len(members) > 1 else None) for m in members}
            res.attribution_s = time.perf_counter() - t1
        return res

    def reset_modality(self, mod: str) -> None:
        """A source came back: its next data is due at once (not a period after its last run), and recurrent
        state starts from zeros."""
        self.gates[mod].reset()
        self.model.reset_state(mod)
        if mod == "video":
            self._frames.clear()
            self._prepared_t = None
