"""The transforms the manifest names, checked against direct computations."""

from __future__ import annotations

import numpy as np
import pytest

from edgemm.bundle import AudioPreprocess, InputSpec, VideoPreprocess
from edgemm.media import read_wav, write_wav
from edgemm.preprocess import log_mel, mel_filterbank, preprocess_audio, preprocess_video, resample


def _video_spec(**kw):
    layout = kw.pop("layout", "NCHW")
    dtype = kw.pop("dtype", "float32")
    return InputSpec("video", "video", dtype, [], layout, VideoPreprocess(**kw))


def test_video_normalisation_and_colour_order():
    frame = np.zeros((4, 6, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 10, 20, 30  # B, G, R
    spec = _video_spec(size=(4, 6), color="rgb", scale=1.0, mean=(1.0, 2.0, 3.0), std=(2.0, 2.0, 2.0))
    x = preprocess_video(frame, spec)
    assert x.shape == (1, 3, 4, 6) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], [(30 - 1) / 2, (20 - 2) / 2, (10 - 3) / 2])
    bgr = preprocess_video(frame, _video_spec(size=(4, 6), color="bgr", scale=1.0))
    np.testing.assert_allclose(bgr[0, :, 0, 0], [10, 20, 30])


def test_video_resize_layouts_and_frame_stacking():
    frames = [np.full((72, 128, 3), i * 40, np.uint8) for i in range(4)]
    x = preprocess_video(frames, _video_spec(size=(36, 64), frames=3, layout="NTCHW"))
    assert x.shape == (1, 3, 3, 36, 64)
    np.testing.assert_allclose(x[0, :, 0, 0, 0], np.array([40, 80, 120]) / 255.0, rtol=1e-6)  # last 3, oldest first
    nhwc = preprocess_video(frames[-1], _video_spec(size=(36, 64), layout="NHWC"))
    assert nhwc.shape == (1, 36, 64, 3)
    short = preprocess_video(frames[:1], _video_spec(size=(36, 64), frames=3, layout="NCTHW"))
    assert short.shape == (1, 3, 3, 36, 64)  # too few frames at start-up: the oldest is repeated
    gray = preprocess_video(frames[-1], _video_spec(size=(36, 64), color="gray", mean=(0.0,), std=(1.0,)))
    assert gray.shape == (1, 1, 36, 64)
    u8 = preprocess_video(frames[-1], _video_spec(size=(36, 64), dtype="uint8", scale=1.0))
    assert u8.dtype == np.uint8 and u8.max() == 120


def test_log_mel_peaks_at_the_tone_frequency():
    sr = 16000
    pre = AudioPreprocess(sample_rate=sr, window_s=1.0, n_mels=64)
    t = np.arange(sr) / sr
    for freq in (300.0, 2000.0):
        mel = log_mel(np.sin(2 * np.pi * freq * t).astype(np.float32), pre)
        assert mel.shape == (64, pre.n_frames)
        fb = mel_filterbank(sr, pre.n_fft, 64, 0.0, sr / 2)
        centre_hz = (fb.argmax(axis=1) * sr / pre.n_fft)
        peak_band = int(mel.mean(axis=1).argmax())
        assert abs(centre_hz[peak_band] - freq) < 0.15 * freq + 40


def test_audio_window_is_the_last_samples_and_padded():
    spec = InputSpec("audio", "audio", "float32", [], "NS", AudioPreprocess(feature="waveform", window_s=0.5))
    wave = np.arange(16000, dtype=np.float32) / 16000
    x = preprocess_audio(wave, spec)
    assert x.shape == (1, 8000)
    np.testing.assert_allclose(x[0, -1], wave[-1])
    short = preprocess_audio(wave[:100], spec)
    assert np.all(short[0, :-100] == 0) and short[0, -1] == wave[99]


