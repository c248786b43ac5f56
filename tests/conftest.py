"""Fixtures shared by the whole suite: real brokers on free loopback ports, shared data."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from facefleet.localbroker import LocalBroker
from facefleet.seaweed import SeaweedS3
from facefleet.shared import shared_dir

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"


def require_shared(*relative: str) -> Path:
    """The shared path, or skip (fail under CI=true, where the data must be present)."""
    path = shared_dir().joinpath(*relative)
    if not path.exists():
        message = f"shared data missing: {path} (set FACEFLEET_SHARED)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


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


S3Server = SeaweedS3
S3_ENV = SeaweedS3.ENV


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One real S3-compatible store (SeaweedFS) for the whole session: it takes seconds to
    start, so tests share it and each works in a bucket of its own (`s3_bucket`)."""
    server = S3Server(tmp_path_factory.mktemp("seaweed")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server, request: pytest.FixtureRequest) -> str:
    """A new, empty bucket on the session's store, named after the test."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t{next(_bucket_numbers)}-{stem}"
    s3_server.client().create_bucket(Bucket=name)
    return name


_bucket_numbers = itertools.count(1)
