"""Read a useq-schema ``MDASequence`` (the acquisition plan of pymmcore-plus, napari-micromanager
and others) from a YAML or JSON file, and describe what livetrack makes of it.

The plan is *data* (useq's pydantic models); this module only reads and checks it. The
pymmcore-plus driver (``drivers/mmcore.py``) runs it as is.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from livetrack.errors import ConfigError, validation_message

if TYPE_CHECKING:
    import useq
    from livetrack.drivers.micromanager import AcquisitionPlan

_MISSING_USEQ = (
    'useq-schema is not installed; pip install "livetrack[mmcore]" to use an MDA plan (--mda)'
)


def load_sequence(path: Path) -> useq.MDASequence:
    """The ``MDASequence`` in ``path`` (``.yaml``/``.yml`` or ``.json``); ConfigError with
    one line saying what is wrong otherwise."""
    try:
        import useq
        from pydantic import ValidationError
    except ImportError:
        raise ConfigError(_MISSING_USEQ) from None
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise ConfigError(f"MDA plan {path}: expected a .yaml, .yml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"MDA plan {path}: not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"MDA plan {path}: cannot read: {err}") from None
    data: Any
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"MDA plan {path}: invalid JSON: {err}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            line = f" (line {where.line + 1})" if where is not None else ""
            raise ConfigError(f"MDA plan {path}: invalid YAML{line}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"MDA plan {path}: expected a mapping (useq MDASequence fields)")
    try:
        return useq.MDASequence.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"MDA plan {path}: {validation_message(err)}") from None


@dataclass(frozen=True)
class PlanShape:
    """What the worker will receive from a sequence: one 2-D series per field of view
    (position × grid tile), of the segmented channel, z max-projected."""

    fields: tuple[tuple[int, int, str], ...]
    """(position index, grid index, series name) of every field of view."""
    channels: tuple[str, ...]
    """Channel presets in the plan (empty: the core's current channel)."""
    segment_channel: str | None
    """The channel the worker segments; None when the plan has no channels."""
    time_points: int
    """Time points of the segmented channel per field (after ``acquire_every``)."""
    z_planes: int
    """Images of the segmented channel max-projected into one frame."""

    @property
    def total_frames(self) -> int:
        return len(self.fields) * self.time_points


def plan_shape(seq: useq.MDASequence, segment_channel: str | None = None) -> PlanShape:
    """Check the parts of ``seq`` livetrack cannot stream (per-position sub-sequences,
    duplicate series names, an unknown ``segment_channel``) and count what it will."""
    for i, pos in enumerate(seq.stage_positions):
        if pos.sequence is not None:
            raise ConfigError(
                f"MDA plan: position {pos.name or i} has its own sub-sequence; livetrack "
                "streams one plan for all positions — move its plans to the top level"
            )
    channels = tuple(ch.config for ch in seq.channels)
    if len(set(channels)) != len(channels):
        raise ConfigError(f"MDA plan: channel presets must be unique, got {list(channels)}")
    if segment_channel is not None and not channels:
        raise ConfigError(
            f"segment channel {segment_channel!r} given but the MDA plan has no channels"
        )
    chosen = segment_channel if segment_channel is not None else (channels or (None,))[0]
    if chosen is not None and chosen not in channels:
        raise ConfigError(
            f"segment channel {chosen!r} is not in the MDA plan; its channels are "
            f"{', '.join(channels)}"
        )
    channel = next((ch for ch in seq.channels if ch.config == chosen), None)
    sizes = seq.sizes
    n_t = max(sizes.get("t", 0), 1)
    n_z = max(sizes.get("z", 0), 1)
    n_g = max(sizes.get("g", 0), 1)
    n_p = max(len(seq.stage_positions), 1)
    every = channel.acquire_every if channel is not None else 1
    time_points = math.ceil(n_t / every)
    z_planes = n_z if channel is None or channel.do_stack else 1
    fields = []
    for p in range(n_p):
        named = seq.stage_positions[p].name if seq.stage_positions else None
        base = named or f"Pos{p}"
        for g in range(n_g):
            fields.append((p, g, f"{base}-g{g}" if n_g > 1 else base))
    names = [f[2] for f in fields]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"MDA plan: position names must be unique, repeated: {dupes}")
    return PlanShape(tuple(fields), channels, chosen, time_points, z_planes)


