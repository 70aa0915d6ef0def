"""The annotated stream as RTSP: ``--sink rtsp://HOST:PORT/PATH`` (GStreamer's RTSP server, H.264).

GStreamer's Python bindings come from the distribution and cannot be imported in edgemm's virtual
environment, so the server runs as a helper process under the system's Python (edgemm/rtsp_server.py;
``EDGEMM_GST_PYTHON`` names another interpreter). Frames go to it as raw BGR through a pipe, written by the
frame tap's thread at most ``fps`` times a second and only while a client watches, never by the inference
thread. The helper starts at the first frame (its size fixes the stream's; later frames of another size are
scaled to it). H.264 comes from
the hardware encoder on Jetson (nvv4l2h264enc), else x264. There is no authentication: bind 127.0.0.1
(the default host) or a trusted network.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import subprocess
import threading
from pathlib import Path

import cv2
import numpy as np

from edgemm.errors import EdgemmError
from edgemm.frame_tap import FrameTap
from edgemm.sinks import Sink

log = logging.getLogger("edgemm.sinks")

HELPER = Path(__file__).with_name("rtsp_server.py")
READY_TIMEOUT_S = 30.0
INSTALL_HINT = ("expected GStreamer's RTSP server for the system Python (Debian/Ubuntu: apt install python3-gi "
                "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
                "gstreamer1.0-plugins-ugly) or EDGEMM_GST_PYTHON naming a Python that has it")


class RtspSink(Sink):
    name = "rtsp"
    draws_frames = True

    def __init__(self, host: str = "127.0.0.1", port: int = 8554, path: str = "/live", fps: float = 15.0,
                 width: int = 0):
        if not 0 < fps <= 60:
            raise EdgemmError(f"Sink: rtsp://{host}:{port}{path} | fps={fps}; expected 0 < fps <= 60.")
        if width < 0:
            raise EdgemmError(f"Sink: rtsp://{host}:{port}{path} | width={width}; expected a width in pixels "
                              "(0: the camera's own).")
        self.host, self.port, self.path, self.fps = host, port, "/" + path.lstrip("/"), fps
        self.python = os.environ.get("EDGEMM_GST_PYTHON", "/usr/bin/python3")
        # The first frame starts the server; after it frames are drawn and sent only while a client watches.
        self.tap = FrameTap("rtsp", fps, self._write, wanted=lambda: self._proc is None or self.watched > 0,
                            max_width=width or None)
        self.watched = 0
        self.failed: str | None = None
        self.ready = threading.Event()  # set once the server listens (at the first frame)
        self._proc: subprocess.Popen | None = None
        self._size: tuple[int, int] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://{self.host}:{self.port}{self.path}"

    @property
    def label(self) -> str:
        return self.url

    def counts(self) -> dict:
        return {"frames_sent": self.tap.delivered}

    def open(self, context=None) -> None:
        try:
            check = subprocess.run([self.python, str(HELPER), "--check"], capture_output=True, text=True,
                                   timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EdgemmError(f"Sink: {self.url} | Cannot run {self.python} ({exc}); {INSTALL_HINT}.") from None
        if check.returncode != 0:
            why = (check.stderr.strip().splitlines() or ["no output"])[-1]
            raise EdgemmError(f"Sink: {self.url} | {why}; {INSTALL_HINT}.")
        # The server starts at the first frame: a port that is taken is told now, in one line, not then.
        try:
            with socket.create_server((self.host, self.port)):
                pass
        except OSError as exc:
            raise EdgemmError(f"Sink: {self.url} | Cannot listen ({exc.strerror}); expected a free port on an "
                              "address of this machine.") from None
        self.tap.start()

    def result(self, record, frame=None) -> None:
        if frame is not None:
            self.tap.offer(frame, record)

    def _start(self, width: int, height: int) -> None:
        """The helper, started at the first frame (on the tap's thread); waits until it listens."""
        cmd = [self.python, str(HELPER), "--host", self.host, "--port", str(self.port), "--path", self.path,
               "--width", str(width), "--height", str(height), "--fps", str(max(1, round(self.fps)))]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=False)
        listening = select.select([self._proc.stdout], [], [], READY_TIMEOUT_S)[0]
        ready = self._proc.stdout.readline().decode(errors="replace").split() if listening else []
        if ready[:1] != ["READY"]:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            err = self._proc.stderr.read().decode(errors="replace").strip()
            self.failed = err.splitlines()[-1] if err else "the RTSP helper did not start listening"
            log.error("rtsp %s: %s; no stream", self.url, self.failed)
            return
        # Drain the helper's stderr (GStreamer warnings) so a full pipe never blocks it; follow its stdout.
        threading.Thread(target=self._proc.stderr.read, daemon=True).start()
        threading.Thread(target=self._follow, args=(self._proc.stdout,), daemon=True).start()
        self._size = (width, height)
        self.ready.set()
        log.warning("RTSP stream at %s", self.url)

    def _follow(self, stdout) -> None:
        for line in stdout:
            words = line.split()
            if words[:1] == [b"WATCHED"]:
                self.watched = int(words[1])

    def _write(self, image: np.ndarray) -> None:
        if self.failed:
            return
        if self._proc is None:
            self._start(image.shape[1], image.shape[0])
            if self.failed:
                return
        if (image.shape[1], image.shape[0]) != self._size:  # a camera reopened at another size
            image = cv2.resize(image, self._size)
        try:
            self._proc.stdin.write(np.ascontiguousarray(image).data)
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            self.failed = f"the RTSP helper went away ({exc})"
            log.error("rtsp %s: %s", self.url, self.failed)

    def close(self) -> None:
        self.tap.close()
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()  # the helper ends at the end of its input
        except OSError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
