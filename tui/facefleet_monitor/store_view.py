"""The stored-faces view (`facefleet monitor --store STORE`): faces by node and capture time
with a thumbnail, and deletion of the selected face or of everything the filter shows, after a
confirmation. Every deletion leaves its record in the store (facefleet.facestore).

Store calls block (S3 round trips), so they run in thread workers; results come back through
`call_from_thread`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widget import Widget
from textual.widgets import Button, DataTable, Footer, Header, Input, Static

from facefleet.config import ConfigError
from facefleet.faces_cli import parse_time
from facefleet.facestore import (
    FaceFilter,
    FaceStore,
    S3Store,
    StoredFace,
    StoreError,
    delete_faces,
    who_am_i,
)
from facefleet_monitor.thumbnail import decode_thumbnail
from facefleet_monitor.views import fit_columns

#: At most this many faces are listed (the filter narrows a larger store).
LIST_LIMIT = 5000


def parse_filter(text: str) -> FaceFilter:
    """`NODE`, `SINCE` or both, space separated: `cam-1 7d`, `2026-11-30`, `cam-2`."""
    node: str | None = None
    since = None
    for token in text.split():
        try:
            since = parse_time(token)
        except ConfigError:
            if node is not None:
                raise ConfigError(f"filter {text!r}: one node and one time at most") from None
            node = token
    return FaceFilter(node=node, since=since)


class ConfirmDelete(ModalScreen[bool]):
    """Asks before anything is deleted; `y` or the button confirms, `n`/escape cancels."""

    BINDINGS = [
        Binding("y", "answer(True)", "Delete", id="confirm-yes"),
        Binding("n,escape", "answer(False)", "Cancel", id="confirm-no"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__(id="confirm-delete")
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Static(self.question, id="confirm-question")
            with Horizontal(id="confirm-buttons"):
                yield Button("Delete (y)", variant="error", id="confirm-delete-yes")
                yield Button("Cancel (n)", id="confirm-delete-no")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)

    @on(Button.Pressed, "#confirm-delete-yes")
    def _yes(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#confirm-delete-no")
    def _no(self) -> None:
        self.dismiss(False)


class StoredFacesScreen(Screen[None]):
    """Stored faces of one store, newest first per node, with a thumbnail of the selected one."""

    BINDINGS = [
        Binding("r", "reload", "Reload", id="stored-reload", tooltip="List the store again"),
        Binding("slash", "focus_filter", "Filter", id="stored-filter", tooltip="NODE and/or SINCE"),
        Binding("d", "delete_selected", "Delete face", id="stored-delete", tooltip="Delete it"),
        Binding(
            "D",
            "delete_listed",
            "Delete all listed",
            id="stored-delete-all",
            tooltip="Delete every face the filter shows",
        ),
        Binding("escape", "leave", "Back", id="stored-back"),
    ]
    #: The table has the keys from the first moment. (Textual focuses the first focusable
    #: widget, the filter, as it composes; a `focus()` in on_mount comes later through the
    #: app's queue, so an escape pressed at once, on a busy machine, only left the filter.)
    AUTO_FOCUS = "#stored-table"

    def __init__(self, store: FaceStore, image_class: type[Widget], closable: bool = True) -> None:
        super().__init__(id="stored-screen")
        self.closable = closable
        self.store = store
        self.image_class = image_class
        self.faces: list[StoredFace] = []
        self.which = FaceFilter()
        self._thumbnail_for: str | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"Stored faces in {self.store.describe()}", classes="pane-title")
        yield Input(
            placeholder="filter: NODE and/or SINCE (7d, 12h, 2026-11-30)", id="stored-query"
        )
        with Horizontal(id="stored-body"):
            yield DataTable(id="stored-table", cursor_type="row", zebra_stripes=True)
            with Vertical(id="stored-side"):
                yield self.image_class(id="stored-thumbnail")
                yield Static(id="stored-info")
        yield Static(id="stored-summary")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#stored-table", DataTable)
        table.add_columns("node", "captured (UTC)", "bytes", "id")
        self.action_reload()

    # --- listing ---------------------------------------------------------------------------

    def action_reload(self) -> None:
        self.query_one("#stored-summary", Static).update("listing ...")
        self.list_faces(self.which)

    @work(thread=True, exclusive=True, group="stored-list")
    def list_faces(self, which: FaceFilter) -> None:
        try:
            faces = []
            for face in self.store.faces(which):
                faces.append(face)
                if len(faces) >= LIST_LIMIT:
                    break
        except StoreError as exc:
            self.app.call_from_thread(self._show_error, str(exc))
            return
        self.app.call_from_thread(self._show_faces, faces)

    def _show_faces(self, faces: list[StoredFace]) -> None:
        # newest first within each node: what an operator looks for
        faces.sort(key=lambda f: (f.node, f.ts), reverse=True)
        faces.sort(key=lambda f: f.node)
        self.faces = faces
        table = self.query_one("#stored-table", DataTable)
        table.clear()
        for face in faces:
            table.add_row(
                face.node, face.ts.replace("T", " ")[:19], str(face.size), face.id, key=face.id
            )
        fit_columns(table)
        by_node = Counter(face.node for face in faces)
        per_node = ", ".join(f"{node} {count}" for node, count in sorted(by_node.items()))
        limited = f" (first {LIST_LIMIT}; narrow the filter)" if len(faces) >= LIST_LIMIT else ""
        self.query_one("#stored-summary", Static).update(
            f"{len(faces)} faces{limited}" + (f": {per_node}" if per_node else "")
        )
        self._thumbnail_for = None
        self._load_thumbnail()

    def _show_error(self, message: str) -> None:
        self.query_one("#stored-summary", Static).update(f"[b red]{message}[/]")

    # --- filter ----------------------------------------------------------------------------

    def action_focus_filter(self) -> None:
        self.query_one("#stored-query", Input).focus()

    @on(Input.Submitted, "#stored-query")
    def _filter(self, event: Input.Submitted) -> None:
        try:
            self.which = parse_filter(event.value)
        except ConfigError as exc:
            self._show_error(str(exc))
            return
        self.query_one("#stored-table", DataTable).focus()
        self.action_reload()

    # --- thumbnail -------------------------------------------------------------------------

    def selected(self) -> StoredFace | None:
        table = self.query_one("#stored-table", DataTable)
        if not self.faces or not 0 <= table.cursor_row < len(self.faces):
            return None
        return self.faces[table.cursor_row]

    @on(DataTable.RowHighlighted, "#stored-table")
    def _highlighted(self) -> None:
        self._load_thumbnail()

    def _load_thumbnail(self) -> None:
        face = self.selected()
        image: Any = self.query_one("#stored-thumbnail")
        info = self.query_one("#stored-info", Static)
        if face is None:
            image.image = None
            info.update("")
            return
        if face.id == self._thumbnail_for:
            return
        self._thumbnail_for = face.id
        info.update(f"{face.id}\n{face.node}  {face.ts}\n{face.key}")
        self.read_thumbnail(face)

    @work(thread=True, exclusive=True, group="stored-thumbnail")
    def read_thumbnail(self, face: StoredFace) -> None:
        try:
            payload, metadata = self.store.read(face)
            picture = decode_thumbnail(payload)
        except Exception as exc:  # a store error or bytes Pillow cannot read
            self.app.call_from_thread(self._thumbnail_failed, face, str(exc))
            return
        self.app.call_from_thread(self._show_thumbnail, face, picture, metadata)

    def _show_thumbnail(self, face: StoredFace, picture: Any, metadata: dict[str, str]) -> None:
        if face.id != self._thumbnail_for:
            return
        self.query_one("#stored-thumbnail").image = picture  # type: ignore[attr-defined]
        details = "  ".join(
            f"{k} {metadata[k]}" for k in ("score", "box", "detector") if k in metadata
        )
        self.query_one("#stored-info", Static).update(
            f"{face.id}\n{face.node}  {face.ts}\n{details}\n{face.key}"
        )

    def _thumbnail_failed(self, face: StoredFace, reason: str) -> None:
        if face.id == self._thumbnail_for:
            self.query_one("#stored-thumbnail").image = None  # type: ignore[attr-defined]
            self.query_one("#stored-info", Static).update(f"{face.id}\n[b red]{reason}[/]")

    # --- deletion --------------------------------------------------------------------------

    def action_delete_selected(self) -> None:
        face = self.selected()
        if face is not None:
            self._confirm([face], {"ids": [face.id]}, f"Delete face {face.id} of {face.node}?")

    def action_delete_listed(self) -> None:
        if self.faces:
            criteria = self.which.describe()
            described = ", ".join(f"{k} {v}" for k, v in criteria.items()) or "no filter"
            self._confirm(
                list(self.faces),
                criteria,
                f"Delete all {len(self.faces)} listed faces ({described})?",
            )

    def _confirm(self, faces: list[StoredFace], criteria: dict[str, Any], question: str) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.query_one("#stored-summary", Static).update(f"deleting {len(faces)} ...")
                self.delete(faces, criteria)

        self.app.push_screen(ConfirmDelete(question), answered)

    @work(thread=True, exclusive=True, group="stored-delete")
    def delete(self, faces: list[StoredFace], criteria: dict[str, Any]) -> None:
        extra = (
            {"access_key_id": self.store.access_key_id} if isinstance(self.store, S3Store) else {}
        )
        try:
            record = delete_faces(self.store, faces, {**criteria, "by": "monitor"}, who_am_i(extra))
        except StoreError as exc:
            self.app.call_from_thread(self._show_error, str(exc))
            return
        self.app.call_from_thread(self._deleted, record.count, record.key)

    def _deleted(self, count: int, record_key: str) -> None:
        self.app.notify(f"deleted {count} faces; record {record_key}", timeout=8)
        self.action_reload()

    def action_leave(self) -> None:
        if self.query_one("#stored-query", Input).has_focus:
            self.query_one("#stored-table", DataTable).focus()
        elif self.closable:  # pushed over the live monitor
            self.app.pop_screen()


class StoredFacesApp(App[int]):
    """`facefleet monitor --store STORE` without a broker: the stored-faces view alone."""

    CSS_PATH = "monitor.tcss"
    TITLE = "facefleet monitor"
    BINDINGS = [Binding("q", "quit", "Quit", id="quit")]

    def __init__(self, store: FaceStore, image_class: type[Widget]) -> None:
        super().__init__()
        self.store = store
        self.image_class = image_class

    def on_mount(self) -> None:
        self.sub_title = self.store.describe()
        self.push_screen(StoredFacesScreen(self.store, self.image_class, closable=False))
