"""What the feed hands to the app: one small frozen dataclass per MQTT message or connection
change, already checked against the contract (pure Python, no Textual and no MQTT)."""

from __future__ import annotations

from dataclasses import dataclass

from facefleet.contract import FaceMeta, Status


@dataclass(frozen=True)
class StatusEvent:
    """One status heartbeat (already checked against the contract)."""

    node: str
    service: str
    status: Status
    retained: bool = False
    size: int = 0


@dataclass(frozen=True)
class FaceEvent:
    """One face message; `problem` is set when the payload cannot be an image of its type."""

    meta: FaceMeta
    payload: bytes
    retained: bool = False
    problem: str | None = None

    @property
    def size(self) -> int:
        return len(self.payload)


@dataclass(frozen=True)
class FeedError:
    """A message that breaks the contract: shown as an alert entry, never a crash."""

    topic: str
    node: str | None
    reason: str
    size: int = 0


@dataclass(frozen=True)
class ConnectionEvent:
    """The feed's connection to the broker changed: connecting, connected, reconnecting,
    unreachable (TCP or TLS failed; `detail` says why), refused (by the broker: not authorised)
    or closed."""

    state: str
    detail: str = ""


FeedEvent = StatusEvent | FaceEvent | FeedError | ConnectionEvent
