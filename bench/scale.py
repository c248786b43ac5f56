"""7. A fleet on one cloud host: N simulated devices against the real cloud side.

The cloud side is the real one on loopback: mosquitto with the settings the role deploys (TLS,
client certificates, the fleet ACL from the contract; tests/unit/test_broker_config.py keeps
the two in step), two processor replicas on the shared subscription, and SeaweedFS as the
S3 store. Each simulated device (bench/scale_devices.py) has its own client certificate from
the fleet CA and speaks the contract as a forwarder does: persistent session, the three edge
services' retained heartbeats every `HEARTBEAT_S` (the production interval), faces with the
contract's properties at QoS 1 (a real 12 KB JPEG crop), its receipts consumed. Devices share
processes, one thread each (`DEVICES_PER_PROCESS`).

Measured, in this order: the connect storm (every device process started at once, until every
device has its CONNACK); a steady window with faces at the fleet-wide rate (latency from a
device's publish to its receipt, which the processor sends once the object is stored; broker,
processor and simulator CPU and memory; heartbeat bytes per second); `facefleet fleet status`
over an inventory of the whole fleet; the monitor's key response with faces arriving
(bench/scale_monitor.py: key press to the view switched); the reconnect after a broker
restart. The baseline is the same run with `BASELINE_NODES` devices, minutes before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any

import yaml
from tests.support import ServiceProcess, wait_until

from bench.common import Options, ProcSample, percentile, progress
from facefleet import pki
from facefleet.health import StatusWatch
from facefleet.localbroker import MONITOR_IDENTITY, LocalBroker
from facefleet.seaweed import SeaweedS3

HEARTBEAT_S = 10.0  # facefleet.settings.ServiceSettings.heartbeat_s, the services' default
DEVICES_PER_PROCESS = 125
BASELINE_NODES = 10
PROCESSORS = ("scale-proc-1", "scale-proc-2")
BUCKET = "facefleet-scale"
#: The targets of issue #18 at 1,000 devices on a 2-core machine.
TARGETS = {
    "connect_storm_s": 60.0,
    "latency_ms_p99": 1000.0,
    "fleet_status_s": 5.0,
    "monitor_key_ms_p95": 250.0,
}


@dataclass
class Totals:
    """The device processes' figures, summed as their report lines come in."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    connected: dict[int, int] = field(default_factory=dict)
    counts: dict[int, dict[str, int]] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)

    def add(self, worker: int, line: dict[str, Any]) -> None:
        with self.lock:
            self.connected[worker] = int(line["connected"])
            self.counts[worker] = {k: int(v) for k, v in line.items() if k != "latencies_ms"}
            self.latencies_ms.extend(line["latencies_ms"])

    def total(self, name: str) -> int:
        with self.lock:
            return sum(c.get(name, 0) for c in self.counts.values())

    def all_connected(self) -> int:
        with self.lock:
            return sum(self.connected.values())

    def take_latencies(self) -> list[float]:
        with self.lock:
            taken, self.latencies_ms = self.latencies_ms, []
        return taken


