"""Where frames come from: `camera.source` parsed into a source, read one frame at a time.

Live sources (V4L2 camera, GStreamer pipeline, RTSP/HTTP stream) are read by a grabber thread
that keeps only the newest frame: a slow consumer skips frames (counted in `dropped`) instead of
falling behind. A live source that fails is reopened with exponential backoff; its `state` goes
open -> reopening -> lost (backoff at its maximum) -> open. Each failed open is logged once, with
the reason (`diagnose`: no such device, permission denied, connection refused, ...) and the time
of the next try, and the reason is kept in `error` for the heartbeat.

Finite sources (video file, folder of images, `synthetic:`) are read as fast as the consumer
asks unless `realtime` paces them at their frame rate; `loop` restarts them, otherwise the end
of the source sets `state` to "ended". Their frames' `clock` is media time (the frame number
over the frame rate, from the start), paced or not.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

import cv2

from facefleet.config import ConfigError
from facefleet.contract import utc_timestamp
from facefleet.detector.geometry import Image
from facefleet.detector.settings import CameraSettings
from facefleet.detector.synthetic import SCHEME as SYNTHETIC_SCHEME
from facefleet.detector.synthetic import SceneParams, SyntheticScene

log = logging.getLogger(__name__)

Kind = Literal["v4l2", "gstreamer", "stream", "file", "folder", "synthetic"]
CameraState = Literal["open", "reopening", "lost", "ended"]

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm")
#: Pace of a folder of images under `realtime` when `camera.fps` is 0.
FOLDER_FPS = 10.0
GST_SINK = " ! videoconvert ! appsink drop=true max-buffers=1 sync=false"


@dataclass(frozen=True)
class SourceSpec:
    """A parsed `camera.source`: its kind and what to open (device index, path, URL, ...)."""

    kind: Kind
    target: str | int
    scene: SceneParams | None = None

    @property
    def live(self) -> bool:
        return self.kind in ("v4l2", "gstreamer", "stream")


def parse_source(uri: str) -> SourceSpec:
    """Classify a source URI; raises ValueError with a one-line reason."""
    text = uri.strip()
    if not text:
        raise ValueError("camera.source is empty")
    if text.startswith(SYNTHETIC_SCHEME):
        return SourceSpec("synthetic", text, SceneParams.from_uri(text))
    if text.startswith("gst:"):
        return SourceSpec("gstreamer", text[4:].strip())
    if " ! " in text:
        return SourceSpec("gstreamer", text)
    if text.isdigit():
        return SourceSpec("v4l2", int(text))
    if text.startswith("/dev/"):
        return SourceSpec("v4l2", text)
    scheme = urlsplit(text).scheme.lower()
    if scheme in STREAM_SCHEMES:
        return SourceSpec("stream", text)
    if scheme == "file":
        text = urlsplit(text).path
    elif re.match(r"^[a-z][a-z0-9+.-]*://", text, re.IGNORECASE):
        raise ValueError(f"unsupported source scheme {scheme!r}")
    path = Path(text).expanduser()
    if path.is_dir():
        folder_images(path)  # an empty folder would end at once, without a word
        return SourceSpec("folder", str(path))
    if path.is_file():
        return SourceSpec("file", str(path))
    raise ValueError(f"{text}: no such video file or image folder")


def redact(uri: str) -> str:
    """The source as it may appear in logs and heartbeats: no password of a stream URL."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class Frame:
    image: Image
    index: int
    captured: str
    clock: float


class FrameSource(Protocol):
    state: CameraState
    reopens: int
    dropped: int
    #: why the source is not delivering frames ("" while it is)
    error: str

    def read(self, timeout_s: float) -> Frame | None:
        """The next frame; None when none arrived within the timeout or the source ended."""
        ...

    def close(self) -> None:
        """Release the source; its state becomes "ended"."""
        ...


def source_spec(camera: CameraSettings) -> SourceSpec:
    """`camera.source` parsed; ConfigError when it cannot be, or this OpenCV cannot open it."""
    try:
        spec = parse_source(camera.source)
    except ValueError as exc:
        raise ConfigError(f"camera.source: {exc}") from None
    if spec.kind == "gstreamer" and not has_gstreamer():
        raise ConfigError(
            f"camera.source is a GStreamer pipeline but OpenCV {cv2.__version__} was built "
            "without GStreamer (use the system OpenCV, e.g. JetPack's)"
        )
    return spec


