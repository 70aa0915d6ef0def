"""The live sinks on a real pipeline: the web view in a real headless Chromium, RTSP read back with OpenCV
over loopback, Prometheus metrics scraped over loopback."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest

from edgemm.bundle import load_bundle
from edgemm.decisions import AlertRule
from edgemm.errors import EdgemmError
from edgemm.frame_tap import FrameTap
from edgemm.pipeline import Pipeline
from edgemm.sinks import make_sink
from edgemm.sinks_http import HttpSink
from edgemm.sinks_metrics import MetricsSink
from edgemm.sinks_rtsp import HELPER, RtspSink
from edgemm.sources import open_source
from tests.browser import Chromium
from tests.rigs import free_port, require_module, skip_or_fail
from tests.test_sinks import RECORD


@contextlib.contextmanager
def running(bundle, sinks, video="test://video?size=320x240&fps=30", audio="test://audio", alerts=()):
    """A pipeline stepping on its own thread (as `edgemm run` does) until the block ends."""
    pipe = Pipeline(load_bundle(bundle), video=open_source(video, "video"), audio=open_source(audio, "audio"),
                    sinks=sinks, alerts=alerts)
    errors = []

    def loop():
        try:
            while pipe.is_streaming():
                pipe.step()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    with pipe:
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield pipe
        finally:
            pipe.stop()
            thread.join(10)
    assert not errors, errors


def _get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_specs_are_parsed_and_bad_ones_refused():
    h = make_sink("http://127.0.0.1:8081?fps=10&quality=70")
    assert isinstance(h, HttpSink) and (h.host, h.port, h.tap.period_s, h.quality) == ("127.0.0.1", 8081, 0.1, 70)
    assert make_sink("http://0.0.0.0:8080?token=s3cret").token == "s3cret" and h.tap.max_width == 640
    assert make_sink("http://127.0.0.1:8081?width=0").tap.max_width is None
    assert make_sink("rtsp://127.0.0.1:8555/c?width=800").tap.max_width == 800
    r = make_sink("rtsp://127.0.0.1:8555/cabin")
    assert isinstance(r, RtspSink) and r.url == "rtsp://127.0.0.1:8555/cabin"
    m = make_sink("metrics:9100")
    assert isinstance(m, MetricsSink) and (m.host, m.port) == ("0.0.0.0", 9100)
    assert (make_sink("metrics:127.0.0.1:9101").host, make_sink("metrics:127.0.0.1:9101").port) == ("127.0.0.1", 9101)
    for bad, says in [("http://0.0.0.0:8080", "token"), ("http://192.168.1.5:8080?token=a b", "URL-safe"),
                      ("http://127.0.0.1:8080/live", "Path"), ("http://127.0.0.1:x", "port"),
                      ("http://127.0.0.1:8080?fps=0", "fps"), ("http://127.0.0.1:8080?quality=101", "quality"),
                      ("http://127.0.0.1:8080?size=2", "Unknown option"),
                      ("http://127.0.0.1:8080?width=-1", "width"), ("rtsp://127.0.0.1:8554", "No path"),
                      ("rtsp://127.0.0.1:8554/x?fps=many", "not a number"), ("metrics:port", "Bad port"),
                      ("metrics:70000", "Bad port")]:
        with pytest.raises(EdgemmError) as e:
            make_sink(bad)
        assert says in str(e.value) and "\n" not in str(e.value), (bad, str(e.value))


def test_frame_tap_never_makes_the_inference_thread_wait():
    """A deliverer stuck on a slow viewer: offering frames still returns at once; nothing queues up."""
    release = threading.Event()
    stuck = []

    def deliver(img):
        stuck.append(img)
        release.wait(30)

    tap = FrameTap("test", fps=1000, deliver=deliver)
    tap.start()
    frame = np.zeros((48, 64, 3), np.uint8)
    try:
        for _ in range(200):
            tap.offer(frame, RECORD)
        assert tap.offered == 200 and len(stuck) <= 1  # one being delivered, the rest replaced in the slot
    finally:
        release.set()
        tap.close()
    assert tap.delivered <= 2


def test_frame_tap_skips_frames_nobody_watches():
    watching = threading.Event()
    got = []
    tap = FrameTap("test", fps=1000, deliver=got.append, wanted=watching.is_set)
    tap.start()
    frame = np.full((48, 64, 3), 128, np.uint8)
    try:
        for _ in range(50):
            tap.offer(frame, RECORD)
            time.sleep(0.002)
        assert tap.offered == 50 and not got  # not drawn, not encoded
        watching.set()
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            tap.offer(frame, RECORD)
            time.sleep(0.01)
    finally:
        tap.close()
    assert got and got[0].shape == frame.shape and not np.array_equal(got[0], frame)  # annotated


def test_frame_tap_draws_at_the_cameras_size_then_scales_down():
    """Boxes are in the camera's pixels: drawn before scaling, they land where the object is."""
    det = {"box": [640.0, 360.0, 1270.0, 710.0], "score": 0.9, "label": "car", "class": 2, "track": 7}
    record = {**RECORD, "outputs": {"boxes": {"detections": [det], "counts": {"car": 1}}}}
    got = []
    tap = FrameTap("test", fps=1000, deliver=got.append, max_width=320)
    tap.start()
    try:
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            tap.offer(np.full((720, 1280, 3), 90, np.uint8), record)
            time.sleep(0.01)
    finally:
        tap.close()
    img = got[0].astype(np.int16)
    assert img.shape == (180, 320, 3)
    # The box's left edge at x = 640 / 4 = 160 (rows below its caption); grey elsewhere at those rows.
    assert np.abs(img[120:170, 159:162] - 90).max() > 60
    assert np.abs(img[120:170, 100:150] - 90).max() < 5 and np.abs(img[120:170, 170:300] - 90).max() < 5


