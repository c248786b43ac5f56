"""The detector's face journal and record of published ids (facefleet.detector.journal)."""

from __future__ import annotations

import os
from pathlib import Path

from facefleet.contract import new_face_id
from facefleet.detector.journal import (
    Journal,
    JournaledFace,
    Published,
    PublishedRecord,
    read_record,
    reconcile,
)

SEGMENT = 64 * 1024


def face(n: int, size: int = 1000) -> JournaledFace:
    face_id = new_face_id()
    props = (("v", "1"), ("id", face_id), ("track", str(n)))
    ts = f"2026-12-02T06:00:{n % 60:02d}.000Z"
    return JournaledFace(face_id, ts, "image/jpeg", props, bytes([n % 256]) * size)


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


def test_unconfirmed_faces_are_replayed_in_order_with_everything_to_publish_them(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path, 1 << 20, SEGMENT)
    faces = [face(n) for n in range(10)]
    assert journal.append(faces[:4]) == [True] * 4
    assert journal.append(faces[4:]) == [True] * 6
    assert journal.confirm([faces[1].id, faces[5].id, "unknown"]) == 2
    journal.close()

    reopened = Journal(tmp_path, 1 << 20, SEGMENT)
    expected = [f for n, f in enumerate(faces) if n not in (1, 5)]
    assert list(reopened.pending) == [f.id for f in expected]
    assert [reopened.read(f.id) for f in expected] == expected
    assert reopened.corrupt == 0


def test_segments_rotate_and_go_once_all_their_faces_and_older_ones_are_confirmed(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path, 1 << 20, SEGMENT)
    faces = [face(n, size=20_000) for n in range(9)]  # three per segment
    journal.append(faces)
    assert len(segments(tmp_path)) == 3
    # the second segment's faces are confirmed, the first's not: nothing may go yet
    journal.confirm(f.id for f in faces[3:6])
    assert len(segments(tmp_path)) == 3
    journal.confirm(f.id for f in faces[:3])
    assert len(segments(tmp_path)) == 1  # the two oldest went; the active one stays
    journal.close()
    reopened = Journal(tmp_path, 1 << 20, SEGMENT)
    assert list(reopened.pending) == [f.id for f in faces[6:]]


def test_a_full_journal_refuses_faces_and_counts_them(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 2 * SEGMENT, SEGMENT)
    faces = [face(n, size=20_000) for n in range(8)]
    kept = journal.append(faces)
    assert kept == [True] * 6 + [False] * 2
    assert journal.overflow == 2
    assert journal.size <= 2 * SEGMENT
    journal.confirm(f.id for f in faces[:6])
    assert journal.append([face(9, size=20_000)]) == [True]  # room again
    assert journal.overflow == 2


def test_a_full_disk_overflows_the_batch_and_the_journal_goes_on_in_a_new_segment(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path, 1 << 20, SEGMENT)
    # the segment after the first is /dev/full: every write to it fails with ENOSPC
    full = tmp_path / "00000002.seg"
    full.symlink_to("/dev/full")
    faces = [face(n, size=20_000) for n in range(5)]
    assert journal.append(faces[:3]) == [True] * 3  # the first segment is full now
    assert journal.append(faces[3:]) == [False, False]
    assert journal.overflow == 2
    assert journal.append([face(5)]) == [True]  # in segment 3
    journal.close()
    full.unlink()
    reopened = Journal(tmp_path, 1 << 20, SEGMENT)
    assert len(reopened.pending) == 4
    assert faces[3].id not in reopened.pending


