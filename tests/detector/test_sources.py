"""Source URIs, finite sources (folder, video file, synthetic) and the live grabber."""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from facefleet.config import ConfigError
from facefleet.detector.settings import CameraSettings
from facefleet.detector.sources import (
    FiniteSource,
    LiveSource,
    SourceSpec,
    diagnose,
    has_gstreamer,
    open_source,
    parse_source,
    redact,
)
from facefleet.detector.synthetic import SceneParams
from tests.helpers import refused_port
from tests.support import wait_until


def test_parse_camera_uris() -> None:
    assert parse_source("/dev/video0") == SourceSpec("v4l2", "/dev/video0")
    assert parse_source("2") == SourceSpec("v4l2", 2)
    by_id = "/dev/v4l/by-id/usb-Logitech_C920-video-index0"
    assert parse_source(by_id) == SourceSpec("v4l2", by_id)
    assert parse_source("gst:videotestsrc ! appsink") == SourceSpec(
        "gstreamer", "videotestsrc ! appsink"
    )
    assert parse_source("v4l2src device=/dev/video0 ! videoconvert ! appsink").kind == "gstreamer"
    assert parse_source("rtsp://cam.local:554/stream1") == SourceSpec(
        "stream", "rtsp://cam.local:554/stream1"
    )
    assert parse_source("https://example.org/live.m3u8").kind == "stream"
    assert all(parse_source(u).live for u in ("0", "gst:x ! appsink", "rtsp://h/s"))


def test_parse_paths(tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    with pytest.raises(ValueError, match="no images in this folder"):  # it would end at once
        parse_source(str(tmp_path))
    (tmp_path / "frame.png").write_bytes(b"")
    assert parse_source(str(tmp_path)) == SourceSpec("folder", str(tmp_path))
    assert parse_source(str(video)) == SourceSpec("file", str(video))
    assert parse_source(f"file://{video}") == SourceSpec("file", str(video))
    assert not parse_source(str(video)).live


def test_parse_synthetic() -> None:
    spec = parse_source("synthetic:?persons=5&seconds=12&fps=15&size=320x240&seed=1")
    assert spec.kind == "synthetic"
    assert spec.scene == SceneParams(persons=5, seconds=12, fps=15, width=320, height=240, seed=1)
    assert parse_source("synthetic:").scene == SceneParams()
    assert SceneParams().frame_count == 600  # 8 persons over 40 s at 15 fps


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("", "empty"),
        ("/nonexistent/clip.mp4", "no such video file"),
        ("ftp://host/clip.mp4", "unsupported source scheme"),
        ("synthetic:?bogus=1", "unknown synthetic parameter"),
        ("synthetic:?size=big", "bad value"),
        ("synthetic:?persons=-1", "persons"),
        ("synthetic:?fps=0", "fps"),
    ],
)
def test_parse_errors_are_one_line(uri: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as info:
        parse_source(uri)
    assert "\n" not in str(info.value)


def test_open_source_turns_parse_errors_into_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"camera\.source: .*no such"):
        open_source(CameraSettings(source="/nonexistent/clip.mp4"))


@pytest.mark.skipif(has_gstreamer(), reason="this OpenCV has GStreamer")
def test_a_pipeline_without_gstreamer_support_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="without GStreamer"):
        open_source(CameraSettings(source="gst:videotestsrc ! appsink"))


def test_redact_hides_stream_passwords() -> None:
    assert redact("rtsp://admin:s3cret@10.0.0.5:554/s") == "rtsp://admin:***@10.0.0.5:554/s"
    assert redact("/dev/video0") == "/dev/video0"


def write_images(folder: Path, count: int) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(count):
        image = np.full((48, 64, 3), 20 * i, np.uint8)
        cv2.imwrite(str(folder / f"frame{i:03d}.png"), image)
        images.append(image)
    return images


def drain(source: FiniteSource, limit: int = 10_000) -> list[int]:
    seen: list[int] = []
    while (frame := source.read(0.1)) is not None and len(seen) < limit:
        seen.append(int(frame.image[0, 0, 0]))
    return seen


def test_folder_in_name_order_skipping_unreadable(tmp_path: Path) -> None:
    write_images(tmp_path, 4)
    (tmp_path / "frame001b.jpg").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    source = FiniteSource(SourceSpec("folder", str(tmp_path)), CameraSettings())
    assert drain(source) == [0, 20, 40, 60]
    assert source.state == "ended"


def test_loop_restarts_a_finite_source(tmp_path: Path) -> None:
    write_images(tmp_path, 3)
    source = FiniteSource(SourceSpec("folder", str(tmp_path)), CameraSettings(loop=True))
    assert drain(source, limit=7) == [0, 20, 40, 0, 20, 40, 0]
    assert source.state == "open"
    source.close()
    assert source.state == "ended"


