"""`make flaky-loop`: run the tests that were seen to fail now and then, many times in a row.

usage: python -m tests.flaky_loop [--runs N] [TEST_PATH ...]

Each run is a fresh pytest process. The output of every failing run is kept in
build/flaky/run-<N>.log, and the end prints how often each test failed; the exit status is 1
when any run failed. The point is to find causes and fix them, not to retry them away.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "flaky"
#: The monitor, fleet-status and relay tests: the ones a red run was blamed on.
DEFAULT_TESTS = (
    "tests/tui/test_monitor_app.py",
    "tests/tui/test_monitor_snapshots.py",
    "tests/tui/test_store_view.py",
    "tests/pipeline/test_fleet_status.py",
    "tests/pipeline/test_relay.py",
)


def failed_tests(junit: Path) -> list[str]:
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return ["(no report: pytest did not finish)"]
    return [
        f"{case.get('classname')}::{case.get('name')}"
        for case in root.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.flaky_loop", description=__doc__)
    parser.add_argument("--runs", type=int, default=20, help="how many runs (default 20)")
    parser.add_argument("tests", nargs="*", default=list(DEFAULT_TESTS), help="test paths")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("run-*.log"):
        old.unlink()
    failures: Counter[str] = Counter()
    bad_runs = 0
    for number in range(1, args.runs + 1):
        junit = OUT / "junit.xml"
        junit.unlink(missing_ok=True)
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             f"--junitxml={junit}", *args.tests],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        seconds = time.monotonic() - started
        failed = failed_tests(junit) if result.returncode != 0 else []
        if result.returncode != 0:
            bad_runs += 1
            failures.update(failed or [f"(pytest exit {result.returncode})"])
            log = OUT / f"run-{number}.log"
            log.write_text(result.stdout + result.stderr)
            print(f"run {number}/{args.runs}: FAILED in {seconds:.0f} s ({log}): {failed}")
        else:
            print(f"run {number}/{args.runs}: passed in {seconds:.0f} s", flush=True)
    print(f"\n{args.runs - bad_runs} of {args.runs} runs passed")
    for test, count in failures.most_common():
        print(f"  {count}x {test}")
    return 1 if bad_runs else 0


if __name__ == "__main__":
    sys.exit(main())
