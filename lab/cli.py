"""Command line of the lab: `python -m lab up [--edges N] [--arm64-edges M] [--spare-hosts S]
[--subnet CIDR]`, `add` (the same host options, for a lab that is up), `down`, `status`,
`poweroff HOST`, `poweron HOST`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from lab import fleet, image
from lab.image import LabError

log = logging.getLogger("lab")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="boot the lab hosts and write inventory/lab/hosts.yml")
    add_host_options(up, edges=2)
    up.add_argument(
        "--subnet",
        default=fleet.SUBNET,
        help=f"private subnet of the lab bridge (default {fleet.SUBNET}, FACEFLEET_LAB_SUBNET)",
    )
    add_timeout_option(up)
    add = sub.add_parser(
        "add",
        help="boot more hosts into the lab that is up (numbered after those it has) and rewrite"
        " its inventory",
    )
    add_host_options(add, edges=0)
    add.add_argument(
        "--inventory",
        type=Path,
        help="write the inventory of all the lab's hosts here instead of inventory/lab/hosts.yml",
    )
    add_timeout_option(add)
    sub.add_parser("down", help="stop and remove every lab host, link, bridge and copy")
    sub.add_parser("status", help="print the lab state (JSON)")
    off = sub.add_parser("poweroff", help="cut a host's power (SIGKILL its init)")
    off.add_argument("host")
    on = sub.add_parser("poweron", help="boot a powered-off host again")
    on.add_argument("host")
    on.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for it")
    return parser


def add_host_options(parser: argparse.ArgumentParser, edges: int) -> None:
    parser.add_argument(
        "--edges", type=int, default=edges, help=f"x86_64 edge hosts (default {edges})"
    )
    parser.add_argument(
        "--arm64-edges",
        type=int,
        default=0,
        metavar="M",
        help="arm64 edge hosts jetson-1..M, emulated with qemu-user (default 0)",
    )
    parser.add_argument(
        "--arm64-release",
        choices=image.ARM64_RELEASES,
        default=image.ARM64_RELEASES[0],
        help="Debian release of the arm64 edges: bullseye (Python 3.9, like JetPack 5; the"
        " default) or bookworm (Python 3.11, like JetPack 6)",
    )
    parser.add_argument(
        "--arm64-opencv-edges",
        type=int,
        default=0,
        metavar="K",
        help="arm64 bookworm edges jetson-cv-1..K whose detector uses Debian's python3-opencv"
        " (detector_opencv: system; default 0)",
    )
    parser.add_argument(
        "--spare-hosts",
        type=int,
        default=0,
        metavar="S",
        help="x86_64 hosts spare-1..S outside the inventory, for a fleet of their own (default 0)",
    )


def add_timeout_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        help="seconds to wait for a host to boot (emulated hosts: four times as long)",
    )


def topology(args: argparse.Namespace) -> fleet.Topology:
    return fleet.Topology(
        args.edges, args.arm64_edges, args.arm64_release, args.arm64_opencv_edges, args.spare_hosts
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="lab: %(message)s", stream=sys.stderr)
    try:
        if args.command in ("up", "add"):
            if args.command == "up":
                hosts = fleet.up(topology(args), args.subnet, args.timeout)
            else:
                hosts = fleet.add(topology(args), args.timeout, args.inventory)
            print(f"lab {args.command}: {', '.join(f'{h.name}={h.address}' for h in hosts)}")
            inventory = getattr(args, "inventory", None) or fleet.INVENTORY_DIR / "hosts.yml"
            names = ",".join(h.name for h in hosts if h.group != fleet.SPARE_GROUP)
            deploy = (
                "make lab-deploy"
                if args.command == "up"
                else f"ansible-playbook -i {inventory} --limit {names} site.yml"
            )
            print(f"inventory: {inventory}; run `{deploy}`")
        elif args.command == "down":
            fleet.down()
        elif args.command == "poweroff":
            fleet.power_off(args.host)
        elif args.command == "poweron":
            fleet.power_on(args.host, args.timeout)
        else:
            state = fleet.STATE_DIR / "state.json"
            print(state.read_text() if state.exists() else json.dumps({"hosts": []}))
    except LabError as exc:
        print(f"lab {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lab {args.command}: interrupted; run `make lab-down` to clean up", file=sys.stderr)
        return 130
    return 0
