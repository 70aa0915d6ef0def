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
    # The files line: the folder once, then what is in it (the plot and the converted model too), all there.
    files = next(line for line in text.splitlines() if line.startswith("  files"))
    folder, names = files.split(None, 1)[1].split("  (")[0].split(": ", 1)
    assert folder == f"{out}/"
    names = names.split(", ")
    assert all((out / n).exists() and "/" not in n.rstrip("/") for n in names), names
    assert {"summary.json", "results.jsonl", "clip.mp4"} <= set(names)
    if summary["precision"] == "int8":
        assert "model-int8/" in names
    lines = (out / "results.jsonl").read_text().splitlines()
    assert sum(json.loads(x)["type"] == "result" for x in lines) == score["results"]
    pytest.importorskip("matplotlib")
    assert "demo.png" in names
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


def test_demo_plot_explains_itself(tmp_path):
    """The legend shows every condition's shade (the clean one is white: it needs an outline), and the latency
    panel names its bands: the sets of graphs run for a result (an encoder at its own rate, the head between)."""
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_rgba
    from matplotlib.patches import Patch

    from edgemm.commands.demo import _figure
    from edgemm.lazy import import_pyplot
    from edgemm.reference.clip import CONDITIONS, Clip, Segment

    segments = [Segment(i, 1.6 * i, 1.6 * (i + 1), d, c, 1.6 * i + 0.3, 1.6 * i + 0.8, "v", 0)
                for i, (d, c) in enumerate(((4, "clean"), (7, "noisy")))]
    clip = Clip(tmp_path / "c.mp4", tmp_path / "c.wav", tmp_path / "t.json", segments, 15.0, 3.2)
    ran = (["video_encoder", "head"], ["head"], ["video_encoder", "audio_encoder", "head"])
    rows = [{"t": k / 15, "label": "4", "truth": "4", "latency_ms": (1.0, 0.8, 8.0)[k % 3], "ran": ran[k % 3]}
            for k in range(48)]
    plt = import_pyplot()
    fig = _figure(plt, clip, rows, None, "test")
    try:
        top, bottom = fig.axes
        handles = dict(zip([t.get_text() for t in top.get_legend().get_texts()], top.get_legend().legend_handles))
        clean = handles[CONDITIONS["clean"]]
        assert isinstance(clean, Patch)
        background = to_rgba(top.get_facecolor())
        visible = [c for c in (to_rgba(clean.get_facecolor()), to_rgba(clean.get_edgecolor()))
                   if c[3] > 0 and c[:3] != background[:3]]
        assert visible and clean.get_linewidth() > 0, "the clean patch is white on white"
        bands = [t.get_text() for t in bottom.get_legend().get_texts()]
        assert {"head only (embeddings reused)", "video encoder + head",
                "video encoder + audio encoder + head"} <= set(bands), bands
    finally:
        plt.close(fig)


def test_demo_files_line_is_one_style(tmp_path):
    """The folder once, then names in it; folders end in a slash; what is not there or not the demo's is left out."""
    from edgemm.commands.demo import _files_line

    out = tmp_path / "demo"
    (out / "model-int8").mkdir(parents=True)
    for name in ("summary.json", "results.jsonl", "demo.png", "clip.mp4"):
        (out / name).write_bytes(b"x")
    line = _files_line(out, [out / "summary.json", out / "results.jsonl", out / "demo.png", out / "model-int8",
                             out / "calib", tmp_path / "elsewhere.onnx", out / "clip.mp4"])
    assert line == f"{out}/: summary.json, results.jsonl, demo.png, model-int8/, clip.mp4"


@pytest.mark.slow
def test_demo_driving_short_drive(tmp_path):
    """The driving scenario end to end on a 6 s drive: render, INT8, stream with boxes, siren, fusion, figures."""
    pytest.importorskip("pycocotools")
    out = tmp_path / "drive"
    p = demo("--scenario", "driving", "--duration", "6", "--out", str(out), "--every", "5")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    text = p.stdout
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert step in text
    for field in ("mAP", "event", "latency", "drops", "files"):
        assert f"  {field}" in text, field
    for f in ("drive.mp4", "drive.wav", "drive-boxes.mp4", "results.jsonl", "summary.json"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    summary = json.loads((out / "summary.json").read_text())
    # ~10 fps for 6 s; every figure comes from this run's results
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    results = [x for x in lines if x["type"] == "result"]
    assert len(results) == summary["map"]["frames"] == summary["pipeline"]["results"] >= 40
    assert 0 < summary["map"]["map50"] <= 1 and summary["map"]["map"] <= summary["map"]["map50"]
    assert f"@0.5 {100 * summary['map']['map50']:.1f}" in text
    lat = summary["latency_ms"]["total"]
    assert 0 < lat["p50"] <= lat["p99"]
    # the siren probability is the classifier's on this drive: low before the siren, high once it sounds
    tl, onset = summary["timeline"], summary["drive"]["siren_onset_s"]
    before = [p for t, p in zip(tl["t"], tl["p_siren"]) if t < onset]
    after = [p for t, p in zip(tl["t"], tl["p_siren"]) if t > onset + 1.5]
    assert before and after and max(before) < 0.5 < min(after), tl
    events = summary["events"]
    assert set(events) == {"late fusion", "intermediate fusion", "audio alone", "camera alone"}
    # the siren classifier ran live on the microphone path, at its own rate (4 Hz against 10 fps), in the
    # same stream as the detector (every frame), and the alarm was raised while streaming
    assert summary["pipeline"]["form"] == "intermediate" and summary["pipeline"]["ports"]["audio"]["samples"] > 0
    ran = [r["ran"] for r in results]
    assert all("video_encoder" in r and "head" in r for r in ran)
    assert 0.3 * len(ran) < sum("audio_encoder" in r for r in ran) < 0.55 * len(ran)
    assert "ALARM (late fusion)" in text.split("[4/5]")[0]
    late = events["late fusion"]
    assert late["tp"] == 1 and 0 <= late["delay_s"] < 2.0, events
    assert f"caught {late['delay_s']:.2f} s after" in text
    import cv2

    cap = cv2.VideoCapture(str(out / "drive-boxes.mp4"))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    assert len(frames) == len(results)
    # the event's banner (a red strip at the bottom) from the fused alarm on, not before the siren
    alarm = late["first_alarm_s"]
    assert 0 < summary["banner_frames"] <= (summary["drive"]["duration_s"] - alarm) * 10 + 1
    red = [float(f[-8:, :, 2].mean() - f[-8:, :, 1].mean()) for f in frames]
    assert red[0] < 50 < red[-1], (red[0], red[-1])
    try:
        import edgemm.converters.convert  # noqa: F401

        assert summary["precision"] == "int8" and (out / "model-int8" / "manifest.json").is_file()
        assert json.loads((out / "model-int8" / "manifest.json").read_text())["fusion"]["form"] == "intermediate"
    except ImportError:
        assert summary["precision"] == "fp32"
    pytest.importorskip("matplotlib")
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_driving_bad_duration(tmp_path):
    p = demo("--scenario", "driving", "--duration", "60", "--out", str(tmp_path / "d"), timeout=60)
    assert p.returncode == 1 and "Duration" in p.stderr and "Traceback" not in p.stderr
