"""The learned (LSTM) tracker: features, model, online tracking, restore from the store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from livetrack.config import TrackConfig
from livetrack.errors import BadFrame, ConfigError
from livetrack.store import Store
from livetrack.track.base import FrameHistory, TrackStep
from livetrack.track.factory import make_tracker
from livetrack.track.features import (
    CROP,
    background_level,
    frame_features,
    neighbour_edges,
    reduce_frame,
    reduction_factor,
)
from livetrack.track.fixed import fixed_tracker
from livetrack.track.lstm import (
    DEFAULT_MODEL,
    LearnedFrame,
    LearnedScorer,
    combine_division_cues,
    division_posterior,
    encode_frame,
    lstm_tracker,
    partner_features,
    rescaled,
    trained_min_diameter,
)
from livetrack.track.model import (
    N_GEOM,
    TRAINED_DIAMETERS_PX,
    TrackNet,
    TrackNetConfig,
    load_tracknet,
    save_tracknet,
)
from livetrack.track.online import DivisionScores, OnlineTracker, OpenTracks
from livetrack.types import Detections
from tests.conftest import integer_frames
from tests.test_tracker import _records  # the track table a store would hold after some steps

SHAPE = (160, 160)
R = 7.0  # disc radius (px)


Cell = tuple[float, ...]
"""(y, x, radius) or (y, x, radius, brightness factor)."""


def render(cells: list[Cell]) -> tuple[np.ndarray, np.ndarray]:
    """Image and label image of discs; label = position in the list + 1."""
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    mask = np.zeros(SHAPE, np.int32)
    gain = np.ones(len(cells) + 1)
    for k, (y, x, r, *b) in enumerate(cells, start=1):
        mask[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = k
        gain[k] = b[0] if b else 1.0
    rng = np.random.default_rng(len(cells))
    signal = (180.0 + 20 * np.sin(xx / 3.0)) * gain[mask]
    image = np.where(mask > 0, signal, 20.0) + rng.normal(0, 3, SHAPE)
    return image.astype(np.float32), mask


def step(tr: OnlineTracker, t: int, cells: list[Cell], *, labels_given: bool = False) -> TrackStep:
    image, mask = render(cells)
    return tr.step(t, Detections.from_labels(mask), image, mask, labels_given=labels_given)


# ---------------------------------------------------------------------- features


def test_features_of_a_disc_and_an_ellipse() -> None:
    yy, xx = np.mgrid[:100, :100]
    mask = np.zeros((100, 100), np.int32)
    mask[(yy - 30) ** 2 + (xx - 30) ** 2 <= 100] = 1  # disc, r = 10
    mask[((yy - 70) / 6.0) ** 2 + ((xx - 60) / 15.0) ** 2 <= 1] = 2  # ellipse 6 × 15
    image = np.where(mask > 0, 100.0 + yy, 5.0).astype(np.float32)
    det = Detections.from_labels(mask)
    f = frame_features(image, mask, det, diameter=20.0)
    assert f.crops.shape == (2, 2, CROP, CROP)
    assert f.morph.shape == (2, 4)
    area_d2, perim_d, ecc, bright = f.morph.T
    assert area_d2[0] == pytest.approx(np.pi / 4, rel=0.05)  # disc of diameter d
    assert perim_d[0] == pytest.approx(np.pi, rel=0.25)  # pixel-counted perimeter
    assert ecc[0] < 0.2
    assert ecc[1] == pytest.approx(np.sqrt(1 - (6 / 15) ** 2), abs=0.05)
    assert bright[1] > bright[0]  # the ellipse sits lower in the y-ramp: brighter
    inside = f.crops[:, 1] > 0
    z = f.crops[:, 0]
    assert inside[0].mean() > 0.4  # crop of 1.25 d: the disc fills most of it
    assert np.all(z[~inside] == 0)
    assert abs(float(z[0][inside[0]].mean())) < 0.3  # z-scored inside the mask
    assert f.edges.shape == (2, 2)  # the two objects are neighbours (within 4 d), both ways


def test_neighbour_edges_respect_the_radius() -> None:
    pts = np.array([[0.0, 0.0], [0.0, 3.0], [0.0, 10.0]])
    e = neighbour_edges(pts, 5.0)
    assert {tuple(p) for p in e.T.tolist()} == {(0, 1), (1, 0)}
    assert neighbour_edges(pts[:1], 5.0).shape == (2, 0)


def test_the_background_level_is_numpys_percentile_to_the_last_bit() -> None:
    """The histogram shortcut for integer frames gives what ``np.percentile(frame as
    float32, 5)`` gives, on every kind of integer frame and size (and floats pass through)."""
    for frame in integer_frames(4, 300, 120):
        assert background_level(frame) == float(np.percentile(frame.astype(np.float32), 5))
    floats = np.random.default_rng(4).normal(100, 10, (50, 60))
    assert background_level(floats) == float(np.percentile(floats.astype(np.float32), 5))


def test_a_frame_is_reduced_by_block_means_and_block_centre_labels() -> None:
    assert [reduction_factor(d, 28.0) for d in (20, 28, 29, 56, 57)] == [1, 1, 2, 2, 3]
    assert reduction_factor(200.0, None) == reduction_factor(200.0, 0.0) == 1
    image = np.arange(7 * 9, dtype=np.uint16).reshape(7, 9)
    mask = np.arange(7 * 9, dtype=np.int32).reshape(7, 9)
    small, lab = reduce_frame(image, mask, 3)
    assert small.shape == lab.shape == (2, 3)  # the partial block at the edges left out
    assert small[1, 2] == pytest.approx(image[3:6, 6:9].mean())
    assert lab[1, 2] == mask[4, 7]  # the centre of that block


def test_features_of_large_nuclei_on_the_reduced_frame_match_the_full_frame() -> None:
    """Discs of 40 px: reduced by 2, the shape numbers and crops are close to the full
    frame's, the centroids and neighbour pairs identical; small nuclei are untouched."""
    yy, xx = np.mgrid[:240, :240]
    mask = np.zeros((240, 240), np.int32)
    for k, (y, x) in enumerate([(50, 50), (60, 130), (150, 80), (170, 180)], start=1):
        mask[(yy - y) ** 2 + ((xx - x) / (1 + 0.2 * k)) ** 2 <= 20**2] = k
    rng = np.random.default_rng(0)
    image = np.where(mask > 0, 300.0 + 2 * (xx % 17), 40.0) + rng.normal(0, 5, mask.shape)
    image = image.astype(np.uint16)
    det = Detections.from_labels(mask)
    full = frame_features(image, mask, det, 40.0)
    reduced = frame_features(image, mask, det, 40.0, max_diameter_px=28.0)
    np.testing.assert_array_equal(reduced.centroids, full.centroids)
    np.testing.assert_array_equal(reduced.edges, full.edges)
    np.testing.assert_allclose(reduced.morph[:, [0, 2, 3]], full.morph[:, [0, 2, 3]], atol=0.03)
    np.testing.assert_allclose(reduced.morph[:, 1], full.morph[:, 1], rtol=0.08)  # perimeter
    assert (reduced.crops[:, 1] == full.crops[:, 1]).mean() > 0.95
    assert np.abs(reduced.crops[:, 0] - full.crops[:, 0]).mean() < 0.3
    small = frame_features(image, mask, det, 20.0, max_diameter_px=28.0)
    same = frame_features(image, mask, det, 20.0)
    np.testing.assert_array_equal(small.crops, same.crops)
    np.testing.assert_array_equal(small.morph, same.morph)


