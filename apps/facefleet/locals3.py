"""Run moto's S3-compatible server over real HTTP on a free loopback port.

For the tests and the benchmarks (the lab runs the same server as a systemd unit). Credentials
are ignored by moto; `ENV` holds the ones the services get.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from facefleet.localbroker import free_port, wait_for_port


class LocalS3:
    ENV = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def start(self) -> LocalS3:
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not wait_for_port("127.0.0.1", self.port, 30):
            self.stop()
            raise RuntimeError("moto S3 server did not start")
        return self

    def freeze(self) -> None:
        """SIGSTOP to the whole process group: the endpoint accepts but never answers, like a
        hung S3 gateway, until `thaw()`."""
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
            region_name=self.ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.ENV["AWS_SECRET_ACCESS_KEY"],
        )

    def objects(self, bucket: str, prefix: str = "") -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        for page in pages:
            out += page.get("Contents", [])
        return out
