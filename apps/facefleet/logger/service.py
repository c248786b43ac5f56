"""The audit logger: one JSON line per face event and per status change, never image bytes.

Subscribes to everything under the prefix on the edge broker with a persistent session and
acknowledges a message only after its line is written, so a restart does not leave a gap in
the trail. Lines go to a size-rotated file and (optionally) to stderr.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from facefleet.config import ConfigError
from facefleet.contract import LoggerFigures, Status, parse_timestamp, parse_topic, utc_timestamp
from facefleet.logger.settings import AuditSettings, LoggerConfig
from facefleet.mqtt import content_type, user_properties
from facefleet.runtime import Link, ServiceSpec, StatusSource, Step, Worker, qos1

log = logging.getLogger(__name__)


def check(cfg: LoggerConfig) -> None:
    parent = Path(cfg.audit.path).parent
    if not parent.is_dir():
        raise ConfigError(f"audit.path: directory {parent} does not exist")


class AgeLimitedFileHandler(logging.handlers.RotatingFileHandler):
    """Size rotation plus the age limit of AuditSettings.max_age_s (personal data: the audit
    trail names faces and devices)."""

    def __init__(self, settings: AuditSettings) -> None:
        super().__init__(
            settings.path,
            maxBytes=settings.max_bytes,
            backupCount=settings.backups,
            encoding="utf-8",
        )
        self.max_age_s = settings.max_age_s
        self.span_s = settings.max_age_s / 10
        self.first_line_at = self._first_line_time()

    def _first_line_time(self) -> float | None:
        """When the current file's first line was logged (None: no line yet)."""
        path = Path(self.baseFilename)
        try:
            with path.open("rb") as handle:
                first = handle.readline()
            if not first:
                return None
            return parse_timestamp(json.loads(first)["logged"]).timestamp()
        except (OSError, ValueError, KeyError, TypeError):  # unreadable: assume old, roll over
            return 0.0

    def _rotated(self) -> list[Path]:
        paths = [Path(f"{self.baseFilename}.{n}") for n in range(1, self.backupCount + 1)]
        return [p for p in paths if p.exists()]

    def shouldRollover(self, record: logging.LogRecord) -> int:  # noqa: N802 - logging's name
        started = self.first_line_at
        if self.max_age_s and started is not None and time.time() - started >= self.span_s:
            return 1
        return int(super().shouldRollover(record))

    def doRollover(self) -> None:  # noqa: N802 - logging's name
        super().doRollover()
        self.first_line_at = None

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if self.first_line_at is None:
            self.first_line_at = time.time()

    def expire(self) -> int:
        """Delete rotated files whose newest line is nine tenths of max_age_s old and roll
        the current file over when its first line is a tenth old; returns files deleted."""
        if not self.max_age_s:
            return 0
        self.acquire()
        try:
            now = time.time()
            if self.first_line_at is not None and now - self.first_line_at >= self.span_s:
                self.doRollover()
            removed = 0
            for rotated in self._rotated():
                if now - rotated.stat().st_mtime >= self.max_age_s - self.span_s:
                    rotated.unlink()
                    removed += 1
            return removed
        finally:
            self.release()


def audit_writer(settings: AuditSettings) -> logging.Logger:
    """A logger that writes bare JSON lines to the rotating audit file (and stderr)."""
    writer = logging.getLogger("facefleet.audit")
    writer.propagate = False
    writer.setLevel(logging.INFO)
    for handler in list(writer.handlers):
        writer.removeHandler(handler)
        handler.close()
    handler = AgeLimitedFileHandler(settings)
    handler.setFormatter(logging.Formatter("%(message)s"))
    writer.addHandler(handler)
    if settings.stderr:
        echo = logging.StreamHandler()
        echo.setFormatter(logging.Formatter("audit %(message)s"))
        writer.addHandler(echo)
    return writer


