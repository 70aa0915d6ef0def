"""Sources by URI: one factory, ``open_source(uri, modality=None, **options)``.

It returns the source NOT yet opened but already validated: an unknown scheme, a missing file or camera, a
microphone that does not exist or cannot capture at the rate asked, a WAV that may not be resampled, all
raise EdgemmError (one line) here, before anything starts. Open it with ``with src:`` or ``src.open()``;
the pipeline opens it in its capture thread and, after a SourceError, closes and opens it again.

Then ``read(timeout)`` returns a Frame / AudioBlock, None when nothing came within ``timeout`` seconds, and
raises SourceError when the source failed (EndOfStream at the end of a file).

Video                                            Audio
  v4l2:///dev/video0, v4l2://0, 0                  mic://default, mic://2, mic://USB%20Audio (PortAudio)
  csi://0            (Jetson, GStreamer)           file://speech.wav, speech.wav
  rtsp://..., http(s)://..., udp://... (FFmpeg)    test://audio?kind=tone|chirp|noise|silence
  file://clip.mp4, clip.mp4, still.png
  gst://videotestsrc ! ... (GStreamer)
  test://video?size=640x480&fps=30&pattern=bars|noise

Options go in the query string (``test://video?fps=15``) or as keyword arguments (which win):
  every source:  name (label in Frame.source / AudioBlock.source)
  live video:    stall_timeout (3 s), open_timeout (10 s), transport=tcp|udp (rtsp), capture_delay (0 s:
                 known exposure-to-grab delay, subtracted from Frame.t), live=false (a recording at a URL)
  v4l2 / csi:    size=WxH, fps, fourcc=MJPG (v4l2), flip=0..7 (csi)
  scaling:       out_size=WxH|full and resize=stretch|letterbox (files, network streams, csi, v4l2; gst:
                 stretch): frames are scaled while decoded -- by an ffmpeg process (FFmpeg URIs), nvvidconv in
                 NVMM (csi), videoscale (gst) -- to out_size, or into it keeping the aspect ratio (letterbox;
                 preprocessing pads), so no full-size frame reaches the CPU; a V4L2 camera without size= is
                 set to its smallest mode covering out_size with its default mode's aspect ratio. `edgemm run`
                 asks for the model's input size unless the URI says otherwise or a sink draws on the frames
                 (video:, rtsp:, http:)
  files:         realtime (true: paced at their own rate), loop (false), start_time (now()-time of media 0)
  audio:         sample_rate (16000 for mic/test; a WAV is resampled to it), block (samples) or block_s
                 (0.02 s), buffer_s (2 s ring), stall_timeout (2 s, mic), resample (true, WAV), channels and
                 latency (0.05 s PortAudio buffer: room for Python's GIL hand-offs), anchor_s (0.25 s: the
                 clock anchor settles over the first callbacks of every opening; blocks come after it),
                 silence_s (3 s of exact digital zeros = the microphone is lost; 0: never), open_timeout (5 s)
                 for mic
  test:          size, fps, pattern, frames, live (true), kind, freq, freq_end, period_s, amplitude, seed,
                 duration_s
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import cv2

from edgemm.errors import EdgemmError
from edgemm.media import AUDIO_SUFFIXES, IMAGE_SUFFIXES
from edgemm.sources.audio import MicSource, WavSource
from edgemm.sources.base import (
    AudioBlock,
    EndOfStream,
    Frame,
    Source,
    SourceError,
    SourceMissing,
    SourceStats,
    now,
)
from edgemm.sources.patterns import (
    AUDIO_KINDS,
    ArrayVideoSource,
    ColourBarsSource,
    GeneratedAudioSource,
    audio_pattern,
    block_size,
)
from edgemm.sources.uri import NETWORK_SCHEMES, Options, parse_uri
from edgemm.sources.video import VideoCaptureSource, csi_output_size, csi_pipeline, gst_pipeline, require_gstreamer

__all__ = ["open_source", "Source", "SourceError", "EndOfStream", "Frame", "AudioBlock", "SourceStats", "now",
           "modality_of"]


def open_source(uri, modality: str | None = None, **options) -> Source:
    """A validated, not yet opened source for ``uri``; ``modality`` ('video' or 'audio') when the caller needs
    one kind (a URI of the other kind is then an error) or to tell what a bare path should give."""
    if modality not in (None, "video", "audio"):
        raise EdgemmError(f"Source: {uri} | Modality {modality!r}; expected 'video' or 'audio'.")
    parsed = parse_uri(uri, options)
    opts = Options(parsed.uri, parsed.options, parsed.query_keys)
    source = _build(parsed, opts, modality)
    if modality is not None and source.modality != modality:
        example = "mic://default or a .wav file" if modality == "audio" else "v4l2:///dev/video0 or a video file"
        raise EdgemmError(f"Source: {parsed.uri} | Gives {source.modality}; expected an {modality} source "
                          f"(e.g. {example}).")
    return source


def modality_of(uri) -> str:
    """'video' or 'audio' for a URI, from its scheme or file suffix alone (nothing is opened or checked)."""
    parsed = parse_uri(uri)
    if parsed.scheme == "mic":
        return "audio"
    if parsed.scheme == "test":
        return "audio" if parsed.location.strip("/").lower().startswith("audio") else "video"
    if parsed.scheme in ("", "file") and Path(parsed.location).suffix.lower() in AUDIO_SUFFIXES:
        return "audio"
    return "video"


def _build(parsed, opts: Options, modality: str | None) -> Source:
    scheme, loc = parsed.scheme, parsed.location
    if scheme == "" and loc.isdigit():
        return _v4l2(parsed, opts, loc)
    if scheme in ("", "file"):
        return _file(parsed, opts, loc, modality)
    if scheme == "v4l2":
        return _v4l2(parsed, opts, loc)
    if scheme == "csi":
        return _csi(parsed, opts, loc)
    if scheme == "gst":
        return _gst(parsed, opts, loc)
    if scheme in NETWORK_SCHEMES:
        return _network(parsed, opts)
    if scheme == "mic":
        return _mic(parsed, opts, loc)
    if scheme == "test":
        kind = loc.strip("/").lower() or (modality or "")
        if kind == "video":
            return _test_video(parsed, opts)
        if kind == "audio":
            return _test_audio(parsed, opts)
        raise EdgemmError(f"Source: {parsed.uri} | Unknown test source '{kind}'; expected test://video or "
                          "test://audio.")
    raise EdgemmError(f"Source: {parsed.uri} | Unsupported URI; expected a camera, stream, microphone or file.")


# ------------------------------------------------------------------------------------------------ video

def _live_video_kwargs(opts: Options) -> dict:
    return dict(stall_timeout=opts.get_float("stall_timeout", 3.0, minimum=0.05),
                open_timeout=opts.get_float("open_timeout", 5.0, minimum=0.1),
                capture_delay=opts.get_float("capture_delay", 0.0, minimum=0.0),
                name=opts.get_str("name"))


def _scaling(opts: Options, letterbox: bool = True) -> dict:
    """out_size / resize options: where frames are scaled while decoding (None: the camera's size)."""
    out_size = None if opts.get_str("out_size") in (None, "full") else opts.get_size("out_size")
    resize = opts.get_choice("resize", ("stretch", "letterbox") if letterbox else ("stretch",), "stretch")
    return {"out_size": out_size, "resize": resize}


def _v4l2(parsed, opts: Options, loc: str) -> Source:
    loc = loc or "/dev/video0"
    device = f"/dev/video{loc}" if loc.isdigit() else loc
    if not os.path.exists(device):
        present = sorted(glob.glob("/dev/video*"))
        raise SourceMissing(f"Camera: {parsed.uri} | {device} does not exist; expected one of: "
                          f"{', '.join(present) if present else 'none (no V4L2 camera on this machine)'}.")
    target = int(loc) if loc.isdigit() else device
    kw = _live_video_kwargs(opts)
    src = VideoCaptureSource(parsed.uri, target, api="v4l2", size=opts.get_size("size"), fps=opts.get_float("fps"),
                             fourcc=opts.get_str("fourcc"), **_scaling(opts), **kw)
    opts.check_all_used("V4L2 camera")
    return src


def _csi(parsed, opts: Options, loc: str) -> Source:
    sensor = loc.strip("/") or "0"
    if not sensor.isdigit():
        raise EdgemmError(f"Camera: {parsed.uri} | Sensor id '{sensor}'; expected csi://0, csi://1, ...")
    size = opts.get_size("size", (1280, 720))
    fps = opts.get_float("fps", 30.0, minimum=1)
    flip = opts.get_int("flip", 0, minimum=0)
    scaling = _scaling(opts)
    kw = _live_video_kwargs(opts)
    opts.check_all_used("CSI camera")
    require_gstreamer(parsed.uri)
    out_size, full_hw = csi_output_size(size, flip, scaling["out_size"], scaling["resize"])
    return VideoCaptureSource(parsed.uri, csi_pipeline(int(sensor), size, fps, flip, out_size), api="gstreamer",
                              full_hw=full_hw, **kw)


def _gst(parsed, opts: Options, loc: str) -> Source:
    if not loc.strip():
        raise EdgemmError(f"Video source: {parsed.uri} | Empty pipeline; expected gst://videotestsrc ! appsink.")
    kw = _live_video_kwargs(opts)
    out_size = _scaling(opts, letterbox=False)["out_size"]
    opts.check_all_used("GStreamer")
    require_gstreamer(parsed.uri)
    return VideoCaptureSource(parsed.uri, gst_pipeline(loc, out_size), api="gstreamer", **kw)


def _network(parsed, opts: Options) -> Source:
    ffmpeg_options = None
    if parsed.scheme in ("rtsp", "rtsps"):
        # TCP by default: over UDP one lost packet corrupts a frame; transport=udp for the lowest latency.
        transport = opts.get_choice("transport", ("tcp", "udp"), "tcp")
        ffmpeg_options = f"rtsp_transport;{transport}"
    kw = _live_video_kwargs(opts)
    kw.update(_scaling(opts))
    if not opts.get_bool("live", True):
        # A recording behind a URL (http://host/clip.mp4): every frame in order, like a local file.
        kw.update(live=False, realtime=opts.get_bool("realtime", True), loop=opts.get_bool("loop", False),
                  start_time=opts.get_float("start_time"))
    opts.check_all_used("network stream")
    return VideoCaptureSource(parsed.uri, parsed.uri, api="ffmpeg", ffmpeg_options=ffmpeg_options, **kw)


def _file(parsed, opts: Options, loc: str, modality: str | None) -> Source:
    path = Path(loc).expanduser()
    suffix = path.suffix.lower()
    if not path.is_file():
        raise EdgemmError(f"Source: {parsed.uri} | File not found; expected an existing video, image or .wav "
                          "file (or a URI such as v4l2://, rtsp://, mic://, test://video).")
    if suffix in AUDIO_SUFFIXES:
        return _wav(parsed, opts, path)
    if modality == "audio":
        raise EdgemmError(f"Audio file: {path} | Not a .wav file; expected a WAV (extract the track with: "
                          f"ffmpeg -i {path.name} -ac 1 -ar 16000 {path.stem}.wav).")
    common = dict(realtime=opts.get_bool("realtime", True), loop=opts.get_bool("loop", False),
                  start_time=opts.get_float("start_time"), name=opts.get_str("name"))
    if suffix in IMAGE_SUFFIXES:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise EdgemmError(f"Image file: {path} | Not a readable image; expected PNG, JPEG or BMP.")
        fps = opts.get_float("fps", 30.0, minimum=0.01)
        opts.check_all_used("image")
        return ArrayVideoSource([img], fps=fps, uri=parsed.uri, **common)
    scaling = _scaling(opts)
    opts.check_all_used("video file")
    _probe_video_file(parsed.uri, path)
    return VideoCaptureSource(parsed.uri, str(path), api="ffmpeg", live=False, **scaling, **common)


def _probe_video_file(uri: str, path: Path) -> None:
    """Open the file once now so a file OpenCV cannot decode fails before the run starts."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        ok = cap.isOpened() and cap.grab()
    finally:
        cap.release()
    if not ok:
        raise EdgemmError(f"Video file: {path} | No frame could be decoded; expected a video OpenCV/FFmpeg can "
                          "read (mp4, mkv, avi, ...).")


def _test_video(parsed, opts: Options) -> Source:
    src = ColourBarsSource(parsed.uri, size=opts.get_size("size", (640, 480)),
                           fps=opts.get_float("fps", 30.0, minimum=0.01),
                           pattern=opts.get_choice("pattern", ("bars", "noise"), "bars"),
                           frames=opts.get_int("frames", None, minimum=1), seed=opts.get_int("seed", 0, minimum=0),
                           live=opts.get_bool("live", True), realtime=opts.get_bool("realtime", True),
                           loop=opts.get_bool("loop", False), start_time=opts.get_float("start_time"),
                           name=opts.get_str("name"))
    opts.check_all_used("test video")
    return src


# ------------------------------------------------------------------------------------------------ audio

def _block(opts: Options, sample_rate: int) -> int:
    return block_size(sample_rate, opts.get_int("block", None, minimum=1),
                      opts.get_float("block_s", None, minimum=1e-4))


def _mic(parsed, opts: Options, loc: str) -> Source:
    rate = opts.get_int("sample_rate", 16000, minimum=1000)
    kw = dict(sample_rate=rate, block=_block(opts, rate), buffer_s=opts.get_float("buffer_s", 2.0, minimum=0.01),
              stall_timeout=opts.get_float("stall_timeout", 2.0, minimum=0.05),
              anchor_s=opts.get_float("anchor_s", 0.25, minimum=0.0),
              silence_s=opts.get_float("silence_s", 3.0, minimum=0.0),
              open_timeout=opts.get_float("open_timeout", 5.0, minimum=0.1),
              channels=opts.get_int("channels", 1, minimum=1), name=opts.get_str("name"))
    latency = opts.get_str("latency")  # seconds, or PortAudio's 'low' / 'high'
    if latency is not None:
        if latency.strip().lower() in ("low", "high"):
            kw["latency"] = opts.get_choice("latency", ("low", "high"))
        else:  # seconds: finite, at most uri.MAXIMA["latency"] (a NaN reached PortAudio)
            kw["latency"] = opts.get_float("latency", minimum=0.0)
    opts.check_all_used("microphone")
    return MicSource(parsed.uri, device=loc or "default", **kw)


def _wav(parsed, opts: Options, path: Path) -> Source:
    kw = dict(sample_rate=opts.get_int("sample_rate", None, minimum=1000), resample=opts.get_bool("resample", True),
              block=opts.get_int("block", None, minimum=1), block_s=opts.get_float("block_s", None, minimum=1e-4),
              realtime=opts.get_bool("realtime", True), loop=opts.get_bool("loop", False),
              start_time=opts.get_float("start_time"), live=opts.get_bool("live", False),
              buffer_s=opts.get_float("buffer_s", 2.0, minimum=0.01), name=opts.get_str("name"))
    opts.check_all_used("WAV file")
    return WavSource(parsed.uri, path, **kw)


def _test_audio(parsed, opts: Options) -> Source:
    rate = opts.get_int("sample_rate", 16000, minimum=1000)
    kind = opts.get_choice("kind", AUDIO_KINDS, "tone")
    gen = audio_pattern(kind, rate, freq=opts.get_float("freq", 440.0, minimum=0),
                        freq_end=opts.get_float("freq_end", 4000.0, minimum=0),
                        period_s=opts.get_float("period_s", 1.0, minimum=1e-3),
                        amplitude=opts.get_float("amplitude", 0.5, minimum=0), seed=opts.get_int("seed", 0, minimum=0))
    duration = opts.get_float("duration_s", None, minimum=1e-3)
    src = GeneratedAudioSource(parsed.uri, gen, rate, _block(opts, rate),
                               total=None if duration is None else int(round(duration * rate)),
                               buffer_s=opts.get_float("buffer_s", 2.0, minimum=0.01),
                               live=opts.get_bool("live", True), realtime=opts.get_bool("realtime", True),
                               loop=opts.get_bool("loop", False), start_time=opts.get_float("start_time"),
                               name=opts.get_str("name"))
    opts.check_all_used("test audio")
    return src
