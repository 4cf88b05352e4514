"""The one median-per-stage computation the worker, the runner and the dashboard share."""

from __future__ import annotations

from livetrack.timings import stage_medians


def test_medians_per_stage_in_first_seen_order() -> None:
    timings = [
        {"receive": 1.0, "segment": 10.0, "track": 3.0},
        {"receive": 3.0, "segment": 30.0, "track": 1.0, "store": 8.0},
        {"receive": 2.0, "segment": 20.0, "track": 2.0},
    ]
    got = stage_medians(timings)
    assert got == {"receive": 2.0, "segment": 20.0, "track": 2.0, "store": 8.0}
    assert list(got) == ["receive", "segment", "track", "store"]


def test_even_counts_average_the_middle_pair_and_ints_become_floats() -> None:
    got = stage_medians(iter([{"segment": 1}, {"segment": 4}]))
    assert got == {"segment": 2.5}
    assert stage_medians([{"store": 3}]) == {"store": 3.0}
    assert isinstance(stage_medians([{"store": 3}])["store"], float)


def test_no_frames_no_stages() -> None:
    assert stage_medians([]) == {}
    assert stage_medians([{}]) == {}


def test_the_three_users_share_it() -> None:
    """Worker status, run summary and dashboard all call this function (no private copy)."""
    import livetrack.runner
    import livetrack.tui.data
    import livetrack.worker

    for module in (livetrack.worker, livetrack.runner, livetrack.tui.data):
        assert module.stage_medians is stage_medians
