"""A relay on loopback: edge broker -> forwarder -> cloud broker (TLS) -> processor -> S3."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facefleet.localbroker import LocalBroker
from facefleet.seaweed import SeaweedS3
from tests.support import Collector, ServiceProcess, wait_until

EDGE_NODE = "edge1"
CLOUD_NODE = "cloud1"


def mqtt_table(broker: LocalBroker, identity: str = "") -> dict[str, Any]:
    return broker.settings_for(identity).as_table()


@dataclass
class Relay:
    edge: LocalBroker
    cloud: LocalBroker
    s3: SeaweedS3
    bucket: str
    forwarder: ServiceProcess
    processor: ServiceProcess
    workdir: Path

    def stored_keys(self) -> list[str]:
        client = self.s3.client()
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            keys += [obj["Key"] for obj in page.get("Contents", [])]
        return keys

    @contextmanager
    def processor_first(self) -> Iterator[None]:
        """Hold the forwarder (SIGSTOP) around a cloud broker restart until the processor has
        re-subscribed. mosquitto 2.0 does not restore shared subscriptions from persistence, so
        faces sent in that gap are dropped by the broker and sent again when no receipt comes:
        tests of the drain order hold the forwarder so that no resend interleaves."""
        assert self.forwarder.process is not None
        self.forwarder.signal(signal.SIGSTOP)
        try:
            yield
            wait_online(self.cloud, "processor", live=True)
        finally:
            self.forwarder.signal(signal.SIGCONT)

    def forwarder_status(self) -> dict[str, Any]:
        """The forwarder's latest heartbeat figures (from the edge broker)."""
        watcher = Collector(self.edge.settings_for(), f"facefleet/{EDGE_NODE}/status/forwarder")
        try:
            wait_until(watcher.snapshot, 10, "a forwarder heartbeat")
            return dict(json.loads(watcher.snapshot()[-1].payload))
        finally:
            watcher.close()

    def face_keys(self) -> list[str]:
        return [k for k in self.stored_keys() if k.startswith("faces/")]

    def wait_stored(self, count: int, timeout_s: float = 60) -> list[str]:
        try:
            wait_until(lambda: len(self.face_keys()) >= count, timeout_s, f"{count} faces stored")
        except TimeoutError as exc:
            raise AssertionError(
                f"{exc}; {len(self.face_keys())} stored\n"
                f"processor log:\n{self.processor.log()[-3000:]}\n"
                f"forwarder log:\n{self.forwarder.log()[-3000:]}\n"
                f"cloud broker log:\n{self.cloud.log_path.read_text()[-3000:]}"
            ) from None
        return self.face_keys()


def forwarder_config(
    edge: LocalBroker, cloud: LocalBroker, spool: Path, **spool_overrides: Any
) -> dict[str, Any]:
    return {
        "node": EDGE_NODE,
        "heartbeat_s": 1.0,
        "edge": mqtt_table(edge),
        "cloud": {**mqtt_table(cloud, EDGE_NODE), "reconnect_max_s": 2},
        "spool": {"path": str(spool), **spool_overrides},
        "uplink": {"inflight": 16, "receipt_timeout_s": 5},
    }


def processor_config(
    cloud: LocalBroker, s3: SeaweedS3, bucket: str, **storage: Any
) -> dict[str, Any]:
    return {
        "node": CLOUD_NODE,
        "heartbeat_s": 1.0,
        "mqtt": {**mqtt_table(cloud, CLOUD_NODE), "reconnect_max_s": 2},
        "workers": 4,
        "storage": {
            "kind": "s3",
            "bucket": bucket,
            "endpoint_url": s3.url,
            "region": "us-east-1",
            "timeout_s": 2.0,
            "retry_max_s": 2.0,
            **storage,
        },
    }


def wait_online(broker: LocalBroker, service: str, live: bool = False) -> None:
    """Wait for an `online` heartbeat; with `live`, a retained one from before does not count
    (a live heartbeat means the service is connected, and subscribed, now)."""
    watcher = Collector(broker.settings_for("monitor"), f"facefleet/+/status/{service}")
    try:
        wait_until(
            lambda: any(
                json.loads(m.payload)["state"] == "online"
                for m in watcher.snapshot()
                if not (live and m.retain)
            ),
            30,
            f"{service} online",
        )
    finally:
        watcher.close()
