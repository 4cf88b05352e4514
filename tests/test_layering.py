"""The dependency rules of the architecture, checked on the source so they stay true.

- Nothing in ``livetrack/`` but the CLI (the composition root) imports ``drivers``: the
  library takes frame sources through the ``FrameSource`` seam.
- ``livetrack/transport/`` is the only package that imports ZeroMQ, and inside it the
  wire codec, the endpoint policy and acknowledged delivery do without it.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (anywhere in the file)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_imported_modules_sees_imports_inside_functions(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from drivers.simulator import S\n    import zmq.asyncio\n")
    assert imported_modules(f) == {"drivers", "zmq"}


def test_only_the_cli_imports_drivers() -> None:
    offenders = [
        str(p.relative_to(REPO))
        for p in sorted((REPO / "livetrack").rglob("*.py"))
        if p.name != "cli.py" and "drivers" in imported_modules(p)
    ]
    assert offenders == []


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


def _imported_full_names(path: Path) -> set[str]:
    """Dotted names of every module ``path`` imports (anywhere in the file)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_drivers_import_each_other_without_a_circle() -> None:
    """A driver module may build on another (replay on movie), never both ways round."""
    modules = {p.stem: p for p in (REPO / "drivers").glob("*.py") if p.stem != "__init__"}
    edges = {
        name: {n.split(".")[1] for n in _imported_full_names(p) if n.startswith("drivers.")}
        & set(modules)
        for name, p in modules.items()
    }
    assert "movie" in edges["replay"]  # the one dependency there is, so the check can bite

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(nxt == goal or reaches(nxt, goal, seen | {nxt}) for nxt in edges[start] - seen)

    assert [name for name in sorted(modules) if reaches(name, name, set())] == []


def _imports_of(path: Path) -> set[str]:
    """Full dotted names of every module ``path`` imports (absolute imports)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_runtime_packages_never_import_training_code() -> None:
    """Training loops and threshold choice live in ``livetrack/training/``; only the CLI's
    train commands reach them."""
    training = REPO / "livetrack" / "training"
    assert (training / "__init__.py").is_file()
    offenders = [
        str(p.relative_to(REPO))
        for p in sorted((REPO / "livetrack").rglob("*.py"))
        if training not in p.parents
        and p.name != "cli.py"
        and any(m.startswith("livetrack.training") for m in _imports_of(p))
    ]
    assert offenders == []
