"""Deterministic synthetic time-lapse of fluorescent nuclei with exact ground truth.

Why this exists: the pipeline needs movies whose lineages are known exactly, to drive
the real worker in tests, to benchmark, and to train the learned models. Everything is
seeded: one ``SimulationConfig`` (seed included) gives bit-identical frames whether the
movie is streamed (``NucleiSimulator.frames``) or written in CTC layout (``write_ctc``).

Model, per frame:

* Cells live on a torus larger than the frame (the frame plus a margin of a few nucleus
  diameters on each side), so they wander and drift in and out of the field of view
  while the population only changes through divisions, deaths and optional immigrants.
  A track starts when a nucleus first has pixels inside the frame and ends when it has
  none (a cell that re-enters later gets a new root track).
* Motion: a persistent random walk (AR(1) velocity) plus a global drift, then a soft
  pairwise repulsion so nuclei touch but do not pile up.
* Cell cycle: each cell's area grows as ``2**phase`` over its cycle; at the end of the
  cycle the nucleus rounds up, shrinks and brightens for 1–2 frames (mitosis), then two
  daughters of half the mother's area appear displaced along the division axis. The
  cycle slows down as the population approaches ``max_confluence`` (contact
  inhibition), so long live runs do not explode.
* Death: a per-frame hazard; a dying nucleus shrinks and fades over a few frames.
* Rendering is per nucleus in its bounding box. Overlaps are resolved by giving each
  pixel to the nucleus whose normalised elliptical distance is smallest (ties go to the
  older cell), so the label image and the intensity image agree exactly.
* Camera: uneven illumination × (background + bleached, blurred signal), Poisson shot
  noise, gain, offset, Gaussian read noise, uint16.

Three child generators of ``default_rng(seed)`` keep concerns apart: motion/geometry,
appearance (brightness, texture) and camera noise. Changing camera or appearance
settings therefore never changes the trajectories or the ground truth.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from livetrack.errors import ConfigError

log = logging.getLogger("livetrack.simulators.nuclei")

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

_N_WAVES = 3
"""Cosine waves per nucleus texture (smooth, low-frequency chromatin pattern)."""
_MAX_SPOTS = 4
"""Upper bound on bright spots (chromocentres / nucleoli-like) per nucleus."""
_LN2 = math.log(2.0)


class SimulationConfig(BaseModel):
    """Everything that defines a synthetic movie. Lengths are in nucleus diameters or px."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    """Seed of ``numpy.random.default_rng``; the same config gives bit-identical movies."""
    n_frames: int = Field(50, ge=1)
    """Number of frames produced by ``frames()`` / written by ``write_ctc``."""
    height: int = Field(512, ge=16)
    """Frame height in px."""
    width: int = Field(512, ge=16)
    """Frame width in px."""
    n_cells: int = Field(60, ge=0)
    """Number of nucleus centres placed inside the frame at t=0 (the margin gets the
    same density on top)."""
    nucleus_diameter_px: float = Field(24.0, gt=2.0)
    """Mean equivalent diameter of a nucleus (averaged over the cell cycle), in px."""
    diameter_cv: float = Field(0.12, ge=0.0, le=0.5)
    """Per-cell coefficient of variation of the mean diameter."""
    max_axis_ratio: float = Field(1.5, ge=1.0)
    """Per-cell major/minor axis ratio is drawn uniformly from [1, max_axis_ratio]."""
    pixel_size_um: float = Field(0.5, gt=0.0)
    """Pixel size in µm, written to the TIFF resolution tags and given to drivers."""
    cell_cycle_frames: float = Field(40.0, gt=2.0)
    """Mean number of frames between a cell's birth and its division."""
    cell_cycle_cv: float = Field(0.2, ge=0.0, le=1.0)
    """Per-cell coefficient of variation of the cycle length."""
    daughter_area_factor: float = Field(1.0, gt=0.2, le=1.5)
    """Mean nucleus area of a daughter relative to her mother's. 1: every generation has
    the same size; < 1: nuclei get smaller generation after generation, as in a culture
    that grows denser or an early embryo (a scale fixed on the first frames goes wrong)."""
    initial_age_max: float = Field(1.0, ge=0.0, le=1.0)
    """Cells at t=0 start at a cycle phase drawn uniformly from [0, initial_age_max]."""
    mitosis_frames: int = Field(2, ge=1, le=5)
    """A mother stays rounded-up and bright for 1..mitosis_frames frames (per cell)."""
    mitotic_area_factor: float = Field(0.6, gt=0.1, le=1.0)
    """Area of the rounded-up mother relative to its area just before mitosis."""
    mitotic_brightness: float = Field(1.8, ge=1.0)
    """Brightness of the rounded-up mother relative to its normal brightness."""
    mitotic_axis_ratio: float = Field(1.0, ge=1.0, le=3.0)
    """Major/minor axis ratio of the mother in mitosis: 1 = rounded up; > 1 = elongated
    along the axis it then divides on (anaphase-like, as in Fluo-N2DH-SIM+)."""
    anaphase_frames: int = Field(0, ge=0, le=3)
    """The last this-many frames of a mother's mitosis show anaphase: her chromatin in two
    lobes along the axis she then divides on, joined by a dimmer bridge and a pinched
    waist, the lobes further apart frame by frame — still one object in the ground truth
    (as Fluo-N2DH-SIM+ annotates a mother until her daughters part). 0: none (and the
    movie is exactly as without this setting)."""
    anaphase_bridge: float = Field(0.4, ge=0.0, le=1.0)
    """Signal between the two lobes at the last anaphase frame, relative to a lobe's."""
    anaphase_pinch: float = Field(0.4, ge=0.0, le=0.8)
    """Narrowing of the mother's outline at her waist at the last anaphase frame (0: an
    ellipse; 0.8: the minor axis is 80% shorter there)."""
    max_confluence: float = Field(0.55, gt=0.0, le=1.0)
    """Nucleus-area fraction of the simulated world at which the cell cycle stops
    (progression slows linearly towards it: contact inhibition)."""
    speed_diam_per_frame: float = Field(0.06, ge=0.0)
    """Per-axis standard deviation of a cell's own velocity, in diameters per frame
    (the median displacement is about 1.2× this)."""
    persistence: float = Field(0.7, ge=0.0, lt=1.0)
    """Frame-to-frame autocorrelation of the velocity (0 = Brownian)."""
    drift_diam_per_frame: tuple[float, float] = (0.0, 0.0)
    """Global (dy, dx) drift added to every cell, in diameters per frame."""
    repulsion: float = Field(0.5, ge=0.0, le=1.0)
    """Fraction of a pairwise overlap removed per frame (soft contact)."""
    contact_distance: float = Field(0.92, gt=0.0, le=1.5)
    """Centres closer than this × (r_i + r_j) repel each other, so nuclei touch and may
    overlap slightly but do not pile up."""
    death_rate: float = Field(0.002, ge=0.0, le=1.0)
    """Probability per cell per frame that a cell starts dying."""
    death_frames: int = Field(4, ge=1)
    """Frames over which a dying nucleus shrinks and fades before it is gone."""
    margin_diameters: float = Field(3.0, ge=1.5)
    """Width of the simulated world around the frame, in diameters (where cells come
    from and go to)."""
    entry_rate: float = Field(0.0, ge=0.0)
    """Extra cells per frame appearing in the margin (immigrants), per 100 diameters of
    frame perimeter, on top of those that wander in."""
    background: float = Field(30.0, ge=0.0)
    """Background photo-electrons per pixel (before illumination falloff)."""
    nucleus_signal: float = Field(200.0, ge=0.0)
    """Mean photo-electrons per pixel from a nucleus of average brightness."""
    brightness_cv: float = Field(0.25, ge=0.0)
    """Per-cell log-normal spread of nucleus brightness."""
    texture_amplitude: float = Field(0.2, ge=0.0, le=1.0)
    """Relative amplitude of the smooth low-frequency texture inside a nucleus."""
    mean_spots: float = Field(2.0, ge=0.0, le=_MAX_SPOTS)
    """Mean number of bright spots per nucleus."""
    spot_brightness: float = Field(0.6, ge=0.0)
    """Peak relative brightness added by a bright spot."""
    nucleoli_fraction: float = Field(0.0, ge=0.0, le=1.0)
    """Share of the spots that are dark nucleoli instead of bright chromocentres (wider,
    darker than the surrounding nucleus by ``nucleolus_depth``): nuclei with holes."""
    nucleolus_depth: float = Field(0.7, ge=0.0, le=1.0)
    """Relative darkening at a nucleolus' centre."""
    haze: float = Field(0.0, ge=0.0, le=2.0)
    """Out-of-focus light: a copy of the nucleus signal blurred over ``haze_diameters``
    nuclei, times this, is added (glow between touching nuclei, low contrast at edges)."""
    haze_diameters: float = Field(1.0, gt=0.0, le=5.0)
    """Blur of the out-of-focus light, in nucleus diameters (Gaussian sigma)."""
    defocused_fraction: float = Field(0.0, ge=0.0, le=2.0)
    """Cells in other focal planes: this many per in-focus cell of the first frame are
    drawn as faint, blurred, irregular blobs that drift slowly and are NOT in the ground
    truth (widefield or thick samples; Fluo-N2DH-GOWT1's annotation leaves them out). 0:
    none (and the movie is exactly as without this setting)."""
    defocused_brightness: float = Field(0.1, ge=0.0, le=1.0)
    """Their mean signal, as a fraction of ``nucleus_signal`` (each one ×0.5–1.5)."""
    defocused_blur: float = Field(0.2, ge=0.0, le=2.0)
    """Their blur, in nucleus diameters (Gaussian sigma)."""
    camera_offset: float = Field(100.0, ge=0.0)
    """Camera offset (ADU) added to every pixel."""
    gain: float = Field(1.0, gt=0.0)
    """ADU per photo-electron."""
    read_noise: float = Field(2.0, ge=0.0)
    """Gaussian read-noise standard deviation in ADU."""
    bleach_rate: float = Field(0.0, ge=0.0)
    """Photobleaching: nucleus signal is multiplied by exp(-bleach_rate × t)."""
    vignetting: float = Field(0.0, ge=0.0, lt=1.0)
    """Relative illumination drop in the frame corners (smooth radial falloff)."""
    psf_sigma_px: float = Field(1.0, ge=0.0)
    """Gaussian PSF sigma in px applied to the nucleus signal (0 = no blur)."""

    @classmethod
    def like_sim_plus(cls, **overrides: object) -> SimulationConfig:
        """A movie whose statistics resemble CTC Fluo-N2DH-SIM+ sequence 01.

        Measured there: 690×628 px, 0.125 µm/px, equivalent
        diameter ~49 px with wide area spread, median nearest neighbour 1.3 d, median
        displacement 0.07 d/frame, ~0.011 divisions per cell per frame, background 91 ADU,
        pixel noise ~4 ADU, nucleus median ~1.28× background.
        """
        base: dict[str, object] = {
            "n_frames": 65,
            "height": 690,
            "width": 628,
            "n_cells": 34,
            "nucleus_diameter_px": 49.0,
            "diameter_cv": 0.15,
            "max_axis_ratio": 1.5,
            "pixel_size_um": 0.125,
            "cell_cycle_frames": 70.0,
            "cell_cycle_cv": 0.3,
            "speed_diam_per_frame": 0.055,
            "persistence": 0.8,
            "death_rate": 0.0005,
            "background": 12.0,
            "nucleus_signal": 42.0,
            "brightness_cv": 0.2,
            "texture_amplitude": 0.2,
            "mean_spots": 2.0,
            "spot_brightness": 0.5,
            "camera_offset": 79.0,
            "gain": 1.0,
            "read_noise": 2.4,
            "psf_sigma_px": 1.5,
        }
        base.update(overrides)
        return cls.model_validate(base)

    @classmethod
    def like_gowt1(cls, **overrides: object) -> SimulationConfig:
        """A movie whose statistics resemble CTC Fluo-N2DH-GOWT1 sequence 01 (real).

        Measured there: 1024² px, 0.24 µm/px, equivalent diameter ~60 px, sparse cells
        (median nearest neighbour 1.76 d), slow motion (median 0.03 d/frame, heavy tail),
        almost no divisions, near-zero dark background, very heterogeneous brightness.
        """
        base: dict[str, object] = {
            "n_frames": 92,
            "height": 1024,
            "width": 1024,
            "n_cells": 22,
            "nucleus_diameter_px": 60.0,
            "diameter_cv": 0.12,
            "max_axis_ratio": 1.4,
            "pixel_size_um": 0.24,
            "cell_cycle_frames": 600.0,
            "cell_cycle_cv": 0.2,
            "speed_diam_per_frame": 0.03,
            "persistence": 0.6,
            "death_rate": 0.0005,
            "background": 0.5,
            "nucleus_signal": 12.0,
            "brightness_cv": 0.7,
            "texture_amplitude": 0.35,
            "mean_spots": 3.0,
            "spot_brightness": 1.0,
            "camera_offset": 0.0,
            "gain": 2.5,
            "read_noise": 1.8,
            "psf_sigma_px": 2.0,
        }
        base.update(overrides)
        return cls.model_validate(base)