def test_the_tracker_computes_features_on_the_reduced_frame_when_told() -> None:
    """``feature_max_diameter_px``: large nuclei get other embeddings (the reduced frame's),
    small ones the same as at full resolution."""
    cells_small: list[Cell] = [(40, 40, R), (100, 60, R), (60, 120, R)]
    cells_large: list[Cell] = [(45, 45, 20.0), (110, 110, 22.0)]
    for cells, differ in ((cells_small, False), (cells_large, True)):
        out = []
        for limit in (0.0, 28.0):
            tr = make_tracker(TrackConfig(feature_max_diameter_px=limit), SHAPE)
            out.append(step(tr, 0, cells).embeddings)
        assert out[0] is not None
        assert out[1] is not None
        assert (not np.array_equal(out[0], out[1])) is differ


def test_features_reject_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        frame_features(np.zeros((5, 5)), np.zeros((5, 6), np.int32), Detections.empty(), 3.0)


# ---------------------------------------------------------------------- model


def tiny_model(seed: int = 0) -> TrackNet:
    torch.manual_seed(seed)
    return TrackNet(TrackNetConfig(embed_dim=16, hidden=16, disp_hidden=8)).eval()


def test_tiny_seeded_model_gives_valid_probabilities_deterministically() -> None:
    a, b = tiny_model(3), tiny_model(3)
    tr_a = lstm_tracker(TrackConfig(), SHAPE, a, link_threshold=0.2, division_threshold=0.5)
    tr_b = lstm_tracker(TrackConfig(), SHAPE, b, link_threshold=0.2, division_threshold=0.5)
    cells = [(40.0, 40.0, R), (40.0, 80.0, R), (100.0, 60.0, R)]
    for t in range(3):
        moved = [(y + t, x + t, r) for y, x, r in cells]
        sa, sb = step(tr_a, t, moved), step(tr_b, t, moved)
        assert np.array_equal(sa.track_ids, sb.track_ids)
    # The next frame's scores, asked of each tracker's scorer directly.
    image, mask = render([(y + 3, x + 3, r) for y, x, r in cells])
    dets = Detections.from_labels(mask)
    fa, fb = (
        tr.scorer.score(3, tr.open_tracks, dets, 2.0 * R, SHAPE, image, mask, None)
        for tr in (tr_a, tr_b)
    )
    assert isinstance(fa, LearnedFrame)
    assert isinstance(fb, LearnedFrame)
    prob = fa.prob
    assert prob.shape[1] == 3
    assert len(prob) >= 3
    assert np.all((prob >= 0) & (prob <= 1))
    assert np.allclose(prob.sum(axis=1), 1.0)
    assert np.array_equal(prob, fb.prob)
    assert sa.embeddings is not None
    assert sa.embeddings.shape == (3, 16)


