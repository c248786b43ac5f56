"""`facefleet pki revoke / reenrol / decommission / crl / revoked`: the revocation record and
the CRL (read back with cryptography), and one line for every refusal."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from facefleet import pki
from facefleet.cli import main


def facefleet_pki(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`facefleet pki --dir DIRECTORY ARGS...` through the command's entry point, in this
    process (a subprocess per call cost a second each): exit status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    argv = ["pki", "--dir", str(directory), *args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def crl(directory: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl((directory / pki.CRL).read_bytes())


def serial(directory: Path, name: str) -> int:
    return x509.load_pem_x509_certificate((directory / f"{name}.crt").read_bytes()).serial_number


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    for name in ("edge-1", "edge-2", "monitor"):
        pki.issue(tmp_path, name)
    return tmp_path


def test_revoke_records_the_node_and_puts_its_serial_in_a_signed_crl(fleet: Path) -> None:
    number = serial(fleet, "edge-1")
    result = facefleet_pki(fleet, "revoke", "edge-1", "--reason", "key-compromise")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "changed"
    listed = crl(fleet)
    ca = x509.load_pem_x509_certificate((fleet / "ca.crt").read_bytes())
    assert listed.issuer == ca.subject
    assert listed.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert listed.next_update_utc == ca.not_valid_after_utc  # never expires before the CA
    entry = listed.get_revoked_certificate_by_serial_number(number)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.key_compromise
    assert listed.get_revoked_certificate_by_serial_number(serial(fleet, "edge-2")) is None
    state = pki.node_states(fleet)["edge-1"]
    assert (state.state, state.reason, state.abandoned) == ("revoked", "key-compromise", 0)
    listing = json.loads(facefleet_pki(fleet, "revoked", "--json").stdout)
    assert listing == {"edge-1": state.as_json()}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("revoke", "bad/name"), "not a valid identity"),
        (("revoke", "edge-9"), "no certificate for edge-9"),
        (("revoke", "broker"), "not a client identity"),
        (("revoke", "edge-1", "--reason", "stolen"), "invalid choice"),
        (("reenrol", "edge-2"), "edge-2 is not revoked"),
        (("issue", "edge-1"), "edge-1 is revoked (unspecified"),
        (("revoke", "edge-1"), "edge-1 is already revoked (unspecified"),
        (("decommission", "edge-2", "--abandoned", "-1"), "--abandoned must be 0 or more"),
    ],
)
def test_refusals_are_one_line(fleet: Path, args: tuple[str, ...], message: str) -> None:
    assert facefleet_pki(fleet, "revoke", "edge-1").returncode == 0
    before = {p.name: p.read_bytes() for p in fleet.iterdir()}
    result = facefleet_pki(fleet, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 or "invalid choice" in result.stderr  # argparse: usage
    assert {p.name: p.read_bytes() for p in fleet.iterdir()} == before  # nothing changed


def test_commands_on_a_directory_without_a_ca_say_so(tmp_path: Path) -> None:
    result = facefleet_pki(tmp_path / "none", "revoke", "edge-1")
    assert result.returncode == 2
    assert result.stderr.strip().endswith("no fleet CA there")
    assert not (tmp_path / "none").exists()


def test_reenrol_issues_a_new_certificate_and_keeps_the_old_serial_revoked(fleet: Path) -> None:
    old = serial(fleet, "edge-1")
    pki.revoke(fleet, "edge-1", "key-compromise")
    result = facefleet_pki(fleet, "reenrol", "edge-1")
    assert result.returncode == 0, result.stderr
    new = serial(fleet, "edge-1")
    assert new != old
    assert crl(fleet).get_revoked_certificate_by_serial_number(old) is not None
    assert crl(fleet).get_revoked_certificate_by_serial_number(new) is None
    assert pki.node_states(fleet) == {}
    # and it can be revoked again (the replacement stolen too): both serials listed
    pki.revoke(fleet, "edge-1")
    assert {entry.serial_number for entry in crl(fleet)} == {old, new}


def test_decommission_revokes_and_counts_abandoned_faces_once(fleet: Path) -> None:
    result = facefleet_pki(fleet, "decommission", "edge-2", "--abandoned", "4")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "changed"
    state = pki.node_states(fleet)["edge-2"]
    assert (state.state, state.reason, state.abandoned) == (
        "decommissioned",
        "cessation-of-operation",
        4,
    )
    assert crl(fleet).get_revoked_certificate_by_serial_number(serial(fleet, "edge-2"))
    again = facefleet_pki(fleet, "decommission", "edge-2")
    assert again.stdout.splitlines()[-1] == "ok"
    assert pki.node_states(fleet)["edge-2"].abandoned == 4


def test_crl_is_rewritten_only_when_it_changed(fleet: Path) -> None:
    assert facefleet_pki(fleet, "crl").stdout.splitlines()[-1] == "changed"  # the first, empty
    assert list(crl(fleet)) == []
    assert facefleet_pki(fleet, "crl").stdout.splitlines()[-1] == "ok"
    pki.revoke(fleet, "monitor")
    written = (fleet / pki.CRL).read_bytes()
    assert facefleet_pki(fleet, "crl").stdout.splitlines()[-1] == "ok"
    (fleet / pki.CRL).write_text("garbage")
    assert facefleet_pki(fleet, "crl").stdout.splitlines()[-1] == "changed"
    assert {e.serial_number for e in crl(fleet)} == {
        e.serial_number for e in x509.load_pem_x509_crl(written)
    }


def test_a_damaged_record_is_one_line(fleet: Path) -> None:
    (fleet / pki.REVOCATIONS).write_text("{not json")
    result = facefleet_pki(fleet, "revoked")
    assert result.returncode == 2
    assert "revocations.json: unreadable" in result.stderr
    assert result.stderr.count("\n") == 1
