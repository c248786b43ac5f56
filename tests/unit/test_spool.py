from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

import pytest

from facefleet.forwarder import segments
from facefleet.forwarder.spool import PAGE_SIZE, Incoming, Recent, Spool, Spooled

#: The spool's tables in releases before payload segments (before face ids, too).
LEGACY_SCHEMA = """
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL,
    properties TEXT NOT NULL,
    size INTEGER NOT NULL,
    received REAL NOT NULL
);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def message(n: int, size: int = 100) -> Incoming:
    return Incoming(
        "facefleet/e/faces",
        bytes([n % 256]) * size,
        False,
        {"ContentType": "image/jpeg", "UserProperty": [["id", str(n)]]},
    )


def test_messages_survive_reopening_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", 1_000_000, "drop-oldest")
    assert spool.append_many(message(i) for i in range(10)) == [True] * 10
    spool.close()
    reopened = Spool(tmp_path / "s.sqlite", 1_000_000, "drop-oldest")
    rows = reopened.after(0, 100)
    assert [r.properties["UserProperty"][0][1] for r in rows] == [str(i) for i in range(10)]
    assert (reopened.depth, reopened.bytes) == (10, 1000)
    assert reopened.delete_many([rows[0].seq, rows[1].seq, 999]) == 2
    assert reopened.depth == 8
    assert reopened.after(rows[5].seq, 2)[0].seq == rows[6].seq


def test_drop_oldest_keeps_the_newest_and_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", 1000, "drop-oldest")
    spool.append_many(message(i) for i in range(15))
    assert spool.bytes <= 1000
    ids = [r.properties["UserProperty"][0][1] for r in spool.after(0, 100)]
    assert ids == [str(i) for i in range(5, 15)]
    assert spool.dropped == 5
    spool.close()
    assert Spool(tmp_path / "s.sqlite", 1000, "drop-oldest").dropped == 5  # persisted


def test_drop_newest_refuses_and_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", 1000, "drop-newest")
    kept = spool.append_many(message(i) for i in range(12))
    assert kept == [True] * 10 + [False] * 2
    assert spool.dropped == 2
    assert spool.append_many([message(99, size=5000)]) == [False]  # larger than the spool
    assert spool.dropped == 3


def page_size(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("PRAGMA page_size").fetchone()[0])


def old_spool(path: Path, messages: int, dropped: int) -> None:
    """A spool as forwarders before payload segments made it: 64 KB pages, WAL, each payload
    inline in its row."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA page_size=65536")
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(LEGACY_SCHEMA)
        db.execute("INSERT INTO counters VALUES ('dropped', ?)", (dropped,))
        for n in range(messages):
            db.execute(
                "INSERT INTO messages (topic, payload, retain, properties, size, received)"
                " VALUES ('facefleet/e/faces', ?, 0, '{}', 40000, 0)",
                (bytes([n]) * 40000,),
            )


def test_a_new_spool_has_small_pages_and_its_payloads_in_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", 10_000_000, "drop-oldest")
    spool.append_many([message(1, size=40_000)])
    spool.close()
    assert page_size(tmp_path / "s.sqlite") == PAGE_SIZE
    assert (tmp_path / "s.sqlite").stat().st_size < 40_000
    assert segment_files(tmp_path / "s.sqlite") == ["00000001.seg"]


def test_an_old_spool_is_converted_when_empty_and_kept_as_it_is_otherwise(
    tmp_path: Path,
) -> None:
    old_spool(tmp_path / "empty.sqlite", messages=0, dropped=3)
    spool = Spool(tmp_path / "empty.sqlite", 10_000_000, "drop-oldest")
    assert spool.dropped == 3
    spool.append_many([message(1)])
    spool.close()
    assert page_size(tmp_path / "empty.sqlite") == PAGE_SIZE

    old_spool(tmp_path / "full.sqlite", messages=5, dropped=0)
    spool = Spool(tmp_path / "full.sqlite", 10_000_000, "drop-oldest")
    spool.append_many([message(9, size=40_000)])  # after the rows moved into the queue
    assert [r.payload for r in spool.after(0, 10)] == [
        *(bytes([n]) * 40000 for n in range(5)),
        bytes([9]) * 40000,
    ]
    assert spool.depth == 6
    with contextlib.closing(sqlite3.connect(tmp_path / "full.sqlite")) as db:
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone() == (0,)
    spool.delete_many(r.seq for r in spool.after(0, 10))
    spool.close()
    assert page_size(tmp_path / "full.sqlite") == 65536  # converted when next opened empty
    Spool(tmp_path / "full.sqlite", 10_000_000, "drop-oldest").close()
    assert page_size(tmp_path / "full.sqlite") == PAGE_SIZE


