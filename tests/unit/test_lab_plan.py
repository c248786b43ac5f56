"""The lab's plan of hosts (`python -m lab up`) and the inventory written for it."""

from __future__ import annotations

from pathlib import Path

import pytest
from lab.fleet import SPARE_GROUP, Topology, plan
from lab.image import LabError
from lab.inventory import inventory


def test_spare_hosts_boot_beside_the_fleet_but_stay_out_of_its_inventory() -> None:
    bridge, hosts = plan(Topology(edges=2, spare_hosts=2), "10.99.0.0/24")
    assert bridge == "10.99.0.1/24"
    assert [(h.name, h.group, h.address) for h in hosts] == [
        ("cloud-1", "cloud", "10.99.0.10"),
        ("edge-1", "edge", "10.99.0.21"),
        ("edge-2", "edge", "10.99.0.22"),
        ("spare-1", SPARE_GROUP, "10.99.0.101"),
        ("spare-2", SPARE_GROUP, "10.99.0.102"),
    ]
    groups = inventory(hosts, Path("/key"), Path("/pki"))["all"]["children"]
    listed = {name for group in groups.values() for name in group["hosts"]}
    assert listed == {"cloud-1", "edge-1", "edge-2"}


@pytest.mark.parametrize(
    ("topology", "message"),
    [
        (Topology(spare_hosts=11), "--spare-hosts must be 0..10"),
        (Topology(edges=0), "--edges must be 1..30"),
        (Topology(arm64_edges=6, arm64_opencv_edges=5), "must add up to 0..10"),
    ],
)
def test_a_topology_out_of_range_is_refused_in_one_line(topology: Topology, message: str) -> None:
    with pytest.raises(LabError, match=message):
        plan(topology, "10.99.0.0/24")


def test_hosts_added_to_a_lab_are_numbered_after_those_of_their_kind() -> None:
    _, existing = plan(Topology(edges=2, arm64_edges=1), "10.99.0.0/24")
    _, added = plan(
        Topology(edges=1, arm64_edges=1, arm64_opencv_edges=1), "10.99.0.0/24", existing
    )
    assert [(h.name, h.address, h.image.name) for h in added] == [
        ("edge-3", "10.99.0.23", "bookworm-amd64"),
        ("jetson-2", "10.99.0.62", "bullseye-arm64"),
        ("jetson-cv-1", "10.99.0.81", "bookworm-arm64-opencv"),
    ]
    with pytest.raises(LabError, match=r"must add up to 0\.\.10"):
        plan(Topology(edges=0, arm64_edges=10), "10.99.0.0/24", existing)
