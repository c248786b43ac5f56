"""Scoring detection against ground truth.

Photographs: recall and precision of a detector configuration on a labelled image folder (the
accuracy tests and the benchmarks; IoU 0.5, each labelled face matched once). `labels.txt` has
`# <image> W H` headers, then one `x1 y1 x2 y2` line per face.

Video: the crops the detector would publish, judged against a truth file of persons with the
frame ranges where each face is visible and usable (`facefleet evaluate`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from facefleet.detector.backends import create_detector
from facefleet.detector.geometry import Box, iou
from facefleet.detector.settings import DetectionSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the edge's Python 3.9 and 3.10
    import tomli as tomllib


def read_labels(path: Path) -> dict[str, list[Box]]:
    """`# <image> W H` headers, then one `x1 y1 x2 y2` line per face."""
    labels: dict[str, list[Box]] = {}
    current: list[Box] = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "#":
            current = labels.setdefault(parts[1], [])
        else:
            x1, y1, x2, y2 = map(int, parts)
            current.append((x1, y1, x2 - x1, y2 - y1))
    return labels


def matches(found: list[Box], truth: list[Box], threshold: float = 0.5) -> tuple[int, int]:
    """(true positives, false positives), each truth box used once."""
    free = list(truth)
    tp = 0
    for box in found:
        best = max(free, key=lambda t: iou(t, box), default=None)
        if best is not None and iou(best, box) >= threshold:
            free.remove(best)
            tp += 1
    return tp, len(found) - tp


def recall_precision(settings: DetectionSettings, faces_dir: Path) -> dict[str, float]:
    detector = create_detector(settings)
    labels = read_labels(faces_dir / "labels.txt")
    truth = found = false = 0
    for name, boxes in labels.items():
        image = cv2.imread(str(faces_dir / name))
        if image is None:
            raise RuntimeError(f"cannot read {faces_dir / name}")
        tp, fp = matches([f.box for f in detector.detect(image)], boxes)
        truth, found, false = truth + len(boxes), found + tp, false + fp
    return {
        "faces": truth,
        "found": found,
        "false_positives": false,
        "recall": round(found / max(1, truth), 3),
        "precision": round(found / max(1, found + false), 3),
    }


# --- Labelled video: the ground-truth file and the verdict on each published crop -------------

TRUTH_VERSION = 1
#: A crop belongs to a labelled person when its face box overlaps the person's box at that frame
#: by at least this IoU (hand-drawn boxes and detector boxes differ in how much hair and chin
#: they include, so less than the 0.5 used on photographs).
MATCH_IOU = 0.3
#: Persons whose face is usable for at least this long must be stored.
REQUIRED_USABLE_S = 1.0


@dataclass(frozen=True)
class Segment:
    """Frames first..last keyframe of one person: the face is visible there, `usable` or not;
    the box is interpolated linearly between keyframes."""

    usable: bool
    keys: tuple[tuple[int, Box], ...]

    @property
    def frames(self) -> range:
        return range(self.keys[0][0], self.keys[-1][0] + 1)

    def box_at(self, frame: int) -> Box | None:
        if frame not in self.frames:
            return None
        for k in range(len(self.keys) - 1):
            (f0, b0), (f1, b1) = self.keys[k], self.keys[k + 1]
            if f0 <= frame <= f1:
                t = (frame - f0) / (f1 - f0)
                x, y, w, h = (round(b0[i] + (b1[i] - b0[i]) * t) for i in range(4))
                return x, y, w, h
        return self.keys[0][1]  # a segment of one keyframe


@dataclass(frozen=True)
class LabelledPerson:
    name: str
    segments: tuple[Segment, ...]

    def at(self, frame: int) -> tuple[Box, bool] | None:
        """(box, usable) where the person is visible in `frame`."""
        for segment in self.segments:
            box = segment.box_at(frame)
            if box is not None:
                return box, segment.usable
        return None

    @property
    def usable_frames(self) -> int:
        return sum(len(s.frames) for s in self.segments if s.usable)


def read_truth(path: Path) -> list[LabelledPerson]:
    """The persons of a truth file (format: README, "Evaluating on labelled video"); ValueError
    with a one-line reason naming the file and the person when it is malformed."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    if data.get("version") != TRUTH_VERSION:
        raise ValueError(f"{path}: version must be {TRUTH_VERSION}")
    persons = []
    for n, entry in enumerate(data.get("person", []), start=1):
        name = str(entry.get("name", f"person {n}"))
        where = f"{path}: person {n} ({name})"
        segments = []
        for segment in entry.get("segment", []):
            usable = segment.get("usable")
            if not isinstance(usable, bool):
                raise ValueError(f"{where}: every segment needs usable = true or false")
            try:
                keys = tuple(
                    (int(f), (int(x), int(y), int(w), int(h)))
                    for f, x, y, w, h in segment.get("keys", [])
                )
            except (TypeError, ValueError):
                raise ValueError(f"{where}: keys are [frame, x, y, w, h] lists") from None
            frames = [f for f, _ in keys]
            if not keys or frames != sorted(set(frames)) or frames[0] < 0:
                raise ValueError(f"{where}: a segment needs keyframes in increasing order")
            if any(w <= 0 or h <= 0 for _, (_, _, w, h) in keys):
                raise ValueError(f"{where}: boxes need a positive width and height")
            segments.append(Segment(usable, keys))
        if not segments:
            raise ValueError(f"{where}: no segment")
        persons.append(LabelledPerson(name, tuple(segments)))
    if not persons:
        raise ValueError(f"{path}: no [[person]]")
    return persons