def test_the_head_by_parts_gives_the_heads_logits() -> None:
    """The run-time head (first layer's work once per track and once per detection) gives
    the training head's logits on every (track, detection) pair, to float32 rounding."""
    from livetrack.models import SHIPPED_TRACK_MODEL

    shipped, _ = load_tracknet(SHIPPED_TRACK_MODEL)
    for model in (tiny_model(5), shipped):
        cfg = model.config
        gen = torch.Generator().manual_seed(2)
        t, n, p = 9, 13, 40
        summary = torch.randn(t, cfg.hidden + cfg.disp_hidden, generator=gen)
        last = torch.randn(t, cfg.embed_dim, generator=gen)
        emb = torch.randn(n, cfg.embed_dim, generator=gen)
        track = torch.randint(0, t, (p,), generator=gen)
        det = torch.randint(0, n, (p,), generator=gen)
        geom = torch.randn(p, N_GEOM, generator=gen)
        with torch.inference_mode():
            full = model.pair_logits(summary[track], last[track], emb[det], geom)
            parts = model.pair_logits_by_parts(summary, last, emb, track, det, geom)
        assert parts.shape == (p, 3)
        torch.testing.assert_close(parts, full, rtol=0, atol=1e-4)


def test_model_save_load_round_trip(tmp_path: Path) -> None:
    m = tiny_model(1)
    save_tracknet(m, tmp_path / "m", {"thresholds": {"link": 0.3, "division": 0.6}})
    loaded, meta = load_tracknet(tmp_path / "m")
    assert meta["thresholds"] == {"link": 0.3, "division": 0.6}
    image, mask = render([(50.0, 50.0, R), (60.0, 70.0, R)])
    f = frame_features(image, mask, Detections.from_labels(mask), 14.0)
    a, b = encode_frame(m, f), encode_frame(loaded, f)
    assert np.allclose(a, b, atol=2e-2)  # weights are stored in float16


def test_load_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load tracking model"):
        load_tracknet(tmp_path / "missing")


def test_lstm_tracker_needs_the_image() -> None:
    tr = lstm_tracker(
        TrackConfig(), SHAPE, tiny_model(), link_threshold=0.5, division_threshold=0.5
    )
    _, mask = render([(50.0, 50.0, R)])
    with pytest.raises(BadFrame, match="needs the frame's image"):
        tr.step(0, Detections.from_labels(mask))


# ---------------------------------------------------------------------- shipped model


@pytest.fixture(scope="module")
def shipped() -> LearnedScorer:
    tr = make_tracker(TrackConfig(method="lstm"), SHAPE)
    assert isinstance(tr.scorer, LearnedScorer)
    return tr.scorer


def fresh() -> OnlineTracker:
    tr = make_tracker(TrackConfig(method="lstm"), SHAPE)
    assert isinstance(tr.scorer, LearnedScorer)
    return tr


def test_shipped_model_has_validated_thresholds(shipped: LearnedScorer) -> None:
    _, meta = load_tracknet(DEFAULT_MODEL)
    assert set(meta["thresholds"]) == {"link", "division"}
    assert shipped.link_threshold == meta["thresholds"]["link"]
    assert shipped.division_threshold == meta["thresholds"]["division"]


def _neighbours(t: int) -> list[Cell]:
    return [(30.0 + t, 130.0, R), (130.0, 30.0 + t, R), (130.0, 130.0 - t, R)]


