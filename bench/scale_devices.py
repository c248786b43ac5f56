"""Simulated edge devices for `bench/scale.py`: many devices in one process, one thread each.

Each device is what the cloud broker sees of a real one: the forwarder's MQTT connection
(client id `facefleet-forwarder-<node>`, the node's own client certificate, a persistent
session, the forwarder's retained `offline` will), the three edge services' retained
heartbeats at the production interval (the forwarder relays the detector's and logger's), faces
with the contract's properties at QoS 1, and its receipts subscription. A device's paho network
thread is the same one a forwarder runs; the faces and heartbeats are scheduled by one thread
per process.

Protocol: the first stdin line is the JSON configuration; later lines are commands
(`{"faces_per_s": R}` sets the process's share of the fleet's face rate, `{"stop": true}` ends
it). Once a second the process prints one JSON line of figures on stdout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import sys
import threading
import time
from copy import copy
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import paho.mqtt.client as mqtt

from bench.faces import face_message
from facefleet.contract import (
    DetectorFigures,
    ForwarderFigures,
    LoggerFigures,
    Receipt,
    ServiceFigures,
    faces_topic,
    receipts_topic,
)
from facefleet.mqtt import MqttSettings, make_client, start
from facefleet.service import Heartbeat

#: The edge services whose heartbeats reach the cloud broker over a device's connection, with
#: the figures a healthy device's services send (the values of a lab edge playing its clip at
#: 5 fps).
EDGE_FIGURES: dict[str, ServiceFigures] = {
    "detector": DetectorFigures(
        fps=5.0, frames=18000, faces_detected=5200, tracks_active=1,
        published=410, published_bytes=5330000, dropped=0, unacked=0,
        errors=0, held_back={"small": 12, "blurry": 30}, merged=25,
    ),
    "logger": LoggerFigures(
        events=1300, faces=410, status_changes=6, errors=0,
        audit_path="/var/log/facefleet/audit.jsonl",
    ),
    "forwarder": ForwarderFigures(
        spool_depth=0, spool_bytes=0, spool_oldest_age_s=0.0, forwarded=1300,
        forwarded_faces=410, uplink_bytes=5400000, uplink_face_bytes=5330000,
        inflight=0, unconfirmed=0, confirmed=410, resent=0,
        rejected_by_processor=0, dropped=0, expired=0, rejected=0,
        edge_connected=True, cloud_connected=True, errors=0,
    ),
}  # fmt: skip


@dataclass
class Figures:
    """What the process reports; the lists are emptied at every report."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    connects: int = 0
    faces: int = 0
    face_bytes: int = 0
    heartbeats: int = 0
    heartbeat_bytes: int = 0
    receipts: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def report(self, connected: int) -> dict[str, Any]:
        with self.lock:
            out = {
                "connected": connected,
                "connects": self.connects,
                "faces": self.faces,
                "face_bytes": self.face_bytes,
                "heartbeats": self.heartbeats,
                "heartbeat_bytes": self.heartbeat_bytes,
                "receipts": self.receipts,
                "latencies_ms": self.latencies_ms,
            }
            self.latencies_ms = []
        return out


