"""Shared fixtures: real loopback sockets, temporary databases, the shared CTC data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SIM_PLUS = DATA / "Fluo-N2DH-SIM+"
GOWT1 = DATA / "Fluo-N2DH-GOWT1"

needs_data = pytest.mark.skipif(
    not (SIM_PLUS / "01").is_dir(), reason="../shared/data (CTC sequences) not available"
)


class _Closer(list):  # type: ignore[type-arg]
    """Collects objects with a close() method; closes them at teardown."""

    def __call__(self, obj):  # type: ignore[no-untyped-def]
        self.append(obj)
        return obj


@pytest.fixture
def closing() -> Iterator[_Closer]:
    closer = _Closer()
    yield closer
    for obj in reversed(closer):
        obj.close()


@pytest.fixture
def zmq_context(closing: _Closer) -> Iterator[zmq.Context]:  # type: ignore[type-arg]
    """A private context; every socket registered with ``closing`` is closed first."""
    ctx: zmq.Context = zmq.Context()  # type: ignore[type-arg]
    yield ctx
    for obj in reversed(closing):
        obj.close()
    closing.clear()
    ctx.destroy(linger=0)


def integer_frames(seed: int, count: int, max_side: int) -> Iterator[np.ndarray]:
    """Random integer frames of every kind livetrack reads (uint16, uint8, signed int16 with
    negative values) and random sizes: for checks against numpy, value for value."""
    rng = np.random.default_rng(seed)
    for k in range(count):
        h, w = (int(v) for v in rng.integers(1, max_side, 2))
        dtype = (np.uint16, np.uint8, np.int16)[k % 3]
        high = {np.uint16: 65535, np.uint8: 255, np.int16: 300}[dtype]
        frame = rng.integers(0, high, (h, w)).astype(dtype)
        if dtype is np.int16:
            frame -= 150
        yield frame
