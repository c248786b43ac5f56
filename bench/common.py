"""What every benchmark shares: progress lines, brokers and S3 on loopback, /proc sampling. The
services as processes and `wait_until` come from `tests.support`, shared with the tests."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from facefleet.localbroker import LocalBroker
from facefleet.locals3 import LocalS3

_STARTED = time.monotonic()
#: What a boto3 PUT of a small object takes within an AWS region, at the low end (AWS quotes
#: 100-200 ms to the first byte; a few KB from EC2 or Lambda commonly take 30-120 ms).
S3_LATENCY_MS = 50.0


@dataclass(frozen=True)
class Options:
    """What every section is told: `quick` (tiny sizes, the smoke test), the latency the
    benchmarks' S3 endpoint adds to each request, and the scale section's fleet."""

    quick: bool = False
    s3_latency_ms: float = S3_LATENCY_MS
    #: The scale section: how many simulated devices, and their faces per second in all.
    nodes: int = 1000
    faces_per_s: float = 50.0


def progress(message: str) -> None:
    """One progress line on stdout, prefixed with the time since the run started."""
    elapsed = time.monotonic() - _STARTED
    print(f"[bench {int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] {message}", flush=True)


def machine() -> str:
    """Where the numbers come from: CPU model and count, memory, kernel, Python, OpenCV."""
    import cv2

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    mosquitto = subprocess.run(
        ["mosquitto", "-h"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    version = mosquitto[0].replace("mosquitto version", "").strip() if mosquitto else "?"
    return (
        f"{cpu}, {os.cpu_count()} CPUs, {mem_gb:.0f} GB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}, OpenCV {cv2.__version__}, mosquitto {version}"
    )


class S3Server(LocalS3):
    """moto's S3 served by `bench.s3_server`: keep-alive connections like S3, `latency_ms`
    added to every request, and with `put_log` the time of every stored PUT (S3 itself
    reports times to the second only)."""

    def __init__(self, latency_ms: float = 0.0, put_log: Path | None = None) -> None:
        super().__init__()
        self.latency_ms = latency_ms
        self.put_log = put_log

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "bench.s3_server", str(self.port)]
        command += ["--latency-ms", str(self.latency_ms)]
        return command + (["--put-log", str(self.put_log)] if self.put_log else [])


@contextmanager
def brokers(
    workdir: Path, processors: tuple[str, ...] = ()
) -> Iterator[tuple[LocalBroker, LocalBroker]]:
    """An edge broker (plain) and a cloud broker (TLS, client certificates, ACL)."""
    edge = LocalBroker("edge", workdir=workdir / "edge-broker")
    cloud = LocalBroker("cloud", workdir=workdir / "cloud-broker", processors=processors)
    try:
        edge.start()
        cloud.start()
        yield edge, cloud
    finally:
        edge.cleanup()
        cloud.cleanup()


class ProcSample:
    """CPU time and resident memory of one process, read from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ticks = os.sysconf("SC_CLK_TCK")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.ticks  # utime + stime

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


def machine_cpu_s() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat: everything but idle and
    iowait), every process and the kernel's own work (loopback networking, writeback)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(f) for f in fields]
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def footprint(pids: dict[str, int], seconds: float) -> dict[str, dict[str, float]]:
    """Average CPU (% of one core) over `seconds` and peak RSS (MB) of each process."""
    samples = {name: ProcSample(pid) for name, pid in pids.items()}
    cpu0 = {name: s.cpu_s() for name, s in samples.items()}
    peak = {name: s.rss_mb() for name, s in samples.items()}
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        time.sleep(0.5)
        for name, s in samples.items():
            peak[name] = max(peak[name], s.rss_mb())
    wall = time.monotonic() - began
    return {
        name: {
            "cpu_pct": round(100 * (s.cpu_s() - cpu0[name]) / wall, 1),
            "rss_mb": round(peak[name], 1),
        }
        for name, s in samples.items()
    }


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(len(ordered), rank) - 1]
