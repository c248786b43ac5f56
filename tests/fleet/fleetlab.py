"""The fleet lab as the lab suites see it: its hosts, site.yml deploys, and a known state.

One lab serves every suite of a test run (see conftest.py): booted once, deployed once (and a
second time, beside read-only checks, to prove idempotence), put back into a known state after
each suite.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from lab.fleet import lab_hosts, ssh_command

from tests.support import ROOT

INVENTORY = ROOT / "inventory" / "lab" / "hosts.yml"
PKI_DIR = ROOT / ".pki" / "lab"
EDGE_UNITS = ("mosquitto", "facefleet-detector", "facefleet-logger", "facefleet-forwarder")
CLOUD_UNITS = ("mosquitto", "facefleet-processor", "facefleet-lab-s3")
#: Runtime drop-ins the suites add to units (under /run: gone at the next boot) are named so.
DROPIN = "50-lab-test.conf"
#: The wheelhouse outlives the checkout: a second run (or a fresh clone on the same machine)
#: reuses every wheel that the same pyproject and constraints already brought in.
BUNDLE_DIR = Path(os.environ.get("FACEFLEET_LAB_BUNDLE", "/var/cache/facefleet-lab/bundle"))
#: Each deploy's time per task and host (Ansible's junit callback), to see where deploys spend
#: it: build/deploys/<n>-<playbook>/<playbook>-<time>.xml, numbered in the order they ran.
DEPLOY_TIMINGS = ROOT / "build" / "deploys"
_deploy_numbers = itertools.count(1)
#: The initial deploys of a fresh lab: every edge at once (the rollout batches are tested in
#: test_rollout.py).
ALL_AT_ONCE = {"facefleet_rollout_canary": 0, "facefleet_rollout_batch": "100%"}
#: The emulated arm64 edges (issue #13): jetson-1 (Debian 11, Python 3.9, the OpenCV wheel)
#: and jetson-cv-1 (Debian 12, Debian's OpenCV 4.6). `lab add` boots them into the running lab
#: while it deploys the rest (see `Lab.start_arm64_join`); their inventory is written here
#: until they are deployed, then it replaces the lab's.
ARM64_EDGES = ("--arm64-edges", "1", "--arm64-opencv-edges", "1")
ARM64_INVENTORY = ROOT / ".lab" / "hosts-with-arm64.yml"
T = TypeVar("T")
RECAP = re.compile(
    r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)


def lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the fleet lab needs root (systemd-nspawn, bridges)"
    for tool in ("systemd-nspawn", "mmdebstrap", "ssh", "ip"):
        if shutil.which(tool) is None:
            return f"the fleet lab needs {tool} (make system-deps)"
    return None


@dataclass
class Deploy:
    seconds: float
    returncode: int
    output: str
    #: When it started (epoch seconds, to line up with the rollout reports' timestamps).
    started_at: float = 0.0

    def recap(self) -> dict[str, dict[str, int]]:
        return {
            host: {"ok": int(ok), "changed": int(ch), "unreachable": int(un), "failed": int(fa)}
            for host, ok, ch, un, fa in RECAP.findall(self.output)
        }

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-lines:])

    def assert_changed_nothing(self, hosts: list[str]) -> None:
        """A deploy of what was deployed already: it ran on exactly `hosts`, changed nothing."""
        assert self.returncode == 0, self.tail()
        recap = self.recap()
        assert set(recap) == set(hosts), self.tail()
        changed = {host: r["changed"] for host, r in recap.items() if r["changed"]}
        assert not changed, f"second run changed something: {changed}\n{self.tail(120)}"


def inventory_hosts(path: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Address of each cloud and edge host of an inventory, and the hosts of both groups."""
    inventory = yaml.safe_load(path.read_text())["all"]["children"]
    groups = {g: list(inventory[g]["hosts"]) for g in ("cloud", "edge")}
    hosts = {
        name: spec["ansible_host"]
        for g in ("cloud", "edge")
        for name, spec in inventory[g]["hosts"].items()
    }
    return hosts, groups


@dataclass
class Arm64Join:
    """The arm64 edges' way into the lab: `lab add` (their images built, if not cached, beside
    the lab's first deploy), then site.yml limited to them once the rest of the fleet is
    deployed, then again, which must change nothing."""

    names: list[str]
    #: seconds of each step, by name
    seconds: dict[str, float]
    deploys: list[Deploy]


