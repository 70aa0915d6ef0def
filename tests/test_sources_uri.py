"""The URI factory: which source each URI gives, and one clear EdgemmError line, before anything starts,
for what cannot work (unknown scheme, missing file or device, wrong modality, unknown option)."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from edgemm.errors import EdgemmError
from edgemm.media import write_wav
from edgemm.sources import modality_of, open_source
from edgemm.sources.audio import WavSource
from edgemm.sources.base import SourceError
from edgemm.sources.patterns import ColourBarsSource, GeneratedAudioSource
from edgemm.sources.uri import parse_uri
from edgemm.sources.video import VideoCaptureSource, opencv_has


def one_line_error(fn, *match: str) -> str:
    with pytest.raises(EdgemmError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for m in match:
        assert m in msg, msg
    return msg


def test_parse_keeps_device_names_and_network_queries():
    p = parse_uri("mic://hw:1,0?sample_rate=48000")
    assert (p.scheme, p.location, p.options) == ("mic", "hw:1,0", {"sample_rate": "48000"})
    assert parse_uri("mic://USB%20Audio").location == "USB Audio"
    # A network URL's query belongs to the server, not to us.
    p = parse_uri("rtsp://cam.local:554/stream?channel=1&subtype=0")
    assert p.location == "cam.local:554/stream?channel=1&subtype=0" and p.options == {}
    p = parse_uri("gst://videotestsrc ! video/x-raw,width=320 ! appsink")
    assert p.location.startswith("videotestsrc !")
    assert parse_uri("/data/clip.mp4").scheme == ""
    assert parse_uri("test://video?fps=5", {"fps": 7}).options == {"fps": 7}  # keyword options win


def test_scheme_dispatch(tmp_path):
    assert isinstance(open_source("test://video"), ColourBarsSource)
    assert isinstance(open_source("test://audio"), GeneratedAudioSource)
    assert isinstance(open_source("test://", modality="audio"), GeneratedAudioSource)
    src = open_source("rtsp://127.0.0.1:8554/cam")
    assert isinstance(src, VideoCaptureSource) and src.api == "ffmpeg" and src.live
    assert src.ffmpeg_options == "rtsp_transport;tcp"
    assert open_source("rtsp://127.0.0.1:8554/cam", transport="udp").ffmpeg_options == "rtsp_transport;udp"
    assert open_source("https://example.invalid/live.m3u8").target == "https://example.invalid/live.m3u8"
    wav = tmp_path / "a.wav"
    write_wav(wav, np.zeros(1600, np.float32), 16000)
    for uri in (str(wav), f"file://{wav}"):
        src = open_source(uri)
        assert isinstance(src, WavSource) and src.sample_rate == 16000 and not src.live
    assert modality_of("mic://default") == "audio" and modality_of(wav) == "audio"
    assert modality_of("test://audio?kind=chirp") == "audio" and modality_of("rtsp://x/y") == "video"
    assert modality_of("/dev/video0") == "video"


def test_options_are_typed():
    src = open_source("test://video?size=64x48&fps=12.5&frames=3&live=false", name="cam")
    assert src.size == (64, 48) and src.fps == 12.5 and src.count == 3 and not src.live and src.name == "cam"
    src = open_source("test://audio?sample_rate=8000&block_s=0.05")
    assert src.sample_rate == 8000 and src.block == 400


def test_unknown_scheme():
    one_line_error(lambda: open_source("webcam://0"), "webcam://", "expected one of", "v4l2://", "mic://")


def test_missing_file():
    one_line_error(lambda: open_source("/no/such/clip.mp4"), "/no/such/clip.mp4", "File not found")
    one_line_error(lambda: open_source("file:///no/such/speech.wav"), "/no/such/speech.wav")


def test_undecodable_video_file(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    one_line_error(lambda: open_source(bad), "broken.mp4", "No frame could be decoded")


def test_audio_from_a_video_file_says_how_to_get_a_wav(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    one_line_error(lambda: open_source(clip, modality="audio"), "Not a .wav file", "ffmpeg -i clip.mp4")


def test_missing_camera_lists_what_exists():
    if os.path.exists("/dev/video7"):
        pytest.skip("this machine has a /dev/video7")
    present = sorted(glob.glob("/dev/video*"))
    msg = one_line_error(lambda: open_source("v4l2:///dev/video7"), "/dev/video7 does not exist")
    if not present:
        assert "no V4L2 camera" in msg
    if not os.path.exists("/dev/video0"):
        one_line_error(lambda: open_source("0"), "/dev/video0 does not exist")
        one_line_error(lambda: open_source("v4l2://0"), "/dev/video0 does not exist")


@pytest.mark.skipif(opencv_has("GStreamer"), reason="this OpenCV has GStreamer")
def test_csi_and_gst_need_an_opencv_with_gstreamer():
    one_line_error(lambda: open_source("csi://0"), "csi://0", "without GStreamer", "JetPack")
    one_line_error(lambda: open_source("gst://videotestsrc ! appsink"), "GStreamer")


def test_csi_pipeline_text():
    from edgemm.sources.video import csi_pipeline, gst_pipeline

    p = csi_pipeline(1, (1920, 1080), 30, 2)
    assert p.startswith("nvarguscamerasrc sensor-id=1 !") and "width=1920,height=1080,framerate=30/1" in p
    assert "flip-method=2" in p and p.endswith("appsink drop=true max-buffers=1 sync=false")
    assert "nvvidconv flip-method=2 ! video/x-raw,format=BGRx ! videoconvert" in p  # sensor size by default
    # Scaled in NVMM by nvvidconv to the model's size: only the small frame is converted and copied on the CPU.
    small = csi_pipeline(0, (1920, 1080), 30, 0, out_size=(224, 160))
    assert "nvvidconv flip-method=0 ! video/x-raw,width=224,height=160,format=BGRx ! videoconvert" in small
    assert gst_pipeline("videotestsrc").endswith("appsink drop=true max-buffers=1 sync=false")
    assert gst_pipeline("videotestsrc ! appsink name=x") == "videotestsrc ! appsink name=x"


def test_wrong_modality():
    one_line_error(lambda: open_source("test://audio", modality="video"), "Gives audio", "expected an video")
    one_line_error(lambda: open_source("test://video", modality="audio"), "Gives video", "mic://default")
    one_line_error(lambda: open_source("test://video", modality="smell"), "expected 'video' or 'audio'")


def test_unknown_and_malformed_options():
    one_line_error(lambda: open_source("test://video?fsp=10"), "Unknown option(s) fsp", "fps")
    one_line_error(lambda: open_source("test://video", colour="red"), "colour")
    one_line_error(lambda: open_source("test://video?size=big"), "size='big'", "WIDTHxHEIGHT")
    one_line_error(lambda: open_source("test://video?fps=fast"), "fps='fast'", "not a number")
    one_line_error(lambda: open_source("test://video?fps=nan"), "fps='nan'", "finite")  # passes `< 1`
    one_line_error(lambda: open_source("test://video?fps=inf"), "fps='inf'", "finite")
    one_line_error(lambda: open_source("test://audio?kind=speech"), "kind='speech'", "tone")
    one_line_error(lambda: open_source("test://smell"), "test://video or test://audio")
    one_line_error(lambda: open_source(""), "Empty URI")
    # A keyword option some other kind of source knows is fine: the pipeline passes the same to every source.
    assert open_source("test://video", sample_rate=16000, realtime=True).fps == 30


def test_read_before_open_is_a_source_error():
    for uri in ("test://video", "test://audio", "rtsp://127.0.0.1:1/x"):
        with pytest.raises(SourceError, match="before open"):
            open_source(uri).read(0)


def test_query_options_work_on_plain_paths_as_on_file_uris(tmp_path):
    wav = tmp_path / "speech.wav"
    write_wav(wav, np.zeros(2205, np.float32), 22050)
    for uri in (f"{wav}?resample=false", f"file://{wav}?resample=false"):
        assert modality_of(uri) == "audio"
        # the option reached the source: resampling is off, so a 22.05 kHz file cannot feed a 16 kHz model
        one_line_error(lambda: open_source(uri, sample_rate=16000), "resample=false", "16000")
        one_line_error(lambda: open_source(uri.replace("resample", "resampel")), "Unknown option(s) resampel")
    assert open_source(f"{wav}?name=cabin").name == "cabin"
    odd = tmp_path / "take?2.wav"  # a file whose name has a "?" is still that file
    write_wav(odd, np.zeros(1600, np.float32), 16000)
    assert parse_uri(str(odd)).location == str(odd) and isinstance(open_source(str(odd)), WavSource)


def test_run_scales_while_decoding_to_the_model_size(tmp_path):
    """edgemm run asks CSI cameras, files and streams for the model's image size (width x height) and fit,
    unless the URI says, or a sink draws on the frames (it needs them at the camera's size), or the source
    cannot scale."""
    from edgemm.bundle import load_bundle
    from edgemm.commands.run import _video_options
    from edgemm.sinks import make_sink
    from tests import onnx_models

    bundle = load_bundle(onnx_models.write_av_bundle(tmp_path / "av", video_hw=(32, 48)))
    stretch = {"out_size": (48, 32), "resize": "stretch"}
    for uri in ("csi://0", "clip.mp4", "file:///data/clip.mkv", "rtsp://cam/stream", "http://cam/video",
                "v4l2:///dev/video0", "0"):
        assert _video_options(uri, bundle) == stretch, uri
        assert _video_options(uri, bundle, [make_sink("console"), make_sink("jsonl:/tmp/r.jsonl")]) == stretch
    # a sink that draws on the frames: the camera's size (before, a CSI camera was scaled down regardless)
    for sink in ("video:/tmp/out.mp4", "rtsp://127.0.0.1:8554/live", "http://127.0.0.1:8080"):
        assert _video_options("csi://0", bundle, [make_sink("console"), make_sink(sink)]) == {}, sink
    for uri in ("csi://0?out_size=full", "gst://videotestsrc", "test://video", "still.png"):
        assert _video_options(uri, bundle) == {}, uri
    # letterboxed (a detector): the source keeps the aspect ratio within the size, preprocessing pads
    manifest = onnx_models.detector_manifest({"format": "yolov8"}, [{"name": "output0"}])
    detector = load_bundle(onnx_models.write_detector_bundle(tmp_path / "det", onnx_models.colour_detector(),
                                                             manifest))
    assert _video_options("csi://0", detector) == {"out_size": (64, 64), "resize": "letterbox"}
