"""`facefleet fleet status`: every node of an inventory as the cloud broker sees it.

One line per node with each expected service's state and version, taken from the retained
heartbeats on the cloud broker (read with the monitor's read-only identity). Nodes that never
reported are listed too. A service is healthy when it reports `online`, its heartbeat is not
stale (older than three intervals by this machine's clock), its version is the expected one
(`--expect-version`) and, for the detector, frames are flowing (`fps` > 0). `--wait` keeps
watching until everything is healthy or the time is up: the rollout's health gate.

Exit status: 0 healthy, 1 something unhealthy or the broker unreachable, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from facefleet.config import ConfigError
from facefleet.contract import (
    SERVICES,
    SERVICES_BY_KIND,
    STALE_INTERVALS,
    all_status_filter,
    parse_status_body,
    parse_timestamp,
    parse_topic,
    platform_summary,
)
from facefleet.inventory import InventoryInfo, load_inventory
from facefleet.mqtt import MqttSettings, make_client, start
from facefleet.service import setup_logging

EXIT_UNHEALTHY = 1
#: Without --wait: how long retained heartbeats may take to arrive after the subscription.
RETAINED_WINDOW_S = 2.0
CONNECT_TIMEOUT_S = 10.0
MAX_STATUS_BYTES = 64 * 1024
NEVER = "never seen"
STALE = "stale"


@dataclass
class NodeHealth:
    """One node: the last heartbeat body of each expected service and what is wrong."""

    node: str
    kind: str
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    stale: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def state(self, service: str) -> str:
        body = self.services.get(service)
        if body is None:
            return NEVER
        return STALE if service in self.stale else str(body["state"])

    @property
    def platform(self) -> str:
        """Architecture, OS, Python and OpenCV as the services' heartbeats tell them."""
        return platform_summary(list(self.services.values()))

    def as_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "kind": self.kind,
            "healthy": self.healthy,
            "platform": self.platform,
            "problems": self.problems,
            "services": {
                service: {**self.services.get(service, {}), "state": self.state(service)}
                for service in SERVICES_BY_KIND[self.kind]
            },
        }


def service_problem(
    service: str, body: dict[str, Any] | None, expect_version: str | None, now: datetime
) -> tuple[str | None, bool]:
    """What is wrong with one service's last heartbeat (None: healthy), and whether it is stale."""
    if body is None:
        return f"{service} never reported", False
    if body["state"] != "online":
        return f"{service} {body['state']}", False
    interval = body.get("interval_s")
    try:
        age = (now - parse_timestamp(str(body.get("ts")))).total_seconds()
    except ValueError:
        return f"{service} heartbeat without a valid ts", False
    if interval and age > STALE_INTERVALS * float(interval):
        return f"{service} stale ({age:.0f} s without a heartbeat)", True
    version = body.get("version")
    if expect_version is not None and version != expect_version:
        return f"{service} runs {version}, expected {expect_version}", False
    if service == "detector" and not float(body.get("fps") or 0) > 0:
        return "detector produces no frames", False
    return None, False


def evaluate(
    nodes: dict[str, str],
    seen: dict[tuple[str, str], dict[str, Any]],
    expect_version: str | None,
    now: datetime | None = None,
) -> list[NodeHealth]:
    """Health of every node (inventory order) from the last heartbeat of each service."""
    now = now or datetime.now(timezone.utc)
    report = []
    for node, kind in nodes.items():
        health = NodeHealth(node, kind)
        for service in SERVICES_BY_KIND[kind]:
            body = seen.get((node, service))
            problem, stale = service_problem(service, body, expect_version, now)
            if body is not None:
                health.services[service] = body
            if stale:
                health.stale.add(service)
            if problem:
                health.problems.append(problem)
        report.append(health)
    return report


