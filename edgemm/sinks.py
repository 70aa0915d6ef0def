"""Where results and events go: the console, a JSON-lines file, an annotated video file, an MQTT broker.

A sink is named by a spec string (``make_sink``):

  console                        one short line per result and per event on stdout
  jsonl:PATH                     one JSON object per line: {"type": "result"|"event"|"summary", ...}, appended
                                 (a restarted service keeps what it wrote before); ?mode=w starts the file
                                 afresh; ?max_mb=N&keep=K renames a full file to PATH.1 (PATH.1 to PATH.2 ...)
                                 and keeps K of them
  video:PATH.mp4                 the frames that were inferred, with label, score and latency drawn on them
  mqtt://HOST[:PORT]/TOPIC       results to TOPIC/results (QoS 0), events and the summary to TOPIC/events
                                 and TOPIC/summary (QoS 1, kept and re-sent across reconnects by paho);
                                 ?results=off, client_id=NAME, reconnect_min=S, reconnect_max=S

Every sink has ``open(context)``, ``result(record, frame)``, ``event(event)``, ``summary(summary)`` and
``close()``; the pipeline calls them from its one worker thread, and always calls ``close()`` on shutdown
(SIGINT/SIGTERM included) so files are complete and queued MQTT events are delivered.
"""

from __future__ import annotations

import collections
import logging
import os
import secrets
import socket
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import cv2
import numpy as np

from edgemm.errors import EdgemmError
from edgemm.lazy import import_optional
from edgemm.outputs import to_json

log = logging.getLogger("edgemm.sinks")

SPEC_HELP = "console, jsonl:PATH[?mode=w&max_mb=N&keep=K], video:PATH.mp4 or mqtt://HOST[:PORT]/TOPIC"


class Sink:
    name = "sink"

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


class ConsoleSink(Sink):
    """A line per result: time, top label and score, glass-to-result latency, what is missing."""

    name = "console"

    def __init__(self, stream=None):
        self.stream = stream

    def _write(self, line: str) -> None:
        stream = self.stream or sys.stdout
        stream.write(line + "\n")
        stream.flush()

    def result(self, record: dict, frame=None) -> None:
        parts = [f"t={record['t']:.3f}"]
        for name, out in record["outputs"].items():
            if "label" in out:
                parts.append(f"{name}={out['label']} ({out['score']:.2f})")
            elif "labels" in out:
                parts.append(f"{name}={','.join(out['labels']) or '-'}")
            elif "values" in out:
                parts.append(f"{name}=" + ",".join(f"{v:.3g}" for v in out["values"][:4]))
        lat = record.get("latency_ms", {})
        if "total" in lat:
            parts.append(f"latency={lat['total']:.1f}ms")
        if record.get("skew_ms") is not None:
            parts.append(f"skew={record['skew_ms']:.1f}ms")
        if record.get("degraded"):
            parts.append("degraded=" + ",".join(record["degraded"]))
        if record.get("alerts"):
            parts.append("ALERT=" + ",".join(record["alerts"]))
        self._write(" ".join(parts))

    def event(self, event: dict) -> None:
        rest = " ".join(f"{k}={v}" for k, v in event.items() if k != "event")
        self._write(f"EVENT {event['event']} {rest}")


