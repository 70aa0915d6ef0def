"""The sinks' own thread: the inference worker hands each result and event over and goes back to the model.

    worker ─► decisions ─► SinkThread queue (bounded) ─► sinks thread ─► JSONL, video file, MQTT, web view ...

Why a thread: writing is not the model's work. Encoding a drawn 720p frame into a video file takes
milliseconds, a JSON line with its serialisation a tenth of one, and a disk or a network stall any time at
all; on the inference thread every one of them delays the next inference (with a 2-3 ms model the JSON
line alone cost 2-3 % of throughput). On their own thread they overlap the next inference, which runs with
the GIL released.

- Order is kept: results, events and the summary go through one FIFO to every sink in turn.
- Bounded: at most ``max_pending`` results are in the sinks' hands, queued or being written (each may hold
  a frame). When the sinks fall that far
  behind, ``put`` blocks the worker until there is room, which is what calling the sinks inline did: nothing
  is dropped here, a slow sink slows the run instead (flow limiting at the entry then drops camera frames).
- A sink's ordinary failure is its SinkHealth's business (logged once, counted, the run goes on). An
  EdgemmError (a sink that cannot work as configured) stops the sinks thread; ``error`` holds it and the
  worker raises it at its next step, as it did when sinks ran inline.
- ``close`` hands the sinks what is queued and waits a bounded time (a hung sink must not keep a stopping
  process alive: every exit ends within 5 s of SIGTERM); what it could not write is counted as lost.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from edgemm.errors import EdgemmError
from edgemm.sinks import SinkHealth

log = logging.getLogger("edgemm.sinks")

STOP_WAIT_S = 1.0  # after a stop, how long a result waits for room before it is dropped (see put)
MAX_PENDING = 8  # results waiting for the sinks: jitter absorbed, while frames held stay few (8 x 2.7 MB at 720p)


class SinkThread:
    def __init__(self, healths: list[SinkHealth], max_pending: int = MAX_PENDING, name: str = "edgemm-sinks"):
        self.healths = healths
        self.max_pending = max(1, max_pending)
        # A C queue and a semaphore rather than a Condition the two threads share: handing an item over then
        # costs the worker no Python-level lock traffic (which, with the GIL, showed up as 2-4 % of the
        # worker's time in notify_all).
        self._q: queue.SimpleQueue = queue.SimpleQueue()  # (method, args), None to end
        self._room = threading.Semaphore(self.max_pending)  # results queued or being written
        self._put = 0  # items handed over (the worker's count) ...
        self._done = 0  # ... and those the sinks have had (the thread's): equal when all is written
        self.error: EdgemmError | None = None
        self.last_result_s = 0.0  # how long the sinks took over the last result (the "sink" latency stage)
        self.last_result_cpu_s = 0.0  # ... this thread's CPU time for it (the work, not waits for the GIL)
        self.unwritten = 0  # items still queued when close gave up waiting
        self.dropped_at_stop = 0  # results not queued because the run was stopping and the sinks were stuck
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, method: str, *args, stop: threading.Event | None = None) -> None:
        """Queue a call for every sink (``result``: waits while max_pending results are in the sinks' hands).

        Once ``stop`` is set (SIGTERM), a result waits at most ``STOP_WAIT_S`` for room and is otherwise
        dropped and counted in ``unwritten``: a sink hung in a write must not keep the process from exiting."""
        if method == "result":
            stop_seen = None
            while not self._room.acquire(timeout=0.1):
                if self.error is not None or not self._thread.is_alive():
                    break  # nothing will make room: the item is not written (error) or the run is over
                if stop is not None and stop.is_set():
                    stop_seen = stop_seen or time.monotonic()
                    if time.monotonic() - stop_seen > STOP_WAIT_S:
                        self.dropped_at_stop += 1
                        return
        self._put += 1
        self._q.put((method, args))

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            method, args = item
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                if self.error is None:
                    for health in self.healths:  # one sink failing must not stop the others or the run
                        health.call(method, *args)
            except EdgemmError as exc:
                self.error = exc
            finally:
                if method == "result":
                    self.last_result_s = time.perf_counter() - t0
                    self.last_result_cpu_s = time.thread_time() - c0
                    self._room.release()
                self._done += 1

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far has been handed to the sinks (True), or timeout (False)."""
        deadline = time.monotonic() + timeout
        target = self._put
        while self._done < target and self._thread.is_alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout: float) -> bool:
        """Write what is queued, then end the thread; True when it did within timeout. Otherwise a sink is
        hung: the thread is left behind (a daemon) and what it had not written is counted in ``unwritten``."""
        self._q.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            self.unwritten = self._put - self._done + self.dropped_at_stop
            log.warning("sinks: still writing after %.1f s at the end; %d record(s) or event(s) left unwritten",
                        timeout, self.unwritten)
            return False
        self.unwritten = self.dropped_at_stop
        return True
