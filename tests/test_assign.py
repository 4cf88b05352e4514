"""Assignment maths on hand-written matrices and random cases (livetrack.track.assign)."""

from __future__ import annotations

import numpy as np
import pytest

from livetrack.track.assign import (
    Assignment,
    assign_dense,
    assign_sparse,
    connected_blocks,
    gate,
    select_parents,
    shadow_matrix,
)

INF = np.inf


def _pairs(a: np.ndarray) -> set[tuple[int, int]]:
    return {(int(t), int(d)) for t, d in a}


def _sparse_from_dense(
    cost: np.ndarray, birth: float, death: float, per_block: bool = False
) -> Assignment:
    t, d = np.nonzero(np.isfinite(cost))
    return assign_sparse(
        cost.shape[0], cost.shape[1], t, d, cost[t, d], birth, death, per_block=per_block
    )


def test_two_by_two_avoids_the_swap() -> None:
    cost = np.array([[0.1, 0.9], [0.8, 0.2]])
    for res in (assign_dense(cost, 1.0, 1.0), _sparse_from_dense(cost, 1.0, 1.0)):
        assert _pairs(res.matches) == {(0, 0), (1, 1)}
        assert res.total_cost == pytest.approx(0.3)
        assert len(res.unmatched_tracks) == 0
        assert len(res.unmatched_detections) == 0


def test_global_optimum_beats_greedy() -> None:
    # Greedy would take (0, 0) = 0.1 and then pay 2.0 for (1, 1); the optimum crosses.
    cost = np.array([[0.1, 0.2], [0.15, 2.0]])
    res = assign_dense(cost, 5.0, 5.0)
    assert _pairs(res.matches) == {(0, 1), (1, 0)}
    assert _pairs(_sparse_from_dense(cost, 5.0, 5.0).matches) == {(0, 1), (1, 0)}


def test_track_without_candidate_dies() -> None:
    cost = np.array([[0.3], [INF]])
    for res in (assign_dense(cost, 1.0, 1.0), _sparse_from_dense(cost, 1.0, 1.0)):
        assert _pairs(res.matches) == {(0, 0)}
        assert res.unmatched_tracks.tolist() == [1]
        assert res.unmatched_detections.tolist() == []


def test_detection_without_candidate_is_born() -> None:
    cost = np.array([[0.3, INF]])
    for res in (assign_dense(cost, 1.0, 1.0), _sparse_from_dense(cost, 1.0, 1.0)):
        assert _pairs(res.matches) == {(0, 0)}
        assert res.unmatched_detections.tolist() == [1]
        assert res.total_cost == pytest.approx(1.3)


def test_birth_and_death_cheaper_than_a_bad_match() -> None:
    cost = np.array([[2.5]])
    for res in (assign_dense(cost, 1.0, 1.0), _sparse_from_dense(cost, 1.0, 1.0)):
        assert len(res.matches) == 0
        assert res.unmatched_tracks.tolist() == [0]
        assert res.unmatched_detections.tolist() == [0]
        assert res.total_cost == pytest.approx(2.0)
    # ...but a match just under birth + death is kept.
    assert _pairs(assign_dense(np.array([[1.9]]), 1.0, 1.0).matches) == {(0, 0)}


def test_per_element_birth_and_death_costs() -> None:
    cost = np.array([[1.0, 1.0]])
    # Detection 1 is cheap to birth, so track 0 takes detection 0.
    res = assign_dense(cost, np.array([5.0, 0.1]), np.array([5.0]))
    assert _pairs(res.matches) == {(0, 0)}
    t, d = np.nonzero(np.isfinite(cost))
    res2 = assign_sparse(1, 2, t, d, cost[t, d], np.array([5.0, 0.1]), np.array([5.0]))
    assert _pairs(res2.matches) == {(0, 0)}


