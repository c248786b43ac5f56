"""Runs on a lab edge host with a facefleet release's Python: publishes a face to the edge
broker every half second until STOP exists, and appends the id of every face the broker
acknowledged to OUT. Started before a rollout, it shows whether faces published while the
host switches releases reach storage.

usage: python face_publisher.py NODE OUT STOP
"""

import contextlib
import hashlib
import sys
import time
from importlib.resources import files
from pathlib import Path

from facefleet.contract import FaceMeta, faces_topic, new_face_id, utc_timestamp
from facefleet.mqtt import MqttSettings, make_client, publish_properties, start

node, out, stop = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
payload = files("facefleet").joinpath("assets/astronaut_face.jpg").read_bytes()
settings = MqttSettings(host="127.0.0.1", port=1883)
client = make_client(settings, f"rollout-test-publisher-{node}")
start(client, settings)
connect_deadline = time.monotonic() + 30
while not client.is_connected() and time.monotonic() < connect_deadline:
    time.sleep(0.1)
with out.open("a") as acked:
    while not stop.exists():
        meta = FaceMeta(
            id=new_face_id(),
            node=node,
            track=1,
            ts=utc_timestamp(),
            box=(10, 20, 64, 80),
            score=0.9,
            frame=(640, 480),
            detector="yunet",
            sha256=hashlib.sha256(payload).hexdigest(),
            content_type="image/jpeg",
        )
        properties = publish_properties(meta.content_type, meta.user_properties())
        info = client.publish(faces_topic("facefleet", node), payload, qos=1, properties=properties)
        with contextlib.suppress(RuntimeError, ValueError):  # not connected: not counted
            info.wait_for_publish(timeout=10)
            if info.is_published():
                acked.write(meta.id + "\n")
                acked.flush()
        time.sleep(0.5)
client.disconnect()
client.loop_stop()
