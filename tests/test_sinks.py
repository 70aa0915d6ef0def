"""Sinks: console, JSON lines, annotated video, and MQTT against a real mosquitto broker started here."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import queue
import time

import cv2
import numpy as np
import pytest

from edgemm.errors import EdgemmError
from edgemm.sinks import ConsoleSink, JsonlSink, MqttSink, SinkHealth, VideoSink, make_sink
from edgemm.sinks_mqtt import Message, Store
from tests.rigs import Mosquitto, free_port, require_module, small_disk

RECORD = {"t": 12.5, "outputs": {"logits": {"label": "dog", "index": 1, "score": 0.91, "top": [["dog", 0.91]]}},
          "degraded": ["audio"], "attribution": None, "skew_ms": 3.25, "alerts": ["dog"],
          "latency_ms": {"capture": 5.0, "preprocess": 1.0, "infer": 10.0, "postprocess": 0.1, "sink": 0.2,
                         "total": 16.1}}


def test_make_sink_understands_the_specs_and_refuses_the_rest():
    assert isinstance(make_sink("console"), ConsoleSink)
    assert isinstance(make_sink("jsonl:/tmp/x.jsonl"), JsonlSink)
    assert isinstance(make_sink("video:/tmp/x.mp4"), VideoSink)
    m = make_sink("mqtt://broker.local:1884/cabin/left?results=off")
    assert isinstance(m, MqttSink) and (m.host, m.port, m.topic, m.send_results) == ("broker.local", 1884, "cabin/left",
                                                                                    False)
    assert make_sink("mqtt://broker").port == 1883
    j = make_sink("jsonl:/tmp/x.jsonl?mode=w&max_mb=2.5&keep=3")
    assert (j.mode, j.max_bytes, j.keep) == ("w", 2_500_000, 3) and make_sink("jsonl:/tmp/x.jsonl").mode == "a"
    assert make_sink("mqtt://h/t?reconnect_min=4&reconnect_max=8").reconnect_min_s == 4.0
    m = make_sink("mqtt://h/t?buffer=50&buffer_mb=0.5")
    assert (m.store.max_messages, m.store.max_bytes, m.reconnect_max_s) == (50, 500_000, 3.0)
    for bad in ("kafka://x", "jsonl:", "video:/tmp/x.gif", "mqtt:///topic", "mqtt://h:port/t", "mqtt://h/t?qos=2",
                "jsonl:/tmp/x.jsonl?mode=x", "jsonl:/tmp/x.jsonl?max_mb=big", "jsonl:/tmp/x.jsonl?rotate=1",
                "mqtt://h/t?reconnect_min=0", "jsonl:/tmp/x.jsonl?max_mb=nan", "jsonl:/tmp/x.jsonl?max_mb=inf",
                "mqtt://h/t?reconnect_max=inf", "mqtt://h/t?buffer=0", "mqtt://h/t?buffer=nan",
                "mqtt://h/t?buffer_mb=-1", "mqtt://h/t?buffer=99999999999", "mqtt://h/t?reconnect_max=1e9",
                "mqtt://h/t?spool=", 42):
        with pytest.raises(EdgemmError) as e:
            make_sink(bad)
        assert "\n" not in str(e.value)


def test_console_prints_one_line_per_result_and_event():
    out = io.StringIO()
    sink = ConsoleSink(out)
    sink.result(RECORD)
    sink.event({"event": "source_lost", "modality": "video", "t": 3.0})
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "logits=dog (0.91)" in lines[0] and "latency=16.1ms" in lines[0] and "degraded=audio" in lines[0]
    assert lines[1].startswith("EVENT source_lost") and "modality=video" in lines[1]


def test_jsonl_is_strict_json_line_by_line(tmp_path):
    path = tmp_path / "sub" / "out.jsonl"
    sink = JsonlSink(str(path))
    sink.open({})
    sink.result({**RECORD, "skew_ms": float("nan"), "np": np.float32(0.5), "arr": np.arange(3)})
    # Line-buffered: the line is in the file before close (a crash loses nothing reported).
    assert json.loads(path.read_text().splitlines()[0])["type"] == "result"
    sink.event({"event": "alert_start", "alert": "dog", "t": 1.0})
    sink.summary({"results": 1})
    sink.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["type"] for r in rows] == ["result", "event", "summary"]
    assert rows[0]["skew_ms"] is None and rows[0]["np"] == 0.5 and rows[0]["arr"] == [0, 1, 2]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(EdgemmError, match=f"{blocker} is a file, not a folder"):  # not mkdir's "File exists"
        JsonlSink(str(blocker / "sub" / "out.jsonl"))  # its folder would have to be a file


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_appends_across_restarts_unless_asked_to_start_afresh(tmp_path):
    """A service restarted after a failure (systemd Restart=on-failure) must not wipe what it wrote."""
    path = tmp_path / "results.jsonl"
    for run in range(2):
        sink = make_sink(f"jsonl:{path}")
        sink.open({})
        sink.result({**RECORD, "t": float(run)})
        sink.summary({"results": 1})
        sink.close()
    assert [(r["type"], r.get("t")) for r in _rows(path)] == [("result", 0.0), ("summary", None),
                                                              ("result", 1.0), ("summary", None)]
    sink = make_sink(f"jsonl:{path}?mode=w")
    sink.open({})
    sink.result(RECORD)
    sink.close()
    assert [r["type"] for r in _rows(path)] == ["result"]


def test_jsonl_rotates_at_its_size_limit_and_keeps_k_files(tmp_path):
    path = tmp_path / "results.jsonl"
    line = len(json.dumps({"type": "result", **RECORD}, separators=(",", ":"))) + 1
    sink = make_sink(f"jsonl:{path}?max_mb={(3.5 * line) / 1e6}&keep=2")  # room for 4 lines per file
    sink.open({})
    for i in range(14):
        sink.result({**RECORD, "t": float(i)})
    sink.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["results.jsonl", "results.jsonl.1", "results.jsonl.2"]  # the oldest beyond keep are gone
    ts = [[r["t"] for r in _rows(tmp_path / name)] for name in ("results.jsonl.2", "results.jsonl.1", "results.jsonl")]
    assert ts == [[4.0, 5.0, 6.0, 7.0], [8.0, 9.0, 10.0, 11.0], [12.0, 13.0]]  # in order, no line split
    assert sink.rotations == 3
    # A full file left by an earlier run is rotated before anything is appended to it.
    sink = make_sink(f"jsonl:{path}?max_mb={(1.5 * line) / 1e6}&keep=2")
    sink.open({})
    sink.close()
    assert [r["t"] for r in _rows(tmp_path / "results.jsonl.1")] == [12.0, 13.0] and path.read_text() == ""


def test_video_sink_writes_annotated_frames_atomically(tmp_path):
    path = tmp_path / "annotated.mp4"
    sink = VideoSink(str(path))
    sink.open({"fps": 15.0})
    rng = np.random.default_rng(0)
    frames = [np.full((240, 320, 3), 90, np.uint8) + rng.integers(0, 5, (240, 320, 3), dtype=np.uint8)
              for _ in range(12)]
    for f in frames:
        sink.result(RECORD, f)
    sink.result(RECORD, None)  # a result without video (camera lost): nothing to draw
    assert not path.exists()  # written beside, renamed on close
    sink.close()
    cap = cv2.VideoCapture(str(path))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(15.0)
    got = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        got.append(img)
    cap.release()
    assert len(got) == 12 and got[0].shape == (240, 320, 3)
    # The text panel is drawn top-left; the rest of the picture is the frame as it came.
    diff = np.abs(got[5].astype(int) - frames[5].astype(int)).mean(axis=2)
    assert diff[:60, :120].mean() > 20 and diff[150:, 200:].mean() < 8
    assert not list(tmp_path.glob(".*partial*"))


def test_video_sink_takes_the_sources_rate_at_its_first_frame(tmp_path):
    """Sinks open before the camera or file does, when its frame rate is not known yet: the video sink
    asks for it when the first frame comes (a 25 fps clip written at 30 fps would play 20 % fast)."""
    fps = {"now": None}  # the source's rate: unknown when the sink opens
    sink = VideoSink(str(tmp_path / "clip.mp4"))
    sink.open({"fps": None, "video_fps": lambda: fps["now"]})
    fps["now"] = 25.0  # the source opened
    for _ in range(3):
        sink.result(RECORD, np.full((48, 64, 3), 90, np.uint8))
    sink.close()
    cap = cv2.VideoCapture(str(tmp_path / "clip.mp4"))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(25.0)
    cap.release()


def test_video_sink_without_frames_leaves_no_file(tmp_path):
    sink = VideoSink(str(tmp_path / "none.mp4"))
    sink.open({})
    sink.result(RECORD, None)
    sink.close()
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- MQTT

def _paho():
    return require_module("paho.mqtt.client", "pip install paho-mqtt")


@contextlib.contextmanager
def subscriber(port: int, topic: str, client_id: str | None = None, persistent: bool = False):
    """A paho client subscribed to topic/# at QoS 1, collecting (topic, payload dict). ``persistent``: a
    session the broker keeps while it is away (clean_session=False), so nothing for it is lost."""
    mqtt = _paho()
    got: queue.Queue = queue.Queue()
    ready = queue.Queue()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"test-sub-{port}-{time.monotonic_ns()}",
                    clean_session=not persistent)
    c.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(f"{topic}/#", qos=1)
    c.on_subscribe = lambda cl, u, mid, rcs, p: ready.put(True)
    c.on_message = lambda cl, u, msg: got.put((msg.topic, json.loads(msg.payload)))
    c.connect("127.0.0.1", port)
    c.loop_start()
    ready.get(timeout=10)
    try:
        yield got
    finally:
        c.disconnect()
        c.loop_stop()


def _drain(q: queue.Queue, want: int, timeout: float, until=None) -> list:
    """want messages, or until(message) is true for one (duplicates of QoS 1 count towards want)."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline and not (until and out and until(out[-1])):
        with contextlib.suppress(queue.Empty):
            out.append(q.get(timeout=0.1))
    return out