def test_wav_roundtrip_and_resample(tmp_path):
    sr = 22050
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(sr) / sr)).astype(np.float32)
    write_wav(tmp_path / "a.wav", tone, sr)
    back, rate = read_wav(tmp_path / "a.wav")
    assert rate == sr and np.max(np.abs(back - tone)) < 1e-3
    down = resample(back, sr, 16000)
    assert abs(len(down) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(down))
    assert abs(spectrum.argmax() * 16000 / len(down) - 440) < 5


def test_float_wav_is_read(tmp_path):
    import struct

    data = np.linspace(-0.5, 0.5, 100).astype("<f4")
    fmt = struct.pack("<HHIIHH", 3, 1, 8000, 8000 * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", data.nbytes) + data.tobytes()
    (tmp_path / "f.wav").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    samples, rate = read_wav(tmp_path / "f.wav")
    assert rate == 8000 and np.allclose(samples, data)


@pytest.mark.parametrize("tool,args", [
    ("sox", ["-b", "24", "-e", "signed-integer"]),
    ("sox", ["-c", "2", "-b", "32", "-e", "signed-integer"]),
    ("ffmpeg", ["-c:a", "pcm_s24le"]),
    ("ffmpeg", ["-c:a", "pcm_f32le"]),
    ("ffmpeg", ["-c:a", "pcm_f64le"]),
], ids=["sox-s24", "sox-s32-stereo", "ffmpeg-s24", "ffmpeg-f32", "ffmpeg-f64"])
def test_wave_format_extensible_wavs_just_work(tmp_path, tool, args):
    """What sox and ffmpeg write for 24-bit, 32-bit, float and multichannel audio is WAVE_FORMAT_EXTENSIBLE
    (format tag 0xFFFE, the real format in a sub-format GUID): read as the same sine a 16-bit file holds."""
    import struct
    import subprocess

    from tests.rigs import require

    require(tool)

    def make(path, fmt_args):
        if tool == "sox":
            cmd = ["sox", "-n", "-r", "16000", *fmt_args, str(path), "synth", "0.5", "sine", "440", "vol", "0.5"]
        else:
            cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                   "sine=frequency=440:sample_rate=16000", "-t", "0.5", *fmt_args, str(path)]
        subprocess.run(cmd, check=True, timeout=60)

    path, reference = tmp_path / "x.wav", tmp_path / "ref16.wav"
    make(path, args)
    make(reference, ["-b", "16"] if tool == "sox" else ["-c:a", "pcm_s16le"])  # plain PCM: format tag 1
    raw = path.read_bytes()
    fmt = raw.index(b"fmt ")
    assert struct.unpack("<H", raw[fmt + 8:fmt + 10])[0] == 0xFFFE  # the format this test is about
    samples, rate = read_wav(path)
    expected, _ = read_wav(reference)
    assert rate == 16000 and samples.shape == (8000,) and samples.dtype == np.float32
    assert 0.1 < np.abs(samples).max() < 0.6
    np.testing.assert_allclose(samples, expected, atol=2e-4)


def test_bad_wav(tmp_path):
    from edgemm.errors import EdgemmError

    (tmp_path / "x.wav").write_bytes(b"not a wav file")
    with pytest.raises(EdgemmError, match="x.wav"):
        read_wav(tmp_path / "x.wav")


def test_fast_downscale_stays_close_to_one_step_area_averaging():
    import cv2

    from edgemm.preprocess import resize

    rng = np.random.default_rng(0)
    smooth = cv2.resize(rng.integers(0, 256, (45, 80, 3)).astype(np.uint8), (1280, 720), interpolation=cv2.INTER_CUBIC)
    frame = np.clip(smooth.astype(np.int16) + rng.integers(-20, 20, smooth.shape), 0, 255).astype(np.uint8)
    ref = cv2.resize(frame, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32)
    out = resize(frame, 224, 224)
    assert out.shape == (224, 224, 3)
    assert np.abs(out.astype(np.float32) - ref).mean() < 2.5  # of 255
    # Fine stripes must be averaged away, not aliased (what plain bilinear would do).
    stripes = np.zeros((720, 1280, 3), np.uint8)
    stripes[:, ::2] = 255
    assert np.abs(resize(stripes, 224, 224).astype(np.float32) - 127.5).max() < 8
    assert resize(frame[:100, :100], 224, 224).shape == (224, 224, 3)  # enlarging


