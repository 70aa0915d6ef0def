"""Several cameras on one model (edgemm/multicam.py, edgemm/batching.py): naming, sink routing, the batcher on
a real ONNX Runtime session, and live runs on ffmpeg loopback cameras with one of them killed mid-run."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import pytest

from edgemm.batching import InferenceBatcher
from edgemm.bundle import load_bundle
from edgemm.cli import main
from edgemm.errors import EdgemmError
from edgemm.multicam import MultiCamera, camera_names, parse_cameras, route_sinks
from edgemm.pipeline import PipelineSettings
from edgemm.runners.onnxruntime import OnnxRuntimeRunner
from edgemm.sources import open_source
from edgemm.sources.base import now
from tests import onnx_models
from tests.rigs import ESTABLISHED, LISTEN, FfmpegStream
from tests.test_pipeline import Collect


@contextlib.contextmanager
def other_core_busy():
    """A process spinning on a core for the duration (the machine the tests run on is shared and loaded)."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        proc.kill()
        proc.wait(10)


# ---------------------------------------------------------------------------------------------- naming

def test_cameras_are_named_and_plain_uris_get_cam_names():
    cams = parse_cameras(["door=rtsp://cam1/s?a=b", "test://video?fps=30", "clip.mp4", "cam0=x.mp4"])
    assert cams == [("door", "rtsp://cam1/s?a=b"), (None, "test://video?fps=30"), (None, "clip.mp4"),
                    ("cam0", "x.mp4")]
    assert camera_names(cams) == ["door", "cam1", "cam2", "cam0"]  # cam0 was taken by the last one
    assert parse_cameras("rtsp://h/x?user=a") == [(None, "rtsp://h/x?user=a")]  # '=' in a query is no name
    with pytest.raises(EdgemmError, match="given twice"):
        parse_cameras(["a=x.mp4", "a=y.mp4"])


def test_sinks_are_shared_or_per_camera():
    shared, own = route_sinks(["console", "jsonl:r.jsonl?mode=w", "video:out/all.mp4", "b=video:b.mp4",
                               "a=mqtt://h/t"], ["a", "b"])
    assert shared == ["console", "jsonl:r.jsonl?mode=w"]
    assert own == {"a": ["video:out/all.a.mp4", "mqtt://h/t"], "b": ["video:out/all.b.mp4", "video:b.mp4"]}
    with pytest.raises(EdgemmError, match="NAME=http://0.0.0.0:8080"):
        route_sinks(["http://0.0.0.0:8080"], ["a", "b"])
    with pytest.raises(EdgemmError, match="No camera named 'c'"):
        route_sinks(["c=jsonl:x.jsonl"], ["a", "b"])
    # One camera: everything is its own, in the order given.
    assert route_sinks(["video:v.mp4", "console"], ["cam0"]) == ([], {"cam0": ["video:v.mp4", "console"]})


# ---------------------------------------------------------------------------------------------- batcher

def _runner(tmp_path, batch):
    path = tmp_path / f"av_{batch}.onnx"
    onnx.save(onnx_models.av_early_model(batch=batch), path)
    return OnnxRuntimeRunner(path, threads=1)


def _feeds(runner, n, seed=0):
    rng = np.random.default_rng(seed)
    return [{m.name: rng.standard_normal([1 if not isinstance(d, int) else d for d in m.shape]).astype(m.dtype)
             for m in runner.input_metadata().values()} for _ in range(n)]