def test_mqtt_sink_publishes_results_and_events(tmp_path):
    _paho()
    with Mosquitto(tmp_path) as broker:
        with subscriber(broker.port, "cabin") as got:
            sink = make_sink(f"mqtt://127.0.0.1:{broker.port}/cabin")
            sink.open({})
            sink.result(RECORD)
            sink.event({"event": "alert_start", "alert": "dog", "t": 1.0, "score": math.inf})
            sink.summary({"results": 1})
            sink.close()
            msgs = _drain(got, 3, 10)
        topics = sorted(t for t, _ in msgs)
        assert topics == ["cabin/events", "cabin/results", "cabin/summary"]
        by_topic = dict(msgs)
        assert by_topic["cabin/results"]["outputs"]["logits"]["label"] == "dog"
        assert by_topic["cabin/events"]["event"] == "alert_start" and by_topic["cabin/events"]["score"] is None


def test_mqtt_events_survive_a_broker_restart(tmp_path):
    """Events published while the broker is down are sent once paho has reconnected by itself.

    The subscriber holds a persistent session on a broker that keeps sessions across its restart, so the
    event reaches it whichever of the two reconnects first (no race with paho's reconnect backoff)."""
    _paho()
    broker = Mosquitto(tmp_path, persist_dir=tmp_path / "mosquitto-db").start()
    sub_id = f"test-sub-{time.monotonic_ns()}"
    sink = make_sink(f"mqtt://127.0.0.1:{broker.port}/car?reconnect_min=0.2&reconnect_max=1")
    try:
        with subscriber(broker.port, "car", client_id=sub_id, persistent=True):
            pass  # the broker now holds the subscription of this session
        sink.open({})
        assert sink.connected_event.wait(10)
        broker.stop()  # SIGTERM: mosquitto saves the session
        deadline = time.monotonic() + 10
        while sink.connected_event.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not sink.connected_event.is_set()
        sink.event({"event": "source_lost", "modality": "video", "t": 5.0})  # the broker is down now
        sink.result(RECORD)  # stored too, and sent after the event
        broker.start()
        assert sink.connected_event.wait(15), broker.log()
        sink.close()  # waits for the broker's acknowledgement of what was stored
        assert sink.counts()["published"] == 2 and sink.buffered() == 0 and sink.lost() == 0
        with subscriber(broker.port, "car", client_id=sub_id, persistent=True) as got:
            msgs = _drain(got, 2, 10)
        assert [t for t, _ in msgs] == ["car/events", "car/results"] and msgs[0][1]["event"] == "source_lost"
    finally:
        sink.close()
        broker.stop()