class StatusWatch:
    """A read-only client on the cloud broker that keeps the last heartbeat per service."""

    def __init__(self, settings: MqttSettings, prefix: str, nodes: dict[str, str]) -> None:
        self.settings = settings
        self.prefix = prefix
        self.nodes = nodes
        self.seen: dict[tuple[str, str], dict[str, Any]] = {}
        self.subscribed = threading.Event()
        self.refused: str | None = None
        self.changed = threading.Event()
        self._lock = threading.Lock()
        self.client = make_client(settings, f"facefleet-fleet-status-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None
    ) -> None:
        if reason.is_failure:
            self.refused = str(reason)
            self.changed.set()
            return
        client.subscribe(all_status_filter(self.prefix), qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        parsed = parse_topic(self.prefix, message.topic)
        if parsed is None or parsed[1] != "status" or parsed[0] not in self.nodes:
            return
        node, _kind, service = parsed
        if service not in SERVICES:
            return
        try:
            body = parse_status_body(node, service, bytes(message.payload), MAX_STATUS_BYTES)
        except ValueError:
            return  # the monitor shows malformed heartbeats; here they count as none
        with self._lock:
            self.seen[(node, service)] = body
        self.changed.set()

    def snapshot(self) -> dict[tuple[str, str], dict[str, Any]]:
        with self._lock:
            return dict(self.seen)

    def complete(self, seen: dict[tuple[str, str], dict[str, Any]]) -> bool:
        """Every expected service of every node has reported at least once in `seen` (a
        snapshot: judged on the same heartbeats as the report made from it)."""
        return all(
            (node, service) in seen
            for node, kind in self.nodes.items()
            for service in SERVICES_BY_KIND[kind]
        )

    def __enter__(self) -> StatusWatch:
        start(self.client, self.settings)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def watch(
    settings: MqttSettings,
    prefix: str,
    nodes: dict[str, str],
    expect_version: str | None,
    wait_s: float,
) -> list[NodeHealth]:
    """The fleet's health now, or (wait_s > 0) as soon as it is healthy within wait_s."""
    started = time.monotonic()
    with StatusWatch(settings, prefix, nodes) as status:
        if not status.subscribed.wait(max(wait_s, CONNECT_TIMEOUT_S)) or status.refused:
            reason = status.refused or "no answer"
            raise ConnectionError(f"cannot reach the cloud broker at {settings.address}: {reason}")
        settle = time.monotonic() + RETAINED_WINDOW_S
        deadline = started + wait_s
        while True:
            seen = status.snapshot()
            report = evaluate(nodes, seen, expect_version)
            now = time.monotonic()
            if wait_s > 0:
                if all(h.healthy for h in report) or now >= deadline:
                    return report
            elif status.complete(seen) or now >= settle:
                return report
            status.changed.clear()
            status.changed.wait(0.5)


def mqtt_settings(info: InventoryInfo, pki_dir: Path | None) -> MqttSettings:
    """The monitor's read-only identity on the cloud broker (certificates from the PKI dir)."""
    files = info.pki_files(pki_dir)
    return MqttSettings(
        host=info.broker_host,
        port=info.broker_port,
        tls=True,
        ca_file=str(files[0]),
        cert_file=str(files[1]),
        key_file=str(files[2]),
        keepalive_s=10,
        reconnect_min_s=1,
        reconnect_max_s=5,
    )


def select_nodes(info: InventoryInfo, limit: str | None) -> dict[str, str]:
    if not limit:
        return info.nodes
    names = [name.strip() for name in limit.split(",") if name.strip()]
    unknown = [name for name in names if name not in info.nodes]
    if unknown:
        raise ConfigError(f"--limit: not in the inventory's edge or cloud groups: {unknown}")
    return {name: info.nodes[name] for name in names}


def format_table(report: list[NodeHealth]) -> str:
    services = [s for s in SERVICES if any(s in SERVICES_BY_KIND[h.kind] for h in report)]
    header = ["NODE", "KIND", *(s.upper() for s in services), "PLATFORM", "HEALTH"]
    rows = [header]
    for health in report:
        cells = [health.node, health.kind]
        for service in services:
            if service not in SERVICES_BY_KIND[health.kind]:
                cells.append("-")
                continue
            body = health.services.get(service, {})
            cells.append(f"{health.state(service)} {body.get('version', '')}".strip())
        cells.append(health.platform or "-")
        cells.append("ok" if health.healthy else "; ".join(health.problems))
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in rows
    ]
    unhealthy = sum(not h.healthy for h in report)
    lines.append(
        f"{len(report)} nodes, all healthy"
        if not unhealthy
        else f"{len(report)} nodes, {unhealthy} unhealthy"
    )
    return "\n".join(line.rstrip() for line in lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="fleet_command", required=True, metavar="COMMAND")
    status = sub.add_parser(
        "status",
        help="each node's services, versions and states as the cloud broker sees them",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    status.add_argument("--inventory", "-i", required=True, help="Ansible inventory of the fleet")
    status.add_argument("--limit", help="only these nodes (comma-separated inventory names)")
    status.add_argument(
        "--expect-version", metavar="VERSION", help="a service running another version is unhealthy"
    )
    status.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="watch until everything is healthy, at most this long (default: report at once)",
    )
    status.add_argument(
        "--pki-dir", type=Path, help="certificates of the monitor identity (default: inventory)"
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_fleet(args: argparse.Namespace) -> int:
    if args.wait < 0:
        raise ConfigError("--wait must be 0 or more seconds")
    setup_logging("WARNING")  # quiets paho's reports of a closing connection
    info = load_inventory(Path(args.inventory))
    nodes = select_nodes(info, args.limit)
    settings = mqtt_settings(info, args.pki_dir)
    started = time.monotonic()
    try:
        report = watch(settings, info.prefix, nodes, args.expect_version, args.wait)
    except ConnectionError as exc:
        print(f"facefleet fleet status: {exc}")
        return EXIT_UNHEALTHY
    healthy = all(h.healthy for h in report)
    if args.json:
        print(
            json.dumps(
                {
                    "healthy": healthy,
                    "expect_version": args.expect_version,
                    "waited_s": round(time.monotonic() - started, 1),
                    "nodes": [h.as_json() for h in report],
                },
                indent=2,
            )
        )
    else:
        print(format_table(report))
    return 0 if healthy else EXIT_UNHEALTHY
