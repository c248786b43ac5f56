"""`facefleet wheel`: built once per source state with the real pip, reused while the sources
and the wheel are unchanged, rebuilt when either changed. A small project keeps each build at a
few seconds; it is laid out like facefleet (packages under other directories)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68", "wheel"]
build-backend = "setuptools.build_meta"

[project]
name = "mini"
version = "0.1.0"
readme = "README.md"

[tool.setuptools.package-dir]
mini = "apps/mini"
"""


def wheel(source: Path, dest: Path, *options: str) -> subprocess.CompletedProcess[str]:
    command = ["wheel", "--source", str(source), "--dest", str(dest), *options]
    return subprocess.run(
        [sys.executable, "-m", "facefleet", *command],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_wheel_is_built_once_per_source_state(tmp_path: Path) -> None:
    source, dest = tmp_path / "src", tmp_path / "dist"
    (source / "apps" / "mini").mkdir(parents=True)
    (source / "pyproject.toml").write_text(PYPROJECT)
    (source / "README.md").write_text("mini\n")
    module = source / "apps" / "mini" / "__init__.py"
    module.write_text("VALUE = 1\n")
    built = dest / "mini-0.1.0-py3-none-any.whl"

    first = wheel(source, dest)
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"{built}: built\n"
    content = built.read_bytes()
    # build artefacts in the checkout (egg-info, build/, bytecode) are not sources
    (source / "apps" / "mini" / "__pycache__").mkdir(exist_ok=True)
    (source / "apps" / "mini" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert wheel(source, dest).stdout == f"{built}: unchanged sources, reused\n"
    assert built.read_bytes() == content

    module.write_text("VALUE = 2\n")  # a changed source
    assert wheel(source, dest).stdout == f"{built}: built\n"
    rebuilt = built.read_bytes()
    assert rebuilt != content
    built.write_bytes(b"not the wheel that was built")  # a wheel changed behind its back
    assert wheel(source, dest).stdout == f"{built}: built\n"
    assert built.read_bytes() == rebuilt  # reproducible: same sources, same bytes

    labelled = wheel(source, dest, "--label", "rollout.b")
    assert labelled.stdout == f"{dest / 'mini-0.1.0+rollout.b-py3-none-any.whl'}: built\n"
    assert wheel(source, dest).stdout == f"{built}: unchanged sources, reused\n"


def test_a_source_without_a_project_is_one_line(tmp_path: Path) -> None:
    result = wheel(tmp_path, tmp_path / "dist")
    assert result.returncode == 2
    assert result.stderr.startswith("facefleet wheel: config error: ")
    assert "no readable pyproject.toml" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
