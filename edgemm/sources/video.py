"""Cameras, network streams and video files through OpenCV (FFmpeg, V4L2 or GStreamer backends).

OpenCV's ``grab()`` blocks until the next frame, so a reader thread grabs continuously and ``read(timeout)``
takes what it left:

- live sources (cameras, RTSP/HTTP streams): a one-frame slot, the latest frame wins. The decoder is always
  drained, so lag never builds up (the RTSP "delay that grows" users of plain ``cap.read()`` loops see);
  frames the consumer had no time for are counted in ``stats.dropped`` and show as gaps in ``Frame.seq``.
  ``Frame.t`` is ``now()`` when ``grab()`` returned; for V4L2 cameras it is the driver's own timestamp of
  the buffer (``CAP_PROP_POS_MSEC``, on CLOCK_MONOTONIC like ``now()``: for UVC cameras the start of the
  frame's transfer), which does not include the time the frame waited in the driver's queue or for
  ``grab()`` to be called. Either way less ``capture_delay`` when one was calibrated.
- files: every frame, in order, through a short queue (decoding runs ahead of the consumer). ``Frame.t``
  is ``start + pts`` (media time on the pipeline clock, so a WAV opened with the same ``start_time`` lines up);
  with ``realtime=True`` a frame is handed out no earlier than its time, otherwise as fast as it is read.

Failures: a stream that ends or breaks makes ``read()`` raise SourceError; so does a stream that goes silent
for ``stall_timeout`` seconds (no frame; the socket may still be open). The pipeline then closes the source
and opens it again with backoff. ``open()`` may be called again after ``close()``; ``seq`` keeps counting.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import threading

import cv2

from edgemm.errors import EdgemmError
from edgemm.preprocess import geometry
from edgemm.sources.base import EndOfStream, Frame, Source, SourceError, now
from edgemm.sources.ffmpeg_pipe import FfmpegPipeCapture, ffmpeg_program
from edgemm.sources.v4l2_modes import choose_mode, list_modes

log = logging.getLogger("edgemm.sources")

_ENV_LOCK = threading.Lock()  # OPENCV_FFMPEG_CAPTURE_OPTIONS is process-wide: one open at a time sets it
_EOF = object()


def opencv_has(feature: str) -> bool:
    """True when this OpenCV build lists ``feature`` (e.g. 'GStreamer', 'FFMPEG', 'v4l/v4l2') as YES."""
    info = cv2.getBuildInformation()
    m = re.search(rf"^\s*{re.escape(feature)}:\s*(\S+)", info, re.MULTILINE)
    return bool(m) and m.group(1).upper().startswith("YES")


def require_gstreamer(uri: str) -> None:
    if not opencv_has("GStreamer"):
        raise EdgemmError(
            f"Video source: {uri} | This OpenCV {cv2.__version__} ({os.path.dirname(cv2.__file__)}) was built "
            "without GStreamer (cv2.getBuildInformation() says 'GStreamer: NO'); expected an OpenCV with "
            "GStreamer, e.g. JetPack's (apt python3-opencv / nvidia-opencv) instead of the PyPI "
            "opencv-python wheel: pip uninstall opencv-python opencv-python-headless.")


def csi_pipeline(sensor_id: int, size=(1280, 720), fps: float = 30.0, flip: int = 0,
                 out_size: tuple[int, int] | None = None) -> str:
    """The GStreamer pipeline a Jetson CSI camera is read through (Argus ISP -> NVMM -> BGR for OpenCV).

    out_size: nvvidconv (the VIC engine) scales to it while the frame is still in NVMM memory, so only the
    small frame crosses to the CPU; the colour conversion to BGR then runs on the small frame too. With the
    model's input size (or, letterboxed, the size within it that keeps the aspect ratio: csi_output_size) a
    1080p frame never reaches the CPU at full size (preprocessing's resize is then a no-op)."""
    w, h = size
    scaled = f"video/x-raw,width={out_size[0]},height={out_size[1]},format=BGRx" if out_size else "video/x-raw,format=BGRx"
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! "
            f"video/x-raw(memory:NVMM),width={w},height={h},framerate={int(round(fps))}/1,format=NV12 ! "
            f"nvvidconv flip-method={flip} ! {scaled} ! videoconvert ! video/x-raw,format=BGR ! "
            "appsink drop=true max-buffers=1 sync=false")


