"""One inference for the frames of several cameras: the stream muxer in front of a shared runner.

    camera 0 worker ──CameraRunner.infer(feed)──┐
    camera 1 worker ──CameraRunner.infer(feed)──┼─► InferenceBatcher ──one infer(batch N)──► the real runner
    camera 2 worker ──CameraRunner.infer(feed)──┘        (batch size, batch timeout)

Each camera keeps its own pipeline (capture thread, port with its drop policy, schedule, decisions); only the
model calls meet here, as in DeepStream's nvstreammux: a batch is pushed when ``batch_size`` requests wait
(fewer when fewer cameras are up, so a lost camera does not hold the others back), or when the oldest request
has waited ``timeout_s`` (a partial batch). The feeds of a batch are concatenated along the batch axis and
the outputs split back, so each camera sees the call it made.

The batch is run by one of the waiting callers (the "leader"), not by a thread of its own: no hand-over
between threads on the way in or out, and no thread to stop. A graph whose inputs have a fixed batch of 1
cannot take a batch: its calls run one after another as they come (no waiting for a batch: it would only
add latency), said once in the log. A graph that takes a batch but does not return one per row (an output
without the batch axis) is found out at the first batch and treated the same way from then on.

Whether a batch pays depends on the backend: on a GPU a batch of 4 costs little more than one frame (a
small model's time is mostly launches and copies); ONNX Runtime on a CPU does about 4 times the work for 4
rows, so a batch only makes every camera wait for the others' frames. With ``adaptive`` (the default when
no batch size is asked for) the batcher compares the fastest batched call per row with the fastest single
call once it has seen a few of each (the fastest: load on a shared machine only ever adds time; in CPU time
of the calling thread where the model computes there, which a starved machine does not inflate either) and,
where a row of a batch costs more than ``PAYS`` of a call of its own, runs one call per frame from then on
(said in the log).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from edgemm.bench import Reservoir
from edgemm.errors import EdgemmError
from edgemm.runners.base import BaseRunner, TensorMeta
from edgemm.sources.base import now

log = logging.getLogger("edgemm.batching")

PAYS = 0.8  # a batch pays when a row of it costs less than this fraction of a call of its own
SEEN = 10  # calls of each kind (single, batched) seen before deciding whether batches pay
POLL_S = 0.002  # a waiting batch looks again this often whether the cameras it waits for can still come


def check_batching(batch_size: int, timeout_s: float) -> None:
    """A batch size and a batch timeout that make sense, else one line naming them."""
    if batch_size < 1:
        raise EdgemmError(f"Batch size: {batch_size} | Expected at least 1 frame per batch.")
    if not 0 <= timeout_s < float("inf"):
        raise EdgemmError(f"Batch timeout: {timeout_s * 1e3} ms | Expected a finite time of 0 ms or more.")


def takes_batch(meta: Mapping[str, TensorMeta]) -> bool:
    """Whether every input has a dynamic first (batch) axis."""
    return bool(meta) and all(len(m.shape) > 0 and not isinstance(m.shape[0], int) for m in meta.values())


@dataclass
class _Request:
    feed: Mapping[str, np.ndarray]
    member: str | None = None  # the camera that asked
    t0: float = field(default_factory=now)
    outputs: dict[str, np.ndarray] | None = None
    error: BaseException | None = None
    done: bool = False

    def signature(self) -> tuple:
        # Feeds that can share a call: same inputs, same shape past the batch axis, same dtypes.
        return tuple(sorted((k, v.shape[1:], v.dtype.str) for k, v in self.feed.items()))


class InferenceBatcher:
    """Gathers ``infer`` calls of several callers (threads) into batched calls of one activated runner."""

    def __init__(self, runner: BaseRunner, batch_size: int, timeout_s: float,
                 expected: Callable[[set, float], int] | None = None, reservoir: int = 20000,
                 adaptive: bool = False):
        check_batching(batch_size, timeout_s)
        self.runner = runner
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        # expected(waiting members, seconds left): how many requests the batch should hold, those waiting included
        # (the cameras that are up and whose next frame is due before the timeout): a batch waits for no one
        # whose frame cannot come in time.
        self.expected = expected
        self.adaptive = adaptive
        self.row_cost: float | None = None  # fastest batched call per row / fastest single call, once known
        self._fastest: dict[int, tuple[float, float]] = {}  # batch size -> (wall s, this thread's CPU s) of the fastest
        self.batched = takes_batch(runner.input_metadata()) and batch_size > 1
        if not self.batched and batch_size > 1:
            log.warning("graph %s has a fixed batch (inputs %s): the cameras' frames run as one call each, as "
                        "they come", runner.name, ", ".join(f"{m.name}{m.shape_str()}" for m in
                                                            runner.input_metadata().values()))
        self._cond = threading.Condition()
        self._pending: collections.deque[_Request] = collections.deque()
        self._running = False
        # statistics: batches by size, and the model's time per batched call
        self.sizes: collections.Counter = collections.Counter()
        self.infer_s = Reservoir(reservoir, seed=7)
        self.infer_s_by_size: dict[int, Reservoir] = {}

    def _want(self, left_s: float) -> int:
        if not self.batched:
            return 1
        if self.expected is None:
            return self.batch_size
        return min(self.batch_size, max(1, self.expected({r.member for r in self._pending}, left_s)))

    def infer(self, feed: Mapping[str, np.ndarray], member: str | None = None) -> dict[str, np.ndarray]:
        req = _Request(feed, member)
        with self._cond:
            self._pending.append(req)
            self._cond.notify_all()
            while True:
                if req.done:
                    break
                if not self._running and self._pending:
                    left = self._pending[0].t0 + self.timeout_s - now()
                    if left <= 0 or len(self._pending) >= self._want(left):
                        batch = self._take()
                        self._running = True
                        self._cond.release()
                        try:
                            self._run(batch)
                        finally:
                            self._cond.acquire()
                            self._running = False
                            self._cond.notify_all()
                        continue
                    self._cond.wait(min(left, POLL_S))  # (who is due soon changes as time passes)
                else:
                    self._cond.wait(0.05)
        if req.error is not None:
            raise req.error
        return req.outputs

    def _take(self) -> list[_Request]:
        """The oldest request and those that can share its call, up to the batch size (the rest stay)."""
        first = self._pending.popleft()
        batch = [first]
        if self.batched:
            sig = first.signature()
            rest = collections.deque()
            while self._pending and len(batch) < self.batch_size:
                r = self._pending.popleft()
                (batch if r.signature() == sig else rest).append(r)
            rest.extend(self._pending)
            self._pending = rest
        return batch

    def _run(self, batch: list[_Request]) -> None:
        if len(batch) > 1 and self._wants_singles():
            for r in batch:  # cameras in step never leave a single call to compare with: make some
                self._run([r])
            return
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            if len(batch) == 1:
                batch[0].outputs = self.runner.infer(batch[0].feed)
            else:
                self._run_batched(batch)
        except BaseException as exc:  # each caller raises it in its own thread
            for r in batch:
                if r.outputs is None:
                    r.error = exc
        took, cpu = time.perf_counter() - t0, time.thread_time() - c0
        k = len(batch)
        self._fastest[k] = min((took, cpu), self._fastest.get(k, (took, cpu)))
        for r in batch:
            r.done = True
        self.sizes[len(batch)] += 1
        self.infer_s.add(took)
        by_size = self.infer_s_by_size.get(len(batch))
        if by_size is None:  # (not setdefault: a Reservoir allocates its whole sample when made)
            by_size = self.infer_s_by_size[len(batch)] = Reservoir(self.infer_s.size, seed=len(batch))
        by_size.add(took)
        if self.adaptive and self.batched and self.row_cost is None:
            self._judge()

    def _wants_singles(self) -> bool:
        if not self.adaptive or self.row_cost is not None:
            return False
        single = self.infer_s_by_size.get(1)
        return (single is None or single.count < SEEN) and \
            sum(r.count for k, r in self.infer_s_by_size.items() if k > 1) >= SEEN

    def _judge(self) -> None:
        """Batches pay or not, from the fastest calls seen (see the module's doc)."""
        single = self.infer_s_by_size.get(1)
        many = [(k, r) for k, r in self.infer_s_by_size.items() if k > 1]
        if single is None or single.count < SEEN or sum(r.count for _, r in many) < SEEN:
            return
        # Where the model computes on this thread (ONNX Runtime on a CPU with one thread: its CPU time is most
        # of the wall time) its CPU time is compared, which other processes on a loaded machine do not
        # inflate; elsewhere (a GPU, a thread pool) the wall time.
        wall1, cpu1 = self._fastest[1]
        on_thread = cpu1 >= 0.5 * wall1
        per_row = [(self._fastest[k][1] if on_thread else self._fastest[k][0]) / k for k, _ in many]
        self.row_cost = min(per_row) / (cpu1 if on_thread else wall1)
        if self.row_cost > PAYS:
            self.batched = False
            log.warning("graph %s: a row of a batch costs %.2f of a call of its own on this backend (%s): batches "
                        "do not pay, each camera's frame runs as a call of its own (--batch-size forces batches)",
                        self.runner.name, self.row_cost, self.runner.describe())

    def _run_batched(self, batch: list[_Request]) -> None:
        n = len(batch)
        feed = {k: np.concatenate([r.feed[k] for r in batch]) for k in batch[0].feed}
        rows = [r.feed[next(iter(r.feed))].shape[0] for r in batch]
        outputs = self.runner.infer(feed)
        if any(v.ndim == 0 or v.shape[0] != sum(rows) for v in outputs.values()):
            log.warning("graph %s took a batch of %d but its outputs (%s) have no batch axis: from now on each "
                        "camera's frame runs as a call of its own", self.runner.name, n,
                        ", ".join(f"{k}{tuple(v.shape)}" for k, v in outputs.items()))
            self.batched = False
            for r in batch:
                r.outputs = self.runner.infer(r.feed)
            return
        start = 0
        for r, k in zip(batch, rows):
            r.outputs = {name: v[start:start + k].copy() for name, v in outputs.items()}
            start += k

    def stats(self) -> dict:
        calls = sum(self.sizes.values())
        return {"batch_size": self.batch_size, "timeout_ms": round(self.timeout_s * 1e3, 3),
                "batched": self.batched, "calls": calls,
                "row_cost": None if self.row_cost is None else round(self.row_cost, 3),
                "mean_size": round(sum(k * v for k, v in self.sizes.items()) / calls, 3) if calls else 0.0,
                "sizes": dict(sorted(self.sizes.items())), "infer_ms": self.infer_s.stats_ms(),
                "infer_ms_by_size": {k: r.stats_ms() for k, r in sorted(self.infer_s_by_size.items())}}


class CameraRunner(BaseRunner):
    """What one camera's FusionModel runs a graph on: the shared runner, through the batcher. Activated and
    deactivated by the owner of the shared runner, so a camera's pipeline opening or closing it is a no-op."""

    def __init__(self, batcher: InferenceBatcher, camera: str):
        super().__init__(f"{batcher.runner.name}@{camera}")
        self.batcher = batcher
        self.camera = camera
        self.backend = batcher.runner.backend

    def activate_impl(self) -> None:
        pass

    def deactivate_impl(self) -> None:
        pass

    def input_metadata_impl(self) -> dict[str, TensorMeta]:
        return self.batcher.runner.input_metadata()

    def output_metadata_impl(self) -> dict[str, TensorMeta]:
        return self.batcher.runner.output_metadata()

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.batcher.infer(feed, self.camera)

    def describe(self) -> str:
        return self.batcher.runner.describe()