class DeviceFleet:
    """The device processes of one run."""

    def __init__(self, nodes: list[str], config: dict[str, Any], per_process: int) -> None:
        self.totals = Totals()
        self.processes: list[subprocess.Popen[str]] = []
        self.nodes = nodes
        self.config = config
        self.per_process = per_process

    def start(self) -> None:
        step = self.per_process
        chunks = [self.nodes[i : i + step] for i in range(0, len(self.nodes), step)]
        for number, chunk in enumerate(chunks):
            process = subprocess.Popen(
                [sys.executable, "-m", "bench.scale_devices"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert process.stdin is not None
            assert process.stdout is not None
            config = {**self.config, "nodes": chunk, "seed": number}
            process.stdin.write(json.dumps(config) + "\n")
            process.stdin.flush()
            threading.Thread(target=self._read, args=(number, process.stdout), daemon=True).start()
            self.processes.append(process)

    def _read(self, number: int, stream: IO[str]) -> None:
        for line in stream:
            self.totals.add(number, json.loads(line))

    def command(self, **command: Any) -> None:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(json.dumps(command) + "\n")
            process.stdin.flush()

    def set_rate(self, faces_per_s: float) -> None:
        """The fleet's face rate, shared by the processes in proportion to their devices."""
        for index, process in enumerate(self.processes):
            share = min(self.per_process, len(self.nodes) - index * self.per_process)
            assert process.stdin is not None
            process.stdin.write(json.dumps({"faces_per_s": faces_per_s * share / len(self.nodes)}))
            process.stdin.write("\n")
            process.stdin.flush()

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None and process.stdin is not None:
                try:
                    process.stdin.write('{"stop": true}\n')
                    process.stdin.close()
                except OSError:
                    pass
        for process in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def issue_certificates(pki_dir: Path, nodes: list[str]) -> float:
    """A client certificate per device from the fleet CA (kept: a second run reuses them)."""
    began = time.monotonic()
    for count, node in enumerate(nodes, 1):
        pki.issue(pki_dir, node)
        if count % 1000 == 0:
            progress(f"scale: {count} of {len(nodes)} device certificates")
    return time.monotonic() - began


def write_inventory(path: Path, cloud: LocalBroker, pki_dir: Path, nodes: list[str]) -> None:
    """The fleet as an Ansible inventory, as an operator's would name it."""
    inventory = {
        "all": {
            "vars": {
                "facefleet_cloud_broker_host": cloud.host,
                "facefleet_cloud_broker_port": cloud.port,
                "facefleet_pki_dir": str(pki_dir),
                "facefleet_monitor_identity": MONITOR_IDENTITY,
            },
            "children": {
                "cloud": {"hosts": {name: {} for name in PROCESSORS}},
                "edge": {"hosts": {name: {} for name in nodes}},
            },
        }
    }
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))


def processor_config(cloud: LocalBroker, s3: SeaweedS3, node: str) -> dict[str, Any]:
    return {
        "node": node,
        "mqtt": cloud.settings_for(node).as_table(),
        "storage": {
            "kind": "s3",
            "bucket": BUCKET,
            "endpoint_url": s3.url,
            "region": SeaweedS3.REGION,
        },
    }


def cpu_window(pids: dict[str, list[int]], seconds: float) -> dict[str, dict[str, float]]:
    """CPU (% of one core) and peak resident memory (MB) of each group of processes."""
    samples = {name: [ProcSample(pid) for pid in group] for name, group in pids.items()}
    cpu0 = {name: sum(s.cpu_s() for s in group) for name, group in samples.items()}
    peak = dict.fromkeys(samples, 0.0)
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        for name, group in samples.items():
            peak[name] = max(peak[name], sum(s.rss_mb() for s in group))
        time.sleep(1.0)
    wall = time.monotonic() - began
    return {
        name: {
            "cpu_pct": round(100 * (sum(s.cpu_s() for s in group) - cpu0[name]) / wall, 1),
            "rss_mb": round(peak[name], 1),
        }
        for name, group in samples.items()
    }


