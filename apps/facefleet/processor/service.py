"""The processor: cloud broker (shared subscription) -> validation -> storage -> PUBACK.

Messages arrive with manual acknowledgement on a persistent session. A worker validates each,
stores it (or dead-letters it with the reason), confirms it to the sending device with a
receipt on `<prefix>/<node>/receipts` (the device's forwarder deletes its spooled copy only
then) and only then acknowledges it; while storage is
unavailable the worker retries with backoff and the message stays unacknowledged, so a crash
at any point means redelivery, never loss. The broker sends at most `workers * 4`
unacknowledged messages (MQTT v5 Receive Maximum), which bounds memory.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from facefleet.config import ConfigError
from facefleet.contract import (
    ContractError,
    ProcessorFigures,
    Receipt,
    all_faces_filter,
    face_id_of,
    parse_topic,
    receipts_topic,
)
from facefleet.mqtt import content_type, user_properties
from facefleet.processor.settings import ProcessorConfig
from facefleet.processor.sinks import Sink, StorageUnavailable, make_sink
from facefleet.processor.validation import validate
from facefleet.runtime import Link, ServiceSpec, StatusSource, Step, Worker, qos1

log = logging.getLogger(__name__)

#: A replica's session outlives a restart, not a decommissioning: mosquitto keeps handing a
#: gone member of the shared subscription its share of faces until its session expires (the
#: forwarders send those again when no receipt comes, so they are late, not lost).
SESSION_EXPIRY_S = 60


def check(cfg: ProcessorConfig) -> None:
    if not cfg.group or any(c in cfg.group for c in "+#/"):
        raise ConfigError(f"group {cfg.group!r} must be one topic level")


@dataclass
class Counters:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    storage_errors: int = 0
    errors: int = 0
    busy: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)


@dataclass(frozen=True)
class Settled:
    """A message that may be acknowledged now, and the receipt its device gets: none when
    the message has no faces topic or no usable id (its forwarder waits for none)."""

    status: str  # the receipt status: stored, duplicate or rejected
    node: str | None
    face_id: str | None


class Processor:
    def __init__(self, cfg: ProcessorConfig, node: str, stop: threading.Event) -> None:
        self.cfg = cfg
        self.stop = stop
        self.node = node
        try:
            self.sink: Sink = make_sink(cfg.storage)
        except StorageUnavailable as exc:
            raise ConfigError(f"storage: {exc}") from None
        self.subscription = f"$share/{cfg.group}/{all_faces_filter(cfg.prefix)}"
        self.pending: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.counters = Counters()
        suffix = f"-{cfg.instance}" if cfg.instance else ""
        self.link = Link(
            "cloud",
            cfg.mqtt,
            f"facefleet-processor-{node}{suffix}",
            StatusSource(cfg.prefix, node, f"processor{suffix}", cfg.heartbeat_s, self.figures),
            subscriptions=[qos1(self.subscription)],
            manual_ack=True,
            persistent=True,
            receive_maximum=cfg.workers * 4,
            session_expiry_s=SESSION_EXPIRY_S,
        )
        self.client = self.link.client
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.links = [self.link]
        self.workers = [
            Worker(f"store-{i}", self._work, join_timeout_s=10) for i in range(cfg.workers)
        ]
        try:
            self.sink.check_writable(node)
        except StorageUnavailable as exc:  # an outage, not a setup problem: faces wait and retry
            log.warning("storage not reachable at start (%s); faces will wait for it", exc)
        log.info(
            "storing faces from %s (%s) into %s with %d worker(s)",
            cfg.mqtt.address,
            self.subscription,
            self.sink.describe(),
            cfg.workers,
        )

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[Any], props: Any
    ) -> None:
        for reason in reasons:
            if reason.is_failure:
                log.error("the broker refused the subscription %s: %s", self.subscription, reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.counters.add("received")
        self.pending.put(msg)

    def figures(self) -> ProcessorFigures:
        c = self.counters
        with c.lock:
            return ProcessorFigures(
                received=c.received,
                stored=c.stored,
                duplicates=c.duplicates,
                dead_lettered=c.dead_lettered,
                storage_errors=c.storage_errors,
                inflight=self.pending.qsize() + c.busy,
                errors=c.errors,
                storage=self.sink.describe(),
            )

    def _with_retry(self, what: str, action: Any) -> Any:
        """Run `action` until it succeeds or the service stops (then None)."""
        delay = self.cfg.storage.retry_min_s
        failing = False
        while not self.stop.is_set():
            try:
                result = action()
            except StorageUnavailable as exc:
                self.counters.add("storage_errors")
                if not failing:
                    log.warning("storage unavailable (%s); retrying %s with backoff", exc, what)
                    failing = True
                self.stop.wait(delay)
                delay = min(delay * 2, self.cfg.storage.retry_max_s)
                continue
            if failing:
                log.info("storage is back; %s done", what)
            return result
        return None

    def handle(self, msg: mqtt.MQTTMessage) -> Settled | None:
        """Store or dead-letter one message; None when it may not be acknowledged yet."""
        payload = bytes(msg.payload)
        props = user_properties(msg)
        ctype = content_type(msg)
        try:
            meta = validate(self.cfg.prefix, msg.topic, props, ctype, payload, self.cfg.validation)
        except ContractError as exc:
            reason = str(exc)
            details = {"properties": props, "content_type": ctype}
            where = self._with_retry(
                "dead-lettering",
                lambda: self.sink.dead_letter(msg.topic, reason, payload, details),
            )
            if where is None:
                return None
            self.counters.add("dead_lettered")
            log.warning("dead-lettered a message on %s: %s (%s)", msg.topic, reason, where)
            parsed = parse_topic(self.cfg.prefix, msg.topic)
            node = parsed[0] if parsed is not None and parsed[1] == "faces" else None
            return Settled("rejected", node, face_id_of(props))
        written = self._with_retry(
            f"storing face {meta.id}", lambda: self.sink.store(meta, payload)
        )
        if written is None:
            return None
        self.counters.add("stored" if written else "duplicates")
        return Settled("stored" if written else "duplicate", meta.node, meta.id)

    def confirm(self, settled: Settled) -> None:
        """Send the device its receipt, if it waits for one. QoS 1: a receipt lost anyway
        only means the device sends the face again and gets `duplicate`."""
        if settled.node is None or settled.face_id is None:
            return
        receipt = Receipt(settled.face_id, settled.status).encode()
        self.client.publish(receipts_topic(self.cfg.prefix, settled.node), receipt, qos=1)

    def _work(self) -> None:
        while not self.stop.is_set():
            try:
                msg = self.pending.get(timeout=0.5)
            except queue.Empty:
                continue
            self.counters.add("busy")
            try:
                settled = self.handle(msg)
                if settled is not None:
                    self.confirm(settled)
                    self.client.ack(msg.mid, msg.qos)
            except Exception:  # never die on one message; it stays unacknowledged
                self.counters.add("errors")
                log.exception("unexpected failure handling a message on %s", msg.topic)
            finally:
                self.counters.add("busy", -1)

    def main_loop(self) -> None:
        self.stop.wait()

    def shutdown_steps(self) -> Sequence[Step]:
        return [*(worker.join for worker in self.workers), self.link.close, self._report]

    def _report(self) -> None:
        c = self.counters
        log.info(
            "stopped: %d stored, %d duplicates, %d dead-lettered",
            c.stored,
            c.duplicates,
            c.dead_lettered,
        )


SERVICE = ServiceSpec(ProcessorConfig, lambda cfg: {"mqtt": cfg.mqtt}, check, Processor)