def test_shadow_matrix_layout() -> None:
    cost = np.array([[0.5, INF, 0.7]])
    m = shadow_matrix(cost, np.array([1.0, 2.0, 3.0]), np.array([4.0]))
    assert m.shape == (4, 4)
    big = m[0, 1]
    assert big > 0.5 + 0.7 + 1.0 + 2.0 + 3.0 + 4.0  # worse than any feasible solution
    assert m[0, 0] == 0.5
    assert m[0, 3] == 4.0  # death of track 0
    assert [m[1, 0], m[2, 1], m[3, 2]] == [1.0, 2.0, 3.0]  # birth diagonal
    assert m[1, 1] == big  # off-diagonal birth entries forbidden
    assert m[1, 3] == 0.0  # auxiliary block follows Aᵀ's pattern
    assert m[2, 3] == big


def test_empty_problems() -> None:
    res = assign_sparse(0, 3, [], [], [], 1.0, 1.0)
    assert res.unmatched_detections.tolist() == [0, 1, 2]
    assert res.matches.shape == (0, 2)
    res = assign_dense(np.zeros((2, 0)), 1.0, 1.0)
    assert res.unmatched_tracks.tolist() == [0, 1]
    res = assign_sparse(0, 0, [], [], [], 1.0, 1.0)
    assert len(res.matches) == 0


def test_gating_radius_respected() -> None:
    tracks = np.array([[0.0, 0.0], [100.0, 100.0]])
    dets = np.array([[0.0, 3.0], [0.0, 5.5], [100.0, 108.0], [50.0, 50.0]])
    cand = gate(tracks, dets, np.array([5.0, 10.0]))
    assert list(zip(cand.track.tolist(), cand.detection.tolist(), strict=True)) == [(0, 0), (1, 2)]
    assert cand.distance.tolist() == pytest.approx([3.0, 8.0])
    # Scalar radius; a detection exactly at the radius is inside.
    cand = gate(tracks, dets, 5.5)
    assert list(zip(cand.track.tolist(), cand.detection.tolist(), strict=True)) == [(0, 0), (0, 1)]
    assert len(gate(tracks, np.zeros((0, 2)), 5.0)) == 0


def test_connected_blocks() -> None:
    # tracks 0,1 share detection 1; track 2 alone with detection 2; detection 3 isolated.
    tb, db, n = connected_blocks(3, 4, np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]))
    assert n == 3  # {t0, t1, d0, d1}, {t2, d2}, {d3}
    assert tb[0] == tb[1] == db[0] == db[1]
    assert tb[2] == db[2] != tb[0]
    assert db[3] not in (tb[0], tb[2])


