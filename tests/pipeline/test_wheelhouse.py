"""`facefleet wheelhouse` against the real package index: the wheelhouses the controller builds
for a JetPack 5-like edge (aarch64, CPython 3.9) and for an x86_64 CPython 3.11 host, and the
one-line failure for a pin without a wheel. pip caches the downloads, so a second run is fast.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def facefleet_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(ROOT)],
        check=True,
        timeout=300,
    )
    return next(dist.glob("facefleet-*.whl"))


def wheelhouse(
    dest: Path, arch: str, python: str, constraints: Path, wheel: Path
) -> subprocess.CompletedProcess[str]:
    """`facefleet wheelhouse` as the bundle tasks run it."""
    target = ["--dest", str(dest), "--arch", arch, "--python", python]
    sources = ["--constraints", str(constraints), f"{wheel}[opencv]", "pip"]
    return subprocess.run(
        [sys.executable, "-m", "facefleet", "wheelhouse", *target, *sources],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def build(dest: Path, arch: str, python: str, constraints: Path, wheel: Path) -> None:
    result = wheelhouse(dest, arch, python, constraints, wheel)
    assert result.returncode == 0, result.stderr


def wheels(dest: Path) -> dict[str, str]:
    """{project: wheel file name} (one wheel per project unless noted)."""
    return {path.name.split("-")[0].lower(): path.name for path in sorted(dest.glob("*.whl"))}


def test_a_jetpack_5_edge_gets_cp39_aarch64_wheels_only(
    tmp_path: Path, facefleet_wheel: Path
) -> None:
    dest = tmp_path / "aarch64-cp39"
    build(dest, "aarch64", "3.9.2", ROOT / "constraints.txt", facefleet_wheel)
    found = wheels(dest)
    # pinned for 3.9 by the constraints' markers
    assert found["boto3"].startswith("boto3-1.42.97-")
    assert "boto3==1.42.97" in (dest / "constraints.txt").read_text().splitlines()
    # the hosts' installer: the pinned pip, which still runs on 3.9
    assert found["pip"] == "pip-26.0.1-py3-none-any.whl"
    # needed on 3.9 only: pip skipped them for the controller's Python, the builder did not
    assert found["tomli"].startswith("tomli-")
    assert any(p.name.startswith("urllib3-1.26.") for p in dest.glob("urllib3-*.whl"))
    compiled = [name for name in found.values() if not name.endswith("-none-any.whl")]
    assert {"numpy", "opencv_python_headless", "cryptography", "cffi"} <= {
        name.split("-")[0].lower() for name in compiled
    }
    for name in compiled:
        assert "aarch64" in name and ("cp39" in name or "abi3" in name), name
        assert "manylinux_2_34" not in name  # glibc 2.31 on Debian 11 / Ubuntu 20.04


def test_an_x86_64_cp311_host_gets_the_newest_pins(tmp_path: Path, facefleet_wheel: Path) -> None:
    dest = tmp_path / "x86_64-cp311"
    build(dest, "x86_64", "3.11.2", ROOT / "constraints.txt", facefleet_wheel)
    found = wheels(dest)
    assert found["boto3"].startswith("boto3-1.44.5-")
    assert "tomli" not in found
    assert all("x86_64" in name for name in found.values() if not name.endswith("-none-any.whl"))


def test_a_pin_without_a_wheel_for_the_platform_fails_in_one_line(
    tmp_path: Path, facefleet_wheel: Path
) -> None:
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("numpy==2.3.0\n")  # needs Python 3.11
    result = wheelhouse(tmp_path / "wh", "aarch64", "3.9.2", constraints, facefleet_wheel)
    assert result.returncode == 2
    assert result.stderr == (
        "facefleet wheelhouse: config error: no wheel of numpy==2.3.0 for aarch64 CPython 3.9.2 "
        "(manylinux, glibc 2.28 or older)\n"
    )
