"""``livetrack benchmark``: the held-out evaluation suite.

Every accuracy figure the project quotes comes from here, with the data it was measured on
and whether that data took part in training or threshold choice. A suite is a TOML file
(shipped ones live in ``livetrack/suites/``) listing simulated movies by preset, seed and
settings; CTC sequence folders can be added on the command line. Each movie is run through
named pipelines — the default, each segmenter × tracker combination, the trackers on the
ground-truth masks (tracking only), laptrack when installed — through the real worker, store
and CTC export, and scored with ``livetrack.evaluate``. The result is one table (markdown +
JSON) and the verdict of the project's rule for defaults: on every held-out movie the default
pipeline's division F1 and TRA are at least those of its simple baselines.

Why seeds live in the suite file: a held-out movie is one whose seed was fixed before anyone
looked at results on it. The training commands draw their movies from other seeds (see
``docs/``), and a CTC sequence a shipped model was trained on is marked as such
automatically, from the training record in the model's ``config.json``.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from livetrack.config import Settings
from livetrack.errors import ConfigError, EvaluationError
from livetrack.source import FrameSource

log = logging.getLogger("livetrack.benchmark")

SUITES_DIR = Path(__file__).resolve().parent / "suites"
"""Suites shipped with the package; ``livetrack benchmark NAME`` finds ``NAME.toml`` here."""

PIPELINES: dict[str, tuple[str | None, str | None, bool]] = {
    "default": (None, None, False),
    "learned+lstm": ("learned", "lstm", False),
    "learned+lap": ("learned", "lap", False),
    "classical+lstm": ("classical", "lstm", False),
    "classical+lap": ("classical", "lap", False),
    "gt+default": (None, None, True),
    "gt+lstm": (None, "lstm", True),
    "gt+lap": (None, "lap", True),
    "gt+laptrack": (None, "laptrack", True),
}
"""name → (segmenter, tracker, track the ground-truth masks). None = the configured default.
'gt+…' rows are tracking only: the movie's ground-truth TRA masks instead of segmentation."""

DEFAULT_PIPELINES = ("default", "learned+lap", "classical+lap", "gt+default", "gt+lap")
"""What a benchmark runs unless told: the defaults and the baselines the rule compares them
with (learned segmentation + lap end to end; lap on ground-truth masks)."""

RULE = (("default", "learned+lap"), ("gt+default", "gt+lap"))
"""The rule for defaults: (default pipeline, its baseline). On every held-out movie the first
must reach at least the second's division F1 and TRA."""

PRESETS = ("default", "sim-plus", "gowt1")

FrameSourceFactory = Callable[[Path, Path | None], FrameSource]
"""Opens a CTC sequence folder (and, for tracking only, its ground-truth masks folder) as a
frame source; the CLI hands in the replay driver (nothing below the CLI imports drivers)."""


@dataclass(frozen=True)
class SuiteMovie:
    """One simulated movie of a suite: a preset, a seed fixed before looking, overrides."""

    name: str
    preset: str
    seed: int
    frames: int
    settings: dict[str, Any] = field(default_factory=dict)
    """Overrides of ``SimulationConfig`` fields."""
    what: str = ""
    """One line on what the movie tests (shown in the table's legend)."""


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    movies: tuple[SuiteMovie, ...]
    path: Path
    role: str = "held-out"
    """'held-out' (results may be quoted) or 'validation' (used to choose settings and
    thresholds; never quoted as a result)."""


@dataclass(frozen=True)
class BenchSequence:
    """A CTC sequence to score: the image folder, its ground truth, and its provenance."""

    name: str
    images: Path
    gt: Path
    training: str
    """'held-out', or which part of it trained or tuned a shipped model."""


@dataclass
class Row:
    """One (sequence, pipeline) result."""

    sequence: str
    pipeline: str
    training: str
    frames: int
    metrics: dict[str, float | int | None]
    ms_per_frame: float | None
    """Median of segment + track + store per frame (None for laptrack, run offline)."""
    seconds: float

    @property
    def held_out(self) -> bool:
        return self.training == "held-out"


