"""The facefleet wheel of a checkout, built on the controller once per source state.

`facefleet wheel --source DIR --dest DIR [--label L]` builds the wheel with pip, reproducibly
(a fixed SOURCE_DATE_EPOCH: same sources, same bytes), and remembers in DEST which sources it
was built from. Every deploy asks for the wheel; building it takes 10-15 s of CPU, so a deploy
of unchanged sources reuses the wheel it finds, if it is still the one that was built. The
fingerprint covers what the build reads: pyproject.toml, the README and licence it names, and
every file of the packages it declares (`[tool.setuptools.package-dir]`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from facefleet.config import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the controller runs 3.11 or newer
    import tomli as tomllib

#: 1980-01-01, the oldest time a zip file can hold.
SOURCE_DATE_EPOCH = "315532800"
#: Files next to the packages that end up in the wheel's metadata.
PROJECT_FILES = ("pyproject.toml", "README.md", "LICENSE")


def fingerprint(source: Path, label: str = "") -> str:
    """sha256 over the path and bytes of every file the wheel is built from, and the label."""
    try:
        project = tomllib.loads((source / "pyproject.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{source}: no readable pyproject.toml: {exc}") from None
    package_dirs = project.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    files = [source / name for name in PROJECT_FILES if (source / name).is_file()]
    for directory in sorted(package_dirs.values()):
        files += sorted(
            p
            for p in (source / directory).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        )
    digest = hashlib.sha256(f"label={label}\n".encode())
    for path in files:
        digest.update(f"{path.relative_to(source)}\n".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(source: Path, dest: Path, label: str = "") -> tuple[list[Path], bool]:
    """The wheel(s) of `source` in `dest`, and whether they were built now (False: reused)."""
    stamp = dest / f".source-{fingerprint(source, label)}.json"
    if stamp.is_file():
        built: dict[str, str] = json.loads(stamp.read_text())
        wheels = [dest / name for name in built]
        if all(w.is_file() and _sha256(w) == built[w.name] for w in wheels):
            return wheels, False
    dest.mkdir(parents=True, exist_ok=True)
    # setuptools appends the label at build time, so the checkout is never edited
    label_args = [
        "--config-settings=--global-option=egg_info",
        f"--config-settings=--global-option=--tag-build=+{label}",
    ]
    with tempfile.TemporaryDirectory(dir=dest) as scratch:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--disable-pip-version-check",
                "--wheel-dir",
                scratch,
                *(label_args if label else []),
                str(source),
            ],
            env={**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            last = result.stdout.strip().splitlines()[-1:] or ["no output"]
            raise ConfigError(f"building the wheel of {source} failed: {last[0]}")
        wheels = []
        for wheel in sorted(Path(scratch).glob("*.whl")):
            wheels.append(dest / wheel.name)
            os.replace(wheel, wheels[-1])
    if not wheels:
        raise ConfigError(f"pip built no wheel of {source}")
    stamp.write_text(json.dumps({w.name: _sha256(w) for w in wheels}, indent=1) + "\n")
    return wheels, True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, type=Path, help="the checkout to build")
    parser.add_argument("--dest", required=True, type=Path, help="where the wheel goes")
    parser.add_argument(
        "--label", default="", help="local version label: VERSION+LABEL (default: none)"
    )


def run_wheel(args: argparse.Namespace) -> int:
    wheels, built = build(args.source, args.dest, args.label)
    for wheel in wheels:
        print(f"{wheel}: {'built' if built else 'unchanged sources, reused'}")
    return 0
