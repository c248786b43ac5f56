"""The wire and storage contract shared by every service, the monitor and outside checks.

Topics, MQTT v5 user properties of a face message, the status heartbeat and the storage key
are defined here once (see docs/architecture in the shared design notes). Everything in this
module is pure: no broker, no I/O.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, ClassVar, TypeVar

SCHEMA_VERSION = "1"
DEFAULT_PREFIX = "facefleet"

CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png"}
EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png"}

#: User properties every face message carries, in the order they are sent.
FACE_PROPERTIES = ("v", "id", "node", "track", "ts", "box", "score", "frame", "detector", "sha256")

SERVICES = ("detector", "logger", "forwarder", "processor")
#: Services a node of each inventory group runs (the Ansible plays install exactly these).
SERVICES_BY_KIND: dict[str, tuple[str, ...]] = {
    "edge": ("detector", "logger", "forwarder"),
    "cloud": ("processor",),
}
#: A service is stale after this many heartbeat intervals without a heartbeat.
STALE_INTERVALS = 3
STATES = ("online", "offline", "stopped")
#: What a processor did with a face: a new object, one that already existed (a resend), or a
#: dead letter. Each is final: the device may forget the face.
RECEIPT_STATUSES = ("stored", "duplicate", "rejected")

#: Version of the heartbeat's JSON (`v`). Adding a figure does not bump it (readers ignore
#: fields they do not know and default the ones a heartbeat lacks); renaming a field or changing
#: its meaning does. Heartbeats from before `v` was sent are version 1.
STATUS_VERSION = "1"
#: What a node runs, in the heartbeat's `platform`: {"arch": "aarch64", "os": "Ubuntu 20.04.6
#: LTS", "python": "3.9.5", "opencv": "4.8.0"} ("opencv" only from services that loaded OpenCV).
#: Added in 0.1.0 without a schema bump: readers must accept heartbeats without it.
PLATFORM_FIELDS = ("arch", "os", "python", "opencv")

_NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TS_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", re.ASCII)


def valid_node(node: str) -> bool:
    """Node names become topic levels and key segments: no wildcards, slashes or spaces."""
    return bool(_NODE_RE.match(node))


def valid_face_id(face_id: str) -> bool:
    return bool(_ID_RE.match(face_id))


def face_id_of(properties: Mapping[str, str]) -> str | None:
    """The face id in a message's user properties (the last `id` when it is repeated, as
    in a dict built from them), or None when it has none or a malformed one."""
    face_id = properties.get("id")
    return face_id if face_id is not None and valid_face_id(face_id) else None


def faces_topic(prefix: str, node: str) -> str:
    return f"{prefix}/{node}/faces"


def status_topic(prefix: str, node: str, service: str) -> str:
    return f"{prefix}/{node}/status/{service}"


def receipts_topic(prefix: str, node: str) -> str:
    """Where processors confirm a device's faces (see `Receipt`); only that device reads it."""
    return f"{prefix}/{node}/receipts"


def spooled_topic(prefix: str, node: str) -> str:
    """Where a device's forwarder tells its detector which faces are in its spool (see
    `SpooledNotice`); on the device's own broker only, never relayed to the cloud."""
    return f"{prefix}/{node}/spooled"


#: The topic families of the contract, by the node they belong to.
TOPIC_FAMILIES = {
    "faces": "{prefix}/{node}/faces",
    "status": "{prefix}/{node}/status/+",
    "receipts": "{prefix}/{node}/receipts",
}
#: What each identity kind may do on the cloud broker: (access, family, whose), whose being
#: "own" (the topics of the identity's own name; a device's name is its node name) or "any"
#: node's. Anything not listed is denied. The broker's ACL is rendered from this (the demo's
#: by localbroker.cloud_acl, the role's by roles/mosquitto/templates/acl.j2; a test keeps them
#: equal), and a test walks every kind over every family on a real broker.
TOPIC_RIGHTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    # reading their own status: a forwarder sees the last will of a second device that uses
    # its identity (a cloned SD card) arrive when it takes the session back
    "device": (
        ("write", "faces", "own"),
        ("write", "status", "own"),
        ("read", "status", "own"),
        ("read", "receipts", "own"),
    ),
    "processor": (
        ("read", "faces", "any"),
        ("write", "receipts", "any"),
        ("write", "status", "own"),
        ("read", "status", "own"),
    ),
    "monitor": (("read", "faces", "any"), ("read", "status", "any")),
}


