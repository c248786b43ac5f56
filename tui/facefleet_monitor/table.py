"""A table for thousands of rows whose cells change every second: the fleet's, the alerts'.

Textual's DataTable takes every row's cells and measures each one, and when an updated cell is
narrower than its column it measures that whole column again. With a thousand nodes whose
ages change every second, that was nearly all of the monitor's CPU: a key press took 3 to 40 s
to show its view. This table takes the rows' keys in order and a function that makes a row's
cells, and asks it only for the rows on screen: a redraw costs the same at ten thousand nodes
as at fifty. Columns are as wide as what is on screen (a string length each, no rendering);
lines are drawn with Textual's Line API, and when the same rows come again only the lines
whose cells changed are drawn again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.events import Click
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

#: Blank cells on each side of a cell, as DataTable draws them.
PADDING = 1


#: A row's cells, one per column.
Cells: TypeAlias = Sequence[Text | str]


def same_cell(a: Any, b: Any) -> bool:
    """Whether a table cell would look the same (rich's Text equality ignores the style)."""
    if isinstance(a, Text) and isinstance(b, Text):
        return (a.plain, str(a.style), a.spans) == (b.plain, str(b.style), b.spans)
    return bool(a == b)


def cell_text(cell: Text | str) -> Text:
    return cell if isinstance(cell, Text) else Text(cell)


def own_style(text: Text) -> Style:
    return text.style if isinstance(text.style, Style) else Style.parse(text.style or "none")


def cell_width(cell: Text | str) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(cell)


class RowTable(ScrollView, can_focus=True):
    """Rows of cells under a header that stays on screen; a row cursor; Enter or a click on
    the cursor's row posts `RowSelected`. Rows are keyed; `show` replaces them all at once."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "move_cursor(-1)", "Up", show=False),
        Binding("down", "move_cursor(1)", "Down", show=False),
        Binding("pageup", "move_page(-1)", "Page up", show=False),
        Binding("pagedown", "move_page(1)", "Page down", show=False),
        Binding("home", "move_cursor(-1_000_000_000)", "First row", show=False),
        Binding("end", "move_cursor(1_000_000_000)", "Last row", show=False),
        Binding("enter", "select_row", "Select", show=False),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "row-table--header",
        "row-table--cursor",
        "row-table--even-row",
    }
    DEFAULT_CSS = """
    RowTable {
        background: $surface;
        color: $foreground;
        height: auto;
        max-height: 100%;
        & > .row-table--header {
            text-style: bold;
            background: $panel;
            color: $foreground;
        }
        & > .row-table--cursor {
            background: $block-cursor-blurred-background;
        }
        &:focus {
            background-tint: $foreground 5%;
            & > .row-table--cursor {
                background: $block-cursor-background;
                color: $block-cursor-foreground;
                text-style: $block-cursor-text-style;
            }
        }
        &:dark > .row-table--even-row {
            background: $surface-darken-1 40%;
        }
    }
    """

    cursor_row: reactive[int] = reactive(0, always_update=True, init=False)

    @dataclass
    class RowSelected(Message):
        """Enter, or a click on the cursor's row."""

        table: RowTable
        key: str

        @property
        def control(self) -> RowTable:
            return self.table

    def __init__(
        self, columns: Sequence[tuple[str, str]], *, zebra_stripes: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.column_keys = [key for key, _ in columns]
        self._labels = [Text(label) for _, label in columns]
        self.zebra_stripes = zebra_stripes
        self._keys: list[str] = []
        self._index: dict[str, int] = {}
        self._cells_of: Callable[[str], Cells] = lambda key: ()
        #: the cells of the rows drawn since the last `show` (those on screen, and the ones
        #: scrolled past)
        self._cells: dict[str, Cells] = {}
        self._widths = [label.cell_len for label in self._labels]

    # --- what it shows ----------------------------------------------------------------------

    @property
    def row_count(self) -> int:
        return len(self._keys)

    @property
    def row_keys(self) -> list[str]:
        return list(self._keys)

    @property
    def cursor_key(self) -> str | None:
        """The key of the row under the cursor, None when the table is empty."""
        return self._keys[self.cursor_row] if self._keys else None

    def cells(self, key: str) -> Cells:
        """A row's cells as drawn (made now if it has not been drawn since the last `show`)."""
        if key not in self._cells:
            self._cells[key] = self._cells_of(key)
        return self._cells[key]

    def column_width(self, column: str) -> int:
        """Cells of text the column is wide (its padding not counted)."""
        return self._widths[self.column_keys.index(column)]

    def show(self, keys: Sequence[str], cells: Callable[[str], Cells]) -> None:
        """Show the rows of these keys in this order; `cells(key)` makes a row's cells, asked
        for the rows on screen only. The cursor stays on its row's key where that row is still
        shown. Same keys in the same order and widths: only the changed lines are drawn."""
        keys = list(keys)
        same_rows = keys == self._keys
        before = self._cells
        self._cells_of, self._cells = cells, {}
        top = round(self.scroll_offset.y)
        # the rows at this scroll position (a moved cursor may scroll: render_line widens a
        # column for a wider row that comes into view)
        on_screen = keys[top : top + self.size.height]
        widths = self._fit(self.cells(key) for key in on_screen)
        if same_rows and widths == self._widths:
            for index, key in enumerate(on_screen, top):
                if key not in before or not all(map(same_cell, self._cells[key], before[key])):
                    self.refresh_line(index + 1)  # under the header
            return
        selected = self.cursor_key
        self._keys, self._widths = keys, widths
        self._index = {key: index for index, key in enumerate(keys)}
        self._resize()
        if selected in self._index:
            self.cursor_row = self._index[selected]
        else:
            self.cursor_row = min(self.cursor_row, max(0, len(keys) - 1))

    def _fit(self, rows: Iterable[Cells]) -> list[int]:
        widths = [label.cell_len for label in self._labels]
        for row in rows:
            for column, cell in enumerate(row):
                widths[column] = max(widths[column], cell_width(cell))
        return widths

    def _resize(self) -> None:
        self.virtual_size = Size(
            sum(self._widths) + 2 * PADDING * len(self._widths), len(self._keys) + 1
        )
        self.refresh()

    # --- the cursor -------------------------------------------------------------------------

    def validate_cursor_row(self, row: int) -> int:
        return max(0, min(row, len(self._keys) - 1))

    def watch_cursor_row(self, old: int, new: int) -> None:
        self.refresh_line(old + 1)
        self.refresh_line(new + 1)
        rows_on_screen = max(1, self.size.height - 1)
        top = round(self.scroll_offset.y)
        if new < top:
            self.scroll_to(y=new, animate=False, immediate=True)
        elif new >= top + rows_on_screen:
            self.scroll_to(y=new - rows_on_screen + 1, animate=False, immediate=True)

    def action_move_cursor(self, step: int) -> None:
        self.cursor_row = self.cursor_row + step

    def action_move_page(self, pages: int) -> None:
        self.cursor_row = self.cursor_row + pages * max(1, self.size.height - 1)

    def action_select_row(self) -> None:
        if self.cursor_key is not None:
            self.post_message(self.RowSelected(self, self.cursor_key))

    def on_click(self, event: Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or offset.y < 1:
            return
        row = round(self.scroll_offset.y) + offset.y - 1
        if row >= len(self._keys):
            return
        if row == self.cursor_row:
            self.action_select_row()
        else:
            self.cursor_row = row

    # --- drawing ----------------------------------------------------------------------------

    def _line(self, cells: Cells, style: Style) -> Strip:
        segments: list[Segment] = []
        for cell, width in zip(cells, self._widths, strict=True):
            text = cell_text(cell).copy()
            text.truncate(width, overflow="ellipsis", pad=True)
            text.pad(PADDING)
            # Text.render leaves the text's own style to its caller (rich's console applies it)
            segments.extend(Segment.apply_style(text.render(self.app.console), own_style(text)))
        return Strip(segments).apply_style(style)

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        base = self.rich_style
        if y == 0:
            style = base + self.get_component_rich_style("row-table--header")
            line = self._line(self._labels, style)
        else:
            index = scroll_y + y - 1
            if index >= len(self._keys):
                return Strip.blank(width, base)
            cells = self.cells(self._keys[index])
            wider = self._fit([cells])
            if any(w > before for w, before in zip(wider, self._widths, strict=True)):
                # a row scrolled into view is wider than those on screen at the last `show`
                self._widths = [max(pair) for pair in zip(wider, self._widths, strict=True)]
                self.call_later(self._resize)
            style = base
            if self.zebra_stripes and index % 2 == 0:
                style += self.get_component_rich_style("row-table--even-row")
            if index == self.cursor_row:
                style += self.get_component_rich_style("row-table--cursor")
            line = self._line(cells, style)
        return line.crop(scroll_x, scroll_x + width).extend_cell_length(width, style)
