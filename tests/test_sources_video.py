"""Video sources on real components: ffmpeg serving a live stream on loopback (the camera, lost and restored),
video files written here, and the test pattern. Speeds are checked as generous ratios, never as timings."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from edgemm.sources import open_source
from edgemm.sources.base import EndOfStream, SourceError, now
from edgemm.sources.patterns import ArrayVideoSource, burn_frame_counter, decode_frame_counter
from tests import rigs


def read_for(src, seconds: float, timeout: float = 2.0) -> list:
    frames, end = [], now() + seconds
    while now() < end:
        f = src.read(timeout)
        assert f is not None, "a live source delivered nothing within the timeout"
        frames.append(f)
    return frames


def read_until_error(src, limit_s: float) -> tuple[SourceError | None, float]:
    start = now()
    while now() - start < limit_s:
        try:
            src.read(0.2)
        except SourceError as exc:
            return exc, now() - start
    return None, now() - start


# ----------------------------------------------------------------------------------- live camera (ffmpeg)

@pytest.mark.parametrize("kind", ["mjpeg", "mpegts"])
def test_live_http_stream_reconnect_after_camera_loss(kind):
    """The camera (ffmpeg) is killed: read() raises SourceError (no hang, no stale frames forever); a fresh
    open after it comes back delivers frames again, seq keeps counting and stats.reopened says so."""
    with rigs.FfmpegStream(kind) as cam:
        src = open_source(cam.url, stall_timeout=1.5, name="cam")
        assert src.live and src.modality == "video"
        src.open()
        try:
            frames = read_for(src, 1.5)
            assert frames[0].image.shape == (240, 320, 3) and frames[0].image.dtype == np.uint8
            assert all(f.source == "cam" for f in frames)
            seqs = [f.seq for f in frames]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
            ts = [f.t for f in frames]
            assert all(b > a for a, b in zip(ts, ts[1:])), "capture times must increase"
            assert all(f.t <= now() for f in frames)

            cam.kill()
            err, took = read_until_error(src, 10.0)
            assert err is not None, "read() kept returning after the camera died"
            assert "Video source: " + cam.url in str(err) and "\n" not in str(err)
            # It stays failed until reopened.
            with pytest.raises(SourceError):
                src.read(0.1)
            last_seq = max(seqs)
            src.close()

            cam.start()
            src.open()
            again = read_for(src, 0.5)
            assert again and again[0].seq > last_seq
            assert src.stats.reopened == 1
        finally:
            src.close()


def test_live_stream_latest_frame_wins_and_rate_is_the_cameras():
    """A slow consumer gets the newest frame, not a growing backlog: the frames it missed are counted as
    dropped and appear as seq gaps. The delivered rate follows the 30 fps camera (CAP_PROP_FPS may lie)."""
    with rigs.FfmpegStream("mjpeg", fps=30) as cam:
        with open_source(cam.url) as src:
            read_for(src, 1.2)  # the first second comes as a burst (ffmpeg buffered while OpenCV probed)
            steady = read_for(src, 1.5)
            fps = (len(steady) - 1) / (steady[-1].t - steady[0].t)
            assert 30 * 0.6 < fps < 30 * 1.4, fps
            assert 30 * 0.6 < src.stats.extra["fps_measured"] < 30 * 1.4
            dropped_before = src.stats.dropped
            last = steady[-1].seq
            time.sleep(0.5)  # ~15 frames arrive meanwhile
            fresh = src.read(2.0)
            assert fresh.seq - last >= 5, (last, fresh.seq)
            assert src.stats.dropped - dropped_before >= 4
            # The frame handed out is recent: grabbed a few frame periods ago, not when the consumer last
            # read (the median over several slow reads, against the camera's own frame period).
            ages = []
            for _ in range(6):
                time.sleep(0.3)  # nine frame periods
                f = src.read(2.0)
                ages.append(now() - f.t)
            assert np.median(ages) < 4 / 30, ages


def test_v4l2_frames_take_the_drivers_timestamp_when_it_is_sane():
    """OpenCV's V4L2 CAP_PROP_POS_MSEC is the buffer's timestamp on CLOCK_MONOTONIC (now()'s clock): used
    when it is in the last second, else (0 before the first frame, a wall-clock stamp) grab()'s return time.
    (No V4L2 device here: the rule itself, on the values OpenCV hands over.)"""
    from edgemm.sources.video import v4l2_capture_time

    t_now = 5000.0
    assert v4l2_capture_time((t_now - 0.045) * 1000, t_now) == (pytest.approx(t_now - 0.045), True)
    assert v4l2_capture_time((t_now - 0.045) * 1000, t_now, 0.01) == (pytest.approx(t_now - 0.055), True)
    assert v4l2_capture_time(0.0, t_now, 0.01) == (pytest.approx(t_now - 0.01), False)  # before the first frame
    assert v4l2_capture_time(1.7e12, t_now) == (t_now, False)  # the wall clock (uvcvideo clock=realtime)
    assert v4l2_capture_time((t_now + 0.2) * 1000, t_now) == (t_now, False)  # in the future
    assert v4l2_capture_time((t_now - 3.0) * 1000, t_now) == (t_now, False)  # too old to be this frame


def test_stalled_stream_raises_source_error():
    """A stream that goes silent with its socket still open (SIGSTOP on ffmpeg) is detected by the stall
    timeout instead of blocking forever."""
    with rigs.FfmpegStream("mjpeg") as cam:
        src = open_source(cam.url, stall_timeout=1.0)
        src.open()
        try:
            read_for(src, 0.5)
            os.kill(cam.proc.pid, signal.SIGSTOP)
            try:
                err, took = read_until_error(src, 8.0)
            finally:
                os.kill(cam.proc.pid, signal.SIGCONT)
            assert err is not None and "No frame for" in str(err), err
            assert took >= 0.5  # it waited for the stall timeout, it did not fail at once
        finally:
            src.close()


def test_open_failure_is_a_source_error_naming_the_url():
    port = rigs.free_port()  # nobody listens there
    src = open_source(f"http://127.0.0.1:{port}/", open_timeout=2)
    with pytest.raises(SourceError, match=f"127.0.0.1:{port}"):
        src.open()


# ------------------------------------------------------------------------------------------------ files

@pytest.fixture(scope="module")
def counter_clip(tmp_path_factory):
    """A 45-frame 15 fps MJPEG AVI whose frames carry their index in the code strip."""
    import cv2

    path = tmp_path_factory.mktemp("video") / "counter.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (320, 240))
    assert writer.isOpened()
    for i in range(45):
        img = np.full((240, 320, 3), (i * 5) % 255, np.uint8)
        writer.write(burn_frame_counter(img, i))
    writer.release()
    return path


def test_file_delivers_every_frame_in_order_as_fast_as_read(counter_clip):
    src = open_source(str(counter_clip), realtime=False, start_time=100.0)
    assert not src.live
    frames = []
    with src:
        while True:
            try:
                f = src.read(5.0)
            except EndOfStream:
                break
            assert f is not None
            frames.append(f)
            if len(frames) % 10 == 0:
                time.sleep(0.05)  # a slow consumer loses nothing from a file
    assert [decode_frame_counter(f.image) for f in frames] == list(range(45))
    assert [f.seq for f in frames] == list(range(45))
    # t = start + pts: 15 fps from 100.0.
    assert np.allclose([f.t for f in frames], 100.0 + np.arange(45) / 15.0, atol=1e-3)
    assert src.stats.dropped == 0 and src.stats.delivered == 45


def test_file_realtime_is_paced_at_its_frame_rate(counter_clip):
    src = open_source(f"file://{counter_clip}")  # realtime by default
    got = []
    with src:
        for _ in range(12):
            f = src.read(2.0)
            got.append((f, now()))
    for f, delivered_at in got:
        assert delivered_at >= f.t - 1e-3, "a paced file frame was handed out before its time"
    span = got[-1][1] - got[0][1]
    assert span >= 11 / 15.0 * 0.95  # 12 frames at 15 fps cannot come faster than 0.73 s


def test_file_loop_keeps_counting(counter_clip):
    src = open_source(str(counter_clip), realtime=False, loop=True)
    with src:
        frames = [src.read(5.0) for _ in range(50)]
    assert [decode_frame_counter(f.image) for f in frames] == list(range(45)) + list(range(5))
    assert [f.seq for f in frames] == list(range(50))
    ts = [f.t for f in frames]
    assert all(b > a for a, b in zip(ts, ts[1:]))


def test_image_file_is_a_one_frame_source(tmp_path):
    import cv2

    path = tmp_path / "still.png"
    cv2.imwrite(str(path), burn_frame_counter(np.zeros((120, 160, 3), np.uint8), 7))
    src = open_source(path, realtime=False)
    with src:
        assert decode_frame_counter(src.read(1).image) == 7
        with pytest.raises(EndOfStream):
            src.read(1)


# --------------------------------------------------------------------------------------------- patterns

def test_test_pattern_live_latest_wins_and_counter_round_trips():
    src = open_source("test://video?size=320x240&fps=50")
    with src:
        first = src.read(1.0)
        assert first.image.shape == (240, 320, 3)
        assert decode_frame_counter(first.image) == first.seq
        time.sleep(0.3)  # ~15 frame periods
        nxt = src.read(1.0)
        assert nxt.seq - first.seq >= 8
        assert decode_frame_counter(nxt.image) == nxt.seq
        assert src.stats.dropped == nxt.seq - first.seq - 1
        assert nxt.t == pytest.approx(src.time_of(nxt.seq))
        assert nxt.t <= now()
    time.sleep(0.2)
    with src:  # a live source reopened carries on on its timeline: the time it was closed is a seq gap
        again = src.read(1.0)
    assert again.seq - nxt.seq >= 5 and again.t == pytest.approx(src.time_of(again.seq))
    assert src.stats.reopened == 1


def test_test_pattern_finite_unpaced():
    src = open_source("test://video?size=96x64&fps=10&frames=5&live=false&realtime=false", start_time=0.0)
    with src:
        frames = [src.read(0) for _ in range(5)]
        with pytest.raises(EndOfStream):
            src.read(0)
    assert [f.seq for f in frames] == list(range(5))
    assert [f.t for f in frames] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert decode_frame_counter(frames[3].image) == 3


def test_counter_survives_jpeg():
    import cv2

    img = burn_frame_counter(np.random.default_rng(0).integers(0, 255, (240, 320, 3), np.uint8), 123456)
    ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 50])
    assert decode_frame_counter(cv2.imdecode(jpg, cv2.IMREAD_COLOR)) == 123456


def test_array_video_source_timeout_returns_none_when_not_due():
    frames = [np.zeros((8, 8, 3), np.uint8)] * 3
    src = ArrayVideoSource(frames, fps=2.0, realtime=True)
    with src:
        assert src.read(0.1) is not None  # frame 0 is due at once
        assert src.read(0.05) is None  # frame 1 is due 0.5 s after the start
        assert src.read(1.0).seq == 1
