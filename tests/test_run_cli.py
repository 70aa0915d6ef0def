"""`edgemm run` as a user runs it: a subprocess, real models, files made with ffmpeg, test patterns, signals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import onnx
import pytest

from tests import onnx_models
from tests.conftest import REPO, run_cli
from tests.rigs import require, small_disk


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 2 s, 30 fps test clip, its soundtrack as a 16 kHz WAV, and a 22.05 kHz WAV."""
    require("ffmpeg")
    d = tmp_path_factory.mktemp("clip")
    common = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    subprocess.run(common + ["-f", "lavfi", "-i", "testsrc=size=160x120:rate=30", "-t", "2", "-c:v", "libx264",
                             "-pix_fmt", "yuv420p", str(d / "clip.mp4")], check=True, timeout=60)
    for rate in (16000, 22050):
        subprocess.run(common + ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={rate}", "-t", "2",
                                 str(d / f"tone{rate}.wav")], check=True, timeout=60)
    return d


def test_bad_input_is_one_line_and_exit_1_before_anything_starts(tmp_path, av_onnx):
    out = tmp_path / "never.jsonl"
    base = [av_onnx, "--sink", f"jsonl:{out}"]
    _one_line_error(run_cli("run", *base, "--video", "foo://x", "--audio", "test://audio"), "foo://")
    _one_line_error(run_cli("run", *base, "--video", "v4l2:///dev/video9", "--audio", "test://audio"),
                    "/dev/video9", "does not exist")
    _one_line_error(run_cli("run", *base, "--video", "test://video", "--audio", "mic://no-such-mic"), "no-such-mic")
    _one_line_error(run_cli("run", *base, "--video", "test://video"), "audio", "--audio")
    _one_line_error(run_cli("run", *base, "--video", "test://video", "--audio", "test://audio", "--sink", "kafka:x"),
                    "kafka:x")
    _one_line_error(run_cli("run", *base, "--video", "test://video", "--audio", "test://audio", "--alert", "cat"),
                    "cat", "labels")
    _one_line_error(run_cli("run", *base, "--video", "test://video", "--audio", "test://audio", "--backend", "x"),
                    "Backend")
    # Numbers that pass a `<= 0` check: NaN ran forever (--duration) or was taken as the bound.
    base_av = [*base, "--video", "test://video", "--audio", "test://audio"]
    _one_line_error(run_cli("run", *base_av, "--duration", "nan"), "Duration: nan", "finite")
    _one_line_error(run_cli("run", *base_av, "--max-skew-ms", "nan"), "skew", "finite")
    _one_line_error(run_cli("run", *base_av, "--tick-hz", "inf"), "Tick rate: inf", "finite")
    _one_line_error(run_cli("run", *base_av, "--sink", f"jsonl:{tmp_path / 'x.jsonl'}?max_mb=nan"), "max_mb", "finite")
    _one_line_error(run_cli("run", *base_av, "--sink", "jsonl:/etc/passwd/x.jsonl"),
                    "/etc/passwd is a file, not a folder")
    # A source that fails to open leaves no results file behind: sinks open after the sources. (OpenCV's
    # ffmpeg prints its own lines before ours, so only the last line is ours here.)
    proc = run_cli("run", *base, "--video", "rtsp://127.0.0.1:1/stream?open_timeout=2", "--audio", "test://audio")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "rtsp://127.0.0.1:1/stream" in proc.stderr.strip().splitlines()[-1]
    # A model whose inputs no camera or microphone can feed.
    odd = tmp_path / "odd.onnx"
    onnx.save(onnx_models.odd_inputs_model(), str(odd))
    _one_line_error(run_cli("run", odd, "--video", "test://video"), "tokens", "cannot be fed")
    assert not (tmp_path / "x.jsonl").exists()
    assert not out.exists()  # nothing started, nothing written


def test_wav_at_another_rate_is_resampled_or_refused(tmp_path, av_onnx, clip):
    wav = clip / "tone22050.wav"
    err = _one_line_error(run_cli("run", av_onnx, "--video", "test://video", "--audio", f"file://{wav}?resample=false"),
                          "22050", "16000")
    assert "tone22050.wav" in err
    out = tmp_path / "r.jsonl"
    proc = run_cli("run", av_onnx, "--video", f"file://{clip / 'clip.mp4'}?realtime=0",
                   "--audio", f"file://{wav}?realtime=0", "--sink", f"jsonl:{out}", "--quiet")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    results = [r for r in rows if r["type"] == "result"]
    assert len(results) == 60
    assert sum(r["degraded"] == [] for r in results) >= 40


