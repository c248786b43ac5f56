"""The monitor's UI-free layer: parsing, model, flow gate, inventory, options. No broker."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from facefleet.config import ConfigError
from facefleet.health import NEVER, OFFLINE, ONLINE, STALE
from facefleet.inventory import load_inventory
from facefleet.pki import ensure_ca, issue
from facefleet_monitor.cli import add_arguments
from facefleet_monitor.config import config_from_args, parse_address
from facefleet_monitor.events import FaceEvent, FeedError, StatusEvent
from facefleet_monitor.feed import FlowGate, Inbox, parse_face, parse_status
from facefleet_monitor.formatting import format_age
from facefleet_monitor.model import FleetModel
from tests.tui.tui_helpers import face_meta, make_jpeg, status_body

UI_FREE = (
    "facefleet_monitor.events",
    "facefleet_monitor.state",
    "facefleet_monitor.alerts",
    "facefleet_monitor.formatting",
    "facefleet_monitor.model",
    "facefleet_monitor.feed",
    "facefleet_monitor.config",
    "facefleet_monitor.cli",
    "facefleet.inventory",
    "facefleet.health",
)


def test_mqtt_and_model_layer_imports_no_textual() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {name}\n" for name in UI_FREE)
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('textual', 'textual_image', 'rich'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
    # and the check itself can fail: the app module does pull Textual in
    probe = code.replace(
        "import facefleet_monitor.cli\n",
        "import facefleet_monitor.cli\nimport facefleet_monitor.app\n",
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert "textual" in result.stdout.split(",")


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def status(
    node: str, service: str, state: str = "online", retained: bool = False, **figures: object
) -> StatusEvent:
    body = status_body(node, service, state, **figures)
    event = parse_status(node, service, json.dumps(body).encode(), retained)
    assert isinstance(event, StatusEvent)
    return event


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "malformed status JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"state": "dancing"}', "unknown state"),
        (b'{"state": "online", "node": "other"}', "does not match the topic"),
        (b'{"state": "online", "interval_s": -1}', "malformed interval_s"),
        (b"\xff\xfe", "malformed status JSON"),
        (b"x" * 70_000, "too large"),
    ],
)
def test_malformed_status_is_an_error_event(payload: bytes, reason: str) -> None:
    event = parse_status("cam1", "detector", payload, False)
    assert isinstance(event, FeedError)
    assert reason in event.reason


def test_last_will_without_ts_is_accepted() -> None:
    will = {
        "state": "offline",
        "service": "detector",
        "node": "cam1",
        "version": "0.1.0",
        "ts": None,
        "interval_s": 5.0,
    }
    event = parse_status("cam1", "detector", json.dumps(will).encode(), True)
    assert isinstance(event, StatusEvent)
    model = FleetModel()
    model.apply(event)
    assert model.nodes["cam1"].services["detector"].health(model.clock()) == OFFLINE


def test_face_checks() -> None:
    jpeg = make_jpeg(1)
    meta = face_meta("cam1", 3, jpeg)
    good = parse_face("cam1", dict(meta.user_properties()), "image/jpeg", jpeg)
    assert isinstance(good, FaceEvent)
    assert good.problem is None
    # oversized: refused before anything else, and the bytes are not kept
    big = parse_face("cam1", dict(meta.user_properties()), "image/jpeg", jpeg, max_bytes=100)
    assert isinstance(big, FeedError)
    assert "oversized" in big.reason
    # right hash, wrong bytes for the content type: a face with a problem
    junk = b"definitely not a jpeg"
    junk_meta = face_meta("cam1", 4, junk)
    odd = parse_face("cam1", dict(junk_meta.user_properties()), "image/jpeg", junk)
    assert isinstance(odd, FaceEvent)
    assert odd.problem == "payload is not image/jpeg"
    # hash mismatch and topic mismatch
    bad = parse_face("cam1", dict(meta.user_properties()), "image/jpeg", jpeg + b"x")
    assert isinstance(bad, FeedError)
    assert "sha256" in bad.reason
    other = parse_face("cam2", dict(meta.user_properties()), "image/jpeg", jpeg)
    assert isinstance(other, FeedError)
    assert "does not match the topic" in other.reason


def test_stale_after_three_missed_intervals() -> None:
    clock = Clock()
    model = FleetModel({"cam1": "edge"}, clock=clock)
    service = model.nodes["cam1"].services["detector"]
    assert service.health(clock()) == NEVER
    model.apply(status("cam1", "detector"))  # interval 5 s
    clock.now += 14.9
    assert service.health(clock()) == ONLINE
    clock.now += 0.2
    assert service.health(clock()) == STALE
    model.evaluate()
    assert "stale:cam1:detector" in model.active
    model.apply(status("cam1", "detector"))
    model.evaluate()
    assert "stale:cam1:detector" not in model.active
    assert [e.severity for e in model.log][-2:] == ["error", "resolved"]


def test_old_retained_status_is_judged_by_its_timestamp() -> None:
    clock = Clock()
    model = FleetModel(clock=clock)
    event = status("cam1", "detector", retained=True)  # ts 2026-01-01, long before "now"
    clock.now = 1_800_000_000.0
    model.apply(event)
    assert model.nodes["cam1"].services["detector"].health(clock()) == STALE


def test_trend_alerts() -> None:
    clock = Clock()
    model = FleetModel(clock=clock)
    for depth in (1, 5, 9):
        model.apply(status("cam1", "forwarder", spool_depth=depth))
    model.apply(status("cam1", "detector", camera="lost", fps=0.0))
    for dead in (0, 0, 2):
        model.apply(status("cloud1", "processor", dead_lettered=dead))
    model.evaluate()
    texts = {key: alert.text for key, alert in model.active.items()}
    assert texts["spool:cam1:forwarder"] == "spool growing: 9 waiting"
    assert texts["camera:cam1:detector"] == "camera lost"
    assert texts["dead:cloud1:processor"] == "dead letters: 2 (+2)"
    model.apply(status("cam1", "forwarder", spool_depth=3))
    model.evaluate()
    assert "spool:cam1:forwarder" not in model.active


def test_a_camera_alert_carries_the_detectors_reason() -> None:
    model = FleetModel(clock=Clock())
    model.apply(
        status(
            "cam1",
            "detector",
            camera="reopening",
            camera_error="connection refused (10.0.0.9:554)",
            source="rtsp://10.0.0.9/x",
        )
    )
    model.evaluate()
    assert model.active["camera:cam1:detector"].text == (
        "camera reopening: connection refused (10.0.0.9:554) (rtsp://10.0.0.9/x)"
    )
    assert model.log[-1].text.endswith(
        "camera reopening: connection refused (10.0.0.9:554) (rtsp://10.0.0.9/x)"
    )


def test_model_memory_is_bounded_and_faces_per_minute() -> None:
    clock = Clock(600.0)
    model = FleetModel(clock=clock, max_detections=20, max_thumbnails=5, max_log=10)
    jpeg = make_jpeg(2)
    for i in range(300):
        meta = face_meta("cam1", i, jpeg, face_id=f"f{i}")
        model.apply(FaceEvent(meta, jpeg))
        model.apply(FeedError("cam1/faces", "cam1", f"bad {i}"))
        clock.now += 0.1  # 30 s in all: 3 buckets of 10 s
    assert len(model.detections) == 20
    assert model.detections[0].id == "f299"
    assert model.thumbnail("f299") is not None
    assert model.thumbnail("f294") is None
    assert len(model._thumbnails) == 5
    assert len(model.log) == 10
    rates = model.faces_per_minute("cam1")
    assert len(rates) == model.buckets
    assert rates[-4:-1] == [600.0, 600.0, 600.0]  # 100 faces per 10 s
    assert model.nodes["cam1"].faces_total == 300


def test_pause_freezes_the_feed_but_keeps_counting() -> None:
    model = FleetModel()
    jpeg = make_jpeg(3)
    model.apply(FaceEvent(face_meta("cam1", 1, jpeg), jpeg))
    model.set_paused(True)
    model.apply(FaceEvent(face_meta("cam1", 2, jpeg), jpeg))
    assert [d.track for d in model.detections] == [1]
    assert model.nodes["cam1"].faces_total == 2


def test_flow_gate_sheds_into_counts() -> None:
    gate = FlowGate(max_events=2, max_bytes=10_000)
    jpeg = make_jpeg(4)
    faces = [FaceEvent(face_meta("cam1", i, jpeg), jpeg) for i in range(5)]
    assert [gate.admit(f) for f in faces] == [True, True, False, False, False]
    heartbeat = status("cam1", "detector")
    assert not gate.admit(heartbeat)
    assert not gate.admit(FeedError("t", None, "x"))
    gate.release(faces[0])
    assert gate.events == 1
    shed = gate.take_shed()
    assert shed.faces == {"cam1": 3}
    assert shed.errors == 1
    assert shed.statuses[("cam1", "detector")] is heartbeat
    assert not gate.take_shed()
    model = FleetModel()
    model.apply_shed(shed.faces, shed.errors)
    assert model.nodes["cam1"].faces_total == 3
    assert model.counters.shed == 4


def test_inbox_wakes_once_and_hands_out_slices_oldest_first() -> None:
    inbox = Inbox()
    errors = [FeedError(f"t{i}", None, "x") for i in range(5)]
    assert [inbox.put(e) for e in errors] == [True, False, False, False, False]
    assert inbox.drain(2) == (errors[:2], True)
    assert inbox.drain(2) == (errors[2:4], True)
    assert inbox.drain(2) == (errors[4:], False)
    assert inbox.drain(2) == ([], False)
    assert inbox.put(errors[0])  # empty again: the next event wakes the UI


def test_format_age() -> None:
    assert [format_age(s) for s in (None, 4.4, 75, 7300, 90000)] == [
        "-",
        "4s",
        "1m15s",
        "2h01m",
        "1d01h",
    ]


def parse_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_options_errors(tmp_path: Path) -> None:
    assert parse_address("[::1]:1884", 1883) == ("::1", 1884)
    assert parse_address("broker.lab", 8883) == ("broker.lab", 8883)
    with pytest.raises(ConfigError, match="give --broker"):
        config_from_args(parse_args())
    with pytest.raises(ConfigError, match="port is not a number"):
        config_from_args(parse_args("--broker", "h:x"))
    with pytest.raises(ConfigError, match="file not found"):
        config_from_args(parse_args("--broker", "h:1", "--ca", str(tmp_path / "nope.crt")))
    cert = tmp_path / "m.crt"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="go together"):
        config_from_args(parse_args("--broker", "h:1", "--cert", str(cert)))
    # a file that is not a certificate: one line naming it, before the UI starts
    with pytest.raises(ConfigError, match=f"CA file {cert}: not a usable CA certificate"):
        config_from_args(parse_args("--broker", "h", "--ca", str(cert)))
    ca = ensure_ca(tmp_path / "pki").cert
    monitor = issue(tmp_path / "pki", "monitor")
    with pytest.raises(ConfigError, match="key values mismatch"):
        config_from_args(
            parse_args(
                "--broker", "h", "--cert", str(monitor.cert), "--key", str(ca.parent / "ca.key")
            )
        )
    config = config_from_args(parse_args("--broker", "h", "--ca", str(ca), "--prefix", "ff"))
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.tls, config.prefix) == (
        "h",
        8883,
        True,
        "ff",
    )


INVENTORY = """
all:
  vars:
    facefleet_prefix: ff
    facefleet_pki_dir: "{{ inventory_dir }}/pki"
  children:
    edge:
      children:
        site_a:
          hosts:
            cam1: {ansible_host: 10.0.0.11}
      hosts:
        cam2: {}
    cloud:
      hosts:
        cloud1: {ansible_host: 10.0.0.2}
    other:
      hosts:
        printer: {}
