"""7. A backlog drained over a slow uplink, on the lab fleet (root: `--only drain`; issue #19).

A busy site's hour of faces waits in the edge's spool while the uplink is down; then the link
comes back shaped like a poor LTE or site link, and the figures are how long the backlog takes
to reach the bucket, and what the faces captured meanwhile wait. The link: `tc ... tbf` at
LINK_RATE with a LINK_QUEUE queue on both sides of the edge's link (the edge's own interface
for its uplink, the host side of the veth for what comes back). This kernel has no `netem`, so
there is no delay or loss to dial in; instead the link is cut for FLAP_S every FLAP_EVERY_S
while the backlog drains (a route to nowhere on the edge: TCP stalls, the forwarder's
keepalive notices, it reconnects and goes on where it stopped).

Policy measured: strict capture order. The forwarder sends its spool oldest first, so a face
captured during the drain is stored after the whole backlog: its wait is bounded by
backlog bytes / (uplink rate - the site's own rate), and is for ever only when the uplink
cannot carry the site's rate at all (the spool then grows until its cap, counted).

Faces: `bench/faces.py` on the edge (a real 12 KB face JPEG each, valid metadata, ts = time of
publishing), BACKLOG_FACES of them (a face every 2 s for an hour: a person every 2 s, one crop
each) published fast while the uplink is cut; then FRESH_RATE faces/s while it drains. Stored
times are the S3 server's log times, as in `bench/fleet.py`. The lab's detector keeps running
on its camera input throughout, its faces in the same spool.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lab.fleet import MACHINE_PREFIX, ssh_command
from tests.support import wait_until

from bench.common import Options, percentile, progress
from bench.faces import face_payload
from bench.fleet import EDGE_PYTHON, Fleet, lab_fleet
from facefleet.contract import parse_timestamp

LINK_RATE = "1mbit"
LINK_QUEUE = "200ms"
#: One hour of a busy site: a person every 2 s, one crop each.
BACKLOG_FACES = 1800
FRESH_RATE = 0.5
FLAP_EVERY_S, FLAP_S = 60.0, 5.0
DRAIN_TIMEOUT_S = 3600.0


def publish(fleet: Fleet, count: int, rate: float) -> subprocess.Popen[bytes]:
    """`bench/faces.py` on the edge: `count` faces at `rate` into its broker."""
    command = f"{EDGE_PYTHON} - --node {fleet.edge[0]} --count {count} --rate {rate:g}"
    with open(Path(__file__).with_name("faces.py"), "rb") as script:
        return subprocess.Popen(
            ssh_command(fleet.edge[1]["ansible_host"], command),
            stdin=script,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )


def published(publisher: subprocess.Popen[bytes], timeout_s: float) -> dict[str, str]:
    """Face id -> ts of what a `publish` acknowledged, once it is done."""
    out, err = publisher.communicate(timeout=timeout_s)
    if publisher.returncode != 0:
        raise RuntimeError(f"face publisher: {err.decode().strip()[-500:]}")
    return dict(line.split() for line in out.decode().splitlines() if line.strip())


class Link:
    """The edge's link to the cloud host: cut (a blackhole route on the edge) and shaped."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.cloud_ip = fleet.cloud[1]["ansible_host"]
        self.veth = f"vb-{MACHINE_PREFIX}{fleet.edge[0]}"[:15]

    def cut(self) -> None:
        self.fleet.ssh(self.fleet.edge, f"ip route replace blackhole {self.cloud_ip}/32")

    def restore(self) -> None:
        self.fleet.ssh(self.fleet.edge, f"ip route del blackhole {self.cloud_ip}/32 || true")

    @contextlib.contextmanager
    def shaped(self) -> Iterator[None]:
        tbf = f"tbf rate {LINK_RATE} burst 32kbit latency {LINK_QUEUE}"
        self.fleet.ssh(self.fleet.edge, f"tc qdisc replace dev host0 root {tbf}")
        subprocess.run(f"tc qdisc replace dev {self.veth} root {tbf}".split(), check=True)
        try:
            yield
        finally:
            self.fleet.ssh(self.fleet.edge, "tc qdisc del dev host0 root || true")
            subprocess.run(f"tc qdisc del dev {self.veth} root".split(), check=False)


