"""Fleet state as the monitor sees it: pure Python, no Textual and no MQTT.

The feed turns MQTT messages into the events of `events.py`; the app applies them to a
`FleetModel` on its own thread and redraws from the model on a timer. Everything the model keeps
is bounded: status history, detections, thumbnails (raw bytes of the last N faces only), the
alert log and the faces-per-minute series are ring buffers.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

from facefleet.contract import SERVICES_BY_KIND
from facefleet.health import follow, heard_at
from facefleet.pki import CERT_RENEW_DAYS
from facefleet_monitor.alerts import ERROR, Alert, AlertLogEntry, fleet_alerts
from facefleet_monitor.events import (
    ConnectionEvent,
    FaceEvent,
    FeedError,
    FeedEvent,
    StatusEvent,
)
from facefleet_monitor.formatting import summarize
from facefleet_monitor.state import Counters, Detection, HistoryEntry, NodeStatus


class FleetModel:
    """Everything the views show, updated by `apply()` and `evaluate()` on one thread."""

    def __init__(
        self,
        expected: dict[str, str] | None = None,
        *,
        refused: dict[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        max_detections: int = 500,
        max_thumbnails: int = 64,
        max_log: int = 500,
        bucket_s: float = 10.0,
        buckets: int = 30,
        cert_warn_days: float = CERT_RENEW_DAYS,
    ) -> None:
        """`expected` maps node name to kind ('edge' or 'cloud') from the inventory; `refused`
        the nodes revoked or decommissioned (node -> that state), which are not expected to
        report and raise no alerts."""
        self.clock = clock
        self.cert_warn_days = cert_warn_days
        self.nodes: dict[str, NodeStatus] = {}
        self.has_inventory = bool(expected)
        self.detections: deque[Detection] = deque(maxlen=max_detections)
        self._thumbnails: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self.max_thumbnails = max_thumbnails
        self.log: deque[AlertLogEntry] = deque(maxlen=max_log)
        self.active: dict[str, Alert] = {}
        #: each node's worst active alert (see severity), kept with `active`
        self._severities: dict[str, int] = {}
        self.counters = Counters()
        self.bucket_s = bucket_s
        self.buckets = buckets
        self.paused = False
        self.connection = ConnectionEvent("connecting")
        #: bumped on every change; views redraw only when it moved
        self.version = 0
        refused = refused or {}
        for name, kind in (expected or {}).items():
            node = self.nodes[name] = NodeStatus(
                name, kind=kind, expected=True, refused=refused.get(name, "")
            )
            for service in SERVICES_BY_KIND.get(kind, ()):
                node.service(service).expected = not node.refused

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
        reported = event.status
        seen = heard_at(reported, now, event.retained)
        status.last = follow(status.last, reported, seen)
        summary = summarize(reported.figures)
        last = status.history[-1] if status.history else None
        if last is not None and (last.state, last.summary) == (reported.state, summary):
            status.history[-1] = HistoryEntry(seen, last.state, summary, last.since, last.count + 1)
        else:
            status.history.append(HistoryEntry(seen, reported.state, summary, seen))
        status.trend.append(reported.figures)

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
        return self._severities.get(name, 0)

    # --- alerts ---------------------------------------------------------------------------

    def evaluate(self) -> None:
        """Recompute the active alerts (staleness moves with the clock, so call this on a
        timer) and log the ones that appeared or cleared."""
        now = self.clock()
        active: dict[str, Alert] = {}
        for alert in fleet_alerts(self.connection, self.nodes.values(), now, self.cert_warn_days):
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
        self._severities = {}
        for alert in active.values():
            worst = 2 if alert.severity == ERROR else 1
            self._severities[alert.node] = max(worst, self._severities.get(alert.node, 0))
