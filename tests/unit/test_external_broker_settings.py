"""`facefleet_cloud_broker: external`: the generic recipe in roles/README.md follows the
contract, the inventory reader takes the external broker's endpoint and CA, and
playbooks/validate.yml refuses an external broker it could not verify, in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from facefleet.config import ConfigError
from facefleet.health import inventory_watcher_settings
from facefleet.inventory import load_inventory
from facefleet.localbroker import cloud_acl
from facefleet.pki import ensure_ca, issue
from tests.fleet.test_external_broker import recipe_blocks
from tests.support import ROOT


def test_the_recipes_acl_is_the_contracts() -> None:
    """The ACL block for cloud-a, cloud-b and monitor is what TOPIC_RIGHTS gives."""
    acl = recipe_blocks()["facefleet.acl"]
    assert acl == cloud_acl("facefleet", ("cloud-a", "cloud-b"), ("monitor",))


def inventory(tmp_path: Path, **variables: object) -> Path:
    """cloud-a, cloud-b and edge-a, connected locally (nothing is reached over SSH)."""
    common = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "facefleet_pki_dir": str(tmp_path / "pki"),
    }
    hosts = {
        "cloud": {"cloud-a": "10.0.0.2", "cloud-b": "10.0.0.3"},
        "edge": {"edge-a": "10.0.0.4"},
    }
    children = {
        group: {"hosts": {name: {"ansible_host": address} for name, address in names.items()}}
        for group, names in hosts.items()
    }
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump({"all": {"vars": common | variables, "children": children}}))
    return path


def test_the_monitor_verifies_an_external_broker_by_its_ca(tmp_path: Path) -> None:
    ensure_ca(tmp_path / "pki")
    issue(tmp_path / "pki", "monitor")
    broker_ca = tmp_path / "AmazonRootCA1.pem"
    broker_ca.write_text("-----BEGIN CERTIFICATE-----\n")
    path = inventory(
        tmp_path,
        facefleet_cloud_broker="external",
        facefleet_cloud_broker_host="abc-ats.iot.eu-west-1.amazonaws.com",
        facefleet_cloud_broker_ca_file=str(broker_ca),
    )
    info = load_inventory(path)
    assert info.broker_host == "abc-ats.iot.eu-west-1.amazonaws.com"
    settings = inventory_watcher_settings(info)
    assert settings.ca_file == str(broker_ca)
    assert settings.cert_file == str(tmp_path / "pki" / "monitor.crt")
    path = inventory(tmp_path, facefleet_cloud_broker="external")
    with pytest.raises(ConfigError, match="external needs facefleet_cloud_broker_host and"):
        load_inventory(path)


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    """validate.yml's variable checks (its operator preflight needs the hosts: skipped)."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(path),
         "playbooks/validate.yml", "--skip-tags", "facefleet_preflight"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("variables", "error"),
    [
        ({}, "external needs facefleet_cloud_broker_ca_file, the controller file"),
        ({"facefleet_cloud_broker_ca_file": "/nonexistent/ca.crt"}, "is no PEM CA certificate"),
        (
            {"facefleet_cloud_broker_ca_file": "CA", "facefleet_cloud_broker_names": ["lb"]},
            "facefleet_cloud_broker_names (lb) name the managed broker's certificate",
        ),
        (
            {"facefleet_cloud_broker_ca_file": "CA", "facefleet_cloud_broker_host": "10.0.0.2"},
            "facefleet_cloud_broker_host (10.0.0.2) is a cloud host of the inventory",
        ),
        ({"facefleet_cloud_broker": "clustered"}, "value of facefleet_cloud_broker must be one of"),
    ],
    ids=["no-ca", "ca-not-a-certificate", "broker-names", "broker-on-a-cloud-host", "bad-value"],
)
def test_validate_refuses_an_external_broker_it_could_not_verify(
    tmp_path: Path, variables: dict[str, object], error: str
) -> None:
    ca = tmp_path / "broker-ca.pem"
    ensure_ca(tmp_path / "pki")
    ca.write_bytes((tmp_path / "pki" / "ca.crt").read_bytes())
    settings = {
        "facefleet_cloud_broker": "external",
        "facefleet_cloud_broker_host": "mqtt.example.com",
        **{k: str(ca) if v == "CA" else v for k, v in variables.items()},
    }
    result = validate(inventory(tmp_path, **settings))
    assert result.returncode != 0
    assert error in result.stdout, result.stdout[-3000:]


def test_validate_passes_an_external_broker_with_its_ca(tmp_path: Path) -> None:
    ensure_ca(tmp_path / "pki")
    path = inventory(
        tmp_path,
        facefleet_cloud_broker="external",
        facefleet_cloud_broker_host="mqtt.example.com",
        facefleet_cloud_broker_ca_file=str(tmp_path / "pki" / "ca.crt"),
    )
    result = validate(path)
    assert result.returncode == 0, result.stdout[-3000:]
