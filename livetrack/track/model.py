"""The learned tracker's network (Caliban's architecture, made causal and per-frame).

Two parts with separate entry points, so that the expensive one runs once per frame:

- ``encode``: per frame, one embedding per detection from its appearance crop (small CNN),
  its morphology (MLP) and one graph-attention layer over its neighbours within a radius
  (keys carry the neighbour's offset, so position enters only as relative geometry);
- ``summarise`` + ``pair_logits``: per active track, an LSTM over the embeddings of its
  last ``window`` frames (missing frames are zeros with a presence flag) and a second LSTM
  over its frame-to-frame displacements; the summary, the candidate's embedding and the
  (candidate − predicted position, gap, area ratio) geometry go through an MLP to three
  logits: same cell, different cell, parent → daughter.

Saved as config.json + weights.pt (a plain state_dict; loaded with ``weights_only=True``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from livetrack.errors import ConfigError
from livetrack.torch_ops import max_pool2
from livetrack.track.features import N_MORPH
from livetrack.weights import load_weights

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
SAME, DIFF, PARENT = 0, 1, 2
"""Class order of ``pair_logits``."""
TRAINED_DIAMETERS_PX = (12.0, 70.0)
"""Nucleus diameters (px) of the simulated training movies (``training.track``), the range a
model folder states as ``train.diameters_px``; models whose config.json does not (the
shipped ones, trained before it was written) were trained on this one."""
N_GEOM = 8
"""Pair geometry inputs: dy, dx, distance (diameters, from the predicted position), missed
frames, log area ratio; then the sister cue (``lstm.partner_features``)."""


@dataclass(frozen=True)
class TrackNetConfig:
    """Architecture and the feature settings the weights were trained with."""

    embed_dim: int = 64
    hidden: int = 64
    disp_hidden: int = 32
    window: int = 7
    crop_diameters: float = 1.25
    neighbour_diameters: float = 4.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrackNetConfig:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


class _MaxPool2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)``, value for value, faster at inference (``torch_ops.max_pool2``)."""

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: Tensor) -> Tensor:
        return max_pool2(x)


