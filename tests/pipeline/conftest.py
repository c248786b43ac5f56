"""The `relay` fixture: edge broker -> forwarder -> cloud broker (TLS) -> processor -> S3, on
loopback (its parts are in relay.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from facefleet.localbroker import LocalBroker
from facefleet.seaweed import SeaweedS3
from tests.pipeline.relay import (
    CLOUD_NODE,
    Relay,
    forwarder_config,
    processor_config,
    wait_online,
)
from tests.support import ServiceProcess


@pytest.fixture
def relay(tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str) -> Iterator[Relay]:
    edge = LocalBroker("edge", workdir=tmp_path / "edge").start()
    cloud = LocalBroker("cloud", workdir=tmp_path / "cloud", processors=(CLOUD_NODE,)).start()
    forwarder = ServiceProcess(
        "forwarder",
        forwarder_config(edge, cloud, tmp_path / "spool" / "spool.sqlite"),
        tmp_path / "forwarder",
    )
    processor = ServiceProcess(
        "processor",
        processor_config(cloud, s3_server, s3_bucket),
        tmp_path / "processor",
        env=SeaweedS3.ENV,
    )
    relay = Relay(edge, cloud, s3_server, s3_bucket, forwarder, processor, tmp_path)
    try:
        processor.start()
        forwarder.start()
        # online is published after subscribing: from then on nothing published is missed
        wait_online(edge, "forwarder")
        wait_online(cloud, "processor")
        yield relay
    finally:
        for service in (forwarder, processor):
            if service.alive():
                service.stop()
        edge.cleanup()
        cloud.cleanup()
