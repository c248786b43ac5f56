"""The offline wheelhouse of one target platform, built on the controller.

`facefleet wheelhouse --dest DIR --arch aarch64 --python 3.9.2 --constraints constraints.txt
REQUIREMENT...` downloads binary wheels (never sdists: the devices have no compiler) for CPython
of that version on manylinux of that architecture, with the project's constraints. pip reads
the environment markers of a constraints file against the Python it runs on, not the target's,
so the markers are evaluated here for the target and DIR/constraints.txt gets the lines that
apply (hosts install with it). pip also reads the markers of the wheels' own dependencies
against the running Python (`tomli; python_version < "3.11"` is skipped on a 3.11 controller),
so the dependencies the target needs and pip left out are downloaded in further rounds (pip
issues 10050 and 11198). A platform without a wheel for a pinned dependency fails with one line
naming the package and the platform, and the Ansible bundle stops before any host changes.

`--seal` (after the facefleet wheel of this build is put in) writes what the hosts verify
against: `requirements[-EXTRAS].txt`, facefleet with each combination of the extras asked for
and its dependencies, each pinned with the sha256 of the wheel here (pip's hash-checking mode,
`--require-hashes`, installs nothing else), and `SHA256SUMS`, every file of the wheelhouse in
`sha256sum --check` form. It prints the sha256 of SHA256SUMS and of each requirements file as
JSON: the controller hands those to the hosts, so a wheelhouse changed on a host (SHA256SUMS
included) does not pass.
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import itertools
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from facefleet.config import ConfigError

#: glibc of the oldest supported edge: Debian 11 and Ubuntu 20.04 (JetPack 5) have 2.31, so
#: wheels up to manylinux_2_28 run there, manylinux_2_34 ones do not.
MANYLINUX_TAGS = ("manylinux2014", "manylinux_2_17", "manylinux_2_24", "manylinux_2_28")
MANYLINUX_GLIBC = "2.28"
ARCHITECTURES = ("x86_64", "aarch64")
_PYTHON_RE = re.compile(r"^3\.(\d+)\.(\d+)$")
_NO_VERSION_RE = re.compile(r"Could not find a version that satisfies the requirement (\S+)")
_WRONG_PYTHON_RE = re.compile(r"Package '([^']+)' requires a different Python: (.*)")
_REQUESTED_PIN_RE = re.compile(r"The user requested \(constraint\) (\S+==\S+)")
_WHEEL_EXTRAS_RE = re.compile(r"\[([^\]]*)\]$")
#: rounds of downloading dependencies pip skipped (each round adds one level of the tree)
MAX_ROUNDS = 8
#: The manifest of a sealed wheelhouse (`sha256sum --check` reads it on the hosts).
MANIFEST = "SHA256SUMS"


def platform_label(arch: str, python: str) -> str:
    """`aarch64 CPython 3.9.2 (manylinux, glibc 2.28 or older)`."""
    return f"{arch} CPython {python} (manylinux, glibc {MANYLINUX_GLIBC} or older)"


def target_environment(arch: str, python: str) -> dict[str, str]:
    """PEP 508 marker variables of a CPython `python` (X.Y.Z) on Linux `arch`."""
    return {
        "implementation_name": "cpython",
        "implementation_version": python,
        "os_name": "posix",
        "platform_machine": arch,
        "platform_python_implementation": "CPython",
        "platform_system": "Linux",
        "python_full_version": python,
        "python_version": ".".join(python.split(".")[:2]),
        "sys_platform": "linux",
    }


def constraints_for(text: str, arch: str, python: str) -> str:
    """The constraints that apply to the target, markers evaluated and dropped."""
    from packaging.markers import InvalidMarker, Marker

    environment = target_environment(arch, python)
    kept = []
    for number, line in enumerate(text.splitlines(), 1):
        requirement, _, marker = line.split("#", 1)[0].partition(";")
        if not requirement.strip():
            continue
        try:
            applies = not marker.strip() or Marker(marker).evaluate(environment)
        except InvalidMarker as exc:
            raise ConfigError(f"constraints line {number}: {exc}") from None
        if applies:
            kept.append(requirement.strip())
    return "".join(f"{line}\n" for line in kept)


def _project(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requested_extras(requirements: list[str]) -> dict[str, set[str]]:
    """Extras asked for on the command line, by project (`dist/facefleet-0.1.0-...whl[opencv]`
    or `moto[server]>=5`)."""
    from packaging.requirements import Requirement

    found: dict[str, set[str]] = {}
    for text in requirements:
        extras = _WHEEL_EXTRAS_RE.search(text)
        if extras and text[: extras.start()].endswith(".whl"):
            name = Path(text[: extras.start()]).name.split("-")[0]
            wanted = {e.strip() for e in extras.group(1).split(",")}
        elif text.endswith(".whl"):
            name, wanted = Path(text).name.split("-")[0], set()
        else:
            requirement = Requirement(text)
            name, wanted = requirement.name, set(requirement.extras)
        found.setdefault(_project(name), {""}).update(e for e in wanted if e)
    return found


def _wheel_metadata(wheel: Path) -> tuple[str, str, list[str]]:
    """A wheel's project name, version and Requires-Dist lines."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.BytesParser().parsebytes(archive.read(name), headersonly=True)
    return _project(metadata["Name"]), metadata["Version"], metadata.get_all("Requires-Dist") or []


