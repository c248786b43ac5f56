"""The spool's payloads: append-only segment files beside its SQLite file.

SQLite kept each 32 KB face in a 64 KB page: written to the WAL when spooled, written again
zeroed when deleted (secure delete), and copied into the database file by the checkpoints,
about 200 KB of writes per face, plus reads of the pages that the faces pushed out of the
cache: half of the forwarder's writer thread. Here a face is written once, at an offset in the
current segment, and flushed (`fdatasync`) before the transaction that records where it is
commits; deleting a face overwrites its bytes with zeros (with secure delete) and a segment
file goes once none of its faces is left. The SQLite row stays the truth: bytes that no
committed row points at (a batch that did not commit, a delete whose zeroing a crash
interrupted) are zeroed or cut off when the spool is next opened (`tidy`).

The spool calls everything under its write lock, and `read` and `committed` also under its read
lock (a payload is never zeroed or its file closed during a read); the files are opened under a
lock of their own, as a read and a write may open one at the same time.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

#: A new segment is started once the current one holds this many bytes (about 500 faces of
#: 32 KB): a face left unconfirmed keeps its segment's file, zeroed around it, on the disk.
SEGMENT_BYTES = 16 * 1024 * 1024
_NAME = re.compile(r"(\d{8})\.seg")
_ZEROS = memoryview(bytes(1024 * 1024))
#: writev/pwritev take at most this many buffers per call (Linux's IOV_MAX).
_IOV_MAX = 1024

#: Where a payload is: (segment number, offset, size).
Location = tuple[int, int, int]


class Segments:
    def __init__(self, directory: Path, secure_delete: bool) -> None:
        self.directory = directory
        self.secure_delete = secure_delete
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._fds: dict[int, int] = {}
        self._open_lock = threading.Lock()
        self._live: Counter[int] = Counter()
        self._current = 0
        self._end = 0
        self._written: set[int] = set()

    def existing(self) -> list[int]:
        """The segment numbers on disk."""
        return sorted(
            int(m.group(1)) for p in self.directory.iterdir() if (m := _NAME.fullmatch(p.name))
        )

    def tidy(self, live: Mapping[int, Sequence[tuple[int, int]]]) -> None:
        """At opening, given each segment's live (offset, size) pairs from the spool: files
        with none go, bytes between and after the live ones are zeroed (secure delete) and
        cut off; new faces go to a new segment."""
        for number in self.existing():
            path = self._path(number)
            spans = sorted(live.get(number, ()))
            if not spans:
                if self.secure_delete:
                    self._zero(number, [(0, path.stat().st_size)])
                self._unlink(number)
                continue
            gaps, end = [], 0
            for offset, size in spans:
                if offset > end:
                    gaps.append((end, offset - end))
                end = max(end, offset + size)
            tail = path.stat().st_size - end
            if self.secure_delete:
                self._zero(number, [*gaps, *([(end, tail)] if tail > 0 else [])])
            os.truncate(path, end)
            self._live[number] = len(spans)
        existing = self.existing()
        self._current = (existing[-1] if existing else 0) + 1
        self._end = 0

    def place(self, size: int) -> tuple[int, int]:
        """Where the next payload of `size` bytes goes: (segment, offset)."""
        if self._end >= SEGMENT_BYTES:
            self._current += 1
            self._end = 0
        offset = self._end
        self._end += size
        return self._current, offset

    def write(self, payloads: Iterable[tuple[int, int, bytes]]) -> None:
        """Write placed payloads, (segment, offset, bytes) in placement order, and flush them
        to the disk: once this returns they survive a power cut."""
        runs: list[tuple[int, int, list[bytes]]] = []
        for segment, offset, payload in payloads:
            last = runs[-1] if runs else None
            if last and last[0] == segment and len(last[2]) < _IOV_MAX:
                last[2].append(payload)
            else:
                runs.append((segment, offset, [payload]))
        for segment, offset, buffers in runs:
            fd = self._fd(segment)
            expected = sum(len(b) for b in buffers)
            if os.pwritev(fd, buffers, offset) != expected:  # a full disk writes short
                raise OSError(f"short write to spool segment {self._path(segment)}")
            self._written.add(segment)
        for segment in self._written:
            os.fdatasync(self._fd(segment))
        self._written.clear()

    def read(self, location: Location) -> bytes:
        segment, offset, size = location
        data = os.pread(self._fd(segment), size, offset)
        if len(data) != size:
            raise OSError(f"spool segment {self._path(segment)} ends before offset {offset + size}")
        return data

    def committed(self, added: Iterable[int], released: Iterable[Location]) -> None:
        """A transaction committed: rows now point into the segments `added` (one entry per
        row) and no longer at the payloads `released`. Their bytes are zeroed (secure delete)
        and a segment no row points into is removed, unless new faces still go to it."""
        self._live.update(added)
        by_segment: dict[int, list[tuple[int, int]]] = {}
        for segment, offset, size in released:
            by_segment.setdefault(segment, []).append((offset, size))
        for segment, spans in by_segment.items():
            if self.secure_delete:
                self._zero(segment, spans)
            self._live[segment] -= len(spans)
        for segment in {*self._fds, *by_segment}:
            if segment != self._current and self._live[segment] <= 0:
                self._unlink(segment)

    def discard(self, payloads: Iterable[tuple[int, int, bytes]]) -> None:
        """Payloads written for a transaction that did not commit."""
        if self.secure_delete:
            for segment, offset, payload in payloads:
                if segment in self._fds:
                    self._zero(segment, [(offset, len(payload))])

    def close(self) -> None:
        with self._open_lock:
            fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            os.close(fd)

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:08d}.seg"

    def _fd(self, number: int) -> int:
        with self._open_lock:
            fd = self._fds.get(number)
            if fd is None:
                path = self._path(number)
                created = not path.exists()
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                self._fds[number] = fd
                if created:  # the new file's name must survive a power cut too
                    self._sync_directory()
            return fd

    def _zero(self, number: int, spans: Sequence[tuple[int, int]]) -> None:
        fd = self._fd(number)
        for offset, size in spans:
            done = 0
            while done < size:
                done += os.pwrite(fd, _ZEROS[: min(len(_ZEROS), size - done)], offset + done)

    def _unlink(self, number: int) -> None:
        with self._open_lock:
            fd = self._fds.pop(number, None)
        if fd is not None:
            os.close(fd)
        self._path(number).unlink(missing_ok=True)
        self._live.pop(number, None)

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
