"""Valid face messages for the benchmarks, published at QoS 1 with `ts` = the time of publishing.

Depends only on facefleet and paho, so the lab benchmark can run this very file on a lab edge
host with the facefleet it deployed there: `python - --count N --rate R < bench/faces.py`
publishes to the host's edge broker at a fixed rate and prints `<face id> <ts>` per face.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from importlib import resources

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties

from facefleet.contract import FaceMeta, new_face_id, utc_timestamp
from facefleet.mqtt import MqttSettings, make_client, publish_properties, start


def face_payload() -> bytes:
    """A real face JPEG (the synthetic scene's asset, 12 KB)."""
    return resources.files("facefleet").joinpath("assets", "astronaut_face.jpg").read_bytes()


def face_message(
    node: str, track: int, sha256: str, frame: tuple[int, int], detector: str
) -> tuple[FaceMeta, Properties]:
    """A valid face's metadata (a new id, ts = now, a JPEG) and its MQTT publish properties."""
    meta = FaceMeta(
        id=new_face_id(),
        node=node,
        track=track,
        ts=utc_timestamp(),
        box=(100, 80, 120, 140),
        score=0.95,
        frame=frame,
        detector=detector,
        sha256=sha256,
        content_type="image/jpeg",
    )
    return meta, publish_properties(meta.content_type, meta.user_properties())


class FacePublisher:
    """Publishes valid face messages (contract properties, ts = now) at QoS 1."""

    def __init__(self, settings: MqttSettings, node: str, prefix: str = "facefleet") -> None:
        self.node = node
        self.topic = f"{prefix}/{node}/faces"
        self.payload = face_payload()
        self.sha = hashlib.sha256(self.payload).hexdigest()
        self.client = make_client(settings, f"bench-faces-{os.getpid()}-{time.monotonic_ns()}")
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.infos: list[mqtt.MQTTMessageInfo] = []
        self.sent: dict[str, str] = {}  # id -> ts
        start(self.client, settings)
        deadline = time.monotonic() + 15
        while not self.client.is_connected():
            if time.monotonic() > deadline:
                raise TimeoutError(f"face publisher: no connection to {settings.address}")
            time.sleep(0.05)

    def publish(self, track: int = 1) -> str:
        meta, props = face_message(self.node, track, self.sha, (640, 480), "bench")
        self.infos.append(self.client.publish(self.topic, self.payload, qos=1, properties=props))
        self.sent[meta.id] = meta.ts
        return meta.id

    def publish_at(self, rate: float, count: int) -> None:
        """`count` faces at `rate` per second, on a fixed schedule (no drift)."""
        began = time.monotonic()
        for n in range(count):
            time.sleep(max(0.0, began + n / rate - time.monotonic()))
            self.publish(track=n + 1)

    def wait_acked(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for info in self.infos:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            if not info.is_published():
                raise TimeoutError(f"PUBACKs: {len(self.infos)} faces not acknowledged in time")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--node", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args(argv)
    logging.getLogger("facefleet.mqtt.paho").setLevel(logging.CRITICAL)  # stdout is the answer
    publisher = FacePublisher(MqttSettings(host=args.host, port=args.port), args.node)
    try:
        publisher.publish_at(args.rate, args.count)
        publisher.wait_acked(60)
    finally:
        publisher.close()
    sys.stdout.write("".join(f"{face} {ts}\n" for face, ts in publisher.sent.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
