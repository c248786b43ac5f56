"""The audit logger against a real edge broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facefleet.contract import status_topic
from tests.pipeline.relay import mqtt_table, wait_online
from tests.support import Publisher, ServiceProcess, wait_until

pytestmark = pytest.mark.broker


def test_audit_lines_for_faces_and_status_changes_without_image_bytes(
    edge_broker,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    audit = tmp_path / "audit" / "audit.jsonl"
    audit.parent.mkdir()
    logger = ServiceProcess(
        "logger",
        {
            "node": "edge1",
            "heartbeat_s": 1.0,
            "mqtt": mqtt_table(edge_broker),
            "audit": {"path": str(audit), "max_bytes": 4096, "backups": 3, "stderr": False},
        },
        tmp_path / "logger",
    ).start()
    try:
        wait_online(edge_broker, "logger")
        publisher = Publisher(edge_broker.settings_for())
        ids = [publisher.send_face("edge1", seed=i).id for i in range(25)]
        topic = status_topic("facefleet", "edge1", "detector")
        for state in ("online", "online", "online", "stopped"):
            publisher.send_raw(topic, json.dumps({"state": state}).encode(), None, None)
        publisher.send_raw(topic, b"{not json", None, None)

        def lines() -> list[dict[str, object]]:
            files = sorted(audit.parent.glob("audit.jsonl*"))
            return [json.loads(line) for f in files for line in f.read_text().splitlines()]

        wait_until(lambda: len([r for r in lines() if r["event"] == "face"]) >= 25, 20, "faces")
        wait_until(lambda: any(r["event"] == "status-malformed" for r in lines()), 20, "bad")
        records = lines()
        assert {r["id"] for r in records if r["event"] == "face"} == set(ids)
        detector = [
            r["state"] for r in records if r["event"] == "status" and r["service"] == "detector"
        ]
        assert detector == ["online", "stopped"]  # changes only, not every heartbeat
        assert len(list(audit.parent.glob("audit.jsonl.*"))) >= 1  # rotated
        assert max(len(json.dumps(r)) for r in records) < 1000  # never the image bytes
        publisher.close()
    finally:
        assert logger.stop() == 0


def test_audit_lines_older_than_the_age_limit_are_deleted(edge_broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from datetime import datetime, timezone

    from facefleet.contract import parse_timestamp

    audit = tmp_path / "audit" / "audit.jsonl"
    audit.parent.mkdir()
    logger = ServiceProcess(
        "logger",
        {
            "node": "edge1",
            "heartbeat_s": 1.0,
            "mqtt": mqtt_table(edge_broker),
            "audit": {"path": str(audit), "backups": 20, "stderr": False, "max_age_s": 4.0},
        },
        tmp_path / "logger",
    ).start()
    try:
        wait_online(edge_broker, "logger")
        publisher = Publisher(edge_broker.settings_for())
        ids = {publisher.send_face("edge1", seed=i).id for i in range(5)}

        def lines() -> list[dict[str, str]]:
            files = sorted(audit.parent.glob("audit.jsonl*"))
            return [json.loads(line) for f in files for line in f.read_text().splitlines()]

        wait_until(lambda: ids <= {r.get("id") for r in lines()}, 20, "faces audited")
        wait_until(lambda: not ids & {r.get("id") for r in lines()}, 20, "old lines deleted")
        now = datetime.now(timezone.utc)
        assert all((now - parse_timestamp(r["logged"])).total_seconds() <= 5 for r in lines())
        publisher.close()
    finally:
        logger.stop()
