"""Decoding and scaling in an ffmpeg process: frames reach Python already at the model's size.

OpenCV's FFmpeg backend cannot scale while decoding: it converts every decoded frame to full-size BGR
(swscale), and the capture thread then resized that 720p/1080p BGR frame down in Python (cv2, 1.4 ms for
720p -> 224x224 on this machine, in the capture thread, competing with the model for the CPU). Here the
``ffmpeg`` program decodes, scales the decoder's YUV planes to the model's size (area averaging, as
preprocessing's resize does), converts that small frame to BGR and writes raw BGR frames to a pipe.
Decoding runs in another process, with its own threads and no GIL.

Weighed against: PyAV (the same libraries in process; an optional wheel of its own, as costly per frame
here), GStreamer (``videoscale``/``videoconvert`` caps; the PyPI OpenCV has no GStreamer, so only for
``gst://`` pipelines and Jetson's OpenCV) and OpenCV (no scaling). The ffmpeg program is on every machine
edgemm's stand-ins run on and in JetPack's apt; where it is missing, the source falls back to OpenCV.

``FfmpegPipeCapture`` offers the part of ``cv2.VideoCapture``'s interface the video source's reader thread
uses (``isOpened``, ``grab``, ``retrieve``, ``get``, ``set``, ``release``), so one reader serves both.
Per frame, a ``showinfo`` filter after the scaler tells the frame's pts and size on stderr (a thread reads
it, so neither pipe can fill up and block ffmpeg); the scaler's configuration line tells the size it scales
from (``full_hw``: boxes are mapped back to the camera's pixels with it).
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import re
import shutil
import subprocess
import threading
import time

import cv2
import numpy as np

log = logging.getLogger("edgemm.sources")

# Area averaging (as preprocess.resize), into 4:4:4: each chroma plane is averaged straight from the
# decoder's to the output size, as OpenCV's path (full-size BGR, then area) effectively does. Scaling to
# 4:2:0 instead halves the chroma twice and the colours differ from the OpenCV path by 3.5/255 on average
# (0.7/255 this way, measured on a 720p H.264 clip); swscale's full_chroma_int gets the same 0.7 but costs
# 0.5 ms a frame more here. The conversion to BGR then runs on the small frame.
SCALE_FLAGS = "area"
YUV444 = "format=pix_fmts=yuv444p|yuvj444p"  # yuvj: a full-range (JPEG) stream stays full range

_SCALE_RE = re.compile(r"Parsed_scale_\d+ @ [^\]]*\] w:(\d+) h:(\d+) fmt:\S+.*-> w:(\d+) h:(\d+)")
_FRAME_RE = re.compile(r"Parsed_showinfo_\d+ @ [^\]]*\] n:\s*\d+ pts:\s*\S+ pts_time:(\S+).* s:(\d+)x(\d+)")
_FPS_RE = re.compile(r"Stream #\d+:\d+.*: Video: .*?([\d.]+) fps")


def ffmpeg_program() -> str | None:
    return shutil.which("ffmpeg")


def _help(program: str, *topic: str) -> str:
    try:
        return subprocess.run([program, "-hide_banner", "-h", *topic], capture_output=True, text=True,
                              timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.lru_cache(maxsize=4)
def ffmpeg_features(program: str) -> tuple[list[str], str]:
    """(output options, the showinfo filter) this ffmpeg understands.

    Every decoded frame out once, as it came (no frame rate conversion): ``-fps_mode passthrough`` since
    ffmpeg 5.1, ``-vsync 0`` before (JetPack's Ubuntu has 4.x). Without it the rawvideo muxer asks for a
    constant rate, and frames duplicated or dropped to get it would no longer pair with their showinfo lines.
    showinfo without its checksums and pixel statistics (two passes over each frame) where it can."""
    passthrough = ["-fps_mode", "passthrough"] if "-fps_mode" in _help(program, "long") else ["-vsync", "0"]
    showinfo = "showinfo=checksum=0" if "checksum" in _help(program, "filter=showinfo") else "showinfo"
    return passthrough, showinfo


def scale_filter(out_size: tuple[int, int], resize: str = "stretch", showinfo: str = "showinfo") -> str:
    """The filter chain: scale to out_size (stretch) or into it keeping the aspect ratio (letterbox: the
    padding is left to preprocessing, which adds its grey bands to the small frame), then showinfo.

    Letterbox uses preprocess.geometry's arithmetic on the input size (iw, ih), so the size delivered is the
    one preprocessing would have scaled to (ffmpeg's round() takes .5 up where Python's rounds to even: a
    one-pixel difference on exact ties)."""
    w, h = out_size
    if resize == "letterbox":
        r = f"min({w}/iw\\,{h}/ih)"
        size = f"w=max(1\\,round(iw*{r})):h=max(1\\,round(ih*{r}))"
    else:
        size = f"w={w}:h={h}"
    return f"scale={size}:flags={SCALE_FLAGS},{YUV444},{showinfo}"


class FfmpegPipeCapture:
    """One ffmpeg process decoding ``url`` and scaling to ``out_size``; reads like a cv2.VideoCapture."""

    def __init__(self, url: str, out_size: tuple[int, int], resize: str = "stretch",
                 input_options: list[str] = (), open_timeout: float = 10.0, read_timeout: float = 3.0,
                 program: str | None = None):
        self.url = url
        self.out_size = tuple(out_size)
        self.read_timeout = float(read_timeout)
        self.full_hw: tuple[int, int] | None = None  # (height, width) the scaler scales from
        self.fps: float | None = None
        self.pts_s = 0.0  # the grabbed frame's presentation time
        self._image: np.ndarray | None = None
        self._records: collections.deque = collections.deque()  # (pts_s, (h, w), full_hw) per frame to read
        self._tail: collections.deque = collections.deque(maxlen=8)  # last lines, for error messages
        self._cond = threading.Condition()
        self._stderr_done = False
        self._cpu_s = 0.0
        program = program or ffmpeg_program()
        passthrough, showinfo = ffmpeg_features(program)
        cmd = [program, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "verbose", *input_options,
               "-i", url, "-map", "0:v:0", "-an", "-vf", scale_filter(self.out_size, resize, showinfo),
               *passthrough, "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:1"]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      bufsize=0)
        self._stderr = threading.Thread(target=self._read_stderr, name="edgemm-ffmpeg-log", daemon=True)
        self._stderr.start()
        # Open = the first frame decoded and scaled (as OpenCV's open reads the stream's first frame).
        deadline = time.monotonic() + float(open_timeout)
        with self._cond:
            while not self._records and not self._stderr_done and time.monotonic() < deadline:
                self._cond.wait(0.05)
            self._opened = bool(self._records)
        if not self._opened:
            self.release()

    # -- stderr: one record per frame, the scaler's input size, the stream's frame rate ------------------
    def _read_stderr(self) -> None:
        full_hw = None
        try:
            for raw in self._proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                m = _FRAME_RE.search(line)
                if m:
                    try:
                        pts = float(m.group(1))
                    except ValueError:  # NOPTS
                        pts = float("nan")
                    with self._cond:
                        self._records.append((pts, (int(m.group(3)), int(m.group(2))), full_hw))
                        self._cond.notify_all()
                    continue
                m = _SCALE_RE.search(line)
                if m:
                    full_hw = (int(m.group(2)), int(m.group(1)))  # changes if the stream's size does
                    continue
                if self.fps is None and (m := _FPS_RE.search(line)):
                    fps = float(m.group(1))
                    self.fps = fps if 0 < fps < 1000 else None
                if line.strip() and "Parsed_showinfo" not in line:
                    self._tail.append(line.strip())
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self._stderr_done = True
                self._cond.notify_all()

    def last_error(self) -> str:
        """ffmpeg's last words (for the source's one-line error)."""
        interesting = [t for t in self._tail if "error" in t.lower() or "failed" in t.lower() or "invalid" in t.lower()]
        return (interesting or list(self._tail) or [""])[-1][:200]

    # -- cv2.VideoCapture's interface -----------------------------------------------------------------------
    def isOpened(self) -> bool:  # noqa: N802 - cv2's name
        return self._opened

    def grab(self) -> bool:
        """The next frame: wait for its record (at most read_timeout), then read its bytes. False at the end
        of the stream, when ffmpeg failed or nothing came within read_timeout."""
        if not self._opened:
            return False
        deadline = time.monotonic() + self.read_timeout
        with self._cond:
            while not self._records:
                if self._stderr_done or time.monotonic() >= deadline:
                    return False
                self._cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            pts, (h, w), full_hw = self._records.popleft()
        buf = bytearray(h * w * 3)
        view, got = memoryview(buf), 0
        while got < len(buf):
            n = self._proc.stdout.readinto(view[got:])
            if not n:
                return False
            got += n
        self._image = np.frombuffer(buf, np.uint8).reshape(h, w, 3)
        self.pts_s = pts
        self.full_hw = full_hw
        return True

    def retrieve(self):
        return (self._image is not None), self._image

    def read(self):
        return self.retrieve() if self.grab() else (False, None)

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_POS_MSEC:
            return self.pts_s * 1000.0 if self.pts_s == self.pts_s else -1.0
        if prop == cv2.CAP_PROP_FPS:
            return self.fps or 0.0
        if prop == cv2.CAP_PROP_FRAME_WIDTH:
            return float(self.out_size[0])
        if prop == cv2.CAP_PROP_FRAME_HEIGHT:
            return float(self.out_size[1])
        return 0.0

    def set(self, prop: int, value) -> bool:
        return False  # no seeking: a file that loops is opened again

    def cpu_s(self) -> float:
        """CPU seconds the ffmpeg process used (user + system), read from /proc while it runs."""
        try:
            with open(f"/proc/{self._proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            self._cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass  # exited (the last reading stands) or no /proc
        return self._cpu_s

    def stop(self) -> None:
        """End ffmpeg now, from any thread: a grab() waiting on it returns False at once."""
        self.cpu_s()
        if self._proc.poll() is None:
            self._proc.kill()
        with self._cond:
            self._cond.notify_all()

    def release(self) -> None:
        self.cpu_s()  # before it is reaped (an exited, unreaped process still has its /proc entry)
        if self._proc.poll() is None:
            self._proc.kill()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a kill that did not take
            log.warning("ffmpeg (pid %d) did not exit after SIGKILL", self._proc.pid)
        if self._stderr is not threading.current_thread():
            self._stderr.join(timeout=1.0)  # it ends at the pipe's EOF, now that ffmpeg has exited
        for pipe in (self._proc.stdout, self._proc.stderr):
            try:
                pipe.close()
            except OSError:
                pass
