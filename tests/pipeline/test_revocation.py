"""Revoking a device on a real cloud broker configured like the deployed one (TLS, client
certificates of the fleet CA, the contract's ACL, the CRL; issue #15 point 2).

What mosquitto 2.0.11 does, measured here: after `facefleet pki revoke` and a SIGHUP (the role's
reload) the revoked device's open connection stays open but every publish is refused (PUBACK
135) and nothing is delivered to it, not even on a subscription made before; a new connection
with its certificate fails the TLS handshake (the CRL is reread on SIGHUP, and read at every
start); another device stays connected throughout and keeps publishing. The revoked device's
forwarder keeps its faces in the spool: a face leaves it only on a processor's receipt.
"""

from __future__ import annotations

import json
import sqlite3
import ssl
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509

from facefleet import pki
from facefleet.localbroker import LocalBroker
from facefleet.mqtt import MqttSettings, make_client
from tests.helpers import cloud_inventory, fleet_status
from tests.pipeline.relay import EDGE_NODE, Relay
from tests.pipeline.test_acl import Client
from tests.support import Publisher, wait_until

pytestmark = pytest.mark.broker

OTHER = "edge2"


def certificate_settings(broker: LocalBroker, identity: str) -> MqttSettings:
    """How a client presents `identity`'s existing certificate (the broker's `settings_for`
    would issue one, which the PKI refuses for a revoked name)."""
    assert broker.pki_dir is not None
    return MqttSettings(
        host=broker.host,
        port=broker.port,
        tls=True,
        ca_file=str(broker.ca_file),
        cert_file=str(broker.pki_dir / f"{identity}.crt"),
        key_file=str(broker.pki_dir / f"{identity}.key"),
    )


def handshake(settings: MqttSettings) -> str:
    """'connected', or why new connections with these settings failed (with TLS 1.3 the
    server's alert arrives after the client's side of the handshake, or the socket's end
    first: paho logs it and tries again, so this waits for the alert, at most 10 s)."""
    client = make_client(settings, f"probe-{time.monotonic_ns()}")
    connected, failed = threading.Event(), threading.Event()
    reasons: list[str] = []

    def on_log(_c: object, _u: object, _level: int, text: str) -> None:
        if "failed to receive" in text:
            reasons.append(text)
            if "revoked" in text:
                failed.set()

    client.on_connect = lambda *_: connected.set()
    client.on_log = on_log
    try:
        client.connect(settings.host, settings.port)
    except (ssl.SSLError, OSError) as exc:
        return str(exc)
    client.loop_start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (connected.is_set() or failed.is_set()):
            time.sleep(0.05)
        return "connected" if connected.is_set() else "; ".join(reasons) or "no answer"
    finally:
        client.loop_stop()
        client.disconnect()


class Watched(Client):
    """A device connected throughout: it must never be disconnected."""

    def __init__(self, broker: LocalBroker, identity: str) -> None:
        self.disconnects = 0
        super().__init__(broker, identity)
        self.client.on_disconnect = self._gone

    def _gone(self, *_: object) -> None:
        self.disconnects += 1


def spooled_faces(spool: Path) -> int:
    with sqlite3.connect(f"file:{spool}?mode=ro", uri=True) as db:
        row = db.execute("SELECT COUNT(*) FROM queue WHERE topic LIKE '%/faces'").fetchone()
    return int(row[0])


