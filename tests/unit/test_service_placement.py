"""Which services run on which kind of host is stated once in the contract
(`SERVICES_BY_KIND`) and once on the Ansible side (the facefleet role's
`_facefleet_services_by_group`, which validate.yml and the roles' tasks read); the plays, the
staging play, the facefleet_service role's argument spec and the table of what each service
installs (`_facefleet_service_installs`) list services by name, and must say the same."""

from __future__ import annotations

from typing import Any

import yaml

from facefleet.contract import SERVICES, SERVICES_BY_KIND
from tests.support import ROOT


def load(relative: str) -> Any:
    return yaml.safe_load((ROOT / relative).read_text())


def placement(by_kind: dict[str, Any]) -> dict[str, set[str]]:
    return {kind: set(services) for kind, services in by_kind.items()}


def test_the_role_places_services_as_the_contract_does() -> None:
    role = load("roles/facefleet/vars/main.yml")["_facefleet_services_by_group"]
    assert placement(role) == placement(SERVICES_BY_KIND)


def test_each_play_installs_its_group_s_services() -> None:
    for kind in SERVICES_BY_KIND:
        (play,) = load(f"playbooks/{kind}.yml")
        assert play["hosts"] == f"{kind}:&facefleet_enrolled"  # revoked nodes left out
        roles = {entry["role"] for entry in play["roles"]}
        assert roles & set(SERVICES) == set(SERVICES_BY_KIND[kind]), kind


def test_staging_installs_each_group_s_services() -> None:
    (play,) = load("playbooks/stage.yml")
    staged: dict[str, set[str]] = {}
    for task in play["tasks"]:
        name = task["ansible.builtin.include_role"]["name"]
        services = set(task.get("loop", [name])) & set(SERVICES)
        for kind in SERVICES_BY_KIND:
            if services and f"'{kind}' in group_names" in task.get("when", ""):
                staged.setdefault(kind, set()).update(services)
    assert staged == placement(SERVICES_BY_KIND)


def test_the_service_entry_point_accepts_exactly_the_services() -> None:
    spec = load("roles/facefleet_service/meta/argument_specs.yml")["argument_specs"]["main"]
    assert spec["options"]["facefleet_service_name"]["choices"] == list(SERVICES)


def test_validation_reads_the_role_s_placement() -> None:
    (play, *_) = load("playbooks/validate.yml")
    (validation,) = [task for task in play["tasks"] if "_services" in task.get("vars", {})]
    roles = validation["vars"]["_services"]
    assert "roles/facefleet/vars/main.yml" in roles and "_facefleet_services_by_group" in roles


def test_every_service_says_what_its_virtualenv_needs() -> None:
    """The first service of a host to install a virtualenv installs the extras of every
    service that shares it (`_facefleet_venv_extras`): each service needs an entry."""
    installs = load("roles/facefleet/vars/main.yml")["_facefleet_service_installs"]
    assert set(installs) == set(SERVICES)
    for service, install in installs.items():
        assert set(install) == {"extras", "system_site"}, service
