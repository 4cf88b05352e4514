"""Fine-tuning a model on a user's corrected frames: minutes on a CPU, without forgetting.

A user corrects a few frames of one run (``livetrack export DB --for-correction OUT``
writes them in the CTC training layout, which napari opens as image + labels layers) and
fine-tunes from the shipped weights (or any model folder):

- **segmenter** — the corrected SEG frames, each at a few random scales, mixed batch by
  batch with freshly simulated frames of the base model's own recipe (``replay``: the
  share of each batch drawn from them), so that what the model knew is rehearsed while it
  learns the new look. Sparse annotation is allowed: frames without a SEG file are not
  used (never taken as empty), TRA objects without a SEG outline are ignored, and with
  ``partial`` only pixels within a margin of an annotated nucleus count as background
  (the unannotated rest of the frame is not background, it is unknown).
- **tracker** — the corrected TRA frames (every nucleus of a frame outlined, lineage in
  ``man_track.txt``), runs of consecutive annotated frames, mixed with simulated movies of
  the base model's recipe. The base model's validated thresholds are kept (choosing new
  ones needs held-out validation movies of the new cells, which ten frames cannot give).

The output is a model folder like any other (``config.json`` + ``weights.pt``) whose
config records its provenance: the base model (folder and weights sha256), the corrected
data (folders, frame ranges, frames used), the seed, the settings and the command line.
Runs select it with ``[segment] model_dir`` / ``[track] model_dir`` (or the CLI's
``--segment-model`` / ``--track-model``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from numpy.typing import NDArray
from scipy import ndimage as ndi

from livetrack.config import TrackConfig
from livetrack.errors import ConfigError
from livetrack.evaluate.ctcfiles import read_track_file, with_lineage_digests
from livetrack.models import SHIPPED_SEGMENT_MODEL, SHIPPED_TRACK_MODEL, weights_digest
from livetrack.segment.model import CONFIG_FILE, ModelConfig, load_model, save_model
from livetrack.track.lstm import trained_diameter_range
from livetrack.track.model import load_tracknet, save_tracknet
from livetrack.training.segment import (
    CtcSource,
    Sample,
    TrainConfig,
    augment,
    gt_diameter,
    indexed_ctc_frames,
    jsonable,
    loss_fn,
    make_sample,
    simulated_samples,
)
from livetrack.training.track import (
    Movie,
    TrackTrainConfig,
    build_movies,
    history_window,
    movie_from_frames,
    pick_frame,
    sample_loss,
)
from livetrack.training.track import (
    make_sample as make_track_sample,
)

log = logging.getLogger("livetrack.training.finetune")

Progress = Callable[[int, int, float], None]
"""Called after every step with (step, total steps, running loss)."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that defines a fine-tuning run (saved in the new model's config.json)."""

    ctc: tuple[CtcSource, ...]
    """Corrected CTC sequence folders (``NN`` with ``NN_GT`` beside it) and frame ranges."""
    base: Path | None = None
    """Model folder to start from; None = the shipped model."""
    seed: int = 0
    steps: int = 400
    lr: float = 5e-4
    """Peak learning rate (a tenth of the full training's: the start is already good)."""
    replay: float = 0.5
    """Share of every batch drawn from freshly simulated data of the base model's recipe
    (rehearsal, so the model does not forget what it knew)."""
    replay_movies: int | None = None
    """Simulated movies behind the rehearsal data (None: 40 for the segmenter, which
    takes two frames of each; 16 for the tracker, which takes whole movies)."""
    scales: int = 4
    """(segmenter) Rescaled copies of each corrected frame."""
    partial: bool = False
    """(segmenter) The corrected frames outline only some nuclei: background is learned
    only within ``partial_margin`` diameters of an outlined nucleus."""
    partial_margin: float = 0.3
    threads: int = 2
    command: tuple[str, ...] = field(default_factory=tuple)
    """The command line that ran it (provenance)."""


