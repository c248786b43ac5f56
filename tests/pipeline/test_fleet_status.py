"""`facefleet fleet status` against a real cloud mosquitto (TLS, client certificates, ACL).

Devices publish retained heartbeats with their own certificates; the command reads them with
the monitor identity named by an inventory, as an operator (or the rollout's health gate) would.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from facefleet.contract import utc_timestamp
from facefleet.localbroker import LocalBroker
from tests.helpers import cloud_inventory, fleet_status
from tests.support import Publisher
from tests.tui.tui_helpers import status_body

pytestmark = [pytest.mark.broker]

EDGE_SERVICES = ("detector", "logger", "forwarder")


@pytest.fixture
def inventory(cloud_broker: LocalBroker, tmp_path: Path) -> Path:
    return cloud_inventory(cloud_broker, tmp_path / "hosts.yml")


@pytest.fixture
def devices(cloud_broker: LocalBroker) -> Iterator[dict[str, Publisher]]:
    publishers = {
        name: Publisher(cloud_broker.settings_for(name), client_id=name)
        for name in ("cam1", "cam2", "cloud1")
    }
    yield publishers
    for publisher in publishers.values():
        publisher.close()


def heartbeat(
    devices: dict[str, Publisher],
    node: str,
    service: str,
    version: str = "1.0",
    ts: str | None = None,
    **figures: Any,
) -> None:
    """A retained heartbeat of `service` on `node`, published with the node's certificate;
    a 60 s interval unless given, so that a slow machine does not make it stale mid-test."""
    figures = {"interval_s": 60.0, **figures}
    if service == "detector":
        figures = {"fps": 24.0, "frames": 500, **figures}
    body = status_body(node, service, version=version, ts=ts or utc_timestamp(), **figures)
    devices[node].status(node, service, body)
    devices[node].flush()


def test_every_node_listed_and_unhealthy_ones_fail(
    inventory: Path, devices: dict[str, Publisher]
) -> None:
    jetson = {"arch": "aarch64", "os": "Debian GNU/Linux 11 (bullseye)", "python": "3.9.2"}
    for service in EDGE_SERVICES:
        extra = {"opencv": "4.6.0"} if service == "detector" else {}
        heartbeat(devices, "cam1", service, platform={**jetson, **extra})
    heartbeat(devices, "cloud1", "processor")
    result = fleet_status(inventory, "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    nodes = {n["node"]: n for n in report["nodes"]}
    assert list(nodes) == ["cam1", "cam2", "cloud1"]
    assert nodes["cam1"]["healthy"] and nodes["cloud1"]["healthy"]
    assert not nodes["cam2"]["healthy"]
    assert {s: v["state"] for s, v in nodes["cam2"]["services"].items()} == dict.fromkeys(
        EDGE_SERVICES, "never seen"
    )
    assert nodes["cam1"]["services"]["detector"]["version"] == "1.0"
    shown = "aarch64, Debian GNU/Linux 11 (bullseye), Python 3.9.2, OpenCV 4.6.0"
    assert nodes["cam1"]["platform"] == shown
    assert nodes["cloud1"]["platform"] == ""  # a heartbeat without it (an older release)
    assert not report["healthy"]

    table = fleet_status(inventory)
    assert table.returncode == 1
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["NODE", "KIND"]
    row = {line.split()[0]: line for line in lines[1:4]}
    assert set(row) == {"cam1", "cam2", "cloud1"}
    assert row["cam1"].endswith("ok") and "online 1.0" in row["cam1"]
    assert f"  {shown}  " in row["cam1"]
    assert "detector never reported" in row["cam2"]
    assert lines[-2] == "3 nodes, 1 unhealthy"
    # the PKI directory of cloud_inventory holds the CA, broker and monitor certificates
    assert lines[-1] == "certificates: ca 3649d, broker 824d, monitor 824d"

    heartbeat(devices, "cam2", "detector")
    heartbeat(devices, "cam2", "logger")
    heartbeat(devices, "cam2", "forwarder")
    assert fleet_status(inventory).returncode == 0


def test_version_state_staleness_and_frames(inventory: Path, devices: dict[str, Publisher]) -> None:
    cam2 = devices["cam2"]
    for service in EDGE_SERVICES:
        heartbeat(devices, "cam1", service, version="2.0+b")
        heartbeat(devices, "cam2", service)
    both = "--limit", "cam1,cam2"
    assert fleet_status(inventory, *both).returncode == 0
    wrong = fleet_status(inventory, *both, "--expect-version", "2.0+b")
    assert wrong.returncode == 1
    assert "cam2" in wrong.stdout and "detector runs 1.0, expected 2.0+b" in wrong.stdout
    assert fleet_status(inventory, "--limit", "cam1", "--expect-version", "2.0+b").returncode == 0

    heartbeat(devices, "cam2", "detector", fps=0.0)
    assert "detector produces no frames" in fleet_status(inventory, "--limit", "cam2").stdout
    cam2.status("cam2", "logger", status_body("cam2", "logger", state="stopped"))
    cam2.flush()
    old = utc_timestamp(datetime.now(timezone.utc) - timedelta(seconds=60))
    heartbeat(devices, "cam2", "forwarder", ts=old, interval_s=5.0)  # stale after 15 s
    report = json.loads(fleet_status(inventory, "--limit", "cam2", "--json").stdout)
    problems = report["nodes"][0]["problems"]
    assert problems[:2] == ["detector produces no frames", "logger stopped"]
    assert problems[2].startswith("forwarder stale (") and len(problems) == 3
    assert report["nodes"][0]["services"]["forwarder"]["state"] == "stale"


def test_wait_returns_once_healthy_and_fails_at_the_deadline(
    inventory: Path, devices: dict[str, Publisher]
) -> None:
    for service in EDGE_SERVICES:
        heartbeat(devices, "cam1", service, version="1.0")
    gate = "--limit", "cam1", "--expect-version", "2.0", "--json"

    # the upgrade lands while the gate waits: the gate passes as soon as it sees it
    upgrade = threading.Timer(
        2.0, lambda: [heartbeat(devices, "cam1", s, version="2.0") for s in EDGE_SERVICES]
    )
    upgrade.start()
    try:
        passed = fleet_status(inventory, *gate, "--wait", "60")
    finally:
        upgrade.join()
    assert passed.returncode == 0, passed.stdout
    assert json.loads(passed.stdout)["waited_s"] < 60

    failed = fleet_status(inventory, "--limit", "cam1", "--expect-version", "3.0", "--wait", "3")
    assert failed.returncode == 1
    assert "detector runs 2.0, expected 3.0" in failed.stdout


def test_bad_usage_is_one_line(inventory: Path, tmp_path: Path) -> None:
    unknown = fleet_status(inventory, "--limit", "cam9")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == [
        "facefleet fleet: config error: --limit: not in the inventory's edge or cloud groups: "
        "['cam9']"
    ]
    no_pki = fleet_status(inventory, "--pki-dir", str(tmp_path / "nowhere"))
    assert no_pki.returncode == 2
    assert len(no_pki.stderr.strip().splitlines()) == 1
    assert "ca.crt: not found" in no_pki.stderr


def test_a_certificate_within_the_renewal_window_fails_the_gate(
    inventory: Path, devices: dict[str, Publisher]
) -> None:
    """The health gate is `fleet status --wait`: a host whose certificate expires within the
    inventory's facefleet_pki_renew_days fails it, one outside passes."""
    soon = utc_timestamp(datetime.now(timezone.utc) + timedelta(days=10, hours=1))
    for service in EDGE_SERVICES:
        heartbeat(devices, "cam1", service, cert_expires=soon if service == "forwarder" else None)
    gate = fleet_status(inventory, "--limit", "cam1", "--wait", "3", "--json")
    assert gate.returncode == 1, gate.stdout + gate.stderr
    node = json.loads(gate.stdout)["nodes"][0]
    assert node["problems"] == [f"forwarder certificate expires in 10 days ({soon[:10]})"]
    assert node["certificate"] == {"expires": soon, "days_left": 10, "from": "heartbeat"}
    assert " 10d " in fleet_status(inventory, "--limit", "cam1").stdout

    narrow = inventory.read_text().replace("vars:", "vars:\n    facefleet_pki_renew_days: 7", 1)
    inventory.write_text(narrow)
    assert fleet_status(inventory, "--limit", "cam1", "--wait", "3").returncode == 0
