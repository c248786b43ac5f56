"""The per-platform wheelhouse builder: markers for the target, dependencies pip skipped, and
one-line failures; the seal (requirements with hashes, SHA256SUMS). The download itself (from
PyPI) is in tests/pipeline/test_wheelhouse.py, pip and the hosts' checks on a sealed wheelhouse
in tests/pipeline/test_verified_install.py."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from facefleet.cli import main
from facefleet.config import ConfigError
from facefleet.wheelhouse import (
    constraints_for,
    fill,
    locked,
    missing_dependencies,
    pip_failure,
    requested_extras,
    seal,
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


def _botocore_wheelhouse(directory: Path) -> None:
    """facefleet 0.1.0 and its dependencies as a 3.9 and a 3.11 controller fetch them."""
    _wheel(
        directory,
        "facefleet",
        "0.1.0",
        [
            "paho-mqtt<3,>=2.1",
            "botocore",
            "tomli>=2.0; python_version < '3.11'",
            "opencv-python-headless<6,>=4.8; extra == 'opencv'",
        ],
    )
    _wheel(directory, "paho-mqtt", "2.2.0", [])
    _wheel(
        directory,
        "botocore",
        "1.42.97",
        [
            'urllib3<1.27,>=1.25.4; python_version < "3.10"',
            'urllib3!=2.2.0,<3,>=1.25.4; python_version >= "3.10"',
        ],
    )
    for version in ("1.26.20", "2.6.3"):  # both in one wheelhouse, as on aarch64-cp39
        _wheel(directory, "urllib3", version, [])
    _wheel(directory, "tomli", "2.5.0", [])
    _wheel(directory, "opencv-python-headless", "4.14.0.94", ["numpy>=2"])
    _wheel(directory, "numpy", "2.0.2", [])
    _wheel(directory, "pip", "26.0.1", [])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_locked_requirements_follow_the_targets_markers_and_pin_every_wheel(
    tmp_path: Path,
) -> None:
    _botocore_wheelhouse(tmp_path)
    lines = locked(tmp_path, "aarch64", "3.9.2", "facefleet", {"opencv"})
    pinned = {line.split(" ")[0] for line in lines}
    # the urllib3 botocore wants on 3.9 (both versions are there), tomli, the extra's tree; no pip
    assert pinned == {
        "botocore==1.42.97",
        "facefleet[opencv]==0.1.0",
        "numpy==2.0.2",
        "opencv-python-headless==4.14.0.94",
        "paho-mqtt==2.2.0",
        "tomli==2.5.0",
        "urllib3==1.26.20",
    }
    wheel = tmp_path / "urllib3-1.26.20-py3-none-any.whl"
    assert f"urllib3==1.26.20 --hash=sha256:{_sha256(wheel)}" in lines
    plain = {
        line.split(" ")[0] for line in locked(tmp_path, "x86_64", "3.11.2", "facefleet", set())
    }
    assert plain == {"botocore==1.42.97", "facefleet==0.1.0", "paho-mqtt==2.2.0", "urllib3==2.6.3"}


def test_constraints_pin_the_locked_version(tmp_path: Path) -> None:
    _botocore_wheelhouse(tmp_path)
    (tmp_path / "constraints.txt").write_text("urllib3==1.26.20\n")
    lines = locked(tmp_path, "x86_64", "3.11.2", "facefleet", set())
    assert any(line.startswith("urllib3==1.26.20 ") for line in lines)


def test_the_facefleet_being_deployed_is_locked_not_the_newest_here(tmp_path: Path) -> None:
    _botocore_wheelhouse(tmp_path)
    _wheel(tmp_path, "facefleet", "0.1.0+b", [])  # another build left in the same directory
    wheel = str(tmp_path / "facefleet-0.1.0-py3-none-any.whl")
    seal(tmp_path, "x86_64", "3.11.2", [wheel])
    locked_lines = (tmp_path / "requirements.txt").read_text().splitlines()
    assert any(line.startswith("facefleet==0.1.0 --hash=") for line in locked_lines)
    newest = locked(tmp_path, "x86_64", "3.11.2", "facefleet", set())
    assert any(line.startswith("facefleet==0.1.0+b --hash=") for line in newest)


def test_a_dependency_without_a_wheel_fails_in_one_line(tmp_path: Path) -> None:
    _botocore_wheelhouse(tmp_path)
    (tmp_path / "numpy-2.0.2-py3-none-any.whl").unlink()
    with pytest.raises(ConfigError) as caught:
        locked(tmp_path, "x86_64", "3.11.2", "facefleet", {"opencv"})
    assert str(caught.value) == (
        f"{tmp_path}: no wheel of numpy>=2 for x86_64 CPython 3.11.2 "
        "(manylinux, glibc 2.28 or older)"
    )


def test_seal_writes_hashed_requirements_per_extras_and_a_manifest_of_every_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _botocore_wheelhouse(tmp_path)
    (tmp_path / "constraints.txt").write_text("pip==26.0.1\n")
    (tmp_path / "requirements-monitor.txt").write_text("from an earlier seal\n")
    (tmp_path / ".complete-abc").write_text("marker\n")
    wheel = "/elsewhere/dist/facefleet-0.1.0-py3-none-any.whl[opencv]"
    assert main(["wheelhouse", "--seal", "--dest", str(tmp_path), "--arch", "x86_64",
                 "--python", "3.11.2", wheel, "pip"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert not (tmp_path / "requirements-monitor.txt").exists()
    manifest = (tmp_path / "SHA256SUMS").read_text()
    assert printed["manifest"] == hashlib.sha256(manifest.encode()).hexdigest()
    listed = {name: digest for digest, name in (line.split("  ") for line in manifest.splitlines())}
    files = {p.name for p in tmp_path.iterdir()} - {"SHA256SUMS", ".complete-abc"}
    assert set(listed) == files  # every wheel, constraints.txt, the requirements
    assert all(listed[name] == _sha256(tmp_path / name) for name in files)
    assert printed["requirements"] == {
        name: listed[name] for name in ("requirements-opencv.txt", "requirements.txt")
    }
    opencv = (tmp_path / "requirements-opencv.txt").read_text().splitlines()
    assert opencv[0].startswith("# facefleet[opencv] for x86_64 CPython 3.11.2")
    assert opencv[1:] == locked(tmp_path, "x86_64", "3.11.2", "facefleet", {"opencv"})
    # the same wheels seal to the same bytes
    assert seal(tmp_path, "x86_64", "3.11.2", [wheel]) == printed


def test_seal_needs_the_facefleet_wheel_first(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the first requirement must be the facefleet wheel"):
        seal(tmp_path, "x86_64", "3.11.2", ["pip"])
