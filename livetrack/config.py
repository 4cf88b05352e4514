"""Settings: one pydantic section per stage, defaults in one place, env overrides.

A leaf module: it imports nothing of livetrack but the error types, so any part of the
package (and a notebook) can read or build settings without pulling in ZeroMQ, SQLite or
torch. The sections — ``WorkerConfig``, ``SegmentConfig``, ``TrackConfig``, ``StoreConfig``
— are assembled into ``Settings``, which reads overrides from a TOML/JSON file and from
``LIVETRACK_<SECTION>__<FIELD>`` environment variables (e.g. ``LIVETRACK_TRACK__MAX_GAP=3``).

Every length of the segmentation and tracking sections is in units of the nucleus diameter
(costs in the same units), so one set of defaults carries over to other microscopes,
magnifications and cell types.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from livetrack.errors import ConfigError, validation_message

DEFAULT_FRAMES_ENDPOINT = "tcp://127.0.0.1:5557"
"""Where a worker receives frames unless told otherwise (loopback only)."""
DEFAULT_EVENTS_ENDPOINT = "tcp://127.0.0.1:5558"
"""Where a worker publishes events and status unless told otherwise (loopback only)."""


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
    rescale_every: int = Field(default=2, ge=0)
    """When the diameter is estimated: after it settled, measure it again on every Nth
    frame, so the scale follows nuclei that shrink as the population grows denser (a scale
    fixed on the first frames then merges touching nuclei). 0: keep the first estimate.
    With the median of ``auto_diameter_frames`` measurements the scale lags the nuclei by
    about N frames; 2 was chosen on the validation suite over 10 (the default before: the
    scale then lagged shrinking nuclei by up to 30 %) and 1 (docs/training.md)."""
    max_scale_rise: float | None = Field(default=1.25)
    """When the diameter is estimated: it never rises more than this factor above the
    smallest diameter the position was segmented with once the scale had settled. Nuclei
    merged at confluence measure larger, and shown smaller the segmenter merges more of
    them: left alone that loop can run away (a simulated bacterial colony went from 9 to
    17 px in 20 frames). A growing population's nuclei shrink or stay; they do not grow by
    a quarter. Raise it (0, inf or None: no limit, the behaviour before it existed), or
    give the diameter, for a movie whose nuclei really do grow."""

    @field_validator("max_scale_rise")
    @classmethod
    def _rise_or_no_limit(cls, value: float | None) -> float | None:
        if value is None or value == 0 or value == float("inf"):
            return None  # no limit (TOML and environment variables cannot say None)
        if not value >= 1.0:
            raise ValueError("must be at least 1 (or 0 for no limit)")
        return float(value)

    scale_source: Literal["detections", "image"] | None = None
    """When the diameter is estimated, what each measurement is: "detections" — the median
    equivalent diameter of the nuclei segmented in the measured frame (the image estimate
    starts the first frame and bounds each measurement); "image" — the estimate from the
    image alone (the behaviour before this setting; it reads nuclei with soft edges or
    touching neighbours as larger than they are). None (default): "detections" for the
    learned segmenter, whose outlines follow the annotations it was trained on; "image"
    for the classical one, whose outlines run wide of the nuclei."""
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
    large_object_area: float = Field(default=1.3, ge=0)
    """(learned) Objects larger than this many typical nucleus areas are looked at again
    for markers with ``large_object_prominence``: that big, an object is more likely
    touching nuclei than one (0: off, the behaviour before this setting). Chosen on the
    validation suite (docs/training.md)."""
    large_object_prominence: float = Field(default=0.03, ge=0)
    """(learned) The dip between two peaks that keeps both inside such a large object
    (``peak_prominence`` elsewhere); acts only when smaller than ``peak_prominence``."""
    border_min_area_fraction: float = Field(default=0.02, ge=0)
    """(learned) The same for objects touching the frame's edge: a nucleus cut by the edge
    shows any part of itself, and a sliver is still that nucleus (used when smaller than
    ``min_area_fraction``). Chosen on the validation suite (docs/training.md)."""
    min_mean_probability: float = Field(default=0.0, ge=0, lt=1)
    """(learned) Objects whose mean foreground probability (the model's, over the object's
    pixels at the model's scale) is below this are dropped: faint out-of-focus structures
    the model outlines half-heartedly, not nuclei. 0: none dropped (the behaviour before
    this setting)."""
    model_dir: Path | None = None
    """(learned) Model folder with config.json + weights.pt; None = the shipped model."""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    """(learned) Where the model runs; 'auto' prefers CUDA (half precision), then Apple
    MPS, then the CPU."""
    tile_px: int = Field(default=1024, ge=64)
    """(learned) Frames larger than this at the model's scale are processed in
    overlapping tiles of this size, so memory stays bounded for any frame size."""
    zoom: float = Field(default=1.0, ge=0.5, le=3.0)
    """(learned) The frame is resized so its nuclei are ``zoom`` × the model's canonical
    diameter when the model sees them (post-processing lengths stay in canonical
    diameters). Above 1: more pixels per nucleus — touching nuclei separate better, at a
    cost in time that grows with zoom². 1.15 helps crowded simulated nuclei a lot but cost
    divisions on the real SIM+ sequence, so the default stays 1 (docs/training.md)."""
    fg_threshold: float = Field(default=0.5, gt=0, lt=1)
    """(learned) Foreground probability above which a pixel belongs to a nucleus."""
    peak_threshold: float = Field(default=0.3, gt=0, lt=1)
    """(learned) Minimum inner-distance value of a nucleus centre (1 = exact centre)."""
    outline_threshold: float | None = Field(default=0.6, ge=0, lt=1)
    """(learned) Foreground probability above which a pixel belongs to its nucleus' outline,
    on the probability map interpolated to the frame's pixels (``fg_threshold`` still
    decides what is detected; an object is never lost to its outline, and the scale is
    measured on the objects as detected; an object grows by one pixel at most, and a dip
    inside it leaves no hole). The network's maps are at its canonical scale, so without it
    outlines are blocks of the label image upscaled by nearest neighbour at the 0.5 level,
    3–7% too large on every validation movie; at the canonical scale itself (no resizing)
    the level applies to the map as it is. 0.6 was chosen on the validation suite (see
    docs/training.md). 0 or None: that behaviour (the one before
    this setting; TOML and environment variables cannot say None)."""

    @field_validator("outline_threshold")
    @classmethod
    def _outline_or_none(cls, value: float | None) -> float | None:
        return None if value is None or value == 0 else float(value)

    peak_prominence: float = Field(default=0.05, ge=0, lt=1)
    """(learned) The inner-distance map must dip at least this much between a centre and
    any higher centre within a diameter, else the lower one is dropped: separates two
    touching nuclei (deep dip) from two lobes of one elongated nucleus (shallow dip).
    0 keeps every local maximum."""


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
    weighted mean of the learned division score and the lap tracker's geometric one
    (``division_geometry_weight``, ``division_geometry_weight_given``), each scaled to its
    own threshold (``lstm.combine_division_cues``: clear geometry carries a hesitant
    model, an unfamiliar look falls back on geometry); "learned": the model's division
    score alone (against ``lstm_division_threshold``; the default with the earlier model
    track-lstm-v3); "geometry": the geometric cues alone (distance, daughters symmetric
    about the mother, area; against ``division_threshold``). Chosen on the validation suite
    together with the shipped model (docs/training.md)."""

    division_geometry_weight: float = Field(default=0.5, ge=0, le=1)
    """lstm, ``division_cues = "both"``, on frames livetrack segmented itself: the geometric
    cue's share of the joint division decision (the learned one has the rest; 0.5 = the
    plain mean). The learned cue keeps out nuclei the segmentation split in two, which
    geometry alone takes for divisions. Chosen on the validation suite (docs/training.md)."""

    division_geometry_weight_given: float = Field(default=0.7, ge=0, le=1)
    """The same share on frames whose label images were given with them (tracking only:
    ``replay --masks``, ``track(masks=...)``): there is no split nucleus to keep out, and
    clear geometry should carry a division the model does not recognise (rods, cells unlike
    the training data). Chosen on the validation suite (docs/training.md)."""

    division_geometry_weight_small: float | None = Field(default=0.7, ge=0, le=1)
    """The least share of the geometric cue while the length unit is below the nucleus
    diameters the tracking model was trained on (its config.json's ``train.diameters_px``;
    drawn from 12–70 px for the shipped models, which with the training's ±15 % jitter of
    the unit saw a few units down to ~10 px), on any masks: the 16 × 16 crop over 1.25
    diameters then samples finer than the pixels (below 12.8 px), an interpolated blur
    unlike nearly all of training, so the learned division score is not to be trusted
    there (small rods, bacteria, a low magnification). 0 or None: the shares above whatever
    the size (TOML and environment variables cannot say None). Chosen on the validation
    suite's rod colonies (docs/training.md)."""

    @field_validator("division_geometry_weight_small")
    @classmethod
    def _small_share_or_none(cls, value: float | None) -> float | None:
        return None if value is None or value == 0 else float(value)

    def geometry_weight(self, labels_given: bool, smaller_than_trained: bool = False) -> float:
        """The geometric cue's share of the joint division decision on a frame whose labels
        were given (``labels_given``) or segmented here; ``smaller_than_trained``: the
        length unit is below the tracking model's training sizes
        (``division_geometry_weight_small``)."""
        weight = (
            self.division_geometry_weight_given if labels_given else self.division_geometry_weight
        )
        if smaller_than_trained and self.division_geometry_weight_small is not None:
            return max(weight, self.division_geometry_weight_small)
        return weight

    merge_area_ratio: float = Field(default=0.0, ge=0)
    """On livetrack's own segmentation: an object that holds the predicted positions of two
    or more tracks seen as separate objects in the previous frame, and is at least this many
    times the largest one's last area, is split between them, each pixel to the nearest
    predicted position, when every part keeps at least half its track's area
    (``track.merges.split_merges``). 0: never. Label images given with the frames are never
    split. Off by default: on crowded simulated nuclei 1.25 raised TRA, but on the two real
    sequences, where livetrack's segmentation merges no nuclei, it only split nuclei the
    previous frame had cut in two, and on held-out movies it cost divisions
    (docs/training.md). Try 1.25 for crowded colonies whose nuclei touch."""

    hold_convex_splits: float = Field(default=0.95, ge=0, le=1)
    """On livetrack's own segmentation: two touching objects where only one track seen in
    the previous frame is predicted, cut apart along at least 0.9 of the smaller one's
    diameter, and whose union is convex — its solidity (area over convex-hull area) at
    least this — are one object (``track.merges.hold_splits``): a nucleus the
    segmentation cut, or a mother whose daughters have not parted yet (no waist; how
    Fluo-N2DH-SIM+ annotates her). 0: never. Label images given with the frames are never
    changed. Prompted by the splits of Fluo-N2DH-SIM+ mothers, checked on the validation
    suite and on Fluo-N2DH-GOWT1 left out (docs/training.md)."""

    @field_validator("merge_area_ratio")
    @classmethod
    def _off_or_at_least_one(cls, value: float) -> float:
        if 0 < value < 1:
            raise ValueError(
                "must be 0 (off) or at least 1: a merged object is larger than each of the "
                f"tracks it holds, got {value}"
            )
        return value

    feature_max_diameter_px: float = Field(default=0.0, ge=0)
    """lstm, for speed: nuclei wider than this (px) have their appearance and shape
    features computed on the frame reduced by the smallest integer factor that brings them
    to at most this width (block means; ``features.reduce_frame``): a quarter of the pixel
    work or less for large nuclei, which the 16 × 16 crops sample coarsely anyway. 0
    (default): always at full resolution, as in training; 28 made the tracker ~2× faster
    on 1024² frames of 30 px nuclei, with one more false division on one validation movie
    (docs/benchmarks.md), so it is not the default."""

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

    leftover_link_distance: float = Field(default=0.5, ge=0)
    """After the assignment and the divisions, a track seen in the previous frame (the last
    one that arrived) but left without a detection now and a newborn detection that are
    each other's nearest (the track's predicted position, among the leftovers only) and at
    most this many diameters apart are linked (gaps stay the scorer's to close): where
    geometry leaves no doubt, a look the scorer never saw (a mother split in anaphase by
    the segmentation whose halves then grow into her daughters, a sudden change of focus
    or brightness) does not end a track. 0: no such links."""

    drift_correction: bool = True
    """Follow a common motion of the whole field (stage drift, a sheet of cells migrating):
    when the median of the open tracks' last frame-to-frame displacements differs from zero
    significantly (``online.estimate_drift``), every track is predicted to move with it in
    full, and only its own motion beyond the drift is damped (``velocity_damping``); the
    divisions are judged about the mother's drift-corrected position. Without drift the
    median is noise and nothing changes."""

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


