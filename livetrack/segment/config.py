"""Settings of the segmentation stage. Every length is relative to the nucleus diameter so
the defaults carry over to other microscopes and cell types."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SegmentConfig(BaseModel):
    """How frames are turned into labelled nuclei."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    method: Literal["classical", "learned"] = "learned"
    """Segmenter: 'learned' (a small U-Net predicting Caliban's three maps, then peaks +
    watershed; falls back to classical when torch cannot be imported) or 'classical'
    (smoothing, threshold, distance-transform watershed)."""
    nucleus_diameter_px: float | None = Field(default=None, gt=2)
    """Typical nucleus diameter in pixels. Takes precedence over everything else."""
    nucleus_diameter_um: float | None = Field(default=None, gt=0)
    """Typical nucleus diameter in micrometres, used with the frame's pixel size. Unset by
    default because nuclei range from ~6 µm (HL60) to ~15 µm (mouse ES cells): the estimate
    from the image is more reliable than a guess."""
    auto_diameter_frames: int = Field(default=3, ge=1)
    """When the diameter is estimated from the image, the median of this many estimates
    (the first frames with nuclei, later the latest re-measurements) is the diameter used."""
    rescale_every: int = Field(default=10, ge=0)
    """When the diameter is estimated: after it settled, measure it again on every Nth
    frame, so the scale follows nuclei that shrink as the population grows denser (a scale
    fixed on the first frames then merges touching nuclei). 0: keep the first estimate."""
    rescale_tolerance: float = Field(default=0.05, ge=0, lt=1)
    """A re-measured diameter replaces the one in use only when it differs by more than
    this fraction, so the labels do not flicker with the estimate's noise."""
    canonical_diameter_px: float = Field(default=20.0, ge=8)
    """Frames whose nuclei are much larger than this are downscaled so nuclei are about
    this size before segmenting (speed); labels come back at the original resolution."""
    smoothing: float = Field(default=0.08, ge=0)
    """Gaussian sigma, in nucleus diameters, applied before thresholding."""
    min_contrast: float = Field(default=3.0, gt=0)
    """The foreground must exceed the background by this many background standard
    deviations (after smoothing), else the frame is taken to hold no nuclei: Otsu's
    threshold always splits an image, even pure noise."""
    dim_nuclei_sigma: float = Field(default=8.0, ge=0)
    """Isolated objects this many noise standard deviations above the background are kept
    even when below the (Otsu) threshold: dim nuclei next to bright ones. 0 disables."""
    marker_min_distance: float = Field(default=0.35, gt=0)
    """Minimum distance between two nucleus centres, in diameters (peak separation)."""
    marker_min_depth: float = Field(default=0.12, ge=0)
    """A centre must be at least this deep inside the foreground, in diameters: ignores
    thin protrusions and debris."""
    min_area_fraction: float = Field(default=0.15, ge=0)
    """Objects smaller than this fraction of the expected nucleus area are dropped."""
    model_dir: Path | None = None
    """(learned) Model folder with config.json + weights.pt; None = the shipped model."""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    """(learned) Where the model runs; 'auto' prefers CUDA (half precision), then Apple
    MPS, then the CPU."""
    tile_px: int = Field(default=1024, ge=64)
    """(learned) Frames larger than this at the model's scale are processed in
    overlapping tiles of this size, so memory stays bounded for any frame size."""
    fg_threshold: float = Field(default=0.5, gt=0, lt=1)
    """(learned) Foreground probability above which a pixel belongs to a nucleus."""
    peak_threshold: float = Field(default=0.3, gt=0, lt=1)
    """(learned) Minimum inner-distance value of a nucleus centre (1 = exact centre)."""
    peak_prominence: float = Field(default=0.05, ge=0, lt=1)
    """(learned) The inner-distance map must dip at least this much between a centre and
    any higher centre within a diameter, else the lower one is dropped: separates two
    touching nuclei (deep dip) from two lobes of one elongated nucleus (shallow dip).
    0 keeps every local maximum."""
