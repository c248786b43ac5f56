"""Tracking faces across frames, and deciding which crops to publish. Pure: no I/O, no clock.

Association is greedy by IoU between each track's predicted box (last box moved by its smoothed
velocity, so two persons crossing keep their identities) and the frame's detections. A track
counts once it has `min_hits` detections and ends after `max_missed` consecutive frames without
one. Per track the best view so far is kept (see `crops.quality`).

Publishing, mode `best`: a counted track is published when it ends, and while it lives at most
every `republish_s` seconds, each time only if a better view turned up since the last publish.
Mode `every-frame`: every detection of every frame is published (the original homework).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from facefleet.detector import crops
from facefleet.detector.backends import Detection
from facefleet.detector.geometry import Box, Image, iou
from facefleet.detector.settings import TrackingSettings

Mode = Literal["best", "every-frame"]

#: Weight of the newest motion in the smoothed velocity (exponential moving average).
VELOCITY_SMOOTHING = 0.5


@dataclass(frozen=True)
class Publication:
    """One crop to send: the face `box` (frame pixels) as seen at `captured` (ISO 8601)."""

    track: int
    crop: Image
    box: Box
    score: float
    captured: str
    frame_size: tuple[int, int]


@dataclass
class Track:
    id: int
    box: Box
    started: float
    velocity: tuple[float, float] = (0.0, 0.0)
    hits: int = 1
    missed: int = 0
    best: Publication | None = None
    best_quality: float = -1.0
    unpublished: bool = False
    last_published: float | None = None

    def predicted(self) -> Box:
        steps = self.missed + 1
        x, y, w, h = self.box
        return round(x + self.velocity[0] * steps), round(y + self.velocity[1] * steps), w, h

    def follow(self, box: Box) -> None:
        steps = self.missed + 1
        dx, dy = (box[0] - self.box[0]) / steps, (box[1] - self.box[1]) / steps
        a = VELOCITY_SMOOTHING
        self.velocity = (a * dx + (1 - a) * self.velocity[0], a * dy + (1 - a) * self.velocity[1])
        self.box = box
        self.hits += 1
        self.missed = 0


def associate(
    predicted: Sequence[Box], detected: Sequence[Box], threshold: float
) -> list[tuple[int, int]]:
    """Greedy matching: the highest-IoU pairs first, each track and detection used once."""
    pairs = sorted(
        (
            (overlap, t, d)
            for t, track_box in enumerate(predicted)
            for d, box in enumerate(detected)
            if (overlap := iou(track_box, box)) >= threshold
        ),
        reverse=True,
    )
    used_tracks: set[int] = set()
    used_detections: set[int] = set()
    matches = []
    for _, t, d in pairs:
        if t not in used_tracks and d not in used_detections:
            used_tracks.add(t)
            used_detections.add(d)
            matches.append((t, d))
    return matches


class Tracker:
    def __init__(self, settings: TrackingSettings, margin: float = 0.25, mode: Mode = "best"):
        self.settings = settings
        self.margin = margin
        self.mode = mode
        self.tracks: list[Track] = []
        self._next_id = 1

    @property
    def active(self) -> int:
        """Live tracks that count (have reached `min_hits`)."""
        return sum(1 for track in self.tracks if track.hits >= self.settings.min_hits)

    def update(
        self, image: Image, detections: Sequence[Detection], captured: str, clock: float
    ) -> list[Publication]:
        """Feed one frame's detections; returns the crops to publish now.

        `captured` is the frame's capture time (ISO 8601), `clock` the same instant in
        monotonic seconds (used for `republish_s`).
        """
        matches = associate(
            [t.predicted() for t in self.tracks],
            [d.box for d in detections],
            self.settings.iou_threshold,
        )
        matched_tracks = {t for t, _ in matches}
        detection_tracks: dict[int, Track] = {}
        for t, d in matches:
            self.tracks[t].follow(detections[d].box)
            detection_tracks[d] = self.tracks[t]
        out: list[Publication] = []
        survivors = []
        for index, track in enumerate(self.tracks):
            if index not in matched_tracks:
                track.missed += 1
                if track.missed >= self.settings.max_missed:
                    out.extend(self._final(track))
                    continue
            survivors.append(track)
        self.tracks = survivors
        for d, detection in enumerate(detections):
            if d not in detection_tracks:
                track = Track(id=self._next_id, box=detection.box, started=clock)
                self._next_id += 1
                self.tracks.append(track)
                detection_tracks[d] = track
        frame_size = (image.shape[1], image.shape[0])
        for d, detection in enumerate(detections):
            track = detection_tracks[d]
            if self.mode == "every-frame":
                out.append(self._publication(track, detection, image, captured, frame_size))
            else:
                self._consider(track, detection, image, captured, frame_size)
        if self.mode == "best":
            out.extend(self._republish(clock))
        return out

    def flush(self) -> list[Publication]:
        """End every track (the source ended or the service stops)."""
        out = [pub for track in self.tracks for pub in self._final(track)]
        self.tracks = []
        return out

    def _publication(
        self,
        track: Track,
        detection: Detection,
        image: Image,
        captured: str,
        frame_size: tuple[int, int],
    ) -> Publication:
        return Publication(
            track=track.id,
            crop=crops.crop(image, detection.box, self.margin),
            box=detection.box,
            score=detection.score,
            captured=captured,
            frame_size=frame_size,
        )

    def _consider(
        self,
        track: Track,
        detection: Detection,
        image: Image,
        captured: str,
        frame_size: tuple[int, int],
    ) -> None:
        sharp = crops.sharpness(image, detection.box)
        value = crops.quality(detection.score, detection.box, sharp)
        if value > track.best_quality:
            track.best = self._publication(track, detection, image, captured, frame_size)
            track.best_quality = value
            track.unpublished = True

    def _final(self, track: Track) -> list[Publication]:
        if self.mode != "best" or track.hits < self.settings.min_hits:
            return []
        if track.best is None or not track.unpublished:
            return []
        track.unpublished = False
        return [track.best]

    def _republish(self, clock: float) -> list[Publication]:
        out = []
        for track in self.tracks:
            since = track.started if track.last_published is None else track.last_published
            due = clock - since >= self.settings.republish_s
            if due and track.hits >= self.settings.min_hits and track.unpublished:
                assert track.best is not None
                track.unpublished = False
                track.last_published = clock
                out.append(track.best)
        return out