def missing_dependencies(
    dest: Path, arch: str, python: str, extras: dict[str, set[str]]
) -> list[str]:
    """Dependencies of the wheels in `dest` that the target needs and no wheel there satisfies
    (none of that project, or only versions another marker chose: botocore wants urllib3<1.27
    on 3.9, pip fetched 2.x for the controller's 3.11)."""
    from packaging.requirements import Requirement

    environment = target_environment(arch, python)
    wheels = [_wheel_metadata(wheel) for wheel in sorted(dest.glob("*.whl"))]
    present: dict[str, list[str]] = {}
    for project, version, _requires in wheels:
        present.setdefault(project, []).append(version)
    missing: dict[str, str] = {}
    for project, _version, requires in wheels:
        for text in requires:
            requirement = Requirement(text)
            wanted = extras.get(project, {""})
            if requirement.marker and not any(
                requirement.marker.evaluate({**environment, "extra": extra}) for extra in wanted
            ):
                continue
            versions = present.get(_project(requirement.name), [])
            if not any(requirement.specifier.contains(v, prereleases=True) for v in versions):
                requirement.marker = None
                missing.setdefault(_project(requirement.name), str(requirement))
    return sorted(missing.values())


def pip_failure(output: str, arch: str, python: str) -> str:
    """pip's output of a failed download as one line naming the package and the platform."""
    platform = platform_label(arch, python)
    missing = _NO_VERSION_RE.search(output)
    if missing:
        return f"no wheel of {missing.group(1)} for {platform}"
    wrong = _WRONG_PYTHON_RE.search(output)
    if wrong:
        return f"{wrong.group(1)} does not support Python {python} ({wrong.group(2).strip()})"
    if "The conflict is caused by:" in output:
        causes = output.split("The conflict is caused by:", 1)[1].strip().split("\n\n", 1)[0]
        reasons = "; ".join(line.strip() for line in causes.splitlines() if line.strip())
        return f"no set of wheels for {platform} meets the constraints: {reasons}"
    errors = [line[len("ERROR: ") :] for line in output.splitlines() if line.startswith("ERROR: ")]
    cause = next((e for e in errors if "ResolutionImpossible" not in e), "pip download failed")
    return f"{cause} for {platform}"


