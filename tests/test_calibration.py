"""Calibration feeds: per-graph feeds from npz and media folders, streamed, checked against each graph."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from edgemm.converters.calibration import CalibrationReader, GraphFeeds
from edgemm.bundle import load_bundle
from edgemm.errors import EdgemmError
from tests.onnx_models import write_av_bundle, write_intermediate_bundle, write_late_bundle


def write_av_npz(folder, files=3, per_file=4, seed=0, video_shape=(3, 32, 32), audio_shape=(1, 64, 98)):
    """npz files keyed by input name (video, audio) with labels, like a user's calibration folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(files):
        np.savez(folder / f"part{i}.npz",
                 video=rng.standard_normal((per_file, *video_shape)).astype(np.float32),
                 audio=rng.standard_normal((per_file, *audio_shape)).astype(np.float32),
                 label=rng.integers(0, 10, per_file))
    return folder


def test_reader_streams_batch_one_feeds_and_rewinds(tmp_path):
    bundle = load_bundle(write_av_bundle(tmp_path / "b"))
    data = write_av_npz(tmp_path / "calib")
    reader = CalibrationReader(GraphFeeds(bundle, data, progress=False), "model")
    feeds = list(iter(reader.get_next, None))
    assert len(feeds) == 12
    assert set(feeds[0]) == {"video", "audio"}
    assert feeds[0]["video"].shape == (1, 3, 32, 32) and feeds[0]["video"].dtype == np.float32
    with np.load(data / "part1.npz") as d:
        np.testing.assert_array_equal(feeds[5]["audio"][0], d["audio"][1])  # file order, then sample order
    assert reader.get_next() is None
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["video"], feeds[0]["video"])


def test_limit_and_reader_protocol(tmp_path):
    bundle = load_bundle(write_av_bundle(tmp_path / "b"))
    data = write_av_npz(tmp_path / "calib")
    reader = CalibrationReader(GraphFeeds(bundle, data, limit=7, progress=False), "model")
    assert len(list(iter(reader.get_next, None))) == 7
    reader.rewind()
    assert reader.get_next() is not None
    from onnxruntime.quantization import CalibrationDataReader

    assert isinstance(reader, CalibrationDataReader)  # what quantize_static accepts
    assert reader  # plain truthiness (ORT's base class would route it through a __len__ that raises)


def test_one_pass_gives_every_graph_its_feed(tmp_path):
    """iter_feeds: per sample, the feeds of every graph, the same as each graph's own stream."""
    bundle = load_bundle(write_intermediate_bundle(tmp_path / "mid"))
    data = write_av_npz(tmp_path / "calib", files=2, per_file=2)
    with GraphFeeds(bundle, data, progress=False) as gf:
        together = list(gf.iter_feeds())
        alone = {g: list(gf.iter_graph(g)) for g in ("video_encoder", "audio_encoder", "head")}
    assert len(together) == 4 and set(together[0]) == set(alone)
    for g, feeds in alone.items():
        for i, feed in enumerate(feeds):
            assert set(feed) == set(together[i][g])
            for k in feed:
                np.testing.assert_array_equal(feed[k], together[i][g][k])


def test_files_are_read_only_as_needed(tmp_path):
    """Streaming: with a limit, files past it are never opened (here the third one is not even an npz)."""
    bundle = load_bundle(write_av_bundle(tmp_path / "b"))
    data = write_av_npz(tmp_path / "calib", files=2)
    (data / "part9.npz").write_bytes(b"not an npz")
    feeds = list(GraphFeeds(bundle, data, limit=8, progress=False).iter_graph("model"))
    assert len(feeds) == 8
    with pytest.raises(EdgemmError, match="part9.npz"):
        list(GraphFeeds(bundle, data, limit=9, progress=False).iter_graph("model"))


def test_limit_takes_files_spread_over_the_folder(tmp_path):
    """A limit below the folder's files takes them from all over it, not the first ones: a folder named
    day_* then night_* calibrates on both (the first files would be day only, and the night's range lost)."""
    bundle = load_bundle(write_av_bundle(tmp_path / "b"))
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for cond, gain in (("day", 1.0), ("night", 8.0)):
        for i in range(6):
            np.savez(folder / f"{cond}_{i}.npz", video=gain * rng.random((1, 3, 32, 32), np.float32),
                     audio=rng.standard_normal((1, 1, 64, 98)).astype(np.float32))
    gf = GraphFeeds(bundle, folder, limit=4, progress=False)
    assert [s.name for s in gf.samples()] == ["day_0.npz[0]", "day_3.npz[0]", "night_0.npz[0]", "night_3.npz[0]"]
    assert max(float(f["video"].max()) for f in gf.iter_graph("model")) > 1  # the night files' range is seen
    assert len(list(GraphFeeds(bundle, folder, limit=12, progress=False).samples())) == 12  # all: name order


