"""The forwarder's durable queue: SQLite in WAL mode with synchronous=FULL, one row per message,
the payloads in append-only segment files beside it (segments.py), each flushed to the disk
before the transaction of the rows that point at it commits.

A message is acknowledged to the edge broker only after the transaction that holds it has
committed, and deleted only after the cloud side confirmed it (a processor's receipt for faces,
the cloud broker's PUBACK for the rest), so kill -9 or a power cut at any moment loses nothing
(at worst a message is sent twice; keys derived from the face id make the second copy land on
the same object). A face is spooled once: a second copy of a face id still in the spool (the
detector publishes a face again until the forwarder confirms it, the edge broker redelivers
what was not acknowledged) is not stored again, only counted. The spool is bounded by payload
bytes; what the `when_full` policy drops is counted in a table that survives restarts.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facefleet.forwarder.segments import Location, Segments

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    retain INTEGER NOT NULL,
    properties TEXT NOT NULL,
    size INTEGER NOT NULL,
    received REAL NOT NULL,
    face_id TEXT,
    segment INTEGER NOT NULL,
    segment_offset INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS queue_face_id ON queue (face_id) WHERE face_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
#: The table of releases before payload segments (each payload inline in its row). Their rows
#: move into `queue` when the spool is opened; an older release, after a rollback, keeps
#: using this table and never sees the rows of `queue` (it would send them without their
#: images), which wait there for the next upgrade.
LEGACY_TABLE = "messages"


#: SQLite's default page: rows hold no payload (segments.py), so a commit writes a few small
#: pages. Spools from before payload segments used 64 KB pages to hold a face in one page; a
#: spool made with another page size is converted when it is opened empty.
PAGE_SIZE = 4096
#: WAL pages between automatic checkpoints (64 MB).
WAL_CHECKPOINT_PAGES = 1024


#: What `after` and `get_many` read of a row (see `_row`).
COLUMNS = "seq, topic, retain, properties, segment, segment_offset, size"


def _seq_chunks(seqs: Sequence[int]) -> Iterator[tuple[Sequence[int], str]]:
    """`seqs` in chunks of 500 (old SQLite allows 999 parameters), each with its
    `WHERE seq IN (?, ...)` clause (placeholders only)."""
    for start in range(0, len(seqs), 500):
        chunk = seqs[start : start + 500]
        yield chunk, f"WHERE seq IN ({','.join('?' * len(chunk))})"


@dataclass(frozen=True)
class Incoming:
    """A message to spool: topic, payload and the MQTT v5 properties to send on."""

    topic: str
    payload: bytes
    retain: bool
    properties: dict[str, Any]
    #: a face's id: at most one message with it is spooled at a time
    face_id: str | None = None


@dataclass(frozen=True)
class Spooled:
    seq: int
    topic: str
    payload: bytes
    retain: bool
    properties: dict[str, Any]


class Spool:
    """Thread-safe: one connection guarded by a lock (SQLite serialises writers anyway)."""

    def __init__(
        self,
        path: str | Path,
        max_bytes: int,
        when_full: str,
        secure_delete: bool = True,
        scrub_interval_s: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self.secure_delete = secure_delete
        self.scrub_interval_s = scrub_interval_s
        self._unscrubbed = False
        self._scrubbed_at = 0.0
        self.max_bytes = max_bytes
        self.when_full = when_full
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # for a new spool
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # Faces are personal data: a deleted (delivered, expired, evicted) face must not stay
        # readable. Its image is zeroed in its segment (segments.py); secure_delete=ON zeroes
        # the freed pages of its row (its metadata); the WAL still holds the frames that wrote
        # the row, so `scrub` truncates it, at most every `scrub_interval_s` (a truncation per
        # delete batch cost four fifths of the throughput when the images were in the rows).
        # secure_delete=False is the former FAST mode (the benchmark's baseline): freed pages
        # keep old bytes until new messages reuse them.
        self._db.execute(f"PRAGMA secure_delete={'ON' if secure_delete else 'FAST'}")
        # Checkpoint every 64 MB of WAL: a queue rewrites the same few pages, so rare
        # checkpoints copy far fewer bytes into the database file.
        self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        self._db.execute(f"PRAGMA journal_size_limit={WAL_CHECKPOINT_PAGES * PAGE_SIZE}")
        self._db.executescript(SCHEMA)
        self.duplicates = 0  # faces offered again while still spooled (since this start)
        self._recount()
        legacy = self._legacy_columns()
        if (
            not self._depth
            and not (legacy and self._db.execute(f"SELECT 1 FROM {LEGACY_TABLE}").fetchone())  # noqa: S608
            and self._db.execute("PRAGMA page_size").fetchone()[0] != PAGE_SIZE
        ):
            self._convert_page_size()
        self.dropped = self._counter("dropped")
        self.expired = self._counter("expired")
        #: payloads whose rows the open transaction deletes, and those whose rows a commit
        #: without fsync deleted: released (zeroed) once the delete is on the disk, so that a
        #: power cut cannot bring back a row whose payload is gone
        self._released: list[Location] = []
        self._unsynced: list[Location] = []
        self._segments = Segments(self.path.with_suffix(".payloads"), secure_delete)
        self._open_segments()
        # Reads get their own connection: in WAL mode they see every committed row without
        # waiting for the writer's fsync, so the sender keeps publishing while a batch commits.
        self._read_lock = threading.Lock()
        self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if legacy:
            self._adopt_legacy(legacy)
        #: the highest sequence number spooled so far (0: none yet)
        self._last_seq = int(
            self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM queue").fetchone()[0]
        )

    def _legacy_columns(self) -> set[str]:
        """The columns of an older release's table (empty: there is none)."""
        return {row[1] for row in self._db.execute(f"PRAGMA table_info({LEGACY_TABLE})")}

    def _adopt_legacy(self, columns: set[str]) -> None:
        """Move the rows of LEGACY_TABLE into the queue, oldest first, their payloads into
        segments (a face already queued is counted as a duplicate, not queued twice)."""
        face_id = "face_id" if "face_id" in columns else "NULL"
        count = self._db.execute(f"SELECT COUNT(*) FROM {LEGACY_TABLE}").fetchone()[0]  # noqa: S608
        if count:  # every payload is copied once: it takes a while for a full spool
            log.info("spool: moving %d message(s) of an older release into the queue", count)
        while rows := self._db.execute(
            f"SELECT seq, topic, payload, retain, properties, received, {face_id}"  # noqa: S608
            f" FROM {LEGACY_TABLE} ORDER BY seq LIMIT 64"
        ).fetchall():
            writes: list[tuple[int, int, bytes]] = []
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for _, topic, payload, retain, properties, received, face in rows:
                    if self._queued(face):
                        continue
                    data = bytes(payload)
                    writes.append(self._insert(topic, data, retain, properties, received, face)[1])
                for chunk, where in _seq_chunks([row[0] for row in rows]):
                    self._db.execute(f"DELETE FROM {LEGACY_TABLE} {where}", chunk)  # noqa: S608
                self._segments.write(writes)
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                self._segments.discard(writes)
                raise
            self._committed(segment for segment, _, _ in writes)

    def _queued(self, face_id: str | None) -> bool:
        """Whether a face with this id is queued (counted as a duplicate if so)."""
        if face_id is None:
            return False
        if self._db.execute("SELECT 1 FROM queue WHERE face_id = ?", (face_id,)).fetchone():
            self.duplicates += 1
            return True
        return False

    def _insert(
        self,
        topic: str,
        payload: bytes,
        retain: bool,
        properties: str,
        received: float,
        face_id: str | None,
    ) -> tuple[int, tuple[int, int, bytes]]:
        """A row for a payload placed in the current segment (inside the caller's
        transaction); returns its sequence number and the write it needs before the commit."""
        segment, offset = self._segments.place(len(payload))
        cursor = self._db.execute(
            "INSERT INTO queue (topic, retain, properties, size, received, face_id, segment,"
            " segment_offset) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (topic, int(retain), properties, len(payload), received, face_id, segment, offset),
        )
        self._depth += 1
        self._bytes += len(payload)
        assert cursor.lastrowid is not None
        return cursor.lastrowid, (segment, offset, payload)

    def _convert_page_size(self) -> None:
        """Rebuild an empty spool made with another page size (VACUUM keeps the counters)."""
        self._db.execute("PRAGMA journal_mode=DELETE")  # WAL mode cannot change page size
        self._db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        self._db.execute("VACUUM")
        self._db.execute("PRAGMA journal_mode=WAL")
        log.info("spool %s converted to %d-byte pages", self.path, PAGE_SIZE)

    def _open_segments(self) -> None:
        """Tidy the payload segments by what the rows say; rows whose segment file is gone
        (a disk repaired, a file removed by hand) cannot be sent: deleted, counted as dropped."""
        live: dict[int, list[tuple[int, int]]] = {}
        rows = self._db.execute("SELECT seq, segment, segment_offset, size FROM queue").fetchall()
        on_disk = set(self._segments.existing())
        lost = [seq for seq, segment, _, _ in rows if segment not in on_disk]
        for _, segment, offset, size in rows:
            if segment in on_disk:
                live.setdefault(segment, []).append((offset, size))
        if lost:
            self._db.execute("BEGIN IMMEDIATE")
            self._delete_rows(lost)
            self._add_to_counter("dropped", len(lost))
            self._db.execute("COMMIT")
            self._released.clear()
            self.dropped += len(lost)
            log.error("spool: %d message(s) lost with their payload files: dropped", len(lost))
        self._segments.tidy(live)

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def last_seq(self) -> int:
        """The highest sequence number spooled by this or an earlier run (0: none)."""
        return self._last_seq

    def oldest_age_s(self) -> float:
        with self._read_lock:
            # the first row in spool order, not MIN(received), which reads every row
            row = self._reader.execute("SELECT received FROM queue ORDER BY seq LIMIT 1").fetchone()
        return round(time.time() - row[0], 1) if row and row[0] is not None else 0.0

    def append_many(
        self,
        messages: Iterable[Incoming],
        delete: Sequence[int] = (),
        stored: list[Spooled] | None = None,
    ) -> list[bool]:
        """Spool messages in one transaction (one fsync), deleting the confirmed messages
        `delete` in the same transaction; returns, per message, whether it was kept (False:
        dropped by the drop-newest policy or larger than the whole spool; a face whose id is
        already spooled counts as kept, and is not stored twice). Each message stored now is
        added to `stored`, if given, as `after` will read it back (once committed)."""
        kept: list[bool] = []
        inserted: list[Spooled] = []
        writes: list[tuple[int, int, bytes]] = []
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._delete_rows(delete)
                dropped = 0
                for message in messages:
                    if self._queued(message.face_id):
                        kept.append(True)
                        continue
                    size = len(message.payload)
                    if size > self.max_bytes:
                        dropped += 1
                        kept.append(False)
                        continue
                    if self._bytes + size > self.max_bytes:
                        if self.when_full == "drop-newest":
                            dropped += 1
                            kept.append(False)
                            continue
                        dropped += self._evict_oldest(self._bytes + size - self.max_bytes)
                    seq, write = self._insert(
                        message.topic,
                        message.payload,
                        message.retain,
                        json.dumps(message.properties),
                        now,
                        message.face_id,
                    )
                    writes.append(write)
                    kept.append(True)
                    inserted.append(
                        Spooled(
                            seq, message.topic, message.payload, message.retain, message.properties
                        )
                    )
                self._add_to_counter("dropped", dropped)
                self._segments.write(writes)  # on the disk before the rows that point at them
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                self._segments.discard(writes)
                raise
            self._committed(segment for segment, _, _ in writes)
            if inserted:
                self._last_seq = inserted[-1].seq
            if stored is not None:
                stored += inserted
            if delete or dropped:
                self._deleted()
            if dropped:
                self.dropped += dropped
                log.warning(
                    "spool full (%d bytes): %s dropped %d message(s), %d dropped in total",
                    self.max_bytes,
                    self.when_full,
                    dropped,
                    self.dropped,
                )
        return kept

    def expire_faces(self, received_before: float) -> int:
        """Delete faces (messages on a `.../faces` topic) spooled before `received_before`
        (Unix time): the retention of personal data on the device. Counted in `expired`,
        which survives restarts like `dropped`; returns how many went now."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seqs = [
                    int(row[0])
                    for row in self._db.execute(
                        "SELECT seq FROM queue WHERE received < ? AND topic LIKE '%/faces'"
                        " ORDER BY seq",
                        (received_before,),
                    )
                ]
                removed = self._delete_rows(seqs)
                self._add_to_counter("expired", removed)
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            self._committed()
            if removed:
                self.expired += removed
                self._deleted()
        return removed

    def _add_to_counter(self, name: str, amount: int) -> None:
        """Inside the caller's transaction: counters survive restarts with the spool."""
        if amount:
            self._db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?)"
                " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (name, amount),
            )

    def _evict_oldest(self, need: int) -> int:
        freed = evicted = 0
        while freed < need:
            rows = self._db.execute(
                "SELECT seq, size, segment, segment_offset FROM queue ORDER BY seq LIMIT 64"
            ).fetchall()
            if not rows:
                break
            for seq, size, segment, offset in rows:
                if freed >= need:
                    break
                self._db.execute("DELETE FROM queue WHERE seq = ?", (seq,))
                self._released.append((segment, offset, size))
                freed += size
                evicted += 1
        self._depth -= evicted
        self._bytes -= freed
        return evicted

    def _rollback(self) -> None:
        self._db.execute("ROLLBACK")
        self._released.clear()
        self._recount()

    def _committed(self, added: Iterable[int] = (), durable: bool = True) -> None:
        """After a commit: the segments learn which payloads rows now point at and, once the
        commit is durable (with it, every earlier one: the WAL is written in order), which
        they no longer do (zeroed under the read lock: a reader that found a row reads its
        payload before the zeroing, a reader after it no longer finds the row)."""
        self._unsynced += self._released
        self._released.clear()
        released = self._unsynced if durable else []
        with self._read_lock:
            self._segments.committed(added, released)
        if durable:
            self._unsynced = []

    def _recount(self) -> None:
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM queue").fetchone()
        self._depth, self._bytes = int(row[0]), int(row[1])

    def after(self, seq: int, limit: int) -> list[Spooled]:
        """Up to `limit` spooled messages with a sequence number above `seq`, oldest first."""
        with self._read_lock:
            rows = self._reader.execute(
                f"SELECT {COLUMNS} FROM queue WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608
                (seq, limit),
            ).fetchall()
            return [self._row(r) for r in rows]

    def get_many(self, seqs: list[int]) -> list[Spooled]:
        """The messages with these sequence numbers that are still spooled, oldest first."""
        found: list[Spooled] = []
        with self._read_lock:
            for chunk, where in _seq_chunks(seqs):
                rows = self._reader.execute(
                    f"SELECT {COLUMNS} FROM queue {where}",  # noqa: S608
                    chunk,
                ).fetchall()
                found += [self._row(r) for r in rows]
        return sorted(found, key=lambda m: m.seq)

    def _row(self, r: tuple[Any, ...]) -> Spooled:
        """A row of COLUMNS with its payload (under the read lock)."""
        seq, topic, retain, properties, segment, offset, size = r
        payload = self._segments.read((segment, offset, size))
        return Spooled(seq, topic, payload, bool(retain), json.loads(properties))

    def delete_many(self, seqs: Iterable[int]) -> int:
        """Forget messages the cloud side confirmed; returns how many were still spooled."""
        seqs = list(seqs)
        if not seqs:
            return 0
        with self._lock:
            # A delete need not be on disk before we go on: if a power cut undoes it, the
            # message is sent again and lands on the same key. Skipping its fsync keeps the
            # sender from stalling (and the writer from waiting on the lock) on every PUBACK
            # batch; the next append's FULL commit makes it durable anyway (WAL is in order).
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                removed = self._delete_locked(seqs)
            finally:
                self._db.execute("PRAGMA synchronous=FULL")
            if removed:
                self._deleted()
            return removed

    def _deleted(self) -> None:
        """Rows were deleted (under the write lock): scrub now if the last scrub is old enough."""
        self._unscrubbed = self.secure_delete
        self._scrub_locked(force=False)

    def scrub(self, force: bool = False) -> None:
        """Truncate the WAL if deleted messages may still be in it and the last truncation is
        `scrub_interval_s` old (or `force`). The forwarder's writer calls this whenever it is
        idle, so deleted bytes stay in the WAL at most about that long."""
        with self._lock:
            self._scrub_locked(force)

    def _scrub_locked(self, force: bool) -> None:
        """Copy the WAL into the database (where secure_delete zeroed the freed pages) and
        truncate it, so no frame of a deleted message stays in the WAL file. A reader in the
        middle of a query makes SQLite skip the truncation; it is tried again next time."""
        if not self._unscrubbed:
            return
        now = time.monotonic()
        if not force and now - self._scrubbed_at < self.scrub_interval_s:
            return
        busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        self._scrubbed_at = now
        self._unscrubbed = bool(busy)
        if not busy:  # the checkpoint synced the database: every delete is on the disk
            self._committed()

    def _delete_locked(self, seqs: list[int]) -> int:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            removed = self._delete_rows(seqs)
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._committed(durable=False)
        return removed

    def _delete_rows(self, seqs: Sequence[int]) -> int:
        """DELETE inside the caller's transaction (the caller recounts if it rolls back)."""
        removed = freed = 0
        for chunk, where in _seq_chunks(seqs):
            found = self._db.execute(
                f"SELECT size, segment, segment_offset FROM queue {where}",  # noqa: S608
                chunk,
            ).fetchall()
            self._db.execute(f"DELETE FROM queue {where}", chunk)  # noqa: S608
            removed += len(found)
            for size, segment, offset in found:
                freed += size
                self._released.append((segment, offset, size))
        self._depth -= removed
        self._bytes -= freed
        return removed

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._scrub_locked(force=True)
            self._db.close()
            self._segments.close()