def all_faces_filter(prefix: str) -> str:
    return f"{prefix}/+/faces"


def all_status_filter(prefix: str) -> str:
    return f"{prefix}/+/status/+"


def parse_topic(prefix: str, topic: str) -> tuple[str, str, str | None] | None:
    """Split a contract topic into (node, kind, service); kind is 'faces' or 'status'.

    Returns None for topics outside the contract.
    """
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != prefix:
        return None
    if len(parts) == 3 and parts[2] == "faces":
        return parts[1], "faces", None
    if len(parts) == 4 and parts[2] == "status":
        return parts[1], "status", parts[3]
    return None


def utc_timestamp(when: datetime | None = None) -> str:
    """ISO 8601 UTC with milliseconds and a Z suffix: 2026-11-23T21:37:15.123Z."""
    when = when or datetime.now(timezone.utc)
    when = when.astimezone(timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def parse_timestamp(text: str) -> datetime:
    """Inverse of utc_timestamp; raises ValueError on anything else (a day that does not exist
    too). The pattern fixes where each field is, so they are read by position: strptime took
    most of `fleet status`'s time at a thousand devices."""
    if not _TS_RE.fullmatch(text):
        raise ValueError(f"not an ISO 8601 UTC timestamp with milliseconds: {text!r}")
    return datetime(
        int(text[0:4]), int(text[5:7]), int(text[8:10]),
        int(text[11:13]), int(text[14:16]), int(text[17:19]), int(text[20:23]) * 1000,
        tzinfo=timezone.utc,
    )  # fmt: skip


def new_face_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class FaceMeta:
    """The metadata of one published face: the user properties of a faces message."""

    id: str
    node: str
    track: int
    ts: str
    box: tuple[int, int, int, int]
    score: float
    frame: tuple[int, int]
    detector: str
    sha256: str
    content_type: str
    v: str = SCHEMA_VERSION

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.content_type]

    def user_properties(self) -> list[tuple[str, str]]:
        values = {
            "v": self.v,
            "id": self.id,
            "node": self.node,
            "track": str(self.track),
            "ts": self.ts,
            "box": ",".join(str(n) for n in self.box),
            "score": f"{self.score:.4f}",
            "frame": f"{self.frame[0]}x{self.frame[1]}",
            "detector": self.detector,
            "sha256": self.sha256,
        }
        return [(name, values[name]) for name in FACE_PROPERTIES]

    def as_dict(self) -> dict[str, str]:
        """Flat string mapping used for object metadata and JSON sidecars."""
        data = dict(self.user_properties())
        data["content_type"] = self.content_type
        return data


class ContractError(ValueError):
    """A message that does not follow the contract; the text is the dead-letter reason."""


@dataclass(frozen=True)
class Receipt:
    """A processor's end-to-end confirmation of one face, published at QoS 1 on
    `<prefix>/<node>/receipts` after the face is durable in storage (or dead-lettered).

    The device's forwarder keeps a face in its spool until the receipt arrives, because a
    broker's PUBACK alone does not survive every broker failure (a restart can drop a shared
    subscription's queue). Payload: `{"id": ..., "status": ...}` as JSON.
    """

    id: str
    status: str

    def encode(self) -> bytes:
        return json.dumps({"id": self.id, "status": self.status}).encode()

    @classmethod
    def decode(cls, payload: bytes) -> Receipt:
        try:
            data = json.loads(payload)
            receipt = cls(str(data["id"]), str(data["status"]))
        except (ValueError, TypeError, KeyError) as exc:
            raise ContractError(f"malformed receipt: {exc}") from None
        if receipt.status not in RECEIPT_STATUSES or not valid_face_id(receipt.id):
            raise ContractError(f"malformed receipt: {payload[:120]!r}")
        return receipt


@dataclass(frozen=True)
class SpooledNotice:
    """The forwarder's word to the detector, published at QoS 1 on `<prefix>/<node>/spooled`
    after the faces are committed (fsynced) to its spool: the detector may drop them from its
    journal. Payload: `{"ids": [...]}` as JSON."""

    ids: tuple[str, ...]

    def encode(self) -> bytes:
        return json.dumps({"ids": list(self.ids)}, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, payload: bytes) -> SpooledNotice:
        try:
            ids = json.loads(payload)["ids"]
        except (ValueError, TypeError, KeyError) as exc:
            raise ContractError(f"malformed spooled notice: {exc}") from None
        if not isinstance(ids, list) or not all(
            isinstance(i, str) and valid_face_id(i) for i in ids
        ):
            raise ContractError(f"malformed spooled notice: {payload[:120]!r}")
        return cls(tuple(ids))


