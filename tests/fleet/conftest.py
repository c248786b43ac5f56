"""One fleet lab for every lab suite of a test run: booted once, deployed once (and once more,
which must change nothing, beside the first suite's read-only checks), restored between suites,
always torn down.

Needs root and systemd-nspawn. Outside CI the tests skip with the reason when the machine
cannot host the lab; under CI=true they must run. `python -m lab up` removes any lab that is
already running (the developer's `make lab` included) before it starts its own;
FACEFLEET_LAB_REUSE=1 runs the tests against the lab that is up and leaves it running;
FACEFLEET_LAB_DEPLOYS=N overrides how often the fixture deploys (0 with a lab already
deployed, to iterate on a test; the deploy tests then fail, as they should); the last of
them runs in the background until a suite that changes the lab starts (see `known_state`).

The suites run in the order of SUITES: the read-only checks of the deployment first, the
rollout (which leaves the edges on another release) late, and the deploy-docs test (a fleet
of its own on the spare hosts, deployed beside the fault suite) and the external-broker test
(another, on the other spare hosts, deployed after it beside the fault suite) last. The
emulated arm64 edges join the lab in the background (built, booted and deployed while the
first suites run) and are part of it from the first suite that sets WITH_THE_ARM64_EDGES.
Each suite's duration, the boot and the deploys go to build/lab-timings.json and are printed
at the end.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab.fleet import SPARE_GROUP, lab_hosts

from tests.fleet.fleetlab import (
    ALL_AT_ONCE,
    INVENTORY,
    Lab,
    deploy,
    inventory_hosts,
    lab_unavailable,
    run_lab,
    snapshot_sources,
)
from tests.helpers import IN_CI
from tests.support import ROOT

REPORT = ROOT / "build" / "fleet-report.json"
TIMINGS = ROOT / "build" / "lab-timings.json"
#: The lab's hosts: the cloud host, four x86_64 edges (the fault suite streams on the first two,
#: the rollout uses all) and six spare hosts; then the emulated arm64 edges (fleetlab's
#: ARM64_EDGES), added while the rest deploys, and part of the lab from test_jetson on.
#: FACEFLEET_LAB_ARM64=0 leaves them and test_jetson out (a quicker run on a machine without
#: qemu-user; not under CI=true).
WITH_ARM64 = IN_CI or os.environ.get("FACEFLEET_LAB_ARM64", "1") != "0"
TOPOLOGY = ("--edges", "4", "--spare-hosts", "6")
#: test_deploy_docs deploys a fleet of its own on the first two spare hosts, beside test_faults
#: (its STARTS_BESIDE), and checks it late; test_external_broker one on the other four (an
#: external Mosquitto, two cloud hosts, an edge), beside test_faults too once the README's
#: deploy is done, and checks it last. test_jetson comes after test_faults, so that the
#: arm64 edges have the time of test_fleet and test_faults to build, boot and deploy.
SUITES = (
    "test_fleet",
    "test_faults",
    "test_jetson",
    "test_rollout",
    "test_deploy_docs",
    "test_external_broker",
)


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    """test_jetson needs the arm64 edges, which FACEFLEET_LAB_ARM64=0 leaves out."""
    return True if collection_path.name == "test_jetson.py" and not WITH_ARM64 else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Lab suites in the order of SUITES (the rest of the run keeps its order, before them)."""

    def rank(item: pytest.Item) -> int:
        if item.path.parent.name != "fleet":
            return 0
        name = item.path.stem
        return SUITES.index(name) + 1 if name in SUITES else len(SUITES) + 1

    items.sort(key=rank)


