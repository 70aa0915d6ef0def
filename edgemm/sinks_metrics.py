"""Prometheus metrics of the running pipeline: ``--metrics [HOST:]PORT`` (or ``--sink metrics:[HOST:]PORT``).

Served by the prometheus_client library (the ``live`` extra, imported when the sink opens) from its own
registry at http://HOST:PORT/metrics, all interfaces by default (a fleet's Prometheus scrapes it from
elsewhere; give 127.0.0.1:PORT to keep it local). Counted per result on the worker thread (a few counter
increments and histogram observations), read from the pipeline when scraped:

  edgemm_results_total                              results produced
  edgemm_events_total{event}                        source_lost, source_recovered, alert_start, ...
  edgemm_degraded_results_total{modality}           results fused without that modality
  edgemm_stage_latency_seconds{stage}               histogram per stage: capture, preprocess, infer, ..., total
  edgemm_av_skew_seconds                            histogram of |A/V skew|
  edgemm_alerts_active                              alerts raised now
  edgemm_frames_dropped_total{where}                port (the model was busy) or source (the camera's own)
  edgemm_reconnects_total{modality}                 reopens of a lost source
  edgemm_audio_overflows_total                      microphone overflows
  edgemm_mic_drift_ppm                              the microphone clock against the host clock
  edgemm_power_watts                                board input power (Jetson, from tegrastats or jtop)
"""

from __future__ import annotations

import logging

from edgemm import power
from edgemm.errors import EdgemmError
from edgemm.lazy import import_optional
from edgemm.sinks import Sink

log = logging.getLogger("edgemm.sinks")

# Seconds: from a fast GPU stage (0.5 ms) to a stalled one (5 s).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0,
                   2.5, 5.0)
SKEW_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.5)
INSTALL_HINT = "install it with `pip install prometheus-client` (or edgemm[live])."


class _PipelineCollector:
    """What the pipeline already counts, read at scrape time (nothing added to the worker's loop)."""

    def __init__(self, prom, pipeline, power):
        self.prom, self.pipeline, self.power = prom, pipeline, power

    def collect(self):
        core = self.prom.core
        p = self.pipeline
        if p is not None:
            dropped = core.CounterMetricFamily("edgemm_frames_dropped", "Video frames dropped", labels=["where"])
            cap = p.captures.get("video")
            if cap is not None:
                dropped.add_metric(["port"], p.video_port.dropped)
                dropped.add_metric(["source"], cap.source.stats.dropped)
            yield dropped
            reconnects = core.CounterMetricFamily("edgemm_reconnects", "Reopens of a lost source",
                                                  labels=["modality"])
            for mod, c in list(p.captures.items()):
                reconnects.add_metric([mod], c.reconnects)
            yield reconnects
            yield core.CounterMetricFamily("edgemm_audio_overflows", "Microphone overflows",
                                           value=sum(c.source.stats.overflows for c in list(p.captures.values())))
            if p.ring is not None:
                drift = p.ring.stats()["drift_ppm"]
                if drift is not None:
                    yield core.GaugeMetricFamily("edgemm_mic_drift_ppm", "Microphone clock drift against the host "
                                                 "clock (ppm)", value=drift)
        if self.power is not None:
            with self.power._lock:  # keep only the newest sample: a service runs for months
                latest = self.power.samples[-1] if self.power.samples else None
                del self.power.samples[:-1]
            if latest is not None:
                yield core.GaugeMetricFamily("edgemm_power_watts", f"Board power ({latest.total_from})",
                                             value=latest.total_mw / 1e3)


class MetricsSink(Sink):
    name = "metrics"

    def __init__(self, port: int, host: str = "0.0.0.0", power_command: list[str] | None = None):
        self.host, self.port = host, port
        self.power_command = power_command  # a tegrastats command line (tests run one printing real lines)
        self._server = None
        self._power = None

    @property
    def label(self) -> str:
        return f"metrics:{self.host}:{self.port}"

    def open(self, context=None) -> None:
        prom = import_optional("prometheus_client", INSTALL_HINT)
        import_optional("prometheus_client.core", INSTALL_HINT)
        reg = self.registry = prom.CollectorRegistry()
        self._results = prom.Counter("edgemm_results", "Results produced", registry=reg)
        self._events = prom.Counter("edgemm_events", "Events by kind", ["event"], registry=reg)
        self._degraded = prom.Counter("edgemm_degraded_results", "Results fused without a modality",
                                      ["modality"], registry=reg)
        self._latency = prom.Histogram("edgemm_stage_latency_seconds", "Latency per pipeline stage", ["stage"],
                                       buckets=LATENCY_BUCKETS, registry=reg)
        self._skew = prom.Histogram("edgemm_av_skew_seconds", "Absolute A/V skew of each result",
                                    buckets=SKEW_BUCKETS, registry=reg)
        self._alerts = prom.Gauge("edgemm_alerts_active", "Alerts raised now", registry=reg)
        self._stage = {}  # label children cached: .labels() parses its arguments on every call
        if self.power_command or power.available():
            try:
                self._power = power.PowerSampler(interval_ms=1000, idle_s=0, command=self.power_command).start()
            except EdgemmError as exc:
                log.warning("metrics: no power readings (%s)", exc)
        reg.register(_PipelineCollector(prom, (context or {}).get("pipeline"), self._power))
        try:
            self._server, _ = prom.start_http_server(self.port, addr=self.host, registry=reg)
        except OSError as exc:
            self._stop_power()
            raise EdgemmError(f"Metrics: {self.host}:{self.port} | Cannot listen ({exc.strerror}); expected a free "
                              "port on an address of this machine.") from None
        self.port = self._server.server_address[1]
        log.info("metrics at http://%s:%d/metrics", self.host, self.port)

    def result(self, record, frame=None) -> None:
        self._results.inc()
        for stage, ms in record.get("latency_ms", {}).items():
            child = self._stage.get(stage)
            if child is None:
                child = self._stage[stage] = self._latency.labels(stage)
            child.observe(ms / 1e3)
        if record.get("skew_ms") is not None:
            self._skew.observe(abs(record["skew_ms"]) / 1e3)
        for mod in record.get("degraded") or ():
            self._degraded.labels(mod).inc()
        self._alerts.set(len(record.get("alerts") or ()))

    def event(self, event) -> None:
        self._events.labels(event["event"]).inc()

    def _stop_power(self) -> None:
        if self._power is not None:
            self._power.stop()
            self._power = None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._stop_power()
