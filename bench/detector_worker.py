"""One detector run in this process, for `bench.detector`: started under `taskset` on one CPU.

Usage: `python -m bench.detector_worker CONFIG_JSON`. Builds the real detector service
(capture, detection, tracking, encoding, publishing to the broker in the config), runs it until
the finite source ends, and prints one JSON line: frames, seconds, fps, published, bytes.
Model loading and the broker connection happen before the clock starts; the final flush and
the wait for the broker's acknowledgements are inside it. `fps_per_cpu_s` divides by the CPU
time the process used instead: what one dedicated core would do when the machine is shared.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time

import cv2

from facefleet.config import build
from facefleet.detector.service import Detector, quiet_opencv
from facefleet.detector.settings import DetectorConfig
from facefleet.runtime import lifecycle
from facefleet.service import resolve_node


def cpu_seconds() -> float:
    """CPU time of this process, all threads (paho's network thread too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    cv2.setNumThreads(1)
    quiet_opencv()
    cfg = build(DetectorConfig, json.loads(sys.argv[1]), "<bench>")
    detector = Detector(cfg, resolve_node(cfg.node), threading.Event())
    began, cpu_began = time.perf_counter(), cpu_seconds()
    lifecycle(detector)
    seconds, cpu = time.perf_counter() - began, cpu_seconds() - cpu_began
    figures = detector.figures
    print(
        json.dumps(
            {
                "frames": figures.frames,
                "seconds": round(seconds, 3),
                "fps": round(figures.frames / seconds, 1) if seconds > 0 else 0.0,
                "cpu_s": round(cpu, 3),
                "fps_per_cpu_s": round(figures.frames / cpu, 1) if cpu > 0 else 0.0,
                "faces_detected": figures.faces_detected,
                "published": figures.published,
                "published_bytes": figures.published_bytes,
                "errors": figures.errors,
                "cpu_affinity": sorted(os.sched_getaffinity(0)),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
