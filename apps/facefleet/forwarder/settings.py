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
    are counted in the heartbeat (`dropped`) and logged. Faces spooled longer than
    `max_age_s` (0: no limit) are deleted undelivered, counted (`expired`) and logged: the
    retention of personal data on the device. `secure_delete` zeroes the payload of every
    deleted message in its segment file once the delete is on the disk, and its row in the
    spool file and, within `scrub_interval_s`, in its WAL (false: the bytes stay until their
    segment file goes or the freed pages are reused)."""

    path: str = "/var/lib/facefleet/forwarder/spool.sqlite"
    max_bytes: int = 1024 * 1024 * 1024
    when_full: Literal["drop-oldest", "drop-newest"] = "drop-oldest"
    max_age_s: float = 0.0
    secure_delete: bool = True
    scrub_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if self.max_bytes < 64 * 1024:
            raise ValueError("max_bytes must be at least 65536")
        if not 0 <= self.scrub_interval_s <= 60:
            raise ValueError("scrub_interval_s must be 0..60")
        if self.max_age_s < 0:
            raise ValueError("max_age_s must be 0 (no limit) or more")


@dataclass(frozen=True)
class UplinkSettings:
    """At most `inflight` messages awaiting the cloud broker's PUBACK, and at most `max_rate`
    messages per second (0: no limit) while a backlog drains.

    `confirm` says when a spooled face may be deleted: `receipt` (default) once a processor
    confirms it stored the face (`<prefix>/<node>/receipts`), `puback` as soon as the cloud
    broker acknowledges it (for consumers that send no receipts; a broker failure can then lose
    faces it acknowledged). With receipts, at most `unconfirmed_max` faces are out without one;
    a face whose receipt has not come `receipt_timeout_s` after its PUBACK is sent again (the
    wait doubles per attempt up to ten times that), and so is one the broker had no subscriber
    for. Status messages are deleted on their PUBACK in both modes."""

    inflight: int = 32
    max_rate: float = 0.0
    confirm: Literal["receipt", "puback"] = "receipt"
    unconfirmed_max: int = 2000
    receipt_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.inflight <= 1000:
            raise ValueError("inflight must be 1..1000")
        if self.max_rate < 0:
            raise ValueError("max_rate must not be negative")
        if self.unconfirmed_max < self.inflight:
            raise ValueError("unconfirmed_max must be at least inflight")
        if self.receipt_timeout_s < 1:
            raise ValueError("receipt_timeout_s must be at least 1")


@dataclass(frozen=True)
class ForwarderConfig(ServiceSettings):
    edge: MqttSettings = field(default_factory=MqttSettings)
    cloud: MqttSettings = field(default_factory=lambda: MqttSettings(port=8883, tls=True))
    spool: SpoolSettings = field(default_factory=SpoolSettings)
    uplink: UplinkSettings = field(default_factory=UplinkSettings)