@dataclass(frozen=True)
class SimFrame:
    """One simulated frame and its exact ground truth."""

    index: int
    image: NDArray[np.uint16]
    """(H, W) camera image."""
    labels: NDArray[np.int32]
    """(H, W) full-mask ground truth; values are track labels (0 = background)."""


@dataclass(frozen=True)
class Division:
    """A mother track ending at ``frame - 1`` and its daughters starting at ``frame``."""

    frame: int
    parent: int
    daughters: tuple[int, ...]


@dataclass
class _Cells:
    """Struct-of-arrays state of every simulated cell (inside the frame or not)."""

    pos: FloatArray  # (N, 2) y, x in world coordinates (frame origin at margin, margin)
    vel: FloatArray  # (N, 2)
    mean_area: FloatArray  # cycle-averaged area in px²
    ratio: FloatArray  # major/minor axis ratio
    theta: FloatArray  # orientation (radians)
    age: FloatArray  # frames since birth (scaled by contact inhibition)
    cycle: FloatArray  # frames from birth to mitosis
    mitosis: IntArray  # >0: frames left rounded-up; 0 otherwise
    dying: IntArray  # >0: frames left before vanishing; 0 otherwise
    dying_total: IntArray  # frames since dying began
    label: IntArray  # current track label (0 = not visible)
    parent: IntArray  # mother's label for a cell born at the last step (else 0)
    bright: FloatArray  # brightness multiplier
    waves: FloatArray  # (N, _N_WAVES, 4): ku, kv, phase, amplitude
    spots: FloatArray  # (N, _MAX_SPOTS, 4): u, v, width, amplitude (0 = no spot)

    def __len__(self) -> int:
        return len(self.pos)

    def take(self, idx: NDArray[np.intp]) -> _Cells:
        """The cells at ``idx`` (a copy), in that order."""
        return _Cells(**{k: v[idx] for k, v in vars(self).items()})

    @staticmethod
    def concat(parts: list[_Cells]) -> _Cells:
        """All cells of ``parts``, in order."""
        keys = vars(parts[0]).keys()
        return _Cells(**{k: np.concatenate([vars(p)[k] for p in parts]) for k in keys})


