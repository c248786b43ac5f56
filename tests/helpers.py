"""Test helpers: valid face messages, service subprocesses, a collecting MQTT client."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt

from facefleet.config import dump_toml
from facefleet.contract import FaceMeta, faces_topic, new_face_id, utc_timestamp
from facefleet.localbroker import LocalBroker
from facefleet.mqtt import MqttSettings, make_client, publish_properties, start


def jpeg_bytes(width: int = 64, height: int = 80, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes()


def png_bytes(width: int = 64, height: int = 80, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    ok, data = cv2.imencode(".png", rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    assert ok
    return data.tobytes()


def face_meta(node: str, payload: bytes, **overrides: Any) -> FaceMeta:
    values: dict[str, Any] = {
        "id": new_face_id(),
        "node": node,
        "track": 1,
        "ts": utc_timestamp(),
        "box": (10, 20, 64, 80),
        "score": 0.93,
        "frame": (640, 480),
        "detector": "yunet",
        "sha256": hashlib.sha256(payload).hexdigest(),
        "content_type": "image/jpeg",
    }
    values.update(overrides)
    return FaceMeta(**values)


@dataclass
class Publisher:
    """Publishes face messages at QoS 1 and remembers their ids."""

    settings: MqttSettings
    prefix: str = "facefleet"
    client: mqtt.Client = field(init=False)
    sent: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = make_client(self.settings, f"test-publisher-{time.monotonic_ns()}")
        start(self.client, self.settings)
        wait_until(self.client.is_connected, 10, "publisher connected")

    def face(self, node: str, payload: bytes | None = None, seed: int = 0) -> FaceMeta:
        payload = payload if payload is not None else jpeg_bytes(seed=seed)
        meta = face_meta(node, payload)
        self.raw(faces_topic(self.prefix, node), payload, meta.content_type, meta.user_properties())
        self.sent.append(meta.id)
        return meta

    def raw(
        self, topic: str, payload: bytes, ctype: str | None, props: list[tuple[str, str]] | None
    ) -> None:
        info = self.client.publish(
            topic, payload, qos=1, properties=publish_properties(ctype, props)
        )
        info.wait_for_publish(timeout=10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Collector:
    """Subscribes to a topic filter and keeps every message it receives."""

    settings: MqttSettings
    topic: str
    messages: list[mqtt.MQTTMessage] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.client = make_client(self.settings, f"test-collector-{time.monotonic_ns()}")
        self.client.on_connect = lambda c, *_: c.subscribe(self.topic, qos=1)
        self.client.on_message = self._on_message
        start(self.client, self.settings)
        wait_until(self.client.is_connected, 10, "collector connected")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(msg)

    def snapshot(self) -> list[mqtt.MQTTMessage]:
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for: {what}")


class ServiceProcess:
    """`python -m facefleet <service> --config FILE` as a real subprocess."""

    def __init__(
        self, service: str, config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.service = service
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{service}.toml"
        self.config_path.write_text(dump_toml(config))
        self.log_path = workdir / f"{service}.log"
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "facefleet",
                    self.service,
                    "--config",
                    str(self.config_path),
                ],
                stdout=log,
                stderr=log,
                env=self.env,
            )
        return self

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        """kill -9: no cleanup, no last words but the broker's last will."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 20) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"{self.service} ignored SIGTERM for {timeout_s}s:\n{self.log()}"
            ) from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def fleet_status(inventory: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """`facefleet fleet status --inventory INVENTORY [options]` as a real process."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "facefleet",
            "fleet",
            "status",
            "--inventory",
            str(inventory),
            *list(options),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def cloud_inventory(cloud_broker: LocalBroker, path: Path) -> Path:
    """An inventory naming `cloud_broker` and its PKI (edges cam1, cam2; cloud host cloud1),
    as an operator's would for `fleet status` or the monitor."""
    cloud_broker.settings_for("monitor")  # issues monitor.crt/key in the broker's PKI dir
    path.write_text(
        textwrap.dedent(f"""
        all:
          vars:
            facefleet_cloud_broker_host: 127.0.0.1
            facefleet_cloud_broker_port: {cloud_broker.port}
            facefleet_pki_dir: {cloud_broker.pki_dir}
          children:
            edge:
              hosts:
                cam1: {{}}
                cam2: {{}}
            cloud:
              hosts:
                cloud1: {{ansible_host: 127.0.0.1}}
        """)
    )
    return path


def refused_port() -> int:
    """A loopback port nobody listens on (bound, then closed): connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
