"""Formatting shared by the model's history lines and the views (pure, so it is tested
without a terminal)."""

from __future__ import annotations

from datetime import datetime, timezone

from facefleet.contract import ServiceFigures


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"
    return f"{seconds // 86400:.0f}d{seconds % 86400 // 3600:02.0f}h"


def format_clock(when: float | None) -> str:
    if when is None:
        return "-"
    return datetime.fromtimestamp(when, tz=timezone.utc).strftime("%H:%M:%S")


def format_face_time(ts: str | None) -> str:
    """HH:MM:SS.mmm of a contract timestamp."""
    return ts[11:23] if ts else "-"


#: How a heartbeat figure is named on screen, where its key alone would mislead.
FIGURE_LABELS = {
    "forwarded_faces": "faces_sent",
    "forwarded": "msgs_sent",  # faces and relayed heartbeats
}


def summarize(figures: ServiceFigures | None) -> str:
    """The figures of a heartbeat that matter most, in one short line."""
    if figures is None:
        return ""
    reported = figures.to_json()
    keys = {
        "detector": ("fps", "camera", "faces_detected", "published", "journal_pending", "errors"),
        "logger": ("events", "faces", "errors"),
        "forwarder": (
            "spool_depth",
            "spool_oldest_age_s",
            "forwarded_faces",
            "forwarded",
            "dropped",
            "errors",
        ),
        "processor": ("received", "stored", "dead_lettered", "storage_errors", "errors"),
    }[figures.service]
    parts = []
    for key in keys:
        if key in reported:
            value = reported[key]
            if isinstance(value, float):
                value = f"{value:.1f}"
            parts.append(f"{FIGURE_LABELS.get(key, key)}={value}")
    return " ".join(parts)