def test_two_sinks_on_one_broker_keep_their_connections(tmp_path):
    """Every container runs edgemm as PID 1: client ids made of the pid alone collide, and a broker then
    disconnects one client whenever the other (re)connects. Ids must differ between processes and sinks."""
    _paho()
    with Mosquitto(tmp_path) as broker:
        a = make_sink(f"mqtt://127.0.0.1:{broker.port}/a?reconnect_min=0.1&reconnect_max=0.2")
        b = make_sink(f"mqtt://127.0.0.1:{broker.port}/b?reconnect_min=0.1&reconnect_max=0.2")
        assert a.client_id != b.client_id
        drops = []
        try:
            a.open({})
            b.open({})
            assert a.connected_event.wait(10) and b.connected_event.wait(10)
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:  # a broker kicking one of them shows within a reconnect or two
                drops += [s.topic for s in (a, b) if not s.connected_event.is_set()]
                time.sleep(0.01)
        finally:
            a.close(timeout_s=1)
            b.close(timeout_s=1)
        assert drops == []


def test_mqtt_unreachable_broker_does_not_block_the_run(tmp_path):
    _paho()
    sink = make_sink(f"mqtt://127.0.0.1:{free_port()}/x")
    t0 = time.monotonic()
    sink.open({})  # warns and goes on; paho keeps retrying in its thread
    sink.event({"event": "alert_start", "t": 0.0})
    sink.close(timeout_s=0.5)
    assert time.monotonic() - t0 < 10


