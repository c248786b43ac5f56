"""Images and face boxes as the detector modules pass them around."""

from __future__ import annotations

from typing import Any

import numpy.typing as npt

#: A BGR (or grey) frame or crop as OpenCV returns it.
Image = npt.NDArray[Any]
#: A face box (x, y, w, h) in frame pixels.
Box = tuple[int, int, int, int]


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes; 0.0 when they do not overlap."""
    ix = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    iy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    return inter / float(a[2] * a[3] + b[2] * b[3] - inter)


def expand(box: Box, margin: float, frame_size: tuple[int, int]) -> Box:
    """The box grown by `margin` of its size on every side, clipped to the frame (w, h)."""
    x, y, w, h = box
    dx, dy = round(w * margin), round(h * margin)
    x0, y0 = max(0, x - dx), max(0, y - dy)
    x1, y1 = min(frame_size[0], x + w + dx), min(frame_size[1], y + h + dy)
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)
