"""A compact U-Net that predicts Caliban's three maps (REFERENCE.md §1) for nuclei.

Outputs per pixel, at the model's canonical scale (nuclei ~``canonical_diameter_px`` wide):

* channel 0 — *inner distance*: 1 at a nucleus centre, falling towards its edge, 0 outside
  (``inner_distance`` below); its peaks are the markers, one per nucleus;
* channel 1 — *outer distance*: the distance transform of the label image, in units of
  half the canonical diameter (so ~1 at a typical nucleus centre); the watershed relief;
* channels 2–3 — background / foreground logits.

Small on purpose (~0.5 M parameters, 1 MB in float16): it must segment a 1024² frame
in a fraction of a second on two CPU cores, and the input is already rescaled so nuclei
have one size.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage as ndi
from torch import nn

from livetrack.errors import ConfigError
from livetrack.torch_ops import max_pool2
from livetrack.weights import load_weights

WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.json"
N_OUTPUTS = 4
"""inner distance, outer distance, background logit, foreground logit."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and the scale the model was trained at (saved as config.json)."""

    width: int = 8
    """Channels of the first (full-resolution) level; doubled at each level down."""
    depth: int = 4
    """Number of 2× downsamplings (the input is padded to a multiple of 2**depth)."""
    canonical_diameter_px: float = 16.0
    """Nucleus diameter the model expects; frames are rescaled to it."""
    inner_steepness: float = 4.0
    """α in inner = 1 / (1 + α r / sqrt(area)); Caliban's α = 1 gives edge values ~0.64,
    too flat for reliable peaks between touching nuclei, so the peak is made narrower."""
    coord_channels: bool = False
    """Whether the input has two extra coordinate channels (unused by default: tiles
    make absolute coordinates meaningless)."""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ModelConfig:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)  # type: ignore[arg-type]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class NucleusUNet(nn.Module):
    """U-Net: ``depth`` levels of two 3×3 convolutions, max-pool down, bilinear up."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        c = self.config
        cin = 3 if c.coord_channels else 1
        widths = [c.width * 2**i for i in range(c.depth + 1)]
        self.down = nn.ModuleList()
        for w in widths:
            self.down.append(_block(cin, w))
            cin = w
        self.up = nn.ModuleList(
            _block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(c.depth))
        )
        self.head = nn.Conv2d(widths[0], N_OUTPUTS, 1)

    @property
    def multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return int(2**self.config.depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = _down_path(self.down, x)
        for block in self.up:
            skip = skips.pop()
            x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="bilinear")
            x = block(torch.cat([x, skip], dim=1))
        out: torch.Tensor = self.head(x)
        return out


def _down_path(blocks: nn.ModuleList, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The U-Net's contracting path: each level's block after a 2 × 2 max pool (none before
    the first); the deepest map and the skip connections of the levels above it."""
    skips: list[torch.Tensor] = []
    for i, block in enumerate(blocks):
        if i > 0:
            x = max_pool2(x)  # max_pool2d(x, 2), faster on a CPU
        x = block(x)
        skips.append(x)
    skips.pop()
    return x, skips


def _folded(conv: nn.Module, bn: nn.Module) -> nn.Conv2d:
    """One convolution (with bias) equal to ``bn(conv(x))`` with the batch norm's running
    statistics (eval mode), folded in float64 and stored as float32."""
    assert isinstance(conv, nn.Conv2d)
    assert isinstance(bn, nn.BatchNorm2d)
    assert bn.running_mean is not None
    assert bn.running_var is not None
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else w.new_zeros(w.shape[0])
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = (b - bn.running_mean.double()) * scale + bn.bias.detach().double()
    out = copy.deepcopy(conv).float()
    out.weight = nn.Parameter((w * scale[:, None, None, None]).float().to(conv.weight.device))
    out.bias = nn.Parameter(shift.float().to(conv.weight.device))
    return out


