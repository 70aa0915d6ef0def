"""Where results and events go: the console, a JSON-lines file, an annotated video file, an MQTT broker.

A sink is named by a spec string (``make_sink``):

  console                        one short line per result and per event on stdout
  jsonl:PATH                     one JSON object per line: {"type": "result"|"event"|"summary", ...}, appended
                                 (a restarted service keeps what it wrote before); ?mode=w starts the file
                                 afresh; ?max_mb=N&keep=K renames a full file to PATH.1 (PATH.1 to PATH.2 ...)
                                 and keeps K of them
  video:PATH.mp4                 the frames that were inferred, with label, score and latency drawn on them
  mqtt://HOST[:PORT]/TOPIC       results, events and the summary to TOPIC/results, TOPIC/events and
                                 TOPIC/summary (QoS 1), stored while the broker is away and sent in order when
                                 it is back (edgemm.sinks_mqtt); ?results=off, client_id=NAME, reconnect_min=S,
                                 reconnect_max=S, buffer=N (messages), buffer_mb=MB, spool=DIR (kept on disk
                                 for the next run too)

Every sink has ``open(context)``, ``result(record, frame)``, ``event(event)``, ``summary(summary)`` and
``close()``; the pipeline calls them from its one worker thread, and always calls ``close()`` on shutdown
(SIGINT/SIGTERM included) so files are complete and queued MQTT events are delivered.
"""

from __future__ import annotations

import logging
import os
import sys
import urllib.parse
from pathlib import Path

import cv2
import numpy as np

from edgemm.errors import EdgemmError, number_problem
from edgemm.outputs import to_json
from edgemm.sink_base import Sink
from edgemm.sinks_mqtt import MqttSink  # noqa: F401 - spelled edgemm.sinks.MqttSink too

log = logging.getLogger("edgemm.sinks")

SPEC_HELP = ("console, jsonl:PATH[?mode=w&max_mb=N&keep=K], video:PATH.mp4, mqtt://HOST[:PORT]/TOPIC, "
             "http://HOST:PORT[?token=T], rtsp://HOST:PORT/PATH or metrics:[HOST:]PORT")


