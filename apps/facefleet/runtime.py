"""The one runtime of the four services: their check, start-up and ordered shutdown.

A service supplies what is its own: its broker links (the subscriptions and the status each
carries), its worker threads, what its main thread does, and its shutdown steps in the order
they must run. The runtime does the rest, the same for every service:

    check: the node name, the certificate files of each broker, then the service's own checks
    build the service (with the stop event SIGTERM and SIGINT set)
    connect the links, start the workers, start the heartbeats
    run the main loop; then, however it ended, every shutdown step in the service's order
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from paho.mqtt.subscribeoptions import SubscribeOptions

from facefleet.config import ConfigError
from facefleet.contract import ServiceFigures
from facefleet.mqtt import PERSISTENT_SESSION_S, ConnectionTracker, MqttSettings, make_client, start
from facefleet.service import Heartbeat, resolve_node, setup_logging, stop_event
from facefleet.settings import ServiceSettings

#: One step of a service's shutdown (what it returns is ignored: paho's disconnect returns a code).
Step = Callable[[], object]
ConfigT = TypeVar("ConfigT", bound=ServiceSettings)


@dataclass(frozen=True)
class StatusSource:
    """Where and how often a service reports its status: `<prefix>/<node>/status/<service>`
    every `interval_s`, with the figures `figures` returns."""

    prefix: str
    node: str
    service: str
    interval_s: float
    figures: Callable[[], ServiceFigures]


class Link:
    """One broker connection of a service: its client (the last will installed), its retained
    heartbeat, and a connection tracker that on every (re)connect subscribes again, announces
    `online` at once and then runs `on_up`."""

    def __init__(
        self,
        name: str,
        settings: MqttSettings,
        client_id: str,
        status: StatusSource,
        *,
        subscriptions: Sequence[tuple[str, SubscribeOptions]] = (),
        on_up: Step | None = None,
        manual_ack: bool = False,
        persistent: bool = False,
        receive_maximum: int | None = None,
        session_expiry_s: int = PERSISTENT_SESSION_S,
    ) -> None:
        self.subscriptions = subscriptions
        self.on_up = on_up
        self.client = make_client(settings, client_id, manual_ack=manual_ack)
        self.tracker = ConnectionTracker(self.client, name, self._up, settings)
        self.heartbeat = Heartbeat(
            self.client,
            status.prefix,
            status.node,
            status.service,
            status.interval_s,
            status.figures,
            cert_file=settings.cert_file if settings.tls else "",
            session=self.tracker,
        )
        #: connect in the background (paho's loop thread reconnects from then on)
        self.connect: Step = partial(
            start,
            self.client,
            settings,
            persistent=persistent,
            receive_maximum=receive_maximum,
            session_expiry_s=session_expiry_s,
        )

    def _up(self) -> None:
        for topic, options in self.subscriptions:
            self.client.subscribe(topic, options=options)
        self.heartbeat.publish("online")
        if self.on_up is not None:
            self.on_up()

    @property
    def connected(self) -> bool:
        return self.tracker.connected.is_set()

    def close(self) -> None:
        """Report `stopped`, disconnect and end paho's loop thread: the usual last step."""
        self.heartbeat.stop()
        self.client.disconnect()
        self.client.loop_stop()


def qos1(topic: str, *, retain_as_published: bool = False) -> tuple[str, SubscribeOptions]:
    """A QoS 1 subscription for `Link`."""
    return topic, SubscribeOptions(qos=1, retainAsPublished=retain_as_published)


class Worker:
    """A daemon thread of a service: started by the runtime once the links are connecting,
    joined (for at most `join_timeout_s`) by one of the service's shutdown steps."""

    def __init__(self, name: str, target: Step, join_timeout_s: float) -> None:
        self.thread = threading.Thread(target=target, name=name, daemon=True)
        self.join_timeout_s = join_timeout_s

    def join(self) -> None:
        self.thread.join(timeout=self.join_timeout_s)


class Service(Protocol):
    """A built service, ready to start: what it supplies to `lifecycle`."""

    @property
    def links(self) -> Sequence[Link]:
        """Its broker connections, connected in this order."""

    @property
    def workers(self) -> Sequence[Worker]:
        """Its threads, started after the links connect."""

    def main_loop(self) -> None:
        """The main thread's work: until the stop event is set, or the work is done."""

    def shutdown_steps(self) -> Sequence[Step]:
        """What stops it, in order: the runtime runs them all once the main loop returns."""


@dataclass(frozen=True)
class ServiceSpec(Generic[ConfigT]):
    """A service as `facefleet <service>` runs it: its config class, the brokers whose
    certificate files must exist (by config section), its own checks and its constructor
    (config, resolved node name, stop event)."""

    config_class: type[ConfigT]
    brokers: Callable[[ConfigT], Mapping[str, MqttSettings]]
    check: Callable[[ConfigT], None]
    build: Callable[[ConfigT, str, threading.Event], Service]


def check_certificate_files(section: str, settings: MqttSettings) -> None:
    for name in ("ca_file", "cert_file", "key_file"):
        value = getattr(settings, name)
        if value and not Path(value).is_file():
            raise ConfigError(f"{section}.{name}: {value} does not exist")


def check(spec: ServiceSpec[ConfigT], cfg: ConfigT) -> str:
    """Everything `--check` validates, as ConfigError; returns the node name."""
    try:
        node = resolve_node(cfg.node)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for section, settings in spec.brokers(cfg).items():
        check_certificate_files(section, settings)
    spec.check(cfg)
    return node


def lifecycle(service: Service) -> None:
    """Start the service, run its main loop, then its shutdown steps in order."""
    for link in service.links:
        link.connect()
    for worker in service.workers:
        worker.thread.start()
    for link in service.links:
        link.heartbeat.start()
    try:
        service.main_loop()
    finally:
        for step in service.shutdown_steps():
            step()


def run(spec: ServiceSpec[ConfigT], cfg: ConfigT) -> int:
    """`facefleet <service>`: check, build and run the service until it stops; 0 when it
    stopped cleanly (a ConfigError on the way is exit status 2, see facefleet.cli)."""
    setup_logging(cfg.log_level)
    node = check(spec, cfg)
    service = spec.build(cfg, node, stop_event())
    lifecycle(service)
    return 0
