"""The operator's view of stored faces: list, read, delete and expire them on any sink.

A store is a directory (what the filesystem sink writes: image plus `.json` sidecar) or
`s3://BUCKET[/PREFIX]` (one object per face with the metadata as object metadata). Both follow
the contract's key layout (`facefleet.contract.parse_storage_key`), under an optional prefix.
Every deletion leaves a JSON record under `deletions/` (when, who, criteria, count, ids), which
retention never touches. Used by `facefleet faces` and the monitor's stored-faces view.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from facefleet.config import ConfigError
from facefleet.contract import (
    DEAD_LETTER_PREFIX,
    DELETIONS_PREFIX,
    FACES_PREFIX,
    FaceKey,
    parse_storage_key,
    utc_timestamp,
)
from facefleet.processor.sinks import dead_letter_time

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: Lifecycle rule ids facefleet owns on a bucket; rules with other ids are left alone.
LIFECYCLE_RULES = {"facefleet-faces": FACES_PREFIX, "facefleet-deadletter": DEAD_LETTER_PREFIX}
#: S3 deletes at most this many keys per request.
_DELETE_BATCH = 1000

Progress = Callable[[str, int], None]


class StoreError(Exception):
    """The store refused or failed an operation; the text is one line for the operator."""


@dataclass(frozen=True)
class StoredFace:
    """One face in a store: where it is and what its key says."""

    key: str
    node: str
    ts: str
    id: str
    size: int

    @classmethod
    def from_key(cls, face: FaceKey, size: int, key: str) -> StoredFace:
        return cls(key=key, node=face.node, ts=face.ts, id=face.id, size=size)

    @property
    def captured(self) -> datetime:
        return FaceKey(self.key, self.node, self.ts, self.id, "").captured

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "node": self.node, "ts": self.ts, "size": self.size, "key": self.key}


@dataclass(frozen=True)
class FaceFilter:
    """Which faces: all of `node` (None: every node) captured in [since, until)."""

    node: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    ids: frozenset[str] = frozenset()

    def matches(self, face: FaceKey) -> bool:
        if self.node is not None and face.node != self.node:
            return False
        if self.ids and face.id not in self.ids:
            return False
        if self.since is not None or self.until is not None:
            captured = face.captured
            if self.since is not None and captured < self.since:
                return False
            if self.until is not None and captured >= self.until:
                return False
        return True

    def describe(self) -> dict[str, Any]:
        """The criteria as they go into a deletion record."""
        out: dict[str, Any] = {}
        if self.ids:
            out["ids"] = sorted(self.ids)
        if self.node is not None:
            out["node"] = self.node
        if self.since is not None:
            out["since"] = utc_timestamp(self.since)
        if self.until is not None:
            out["until"] = utc_timestamp(self.until)
        return out


@dataclass(frozen=True)
class DeletionRecord:
    """What a deletion leaves behind under `deletions/`."""

    when: str
    who: dict[str, str]
    store: str
    criteria: dict[str, Any]
    count: int
    ids: list[str]
    keys: list[str]
    #: where the record itself is kept, under `deletions/<YYYY>/<MM>/<DD>/`
    key: str = field(default="", compare=False)

    def encode(self) -> bytes:
        body = asdict(self)
        del body["key"]
        return json.dumps(body, indent=1).encode()


def record_key(when: datetime) -> str:
    return f"{DELETIONS_PREFIX}{when:%Y/%m/%d}/{utc_timestamp(when)}_{uuid.uuid4().hex[:12]}.json"


def who_am_i(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Who deletes, as far as this machine knows: the login, the host and (S3) the key id."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return {"user": user, "host": socket.gethostname(), **(extra or {})}


class FaceStore(Protocol):
    def describe(self) -> str: ...

    def faces(self, which: FaceFilter, progress: Progress | None = None) -> Iterator[StoredFace]:
        """The faces `which` selects, in key order (node, then capture time)."""

    def read(self, face: StoredFace) -> tuple[bytes, dict[str, str]]:
        """The image and its metadata."""

    def remove(self, faces: list[StoredFace]) -> list[StoredFace]:
        """Delete image and metadata of each; returns those deleted (StoreError on failure)."""

    def remove_dead_letters_before(self, cutoff: datetime) -> int: ...

    def put_record(self, key: str, body: bytes) -> None: ...


def find_face(store: FaceStore, face_id: str) -> StoredFace:
    """The face with this id (a full listing: keys are ordered by node and time, not id)."""
    for face in store.faces(FaceFilter(ids=frozenset({face_id}))):
        return face
    raise StoreError(f"no face with id {face_id} in {store.describe()}")


def delete_faces(
    store: FaceStore,
    faces: list[StoredFace],
    criteria: dict[str, Any],
    who: dict[str, str],
    progress: Progress | None = None,
) -> DeletionRecord:
    """Delete `faces` in batches and write the deletion record, also when a batch fails part
    way (the record then lists what was deleted, and the error is raised after it)."""
    deleted: list[StoredFace] = []
    failure: StoreError | None = None
    for start in range(0, len(faces), _DELETE_BATCH):
        try:
            deleted += store.remove(faces[start : start + _DELETE_BATCH])
        except StoreError as exc:
            failure = exc
            break
        if progress:
            progress("deleted", len(deleted))
    now = datetime.now(timezone.utc)
    record = DeletionRecord(
        when=utc_timestamp(now),
        who=who,
        store=store.describe(),
        criteria=criteria,
        count=len(deleted),
        ids=[face.id for face in deleted],
        keys=[face.key for face in deleted],
        key=record_key(now),
    )
    if deleted or failure is None:
        store.put_record(record.key, record.encode())
    if failure is not None:
        raise StoreError(f"{failure} (after {len(deleted)} of {len(faces)} deleted)")
    return record


def expire(
    store: FaceStore, days: int, who: dict[str, str], now: datetime | None = None
) -> tuple[DeletionRecord, int]:
    """Retention on a store without lifecycle rules: delete faces captured and dead letters
    written more than `days` days ago. Returns the record and the dead letters removed."""
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=days)
    old = list(store.faces(FaceFilter(until=cutoff)))
    record = delete_faces(store, old, {"retention_days": days, "until": utc_timestamp(cutoff)}, who)
    return record, store.remove_dead_letters_before(cutoff)


class DirectoryStore:
    """The filesystem sink's tree: `<root>/faces/.../<ts>_<id>.<ext>` plus `.json` sidecar."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise StoreError(f"{root}: no such directory")
        self.root = root

    def describe(self) -> str:
        return str(self.root)

    def faces(self, which: FaceFilter, progress: Progress | None = None) -> Iterator[StoredFace]:
        base = self.root / FACES_PREFIX
        nodes = (
            [which.node]
            if which.node is not None
            else sorted(os.listdir(base) if base.is_dir() else [])
        )
        seen = 0
        for node in nodes:
            for dirpath, dirnames, filenames in os.walk(base / node):
                dirnames.sort()
                for name in sorted(filenames):
                    path = Path(dirpath, name)
                    key = path.relative_to(self.root).as_posix()
                    parsed = parse_storage_key(key)
                    seen += 1
                    if progress and seen % _DELETE_BATCH == 0:
                        progress("listed", seen)
                    if parsed is None or not which.matches(parsed):
                        continue
                    try:
                        size = path.stat().st_size
                    except FileNotFoundError:  # deleted meanwhile
                        continue
                    yield StoredFace.from_key(parsed, size, key)

    def read(self, face: StoredFace) -> tuple[bytes, dict[str, str]]:
        path = self.root / face.key
        try:
            image = path.read_bytes()
            sidecar = path.with_suffix(".json")
            meta = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        except OSError as exc:
            raise StoreError(f"{path}: {exc.strerror}") from None
        return image, {str(k): str(v) for k, v in meta.items()}

    def remove(self, faces: list[StoredFace]) -> list[StoredFace]:
        deleted = []
        for face in faces:
            path = self.root / face.key
            try:
                # the image goes first: without it the face is gone even if the sidecar stays
                path.unlink(missing_ok=True)
                path.with_suffix(".json").unlink(missing_ok=True)
            except OSError as exc:
                raise StoreError(f"{path}: {exc.strerror}") from None
            deleted.append(face)
            self._prune(path.parent)
        return deleted

    def _prune(self, directory: Path) -> None:
        """Remove directories emptied by a deletion, up to (not including) `faces/`."""
        stop = self.root / FACES_PREFIX
        while directory != stop and directory.is_relative_to(stop):
            try:
                directory.rmdir()
            except OSError:  # not empty
                return
            directory = directory.parent

    def remove_dead_letters_before(self, cutoff: datetime) -> int:
        removed = 0
        base = self.root / DEAD_LETTER_PREFIX
        for path in sorted(base.rglob("*")) if base.is_dir() else []:
            written = dead_letter_time(path.relative_to(self.root).as_posix())
            if written is not None and written < cutoff:
                path.unlink(missing_ok=True)
                removed += path.suffix == ".bin"
        return removed

    def put_record(self, key: str, body: bytes) -> None:
        path = self.root / key
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
        except OSError as exc:
            raise StoreError(f"{path}: {exc.strerror}") from None


