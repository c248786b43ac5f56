"""Bad input at the processor: dead-lettered with its reason; the processor keeps going."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from facefleet.contract import faces_topic
from facefleet.localbroker import LocalBroker
from tests.pipeline.relay import CLOUD_NODE, mqtt_table, wait_online
from tests.support import Publisher, ServiceProcess, face_meta, jpeg_bytes, wait_until

pytestmark = pytest.mark.broker


@pytest.fixture
def processor(tmp_path: Path) -> Iterator[tuple[LocalBroker, Path, ServiceProcess]]:
    cloud = LocalBroker("cloud", workdir=tmp_path / "cloud", processors=(CLOUD_NODE,)).start()
    store = tmp_path / "store"
    service = ServiceProcess(
        "processor",
        {
            "node": CLOUD_NODE,
            "heartbeat_s": 1.0,
            "mqtt": mqtt_table(cloud, CLOUD_NODE),
            "storage": {"kind": "filesystem", "path": str(store)},
            "validation": {"max_bytes": 100_000},
        },
        tmp_path / "processor",
    ).start()
    try:
        wait_online(cloud, "processor")
        yield cloud, store, service
    finally:
        service.stop()
        cloud.cleanup()


def dead_letters(store: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted((store / "deadletter").rglob("*.json"))]


def test_bad_input_is_dead_lettered_and_good_input_still_stored(
    processor: tuple[LocalBroker, Path, ServiceProcess],
) -> None:
    cloud, store, service = processor
    device = Publisher(cloud.settings_for("edge1"))
    topic = faces_topic("facefleet", "edge1")
    good = jpeg_bytes()
    props = face_meta("edge1", good).user_properties()
    truncated = good[: len(good) // 2]
    import hashlib

    cases = {
        "garbage": (b"\x00garbage\xff" * 10, "image/jpeg", props),
        "no properties": (good, "image/jpeg", None),
        "wrong node": (good, "image/jpeg", face_meta("edge2", good).user_properties()),
        "oversized": (b"\xff\xd8" + b"x" * 150_000, "image/jpeg", props),
        "truncated": (
            truncated,
            "image/jpeg",
            face_meta(
                "edge1", truncated, sha256=hashlib.sha256(truncated).hexdigest()
            ).user_properties(),
        ),
        "wrong type": (good, "text/plain", props),
    }
    for payload, ctype, user_props in cases.values():
        device.send_raw(topic, payload, ctype, user_props)
    meta = device.send_face("edge1")  # a good one after all the bad ones
    wait_until(lambda: len(dead_letters(store)) >= len(cases), 30, "all dead letters")
    reasons = " | ".join(str(d["reason"]) for d in dead_letters(store))
    for expected in (
        "sha256 does not match",
        "missing properties",
        "differs from the node",
        "exceeds",
        "truncated JPEG",
        "unsupported content type",
    ):
        assert expected in reasons
    image = wait_until(lambda: list(store.glob(f"faces/edge1/**/*_{meta.id}.jpg")), 30, "stored")
    sidecar = json.loads(image[0].with_suffix(".json").read_text())
    assert sidecar["id"] == meta.id and sidecar["content_type"] == "image/jpeg"
    assert service.alive()
    device.close()


def test_redelivered_face_is_stored_once(
    processor: tuple[LocalBroker, Path, ServiceProcess],
) -> None:
    cloud, store, _service = processor
    device = Publisher(cloud.settings_for("edge1"))
    payload = jpeg_bytes()
    meta = face_meta("edge1", payload)
    for _ in range(3):  # what a forwarder restart or a lost PUBACK produces
        device.send_raw(
            faces_topic("facefleet", "edge1"), payload, "image/jpeg", meta.user_properties()
        )
    wait_until(lambda: list(store.glob("faces/**/*.jpg")), 30, "stored")
    import time

    time.sleep(1.5)
    assert len(list(store.glob("faces/**/*.jpg"))) == 1
    device.close()
