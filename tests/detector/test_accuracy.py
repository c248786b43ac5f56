"""Accuracy of the default backend (YuNet 2023mar, default thresholds) on ../shared/data/faces.

Measured with OpenCV 4.14 (9 images, 43 labelled faces, IoU 0.5), default detect_width 416:
YuNet 43 found, 0 false positives (recall 1.000, precision 1.000; at detect_width 640:
0.977 / 0.977); Haar 37 found, 1 false positive (0.860, 0.974). The thresholds sit a little
below, so a real regression fails and a one-face wobble does not.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import pytest

from facefleet.detector.backends import create_detector
from facefleet.detector.geometry import Box
from facefleet.detector.settings import DetectionSettings
from tests.conftest import require_shared
from tests.detector.test_backends import matches

pytestmark = pytest.mark.shared


def read_labels(path: Path) -> dict[str, list[Box]]:
    """`# <image> W H` headers, then one `x1 y1 x2 y2` line per face."""
    labels: dict[str, list[Box]] = {}
    current: list[Box] = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "#":
            current = labels.setdefault(parts[1], [])
        else:
            x1, y1, x2, y2 = map(int, parts)
            current.append((x1, y1, x2 - x1, y2 - y1))
    return labels


def recall_precision(settings: DetectionSettings) -> tuple[float, float]:
    faces_dir = require_shared("data", "faces")
    detector = create_detector(settings)
    labels = read_labels(faces_dir / "labels.txt")
    assert sum(map(len, labels.values())) == 43
    truth = found = false = 0
    for name, boxes in labels.items():
        image = cv2.imread(str(faces_dir / name))
        assert image is not None, name
        tp, fp = matches([f.box for f in detector.detect(image)], boxes)
        truth, found, false = truth + len(boxes), found + tp, false + fp
    return found / truth, found / max(1, found + false)


def test_default_backend_yunet_2023mar() -> None:
    model = require_shared("models", "face_detection_yunet_2023mar.onnx")
    assert DetectionSettings().backend == "yunet"
    recall, precision = recall_precision(DetectionSettings(model=str(model)))
    assert recall >= 0.95
    assert precision >= 0.95


def test_haar_fallback() -> None:
    recall, precision = recall_precision(replace(DetectionSettings(), backend="haar"))
    assert recall >= 0.80
    assert precision >= 0.90
