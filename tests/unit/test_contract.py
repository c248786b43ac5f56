from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from facefleet.contract import (
    ContractError,
    parse_face_properties,
    parse_timestamp,
    parse_topic,
    storage_key,
    utc_timestamp,
)
from tests.support import face_meta, jpeg_bytes


def test_timestamp_round_trip_has_milliseconds_and_z() -> None:
    when = datetime(2026, 11, 23, 21, 37, 15, 123456, tzinfo=timezone.utc)
    text = utc_timestamp(when)
    assert text == "2026-11-23T21:37:15.123Z"
    assert parse_timestamp(text) == when.replace(microsecond=123000)
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_timestamp("2026-11-23 21:37:15")
    arabic_digits = "٢٠٢٦-11-23T21:37:15.123Z"
    for wrong in ("2026-11-23T21:37:15.123Z\n", "2026-11-23T21:37:15.123Z ", arabic_digits):
        with pytest.raises(ValueError, match="ISO 8601"):
            parse_timestamp(wrong)
    for impossible in ("2026-02-30T00:00:00.000Z", "2026-11-23T24:00:00.000Z"):
        with pytest.raises(ValueError, match=r"out of range|must be in"):
            parse_timestamp(impossible)


def test_storage_key_follows_the_contract_and_is_stable() -> None:
    payload = jpeg_bytes()
    meta = face_meta("edge-7", payload, ts="2026-01-02T03:04:05.006Z", id="abc123")
    key = storage_key(meta)
    assert key == "faces/edge-7/2026/01/02/03/2026-01-02T03:04:05.006Z_abc123.jpg"
    assert storage_key(meta) == key  # a redelivery lands on the same key


def test_properties_round_trip() -> None:
    payload = jpeg_bytes()
    meta = face_meta("edge1", payload)
    parsed = parse_face_properties(dict(meta.user_properties()), "image/jpeg", payload)
    assert parsed.id == meta.id
    assert parsed.box == meta.box
    assert parsed.frame == meta.frame


def test_topics() -> None:
    assert parse_topic("facefleet", "facefleet/n1/faces") == ("n1", "faces", None)
    assert parse_topic("facefleet", "facefleet/n1/status/detector") == ("n1", "status", "detector")
    assert parse_topic("facefleet", "other/n1/faces") is None
    assert parse_topic("facefleet", "facefleet/n1/faces/extra") is None


def test_missing_properties_are_named() -> None:
    with pytest.raises(ContractError, match="missing properties: v, id"):
        parse_face_properties({}, "image/jpeg", b"")


def test_platform_summary_merges_the_services_of_a_node() -> None:
    from facefleet.contract import Status, platform_summary

    base = {"arch": "aarch64", "os": "Ubuntu 20.04.6 LTS", "python": "3.9.5"}
    bodies = [
        {"state": "online", "platform": base},
        {"state": "online", "platform": {**base, "opencv": "4.8.0", "gpu": "ignored"}},
        {"state": "online"},  # a release from before the platform was reported
        {"state": "online", "platform": "garbage"},
    ]
    statuses = [Status.decode(json.dumps(body).encode(), "cam1", "detector") for body in bodies]
    assert platform_summary(statuses) == "aarch64, Ubuntu 20.04.6 LTS, Python 3.9.5, OpenCV 4.8.0"
    offline = Status.decode(b'{"state": "offline"}', "cam1", "detector")
    assert platform_summary([offline]) == ""


def test_node_platform_reports_this_machine(tmp_path: Path) -> None:
    import platform
    import sys

    from facefleet.service import node_platform, os_release

    release = tmp_path / "os-release"
    release.write_text('NAME="Debian GNU/Linux"\nPRETTY_NAME="Debian GNU/Linux 11 (bullseye)"\n')
    assert os_release(str(release)) == "Debian GNU/Linux 11 (bullseye)"
    assert os_release(str(tmp_path / "missing")) == f"{platform.system()} {platform.release()}"
    found = node_platform()
    assert found["arch"] == platform.machine()
    assert found["python"] == platform.python_version()
    # OpenCV only where a service loaded it
    assert ("opencv" in found) == ("cv2" in sys.modules)