def fill(dest: Path, arch: str, python: str, constraints: Path, requirements: list[str]) -> None:
    """Download the wheels of `requirements` for the platform into `dest`; ConfigError (one
    line) when a wheel is missing or the constraints cannot hold."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"architecture {arch!r}: wheels exist for {', '.join(ARCHITECTURES)}")
    if not _PYTHON_RE.match(python):
        raise ConfigError(f"Python version {python!r}: expected 3.X.Y")
    try:
        text = constraints.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{constraints}: {exc.strerror or exc}") from None
    dest.mkdir(parents=True, exist_ok=True)
    target_constraints = dest / "constraints.txt"
    target_constraints.write_text(constraints_for(text, arch, python), encoding="utf-8")
    extras = requested_extras(requirements)
    for _round in range(MAX_ROUNDS):
        _download(dest, arch, python, target_constraints, requirements)
        requirements = missing_dependencies(dest, arch, python, extras)
        if not requirements:
            return
    raise ConfigError(f"dependencies still missing after {MAX_ROUNDS} rounds: {requirements}")


def _download(
    dest: Path, arch: str, python: str, constraints: Path, requirements: list[str]
) -> None:
    result = _pip_download(dest, arch, python, ["--constraint", str(constraints), *requirements])
    if result.returncode == 0:
        return
    # a conflict often means a pinned release has no wheel here: name it when it is so
    for pin in _REQUESTED_PIN_RE.findall(result.stdout):
        with tempfile.TemporaryDirectory() as scratch:
            if _pip_download(Path(scratch), arch, python, ["--no-deps", pin]).returncode:
                raise ConfigError(f"no wheel of {pin} for {platform_label(arch, python)}")
    raise ConfigError(pip_failure(result.stdout, arch, python))


def _pip_download(
    dest: Path, arch: str, python: str, arguments: list[str]
) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--progress-bar=off",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        python,
        *(f"--platform={tag}_{arch}" for tag in MANYLINUX_TAGS),
        *arguments,
    ]
    # pip prints the cause of a resolution conflict on stdout, the rest on stderr
    return subprocess.run(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dest", required=True, type=Path, help="the wheelhouse directory")
    parser.add_argument("--arch", required=True, help=f"one of {', '.join(ARCHITECTURES)}")
    parser.add_argument("--python", required=True, help="the hosts' CPython version, 3.X.Y")
    parser.add_argument(
        "--constraints", type=Path, help="the project's constraints.txt (required unless --seal)"
    )
    parser.add_argument(
        "--seal",
        action="store_true",
        help="download nothing: write the hashed requirements of the first requirement (the "
        f"facefleet wheel[extras], each combination of its extras) and {MANIFEST} for the "
        "wheels in DEST, and print their sha256 as JSON",
    )
    parser.add_argument("requirements", nargs="+", help="what to put in (wheel[extras], ...)")


def _pins(dest: Path) -> dict[str, str]:
    """{project: version} of the `name==version` lines of DEST/constraints.txt."""
    pins = {}
    path = dest / "constraints.txt"
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        name, separator, version = line.partition("==")
        if separator:
            pins[_project(name)] = version.strip()
    return pins


def locked(
    dest: Path,
    arch: str,
    python: str,
    project: str,
    extras: set[str],
    sums: dict[str, str] | None = None,
    version: str = "",
) -> list[str]:
    """`project[extras]` and everything it needs on the target, from the wheels in `dest`, as
    requirement lines pinned with `==` and the sha256 of each wheel: of each project the newest
    version here that constraints.txt and every requirement on it allow (the target's markers).
    A wheelhouse may hold two versions of a project (urllib3 for botocore on 3.9 and 3.11).
    `sums`: sha256 by file name, known already (else computed here); `version`: of `project`
    (else the newest here)."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    environment = target_environment(arch, python)
    pins = _pins(dest)
    root = _project(project)
    if version:
        pins[root] = version
    wheels: dict[str, dict[str, list[Path]]] = {}
    requires: dict[tuple[str, str], list[Requirement]] = {}
    for wheel in sorted(dest.glob("*.whl")):
        name, version, lines = _wheel_metadata(wheel)
        wheels.setdefault(name, {}).setdefault(version, []).append(wheel)
        requires[(name, version)] = [Requirement(line) for line in lines]
    # requirements met so far, by project; a pass that meets none it did not know settles it
    asked: dict[str, dict[str, Requirement]] = {root: {}}
    while True:
        known = sum(len(r) for r in asked.values())
        wanted: dict[str, set[str]] = {root: {"", *extras}}
        chosen: dict[str, str] = {}
        queue = [root]
        while queue:
            name = queue.pop(0)
            if name in chosen:
                continue
            allowed = [
                v
                for v in wheels.get(name, {})
                if (name not in pins or Version(v) == Version(pins[name]))
                and all(r.specifier.contains(v, prereleases=True) for r in asked[name].values())
            ]
            if not allowed:
                wants = ", ".join(sorted(asked[name])) or name
                raise ConfigError(f"{dest}: no wheel of {wants} for {platform_label(arch, python)}")
            chosen[name] = max(allowed, key=Version)
            for requirement in requires[(name, chosen[name])]:
                if requirement.marker and not any(
                    requirement.marker.evaluate({**environment, "extra": extra})
                    for extra in wanted.get(name, {""})
                ):
                    continue
                needed = _project(requirement.name)
                wanted.setdefault(needed, {""}).update(requirement.extras)
                asked.setdefault(needed, {})[str(requirement)] = requirement
                queue.append(needed)
        if sum(len(r) for r in asked.values()) == known:
            break
    extra_spec = f"[{','.join(sorted(extras))}]" if extras else ""
    return [
        f"{name}{extra_spec if name == root else ''}=={chosen[name]} "
        + " ".join(
            f"--hash=sha256:{(sums or {}).get(w.name) or _sha256(w)}"
            for w in wheels[name][chosen[name]]
        )
        for name in sorted(chosen)
    ]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def requirements_file(extras: set[str] | frozenset[str]) -> str:
    """`requirements.txt`, `requirements-opencv.txt`, ... (extras sorted, joined by `-`)."""
    return "-".join(["requirements", *sorted(extras)]) + ".txt"


def seal(dest: Path, arch: str, python: str, requirements: list[str]) -> dict[str, Any]:
    """Write the hashed requirements of the first requirement (the facefleet wheel) with every
    combination of its extras, then SHA256SUMS over the wheelhouse; return their sha256."""
    first = requirements[0] if requirements else ""
    if not _WHEEL_EXTRAS_RE.sub("", first).endswith(".whl"):
        raise ConfigError("--seal: the first requirement must be the facefleet wheel[extras]")
    project, version = Path(_WHEEL_EXTRAS_RE.sub("", first)).name.split("-")[:2]
    extras = sorted(requested_extras([first])[_project(project)] - {""})
    label = platform_label(arch, python)
    combinations = [
        set(c) for n in range(len(extras) + 1) for c in itertools.combinations(extras, n)
    ]
    names = {requirements_file(c) for c in combinations}
    for stale in dest.glob("requirements*.txt"):
        if stale.name not in names:
            stale.unlink()
    sums = {wheel.name: _sha256(wheel) for wheel in dest.glob("*.whl")}
    for combination in combinations:
        spec = f"{project}[{','.join(sorted(combination))}]" if combination else project
        lines = locked(dest, arch, python, project, combination, sums, version)
        (dest / requirements_file(combination)).write_text(
            f"# {spec} for {label}, by `facefleet wheelhouse --seal`\n"
            + "".join(f"{line}\n" for line in lines),
            encoding="utf-8",
        )
    files = sorted(
        p for p in dest.iterdir() if p.is_file() and p.name != MANIFEST and p.name[0] != "."
    )
    sums = {p.name: sums.get(p.name) or _sha256(p) for p in files}
    manifest = "".join(f"{digest}  {name}\n" for name, digest in sums.items())
    (dest / MANIFEST).write_text(manifest, encoding="utf-8")
    return {
        "manifest": hashlib.sha256(manifest.encode()).hexdigest(),
        "requirements": {name: sums[name] for name in sorted(names)},
    }


def run_wheelhouse(args: argparse.Namespace) -> int:
    if args.seal:
        print(json.dumps(seal(args.dest, args.arch, args.python, args.requirements)))
        return 0
    if args.constraints is None:
        raise ConfigError("--constraints is required to fill a wheelhouse")
    fill(args.dest, args.arch, args.python, args.constraints, args.requirements)
    print(f"{args.dest}: wheels for {platform_label(args.arch, args.python)}")
    return 0
