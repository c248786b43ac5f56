"""Run a real `mosquitto` on a free loopback port: for the demo, the tests and the benchmarks.

Two flavours, mirroring the deployed brokers: `edge` (plain MQTT on loopback, anonymous,
persistent) and `cloud` (TLS only, client certificates required, CN as the username, an ACL
that lets a device write only under its own node). The Ansible role renders the same settings
for real hosts (roles/mosquitto).
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from facefleet import pki
from facefleet.config import ConfigError
from facefleet.contract import TOPIC_FAMILIES, TOPIC_RIGHTS
from facefleet.mqtt import MqttSettings

log = logging.getLogger(__name__)

MONITOR_IDENTITY = "monitor"

#: The deployed brokers' settings (roles/mosquitto's defaults and templates), apart from paths
#: and logging; tests/pipeline/test_broker_config.py renders the role and compares.
BROKER_SETTINGS = (
    ("per_listener_settings", "false"),
    ("persistence", "true"),
    ("autosave_interval", "30"),
    ("max_queued_messages", "100000"),
    ("max_queued_bytes", "0"),
    ("max_inflight_messages", "64"),
    ("max_packet_size", "16777216"),
    ("connection_messages", "true"),
)
#: The deployed broker's open-file limit (the role's LimitNOFILE; each client is one), capped
#: by the hard limit this process may raise it to.
BROKER_MAX_OPEN_FILES = 65536
#: Each flavour's listener settings after `listener PORT ADDRESS` and its files.
LISTENER_SETTINGS = {
    "edge": (("allow_anonymous", "true"),),
    "cloud": (
        ("tls_version", "tlsv1.2"),
        ("require_certificate", "true"),
        ("use_identity_as_username", "true"),
        ("allow_anonymous", "false"),
    ),
}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _raise_open_files(pid: int) -> None:
    """Give the broker process the deployed broker's open-file limit (as far as the hard limit
    allows), as systemd gives the role's unit; set as it starts, before it listens."""
    _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    soft = (
        BROKER_MAX_OPEN_FILES
        if hard == resource.RLIM_INFINITY
        else min(hard, BROKER_MAX_OPEN_FILES)
    )
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))


def cloud_acl(
    prefix: str,
    processors: tuple[str, ...],
    monitors: tuple[str, ...],
    revoked: tuple[str, ...] = (),
) -> str:
    """The cloud broker's ACL from `contract.TOPIC_RIGHTS`. A device's rights are patterns on
    the identity's own name (`%u`), so any device may connect without being listed; patterns
    apply to every identity, so each processor and monitor is denied its own-name topics that
    its kind lacks (mosquitto checks `deny` before any grant). Anything not granted is denied.
    A `revoked` identity (`pki.node_states`) is denied every topic: mosquitto rereads this file
    on SIGHUP, while it reads the CRL only at start."""
    rights = TOPIC_RIGHTS
    device = rights["device"]
    lines = ["# devices (CN = node name): their own topics only"]
    lines += [
        f"pattern {access} {TOPIC_FAMILIES[family].format(prefix=prefix, node='%u')}"
        for access, family, _ in device
    ]
    for kind, names in (("processor", processors), ("monitor", monitors)):
        own = {family for _, family, whose in rights[kind] if whose == "own"}
        for name in names:
            if name in revoked:
                continue
            lines.append(f"user {name}")
            lines += [
                f"topic {access} {TOPIC_FAMILIES[family].format(prefix=prefix, node='+')}"
                for access, family, whose in rights[kind]
                if whose == "any"
            ]
            lines += [
                f"topic deny {TOPIC_FAMILIES[family].format(prefix=prefix, node=name)}"
                for _, family, _ in device
                if family not in own
            ]
    for name in revoked:
        lines += [f"# revoked: {name}", f"user {name}", "topic deny #"]
    return "\n".join(lines) + "\n"


