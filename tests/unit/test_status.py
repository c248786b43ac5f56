"""The contract's status heartbeat (typed, versioned, tolerant) and the health judged from it."""

from __future__ import annotations

import json
from dataclasses import fields, replace

import pytest

from facefleet.contract import (
    FIGURES,
    STATUS_VERSION,
    DetectorFigures,
    ForwarderFigures,
    LoggerFigures,
    ProcessorFigures,
    ServiceFigures,
    Status,
    parse_status,
    utc_timestamp,
)
from facefleet.health import (
    NEVER,
    OFFLINE,
    ONLINE,
    STALE,
    Heard,
    StatusTracker,
    heard_at,
    problem,
    state,
)

#: A value for every kind of figure (by its annotation), so that every field is exercised.
SAMPLES: dict[str, object] = {
    "int": 7,
    "float": 2.5,
    "str": "yunet",
    "bool": True,
    "dict[str, int]": {"blurry": 3},
}


def filled(kind: type[ServiceFigures]) -> ServiceFigures:
    return kind(**{f.name: SAMPLES[str(f.type).replace(" | None", "")] for f in fields(kind)})


EVERY_FIGURE = {service: filled(kind) for service, kind in FIGURES.items()}


def online(service: str, figures: ServiceFigures | None = None, **envelope: object) -> Status:
    fields_ = {
        "version": "1.2.0",
        "ts": utc_timestamp(),
        "interval_s": 5.0,
        "uptime_s": 60.0,
        "platform": {"arch": "aarch64", "python": "3.9.5"},
        **envelope,
    }
    return Status("online", service, "cam1", figures=figures, **fields_)  # type: ignore[arg-type]


@pytest.mark.parametrize("service", sorted(FIGURES))
def test_every_status_type_round_trips(service: str) -> None:
    figures = EVERY_FIGURE[service]
    status = online(service, figures)
    assert Status.decode(status.encode()) == status
    assert parse_status("cam1", service, status.encode(), 64 * 1024) == status


def test_the_heartbeat_is_flat_json_with_its_schema_version() -> None:
    body = json.loads(online("processor", ProcessorFigures(stored=3)).encode())
    assert body["v"] == STATUS_VERSION
    assert (body["state"], body["service"], body["node"], body["stored"]) == (
        "online",
        "processor",
        "cam1",
        3,
    )
    assert "received" not in body  # a figure not set is not sent


def test_an_instance_suffix_keeps_the_service_figures() -> None:
    body = json.dumps({"state": "online", "stored": 4}).encode()
    status = Status.decode(body, "cloud1", "processor-2")
    assert status.figures == ProcessorFigures(stored=4)


@pytest.mark.parametrize("service", sorted(FIGURES))
def test_decoding_tolerates_older_and_newer_heartbeats(service: str) -> None:
    """A rollout runs mixed versions: unknown fields are ignored, missing ones are None (not
    reported), figures of the wrong type are dropped, and the envelope still decodes."""
    newer = {
        **json.loads(online(service, EVERY_FIGURE[service]).encode()),
        "v": "2",
        "a_figure_from_the_future": [1, 2],
        "platform": {"arch": "x86_64", "gpu": "none"},
    }
    status = Status.decode(json.dumps(newer).encode())
    assert status.v == "2"
    assert status.figures == EVERY_FIGURE[service]
    older = Status.decode(json.dumps({"state": "online"}).encode(), "cam1", service)
    assert older.v == STATUS_VERSION  # heartbeats from before `v` are version 1
    assert (older.node, older.service, older.version, older.ts) == ("cam1", service, None, None)
    assert older.figures == FIGURES[service]()
    first = fields(FIGURES[service])[0].name
    odd = Status.decode(json.dumps({"state": "online", first: "lots"}).encode(), "cam1", service)
    assert odd.figures == FIGURES[service]()


def test_booleans_are_not_numbers_and_numbers_not_booleans() -> None:
    body = {"state": "online", "spool_depth": True, "edge_connected": 1, "spool_oldest_age_s": 3}
    figures = Status.decode(json.dumps(body).encode(), "cam1", "forwarder").figures
    assert figures == ForwarderFigures(spool_oldest_age_s=3.0)