def test_web_view_in_headless_chromium(tmp_path, av_bundle):
    """The page loads, the MJPEG image updates, the numbers change, alerts and events show; screenshots are
    kept for a look."""
    sink = HttpSink("127.0.0.1", 0, fps=15)
    always = [AlertRule.parse(f"{digit}:0:0") for digit in "0123456789"]  # every label's score is >= 0
    with running(av_bundle, [sink], alerts=always) as pipe, Chromium() as browser:
        browser.open(sink.url)
        assert browser.wait_for("document.getElementById('video').naturalWidth") == 320
        assert browser.wait_for("document.querySelectorAll('#latency tr').length") >= 6  # capture ... total
        first = int(browser.js("document.getElementById('results').textContent"))
        shot1 = browser.screenshot()
        rect = browser.js("(() => { const r = document.getElementById('video').getBoundingClientRect();"
                          " return [r.x, r.y, r.width, r.height]; })()")
        time.sleep(1.0)
        assert browser.wait_for(f"Number(document.getElementById('results').textContent) > {first}")
        shot2 = browser.screenshot()
        labels = browser.js("Array.from(document.querySelectorAll('#latency td:first-child')).map(e => e.textContent)")
        fps = float(browser.js("document.getElementById('fps').textContent"))
        alerts = browser.js("document.getElementById('alerts').textContent")
        events = browser.js("document.getElementById('events').textContent")
        assert sink.viewers == 1 and sink.frames_sent > 5
    (tmp_path / "shot1.png").write_bytes(shot1)
    print("screenshots in", tmp_path)
    (tmp_path / "shot2.png").write_bytes(shot2)
    assert {"capture", "preprocess", "infer", "total"} <= set(labels)
    assert alerts.startswith("ALERT: ") and "alert_start" in events
    assert 0 < fps < 40 and pipe.results > first
    a, b = (cv2.imdecode(np.frombuffer(s, np.uint8), cv2.IMREAD_COLOR) for s in (shot1, shot2))
    assert a.shape[:2] == (800, 1280) and a.std() > 20  # not blank
    x, y, w, h = (int(round(v)) for v in rect)
    assert (w, h) == (320, 240)
    area1, area2 = a[y:y + h, x:x + w].astype(np.int16), b[y:y + h, x:x + w].astype(np.int16)
    assert area1.std() > 20 and np.abs(area1 - area2).mean() > 2  # the picture moved between the shots
    assert np.abs(a[:, x + w + 20:] - b[:, x + w + 20:].astype(np.int16)).mean() > 0  # so did the numbers


def test_web_view_skips_encoding_without_viewers_and_guards_with_a_token(av_bundle):
    sink = HttpSink("0.0.0.0", 0, token="s3cret", fps=15)
    with running(av_bundle, [sink]) as pipe:
        base = f"http://127.0.0.1:{sink.port}"
        deadline = time.monotonic() + 10
        while pipe.results < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sink.tap.offered >= 20 and sink.tap.delivered == 0  # nobody watching: nothing encoded
        assert _get(f"{base}/state.json")[0] == 403 and _get(f"{base}/state.json?token=wrong")[0] == 403
        assert _get(f"{base}/?token=s3cret")[0] == 200
        status, body = _get(f"{base}/state.json?token=s3cret")
        assert status == 200 and b'"latency_ms"' in body
        with urllib.request.urlopen(f"{base}/stream.mjpg?token=s3cret", timeout=10) as r:
            assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            head = r.read(2)
            t0, d0 = time.monotonic(), sink.tap.delivered
            time.sleep(2.0)
            rate = (sink.tap.delivered - d0) / (time.monotonic() - t0)
        assert head == b"--" and sink.tap.delivered > 0
        assert rate <= 15 * 1.2 + 1  # the cap holds (30 fps camera, 15 fps encoding)


def _rtsp_available() -> None:
    check = subprocess.run(["/usr/bin/python3", str(HELPER), "--check"], capture_output=True, text=True)
    if check.returncode != 0:
        skip_or_fail(f"needs GStreamer's RTSP server for /usr/bin/python3 (Debian: apt install python3-gi "
                     f"gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-ugly): {check.stderr.strip()[-200:]}")


