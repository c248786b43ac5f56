"""4. End-to-end latency and 6. footprint on the lab fleet, and a rollout's time (opt-in:
`python -m bench --lab`; the rollout is bench/rollout.py).

The real deployment: systemd-nspawn hosts set up by site.yml, the services as systemd units,
TLS between the edge's forwarder and the cloud broker over the lab bridge, SeaweedFS's S3
gateway as a unit on the cloud host. A lab that is up (`make lab`) is used as it is; otherwise
one edge and the cloud host are brought up, deployed and torn down again (about 6 minutes
more, and root).

Latency: `bench/faces.py` runs on edge-1 with the facefleet deployed there and publishes faces
at a fixed rate into the edge broker with ts = now; the stored time of a face is the journald
timestamp (microseconds) of the S3 server's access-log line for the PUT of its object, written
as the answer goes out. All lab hosts share the kernel clock, so no clock offset enters. A few
direct PUTs from here check that method: a log time must not precede its request, and how late
it comes after the answer (journald reading the line late) is the error of the stored times.
Footprint: CPU and resident memory of each unit's main process from /proc on its host, over a
window without the benchmark's faces and one with them (the detector runs on its camera input
throughout).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from lab.fleet import ssh_command
from lab.inventory import LAB_BUCKET, LAB_S3_KEY_ID, LAB_S3_PORT, LAB_S3_SECRET
from tests.support import ROOT, wait_until

from bench import rollout
from bench.common import Options, percentile, progress
from facefleet.contract import parse_timestamp

INVENTORY = ROOT / "inventory" / "lab" / "hosts.yml"
EDGE_PYTHON = "/opt/facefleet/current/venv/bin/python"
S3_UNIT = "facefleet-lab-s3"
UNITS = {
    "edge": ("detector", "logger", "forwarder"),
    "cloud": ("processor",),
}
RATE = 20.0


class Fleet:
    """The lab as the inventory describes it: one cloud host, the first edge host."""

    def __init__(self) -> None:
        groups = yaml.safe_load(INVENTORY.read_text())["all"]["children"]
        self.cloud = next(iter(groups["cloud"]["hosts"].items()))
        self.edge = next(iter(groups["edge"]["hosts"].items()))

    def ssh(self, host: tuple[str, Any], command: str, stdin: Path | None = None) -> str:
        with open(stdin or os.devnull, "rb") as source:
            result = subprocess.run(
                ssh_command(host[1]["ansible_host"], command),
                stdin=source,
                capture_output=True,
                timeout=300,
                check=False,
            )
        if result.returncode != 0:
            raise RuntimeError(f"{host[0]}: {command}: {result.stderr.decode().strip()[-500:]}")
        return result.stdout.decode()

    def active(self) -> bool:
        try:
            self.ssh(self.cloud, "systemctl is-active --quiet facefleet-processor " + S3_UNIT)
            self.ssh(self.edge, "systemctl is-active --quiet facefleet-forwarder")
        except (RuntimeError, subprocess.TimeoutExpired):
            return False
        return True

    def proc_sample(self) -> dict[str, dict[str, float]]:
        """Per service: CPU seconds so far and resident MB, from /proc on its host."""
        out: dict[str, dict[str, float]] = {}
        for group, host in (("edge", self.edge), ("cloud", self.cloud)):
            script = "; ".join(
                f"p=$(systemctl show -p MainPID --value facefleet-{unit}); "
                f'echo {unit} $(getconf CLK_TCK) "$(cut -d")" -f2- /proc/$p/stat)" '
                f"$(grep VmRSS /proc/$p/status)"
                for unit in UNITS[group]
            )
            for line in self.ssh(host, script).splitlines():
                fields = line.split()
                name, ticks, stat = fields[0], int(fields[1]), fields[2:]
                # after the ")" of /proc/PID/stat: state is field 0, utime 11 and stime 12
                out[name] = {
                    "cpu_s": (int(stat[11]) + int(stat[12])) / ticks,
                    "rss_mb": int(fields[-2]) / 1024,
                }
        return out

    def put_log(self, since_unix: float) -> dict[str, float]:
        """Object key's last path part -> unix time of the S3 server's log line for its PUT."""
        text = self.ssh(
            self.cloud,
            f"journalctl -u {S3_UNIT} --since @{int(since_unix) - 1} -o json "
            "--output-fields=MESSAGE --no-pager",
        )
        out: dict[str, float] = {}
        for line in text.splitlines():
            entry = json.loads(line)
            message = entry.get("MESSAGE")
            # SeaweedFS's access line (stats.go at -v 3):
            # `"<identity>" PUT "/<bucket>/<key>" 200 <took>`
            if not isinstance(message, str) or ' PUT "/' not in message or '" 200 ' not in message:
                continue
            name = message.split(' PUT "', 1)[1].split('"', 1)[0].rsplit("/", 1)[-1]
            out.setdefault(name, int(entry["__REALTIME_TIMESTAMP"]) / 1e6)
        return out


def footprint(fleet: Fleet, seconds: float) -> dict[str, dict[str, float]]:
    before, began = fleet.proc_sample(), time.monotonic()
    time.sleep(seconds)
    after, wall = fleet.proc_sample(), time.monotonic() - began
    return {
        name: {
            "cpu_pct": round(100 * (after[name]["cpu_s"] - before[name]["cpu_s"]) / wall, 1),
            "rss_mb": round(after[name]["rss_mb"], 1),
        }
        for name in after
    }


def check_put_clock(fleet: Fleet) -> dict[str, float]:
    """Direct PUTs to the lab's S3 server: where its log time falls in each request, in ms
    after the request was sent. Before the send would mean clocks that differ; after the
    answer is journald reading the line late (a busy machine), an error of that size in the
    stored times (`log_late_ms_max`)."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=f"http://{fleet.cloud[1]['ansible_host']}:{LAB_S3_PORT}",
        region_name="us-east-1",
        aws_access_key_id=LAB_S3_KEY_ID,
        aws_secret_access_key=LAB_S3_SECRET,
    )
    spans: dict[str, tuple[float, float]] = {}
    for n in range(5):
        key = f"bench-clock-check/{time.time_ns()}-{n}"
        sent = time.time()
        client.put_object(Bucket=LAB_BUCKET, Key=key, Body=b"clock check")
        spans[key.rsplit("/", 1)[1]] = (sent, time.time())
    since = min(sent for sent, _ in spans.values())
    wait_until(lambda: set(spans) <= set(fleet.put_log(since)), 30, "the clock check's log lines")
    logged = fleet.put_log(since)
    offsets = [(logged[k] - sent) * 1000 for k, (sent, _) in spans.items()]
    durations = [(done - sent) * 1000 for sent, done in spans.values()]
    return {
        "log_after_send_ms_min": round(min(offsets), 2),
        "log_after_send_ms_max": round(max(offsets), 2),
        "request_ms_max": round(max(durations), 2),
        "log_late_ms_max": round(
            max(max(0.0, o - d) for o, d in zip(offsets, durations, strict=True)), 2
        ),
    }