class NucleiSimulator:
    """Streams a seeded synthetic movie frame by frame and records its lineages."""

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        c = config
        self._d = c.nucleus_diameter_px
        self._margin = c.margin_diameters * self._d + 2.0
        self._world = np.array([c.height + 2 * self._margin, c.width + 2 * self._margin])
        self._tracks: dict[int, list[int]] = {}
        self._illum = _illumination(c.height, c.width, c.vignetting)

    # ------------------------------------------------------------------ public API
    def frames(self) -> Iterator[SimFrame]:
        """Yield ``config.n_frames`` frames lazily; each call restarts from the seed."""
        root = np.random.default_rng(self.config.seed)
        motion, appearance, camera = root.spawn(3)
        self._tracks = {}
        self._next_label = 1
        cells = self._initial_cells(motion, appearance)
        defocused = _Defocused(self.config) if self.config.defocused_fraction > 0 else None
        for t in range(self.config.n_frames):
            slot_img, signal = self._render(cells)
            labels = self._update_tracks(cells, slot_img, t)
            if defocused is not None:
                signal = signal + defocused.render(t)
            image = self._camera(signal, t, camera)
            yield SimFrame(index=t, image=image, labels=labels)
            if t + 1 < self.config.n_frames:
                cells = self._advance(cells, motion, appearance, t)

    def tracks(self) -> list[tuple[int, int, int, int]]:
        """(label, begin, end, parent) of every track generated so far, by label."""
        return [(lab, b, e, p) for lab, (b, e, p) in sorted(self._tracks.items())]

    def divisions(self) -> list[Division]:
        """Divisions with both daughters visible (parents with ≥ 2 children so far)."""
        children: dict[int, list[int]] = {}
        for lab, _b, _e, p in self.tracks():
            if p:
                children.setdefault(p, []).append(lab)
        out = [
            Division(frame=self._tracks[p][1] + 1, parent=p, daughters=tuple(ch))
            for p, ch in children.items()
            if len(ch) >= 2
        ]
        return sorted(out, key=lambda d: (d.frame, d.parent))

    # ------------------------------------------------------------------ state
    def _new_cells(
        self,
        pos: FloatArray,
        mean_area: FloatArray,
        age: FloatArray,
        motion: np.random.Generator,
        appearance: np.random.Generator,
    ) -> _Cells:
        """Fresh cells at ``pos``; geometry from ``motion``, looks from ``appearance``."""
        c = self.config
        n = len(pos)
        sigma = c.speed_diam_per_frame * self._d
        cycle = c.cell_cycle_frames * np.exp(
            motion.normal(0.0, c.cell_cycle_cv, n) - c.cell_cycle_cv**2 / 2
        )
        cells = _Cells(
            pos=pos,
            vel=motion.normal(0.0, sigma, (n, 2)),
            mean_area=mean_area,
            ratio=motion.uniform(1.0, c.max_axis_ratio, n),
            theta=motion.uniform(0.0, np.pi, n),
            age=age * np.maximum(cycle, 2.0),
            cycle=np.maximum(cycle, 2.0),
            mitosis=np.zeros(n, np.int64),
            dying=np.zeros(n, np.int64),
            dying_total=np.zeros(n, np.int64),
            label=np.zeros(n, np.int64),
            parent=np.zeros(n, np.int64),
            bright=np.ones(n),
            waves=np.zeros((n, _N_WAVES, 4)),
            spots=np.zeros((n, _MAX_SPOTS, 4)),
        )
        _draw_appearance(cells, np.arange(n), c, appearance)
        return cells

    def _mean_areas(self, n: int, motion: np.random.Generator) -> FloatArray:
        cv = self.config.diameter_cv
        diam = self._d * np.exp(motion.normal(0.0, cv, n) - cv**2 / 2)
        return np.pi * diam**2 / 4

    def _initial_cells(
        self, motion: np.random.Generator, appearance: np.random.Generator
    ) -> _Cells:
        """n_cells centres in the frame plus the same density in the margin, relaxed."""
        c = self.config
        frame_area = c.height * c.width
        n_margin = round(c.n_cells * (float(np.prod(self._world)) - frame_area) / frame_area)
        inside = motion.uniform((0, 0), (c.height, c.width), (c.n_cells, 2)) + self._margin
        outside = self._margin_positions(n_margin, motion)
        pos = np.concatenate([inside, outside])
        n = len(pos)
        age = motion.uniform(0.0, c.initial_age_max, n)
        cells = self._new_cells(pos, self._mean_areas(n, motion), age, motion, appearance)
        for _ in range(20):
            self._repel(cells)
        return cells

    def _margin_positions(self, n: int, motion: np.random.Generator) -> FloatArray:
        """``n`` uniform positions in the world but outside the frame (rejection)."""
        c = self.config
        out = np.zeros((0, 2))
        while len(out) < n:
            p = motion.uniform((0, 0), self._world, (2 * (n - len(out)) + 8, 2))
            y, x = p[:, 0] - self._margin, p[:, 1] - self._margin
            gap = 1.5 * self._d  # far enough that a fresh cell has no pixel in the frame
            keep = (y < -gap) | (y > c.height + gap) | (x < -gap) | (x > c.width + gap)
            out = np.concatenate([out, p[keep]])
        return out[:n]

    # ------------------------------------------------------------------ dynamics
    def _areas(self, cells: _Cells) -> FloatArray:
        """Current nucleus area: grows as 2**phase (mean over a cycle = mean_area)."""
        phase = np.clip(cells.age / cells.cycle, 0.0, 1.0)
        area = cells.mean_area * _LN2 * 2.0**phase
        area = np.where(cells.mitosis > 0, area * self.config.mitotic_area_factor, area)
        return np.asarray(area * 0.75**cells.dying_total)

    def _advance(
        self,
        cells: _Cells,
        motion: np.random.Generator,
        appearance: np.random.Generator,
        t: int,
    ) -> _Cells:
        """State at frame t+1 from the state at frame t."""
        c = self.config
        n = len(cells)
        confluence = float(self._areas(cells).sum() / np.prod(self._world))
        growth = max(0.0, 1.0 - confluence / c.max_confluence)
        normal = (cells.mitosis == 0) & (cells.dying == 0)
        cells.age[normal] += growth
        # deaths and mitosis: decisions drawn for every cell so the stream stays aligned
        die_draw = motion.random(n)
        mit_draw = motion.integers(1, c.mitosis_frames + 1, n)
        finished_dying = cells.dying == 1
        divide = cells.mitosis == 1
        cells.dying[cells.dying > 0] -= 1
        cells.dying_total[cells.dying_total > 0] += 1
        cells.mitosis[cells.mitosis > 0] -= 1
        start_death = normal & (die_draw < c.death_rate)
        cells.dying[start_death] = c.death_frames
        cells.dying_total[start_death] = 1
        start_mit = normal & ~start_death & (cells.age >= cells.cycle)
        cells.mitosis[start_mit] = mit_draw[start_mit]
        cells.parent[:] = 0
        self._move(cells, motion)
        keep = np.flatnonzero(~finished_dying & ~divide)
        parts = [cells.take(keep)]
        mothers = np.flatnonzero(divide)
        if len(mothers):
            parts.append(self._daughters(cells.take(mothers), motion, appearance))
        n_new = motion.poisson(c.entry_rate * 2 * (c.height + c.width) / (100 * self._d))
        if n_new:
            pos = self._margin_positions(int(n_new), motion)
            age = motion.uniform(0.0, 1.0, int(n_new))
            parts.append(
                self._new_cells(pos, self._mean_areas(int(n_new), motion), age, motion, appearance)
            )
        out = _Cells.concat(parts)
        self._repel(out)
        _evolve_texture(out, appearance)
        return out

    def _move(self, cells: _Cells, motion: np.random.Generator) -> None:
        """Persistent random walk + drift; rounded-up and dying cells barely move."""
        c = self.config
        rho = c.persistence
        sigma = c.speed_diam_per_frame * self._d
        noise = motion.normal(0.0, sigma, cells.vel.shape)
        cells.vel[:] = rho * cells.vel + math.sqrt(1 - rho**2) * noise
        still = (cells.mitosis > 0) | (cells.dying > 0)
        step = np.where(still[:, None], 0.2 * cells.vel, cells.vel)
        cells.pos = self._wrap(cells.pos + step + np.asarray(c.drift_diam_per_frame) * self._d)
        cells.theta += motion.normal(0.0, 0.05, len(cells))

    def _daughters(
        self, mothers: _Cells, motion: np.random.Generator, appearance: np.random.Generator
    ) -> _Cells:
        """Two daughters per mother, each of half its pre-mitotic area, along an axis."""
        m = len(mothers)
        axis = motion.uniform(0.0, np.pi, m)
        if self.config.mitotic_axis_ratio > 1.0 or self.config.anaphase_frames > 0:
            axis = mothers.theta.copy()  # elongated mothers divide along their long axis
        unit = np.stack([np.sin(axis), np.cos(axis)], axis=1)
        phase = np.clip(mothers.age / mothers.cycle, 0.0, 1.0)
        pre_area = mothers.mean_area * _LN2 * 2.0**phase
        r_d = np.sqrt(pre_area / 2 / np.pi)
        offset = unit * r_d[:, None]
        pos = self._wrap(np.concatenate([mothers.pos + offset, mothers.pos - offset]))
        cv = self.config.diameter_cv
        inherit = np.exp(motion.normal(0.0, cv / 2, 2 * m))
        mean_area = np.tile(mothers.mean_area, 2) * inherit * self.config.daughter_area_factor
        daughters = self._new_cells(pos, mean_area, np.zeros(2 * m), motion, appearance)
        daughters.vel = (
            np.concatenate([mothers.vel, mothers.vel]) + np.concatenate([offset, -offset]) * 0.1
        )
        daughters.theta = np.tile(axis, 2)
        daughters.bright = np.tile(mothers.bright, 2) * np.exp(appearance.normal(0, 0.05, 2 * m))
        daughters.parent = np.tile(mothers.label, 2)
        return daughters

    def _repel(self, cells: _Cells) -> None:
        """Push overlapping pairs apart by a fraction of their overlap (periodic world)."""
        if len(cells) < 2 or self.config.repulsion == 0:
            return
        r = np.sqrt(self._areas(cells) / np.pi)
        tree = cKDTree(cells.pos, boxsize=self._world)
        reach = 2 * float(r.max()) * self.config.contact_distance
        pairs = tree.query_pairs(reach, output_type="ndarray")
        if len(pairs) == 0:
            return
        i, j = pairs[:, 0], pairs[:, 1]
        delta = cells.pos[i] - cells.pos[j]
        delta -= self._world * np.round(delta / self._world)
        dist = np.hypot(delta[:, 0], delta[:, 1])
        overlap = self.config.contact_distance * (r[i] + r[j]) - dist
        hit = overlap > 0
        if not hit.any():
            return
        i, j, delta, dist, overlap = i[hit], j[hit], delta[hit], dist[hit], overlap[hit]
        safe = np.maximum(dist, 1e-6)
        unit = delta / safe[:, None]
        # coincident centres: a deterministic direction from the pair indices
        same = dist < 1e-6
        unit[same] = np.stack([np.sin(i[same] + 0.5 * j[same]), np.cos(i[same] + 0.5 * j[same])], 1)
        push = unit * (0.5 * self.config.repulsion * overlap)[:, None]
        shift = np.zeros_like(cells.pos)
        np.add.at(shift, i, push)
        np.add.at(shift, j, -push)
        cells.pos = self._wrap(cells.pos + shift)

    def _wrap(self, pos: FloatArray) -> FloatArray:
        """Positions folded onto the torus, strictly inside [0, world) (cKDTree needs it)."""
        out = np.mod(pos, self._world)
        out[out >= self._world] = 0.0
        return out

    # ------------------------------------------------------------------ rendering
    def _render(self, cells: _Cells) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
        """Slot image (cell index + 1) and noiseless nucleus signal (photo-electrons)."""
        c = self.config
        h, w = c.height, c.width
        best = np.full((h, w), 1.0, np.float32)
        slot = np.zeros((h, w), np.int32)
        signal = np.zeros((h, w), np.float32)
        area = self._areas(cells)
        ratio = np.where(cells.mitosis > 0, c.mitotic_axis_ratio, cells.ratio)
        # anaphase: 1 at a mother's last mitotic frame, falling to 1 / anaphase_frames
        stage = np.where(
            (cells.mitosis > 0) & (cells.mitosis <= c.anaphase_frames),
            (c.anaphase_frames + 1 - cells.mitosis) / max(c.anaphase_frames, 1),
            0.0,
        )
        ratio = np.where(stage > 0, np.maximum(ratio, 1.4 + 0.6 * stage), ratio)
        b_ax = np.sqrt(area / (np.pi * ratio))
        a_ax = b_ax * ratio
        gain = cells.bright * c.nucleus_signal
        gain = np.where(cells.mitosis > 0, gain * c.mitotic_brightness, gain)
        gain = gain * 0.6**cells.dying_total
        cy = cells.pos[:, 0] - self._margin
        cx = cells.pos[:, 1] - self._margin
        reach = a_ax + 1.0
        y0 = np.maximum(np.floor(cy - reach), 0).astype(int)
        y1 = np.minimum(np.ceil(cy + reach) + 1, h).astype(int)
        x0 = np.maximum(np.floor(cx - reach), 0).astype(int)
        x1 = np.minimum(np.ceil(cx + reach) + 1, w).astype(int)
        for k in np.flatnonzero((y1 > y0) & (x1 > x0)):
            sl = (slice(y0[k], y1[k]), slice(x0[k], x1[k]))
            dy = (np.arange(y0[k], y1[k], dtype=np.float32) - np.float32(cy[k]))[:, None]
            dx = (np.arange(x0[k], x1[k], dtype=np.float32) - np.float32(cx[k]))[None, :]
            cos_t, sin_t = np.float32(np.cos(cells.theta[k])), np.float32(np.sin(cells.theta[k]))
            u = (dx * cos_t + dy * sin_t) / np.float32(a_ax[k])
            v = (dy * cos_t - dx * sin_t) / np.float32(b_ax[k])
            lobes = None
            if stage[k] > 0:
                v, lobes = _anaphase(u, v, float(stage[k]), c)
            d2 = u * u + v * v
            win = d2 < best[sl]
            if not win.any():
                continue
            inten = _texture(u, v, d2, cells, int(k), c, mitotic=bool(cells.mitosis[k] > 0))
            if lobes is not None:
                inten = inten * lobes
            best[sl][win] = d2[win]
            slot[sl][win] = k + 1
            signal[sl][win] = inten[win] * np.float32(gain[k])
        return slot, signal

    def _update_tracks(self, cells: _Cells, slot: NDArray[np.int32], t: int) -> NDArray[np.int32]:
        """Start/extend/end tracks from pixel visibility; return the track-label image."""
        counts = np.bincount(slot.ravel(), minlength=len(cells) + 1)[1:]
        visible = counts > 0
        ended = (cells.label > 0) & ~visible
        cells.label[ended] = 0
        for k in np.flatnonzero(visible & (cells.label == 0)):
            parent = int(cells.parent[k])
            if parent and self._tracks.get(parent, [0, -2, 0])[1] != t - 1:
                parent = 0
            self._tracks[self._next_label] = [t, t, parent]
            cells.label[k] = self._next_label
            self._next_label += 1
        for lab in cells.label[visible]:
            self._tracks[int(lab)][1] = t
        lut = np.zeros(len(cells) + 1, np.int32)
        lut[1:] = cells.label
        return lut[slot]

    def _camera(
        self, signal: NDArray[np.float32], t: int, camera: np.random.Generator
    ) -> NDArray[np.uint16]:
        """Illumination, bleaching, PSF, shot noise, gain, offset, read noise → uint16."""
        c = self.config
        if c.haze > 0:
            glow = ndi.gaussian_filter(signal, c.haze_diameters * c.nucleus_diameter_px)
            signal = signal + np.float32(c.haze) * glow
        if c.psf_sigma_px > 0:
            signal = ndi.gaussian_filter(signal, c.psf_sigma_px, truncate=3.0)
        bleach = np.float32(math.exp(-c.bleach_rate * t))
        electrons = signal * bleach + np.float32(c.background)
        if self._illum is not None:
            electrons *= self._illum
        counts = _shot_noise(electrons, camera)
        adu = counts * np.float32(c.gain) + np.float32(c.camera_offset)
        if c.read_noise > 0:
            adu += camera.standard_normal(adu.shape, dtype=np.float32) * np.float32(c.read_noise)
        return np.clip(np.rint(adu), 0, 65535).astype(np.uint16)


