"""The sinks' thread (edgemm/sink_thread.py): order kept, writing off the inference thread, bounded, errors
surfaced at the next step, and a hung sink never keeps a stopping run alive."""

from __future__ import annotations

import threading
import time

import pytest

from edgemm.errors import EdgemmError
from edgemm.sink_base import Sink
from edgemm.sink_thread import SinkThread
from edgemm.sinks import SinkHealth


class Recorder(Sink):
    """Keeps what it is given and on which thread; `gate` (an Event) holds every write until set."""

    name = "recorder"

    def __init__(self, gate: threading.Event | None = None):
        self.calls: list[tuple[str, object]] = []
        self.threads: set[str] = set()
        self.gate = gate

    def _take(self, kind, item):
        if self.gate is not None:
            self.gate.wait()
        self.threads.add(threading.current_thread().name)
        self.calls.append((kind, item))

    def result(self, record, frame=None):
        self._take("result", record["n"])

    def event(self, event):
        self._take("event", event["n"])


class Misconfigured(Sink):
    name = "misconfigured"

    def result(self, record, frame=None):
        raise EdgemmError("Video sink: x.mp4 | No video writer for this container; expected .mp4 or .avi.")


def test_every_sink_gets_results_and_events_in_order_on_its_own_thread():
    a, b = Recorder(), Recorder()
    st = SinkThread([SinkHealth(a), SinkHealth(b)], max_pending=4)
    st.start()
    sent = []
    for n in range(50):
        kind = "event" if n % 7 == 3 else "result"
        st.put(kind, {"n": n})
        sent.append((kind, n))
    assert st.close(timeout=5.0)
    assert a.calls == sent and b.calls == sent
    assert a.threads == {"edgemm-sinks"} and threading.current_thread().name not in a.threads


def test_a_slow_sink_holds_the_worker_only_once_max_pending_results_wait():
    gate = threading.Event()
    sink = Recorder(gate)
    st = SinkThread([SinkHealth(sink)], max_pending=3)
    st.start()
    # One result in the thread's hands (held at the gate) and two queued: three puts return at once.
    for n in range(3):
        st.put("result", {"n": n})
    st.put("event", {"n": 99})  # events are not held back by the bound
    done = threading.Event()

    def fourth():
        st.put("result", {"n": 3})
        done.set()

    threading.Thread(target=fourth, daemon=True).start()
    assert not done.wait(0.5), "a fourth result was queued past the bound"
    gate.set()
    assert done.wait(5.0)
    assert st.close(timeout=5.0)
    assert [n for _, n in sink.calls] == [0, 1, 2, 99, 3]


def test_a_misconfigured_sink_error_is_kept_for_the_worker_and_later_items_are_not_written():
    rec = Recorder()
    st = SinkThread([SinkHealth(Misconfigured()), SinkHealth(rec)])
    st.start()
    st.put("result", {"n": 0})
    assert st.flush(timeout=5.0)
    assert isinstance(st.error, EdgemmError) and "No video writer" in str(st.error)
    st.put("result", {"n": 1})
    assert st.close(timeout=5.0)
    assert rec.calls == []  # the run ends with the error: nothing more is written after it


def test_a_hung_sink_is_left_behind_within_the_timeout_and_what_it_held_is_counted():
    gate = threading.Event()  # never set during the test: the sink hangs in its first write
    st = SinkThread([SinkHealth(Recorder(gate))])
    st.start()
    for n in range(3):
        st.put("result", {"n": n})
    t0 = time.monotonic()
    assert not st.close(timeout=0.5)
    assert time.monotonic() - t0 < 2.0
    assert st.unwritten == 3  # one in the hung write, two queued
    gate.set()


@pytest.mark.parametrize("max_pending", [0, 1])
def test_the_bound_is_at_least_one(max_pending):
    rec = Recorder()
    st = SinkThread([SinkHealth(rec)], max_pending=max_pending)
    st.start()
    for n in range(5):
        st.put("result", {"n": n})
    assert st.close(timeout=5.0) and len(rec.calls) == 5


def test_a_stopping_run_does_not_wait_for_a_hung_sink_to_make_room():
    """SIGTERM while the sinks are stuck in a write and the queue is full: the worker's put gives up within
    STOP_WAIT_S (the result is counted as unwritten) instead of blocking the process's exit."""
    from edgemm.sink_thread import STOP_WAIT_S

    gate = threading.Event()
    st = SinkThread([SinkHealth(Recorder(gate))], max_pending=2)
    st.start()
    stop = threading.Event()
    st.put("result", {"n": 0}, stop=stop)
    st.put("result", {"n": 1}, stop=stop)
    stop.set()
    t0 = time.monotonic()
    st.put("result", {"n": 2}, stop=stop)
    waited = time.monotonic() - t0
    assert STOP_WAIT_S - 0.2 < waited < STOP_WAIT_S + 2.0
    assert not st.close(timeout=0.2)
    assert st.unwritten == 3 and st.dropped_at_stop == 1
    gate.set()
