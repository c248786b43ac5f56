"""Configuration of the forwarder (`/etc/facefleet/forwarder.toml`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from facefleet.mqtt import MqttSettings
from facefleet.settings import ServiceSettings


@dataclass(frozen=True)
class SpoolSettings:
    """The durable queue between the brokers. When `max_bytes` is reached, `when_full` decides:
    `drop-oldest` evicts the oldest spooled messages, `drop-newest` refuses the new one; both
    are counted in the heartbeat (`dropped`) and logged."""

    path: str = "/var/lib/facefleet/forwarder/spool.sqlite"
    max_bytes: int = 1024 * 1024 * 1024
    when_full: Literal["drop-oldest", "drop-newest"] = "drop-oldest"

    def __post_init__(self) -> None:
        if self.max_bytes < 64 * 1024:
            raise ValueError("max_bytes must be at least 65536")


@dataclass(frozen=True)
class UplinkSettings:
    """At most `inflight` unacknowledged messages toward the cloud, and at most `max_rate`
    messages per second (0: no limit) while a backlog drains."""

    inflight: int = 32
    max_rate: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.inflight <= 1000:
            raise ValueError("inflight must be 1..1000")
        if self.max_rate < 0:
            raise ValueError("max_rate must not be negative")


@dataclass(frozen=True)
class ForwarderConfig(ServiceSettings):
    edge: MqttSettings = field(default_factory=MqttSettings)
    cloud: MqttSettings = field(default_factory=lambda: MqttSettings(port=8883, tls=True))
    spool: SpoolSettings = field(default_factory=SpoolSettings)
    uplink: UplinkSettings = field(default_factory=UplinkSettings)
