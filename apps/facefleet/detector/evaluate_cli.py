"""`facefleet evaluate VIDEO --truth FILE`: what the detector would publish, judged.

Runs the detector service's own pipeline (`service.Pipeline`: detection, tracking, quality gate,
merging) with the service's configuration (`--config`, the same file and environment overrides;
`camera.source` becomes VIDEO, read flat out and once) and scores every crop it would publish
against the truth file (`evaluation.read_truth`). Prints a summary and one line per crop, or one
JSON object with `--json`. Exit 0 when it ran (whatever the score), 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2

from facefleet import config
from facefleet.config import ConfigError
from facefleet.detector.evaluation import CropRecord, read_truth, score_crops
from facefleet.detector.service import Pipeline, quiet_opencv
from facefleet.detector.settings import DetectorConfig
from facefleet.detector.sources import open_source, parse_source
from facefleet.detector.tracker import Publication

READ_TIMEOUT_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", metavar="VIDEO", help="a video file or a folder of images")
    parser.add_argument(
        "--truth",
        required=True,
        metavar="FILE",
        help='ground truth, TOML: persons with keyframed face boxes (README, "Evaluating on '
        'labelled video")',
    )
    parser.add_argument(
        "--config",
        "-c",
        metavar="F",
        help="the detector's TOML config (default: built-in defaults; FACEFLEET_* overrides "
        "apply); its camera.source is replaced by VIDEO",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object instead of text")
    parser.add_argument(
        "--crops",
        metavar="DIR",
        help="also write every crop to DIR as <frame>-<track>-<verdict>.jpg, to look at",
    )


def run_pipeline(cfg: DetectorConfig, video: str) -> tuple[list[Publication], dict[str, Any]]:
    """Every crop the service would publish for `video`, and the run's figures."""
    try:
        spec = parse_source(video)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if spec.kind not in ("file", "folder"):
        raise ConfigError(f"{video}: evaluate needs a video file or an image folder")
    camera = replace(cfg.camera, source=video, realtime=False, loop=False)
    pipeline = Pipeline(replace(cfg, camera=camera))
    source = open_source(camera)
    published: list[Publication] = []
    frames = faces = 0
    try:
        while True:
            frame = source.read(READ_TIMEOUT_S)
            if frame is None:
                if source.state == "ended":
                    break
                continue
            detected, out = pipeline.process(frame)
            frames, faces = frames + 1, faces + detected
            published.extend(out)
    finally:
        source.close()
    published.extend(pipeline.tracker.flush())
    fps = getattr(source, "fps", 0.0)
    figures = {
        "frames": frames,
        "fps": fps,
        "faces_detected": faces,
        "backend": pipeline.backend.name,
        "mode": cfg.publish.mode,
        "held_back": dict(pipeline.tracker.held_back),
        "merged": pipeline.tracker.merged,
    }
    return published, figures


def evaluate(
    cfg: DetectorConfig, video: str, truth: Path
) -> tuple[dict[str, Any], list[Publication]]:
    """The report of one evaluation, and the crops it judged."""
    try:
        persons = read_truth(truth)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    published, figures = run_pipeline(cfg, video)
    records = [CropRecord(p.track, p.frame_index, p.box, p.score) for p in published]
    report = score_crops(persons, records, figures["fps"] or 30.0)
    return {"video": video, "truth": str(truth), **figures, **report}, published


def write_crops(folder: Path, report: dict[str, Any], published: list[Publication]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, publication in enumerate(published):
        verdict = report["verdicts"][index]
        name = f"{publication.frame_index:05d}-{publication.track}-{verdict['verdict']}.jpg"
        cv2.imwrite(str(folder / name), publication.crop)


def text(report: dict[str, Any]) -> str:
    lines = [
        f"{report['video']}: {report['frames']} frames, {report['faces_detected']} faces "
        f"detected ({report['backend']}, mode {report['mode']})",
        f"persons {report['persons']} (usable {report['persons_usable']}, usable >= 1 s "
        f"{report['persons_required']}), stored {report['persons_stored']}, required but "
        f"missed: {', '.join(report['required_missed']) or 'none'}",
        f"crops {report['crops']}, per stored person {report['crops_per_stored_person']}, "
        f"non-faces {report['non_faces']}, unusable {report['unusable']}",
        f"held back {report['held_back'] or {}}, merged {report['merged']}",
    ]
    for v in report["verdicts"]:
        person = f" {v['person']}" if v["person"] else ""
        lines.append(
            f"  frame {v['frame']:5d} track {v['track']:3d} box {v['box']:>15s} "
            f"{v['verdict']:8s}{person}: {v['reason']}"
        )
    return "\n".join(lines)


def run_evaluate(args: argparse.Namespace) -> int:
    quiet_opencv()
    cfg = config.load(DetectorConfig, args.config)
    report, published = evaluate(cfg, args.video, Path(args.truth))
    if args.crops:
        write_crops(Path(args.crops), report, published)
    print(json.dumps(report) if args.json else text(report))
    return 0
