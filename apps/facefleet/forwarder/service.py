"""The forwarder: edge broker -> durable spool -> cloud broker.

Three actors, each owning its state:
- paho's edge loop thread receives messages (manual acknowledgement, persistent session) and
  hands them to the writer;
- the writer thread commits them to the spool in batches (one fsync per batch) and only then
  acknowledges them to the edge broker;
- the sender thread keeps at most `uplink.inflight` spooled messages unacknowledged at the
  cloud broker, in spool order, and deletes each one when its PUBACK arrives. paho retransmits
  in-flight messages itself after a reconnect; after a restart everything spooled is resent.
"""

from __future__ import annotations

import logging
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
from facefleet.contract import status_topic
from facefleet.forwarder.settings import ForwarderConfig
from facefleet.forwarder.spool import Incoming, Spool
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
    seq: int
    size: int
    is_face: bool


class Forwarder:
    def __init__(self, cfg: ForwarderConfig, stop: threading.Event) -> None:
        self.cfg = cfg
        self.stop = stop
        self.node = resolve_node(cfg.node)
        self.own_status = status_topic(cfg.prefix, self.node, "forwarder")
        self.subscription = f"{cfg.prefix}/{self.node}/#"
        self.spool = Spool(cfg.spool.path, cfg.spool.max_bytes, cfg.spool.when_full)
        self.received: queue.Queue[_Received] = queue.Queue()
        self.pubacks: queue.SimpleQueue[tuple[int, bool]] = queue.SimpleQueue()
        self.wake = threading.Event()
        self.inflight: dict[int, _InFlight] = {}
        self._acked: list[int] = []  # acknowledged by the cloud, not yet deleted
        self._deleted_at = time.monotonic()
        self.forwarded = 0
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
        self.edge_link = ConnectionTracker(self.edge, "edge", self._edge_up)
        self.cloud_link = ConnectionTracker(self.cloud, "cloud", self._cloud_up)
        self.edge.on_message = self._on_edge_message
        self.cloud.on_publish = self._on_cloud_puback

    # -- callbacks (paho loop threads): hand over, never block ---------------------------

    def _edge_up(self) -> None:
        options = SubscribeOptions(qos=1, retainAsPublished=True)
        self.edge.subscribe(self.subscription, options=options)
        self.edge_heartbeat.publish("online")

    def _cloud_up(self) -> None:
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
        self.pubacks.put((mid, bool(reason.is_failure)))
        self.wake.set()

    # -- figures ----------------------------------------------------------------------

    def figures(self) -> dict[str, Any]:
        return {
            "spool_depth": self.spool.depth,
            "spool_bytes": self.spool.bytes,
            "spool_oldest_age_s": self.spool.oldest_age_s(),
            "forwarded": self.forwarded,
            "uplink_bytes": self.uplink_bytes,
            "uplink_face_bytes": self.uplink_face_bytes,
            "inflight": len(self.inflight),
            "dropped": self.spool.dropped,
            "rejected": self.rejected,
            "edge_connected": self.edge_link.connected.is_set(),
            "cloud_connected": self.cloud_link.connected.is_set(),
            "errors": self.errors,
        }

    # -- writer: received -> spool -> ack upstream ------------------------------------

    def _write_loop(self) -> None:
        while not self.stop.is_set() or not self.received.empty():
            try:
                first = self.received.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < WRITE_BATCH:
                try:
                    batch.append(self.received.get_nowait())
                except queue.Empty:
                    break
            try:
                self.spool.append_many(item.message for item in batch)
            except Exception:
                # not acknowledged: the edge broker redelivers them (persistent session)
                self.errors += 1
                log.exception("could not write %d message(s) to the spool", len(batch))
                time.sleep(1.0)
                continue
            for item in batch:
                self.edge.ack(item.mid, item.qos)
            self.wake.set()

    # -- sender: spool -> cloud, delete on PUBACK -------------------------------------

    def _settle_pubacks(self) -> None:
        done: list[int] = []
        while True:
            try:
                mid, failed = self.pubacks.get_nowait()
            except queue.Empty:
                break
            entry = self.inflight.pop(mid, None)
            if entry is None:
                continue
            if failed:
                # kept in the spool: sent again after a restart, once the ACL or identity is fixed
                self.rejected += 1
                log.error(
                    "cloud broker refused spooled message %d (check the ACL and the "
                    "certificate CN); it stays in the spool",
                    entry.seq,
                )
                continue
            done.append(entry.seq)
            self.forwarded += 1
            self.uplink_bytes += entry.size
            if entry.is_face:
                self.uplink_face_bytes += entry.size
        # Deletes are batched: each one waits for the writer's commit, and a delete that is
        # late (or lost in a crash) only means the message is sent again, to the same key.
        self._acked.extend(done)
        now = time.monotonic()
        if (
            len(self._acked) >= DELETE_BATCH
            or not self.inflight
            or now - self._deleted_at >= DELETE_EVERY_S
        ):
            self._delete_acked()

    def _delete_acked(self) -> None:
        if self._acked:
            self.spool.delete_many(self._acked)
            self._acked = []
        self._deleted_at = time.monotonic()

    def _send_loop(self) -> None:
        last_sent = 0
        rate = self.cfg.uplink.max_rate
        window = self.cfg.uplink.inflight
        tokens, refilled = float(window), time.monotonic()
        while not self.stop.is_set():
            self.wake.clear()  # before the work, so a wake-up during it is not lost
            self._settle_pubacks()
            free = window - len(self.inflight)
            if rate > 0:
                now = time.monotonic()
                tokens = min(float(window), tokens + (now - refilled) * rate)
                refilled = now
                free = min(free, int(tokens))
            if self.cloud_link.connected.is_set() and free > 0:
                for row in self.spool.after(last_sent, free):
                    info = self.cloud.publish(
                        row.topic,
                        row.payload,
                        qos=1,
                        retain=row.retain,
                        properties=properties_from_dict(row.properties),
                    )
                    self.inflight[info.mid] = _InFlight(
                        row.seq, len(row.payload), row.topic.endswith("/faces")
                    )
                    last_sent = row.seq
                    tokens -= 1
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
        start(self.cloud, self.cfg.cloud)
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
            self._delete_acked()
            self.cloud_heartbeat.stop()
            self.cloud.disconnect()
            self.cloud.loop_stop()
            self.edge.loop_stop()
            log.info(
                "stopped: %d forwarded, %d still spooled, %d dropped",
                self.forwarded,
                self.spool.depth,
                self.spool.dropped,
            )
            self.spool.close()
        return 0


def run(cfg: ForwarderConfig) -> int:
    check(cfg)
    return Forwarder(cfg, stop_event()).run()
