"""The brokers the demo, the tests and the benchmarks start (facefleet.localbroker) run with the
settings the mosquitto role deploys: the role's templates, rendered with its defaults, and
LocalBroker's configuration agree on everything but paths and logging."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from facefleet.localbroker import BROKER_MAX_OPEN_FILES, LocalBroker
from tests.support import ROOT

ROLE = ROOT / "roles" / "mosquitto"
#: Where files live and where logs go differ by design between a host and a test directory.
PLACE_SPECIFIC = {
    "pid_file", "persistence_location", "log_dest", "log_type", "log_timestamp", "include_dir",
    "listener", "cafile", "crlfile", "certfile", "keyfile", "acl_file", "user",
}  # fmt: skip


def settings(config: str) -> list[tuple[str, str]]:
    pairs = []
    for line in config.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.strip().partition(" ")
            if name not in PLACE_SPECIFIC:
                pairs.append((name, value))
    return sorted(pairs)


def role_config(flavour: str) -> str:
    """mosquitto.conf and the flavour's listener file as the role renders them by default."""
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined)
    environment.filters["comment"] = lambda text: f"# {text}"
    environment.filters["bool"] = lambda value: str(value).lower() in ("true", "yes", "1")
    facts: dict[str, Any] = {
        "ansible_managed": "managed",
        "group_names": [flavour],
        "groups": {"cloud": ["cloud-1"]},
        "facefleet_cloud_broker_port": 8883,
        "facefleet_monitor_identity": "monitor",
        "_facefleet_refused_nodes": {},
        "role_path": str(ROLE),
    }
    variables = {**facts}
    for layer in ("defaults", "vars"):
        variables.update(yaml.safe_load((ROLE / layer / "main.yml").read_text()))

    def resolve(value: Any) -> Any:
        if isinstance(value, str) and "{{" in value:
            return environment.from_string(value).render(variables)
        return value

    for _ in range(3):  # defaults refer to defaults
        variables = {name: resolve(value) for name, value in variables.items()}
    assert variables["mosquitto_flavour"] == flavour
    return "\n".join(
        environment.from_string((ROLE / "templates" / name).read_text()).render(variables)
        for name in ("mosquitto.conf.j2", f"listener-{flavour}.conf.j2")
    )


@pytest.mark.parametrize("flavour", ["edge", "cloud"])
def test_the_local_broker_runs_with_the_settings_the_role_deploys(
    flavour: str, tmp_path: Path
) -> None:
    broker = LocalBroker(flavour, workdir=tmp_path)
    broker.write_config()
    assert settings(broker.config_path.read_text()) == settings(role_config(flavour))
    # the files differ by place, but both brokers have the same ones (the CRL too)
    files = {"cafile", "crlfile", "certfile", "keyfile", "acl_file"}
    named = [
        {
            line.split()[0]
            for line in config.splitlines()
            if line.split()[:1] and line.split()[0] in files
        }
        for config in (broker.config_path.read_text(), role_config(flavour))
    ]
    assert named[0] == named[1] == (files if flavour == "cloud" else set())


def test_the_local_broker_may_hold_as_many_connections_as_the_deployed_one() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert defaults["mosquitto_max_open_files"] == BROKER_MAX_OPEN_FILES
