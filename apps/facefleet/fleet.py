"""`facefleet fleet status`: every node of an inventory as the cloud broker sees it.

One line per node with each expected service's state and version, taken from the retained
heartbeats on the cloud broker (read with the monitor's read-only identity). Nodes that never
reported are listed too. A service is healthy when it reports `online`, its heartbeat is not
stale (older than three intervals by this machine's clock), its version is the expected one
(`--expect-version`), for the detector, frames are flowing (`fps` > 0), its certificate does not
expire within the renewal window (`facefleet_pki_renew_days`), and no second device uses its
identity. A node revoked or decommissioned in the PKI directory (`facefleet pki revoke`,
playbooks/decommission.yml) is shown as such and not expected to report. The CERT column shows
the days left of the certificate the node's services report (or, when none reported, of its
certificate in the PKI directory: an expired one is refused by the broker). `--wait` keeps
watching until everything is healthy or the time is up: the rollout's health gate. A last line
shows the days left of the CA, broker and monitor certificates in the PKI directory, with
"renew: run site.yml" within their renewal window.

Exit status: 0 healthy, 1 something unhealthy or the broker unreachable, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facefleet import pki
from facefleet.config import ConfigError
from facefleet.contract import SERVICES, SERVICES_BY_KIND, Status, platform_summary, utc_timestamp
from facefleet.health import (
    Heard,
    StatusWatch,
    certificate_days,
    certificate_problem,
    certificate_text,
    clone_problem,
    inventory_watcher_settings,
    problem,
    state,
)
from facefleet.inventory import InventoryInfo, load_inventory
from facefleet.mqtt import MqttSettings
from facefleet.pki import CA_RENEW_DAYS, CERT_RENEW_DAYS, not_after
from facefleet.service import setup_logging

EXIT_UNHEALTHY = 1
#: Without --wait: the broker's replay of the retained heartbeats is over once none came for
#: this long (a thousand devices' 3,000 took longer than a fixed 2 s window, and their nodes
#: were reported as never seen), or at most RETAINED_MAX_S after the subscription.
RETAINED_QUIET_S = 2.0
RETAINED_MAX_S = 60.0
CONNECT_TIMEOUT_S = 10.0
#: With --wait: how often the fleet is judged again while heartbeats come in.
EVALUATE_EVERY_S = 0.5


@dataclass
class NodeHealth:
    """One node: the state and last heartbeat of each expected service, and what is wrong."""

    node: str
    kind: str
    services: dict[str, Status] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: set when the node is revoked or decommissioned: it is not expected to report
    revoked: pki.NodeState | None = None
    #: when the node's certificate expires, and whose word that is: "heartbeat" (what the
    #: host presents) or "pki" (the controller's copy, when no service reported one)
    cert_expires: str | None = None
    cert_from: str | None = None
    cert_days: float | None = None

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def verdict(self) -> str:
        """The HEALTH column."""
        if self.revoked is not None:
            state = self.revoked
            why = (
                f"{state.abandoned} faces abandoned"
                if state.state == "decommissioned"
                else state.reason
            )
            return f"{state.state} since {state.since} ({why})"
        return "ok" if self.healthy else "; ".join(self.problems)

    @property
    def platform(self) -> str:
        """Architecture, OS, Python and OpenCV as the services' heartbeats tell them."""
        return platform_summary(self.services.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "kind": self.kind,
            "healthy": self.healthy,
            "revoked": self.revoked.as_json() if self.revoked else None,
            "platform": self.platform,
            "problems": self.problems,
            "certificate": (
                {
                    "expires": self.cert_expires,
                    "days_left": int(self.cert_days) if self.cert_days is not None else None,
                    "from": self.cert_from,
                }
                if self.cert_expires
                else None
            ),
            "services": {
                service: {**self._body(service), "state": self.states[service]}
                for service in SERVICES_BY_KIND[self.kind]
            },
        }

    def _body(self, service: str) -> dict[str, Any]:
        status = self.services.get(service)
        return dict(json.loads(status.encode())) if status else {}