# ---------------------------------------------------------------------- helpers
class _Defocused:
    """Cells in other focal planes (``SimulationConfig.defocused_fraction``): faint blurred
    blobs of two overlapping ellipses each, drifting slowly, never labelled. Their own
    random stream (from the seed), so the in-focus movie is the same with or without them."""

    def __init__(self, c: SimulationConfig) -> None:
        self.c = c
        rng = np.random.default_rng([c.seed, 0xDEF0C])
        n = max(1, round(c.defocused_fraction * c.n_cells))
        d = c.nucleus_diameter_px
        self.pos = rng.uniform(0, 1, (n, 2)) * np.array([c.height, c.width])
        self.vel = rng.normal(0, 0.03 * d, (n, 2))
        self.axes = d * rng.uniform(0.4, 1.0, (n, 2, 2))  # (blob, lobe, semi-axis)
        self.offset = d * rng.uniform(-0.4, 0.4, (n, 2))  # the second lobe's centre
        self.theta = rng.uniform(0, np.pi, (n, 2))
        self.level = c.defocused_brightness * c.nucleus_signal * rng.uniform(0.5, 1.5, n)

    def render(self, t: int) -> NDArray[np.float32]:
        c, d = self.c, self.c.nucleus_diameter_px
        layer = np.zeros((c.height, c.width), np.float32)
        centres = self.pos + t * self.vel
        for k in range(len(centres)):
            for lobe in range(2):
                cy, cx = centres[k] + (self.offset[k] if lobe else 0.0)
                a, b = self.axes[k, lobe]
                r = int(np.ceil(max(a, b)))
                y0, y1 = max(0, int(cy) - r), min(c.height, int(cy) + r + 1)
                x0, x1 = max(0, int(cx) - r), min(c.width, int(cx) + r + 1)
                if y1 <= y0 or x1 <= x0:
                    continue
                dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
                dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
                angle = self.theta[k, lobe]
                ct, st = np.float32(np.cos(angle)), np.float32(np.sin(angle))
                u = (dx * ct + dy * st) / np.float32(a)
                v = (dy * ct - dx * st) / np.float32(b)
                inside = u * u + v * v <= 1.0
                region = layer[y0:y1, x0:x1]
                region[inside] = np.maximum(region[inside], np.float32(self.level[k]))
        if c.defocused_blur > 0:
            layer = ndi.gaussian_filter(layer, c.defocused_blur * d)
        return layer


