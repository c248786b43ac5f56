"""What the tests and the benchmarks share: waiting for a condition, a facefleet service as a
real subprocess, and MQTT clients that publish valid faces and collect what arrives.

It lives in the `tests` package so that both import it the same way, as `tests.support`, from
the repository root: pytest puts the root on `sys.path` (rootdir, `tests` is a package) and
`python -m bench` runs from the root.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt

from facefleet.config import dump_toml
from facefleet.contract import (
    DEFAULT_PREFIX,
    FaceMeta,
    faces_topic,
    new_face_id,
    status_topic,
    utc_timestamp,
)
from facefleet.mqtt import MqttSettings, make_client, publish_properties, start

ROOT = Path(__file__).resolve().parent.parent


def wait_until(
    predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05
) -> Any:
    """Poll `predicate` until it returns something true, and return that."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")


def seeded_faults(
    seed_variable: str, counts: dict[str, int]
) -> tuple[int, random.Random, list[str]]:
    """The plan of a seeded fault test: its seed (from `seed_variable`, to replay a printed
    run, else a fresh one), the random generator it seeds (for the instants) and every fault
    `counts` names, as often as it says, in a random order. The caller prints the seed and
    names it in a failure."""
    seed = int(os.environ.get(seed_variable, str(random.randrange(1 << 32))))
    rng = random.Random(seed)
    plan = [
        fault
        for i in range(max(counts.values(), default=0))
        for fault in counts
        if i < counts[fault]
    ]
    rng.shuffle(plan)
    return seed, rng, plan


def jpeg_bytes(width: int = 64, height: int = 80, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return bytes(data.tobytes())


def png_bytes(width: int = 64, height: int = 80, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    ok, data = cv2.imencode(".png", rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    assert ok
    return bytes(data.tobytes())


def face_meta(node: str, payload: bytes, **overrides: Any) -> FaceMeta:
    """Valid metadata of a new face of `node` (fresh id, stamped now) carrying `payload`."""
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


class ServiceProcess:
    """`python -m facefleet <service> --config FILE` as a real subprocess; `name` names its
    config and log files (several of one service in one directory), `cpus` pins it (taskset)."""

    def __init__(
        self,
        service: str,
        config: dict[str, Any],
        workdir: Path,
        *,
        name: str = "",
        env: dict[str, str] | None = None,
        cpus: str = "",
    ) -> None:
        self.service = service
        self.name = name or service
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{self.name}.toml"
        self.config_path.write_text(dump_toml(config))
        self.log_path = workdir / f"{self.name}.log"
        self.env = {**os.environ, **(env or {})}
        self.cpus = cpus
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        command = [sys.executable, "-m", "facefleet", self.service, "--config"]
        command.append(str(self.config_path))
        if self.cpus:
            command = ["taskset", "-c", self.cpus, *command]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, env=self.env)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        """kill -9: no cleanup, no last words but the broker's last will."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 20) -> int | None:
        """SIGTERM and wait; the exit status (None if it never started). A service that
        ignores SIGTERM is killed, and that is an error."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise TimeoutError(
                f"{self.name} ignored SIGTERM for {timeout_s:g}s:\n{self.log_tail(40)}"
            ) from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 8) -> str:
        return "\n".join(self.log().strip().splitlines()[-lines:])


class Publisher:
    """A real MQTT v5 client that publishes at QoS 1 what a test or benchmark needs.

    `face`, `status` and `publish` queue their message: `flush` (and `close`) wait for the
    PUBACKs. `send_face` and `send_raw` return once the broker has acknowledged.
    """

    def __init__(self, settings: MqttSettings, client_id: str = "") -> None:
        self.client = make_client(settings, client_id or f"test-publisher-{time.monotonic_ns()}")
        start(self.client, settings)
        wait_until(self.client.is_connected, 10, "publisher connected")
        self.pending: list[mqtt.MQTTMessageInfo] = []

    def publish(
        self,
        topic: str,
        payload: bytes,
        content_type: str | None = None,
        user_properties: list[tuple[str, str]] | None = None,
        *,
        qos: int = 1,
        retain: bool = False,
    ) -> None:
        props = publish_properties(content_type, user_properties)
        self.pending.append(
            self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        )

    def face(self, meta: FaceMeta, payload: bytes, qos: int = 1) -> None:
        topic = faces_topic(DEFAULT_PREFIX, meta.node)
        self.publish(topic, payload, meta.content_type, meta.user_properties(), qos=qos)

    def status(
        self, node: str, service: str, body: dict[str, Any] | bytes, retain: bool = True
    ) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.publish(status_topic(DEFAULT_PREFIX, node, service), payload, retain=retain)

    def flush(self, timeout_s: float = 10.0) -> None:
        for info in self.pending:
            info.wait_for_publish(timeout=timeout_s)
        self.pending.clear()

    def send_face(self, node: str, payload: bytes | None = None, seed: int = 0) -> FaceMeta:
        """A new valid face of `node` (a random JPEG from `seed` unless `payload`)."""
        payload = payload if payload is not None else jpeg_bytes(seed=seed)
        meta = face_meta(node, payload)
        self.face(meta, payload)
        self.flush()
        return meta

    def send_raw(
        self,
        topic: str,
        payload: bytes,
        content_type: str | None,
        user_properties: list[tuple[str, str]] | None,
    ) -> None:
        """Anything on any topic, valid or not."""
        self.publish(topic, payload, content_type, user_properties)
        self.flush()

    def close(self) -> None:
        self.flush()
        self.client.disconnect()
        self.client.loop_stop()


class Collector:
    """Subscribes at QoS 1 to `topics` and keeps every message it receives; ready once the
    broker has answered the subscription (again on every reconnect). Closes as a context."""

    def __init__(self, settings: MqttSettings, *topics: str) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = make_client(settings, f"test-collector-{time.monotonic_ns()}")
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        start(self.client, settings)
        if not self.subscribed.wait(20):
            raise TimeoutError(f"no SUBACK from {settings.address} in 20s")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(msg)

    def snapshot(self) -> list[mqtt.MQTTMessage]:
        with self.lock:
            return list(self.messages)

    def topics(self) -> set[str]:
        return {m.topic for m in self.snapshot()}

    def count(self, topic: str) -> int:
        return sum(1 for m in self.snapshot() if m.topic == topic)

    def latest(self) -> dict[str, dict[str, Any]]:
        """The last JSON body on each topic."""
        return {m.topic: json.loads(m.payload) for m in self.snapshot() if m.payload}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
