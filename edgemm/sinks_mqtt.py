"""Results, events and the summary to an MQTT broker, stored while the broker is away and forwarded in order.

  mqtt://HOST[:PORT]/TOPIC[?results=off&client_id=NAME&reconnect_min=S&reconnect_max=S&buffer=N&buffer_mb=MB
                           &spool=DIR]

Results go to TOPIC/results, events to TOPIC/events, the summary to TOPIC/summary, all QoS 1.

Store and forward: everything the sink is given joins one bounded queue (the store), in the order given; a
forwarder thread hands the head to paho while the broker is connected, at most ``WINDOW`` messages
unacknowledged at a time, and a message is counted as published only once the broker has acknowledged it.
While the broker is away the store fills (bounded by ``buffer`` messages and ``buffer_mb`` megabytes); when
paho has reconnected (its backoff bounded by ``reconnect_max``, a few seconds by default, not paho's 30 s),
the store is sent in order. A full store drops its oldest result (events are kept while there are results
to drop), and every drop is counted: published / buffered / dropped are in the summary. A 15 s outage at
30 results/s once lost 954 results, counted nowhere.

With ``spool=DIR`` the store is also kept on disk (DIR/TOPIC.spool.jsonl, whole lines, and DIR/TOPIC.done, the
messages acknowledged or dropped since), so what was not delivered when the process died (SIGKILL, a crash,
a restart by systemd) is sent first by the next run. Written to the OS at once (a killed process loses
nothing), synced to the disk at close and when the file is compacted (rewritten with only what is still
waiting, once it holds twice the store's bound): a power cut may lose the last moments. One process per
spool file.

Every message carries ``"seq"``: one counter for all three subtopics, in the order the sink was given them
(with ``spool=`` it goes on across restarts; without, each process starts at 0). QoS 1 is at least once, so a
consumer may see a message twice (a re-send whose acknowledgement was lost with the connection); with seq it
drops the second, sees a gap where something was lost, and can tell a message sent late from one that
arrived late — the counter and freshness check of an end-to-end protected message, as on a vehicle bus.

Order across a reconnect: paho itself re-sends the messages that were unacknowledged when the connection
dropped, after the new CONNACK. The forwarder waits for those to be acknowledged before handing over
anything newer, so a newer result never overtakes an older one.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgemm.errors import EdgemmError
from edgemm.lazy import import_optional
from edgemm.outputs import to_json
from edgemm.sink_base import Sink

log = logging.getLogger("edgemm.sinks")

WINDOW = 32  # messages handed to paho and not yet acknowledged, at most
RESEND_WAIT_S = 5.0  # after a reconnect, wait this long at most for paho's re-sent messages to be acknowledged
NO_CONN = 4  # paho's MQTT_ERR_NO_CONN: a QoS 1 message is kept by paho and sent after the reconnect


@dataclass
class Message:
    kind: str  # "results", "events" or "summary": the subtopic
    payload: bytes
    seq: int = 0  # its number: the payload's "seq", and its line in the spool


class Spool:
    """The store on disk (see the module's docstring): one line per message stored, one per message done."""

    def __init__(self, folder: str, topic: str, max_bytes: int):
        folder_path = Path(folder)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", topic)
        self.path = folder_path / f"{name}.spool.jsonl"
        self.done_path = folder_path / f"{name}.done"
        self.compact_at = 2 * max_bytes + (1 << 20)
        try:
            folder_path.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            self._done_fd = os.open(self.done_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise EdgemmError(f"Sink: spool={folder} | Cannot be written ({exc.strerror}); expected a writable "
                              "folder.") from None
        self.size = os.fstat(self._fd).st_size
        self.next_seq = 0

    def load(self) -> list[Message]:
        """What an earlier run stored and never saw delivered, in order (a cut last line is left out)."""
        done = set()
        with open(self.done_path, "rb") as f:
            for line in f:
                if line.endswith(b"\n") and line.strip().isdigit():
                    done.add(int(line))
        waiting = []
        with open(self.path, "rb") as f:
            for line in f:
                try:
                    row = json.loads(line)
                    if "next" in row:  # a compacted file's first line: where the count had got to
                        self.next_seq = max(self.next_seq, int(row["next"]))
                        continue
                    msg = Message(row["k"], row["p"].encode("utf-8"), int(row["s"]))
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue  # cut by a power loss mid-write
                self.next_seq = max(self.next_seq, msg.seq + 1)
                if msg.seq not in done:
                    waiting.append(msg)
        self.compact(waiting)
        return waiting

    @staticmethod
    def _line(msg: Message) -> bytes:
        return (json.dumps({"s": msg.seq, "k": msg.kind, "p": msg.payload.decode("utf-8")}) + "\n").encode("utf-8")

    def put(self, msg: Message) -> None:
        self.next_seq = max(self.next_seq, msg.seq + 1)
        line = self._line(msg)
        os.write(self._fd, line)
        self.size += len(line)

    def done(self, msg: Message) -> None:
        os.write(self._done_fd, b"%d\n" % msg.seq)

    def compact(self, waiting: list[Message]) -> None:
        """Rewrite the spool with only what is still waiting (atomically: a new file renamed over it)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        mark = b'{"next": %d}\n' % self.next_seq if self.next_seq else b""  # the count goes on when all is done
        data = mark + b"".join(self._line(m) for m in waiting)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        os.ftruncate(self._done_fd, 0)
        self.size = len(data)

    def close(self) -> None:
        for fd in (self._fd, self._done_fd):
            with contextlib.suppress(OSError):
                os.fsync(fd)
            os.close(fd)


class Store:
    """The messages not yet handed to the broker, in order, bounded by count and bytes.

    When a bound is exceeded the oldest result goes first (an alert event is worth more than a result),
    then the oldest message of any kind. What is dropped is counted per kind."""

    def __init__(self, max_messages: int, max_bytes: int):
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self._q: collections.deque[Message] = collections.deque()
        self.bytes = 0
        self.dropped: collections.Counter = collections.Counter()

    def __len__(self) -> int:
        return len(self._q)

    def put(self, msg: Message) -> list[Message]:
        """Store msg; returns what was dropped to make room."""
        self._q.append(msg)
        self.bytes += len(msg.payload)
        dropped = []
        while len(self._q) > self.max_messages or self.bytes > self.max_bytes:
            victim = next((m for m in self._q if m.kind == "results"), self._q[0])
            self._q.remove(victim)  # the oldest result is near the head: cheap in practice
            self.bytes -= len(victim.payload)
            self.dropped[victim.kind] += 1
            dropped.append(victim)
        return dropped

    def messages(self) -> list[Message]:
        return list(self._q)

    def head(self) -> Message | None:
        return self._q[0] if self._q else None

    def pop(self) -> Message:
        msg = self._q.popleft()
        self.bytes -= len(msg.payload)
        return msg


class MqttSink(Sink):
    """Results and events to an MQTT broker through paho-mqtt 2.x (imported when the sink opens), stored
    and forwarded across broker outages (see the module's docstring)."""

    name = "mqtt"

    def __init__(self, host: str, port: int = 1883, topic: str = "edgemm", client_id: str = "",
                 results: bool = True, keepalive: int = 30, reconnect_min_s: float = 0.5,
                 reconnect_max_s: float = 3.0, buffer: int = 10000, buffer_mb: float = 16.0,
                 spool: str | None = None):
        self.host, self.port, self.topic = host, port, topic.strip("/") or "edgemm"
        # Unique per process and machine: edgemm is PID 1 in every container (and containers on the host
        # network share its hostname), and a broker disconnects the older of two clients with one id.
        self.client_id = client_id or f"edgemm-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        if not 0 < reconnect_min_s <= reconnect_max_s:
            raise EdgemmError(f"Sink: {self.uri} | reconnect delays {reconnect_min_s}..{reconnect_max_s} s; "
                              "expected 0 < reconnect_min <= reconnect_max.")
        if buffer < 1 or buffer_mb <= 0:
            raise EdgemmError(f"Sink: {self.uri} | buffer={buffer}, buffer_mb={buffer_mb}; expected at least "
                              "1 message and more than 0 MB.")
        self.reconnect_min_s, self.reconnect_max_s = reconnect_min_s, reconnect_max_s
        self.send_results = results
        self.keepalive = keepalive
        self.store = Store(int(buffer), int(buffer_mb * 1e6))
        self.spool_dir = spool
        self._spool: Spool | None = None
        self.restored = 0  # messages an earlier run left in the spool, sent first
        self.next_seq = 0  # the next message's "seq" (an earlier run's spool goes on from its own)
        self._client = None
        self._cond = threading.Condition()
        self._connected = False
        self._closing = False
        self._forwarder: threading.Thread | None = None
        self._inflight: dict[int, Message] = {}  # mid -> message handed to paho, not yet acknowledged
        self._handing: Message | None = None  # taken from the store, being handed to paho (outside our lock)
        self._resend: set[int] = set()  # mids paho re-sends after a reconnect: newer ones wait for them
        self._resend_since = 0.0
        # Acknowledged before publish() returned its mid to the forwarder: remembered briefly.
        self._early: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.connected_event = threading.Event()  # for tests and the soak: set while connected
        self.published: collections.Counter = collections.Counter()  # acknowledged, per kind
        self.buffered_max = 0
        self.unsent = 0  # still in the store (or unacknowledged) when the sink closed
        self.disconnects = 0
        self._lost_at: float | None = None  # when the connection was lost (for the reconnect log line)

    @property
    def uri(self) -> str:
        return f"mqtt://{self.host}:{self.port}/{self.topic}"

    @property
    def label(self) -> str:
        return self.uri

    def buffered(self) -> int:
        with self._cond:
            return len(self.store) + len(self._inflight)

    def lost(self) -> int:
        # With a spool, what was not delivered at shutdown is kept for the next run, not lost.
        return sum(self.store.dropped.values()) + (0 if self.spool_dir else self.unsent)

    def counts(self) -> dict:
        with self._cond:
            return {"published": sum(self.published.values()), "published_results": self.published["results"],
                    "restored": self.restored,
                    "buffered": len(self.store) + len(self._inflight), "buffered_max": self.buffered_max,
                    "dropped": sum(self.store.dropped.values()), "dropped_events": self.store.dropped["events"],
                    "unsent": self.unsent, "disconnects": self.disconnects}

    # -- paho's thread ---------------------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("mqtt %s: connection refused (%s)", self.uri, reason_code)
            return
        with self._cond:
            self._connected = True
            self._resend = set(self._inflight)  # paho re-sends these after this callback returns
            self._resend_since = time.monotonic()
            waiting = len(self.store) + len(self._inflight)
            self._cond.notify_all()
        self.connected_event.set()
        if self._lost_at is not None:
            log.warning("mqtt %s: connected again after %.1f s; sending %d buffered message(s) in order",
                        self.uri, time.monotonic() - self._lost_at, waiting)
            self._lost_at = None

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected_event.clear()
        with self._cond:
            was = self._connected
            self._connected = False
            self._cond.notify_all()
        if was and not self._closing:
            self.disconnects += 1
            self._lost_at = time.monotonic()
            log.warning("mqtt %s: disconnected (%s); results are buffered (at most %d messages, %.1f MB) and paho "
                        "reconnects within %.1f s of the broker's return", self.uri, reason_code,
                        self.store.max_messages, self.store.max_bytes / 1e6, self.reconnect_max_s)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # Runs on paho's thread with paho's message lock held: take only our own lock, briefly.
        with self._cond:
            msg = self._inflight.pop(mid, None)
            if msg is None:
                self._early[mid] = None
                while len(self._early) > 4 * WINDOW:
                    self._early.popitem(last=False)
                return
            self._acked(mid, msg)

    def _acked(self, mid: int, msg: Message) -> None:
        """Under self._cond."""
        self.published[msg.kind] += 1
        if self._spool is not None:
            self._spool.done(msg)
        self._resend.discard(mid)
        self._cond.notify_all()

    # -- the forwarder thread --------------------------------------------------------------------------
    def _may_send(self) -> bool:
        if not (self._connected and len(self.store) and len(self._inflight) < WINDOW):
            return False
        if self._resend and time.monotonic() - self._resend_since < RESEND_WAIT_S:
            return False  # older messages are being re-sent: nothing newer may overtake them
        return True

    def _forward(self) -> None:
        while True:
            with self._cond:
                while not self._may_send():
                    if self._closing and (not self._connected or not len(self.store)):
                        return
                    self._cond.wait(0.5)
                msg = self._handing = self.store.pop()
                client = self._client
            if client is None:
                return
            # Not under our lock: paho calls on_publish holding its own lock, which publish() also takes.
            info = client.publish(f"{self.topic}/{msg.kind}", msg.payload, qos=1)
            with self._cond:
                self._handing = None
                if info.rc not in (0, NO_CONN):  # not kept by paho (it never is with an unbounded queue)
                    self.store.dropped[msg.kind] += 1
                    if self._spool is not None:  # else the next run would send it, late and out of order
                        self._spool.done(msg)
                    log.warning("mqtt %s: paho refused a message (rc %s); dropped", self.uri, info.rc)
                elif info.mid in self._early:
                    del self._early[info.mid]
                    self._acked(info.mid, msg)
                else:
                    self._inflight[info.mid] = msg

    # -- the pipeline's worker thread ------------------------------------------------------------------
    def open(self, context=None) -> None:
        mqtt = import_optional("paho.mqtt.client", "install it with `pip install paho-mqtt` (or edgemm[mqtt]).")
        if self.spool_dir:
            self._spool = Spool(self.spool_dir, self.topic, self.store.max_bytes)
            for msg in self._spool.load():
                for gone in self.store.put(msg):
                    self._spool.done(gone)
            self.restored = len(self.store)
            self.next_seq = self._spool.next_seq
            if self.restored:
                log.warning("mqtt %s: %d message(s) an earlier run could not deliver are sent first (from %s)",
                            self.uri, self.restored, self._spool.path)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id)
        client.max_queued_messages_set(0)  # bounded by our store and WINDOW instead
        client.max_inflight_messages_set(WINDOW)
        client.reconnect_delay_set(min_delay=self.reconnect_min_s, max_delay=self.reconnect_max_s)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.connect_async(self.host, self.port, keepalive=self.keepalive)
        client.loop_start()
        self._client = client
        self._forwarder = threading.Thread(target=self._forward, name=f"mqtt-forward-{self.topic}", daemon=True)
        self._forwarder.start()
        if not self.connected_event.wait(3.0):
            self._lost_at = time.monotonic()
            log.warning("mqtt %s: broker not reachable yet; messages are buffered and sent once it is", self.uri)

    def _put(self, kind: str, payload: dict) -> None:
        if self._client is None:
            return
        with self._cond:  # the seq in the order the store takes them
            seq = self.next_seq
            self.next_seq += 1
            msg = Message(kind, to_json({**payload, "seq": seq}).encode("utf-8"), seq)
            if self._spool is not None:
                self._spool.put(msg)
            for gone in self.store.put(msg):
                if self._spool is not None:
                    self._spool.done(gone)
            if self._spool is not None and self._spool.size > self._spool.compact_at:
                # (the message being handed to paho too: a SIGKILL before its acknowledgement must not lose it)
                handing = [self._handing] if self._handing is not None else []
                waiting = sorted([*self._inflight.values(), *handing, *self.store.messages()], key=lambda m: m.seq)
                self._spool.compact(waiting)
            self.buffered_max = max(self.buffered_max, len(self.store) + len(self._inflight))
            self._cond.notify_all()

    def result(self, record, frame=None) -> None:
        if self.send_results:
            self._put("results", record)

    def event(self, event) -> None:
        self._put("events", event)

    def summary(self, summary) -> None:
        self._put("summary", summary)

    def close(self, timeout_s: float = 3.0) -> None:
        """Send what is buffered while the broker is connected, for timeout_s at most (never waiting on a
        broker that is away); what is left is counted as unsent and said once in the log."""
        client = self._client
        if client is None:
            return
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while (len(self.store) or self._inflight) and self._connected and time.monotonic() < deadline:
                self._cond.wait(max(0.0, min(0.1, deadline - time.monotonic())))
            self.unsent = len(self.store) + len(self._inflight)
        if self._forwarder is not None:
            with self._cond:
                self._connected = False  # the forwarder stops now
                self._cond.notify_all()
            self._forwarder.join(2.0)
        self._client = None
        if self._spool is not None:
            with self._cond:
                self._spool.close()
                self._spool = None
        if self.unsent:
            kept = f"; kept in {self.spool_dir} for the next run" if self.spool_dir else ""
            log.warning("mqtt %s: %d message(s) not delivered at shutdown (the broker was %s)%s", self.uri,
                        self.unsent, "away" if not self.connected_event.is_set() else "too slow", kept)
        client.disconnect()
        client.loop_stop()
