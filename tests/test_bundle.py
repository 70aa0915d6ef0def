"""The model bundle: manifest validation naming the field, inference from plain ONNX, atomic writes."""

from __future__ import annotations

import copy
import json
import math

import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgemm.bundle import (AudioPreprocess, atomic_output_dir, load_bundle, manifest_from_dict,
                           write_bundle)
from edgemm.errors import EdgemmError
from edgemm.manifest_inference import infer_manifest
from tests import onnx_models


def test_bundle_loads_and_matches_graph(av_bundle):
    b = load_bundle(av_bundle)
    g = b.manifest.graphs["model"]
    assert [i.name for i in g.inputs] == ["video", "audio"]
    assert g.input("video").preprocess.mean == (0.5, 0.5, 0.5)
    assert g.input("audio").preprocess.n_mels == 64
    assert g.output("logits").labels == [str(i) for i in range(10)]
    assert b.manifest.modalities() == ["video", "audio"]
    assert not b.notes


def test_plain_onnx_manifest_is_inferred_with_notes(av_onnx):
    b = load_bundle(av_onnx)
    assert b.manifest.inferred
    g = b.manifest.graphs["model"]
    video, audio = g.input("video"), g.input("audio")
    assert (video.modality, video.layout, video.preprocess.size) == ("video", "NCHW", (32, 32))
    assert (audio.modality, audio.layout, audio.preprocess.n_mels) == ("audio", "NCMT", 64)
    # 98 frames at hop 160 and n_fft 400 is a 0.995 s window: the inverse of AudioPreprocess.n_frames
    assert audio.preprocess.n_frames == 98
    assert g.output("logits").task == "classification" and len(g.output("logits").labels) == 10
    assert any("video assumed RGB" in n for n in b.notes)


def test_inference_by_shape_and_unknown_inputs():
    model = onnx_models.mlp_model(input_name="sensor_x")
    manifest, notes = infer_manifest(model, "mlp.onnx")
    spec = manifest.graphs["model"].inputs[0]
    assert spec.modality == "other"
    assert any("could not tell its modality" in n and "sensor_x" in n for n in notes)
    odd, notes = infer_manifest(onnx_models.odd_inputs_model(), "odd.onnx")
    mods = {i.name: i.modality for i in odd.graphs["model"].inputs}
    assert mods == {"tokens": "other", "gain": "other", "hidden_state": "state"}


@pytest.mark.parametrize("mutate, field", [
    (lambda m: m["graphs"]["model"]["inputs"][0].update(dtype="flt"), "graphs.model.inputs[0].dtype"),
    (lambda m: m["graphs"]["model"]["inputs"][1].update(modality="smell"), "graphs.model.inputs[1].modality"),
    (lambda m: m["graphs"]["model"]["inputs"][0]["preprocess"].update(size=[32]), "graphs.model.inputs[0].preprocess.size"),
    (lambda m: m["graphs"]["model"]["inputs"][0]["preprocess"].update(std=[0, 1, 1]), "graphs.model.inputs[0].preprocess.std"),
    (lambda m: m["graphs"]["model"]["inputs"][1]["preprocess"].update(sample_rate=-1), "graphs.model.inputs[1].preprocess.sample_rate"),
    (lambda m: m["graphs"]["model"]["outputs"][0].update(labels=["a", "b"]), "graphs.model.outputs[0].labels"),
    (lambda m: m["graphs"]["model"].pop("file"), "graphs.model.file"),
    (lambda m: m["fusion"].update(form="fancy"), "fusion.form"),
    (lambda m: m.update(version=99), "version"),
    (lambda m: m["provenance"].update(precision="int4"), "provenance.precision"),
])
def test_manifest_errors_name_the_field(mutate, field):
    m = onnx_models.av_manifest()
    mutate(m)
    with pytest.raises(EdgemmError) as err:
        manifest_from_dict(m, "manifest.json")
    msg = str(err.value)
    assert f"manifest.json: {field}:" in msg and "\n" not in msg


def test_manifest_must_match_the_onnx_graph(av_bundle):
    m = json.loads((av_bundle / "manifest.json").read_text())
    m["graphs"]["model"]["inputs"][1]["name"] = "sound"
    (av_bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EdgemmError, match=r"graphs.model.inputs: does not match model.onnx"):
        load_bundle(av_bundle)


def test_fusion_forms_validate_graph_references(tmp_path):
    folder = onnx_models.write_intermediate_bundle(tmp_path / "inter")
    b = load_bundle(folder)
    assert b.manifest.fusion.form == "intermediate" and b.manifest.fusion.rates_hz == {"video": 15.0, "audio": 5.0}
    m = json.loads((folder / "manifest.json").read_text())
    bad = copy.deepcopy(m)
    bad["fusion"]["head"] = "nope"
    with pytest.raises(EdgemmError, match="fusion.head"):
        manifest_from_dict(bad)
    bad = copy.deepcopy(m)
    bad["graphs"]["head"]["inputs"][0]["source"] = "video_encoder.missing"
    with pytest.raises(EdgemmError, match=r"inputs\[0\].source"):
        manifest_from_dict(bad)