def _s3_error(exc: Exception, bucket: str) -> StoreError:
    """One line for what the operator must fix."""
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return StoreError("no AWS credentials found (environment, profile or instance role)")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        operation = exc.operation_name
        if code in ("NoSuchBucket", "404") and operation in ("ListObjectsV2", "HeadBucket"):
            return StoreError(f"bucket {bucket} does not exist")
        if code in ("AccessDenied", "403", "AllAccessDisabled"):
            return StoreError(f"access denied to s3://{bucket} ({operation})")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StoreError(f"the S3 endpoint does not accept these credentials ({code})")
        return StoreError(f"s3://{bucket}: {operation} failed: {code or exc}")
    return StoreError(f"s3://{bucket}: {exc}")


class S3Store:
    """A bucket (and optional key prefix) the S3 sink writes to."""

    def __init__(
        self, bucket: str, prefix: str = "", endpoint_url: str = "", region: str = ""
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        session = boto3.Session()
        self.client: S3Client = session.client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region or None,
            config=Config(
                retries={"mode": "standard", "max_attempts": 3},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        credentials = session.get_credentials()
        self.access_key_id = credentials.access_key if credentials else ""

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _errors(self) -> tuple[type[Exception], ...]:
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError)

    def faces(self, which: FaceFilter, progress: Progress | None = None) -> Iterator[StoredFace]:
        listing: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + FACES_PREFIX}
        if which.node is not None:
            listing["Prefix"] += f"{which.node}/"
            if which.since is not None:  # keys are ordered by capture hour within a node
                # after the hour before: SeaweedFS takes `.../HH` for the directory and
                # skips what is in it, faces of the first hour included
                before = which.since - timedelta(hours=1)
                listing["StartAfter"] = listing["Prefix"] + f"{before:%Y/%m/%d/%H}"
        seen = 0
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(**listing):
                for item in page.get("Contents", []):
                    seen += 1
                    parsed = parse_storage_key(item["Key"][len(self.prefix) :])
                    if parsed is None or not which.matches(parsed):
                        continue
                    yield StoredFace.from_key(parsed, item["Size"], item["Key"])
                if progress and seen >= _DELETE_BATCH:
                    progress("listed", seen)
        except self._errors() as exc:
            raise _s3_error(exc, self.bucket) from None

    def read(self, face: StoredFace) -> tuple[bytes, dict[str, str]]:
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=face.key)
            return got["Body"].read(), dict(got.get("Metadata", {}))
        except self._errors() as exc:
            raise _s3_error(exc, self.bucket) from None

    def _delete_keys(self, keys: list[str]) -> list[str]:
        """Delete up to 1000 keys; returns the keys S3 did not delete, with the first error."""
        try:
            answer = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
            )
        except self._errors() as exc:
            raise _s3_error(exc, self.bucket) from None
        errors = answer.get("Errors", [])
        if errors:
            first = errors[0]
            code = first.get("Code", "")
            what = "access denied" if code == "AccessDenied" else code
            raise StoreError(f"s3://{self.bucket}: delete of {first.get('Key')} refused: {what}")
        return keys

    def remove(self, faces: list[StoredFace]) -> list[StoredFace]:
        if faces:
            self._delete_keys([face.key for face in faces])
        return faces

    def remove_dead_letters_before(self, cutoff: datetime) -> int:
        raise StoreError("on S3, retention is a lifecycle rule (facefleet faces retention)")

    def put_record(self, key: str, body: bytes) -> None:
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.prefix + key, Body=body, ContentType="application/json"
            )
        except self._errors() as exc:
            raise _s3_error(exc, self.bucket) from None

    # lifecycle rules ------------------------------------------------------------------------

    def _rules(self) -> list[dict[str, Any]]:
        from botocore.exceptions import ClientError

        try:
            got = self.client.get_bucket_lifecycle_configuration(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchLifecycleConfiguration":
                return []
            raise _s3_error(exc, self.bucket) from None
        except self._errors() as exc:
            raise _s3_error(exc, self.bucket) from None
        return [dict(rule) for rule in got.get("Rules", [])]

    def retention(self) -> dict[str, int | None]:
        """Days after which each of facefleet's prefixes expires (None: kept forever)."""
        days: dict[str, int | None] = dict.fromkeys(LIFECYCLE_RULES.values())
        for rule in self._rules():
            prefix = LIFECYCLE_RULES.get(str(rule.get("ID", "")))
            if prefix is not None and rule.get("Status") == "Enabled":
                days[prefix] = rule.get("Expiration", {}).get("Days")
        return days

    def set_retention(self, days: int) -> None:
        """Replace facefleet's rules (other rules on the bucket stay); 0 removes them."""
        rules: list[Any] = [r for r in self._rules() if r.get("ID") not in LIFECYCLE_RULES]
        if days > 0:
            rules += [
                {
                    "ID": rule_id,
                    "Status": "Enabled",
                    "Filter": {"Prefix": self.prefix + prefix},
                    "Expiration": {"Days": days},
                }
                for rule_id, prefix in LIFECYCLE_RULES.items()
            ]
        try:
            if rules:
                self.client.put_bucket_lifecycle_configuration(
                    Bucket=self.bucket, LifecycleConfiguration={"Rules": rules}
                )
            else:
                self.client.delete_bucket_lifecycle(Bucket=self.bucket)
        except self._errors() as exc:
            raise _s3_error(exc, self.bucket) from None


def open_store(spec: str, endpoint_url: str = "", region: str = "") -> DirectoryStore | S3Store:
    """`s3://BUCKET[/PREFIX]` or a directory; ConfigError for a malformed spec."""
    if spec.startswith("s3://"):
        bucket, _, prefix = spec[len("s3://") :].partition("/")
        if not bucket:
            raise ConfigError(f"{spec}: no bucket (s3://BUCKET[/PREFIX])")
        return S3Store(bucket, prefix, endpoint_url, region)
    if "://" in spec:
        raise ConfigError(f"{spec}: a store is a directory or s3://BUCKET[/PREFIX]")
    return DirectoryStore(Path(spec))


def store_from_processor_config(path: str) -> tuple[str, str, str]:
    """(store spec, endpoint url, region) of the store a processor config writes to."""
    from facefleet import config
    from facefleet.processor.settings import ProcessorConfig

    storage = config.load(ProcessorConfig, path).storage
    if storage.kind == "s3":
        return f"s3://{storage.bucket}", storage.endpoint_url, storage.region
    return storage.path, "", ""