def face_with_marker(marker: bytes, size: int = 32 * 1024) -> Incoming:
    """A face whose image bytes carry `marker` in the middle (random bytes around it)."""
    half = (size - len(marker)) // 2
    payload = os.urandom(half) + marker + os.urandom(size - half - len(marker))
    return Incoming("facefleet/e/faces", payload, False, {"ContentType": "image/jpeg"})


def spool_files_contain(path: Path, marker: bytes) -> bool:
    """Whether the spool's database, WAL or payload segments hold `marker`."""
    files = [path, path.with_name(path.name + "-wal"), *path.with_suffix(".payloads").iterdir()]
    return any(marker in f.read_bytes() for f in files if f.exists())


def test_delivered_face_bytes_do_not_stay_in_the_spool_file_or_wal(tmp_path: Path) -> None:
    for secure, expect_left in ((True, False), (False, True)):
        path = tmp_path / f"secure-{secure}.sqlite"
        spool = Spool(path, 10_000_000, "drop-oldest", secure_delete=secure)
        marker = f"FACE-MARKER-{secure}-0123456789".encode()
        spool.append_many([face_with_marker(marker)] + [message(i, 1000) for i in range(3)])
        assert spool_files_contain(path, marker)
        delivered = spool.after(0, 1)[0]
        spool.delete_many([delivered.seq])
        # today's setting (FAST) is the baseline: there the bytes stay, which this test detects
        assert spool_files_contain(path, marker) is expect_left, f"secure_delete={secure}"
        assert spool.depth == 3
        spool.close()