_EXACT_POISSON_BELOW = 20.0
"""Shot noise is drawn exactly (Poisson) where the mean is below this many electrons and
with the Gaussian approximation (mean = variance = λ) above, where the two are
indistinguishable in practice; numpy's exact Poisson costs ~60 ms per megapixel, which
alone would break the per-frame budget of a live driver."""


def _shot_noise(electrons: NDArray[np.float32], rng: np.random.Generator) -> NDArray[np.float32]:
    """Photon counts for mean ``electrons`` per pixel (Poisson / Gaussian approximation)."""
    z = rng.standard_normal(electrons.shape, dtype=np.float32)
    counts = np.rint(electrons + np.sqrt(electrons) * z)
    low = electrons < np.float32(_EXACT_POISSON_BELOW)
    if low.any():
        counts[low] = rng.poisson(electrons[low])
    return np.maximum(counts, np.float32(0.0))


def _illumination(h: int, w: int, vignetting: float) -> NDArray[np.float32] | None:
    """Smooth radial falloff: 1 at the centre, 1 - vignetting in the corners."""
    if vignetting == 0:
        return None
    yy = (np.arange(h, dtype=np.float32) - (h - 1) / 2) / (h / 2)
    xx = (np.arange(w, dtype=np.float32) - (w - 1) / 2) / (w / 2)
    r2 = (yy[:, None] ** 2 + xx[None, :] ** 2) / 2
    return (1.0 - np.float32(vignetting) * r2).astype(np.float32)


