"""A full spool: the configured policy holds and every dropped face is counted and reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facefleet.localbroker import LocalBroker
from tests.pipeline.relay import EDGE_NODE, forwarder_config, wait_online
from tests.support import Collector, Publisher, ServiceProcess, wait_until

pytestmark = pytest.mark.broker


def latest_figures(status: Collector) -> dict[str, int]:
    """The forwarder's latest heartbeat figures ({} before the first)."""
    messages = status.snapshot()
    return json.loads(messages[-1].payload) if messages else {}


@pytest.mark.parametrize("policy", ["drop-oldest", "drop-newest"])
def test_full_spool_drops_are_counted_in_the_heartbeat(tmp_path: Path, policy: str) -> None:
    edge = LocalBroker("edge", workdir=tmp_path / "edge").start()
    cloud = LocalBroker("cloud", workdir=tmp_path / "cloud")  # never started: uplink down
    config = forwarder_config(
        edge, cloud, tmp_path / "spool.sqlite", max_bytes=65536, when_full=policy
    )
    forwarder = ServiceProcess("forwarder", config, tmp_path / "forwarder").start()
    try:
        wait_online(edge, "forwarder")
        publisher = Publisher(edge.settings_for())
        for i in range(40):  # ~6.6 KB each: about 260 KB into a 64 KB spool
            publisher.send_face(EDGE_NODE, seed=i)
        status = Collector(edge.settings_for(), "facefleet/edge1/status/forwarder")

        wait_until(
            lambda: (
                latest_figures(status).get("dropped", 0) > 0
                and latest_figures(status)["dropped"] + latest_figures(status)["spool_depth"] >= 40
            ),
            20,
            "drops counted",
        )
        figures = latest_figures(status)
        assert figures["spool_bytes"] <= 65536
        assert figures["dropped"] + figures["spool_depth"] == 40
        assert "spool full" in forwarder.log()
        status.close()
        publisher.close()
    finally:
        forwarder.stop()
        edge.cleanup()
        cloud.cleanup()


def test_faces_older_than_the_spool_age_limit_expire_counted(tmp_path: Path) -> None:
    """Retention on the device: with the uplink down, faces past spool.max_age_s are deleted
    undelivered, counted as `expired` in the heartbeat and logged."""
    edge = LocalBroker("edge", workdir=tmp_path / "edge").start()
    cloud = LocalBroker("cloud", workdir=tmp_path / "cloud")  # never started: uplink down
    config = forwarder_config(edge, cloud, tmp_path / "spool.sqlite", max_age_s=2.0)
    forwarder = ServiceProcess("forwarder", config, tmp_path / "forwarder").start()
    try:
        wait_online(edge, "forwarder")
        publisher = Publisher(edge.settings_for())
        for i in range(10):
            publisher.send_face(EDGE_NODE, seed=i)
        status = Collector(edge.settings_for(), "facefleet/edge1/status/forwarder")

        wait_until(lambda: latest_figures(status).get("expired") == 10, 30, "10 faces expired")
        assert latest_figures(status)["spool_depth"] <= 1  # at most its own latest status message
        assert "expired undelivered" in forwarder.log()
        status.close()
        publisher.close()
    finally:
        forwarder.stop()
        edge.cleanup()
        cloud.cleanup()