# ----------------------------------------------------------------------------- suites
def load_suite(name_or_path: str | Path) -> Suite:
    """A suite by shipped name (``heldout``) or TOML path. Unknown keys are errors, so a
    misspelt setting never silently becomes the default."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = SUITES_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in SUITES_DIR.glob("*.toml")))
        raise ConfigError(f"no benchmark suite {name_or_path!r} (shipped: {shipped})")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read benchmark suite {path}: {exc}") from exc
    _only(data, {"name", "description", "frames", "movies", "role"}, str(path))
    role = str(data.get("role", "held-out"))
    if role not in ("held-out", "validation"):
        raise ConfigError(f"{path}: role must be 'held-out' or 'validation', got {role!r}")
    default_frames = int(data.get("frames", 40))
    movies = []
    for i, m in enumerate(data.get("movies", [])):
        where = f"{path} movies[{i}]"
        _only(m, {"name", "preset", "seed", "frames", "settings", "what"}, where)
        if "name" not in m or "seed" not in m:
            raise ConfigError(f"{where}: every movie needs a name and a seed")
        preset = m.get("preset", "default")
        if preset not in PRESETS:
            raise ConfigError(f"{where}: unknown preset {preset!r} (one of {PRESETS})")
        movies.append(
            SuiteMovie(
                name=str(m["name"]),
                preset=preset,
                seed=int(m["seed"]),
                frames=int(m.get("frames", default_frames)),
                settings=dict(m.get("settings", {})),
                what=str(m.get("what", "")),
            )
        )
    names = [m.name for m in movies]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: movie names must be unique, got {names}")
    return Suite(str(data.get("name", path.stem)), str(data.get("description", "")),
                 tuple(movies), path, role)  # fmt: skip


def _only(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} (allowed: {sorted(allowed)})")


def simulation_config(movie: SuiteMovie) -> Any:
    """The ``SimulationConfig`` of a suite movie (unknown settings are errors)."""
    from pydantic import ValidationError

    from livetrack.errors import validation_message
    from livetrack.simulators.nuclei import SimulationConfig

    presets: dict[str, Callable[[], SimulationConfig]] = {
        "default": SimulationConfig,
        "sim-plus": SimulationConfig.like_sim_plus,
        "gowt1": SimulationConfig.like_gowt1,
    }
    base = presets[movie.preset]().model_dump()
    try:
        return SimulationConfig(
            **{**base, **movie.settings, "seed": movie.seed, "n_frames": movie.frames}
        )
    except ValidationError as exc:
        raise ConfigError(f"movie {movie.name!r}: {validation_message(exc)}") from exc


# -------------------------------------------------------------------------- provenance
def training_record(
    models: Sequence[Path] | None = None,
) -> list[tuple[str, Path, int | None, int | None, str | None]]:
    """(model, CTC path, first, last frame, lineage sha256 or None) of every CTC sequence
    the given model folders — the ones a run uses (``settings_models``); None: the shipped
    defaults — were trained, tuned or fine-tuned on, read from their ``config.json``. A
    fine-tuned model also carries what its base model learned from: the base is found by
    the path its config records or, moved to another machine, by its weights' sha256 among
    the shipped models; a base found neither way counts as every shipped model (a sequence
    is then held out only if no shipped model saw it)."""
    from livetrack.models import MODELS_DIR, SHIPPED_SEGMENT_MODEL, SHIPPED_TRACK_MODEL

    if models is None:
        models = [SHIPPED_SEGMENT_MODEL, SHIPPED_TRACK_MODEL]
    shipped = sorted(p.parent for p in MODELS_DIR.glob("*/config.json"))
    out: list[tuple[str, Path, int | None, int | None, str | None]] = []
    seen: set[Path] = set()
    todo = [Path(m) for m in models]
    while todo:
        folder = todo.pop(0)
        key = folder.resolve()
        if key in seen:
            continue
        seen.add(key)
        try:
            meta = json.loads((folder / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        items = list(meta.get("train", {}).get("ctc", []) or [])
        finetune = meta.get("finetune") or {}
        items += list(finetune.get("data", []) or [])
        for item in items:
            digest = item.get("lineage_sha256")
            out.append(
                (
                    folder.name,
                    Path(item["path"]),
                    item.get("first"),
                    item.get("last"),
                    digest if isinstance(digest, str) else None,
                )
            )
        if finetune:
            todo += _base_models(finetune.get("base_model") or {}, shipped)
    return out


def _base_models(base: dict[str, Any], shipped: Sequence[Path]) -> list[Path]:
    """The folder of a fine-tuned model's base: its recorded path while that folder still
    holds the recorded weights (sha256), else the shipped model with those weights, else
    all shipped models (unknown: assume the worst)."""
    from livetrack.models import weights_digest

    path, digest = base.get("path"), base.get("weights_sha256")
    found = isinstance(path, str) and (Path(path) / "config.json").is_file()
    if found and (digest is None or weights_digest(Path(str(path))) == digest):
        return [Path(str(path))]
    same = [m for m in shipped if digest is not None and weights_digest(m) == digest]
    return same or list(shipped)


def provenance(
    images: Path, models: Sequence[Path] | None = None, frames: tuple[int, int] | None = None
) -> str:
    """'held-out', or which of the run's models (``models``; None: the shipped defaults)
    trained on (part of) this CTC sequence. A sequence is recognised by its last two path
    parts (dataset/sequence), wherever the data lies on this machine, or by its annotated
    lineage (``ctcfiles.lineage_digest``), whatever the folder is called: a renamed copy,
    or one with its images binned or re-encoded, is still the sequence the model saw. A
    model the run does not use (a shipped one replaced by ``model_dir``) does not count,
    so a leave-one-out model makes its left-out sequence held out. ``frames``: only these
    frames (first, last) are scored; other frames of a sequence a model trained on are
    still not held out (same cells, same microscope), and their row says so."""
    from livetrack.evaluate.ctcfiles import lineage_digest

    key = images.resolve().parts[-2:]
    digest = lineage_digest(images)
    uses = []
    for model, path, first, last, seen in training_record(models):
        if path.parts[-2:] != key and (digest is None or seen != digest):
            continue
        if first is None or last is None or last >= 10**9:
            said = (
                f"{model} trained" if first in (None, 0) else f"{model} trained on frames {first}-"
            )
        else:  # a closed range
            said = f"{model} trained on frames {first}-{last}"
        lo, hi = first or 0, last if last is not None else 10**9
        if frames is not None and (hi < frames[0] or lo > frames[1]):
            said += " (not the frames scored)"
        uses.append(said)
    return "; ".join(dict.fromkeys(uses)) if uses else "held-out"


def settings_models(settings: Settings | None) -> list[Path]:
    """The model folders a run with these settings uses: the segmenter's and the
    tracker's, the shipped defaults unless ``model_dir`` names others (None: the shipped
    defaults). Counted whichever pipelines run (a classical or LAP pipeline uses fewer):
    a sequence is held out only if none of them saw it."""
    from livetrack.models import SHIPPED_SEGMENT_MODEL, SHIPPED_TRACK_MODEL

    if settings is None:
        return [SHIPPED_SEGMENT_MODEL, SHIPPED_TRACK_MODEL]
    seg, trk = settings.segment.model_dir, settings.track.model_dir
    return [
        Path(seg) if seg is not None else SHIPPED_SEGMENT_MODEL,
        Path(trk) if trk is not None else SHIPPED_TRACK_MODEL,
    ]


# ---------------------------------------------------------------------------- running
def sequences(
    suite: Suite,
    ctc_dirs: Sequence[Path],
    data_dir: Path,
    *,
    on_progress: Callable[[str], None],
    models: Sequence[Path] | None = None,
) -> Iterator[BenchSequence]:
    """The suite's movies written in CTC layout under ``data_dir`` (once), then the CTC
    folders named on the command line (marked as training data when one of ``models`` —
    the run's models, ``settings_models``; None: the shipped defaults — was trained or
    fine-tuned on them)."""
    from livetrack.simulators.nuclei import write_ctc

    for movie in suite.movies:
        root = data_dir / movie.name
        if not (root / "01_GT" / "TRA" / "man_track.txt").is_file():
            on_progress(f"simulating {movie.name} (seed {movie.seed}, {movie.frames} frames)")
            write_ctc(simulation_config(movie), root)
        training = "held-out" if suite.role == "held-out" else "validation: chose settings"
        yield BenchSequence(movie.name, root / "01", root / "01_GT", training)
    for entry in ctc_dirs:
        images, frames = parse_ctc_entry(entry)
        gt = images.with_name(images.name + "_GT")
        if not images.is_dir() or not (gt / "TRA" / "man_track.txt").is_file():
            raise EvaluationError(
                f"{images}: a CTC sequence folder needs its ground truth beside it "
                f"({gt.name}/TRA/man_track.txt)"
            )
        training = provenance(images, models, frames)
        name = f"{images.parent.name}/{images.name}"
        if frames is not None:
            from livetrack.evaluate.ctcfiles import trim_sequence

            name += f":{frames[0]}-{frames[1]}"
            on_progress(f"cutting {name} (frames renumbered from 0)")
            cut = data_dir / f"{images.parent.name}_{images.name}_{frames[0]}-{frames[1]}"
            images = trim_sequence(images, frames[0], frames[1], cut)
            gt = images.with_name(images.name + "_GT")
        yield BenchSequence(name, images, gt, training)


def parse_ctc_entry(entry: str | Path) -> tuple[Path, tuple[int, int] | None]:
    """``SEQ`` or ``SEQ:FIRST-LAST`` (inclusive frame numbers) → (folder, frames or None)."""
    import re

    m = re.fullmatch(r"(.+?):(\d+)-(\d+)", str(entry))
    if m is None or Path(str(entry)).is_dir():
        return Path(entry), None
    first, last = int(m.group(2)), int(m.group(3))
    if last < first:
        raise ConfigError(f"--ctc {entry}: frames must be FIRST-LAST with FIRST <= LAST")
    return Path(m.group(1)), (first, last)


def run_benchmark(
    suite: Suite,
    *,
    out_dir: Path,
    open_source: FrameSourceFactory,
    ctc_dirs: Sequence[Path] = (),
    pipelines: Sequence[str] = DEFAULT_PIPELINES,
    settings: Settings | None = None,
    on_progress: Callable[[str], None] = lambda line: None,
) -> list[Row]:
    """Run every sequence through every pipeline; write ``benchmark.json`` and
    ``benchmark.md`` to ``out_dir`` after each row (an interrupted benchmark keeps what it
    measured). Returns the rows."""
    unknown = [p for p in pipelines if p not in PIPELINES]
    if unknown:
        raise ConfigError(f"unknown pipeline(s) {unknown} (one of {list(PIPELINES)})")
    from livetrack.evaluate.metrics import require_ctc_metrics

    require_ctc_metrics()  # before the movies are run, not after
    settings = settings or Settings()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    seqs = list(
        sequences(
            suite,
            ctc_dirs,
            out_dir / "data",
            on_progress=on_progress,
            models=settings_models(settings),
        )
    )
    total = len(seqs) * len(pipelines)
    for seq in seqs:
        for pipeline in pipelines:
            on_progress(f"[{len(rows) + 1}/{total}] {seq.name} · {pipeline}")
            if pipeline == "gt+laptrack" and not _has_laptrack():
                on_progress(
                    "  laptrack is not installed (pip install 'livetrack[compare]'); skipped"
                )
                continue
            row = _run_one(seq, pipeline, settings, out_dir, open_source)
            rows.append(row)
            on_progress("  " + _row_line(row))
            write_report(rows, suite, out_dir, settings)
    return rows


def _has_laptrack() -> bool:
    try:
        import laptrack  # noqa: F401
    except ImportError:
        return False
    return True


def _run_one(
    seq: BenchSequence, pipeline: str, settings: Settings, out_dir: Path, open_source: Any
) -> Row:
    from livetrack.evaluate import evaluate_ctc

    segmenter, tracker, on_gt = PIPELINES[pipeline]
    res = out_dir / "results" / seq.name.replace("/", "_") / pipeline
    started = time.perf_counter()
    ms: float | None = None
    if tracker == "laptrack":
        n_frames = _laptrack(seq, res)
    else:
        ms, n_frames = _pipeline(seq, segmenter, tracker, on_gt, settings, res, open_source)
    result = evaluate_ctc(res, seq.gt)
    return Row(
        sequence=seq.name,
        pipeline=pipeline,
        training=seq.training,
        frames=n_frames,
        metrics=result.to_dict(),
        ms_per_frame=ms,
        seconds=time.perf_counter() - started,
    )


def _pipeline(
    seq: BenchSequence,
    segmenter: str | None,
    tracker: str | None,
    on_gt: bool,
    settings: Settings,
    res: Path,
    open_source: FrameSourceFactory,
) -> tuple[float | None, int]:
    from livetrack.evaluate.export import export_run
    from livetrack.runner import run_pipeline
    from livetrack.store import Store

    update: dict[str, Any] = {}
    if segmenter is not None:
        update["segment"] = settings.segment.model_copy(update={"method": segmenter})
    if tracker is not None:
        update["track"] = settings.track.model_copy(update={"method": tracker})
    run_settings = settings.model_copy(update=update)
    res.mkdir(parents=True, exist_ok=True)
    db = res / "run.db"
    for stale in res.glob("run.db*"):
        stale.unlink()
    source = open_source(seq.images, (seq.gt / "TRA") if on_gt else None)
    summary = run_pipeline(
        source,
        run_settings,
        description=f"benchmark {seq.name}",
        run_id="benchmark",
        db_path=db,
        events_endpoint="tcp://127.0.0.1:0",
    )
    n_gt = len(list((seq.gt / "TRA").glob("man_track*.tif")))
    with Store(db, readonly=True) as store:
        export_run(store, "benchmark", None, res, n_frames=n_gt)
    per_frame = [
        sum(t.get(k, 0.0) for k in ("segment", "track", "store")) for t in summary.timings[1:]
    ]
    return (statistics.median(per_frame) if per_frame else None), summary.frames_stored


def _laptrack(seq: BenchSequence, res: Path) -> int:
    import tifffile

    from livetrack.evaluate.baselines import track_with_laptrack, write_ctc_result

    files = sorted((seq.gt / "TRA").glob("man_track*.tif"))
    masks = [tifffile.imread(f) for f in files]
    out_masks, rows = track_with_laptrack(masks)
    digits = len(files[0].stem.removeprefix("man_track")) if files else 3
    write_ctc_result(res, out_masks, rows, digits=digits)
    return len(files)


# ---------------------------------------------------------------------------- report
COLUMNS = (
    ("DET", "DET"),
    ("SEG", "SEG"),
    ("TRA", "TRA"),
    ("BC1", "BC(1)"),
    ("division_precision", "div P"),
    ("division_recall", "div R"),
    ("division_f1", "div F1"),
    ("TE", "TE"),
    ("AA", "AA"),
)


def rule_violations(rows: Sequence[Row]) -> list[str]:
    """Where a default falls below its baseline on a held-out sequence (division F1 or
    TRA); one line each. Metrics that are None on both sides (no divisions) pass."""
    by = {(r.sequence, r.pipeline): r for r in rows}
    out = []
    for seq in dict.fromkeys(r.sequence for r in rows if r.held_out):
        for default, baseline in RULE:
            d, b = by.get((seq, default)), by.get((seq, baseline))
            if d is None or b is None:
                continue
            for metric in ("division_f1", "TRA"):
                dv, bv = _rule_value(d.metrics, metric), _rule_value(b.metrics, metric)
                if bv is not None and (dv is None or float(dv) < float(bv)):
                    out.append(f"{seq}: {default} {metric} {_fmt(dv)} < {baseline} {_fmt(bv)}")
    return out


def _rule_value(metrics: dict[str, Any], metric: str) -> Any:
    """The metric as the rule compares it: a division F1 left undefined because nothing was
    called a division (no precision) on a sequence that has divisions counts as 0 — no
    division found — not as missing."""
    value = metrics.get(metric)
    if metric == "division_f1" and value is None and (metrics.get("n_gt_divisions") or 0) > 0:
        return 0.0
    return value


def write_report(rows: Sequence[Row], suite: Suite, out_dir: Path, settings: Settings) -> None:
    data = {
        "suite": suite.name,
        "suite_file": suite.path.name,
        "defaults": {
            "segmenter": settings.segment.method,
            "tracker": settings.track.method,
        },
        "rows": [{**asdict(r), "held_out": r.held_out} for r in rows],
        "rule_violations": rule_violations(rows),
    }
    (out_dir / "benchmark.json").write_text(json.dumps(data, indent=2) + "\n")
    (out_dir / "benchmark.md").write_text(markdown(rows, suite, settings))


def markdown(rows: Sequence[Row], suite: Suite, settings: Settings) -> str:
    head = ["sequence", "data", "pipeline", *(c for _, c in COLUMNS), "divisions", "ms/frame"]
    lines = [
        f"# Benchmark `{suite.name}`",
        "",
        f"Defaults: {settings.segment.method} segmenter + {settings.track.method} tracker. "
        "'gt+…' rows track the ground-truth masks (tracking only). Divisions: correct / "
        "ground truth (+ false), strict (mother and both daughters, ±1 frame). Data "
        "'held-out' took no part in training or threshold choice.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        m = r.metrics
        divisions = f"{m.get('correct')}/{m.get('n_gt_divisions')} (+{m.get('false_positive')})"
        cells = [
            r.sequence,
            r.training,
            r.pipeline,
            *(_fmt(m.get(k)) for k, _ in COLUMNS),
            divisions,
            "–" if r.ms_per_frame is None else f"{r.ms_per_frame:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    legend = [f"- `{m.name}`: {m.preset} preset, seed {m.seed}, {m.frames} frames"
              + (f" — {m.what}" if m.what else "") for m in suite.movies]  # fmt: skip
    violations = rule_violations(rows)
    if not any(r.held_out for r in rows):
        verdict = ["Rule for defaults: not checked (no held-out rows)."]
    elif not violations:
        verdict = ["**Rule for defaults: holds on every held-out sequence measured.**"]
    else:
        verdict = [
            "**Rule for defaults broken on held-out data:**",
            *(f"- {v}" for v in violations),
        ]
    return "\n".join([*lines, "", "Movies:", *legend, "", *verdict]) + "\n"


def _row_line(r: Row) -> str:
    m = r.metrics
    return (
        f"DET {_fmt(m.get('DET'))} TRA {_fmt(m.get('TRA'))} div F1 {_fmt(m.get('division_f1'))}"
        f" ({m.get('correct')}/{m.get('n_gt_divisions')} +{m.get('false_positive')})"
        + ("" if r.ms_per_frame is None else f" · {r.ms_per_frame:.0f} ms/frame")
        + f" · {r.seconds:.0f} s"
    )


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}" if v < 0.999 or v == 1.0 else f"{v:.4f}"
    return str(v)