def _draw_appearance(
    cells: _Cells, idx: NDArray[np.intp], c: SimulationConfig, rng: np.random.Generator
) -> None:
    """Brightness, texture waves and bright spots for the cells at ``idx``."""
    n = len(idx)
    cells.bright[idx] = np.exp(rng.normal(0.0, c.brightness_cv, n) - c.brightness_cv**2 / 2)
    freq = rng.uniform(0.6, 2.0, (n, _N_WAVES)) * np.pi  # 0.3–1 cycles per radius
    ang = rng.uniform(0.0, 2 * np.pi, (n, _N_WAVES))
    cells.waves[idx, :, 0] = freq * np.cos(ang)
    cells.waves[idx, :, 1] = freq * np.sin(ang)
    cells.waves[idx, :, 2] = rng.uniform(0.0, 2 * np.pi, (n, _N_WAVES))
    cells.waves[idx, :, 3] = rng.uniform(0.5, 1.0, (n, _N_WAVES)) * c.texture_amplitude / 1.5
    n_spots = np.minimum(rng.poisson(c.mean_spots, n), _MAX_SPOTS)
    rad = np.sqrt(rng.uniform(0.0, 0.55, (n, _MAX_SPOTS)))
    phi = rng.uniform(0.0, 2 * np.pi, (n, _MAX_SPOTS))
    cells.spots[idx, :, 0] = rad * np.cos(phi)
    cells.spots[idx, :, 1] = rad * np.sin(phi)
    cells.spots[idx, :, 2] = rng.uniform(0.08, 0.18, (n, _MAX_SPOTS))
    amp = rng.uniform(0.5, 1.0, (n, _MAX_SPOTS)) * c.spot_brightness
    if c.nucleoli_fraction > 0:  # drawn only then: movies without nucleoli stay identical
        dark = rng.random((n, _MAX_SPOTS)) < c.nucleoli_fraction
        amp = np.where(dark, -c.nucleolus_depth * rng.uniform(0.7, 1.0, (n, _MAX_SPOTS)), amp)
        cells.spots[idx, :, 2] = np.where(
            dark, 1.6 * cells.spots[idx, :, 2], cells.spots[idx, :, 2]
        )
    amp[np.arange(_MAX_SPOTS)[None, :] >= n_spots[:, None]] = 0.0
    cells.spots[idx, :, 3] = amp


