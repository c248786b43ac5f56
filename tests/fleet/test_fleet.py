"""site.yml on the systemd-nspawn lab: deploy, idempotence, host state, and the fleet at work.

Real hosts with systemd, real mosquitto (TLS + ACL), the real services from the offline
wheelhouse, SeaweedFS's S3 gateway on the cloud host. Traffic goes only to the lab hosts' addresses.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import paho.mqtt.client as mqtt
import pytest
from lab.inventory import LAB_BUCKET, LAB_S3_KEY_ID, LAB_S3_PORT, LAB_S3_SECRET

from facefleet import pki
from facefleet.contract import SERVICES, utc_timestamp
from tests.fleet.clients import BROKER_PORT, cloud_settings, lab_s3
from tests.fleet.fleetlab import INVENTORY, PKI_DIR, Lab, deploy
from tests.helpers import fleet_status
from tests.support import Collector, Publisher

pytestmark = [pytest.mark.fleet, pytest.mark.slow, pytest.mark.timeout(3600)]
#: The checks up to the last two only look at the deployment: they run while the second
#: deploy (which must change nothing) runs beside them; the last two wait for it.
BESIDE_THE_LAST_DEPLOY = True

EDGE_SERVICES = ("detector", "logger", "forwarder")
MAX_EXPOSURE = 3.0
#: Config files belong to the active release.
CONFIG_DIR = "/opt/facefleet/current/config"


# --- deployment ------------------------------------------------------------------------------


def test_first_deploy_succeeds(lab: Lab) -> None:
    first = lab.deploys[0]
    assert first.returncode == 0, first.tail()
    recap = first.recap()
    assert set(recap) == set(lab.hosts), first.tail()
    assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in recap.values()), recap


# --- host state ------------------------------------------------------------------------------


def test_every_unit_active_on_every_host(lab: Lab) -> None:
    for host in lab.hosts:
        units = lab.units(host)
        states = lab.ssh(host, "systemctl is-active " + " ".join(units)).stdout.split()
        assert dict(zip(units, states, strict=True)) == dict.fromkeys(units, "active"), host


def test_service_users_files_and_modes(lab: Lab) -> None:
    for host in lab.hosts:
        services = ("processor",) if host == lab.cloud else EDGE_SERVICES
        for service in services:
            user = f"facefleet-{service}"
            entry = lab.out(host, f"getent passwd {user}").split(":")
            assert entry[6] == "/usr/sbin/nologin", entry
            assert int(entry[2]) < 1000, f"{user} is not a system user"
            stat = lab.out(host, f"stat -c '%U %G %a' {CONFIG_DIR}/{service}.toml")
            assert stat == f"root {user} 640"
            unit = lab.out(
                host,
                f"systemctl show -p User -p NoNewPrivileges -p ProtectSystem -p ProtectHome "
                f"-p PrivateTmp -p Restart -p RestartPreventExitStatus facefleet-{service}",
            )
            props = dict(line.split("=", 1) for line in unit.splitlines())
            assert props["User"] == user
            assert props["NoNewPrivileges"] == "yes"
            assert props["ProtectSystem"] == "strict"
            assert props["ProtectHome"] == "yes"
            assert props["PrivateTmp"] == "yes"
            assert props["Restart"] == "on-failure"
            assert "2" in props["RestartPreventExitStatus"].split()
        assert lab.out(host, "readlink -f /opt/facefleet/current").startswith(
            "/opt/facefleet/releases/"
        )
    for edge in lab.edges:
        assert "video" in lab.out(edge, "id -nG facefleet-detector").split()
        assert lab.out(edge, "stat -c '%U %G %a' /etc/facefleet/tls/forwarder.key") == (
            "root facefleet-forwarder 640"
        )
        assert lab.out(edge, "stat -c %U /var/lib/facefleet/forwarder/spool.sqlite") == (
            "facefleet-forwarder"
        )
        audit = lab.out(edge, "stat -c '%U %s' /var/log/facefleet/audit.jsonl").split()
        assert audit[0] == "facefleet-logger" and int(audit[1]) > 0
    cloud = lab.cloud
    assert lab.out(cloud, "stat -c '%U %G %a' /etc/facefleet/processor.env") == "root root 600"
    assert lab.out(cloud, "stat -c '%U %G %a' /etc/mosquitto/certs/broker.key") == (
        "root mosquitto 640"
    )
    assert lab.out(cloud, "stat -c '%U %G %a' /etc/facefleet/tls/processor.key") == (
        "root facefleet-processor 640"
    )


def test_listening_sockets(lab: Lab) -> None:
    for edge in lab.edges:
        listeners = lab.out(edge, "ss -Hltn | awk '{print $4}'").split()
        assert "127.0.0.1:1883" in listeners
        assert not [a for a in listeners if a.endswith(":1883") and not a.startswith("127.")]
    cloud = lab.out(lab.cloud, "ss -Hltnp | grep mosquitto | awk '{print $4}'").split()
    assert cloud, "mosquitto listens on nothing"
    assert all(a.rsplit(":", 1)[1] == str(BROKER_PORT) for a in cloud), cloud


def test_the_cloud_broker_may_hold_a_fleet_of_connections(lab: Lab) -> None:
    """systemd's default soft limit of 1024 open files would stop mosquitto at about 1,015
    clients; the role raises it (to 65536, or the host's hard limit when that is lower, as
    in the lab's containers)."""
    limits = lab.out(lab.cloud, "grep 'open files' /proc/$(pidof mosquitto)/limits").split()
    soft, hard = int(limits[3]), int(limits[4])
    assert soft == hard >= 10000, limits


def test_units_exposure_at_most_three(lab: Lab) -> None:
    exposure: dict[str, float] = {}
    for host in (lab.cloud, lab.edges[0]):
        services = ("processor",) if host == lab.cloud else EDGE_SERVICES
        for service in services:
            text = lab.out(host, f"systemd-analyze security facefleet-{service} | tail -1")
            exposure[service] = float(
                text.split("facefleet-" + service + ".service:")[1].split()[0]
            )
    lab.report["systemd_analyze_security"] = exposure
    assert set(exposure) == set(SERVICES)
    assert all(value <= MAX_EXPOSURE for value in exposure.values()), exposure


# --- the fleet at work -----------------------------------------------------------------------


def test_heartbeats_of_every_service_reach_the_cloud_broker(lab: Lab) -> None:
    wanted = {f"facefleet/{edge}/status/{svc}" for edge in lab.edges for svc in EDGE_SERVICES}
    wanted.add(f"facefleet/{lab.cloud}/status/processor")
    with Collector(cloud_settings(lab, "monitor"), "facefleet/+/status/+") as monitor:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not wanted <= monitor.topics():
            time.sleep(1)
        latest = monitor.latest()
    missing = wanted - set(latest)
    assert not missing, f"no heartbeat on {sorted(missing)}"
    offline = {t: latest[t].get("state") for t in wanted if latest[t].get("state") != "online"}
    assert not offline, offline


def test_faces_from_every_edge_are_stored_with_metadata(lab: Lab) -> None:
    """Every x86_64 edge's detector. The emulated arm64 ones play the clip too slowly to wait
    for (a frame every 20 s): test_jetson publishes faces there and follows them instead."""
    s3 = lab_s3(lab)
    counts: dict[str, int] = {}
    keys: dict[str, str] = {}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        for edge in lab.native_edges:
            pages = s3.get_paginator("list_objects_v2").paginate(
                Bucket=LAB_BUCKET, Prefix=f"faces/{edge}/"
            )
            found = [o["Key"] for page in pages for o in page.get("Contents", [])]
            counts[edge] = len(found)
            if found:
                keys[edge] = found[0]
        if all(counts.get(e) for e in lab.native_edges):
            break
        time.sleep(3)
    lab.report["faces_stored_per_edge"] = counts
    assert all(counts.get(e) for e in lab.native_edges), f"faces stored per edge: {counts}"
    for edge, key in keys.items():
        head = s3.head_object(Bucket=LAB_BUCKET, Key=key)
        meta = head["Metadata"]
        assert meta.get("node") == edge, meta
        assert meta.get("id") and meta.get("sha256") and meta.get("ts"), meta
        assert head["ContentType"] in ("image/jpeg", "image/png")
        assert head["ContentLength"] > 0


def test_stored_faces_are_encrypted_retained_and_listed_by_facefleet_faces(lab: Lab) -> None:
    """Issue 17 on the lab's SeaweedFS: every face carries SSE-S3, the deploy set facefleet's
    lifecycle rules (the default 30 days), and `facefleet faces list` sees every stored face."""
    s3 = lab_s3(lab)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=LAB_BUCKET, Prefix="faces/")
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert keys, "no faces stored"
    for key in keys[:5]:
        assert s3.head_object(Bucket=LAB_BUCKET, Key=key).get("ServerSideEncryption") == "AES256"
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=LAB_BUCKET)["Rules"]}
    assert rules["facefleet-faces"]["Expiration"]["Days"] == 30, rules
    assert rules["facefleet-faces"]["Filter"]["Prefix"] == "faces/", rules
    assert rules["facefleet-deadletter"]["Filter"]["Prefix"] == "deadletter/", rules
    endpoint = f"http://{lab.hosts[lab.cloud]}:{LAB_S3_PORT}"
    store = ["--store", f"s3://{LAB_BUCKET}", "--endpoint-url", endpoint]
    listed = subprocess.run(
        [sys.executable, "-m", "facefleet", "faces", "list", "--json", *store],
        env={
            **os.environ,
            "AWS_ACCESS_KEY_ID": LAB_S3_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": LAB_S3_SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    listed_keys = {json.loads(line)["key"] for line in listed.stdout.splitlines()}
    assert set(keys) <= listed_keys  # faces stored after the plain listing may be there too


def test_plaintext_and_anonymous_connections_are_refused(lab: Lab) -> None:
    address = lab.hosts[lab.cloud]
    # control: the broker is up and takes a client with a fleet certificate
    with Collector(cloud_settings(lab, "monitor"), "facefleet/#") as monitor:
        assert monitor.subscribed.is_set()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, 1883), timeout=5).close()
    # plaintext MQTT on the TLS port: the broker never answers with a CONNACK
    plain = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    acked = threading.Event()
    plain.on_connect = lambda *_: acked.set()
    plain.connect_async(address, BROKER_PORT)
    plain.loop_start()
    try:
        assert not acked.wait(5), "plaintext MQTT accepted on the TLS listener"
    finally:
        plain.loop_stop()
    # TLS without a client certificate: the handshake fails (require_certificate)
    error = tls_without_certificate(address)
    assert error is not None, "TLS without a client certificate was accepted"


