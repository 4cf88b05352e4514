"""The nuclei simulator: determinism, CTC ground-truth consistency, realism basics."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import tifffile
from livetrack.simulators.nuclei import NucleiSimulator, SimulationConfig, write_ctc

CFG = SimulationConfig(
    seed=4,
    n_frames=30,
    height=192,
    width=160,
    n_cells=14,
    nucleus_diameter_px=18,
    cell_cycle_frames=14,
    speed_diam_per_frame=0.12,
    drift_diam_per_frame=(0.0, 0.15),  # cells drift right: some leave, some enter
    death_rate=0.01,
)


@pytest.fixture(scope="module")
def ctc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    write_ctc(CFG, out)
    return out


def read_tracks(ctc: Path) -> dict[int, tuple[int, int, int]]:
    rows = (ctc / "01_GT" / "TRA" / "man_track.txt").read_text().split("\n")
    tracks = {}
    for row in filter(None, rows):
        label, begin, end, parent = map(int, row.split())
        tracks[label] = (begin, end, parent)
    return tracks


def test_ctc_layout_and_dtypes(ctc: Path) -> None:
    frames = sorted((ctc / "01").glob("t*.tif"))
    assert [f.name for f in frames[:2]] == ["t000.tif", "t001.tif"]
    assert len(frames) == CFG.n_frames
    img = tifffile.imread(frames[0])
    assert img.dtype == np.uint16
    assert img.shape == (CFG.height, CFG.width)
    for sub in ("TRA", "SEG"):
        masks = sorted((ctc / "01_GT" / sub).glob("*.tif"))
        assert len(masks) == CFG.n_frames
        assert tifffile.imread(masks[0]).dtype == np.uint16
    with tifffile.TiffFile(frames[0]) as tif:  # pixel size in the resolution tags
        num, den = tif.pages.first.tags["XResolution"].value
        assert 1e4 / (num / den) == pytest.approx(CFG.pixel_size_um, rel=1e-3)


def test_ground_truth_obeys_ctc_rules(ctc: Path) -> None:
    tracks = read_tracks(ctc)
    present: dict[int, set[int]] = {}
    for t in range(CFG.n_frames):
        mask = tifffile.imread(ctc / "01_GT" / "TRA" / f"man_track{t:03d}.tif")
        np.testing.assert_array_equal(
            mask, tifffile.imread(ctc / "01_GT" / "SEG" / f"man_seg{t:03d}.tif")
        )
        for label in np.unique(mask)[1:]:
            present.setdefault(int(label), set()).add(t)
    assert set(present) == set(tracks)
    for label, (begin, end, parent) in tracks.items():
        # every track is present in every frame from its start to its end (no gaps)
        assert present[label] == set(range(begin, end + 1)), label
        if parent:
            assert parent in tracks
            assert tracks[parent][1] == begin - 1  # daughters start right after the mother


def test_movie_has_divisions_entries_exits_and_deaths(ctc: Path) -> None:
    tracks = read_tracks(ctc)
    children: dict[int, int] = {}
    for _b, _e, parent in tracks.values():
        if parent:
            children[parent] = children.get(parent, 0) + 1
    assert sum(1 for n in children.values() if n == 2) >= 3
    last = CFG.n_frames - 1
    late_roots = [lab for lab, (b, _e, p) in tracks.items() if b > 0 and p == 0]
    assert late_roots, "no cell entered the field of view"
    ended_early = [lab for lab, (_b, e, _p) in tracks.items() if e < last and lab not in children]
    assert ended_early, "no cell left the field of view or died"


def test_streamed_frames_equal_written_files(ctc: Path) -> None:
    for f in NucleiSimulator(CFG).frames():
        if f.index % 7:
            continue
        np.testing.assert_array_equal(f.image, tifffile.imread(ctc / "01" / f"t{f.index:03d}.tif"))
        np.testing.assert_array_equal(
            f.labels, tifffile.imread(ctc / "01_GT" / "TRA" / f"man_track{f.index:03d}.tif")
        )


def test_determinism_and_seed_dependence() -> None:
    small = CFG.model_copy(update={"n_frames": 6})
    a = [(f.image, f.labels) for f in NucleiSimulator(small).frames()]
    b = [(f.image, f.labels) for f in NucleiSimulator(small).frames()]
    c = [
        (f.image, f.labels) for f in NucleiSimulator(small.model_copy(update={"seed": 5})).frames()
    ]
    for (ia, la), (ib, lb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a[-1][0], c[-1][0])


def test_camera_settings_do_not_move_the_cells() -> None:
    small = CFG.model_copy(update={"n_frames": 8})
    noisy = small.model_copy(update={"read_noise": 20.0, "bleach_rate": 0.05, "vignetting": 0.4})
    for f, g in zip(NucleiSimulator(small).frames(), NucleiSimulator(noisy).frames(), strict=True):
        np.testing.assert_array_equal(f.labels, g.labels)
        if f.index:
            assert not np.array_equal(f.image, g.image)


def test_nucleus_size_and_contrast_follow_the_config() -> None:
    for diameter in (12.0, 30.0):
        cfg = SimulationConfig(
            seed=1, n_frames=1, height=256, width=256, n_cells=20, nucleus_diameter_px=diameter
        )
        frame = next(NucleiSimulator(cfg).frames())
        areas = np.bincount(frame.labels.ravel())[1:]
        areas = areas[areas > 0]
        # cells at the border are cut: look at the upper half of the size distribution
        median = float(np.median(areas[areas >= np.percentile(areas, 25)]))
        assert median == pytest.approx(np.pi * diameter**2 / 4, rel=0.4)
        inside = frame.image[frame.labels > 0].astype(float)
        outside = frame.image[frame.labels == 0].astype(float)
        assert np.median(inside) > np.median(outside) + 5 * outside.std()


def test_thousands_of_cells_stream() -> None:
    cfg = SimulationConfig(
        seed=2, n_frames=2, height=1024, width=1024, n_cells=1500, nucleus_diameter_px=14
    )
    frames = list(NucleiSimulator(cfg).frames())
    assert len(np.unique(frames[-1].labels)) - 1 > 1000


def _mother_eccentricity_and_alignment(axis_ratio: float) -> tuple[float, float]:
    """Median eccentricity of mothers in their last frame, and median |cos| between their
    long axis and the line joining their daughters."""
    from livetrack.track.features import frame_features
    from livetrack.types import Detections

    cfg = SimulationConfig(
        seed=4, n_frames=25, cell_cycle_frames=10, mitotic_axis_ratio=axis_ratio, n_cells=30
    )
    sim = NucleiSimulator(cfg)
    frames = list(sim.frames())
    ecc, align = [], []
    for div in sim.divisions():
        last = frames[div.frame - 1].labels
        kids = frames[div.frame].labels
        det = Detections.from_labels(last)
        k = np.flatnonzero(det.labels == div.parent)
        dk = Detections.from_labels(kids)
        ks = [np.flatnonzero(dk.labels == d) for d in div.daughters[:2]]
        if len(k) == 0 or any(len(i) == 0 for i in ks):
            continue
        img = last.astype(np.float32)
        ecc.append(float(frame_features(img, last, det, 24.0).morph[k[0], 2]))
        yy, xx = np.nonzero(last == div.parent)
        cov = np.cov(np.stack([yy, xx]))
        major = np.linalg.eigh(cov)[1][:, -1]
        sep = dk.centroids[ks[0][0]] - dk.centroids[ks[1][0]]
        align.append(abs(float(major @ sep / np.linalg.norm(sep))))
    assert len(ecc) >= 5
    return float(np.median(ecc)), float(np.median(align))


def test_elongated_mitosis_divides_along_the_long_axis() -> None:
    ecc_round, _ = _mother_eccentricity_and_alignment(1.0)
    ecc_long, align = _mother_eccentricity_and_alignment(2.0)
    assert ecc_round < 0.5
    assert ecc_long > 0.7
    assert align > 0.9


def _inside_and_between(config: SimulationConfig) -> tuple[float, float]:
    frame = next(NucleiSimulator(config).frames())
    img = frame.image.astype(np.float64)
    return float(img[frame.labels > 0].mean()), float(np.median(img[frame.labels == 0]))


def test_nucleoli_darken_nuclei_and_haze_lights_the_background() -> None:
    base = SimulationConfig(
        seed=3, n_frames=1, height=128, width=128, n_cells=12, nucleus_diameter_px=24
    )
    plain_in, plain_out = _inside_and_between(base)
    holes_in, _ = _inside_and_between(
        base.model_copy(update={"mean_spots": 4.0, "nucleoli_fraction": 1.0})
    )
    bright_in, _ = _inside_and_between(base.model_copy(update={"mean_spots": 4.0}))
    _, hazy_out = _inside_and_between(base.model_copy(update={"haze": 1.0}))
    assert holes_in < plain_in < bright_in  # dark nucleoli vs none vs bright spots
    assert hazy_out > plain_out + 5.0  # out-of-focus light between the nuclei


def test_cells_in_other_focal_planes_are_faint_unlabelled_and_leave_the_cells_alone() -> None:
    """``defocused_fraction``: faint blurred blobs added to the image only; the in-focus
    cells, their labels and their lineage are those of the movie without them."""
    base = SimulationConfig(
        seed=4, n_frames=4, height=128, width=128, n_cells=8, nucleus_diameter_px=20
    )
    foggy = base.model_copy(
        update={"defocused_fraction": 1.0, "defocused_brightness": 0.2, "defocused_blur": 0.2}
    )
    plain_sim, foggy_sim = NucleiSimulator(base), NucleiSimulator(foggy)
    lit = 0.0
    for a, b in zip(plain_sim.frames(), foggy_sim.frames(), strict=True):
        assert np.array_equal(a.labels, b.labels)
        outside = a.labels == 0
        extra = b.image.astype(float)[outside] - a.image.astype(float)[outside]
        # brighter between the nuclei where blobs lie, by at most about their level
        assert np.percentile(extra, 99) > 0.1 * base.nucleus_signal * base.gain
        assert np.percentile(extra, 99) < 0.5 * base.nucleus_signal * base.gain
        lit = max(lit, float(np.mean(extra > 0.05 * base.nucleus_signal * base.gain)))
    assert 0.02 < lit < 0.9
    assert plain_sim.tracks() == foggy_sim.tracks()
    with pytest.raises(ValueError, match="defocused_fraction"):
        SimulationConfig(defocused_fraction=-1.0)


def test_new_appearance_options_off_by_default_change_nothing() -> None:
    base = SimulationConfig(seed=5, n_frames=3, height=96, width=96, n_cells=6)
    explicit = base.model_copy(
        update={
            "nucleoli_fraction": 0.0,
            "haze": 0.0,
            "defocused_fraction": 0.0,
            "anaphase_frames": 0,
        }
    )
    for a, b in zip(
        NucleiSimulator(base).frames(), NucleiSimulator(explicit).frames(), strict=True
    ):
        assert np.array_equal(a.image, b.image)
        assert np.array_equal(a.labels, b.labels)


def _profile_along(image: np.ndarray, mask: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Mean image over the mask in five bins along ``axis`` through the mask's centroid."""
    ys, xs = np.nonzero(mask)
    proj = (ys - ys.mean()) * axis[0] + (xs - xs.mean()) * axis[1]
    edges = np.linspace(proj.min(), proj.max() + 1e-6, 6)
    vals = image[ys, xs].astype(float)
    return np.array([vals[(proj >= a) & (proj < b)].mean() for a, b in itertools.pairwise(edges)])


