"""The learned segmenter: rescale to the model's nucleus size, predict Caliban's three maps
in overlapping tiles, then peaks + watershed, and labels back at the frame's resolution."""

from __future__ import annotations

import logging

import numpy as np
import torch
from numpy.typing import NDArray
from skimage.transform import resize

from livetrack.blur import downscale
from livetrack.config import SegmentConfig
from livetrack.models import SHIPPED_SEGMENT_MODEL
from livetrack.segment.model import InferenceUNet, NucleusUNet, load_model
from livetrack.segment.postprocess import (
    PostprocessParams,
    bilinear_resize,
    labels_from_maps,
    outline_on_frame,
    relabel,
)
from livetrack.segment.scale import NucleusScale, ScaledSegmenter, normalise
from livetrack.types import LabelImage

log = logging.getLogger("livetrack.segment.learned")

SHIPPED_MODEL = SHIPPED_SEGMENT_MODEL
TILE_MARGIN_DIAMETERS = 2.0
"""Overlap kept on each side of a tile, in nucleus diameters: the network's output near a
tile edge lacks context, so only each tile's centre is used."""
MAX_CPU_THREADS = 8
"""More threads than this gain little for a model this small."""
BATCH_TILES = 4
"""Tiles per forward pass (bounds memory on big frames)."""


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA, then Apple MPS, then the CPU ('auto'); or exactly the requested one."""
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class LearnedSegmenter(ScaledSegmenter):
    """One instance per position: keeps the diameter it settled on for that position."""

    name = "learned"

    def __init__(self, config: SegmentConfig | None = None, model: NucleusUNet | None = None):
        self.config = config or SegmentConfig(method="learned")
        self.model = (
            model if model is not None else load_model(self.config.model_dir or SHIPPED_MODEL)
        )
        self.model.eval()
        self.torch_device = pick_device(self.config.device)
        self.half = self.torch_device.type == "cuda"
        # channels-last: oneDNN's (and cuDNN's) fast convolution layout, ~2x on this CPU.
        self.model.to(self.torch_device)
        self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if self.half:
            self.model.half()
        # What runs: the same network with its batch norms folded and no concatenations
        # (``InferenceUNet``: the same maps to float32 rounding, ~1.5x faster on a CPU).
        self.net = InferenceUNet(self.model).to(self.torch_device)
        self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if self.half:
            self.net.half()
        if self.torch_device.type == "cpu" and torch.get_num_threads() > MAX_CPU_THREADS:
            torch.set_num_threads(MAX_CPU_THREADS)
        self.device = str(self.torch_device)
        self._scale = NucleusScale(self.config, detections_by_default=True)

    @property
    def canonical_diameter_px(self) -> float:
        return float(self.model.config.canonical_diameter_px)

    def segment(self, image: NDArray[np.generic], diameter_px: float) -> LabelImage:
        """Labels at the frame's resolution for nuclei of ``diameter_px``."""
        factor = self.canonical_diameter_px * self.config.zoom / diameter_px
        img = normalise(image)
        shape = (max(16, round(img.shape[0] * factor)), max(16, round(img.shape[1] * factor)))
        if shape != img.shape and factor < 1:
            img = downscale(img, shape)  # skimage's resize, the blur in bands
        elif shape != img.shape:
            img = resize(img, shape, order=1, anti_aliasing=False, preserve_range=True)
        maps = self.predict_maps(img.astype(np.float32))
        params = PostprocessParams(
            fg_threshold=self.config.fg_threshold,
            peak_threshold=self.config.peak_threshold,
            peak_prominence=self.config.peak_prominence,
            min_area_fraction=self.config.min_area_fraction,
            border_min_area_fraction=self.config.border_min_area_fraction,
            # the nucleus is canonical × zoom wide at the model's scale
            large_object_area=self.config.large_object_area * self.config.zoom**2,
            large_object_prominence=self.config.large_object_prominence,
            min_mean_probability=self.config.min_mean_probability,
        )
        labels = labels_from_maps(
            maps[0], maps[1], maps[2], self.canonical_diameter_px, params=params
        )
        fg = maps[2]
        if labels.shape != image.shape:
            labels = resize(
                labels, image.shape, order=0, anti_aliasing=False, preserve_range=True
            ).astype(np.int32)
            labels = relabel(labels)  # tiny objects can vanish upscaling
            if self.config.outline_threshold is not None:
                fg = bilinear_resize(fg, image.shape)
        labels = np.asarray(labels, dtype=np.int32)
        # The scale is measured on the objects as detected, before their outlines are drawn
        # (``SegmentConfig.outline_threshold``), so it is what the model's scale sees.
        self._detected_areas = np.bincount(labels.ravel())
        return outline_on_frame(labels, fg, self.config.outline_threshold)

    def predict_maps(self, img: NDArray[np.float32]) -> NDArray[np.float32]:
        """(3, H, W): inner distance, outer distance, foreground probability, for an
        image already normalised and at the model's scale. Big images go in tiles of
        ``tile_px`` whose centres are stitched; the margins overlap by
        ``TILE_MARGIN_DIAMETERS`` nucleus diameters."""
        h, w = img.shape
        mult = self.model.multiple
        margin = _round_up(
            round(TILE_MARGIN_DIAMETERS * self.canonical_diameter_px * self.config.zoom), mult
        )
        tile = max(_round_up(self.config.tile_px, mult), 2 * margin + mult)
        if h <= tile and w <= tile:
            ph, pw = _round_up(h, mult), _round_up(w, mult)
            padded = np.pad(img, ((0, ph - h), (0, pw - w)), mode="reflect")
            return self._run(padded[None])[0][:, :h, :w]
        # As few tiles as fit in tile_px, then shrunk evenly so little work is wasted.
        ny, nx = -(-h // (tile - 2 * margin)), -(-w // (tile - 2 * margin))
        sy, sx = _round_up(-(-h // ny), mult), _round_up(-(-w // nx), mult)
        padded = np.pad(
            img,
            ((margin, ny * sy - h + margin), (margin, nx * sx - w + margin)),
            mode="reflect",
        )
        origins = [(iy * sy, ix * sx) for iy in range(ny) for ix in range(nx)]
        out = np.zeros((3, ny * sy, nx * sx), np.float32)
        for i in range(0, len(origins), BATCH_TILES):
            batch = origins[i : i + BATCH_TILES]
            tiles = np.stack(
                [padded[y : y + sy + 2 * margin, x : x + sx + 2 * margin] for y, x in batch]
            )
            maps = self._run(tiles)
            for (y, x), m in zip(batch, maps, strict=True):
                out[:, y : y + sy, x : x + sx] = m[:, margin : margin + sy, margin : margin + sx]
        return out[:, :h, :w]

    def _run(self, tiles: NDArray[np.float32]) -> NDArray[np.float32]:
        """The network on a (N, H, W) batch → (N, 3, H, W) maps (fg as a probability)."""
        x = torch.from_numpy(np.ascontiguousarray(tiles[:, None])).to(
            self.torch_device, memory_format=torch.channels_last
        )
        if self.half:
            x = x.half()
        with torch.inference_mode():
            raw = self.net(x).float()
            fg = torch.softmax(raw[:, 2:4], dim=1)[:, 1:2]
            maps = torch.cat([raw[:, 0:2], fg], dim=1)
        return np.asarray(maps.cpu().numpy(), dtype=np.float32)


def _round_up(n: int, mult: int) -> int:
    return -(-n // mult) * mult