def lab_command(*args: str, timeout: float) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lab", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"lab {' '.join(args)}: {result.stderr.strip()[-800:]}")


def deploy() -> None:
    """site.yml on the lab, the detectors at the clip's own frame rate (the lab's default is
    slower, for the tests)."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(INVENTORY),
         "--extra-vars", '{"detector_camera_fps": 0}', "site.yml"],
        cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"site.yml on the lab failed: {result.stdout.strip()[-1500:]}")


def measure(fleet: Fleet, quick: bool) -> dict[str, Any]:
    seconds, idle_s = (4.0, 3.0) if quick else (20.0, 10.0)
    clock = check_put_clock(fleet)
    progress(f"lab: S3 log clock check {json.dumps(clock)}")
    if clock["log_after_send_ms_min"] < 0:
        raise RuntimeError(f"the S3 server logged PUTs before they were sent: {clock}")
    idle = footprint(fleet, idle_s)
    progress(f"lab footprint without the benchmark's faces: {json.dumps(idle)}")
    count = round(RATE * seconds)
    started = time.time()
    command = f"{EDGE_PYTHON} - --node {fleet.edge[0]} --count {count} --rate {RATE:g}"
    with open(Path(__file__).with_name("faces.py"), "rb") as script:
        publisher = subprocess.Popen(
            ssh_command(fleet.edge[1]["ansible_host"], command),
            stdin=script,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        load = footprint(fleet, seconds)
        out, err = publisher.communicate(timeout=120)
    if publisher.returncode != 0:
        raise RuntimeError(f"face publisher on {fleet.edge[0]}: {err.decode().strip()[-500:]}")
    progress(f"lab footprint with {RATE:g} faces/s: {json.dumps(load)}")
    sent = dict(line.split() for line in out.decode().splitlines() if line.strip())

    def stored() -> dict[str, float]:
        """Face id -> stored time; keys end in `_<face id>.<extension>`."""
        found = fleet.put_log(started)
        by_face = {name.rsplit("_", 1)[-1].split(".")[0]: t for name, t in found.items()}
        return {face: t for face, t in by_face.items() if face in sent}

    wait_until(lambda: len(stored()) == len(sent), 120, f"{len(sent)} faces stored")
    times = stored()
    latencies = [(times[f] - parse_timestamp(ts).timestamp()) * 1000 for f, ts in sent.items()]
    return {
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 1),
            "p95": round(percentile(latencies, 95), 1),
            "p99": round(percentile(latencies, 99), 1),
            "max": round(max(latencies), 1),
            "faces": len(latencies),
            "rate_per_s": RATE,
            "samples": [round(v, 1) for v in latencies],
            "clock_check": clock,
            "where": f"lab fleet (systemd-nspawn hosts deployed by site.yml): {RATE:g} faces/s "
            f"published into {fleet.edge[0]}'s mosquitto with ts = capture time -> logger, "
            f"forwarder (SQLite spool) -> TLS over the lab bridge -> {fleet.cloud[0]}'s "
            "mosquitto -> processor -> SeaweedFS S3 unit; stored = journald time of the S3 "
            "server's log line for the PUT (logged when the PUT is answered; real S3 adds "
            "tens of ms); the detector runs on its camera input alongside",
        },
        "footprint": {
            "where": "lab fleet",
            "idle": idle,
            "load": load,
            "note": "lab fleet, systemd units' main processes; cpu_pct = % of one core over "
            f"the window, rss_mb = resident MB at its end; idle = detector on its camera "
            f"input, no benchmark faces; load = the same plus {RATE:g} faces/s",
        },
    }


@contextlib.contextmanager
def lab_fleet() -> Iterator[Fleet]:
    """The lab that is up and deployed, or one brought up (cloud-1 and the four edges the
    rollout takes), deployed and taken down again around the measurement."""
    own = not (INVENTORY.exists() and Fleet().active())
    if own:
        progress(f"lab: bringing up cloud-1 and {rollout.EDGES} edges (python -m lab up)")
        lab_command("up", "--edges", str(rollout.EDGES), timeout=900)
    try:
        if own:
            progress("lab: deploying site.yml (several minutes)")
            deploy()
        fleet = Fleet()
        wait_until(fleet.active, 120, "the lab's services active")
        yield fleet
    finally:
        if own:
            progress("lab: down")
            lab_command("down", timeout=300)


def run(workdir: Path, options: Options) -> dict[str, Any]:
    with lab_fleet() as fleet:
        figures = measure(fleet, options.quick)
        lat = figures["latency_ms"]
        progress(
            f"lab latency: p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, "
            f"p99 {lat['p99']:.0f} ms over {lat['faces']} faces at {RATE:g}/s"
        )
        figures["rollout"] = rollout.run(INVENTORY, workdir)
        progress(
            f"lab rollout: {figures['rollout']['seconds']['edges_4']} s to the last gate; "
            f"phases {json.dumps(figures['rollout']['phases'])}"
        )
    return figures
