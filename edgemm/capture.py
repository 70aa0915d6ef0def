"""Capture: one thread per source, reading it into the pipeline through callbacks; the ports' flow limiting.

    source ──Capture thread──► deliver(item, capture) ──► (video) FlowLimiter port ──► the worker
                     │                                  └► (audio) the owner's AudioRing
                     └──► on_event({"event": "source_lost" | "source_recovered" | "source_ended", ...})

A ``Capture`` knows nothing of its owner: it is handed the source, its settings, a stop event and three
callbacks, all called in the capture thread:

- ``deliver(item, capture)``: each Frame or AudioBlock read. Items carry their capture time (``Frame.t``,
  ``AudioBlock.t``, on ``sources.base.now()``'s clock); ``capture.period`` is the measured delivery
  interval and ``capture.live`` says whether the source drops what it is not read fast enough for.
- ``on_event(event)``: a dict with ``event``, ``modality``, ``source`` and ``t`` (``now()`` when it
  happened), plus ``reason`` (lost) or ``down_s`` and ``reconnects`` (recovered).
- ``on_reopened()`` (optional): the source was reopened and starts a new timeline.

A source that fails (SourceError) or goes silent is reopened with exponential backoff; an unexpected
exception is a crash, handled the same way for a live source until it crashes too often, and then kept
in ``fatal`` for the owner to raise.

``FlowLimiter`` is a port's queue with its drop policy: at most N items admitted and not yet done, the
newest replacing the oldest waiting one when live, blocking when reading a file. It times its consumer,
so a producer can skip costly work on an item that will be replaced before it is taken (``will_be_taken``).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgemm import watchdog
from edgemm.errors import EdgemmError
from edgemm.sources.base import EndOfStream, Source, SourceError, now

log = logging.getLogger("edgemm.capture")


@dataclass
class CaptureSettings:
    stale_s: float = 0.5  # a source that delivered nothing this long counts as lost (at least 4 periods)
    # ... but an opening's first item may take longer (a microphone's capture process starting and anchoring
    # its clock, a stream waiting for a keyframe; seconds on a loaded machine): not a loss before this.
    first_item_s: float = 2.0
    stall_reopen_s: float = 5.0  # ... and is closed and reopened after this long
    reconnect_initial_s: float = 0.5  # backoff before the first reopen, doubled each failure
    # At most this long between tries: a source that comes back is found within it (the goal is recovery
    # within 5 s of a device's or server's return, opening included). A try is cheap: a connect or a process.
    reconnect_max_s: float = 2.0
    read_timeout_s: float = 0.2
    max_capture_crashes: int = 3  # a live source crashing this often in a row fails the run (step() raises)
    # A source lost this long fails the run (step() raises SourceLostTooLong: one line, exit 1), so that a
    # supervisor restarts the whole process; None: never (edgemm run --max-source-loss).
    max_source_loss_s: float | None = None
    # A source that cannot be opened at start is tried again for this long, with events, before the run
    # fails; 0: it fails at once (edgemm run --wait-for-sources).
    wait_for_sources_s: float = 0.0


class FlowLimiter:
    """The entry of a port: at most ``max_in_flight`` items admitted and not yet ``done()``.

    drop_oldest (live): when full, the newest item replaces the oldest one still waiting; if every admitted
    item is already being processed the new one is dropped at the entry (MediaPipe's FlowLimiter).
    block (file): put() waits for room, so nothing is lost.

    The port also times its consumer (from get() to done()), so a producer can ask, before doing costly work
    on an item, whether the item will reach the consumer at all (``will_be_taken``).
    """

    def __init__(self, max_in_flight: int, drop_oldest: bool):
        if max_in_flight < 1:
            raise EdgemmError(f"Flow limit: {max_in_flight} | Expected at least 1 frame in flight.")
        self.max_in_flight = max_in_flight
        self.drop_oldest = drop_oldest
        self._q: collections.deque = collections.deque()
        self._in_flight = 0
        self._cond = threading.Condition()
        self._taken_at: float | None = None  # now() when the consumer took the item it is working on
        self.service_s: float | None = None  # EMA of the consumer's time per item (get() to done())
        self.admitted = 0
        self.dropped = 0

    def put(self, item, stop: threading.Event | None = None) -> bool:
        with self._cond:
            if self._in_flight < self.max_in_flight:
                return self._admit(item)
            if self.drop_oldest:
                self.dropped += 1
                if self._q:
                    self._q.popleft()  # replaced by the newest: in-flight count unchanged
                    self._q.append(item)
                    self.admitted += 1
                    self._cond.notify_all()
                    return True
                return False
            while self._in_flight >= self.max_in_flight:
                if stop is not None and stop.is_set():
                    return False
                self._cond.wait(0.1)
            return self._admit(item)

    def _admit(self, item) -> bool:
        self._q.append(item)
        self._in_flight += 1
        self.admitted += 1
        self._cond.notify_all()
        return True

    def will_be_taken(self, next_put_in_s: float | None) -> bool:
        """Whether an item put now will reach the consumer, if the next put comes in ``next_put_in_s``.

        Not when it would be dropped at the entry. Not when, once in, it is the oldest item waiting in a full
        port and the consumer is predicted busy past the next put (which then replaces it): with the default
        two in flight, a frame that arrives while the model runs is replaced by the following one whenever
        the model needs more than the rest of a frame period. A guess from the consumer's recent times;
        without one (start, a file's blocking port) the answer is yes.
        """
        with self._cond:
            if not self.drop_oldest:
                return True
            full = self._in_flight >= self.max_in_flight
            if full and not self._q:
                return False  # dropped at the entry
            oldest_waiting = len(self._q) == (1 if full else 0)
            full_after = full or self._in_flight + 1 >= self.max_in_flight
            if not (oldest_waiting and full_after):
                return True
            if self._taken_at is None or self.service_s is None or next_put_in_s is None:
                return True
            return self._taken_at + self.service_s <= now() + next_put_in_s

    def get(self, timeout: float | None = None):
        with self._cond:
            if not self._q:
                self._cond.wait(timeout)
            if not self._q:
                return None
            self._taken_at = now()
            return self._q.popleft()

    def done(self) -> None:
        with self._cond:
            self._in_flight = max(0, self._in_flight - 1)
            if self._taken_at is not None:
                took = now() - self._taken_at
                self.service_s = took if self.service_s is None else 0.8 * self.service_s + 0.2 * took
                self._taken_at = None
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._q)


class SourceLostTooLong(EdgemmError):
    """A source stayed lost past ``max_source_loss_s``: ``edgemm run`` exits 1 so its supervisor restarts it
    (what a process restart can fix -- a driver, a library's state -- in-process reopening could not)."""


def open_waiting(source: Source, modality: str, settings: CaptureSettings, stop: threading.Event,
                 on_event: Callable[[dict], None]) -> bool:
    """Open a source at start, trying again with backoff for ``settings.wait_for_sources_s`` while it fails
    with a SourceError (not there yet: a camera stream not started, a microphone not plugged in), with a
    ``source_waiting`` event at the first failure and ``source_opened`` when it opens after that.

    Each try runs in a helper thread, so that a stop (SIGTERM) is obeyed within a fraction of a second even
    while a try blocks (an unreachable stream's connect); a try left running then is abandoned. Returns True
    when open, False when stopped; raises the last error, waiting noted in one line, when time ran out."""
    uri = getattr(source, "uri", modality)
    started = now()
    deadline = started + max(0.0, settings.wait_for_sources_s)
    delay = settings.reconnect_initial_s
    waiting = False
    while True:
        outcome: list = []
        attempt = threading.Thread(target=_try_open, args=(source, outcome), name=f"edgemm-open-{modality}",
                                   daemon=True)
        attempt.start()
        while attempt.is_alive():
            if stop.wait(0.05):
                return False
        if outcome and outcome[0] is None:
            if waiting:
                waited = now() - started
                log.warning("%s source %s opened after waiting %.1f s", modality, uri, waited)
                on_event({"event": "source_opened", "modality": modality, "source": uri, "waited_s": round(waited, 3),
                          "t": round(now(), 6)})
            return True
        exc = outcome[0] if outcome else SourceError(f"{uri} | Opening crashed.")
        if not isinstance(exc, SourceError) or now() >= deadline:
            if waiting:
                raise EdgemmError(f"{' '.join(str(exc).split())} (waited {now() - started:.0f} s for it: "
                                  "--wait-for-sources)") from None
            raise exc
        if not waiting:
            waiting = True
            reason = " ".join(str(exc).split())
            log.warning("%s source %s is not available yet; waiting up to %.0f s: %s", modality, uri,
                        settings.wait_for_sources_s, reason)
            on_event({"event": "source_waiting", "modality": modality, "source": uri, "reason": reason,
                      "wait_s": settings.wait_for_sources_s, "t": round(now(), 6)})
        # systemd (Type=notify): we are still starting, on purpose; push TimeoutStartSec past the next try.
        pause = min(delay, max(0.0, deadline - now()))  # the last try at the deadline itself
        watchdog.notify(f"EXTEND_TIMEOUT_USEC={int((pause + 30) * 1e6)}\nSTATUS=waiting for the {modality} source")
        if stop.wait(pause):
            return False
        delay = min(delay * 2, settings.reconnect_max_s)


def _try_open(source: Source, outcome: list) -> None:
    try:
        source.open()
        outcome.append(None)
    except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, which decides
        outcome.append(exc)


class CaptureFailed(EdgemmError):
    """A capture thread kept crashing (a bug in a source, or data the model's preprocessing refuses).

    Kept in ``Capture.fatal``; ``Pipeline.step()`` raises it, so ``edgemm run`` exits 1 with one line and a
    service manager restarts it; the traceback is in the log."""


class Capture(threading.Thread):
    """Reads one source until stopped; reopens it with exponential backoff when it fails or stalls.

    An unexpected exception (not a SourceError) is a crash: a live source is then treated as lost and
    reopened like after a SourceError (the traceback is logged once), unless it crashes
    ``max_capture_crashes`` times in a row without delivering anything in between; a file is not reopened
    (it would replay from the start). Then the failure is kept in ``fatal`` and ``Pipeline.step()`` raises it.
    """

    def __init__(self, source: Source, modality: str, settings: CaptureSettings, stop: threading.Event,
                 deliver: Callable[[Any, Capture], None], on_event: Callable[[dict], None],
                 on_reopened: Callable[[], None] | None = None):
        super().__init__(name=f"edgemm-capture-{modality}", daemon=True)
        self.source = source
        self.modality = modality
        self.settings = settings
        self._halt = stop  # (not _stop: threading.Thread has a method of that name)
        self._deliver = deliver
        self._on_event = on_event
        self._on_reopened = on_reopened
        self.started_at = now()
        self.live = bool(getattr(source, "live", True))
        self.up = True  # the owner opened it before starting us
        self.ended = False
        self.reconnects = 0
        self.reopened = 0  # reopenings that succeeded (progress for the watchdog; reconnects counts attempts)
        self.failures = 0
        self.crashes = 0
        self._crashes_in_a_row = 0
        self.fatal: BaseException | None = None
        self.items = 0
        self.last_item: float | None = None  # now() of the last delivery (or of the last reopening)
        self.period: float | None = None  # EMA of the delivery interval
        self._skip_period = False  # the next interval spans a reopening: not a delivery period
        self._first_pending = True  # this opening has delivered nothing yet
        self.lost_at: float | None = None
        self.last_error = ""
        self._is_open = True
        self._close_lock = threading.Lock()

    @property
    def uri(self) -> str:
        return getattr(self.source, "uri", self.modality)

    def _stale_after(self) -> float:
        bound = max(self.settings.stale_s, 4 * (self.period or 0.0))
        return max(bound, self.settings.first_item_s) if self._first_pending else bound

    def _lost(self, reason: str) -> None:
        if self.up:
            self.up = False
            self.lost_at = now()
            self._event("source_lost", reason=reason)
            log.warning("%s source %s lost: %s", self.modality, self.uri, reason)

    def _recovered(self) -> None:
        if not self.up:
            self.up = True
            down = now() - (self.lost_at or now())
            log.warning("%s source %s recovered after %.1f s", self.modality, self.uri, down)
            self._event("source_recovered", down_s=round(down, 3), reconnects=self.reconnects)

    def _event(self, kind: str, **fields) -> None:
        self._on_event({"event": kind, "modality": self.modality, "source": self.uri, **fields, "t": round(now(), 6)})

    def close_source(self) -> None:
        """Close the source once (the thread at its end, or the owner if the thread hung)."""
        with self._close_lock:  # the thread and its owner may both get here
            if not self._is_open:
                return
            self._is_open = False
            try:
                self.source.close()
            except Exception as exc:  # noqa: BLE001 - a broken device may fail to close; we reopen anyway
                log.debug("closing %s: %s", self.uri, exc)

    def _reopen(self) -> bool:
        """Close and reopen with backoff until it opens or we are stopped. True when open again."""
        s = self.settings
        self.close_source()
        delay = s.reconnect_initial_s
        while not self._halt.is_set():
            if self._halt.wait(delay):
                return False
            self.reconnects += 1
            try:
                self.source.open()
                self._is_open = True
                self.reopened += 1
                if self._on_reopened is not None:
                    # A reopened source is a new timeline (a microphone counts samples from 0 again and
                    # anchors its clock afresh): what was kept of the old one is no longer comparable.
                    self._on_reopened()
                # Silence is measured from now: a source that needs a moment before its first item (a
                # microphone anchoring its clock, a stream waiting for a keyframe) is not lost again at
                # once, and the wait is not a delivery period.
                self.last_item = now()
                self._skip_period = True
                self._first_pending = True
                return True
            except (SourceError, EdgemmError, OSError) as exc:
                self.failures += 1
                self.last_error = str(exc)
                log.info("reopening %s failed (%s); next try in %.1f s", self.uri, exc, min(delay * 2, s.reconnect_max_s))
                delay = min(delay * 2, s.reconnect_max_s)
        return False

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                try:
                    if not self._read_one():
                        return
                except Exception as exc:  # noqa: BLE001 - a bug in a source or in preparing its data
                    if not self._crashed(exc):
                        return
        finally:
            self.close_source()

    def _read_one(self) -> bool:
        """Read and deliver one item (or handle the source's end or failure). False: the thread is done."""
        s = self.settings
        try:
            item = self.source.read(s.read_timeout_s)
        except EndOfStream as exc:
            if not self.live:
                self.ended = True
                self._event("source_ended")
                return False
            self.last_error = str(exc)
            self._lost(f"stream ended ({exc})")
            return self._reopen()
        except SourceError as exc:
            self.last_error = str(exc)
            self._lost(str(exc))
            return self._reopen()
        t = now()
        if item is None:
            quiet = t - (self.last_item or self.started_at)
            if self.up and quiet > self._stale_after():
                self._lost(f"no data for {quiet:.1f} s")
            if quiet > max(s.stall_reopen_s, self._stale_after()):
                return self._reopen()
            return True
        if self.last_item is not None and not self._skip_period:
            dt = t - self.last_item
            self.period = dt if self.period is None else 0.9 * self.period + 0.1 * dt
        self._skip_period = False
        self._first_pending = False
        self.last_item = t
        self.items += 1
        self._recovered()
        self._deliver(item, self)
        self._crashes_in_a_row = 0
        return True

    def _crashed(self, exc: BaseException) -> bool:
        """An unexpected exception in this thread. True: carry on (reopened); False: the thread is done."""
        self.crashes += 1
        self._crashes_in_a_row += 1
        self.last_error = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line
        if self.crashes == 1:
            log.exception("capture thread for %s crashed", self.uri)
        else:
            log.warning("capture thread for %s crashed again (%d times): %s", self.uri, self.crashes, self.last_error)
        limit = self.settings.max_capture_crashes
        if self.live and self._crashes_in_a_row < limit:
            self._lost(f"capture crashed: {self.last_error}")
            return self._reopen()
        self._lost(f"capture failed: {self.last_error}")
        why = (f"crashed {self._crashes_in_a_row} times in a row" if self.live else "crashed reading a file")
        self.fatal = CaptureFailed(f"Capture: {self.uri} | The {self.modality} capture {why} ({self.last_error}); "
                                   "expected a source that delivers frames/blocks the model's preprocessing "
                                   "accepts (traceback in the log).")
        return False
