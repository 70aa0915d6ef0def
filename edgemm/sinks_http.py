"""A web view of the running pipeline: ``--sink http://HOST:PORT`` (Python's own http.server, no web stack).

  GET /               the page: the annotated video, the latest results, latency per stage, fps, recent events
  GET /stream.mjpg    the annotated frames as MJPEG (multipart/x-mixed-replace; every browser shows it in <img>)
  GET /state.json     the latest result record, fps, recent events, frames sent, viewers, CPU ms to draw and
                      encode a frame

Frames wider than ``?width=640`` are scaled down to it (``width=0``: as captured), at ``?quality=80``.
Binds 127.0.0.1 unless told otherwise. Bound to any other address it requires ``?token=SECRET``; every
request must then carry ``?token=SECRET`` (the page passes it on to its own requests). Frames are drawn and
JPEG-encoded on a thread of their own at most ``fps`` times a second (default 15), and only while a viewer
is connected to the stream: the inference thread only swaps a reference (edgemm.frame_tap).
"""

from __future__ import annotations

import collections
import hmac
import ipaddress
import json
import logging
import re
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2

from edgemm.errors import EdgemmError
from edgemm.frame_tap import FrameTap
from edgemm.outputs import to_json
from edgemm.sinks import Sink

log = logging.getLogger("edgemm.sinks")

RECENT_EVENTS = 50
FPS_WINDOW_S = 5.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpSink(Sink):
    name = "http"
    draws_frames = True

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, token: str = "", fps: float = 15.0,
                 quality: int = 80, width: int = 640):
        if not is_loopback(host) and not token:
            raise EdgemmError(f"Sink: http://{host}:{port} | Bound to a non-loopback address without a token; "
                              "expected ?token=SECRET (the page then opens at "
                              f"http://{host}:{port}/?token=SECRET) or host 127.0.0.1.")
        if token and not re.fullmatch(r"[A-Za-z0-9._~-]+", token):
            raise EdgemmError(f"Sink: http://{host}:{port} | The token has characters other than letters, digits "
                              "and ._~-; expected a URL-safe token (e.g. from `openssl rand -hex 16`).")
        if not 0 < fps <= 60:
            raise EdgemmError(f"Sink: http://{host}:{port} | fps={fps}; expected 0 < fps <= 60.")
        if not 1 <= quality <= 100:
            raise EdgemmError(f"Sink: http://{host}:{port} | quality={quality}; expected a JPEG quality 1..100.")
        self.host, self.port, self.token = host, port, token
        self.quality = int(quality)
        if width < 0:
            raise EdgemmError(f"Sink: http://{host}:{port} | width={width}; expected a width in pixels (0: the "
                              "camera's own).")
        self.tap = FrameTap("http", fps, self._encode, wanted=lambda: self.viewers > 0, max_width=width or None)
        self.viewers = 0
        self.frames_sent = 0
        self._jpeg: bytes | None = None
        self._jpeg_seq = 0
        self._frame_cond = threading.Condition()
        self._lock = threading.Lock()  # the state below, shared by the worker and the request threads
        self._record: dict | None = None
        self._result_times: collections.deque = collections.deque(maxlen=1000)
        self._results = 0
        self._events: collections.deque = collections.deque(maxlen=RECENT_EVENTS)
        self._summary: dict | None = None
        self._server: ThreadingHTTPServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._closing = False

    @property
    def url(self) -> str:
        query = f"?token={urllib.parse.quote(self.token)}" if self.token else ""
        return f"http://{self.host}:{self.port}/{query}"

    # -- the sink interface (pipeline worker thread) -------------------------------------------------------
    @property
    def label(self) -> str:
        return f"http://{self.host}:{self.port}"

    def counts(self) -> dict:
        return {"frames_encoded": self.tap.delivered, "frames_sent": self.frames_sent}

    def open(self, context=None) -> None:
        handler = type("Handler", (_Handler,), {"sink": self})
        try:
            self._server = ThreadingHTTPServer((self.host, self.port), handler)
        except OSError as exc:
            raise EdgemmError(f"Sink: http://{self.host}:{self.port} | Cannot listen ({exc.strerror}); expected a "
                              "free port on an address of this machine.") from None
        self._server.daemon_threads = True  # a viewer left open must not keep the process alive
        self.port = self._server.server_address[1]  # the one chosen when port 0 was asked for
        self._serve_thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                              name="edgemm-http", daemon=True)
        self._serve_thread.start()
        self.tap.start()
        # Not the token itself: logs travel further than the person who set it.
        log.warning("web view at http://%s:%d/%s", self.host, self.port, "?token=..." if self.token else "")

    def result(self, record, frame=None) -> None:
        with self._lock:
            self._record = record
            self._results += 1
            self._result_times.append(time.monotonic())
        if frame is not None:
            self.tap.offer(frame, record)

    def event(self, event) -> None:
        with self._lock:
            self._events.append(event)

    def summary(self, summary) -> None:
        with self._lock:
            self._summary = summary

    def close(self) -> None:
        self.tap.close()
        self._closing = True
        with self._frame_cond:
            self._frame_cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- the encoder thread ----------------------------------------------------------------------------------
    def _encode(self, image) -> None:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        with self._frame_cond:
            self._jpeg = buf.tobytes()
            self._jpeg_seq += 1
            self._frame_cond.notify_all()

    # -- request threads ----------------------------------------------------------------------------------------
    def state(self) -> dict:
        now_t = time.monotonic()
        with self._lock:
            recent = [t for t in self._result_times if now_t - t <= FPS_WINDOW_S]
            span = (recent[-1] - recent[0]) if len(recent) > 1 else 0.0
            return {
                "results": self._results,
                "fps": round((len(recent) - 1) / span, 2) if span > 0 else 0.0,
                "latest": self._record,
                "events": list(self._events),
                "summary": self._summary,
                "frames_sent": self.frames_sent,
                "encode_ms": round(1e3 * self.tap.cpu_s / self.tap.delivered, 3) if self.tap.delivered else None,
                "viewers": self.viewers,
            }

    def next_jpeg(self, after_seq: int, timeout: float = 1.0) -> tuple[int, bytes | None]:
        with self._frame_cond:
            self._frame_cond.wait_for(lambda: self._jpeg_seq > after_seq or self._closing, timeout=timeout)
            return self._jpeg_seq, (self._jpeg if self._jpeg_seq > after_seq else None)


