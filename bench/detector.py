"""1. Detector speed and accuracy: yunet vs haar vs the homework's configuration.

Each configuration runs the real detector service code (capture and decode, detection, tracking,
quality gate, merging, encoding, QoS 1 publishing to a real mosquitto) in a child process pinned
to one CPU with OpenCV limited to one thread; the broker is pinned to the other CPU. `yunet-bare`
is yunet without the quality gate and merging (the detector before them), for their cost.
Accuracy is measured on the labelled photographs in ../shared/data/faces with the same detection
settings; what would be stored is scored with `facefleet evaluate` on the shared clip against
`tests/data/short_hamilton_clip.truth.toml`, with and without the gate and merging.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from tests.support import ROOT

from bench.common import Options, progress
from facefleet.config import build
from facefleet.detector.evaluate_cli import evaluate
from facefleet.detector.evaluation import recall_precision
from facefleet.detector.settings import DetectionSettings, DetectorConfig
from facefleet.localbroker import LocalBroker
from facefleet.shared import default_yunet_model, shared_dir

CLIP = "data/videos/short_hamilton_clip.mp4"
CLIP_TRUTH = ROOT / "tests" / "data" / "short_hamilton_clip.truth.toml"
EVALUATION_FIGURES = (
    "persons_required", "persons_stored", "required_missed", "crops", "crops_per_stored_person",
    "non_faces", "unusable", "held_back", "merged",
)  # fmt: skip
#: The detector before the quality gate and merging.
BARE = {"quality": {"enabled": False}, "merge": {"enabled": False}}


def configurations(model: str) -> dict[str, dict[str, Any]]:
    """Detector settings per configuration. The homework ran Haar at scale 1.3 on the full
    frame and published every face of every frame as PNG."""
    return {
        "yunet": {"detection": {"backend": "yunet", "model": model}},
        "yunet-bare": {"detection": {"backend": "yunet", "model": model}, **BARE},
        "haar": {"detection": {"backend": "haar"}},
        "homework": {
            "detection": {"backend": "haar", "haar_scale_factor": 1.3, "detect_width": 4096},
            "publish": {"mode": "every-frame", "encoding": "png"},
        },
    }


def pin(pid: int, cpu: int) -> None:
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(pid, {cpu})


def run_one(
    broker: LocalBroker, name: str, settings: dict[str, Any], source: str
) -> dict[str, Any]:
    config = {
        "node": "bench-detector",
        "heartbeat_s": 5.0,
        "mqtt": broker.settings_for().as_table(),
        "camera": {"source": source, "loop": False, "realtime": False},
        "publish": {"max_queued": 100000, "flush_timeout_s": 60.0},
        **{k: v for k, v in settings.items() if k != "publish"},
    }
    config["publish"] = {**config["publish"], **settings.get("publish", {})}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENCV_FOR_THREADS_NUM": "1"}
    command = [sys.executable, "-m", "bench.detector_worker", json.dumps(config)]
    if (os.cpu_count() or 1) > 1:
        command = ["taskset", "-c", "0", *command]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"detector {name} on {source} failed: {result.stderr.strip()[-800:]}")
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def run(workdir: Path, options: Options) -> dict[str, Any]:
    quick = options.quick
    shared = shared_dir()
    model = default_yunet_model()
    clip = shared / CLIP
    if not model.is_file() or not clip.is_file():
        raise RuntimeError(f"shared data missing under {shared} (set FACEFLEET_SHARED)")
    seconds = 4 if quick else 20
    inputs = {"synthetic": f"synthetic:?persons=6&seconds={seconds}&fps=15&size=640x480&seed=1"}
    if not quick:
        inputs["clip"] = str(clip)
    configs = configurations(str(model))
    out: dict[str, Any] = {
        "fps": {},
        "fps_synthetic_640x480": {},
        "fps_clip_640x360": {},
        "fps_per_cpu_s_synthetic_640x480": {},
        "runs": {},
        "accuracy": {},
        "inputs": inputs,
        "configurations": configs,
        "note": "fps: synthetic input at 640x480 (the clip is 640x360), wall clock, pinned to "
        "one CPU, capture + detection + tracking + encoding + QoS 1 publish to mosquitto; "
        "fps_per_cpu_s: frames per CPU second of the detector process (the rate of a "
        "dedicated core when other work shares the CPU)",
    }
    with LocalBroker("edge", workdir=workdir / "detector-broker") as broker:
        assert broker.process is not None
        pin(broker.process.pid, 1)
        for input_name, source in inputs.items():
            for name, settings in configs.items():
                figures = run_one(broker, name, settings, source)
                out["runs"][f"{name}/{input_name}"] = figures
                key = "fps_synthetic_640x480" if input_name == "synthetic" else "fps_clip_640x360"
                out[key][name] = figures["fps"]
                if input_name == "synthetic":
                    out["fps_per_cpu_s_synthetic_640x480"][name] = figures["fps_per_cpu_s"]
                progress(
                    f"detector {name:8s} on {input_name:9s}: {figures['fps']:6.1f} fps, "
                    f"{figures['fps_per_cpu_s']:6.1f} frames per CPU second "
                    f"({figures['frames']} frames, {figures['published']} published)"
                )
    out["fps"] = dict(out["fps_synthetic_640x480"])
    faces = shared / "data" / "faces"
    for name, settings in configs.items():
        detection = build(DetectionSettings, settings["detection"], "<bench>")
        out["accuracy"][name] = recall_precision(replace(detection), faces)
        acc = out["accuracy"][name]
        progress(f"accuracy {name:8s}: recall {acc['recall']:.3f} precision {acc['precision']:.3f}")
    if not quick:
        out["evaluation"] = {}
        for name in ("yunet", "yunet-bare"):
            cfg = build(DetectorConfig, configs[name], "<bench>")
            report, _ = evaluate(cfg, str(clip), CLIP_TRUTH)
            out["evaluation"][name] = {k: report[k] for k in EVALUATION_FIGURES}
            progress(
                f"evaluate {name:10s} on the clip: {report['crops']} crops, "
                f"{report['persons_stored']} persons stored, {report['non_faces']} non-faces, "
                f"{report['unusable']} unusable"
            )
    homework = out["fps"]["homework"] or 1.0
    out["speedup_vs_homework"] = {k: round(v / homework, 2) for k, v in out["fps"].items()}
    return out