def test_limit_takes_rows_spread_over_one_npz_file(tmp_path):
    """One .npz of day rows then night rows (what --calib data.npz often is) with a limit below its rows: the
    rows taken are spread over the file, not its first ones; over several files, over all their rows."""
    bundle = load_bundle(write_av_bundle(tmp_path / "b"))
    rng = np.random.default_rng(0)
    video = rng.random((12, 3, 32, 32), np.float32)
    video[6:] *= 8.0  # the night half
    one = tmp_path / "calib.npz"
    np.savez(one, video=video, audio=rng.standard_normal((12, 1, 64, 98)).astype(np.float32))
    gf = GraphFeeds(bundle, one, limit=4, progress=False)
    assert [s.name for s in gf.samples()] == ["calib.npz[0]", "calib.npz[3]", "calib.npz[6]", "calib.npz[9]"]
    assert max(float(f["video"].max()) for f in gf.iter_graph("model")) > 1  # the night rows' range is seen
    folder = tmp_path / "two"
    folder.mkdir()
    for name, rows in (("a", slice(0, 6)), ("b", slice(6, 12))):
        np.savez_compressed(folder / f"{name}.npz", video=video[rows], audio=np.zeros((6, 1, 64, 98), np.float32))
    names = [s.name for s in GraphFeeds(bundle, folder, limit=4, progress=False).samples()]
    assert names == ["a.npz[0]", "a.npz[3]", "b.npz[0]", "b.npz[3]"]
    assert len(list(GraphFeeds(bundle, one, limit=12, progress=False).samples())) == 12  # all, in order
    # Validation with a limit (convert's report and closeness floor, `edgemm eval --limit`) takes the same rows,
    # in batches.
    from edgemm.converters.data import DataFolder
    from edgemm.converters.validate import _chunks

    chunks = list(_chunks(DataFolder(one, bundle, "Evaluation data"), limit=4, batch=3))
    assert [c.batch for c in chunks] == [3, 1]
    np.testing.assert_array_equal(np.concatenate([c.tensors["video"] for c in chunks]), video[[0, 3, 6, 9]])


def test_missing_empty_and_mismatched_folders(tmp_path):
    bundle = load_bundle(write_av_bundle(tmp_path / "b"))
    with pytest.raises(EdgemmError, match="Not found"):
        GraphFeeds(bundle, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgemmError, match="Is empty"):
        GraphFeeds(bundle, tmp_path / "empty")
    bad = write_av_npz(tmp_path / "bad", files=1, video_shape=(3, 16, 16))
    with pytest.raises(EdgemmError) as exc:
        list(GraphFeeds(bundle, bad, progress=False).iter_graph("model"))
    msg = str(exc.value)
    assert "part0.npz" in msg and "video" in msg and "(1, 3, 16, 16)" in msg and "\n" not in msg
    ints = tmp_path / "ints"
    ints.mkdir()
    np.savez(ints / "a.npz", video=np.zeros((1, 3, 32, 32), np.int32), audio=np.zeros((1, 1, 64, 98), np.float32))
    with pytest.raises(EdgemmError, match="dtype int32"):
        list(GraphFeeds(bundle, ints, progress=False).iter_graph("model"))
    with pytest.raises(EdgemmError, match="limit"):
        GraphFeeds(bundle, ints, limit=0)


def test_float64_data_is_cast_to_float32(tmp_path):
    bundle = load_bundle(write_av_bundle(tmp_path / "b"))
    folder = tmp_path / "f64"
    folder.mkdir()
    np.savez(folder / "a.npz", video=np.zeros((2, 3, 32, 32)), audio=np.zeros((2, 1, 64, 98)))
    feeds = list(GraphFeeds(bundle, folder, progress=False).iter_graph("model"))
    assert feeds[0]["video"].dtype == np.float32 and len(feeds) == 2


def test_intermediate_fusion_head_gets_encoder_embeddings(tmp_path):
    root = write_intermediate_bundle(tmp_path / "mid")
    bundle = load_bundle(root)
    data = write_av_npz(tmp_path / "calib", files=1, per_file=3)
    gf = GraphFeeds(bundle, data, progress=False)
    encoders = list(gf.iter_graph("video_encoder"))
    assert set(encoders[0]) == {"video"}
    heads = list(gf.iter_graph("head"))
    gf.close()
    assert set(heads[0]) == {"video_emb", "audio_emb", "video_present", "audio_present"}
    np.testing.assert_array_equal(heads[1]["video_present"], np.ones((1, 1), np.float32))
    sess = ort.InferenceSession(str(root / "video_encoder.onnx"), providers=["CPUExecutionProvider"])
    expected = sess.run(None, {"video": encoders[1]["video"]})[0]
    np.testing.assert_allclose(heads[1]["video_emb"], expected, rtol=1e-6)


