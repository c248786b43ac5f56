"""The `facefleet` command: the four services, one-shot tools, the demo and the monitor.

Exit status: 0 success, 1 runtime failure, 2 bad usage or configuration (the systemd units set
`RestartPreventExitStatus=2`, so a broken config fails the unit instead of crash-looping).
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any

from facefleet import __version__
from facefleet.config import ConfigError
from facefleet.contract import SERVICES_BY_KIND

EXIT_CONFIG = 2
#: What runs on Python 3.9 (JetPack 5 edges): the edge services and `detect` to try a model on
#: the device (tests/edge_modules.py lists the code they import; `make check` keeps it 3.9-clean).
PY39_COMMANDS = (*SERVICES_BY_KIND["edge"], "detect")

log = logging.getLogger("facefleet")


def _service_runner(service: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from importlib import import_module

        from facefleet import config
        from facefleet.service import setup_logging

        try:
            module = import_module(f"facefleet.{service}.service")
        except ImportError as exc:  # the detector and processor decode images with OpenCV
            raise ConfigError(
                f"'facefleet {service}' needs the 'opencv' extra "
                f"(pip install 'facefleet[opencv]', or the system OpenCV): {exc}"
            ) from None
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


#: Commands whose arguments live in their own module, imported only when that command runs, so
#: a service does not pay for OpenCV or Textual imports it does not use. Each module provides
#: add_arguments(parser) and the named run function.
TOOLS: dict[str, tuple[str, str, str]] = {
    "detect": (
        "facefleet.detector.detect_cli",
        "run_detect",
        "detect faces in an image or a folder of images",
    ),
    "evaluate": (
        "facefleet.detector.evaluate_cli",
        "run_evaluate",
        "score what the detector would publish for a video against labelled ground truth",
    ),
    "demo": ("facefleet.demo", "run_demo", "run the whole pipeline on this machine"),
    "pki": ("facefleet.pki", "run_pki", "fleet CA and certificates for brokers and clients"),
    "fleet": (
        "facefleet.fleet",
        "run_fleet",
        "fleet health as the cloud broker sees it (fleet status --inventory PATH)",
    ),
    "faces": (
        "facefleet.faces_cli",
        "run_faces",
        "list, get, delete and expire stored faces (directory or s3://BUCKET)",
    ),
    "wheelhouse": (
        "facefleet.wheelhouse",
        "run_wheelhouse",
        "download the wheels of one target platform (architecture, Python) for offline installs",
    ),
    "wheel": (
        "facefleet.wheelbuild",
        "run_wheel",
        "build the facefleet wheel of a checkout (reused while its sources are unchanged)",
    ),
    "monitor": (
        "facefleet_monitor.cli",
        "run_monitor",
        "terminal UI: fleet health and live detections",
    ),
}


def _tool_module(command: str) -> Any:
    from importlib import import_module

    module_name = TOOLS[command][0]
    try:
        return import_module(module_name)
    except ImportError as exc:
        extra = "monitor" if command == "monitor" else "opencv"
        raise ConfigError(
            f"'facefleet {command}' needs the '{extra}' extra "
            f"(pip install 'facefleet[{extra}]'): {exc}"
        ) from None


def _run_tool(args: argparse.Namespace) -> int:
    module = _tool_module(args.command)
    result: int = getattr(module, TOOLS[args.command][1])(args)
    return result


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s own module is imported to add its arguments."""
    parser = argparse.ArgumentParser(
        prog="facefleet", description="Face capture on a fleet of edge cameras."
    )
    parser.add_argument("--version", action="version", version=f"facefleet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_service_commands(sub)
    for name, (_module, _func, text) in TOOLS.items():
        tool = sub.add_parser(name, help=text, description=text)
        if name == command:
            _tool_module(name).add_arguments(tool)
        tool.set_defaults(func=_run_tool)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if sys.version_info < (3, 10) and command and command not in PY39_COMMANDS:
        print(
            f"facefleet {command}: needs Python 3.10 or newer (this is "
            f"{platform.python_version()}); on 3.9 only {', '.join(PY39_COMMANDS)} run",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        args = build_parser(command if command in TOOLS else None).parse_args(argv)
        result: int = args.func(args)
    except ConfigError as exc:
        print(f"facefleet {command or ''}: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    return result