def _submit_together(batcher, feeds):
    out = [None] * len(feeds)
    barrier = threading.Barrier(len(feeds))

    def one(i):
        barrier.wait()
        out[i] = batcher.infer(feeds[i], f"cam{i}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(feeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return out


def test_batcher_runs_one_call_for_all_cameras_with_the_same_numbers(tmp_path):
    with _runner(tmp_path, "N") as runner:
        feeds = _feeds(runner, 4)
        alone = [runner.infer(f) for f in feeds]
        batcher = InferenceBatcher(runner, batch_size=4, timeout_s=5.0)  # a long timeout: only a full batch goes
        assert batcher.batched
        got = _submit_together(batcher, feeds)
    assert batcher.sizes == {4: 1}
    for a, g in zip(alone, got):
        assert a.keys() == g.keys()
        for k in a:
            assert g[k].shape == a[k].shape and np.allclose(g[k], a[k], atol=1e-5)


def test_batcher_pushes_a_partial_batch_at_its_timeout(tmp_path):
    with _runner(tmp_path, "N") as runner:
        feeds = _feeds(runner, 2)
        batcher = InferenceBatcher(runner, batch_size=4, timeout_s=0.05)
        t0 = now()
        _submit_together(batcher, feeds)
        took = now() - t0
    assert batcher.sizes == {2: 1}
    assert 0.05 <= took < 2.0


def test_batcher_waits_only_for_cameras_that_can_come_in_time(tmp_path):
    """The batch waits for those the owner says are due, not for the batch size: no timeout paid here."""
    with _runner(tmp_path, "N") as runner:
        feeds = _feeds(runner, 2)
        batcher = InferenceBatcher(runner, batch_size=4, timeout_s=5.0, expected=lambda waiting, left: 2)
        t0 = now()
        _submit_together(batcher, feeds)
        took = now() - t0
    assert batcher.sizes == {2: 1} and took < 2.0


def test_fixed_batch_model_runs_one_call_per_camera_and_says_so(tmp_path, caplog):
    with _runner(tmp_path, 1) as runner:
        feeds = _feeds(runner, 3)
        alone = [runner.infer(f) for f in feeds]
        with caplog.at_level("WARNING", logger="edgemm.batching"):
            batcher = InferenceBatcher(runner, batch_size=3, timeout_s=5.0)
        got = _submit_together(batcher, feeds)
    assert not batcher.batched and batcher.sizes == {1: 3}
    assert sum("fixed batch" in r.message for r in caplog.records) == 1
    for a, g in zip(alone, got):
        assert all(np.allclose(g[k], a[k], atol=1e-5) for k in a)


# ---------------------------------------------------------------------------------------------- live

def _wait(multi, cond, timeout, what):
    # Generous timeouts: the machine the tests run on is shared, at times with many times more runnable
    # threads than cores; what is asserted is relative (rates against rates) or counts, not speed.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not cond():
        multi.step(0.05)
    assert cond(), f"timed out waiting {timeout} s for {what}"


def _by(sink, cam, since=0):
    return [r for r in sink.results[since:] if r["camera"] == cam]


def test_three_ffmpeg_cameras_one_killed_others_unaffected(tmp_path):
    """Three live cameras (ffmpeg on loopback, MJPEG at 30 fps) and a test microphone on one batched model,
    with the other core busy. Camera b is killed mid-run (SIGKILL): its results go on degraded (audio alone)
    and it reports source_lost; a and c keep their rate with video (against their own rate just before: the
    machine is shared, so no absolute rate is asked for). b comes back by itself."""
    bundle = load_bundle(onnx_models.write_av_bundle(tmp_path / "av"))
    # ffmpeg serves one client and exits when it leaves: a camera reopened because it stalled on a loaded
    # machine would be gone for good. So only a dead camera (its connection reset) counts as lost here.
    settings = PipelineSettings(reconnect_initial_s=0.2, reconnect_max_s=1.0, stale_s=3.0, stall_reopen_s=60.0)
    with contextlib.ExitStack() as stack:
        stack.enter_context(other_core_busy())
        cams = {n: stack.enter_context(FfmpegStream("mjpeg", size=(320, 240), fps=30,
                                                    ready_states=(LISTEN, ESTABLISHED))) for n in "abc"}
        videos = [(n, open_source(c.url, "video", stall_timeout=30)) for n, c in cams.items()]
        sink = Collect()
        multi = MultiCamera(bundle, videos, audio=open_source("test://audio?kind=noise", "audio"),
                            shared_sinks=[sink], settings=settings, threads=1,
                            batch_size=3)  # batches forced: on a CPU the default stops batching (they do not pay)
        with multi:
            _wait(multi, lambda: all(sum("video" not in r["degraded"] for r in _by(sink, n)) >= 20 for n in "abc"), 60,
                  "20 results with video from each camera")
            n_before, t_before = len(sink.results), time.monotonic()
            _wait(multi, lambda: time.monotonic() - t_before >= 2.0, 5, "2 s")
            before = sink.results[n_before:]
            before_s = time.monotonic() - t_before
            cams["b"].kill()
            _wait(multi, lambda: any(e["event"] == "source_lost" and e.get("camera") == "b" for e in sink.events), 30,
                  "b lost")
            n_lost, t_lost = len(sink.results), time.monotonic()
            _wait(multi, lambda: len(_by(sink, "b", n_lost)) >= 10, 30, "10 degraded results from b")
            _wait(multi, lambda: time.monotonic() - t_lost >= 2.0, 5, "2 s")
            n_down, down_s = len(sink.results), time.monotonic() - t_lost
            cams["b"].start(timeout=40)  # (a loaded machine can take long to start ffmpeg)
            _wait(multi, lambda: any(e["event"] == "source_recovered" and e.get("camera") == "b"
                                     for e in sink.events), 40, "b recovered")
            n_back = len(sink.results)
            _wait(multi, lambda: sum("video" not in r["degraded"] for r in _by(sink, "b", n_back)) >= 5, 30,
                  "5 results with video from b")
        summary = multi.final_summary
    lost = [e for e in sink.events if e["event"] == "source_lost"]
    assert {e["camera"] for e in lost} == {"b"} and all(e["modality"] == "video" for e in lost)
    during = sink.results[n_lost:n_down]
    # b: after its loss, results without video only (fused on audio, unless that is late too on a loaded
    # machine); frames it captured before the loss may still come out of its port.
    t_lost = lost[0]["t"]
    after = [r for r in _by(sink, "b", n_lost) if r["t"] > t_lost][:10]
    assert len(after) == 10 and all("video" in r["degraded"] for r in after)
    assert sum(r["degraded"] == ["video"] for r in after) >= 5
    for n in "ac":
        rate_before = sum(r["camera"] == n and "video" not in r["degraded"] for r in before) / before_s
        rate_during = sum(r["camera"] == n and "video" not in r["degraded"] for r in during) / down_s
        assert rate_before > 0 and rate_during >= 0.6 * rate_before, (n, rate_before, rate_during)
    assert summary["cameras"]["b"]["reconnects"]["video"] >= 1
    assert summary["cameras"]["a"]["reconnects"]["video"] == 0 and summary["cameras"]["c"]["reconnects"]["video"] == 0
    b = summary["batching"]["model"]
    assert b["batched"] and b["calls"] > 0 and max(b["sizes"]) >= 2  # frames of several cameras in one call
    assert sorted(s["camera"] for s in sink.summaries) == ["a", "b", "c"]
    assert all(s["results"] > 0 for s in sink.summaries)


def test_cli_two_cameras_jsonl_and_a_video_file_each(tmp_path, capsys):
    bundle = onnx_models.write_av_bundle(tmp_path / "av")
    out = tmp_path / "r.jsonl"
    code = main(["run", str(bundle), "--video", "door=test://video?size=160x120&fps=30",
                 "--video", "test://video?size=160x120&fps=30", "--audio", "test://audio", "--duration", "2",
                 "--sink", f"jsonl:{out}", "--sink", f"video:{tmp_path / 'v.mp4'}", "--batch-timeout-ms", "10",
                 "--summary-json", str(tmp_path / "s.json")])
    assert code == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    results = [x for x in lines if x["type"] == "result"]
    assert {r["camera"] for r in results} == {"door", "cam0"}
    assert all(sum(r["camera"] == c for r in results) >= 5 for c in ("door", "cam0"))  # (a loaded machine)
    # Each camera's summary reaches the shared file before it is closed.
    assert sorted(x["camera"] for x in lines if x["type"] == "summary") == ["cam0", "door"]
    assert (tmp_path / "v.door.mp4").stat().st_size > 0 and (tmp_path / "v.cam0.mp4").stat().st_size > 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert set(summary["cameras"]) == {"door", "cam0"} and summary["batching"]["model"]["timeout_ms"] == 10
    assert "from 2 cameras" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--video", "a=test://video", "--video", "a=test://video"], "Camera name 'a' is given twice"),
    (["--video", "test://video", "--video", "test://video", "--batch-size", "0"], "Batch size: 0"),
    (["--video", "a=test://video", "--video", "b=test://video", "--sink", "c=jsonl:x.jsonl"], "No camera named 'c'"),
    (["--video", "test://video", "--video", "test://video", "--sink", "http://127.0.0.1:0"], "expected NAME="),
])
def test_cli_bad_multicamera_input_is_one_line(tmp_path, capsys, args, message):
    bundle = onnx_models.write_av_bundle(tmp_path / "av")
    code = main(["run", str(bundle), "--audio", "test://audio", *args])
    err = capsys.readouterr().err
    assert code == 1 and message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("video, camera", [("door=test://video?size=160x120&fps=30", "door"),
                                           ("test://video?size=160x120&fps=30", None)])
