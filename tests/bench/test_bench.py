"""Smoke test of the benchmark harness: `python -m bench --quick` with tiny sizes, so the
harness cannot rot. It checks the outputs and the results interface, not the speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bench.cli import REQUIRED_KEYS

from facefleet.shared import YUNET_MODEL
from tests.helpers import require_shared
from tests.support import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.s3, pytest.mark.shared]


def lookup(results: dict[str, object], dotted: str) -> object:
    value: object = results
    for part in dotted.split("."):
        assert isinstance(value, dict) and part in value, f"results.json lacks {dotted}"
        value = value[part]
    return value


def test_quick_bench_writes_every_output(tmp_path: Path) -> None:
    require_shared("models", YUNET_MODEL)
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ},
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "[bench " in run.stdout  # progress lines while it runs
    results = json.loads((tmp_path / "results.json").read_text())
    for key in REQUIRED_KEYS:
        value = lookup(results, key)
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
    assert results["machine"] and isinstance(results["machine"], str)
    assert results["errors"] == {}
    # ground truth of the synthetic scene: the default mode misses nobody, and the homework's
    # every-frame PNG mode costs more bytes per person
    assert lookup(results, "uplink.persons_missed.default") == 0
    assert lookup(results, "uplink.bytes_per_person.homework") > lookup(  # type: ignore[operator]
        results, "uplink.bytes_per_person.default"
    )
    assert lookup(results, "forwarder.lost_in_outage") == 0
    assert results["latency_ms"]["faces"] > 0
    assert results["latency_ms"]["where"]
    table = (tmp_path / "results.md").read_text()
    assert "| measurement |" in table
    assert table.strip() in run.stdout  # the table is printed too
    for chart in ("detector.png", "latency.png", "scaling.png"):
        assert (tmp_path / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", chart


SCALE_KEYS = (
    "scale.nodes",
    "scale.connect_s",
    "scale.reconnect_s",
    "scale.latency_ms.p50",
    "scale.latency_ms.p99",
    "scale.fleet_status_s",
    "scale.monitor_key_ms.p95",
    "scale.broker_rss_mb",
)


def test_quick_scale_section_measures_a_small_fleet(tmp_path: Path) -> None:
    """`--only scale --quick`: the fleet simulator against the real cloud side, end to end."""
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "scale", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["errors"] == {}
    for fleet in (results["scale"]["baseline"], results["scale"]["fleet"]):
        for key in ("connect_storm_s", "reconnect_after_restart_s", "fleet_status_s"):
            assert isinstance(lookup(fleet, key), float), key
        assert lookup(fleet, "latency_ms.faces") > 0  # type: ignore[operator]
        assert fleet["fleet_status_healthy"] == fleet["nodes"] + 2  # the devices + 2 processors
        monitor = fleet["monitor"]
        assert "error" not in monitor, monitor
        assert monitor["nodes_seen"] == monitor["nodes_expected"] == fleet["nodes"] + 2
    for key in SCALE_KEYS:  # the interface outside checks read (issue #18)
        assert isinstance(lookup(results, key), int | float), key
    assert "connect storm s, 10 devices" in (tmp_path / "results.md").read_text()
