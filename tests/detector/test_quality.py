"""The quality gate's pure functions: measures of a face and the first test it fails."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from facefleet.detector.backends import Detection
from facefleet.detector.quality import REASONS, Measures, landmark_geometry, measure, reason
from facefleet.detector.settings import QualitySettings

GATE = QualitySettings()
USABLE = Measures(
    size_px=80, edge_px=40, score=0.9, luma=100.0, contrast=40.0, sharpness=300.0,
    landmarks_ok=True, yaw_deg=10.0,
)  # fmt: skip
#: Right eye, left eye, nose, right and left mouth corner of a frontal face (image coordinates).
FRONTAL = ((40.0, 50.0), (80.0, 50.0), (60.0, 70.0), (45.0, 90.0), (75.0, 90.0))


def textured(value: int = 128, spread: int = 100, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.integers(-spread, spread + 1, (240, 320, 3))
    return np.clip(value + noise, 0, 255).astype(np.uint8)


def test_a_usable_face_passes() -> None:
    assert reason(USABLE, GATE) is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"size_px": GATE.min_face_px - 1}, "small"),
        ({"edge_px": GATE.edge_px - 1}, "edge"),
        ({"score": GATE.min_score - 0.01}, "score"),
        ({"luma": GATE.min_luma - 1}, "dark"),
        ({"luma": GATE.max_luma + 1}, "bright"),
        ({"contrast": GATE.min_contrast - 1}, "flat"),
        ({"sharpness": GATE.min_sharpness - 1}, "blurred"),
        ({"landmarks_ok": False}, "landmarks"),
        ({"yaw_deg": GATE.max_yaw_deg + 1}, "yaw"),
    ],
)
def test_each_test_names_its_reason(change: dict[str, object], expected: str) -> None:
    assert expected in REASONS
    assert reason(replace(USABLE, **change), GATE) == expected  # type: ignore[arg-type]


def test_without_landmarks_neither_geometry_nor_score_is_gated() -> None:
    haar = replace(USABLE, landmarks_ok=None, yaw_deg=None, score=0.3)
    assert reason(haar, GATE) is None


def test_frontal_landmarks_are_plausible_with_no_yaw() -> None:
    plausible, yaw = landmark_geometry(FRONTAL)
    assert plausible
    assert yaw == pytest.approx(0.0, abs=0.01)


def test_a_turned_face_has_a_yaw_and_a_profile_exceeds_the_default() -> None:
    def turned(nose_x: float, eye_gap: float) -> float:
        (rx, ry), _, (_, ny), *mouth = FRONTAL
        points = ((rx, ry), (rx + eye_gap, ry), (nose_x, ny), *mouth)
        return landmark_geometry(points)[1]

    three_quarter = turned(nose_x=40.0 + 12.0, eye_gap=20.0)  # nose 2 px past the eye middle
    profile = turned(nose_x=30.0, eye_gap=6.0)  # eyes almost on each other, nose outside
    assert 5 < three_quarter < GATE.max_yaw_deg < profile


def test_upside_down_landmarks_are_implausible() -> None:
    (re, le, nose, rm, lm) = FRONTAL
    mouth_above = (re, le, nose, (rm[0], 30.0), (lm[0], 30.0))
    assert landmark_geometry(mouth_above)[0] is False


def test_measures_of_real_pixels() -> None:
    box = (100, 60, 80, 100)
    sharp = measure(textured(), Detection(box, 0.9, FRONTAL))
    assert sharp.size_px == 80 and sharp.edge_px == 60
    assert reason(sharp, GATE) is None
    assert reason(measure(textured(10, 5), Detection(box, 0.9)), GATE) == "dark"
    assert reason(measure(textured(128, 3), Detection(box, 0.9)), GATE) == "flat"
    squares = ((np.indices((240, 320)) // 24).sum(axis=0) % 2 * 160 + 48).astype(np.uint8)
    blurred = cv2.GaussianBlur(cv2.cvtColor(squares, cv2.COLOR_GRAY2BGR), (0, 0), 8)
    assert reason(measure(blurred, Detection(box, 0.9)), GATE) == "blurred"
    assert reason(measure(textured(), Detection((0, 60, 80, 100), 0.9)), GATE) == "edge"
