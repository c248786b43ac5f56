"""2. Uplink efficiency: bytes and messages over the uplink per distinct person, the default
mode (one best JPEG crop per track) vs the homework's every-frame PNG mode, on the same input.

Each run is the real pipeline of `facefleet demo --headless --until-eof` (two brokers, the four
services, the filesystem sink); the figures are the forwarder's uplink counters and the stored
faces. On the synthetic scene the persons are known, so a person is "missed" when no stored
face overlaps any of its ground-truth face boxes (IoU >= 0.5).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import Options, progress
from facefleet.detector.geometry import iou
from facefleet.detector.synthetic import SceneParams, SyntheticScene
from facefleet.shared import shared_dir

CLIP = "data/videos/short_hamilton_clip.mp4"
MODES = {"default": ("best", "jpeg"), "homework": ("every-frame", "png")}


def demo(source: str, mode: str, encoding: str, storage: Path, timeout_s: float) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "facefleet", "demo", "--headless", "--until-eof",
        "--source", source, "--storage", str(storage), "--mode", mode, "--encoding", encoding,
        "--timeout", str(timeout_s),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = result.stdout.strip().splitlines()
    try:
        summary: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"demo on {source} failed: {result.stderr.strip()[-800:]}") from None
    if result.returncode != 0 or not summary.get("drained"):
        raise RuntimeError(f"demo on {source} did not drain: {lines[-1]}")
    return summary


def stored_faces(storage: Path) -> list[dict[str, Any]]:
    """The metadata sidecars of every stored face."""
    return [json.loads(p.read_text()) for p in sorted((storage / "faces").rglob("*.json"))]


def box_of(meta: dict[str, Any]) -> tuple[int, int, int, int]:
    x, y, w, h = (int(v) for v in str(meta["box"]).split(","))
    return x, y, w, h


def persons_seen(scene: SyntheticScene, faces: list[dict[str, Any]]) -> set[int]:
    """Indices of the persons matched by at least one stored face."""
    seen: set[int] = set()
    for meta in faces:
        box = box_of(meta)
        best, best_iou = -1, 0.0
        for person in scene.persons:
            for frame in range(person.first_frame, person.last_frame + 1):
                overlap = iou(person.face_box(frame), box)
                if overlap > best_iou:
                    best, best_iou = person.index, overlap
        if best_iou >= 0.5:
            seen.add(best)
    return seen


def run(workdir: Path, options: Options) -> dict[str, Any]:
    quick = options.quick
    persons, seconds = (3, 6) if quick else (8, 30)
    inputs = {
        "synthetic": f"synthetic:?persons={persons}&seconds={seconds}&fps=15&size=640x480&seed=2",
    }
    clip = shared_dir() / CLIP
    if clip.is_file() and not quick:
        inputs["clip"] = str(clip)
    out: dict[str, Any] = {
        "bytes_per_person": {},
        "messages_per_person": {},
        "persons_missed": {},
        "inputs": {},
        "note": "uplink = face payload bytes the forwarder relayed to the cloud broker; "
        "default = one best JPEG crop per track (YuNet), homework = every face of every "
        "frame as PNG (same YuNet detections); clip persons = distinct tracks stored in the "
        "default mode (no ground truth)",
    }
    for input_name, source in inputs.items():
        per_mode: dict[str, Any] = {}
        for mode_name, (mode, encoding) in MODES.items():
            storage = workdir / f"uplink-{input_name}-{mode_name}"
            summary = demo(source, mode, encoding, storage, timeout_s=300)
            faces = stored_faces(storage)
            per_mode[mode_name] = {
                "uplink_face_bytes": summary["uplink_face_bytes"],
                "uplink_messages": len(faces),
                "stored": summary["stored"],
                "frames": summary["frames"],
                "tracks": len({(f["node"], f["track"]) for f in faces}),
                "faces": faces,
            }
            progress(
                f"uplink {mode_name:8s} on {input_name:9s}: {len(faces)} faces, "
                f"{summary['uplink_face_bytes'] / 1e6:.2f} MB over the uplink"
            )
        if input_name == "synthetic":
            scene = SyntheticScene(SceneParams.from_uri(source))
            distinct = len(scene.persons)
            missed = {
                m: distinct - len(persons_seen(scene, r["faces"])) for m, r in per_mode.items()
            }
        else:
            distinct = max(1, per_mode["default"]["tracks"])
            missed = {}
        for mode_name, figures in per_mode.items():
            figures.pop("faces")
            figures["bytes_per_person"] = round(figures["uplink_face_bytes"] / distinct)
            figures["messages_per_person"] = round(figures["uplink_messages"] / distinct, 2)
            if missed:
                figures["persons_missed"] = missed[mode_name]
        ratio = per_mode["homework"]["bytes_per_person"] / max(
            1, per_mode["default"]["bytes_per_person"]
        )
        out["inputs"][input_name] = {
            "source": source,
            "persons": distinct,
            "modes": per_mode,
            "homework_over_default_bytes": round(ratio, 1),
        }
    synthetic = out["inputs"]["synthetic"]["modes"]
    for mode_name in MODES:
        out["bytes_per_person"][mode_name] = synthetic[mode_name]["bytes_per_person"]
        out["messages_per_person"][mode_name] = synthetic[mode_name]["messages_per_person"]
        out["persons_missed"][mode_name] = synthetic[mode_name]["persons_missed"]
    out["homework_over_default_bytes"] = out["inputs"]["synthetic"]["homework_over_default_bytes"]
    return out