class StoreConfig(BaseModel):
    """Where and how the store writes."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    path: Path = Path("livetrack.db")
    """SQLite file. Readers (TUI, export) open the same file read-only while it is written."""
    mask_codec: Literal["zlib"] = "zlib"
    """Compression of label images; stored per mask (column ``codec``) so more can be added."""
    zlib_level: int = Field(default=1, ge=0, le=9)
    """zlib level: 1 is ~3x faster than 6 and label images (long runs) compress well anyway."""
    busy_timeout_s: float = Field(default=30.0, ge=0.0)
    """How long to wait for a lock held by another connection before giving up with StoreError."""
    lease_timeout_s: float = Field(default=120.0, gt=0.0)
    """A run's writer refreshes its lease with every frame and, when idle, every quarter of
    this; a lease held from another host and not refreshed for this long no longer blocks a
    resume (on this host a dead pid frees a lease at once)."""


class WorkerConfig(BaseModel):
    """How the worker talks to drivers and consumers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    frames_endpoint: str = DEFAULT_FRAMES_ENDPOINT
    """Where the worker binds its PULL socket for frames from drivers."""
    events_endpoint: str = DEFAULT_EVENTS_ENDPOINT
    """Where the worker binds its PUB socket for events and status (dashboard, scripts)."""
    allow_remote: bool = False
    """Allow endpoints on non-loopback interfaces. Off by default: frames and events stay
    on this machine unless the user says otherwise."""
    receive_hwm: int = Field(default=4, ge=1)
    """Frames queued in the worker's receive socket before the sender blocks (backpressure).
    Small on purpose: a frame can be tens of MB."""
    status_interval_s: float = Field(default=1.0, gt=0)
    """Seconds between WorkerStatus heartbeats on the event channel."""
    exit_on_eos: bool = False
    """Stop the worker when every run it has seen has sent end-of-stream."""
    max_store_failures: int = Field(default=5, ge=1)
    """Consecutive failed frame commits (disk full, DB locked) before the worker stops
    instead of rejecting frames one by one."""
    max_live_trackers: int = Field(default=1024, ge=1)
    """Positions whose tracker state stays in memory (the most recently active ones). A
    position beyond is rebuilt from the store at its next frame, exactly as after a
    restart: bounded memory for thousands of positions, at the cost of reading a few
    frames back when more positions than this take turns."""