def test_a_record_torn_by_a_crash_mid_write_is_skipped_and_counted(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 1 << 20, SEGMENT)
    faces = [face(n) for n in range(3)]
    journal.append(faces)
    journal.close()
    [segment] = segments(tmp_path)
    whole = segment.read_bytes()
    torn = face(3).encode()
    # a header promising a full record, then only half of it: the write a SIGKILL cut
    segment.write_bytes(whole + whole[:13] + torn[: len(torn) // 2])

    reopened = Journal(tmp_path, 1 << 20, SEGMENT)
    assert reopened.corrupt == 1
    assert list(reopened.pending) == [f.id for f in faces]
    # new faces go to a new segment, never after the torn record
    reopened.append([face(4)])
    reopened.close()
    again = Journal(tmp_path, 1 << 20, SEGMENT)
    assert len(again.pending) == 4
    assert again.corrupt == 1


def test_a_damaged_record_stops_the_segment_there(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 1 << 20, SEGMENT)
    faces = [face(n) for n in range(3)]
    journal.append(faces)
    journal.close()
    [segment] = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    data[-10] ^= 0xFF  # a flipped bit in the last face's image: its CRC fails
    segment.write_bytes(bytes(data))
    reopened = Journal(tmp_path, 1 << 20, SEGMENT)
    assert reopened.corrupt == 1
    assert list(reopened.pending) == [f.id for f in faces[:2]]


def test_confirmations_lost_in_a_crash_only_mean_faces_are_replayed(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 1 << 20, SEGMENT)
    faces = [face(n) for n in range(3)]
    journal.append(faces)
    journal.confirm([faces[0].id])
    journal.append([face(3)])  # its fsync makes the confirmation durable too
    os.close(journal._fd)  # no close(): as if killed
    reopened = Journal(tmp_path, 1 << 20, SEGMENT)
    assert faces[0].id not in reopened.pending
    assert len(reopened.pending) == 3


def test_the_record_rotates_keeps_its_files_and_reads_back_oldest_first(tmp_path: Path) -> None:
    record = PublishedRecord(tmp_path, 4096, keep=2)
    written = [
        Published(f"2026-12-02T06:00:00.{n:03d}Z", new_face_id(), n % 7 != 0) for n in range(200)
    ]
    for start in range(0, 200, 10):
        record.add(written[start : start + 10])
    record.close()
    names = sorted(p.name for p in tmp_path.glob("published.log*"))
    assert names == ["published.log", "published.log.1", "published.log.2"]
    assert all(p.stat().st_size <= 4096 for p in tmp_path.glob("published.log*"))
    found = read_record(tmp_path)
    assert found == written[-len(found) :]  # the oldest rotated away, the rest in order
    assert len(found) < len(written)


def test_a_torn_record_line_is_skipped_and_does_not_swallow_the_next(tmp_path: Path) -> None:
    record = PublishedRecord(tmp_path, 1 << 20, keep=1)
    first = Published("2026-12-02T06:00:00.000Z", new_face_id(), True)
    record.add([first])
    record.close()
    with open(tmp_path / "published.log", "ab") as handle:
        handle.write(b"2026-12-02T06:00:01.000Z\tabc")  # cut by a crash
    record = PublishedRecord(tmp_path, 1 << 20, keep=1)
    second = Published("2026-12-02T06:00:02.000Z", new_face_id(), False)
    record.add([second])
    record.close()
    assert read_record(tmp_path) == [first, second]


def test_faces_journaled_but_not_recorded_before_a_crash_are_recorded_at_start(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path, 1 << 20, SEGMENT)
    record = PublishedRecord(tmp_path, 1 << 20, keep=1)
    first, second = [face(0), face(1)], [face(2), face(3)]
    journal.append(first)
    record.add(Published(f.ts, f.id, True) for f in first)
    journal.append(second)  # killed here, before the record write
    journal.close()
    record.close()

    reopened = Journal(tmp_path, 1 << 20, SEGMENT)
    record = PublishedRecord(tmp_path, 1 << 20, keep=1)
    assert record.add_unrecorded(reopened) == 2
    assert record.add_unrecorded(reopened) == 0
    assert read_record(tmp_path) == [Published(f.ts, f.id, True) for f in first + second]


def test_reconcile_counts_the_record_against_storage() -> None:
    record = [Published("t", face_id, face_id != "c") for face_id in "abcd"]
    result = reconcile(record, ["a", "b", "b", "x"])
    assert (result.published, result.stored) == (4, 2)
    assert result.missing == ("c", "d")
    assert result.missing_overflow == 1
    assert result.duplicates == ("b",)
    assert not result.ok
    assert reconcile(record, list("abcd")).ok
