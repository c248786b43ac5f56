"""A small fleet CA: one CA key and certificate, and per-identity keys and certificates.

Used by the demo, the tests and the Ansible playbooks (on the controller). Idempotent: a
certificate is (re)issued only when missing, expiring within `renew_days`, or not signed by the
current CA; `facefleet pki` prints `changed` or `ok` as its last line so Ansible can report it.
The CN of a client certificate is its identity (the node name; Mosquitto's
`use_identity_as_username` turns it into the username the ACL sees).

Revocation: `revoke` records a node in `revocations.json` (the node's state, and the serial of
its certificate) and rewrites `crl.pem`. The cloud broker refuses a revoked node twice over: its
ACL denies the name everything (Mosquitto rereads the ACL on SIGHUP, so this is at once and
without dropping anyone), and the CRL refuses its certificate at the TLS handshake (Mosquitto
2.0 reads the CRL only when it starts). `reenrol` lifts a name's revocation and issues a new
certificate for a replacement device; the old serial stays in the CRL.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from facefleet.config import ConfigError
from facefleet.contract import valid_node

CA_NAME = "facefleet fleet CA"
#: The record of revoked and decommissioned nodes, and the CRL made from it, in the PKI dir.
REVOCATIONS = "revocations.json"
CRL = "crl.pem"
#: Names in the PKI dir that are not client identities.
NOT_CLIENTS = ("ca", "broker")
#: `--reason` values: RFC 5280 CRL reason codes, in kebab case.
REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "privilege-withdrawn": x509.ReasonFlags.privilege_withdrawn,
}


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path
    changed: bool


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _fresh(cert: x509.Certificate | None, renew_days: int) -> bool:
    return cert is not None and cert.not_valid_after_utc - _now() > dt.timedelta(days=renew_days)


def ensure_ca(directory: Path, *, days: int = 3650, renew_days: int = 90) -> Issued:
    """The CA in `directory` (ca.crt, ca.key), made when missing or about to expire."""
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    if _fresh(_load_cert(cert_path), renew_days) and key_path.exists():
        return Issued(cert_path, key_path, changed=False)
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(cert_path, key_path, changed=True)


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def issue(
    directory: Path,
    name: str,
    *,
    server_names: tuple[str, ...] = (),
    days: int = 825,
    renew_days: int = 30,
    not_before: dt.datetime | None = None,
) -> Issued:
    """Certificate and key for `name` in `directory` (`<name>.crt`, `<name>.key`).

    With `server_names` it is a server certificate (DNS names or IP addresses as SANs);
    otherwise a client certificate with CN = name. `days` may be negative for tests that need
    an expired certificate. `name` becomes a file name and a certificate CN (the MQTT username
    the broker's ACL sees), so it must be a valid node name.
    """
    _check_name(name)
    revoked = node_states(directory).get(name)
    if revoked is not None:
        raise ConfigError(
            f"{name} is {revoked.state} ({revoked.reason}, {revoked.since}): no certificate is "
            f"issued for it; 'facefleet pki reenrol {name}' enrols a replacement device"
        )
    ca = ensure_ca(directory)
    ca_cert = _load_cert(ca.cert)
    assert ca_cert is not None
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    current = _load_cert(cert_path)
    if (
        not_before is None
        and current is not None
        and _fresh(current, renew_days)
        and _signed_by(current, ca_cert)
        and key_path.exists()
    ):
        return Issued(cert_path, key_path, changed=False)
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = _new_key()
    start = not_before or _now() - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if server_names:
        sans: list[x509.GeneralName] = []
        for entry in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(entry)))
            except ValueError:
                sans.append(x509.DNSName(entry))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        usage = ExtendedKeyUsageOID.SERVER_AUTH
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(cert_path, key_path, changed=True)


def _check_name(name: str) -> None:
    if not valid_node(name):
        raise ConfigError(
            f"{name!r} is not a valid identity: letters, digits, '.', '_' or '-', starting "
            "with a letter or digit, at most 63 characters (the node-name rule)"
        )


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename: a reader (the deploy, the
    monitor) sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass(frozen=True)
class NodeState:
    """Why a node's name is refused: `revoked` or `decommissioned` (its spool drained, or
    `abandoned` faces left on it), since when and for what reason."""

    state: str
    since: str
    reason: str
    abandoned: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "since": self.since,
            "reason": self.reason,
            "abandoned": self.abandoned,
        }


def _load_record(directory: Path) -> dict[str, Any]:
    path = directory / REVOCATIONS
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return {"certificates": [], "nodes": {}}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc})") from None
    if not isinstance(record, dict) or not {"certificates", "nodes"} <= record.keys():
        raise ConfigError(f"{path}: not a facefleet revocation record")
    return record


def _save_record(directory: Path, record: dict[str, Any]) -> None:
    _write_atomic(directory / REVOCATIONS, (json.dumps(record, indent=2) + "\n").encode())


def node_states(directory: Path) -> dict[str, NodeState]:
    """The nodes whose names are refused (revoked or decommissioned), by name; `{}` when
    nothing was ever revoked. Read by the deploy (the ACL), `fleet status` and the monitor."""
    return {name: NodeState(**entry) for name, entry in _load_record(directory)["nodes"].items()}


def _timestamp() -> str:
    return _now().strftime("%Y-%m-%dT%H:%M:%SZ")


def revoke(directory: Path, name: str, reason: str = "unspecified") -> int:
    """Revoke `name`: record it and the serial of its certificate, rewrite the CRL. Returns the
    serial. Refuses a name that is no client identity of this PKI or is revoked already."""
    _check_name(name)
    if name in NOT_CLIENTS:
        raise ConfigError(f"{name!r} is not a client identity (the CA and the broker are not)")
    if reason not in REASONS:
        raise ConfigError(f"unknown reason {reason!r}: one of {', '.join(REASONS)}")
    record = _load_record(directory)
    current = record["nodes"].get(name)
    if current is not None:
        raise ConfigError(
            f"{name} is already {current['state']} ({current['reason']}, {current['since']})"
        )
    cert = _load_cert(directory / f"{name}.crt")
    if cert is None:
        raise ConfigError(
            f"no certificate for {name} in {directory}: not an identity of this fleet"
        )
    now = _timestamp()
    record["certificates"].append(
        {"serial": cert.serial_number, "node": name, "revoked_at": now, "reason": reason}
    )
    record["nodes"][name] = {"state": "revoked", "since": now, "reason": reason, "abandoned": 0}
    _save_record(directory, record)
    ensure_crl(directory)
    return cert.serial_number


def decommission(directory: Path, name: str, abandoned: int = 0) -> bool:
    """Record `name` as decommissioned (revoking it first when it is not yet), with the number
    of faces `abandoned` on it. False when it was decommissioned already."""
    if abandoned < 0:
        raise ConfigError("--abandoned must be 0 or more")
    state = node_states(directory).get(name)
    if state is not None and state.state == "decommissioned":
        return False
    if state is None:
        revoke(directory, name, "cessation-of-operation")
    record = _load_record(directory)
    entry = record["nodes"][name]
    entry.update(state="decommissioned", since=_timestamp(), abandoned=abandoned)
    _save_record(directory, record)
    return True


def reenrol(directory: Path, name: str, *, days: int = 825) -> Issued:
    """Lift the revocation of `name` and issue a new key and certificate (a replacement device
    under the same name); the old certificate's serial stays in the CRL."""
    _check_name(name)
    record = _load_record(directory)
    if name not in record["nodes"]:
        raise ConfigError(f"{name} is not revoked: nothing to re-enrol")
    del record["nodes"][name]
    for stale in (directory / f"{name}.crt", directory / f"{name}.key"):
        stale.unlink(missing_ok=True)
    _save_record(directory, record)
    ensure_crl(directory)
    return issue(directory, name, days=days)


