"""What an operator types or writes: node names, certificates, the PKI an inventory uses."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from facefleet.config import ConfigError
from facefleet.health import inventory_watcher_settings
from facefleet.inventory import load_inventory
from facefleet.mqtt import MqttSettings, why_unreachable
from facefleet.pki import ensure_ca, issue
from facefleet_monitor.cli import add_arguments
from facefleet_monitor.config import config_from_args
from tests.helpers import refused_port
from tests.support import ROOT


def facefleet(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "facefleet", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


@pytest.mark.parametrize("name", ["bad/name", ".hidden", "a b", "x" * 64, "café"])
def test_pki_refuses_names_that_are_not_node_names(tmp_path: Path, name: str) -> None:
    result = facefleet("pki", "--dir", str(tmp_path), "issue", name)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "not a valid identity" in result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == []  # nothing made, not even the CA
    with pytest.raises(ConfigError):
        issue(tmp_path, name)


def test_inventory_host_names_must_be_node_names(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yml"
    path.write_text("all:\n  children:\n    cloud:\n      hosts:\n        'cloud 1': {}\n")
    with pytest.raises(ConfigError, match="host name 'cloud 1' is not a valid node name"):
        load_inventory(path)


def monitor_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_a_copy_of_the_example_inventory_finds_the_pki_site_yml_makes(tmp_path: Path) -> None:
    """README: `cp -r inventory/example inventory/mine`, site.yml, then the monitor and fleet
    status with that inventory. site.yml's default PKI directory for it is
    <checkout>/.pki/mine (roles/facefleet/defaults/main.yml); both tools must use it."""
    checkout = tmp_path / "checkout"
    (checkout / "roles" / "facefleet").mkdir(parents=True)
    shutil.copy(ROOT / "site.yml", checkout / "site.yml")
    shutil.copytree(ROOT / "inventory" / "example", checkout / "inventory" / "mine")
    inventory = checkout / "inventory" / "mine" / "hosts.yml"
    info = load_inventory(inventory)
    assert info.pki_dir == checkout / ".pki" / "mine"
    # before site.yml ran: one line that says who makes it
    with pytest.raises(ConfigError, match=r"\.pki/mine/ca\.crt: not found \(the fleet PKI is made"):
        config_from_args(monitor_args("--inventory", str(inventory)))
    ensure_ca(checkout / ".pki" / "mine")
    issue(checkout / ".pki" / "mine", "monitor")
    config = config_from_args(monitor_args("--inventory", str(inventory)))
    assert config.mqtt.tls
    assert config.mqtt.cert_file == str(checkout / ".pki" / "mine" / "monitor.crt")
    assert config.mqtt.host == "mqtt.facefleet.example.com"
    settings = inventory_watcher_settings(info, None)
    assert settings.key_file == str(checkout / ".pki" / "mine" / "monitor.key")


def test_the_role_default_is_the_rule_the_tools_follow() -> None:
    """One fact in two places: the role's default and default_pki_dir must agree."""
    defaults = (ROOT / "roles" / "facefleet" / "defaults" / "main.yml").read_text()
    assert (
        'facefleet_pki_dir: "{{ playbook_dir | dirname }}/.pki/{{ inventory_dir | basename }}"'
        in defaults
    )


def test_why_unreachable_names_a_refused_port() -> None:
    port = refused_port()
    assert why_unreachable(MqttSettings(host="127.0.0.1", port=port)) == "connection refused"


def test_pki_dir_that_is_a_file_and_a_model_that_is_not_one(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = facefleet("pki", "--dir", str(tmp_path / "file"), "ca")
    assert (result.returncode, result.stderr) == (
        2,
        f"facefleet pki: config error: --dir {tmp_path / 'file'}: not a directory\n",
    )
    (tmp_path / "model.onnx").write_text("not a model")
    (tmp_path / "face.png").write_bytes(b"")
    result = facefleet("detect", "--model", str(tmp_path / "model.onnx"), str(tmp_path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "cannot load the YuNet model: " in result.stderr
    assert "OpenCV(" not in result.stderr and ".cpp:" not in result.stderr  # no source location
