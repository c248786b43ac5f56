"""The detector's face journal and its record of published face ids.

A face is appended to the journal, and the journal fsynced, before the detector publishes it;
it stays there until the forwarder says the face is in its spool (`SpooledNotice` on the edge
broker), and is published again after a restart, or when that notice is late. From the spool
on, the forwarder keeps the face until a processor's receipt. So a face is on the device's disk
from the moment it is published until it is stored, whichever process dies, or the power.

The journal is a directory of append-only segment files (`00000001.seg`, ...). Each record is a
header (magic, kind, body length, CRC-32 of the body) and a body: a face (JSON metadata, a
newline, the image) or a list of confirmed face ids. A segment is deleted once every face in it
and in every older segment is confirmed, so a confirmation never outlives the face it confirms.
After a crash the last record of a segment may be torn: reading stops there and counts it
(`corrupt`); the torn face was never fsynced, so never published. A new segment is started at
every open, so nothing is ever appended after a torn record.

The record (`published.log`, rotated to `published.log.1` ...) has one line per face the
detector published: `<capture ts>\\t<face id>\\t<journaled|overflow>`. It is what a
reconciliation counts against storage (`reconcile`): the source's own list, not the broker's.
A face is recorded after it is journaled and before it is published; one a crash left
journaled but unrecorded is recorded at the next start (`add_unrecorded`), before its replay.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from facefleet.contract import parse_timestamp

log = logging.getLogger(__name__)

MAGIC = b"FFJ1"
HEADER = struct.Struct("<4sBII")  # magic, kind, body length, crc32(body)
FACE, DONE = 1, 2
SEGMENT_SUFFIX = ".seg"
RECORD_NAME = "published.log"
JOURNALED, OVERFLOW = "journaled", "overflow"


@dataclass(frozen=True)
class JournaledFace:
    """What it takes to publish a face again exactly as the first time (so that it lands on
    the same storage key): its id, content type, MQTT user properties and image."""

    id: str
    ts: str
    content_type: str
    properties: tuple[tuple[str, str], ...]
    payload: bytes

    def encode(self) -> bytes:
        meta = {"id": self.id, "ts": self.ts, "ct": self.content_type}
        head = json.dumps({**meta, "props": self.properties}, separators=(",", ":"))
        return head.encode() + b"\n" + self.payload

    @classmethod
    def decode(cls, body: bytes) -> JournaledFace:
        head, _, payload = body.partition(b"\n")
        meta = json.loads(head)
        props = tuple((str(k), str(v)) for k, v in meta["props"])
        return cls(str(meta["id"]), str(meta["ts"]), str(meta["ct"]), props, payload)


@dataclass
class _Entry:
    """A face not yet confirmed: where its record's body is, and when it was journaled."""

    segment: int
    offset: int
    length: int
    ts: str
    journaled: float


