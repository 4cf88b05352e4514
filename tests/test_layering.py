"""The dependency rules of the architecture, checked on the source so they stay true.

- Nothing in ``livetrack/`` but the CLI (``livetrack/cli/``, the composition root) imports
  the drivers: the library takes frame sources through the ``FrameSource`` seam.
- The repository's ``drivers/`` and ``simulators/`` folders are installed as
  ``livetrack.drivers`` and ``livetrack.simulators``; no code imports them under the
  top-level names ``drivers`` / ``simulators``, which other projects use too.
- ``livetrack/transport/`` is the only package that imports ZeroMQ, and inside it the
  wire codec, the endpoint policy and acknowledged delivery do without it.
- ``livetrack/config.py`` (the settings' sections) is a leaf: it imports nothing of livetrack.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "livetrack" / "cli"


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (anywhere in the file)."""
    return {name.split(".")[0] for name in _imported_full_names(path)}


def _imported_full_names(path: Path) -> set[str]:
    """Dotted names of every module ``path`` imports (anywhere in the file); a relative
    import counts under its absolute name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                names.add(node.module)
            elif node.level:
                names.add(f"<relative>.{node.module or ''}")
    return names


def _python_files() -> list[Path]:
    return sorted(
        p
        for folder in ("livetrack", "drivers", "simulators", "tests")
        for p in (REPO / folder).rglob("*.py")
    )


def test_imported_modules_sees_imports_inside_functions(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text(
        "def f():\n    from livetrack.drivers.simulator import S\n    import zmq.asyncio\n"
    )
    assert imported_modules(f) == {"livetrack", "zmq"}
    assert _imported_full_names(f) == {"livetrack.drivers.simulator", "zmq.asyncio"}


def test_only_the_cli_imports_drivers() -> None:
    importers = {
        p.relative_to(REPO).as_posix()
        for p in sorted((REPO / "livetrack").rglob("*.py"))
        if any(n.startswith("livetrack.drivers") for n in _imported_full_names(p))
    }
    assert "livetrack/cli/live.py" in importers  # the rule can bite: the CLI does import them
    assert sorted(p for p in importers if not p.startswith("livetrack/cli/")) == []


def test_drivers_and_simulators_have_no_top_level_name() -> None:
    """``import drivers`` would work from a source checkout only (and collide with other
    projects' ``drivers`` when installed): every import says ``livetrack.drivers``."""
    offenders = [
        p.relative_to(REPO).as_posix()
        for p in _python_files()
        if imported_modules(p) & {"drivers", "simulators"}
    ]
    assert offenders == []


def test_the_wheel_maps_drivers_and_simulators_into_livetrack() -> None:
    """The build backend installs the top-level folders inside the livetrack namespace."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools = project["tool"]["setuptools"]
    assert setuptools["package-dir"]["livetrack.drivers"] == "drivers"
    assert setuptools["package-dir"]["livetrack.simulators"] == "simulators"
    listed = set(setuptools["packages"])
    packages = {
        "livetrack." + ".".join(p.parent.relative_to(REPO / "livetrack").parts)
        if p.parent != REPO / "livetrack"
        else "livetrack"
        for p in (REPO / "livetrack").rglob("__init__.py")
    }
    assert packages - listed == set()  # a new subpackage must be listed, or the wheel lacks it
    assert {"drivers", "simulators"} & listed == set()


def test_installed_names_resolve_to_the_repository_folders() -> None:
    import livetrack.drivers.simulator
    import livetrack.simulators.nuclei

    assert Path(livetrack.drivers.simulator.__file__).parent == REPO / "drivers"
    assert Path(livetrack.simulators.nuclei.__file__).parent == REPO / "simulators"


def test_only_transport_imports_zmq() -> None:
    modules = [*(REPO / "livetrack").rglob("*.py"), *(REPO / "drivers").rglob("*.py")]
    offenders = [
        str(p.relative_to(REPO))
        for p in sorted(modules)
        if (REPO / "livetrack" / "transport") not in p.parents and "zmq" in imported_modules(p)
    ]
    assert offenders == []


def test_transport_keeps_zmq_out_of_its_pure_parts() -> None:
    """The codec (fuzzed directly), the endpoint policy and acknowledged delivery (built on
    the sockets' methods, never on a raw socket) stay free of ZeroMQ."""
    package = REPO / "livetrack" / "transport"
    assert (package / "__init__.py").is_file()
    pure = ["codec.py", "endpoints.py", "delivery.py"]
    assert [name for name in pure if "zmq" in imported_modules(package / name)] == []


def test_acked_delivery_uses_no_private_socket() -> None:
    """AckedPusher talks to its sockets through their methods (the ack socket's ``wait``),
    not by reaching into their ``_sock``."""
    text = (REPO / "livetrack" / "transport" / "delivery.py").read_text(encoding="utf-8")
    assert "._sock" not in text


def test_drivers_import_each_other_without_a_circle() -> None:
    """A driver module may build on another (replay on movie), never both ways round."""
    modules = {p.stem: p for p in (REPO / "drivers").glob("*.py") if p.stem != "__init__"}
    edges = {
        name: {
            n.split(".")[2] for n in _imported_full_names(p) if n.startswith("livetrack.drivers.")
        }
        & set(modules)
        for name, p in modules.items()
    }
    assert "movie" in edges["replay"]  # the one dependency there is, so the check can bite

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(nxt == goal or reaches(nxt, goal, seen | {nxt}) for nxt in edges[start] - seen)

    assert [name for name in sorted(modules) if reaches(name, name, set())] == []


def test_runtime_packages_never_import_training_code() -> None:
    """Training loops and threshold choice live in ``livetrack/training/``; only the CLI's
    train commands reach them."""
    training = REPO / "livetrack" / "training"
    assert (training / "__init__.py").is_file()
    offenders = [
        str(p.relative_to(REPO))
        for p in sorted((REPO / "livetrack").rglob("*.py"))
        if training not in p.parents
        and CLI not in p.parents
        and any(m.startswith("livetrack.training") for m in _imported_full_names(p))
    ]
    assert offenders == []


def test_the_settings_module_is_a_leaf() -> None:
    """``livetrack.config`` holds every settings section and imports nothing of livetrack
    but the error types, which import nothing of livetrack themselves."""
    config = _imported_full_names(REPO / "livetrack" / "config.py")
    assert sorted(n for n in config if n.startswith("livetrack")) == ["livetrack.errors"]
    errors = _imported_full_names(REPO / "livetrack" / "errors.py")
    assert sorted(n for n in errors if n.startswith("livetrack")) == []
    # the stages take their sections from it rather than defining their own
    for path in ("segment/config.py", "track/config.py"):
        assert not (REPO / "livetrack" / path).exists()
    assert "class StoreConfig" not in (REPO / "livetrack" / "store.py").read_text("utf-8")


def test_reading_settings_pulls_in_no_zmq_sqlite_or_torch() -> None:
    """A fresh interpreter that builds the settings has not imported the heavy parts."""
    import subprocess
    import sys

    code = (
        "import sys; from livetrack.config import load_settings; load_settings(); "
        "print(sorted(m for m in ('zmq', 'sqlite_utils', 'torch', 'livetrack.store', "
        "'livetrack.transport') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "[]"


def test_the_cli_uses_only_public_names_of_the_library() -> None:
    """The commands are thin: what they need from the library (reading a mask folder,
    checking an export) is a public function there, not a private helper reached into."""
    offenders = []
    for path in sorted(CLI.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.startswith("livetrack.cli"):
                    continue
                offenders += [
                    f"{path.name}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert offenders == []