def _evolve_texture(cells: _Cells, rng: np.random.Generator) -> None:
    """Chromatin changes slowly: the texture phases drift a little every frame."""
    cells.waves[:, :, 2] += rng.normal(0.0, 0.15, (len(cells), _N_WAVES))


def _anaphase(
    u: NDArray[np.floating[Any]], v: NDArray[np.floating[Any]], stage: float, c: SimulationConfig
) -> tuple[NDArray[Any], NDArray[Any]]:
    """A mother in anaphase, in her own (u, v) ellipse coordinates (u along the division
    axis): ``v`` rescaled so that her outline narrows at the waist, and the relative
    signal of two chromatin lobes at u = ±centre joined by a dimmer bridge. ``stage``
    (0, 1]: how far anaphase has gone (1 = the frame before the daughters appear)."""
    centre = np.float32(0.2 + 0.35 * stage)
    width = np.float32(0.3)
    pinch = np.float32(c.anaphase_pinch * stage)
    waist = 1.0 - pinch * np.exp(-(u * u) / np.float32(2 * 0.25**2))
    bridge = np.float32(1.0 - (1.0 - c.anaphase_bridge) * stage)
    near = np.minimum(np.abs(u - centre), np.abs(u + centre))
    lobe = np.exp(-(near * near) / (2 * width * width))
    lobe = np.where(np.abs(u) > centre, np.float32(1.0), lobe)  # outer halves stay full
    mid = np.exp(-(centre * centre) / (2 * width * width))  # the profile at the waist
    lobe = (lobe - mid) / (1.0 - mid)
    return (v / waist).astype(np.float32), (bridge + (1.0 - bridge) * lobe).astype(np.float32)


