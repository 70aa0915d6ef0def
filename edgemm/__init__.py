"""edgemm: an edge inference runtime for audio-visual fusion models.

Importing this package is cheap and needs none of the optional GPU or audio libraries:
heavy modules (tensorrt, CUDA bindings, sounddevice) are imported only when used.
"""

__version__ = "0.1.0"

from edgemm.errors import EdgemmError

__all__ = ["EdgemmError", "__version__"]