class Device:
    """One simulated edge device: its forwarder's cloud connection and what goes over it."""

    def __init__(
        self, node: str, settings: MqttSettings, prefix: str, heartbeat_s: float, figures: Figures
    ) -> None:
        self.node = node
        self.settings = settings
        self.figures = figures
        self.faces_topic = faces_topic(prefix, node)
        self.receipts_topic = receipts_topic(prefix, node)
        self.client = make_client(settings, f"facefleet-forwarder-{node}")
        self.client.max_inflight_messages_set(32)  # the forwarder's uplink.inflight default
        # the forwarder's heartbeat last: its will (offline, retained) is the one installed
        self.heartbeats = [
            Heartbeat(self.client, prefix, node, service, heartbeat_s, partial(copy, figures))
            for service, figures in EDGE_FIGURES.items()
        ]
        self.connected = False
        self.sent: dict[str, float] = {}  # face id -> monotonic time of publishing
        self._lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def start(self) -> None:
        start(self.client, self.settings, persistent=True)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            return
        client.subscribe(self.receipts_topic, qos=1)
        self.connected = True
        with self.figures.lock:
            self.figures.connects += 1
        self.heartbeat()

    def _on_disconnect(self, *_args: Any) -> None:
        self.connected = False

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            receipt = Receipt.decode(bytes(message.payload))
        except ValueError:
            return
        with self._lock:
            sent = self.sent.pop(receipt.id, None)
        if sent is None:
            return  # a duplicate receipt: the first one was counted
        with self.figures.lock:
            self.figures.receipts += 1
            self.figures.latencies_ms.append((time.monotonic() - sent) * 1000)

    def heartbeat(self) -> None:
        if not self.connected:
            return
        size = 0
        for beat in self.heartbeats:
            payload = beat.payload("online")
            self.client.publish(beat.topic, payload, qos=1, retain=True)
            size += len(beat.topic) + len(payload)
        with self.figures.lock:
            self.figures.heartbeats += len(self.heartbeats)
            self.figures.heartbeat_bytes += size

    def face(self, payload: bytes, sha256: str, track: int) -> None:
        meta, properties = face_message(self.node, track, sha256, (1280, 720), "yunet")
        with self._lock:
            self.sent[meta.id] = time.monotonic()
        self.client.publish(self.faces_topic, payload, qos=1, properties=properties)
        with self.figures.lock:
            self.figures.faces += 1
            self.figures.face_bytes += len(payload)


def schedule(
    devices: list[Device],
    heartbeat_s: float,
    payload: bytes,
    stop: threading.Event,
    rate: list[float],
    seed: int,
) -> None:
    """Heartbeats every `heartbeat_s` per device (phases spread over the interval) and faces
    at `rate[0]` per second for the whole process, each from a device chosen at random."""
    rng = random.Random(seed)
    sha = hashlib.sha256(payload).hexdigest()
    now = time.monotonic()
    due = [now + rng.uniform(0, heartbeat_s) for _ in devices]
    next_face = now
    track = 0
    while not stop.wait(0.02):
        now = time.monotonic()
        for index, device in enumerate(devices):
            if due[index] <= now:
                device.heartbeat()
                due[index] += heartbeat_s
        if rate[0] <= 0:
            next_face = now
            continue
        while next_face <= now:
            device = rng.choice(devices)
            if device.connected:
                track += 1
                device.face(payload, sha, track)
            next_face += rng.expovariate(rate[0])


def main() -> int:
    logging.getLogger("facefleet.mqtt.paho").setLevel(logging.CRITICAL)
    config = json.loads(sys.stdin.readline())
    figures = Figures()
    devices = []
    for node in config["nodes"]:
        settings = MqttSettings(
            host=config["host"],
            port=config["port"],
            tls=True,
            ca_file=config["ca_file"],
            cert_file=f"{config['pki_dir']}/{node}.crt",
            key_file=f"{config['pki_dir']}/{node}.key",
        )
        devices.append(Device(node, settings, config["prefix"], config["heartbeat_s"], figures))
    with open(config["face_file"], "rb") as handle:
        payload = handle.read()
    stop = threading.Event()
    rate = [0.0]
    for device in devices:
        device.start()
    scheduler = threading.Thread(
        target=schedule,
        args=(devices, config["heartbeat_s"], payload, stop, rate, config["seed"]),
        daemon=True,
    )
    scheduler.start()

    def read_commands() -> None:
        for line in sys.stdin:
            command = json.loads(line)
            if command.get("stop"):
                break
            rate[0] = float(command.get("faces_per_s", rate[0]))
        stop.set()

    threading.Thread(target=read_commands, daemon=True).start()
    while not stop.wait(1.0):
        connected = sum(device.connected for device in devices)
        print(json.dumps(figures.report(connected)), flush=True)
    for device in devices:
        device.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