def open_source(camera: CameraSettings) -> FrameSource:
    """Open `camera.source`; ConfigError when it cannot be parsed or opened at all."""
    spec = source_spec(camera)
    if spec.live:
        return LiveSource(spec, camera)
    return FiniteSource(spec, camera)


def has_gstreamer() -> bool:
    return bool(cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER))


#: Ports of the stream schemes when the URL names none.
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "http": 80, "https": 443}
PROBE_TIMEOUT_S = 3.0


def diagnose(spec: SourceSpec) -> str:
    """Why a live source did not open, in words an operator can act on. OpenCV only says
    "not opened", so this looks at the device node or tries the stream's TCP port."""
    if spec.kind == "v4l2":
        return _diagnose_device(
            f"/dev/video{spec.target}" if isinstance(spec.target, int) else str(spec.target)
        )
    if spec.kind == "stream":
        return _diagnose_stream(str(spec.target))
    return "the GStreamer pipeline did not start (try it with gst-launch-1.0)"


def _diagnose_device(path: str) -> str:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "no such device"
    except PermissionError:
        return "permission denied"
    except OSError as exc:
        return exc.strerror or str(exc)
    if not stat.S_ISCHR(info.st_mode):
        return "not a device (a V4L2 camera is a character device)"
    if not os.access(path, os.R_OK | os.W_OK):
        return "permission denied (the user needs the video group)"
    return "unsupported format, or not a capture device, or busy"


def _diagnose_stream(url: str) -> str:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:
        return "bad port in the URL"
    if not parts.hostname or port is None or scheme == "udp":
        return "no stream (OpenCV could not open it)"
    try:
        with socket.create_connection((parts.hostname, port), timeout=PROBE_TIMEOUT_S):
            pass
    except socket.gaierror:
        return f"host name {parts.hostname} not found"
    except ConnectionRefusedError:
        return f"connection refused ({parts.hostname}:{port})"
    except socket.timeout:
        return f"connection timed out ({parts.hostname}:{port})"
    except OSError as exc:
        return f"{exc.strerror or exc} ({parts.hostname}:{port})"
    return "the server answers, but no video (wrong path or credentials, or unsupported format)"


def open_capture(spec: SourceSpec, camera: CameraSettings) -> cv2.VideoCapture:
    """A VideoCapture for a live source (may be unopened: the caller checks and retries)."""
    if spec.kind == "gstreamer":
        pipeline = str(spec.target)
        if "appsink" not in pipeline:
            pipeline += GST_SINK
        return cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
    if spec.kind == "stream":
        return cv2.VideoCapture(str(spec.target), cv2.CAP_FFMPEG)
    capture = cv2.VideoCapture(spec.target, cv2.CAP_V4L2)
    if capture.isOpened():
        capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*"MJPG"))
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, camera.width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, camera.height)
        if camera.fps > 0:
            capture.set(cv2.CAP_PROP_FPS, camera.fps)
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    return capture


class LiveSource:
    """A grabber thread that keeps only the newest frame and reopens a failed source."""

    def __init__(
        self,
        spec: SourceSpec,
        camera: CameraSettings,
        opener: Callable[[SourceSpec, CameraSettings], cv2.VideoCapture] = open_capture,
    ) -> None:
        self.spec = spec
        self.camera = camera
        self.name = redact(str(spec.target))
        self.state: CameraState = "reopening"
        self.reopens = 0
        self.dropped = 0
        self.error = ""
        self._opener = opener
        self._latest: Frame | None = None
        self._ready = threading.Condition()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="frame-grabber", daemon=True)
        self._thread.start()

    def read(self, timeout_s: float) -> Frame | None:
        with self._ready:
            if self._latest is None:
                self._ready.wait(timeout_s)
            frame, self._latest = self._latest, None
            return frame

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5.0)
        self.state = "ended"

    def _run(self) -> None:
        delay = self.camera.reopen_min_s
        ever_open = False
        index = 0
        while not self._closed.is_set():
            capture = self._opener(self.spec, self.camera)
            if not capture.isOpened():
                capture.release()
                self._open_failed(delay)
                self._closed.wait(delay)
                delay = min(delay * 2, self.camera.reopen_max_s)
                continue
            if ever_open:
                self.reopens += 1
            ever_open = True
            delay = self.camera.reopen_min_s
            self.state, self.error = "open", ""
            log.info("camera %s open", self.name)
            index = self._grab(capture, index)
            capture.release()
        log.debug("frame grabber for %s stopped", self.name)

    def _open_failed(self, delay: float) -> None:
        """One line per failed attempt (so at most one per backoff), with the next try."""
        self.error = diagnose(self.spec)
        self.state = "lost" if delay >= self.camera.reopen_max_s else "reopening"
        retry_at = time.strftime("%H:%M:%S", time.localtime(time.time() + delay))
        level = logging.ERROR if self.state == "lost" else logging.WARNING
        log.log(
            level, "camera %s: %s; next try in %g s (%s)", self.name, self.error, delay, retry_at
        )

    def _grab(self, capture: cv2.VideoCapture, index: int) -> int:
        """Read until the source fails or the source is closed; returns the next index."""
        while not self._closed.is_set():
            ok, image = capture.read()
            if not ok or image is None:
                self.state, self.error = "reopening", "stopped delivering frames"
                log.warning("camera %s stopped delivering frames; reopening", self.name)
                break
            frame = Frame(image, index, utc_timestamp(), time.monotonic())
            index += 1
            with self._ready:
                if self._latest is not None:
                    self.dropped += 1
                self._latest = frame
                self._ready.notify()
        return index


