"""Test helpers: a real publisher client, real JPEG faces, contract properties, a frozen clock."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt

from facefleet import mqtt as ffmqtt
from facefleet.contract import FaceMeta, faces_topic, status_topic
from facefleet.mqtt import MqttSettings

PREFIX = "facefleet"
#: the monitor's frozen "now" in snapshot tests; heartbeats are stamped 5 s before it
FROZEN_NOW = datetime(2026, 1, 1, 12, 0, 5, tzinfo=timezone.utc).timestamp()
HEARTBEAT_TS = "2026-01-01T12:00:00.000Z"


def frozen_clock() -> float:
    return FROZEN_NOW


def make_jpeg(seed: int = 0, size: int = 96) -> bytes:
    """A small, deterministic face-like picture, JPEG-encoded by OpenCV."""
    img = np.full((size, size, 3), (60 + seed * 20 % 120, 90, 140), np.uint8)
    centre = (size // 2, size // 2)
    cv2.ellipse(img, centre, (size // 3, size * 2 // 5), 0, 0, 360, (150, 180, 225), -1)
    for dx in (-size // 7, size // 7):
        cv2.circle(img, (centre[0] + dx, centre[1] - size // 10), size // 16, (40, 30, 30), -1)
    cv2.ellipse(
        img,
        (centre[0], centre[1] + size // 6),
        (size // 8, size // 20),
        0,
        0,
        180,
        (60, 60, 170),
        -1,
    )
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return bytes(buf.tobytes())


def face_meta(
    node: str,
    track: int,
    payload: bytes,
    *,
    face_id: str | None = None,
    ts: str = "2026-01-01T12:00:01.250Z",
    score: float = 0.93,
    content_type: str = "image/jpeg",
) -> FaceMeta:
    return FaceMeta(
        id=face_id or f"{node}-t{track}",
        node=node,
        track=track,
        ts=ts,
        box=(100 + track, 80, 96, 112),
        score=score,
        frame=(640, 360),
        detector="yunet",
        sha256=hashlib.sha256(payload).hexdigest(),
        content_type=content_type,
    )


def status_body(node: str, service: str, state: str = "online", **figures: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "state": state,
        "service": service,
        "node": node,
        "version": "0.1.0",
        "ts": HEARTBEAT_TS,
        "interval_s": 5.0,
        "uptime_s": 120.0,
    }
    body.update(figures)
    return body


class Publisher:
    """A real MQTT v5 client that publishes what a test needs, and waits for the PUBACKs."""

    def __init__(self, settings: MqttSettings, client_id: str = "test-publisher") -> None:
        self.client = ffmqtt.make_client(settings, client_id)
        self.client.connect(settings.host, settings.port, keepalive=30)
        self.client.loop_start()
        deadline = time.monotonic() + 10
        while not self.client.is_connected():
            assert time.monotonic() < deadline, "publisher could not connect"
            time.sleep(0.02)
        self._pending: list[mqtt.MQTTMessageInfo] = []

    def status(
        self, node: str, service: str, body: dict[str, Any] | bytes, retain: bool = True
    ) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self._pending.append(
            self.client.publish(status_topic(PREFIX, node, service), payload, qos=1, retain=retain)
        )

    def face(self, meta: FaceMeta, payload: bytes, qos: int = 1) -> None:
        props = ffmqtt.publish_properties(meta.content_type, meta.user_properties())
        self._pending.append(
            self.client.publish(faces_topic(PREFIX, meta.node), payload, qos=qos, properties=props)
        )

    def raw(self, topic: str, payload: bytes, props: Any = None) -> None:
        self._pending.append(self.client.publish(topic, payload, qos=1, properties=props))

    def flush(self, timeout_s: float = 10.0) -> None:
        for info in self._pending:
            info.wait_for_publish(timeout=timeout_s)
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        self.client.disconnect()
        self.client.loop_stop()


async def wait_until(
    pilot: Any, predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def screen_text(app: Any) -> str:
    """What the terminal shows now, as plain text (the SVG snapshot's text layer)."""
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
        record=True,
        legacy_windows=False,
    )
    console.print(app.screen._compositor.render_update(full=True))
    return str(console.export_text())


def async_test(func: Callable[..., Any]) -> Callable[..., None]:
    """Run an `async def` test in a fresh event loop (the venv has no asyncio pytest plugin)."""
    import asyncio
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(func(*args, **kwargs))

    return wrapper
