"""Configuration of the audit logger (`/etc/facefleet/logger.toml`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from facefleet.mqtt import MqttSettings
from facefleet.settings import ServiceSettings


@dataclass(frozen=True)
class AuditSettings:
    """The JSON-lines audit file, rotated at `max_bytes` keeping `backups` old files. With
    `max_age_s` (0: no limit) no line is kept longer than that: the file is also rotated once
    its first line is a tenth of that old, and old files go once their newest line is nine
    tenths old (so the oldest line in them is at most `max_age_s` old)."""

    path: str = "/var/log/facefleet/audit.jsonl"
    max_bytes: int = 10 * 1024 * 1024
    backups: int = 5
    stderr: bool = True
    max_age_s: float = 0.0

    def __post_init__(self) -> None:
        if self.max_bytes < 1024:
            raise ValueError("max_bytes must be at least 1024")
        if self.max_age_s < 0:
            raise ValueError("max_age_s must be 0 (no limit) or more")


@dataclass(frozen=True)
class LoggerConfig(ServiceSettings):
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
