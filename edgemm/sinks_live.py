"""Spec strings of the live sinks: the web view, RTSP out and Prometheus metrics (see their modules).

  http://HOST:PORT[?token=T&fps=15&quality=80&width=640]   the web view (edgemm.sinks_http)
  rtsp://HOST:PORT/PATH[?fps=15&width=PX]                  the annotated stream as RTSP (edgemm.sinks_rtsp)
  metrics:[HOST:]PORT                                      Prometheus metrics at /metrics (edgemm.sinks_metrics)
"""

from __future__ import annotations

import urllib.parse

from edgemm.errors import EdgemmError
from edgemm.sinks import Sink, _number, _query


MAX_WIDTH = 8192  # pixels: frames are scaled to it


def _host_port(spec: str, u: urllib.parse.SplitResult, default_port: int, expected: str) -> tuple[str, int]:
    try:
        port = u.port
    except ValueError:
        port = -1
    if port is None:
        port = default_port
    if port < 0 or not u.hostname:
        raise EdgemmError(f"Sink: {spec} | Bad host or port; expected {expected}.")
    return u.hostname, port


def make_live_sink(spec: str) -> Sink:
    if spec.startswith("http://"):
        from edgemm.sinks_http import HttpSink

        u = urllib.parse.urlsplit(spec)
        host, port = _host_port(spec, u, 8080, "http://HOST:PORT")
        if u.path not in ("", "/"):
            raise EdgemmError(f"Sink: {spec} | Path {u.path}; expected http://HOST:PORT (the page is served at /).")
        q = _query(spec, u.query, {"token": "SECRET", "fps": "N", "quality": "1..100", "width": "PX"})
        fps, quality = _number(spec, q, "fps", maximum=120), _number(spec, q, "quality", int, maximum=100)
        width = _number(spec, q, "width", int, maximum=MAX_WIDTH)
        return HttpSink(host, port, token=q.get("token", ""), fps=15.0 if fps is None else fps,
                        quality=80 if quality is None else quality, width=640 if width is None else width)
    if spec.startswith("rtsp://"):
        from edgemm.sinks_rtsp import RtspSink

        u = urllib.parse.urlsplit(spec)
        host, port = _host_port(spec, u, 8554, "rtsp://HOST:PORT/PATH")
        if u.path in ("", "/"):
            raise EdgemmError(f"Sink: {spec} | No path; expected rtsp://HOST:PORT/PATH (e.g. /live).")
        q = _query(spec, u.query, {"fps": "N", "width": "PX"})
        fps, width = _number(spec, q, "fps", maximum=120), _number(spec, q, "width", int, maximum=MAX_WIDTH)
        return RtspSink(host, port, u.path, fps=15.0 if fps is None else fps, width=width or 0)
    from edgemm.sinks_metrics import MetricsSink

    host, port = metrics_address(spec[len("metrics:"):], spec)
    return MetricsSink(port, host)


def metrics_address(text: str, spec: str) -> tuple[str, int]:
    """'9100' or '127.0.0.1:9100' -> (host, port); all interfaces when no host is given."""
    host, _, port = str(text).rpartition(":")
    try:
        value = int(port)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise EdgemmError(f"Metrics: {spec} | Bad port; expected [HOST:]PORT, e.g. 9100 or 127.0.0.1:9100.")
    return host.strip("[]") or "0.0.0.0", value
