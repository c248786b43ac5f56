"""Both backends on the synthetic scene (ground truth known), and their load errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from facefleet.config import ConfigError
from facefleet.detector import appearance
from facefleet.detector.backends import FaceDetector, create_detector
from facefleet.detector.evaluation import matches
from facefleet.detector.settings import DetectionSettings, MergeSettings
from facefleet.detector.synthetic import LOOKS, SceneParams, SyntheticScene
from tests.helpers import require_shared


def yunet(model: str = "face_detection_yunet_2023mar.onnx", **kw: Any) -> FaceDetector:
    path = require_shared("models", model)
    return create_detector(replace(DetectionSettings(model=str(path)), **kw))


def haar(**kw: Any) -> FaceDetector:
    return create_detector(replace(DetectionSettings(backend="haar"), **kw))


def scene_score(detector: FaceDetector, uri: str, step: int = 3) -> tuple[int, int, int]:
    """(faces in the scene, found, false positives) over every `step`-th frame."""
    scene = SyntheticScene(SceneParams.from_uri(uri))
    total = found = false = 0
    for index in range(0, scene.params.frame_count, step):
        truth = scene.face_boxes(index)
        faces = detector.detect(scene.frame(index))
        assert all(0.0 <= f.score <= 1.0 for f in faces)
        tp, fp = matches([f.box for f in faces], truth)
        total, found, false = total + len(truth), found + tp, false + fp
    return total, found, false


SCENES = ["synthetic:", "synthetic:?persons=6&seconds=8&size=320x240&seed=3"]


@pytest.mark.parametrize("uri", SCENES)
def test_haar_finds_the_synthetic_persons(uri: str) -> None:
    total, found, false = scene_score(haar(), uri)
    assert total > 30
    assert found >= 0.95 * total
    assert false == 0


@pytest.mark.shared
@pytest.mark.parametrize("uri", SCENES)
@pytest.mark.parametrize(
    "model", ["face_detection_yunet_2023mar.onnx", "face_detection_yunet_2026may.onnx"]
)
def test_yunet_finds_the_synthetic_persons(model: str, uri: str) -> None:
    total, found, false = scene_score(yunet(model), uri)
    assert found >= 0.95 * total
    assert false == 0


@pytest.mark.shared
def test_boxes_are_in_frame_pixels_when_detection_downscales() -> None:
    detector = yunet(detect_width=320)
    total, found, false = scene_score(detector, "synthetic:?size=1280x720&seconds=4", step=5)
    assert found >= 0.95 * total
    assert false == 0


def test_haar_downscaled_boxes_are_in_frame_pixels() -> None:
    total, found, _ = scene_score(haar(detect_width=480), "synthetic:?size=960x720&seconds=4")
    assert found >= 0.9 * total


def test_missing_model_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ConfigError, match=str(missing)):
        create_detector(DetectionSettings(model=str(missing)))
    with pytest.raises(ConfigError, match=str(missing)):
        create_detector(DetectionSettings(backend="haar", model=str(missing)))


def test_garbage_model_is_a_config_error(tmp_path: Path) -> None:
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ConfigError, match="cannot load the YuNet model") as info:
        create_detector(DetectionSettings(model=str(garbage)))
    assert "\n" not in str(info.value)
    cascade = tmp_path / "cascade.xml"
    cascade.write_text("<opencv_storage></opencv_storage>")
    with pytest.raises(ConfigError, match="not a loadable Haar cascade"):
        create_detector(DetectionSettings(backend="haar", model=str(cascade)))


def test_default_yunet_model_missing_points_to_the_alternatives(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FACEFLEET_SHARED", str(tmp_path))
    with pytest.raises(ConfigError, match="haar backend"):
        create_detector(DetectionSettings())


def test_opencv_5_without_haar_support_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenCV 5.x wheels have neither cv2.data nor CascadeClassifier: simulate that build."""
    import cv2

    from facefleet.detector import backends

    monkeypatch.delattr(cv2, "data", raising=False)
    monkeypatch.setattr(backends, "SYSTEM_HAAR_DIRS", ())  # no opencv-data either
    with pytest.raises(ConfigError, match="no Haar cascades"):
        create_detector(DetectionSettings(backend="haar"))
    monkeypatch.delattr(cv2, "CascadeClassifier")
    with pytest.raises(ConfigError, match="no CascadeClassifier"):
        create_detector(DetectionSettings(backend="haar", model="cascade.xml"))


def look_frames() -> list[tuple[Any, tuple[int, int, int, int]]]:
    """One frame per look of the synthetic scene (persons=len(LOOKS), seed 0: person i wears
    look i), each at a frame where that person is visible, with its face box."""
    scene = SyntheticScene(SceneParams(persons=len(LOOKS), seconds=len(LOOKS) * 2.0))
    out = []
    for person in scene.persons:
        middle = (person.first_frame + person.last_frame) // 2
        out.append((scene.frame(middle), person.face_box(middle)))
    return out


@pytest.mark.parametrize("backend", ["haar", "yunet"])
def test_every_synthetic_look_is_detected(backend: str) -> None:
    detector = haar() if backend == "haar" else yunet()
    for image, box in look_frames():
        found, _ = matches([f.box for f in detector.detect(image)], [box])
        assert found == 1


def test_the_synthetic_looks_are_told_apart_by_appearance() -> None:
    """The merger would not join two persons of the scene even across a camera cut."""
    signatures = [appearance.signature(image, box) for image, box in look_frames()]
    closest = min(
        appearance.distance(a, b) for i, a in enumerate(signatures) for b in signatures[i + 1 :]
    )
    assert closest > MergeSettings().cut_max_appearance_distance