def evaluate(
    nodes: dict[str, str],
    seen: dict[tuple[str, str], Heard],
    expect_version: str | None,
    now: float | None = None,
    refused: dict[str, pki.NodeState] | None = None,
    *,
    warn_days: float = CERT_RENEW_DAYS,
    issued: dict[str, str] | None = None,
) -> list[NodeHealth]:
    """Health of every node (inventory order) from the last heartbeat of each service; a
    `refused` node (revoked or decommissioned) has no problems: it is not expected to report;
    `issued`: when each node's certificate in the PKI directory expires (UTC timestamps)."""
    now = time.time() if now is None else now
    refused = refused or {}
    report = []
    for node, kind in nodes.items():
        health = NodeHealth(node, kind, revoked=refused.get(node))
        for service in SERVICES_BY_KIND[kind]:
            heard = seen.get((node, service))
            if heard is not None:
                health.services[service] = heard.status
                if heard.status.cert_expires and health.cert_from is None:
                    health.cert_expires, health.cert_from = heard.status.cert_expires, "heartbeat"
            health.states[service] = state(heard, now)
            for wrong in (
                problem(service, heard, now, expect_version),
                certificate_problem(service, heard, now, warn_days),
                clone_problem(node, service, heard, now),
            ):
                if wrong and health.revoked is None:
                    health.problems.append(wrong)
        if health.cert_from is None and (issued or {}).get(node):
            health.cert_expires, health.cert_from = (issued or {})[node], "pki"
        if health.cert_expires:
            health.cert_days = certificate_days(
                Status("online", "", node, cert_expires=health.cert_expires), now
            )
        if (
            health.revoked is None
            and health.cert_from == "pki"
            and health.cert_days is not None
            and health.cert_days < 0
        ):
            # the host cannot connect with it, so no service reports it
            health.problems.append(
                f"certificate {certificate_text(health.cert_days, health.cert_expires or '')}: "
                "the broker refuses it"
            )
        report.append(health)
    return report


def issued_certificates(pki_dir: Path | None, nodes: dict[str, str]) -> dict[str, str]:
    """When each node's certificate in the controller's PKI directory expires."""
    found = {}
    for node in nodes:
        expires = not_after(pki_dir / f"{node}.crt") if pki_dir else None
        if expires is not None:
            found[node] = utc_timestamp(expires)
    return found


def complete(
    nodes: dict[str, str],
    seen: dict[tuple[str, str], Heard],
    refused: dict[str, pki.NodeState] | None = None,
) -> bool:
    """Every expected service of every node has reported at least once in `seen` (a snapshot:
    judged on the same heartbeats as the report made from it)."""
    return all(
        (node, service) in seen
        for node, kind in nodes.items()
        if node not in (refused or {})
        for service in SERVICES_BY_KIND[kind]
    )


def watch(
    settings: MqttSettings,
    prefix: str,
    nodes: dict[str, str],
    expect_version: str | None,
    wait_s: float,
    refused: dict[str, pki.NodeState] | None = None,
    *,
    warn_days: float = CERT_RENEW_DAYS,
    issued: dict[str, str] | None = None,
) -> list[NodeHealth]:
    """The fleet's health now, or (wait_s > 0) as soon as it is healthy within wait_s."""
    started = time.monotonic()
    with StatusWatch(settings, prefix, nodes) as status:
        if not status.subscribed.wait(max(wait_s, CONNECT_TIMEOUT_S)) or status.refused:
            reason = status.refused or "no answer"
            raise ConnectionError(f"cannot reach the cloud broker at {settings.address}: {reason}")
        replay_ends = time.monotonic() + RETAINED_MAX_S
        deadline = started + wait_s
        # fewer heartbeats than expected services: not complete (without reading every node)
        expected = sum(
            len(SERVICES_BY_KIND[kind])
            for node, kind in nodes.items()
            if node not in (refused or {})
        )
        while True:
            seen = status.snapshot()
            now = time.monotonic()
            replayed = (
                (len(seen) >= expected and complete(nodes, seen, refused))
                or now - status.retained_at >= RETAINED_QUIET_S
                or now >= replay_ends
            )
            # judged once the retained heartbeats are in (a judgement reads every node's),
            # then (--wait) every EVALUATE_EVERY_S until healthy or the deadline
            if replayed or (wait_s > 0 and now >= deadline):
                report = evaluate(
                    nodes, seen, expect_version, refused=refused, warn_days=warn_days, issued=issued
                )
                if wait_s <= 0 or now >= deadline or all(h.healthy for h in report):
                    return report
                time.sleep(max(0.0, min(EVALUATE_EVERY_S, deadline - time.monotonic())))
                continue
            status.changed.clear()
            status.changed.wait(EVALUATE_EVERY_S)


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
    header = ["NODE", "KIND", *(s.upper() for s in services), "CERT", "PLATFORM", "HEALTH"]
    rows = [header]
    for health in report:
        cells = [health.node, health.kind]
        for service in services:
            if service not in SERVICES_BY_KIND[health.kind]:
                cells.append("-")
                continue
            status = health.services.get(service)
            version = status.version if status and status.version else ""
            cells.append(f"{health.states[service]} {version}".strip())
        cells.append(cert_cell(health))
        cells.append(health.platform or "-")
        cells.append(health.verdict)
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in rows
    ]
    unhealthy = sum(not h.healthy for h in report)
    summary = f"{len(report)} nodes, " + (f"{unhealthy} unhealthy" if unhealthy else "all healthy")
    for kind in ("revoked", "decommissioned"):
        count = sum(h.revoked is not None and h.revoked.state == kind for h in report)
        if count:
            summary += f", {count} {kind}"
    lines.append(summary)
    return "\n".join(line.rstrip() for line in lines)


