"""Appearance signatures of tracks and camera-cut detection, for merging tracks of one person.

Pure functions on numpy images, cheap enough for every frame on one Jetson core: a hue x
saturation histogram of the face and of the region below it (hair, collar, clothes: what stays
the same when the face turns), and a 32x18 grey thumbnail per frame to spot cuts.
"""

from __future__ import annotations

import cv2
import numpy as np

from facefleet.detector.geometry import Box, Image, expand

HUE_BINS = 12
SATURATION_BINS = 6
#: Pixels darker than this (0..255 value) carry no colour and are left out of the histograms.
MIN_VALUE = 30
#: Size of the frame thumbnail compared between frames to find cuts.
THUMBNAIL = (32, 18)
#: Weight of the newest view in a track's running signature.
SIGNATURE_SMOOTHING = 0.3
#: A confirmed track's signature is refreshed from every this many detections (appearance
#: changes slowly; a new track takes one from each of its first `tracking.min_hits`).
SIGNATURE_EVERY = 4


def _histogram(hsv: Image) -> Image:
    if hsv.size == 0:
        return np.zeros((HUE_BINS, SATURATION_BINS), np.float32)
    mask = cv2.inRange(hsv, (0, 0, MIN_VALUE), (180, 256, 256))
    hist = cv2.calcHist([hsv], [0, 1], mask, [HUE_BINS, SATURATION_BINS], [0, 180, 0, 256])
    total = float(hist.sum())
    return hist / total if total > 0 else hist


def signature(image: Image, box: Box) -> Image:
    """Two normalised H x S histograms stacked: the face, and the region under it as wide as the
    face and as tall (clipped by the frame)."""
    size = (image.shape[1], image.shape[0])
    x, y, w, h = expand(box, 0.0, size)
    face = image[y : y + h, x : x + w]
    below_top = min(size[1], y + h)
    below = image[below_top : min(size[1], below_top + h), x : x + w]
    parts = [_histogram(cv2.cvtColor(part, cv2.COLOR_BGR2HSV)) if part.size else
             _histogram(np.zeros((0, 0, 3), np.uint8)) for part in (face, below)]  # fmt: skip
    return np.stack(parts)


def blend(old: Image | None, new: Image) -> Image:
    """A track's running signature: an exponential moving average of its views."""
    if old is None:
        return new
    blended: Image = (1 - SIGNATURE_SMOOTHING) * old + SIGNATURE_SMOOTHING * new
    return blended


def distance(a: Image, b: Image) -> float:
    """Bhattacharyya distance (0 same, 1 disjoint) of the faces, and of the regions below where
    both have one, averaged."""
    distances = []
    for part in range(2):
        if a[part].sum() > 0 and b[part].sum() > 0:
            d = cv2.compareHist(
                a[part].astype(np.float32), b[part].astype(np.float32), cv2.HISTCMP_BHATTACHARYYA
            )
            distances.append(float(d))
    return sum(distances) / len(distances) if distances else 1.0


def thumbnail(image: Image) -> Image:
    """The frame at 32x18 in grey. Every n-th pixel first (about 64 wide), then INTER_AREA:
    OpenCV's area resize straight from a full frame to 32x18 costs milliseconds."""
    step = max(1, image.shape[1] // (2 * THUMBNAIL[0]))
    small: Image = cv2.resize(image[::step, ::step], THUMBNAIL, interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
    return grey.astype(np.float32)


def cut_between(previous: Image | None, current: Image, threshold: float) -> bool:
    """A camera cut: the mean absolute grey difference of the thumbnails is above threshold."""
    if previous is None:
        return False
    return float(np.abs(current - previous).mean()) > threshold