def tls_without_certificate(address: str) -> Exception | None:
    """The error a TLS client without a certificate gets from the broker (None: accepted)."""
    context = ssl.create_default_context(cafile=str(PKI_DIR / "ca.crt"))
    try:
        with (
            socket.create_connection((address, BROKER_PORT), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=address) as tls,
        ):
            # with TLS 1.3 the missing certificate is reported on the first read
            tls.sendall(b"\x10\x00")
            if not tls.recv(1):
                return ConnectionError("closed by the broker")
    except (ssl.SSLError, OSError) as exc:
        return exc
    return None


def test_a_device_cannot_publish_under_another_device(lab: Lab) -> None:
    intruder, victim = lab.edges[0], lab.edges[1]
    marker = uuid.uuid4().hex.encode()
    with Collector(
        cloud_settings(lab, "monitor"), f"facefleet/{victim}/#", f"facefleet/{intruder}/#"
    ) as seen:
        device = Publisher(cloud_settings(lab, intruder))
        try:
            forged = device.client.publish(f"facefleet/{victim}/faces", marker, qos=1)
            forged_status = device.client.publish(f"facefleet/{victim}/status/x", marker, qos=1)
            # its own faces topic works (the processor dead-letters this non-face)
            own_topic = f"facefleet/{intruder}/faces"
            own = device.client.publish(own_topic, marker, qos=1)
            for info in (forged, forged_status, own):
                info.wait_for_publish(10)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(
                m.topic == own_topic and m.payload == marker for m in seen.messages
            ):
                time.sleep(0.2)
            time.sleep(2)  # a forged message would have arrived by now
        finally:
            device.close()
        arrived = {m.topic for m in seen.messages if m.payload == marker}
    assert own_topic in arrived, "the device's own topic did not work"
    assert not {t for t in arrived if t.startswith(f"facefleet/{victim}/")}, arrived


