"""Training of the learned nucleus segmenter: seeded, reproducible, CPU-friendly.

Data: simulated movies with randomised settings (the unlimited source: density, size,
shape, brightness spread, texture, noise, blur and illumination all drawn per movie) plus
any CTC-layout sequences with SEG masks. Every sample is normalised like at inference
(``scale.normalise`` on the whole frame) and rescaled so its nuclei have the model's
canonical diameter times a random factor (scale augmentation; also covers the error of
the automatic diameter estimate). Patches are then flipped, rotated by 90°, and their
intensity, gamma, noise and blur randomised.

Sparse ground truth (CTC GOWT1: only a few nuclei per SEG frame are drawn) is handled by a
loss mask: pixels around TRA objects that have no SEG outline are ignored, instead of
teaching the model that unannotated nuclei are background.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tifffile
import torch
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.transform import resize

from livetrack.errors import ConfigError
from livetrack.segment.model import (
    ModelConfig,
    NucleusUNet,
    inner_distance,
    outer_distance,
    save_model,
)
from livetrack.segment.scale import normalise
from livetrack.simulators.nuclei import NucleiSimulator, SimulationConfig

log = logging.getLogger("livetrack.training.segment")


@dataclass(frozen=True)
class CtcSource:
    """A CTC sequence folder (e.g. .../Fluo-N2DH-SIM+/01) and the SEG frames to use."""

    path: Path
    first: int = 0
    last: int = 10**9

    @classmethod
    def parse(cls, text: str) -> CtcSource:
        """``PATH`` or ``PATH:FIRST-LAST`` (inclusive frame indices)."""
        m = re.fullmatch(r"(.+?):(\d+)-(\d+)", text)
        if m:
            return cls(Path(m.group(1)), int(m.group(2)), int(m.group(3)))
        return cls(Path(text))


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved next to the weights)."""

    seed: int = 0
    steps: int = 3000
    batch: int = 8
    patch: int = 128
    lr: float = 3e-3
    sim_movies: int = 160
    """Simulated movies with random settings; two frames are taken from each."""
    ctc: tuple[CtcSource, ...] = ()
    ctc_scales: int = 3
    """Rescaled copies per CTC frame (each with its own random scale factor)."""
    scale_jitter: float = 1.3
    """Nuclei are rescaled to canonical × a factor in [1/jitter, jitter]."""
    threads: int = 2
    recipe: str = "v1"
    """Simulated-data recipe: "v1" (seg-unet-v1's: two frames of short movies), "v2"
    (seg-unet-v2's: longer movies whose late frames are crowded, a frame right after a
    division from each, and wider appearance: mitotic shapes, shrinking daughters,
    nucleoli, out-of-focus haze, strongly elongated nuclei), "v3" (v2's, with a quarter
    of the movies dense colonies of small rods that divide end to end, ``ROD_SHARE``) or
    "v4" (v2's, with cells in other focal planes in ``DEFOCUSED_SHARE`` of the movies:
    faint blurred blobs that are background, ``SimulationConfig.defocused_fraction``) or
    "v5" (v2's, with mothers in anaphase in ``ANAPHASE_SHARE`` of the movies: two chromatin
    lobes that are still one object, ``SimulationConfig.anaphase_frames``, and from each
    movie also the frame before its first division, where such a mother is) or "v6" (v4's
    cells in other focal planes, but always strongly blurred and as bright as dim nuclei in
    focus can be, so that blur, not faintness, marks them)."""
    model: ModelConfig = field(default_factory=ModelConfig)


@dataclass
class Sample:
    """One training frame at (jittered) canonical scale, with precomputed targets."""

    image: NDArray[np.float32]
    targets: NDArray[np.float32]
    """(4, H, W): inner, outer, foreground (0/1), valid (0/1)."""


def _rescale(
    image: NDArray[np.float32], labels: NDArray[np.integer], factor: float
) -> tuple[NDArray[np.float32], NDArray[np.int32]]:
    shape = (max(8, round(image.shape[0] * factor)), max(8, round(image.shape[1] * factor)))
    img = resize(image, shape, order=1, anti_aliasing=factor < 1, preserve_range=True)
    lab = resize(labels, shape, order=0, anti_aliasing=False, preserve_range=True)
    return img.astype(np.float32), lab.astype(np.int32)