def _texture(
    u: NDArray[np.floating[Any]],
    v: NDArray[np.floating[Any]],
    d2: NDArray[np.floating[Any]],
    cells: _Cells,
    k: int,
    c: SimulationConfig,
    *,
    mitotic: bool,
) -> NDArray[np.float32]:
    """Relative intensity inside nucleus ``k`` in its own (u, v) ellipse coordinates."""
    tex = np.ones_like(u)
    scale = np.float32(0.4 if mitotic else 1.0)  # condensed chromatin looks more uniform
    for ku, kv, ph, amp in cells.waves[k]:
        if amp > 0:
            tex += scale * np.float32(amp) * np.cos(u * np.float32(ku) + v * np.float32(kv) + ph)
    for su, sv, sw, amp in cells.spots[k]:
        if amp > 0:
            r2 = (u - np.float32(su)) ** 2 + (v - np.float32(sv)) ** 2
            tex += scale * np.float32(amp) * np.exp(r2 * np.float32(-0.5 / sw**2))
    tex *= 1.0 - np.float32(0.3) * d2 * d2  # dimmer rim
    return np.maximum(tex, np.float32(0.05))


# ---------------------------------------------------------------------- CTC writer
def _pad(n_frames: int) -> int:
    return 4 if n_frames > 1000 else 3


def write_ctc(config: SimulationConfig, out_dir: Path, sequence: str = "01") -> Path:
    """Write the movie and its ground truth in Cell Tracking Challenge layout.

    ``OUT/NN/tNNN.tif`` (uint16 images), ``OUT/NN_GT/TRA/man_trackNNN.tif`` +
    ``man_track.txt`` and ``OUT/NN_GT/SEG/man_segNNN.tif`` (uint16 full-mask labels =
    track labels). Returns ``OUT/NN``.
    """
    out_dir = Path(out_dir)
    img_dir = out_dir / sequence
    tra_dir = out_dir / f"{sequence}_GT" / "TRA"
    seg_dir = out_dir / f"{sequence}_GT" / "SEG"
    for d in (img_dir, tra_dir, seg_dir):
        d.mkdir(parents=True, exist_ok=True)
    pad = _pad(config.n_frames)
    px_per_cm = 1e4 / config.pixel_size_um
    tiff_kw: dict[str, object] = {
        "compression": "zlib",
        "resolution": (px_per_cm, px_per_cm),
        "resolutionunit": "CENTIMETER",
    }
    sim = NucleiSimulator(config)
    for fr in sim.frames():
        if fr.labels.max(initial=0) > np.iinfo(np.uint16).max:
            raise ConfigError("more than 65535 tracks: CTC label images are uint16")
        name = f"{fr.index:0{pad}d}"
        lab16 = fr.labels.astype(np.uint16)
        tifffile.imwrite(img_dir / f"t{name}.tif", fr.image, **tiff_kw)  # type: ignore[arg-type]
        tifffile.imwrite(tra_dir / f"man_track{name}.tif", lab16, **tiff_kw)  # type: ignore[arg-type]
        tifffile.imwrite(seg_dir / f"man_seg{name}.tif", lab16, **tiff_kw)  # type: ignore[arg-type]
    lines = [f"{lab} {b} {e} {p}\n" for lab, b, e, p in sim.tracks()]
    (tra_dir / "man_track.txt").write_text("".join(lines))
    log.info("wrote %d frames, %d tracks to %s", config.n_frames, len(lines), img_dir)
    return img_dir
