"""TensorRT engine build (converters/tensorrt.py) and runner (edgemm/runners/tensorrt.py).

Everything that needs no GPU runs here: the clean "no GPU / no TensorRT" errors (through the real cuda-python
probe), the engine version/GPU checks, optimization profiles from manifests, 2:4 sparsity detection and the
CLI path. Building and running engines needs TensorRT and a CUDA GPU: those tests are skipped elsewhere with
the reason, decided by probing in a subprocess (TensorRT is never touched in this process without a device).
"""

from __future__ import annotations

import json
import subprocess
import sys

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgemm.converters import tensorrt as trt_build
from edgemm.converters.tensorrt import EngineOptions, profile_shapes
from edgemm.shapes import parse_shape_spec
from edgemm.bundle import load_bundle, manifest_from_dict, write_bundle
from edgemm.errors import EdgemmError
from edgemm.runners import cuda, make_runner, parse_backend
from edgemm.runners.tensorrt import TensorRTRunner, check_engine_compat, rebuild_command, version_tuple
from tests import onnx_models
from tests.conftest import REPO, run_cli

ORIN = cuda.DeviceInfo(0, "Orin", (8, 7), 16, 64 * 2**30, True, "cuda-python", 12060)
REBUILD = "edgemm convert m.edgemm -o m-trt.edgemm --target tensorrt"


