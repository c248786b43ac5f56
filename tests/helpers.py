"""Helpers of the tests alone: shared data or a skip, `facefleet fleet status` as a process, an
operator's inventory, a refused port. What the benchmarks use too is in `tests.support`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from facefleet.localbroker import LocalBroker
from facefleet.shared import shared_dir

IN_CI = os.environ.get("CI", "").lower() == "true"


def require_shared(*relative: str) -> Path:
    """The shared path, or skip (fail under CI=true, where the data must be present)."""
    path = shared_dir().joinpath(*relative)
    if not path.exists():
        message = f"shared data missing: {path} (set FACEFLEET_SHARED)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def fleet_status(inventory: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """`facefleet fleet status --inventory INVENTORY [options]` as a real process."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "facefleet",
            "fleet",
            "status",
            "--inventory",
            str(inventory),
            *list(options),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def cloud_inventory(cloud_broker: LocalBroker, path: Path) -> Path:
    """An inventory naming `cloud_broker` and its PKI (edges cam1, cam2; cloud host cloud1),
    as an operator's would for `fleet status` or the monitor."""
    cloud_broker.settings_for("monitor")  # issues monitor.crt/key in the broker's PKI dir
    path.write_text(
        textwrap.dedent(f"""
        all:
          vars:
            facefleet_cloud_broker_host: 127.0.0.1
            facefleet_cloud_broker_port: {cloud_broker.port}
            facefleet_pki_dir: {cloud_broker.pki_dir}
          children:
            edge:
              hosts:
                cam1: {{}}
                cam2: {{}}
            cloud:
              hosts:
                cloud1: {{ansible_host: 127.0.0.1}}
        """)
    )
    return path


def refused_port() -> int:
    """A loopback port nobody listens on (bound, then closed): connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
