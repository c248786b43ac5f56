"""The forwarder: edge broker -> durable spool -> cloud broker.

Three actors, each owning its state:
- paho's edge loop thread receives messages (manual acknowledgement, persistent session) and
  hands them to the writer;
- the writer thread commits them to the spool in batches (one fsync per batch) and only then
  acknowledges them to the edge broker and tells the detector which faces it now holds
  (`SpooledNotice` on `<prefix>/<node>/spooled`: the detector's journal lets them go); it
  also deletes what the sender found confirmed, in the same transactions, so that the sender
  never waits for SQLite's write lock;
- the sender thread sends spooled messages to the cloud broker in spool order, at most
  `uplink.unconfirmed_max` faces awaiting their receipt. It takes what the writer has just
  committed from memory (`Recent`) and reads the spool only for older messages. It hands
  paho up to `QUEUED_WINDOWS` windows of messages at a time: paho keeps `uplink.inflight` of
  them unacknowledged at the cloud broker and sends the next on each PUBACK in its own
  thread, so the sender wakes once per batch of PUBACKs or receipts, not once per message
  (every hand-over between threads costs the GIL and futex round trips; the profile counted
  about 50 futex calls per relayed face). What is out, what is confirmed and what is due
  again is its `Delivery` ledger (delivery.py); the sender only moves messages between it,
  the spool and paho. paho retransmits in-flight messages itself after a reconnect; after a
  restart everything spooled is resent.

On the cloud broker it also reads its own status topic: a recent `online` heartbeat there from
an instance that is not ours means a second device with this identity (a cloned SD card) held
the session until we took it (the broker replays it on every subscribe; a taken-over client
leaves no last will), so the cloud link counts it and backs off (see
`ConnectionTracker.clone_seen`). This device's earlier instances (`own_instances`, kept beside
the spool) do not count: after a power cut the broker may still hold our previous session.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from facefleet.bufferedclient import batched
from facefleet.config import ConfigError
from facefleet.contract import (
    STALE_INTERVALS,
    ContractError,
    ForwarderFigures,
    Receipt,
    SpooledNotice,
    Status,
    face_id_of,
    faces_topic,
    parse_timestamp,
    receipts_topic,
    spooled_topic,
    status_topic,
)
from facefleet.forwarder.delivery import Delivery
from facefleet.forwarder.settings import ForwarderConfig
from facefleet.forwarder.spool import Incoming, Recent, Spool, Spooled
from facefleet.mqtt import properties_from_dict, properties_to_dict
from facefleet.runtime import Link, ServiceSpec, StatusSource, Step, Worker, qos1
from facefleet.service import instance_id, own_instances

log = logging.getLogger(__name__)

#: Messages the edge broker may send before we acknowledge (MQTT v5 Receive Maximum).
EDGE_RECEIVE_MAXIMUM = 256
WRITE_BATCH = 256
#: Messages the sender may hand paho beyond what is in flight at the cloud broker, in windows
#: of `uplink.inflight`; and how many committed messages wait in memory for the sender before
#: it has to read them back from the spool.
QUEUED_WINDOWS = 4
RECENT_LIMIT = 4 * WRITE_BATCH
RECONNECTED = -1  # a pseudo message id on the PUBACK queue: the cloud link came back


def check(cfg: ForwarderConfig) -> None:
    spool_dir = Path(cfg.spool.path).parent
    if spool_dir.exists() and not os.access(spool_dir, os.W_OK):
        raise ConfigError(f"spool.path: {spool_dir} is not writable")


@dataclass
class _Received:
    mid: int
    qos: int
    message: Incoming


def receipt_id(message: Spooled) -> str | None:
    """The face id a receipt will name, or None for messages no processor confirms."""
    if not message.topic.endswith("/faces"):
        return None
    # a dict keeps the last of repeated ids, as the processor's does
    return face_id_of(dict(message.properties.get("UserProperty", ())))


class Forwarder:
    def __init__(self, cfg: ForwarderConfig, node: str, stop: threading.Event) -> None:
        self.cfg = cfg
        self.stop = stop
        self.node = node
        self.own_status = status_topic(cfg.prefix, node, "forwarder")
        self.subscription = f"{cfg.prefix}/{node}/#"
        self.receipts = receipts_topic(cfg.prefix, node)
        self.faces = faces_topic(cfg.prefix, node)
        self.spooled = spooled_topic(cfg.prefix, node)
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
        #: PUBACKs or receipts that wake the sender at once (fewer wait for its next round)
        self.wake_batch = max(1, cfg.uplink.inflight // 2)
        self.delivery = Delivery(cfg.uplink.receipt_timeout_s, cfg.uplink.unconfirmed_max)
        self.recent = Recent(RECENT_LIMIT, self.spool.last_seq)
        self.errors = 0

        self.instances = own_instances(Path(cfg.spool.path).parent / "instances", instance_id())
        client_id = f"facefleet-forwarder-{node}"
        status = StatusSource(cfg.prefix, node, "forwarder", cfg.heartbeat_s, self.figures)
        # persistent: receipts published while we are away wait for us at the broker
        self.cloud_link = Link(
            "cloud",
            cfg.cloud,
            client_id,
            status,
            subscriptions=[
                qos1(self.own_status),
                *([qos1(self.receipts)] if self.use_receipts else []),
            ],
            on_up=self._cloud_up,
            persistent=self.use_receipts,
        )
        self.edge_link = Link(
            "edge",
            cfg.edge,
            client_id,
            status,
            subscriptions=[qos1(self.subscription, retain_as_published=True)],
            manual_ack=True,
            persistent=True,
            receive_maximum=EDGE_RECEIVE_MAXIMUM,
        )
        self.edge = self.edge_link.client
        self.cloud = self.cloud_link.client
        self.cloud.max_inflight_messages_set(cfg.uplink.inflight)
        self.edge.on_message = self._on_edge_message
        self.cloud.on_publish = self._on_cloud_puback
        self.cloud.on_message = self._on_cloud_message
        self.links = [self.cloud_link, self.edge_link]
        self.writer = Worker("spool-writer", self._write_loop, join_timeout_s=10)
        self.sender = Worker("uplink-sender", self._send_loop, join_timeout_s=5)
        self.workers = [self.writer, self.sender]
        log.info(
            "forwarding %s from edge %s to cloud %s, spool %s",
            self.subscription,
            cfg.edge.address,
            cfg.cloud.address,
            cfg.spool.path,
        )
        if self.spool.depth:
            log.info("spool holds %d message(s) from before; sending them first", self.spool.depth)

    # -- callbacks (paho loop threads): hand over, never block ---------------------------

    def _cloud_up(self) -> None:
        """After the cloud link's subscription and `online`: the ledger learns of the
        reconnect (before any PUBACK of it: they come on this thread) and the sender wakes."""
        if self.use_receipts:
            self.pubacks.put((RECONNECTED, 0))
        self.wake.set()

    def _on_edge_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # our own heartbeat goes to the cloud directly; our notices are for the detector
        if msg.topic in (self.own_status, self.spooled):
            client.ack(msg.mid, msg.qos)
            return
        properties = properties_to_dict(msg)
        face_id = None
        if msg.topic == self.faces:
            face_id = face_id_of(dict(properties.get("UserProperty", ())))
        incoming = Incoming(msg.topic, bytes(msg.payload), bool(msg.retain), properties, face_id)
        self.received.put(_Received(msg.mid, msg.qos, incoming))

    def _on_cloud_puback(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        self.pubacks.put((mid, int(reason.value)))
        waiting = self.pubacks.qsize()
        if waiting >= self.wake_batch or waiting >= len(self.delivery.inflight):
            self.wake.set()

    def _on_cloud_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.own_status:
            self._check_own_status(msg)
            return
        if msg.topic != self.receipts:
            return
        try:
            self.confirmations.put(Receipt.decode(bytes(msg.payload)))
        except ContractError as exc:
            self.errors += 1
            log.warning("ignored a receipt: %s", exc)
            return
        waiting = self.confirmations.qsize()
        if waiting >= self.wake_batch or waiting >= len(self.delivery.unconfirmed):
            self.wake.set()

    def _check_own_status(self, msg: mqtt.MQTTMessage) -> None:
        """Our status topic says another instance, not this device's, was online just now."""
        try:
            status = Status.decode(bytes(msg.payload))
            sent = parse_timestamp(status.ts or "").timestamp()
        except ValueError:
            return
        other = status.instance
        recent = time.time() - sent < STALE_INTERVALS * (status.interval_s or self.cfg.heartbeat_s)
        if status.state == "online" and recent and other and other not in self.instances:
            self.cloud_link.tracker.clone_seen(f"instance {other} was online with our identity")

    # -- figures ----------------------------------------------------------------------

    def figures(self) -> ForwarderFigures:
        delivery = self.delivery
        return ForwarderFigures(
            spool_depth=self.spool.depth,
            spool_bytes=self.spool.bytes,
            spool_oldest_age_s=self.spool.oldest_age_s(),
            forwarded=delivery.forwarded,
            forwarded_faces=delivery.forwarded_faces,
            uplink_bytes=delivery.uplink_bytes,
            uplink_face_bytes=delivery.uplink_face_bytes,
            inflight=len(delivery.inflight),
            unconfirmed=len(delivery.unconfirmed),
            confirmed=delivery.confirmed,
            resent=delivery.resent,
            rejected_by_processor=delivery.rejected_by_processor,
            dropped=self.spool.dropped,
            spool_duplicates=self.spool.duplicates,
            expired=self.spool.expired,
            rejected=delivery.rejected,
            edge_connected=self.edge_link.connected,
            cloud_connected=self.cloud_link.connected,
            errors=self.errors,
        )

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
            self.recent.resync(self.spool.last_seq)
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
            stored: list[Spooled] = []
            dropped = self.spool.dropped
            try:
                self.spool.append_many(
                    (item.message for item in batch), delete=confirmed, stored=stored
                )
            except Exception:
                # not acknowledged: the edge broker redelivers them (persistent session)
                self.errors += 1
                log.exception("could not write %d message(s) to the spool", len(batch))
                self.received.put(confirmed)
                time.sleep(1.0)
                continue
            if self.spool.dropped != dropped:  # drop-oldest may have evicted what is there
                self.recent.resync(self.spool.last_seq)
            self.recent.add(stored)
            with batched(self.edge):  # paho's loop woken once for the batch
                for item in batch:
                    self.edge.ack(item.mid, item.qos)
            self.wake.set()
            spooled = tuple(i.message.face_id for i in batch if i.message.face_id is not None)
            if spooled:
                self.edge.publish(self.spooled, SpooledNotice(spooled).encode(), qos=1)

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

    def _settle(self) -> None:
        """Hand what came from the cloud to the ledger: PUBACKs and reconnects (one queue,
        in order), then receipts."""
        while True:
            try:
                mid, reason = self.pubacks.get_nowait()
            except queue.Empty:
                break
            if mid == RECONNECTED:
                self.delivery.reconnected()
            else:
                self.delivery.puback(mid, reason)
        while True:
            try:
                self.delivery.receipt(self.confirmations.get_nowait())
            except queue.Empty:
                break

    def _publish(self, row: Spooled) -> int:
        """Send a spooled message to the cloud; returns its MQTT message id."""
        info = self.cloud.publish(
            row.topic,
            row.payload,
            qos=1,
            retain=row.retain,
            properties=properties_from_dict(row.properties),
        )
        return info.mid

    def _resend_overdue(self, free: int) -> int:
        """Send faces whose receipt is overdue again, oldest first; returns how many were due."""
        due = self.delivery.overdue(free)
        if not due:
            return 0
        rows = {row.seq: row for row in self.spool.get_many([seq for _, seq in due])}
        for face_id, seq in due:
            row = rows.get(seq)
            if row is None:
                self.delivery.gone(face_id)
            else:
                self.delivery.sent_again(self._publish(row), face_id, len(row.payload))
        return len(due)

    def _send_loop(self) -> None:
        last_sent = 0
        rate = self.cfg.uplink.max_rate
        burst = self.cfg.uplink.inflight
        window = burst * QUEUED_WINDOWS
        tokens, refilled = float(burst), time.monotonic()
        while not self.stop.is_set():
            self.wake.clear()  # before the work, so a wake-up during it is not lost
            self._settle()
            done = self.delivery.deletable()
            if done:
                self.received.put(done)
            free = window - len(self.delivery.inflight)
            if rate > 0:
                now = time.monotonic()
                tokens = min(float(burst), tokens + (now - refilled) * rate)
                refilled = now
                free = min(free, int(tokens))
            if self.cloud_link.connected and free > 0:
                sent = self._resend_overdue(free)
                wanted = min(free - sent, self.delivery.room)
                rows = self.recent.take(last_sent, wanted) if wanted > 0 else []
                if rows is None:
                    rows = self.spool.after(last_sent, wanted)
                with batched(self.cloud):  # paho's loop woken once for the window
                    for row in rows:
                        face_id = receipt_id(row) if self.use_receipts else None
                        mid = self._publish(row)
                        self.delivery.sent(mid, row.seq, len(row.payload), face_id)
                        last_sent = row.seq
                        sent += 1
                tokens -= sent
            self.wake.wait(0.05 if rate > 0 else 0.5)

    # -- lifecycle --------------------------------------------------------------------

    def main_loop(self) -> None:
        self.stop.wait()

    def shutdown_steps(self) -> Sequence[Step]:
        """The edge first: `stopped` there, the writer acknowledges what it spools while
        still connected, then the edge disconnects (what is not acknowledged stays queued
        at the broker); then the sender, the last receipts and deletions, the cloud."""
        return [
            self.edge_link.heartbeat.stop,
            self.writer.join,
            self.edge.disconnect,
            self.sender.join,
            self._settle,
            self._delete_settled,
            self.cloud_link.close,
            self.edge.loop_stop,
            self._report,
            self.spool.close,
        ]

    def _delete_settled(self) -> None:
        """Once the writer has stopped: delete what it left and what the ledger settled."""
        self._delete(self._take_deletions() + self.delivery.deletable(everything=True))

    def _report(self) -> None:
        log.info(
            "stopped: %d forwarded, %d still spooled, %d dropped, %d expired",
            self.delivery.forwarded,
            self.spool.depth,
            self.spool.dropped,
            self.spool.expired,
        )


SERVICE = ServiceSpec(
    ForwarderConfig, lambda cfg: {"edge": cfg.edge, "cloud": cfg.cloud}, check, Forwarder
)
