"""The streaming pipeline end to end: real ONNX models, real sources (test patterns, files, an ffmpeg camera on
loopback killed and restarted, a JACK microphone), real threads. No timing assertions: counts, bounds and
ratios with wide margins (this machine is shared)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgemm.bench import Reservoir
from edgemm.bundle import load_bundle
from edgemm.capture import CaptureFailed, FlowLimiter
from edgemm.decisions import AlertRule
from edgemm.errors import EdgemmError
from edgemm.pipeline import Pipeline, PipelineSettings
from edgemm.scheduler import RateGate
from edgemm.sinks import Sink, VideoSink
from edgemm.sources import open_source
from edgemm.sources.base import Source, SourceError, now
from edgemm.sources.patterns import ArrayAudioSource
from tests import onnx_models
from tests.onnx_models import _init, _model
from tests.rigs import (
    ESTABLISHED,
    LISTEN,
    FfmpegStream,
    JackServer,
    require,
    require_module,
)

SR = 16000


class Collect(Sink):
    """A sink that keeps what it is given (a real Sink, used by the pipeline like any other)."""

    name = "collect"

    def __init__(self):
        self.results, self.events, self.summaries, self.frames = [], [], [], 0
        self.closed = False

    def result(self, record, frame=None):
        self.results.append(record)
        self.frames += frame is not None

    def event(self, event):
        self.events.append(event)

    def summary(self, summary):
        self.summaries.append(summary)

    def close(self):
        self.closed = True


def run_pipeline(bundle, video=None, audio=None, seconds=None, settings=None, **kw):
    sink = Collect()
    with Pipeline(load_bundle(bundle), video=video, audio=audio, sinks=[sink], settings=settings,
                  duration_s=seconds, threads=1, **kw) as p:
        while p.is_streaming():
            p.step()
    assert sink.closed and sink.summaries
    return sink, p.final_summary


def live_av(size="320x240"):
    return (open_source(f"test://video?size={size}&fps=30", "video"),
            open_source("test://audio?kind=noise", "audio"))


def test_live_audio_features_are_incremental_and_equal_to_the_whole_window(tmp_path):
    """Live audio: windows end on the hop grid and each tick computes only the new log-mel columns; every
    tensor the model got equals the whole computation on its window. A file keeps exact alignment."""
    from edgemm.preprocess import preprocess_audio

    bundle = load_bundle(onnx_models.write_av_bundle(tmp_path / "av"))
    video, audio = live_av()
    seen = []

    class Recording:  # the real stream, with what it was given and what it returned kept for the check
        def __init__(self, stream):
            self.stream = stream

        def __call__(self, waveform, first=None, epoch=None):
            out = self.stream(waveform, first, epoch)
            seen.append((waveform.copy(), first, out))
            return out

    with Pipeline(bundle, video=video, audio=audio, sinks=[Collect()], duration_s=2.0, threads=1) as p:
        (key, stream), = p.scheduler.audio_streams.items()
        p.scheduler.audio_streams[key] = Recording(stream)
        spec = stream.spec
        while p.is_streaming():
            p.step()
    hop = spec.preprocess.hop_length
    assert p.scheduler.audio_grid == hop and len(seen) >= 20
    assert all((first + spec.preprocess.window_samples) % hop == 0 for _, first, _ in seen)
    assert stream.reused > 5 * stream.computed, (stream.reused, stream.computed)
    worst = max(float(np.abs(out - preprocess_audio(w, spec)).max()) for w, _, out in seen)
    assert worst <= 1e-5
    with Pipeline(bundle, video=open_source("test://video?size=64x48&fps=30&frames=3&live=0&realtime=0", "video"),
                  audio=ArrayAudioSource(np.zeros(SR, np.float32), SR, live=False, realtime=False)) as f:
        assert f.scheduler.audio_grid == 1


# ------------------------------------------------------------------------------------------- small parts

def test_flow_limiter_drops_oldest_when_live_and_blocks_for_files():
    live = FlowLimiter(2, drop_oldest=True)
    assert live.put(1) and live.put(2)
    assert live.get(0) == 1  # 1 is in the worker now; 2 waits
    assert live.put(3)  # full: 3 replaces the waiting 2
    assert live.dropped == 1 and live.get(0) == 3
    assert not live.put(4) and live.dropped == 2  # both in flight are being processed: dropped at the entry
    live.done()
    assert live.put(5) and live.get(0) == 5
    files = FlowLimiter(1, drop_oldest=False)
    files.put("a")
    t = threading.Thread(target=files.put, args=("b",))
    t.start()
    t.join(0.2)
    assert t.is_alive()  # waits for room: nothing is lost
    assert files.get(0) == "a"
    files.done()
    t.join(2)
    assert not t.is_alive() and files.get(0) == "b" and files.dropped == 0


def test_rate_gate_is_time_based():
    gate = RateGate(15.0)  # on a 30 fps timeline with 3 ms jitter: every second frame
    rng = np.random.default_rng(0)
    ticks = [k / 30 + rng.uniform(-0.003, 0.003) for k in range(300)]
    runs = sum(gate.due(t) for t in ticks)
    assert 148 <= runs <= 152
    gate = RateGate(15.0)  # on a 10 fps timeline the encoder cannot run more often than the frames
    assert sum(gate.due(k / 10) for k in range(100)) == 100
    gate = RateGate(5.0)
    assert sum(gate.due(k / 30) for k in range(300)) == pytest.approx(50, abs=1)


def test_reservoir_keeps_memory_bounded_and_statistics_honest():
    r = Reservoir(1000, seed=1)
    values = np.random.default_rng(0).exponential(0.01, 100_000)
    for v in values:
        r.add(float(v))
    assert len(r.values) == 1000 and r.count == 100_000
    st = r.stats_ms()
    assert st["p50"] == pytest.approx(np.median(values) * 1e3, rel=0.15)


def test_reservoir_min_max_mean_are_exact_not_the_samples():
    """A single spike among 20,000 values is almost never in a 100-value sample; the summary's max must
    still be it (the soak's max was the sample's 41.7 ms while the JSONL held 105.7 ms)."""
    r = Reservoir(100, seed=3)
    values = np.full(20_000, 0.02)
    values[12_345] = 0.1057
    values[17_000] = 0.001
    for v in values:
        r.add(float(v))
    assert 0.1057 not in r.values and 0.001 not in r.values  # the sample missed both
    st = r.stats_ms()
    assert st["max"] == pytest.approx(105.7) and st["min"] == pytest.approx(1.0)
    assert st["mean"] == pytest.approx(values.mean() * 1e3, abs=1e-4) and st["count"] == 20_000
    assert r.sum == pytest.approx(values.sum())


# ------------------------------------------------------------------------------------ the three forms live

@pytest.mark.parametrize("form", ["early", "intermediate", "late"])
def test_each_fusion_form_runs_live(tmp_path, form):
    writer = {"early": onnx_models.write_av_bundle, "intermediate": onnx_models.write_intermediate_bundle,
              "late": onnx_models.write_late_bundle}[form]
    bundle = writer(tmp_path / form)
    video, audio = live_av()
    settings = PipelineSettings(attribution="ablation" if form == "early" else "auto")
    sink, summary = run_pipeline(bundle, video, audio, seconds=2.0, settings=settings)
    results = sink.results
    assert len(results) >= 10 and summary["results"] == len(results)
    assert sink.frames == len([r for r in results if "video" not in r["degraded"]])
    for r in results:
        assert set(r["latency_ms"]) == {"capture", "preprocess", "infer", "postprocess", "sink", "total"}
        assert r["latency_ms"]["total"] >= r["latency_ms"]["infer"] - 1e-3
        out = r["outputs"]["logits"]
        assert out["label"] in [str(i) for i in range(10)] and 0 < out["score"] <= 1
        if r["skew_ms"] is not None:
            assert abs(r["skew_ms"]) <= 40.0 + 1e-6
    # Once the microphone has a full window nothing is missing; both modalities carry evidence.
    settled = [r for r in results if r["t"] > results[0]["t"] + 1.0]
    assert settled and all(r["degraded"] == [] for r in settled)
    a = settled[-1]["attribution"]
    assert a is not None and {"video", "audio"} <= set(a) and a["label"] == settled[-1]["outputs"]["logits"]["label"]
    if form == "late":
        assert set(a["members"]) == {"video", "audio"} and a["method"] == "leave_one_out_members"
    if form == "intermediate":
        assert a["method"] == "leave_one_out_embeddings"
    assert summary["latency_ms"]["total"]["count"] == len(results)
    assert summary["ports"]["video"]["policy"] == "drop_oldest"


# ----------------------------------------------------------------------------- exact alignment on files

def align_model() -> onnx.ModelProto:
    """A plain two-input ONNX (no manifest): video [N,3,32,32] and waveform [N,16000];
    outputs the last audio sample it was given and the mean of the image."""
    nodes = [helper.make_node("Slice", ["waveform", "starts", "ends", "axes"], ["a_last"]),
             helper.make_node("ReduceMean", ["video"], ["vm"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Unsqueeze", ["vm", "ax1"], ["v_mean"])]
    inits = [_init("starts", np.array([-1]), np.int64), _init("ends", np.array([2**62]), np.int64),
             _init("axes", np.array([1]), np.int64), _init("ax1", np.array([1]), np.int64)]
    return _model(nodes, [helper.make_tensor_value_info("video", TensorProto.FLOAT, ["N", 3, 32, 32]),
                          helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["N", 16000])],
                  [helper.make_tensor_value_info("a_last", TensorProto.FLOAT, ["N", 1]),
                   helper.make_tensor_value_info("v_mean", TensorProto.FLOAT, ["N", 1])], inits, "align")


def test_each_frame_gets_the_audio_ending_at_its_capture_time(tmp_path):
    """Files read as fast as possible, one media clock: frame k (t = start + k/30) must get the window whose
    last sample is sample k*16000/30 - 1. The audio is a ramp (sample n holds n * 1e-5), and the model
    returns the last sample it saw, so any misalignment shows as a wrong index."""
    path = tmp_path / "align.onnx"
    onnx.save(align_model(), str(path))
    frames = 60
    ramp = (np.arange(3 * SR) * 1e-5).astype(np.float32)
    video = open_source(f"test://video?size=64x48&fps=30&frames={frames}&live=0&realtime=0", "video")
    audio = ArrayAudioSource(ramp, SR, live=False, realtime=False)
    sink, summary = run_pipeline(path, video, audio)
    results = sink.results
    assert len(results) == frames  # a file loses nothing
    assert summary["ports"]["video"]["dropped"] == 0 and summary["ports"]["video"]["policy"] == "block"
    t0 = results[0]["t"]
    checked = 0
    for r in results:
        k = round((r["t"] - t0) * 30)
        if r["degraded"]:  # less than half a window of audio yet: audio counted missing
            assert r["degraded"] == ["audio"] and k < 16
            continue
        expected_last = k * SR // 30 - 1
        got = r["outputs"]["a_last"]["values"][0] / 1e-5
        assert abs(got - expected_last) <= 1.0, (k, got, expected_last)
        assert r["skew_ms"] == 0.0
        checked += 1
    assert checked >= frames - 16


def test_intermediate_encoders_run_at_their_own_rates(tmp_path):
    """Rates are in capture time: on a 30 fps clip the 15 Hz video encoder runs on every other frame and the
    5 Hz audio encoder on every sixth, whatever speed the clip is read at."""
    bundle = onnx_models.write_intermediate_bundle(tmp_path / "inter")
    video = open_source("test://video?size=64x48&fps=30&frames=90&live=0&realtime=0", "video")
    audio = ArrayAudioSource(np.random.default_rng(0).uniform(-0.5, 0.5, 3 * SR).astype(np.float32), SR,
                             live=False, realtime=False)
    sink, summary = run_pipeline(bundle, video, audio)
    ran = [g for r in sink.results for g in r["ran"]]
    assert len(sink.results) == 90
    # Frames the 15 Hz encoder will not run on are not prepared in the capture thread either.
    assert 40 <= summary["ports"]["video"]["prepared"] <= 50, summary["ports"]["video"]
    assert ran.count("head") == 90
    assert 44 <= ran.count("video_encoder") <= 46
    # Audio is there (more than half a window) from 0.5 s on: 2.5 s at 5 Hz.
    assert 11 <= ran.count("audio_encoder") <= 14
    # Between its runs the audio embedding ages, and its age is reported (never beyond max_age_s).
    ages = [r["ages_ms"]["audio"] for r in sink.results if "audio" in r["ages_ms"]]
    assert max(ages) == pytest.approx(1000 / 5 - 1000 / 30, abs=2) and min(ages) == 0.0


def test_a_stale_embedding_counts_as_missing(tmp_path):
    """Timestamp bound: with max_age_s below the audio encoder's period, its embedding is used while fresh
    and then dropped (zeroed, presence 0), so the head never waits for audio and never uses old audio."""
    bundle = onnx_models.write_intermediate_bundle(tmp_path / "inter")
    video = open_source("test://video?size=64x48&fps=30&frames=60&live=0&realtime=0", "video")
    audio = ArrayAudioSource(np.ones(2 * SR, np.float32) * 0.1, SR, live=False, realtime=False)
    sink, _ = run_pipeline(bundle, video, audio, settings=PipelineSettings(max_age_s=0.1))
    late = [r for r in sink.results if r["t"] - sink.results[0]["t"] > 0.6]
    fresh = [r for r in late if "audio" not in r["degraded"]]
    stale = [r for r in late if "audio" in r["degraded"]]
    assert fresh and stale
    assert all(r["ages_ms"]["audio"] <= 100 for r in fresh) and all("audio" not in r["ages_ms"] for r in stale)
    assert all("audio" not in (r["attribution"] or {}) for r in stale)


# ------------------------------------------------------------------------------------------------ flow

def slow_video_model(depth: int = 1) -> onnx.ModelProto:
    """A video-only classifier heavy enough to be slower than a 30 fps camera on one thread; ``depth`` 3x3
    convolutions of 32 channels at 224x224 (each adds about the same time)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["video", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"])]
    inits = [_init("w1", rng.standard_normal((32, 3, 3, 3)) * 0.2), _init("b1", np.zeros(32))]
    for i in range(2, depth + 2):
        nodes += [helper.make_node("Conv", [f"r{i - 1}", f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        inits += [_init(f"w{i}", rng.standard_normal((32, 32, 3, 3)) * 0.05), _init(f"b{i}", np.zeros(32))]
    nodes += [helper.make_node("GlobalAveragePool", [f"r{depth + 1}"], ["g"]),
              helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1)]
    inits += [_init("fw", rng.standard_normal((4, 32)) * 0.3), _init("fb", np.zeros(4))]
    return _model(nodes, [helper.make_tensor_value_info("video", TensorProto.FLOAT, ["N", 3, 224, 224])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits, "slow")


@pytest.fixture
def slow_model(tmp_path):
    path = tmp_path / "slow.onnx"
    onnx.save(slow_video_model(), str(path))
    return path


def model_seconds(path) -> float:
    """One inference of a video model on one thread, here and now (the mean of three after a warm-up)."""
    from edgemm.runners import make_runner

    with make_runner(load_bundle(path), threads=1) as r:
        feed = {"video": np.zeros((1, 3, 224, 224), np.float32)}
        r.infer(feed)
        t = time.perf_counter()
        for _ in range(3):
            r.infer(feed)
        return (time.perf_counter() - t) / 3


MAX_TEST_FPS = 200.0  # a 320x240 test pattern renders this fast with room to spare on any machine


def test_a_slow_model_on_a_live_camera_drops_frames_not_latency(tmp_path):
    # A camera three times faster than the model, whatever this machine's speed: the camera's rate is capped,
    # so on a fast machine the model is made deeper until a third of the rate is under the cap. (A camera
    # merely as fast as the model drops little and prepares nearly every frame, rightly: each one is used.)
    path, depth = tmp_path / "slow.onnx", 1
    for _ in range(4):
        onnx.save(slow_video_model(depth), str(path))
        model_s = model_seconds(path)
        if 3.0 / model_s <= MAX_TEST_FPS:
            break
        depth = math.ceil(depth * 1.3 * 3.0 / (MAX_TEST_FPS * model_s))
    fps = min(MAX_TEST_FPS, max(30.0, 3.0 / model_s))
    video = open_source(f"test://video?size=320x240&fps={fps:.1f}", "video")
    sink, summary = run_pipeline(path, video, seconds=3.0)
    infer = summary["latency_ms"]["infer"]["p50"]
    if infer <= 1000 / fps:  # a precondition about this machine, not a property of the pipeline
        pytest.skip(f"the model ({infer:.1f} ms) was not slower than the {fps:.0f} fps camera here")
    assert summary["ports"]["video"]["dropped"] > 0
    # Frames that are dropped, or replaced before the worker is free, are not prepared for nothing.
    port = summary["ports"]["video"]
    assert port["prepared"] < 0.8 * port["captured"], port
    assert port["prepared_dropped"] < 0.25 * port["dropped"], port
    # Waiting for the worker never exceeds about one inference (the frame waiting was replaced by newer ones).
    capture = [r["latency_ms"]["capture"] for r in sink.results]
    assert np.median(capture) < 2.5 * infer + 30
    # And it does not grow over the run.
    totals = [r["latency_ms"]["total"] for r in sink.results]
    assert np.median(totals[-5:]) < 2.0 * np.median(totals[:5]) + 50


def test_a_slow_model_on_a_file_loses_nothing(slow_model):
    video = open_source("test://video?size=640x480&fps=30&frames=24&live=0&realtime=1", "video")
    sink, summary = run_pipeline(slow_model, video)
    assert [r["t"] for r in sink.results] == sorted(r["t"] for r in sink.results)
    assert len(sink.results) == 24 and summary["ports"]["video"]["dropped"] == 0


def test_an_audio_only_model_ticks_on_the_audio_timeline(tmp_path):
    path = tmp_path / "kws.onnx"
    onnx.save(onnx_models.member_model("audio", classes=3), str(path))
    settings = PipelineSettings(tick_hz=10.0)
    sink, summary = run_pipeline(path, audio=open_source("test://audio?kind=chirp", "audio"), seconds=2.0,
                                 settings=settings)
    assert "video" not in summary["ports"] and summary["ports"]["audio"]["blocks"] > 50
    ts = [r["t"] for r in sink.results]
    assert 10 <= len(ts) <= 22
    assert np.median(np.diff(ts)) == pytest.approx(0.1, abs=0.02)
    assert all(r["skew_ms"] is None for r in sink.results)


def test_an_audio_file_is_ticked_through_not_skipped(tmp_path):
    """An audio-only model on a WAV read faster than real time: a tick every 1/tick_hz of audio from the
    first full window to the end, none skipped (live audio jumps to the present; a file loses nothing)."""
    path = tmp_path / "kws.onnx"
    onnx.save(onnx_models.member_model("audio", classes=3), str(path))
    seconds = 6.0
    audio = ArrayAudioSource(np.random.default_rng(0).uniform(-0.5, 0.5, int(seconds * SR)).astype(np.float32), SR,
                             live=False, realtime=False)
    sink, _ = run_pipeline(path, audio=audio, settings=PipelineSettings(tick_hz=10.0))
    ts = np.array([r["t"] for r in sink.results])
    window = 0.995  # the inferred log-mel input: 98 frames of 10 ms at 16 kHz
    assert len(ts) == int((seconds - window) / 0.1 + 1e-6) + 1, len(ts)
    np.testing.assert_allclose(np.diff(ts), 0.1, atol=1e-6)
    assert ts[0] - audio.start_time == pytest.approx(window, abs=1e-3)
    assert all(r["degraded"] == [] for r in sink.results)


def test_sinks_get_the_frame_rate_of_a_file_opened_after_them(tmp_path):
    """A 25 fps clip: its rate is known once the file is open (after the sinks); the annotated video must
    still be written at 25 fps, not at a 30 fps default."""
    require("ffmpeg")
    clip = tmp_path / "clip25.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=96x64:rate=25", "-t", "1", "-pix_fmt", "yuv420p", str(clip)], check=True, timeout=60)
    model = tmp_path / "v.onnx"
    onnx.save(onnx_models.member_model("video", classes=3), str(model))
    out = tmp_path / "annotated.mp4"
    video = open_source(f"file://{clip}?realtime=0", "video")
    assert video.fps is None  # not opened yet
    with Pipeline(load_bundle(model), video=video, sinks=[VideoSink(str(out))], threads=1) as p:
        while p.is_streaming():
            p.step()
    import cv2

    cap = cv2.VideoCapture(str(out))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(25.0) and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 25
    cap.release()


def test_alerts_become_events(tmp_path):
    bundle = onnx_models.write_late_bundle(tmp_path / "late")
    video, audio = live_av()
    # Whatever the top label is, its probability among 10 classes is above 0.1: alert on every label.
    alerts = [AlertRule(str(i), on=0.11, off=0.1, min_on_s=0.2, smoothing_s=0.1) for i in range(10)]
    sink, summary = run_pipeline(bundle, video, audio, seconds=1.5, alerts=alerts)
    kinds = [e["event"] for e in sink.events]
    assert summary["events"].get("alert_start", 0) == kinds.count("alert_start")
    assert "alert_start" in kinds and kinds.count("alert_start") == kinds.count("alert_end")
    assert any(r["alerts"] for r in sink.results)


# ------------------------------------------------------------------------------------- sensor faults

def _wait_until(pipe: Pipeline, cond, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not cond():
        pipe.step()


class WrappedCamera(Source):
    """A live test-pattern camera (test://video) with faults injected around it, for the pipeline's fault
    handling: the frames, their timing and the open/close/read protocol are the real source's."""

    modality = "video"
    live = True

    def __init__(self, fps: float = 30.0):
        super().__init__("fault://camera")
        self.inner = open_source(f"test://video?size=64x48&fps={fps}", "video")
        self.fps = fps
        self.opens = 0
        self.reads = 0

    def open(self):
        self.inner.open()
        self.opens += 1

    def close(self):
        self.inner.close()

    def read(self, timeout=None):
        self.reads += 1
        return self.inner.read(timeout)


class OutageCamera(WrappedCamera):
    """Breaks after some frames, cannot be opened for outage_s, and once open again delivers nothing for
    warmup_s (as a stream waiting for its next keyframe, or a microphone anchoring its clock)."""

    def __init__(self, fail_after=30, outage_s=1.2, warmup_s=0.3):
        super().__init__()
        self.fail_after, self.outage_s, self.warmup_s = fail_after, outage_s, warmup_s
        self.delivered = 0
        self.broken_at = None
        self.opened_at = None
        self.failed_opens = 0

    def open(self):
        if self.broken_at is not None and now() - self.broken_at < self.outage_s:
            self.failed_opens += 1
            raise SourceError("Camera: fault://camera | Unplugged; expected it to come back.")
        super().open()
        self.opened_at = now()

    def read(self, timeout=None):
        if self.opens > 1 and now() - self.opened_at < self.warmup_s:
            time.sleep(min(timeout or 0.05, 0.05))
            return None
        frame = super().read(timeout)
        if frame is not None:
            self.delivered += 1
            if self.broken_at is None and self.delivered >= self.fail_after:
                self.broken_at = now()
                raise SourceError("Camera: fault://camera | The stream broke.")
        return frame


class CrashingCamera(WrappedCamera):
    """read() raises a RuntimeError (a bug, not a SourceError) on the given read numbers, or always."""

    def __init__(self, crash_on=(), always_after=None, live=True):
        super().__init__()
        self.crash_on, self.always_after, self.live = set(crash_on), always_after, live

    def read(self, timeout=None):
        frame = super().read(timeout)
        if self.reads in self.crash_on or (self.always_after is not None and self.reads > self.always_after):
            raise RuntimeError(f"bug in the source at read {self.reads}")
        return frame


def _video_model(tmp_path) -> Path:
    path = tmp_path / "v.onnx"
    onnx.save(onnx_models.member_model("video", classes=3), str(path))
    return path


def test_one_outage_is_one_reconnect(tmp_path):
    """After a reopening the source needs a moment before its first frame: that wait is neither a new loss
    (silence measured from the last frame before the outage would force a second, needless reopening) nor a
    frame period (the period estimate, which sets the stale bound, must not jump to the outage's length)."""
    cam = OutageCamera(fail_after=30, outage_s=1.2, warmup_s=0.3)
    settings = PipelineSettings(reconnect_initial_s=0.2, reconnect_max_s=0.4, stall_reopen_s=1.0)
    sink = Collect()
    periods = []
    with Pipeline(load_bundle(_video_model(tmp_path)), video=cam, sinks=[sink], settings=settings, threads=1) as p:
        _wait_until(p, lambda: any(e["event"] == "source_recovered" for e in sink.events), 20)
        n_back = len(sink.results)
        deadline = time.monotonic() + 20
        while len(sink.results) < n_back + 20 and time.monotonic() < deadline:
            p.step()
            periods.append(p.captures["video"].period)
    summary = p.final_summary
    assert cam.opens == 2, (cam.opens, cam.failed_opens)  # the first opening and one reopening
    assert summary["reconnects"]["video"] == cam.failed_opens + 1
    assert [e["event"] for e in sink.events if e["event"].startswith("source_")] == ["source_lost", "source_recovered"]
    assert max(periods) < 3 / 30, max(periods)


class SlowFirstFrameCamera(OutageCamera):
    """As OutageCamera, but once open again its first frame is read (and stamped) and then held for hold_s
    before it is returned: a decoder that takes its time over the first frame of a stream, on a loaded box."""

    def __init__(self, hold_s=0.3, **kw):
        super().__init__(warmup_s=0.0, **kw)
        self.hold_s = hold_s
        self.held = 0

    def read(self, timeout=None):
        frame = super().read(timeout)
        if frame is not None and self.opens > 1 and not self.held:
            self.held += 1
            time.sleep(self.hold_s)
        return frame


def test_results_keep_capture_order_when_the_camera_comes_back(tmp_path):
    """While the camera is away, video+audio models tick on the audio timeline. The first frame after the
    camera's return was read before the ticks made while it was being delivered: run, its result went out
    after theirs with an earlier t (a 30-minute soak saw t go back 4 ms, in the file and over MQTT). It is
    dropped and counted instead; t only rises."""
    cam = SlowFirstFrameCamera(fail_after=30, outage_s=1.0)
    _, audio = live_av()
    settings = PipelineSettings(reconnect_initial_s=0.2, reconnect_max_s=0.4, stall_reopen_s=1.0)
    sink = Collect()
    with Pipeline(load_bundle(onnx_models.write_late_bundle(tmp_path / "late")), video=cam, audio=audio,
                  sinks=[sink], settings=settings, threads=1) as p:
        _wait_until(p, lambda: any(e["event"] == "source_recovered" for e in sink.events), 20)
        n_back = len(sink.results)
        _wait_until(p, lambda: len(sink.results) >= n_back + 20, 20)
    assert cam.held == 1 and any("video" in r["degraded"] for r in sink.results)  # audio ticked meanwhile
    back = [(a["t"], b["t"]) for a, b in zip(sink.results, sink.results[1:]) if b["t"] <= a["t"]]
    assert back == [], f"t went back: {back}"
    assert p.final_summary["ports"]["video"]["stale"] >= 1


def test_a_crashing_live_source_is_reopened(tmp_path, caplog):
    cam = CrashingCamera(crash_on={15})
    sink = Collect()
    with Pipeline(load_bundle(_video_model(tmp_path)), video=cam, sinks=[sink], threads=1,
                  settings=PipelineSettings(reconnect_initial_s=0.1)) as p:
        _wait_until(p, lambda: len(sink.results) >= 40, 20)
    summary = p.final_summary
    assert summary["capture_crashes"] == {"video": 1} and summary["reconnects"]["video"] == 1 and cam.opens == 2
    kinds = [e["event"] for e in sink.events]
    assert kinds.count("source_lost") == 1 and kinds.count("source_recovered") == 1
    assert len(sink.results) >= 40
    assert sum("Traceback" in (r.exc_text or "") for r in caplog.records) == 1  # logged with its traceback once


def test_a_source_that_keeps_crashing_fails_the_run(tmp_path):
    """A live source crashing max_capture_crashes times in a row, or a file crashing once, ends the run
    with an error (edgemm run: one line, exit 1, so a service manager restarts it), not a silent exit 0."""
    from edgemm.commands.run import stream

    for cam in (CrashingCamera(always_after=5), CrashingCamera(crash_on={5}, live=False)):
        sink = Collect()
        pipe = Pipeline(load_bundle(_video_model(tmp_path)), video=cam, sinks=[sink], threads=1,
                        settings=PipelineSettings(reconnect_initial_s=0.05, reconnect_max_s=0.1))
        with pytest.raises(CaptureFailed) as info:
            stream(pipe)
        assert isinstance(info.value, EdgemmError) and "\n" not in str(info.value)
        assert "fault://camera" in str(info.value) and "RuntimeError" in str(info.value)
        assert sink.closed and sink.summaries  # the sinks were flushed and closed on the way out
        assert cam.opens == (3 if cam.live else 1)


def test_camera_loss_is_survived_and_recovered_with_ffmpeg(tmp_path):
    """ffmpeg serves the camera on loopback; it is killed mid-run (SIGKILL) and started again on the same
    port. Meanwhile audio goes on alone; loss and recovery are events; video comes back by itself."""
    bundle = load_bundle(onnx_models.write_av_bundle(tmp_path / "av"))
    # A pipeline reconnecting in a loop may already be ffmpeg's one client (its listening socket then gone)
    # before anyone looks: serving counts as started.
    with FfmpegStream("mjpeg", size=(320, 240), fps=30, ready_states=(LISTEN, ESTABLISHED)) as cam:
        video = open_source(cam.url, "video", stall_timeout=1.5)
        audio = open_source("test://audio?kind=noise", "audio")
        sink = Collect()
        settings = PipelineSettings(reconnect_initial_s=0.2, reconnect_max_s=1.0)
        with Pipeline(bundle, video=video, audio=audio, sinks=[sink], settings=settings, threads=1) as p:
            _wait_until(p, lambda: sum("video" not in r["degraded"] for r in sink.results) >= 20, 15)
            cam.kill()
            _wait_until(p, lambda: any(e["event"] == "source_lost" for e in sink.events), 10)
            n_lost = len(sink.results)
            _wait_until(p, lambda: len(sink.results) >= n_lost + 10, 10)  # audio alone meanwhile
            cam.start()
            _wait_until(p, lambda: any(e["event"] == "source_recovered" for e in sink.events), 20)
            n_back = len(sink.results)
            _wait_until(p, lambda: len(sink.results) >= n_back + 10, 10)
        summary = p.final_summary
    lost = [e for e in sink.events if e["event"] == "source_lost"]
    back = [e for e in sink.events if e["event"] == "source_recovered"]
    assert lost and lost[0]["modality"] == "video" and back and back[0]["modality"] == "video"
    assert back[0]["down_s"] > 0
    during = sink.results[n_lost:n_back]
    assert sum(r["degraded"] == ["video"] for r in during) >= 10
    assert all(r["skew_ms"] is None for r in during if r["degraded"] == ["video"])
    after = sink.results[n_back:]
    assert sum("video" not in r["degraded"] for r in after) >= 5
    assert summary["reconnects"]["video"] >= 1


def test_microphone_on_jack_and_its_loss(tmp_path):
    """A JACK dummy server with a tone client is the microphone (PortAudio through sounddevice). The server
    then dies under the open stream: audio is lost (event, results degraded) while video goes on, and the
    pipeline keeps trying to reopen the device without stalling."""
    require_module("sounddevice", "pip install sounddevice; apt install libportaudio2")
    bundle = load_bundle(onnx_models.write_av_bundle(tmp_path / "av"))
    with JackServer(rate=SR, period=256) as jack:
        jack.use_in_process()
        jack.add_tone("tone", freq=440.0)
        mic = open_source("mic://tone", "audio")
        video = open_source("test://video?size=320x240&fps=30", "video")
        sink = Collect()
        settings = PipelineSettings(reconnect_initial_s=0.2, reconnect_max_s=1.0)
        with Pipeline(bundle, video=video, audio=mic, sinks=[sink], settings=settings, threads=1) as p:
            _wait_until(p, lambda: sum(r["degraded"] == [] for r in sink.results) >= 30, 15)
            # A client leaving only silences its port, and PortAudio aborts the process when the JACK server
            # dies under an open stream: freeze the server instead, as a wedged audio driver would be.
            n_events = len(sink.events)  # (a loaded machine may also have lost and recovered it at start)
            os.kill(jack.proc.pid, signal.SIGSTOP)
            try:
                _wait_until(p, lambda: any(e["event"] == "source_lost" for e in sink.events[n_events:]), 10)
                n_lost = len(sink.results)
                _wait_until(p, lambda: len(sink.results) >= n_lost + 10, 10)
            finally:
                os.kill(jack.proc.pid, signal.SIGCONT)
            _wait_until(p, lambda: any(e["event"] == "source_recovered" for e in sink.events[n_events:]), 15)
            n_back, t_back = len(sink.results), time.monotonic()
            # Clean results need a full audio window after the reopening (the ring starts afresh): wait for
            # them rather than for a fixed number of results, which a loaded machine may deliver first.
            _wait_until(p, lambda: sum(r["degraded"] == [] for r in sink.results[n_back:]) >= 15, 10)
            back_s = time.monotonic() - t_back
        summary = p.final_summary
    ok = [r for r in sink.results[:n_lost] if r["degraded"] == []]
    assert len(ok) >= 30 and all(abs(r["skew_ms"]) <= 40 for r in ok)
    assert any(e["event"] == "source_lost" and e["modality"] == "audio" for e in sink.events)
    assert any(e["event"] == "source_recovered" and e["modality"] == "audio" for e in sink.events)
    assert sum(r["degraded"] == ["audio"] for r in sink.results[n_lost:n_back]) >= 10
    # Back to both modalities (the frozen stretch is a gap on the audio timeline, not a shift).
    assert sum(r["degraded"] == [] for r in sink.results[n_back:]) >= 15
    assert back_s < 5.0  # a 1 s window refilled, and 15 results at 30 fps: well within 5 s
    assert summary["ports"]["audio"]["blocks"] > 20 and "overflows" in summary


# ------------------------------------------------------------------------------------------------ memory

def test_memory_stays_flat(tmp_path):
    """720p frames at 30 fps and 1 s audio windows for a while: resident memory must not grow with time
    (everything is bounded). A leak of one 720p frame per result would add ~2.7 MB per result."""
    from edgemm.bench import rss_mb

    bundle = load_bundle(onnx_models.write_av_bundle(tmp_path / "av"))
    video, audio = live_av("1280x720")
    with Pipeline(bundle, video=video, audio=audio, sinks=[Collect()], threads=1,
                  settings=PipelineSettings(reservoir=500)) as p:
        sink = p.sinks[0]
        _wait_until(p, lambda: len(sink.results) >= 40, 20)
        sink.results.clear()  # the test's own list must not count
        start = rss_mb()
        n = 0
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            if p.step() is not None:
                n += 1
            sink.results.clear()
        growth = rss_mb() - start
    assert n >= 40
    assert growth < 15.0, f"resident memory grew {growth:.1f} MB over {n} results"


def test_systemd_watchdog_is_pinged_from_the_worker(tmp_path, monkeypatch):
    """Under systemd (Type=notify, WatchdogSec) the worker loop says READY, pings, and says STOPPING."""
    import socket

    from edgemm import watchdog

    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    got: list[str] = []

    def receive():  # as systemd does: read each datagram as it comes (a full queue would block the sender)
        deadline = time.monotonic() + 10  # the run ends with STOPPING=1; the deadline only bounds a hang
        while time.monotonic() < deadline and (not got or got[-1] != "STOPPING=1"):
            try:
                got.append(sock.recv(4096).decode())
            except TimeoutError:
                continue

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setattr(watchdog, "_process_watchdog", None)
    video, audio = live_av()
    run_pipeline(onnx_models.write_av_bundle(tmp_path / "av"), video, audio, seconds=1.0)
    reader.join(15)
    sock.close()
    assert got[0].startswith("READY=1") and got[-1] == "STOPPING=1"
    assert got.count("WATCHDOG=1") >= 3


class HungCamera(WrappedCamera):
    """Delivers frames, then its read() never returns (a wedged driver) until the camera is closed."""

    def __init__(self, frames=10):
        super().__init__()
        self.frames = frames
        self.release = threading.Event()

    def close(self):
        self.release.set()
        super().close()

    def read(self, timeout=None):
        if self.reads >= self.frames:
            self.reads += 1
            self.release.wait()
            return None
        return super().read(timeout)


def test_watchdog_pings_stop_when_a_camera_read_hangs(tmp_path, monkeypatch):
    """Pings follow progress, not loop turns: once the only source hangs in read(), step() keeps turning
    but no WATCHDOG=1 goes out, so systemd's WatchdogSec restarts the service."""
    import socket

    from edgemm import watchdog

    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # pings due every 25 ms while there is progress
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setattr(watchdog, "_process_watchdog", None)

    def drain() -> list[str]:
        out = []
        while True:
            try:
                out.append(sock.recv(4096).decode())
            except BlockingIOError:
                return out

    cam = HungCamera(frames=10)
    with Pipeline(load_bundle(_video_model(tmp_path)), video=cam) as pipe:
        _wait_until(pipe, lambda: cam.reads > cam.frames, 10.0)
        settle = time.monotonic()
        while time.monotonic() - settle < 0.2:  # the last frame's result and its ping
            pipe.step(timeout=0.02)
        before = drain()
        hung_at = time.monotonic()
        while time.monotonic() - hung_at < 1.0:  # 40 watchdog periods of loop turns without progress
            pipe.step(timeout=0.02)
        after = drain()
        cam.release.set()  # let the capture thread end with the pipeline
    sock.close()
    assert before[0].startswith("READY=1") and "WATCHDOG=1" in before, before
    assert "WATCHDOG=1" not in after, f"pinged while the camera was hung: {after}"