def test_hand_built_division_is_detected() -> None:
    tr = fresh()
    steps = []
    # A mother drifting right, grown to twice a daughter's area, rounding up and brightening
    # in the two frames before it divides (as nuclei do in mitosis); then two daughters of
    # about half its area, one on each side of its last position, moving apart.
    for t in range(8):
        mitotic = t >= 6
        mother: Cell = (70.0, 50.0 + 1.5 * t, 8.0 if mitotic else 9.5, 1.6 if mitotic else 1.0)
        steps.append(step(tr, t, [mother, *_neighbours(t)]))
    mother_id = int(steps[-1].track_ids[0])
    x = 50.0 + 1.5 * 7
    for t in range(8, 12):
        k = t - 7
        kids: list[Cell] = [(70.0 - 3 - 2 * k, x, 6.7, 1.3), (70.0 + 3 + 2 * k, x, 6.7, 1.3)]
        steps.append(step(tr, t, [*kids, *_neighbours(t)]))
    divisions = [e for s in steps for e in s.events if e.kind == "division"]
    assert len(divisions) == 1
    ev = divisions[0]
    assert ev.frame == 8
    assert ev.track_id == mother_id
    assert set(ev.daughters) == set(steps[8].track_ids[:2].tolist())
    assert len(set(steps[8].track_ids[:2].tolist())) == 2
    # the daughters keep their ids afterwards
    assert steps[11].track_ids[:2].tolist() == steps[8].track_ids[:2].tolist()


@pytest.mark.parametrize(
    ("newborn", "divides"),
    [((0.02, 0.03, 0.95), True), ((0.02, 0.90, 0.08), False)],
)
def test_division_when_one_daughter_was_taken_for_the_mother(
    newborn: tuple[float, float, float], divides: bool
) -> None:
    # The classifier half takes daughter 1 for the mother itself (p_same 0.5, p_parent 0.4:
    # the assignment links it) and is sure daughter 2 is the mother's daughter (0.95):
    # a division, although daughter 1's p_parent alone is below the threshold 0.6.
    # If daughter 2 is just another cell (p_parent 0.08), no division.
    probs = {1: (0.5, 0.1, 0.4), 2: newborn}
    cfg = TrackConfig(division_cues="learned")
    tr = fixed_tracker(cfg, SHAPE, probs, link_threshold=0.1, division_threshold=0.6)
    mother = step(tr, 0, [(80.0, 80.0, 9.0)])
    s = step(tr, 1, [(80.0, 73.0, 6.5), (80.0, 87.0, 6.5)])
    divisions = [e for e in s.events if e.kind == "division"]
    assert len(divisions) == int(divides)
    if divides:
        assert divisions[0].track_id == int(mother.track_ids[0])
        assert set(divisions[0].daughters) == set(s.track_ids.tolist())
        assert int(mother.track_ids[0]) not in s.track_ids.tolist()
    else:
        assert int(s.track_ids[0]) == int(mother.track_ids[0])


@pytest.mark.parametrize(
    ("cues", "sister", "divides"),
    [
        # A hesitant model (posterior 0.44 < 0.6) carried over its threshold by clear
        # geometry (daughters symmetric about the mother, about half her area each).
        ("learned", (0.3, 0.2, 0.5), False),
        ("both", (0.3, 0.2, 0.5), True),
        # The same geometry with a sister the model is sure is NOT a daughter (a nucleus
        # split by the segmentation looks just as symmetric): geometry alone takes it,
        # the joint decision does not.
        ("geometry", (0.3, 0.69, 0.01), True),
        ("both", (0.3, 0.69, 0.01), False),
    ],
)
def test_the_sister_pair_is_decided_by_both_cues(
    cues: str, sister: tuple[float, float, float], divides: bool
) -> None:
    probs = {1: (0.5, 0.1, 0.4), 2: sister}
    cfg = TrackConfig(division_cues=cues)  # type: ignore[arg-type]
    tr = fixed_tracker(cfg, SHAPE, probs, link_threshold=0.1, division_threshold=0.6)
    mother = step(tr, 0, [(80.0, 80.0, 9.0)])
    s = step(tr, 1, [(80.0, 73.0, 6.5), (80.0, 87.0, 6.5)])
    divisions = [e for e in s.events if e.kind == "division"]
    assert len(divisions) == int(divides)
    if divides:
        assert divisions[0].track_id == int(mother.track_ids[0])
        assert set(divisions[0].daughters) == set(s.track_ids.tolist())
    else:
        assert int(s.track_ids[0]) == int(mother.track_ids[0])  # daughter 1 continues her


