"""The lab's base images: minimal Debian trees built once with mmdebstrap and cached.

An image is named by its Debian release, CPU architecture and extra packages (`Image`); its
cache directory carries a stamp of exactly that, so a changed package list rebuilds it and an
unchanged one is reused by every later lab (`make test` boots from the cache). mmdebstrap
installs every package in one apt run with eatmydata (no fsync while building a throwaway
tree): on an idle 2-core machine the native image takes under a minute, the arm64 ones, whose
package scripts run under qemu-user emulation, about 2 (bullseye) and 4 minutes (bookworm with
Debian's OpenCV); debootstrap, which configures package by package and syncs each, took 19
and 26 minutes for those two. Every lab host is a copy of one image. The images hold the Debian
packages the roles need (lab hosts cannot reach package mirrors), so the playbook runs against
the lab exactly as it would against freshly installed hosts with a local mirror.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: The Debian release of the x86_64 hosts (cloud and edges).
SUITE = "bookworm"
#: arm64 edges: Debian 11 (Python 3.9, the closest to JetPack 5 reachable here) by default,
#: bookworm (Python 3.11) for a JetPack 6-like host.
ARM64_RELEASES = ("bullseye", "bookworm")
#: What the roles install (mosquitto, python3-venv, python3-apt for the package module) plus
#: what a booted systemd host with SSH needs. Changing it rebuilds the cached images.
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
#: Extra packages of an image flavour: `opencv` is a device whose detector uses the
#: distribution's OpenCV (`detector_opencv: system`), as a JetPack image provides it.
FLAVOURS: dict[str, tuple[str, ...]] = {"": (), "opencv": ("python3-opencv", "opencv-data")}
STAMP = ".facefleet-lab-image"
CACHE = Path(os.environ.get("FACEFLEET_LAB_CACHE", "/var/cache/facefleet-lab"))
MIRROR = os.environ.get("FACEFLEET_LAB_MIRROR", "http://deb.debian.org/debian")
BINFMT = Path("/proc/sys/fs/binfmt_misc")
#: mmdebstrap's own hooks that run dpkg under eatmydata while the tree is built.
EATMYDATA_HOOKS = "/usr/share/mmdebstrap/hooks/eatmydata"


class LabError(Exception):
    """Something the operator has to fix; printed as one line."""


def native_arch() -> str:
    """The Debian name of this machine's architecture."""
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


@dataclass(frozen=True)
class Image:
    """One cached root tree: a Debian release for an architecture, plus a flavour's packages."""

    release: str = SUITE
    arch: str = ""  # "" = this machine's
    flavour: str = ""

    @property
    def architecture(self) -> str:
        return self.arch or native_arch()

    @property
    def name(self) -> str:
        return "-".join(filter(None, (self.release, self.architecture, self.flavour)))

    @property
    def directory(self) -> Path:
        return CACHE / self.name

    @property
    def packages(self) -> tuple[str, ...]:
        return PACKAGES + FLAVOURS[self.flavour]

    @property
    def emulated(self) -> bool:
        return self.architecture != native_arch()

    def stamp(self) -> dict[str, object]:
        return {
            "builder": "mmdebstrap",
            "release": self.release,
            "arch": self.architecture,
            "packages": sorted(self.packages),
        }

    def is_current(self) -> bool:
        try:
            stamp = json.loads((self.directory / STAMP).read_text())
        except (OSError, ValueError):
            return False
        return bool(stamp == self.stamp())


def ensure_emulation(arch: str) -> None:
    """Make sure binaries of `arch` run here: binfmt_misc mounted, qemu's handler registered
    with the fix-binary flag (so it also works inside the containers)."""
    qemu = {"arm64": "aarch64"}.get(arch, arch)
    if shutil.which(f"qemu-{qemu}-static") is None:
        raise LabError(
            f"{arch} hosts need qemu-user-static and binfmt-support"
            " (apt-get install qemu-user-static binfmt-support)"
        )
    if not (BINFMT / "register").exists():
        result = subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise LabError(f"cannot mount binfmt_misc: {result.stderr.strip()}")
    handler = BINFMT / f"qemu-{qemu}"
    if not handler.exists():
        subprocess.run(["update-binfmts", "--enable", f"qemu-{qemu}"], check=False)
    try:
        text = handler.read_text()
    except OSError:
        raise LabError(f"no binfmt handler for {arch} (update-binfmts --enable qemu-{qemu})") from (
            None
        )
    flags = next((line.split()[1] for line in text.splitlines() if line.startswith("flags:")), "")
    if "enabled" not in text or "F" not in flags:
        raise LabError(f"the binfmt handler qemu-{qemu} must be enabled with the F flag: {text!r}")


def finalize(root: Path, image: Image) -> None:
    """Make a freshly built tree a reusable template: no per-host identity, networkd on."""
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
    (root / STAMP).write_text(json.dumps(image.stamp()) + "\n")


def ensure(image: Image) -> Path:
    """The cached image, built when missing or made from another package list. Two labs that
    need the same image at once (a `lab add` beside a `lab up`) build it once: the second
    waits for the first."""
    if image.emulated:
        ensure_emulation(image.architecture)
    if image.is_current():
        log.info("image %s: %s (cached)", image.name, image.directory)
        return image.directory
    if shutil.which("mmdebstrap") is None:
        raise LabError("mmdebstrap is not installed (make system-deps)")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{image.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not image.is_current():
            _build(image)
    return image.directory


def _build(image: Image) -> None:
    partial = image.directory.with_name(image.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    took = "a few minutes, emulated" if image.emulated else "about a minute"
    log.info("building the image %s in %s (%s)", image.name, partial, took)
    started = time.monotonic()
    result = subprocess.run(
        [
            "mmdebstrap",
            "--mode=root",
            "--variant=minbase",
            f"--arch={image.architecture}",
            f"--include={','.join(image.packages)}",
            f"--hook-dir={EATMYDATA_HOOKS}",
            image.release,
            str(partial),
            MIRROR,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
        raise LabError(f"mmdebstrap of {image.name} failed: {' | '.join(tail)}")
    finalize(partial, image)
    shutil.rmtree(image.directory, ignore_errors=True)
    partial.rename(image.directory)
    log.info("image %s built in %.0f s", image.name, time.monotonic() - started)
