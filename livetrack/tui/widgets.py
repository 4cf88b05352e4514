"""Dashboard widgets: the run header, cells-over-time sparklines, the lineage tree and the
key help. They only draw what the app hands them; none of them does I/O."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
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


KEYS: tuple[tuple[str, str], ...] = (
    ("?", "show / hide this help"),
    ("tab / shift+tab", "move between panels (mouse: click)"),
    ("↑ ↓ / pgup pgdn", "move inside a panel"),
    ("enter (positions)", "select a position: filter the feed, highlight its sparkline"),
    ("a", "all positions again (clear position and filter)"),
    ("d", "jump to the newest division"),
    ("enter / l (feed)", "open the lineage of the highlighted division"),
    ("/", "filter the feed (position name or track id); esc cancels"),
    ("p / space", "pause / resume the feed (new divisions are counted)"),
    ("q / ctrl+c", "quit (stops a run started by `livetrack run`)"),
)


class HelpScreen(ModalScreen[None]):
    """The key list, over the dashboard."""

    BINDINGS = [  # noqa: RUF012 (Textual's declared type)
        Binding("escape,question_mark,q", "dismiss", "close"),
    ]

    def compose(self) -> ComposeResult:
        text = Text("livetrack dashboard — keys\n\n", style="bold")
        for key, what in KEYS:
            text.append(f"{key:>18}  ", style="bold cyan")
            text.append(f"{what}\n")
        text.append("\nesc closes", style="dim")
        with Vertical(id="help-box"):
            yield Static(text, id="help-text")

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)
