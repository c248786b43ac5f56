"""Fixtures shared by the whole suite: real brokers on free loopback ports, shared data."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from facefleet.localbroker import LocalBroker
from facefleet.seaweed import SeaweedS3
from tests.helpers import require_shared


@pytest.fixture
def shared() -> Path:
    return require_shared()


@pytest.fixture
def edge_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A real mosquitto, edge flavour (plain MQTT on loopback, persistence on)."""
    with LocalBroker("edge", workdir=tmp_path / "edge-broker") as broker:
        yield broker


@pytest.fixture
def cloud_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A real mosquitto, cloud flavour (TLS, client certificates, ACL)."""
    with LocalBroker("cloud", workdir=tmp_path / "cloud-broker") as broker:
        yield broker


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One real S3-compatible store (SeaweedFS) for the whole session: it takes seconds to
    start, so tests share it and each works in a bucket of its own (`s3_bucket`)."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: SeaweedS3, request: pytest.FixtureRequest) -> str:
    """A new, empty bucket on the session's store, named after the test."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t{next(_bucket_numbers)}-{stem}"
    s3_server.client().create_bucket(Bucket=name)
    return name


_bucket_numbers = itertools.count(1)
