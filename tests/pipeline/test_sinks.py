"""Both sinks store a face once per key, with its metadata, whatever the redeliveries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facefleet.contract import storage_key
from facefleet.processor.settings import StorageSettings
from facefleet.processor.sinks import FilesystemSink, S3Sink
from tests.conftest import S3_ENV, S3Server
from tests.helpers import face_meta, jpeg_bytes


@pytest.mark.s3
@pytest.mark.parametrize("conditional_put", [True, False])
def test_s3_sink_writes_once_with_metadata(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, conditional_put: bool
) -> None:
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    sink = S3Sink(
        StorageSettings(
            kind="s3",
            bucket=s3_bucket,
            endpoint_url=s3_server.url,
            region="us-east-1",
            conditional_put=conditional_put,
        )
    )
    payload = jpeg_bytes()
    meta = face_meta("edge1", payload)
    assert sink.store(meta, payload) is True
    assert sink.store(meta, payload) is False  # a redelivery is a duplicate, not a second write
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=storage_key(meta))
    assert head["Metadata"]["id"] == meta.id
    assert head["Metadata"]["sha256"] == meta.sha256
    where = sink.dead_letter("facefleet/edge1/faces", "bad", b"junk", {"properties": {}})
    assert where.startswith(f"s3://{s3_bucket}/deadletter/")


def test_filesystem_sink_writes_image_and_sidecar_once(tmp_path: Path) -> None:
    sink = FilesystemSink(tmp_path)
    payload = jpeg_bytes()
    meta = face_meta("edge1", payload)
    assert sink.store(meta, payload) is True
    assert sink.store(meta, payload) is False
    image = tmp_path / storage_key(meta)
    assert image.read_bytes() == payload
    assert json.loads(image.with_suffix(".json").read_text())["track"] == "1"
    assert not list(tmp_path.rglob(".tmp-*"))  # no temporary files left behind
