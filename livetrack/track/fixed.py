"""A scorer with given probabilities: to test the tracker's decisions on known inputs.

``FixedScorer`` gates like the learned scorer and gives every pair the (p_same,
p_different, p_parent→daughter) a function of the candidate detection returns (and, as the
learned scorer, joins the geometric division cues when ``division_cues`` says so), so a test
states what the classifier "saw" and checks what the ``OnlineTracker`` decides on it (the
assignment, the division posterior, two-daughter divisions) without a trained network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from livetrack.config import TrackConfig
from livetrack.track.base import FrameHistory
from livetrack.track.lap import DistanceScorer
from livetrack.track.lstm import LearnedFrame, gate_pairs, probability_frame
from livetrack.track.model import TRAINED_DIAMETERS_PX
from livetrack.track.online import FrameScores, OnlineTracker, OpenTracks
from livetrack.types import Detections

Probabilities = tuple[float, float, float]


@dataclass
class FixedScorer:
    """Probabilities by candidate label; thresholds as the learned scorer's."""

    config: TrackConfig
    probabilities: Callable[[int], Probabilities]
    """Label of the candidate detection → (p_same, p_different, p_parent→daughter)."""
    link_threshold: float = 0.5
    division_threshold: float = 0.5
    name: str = "fixed"
    history_window: int = 0
    min_trained_diameter_px: float = TRAINED_DIAMETERS_PX[0]
    """As the learned scorer's: below this length unit the geometric share is at least
    ``TrackConfig.division_geometry_weight_small``."""

    def score(
        self,
        frame: int,
        tracks: OpenTracks,
        detections: Detections,
        diameter: float,
        frame_shape: tuple[int, int],
        image: NDArray[np.generic] | None = None,
        mask: NDArray[np.integer] | None = None,
        features: object | None = None,
        *,
        labels_given: bool = False,
    ) -> LearnedFrame:
        cand, link = gate_pairs(frame, tracks, detections, diameter, self.config)
        prob = np.array(
            [self.probabilities(int(detections.labels[d])) for d in cand.detection], np.float64
        ).reshape(-1, 3)
        emb = np.zeros((len(detections), 0), np.float32)
        geometry = None
        if self.config.division_cues != "learned":
            geometry = DistanceScorer(self.config).score(
                frame, tracks, detections, diameter, frame_shape
            )
        return probability_frame(
            cand,
            link,
            prob,
            emb,
            self.link_threshold,
            self.division_threshold,
            geometry,
            self.config.division_cues,
            self.config.geometry_weight(labels_given, diameter < self.min_trained_diameter_px),
        )

    def commit(self, *args: object) -> None:
        """Nothing to remember."""

    def restore(self, history: list[FrameHistory], open_ids: object, last_frame: int) -> None:
        """Nothing to rebuild."""

    def reset(self) -> None:
        """Nothing to forget."""


def fixed_tracker(
    config: TrackConfig,
    frame_shape: tuple[int, int],
    probabilities: dict[int, Probabilities] | Callable[[int], Probabilities],
    *,
    link_threshold: float = 0.5,
    division_threshold: float = 0.5,
) -> OnlineTracker:
    """An ``OnlineTracker`` whose pair probabilities are given (a dict by label, or a
    function of the label)."""
    fn = probabilities.__getitem__ if isinstance(probabilities, dict) else probabilities
    scorer = FixedScorer(config, fn, link_threshold, division_threshold)
    return OnlineTracker(config, frame_shape, scorer)


__all__ = ["FixedScorer", "FrameScores", "fixed_tracker"]