def _provenance(cfg: FinetuneConfig, base: Path, used: dict[str, list[int]]) -> dict[str, Any]:
    skip = ("ctc", "base", "command")
    return {
        "base_model": {"path": str(base.resolve()), "weights_sha256": weights_digest(base)},
        "data": with_lineage_digests(
            [
                {
                    "path": str(s.path.resolve()),
                    "first": s.first,
                    "last": s.last,
                    "frames": used[str(s.path)],
                }
                for s in cfg.ctc
            ]
        ),
        "settings": jsonable({k: v for k, v in asdict(cfg).items() if k not in skip}),
        "command": list(cfg.command),
    }


def _base_config(base: Path) -> dict[str, Any]:
    try:
        meta: dict[str, Any] = json.loads((base / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the base model's config in {base}: {exc}") from None
    return meta


def _check(cfg: FinetuneConfig) -> None:
    if not cfg.ctc:
        raise ConfigError("nothing to fine-tune on: name at least one corrected CTC folder")
    if cfg.steps < 1:
        raise ConfigError(f"steps must be at least 1, got {cfg.steps}")
    if not 0.0 <= cfg.replay < 1.0:
        raise ConfigError(f"replay must be in [0, 1), got {cfg.replay}")
    for s in cfg.ctc:
        if not s.path.is_dir():
            raise ConfigError(f"no sequence folder {s.path}")


# ---------------------------------------------------------------------- segmenter


def corrected_seg_samples(
    cfg: FinetuneConfig, model: ModelConfig, rng: np.random.Generator
) -> tuple[list[Sample], dict[str, list[int]]]:
    """Training samples from the corrected SEG frames; also, per folder, the frames used."""
    samples: list[Sample] = []
    used: dict[str, list[int]] = {}
    for source in cfg.ctc:
        frames = indexed_ctc_frames(source)
        if not frames:
            raise ConfigError(
                f"{source.path}: no SEG frame in {source.first}-{source.last} "
                "(the corrected masks go in NN_GT/SEG/man_segNNN.tif)"
            )
        sizes = [gt_diameter(seg) for _i, _im, seg, _ig in frames if seg.max() > 0]
        if not sizes:
            raise ConfigError(f"{source.path}: its SEG frames outline no nucleus")
        typical = float(np.median(sizes))
        used[str(source.path)] = []
        for idx, image, seg, ignore in frames:
            if seg.max() == 0 and cfg.partial:
                log.warning("%s: SEG frame %d outlines nothing; left out", source.path, idx)
                continue
            # A SEG file with no nucleus in a complete annotation: a frame without nuclei.
            d = gt_diameter(seg) if seg.max() > 0 else typical
            if cfg.partial:
                margin = max(1, round(cfg.partial_margin * d))
                near = ndi.binary_dilation(seg > 0, iterations=margin)
                ignore = ~near if ignore is None else (ignore | ~near)
            used[str(source.path)].append(idx)
            for _ in range(cfg.scales):
                samples.append(make_sample(image, seg, d, model, rng, 1.3, ignore))
    return samples, used


def finetune_segmenter(
    cfg: FinetuneConfig, out_dir: Path, progress: Progress | None = None
) -> dict[str, Any]:
    """Fine-tune the segmenter (see the module docstring); saves to ``out_dir``."""
    _check(cfg)
    start = time.perf_counter()
    base = cfg.base or SHIPPED_SEGMENT_MODEL
    meta = _base_config(base)
    model = load_model(base)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    own, used = corrected_seg_samples(cfg, model.config, rng)
    base_train = meta.get("train", {})
    recipe = str(base_train.get("recipe", "v1"))
    replay: list[Sample] = []
    if cfg.replay > 0:
        n_movies = 40 if cfg.replay_movies is None else cfg.replay_movies
        sim_cfg = TrainConfig(sim_movies=n_movies, recipe=recipe, model=model.config)
        replay = simulated_samples(sim_cfg, rng)
    data_s = time.perf_counter() - start
    log.info(
        "%d corrected frames (x%d scales), %d rehearsal frames (recipe %s) in %.0f s",
        sum(len(v) for v in used.values()),
        cfg.scales,
        len(replay),
        recipe,
        data_s,
    )
    batch = int(base_train.get("batch", 8))
    patch = int(base_train.get("patch", 128))
    n_replay = round(batch * cfg.replay) if replay else 0
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    model.train()
    running = 0.0
    for step in range(cfg.steps):
        picks = [own[i] for i in rng.integers(len(own), size=batch - n_replay)]
        picks += [replay[i] for i in rng.integers(len(replay), size=n_replay)] if n_replay else []
        pairs = [augment(s, patch, rng) for s in picks]
        x = torch.from_numpy(np.stack([p[0] for p in pairs])[:, None])
        y = torch.from_numpy(np.stack([p[1] for p in pairs]))
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running = 0.95 * running + 0.05 * loss.item() if step else loss.item()
        if progress is not None:
            progress(step + 1, cfg.steps, running)
    model.eval()
    info: dict[str, Any] = {
        "train": base_train,
        "finetune": _provenance(cfg, base, used),
        "frames": sum(len(v) for v in used.values()),
        "final_loss": running,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    save_model(model, out_dir, info)
    return info


# ---------------------------------------------------------------------- tracker


def corrected_track_movies(
    cfg: FinetuneConfig, window: int, model_cfg: Any
) -> tuple[list[Movie], dict[str, list[int]]]:
    """Runs of consecutive frames with a TRA mask (at least 2) in each corrected folder."""
    movies: list[Movie] = []
    used: dict[str, list[int]] = {}
    for source in cfg.ctc:
        seq = source.path
        tra = seq.parent / f"{seq.name}_GT" / "TRA"
        table = tra / "man_track.txt"
        if not table.is_file():
            raise ConfigError(f"{seq}: no lineage file {table} (the tracker needs TRA)")
        children = read_track_file(table).children()
        same = _continuations(children)
        annotated = sorted(
            int(f.stem.removeprefix("man_track"))
            for f in tra.glob("man_track*.tif")
            if f.stem.removeprefix("man_track").isdigit()
            and source.first <= int(f.stem.removeprefix("man_track")) <= source.last
        )
        runs: list[list[int]] = []
        for idx in annotated:
            if runs and idx == runs[-1][-1] + 1:
                runs[-1].append(idx)
            else:
                runs.append([idx])
        runs = [r for r in runs if len(r) >= 2]
        if not runs:
            raise ConfigError(
                f"{seq}: no two consecutive TRA frames in {source.first}-{source.last}"
            )
        used[str(seq)] = [i for r in runs for i in r]
        digits = len(next(iter(tra.glob("man_track*.tif"))).stem.removeprefix("man_track"))
        for run in runs:
            images, masks = [], []
            for idx in run:
                name = f"{idx:0{digits}d}"
                image_file = seq / f"t{name}.tif"
                if not image_file.is_file():
                    raise ConfigError(f"{seq}: TRA frame {idx} has no image {image_file}")
                images.append(tifffile.imread(image_file))
                mask = tifffile.imread(tra / f"man_track{name}.tif").astype(np.int32)
                masks.append(_relabel_continuations(mask, same))
            present = set(np.unique(np.concatenate([np.unique(m) for m in masks])).tolist())
            parent = {
                d: m
                for m, ds in children.items()
                if len(ds) >= 2
                for d in ds
                if d in present and same.get(m, m) in present
            }
            parent = {d: same.get(m, m) for d, m in parent.items()}
            movies.append(movie_from_frames(images, masks, parent, model_cfg, window))
    return movies, used


def _continuations(children: dict[int, list[int]]) -> dict[int, int]:
    """Label → the label it continues. A parent with ONE child is how the CTC spells "the
    same cell, seen again after a gap" (livetrack's CTC export cuts a track at each gap
    that way), not a division: such a child is the same track as its parent's chain."""
    single = {kids[0]: m for m, kids in children.items() if len(kids) == 1}
    root: dict[int, int] = {}
    for child in single:
        r = child
        seen = set()
        while r in single and r not in seen:  # follow the chain up (a cycle would be corrupt)
            seen.add(r)
            r = single[r]
        root[child] = r
    return root


def _relabel_continuations(mask: NDArray[np.int32], same: dict[int, int]) -> NDArray[np.int32]:
    if not same or mask.max() <= 0:
        return mask
    lut = np.arange(int(mask.max()) + 1, dtype=np.int32)
    for child, root in same.items():
        if child < len(lut):
            lut[child] = root
    return lut[np.maximum(mask, 0)]


def finetune_tracker(
    cfg: FinetuneConfig, out_dir: Path, progress: Progress | None = None
) -> dict[str, Any]:
    """Fine-tune the tracking network (see the module docstring); saves to ``out_dir``."""
    _check(cfg)
    start = time.perf_counter()
    base = cfg.base or SHIPPED_TRACK_MODEL
    model, meta = load_tracknet(base)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    base_train = dict(meta.get("train", {}))
    recipe = str(base_train.get("recipe", "v3"))
    n_movies = 16 if cfg.replay_movies is None else cfg.replay_movies
    tcfg = TrackTrainConfig.for_recipe(
        recipe,
        seed=cfg.seed,
        sim_movies=n_movies,
        batch=int(base_train.get("batch", 4)),
        model=model.config,
    )
    window = history_window(tcfg)
    own, used = corrected_track_movies(cfg, window, model.config)
    replay = build_movies(n_movies, rng, tcfg) if cfg.replay > 0 and n_movies else []
    log.info(
        "%d runs of corrected frames (%d frames), %d rehearsal movies in %.0f s",
        len(own),
        sum(len(m.frames) for m in own),
        len(replay),
        time.perf_counter() - start,
    )
    track_cfg = TrackConfig(division_geometry_weight_small=None)
    # The corrected cells' sizes join the range the model knows (a tracker fine-tuned on
    # small nuclei is not held to its base's smallest size: TrackConfig
    # .division_geometry_weight_small).
    low, high = trained_diameter_range(meta)
    units = [f.diameter for mv in own for f in mv.frames if f.diameter > 0]
    if units:
        low, high = min(low, float(min(units))), max(high, float(max(units)))
    base_train["diameters_px"] = [round(low, 2), round(high, 2)]
    # Class weights as in the full training (inverse square root of the pair frequencies).
    counts = np.zeros(3, np.int64)
    for _ in range(60):
        mv = own[int(rng.integers(len(own)))]
        s = make_track_sample(mv, pick_frame(mv, rng), rng, tcfg, track_cfg)
        if s is not None:
            counts += np.bincount(s.target, minlength=3)
    freq = np.maximum(counts, 1) / max(counts.sum(), 1)
    w = (1.0 / freq) ** 0.5
    weights = torch.tensor(w / w.mean(), dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    model.train()
    running = 0.0
    for step in range(cfg.steps):
        batch: list[Any] = []
        tries = 0
        while len(batch) < tcfg.batch:
            tries += 1
            if tries > 100 * tcfg.batch:
                raise ConfigError("the corrected frames give no tracking pairs")
            pool = replay if replay and rng.random() < cfg.replay else own
            mv = pool[int(rng.integers(len(pool)))]
            s = make_track_sample(mv, pick_frame(mv, rng), rng, tcfg, track_cfg)
            if s is not None:
                batch.append(s)
        loss, _ = sample_loss(model, batch, weights)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        value = float(loss.detach())
        running = 0.95 * running + 0.05 * value if step else value
        if progress is not None:
            progress(step + 1, cfg.steps, running)
    model.eval()
    info: dict[str, Any] = {
        "thresholds": meta.get("thresholds"),
        "train": base_train,
        "finetune": _provenance(cfg, base, used),
        "final_loss": running,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    save_tracknet(model, out_dir, info)
    if not math.isfinite(running):
        raise ConfigError(f"fine-tuning diverged (loss {running}); nothing usable in {out_dir}")
    return info