class _Handler(BaseHTTPRequestHandler):
    sink: HttpSink
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # requests are not news; errors are logged by the handlers
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if self.sink.token and not hmac.compare_digest(query.get("token", ""), self.sink.token):
            return self._send(HTTPStatus.FORBIDDEN, b"token required\n", "text/plain")
        route = {"/": self._page, "/index.html": self._page, "/state.json": self._state,
                 "/stream.mjpg": self._stream}.get(url.path)
        if route is None:
            return self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        try:
            route()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the viewer went away

    def _send(self, status, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _page(self) -> None:
        # The token is URL-safe characters only (checked when the sink is made): safe inside the script.
        self._send(HTTPStatus.OK, PAGE.replace("__TOKEN__", json.dumps(self.sink.token)).encode(),
                   "text/html; charset=utf-8")

    def _state(self) -> None:
        self._send(HTTPStatus.OK, to_json(self.sink.state()).encode(), "application/json")

    def _stream(self) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        sink = self.sink
        with sink._lock:
            sink.viewers += 1
        try:
            seq = 0
            while not sink._closing:
                seq, jpeg = sink.next_jpeg(seq)
                if jpeg is None:
                    continue
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                 + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                self.wfile.flush()
                with sink._lock:
                    sink.frames_sent += 1
        finally:
            with sink._lock:
                sink.viewers -= 1


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>edgemm live</title>
<style>
body{font:14px system-ui,sans-serif;margin:0;background:#111;color:#ddd;display:flex;gap:16px;padding:16px}
#video{max-width:70vw;background:#000;min-width:320px;min-height:240px}
table{border-collapse:collapse}td{padding:2px 8px}h2{font-size:15px;margin:12px 0 4px}
.bar{background:#3a7;height:10px;display:inline-block}#events div{font-family:monospace;font-size:12px}
.alert{color:#f66;font-weight:bold}
</style></head>
<body>
<div><img id="video" alt="annotated stream"></div>
<div>
<h2>Now</h2>
<div>fps <b id="fps">-</b> &middot; results <b id="results">0</b> &middot; degraded <b id="degraded">-</b></div>
<div id="alerts" class="alert"></div>
<h2>Results</h2><table id="outputs"></table>
<h2>Latency (ms)</h2><table id="latency"></table>
<h2>Events</h2><div id="events"></div>
</div>
<script>
const token = __TOKEN__;
const q = token ? "?token=" + encodeURIComponent(token) : "";
document.getElementById("video").src = "stream.mjpg" + q;
function el(tag, text, cls) {
  const e = document.createElement(tag); e.textContent = text; if (cls) e.className = cls; return e;
}
function describe(out) {
  if ("label" in out) return out.label + "  " + Number(out.score).toFixed(2);
  if ("labels" in out) return out.labels.join(", ") || "-";
  if (Array.isArray(out.detections)) return out.detections.map(d =>
      (d.track !== undefined && d.track !== null ? "#" + d.track + " " : "") + (d.label ?? "") + " " +
      Number(d.score).toFixed(2) + (d.box ? " [" + d.box.map(v => Math.round(v)).join(",") + "]" : "")
    ).join("; ") || "-";
  if (Array.isArray(out.values)) return out.values.slice(0, 6).map(v => Number(v).toPrecision(3)).join(", ");
  return JSON.stringify(out).slice(0, 120);
}
async function tick() {
  try {
    const s = await (await fetch("state.json" + q, {cache: "no-store"})).json();
    document.getElementById("fps").textContent = s.fps.toFixed(1);
    document.getElementById("results").textContent = s.results;
    const r = s.latest;
    if (r) {
      document.getElementById("degraded").textContent = (r.degraded || []).join(", ") || "no";
      document.getElementById("alerts").textContent = (r.alerts || []).length ? "ALERT: " + r.alerts.join(", ") : "";
      const o = document.getElementById("outputs"); o.replaceChildren();
      for (const [name, out] of Object.entries(r.outputs || {})) {
        const tr = o.insertRow(); tr.append(el("td", name), el("td", describe(out)));
      }
      const l = document.getElementById("latency"); l.replaceChildren();
      for (const [stage, ms] of Object.entries(r.latency_ms || {})) {
        const tr = l.insertRow(); const bar = el("span", "", "bar"); bar.style.width = Math.min(300, ms * 3) + "px";
        const cell = el("td", ""); cell.append(bar);
        tr.append(el("td", stage), el("td", ms.toFixed(1)), cell);
      }
    }
    const ev = document.getElementById("events"); ev.replaceChildren();
    for (const e of s.events.slice().reverse()) {
      const rest = Object.entries(e).filter(([k]) => k !== "event" && k !== "t")
        .map(([k, v]) => k + "=" + v).join(" ");
      ev.append(el("div", e.t.toFixed(2) + "  " + e.event + "  " + rest, e.event.startsWith("alert") ? "alert" : ""));
    }
  } catch (err) { document.getElementById("fps").textContent = "offline"; }
  setTimeout(tick, 500);
}
tick();
</script>
</body></html>
"""
