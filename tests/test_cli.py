"""`edgemm info` and `edgemm bench` as a user runs them, bad input included (one line, exit 1)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgemm import bench
from edgemm.commands.bench import model_labels
from tests import onnx_models
from tests.conftest import run_cli_without


def test_info_plain_onnx(cli, av_onnx):
    proc = cli("info", av_onnx)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "manifest inferred" in out and "modalities: video, audio" in out
    assert "video" in out and "[N,3,32,32]" in out and "classification" in out
    assert "MACs" in out and "Notes" in out


def test_info_json(cli, av_bundle, tmp_path):
    proc = cli("info", av_bundle, "--json", tmp_path / "info.json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["fusion"] == "early" and info["modalities"] == ["video", "audio"]
    # 16*3*3*3+16 + 8*1*3*3+8 + 10*24+10 parameters (biases included, as count_parameters counts them)
    assert info["parameters"] == 448 + 80 + 250
    # MACs: video conv 16x16x16 outputs * 27 + audio conv 8x32x49 * 9 + gemm 10 * 24
    assert info["macs"] == 16 * 16 * 16 * 27 + 8 * 32 * 49 * 9 + 240


def test_bench_json_has_the_documented_keys(cli, av_onnx, tmp_path):
    out = tmp_path / "bench.json"
    proc = cli("bench", av_onnx, "--iterations", 50, "--warmup", 0, "--json", out, "--threads", 1)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert set(doc["latency_ms"]) >= {"min", "mean", "p50", "p90", "p95", "p99", "max"}
    assert doc["throughput_per_s"] > 0 and doc["iterations"] == 50
    assert doc["memory_mb"]["process_peak_mb"] > 0 and doc["machine"]["cores"] >= 1
    assert "p99" in proc.stdout


def test_bench_side_by_side_with_plot(cli, av_onnx, tmp_path):
    pytest.importorskip("matplotlib")
    other = tmp_path / "mlp.onnx"
    onnx.save(onnx_models.mlp_model(), str(other))
    proc = cli("bench", av_onnx, other, "--iterations", 20, "--warmup", 0, "--json", tmp_path / "b.json",
               "--plot", tmp_path / "cdf.png")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "b.json").read_text())
    assert [r["model"] for r in doc["results"]] == ["av", "mlp"]
    assert (tmp_path / "cdf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "relative to the first row" in proc.stdout


def test_bench_labels_tell_models_of_the_same_name_apart(cli, tmp_path, monkeypatch):
    """a/model.onnx and b/model.onnx were both "model": rows, JSON and the CDF legend name them apart."""
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        onnx.save(onnx_models.mlp_model(), str(tmp_path / d / "model.onnx"))
    proc = cli("bench", "a/model.onnx", "b/model.onnx", "--iterations", 5, "--warmup", 0, "--json", "-",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # `--json -`: stdout is the JSON alone
    assert [r["model"] for r in doc["results"]] == ["a/model", "b/model"]
    assert "b/model onnxruntime" in proc.stderr and "a/model " in proc.stderr  # the table and the ratio line
    assert not (tmp_path / "-").exists()
    proc = cli("bench", "fp32=a/model.onnx", "small=b/model.onnx", "--iterations", 5, "--warmup", 0, "--json",
               tmp_path / "named.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [r["model"] for r in json.loads((tmp_path / "named.json").read_text())["results"]] == ["fp32", "small"]
    # The legend is the same label.
    plt = pytest.importorskip("matplotlib.pyplot")
    legends = []
    monkeypatch.setattr(bench, "save_figure", lambda fig, path, dpi: legends.append(
        [t.get_text() for t in fig.axes[0].get_legend().get_texts()]) or plt.close(fig))
    results = json.loads((tmp_path / "named.json").read_text())["results"]
    bench.plot_cdf(results, [[0.001, 0.002]] * 2, str(tmp_path / "cdf.png"))
    assert [t.split(" (")[0] for t in legends[0]] == ["fp32", "small"]


def test_model_labels_are_the_shortest_distinct_path_ends():
    stems = ["model", "model", "other"]
    assert model_labels(["x/a/model.onnx", "y/a/model.onnx", "z/other.onnx"], stems, [None] * 3) == \
        ["x/a/model", "y/a/model", "other"]
    assert model_labels(["m.onnx", "m.onnx"], ["m", "m"], [None, None]) == ["m", "m#2"]
    assert model_labels(["a/m.onnx", "b/m.onnx"], ["m", "m"], ["fast", None]) == ["fast", "m"]


def test_bench_plot_without_matplotlib_is_refused_before_measuring(av_onnx, tmp_path):
    # Were it refused only after measuring, the 10-minute run would outlast the timeout.
    proc = run_cli_without(["matplotlib"], "bench", av_onnx, "--duration", 600, "--plot", tmp_path / "cdf.png",
                           timeout=120)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1 and "matplotlib" in proc.stderr, proc.stderr
    assert "edgemm[demo]" in proc.stderr and "p50" not in proc.stdout


def test_bench_inputs_npz(cli, tmp_path):
    model = tmp_path / "mlp.onnx"
    onnx.save(onnx_models.mlp_model(), str(model))
    np.savez(tmp_path / "in.npz", x=np.ones((4, 8), np.float32))
    proc = cli("bench", model, "--inputs", tmp_path / "in.npz", "--iterations", 5, "--warmup", 0)
    assert proc.returncode == 0, proc.stderr


def _bad_cases(tmp_path, av_onnx):
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(av_onnx.read_bytes()[:200])
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    np.savez(tmp_path / "wrong.npz", pictures=np.ones((1, 3, 32, 32), np.float32))
    return [
        (["info", tmp_path / "missing.onnx"], "File not found"),
        (["bench", text], "Not a readable ONNX model"),
        (["bench", truncated], "cut.onnx"),
        (["bench", av_onnx, "--backend", "tensorflow"], "Backend: tensorflow | Unknown"),
        (["bench", av_onnx, "--inputs", tmp_path / "wrong.npz"], "Missing"),
        (["bench", av_onnx, "--inputs", tmp_path / "none.npz"], "Inputs file: "),
        (["bench", av_onnx, "--iterations", "0"], "Iterations: 0"),
        (["bench", av_onnx, "--iterations", "ten"], "invalid int value"),
    ]


def test_bad_input_is_one_line_exit_1(cli, tmp_path, av_onnx):
    for args, expect in _bad_cases(tmp_path, av_onnx):
        proc = cli(*args)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        err = proc.stderr.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1, (args, err)
        assert expect in err, (args, err)


def test_unreadable_model_is_one_line(cli, av_onnx, tmp_path):
    """An OSError on a path the user named (a model without read permission) is one line, not a traceback."""
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads files without read permission")
    target = tmp_path / "locked.onnx"
    target.write_bytes(av_onnx.read_bytes())
    target.chmod(0)
    proc = cli("info", target)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "locked.onnx" in proc.stderr


def test_output_path_that_cannot_be_written_is_one_line(cli, av_onnx, tmp_path):
    (tmp_path / "taken").mkdir()  # a folder where the JSON file should go
    proc = cli("info", av_onnx, "--json", tmp_path / "taken")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "Output: " in proc.stderr and "taken" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob(".taken*"))  # no temporary file left behind


def test_json_into_a_missing_folder_fails_before_the_run(cli, av_onnx, tmp_path):
    proc = cli("bench", av_onnx, "--iterations", "5", "--json", tmp_path / "nope" / "b.json")
    assert proc.returncode == 1 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert "p50" not in proc.stdout  # nothing was measured


def _subparsers():
    from edgemm.cli import build_parser

    parser = build_parser()
    return parser, parser._subparsers._group_actions[0].choices


def test_every_backend_option_lists_the_same_backends():
    from edgemm.runners import BACKEND_HELP

    _, commands = _subparsers()
    helps = {name: next(a.help for a in p._actions if "--backend" in a.option_strings)
             for name, p in commands.items() if any("--backend" in a.option_strings for a in p._actions)}
    assert {"run", "bench", "eval", "demo"} <= set(helps)
    for name, text in helps.items():
        assert text.startswith(BACKEND_HELP), (name, text)


def test_verbose_before_or_after_the_command_and_q_wherever_there_is_quiet():
    parser, commands = _subparsers()
    for name, sub in commands.items():
        needed = []  # what the command requires, filled with a placeholder
        for a in sub._actions:
            if not a.option_strings and a.nargs not in ("?", "*"):
                needed.append("x")
            elif a.required:
                needed += [a.option_strings[0], "x"]
        assert parser.parse_args(["-v", name, *needed]).verbose, name
        assert parser.parse_args([name, *needed, "-v"]).verbose, name
        assert not parser.parse_args([name, *needed]).verbose, name
    quiet = {name: next((a for a in p._actions if "--quiet" in a.option_strings), None) for name, p in commands.items()}
    assert quiet["run"] is not None and quiet["convert"] is not None
    for name, action in quiet.items():
        assert action is None or "-q" in action.option_strings, name
