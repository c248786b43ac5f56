"""Fleet state as the monitor sees it: pure Python, no Textual and no MQTT.

The feed turns MQTT messages into the small event dataclasses below; the app applies them to a
`FleetModel` on its own thread and redraws from the model on a timer. Everything the model keeps
is bounded: status history, detections, thumbnails (raw bytes of the last N faces only), the
alert log and the faces-per-minute series are ring buffers.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from facefleet.contract import SERVICES_BY_KIND, STALE_INTERVALS, FaceMeta, parse_timestamp

SERVICE_ORDER = ("detector", "logger", "forwarder", "processor")

ONLINE, OFFLINE, STOPPED, STALE, NEVER = "online", "offline", "stopped", "stale", "never seen"
ERROR, WARNING = "error", "warning"
#: How long a malformed message keeps its node's "bad messages" alert active.
BAD_MESSAGE_ALERT_S = 300.0


# --- events: what the feed hands to the app -------------------------------------------------


@dataclass(frozen=True)
class StatusEvent:
    """One status heartbeat (already checked: a JSON object with a known state)."""

    node: str
    service: str
    body: dict[str, Any]
    retained: bool = False
    size: int = 0


@dataclass(frozen=True)
class FaceEvent:
    """One face message; `problem` is set when the payload cannot be an image of its type."""

    meta: FaceMeta
    payload: bytes
    retained: bool = False
    problem: str | None = None

    @property
    def size(self) -> int:
        return len(self.payload)


@dataclass(frozen=True)
class FeedError:
    """A message that breaks the contract: shown as an alert entry, never a crash."""

    topic: str
    node: str | None
    reason: str
    size: int = 0


@dataclass(frozen=True)
class ConnectionEvent:
    """The feed's connection to the broker changed: connecting, connected, reconnecting,
    unreachable (TCP or TLS failed; `detail` says why), refused (by the broker: not authorised)
    or closed."""

    state: str
    detail: str = ""


FeedEvent = StatusEvent | FaceEvent | FeedError | ConnectionEvent


# --- state ------------------------------------------------------------------------------------


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


@dataclass
class Counters:
    messages: int = 0
    statuses: int = 0
    faces: int = 0
    errors: int = 0
    #: events the feed counted but did not hand over because the UI was behind
    shed: int = 0


class FleetModel:
    """Everything the views show, updated by `apply()` and `evaluate()` on one thread."""

    def __init__(
        self,
        expected: dict[str, str] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        max_detections: int = 500,
        max_thumbnails: int = 64,
        max_log: int = 500,
        bucket_s: float = 10.0,
        buckets: int = 30,
    ) -> None:
        """`expected` maps node name to kind ('edge' or 'cloud') from the inventory."""
        self.clock = clock
        self.nodes: dict[str, NodeStatus] = {}
        self.has_inventory = bool(expected)
        self.detections: deque[Detection] = deque(maxlen=max_detections)
        self._thumbnails: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self.max_thumbnails = max_thumbnails
        self.log: deque[AlertLogEntry] = deque(maxlen=max_log)
        self.active: dict[str, Alert] = {}
        self.counters = Counters()
        self.bucket_s = bucket_s
        self.buckets = buckets
        self.paused = False
        self.connection = ConnectionEvent("connecting")
        #: bumped on every change; views redraw only when it moved
        self.version = 0
        for name, kind in (expected or {}).items():
            node = self.nodes[name] = NodeStatus(name, kind=kind, expected=True)
            for service in SERVICES_BY_KIND.get(kind, ()):
                node.service(service).expected = True

    # --- input ----------------------------------------------------------------------------

    def apply(self, event: FeedEvent) -> None:
        now = self.clock()
        self.version += 1
        if isinstance(event, ConnectionEvent):
            self.connection = event
            return
        self.counters.messages += 1
        if isinstance(event, StatusEvent):
            self._apply_status(event, now)
        elif isinstance(event, FaceEvent):
            self._apply_face(event, now)
        else:
            self._apply_error(event, now)

    def apply_shed(self, faces_by_node: dict[str, int], errors: int) -> None:
        """Count faces and errors the feed had to shed while the UI was behind."""
        now = self.clock()
        for name, count in faces_by_node.items():
            node = self._node(name)
            node.faces_total += count
            self.counters.faces += count
            self.counters.shed += count
            self._count_face(node, now, count)
        self.counters.errors += errors
        self.counters.shed += errors
        self.counters.messages += sum(faces_by_node.values()) + errors
        self.version += 1

    def _node(self, name: str) -> NodeStatus:
        node = self.nodes.get(name)
        if node is None:
            node = self.nodes[name] = NodeStatus(name)
        return node

    def _apply_status(self, event: StatusEvent, now: float) -> None:
        self.counters.statuses += 1
        node = self._node(event.node)
        if not node.kind:
            node.kind = next(
                (kind for kind, names in SERVICES_BY_KIND.items() if event.service in names), ""
            )
        status = node.service(event.service)
        body = event.body
        status.body = body
        status.reported = str(body.get("state"))
        interval = body.get("interval_s")
        status.interval_s = float(interval) if isinstance(interval, int | float) else None
        # A retained heartbeat may be old (the broker replays it on subscribe): judge its age
        # by the time it was sent, not by when we happened to receive it.
        seen = now
        if event.retained and isinstance(body.get("ts"), str):
            with contextlib.suppress(ValueError):
                seen = min(now, parse_timestamp(body["ts"]).timestamp())
        status.seen_at = seen
        summary = summarize(event.service, body)
        last = status.history[-1] if status.history else None
        if last is not None and (last.state, last.summary) == (status.reported, summary):
            status.history[-1] = HistoryEntry(seen, last.state, summary, last.since, last.count + 1)
        else:
            status.history.append(HistoryEntry(seen, status.reported, summary, seen))
        status.trend.append(body)

    def _apply_face(self, event: FaceEvent, now: float) -> None:
        meta = event.meta
        self.counters.faces += 1
        node = self._node(meta.node)
        node.faces_total += 1
        node.last_face_ts = meta.ts
        node.last_face_at = now
        self._count_face(node, now, 1)
        if event.problem:
            self._bad_message(node, f"face {meta.id}: {event.problem}", now)
        if self.paused:
            return
        self.detections.appendleft(
            Detection(
                id=meta.id,
                node=meta.node,
                track=meta.track,
                ts=meta.ts,
                score=meta.score,
                box=meta.box,
                frame=meta.frame,
                detector=meta.detector,
                content_type=meta.content_type,
                size=event.size,
                received_at=now,
                problem=event.problem,
            )
        )
        if event.problem is None:
            self._thumbnails[meta.id] = (meta.content_type, event.payload)
            while len(self._thumbnails) > self.max_thumbnails:
                self._thumbnails.popitem(last=False)

    def _apply_error(self, event: FeedError, now: float) -> None:
        self.counters.errors += 1
        if event.node is not None:
            self._bad_message(self._node(event.node), f"{event.topic}: {event.reason}", now)
        else:
            self.log.append(AlertLogEntry(now, ERROR, "", f"{event.topic}: {event.reason}"))

    def _bad_message(self, node: NodeStatus, text: str, now: float) -> None:
        node.bad_messages += 1
        node.last_bad_reason = text
        node.last_bad_at = now
        self.log.append(AlertLogEntry(now, ERROR, node.name, text))

    def _count_face(self, node: NodeStatus, now: float, count: int) -> None:
        bucket = int(now // self.bucket_s)
        node.face_buckets[bucket] = node.face_buckets.get(bucket, 0) + count
        if len(node.face_buckets) > self.buckets:
            for old in sorted(node.face_buckets)[: -self.buckets]:
                del node.face_buckets[old]

    def note_thumbnail_error(self, face_id: str, node: str, reason: str) -> None:
        """The UI could not decode a kept face: forget its bytes and log it."""
        self._thumbnails.pop(face_id, None)
        self._bad_message(self._node(node), f"face {face_id}: {reason}", self.clock())
        self.version += 1

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        self.version += 1

    # --- queries --------------------------------------------------------------------------

    def thumbnail(self, face_id: str) -> tuple[str, bytes] | None:
        """(content type, bytes) of a face, if it is among the last `max_thumbnails`."""
        return self._thumbnails.get(face_id)

    def faces_per_minute(self, name: str, now: float | None = None) -> list[float]:
        """Faces per minute of a node over the last `buckets` buckets, oldest first."""
        now = self.clock() if now is None else now
        node = self.nodes.get(name)
        current = int(now // self.bucket_s)
        scale = 60.0 / self.bucket_s
        counts = node.face_buckets if node else {}
        return [
            counts.get(bucket, 0) * scale
            for bucket in range(current - self.buckets + 1, current + 1)
        ]

    def severity(self, name: str) -> int:
        """2: an error alert on the node, 1: a warning, 0: fine."""
        worst = 0
        for alert in self.active.values():
            if alert.node == name:
                worst = max(worst, 2 if alert.severity == ERROR else 1)
        return worst

    # --- alerts ---------------------------------------------------------------------------

    def evaluate(self) -> None:
        """Recompute the active alerts (staleness moves with the clock, so call this on a
        timer) and log the ones that appeared or cleared."""
        now = self.clock()
        active: dict[str, Alert] = {}
        for alert in self._alerts(now):
            active[alert.key] = alert
        # "never seen" is where every expected service starts, not an event: listed as
        # active, kept out of the log (else each start logs and resolves one per service)
        for key, alert in sorted(active.items()):
            if key not in self.active and not key.startswith("never:"):
                self.log.append(AlertLogEntry(now, alert.severity, alert.node, alert.line))
        for key, alert in sorted(self.active.items()):
            if key not in active and not key.startswith("never:"):
                self.log.append(AlertLogEntry(now, "resolved", alert.node, alert.line))
        if active != self.active:
            self.version += 1
        self.active = active

    def _alerts(self, now: float) -> Iterable[Alert]:
        if self.connection.state in ("unreachable", "refused", "reconnecting"):
            address, _, reason = self.connection.detail.partition(": ")
            what = {"unreachable": "unreachable", "refused": "refused the monitor"}.get(
                self.connection.state, "connection lost"
            )
            yield Alert(
                f"broker:{self.connection.state}:{reason}",
                ERROR,
                "",
                "broker",
                f"{address} {what}: {reason}" if reason else f"{address} {what}",
            )
        for node in self.nodes.values():
            for status in node.ordered_services():
                yield from self._service_alerts(node, status, now)
            if node.last_bad_at is not None and now - node.last_bad_at < BAD_MESSAGE_ALERT_S:
                yield Alert(
                    f"bad:{node.name}",
                    WARNING,
                    node.name,
                    "",
                    f"{node.bad_messages} bad message(s), last: {node.last_bad_reason}",
                )

    def _service_alerts(
        self, node: NodeStatus, status: ServiceStatus, now: float
    ) -> Iterable[Alert]:
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
        body = status.body
        if status.service == "detector":
            camera = body.get("camera")
            why = f": {body['camera_error']}" if body.get("camera_error") else ""
            source = f" ({body['source']})" if why and body.get("source") else ""
            if camera == "lost":
                line = f"camera lost{why}{source}"
                yield Alert(f"camera:{key}", ERROR, node.name, status.service, line)
            elif camera == "reopening":
                line = f"camera reopening{why}{source}"
                yield Alert(f"camera:{key}", WARNING, node.name, status.service, line)
        if status.service == "forwarder":
            depths = [b.get("spool_depth") for b in list(status.trend)[-3:]]
            if (
                len(depths) == 3
                and all(isinstance(d, int) for d in depths)
                and depths[0] < depths[1] < depths[2]  # type: ignore[operator]
            ):
                yield Alert(
                    f"spool:{key}",
                    WARNING,
                    node.name,
                    status.service,
                    f"spool growing: {depths[2]} waiting",
                )
        if status.service == "processor":
            dead = [b.get("dead_lettered") for b in status.trend]
            numbers = [d for d in dead if isinstance(d, int)]
            if len(numbers) >= 2 and numbers[-1] > numbers[0]:
                yield Alert(
                    f"dead:{key}",
                    WARNING,
                    node.name,
                    status.service,
                    f"dead letters: {numbers[-1]} (+{numbers[-1] - numbers[0]})",
                )


# --- formatting shared by the views (pure, so it is tested without a terminal) ---------------


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"
    return f"{seconds // 86400:.0f}d{seconds % 86400 // 3600:02.0f}h"


def format_clock(when: float | None) -> str:
    if when is None:
        return "-"
    return datetime.fromtimestamp(when, tz=timezone.utc).strftime("%H:%M:%S")


def format_face_time(ts: str | None) -> str:
    """HH:MM:SS.mmm of a contract timestamp."""
    return ts[11:23] if ts else "-"


#: How a heartbeat figure is named on screen, where its key alone would mislead.
FIGURE_LABELS = {
    "forwarded_faces": "faces_sent",
    "forwarded": "msgs_sent",  # faces and relayed heartbeats
}


def summarize(service: str, body: dict[str, Any]) -> str:
    """The figures of a heartbeat that matter most, in one short line."""
    keys = {
        "detector": ("fps", "camera", "faces_detected", "published", "errors"),
        "logger": ("events", "faces", "errors"),
        "forwarder": (
            "spool_depth",
            "spool_oldest_age_s",
            "forwarded_faces",
            "forwarded",
            "dropped",
            "errors",
        ),
        "processor": ("received", "stored", "dead_lettered", "storage_errors", "errors"),
    }.get(service, ())
    parts = []
    for key in keys:
        if key in body:
            value = body[key]
            if isinstance(value, float):
                value = f"{value:.1f}"
            parts.append(f"{FIGURE_LABELS.get(key, key)}={value}")
    return " ".join(parts)
