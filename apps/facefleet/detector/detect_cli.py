"""`facefleet detect PATH`: run the detector backend on an image or a folder of images.

One line per image, with the default config's thresholds: JSON with `--json`
(`{"image": NAME, "faces": [{"box": [x, y, w, h], "score": s}, ...]}`), a table otherwise.
The backend is YuNet when its model is there and the Haar cascade otherwise (said on stderr),
as in the demo. Unreadable or damaged images get one line each on stderr (OpenCV's own
messages are folded into it); the others are still processed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import cv2

from facefleet.config import ConfigError
from facefleet.detector.backends import (
    Detection,
    FaceDetector,
    create_detector,
)
from facefleet.detector.geometry import Image
from facefleet.detector.settings import DetectionSettings, choose_detector
from facefleet.detector.sources import folder_images
from facefleet.shared import YUNET_MODEL, default_yunet_model

EXIT_UNREADABLE = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="an image or a folder of images")
    parser.add_argument(
        "--backend",
        choices=("auto", "yunet", "haar"),
        default="auto",
        help="detector (default auto: yunet when its model is there, else haar)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        help=f"YuNet ONNX file or Haar cascade XML (default: $FACEFLEET_SHARED/models/{YUNET_MODEL}"
        " for yunet, OpenCV's cascade for haar)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def images_in(path: Path) -> list[Path]:
    """The images to read: PATH itself, or the images of the folder PATH (at least one)."""
    if path.is_dir():
        try:
            return folder_images(path)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if path.exists():
        return [path]
    raise ConfigError(f"{path}: no such image or folder")


def settings_for(args: argparse.Namespace) -> DetectionSettings:
    """The default config's detection settings with the chosen backend and model."""
    choice = choose_detector(args.backend, args.model, default_yunet_model())
    if choice.note:
        sys.stderr.write(f"facefleet detect: {choice.note}\n")
    return replace(DetectionSettings(), backend=choice.backend, model=choice.model)


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


def read_image(file: Path) -> tuple[Image | None, str]:
    """The decoded image (None when unreadable) and what the decoder said about it.

    OpenCV and libjpeg print their complaints (`[ERROR:0@0.1] ... IHDR chunk shall be
    first`, `Premature end of JPEG file`) straight to file descriptor 2; they are captured
    here so the user gets one facefleet line per image instead."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            image = cv2.imread(str(file), cv2.IMREAD_COLOR)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        said = captured.read().decode("utf-8", "replace")
    lines = [line.split("] ", 1)[-1].strip() for line in said.splitlines() if line.strip()]
    lines = [line.split(" ", 2)[-1] if line.startswith("global ") else line for line in lines]
    return image, "; ".join(dict.fromkeys(lines))


def run_detect(args: argparse.Namespace) -> int:
    """Returns 0, or 1 when some image could not be read."""
    images = images_in(Path(args.path))  # a wrong PATH is reported before anything else
    detector = create_detector(settings_for(args))
    try:
        failed = detect_all(detector, images, as_json=args.json)
    except BrokenPipeError:  # the reader (`| head`) is gone: stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return EXIT_UNREADABLE if failed else 0


def detect_all(detector: FaceDetector, images: list[Path], *, as_json: bool) -> int:
    """Prints one line per image; returns the number of unreadable images."""
    failed = 0
    if not as_json:
        write_line(f"{'image':<32} {'faces':>5}  boxes (x,y,wxh (score)) by {detector.name}")
    for file in images:
        image, said = read_image(file)
        if image is None:
            detail = f" ({said})" if said else ""
            sys.stderr.write(f"facefleet detect: {file}: not a readable image{detail}\n")
            failed += 1
            continue
        if said:
            sys.stderr.write(f"facefleet detect: {file}: damaged image, read in part ({said})\n")
        faces = detector.detect(image)
        write_line(json_line(file.name, faces) if as_json else table_row(file.name, faces))
    return failed
