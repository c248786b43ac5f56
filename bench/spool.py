"""6. The cost of secure delete in the forwarder's spool.

The spool as the forwarder drives it, without brokers: batches of 16 faces of 32 KB appended in
one transaction, and each batch deleted (as on its receipts) in the transaction of the next
append, as the forwarder's writer does. `secure_delete = true` (the default: a deleted face's
bytes zeroed in its payload segment, freed pages zeroed, the WAL truncated at most every second)
against `false` (SQLite's FAST mode, segments left as they are until they go), back to back in the
same run; best of three each.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from bench.common import Options, progress
from facefleet.forwarder.spool import Incoming, Spool

PAYLOAD_BYTES = 32 * 1024
BATCH = 16


def faces_per_s(path: Path, count: int, secure: bool) -> float:
    spool = Spool(path, 1024 * 1024 * 1024, "drop-oldest", secure_delete=secure)
    payloads = [os.urandom(PAYLOAD_BYTES) for _ in range(BATCH)]
    pending: list[int] = []
    started = time.perf_counter()
    for _ in range(count // BATCH):
        batch = [Incoming("facefleet/bench/faces", p, False, {}) for p in payloads]
        spool.append_many(batch, delete=pending)
        pending = [row.seq for row in spool.after(pending[-1] if pending else 0, BATCH)]
    spool.delete_many(pending)
    elapsed = time.perf_counter() - started
    spool.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(path.with_suffix(".payloads"))
    return count // BATCH * BATCH / elapsed


def run(workdir: Path, options: Options) -> dict[str, Any]:
    count = 320 if options.quick else 4000
    out: dict[str, Any] = {}
    for mode, secure in (("fast", False), ("secure", True)):
        rates = [faces_per_s(workdir / f"spool-{mode}.sqlite", count, secure) for _ in range(3)]
        out[mode] = {"faces_per_s": round(max(rates), 1)}
        progress(f"spool {mode:6s}: {max(rates):7.1f} faces/s spooled and deleted (32 KB)")
    out["secure_over_fast"] = round(out["secure"]["faces_per_s"] / out["fast"]["faces_per_s"], 2)
    out["conditions"] = (
        f"{count} faces of {PAYLOAD_BYTES // 1024} KB in batches of {BATCH}, each batch deleted "
        "in the next append's transaction, synchronous=FULL, on the bench's work directory"
    )
    return out
