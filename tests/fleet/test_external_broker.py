"""`facefleet_cloud_broker: external` on the lab (issue #18 point 5): a fleet whose cloud
broker the roles did not set up.

A spare host becomes a plain Mosquitto only from the generic recipe in roles/README.md
("External cloud broker"): the test takes that section's code blocks and runs them as an
operator would, with the example's names replaced (the broker's address for
`mqtt.example.com`, this fleet's PKI directory for `.pki/mine`, its two cloud hosts for
`cloud-a` and `cloud-b`), so the documentation cannot drift from what works. Then site.yml
deploys a fleet of its own in external mode onto three more spare hosts: processors on two
cloud hosts (one also runs the lab's S3 endpoint) and an edge. The broker's files must be
byte for byte what the recipe wrote, faces published on the edge must each be stored once
with both processors taking part (the shared subscription), `facefleet fleet status` must
call the fleet healthy, and playbooks/decommission.yml must say that the broker's operator
refuses the decommissioned edge there.

The deploy starts beside test_faults (which mostly waits), after the README deploy of
test_deploy_docs that runs there too, at a lower CPU priority; this suite checks it last.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from lab.fleet import ssh_command
from lab.inventory import LAB_S3_PORT

from tests.fleet.clients import BROKER_PORT, broker_settings, s3_at, stored_faces
from tests.fleet.fleetlab import (
    ALL_AT_ONCE,
    INVENTORY,
    Deploy,
    Lab,
    deploy,
    start_publishers,
    started_beside_or_now,
    stop_publishers,
)
from tests.support import ROOT, Collector

pytestmark = [pytest.mark.fleet, pytest.mark.slow, pytest.mark.timeout(3600)]

STARTS_BESIDE = "test_faults"
#: as test_deploy_docs's deploy beside test_faults
BESIDE_NICENESS = 10

NAME = "extbroker"
FLEET_DIR = ROOT / "build" / NAME  # the inventory (generated: under build/)
PKI = ROOT / ".pki" / NAME
RECIPE = ROOT / "roles" / "README.md"
#: where the recipe's files go on the broker host before its install block runs
BROKER_WORKDIR = "/root/facefleet-broker"


def recipe_blocks() -> dict[str, str]:
    """The generic recipe's four code blocks: the controller's commands, the broker host's,
    facefleet.conf and facefleet.acl."""
    text = RECIPE.read_text()
    section = text.split("\n## External cloud broker\n", 1)[1].split("\n## ", 1)[0]
    generic = section.split("\n### A plain Mosquitto (the generic recipe)\n", 1)[1]
    generic = generic.split("\n### ", 1)[0]
    blocks = re.findall(r"```(\w+)\n(.*?)```", generic, re.S)
    assert [kind for kind, _ in blocks] == ["sh", "sh", "conf", "conf"], blocks
    names = ("controller", "install", "facefleet.conf", "facefleet.acl")
    return dict(zip(names, (block for _, block in blocks)))


@dataclass
class Fleet:
    """The spare hosts of this fleet, by role (names are the lab's spare names)."""

    broker: str
    clouds: list[str]
    edge: str

    @property
    def nodes(self) -> list[str]:
        return [*self.clouds, self.edge]


def fleet_hosts(lab: Lab) -> Fleet:
    spares = sorted(lab.spares)
    if len(spares) < 6:
        pytest.fail("the lab has no six spare hosts: python -m lab up --spare-hosts 6")
    # the first two are test_deploy_docs's
    return Fleet(broker=spares[5], clouds=spares[2:4], edge=spares[4])


def upload(lab: Lab, host: str, path: str, data: bytes) -> None:
    result = subprocess.run(
        ssh_command(lab.address(host), f"cat > {shlex.quote(path)}"),
        input=data,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def broker_files(lab: Lab, broker: str) -> str:
    """sha256 of every file under /etc/mosquitto of the broker host."""
    return lab.out(broker, "find /etc/mosquitto -type f | sort | xargs sha256sum")


def set_up_broker(lab: Lab, fleet: Fleet) -> str:
    """The recipe, as written (example names replaced): the controller's commands, the files
    copied over, the broker host's commands. Returns the broker's files' sha256 sums."""
    blocks = recipe_blocks()
    address = lab.address(fleet.broker)

    def ours(text: str) -> str:
        for example, real in (
            (".pki/mine", str(PKI)),
            ("mqtt.example.com", address),
            ("cloud-a", fleet.clouds[0]),
            ("cloud-b", fleet.clouds[1]),
        ):
            text = text.replace(example, real)
        return text

    for line in ours(blocks["controller"]).splitlines():
        if line.strip():
            run = subprocess.run(
                shlex.split(line),
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert run.returncode == 0, f"{line}: {run.stdout}{run.stderr}"
    lab.out(fleet.broker, f"rm -rf {BROKER_WORKDIR} && mkdir -p {BROKER_WORKDIR}")
    for name in ("ca.crt", "crl.pem", "broker.crt", "broker.key"):
        upload(lab, fleet.broker, f"{BROKER_WORKDIR}/{name}", (PKI / name).read_bytes())
    for name in ("facefleet.conf", "facefleet.acl"):
        upload(lab, fleet.broker, f"{BROKER_WORKDIR}/{name}", ours(blocks[name]).encode())
    installed = lab.ssh(
        fleet.broker,
        f"cd {BROKER_WORKDIR} && sh -ec {shlex.quote(blocks['install'])}",
        timeout=120,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    lab.wait_active(fleet.broker, "mosquitto")
    for name, target in (
        ("facefleet.conf", "/etc/mosquitto/conf.d/facefleet.conf"),
        ("facefleet.acl", "/etc/mosquitto/facefleet.acl"),
    ):
        assert lab.out(fleet.broker, f"cat {target}") == ours(blocks[name]).strip()
    return broker_files(lab, fleet.broker)


def write_inventory(lab: Lab, fleet: Fleet) -> Path:
    """The fleet's inventory in external mode, with the lab's settings (SSH, the clip, S3)."""
    lab_inventory = yaml.safe_load(INVENTORY.read_text())["all"]
    children = lab_inventory["children"]
    common = dict(lab_inventory["vars"])
    common.pop("facefleet_cloud_broker_host")
    common |= {
        "facefleet_pki_dir": str(PKI),
        "facefleet_cloud_broker": "external",
        "facefleet_cloud_broker_host": lab.address(fleet.broker),
        "facefleet_cloud_broker_port": BROKER_PORT,
        "facefleet_cloud_broker_ca_file": str(PKI / "ca.crt"),
    }
    s3_host = fleet.clouds[0]
    cloud_vars = children["cloud"]["vars"] | {
        "processor_s3_endpoint_url": f"http://{lab.address(s3_host)}:{LAB_S3_PORT}"
    }
    inventory = {
        "all": {
            "vars": common,
            "children": {
                "cloud": {
                    "hosts": {h: {"ansible_host": lab.address(h)} for h in fleet.clouds},
                    "vars": cloud_vars,
                },
                "edge": {
                    "hosts": {fleet.edge: {"ansible_host": lab.address(fleet.edge)}},
                    "vars": children["edge"]["vars"],
                },
                "lab_s3": {"hosts": {s3_host: {}}, "vars": children["lab_s3"]["vars"]},
            },
        }
    }
    FLEET_DIR.mkdir(parents=True, exist_ok=True)
    path = FLEET_DIR / "hosts.yml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


@dataclass
class ExternalFleet:
    fleet: Fleet
    inventory: Path
    #: the broker's files (sha256 sums) as the recipe left them
    broker_files: str
    deploy: Deploy
    seconds: dict[str, float] = field(default_factory=dict)


def set_up_and_deploy(lab: Lab, niceness: int = 0, before_deploy: Any = None) -> ExternalFleet:
    fleet = fleet_hosts(lab)
    shutil.rmtree(PKI, ignore_errors=True)
    started = time.monotonic()
    files = set_up_broker(lab, fleet)
    inventory = write_inventory(lab, fleet)
    seconds = {"broker from the recipe": time.monotonic() - started}
    if before_deploy is not None:
        started = time.monotonic()
        before_deploy()
        seconds["waited for the README deploy"] = time.monotonic() - started
    if niceness:
        for host in fleet.nodes:
            lab.out(host, f"renice -n {niceness} -p $(pgrep -d ' ' sshd) >/dev/null")
    result = deploy(lab.source, inventory=inventory, niceness=niceness, **ALL_AT_ONCE)
    seconds["deploy"] = result.seconds
    return ExternalFleet(fleet, inventory, files, result, seconds)


def start_beside(lab: Lab) -> Future[ExternalFleet]:
    """The broker and the deploy in the background, the deploy after test_deploy_docs's (two
    deploys at once would slow test_faults beyond what its waits allow on two cores)."""

    def after_the_readme_deploy() -> None:
        readme = lab.beside.get("test_deploy_docs")
        if readme is not None:
            readme.exception()  # waits; its suite judges the outcome

    pool = ThreadPoolExecutor(1, thread_name_prefix="extbroker-deploy")
    future = pool.submit(set_up_and_deploy, lab, BESIDE_NICENESS, after_the_readme_deploy)
    pool.shutdown(wait=False)
    return future


@pytest.fixture(scope="module")
def external(lab: Lab) -> Iterator[ExternalFleet]:
    """The deploy started beside test_faults, or now when that suite did not run."""
    now = functools.partial(set_up_and_deploy, lab)
    with started_beside_or_now(lab, __name__, now, FLEET_DIR, PKI) as deployed:
        lab.report["external_broker_s"] = {k: round(v, 1) for k, v in deployed.seconds.items()}
        print(f"external broker fleet: {lab.report['external_broker_s']}")
        yield deployed


def test_site_yml_deploys_an_external_broker_fleet_without_touching_the_broker(
    lab: Lab, external: ExternalFleet
) -> None:
    result = external.deploy
    assert result.returncode == 0, result.tail(150)
    fleet = external.fleet
    assert set(result.recap()) == set(fleet.nodes), result.tail()
    # the broker is not in the inventory, and nothing of the deploy changed it
    assert broker_files(lab, fleet.broker) == external.broker_files
    broker = lab.address(fleet.broker)
    for cloud in fleet.clouds:
        # no broker set up on the cloud hosts (the lab image has Debian's mosquitto package,
        # left as it came), the processor connects to the external one by its CA
        lab.out(cloud, "test ! -e /etc/mosquitto/conf.d/facefleet-listener.conf")
        lab.out(cloud, "test ! -e /etc/mosquitto/facefleet.acl")
        assert ":8883 " not in lab.out(cloud, "ss -Hltn")
        lab.wait_active(cloud, "facefleet-processor")
        config = lab.out(cloud, "cat /opt/facefleet/current/config/processor.toml")
        assert f'host = "{broker}"' in config, config
        assert 'ca_file = "/etc/facefleet/tls/broker-ca.crt"' in config, config
    lab.wait_active(fleet.edge, "facefleet-forwarder", "facefleet-detector", "facefleet-logger")
    forwarder = lab.out(fleet.edge, "cat /opt/facefleet/current/config/forwarder.toml")
    assert f'host = "{broker}"' in forwarder, forwarder


def test_faces_through_the_external_broker_are_stored_once_by_both_processors(
    lab: Lab, external: ExternalFleet
) -> None:
    assert external.deploy.returncode == 0, "the deploy failed (see the test above)"
    fleet = external.fleet
    stored_before = {
        cloud: int(status.get("stored") or 0)
        for cloud, status in processor_statuses(lab, external).items()
    }
    start_publishers(lab, [fleet.edge], "/opt/facefleet/current/venv/bin/python")
    try:
        time.sleep(20)
    finally:
        published, logs = stop_publishers(lab, [fleet.edge])
    acked = set(published[fleet.edge])
    assert len(acked) >= 20, logs
    s3 = s3_at(lab.address(fleet.clouds[0]))
    deadline = time.monotonic() + 180
    while True:
        stored = stored_faces(s3, fleet.edge)
        if acked <= set(stored) or time.monotonic() > deadline:
            break
        time.sleep(3)
    missing = acked - set(stored)
    assert not missing, f"{len(missing)} of {len(acked)} faces not stored: {sorted(missing)[:5]}"
    twice = {face: keys for face, keys in stored.items() if face in acked and len(keys) != 1}
    assert not twice, twice
    took_part = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        took_part = {
            cloud: int(status.get("stored") or 0) - stored_before.get(cloud, 0)
            for cloud, status in processor_statuses(lab, external).items()
        }
        if sum(took_part.values()) >= len(acked) and all(took_part.get(c) for c in fleet.clouds):
            break
        time.sleep(5)
    lab.report["external_broker_stored_per_processor"] = took_part
    assert all(took_part.get(cloud, 0) > 0 for cloud in fleet.clouds), took_part


def processor_statuses(lab: Lab, external: ExternalFleet) -> dict[str, dict[str, Any]]:
    """The retained heartbeat of each cloud host's processor, read with the monitor identity."""
    topics = {f"facefleet/{cloud}/status/processor": cloud for cloud in external.fleet.clouds}
    with Collector(
        broker_settings(lab.address(external.fleet.broker), PKI, "monitor"), *topics
    ) as monitor:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not set(topics) <= monitor.topics():
            time.sleep(0.5)
        latest = monitor.latest()
    return {cloud: latest.get(topic, {}) for topic, cloud in topics.items()}


def test_fleet_status_reports_the_external_broker_fleet_healthy(
    lab: Lab, external: ExternalFleet
) -> None:
    assert external.deploy.returncode == 0, "the deploy failed (see the first test)"
    status = subprocess.run(
        [sys.executable, "-m", "facefleet", "fleet", "status", "--inventory",
         str(external.inventory), "--wait", "60"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert status.returncode == 0, status.stdout + status.stderr
    for node in external.fleet.nodes:
        assert node in status.stdout
    # the broker's certificate is the operator's: no renewal advice for it
    assert "broker" not in status.stdout.splitlines()[-1], status.stdout


def test_decommissioning_says_the_external_broker_must_refuse_the_device(
    lab: Lab, external: ExternalFleet
) -> None:
    """The last use of this fleet: playbooks/decommission.yml on its edge revokes it in the
    fleet PKI and says, in one line, that the broker's operator must refuse it there (the
    broker is not facefleet's to edit: its files stay as the recipe wrote them)."""
    assert external.deploy.returncode == 0, "the deploy failed (see the first test)"
    edge = external.fleet.edge
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(external.inventory),
         "playbooks/decommission.yml", "--limit", edge],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert f"{edge} decommissioned (" in result.stdout
    said = " ".join(result.stdout.split())
    assert f"refuse its certificate (CN {edge}) at the broker yourself" in said, result.stdout
    assert broker_files(lab, external.fleet.broker) == external.broker_files
    assert "decommissioned" in (PKI / "revocations.json").read_text()
