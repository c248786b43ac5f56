"""The per-platform wheelhouse builder: markers for the target, dependencies pip skipped, and
one-line failures. The download itself (from PyPI) is in tests/pipeline/test_wheelhouse.py."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from facefleet.config import ConfigError
from facefleet.wheelhouse import (
    constraints_for,
    fill,
    missing_dependencies,
    pip_failure,
    requested_extras,
)

CONSTRAINTS = """# pins
boto3==1.44.5; python_version >= "3.10"
boto3==1.42.97; python_version < "3.10"
paho-mqtt==2.2.0
jetson-only==1.0; platform_machine == "aarch64"  # trailing comment
"""


def test_constraints_markers_are_evaluated_for_the_target_not_for_the_controller() -> None:
    assert constraints_for(CONSTRAINTS, "aarch64", "3.9.2").splitlines() == [
        "boto3==1.42.97",
        "paho-mqtt==2.2.0",
        "jetson-only==1.0",
    ]
    assert constraints_for(CONSTRAINTS, "x86_64", "3.11.2").splitlines() == [
        "boto3==1.44.5",
        "paho-mqtt==2.2.0",
    ]


def test_a_broken_marker_names_its_line() -> None:
    with pytest.raises(ConfigError, match="constraints line 2"):
        constraints_for("a==1\nb==2; python_version <<< '3'\n", "x86_64", "3.11.2")


def test_extras_are_read_from_wheel_paths_and_names() -> None:
    assert requested_extras(
        ["dist/facefleet-0.1.0-py3-none-any.whl[opencv, monitor]", "moto[server]>=5", "pytest"]
    ) == {"facefleet": {"", "opencv", "monitor"}, "moto": {"", "server"}, "pytest": {""}}


def _wheel(directory: Path, name: str, version: str, requires: list[str]) -> None:
    stem = f"{name.replace('-', '_')}-{version}"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {line}\n" for line in requires
    )
    with zipfile.ZipFile(directory / f"{stem}-py3-none-any.whl", "w") as archive:
        archive.writestr(f"{stem}.dist-info/METADATA", metadata)


def test_dependencies_pip_skipped_for_the_controllers_python_are_found(tmp_path: Path) -> None:
    _wheel(
        tmp_path,
        "facefleet",
        "0.1.0",
        [
            "paho-mqtt<3,>=2.1",
            "tomli>=2.0; python_version < '3.11'",
            "opencv-python-headless<6,>=4.8; extra == 'opencv'",
            "textual>=1.0; extra == 'monitor'",
        ],
    )
    _wheel(tmp_path, "paho-mqtt", "2.2.0", [])
    _wheel(
        tmp_path,
        "botocore",
        "1.42.97",
        [
            'urllib3<1.27,>=1.25.4; python_version < "3.10"',
            'urllib3!=2.2.0,<3,>=1.25.4; python_version >= "3.10"',
        ],
    )
    _wheel(tmp_path, "urllib3", "2.6.3", [])
    extras = {"facefleet": {"", "opencv"}}
    # on 3.9: tomli, the opencv extra (not monitor), and the urllib3 that botocore wants there
    assert missing_dependencies(tmp_path, "aarch64", "3.9.2", extras) == [
        "opencv-python-headless<6,>=4.8",
        "tomli>=2.0",
        "urllib3<1.27,>=1.25.4",
    ]
    assert missing_dependencies(tmp_path, "x86_64", "3.11.2", extras) == [
        "opencv-python-headless<6,>=4.8"
    ]


def test_pip_failures_become_one_line_naming_package_and_platform() -> None:
    no_version = (
        "ERROR: Could not find a version that satisfies the requirement "
        "opencv-python-headless==9.9 (from versions: 4.8.0.76)\n"
        "ERROR: No matching distribution found for opencv-python-headless==9.9\n"
    )
    line = pip_failure(no_version, "aarch64", "3.9.2")
    assert line.startswith("no wheel of opencv-python-headless==9.9 for aarch64 CPython 3.9.2")
    wrong = "ERROR: Package 'facefleet' requires a different Python: 3.8.10 not in '>=3.9'\n"
    assert pip_failure(wrong, "aarch64", "3.8.10") == (
        "facefleet does not support Python 3.8.10 (3.8.10 not in '>=3.9')"
    )
    conflict = (
        "ERROR: Cannot install facefleet because these package versions have conflicting "
        "dependencies.\n\nThe conflict is caused by:\n    a 1.0 depends on b>=2\n"
        "    The user requested (constraint) b==1.0\n\nTo fix this you could try to:\n"
        "1. loosen the range\n\nERROR: ResolutionImpossible: for help visit https://...\n"
    )
    assert pip_failure(conflict, "x86_64", "3.11.2") == (
        "no set of wheels for x86_64 CPython 3.11.2 (manylinux, glibc 2.28 or older) meets the "
        "constraints: a 1.0 depends on b>=2; The user requested (constraint) b==1.0"
    )
    assert all("\n" not in pip_failure(text, "x86_64", "3.11.2") for text in (conflict, ""))


@pytest.mark.parametrize(
    ("arch", "python", "message"),
    [("armv7l", "3.9.2", "architecture 'armv7l'"), ("aarch64", "3.9", "expected 3.X.Y")],
)
def test_targets_without_wheels_are_refused_before_pip_runs(
    tmp_path: Path, arch: str, python: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        fill(tmp_path / "wh", arch, python, tmp_path / "constraints.txt", ["paho-mqtt"])
    assert not (tmp_path / "wh").exists()
