"""The monitor's MQTT side: one paho client thread that turns messages into model events.

No Textual here. The app passes a `sink` that posts each event as a Textual message (thread
safe). A `FlowGate` bounds what has been handed over but not yet applied: when the UI falls
behind, faces and errors are only counted (per node) and the latest heartbeat per topic is
held, so memory stays bounded at any message rate.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from facefleet import contract
from facefleet import mqtt as ffmqtt
from facefleet.contract import (
    ContractError,
    all_faces_filter,
    all_status_filter,
    parse_face_properties,
    parse_topic,
)
from facefleet.health import MAX_STATUS_BYTES
from facefleet_monitor.events import (
    ConnectionEvent,
    FaceEvent,
    FeedError,
    FeedEvent,
    StatusEvent,
)

log = logging.getLogger(__name__)

MAX_FACE_BYTES = 4 * 1024 * 1024

_MAGIC = {"image/jpeg": (b"\xff\xd8\xff",), "image/png": (b"\x89PNG\r\n\x1a\n",)}


def parse_status(
    node: str, service: str, payload: bytes, retained: bool
) -> StatusEvent | FeedError:
    """Check a heartbeat payload against the contract."""
    try:
        status = contract.parse_status(node, service, payload, MAX_STATUS_BYTES)
    except ValueError as exc:
        return FeedError(f"{node}/status/{service}", node, str(exc), len(payload))
    return StatusEvent(node, service, status, retained=retained, size=len(payload))


def parse_face(
    node: str,
    properties: dict[str, str],
    content_type: str | None,
    payload: bytes,
    *,
    retained: bool = False,
    max_bytes: int = MAX_FACE_BYTES,
) -> FaceEvent | FeedError:
    """Check a face message against the contract; a payload that cannot be an image of its
    type is kept as a face with a problem (it was published, so it counts)."""
    topic = f"{node}/faces"
    if len(payload) > max_bytes:
        return FeedError(topic, node, f"face payload oversized ({len(payload)} bytes)", 0)
    try:
        meta = parse_face_properties(properties, content_type, payload)
    except ContractError as exc:
        return FeedError(topic, node, f"bad face message: {exc}", len(payload))
    if meta.node != node:
        return FeedError(topic, node, f"face node {meta.node!r} does not match the topic", 0)
    problem = None
    if not payload.startswith(_MAGIC[meta.content_type]):
        problem = f"payload is not {meta.content_type}"
    return FaceEvent(meta, payload, retained=retained, problem=problem)


@dataclass
class Shed:
    """What the gate counted instead of handing over."""

    faces: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    statuses: dict[tuple[str, str], StatusEvent] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.faces or self.errors or self.statuses)


class FlowGate:
    """Bounds the events (and payload bytes) handed to the UI but not yet applied."""

    def __init__(self, max_events: int = 2000, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.events = 0
        self.bytes = 0
        self._shed = Shed()
        self._lock = threading.Lock()

    def admit(self, event: FeedEvent) -> bool:
        """Reserve room for `event`, or count it as shed and return False."""
        size = _size(event)
        with self._lock:
            if self.events < self.max_events and self.bytes + size <= self.max_bytes:
                self.events += 1
                self.bytes += size
                return True
            if isinstance(event, FaceEvent):
                node = event.meta.node
                self._shed.faces[node] = self._shed.faces.get(node, 0) + 1
            elif isinstance(event, StatusEvent):
                self._shed.statuses[(event.node, event.service)] = event
            else:
                self._shed.errors += 1
            return False

    def release(self, event: FeedEvent) -> None:
        """The UI applied (or dropped) an admitted event."""
        size = _size(event)
        with self._lock:
            self.events -= 1
            self.bytes -= size

    def take_shed(self) -> Shed:
        with self._lock:
            shed, self._shed = self._shed, Shed()
        return shed


def _size(event: FeedEvent) -> int:
    return 0 if isinstance(event, ConnectionEvent) else event.size


class Inbox:
    """Events waiting for the UI thread. `put` says when the inbox just stopped being empty,
    so the producer posts one wake-up for any number of events, not one per event."""

    def __init__(self) -> None:
        self._events: list[FeedEvent] = []
        self._lock = threading.Lock()

    def put(self, event: FeedEvent) -> bool:
        with self._lock:
            self._events.append(event)
            return len(self._events) == 1

    def drain(self, limit: int) -> tuple[list[FeedEvent], bool]:
        """Up to `limit` of the oldest events, and whether more wait (the producer posts no
        wake-up for those: the consumer must come back for them)."""
        with self._lock:
            events, self._events = self._events[:limit], self._events[limit:]
            return events, bool(self._events)


class MonitorFeed:
    """Subscribes to every status and face topic under `prefix` and feeds `sink`.

    `sink` runs on paho's thread; it must be thread safe and return whether it accepted the
    event (the app's `post_message` does both).
    """

    def __init__(
        self,
        settings: ffmqtt.MqttSettings,
        prefix: str,
        sink: Callable[[FeedEvent], bool],
        *,
        gate: FlowGate | None = None,
        max_face_bytes: int = MAX_FACE_BYTES,
    ) -> None:
        self.settings = settings
        self.prefix = prefix
        self.sink = sink
        self.gate = gate or FlowGate()
        self.max_face_bytes = max_face_bytes
        self.client: mqtt.Client | None = None
        self._stopping = False
        self._connected_once = False
        self._unreachable_reason = ""
        self._up = False  # between a CONNACK and the next disconnect

    @property
    def client_id(self) -> str:
        host = socket.gethostname().split(".")[0] or "host"
        return f"facefleet-monitor-{host}-{os.getpid()}-{id(self) & 0xFFFF:x}"

    def start(self) -> None:
        client = ffmqtt.make_client(self.settings, self.client_id)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.client = client
        self._emit(ConnectionEvent("connecting", self.settings.address))
        ffmqtt.start(client, self.settings)

    def stop(self) -> None:
        self._stopping = True
        if self.client is not None:
            if self.client.is_connected():
                self.client.disconnect()
            self.client.loop_stop()
            self.client = None

    def _emit(self, event: FeedEvent) -> None:
        if isinstance(event, ConnectionEvent):
            self.sink(event)
            return
        if self.gate.admit(event) and not self.sink(event):
            self.gate.release(event)

    # paho callbacks (paho's network thread) --------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("broker %s refused the monitor: %s", self.settings.address, reason)
            self._emit(ConnectionEvent("refused", f"{self.settings.address}: {reason}"))
            return
        # (re)subscribe on every connect: the session is not persistent
        # faces at QoS 0: a monitor only displays them (nothing to acknowledge durably), and
        # skipping a PUBACK per face doubled the rate it keeps up with (measure_rate.py)
        client.subscribe([(all_status_filter(self.prefix), 1), (all_faces_filter(self.prefix), 0)])
        if self._connected_once:
            log.info("reconnected to %s", self.settings.address)
        self._connected_once = True
        self._unreachable_reason = ""
        self._up = True
        self._emit(ConnectionEvent("connected", self.settings.address))

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        """A connection attempt failed before MQTT (TCP or TLS): find out why and say it, once
        per reason (paho retries with backoff; the next attempt waits for this probe)."""
        if self._stopping:
            return
        reason = ffmqtt.why_unreachable(self.settings)
        if reason != self._unreachable_reason:
            self._unreachable_reason = reason
            log.warning("broker %s unreachable: %s", self.settings.address, reason)
            self._emit(ConnectionEvent("unreachable", f"{self.settings.address}: {reason}"))

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if self._stopping:
            self._emit(ConnectionEvent("closed", self.settings.address))
            return
        was_up, self._up = self._up, False
        if not was_up:  # closed during TLS or before CONNACK (e.g. our certificate refused)
            self._on_connect_fail(client, userdata)
            return
        log.warning("lost the broker %s (%s); reconnecting", self.settings.address, reason)
        self._emit(ConnectionEvent("reconnecting", f"{self.settings.address}: {reason}"))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self._emit(self.parse(message))
        except Exception:  # a message must never take down the network thread
            log.exception("unexpected error handling a message on %s", message.topic)

    def parse(self, message: mqtt.MQTTMessage) -> FeedEvent:
        parsed = parse_topic(self.prefix, message.topic)
        payload = bytes(message.payload)
        if parsed is None:
            return FeedError(message.topic, None, "topic outside the contract", len(payload))
        node, kind, service = parsed
        if kind == "status":
            assert service is not None
            return parse_status(node, service, payload, bool(message.retain))
        return parse_face(
            node,
            ffmqtt.user_properties(message),
            ffmqtt.content_type(message),
            payload,
            retained=bool(message.retain),
            max_bytes=self.max_face_bytes,
        )