@dataclass
class _Segment:
    size: int = 0
    pending: int = 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """Not thread-safe: the detector's capture thread owns it.

    Bounded by `max_bytes` of segment files: a face that does not fit is not journaled
    (`append` says so; the caller publishes it without the guarantee and counts it).
    """

    def __init__(
        self,
        path: str | Path,
        max_bytes: int,
        segment_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._clock = clock
        self.path.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.pending: OrderedDict[str, _Entry] = OrderedDict()
        self.segments: dict[int, _Segment] = {}
        self.corrupt = 0  # torn or damaged records found when opening
        self.overflow = 0  # faces that did not fit (since this start)
        self._readers: dict[int, int] = {}  # segment -> read-only fd
        for number in sorted(self._segment_numbers()):
            self._scan(number)
        self._active = max(self.segments, default=0) + 1
        self._fd = self._open_segment(self._active)
        self._delete_confirmed()
        if self.pending or self.corrupt:
            log.info(
                "journal %s: %d face(s) not yet confirmed by the forwarder, %d torn record(s)",
                self.path,
                len(self.pending),
                self.corrupt,
            )

    # -- opening ----------------------------------------------------------------------

    def _segment_numbers(self) -> Iterator[int]:
        for entry in self.path.iterdir():
            if entry.suffix == SEGMENT_SUFFIX and entry.stem.isdigit():
                yield int(entry.stem)

    def _segment_path(self, number: int) -> Path:
        return self.path / f"{number:08d}{SEGMENT_SUFFIX}"

    def _scan(self, number: int) -> None:
        data = self._segment_path(number).read_bytes()
        segment = self.segments[number] = _Segment(size=len(data))
        offset = 0
        while offset < len(data):
            record = self._parse(data, offset)
            if record is None:
                self.corrupt += 1
                log.warning(
                    "journal segment %s: damaged record at byte %d (a write torn by a crash); "
                    "the rest of the segment is ignored",
                    self._segment_path(number),
                    offset,
                )
                break
            kind, start, length = record
            body = data[start : start + length]
            if kind == FACE:
                meta = json.loads(body.partition(b"\n")[0])
                face_id = str(meta["id"])
                ts = str(meta["ts"])
                journaled = parse_timestamp(ts).timestamp()  # close enough
                self.pending[face_id] = _Entry(number, start, length, ts, journaled)
                segment.pending += 1
            else:
                for face_id in body.decode().split("\n"):
                    self._settle(face_id)
            offset = start + length

    @staticmethod
    def _parse(data: bytes, offset: int) -> tuple[int, int, int] | None:
        """(kind, body offset, body length) of the record at `offset`, or None if it is torn
        or damaged."""
        if offset + HEADER.size > len(data):
            return None
        magic, kind, length, crc = HEADER.unpack_from(data, offset)
        start = offset + HEADER.size
        if magic != MAGIC or kind not in (FACE, DONE) or start + length > len(data):
            return None
        if zlib.crc32(data[start : start + length]) != crc:
            return None
        try:
            if kind == FACE:
                meta = json.loads(data[start : data.index(b"\n", start)])
                parse_timestamp(str(meta["ts"]))
                str(meta["id"])
            else:
                data[start : start + length].decode()
        except (ValueError, KeyError, TypeError):
            return None
        return kind, start, length

    def _open_segment(self, number: int) -> int:
        fd = os.open(self._segment_path(number), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self.segments.setdefault(number, _Segment())
        _fsync_dir(self.path)
        return fd

    # -- writing ----------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes of segment files."""
        return sum(segment.size for segment in self.segments.values())

    def _write(self, kind: int, body: bytes) -> tuple[int, int]:
        """Append a record to the active segment (starting a new one when it is full);
        returns (segment, body offset). Not synced."""
        record = HEADER.pack(MAGIC, kind, len(body), zlib.crc32(body)) + body
        if self._fd < 0:  # a failed write closed the last one
            self._fd = self._open_segment(self._active)
        segment = self.segments[self._active]
        if segment.size and segment.size + len(record) > self.segment_bytes:
            self._sync()  # what it holds is durable before a newer segment is
            os.close(self._fd)
            self._active += 1
            self._fd = -1
            self._fd = self._open_segment(self._active)
            segment = self.segments[self._active]
        try:
            os.write(self._fd, record)
        except OSError:
            self._abandon_segment()
            raise
        offset = segment.size + HEADER.size
        segment.size += len(record)
        return self._active, offset

    def append(self, faces: Sequence[JournaledFace]) -> list[bool]:
        """Journal faces with one fsync (group commit); per face, whether it was journaled
        (False: the journal is full, counted in `overflow`). Durable when this returns."""
        kept: list[bool] = []
        now = self._clock()
        try:
            for face in faces:
                body = face.encode()
                if self.size + HEADER.size + len(body) > self.max_bytes:
                    self.overflow += 1
                    kept.append(False)
                    continue
                number, offset = self._write(FACE, body)
                self.pending[face.id] = _Entry(number, offset, len(body), face.ts, now)
                self.segments[number].pending += 1
                kept.append(True)
            if any(kept):
                self._sync()
        except OSError as exc:
            # a full or failing disk: none of them counts as journaled (they overflow)
            log.error("journal %s: cannot write (%s); faces go out without it", self.path, exc)
            for face in faces:
                self._settle(face.id)
            self.overflow += len(faces)
            return [False] * len(faces)
        return kept

    def _sync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError:  # what the file holds is unknown now (fsync does not report twice)
            self._abandon_segment()
            raise

    def _abandon_segment(self) -> None:
        """After a failed write: later records go to a new segment, never after what may be
        a torn one."""
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._active += 1
        self._fd = -1  # the next write opens the new segment

    def confirm(self, face_ids: Iterable[str]) -> int:
        """The forwarder has these faces: forget them (unknown ids are ignored); returns how
        many were pending. Not synced: a confirmation lost in a crash only means the face is
        published again, and the forwarder keeps one copy."""
        confirmed = [face_id for face_id in face_ids if self._settle(face_id)]
        if confirmed:
            with contextlib.suppress(OSError):  # lost: they are published again after a restart
                self._write(DONE, "\n".join(confirmed).encode())
            with contextlib.suppress(OSError):  # kept: deleted by the next confirmation
                self._delete_confirmed()
        return len(confirmed)

    def _settle(self, face_id: str) -> bool:
        entry = self.pending.pop(face_id, None)
        if entry is None:
            return False
        self.segments[entry.segment].pending -= 1
        return True

    def _delete_confirmed(self) -> None:
        """Delete the oldest segments while none of their faces is pending."""
        for number in sorted(self.segments):
            if number == self._active or self.segments[number].pending:
                return
            reader = self._readers.pop(number, None)
            if reader is not None:
                os.close(reader)
            self._segment_path(number).unlink()
            del self.segments[number]

    # -- reading ----------------------------------------------------------------------

    def oldest_age_s(self) -> float:
        """How long the oldest unconfirmed face has waited (0 when none)."""
        for entry in self.pending.values():
            return round(max(0.0, self._clock() - entry.journaled), 1)
        return 0.0

    def read(self, face_id: str) -> JournaledFace:
        entry = self.pending[face_id]
        fd = self._readers.get(entry.segment)
        if fd is None:
            fd = self._readers[entry.segment] = os.open(
                self._segment_path(entry.segment), os.O_RDONLY
            )
        return JournaledFace.decode(os.pread(fd, entry.length, entry.offset))

    def close(self) -> None:
        with contextlib.suppress(OSError):  # after a failed write there may be nothing open
            os.fsync(self._fd)
            os.close(self._fd)
        for fd in self._readers.values():
            os.close(fd)
        self._readers.clear()


# --- the record of published face ids ------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """One line of the record."""

    ts: str
    id: str
    journaled: bool


class PublishedRecord:
    """Append-only, fsynced, rotated at `max_bytes` keeping `keep` older files."""

    def __init__(self, directory: str | Path, max_bytes: int, keep: int) -> None:
        self.path = Path(directory) / RECORD_NAME
        self.max_bytes = max_bytes
        self.keep = keep
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._fd = self._open()

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        if os.fstat(fd).st_size:
            # a line torn by a crash must not swallow the next one
            with open(self.path, "rb") as handle:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    os.write(fd, b"\n")
        return fd

    def add(self, entries: Iterable[Published]) -> None:
        lines = "".join(
            f"{e.ts}\t{e.id}\t{JOURNALED if e.journaled else OVERFLOW}\n" for e in entries
        ).encode()
        if not lines:
            return
        if os.fstat(self._fd).st_size + len(lines) > self.max_bytes:
            self._rotate()
        os.write(self._fd, lines)
        os.fsync(self._fd)

    def _rotate(self) -> None:
        os.close(self._fd)
        for n in range(self.keep, 0, -1):
            older = self.path.with_name(f"{RECORD_NAME}.{n}")
            if n == self.keep:
                older.unlink(missing_ok=True)
            else:
                newer = self.path.with_name(f"{RECORD_NAME}.{n + 1}")
                if older.exists():
                    older.replace(newer)
        if self.keep:
            self.path.replace(self.path.with_name(f"{RECORD_NAME}.1"))
        else:
            self.path.unlink()
        self._fd = self._open()
        _fsync_dir(self.path.parent)

    def recorded_ids(self) -> set[str]:
        """The face ids in the current (not rotated) file."""
        return {entry.id for entry in parse_record(self.path.read_text())}

    def add_unrecorded(self, journal: Journal) -> int:
        """Record the pending faces of `journal` that the current file lacks; returns how many.
        A crash between a frame's journal write and its record write leaves faces journaled
        (and published again after the restart) but unrecorded; rotated-away ones come back
        as a second line, which `reconcile` counts once."""
        recorded = self.recorded_ids()
        missing = [
            Published(entry.ts, face_id, True)
            for face_id, entry in journal.pending.items()
            if face_id not in recorded
        ]
        self.add(missing)
        return len(missing)

    def close(self) -> None:
        os.close(self._fd)


def record_files(directory: str | Path) -> list[Path]:
    """The record's files, oldest first."""
    base = Path(directory) / RECORD_NAME
    rotated = sorted(
        (p for p in base.parent.glob(f"{RECORD_NAME}.*") if p.suffix[1:].isdigit()),
        key=lambda p: -int(p.suffix[1:]),
    )
    return [*rotated, *([base] if base.exists() else [])]


def parse_record(text: str) -> list[Published]:
    """The lines of a record file; a torn or malformed line is skipped."""
    found: list[Published] = []
    for line in text.split("\n"):
        parts = line.split("\t")
        if len(parts) == 3 and parts[2] in (JOURNALED, OVERFLOW) and parts[1]:
            found.append(Published(parts[0], parts[1], parts[2] == JOURNALED))
    return found


def read_record(directory: str | Path) -> list[Published]:
    """Every face id the detector recorded as published, oldest first."""
    return [e for path in record_files(directory) for e in parse_record(path.read_text())]


@dataclass(frozen=True)
class Reconciliation:
    """A detector's record against what storage holds for its node."""

    published: int
    stored: int
    missing: tuple[str, ...]  # recorded, not stored
    missing_overflow: int  # of those, faces the full journal did not cover
    duplicates: tuple[str, ...]  # recorded and stored more than once

    @property
    def ok(self) -> bool:
        return not self.missing and not self.duplicates


def reconcile(record: Sequence[Published], stored_ids: Sequence[str]) -> Reconciliation:
    """Count every recorded face in storage: stored once, missing, or duplicated."""
    counts: dict[str, int] = {}
    for face_id in stored_ids:
        counts[face_id] = counts.get(face_id, 0) + 1
    recorded = {e.id: e for e in record}
    missing = tuple(face_id for face_id in recorded if face_id not in counts)
    return Reconciliation(
        published=len(recorded),
        stored=sum(1 for face_id in recorded if face_id in counts),
        missing=missing,
        missing_overflow=sum(1 for face_id in missing if not recorded[face_id].journaled),
        duplicates=tuple(face_id for face_id in recorded if counts.get(face_id, 0) > 1),
    )
