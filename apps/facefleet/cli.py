"""The `facefleet` command: the four services, one-shot tools, the demo and the monitor.

Exit status: 0 success, 1 runtime failure, 2 bad usage or configuration (the systemd units set
`RestartPreventExitStatus=2`, so a broken config fails the unit instead of crash-looping).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from facefleet import __version__
from facefleet.config import ConfigError

EXIT_CONFIG = 2

log = logging.getLogger("facefleet")


def _service_runner(service: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from importlib import import_module

        from facefleet import config
        from facefleet.service import setup_logging

        module = import_module(f"facefleet.{service}.service")
        cfg = config.load(module.CONFIG_CLASS, args.config)
        if args.check:
            module.check(cfg)
            print(f"{args.config or '<defaults>'}: ok")
            return 0
        setup_logging(cfg.log_level)
        result: int = module.run(cfg)
        return result

    return run


def _add_service_commands(sub: Any) -> None:
    helps = {
        "detector": "capture frames, detect and track faces, publish one good crop per person",
        "logger": "write the edge audit trail (one JSON line per face and status change)",
        "forwarder": "relay edge messages to the cloud broker through a durable spool",
        "processor": "validate faces from the cloud broker and store them (S3 or a directory)",
    }
    for service, text in helps.items():
        p = sub.add_parser(service, help=text, description=text)
        p.add_argument("--config", "-c", help="TOML config file (default: built-in defaults)")
        p.add_argument(
            "--check", action="store_true", help="validate the config file and exit (0 = valid)"
        )
        p.set_defaults(func=_service_runner(service))


def _run_detect(args: argparse.Namespace) -> int:
    from facefleet.detector.detect_cli import run_detect

    return run_detect(args)


def _run_demo(args: argparse.Namespace) -> int:
    from facefleet.demo import run_demo

    return run_demo(args)


def _run_pki(args: argparse.Namespace) -> int:
    from facefleet.pki import run_pki

    return run_pki(args)


def _run_monitor(args: argparse.Namespace) -> int:
    try:
        from facefleet_monitor.cli import run_monitor
    except ImportError as exc:
        raise ConfigError(
            f"the monitor needs the 'monitor' extra (pip install 'facefleet[monitor]'): {exc}"
        ) from None
    return run_monitor(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facefleet", description="Face capture on a fleet of edge cameras."
    )
    parser.add_argument("--version", action="version", version=f"facefleet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_service_commands(sub)

    from facefleet.detector.detect_cli import add_arguments as add_detect_arguments

    detect = sub.add_parser("detect", help="detect faces in an image or a folder of images")
    add_detect_arguments(detect)
    detect.set_defaults(func=_run_detect)

    from facefleet.demo import add_arguments as add_demo_arguments

    demo = sub.add_parser("demo", help="run the whole pipeline on this machine")
    add_demo_arguments(demo)
    demo.set_defaults(func=_run_demo)

    from facefleet.pki import add_arguments as add_pki_arguments

    pki = sub.add_parser("pki", help="fleet CA and certificates for brokers and clients")
    add_pki_arguments(pki)
    pki.set_defaults(func=_run_pki)

    monitor = sub.add_parser("monitor", help="terminal UI: fleet health and live detections")
    try:
        from facefleet_monitor.cli import add_arguments as add_monitor_arguments
    except ImportError:
        monitor.add_argument("rest", nargs=argparse.REMAINDER)
    else:
        add_monitor_arguments(monitor)
    monitor.set_defaults(func=_run_monitor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(f"facefleet {args.command}: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    return result
