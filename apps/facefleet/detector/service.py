"""The detector service: capture -> detect -> track -> encode -> publish to the edge broker.

Faces go to `<prefix>/<node>/faces` at QoS 1 with the contract's MQTT v5 properties. Publishing
never blocks capture: while the broker is away paho keeps up to `publish.max_queued` messages;
beyond that faces are dropped and counted (`dropped`, `errors`). When a finite source ends, or
on SIGTERM, every track is flushed and published, the detector waits (bounded) for the broker's
acknowledgements, then reports `stopped` and exits 0.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import cv2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from facefleet import mqtt as mqtt_setup
from facefleet.config import redacted
from facefleet.contract import CONTENT_TYPES, DetectorFigures, FaceMeta, faces_topic, new_face_id
from facefleet.detector.backends import FaceDetector, create_detector
from facefleet.detector.settings import DetectorConfig, PublishSettings
from facefleet.detector.sources import Frame, FrameSource, open_source, source_spec
from facefleet.detector.sources import redact as redact_source
from facefleet.detector.tracker import Publication, Tracker
from facefleet.runtime import Link, ServiceSpec, StatusSource, Step, Worker

log = logging.getLogger(__name__)

#: The heartbeat's fps is the processing rate over this many recent seconds, or over three
#: frame intervals of a camera set to a slower rate (a detector at 0.1 fps is not idle).
FPS_WINDOW_S = 5.0
READ_TIMEOUT_S = 0.5


def check(cfg: DetectorConfig) -> None:
    """The source parses (this OpenCV can open its kind) and the model loads."""
    source_spec(cfg.camera)
    create_detector(cfg.detection)


class Figures:
    """The detector's counters: written by the capture loop and paho's callbacks, read by the
    heartbeat thread, always under one lock."""

    def __init__(self, camera_fps: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._window_s = max(FPS_WINDOW_S, 3.0 / camera_fps) if camera_fps > 0 else FPS_WINDOW_S
        self._recent: deque[float] = deque()
        self._since = time.monotonic()
        self.frames = 0
        self.faces_detected = 0
        self.tracks_active = 0
        self.published = 0
        self.published_bytes = 0
        self.dropped = 0
        self.unacked = 0
        self.errors = 0
        self.held_back: dict[str, int] = {}
        self.merged = 0

    def tracks_settled(self, held_back: dict[str, int], merged: int) -> None:
        """The tracker's counts of tracks held back by the quality gate and merged."""
        with self._lock:
            self.held_back = held_back
            self.merged = merged

    def frame_done(self, faces: int, tracks_active: int) -> None:
        now = time.monotonic()
        with self._lock:
            self.frames += 1
            self.faces_detected += faces
            self.tracks_active = tracks_active
            self._recent.append(now)
            while self._recent and self._recent[0] < now - self._window_s:
                self._recent.popleft()

    def failed(self, count: int = 1) -> None:
        with self._lock:
            self.errors += count

    def dropped_face(self) -> None:
        """A face the full publish queue refused: dropped, and an error."""
        with self._lock:
            self.dropped += 1
            self.errors += 1

    def acknowledged(self, size: int) -> None:
        with self._lock:
            self.published += 1
            self.published_bytes += size

    def waiting(self, unacked: int) -> None:
        """Faces still waiting for the broker's acknowledgement."""
        with self._lock:
            self.unacked = unacked

    def tracks_ended(self) -> None:
        with self._lock:
            self.tracks_active = 0

    def snapshot(self) -> DetectorFigures:
        now = time.monotonic()
        with self._lock:
            recent = sum(1 for t in self._recent if t >= now - self._window_s)
            span = min(self._window_s, now - self._since)
            return DetectorFigures(
                fps=round(recent / span, 2) if span > 0 else 0.0,
                frames=self.frames,
                faces_detected=self.faces_detected,
                tracks_active=self.tracks_active,
                published=self.published,
                published_bytes=self.published_bytes,
                dropped=self.dropped,
                unacked=self.unacked,
                errors=self.errors,
                held_back=dict(self.held_back),
                merged=self.merged,
            )


