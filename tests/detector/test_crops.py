"""Crops with margins and the quality score that picks the best view of a track."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facefleet.detector import crops
from facefleet.detector.geometry import expand, iou


def textured(size: int = 200, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)


def test_expand_grows_by_the_margin_and_clips_to_the_frame() -> None:
    assert expand((100, 100, 40, 20), 0.25, (640, 480)) == (90, 95, 60, 30)
    assert expand((0, 5, 40, 40), 0.5, (50, 480)) == (0, 0, 50, 65)
    assert expand((600, 440, 40, 40), 1.0, (640, 480)) == (560, 400, 80, 80)


def test_crop_is_a_copy_with_the_margin() -> None:
    image = textured()
    face = crops.crop(image, (50, 60, 40, 40), 0.25)
    assert face.shape == (60, 60, 3)
    assert np.array_equal(face, image[50:110, 40:100])
    face[:] = 0
    assert image[50:110, 40:100].any(), "the crop must not alias the frame buffer"


def test_sharpness_drops_with_blur() -> None:
    image = textured()
    box = (20, 20, 160, 160)
    sharp = crops.sharpness(image, box)
    blurred = crops.sharpness(cv2.GaussianBlur(image, (0, 0), 3), box)
    assert sharp > 10 * blurred > 0
    assert crops.sharpness(image, (10, 10, 2, 2)) == 0.0


@pytest.mark.parametrize(
    ("better", "worse"),
    [
        ((0.9, (0, 0, 100, 100), 500.0), (0.6, (0, 0, 100, 100), 500.0)),  # score
        ((0.9, (0, 0, 100, 100), 500.0), (0.9, (0, 0, 40, 40), 500.0)),  # size
        ((0.9, (0, 0, 100, 100), 500.0), (0.9, (0, 0, 100, 100), 20.0)),  # sharpness
    ],
)
def test_quality_prefers_score_size_and_sharpness(
    better: tuple[float, tuple[int, int, int, int], float],
    worse: tuple[float, tuple[int, int, int, int], float],
) -> None:
    assert 0 <= crops.quality(*worse) < crops.quality(*better) <= 1


def test_quality_saturates_at_full_size() -> None:
    big = crops.quality(0.9, (0, 0, 400, 400), 300.0)
    full = crops.quality(0.9, (0, 0, 112, 112), 300.0)
    assert big == pytest.approx(full)


def test_iou() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (10, 0, 10, 10)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
