"""`facefleet detect PATH`: run the detector backend on an image or a folder of images.

One line per image, with the default config's thresholds: JSON with `--json`
(`{"image": NAME, "faces": [{"box": [x, y, w, h], "score": s}, ...]}`), a table otherwise.
Unreadable images get a one-line error on stderr; the others are still processed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import cv2

from facefleet.config import ConfigError
from facefleet.detector.backends import Detection, FaceDetector, create_detector
from facefleet.detector.settings import DetectionSettings
from facefleet.detector.sources import IMAGE_SUFFIXES

EXIT_UNREADABLE = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="an image or a folder of images")
    parser.add_argument(
        "--backend", choices=("yunet", "haar"), default="yunet", help="detector (default: yunet)"
    )
    parser.add_argument(
        "--model",
        help="YuNet ONNX file or Haar cascade XML (default: $FACEFLEET_SHARED/models/"
        "face_detection_yunet_2023mar.onnx for yunet, OpenCV's cascade for haar)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def images_in(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if path.exists():
        return [path]
    raise ConfigError(f"{path}: no such image or folder")


def settings_for(args: argparse.Namespace) -> DetectionSettings:
    """The default config's detection settings with the chosen backend and model."""
    return replace(DetectionSettings(), backend=args.backend, model=args.model or "")


def json_line(name: str, faces: list[Detection]) -> str:
    return json.dumps(
        {
            "image": name,
            "faces": [{"box": list(f.box), "score": round(f.score, 4)} for f in faces],
        }
    )


def table_row(name: str, faces: list[Detection]) -> str:
    boxes = "  ".join(f"{f.box[0]},{f.box[1]},{f.box[2]}x{f.box[3]} ({f.score:.2f})" for f in faces)
    return f"{name:<32} {len(faces):>5}  {boxes}"


def write_line(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run_detect(args: argparse.Namespace) -> int:
    """Returns 0, or 1 when some image could not be read."""
    detector = create_detector(settings_for(args))
    try:
        failed = detect_all(detector, Path(args.path), as_json=args.json)
    except BrokenPipeError:  # the reader (`| head`) is gone: stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return EXIT_UNREADABLE if failed else 0


def detect_all(detector: FaceDetector, path: Path, *, as_json: bool) -> int:
    """Prints one line per image; returns the number of unreadable images."""
    failed = 0
    if not as_json:
        write_line(f"{'image':<32} {'faces':>5}  boxes (x,y,wxh (score)) by {detector.name}")
    for file in images_in(path):
        image = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if image is None:
            sys.stderr.write(f"facefleet detect: {file}: not a readable image\n")
            failed += 1
            continue
        faces = detector.detect(image)
        write_line(json_line(file.name, faces) if as_json else table_row(file.name, faces))
    return failed
