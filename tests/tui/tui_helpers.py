"""Helpers of the monitor tests: deterministic faces and heartbeats, a frozen clock, Pilot waits,
the screen as text. The MQTT publisher they use is `tests.support.Publisher`."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import cv2
import numpy as np

from facefleet.contract import FaceMeta

#: the monitor's frozen "now" in snapshot tests; heartbeats are stamped 5 s before it
FROZEN_NOW = datetime(2026, 1, 1, 12, 0, 5, tzinfo=timezone.utc).timestamp()
HEARTBEAT_TS = "2026-01-01T12:00:00.000Z"


def frozen_clock() -> float:
    return FROZEN_NOW


def make_jpeg(seed: int = 0, size: int = 96) -> bytes:
    """A small, deterministic face-like picture, JPEG-encoded by OpenCV."""
    img = np.full((size, size, 3), (60 + seed * 20 % 120, 90, 140), np.uint8)
    centre = (size // 2, size // 2)
    cv2.ellipse(img, centre, (size // 3, size * 2 // 5), 0, 0, 360, (150, 180, 225), -1)
    for dx in (-size // 7, size // 7):
        cv2.circle(img, (centre[0] + dx, centre[1] - size // 10), size // 16, (40, 30, 30), -1)
    cv2.ellipse(
        img,
        (centre[0], centre[1] + size // 6),
        (size // 8, size // 20),
        0,
        0,
        180,
        (60, 60, 170),
        -1,
    )
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return bytes(buf.tobytes())


def face_meta(
    node: str,
    track: int,
    payload: bytes,
    *,
    face_id: str | None = None,
    ts: str = "2026-01-01T12:00:01.250Z",
    score: float = 0.93,
    content_type: str = "image/jpeg",
) -> FaceMeta:
    return FaceMeta(
        id=face_id or f"{node}-t{track}",
        node=node,
        track=track,
        ts=ts,
        box=(100 + track, 80, 96, 112),
        score=score,
        frame=(640, 360),
        detector="yunet",
        sha256=hashlib.sha256(payload).hexdigest(),
        content_type=content_type,
    )


def status_body(node: str, service: str, state: str = "online", **figures: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "state": state,
        "service": service,
        "node": node,
        "version": "0.1.0",
        "ts": HEARTBEAT_TS,
        "interval_s": 5.0,
        "uptime_s": 120.0,
    }
    body.update(figures)
    return body


async def wait_until(
    pilot: Any, predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


async def wait_shown(pilot: Any, app: Any, text: str, timeout_s: float = 10.0) -> None:
    """Wait until the terminal shows `text` (a redraw may be a timer tick away)."""
    await wait_until(pilot, lambda: text in screen_text(app), timeout_s, what=f"{text!r} shown")


def screen_text(app: Any) -> str:
    """What the terminal shows now, as plain text (the SVG snapshot's text layer)."""
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
        record=True,
        legacy_windows=False,
    )
    console.print(app.screen._compositor.render_update(full=True))
    return str(console.export_text())


def async_test(func: Callable[..., Any]) -> Callable[..., None]:
    """Run an `async def` test in a fresh event loop (the venv has no asyncio pytest plugin)."""
    import asyncio
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(func(*args, **kwargs))

    return wrapper
