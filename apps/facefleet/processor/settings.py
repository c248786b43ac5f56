"""Configuration of the processor (`/etc/facefleet/processor.toml`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from facefleet.contract import valid_node
from facefleet.mqtt import MqttSettings
from facefleet.settings import ServiceSettings


@dataclass(frozen=True)
class StorageSettings:
    """`filesystem` writes image + `.json` sidecar under `path`; `s3` writes to `bucket`
    with the default boto3 credential chain (instance profile on EC2) unless `endpoint_url`
    points at an S3-compatible store. `checksums`: boto3's request/response checksum mode;
    `when_required` works with stores that do not know the newer CRC checksums.
    `timeout_s` bounds one request; failed writes are retried with backoff between
    `retry_min_s` and `retry_max_s` for as long as it takes. `encryption`: server-side
    encryption of every object, `AES256` (SSE-S3, keys managed by the store), `aws:kms`
    (SSE-KMS; `kms_key_id` names the key, empty = the account's `aws/s3` key) or `none` (for a
    store that refuses SSE headers; encrypt at rest there by other means)."""

    kind: Literal["filesystem", "s3"] = "filesystem"
    path: str = "/var/lib/facefleet/processor/store"
    bucket: str = ""
    region: str = ""
    endpoint_url: str = ""
    checksums: Literal["when_required", "when_supported"] = "when_required"
    conditional_put: bool = True
    encryption: Literal["AES256", "aws:kms", "none"] = "AES256"
    kms_key_id: str = ""
    timeout_s: float = 30.0
    retry_min_s: float = 0.5
    retry_max_s: float = 30.0

    def __post_init__(self) -> None:
        if self.kind == "s3" and not self.bucket:
            raise ValueError("kind = 's3' needs a bucket")
        if self.kms_key_id and self.encryption != "aws:kms":
            raise ValueError("kms_key_id needs encryption = 'aws:kms'")
        if not 0 < self.retry_min_s <= self.retry_max_s:
            raise ValueError("need 0 < retry_min_s <= retry_max_s")


@dataclass(frozen=True)
class ValidationSettings:
    """Limits a face message must meet; anything else is dead-lettered with its reason.
    `not_devices`: identities that are not devices (the cloud hosts, the monitor): a face
    under their name is refused even if a broker let it through (the role fills it in)."""

    max_bytes: int = 4 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    not_devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProcessorConfig(ServiceSettings):
    """`group` names the shared subscription; `workers` store in parallel. `instance` tells
    replicas on one host apart (client id `facefleet-processor-<node>-<instance>`, heartbeat
    service `processor-<instance>`); replicas on different hosts need none."""

    mqtt: MqttSettings = field(default_factory=MqttSettings)
    group: str = "processors"
    workers: int = 4
    instance: str = ""
    storage: StorageSettings = field(default_factory=StorageSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.workers <= 64:
            raise ValueError("workers must be 1..64")
        if self.instance and not valid_node(self.instance):
            raise ValueError("instance must be letters, digits, '.', '_' or '-'")
