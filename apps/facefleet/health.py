"""Fleet health from the status heartbeats, judged one way everywhere.

`StatusTracker` keeps the latest heartbeat of every (node, service) and when it counts from;
`state` and `problem` judge one of them (pure: the clock is an argument); `StatusWatch` is the
read-only broker client that feeds a tracker. `facefleet fleet status` and the rollout's health
gate, the demo and the benchmarks use all of it; the monitor feeds the same judgement from its
own client and model.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt

from facefleet.contract import (
    DEFAULT_PREFIX,
    SERVICES,
    STALE_INTERVALS,
    DetectorFigures,
    ServiceFigures,
    Status,
    all_status_filter,
    parse_status,
    parse_timestamp,
    parse_topic,
)
from facefleet.inventory import InventoryInfo
from facefleet.mqtt import MqttSettings, make_client, start

ONLINE, OFFLINE, STOPPED, STALE, NEVER = "online", "offline", "stopped", "stale", "never seen"
#: A heartbeat is a few hundred bytes; anything this large is not one.
MAX_STATUS_BYTES = 64 * 1024

_Figures = TypeVar("_Figures", bound=ServiceFigures)


#: How long "two devices use one identity" stays a problem after the last sign of it.
CLONE_ALERT_S = 3600.0
#: Instance ids remembered per service (to see heartbeats come back to one they had left).
_INSTANCES_KEPT = 4
_DAY_S = 86400.0


@dataclass(frozen=True)
class Heard:
    """A service's last heartbeat and the time (epoch seconds) its age counts from; the
    instance ids it reported recently (the latest last) and when they last alternated."""

    status: Status
    at: float
    instances: tuple[str, ...] = ()
    alternated_at: float | None = None


def follow(previous: Heard | None, status: Status, at: float) -> Heard:
    """The next `Heard` of a service after `previous`. Heartbeats that come back to an
    instance they had left alternate between two processes with one identity (a restart
    changes the instance once). Judged on heartbeats a service publishes on the cloud broker
    with its own certificate (they carry its expiry): relayed ones may arrive late."""
    instances = previous.instances if previous else ()
    alternated = previous.alternated_at if previous else None
    current = status.instance
    if current and status.cert_expires and (not instances or instances[-1] != current):
        if current in instances:
            alternated = at
        instances = (*(i for i in instances if i != current), current)[-_INSTANCES_KEPT:]
    return Heard(status, at, instances, alternated)


def heard_at(status: Status, received: float, retained: bool) -> float:
    """When a heartbeat counts from: a retained one may be old (the broker replays it on
    subscribe), so it counts from when it was sent; a live one from when it arrived (a device
    with a wrong clock is not stale)."""
    if retained and status.ts:
        try:
            return min(received, parse_timestamp(status.ts).timestamp())
        except ValueError:
            pass
    return received


def state(heard: Heard | None, now: float) -> str:
    """online, offline or stopped as reported; stale when an online service missed three
    intervals; never seen without a heartbeat."""
    if heard is None:
        return NEVER
    interval = heard.status.interval_s
    if heard.status.state == ONLINE and interval and now - heard.at > STALE_INTERVALS * interval:
        return STALE
    return heard.status.state


def problem(
    service: str, heard: Heard | None, now: float, expect_version: str | None
) -> str | None:
    """What is wrong with a service that should run (None: healthy): not online, stale, another
    version than expected, or a detector without frames."""
    if heard is None:
        return f"{service} never reported"
    status = heard.status
    if status.state != ONLINE:
        return f"{service} {status.state}"
    try:
        parse_timestamp(status.ts or "")
    except ValueError:
        return f"{service} heartbeat without a valid ts"
    if state(heard, now) == STALE:
        return f"{service} stale ({now - heard.at:.0f} s without a heartbeat)"
    if expect_version is not None and status.version != expect_version:
        return f"{service} runs {status.version}, expected {expect_version}"
    figures = status.figures
    if isinstance(figures, DetectorFigures) and not (figures.fps or 0) > 0:
        return "detector produces no frames"
    return None


def _epoch(timestamp: str | None) -> float | None:
    try:
        return parse_timestamp(timestamp).timestamp() if timestamp else None
    except ValueError:
        return None


def certificate_days(status: Status | None, now: float) -> float | None:
    """Days until the certificate a heartbeat names expires (negative: expired), or None."""
    expires = _epoch(status.cert_expires) if status else None
    return None if expires is None else (expires - now) / _DAY_S


def certificate_text(days: float, expires: str) -> str:
    """`expires in 12 days (2026-12-14)` or `expired on 2026-12-14`."""
    if days < 0:
        return f"expired on {expires[:10]}"
    return f"expires in {int(days)} day{'s' if int(days) != 1 else ''} ({expires[:10]})"


def certificate_problem(
    service: str, heard: Heard | None, now: float, warn_days: float
) -> str | None:
    """The service's certificate expires within `warn_days` (site.yml renews it by then: it
    did not run, or failed), or has expired."""
    status = heard.status if heard else None
    days = certificate_days(status, now)
    if status is None or days is None or days >= warn_days:
        return None
    return f"{service} certificate {certificate_text(days, status.cert_expires or '')}"


def clone_problem(node: str, service: str, heard: Heard | None, now: float) -> str | None:
    """Two devices (processes) use this node's identity: the broker took the service's session
    over, or its heartbeats alternated between two instances, within CLONE_ALERT_S."""
    if heard is None:
        return None
    status = heard.status
    taken_at = _epoch(status.taken_over_at)
    signs = []
    if status.taken_over and taken_at is not None and now - taken_at < CLONE_ALERT_S:
        signs.append(
            f"{service} session taken over {status.taken_over} time(s), last at "
            f"{(status.taken_over_at or '')[11:19]} UTC"
        )
    if heard.alternated_at is not None and now - heard.alternated_at < CLONE_ALERT_S:
        signs.append(
            f"{service} heartbeats alternate between instances {', '.join(heard.instances[-2:])}"
        )
    if not signs:
        return None
    return f"two devices use the identity of {node}: {'; '.join(signs)}"


class StatusTracker:
    """The latest heartbeat of every (node, service): paho's thread records, anyone reads."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        #: set on every heartbeat recorded (clear it before waiting for the next)
        self.changed = threading.Event()
        self._heard: dict[tuple[str, str], Heard] = {}
        self._lock = threading.Lock()

    def record(self, status: Status, retained: bool) -> None:
        at = heard_at(status, self.clock(), retained)
        key = (status.node, status.service)
        with self._lock:
            self._heard[key] = follow(self._heard.get(key), status, at)
        self.changed.set()

    def snapshot(self) -> dict[tuple[str, str], Heard]:
        with self._lock:
            return dict(self._heard)

    def status(self, node: str, service: str) -> Status | None:
        with self._lock:
            heard = self._heard.get((node, service))
        return heard.status if heard else None

    def figures(self, node: str, service: str, kind: type[_Figures]) -> _Figures:
        """The figures of a service's last heartbeat; all None before the first."""
        status = self.status(node, service)
        figures = status.figures if status else None
        return figures if isinstance(figures, kind) else kind()

    def clear(self) -> None:
        """Forget every heartbeat (a benchmark's next round waits for fresh ones)."""
        with self._lock:
            self._heard.clear()

    def online(self, node: str, service: str) -> bool:
        """The service's last heartbeat says online (however old it is)."""
        status = self.status(node, service)
        return status is not None and status.state == ONLINE


