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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from facefleet import __version__
from facefleet.config import ConfigError
from facefleet.contract import SERVICES_BY_KIND

if TYPE_CHECKING:  # imported when a service runs: not every command needs paho
    from facefleet.runtime import ServiceSpec

EXIT_CONFIG = 2
#: What runs on Python 3.9 (JetPack 5 edges): the edge services and `detect` to try a model on
#: the device (tests/edge_modules.py lists the code they import; `make check` keeps it 3.9-clean).
PY39_COMMANDS = (*SERVICES_BY_KIND["edge"], "detect")

#: The group of entry points through which other distributions add commands (the monitor):
#: each names a `Command`.
PLUGIN_GROUP = "facefleet.commands"

log = logging.getLogger("facefleet")


@dataclass(frozen=True)
class ServiceCommand:
    """`facefleet <name>`: a service. Its module is imported only when it runs (the detector
    and the processor import OpenCV) and holds SERVICE, the service's `ServiceSpec`."""

    name: str
    module: str
    help: str

    def load(self) -> ServiceSpec[Any]:
        from importlib import import_module

        from facefleet.runtime import ServiceSpec

        try:
            module = import_module(self.module)
        except ImportError as exc:  # the detector and processor decode images with OpenCV
            raise ConfigError(
                f"'facefleet {self.name}' needs the 'opencv' extra "
                f"(pip install 'facefleet[opencv]', or the system OpenCV): {exc}"
            ) from None
        spec = getattr(module, "SERVICE", None)
        if not isinstance(spec, ServiceSpec):
            raise TypeError(f"{self.module}.SERVICE is not a ServiceSpec")
        return spec

    def __call__(self, args: argparse.Namespace) -> int:
        from facefleet import config, runtime

        spec = self.load()
        cfg = config.load(spec.config_class, args.config)
        if args.check:
            runtime.check(spec, cfg)
            print(f"{args.config or '<defaults>'}: ok")
            return 0
        return runtime.run(spec, cfg)


SERVICES = (
    ServiceCommand(
        "detector",
        "facefleet.detector.service",
        "capture frames, detect and track faces, publish one good crop per person",
    ),
    ServiceCommand(
        "logger",
        "facefleet.logger.service",
        "write the edge audit trail (one JSON line per face and status change)",
    ),
    ServiceCommand(
        "forwarder",
        "facefleet.forwarder.service",
        "relay edge messages to the cloud broker through a durable spool",
    ),
    ServiceCommand(
        "processor",
        "facefleet.processor.service",
        "validate faces from the cloud broker and store them (S3 or a directory)",
    ),
)


@dataclass(frozen=True)
class Command:
    """A command another distribution adds through an entry point of PLUGIN_GROUP."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _plugins() -> list[Command]:
    """The commands of the entry point group PLUGIN_GROUP, loaded."""
    from importlib.metadata import entry_points

    plugins = []
    for entry in entry_points(group=PLUGIN_GROUP):
        try:
            command = entry.load()
        except ImportError as exc:
            raise ConfigError(f"'facefleet {entry.name}' cannot be loaded: {exc}") from None
        if not isinstance(command, Command):
            raise TypeError(f"entry point {entry.value} is not a facefleet.cli.Command")
        plugins.append(command)
    return plugins


def _add_service_commands(sub: Any) -> None:
    for service in SERVICES:
        p = sub.add_parser(service.name, help=service.help, description=service.help)
        p.add_argument("--config", "-c", help="TOML config file (default: built-in defaults)")
        p.add_argument(
            "--check", action="store_true", help="validate the config file and exit (0 = valid)"
        )
        p.set_defaults(func=service)


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
}


def _tool_module(command: str) -> Any:
    from importlib import import_module

    module_name = TOOLS[command][0]
    try:
        return import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"'facefleet {command}' needs the 'opencv' extra "
            f"(pip install 'facefleet[opencv]'): {exc}"
        ) from None


def _run_tool(args: argparse.Namespace) -> int:
    module = _tool_module(args.command)
    result: int = getattr(module, TOOLS[args.command][1])(args)
    return result


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s own module is imported to add its arguments. Commands of
    other distributions are looked up only when `command` is none of ours (or for help)."""
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
    ours = command in TOOLS or any(command == service.name for service in SERVICES)
    # the commands of other distributions (the monitor) need Python 3.10 (PY39_COMMANDS)
    if not ours and sys.version_info >= (3, 10):
        for plugin in _plugins():
            p = sub.add_parser(plugin.name, help=plugin.help, description=plugin.help)
            plugin.add_arguments(p)
            p.set_defaults(func=plugin.run)
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
        args = build_parser(command).parse_args(argv)
        result: int = args.func(args)
    except ConfigError as exc:
        print(f"facefleet {command or ''}: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    return result
