"""Faces in the forwarder's spool (argv[1]) after waiting at most argv[2] seconds for it to
drain; read-only; 0 when there is no spool."""

import sqlite3
import sys
import time


def spooled(path: str) -> int:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT COUNT(*) FROM messages WHERE topic LIKE '%/faces'").fetchone()
        finally:
            db.close()
    except sqlite3.OperationalError:  # no spool file, or no table yet: nothing to deliver
        return 0
    return int(row[0])


deadline = time.monotonic() + float(sys.argv[2])
count = spooled(sys.argv[1])
while count and time.monotonic() < deadline:
    time.sleep(2)
    count = spooled(sys.argv[1])
print(count)
