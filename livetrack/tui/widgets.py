"""Dashboard widgets: the run header, cells-over-time sparklines, the lineage tree and the
key help. They only draw what the app hands them; none of them does I/O."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.keys import format_key
from textual.screen import ModalScreen
from textual.widgets import Static, Tree
from textual.widgets.tree import TreeNode

from livetrack.tui.data import Lineage, LineageNode, describe_track

BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[int], width: int) -> str:
    """The last ``width`` values as block characters, scaled between their min and max
    (a flat series is drawn at mid height, so 'constant' does not read as 'zero')."""
    if width <= 0 or not values:
        return ""
    tail = values[-width:]
    lo, hi = min(tail), max(tail)
    if hi == lo:
        return BLOCKS[3] * len(tail)
    scale = (len(BLOCKS) - 1) / (hi - lo)
    return "".join(BLOCKS[round((v - lo) * scale)] for v in tail)


class Sparklines(Static):
    """One line per position: name, cells over the last frames, current count."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._series: dict[str, list[int]] = {}
        self._selected: str | None = None

    def show(self, series: dict[str, list[int]], selected: str | None) -> None:
        self._series = {k: list(v) for k, v in series.items()}
        self._selected = selected
        self.refresh(layout=True)

    def render(self) -> Text:
        if not self._series:
            return Text("no frames yet", style="dim")
        width = max(self.content_size.width, 10)
        name_w = min(max(len(p) for p in self._series), 10)
        out = Text(no_wrap=True, overflow="ellipsis")
        for i, (pos, values) in enumerate(sorted(self._series.items())):
            last = str(values[-1]) if values else "-"
            spark_w = max(width - name_w - len(last) - 3, 1)
            style = "bold reverse" if pos == self._selected else ""
            if i:
                out.append("\n")
            out.append(f"{pos[:name_w]:<{name_w}} ", style=style)
            out.append(sparkline(values, spark_w), style="green")
            out.append(f" {last}", style="bold")
        return out


class LineageTree(Tree[int]):
    """Ancestry of a track (root first) down to the track, then all its descendants."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("no division selected", id=id)
        self.show_root = True
        self.guide_depth = 2

    def show_message(self, message: str) -> None:
        self.clear()
        self.root.set_label(Text(message, style="dim"))

    def show(self, lineage: Lineage) -> None:
        self.clear()
        if lineage.subtree is None:
            self.root.set_label(
                Text(f"{lineage.position}: track {lineage.track_id} is not in the store yet")
            )
            return
        self.root.set_label(Text(f"{lineage.position} · track {lineage.track_id}", style="bold"))
        node = self.root
        for ancestor in lineage.ancestors:
            node = node.add(describe_track(ancestor), data=ancestor.track_id, expand=True)
        self._add_subtree(node, lineage.subtree, selected=lineage.track_id)
        self.root.expand_all()

    def _add_subtree(self, parent: TreeNode[int], sub: LineageNode, *, selected: int) -> None:
        label = Text(describe_track(sub.track))
        if sub.track.track_id == selected:
            label.stylize("bold reverse")
        if sub.children:
            node = parent.add(label, data=sub.track.track_id, expand=True)
            for child in sub.children:
                self._add_subtree(node, child, selected=selected)
        else:
            parent.add_leaf(label, data=sub.track.track_id)


NAVIGATION_KEYS: tuple[tuple[str, str], ...] = (
    ("tab / shift+tab", "move between panels (mouse: click)"),
    ("↑ ↓ / pgup pgdn", "move inside a panel"),
    ("enter (positions)", "select a position: filter the feed, highlight its sparkline"),
    ("enter (divisions)", "open the lineage of the highlighted division"),
    ("ctrl+p", "Textual's command palette (theme, screenshot, quit)"),
)
"""Keys Textual's widgets handle themselves; the app's own bindings are listed from
``DashboardApp.BINDINGS``, so the help cannot miss one."""

HELP_ABOUT = (
    "The header gives the run and its state (● running; once it is over ■ finished or "
    "aborted, or ended when no database says which), positions (pos), frames stored in "
    "the database (a restarted worker does not reset them), throughput (fr/s: frames "
    "committed per second), divisions so far (div) and, only while the run is live, the "
    "lag: seconds from a frame's acquisition to its commit, which grows when the worker "
    "falls behind the microscope. Its second line gives milliseconds per pipeline stage "
    "(ms receive, segment, track, store) and the device; its third line whether the live "
    "socket and the database are connected, and how many frames were rejected. Positions: "
    "per field of view, the last frame index (frame), cells segmented in it (cells), "
    "tracks still open (tracks), divisions (div) and the time since its last frame (age); "
    "a red “!” marks a stale position, one without a frame for much longer than usual. "
    "Cells over time: the cell count per frame as a sparkline, newest on the right. "
    "Divisions, newest first: every division in acquisition order (frame, then position) "
    "with its acquisition time, position (pos), frame (f), mother track → daughter "
    "tracks, and the tracker's confidence (conf, 0 to 1). Lineage: the chosen division's "
    "mother with her ancestors above and all her descendants below, each track with its "
    "first and last frame and how it ended."
)
"""What the panels show, in the words they use."""


def key_names(keys: str) -> str:
    """'p,space' → 'p / space'; Textual's key names as a user types them ('?', 'esc')."""
    return " / ".join(format_key(k.strip()) for k in keys.split(","))


class HelpScreen(ModalScreen[None]):
    """Every key and what the panels show, over the dashboard. Sized to the terminal; the
    text scrolls (↑ ↓ pgup pgdn) where the terminal is too small to show all of it."""

    BINDINGS = [  # noqa: RUF012 (Textual's declared type)
        Binding("escape,question_mark,q", "dismiss", "close"),
    ]
    AUTO_FOCUS = "#help-box"

    def __init__(self, keys: Sequence[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = tuple(keys)

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True, justify="right")
        table.add_column(ratio=1)
        for key, what in self.keys:
            table.add_row(key, what)
        box = VerticalScroll(id="help-box")
        box.border_title = "livetrack dashboard — help"
        box.border_subtitle = "↑ ↓ scroll · ? or esc closes"
        with box:
            yield Static(table, id="help-keys")
            yield Static(HELP_ABOUT, id="help-about")

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)
