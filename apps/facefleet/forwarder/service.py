"""The forwarder: edge broker -> durable spool -> cloud broker.

Three actors, each owning its state:
- paho's edge loop thread receives messages (manual acknowledgement, persistent session) and
  hands them to the writer;
- the writer thread commits them to the spool in batches (one fsync per batch) and only then
  acknowledges them to the edge broker; it also deletes what the sender found confirmed, in
  the same transactions, so that the sender never waits for SQLite's write lock;
- the sender thread keeps at most `uplink.inflight` spooled messages unacknowledged at the
  cloud broker, in spool order. It deletes a status message on its PUBACK and a face on the
  processor's receipt (`uplink.confirm = "receipt"`): a PUBACK only says the broker has the
  message, and a broker restart or crash can still lose it. Faces whose receipt is late are
  sent again (at most `uplink.unconfirmed_max` out at once); a resend is harmless, the
  processor stores a face id once and confirms the copy as a duplicate. paho retransmits
  in-flight messages itself after a reconnect; after a restart everything spooled is resent.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from facefleet.config import ConfigError
from facefleet.contract import ContractError, Receipt, receipts_topic, status_topic, valid_face_id
from facefleet.forwarder.settings import ForwarderConfig
from facefleet.forwarder.spool import Incoming, Spool, Spooled
from facefleet.mqtt import (
    ConnectionTracker,
    make_client,
    properties_from_dict,
    properties_to_dict,
    start,
)
from facefleet.service import Heartbeat, resolve_node, stop_event

log = logging.getLogger(__name__)

CONFIG_CLASS = ForwarderConfig

#: Messages the edge broker may send before we acknowledge (MQTT v5 Receive Maximum).
EDGE_RECEIVE_MAXIMUM = 256
WRITE_BATCH = 256
#: Acknowledged messages are deleted from the spool in batches of this size, or this often.
DELETE_BATCH = 256
DELETE_EVERY_S = 0.25
#: MQTT v5 PUBACK reason "No matching subscribers": nobody received the face (no processor
#: subscribed, e.g. right after a cloud broker restart), so it is sent again after this long.
NO_SUBSCRIBERS = 16
NO_SUBSCRIBERS_RETRY_S = 2.0
#: After a reconnect to the cloud (a restarted broker may have lost what it acknowledged),
#: unconfirmed faces are sent again this long after the link is back, unless their receipts,
#: queued in our persistent session, arrive first.
RECONNECT_RESEND_S = 5.0
#: The log says how many faces were sent again each time this many more were.
RESEND_LOG_EVERY = 500
RECONNECTED = -1  # a pseudo message id on the PUBACK queue: the cloud link came back


def check(cfg: ForwarderConfig) -> None:
    resolve_node(cfg.node)
    spool_dir = Path(cfg.spool.path).parent
    if spool_dir.exists() and not os.access(spool_dir, os.W_OK):
        raise ConfigError(f"spool.path: {spool_dir} is not writable")
    for name in ("ca_file", "cert_file", "key_file"):
        value = getattr(cfg.cloud, name)
        if value and not Path(value).is_file():
            raise ConfigError(f"cloud.{name}: {value} does not exist")


@dataclass
class _Received:
    mid: int
    qos: int
    message: Incoming


@dataclass
class _InFlight:
    """A message awaiting the cloud broker's PUBACK."""

    seq: int
    size: int
    face_id: str | None  # set for faces that wait for a processor's receipt
    first_send: bool


@dataclass
class _Unconfirmed:
    """A face sent to the cloud and not yet confirmed by a processor."""

    seq: int
    attempts: int = 1
    due: float | None = None  # when to send it again; None while its PUBACK is outstanding


def face_id_of(message: Spooled) -> str | None:
    """The id a receipt will name, or None for messages no processor confirms."""
    if not message.topic.endswith("/faces"):
        return None
    ids = [str(v) for k, v in message.properties.get("UserProperty", []) if k == "id"]
    return ids[-1] if ids and valid_face_id(ids[-1]) else None  # last wins, as for the processor


