"""Clients of the lab's cloud side for the fleet tests: MQTT with a fleet identity, S3."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import boto3
import paho.mqtt.client as mqtt
from botocore.config import Config
from lab.inventory import LAB_S3_KEY_ID, LAB_S3_PORT, LAB_S3_SECRET

from facefleet.mqtt import MqttSettings, make_client, start
from tests.fleet.fleetlab import PKI_DIR, Lab

BROKER_PORT = 8883


def cloud_settings(lab: Lab, identity: str) -> MqttSettings:
    return MqttSettings(
        host=lab.hosts[lab.cloud],
        port=BROKER_PORT,
        tls=True,
        ca_file=str(PKI_DIR / "ca.crt"),
        cert_file=str(PKI_DIR / f"{identity}.crt"),
        key_file=str(PKI_DIR / f"{identity}.key"),
    )


class Collector:
    """A client on the cloud broker that records what it receives on `topics`."""

    def __init__(self, lab: Lab, identity: str, topics: list[str]) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self._settings = cloud_settings(lab, identity)
        self.client = make_client(self._settings, f"fleet-test-{uuid.uuid4().hex[:8]}")

        def on_connect(client: mqtt.Client, *_: Any) -> None:
            client.subscribe([(t, 1) for t in topics])

        def on_subscribe(*_: Any) -> None:
            self.subscribed.set()

        def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
            with self._lock:
                self.messages.append(message)

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message

    def __enter__(self) -> Collector:
        start(self.client, self._settings)
        assert self.subscribed.wait(20), "no SUBACK from the cloud broker"
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def topics(self) -> set[str]:
        with self._lock:
            return {m.topic for m in self.messages}

    def latest(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {m.topic: json.loads(m.payload) for m in self.messages if m.payload}


def lab_s3(lab: Lab) -> Any:
    """boto3 S3 client of the lab's S3 endpoint on the cloud host."""
    return boto3.client(
        "s3",
        endpoint_url=f"http://{lab.hosts[lab.cloud]}:{LAB_S3_PORT}",
        aws_access_key_id=LAB_S3_KEY_ID,
        aws_secret_access_key=LAB_S3_SECRET,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=20),
    )
