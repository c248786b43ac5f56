"""4. End-to-end latency and 6. footprint, on loopback with the real services.

Edge mosquitto, cloud mosquitto (TLS, client certificates, ACL), moto's S3 server, and the
four services as subprocesses. Footprint: CPU and resident memory of each service from /proc,
first idle (camera running on an empty scene, no faces), then under load (the detector on a
scene with persons at 15 fps, plus faces published at a fixed rate into the edge broker).
Latency: those fixed-rate faces carry their capture time in `ts`; the stored time is when the
S3 server answered the PUT of that face's object (`bench.s3_server`), so latency is edge broker
-> logger/forwarder (spool) -> cloud broker -> processor -> S3.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from tests.support import ServiceProcess, wait_until

from bench.common import Options, S3Server, brokers, footprint, percentile, progress
from bench.faces import FacePublisher
from facefleet.contract import DetectorFigures, parse_timestamp
from facefleet.health import StatusWatch
from facefleet.localbroker import MONITOR_IDENTITY
from facefleet.shared import default_yunet_model

EDGE_NODE = "bench-edge"
CLOUD_NODE = "bench-cloud"
BUCKET = "faces-bench"
IDLE_SCENE = "synthetic:?persons=0&seconds=60&fps=15&size=640x480"
BUSY_SCENE = "synthetic:?persons=6&seconds=30&fps=15&size=640x480&seed=3"


def detector_config(edge_mqtt: dict[str, Any], source: str, journal: Path) -> dict[str, Any]:
    model = default_yunet_model()
    detection = (
        {"backend": "yunet", "model": str(model)} if model.is_file() else {"backend": "haar"}
    )
    return {
        "node": EDGE_NODE,
        "heartbeat_s": 1.0,
        "mqtt": edge_mqtt,
        "camera": {"source": source, "loop": True, "realtime": True},
        "detection": detection,
        "journal": {"path": str(journal)},
    }


def stored_times(put_log: Path) -> dict[str, float]:
    """Face id -> unix time its object was stored, from the timed S3 server's log."""
    out: dict[str, float] = {}
    if not put_log.exists():
        return out
    for line in put_log.read_text().splitlines():
        when, _, path = line.partition(" ")
        name = path.rsplit("/", 1)[-1]
        if "/faces/" in path and "_" in name:
            out.setdefault(name.rsplit("_", 1)[1].split(".")[0], float(when))
    return out