def _outage(broker, sink, down_s: float, feed) -> float:
    """Stop the broker (SIGTERM) for down_s while feed(i) is called at ~30/s; returns the seconds from the
    broker's restart until the sink was connected again."""
    broker.stop()
    deadline = time.monotonic() + 10
    while sink.connected_event.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not sink.connected_event.is_set(), "the sink never noticed the broker was gone"
    end = time.monotonic() + down_s
    while time.monotonic() < end:
        feed()
        time.sleep(1 / 30)
    broker.start()
    t0 = time.monotonic()
    assert sink.connected_event.wait(30), broker.log()
    return time.monotonic() - t0


def test_mqtt_stores_results_while_the_broker_is_away_and_sends_them_in_order(tmp_path):
    """A 3 s broker outage within the buffer's bound: every result arrives, in order, and the sink is back
    within its maximum reconnect backoff of the broker's return (paho's default backoff reaches 30 s)."""
    _paho()
    broker = Mosquitto(tmp_path, persist_dir=tmp_path / "db").start()
    sub_id = f"test-sub-{time.monotonic_ns()}"
    sink = make_sink(f"mqtt://127.0.0.1:{broker.port}/soak?reconnect_min=0.2&reconnect_max=1&buffer=1000")
    sent = []

    def feed():
        sink.result({**RECORD, "t": float(len(sent))})
        sent.append(len(sent))

    try:
        # A persistent session: the broker keeps what is published for the subscriber while it reconnects.
        with subscriber(broker.port, "soak", client_id=sub_id, persistent=True) as got:
            sink.open({})
            assert sink.connected_event.wait(10)
            for _ in range(30):
                feed()
                time.sleep(1 / 30)
            back_s = _outage(broker, sink, 3.0, feed)
            for _ in range(30):
                feed()
                time.sleep(1 / 30)
            sink.close()
            msgs = _drain(got, 10**6, 20, until=lambda m: m[1].get("t") == sent[-1])
        ts = [int(p["t"]) for t, p in msgs if t == "soak/results"]
        firsts = list(dict.fromkeys(ts))  # QoS 1 is at least once: a re-sent duplicate is allowed, a gap is not
        assert firsts == sent, f"{len(set(sent) - set(ts))} lost, order {firsts[:5]}..."
        assert back_s <= 1.0 + 1.5, back_s  # reconnect_max plus a loaded machine's slack
        c = sink.counts()
        assert c["published"] == len(sent) and c["dropped"] == 0 and c["buffered"] == 0 and sink.lost() == 0
        assert c["buffered_max"] >= 80 and c["disconnects"] == 1  # ~90 results waited for the broker
    finally:
        sink.close()
        broker.stop()


