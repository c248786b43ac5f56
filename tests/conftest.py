"""Fixtures shared by the whole suite: real brokers on free loopback ports, shared data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from facefleet.localbroker import LocalBroker
from facefleet.locals3 import LocalS3

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"


def shared_dir() -> Path:
    """`../shared` beside the checkout unless FACEFLEET_SHARED says otherwise."""
    return Path(os.environ.get("FACEFLEET_SHARED", ROOT.parent / "shared")).resolve()


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


S3Server = LocalS3
S3_ENV = LocalS3.ENV


@pytest.fixture
def s3_server() -> Iterator[S3Server]:
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()
