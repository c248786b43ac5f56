"""The monitor's settings, from command-line options and/or an Ansible inventory (no Textual)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from facefleet import pki
from facefleet.config import ConfigError
from facefleet.contract import DEFAULT_PREFIX
from facefleet.health import watcher_settings
from facefleet.inventory import load_inventory
from facefleet.mqtt import MqttSettings, tls_context

IMAGE_PROTOCOLS = ("auto", "tgp", "sixel", "halfcell", "unicode")


@dataclass(frozen=True)
class MonitorConfig:
    mqtt: MqttSettings
    prefix: str = DEFAULT_PREFIX
    #: expected nodes (node -> edge|cloud); empty: whatever reports is the fleet
    expected: dict[str, str] = field(default_factory=dict)
    #: nodes revoked or decommissioned (node -> that state), from the inventory's PKI directory:
    #: shown as such, not expected to report
    refused: dict[str, str] = field(default_factory=dict)
    #: how the broker is named on screen (tests use a fixed name for stable snapshots)
    label: str = ""
    image_protocol: str = "auto"
    refresh_hz: float = 4.0
    max_detections: int = 500
    max_thumbnails: int = 64
    #: lines printed before the UI started (the demo's), shown in the UI and the alert log
    notes: tuple[str, ...] = ()

    @property
    def broker_label(self) -> str:
        return self.label or self.mqtt.address


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    """HOST, HOST:PORT or [V6]:PORT."""
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    if not host:
        raise ConfigError(f"--broker {text!r}: no host")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ConfigError(f"--broker {text!r}: port is not a number") from None
    if not 0 < port < 65536:
        raise ConfigError(f"--broker {text!r}: port out of range")
    return host, port


def _existing(option: str, value: str | Path | None) -> str:
    if not value:
        return ""
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"{option} {path}: file not found")
    return str(path)


def config_from_args(args: argparse.Namespace) -> MonitorConfig:
    """Options win over the inventory; the inventory fills in what they leave out."""
    expected: dict[str, str] = {}
    refused: dict[str, str] = {}
    host, port, prefix = "127.0.0.1", 1883, DEFAULT_PREFIX
    ca = cert = key = ""
    tls = False
    if args.inventory:
        info = load_inventory(Path(args.inventory))
        expected = info.nodes
        if info.pki_dir is not None:
            refused = {name: s.state for name, s in pki.node_states(info.pki_dir).items()}
        host, port, prefix = info.broker_host, info.broker_port, info.prefix
        if not (args.ca or args.cert):  # the options name the certificates themselves
            tls = True
            ca, cert, key = (str(path) for path in info.pki_files())
    if args.broker:
        host, port = parse_address(args.broker, 8883 if (args.ca or args.cert) else 1883)
    if args.prefix:
        prefix = args.prefix
    ca = _existing("--ca", args.ca) or ca
    cert = _existing("--cert", args.cert) or cert
    key = _existing("--key", args.key) or key
    tls = tls or bool(ca or cert or args.tls)
    if bool(cert) != bool(key):
        raise ConfigError("--cert and --key go together")
    password_file = _existing("--password-file", args.password_file)
    if password_file and not args.username:
        raise ConfigError("--password-file needs --username")
    if not args.inventory and not args.broker:
        raise ConfigError("give --broker HOST:PORT or --inventory PATH")
    if "/" in prefix or "+" in prefix or "#" in prefix or not prefix:
        raise ConfigError(f"--prefix {prefix!r}: must be one topic level")
    try:
        settings = MqttSettings(
            host=host,
            port=port,
            username=args.username or "",
            password_file=password_file,
            tls=tls,
            ca_file=ca,
            cert_file=cert,
            key_file=key,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if settings.tls:
        tls_context(settings)  # a file that is not a certificate or key: one line, before the UI
    return MonitorConfig(
        mqtt=watcher_settings(settings),
        prefix=prefix,
        expected=expected,
        refused=refused,
        image_protocol=args.image,
        notes=tuple(args.note or ()),
    )
