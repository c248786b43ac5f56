"""The fleet the TUI tests publish: retained heartbeats, live heartbeats, faces, bad messages."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tests.support import Publisher
from tests.tui.tui_helpers import face_meta, make_jpeg, status_body

EXPECTED = {"cam1": "edge", "cam2": "edge", "cam3": "edge", "cloud1": "cloud"}
#: faces the scenario publishes that the monitor lists (the oversized one is refused)
LISTED_FACES = 8
RETAINED_STATUSES = 6
STATUSES = 12  # heartbeats the monitor applies (the malformed one is not one of them)
BAD = 2  # malformed status + oversized face
OVERSIZED = 5 * 1024 * 1024
#: cam2 is a JetPack 5 Jetson: its services report the platform, the detector with OpenCV
JETSON = {"arch": "aarch64", "os": "Ubuntu 20.04.6 LTS", "python": "3.9.5"}


def publish_retained(pub: Publisher) -> None:
    """Before the monitor starts: what the broker replays on subscribe."""
    for service, figures in (
        ("detector", {"fps": 9.8, "camera": "open", "faces_detected": 41, "published": 12}),
        ("logger", {"events": 60, "faces": 12}),
        ("forwarder", {"spool_depth": 0, "spool_oldest_age_s": 0, "forwarded": 12}),
    ):
        pub.status("cam1", service, status_body("cam1", service, **figures))
    pub.status(
        "cam2", "logger", status_body("cam2", "logger", "stopped", events=3, platform=JETSON)
    )
    pub.status(
        "cloud1",
        "processor",
        status_body(
            "cloud1", "processor", received=20, stored=18, dead_lettered=0, storage_errors=0
        ),
    )
    pub.status("cam9", "detector", status_body("cam9", "detector", fps=4.0, camera="open"))
    pub.flush()


async def publish_live(pub: Publisher, applied: Callable[[int], Awaitable[None]]) -> None:
    """After the monitor subscribed: trends need successive heartbeats. `applied(n)` waits
    until the monitor applied n heartbeats: back-to-back heartbeats of one service would
    (rightly) supersede each other in the UI queue, and the trend needs each one."""
    pub.status(
        "cam2",
        "detector",
        status_body(
            "cam2",
            "detector",
            fps=0.0,
            camera="lost",
            camera_reopens=3,
            platform={**JETSON, "opencv": "4.8.0"},
        ),
    )
    seen = RETAINED_STATUSES + 1
    for depth, age in ((4, 20.0), (9, 25.0), (15, 30.0)):
        pub.status(
            "cam2",
            "forwarder",
            status_body(
                "cam2",
                "forwarder",
                spool_depth=depth,
                spool_oldest_age_s=age,
                forwarded=7,
                cloud_connected=False,
            ),
        )
        pub.flush()
        seen += 1
        await applied(seen)
    for dead in (0, 2):
        pub.status(
            "cloud1",
            "processor",
            status_body(
                "cloud1",
                "processor",
                received=22,
                stored=19,
                dead_lettered=dead,
                storage_errors=1,
                errors=1,
            ),
        )
        pub.flush()
        seen += 1
        await applied(seen)
    pub.status("cam2", "logger", b'{"state": "online", "service": "logger", ')  # malformed
    # an undecodable face: the right hash of bytes that are no JPEG
    junk = b"\x00garbage that claims to be a jpeg"
    meta = face_meta("cam2", 7, junk, face_id="cam2-junk", ts="2026-01-01T12:00:02.000Z")
    pub.face(meta, junk)
    # an oversized face: refused, counted as a bad message
    big = b"\xff\xd8\xff" + bytes(OVERSIZED)
    pub.face(face_meta("cam2", 8, big, face_id="cam2-big", ts="2026-01-01T12:00:02.500Z"), big)
    for track in range(1, 6):
        jpeg = make_jpeg(track)
        pub.face(
            face_meta(
                "cam1", track, jpeg, ts=f"2026-01-01T12:00:03.{track}00Z", score=0.80 + track / 100
            ),
            jpeg,
        )
    jpeg = make_jpeg(9)
    pub.face(face_meta("cam9", 1, jpeg, ts="2026-01-01T12:00:04.000Z"), jpeg)
    jpeg = make_jpeg(6)
    pub.face(face_meta("cam1", 6, jpeg, ts="2026-01-01T12:00:04.500Z", score=0.97), jpeg)
    pub.flush()