def test_combined_division_score_is_the_mean_on_each_cues_own_scale() -> None:
    learned = DivisionScores(np.array([0, 0, 1]), np.array([3, 4, 3]), np.array([0.7, 0.35, 1.0]))
    geometric = DivisionScores(np.array([0, 2]), np.array([3, 5]), np.array([0.5, 0.75]))
    both = combine_division_cues(rescaled(learned, 0.7), rescaled(geometric, 0.5))
    got = {
        (int(m), int(c)): float(v)
        for m, c, v in zip(both.mother, both.child, both.score, strict=True)
    }
    assert got == pytest.approx(
        {
            (0, 3): 0.5,  # each cue exactly at its own threshold: at the joint threshold
            (0, 4): 0.125,  # learned only (half its threshold), geometry did not score it
            (1, 3): 0.5,  # a certain model alone reaches the threshold
            (2, 5): 0.375,  # geometry alone (0.75 on its scale) does not
        }
    )


def test_the_geometry_weight_shifts_the_joint_decision_towards_geometry() -> None:
    learned = DivisionScores(np.array([0, 1]), np.array([3, 3]), np.array([0.1, 0.9]))
    geometric = DivisionScores(np.array([0, 1]), np.array([3, 3]), np.array([0.9, 0.1]))
    for weight, expected in [(0.5, [0.5, 0.5]), (0.7, [0.66, 0.34]), (1.0, [0.9, 0.1])]:
        both = combine_division_cues(learned, geometric, weight)
        assert both.score == pytest.approx(expected)
    # A pair only one cue scored keeps that cue's share alone.
    lone = combine_division_cues(learned, DivisionScores.none(), 0.7)
    assert lone.score == pytest.approx([0.03, 0.27])


def test_a_geometry_weight_lets_clear_geometry_overrule_a_hesitant_model() -> None:
    # The model sees nothing of a division (p_parent 0.05 for both daughters, which sit
    # symmetrically about the mother at half her size): the plain mean leaves the mother
    # continuing, a geometry weight of 0.8 divides her.
    probs = {1: (0.5, 0.45, 0.05), 2: (0.3, 0.65, 0.05)}
    outcomes = []
    for weight in (0.5, 0.8):
        cfg = TrackConfig(division_cues="both", division_geometry_weight=weight)
        tr = fixed_tracker(cfg, SHAPE, probs, link_threshold=0.1, division_threshold=0.6)
        step(tr, 0, [(80.0, 80.0, 9.0)])
        s = step(tr, 1, [(80.0, 73.0, 6.5), (80.0, 87.0, 6.5)])
        outcomes.append(sum(e.kind == "division" for e in s.events))
    assert outcomes == [0, 1]


@pytest.mark.parametrize("labels_given", [False, True])
def test_by_default_clear_geometry_carries_a_division_only_on_given_labels(
    labels_given: bool,
) -> None:
    # Same scene as above with the default weight: on frames livetrack segmented, the
    # model's doubt keeps the mother (a split nucleus looks just as symmetric); on given
    # label images (tracking only) the geometry decides.
    probs = {1: (0.5, 0.45, 0.05), 2: (0.3, 0.65, 0.05)}
    cfg = TrackConfig(division_cues="both")
    assert cfg.geometry_weight(labels_given) == (0.7 if labels_given else 0.5)
    tr = fixed_tracker(cfg, SHAPE, probs, link_threshold=0.1, division_threshold=0.6)
    step(tr, 0, [(80.0, 80.0, 9.0)], labels_given=labels_given)
    s = step(tr, 1, [(80.0, 73.0, 6.5), (80.0, 87.0, 6.5)], labels_given=labels_given)
    assert sum(e.kind == "division" for e in s.events) == int(labels_given)


@pytest.mark.parametrize("small_weight", [0.7, None])
def test_below_the_trained_sizes_clear_geometry_carries_a_division_on_own_masks(
    small_weight: float | None,
) -> None:
    # The scene above at half the size (a length unit of ~7 px, below the 12 px the model
    # was trained on): the model's doubt no longer keeps the mother on livetrack's own
    # segmentation, unless the rule is switched off (None).
    probs = {1: (0.5, 0.45, 0.05), 2: (0.3, 0.65, 0.05)}
    cfg = TrackConfig(division_cues="both", division_geometry_weight_small=small_weight)
    tr = fixed_tracker(cfg, SHAPE, probs, link_threshold=0.1, division_threshold=0.6)
    step(tr, 0, [(80.0, 80.0, 4.5)])
    s = step(tr, 1, [(80.0, 76.5, 3.25), (80.0, 83.5, 3.25)])
    assert sum(e.kind == "division" for e in s.events) == int(small_weight is not None)


