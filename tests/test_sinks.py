"""Sinks: console, JSON lines, annotated video, and MQTT against a real mosquitto broker started here."""

from __future__ import annotations

import contextlib
import io
import json
import math
import queue
import shutil
import subprocess
import time

import cv2
import numpy as np
import pytest

from edgemm.errors import EdgemmError
from edgemm.sinks import ConsoleSink, JsonlSink, MqttSink, VideoSink, make_sink
from tests.rigs import _kill, free_port, is_listening

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
    for bad in ("kafka://x", "jsonl:", "video:/tmp/x.gif", "mqtt:///topic", "mqtt://h:port/t", "mqtt://h/t?qos=2"):
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
    with pytest.raises(EdgemmError, match="Cannot be written"):
        JsonlSink(str(blocker / "out.jsonl")).open({})  # its folder would have to be a file


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


def test_video_sink_without_frames_leaves_no_file(tmp_path):
    sink = VideoSink(str(tmp_path / "none.mp4"))
    sink.open({})
    sink.result(RECORD, None)
    sink.close()
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- MQTT

class Mosquitto:
    """A mosquitto broker on a free loopback port, ours by pid."""

    def __init__(self, tmp_path, port: int | None = None):
        if shutil.which("mosquitto") is None:
            pytest.skip("needs mosquitto on PATH (Debian: apt install mosquitto)")
        self.port = port or free_port()
        self.conf = tmp_path / f"mosquitto-{self.port}.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not is_listening(self.port):
            assert self.proc.poll() is None, "mosquitto exited"
            assert time.monotonic() < deadline, "mosquitto did not listen"
            time.sleep(0.02)
        return self

    def stop(self):
        _kill(self.proc, term_first=True)
        self.proc = None


@contextlib.contextmanager
def subscriber(port: int, topic: str):
    """A paho client subscribed to topic/#, collecting (topic, payload dict)."""
    import paho.mqtt.client as mqtt

    got: queue.Queue = queue.Queue()
    ready = queue.Queue()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}-{time.monotonic_ns()}")
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


def _drain(q: queue.Queue, want: int, timeout: float) -> list:
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            out.append(q.get(timeout=0.1))
    return out


def test_mqtt_sink_publishes_results_and_events(tmp_path):
    pytest.importorskip("paho.mqtt.client")
    broker = Mosquitto(tmp_path).start()
    try:
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
    finally:
        broker.stop()


def test_mqtt_events_survive_a_broker_restart(tmp_path):
    """Events (QoS 1) published while the broker is down are sent once paho has reconnected by itself."""
    pytest.importorskip("paho.mqtt.client")
    broker = Mosquitto(tmp_path).start()
    sink = make_sink(f"mqtt://127.0.0.1:{broker.port}/car")
    try:
        sink.open({})
        assert sink._connected.wait(10)
        broker.stop()
        deadline = time.monotonic() + 10
        while sink._connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not sink._connected.is_set()
        sink.event({"event": "source_lost", "modality": "video", "t": 5.0})  # the broker is down now
        sink.result(RECORD)  # results are QoS 0: not kept while disconnected
        broker.start()
        # A fresh subscriber is in before the sink's reconnect backoff (>= 1 s) has passed.
        with subscriber(broker.port, "car") as got:
            msgs = _drain(got, 1, 15)
            assert [t for t, _ in msgs] == ["car/events"]
            assert msgs[0][1]["event"] == "source_lost"
            sink.close()
        assert sink.published["events"] == 1 and not sink._unacked
    finally:
        sink.close()
        broker.stop()


def test_mqtt_unreachable_broker_does_not_block_the_run(tmp_path):
    pytest.importorskip("paho.mqtt.client")
    sink = make_sink(f"mqtt://127.0.0.1:{free_port()}/x")
    t0 = time.monotonic()
    sink.open({})  # warns and goes on; paho keeps retrying in its thread
    sink.event({"event": "alert_start", "t": 0.0})
    sink.close(timeout_s=0.5)
    assert time.monotonic() - t0 < 10
