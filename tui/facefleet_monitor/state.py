"""What the monitor keeps of each node and service: the records `FleetModel` updates and the
views read. Pure Python; every history is a bounded ring buffer."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from facefleet.contract import STALE_INTERVALS

SERVICE_ORDER = ("detector", "logger", "forwarder", "processor")

ONLINE, OFFLINE, STOPPED, STALE, NEVER = "online", "offline", "stopped", "stale", "never seen"


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
    reported: str = NEVER
    body: dict[str, Any] = field(default_factory=dict)
    seen_at: float | None = None
    interval_s: float | None = None
    history: deque[HistoryEntry] = field(default_factory=lambda: deque(maxlen=50))
    #: last heartbeat figures, oldest first, for trend alerts (spool growth, dead letters)
    trend: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=6))

    def health(self, now: float) -> str:
        """online/offline/stopped as reported, stale after three missed intervals, or never
        seen."""
        if self.seen_at is None:
            return NEVER
        if (
            self.reported == ONLINE
            and self.interval_s
            and now - self.seen_at > STALE_INTERVALS * self.interval_s
        ):
            return STALE
        return self.reported

    def figure(self, name: str) -> Any:
        return self.body.get(name)


@dataclass
class NodeStatus:
    name: str
    kind: str = ""
    expected: bool = False
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
        rank = {name: i for i, name in enumerate(SERVICE_ORDER)}
        return sorted(self.services.values(), key=lambda s: (rank.get(s.service, 99), s.service))

    def version(self) -> str:
        versions = sorted(
            {str(s.body["version"]) for s in self.services.values() if s.body.get("version")}
        )
        return ",".join(versions)

    def errors(self) -> int:
        total = 0
        for status in self.services.values():
            for key in ("errors", "storage_errors"):
                value = status.body.get(key)
                if isinstance(value, int | float):
                    total += int(value)
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
