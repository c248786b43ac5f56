"""The fleet lab for the fleet tests: up, deployed, torn down at the end.

Needs root and systemd-nspawn. Outside CI the tests skip with the reason when the machine
cannot host the lab; under CI=true they must run. `python -m lab up` removes any lab that is
already running (the developer's `make lab` included) before it starts its own;
FACEFLEET_LAB_REUSE=1 runs the tests against the lab that is up and leaves it running;
FACEFLEET_LAB_DEPLOYS=N overrides how often a fixture deploys (0 with a lab already deployed,
to iterate on a test; the deploy tests then fail, as they should).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import IN_CI, ROOT

INVENTORY = ROOT / "inventory" / "lab" / "hosts.yml"
PKI_DIR = ROOT / ".pki" / "lab"
REPORT = ROOT / "build" / "fleet-report.json"
EDGE_UNITS = ("mosquitto", "facefleet-detector", "facefleet-logger", "facefleet-forwarder")
CLOUD_UNITS = ("mosquitto", "facefleet-processor", "facefleet-lab-s3")
RECAP = re.compile(
    r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)


def lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the fleet lab needs root (systemd-nspawn, bridges)"
    for tool in ("systemd-nspawn", "debootstrap", "ssh", "ip"):
        if shutil.which(tool) is None:
            return f"the fleet lab needs {tool} (make system-deps)"
    return None


@dataclass
class Deploy:
    seconds: float
    returncode: int
    output: str

    def recap(self) -> dict[str, dict[str, int]]:
        return {
            host: {"ok": int(ok), "changed": int(ch), "unreachable": int(un), "failed": int(fa)}
            for host, ok, ch, un, fa in RECAP.findall(self.output)
        }

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


@dataclass
class Lab:
    hosts: dict[str, str]
    groups: dict[str, list[str]]
    source: Path
    deploys: list[Deploy] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def cloud(self) -> str:
        return self.groups["cloud"][0]

    @property
    def edges(self) -> list[str]:
        return self.groups["edge"]

    def units(self, host: str) -> tuple[str, ...]:
        return CLOUD_UNITS if host in self.groups["cloud"] else EDGE_UNITS

    def ssh(self, host: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ROOT / "lab" / "ssh"), host, command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def out(self, host: str, command: str) -> str:
        result = self.ssh(host, command)
        assert result.returncode == 0, f"{host}: {command}: {result.stderr.strip()}"
        return result.stdout.strip()

    def journals(self, lines: int = 40) -> str:
        parts = []
        for host in self.hosts:
            units = " ".join(f"-u {u}" for u in self.units(host))
            result = self.ssh(host, f"journalctl --no-pager -n {lines} {units}", timeout=30)
            parts.append(f"===== {host}: journalctl {units}\n{result.stdout}{result.stderr}")
        return "\n".join(parts)


def _run_lab(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lab", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def snapshot_sources(directory: Path) -> Path:
    """A copy of what the facefleet wheel is built from, taken once: both deploys install the
    same build even while someone edits the checkout (a changed build is a real change)."""
    for name in ("pyproject.toml", "constraints.txt", "README.md"):
        shutil.copy2(ROOT / name, directory / name)
    for name in ("apps", "tui"):
        shutil.copytree(
            ROOT / name,
            directory / name,
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"),
        )
    return directory


def deploy(source: Path, *options: str, **extra_vars: Any) -> Deploy:
    started = time.monotonic()
    extra = {
        "facefleet_source_dir": str(source),
        "facefleet_bundle_dir": str(ROOT / ".wheelhouse"),
        **extra_vars,
    }
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("ansible-playbook")),
            "-i",
            str(INVENTORY),
            "--extra-vars",
            json.dumps(extra),
            *options,
            "site.yml",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"},
    )
    return Deploy(time.monotonic() - started, result.returncode, result.stdout + result.stderr)


#: The initial deploys of a fresh lab: every edge at once (the rollout batches are tested in
#: test_rollout.py).
ALL_AT_ONCE = {"facefleet_rollout_canary": 0, "facefleet_rollout_batch": "100%"}


@contextmanager
def lab_session(
    tmp_path_factory: pytest.TempPathFactory, edges: int, deploys: int, report: Path
) -> Iterator[Lab]:
    """Lab up with `edges` edges and one cloud host, site.yml deployed `deploys` times; always
    torn down. The lab's report (timings, figures) is written to `report` and printed."""
    reason = lab_unavailable()
    if reason:
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    reuse = os.environ.get("FACEFLEET_LAB_REUSE") == "1" and INVENTORY.exists()
    try:
        if not reuse:
            up = _run_lab("up", "--edges", str(edges), timeout=900)
            if up.returncode != 0:
                pytest.fail(f"lab up failed: {up.stderr.strip()[-2000:]}")
        inventory = yaml.safe_load(INVENTORY.read_text())["all"]["children"]
        groups = {g: list(inventory[g]["hosts"]) for g in ("cloud", "edge")}
        if len(groups["edge"]) < edges:
            pytest.fail(f"the lab that is up has {len(groups['edge'])} edges, {edges} needed")
        hosts = {
            name: spec["ansible_host"]
            for g in ("cloud", "edge")
            for name, spec in inventory[g]["hosts"].items()
        }
        source = snapshot_sources(tmp_path_factory.mktemp("facefleet-source"))
        the_lab = Lab(hosts, groups, source)
        for _ in range(int(os.environ.get("FACEFLEET_LAB_DEPLOYS", deploys))):
            the_lab.deploys.append(deploy(source, **ALL_AT_ONCE))
            if the_lab.deploys[-1].returncode != 0:
                break
        the_lab.report["deploy_s"] = [round(d.seconds, 1) for d in the_lab.deploys]
        yield the_lab
        report.parent.mkdir(exist_ok=True)
        report.write_text(json.dumps(the_lab.report, indent=2) + "\n")
        print(f"\nlab report ({report}):\n{json.dumps(the_lab.report, indent=2)}")
    finally:
        if not reuse:
            down = _run_lab("down", timeout=300)
            if down.returncode != 0:
                print(f"lab down failed: {down.stderr}", file=sys.stderr)


@pytest.fixture(scope="package")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Lab up (2 edges, 1 cloud) and site.yml deployed twice, shared by test_faults.py and
    test_fleet.py (which checks the deploys); always torn down. test_rollout.py's own lab
    replaces it after both (`lab up` removes a running lab first)."""
    with lab_session(tmp_path_factory, edges=2, deploys=2, report=REPORT) as the_lab:
        yield the_lab


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        the_lab = getattr(item, "funcargs", {}).get("lab")
        if isinstance(the_lab, Lab):
            report.sections.append(("journalctl of the lab units", the_lab.journals()))
    return report