def test_cli_one_camera_is_a_plain_pipeline_named_if_asked(tmp_path, video, camera):
    """One camera runs as before (no batcher); a plain URI keeps the records as they were (no "camera")."""
    out = tmp_path / "r.jsonl"
    code = main(["run", str(onnx_models.write_av_bundle(tmp_path / "av")), "--video", video, "--audio",
                 "test://audio", "--duration", "1", "--sink", f"jsonl:{out}", "-q",
                 "--summary-json", str(tmp_path / "s.json")])
    assert code == 0
    results = [json.loads(x) for x in out.read_text().splitlines() if '"result"' in x]
    assert results and all(r.get("camera") == camera for r in results)
    assert "cameras" not in json.loads((tmp_path / "s.json").read_text())


def test_a_camera_that_cannot_open_closes_what_was_opened(tmp_path):
    """The second camera is not there (nothing listens on its port): one EdgemmError, the first camera is
    closed again and the shared sink was never opened (no empty results file is left)."""
    from tests.rigs import free_port

    bundle = load_bundle(onnx_models.write_av_bundle(tmp_path / "av"))
    first = open_source("test://video?size=160x120&fps=30", "video")
    gone = open_source(f"http://127.0.0.1:{free_port()}/", "video")
    out = tmp_path / "r.jsonl"
    from edgemm.sinks import make_sink

    multi = MultiCamera(bundle, [("a", first), ("b", gone)], audio=open_source("test://audio", "audio"),
                        shared_sinks=[make_sink(f"jsonl:{out}")], threads=1)
    with pytest.raises(EdgemmError) as info:
        with multi:
            pass
    assert "\n" not in str(info.value)
    assert not first._open and not out.exists()


