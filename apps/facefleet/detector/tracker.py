"""Tracking faces across frames, and deciding which crops to publish. Pure: no I/O, no clock.

Association is greedy by IoU between each track's predicted box (last box moved by its smoothed
velocity, so two persons crossing keep their identities) and the frame's detections; across a
camera cut nothing is associated (every face starts a new track, which merging may join to an
old one). A track counts once it has `min_hits` detections and ends after `max_missed`
consecutive frames without one.

Mode `best`: every detection goes through the quality gate (`quality.reason`); the best usable
view of a track is its crop (see `crops.quality`). A counted track with at least
`quality.min_usable` usable views is published when it ends, and while it lives at most every
`republish_s` seconds, each time only if a better view turned up since the last publish;
without enough usable views it is held back and counted by reason in `held_back`. With merging
on, an ended track waits `merge.window_s` for a continuation before it is published, and a
newly counted track that continues an ended or unseen one (`MergeSettings`) takes over its
identity, views and publishing state: one person, one crop.

Mode `every-frame`: every detection of every frame is published, ungated and unmerged (the
original homework, kept as the comparison mode).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from facefleet.detector import appearance, crops, quality
from facefleet.detector.backends import Detection
from facefleet.detector.geometry import Box, Image, iou
from facefleet.detector.settings import MergeSettings, QualitySettings, TrackingSettings

Mode = Literal["best", "every-frame"]

#: Weight of the newest motion in the smoothed velocity (exponential moving average).
VELOCITY_SMOOTHING = 0.5
#: The held-back reason of a track that ended before it reached `min_hits`.
UNCONFIRMED = "unconfirmed"


@dataclass(frozen=True)
class Publication:
    """One crop to send: the face `box` (frame pixels) as seen at `captured` (ISO 8601), from
    the source's frame number `frame_index`."""

    track: int
    crop: Image
    box: Box
    score: float
    captured: str
    frame_size: tuple[int, int]
    frame_index: int = 0


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
    last_seen: float = 0.0
    usable: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    signature: Image | None = None
    merge_checked: bool = False
    ended_at: float = 0.0

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

    def absorb(self, old: Track) -> None:
        """Continue `old`: take its identity, its views and its publishing state."""
        self.id = old.id
        self.started = old.started
        self.hits += old.hits
        self.usable += old.usable
        self.rejected.update(old.rejected)
        self.last_published = old.last_published
        if old.best is not None and old.best_quality >= self.best_quality:
            self.best, self.best_quality = old.best, old.best_quality
            self.unpublished = old.unpublished
        elif self.best is not None:
            self.best = replace(self.best, track=old.id)
            self.unpublished = True


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


def near(old: Track, new_box: Box, max_distance: float) -> bool:
    """The new face within `max_distance` face widths of where the old one was last seen, at
    0.5..2 times its size."""
    ox, oy, ow, oh = old.box
    nx, ny, nw, nh = new_box
    dx = (nx + nw / 2) - (ox + ow / 2)
    dy = (ny + nh / 2) - (oy + oh / 2)
    size_ratio = nw / max(1, ow)
    return 0.5 <= size_ratio <= 2.0 and (dx * dx + dy * dy) ** 0.5 <= max_distance * max(ow, nw)


