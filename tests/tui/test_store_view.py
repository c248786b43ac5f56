"""Pilot tests of the stored-faces view (`facefleet monitor --store`) on a directory store the
processor's filesystem sink filled; deletions go through the store and leave their record."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from textual.widgets import DataTable

from facefleet.contract import FaceMeta, utc_timestamp
from facefleet.facestore import DirectoryStore, FaceFilter
from facefleet.localbroker import LocalBroker
from facefleet.processor.sinks import FilesystemSink
from facefleet_monitor.app import MonitorApp, image_widget_class
from facefleet_monitor.config import MonitorConfig
from facefleet_monitor.store_view import ConfirmDelete, StoredFacesApp, StoredFacesScreen
from tests.support import face_meta, jpeg_bytes
from tests.tui.tui_helpers import async_test, screen_text, wait_until

SIZE = (150, 40)
NOW = datetime.now(timezone.utc)


def filled_store(root: Path) -> dict[str, list[FaceMeta]]:
    sink = FilesystemSink(root)
    metas: dict[str, list[FaceMeta]] = {"cam-a": [], "cam-b": []}
    for i in range(5):
        node = "cam-a" if i < 3 else "cam-b"
        payload = jpeg_bytes(seed=i)
        meta = face_meta(node, payload, ts=utc_timestamp(NOW - timedelta(hours=i)))
        assert sink.store(meta, payload)
        metas[node].append(meta)
    return metas


def stored_ids(root: Path) -> set[str]:
    return {face.id for face in DirectoryStore(root).faces(FaceFilter())}


def records(root: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted((root / "deletions").rglob("*.json"))]


def make_app(root: Path) -> StoredFacesApp:
    return StoredFacesApp(DirectoryStore(root), image_widget_class("halfcell"))


@async_test
async def test_stored_faces_by_node_with_thumbnail_and_confirmed_deletion(tmp_path: Path) -> None:
    metas = filled_store(tmp_path)
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, StoredFacesScreen), what="screen")
        screen = app.screen
        assert isinstance(screen, StoredFacesScreen)
        table = screen.query_one("#stored-table", DataTable)
        await wait_until(pilot, lambda: table.row_count == 5, what="5 rows")
        text = screen_text(app)
        assert "5 faces: cam-a 3, cam-b 2" in text
        # newest first within a node
        assert [face.id for face in screen.faces[:3]] == [m.id for m in metas["cam-a"]]
        thumbnail = screen.query_one("#stored-thumbnail")
        await wait_until(
            pilot, lambda: getattr(thumbnail, "image", None) is not None, what="a thumbnail"
        )

        await pilot.press("d")  # the selected face (first row): asks first
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDelete), what="confirm")
        assert f"Delete face {metas['cam-a'][0].id} of cam-a?" in screen_text(app)
        await pilot.press("n")
        await wait_until(pilot, lambda: app.screen is screen, what="back")
        assert len(stored_ids(tmp_path)) == 5
        assert records(tmp_path) == []

        await pilot.press("d")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDelete), what="confirm")
        await pilot.press("y")
        await wait_until(pilot, lambda: table.row_count == 4, what="4 rows")
        assert metas["cam-a"][0].id not in stored_ids(tmp_path)
        assert records(tmp_path)[0]["ids"] == [metas["cam-a"][0].id]

        await pilot.press("slash")
        await pilot.press(*"cam-b", "enter")
        await wait_until(pilot, lambda: table.row_count == 2, what="the cam-b rows")
        await pilot.press("D")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDelete), what="confirm")
        assert "Delete all 2 listed faces (node cam-b)?" in screen_text(app)
        await pilot.press("y")
        await wait_until(pilot, lambda: table.row_count == 0, what="cam-b gone")
        assert stored_ids(tmp_path) == {m.id for m in metas["cam-a"][1:]}
        last = max(records(tmp_path), key=lambda r: int(str(r["count"])))
        assert last["criteria"] == {"node": "cam-b", "by": "monitor"}
        assert last["count"] == 2


@async_test
async def test_the_stored_faces_table_has_the_keys_as_the_view_appears(
    edge_broker: LocalBroker, tmp_path: Path
) -> None:
    """An escape pressed right after `f` goes back, on a busy machine too: the table, not the
    filter, has the focus the moment the view is there (CI once saw the escape only leave the
    filter, which Textual focuses first, because the table's focus came later)."""
    config = MonitorConfig(mqtt=edge_broker.settings_for(), label="test broker")
    store = DirectoryStore(tmp_path)
    app = MonitorApp(config, image_class=image_widget_class("halfcell"), store=store)
    async with app.run_test(size=SIZE):
        screen = StoredFacesScreen(store, app.image_class)
        await app.push_screen(screen)
        assert screen.focused is screen.query_one("#stored-table")


@async_test
async def test_live_monitor_offers_stored_faces_only_with_a_store(
    edge_broker: LocalBroker, tmp_path: Path
) -> None:
    filled_store(tmp_path)
    config = MonitorConfig(mqtt=edge_broker.settings_for(), label="test broker")
    image_class = image_widget_class("halfcell")
    plain = MonitorApp(config, image_class=image_class, cursor_blink=False)
    async with plain.run_test(size=SIZE) as pilot:
        await pilot.press("f")
        await pilot.pause(0.2)
        assert not isinstance(plain.screen, StoredFacesScreen)
        assert "Stored" not in screen_text(plain)
    with_store = MonitorApp(
        config, image_class=image_class, cursor_blink=False, store=DirectoryStore(tmp_path)
    )
    async with with_store.run_test(size=SIZE) as pilot:
        await pilot.press("f")
        await wait_until(
            pilot, lambda: isinstance(with_store.screen, StoredFacesScreen), what="stored view"
        )
        await pilot.press("escape")
        await wait_until(
            pilot, lambda: not isinstance(with_store.screen, StoredFacesScreen), what="back"
        )
