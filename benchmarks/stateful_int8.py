"""A streaming VAD's INT8 against its FP32 over held-out speech, framed as its own runtime frames it.

The Silero v6 VAD in faster-whisper takes 576 samples: 64 of context (the end of the previous frame) and 512
new ones, a 32 ms frame at 16 kHz, with its LSTM state (h, c) carried from frame to frame. This runs FP32 and
each converted bundle side by side that way over every WAV of a folder (each WAV one stream, state from zeros),
each model carrying its own state, and prints per bundle: the cosine of the speech-probability sequence to
FP32's, the largest difference, and the share of 32 ms frames whose speech / non-speech decision at 0.5
agrees with FP32's.

    python benchmarks/stateful_int8.py --make-speech build/heldout     # espeak-ng phrases not in the zoo's set
    python benchmarks/stateful_int8.py MODEL.onnx OUT_INT8 [OUT2 ...] --wavs build/heldout
    python benchmarks/stateful_int8.py silero_vad_v6.onnx --wavs build/heldout --ablation build/zoo/calib/silero_vad_whisper

--ablation (Silero v6 only: it names its nodes) quantizes the model itself with converters.int8, calibrated on
the WAVs of a folder from zero state (each 576-sample window alone) or with the state carried, with parts of
the front end kept float (the front-end rule of converters/frontend.py switched off for the first rows), and
prints the same figures for each: where the INT8 error comes from.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Held out from benchmarks/zoo.py's PHRASES and voices (its calibration speech): other words, female voices.
PHRASES = ("the meeting starts at nine tomorrow morning", "please bring the blue folder to my office",
           "it is raining again so take an umbrella", "switch off the lights in the kitchen",
           "how far is the station from here", "remind me to call the doctor")


def make_speech(folder: Path) -> None:
    """One WAV per phrase (espeak-ng, 16 kHz), with 0.6 s of quiet noise before and after it."""
    from edgemm.media import read_wav, write_wav

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i, text in enumerate(PHRASES):
        raw = folder / f"raw{i}.wav"
        subprocess.run(["espeak-ng", "-v", f"en+f{i % 4 + 1}", "-s", str(150 + 8 * i), "-w", str(raw), text],
                       check=True, capture_output=True, timeout=60)
        tmp = folder / f"r{i}.wav"
        subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", str(tmp)], check=True, capture_output=True,
                       timeout=60)
        x, _ = read_wav(tmp)
        raw.unlink()
        tmp.unlink()
        pause = [rng.normal(0, 0.002, 9600).astype(np.float32) for _ in range(2)]
        write_wav(folder / f"h{i:03d}.wav", np.concatenate([pause[0], x, pause[1]]), 16000)


def probabilities(model_path: Path, wav: np.ndarray, context: int, hop: int) -> np.ndarray:
    sess = _session(model_path)
    h = c = np.zeros((1, 1, 128), np.float32)
    prev = np.zeros(context, np.float32)
    out = []
    for start in range(0, wav.size - hop + 1, hop):
        frame = wav[start:start + hop].astype(np.float32)
        p, h, c = sess.run(None, {"input": np.concatenate([prev, frame])[None], "h": h, "c": c})
        prev = frame[-context:]
        out.append(float(np.ravel(p)[0]))
    return np.array(out)


FE = "/encoder/feature_extractor/"
ABLATION = (  # (label, front-end rule on, nodes kept float)
    ("all INT8 (front-end rule off)", False, ()),
    ("power Add float", False, (FE + "Add",)),
    ("waveform, STFT and power float", False, (FE + "padding/Pad", FE + "Unsqueeze", FE + "Conv", FE + "Add")),
    ("front end float (the rule: + the conv reading the magnitude)", True, ()),
    ("whole encoder float", True, tuple(f"/encoder/conv_layers.{i}/Conv" for i in range(1, 4))),
)


def ablation(model_path: Path, calib: Path, streams: list[np.ndarray], ref: np.ndarray, context: int, hop: int):
    import tempfile

    import onnx

    from edgemm.converters import int8
    from edgemm.media import read_wav

    model = onnx.load(str(model_path))
    prepared = int8.prepare(model)
    sess = _session(model_path)
    zero = np.zeros((1, 1, 128), np.float32)
    alone, carried = [], []
    for wav in sorted(calib.glob("*.wav")):
        x, _ = read_wav(wav)
        h = c = zero
        for start in range(0, x.size - 576 + 1, 576):  # as edgemm cuts a stream (window 576, hop 576)
            w = x[None, start:start + 576].astype(np.float32)
            alone.append({"input": w, "h": zero, "c": zero})
            carried.append({"input": w, "h": h, "c": c})
            _, h, c = sess.run(None, carried[-1])
    rule = int8.waveform_front_end
    with tempfile.TemporaryDirectory() as tmp:
        for calib_label, feeds in (("zero state", alone), ("state carried", carried)):
            cal = int8.calibrate(prepared, feeds)
            for label, on, keep in ABLATION:
                int8.waveform_front_end = rule if on else (lambda m: set())
                try:
                    q = int8.quantize(prepared, cal, "u8s8", keep)
                finally:
                    int8.waveform_front_end = rule
                path = Path(tmp) / "q.onnx"
                onnx.save(q, str(path))
                g = np.concatenate([probabilities(path, x, context, hop) for x in streams])
                _line(f"{label}; calibrated from {calib_label} ({len(feeds)} windows)", ref, g)


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _line(label: str, r: np.ndarray, g: np.ndarray) -> None:
    cos = float(r @ g / (np.linalg.norm(r) * np.linalg.norm(g)))
    print(f"{label}: cosine {cos:.4f}, max abs {np.abs(r - g).max():.3f}, mean abs {np.abs(r - g).mean():.4f}, "
          f"decisions (> 0.5) agree on {np.mean((r > 0.5) == (g > 0.5)):.1%} of frames")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", help="the FP32 .onnx")
    p.add_argument("bundles", nargs="*", help="converted bundles (edgemm convert -o) to compare with it")
    p.add_argument("--wavs", help="folder of WAVs at 16 kHz, one stream each")
    p.add_argument("--make-speech", help="write held-out speech WAVs into this folder and exit")
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--hop", type=int, default=512)
    p.add_argument("--ablation", help="Silero v6: quantize with parts kept float, calibrated on this WAV folder")
    args = p.parse_args(argv)
    if args.make_speech:
        make_speech(Path(args.make_speech))
        return 0
    from edgemm.bundle import load_bundle
    from edgemm.media import read_wav

    wavs = sorted(Path(args.wavs).glob("*.wav"))
    streams = [read_wav(w)[0] for w in wavs]
    ref = [probabilities(Path(args.model), x, args.context, args.hop) for x in streams]
    r = np.concatenate(ref)
    print(f"{len(wavs)} streams, {r.size} frames of {args.hop / 16:.0f} ms, FP32 speech in "
          f"{np.mean(r > 0.5):.1%} of them")
    for b in args.bundles:
        path = load_bundle(b).graph_path("model")
        _line(b, r, np.concatenate([probabilities(path, x, args.context, args.hop) for x in streams]))
    if args.ablation:
        ablation(Path(args.model), Path(args.ablation), streams, r, args.context, args.hop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
