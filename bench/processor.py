"""5. Processor scaling: stored faces per second with 1, 2 and 4 replicas on the shared
subscription, against moto's S3 over HTTP with the latency of a real S3 PUT.

A replica stores with `workers` threads, each waiting for one PUT at a time, so against real S3
(tens of ms per PUT, on other machines) a replica is bound by that latency, not by its CPU.
moto on loopback answers in about a millisecond but burns CPU on the same two cores as the
replicas, which turns the benchmark into one of CPU contention. So the S3 endpoint
(`bench.s3_server`) keeps connections alive as S3 does and answers every request after
`--s3-latency-ms` (default 50 ms, the low end of what a boto3 PUT of a small object takes
within an AWS region); one round against the instant endpoint is recorded for reference.

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

from tests.support import ServiceProcess, wait_until

from bench.common import Options, ProcSample, S3Server, progress
from bench.faces import FacePublisher
from facefleet.contract import ProcessorFigures
from facefleet.health import StatusWatch
from facefleet.localbroker import MONITOR_IDENTITY, LocalBroker

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


def stored(board: StatusWatch, nodes: list[str]) -> int:
    return sum(board.figures(n, "processor", ProcessorFigures).stored or 0 for n in nodes)


def drain(
    workdir: Path, s3: S3Server, replicas: int, backlog: int, round_no: int = 0
) -> dict[str, Any]:
    nodes = [f"bench-proc-{i}" for i in range(1, replicas + 1)]
    bucket = f"scaling-{replicas}-{round_no}"
    s3.client().create_bucket(Bucket=bucket)
    here = workdir / f"processor-{replicas}"
    with LocalBroker("cloud", workdir=here / "cloud", processors=tuple(nodes)) as cloud:
        board = StatusWatch(cloud.settings_for(MONITOR_IDENTITY)).start()
        services = [
            ServiceProcess(
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
                board.clear()
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
            per_replica = {
                n: board.figures(n, "processor", ProcessorFigures).stored or 0 for n in nodes
            }
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


def scaling(workdir: Path, s3: S3Server, backlog: int, rounds: int, label: str) -> dict[str, Any]:
    """Rounds of 1, 2, 4 replicas, interleaved so that drift hits every count alike; the
    best round of each count is reported."""
    out: dict[str, Any] = {"faces_per_s": {}, "runs": {}}
    for round_no in range(rounds):
        for replicas in (1, 2, 4):
            figures = drain(workdir / f"{label}-{round_no}", s3, replicas, backlog, round_no)
            key = str(replicas)
            out["runs"].setdefault(key, []).append(figures)
            out["faces_per_s"][key] = max(out["faces_per_s"].get(key, 0.0), figures["faces_per_s"])
            progress(
                f"processor x{replicas}, {label}: {figures['faces_per_s']:6.1f} faces/s "
                f"({backlog} faces in {figures['seconds']:.1f} s; CPU % {figures['cpu_pct']})"
            )
    one = out["faces_per_s"]["1"] or 1.0
    out["scaling_vs_1"] = {k: round(v / one, 2) for k, v in out["faces_per_s"].items()}
    return out


def run(workdir: Path, options: Options) -> dict[str, Any]:
    backlog, rounds = (60, 1) if options.quick else (600, 2)
    latency = options.s3_latency_ms
    s3 = S3Server(latency_ms=latency)
    s3.start()
    try:
        out = scaling(workdir, s3, backlog, rounds, f"S3 latency {latency:g} ms")
    finally:
        s3.stop()
    s3 = S3Server()
    s3.start()
    try:
        reference = scaling(workdir, s3, backlog, 1, "instant S3")
    finally:
        s3.stop()
    out["s3_latency_ms"] = latency
    out["instant_s3"] = {
        "faces_per_s": reference["faces_per_s"],
        "scaling_vs_1": reference["scaling_vs_1"],
        "note": "the same drain against moto answering without added latency: the replicas, "
        "moto and mosquitto then compete for the machine's CPUs (one round)",
    }
    out["conditions"] = (
        f"cloud mosquitto (TLS, client certificates) on loopback; moto's S3 over HTTP with "
        f"keep-alive, every request answered after {latency:g} ms (real S3 latency, spent "
        f"sleeping, no CPU); {backlog} queued 12 KB JPEG faces drained by each replica count, "
        f"each replica with its default 4 workers; best of {rounds} interleaved round(s); "
        "replicas, moto and mosquitto share the machine's CPUs"
    )
    return out
