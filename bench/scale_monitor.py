"""The monitor at fleet scale, for `bench/scale.py`: `python -m bench.scale_monitor INVENTORY
KEYS` runs the monitor against the fleet the inventory names (headless, as Textual's tests
run an app), waits until every node's heartbeats are in, then presses KEYS keys of an
operator's round (every view, the fleet table's cursor, sort and filter) while faces arrive
and prints one JSON line: the time from each key press (put into the app's queue as the
terminal would) until the screen has been drawn with its effect, and the process's resident
memory before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from textual.widgets import TabbedContent

from facefleet_monitor.app import TABS, MonitorApp, image_widget_class
from facefleet_monitor.cli import add_arguments
from facefleet_monitor.config import config_from_args
from facefleet_monitor.table import RowTable
from facefleet_monitor.views import SORT_MODES, FleetView

#: The views a person switches between, in the order pressed.
VIEW_KEYS = ("1", "2", "3", "4")  # the views of TABS, in order
#: What the operator types into the fleet filter (the simulated devices are cam-NNNNN).
FILTER = "cam-001"
SIZE = (160, 48)
#: Every node's heartbeats are retained at the broker: they arrive within seconds.
SEEN_TIMEOUT_S = 120
KEY_TIMEOUT_S = 60


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def key_steps(app: MonitorApp) -> list[tuple[str, Callable[[], bool]]]:
    """An operator's round: each view in turn, then on the fleet view the cursor, the sort and
    a filter typed and cleared; each key with what shows that it took effect."""
    tabs = app.query_one("#tabs", TabbedContent)
    fleet = app.query_one(FleetView)
    table = fleet.query_one("#fleet-table", RowTable)

    def view(name: str) -> Callable[[], bool]:
        return lambda: tabs.active == name

    def cursor_at_least(row: int) -> Callable[[], bool]:
        return lambda: table.cursor_row >= row

    def filtered(text: str) -> Callable[[], bool]:
        def shown() -> bool:
            # a filter narrows the fleet table on the view's Changed message: the table shows it
            return fleet.filter_text == text and all(text in key for key in table.row_keys)

        return shown

    steps = [(key, view(name)) for key, name in zip(VIEW_KEYS, TABS, strict=True)][1:]
    steps.append((VIEW_KEYS[0], view(TABS[0])))
    steps += [("pagedown", cursor_at_least(1)), ("down", cursor_at_least(2))]
    sort_after = SORT_MODES[1]
    steps.append(("s", lambda: fleet.sort_mode == sort_after))
    steps.append(("slash", lambda: fleet.query_one("#fleet-filter").has_focus))
    typed = ""
    for char in FILTER:
        typed += char
        steps.append((char, filtered(typed)))
    while typed:
        typed = typed[:-1]
        steps.append(("backspace", filtered(typed)))
    steps.append(("escape", lambda: table.has_focus))
    sort_back = SORT_MODES[0]
    for mode in (*SORT_MODES[2:], sort_back):
        steps.append(("s", lambda mode=mode: fleet.sort_mode == mode))  # type: ignore[misc]
    return steps


async def press_keys(app: MonitorApp, keys: int) -> dict[str, list[float]]:
    """Press `keys` keys of the operator's round; per key, the seconds from the press until
    the screen showed its effect."""
    steps = key_steps(app)
    latencies: dict[str, list[float]] = {}
    for n in range(keys):
        key, took_effect = steps[n % len(steps)]
        refreshed = asyncio.Event()
        t0 = time.monotonic()
        app.simulate_key(key)  # as the terminal delivers it, into the app's queue
        while not took_effect():
            if time.monotonic() - t0 > KEY_TIMEOUT_S:
                raise TimeoutError(f"key {key}: no effect after {KEY_TIMEOUT_S} s")
            await asyncio.sleep(0.002)
        # ... and on the screen: the next refresh after the change has been drawn
        app.call_after_refresh(refreshed.set)
        await asyncio.wait_for(refreshed.wait(), KEY_TIMEOUT_S)
        latencies.setdefault(key, []).append(time.monotonic() - t0)
        await asyncio.sleep(0.2)  # (Pilot.pause waits for an idle screen: never, here)
    return latencies


async def measure(inventory: str, keys: int) -> dict[str, object]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args(["--inventory", inventory]))
    app = MonitorApp(config, image_class=image_widget_class("halfcell"), cursor_blink=False)
    async with app.run_test(size=SIZE):
        began = time.monotonic()
        expected = set(config.expected)

        def seen() -> set[str]:
            return {
                name
                for name, node in app.model.nodes.items()
                if node.services and all(s.seen_at is not None for s in node.services.values())
            }

        while not expected <= seen() and time.monotonic() - began < SEEN_TIMEOUT_S:
            await asyncio.sleep(0.5)
        seen_s = time.monotonic() - began
        rss_before = rss_mb()
        latencies = await press_keys(app, keys)
        every = [s for times in latencies.values() for s in times]
        return {
            "nodes_expected": len(expected),
            "nodes_seen": len(expected & seen()),
            "all_seen_s": round(seen_s, 1),
            "key_ms": [round(1000 * s, 1) for s in every],
            "key_ms_by_key": {k: [round(1000 * s, 1) for s in v] for k, v in latencies.items()},
            "faces_applied": app.model.counters.faces,
            "rss_mb_before": round(rss_before, 1),
            "rss_mb_after": round(rss_mb(), 1),
        }


def main() -> int:
    inventory, keys = sys.argv[1], int(sys.argv[2])
    print(json.dumps(asyncio.run(measure(inventory, keys))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