def encode(publication: Publication, settings: PublishSettings) -> bytes:
    if settings.encoding == "png":
        ok, data = cv2.imencode(".png", publication.crop, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        params = [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality]
        ok, data = cv2.imencode(".jpg", publication.crop, params)
    if not ok:
        raise ValueError(f"cannot encode a {publication.crop.shape} crop as {settings.encoding}")
    return bytes(data.tobytes())


class FacePublisher:
    """Publishes crops with the contract's properties; counts what the broker acknowledged.

    PUBACKs arrive in paho's on_publish, which runs under paho's own lock: the callback only
    appends the mid to a deque, and the capture thread settles them in `poll()`. (The message
    infos cannot be polled instead: paho marks one queued while offline as failed for good.)
    """

    def __init__(
        self,
        client: mqtt.Client,
        *,
        topic: str,
        node: str,
        detector: str,
        settings: PublishSettings,
        figures: Figures,
    ) -> None:
        self.client = client
        self.topic = topic
        self.node = node
        self.detector = detector
        self.settings = settings
        self.figures = figures
        self.content_type = CONTENT_TYPES[settings.encoding]
        self._pending: dict[int, int] = {}  # mid -> payload bytes
        self._acks: deque[tuple[int, bool]] = deque()  # (mid, refused), from paho's thread
        self._dropping = 0
        client.on_publish = self._on_publish

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        self._acks.append((mid, bool(reason.is_failure)))

    def publish(self, publication: Publication) -> None:
        try:
            payload = encode(publication, self.settings)
        except (ValueError, cv2.error) as exc:
            self.figures.failed()
            log.warning("track %d: %s", publication.track, exc)
            return
        meta = FaceMeta(
            id=new_face_id(),
            node=self.node,
            track=publication.track,
            ts=publication.captured,
            box=publication.box,
            score=publication.score,
            frame=publication.frame_size,
            detector=self.detector,
            sha256=hashlib.sha256(payload).hexdigest(),
            content_type=self.content_type,
        )
        props = mqtt_setup.publish_properties(self.content_type, meta.user_properties())
        info = self.client.publish(self.topic, payload, qos=1, properties=props)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self.figures.dropped_face()
            if not self._dropping:
                log.warning(
                    "publish queue full (%d messages, broker unreachable?): dropping faces",
                    self.settings.max_queued,
                )
            self._dropping += 1
            return
        if self._dropping:
            log.info("publishing again after dropping %d faces", self._dropping)
            self._dropping = 0
        # queued (also while offline: paho sends it after reconnecting) until its PUBACK
        self._pending[info.mid] = len(payload)
        self.poll()

    def poll(self) -> None:
        """Settle the PUBACKs received so far. Acks of other messages (the heartbeat's) are
        not in `_pending` and are ignored."""
        while self._acks:
            mid, refused = self._acks.popleft()
            size = self._pending.pop(mid, None)
            if size is None:
                continue
            if refused:
                self.figures.failed()
                log.warning("the broker refused face message %d", mid)
            else:
                self.figures.acknowledged(size)
        self.figures.waiting(len(self._pending))

    def drain(self, timeout_s: float) -> int:
        """Wait until the broker acknowledged every publish, or the timeout; returns how many
        are still unacknowledged."""
        deadline = time.monotonic() + timeout_s
        self.poll()
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.05)
            self.poll()
        return len(self._pending)


class Pipeline:
    """Detection and tracking, frame by frame: what the service runs, and what `facefleet
    evaluate` scores (the same code and configuration, without the broker)."""

    def __init__(self, cfg: DetectorConfig) -> None:
        self.backend: FaceDetector = create_detector(cfg.detection)
        self.tracker = Tracker(
            cfg.tracking, cfg.publish.margin, cfg.publish.mode, cfg.quality, cfg.merge
        )

    def process(self, frame: Frame) -> tuple[int, list[Publication]]:
        """(faces detected, crops to publish now); cv2.error when detection fails."""
        detections = self.backend.detect(frame.image)
        published = self.tracker.update(
            frame.image, detections, frame.captured, frame.clock, frame.index
        )
        return len(detections), published


