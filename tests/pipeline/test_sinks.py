"""Both sinks store a face once per key, with its metadata, whatever the redeliveries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from facefleet.config import ConfigError, dump_toml
from facefleet.contract import storage_key
from facefleet.locals3 import LocalS3
from facefleet.processor.settings import StorageSettings
from facefleet.processor.sinks import FilesystemSink, S3Sink, StorageUnavailable
from facefleet.seaweed import SeaweedS3
from tests.support import face_meta, jpeg_bytes


@pytest.mark.s3
@pytest.mark.parametrize("conditional_put", [True, False])
def test_s3_sink_writes_once_with_metadata(
    s3_server: SeaweedS3, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, conditional_put: bool
) -> None:
    for name, value in SeaweedS3.ENV.items():
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


@pytest.fixture
def aws_shaped_s3() -> Iterator[LocalS3]:
    """moto's S3: it answers a write to a missing bucket as AWS does (NoSuchBucket), where
    SeaweedFS creates the bucket on the first write."""
    server = LocalS3().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.s3
def test_the_processor_checks_at_start_that_it_can_write_and_says_what_is_missing(
    aws_shaped_s3: LocalS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_server = aws_shaped_s3
    config = tmp_path / "processor.toml"
    config.write_text(
        dump_toml(
            {
                "node": "cloud1",
                "storage": {
                    "kind": "s3",
                    "bucket": "never-created",
                    "endpoint_url": s3_server.url,
                    "region": "us-east-1",
                },
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "facefleet", "processor", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **LocalS3.ENV},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        "facefleet processor: config error: s3://never-created: cannot write "
        "probe/cloud1-processor: NoSuchBucket: the bucket does not exist (create it; facefleet "
        "does not)"
    )
    s3_server.client().create_bucket(Bucket="never-created")
    sink = S3Sink(
        StorageSettings(
            kind="s3", bucket="never-created", endpoint_url=s3_server.url, region="us-east-1"
        )
    )
    for name, value in LocalS3.ENV.items():
        monkeypatch.setenv(name, value)
    sink.check_writable("cloud1")  # the same check passes once the bucket is there
    assert s3_server.client().head_object(Bucket="never-created", Key="probe/cloud1-processor")


def test_a_storage_directory_that_cannot_be_written_is_a_config_error(tmp_path: Path) -> None:
    sink = FilesystemSink(tmp_path)
    (tmp_path / "probe").write_text("a file where the probe directory would go")
    with pytest.raises(ConfigError, match="cannot write"):
        sink.check_writable("cloud1")


def test_s3_objects_are_encrypted_server_side(
    s3_server: SeaweedS3, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SeaweedFS encrypts with SSE-S3 (it has a key) and reports it on HEAD; SSE-KMS it cannot
    do (no KMS), but what boto3 sends is checked on the request itself."""
    for name, value in SeaweedS3.ENV.items():
        monkeypatch.setenv(name, value)
    sent: list[dict[str, object]] = []

    def sink(**storage: object) -> S3Sink:
        settings = StorageSettings(
            kind="s3",
            bucket=s3_bucket,
            endpoint_url=s3_server.url,
            region="us-east-1",
            retry_min_s=0.1,
            **storage,
        )
        made = S3Sink(settings)
        made.client.meta.events.register(
            "before-parameter-build.s3.PutObject", lambda params, **_: sent.append(dict(params))
        )
        return made

    payload = jpeg_bytes()
    meta = face_meta("edge1", payload)
    assert sink().store(meta, payload)  # AES256 is the default
    assert sent[-1]["ServerSideEncryption"] == "AES256"
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=storage_key(meta))
    assert head["ServerSideEncryption"] == "AES256"
    sink().dead_letter("facefleet/edge1/faces", "bad", b"junk", {})
    for item in s3_server.objects(s3_bucket, "deadletter/"):
        head = s3_server.client().head_object(Bucket=s3_bucket, Key=item["Key"])
        assert head["ServerSideEncryption"] == "AES256"

    other = face_meta("edge1", payload)
    with pytest.raises(StorageUnavailable):  # SeaweedFS has no KMS: the write must not pass
        sink(encryption="aws:kms", kms_key_id="alias/facefleet").store(other, payload)
    assert sent[-1]["ServerSideEncryption"] == "aws:kms"
    assert sent[-1]["SSEKMSKeyId"] == "alias/facefleet"

    assert sink(encryption="none").store(other, payload)
    assert "ServerSideEncryption" not in sent[-1]
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=storage_key(other))
    assert "ServerSideEncryption" not in head


def test_kms_key_needs_kms_encryption() -> None:
    with pytest.raises(ValueError, match="kms_key_id needs encryption"):
        StorageSettings(kind="s3", bucket="faces", kms_key_id="alias/facefleet")
