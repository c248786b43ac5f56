"""Configuration of the audit logger (`/etc/facefleet/logger.toml`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from facefleet.mqtt import MqttSettings
from facefleet.settings import ServiceSettings


@dataclass(frozen=True)
class AuditSettings:
    """The JSON-lines audit file, rotated at `max_bytes` keeping `backups` old files."""

    path: str = "/var/log/facefleet/audit.jsonl"
    max_bytes: int = 10 * 1024 * 1024
    backups: int = 5
    stderr: bool = True

    def __post_init__(self) -> None:
        if self.max_bytes < 1024:
            raise ValueError("max_bytes must be at least 1024")


@dataclass(frozen=True)
class LoggerConfig(ServiceSettings):
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
