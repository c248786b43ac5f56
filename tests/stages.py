"""`make test`: every stage of the suite, each timed, with a table and a total at the end.

usage: python -m tests.stages [--only STAGE,...] [--skip STAGE,...] [--serial] [PYTEST_ARGS...]

Stages: static (ruff, mypy, ansible-lint), unit (pure code), integration (real mosquitto and
S3 processes, the detector on shared data, the monitor, the benchmark smoke test), lab (the
systemd-nspawn fleet: boot, deploys and each lab suite; their times come from
build/lab-timings.json). The lab spends much of its time waiting (for gates, drains, outages
of a fixed length), so it runs beside the other stages, which run one after the other at a
lower CPU priority (its deploys are bound by CPU); every line of output starts with its
stage's name. `--serial` runs all four one after the other.
A failing stage does not stop the others; the exit status is 1 when any failed. The last line
counts the tests of every stage ("N passed, N failed, N skipped").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
PYTHON = sys.executable
LAB_TIMINGS = BUILD / "lab-timings.json"
#: Markers that make a test more than a unit test.
NOT_UNIT = "broker or s3 or fleet or slow or shared"


@dataclass
class Stage:
    name: str
    command: list[str]
    junit: Path | None = None


@dataclass
class Result:
    stage: str
    seconds: float
    returncode: int
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def pytest_stage(name: str, marks: str, extra: list[str]) -> Stage:
    junit = BUILD / f"junit-{name}.xml"
    command = [PYTHON, "-m", "pytest", "-p", "no:cacheprovider", "-m", marks, "--durations=15"]
    command.append(f"--junitxml={junit}")
    return Stage(name, [*command, *extra], junit)


def stages(extra: list[str]) -> list[Stage]:
    return [
        Stage("static", ["make", "--no-print-directory", "check"]),
        pytest_stage("unit", f"not ({NOT_UNIT})", extra),
        pytest_stage("integration", f"({NOT_UNIT}) and not fleet", extra),
        pytest_stage("lab", "fleet", extra),
    ]


def counts(junit: Path) -> dict[str, int]:
    """passed/failed/skipped of a pytest run, from its JUnit report."""
    try:
        suites = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return {}
    total = failed = skipped = 0
    for suite in suites.iter("testsuite"):
        total += int(suite.get("tests", 0))
        failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
    return {"passed": total - failed - skipped, "failed": failed, "skipped": skipped}


def failures(junit: Path) -> list[str]:
    """One line per failed test of a pytest run: its id and the first line of why.

    Printed just above the closing line, so that a CI log that keeps only its tail still
    names what failed."""
    try:
        suites = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return []
    lines = []
    for case in suites.iter("testcase"):
        for problem in (*case.iter("failure"), *case.iter("error")):
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            why = (problem.get("message") or problem.text or "").strip().splitlines()
            lines.append(f"{name}: {why[0][:160] if why else problem.tag}")
    return lines


_PRINT = threading.Lock()


def say(stage: str, line: str) -> None:
    """One whole line of a stage's output (stages running side by side do not mix lines)."""
    with _PRINT:
        sys.stdout.write(f"{stage:<11}| {line}\n")
        sys.stdout.flush()


#: Niceness of the stages that run beside the lab: the lab is the longest stage and its deploys
#: are bound by CPU, while the others have time to spare and fill the lab's waits.
BESIDE_THE_LAB_NICENESS = 10


def run(stage: Stage, niceness: int = 0) -> Result:
    say(stage.name, f"===== {' '.join(stage.command[1:])}")
    if stage.junit:
        stage.junit.unlink(missing_ok=True)
    if stage.name == "lab":
        LAB_TIMINGS.unlink(missing_ok=True)
    started = time.monotonic()
    with subprocess.Popen(
        stage.command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=(lambda: os.nice(niceness)) if niceness else None,  # noqa: PLW1509
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            say(stage.name, line.rstrip("\n"))
        returncode = process.wait()
    seconds = time.monotonic() - started
    result = Result(stage.name, seconds, returncode)
    if stage.junit:
        result.counts, result.failures = counts(stage.junit), failures(stage.junit)
    if returncode == 5:  # pytest collected nothing: a stage that tests nothing is broken
        say(stage.name, "===== no tests collected")
    say(stage.name, f"===== exit {returncode} after {seconds:.0f} s")
    return result


def run_all(chosen: list[Stage], serial: bool) -> list[Result]:
    """The stages in order; the lab beside the others unless `serial`."""
    lab = next((s for s in chosen if s.name == "lab"), None)
    if serial or lab is None or len(chosen) == 1:
        return [run(stage) for stage in chosen]
    lab_result: list[Result] = []
    beside = threading.Thread(target=lambda: lab_result.append(run(lab)), name="lab stage")
    beside.start()
    results = [run(stage, BESIDE_THE_LAB_NICENESS) for stage in chosen if stage is not lab]
    beside.join()
    if not lab_result:  # the thread died before the stage could report: that is a failure
        lab_result.append(Result(lab.name, 0.0, 1))
    return results + lab_result


def table(results: list[Result], total_s: float) -> list[str]:
    lines = ["| stage | seconds | tests | result |", "| --- | ---: | --- | --- |"]
    for r in results:
        tests = ", ".join(f"{n} {k}" for k, n in r.counts.items()) if r.counts else ""
        lines.append(f"| {r.stage} | {r.seconds:.0f} | {tests} | {'ok' if r.ok else 'FAILED'} |")
        if r.stage == "lab" and LAB_TIMINGS.exists():
            for part, seconds in json.loads(LAB_TIMINGS.read_text()).items():
                lines.append(f"| lab: {part} | {seconds:.0f} | | |")
    lines.append(f"| total | {total_s:.0f} | | |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.stages", description=__doc__)
    parser.add_argument("--only", default="", help="comma-separated stages to run")
    parser.add_argument("--skip", default="", help="comma-separated stages to leave out")
    parser.add_argument("--serial", action="store_true", help="no stage beside another")
    args, extra = parser.parse_known_args(argv)
    chosen = stages(extra)
    names = [s.name for s in chosen]
    for option in (args.only, args.skip):
        unknown = set(filter(None, option.split(","))) - set(names)
        if unknown:
            parser.error(f"unknown stage {', '.join(sorted(unknown))} (stages: {', '.join(names)})")
    if args.only:
        chosen = [s for s in chosen if s.name in args.only.split(",")]
    chosen = [s for s in chosen if s.name not in args.skip.split(",")]
    BUILD.mkdir(exist_ok=True)
    started = time.monotonic()
    results = run_all(chosen, args.serial)
    total_s = time.monotonic() - started
    lines = table(results, total_s)
    (BUILD / "test-stages.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    summed = {k: sum(r.counts.get(k, 0) for r in results) for k in ("passed", "failed", "skipped")}
    failed_stages = [r.stage for r in results if r.returncode != 0]
    if failed_stages:
        print(f"failed stages: {', '.join(failed_stages)}")
    for r in results:
        for line in r.failures:
            print(f"failed: {r.stage}: {line}")
    # the closing line CI reads; a failed stage without failed tests (static) counts as one
    failed = summed["failed"] or len(failed_stages)
    print(f"total: {summed['passed']} passed, {failed} failed, {summed['skipped']} skipped")
    return 1 if failed_stages else 0


if __name__ == "__main__":
    sys.exit(main())
