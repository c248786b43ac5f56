"""`python -m bench` (`make bench`): every benchmark, its baseline in the same run, the results.

Writes `results.json`, `results.md` (also printed) and PNG charts into `--out` (default:
`bench/`). Sections: detector, uplink, relay (forwarder vs bridge), pipeline (latency and
footprint on loopback), processor, spool (cost of secure delete); `--lab` adds lab (latency,
footprint and a four-edge rollout on the lab fleet, root); `--only drain` drains a backlog
over a shaped uplink on the lab (root); `--only scale` simulates a fleet against the real cloud
side. `--quick` runs tiny sizes (the smoke test); `--only` picks sections.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import (
    detector,
    drain,
    fleet,
    pipeline,
    processor,
    relay,
    report,
    scale,
    spool,
    uplink,
)
from bench.common import S3_LATENCY_MS, Options, machine, progress

SECTIONS: dict[str, Callable[[Path, Options], dict[str, Any]]] = {
    "detector": detector.run,
    "uplink": uplink.run,
    "relay": relay.run,
    "pipeline": pipeline.run,
    "processor": processor.run,
    "spool": spool.run,
    "scale": scale.run,
    "lab": fleet.run,
    "drain": drain.run,
}
#: What `make bench` runs unless told otherwise; the lab needs root and about 5 more minutes
#: (`drain` about 15 more), a thousand simulated devices (`scale`) all of the machine for
#: about 15.
DEFAULT_SECTIONS = tuple(s for s in SECTIONS if s not in ("lab", "drain", "scale"))
REQUIRED_KEYS = (
    "detector.fps.yunet",
    "detector.fps.haar",
    "detector.fps.homework",
    "uplink.bytes_per_person.default",
    "uplink.bytes_per_person.homework",
    "uplink.persons_missed.default",
    "forwarder.msgs_per_s",
    "bridge.msgs_per_s",
    "forwarder.lost_in_outage",
    "bridge.lost_in_outage",
    "forwarder.cpu_us_per_msg",
    "bridge.cpu_us_per_msg",
    "edge.cpu_us_per_face",
    "forwarder.machine_cpu_us_per_msg",
    "bridge.machine_cpu_us_per_msg",
    "latency_ms.p50",
    "latency_ms.p99",
    "processor.faces_per_s.1",
    "processor.faces_per_s.2",
    "processor.faces_per_s.4",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT_SECTIONS),
        help=f"comma-separated sections to run (default: {','.join(DEFAULT_SECTIONS)}; also: "
        "scale, lab, drain)",
    )
    parser.add_argument(
        "--lab",
        action="store_true",
        help="also measure latency and footprint on the lab fleet (root; uses the lab that is "
        "up, else brings one up, deploys it and takes it down)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--s3-latency-ms",
        type=float,
        default=S3_LATENCY_MS,
        help=f"latency the benchmarks' S3 endpoint adds to every request, like real S3 "
        f"(default {S3_LATENCY_MS:g}; used by the processor section)",
    )
    parser.add_argument(
        "--nodes",
        type=int,
        default=Options.nodes,
        help=f"scale section: simulated devices (default {Options.nodes})",
    )
    parser.add_argument(
        "--faces-per-s",
        type=float,
        default=Options.faces_per_s,
        help=f"scale section: faces per second from the whole fleet (default "
        f"{Options.faces_per_s:g})",
    )
    return parser


def merge(results: dict[str, Any], section: str, figures: dict[str, Any]) -> None:
    """Place a section's figures under the keys of the results interface."""
    if section == "relay":
        results["forwarder"] = figures.pop("forwarder")
        results["bridge"] = figures.pop("bridge")
        results["edge"] = figures.pop("edge")
        results["relay"] = figures
    elif section == "pipeline":
        results.update(figures)
    elif section == "lab":  # the lab's figures lead; the loopback ones stay beside them
        results["rollout"] = figures["rollout"]
        for key in ("latency_ms", "footprint"):
            loopback = results.get(key)
            results[key] = figures[key]
            if loopback:
                results[key]["loopback"] = loopback
    else:
        results[section] = figures


def missing_keys(results: dict[str, Any]) -> list[str]:
    missing = []
    for dotted in REQUIRED_KEYS:
        value: Any = results
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if not isinstance(value, (int, float)):
            missing.append(dotted)
    return missing


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("facefleet.mqtt.paho").setLevel(logging.CRITICAL)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    if args.lab and "lab" not in chosen:
        chosen.append("lab")
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        print(f"bench: unknown section(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    if args.s3_latency_ms < 0:
        print("bench: --s3-latency-ms must be >= 0", file=sys.stderr)
        return 2
    if args.nodes < 1 or args.faces_per_s <= 0:
        print("bench: --nodes must be >= 1 and --faces-per-s > 0", file=sys.stderr)
        return 2
    options = Options(
        quick=args.quick,
        s3_latency_ms=args.s3_latency_ms,
        nodes=args.nodes,
        faces_per_s=args.faces_per_s,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="facefleet-bench-"))
    began = time.monotonic()
    results: dict[str, Any] = {
        "machine": machine(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "load_average": [round(os.getloadavg()[0], 2)],
        "errors": {},
    }
    progress(f"machine: {results['machine']}; work directory {workdir}")
    try:
        for number, section in enumerate(chosen, 1):
            progress(f"section {number}/{len(chosen)}: {section}")
            section_began = time.monotonic()
            try:
                merge(results, section, SECTIONS[section](workdir, options))
            except Exception as exc:  # report, keep going with the other sections
                results["errors"][section] = f"{type(exc).__name__}: {exc}"
                progress(f"section {section} FAILED: {type(exc).__name__}: {exc}")
                logging.getLogger(__name__).debug("%s", traceback.format_exc())
            progress(f"section {section} took {time.monotonic() - section_began:.0f} s")
    finally:
        if args.keep:
            progress(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["load_average"].append(round(os.getloadavg()[0], 2))
    results["duration_s"] = round(time.monotonic() - began, 1)
    results["targets_met"] = report.targets(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    table = report.markdown(results)
    (args.out / "results.md").write_text(table)
    charts = report.charts(results, args.out)
    print(table, flush=True)
    progress(
        f"wrote {args.out / 'results.json'}, {args.out / 'results.md'}, "
        f"{', '.join(p.name for p in charts)} in {results['duration_s']:.0f} s"
    )
    if results["errors"]:
        print(f"bench: failed sections: {', '.join(results['errors'])}", file=sys.stderr)
        return 1
    missing = missing_keys(results) if set(DEFAULT_SECTIONS) <= set(chosen) else []
    if missing:
        print(f"bench: results lack {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0
