"""Alert rules: which states and heartbeat figures make a problem worth showing (pure Python).

`FleetModel.evaluate` runs them on a timer, since staleness moves with the clock, and logs the
alerts that appear or clear."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from facefleet.contract import STALE_INTERVALS, DetectorFigures, ForwarderFigures, ProcessorFigures
from facefleet.health import NEVER, OFFLINE, STALE, STOPPED
from facefleet_monitor.events import ConnectionEvent
from facefleet_monitor.state import NodeStatus, ServiceStatus

ERROR, WARNING = "error", "warning"
#: How long a malformed message keeps its node's "bad messages" alert active.
BAD_MESSAGE_ALERT_S = 300.0


@dataclass(frozen=True)
class Alert:
    """A problem that is active now."""

    key: str
    severity: str
    node: str
    service: str
    text: str

    @property
    def line(self) -> str:
        return f"{self.service}: {self.text}" if self.service else self.text


@dataclass(frozen=True)
class AlertLogEntry:
    at: float
    severity: str
    node: str
    text: str


def fleet_alerts(
    connection: ConnectionEvent, nodes: Iterable[NodeStatus], now: float
) -> Iterable[Alert]:
    """Every problem active at `now`: the broker connection, then each node's services and
    bad messages."""
    if connection.state in ("unreachable", "refused", "reconnecting"):
        address, _, reason = connection.detail.partition(": ")
        what = {"unreachable": "unreachable", "refused": "refused the monitor"}.get(
            connection.state, "connection lost"
        )
        yield Alert(
            f"broker:{connection.state}:{reason}",
            ERROR,
            "",
            "broker",
            f"{address} {what}: {reason}" if reason else f"{address} {what}",
        )
    for node in nodes:
        if node.refused:
            continue  # refused by the broker on purpose: its silence is no problem
        for status in node.ordered_services():
            yield from _service_alerts(node, status, now)
        if node.last_bad_at is not None and now - node.last_bad_at < BAD_MESSAGE_ALERT_S:
            yield Alert(
                f"bad:{node.name}",
                WARNING,
                node.name,
                "",
                f"{node.bad_messages} bad message(s), last: {node.last_bad_reason}",
            )


def _service_alerts(node: NodeStatus, status: ServiceStatus, now: float) -> Iterable[Alert]:
    key = f"{node.name}:{status.service}"
    health = status.health(now)
    if health == OFFLINE:
        yield Alert(f"offline:{key}", ERROR, node.name, status.service, "offline")
    elif health == STALE:
        yield Alert(
            f"stale:{key}",
            ERROR,
            node.name,
            status.service,
            f"stale: no heartbeat for {STALE_INTERVALS} intervals",
        )
    elif health == NEVER and status.expected:
        yield Alert(f"never:{key}", WARNING, node.name, status.service, "never seen")
    elif health == STOPPED and status.expected:
        yield Alert(f"stopped:{key}", WARNING, node.name, status.service, "stopped")
    if health in (NEVER, OFFLINE, STOPPED):
        return
    figures = status.status.figures if status.status else None
    if isinstance(figures, DetectorFigures):
        camera = figures.camera
        why = f": {figures.camera_error}" if figures.camera_error else ""
        source = f" ({figures.source})" if why and figures.source else ""
        if camera == "lost":
            line = f"camera lost{why}{source}"
            yield Alert(f"camera:{key}", ERROR, node.name, status.service, line)
        elif camera == "reopening":
            line = f"camera reopening{why}{source}"
            yield Alert(f"camera:{key}", WARNING, node.name, status.service, line)
    if isinstance(figures, ForwarderFigures):
        depths = [f.spool_depth for f in status.trend_of(ForwarderFigures)[-3:]]
        if (
            len(depths) == 3
            and depths[0] is not None
            and depths[1] is not None
            and depths[2] is not None
            and depths[0] < depths[1] < depths[2]
        ):
            yield Alert(
                f"spool:{key}",
                WARNING,
                node.name,
                status.service,
                f"spool growing: {depths[2]} waiting",
            )
    if isinstance(figures, ProcessorFigures):
        dead = [f.dead_lettered for f in status.trend_of(ProcessorFigures)]
        numbers = [d for d in dead if d is not None]
        if len(numbers) >= 2 and numbers[-1] > numbers[0]:
            yield Alert(
                f"dead:{key}",
                WARNING,
                node.name,
                status.service,
                f"dead letters: {numbers[-1]} (+{numbers[-1] - numbers[0]})",
            )