# --- after the second deploy --------------------------------------------------------------


def test_second_deploy_changes_nothing(settled: Lab) -> None:
    assert len(settled.deploys) == 2, "the first deploy failed"
    settled.deploys[1].assert_changed_nothing(list(settled.hosts))


def test_a_config_change_and_a_renewed_certificate_restart_only_their_services(
    settled: Lab,
) -> None:
    """Runs last: it leaves edge-1's detector with a different threshold. The same deploy
    renews edge-1's certificate, made to expire within facefleet_pki_renew_days on the
    controller: the forwarder (which presents it) restarts for it, nothing else does, and the
    new expiry reaches the cloud in its heartbeat (issue #15)."""
    lab = settled
    edge = lab.edges[0]
    units = ("mosquitto", "facefleet-detector", "facefleet-logger", "facefleet-forwarder")

    def started() -> dict[str, str]:
        props = " ".join(f"{u}" for u in units)
        text = lab.out(edge, f"systemctl show -p ActiveEnterTimestampMonotonic {props}")
        return dict(zip(units, text.split(), strict=True))

    now = datetime.now(timezone.utc)
    pki.issue(PKI_DIR, edge, not_before=now - timedelta(days=pki.CERT_DAYS - 10))
    before = started()
    changed = deploy(lab.source, "--limit", edge, detector_score_threshold=0.71)
    assert changed.returncode == 0, changed.tail()
    # config + restart; certificate issued, copied with its key + restart
    assert changed.recap()[edge]["changed"] == 6, changed.tail(120)
    after = started()
    assert lab.out(edge, f"grep -c 'score_threshold = 0.71' {CONFIG_DIR}/detector.toml") == "1"
    restarted = {u for u in units if after[u] != before[u]}
    assert restarted == {"facefleet-detector", "facefleet-forwarder"}
    expires = pki.not_after(PKI_DIR / f"{edge}.crt")
    assert expires is not None and expires - now > timedelta(days=pki.CERT_DAYS - 1)
    status = fleet_status(INVENTORY, "--limit", edge, "--json", "--wait", "60")
    assert status.returncode == 0, status.stdout + status.stderr
    certificate = json.loads(status.stdout)["nodes"][0]["certificate"]
    # the new certificate's end, as the restarted forwarder reports it (not the first's)
    assert certificate == {
        "expires": utc_timestamp(expires),
        "days_left": pki.CERT_DAYS - 1,
        "from": "heartbeat",
    }
