"""The README's deployment section, run as written against fresh lab hosts.

An operator copies `inventory/example`, edits what the README says to edit (hosts and their
addresses, the SSH user, the broker's name, the bucket), and runs the commands of the README's
"### Deploy" block: site.yml, the monitor in a terminal, fleet status. Nothing sets
`facefleet_pki_dir`: the monitor and fleet status must find the PKI site.yml made for this
inventory by the same default.

The copy deploys the lab's two spare hosts (outside the lab's inventory): a fleet of its own,
first deployed from nothing, as an operator's is. That deploy starts beside test_faults, which
mostly waits (outages of a fixed length, drains), at a lower CPU priority; this suite checks it
last.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import shlex
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fleet.fleetlab import INVENTORY, Lab, started_beside_or_now
from tests.support import ROOT

pytestmark = [pytest.mark.fleet, pytest.mark.slow, pytest.mark.timeout(3600)]

NAME = "docs-test"  # inventory/<NAME>, the README's inventory/mine


STARTS_BESIDE = "test_faults"
#: CPU niceness of the deploy beside test_faults: the controller and the spare hosts' SSH
#: servers (and so every module Ansible runs there).
BESIDE_NICENESS = 10


def docs_hosts(lab: Lab) -> dict[str, list[str]]:
    """The hosts the copied inventory deploys: a cloud host and an edge (a fleet of one of
    each is what the README's steps are about), the lab's spare hosts."""
    spares = sorted(lab.spares)
    if len(spares) < 2:
        pytest.fail("the lab has no two spare hosts: python -m lab up --spare-hosts 2")
    return {"cloud": spares[:1], "edge": spares[1:2]}


def readme_deploy_commands() -> list[str]:
    """The shell lines of the README's `### Deploy` block, for inventory/<NAME>."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Deploy\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    return [line.replace("inventory/mine", f"inventory/{NAME}") for line in lines if line]


def edit_copied_inventory(directory: Path, lab: Lab) -> None:
    """Point the copy at the lab: hosts and addresses, SSH, broker address, bucket. The lab has
    no DNS, no apt mirror, no internet and moto as S3: its own inventory's values say how."""
    lab_inventory = yaml.safe_load(INVENTORY.read_text())["all"]
    lab_vars: dict[str, Any] = dict(lab_inventory["vars"])
    lab_vars.pop("facefleet_pki_dir")  # the point of the test: site.yml's default
    children = lab_inventory["children"]
    cloud = docs_hosts(lab)["cloud"][0]
    hosts = {
        "all": {
            "children": {
                group: {"hosts": {h: {"ansible_host": lab.address(h)} for h in hosts}}
                for group, hosts in docs_hosts(lab).items()
            }
            | {"lab_s3": {"hosts": {cloud: {}}}}
        }
    }
    (directory / "hosts.yml").write_text(yaml.safe_dump(hosts, sort_keys=False))
    shutil.rmtree(directory / "host_vars")  # the example's cameras are not in the lab

    def edit(group: str, changes: dict[str, Any]) -> None:
        path = directory / "group_vars" / f"{group}.yml"
        values = yaml.safe_load(path.read_text()) or {}
        path.write_text(yaml.safe_dump({**values, **changes}, sort_keys=False))

    broker = lab.address(cloud)
    edit(
        "all",
        {
            **lab_vars,
            "facefleet_cloud_broker_host": broker,
            "facefleet_cloud_broker_names": [broker],
        },
    )
    edit("cloud", {**children["cloud"]["vars"], "mosquitto_update_cache": False})
    edit("edge", {**children["edge"]["vars"], "mosquitto_update_cache": False})
    (directory / "group_vars" / "lab_s3.yml").write_text(
        yaml.safe_dump(children["lab_s3"]["vars"], sort_keys=False)
    )


def run_in_terminal(argv: list[str], expect: list[str], timeout_s: float) -> str:
    """Run a full-screen program in a 120x40 pseudo-terminal until every text in `expect` was
    drawn, press q, and return what it drew (escape sequences removed).

    The terminal is read until the program has ended: a program that cannot write its last
    screen into a full terminal cannot exit. q is pressed again every few seconds, in case the
    first press came before the program read its keyboard (a busy machine)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "TERM": "xterm-256color"},
        start_new_session=True,
    )
    os.close(follower)
    drawn = bytearray()

    def read(wait_s: float) -> bool:
        """Append what the program drew within wait_s; False once the terminal is closed."""
        ready, _, _ = select.select([leader], [], [], wait_s)
        if ready:
            try:
                drawn.extend(os.read(leader, 65536))
            except OSError:  # the program ended
                return False
        return True

    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and read(0.5):
            text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b" ", drawn).decode(errors="replace")
            if all(item in text for item in expect):
                break
        quit_by, pressed = time.monotonic() + 60, 0.0
        while proc.poll() is None and time.monotonic() < quit_by:
            if time.monotonic() - pressed > 5:
                with contextlib.suppress(OSError):  # a closed terminal: the program is ending
                    os.write(leader, b"q")
                pressed = time.monotonic()
            read(0.5)
        assert proc.wait(timeout=1) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
    return re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b" ", drawn).decode(errors="replace")


@dataclass
class DocsDeploy:
    """The README's site.yml command, run on the copied inventory."""

    commands: list[str]
    result: subprocess.CompletedProcess[str]


COPY, PKI = ROOT / "inventory" / NAME, ROOT / ".pki" / NAME


def start_beside(lab: Lab) -> Future[DocsDeploy]:
    """Copy and edit the inventory, then run the README's site.yml in the background."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="docs-deploy")
    future = pool.submit(deploy_the_copy, lab, BESIDE_NICENESS)
    pool.shutdown(wait=False)
    return future


def deploy_the_copy(lab: Lab, niceness: int = 0) -> DocsDeploy:
    shutil.rmtree(COPY, ignore_errors=True)
    shutil.rmtree(PKI, ignore_errors=True)
    commands = readme_deploy_commands()
    cp, playbook = commands[:2]
    subprocess.run(shlex.split(cp), cwd=ROOT, check=True)
    edit_copied_inventory(COPY, lab)
    if niceness:
        for host in (h for hosts in docs_hosts(lab).values() for h in hosts):
            lab.out(host, f"renice -n {niceness} -p $(pgrep -d ' ' sshd) >/dev/null")
    result = subprocess.run(
        shlex.split(playbook),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
        preexec_fn=(lambda: os.nice(niceness)) if niceness else None,
    )
    return DocsDeploy(commands, result)


@pytest.fixture(scope="module")
def docs_deploy(lab: Lab) -> Iterator[DocsDeploy]:
    """The deploy started beside test_faults, or now when that suite did not run."""
    with started_beside_or_now(lab, __name__, lambda: deploy_the_copy(lab), COPY, PKI) as done:
        yield done


def test_the_readme_deploys_a_copy_of_the_example_inventory(
    lab: Lab, docs_deploy: DocsDeploy
) -> None:
    result = docs_deploy.result
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert (PKI / "ca.crt").is_file() and (PKI / "monitor.key").is_file()

    _, _, monitor, status = docs_deploy.commands
    fleet = subprocess.run(
        shlex.split(status), cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert fleet.returncode == 0, fleet.stdout + fleet.stderr
    deployed = [h for hosts in docs_hosts(lab).values() for h in hosts]
    for host in deployed:
        assert host in fleet.stdout

    screen = run_in_terminal(shlex.split(monitor), ["connected to", *deployed], timeout_s=90)
    assert "connected to" in screen, screen[-3000:]
    assert "unreachable" not in screen and "refused" not in screen


def revoked_handshake(address: str, port: int, pki: Path, identity: str) -> str:
    """What a new TLS connection with `identity`'s certificate meets: 'accepted', or the
    error (with TLS 1.3 the server's alert arrives after the client's side of the handshake:
    the first read gets it; mosquitto sends nothing before CONNECT)."""
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.check_hostname = False
    context.load_cert_chain(str(pki / f"{identity}.crt"), str(pki / f"{identity}.key"))
    try:
        with (
            socket.create_connection((address, port), timeout=10) as raw,
            context.wrap_socket(raw) as tls,
        ):
            tls.settimeout(3)
            tls.recv(1)
    except TimeoutError:
        return "accepted"
    except (ssl.SSLError, OSError) as exc:
        return str(exc)
    return "accepted"


def check_decommission(lab: Lab, inventory: Path, pki: Path, cloud: str, edge: str) -> float:
    """playbooks/decommission.yml on `edge` of a deployed fleet: the cloud broker reloaded, not
    restarted, refuses the device's certificate; the device's services are stopped and
    disabled, its spool still on disk; fleet status shows it decommissioned, not unhealthy.
    Returns the playbook's duration in seconds."""
    broker_pid = lab.out(cloud, "systemctl show -p MainPID --value mosquitto")
    assert revoked_handshake(lab.address(cloud), 8883, pki, edge) == "accepted"
    started = time.monotonic()
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(inventory),
         "playbooks/decommission.yml", "--limit", edge],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )  # fmt: skip
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert f"{edge} decommissioned (" in result.stdout
    assert lab.out(cloud, "systemctl show -p MainPID --value mosquitto") == broker_pid
    assert "revoked" in revoked_handshake(lab.address(cloud), 8883, pki, edge)
    units = " ".join(f"facefleet-{s}" for s in ("detector", "logger", "forwarder"))
    assert set(lab.ssh(edge, f"systemctl is-active {units}").stdout.split()) == {"inactive"}
    assert set(lab.ssh(edge, f"systemctl is-enabled {units}").stdout.split()) == {"disabled"}
    lab.out(edge, "test -s /var/lib/facefleet/forwarder/spool.sqlite")  # nothing deleted
    status = subprocess.run(
        [sys.executable, "-m", "facefleet", "fleet", "status", "--inventory", str(inventory)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert status.returncode == 0, status.stdout + status.stderr
    line = next(line for line in status.stdout.splitlines() if line.startswith(edge))
    assert "decommissioned since" in line, status.stdout
    return took


def test_decommissioning_the_readme_fleets_device(lab: Lab, docs_deploy: DocsDeploy) -> None:
    """After the README's deploy (the last use of its fleet): its edge decommissioned."""
    assert docs_deploy.result.returncode == 0, "the README deploy failed (see the test above)"
    hosts = docs_hosts(lab)
    took = check_decommission(lab, COPY / "hosts.yml", PKI, hosts["cloud"][0], hosts["edge"][0])
    print(f"decommission.yml took {took:.0f} s")