def test_adaptive_batcher_stops_batching_where_a_batch_does_not_pay(tmp_path, caplog):
    """ONNX Runtime on a CPU does about N times the work for N rows (this model: a convolution over the whole
    frame), so a row of a batch costs nearly a call of its own: the adaptive batcher sees it from the fastest
    calls (robust to load) and goes to one call per frame, saying so once. Cameras in step (every batch full)
    still get single calls to compare with. Without adaptive (a batch size asked for) batches go on."""
    with _runner(tmp_path, "N") as runner:
        feeds = _feeds(runner, 4)
        with caplog.at_level("WARNING", logger="edgemm.batching"):
            adaptive = InferenceBatcher(runner, batch_size=4, timeout_s=5.0, adaptive=True)
            forced = InferenceBatcher(runner, batch_size=4, timeout_s=5.0)
            for _ in range(24):
                _submit_together(adaptive, feeds)
                _submit_together(forced, feeds)
    assert adaptive.row_cost is not None and adaptive.row_cost > 0.8 and not adaptive.batched
    assert sum("do not pay" in r.message for r in caplog.records) == 1
    assert adaptive.sizes[1] >= 10 + 4 and forced.batched and forced.sizes == {4: 24}


def test_config_takes_a_list_of_cameras(tmp_path, capsys):
    bundle = onnx_models.write_av_bundle(tmp_path / "av")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": str(bundle), "video": ["a=test://video", 3], "audio": "test://audio"}))
    assert main(["run", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "Key 'video'" in err and "NAME=URI" in err and err.count("\n") == 1
    good = tmp_path / "good.json"
    out = tmp_path / "r.jsonl"
    cams = ["a=test://video?size=160x120", "b=test://video?size=160x120"]
    good.write_text(json.dumps({"model": str(bundle), "video": cams,
                                "audio": "test://audio", "duration": 1, "sinks": [f"jsonl:{out}"], "quiet": True}))
    assert main(["run", "--config", str(good)]) == 0
    assert {json.loads(x).get("camera") for x in out.read_text().splitlines()} == {"a", "b"}


def test_files_of_different_lengths_with_one_soundtrack(tmp_path):
    """Two clips (1 s and 2 s at 15 fps) and a 2.5 s WAV: files lose nothing, so every frame of each clip gets
    a result, the long clip goes on with its audio after the short one has ended, and the run ends when both
    clips have."""
    from tests.rigs import require

    require("ffmpeg")
    clips = {}
    for name, secs in (("short", 1), ("long", 2)):
        clips[name] = tmp_path / f"{name}.mp4"
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                        f"testsrc=size=160x120:rate=15:duration={secs}", "-pix_fmt", "yuv420p", str(clips[name])],
                       check=True)
    wav = tmp_path / "sound.wav"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "sine=frequency=440:sample_rate=16000:duration=2.5", str(wav)], check=True)
    bundle = load_bundle(onnx_models.write_av_bundle(tmp_path / "av"))
    sink = Collect()
    multi = MultiCamera(bundle, [(n, open_source(str(p), "video")) for n, p in clips.items()],
                        audio=open_source(str(wav), "audio"), shared_sinks=[sink], threads=1)
    t0 = time.monotonic()
    with multi:
        while multi.is_streaming() and time.monotonic() - t0 < 60:
            multi.step()
    assert time.monotonic() - t0 < 60
    counts = {n: sum(r["camera"] == n for r in sink.results) for n in clips}
    assert counts == {"short": 15, "long": 30}, counts
    # A frame in the first half second has most of its 1 s window before the soundtrack: degraded. The long
    # clip's second half, after the short one ended, is fused with its audio.
    assert sum("audio" not in r["degraded"] for r in sink.results) >= 45 - 2 * 8
    assert all("audio" not in r["degraded"] for r in [r for r in sink.results if r["camera"] == "long"][-10:])