def csi_output_size(size: tuple[int, int], flip: int, out_size: tuple[int, int] | None,
                    resize: str = "stretch") -> tuple[tuple[int, int] | None, tuple[int, int]]:
    """(what nvvidconv scales to as (w, h), or None; the frame's (h, w) before scaling) for a CSI camera.

    nvvidconv stretches to the size it is given; for a letterboxed input it is given the size that keeps the
    sensor's aspect ratio (preprocess.geometry's), and preprocessing adds the grey bands to the small frame.
    Flip methods 1, 3, 5 and 7 turn the frame by 90 degrees."""
    w, h = size
    full_hw = (w, h) if flip % 2 else (h, w)
    if out_size is None:
        return None, full_hw
    if resize == "letterbox":
        g = geometry(full_hw, (out_size[1], out_size[0]), "letterbox")
        return (g.new_w, g.new_h), full_hw
    return tuple(out_size), full_hw


def gst_pipeline(text: str, out_size: tuple[int, int] | None = None) -> str:
    """A user's pipeline; one that does not end in appsink gets BGR conversion and a dropping appsink, and
    with out_size (w, h) videoscale to that size before the conversion (so it converts the small frame)."""
    if "appsink" in text:
        return text
    caps = "video/x-raw,format=BGR" + (f",width={out_size[0]},height={out_size[1]}" if out_size else "")
    scale = "videoscale ! " if out_size else ""
    return text.rstrip(" !") + f" ! {scale}videoconvert ! {caps} ! appsink drop=true max-buffers=1 sync=false"


def v4l2_capture_time(pos_msec: float, t_now: float, capture_delay: float = 0.0) -> tuple[float, bool]:
    """Capture time of a V4L2 frame from OpenCV's CAP_PROP_POS_MSEC, and whether the driver's stamp was used.

    OpenCV's V4L2 backend returns the dequeued buffer's timestamp (``1000 * tv_sec + tv_usec / 1000``;
    0 before the first frame). Drivers stamp buffers on CLOCK_MONOTONIC (V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC,
    the default since Linux 3.10) -- the clock ``now()`` reads -- but some are configured for the wall clock
    (uvcvideo clock=realtime) or give nothing: a stamp is used only when it is sane, i.e. in the past by
    less than a second. Else the time grab() returned stands in.
    """
    ts = pos_msec / 1000.0
    if 0.0 <= t_now - ts < 1.0:
        return ts - capture_delay, True
    return t_now - capture_delay, False