"""


def test_inventory_through_ansible_inventory(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yml"
    path.write_text(textwrap.dedent(INVENTORY))
    info = load_inventory(path)
    assert info.nodes == {"cam2": "edge", "cam1": "edge", "cloud1": "cloud"}
    assert (info.broker_host, info.broker_port, info.prefix, info.identity) == (
        "10.0.0.2",
        8883,
        "ff",
        "monitor",
    )
    assert info.pki_dir == tmp_path.resolve() / "pki"
    # the certificates are not there: a one-line error, not a traceback
    with pytest.raises(ConfigError, match=r"pki/ca.crt: not found \(the fleet PKI is made by site"):
        config_from_args(parse_args("--inventory", str(path)))
    # explicit overrides
    path.write_text(
        textwrap.dedent(INVENTORY).replace(
            "facefleet_prefix: ff",
            "facefleet_prefix: ff\n    facefleet_cloud_broker_host: broker.lab\n"
            "    facefleet_cloud_broker_port: 18883\n    facefleet_monitor_identity: ops",
        )
    )
    info = load_inventory(path)
    assert (info.broker_host, info.broker_port, info.identity) == ("broker.lab", 18883, "ops")


def test_inventory_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="inventory not found"):
        load_inventory(tmp_path / "missing.yml")
    path = tmp_path / "hosts.yml"
    path.write_text("all:\n  hosts:\n    lonely: {}\n")
    with pytest.raises(ConfigError, match="no hosts in the groups"):
        load_inventory(path)
    path.write_text("all:\n  children:\n    edge:\n      hosts:\n        cam1: {}\n")
    with pytest.raises(ConfigError, match="no 'cloud' host"):
        load_inventory(path)


def test_a_revoked_node_from_the_inventorys_pki_is_shown_as_such_without_alerts(
    tmp_path: Path,
) -> None:
    from facefleet import pki

    path = tmp_path / "hosts.yml"
    path.write_text(textwrap.dedent(INVENTORY))
    for name in ("monitor", "cam1", "cam2"):
        issue(tmp_path / "pki", name)
    pki.revoke(tmp_path / "pki", "cam2", "key-compromise")
    pki.decommission(tmp_path / "pki", "cam1", abandoned=2)
    config = config_from_args(parse_args("--inventory", str(path)))
    assert config.refused == {"cam2": "revoked", "cam1": "decommissioned"}
    clock = Clock()
    model = FleetModel(config.expected, refused=config.refused, clock=clock)
    model.apply(status("cam2", "detector"))  # its last heartbeat before it was revoked
    clock.now += 3600  # long stale, and cam1 never reported
    model.evaluate()
    assert not [key for key in model.active if "cam1" in key or "cam2" in key]
    assert model.nodes["cam2"].refused == "revoked"
    assert "never:cloud1:processor" in model.active  # the others are still watched