def fleet_certificates(
    pki_dir: Path | None,
    monitor: str,
    warn_days: float,
    ca_warn_days: float = CA_RENEW_DAYS,
    now: float | None = None,
    *,
    managed_broker: bool = True,
) -> dict[str, dict[str, Any]]:
    """The fleet-wide certificates in the controller's PKI directory (the signing CA, the
    broker's, the monitor's): when each expires, days left, and whether it is within its
    renewal window (site.yml did not run since). An external broker's certificate is its
    operator's (site.yml does not renew it), so it is left out then."""
    now = time.time() if now is None else now
    found = {}
    windows = {"ca": ca_warn_days, "broker": warn_days, monitor: warn_days}
    if not managed_broker:
        del windows["broker"]
    for name, window in windows.items():
        expires = not_after(pki_dir / f"{name}.crt") if pki_dir else None
        if expires is None:
            continue
        days = (expires.timestamp() - now) / 86400
        found[name] = {
            "expires": utc_timestamp(expires),
            "days_left": int(days),
            "renew": days < window,
        }
    return found


def certificates_line(certificates: dict[str, dict[str, Any]]) -> str:
    """`certificates: ca 3649d, broker 824d, monitor 12d (renew: run site.yml)`."""
    parts = [
        f"{name} {'expired' if c['days_left'] < 0 else str(c['days_left']) + 'd'}"
        + (" (renew: run site.yml)" if c["renew"] else "")
        for name, c in certificates.items()
    ]
    return "certificates: " + ", ".join(parts) if parts else ""


def cert_cell(health: NodeHealth) -> str:
    """Days left of the node's certificate (`812d`; `*` marks the PKI directory's copy)."""
    if health.cert_days is None:
        return "-"
    text = "expired" if health.cert_days < 0 else f"{int(health.cert_days)}d"
    return text + ("*" if health.cert_from == "pki" else "")


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
        help="watch until everything is healthy, at most this long (default: report once the "
        "broker has replayed the retained heartbeats)",
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
    settings = inventory_watcher_settings(info, args.pki_dir)
    pki_dir = args.pki_dir or info.pki_dir
    refused = pki.node_states(pki_dir) if pki_dir is not None else {}
    certificates = fleet_certificates(
        pki_dir,
        info.identity,
        info.renew_days,
        info.ca_renew_days,
        managed_broker=info.broker_ca_file is None,
    )
    started = time.monotonic()
    try:
        report = watch(
            settings,
            info.prefix,
            nodes,
            args.expect_version,
            args.wait,
            refused,
            warn_days=info.renew_days,
            issued=issued_certificates(pki_dir, nodes),
        )
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
                    "certificates": certificates,
                },
                indent=2,
            )
        )
    else:
        print(format_table(report))
        if certificates:
            print(certificates_line(certificates))
    return 0 if healthy else EXIT_UNHEALTHY
