"""Recall and precision of a detector configuration on a labelled image folder.

Used by the accuracy tests and the benchmarks: IoU 0.5, each labelled face matched once.
`labels.txt` has `# <image> W H` headers, then one `x1 y1 x2 y2` line per face.
"""

from __future__ import annotations

from pathlib import Path

import cv2

from facefleet.detector.backends import create_detector
from facefleet.detector.geometry import Box, iou
from facefleet.detector.settings import DetectionSettings


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


def matches(found: list[Box], truth: list[Box], threshold: float = 0.5) -> tuple[int, int]:
    """(true positives, false positives), each truth box used once."""
    free = list(truth)
    tp = 0
    for box in found:
        best = max(free, key=lambda t: iou(t, box), default=None)
        if best is not None and iou(best, box) >= threshold:
            free.remove(best)
            tp += 1
    return tp, len(found) - tp


def recall_precision(settings: DetectionSettings, faces_dir: Path) -> dict[str, float]:
    detector = create_detector(settings)
    labels = read_labels(faces_dir / "labels.txt")
    truth = found = false = 0
    for name, boxes in labels.items():
        image = cv2.imread(str(faces_dir / name))
        if image is None:
            raise RuntimeError(f"cannot read {faces_dir / name}")
        tp, fp = matches([f.box for f in detector.detect(image)], boxes)
        truth, found, false = truth + len(boxes), found + tp, false + fp
    return {
        "faces": truth,
        "found": found,
        "false_positives": false,
        "recall": round(found / max(1, truth), 3),
        "precision": round(found / max(1, found + false), 3),
    }