@pytest.mark.parametrize("content, expect", [
    (None, "File not found"),
    (b"", "File is empty"),
    (b"this is not a protobuf at all \xff\xfe", "Not a readable ONNX model"),
])
def test_bad_model_files(tmp_path, content, expect):
    path = tmp_path / "m.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(EdgemmError, match=expect):
        load_bundle(path)


def test_truncated_model(tmp_path, av_onnx):
    data = av_onnx.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(EdgemmError, match="cut.onnx"):
        load_bundle(cut)


def test_malformed_manifest_json(av_bundle):
    (av_bundle / "manifest.json").write_text('{"graphs": ')
    with pytest.raises(EdgemmError, match="not valid JSON"):
        load_bundle(av_bundle)


def test_write_bundle_roundtrip_and_refuses_existing(tmp_path, av_bundle):
    b = load_bundle(av_bundle)
    out = tmp_path / "copy.edgemm"
    write_bundle(b.manifest, {"model.onnx": b.load_graph()}, out)
    again = load_bundle(out)
    assert again.manifest.to_dict() == b.manifest.to_dict()
    with pytest.raises(EdgemmError, match="Already exists"):
        write_bundle(b.manifest, {"model.onnx": b.load_graph()}, out)
    write_bundle(b.manifest, {"model.onnx": b.load_graph()}, out, force=True)
    assert load_bundle(out).name == b.name


def test_failed_write_leaves_nothing(tmp_path, av_bundle):
    b = load_bundle(av_bundle)
    out = tmp_path / "never.edgemm"
    # A manifest that names a file which is not written: the re-validation fails, nothing is left.
    with pytest.raises(EdgemmError):
        write_bundle(b.manifest, {"other.onnx": b.load_graph()}, out)
    assert not out.exists()
    assert not list(tmp_path.glob(".never.edgemm*"))