class TrackNet(nn.Module):
    """Neighbourhood encoder + causal track classifier."""

    def __init__(self, config: TrackNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or TrackNetConfig()
        d = cfg.embed_dim
        self.cnn = nn.Sequential(
            nn.Conv2d(2, 8, 3, padding=1),
            nn.ReLU(),
            _MaxPool2(),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            _MaxPool2(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * 4 * 4, d),
        )
        self.morph = nn.Sequential(nn.Linear(N_MORPH, d), nn.ReLU(), nn.Linear(d, d))
        self.node = nn.Sequential(nn.Linear(2 * d, d), nn.ReLU())
        self.rel = nn.Sequential(nn.Linear(3, d), nn.ReLU(), nn.Linear(d, d))
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.mix = nn.Linear(2 * d, d)
        self.norm = nn.LayerNorm(d)
        self.lstm = nn.LSTM(d + 1, cfg.hidden, batch_first=True)
        self.lstm_disp = nn.LSTM(3, cfg.disp_hidden, batch_first=True)
        self.head = nn.Sequential(
            nn.Linear(cfg.hidden + cfg.disp_hidden + 2 * d + N_GEOM, 128),
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Linear(64, 3),
        )

    # ------------------------------------------------------------------ per frame

    def encode(self, crops: Tensor, morph: Tensor, edges: Tensor, rel: Tensor) -> Tensor:
        """(N, D) embeddings of one frame (or of several frames with disjoint edges).

        ``edges`` (2, E): source j → target i pairs; ``rel`` (E, 3): (dy, dx, distance) of
        the source relative to the target, in diameters.
        """
        n, d = crops.shape[0], self.config.embed_dim
        if n == 0:
            return crops.new_zeros((0, d))
        h = self.node(torch.cat([self.cnn(crops), self.morph(morph)], dim=1))
        q, k, v = self.query(h), self.key(h), self.value(h)
        src, dst = edges[0], edges[1]
        r = self.rel(rel) if rel.shape[0] else h.new_zeros((0, d))
        scale = 1.0 / math.sqrt(d)
        self_logit = (q * k).sum(1) * scale
        edge_logit = (q[dst] * (k[src] + r)).sum(1) * scale
        top = self_logit.clone()
        if edge_logit.numel():
            top = top.scatter_reduce(0, dst, edge_logit, reduce="amax", include_self=True)
        top = top.detach()
        w_self = torch.exp(self_logit - top)
        w_edge = torch.exp(edge_logit - top[dst])
        denom = w_self.clone().index_add(0, dst, w_edge)
        agg = (w_self[:, None] * v).index_add(0, dst, w_edge[:, None] * (v[src] + r))
        agg = agg / denom[:, None]
        out: Tensor = self.norm(h + self.mix(torch.cat([h, agg], dim=1)))
        return out

    # ------------------------------------------------------------------ per track / pair

    def summarise(self, emb: Tensor, present: Tensor, disp: Tensor) -> Tensor:
        """(T, hidden + disp_hidden) summaries of tracks from their windows.

        ``emb`` (T, W, D) embeddings of the last W frames (zeros where absent), ``present``
        (T, W) 1 where the track had a detection, ``disp`` (T, W, 3) displacement from the
        previous present entry in diameters plus a validity flag.
        """
        if emb.shape[0] == 0:
            return emb.new_zeros((0, self.config.hidden + self.config.disp_hidden))
        x = torch.cat([emb * present[..., None], present[..., None]], dim=2)
        _, (h1, _) = self.lstm(x)
        _, (h2, _) = self.lstm_disp(disp)
        return torch.cat([h1[-1], h2[-1]], dim=1)

    def pair_logits(self, summary: Tensor, last: Tensor, cand: Tensor, geom: Tensor) -> Tensor:
        """(P, 3) logits for (track, candidate) pairs: same / different / parent→daughter."""
        x = torch.cat([summary, cand, cand - last, geom], dim=1)
        out: Tensor = self.head(x)
        return out

    def pair_logits_by_parts(
        self, summary: Tensor, last: Tensor, emb: Tensor, track: Tensor, det: Tensor, geom: Tensor
    ) -> Tensor:
        """``pair_logits(summary[track], last[track], emb[det], geom)`` (inference): the head's
        first layer is linear in its four inputs, so its share of the summary and the last
        embedding is computed once per track, of the candidate's embedding once per
        detection, and only the geometry's per pair. The same logits to float32 rounding."""
        first = self.head[0]
        assert isinstance(first, nn.Linear)
        s, d = summary.shape[1], emb.shape[1]
        w = first.weight
        w_sum, w_cand, w_diff, w_geom = (
            w[:, :s],
            w[:, s : s + d],
            w[:, s + d : s + 2 * d],
            w[:, s + 2 * d :],
        )
        per_track = summary @ w_sum.T - last @ w_diff.T
        per_det = emb @ (w_cand + w_diff).T
        x = per_track[track] + per_det[det] + geom @ w_geom.T + first.bias
        out: Tensor = self.head[1:](x)
        return out


def save_tracknet(model: TrackNet, out_dir: Path, info: dict[str, object] | None = None) -> None:
    """config.json (architecture, thresholds, how it was trained) + weights.pt (float16)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().cpu().to(torch.float16 if v.is_floating_point() else v.dtype).clone()
        for k, v in model.state_dict().items()
    }
    torch.save(state, out_dir / WEIGHTS_FILE)
    meta = {"model": model.config.to_dict(), **(info or {})}
    (out_dir / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def load_tracknet(model_dir: Path) -> tuple[TrackNet, dict[str, Any]]:
    """The model saved by ``save_tracknet`` (eval mode, CPU) and its config.json."""
    try:
        meta = json.loads((model_dir / CONFIG_FILE).read_text())
        state = load_weights(model_dir / WEIGHTS_FILE)
        model = TrackNet(TrackNetConfig.from_dict(meta["model"]))
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        )
    except ConfigError as exc:
        raise ConfigError(f"cannot load tracking model from {model_dir}: {exc}") from None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"cannot load tracking model from {model_dir}: {exc}") from exc
    model.eval()
    return model, meta
