"""The latest retained heartbeat of every (node, service) on one broker, for the demo and the
benchmarks (the monitor has its own, richer model)."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from facefleet.contract import DEFAULT_PREFIX, all_status_filter
from facefleet.mqtt import MqttSettings, make_client, start


class StatusBoard:
    def __init__(self, settings: MqttSettings, prefix: str = DEFAULT_PREFIX) -> None:
        self.latest: dict[tuple[str, str], dict[str, Any]] = {}
        #: monotonic time each service was first seen online
        self.first_online: dict[tuple[str, str], float] = {}
        self.lock = threading.Lock()
        self.client = make_client(settings, f"facefleet-status-{os.getpid()}-{time.monotonic_ns()}")
        self.client.on_connect = lambda c, *_: c.subscribe(all_status_filter(prefix), 1)
        self.client.on_message = self._on_message
        start(self.client, settings)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            status = json.loads(msg.payload)
            key = (str(status["node"]), str(status["service"]))
        except (ValueError, KeyError, TypeError):
            return
        with self.lock:
            self.latest[key] = status
            if status.get("state") == "online":
                self.first_online.setdefault(key, time.monotonic())

    def get(self, node: str, service: str) -> dict[str, Any]:
        with self.lock:
            return dict(self.latest.get((node, service), {}))

    def online(self, node: str, service: str) -> bool:
        return self.get(node, service).get("state") == "online"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