class Settings(BaseSettings):
    """All of livetrack's settings."""

    model_config = SettingsConfigDict(
        env_prefix="LIVETRACK_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    worker: WorkerConfig = WorkerConfig()
    segment: SegmentConfig = SegmentConfig()
    track: TrackConfig = TrackConfig()
    store: StoreConfig = StoreConfig()


ENV_PREFIX = "LIVETRACK_"
OTHER_ENV_VARS = frozenset({"LIVETRACK_UPDATE_SNAPSHOTS"})
"""``LIVETRACK_`` variables that are not settings (the test suite's snapshot switch)."""


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Refuse a ``LIVETRACK_`` variable that names no setting. pydantic-settings ignores
    variables it does not recognise, so ``LIVETRACK_TRAK__MAX_GAP=3`` (misspelt section)
    or ``LIVETRACK_TRACK_MAX_GAP=3`` (one underscore) would silently change nothing."""
    environ = os.environ if environ is None else environ
    sections = Settings.model_fields
    for key in sorted(environ):
        if not key.upper().startswith(ENV_PREFIX) or key.upper() in OTHER_ENV_VARS:
            continue
        section, sep, rest = key[len(ENV_PREFIX) :].lower().partition("__")
        if section not in sections:
            raise ConfigError(
                f"environment variable {key}: no settings section {section!r}"
                f"{_did_you_mean(section, sections)}; the form is "
                f"LIVETRACK_<SECTION>__<FIELD> with sections {', '.join(sections)}"
            )
        if not sep:
            continue  # the whole section as JSON, e.g. LIVETRACK_TRACK='{"max_gap": 3}'
        model = sections[section].annotation
        fields = getattr(model, "model_fields", {})
        name = rest.partition("__")[0]
        if name not in fields:
            raise ConfigError(
                f"environment variable {key}: section {section!r} has no setting {name!r}"
                f"{_did_you_mean(name, fields)}"
            )


def _did_you_mean(word: str, choices: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from an optional TOML/JSON file, env vars and explicit overrides
    (``overrides`` are section dicts, e.g. ``track={"max_gap": 3}``; they win). An
    unknown ``LIVETRACK_`` variable is an error, not ignored."""
    check_environment()
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_config_file(path)
    for section, values in overrides.items():
        merged = dict(data.get(section, {}))
        merged.update({k: v for k, v in values.items() if v is not None})
        data[section] = merged
    try:
        return Settings(**data)
    except ValidationError as err:
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid settings{where}: {validation_message(err)}") from None


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(
            f"config file {path} is not valid {path.suffix[1:] or 'JSON'}: {err}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table/object of sections")
    return data
