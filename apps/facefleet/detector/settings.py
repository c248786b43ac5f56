"""Configuration of the detector service (`/etc/facefleet/detector.toml`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from facefleet.config import ConfigError
from facefleet.mqtt import MqttSettings
from facefleet.settings import ServiceSettings


@dataclass(frozen=True)
class CameraSettings:
    """Where frames come from. `source` is a V4L2 device path or index, a GStreamer pipeline
    (`gst:` prefix or containing `!`), an RTSP/HTTP URL, a video file, a folder of images, or
    `synthetic:` (a generated scene with moving faces that needs nothing from outside)."""

    source: str = "synthetic:"
    width: int = 640
    height: int = 480
    fps: float = 0.0
    realtime: bool = False
    loop: bool = False
    reopen_min_s: float = 1.0
    reopen_max_s: float = 30.0

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError("width and height must be positive")
        if not 0 < self.reopen_min_s <= self.reopen_max_s:
            raise ValueError("need 0 < reopen_min_s <= reopen_max_s")


@dataclass(frozen=True)
class DetectionSettings:
    """Face detection. `model` is the YuNet ONNX file (backend yunet; empty: the 2023mar model
    under FACEFLEET_SHARED) or a Haar cascade XML (backend haar; empty: OpenCV's own cascade).
    `score_threshold` and `nms_threshold` apply to YuNet; `haar_*` to the cascade.

    Frames wider than `detect_width` are downscaled for detection only (boxes are reported in
    frame pixels). 416 keeps YuNet above 60 fps on one core at 640x480, and faces that would
    get too small for it are below `min_face_px` anyway."""

    backend: Literal["yunet", "haar"] = "yunet"
    model: str = ""
    score_threshold: float = 0.7
    nms_threshold: float = 0.3
    min_face_px: int = 20
    detect_width: int = 416
    haar_scale_factor: float = 1.1
    haar_min_neighbors: int = 5

    def __post_init__(self) -> None:
        if not 0 < self.score_threshold < 1:
            raise ValueError("score_threshold must be between 0 and 1")
        if self.haar_scale_factor <= 1.0:
            raise ValueError("haar_scale_factor must be greater than 1")
        if self.detect_width < 64:
            raise ValueError("detect_width must be at least 64")


@dataclass(frozen=True)
class TrackingSettings:
    """A track ends after `max_missed` frames without a match; it is published only once it
    has `min_hits` detections, and again at most every `republish_s` while it lasts."""

    iou_threshold: float = 0.3
    max_missed: int = 8
    min_hits: int = 3
    republish_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.iou_threshold < 1:
            raise ValueError("iou_threshold must be between 0 and 1")
        if self.max_missed < 1 or self.min_hits < 1:
            raise ValueError("max_missed and min_hits must be at least 1")
        if self.republish_s <= 0:
            raise ValueError("republish_s must be positive")


@dataclass(frozen=True)
class PublishSettings:
    """`best`: one crop per track; `every-frame`: every face of every frame (the homework).

    While the broker is unreachable up to `max_queued` messages wait in memory; beyond that new
    faces are dropped and counted. On shutdown the detector waits at most `flush_timeout_s` for
    the broker to acknowledge what is still in flight."""

    mode: Literal["best", "every-frame"] = "best"
    encoding: Literal["jpeg", "png"] = "jpeg"
    jpeg_quality: int = 90
    margin: float = 0.25
    max_queued: int = 1000
    flush_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be 1..100")
        if not 0 <= self.margin <= 2:
            raise ValueError("margin must be 0..2 (a fraction of the face size)")
        if self.max_queued < 1:
            raise ValueError("max_queued must be at least 1")
        if self.flush_timeout_s < 0:
            raise ValueError("flush_timeout_s must not be negative")


@dataclass(frozen=True)
class DetectorConfig(ServiceSettings):
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    camera: CameraSettings = field(default_factory=CameraSettings)
    detection: DetectionSettings = field(default_factory=DetectionSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    publish: PublishSettings = field(default_factory=PublishSettings)


@dataclass(frozen=True)
class DetectorChoice:
    """The backend and model a command runs with; `note` says why it is not what was asked."""

    backend: Literal["yunet", "haar"]
    model: str
    note: str = ""


def choose_detector(backend: str, model: Path | None, yunet_model: Path) -> DetectorChoice:
    """Resolve `auto` (YuNet when its model is there, else the zero-download Haar cascade)
    and check an explicit model file. `yunet_model` is the default YuNet model file."""
    if model is not None:
        if not model.is_file():
            raise ConfigError(f"--model: {model} does not exist")
        haar = backend == "haar" or (backend == "auto" and model.suffix == ".xml")
        chosen: Literal["yunet", "haar"] = "haar" if haar else "yunet"
        return DetectorChoice(chosen, str(model.resolve()))
    if backend == "haar":
        return DetectorChoice("haar", "")
    if yunet_model.is_file():
        return DetectorChoice("yunet", str(yunet_model.resolve()))
    if backend == "yunet":
        raise ConfigError(f"no YuNet model at {yunet_model}: pass --model FILE or --backend haar")
    return DetectorChoice(
        "haar", "", f"YuNet model not found at {yunet_model}; using the Haar cascade"
    )