class Tracker:
    def __init__(
        self,
        settings: TrackingSettings,
        margin: float = 0.25,
        mode: Mode = "best",
        gate: QualitySettings | None = None,
        merge: MergeSettings | None = None,
    ):
        self.settings = settings
        self.margin = margin
        self.mode = mode
        self.gate = gate if gate is not None else QualitySettings()
        self.merge = merge if merge is not None else MergeSettings()
        self.tracks: list[Track] = []
        #: Ended tracks waiting `merge.window_s` for a continuation before they are published.
        self.ended: list[Track] = []
        #: Counted tracks not published, by reason (`quality.REASONS` or "unconfirmed").
        self.held_back: Counter[str] = Counter()
        #: Tracks that continued an earlier one.
        self.merged = 0
        self._next_id = 1
        self._thumbnail: Image | None = None
        self._cuts: deque[float] = deque()
        self._frame_index = 0

    @property
    def active(self) -> int:
        """Live tracks that count (have reached `min_hits`)."""
        return sum(1 for track in self.tracks if track.hits >= self.settings.min_hits)

    @property
    def merging(self) -> bool:
        return self.mode == "best" and self.merge.enabled

    def update(
        self,
        image: Image,
        detections: Sequence[Detection],
        captured: str,
        clock: float,
        frame_index: int = 0,
    ) -> list[Publication]:
        """Feed one frame's detections; returns the crops to publish now.

        `captured` is the frame's capture time (ISO 8601), `clock` the same instant in
        monotonic seconds (used for `republish_s` and the merge window), `frame_index` the
        source's frame number (carried into the publications).
        """
        self._frame_index = frame_index
        cut = self.merging and self._camera_cut(image, clock)
        matches = [] if cut else associate(
            [t.predicted() for t in self.tracks],
            [d.box for d in detections],
            self.settings.iou_threshold,
        )  # fmt: skip
        matched_tracks = {t for t, _ in matches}
        detection_tracks: dict[int, Track] = {}
        for t, d in matches:
            self.tracks[t].follow(detections[d].box)
            self.tracks[t].last_seen = clock
            detection_tracks[d] = self.tracks[t]
        out: list[Publication] = []
        survivors = []
        for index, track in enumerate(self.tracks):
            if index not in matched_tracks:
                track.missed += 1
                if track.missed >= self.settings.max_missed:
                    out.extend(self._end(track, clock))
                    continue
            survivors.append(track)
        self.tracks = survivors
        for d, detection in enumerate(detections):
            if d not in detection_tracks:
                track = Track(id=self._next_id, box=detection.box, started=clock, last_seen=clock)
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
            if self.merge.enabled:
                for track in list(self.tracks):
                    if track.hits >= self.settings.min_hits and not track.merge_checked:
                        track.merge_checked = True
                        self._continue_earlier(track)
                out.extend(self._expire(clock))
            out.extend(self._republish(clock))
        return out

    def flush(self) -> list[Publication]:
        """End every track, the ones waiting for a continuation too (the source ended or the
        service stops)."""
        out = [pub for track in self.ended + self.tracks for pub in self._final(track)]
        self.tracks = []
        self.ended = []
        return out

    def _camera_cut(self, image: Image, clock: float) -> bool:
        thumbnail = appearance.thumbnail(image)
        cut = appearance.cut_between(self._thumbnail, thumbnail, self.merge.cut_threshold)
        self._thumbnail = thumbnail
        if cut:
            self._cuts.append(clock)
        while self._cuts and self._cuts[0] < clock - self.merge.window_s - 60.0:
            self._cuts.popleft()
        return cut

    def _continue_earlier(self, new: Track) -> None:
        """Merge `new` into the most similar ended or unseen track it may continue."""
        if new.signature is None:
            return
        candidates = self.ended + [
            t for t in self.tracks
            if t is not new and t.missed > 0 and t.hits >= self.settings.min_hits
        ]  # fmt: skip
        best: tuple[float, Track] | None = None
        for old in candidates:
            if old.signature is None or old.last_seen >= new.started:
                continue  # seen at the same time as the new one: someone else
            d = appearance.distance(old.signature, new.signature)
            if any(old.last_seen < c <= new.started for c in self._cuts):
                fits = d <= self.merge.cut_max_appearance_distance
            else:
                fits = d <= self.merge.max_appearance_distance and near(
                    old, new.box, self.merge.max_distance
                )
            if fits and (best is None or d < best[0]):
                best = (d, old)
        if best is None:
            return
        old = best[1]
        new.absorb(old)
        if old in self.ended:
            self.ended.remove(old)
        else:
            self.tracks.remove(old)
        self.merged += 1

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
            frame_index=self._frame_index,
        )

    def _consider(
        self,
        track: Track,
        detection: Detection,
        image: Image,
        captured: str,
        frame_size: tuple[int, int],
    ) -> None:
        if self.merge.enabled and (
            track.hits <= self.settings.min_hits or track.hits % appearance.SIGNATURE_EVERY == 0
        ):
            view = appearance.signature(image, detection.box)
            track.signature = appearance.blend(track.signature, view)
        if self.gate.enabled:
            measures = quality.measure(image, detection)
            why = quality.reason(measures, self.gate)
            if why is not None:
                track.rejected[why] += 1
                return
            sharp = measures.sharpness
        else:
            sharp = crops.sharpness(image, detection.box)
        track.usable += 1
        value = crops.quality(detection.score, detection.box, sharp)
        if value > track.best_quality:
            track.best = self._publication(track, detection, image, captured, frame_size)
            track.best_quality = value
            track.unpublished = True

    def _publishable(self, track: Track) -> bool:
        if track.hits < self.settings.min_hits:
            return False
        if not self.gate.enabled:
            return True
        enough = max(self.gate.min_usable, self.gate.min_usable_share * track.hits)
        return track.usable >= enough

    def _end(self, track: Track, clock: float) -> list[Publication]:
        if self.mode != "best":
            return []
        if self.merge.enabled and track.hits >= self.settings.min_hits:
            track.ended_at = clock
            self.ended.append(track)
            return []
        return self._final(track)

    def _expire(self, clock: float) -> list[Publication]:
        due = [t for t in self.ended if clock - t.ended_at >= self.merge.window_s]
        self.ended = [t for t in self.ended if t not in due]
        return [pub for track in due for pub in self._final(track)]

    def _final(self, track: Track) -> list[Publication]:
        if self.mode != "best":
            return []
        if not self._publishable(track):
            if track.last_published is None:
                self._hold_back(track)
            return []
        if track.best is None or not track.unpublished:
            return []
        track.unpublished = False
        return [track.best]

    def _hold_back(self, track: Track) -> None:
        if track.hits < self.settings.min_hits:
            self.held_back[UNCONFIRMED] += 1
        else:
            self.held_back[
                track.rejected.most_common(1)[0][0] if track.rejected else UNCONFIRMED
            ] += 1

    def _republish(self, clock: float) -> list[Publication]:
        out = []
        for track in self.tracks:
            since = track.started if track.last_published is None else track.last_published
            due = clock - since >= self.settings.republish_s
            if due and self._publishable(track) and track.unpublished:
                assert track.best is not None
                track.unpublished = False
                track.last_published = clock
                out.append(track.best)
        return out
