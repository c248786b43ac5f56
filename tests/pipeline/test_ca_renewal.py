"""A CA renewal on a real cloud mosquitto (TLS, client certificates): the next CA is trusted
one step before it signs, so a device deployed in the first step keeps connecting after the
broker's certificate comes from the new CA, with its certificate of the old one (issue #15)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography import x509

from facefleet import pki
from facefleet.localbroker import LocalBroker
from facefleet.mqtt import MqttSettings, why_unreachable
from tests.pipeline.test_revocation import handshake
from tests.support import Publisher, wait_until

pytestmark = [pytest.mark.broker]


def device(broker: LocalBroker, cert: pki.Issued, trust: Path) -> MqttSettings:
    """A device as its last deploy left it: its certificate and key, and its copy of ca.crt."""
    return MqttSettings(
        host=broker.host,
        port=broker.port,
        tls=True,
        ca_file=str(trust),
        cert_file=str(cert.cert),
        key_file=str(cert.key),
    )


def keep(path: Path, where: Path) -> Path:
    where.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(path, where))


def test_devices_keep_connecting_through_a_ca_renewal(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    pki.ensure_ca(directory, days=100, renew_days=30)  # 100 days left
    never = keep(directory / "ca.crt", tmp_path / "cam3" / "ca.crt")  # not deployed since
    pki.issue(directory, "cam3")
    cam3 = pki.Issued(
        *(
            keep(p, tmp_path / "cam3" / p.name)
            for p in (directory / "cam3.crt", directory / "cam3.key")
        ),
        False,
    )

    assert pki.ensure_ca(directory, renew_days=150).changed  # step 1: the next CA trusted
    old_leaf = pki.issue(directory, "cam1")  # still signed by the old CA
    bundle = x509.load_pem_x509_certificates((directory / "ca.crt").read_bytes())
    issuer = x509.load_pem_x509_certificate(old_leaf.cert.read_bytes()).issuer
    assert len(bundle) == 2 and issuer == bundle[0].subject != bundle[1].subject
    step1 = keep(directory / "ca.crt", tmp_path / "cam1" / "ca.crt")  # cam1's deploy
    cam1 = pki.Issued(
        *(keep(p, tmp_path / "cam1" / p.name) for p in (old_leaf.cert, old_leaf.key)), False
    )

    assert pki.ensure_ca(directory, renew_days=250).changed  # step 2: the next CA signs
    with LocalBroker("cloud", workdir=tmp_path / "broker", pki_dir=directory) as broker:
        # the broker's certificate is reissued by the new CA; it trusts both
        cam2 = broker.client_cert("cam2")  # a device deployed now: the new CA's certificate
        for settings in (device(broker, cam1, step1), device(broker, cam2, directory / "ca.crt")):
            Publisher(settings).close()  # connects, or times out
        # a device deployed in neither step trusts only the old CA: it refuses the broker
        # until its deploy (the limit README states: deploy once in the first half)
        assert why_unreachable(device(broker, cam3, never)).startswith(
            "TLS: the broker's certificate is not trusted"
        )
        # and the broker still accepts its certificate of the old CA
        Publisher(device(broker, cam3, directory / "ca.crt")).close()
        # revocation covers both CAs' certificates: crl.pem holds a CRL of each (Mosquitto's
        # check wants one from every client certificate's issuer)
        assert (directory / "crl.pem").read_bytes().count(b"BEGIN X509 CRL") == 2
        pki.revoke(directory, "cam1", "key-compromise")  # its certificate of the old CA
        broker.reload()  # mosquitto rereads the files in its main loop, soon after the SIGHUP
        wait_until(
            lambda: "revoked" in handshake(device(broker, cam1, step1)),
            15,
            "the old CA's revoked certificate refused after the reload",
        )
        Publisher(device(broker, cam2, directory / "ca.crt")).close()