def test_mothers_in_anaphase_are_two_lobes_of_one_object_and_the_lineage_stays() -> None:
    """``anaphase_frames``: in her last mitotic frame a mother's signal has two lobes along
    the axis her daughters then appear on, darker between them, yet she is one connected
    object; the lineage is the movie's without it."""
    base = SimulationConfig(
        seed=3, n_frames=24, height=160, width=160, n_cells=10, nucleus_diameter_px=30,
        cell_cycle_frames=10, mitosis_frames=2, mitotic_axis_ratio=1.3, texture_amplitude=0.0,
        mean_spots=0.0, psf_sigma_px=0.5, read_noise=0.5,
    )  # fmt: skip
    ana = base.model_copy(
        update={"anaphase_frames": 2, "anaphase_bridge": 0.3, "anaphase_pinch": 0.5}
    )
    dips = {}
    for cfg in (base, ana):
        sim = NucleiSimulator(cfg)
        frames = list(sim.frames())
        ratios = []
        for d in sim.divisions():
            before, after = frames[d.frame - 1], frames[d.frame]
            mother = before.labels == d.parent
            if not mother.any() or not all((after.labels == k).any() for k in d.daughters):
                continue
            assert ndi.label(mother)[1] == 1
            (y0, x0), (y1, x1) = (np.argwhere(after.labels == k).mean(0) for k in d.daughters)
            axis = np.array([y1 - y0, x1 - x0]) / np.hypot(y1 - y0, x1 - x0)
            prof = _profile_along(before.image, mother, axis) - cfg.camera_offset
            ratios.append(prof[2] / min(prof[1], prof[3]))
        assert len(ratios) >= 3
        dips[cfg.anaphase_frames] = float(np.median(ratios))
    assert dips[2] < 0.8 < dips[0]  # dark waist only in anaphase
    assert NucleiSimulator(base).tracks() == NucleiSimulator(ana).tracks()
    with pytest.raises(ValueError, match="anaphase_frames"):
        SimulationConfig(anaphase_frames=4)