# --- the status heartbeat ------------------------------------------------------------------

_Fields = TypeVar("_Fields", bound="ServiceFigures")


def _decoded(annotation: str, value: Any) -> Any:
    """`value` as the type a field is annotated with, or None when it is not one."""
    kind = annotation.replace(" | None", "")
    if isinstance(value, bool):
        return value if kind == "bool" else None
    if kind == "int":
        return value if isinstance(value, int) else None
    if kind == "float":
        return float(value) if isinstance(value, (int, float)) else None
    if kind == "str":
        return value if isinstance(value, str) else None
    if kind == "dict[str, int]" and isinstance(value, dict):
        return {
            str(k): n for k, n in value.items() if isinstance(n, int) and not isinstance(n, bool)
        }
    return None


@dataclass(frozen=True)
class ServiceFigures:
    """What a service counts, sent flat beside the heartbeat's envelope fields.

    Every figure is optional: a heartbeat from another release of the fleet (a rollout runs
    mixed versions) may lack one, and None says "not reported", not zero. Unknown keys and
    values of the wrong type are ignored.
    """

    service: ClassVar[str] = ""
    #: failures the service counted (every service has them; what counts is its own)
    errors: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }

    @classmethod
    def from_json(cls: type[_Fields], body: Mapping[str, Any]) -> _Fields:
        found = {f.name: _decoded(str(f.type), body.get(f.name)) for f in fields(cls)}
        return cls(**{name: value for name, value in found.items() if value is not None})


@dataclass(frozen=True)
class DetectorFigures(ServiceFigures):
    service: ClassVar[str] = "detector"
    #: frames per second processed over the last few seconds
    fps: float | None = None
    frames: int | None = None
    faces_detected: int | None = None
    tracks_active: int | None = None
    published: int | None = None
    published_bytes: int | None = None
    #: faces dropped because the publish queue was full
    dropped: int | None = None
    unacked: int | None = None
    #: tracks the quality gate never published, by reason
    held_back: dict[str, int] | None = None
    merged: int | None = None
    #: open, reopening, lost or ended
    camera: str | None = None
    camera_error: str | None = None
    camera_reopens: int | None = None
    frames_dropped: int | None = None
    source: str | None = None
    backend: str | None = None
    #: faces in the journal the forwarder has not yet confirmed, and the oldest one's age
    journal_pending: int | None = None
    journal_oldest_age_s: float | None = None
    #: faces published again because the forwarder's confirmation was late, or after a restart
    journal_resent: int | None = None
    #: faces the full journal could not take (published without the guarantee)
    journal_overflow: int | None = None
    #: torn records found in the journal at start (writes cut by a crash; never published)
    journal_corrupt: int | None = None


@dataclass(frozen=True)
class LoggerFigures(ServiceFigures):
    service: ClassVar[str] = "logger"
    events: int | None = None
    faces: int | None = None
    status_changes: int | None = None
    audit_path: str | None = None


@dataclass(frozen=True)
class ForwarderFigures(ServiceFigures):
    service: ClassVar[str] = "forwarder"
    spool_depth: int | None = None
    spool_bytes: int | None = None
    spool_oldest_age_s: float | None = None
    #: messages sent up: faces and the edge services' relayed heartbeats
    forwarded: int | None = None
    forwarded_faces: int | None = None
    uplink_bytes: int | None = None
    uplink_face_bytes: int | None = None
    inflight: int | None = None
    unconfirmed: int | None = None
    confirmed: int | None = None
    resent: int | None = None
    rejected_by_processor: int | None = None
    dropped: int | None = None
    #: faces offered again while still spooled (the detector's journal replays), kept once
    spool_duplicates: int | None = None
    expired: int | None = None
    rejected: int | None = None
    edge_connected: bool | None = None
    cloud_connected: bool | None = None


@dataclass(frozen=True)
class ProcessorFigures(ServiceFigures):
    service: ClassVar[str] = "processor"
    received: int | None = None
    stored: int | None = None
    duplicates: int | None = None
    dead_lettered: int | None = None
    storage_errors: int | None = None
    inflight: int | None = None
    #: where faces go (bucket or directory)
    storage: str | None = None


FIGURES: dict[str, type[ServiceFigures]] = {
    kind.service: kind
    for kind in (DetectorFigures, LoggerFigures, ForwarderFigures, ProcessorFigures)
}