def test_the_small_share_only_ever_raises_the_geometric_share() -> None:
    cfg = TrackConfig(division_geometry_weight=0.5, division_geometry_weight_given=0.9)
    assert cfg.geometry_weight(False, smaller_than_trained=True) == 0.7
    assert cfg.geometry_weight(True, smaller_than_trained=True) == 0.9
    assert cfg.geometry_weight(False, smaller_than_trained=False) == 0.5
    for off_value in (None, 0, 0.0):  # 0: how TOML and environment variables say None
        off = TrackConfig(division_geometry_weight_small=off_value)
        assert off.division_geometry_weight_small is None
        assert off.geometry_weight(False, smaller_than_trained=True) == 0.5


def test_the_learned_scorer_knows_the_sizes_its_model_was_trained_on() -> None:
    scorer = fresh().scorer
    assert isinstance(scorer, LearnedScorer)
    # The shipped model's config.json predates train.diameters_px: the training range.
    assert scorer.min_trained_diameter_px == TRAINED_DIAMETERS_PX[0] == 12.0
    assert trained_min_diameter({"train": {"diameters_px": [20, 80]}}) == 20.0
    for bad in ("small", "20", [30, 20], [10], [float("nan"), 20], [True, 20]):
        with pytest.raises(ConfigError, match="diameters_px"):
            trained_min_diameter({"train": {"diameters_px": bad}})
    # The share reaches the joint decision: scored at a unit of 8 px and of 20 px.
    tracks = OpenTracks.empty()
    image, mask = render([(80.0, 80.0, 4.0)])
    det = Detections.from_labels(mask)
    for unit, weight in ((8.0, 0.7), (20.0, 0.5)):
        frame = scorer.score(0, tracks, det, unit, SHAPE, image, mask)
        assert frame.geometry_weight == weight


def test_a_mother_with_one_daughter_in_sight_continues() -> None:
    # The classifier is sure the only cell near the mother is her daughter (p_parent 0.95)
    # and sure it is not the mother herself (p_same 0.02: the assignment leaves the mother
    # unlinked). A division needs two daughters: the mother's track continues instead,
    # with no division event and no parent link.
    probs = {1: (0.02, 0.03, 0.95), 2: (0.98, 0.01, 0.01)}
    cfg = TrackConfig(division_cues="learned")
    tr = fixed_tracker(cfg, SHAPE, probs, link_threshold=0.1, division_threshold=0.6)
    first = step(tr, 0, [(80.0, 80.0, 9.0), (20.0, 20.0, 7.0)])
    s = step(tr, 1, [(80.0, 92.0, 6.5), (20.0, 20.0, 7.0)])
    assert [e.kind for e in s.events] == []
    assert [(t.track_id, t.parent_id) for t in s.started] == []
    assert s.ended == []
    assert s.track_ids.tolist() == first.track_ids.tolist()


def test_division_posterior_weighs_both_daughters() -> None:
    p_new = np.array([0.97, 0.3, 0.95, 0.95, 0.0])
    p_linked_parent = np.array([0.34, 0.1, 0.4, 0.0, 0.0])
    p_linked_same = np.array([0.6, 0.9, 0.5, 0.9, 0.0])
    post = division_posterior(p_new, p_linked_parent, p_linked_same)
    assert post[0] > 0.9  # sure sister, hesitant link: a division
    assert post[1] < 0.05  # neither looks like a daughter
    assert post[2] == pytest.approx(0.4 * 0.95 / (0.4 * 0.95 + 0.5 * 0.05))
    assert post[3] == 0.0  # the linked cell cannot be a daughter: no division
    assert post[4] == 0.0  # nothing scored
    assert np.all((post >= 0) & (post <= 1))


def test_cell_missing_one_frame_is_relinked() -> None:
    tr = fresh()
    ids = []
    for t in range(10):
        cells = _neighbours(t)
        if t != 5:  # the moving cell is not detected in frame 5
            cells = [(70.0, 40.0 + 2.0 * t, R), *cells]
        s = step(tr, t, cells)
        if t != 5:
            ids.append(int(s.track_ids[0]))
    assert len(set(ids)) == 1
    assert not any(e.kind == "division" for e in s.events)


def _movie(n: int) -> list[list[Cell]]:
    rng = np.random.default_rng(5)
    pos = rng.uniform(20, 140, (12, 2))
    out = []
    for t in range(n):
        pos = np.clip(pos + rng.normal(0, 1.5, pos.shape), 10, 150)
        keep = [i for i in range(len(pos)) if not (t % 7 == 3 and i == t % len(pos))]
        out.append([(float(pos[i, 0]), float(pos[i, 1]), R) for i in keep])
    return out