def to_acquisition_plan(
    seq: useq.MDASequence,
    properties: tuple[tuple[str, str, str], ...] = (),
) -> AcquisitionPlan:
    """The same useq plan for the pycromanager driver (``drivers.micromanager``): positions,
    one channel group's presets, one exposure, z-planes (max-projected there) and a
    single-phase time plan. What its ``AcquisitionPlan`` cannot express is refused by name
    rather than dropped: grids, autofocus, sub-sequences, multi-phase time plans, per-channel
    exposures, ``acquire_every``, ``do_stack: false``, channel z offsets, and a relative z
    plan for a position without z. The pycromanager driver acquires in t-p-c-z order and
    tracks every channel as its own series (POS-CHANNEL), as its own options do."""
    from livetrack.drivers.micromanager import AcquisitionPlan, StagePosition

    def refuse(what: str) -> ConfigError:
        return ConfigError(
            f"MDA plan: {what} is not supported with --source micromanager (pycromanager); "
            "use --source mmcore"
        )

    if seq.grid_plan is not None:
        raise refuse("a grid plan")
    if seq.autofocus_plan is not None:
        raise refuse("an autofocus plan")
    if any(p.sequence is not None for p in seq.stage_positions):
        raise refuse("a per-position sub-sequence")
    n_frames, interval_s = _time_points(seq, refuse)
    groups = {ch.group for ch in seq.channels}
    if len(groups) > 1:
        raise refuse(f"channels from several groups ({', '.join(sorted(groups))})")
    exposures = {ch.exposure for ch in seq.channels}
    if len(exposures) > 1:
        raise refuse("a different exposure per channel")
    for ch in seq.channels:
        if ch.acquire_every != 1:
            raise refuse(f"acquire_every on channel {ch.config}")
        if not ch.do_stack and seq.z_plan is not None:
            raise refuse(f"do_stack: false on channel {ch.config}")
        if ch.z_offset:
            raise refuse(f"a z_offset on channel {ch.config}")
    z_um: tuple[float, ...] = ()
    if seq.z_plan is not None:
        z_um = tuple(float(z) for z in seq.z_plan.positions())
        if seq.z_plan.is_relative:
            unplaced = [
                p.name or f"Pos{i}" for i, p in enumerate(seq.stage_positions) if p.z is None
            ]
            if unplaced or not seq.stage_positions:
                raise refuse(
                    "a z plan relative to the current focus (give every position a z, or "
                    "use absolute z positions)"
                )
    positions = tuple(
        StagePosition(
            p.name or f"Pos{i}",
            p.x,
            p.y,
            # an absolute z plan sets z itself (the driver adds the position's z to it)
            p.z if seq.z_plan is None or seq.z_plan.is_relative else None,
        )
        for i, p in enumerate(seq.stage_positions)
    )
    exposure = next(iter(exposures), None)
    return AcquisitionPlan(
        n_frames=n_frames,
        interval_s=interval_s,
        positions=positions,
        channel_group=next(iter(groups), None),
        channels=tuple(ch.config for ch in seq.channels),
        exposure_ms=float(exposure) if exposure is not None else None,
        z_um=z_um,
        properties=properties,
    )


def _time_points(seq: useq.MDASequence, refuse: Any) -> tuple[int, float]:
    import useq

    plan = seq.time_plan
    if plan is None:
        return 1, 0.0
    if isinstance(plan, useq.MultiPhaseTimePlan):
        raise refuse("a multi-phase time plan")
    loops = int(plan.num_timepoints())
    interval = plan.interval if loops > 1 else None
    return loops, interval.total_seconds() if interval is not None else 0.0
