"""A small fleet CA: one CA key and certificate, and per-identity keys and certificates.

Used by the demo, the tests and the Ansible playbooks (on the controller). Idempotent: a
certificate is (re)issued only when missing, expiring within `renew_days`, or not signed by the
current CA; `facefleet pki` prints `changed` or `ok` as its last line so Ansible can report it.
The CN of a client certificate is its identity (the node name; Mosquitto's
`use_identity_as_username` turns it into the username the ACL sees).

A CA is renewed in two steps, so that no host ever meets a certificate it does not trust:
within `renew_days` of its end a next CA (new key, `ca-next.key`) is made and trusted beside
the current one (`ca.crt` holds the signing CA first, then the others); within half of
`renew_days` the next CA becomes the signing one (`ca.key`), the old one stays in `ca.crt` while
it is valid, and every certificate is reissued (it is no longer signed by the current CA). A
deploy in the first half of the window hands every host the next CA before any certificate of
it exists; a host not yet deployed in the second step still presents a certificate of the old
CA, which the broker still trusts. A fleet deployed only inside the second half gets both steps
in one run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from facefleet.config import ConfigError
from facefleet.contract import valid_node

CA_NAME = "facefleet fleet CA"
#: Lifetimes and renewal windows in days, the defaults of `facefleet pki` and of the inventory
#: variables facefleet_pki_ca_days, facefleet_pki_ca_renew_days, facefleet_pki_cert_days and
#: facefleet_pki_renew_days (roles/facefleet/defaults/main.yml; a unit test compares them).
CA_DAYS, CA_RENEW_DAYS = 3650, 90
CERT_DAYS, CERT_RENEW_DAYS = 825, 30


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


def _load_certs(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError):
        return []


def _load_cert(path: Path) -> x509.Certificate | None:
    """The first certificate of a PEM file (of `ca.crt`: the current CA)."""
    certs = _load_certs(path)
    return certs[0] if certs else None


def not_after(path: Path) -> dt.datetime | None:
    """When the (first) certificate in `path` expires, UTC; None when there is none."""
    cert = _load_cert(path)
    return cert.not_valid_after_utc if cert else None


def _fresh(cert: x509.Certificate | None, renew_days: int) -> bool:
    return cert is not None and cert.not_valid_after_utc - _now() > dt.timedelta(days=renew_days)


def _check_lifetime(days: int, renew_days: int) -> None:
    if renew_days < 1 or days <= renew_days:
        raise ConfigError(
            f"a lifetime of {days} days with a renewal window of {renew_days} days: the "
            "window must be at least 1 day and shorter than the lifetime"
        )


def ensure_ca(directory: Path, *, days: int = CA_DAYS, renew_days: int = CA_RENEW_DAYS) -> Issued:
    """The CA in `directory` (ca.crt, ca.key): made when missing, renewed in two steps within
    `renew_days` of its end (see the module's doc); CAs that expired leave ca.crt."""
    _check_lifetime(days, renew_days)
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    next_cert, next_key = directory / "ca-next.crt", directory / "ca-next.key"
    held = _load_certs(cert_path)
    certs = [c for c in held if c.not_valid_after_utc > _now()]
    if not held or held[0] not in certs or not key_path.exists():
        # none yet, or the signing CA expired (no run in its whole window): a new one
        fresh = directory / "ca.new.crt"
        _new_ca(key_path, fresh, days)
        return _bundle(cert_path, key_path, [_load_cert(fresh), *certs])
    signing, left = certs[0], certs[0].not_valid_after_utc - _now()
    if left > dt.timedelta(days=renew_days):
        return _bundle(cert_path, key_path, certs)
    if not next_key.exists() or _load_cert(next_cert) is None:
        _new_ca(next_key, next_cert, days)
    upcoming = _load_cert(next_cert)
    if left > dt.timedelta(days=renew_days / 2):  # step 1: trust the next CA
        return _bundle(cert_path, key_path, [signing, upcoming, *certs[1:]])
    os.replace(next_key, key_path)  # step 2: sign with it
    bundle = _bundle(cert_path, key_path, [upcoming, *certs])
    next_cert.unlink()
    return Issued(bundle.cert, bundle.key, changed=True)


def _new_ca(key_path: Path, cert_path: Path, days: int) -> None:
    """A CA named after its day and a random tag: the CAs trusted side by side during a renewal
    must differ by name, or OpenSSL may check a signature against the wrong one."""
    key = _new_key()
    label = f"{CA_NAME} {_now():%Y-%m-%d} {os.urandom(3).hex()}"
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)])
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
    _write_certs(cert_path, [cert])