class SinkHealth:
    """Calls one sink and keeps its failures to two log lines: one when it starts failing, one when it
    recovers, with counts (a full disk under a JSON-lines sink once logged a traceback per result, about
    1 GB a day). A record the sink raised on is lost, not retried: the run goes on without it.

    An EdgemmError (a sink that cannot work as configured, e.g. no video writer) is not a passing failure
    and propagates.
    """

    def __init__(self, sink: Sink):
        self.sink = sink
        self.written = 0
        self.failures = 0  # calls that raised, over the run
        self._streak = 0  # ... since the last success

    def call(self, method: str, *args) -> bool:
        try:
            getattr(self.sink, method)(*args)
        except EdgemmError:
            raise
        except Exception as exc:
            self.failures += 1
            self._streak += 1
            if self._streak == 1:
                # A traceback only for what is not an I/O failure (a bug deserves one, once).
                log.warning("sink %s: failing (%s: %s); records are lost until it recovers", self.sink.label,
                            type(exc).__name__, exc, exc_info=not isinstance(exc, OSError))
            return False
        if self._streak:
            log.warning("sink %s: recovered after %d failed write(s) (%d lost in this run)", self.sink.label,
                        self._streak, self.failures)
            self._streak = 0
        self.written += 1
        return True

    def counts(self) -> dict:
        """For the summary: what was written, how many writes failed, how many records were lost in all."""
        return {"written": self.written, "failures": self.failures, "lost": self.failures + self.sink.lost(),
                **self.sink.counts()}


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
        parts = ([f"[{record['camera']}]"] if record.get("camera") else []) + [f"t={record['t']:.3f}"]
        for name, out in record["outputs"].items():
            if "label" in out:
                parts.append(f"{name}={out['label']} ({out['score']:.2f})")
            elif "labels" in out:
                parts.append(f"{name}={','.join(out['labels']) or '-'}")
            elif "values" in out:
                parts.append(f"{name}=" + ",".join(f"{v:.3g}" for v in out["values"][:4]))
            elif "counts" in out:
                parts.append(f"{name}=" + (",".join(f"{k}:{n}" for k, n in out["counts"].items()) or "-"))
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
    """JSON lines, each written to the OS as it comes (a crash loses nothing that was reported); close() fsyncs.

    Whole lines or nothing: a line the disk has no room for is cut back off the file and the write fails
    (the pipeline counts it as lost), so a full disk never leaves half a record. Appends by default: a
    service restarted after a failure keeps the results it wrote before. A last line cut by an earlier run
    (power loss) is set aside into PATH.cut before appending, so the new records start on a line of their
    own; ``repaired`` counts those. ``mode="w"`` starts the file afresh. With ``max_mb`` a file that
    reaches that size is renamed PATH.1 (an older PATH.1 to PATH.2, ...; ``keep`` of them are kept) and a
    new PATH is started, so a long-running service never fills the disk.
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
        # mkdir would say only "File exists" when a folder on the way is a file: name that file, before any
        # sink or source is opened.
        blocker = next((p for p in self.path.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise EdgemmError(f"Sink: jsonl:{path} | {blocker} is a file, not a folder; expected a path in a folder.")
        self.mode = mode
        self.max_bytes = None if max_mb is None else int(max_mb * 1e6)
        self.keep = int(keep)
        self.rotations = 0
        self.repaired = 0  # cut last lines set aside into PATH.cut
        self._fd: int | None = None
        self._size = 0
        self._prefix = b""  # a newline owed to a cut line that could not be set aside

    @property
    def label(self) -> str:
        return f"jsonl:{self.path}"

    def open(self, context=None) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.mode == "a" and self.max_bytes and self.path.is_file() and \
                    self.path.stat().st_size >= self.max_bytes:
                self._rotate_files()
            self._open_file(os.O_TRUNC if self.mode == "w" else 0)
        except OSError as exc:
            raise EdgemmError(f"Sink: {self.label} | Cannot be written ({exc.strerror}); "
                              "expected a writable file path.") from None
        if self.mode == "a":
            self._repair_cut_line()

    def counts(self) -> dict:
        return {"repaired": self.repaired, "rotations": self.rotations}

    def _open_file(self, extra_flags: int = 0) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | extra_flags, 0o644)
        self._size = os.fstat(self._fd).st_size

    def _repair_cut_line(self) -> None:
        """A file that does not end in a newline was cut mid-record: move the fragment to PATH.cut."""
        if self._size == 0:
            return
        with open(self.path, "rb") as f:
            f.seek(self._size - 1)
            if f.read(1) == b"\n":
                return
            # The fragment is at most one record: look back for the newline before it.
            start = max(0, self._size - (1 << 20))
            f.seek(start)
            tail = f.read()
        cut_at = start + tail.rfind(b"\n") + 1 if b"\n" in tail else start
        fragment = tail[cut_at - start:]
        aside = self.path.with_name(self.path.name + ".cut")
        try:
            with open(aside, "ab") as f:
                f.write(fragment + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.ftruncate(self._fd, cut_at)
            self._size = cut_at
            self.repaired += 1
            log.warning("sink %s: its last line was cut (%d bytes, an earlier run stopped mid-write); set aside "
                        "into %s", self.label, len(fragment), aside)
        except OSError as exc:  # no room to set it aside: keep it, and start the new records on a line of their own
            self._prefix = b"\n"
            log.warning("sink %s: its last line was cut (%d bytes) and could not be set aside (%s); it is left "
                        "as one unreadable line", self.label, len(fragment), exc.strerror)

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
        if self._fd is None:
            return
        data = self._prefix + (to_json({"type": kind, **obj}) + "\n").encode("utf-8")
        view = memoryview(data)
        try:
            while view:  # a full disk may take part of a line and then refuse the rest
                view = view[os.write(self._fd, view):]
        except OSError:
            if len(view) < len(data):
                try:
                    os.ftruncate(self._fd, self._size)  # cut the partial line back off (O_APPEND: next write goes there)
                except OSError:
                    pass
            raise
        self._size += len(data)
        self._prefix = b""
        if self.max_bytes and self._size >= self.max_bytes:
            self._close_file()
            self._rotate_files()
            self._open_file()

    def result(self, record, frame=None) -> None:
        self._line("result", record)

    def event(self, event) -> None:
        self._line("event", event)

    def summary(self, summary) -> None:
        self._line("summary", summary)

    def _close_file(self) -> None:
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        except OSError:
            pass
        os.close(fd)

    def close(self) -> None:
        if self._fd is not None:
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
    draws_frames = True
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
            if "detections" in out:
                VideoSink._draw_boxes(img, out["detections"], scale, thick)
                lines.append(("  ".join(f"{k} {n}" for k, n in out["counts"].items()) or "no objects",
                              (255, 255, 255)))
            elif "label" in out:
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

    @staticmethod
    def _draw_boxes(img: np.ndarray, detections: list[dict], scale: float, thick: int) -> None:
        """A box per detection, in a colour per class, captioned with label, score and track id."""
        import cv2

        font, size = cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale
        for d in detections:
            x1, y1, x2, y2 = (int(round(v)) for v in d["box"])
            hue = (d["class"] * 47) % 180  # classes far apart on the hue circle
            color = tuple(int(c) for c in cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2BGR)[0, 0])
            cv2.rectangle(img, (x1, y1), (x2, y2), color, thick)
            text = f"{d['label']} {d['score']:.2f}" + (f" #{d['track']}" if d.get("track") is not None else "")
            (tw, th), base = cv2.getTextSize(text, font, size, max(1, thick - 1))
            ty = max(th + base, y1)
            cv2.rectangle(img, (x1, ty - th - base), (x1 + tw, ty), color, -1)
            cv2.putText(img, text, (x1, ty - base), font, size, (0, 0, 0), max(1, thick - 1), cv2.LINE_AA)

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


def _query(spec: str, text: str, allowed: dict[str, str]) -> dict[str, str]:
    q = dict(urllib.parse.parse_qsl(text, keep_blank_values=True))
    unknown = set(q) - set(allowed)
    if unknown:
        raise EdgemmError(f"Sink: {spec} | Unknown option {', '.join(sorted(unknown))}; expected "
                          f"{', '.join(f'{k}={v}' for k, v in allowed.items())}.")
    return q


def _number(spec: str, q: dict, key: str, kind=float, maximum: float | None = None):
    """A URI option as a finite number (at most maximum: sizes that could exhaust memory are capped)."""
    if key not in q:
        return None
    try:
        value = kind(q[key])
    except ValueError:
        raise EdgemmError(f"Sink: {spec} | Option {key}={q[key]!r} is not a number.") from None
    problem = number_problem(value, maximum=maximum)
    if problem:
        raise EdgemmError(f"Sink: {spec} | Option {key}={q[key]!r}: {problem}.")
    return value


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
        keep = _number(spec, q, "keep", int, maximum=1000)  # files renamed one by one at each rotation
        return JsonlSink(path, mode=q.get("mode", "a"), max_mb=_number(spec, q, "max_mb", maximum=1e6),
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
                                   "reconnect_max": "S", "buffer": "N", "buffer_mb": "MB", "spool": "DIR"})
        numbers = {k: v for k, v in (("reconnect_min_s", _number(spec, q, "reconnect_min", maximum=3600)),
                                     ("reconnect_max_s", _number(spec, q, "reconnect_max", maximum=3600)),
                                     ("buffer", _number(spec, q, "buffer", int, maximum=10**7)),
                                     ("buffer_mb", _number(spec, q, "buffer_mb", maximum=1e5))) if v is not None}
        if "spool" in q and not q["spool"]:
            raise EdgemmError(f"Sink: {spec} | spool= names no folder; expected spool=DIR.")
        return MqttSink(u.hostname, port, u.path.lstrip("/") or "edgemm", client_id=q.get("client_id", ""),
                        spool=q.get("spool"),
                        results=q.get("results", "on").lower() not in ("off", "0", "false", "no"), **numbers)
    if spec.startswith(("http://", "rtsp://", "metrics:")):
        # The live sinks (web view, RTSP out, Prometheus metrics) live in modules of their own.
        from edgemm.sinks_live import make_live_sink

        return make_live_sink(spec)
    raise EdgemmError(f"Sink: {spec} | Unknown; expected {SPEC_HELP}.")