def run_fleet(
    workdir: Path, nodes_count: int, rate: float, window_s: float, keys: int
) -> dict[str, Any]:
    """One fleet of `nodes_count` devices through every measurement."""
    nodes = [f"cam-{n:05d}" for n in range(1, nodes_count + 1)]
    here = workdir / f"fleet-{nodes_count}"
    pki_dir = workdir / "pki"  # shared by the runs: one CA, certificates issued once
    face_file = here / "face.jpg"
    here.mkdir(parents=True, exist_ok=True)
    face_file.write_bytes(
        resources.files("facefleet").joinpath("assets", "astronaut_face.jpg").read_bytes()
    )
    out: dict[str, Any] = {"nodes": nodes_count, "faces_per_s_offered": rate}
    out["certificates_s"] = round(issue_certificates(pki_dir, nodes), 1)
    cloud = LocalBroker("cloud", workdir=here / "cloud", processors=PROCESSORS, pki_dir=pki_dir)
    (here / "seaweed").mkdir(exist_ok=True)
    s3 = SeaweedS3(here / "seaweed")
    services: list[ServiceProcess] = []
    devices: DeviceFleet | None = None
    board: StatusWatch | None = None
    try:
        cloud.start()
        s3.start()
        s3.client().create_bucket(Bucket=BUCKET)
        board = StatusWatch(cloud.settings_for(MONITOR_IDENTITY)).start()
        for node in PROCESSORS:
            config = processor_config(cloud, s3, node)
            services.append(ServiceProcess("processor", config, here, name=node, env=SeaweedS3.ENV))
        for service in services:
            service.start()
        wait_until(
            lambda: all(board.online(n, "processor") for n in PROCESSORS), 60, "processors online"
        )
        device_config = {
            "host": cloud.host,
            "port": cloud.port,
            "ca_file": str(cloud.ca_file),
            "pki_dir": str(pki_dir),
            "prefix": cloud.prefix,
            "heartbeat_s": HEARTBEAT_S,
            "face_file": str(face_file),
        }
        devices = DeviceFleet(nodes, device_config, DEVICES_PER_PROCESS)
        progress(f"scale: {nodes_count} devices connecting at once")
        began = time.monotonic()
        devices.start()
        the_devices = devices
        wait_until(lambda: the_devices.totals.all_connected() >= nodes_count, 600, "connected")
        out["connect_storm_s"] = round(time.monotonic() - began, 1)
        out["processes"] = len(devices.processes)
        out["devices_per_process"] = DEVICES_PER_PROCESS
        progress(f"scale: connected in {out['connect_storm_s']} s; faces at {rate:g}/s")

        devices.set_rate(rate)
        time.sleep(min(10.0, window_s / 3))  # the stream settles
        devices.totals.take_latencies()
        faces0, receipts0 = devices.totals.total("faces"), devices.totals.total("receipts")
        beats0 = devices.totals.total("heartbeat_bytes")
        assert cloud.process is not None
        pids = {
            "broker": [cloud.process.pid],
            "processors": [s.pid for s in services],
            "simulator": devices.pids(),
        }
        window_began = time.monotonic()
        out["footprint"] = cpu_window(pids, window_s)
        seconds = time.monotonic() - window_began
        latencies = devices.totals.take_latencies()
        faces = devices.totals.total("faces") - faces0
        receipts = devices.totals.total("receipts") - receipts0
        out["faces_per_s_published"] = round(faces / seconds, 1)
        out["faces_per_s_stored"] = round(receipts / seconds, 1)
        out["backlog_at_end"] = devices.totals.total("faces") - devices.totals.total("receipts")
        out["heartbeat_bytes_per_s"] = round(
            (devices.totals.total("heartbeat_bytes") - beats0) / seconds
        )
        out["latency_ms"] = (
            {
                "p50": round(percentile(latencies, 50), 1),
                "p95": round(percentile(latencies, 95), 1),
                "p99": round(percentile(latencies, 99), 1),
                "faces": len(latencies),
            }
            if latencies
            else {"faces": 0}
        )
        progress(f"scale: latency {out['latency_ms']}; footprint {out['footprint']}")

        inventory = here / "hosts.yml"
        write_inventory(inventory, cloud, pki_dir, nodes)
        pki.issue(pki_dir, MONITOR_IDENTITY)
        status_began = time.monotonic()
        status = subprocess.run(
            [sys.executable, "-m", "facefleet", "fleet", "status", "-i", str(inventory), "--json"],
            capture_output=True,
            text=True,
            check=False,
        )
        out["fleet_status_s"] = round(time.monotonic() - status_began, 2)
        try:
            report = json.loads(status.stdout)
            out["fleet_status_healthy"] = sum(1 for n in report["nodes"] if n["healthy"])
        except (ValueError, KeyError):
            out["fleet_status_error"] = status.stderr.strip()[-300:]
        progress(f"scale: fleet status in {out['fleet_status_s']} s")

        monitor = subprocess.run(
            [sys.executable, "-m", "bench.scale_monitor", str(inventory), str(keys)],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if monitor.returncode == 0:
            figures = json.loads(monitor.stdout.strip().splitlines()[-1])
            key_ms = figures.pop("key_ms")
            out["monitor"] = {
                **figures,
                "key_ms_p50": percentile(key_ms, 50),
                "key_ms_p95": percentile(key_ms, 95),
            }
        else:
            out["monitor"] = {"error": monitor.stderr.strip()[-500:]}
        progress(f"scale: monitor {out['monitor']}")

        progress("scale: broker restart")
        connects0 = devices.totals.total("connects")
        restart_began = time.monotonic()
        cloud.restart()
        wait_until(
            lambda: (
                devices.totals.total("connects") - connects0 >= nodes_count
                and devices.totals.all_connected() >= nodes_count
            ),
            600,
            "reconnected",
        )
        out["reconnect_after_restart_s"] = round(time.monotonic() - restart_began, 1)
        devices.set_rate(0)
    finally:
        if devices is not None:
            devices.stop()
        for service in services:
            service.stop()
        if board is not None:
            board.close()
        s3.stop()
        cloud.cleanup()
    return out


def run(workdir: Path, options: Options) -> dict[str, Any]:
    nodes = 10 if options.quick else options.nodes
    window_s = 5.0 if options.quick else 60.0
    rate = 5.0 if options.quick else options.faces_per_s
    keys = 4 if options.quick else 40
    baseline_nodes = 3 if options.quick else min(BASELINE_NODES, nodes)
    baseline = run_fleet(workdir, baseline_nodes, rate, window_s, keys)
    fleet = run_fleet(workdir, nodes, rate, window_s, keys)

    def ratio(path: tuple[str, ...]) -> float | None:
        a: Any = fleet
        b: Any = baseline
        for key in path:
            a, b = a.get(key, {}), b.get(key, {})
        return round(a / b, 2) if isinstance(a, int | float) and b else None

    monitor_p95 = fleet.get("monitor", {}).get("key_ms_p95")
    met = {
        "connect_storm_s": fleet.get("connect_storm_s"),
        "latency_ms_p99": fleet.get("latency_ms", {}).get("p99"),
        "fleet_status_s": fleet.get("fleet_status_s"),
        "monitor_key_ms_p95": monitor_p95,
    }
    return {
        # the interface of issue #18, from the fleet's run
        "nodes": nodes,
        "connect_s": fleet.get("connect_storm_s"),
        "reconnect_s": fleet.get("reconnect_after_restart_s"),
        "latency_ms": {k: fleet.get("latency_ms", {}).get(k) for k in ("p50", "p95", "p99")},
        "fleet_status_s": fleet.get("fleet_status_s"),
        "monitor_key_ms": {"p95": monitor_p95},
        "broker_rss_mb": fleet.get("footprint", {}).get("broker", {}).get("rss_mb"),
        "baseline": baseline,
        "fleet": fleet,
        "vs_baseline": {
            "latency_ms_p99": ratio(("latency_ms", "p99")),
            "fleet_status_s": ratio(("fleet_status_s",)),
            "monitor_key_ms_p95": ratio(("monitor", "key_ms_p95")),
            "broker_cpu_pct": ratio(("footprint", "broker", "cpu_pct")),
        },
        "targets": {
            name: {
                "target": TARGETS[name],
                "measured": value,
                "met": value is not None and value < TARGETS[name],
            }
            for name, value in met.items()
        },
        "conditions": (
            f"{nodes} simulated devices ({DEVICES_PER_PROCESS} per process, a thread each) "
            f"and a baseline of {baseline_nodes}, on this machine's cores together "
            f"with mosquitto (TLS, client certificates, ACL), 2 processor replicas and SeaweedFS; "
            f"heartbeats every {HEARTBEAT_S:g} s per service, faces at {rate:g}/s fleet-wide "
            f"for a {window_s:g} s window; latency = device publish to its receipt "
            f"(the processor sends it once the object is stored); "
            f"{os.cpu_count()} CPUs"
        ),
    }
