from __future__ import annotations

from datetime import datetime, timezone

import pytest

from facefleet.contract import (
    ContractError,
    parse_face_properties,
    parse_timestamp,
    parse_topic,
    storage_key,
    utc_timestamp,
)
from tests.helpers import face_meta, jpeg_bytes


def test_timestamp_round_trip_has_milliseconds_and_z() -> None:
    when = datetime(2026, 11, 23, 21, 37, 15, 123456, tzinfo=timezone.utc)
    text = utc_timestamp(when)
    assert text == "2026-11-23T21:37:15.123Z"
    assert parse_timestamp(text) == when.replace(microsecond=123000)
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_timestamp("2026-11-23 21:37:15")


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