def test_state_survives_a_restart_through_the_store(tmp_path: Path) -> None:
    movie = _movie(20)
    straight_tr = fresh()
    straight = [step(straight_tr, t, c) for t, c in enumerate(movie)]
    k = 12
    store = Store(tmp_path / "lt.db")
    store.begin_run("r", source="test", config={})
    head_tr = fresh()
    for t in range(k):
        image, mask = render(movie[t])
        det = Detections.from_labels(mask)
        s = head_tr.step(t, det, image, mask)
        store.write_frame("r", "p", t, timestamp=float(t), mask=mask, detections=det, step=s)
    restored = fresh()
    history = store.history("r", "p", restored.history_window)
    assert all(h.embeddings is not None for h in history)
    restored.restore(history, store.tracks("r", "p"))
    store.close()
    for t in range(k, len(movie)):
        s = step(restored, t, movie[t])
        assert s.track_ids.tolist() == straight[t].track_ids.tolist(), t
        assert s.events == straight[t].events


def test_restore_without_embeddings_still_tracks() -> None:
    movie = _movie(10)
    tr = fresh()
    steps = [step(tr, t, c) for t, c in enumerate(movie[:6])]
    hist = []
    for t, s in enumerate(steps):
        _, mask = render(movie[t])
        hist.append(FrameHistory(t, Detections.from_labels(mask), s.track_ids, None))
    again = fresh()
    again.restore(hist, _records(steps))
    s = step(again, 6, movie[6])
    assert len(s.track_ids) == len(movie[6])
    assert len(set(s.track_ids.tolist()) & set(steps[-1].track_ids.tolist())) >= 8


# ---------------------------------------------------------------------- training


def test_perturb_mask_splits_and_merges_with_fragment_ids() -> None:
    from livetrack.training.track import perturb_mask

    cells = [(30.0 + 20 * i, 40.0 + 13 * j, R) for i in range(6) for j in range(2)]
    _, mask = render(cells)
    counter = [0]
    out, id_of = perturb_mask(mask, np.random.default_rng(1), 0.3, 14.0, counter)
    assert np.array_equal(out > 0, mask > 0)  # no pixel gained or lost
    assert len(id_of) == counter[0] > 0  # splits happened, each fragment has its own id
    assert all(v < 0 for v in id_of.values())
    before = set(np.unique(mask)) - {0}
    after = set(np.unique(out)) - {0}
    merged = before - after
    assert merged  # at least one nucleus was absorbed by a neighbour


def test_tiny_training_run_is_reproducible(tmp_path: Path) -> None:
    from livetrack.training.track import DIVISION_GRID, LINK_GRID, TrackTrainConfig, train

    cfg = TrackTrainConfig(
        steps=3,
        batch=2,
        sim_movies=2,
        val_movies=1,
        frames=6,
        model=TrackNetConfig(embed_dim=8, hidden=8, disp_hidden=4),
    )
    a = train(cfg, tmp_path / "a")
    b = train(cfg, tmp_path / "b")
    assert a["thresholds"] == b["thresholds"]
    assert a["thresholds"]["link"] in LINK_GRID  # type: ignore[index]
    assert a["thresholds"]["division"] in DIVISION_GRID  # type: ignore[index]
    wa = torch.load(tmp_path / "a" / "weights.pt", weights_only=True)
    wb = torch.load(tmp_path / "b" / "weights.pt", weights_only=True)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    model, meta = load_tracknet(tmp_path / "a")
    assert meta["train"]["seed"] == 0
    assert model.config.embed_dim == 8


def test_ctc_sequence_becomes_a_training_movie_with_its_lineage(tmp_path: Path) -> None:
    from livetrack.simulators.nuclei import SimulationConfig, write_ctc

    from livetrack.training.segment import CtcSource
    from livetrack.training.track import ctc_movie, simulate_movie

    sim = SimulationConfig(
        seed=3, n_frames=12, height=160, width=160, n_cells=8, cell_cycle_frames=6.0
    )
    seq = write_ctc(sim, tmp_path / "ctc")
    cfg = TrackNetConfig(embed_dim=8, hidden=8, disp_hidden=4)
    full = ctc_movie(CtcSource(seq), cfg, window=7)
    direct = simulate_movie(sim, cfg, 7)
    # Same frames, same identities and the same lineage as the simulator's own movie.
    assert len(full.frames) == 12
    assert [list(a) for a in full.ids] == [list(b) for b in direct.ids]
    assert full.parent == direct.parent
    assert full.parent
    assert full.division_frames == direct.division_frames
    part = ctc_movie(CtcSource(seq, 2, 7), cfg, window=7)
    assert len(part.frames) == 6
    assert [list(a) for a in part.ids] == [list(b) for b in direct.ids[2:8]]
    in_range = {d for d, m in direct.parent.items() if any(d in i for i in part.ids)}
    assert set(part.parent) <= in_range