def make_sample(
    image: NDArray[np.generic],
    labels: NDArray[np.integer],
    diameter_px: float,
    model: ModelConfig,
    rng: np.random.Generator,
    jitter: float,
    ignore: NDArray[np.bool_] | None = None,
) -> Sample:
    """Normalise like inference, rescale to the canonical diameter (× jitter), targets."""
    factor = (
        model.canonical_diameter_px / diameter_px * math.exp(rng.uniform(-1, 1) * math.log(jitter))
    )
    img, lab = _rescale(normalise(image), np.asarray(labels), factor)
    valid = np.ones(lab.shape, np.float32)
    if ignore is not None:
        ign = resize(ignore, lab.shape, order=0, anti_aliasing=False, preserve_range=True)
        valid[ign.astype(bool) & (lab == 0)] = 0.0
    targets = np.stack(
        [
            inner_distance(lab, model.inner_steepness),
            outer_distance(lab, model.canonical_diameter_px / 2.0),
            (lab > 0).astype(np.float32),
            valid,
        ]
    )
    return Sample(img, targets)


ROD_SHARE = 0.25
"""Recipe v3: the share of simulated training movies that are rod colonies."""
DEFOCUSED_SHARE = 0.35
"""Recipe v4: the share of simulated training movies with cells in other focal planes."""


ANAPHASE_SHARE = 0.5
"""Recipe v5: the share of simulated training movies whose mothers show anaphase."""