def test_a_revoked_device_is_refused_at_once_others_keep_working(relay: Relay) -> None:
    cloud = relay.cloud
    assert cloud.pki_dir is not None
    publisher = Publisher(relay.edge.settings_for())
    other = Watched(cloud, OTHER)
    revoked_probe = Client(cloud, EDGE_NODE)  # a second connection of the device, to measure
    try:
        for seed in range(3):
            publisher.send_face(EDGE_NODE, seed=seed)
        relay.wait_stored(3)
        assert other.publish(f"facefleet/{OTHER}/status/detector")
        revoked_probe.subscribe([f"facefleet/{EDGE_NODE}/receipts"])

        serial = pki.revoke(cloud.pki_dir, EDGE_NODE, "key-compromise")
        signalled = time.monotonic()
        cloud.reload()
        # refused within how long of the SIGHUP (mosquitto rereads the ACL in its main loop)
        while revoked_probe.publish(f"facefleet/{EDGE_NODE}/status/forwarder"):
            assert time.monotonic() - signalled < 5, "still accepted 5 s after the reload"
        refused_after = time.monotonic() - signalled
        assert revoked_probe.client.is_connected()  # not dropped, but refused everything
        assert not revoked_probe.publish(f"facefleet/{EDGE_NODE}/faces")

        # its faces stay on the device: refused by the broker, never confirmed
        for seed in range(3, 6):
            publisher.send_face(EDGE_NODE, seed=seed)
        spool = relay.workdir / "spool" / "spool.sqlite"
        wait_until(lambda: "refused spooled message" in relay.forwarder.log(), 20, "a refusal")
        # nothing reaches the revoked device, not even on the subscription made before
        processor = Client(cloud, "cloud1")
        assert processor.publish(f"facefleet/{EDGE_NODE}/receipts")
        processor.close()
        time.sleep(1)
        assert not revoked_probe.received
        assert len(relay.face_keys()) == 3
        assert spooled_faces(spool) == 3

        # a new connection with the revoked certificate fails the handshake at once
        assert "revoked" in handshake(certificate_settings(cloud, EDGE_NODE))
        # the other device was connected throughout and still publishes
        assert other.publish(f"facefleet/{OTHER}/status/detector")
        assert other.disconnects == 0

        # after a restart: the CRL, read at start, refuses it too; the other reconnects
        relay.cloud.restart()
        assert "revoked" in handshake(certificate_settings(cloud, EDGE_NODE))
        wait_until(other.client.is_connected, 20, "the other device reconnected")
        assert other.publish(f"facefleet/{OTHER}/status/detector")

        relay.forwarder.stop()
        assert spooled_faces(spool) == 3  # still there after the forwarder stopped
        crl = x509.load_pem_x509_crl((cloud.pki_dir / pki.CRL).read_bytes())
        assert crl.get_revoked_certificate_by_serial_number(serial) is not None
        print(f"revoked device refused {refused_after * 1000:.0f} ms after the reload")
    finally:
        other.close()
        revoked_probe.close()
        publisher.close()


def test_a_reenrolled_device_connects_with_its_new_certificate(tmp_path: Path) -> None:
    with LocalBroker("cloud", workdir=tmp_path / "cloud") as cloud:
        assert cloud.pki_dir is not None
        cloud.client_cert(EDGE_NODE)
        old = certificate_settings(cloud, EDGE_NODE)
        old_copy = tmp_path / "old"
        old_copy.mkdir()
        for suffix in ("crt", "key"):
            (old_copy / f"{EDGE_NODE}.{suffix}").write_bytes(
                (cloud.pki_dir / f"{EDGE_NODE}.{suffix}").read_bytes()
            )
        pki.revoke(cloud.pki_dir, EDGE_NODE)
        pki.reenrol(cloud.pki_dir, EDGE_NODE)
        cloud.restart()  # what the deploy does when a revoked name is allowed again
        device = Client(cloud, EDGE_NODE)
        try:
            assert device.publish(f"facefleet/{EDGE_NODE}/faces")
        finally:
            device.close()
        stolen = MqttSettings(
            **{
                **old.__dict__,
                "cert_file": str(old_copy / f"{EDGE_NODE}.crt"),
                "key_file": str(old_copy / f"{EDGE_NODE}.key"),
            }
        )
        assert "revoked" in handshake(stolen)


def test_fleet_status_shows_a_revoked_node_as_revoked(tmp_path: Path) -> None:
    with LocalBroker("cloud", workdir=tmp_path / "cloud") as cloud:
        assert cloud.pki_dir is not None
        inventory = cloud_inventory(cloud, tmp_path / "hosts.yml")
        cloud.client_cert("cam2")
        pki.revoke(cloud.pki_dir, "cam2", "key-compromise")
        cloud.reload()
        result = fleet_status(inventory, "--json")
        report = json.loads(result.stdout)
        nodes = {node["node"]: node for node in report["nodes"]}
        assert nodes["cam2"]["revoked"] == {
            "state": "revoked",
            "since": pki.node_states(cloud.pki_dir)["cam2"].since,
            "reason": "key-compromise",
            "abandoned": 0,
        }
        assert nodes["cam2"]["healthy"] and not nodes["cam2"]["problems"]
        assert nodes["cam1"]["revoked"] is None and not nodes["cam1"]["healthy"]
        table = fleet_status(inventory).stdout
        line = next(line for line in table.splitlines() if line.startswith("cam2"))
        assert "revoked since" in line and "key-compromise" in line
        summary = next(line for line in table.splitlines() if "nodes" in line and "healthy" in line)
        assert "1 revoked" in summary, table
