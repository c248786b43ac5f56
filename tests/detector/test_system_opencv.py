"""The detector's config check under a distribution OpenCV (`detector_opencv: system`).

Debian 12's python3-opencv is 4.6: it loads the YuNet models and fails on the first frame, so
`facefleet detector --check` (which the role's preflight runs) must stop with one line naming
both versions and the ways out, while Haar runs with the cascades of Debian's opencv-data.
The check runs under /usr/bin/python3 with the distribution's cv2 and numpy, this checkout's
code and the venv's paho-mqtt (Debian's python3-paho-mqtt is 1.x), as in a venv with system
site packages.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import paho
import pytest

from facefleet.shared import YUNET_MODEL
from tests.helpers import IN_CI, require_shared
from tests.support import ROOT

SYSTEM_PYTHON = Path("/usr/bin/python3")


def _system_opencv_version() -> str:
    """Debian's OpenCV version, or skip (fail under CI=true: `make system-deps` installs it)."""
    probe = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import cv2; print(cv2.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        message = "Debian's python3-opencv is not installed (make system-deps)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return probe.stdout.strip()


def _check(tmp_path: Path, config: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "paho").symlink_to(Path(paho.__path__[0]))
    path = tmp_path / "detector.toml"
    path.write_text(config)
    environment = {**os.environ, "PYTHONPATH": f"{ROOT / 'apps'}:{tmp_path}"}
    return subprocess.run(
        [str(SYSTEM_PYTHON), "-m", "facefleet", "detector", "--check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=environment,
    )


@pytest.mark.parametrize(
    "model", ["face_detection_yunet_2023mar.onnx", "face_detection_yunet_2026may.onnx"]
)
def test_an_opencv_too_old_for_the_model_stops_the_check_in_one_line(
    tmp_path: Path, model: str
) -> None:
    version = _system_opencv_version()
    if tuple(int(part) for part in version.split(".")[:2]) >= (4, 8):
        pytest.skip(f"the system OpenCV {version} runs every YuNet model")
    path = require_shared("models", model)
    result = _check(tmp_path, f'[detection]\nbackend = "yunet"\nmodel = "{path}"\n')
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    line = result.stderr
    assert f"OpenCV {version} cannot run this YuNet model" in line
    assert "needs OpenCV 4.8.0 or newer" in line
    assert "detector_opencv: wheel" in line and "haar backend" in line


def test_haar_runs_on_the_system_opencv_with_its_cascades(tmp_path: Path) -> None:
    _system_opencv_version()
    cascade = Path("/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml")
    result = _check(tmp_path, '[detection]\nbackend = "haar"\n')
    if cascade.is_file():
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().endswith(": ok")
    else:  # no opencv-data: one line that names it
        assert result.returncode == 2
        assert "opencv-data" in result.stderr and result.stderr.count("\n") == 1


def test_the_check_runs_on_the_interpreter_of_the_test_too() -> None:
    """The same check passes under this venv's OpenCV wheel (detector_opencv: wheel)."""
    path = require_shared("models", YUNET_MODEL)
    result = subprocess.run(
        [sys.executable, "-m", "facefleet", "detector", "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "FACEFLEET_DETECTION__MODEL": str(path)},
    )
    assert result.returncode == 0, result.stderr