@dataclass(frozen=True)
class CropRecord:
    """What the detector would publish: the track, the frame the crop is from, the face box."""

    track: int
    frame: int
    box: Box
    score: float


def judge(persons: list[LabelledPerson], crop: CropRecord) -> tuple[str, str, str]:
    """(verdict, person, reason): `ok` (a usable face of that person), `unusable` (a labelled
    face in a frame where it is not usable) or `non-face` (no labelled face there)."""
    best: tuple[float, LabelledPerson, bool] | None = None
    for person in persons:
        seen = person.at(crop.frame)
        if seen is not None:
            overlap = iou(seen[0], crop.box)
            if overlap >= MATCH_IOU and (best is None or overlap > best[0]):
                best = (overlap, person, seen[1])
    if best is None:
        return (
            "non-face",
            "",
            f"overlaps no labelled face at frame {crop.frame} (IoU < {MATCH_IOU})",
        )
    overlap, person, usable = best
    if not usable:
        return "unusable", person.name, f"labelled not usable at frame {crop.frame}"
    return "ok", person.name, f"IoU {overlap:.2f}"


def score_crops(
    persons: list[LabelledPerson], crops: list[CropRecord], fps: float
) -> dict[str, Any]:
    """The report of `facefleet evaluate`: counts, the persons and every crop with its verdict."""
    verdicts = []
    per_person: dict[str, int] = {}
    for crop in crops:
        verdict, name, why = judge(persons, crop)
        if name:
            per_person[name] = per_person.get(name, 0) + 1
        x, y, w, h = crop.box
        verdicts.append(
            {
                "track": crop.track,
                "frame": crop.frame,
                "box": f"{x},{y},{w},{h}",
                "score": round(crop.score, 3),
                "verdict": verdict,
                "person": name,
                "reason": why,
            }
        )
    required = [p for p in persons if p.usable_frames >= REQUIRED_USABLE_S * fps]
    usable_persons = [p for p in persons if p.usable_frames]
    stored = [p.name for p in persons if any(
        v["person"] == p.name and v["verdict"] == "ok" for v in verdicts
    )]  # fmt: skip
    matched = sum(1 for v in verdicts if v["verdict"] != "non-face")
    return {
        "persons": len(persons),
        "persons_usable": len(usable_persons),
        "persons_required": len(required),
        "persons_stored": len(stored),
        "required_missed": [p.name for p in required if p.name not in stored],
        "crops": len(crops),
        "crops_per_stored_person": round(matched / len(stored), 2) if stored else 0.0,
        "non_faces": sum(1 for v in verdicts if v["verdict"] == "non-face"),
        "unusable": sum(1 for v in verdicts if v["verdict"] == "unusable"),
        "per_person": {p.name: per_person.get(p.name, 0) for p in persons},
        "verdicts": verdicts,
    }
