"""Where the processor puts faces: S3 (through boto3) or a local directory.

`store` is idempotent per key: a redelivered message finds its object already there and is
reported as a duplicate instead of being written twice. Both sinks raise StorageUnavailable
for failures worth retrying (endpoint down, throttling, disk full); the processor then keeps
the message unacknowledged and retries with backoff.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from facefleet.config import ConfigError
from facefleet.contract import DEAD_LETTER_PREFIX, PROBE_PREFIX, FaceMeta, storage_key
from facefleet.processor.settings import StorageSettings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)


class StorageUnavailable(Exception):
    """The store could not take the write now; retrying later may succeed."""


class Sink(Protocol):
    def store(self, meta: FaceMeta, payload: bytes) -> bool:
        """Write the face at its contract key; False if it was already there."""

    def dead_letter(self, topic: str, reason: str, payload: bytes, details: dict[str, Any]) -> str:
        """Keep a rejected message with its reason; returns where it went."""

    def describe(self) -> str: ...

    def check_writable(self, node: str) -> None:
        """Write a small probe (`probe/<node>-processor`) at start; ConfigError saying what
        is missing when the store refuses it, StorageUnavailable when it cannot be reached."""


#: S3 error codes that no retry fixes: the operator must create or grant something.
S3_SETUP_ERRORS = {
    "NoSuchBucket": "the bucket does not exist (create it; facefleet does not)",
    "AccessDenied": "access denied (the processor's role needs the policy in "
    "iam/processor-policy.json)",
    "InvalidAccessKeyId": "the access key is not known to S3",
    "SignatureDoesNotMatch": "the secret key does not match the access key",
    "PermanentRedirect": "the bucket is in another region (set processor_s3_region)",
    "AuthorizationHeaderMalformed": "wrong region for this bucket (set processor_s3_region)",
}


def probe_key(node: str) -> str:
    return f"{PROBE_PREFIX}{node}-processor"


def dead_letter_key(topic: str, payload: bytes, details: dict[str, Any]) -> str:
    """deadletter/<YYYY>/<MM>/<DD>/<time>_<digest>: the digest covers topic, properties and
    payload, so distinct bad messages never share a place and a redelivery reuses its own."""
    now = datetime.now(timezone.utc)
    digest = hashlib.sha256(
        topic.encode() + b"\0" + json.dumps(details, sort_keys=True).encode() + b"\0" + payload
    ).hexdigest()[:16]
    return f"{DEAD_LETTER_PREFIX}{now:%Y/%m/%d}/{now:%H%M%S}_{digest}"


_DEAD_LETTER_RE = re.compile(r"^deadletter/(\d{4}/\d{2}/\d{2}/\d{6})_[0-9a-f]{16}\.(bin|json)$")


def dead_letter_time(key: str) -> datetime | None:
    """When the dead letter at `key` was written (from its key); None for other keys."""
    match = _DEAD_LETTER_RE.match(key)
    if not match:
        return None
    return datetime.strptime(match[1], "%Y/%m/%d/%H%M%S").replace(tzinfo=timezone.utc)


class FilesystemSink:
    """Image plus `.json` sidecar under a root directory, each written atomically (temporary
    file, fsync, rename). The image is renamed last, so its presence means complete."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"{self.root}: {exc.strerror}") from exc

    def describe(self) -> str:
        return f"directory {self.root}"

    def check_writable(self, node: str) -> None:
        try:
            self._write_atomic(self.root / probe_key(node), b"facefleet processor start\n")
        except OSError as exc:
            raise ConfigError(
                f"storage directory {self.root}: cannot write: {exc.strerror}"
            ) from None

    def _write_atomic(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def store(self, meta: FaceMeta, payload: bytes) -> bool:
        path = self.root / storage_key(meta)
        if path.exists():
            return False
        try:
            sidecar = json.dumps(meta.as_dict(), indent=1, sort_keys=True).encode()
            self._write_atomic(path.with_suffix(".json"), sidecar)
            self._write_atomic(path, payload)
        except OSError as exc:
            raise StorageUnavailable(f"{path}: {exc.strerror}") from exc
        return True

    def dead_letter(self, topic: str, reason: str, payload: bytes, details: dict[str, Any]) -> str:
        path = self.root / dead_letter_key(topic, payload, details)
        record = {"topic": topic, "reason": reason, "bytes": len(payload), **details}
        try:
            self._write_atomic(path.with_suffix(".json"), json.dumps(record, indent=1).encode())
            self._write_atomic(path.with_suffix(".bin"), payload)
        except OSError as exc:
            raise StorageUnavailable(f"{path}: {exc.strerror}") from exc
        return str(path.with_suffix(".bin"))


def encryption_arguments(settings: StorageSettings) -> dict[str, Any]:
    """put_object's server-side encryption arguments for `settings.encryption`."""
    if settings.encryption == "none":
        return {}
    arguments: dict[str, Any] = {"ServerSideEncryption": settings.encryption}
    if settings.kms_key_id:
        arguments["SSEKMSKeyId"] = settings.kms_key_id
    return arguments


class S3Sink:
    """One object per face with the contract's user properties as object metadata.

    With `conditional_put` the write is `If-None-Match: *`, so two replicas (or a redelivery)
    racing on one key store it once; stores without conditional writes get a HEAD first.
    """

    def __init__(self, settings: StorageSettings) -> None:
        self.bucket = settings.bucket
        self.conditional_put = settings.conditional_put
        self.encryption = encryption_arguments(settings)
        self.settings = settings
        # the processor retries on top of boto3's two attempts
        self.client = self._client(settings.timeout_s, attempts=2)
        self.endpoint = settings.endpoint_url or "AWS"

    def _client(self, timeout_s: float, attempts: int) -> S3Client:
        import boto3
        from botocore.config import Config

        config = Config(
            retries={"mode": "standard", "max_attempts": attempts},
            connect_timeout=min(5.0, timeout_s),
            read_timeout=timeout_s,
            request_checksum_calculation=self.settings.checksums,
            response_checksum_validation=self.settings.checksums,
        )
        client: S3Client = boto3.client(
            "s3",
            region_name=self.settings.region or None,
            endpoint_url=self.settings.endpoint_url or None,
            config=config,
        )
        return client

    def describe(self) -> str:
        return f"s3://{self.bucket} ({self.endpoint})"

    def check_writable(self, node: str) -> None:
        from botocore.exceptions import ClientError, NoCredentialsError

        key = probe_key(node)
        # one quick attempt: a slow or stopped store must not hold the start (faces wait)
        probe = self._client(min(5.0, self.settings.timeout_s), attempts=1)
        try:
            probe.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=b"facefleet processor start\n",
                **self.encryption,
            )
        except NoCredentialsError:
            raise ConfigError(
                f"s3://{self.bucket}: no AWS credentials (an instance profile on EC2, or "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in processor_environment)"
            ) from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in S3_SETUP_ERRORS:
                raise ConfigError(
                    f"s3://{self.bucket}: cannot write {key}: {code}: {S3_SETUP_ERRORS[code]}"
                ) from None
            raise StorageUnavailable(f"put {key}: {code or exc}") from exc
        except self._errors() as exc:
            raise StorageUnavailable(f"put {key}: {exc}") from exc

    def _errors(self) -> tuple[type[BaseException], ...]:
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError)

    def store(self, meta: FaceMeta, payload: bytes) -> bool:
        from botocore.exceptions import ClientError

        key = storage_key(meta)
        extra: dict[str, Any] = {}
        try:
            if self.conditional_put:
                extra["IfNoneMatch"] = "*"
            elif self._exists(key):
                return False
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=payload,
                ContentType=meta.content_type,
                Metadata=meta.as_dict(),
                **self.encryption,
                **extra,
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "412"):
                return False
            if code in ("NoSuchBucket", "AccessDenied", "InvalidAccessKeyId"):
                log.error("S3 refused the write of %s: %s", key, code)
            raise StorageUnavailable(f"put {key}: {code or exc}") from exc
        except self._errors() as exc:
            raise StorageUnavailable(f"put {key}: {exc}") from exc
        return True

    def _exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def dead_letter(self, topic: str, reason: str, payload: bytes, details: dict[str, Any]) -> str:
        key = dead_letter_key(topic, payload, details) + ".bin"
        metadata = {"topic": topic, "reason": reason[:1024]}
        metadata = {k: v.encode("ascii", "replace").decode() for k, v in metadata.items()}
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=payload,
                ContentType="application/octet-stream",
                Metadata=metadata,
                **self.encryption,
            )
            self.client.put_object(
                Bucket=self.bucket,
                Key=key[: -len(".bin")] + ".json",
                Body=json.dumps({"topic": topic, "reason": reason, **details}).encode(),
                ContentType="application/json",
                **self.encryption,
            )
        except self._errors() as exc:
            raise StorageUnavailable(f"dead-letter {key}: {exc}") from exc
        return f"s3://{self.bucket}/{key}"


def make_sink(settings: StorageSettings) -> Sink:
    if settings.kind == "s3":
        return S3Sink(settings)
    return FilesystemSink(settings.path)