def test_ctc_sequence_errors_name_the_problem(tmp_path: Path) -> None:
    from livetrack.simulators.nuclei import SimulationConfig, write_ctc

    from livetrack.training.segment import CtcSource
    from livetrack.training.track import ctc_movie

    cfg = TrackNetConfig(embed_dim=8, hidden=8, disp_hidden=4)
    with pytest.raises(ConfigError, match="no lineage file"):
        ctc_movie(CtcSource(tmp_path / "missing" / "01"), cfg, window=7)
    seq = write_ctc(SimulationConfig(seed=1, n_frames=4, height=96, width=96, n_cells=3), tmp_path)
    with pytest.raises(ConfigError, match="fewer than 2 frames"):
        ctc_movie(CtcSource(seq, 3, 9), cfg, window=7)
    (seq.parent / "01_GT" / "TRA" / "man_track001.tif").unlink()
    with pytest.raises(ConfigError, match="has no TRA mask"):
        ctc_movie(CtcSource(seq), cfg, window=7)


def test_tiny_training_with_a_ctc_sequence_records_it(tmp_path: Path) -> None:
    from livetrack.simulators.nuclei import SimulationConfig, write_ctc

    from livetrack.training.segment import CtcSource
    from livetrack.training.track import TrackTrainConfig, train

    seq = write_ctc(
        SimulationConfig(seed=2, n_frames=8, height=128, width=128, n_cells=6), tmp_path / "c"
    )
    cfg = TrackTrainConfig(
        steps=3,
        batch=2,
        sim_movies=1,
        val_movies=1,
        frames=6,
        ctc=(CtcSource(seq, 0, 5),),
        ctc_fraction=1.0,
        model=TrackNetConfig(embed_dim=8, hidden=8, disp_hidden=4),
    )
    info = train(cfg, tmp_path / "m")
    _, meta = load_tracknet(tmp_path / "m")
    from livetrack.evaluate.ctcfiles import lineage_digest

    digest = lineage_digest(seq)
    assert digest is not None
    assert meta["train"]["ctc"] == [
        {"path": str(seq), "first": 0, "last": 5, "lineage_sha256": digest}
    ]
    assert meta["train"]["ctc_fraction"] == 1.0
    assert info["frames"] == 6 + 6


def test_partner_features_are_those_of_a_plain_search() -> None:
    """The sister cue of each (track, candidate) pair: among the track's other candidates,
    the one whose midpoint with this one lies nearest the track's last position (the first
    in order on ties), found by a plain double loop; random pairs on an integer grid (ties
    common), tracks with one candidate, none at all."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(0, 30))
        pair_track = np.sort(rng.integers(0, max(1, n // 3 + 1), n)).astype(np.intp)
        cand = rng.integers(0, 12, (n, 2)).astype(float)
        track = rng.integers(0, 12, (n, 2)).astype(float)
        area = rng.integers(0, 40, n).astype(float)
        expected = np.zeros((n, 3), np.float32)
        expected[:, 0] = 3.0
        for i in range(n):
            others = [j for j in range(n) if j != i and pair_track[j] == pair_track[i]]
            if not others:
                continue
            asym = [np.hypot(*(0.5 * (cand[i] + cand[j]) - track[i])) / 7.0 for j in others]
            best = others[int(np.argmin(asym))]
            expected[i] = (
                min(min(asym), 3.0),
                np.log(max(area[best], 1.0) / max(area[i], 1.0)),
                1.0,
            )
        got = partner_features(pair_track, cand, track, area, 7.0)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    # NaN ranks last, as in a sort: a partner at an infinite distance beats one whose
    # midpoint is undefined; where every midpoint is undefined, the first partner.
    cand = np.array([[0.0, np.inf], [0.0, -np.inf], [1.0, 1.0]])
    with np.errstate(invalid="ignore"):  # inf − inf
        got = partner_features(
            np.zeros(3, np.intp), cand, np.zeros((3, 2)), np.array([4.0, 2, 1]), 7.0
        )
        nan = partner_features(
            np.zeros(2, np.intp), np.full((2, 2), np.nan), np.zeros((2, 2)), np.ones(2), 7.0
        )
    np.testing.assert_allclose(got[:, 0], [3.0, 3.0, 3.0])
    np.testing.assert_allclose(got[:, 1], np.log([1 / 4, 1 / 2, 4 / 1]), rtol=1e-6)
    assert np.isnan(nan[:, 0]).all()
    np.testing.assert_array_equal(nan[:, 1:], [[0.0, 1.0], [0.0, 1.0]])
