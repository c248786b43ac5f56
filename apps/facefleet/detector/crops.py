"""Face crops and how good they are: pure functions on numpy images."""

from __future__ import annotations

import cv2
import numpy as np

from facefleet.detector.geometry import Box, Image, expand

#: A face this many pixels across (geometric mean of w and h) counts as full size; the input
#: size of common face-recognition models.
FULL_SIZE_PX = 112.0
#: Laplacian variance at which the sharpness term is 0.5 (in-focus webcam faces: 200..2000).
SHARPNESS_HALF = 100.0
#: Sharpness is measured on the face scaled down to at most this width, so it costs little and
#: a large face is not favoured twice (it already wins on size).
SHARPNESS_WIDTH = 128


def crop(image: Image, box: Box, margin: float) -> Image:
    """A copy of the face with `margin` around it (clipped), independent of the frame buffer."""
    x, y, w, h = expand(box, margin, (image.shape[1], image.shape[0]))
    return image[y : y + h, x : x + w].copy()


def face_grey(image: Image, box: Box) -> Image:
    """The face (no margin, clipped) in grey, scaled down to at most SHARPNESS_WIDTH wide;
    empty when the box is under 3 pixels on a side."""
    x, y, w, h = expand(box, 0.0, (image.shape[1], image.shape[0]))
    if w < 3 or h < 3:
        return np.zeros((0, 0), np.uint8)
    face = image[y : y + h, x : x + w]
    if w > SHARPNESS_WIDTH:
        size = (SHARPNESS_WIDTH, max(3, round(h * SHARPNESS_WIDTH / w)))
        face = cv2.resize(face, size, interpolation=cv2.INTER_AREA)
    grey: Image = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY) if face.ndim == 3 else face
    return grey


def laplacian_variance(grey: Image) -> float:
    """High for crisp edges, low for blur; 0.0 for an empty image."""
    if grey.size == 0:
        return 0.0
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def sharpness(image: Image, box: Box) -> float:
    """Variance of the Laplacian of the grey face: high for crisp edges, low for blur."""
    return laplacian_variance(face_grey(image, box))


def quality(score: float, box: Box, sharp: float) -> float:
    """How good a view of a face is, in 0..1: detector score x size term x sharpness term.

    size term = min(1, sqrt(w*h) / FULL_SIZE_PX); sharpness term = s / (s + SHARPNESS_HALF).
    A product, so a crop must be good on all three: a big blurred face or a sharp but tiny
    one both lose to a medium, crisp, confidently detected one.
    """
    size_term = min(1.0, float(np.sqrt(max(0, box[2]) * max(0, box[3]))) / FULL_SIZE_PX)
    sharp_term = sharp / (sharp + SHARPNESS_HALF) if sharp > 0 else 0.0
    return max(0.0, min(1.0, score)) * size_term * sharp_term