class InferenceUNet(nn.Module):
    """A ``NucleusUNet`` rearranged for inference (the segmenter runs this; training and the
    saved weights use ``NucleusUNet``): each batch norm folded into the convolution before
    it, and each up block's first convolution split in two — one over the upsampled map,
    one over the skip connection — whose outputs are added, instead of convolving their
    concatenation (a copy of both maps that is slow in the channels-last layout on a CPU).
    The same maps to float32 rounding (summation order differs); ~1.5x faster on a CPU.
    Built from the model's weights as they are at construction."""

    def __init__(self, model: NucleusUNet) -> None:
        super().__init__()
        self.config = model.config
        self.down = nn.ModuleList()
        for block in _blocks(model.down):
            self.down.append(
                nn.Sequential(
                    _folded(block[0], block[1]),
                    nn.ReLU(inplace=True),
                    _folded(block[3], block[4]),
                    nn.ReLU(inplace=True),
                )
            )
        self.up_from_below = nn.ModuleList()
        self.up_from_skip = nn.ModuleList()
        self.up_second = nn.ModuleList()
        for block in _blocks(model.up):
            first = _folded(block[0], block[1])
            skip_channels = first.out_channels  # the skip has the level's width
            below = first.in_channels - skip_channels
            from_below = nn.Conv2d(below, first.out_channels, 3, padding=1)
            from_skip = nn.Conv2d(skip_channels, first.out_channels, 3, padding=1, bias=False)
            with torch.no_grad():
                from_below.weight.copy_(first.weight[:, :below])
                assert from_below.bias is not None
                assert first.bias is not None
                from_below.bias.copy_(first.bias)
                from_skip.weight.copy_(first.weight[:, below:])
            self.up_from_below.append(from_below)
            self.up_from_skip.append(from_skip)
            self.up_second.append(nn.Sequential(_folded(block[3], block[4]), nn.ReLU(inplace=True)))
        self.head = copy.deepcopy(model.head).float()
        self.eval()

    @property
    def multiple(self) -> int:
        return int(2**self.config.depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = _down_path(self.down, x)
        for from_below, from_skip, second in zip(
            self.up_from_below, self.up_from_skip, self.up_second, strict=True
        ):
            skip = skips.pop()
            x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="bilinear")
            y = from_below(x)
            y += from_skip(skip)
            x = second(torch.relu_(y))
        out: torch.Tensor = self.head(x)
        return out


def _blocks(modules: nn.ModuleList) -> list[nn.Sequential]:
    out = [m for m in modules if isinstance(m, nn.Sequential)]
    assert len(out) == len(modules)
    return out


def coordinate_maps(shape: tuple[int, int]) -> NDArray[np.float32]:
    """(2, H, W) y and x coordinates in [-1, 1] (Caliban's optional coordinate input)."""
    ys = np.linspace(-1.0, 1.0, shape[0], dtype=np.float32)
    xs = np.linspace(-1.0, 1.0, shape[1], dtype=np.float32)
    return np.stack(np.meshgrid(ys, xs, indexing="ij")).astype(np.float32)


def inner_distance(labels: NDArray[np.integer], steepness: float) -> NDArray[np.float32]:
    """Caliban's inner distance: 1 / (1 + α r / sqrt(area)) inside each nucleus, r the
    distance to the nucleus' centroid; 0 on the background."""
    out = np.zeros(labels.shape, np.float32)
    lab = np.asarray(labels)
    for k, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        obj = lab[sl] == k
        ys, xs = np.nonzero(obj)
        cy, cx = ys.mean(), xs.mean()
        r = np.hypot(ys - cy, xs - cx)
        vals = 1.0 / (1.0 + steepness * r / np.sqrt(len(ys)))
        view = out[sl]
        view[ys, xs] = vals
    return out


def outer_distance(labels: NDArray[np.integer], unit: float) -> NDArray[np.float32]:
    """Per-nucleus Euclidean distance to the nearest pixel outside it, divided by ``unit``.

    Computed per object (not on the binary foreground) so touching nuclei get a valley of
    zeros between them — the relief the watershed splits along."""
    out = np.zeros(labels.shape, np.float32)
    lab = np.asarray(labels)
    for k, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        padded = tuple(
            slice(max(0, s.start - 1), min(n, s.stop + 1))
            for s, n in zip(sl, lab.shape, strict=True)
        )
        obj = lab[padded] == k
        dist = ndi.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
        view = out[padded]
        view[obj] = dist[obj] / unit
    return out


def save_model(model: NucleusUNet, out_dir: Path, info: dict[str, object] | None = None) -> None:
    """config.json (architecture + how it was trained) and weights.pt (a plain state_dict
    of tensors, loadable with ``weights_only=True``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().cpu().to(torch.float16 if v.is_floating_point() else v.dtype).clone()
        for k, v in model.state_dict().items()
    }  # half precision on disk: half the size, no measurable loss for these weights
    torch.save(state, out_dir / WEIGHTS_FILE)
    meta = {"model": model.config.to_dict(), **(info or {})}
    (out_dir / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def load_model(model_dir: Path) -> NucleusUNet:
    """The model saved by ``save_model``, in eval mode on the CPU."""
    try:
        meta = json.loads((model_dir / CONFIG_FILE).read_text())
        state = load_weights(model_dir / WEIGHTS_FILE)
        model = NucleusUNet(ModelConfig.from_dict(meta["model"]))
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        )
    except ConfigError as exc:
        raise ConfigError(f"cannot load segmentation model from {model_dir}: {exc}") from None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"cannot load segmentation model from {model_dir}: {exc}") from exc
    model.eval()
    return model
