"""paho-mqtt client construction shared by the services, the demo and the monitor.

Every client speaks MQTT v5, reconnects by itself with paho's backoff, and (for services)
leaves a retained `offline` last will on its status topic.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from facefleet.bufferedclient import BufferedClient
from facefleet.config import ConfigError, read_secret
from facefleet.contract import utc_timestamp
from facefleet.wire import PackedProperties, install

log = logging.getLogger(__name__)

#: How long a persistent session outlives a disconnect on the broker (MQTT v5 session expiry).
PERSISTENT_SESSION_S = 7 * 24 * 3600
#: MQTT v5 DISCONNECT reason: another client connected with our client id (the broker handed
#: it our session). Two devices with one identity would take it from each other in turn.
SESSION_TAKEN_OVER = 0x8E


@dataclass(frozen=True)
class MqttSettings:
    """How to reach one broker."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""
    username: str = ""
    password_file: str = ""
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    reconnect_min_s: int = 1
    reconnect_max_s: int = 30
    #: after our session was taken over, wait this long before connecting again (a clone with
    #: our identity does the same: the two alternate slowly instead of in a tight loop)
    takeover_backoff_s: int = 60

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port out of range: {self.port}")
        if self.tls and bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file go together")
        if self.keepalive_s < 5:
            raise ValueError("keepalive_s must be at least 5")
        if self.takeover_backoff_s < 1:
            raise ValueError("takeover_backoff_s must be at least 1")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def as_table(self, **overrides: Any) -> dict[str, Any]:
        """The non-empty settings as a config-file table (for generated configs)."""
        table = {k: v for k, v in dataclasses.asdict(self).items() if v not in ("", None)}
        return {**table, **overrides}


def make_client(
    settings: MqttSettings,
    client_id: str,
    *,
    manual_ack: bool = False,
) -> mqtt.Client:
    """A configured but unconnected MQTT v5 client.

    `manual_ack` leaves PUBACKs of received messages to the caller, so nothing is
    acknowledged before it is durable. Received PUBLISH packets are decoded by
    `facefleet.wire` (paho's own decoder costs more than the rest of our work per face).
    """
    client_class = BufferedClient if install() else mqtt.Client
    client = client_class(
        CallbackAPIVersion.VERSION2,
        client_id=settings.client_id or client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
        manual_ack=manual_ack,
    )
    client.enable_logger(logging.getLogger(f"{__name__}.paho"))
    client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)
    if settings.username:
        password = read_secret(settings.password_file) if settings.password_file else None
        client.username_pw_set(settings.username, password)
    if settings.tls:
        client.tls_set_context(tls_context(settings))
    return client


def tls_context(settings: MqttSettings) -> ssl.SSLContext:
    """The client TLS context; a CA, certificate or key file that cannot be used is a
    ConfigError naming the file and what is wrong with it."""
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=settings.ca_file or None
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"CA file {settings.ca_file}: not a usable CA certificate ({_ssl_reason(exc)})"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.cert_file:
        try:
            context.load_cert_chain(settings.cert_file, settings.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"certificate {settings.cert_file} with key {settings.key_file}: not usable "
                f"({_ssl_reason(exc)})"
            ) from None
    return context


def _ssl_reason(exc: BaseException) -> str:
    """`[X509: NO_CERTIFICATE_OR_CRL_FOUND] no certificate or crl found (_ssl.c:4154)` ->
    `no certificate or crl found`."""
    if isinstance(exc, ssl.SSLError):
        text = str(exc.args[-1]) if exc.args else str(exc)
        text = text.split("] ", 1)[-1].split(" (_ssl.c", 1)[0]
        return "not PEM data of the right kind" if text == "PEM lib" else text
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


#: How long `why_unreachable` waits for the TCP connection and the TLS handshake each.
PROBE_TIMEOUT_S = 3.0