def test_an_unknown_service_has_no_figures() -> None:
    status = Status.decode(b'{"state": "online", "fps": 3}', "cam1", "camera-helper")
    assert status.figures is None


def test_the_last_will_has_no_ts_and_no_figures() -> None:
    will = Status("offline", "detector", "cam1", version="1.2.0", interval_s=5.0)
    body = json.loads(will.encode())
    assert body["ts"] is None
    assert Status.decode(will.encode()) == replace(will, figures=DetectorFigures())


# --- health -----------------------------------------------------------------------------------


def test_state_online_stale_offline_and_never_seen() -> None:
    status = online("logger", LoggerFigures())
    assert state(None, 100.0) == NEVER
    assert state(Heard(status, 100.0), 114.9) == ONLINE
    assert state(Heard(status, 100.0), 115.1) == STALE
    offline = Status("offline", "logger", "cam1", interval_s=5.0)
    assert state(Heard(offline, 100.0), 1000.0) == OFFLINE


def test_a_retained_heartbeat_counts_from_its_timestamp() -> None:
    status = online("logger", ts="2026-12-01T10:00:00.000Z")
    sent = 1_796_119_200.0  # 2026-12-01T10:00:00Z
    assert heard_at(status, sent + 60, retained=True) == sent
    assert heard_at(status, sent + 60, retained=False) == sent + 60
    assert heard_at(online("logger", ts="garbage"), 5.0, retained=True) == 5.0


def test_problems_name_what_is_wrong() -> None:
    now = 1000.0
    detector = online("detector", DetectorFigures(fps=12.0), ts=utc_timestamp())
    assert problem("detector", Heard(detector, now), now, None) is None
    assert problem("detector", None, now, None) == "detector never reported"
    stopped = Status("stopped", "logger", "cam1")
    assert problem("logger", Heard(stopped, now), now, None) == "logger stopped"
    assert problem("detector", Heard(detector, now - 60), now, None) == (
        "detector stale (60 s without a heartbeat)"
    )
    assert problem("detector", Heard(detector, now), now, "2.0") == (
        "detector runs 1.2.0, expected 2.0"
    )
    idle = online("detector", DetectorFigures(fps=0.0))
    assert problem("detector", Heard(idle, now), now, None) == "detector produces no frames"
    no_ts = online("logger", ts=None)
    assert problem("logger", Heard(no_ts, now), now, None) == "logger heartbeat without a valid ts"


def test_the_tracker_keeps_the_latest_heartbeat_per_service() -> None:
    tracker = StatusTracker(clock=lambda: 50.0)
    assert tracker.figures("cam1", "processor", ProcessorFigures) == ProcessorFigures()
    assert not tracker.online("cam1", "processor")
    tracker.record(online("processor", ProcessorFigures(stored=1)), retained=False)
    tracker.record(online("processor", ProcessorFigures(stored=2)), retained=False)
    assert tracker.figures("cam1", "processor", ProcessorFigures).stored == 2
    assert tracker.online("cam1", "processor")
    assert tracker.snapshot()[("cam1", "processor")].at == 50.0
    tracker.clear()
    assert tracker.status("cam1", "processor") is None


def test_a_detector_set_to_a_slow_camera_rate_does_not_report_zero_fps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At 0.05 fps a frame comes every 20 s; over the default 5 s window the heartbeat would
    say 0 fps most of the time, and health would call the detector frameless."""
    from facefleet.detector import service

    clock = [1000.0]
    monkeypatch.setattr(service.time, "monotonic", lambda: clock[0])
    slow, default = service.Figures(camera_fps=0.05), service.Figures()
    for _ in range(3):
        clock[0] += 20.0
        slow.frame_done(faces=0, tracks_active=0)
        default.frame_done(faces=0, tracks_active=0)
    clock[0] += 15.0
    assert slow.snapshot().fps == pytest.approx(0.05)
    assert default.snapshot().fps == 0.0
