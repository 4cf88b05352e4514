"""Lineage metrics over a per-frame GT↔result object matching: divisions, TE, AA.

Pure functions over CTC track tables and per-frame label lists, so they are tested with
hand-written tables and reused whatever produced the matching. The matching itself is the
CTC one (py-ctcmetrics ``match``): in frame t, result object r matches GT marker g when r
covers more than half of g's pixels. A result object may match several GT markers (a
merge); a GT marker matches at most one result object.

Definitions (see :func:`livetrack.evaluate.evaluate_ctc` for the full statement):

* **Cell identity.** A parent with exactly one child is *not* a division: the CTC uses it
  for "the same cell, seen again" (a track cut at a gap; livetrack's export writes gaps
  this way). Such single-child chains form one identity, in GT and result alike. The
  three GT parents with one child in Fluo-N2DH-SIM+/01 (28→53, 2→60, 3→89; the child
  starts right after the parent ends) are therefore continuations, not divisions.
* **Division**: a track with two or more children.
* **TE / AA**: computed on identities (TE) and on the frame-to-frame graph (AA).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from livetrack.evaluate.ctcfiles import CtcTracks

FrameLabels = Sequence[Sequence[int]]
"""Per frame, the labels present in that frame's mask."""
FrameMatches = Sequence[dict[int, int]]
"""Per frame, GT label -> matched result label."""
Node = tuple[int, int]
"""(label, frame)."""


@dataclass(frozen=True)
class Division:
    """A mother track that ends in two or more children."""

    mother: int
    end: int
    """Last frame of the mother."""
    children: tuple[tuple[int, int], ...]
    """(child label, child's first frame)."""


@dataclass(frozen=True)
class DivisionCounts:
    """Caliban's division confusion counts."""

    correct: int
    missed: int
    incorrect: int
    false_positive: int
    n_gt: int
    n_res: int


def identities(tracks: CtcTracks) -> dict[int, int]:
    """label -> identity (the first label of its single-child chain)."""
    rows = tracks.row()
    kids = tracks.children()
    ident: dict[int, int] = {}
    for label in sorted(rows, key=lambda lab: (rows[lab][0], lab)):
        parent = rows[label][2]
        if parent > 0 and len(kids.get(parent, [])) == 1:
            ident[label] = ident.get(parent, parent)
        else:
            ident[label] = label
    return ident


def divisions(tracks: CtcTracks) -> list[Division]:
    """Tracks with at least two children, ordered by their end frame."""
    rows = tracks.row()
    out = []
    for mother, kids in tracks.children().items():
        if len(kids) < 2 or mother not in rows:
            continue
        children = tuple((k, rows[k][0]) for k in kids)
        out.append(Division(mother, rows[mother][1], children))
    return sorted(out, key=lambda d: (d.end, d.mother))


class _IdentityMatch:
    """Per frame: GT identity -> identity of the matched result object."""

    def __init__(self, gt: CtcTracks, res: CtcTracks, matches: FrameMatches) -> None:
        self.id_gt = identities(gt)
        self.id_res = identities(res)
        self.maps = [
            {self.id_gt.get(g, g): self.id_res.get(r, r) for g, r in m.items()} for m in matches
        ]

    def same(self, gt_label: int, res_label: int, frame: int) -> bool:
        """Does the GT cell of ``gt_label`` match the result cell of ``res_label`` in
        ``frame``? Identities, not labels, so a gap-cut segment still counts."""
        if not 0 <= frame < len(self.maps):
            return False
        got = self.maps[frame].get(self.id_gt.get(gt_label, gt_label))
        return got is not None and got == self.id_res.get(res_label, res_label)


def classify_divisions(
    gt: CtcTracks, res: CtcTracks, matches: FrameMatches, tolerance: int
) -> DivisionCounts:
    """Classify every GT division as correct, incorrect or missed; leftover result
    divisions are false positives.

    A result division R is a *candidate* for GT division G when their mothers end within
    ``tolerance`` frames and the GT mother matches R's mother in the last frame both are
    alive (min of the two end frames). G is **correct** when a candidate also has its
    daughters matched one-to-one to G's daughters (same number; each pair starts within
    ``tolerance`` frames and matches in the later of the two start frames); **incorrect**
    when the only candidates have the wrong daughters; **missed** when there is no
    candidate (the mother does not divide near that time). Each result division is used
    once: correct pairs are assigned first, then incorrect ones, nearest in time first.
    """
    ident = _IdentityMatch(gt, res, matches)
    gt_divs, res_divs = divisions(gt), divisions(res)
    used: set[int] = set()
    correct: set[int] = set()
    for i, gd in enumerate(gt_divs):
        j = _pick(gd, res_divs, used, ident, tolerance, need_daughters=True)
        if j is not None:
            used.add(j)
            correct.add(i)
    incorrect = 0
    for i, gd in enumerate(gt_divs):
        if i in correct:
            continue
        j = _pick(gd, res_divs, used, ident, tolerance, need_daughters=False)
        if j is not None:
            used.add(j)
            incorrect += 1
    n_correct = len(correct)
    return DivisionCounts(
        correct=n_correct,
        missed=len(gt_divs) - n_correct - incorrect,
        incorrect=incorrect,
        false_positive=len(res_divs) - len(used),
        n_gt=len(gt_divs),
        n_res=len(res_divs),
    )


