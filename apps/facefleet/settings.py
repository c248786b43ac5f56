"""Settings every service config file has at its top level."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from facefleet.contract import DEFAULT_PREFIX, valid_node

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


@dataclass(frozen=True)
class ServiceSettings:
    """`node` defaults to the short host name; `heartbeat_s` is the status interval."""

    node: str = ""
    prefix: str = DEFAULT_PREFIX
    heartbeat_s: float = 10.0
    log_level: LogLevel = "INFO"

    def __post_init__(self) -> None:
        if self.node and not valid_node(self.node):
            raise ValueError(
                f"node {self.node!r} is not a valid node name (letters, digits, '.', '_' or '-', "
                "starting with a letter or digit, at most 63 characters)"
            )
        if self.heartbeat_s <= 0:
            raise ValueError("heartbeat_s must be positive")
        if not self.prefix or any(c in self.prefix for c in "+#/ "):
            raise ValueError(f"prefix {self.prefix!r} must be one topic level")
