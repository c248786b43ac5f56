"""The quality gate: is a detected face usable enough to publish? Pure functions on one frame.

`measure` takes the figures of one detection, `reason` names the first test it fails (None:
usable). The thresholds and what they mean are in `settings.QualitySettings`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2

from facefleet.detector.backends import Detection
from facefleet.detector.crops import face_grey, laplacian_variance
from facefleet.detector.geometry import Image
from facefleet.detector.settings import QualitySettings

#: Every reason `reason` can give, in the order the tests run; the heartbeat counts by these.
REASONS = ("small", "edge", "score", "dark", "bright", "flat", "blurred", "landmarks", "yaw")


@dataclass(frozen=True)
class Measures:
    """One detection's figures: shorter box side and distance to the frame border (frame
    pixels), detector score (gated only with landmarks, i.e. YuNet's: Haar's squashed
    cascade weight is no probability, its threshold is `haar_min_neighbors`), mean and
    standard deviation of the grey face (0..255), sharpness,
    and from the landmarks (None without them) their plausibility and the estimated yaw."""

    size_px: int
    edge_px: int
    score: float
    luma: float
    contrast: float
    sharpness: float
    landmarks_ok: bool | None
    yaw_deg: float | None


def landmark_geometry(points: tuple[tuple[float, float], ...]) -> tuple[bool, float]:
    """(plausible, yaw in degrees) from YuNet's five points (right eye, left eye, nose, right
    and left mouth corner). In the frame of the eye line (roll removed) both eyes must lie
    above the nose and the nose above the mouth. Yaw: the nose tip's offset from the middle
    of the eyes, in half eye distances, taken as the tangent of the turn (the nose tip stands
    about half an eye distance in front of the eyes, and the eyes' distance shrinks with the
    cosine of the turn)."""
    (rx, ry), (lx, ly), (nx, ny), (mrx, mry), (mlx, mly) = points
    ex, ey = lx - rx, ly - ry
    eye_distance = math.hypot(ex, ey)
    if eye_distance < 1.0:
        return False, 90.0
    ux, uy = ex / eye_distance, ey / eye_distance  # along the eye line
    mid_x, mid_y = (rx + lx) / 2, (ry + ly) / 2

    def along(x: float, y: float) -> float:
        return (x - mid_x) * ux + (y - mid_y) * uy

    def down(x: float, y: float) -> float:
        return (y - mid_y) * ux - (x - mid_x) * uy

    nose_down = down(nx, ny)
    mouth_down = (down(mrx, mry) + down(mlx, mly)) / 2
    plausible = 0 < nose_down < mouth_down and (along(mlx, mly) - along(mrx, mry)) > 0
    offset = along(nx, ny) / (eye_distance / 2)
    yaw = math.degrees(math.atan(offset))
    return plausible, abs(yaw)


def measure(image: Image, detection: Detection) -> Measures:
    x, y, w, h = detection.box
    height, width = image.shape[:2]
    grey = face_grey(image, detection.box)
    if grey.size:
        mean, std = cv2.meanStdDev(grey)
        luma, contrast = float(mean[0][0]), float(std[0][0])
    else:
        luma = contrast = 0.0
    landmarks_ok: bool | None = None
    yaw: float | None = None
    if len(detection.landmarks) == 5:
        landmarks_ok, yaw = landmark_geometry(detection.landmarks)
    return Measures(
        size_px=min(w, h),
        edge_px=min(x, y, width - (x + w), height - (y + h)),
        score=detection.score,
        luma=luma,
        contrast=contrast,
        sharpness=laplacian_variance(grey),
        landmarks_ok=landmarks_ok,
        yaw_deg=yaw,
    )


def reason(m: Measures, s: QualitySettings) -> str | None:
    """The first gate test the face fails (one of REASONS), or None when it is usable."""
    if m.size_px < s.min_face_px:
        return "small"
    if m.edge_px < s.edge_px:
        return "edge"
    if m.landmarks_ok is not None and m.score < s.min_score:
        return "score"
    if m.luma < s.min_luma:
        return "dark"
    if m.luma > s.max_luma:
        return "bright"
    if m.contrast < s.min_contrast:
        return "flat"
    if m.sharpness < s.min_sharpness:
        return "blurred"
    if m.landmarks_ok is False:
        return "landmarks"
    if m.yaw_deg is not None and m.yaw_deg > s.max_yaw_deg:
        return "yaw"
    return None