def test_realtime_paces_at_the_source_rate(tmp_path: Path) -> None:
    write_images(tmp_path, 6)
    source = FiniteSource(
        SourceSpec("folder", str(tmp_path)), CameraSettings(realtime=True, fps=20.0)
    )
    started = time.monotonic()
    assert len(drain(source)) == 6
    assert time.monotonic() - started >= 5 / 20.0


def write_video(path: Path, frames: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 25.0, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), (i * 8) % 256, np.uint8))
    writer.release()
    return path


def test_video_file_reads_every_frame(tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.avi", 12)
    source = FiniteSource(parse_source(str(video)), CameraSettings())
    frames = []
    while (frame := source.read(0.1)) is not None:
        frames.append(frame)
    assert [f.index for f in frames] == list(range(12))
    assert frames[0].image.shape == (48, 64, 3)
    assert source.fps == pytest.approx(25.0)


def test_synthetic_source_yields_its_frame_count() -> None:
    source = open_source(CameraSettings(source="synthetic:?seconds=1&fps=8&size=320x240"))
    frames = []
    while (frame := source.read(0.1)) is not None:
        frames.append(frame)
    assert len(frames) == 8
    assert frames[0].image.shape == (240, 320, 3)
    assert source.state == "ended"


def video_opener(path: Path) -> Callable[[SourceSpec, CameraSettings], cv2.VideoCapture]:
    """A live source whose 'camera' is a real VideoCapture on a file: it ends like an
    unplugged camera, and a missing file fails to open like an absent one."""
    return lambda spec, camera: cv2.VideoCapture(str(path))


def test_live_source_keeps_only_the_newest_frame_and_reopens(tmp_path: Path) -> None:
    video = write_video(tmp_path / "camera.avi", 30)
    camera = CameraSettings(reopen_min_s=0.05, reopen_max_s=0.2)
    source = LiveSource(SourceSpec("v4l2", 0), camera, opener=video_opener(video))
    try:
        wait_until(lambda: source.reopens >= 2, 10, "two reopens")  # the clip ended twice
        frame = source.read(5.0)
        assert frame is not None
        assert source.dropped > 0, "an idle consumer must see frames dropped, not queued"
        time.sleep(0.05)
        newer = source.read(5.0)
        assert newer is not None
        assert newer.index > frame.index
    finally:
        source.close()
    assert source.state == "ended"


def test_live_source_that_cannot_open_goes_from_reopening_to_lost(tmp_path: Path) -> None:
    camera = CameraSettings(reopen_min_s=0.05, reopen_max_s=0.2)
    source = LiveSource(
        SourceSpec("v4l2", 0), camera, opener=video_opener(tmp_path / "unplugged.avi")
    )
    try:
        assert source.state == "reopening"
        wait_until(lambda: source.state == "lost", 10, "lost")
        assert source.read(0.1) is None
        video = write_video(tmp_path / "tmp.avi", 200)
        video.rename(tmp_path / "unplugged.avi")  # plugged in again
        wait_until(lambda: source.state == "open", 10, "open")
        assert source.read(5.0) is not None
    finally:
        source.close()


def test_diagnose_names_why_a_live_source_did_not_open(tmp_path: Path) -> None:
    missing = "/dev/video-facefleet-test-absent"
    assert diagnose(SourceSpec("v4l2", missing)) == "no such device"
    plain = tmp_path / "video0"
    plain.write_text("")
    assert diagnose(SourceSpec("v4l2", str(plain))).startswith("not a device")
    assert diagnose(SourceSpec("v4l2", "/dev/null")).startswith("unsupported format")
    port = refused_port()
    url = f"rtsp://127.0.0.1:{port}/x"
    assert diagnose(SourceSpec("stream", url)) == f"connection refused (127.0.0.1:{port})"
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        answered = f"rtsp://127.0.0.1:{server.getsockname()[1]}/x"
        assert diagnose(SourceSpec("stream", answered)).startswith("the server answers, but no")


def test_a_camera_that_never_opens_logs_its_reason_once_per_try(
    caplog: pytest.LogCaptureFixture,
) -> None:
    camera = CameraSettings(
        source="/dev/video-facefleet-absent", reopen_min_s=0.1, reopen_max_s=0.4
    )
    caplog.set_level(logging.WARNING, logger="facefleet.detector.sources")
    source = LiveSource(parse_source(camera.source), camera)
    try:
        wait_until(lambda: source.state == "lost", 10, "lost")
        time.sleep(0.5)
    finally:
        source.close()
    lines = [r.getMessage() for r in caplog.records]
    assert source.error == "no such device"
    assert all(
        re.fullmatch(
            r"camera /dev/video-facefleet-absent: no such device; next try in [0-9.]+ s "
            r"\(\d\d:\d\d:\d\d\)",
            line,
        )
        for line in lines
    ), lines
    # tries after 0.1, 0.2, 0.4, 0.4, ... s: one line each, not one per frame read
    assert 3 <= len(lines) <= 8