class JsonlSink(Sink):
    """JSON lines, line-buffered: each record reaches the OS as it is written, so a crash loses nothing
    that was reported; close() flushes and fsyncs.

    Appends by default: a service restarted after a failure keeps the results it wrote before (the restart
    shows as a new "summary"-less stretch after the last line). ``mode="w"`` starts the file afresh. With
    ``max_mb`` a file that reaches that size is renamed PATH.1 (an older PATH.1 to PATH.2, ...; ``keep``
    of them are kept) and a new PATH is started, so a long-running service never fills the disk.
    """

    name = "jsonl"

    def __init__(self, path: str, mode: str = "a", max_mb: float | None = None, keep: int = 5):
        self.path = Path(path)
        if mode not in ("a", "w"):
            raise EdgemmError(f"Sink: jsonl:{path} | mode={mode}; expected a (append) or w (start afresh).")
        if max_mb is not None and max_mb <= 0:
            raise EdgemmError(f"Sink: jsonl:{path} | max_mb={max_mb}; expected a positive size in MB.")
        if keep < 1:
            raise EdgemmError(f"Sink: jsonl:{path} | keep={keep}; expected at least 1 rotated file.")
        self.mode = mode
        self.max_bytes = None if max_mb is None else int(max_mb * 1e6)
        self.keep = int(keep)
        self.rotations = 0
        self._f = None

    def _spec(self) -> str:
        return f"jsonl:{self.path}"

    def open(self, context=None) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.mode == "a" and self.max_bytes and self.path.is_file() and \
                    self.path.stat().st_size >= self.max_bytes:
                self._rotate_files()
            self._f = open(self.path, self.mode, buffering=1, encoding="utf-8")
        except OSError as exc:
            raise EdgemmError(f"Sink: {self._spec()} | Cannot be written ({exc.strerror}); "
                              "expected a writable file path.") from None

    def _rotate_files(self) -> None:
        """PATH.(keep-1) -> PATH.keep, ..., PATH -> PATH.1 (the oldest beyond keep is replaced)."""
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.path.exists():
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.rotations += 1

    def _line(self, kind: str, obj: dict) -> None:
        if self._f is None:
            return
        self._f.write(to_json({"type": kind, **obj}) + "\n")
        if self.max_bytes and self._f.tell() >= self.max_bytes:
            self._close_file()
            self._rotate_files()
            self._f = open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - open until close()

    def result(self, record, frame=None) -> None:
        self._line("result", record)

    def event(self, event) -> None:
        self._line("event", event)

    def summary(self, summary) -> None:
        self._line("summary", summary)

    def _close_file(self) -> None:
        f, self._f = self._f, None
        f.flush()
        try:
            os.fsync(f.fileno())
        except OSError:
            pass
        f.close()

    def close(self) -> None:
        if self._f is not None:
            self._close_file()