class VideoCaptureSource(Source):
    """One OpenCV VideoCapture read by its own thread. ``target`` is what VideoCapture opens (path, URL,
    device index or GStreamer pipeline); ``api`` is 'ffmpeg', 'v4l2', 'gstreamer' or 'any'."""

    modality = "video"

    def __init__(self, uri: str, target, api: str = "ffmpeg", live: bool = True, realtime: bool = True,
                 loop: bool = False, start_time: float | None = None, stall_timeout: float = 3.0,
                 open_timeout: float = 10.0, size: tuple[int, int] | None = None, fps: float | None = None,
                 fourcc: str | None = None, ffmpeg_options: str | None = None, queue: int = 4,
                 capture_delay: float = 0.0, name: str | None = None, out_size: tuple[int, int] | None = None,
                 resize: str = "stretch", full_hw: tuple[int, int] | None = None):
        super().__init__(uri)
        self.target = target
        self.api = api
        self.live = bool(live)
        self.realtime = bool(realtime)
        self.loop = bool(loop)
        self.start_time = start_time
        self.stall_timeout = float(stall_timeout)
        self.open_timeout = float(open_timeout)
        self.requested_size = size
        self.requested_fps = fps
        self.fourcc = fourcc
        self.ffmpeg_options = ffmpeg_options
        self.queue_size = max(1, int(queue))
        # Live only: seconds between exposure and grab() returning (sensor readout, encoder, network), if
        # known from a calibration; subtracted from Frame.t so A/V skew is measured against exposure time.
        self.capture_delay = float(capture_delay)
        self._recent = collections.deque(maxlen=31)  # recent grab times, for the measured frame rate
        self.name = name or uri
        # Scaling while decoding (FFmpeg URIs): frames come at out_size (stretch) or within it keeping the
        # aspect ratio (letterbox), from an ffmpeg process (sources/ffmpeg_pipe.py) instead of OpenCV.
        # full_hw: the size a pipeline that scales by itself (CSI's nvvidconv) scales from.
        self.out_size = tuple(out_size) if out_size else None
        self.resize = resize
        self.full_hw = tuple(full_hw) if full_hw else None
        self.decoder_cpu_s = 0.0  # CPU seconds of ffmpeg processes that have ended (see decoder_cpu())
        self._cap = None
        self.fps: float | None = None  # what the backend claims (CAP_PROP_FPS); live streams often lie
        self.size: tuple[int, int] | None = None  # (width, height) of the frames delivered
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._slot: Frame | None = None  # live: the latest frame
        self._queue: collections.deque = collections.deque()  # files: frames in order, then _EOF
        self._error: SourceError | None = None
        self._last_frame_at = 0.0
        self._seq = 0
        self._opened_once = False
        self._is_open = False
        self._warned_no_ffmpeg = False

    # -------------------------------------------------------------------------------------------- open

    def _api_id(self):
        return {"ffmpeg": cv2.CAP_FFMPEG, "v4l2": cv2.CAP_V4L2, "gstreamer": cv2.CAP_GSTREAMER,
                "any": cv2.CAP_ANY}[self.api]

    def _scales_in_ffmpeg(self) -> bool:
        if self.api != "ffmpeg" or self.out_size is None:
            return False
        if ffmpeg_program() is None:
            if not self._warned_no_ffmpeg:
                log.warning("%s: no ffmpeg program on PATH; decoding with OpenCV at full size and resizing on the "
                            "CPU instead (apt install ffmpeg to scale while decoding)", self.uri)
                self._warned_no_ffmpeg = True
            return False
        return True

    def _open_ffmpeg_pipe(self):
        # Live: no frame-threaded decoding (ffmpeg's default on several cores), which holds each frame back
        # by a frame per thread; slice threads still split the work. A file's throughput may use it.
        # Its stream probing (up to 5 s of a live stream by default) may take at most half the open timeout,
        # leaving the rest for the first frame.
        options = ["-flags", "low_delay", "-analyzeduration", str(int(self.open_timeout / 2 * 1e6))] if self.live else []
        if self.ffmpeg_options:  # OpenCV's "key;value|key;value" form, e.g. rtsp_transport;tcp
            for pair in self.ffmpeg_options.split("|"):
                key, _, value = pair.partition(";")
                options += [f"-{key}", value]
        # Waits for a frame longer than the stall timeout, so that a silent stream is told as a stall by read().
        cap = FfmpegPipeCapture(str(self.target), self.out_size, self.resize, options, self.open_timeout,
                                2 * max(self.stall_timeout, 0.5))
        if not cap.isOpened():
            raise SourceError(f"Video source: {self.uri} | ffmpeg could not open or decode it within "
                              f"{self.open_timeout:g} s ({cap.last_error() or 'no frame'}); expected a reachable "
                              "camera, stream or readable video file.")
        return cap

    def _negotiate_v4l2_mode(self, cap) -> None:
        """Ask the camera for its smallest mode that still covers what the model takes, with the aspect ratio
        (field of view) of the mode it opened in (sources/v4l2_modes.py); frames then say that mode's size in
        full_hw, so boxes keep its pixels."""
        default = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        if min(default) <= 0:
            return
        need = self.out_size
        if self.resize == "letterbox":
            g = geometry((default[1], default[0]), (self.out_size[1], self.out_size[0]), "letterbox")
            need = (g.new_w, g.new_h)
        device = f"/dev/video{self.target}" if isinstance(self.target, int) else str(self.target)
        mode = choose_mode(list_modes(device), default, need, self.fourcc[:4].ljust(4) if self.fourcc else None)
        if mode is None:
            return
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*mode.fourcc))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, mode.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, mode.height)
        got = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        if got == default:
            return
        self.full_hw = (default[1], default[0])
        log.info("%s: camera mode %s %dx%d for a %dx%d model input (opened in %dx%d)", self.uri, mode.fourcc,
                 got[0], got[1], need[0], need[1], *default)

    def decoder_cpu(self) -> float:
        """CPU seconds spent in ffmpeg decoder processes so far (0 when OpenCV decodes in this process)."""
        cap = self._cap
        return self.decoder_cpu_s + (cap.cpu_s() if isinstance(cap, FfmpegPipeCapture) else 0.0)

    def _release(self, cap) -> None:
        if isinstance(cap, FfmpegPipeCapture):
            cap.release()
            self.decoder_cpu_s += cap.cpu_s()
        else:
            cap.release()
        if self._cap is cap:
            self._cap = None

    def _frame(self, image, t: float, seq: int, cap) -> Frame:
        full_hw = getattr(cap, "full_hw", None) or self.full_hw
        return Frame(image, t, seq, self.name, full_hw if full_hw and tuple(full_hw) != image.shape[:2] else None)

    def _open_capture(self):
        if self._scales_in_ffmpeg():
            cap = self._open_ffmpeg_pipe()
            self.fps = cap.fps
        else:
            cap = self._open_opencv()
        self._cap = cap
        return cap

    def _open_opencv(self):
        params = []
        if self.api in ("ffmpeg", "gstreamer"):
            # Without these OpenCV waits 30 s to open and blocks grab() for 30 s on a dead stream.
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout * 1000),
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(max(self.stall_timeout, 0.5) * 1000)]
        with _ENV_LOCK:
            old = os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS")
            if self.ffmpeg_options is not None:
                os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = self.ffmpeg_options
            try:
                cap = cv2.VideoCapture(self.target, self._api_id(), params)
            finally:
                if self.ffmpeg_options is not None:
                    if old is None:
                        os.environ.pop("OPENCV_FFMPEG_CAPTURE_OPTIONS", None)
                    else:
                        os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = old
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"Video source: {self.uri} | Could not be opened with OpenCV's {self.api} backend "
                              f"(within {self.open_timeout:g} s); expected a reachable camera, stream or "
                              "readable video file.")
        if self.api == "v4l2":
            # Cameras take their mode through set() after opening; FOURCC first, as it limits the modes.
            if self.fourcc:
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.fourcc[:4].ljust(4)))
            if self.requested_size:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.requested_size[0])
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.requested_size[1])
            elif self.out_size:
                self._negotiate_v4l2_mode(cap)
            if self.requested_fps:
                cap.set(cv2.CAP_PROP_FPS, self.requested_fps)
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and fps > 0 and fps < 1000 else None
        return cap

    def open(self) -> None:
        if self._is_open:
            return
        cap = self._open_capture()
        if self._opened_once:
            self.stats.reopened += 1
        self._opened_once = True
        with self._cond:
            self._stop = threading.Event()
            self._slot = None
            self._queue.clear()
            self._error = None
            self._last_frame_at = now()
            self._is_open = True
        start = now() if self.start_time is None else float(self.start_time)
        target = self._run_live if self.live else self._run_file
        self._thread = threading.Thread(target=target, args=(cap, self._stop, start),
                                        name=f"edgemm-video-{self.name}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._is_open = False
            self._stop.set()
            self._cond.notify_all()
        thread, self._thread = self._thread, None
        cap = self._cap
        if isinstance(cap, FfmpegPipeCapture):
            cap.stop()  # its reader may be waiting for a frame of a dead stream: it returns now
        if thread is not None and thread is not threading.current_thread():
            # The thread owns the capture and releases it. If grab() is stuck on a dead network stream it
            # returns within the read timeout; nobody waits for that here.
            thread.join(timeout=1.0)

    # ----------------------------------------------------------------------------------- reader thread

    def _fail(self, message: str, stop: threading.Event) -> None:
        with self._cond:
            if not stop.is_set() and self._error is None:
                self._error = SourceError(message)
            self._cond.notify_all()

    def _run_live(self, cap, stop: threading.Event, _start: float) -> None:
        driver_stamps = self.api == "v4l2"
        try:
            while not stop.is_set():
                ok = cap.grab()
                t_grab = now()
                t = t_grab - self.capture_delay
                if driver_stamps and ok:
                    t, used = v4l2_capture_time(cap.get(cv2.CAP_PROP_POS_MSEC), t_grab, self.capture_delay)
                    if used:
                        self.stats.extra["driver_timestamps"] = self.stats.extra.get("driver_timestamps", 0) + 1
                if stop.is_set():
                    break
                if not ok:
                    self._fail(f"Video source: {self.uri} | The stream ended or broke (grab failed); expected "
                               "frames to keep coming.", stop)
                    break
                ok, image = cap.retrieve()
                if not ok or image is None:
                    self._fail(f"Video source: {self.uri} | A frame could not be decoded; expected a video "
                               "stream OpenCV can decode.", stop)
                    break
                with self._cond:
                    if stop.is_set():
                        break
                    if self._slot is not None:
                        self.stats.dropped += 1  # the consumer did not take the previous one: latest wins
                    self._slot = self._frame(image, t, self._seq, cap)
                    self.size = (image.shape[1], image.shape[0])
                    self._seq += 1
                    self._last_frame_at = t_grab
                    self._recent.append(t)
                    if len(self._recent) > 1 and self._recent[-1] > self._recent[0]:
                        # What the camera really delivers; CAP_PROP_FPS (self.fps) is often a default like 25.
                        span = self._recent[-1] - self._recent[0]
                        self.stats.extra["fps_measured"] = (len(self._recent) - 1) / span
                    self._cond.notify_all()
        except Exception as exc:  # noqa: BLE001 - an OpenCV error in the thread must reach read()
            self._fail(f"Video source: {self.uri} | Capture failed ({exc}).", stop)
        finally:
            self._release(cap)

    def _run_file(self, cap, stop: threading.Event, start: float) -> None:
        fps = self.fps or 30.0
        offset = 0.0  # media time added per loop pass
        last_media_t = -1.0
        try:
            while not stop.is_set():
                ok = cap.grab()
                if not ok:
                    if self.loop and last_media_t >= 0:
                        offset += last_media_t + 1.0 / fps
                        last_media_t = -1.0
                        if not cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
                            self._release(cap)
                            cap = self._open_capture()
                        continue
                    with self._cond:
                        self._queue.append(_EOF)
                        self._cond.notify_all()
                    break
                pos_ms = cap.get(cv2.CAP_PROP_POS_MSEC)
                # The container's pts when it is sane, else the nominal frame rate.
                media_t = pos_ms / 1000.0 if pos_ms >= 0 and pos_ms / 1000.0 > last_media_t else (
                    last_media_t + 1.0 / fps if last_media_t >= 0 else 0.0)
                last_media_t = media_t
                ok, image = cap.retrieve()
                if not ok or image is None:
                    self._fail(f"Video source: {self.uri} | A frame could not be decoded; expected a video file "
                               "OpenCV can decode.", stop)
                    break
                frame = self._frame(image, start + offset + media_t, 0, cap)
                with self._cond:
                    while len(self._queue) >= self.queue_size and not stop.is_set():
                        self._cond.wait(0.1)  # files lose nothing: wait for the consumer
                    if stop.is_set():
                        break
                    frame.seq = self._seq
                    self._seq += 1
                    self.size = (image.shape[1], image.shape[0])
                    self._queue.append(frame)
                    self._cond.notify_all()
        except SourceError as exc:
            self._fail(str(exc), stop)
        except Exception as exc:  # noqa: BLE001
            self._fail(f"Video source: {self.uri} | Reading the file failed ({exc}).", stop)
        finally:
            self._release(cap)

    # --------------------------------------------------------------------------------------------- read

    def read(self, timeout: float | None = None) -> Frame | None:
        deadline = None if timeout is None else now() + max(0.0, timeout)
        with self._cond:
            while True:
                if not self._is_open:
                    raise SourceError(f"Video source: {self.uri} | read() before open() or after close(); "
                                      "expected an open source.")
                t_now = now()
                wait = None
                if self.live:
                    if self._slot is not None:
                        frame, self._slot = self._slot, None
                        self.stats.delivered += 1
                        return frame
                    if self._error is not None:
                        raise self._error
                    silent = t_now - self._last_frame_at
                    if silent > self.stall_timeout:
                        self._error = SourceError(
                            f"Video source: {self.uri} | No frame for {silent:.1f} s (stall timeout "
                            f"{self.stall_timeout:g} s); expected a live stream.")
                        self._stop.set()
                        raise self._error
                    wait = self._last_frame_at + self.stall_timeout - t_now
                else:
                    if self._queue:
                        head = self._queue[0]
                        if head is _EOF:
                            raise EndOfStream(f"Video source: {self.uri} | End of file after {self._seq} frames.")
                        if not self.realtime or head.t <= t_now:
                            self._queue.popleft()
                            self.stats.delivered += 1
                            self._cond.notify_all()
                            return head
                        wait = head.t - t_now
                    elif self._error is not None:
                        raise self._error
                if deadline is not None:
                    remaining = deadline - t_now
                    if remaining <= 0:
                        return None
                    wait = remaining if wait is None else min(wait, remaining)
                self._cond.wait(wait if wait is None else max(wait, 0.0005))
