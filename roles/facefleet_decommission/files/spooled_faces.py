"""Faces in the forwarder's spool (argv[1]), read-only; 0 when there is no spool."""

import sqlite3
import sys

try:
    db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
    row = db.execute("SELECT COUNT(*) FROM messages WHERE topic LIKE '%/faces'").fetchone()
except sqlite3.OperationalError:  # no spool file, or no table yet: nothing to deliver
    row = (0,)
print(row[0])
