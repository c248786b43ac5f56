"""The tracker on synthetic boxes: identities, gaps, best crops and publishing policy."""

from __future__ import annotations

import cv2
import numpy as np

from facefleet.detector.backends import Detection
from facefleet.detector.geometry import Box
from facefleet.detector.settings import MergeSettings, QualitySettings, TrackingSettings
from facefleet.detector.tracker import UNCONFIRMED, Publication, Tracker, associate

SETTINGS = TrackingSettings(iou_threshold=0.3, max_missed=5, min_hits=3, republish_s=30.0)
#: The tracker on its own: no quality gate, no merging (tested below and in test_quality.py).
NO_GATE = QualitySettings(enabled=False)
NO_MERGE = MergeSettings(enabled=False)


def textured(seed: int = 0, width: int = 640, height: int = 480) -> np.ndarray:
    """A frame with detail everywhere, so every crop has a measurable sharpness."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (height, width, 3), dtype=np.uint8)


FRAME = textured()


def ts(i: int) -> str:
    return f"2026-01-01T00:00:{i // 10:02d}.{(i % 10) * 100:03d}Z"


def feed(
    tracker: Tracker,
    frames: list[list[Box]],
    image: np.ndarray = FRAME,
    start: int = 0,
    score: float = 0.9,
) -> list[Publication]:
    out: list[Publication] = []
    for i, boxes in enumerate(frames, start=start):
        detections = [Detection(box, score) for box in boxes]
        out += tracker.update(image, detections, ts(i), clock=i * 0.1)
    return out


def walk(x0: int, y0: int, dx: int, dy: int, n: int, size: int = 80) -> list[Box]:
    return [(x0 + dx * i, y0 + dy * i, size, size) for i in range(n)]


def test_one_person_becomes_one_track_published_once_when_it_ends() -> None:
    tracker = Tracker(SETTINGS, merge=NO_MERGE)
    path = walk(50, 100, 6, 1, 40)
    during = feed(tracker, [[b] for b in path])
    assert during == []
    assert tracker.active == 1
    after = feed(tracker, [[] for _ in range(SETTINGS.max_missed)], start=40)
    assert len(after) == 1
    assert after[0].track == 1
    assert after[0].box in path
    assert tracker.tracks == []
    assert tracker.flush() == []


def test_two_crossing_persons_keep_their_identities() -> None:
    tracker = Tracker(SETTINGS)
    left_to_right = walk(40, 200, 12, 0, 40)
    right_to_left = walk(520, 230, -12, 0, 40)  # overlaps the other one mid-way
    overlaps = [b for a, b in zip(left_to_right, right_to_left) if abs(a[0] - b[0]) < 40]
    assert overlaps, "the paths must really cross"
    seen: dict[int, set[int]] = {}
    for i, (a, b) in enumerate(zip(left_to_right, right_to_left)):
        tracker.update(FRAME, [Detection(a, 0.9), Detection(b, 0.9)], ts(i), i * 0.1)
        for track in tracker.tracks:
            seen.setdefault(track.id, set()).add(track.box[1])
    assert sorted(seen) == [1, 2]
    assert {frozenset(v) for v in seen.values()} == {frozenset({200}), frozenset({230})}
    published = tracker.flush()
    assert sorted(p.track for p in published) == [1, 2]


def test_a_gap_shorter_than_max_missed_keeps_the_track() -> None:
    tracker = Tracker(SETTINGS)
    path = walk(100, 100, 4, 0, 30)
    frames = [[b] for b in path[:10]] + [[]] * (SETTINGS.max_missed - 1) + [[b] for b in path[14:]]
    feed(tracker, frames)
    assert len(tracker.flush()) == 1


def test_a_gap_of_max_missed_frames_ends_the_track() -> None:
    tracker = Tracker(SETTINGS, merge=NO_MERGE)
    path = walk(100, 100, 4, 0, 30)
    frames = [[b] for b in path[:10]] + [[]] * SETTINGS.max_missed + [[b] for b in path[15:]]
    published = feed(tracker, frames) + tracker.flush()
    assert [p.track for p in published] == [1, 2]


def test_a_track_below_min_hits_is_never_published() -> None:
    tracker = Tracker(SETTINGS)
    feed(tracker, [[(10, 10, 60, 60)]] * (SETTINGS.min_hits - 1))
    assert tracker.active == 0
    assert tracker.flush() == []


def test_the_best_crop_is_the_sharp_one() -> None:
    tracker = Tracker(SETTINGS, gate=NO_GATE)
    box = (200, 150, 100, 100)
    blurred = cv2.GaussianBlur(FRAME, (0, 0), 4)
    for i in range(10):
        image = FRAME if i == 6 else blurred
        tracker.update(image, [Detection(box, 0.9)], ts(i), i * 0.1)
    (best,) = tracker.flush()
    assert best.captured == ts(6)
    x, y, w, h = box
    margin = round(w * tracker.margin)
    assert best.crop.shape == (h + 2 * margin, w + 2 * margin, 3)
    assert np.array_equal(
        best.crop, FRAME[y - margin : y + h + margin, x - margin : x + w + margin]
    )


def test_republish_at_most_every_republish_s_and_only_when_the_best_changed() -> None:
    settings = TrackingSettings(iou_threshold=0.3, max_missed=5, min_hits=3, republish_s=1.0)
    tracker = Tracker(settings)
    box = (200, 150, 100, 100)
    times: list[float] = []
    for i in range(60):  # 6 s at 10 frames/s; the score improves every frame
        clock = i * 0.1
        out = tracker.update(FRAME, [Detection(box, 0.3 + i * 0.01)], ts(i), clock)
        times += [clock] * len(out)
    assert len(times) == 5
    assert times[0] >= 1.0
    assert all(b - a >= 1.0 - 1e-9 for a, b in zip(times, times[1:]))
    steady = Tracker(settings)
    steady_out = [
        p for i in range(60) for p in steady.update(FRAME, [Detection(box, 0.9)], ts(i), i * 0.1)
    ]
    assert len(steady_out) == 1  # the first best view, published once; nothing better came
    assert steady.flush() == []


def test_every_frame_mode_publishes_every_detection_with_its_track() -> None:
    tracker = Tracker(SETTINGS, mode="every-frame")
    a, b = walk(40, 40, 5, 0, 12), walk(400, 300, -5, 0, 12)
    published = feed(tracker, [[x, y] for x, y in zip(a, b)])
    assert len(published) == 24
    assert {p.track for p in published if p.box in a} == {1}
    assert {p.track for p in published if p.box in b} == {2}
    assert tracker.flush() == []


def test_associate_is_greedy_by_iou() -> None:
    tracks = [(0, 0, 100, 100), (50, 0, 100, 100)]
    detections = [(55, 0, 100, 100), (5, 0, 100, 100), (500, 500, 10, 10)]
    assert sorted(associate(tracks, detections, 0.3)) == [(0, 1), (1, 0)]


# --- quality gate and merging inside the tracker ----------------------------------------------


def test_a_track_without_enough_usable_views_is_held_back_by_its_reason() -> None:
    tracker = Tracker(SETTINGS, merge=NO_MERGE)
    dark = (FRAME // 12).astype(np.uint8)
    feed(tracker, [[(200, 150, 100, 100)]] * 10, image=dark)
    feed(tracker, [[(10, 10, 60, 60)]] * (SETTINGS.min_hits - 1), start=10)  # too short
    assert tracker.flush() == []
    assert tracker.held_back == {"dark": 1, UNCONFIRMED: 1}


def test_the_gate_bypasses_every_frame_mode() -> None:
    tracker = Tracker(SETTINGS, mode="every-frame")
    dark = (FRAME // 12).astype(np.uint8)
    assert len(feed(tracker, [[(200, 150, 100, 100)]] * 4, image=dark)) == 4
    assert tracker.held_back == {}


def test_an_occluded_person_comes_back_as_the_same_track_published_once() -> None:
    tracker = Tracker(SETTINGS)
    path = walk(100, 100, 4, 0, 30)
    frames = [[b] for b in path[:10]] + [[]] * (SETTINGS.max_missed + 3) + [[b] for b in path[18:]]
    during = feed(tracker, frames)
    assert during == []  # the ended track waited for its continuation
    published = tracker.flush()
    assert [p.track for p in published] == [1]
    assert tracker.merged == 1


def test_someone_else_in_the_same_place_is_not_merged() -> None:
    tracker = Tracker(SETTINGS)
    other = FRAME.copy()
    other[..., 0] //= 5  # another colour: appearance differs
    other[..., 1] //= 2
    box = (200, 150, 100, 100)
    feed(tracker, [[box]] * 10)
    feed(tracker, [[]] * (SETTINGS.max_missed + 1), start=10)
    feed(tracker, [[box]] * 10, image=other, start=16)
    assert sorted(p.track for p in tracker.flush()) == [1, 2]
    assert tracker.merged == 0


def test_an_ended_track_is_published_after_the_merge_window() -> None:
    merge = MergeSettings(window_s=1.0)
    tracker = Tracker(SETTINGS, merge=merge)
    feed(tracker, [[(200, 150, 100, 100)]] * 10)
    ended = 10 + SETTINGS.max_missed - 1  # the frame in which the track ends (clock 1.4)
    assert feed(tracker, [[]] * SETTINGS.max_missed, start=10) == []
    waiting = feed(tracker, [[]] * 9, start=ended + 1)  # clock 1.5 .. 2.3: within the window
    assert waiting == []
    (published,) = feed(tracker, [[]] * 2, start=ended + 10)  # clock 2.4: window over
    assert published.track == 1


def test_after_a_camera_cut_appearance_alone_merges_far_away() -> None:
    tracker = Tracker(SETTINGS)
    shot_b = np.full_like(FRAME, 30)  # the next shot: another background ...
    shot_b[200:400, 450:550] = FRAME[150:350, 200:300]  # ... the same person, elsewhere
    feed(tracker, [[(200, 150, 100, 100)]] * 10)
    feed(tracker, [[(450, 200, 100, 100)]] * 10, image=shot_b, start=10)
    assert [p.track for p in tracker.flush()] == [1]
    assert tracker.merged == 1


def test_without_a_cut_a_far_away_lookalike_is_someone_else() -> None:
    tracker = Tracker(SETTINGS)
    feed(tracker, [[(20, 20, 100, 100)]] * 10)
    feed(tracker, [[]] * (SETTINGS.max_missed + 1), start=10)
    feed(tracker, [[(480, 320, 100, 100)]] * 10, start=16)
    assert sorted(p.track for p in tracker.flush()) == [1, 2]
