"""`facefleet detect` as a user runs it: a real subprocess, JSON lines or a table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from facefleet.detector.backends import create_detector
from facefleet.detector.settings import DetectionSettings
from facefleet.detector.synthetic import SceneParams, SyntheticScene
from facefleet.shared import YUNET_MODEL
from tests.helpers import require_shared


def detect(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "facefleet", "detect", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def scene_folder(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """Frames of the synthetic scene as JPEG files, with the number of faces in each."""
    scene = SyntheticScene(SceneParams(persons=3, seconds=2, fps=5))
    counts = {}
    for index in range(scene.params.frame_count):
        name = f"frame{index:02d}.jpg"
        cv2.imwrite(str(tmp_path / name), scene.frame(index))
        counts[name] = len(scene.face_boxes(index))
    return tmp_path, counts


def test_json_lines_for_a_folder_with_haar(scene_folder: tuple[Path, dict[str, int]]) -> None:
    folder, counts = scene_folder
    result = detect(str(folder), "--backend", "haar", "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == sorted(counts)
    assert {line["image"]: len(line["faces"]) for line in lines} == counts
    for line in lines:
        for face in line["faces"]:
            assert len(face["box"]) == 4
            assert all(isinstance(v, int) for v in face["box"])
            assert 0.0 <= face["score"] <= 1.0


def test_unreadable_images_are_reported_and_the_others_processed(
    scene_folder: tuple[Path, dict[str, int]],
) -> None:
    folder, counts = scene_folder
    (folder / "frame00b.jpg").write_bytes(b"truncated")
    result = detect(str(folder), "--backend", "haar", "--json")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"facefleet detect: {folder / 'frame00b.jpg'}: not a readable image"
    ]
    assert len(result.stdout.splitlines()) == len(counts)


def test_table_output(scene_folder: tuple[Path, dict[str, int]]) -> None:
    folder, counts = scene_folder
    result = detect(str(folder / "frame05.jpg"), "--backend", "haar")
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split()[:2] == ["image", "faces"]
    assert row.split()[:2] == ["frame05.jpg", str(counts["frame05.jpg"])]


def test_without_the_model_detect_falls_back_to_haar_as_the_readme_says(
    scene_folder: tuple[Path, dict[str, int]], tmp_path: Path
) -> None:
    folder, counts = scene_folder
    no_model = {"FACEFLEET_SHARED": str(tmp_path / "none")}
    result = detect(str(folder / "frame05.jpg"), "--json", env=no_model)
    assert result.returncode == 0, result.stderr
    assert "using the Haar cascade" in result.stderr
    assert len(json.loads(result.stdout)["faces"]) == counts["frame05.jpg"]
    asked = detect(str(folder), "--backend", "yunet", env=no_model)
    assert asked.returncode == 2
    assert "--model" in asked.stderr and "Traceback" not in asked.stderr


def test_a_missing_path_is_reported_first(tmp_path: Path) -> None:
    result = detect(str(tmp_path / "nope"), env={"FACEFLEET_SHARED": str(tmp_path / "none")})
    assert result.returncode == 2
    assert (
        result.stderr
        == f"facefleet detect: config error: {tmp_path / 'nope'}: no such image or folder\n"
    )
    assert result.stdout == ""


def test_a_folder_without_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    result = detect(str(tmp_path))
    assert result.returncode == 2
    assert "no images in this folder" in result.stderr
    assert result.stdout == ""


def test_opencv_messages_become_one_facefleet_line_per_image(
    scene_folder: tuple[Path, dict[str, int]],
) -> None:
    folder, counts = scene_folder
    whole = (folder / "frame05.jpg").read_bytes()
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (folder / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    result = detect(str(folder), "--backend", "haar", "--json")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"facefleet detect: {folder / 'broken.png'}: not a readable image "
        "(readHeader IHDR chunk shall be first. This data may be broken or malformed.)",
        f"facefleet detect: {folder / 'cut.jpg'}: damaged image, read in part "
        "(Premature end of JPEG file)",
    ]
    assert len(result.stdout.splitlines()) == len(counts) + 1  # the damaged one is read


@pytest.mark.shared
def test_default_is_yunet_2023mar_with_the_default_thresholds() -> None:
    faces = require_shared("data", "faces")
    model = require_shared("models", YUNET_MODEL)
    result = detect(str(faces), "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 9
    detector = create_detector(DetectionSettings(model=str(model)))
    for line in lines:
        expected = detector.detect(cv2.imread(str(faces / line["image"])))
        assert [face["box"] for face in line["faces"]] == [list(f.box) for f in expected]