def random_sim_config(
    rng: np.random.Generator, canonical: float, recipe: str = "v1"
) -> SimulationConfig:
    """A simulated movie with settings drawn wide around the SIM+/GOWT1-like presets
    (``recipe`` "v2" draws more of them, after the v1 draws so v1 stays reproducible)."""
    preset = rng.integers(3)
    diameter = float(np.exp(rng.uniform(np.log(12.0), np.log(70.0))))
    size = int(np.clip(round(rng.uniform(150, 230) * diameter / canonical), 96, 1100))
    density = rng.uniform(0.08, 0.6)
    n_cells = max(2, round(density * size * size / (np.pi * diameter**2 / 4)))
    over: dict[str, object] = {
        "seed": int(rng.integers(2**31)),
        "n_frames": int(rng.integers(1, 25)),
        "height": size,
        "width": size,
        "n_cells": n_cells,
        "nucleus_diameter_px": diameter,
        "diameter_cv": rng.uniform(0.05, 0.3),
        "max_axis_ratio": rng.uniform(1.0, 2.0),
        "pixel_size_um": 0.5,
        "initial_age_max": 1.0,
        "max_confluence": rng.uniform(0.4, 0.8),
        "contact_distance": rng.uniform(0.75, 1.0),
        "brightness_cv": rng.uniform(0.05, 0.8),
        "texture_amplitude": rng.uniform(0.0, 0.5),
        "mean_spots": rng.uniform(0.0, 4.0),
        "spot_brightness": rng.uniform(0.0, 1.2),
        "background": float(np.exp(rng.uniform(np.log(0.3), np.log(60.0)))),
        "nucleus_signal": float(np.exp(rng.uniform(np.log(8.0), np.log(400.0)))),
        "read_noise": rng.uniform(0.5, 6.0),
        "gain": rng.uniform(0.5, 3.0),
        "psf_sigma_px": rng.uniform(0.0, 0.05 * diameter),
        "vignetting": rng.uniform(0.0, 0.5),
    }
    if recipe in ("v2", "v3", "v4", "v5", "v6"):
        over.update(
            {
                "n_frames": int(rng.integers(1, 61)),
                "max_axis_ratio": rng.uniform(1.0, 3.0),
                "max_confluence": rng.uniform(0.4, 0.9),
                "cell_cycle_frames": rng.uniform(10.0, 40.0),
                "daughter_area_factor": rng.uniform(0.7, 1.0),
                "mitotic_axis_ratio": rng.uniform(1.0, 2.5),
                "mitotic_brightness": rng.uniform(1.0, 2.5),
                "mitotic_area_factor": rng.uniform(0.4, 1.0),
                "nucleoli_fraction": rng.uniform(0.3, 1.0) if rng.random() < 0.3 else 0.0,
                "haze": rng.uniform(0.1, 1.0) if rng.random() < 0.3 else 0.0,
                "haze_diameters": rng.uniform(0.5, 2.0),
            }
        )
    elif recipe != "v1":
        raise ConfigError(f"unknown training recipe {recipe!r} (v1, v2, v3, v4, v5 or v6)")
    if recipe == "v4" and rng.random() < DEFOCUSED_SHARE:
        # Cells in other focal planes: faint, blurred, irregular, not in the ground truth —
        # what a widefield microscope shows around the nuclei in focus.
        over.update(
            {
                "defocused_fraction": rng.uniform(0.1, 1.0),
                "defocused_brightness": float(np.exp(rng.uniform(np.log(0.04), np.log(0.3)))),
                "defocused_blur": rng.uniform(0.05, 0.4),
            }
        )
    if recipe == "v6" and rng.random() < DEFOCUSED_SHARE:
        # Cells in other focal planes told apart by their blur: as bright as the dimmest
        # nuclei in focus, but blurred over a fifth to a half of a diameter.
        over.update(
            {
                "defocused_fraction": rng.uniform(0.1, 1.0),
                "defocused_brightness": float(np.exp(rng.uniform(np.log(0.08), np.log(0.5)))),
                "defocused_blur": rng.uniform(0.2, 0.5),
            }
        )
    if recipe == "v5" and rng.random() < ANAPHASE_SHARE:
        # Mothers in anaphase: two lobes of chromatin with a bridge, one object until the
        # daughters part (how Fluo-N2DH-SIM+ annotates them) — not two touching nuclei.
        frames = int(rng.integers(1, 4))
        over.update(
            {
                "anaphase_frames": frames,
                "mitosis_frames": int(rng.integers(frames, 6)),
                "anaphase_bridge": rng.uniform(0.15, 0.7),
                "anaphase_pinch": rng.uniform(0.1, 0.6),
            }
        )
    if recipe == "v3" and rng.random() < ROD_SHARE:
        # A dense colony of small rods (bacteria-like) dividing end to end with no mitotic
        # look, packed towards confluence: cells the nuclear presets never show.
        diameter = float(np.exp(rng.uniform(np.log(6.0), np.log(16.0))))
        size = int(np.clip(round(rng.uniform(150, 230) * diameter / canonical), 96, 1100))
        axis = rng.uniform(1.8, 4.0)
        over.update(
            {
                "n_frames": int(rng.integers(15, 51)),
                "height": size,
                "width": size,
                "n_cells": max(4, round(rng.uniform(0.15, 0.5) * size * size / diameter**2)),
                "nucleus_diameter_px": diameter,
                "diameter_cv": rng.uniform(0.05, 0.15),
                "max_axis_ratio": axis,
                "mitotic_axis_ratio": min(axis, 3.0),
                "mitotic_brightness": 1.0,
                "mitotic_area_factor": 1.0,
                "texture_amplitude": rng.uniform(0.0, 0.15),
                "mean_spots": 0.0,
                "cell_cycle_frames": rng.uniform(6.0, 14.0),
                "cell_cycle_cv": 0.15,
                "max_confluence": rng.uniform(0.85, 1.0),
                "speed_diam_per_frame": rng.uniform(0.01, 0.1),
                "nucleoli_fraction": 0.0,
            }
        )
        return SimulationConfig.model_validate(over)
    if preset == 1:
        return SimulationConfig.like_sim_plus(**over)
    if preset == 2:
        return SimulationConfig.like_gowt1(**over)
    return SimulationConfig.model_validate(over)