def ensure_crl(directory: Path) -> Issued:
    """`crl.pem`: every revoked serial of the record, signed by the current CA; rewritten when
    missing, different or signed by another CA. Its nextUpdate is the CA's expiry: OpenSSL
    refuses every client once a CRL is past its nextUpdate, and a fleet's broker must not
    depend on a deploy having run recently."""
    ca = ensure_ca(directory)
    ca_cert = _load_cert(ca.cert)
    assert ca_cert is not None
    path = directory / CRL
    entries = _load_record(directory)["certificates"]
    wanted = {int(entry["serial"]) for entry in entries}
    ca_public = ca_cert.public_key()
    assert isinstance(ca_public, ec.EllipticCurvePublicKey)
    try:
        current: x509.CertificateRevocationList | None = x509.load_pem_x509_crl(path.read_bytes())
    except (OSError, ValueError):
        current = None
    if (
        current is not None
        and current.issuer == ca_cert.subject
        and current.is_signature_valid(ca_public)
        and current.next_update_utc == ca_cert.not_valid_after_utc
        and {revoked.serial_number for revoked in current} == wanted
    ):
        return Issued(path, ca.key, changed=False)
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(_now() - dt.timedelta(minutes=5))
        .next_update(ca_cert.not_valid_after_utc)
    )
    for entry in entries:
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(int(entry["serial"]))
            .revocation_date(dt.datetime.fromisoformat(entry["revoked_at"].replace("Z", "+00:00")))
        )
        if entry["reason"] != "unspecified":
            revoked = revoked.add_extension(
                x509.CRLReason(REASONS[entry["reason"]]), critical=False
            )
        builder = builder.add_revoked_certificate(revoked.build())
    crl = builder.sign(ca_key, hashes.SHA256())
    _write_atomic(path, crl.public_bytes(serialization.Encoding.PEM))
    return Issued(path, ca.key, changed=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", required=True, type=Path, help="where the CA and certs live")
    sub = parser.add_subparsers(dest="pki_command", required=True, metavar="ACTION")
    sub.add_parser("ca", help="create the CA when missing or expiring")
    issue_p = sub.add_parser("issue", help="issue a certificate when missing or expiring")
    issue_p.add_argument("name", help="identity: the CN (node name for devices)")
    issue_p.add_argument(
        "--server", default="", help="comma-separated DNS names/IPs: make a server certificate"
    )
    issue_p.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    revoke_p = sub.add_parser(
        "revoke",
        help="revoke a node: refused by the cloud broker after the next site.yml (CRL, ACL)",
    )
    revoke_p.add_argument("name", help="the node (certificate CN) to revoke")
    revoke_p.add_argument(
        "--reason",
        default="unspecified",
        choices=list(REASONS),
        help="the CRL reason code (default unspecified; a stolen device: key-compromise)",
    )
    reenrol_p = sub.add_parser(
        "reenrol",
        help="lift a node's revocation and issue a new certificate (a replacement device)",
    )
    reenrol_p.add_argument("name", help="the revoked node")
    decommission_p = sub.add_parser(
        "decommission",
        help="record a node as decommissioned (revoked, no longer expected); "
        "playbooks/decommission.yml runs it",
    )
    decommission_p.add_argument("name", help="the node")
    decommission_p.add_argument(
        "--abandoned", type=int, default=0, help="faces left undelivered on the device (counted)"
    )
    sub.add_parser("crl", help="write crl.pem from the revocation record when it changed")
    list_p = sub.add_parser("revoked", help="the revoked and decommissioned nodes")
    list_p.add_argument("--json", action="store_true", help="print JSON")


def run_pki(args: argparse.Namespace) -> int:
    if args.dir.exists() and not args.dir.is_dir():
        raise ConfigError(f"--dir {args.dir}: not a directory")
    try:
        return _run(args)
    except OSError as exc:
        raise ConfigError(f"{args.dir}: {exc.strerror or exc}") from None


def _run(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    command = args.pki_command
    if (
        command in ("revoke", "reenrol", "decommission", "revoked")
        and not (directory / "ca.crt").exists()
    ):
        raise ConfigError(f"--dir {directory}: no fleet CA there")
    if command == "revoke":
        serial = revoke(directory, args.name, args.reason)
        print(f"revoked {args.name} (serial {serial:x}, {args.reason}): {directory / CRL}")
        print("changed")
        return 0
    if command == "decommission":
        changed = decommission(directory, args.name, args.abandoned)
        print(f"{args.name} decommissioned ({args.abandoned} faces abandoned on it)")
        print("changed" if changed else "ok")
        return 0
    if command == "revoked":
        states = node_states(directory)
        if args.json:
            print(json.dumps({name: state.as_json() for name, state in states.items()}))
        for name, state in states.items() if not args.json else ():
            print(f"{name}\t{state.state}\t{state.since}\t{state.reason}\t{state.abandoned}")
        return 0
    if command == "ca":
        result = ensure_ca(directory)
    elif command == "crl":
        result = ensure_crl(directory)
    elif command == "reenrol":
        result = reenrol(directory, args.name)
    else:
        names = tuple(n.strip() for n in args.server.split(",") if n.strip())
        result = issue(directory, args.name, server_names=names, days=args.days)
    print(f"{result.cert}\n{'changed' if result.changed else 'ok'}")
    return 0
