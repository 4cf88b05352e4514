"""Pictures of a tracking result: a lineage tree on a time axis, cells and divisions over
time per position, and an overlay movie of outlines and track ids over the frames.

Everything here reads a :class:`livetrack.results.TrackingResult` (from ``livetrack.track``
or ``livetrack.open_run``), so an in-process result and a stored run give the same pictures.
Figures are built with matplotlib's object API (``Figure``, never ``pyplot``): no global
state and no GUI backend, so plotting works in a worker, a test or a notebook alike.
matplotlib is optional (``pip install "livetrack[plot]"``); without it every function
raises :class:`~livetrack.errors.MissingExtra`. GIFs are written with Pillow (a matplotlib
dependency), MP4 with the ffmpeg that ``imageio-ffmpeg`` ships (in the same extra).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from livetrack.errors import EvaluationError, MissingExtra

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from livetrack.api import MovieLike
    from livetrack.results import PositionData, TrackingResult
    from livetrack.track.base import TrackRecord

logger = logging.getLogger("livetrack.plot")

FIGURE_SUFFIXES = (".png", ".svg", ".pdf")
"""What ``savefig`` is asked to write (by the file name's suffix)."""
MOVIE_SUFFIXES = (".gif", ".mp4")

FATE_STYLE: dict[str, tuple[str, str, str]] = {
    # fate: (marker, colour, legend text)
    "divided": ("o", "black", "divided"),
    "lost": ("x", "tab:red", "lost"),
    "left": (">", "tab:orange", "left the field"),
    "died": ("s", "dimgray", "died"),
    "active": ("o", "tab:green", "active (still tracked)"),
}
"""How each fate (the store's words) is marked at the end of a track."""

_OVERLAY_LONG_SIDE = (384, 1024)
"""Overlay frames are scaled so their long side is at least / at most this many pixels: a
96-pixel crop would make unreadable ids, a 2048² frame a huge movie."""


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingExtra("pictures need matplotlib: pip install 'livetrack[plot]'") from None
    return matplotlib


def _check_suffix(path: Path, allowed: tuple[str, ...], what: str) -> None:
    if path.suffix.lower() not in allowed:
        raise EvaluationError(f"{path}: a {what} is written as {_either(allowed)}")


def _either(options: tuple[str, ...]) -> str:
    return ", ".join(options[:-1]) + f" or {options[-1]}" if len(options) > 1 else options[0]


# ------------------------------------------------------------------------ lineage


def lineage_tracks(pos: PositionData, track: int) -> list[TrackRecord]:
    """``track`` and all its descendants, mother before daughters."""
    if track not in pos.tracks:
        ids = sorted(pos.tracks)
        span = f"tracks {ids[0]}..{ids[-1]}" if ids else "no tracks"
        raise EvaluationError(f"position {pos.position!r} has no track {track} ({span})")
    children: dict[int, list[int]] = {}
    for rec in pos.track_records():
        if rec.parent_id is not None:
            children.setdefault(rec.parent_id, []).append(rec.track_id)
    out: list[TrackRecord] = []
    stack = [track]
    while stack:
        tid = stack.pop()
        out.append(pos.tracks[tid])
        stack.extend(sorted(children.get(tid, []), reverse=True))
    return out


def _layout(records: list[TrackRecord]) -> dict[int, float]:
    """Row of each track: leaves on consecutive rows, a mother halfway between her
    daughters (the classic dendrogram), so branches never cross."""
    by_id = {r.track_id: r for r in records}
    children: dict[int, list[int]] = {}
    for r in records[1:]:
        if r.parent_id is not None:
            children.setdefault(r.parent_id, []).append(r.track_id)
    rows: dict[int, float] = {}
    next_leaf = 0

    def place(tid: int) -> float:  # recursion depth = generations: small
        nonlocal next_leaf
        kids = sorted(children.get(tid, []))
        if not kids:
            rows[tid] = float(next_leaf)
            next_leaf += 1
        else:
            rows[tid] = sum(place(k) for k in kids) / len(kids)
        return rows[tid]

    place(records[0].track_id)
    assert set(rows) == set(by_id)
    return rows


def lineage_figure(result: TrackingResult, track: int) -> Figure:
    """The lineage tree of ``track``: one horizontal line per track from its first to its
    last frame, a vertical branch at each division, each track's id on its line and its
    fate marked at its end. One position (``result.position(name)`` picks one)."""
    _matplotlib()
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    pos = result.data
    records = lineage_tracks(pos, track)
    rows = _layout(records)
    by_id = {r.track_id: r for r in records}
    n_rows = max(rows.values()) + 1
    fig = Figure(figsize=(8.0, max(2.2, 0.45 * n_rows + 1.5)), layout="constrained")
    ax = fig.add_subplot()
    used: set[str] = set()
    for rec in records:
        y = rows[rec.track_id]
        mother = by_id.get(rec.parent_id) if rec.parent_id is not None else None
        x0 = mother.end_frame if mother is not None else rec.start_frame
        if mother is not None:  # the branch from the mother's last frame
            ax.plot([x0, x0], [rows[mother.track_id], y], color="0.35", lw=1.4, zorder=1)
        ax.plot([x0, rec.end_frame], [y, y], color="tab:blue", lw=2.2, zorder=2)
        marker, colour, _ = FATE_STYLE.get(rec.fate, ("d", "purple", rec.fate))
        face = "white" if rec.fate == "active" else colour
        ax.plot(rec.end_frame, y, marker=marker, ms=7, color=colour, mfc=face, mew=1.6, zorder=3)
        used.add(rec.fate)
        ax.annotate(
            str(rec.track_id),
            ((x0 + rec.end_frame) / 2, y),  # mid-line: clear of the fate marker
            xytext=(0, 4),
            textcoords="offset points",
            fontsize=9,
            color="black",
            ha="center",
            gid=f"track-{rec.track_id}",
        )
    first = min(r.start_frame for r in records)
    last = max(r.end_frame for r in records)
    pad = max(1.0, 0.03 * (last - first))
    ax.set_xlim(first - pad, last + pad)
    ax.set_ylim(n_rows - 0.4, -0.6)  # first leaf on top
    ax.set_yticks([])
    ax.set_xlabel("frame")
    ax.set_ylabel("tracks (ids on the lines)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    root = records[0]
    origin = f", daughter of track {root.parent_id}" if root.parent_id is not None else ""
    n_div = sum(r.fate == "divided" for r in records)
    ax.set_title(
        f"Lineage of track {track}{origin}: position {pos.position}"
        + (f", run {result.run_id}" if result.run_id else "")
        + f"\n{len(records)} tracks, {n_div} division{'s' if n_div != 1 else ''}, "
        f"frames {first}–{last}",
        fontsize=10,
    )
    handles = []
    for fate in [f for f in FATE_STYLE if f in used] + sorted(used - set(FATE_STYLE)):
        marker, colour, text = FATE_STYLE.get(fate, ("d", "purple", fate))
        face = "white" if fate == "active" else colour
        handles.append(
            Line2D([], [], ls="", marker=marker, color=colour, mfc=face, mew=1.6, label=text)
        )
    ax.legend(  # beside the tree, never over it
        handles=handles,
        title="end of track",
        fontsize=8,
        title_fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
    return fig


# ------------------------------------------------------------------------ summary


def summary_counts(
    pos: PositionData,
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """(frames, cells in each frame, divisions up to and including each frame)."""
    frames = np.asarray(pos.frames, np.int64)
    cells = np.asarray([len(pos.detections[f][0]) for f in pos.frames], np.int64)
    div_frames = np.asarray([e["frame"] for e in pos.events if e["kind"] == "division"], np.int64)
    cumulative = np.searchsorted(np.sort(div_frames), frames, side="right").astype(np.int64)
    return frames, cells, cumulative


def summary_figure(result: TrackingResult, *, max_legend: int = 12) -> Figure:
    """Cells per frame and cumulative divisions over time, one line per position."""
    _matplotlib()
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8.0, 5.6), layout="constrained")
    ax_cells, ax_div = fig.subplots(2, 1, sharex=True)
    names = result.positions
    if not names:
        raise EvaluationError("the result has no positions to plot")
    total_div = 0
    for name in names:
        frames, cells, cumulative = summary_counts(result.position(name).data)
        label = name if len(names) <= max_legend else None
        ax_cells.plot(frames, cells, lw=1.6, label=label)
        ax_div.step(frames, cumulative, where="post", lw=1.6, label=label)
        total_div += int(cumulative[-1]) if len(cumulative) else 0
    ax_cells.set_ylabel("cells in the frame")
    ax_div.set_ylabel("divisions so far")
    ax_div.set_xlabel("frame")
    for ax in (ax_cells, ax_div):
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_div.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(names) <= max_legend:
        ax_cells.legend(title="position", fontsize=8, title_fontsize=8, loc="best")
    run = f"run {result.run_id}: " if result.run_id else ""
    fig.suptitle(
        f"{run}{len(names)} position{'s' if len(names) != 1 else ''}, "
        f"{total_div} division{'s' if total_div != 1 else ''}",
        fontsize=10,
    )
    return fig


# ------------------------------------------------------------------------ saving


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG, SVG or PDF. In SVG, text stays text (``svg.fonttype``
    'none'), so the ids can be searched and edited in the file."""
    matplotlib = _matplotlib()
    path = Path(path)
    _check_suffix(path, FIGURE_SUFFIXES, "figure")
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(path, dpi=150)
    logger.info("wrote %s", path)
    return path


# ------------------------------------------------------------------------ overlay


_TRACK_COLOURS = np.asarray(
    [
        (255, 64, 64), (64, 160, 255), (80, 220, 80), (255, 170, 0), (220, 80, 255),
        (0, 230, 230), (255, 255, 0), (255, 105, 180), (160, 255, 100), (255, 130, 80),
    ],
    np.uint8,
)  # fmt: skip
"""Outline colours, cycled by track id: saturated only (pale ones vanish on a grey cell)."""


def _normalise(image: NDArray[Any]) -> NDArray[np.uint8]:
    """Grey levels 0..255 between the 1st and 99.8th percentile (fluorescence has a few
    very bright pixels; a plain min-max would leave the nuclei dark)."""
    img = np.asarray(image, np.float64)
    lo, hi = np.percentile(img, [1.0, 99.8]) if img.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((img - lo) / (hi - lo), 0.0, 1.0) * 255).astype(np.uint8)


def overlay_frames(pos: PositionData, *, ids: bool = True) -> Iterator[NDArray[np.uint8]]:
    """RGB frames (H', W', 3) of ``pos``: the raw image in grey (when ``pos.image_of`` has
    it, else black), each cell's outline in its track's colour and its track id at its
    centroid; the position and frame in the corner. One frame per committed frame."""
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patheffects import withStroke
    from skimage.segmentation import find_boundaries

    h, w = pos.shape
    scale = max(_OVERLAY_LONG_SIDE[0] / max(h, w), 1.0)
    scale = min(scale, _OVERLAY_LONG_SIDE[1] / max(h, w))
    out_h, out_w = _even(h * scale), _even(w * scale)
    dpi = 100.0
    fig = Figure(figsize=(out_w / dpi, out_h / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    colours = _TRACK_COLOURS
    shown = ax.imshow(
        np.zeros((h, w, 3), np.uint8),
        interpolation="nearest",
        extent=(-0.5, w - 0.5, h - 0.5, -0.5),
    )
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    stroke = [withStroke(linewidth=2.0, foreground="black")]
    read = pos.image_of
    for frame in pos.frames:
        mask = np.asarray(pos.mask_of(frame))
        grey = (
            _normalise(_image(read, frame, (h, w)))
            if read is not None
            else np.zeros((h, w), np.uint8)
        )
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
        dets, track_ids = pos.detections[frame]
        if len(dets):
            lut = np.zeros(int(max(int(dets.labels.max()), int(mask.max()))) + 1, np.int64)
            lut[dets.labels] = track_ids + 1  # 0 = background / unknown label
            tracks_img = lut[np.clip(mask, 0, len(lut) - 1)]
            edge = find_boundaries(mask, mode="inner") & (tracks_img > 0)
            rgb[edge] = colours[(tracks_img[edge] - 1) % len(colours)]
        shown.set_data(rgb)
        texts = []
        if ids:
            for (cy, cx), tid in zip(dets.centroids, track_ids.tolist(), strict=True):
                texts.append(
                    ax.text(
                        cx,
                        cy,
                        str(tid),
                        color="white",
                        fontsize=8,
                        ha="center",
                        va="center",
                        path_effects=stroke,
                    )
                )
        texts.append(
            ax.text(
                0.01,
                0.99,
                f"position {pos.position} · frame {frame}",
                transform=ax.transAxes,
                color="yellow",
                fontsize=9,
                ha="left",
                va="top",
                path_effects=stroke,
            )
        )
        canvas.draw()
        yield np.asarray(canvas.buffer_rgba())[:, :, :3].copy()
        for t in texts:
            t.remove()


def _image(read: Callable[[int], NDArray[Any]], frame: int, shape: tuple[int, int]) -> NDArray[Any]:
    """The raw frame, checked against the run: images of another movie would put the
    outlines on the wrong cells without a word."""
    try:
        image = np.squeeze(np.asarray(read(frame)))
    except (IndexError, KeyError):
        raise EvaluationError(f"the images have no frame {frame}; the run has it") from None
    if image.shape != shape:
        raise EvaluationError(
            f"image of frame {frame} has shape {image.shape}; the run's frames are {shape}"
        )
    return image


def _even(n: float) -> int:
    """A size video codecs accept: a multiple of 16 (ffmpeg's macroblock)."""
    return max(16, math.ceil(n / 16.0) * 16)


def write_overlay(
    result: TrackingResult, path: str | Path, *, fps: float = 5.0, ids: bool = True
) -> Path:
    """Write the overlay movie of one position as GIF (Pillow) or MP4 (imageio-ffmpeg).

    The store keeps masks, not images: on a stored run, open it with
    ``livetrack.open_run(db, images=...)`` to draw over the raw frames; without images the
    outlines are drawn on black."""
    path = Path(path)
    _check_suffix(path, MOVIE_SUFFIXES, "movie")
    if not (math.isfinite(fps) and fps > 0):
        raise EvaluationError(f"fps must be a positive number, got {fps}")
    pos = result.data
    if not pos.frames:
        raise EvaluationError(f"position {pos.position!r} has no frames to draw")
    frames = overlay_frames(pos, ids=ids)
    if path.suffix.lower() == ".gif":
        _write_gif(frames, path, fps)
    else:
        _write_mp4(frames, path, fps)
    logger.info("wrote %d frames to %s", len(pos.frames), path)
    return path


def _write_gif(frames: Iterator[NDArray[np.uint8]], path: Path, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(f).quantize(colors=255, dither=Image.Dither.NONE) for f in frames]
    images[0].save(
        path,
        save_all=True,
        append_images=images[1:],
        duration=round(1000.0 / fps),
        loop=0,
        optimize=False,
    )


def _write_mp4(frames: Iterator[NDArray[np.uint8]], path: Path, fps: float) -> None:
    try:
        import imageio_ffmpeg
    except ImportError:
        raise MissingExtra(
            "MP4 needs imageio-ffmpeg: pip install 'livetrack[plot]' (or write a .gif)"
        ) from None
    first = next(frames)
    h, w = first.shape[:2]  # a multiple of 16 (_even): ffmpeg neither pads nor warns
    writer = imageio_ffmpeg.write_frames(
        str(path), (w, h), fps=fps, codec="libx264", macro_block_size=16, ffmpeg_log_level="error"
    )
    writer.send(None)  # start ffmpeg
    try:
        for frame in (first, *frames):
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()


# ------------------------------------------------------------------------ stored runs


def plot_stored(
    db: str | Path,
    picture: str,
    out: str | Path,
    *,
    run: str | None = None,
    position: str | None = None,
    track: int | None = None,
    images: MovieLike | None = None,
    fps: float = 5.0,
) -> str:
    """``livetrack plot``: draw ``picture`` ('lineage', 'summary' or 'overlay') of a
    stored run into ``out``; returns one line saying what was written. The file name is
    checked before the database is opened, so a typo costs nothing."""
    from livetrack.api import open_run

    out = Path(out)
    _matplotlib()
    if picture == "overlay":
        _check_suffix(out, MOVIE_SUFFIXES, "movie")
    elif picture in ("lineage", "summary"):
        _check_suffix(out, FIGURE_SUFFIXES, "figure")
    else:
        raise EvaluationError(f"unknown picture {picture!r}: lineage, summary or overlay")
    if picture == "summary":
        with open_run(db, run, position) as result:
            save_figure(summary_figure(result), out)
            return f"run {result.run_id}: cells and divisions of {result.positions} → {out}"
    with open_run(db, run, position) as result:
        names, run_id = result.positions, result.run_id
    if len(names) != 1:
        raise EvaluationError(f"run {run_id} has positions {names}; choose one with --position")
    with open_run(db, run_id, names[0], images=images if picture == "overlay" else None) as one:
        if picture == "lineage":
            if track is None:
                raise EvaluationError("a lineage picture needs --track N")
            save_figure(lineage_figure(one, track), out)
            return f"run {run_id} position {names[0]}: lineage of track {track} → {out}"
        write_overlay(one, out, fps=fps)
        over = "the images" if images is not None else "black (no --images)"
        return (
            f"run {run_id} position {names[0]}: {len(one.data.frames)} frames, "
            f"outlines over {over} → {out}"
        )
