"""Measure the message rate the monitor keeps up with (real mosquitto, publisher process).

    .venv/bin/python -m tests.tui.measure_rate [RATE ...]
For each rate: publish for 5 s, print how long until the monitor had applied everything,
the longest redraw-timer gap, the worst key latency and the memory growth.
"""

from __future__ import annotations

import asyncio
import json
import sys

from facefleet.localbroker import LocalBroker
from tests.tui.test_monitor_app import run_load


def main() -> None:
    rates = [int(r) for r in sys.argv[1:]] or [500, 1000, 2000, 4000]
    for rate in rates:
        with LocalBroker("edge") as broker:
            result = asyncio.run(run_load(broker, rate, 5))
        print(json.dumps({k: round(v, 3) for k, v in result.items()}), flush=True)


if __name__ == "__main__":
    main()
