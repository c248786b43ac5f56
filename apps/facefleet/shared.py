"""Where the team's shared data lives (models, labelled faces, a clip): one setting.

FACEFLEET_SHARED, default `../shared` from the current directory, which is beside the checkout
for everything run from it (make, pytest, the benchmarks, the lab). An installed facefleet has
no checkout to reach into: the services get their model path from their config.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The YuNet model the detector uses by default (under `models/` of the shared data).
YUNET_MODEL = "face_detection_yunet_2023mar.onnx"


def shared_dir() -> Path:
    return Path(os.environ.get("FACEFLEET_SHARED") or "../shared").resolve()


def default_yunet_model() -> Path:
    return shared_dir() / "models" / YUNET_MODEL