def test_atomic_output_dir_keeps_old_on_failure(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, force=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("conversion failed")
    assert (out / "keep.txt").read_text() == "old" and not (out / "new.txt").exists()


def test_audio_window_frames_consistent():
    pre = AudioPreprocess(sample_rate=16000, window_s=1.0, n_fft=400, hop_length=160)
    assert pre.window_samples == 16000 and pre.n_frames == 98


@pytest.mark.parametrize("mutate, field", [
    (lambda m: m["graphs"]["model"]["inputs"][0]["preprocess"].update(size=[64, 64]), "inputs[0].preprocess.size"),
    (lambda m: m["graphs"]["model"]["inputs"][0]["preprocess"].update(color="gray", mean=[0], std=[1]),
     "inputs[0].preprocess.color"),
    (lambda m: m["graphs"]["model"]["inputs"][1]["preprocess"].update(n_mels=40), "inputs[1].preprocess.n_mels"),
    (lambda m: m["graphs"]["model"]["inputs"][1]["preprocess"].update(window_s=2.0), "inputs[1].preprocess.window_s"),
    (lambda m: m["graphs"]["model"]["inputs"][0].update(shape=["N", 3, 99, 99]), "inputs[0].shape"),
    (lambda m: m["graphs"]["model"]["inputs"][0].update(layout="NTCHW"), "inputs[0].layout"),
])
def test_preprocessing_must_fit_the_graph(av_bundle, mutate, field):
    """What the preprocessing produces is checked against the graph's fixed dims at load, not at the first frame."""
    m = json.loads((av_bundle / "manifest.json").read_text())
    mutate(m)
    (av_bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EdgemmError) as err:
        load_bundle(av_bundle)
    assert f"graphs.model.{field}:" in str(err.value)


@pytest.mark.parametrize("fusion, field", [
    ({"form": "late", "members": {}}, "fusion.members"),
    ({"form": "late", "members": {"video": ["x"]}}, "fusion.members"),
    ({"form": "intermediate", "encoders": {}, "head": "head"}, "fusion.encoders"),
    ({"form": "intermediate", "encoders": {"video": "video_encoder"}, "head": "head", "max_age_s": -1},
     "fusion.max_age_s"),
])
def test_fusion_maps_are_checked(tmp_path, fusion, field):
    folder = onnx_models.write_intermediate_bundle(tmp_path / "inter")
    m = json.loads((folder / "manifest.json").read_text())
    m["fusion"] = fusion
    with pytest.raises(EdgemmError, match=field.replace(".", r"\.")):
        manifest_from_dict(m)


def test_binary_manifest(av_bundle):
    (av_bundle / "manifest.json").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(EdgemmError, match="not UTF-8"):
        load_bundle(av_bundle)


def test_graph_files_may_sit_in_subfolders(tmp_path, av_bundle):
    b = load_bundle(av_bundle)
    b.manifest.graphs["model"].file = "graphs/model.onnx"
    out = write_bundle(b.manifest, {"graphs/model.onnx": load_bundle(av_bundle).load_graph()}, tmp_path / "sub.edgemm")
    assert load_bundle(out).graph_path().parent.name == "graphs"


def test_bundle_is_readable_by_others_under_the_umask(tmp_path, av_bundle):
    """mkdtemp makes private folders; a bundle converted as root must stay readable by the service user."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        b = load_bundle(av_bundle)
        out = write_bundle(b.manifest, {"model.onnx": b.load_graph()}, tmp_path / "shared.edgemm")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755


def test_a_plain_onnx_with_its_manifest_beside_it_uses_the_manifest(tmp_path, cli):
    """eval on PNGs lost normalisation and labels when the .onnx of a bundle was named instead of the folder."""
    folder = onnx_models.write_av_bundle(tmp_path / "av")
    by_file, by_folder = load_bundle(folder / "model.onnx"), load_bundle(folder)
    assert not by_file.manifest.inferred
    assert by_file.manifest.to_dict() == by_folder.manifest.to_dict()
    proc = cli("info", folder / "model.onnx")
    assert proc.returncode == 0 and "manifest inferred" not in proc.stdout and "WARNING" not in proc.stderr


def test_a_manifest_beside_that_does_not_describe_the_file_is_warned_about(tmp_path, cli):
    inter = onnx_models.write_intermediate_bundle(tmp_path / "inter")
    proc = cli("info", inter / "head.onnx")
    assert proc.returncode == 0, proc.stderr
    assert "head.onnx is one of 3 graphs" in proc.stderr and "manifest inferred" in proc.stdout
    folder = onnx_models.write_av_bundle(tmp_path / "av")
    onnx.save(onnx_models.mlp_model(), str(folder / "other.onnx"))
    proc = cli("bench", folder / "other.onnx", "--iterations", 2, "--warmup", 0)
    assert proc.returncode == 0 and "does not describe other.onnx" in proc.stderr
    (folder / "manifest.json").write_text("{not json")
    assert load_bundle(folder / "model.onnx").manifest.inferred


@pytest.mark.parametrize("where, key, value", [
    (0, "scale", float("nan")), (0, "mean", [float("nan"), 0.5, 0.5]), (0, "std", float("inf")),
    (1, "window_s", float("nan")), (1, "mean", float("nan")), (1, "std", float("nan")),
    (1, "window_s", 1e300), (1, "sample_rate", 10**30),
])
def test_manifest_numbers_must_be_finite_and_in_range(where, key, value):
    """NaN passes every `<= 0` check: window_s NaN was a traceback, scale/mean/std NaN made every score null."""
    m = onnx_models.av_manifest()
    m["graphs"]["model"]["inputs"][where]["preprocess"][key] = value
    # Through JSON as a user's file would come (Python's json reads NaN and Infinity).
    with pytest.raises(EdgemmError) as err:
        manifest_from_dict(json.loads(json.dumps(m)), "manifest.json")
    msg = str(err.value)
    assert f"inputs[{where}].preprocess.{key}:" in msg and "\n" not in msg


_ODD_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-10**40, max_value=10**40),
    st.sampled_from([0, -1, 1, 2**63, 1e308, -0.0, 5e-324]), st.booleans(), st.none(), st.text(max_size=4),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4),
)
_NUMERIC_FIELDS = {0: ("size", "scale", "mean", "std", "frames", "fps"),
                   1: ("sample_rate", "window_s", "n_fft", "hop_length", "n_mels", "fmin", "fmax", "log_offset",
                       "mean", "std")}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # a loaded machine
@given(data=st.data())
def test_manifest_numbers_property_one_line_error_or_valid(data):
    """Any mix of NaN, infinities, negatives, huge values and wrong types in the numeric preprocessing
    fields: a one-line EdgemmError naming the field, or a manifest whose derived sizes can be computed."""
    m = onnx_models.av_manifest()
    for where, keys in _NUMERIC_FIELDS.items():
        for key in data.draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
            m["graphs"]["model"]["inputs"][where]["preprocess"][key] = data.draw(_ODD_NUMBERS)
    try:
        man = manifest_from_dict(json.loads(json.dumps(m)), "manifest.json")
    except EdgemmError as err:
        assert "\n" not in str(err) and str(err).startswith("manifest.json: ")
        return
    for _, spec in man.all_inputs():
        spec.axis_sizes()
        pre = spec.preprocess
        numbers = [getattr(pre, f) for f in _NUMERIC_FIELDS[0 if spec.modality == "video" else 1]]
        flat = [x for v in numbers if v is not None for x in (v if isinstance(v, tuple) else (v,))]
        assert all(math.isfinite(x) for x in flat), pre