def simulated_samples(cfg: TrainConfig, rng: np.random.Generator) -> list[Sample]:
    """Two frames of each simulated movie (first and last); recipe v2 adds the frame where
    the movie's first division's daughters appear (touching sisters, mitotic shapes)."""
    out: list[Sample] = []
    for _ in range(cfg.sim_movies):
        sim_cfg = random_sim_config(rng, cfg.model.canonical_diameter_px, cfg.recipe)
        sim = NucleiSimulator(sim_cfg)
        take = {0, sim_cfg.n_frames - 1}
        frames = list(sim.frames())
        if cfg.recipe in ("v2", "v3", "v4", "v5", "v6") and sim.divisions():
            take.add(min(d.frame for d in sim.divisions()))
        if cfg.recipe == "v5" and sim.divisions():
            take.add(min(d.frame for d in sim.divisions()) - 1)  # a mother in anaphase
        for frame in frames:
            if frame.index in take and frame.labels.max() > 0:
                out.append(
                    make_sample(
                        frame.image,
                        frame.labels,
                        gt_diameter(frame.labels),
                        cfg.model,
                        rng,
                        cfg.scale_jitter,
                    )
                )
    return out


def gt_diameter(labels: NDArray[np.integer]) -> float:
    """Median equivalent diameter of the labelled objects (the exact scale of a frame)."""
    areas = np.bincount(np.asarray(labels).ravel())[1:]
    areas = areas[areas > 0]
    return float(2.0 * np.sqrt(np.median(areas) / np.pi)) if areas.size else 1.0


def ctc_frames(
    source: CtcSource,
) -> list[tuple[NDArray[np.generic], NDArray[np.int32], NDArray[np.bool_] | None]]:
    """(image, SEG labels, ignore mask or None) for the SEG frames in the source's range
    (``indexed_ctc_frames`` without the frame numbers)."""
    return [(image, seg, ignore) for _i, image, seg, ignore in indexed_ctc_frames(source)]


def indexed_ctc_frames(
    source: CtcSource,
) -> list[tuple[int, NDArray[np.generic], NDArray[np.int32], NDArray[np.bool_] | None]]:
    """(frame, image, SEG labels, ignore mask or None) for the SEG frames in the source's
    range. Frames without a SEG file are not annotated and are left out.

    A TRA object with no SEG outline over it marks an unannotated nucleus: it and a
    margin of a tenth of a diameter around it go into the ignore mask."""
    seq = source.path
    gt = seq.parent / f"{seq.name}_GT"
    seg_files = sorted((gt / "SEG").glob("man_seg*.tif"))
    if not seg_files:
        raise ConfigError(f"no SEG masks under {gt / 'SEG'}")
    out = []
    for f in seg_files:
        digits = f.stem.removeprefix("man_seg")
        idx = int(digits)
        if not source.first <= idx <= source.last:
            continue
        image_file = seq / f"t{digits}.tif"
        if not image_file.is_file():
            raise ConfigError(f"SEG frame {f} has no image {image_file}")
        image = tifffile.imread(image_file)
        seg = tifffile.imread(f).astype(np.int32)
        if seg.ndim != 2:
            continue
        ignore = None
        tra_file = gt / "TRA" / f"man_track{digits}.tif"
        if tra_file.exists():
            tra = tifffile.imread(tra_file).astype(np.int32)
            annotated = np.unique(tra[seg > 0])
            missing = (tra > 0) & ~np.isin(tra, annotated)
            if missing.any():
                grow = max(1, round(0.1 * gt_diameter(seg)))
                ignore = ndi.binary_dilation(missing, iterations=grow)
        out.append((idx, image, seg, ignore))
    return out


def ctc_samples(cfg: TrainConfig, rng: np.random.Generator) -> list[Sample]:
    out: list[Sample] = []
    for source in cfg.ctc:
        frames = ctc_frames(source)
        log.info("%s: %d SEG frames", source.path, len(frames))
        for image, seg, ignore in frames:
            d = gt_diameter(seg)
            for _ in range(cfg.ctc_scales):
                out.append(make_sample(image, seg, d, cfg.model, rng, cfg.scale_jitter, ignore))
    return out


