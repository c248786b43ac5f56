"""Fixtures shared by the whole suite: real brokers on free loopback ports, shared data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from facefleet.localbroker import LocalBroker

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


class S3Server:
    """moto's S3-compatible server over real HTTP on a free loopback port."""

    def __init__(self) -> None:
        from facefleet.localbroker import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> S3Server:
        from facefleet.localbroker import wait_for_port

        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not wait_for_port("127.0.0.1", self.port, 30):
            self.stop()
            raise RuntimeError("moto S3 server did not start")
        return self

    def freeze(self) -> None:
        """SIGSTOP: the endpoint hangs (accepts, never answers), like a dead S3 gateway."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGCONT)
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",  # moto accepts any key
        )


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def s3_server() -> Iterator[S3Server]:
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()
