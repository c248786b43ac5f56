"""The monitor at fleet scale, for `bench/scale.py`: `python -m bench.scale_monitor INVENTORY
KEYS` runs the monitor against the fleet the inventory names (headless, as Textual's tests
run an app), waits until every node's heartbeats are in, then presses KEYS view keys while faces
arrive and prints one JSON line: the time from each key press (put into the app's queue as
the terminal would) until its view is the one shown, and the process's resident memory before
and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from textual.widgets import TabbedContent

from facefleet_monitor.app import TABS, MonitorApp, image_widget_class
from facefleet_monitor.cli import add_arguments
from facefleet_monitor.config import config_from_args

#: The views a person switches between, in the order pressed.
VIEW_KEYS = ("1", "2", "3", "4")  # the views of TABS, in order
SIZE = (160, 48)
#: Every node's heartbeats are retained at the broker: they arrive within seconds.
SEEN_TIMEOUT_S = 120
KEY_TIMEOUT_S = 60


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


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
        tabs = app.query_one("#tabs", TabbedContent)
        latencies = []
        for n in range(keys):
            key = VIEW_KEYS[n % len(VIEW_KEYS)]
            view = TABS[VIEW_KEYS.index(key)]
            if tabs.active == view:
                continue
            t0 = time.monotonic()
            app.simulate_key(key)  # as the terminal delivers it, into the app's queue
            while tabs.active != view:
                if time.monotonic() - t0 > KEY_TIMEOUT_S:
                    raise TimeoutError(f"key {key}: no {view} view after {KEY_TIMEOUT_S} s")
                await asyncio.sleep(0.005)
            latencies.append(time.monotonic() - t0)
            await asyncio.sleep(0.2)  # (Pilot.pause waits for an idle screen: never, here)
        return {
            "nodes_expected": len(expected),
            "nodes_seen": len(expected & seen()),
            "all_seen_s": round(seen_s, 1),
            "key_ms": [round(1000 * s, 1) for s in latencies],
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
