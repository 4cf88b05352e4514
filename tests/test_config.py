"""Settings: defaults in one place, a file, environment variables and explicit overrides,
each validated, every mistake a ConfigError that names it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pydantic
import pytest

from livetrack.config import Settings, WorkerConfig, check_environment, load_settings
from livetrack.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_livetrack_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read the environment: start every test from none of ours."""
    import os

    for key in list(os.environ):
        if key.upper().startswith("LIVETRACK_"):
            monkeypatch.delenv(key)


def test_defaults_stay_on_loopback_with_a_small_receive_queue() -> None:
    s = load_settings()
    assert s == Settings()
    assert s.worker.frames_endpoint.startswith("tcp://127.0.0.1:")
    assert s.worker.events_endpoint.startswith("tcp://127.0.0.1:")
    assert s.worker.frames_endpoint != s.worker.events_endpoint
    assert s.worker.allow_remote is False
    assert s.worker.receive_hwm == 4


def test_a_toml_file_then_explicit_overrides_win_and_none_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "livetrack.toml"
    path.write_text("[track]\nmax_gap = 4\n\n[worker]\nreceive_hwm = 8\n")
    s = load_settings(path, track={"max_gap": 6}, worker={"receive_hwm": None})
    assert s.track.max_gap == 6  # the explicit override beats the file
    assert s.worker.receive_hwm == 8  # None is "not given": the file's value stays


def test_json_files_are_read_too(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"worker": {"status_interval_s": 0.25}}))
    assert load_settings(path).worker.status_interval_s == 0.25


def test_environment_variables_override_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVETRACK_TRACK__MAX_GAP", "3")
    assert load_settings().track.max_gap == 3


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("LIVETRACK_TRAK__MAX_GAP", "no settings section 'trak' (did you mean 'track'?)"),
        ("LIVETRACK_TRACK__MAX_GAPS", "has no setting 'max_gaps' (did you mean 'max_gap'?)"),
    ],
)
def test_a_misspelt_environment_variable_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, words: str
) -> None:
    monkeypatch.setenv(name, "3")
    with pytest.raises(ConfigError, match=f"{name}: .*{re.escape(words)}"):
        load_settings()


def test_the_snapshot_switch_is_not_a_setting_and_not_refused() -> None:
    check_environment({"LIVETRACK_UPDATE_SNAPSHOTS": "1", "PATH": "/bin"})


def test_an_out_of_range_value_names_the_field_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[worker]\nreceive_hwm = 0\n")
    with pytest.raises(ConfigError, match=r"invalid settings in .*bad\.toml: worker\.receive_hwm"):
        load_settings(path)


def test_an_unknown_section_or_field_in_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "extra.toml"
    path.write_text("[wokrer]\nreceive_hwm = 2\n")
    with pytest.raises(ConfigError, match="wokrer"):
        load_settings(path)
    path.write_text("[worker]\nreceive_hmw = 2\n")
    with pytest.raises(ConfigError, match="receive_hmw"):
        load_settings(path)


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("broken.toml", "[worker\n", "is not valid toml"),
        ("broken.json", "{", "is not valid json"),
        ("list.json", "[1, 2]", "must hold a table/object of sections"),
    ],
)
def test_an_unreadable_config_file_is_a_config_error(
    tmp_path: Path, name: str, text: str, words: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=words):
        load_settings(path)


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "nope.toml")


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        s.worker.receive_hwm = 9  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        WorkerConfig(max_live_trackers=0)


def test_no_limit_on_the_scale_rise_can_be_written_in_toml_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """segment.max_scale_rise: 0 or inf mean no limit (None), which TOML and environment
    variables cannot write; below 1 (other than 0) is refused."""
    path = tmp_path / "s.toml"
    path.write_text("[segment]\nmax_scale_rise = 0\n")
    assert load_settings(path).segment.max_scale_rise is None
    path.write_text("[segment]\nmax_scale_rise = inf\n")
    assert load_settings(path).segment.max_scale_rise is None
    monkeypatch.setenv("LIVETRACK_SEGMENT__MAX_SCALE_RISE", "1.5")
    assert load_settings().segment.max_scale_rise == 1.5
    monkeypatch.setenv("LIVETRACK_SEGMENT__MAX_SCALE_RISE", "0")
    assert load_settings().segment.max_scale_rise is None
    monkeypatch.delenv("LIVETRACK_SEGMENT__MAX_SCALE_RISE")
    assert Settings().segment.max_scale_rise == 1.25
    path.write_text("[segment]\nmax_scale_rise = 0.8\n")
    with pytest.raises(ConfigError, match="max_scale_rise"):
        load_settings(path)