#: Envelope fields a heartbeat carries only when it has them (older releases send none).
_OPTIONAL_ENVELOPE = ("instance", "cert_expires", "taken_over", "taken_over_at")


@dataclass(frozen=True)
class Status:
    """One retained heartbeat on `<prefix>/<node>/status/<service>` (JSON, figures flat beside
    the envelope). `service` may carry an instance suffix (`processor-2`); its figures are
    those of the service before the dash."""

    state: str
    service: str
    node: str
    version: str | None = None
    ts: str | None = None
    interval_s: float | None = None
    uptime_s: float | None = None
    platform: dict[str, str] = field(default_factory=dict)
    figures: ServiceFigures | None = None
    #: this process (boot id and pid): changes on a restart, alternates when two devices share
    #: one identity (a cloned SD card)
    instance: str | None = None
    #: when the service's own client certificate expires (UTC timestamp; none without one)
    cert_expires: str | None = None
    #: times the broker handed this service's session to another client with its client id
    #: (MQTT v5 reason 0x8E, "session taken over"), and the last time
    taken_over: int | None = None
    taken_over_at: str | None = None
    v: str = STATUS_VERSION

    def encode(self) -> bytes:
        body: dict[str, Any] = {
            "v": self.v,
            "state": self.state,
            "service": self.service,
            "node": self.node,
            "version": self.version,
            "ts": self.ts,
            "interval_s": self.interval_s,
        }
        if self.uptime_s is not None:
            body["uptime_s"] = self.uptime_s
        if self.platform:
            body["platform"] = self.platform
        for key in _OPTIONAL_ENVELOPE:
            if getattr(self, key) is not None:
                body[key] = getattr(self, key)
        if self.figures is not None:
            body.update(self.figures.to_json())
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, payload: bytes, node: str = "", service: str = "") -> Status:
        """A heartbeat from its JSON; ValueError with a one-line reason when the envelope is
        malformed. `node` and `service` (the topic's) stand in for missing ones."""
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed status JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ValueError("malformed status: not a JSON object")
        state = body.get("state")
        if state not in STATES:
            raise ValueError(f"malformed status: unknown state {state!r}")
        interval = body.get("interval_s")
        if interval is not None and (
            isinstance(interval, bool) or not (isinstance(interval, (int, float)) and interval > 0)
        ):
            raise ValueError(f"malformed interval_s: {interval!r}")
        node, service = body.get("node", node), body.get("service", service)
        if not isinstance(node, str) or not isinstance(service, str):
            raise ValueError("malformed status: node and service must be strings")
        platform = body.get("platform")
        figures = FIGURES.get(service.partition("-")[0])
        return cls(
            state=state,
            service=service,
            node=node,
            version=_decoded("str", body.get("version")),
            ts=_decoded("str", body.get("ts")),
            interval_s=_decoded("float", interval),
            uptime_s=_decoded("float", body.get("uptime_s")),
            platform=(
                {k: str(v) for k, v in platform.items() if v} if isinstance(platform, dict) else {}
            ),
            figures=figures.from_json(body) if figures else None,
            instance=_decoded("str", body.get("instance")),
            cert_expires=_decoded("str", body.get("cert_expires")),
            taken_over=_decoded("int", body.get("taken_over")),
            taken_over_at=_decoded("str", body.get("taken_over_at")),
            v=str(body.get("v", STATUS_VERSION)),
        )


def parse_status(node: str, service: str, payload: bytes, max_bytes: int) -> Status:
    """A heartbeat payload received on the status topic of (node, service), checked against
    the contract; ValueError with a one-line reason."""
    if len(payload) > max_bytes:
        raise ValueError(f"status too large ({len(payload)} bytes)")
    if not payload:
        # an empty retained message clears the topic: the service was removed
        raise ValueError("empty status (retained status cleared)")
    status = Status.decode(payload, node, service)
    for key, expected in (("node", node), ("service", service)):
        if getattr(status, key) != expected:
            raise ValueError(f"status {key} {getattr(status, key)!r} does not match the topic")
    return status


def platform_summary(statuses: Iterable[Status]) -> str:
    """One line for the platform of a node from its services' heartbeats: `aarch64, Debian GNU/Linux
    11 (bullseye), Python 3.9.2, OpenCV 4.6.0` (OpenCV from whichever service loaded it)."""
    merged: dict[str, str] = {}
    for status in statuses:
        merged.update({k: v for k, v in status.platform.items() if k in PLATFORM_FIELDS})
    labels = {"arch": "", "os": "", "python": "Python ", "opencv": "OpenCV "}
    return ", ".join(labels[key] + merged[key] for key in PLATFORM_FIELDS if key in merged)