def run(workdir: Path, options: Options) -> dict[str, Any]:
    quick = options.quick
    rate = 20.0
    seconds, idle_s = (4.0, 2.0) if quick else (20.0, 6.0)
    put_log = workdir / "s3-puts.log"
    s3 = S3Server(put_log=put_log).start()
    s3.client().create_bucket(Bucket=BUCKET)
    out: dict[str, Any] = {}
    try:
        with brokers(workdir / "pipeline", processors=(CLOUD_NODE,)) as (edge, cloud):
            edge_mqtt = edge.settings_for().as_table()
            here = workdir / "pipeline"
            processor = ServiceProcess(
                "processor",
                {
                    "node": CLOUD_NODE,
                    "heartbeat_s": 1.0,
                    "mqtt": cloud.settings_for(CLOUD_NODE).as_table(reconnect_max_s=2),
                    "storage": {
                        "kind": "s3",
                        "bucket": BUCKET,
                        "endpoint_url": s3.url,
                        "region": "us-east-1",
                    },
                },
                here,
                env=S3Server.ENV,
            )
            forwarder = ServiceProcess(
                "forwarder",
                {
                    "node": EDGE_NODE,
                    "heartbeat_s": 1.0,
                    "edge": edge_mqtt,
                    "cloud": cloud.settings_for(EDGE_NODE).as_table(reconnect_max_s=2),
                    "spool": {"path": str(here / "spool" / "spool.sqlite")},
                },
                here,
            )
            logger = ServiceProcess(
                "logger",
                {
                    "node": EDGE_NODE,
                    "heartbeat_s": 1.0,
                    "mqtt": edge_mqtt,
                    "audit": {"path": str(here / "audit.jsonl"), "stderr": False},
                },
                here,
            )
            idle_detector = ServiceProcess(
                "detector",
                detector_config(edge_mqtt, IDLE_SCENE, here / "journal-idle"),
                here,
                name="detector-idle",
            )
            busy_detector = ServiceProcess(
                "detector",
                detector_config(edge_mqtt, BUSY_SCENE, here / "journal-busy"),
                here,
                name="detector-busy",
            )
            edge_board = StatusWatch(edge.settings_for()).start()
            cloud_board = StatusWatch(cloud.settings_for(MONITOR_IDENTITY)).start()
            services = [processor, forwarder, logger, idle_detector, busy_detector]
            try:
                for service in (processor, forwarder, logger, idle_detector):
                    service.start()
                wait_until(lambda: cloud_board.online(CLOUD_NODE, "processor"), 60, "processor")
                for name in ("forwarder", "logger", "detector"):
                    wait_until(partial(edge_board.online, EDGE_NODE, name), 60, name)
                time.sleep(1.0)  # past the start-up work
                pids = {
                    "detector": idle_detector.pid,
                    "logger": logger.pid,
                    "forwarder": forwarder.pid,
                    "processor": processor.pid,
                }
                idle = footprint(pids, idle_s)
                progress(f"footprint idle: {json.dumps(idle)}")
                idle_detector.stop()
                busy_detector.start()
                edge_board.clear()
                wait_until(lambda: edge_board.online(EDGE_NODE, "detector"), 60, "detector")
                pids["detector"] = busy_detector.pid
                publisher = FacePublisher(edge.settings_for(), EDGE_NODE)
                with ThreadPoolExecutor(1) as pool:
                    sampling = pool.submit(footprint, pids, seconds)
                    publisher.publish_at(rate, round(rate * seconds))
                    load = sampling.result()
                progress(f"footprint under load: {json.dumps(load)}")
                publisher.wait_acked(30)
                publisher.close()
                sent = publisher.sent
                wait_until(
                    lambda: len(set(sent) & set(stored_times(put_log))) == len(sent),
                    120,
                    f"{len(sent)} faces stored",
                )
                fps = edge_board.figures(EDGE_NODE, "detector", DetectorFigures).fps
                detector_fps = "?" if fps is None else str(fps)
            finally:
                for service in services:
                    service.stop()
                edge_board.close()
                cloud_board.close()
    finally:
        s3.stop()
    stored = stored_times(put_log)
    latencies = [
        (stored[face] - parse_timestamp(ts).timestamp()) * 1000 for face, ts in sent.items()
    ]
    out["latency_ms"] = {
        "p50": round(percentile(latencies, 50), 1),
        "p95": round(percentile(latencies, 95), 1),
        "p99": round(percentile(latencies, 99), 1),
        "max": round(max(latencies), 1),
        "faces": len(latencies),
        "rate_per_s": rate,
        "samples": [round(v, 1) for v in latencies],
        "where": "loopback on the bench machine, not the lab fleet (make bench does not deploy "
        "or drive the lab; see README, Benchmarks): edge mosquitto -> "
        "forwarder (SQLite spool) -> cloud mosquitto (TLS) -> processor -> moto S3 over HTTP, "
        f"real services as subprocesses, detector and logger running alongside; {rate:.0f} "
        "faces/s published into the edge broker with ts = capture time; stored = S3 PUT answered",
    }
    out["footprint"] = {
        "where": "loopback",
        "idle": idle,
        "load": load,
        "note": "cpu_pct = % of one core averaged over the window; rss_mb = peak resident MB. "
        f"idle: detector on an empty scene at 15 fps, no faces; load: detector on a scene "
        f"with persons at 15 fps ({detector_fps} fps reported) and "
        f"{rate:.0f} faces/s through logger, forwarder and processor",
    }
    progress(
        f"latency: p50 {out['latency_ms']['p50']:.0f} ms, p95 {out['latency_ms']['p95']:.0f} ms, "
        f"p99 {out['latency_ms']['p99']:.0f} ms over {len(latencies)} faces at {rate:.0f}/s"
    )
    return out