def test_plain_onnx_on_a_clip_loses_nothing_and_summarises(tmp_path, av_onnx, clip):
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    video_out = tmp_path / "annotated.mp4"
    proc = run_cli("run", av_onnx, "--video", f"file://{clip / 'clip.mp4'}?realtime=0",
                   "--audio", f"file://{clip / 'tone16000.wav'}?realtime=0", "--sink", f"jsonl:{out}",
                   "--sink", f"video:{video_out}", "--summary-json", summary, "--alert", "class_0:0.2:0.1:0.3")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    results = [r for r in rows if r["type"] == "result"]
    assert len(results) == 60 and rows[-1]["type"] == "summary"
    r = results[-1]
    assert r["outputs"]["logits"]["label"].startswith("class_") and r["degraded"] == [] and r["skew_ms"] == 0.0
    s = json.loads(summary.read_text())
    assert s["results"] == 60 and s["ports"]["video"]["dropped"] == 0
    assert {"p50", "p99"} <= set(s["latency_ms"]["total"]) and s["skew_ms"]["abs_p99"] == 0.0
    assert "results in" in proc.stderr and "A/V skew" in proc.stderr  # the human summary
    # ... in words, not Python reprs (a file's audio has no drift figure; nothing reconnected)
    human = proc.stderr[proc.stderr.index("results in"):]
    for repr_ in ("None", "{", "}", "'", "["):
        assert repr_ not in human, human
    assert "drift ppm n/a" in human and "reconnects: video 0, audio 0" in human, human
    import cv2

    cap = cv2.VideoCapture(str(video_out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 60
    cap.release()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_flushes_the_sinks_and_exits_0(tmp_path, av_onnx, sig):
    out = tmp_path / "live.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "edgemm", "run", str(av_onnx), "--video", "test://video",
                             "--audio", "test://audio", "--sink", f"jsonl:{out}", "--alert", "class_1:0.01:0.0:0"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if out.exists() and len(out.read_text().splitlines()) >= 10:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        os.kill(proc.pid, sig)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]  # every line complete
    assert rows[-1]["type"] == "summary" and rows[-1]["results"] >= 10
    events = [r["event"] for r in rows if r["type"] == "event"]
    assert events.count("alert_start") == events.count("alert_end") >= 1  # open alerts closed at shutdown
    assert "results in" in stderr


def test_config_file_gives_the_same_options(tmp_path, clip):
    bundle = onnx_models.write_late_bundle(tmp_path / "late.edgemm")
    out = tmp_path / "cfg.jsonl"
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"model": str(bundle), "video": "test://video?size=160x120",
                               "audio": "test://audio", "sinks": [f"jsonl:{out}"], "duration": 1.5,
                               "threads": 1, "alerts": [{"label": "3", "on": 0.9}], "max_skew_ms": 20,
                               "quiet": True}))
    proc = run_cli("run", "--config", cfg)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[-1]["type"] == "summary" and rows[-1]["form"] == "late" and rows[-1]["skew_ms"]["bound_ms"] == 20.0
    assert proc.stderr.strip() == ""  # quiet
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": str(bundle), "vidoe": "test://video"}))
    _one_line_error(run_cli("run", "--config", bad), "vidoe")
    bad.write_text(json.dumps({"model": str(bundle), "duration": "long"}))
    _one_line_error(run_cli("run", "--config", bad), "duration")


def test_bad_config_values_are_one_line_errors_before_anything_starts(tmp_path, av_onnx):
    out = tmp_path / "never.jsonl"
    base = {"model": str(av_onnx), "video": "test://video", "audio": "test://audio", "sinks": [f"jsonl:{out}"]}
    cfg = tmp_path / "run.json"
    cases = [
        ({"alerts": [{"label": "class_1", "on": "high"}]}, ("on", "'high'", "number")),
        ({"alerts": [{"label": ["class_1"]}]}, ("label",)),
        ({"alerts": [3]}, ("alerts",)),
        ({"rates_hz": {"video": "fast"}}, ("video", "fast")),
        ({"rates_hz": {"video": -5}}, ("video", "positive")),
        ({"rates_hz": {"lidar": 5}}, ("lidar",)),
        ({"sinks": [f"jsonl:{out}", 7]}, ("sinks",)),
        ({"max_age_s": -1}, ("-1",)),
        ({"summary_json": str(tmp_path / "no-such-folder" / "s.json")}, ("no-such-folder", "does not exist")),
        ({"summary_json": str(tmp_path)}, ("folder",)),
        ({"video": "test://video?pattern=noise&seed=-1"}, ("seed",)),
        ({"audio": "test://audio?kind=noise&seed=-3"}, ("seed",)),
    ]
    for extra, needles in cases:
        cfg.write_text(json.dumps({**base, **extra}))
        _one_line_error(run_cli("run", "--config", cfg), *needles)
        assert not out.exists(), extra  # nothing started, nothing written


def test_a_full_disk_under_the_jsonl_sink_is_two_log_lines_and_counted_in_the_summary(tmp_path, av_onnx):
    disk = tmp_path / "disk"
    with small_disk(disk, "64k"):
        fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):  # fill it to the last byte
            while os.write(fd, b"x" * 4096):
                pass
        os.close(fd)
        out = disk / "out.jsonl"
        proc = run_cli("run", av_onnx, "--video", "test://video?size=64x48", "--audio", "test://audio",
                       "--sink", f"jsonl:{out}", "--duration", "1.5", "--summary-json", tmp_path / "summary.json")
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.count("failing") == 1, proc.stderr
        summary = json.loads((tmp_path / "summary.json").read_text())
        counts = summary["sinks"][f"jsonl:{out}"]
        assert counts["written"] == 0 and counts["lost"] == counts["failures"] >= summary["results"] > 0
        assert f"sink jsonl:{out}: 0 written" in proc.stderr
        assert out.read_bytes() == b""  # nothing half-written