def test_mqtt_messages_carry_a_sequence_number_through_broker_and_process_restarts(tmp_path):
    """A 30-minute soak saw 4 of 53,766 results arrive out of capture order and 41 twice, and neither it nor
    any consumer could tell a message the sink sent late from one the broker delivered again. Every message
    carries "seq": through two broker outages and a restarted process (spool=), the subscriber's first
    receipts are seq 0, 1, 2, ... with no gap and the results in capture order; a duplicate repeats the seq
    and payload of the message it repeats."""
    _paho()
    broker = Mosquitto(tmp_path, persist_dir=tmp_path / "db").start()
    spec = f"mqtt://127.0.0.1:{broker.port}/seq?reconnect_min=0.2&reconnect_max=1&spool={tmp_path / 'spool'}"
    sub_id = f"test-sub-{time.monotonic_ns()}"
    sink = make_sink(spec)
    sent = []

    def feed():
        sink.result({**RECORD, "t": float(len(sent))})
        sent.append(float(len(sent)))

    try:
        with subscriber(broker.port, "seq", client_id=sub_id, persistent=True) as got:
            sink.open({})
            assert sink.connected_event.wait(10)
            for k in range(2):
                for _ in range(20):
                    feed()
                    time.sleep(1 / 30)
                sink.event({"event": "alert_start", "alert": "dog", "t": sent[-1]})
                _outage(broker, sink, 2.0, feed)
            sink.close()
            sink = make_sink(spec)  # the next process goes on counting
            sink.open({})
            for _ in range(10):
                feed()
            sink.close()
            msgs = _drain(got, 10**6, 20, until=lambda m: m[1].get("t") == sent[-1])
    finally:
        sink.close()
        broker.stop()
    by_seq = {}
    for topic, p in msgs:
        assert by_seq.setdefault(p["seq"], (topic, p)) == (topic, p), "a duplicate differs from its first copy"
    firsts = list(dict.fromkeys(p["seq"] for _, p in msgs))
    assert firsts == list(range(len(sent) + 2)), f"first receipts by seq: {firsts}"
    assert [p["t"] for t, p in by_seq.values() if t == "seq/results"] == sent