class FiniteSource:
    """A video file, a folder of images or the synthetic scene, optionally paced and looped."""

    def __init__(self, spec: SourceSpec, camera: CameraSettings) -> None:
        self.spec = spec
        self.camera = camera
        self.state: CameraState = "open"
        self.reopens = 0
        self.dropped = 0
        self.error = ""
        self._native_fps = 0.0
        self._images = self._start()
        self._index = 0
        self._paced_from = time.monotonic()

    @property
    def fps(self) -> float:
        """The pace under `realtime`: `camera.fps` if set, else the source's own rate."""
        if self.camera.fps > 0:
            return self.camera.fps
        return self._native_fps or FOLDER_FPS

    def read(self, timeout_s: float) -> Frame | None:
        if self.state == "ended":
            return None
        image = next(self._images, None)
        if image is None and self.camera.loop:
            self._images = self._start()
            image = next(self._images, None)
        if image is None:
            self.state = "ended"
            log.info("source %s ended after %d frames", self.spec.target, self._index)
            return None
        # the clock of a finite source is its media time, so that the tracker's windows
        # (republish_s, merge.window_s) mean the same whether it is read paced or flat out
        due = self._paced_from + self._index / self.fps
        if self.camera.realtime:
            time.sleep(max(0.0, due - time.monotonic()))
        frame = Frame(image, self._index, utc_timestamp(), due)
        self._index += 1
        return frame

    def close(self) -> None:
        self._images.close()
        self.state = "ended"

    def _start(self) -> Generator[Image, None, None]:
        if self.spec.kind == "synthetic":
            assert self.spec.scene is not None
            self._native_fps = self.spec.scene.fps
            return synthetic_frames(SyntheticScene(self.spec.scene))
        if self.spec.kind == "folder":
            return folder_frames(Path(str(self.spec.target)))
        capture = cv2.VideoCapture(str(self.spec.target))
        if not capture.isOpened():
            raise ConfigError(f"camera.source: {self.spec.target}: cannot open as a video file")
        self._native_fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        return video_frames(capture)


def synthetic_frames(scene: SyntheticScene) -> Generator[Image, None, None]:
    for index in range(scene.params.frame_count):
        yield scene.frame(index)


def image_files(folder: Path) -> list[Path]:
    """The image files of a folder (by their suffix), in name order."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def folder_images(folder: Path) -> list[Path]:
    """`image_files`, at least one; ValueError with a one-line reason otherwise."""
    images = image_files(folder)
    if not images:
        raise ValueError(f"{folder}: no images in this folder ({', '.join(IMAGE_SUFFIXES)})")
    return images


def folder_frames(folder: Path) -> Generator[Image, None, None]:
    """Images of a folder in name order; unreadable ones are logged and skipped."""
    for path in image_files(folder):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            log.warning("%s: not a readable image, skipped", path)
            continue
        yield image


def video_frames(capture: cv2.VideoCapture) -> Generator[Image, None, None]:
    try:
        while True:
            ok, image = capture.read()
            if not ok or image is None:
                return
            yield image
    finally:
        capture.release()