@pytest.mark.parametrize("seed", range(60))
def test_blocks_equal_dense_on_random_cases(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_t, n_d = int(rng.integers(0, 25)), int(rng.integers(0, 25))
    side = float(rng.uniform(20, 80))
    tp, dp = rng.uniform(0, side, (n_t, 2)), rng.uniform(0, side, (n_d, 2))
    radius = rng.uniform(3.0, 15.0, n_t)
    cand = gate(tp, dp, radius)
    cost = cand.distance / 10.0 + rng.uniform(0, 1e-3, len(cand))  # unique costs
    birth = rng.uniform(0.3, 1.0, n_d)
    death = rng.uniform(0.3, 1.0, n_t)
    dense_cost = np.full((n_t, n_d), INF)
    dense_cost[cand.track, cand.detection] = cost
    ref = assign_dense(dense_cost, birth, death)
    for per_block in (False, True):
        res = assign_sparse(
            n_t, n_d, cand.track, cand.detection, cost, birth, death, per_block=per_block
        )
        assert res.total_cost == pytest.approx(ref.total_cost, abs=1e-9)
        assert _pairs(res.matches) == _pairs(ref.matches)
        assert res.unmatched_tracks.tolist() == ref.unmatched_tracks.tolist()
        assert res.unmatched_detections.tolist() == ref.unmatched_detections.tolist()
        # Only gated pairs can be matched.
        assert _pairs(res.matches) <= set(
            zip(cand.track.tolist(), cand.detection.tolist(), strict=True)
        )


def test_large_block_is_solved_exactly() -> None:
    # A dense crowd: one giant block (> the dense-block limit) goes through LAPJVsp.
    rng = np.random.default_rng(7)
    tp = rng.uniform(0, 60, (300, 2))
    dp = tp + rng.normal(0, 1.0, tp.shape)
    cand = gate(tp, dp, 8.0)
    cost = cand.distance / 5.0
    _, _, n_blocks = connected_blocks(300, 300, cand.track, cand.detection)
    assert n_blocks < 10
    dense_cost = np.full((300, 300), INF)
    dense_cost[cand.track, cand.detection] = cost
    ref = assign_dense(dense_cost, 1.0, 1.0)
    for per_block in (False, True):
        res = assign_sparse(
            300, 300, cand.track, cand.detection, cost, 1.0, 1.0, per_block=per_block
        )
        assert res.total_cost == pytest.approx(ref.total_cost, abs=1e-9)


def test_parent_selection_capacity_and_threshold() -> None:
    # Parent 10 is the best parent of three children but may take only two.
    parent = np.array([10, 10, 10, 20, 30])
    child = np.array([1, 2, 3, 3, 4])
    score = np.array([0.9, 0.8, 0.85, 0.6, 0.3])
    p, c, s = select_parents(parent, child, score, threshold=0.5)
    chosen = dict(zip(c.tolist(), p.tolist(), strict=True))
    assert chosen == {1: 10, 2: 10, 3: 20}  # total 2.3 beats {1, 3} from 10 (1.75 + nothing)
    assert s.tolist() == pytest.approx([0.9, 0.8, 0.6])
    assert 4 not in chosen  # below threshold
    assert np.bincount(p).max() <= 2


def test_parent_selection_per_pair_capacity_and_single_parent_per_child() -> None:
    parent = np.array([5, 5, 6])
    child = np.array([1, 2, 2])
    score = np.array([0.9, 0.95, 0.7])
    p, c, _ = select_parents(parent, child, score, threshold=0.5, capacity=np.array([1, 1, 2]))
    chosen = dict(zip(c.tolist(), p.tolist(), strict=True))
    # Parent 5 may take one child: best total is 5→1 (0.9) + 6→2 (0.7).
    assert chosen == {1: 5, 2: 6}
    assert len(set(c.tolist())) == len(c)


def test_parent_selection_empty() -> None:
    p, c, s = select_parents([], [], [], threshold=0.5)
    assert len(p) == len(c) == len(s) == 0
    p, _, _ = select_parents([1], [2], [0.2], threshold=0.5)
    assert len(p) == 0


def test_parent_selection_duplicate_pairs_keep_the_best_score() -> None:
    p, c, s = select_parents([7, 7], [1, 1], [0.6, 0.9], threshold=0.5)
    assert (p.tolist(), c.tolist()) == ([7], [1])
    assert s.tolist() == pytest.approx([0.9])


@pytest.mark.parametrize("many", [False, True])
def test_gate_finds_exactly_the_pairs_within_each_tracks_radius(
    many: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against every (track, detection) distance by ``np.hypot``: the same pairs, ordered
    by track then detection, for per-track radii (a few distinct values, or more than the
    trees are queried for one by one), zero, infinite, negative and NaN radii, coincident
    points and pairs exactly at their radius."""
    import livetrack.track.assign as assign

    if many:
        monkeypatch.setattr(assign, "MAX_RADIUS_GROUPS", 1)
    rng = np.random.default_rng(3)
    for _ in range(60):
        tp = rng.integers(0, 40, (int(rng.integers(0, 25)), 2)).astype(float)
        dp = rng.integers(0, 40, (int(rng.integers(0, 25)), 2)).astype(float)
        r = rng.choice([0.0, 3.0, 5.0, 7.5], len(tp))
        if len(tp) > 3:
            r[0], r[1], r[2] = np.inf, -1.0, np.nan
        if len(tp) and len(dp):  # one pair exactly at its radius
            r[-1] = float(np.hypot(*(dp[0] - tp[-1])))
        got = gate(tp, dp, r)
        dist = np.hypot(dp[None, :, 0] - tp[:, None, 0], dp[None, :, 1] - tp[:, None, 1])
        trk, det = np.nonzero(dist <= r[:, None])  # row-major: by track, then detection
        assert np.array_equal(got.track, trk)
        assert np.array_equal(got.detection, det)
        assert np.array_equal(got.distance, dist[trk, det])
