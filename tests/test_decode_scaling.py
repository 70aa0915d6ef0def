"""Frames scaled where they are decoded (issue 13, item 2): an ffmpeg process decodes H.264 clips and live
streams made here with ffmpeg and scales them to the model's size; the results must be those of the CPU
path (OpenCV at full size, then preprocessing's resize) within a few grey levels, boxes in the camera's
pixels, and `edgemm run` must ask for it only where nothing needs the full-size frame."""

from __future__ import annotations

import logging
import subprocess
import time

import cv2
import numpy as np
import pytest

from edgemm.bundle import load_bundle
from edgemm.pipeline import Pipeline
from edgemm.preprocess import image_to_chw, preprocess_video
from edgemm.sources import open_source
from edgemm.sources.base import EndOfStream, SourceError
from tests import onnx_models, rigs


def _h264(path, source: str, frames: int = 30, fps: int = 15):
    rigs.require("ffmpeg")
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source,
                    "-frames:v", str(frames), "-r", str(fps), "-c:v", "libx264", "-preset", "veryfast",
                    "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def pattern_clip(tmp_path_factory):
    """320x180 H.264 of ffmpeg's moving colour pattern (sharp edges, saturated colours: a hard case)."""
    return _h264(tmp_path_factory.mktemp("clips") / "pattern.mp4", "testsrc2=size=320x180:rate=15")


@pytest.fixture(scope="module")
def square_clip(tmp_path_factory):
    """320x180 H.264, a red 40x40 square at x 200..240, y 60..100 on black."""
    return _h264(tmp_path_factory.mktemp("clips") / "square.mp4",
                 "color=c=black:size=320x180:rate=15,drawbox=x=200:y=60:w=40:h=40:color=red:t=fill", frames=10)


def read_all(src) -> list:
    frames = []
    with src:
        while True:
            try:
                f = src.read(10.0)
            except EndOfStream:
                return frames
            assert f is not None
            frames.append(f)


def test_file_scaled_while_decoding_is_the_cpu_path_within_a_grey_level(tmp_path, pattern_clip):
    """Every frame, in order, with the same times; at the model's size; the model's input tensor within
    about one grey level of the CPU path's on average (area averaging on both sides)."""
    bundle = load_bundle(onnx_models.write_av_bundle(tmp_path / "av", video_hw=(36, 64)))
    spec = next(s for _, s in bundle.manifest.all_inputs() if s.modality == "video")
    full = read_all(open_source(str(pattern_clip), realtime=False, start_time=10.0))
    scaled = read_all(open_source(str(pattern_clip), realtime=False, start_time=10.0, out_size=(64, 36)))
    assert len(scaled) == len(full) == 30
    assert [f.seq for f in scaled] == [f.seq for f in full]
    assert np.allclose([f.t for f in scaled], [f.t for f in full], atol=1e-3)
    assert all(f.image.shape == (36, 64, 3) and f.full_hw == (180, 320) and f.source_hw == (180, 320) for f in scaled)
    assert all(f.full_hw is None and f.source_hw == (180, 320) for f in full)

    def diff(a, b):
        return np.abs(np.stack(a).astype(int) - np.stack(b).astype(int))

    # The pixels the model gets, against an exact area average of the full frame (cv2 in one step) and against
    # the CPU path, whose halving steps are themselves an approximation of it (1.8 grey levels off on average
    # at this 5x shrink, 0.05 at 720p -> 224x224 where ffmpeg's is 0.7 off both).
    cpu = [image_to_chw(f.image, spec.preprocess, normalise=False) for f in full]
    ours = [image_to_chw(f.image, spec.preprocess, normalise=False) for f in scaled]
    exact = [cv2.resize(f.image, (64, 36), interpolation=cv2.INTER_AREA)[:, :, ::-1].transpose(2, 0, 1) for f in full]
    assert diff(ours, exact).mean() < 1.2 and np.percentile(diff(ours, exact), 99) <= 8
    assert diff(ours, cpu).mean() <= diff(cpu, exact).mean() + 1.0
    # ... and the float tensors (normalised with std 0.229..0.225: a grey level is about 0.017)
    x_full, x_scaled = preprocess_video(full[5].image, spec), preprocess_video(scaled[5].image, spec)
    assert x_full.shape == x_scaled.shape and np.abs(x_full - x_scaled).mean() < 0.06


def test_letterboxed_detector_gets_the_same_boxes_in_camera_pixels(tmp_path, square_clip):
    """A letterboxed 64x64 detector: the ffmpeg process delivers 64x36 (the aspect ratio kept), preprocessing
    adds the bands, and the boxes come back in the 320x180 camera's pixels as on the CPU path."""
    manifest = onnx_models.detector_manifest({"format": "yolov8", "conf": 0.5, "iou": 0.3}, [{"name": "output0"}])
    bundle = load_bundle(onnx_models.write_detector_bundle(tmp_path / "det", onnx_models.colour_detector(), manifest))
    assert bundle.manifest.graphs["model"].inputs[0].preprocess.resize == "letterbox"

    def boxes(**opts):
        src = open_source(str(square_clip), realtime=False, **opts)
        out = []
        with Pipeline(bundle, video=src) as pipe:
            while pipe.is_streaming():
                rec = pipe.step()
                if rec is not None:
                    out.append([d["box"] for d in rec["outputs"]["output0"]["detections"]])
        return src, out

    src, scaled = boxes(out_size=(64, 64), resize="letterbox")
    assert src.size == (64, 36)  # what reached the CPU
    _, full = boxes()
    assert len(scaled) == len(full) == 10
    assert all(len(b) == 1 for b in full), full
    assert np.allclose(np.array(scaled, float), np.array(full, float), atol=2.0), (scaled[0], full[0])
    x1, y1, x2, y2 = full[0][0]
    assert 200 <= (x1 + x2) / 2 <= 240 and 60 <= (y1 + y2) / 2 <= 100  # on the square, in camera pixels