def test_rtsp_stream_reads_back_over_loopback(av_bundle):
    _rtsp_available()
    port = free_port()
    sink = make_sink(f"rtsp://127.0.0.1:{port}/cabin?fps=15")
    with running(av_bundle, [sink]):
        assert sink.ready.wait(30) and sink.failed is None
        time.sleep(0.5)
        idle = sink.tap.delivered
        assert sink.watched == 0 and idle == 1  # the first frame started the server; none sent since
        cap = cv2.VideoCapture(f"rtsp://127.0.0.1:{port}/cabin", cv2.CAP_FFMPEG,
                               [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 15000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 15000])
        try:
            assert cap.isOpened()
            frames = []
            for _ in range(20):
                ok, img = cap.read()
                assert ok
                frames.append(img)
            assert sink.watched == 1 and sink.tap.delivered > idle
        finally:
            cap.release()
        deadline = time.monotonic() + 10
        while sink.watched and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sink.watched == 0  # the client left: frames are no longer drawn nor sent
    assert frames[0].shape == (240, 320, 3)
    # The bars move: the stream is live, not one frame repeated; the annotation's dark panel is there.
    assert np.abs(frames[-1].astype(np.int16) - frames[0]).mean() > 2
    assert frames[-1][12:40, 12:100].mean() < frames[-1][200:, :].mean()


def test_rtsp_on_a_busy_port_is_one_line():
    _rtsp_available()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        sink = make_sink(f"rtsp://127.0.0.1:{busy.getsockname()[1]}/cabin")
        with pytest.raises(EdgemmError) as e:
            sink.open({})
    assert "Cannot listen" in str(e.value) and "\n" not in str(e.value)


def test_rtsp_without_gstreamer_is_one_line(monkeypatch, av_bundle):
    monkeypatch.setenv("EDGEMM_GST_PYTHON", "/nonexistent/python3")
    sink = make_sink("rtsp://127.0.0.1:8554/live")
    with pytest.raises(EdgemmError) as e:
        sink.open({})
    assert "rtsp://127.0.0.1:8554/live" in str(e.value) and "gir1.2-gst-rtsp-server" in str(e.value)


def _scrape(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    status, body = _get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_metrics_are_scraped_over_loopback(av_bundle):
    require_module("prometheus_client", "pip install prometheus-client")
    sink = make_sink("metrics:127.0.0.1:0")
    with running(av_bundle, [sink]) as pipe:
        deadline = time.monotonic() + 15
        while pipe.results < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        first = _scrape(sink.port)
        time.sleep(0.5)
        second = _scrape(sink.port)
    assert first["edgemm_results_total"] >= 10 and second["edgemm_results_total"] > first["edgemm_results_total"]
    for stage in ("capture", "preprocess", "infer", "postprocess", "sink", "total"):
        count = second[f"edgemm_stage_latency_seconds_count{{stage={stage}}}"]
        assert abs(count - second["edgemm_results_total"]) <= 1  # one observation per result (scraped mid-run)
    assert second["edgemm_stage_latency_seconds_sum{stage=total}"] > 0
    assert second["edgemm_av_skew_seconds_count"] > 0
    assert "edgemm_frames_dropped_total{where=port}" in second
    assert second["edgemm_reconnects_total{modality=video}"] == 0
    assert second["edgemm_audio_overflows_total"] == 0


def test_metrics_give_the_board_power_from_tegrastats(tmp_path, av_bundle):
    from tests.test_power import LINES, _replay

    sink = MetricsSink(0, "127.0.0.1", power_command=_replay(tmp_path, [LINES[6][1]]))  # Orin Nano, 4824 mW
    with running(av_bundle, [sink]):
        deadline = time.monotonic() + 15
        scraped = {}
        while "edgemm_power_watts" not in scraped and time.monotonic() < deadline:
            time.sleep(0.2)
            scraped = _scrape(sink.port)
        time.sleep(2.0)  # ~40 lines printed meanwhile
        _scrape(sink.port)
        kept = len(sink._power.samples)
    assert scraped["edgemm_power_watts"] == pytest.approx(4.824)
    assert kept <= 10  # a scrape keeps only the newest sample: months of running stay bounded


def test_run_metrics_flag_serves_metrics_and_refuses_a_bad_port(tmp_path, av_onnx):
    require_module("prometheus_client", "pip install prometheus-client")
    port = free_port()
    cmd = [sys.executable, "-m", "edgemm", "run", str(av_onnx), "--video", "test://video?size=160x120",
           "--audio", "test://audio", "--sink", f"jsonl:{tmp_path / 'r.jsonl'}", "--metrics", f"127.0.0.1:{port}",
           "--duration", "30", "--quiet"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            deadline = time.monotonic() + 60
            scraped = {}
            while time.monotonic() < deadline and scraped.get("edgemm_results_total", 0) < 5:
                time.sleep(0.3)
                with contextlib.suppress(OSError):
                    scraped = _scrape(port)
            assert scraped.get("edgemm_results_total", 0) >= 5, proc.stderr.read1().decode()
        finally:
            proc.terminate()
            proc.wait(30)
    assert proc.returncode == 0
    bad = subprocess.run(cmd[:-5] + ["--metrics", "x:y", "--duration", "1"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and "x:y" in bad.stderr
