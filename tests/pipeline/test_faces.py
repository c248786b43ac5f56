"""`facefleet faces` as a real process against what the processor's sinks stored: a directory
and a real S3-compatible store (SeaweedFS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from facefleet.contract import FaceMeta, storage_key, utc_timestamp
from facefleet.processor.settings import StorageSettings
from facefleet.processor.sinks import FilesystemSink, S3Sink, Sink
from facefleet.seaweed import SeaweedS3
from tests.support import face_meta, jpeg_bytes

NOW = datetime.now(timezone.utc)


@dataclass
class Store:
    """A store the sink writes to and `facefleet faces` reads: spec, options, environment."""

    spec: str
    options: list[str]
    env: dict[str, str]
    sink: Sink
    s3: SeaweedS3 | None = None
    bucket: str = ""
    root: Path | None = None

    def keys(self, prefix: str) -> list[str]:
        if self.s3 is not None:
            return [o["Key"] for o in self.s3.objects(self.bucket, prefix)]
        assert self.root is not None
        base = self.root / prefix
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())

    def read(self, key: str) -> bytes:
        if self.s3 is not None:
            body: bytes = self.s3.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
            return body
        assert self.root is not None
        return (self.root / key).read_bytes()


def faces(
    store: Store, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    action, *rest = args
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "facefleet",
            "faces",
            action,
            "--store",
            store.spec,
            *store.options,
            *rest,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or store.env)},
    )


@pytest.fixture(params=["directory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    if request.param == "directory":
        root = tmp_path / "store"
        return Store(str(root), [], {}, FilesystemSink(root), root=root)
    s3: SeaweedS3 = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    for name, value in SeaweedS3.ENV.items():
        monkeypatch.setenv(name, value)
    sink = S3Sink(
        StorageSettings(kind="s3", bucket=bucket, endpoint_url=s3.url, region="us-east-1")
    )
    return Store(
        f"s3://{bucket}", ["--endpoint-url", s3.url], SeaweedS3.ENV, sink, s3=s3, bucket=bucket
    )


def put(store: Store, node: str, age: timedelta, seed: int = 0) -> FaceMeta:
    payload = jpeg_bytes(seed=seed)
    meta = face_meta(node, payload, ts=utc_timestamp(NOW - age))
    assert store.sink.store(meta, payload)
    return meta


def stored_fleet(store: Store) -> dict[str, FaceMeta]:
    """Six faces on two nodes, an hour to ten days old, and one dead letter."""
    ages = {
        "a1": ("cam-a", timedelta(hours=1)),
        "a2": ("cam-a", timedelta(days=3)),
        "a3": ("cam-a", timedelta(days=10)),
        "b1": ("cam-b", timedelta(minutes=5)),
        "b2": ("cam-b", timedelta(days=2, hours=1)),
        "b3": ("cam-b", timedelta(days=12)),
    }
    metas = {
        name: put(store, node, age, seed=i) for i, (name, (node, age)) in enumerate(ages.items())
    }
    store.sink.dead_letter("facefleet/cam-a/faces", "bad", b"junk", {"properties": {}})
    return metas


def listed(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.s3
def test_list_shows_exactly_what_was_stored_with_filters(store: Store) -> None:
    metas = stored_fleet(store)
    every = listed(faces(store, "list", "--json"))
    assert sorted(f["id"] for f in every) == sorted(m.id for m in metas.values())
    by_id = {f["id"]: f for f in every}
    assert by_id[metas["a1"].id]["key"].endswith(storage_key(metas["a1"]))
    assert by_id[metas["a1"].id]["node"] == "cam-a"
    assert by_id[metas["a1"].id]["ts"] == metas["a1"].ts
    assert by_id[metas["a1"].id]["size"] == len(jpeg_bytes(seed=0))

    node_a = listed(faces(store, "list", "--json", "--node", "cam-a"))
    assert {f["id"] for f in node_a} == {metas[n].id for n in ("a1", "a2", "a3")}
    recent = listed(faces(store, "list", "--json", "--since", "4d"))
    assert {f["id"] for f in recent} == {metas[n].id for n in ("a1", "a2", "b1", "b2")}
    window = listed(
        faces(store, "list", "--json", "--node", "cam-b", "--since", "7d", "--until", "1h")
    )
    assert [f["id"] for f in window] == [metas["b2"].id]
    absolute = faces(store, "list", "--until", utc_timestamp(NOW - timedelta(days=11)))
    assert absolute.stdout.split("\t")[0] == metas["b3"].id
    assert len(listed(faces(store, "list", "--json", "--limit", "2"))) == 2
    text = faces(store, "list", "--node", "cam-a")
    assert [line.split("\t")[0] for line in text.stdout.splitlines()] == [
        metas[n].id
        for n in ("a3", "a2", "a1")  # key order: node, then capture time
    ]


@pytest.mark.s3
def test_get_writes_the_image_and_prints_its_metadata(store: Store, tmp_path: Path) -> None:
    metas = stored_fleet(store)
    out = tmp_path / "face.jpg"
    result = faces(store, "get", metas["b2"].id, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == jpeg_bytes(seed=4)
    shown = json.loads(result.stdout)
    assert shown["metadata"]["sha256"] == metas["b2"].sha256
    assert shown["node"] == "cam-b"
    missing = faces(store, "get", "0" * 32, "-o", str(out))
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"facefleet faces get: no face with id {'0' * 32} in " + (
        f"s3://{store.bucket}/" if store.s3 else store.spec
    )


@pytest.mark.s3
def test_delete_asks_honours_dry_run_and_leaves_a_record(store: Store) -> None:
    metas = stored_fleet(store)
    before = len(store.keys("faces/"))

    dry = faces(store, "delete", "--node", "cam-a", "--since", "5d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would delete 2 faces" in dry.stdout
    assert len(store.keys("faces/")) == before
    assert store.keys("deletions/") == []

    refused = faces(store, "delete", "--node", "cam-a", "--since", "5d", stdin="n\n")
    assert refused.returncode == 1
    assert "delete 2 faces" in refused.stderr
    assert "nothing deleted" in refused.stderr
    assert len(store.keys("faces/")) == before

    done = faces(store, "delete", "--node", "cam-a", "--since", "5d", stdin="y\n")
    assert done.returncode == 0, done.stderr
    assert "deleted 2 faces" in done.stdout
    remaining = {f["id"] for f in listed(faces(store, "list", "--json"))}
    assert remaining == {metas[n].id for n in ("a3", "b1", "b2", "b3")}
    if store.root is not None:  # the sidecar went with the image
        assert not [k for k in store.keys("faces/cam-a") if metas["a1"].id in k]

    by_id = faces(store, "delete", "--id", metas["b3"].id, "--yes")
    assert by_id.returncode == 0, by_id.stderr

    records = [json.loads(store.read(key)) for key in store.keys("deletions/")]
    assert len(records) == 2
    first = next(r for r in records if r["count"] == 2)
    assert sorted(first["ids"]) == sorted(metas[n].id for n in ("a1", "a2"))
    assert first["criteria"]["node"] == "cam-a"
    assert "since" in first["criteria"]
    assert first["who"]["user"]
    assert first["who"]["host"]
    second = next(r for r in records if r["count"] == 1)
    assert second["ids"] == [metas["b3"].id]
    assert second["criteria"] == {"ids": [metas["b3"].id]}


@pytest.mark.s3
def test_bad_usage_is_one_line_and_exit_2(store: Store) -> None:
    stored_fleet(store)
    bad_time = faces(store, "list", "--since", "yesterday")
    assert bad_time.returncode == 2
    assert bad_time.stderr.strip().splitlines() == [
        "facefleet faces: config error: bad time 'yesterday': ISO 8601 (2026-11-30, "
        "2026-11-30T08:00Z; no zone = UTC) or an age (90m, 12h, 7d, 2w)"
    ]
    nothing_named = faces(store, "delete", "--yes")
    assert nothing_named.returncode == 2
    assert "say what to delete" in nothing_named.stderr
    assert len(nothing_named.stderr.strip().splitlines()) == 1


@pytest.mark.s3
def test_s3_errors_are_one_line(s3_server: SeaweedS3, s3_bucket: str) -> None:
    def run(spec: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        store = Store(spec, ["--endpoint-url", s3_server.url], env, FilesystemSink("/nonexistent"))
        return faces(store, *args, env=env)

    missing = run("s3://no-such-bucket", "list", env=SeaweedS3.ENV)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "facefleet faces: config error: bucket no-such-bucket does not exist"
    ]
    wrong_keys = {**SeaweedS3.ENV, "AWS_SECRET_ACCESS_KEY": "wrong"}
    refused = run(f"s3://{s3_bucket}", "list", env=wrong_keys)
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "does not accept these credentials" in refused.stderr

    payload = jpeg_bytes()
    meta = face_meta("cam-a", payload)
    s3_server.client().put_object(
        Bucket=s3_bucket, Key=storage_key(meta), Body=payload, Metadata=meta.as_dict()
    )
    reader = s3_server.READER_ENV
    assert [f["id"] for f in listed(run(f"s3://{s3_bucket}", "list", "--json", env=reader))] == [
        meta.id
    ]
    denied = run(f"s3://{s3_bucket}", "delete", "--node", "cam-a", "--yes", env=reader)
    assert denied.returncode == 2
    assert len(denied.stderr.strip().splitlines()) == 1
    assert "access denied" in denied.stderr
    assert [o["Key"] for o in s3_server.objects(s3_bucket, "faces/")] == [storage_key(meta)]


@pytest.mark.s3
def test_retention_on_s3_is_a_lifecycle_rule_beside_others(
    s3_server: SeaweedS3, s3_bucket: str
) -> None:
    client = s3_server.client()
    foreign = {"ID": "logs", "Status": "Enabled", "Filter": {"Prefix": "logs/"}}
    client.put_bucket_lifecycle_configuration(
        Bucket=s3_bucket,
        LifecycleConfiguration={"Rules": [{**foreign, "Expiration": {"Days": 3}}]},
    )
    store = Store(
        f"s3://{s3_bucket}", ["--endpoint-url", s3_server.url], SeaweedS3.ENV, FilesystemSink("/x")
    )
    result = faces(store, "retention", "--days", "30")
    assert result.returncode == 0, result.stderr
    rules = {
        r["ID"]: r for r in client.get_bucket_lifecycle_configuration(Bucket=s3_bucket)["Rules"]
    }
    assert set(rules) == {"logs", "facefleet-faces", "facefleet-deadletter"}
    assert rules["facefleet-faces"]["Expiration"]["Days"] == 30
    assert rules["facefleet-faces"]["Filter"]["Prefix"] == "faces/"
    assert rules["facefleet-deadletter"]["Filter"]["Prefix"] == "deadletter/"
    shown = faces(store, "retention", "--show")
    assert shown.stdout.splitlines() == ["faces/\t30 days", "deadletter/\t30 days"]

    assert faces(store, "retention", "--days", "0").returncode == 0
    rules = {
        r["ID"]: r for r in client.get_bucket_lifecycle_configuration(Bucket=s3_bucket)["Rules"]
    }
    assert set(rules) == {"logs"}
    shown = faces(store, "retention", "--show")
    assert shown.stdout.splitlines() == ["faces/\tkept forever", "deadletter/\tkept forever"]


def test_retention_on_a_directory_deletes_exactly_what_is_older(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = Store(str(root), [], {}, FilesystemSink(root), root=root)
    metas = stored_fleet(store)
    old_letter = root / "deadletter/2020/01/02/030405_0123456789abcdef.bin"
    old_letter.parent.mkdir(parents=True)
    old_letter.write_bytes(b"junk")
    old_letter.with_suffix(".json").write_text("{}")
    earlier = faces(store, "delete", "--id", metas["b1"].id, "--yes")
    assert earlier.returncode == 0
    records_before = store.keys("deletions/")

    result = faces(store, "retention", "--days", "7")
    assert result.returncode == 0, result.stderr
    assert "deleted 2 faces and 1 dead letters" in result.stdout
    remaining = {f["id"] for f in listed(faces(store, "list", "--json"))}
    assert remaining == {metas[n].id for n in ("a1", "a2", "b2")}
    assert not old_letter.exists()
    assert len(store.keys("deadletter/")) == 2  # today's dead letter (.bin and .json) stays
    records = store.keys("deletions/")
    assert set(records_before) < set(records)  # retention keeps the older records
    newest = json.loads(store.read(next(k for k in records if k not in records_before)))
    assert sorted(newest["ids"]) == sorted(metas[n].id for n in ("a3", "b3"))
    assert newest["criteria"]["retention_days"] == 7


def test_store_from_a_processor_config(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = Store(str(root), [], {}, FilesystemSink(root), root=root)
    metas = stored_fleet(store)
    config = tmp_path / "processor.toml"
    config.write_text(f'[storage]\nkind = "filesystem"\npath = "{root}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "facefleet", "faces", "list", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert {f["id"] for f in listed(result)} == {m.id for m in metas.values()}


@pytest.mark.s3
def test_reconcile_counts_a_detector_record_against_the_store(store: Store, tmp_path: Path) -> None:
    metas = stored_fleet(store)
    missing = face_meta("cam-a", b"never stored", ts=utc_timestamp(NOW - timedelta(days=4)))
    recorded = [metas["a1"], metas["a2"], missing]
    record = tmp_path / "published.log"
    record.write_text(
        "".join(f"{m.ts}\t{m.id}\tjournaled\n" for m in recorded) + "2026-12-0"  # torn tail
    )
    result = faces(store, "reconcile", "--node", "cam-a", str(record))
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        f"missing\t{missing.id}",
        "3 recorded, 2 stored, 1 missing (0 of them published without the journal), 0 stored twice",
    ]
    record.write_text("".join(f"{m.ts}\t{m.id}\tjournaled\n" for m in recorded[:2]))
    assert faces(store, "reconcile", "--node", "cam-a", str(record)).returncode == 0
    nothing = faces(store, "reconcile", "--node", "cam-a", str(tmp_path / "absent.log"))
    assert nothing.returncode == 2
    assert nothing.stderr.count("\n") == 1 and "absent.log" in nothing.stderr