def test_faces_deleted_with_an_append_and_evicted_ones_are_scrubbed(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    spool = Spool(path, 100_000, "drop-oldest", scrub_interval_s=0)
    spool.append_many([face_with_marker(b"CONFIRMED-FACE-MARKER")])
    spool.append_many([face_with_marker(b"EVICTED-FACE-MARKER")])
    first = spool.after(0, 1)[0]
    # the writer deletes confirmed faces in the transaction of its next append
    spool.append_many([face_with_marker(b"NEW-FACE-MARKER")], delete=[first.seq])
    assert not spool_files_contain(path, b"CONFIRMED-FACE-MARKER")
    spool.append_many([face_with_marker(b"FILLER") for _ in range(3)])  # evicts by size
    assert spool.dropped >= 1
    assert not spool_files_contain(path, b"EVICTED-FACE-MARKER")
    spool.close()


def test_expired_faces_are_counted_gone_and_scrubbed(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    spool = Spool(path, 10_000_000, "drop-oldest")
    status = Incoming("facefleet/e/status/detector", b"{}", True, {})
    spool.append_many([face_with_marker(b"OLD-FACE-MARKER"), message(1), status])
    assert spool.expire_faces(time.time() - 3600) == 0  # none is an hour old
    assert spool.expire_faces(time.time() + 1) == 2
    assert [row.topic for row in spool.after(0, 10)] == ["facefleet/e/status/detector"]
    assert spool.expired == 2
    assert not spool_files_contain(path, b"OLD-FACE-MARKER")
    spool.close()
    assert Spool(path, 10_000_000, "drop-oldest").expired == 2  # persisted


def test_wal_scrubs_are_spaced_but_deleted_bytes_go_once_one_is_due(tmp_path: Path) -> None:
    """A face deleted without an fsync (the writer's deletes between appends) stays in the WAL
    and its image bytes in their segment until the next scrub makes the delete durable, at
    most `scrub_interval_s` later: zeroed before that, a power cut could bring back its row
    without its image."""
    path = tmp_path / "s.sqlite"
    spool = Spool(path, 10_000_000, "drop-oldest", scrub_interval_s=0.5)
    faces = [face_with_marker(f"{n}-IMAGE-MARKER".encode()) for n in ("FIRST", "SECOND")]
    for n, face in zip(("FIRST", "SECOND"), faces):
        face.properties["UserProperty"] = [["note", f"{n}-METADATA-MARKER"]]
    spool.append_many(faces)
    first, second = spool.after(0, 2)
    spool.delete_many([first.seq])  # the first scrub is due at once
    assert not spool_files_contain(path, b"FIRST-IMAGE-MARKER")
    assert not spool_files_contain(path, b"FIRST-METADATA-MARKER")
    spool.delete_many([second.seq])  # within the interval: not on the disk for now
    assert spool_files_contain(path, b"SECOND-IMAGE-MARKER")
    assert spool_files_contain(path, b"SECOND-METADATA-MARKER")
    time.sleep(0.6)
    spool.scrub()  # what the forwarder's writer does when idle
    assert not spool_files_contain(path, b"SECOND-IMAGE-MARKER")
    assert not spool_files_contain(path, b"SECOND-METADATA-MARKER")
    spool.close()


def test_a_delete_is_durable_before_the_image_bytes_are_zeroed(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    spool = Spool(path, 10_000_000, "drop-oldest", scrub_interval_s=60)
    spool.append_many([face_with_marker(b"FIRST-MARKER"), face_with_marker(b"SECOND-MARKER")])
    first, second = spool.after(0, 2)
    spool.delete_many([first.seq])  # the first scrub is due at once: synced, zeroed
    assert not spool_files_contain(path, b"FIRST-MARKER")
    spool.delete_many([second.seq])  # committed without an fsync, no scrub due for a minute
    assert spool_files_contain(path, b"SECOND-MARKER")
    spool.append_many([message(1)])  # the next append's commit is synced, and the delete with it
    assert not spool_files_contain(path, b"SECOND-MARKER")
    spool.close()


def segment_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.with_suffix(".payloads").iterdir())


def test_payload_segments_roll_over_and_go_once_nothing_points_into_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segments, "SEGMENT_BYTES", 100_000)
    path = tmp_path / "s.sqlite"
    spool = Spool(path, 10_000_000, "drop-oldest")
    for batch in range(3):  # 4 x 32 KB per batch: each batch fills a segment
        spool.append_many(face_with_marker(f"B{batch}F{n}".encode()) for n in range(4))
    assert segment_files(path) == ["00000001.seg", "00000002.seg", "00000003.seg"]
    rows = spool.after(0, 100)
    assert [r.payload.count(b"B1F2") for r in rows] == [0] * 6 + [1] + [0] * 5
    spool.delete_many(r.seq for r in rows[:4])
    assert segment_files(path) == ["00000002.seg", "00000003.seg"]
    spool.delete_many(r.seq for r in rows[8:])  # the current segment stays for new faces
    assert segment_files(path) == ["00000002.seg", "00000003.seg"]
    spool.close()
    reopened = Spool(path, 10_000_000, "drop-oldest")  # new faces go to a new segment
    assert segment_files(path) == ["00000002.seg"]
    assert [r.seq for r in reopened.after(0, 100)] == [r.seq for r in rows[4:8]]
    assert reopened.after(0, 100)[2].payload == rows[6].payload
    reopened.close()


def test_opening_zeroes_what_no_row_points_at_and_drops_rows_without_their_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sqlite"
    spool = Spool(path, 10_000_000, "drop-oldest")
    spool.append_many([face_with_marker(b"KEPT-MARKER"), face_with_marker(b"GONE-MARKER")])
    spool.close()
    segment = path.with_suffix(".payloads") / "00000001.seg"
    size = segment.stat().st_size
    with segment.open("ab") as handle:  # a batch written whose transaction did not commit
        handle.write(b"UNCOMMITTED-MARKER" * 100)
    with contextlib.closing(sqlite3.connect(path)) as db:  # a delete whose zeroing was cut off
        db.execute("DELETE FROM queue WHERE seq = 2")
        db.commit()
    reopened = Spool(path, 10_000_000, "drop-oldest")
    assert segment.stat().st_size == size // 2
    assert not spool_files_contain(path, b"UNCOMMITTED-MARKER")
    assert not spool_files_contain(path, b"GONE-MARKER")
    assert b"KEPT-MARKER" in reopened.after(0, 10)[0].payload
    reopened.close()

    segment.unlink()  # a file lost (a disk repaired): its rows cannot be sent
    lost = Spool(path, 10_000_000, "drop-oldest")
    assert (lost.depth, lost.dropped) == (0, 1)
    lost.close()


def face(face_id: str, size: int = 100) -> Incoming:
    props = {"UserProperty": [["id", face_id]]}
    return Incoming("facefleet/e/faces", b"f" * size, False, props, face_id)


def test_a_face_id_is_spooled_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", 1_000_000, "drop-oldest")
    assert spool.append_many([face("a"), face("b"), face("a")]) == [True, True, True]
    assert spool.append_many([face("b"), face("c")]) == [True, True]
    assert (spool.depth, spool.duplicates) == (3, 2)
    rows = spool.after(0, 10)
    spool.delete_many([rows[0].seq])
    # once delivered and deleted, a replayed copy is spooled (and stored once by its key)
    assert spool.append_many([face("a")]) == [True]
    assert spool.depth == 3


def test_a_spool_from_before_face_ids_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    db = sqlite3.connect(path)
    db.executescript(LEGACY_SCHEMA)
    db.execute(
        "INSERT INTO messages (topic, payload, retain, properties, size, received)"
        " VALUES ('facefleet/e/faces', x'00', 0, '{}', 1, 0)"
    )
    db.commit()
    db.close()
    spool = Spool(path, 1_000_000, "drop-oldest")
    assert spool.depth == 1
    assert spool.append_many([face("a"), face("a")]) == [True, True]
    assert spool.depth == 2


def test_after_a_rollback_an_older_release_sees_none_of_the_queue_and_its_rows_come_back(
    tmp_path: Path,
) -> None:
    """An older release reads payloads from its own table: rows of this one would go out
    without their images. What it spools there moves into the queue after the next upgrade,
    behind what waited, a face queued already counted once."""
    path = tmp_path / "s.sqlite"
    spool = Spool(path, 1_000_000, "drop-oldest")
    spool.append_many([face("a", 40), face("b", 40)])
    spool.close()
    with contextlib.closing(sqlite3.connect(path)) as db:  # what an older release does
        db.execute(
            "CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " topic TEXT NOT NULL, payload BLOB NOT NULL, retain INTEGER NOT NULL,"
            " properties TEXT NOT NULL, size INTEGER NOT NULL, received REAL NOT NULL,"
            " face_id TEXT)"
        )
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone() == (0,)
        for face_id in ("c", "a"):  # "a" again: the detector republished it meanwhile
            db.execute(
                "INSERT INTO messages (topic, payload, retain, properties, size, received,"
                " face_id) VALUES ('facefleet/e/faces', ?, 0, '{}', 3, 0, ?)",
                (face_id.encode() * 3, face_id),
            )
        db.commit()
    upgraded = Spool(path, 1_000_000, "drop-oldest")
    rows = upgraded.after(0, 10)
    assert [r.payload for r in rows] == [b"f" * 40, b"f" * 40, b"ccc"]
    assert (upgraded.depth, upgraded.duplicates) == (3, 1)
    upgraded.close()


def test_append_reports_what_it_stored_as_read_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", 1_000_000, "drop-oldest")
    assert spool.last_seq == 0
    stored: list[Spooled] = []
    face = Incoming("facefleet/e/faces", b"x", False, {"UserProperty": [["id", "a"]]}, "a")
    spool.append_many([message(1), face, face], stored=stored)  # the second copy is not stored
    assert [(r.seq, r.payload, r.properties) for r in stored] == [
        (r.seq, r.payload, r.properties) for r in spool.after(0, 10)
    ]
    assert spool.last_seq == stored[-1].seq
    spool.close()
    assert Spool(tmp_path / "s.sqlite", 1_000_000, "drop-oldest").last_seq == stored[-1].seq


def rows(seqs: range) -> list[Spooled]:
    return [Spooled(seq, "facefleet/e/faces", b"", False, {}) for seq in seqs]


def test_recent_hands_over_in_order_and_defers_to_the_spool() -> None:
    recent = Recent(limit=4, read_up_to=2)  # rows 1 and 2 are from an earlier run
    recent.add(rows(range(3, 6)))
    assert recent.take(0, 10) is None  # read 1..2 from the spool first
    taken = recent.take(2, 2)
    assert taken is not None
    assert [r.seq for r in taken] == [3, 4]
    recent.add(rows(range(6, 10)))  # 5..9 is one more than the limit: 5 is left to the spool
    assert recent.take(4, 10) is None
    taken = recent.take(5, 10)
    assert taken is not None
    assert [r.seq for r in taken] == [6, 7, 8, 9]
    assert recent.take(9, 10) == []


def test_recent_resyncs_after_rows_left_the_spool() -> None:
    recent = Recent(limit=10, read_up_to=0)
    recent.add(rows(range(1, 4)))
    recent.resync(last_seq=3)  # say 1 was evicted: only the spool knows what is left
    assert recent.take(0, 10) is None
    recent.add(rows(range(4, 6)))
    taken = recent.take(3, 10)
    assert taken is not None
    assert [r.seq for r in taken] == [4, 5]