class Timings:
    """Seconds spent on each part of the lab run, in order."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float]] = []

    def add(self, what: str, seconds: float) -> None:
        self.rows.append((what, round(seconds, 1)))

    def write(self) -> None:
        TIMINGS.parent.mkdir(exist_ok=True)
        TIMINGS.write_text(json.dumps(dict(self.rows), indent=2) + "\n")
        width = max(len(what) for what, _ in self.rows)
        print("\nlab timings:")
        for what, seconds in self.rows:
            print(f"  {what:<{width}}  {seconds:7.1f} s")


@pytest.fixture(scope="session")
def lab_timings() -> Timings:
    return Timings()


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory, lab_timings: Timings) -> Iterator[Lab]:
    """The lab, up and deployed twice (the second deploy must change nothing)."""
    reason = lab_unavailable()
    if reason:
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    reuse = os.environ.get("FACEFLEET_LAB_REUSE") == "1" and INVENTORY.exists()
    try:
        if not reuse:
            started = time.monotonic()
            up = run_lab("up", *TOPOLOGY, timeout=3600)
            if up.returncode != 0:
                pytest.fail(f"lab up failed: {up.stderr.strip()[-2000:]}")
            lab_timings.add("lab up", time.monotonic() - started)
        hosts, groups = inventory_hosts(INVENTORY)
        source = snapshot_sources(tmp_path_factory.mktemp("facefleet-source"))
        booted = lab_hosts()
        spares = {h.name: h.address for h in booted if h.group == SPARE_GROUP}
        emulated = {h.name for h in booted if h.image.emulated}
        the_lab = Lab(hosts, groups, source, spares=spares, emulated=emulated)
        first_deployed = threading.Event()
        if WITH_ARM64 and not reuse:
            the_lab.start_arm64_join(first_deployed)
        deploys = int(os.environ.get("FACEFLEET_LAB_DEPLOYS", "2"))
        try:
            for _ in range(deploys - 1):
                the_lab.deploys.append(deploy(source, **ALL_AT_ONCE))
                lab_timings.add(f"deploy {len(the_lab.deploys)}", the_lab.deploys[-1].seconds)
                if the_lab.deploys[-1].returncode != 0:
                    break
            else:
                if deploys > 0:
                    the_lab.deploy_beside()  # the last one, which must change nothing
        finally:
            first_deployed.set()
        yield the_lab
        the_lab.settle()
        if the_lab.joining is not None:  # no suite asked for the arm64 edges: wait for them
            the_lab.joining.exception()
        for started in the_lab.beside.values():  # work a later suite did not collect
            started.exception()  # waits for it, before the lab goes down under it
        the_lab.report["deploy_s"] = [round(d.seconds, 1) for d in the_lab.deploys]
        REPORT.parent.mkdir(exist_ok=True)
        REPORT.write_text(json.dumps(the_lab.report, indent=2) + "\n")
        print(f"\nlab report ({REPORT}):\n{json.dumps(the_lab.report, indent=2)}")
    finally:
        if not reuse:
            started = time.monotonic()
            down = run_lab("down", timeout=300)
            if down.returncode != 0:
                print(f"lab down failed: {down.stderr}", file=sys.stderr)
            lab_timings.add("lab down", time.monotonic() - started)
        if lab_timings.rows:
            lab_timings.write()


@pytest.fixture(scope="module", autouse=True)
def known_state(request: pytest.FixtureRequest, lab: Lab, lab_timings: Timings) -> Iterator[None]:
    """Times each lab suite, and after it puts the lab back into the deployed state. Only a
    suite that says it only looks (BESIDE_THE_LAST_DEPLOY) starts before the last deploy of
    the lab has finished. A later suite whose STARTS_BESIDE names this one gets its
    `start_beside(lab)` called now, into `lab.beside`: work on hosts of its own that can use
    the time this suite spends waiting."""
    if not getattr(request.module, "BESIDE_THE_LAST_DEPLOY", False):
        settle(lab, lab_timings)
    if getattr(request.module, "WITH_THE_ARM64_EDGES", False):
        join_arm64(lab, lab_timings)
    suite = request.module.__name__.rsplit(".", 1)[-1]
    for module in {item.module for item in request.session.items if item.module is not None}:
        later = module.__name__.rsplit(".", 1)[-1]
        if getattr(module, "STARTS_BESIDE", None) == suite and later not in lab.beside:
            lab.beside[later] = module.start_beside(lab)
    started = time.monotonic()
    yield
    settle(lab, lab_timings)
    lab.restore()
    lab_timings.add(suite, time.monotonic() - started)


@pytest.fixture
def settled(lab: Lab, lab_timings: Timings) -> Lab:
    """The lab once its last deploy has finished (a suite beside it asks for this)."""
    settle(lab, lab_timings)
    return lab


def join_arm64(lab: Lab, lab_timings: Timings) -> None:
    """Wait for the arm64 edges (`Lab.start_arm64_join`) and time their steps."""
    if lab.joining is None:
        return
    started = time.monotonic()
    joined = lab.join_arm64()
    lab_timings.add("waited for the arm64 edges", time.monotonic() - started)
    if joined is not None:
        for step, seconds in joined.seconds.items():
            lab_timings.add(f"arm64 edges: {step} (beside)", seconds)
        lab.report["arm64_join_s"] = {k: round(v, 1) for k, v in joined.seconds.items()}


def settle(lab: Lab, lab_timings: Timings) -> None:
    """Wait for the deploy running in the background, and time it."""
    if lab.pending is not None:
        lab.settle()
        lab_timings.add(f"deploy {len(lab.deploys)} (beside)", lab.deploys[-1].seconds)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        the_lab = getattr(item, "funcargs", {}).get("lab")
        if isinstance(the_lab, Lab):
            report.sections.append(("journalctl of the lab units", the_lab.journals()))
    return report
