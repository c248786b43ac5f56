"""What the monitor keeps of each node and service: the records `FleetModel` updates and the
views read. Pure Python; every history is a bounded ring buffer."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TypeVar

from facefleet.contract import SERVICES, ProcessorFigures, ServiceFigures, Status
from facefleet.health import NEVER, Heard, state

_Figures = TypeVar("_Figures", bound=ServiceFigures)


@dataclass(frozen=True)
class HistoryEntry:
    """A run of identical heartbeats (same state and figures) in a service's recent history:
    the last at `at`, the first at `since`, `count` of them. An idle service adds no lines."""

    at: float
    state: str
    summary: str
    since: float = 0.0
    count: int = 1


@dataclass
class ServiceStatus:
    node: str
    service: str
    expected: bool = False
    #: the last heartbeat and the time its age counts from
    last: Heard | None = None
    history: deque[HistoryEntry] = field(default_factory=lambda: deque(maxlen=50))
    #: last heartbeat figures, oldest first, for trend alerts (spool growth, dead letters)
    trend: deque[ServiceFigures | None] = field(default_factory=lambda: deque(maxlen=6))

    def health(self, now: float) -> str:
        return state(self.last, now)

    @property
    def status(self) -> Status | None:
        return self.last.status if self.last else None

    @property
    def reported(self) -> str:
        """The state the last heartbeat reported, however old it is."""
        return self.last.status.state if self.last else NEVER

    @property
    def seen_at(self) -> float | None:
        return self.last.at if self.last else None

    @property
    def interval_s(self) -> float | None:
        return self.last.status.interval_s if self.last else None

    def trend_of(self, kind: type[_Figures]) -> list[_Figures]:
        return [figures for figures in self.trend if isinstance(figures, kind)]


@dataclass
class NodeStatus:
    name: str
    kind: str = ""
    expected: bool = False
    #: "revoked" or "decommissioned" (facefleet pki): shown as such, raises no alerts
    refused: str = ""
    services: dict[str, ServiceStatus] = field(default_factory=dict)
    faces_total: int = 0
    last_face_ts: str | None = None
    last_face_at: float | None = None
    bad_messages: int = 0
    last_bad_reason: str = ""
    last_bad_at: float | None = None
    #: faces received per time bucket: {bucket index: count}, trimmed to the series length
    face_buckets: dict[int, int] = field(default_factory=dict)

    def service(self, name: str) -> ServiceStatus:
        status = self.services.get(name)
        if status is None:
            status = self.services[name] = ServiceStatus(self.name, name)
        return status

    def ordered_services(self) -> list[ServiceStatus]:
        rank = {name: i for i, name in enumerate(SERVICES)}
        return sorted(self.services.values(), key=lambda s: (rank.get(s.service, 99), s.service))

    def figures(self, kind: type[_Figures]) -> _Figures | None:
        """The figures of the last heartbeat of this node's service of that kind, if any."""
        status = self.services.get(kind.service)
        figures = status.status.figures if status and status.status else None
        return figures if isinstance(figures, kind) else None

    def version(self) -> str:
        statuses = [s.status for s in self.services.values()]
        return ",".join(sorted({s.version for s in statuses if s and s.version}))

    def errors(self) -> int:
        total = 0
        for status in self.services.values():
            figures = status.status.figures if status.status else None
            total += (figures.errors or 0) if figures else 0
            if isinstance(figures, ProcessorFigures):
                total += figures.storage_errors or 0
        return total


@dataclass(frozen=True)
class Detection:
    """One face as listed in the live feed (no image bytes; see FleetModel.thumbnail)."""

    id: str
    node: str
    track: int
    ts: str
    score: float
    box: tuple[int, int, int, int]
    frame: tuple[int, int]
    detector: str
    content_type: str
    size: int
    received_at: float
    problem: str | None = None


@dataclass
class Counters:
    messages: int = 0
    statuses: int = 0
    faces: int = 0
    errors: int = 0
    #: events the feed counted but did not hand over because the UI was behind
    shed: int = 0
