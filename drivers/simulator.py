"""Stream the nuclei simulator as a live source (the embedded default of ``livetrack run``).

With the same SimulationConfig it yields exactly the frames ``livetrack simulate`` writes,
so a run can be scored against the simulator's ground truth.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
from livetrack.simulators.nuclei import NucleiSimulator, SimulationConfig

from livetrack.source import FrameMeta


class SimulatorSource:
    """A FrameSource over the simulator, paced at ``interval_s`` (0 = as fast as the
    worker takes them; the transport's backpressure then sets the pace)."""

    n_positions = 1

    def __init__(
        self,
        config: SimulationConfig,
        *,
        interval_s: float = 0.0,
        position: str = "sim",
        with_labels: bool = False,
    ) -> None:
        self.config = config
        self.interval_s = interval_s
        self.position = position
        self.with_labels = with_labels
        """Send the ground-truth labels along (tracking-only mode)."""
        self._closed = False

    @property
    def total_frames(self) -> int | None:
        return self.config.n_frames

    def describe(self) -> str:
        c = self.config
        return (
            f"simulator seed={c.seed} frames={c.n_frames} cells={c.n_cells} "
            f"size={c.height}x{c.width} diameter={c.nucleus_diameter_px}px"
        )

    def frames(self) -> Iterator[tuple[np.ndarray, FrameMeta]]:
        sim = NucleiSimulator(self.config)
        start = time.time()
        next_due = time.monotonic()
        for f in sim.frames():
            if self._closed:
                return
            if self.interval_s > 0:
                delay = next_due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                next_due += self.interval_s
            yield (
                f.image,
                FrameMeta(
                    position=self.position,
                    frame_index=f.index,
                    timestamp=start + f.index * max(self.interval_s, 0.0)
                    if self.interval_s > 0
                    else time.time(),
                    pixel_size_um=self.config.pixel_size_um,
                    labels=f.labels if self.with_labels else None,
                ),
            )

    def close(self) -> None:
        self._closed = True
