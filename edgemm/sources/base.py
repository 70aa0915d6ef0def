"""What every source delivers: timestamped frames and audio blocks on one monotonic clock.

In the manner of jetson-utils' videoSource: ``read(timeout)`` returns None when nothing arrived in
time and raises SourceError when the source failed (a camera unplugged, a stream that ended or broke).
Every item carries its capture time in seconds on ``edgemm.sources.base.now()`` (time.monotonic), the
one clock the whole pipeline uses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from edgemm.errors import EdgemmError


def now() -> float:
    """The pipeline clock: monotonic seconds. Every timestamp in edgemm is on this clock."""
    return time.monotonic()


class SourceError(EdgemmError):
    """A source failed while running (lost device, broken stream). The pipeline reopens with backoff."""


class SourceMissing(SourceError):
    """The device or stream is not there (yet): a microphone PortAudio does not list, a /dev/video node that
    does not exist. Fatal at start unless ``edgemm run --wait-for-sources`` waits for it to appear."""


class EndOfStream(SourceError):
    """A finite source (a file) has delivered everything."""


@dataclass
class Frame:
    image: np.ndarray  # BGR uint8 (H, W, 3), OpenCV's convention
    t: float  # capture time on now()'s clock, seconds
    seq: int  # 0, 1, 2, ... per source; a gap means frames were dropped
    source: str = ""
    # (height, width) of the camera's frame when the source scaled it while decoding (to the model's size or,
    # keeping the aspect ratio, into it); None: ``image`` is the frame at the camera's size. Detections are
    # mapped back to these pixels.
    full_hw: tuple[int, int] | None = None

    @property
    def source_hw(self) -> tuple[int, int]:
        """(height, width) of the frame as the camera took it."""
        return self.full_hw or self.image.shape[:2]


@dataclass
class AudioBlock:
    samples: np.ndarray  # float32 mono in [-1, 1]
    t: float  # time of the FIRST sample on now()'s clock, from the sample count (not the arrival time)
    sample_rate: int
    first_sample: int  # index of the first sample since the source opened
    t_arrival: float = 0.0  # now() when the block reached us; sync.py measures clock drift from it
    source: str = ""

    @property
    def t_end(self) -> float:
        return self.t + len(self.samples) / self.sample_rate


@dataclass
class SourceStats:
    delivered: int = 0
    dropped: int = 0  # items the source itself discarded (e.g. a ring buffer overrun)
    overflows: int = 0  # microphone input overflows reported by the driver
    reopened: int = 0
    extra: dict = field(default_factory=dict)


class Source:
    """Base class: open()/close() or a context manager; read(timeout) -> item | None; raises SourceError."""

    modality = "video"  # or "audio"
    live = True  # live sources may drop the oldest data; file sources lose nothing

    def __init__(self, uri: str):
        self.uri = uri
        self.stats = SourceStats()

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()

    def open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def read(self, timeout: float | None = None):
        raise NotImplementedError