# ------------------------------------------------------------------------------------------- resampling

@pytest.mark.parametrize("rates", [(48000, 16000), (44100, 16000), (22050, 16000), (16000, 48000), (8000, 16000)])
def test_resampler_in_blocks_gives_the_one_shot_result(rates):
    from edgemm.preprocess import Resampler

    rin, rout = rates
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, rin // 2 + 37).astype(np.float32)
    whole = resample(x, rin, rout)
    r, parts, i = Resampler(rin, rout), [], 0
    while i < len(x):
        n = int(rng.integers(1, 1500))
        parts.append(r.process(x[i:i + n]))
        i += n
    parts.append(r.process(np.zeros(0, np.float32), final=True))
    blocks = np.concatenate(parts)
    assert len(whole) == len(blocks) == -(-len(x) * rout // rin)  # ceil(len * rout / rin)
    np.testing.assert_allclose(blocks, whole, atol=1e-6)


def test_resampled_tone_matches_the_ideal_sine():
    for rin, rout in ((48000, 16000), (44100, 16000), (16000, 48000)):
        x = 0.5 * np.sin(2 * np.pi * 440 * np.arange(rin) / rin)
        y = resample(x, rin, rout)
        ideal = 0.5 * np.sin(2 * np.pi * 440 * np.arange(len(y)) / rout)  # sample n at n / rout: no delay
        assert np.abs(y - ideal)[200:-200].max() < 1e-3, (rin, rout)


def test_resampling_removes_what_the_lower_rate_cannot_hold():
    """10 kHz at 48 kHz -> 16 kHz (Nyquist 8 kHz) would alias to 6 kHz: the filter removes it (> 40 dB)."""
    x = 0.5 * np.sin(2 * np.pi * 10000 * np.arange(48000) / 48000)
    y = resample(x, 48000, 16000)[200:-200]
    db = 20 * np.log10(np.sqrt(np.mean(y ** 2)) / (0.5 / np.sqrt(2)))
    assert db < -40, db


def test_resampling_lengths_and_timing():
    """Lengths as resample_poly gives them; a click at input sample k lands on output round(k rout / rin)."""
    for rin in (44100, 22050, 48000):
        x = np.zeros(3 * rin + 7, np.float32)
        assert len(resample(x, rin, 16000)) == -(-len(x) * 16000 // rin)
        for k in (1000, 33333, 50001):
            x[:] = 0
            x[k] = 1
            assert int(np.argmax(resample(x, rin, 16000))) == round(k * 16000 / rin), (rin, k)
    assert np.array_equal(resample(np.arange(5, dtype=np.float32), 16000, 16000), np.arange(5))


# --------------------------------------------------------------------------------------------------
# Incremental features: the columns a window shares with the previous one are kept, the rest computed
# --------------------------------------------------------------------------------------------------


def _speech(tmp_path) -> np.ndarray:
    """Real speech: espeak-ng reading a sentence, at 16 kHz, with quiet stretches (skipped without it)."""
    import shutil
    import subprocess

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "seven, three. the cabin is quiet; nine"], check=True, timeout=60)
    x, rate = read_wav(wav)
    return resample(x, rate, 16000)


