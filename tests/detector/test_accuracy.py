"""Accuracy of the default backend (YuNet 2023mar, default thresholds) on ../shared/data/faces.

Measured with OpenCV 4.14 (9 images, 43 labelled faces, IoU 0.5), default detect_width 416:
YuNet 43 found, 0 false positives (recall 1.000, precision 1.000; at detect_width 640:
0.977 / 0.977); Haar 37 found, 1 false positive (0.860, 0.974). The thresholds sit a little
below, so a real regression fails and a one-face wobble does not.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from facefleet.detector import evaluation
from facefleet.detector.settings import DetectionSettings
from facefleet.shared import YUNET_MODEL
from tests.helpers import require_shared

pytestmark = pytest.mark.shared


def recall_precision(settings: DetectionSettings) -> tuple[float, float]:
    result = evaluation.recall_precision(settings, require_shared("data", "faces"))
    assert result["faces"] == 43
    return result["recall"], result["precision"]


def test_default_backend_yunet_2023mar() -> None:
    model = require_shared("models", YUNET_MODEL)
    assert DetectionSettings().backend == "yunet"
    recall, precision = recall_precision(DetectionSettings(model=str(model)))
    assert recall >= 0.95
    assert precision >= 0.95


def test_haar_fallback() -> None:
    recall, precision = recall_precision(replace(DetectionSettings(), backend="haar"))
    assert recall >= 0.80
    assert precision >= 0.90
