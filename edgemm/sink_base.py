"""The sink protocol every output implements (edgemm.sinks and the live sinks build on it).

Apart from edgemm.sinks so that code defining a sink of its own (the demo's collector) does not import
OpenCV just to be a sink: the CLI builds every command's parser at start-up.
"""

from __future__ import annotations

import numpy as np


class Sink:
    name = "sink"
    # True for sinks that draw results on the camera's frames (video file, RTSP, web view): they need the
    # frame at the camera's size, so the source must not scale it while decoding (edgemm run asks it not to).
    draws_frames = False

    @property
    def label(self) -> str:
        """The sink as the user named it (logs and the summary)."""
        return self.name

    def lost(self) -> int:
        """Records the sink itself gave up on without raising (e.g. results while a broker is away)."""
        return 0

    def counts(self) -> dict:
        """What else this kind of sink counts, for the summary."""
        return {}

    def open(self, context: dict | None = None) -> None:
        pass

    def result(self, record: dict, frame: np.ndarray | None = None) -> None:
        pass

    def event(self, event: dict) -> None:
        pass

    def summary(self, summary: dict) -> None:
        pass

    def close(self) -> None:
        pass