class StatusWatch(StatusTracker):
    """A read-only client that tracks the heartbeats on a broker: of every node, or only of
    `nodes` (then only of the contract's services)."""

    def __init__(
        self,
        settings: MqttSettings,
        prefix: str = DEFAULT_PREFIX,
        nodes: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.prefix = prefix
        self.nodes = nodes
        self.subscribed = threading.Event()
        #: When the last retained heartbeat came (or the subscription was answered): the
        #: broker replays them all right after it
        self.retained_at = time.monotonic()
        self.refused: str | None = None
        self.client = make_client(settings, f"facefleet-status-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None
    ) -> None:
        if reason.is_failure:
            self.refused = str(reason)
            self.changed.set()
            return
        client.subscribe(all_status_filter(self.prefix), qos=1)

    def _on_subscribe(self, *_args: Any) -> None:
        self.retained_at = time.monotonic()
        self.subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        if message.retain:
            self.retained_at = time.monotonic()
        parsed = parse_topic(self.prefix, message.topic)
        if parsed is None:
            return
        node, _kind, service = parsed
        if service is None:
            return
        if self.nodes is not None and (node not in self.nodes or service not in SERVICES):
            return
        try:
            status = parse_status(node, service, bytes(message.payload), MAX_STATUS_BYTES)
        except ValueError:
            return  # the monitor shows malformed heartbeats; here they count as none
        self.record(status, bool(message.retain))

    def start(self) -> StatusWatch:
        start(self.client, self.settings)
        return self

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> StatusWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def watcher_settings(settings: MqttSettings) -> MqttSettings:
    """`settings` with a watcher's short keepalive and reconnect delay, so that a lost broker
    shows within seconds."""
    return replace(settings, keepalive_s=10, reconnect_min_s=1, reconnect_max_s=5)


def inventory_watcher_settings(info: InventoryInfo, pki_dir: Path | None = None) -> MqttSettings:
    """The monitor's read-only identity on an inventory's cloud broker (certificates from the
    PKI dir, by default the inventory's)."""
    ca, cert, key = (str(path) for path in info.pki_files(pki_dir))
    broker = MqttSettings(
        info.broker_host, info.broker_port, tls=True, ca_file=ca, cert_file=cert, key_file=key
    )
    return watcher_settings(broker)
