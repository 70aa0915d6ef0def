"""`edgemm eval` as a user runs it: a real bundle, generated labelled .npz data, exit codes and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgemm.bundle import load_bundle
from edgemm.fusion import FusionModel
from tests.onnx_models import write_av_bundle


@pytest.fixture
def labelled(tmp_path):
    bundle_dir = write_av_bundle(tmp_path / "av.edgemm")
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    with FusionModel(load_bundle(bundle_dir)) as fm:
        tensors = {"video": rng.standard_normal((16, 3, 32, 32)).astype(np.float32),
                   "audio": rng.standard_normal((16, 1, 64, 98)).astype(np.float32)}
        y = fm.infer(tensors).outputs["logits"].argmax(axis=1)
    y[:4] = (y[:4] + 1) % 10  # 4 of 16 wrong: 75 %
    np.savez(data / "a.npz", **tensors, label=y)
    return bundle_dir, data


def test_eval_prints_metrics_and_writes_json_and_report(cli, labelled, tmp_path):
    bundle, data = labelled
    out_json, report = tmp_path / "eval.json", tmp_path / "report"
    r = cli("eval", bundle, "--data", data, "--json", out_json, "--report", report, "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "accuracy  75.00 %" in r.stdout
    assert "confusion (rows: true, columns: predicted)" in r.stdout
    assert "Ablation (model) without_video" in r.stdout
    res = json.loads(out_json.read_text())
    assert res["original"]["outputs"]["logits"]["accuracy"] == pytest.approx(0.75)
    assert (report / "report.md").exists() and (report / "confusion.png").exists()


def test_eval_against_original(cli, labelled):
    bundle, data = labelled
    r = cli("eval", bundle, "--against", bundle, "--data", data, "--limit", "8", "--no-ablation", "--latency", "0.3")
    assert r.returncode == 0, r.stderr
    assert "Drop logits: accuracy +0.00 points" in r.stdout
    assert "top-1 agreement 100.00 %" in r.stdout
    assert "Size: 778 -> 778 parameters" in r.stdout
    assert "Latency model median ms" in r.stdout
    assert "Ablation" not in r.stdout
    r = cli("eval", bundle, "--data", data, "--latency", "1")
    assert r.returncode == 1 and "--against" in r.stderr


def test_eval_missing_data_folder(cli, labelled, tmp_path):
    bundle, _ = labelled
    r = cli("eval", bundle, "--data", tmp_path / "nope")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "Not found" in r.stderr and "Traceback" not in r.stderr


def test_eval_data_not_matching_the_model(cli, labelled, tmp_path):
    bundle, _ = labelled
    bad = tmp_path / "bad"
    bad.mkdir()
    np.savez(bad / "b.npz", image=np.zeros((2, 3, 32, 32), np.float32), label=np.array([0, 1]))
    r = cli("eval", bundle, "--data", bad)
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "b.npz" in r.stderr and "image" in r.stderr and "Traceback" not in r.stderr
    np.savez(bad / "b.npz", video=np.zeros((2, 3, 8, 8), np.float32), audio=np.zeros((2, 1, 64, 98), np.float32))
    r = cli("eval", bundle, "--data", bad)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "shape" in r.stderr


def test_eval_help_needs_no_converters_import(cli):
    import subprocess
    import sys

    r = cli("eval", "--help")
    assert r.returncode == 0 and "--against" in r.stdout and "--report" in r.stdout
    code = ("import sys, argparse, edgemm.commands.eval as e; e.add_arguments(argparse.ArgumentParser()); "
            "print(sorted(m for m in sys.modules if m.startswith('edgemm.converters')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
