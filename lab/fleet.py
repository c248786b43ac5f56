"""Lab hosts as systemd-nspawn containers on a private bridge.

Each host is a copy of the cached base image, booted with `systemd-nspawn --boot` in its own
session (the controller is not booted with systemd, so there is no machined to register with).
Everything made here is recorded in `.lab/state.json`; `down()` also finds leftovers by their
names and paths, so it cleans up after a crashed or interrupted `up()`.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab import image
from lab.image import LabError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = ROOT / ".lab"
INVENTORY_DIR = ROOT / "inventory" / "lab"
PKI_DIR = ROOT / ".pki" / "lab"
MACHINES = Path(os.environ.get("FACEFLEET_LAB_ROOT", "/var/lib/facefleet-lab/machines"))
#: Bridge, machine-name prefix and subnet name one lab; a second checkout (a git worktree) can
#: run its own lab beside this one by setting all three to other values.
BRIDGE = os.environ.get("FACEFLEET_LAB_BRIDGE", "ffbr0")
MACHINE_PREFIX = os.environ.get("FACEFLEET_LAB_PREFIX", "ff-")
SUBNET = os.environ.get("FACEFLEET_LAB_SUBNET", "10.77.0.0/24")
KEY = STATE_DIR / "id_ed25519"
#: How everything reaches the lab hosts (`lab/ssh`, the lab tests, bench): written by `up`.
SSH_CONFIG = STATE_DIR / "ssh_config"
#: One shared connection per host (OpenSSH's ControlMaster): the lab suites run hundreds of
#: short commands on the hosts, and a new handshake costs 0.3 s of CPU on an idle machine
#: against 0.01 s for a command over the shared connection. Under /run: a socket's path must
#: stay short, whatever the checkout's path.
CONTROL_DIR = Path("/run/facefleet-lab") / f"{MACHINE_PREFIX}ssh"
#: A host whose power was cut or whose link is down drops its shared connection after this.
SERVER_ALIVE = (5, 3)  # (interval s, count)


@dataclass(frozen=True)
class Host:
    """One lab host: `name` is the inventory hostname (= node name), `image` its root tree."""

    name: str
    group: str
    address: str
    image: image.Image = field(default_factory=image.Image)

    @property
    def machine(self) -> str:
        return MACHINE_PREFIX + self.name

    @property
    def directory(self) -> Path:
        return MACHINES / self.machine


@dataclass(frozen=True)
class Topology:
    """What `up` boots: x86_64 edges, emulated arm64 edges (Jetson-like) on a Debian release,
    arm64 edges that use the distribution's OpenCV (Debian 12's python3-opencv), and spare
    x86_64 hosts outside the inventory (for a test that deploys a fleet of its own)."""

    edges: int = 2
    arm64_edges: int = 0
    arm64_release: str = image.ARM64_RELEASES[0]
    arm64_opencv_edges: int = 0
    spare_hosts: int = 0


#: Name prefixes of the arm64 edges; the inventory gives the `jetson-cv-` ones the system OpenCV.
ARM64_PREFIX = "jetson-"
ARM64_OPENCV_PREFIX = "jetson-cv-"
#: Spare hosts: booted like the others, in no group of the lab's inventory.
SPARE_PREFIX = "spare-"
SPARE_GROUP = "spare"


def plan(topology: Topology, subnet: str, existing: Sequence[Host] = ()) -> tuple[str, list[Host]]:
    """The bridge address (with prefix length) and the hosts: cloud-1, edge-1..N,
    jetson-1..M, jetson-cv-1..K, spare-1..S. With `existing` hosts (`add` to a lab that is up),
    only new hosts, numbered after those of their kind, and no second cloud host."""
    net = ipaddress.ip_network(subnet)
    if net.num_addresses < 64:
        raise LabError(f"subnet {subnet} is too small (need a /26 or larger)")

    def numbers(prefix: str, count: int) -> range:
        kind = re.compile(re.escape(prefix) + r"\d+$")
        first = 1 + sum(1 for h in existing if kind.match(h.name))
        return range(first, first + count)

    counts = (topology.edges, topology.arm64_edges, topology.arm64_opencv_edges)
    if min(*counts, topology.spare_hosts) < 0:
        raise LabError("host counts must not be negative")
    edges = numbers("edge-", topology.edges)
    jetsons = numbers(ARM64_PREFIX, topology.arm64_edges)
    with_opencv_numbers = numbers(ARM64_OPENCV_PREFIX, topology.arm64_opencv_edges)
    spares = numbers(SPARE_PREFIX, topology.spare_hosts)
    # the highest number of a kind is how many hosts of it the lab has
    if not (existing or topology.edges) or edges.stop - 1 > 30:
        raise LabError("--edges must be 1..30 (x86_64 edges in all)")
    if jetsons.stop - 1 + with_opencv_numbers.stop - 1 > 10:
        raise LabError("--arm64-edges and --arm64-opencv-edges must add up to 0..10 (in all)")
    if spares.stop - 1 > 10:
        raise LabError("--spare-hosts must be 0..10 (in all)")
    if topology.arm64_release not in image.ARM64_RELEASES:
        raise LabError(f"--arm64-release must be one of {', '.join(image.ARM64_RELEASES)}")
    base = net.network_address
    hosts = [] if existing else [Host("cloud-1", "cloud", str(base + 10))]
    hosts += [Host(f"edge-{i}", "edge", str(base + 20 + i)) for i in edges]
    jetson = image.Image(topology.arm64_release, "arm64")
    hosts += [Host(f"{ARM64_PREFIX}{i}", "edge", str(base + 60 + i), jetson) for i in jetsons]
    with_opencv = image.Image("bookworm", "arm64", "opencv")
    hosts += [
        Host(f"{ARM64_OPENCV_PREFIX}{i}", "edge", str(base + 80 + i), with_opencv)
        for i in with_opencv_numbers
    ]
    hosts += [Host(f"{SPARE_PREFIX}{i}", SPARE_GROUP, str(base + 100 + i)) for i in spares]
    return f"{base + 1}/{net.prefixlen}", hosts


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One `up`/`down` at a time."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / "lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LabError("another `lab up` or `lab down` is running") from None
        yield


def _link_exists(name: str) -> bool:
    return _run("ip", "link", "show", "dev", name, check=False).returncode == 0


def _subnet_in_use(subnet: str) -> str | None:
    """Another interface with an address in the lab subnet (we must not hijack its traffic)."""
    net = ipaddress.ip_network(subnet)
    out = _run("ip", "-o", "-4", "addr", "show").stdout
    for line in out.splitlines():
        fields = line.split()
        iface, cidr = fields[1], fields[3]
        if iface != BRIDGE and ipaddress.ip_interface(cidr).network.overlaps(net):
            return iface
    return None


def _prepare_root(host: Host, hosts: list[Host], prefixlen: int, pubkey: str) -> None:
    root = host.directory
    _run("cp", "-a", "--reflink=auto", str(host.image.directory), str(root))
    (root / image.STAMP).unlink(missing_ok=True)
    (root / "etc/hostname").write_text(host.name + "\n")
    lines = ["127.0.0.1\tlocalhost", f"127.0.1.1\t{host.name}", "::1\tlocalhost ip6-localhost"]
    lines += [f"{h.address}\t{h.name}" for h in hosts]
    (root / "etc/hosts").write_text("\n".join(lines) + "\n")
    (root / "etc/systemd/network/10-facefleet-lab.network").write_text(
        "[Match]\nName=host0\n\n[Network]\n"
        f"Address={host.address}/{prefixlen}\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
    )
    ssh = root / "root/.ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    (ssh / "authorized_keys").write_text(pubkey)
    (ssh / "authorized_keys").chmod(0o600)
    _run("ssh-keygen", "-A", "-f", str(root))


def _boot(host: Host) -> int:
    logs = STATE_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{host.name}.console", "wb") as out:
        proc = subprocess.Popen(
            [
                "systemd-nspawn",
                "-D",
                str(host.directory),
                "-M",
                host.machine,
                "--register=no",
                "--keep-unit",
                "--boot",
                f"--network-bridge={BRIDGE}",
                "--console=read-only",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc.pid


def _address_emulated_host(host: Host, pid: int) -> bool:
    """Give an emulated host its address from outside: systemd-networkd cannot run under
    qemu-user ("Could not create manager: Protocol not supported": netlink), so the lab sets
    host0 up in the container's network namespace with this machine's own `ip`. False until
    the container's init and its host0 link exist."""
    inits = _children(pid)
    if not inits:
        return False
    subnet = json.loads((STATE_DIR / "state.json").read_text())["subnet"]
    prefixlen = ipaddress.ip_network(subnet).prefixlen
    netns = ["nsenter", "-t", str(inits[0]), "-n", "ip"]
    if _run(*netns, "link", "show", "dev", "host0", check=False).returncode != 0:
        return False
    _run(*netns, "addr", "replace", f"{host.address}/{prefixlen}", "dev", "host0")
    _run(*netns, "link", "set", "host0", "up")
    _run(*netns, "link", "set", "lo", "up")
    return True


