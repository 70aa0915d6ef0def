"""Statistics and the interleaved timing loop (no timing assertions: only structure and consistency)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgemm import bench
from edgemm.errors import EdgemmError
from edgemm.feeds import synthesize
from edgemm.runners.onnxruntime import OnnxRuntimeRunner
from tests import onnx_models


def test_latency_stats_against_numpy():
    samples = np.random.default_rng(0).exponential(0.002, 1000)
    stats = bench.latency_stats(samples)
    assert stats["p50"] == pytest.approx(np.median(samples) * 1e3)
    assert stats["p99"] == pytest.approx(np.percentile(samples, 99) * 1e3)
    assert stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p95"] <= stats["p99"] <= stats["max"]


def test_interleaved_run_counts_and_memory(tmp_path):
    onnx.save(onnx_models.mlp_model(), str(tmp_path / "a.onnx"))
    onnx.save(onnx_models.av_early_model(), str(tmp_path / "b.onnx"))
    targets = [bench.Target(p, OnnxRuntimeRunner(tmp_path / p, threads=1),
                            make_feed=lambda r: synthesize(r.input_metadata())) for p in ("a.onnx", "b.onnx")]
    results = bench.run(targets, iterations=30, warmup_s=0.0)
    assert [r["iterations"] for r in results] == [30, 30]
    for r, t in zip(results, targets):
        assert r["throughput_per_s"] == pytest.approx(30 / sum(t.samples))
        assert set(r["latency_ms"]) >= {"min", "mean", "p50", "p90", "p95", "p99", "max"}
        assert r["memory_mb"]["process_peak_mb"] > 0
        assert not t.runner.is_active  # deactivated afterwards
    assert "a.onnx" in bench.format_table(results)


def test_run_needs_exactly_one_length(tmp_path):
    with pytest.raises(EdgemmError, match="exactly one"):
        bench.run([], iterations=3, duration_s=1.0)
    with pytest.raises(EdgemmError, match="Iterations: 0"):
        bench.run([], iterations=0)
    for bad in (float("nan"), float("inf"), -1.0):  # NaN passed `<= 0` and timed forever
        with pytest.raises(EdgemmError, match="Duration"):
            bench.run([], duration_s=bad)


def test_duration_mode(tmp_path):
    onnx.save(onnx_models.mlp_model(), str(tmp_path / "a.onnx"))
    t = bench.Target("a", OnnxRuntimeRunner(tmp_path / "a.onnx"), make_feed=lambda r: synthesize(r.input_metadata()))
    (res,) = bench.run([t], duration_s=0.2, warmup_s=0.0)
    assert res["iterations"] >= 1 and res["wall_s"] >= 0.2
    json.dumps(res)  # JSON-able