def test_mqtt_full_buffer_drops_the_oldest_results_and_counts_them(tmp_path):
    """Beyond the bound the oldest results go (not the alert event), and the summary says how many."""
    _paho()
    broker = Mosquitto(tmp_path, persist_dir=tmp_path / "db").start()
    sub_id = f"test-sub-{time.monotonic_ns()}"
    sink = make_sink(f"mqtt://127.0.0.1:{broker.port}/full?reconnect_min=0.2&reconnect_max=1&buffer=20")
    try:
        with subscriber(broker.port, "full", client_id=sub_id, persistent=True) as got:
            sink.open({})
            assert sink.connected_event.wait(10)
            sink.event({"event": "alert_start", "alert": "dog", "t": -1.0})
            n = [0]

            def feed():
                if n[0] == 40:
                    sink.event({"event": "alert_end", "alert": "dog", "t": 40.0})
                sink.result({**RECORD, "t": float(n[0])})
                n[0] += 1

            _outage(broker, sink, 2.5, feed)
            sink.close()
            total = n[0]
            msgs = _drain(got, 10**6, 20, until=lambda m: m[1].get("t") == total - 1)
        assert total > 60
        results = [int(p["t"]) for t, p in msgs if t == "full/results"]
        events = [p["event"] for t, p in msgs if t == "full/events"]
        assert list(dict.fromkeys(events)) == ["alert_start", "alert_end"]  # kept while there are results to drop
        # 20 messages kept: the alert_end event and the newest 19 results.
        assert list(dict.fromkeys(results)) == list(range(total - 19, total))
        c = sink.counts()
        assert c["dropped"] == total - 19 == sink.lost() and c["dropped_events"] == 0
    finally:
        sink.close()
        broker.stop()


def test_mqtt_spool_keeps_what_a_killed_run_could_not_deliver(tmp_path):
    """spool=DIR: results stored while the broker was away survive the process (here: a sink abandoned
    without close(), as a SIGKILL leaves it) and the next run sends them first, in order."""
    _paho()
    broker = Mosquitto(tmp_path, persist_dir=tmp_path / "db")  # not started yet: the broker is away
    spec = f"mqtt://127.0.0.1:{broker.port}/sp?reconnect_min=0.1&reconnect_max=0.5&spool={tmp_path / 'spool'}"
    first = make_sink(spec)
    first.open({})
    for i in range(30):
        first.result({**RECORD, "t": float(i)})
    first.event({"event": "source_lost", "modality": "video", "t": 29.5})
    first._client.loop_stop()  # killed: no close(), nothing flushed, its paho thread gone
    assert len((tmp_path / "spool" / "sp.spool.jsonl").read_text().splitlines()) == 31
    sub_id = f"test-sub-{time.monotonic_ns()}"
    broker.start()
    second = make_sink(spec)
    try:
        with subscriber(broker.port, "sp", client_id=sub_id, persistent=True) as got:
            second.open({})
            for i in range(30, 35):
                second.result({**RECORD, "t": float(i)})
            second.close()
            msgs = _drain(got, 10**6, 20, until=lambda m: m[1].get("t") == 34.0)
        ts = list(dict.fromkeys(p["t"] for t, p in msgs))
        assert ts == [float(i) for i in range(30)] + [29.5] + [float(i) for i in range(30, 35)]
        assert second.counts()["restored"] == 31 and second.counts()["published"] == 36 and second.lost() == 0
        third = make_sink(spec)  # everything was acknowledged: nothing left to send
        third.open({})
        assert third.restored == 0
        third.close()
    finally:
        second.close()
        broker.stop()


def test_mqtt_spool_stays_bounded_through_a_long_outage(tmp_path):
    """The spool is compacted to what is still waiting: a broker away for ever does not fill the disk, and
    the next run gets exactly the newest results the store kept (a cut last line is left out)."""
    _paho()
    spec = f"mqtt://127.0.0.1:{free_port()}/long?buffer=50&buffer_mb=0.05&spool={tmp_path}"
    sink = make_sink(spec)
    sink.open({})
    for i in range(3000):
        sink.result({**RECORD, "t": float(i)})
    size = (tmp_path / "long.spool.jsonl").stat().st_size
    assert size <= 2 * 50_000 + (1 << 20) and sink.counts()["dropped"] == 3000 - 50
    sink.close(timeout_s=0.2)
    with open(tmp_path / "long.spool.jsonl", "ab") as f:
        f.write(b'{"s": 99999, "k": "resu')  # power lost mid-line
    again = make_sink(spec)
    again.open({})
    try:
        assert [json.loads(m.payload)["t"] for m in again.store.messages()] == [float(i) for i in range(2950, 3000)]
        assert again.restored == 50
    finally:
        again.close(timeout_s=0.2)


