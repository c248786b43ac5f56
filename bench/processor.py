"""5. Processor scaling: stored faces per second with 1, 2 and 4 replicas on the shared
subscription, against moto's S3 server over HTTP.

Per replica count: a fresh cloud broker and bucket; the replicas start once so their persistent
sessions (with the shared subscription) exist, and stop; a backlog of faces is published to the
cloud broker (mosquitto queues it across the offline sessions of the group); S3 is frozen
(SIGSTOP), the replicas start again, and once all are online S3 is thawed and the clock starts.
Rate = backlog / (time the last face was stored, from the replicas' heartbeats - thaw).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.common import (
    FacePublisher,
    ProcSample,
    S3Server,
    Service,
    progress,
    wait_until,
)
from facefleet.localbroker import MONITOR_IDENTITY, LocalBroker
from facefleet.statusboard import StatusBoard

EDGE_NODE = "bench-edge"
HEARTBEAT_S = 0.25


def replica_config(cloud: LocalBroker, s3: S3Server, node: str, bucket: str) -> dict[str, Any]:
    return {
        "node": node,
        "heartbeat_s": HEARTBEAT_S,
        "mqtt": cloud.settings_for(node).as_table(reconnect_max_s=2),
        "storage": {
            "kind": "s3",
            "bucket": bucket,
            "endpoint_url": s3.url,
            "region": "us-east-1",
            "timeout_s": 120.0,
        },
    }


def stored(board: StatusBoard, nodes: list[str]) -> int:
    return sum(int(board.get(n, "processor").get("stored", 0)) for n in nodes)


def drain(
    workdir: Path, s3: S3Server, replicas: int, backlog: int, round_no: int = 0
) -> dict[str, Any]:
    nodes = [f"bench-proc-{i}" for i in range(1, replicas + 1)]
    bucket = f"scaling-{replicas}-{round_no}"
    s3.client().create_bucket(Bucket=bucket)
    here = workdir / f"processor-{replicas}"
    with LocalBroker("cloud", workdir=here / "cloud", processors=tuple(nodes)) as cloud:
        board = StatusBoard(cloud.settings_for(MONITOR_IDENTITY))
        services = [
            Service(
                "processor", replica_config(cloud, s3, n, bucket), here, name=n, env=S3Server.ENV
            )
            for n in nodes
        ]
        try:
            for service in services:  # register the sessions, then go offline
                service.start()
            wait_until(lambda: all(board.online(n, "processor") for n in nodes), 60, "online")
            for service in services:
                service.stop()
            publisher = FacePublisher(cloud.settings_for(EDGE_NODE), EDGE_NODE)
            for _ in range(backlog):
                publisher.publish()
            publisher.wait_acked(60)
            publisher.close()
            s3.freeze()
            try:
                board.latest.clear()
                for service in services:
                    service.start()
                wait_until(lambda: all(board.online(n, "processor") for n in nodes), 60, "online")
            finally:
                s3.thaw()
            began = time.monotonic()
            assert s3.process is not None
            watched = {n: ProcSample(s.pid) for n, s in zip(nodes, services, strict=True)}
            watched["s3"] = ProcSample(s3.process.pid)
            cpu0 = {n: p.cpu_s() for n, p in watched.items()}
            wait_until(lambda: stored(board, nodes) >= backlog, 600, f"{backlog} stored")
            seconds = time.monotonic() - began
            cpu = {n: round(100 * (p.cpu_s() - cpu0[n]) / seconds) for n, p in watched.items()}
            per_replica = {n: int(board.get(n, "processor").get("stored", 0)) for n in nodes}
        finally:
            for service in services:
                service.stop()
            board.close()
    return {
        "replicas": replicas,
        "backlog": backlog,
        "seconds": round(seconds, 2),
        "faces_per_s": round(backlog / seconds, 1),
        "stored_per_replica": per_replica,
        "cpu_pct": cpu,
    }


def run(workdir: Path, quick: bool) -> dict[str, Any]:
    """Rounds of 1, 2, 4 replicas, interleaved so that drift hits every count alike; the
    best round of each count is reported."""
    backlog, rounds = (60, 1) if quick else (1000, 2)
    out: dict[str, Any] = {"faces_per_s": {}, "runs": {}}
    s3 = S3Server().start()
    try:
        for round_no in range(rounds):
            for replicas in (1, 2, 4):
                figures = drain(workdir / f"round-{round_no}", s3, replicas, backlog, round_no)
                key = str(replicas)
                out["runs"].setdefault(key, []).append(figures)
                out["faces_per_s"][key] = max(
                    out["faces_per_s"].get(key, 0.0), figures["faces_per_s"]
                )
                progress(
                    f"processor x{replicas}: {figures['faces_per_s']:6.1f} faces/s "
                    f"({backlog} faces in {figures['seconds']:.1f} s; "
                    f"CPU % {figures['cpu_pct']})"
                )
    finally:
        s3.stop()
    one = out["faces_per_s"]["1"] or 1.0
    out["scaling_vs_1"] = {k: round(v / one, 2) for k, v in out["faces_per_s"].items()}
    out["conditions"] = (
        "cloud mosquitto (TLS, client certificates) and moto's S3 server on loopback, "
        f"{backlog} queued 12 KB JPEG faces, each replica with its default 4 workers; best of "
        f"{rounds} interleaved round(s); everything shares the machine's CPUs"
    )
    return out
