"""A source that is not there yet: made (and checked) only when it is opened.

``open_source`` checks a source when it makes it: a microphone PortAudio does not list or a /dev/video node
that does not exist fails there (SourceMissing). ``edgemm run --wait-for-sources`` waits for such a source
instead, so ``build()`` wraps its factory in a ``LateSource``; every ``open()`` tries to make it until it
exists, and from then on everything is the real source's.
"""

from __future__ import annotations

from collections.abc import Callable

from edgemm.sources.base import Source, SourceStats


class LateSource(Source):
    def __init__(self, uri: str, modality: str, make: Callable[[], Source]):
        super().__init__(uri)
        self.modality = modality
        self.live = True  # what may be missing at start is a device or a stream, never a file
        self._make = make
        self.inner: Source | None = None

    @property
    def stats(self) -> SourceStats:
        return self.inner.stats if self.inner is not None else self._stats

    @stats.setter
    def stats(self, value: SourceStats) -> None:
        self._stats = value

    def __getattr__(self, name):  # fps, name, sample_rate, ...: the real source's, once it exists
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def open(self) -> None:
        if self.inner is None:
            self.inner = self._make()  # SourceMissing while it is not there: the caller retries
        self.inner.open()

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()

    def read(self, timeout: float | None = None):
        return self.inner.read(timeout)