def _trt_unusable() -> str | None:
    """Why TensorRT engines cannot be built and run here (None when they can). TensorRT is probed in a
    subprocess, and only once a CUDA device was found."""
    p = cuda.probe()
    if not p.found:
        return f"needs a CUDA GPU: {p.reason}"
    if not p.binding:
        return p.reason
    r = subprocess.run([sys.executable, "-c", "import tensorrt as t; print(t.__version__, hasattr(t, 'Builder'), "
                        "hasattr(t, 'OnnxParser'))"], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        return f"tensorrt is not importable: {(r.stderr.strip().splitlines() or ['crashed'])[-1]}"
    _, builder, parser = r.stdout.split()
    if builder != "True" or parser != "True":
        return "only the TensorRT runtime (lean/dispatch) is installed; building needs the full package"
    return None


TRT_REASON = _trt_unusable()
needs_trt = pytest.mark.skipif(TRT_REASON is not None, reason=TRT_REASON or "")
no_gpu = pytest.mark.skipif(cuda.probe().found, reason="checks the no-GPU path; this machine has a GPU")


# -- engine compatibility (pure logic on the recorded info) --------------------------------------------


def test_version_tuple_ignores_the_build_number():
    assert version_tuple("10.3.0.30") == version_tuple("10.3.0") == (10, 3, 0)
    assert version_tuple("11.1.0.106") == (11, 1, 0)
    assert version_tuple(None) == ()


def test_engine_from_another_tensorrt_is_refused_with_the_rebuild_command():
    info = {"tensorrt_version": "10.3.0", "gpu": "Orin", "compute_capability": "8.7", "multiprocessors": 16}
    assert check_engine_compat(info, "10.3.0.30", ORIN, REBUILD) == []
    with pytest.raises(EdgemmError) as err:
        check_engine_compat(info, "10.13.3.9", ORIN, REBUILD)
    msg = str(err.value)
    assert "Built with TensorRT 10.3.0, this device has TensorRT 10.13.3.9" in msg and msg.endswith(REBUILD)
    assert "\n" not in msg


def test_engine_for_another_gpu_architecture_is_refused():
    info = {"tensorrt_version": "10.3.0", "gpu": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}
    with pytest.raises(EdgemmError, match=r"Built for NVIDIA GeForce RTX 4090 \(compute capability 8.9\), this "
                                          r"device is Orin \(compute capability 8.7\).*--target tensorrt$"):
        check_engine_compat(info, "10.3.0", ORIN, REBUILD)


def test_same_architecture_other_model_only_warns():
    info = {"tensorrt_version": "10.3.0", "gpu": "Orin", "compute_capability": "8.7", "multiprocessors": 8}
    warnings = check_engine_compat(info, "10.3.0", ORIN, REBUILD)
    assert len(warnings) == 1 and "8 SMs" in warnings[0] and REBUILD in warnings[0]
    info = {"tensorrt_version": "10.3.0", "gpu": "Orin NX", "compute_capability": "8.7"}
    assert "built on Orin NX, running on Orin" in check_engine_compat(info, "10.3.0", ORIN, REBUILD)[0]


def test_engine_without_recorded_info_warns_instead_of_guessing():
    warnings = check_engine_compat({"file": "model.plan"}, "10.3.0", ORIN, REBUILD)
    assert len(warnings) == 2 and all(REBUILD in w for w in warnings)


def test_rebuild_command_names_the_bundle_and_a_new_output():
    assert rebuild_command("/data/cabin.edgemm") == \
        "edgemm convert /data/cabin.edgemm -o /data/cabin-trt.edgemm --target tensorrt"
    assert rebuild_command("my models/av.onnx") == "edgemm convert 'my models/av.onnx' -o 'my models/av-trt.edgemm' --target tensorrt"
    assert rebuild_command("bundle") == "edgemm convert bundle -o bundle-trt --target tensorrt"


def test_rebuild_command_for_a_shipped_model_writes_where_the_user_works():
    """The reference models live inside the installed package: the new bundle goes to the current folder,
    not next to them."""
    import edgemm.reference

    shipped = Path(edgemm.reference.__file__).parent / "models" / "avdigits_intermediate"
    assert shipped.is_dir()
    assert rebuild_command(shipped) == f"edgemm convert {shipped} -o avdigits_intermediate-trt --target tensorrt"


# -- the runner without a GPU ---------------------------------------------------------------------


def _engine_bundle(tmp_path, plan: bytes = b"not an engine: this machine cannot build one", **info):
    manifest = manifest_from_dict(onnx_models.av_manifest())
    manifest.graphs["model"].engine = {"file": "model.plan", "tensorrt_version": "10.3.0", "gpu": "Orin",
                                       "compute_capability": "8.7", **info}
    return write_bundle(manifest, {"model.onnx": onnx_models.av_early_model(), "model.plan": plan},
                        tmp_path / "av-trt.edgemm")


def test_bundle_without_engine_says_how_to_build_one(av_bundle):
    bundle = load_bundle(av_bundle)
    with pytest.raises(EdgemmError) as err:
        make_runner(bundle, backend="tensorrt")
    msg = str(err.value)
    assert "has no TensorRT engine; build one on the device that will run it: edgemm convert" in msg
    assert msg.endswith("--target tensorrt")


def test_engine_bundle_loads_into_an_inactive_runner(tmp_path):
    bundle = load_bundle(_engine_bundle(tmp_path))
    runner = make_runner(bundle, backend="tensorrt")
    assert isinstance(runner, TensorRTRunner) and not runner.is_active
    assert runner.engine_info["compute_capability"] == "8.7" and runner.describe() == "tensorrt"
    assert runner.rebuild.startswith(f"edgemm convert {tmp_path / 'av-trt.edgemm'} -o ")


def test_tensorrt_backend_options_are_parsed_and_checked():
    assert parse_backend("tensorrt") == ("tensorrt", None)
    assert parse_backend("tensorrt:graph") == ("tensorrt", "graph")
    assert parse_backend("trt:graph:spin:copy") == ("tensorrt", "graph:spin:copy")
    for bad in ("tensorrt:foo", "tensorrt:graph:fp16", "tensorrt:graph:", "tensorrt:cuda"):
        with pytest.raises(EdgemmError) as err:
            parse_backend(bad)
        msg = str(err.value)
        assert msg.startswith(f"Backend: {bad} | Unknown tensorrt option") and "graph" in msg and "\n" not in msg
    with pytest.raises(EdgemmError, match=r"tensorrt\[:graph\]\[:spin\]\[:copy\]"):
        parse_backend("tensorflow")


def test_tensorrt_backend_options_reach_the_runner(tmp_path):
    bundle = load_bundle(_engine_bundle(tmp_path))
    plain = make_runner(bundle, backend="tensorrt")
    # Not forced either way: the runner picks zero-copy on integrated GPUs (Jetson) when activated.
    assert (plain.cuda_graph_requested, plain.spin_wait, plain.zero_copy_requested) == (False, False, None)
    r = make_runner(bundle, backend="tensorrt:graph:spin")
    assert (r.cuda_graph_requested, r.spin_wait, r.zero_copy_requested) == (True, True, None)
    r = make_runner(bundle, backend="trt:copy")
    assert (r.cuda_graph_requested, r.spin_wait, r.zero_copy_requested) == (False, False, False)
    with pytest.raises(EdgemmError, match="Unknown tensorrt option 'grpah'"):
        make_runner(bundle, backend="tensorrt:grpah")


@no_gpu
def test_activating_without_a_gpu_is_one_clean_error_and_never_imports_tensorrt(tmp_path):
    path = _engine_bundle(tmp_path)
    r = subprocess.run([sys.executable, "-c", f"""
import sys
from edgemm.bundle import load_bundle
from edgemm.errors import EdgemmError
from edgemm.runners import make_runner
runner = make_runner(load_bundle({str(path)!r}), backend="tensorrt")
try:
    runner.activate()
except EdgemmError as exc:
    print("ERROR", exc)
print("tensorrt imported:", "tensorrt" in sys.modules)
"""], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "ERROR CUDA device | None found (" in r.stdout and "The tensorrt backend needs an NVIDIA GPU" in r.stdout
    assert "tensorrt imported: False" in r.stdout


@no_gpu
def test_cli_bench_on_tensorrt_without_a_gpu_exits_1_with_one_line(tmp_path):
    r = run_cli("bench", _engine_bundle(tmp_path), "--backend", "tensorrt", "--iterations", "3")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgemm bench: error: CUDA device | None found")
    assert "Traceback" not in r.stderr


# -- optimization profiles from the manifest --------------------------------------------------------


@pytest.fixture
def av_spec(av_bundle):
    return load_bundle(av_bundle).manifest.graphs["model"]


def test_batch_axis_gets_1_to_max_batch(av_spec):
    inputs = [("video", (-1, 3, 32, 32)), ("audio", (-1, 1, 64, 98))]
    assert profile_shapes(inputs, av_spec, EngineOptions()) == {
        "video": ((1, 3, 32, 32),) * 3, "audio": ((1, 1, 64, 98),) * 3}
    prof = profile_shapes(inputs, av_spec, EngineOptions(max_batch=8, opt_batch=2))
    assert prof["video"] == ((1, 3, 32, 32), (2, 3, 32, 32), (8, 3, 32, 32))
    with pytest.raises(EdgemmError, match="opt_batch"):
        profile_shapes(inputs, av_spec, EngineOptions(max_batch=2, opt_batch=4))


def test_dynamic_image_size_and_audio_frames_come_from_the_preprocessing(av_spec):
    inputs = [("video", (-1, 3, -1, -1)), ("audio", (-1, 1, 64, -1))]
    prof = profile_shapes(inputs, av_spec, EngineOptions())
    assert prof["video"][2] == (1, 3, 32, 32)  # manifest size [32, 32]
    # window 0.995 s at 16 kHz = 15920 samples; n_fft 400, hop 160 -> 1 + (15920 - 400) // 160 = 98 frames
    assert prof["audio"][2] == (1, 1, 64, 98)


def test_fixed_inputs_need_no_profile(av_spec):
    assert profile_shapes([("video", (1, 3, 32, 32))], av_spec, EngineOptions()) == {}


def test_an_axis_nobody_can_size_asks_for_shape(av_spec):
    with pytest.raises(EdgemmError) as err:
        profile_shapes([("tokens", (-1, -1))], av_spec, EngineOptions())
    assert "Axis 1 of (-1, -1) is dynamic" in str(err.value) and "--shape tokens:1x1,1x1,1x1" in str(err.value)


def test_shape_overrides_are_parsed_and_checked(av_spec):
    name, prof = parse_shape_spec("tokens:1x1,1x16,4x64")
    assert (name, prof) == ("tokens", ((1, 1), (1, 16), (4, 64)))
    assert parse_shape_spec("input:0:1x3")[0] == "input:0"  # TensorFlow-style names keep their colon
    assert parse_shape_spec("x:2x8")[1] == ((2, 8),) * 3
    opts = EngineOptions(shapes={"tokens": prof})
    assert profile_shapes([("tokens", (-1, -1))], av_spec, opts)["tokens"] == prof
    for bad in ("tokens", "tokens:1x1,2x2", "tokens:4x1,1x1,2x2", "tokens:ax1", "tokens:0x1"):
        with pytest.raises(EdgemmError, match="Shape: "):
            parse_shape_spec(bad)
    with pytest.raises(EdgemmError, match="ranks"):
        profile_shapes([("tokens", (-1, -1, -1))], av_spec, opts)
    with pytest.raises(EdgemmError, match="fixed at 3"):
        profile_shapes([("tokens", (-1, 3))], av_spec, opts)
    with pytest.raises(EdgemmError, match="Not an input of the graph"):
        profile_shapes([("video", (-1, 3, 32, 32))], av_spec, opts)


# -- 2:4 sparsity ------------------------------------------------------------------------------------


def _prune_2_4(w: np.ndarray, axis: int) -> np.ndarray:
    """Zero the two smallest of every 4 consecutive values along axis (what 2:4 pruning does)."""
    moved = np.moveaxis(w.copy(), axis, -1)
    g = moved.reshape(-1, 4)
    idx = np.argsort(np.abs(g), axis=1)[:, :2]
    np.put_along_axis(g, idx, 0.0, axis=1)
    return np.moveaxis(g.reshape(moved.shape), -1, axis)


def _conv_gemm_model(conv_w, gemm_w, qdq=False):
    nodes, inits = [], [numpy_helper.from_array(gemm_w.astype(np.float32), "gw"),
                        numpy_helper.from_array(np.zeros(conv_w.shape[0], np.float32), "cb")]
    if qdq:  # INT8 explicit quantization: the weight reaches Conv through a DequantizeLinear
        scale = np.abs(conv_w).max() / 127
        q = np.clip(np.round(conv_w / scale), -127, 127).astype(np.int8)
        inits += [numpy_helper.from_array(q, "cw_q"), numpy_helper.from_array(np.float32(scale), "cw_s"),
                  numpy_helper.from_array(np.int8(0), "cw_z")]
        nodes.append(helper.make_node("DequantizeLinear", ["cw_q", "cw_s", "cw_z"], ["cw"]))
    else:
        inits.append(numpy_helper.from_array(conv_w.astype(np.float32), "cw"))
    nodes += [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
              helper.make_node("GlobalAveragePool", ["c"], ["g"]),
              helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("Gemm", ["f", "gw"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "sparse", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_2_4_pattern_is_detected_along_the_reduction_axis():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    assert not trt_build.is_2_4_sparse(w, 1)
    pruned = _prune_2_4(w, 1)
    assert trt_build.is_2_4_sparse(pruned, 1)
    assert not trt_build.is_2_4_sparse(pruned, 0)  # the pattern is along the input channels, not the outputs
    assert not trt_build.is_2_4_sparse(rng.standard_normal((16, 6, 3, 3)), 1)  # 6 channels: no groups of 4


def test_sparse_weight_stats_counts_conv_gemm_and_qdq_weights():
    rng = np.random.default_rng(1)
    conv = _prune_2_4(rng.standard_normal((16, 8, 3, 3)), 1)
    dense_gemm = rng.standard_normal((4, 16))
    assert trt_build.sparse_weight_stats(_conv_gemm_model(conv, dense_gemm)) == (1, 2)
    assert trt_build.sparse_weight_stats(_conv_gemm_model(conv, _prune_2_4(dense_gemm, 1))) == (2, 2)
    assert trt_build.sparse_weight_stats(_conv_gemm_model(conv, dense_gemm, qdq=True)) == (1, 2)
    dense = rng.standard_normal((16, 8, 3, 3))
    assert trt_build.sparse_weight_stats(_conv_gemm_model(dense, dense_gemm)) == (0, 2)


def test_provenance_marks_2_4_pruning():
    assert trt_build.provenance_says_2_4({"precision": "fp16", "prune": "2:4"})
    assert trt_build.provenance_says_2_4({"pruning": {"spec": "2:4", "layers": 12}})
    assert trt_build.provenance_says_2_4({"tensorrt": {"sparse_weights": True}})
    assert not trt_build.provenance_says_2_4({"prune": "channels:0.3", "precision": "int8"})
    assert not trt_build.provenance_says_2_4(None)


# -- the build without a GPU -------------------------------------------------------------------------


@no_gpu
def test_build_without_a_gpu_says_to_build_on_the_device(av_bundle):
    with pytest.raises(EdgemmError) as err:
        trt_build.build_engines(av_bundle)
    msg = str(err.value)
    assert msg.startswith("TensorRT engine build | No CUDA GPU here (")
    assert f"run this on the device (the Jetson): edgemm convert {av_bundle}" in msg and msg.endswith("--target tensorrt")
    assert "\n" not in msg and "tensorrt" not in sys.modules


def test_unknown_graph_is_refused_before_anything_else(av_bundle):
    with pytest.raises(EdgemmError, match=r"Graph: head \| Not in the bundle"):
        trt_build.build_engines(av_bundle, graphs=["head"])


def test_default_timing_cache_is_per_tensorrt_and_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert trt_build.default_timing_cache("10.3.0", ORIN) == tmp_path / "edgemm" / "tensorrt-10.3.0-sm_87-16sm.timing"


# -- on a GPU with TensorRT (skipped elsewhere) -------------------------------------------------------


@pytest.fixture
def built_bundle(tmp_path, av_bundle):
    """The av model with an engine built here (dynamic batch 1..4), written as a bundle."""
    bundle = load_bundle(av_bundle)
    builds = trt_build.build_engines(bundle, EngineOptions(max_batch=4, opt_batch=1,
                                                           timing_cache=tmp_path / "cache.timing"))
    b = builds["model"]
    manifest = bundle.manifest
    manifest.graphs["model"].engine = b.info
    out = write_bundle(manifest, {"model.onnx": bundle.load_graph("model"), b.file: b.plan}, tmp_path / "built.edgemm")
    return out, b


def _ort_outputs(bundle_path, feed):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(bundle_path / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)[0]


@needs_trt
def test_build_records_what_the_engine_is_tied_to(built_bundle, tmp_path):
    _, b = built_bundle
    dev = cuda.probe().devices[0]
    assert b.plan and b.file == "model.plan"
    assert b.info["gpu"] == dev.name and b.info["compute_capability"] == dev.cc
    assert b.info["profiles"]["video"] == {"min": [1, 3, 32, 32], "opt": [1, 3, 32, 32], "max": [4, 3, 32, 32]}
    assert b.info["strongly_typed"] and b.info["sparse_weights"] is False
    assert (tmp_path / "cache.timing").stat().st_size > 0


@needs_trt
# (True, True) is what a Jetson runs with --backend tensorrt:graph: mapped I/O buffers inside a captured graph.
@pytest.mark.parametrize("zero_copy,cuda_graph", [(False, False), (True, False), (False, True), (True, True)])
def test_runner_matches_onnxruntime_at_every_batch(built_bundle, zero_copy, cuda_graph):
    from edgemm.feeds import synthesize

    path, _ = built_bundle
    bundle = load_bundle(path)
    runner = TensorRTRunner.from_bundle(bundle, zero_copy=zero_copy, cuda_graph=cuda_graph)
    with runner:
        assert runner.zero_copy is zero_copy and runner.cuda_graph is cuda_graph
        for batch in (1, 3, 1, 4):  # shape changes re-set input shapes (and recapture the graph)
            feed = synthesize(runner.input_metadata(), bundle.manifest.graphs["model"], batch=batch, seed=batch)
            out = runner.infer(feed)["logits"]
            assert out.shape == (batch, 10)
            np.testing.assert_allclose(out, _ort_outputs(path, feed), rtol=2e-2, atol=2e-2)  # TF32 convs
            bd = runner.last_breakdown
            assert set(bd) == {"h2d", "compute", "d2h"} and bd["compute"] > 0 and min(bd.values()) >= 0
    assert "tensorrt" in runner.describe()


@needs_trt
def test_shape_outside_the_profile_is_a_clear_error(built_bundle):
    path, _ = built_bundle
    with TensorRTRunner.from_bundle(load_bundle(path)) as runner:
        feed = {"video": np.zeros((5, 3, 32, 32), np.float32), "audio": np.zeros((5, 1, 64, 98), np.float32)}
        with pytest.raises(EdgemmError, match=r"the engine was built for shapes from \(1, 3, 32, 32\) to \(4, 3, 32, 32\)"):
            runner.infer(feed)


@needs_trt
def test_engine_from_another_tensorrt_version_is_refused_on_activate(built_bundle, tmp_path):
    path, b = built_bundle
    bundle = load_bundle(path)
    manifest = bundle.manifest
    manifest.graphs["model"].engine = {**b.info, "tensorrt_version": "9.0.0"}
    stale = write_bundle(manifest, {"model.onnx": bundle.load_graph("model"), b.file: b.plan}, tmp_path / "stale.edgemm")
    with pytest.raises(EdgemmError, match="Built with TensorRT 9.0.0.*Rebuild it here: edgemm convert"):
        TensorRTRunner.from_bundle(load_bundle(stale)).activate()


@needs_trt
def test_sparse_weights_are_turned_on_for_a_2_4_pruned_graph(tmp_path):
    rng = np.random.default_rng(2)
    model = _conv_gemm_model(_prune_2_4(rng.standard_normal((16, 8, 3, 3)), 1), rng.standard_normal((4, 16)))
    onnx.save(model, str(tmp_path / "sparse.onnx"))
    b = trt_build.build_engines(tmp_path / "sparse.onnx", EngineOptions(timing_cache=False))["model"]
    assert b.info["sparse_weights"] is True and "2:4" in b.info["sparse_reason"]


@needs_trt
def test_cli_bench_on_tensorrt_prints_the_trtexec_split(built_bundle, tmp_path):
    path, _ = built_bundle
    out = tmp_path / "bench.json"
    r = run_cli("bench", path, "--backend", "tensorrt", "--backend", "onnxruntime", "--duration", "1",
                "--json", out)
    assert r.returncode == 0, r.stderr
    assert "h2d: median" in r.stdout and "compute: median" in r.stdout
    doc = json.loads(out.read_text())
    assert set(doc["results"][0]["breakdown_ms"]) == {"h2d", "compute", "d2h"}


def test_io_mode_choice_keeps_the_faster_and_says_so():
    """Jetson: zero-copy reads uncached pinned memory; where kernels re-read their input a copy wins. The
    runner times both at the first inference and keeps the lower median (zero-copy on a tie)."""
    from edgemm.runners.tensorrt import faster_io_mode

    slow_reads = faster_io_mode([2.1, 2.0, 9.0, 2.2, 2.05], [1.4, 1.5, 1.45, 1.6, 8.0])
    assert slow_reads == {"chosen": "copy", "zero_copy_ms": 2.1, "copy_ms": 1.5, "trials": 5}
    assert faster_io_mode([0.5, 0.6, 0.55], [0.9, 0.8, 0.85])["chosen"] == "zero-copy"
    assert faster_io_mode([1.0], [1.0])["chosen"] == "zero-copy"


def test_describe_reports_the_measured_io_choice_and_dla(tmp_path):
    from edgemm.runners.cuda import DeviceInfo
    from edgemm.runners.tensorrt import TensorRTRunner, faster_io_mode

    r = TensorRTRunner(b"plan", engine_info={"dla_core": 1}, spin_wait=True)
    r.device = DeviceInfo(0, "Orin", (8, 7), 16, 8 * 2**30, True, "cuda-python", 12060)
    r.trt_version = "10.3.0"
    r.io_choice = faster_io_mode([2.0], [1.5])
    text = r.describe()
    assert "copy (measured: zero-copy 2.000 ms, copy 1.500 ms)" in text
    assert "spin-wait" in text and "DLA core 1" in text
