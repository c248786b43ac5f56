"""Faces in the forwarder's spool (argv[1]) after waiting at most argv[2] seconds for it to
drain; read-only; 0 when there is no spool."""

import sqlite3
import sys
import time

#: The forwarder's table (`queue`) and an older release's (`messages`, moved into `queue` when
#: the forwarder next starts).
TABLES = ("queue", "messages")


def spooled(path: str) -> int:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            names = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            counts = [
                db.execute(f"SELECT COUNT(*) FROM {table} WHERE topic LIKE '%/faces'").fetchone()[0]  # noqa: S608
                for table in TABLES
                if table in names
            ]
        finally:
            db.close()
    except sqlite3.OperationalError:  # no spool file (or one being created): nothing to deliver
        return 0
    return sum(int(count) for count in counts)


deadline = time.monotonic() + float(sys.argv[2])
count = spooled(sys.argv[1])
while count and time.monotonic() < deadline:
    time.sleep(2)
    count = spooled(sys.argv[1])
print(count)