def ssh_command(address: str, *command: str) -> list[str]:
    return ["ssh", "-F", str(SSH_CONFIG), address, *command]


def _write_ssh_config() -> None:
    interval, count = SERVER_ALIVE
    CONTROL_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    SSH_CONFIG.write_text(
        "# written by `python -m lab up`: how the lab's tools reach its hosts\n"
        "Host *\n"
        "  User root\n"
        f"  IdentityFile {KEY}\n"
        "  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking no\n"
        "  UserKnownHostsFile /dev/null\n"
        "  LogLevel ERROR\n"
        "  BatchMode yes\n"
        "  ConnectTimeout 5\n"
        "  ControlMaster auto\n"
        f"  ControlPath {CONTROL_DIR}/%C\n"
        "  ControlPersist 120\n"
        f"  ServerAliveInterval {interval}\n"
        f"  ServerAliveCountMax {count}\n"
    )


def _close_shared_connection(address: str) -> None:
    """End a host's shared connection (its power is cut: the next command must not wait for
    the dead one to time out)."""
    subprocess.run(
        ["ssh", "-F", str(SSH_CONFIG), "-O", "exit", address],
        capture_output=True,
        check=False,
        timeout=10,
    )


def _wait_ssh(host: Host, pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    addressed = not host.image.emulated
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise LabError(
                f"{host.name}: systemd-nspawn exited (see {STATE_DIR}/logs/{host.name}.console)"
            )
        if not addressed:
            addressed = _address_emulated_host(host, pid)
        try:
            with socket.create_connection((host.address, 22), timeout=1):
                pass
        except OSError:
            time.sleep(0.5)
            continue
        probe = subprocess.run(
            ssh_command(host.address, "systemctl", "is-system-running", "--wait"),
            capture_output=True,
            text=True,
            timeout=max(5.0, deadline - time.monotonic()),
            check=False,
        )
        state = probe.stdout.strip()
        if state in ("running", "degraded"):
            if state == "degraded":
                failed = subprocess.run(
                    ssh_command(host.address, "systemctl", "--failed", "--no-legend"),
                    capture_output=True, text=True, timeout=15, check=False,
                )  # fmt: skip
                log.warning("%s booted degraded: %s", host.name, failed.stdout.strip())
            return
        time.sleep(1)
    raise LabError(f"{host.name}: no SSH on {host.address} after {timeout_s:.0f} s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _nspawn_pids() -> dict[int, str]:
    """Our systemd-nspawn processes (pid -> machine dir), also those not in the state file."""
    found: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"systemd-nspawn"):
            continue
        args = [a.decode(errors="replace") for a in argv]
        if "-D" in args:
            directory = args[args.index("-D") + 1]
            if Path(directory).parent == MACHINES and Path(directory).name.startswith(
                MACHINE_PREFIX
            ):
                found[int(proc.name)] = directory
    return found


def _stop(pids: list[int], timeout_s: float = 30.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            log.warning("systemd-nspawn %d ignored SIGTERM; killing it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)


def _cut_power(pids: list[int]) -> None:
    """SIGKILL the init of each container (of systemd-nspawn `pids`), which takes every process
    of the container with it at once; nspawn then exits by itself."""
    for pid in pids:
        for child in _children(pid) or [pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    _stop([p for p in pids if _alive(p)])


def _down_unlocked() -> None:
    pids = _nspawn_pids()
    if pids:  # throwaway hosts: no orderly shutdown (units waiting for their stop timeouts)
        log.info("powering off %d lab host(s)", len(pids))
        _cut_power(list(pids))
    for line in _run("ip", "-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(f"vb-{MACHINE_PREFIX}"):
            _run("ip", "link", "del", name, check=False)
    if _link_exists(BRIDGE):
        _run("ip", "link", "del", BRIDGE)
    if MACHINES.is_dir():
        for directory in MACHINES.glob(f"{MACHINE_PREFIX}*"):
            shutil.rmtree(directory)
    for path in (INVENTORY_DIR, PKI_DIR, STATE_DIR / "hosts", STATE_DIR / "logs"):
        shutil.rmtree(path, ignore_errors=True)
    for path in (STATE_DIR / "state.json", KEY, KEY.with_suffix(".pub"), SSH_CONFIG):
        path.unlink(missing_ok=True)
    shutil.rmtree(CONTROL_DIR, ignore_errors=True)  # masters of gone hosts end on ServerAlive


def down() -> None:
    """Stop every lab host and remove links, bridge, copies and generated files."""
    with _locked():
        _down_unlocked()
    log.info("lab is down")


def _ensure_images(hosts: list[Host]) -> None:
    """Build the images of `hosts` that are not cached, side by side (an emulated build
    spends much of its time in one process at a time)."""
    wanted = sorted({h.image for h in hosts}, key=lambda i: i.name)
    with ThreadPoolExecutor(max(1, len(wanted)), thread_name_prefix="image") as pool:
        for built in [pool.submit(image.ensure, i) for i in wanted]:
            built.result()


def _boot_hosts(
    new: list[Host], everyone: list[Host], state: dict[str, Any], timeout_s: float
) -> None:
    """Copy, boot and wait for the `new` hosts, recording each in the state file as it starts.
    Emulated hosts get four times `timeout_s` to boot."""
    pubkey = KEY.with_suffix(".pub").read_text()
    prefixlen = ipaddress.ip_network(str(state["subnet"])).prefixlen
    recorded = list(state["hosts"])
    pids: dict[str, int] = {}
    MACHINES.mkdir(parents=True, exist_ok=True)
    for host in new:
        _prepare_root(host, everyone, prefixlen, pubkey)
        pids[host.name] = _boot(host)
        state["hosts"] = recorded + [{**asdict(h), "pid": pids.get(h.name)} for h in new]
        (STATE_DIR / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    for host in new:
        _wait_ssh(host, pids[host.name], timeout_s * (4 if host.image.emulated else 1))
        log.info("%s up at %s (machine %s)", host.name, host.address, host.machine)
    addresses = STATE_DIR / "hosts"
    addresses.mkdir(exist_ok=True)
    for host in new:
        (addresses / host.name).write_text(host.address + "\n")


def up(
    topology: Topology | None = None, subnet: str = SUBNET, timeout_s: float = 120.0
) -> list[Host]:
    """Boot the lab (removing whatever a previous run left) and write its inventory."""
    from lab.inventory import write_inventory

    if os.geteuid() != 0:
        raise LabError("the lab needs root (systemd-nspawn, bridges)")
    for tool in ("systemd-nspawn", "ssh", "ssh-keygen", "ip"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} is not installed (make system-deps)")
    bridge_cidr, hosts = plan(topology or Topology(), subnet)
    with _locked():
        _down_unlocked()
        other = _subnet_in_use(subnet)
        if other:
            raise LabError(f"{subnet} is already used by {other}; pass --subnet")
        _ensure_images(hosts)
        described = ", ".join(f"{h.name} ({h.image.name})" for h in hosts)
        log.info("%d host(s): %s", len(hosts), described)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "facefleet-lab", "-f", str(KEY))
        _write_ssh_config()
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", bridge_cidr, "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        state: dict[str, Any] = {"bridge": BRIDGE, "subnet": subnet, "hosts": []}
        _boot_hosts(hosts, hosts, state, timeout_s)
        write_inventory(hosts, KEY, PKI_DIR, INVENTORY_DIR / "hosts.yml")
    return hosts


def add(topology: Topology, timeout_s: float = 120.0, inventory: Path | None = None) -> list[Host]:
    """Boot more hosts into the lab that is up, numbered after those of their kind, and write
    the inventory of all its hosts (to `inventory`, by default the lab's). Their images are
    built before the lab's lock is taken, so a lab in use is not held up by a build. The hosts
    already up keep running; their /etc/hosts do not learn the new names (the lab's tools and
    inventory address hosts by IP)."""
    from lab.inventory import write_inventory

    existing = lab_hosts()
    subnet = json.loads((STATE_DIR / "state.json").read_text())["subnet"]
    _, new = plan(topology, subnet, existing)
    if not new:
        raise LabError(
            "nothing to add (--edges, --arm64-edges, --arm64-opencv-edges, --spare-hosts)"
        )
    _ensure_images(new)
    with _locked():
        state = json.loads((STATE_DIR / "state.json").read_text())
        if [h["name"] for h in state["hosts"]] != [h.name for h in existing]:
            raise LabError("the lab changed while the images were built; run `lab add` again")
        _boot_hosts(new, [*existing, *new], state, timeout_s)
        write_inventory([*existing, *new], KEY, PKI_DIR, inventory or INVENTORY_DIR / "hosts.yml")
    return new


def lab_hosts() -> list[Host]:
    """The hosts of the lab that is up."""
    state = STATE_DIR / "state.json"
    if not state.exists():
        raise LabError("the lab is not up (python -m lab up)")
    return [
        Host(h["name"], h["group"], h["address"], image.Image(**h["image"]))
        for h in json.loads(state.read_text())["hosts"]
    ]


def _host(name: str) -> Host:
    for host in lab_hosts():
        if host.name == name:
            return host
    raise LabError(f"no lab host {name!r}")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def power_off(name: str) -> None:
    """Cut a host's power: SIGKILL its init, which takes every process of the container with
    it at once (no shutdown, no unit stops; what was not written to disk is gone)."""
    host = _host(name)
    pids = [p for p, d in _nspawn_pids().items() if Path(d) == host.directory]
    if not pids:
        raise LabError(f"{name} is not running")
    _close_shared_connection(host.address)
    _cut_power(pids)
    log.info("%s powered off", name)


def power_on(name: str, timeout_s: float = 180.0) -> None:
    """Boot a powered-off host again and wait until it is up."""
    host = _host(name)
    if any(Path(d) == host.directory for d in _nspawn_pids().values()):
        raise LabError(f"{name} is already running")
    veth = f"vb-{host.machine}"[:15]
    if _link_exists(veth):  # left behind when nspawn had no time to clean up
        _run("ip", "link", "del", veth, check=False)
    pid = _boot(host)
    _wait_ssh(host, pid, timeout_s * (4 if host.image.emulated else 1))
    log.info("%s up again at %s", name, host.address)