def flapping(link: Link, stop: threading.Event, flaps: list[float]) -> None:
    """Cut the link for FLAP_S every FLAP_EVERY_S until `stop`; record when each cut began."""
    began = time.monotonic()
    while not stop.wait(FLAP_EVERY_S):
        flaps.append(round(time.monotonic() - began, 1))
        link.cut()
        time.sleep(FLAP_S)
        link.restore()


def measure(fleet: Fleet, quick: bool) -> dict[str, Any]:
    backlog_count, fresh_s = (60, 20.0) if quick else (BACKLOG_FACES, 300.0)
    link = Link(fleet)
    link.cut()
    try:
        progress(f"drain: {backlog_count} faces into {fleet.edge[0]}'s spool, uplink cut")
        backlog = published(publish(fleet, backlog_count, 50.0), 600)
        time.sleep(5)  # the forwarder has them in its spool within milliseconds
        with link.shaped():
            started, began = time.time(), time.monotonic()
            fresh_publisher = publish(fleet, round(FRESH_RATE * fresh_s), FRESH_RATE)
            link.restore()
            stop, flaps = threading.Event(), list[float]()
            flapper = threading.Thread(target=flapping, args=(link, stop, flaps), daemon=True)
            flapper.start()
            timeline: list[tuple[float, int]] = []

            def drained() -> bool:
                stored = stored_at(fleet, started, backlog)
                timeline.append((round(time.monotonic() - began, 1), len(stored)))
                progress(f"drain: {len(stored)}/{len(backlog)} of the backlog stored")
                return len(stored) == len(backlog)

            try:
                wait_until(drained, DRAIN_TIMEOUT_S, "the backlog stored", interval_s=10)
                fresh = published(fresh_publisher, fresh_s + 120)
                wait_until(
                    lambda: len(stored_at(fleet, started, fresh)) == len(fresh),
                    DRAIN_TIMEOUT_S,
                    "the fresh faces stored",
                    interval_s=5,
                )
            finally:
                stop.set()
                flapper.join()
                if fresh_publisher.poll() is None:  # the drain failed: do not leave it behind
                    fresh_publisher.kill()
    finally:
        link.restore()
    backlog_times = stored_at(fleet, started, backlog)
    drain_s = max(backlog_times.values()) - started
    waits = [
        t - parse_timestamp(fresh[f]).timestamp()
        for f, t in stored_at(fleet, started, fresh).items()
    ]
    payload = len(face_payload())
    return {
        "link": f"tbf {LINK_RATE} with a {LINK_QUEUE} queue each way; cut for {FLAP_S:g} s "
        f"every {FLAP_EVERY_S:g} s while draining",
        "policy": "strict capture order",
        "backlog_faces": len(backlog),
        "backlog_mb": round(len(backlog) * payload / 1e6, 1),
        "drain_s": round(drain_s, 1),
        "faces_per_s": round(len(backlog) / drain_s, 2),
        "payload_kbit_per_s": round(len(backlog) * payload * 8 / 1000 / drain_s, 1),
        "flaps_at_s": flaps,
        "fresh": {
            "rate_per_s": FRESH_RATE,
            "faces": len(waits),
            "wait_s": {
                "p50": round(percentile(waits, 50), 1),
                "max": round(max(waits), 1),
            },
        },
        "timeline": timeline,
    }


def stored_at(fleet: Fleet, since: float, faces: dict[str, str]) -> dict[str, float]:
    """Of `faces`, those stored since `since` (unix time), with the time each was stored."""
    found = fleet.put_log(since)
    by_face = {name.rsplit("_", 1)[-1].split(".")[0]: t for name, t in found.items()}
    return {face: t for face, t in by_face.items() if face in faces}


def run(workdir: Path, options: Options) -> dict[str, Any]:
    with lab_fleet() as fleet:
        figures = measure(fleet, options.quick)
    waited = figures["fresh"]["wait_s"]
    progress(
        f"drain: {figures['backlog_faces']} faces ({figures['backlog_mb']} MB) over "
        f"{figures['link']}: {figures['drain_s']:.0f} s; faces captured meanwhile waited "
        f"{waited['p50']:.0f} s (p50), {waited['max']:.0f} s (max)"
    )
    return figures
