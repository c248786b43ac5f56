"""`facefleet monitor` options and entry point. Imports Textual only when the UI starts, so
building the `facefleet` parser stays cheap. The command reaches `facefleet` through the entry
point COMMAND (pyproject.toml: group `facefleet.commands`)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from facefleet.cli import Command
from facefleet.config import ConfigError
from facefleet_monitor.config import IMAGE_PROTOCOLS, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    conn = parser.add_argument_group("connection (options win over --inventory)")
    conn.add_argument(
        "--broker", metavar="HOST:PORT", help="broker to watch (e.g. the cloud broker)"
    )
    conn.add_argument(
        "--inventory",
        metavar="PATH",
        help="Ansible inventory: expected nodes, cloud broker, prefix and monitor certificate",
    )
    conn.add_argument("--ca", metavar="FILE", help="CA certificate (turns TLS on)")
    conn.add_argument("--cert", metavar="FILE", help="client certificate (with --key)")
    conn.add_argument("--key", metavar="FILE", help="client private key")
    conn.add_argument("--tls", action="store_true", help="TLS with the system CA store")
    conn.add_argument("--username", metavar="NAME")
    conn.add_argument("--password-file", metavar="FILE", help="file holding the password")
    conn.add_argument("--prefix", metavar="PREFIX", help="topic prefix (default: facefleet)")
    parser.add_argument(
        "--image",
        choices=IMAGE_PROTOCOLS,
        default="auto",
        help="how thumbnails are drawn (auto: kitty/sixel when the terminal has it)",
    )
    parser.add_argument("--log-file", metavar="FILE", help="write the monitor's log here")
    parser.add_argument(
        "--note",
        action="append",
        metavar="TEXT",
        help="a line to show in the UI and its alert log at start (the demo passes what it "
        "printed before the UI took the screen; repeatable)",
    )
    store = parser.add_argument_group("stored faces (key f; alone without a broker)")
    store.add_argument(
        "--store", metavar="STORE", help="a processor's directory or s3://BUCKET[/PREFIX]"
    )
    store.add_argument("--endpoint-url", default="", help="S3-compatible endpoint (default: AWS)")


def _open_store(args: argparse.Namespace) -> Any:
    from facefleet.facestore import StoreError, open_store

    try:
        return open_store(args.store, args.endpoint_url)
    except StoreError as exc:
        raise ConfigError(f"--store: {exc}") from None


def run_monitor(args: argparse.Namespace) -> int:
    store = _open_store(args) if args.store else None
    live = bool(args.inventory or args.broker)
    config = config_from_args(args) if live or store is None else None  # ConfigError -> exit 2
    root = logging.getLogger()
    root.handlers.clear()
    if args.log_file:
        handler: logging.Handler = logging.FileHandler(args.log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.setLevel(logging.INFO)
    else:
        handler = logging.NullHandler()  # stderr belongs to the UI
    root.addHandler(handler)
    # textual_image asks the terminal what it can draw: it must happen before Textual starts
    try:
        from facefleet_monitor.app import MonitorApp, image_widget_class
    except ImportError as exc:
        raise ConfigError(
            f"'facefleet monitor' needs the 'monitor' extra (pip install 'facefleet[monitor]'): "
            f"{exc}"
        ) from None

    image_class = image_widget_class(args.image)
    if config is None:
        from facefleet_monitor.store_view import StoredFacesApp

        assert store is not None
        alone = StoredFacesApp(store, image_class)
        alone.run()
        return alone.return_code or 0
    app = MonitorApp(config, image_class=image_class, store=store)
    app.run()
    return app.return_code or 0


COMMAND = Command(
    "monitor", "terminal UI: fleet health and live detections", add_arguments, run_monitor
)
