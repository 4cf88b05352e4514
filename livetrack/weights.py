"""Reading a model folder's ``weights.pt`` without trusting it.

``torch.load(weights_only=True)`` unpickles with torch's restricted unpickler: tensors and
plain containers only, never code. What it refuses (a file that would run code), what it
cannot read (empty, truncated, not a PyTorch file) and what is not a state dict all become
one ``ConfigError`` line naming the file, instead of torch's multi-paragraph
``UnpicklingError`` (which also suggests ``weights_only=False``, the one thing not to do).
"""

from __future__ import annotations

import warnings
from pathlib import Path

# Only the exception class torch raises; nothing is unpickled with the pickle module.
from pickle import UnpicklingError

import torch

from livetrack.errors import ConfigError

_BOILERPLATE = ("Weights only load failed", "Check the documentation", "Please file an issue")


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict (parameter name → tensor) in ``path``, on the CPU. Errors name the
    file only (``weights.pt``): callers say which model folder it is in."""
    name = path.name
    try:
        with warnings.catch_warnings():
            # e.g. "Detected pickle protocol 4": about files it then refuses anyway
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise ConfigError(f"cannot read {name}: {exc.strerror or exc}") from None
    except UnpicklingError as exc:
        raise ConfigError(
            f"{name} is not a plain file of tensors; refused to load it ({_reason(exc)})"
        ) from None
    except (EOFError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"{name} is not a readable PyTorch weights file ({_reason(exc)})"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ConfigError(f"{name} does not hold a state dict (parameter names → tensors)")
    return state


def _reason(exc: BaseException) -> str:
    """The informative part of torch's message, on one line."""
    parts = []
    for line in str(exc).splitlines():
        line = line.strip()
        if "WeightsUnpickler error:" in line:
            line = line.split("WeightsUnpickler error:", 1)[1].strip()
        if line and not line.startswith(_BOILERPLATE):
            parts.append(line)
    return "; ".join(parts)[:300] or type(exc).__name__
