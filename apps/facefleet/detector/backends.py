"""Face detection backends: YuNet (`cv2.FaceDetectorYN`, the default) and a Haar cascade.

Both take a BGR frame of any size, detect on a copy downscaled to `detect_width` (the main lever
on speed), and return boxes in the pixels of the original frame with a score in 0..1.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from facefleet.config import ConfigError
from facefleet.detector.geometry import Box, Image
from facefleet.detector.settings import DetectionSettings
from facefleet.shared import default_yunet_model

#: Haar levelWeights (summed weak-classifier votes of the last stage, typically 0..12 for
#: accepted faces) are squashed onto 0..1 with 1 - exp(-weight / HAAR_WEIGHT_SCALE).
#: Monotonic, not a probability: a weight of 4 gives 0.63, 8 gives 0.86.
HAAR_WEIGHT_SCALE = 4.0


@dataclass(frozen=True)
class Detection:
    """One face: box (x, y, w, h) in frame pixels and a score in 0..1. YuNet adds five
    landmarks in frame pixels: right eye, left eye, nose tip, right and left mouth corner (the
    person's right and left); Haar gives none."""

    box: Box
    score: float
    landmarks: tuple[tuple[float, float], ...] = ()


class FaceDetector(Protocol):
    name: str

    def detect(self, image: Image) -> list[Detection]: ...


def resolve_model(settings: DetectionSettings) -> str:
    """The model file to load: `detection.model`, else the backend's default."""
    if settings.model:
        return settings.model
    if settings.backend == "haar":
        return default_haar_cascade()
    model = default_yunet_model()
    if not model.is_file():
        raise ConfigError(
            f"no YuNet model given and the default {model} is missing: set detection.model "
            "(facefleet detect: --model FILE) or FACEFLEET_SHARED, or use the haar backend"
        )
    return str(model)


#: Where distribution and JetPack builds of OpenCV keep the cascades (Debian/Ubuntu package
#: opencv-data); the pip wheels carry them in cv2.data.
SYSTEM_HAAR_DIRS = ("/usr/share/opencv4/haarcascades", "/usr/share/opencv/haarcascades")
HAAR_FRONTAL_FACE = "haarcascade_frontalface_default.xml"


def default_haar_cascade() -> str:
    data = getattr(cv2, "data", None)
    if data is not None:
        return str(Path(data.haarcascades) / HAAR_FRONTAL_FACE)
    for directory in SYSTEM_HAAR_DIRS:
        if (Path(directory) / HAAR_FRONTAL_FACE).is_file():
            return str(Path(directory) / HAAR_FRONTAL_FACE)
    raise ConfigError(
        f"OpenCV {cv2.__version__} ships no Haar cascades: set detection.model to a "
        f"{HAAR_FRONTAL_FACE} (Debian/Ubuntu: package opencv-data) or use the yunet backend"
    )


class Downscaler:
    """Shrinks frames wider than `detect_width` and maps boxes back to frame pixels."""

    def __init__(self, detect_width: int) -> None:
        self.detect_width = detect_width

    def shrink(self, image: Image) -> tuple[Image, float]:
        width = image.shape[1]
        if width <= self.detect_width:
            return image, 1.0
        factor = self.detect_width / width
        height = max(1, round(image.shape[0] * factor))
        small = cv2.resize(image, (self.detect_width, height), interpolation=cv2.INTER_AREA)
        return small, factor

    @staticmethod
    def to_frame(box: tuple[float, float, float, float], factor: float, image: Image) -> Box:
        """Scale back, round, and clip to the frame."""
        height, width = image.shape[:2]
        x, y, w, h = (v / factor for v in box)
        x0, y0 = max(0, round(x)), max(0, round(y))
        x1, y1 = min(width, round(x + w)), min(height, round(y + h))
        return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


class YuNetDetector:
    name = "yunet"

    def __init__(self, settings: DetectionSettings, model: str) -> None:
        self.settings = settings
        self.model = model
        self._scale = Downscaler(settings.detect_width)
        if not Path(model).is_file():
            raise ConfigError(f"{model}: YuNet model file not found")
        if not hasattr(cv2, "FaceDetectorYN"):
            raise ConfigError(_opencv_cannot_run(model, "has no FaceDetectorYN (4.5.4+)"))
        try:
            self._net = cv2.FaceDetectorYN.create(
                model, "", (320, 320), settings.score_threshold, settings.nms_threshold, 5000
            )
        except cv2.error as exc:
            raise ConfigError(f"{model}: cannot load the YuNet model: {_first_line(exc)}") from None
        try:
            # an OpenCV older than the model loads it and fails on the first frame (4.6 with
            # the 2023mar model: "Layer with requested id=-1 not found")
            self._net.detect(np.zeros((320, 320, 3), np.uint8))
        except cv2.error as exc:
            raise ConfigError(_opencv_cannot_run(model, _first_line(exc))) from None
        self._input_size = (320, 320)

    def detect(self, image: Image) -> list[Detection]:
        small, factor = self._scale.shrink(image)
        size = (small.shape[1], small.shape[0])
        if size != self._input_size:
            self._net.setInputSize(size)
            self._input_size = size
        # no faces: None at run time, though the stubs say otherwise
        faces: Image | None = self._net.detect(small)[1]
        found = []
        for row in () if faces is None else faces:
            box = self._scale.to_frame((row[0], row[1], row[2], row[3]), factor, image)
            if min(box[2], box[3]) >= self.settings.min_face_px:
                points = tuple(
                    (float(row[k]) / factor, float(row[k + 1]) / factor) for k in range(4, 14, 2)
                )
                found.append(Detection(box, min(1.0, max(0.0, float(row[14]))), points))
        return found


class HaarDetector:
    """Viola-Jones cascade on the grey frame. `score_threshold` does not apply (the
    cascade's own threshold is `haar_min_neighbors`); scores come from the level weights."""

    name = "haar"

    def __init__(self, settings: DetectionSettings, model: str) -> None:
        self.settings = settings
        self.model = model
        self._scale = Downscaler(settings.detect_width)
        if not hasattr(cv2, "CascadeClassifier"):
            raise ConfigError(
                f"OpenCV {cv2.__version__} has no CascadeClassifier (removed in 5.x): "
                "use the yunet backend"
            )
        if not Path(model).is_file():
            raise ConfigError(f"{model}: Haar cascade file not found")
        self._cascade = cv2.CascadeClassifier()
        try:
            loaded = self._cascade.load(model)
        except cv2.error:
            loaded = False
        if not loaded:
            raise ConfigError(f"{model}: not a loadable Haar cascade")

    def detect(self, image: Image) -> list[Detection]:
        small, factor = self._scale.shrink(image)
        grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        min_px = max(1, round(self.settings.min_face_px * factor))
        boxes, _levels, weights = self._cascade.detectMultiScale3(
            grey,
            scaleFactor=self.settings.haar_scale_factor,
            minNeighbors=self.settings.haar_min_neighbors,
            minSize=(min_px, min_px),
            outputRejectLevels=True,
        )
        found = []
        for (x, y, w, h), weight in zip(boxes, np.ravel(weights)):
            score = 1.0 - math.exp(-max(0.0, float(weight)) / HAAR_WEIGHT_SCALE)
            box = self._scale.to_frame((x, y, w, h), factor, image)
            found.append(Detection(box, score))
        return found


#: The oldest OpenCV that runs each published YuNet model (by the date in its file name).
YUNET_MIN_OPENCV = {"2022mar": "4.5.4", "2023mar": "4.8.0", "2026may": "4.8.0"}


def _opencv_cannot_run(model: str, reason: str) -> str:
    """One line for a YuNet model this OpenCV cannot run: both versions and the ways out."""
    needs = next((v for k, v in YUNET_MIN_OPENCV.items() if k in Path(model).name), None)
    reason = re.sub(r"^OpenCV\(.*?\) \S+: error: ", "", reason)
    return (
        f"{model}: OpenCV {cv2.__version__} cannot run this YuNet model"
        + (f", which needs OpenCV {needs} or newer" if needs else "")
        + f" ({reason}); choose a model this OpenCV runs, the OpenCV wheel"
        " (detector_opencv: wheel) or the haar backend"
    )


def create_detector(settings: DetectionSettings) -> FaceDetector:
    """The configured backend, loaded; ConfigError (naming the file) when it cannot be."""
    model = resolve_model(settings)
    if settings.backend == "haar":
        return HaarDetector(settings, model)
    return YuNetDetector(settings, model)


def _first_line(exc: BaseException) -> str:
    """OpenCV's message without its source location: `OpenCV(4.14.0) /io/.../x.cpp:799:
    error: (-215:Assertion failed) model_proto.has_graph() in function 'populateNet'` ->
    `model_proto.has_graph() in function 'populateNet'` (not a model of this kind)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return re.sub(r"^OpenCV\([^)]*\) \S+: error: \([^)]*\) ", "", lines[-1])
