"""The lab's base image: a minimal Debian 12 tree built once with debootstrap and cached.

Building takes about a minute and 350 MB; every lab host is a copy of it. The image holds the
Debian packages the roles need (lab hosts cannot reach package mirrors), so the playbook runs
against the lab exactly as it would against freshly installed hosts with a local mirror.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

SUITE = "bookworm"
#: What the roles install (mosquitto, python3-venv, python3-apt for the package module) plus
#: what a booted systemd host with SSH needs. Changing it rebuilds the cached image.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "python3-venv",
    "python3-pip",
    "python3-apt",
    "iproute2",
    "ca-certificates",
    "mosquitto",
    "openssl",
    "procps",
    "libstdc++6",
    "zlib1g",
)
STAMP = ".facefleet-lab-image"
CACHE = Path(os.environ.get("FACEFLEET_LAB_CACHE", "/var/cache/facefleet-lab"))
MIRROR = os.environ.get("FACEFLEET_LAB_MIRROR", "http://deb.debian.org/debian")


class LabError(Exception):
    """Something the operator has to fix; printed as one line."""


def base_dir() -> Path:
    return CACHE / f"{SUITE}-base"


def _wanted_stamp() -> dict[str, object]:
    return {"suite": SUITE, "packages": sorted(PACKAGES)}


def is_current(path: Path) -> bool:
    try:
        stamp = json.loads((path / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return bool(stamp == _wanted_stamp())


def finalize(root: Path) -> None:
    """Make a debootstrapped tree a reusable template: no per-host identity, networkd on."""
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.is_symlink() or dbus_id.exists():
        dbus_id.unlink()
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    wants = {
        "multi-user.target.wants": "systemd-networkd.service",
        "sockets.target.wants": "systemd-networkd.socket",
        "network-online.target.wants": "systemd-networkd-wait-online.service",
    }
    for target, unit in wants.items():
        link = root / "etc/systemd/system" / target / unit
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(f"/lib/systemd/system/{unit}")
    # no console login prompts in the log; SSH is the way in
    getty = root / "etc/systemd/system/console-getty.service"
    if not getty.is_symlink():
        getty.symlink_to("/dev/null")
    (root / STAMP).write_text(json.dumps(_wanted_stamp()) + "\n")


def ensure_base() -> Path:
    """The cached base image, built when missing or made from another package list."""
    base = base_dir()
    if is_current(base):
        log.info("base image: %s (cached)", base)
        return base
    if shutil.which("debootstrap") is None:
        raise LabError("debootstrap is not installed (apt-get install debootstrap)")
    partial = base.with_name(base.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    log.info("building the base image in %s (about a minute)", partial)
    result = subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(partial),
            MIRROR,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
        raise LabError(f"debootstrap failed: {' | '.join(tail)}")
    finalize(partial)
    shutil.rmtree(base, ignore_errors=True)
    partial.rename(base)
    return base