def _bundle(cert_path: Path, key_path: Path, certs: Sequence[x509.Certificate | None]) -> Issued:
    """ca.crt as `certs` (the signing CA first, each once); changed when that is new."""
    unique: dict[bytes, x509.Certificate] = {}
    for cert in certs:
        if cert is not None:
            unique.setdefault(cert.fingerprint(hashes.SHA256()), cert)
    wanted = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in unique.values())
    try:
        changed = cert_path.read_bytes() != wanted
    except OSError:
        changed = True
    if changed:
        _write_certs(cert_path, list(unique.values()))
    temporary = cert_path.with_name("ca.new.crt")
    if temporary.exists():
        temporary.unlink()
    return Issued(cert_path, key_path, changed=changed)


def _write_certs(path: Path, certs: list[x509.Certificate]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))


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
    days: int = CERT_DAYS,
    renew_days: int = CERT_RENEW_DAYS,
    not_before: dt.datetime | None = None,
) -> Issued:
    """Certificate and key for `name` in `directory` (`<name>.crt`, `<name>.key`).

    With `server_names` it is a server certificate (DNS names or IP addresses as SANs);
    otherwise a client certificate with CN = name. Tests make an expired certificate, or one
    about to expire, with `not_before` in the past (it reissues unconditionally). The CA is
    made when missing, never renewed here (`ensure_ca` does).
    `name` becomes a file name and a certificate CN (the MQTT username
    the broker's ACL sees), so it must be a valid node name.
    """
    if not valid_node(name):
        raise ConfigError(
            f"{name!r} is not a valid identity: letters, digits, '.', '_' or '-', starting "
            "with a letter or digit, at most 63 characters (the node-name rule)"
        )
    if not_before is None:
        _check_lifetime(days, renew_days)
    ca = ensure_ca(directory) if not (directory / "ca.key").exists() else None
    ca_key_path = ca.key if ca else directory / "ca.key"
    ca_cert = _load_cert(directory / "ca.crt")
    if ca_cert is None:
        raise ConfigError(
            f"{directory / 'ca.crt'}: not a certificate (remove ca.key to start over)"
        )
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
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", required=True, type=Path, help="where the CA and certs live")
    sub = parser.add_subparsers(dest="pki_command", required=True, metavar="ACTION")
    ca_p = sub.add_parser("ca", help="create the CA when missing or expiring")
    _lifetime_arguments(ca_p, CA_DAYS, CA_RENEW_DAYS)
    issue_p = sub.add_parser("issue", help="issue a certificate when missing or expiring")
    issue_p.add_argument("name", help="identity: the CN (node name for devices)")
    issue_p.add_argument(
        "--server", default="", help="comma-separated DNS names/IPs: make a server certificate"
    )
    _lifetime_arguments(issue_p, CERT_DAYS, CERT_RENEW_DAYS)


def _lifetime_arguments(parser: argparse.ArgumentParser, days: int, renew_days: int) -> None:
    parser.add_argument("--days", type=int, default=days, help=f"lifetime in days (default {days})")
    parser.add_argument(
        "--renew-days",
        type=int,
        default=renew_days,
        help=f"renew when it expires within this many days (default {renew_days})",
    )


def run_pki(args: argparse.Namespace) -> int:
    if args.dir.exists() and not args.dir.is_dir():
        raise ConfigError(f"--dir {args.dir}: not a directory")
    try:
        if args.pki_command == "ca":
            result = ensure_ca(args.dir, days=args.days, renew_days=args.renew_days)
        else:
            names = tuple(n.strip() for n in args.server.split(",") if n.strip())
            _check_lifetime(args.days, args.renew_days)
            result = issue(
                args.dir,
                args.name,
                server_names=names,
                days=args.days,
                renew_days=args.renew_days,
            )
    except OSError as exc:
        raise ConfigError(f"{args.dir}: {exc.strerror or exc}") from None
    print(f"{result.cert}\n{'changed' if result.changed else 'ok'}")
    return 0