def _signal(kind: str, tmp_path) -> np.ndarray:
    rng = np.random.default_rng(7)
    if kind == "noise":
        return (0.3 * rng.standard_normal(5 * 16000)).astype(np.float32)
    if kind == "silence_and_clicks":  # exact zeros (the log's floor) next to impulses
        x = np.zeros(4 * 16000, np.float32)
        x[rng.integers(0, x.size, 40)] = 0.9
        return x
    speech = _speech(tmp_path)
    return np.concatenate([speech, 0.01 * rng.standard_normal(16000).astype(np.float32), speech])


@pytest.mark.parametrize("kind", ["noise", "silence_and_clicks", "speech"])
@pytest.mark.parametrize("window_s,n_fft,hop,feature,layout", [
    (1.0, 400, 160, "logmel", "NCMT"),
    (0.5, 512, 128, "logmel", "NMT"),
    (2.0, 1024, 320, "mel", "NCMT"),
    (0.3, 400, 100, "logmel", "NCMT"),
])
def test_feature_stream_matches_the_whole_computation(tmp_path, kind, window_s, n_fft, hop, feature, layout):
    from edgemm.preprocess import AudioFeatureStream

    pre = AudioPreprocess(window_s=window_s, n_fft=n_fft, hop_length=hop, feature=feature, n_mels=40,
                          mean=-3.0, std=4.0)
    spec = InputSpec("audio", "audio", "float32", [], layout, pre)
    x = _signal(kind, tmp_path)
    stream = AudioFeatureStream(spec)
    rng = np.random.default_rng(1)
    n = pre.window_samples
    end, worst = n // 3, 0.0  # starts with a zero-padded window (before the first sample)
    while end < x.size:
        first = end - n
        got = stream(x[max(0, first):end], first, epoch=0)
        want = preprocess_audio(x[max(0, first):end], spec)
        assert got.shape == want.shape and got.dtype == want.dtype
        worst = max(worst, float(np.abs(got - want).max()))
        # Mostly whole hops (as live windows move), sometimes the same window, a shift off the grid or back.
        end += int(rng.choice([hop, 2 * hop, 3 * hop, 7 * hop, 0, hop + 37, -2 * hop], p=[.3, .2, .2, .1, .05, .1, .05]))
    assert worst <= 1e-5
    # Incremental indeed: most columns were taken over, not computed.
    assert stream.reused > stream.computed, (stream.reused, stream.computed)


def test_feature_stream_recomputes_after_a_new_epoch_and_once_a_padded_tail_arrives():
    from edgemm.preprocess import AudioFeatureStream

    pre = AudioPreprocess()
    spec = InputSpec("audio", "audio", "float32", [], "NCMT", pre)
    n, hop, cols = pre.window_samples, pre.hop_length, pre.n_frames
    x = (0.2 * np.random.default_rng(3).standard_normal(3 * n)).astype(np.float32)
    stream = AudioFeatureStream(spec)
    stream(x[:n], 0, epoch=(0, 0))
    assert stream.computed == cols
    stream(x[3 * hop:n + 3 * hop], 3 * hop, epoch=(0, 0))
    assert stream.computed == cols + 3  # three hops on: three new columns
    # A reopened microphone (or a gap) is a new epoch: everything again, even where the index lines up.
    other = x[n:2 * n]
    got = stream(other[3 * hop:], 6 * hop, epoch=(1, 0))
    assert stream.computed == 2 * cols + 3
    np.testing.assert_allclose(got, preprocess_audio(other[3 * hop:], spec), atol=1e-5, rtol=0)
    # The tail of the last window was not there yet (zeros); once it has arrived, the columns over it are
    # computed again, the rest taken over.
    partial = x[:n].copy()
    partial[-700:] = 0.0
    stream(partial, 0, epoch=(2, 0))
    before = stream.computed
    got = stream(x[hop:n + hop], hop, epoch=(2, 0))
    new = stream.computed - before
    assert 1 + 700 // hop <= new <= 1 + (700 + pre.n_fft) // hop + 1
    np.testing.assert_allclose(got, preprocess_audio(x[hop:n + hop], spec), atol=1e-5, rtol=0)
