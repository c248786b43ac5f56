"""The detector service: capture -> detect -> track -> encode -> publish to the edge broker.

Faces go to `<prefix>/<node>/faces` at QoS 1 with the contract's MQTT v5 properties, each
appended to the journal (fsynced, one fsync per frame's faces) and to the record of published
ids before it is published; the journal keeps it until the forwarder's `SpooledNotice` (see
journal.py). Publishing never blocks capture: while the broker is away paho keeps up to
`publish.max_queued` messages and the journal the rest; a face neither can take is dropped and
counted (`dropped`, `errors`). When a finite source ends, or on SIGTERM, every track is flushed
and published, the detector waits (bounded) for the broker's acknowledgements, then reports
`stopped` and exits 0; what the forwarder has not confirmed is published again at the next
start.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import cv2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from facefleet import mqtt as mqtt_setup
from facefleet.config import ConfigError, redacted
from facefleet.contract import (
    CONTENT_TYPES,
    ContractError,
    DetectorFigures,
    FaceMeta,
    SpooledNotice,
    faces_topic,
    new_face_id,
    spooled_topic,
)
from facefleet.detector.backends import FaceDetector, create_detector
from facefleet.detector.journal import Journal, JournaledFace, Published, PublishedRecord
from facefleet.detector.settings import DetectorConfig, JournalSettings, PublishSettings
from facefleet.detector.sources import Frame, FrameSource, open_source, source_spec
from facefleet.detector.sources import redact as redact_source
from facefleet.detector.tracker import Publication, Tracker
from facefleet.runtime import Link, ServiceSpec, StatusSource, Step, Worker, qos1

log = logging.getLogger(__name__)

#: The heartbeat's fps is the processing rate over this many recent seconds, or over three
#: frame intervals of a camera set to a slower rate (a detector at 0.1 fps is not idle).
FPS_WINDOW_S = 5.0
READ_TIMEOUT_S = 0.5
#: After a reconnect to the edge broker (a restarted broker may have lost what it acknowledged),
#: unconfirmed faces are published again this long after the link is back, unless the
#: forwarder's notice for them comes first.
RECONNECT_RESEND_S = 5.0
#: At most this many faces are published again per frame, so that a backlog replayed after a
#: restart does not stall capture.
RESEND_BATCH = 32
#: A journaled face paho's full queue refused is tried again this much later.
QUEUE_RETRY_S = 1.0


def check(cfg: DetectorConfig) -> None:
    """The source parses (this OpenCV can open its kind), the model loads, and the journal's
    directory, where it exists, is writable."""
    source_spec(cfg.camera)
    create_detector(cfg.detection)
    journal = cfg.journal.path
    if os.path.exists(journal) and not os.access(journal, os.W_OK | os.X_OK):
        raise ConfigError(f"journal.path: {journal} is not writable")


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
        self.journal_pending = 0
        self.journal_oldest_age_s = 0.0
        self.journal_resent = 0
        self.journal_overflow = 0
        self.journal_corrupt = 0

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

    def journal_state(self, journal: Journal, resent: int) -> None:
        with self._lock:
            self.journal_pending = len(journal.pending)
            self.journal_oldest_age_s = journal.oldest_age_s()
            self.journal_resent = resent
            self.journal_overflow = journal.overflow
            self.journal_corrupt = journal.corrupt

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
                journal_pending=self.journal_pending,
                journal_oldest_age_s=self.journal_oldest_age_s,
                journal_resent=self.journal_resent,
                journal_overflow=self.journal_overflow,
                journal_corrupt=self.journal_corrupt,
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
    """Journals crops, publishes them with the contract's properties, counts what the broker
    acknowledged, and publishes again what the forwarder has not confirmed in time.

    PUBACKs arrive in paho's on_publish, and the forwarder's notices in its on_message, both
    under paho's own lock: the callbacks only append to deques, and the capture thread settles
    them in `poll()`. (The message infos cannot be polled instead: paho marks one queued while
    offline as failed for good.)
    """

    def __init__(
        self,
        client: mqtt.Client,
        *,
        topic: str,
        node: str,
        detector: str,
        settings: PublishSettings,
        journal_settings: JournalSettings,
        figures: Figures,
        journal: Journal,
        record: PublishedRecord,
        connected: Callable[[], bool],
    ) -> None:
        self.client = client
        self.topic = topic
        self.node = node
        self.detector = detector
        self.settings = settings
        self.timeout_s = journal_settings.confirm_timeout_s
        self.figures = figures
        self.journal = journal
        self.record = record
        self.connected = connected
        self.content_type = CONTENT_TYPES[settings.encoding]
        self._pending: dict[int, tuple[int, bool]] = {}  # mid -> (payload bytes, first send)
        self._acks: deque[tuple[int, bool]] = deque()  # (mid, refused), from paho's thread
        # from paho's thread: the ids of a SpooledNotice, or None for a reconnect
        self._notices: deque[tuple[str, ...] | None] = deque()
        # face id -> (when to publish it again, attempts so far); the journal's order
        now = time.monotonic()
        self._due: dict[str, tuple[float, int]] = dict.fromkeys(journal.pending, (now, 0))
        self._next_due = now if self._due else math.inf
        self.resent = 0
        self._dropping = 0
        self._overflowing = 0
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        figures.journal_state(journal, self.resent)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        self._acks.append((mid, bool(reason.is_failure)))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._notices.append(SpooledNotice.decode(bytes(msg.payload)).ids)
        except ContractError as exc:
            log.warning("ignored a notice on %s: %s", msg.topic, exc)

    def reconnected(self) -> None:
        """The edge link is (back) up: the faces it acknowledged may be lost with a restarted
        broker, so all unconfirmed ones are due within RECONNECT_RESEND_S."""
        self._notices.append(None)

    def _face(self, publication: Publication) -> JournaledFace | None:
        try:
            payload = encode(publication, self.settings)
        except (ValueError, cv2.error) as exc:
            self.figures.failed()
            log.warning("track %d: %s", publication.track, exc)
            return None
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
        return JournaledFace(
            meta.id, meta.ts, self.content_type, tuple(meta.user_properties()), payload
        )

    def publish(self, publications: Sequence[Publication]) -> None:
        """Journal the faces of a frame with one fsync, record them, then publish them."""
        faces = [face for face in map(self._face, publications) if face is not None]
        if not faces:
            return
        journaled = self.journal.append(faces)
        try:
            self.record.add(Published(f.ts, f.id, kept) for f, kept in zip(faces, journaled))
        except OSError as exc:  # a full disk: the faces still go out, the record lacks them
            self.figures.failed(len(faces))
            log.error("record %s: cannot write (%s)", self.record.path, exc)
        for face, kept in zip(faces, journaled):
            if not kept:
                if not self._overflowing:
                    log.warning(
                        "journal full (%d bytes; is the forwarder running?): publishing faces"
                        " without it",
                        self.journal.max_bytes,
                    )
                self._overflowing += 1
            elif self._overflowing:
                log.info("journaling again after %d faces without it", self._overflowing)
                self._overflowing = 0
            self._send(face, kept, first=True)
        self.poll()

    def _send(self, face: JournaledFace, journaled: bool, first: bool) -> bool:
        """Hand a face to paho; False when its queue is full (a journaled face is then tried
        again in QUEUE_RETRY_S, any other is dropped and counted)."""
        props = mqtt_setup.publish_properties(face.content_type, list(face.properties))
        info = self.client.publish(self.topic, face.payload, qos=1, properties=props)
        attempts = self._due.get(face.id, (0.0, 0))[1]
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            if journaled:
                self._schedule(face.id, QUEUE_RETRY_S, attempts)
                return False
            self.figures.dropped_face()
            if not self._dropping:
                log.warning(
                    "publish queue full (%d messages, broker unreachable?): dropping faces",
                    self.settings.max_queued,
                )
            self._dropping += 1
            return False
        if self._dropping:
            log.info("publishing again after dropping %d faces", self._dropping)
            self._dropping = 0
        if journaled:
            wait = min(self.timeout_s * 2**attempts, self.timeout_s * 10)
            self._schedule(face.id, wait, attempts + 1)
        # queued (also while offline: paho sends it after reconnecting) until its PUBACK
        self._pending[info.mid] = (len(face.payload), first)
        return True

    def _schedule(self, face_id: str, wait_s: float, attempts: int) -> None:
        due = time.monotonic() + wait_s
        self._due[face_id] = (due, attempts)
        self._next_due = min(self._next_due, due)

    def poll(self) -> None:
        """Settle the PUBACKs and notices received so far, and publish again what is due.
        Acks of other messages (the heartbeat's) are not in `_pending` and are ignored."""
        while self._acks:
            mid, refused = self._acks.popleft()
            sent = self._pending.pop(mid, None)
            if sent is None:
                continue
            if refused:
                self.figures.failed()
                log.warning("the broker refused face message %d", mid)
            elif sent[1]:
                self.figures.acknowledged(sent[0])
        self.figures.waiting(len(self._pending))
        while self._notices:
            ids = self._notices.popleft()
            if ids is None:
                soon = time.monotonic() + RECONNECT_RESEND_S
                self._due = {k: (min(due, soon), n) for k, (due, n) in self._due.items()}
                self._next_due = min(self._next_due, soon)
                continue
            self.journal.confirm(ids)
            for face_id in ids:
                self._due.pop(face_id, None)
        self._resend_due()
        self.figures.journal_state(self.journal, self.resent)

    def _resend_due(self) -> None:
        """Publish again, oldest first, the faces whose confirmation is overdue, as far as
        paho's queue has room."""
        now = time.monotonic()
        room = min(RESEND_BATCH, self.settings.max_queued - len(self._pending))
        if now < self._next_due or room <= 0 or not self.connected():
            return
        due = [face_id for face_id, (when, _) in self._due.items() if when <= now]
        for face_id in due[:room]:
            if not self._send(self.journal.read(face_id), journaled=True, first=False):
                break
            self.resent += 1
        self._next_due = (
            now
            if len(due) > room
            else min((when for when, _ in self._due.values()), default=math.inf)
        )

    def drain(self, timeout_s: float) -> int:
        """Wait until the broker acknowledged every publish, or the timeout; returns how many
        are still unacknowledged."""
        deadline = time.monotonic() + timeout_s
        self.poll()
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.05)
            self.poll()
        return len(self._pending)

    def close(self) -> None:
        self.journal.close()
        self.record.close()


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
            subscriptions=[qos1(spooled_topic(cfg.prefix, node))],
            on_up=self._edge_up,
        )
        self.link.client.max_queued_messages_set(cfg.publish.max_queued)
        journal = cfg.journal
        try:
            opened = Journal(journal.path, journal.max_bytes, journal.segment_bytes)
            record = PublishedRecord(journal.path, journal.record_max_bytes, journal.record_keep)
            if record.add_unrecorded(opened):
                log.info("journaled faces a crash left out of the record were added to it")
        except OSError as exc:
            raise ConfigError(f"journal.path: {journal.path}: {exc.strerror or exc}") from None
        self.publisher = FacePublisher(
            self.link.client,
            topic=faces_topic(cfg.prefix, node),
            node=node,
            detector=self.pipeline.backend.name,
            settings=cfg.publish,
            journal_settings=journal,
            figures=self.figures,
            journal=opened,
            record=record,
            connected=lambda: self.link.connected,
        )
        self.links = [self.link]
        self.workers: Sequence[Worker] = ()
        log.info("detector starting: %s", redacted(cfg))

    def _edge_up(self) -> None:
        self.publisher.reconnected()

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
                self.publisher.poll()
                continue
            try:
                faces, publications = self.pipeline.process(frame)
            except cv2.error as exc:
                self.figures.failed()
                log.warning("detection failed on frame %d: %s", frame.index, exc)
                continue
            if publications:
                self.publisher.publish(publications)
            else:
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
        self.publisher.publish(self.pipeline.tracker.flush())
        self._settle_tracks()
        self.figures.tracks_ended()
        self.source.close()
        unacked = self.publisher.drain(self.cfg.publish.flush_timeout_s)
        if unacked:
            log.warning(
                "%d face(s) not acknowledged by the broker within %.0f s",
                unacked,
                self.cfg.publish.flush_timeout_s,
            )
        if self.publisher.journal.pending:
            log.info(
                "%d face(s) not yet confirmed by the forwarder stay in the journal; they are"
                " published again at the next start",
                len(self.publisher.journal.pending),
            )
        self.publisher.close()
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