@dataclass
class LocalBroker:
    """One mosquitto process. Use `start()`/`stop()` or as a context manager."""

    flavour: str = "edge"
    workdir: Path | None = None
    port: int = 0
    prefix: str = "facefleet"
    processors: tuple[str, ...] = ("processor",)
    monitors: tuple[str, ...] = (MONITOR_IDENTITY,)
    pki_dir: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _own_dir: bool = field(default=False, init=False)

    host = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.flavour not in ("edge", "cloud"):
            raise ValueError(f"unknown broker flavour {self.flavour!r}")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"facefleet-{self.flavour}-broker-"))
            self._own_dir = True
        if not self.port:
            self.port = free_port()
        if self.flavour == "cloud" and self.pki_dir is None:
            self.pki_dir = self.workdir / "pki"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "mosquitto.log"

    def client_cert(self, identity: str) -> pki.Issued:
        """Certificate and key for a client identity, issued by this broker's CA."""
        assert self.pki_dir is not None
        return pki.issue(self.pki_dir, identity)

    def settings_for(self, identity: str = "") -> MqttSettings:
        """How a client with this identity (a certificate CN; cloud only) reaches the broker."""
        if self.flavour == "edge":
            return MqttSettings(host=self.host, port=self.port)
        cert = self.client_cert(identity)
        return MqttSettings(
            host=self.host,
            port=self.port,
            tls=True,
            ca_file=str(self.ca_file),
            cert_file=str(cert.cert),
            key_file=str(cert.key),
        )

    @property
    def ca_file(self) -> Path:
        assert self.pki_dir is not None
        return self.pki_dir / "ca.crt"

    def write_config(self) -> None:
        assert self.workdir is not None
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        common = [f"{name} {value}" for name, value in BROKER_SETTINGS]
        common += [
            f"persistence_location {data}/",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if os.geteuid() == 0:
            # mosquitto started as root drops to user `mosquitto`, who cannot read our files
            common.append("user root")
        listener = [f"listener {self.port} {self.host}"]
        if self.flavour == "cloud":
            assert self.pki_dir is not None
            server = pki.issue(self.pki_dir, "broker", server_names=("localhost", self.host))
            self.write_acl()
            listener += [
                f"cafile {self.ca_file}",
                f"crlfile {pki.ensure_crl(self.pki_dir).cert}",
                f"certfile {server.cert}",
                f"keyfile {server.key}",
                f"acl_file {self.acl_path}",
            ]
        listener += [f"{name} {value}" for name, value in LISTENER_SETTINGS[self.flavour]]
        self.config_path.write_text("\n".join(common + listener) + "\n")

    @property
    def acl_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "acl"

    def write_acl(self) -> None:
        """The cloud ACL, with the nodes the PKI dir's revocation record refuses."""
        assert self.pki_dir is not None
        revoked = tuple(pki.node_states(self.pki_dir))
        self.acl_path.write_text(cloud_acl(self.prefix, self.processors, self.monitors, revoked))

    def reload(self) -> None:
        """What the role's reload does after a revocation: the ACL (and CRL file) rewritten
        from the PKI dir, then SIGHUP (mosquitto rereads the ACL, keeps every connection)."""
        assert self.process is not None
        assert self.pki_dir is not None
        pki.ensure_crl(self.pki_dir)
        self.write_acl()
        self.process.send_signal(signal.SIGHUP)

    def start(self, timeout_s: float = 10.0) -> LocalBroker:
        binary = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
        )
        if binary is None:
            raise ConfigError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.write_config()
        self.process = subprocess.Popen(
            [binary, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        _raise_open_files(self.process.pid)
        if not wait_for_port(self.host, self.port, timeout_s):
            err = b""
            if self.process.poll() is not None and self.process.stderr is not None:
                err = self.process.stderr.read()
            self.stop()
            raise RuntimeError(
                f"mosquitto ({self.flavour}) did not listen on {self.address}: "
                f"{err.decode(errors='replace').strip()} (log: {self.log_path})"
            )
        log.info("%s broker listening on %s", self.flavour, self.address)
        return self

    def kill(self) -> None:
        """SIGKILL: a crash, for fault tests. Persistence keeps what was saved."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process and self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def restart(self, timeout_s: float = 10.0) -> None:
        self.stop()
        self.start(timeout_s)

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
