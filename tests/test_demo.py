"""`edgemm demo` end to end in a subprocess: clip, conversion, real-time streaming, summary, plot."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def demo(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "edgemm", "demo", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_demo_short_clip(tmp_path):
    out = tmp_path / "demo"
    # 4 commands (clean, hand over the lens, road noise, night with road noise), 6.4 s in real time
    p = demo("--out", str(out), "--commands", "4", "--every", "2")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    text = p.stdout
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]"):
        assert step in text
    assert "predicted" in text and "latency" in text  # results as they come
    assert "== command 4:" in text  # each command closed as the clip goes
    for field in ("accuracy", "latency", "drops"):
        assert f"  {field}" in text, field

    summary = json.loads((out / "summary.json").read_text())
    score = summary["score"]
    assert len(score["commands"]) == 4
    assert score["results_scored"] > 40  # ~15 fps for 6.4 s, some dropped under load at most
    # the clean command at least is right; the figure is a floor a broken path would miss
    assert score["commands"][0]["correct"], score["commands"]
    assert score["command_accuracy"] >= 0.5, score["commands"]
    assert score["result_accuracy"] >= 0.5
    lat = summary["latency_ms"]["total"]
    assert 0 < lat["p50"] <= lat["p99"]
    assert "dropped" in summary["pipeline"]["ports"]["video"]
    try:
        import edgemm.converters.convert  # noqa: F401

        assert summary["precision"] == "int8"
        assert (out / "model-int8" / "manifest.json").is_file()
    except ImportError:
        assert summary["precision"] == "fp32"
    for f in ("clip.mp4", "clip.wav", "truth.json", "results.jsonl"):
        assert (out / f).is_file(), f
    lines = (out / "results.jsonl").read_text().splitlines()
    assert sum(json.loads(x)["type"] == "result" for x in lines) == score["results"]
    pytest.importorskip("matplotlib")
    png = (out / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_demo_bad_model_is_one_line(tmp_path):
    p = demo("--out", str(tmp_path / "d"), "--model", str(tmp_path / "missing.onnx"), timeout=60)
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and "missing.onnx" in p.stderr
    assert "Traceback" not in p.stderr


def test_demo_bad_commands(tmp_path):
    p = demo("--out", str(tmp_path / "d"), "--commands", "0", timeout=60)
    assert p.returncode == 1 and "Commands" in p.stderr


def test_demo_on_live_sources(tmp_path):
    """--video/--audio: the same job on sensors (here the runtime's test patterns), without ground truth."""
    out = tmp_path / "live"
    p = demo("--out", str(out), "--video", "test://video?size=160x120&fps=15", "--audio", "test://audio?kind=noise",
             "--duration", "3", "--precision", "fp32", "--no-plot", timeout=120)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "Live sensors" in p.stdout and "truth" not in p.stdout.split("[3/4]")[1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["live"] is True and summary["precision"] == "fp32"
    assert summary["score"]["results"] >= 10
    assert summary["latency_ms"]["total"]["p50"] > 0
    assert not (out / "clip.mp4").exists()
