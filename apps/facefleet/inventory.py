"""Expected nodes and the cloud broker connection, taken from an Ansible inventory.

Read by the monitor and by `facefleet fleet status` (one copy, in the facefleet package).

`ansible-inventory -i PATH --list` resolves every inventory format and group/host variable
file; we read its JSON. The variable names are the contract with the Ansible roles:
`facefleet_cloud_broker_host` (default: `ansible_host` of the first host in `cloud`),
`facefleet_cloud_broker_port` (8883), `facefleet_prefix` (facefleet), `facefleet_pki_dir`
(a controller path holding `ca.crt`, `<identity>.crt`, `<identity>.key`; by default the one
`site.yml` makes, see `default_pki_dir`), `facefleet_monitor_identity` (monitor),
`facefleet_pki_renew_days` (30) and `facefleet_pki_ca_renew_days` (90). With
`facefleet_cloud_broker: external` the broker is the operator's: its endpoint is
`facefleet_cloud_broker_host` (required, no default) and its server certificate is verified by
`facefleet_cloud_broker_ca_file` (required) instead of the fleet CA. Expected nodes are the
hosts of the groups `edge` and `cloud`, children included.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facefleet.config import ConfigError
from facefleet.contract import DEFAULT_PREFIX, valid_node
from facefleet.pki import CA_RENEW_DAYS, CERT_RENEW_DAYS

DEFAULT_BROKER_PORT = 8883
DEFAULT_IDENTITY = "monitor"
KINDS = ("edge", "cloud")
_TEMPLATE = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@dataclass(frozen=True)
class InventoryInfo:
    """What the monitor and `fleet status` take from an inventory."""

    nodes: dict[str, str]  # node -> "edge" | "cloud"
    broker_host: str
    broker_port: int
    prefix: str
    identity: str
    pki_dir: Path | None
    #: "facefleet_pki_dir" when the inventory sets it, "default" for `default_pki_dir`
    pki_dir_from: str = "facefleet_pki_dir"
    #: facefleet_pki_renew_days: site.yml renews a certificate this close to its expiry, so
    #: one this close is a problem (the deploy did not run or failed)
    renew_days: int = CERT_RENEW_DAYS
    #: facefleet_pki_ca_renew_days: the same for the CA
    ca_renew_days: int = CA_RENEW_DAYS
    #: facefleet_cloud_broker_ca_file of an external broker: the CA that signed its server
    #: certificate (None: the managed broker, whose certificate the fleet CA signed)
    broker_ca_file: Path | None = None

    def pki_files(self, directory: Path | None = None) -> tuple[Path, Path, Path]:
        """CA, certificate and key of the monitor identity in `directory` (default: the
        inventory's PKI directory); a missing one is a ConfigError that says where to look."""
        directory = directory or self.pki_dir
        if directory is None:
            raise ConfigError(
                "the inventory sets no facefleet_pki_dir and no facefleet checkout (site.yml) "
                "was found around it, in the current directory or beside this facefleet: set "
                "facefleet_pki_dir"
            )
        files = (
            self.broker_ca_file or directory / "ca.crt",
            directory / f"{self.identity}.crt",
            directory / f"{self.identity}.key",
        )
        for path in files:
            if not path.is_file():
                origin = (
                    "set by facefleet_pki_dir"
                    if self.pki_dir_from != "default"
                    else (
                        "the default of site.yml for this inventory; set facefleet_pki_dir if "
                        "yours is elsewhere"
                    )
                )
                raise ConfigError(
                    f"{path}: not found (the fleet PKI is made by site.yml; {directory} is "
                    f"{origin})"
                )
        return files


def find_checkout(inventory: Path) -> Path | None:
    """The facefleet checkout whose site.yml deploys this inventory: the nearest directory
    above the inventory with site.yml and roles/facefleet, else the current directory, else
    the checkout this facefleet package runs from."""
    candidates = [*inventory.resolve().parents, Path.cwd(), Path(__file__).resolve().parents[2]]
    for directory in candidates:
        if (directory / "site.yml").is_file() and (directory / "roles" / "facefleet").is_dir():
            return directory
    return None


def default_pki_dir(inventory: Path) -> Path | None:
    """Where site.yml keeps the PKI when the inventory sets no facefleet_pki_dir: the role
    default `<checkout>/.pki/<inventory directory name>` (roles/facefleet/defaults/main.yml)."""
    checkout = find_checkout(inventory)
    if checkout is None:
        return None
    inventory_dir = inventory if inventory.is_dir() else inventory.parent
    return checkout / ".pki" / inventory_dir.resolve().name


def ansible_inventory_binary() -> str:
    """ansible-inventory on PATH or beside this Python (a virtualenv that was not activated)."""
    found = shutil.which("ansible-inventory")
    if found:
        return found
    beside = Path(sys.executable).parent / "ansible-inventory"
    if beside.exists():
        return str(beside)
    raise ConfigError(
        "--inventory needs ansible-inventory (pip install 'ansible-core>=2.19'); "
        "or give --broker and the certificate options instead"
    )


def run_ansible_inventory(path: Path, timeout_s: float = 60.0) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{path}: inventory not found")
    command = [ansible_inventory_binary(), "-i", str(path), "--list"]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{path}: ansible-inventory did not answer in {timeout_s:.0f}s") from None
    except OSError as exc:
        raise ConfigError(f"cannot run ansible-inventory: {exc.strerror}") from None
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise ConfigError(f"{path}: ansible-inventory failed: {lines[-1] if lines else '?'}")
    try:
        data = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise ConfigError(f"{path}: ansible-inventory printed no JSON") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: unexpected ansible-inventory output")
    return data


def group_hosts(data: dict[str, Any], group: str, _seen: frozenset[str] = frozenset()) -> list[str]:
    """Hosts of a group and of its children, in inventory order, without repeats."""
    entry = data.get(group)
    if not isinstance(entry, dict) or group in _seen:
        return []
    hosts = [str(h) for h in entry.get("hosts", [])]
    for child in entry.get("children", []):
        hosts += group_hosts(data, str(child), _seen | {group})
    return list(dict.fromkeys(hosts))


def _render(value: str, inventory: Path, name: str) -> str:
    """Expand the two magic variables a path may use; anything else needs Ansible itself."""
    base = inventory if inventory.is_dir() else inventory.parent
    known = {"inventory_dir": str(base.resolve()), "playbook_dir": os.getcwd()}

    def replace(match: re.Match[str]) -> str:
        if match.group(1) not in known:
            raise ConfigError(
                f"{inventory}: {name} uses {{{{ {match.group(1)} }}}}, which the monitor cannot "
                "template; use a plain path"
            )
        return known[match.group(1)]

    rendered = _TEMPLATE.sub(replace, value)
    if "{{" in rendered or "{%" in rendered:
        raise ConfigError(f"{inventory}: {name} is a template the monitor cannot render")
    return rendered


def parse_inventory(data: dict[str, Any], inventory: Path) -> InventoryInfo:
    """The fleet as `ansible-inventory --list` describes it."""
    hostvars: dict[str, dict[str, Any]] = data.get("_meta", {}).get("hostvars", {})
    nodes: dict[str, str] = {}
    for kind in KINDS:
        for host in group_hosts(data, kind):
            nodes.setdefault(host, kind)
    cloud = group_hosts(data, "cloud")
    if not nodes:
        raise ConfigError(f"{inventory}: no hosts in the groups 'edge' or 'cloud'")
    bad = [node for node in nodes if not valid_node(node)]
    if bad:
        raise ConfigError(
            f"{inventory}: host name {bad[0]!r} is not a valid node name (letters, digits, "
            "'.', '_' or '-', starting with a letter or digit, at most 63 characters)"
        )
    # Group variables land in every member's hostvars: look on the cloud hosts first.
    order = cloud + [n for n in nodes if n not in cloud]

    def var(name: str) -> Any:
        for host in order:
            value = hostvars.get(host, {}).get(name)
            if value not in (None, ""):
                return value
        return None

    engine = str(var("facefleet_cloud_broker") or "managed")
    if engine not in ("managed", "external"):
        raise ConfigError(
            f"{inventory}: facefleet_cloud_broker is {engine!r}, not 'managed' or 'external'"
        )
    host = var("facefleet_cloud_broker_host")
    broker_ca_file = None
    if engine == "external":
        ca_value = var("facefleet_cloud_broker_ca_file")
        if host is None or ca_value is None:
            raise ConfigError(
                f"{inventory}: facefleet_cloud_broker: external needs facefleet_cloud_broker_host "
                "and facefleet_cloud_broker_ca_file (the broker's endpoint and the CA of its "
                "server certificate)"
            )
        rendered = _render(str(ca_value), inventory, "facefleet_cloud_broker_ca_file")
        broker_ca_file = Path(rendered).expanduser()
    if host is None:
        if not cloud:
            raise ConfigError(
                f"{inventory}: no 'cloud' host and no facefleet_cloud_broker_host: "
                "cannot tell where the broker is"
            )
        host = hostvars.get(cloud[0], {}).get("ansible_host") or cloud[0]
    port_value = var("facefleet_cloud_broker_port") or DEFAULT_BROKER_PORT
    try:
        port = int(port_value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{inventory}: facefleet_cloud_broker_port is not a number: {port_value!r}"
        ) from None
    if not 0 < port < 65536:
        raise ConfigError(f"{inventory}: facefleet_cloud_broker_port out of range: {port}")
    prefix = str(var("facefleet_prefix") or DEFAULT_PREFIX)
    identity = str(var("facefleet_monitor_identity") or DEFAULT_IDENTITY)
    windows = {}
    for name, default in (
        ("facefleet_pki_renew_days", CERT_RENEW_DAYS),
        ("facefleet_pki_ca_renew_days", CA_RENEW_DAYS),
    ):
        value = var(name) or default
        try:
            windows[name] = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{inventory}: {name} is not a number: {value!r}") from None
    pki_value = var("facefleet_pki_dir")
    pki_dir: Path | None
    if pki_value is not None:
        pki_dir = Path(_render(str(pki_value), inventory, "facefleet_pki_dir")).expanduser()
    else:
        pki_dir = default_pki_dir(inventory)
    return InventoryInfo(
        nodes=nodes,
        broker_host=str(host),
        broker_port=port,
        prefix=prefix,
        identity=identity,
        pki_dir=pki_dir,
        pki_dir_from="facefleet_pki_dir" if pki_value is not None else "default",
        renew_days=windows["facefleet_pki_renew_days"],
        ca_renew_days=windows["facefleet_pki_ca_renew_days"],
        broker_ca_file=broker_ca_file,
    )


def load_inventory(path: Path) -> InventoryInfo:
    return parse_inventory(run_ansible_inventory(path), path)
