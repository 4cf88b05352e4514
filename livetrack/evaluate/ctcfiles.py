"""Reading and checking CTC folders before py-ctcmetrics sees them.

py-ctcmetrics answers a malformed result with ``assert`` failures or a bare "Invalid
results!" on stdout; these checks turn the common mistakes into an
:class:`~livetrack.errors.EvaluationError` that says what is wrong.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from livetrack.errors import EvaluationError


@dataclass(frozen=True)
class CtcTracks:
    """A ``*_track.txt`` table: columns label, begin, end, parent (int64, shape (n, 4))."""

    table: NDArray[np.int64]

    @property
    def labels(self) -> NDArray[np.int64]:
        return self.table[:, 0]

    def row(self) -> dict[int, tuple[int, int, int]]:
        """label -> (begin, end, parent)."""
        return {int(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in self.table}

    def children(self) -> dict[int, list[int]]:
        """parent label -> its child labels (in file order)."""
        out: dict[int, list[int]] = {}
        for label, _, _, parent in self.table:
            if parent > 0:
                out.setdefault(int(parent), []).append(int(label))
        return out


def read_track_file(path: Path) -> CtcTracks:
    """Parse ``L B E P`` lines (spaces or tabs); blank lines are ignored."""
    if not path.is_file():
        raise EvaluationError(f"missing track file {path}")
    rows: list[list[int]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            values = [int(p) for p in parts]
        except ValueError as err:
            raise EvaluationError(f"{path}:{n}: not integers: {line!r}") from err
        if len(values) != 4:
            raise EvaluationError(f"{path}:{n}: expected 'L B E P', got {line!r}")
        rows.append(values)
    table = np.array(rows, dtype=np.int64).reshape(-1, 4)
    return CtcTracks(table)


def validate_tracks(tracks: CtcTracks, n_frames: int, name: str) -> None:
    """Check the CTC rules that do not need the masks.

    Labels unique and in 1..65535, 0 <= B <= E < n_frames, parent 0 or an existing
    label, and the parent ends before the child begins.
    """
    rows = tracks.row()
    if len(rows) != len(tracks.table):
        labels, counts = np.unique(tracks.labels, return_counts=True)
        raise EvaluationError(f"{name}: duplicate track labels {labels[counts > 1].tolist()}")
    for label, (begin, end, parent) in rows.items():
        where = f"{name}: track {label} ({label} {begin} {end} {parent})"
        if not 1 <= label <= 65535:
            raise EvaluationError(f"{where}: label must be in 1..65535")
        if begin < 0 or end < begin:
            raise EvaluationError(f"{where}: needs 0 <= begin <= end")
        if end >= n_frames:
            raise EvaluationError(f"{where}: ends after the last frame {n_frames - 1}")
        if parent == 0:
            continue
        if parent not in rows:
            raise EvaluationError(f"{where}: parent {parent} is not a track")
        if rows[parent][1] >= begin:
            raise EvaluationError(
                f"{where}: parent {parent} ends at frame {rows[parent][1]}, "
                "not before the child begins"
            )


def mask_files(folder: Path, prefix: str) -> list[Path]:
    """``prefix*.tif`` files of ``folder`` sorted by name (the CTC's frame order)."""
    if not folder.is_dir():
        raise EvaluationError(f"missing folder {folder}")
    return sorted(p for p in folder.glob(f"{prefix}*.tif") if p.is_file())


def frame_index(path: Path, prefix: str) -> int:
    """Frame number of ``maskNNN.tif`` / ``man_segNNN.tif``."""
    digits = path.stem[len(prefix) :].replace("_", "")
    if not digits.isdigit():
        raise EvaluationError(f"cannot read a frame number from {path.name}")
    return int(digits)


def check_layout(res_dir: Path, gt_dir: Path) -> tuple[int, bool]:
    """Check both folders; return (number of frames, whether GT has SEG masks)."""
    gt_tra = mask_files(gt_dir / "TRA", "man_track")
    if not gt_tra:
        raise EvaluationError(f"no TRA masks (man_track*.tif) in {gt_dir / 'TRA'}")
    if not (gt_dir / "TRA" / "man_track.txt").is_file():
        raise EvaluationError(f"missing {gt_dir / 'TRA' / 'man_track.txt'}")
    res = mask_files(res_dir, "mask")
    if len(res) != len(gt_tra):
        raise EvaluationError(
            f"{res_dir} has {len(res)} mask*.tif files but the ground truth has "
            f"{len(gt_tra)} frames; export with n_frames equal to the GT frame count"
        )
    for t, path in enumerate(res):
        if frame_index(path, "mask") != t:
            raise EvaluationError(f"{res_dir}: expected frame {t}, found {path.name}")
    if not (res_dir / "res_track.txt").is_file():
        raise EvaluationError(f"missing {res_dir / 'res_track.txt'}")
    seg_dir = gt_dir / "SEG"
    has_seg = seg_dir.is_dir() and bool(mask_files(seg_dir, "man_seg"))
    return len(gt_tra), has_seg


def check_presence(
    tracks: CtcTracks, labels_per_frame: list[list[int]] | list[NDArray[np.int64]], name: str
) -> None:
    """Every parent link must be visible in the masks: the daughter's label in its first
    frame and the mother's label in her last frame.

    py-ctcmetrics looks both up there to build the link and fails with an ``IndexError``
    when one is absent (a ``man_track.txt`` edited by hand, or masks and track file from
    different versions of an annotation). Nothing else is required here: a track missing
    from its own first or last frame without a parent link is scored as py-ctcmetrics
    scores it.
    """
    present = [set(np.asarray(labels).tolist()) for labels in labels_per_frame]
    rows = tracks.row()
    bad: list[str] = []
    for label, (begin, end, parent) in rows.items():
        if parent == 0 or parent not in rows:
            continue
        p_end = rows[parent][1]
        if label not in present[begin]:
            bad.append(
                f"daughter {label} ({label} {begin} {end} {parent}) has no mask in frame {begin}"
            )
        if parent not in present[p_end]:
            bad.append(f"mother {parent} of track {label} has no mask in her last frame {p_end}")
    if bad:
        bad = list(dict.fromkeys(bad))
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        raise EvaluationError(f"{name} disagrees with its masks: " + "; ".join(bad[:5]) + more)


def lineage_digest(sequence: Path) -> str | None:
    """sha256 of a CTC sequence's annotated lineage (``NN_GT/TRA/man_track.txt`` beside the
    ``NN`` image folder): the same for any copy of the sequence, renamed, moved or with its
    images altered (binned, re-encoded), so a model's training data is recognised by
    content as well as by name. None when the sequence has no such file."""
    path = Path(sequence)
    lineage = path.parent / f"{path.name}_GT" / "TRA" / "man_track.txt"
    try:
        return hashlib.sha256(lineage.read_bytes()).hexdigest()
    except OSError:
        return None


def with_lineage_digests(items: Any) -> Any:
    """``items`` (a model config's list of CTC data, dicts with a "path") with each one's
    ``lineage_digest`` added as "lineage_sha256" where the sequence is readable."""
    if not isinstance(items, list):
        return items
    out = []
    for item in items:
        if isinstance(item, dict) and "path" in item:
            digest = lineage_digest(Path(str(item["path"])))
            item = {**item, "lineage_sha256": digest} if digest else dict(item)
        out.append(item)
    return out


def trim_sequence(images: Path, first: int, last: int, out: Path) -> Path:
    """A CTC sequence cut to its frames ``first``–``last`` (inclusive), renumbered from 0,
    written under ``out`` as ``01`` (images, linked to the originals) and ``01_GT`` (TRA
    masks and ``man_track.txt`` clipped to the range: a track begun before it starts there
    without a parent; SEG masks of the range). Returns the new image folder. Written anew
    each time (links are cheap), so a cut never outlives a change of its sequence."""
    images = Path(images)
    gt = images.with_name(images.name + "_GT")
    if first < 0 or last < first:
        raise EvaluationError(f"{images}: frames {first}-{last} is not a range (FIRST-LAST)")
    tracks = read_track_file(gt / "TRA" / "man_track.txt")
    frames = {
        frame_index(p, "t"): p for p in sorted(images.glob("t*.tif*")) if p.stem[1:].isdigit()
    }
    wanted = [t for t in sorted(frames) if first <= t <= last]
    if not wanted:
        held = f"{min(frames)}-{max(frames)}" if frames else "none"
        raise EvaluationError(f"{images}: no frame in {first}-{last} (it holds frames {held})")
    out_images, out_gt = Path(out) / "01", Path(out) / "01_GT"
    for folder in (out_images, out_gt):
        if folder.is_dir():
            shutil.rmtree(folder)
    digits = max(3, len(str(wanted[-1] - first)))
    for folder in (out_images, out_gt / "TRA", out_gt / "SEG"):
        folder.mkdir(parents=True, exist_ok=True)

    def link(src: Path, dst: Path) -> None:
        dst.symlink_to(src.resolve())

    for t in wanted:
        n = f"{t - first:0{digits}d}"
        link(frames[t], out_images / f"t{n}{frames[t].suffix}")
        for kind, prefix in (("TRA", "man_track"), ("SEG", "man_seg")):
            for src in (gt / kind).glob(f"{prefix}*{t}.tif"):
                if src.stem[len(prefix) :].isdigit() and int(src.stem[len(prefix) :]) == t:
                    link(src, out_gt / kind / f"{prefix}{n}.tif")
    validate_tracks(tracks, max(frames) + 1, str(gt / "TRA" / "man_track.txt"))
    rows = tracks.row()
    lines = []
    for label, (begin, end, parent) in sorted(rows.items()):
        if end < first or begin > last:
            continue
        kept_parent = parent if parent and begin >= first and rows[parent][1] >= first else 0
        lines.append(f"{label} {max(begin, first) - first} {min(end, last) - first} {kept_parent}")
    (out_gt / "TRA" / "man_track.txt").write_text("\n".join(lines) + "\n")
    return out_images
