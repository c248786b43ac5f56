"""Part of the lab section (issue #18): a rollout of a new release to four edges, timed.

On the lab that `bench/fleet.py` measures, `site.yml` rolls a new release (this checkout with
a version label of its own, so every host stages it) out to the cloud host and four edges
with the defaults an operator gets: a canary of one, batches of 25 % (one host each with four
edges), Ansible's forks from ansible.cfg. `seconds.edges_4` runs from the start of the
deploy to the last health gate. Each host's rollout report gives the per-host figures
(staging, switch and gate), from which `projection_s` extends the measured phases to 100 and
1,000 devices: staging in rounds of `forks` hosts, then the canary and four batches of 25 %,
each batch in rounds of `forks` hosts.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from tests.support import ROOT

from bench.common import progress

EDGES = 4
#: The rollout defaults (roles/README.md, "Rollout, health gate and rollback").
CANARY, BATCH_PERCENT = 1, 25
PROJECTED = (100, 1000)


def forks() -> int:
    for line in (ROOT / "ansible.cfg").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "forks":
            return int(value)
    return 5  # Ansible's own default


def batches(devices: int) -> list[int]:
    """Batch sizes of the edge play for `devices` edges: the canary, then 25 % of them."""
    size = max(1, devices * BATCH_PERCENT // 100)
    rest = devices - CANARY
    return [CANARY] + [min(size, rest - start) for start in range(0, rest, size)]


def project(devices: int, phases: dict[str, float], fork_count: int) -> float:
    """Seconds for `devices` edges from the measured per-host phases (one cloud host)."""
    staging_rounds = math.ceil((devices + 1) / fork_count)
    batch_rounds = sum(math.ceil(b / fork_count) for b in batches(devices))
    return (
        phases["before_staging_s"]
        + staging_rounds * phases["staging_per_host_s"]
        + phases["cloud_s"]
        + batch_rounds * phases["batch_per_host_s"]
    )


def run(inventory: Path, workdir: Path) -> dict[str, Any]:
    groups = yaml.safe_load(inventory.read_text())["all"]["children"]
    cloud = next(iter(groups["cloud"]["hosts"]))
    edges = sorted(groups["edge"]["hosts"], key=lambda h: (len(h), h))[:EDGES]
    if len(edges) < EDGES:
        raise RuntimeError(
            f"the lab has {len(edges)} edges, the rollout takes {EDGES}: python -m lab up "
            f"--edges {EDGES}"
        )
    label = f"bench{int(time.time())}"
    reports_dir = workdir / f"rollout-{label}"
    extra = {
        "facefleet_version_label": label,
        "facefleet_rollout_report_dir": str(reports_dir),
        "detector_camera_fps": 0,
    }
    progress(f"lab rollout: site.yml with version label {label} to {cloud} and {edges}")
    started = time.time()
    result = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(inventory),
         "--limit", ",".join([cloud, *edges]), "--extra-vars", json.dumps(extra), "site.yml"],
        cwd=ROOT, capture_output=True, text=True, timeout=3600, check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )  # fmt: skip
    seconds = time.time() - started
    if result.returncode != 0:
        raise RuntimeError(f"the rollout failed: {result.stdout.strip()[-1500:]}")
    reports = {h: json.loads((reports_dir / f"{h}.json").read_text()) for h in [cloud, *edges]}
    unhealthy = {h: r["result"] for h, r in reports.items() if r["result"] != "healthy"}
    if unhealthy:
        raise RuntimeError(f"the rollout left hosts unhealthy: {unhealthy}")

    def at(host: str, field: str) -> float:
        return float(reports[host][field])

    staged_from = min(at(h, "staging_started") for h in reports)
    staged_until = max(at(h, "staging_started") + at(h, "staging_s") for h in reports)
    last_gate = max(at(h, "finished") for h in edges)
    by_batch: dict[tuple[str, ...], list[str]] = {}
    for edge in edges:
        by_batch.setdefault(tuple(reports[edge]["batch"]), []).append(edge)
    timeline: list[dict[str, Any]] = []
    previous_end = at(cloud, "finished")
    for batch in sorted(by_batch.values(), key=lambda hosts: min(at(h, "finished") for h in hosts)):
        end = max(at(h, "finished") for h in batch)
        timeline.append({"hosts": batch, "seconds": round(end - previous_end, 1)})
        previous_end = end
    fork_count = forks()
    phases = {
        "before_staging_s": round(staged_from - started, 1),  # validation, controller, bundle
        "staging_per_host_s": round(statistics.median(at(h, "staging_s") for h in reports), 1),
        "staging_wall_s": round(staged_until - staged_from, 1),
        "cloud_s": round(at(cloud, "finished") - staged_until, 1),
        # each batch here is one host: the broker role, the units, the switch and the gate
        "batch_per_host_s": round(statistics.median(b["seconds"] for b in timeline), 1),
    }
    return {
        "seconds": {"edges_4": round(last_gate - started, 1), "deploy": round(seconds, 1)},
        "version": reports[edges[0]]["to"],
        "canary_switch_after_s": round(at(timeline[0]["hosts"][0], "switch_started") - started, 1),
        "batches": timeline,
        "phases": phases,
        "switch_s": {h: float(reports[h]["switch_s"]) for h in reports},
        "staging_s": {h: at(h, "staging_s") for h in reports},
        "defaults": {"canary": CANARY, "batch": f"{BATCH_PERCENT}%", "forks": fork_count},
        "projection_s": {str(n): round(project(n, phases, fork_count)) for n in PROJECTED},
        "projection_batches": {str(n): batches(n) for n in PROJECTED},
    }
