"""Certificate lifetimes, renewal and expiry, and one identity on two devices, below the broker:
`facefleet pki` (lifetimes, the renewal window, a CA renewal), the heartbeat's certificate,
instance and takeover fields, and how `fleet status` judges them (issue #15, points 3 and 4)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from facefleet import pki
from facefleet.contract import ForwarderFigures, Status, utc_timestamp
from facefleet.fleet import (
    cert_cell,
    certificates_line,
    evaluate,
    fleet_certificates,
    format_table,
    issued_certificates,
)
from facefleet.health import Heard, certificate_problem, clone_problem, follow
from facefleet.service import certificate_expiry, instance_id, own_instances
from tests.support import ROOT

NOW = 1_800_000_000.0
DAY = 86400.0


def facefleet_pki(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "facefleet", "pki", "--dir", str(directory), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def expiring(directory: Path, name: str, days_left: float) -> pki.Issued:
    """A certificate of `name` (825 days long) that expires in `days_left` days."""
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=825 - days_left)
    return pki.issue(directory, name, not_before=start)


def test_the_role_defaults_are_the_pki_defaults() -> None:
    defaults = yaml.safe_load((ROOT / "roles/facefleet/defaults/main.yml").read_text())
    assert (
        defaults["facefleet_pki_ca_days"],
        defaults["facefleet_pki_ca_renew_days"],
        defaults["facefleet_pki_cert_days"],
        defaults["facefleet_pki_renew_days"],
    ) == (pki.CA_DAYS, pki.CA_RENEW_DAYS, pki.CERT_DAYS, pki.CERT_RENEW_DAYS)
    specs = yaml.safe_load((ROOT / "roles/facefleet/meta/argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    for name in ("ca_days", "ca_renew_days", "cert_days", "renew_days"):
        assert options[f"facefleet_pki_{name}"]["default"] == defaults[f"facefleet_pki_{name}"]


def test_a_certificate_is_reissued_within_its_renewal_window_only(tmp_path: Path) -> None:
    expiring(tmp_path, "cam1", 20)
    assert facefleet_pki(tmp_path, "issue", "cam1", "--renew-days", "10").stdout.endswith("ok\n")
    before = (tmp_path / "cam1.crt").read_bytes()
    renewed = facefleet_pki(tmp_path, "issue", "cam1")  # default window: 30 days
    assert renewed.stdout.endswith("changed\n")
    assert (tmp_path / "cam1.crt").read_bytes() != before
    expires = pki.not_after(tmp_path / "cam1.crt")
    assert expires is not None
    left = expires - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(days=824) < left <= dt.timedelta(days=825)
    assert facefleet_pki(tmp_path, "issue", "cam1").stdout.endswith("ok\n")


@pytest.mark.parametrize(("days", "renew"), [("30", "30"), ("10", "30"), ("825", "0")])
def test_a_window_not_shorter_than_the_lifetime_is_one_line(
    tmp_path: Path, days: str, renew: str
) -> None:
    for action in (["ca"], ["issue", "cam1"]):
        result = facefleet_pki(tmp_path, *action, "--days", days, "--renew-days", renew)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"facefleet pki: config error: a lifetime of {days} days with a renewal window of "
            f"{renew} days: the window must be at least 1 day and shorter than the lifetime"
        ]


def fingerprints(path: Path) -> list[bytes]:
    return [
        c.fingerprint(hashes.SHA256()) for c in x509.load_pem_x509_certificates(path.read_bytes())
    ]


def test_a_ca_is_renewed_in_two_steps_trust_first_then_signing(tmp_path: Path) -> None:
    """100 days left: with a 150-day window the next CA is trusted (step 1), with a 250-day
    window (100 < 125) it signs (step 2), and every certificate is reissued then."""
    old_ca = pki.ensure_ca(tmp_path, days=100, renew_days=30)
    old = fingerprints(old_ca.cert)
    leaf = pki.issue(tmp_path, "cam1").cert.read_bytes()

    assert pki.ensure_ca(tmp_path, renew_days=150).changed
    step1 = fingerprints(old_ca.cert)
    assert len(step1) == 2 and step1[0] == old[0]  # still signing with the old CA
    assert not pki.ensure_ca(tmp_path, renew_days=150).changed
    assert not pki.issue(tmp_path, "cam1").changed

    assert pki.ensure_ca(tmp_path, renew_days=250).changed
    assert fingerprints(old_ca.cert) == [step1[1], old[0]]  # the next CA signs, the old stays
    assert not (tmp_path / "ca-next.key").exists() and not (tmp_path / "ca-next.crt").exists()
    assert pki.issue(tmp_path, "cam1").cert.read_bytes() != leaf
    assert not pki.ensure_ca(tmp_path, renew_days=250).changed


def test_one_run_late_in_the_window_does_both_steps(tmp_path: Path) -> None:
    pki.ensure_ca(tmp_path, days=100, renew_days=30)
    old = fingerprints(tmp_path / "ca.crt")
    assert pki.ensure_ca(tmp_path, renew_days=250).changed
    now = fingerprints(tmp_path / "ca.crt")
    assert len(now) == 2 and now[1] == old[0] and now[0] != old[0]


def test_the_previous_ca_is_dropped_once_it_expired(tmp_path: Path) -> None:
    pki.ensure_ca(tmp_path)
    current = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    previous = expiring(tmp_path / "other", "x", -1)  # any expired certificate
    expired = x509.load_pem_x509_certificate(previous.cert.read_bytes())
    pem = b"".join(c.public_bytes(pki.serialization.Encoding.PEM) for c in (current, expired))
    (tmp_path / "ca.crt").write_bytes(pem)
    assert pki.ensure_ca(tmp_path).changed
    assert len(x509.load_pem_x509_certificates((tmp_path / "ca.crt").read_bytes())) == 1


def test_the_heartbeat_carries_certificate_instance_and_takeovers(tmp_path: Path) -> None:
    leaf = expiring(tmp_path, "cam1", 12)
    expires = certificate_expiry(str(leaf.cert))
    assert expires is not None and expires == utc_timestamp(pki.not_after(leaf.cert))
    assert certificate_expiry(str(tmp_path / "missing.crt")) is None
    boot = tmp_path / "boot_id"
    boot.write_text("0d4c1e2f-aaaa-bbbb-cccc-000000000000\n")
    assert instance_id(str(boot)).startswith("0d4c1e2f-")
    status = Status(
        "online",
        "forwarder",
        "cam1",
        instance="0d4c1e2f-42",
        cert_expires=expires,
        taken_over=3,
        taken_over_at="2026-12-02T06:00:00.000Z",
        figures=ForwarderFigures(spool_depth=3),
    )
    assert Status.decode(status.encode()) == status
    assert b"instance" not in Status("online", "detector", "cam1").encode()  # none: not sent


def test_own_instances_are_kept_beside_the_spool(tmp_path: Path) -> None:
    path = tmp_path / "instances"
    assert own_instances(path, "a-1") == {"a-1"}
    assert own_instances(path, "a-2") == {"a-1", "a-2"}
    for n in range(3, 30):
        kept = own_instances(path, f"b-{n}")
    assert len(kept) == 16 and "b-29" in kept and "a-1" not in kept
    assert own_instances(tmp_path / "no" / "such" / "dir", "c-1") == {"c-1"}  # logged, not fatal


def heartbeat(instance: str, days_left: float | None = 400, **extra: object) -> Status:
    expires = (
        utc_timestamp(dt.datetime.fromtimestamp(NOW + days_left * DAY, dt.timezone.utc))
        if days_left is not None
        else None
    )
    return Status(
        "online",
        "forwarder",
        "cam1",
        ts=utc_timestamp(dt.datetime.fromtimestamp(NOW, dt.timezone.utc)),
        interval_s=10.0,
        instance=instance,
        cert_expires=expires,
        **extra,  # type: ignore[arg-type]
    )


def test_alternating_instances_are_a_clone_a_restart_is_not() -> None:
    heard = None
    for n, instance in enumerate(["a-1", "a-1", "a-2", "a-2"]):  # a restart: a new instance
        heard = follow(heard, heartbeat(instance), NOW + n)
    assert heard is not None and heard.alternated_at is None
    assert clone_problem("cam1", "forwarder", heard, NOW + 10) is None
    for n, instance in enumerate(["b-7", "a-2"]):  # a second device, then the first again
        heard = follow(heard, heartbeat(instance), NOW + 10 + n)
    assert heard.alternated_at == NOW + 11
    assert clone_problem("cam1", "forwarder", heard, NOW + 12) == (
        "two devices use the identity of cam1: forwarder heartbeats alternate between "
        "instances b-7, a-2"
    )
    assert clone_problem("cam1", "forwarder", heard, NOW + 11 + 3600) is None  # an hour later
    # relayed heartbeats (no certificate of their own) are not judged: they may come late
    relayed = None
    for instance in ["a-1", "b-1", "a-1"]:
        relayed = follow(relayed, heartbeat(instance, days_left=None), NOW)
    assert relayed is not None and relayed.alternated_at is None


def test_takeovers_reported_by_the_device_are_a_clone_for_an_hour() -> None:
    taken = heartbeat("a-1", taken_over=2, taken_over_at="2027-01-15T08:00:00.000Z")
    at = dt.datetime(2027, 1, 15, 8, 0, tzinfo=dt.timezone.utc).timestamp()
    assert clone_problem("cam1", "forwarder", Heard(taken, at), at + 60) == (
        "two devices use the identity of cam1: forwarder session taken over 2 time(s), "
        "last at 08:00:00 UTC"
    )
    assert clone_problem("cam1", "forwarder", Heard(taken, at), at + 3601) is None


def test_a_certificate_within_the_window_is_a_problem() -> None:
    assert certificate_problem("forwarder", Heard(heartbeat("a", 31), NOW), NOW, 30) is None
    soon = certificate_problem("forwarder", Heard(heartbeat("a", 12.5), NOW), NOW, 30)
    assert soon is not None and soon.startswith("forwarder certificate expires in 12 days (")
    gone = certificate_problem("forwarder", Heard(heartbeat("a", -1), NOW), NOW, 30)
    assert gone is not None and gone.startswith("forwarder certificate expired on ")
    assert certificate_problem("forwarder", Heard(heartbeat("a", None), NOW), NOW, 30) is None


def test_fleet_status_shows_days_left_and_an_expired_certificate_nobody_presents(
    tmp_path: Path,
) -> None:
    expiring(tmp_path, "cam2", -1)  # expired: the broker refuses cam2, it never reports
    expiring(tmp_path, "cam1", 500)  # the controller's copy; the heartbeat's word wins
    nodes = {"cam1": "edge", "cam2": "edge"}
    issued = issued_certificates(tmp_path, {**nodes, "cam3": "edge"})
    assert set(issued) == {"cam1", "cam2"}
    seen = {
        ("cam1", service): Heard(
            Status(
                "online",
                service,
                "cam1",
                ts=utc_timestamp(dt.datetime.fromtimestamp(NOW, dt.timezone.utc)),
                interval_s=10.0,
                figures=None,
            ),
            NOW,
        )
        for service in ("detector", "logger")
    }
    seen[("cam1", "forwarder")] = Heard(heartbeat("a-1", 20), NOW)
    cam1, cam2 = evaluate(nodes, seen, None, NOW, warn_days=30, issued=issued)
    assert cam1.cert_from == "heartbeat" and cert_cell(cam1) == "20d"
    assert "forwarder certificate expires in 20 days" in "; ".join(cam1.problems)
    assert cam2.cert_from == "pki" and cert_cell(cam2) == "expired*"
    assert cam2.problems[-1].startswith("certificate expired on ")
    assert cam2.problems[-1].endswith(": the broker refuses it")
    assert cam2.as_json()["certificate"]["from"] == "pki"
    table = format_table([cam1, cam2]).splitlines()
    assert table[0].split()[:6] == ["NODE", "KIND", "DETECTOR", "LOGGER", "FORWARDER", "CERT"]


def test_fleet_status_lists_the_fleet_wide_certificates(tmp_path: Path) -> None:
    pki.ensure_ca(tmp_path)
    pki.issue(tmp_path, "broker", server_names=("localhost",))
    expiring(tmp_path, "monitor", 12)
    found = fleet_certificates(tmp_path, "monitor", 30)
    assert [(name, c["renew"]) for name, c in found.items()] == [
        ("ca", False),
        ("broker", False),
        ("monitor", True),
    ]
    assert certificates_line(found) == (
        "certificates: ca 3649d, broker 824d, monitor 11d (renew: run site.yml)"
    )
    assert fleet_certificates(None, "monitor", 30) == {}
