"""`facefleet detector` as a real subprocess against a real mosquitto."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from facefleet.contract import parse_face_properties
from facefleet.detector.journal import read_record
from facefleet.detector.synthetic import SceneParams
from facefleet.localbroker import LocalBroker
from facefleet.mqtt import content_type, user_properties
from facefleet.shared import YUNET_MODEL
from tests.helpers import require_shared
from tests.support import Collector, ServiceProcess, wait_until

pytestmark = pytest.mark.broker

NODE = "cam-1"
SCENE = "synthetic:?persons=3&seconds=6&fps=10&seed=2"


def detector_config(
    broker: LocalBroker, source: str, workdir: Path, **sections: dict[str, Any]
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "node": NODE,
        "heartbeat_s": 0.5,
        "mqtt": {"host": broker.host, "port": broker.port},
        "camera": {"source": source},
        "detection": {"backend": "haar"},
        "journal": {"path": str(workdir / "journal")},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


def faces(collector: Collector) -> list[mqtt.MQTTMessage]:
    return [m for m in collector.snapshot() if m.topic == f"facefleet/{NODE}/faces"]


def statuses(collector: Collector) -> list[dict[str, Any]]:
    return [
        json.loads(m.payload)
        for m in collector.snapshot()
        if m.topic == f"facefleet/{NODE}/status/detector"
    ]


def run_to_end(broker: LocalBroker, tmp_path: Path, config: dict[str, Any]) -> Collector:
    collector = Collector(broker.settings_for(), "facefleet/#")
    service = ServiceProcess("detector", config, tmp_path / "detector").start()
    try:
        assert service.process is not None
        assert service.process.wait(timeout=120) == 0, service.log()
    finally:
        service.stop()
    wait_until(lambda: any(s["state"] == "stopped" for s in statuses(collector)), 10, "stopped")
    collector.close()
    return collector


@pytest.mark.parametrize("backend", ["haar", "yunet"])
def test_best_mode_publishes_one_crop_per_person_then_stops(
    edge_broker: LocalBroker, tmp_path: Path, backend: str
) -> None:
    detection: dict[str, Any] = {"backend": backend}
    if backend == "yunet":
        model = require_shared("models", YUNET_MODEL)
        detection["model"] = str(model)
    config = detector_config(edge_broker, SCENE, tmp_path, detection=detection)
    collector = run_to_end(edge_broker, tmp_path, config)

    messages = faces(collector)
    assert len(messages) == SceneParams.from_uri(SCENE).persons
    metas = [
        parse_face_properties(user_properties(m), content_type(m), m.payload) for m in messages
    ]
    assert all(m.qos == 1 for m in messages)
    assert len({meta.id for meta in metas}) == len(metas)
    assert len({meta.track for meta in metas}) == len(metas)
    for meta in metas:
        assert meta.node == NODE
        assert meta.detector == backend
        assert meta.frame == (640, 480)
        assert meta.content_type == "image/jpeg"
        assert meta.box[0] + meta.box[2] <= 640
        assert meta.box[1] + meta.box[3] <= 480
        assert meta.score > 0

    final = statuses(collector)[-1]
    assert final["state"] == "stopped"
    assert final["camera"] == "ended"
    assert final["frames"] == SceneParams.from_uri(SCENE).frame_count
    assert final["published"] == len(messages)
    assert final["published_bytes"] == sum(len(m.payload) for m in messages)
    assert final["tracks_active"] == 0
    assert final["errors"] == 0
    assert final["backend"] == backend
    assert final["source"] == SCENE
    for key in ("fps", "faces_detected", "camera_reopens", "node", "version", "ts", "interval_s"):
        assert key in final


def test_tracks_failing_the_gate_are_held_back_and_counted_in_the_heartbeat(
    edge_broker: LocalBroker, tmp_path: Path
) -> None:
    config = detector_config(edge_broker, SCENE, tmp_path, quality={"min_face_px": 400})
    collector = run_to_end(edge_broker, tmp_path, config)
    final = statuses(collector)[-1]
    assert faces(collector) == []
    assert final["published"] == 0
    assert final["held_back"] == {"small": SceneParams.from_uri(SCENE).persons}
    assert final["merged"] == 0


def test_every_frame_mode_publishes_every_face_as_png(
    edge_broker: LocalBroker, tmp_path: Path
) -> None:
    source = "synthetic:?persons=2&seconds=2&fps=10&seed=4"
    config = detector_config(
        edge_broker,
        source,
        tmp_path,
        detection={"haar_scale_factor": 1.3},
        publish={"mode": "every-frame", "encoding": "png"},
    )
    collector = run_to_end(edge_broker, tmp_path, config)
    messages = faces(collector)
    final = statuses(collector)[-1]
    assert final["faces_detected"] > 5
    assert len(messages) == final["faces_detected"] == final["published"]
    for message in messages:
        meta = parse_face_properties(
            user_properties(message), content_type(message), message.payload
        )
        assert meta.content_type == "image/png"
        assert message.payload.startswith(b"\x89PNG")


def test_sigterm_flushes_the_tracks_and_exits_cleanly(
    edge_broker: LocalBroker, tmp_path: Path
) -> None:
    config = detector_config(
        edge_broker,
        "synthetic:?persons=2&seconds=20&fps=15",
        tmp_path,
        camera={"realtime": True, "loop": True},
    )
    collector = Collector(edge_broker.settings_for(), "facefleet/#")
    service = ServiceProcess("detector", config, tmp_path / "detector").start()
    try:
        wait_until(
            lambda: any(
                s["state"] == "online" and s["tracks_active"] > 0 for s in statuses(collector)
            ),
            30,
            "a live track",
        )
        assert faces(collector) == []  # best mode: nothing before a track ends
        service.signal(signal.SIGTERM)
        assert service.stop(timeout_s=30) == 0, service.log()
    finally:
        if service.alive():
            service.kill()
    wait_until(lambda: any(s["state"] == "stopped" for s in statuses(collector)), 10, "stopped")
    final = statuses(collector)[-1]
    collector.close()
    assert final["state"] == "stopped"
    assert final["camera"] == "ended"
    assert final["published"] >= 1
    assert len(faces(collector)) == final["published"]


@pytest.mark.slow
def test_while_the_broker_is_down_faces_wait_in_the_journal_and_beyond_it_are_dropped(
    tmp_path: Path,
) -> None:
    broker = LocalBroker("edge", workdir=tmp_path / "broker")  # port chosen, not started yet
    config = detector_config(
        broker,
        "synthetic:?persons=2&seconds=60&fps=15",
        tmp_path,
        camera={"realtime": True, "loop": True},
        publish={"mode": "every-frame", "max_queued": 5},
        journal={"max_bytes": 131072, "segment_bytes": 65536},
        mqtt={"host": broker.host, "port": broker.port, "reconnect_min_s": 1, "reconnect_max_s": 1},
    )
    service = ServiceProcess("detector", config, tmp_path / "detector").start()
    try:
        wait_until(lambda: "dropping faces" in service.log(), 60, "journal full, faces dropped")
        journaled = {e.id for e in read_record(tmp_path / "journal") if e.journaled}
        assert journaled
        broker.start()
        collector = Collector(broker.settings_for(), "facefleet/#")
        online = wait_until(
            lambda: [s for s in statuses(collector) if s["state"] == "online" and s["frames"]],
            30,
            "the detector back online",
        )
        assert online[-1]["dropped"] > 0
        assert online[-1]["errors"] >= online[-1]["dropped"]
        assert online[-1]["journal_overflow"] >= online[-1]["dropped"]
        # nothing confirms them (no forwarder), so every journaled face is still pending
        assert online[-1]["journal_pending"] >= len(journaled)

        def published_ids() -> set[str]:
            return {user_properties(m)["id"] for m in faces(collector)}

        wait_until(lambda: journaled <= published_ids(), 30, "every journaled face published")
        assert service.stop(timeout_s=30) == 0, service.log()
        wait_until(lambda: any(s["state"] == "stopped" for s in statuses(collector)), 10, "stop")
        final = statuses(collector)[-1]
        assert final["frames"] > online[-1]["frames"]
        collector.close()
    finally:
        if service.alive():
            service.kill()
        broker.cleanup()


def test_check_reports_bad_config_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "detector.toml"
    config.write_text('[camera]\nsource = "synthetic:?persons=many"\n')
    result = subprocess.run(
        [sys.executable, "-m", "facefleet", "detector", "--config", str(config), "--check"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "persons" in result.stderr


def test_a_missing_camera_is_reported_lost_and_retried(
    edge_broker: LocalBroker, tmp_path: Path
) -> None:
    config = detector_config(
        edge_broker,
        "/dev/video-facefleet-test",
        tmp_path,
        camera={"reopen_min_s": 0.1, "reopen_max_s": 0.4},
    )
    collector = Collector(edge_broker.settings_for(), "facefleet/#")
    service = ServiceProcess("detector", config, tmp_path / "detector").start()
    try:
        lost = wait_until(
            lambda: [s for s in statuses(collector) if s["camera"] == "lost"], 30, "camera lost"
        )
        assert lost[-1]["state"] == "online"
        assert lost[-1]["frames"] == 0
        assert lost[-1]["camera_error"] == "no such device"  # the monitor shows it
        assert service.stop(timeout_s=30) == 0, service.log()
    finally:
        if service.alive():
            service.kill()
    wait_until(lambda: any(s["state"] == "stopped" for s in statuses(collector)), 10, "stopped")
    collector.close()
    log = service.log()
    tries = [
        line
        for line in log.splitlines()
        if "camera /dev/video-facefleet-test: no such device; next try in" in line
    ]
    assert tries and "WARNING" in tries[0] and "ERROR" in tries[-1]  # reopening, then lost
    # one line per try, so at most one per backoff (0.1 s, doubling to 0.4 s): not per read
    times = [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f") for line in tries]
    # not itertools.pairwise: the detector's tests also run on Python 3.9 (make test-py39)
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
    assert all(gap >= 0.09 for gap in gaps), gaps
