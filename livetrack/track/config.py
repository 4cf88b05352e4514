"""Tracking settings. Every length is in units of the nucleus diameter so that one set of
defaults works across microscopes and magnifications; costs are in the same units."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TrackConfig(BaseModel):
    """Settings of the online tracker (one tracker instance per position)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    method: Literal["lstm", "lap"] = "lstm"
    """Which tracker to build: "lstm" = Caliban's learned causal tracker (appearance,
    neighbourhood and motion; needs the image; falls back to "lap" when torch cannot be
    imported); "lap" = distance-based sparse linear assignment (the baseline)."""

    model_dir: str | None = None
    """Folder of the lstm tracker's model (config.json + weights.pt); None = the shipped one."""

    link_threshold: float | None = Field(default=None, gt=0, lt=1)
    """lstm: minimum p_same for a link; None = the value chosen on the model's validation
    split (stored with the model)."""

    lstm_division_threshold: float | None = Field(default=None, gt=0, le=1)
    """lstm: minimum division score (p_parent→daughter; for a mother linked to one daughter,
    ``lstm.division_posterior``); None = the model's validated value."""

    division_cues: Literal["learned", "both", "geometry"] = "both"
    """lstm: what decides a division. "both" (default): the sister pair decided jointly, the
    mean of the learned division score and the lap tracker's geometric one, each scaled to
    its own threshold (``lstm.combine_division_cues``: clear geometry carries a hesitant
    model, an unfamiliar look falls back on geometry); "learned": the model's division
    score alone (against ``lstm_division_threshold``; the default with the earlier model
    track-lstm-v3); "geometry": the geometric cues alone (distance, daughters symmetric
    about the mother, area; against ``division_threshold``). Chosen on the validation suite
    together with the shipped model (docs/training.md)."""

    nucleus_diameter_px: float | None = Field(default=None, gt=0)
    """Typical nucleus diameter in pixels, the unit of every length below. None: estimate it
    as the median equivalent diameter of the detections of the last ``max_gap + 2`` frames
    (a window the tracker can rebuild exactly after a restart)."""

    max_displacement: float = Field(default=1.5, gt=0)
    """Gating radius: a track is only compared with detections within this many diameters of
    its predicted position (per frame of motion)."""

    gap_radius_growth: float = Field(default=0.5, ge=0)
    """The gating radius of a track that missed k frames is
    ``max_displacement * (1 + gap_radius_growth * k)`` diameters (the cell kept moving)."""

    velocity_damping: float = Field(default=0.5, ge=0, le=1)
    """Predicted position = last position + damping × last frame-to-frame velocity × frames
    elapsed; 0 = no motion model, 1 = constant velocity."""

    area_weight: float = Field(default=0.1, ge=0)
    """Weight of |log(area ratio)| added to the link cost (a small shape-consistency cue)."""

    max_gap: int = Field(default=2, ge=0)
    """A track unmatched in a frame stays linkable for this many missed frames (gap closing);
    after that it is closed."""

    birth_cost: float = Field(default=1.0, gt=0)
    """Cost of starting a new track for a detection (normalised units). A link is kept only
    when its cost is below ``birth_cost + death_cost``."""

    death_cost: float = Field(default=1.0, gt=0)
    """Cost of leaving a track without a detection in this frame (normalised units)."""

    gap_penalty: float = Field(default=0.2, ge=0)
    """Added to the link cost per frame a track has missed, so a continuous track wins over a
    track coming back from a gap."""

    division_max_distance: float = Field(default=2.0, gt=0)
    """A newborn detection can only be a daughter of a track whose last position is within
    this many diameters."""

    division_threshold: float = Field(default=0.5, ge=0, le=1)
    """Minimum geometric division score in [0, 1] (distance, symmetry and area cues) to
    accept a mother-daughter link: the lap tracker's threshold, and the geometric cue's in
    the lstm tracker's joint decision (``division_cues``)."""

    division_max_gap: int = Field(default=0, ge=0)
    """An unmatched track may be the mother of newborns (both daughters far from it) only if
    it missed at most this many frames before the current one (0: seen in the previous
    frame)."""

    border_margin: float = Field(default=0.5, ge=0)
    """A track whose last detection's edge (centroid distance to the frame border minus the
    detection's own radius) was within this many diameters of the border ends with fate
    "left" (left the field of view) instead of "lost" (ended inside the field)."""
