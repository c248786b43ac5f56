"""A small fleet CA: one CA key and certificate, and per-identity keys and certificates.

Used by the demo, the tests and the Ansible playbooks (on the controller). Idempotent: a
certificate is (re)issued only when missing, expiring within `renew_days`, or not signed by the
current CA; `facefleet pki` prints `changed` or `ok` as its last line so Ansible can report it.
The CN of a client certificate is its identity (the node name; Mosquitto's
`use_identity_as_username` turns it into the username the ACL sees).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
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
    if not valid_node(name):
        raise ConfigError(
            f"{name!r} is not a valid identity: letters, digits, '.', '_' or '-', starting "
            "with a letter or digit, at most 63 characters (the node-name rule)"
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


def run_pki(args: argparse.Namespace) -> int:
    if args.dir.exists() and not args.dir.is_dir():
        raise ConfigError(f"--dir {args.dir}: not a directory")
    try:
        if args.pki_command == "ca":
            result = ensure_ca(args.dir)
        else:
            names = tuple(n.strip() for n in args.server.split(",") if n.strip())
            result = issue(args.dir, args.name, server_names=names, days=args.days)
    except OSError as exc:
        raise ConfigError(f"{args.dir}: {exc.strerror or exc}") from None
    print(f"{result.cert}\n{'changed' if result.changed else 'ok'}")
    return 0