def test_store_bounds_count_and_bytes_and_drops_results_first():
    store = Store(max_messages=4, max_bytes=100)
    for i in range(3):
        store.put(Message("results", b"r%d" % i + b"." * 28))  # 30 bytes each
    store.put(Message("events", b"e" * 30))  # 120 bytes > 100: the oldest result goes
    assert [m.payload[:2] for m in store._q] == [b"r1", b"r2", b"ee"] and store.bytes == 90
    store.put(Message("events", b"E" * 30))  # 120 again: r1 goes
    store.put(Message("events", b"F" * 30))  # r2 goes
    store.put(Message("events", b"G" * 30))  # no result left: the oldest event goes
    assert [m.payload[:1] for m in store._q] == [b"E", b"F", b"G"] and dict(store.dropped) == {"results": 3,
                                                                                           "events": 1}
    assert store.pop().payload[:1] == b"E" and store.bytes == 60 and len(store) == 2


# ------------------------------------------------------------------------------------ sinks that fail

def test_jsonl_on_a_full_disk_writes_whole_lines_logs_twice_and_counts(tmp_path, caplog):
    """A full disk: whole lines or nothing, one line in the log when it starts failing and one when it
    recovers (not a traceback per result), and every record either written or counted as lost."""
    disk = tmp_path / "disk"
    with small_disk(disk, "64k"):
        filler = disk / "filler"
        filler.write_bytes(b"x" * 24_000)  # freed later: the disk recovers
        path = disk / "out.jsonl"
        sink = JsonlSink(str(path))
        sink.open({})
        health = SinkHealth(sink)
        caplog.set_level(logging.WARNING, logger="edgemm.sinks")
        big = {**RECORD, "pad": "p" * 700}  # ~1 KB a line: a page boundary falls inside lines
        sent = 0
        while health.failures < 40:
            health.call("result", {**big, "t": float(sent)})
            sent += 1
            assert sent < 500, "the 64 KiB disk never filled"
        text = path.read_bytes()
        assert text.endswith(b"\n")  # never half a record
        rows = [json.loads(line) for line in text.splitlines()]
        assert len(rows) == health.written and health.written + health.failures == sent
        failing = [r for r in caplog.records if "failing" in r.getMessage()]
        assert len(failing) == 1 and "No space left" in failing[0].getMessage() and not failing[0].exc_info
        filler.unlink()
        health.call("event", {"event": "source_lost", "modality": "video", "t": 1.0})
        health.call("summary", {"results": sent})
        sink.close()
        recovered = [r for r in caplog.records if "recovered" in r.getMessage()]
        assert len(recovered) == 1 and "40 failed" in recovered[0].getMessage()
        assert len(caplog.records) == 2
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert [r["type"] for r in rows[-2:]] == ["event", "summary"]
        assert health.counts() == {"written": len(rows), "failures": 40, "lost": 40, "repaired": 0, "rotations": 0}


def test_jsonl_append_after_a_cut_line_sets_it_aside(tmp_path, caplog):
    """Power lost mid-write: the next run must not glue its first record onto the cut one."""
    path = tmp_path / "results.jsonl"
    whole = json.dumps({"type": "result", "t": 0.0}) + "\n"
    path.write_text(whole + '{"type": "summary", "results": 1, "dura')
    caplog.set_level(logging.WARNING, logger="edgemm.sinks")
    sink = make_sink(f"jsonl:{path}")
    sink.open({})
    sink.result({**RECORD, "t": 1.0})
    sink.close()
    assert [(r["type"], r.get("t")) for r in _rows(path)] == [("result", 0.0), ("result", 1.0)]
    assert SinkHealth(sink).counts()["repaired"] == 1 and "set aside" in caplog.text
    assert (tmp_path / "results.jsonl.cut").read_text() == '{"type": "summary", "results": 1, "dura\n'
    sink = make_sink(f"jsonl:{path}")  # a file that ends in a newline is left alone
    sink.open({})
    sink.close()
    assert sink.repaired == 0 and len(_rows(path)) == 2
