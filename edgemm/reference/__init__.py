"""The reference audio-visual models that ship with edgemm, and the AV-digits material they were made from.

``models/`` holds the bundle ``edgemm demo`` uses (trained by benchmarks/train_reference.py; every
reference model lives in benchmarks/models/). ``data/demo_material.npz`` holds a few handwritten test
digits and test-speaker recordings from which the demo renders its clip (benchmarks/avdigits/generate.py
wrote it), so the demo needs neither scikit-learn, espeak-ng nor a network.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = HERE / "models"
DEMO_MATERIAL = HERE / "data" / "demo_material.npz"


def model_path(name: str = "avdigits_intermediate") -> Path:
    """Folder of a shipped reference bundle."""
    return MODELS / name