def _pick(
    gd: Division,
    res_divs: list[Division],
    used: set[int],
    ident: _IdentityMatch,
    tolerance: int,
    *,
    need_daughters: bool,
) -> int | None:
    """Index of the nearest unused candidate result division for ``gd``, if any."""
    best: tuple[int, int] | None = None
    for j, rd in enumerate(res_divs):
        shift = abs(rd.end - gd.end)
        if j in used or shift > tolerance:
            continue
        if not ident.same(gd.mother, rd.mother, min(gd.end, rd.end)):
            continue
        if need_daughters and not _daughters_match(gd, rd, ident, tolerance):
            continue
        if best is None or shift < best[0]:
            best = (shift, j)
    return None if best is None else best[1]


def _daughters_match(gd: Division, rd: Division, ident: _IdentityMatch, tolerance: int) -> bool:
    """One-to-one pairing of GT and result daughters exists (few daughters: brute force)."""
    if len(gd.children) != len(rd.children):
        return False

    def pair_ok(g: tuple[int, int], r: tuple[int, int]) -> bool:
        return abs(g[1] - r[1]) <= tolerance and ident.same(g[0], r[0], max(g[1], r[1]))

    return any(
        all(pair_ok(g, r) for g, r in zip(gd.children, perm, strict=True))
        for perm in itertools.permutations(rd.children)
    )


def target_effectiveness(
    gt: CtcTracks, res: CtcTracks, labels_gt: FrameLabels, matches: FrameMatches
) -> float | None:
    """TE (Bise et al. 2011; Chen 2021; deepcell-tracking; traccuracy).

    For each GT cell identity (a track between divisions; single-child chains joined),
    count the frames in which it is matched to each result identity and keep the best
    one; TE = sum of those best counts / sum of GT identity lengths (in frames present),
    i.e. the mean per-track fraction weighted by track length. None without GT objects.
    Unlike deepcell-tracking (one IoU match per track for the whole movie) a frame only
    counts when the GT object is matched, in that frame, to the result cell.
    """
    ident = _IdentityMatch(gt, res, matches)
    lengths: Counter[int] = Counter()
    overlap: dict[int, Counter[int]] = {}
    for t, labels in enumerate(labels_gt):
        for g in labels:
            gid = ident.id_gt.get(g, g)
            lengths[gid] += 1
            rid = ident.maps[t].get(gid)
            if rid is not None:
                overlap.setdefault(gid, Counter())[rid] += 1
    total = sum(lengths.values())
    if total == 0:
        return None
    best = sum(max(c.values()) for c in overlap.values())
    return best / total


def link_edges(tracks: CtcTracks, labels: FrameLabels) -> set[tuple[Node, Node]]:
    """The tracking graph's edges: a label in successive frames where it is present,
    and parent (last frame) -> child (first frame) for every parent link."""
    frames: dict[int, list[int]] = {}
    for t, present in enumerate(labels):
        for lab in present:
            frames.setdefault(int(lab), []).append(t)
    edges: set[tuple[Node, Node]] = set()
    for lab, ts in frames.items():
        edges.update(((lab, a), (lab, b)) for a, b in itertools.pairwise(ts))
    for label, _, _, parent in tracks.table:
        lab, par = int(label), int(parent)
        if par > 0 and frames.get(par) and frames.get(lab):
            edges.add(((par, frames[par][-1]), (lab, frames[lab][0])))
    return edges


def association_accuracy(
    gt: CtcTracks,
    res: CtcTracks,
    labels_gt: FrameLabels,
    labels_res: FrameLabels,
    matches: FrameMatches,
) -> float | None:
    """AA: the fraction of GT links recovered by the result.

    GT links are the edges of :func:`link_edges` (same cell in successive frames, and
    parent→daughter). A GT link (g1, t1)→(g2, t2) is recovered when both ends are matched,
    to r1 and r2, and the result graph has the edge (r1, t1)→(r2, t2). The edge's meaning
    (same cell or division) is not compared: division semantics are scored by the
    division metrics. None when the GT has no links.

    Difference from deepcell-tracking's ``calculate_association_accuracy``: deepcell
    counts only same-cell links inside each GT track, scored against the one result
    track matched to it over the whole movie; here parent→daughter links count too (a
    missed division loses one link) and matching is per frame.
    """
    gt_edges = link_edges(gt, labels_gt)
    if not gt_edges:
        return None
    res_edges = link_edges(res, labels_res)
    hit = 0
    for (g1, t1), (g2, t2) in gt_edges:
        r1, r2 = matches[t1].get(g1), matches[t2].get(g2)
        if r1 is not None and r2 is not None and ((r1, t1), (r2, t2)) in res_edges:
            hit += 1
    return hit / len(gt_edges)