def face_record(msg: mqtt.MQTTMessage, node: str) -> dict[str, Any]:
    record: dict[str, Any] = {"event": "face", "logged": utc_timestamp(), "topic": msg.topic}
    record["node"] = node
    record.update(user_properties(msg))
    record["content_type"] = content_type(msg)
    record["bytes"] = len(msg.payload)
    return record


class AuditLogger:
    def __init__(self, cfg: LoggerConfig, node: str, stop: threading.Event) -> None:
        self.cfg = cfg
        self.stop = stop
        self.node = node
        try:
            self.writer = audit_writer(cfg.audit)
        except OSError as exc:
            raise ConfigError(f"audit.path: {cfg.audit.path}: {exc.strerror}") from None
        self.states: dict[tuple[str, str], str] = {}
        self.events = self.faces = self.status_changes = self.errors = 0
        self._counting = threading.Lock()  # paho's thread counts, the heartbeat's reads
        self.link = Link(
            "edge",
            cfg.mqtt,
            f"facefleet-logger-{node}",
            StatusSource(cfg.prefix, node, "logger", cfg.heartbeat_s, self.figures),
            subscriptions=[qos1(f"{cfg.prefix}/#")],
            manual_ack=True,
            persistent=True,
            receive_maximum=256,
        )
        self.link.client.on_message = self._on_message
        self.links = [self.link]
        self.workers: Sequence[Worker] = ()
        log.info("auditing %s/# on %s into %s", cfg.prefix, cfg.mqtt.address, cfg.audit.path)

    def figures(self) -> LoggerFigures:
        with self._counting:
            return LoggerFigures(
                events=self.events,
                faces=self.faces,
                status_changes=self.status_changes,
                errors=self.errors,
                audit_path=self.cfg.audit.path,
            )

    def _count(self, *, events: int = 0, faces: int = 0, changes: int = 0, errors: int = 0) -> None:
        with self._counting:
            self.events += events
            self.faces += faces
            self.status_changes += changes
            self.errors += errors

    def record_for(self, msg: mqtt.MQTTMessage) -> dict[str, Any] | None:
        """The audit line of a message, or None when it changes nothing worth a line."""
        parsed = parse_topic(self.cfg.prefix, msg.topic)
        if parsed is None:
            return None
        node, kind, service = parsed
        if kind == "faces":
            self._count(faces=1)
            return face_record(msg, node)
        assert service is not None
        try:
            status = Status.decode(bytes(msg.payload), node, service)
        except ValueError:
            self._count(errors=1)
            return {"event": "status-malformed", "logged": utc_timestamp(), "topic": msg.topic}
        previous = self.states.get((node, service))
        if previous == status.state:
            return None
        self.states[(node, service)] = status.state
        self._count(changes=1)
        return {
            "event": "status",
            "logged": utc_timestamp(),
            "node": node,
            "service": service,
            "state": status.state,
            "previous": previous,
            "version": status.version,
            "ts": status.ts,
        }

    def _expire(self) -> None:
        for handler in self.writer.handlers:
            if isinstance(handler, AgeLimitedFileHandler):
                try:
                    removed = handler.expire()
                except OSError as exc:
                    self._count(errors=1)
                    log.error("could not expire old audit files: %s", exc)
                    continue
                if removed:
                    log.info("audit: %d file(s) past the age limit deleted", removed)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            record = self.record_for(msg)
            if record is not None:
                self.writer.info("%s", json.dumps(record, separators=(",", ":")))
                self._count(events=1)
        except Exception:  # the trail must go on; the message is redelivered after a restart
            self._count(errors=1)
            log.exception("could not audit a message on %s", msg.topic)
            return
        client.ack(msg.mid, msg.qos)

    def main_loop(self) -> None:
        while not self.stop.wait(min(60.0, max(0.5, self.cfg.audit.max_age_s / 20))):
            self._expire()

    def shutdown_steps(self) -> Sequence[Step]:
        return [self.link.close, *(handler.close for handler in self.writer.handlers)]


SERVICE = ServiceSpec(LoggerConfig, lambda cfg: {"mqtt": cfg.mqtt}, check, AuditLogger)