def test_late_fusion_members_get_their_own_inputs(tmp_path):
    bundle = load_bundle(write_late_bundle(tmp_path / "late"))
    data = write_av_npz(tmp_path / "calib", files=1, per_file=2)
    gf = GraphFeeds(bundle, data, progress=False)
    assert set(next(gf.iter_graph("audio_model"))) == {"audio"}
    assert set(next(gf.iter_graph("video_model"))) == {"video"}


def test_media_folder_goes_through_the_bundle_preprocessing(tmp_path):
    import cv2

    from edgemm.media import read_wav, write_wav
    from edgemm.preprocess import preprocess_audio, preprocess_video

    bundle = load_bundle(write_av_bundle(tmp_path / "b"))
    folder = tmp_path / "media"
    folder.mkdir()
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(folder / "s1.png"), img)
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    write_wav(folder / "s1.wav", wave, 16000)
    feed = next(GraphFeeds(bundle, folder, progress=False).iter_graph("model"))
    spec = {s.name: s for s in bundle.manifest.graphs["model"].inputs}
    np.testing.assert_allclose(feed["video"], preprocess_video(img, spec["video"]), atol=1e-6)
    # the WAV is longer than the window: its middle is used (as stored: 16-bit PCM)
    wave, _ = read_wav(folder / "s1.wav")
    n = spec["audio"].preprocess.window_samples
    mid = (wave.size - n) // 2
    np.testing.assert_allclose(feed["audio"], preprocess_audio(wave[mid:mid + n], spec["audio"]), atol=1e-4)


def test_float64_npz_is_cast_where_the_folder_is_read(tmp_path):
    """np.savez of plain numpy arrays gives float64: every reader of the folder gets the input's dtype."""
    from edgemm.converters.data import DataFolder

    bundle = load_bundle(write_av_bundle(tmp_path / "b"))
    folder = tmp_path / "f64"
    folder.mkdir()
    np.savez(folder / "a.npz", video=np.zeros((2, 3, 32, 32)), audio=np.zeros((2, 1, 64, 98)), label=np.arange(2))
    sample = next(DataFolder(folder, bundle).samples())
    assert sample.tensors["video"].dtype == np.float32 and sample.tensors["audio"].dtype == np.float32
    assert sample.labels["logits"].dtype == np.int64  # labels are not inputs: left alone


def _write_video(path, n, size=(64, 48)):
    """A clip whose frame i shows the number i (MJPG: every frame decodes on its own)."""
    import cv2

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    for i in range(n):
        img = np.full((size[1], size[0], 3), (i * 8) % 256, np.uint8)
        cv2.putText(img, str(i), (5, 40), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
        w.write(img)
    w.release()


def test_video_reading_seeks_to_the_frames_it_needs(tmp_path):
    from edgemm.media import read_video_frames

    clip = tmp_path / "clip.avi"
    _write_video(clip, 31)
    every = read_video_frames(clip)
    assert len(every) == 31
    middle = read_video_frames(clip, max_frames=4, start="middle")
    assert len(middle) == 4
    for got, want in zip(middle, every[13:17]):  # (31 - 4) // 2 = 13
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(read_video_frames(clip, max_frames=2, start=29)[1], every[30])
    assert len(read_video_frames(clip, max_frames=8, start=28)) == 3  # the clip ends first
    with pytest.raises(EdgemmError, match="No frames"):
        read_video_frames(clip, max_frames=2, start=40)
    assert len(read_video_frames(clip, max_frames=100, start="middle")) == 31  # shorter than asked: all of it


def test_media_folder_video_uses_the_middle_frames_and_short_label_rows(tmp_path):
    """A video in a media folder gives its middle frames; a labels.csv row without a value is no label."""
    from edgemm.converters.data import DataFolder
    from edgemm.media import read_video_frames, write_wav
    from edgemm.preprocess import preprocess_video

    bundle = load_bundle(write_av_bundle(tmp_path / "b"))
    folder = tmp_path / "media"
    folder.mkdir()
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    for stem in ("s1", "s2"):
        _write_video(folder / f"{stem}.avi", 21)
        write_wav(folder / f"{stem}.wav", wave, 16000)
    (folder / "labels.csv").write_text("name,label\ns1,3\ns2\n")  # s2's row is short: no label
    samples = list(DataFolder(folder, bundle).samples())
    spec = {s.name: s for s in bundle.manifest.graphs["model"].inputs}["video"]
    n = spec.preprocess.frames
    every = read_video_frames(folder / "s1.avi")
    start = (len(every) - n) // 2
    np.testing.assert_allclose(samples[0].tensors["video"], preprocess_video(every[start:start + n], spec), atol=1e-6)
    assert samples[0].labels["logits"].tolist() == [3]
    assert samples[1].labels == {}