def why_unreachable(settings: MqttSettings, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """Why a connection attempt to the broker failed, found by repeating its first steps
    (paho's connect-failure callback carries no reason): name lookup, TCP connect, the TLS
    handshake with the same context, and the server's verdict on our certificate."""
    try:
        sock = socket.create_connection((settings.host, settings.port), timeout=timeout_s)
    except socket.gaierror:
        return f"host name {settings.host} not found"
    except ConnectionRefusedError:
        return "connection refused"
    except socket.timeout:
        return f"timed out after {timeout_s:g} s (no answer: address, port or firewall?)"
    except OSError as exc:
        return exc.strerror or str(exc)
    with sock:
        if not settings.tls:
            return "the broker accepted TCP but the MQTT connection failed"
        try:
            context = tls_context(settings)
        except ConfigError as exc:
            return str(exc)
        try:
            tls = context.wrap_socket(sock, server_hostname=settings.host)
        except ssl.SSLCertVerificationError as exc:
            return f"TLS: the broker's certificate is not trusted: {exc.verify_message}"
        except ssl.SSLError as exc:
            return f"TLS failure: {_ssl_reason(exc)}"
        except OSError as exc:
            return f"TLS: {exc.strerror or exc}"
        with tls:
            tls.settimeout(1.0)
            try:
                tls.recv(1)  # TLS 1.3 judges our certificate after the handshake
            except ssl.SSLError as exc:
                return f"TLS: the broker refused our certificate ({_ssl_reason(exc)})"
            except socket.timeout:
                pass
            except OSError as exc:
                return f"TLS: {exc.strerror or exc}"
    return "TLS and TCP work; the MQTT connection failed"


def connect_properties(
    *,
    persistent: bool,
    receive_maximum: int | None = None,
    session_expiry_s: int = PERSISTENT_SESSION_S,
) -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if persistent:
        props.SessionExpiryInterval = session_expiry_s
    if receive_maximum:
        props.ReceiveMaximum = receive_maximum
    return props


def start(
    client: mqtt.Client,
    settings: MqttSettings,
    *,
    persistent: bool = False,
    receive_maximum: int | None = None,
    session_expiry_s: int = PERSISTENT_SESSION_S,
) -> None:
    """Connect in the background; paho's loop thread reconnects with backoff from then on.

    `persistent` keeps the broker session (subscriptions and queued QoS 1 messages) across
    disconnects (for `session_expiry_s`); `receive_maximum` bounds the unacknowledged messages
    the broker sends us.
    """
    client.connect_async(
        settings.host,
        settings.port,
        keepalive=settings.keepalive_s,
        clean_start=not persistent,
        properties=connect_properties(
            persistent=persistent,
            receive_maximum=receive_maximum,
            session_expiry_s=session_expiry_s,
        ),
    )
    client.loop_start()


class ConnectionTracker:
    """Connection state of a client, waited on by the service loops.

    Installs on_connect/on_disconnect callbacks that log, flip an Event, and run the caller's
    `on_up` hook (used to resubscribe and republish `online`, so a reconnect restores both).
    A second client with our client id (`clone_seen`, or the broker's DISCONNECT 0x8E; mosquitto
    2.0.11 just closes the connection) is counted (`taken_over`, the heartbeat carries it),
    logged, and answered by waiting `takeover_backoff_s` before the next reconnect.
    """

    def __init__(
        self,
        client: mqtt.Client,
        name: str,
        on_up: Callable[[], None],
        settings: MqttSettings | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.connected = threading.Event()
        self.reconnects = 0
        self.taken_over = 0
        #: when the session was last taken over (UTC timestamp)
        self.taken_over_at: str | None = None
        self._backing_off = False
        self._back_off_next = False
        self._on_up = on_up
        self._ever_connected = False
        self._failing = False
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.error("%s broker refused the connection: %s", self.name, reason)
            return
        if self._ever_connected:
            self.reconnects += 1
            log.warning("%s broker: reconnected", self.name)
        else:
            log.info("%s broker: connected", self.name)
        self._ever_connected = True
        self._failing = False
        if self._backing_off:
            self._backing_off = False
            settings = self.settings or MqttSettings()
            client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)
        self.connected.set()
        self._on_up()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if not self._failing:  # once per outage, not once per attempt
            self._failing = True
            if self.settings is None:
                log.warning("%s broker unreachable; retrying with backoff", self.name)
                return
            log.warning(
                "%s broker %s unreachable: %s; retrying with backoff",
                self.name,
                self.settings.address,
                why_unreachable(self.settings),
            )

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        if not was_connected:
            return
        if getattr(reason, "value", None) == SESSION_TAKEN_OVER:
            self.clone_seen("another client took over the session")
        if self._back_off_next and getattr(reason, "is_failure", True):
            self._back_off_next = False
            self._backing_off = True
            backoff = (self.settings or MqttSettings()).takeover_backoff_s
            client.reconnect_delay_set(backoff, backoff)
            log.warning("%s broker: connection lost; reconnecting in %d s", self.name, backoff)
        elif getattr(reason, "is_failure", True):
            log.warning("%s broker: connection lost (%s); reconnecting", self.name, reason)
        else:
            log.info("%s broker: disconnected", self.name)

    def clone_seen(self, what: str) -> None:
        """Another client uses our identity and client id (`what` says how we know): counted,
        logged, and the next lost connection waits `takeover_backoff_s` before reconnecting,
        so that the two take the session from each other slowly, not in a tight loop."""
        self.taken_over += 1
        self.taken_over_at = utc_timestamp()
        self._back_off_next = True
        log.error(
            "%s broker: %s: a second device uses this identity (%d time(s)); after the next "
            "takeover this one waits %d s before reconnecting",
            self.name,
            what,
            self.taken_over,
            (self.settings or MqttSettings()).takeover_backoff_s,
        )


def user_properties(message: mqtt.MQTTMessage) -> dict[str, str]:
    """The MQTT v5 user properties of a received message as a dict (last value wins)."""
    props = getattr(message, "properties", None)
    pairs = getattr(props, "UserProperty", None) or []
    return {str(k): str(v) for k, v in pairs}


def content_type(message: mqtt.MQTTMessage) -> str | None:
    props = getattr(message, "properties", None)
    value = getattr(props, "ContentType", None)
    return str(value) if value is not None else None


def publish_properties(
    content_type_value: str | None, user_props: list[tuple[str, str]] | None
) -> Properties:
    return PackedProperties(
        {"ContentType": content_type_value or None, "UserProperty": user_props or None}
    )


#: MQTT v5 publish properties the forwarder carries from the edge to the cloud unchanged.
_RELAYED_PROPERTIES = ("ContentType", "PayloadFormatIndicator", "ResponseTopic", "CorrelationData")


def properties_to_dict(message: mqtt.MQTTMessage) -> dict[str, Any]:
    """The relayable v5 properties of a received message as JSON-safe data."""
    props = getattr(message, "properties", None)
    out: dict[str, Any] = {}
    if props is None:
        return out
    for name in _RELAYED_PROPERTIES:
        value = getattr(props, name, None)
        if value is not None:
            out[name] = value.hex() if isinstance(value, bytes) else value
    pairs = getattr(props, "UserProperty", None)
    if pairs:
        out["UserProperty"] = [[str(k), str(v)] for k, v in pairs]
    return out


def properties_from_dict(data: dict[str, Any]) -> Properties:
    """The inverse of `properties_to_dict`, encoded once for every (re)send."""
    values = {name: data[name] for name in _RELAYED_PROPERTIES if name in data}
    if "CorrelationData" in values:
        values["CorrelationData"] = bytes.fromhex(values["CorrelationData"])
    if data.get("UserProperty"):
        values["UserProperty"] = [(k, v) for k, v in data["UserProperty"]]
    return PackedProperties(values)