@pytest.mark.parametrize("kind", ["mjpeg", "mpegts"])
def test_live_stream_scaled_in_ffmpeg_recovers_after_camera_loss(kind):
    """A live stream decoded and scaled by ffmpeg: small frames, newest first, the camera's size known; the
    camera dies (read() raises, ffmpeg is not left running) and comes back (reopened)."""
    with rigs.FfmpegStream(kind, fps=30) as cam:
        src = open_source(cam.url, stall_timeout=1.5, out_size=(64, 48), name="cam")
        src.open()
        try:
            frames = []
            while len(frames) < 20:
                f = src.read(5.0)
                assert f is not None
                frames.append(f)
            assert all(f.image.shape == (48, 64, 3) and f.full_hw == (240, 320) for f in frames)
            ts = [f.t for f in frames]
            assert all(b > a for a, b in zip(ts, ts[1:]))
            pid = src._cap._proc.pid
            cam.kill()
            # (time-bounded, not counted: on a busy machine the decoder may still be working through what
            # reached it before the camera died)
            with pytest.raises(SourceError, match="Video source: " + cam.url):
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    src.read(0.2)
            src.close()
            assert subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip() \
                in ("", "Z"), "the ffmpeg decoder outlived its source"
            cam.start()
            src.open()
            again = src.read(10.0)
            assert again is not None and again.image.shape == (48, 64, 3) and again.seq > frames[-1].seq
        finally:
            src.close()
        assert src.decoder_cpu() > 0


def test_stream_that_cannot_be_opened_is_one_line_naming_it():
    port = rigs.free_port()
    src = open_source(f"http://127.0.0.1:{port}/", open_timeout=2, out_size=(64, 48))
    with pytest.raises(SourceError, match=f"127.0.0.1:{port}") as err:
        src.open()
    assert "\n" not in str(err.value) and "ffmpeg" in str(err.value)


def test_without_ffmpeg_the_source_decodes_at_full_size(pattern_clip, monkeypatch, caplog):
    monkeypatch.setenv("PATH", "/nonexistent")
    with caplog.at_level(logging.WARNING, logger="edgemm.sources"):
        frames = read_all(open_source(str(pattern_clip), realtime=False, out_size=(64, 36)))
    assert len(frames) == 30 and frames[0].image.shape == (180, 320, 3) and frames[0].full_hw is None
    assert "no ffmpeg program" in caplog.text


def test_scaling_options_are_checked():
    from edgemm.errors import EdgemmError

    with pytest.raises(EdgemmError, match="resize='fit'"):
        open_source("rtsp://127.0.0.1:1/x", out_size=(64, 48), resize="fit")
    with pytest.raises(EdgemmError, match="out_size='big'"):
        open_source("rtsp://127.0.0.1:1/x", out_size="big")


def test_csi_and_gstreamer_pipelines_scale_to_the_model():
    """No Jetson here: the pipelines' text. nvvidconv gets the aspect-keeping size for a letterboxed input
    (it stretches to whatever it is given), turned for the 90-degree flips."""
    from edgemm.sources.video import csi_output_size, csi_pipeline, gst_pipeline

    assert csi_output_size((1280, 720), 0, (224, 224)) == ((224, 224), (720, 1280))
    assert csi_output_size((1280, 720), 0, (640, 640), "letterbox") == ((640, 360), (720, 1280))
    assert csi_output_size((1280, 720), 1, (640, 640), "letterbox") == ((360, 640), (1280, 720))
    assert csi_output_size((1920, 1080), 2, None) == (None, (1080, 1920))
    assert "nvvidconv flip-method=0 ! video/x-raw,width=640,height=360,format=BGRx" in csi_pipeline(0, out_size=(640, 360))
    text = gst_pipeline("videotestsrc", (224, 224))
    assert text.startswith("videotestsrc ! videoscale ! videoconvert ! video/x-raw,format=BGR,width=224,height=224 ! appsink")
    assert gst_pipeline("videotestsrc") == "videotestsrc ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false"


def test_v4l2_mode_is_the_smallest_covering_the_model_with_the_same_field_of_view():
    """No camera here: the choice among the modes a UVC camera lists, and the listing itself on a device
    that is not a camera (empty, not an error)."""
    from edgemm.sources.v4l2_modes import Mode, choose_mode, list_modes

    modes = [Mode(f, w, h) for f in ("MJPG", "YUYV") for w, h in
             ((1920, 1080), (1280, 720), (640, 480), (640, 360), (424, 240), (320, 240), (320, 180), (160, 90))]
    # 16:9 default, a 224x224 stretched input: 424x240 (not the 4:3 320x240, not 320x180 which is too short)
    assert choose_mode(modes, (1280, 720), (224, 224)) == Mode("YUYV", 424, 240)
    assert choose_mode(modes, (1280, 720), (224, 224), fourcc="MJPG") == Mode("MJPG", 424, 240)
    # letterboxed 640x640 from 16:9 needs 640x360
    assert choose_mode(modes, (1280, 720), (640, 360)) == Mode("YUYV", 640, 360)
    assert choose_mode(modes, (640, 480), (224, 224)) == Mode("YUYV", 320, 240)
    assert choose_mode(modes, (1280, 720), (1920, 1200)) is None  # nothing covers it
    assert choose_mode(modes, (320, 180), (224, 224)) is None  # nothing smaller than the default would do
    assert list_modes("/dev/null") == [] and list_modes("/nonexistent/video9") == []
