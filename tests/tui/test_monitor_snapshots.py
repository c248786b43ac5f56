"""SVG snapshots of each view, fed by a real mosquitto, with a frozen clock and no blinking
cursor. Review the report (`pytest --snapshot-report`) before `--snapshot-update`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from facefleet.localbroker import LocalBroker
from facefleet_monitor.app import MonitorApp, image_widget_class
from facefleet_monitor.config import MonitorConfig
from tests.support import Publisher
from tests.tui.scenario import BAD, EXPECTED, LISTED_FACES, STATUSES, publish_live, publish_retained
from tests.tui.tui_helpers import frozen_clock, wait_until

pytestmark = pytest.mark.broker
SIZE = (150, 40)


@pytest.fixture
def fleet(edge_broker: LocalBroker) -> Iterator[tuple[MonitorApp, Publisher]]:
    pub = Publisher(edge_broker.settings_for())
    publish_retained(pub)
    # no timer ticks during the test: alerts are evaluated once, after every message arrived,
    # so the alert log's order does not depend on how ticks fell between messages
    config = MonitorConfig(
        mqtt=edge_broker.settings_for(), expected=EXPECTED, label="test broker", refresh_hz=0.01
    )
    app = MonitorApp(
        config, clock=frozen_clock, image_class=image_widget_class("halfcell"), cursor_blink=False
    )
    yield app, pub
    pub.close()


def before(app: MonitorApp, pub: Publisher, *keys: str, node: str | None = None) -> Any:
    async def run_before(pilot: Any) -> None:
        model = app.model

        async def applied(n: int) -> None:
            await wait_until(pilot, lambda: model.counters.statuses >= n, what=f"{n} statuses")

        await wait_until(pilot, lambda: model.connection.state == "connected")
        await publish_live(pub, applied)
        await wait_until(
            pilot,
            lambda: (
                model.counters.faces >= LISTED_FACES
                and model.counters.errors >= BAD
                and model.counters.statuses >= STATUSES
            ),
            what="the scenario",
        )
        model.evaluate()
        if node:
            app.show_node(node)
        await pilot.press(*keys)
        if "2" in keys:
            thumbnail = app.query_one("#thumbnail")
            await wait_until(pilot, lambda: thumbnail.image is not None, what="thumbnail")
        app.redraw(force=True)
        await pilot.pause(0.2)

    return run_before


def test_fleet_view(fleet: tuple[MonitorApp, Publisher], snap_compare: Any) -> None:
    app, pub = fleet
    assert snap_compare(app, terminal_size=SIZE, run_before=before(app, pub, "1"))


def test_detections_view(fleet: tuple[MonitorApp, Publisher], snap_compare: Any) -> None:
    app, pub = fleet
    assert snap_compare(app, terminal_size=SIZE, run_before=before(app, pub, "2"))


def test_node_view(fleet: tuple[MonitorApp, Publisher], snap_compare: Any) -> None:
    app, pub = fleet
    assert snap_compare(app, terminal_size=SIZE, run_before=before(app, pub, node="cam2"))


def test_alerts_view(fleet: tuple[MonitorApp, Publisher], snap_compare: Any) -> None:
    app, pub = fleet
    assert snap_compare(app, terminal_size=SIZE, run_before=before(app, pub, "4"))


SMALL = (80, 24)


@pytest.mark.parametrize(
    ("view", "keys", "node"),
    [
        ("fleet", ("1",), None),
        ("detections", ("2",), None),
        ("node", (), "cam2"),
        ("alerts", ("4",), None),
        ("help", ("question_mark",), None),
    ],
)
def test_every_view_at_80x24(
    fleet: tuple[MonitorApp, Publisher],
    snap_compare: Any,
    view: str,
    keys: tuple[str, ...],
    node: str | None,
) -> None:
    """The smallest usual terminal: node and service states visible in the fleet table (the
    rest scrolls sideways), the footer's keys readable, the help screen whole."""
    app, pub = fleet
    assert snap_compare(app, terminal_size=SMALL, run_before=before(app, pub, *keys, node=node))