def parse_face_properties(
    properties: dict[str, str], content_type: str | None, payload: bytes
) -> FaceMeta:
    """Check the properties of a faces message and build its FaceMeta.

    Does not decode the image (see facefleet.processor.validation for that).
    """
    missing = [name for name in FACE_PROPERTIES if name not in properties]
    if missing:
        raise ContractError(f"missing properties: {', '.join(missing)}")
    if content_type not in EXTENSIONS:
        raise ContractError(f"unsupported content type: {content_type!r}")
    if properties["v"] != SCHEMA_VERSION:
        raise ContractError(f"unsupported schema version: {properties['v']!r}")
    face_id = face_id_of(properties)
    if face_id is None:
        raise ContractError(f"malformed id: {properties['id']!r}")
    if not valid_node(properties["node"]):
        raise ContractError(f"malformed node: {properties['node']!r}")
    try:
        parse_timestamp(properties["ts"])
    except ValueError as exc:
        raise ContractError(f"malformed ts: {exc}") from None
    try:
        track = int(properties["track"])
        box_parts = [int(n) for n in properties["box"].split(",")]
        score = float(properties["score"])
        frame_parts = [int(n) for n in properties["frame"].lower().split("x")]
    except ValueError:
        raise ContractError("malformed track, box, score or frame") from None
    if len(box_parts) != 4 or box_parts[2] <= 0 or box_parts[3] <= 0:
        raise ContractError(f"malformed box: {properties['box']!r}")
    if len(frame_parts) != 2 or min(frame_parts) <= 0:
        raise ContractError(f"malformed frame: {properties['frame']!r}")
    if math.isnan(score) or not 0.0 <= score <= 1.0:
        raise ContractError(f"score out of range: {properties['score']!r}")
    if not re.fullmatch(r"[0-9a-f]{64}", properties["sha256"]):
        raise ContractError("malformed sha256")
    if hashlib.sha256(payload).hexdigest() != properties["sha256"]:
        raise ContractError("sha256 does not match the payload")
    if not properties["detector"] or len(properties["detector"]) > 64:
        raise ContractError("malformed detector")
    return FaceMeta(
        id=face_id,
        node=properties["node"],
        track=track,
        ts=properties["ts"],
        box=(box_parts[0], box_parts[1], box_parts[2], box_parts[3]),
        score=score,
        frame=(frame_parts[0], frame_parts[1]),
        detector=properties["detector"],
        sha256=properties["sha256"],
        content_type=content_type,
        v=properties["v"],
    )


def storage_key(meta: FaceMeta) -> str:
    """faces/<node>/<YYYY>/<MM>/<DD>/<HH>/<ts>_<id>.<ext>: derived from the face id and its
    capture time only, so a redelivered message lands on the same key."""
    when = parse_timestamp(meta.ts)
    return f"faces/{meta.node}/{when:%Y/%m/%d/%H}/{meta.ts}_{meta.id}.{meta.extension}"


FACES_PREFIX = "faces/"
DEAD_LETTER_PREFIX = "deadletter/"
#: Records of deletions (who deleted which faces when); retention never touches them.
DELETIONS_PREFIX = "deletions/"
#: Where a processor writes its start probe (it checks that the store takes a write).
PROBE_PREFIX = "probe/"

_KEY_RE = re.compile(
    r"^faces/(?P<node>[^/]+)/\d{4}/\d{2}/\d{2}/\d{2}/"
    r"(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z)_(?P<id>[A-Za-z0-9_-]{1,64})"
    r"\.(?P<ext>jpg|png)$"
)


@dataclass(frozen=True)
class FaceKey:
    """What a storage key says about its face (the inverse of `storage_key`)."""

    key: str
    node: str
    ts: str
    id: str
    extension: str

    @property
    def captured(self) -> datetime:
        return parse_timestamp(self.ts)


def parse_storage_key(key: str) -> FaceKey | None:
    """The face a key of the contract's layout names; None for any other key (sidecars,
    dead letters, temporary files)."""
    match = _KEY_RE.match(key)
    if not match or not valid_node(match["node"]):
        return None
    return FaceKey(key, match["node"], match["ts"], match["id"], match["ext"])