def _pad_to(arr: NDArray[np.float32], size: int) -> NDArray[np.float32]:
    h, w = arr.shape[-2:]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph == 0 and pw == 0:
        return arr
    pad = [(0, 0)] * (arr.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(arr, pad, mode="constant")


def augment(
    sample: Sample, size: int, rng: np.random.Generator
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """A random patch: crop, flip, 90° rotation, gamma, gain/offset, blur and noise."""
    img = _pad_to(sample.image, size)
    tgt = _pad_to(sample.targets, size)  # padding gets valid = 0
    h, w = img.shape
    y, x = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    img = img[y : y + size, x : x + size]
    tgt = tgt[:, y : y + size, x : x + size]
    k = int(rng.integers(4))
    img, tgt = np.rot90(img, k), np.rot90(tgt, k, axes=(1, 2))
    if rng.random() < 0.5:
        img, tgt = img[:, ::-1], tgt[:, :, ::-1]
    img = np.clip(img, 0.0, None) ** rng.uniform(0.6, 1.6)
    if rng.random() < 0.3:
        img = ndi.gaussian_filter(img, rng.uniform(0.3, 1.2))
    img = img * rng.uniform(0.7, 1.3) + rng.uniform(-0.1, 0.1)
    img = (img + rng.normal(0.0, rng.uniform(0.0, 0.08), img.shape)).astype(np.float32)
    return np.ascontiguousarray(img, np.float32), np.ascontiguousarray(tgt, np.float32)


def loss_fn(out: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """MSE on both distance maps + class-balanced cross-entropy on fg/bg, over valid
    pixels only (Caliban weighs the CE by 0.01; a larger weight sharpens outlines)."""
    valid = tgt[:, 3]
    n = valid.sum().clamp(min=1.0)
    mse = ((out[:, 0] - tgt[:, 0]) ** 2 + (out[:, 1] - tgt[:, 1]) ** 2) * valid
    fg = tgt[:, 2].long()
    frac = (tgt[:, 2] * valid).sum() / n
    weight = torch.stack([0.5 / (1 - frac).clamp(min=0.05), 0.5 / frac.clamp(min=0.05)])
    ce = torch.nn.functional.cross_entropy(out[:, 2:4], fg, weight=weight, reduction="none")
    return (mse.sum() + 0.5 * (ce * valid).sum()) / n


def train(cfg: TrainConfig, out_dir: Path) -> dict[str, object]:
    """Build the data, train, save ``config.json`` + ``weights.pt`` to ``out_dir``."""
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    samples = simulated_samples(cfg, rng) + ctc_samples(cfg, rng)
    if not samples:
        raise ConfigError("no training data")
    data_s = time.perf_counter() - start
    log.info("%d training frames built in %.0f s", len(samples), data_s)
    model = NucleusUNet(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    model.train()
    running = 0.0
    for step in range(cfg.steps):
        picks = rng.integers(len(samples), size=cfg.batch)
        pairs = [augment(samples[i], cfg.patch, rng) for i in picks]
        x = torch.from_numpy(np.stack([p[0] for p in pairs])[:, None])
        y = torch.from_numpy(np.stack([p[1] for p in pairs]))
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if step % 100 == 0 or step == cfg.steps - 1:
            log.info("step %d loss %.4f (%.0f s)", step, running, time.perf_counter() - start)
    wall = time.perf_counter() - start
    info: dict[str, object] = {
        "train": train_record_with_digests(jsonable(asdict(cfg))),
        "frames": len(samples),
        "final_loss": running,
        "wall_s": round(wall, 1),
        "data_s": round(data_s, 1),
    }
    save_model(model, out_dir, info)
    return info


def train_record_with_digests(train: object) -> object:
    """The training record with each CTC sequence's lineage digest (so a benchmark knows
    the sequence under any name: ``benchmark.provenance``)."""
    from livetrack.evaluate.ctcfiles import with_lineage_digests

    if isinstance(train, dict) and "ctc" in train:
        return {**train, "ctc": with_lineage_digests(train["ctc"])}
    return train


def jsonable(obj: object) -> object:
    """``obj`` with paths as strings and tuples as lists (for config.json)."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
