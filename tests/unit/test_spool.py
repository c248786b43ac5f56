from __future__ import annotations

from pathlib import Path

from facefleet.forwarder.spool import Incoming, Spool


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
