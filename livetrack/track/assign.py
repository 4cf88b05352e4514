"""Frame-to-frame assignment as pure functions over arrays.

Any scorer can feed these functions: the distance tracker (cost = normalised distance) and
a learned model (cost = 1 − p_same, parent scores = p_parent-child) alike.

The pipeline for one frame is::

    gate(...)             → candidate (track, detection) pairs within a radius
    assign_sparse(...)    → connected blocks of the gated graph, one small LAP per block in
                            Caliban's (T+N)×(T+N) layout with birth/death diagonals
    select_parents(...)   → which newborn detections are daughters of which tracks

Gating + block decomposition keep the cost near-linear in the number of cells: Caliban's
published code solved one dense (T+N)² problem per frame, which does not scale to
thousands of nuclei.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components, min_weight_full_bipartite_matching
from scipy.spatial import cKDTree

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]

DENSE_BLOCK_LIMIT = 400
"""Blocks whose shadow matrix side (t + n) exceeds this are solved with the sparse LAPJVsp
solver instead of the dense Hungarian one (memory and time grow as side²)."""


@dataclass(frozen=True, eq=False)
class Candidates:
    """Gated (track, detection) pairs, sorted by track then detection."""

    track: IndexArray
    detection: IndexArray
    distance: FloatArray

    def __len__(self) -> int:
        return len(self.track)


@dataclass(frozen=True, eq=False)
class Assignment:
    """The result of one frame's assignment.

    Attributes:
        matches: (M, 2) rows of (track index, detection index), sorted by track.
        unmatched_tracks: track indices assigned to "death" (not seen in this frame).
        unmatched_detections: detection indices assigned to "birth".
        total_cost: Σ matched costs + Σ death costs + Σ birth costs (the LAP objective).
    """

    matches: NDArray[np.intp]
    unmatched_tracks: IndexArray
    unmatched_detections: IndexArray
    total_cost: float


def _empty_index() -> IndexArray:
    return np.zeros(0, np.intp)


def gate(
    track_pos: ArrayLike,
    det_pos: ArrayLike,
    radius: ArrayLike,
) -> Candidates:
    """All (track, detection) pairs with ``|det - track| <= radius[track]`` (the distance by
    ``np.hypot``), ordered by track, then detection.

    ``radius`` is a scalar or one value per track (e.g. larger for tracks in a gap); a
    negative or NaN radius admits no pair. KD-trees keep this O((T + N) log N + pairs)
    instead of O(T·N): one tree-to-tree query per distinct radius (a few: the radius grows
    with missed frames), or one at the largest radius when there are many.
    """
    tp = np.asarray(track_pos, np.float64).reshape(-1, 2)
    dp = np.asarray(det_pos, np.float64).reshape(-1, 2)
    n_t, n_d = len(tp), len(dp)
    r = np.broadcast_to(np.asarray(radius, np.float64), (n_t,))
    if n_t == 0 or n_d == 0:
        return Candidates(_empty_index(), _empty_index(), np.zeros(0, np.float64))
    radii = np.unique(r[r >= 0])
    if len(radii) == 0:
        return Candidates(_empty_index(), _empty_index(), np.zeros(0, np.float64))
    dets = cKDTree(dp)
    groups = (
        [(np.flatnonzero(r == x), x) for x in radii]
        if len(radii) <= MAX_RADIUS_GROUPS
        else [(np.flatnonzero(r >= 0), radii[-1])]
    )
    trk_parts, det_parts = [], []
    for rows, reach in groups:
        # A little beyond the radius, so that rounding in the trees' distances cannot drop
        # a pair; each track's own radius is applied below.
        near = cKDTree(tp[rows]).sparse_distance_matrix(
            dets, float(reach) * (1.0 + 1e-9) + 1e-9, output_type="ndarray"
        )
        trk_parts.append(rows[near["i"]])
        det_parts.append(near["j"].astype(np.intp))
    trk, det = np.concatenate(trk_parts).astype(np.intp), np.concatenate(det_parts)
    dist = np.hypot(dp[det, 0] - tp[trk, 0], dp[det, 1] - tp[trk, 1])
    keep = dist <= r[trk]
    trk, det, dist = trk[keep], det[keep], dist[keep]
    order = np.lexsort((det, trk))
    return Candidates(trk[order], det[order], dist[order])


MAX_RADIUS_GROUPS = 8
"""``gate``: up to this many distinct radii are queried each on their own tracks; with more,
every track is queried at the largest (the same pairs, more of them to filter)."""


def connected_blocks(
    n_tracks: int, n_dets: int, track: IndexArray, det: IndexArray
) -> tuple[IndexArray, IndexArray, int]:
    """Label the connected components of the bipartite gated graph.

    Returns (block of each track, block of each detection, number of blocks). Tracks and
    detections in different blocks can never compete, so each block is an independent LAP.
    """
    n = n_tracks + n_dets
    if n == 0:
        return _empty_index(), _empty_index(), 0
    graph = sparse.coo_matrix(
        (np.ones(len(track), np.int8), (np.asarray(track), np.asarray(det) + n_tracks)),
        shape=(n, n),
    ).tocsr()
    n_blocks, labels = connected_components(graph, directed=False)
    labels = labels.astype(np.intp)
    return labels[:n_tracks], labels[n_tracks:], int(n_blocks)


def shadow_matrix(cost: FloatArray, birth: FloatArray, death: FloatArray) -> FloatArray:
    """Caliban's (T+N)×(T+N) layout ``[[A, death-diag], [birth-diag, aux]]``.

    Rows: T tracks then N birth slots; columns: N detections then T death slots. ``cost``
    (T, N) holds link costs with ``np.inf`` for forbidden pairs. The auxiliary bottom-right
    block has Aᵀ's sparsity pattern (so every solution of the top-left block can be
    completed) with value 0 (as in u-track/TrackMate, which use a constant there), so the
    objective is exactly Σ links + Σ deaths + Σ births: a link is kept iff it is cheaper than
    the death of its track plus the birth of its detection. Forbidden entries are a large
    finite number, larger than any feasible solution (all-births-and-deaths is one).
    """
    n_t, n_d = cost.shape
    allowed = np.isfinite(cost)
    finite_sum = float(np.abs(cost[allowed]).sum() + np.abs(birth).sum() + np.abs(death).sum())
    big = 2.0 * finite_sum + 1.0
    out = np.full((n_t + n_d, n_t + n_d), big, np.float64)
    out[:n_t, :n_d] = np.where(allowed, cost, big)
    out[np.arange(n_t), n_d + np.arange(n_t)] = death
    out[n_t + np.arange(n_d), np.arange(n_d)] = birth
    out[n_t:, n_d:] = np.where(allowed.T, 0.0, big)
    return out


def _solve_dense_block(
    cost: FloatArray, birth: FloatArray, death: FloatArray
) -> tuple[IndexArray, IndexArray]:
    """Solve one block with the Hungarian algorithm; return matched (track, det) indices."""
    n_t, n_d = cost.shape
    rows, cols = linear_sum_assignment(shadow_matrix(cost, birth, death))
    is_link = (rows < n_t) & (cols < n_d)
    t, d = rows[is_link], cols[is_link]
    ok = np.isfinite(cost[t, d])  # never true for forbidden entries; kept as a guard
    return t[ok].astype(np.intp), d[ok].astype(np.intp)


def _solve_sparse_block(
    n_t: int,
    n_d: int,
    track: IndexArray,
    det: IndexArray,
    cost: FloatArray,
    birth: FloatArray,
    death: FloatArray,
) -> tuple[IndexArray, IndexArray]:
    """The same shadow layout as a sparse matrix, solved with LAPJVsp (for large blocks).

    LAPJVsp needs non-zero weights, so every entry is shifted by a constant; all perfect
    matchings have the same size, so the shift does not change the optimum.
    """
    n_e = len(track)
    rows = np.concatenate([track, np.arange(n_t), n_t + np.arange(n_d), n_t + det])
    cols = np.concatenate([det, n_d + np.arange(n_t), np.arange(n_d), n_d + track])
    vals = np.concatenate([cost, death, birth, np.zeros(n_e)])
    vals = vals - min(0.0, float(vals.min())) + 1.0
    side = n_t + n_d
    mat = sparse.csr_matrix((vals, (rows, cols)), shape=(side, side))
    r, c = min_weight_full_bipartite_matching(mat)
    is_link = (r < n_t) & (c < n_d)
    return r[is_link].astype(np.intp), c[is_link].astype(np.intp)


def _as_vector(value: ArrayLike, n: int) -> FloatArray:
    return np.array(np.broadcast_to(np.asarray(value, np.float64), (n,)))


def _assignment(
    n_tracks: int,
    n_dets: int,
    t_match: IndexArray,
    d_match: IndexArray,
    link_cost: FloatArray,
    birth: FloatArray,
    death: FloatArray,
) -> Assignment:
    """Package matched pairs into an Assignment and compute its objective."""
    order = np.argsort(t_match, kind="stable")
    t_match, d_match, link_cost = t_match[order], d_match[order], link_cost[order]
    t_free = np.ones(n_tracks, bool)
    t_free[t_match] = False
    d_free = np.ones(n_dets, bool)
    d_free[d_match] = False
    total = float(link_cost.sum() + death[t_free].sum() + birth[d_free].sum())
    return Assignment(
        matches=np.stack([t_match, d_match], axis=1).astype(np.intp).reshape(-1, 2),
        unmatched_tracks=np.flatnonzero(t_free).astype(np.intp),
        unmatched_detections=np.flatnonzero(d_free).astype(np.intp),
        total_cost=total,
    )


def assign_dense(cost: ArrayLike, birth: ArrayLike, death: ArrayLike) -> Assignment:
    """Reference solver: one (T+N)² shadow matrix, no gating, no blocks.

    ``cost`` is (T, N) with ``np.inf`` for forbidden pairs; ``birth`` (N,) or scalar;
    ``death`` (T,) or scalar. Used by the tests to check ``assign_sparse``.
    """
    a = np.asarray(cost, np.float64)
    n_t, n_d = a.shape
    b, dd = _as_vector(birth, n_d), _as_vector(death, n_t)
    if n_t == 0 or n_d == 0:
        t, d = _empty_index(), _empty_index()
    else:
        t, d = _solve_dense_block(a, b, dd)
    return _assignment(n_t, n_d, t, d, a[t, d] if len(t) else np.zeros(0), b, dd)


def assign_sparse(
    n_tracks: int,
    n_dets: int,
    track: ArrayLike,
    det: ArrayLike,
    cost: ArrayLike,
    birth: ArrayLike,
    death: ArrayLike,
    per_block: bool = False,
) -> Assignment:
    """Solve the frame's assignment over gated pairs, block by block.

    ``track``, ``det``, ``cost`` are parallel (P,) arrays of allowed pairs (each pair at most
    once); ``birth`` (N,)/scalar and ``death`` (T,)/scalar as in ``assign_dense``. Isolated
    tracks die, isolated detections are born, 1-track-1-detection blocks are decided in one
    vectorised comparison, and only larger blocks reach a LAP solver: by default all of them
    in ONE sparse LAPJVsp call (their shadow graph is block-diagonal, so this is each block's
    optimum without a Python loop over thousands of small blocks); ``per_block=True`` solves
    them one by one (dense Hungarian for small blocks) — same optimum, used to cross-check.
    """
    tr = np.asarray(track, np.intp).reshape(-1)
    de = np.asarray(det, np.intp).reshape(-1)
    co = np.asarray(cost, np.float64).reshape(-1)
    b, dd = _as_vector(birth, n_dets), _as_vector(death, n_tracks)
    t_block, d_block, n_blocks = connected_blocks(n_tracks, n_dets, tr, de)
    nt_b = np.bincount(t_block, minlength=n_blocks)
    nd_b = np.bincount(d_block, minlength=n_blocks)
    e_block = t_block[tr]

    # 1 track + 1 detection: link iff cheaper than death + birth.
    simple = (nt_b == 1) & (nd_b == 1)
    e_simple = simple[e_block]
    take = co[e_simple] < dd[tr[e_simple]] + b[de[e_simple]]
    t_parts = [tr[e_simple][take]]
    d_parts = [de[e_simple][take]]

    hard = np.flatnonzero((nt_b >= 1) & (nd_b >= 1) & ~simple)
    if len(hard) and per_block:
        t_sub, d_sub = _solve_blocks(hard, t_block, d_block, e_block, tr, de, co, b, dd)
        t_parts += t_sub
        d_parts += d_sub
    elif len(hard):
        t_sub1, d_sub1 = _solve_joint(~e_simple, t_block, d_block, hard, tr, de, co, b, dd)
        t_parts.append(t_sub1)
        d_parts.append(d_sub1)
    t_match = np.concatenate(t_parts).astype(np.intp)
    d_match = np.concatenate(d_parts).astype(np.intp)
    link_cost = _pair_costs(tr, de, co, t_match, d_match, n_dets)
    return _assignment(n_tracks, n_dets, t_match, d_match, link_cost, b, dd)


def _pair_costs(
    tr: IndexArray,
    de: IndexArray,
    co: FloatArray,
    t_query: IndexArray,
    d_query: IndexArray,
    n_dets: int,
) -> FloatArray:
    """Cost of each queried (track, det) pair, looked up by a sorted linear key."""
    if len(t_query) == 0:
        return np.zeros(0, np.float64)
    key = tr.astype(np.int64) * max(n_dets, 1) + de
    order = np.argsort(key, kind="stable")
    q = t_query.astype(np.int64) * max(n_dets, 1) + d_query
    pos = np.searchsorted(key[order], q)
    return co[order[pos]]


def _solve_blocks(
    blocks: IndexArray,
    t_block: IndexArray,
    d_block: IndexArray,
    e_block: IndexArray,
    tr: IndexArray,
    de: IndexArray,
    co: FloatArray,
    birth: FloatArray,
    death: FloatArray,
) -> tuple[list[IndexArray], list[IndexArray]]:
    """Solve each listed block on its own and map local indices back to global ones."""
    n_blocks = int(max(t_block.max(initial=-1), d_block.max(initial=-1))) + 1
    t_groups = _group(t_block, n_blocks)
    d_groups = _group(d_block, n_blocks)
    e_groups = _group(e_block, n_blocks)
    local_t = np.empty(len(t_block), np.intp)
    local_d = np.empty(len(d_block), np.intp)
    t_out: list[IndexArray] = []
    d_out: list[IndexArray] = []
    for blk in blocks:
        ts, ds, es = t_groups[blk], d_groups[blk], e_groups[blk]
        local_t[ts] = np.arange(len(ts))
        local_d[ds] = np.arange(len(ds))
        lt, ld = local_t[tr[es]], local_d[de[es]]
        if len(ts) + len(ds) <= DENSE_BLOCK_LIMIT:
            a = np.full((len(ts), len(ds)), np.inf)
            a[lt, ld] = co[es]
            mt, md = _solve_dense_block(a, birth[ds], death[ts])
        else:
            mt, md = _solve_sparse_block(len(ts), len(ds), lt, ld, co[es], birth[ds], death[ts])
        t_out.append(ts[mt])
        d_out.append(ds[md])
    return t_out, d_out


def _solve_joint(
    edge_mask: NDArray[np.bool_],
    t_block: IndexArray,
    d_block: IndexArray,
    blocks: IndexArray,
    tr: IndexArray,
    de: IndexArray,
    co: FloatArray,
    birth: FloatArray,
    death: FloatArray,
) -> tuple[IndexArray, IndexArray]:
    """Solve the union of ``blocks`` (whose edges are ``edge_mask``) in one sparse call."""
    in_hard = np.zeros(int(max(t_block.max(initial=-1), d_block.max(initial=-1))) + 1, bool)
    in_hard[blocks] = True
    ts = np.flatnonzero(in_hard[t_block])
    ds = np.flatnonzero(in_hard[d_block])
    local_t = np.full(len(t_block), -1, np.intp)
    local_d = np.full(len(d_block), -1, np.intp)
    local_t[ts] = np.arange(len(ts))
    local_d[ds] = np.arange(len(ds))
    lt, ld = local_t[tr[edge_mask]], local_d[de[edge_mask]]
    mt, md = _solve_sparse_block(len(ts), len(ds), lt, ld, co[edge_mask], birth[ds], death[ts])
    return ts[mt].astype(np.intp), ds[md].astype(np.intp)


def _group(labels: IndexArray, n_groups: int) -> list[IndexArray]:
    """Indices of each label value, in increasing index order (one stable sort)."""
    order = np.argsort(labels, kind="stable").astype(np.intp)
    bounds = np.searchsorted(labels[order], np.arange(n_groups + 1))
    return [order[bounds[i] : bounds[i + 1]] for i in range(n_groups)]


def _best_per_pair(
    p: NDArray[Any], c: NDArray[Any], s: FloatArray, cap: IndexArray
) -> tuple[NDArray[Any], NDArray[Any], FloatArray, IndexArray]:
    """Keep the highest-scoring row of each (parent, child) pair."""
    order = np.lexsort((-s, c, p))
    p, c, s, cap = p[order], c[order], s[order], cap[order]
    first = np.ones(len(p), bool)
    first[1:] = (p[1:] != p[:-1]) | (c[1:] != c[:-1])
    return p[first], c[first], s[first], cap[first]


def select_parents(
    parent: ArrayLike,
    child: ArrayLike,
    score: ArrayLike,
    threshold: float,
    capacity: ArrayLike = 2,
) -> tuple[IndexArray, IndexArray, FloatArray]:
    """Choose mother-daughter links among scored candidate pairs.

    ``parent``, ``child``, ``score`` are parallel (P,) arrays (ids of any integer kind);
    ``capacity`` is the number of daughters each candidate pair's parent may still take
    (scalar, or per pair — pairs of one parent must agree). Each child gets at most one
    parent, each parent at most ``capacity`` children, only pairs with ``score >=
    threshold`` qualify, and the total score of the chosen links is maximised (one sparse LAP
    over children × parent slots, each child with its own "no parent" slot). Returns the chosen
    (parent, child, score), sorted by child.
    """
    p = np.asarray(parent).reshape(-1)
    c = np.asarray(child).reshape(-1)
    s = np.asarray(score, np.float64).reshape(-1)
    cap = np.broadcast_to(np.asarray(capacity, np.intp), p.shape)
    ok = (s >= threshold) & (cap > 0)
    p, c, s, cap = p[ok], c[ok], s[ok], cap[ok]
    p, c, s, cap = _best_per_pair(p, c, s, cap)
    if len(p) == 0:
        return p.astype(np.intp), c.astype(np.intp), s
    parents, p_idx = np.unique(p, return_inverse=True)
    children, c_idx = np.unique(c, return_inverse=True)
    p_cap = np.zeros(len(parents), np.intp)
    p_cap[p_idx] = cap
    slot_start = np.concatenate([[0], np.cumsum(p_cap)]).astype(np.intp)
    n_slots, n_child = int(slot_start[-1]), len(children)
    # Sparse children × (parent slots + one "no parent" slot per child). Weights are
    # shifted to be positive (LAPJVsp needs non-zero weights); every child is matched
    # exactly once, so the shift is the same for all solutions.
    shift = 1.0 + float(s.max(initial=0.0))
    rows_l, cols_l, vals_l = [], [], []
    for k in range(int(p_cap.max())):
        has_slot = p_cap[p_idx] > k
        rows_l.append(c_idx[has_slot])
        cols_l.append(slot_start[p_idx[has_slot]] + k)
        vals_l.append(shift - s[has_slot])
    rows_l.append(np.arange(n_child))
    cols_l.append(n_slots + np.arange(n_child))
    vals_l.append(np.full(n_child, shift))
    mat = sparse.coo_matrix(
        (np.concatenate(vals_l), (np.concatenate(rows_l), np.concatenate(cols_l))),
        shape=(n_child, n_slots + n_child),
    ).tocsr()  # duplicate (parent, child) pairs would be summed: they are removed above
    rows, cols = min_weight_full_bipartite_matching(mat)
    linked = cols < n_slots
    rows, cols = rows[linked], cols[linked]
    slot_parent = np.repeat(np.arange(len(parents)), p_cap)
    chosen_p = slot_parent[cols]
    chosen_s = shift - np.asarray(mat[rows, cols]).reshape(-1)
    return parents[chosen_p], children[rows], chosen_s