class VideoSink(Sink):
    """The inferred frames with the result drawn on them, written with OpenCV's VideoWriter.

    Written to a hidden temporary file beside PATH and renamed on close, so PATH is either a complete
    video or absent. Only frames that were inferred are written: when the model is slower than the
    camera the file plays faster than life (the record's times say when each frame was captured).
    The frame rate is the one given, else the video source's, asked for at the first frame (a camera's
    or a file's rate is known only once it is open: ``context["video_fps"]``), else 30.
    """

    name = "video"
    FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}

    def __init__(self, path: str, fps: float | None = None):
        self.path = Path(path)
        if self.path.suffix.lower() not in self.FOURCC:
            raise EdgemmError(f"Sink: video:{path} | Unknown container {self.path.suffix or '(none)'}; "
                              f"expected a file ending in {', '.join(self.FOURCC)}.")
        self.fps = fps
        self._context: dict = {}
        self._writer = None
        self._size = None
        self.frames = 0
        self._tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")

    def open(self, context=None) -> None:
        self._context = dict(context or {})
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._tmp, "wb"):
                pass
        except OSError as exc:
            raise EdgemmError(f"Sink: video:{self.path} | Cannot be written ({exc.strerror}); "
                              "expected a writable file path.") from None

    def _ensure_writer(self, frame: np.ndarray):
        if self._writer is None:
            if not self.fps:
                source_fps = self._context.get("video_fps")
                self.fps = (source_fps() if callable(source_fps) else None) or self._context.get("fps") or 30.0
            h, w = frame.shape[:2]
            self._size = (w, h)
            fourcc = cv2.VideoWriter_fourcc(*self.FOURCC[self.path.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self._tmp), fourcc, float(self.fps), (w, h))
            if not self._writer.isOpened():
                self._writer = None
                raise EdgemmError(f"Sink: video:{self.path} | OpenCV could not open a {self.path.suffix} writer; "
                                  "expected an OpenCV build with FFMPEG.")
        return self._writer

    @staticmethod
    def annotate(frame: np.ndarray, record: dict) -> np.ndarray:
        img = frame.copy() if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        h = img.shape[0]
        scale = max(0.4, h / 720.0)
        thick = max(1, int(round(2 * scale)))
        lines = []
        for name, out in record.get("outputs", {}).items():
            if "label" in out:
                lines.append((f"{out['label']}  {out['score']:.2f}", (255, 255, 255)))
            elif "values" in out:
                lines.append((f"{name}: " + " ".join(f"{v:.3g}" for v in out["values"][:4]), (255, 255, 255)))
        lat = record.get("latency_ms", {})
        if "total" in lat:
            lines.append((f"latency {lat['total']:.1f} ms  infer {lat.get('infer', 0.0):.1f} ms", (200, 255, 200)))
        if record.get("degraded"):
            lines.append(("missing: " + ", ".join(record["degraded"]), (0, 200, 255)))
        if record.get("alerts"):
            lines.append(("ALERT: " + ", ".join(record["alerts"]), (80, 80, 255)))
        font, size = cv2.FONT_HERSHEY_SIMPLEX, 0.7 * scale
        pad = int(8 * scale)
        step = int(30 * scale)
        width = max((cv2.getTextSize(text, font, size, thick)[0][0] for text, _ in lines), default=0)
        x0, y0 = pad, pad
        # A dark panel behind the text keeps it readable on any picture (blended, so the scene shows through).
        x1, y1 = min(img.shape[1], x0 + width + 2 * pad), min(h, y0 + step * len(lines) + pad)
        if lines:
            roi = img[y0:y1, x0:x1]
            roi[:] = (roi.astype(np.uint16) * 3 // 10).astype(np.uint8)
        y = y0 + step
        for text, color in lines:
            cv2.putText(img, text, (x0 + pad, y - pad // 2), font, size, color, thick, cv2.LINE_AA)
            y += step
        return img

    def result(self, record, frame=None) -> None:
        if frame is None:
            return
        writer = self._ensure_writer(frame)
        img = self.annotate(frame, record)
        if (img.shape[1], img.shape[0]) != self._size:  # a reopened camera may come back at another size
            img = cv2.resize(img, self._size)
        writer.write(img)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._tmp.exists():
            if self.frames:
                os.replace(self._tmp, self.path)
            else:
                self._tmp.unlink()
                log.warning("video sink %s: no frame was inferred; no file written", self.path)


class MqttSink(Sink):
    """Results and events to an MQTT broker through paho-mqtt 2.x (imported when the sink opens).

    paho's network thread (loop_start) reconnects by itself with exponential backoff; QoS 1 messages
    published while the broker is away are kept (up to ``max_queued``) and sent after the reconnect.
    Results are QoS 0: a stale result is worth nothing, an alert event must arrive.
    """

    name = "mqtt"

    def __init__(self, host: str, port: int = 1883, topic: str = "edgemm", client_id: str = "",
                 results: bool = True, max_queued: int = 1000, keepalive: int = 30,
                 reconnect_min_s: float = 1.0, reconnect_max_s: float = 30.0):
        self.host, self.port, self.topic = host, port, topic.strip("/") or "edgemm"
        # Unique per process and machine: edgemm is PID 1 in every container (and containers on the host
        # network share its hostname), and a broker disconnects the older of two clients with one id.
        self.client_id = client_id or f"edgemm-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        if not 0 < reconnect_min_s <= reconnect_max_s:
            raise EdgemmError(f"Sink: mqtt://{host}:{port}/{topic} | reconnect delays {reconnect_min_s}..{reconnect_max_s} s; "
                              "expected 0 < reconnect_min <= reconnect_max.")
        self.reconnect_min_s, self.reconnect_max_s = reconnect_min_s, reconnect_max_s
        self.send_results = results
        self.max_queued = max_queued
        self.keepalive = keepalive
        self._client = None
        self._connected = threading.Event()
        # mids of QoS 1 messages not yet acknowledged (on_publish removes them). paho's own info objects
        # cannot tell: a message queued while disconnected keeps rc NO_CONN even after its later delivery.
        self._unacked: set[int] = set()
        self._early: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._acked = threading.Condition()
        self.published = {"results": 0, "events": 0, "dropped": 0}

    @property
    def uri(self) -> str:
        return f"mqtt://{self.host}:{self.port}/{self.topic}"

    def open(self, context=None) -> None:
        mqtt = import_optional("paho.mqtt.client", "install it with `pip install paho-mqtt` (or edgemm[mqtt]).")
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id)
        client.max_queued_messages_set(self.max_queued)
        client.reconnect_delay_set(min_delay=self.reconnect_min_s, max_delay=self.reconnect_max_s)

        def on_connect(c, userdata, flags, reason_code, properties):
            if not reason_code.is_failure:
                self._connected.set()
            else:
                log.warning("mqtt %s: connection refused (%s)", self.uri, reason_code)

        def on_disconnect(c, userdata, flags, reason_code, properties):
            self._connected.clear()
            if reason_code.is_failure:
                log.warning("mqtt %s: disconnected (%s); paho reconnects", self.uri, reason_code)

        def on_publish(c, userdata, mid, reason_code, properties):
            # Runs on paho's thread with paho's message lock held: only take our own lock briefly here.
            with self._acked:
                if mid in self._unacked:
                    self._unacked.discard(mid)
                    self._acked.notify_all()
                else:  # acknowledged before publish() returned to us (or a QoS 0 message): remember briefly
                    self._early[mid] = None
                    while len(self._early) > 256:
                        self._early.popitem(last=False)

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        client.connect_async(self.host, self.port, keepalive=self.keepalive)
        client.loop_start()
        self._client = client
        if not self._connected.wait(3.0):
            log.warning("mqtt %s: broker not reachable yet; events are queued and sent once it is", self.uri)

    def _publish(self, sub: str, payload: dict, qos: int) -> None:
        if self._client is None:
            return
        # Not under our lock: paho calls on_publish holding its own lock, which publish() also takes.
        info = self._client.publish(f"{self.topic}/{sub}", to_json(payload), qos=qos)
        # MQTT_ERR_NO_CONN (4) for QoS 1 means queued: paho sends it after the reconnect.
        if info.rc not in (0, 4) or (qos == 0 and info.rc != 0):
            self.published["dropped"] += 1
        elif qos:
            with self._acked:
                if info.mid in self._early:
                    del self._early[info.mid]
                else:
                    self._unacked.add(info.mid)

    def result(self, record, frame=None) -> None:
        if self.send_results and self._connected.is_set():
            self._publish("results", record, 0)
            self.published["results"] += 1

    def event(self, event) -> None:
        self._publish("events", event, 1)
        self.published["events"] += 1

    def summary(self, summary) -> None:
        self._publish("summary", summary, 1)

    def close(self, timeout_s: float = 3.0) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        deadline = time.monotonic() + timeout_s
        with self._acked:
            while self._unacked and time.monotonic() < deadline:
                self._acked.wait(max(0.0, deadline - time.monotonic()))
            unsent = len(self._unacked)
        if unsent:
            log.warning("mqtt %s: %d event(s) not acknowledged by the broker at shutdown", self.uri, unsent)
        client.disconnect()
        client.loop_stop()


def _query(spec: str, text: str, allowed: dict[str, str]) -> dict[str, str]:
    q = dict(urllib.parse.parse_qsl(text, keep_blank_values=True))
    unknown = set(q) - set(allowed)
    if unknown:
        raise EdgemmError(f"Sink: {spec} | Unknown option {', '.join(sorted(unknown))}; expected "
                          f"{', '.join(f'{k}={v}' for k, v in allowed.items())}.")
    return q


def _number(spec: str, q: dict, key: str, kind=float):
    if key not in q:
        return None
    try:
        return kind(q[key])
    except ValueError:
        raise EdgemmError(f"Sink: {spec} | Option {key}={q[key]!r} is not a number.") from None


def make_sink(spec: str) -> Sink:
    """A sink from its spec string; raises EdgemmError naming the spec when it is not understood."""
    if not isinstance(spec, str):
        raise EdgemmError(f"Sink: {spec!r} | Not a text spec; expected {SPEC_HELP}.")
    spec = spec.strip()
    if spec in ("console", "-", "stdout"):
        return ConsoleSink()
    if spec.startswith("jsonl:"):
        path, _, query = spec[len("jsonl:"):].partition("?")
        if not path:
            raise EdgemmError(f"Sink: {spec} | No path; expected jsonl:PATH.")
        q = _query(spec, query, {"mode": "a|w", "max_mb": "MB", "keep": "N"})
        keep = _number(spec, q, "keep", int)
        return JsonlSink(path, mode=q.get("mode", "a"), max_mb=_number(spec, q, "max_mb"),
                         keep=5 if keep is None else keep)
    if spec.startswith("video:"):
        path = spec[len("video:"):]
        if not path:
            raise EdgemmError(f"Sink: {spec} | No path; expected video:PATH.mp4.")
        return VideoSink(path)
    if spec.startswith("mqtt://"):
        u = urllib.parse.urlsplit(spec)
        try:
            port = u.port or 1883
        except ValueError:
            raise EdgemmError(f"Sink: {spec} | Bad port; expected mqtt://HOST[:PORT]/TOPIC.") from None
        if not u.hostname:
            raise EdgemmError(f"Sink: {spec} | No host; expected mqtt://HOST[:PORT]/TOPIC.")
        q = _query(spec, u.query, {"results": "on|off", "client_id": "NAME", "reconnect_min": "S",
                                   "reconnect_max": "S"})
        delays = {k: v for k, v in (("reconnect_min_s", _number(spec, q, "reconnect_min")),
                                    ("reconnect_max_s", _number(spec, q, "reconnect_max"))) if v is not None}
        return MqttSink(u.hostname, port, u.path.lstrip("/") or "edgemm", client_id=q.get("client_id", ""),
                        results=q.get("results", "on").lower() not in ("off", "0", "false", "no"), **delays)
    raise EdgemmError(f"Sink: {spec} | Unknown; expected {SPEC_HELP}.")