class Forwarder:
    def __init__(self, cfg: ForwarderConfig, stop: threading.Event) -> None:
        self.cfg = cfg
        self.stop = stop
        self.node = resolve_node(cfg.node)
        self.own_status = status_topic(cfg.prefix, self.node, "forwarder")
        self.subscription = f"{cfg.prefix}/{self.node}/#"
        self.receipts = receipts_topic(cfg.prefix, self.node)
        self.use_receipts = cfg.uplink.confirm == "receipt"
        self.spool = Spool(
            cfg.spool.path,
            cfg.spool.max_bytes,
            cfg.spool.when_full,
            cfg.spool.secure_delete,
            cfg.spool.scrub_interval_s,
        )
        # for the writer: messages to spool and (lists of sequence numbers) confirmed ones to
        # delete, in one queue so that either wakes it at once
        self.received: queue.Queue[_Received | list[int]] = queue.Queue()
        self.pubacks: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
        self.confirmations: queue.SimpleQueue[Receipt] = queue.SimpleQueue()
        self.wake = threading.Event()
        self.inflight: dict[int, _InFlight] = {}  # by MQTT message id
        self.unconfirmed: dict[str, _Unconfirmed] = {}  # by face id, oldest first
        self._done: list[int] = []  # confirmed, not yet deleted from the spool
        self._deleted_at = time.monotonic()
        self._next_due = math.inf  # earliest `due` among the unconfirmed
        self.forwarded = 0  # messages: faces and the edge services' relayed heartbeats
        self.forwarded_faces = 0
        self.confirmed = 0
        self.resent = 0
        self._resent_logged = 0
        self.rejected_by_processor = 0
        self.uplink_bytes = 0
        self.uplink_face_bytes = 0
        self.rejected = 0
        self.errors = 0

        client_id = f"facefleet-forwarder-{self.node}"
        self.edge = make_client(cfg.edge, client_id, manual_ack=True)
        self.cloud = make_client(cfg.cloud, client_id)
        self.cloud.max_inflight_messages_set(cfg.uplink.inflight)
        self.edge_heartbeat = Heartbeat(
            self.edge, cfg.prefix, self.node, "forwarder", cfg.heartbeat_s, self.figures
        )
        self.cloud_heartbeat = Heartbeat(
            self.cloud, cfg.prefix, self.node, "forwarder", cfg.heartbeat_s, self.figures
        )
        self.edge_link = ConnectionTracker(self.edge, "edge", self._edge_up, cfg.edge)
        self.cloud_link = ConnectionTracker(self.cloud, "cloud", self._cloud_up, cfg.cloud)
        self.edge.on_message = self._on_edge_message
        self.cloud.on_publish = self._on_cloud_puback
        self.cloud.on_message = self._on_cloud_message

    # -- callbacks (paho loop threads): hand over, never block ---------------------------

    def _edge_up(self) -> None:
        options = SubscribeOptions(qos=1, retainAsPublished=True)
        self.edge.subscribe(self.subscription, options=options)
        self.edge_heartbeat.publish("online")

    def _cloud_up(self) -> None:
        if self.use_receipts:
            self.cloud.subscribe(self.receipts, qos=1)
            self.pubacks.put((RECONNECTED, 0))
        self.cloud_heartbeat.publish("online")
        self.wake.set()

    def _on_edge_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.own_status:  # our own heartbeat goes to the cloud directly
            client.ack(msg.mid, msg.qos)
            return
        incoming = Incoming(
            msg.topic, bytes(msg.payload), bool(msg.retain), properties_to_dict(msg)
        )
        self.received.put(_Received(msg.mid, msg.qos, incoming))

    def _on_cloud_puback(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        self.pubacks.put((mid, int(reason.value)))
        self.wake.set()

    def _on_cloud_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic != self.receipts:
            return
        try:
            self.confirmations.put(Receipt.decode(bytes(msg.payload)))
        except ContractError as exc:
            self.errors += 1
            log.warning("ignored a receipt: %s", exc)
            return
        self.wake.set()

    # -- figures ----------------------------------------------------------------------

    def figures(self) -> dict[str, Any]:
        return {
            "spool_depth": self.spool.depth,
            "spool_bytes": self.spool.bytes,
            "spool_oldest_age_s": self.spool.oldest_age_s(),
            "forwarded": self.forwarded,
            "forwarded_faces": self.forwarded_faces,
            "uplink_bytes": self.uplink_bytes,
            "uplink_face_bytes": self.uplink_face_bytes,
            "inflight": len(self.inflight),
            "unconfirmed": len(self.unconfirmed),
            "confirmed": self.confirmed,
            "resent": self.resent,
            "rejected_by_processor": self.rejected_by_processor,
            "dropped": self.spool.dropped,
            "expired": self.spool.expired,
            "rejected": self.rejected,
            "edge_connected": self.edge_link.connected.is_set(),
            "cloud_connected": self.cloud_link.connected.is_set(),
            "errors": self.errors,
        }

    # -- writer: received -> spool -> ack upstream ------------------------------------

    def _expire(self) -> None:
        """Drop faces older than spool.max_age_s (counted and logged, never silently)."""
        max_age = self.cfg.spool.max_age_s
        try:
            expired = self.spool.expire_faces(time.time() - max_age)
        except Exception:
            self.errors += 1
            log.exception("could not expire old faces from the spool")
            return
        if expired:
            log.warning(
                "spool: %d face(s) older than %g s expired undelivered, %d expired in total",
                expired,
                max_age,
                self.spool.expired,
            )

    def _write_loop(self) -> None:
        max_age = self.cfg.spool.max_age_s
        # a face outlives its age limit by at most a tenth of it (and never by over a minute)
        expire_every = min(60.0, max(0.5, max_age / 10))
        next_expiry = time.monotonic()
        while not self.stop.is_set() or not self.received.empty():
            if max_age > 0 and time.monotonic() >= next_expiry:
                self._expire()
                next_expiry = time.monotonic() + expire_every
            items: list[_Received | list[int]] = []
            with contextlib.suppress(queue.Empty):  # whatever has come, up to a batch
                items.append(self.received.get(timeout=0.2))
                while len(items) < WRITE_BATCH:
                    items.append(self.received.get_nowait())
            batch = [item for item in items if isinstance(item, _Received)]
            confirmed = [seq for item in items if isinstance(item, list) for seq in item]
            if not batch:
                if confirmed:
                    self._delete(confirmed)
                self._scrub()
                continue
            try:
                self.spool.append_many((item.message for item in batch), delete=confirmed)
            except Exception:
                # not acknowledged: the edge broker redelivers them (persistent session)
                self.errors += 1
                log.exception("could not write %d message(s) to the spool", len(batch))
                self.received.put(confirmed)
                time.sleep(1.0)
                continue
            for item in batch:
                self.edge.ack(item.mid, item.qos)
            self.wake.set()

    def _take_deletions(self) -> list[int]:
        """What is left for the writer to delete once it has stopped (messages left in the
        queue were not acknowledged: the edge broker sends them again)."""
        seqs: list[int] = []
        while True:
            try:
                item = self.received.get_nowait()
            except queue.Empty:
                return seqs
            if isinstance(item, list):
                seqs += item

    def _scrub(self) -> None:
        try:
            self.spool.scrub()
        except Exception:  # the bytes stay until the next scrub succeeds
            self.errors += 1
            log.exception("could not scrub deleted messages from the spool's WAL")

    def _delete(self, seqs: list[int]) -> None:
        try:
            self.spool.delete_many(seqs)
        except Exception:  # still spooled: sent again after a restart, stored once
            self.errors += 1
            log.exception("could not delete %d confirmed message(s) from the spool", len(seqs))

    # -- sender: spool -> cloud, delete once confirmed -------------------------------

    def _settle_pubacks(self) -> None:
        now = time.monotonic()
        while True:
            try:
                mid, reason = self.pubacks.get_nowait()
            except queue.Empty:
                break
            if mid == RECONNECTED:
                self._due_by(now + RECONNECT_RESEND_S)
                continue
            entry = self.inflight.pop(mid, None)
            if entry is None:
                continue
            if reason >= 0x80:
                # kept in the spool: sent again after a restart, once the ACL or identity is fixed
                self.rejected += 1
                log.error(
                    "cloud broker refused spooled message %d (reason %d; check the ACL and the "
                    "certificate CN); it stays in the spool",
                    entry.seq,
                    reason,
                )
                continue
            if entry.first_send:
                self.forwarded += 1
                self.uplink_bytes += entry.size
                if entry.face_id is not None:
                    self.forwarded_faces += 1
                    self.uplink_face_bytes += entry.size
            if entry.face_id is None:
                self._done.append(entry.seq)
                continue
            waiting = self.unconfirmed.get(entry.face_id)
            if waiting is None:
                continue  # its receipt came first
            if reason == NO_SUBSCRIBERS:
                waiting.due = now + NO_SUBSCRIBERS_RETRY_S
            else:
                timeout = self.cfg.uplink.receipt_timeout_s
                waiting.due = now + min(timeout * 2 ** (waiting.attempts - 1), timeout * 10)
            self._next_due = min(self._next_due, waiting.due)

    def _due_by(self, when: float) -> None:
        """Resend every unconfirmed face that the broker acknowledged no later than `when`."""
        for waiting in self.unconfirmed.values():
            if waiting.due is not None and waiting.due > when:
                waiting.due = when
        self._next_due = min(self._next_due, when)

    def _settle_receipts(self) -> None:
        while True:
            try:
                receipt = self.confirmations.get_nowait()
            except queue.Empty:
                break
            waiting = self.unconfirmed.pop(receipt.id, None)
            if waiting is None:
                continue  # a duplicate receipt, or one for a face already forgotten
            self._done.append(waiting.seq)
            self.confirmed += 1
            if receipt.status == "rejected":
                self.rejected_by_processor += 1
                log.warning("a processor dead-lettered face %s (see its dead letters)", receipt.id)

    def _delete_done(self) -> None:
        """Hand confirmed messages to the writer in batches; a delete that is late (or lost
        in a crash) only means the message is sent again."""
        now = time.monotonic()
        if self._done and (
            len(self._done) >= DELETE_BATCH
            or not self.inflight
            or now - self._deleted_at >= DELETE_EVERY_S
        ):
            self.received.put(self._done)
            self._done = []
            self._deleted_at = now

    def _publish(self, row: Spooled, face_id: str | None, first_send: bool) -> None:
        info = self.cloud.publish(
            row.topic,
            row.payload,
            qos=1,
            retain=row.retain,
            properties=properties_from_dict(row.properties),
        )
        self.inflight[info.mid] = _InFlight(row.seq, len(row.payload), face_id, first_send)

    def _resend_due(self, free: int) -> int:
        """Send faces whose receipt is overdue again, oldest first; returns how many."""
        now = time.monotonic()
        if now < self._next_due:
            return 0
        due = [
            (face_id, waiting)
            for face_id, waiting in self.unconfirmed.items()
            if waiting.due is not None and waiting.due <= now
        ]
        if len(due) > free:
            due, self._next_due = due[:free], now  # the rest goes out as the window frees
        else:
            self._next_due = min(
                (w.due for w in self.unconfirmed.values() if w.due is not None and w.due > now),
                default=math.inf,
            )
        if not due:
            return 0
        rows = {row.seq: row for row in self.spool.get_many([w.seq for _, w in due])}
        for face_id, waiting in due:
            row = rows.get(waiting.seq)
            if row is None:  # evicted by drop-oldest meanwhile (counted there)
                del self.unconfirmed[face_id]
                continue
            waiting.attempts += 1
            waiting.due = None
            self.resent += 1
            self._publish(row, face_id, first_send=False)
        if self.resent - self._resent_logged >= RESEND_LOG_EVERY or self._resent_logged == 0:
            log.info("%d face(s) sent again in total: their receipts were late", self.resent)
            self._resent_logged = self.resent
        return len(due)

    def _send_loop(self) -> None:
        last_sent = 0
        rate = self.cfg.uplink.max_rate
        window = self.cfg.uplink.inflight
        tokens, refilled = float(window), time.monotonic()
        while not self.stop.is_set():
            self.wake.clear()  # before the work, so a wake-up during it is not lost
            self._settle_pubacks()
            self._settle_receipts()
            self._delete_done()
            free = window - len(self.inflight)
            if rate > 0:
                now = time.monotonic()
                tokens = min(float(window), tokens + (now - refilled) * rate)
                refilled = now
                free = min(free, int(tokens))
            if self.cloud_link.connected.is_set() and free > 0:
                sent = self._resend_due(free) if self.use_receipts else 0
                room = self.cfg.uplink.unconfirmed_max - len(self.unconfirmed)
                for row in self.spool.after(last_sent, min(free - sent, room)):
                    face_id = face_id_of(row) if self.use_receipts else None
                    if face_id is not None:
                        self.unconfirmed[face_id] = _Unconfirmed(row.seq)
                    self._publish(row, face_id, first_send=True)
                    last_sent = row.seq
                    sent += 1
                tokens -= sent
            self.wake.wait(0.05 if rate > 0 else 0.5)

    # -- lifecycle --------------------------------------------------------------------

    def run(self) -> int:
        log.info(
            "forwarding %s from edge %s to cloud %s, spool %s",
            self.subscription,
            self.cfg.edge.address,
            self.cfg.cloud.address,
            self.cfg.spool.path,
        )
        if self.spool.depth:
            log.info("spool holds %d message(s) from before; sending them first", self.spool.depth)
        # persistent: receipts published while we are away wait for us at the broker
        start(self.cloud, self.cfg.cloud, persistent=self.use_receipts)
        start(self.edge, self.cfg.edge, persistent=True, receive_maximum=EDGE_RECEIVE_MAXIMUM)
        writer = threading.Thread(target=self._write_loop, name="spool-writer", daemon=True)
        sender = threading.Thread(target=self._send_loop, name="uplink-sender", daemon=True)
        writer.start()
        sender.start()
        self.edge_heartbeat.start()
        self.cloud_heartbeat.start()
        try:
            self.stop.wait()
        finally:
            self.edge_heartbeat.stop()
            writer.join(timeout=10)  # acknowledges what it spools while still connected
            self.edge.disconnect()  # anything not acknowledged stays queued at the broker
            sender.join(timeout=5)
            self._settle_pubacks()
            self._settle_receipts()
            self._delete(self._take_deletions() + self._done)  # the writer has stopped
            self.cloud_heartbeat.stop()
            self.cloud.disconnect()
            self.cloud.loop_stop()
            self.edge.loop_stop()
            log.info(
                "stopped: %d forwarded, %d still spooled, %d dropped, %d expired",
                self.forwarded,
                self.spool.depth,
                self.spool.dropped,
                self.spool.expired,
            )
            self.spool.close()
        return 0


def run(cfg: ForwarderConfig) -> int:
    check(cfg)
    return Forwarder(cfg, stop_event()).run()