class Recent:
    """What the writer has just spooled, handed to the sender in memory, so that the sender
    does not read back each message it was given a moment ago (a query, a JSON parse and a
    payload copy per message). The spool stays the truth: everything up to `read_up_to` (what
    an earlier run left, what fell off this bounded queue, what an eviction or expiry may have
    removed meanwhile) the sender reads from it, in the same sequence order.

    Thread-safe: the writer calls `add` and `resync`, the sender `take`."""

    def __init__(self, limit: int, read_up_to: int) -> None:
        self._lock = threading.Lock()
        self._rows: deque[Spooled] = deque()
        self._limit = limit
        self._read_up_to = read_up_to

    def add(self, rows: Iterable[Spooled]) -> None:
        """Committed rows, in sequence order; past `limit`, the oldest are left to the spool."""
        with self._lock:
            self._rows.extend(rows)
            while len(self._rows) > self._limit:
                self._read_up_to = self._rows.popleft().seq

    def resync(self, last_seq: int) -> None:
        """Rows were removed from the spool behind the sender's back (evicted when full,
        expired): up to `last_seq`, the spool says what is still there."""
        with self._lock:
            self._rows.clear()
            self._read_up_to = max(self._read_up_to, last_seq)

    def take(self, after: int, limit: int) -> list[Spooled] | None:
        """Up to `limit` rows with a sequence number above `after`, oldest first; None when
        the spool must be read instead (rows it holds there are not here)."""
        with self._lock:
            if after < self._read_up_to:
                return None
            while self._rows and self._rows[0].seq <= after:
                self._rows.popleft()
            return [self._rows.popleft() for _ in range(min(limit, len(self._rows)))]
