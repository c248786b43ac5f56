"""Forwarder and processor as real processes between real brokers and a real S3 endpoint."""

from __future__ import annotations

import json
import platform
import time
from collections import Counter

import pytest

from facefleet.contract import FACE_PROPERTIES, all_status_filter
from facefleet.service import os_release
from tests.pipeline.relay import EDGE_NODE, Relay
from tests.support import Collector, Publisher, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.s3]


def assert_exactly_once(relay: Relay, ids: list[str]) -> None:
    keys = relay.face_keys()
    stored_ids = Counter(k.rsplit("_", 1)[1].split(".")[0] for k in keys)
    missing = set(ids) - set(stored_ids)
    assert not missing, f"{len(missing)} faces never stored"
    assert all(n == 1 for n in stored_ids.values())
    assert len(keys) == len(set(ids))


def test_faces_flow_to_s3_with_metadata(relay: Relay) -> None:
    publisher = Publisher(relay.edge.settings_for())
    metas = [publisher.send_face(EDGE_NODE, seed=i) for i in range(30)]
    keys = relay.wait_stored(30)
    assert_exactly_once(relay, [m.id for m in metas])
    head = relay.s3.client().head_object(Bucket=relay.bucket, Key=keys[0])
    assert head["ContentType"] == "image/jpeg"
    assert set(FACE_PROPERTIES) <= set(head["Metadata"])
    assert keys[0].startswith(f"faces/{EDGE_NODE}/")
    publisher.close()


def test_heartbeats_of_both_services_reach_the_cloud(relay: Relay) -> None:
    monitor = Collector(relay.cloud.settings_for("monitor"), all_status_filter("facefleet"))

    def seen() -> set[str]:
        return {
            m.topic.rsplit("/", 1)[1]
            for m in monitor.snapshot()
            if json.loads(m.payload)["state"] == "online"
        }

    wait_until(lambda: {"forwarder", "processor"} <= seen(), 20, "both heartbeats")
    status = json.loads(
        next(m.payload for m in monitor.snapshot() if m.topic.endswith("/forwarder"))
    )
    assert {"spool_depth", "uplink_bytes", "dropped", "interval_s"} <= set(status)
    # what the node runs (the forwarder loads no OpenCV, so it reports none)
    assert status["platform"] == {
        "arch": platform.machine(),
        "os": os_release(),
        "python": platform.python_version(),
    }
    monitor.close()


def test_kill_9_forwarder_mid_stream_loses_nothing(relay: Relay) -> None:
    publisher = Publisher(relay.edge.settings_for())
    ids = [publisher.send_face(EDGE_NODE, seed=i).id for i in range(40)]
    relay.forwarder.kill()
    ids += [
        publisher.send_face(EDGE_NODE, seed=100 + i).id for i in range(40)
    ]  # queued at the edge
    relay.forwarder.start()
    relay.wait_stored(80)
    time.sleep(2)  # a late duplicate would show up now
    assert_exactly_once(relay, ids)
    publisher.close()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_cloud_broker_restart_loses_nothing(relay: Relay, how: str) -> None:
    """No help from the test: after a restart mosquitto 2.0 has lost the processor's shared
    subscription (and, after SIGKILL, what it acknowledged since its last autosave); the
    forwarder still holds every face without a receipt and sends it again."""
    publisher = Publisher(relay.edge.settings_for())
    ids = [publisher.send_face(EDGE_NODE, seed=i).id for i in range(30)]
    if how == "SIGKILL":
        relay.cloud.kill()
    else:
        relay.cloud.stop()
    ids += [publisher.send_face(EDGE_NODE, seed=100 + i).id for i in range(30)]  # spooled
    time.sleep(2)
    relay.cloud.start()
    ids += [publisher.send_face(EDGE_NODE, seed=200 + i).id for i in range(30)]
    relay.wait_stored(90, timeout_s=90)
    time.sleep(2)
    assert_exactly_once(relay, ids)
    publisher.close()


def test_faces_stay_spooled_until_a_processor_confirms_them(relay: Relay) -> None:
    relay.processor.stop()  # its persistent session keeps queueing faces at the broker
    publisher = Publisher(relay.edge.settings_for())
    ids = [publisher.send_face(EDGE_NODE, seed=i).id for i in range(10)]
    wait_until(lambda: relay.forwarder_status()["resent"] >= 10, 30, "resends without receipts")
    status = relay.forwarder_status()
    assert status["spool_depth"] == 10  # PUBACKed by the broker, yet kept
    assert status["unconfirmed"] == 10
    assert status["confirmed"] == 0
    relay.processor.start()
    relay.wait_stored(10)
    wait_until(lambda: relay.forwarder_status()["spool_depth"] == 0, 30, "spool emptied")
    assert relay.forwarder_status()["unconfirmed"] == 0
    time.sleep(2)
    assert_exactly_once(relay, ids)  # the resent copies were confirmed as duplicates
    publisher.close()


def test_kill_9_processor_mid_stream_loses_nothing(relay: Relay) -> None:
    publisher = Publisher(relay.edge.settings_for())
    ids = [publisher.send_face(EDGE_NODE, seed=i).id for i in range(40)]
    relay.processor.kill()
    ids += [publisher.send_face(EDGE_NODE, seed=100 + i).id for i in range(40)]
    relay.processor.start()
    relay.wait_stored(80, timeout_s=90)
    time.sleep(2)
    assert_exactly_once(relay, ids)
    publisher.close()


def test_s3_outage_is_ridden_out(relay: Relay) -> None:
    publisher = Publisher(relay.edge.settings_for())
    ids = [publisher.send_face(EDGE_NODE, seed=i).id for i in range(10)]
    relay.wait_stored(10)
    relay.s3.freeze()
    try:
        ids += [publisher.send_face(EDGE_NODE, seed=100 + i).id for i in range(20)]
        time.sleep(12)  # longer than boto3's own retries (2 attempts, 2 s timeout)
        assert relay.processor.alive()
    finally:
        relay.s3.thaw()
    relay.wait_stored(30, timeout_s=90)
    time.sleep(2)
    assert_exactly_once(relay, ids)
    assert "storage unavailable" in relay.processor.log()
    publisher.close()


def test_backlog_drains_in_publish_order(relay: Relay) -> None:
    watcher = Collector(relay.cloud.settings_for("monitor"), "facefleet/+/faces")
    publisher = Publisher(relay.edge.settings_for())
    with relay.processor_first():
        relay.cloud.stop()
        ids = [publisher.send_face(EDGE_NODE, seed=i).id for i in range(60)]
        relay.cloud.start()
    wait_until(lambda: len(watcher.snapshot()) >= 60, 60, "backlog at the cloud broker")
    arrived = [dict(m.properties.UserProperty)["id"] for m in watcher.snapshot()]
    assert arrived[:60] == ids
    relay.wait_stored(60)
    watcher.close()
    publisher.close()