@dataclass
class Lab:
    hosts: dict[str, str]
    groups: dict[str, list[str]]
    source: Path
    deploys: list[Deploy] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    #: Hosts outside the inventory (name -> address), for a suite that deploys its own fleet.
    spares: dict[str, str] = field(default_factory=dict)
    #: Inventory hosts emulated with qemu-user (the arm64 edges): several times slower.
    emulated: set[str] = field(default_factory=set)
    #: The idempotence deploy, running beside the read-only checks (see `deploy_beside`).
    pending: Future[Deploy] | None = None
    #: Work of a later suite started beside an earlier one, by suite name (conftest.py's
    #: `known_state`): that suite collects it.
    beside: dict[str, Future[Any]] = field(default_factory=dict)
    #: The arm64 edges on their way in (`start_arm64_join`), then how they came in.
    joining: Future[Arm64Join] | None = None
    arm64: Arm64Join | None = None

    def start_arm64_join(self, deployed: threading.Event) -> None:
        """Add the arm64 edges in the background: `lab add` at once (building their images
        beside the first deploy), their deploys once `deployed` is set, if the first deploy
        succeeded. Emulated hosts are slow to build and deploy; this keeps them off the
        path of the suites that do not need them (`join_arm64` is where one waits)."""

        def join() -> Arm64Join:
            seconds: dict[str, float] = {}
            started = time.monotonic()
            added = run_lab("add", *ARM64_EDGES, "--inventory", str(ARM64_INVENTORY), timeout=3600)
            seconds["lab add (images, boot)"] = time.monotonic() - started
            if added.returncode != 0:
                raise RuntimeError(f"lab add of the arm64 edges failed: {added.stderr[-2000:]}")
            names = [h.name for h in lab_hosts() if h.image.emulated]
            deployed.wait()
            deploys: list[Deploy] = []
            if self.deploys and self.deploys[0].returncode == 0:
                for _ in range(2):
                    deploys.append(
                        deploy(
                            self.source,
                            "--limit",
                            ",".join(names),
                            inventory=ARM64_INVENTORY,
                            **ALL_AT_ONCE,
                        )
                    )
                    seconds[f"deploy {len(deploys)}"] = deploys[-1].seconds
                    if deploys[-1].returncode != 0:
                        break
            return Arm64Join(names, seconds, deploys)

        pool = ThreadPoolExecutor(1, thread_name_prefix="arm64-join")
        self.joining = pool.submit(join)
        pool.shutdown(wait=False)

    def join_arm64(self) -> Arm64Join | None:
        """Wait for the arm64 edges; once deployed twice without a failure, their inventory
        becomes the lab's and they are hosts of this lab like the others."""
        if self.joining is not None:
            self.arm64, self.joining = self.joining.result(), None
            if len(self.arm64.deploys) == 2 and all(d.returncode == 0 for d in self.arm64.deploys):
                os.replace(ARM64_INVENTORY, INVENTORY)
                self.hosts, self.groups = inventory_hosts(INVENTORY)
                self.emulated = {h.name for h in lab_hosts() if h.image.emulated}
        return self.arm64

    def deploy_beside(self) -> None:
        """Start the same deploy again in the background. It must change nothing, so the
        checks that only look at the deployment (test_fleet's) run beside it; `settle()`
        waits for it before anything changes the lab."""
        pool = ThreadPoolExecutor(1, thread_name_prefix="idempotence-deploy")
        self.pending = pool.submit(deploy, self.source, **ALL_AT_ONCE)
        pool.shutdown(wait=False)

    def settle(self) -> None:
        """Wait for the background deploy (if any) and add it to `deploys`."""
        if self.pending is not None:
            self.deploys.append(self.pending.result())
            self.pending = None

    @property
    def cloud(self) -> str:
        return self.groups["cloud"][0]

    @property
    def edges(self) -> list[str]:
        return self.groups["edge"]

    @property
    def native_edges(self) -> list[str]:
        """The x86_64 edges, whose detectors play the clip fast enough to wait for faces."""
        return [edge for edge in self.edges if edge not in self.emulated]

    def units(self, host: str) -> tuple[str, ...]:
        return CLOUD_UNITS if host in self.groups["cloud"] else EDGE_UNITS

    def address(self, host: str) -> str:
        """The address of an inventory host or a spare one."""
        return self.hosts.get(host) or self.spares[host]

    def ssh(self, host: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ssh_command(self.address(host), command),
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

    def restore(self) -> None:
        """Undo what a suite (or an interrupted one) changed at run time: runtime drop-ins, a
        stopped S3 endpoint, a second processor, cut uplinks; then every unit runs again."""
        cloud_ip = self.hosts[self.cloud]
        self.ssh(self.cloud, "kill -s CONT $(systemctl show -p MainPID --value facefleet-lab-s3)")
        self.ssh(
            self.cloud,
            "systemctl stop facefleet-processor-2; rm -f /run/systemd/system/"
            "facefleet-processor-2.service",
        )
        for host in self.hosts:
            changed = self.ssh(
                host,
                f"ip route del blackhole {cloud_ip}/32 2>/dev/null;"
                f" ls /run/systemd/system/*.d/{DROPIN} 2>/dev/null",
            ).stdout.split()
            units = [Path(p).parent.name.removesuffix(".service.d") for p in changed]
            self.ssh(
                host,
                f"rm -f /run/systemd/system/*.d/{DROPIN}; systemctl daemon-reload;"
                f" systemctl reset-failed; systemctl restart {' '.join(units)} 2>/dev/null;"
                f" systemctl start {' '.join(self.units(host))}",
                timeout=120,
            )

    def wait_active(self, host: str, *units: str, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while self.ssh(host, f"systemctl is-active {' '.join(units)}").returncode != 0:
            assert time.monotonic() < deadline, f"{', '.join(units)} not active on {host}"
            time.sleep(1)


#: face_publisher.py on an edge: where it runs and its transient unit.
PUBLISHER_DIR = "/root/face-publisher"
PUBLISHER_UNIT = "lab-test-face-publisher"


def start_publishers(lab: Lab, edges: list[str], python: str) -> None:
    """face_publisher.py on each edge (a transient unit running `python`): a face every half
    second into the edge broker, the acknowledged ids appended to a file."""
    script = (Path(__file__).parent / "face_publisher.py").read_text()
    for edge in edges:
        lab.out(edge, f"rm -rf {PUBLISHER_DIR} && mkdir -p {PUBLISHER_DIR}")
        upload = subprocess.run(
            ssh_command(lab.address(edge), f"cat > {PUBLISHER_DIR}/face_publisher.py"),
            input=script,
            text=True,
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert upload.returncode == 0, upload.stderr
        lab.out(
            edge,
            f"systemd-run --quiet --unit {PUBLISHER_UNIT} --working-directory {PUBLISHER_DIR} "
            f"{python} face_publisher.py {edge} acked.txt stop",
        )


def stop_publishers(lab: Lab, edges: list[str]) -> tuple[dict[str, list[str]], str]:
    """Stop the publishers; the acknowledged face ids per edge, and the publishers' logs."""
    published, logs = {}, []
    for edge in edges:
        lab.out(edge, f"touch {PUBLISHER_DIR}/stop")
    for edge in edges:
        deadline = time.monotonic() + 60
        while lab.ssh(edge, f"systemctl is-active --quiet {PUBLISHER_UNIT}").returncode == 0:
            assert time.monotonic() < deadline, f"the face publisher on {edge} did not stop"
            time.sleep(0.5)
        published[edge] = lab.out(edge, f"cat {PUBLISHER_DIR}/acked.txt || true").split()
        journal = lab.out(edge, f"journalctl --no-pager -n 5 -u {PUBLISHER_UNIT}")
        logs.append(f"{edge}: {journal}")
    return published, "\n".join(logs)


@contextlib.contextmanager
def started_beside_or_now(
    lab: Lab, module: str, now: Callable[[], T], *leftovers: Path
) -> Iterator[T]:
    """What the suite `module` started beside an earlier suite (`lab.beside`, see conftest's
    `known_state`), waited for; or `now()` when that suite did not run. The `leftovers`
    (directories it wrote) are removed at the end."""
    beside = lab.beside.pop(module.rsplit(".", 1)[-1], None)
    try:
        yield beside.result() if beside is not None else now()
    finally:
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)


def run_lab(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lab", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def snapshot_sources(directory: Path) -> Path:
    """A copy of what the facefleet wheel is built from, taken once: every deploy installs the
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


def deploy(
    source: Path,
    *options: str,
    playbook: str = "site.yml",
    inventory: Path = INVENTORY,
    niceness: int = 0,
    **extra_vars: Any,
) -> Deploy:
    """ansible-playbook PLAYBOOK on `inventory` with the lab's source and bundle; with
    `niceness`, the controller's side runs at that CPU niceness (a deploy beside a suite)."""
    started, started_at = time.monotonic(), time.time()
    number = next(_deploy_numbers)
    if number == 1:  # this run's deploys only
        shutil.rmtree(DEPLOY_TIMINGS, ignore_errors=True)
    timings = DEPLOY_TIMINGS / f"{number:02d}-{Path(playbook).stem}"
    extra = {
        "facefleet_source_dir": str(source),
        "facefleet_bundle_dir": str(BUNDLE_DIR),
        **extra_vars,
    }
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("ansible-playbook")),
            "-i",
            str(inventory),
            "--extra-vars",
            json.dumps(extra),
            *options,
            playbook,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        preexec_fn=(lambda: os.nice(niceness)) if niceness else None,
        env={
            **os.environ,
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_CALLBACKS_ENABLED": "ansible.builtin.junit",
            "JUNIT_OUTPUT_DIR": str(timings),
            "JUNIT_TASK_CLASS": "yes",
        },
    )
    return Deploy(
        time.monotonic() - started, result.returncode, result.stdout + result.stderr, started_at
    )