class Detector:
    """One run of the service: the capture loop in the main thread and its clean shutdown."""

    def __init__(self, cfg: DetectorConfig, node: str, stop: threading.Event) -> None:
        self.cfg = cfg
        self.node = node
        self.stop = stop
        self.pipeline = Pipeline(cfg)
        self.source: FrameSource = open_source(cfg.camera)
        self.figures = Figures(cfg.camera.fps)
        self.link = Link(
            "edge",
            cfg.mqtt,
            f"facefleet-detector-{node}",
            StatusSource(cfg.prefix, node, "detector", cfg.heartbeat_s, self.status),
        )
        self.link.client.max_queued_messages_set(cfg.publish.max_queued)
        self.publisher = FacePublisher(
            self.link.client,
            topic=faces_topic(cfg.prefix, node),
            node=node,
            detector=self.pipeline.backend.name,
            settings=cfg.publish,
            figures=self.figures,
        )
        self.links = [self.link]
        self.workers: Sequence[Worker] = ()
        log.info("detector starting: %s", redacted(cfg))

    def status(self) -> DetectorFigures:
        return replace(
            self.figures.snapshot(),
            camera=self.source.state,
            camera_error=self.source.error,
            camera_reopens=self.source.reopens,
            frames_dropped=self.source.dropped,
            source=redact_source(self.cfg.camera.source),
            backend=self.pipeline.backend.name,
        )

    def main_loop(self) -> None:
        """Until the stop event, or the end of a finite source."""
        while not self.stop.is_set():
            frame = self.source.read(READ_TIMEOUT_S)
            if frame is None:
                if self.source.state == "ended":
                    return
                continue
            try:
                faces, publications = self.pipeline.process(frame)
            except cv2.error as exc:
                self.figures.failed()
                log.warning("detection failed on frame %d: %s", frame.index, exc)
                continue
            for publication in publications:
                self.publisher.publish(publication)
            self.publisher.poll()
            self._settle_tracks()
            self.figures.frame_done(faces, self.pipeline.tracker.active)

    def _settle_tracks(self) -> None:
        tracker = self.pipeline.tracker
        if tracker.merged != self.figures.merged or sum(tracker.held_back.values()) != sum(
            self.figures.held_back.values()
        ):
            self.figures.tracks_settled(dict(tracker.held_back), tracker.merged)

    def shutdown_steps(self) -> Sequence[Step]:
        return [self._flush, self.link.close]

    def _flush(self) -> None:
        """Publish every track and wait (bounded) until the broker has acknowledged them."""
        for publication in self.pipeline.tracker.flush():
            self.publisher.publish(publication)
        self._settle_tracks()
        self.figures.tracks_ended()
        self.source.close()
        unacked = self.publisher.drain(self.cfg.publish.flush_timeout_s)
        if unacked:
            self.figures.failed(unacked)
            log.error(
                "%d faces not acknowledged by the broker within %.0f s; they are lost",
                unacked,
                self.cfg.publish.flush_timeout_s,
            )
        log.info(
            "detector stopping: %d frames, %d faces detected, %d published",
            self.figures.frames,
            self.figures.faces_detected,
            self.figures.published,
        )


def quiet_opencv() -> None:
    """OpenCV warns on stderr at every failed open; the camera state transitions are logged
    instead (once each), so keep only its errors."""
    opencv_logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if opencv_logging is not None:
        opencv_logging.setLogLevel(opencv_logging.LOG_LEVEL_ERROR)


def build(cfg: DetectorConfig, node: str, stop: threading.Event) -> Detector:
    quiet_opencv()
    return Detector(cfg, node, stop)


SERVICE = ServiceSpec(DetectorConfig, lambda cfg: {"mqtt": cfg.mqtt}, check, build)
