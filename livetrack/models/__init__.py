"""The model folders shipped inside the package, and how a run records which weights it used.

Kept free of torch so the worker can name its models (and a resume can check them) without
loading them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent
SHIPPED_SEGMENT_MODEL = MODELS_DIR / "seg-unet-v2"
"""The segmentation model trained here and shipped inside the package (see docs)."""
SHIPPED_TRACK_MODEL = MODELS_DIR / "track-lstm-v4"
"""The shipped tracking model (weights + the thresholds chosen on a validation split)."""
WEIGHTS_FILE = "weights.pt"


def weights_digest(model_dir: Path) -> str | None:
    """sha256 of a model folder's weights file: which weights a run used (stored with the
    run, so resuming with other weights is refused instead of mixing two models in one
    lineage). None when the file cannot be read (loading the model then says why)."""
    try:
        return hashlib.sha256((Path(model_dir) / WEIGHTS_FILE).read_bytes()).hexdigest()
    except OSError:
        return None
