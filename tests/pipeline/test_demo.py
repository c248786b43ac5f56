"""`facefleet demo --headless --until-eof`: the whole pipeline, end to end, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import refused_port, require_shared

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def demo_process(*args: str) -> subprocess.CompletedProcess[str]:
    """`facefleet demo --headless --until-eof ARGS` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "facefleet", "demo", "--headless", "--until-eof", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def run_demo(tmp_path: Path, *extra: str) -> dict[str, Any]:
    storage = tmp_path / "storage"
    result = demo_process("--storage", str(storage), *extra)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    images = [p for p in storage.rglob("faces/**/*") if p.suffix in (".jpg", ".png")]
    assert len(images) == summary["stored"]
    for image in images:
        sidecar = json.loads(image.with_suffix(".json").read_text())
        assert sidecar["node"] == "demo-edge"
    return summary


def test_default_demo_runs_offline_and_stores_every_published_face(tmp_path: Path) -> None:
    summary = run_demo(tmp_path, "--backend", "haar")  # nothing from ../shared
    assert summary["drained"] is True
    assert summary["frames"] > 0 and summary["faces_detected"] > 0
    assert summary["published"] > 0
    assert summary["stored"] == summary["published"]
    assert summary["dead_lettered"] == 0
    assert summary["uplink_face_bytes"] == summary["published_bytes"]
    # the quality gate's figures come from the detector's heartbeat (no key the detector lacks)
    assert isinstance(summary["held_back"], dict) and isinstance(summary["merged"], int)


def test_best_crop_mode_sends_far_fewer_bytes_than_the_homework_mode(tmp_path: Path) -> None:
    clip = require_shared("data", "videos", "short_hamilton_clip.mp4")
    best = run_demo(tmp_path / "best", "--source", str(clip))
    homework = run_demo(
        tmp_path / "homework", "--source", str(clip), "--mode", "every-frame", "--encoding", "png"
    )
    assert best["stored"] == best["published"] > 0
    assert homework["stored"] == homework["published"] == homework["faces_detected"]
    assert homework["uplink_face_bytes"] > 20 * best["uplink_face_bytes"]


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("/dev/video-facefleet-absent", "no such device"),
        (f"rtsp://127.0.0.1:{refused_port()}/x", "connection refused (127.0.0.1:"),
    ],
)
def test_a_source_that_never_opens_is_named_with_its_reason_and_until_eof_gives_up(
    tmp_path: Path, source: str, reason: str
) -> None:
    result = demo_process(
        "--backend",
        "haar",
        "--open-timeout",
        "6",
        "--storage",
        str(tmp_path / "storage"),
        "--source",
        source,
    )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    said = [line for line in result.stdout.splitlines() if line.startswith(f"source {source}:")]
    # the reason once (it did not change), not a zero-frame progress line every 2 s
    assert len(said) == 1 and reason in said[0], result.stdout
    assert f"gave no frame in 6 s: {reason}" in result.stderr
    # the detector's heartbeat carried the reason: the summary still comes last
    assert json.loads(result.stdout.splitlines()[-1])["frames"] == 0
    assert "storage " in result.stderr and "kept across runs" in result.stderr
