"""The newest inferred frame, annotated and handed on at a capped rate on a thread of its own.

The live sinks (the web view, RTSP) must never slow inference. Their ``result()`` runs on the pipeline's
worker thread, so all it does here is keep a reference to the newest frame and its record (one slot: a
newer frame replaces an older one not yet taken; nothing is queued). A thread of the tap wakes at most
``fps`` times a second, and only when ``wanted()`` says someone is watching does it draw the annotation
(the video file sink's drawing: labels, boxes, track ids; one function for all sinks), scale the result
down to ``max_width`` (if wider) and call ``deliver(image)`` with it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np

from edgemm.sinks import VideoSink

log = logging.getLogger("edgemm.sinks")


def annotate(frame: np.ndarray, record: dict) -> np.ndarray:
    """The result drawn on a copy of the frame, exactly as the video file sink draws it."""
    return VideoSink.annotate(frame, record)


class FrameTap:
    def __init__(self, name: str, fps: float, deliver: Callable[[np.ndarray], None],
                 wanted: Callable[[], bool] = lambda: True, max_width: int | None = None):
        self.name = name
        self.max_width = max_width  # wider frames are scaled down after drawing: encoding costs less
        self.period_s = 1.0 / fps
        self.deliver = deliver
        self.wanted = wanted
        self.offered = 0  # frames the pipeline handed over
        self.delivered = 0  # frames annotated and handed on (the others were replaced or not wanted)
        self.cpu_s = 0.0  # CPU time of the tap's thread spent drawing and delivering (what watching costs)
        self._slot: tuple[np.ndarray, dict] | None = None
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"edgemm-{self.name}", daemon=True)
        self._thread.start()

    def offer(self, frame: np.ndarray, record: dict) -> None:
        """Called on the inference thread: O(1), never waits for the encoder."""
        with self._cond:
            self._slot = (frame, record)
            self.offered += 1
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                frame, record = self._slot
                self._slot = None
            if not self.wanted():
                continue  # nobody watching: the frame is dropped without being drawn or encoded
            t0, c0 = time.monotonic(), time.thread_time()
            try:
                # Drawn at the camera's size (boxes are in its pixels), then scaled for the viewer.
                self.deliver(self._scaled(annotate(frame, record)))
                self.delivered += 1
            except Exception:  # a viewer going away mid-frame must not end the tap
                log.exception("%s: delivering a frame failed", self.name)
            self.cpu_s += time.thread_time() - c0
            # The cap: sleep out the rest of the period (frames offered meanwhile replace each other).
            with self._cond:
                self._cond.wait_for(lambda: self._stop, timeout=max(0.0, t0 + self.period_s - time.monotonic()))

    def _scaled(self, frame: np.ndarray) -> np.ndarray:
        w = frame.shape[1]
        if not self.max_width or w <= self.max_width:
            return frame
        h = max(1, round(frame.shape[0] * self.max_width / w))
        return cv2.resize(frame, (self.max_width, h), interpolation=cv2.INTER_AREA)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
