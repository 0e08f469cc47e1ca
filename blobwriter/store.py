"""Where frames go: one `Store` interface, two implementations (Azure append blobs, a directory).

Blobs and files are named `{blob_prefix}{YYYY-MM-DD}.{part:04d}.log` inside the container (or
under the root directory). One frame is one Append Block call (or one locked `write`), so
frames from several writers and several processes interleave whole and never tear.

Every storage failure leaves a store as a `StoreError` (with the service's error code and HTTP
status where there is one); nothing above this layer sees an SDK or OS exception, and no one
else formats storage errors.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

from .config import Settings
from .errors import StoreError

PART_DIGITS = 4
READ_RANGE_BYTES = 4 * 1024 * 1024  # one download request of a blob being read


def blob_name(prefix: str, date: str, part: int) -> str:
    """The name of one part of one date's log: `{prefix}{YYYY-MM-DD}.{part:04d}.log`."""
    return f"{prefix}{date}.{part:0{PART_DIGITS}d}.log"


def part_number(name: str) -> int:
    """The part number in a blob name made by blob_name()."""
    return int(name.rsplit(".", 2)[-2])


def _part_pattern(prefix: str, date: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}{re.escape(date)}\.(\d{{{PART_DIGITS},}})\.log$")


def date_listing_prefix(prefix: str, date: str) -> str:
    """The name prefix one listing uses to find every part of `date`."""
    return f"{prefix}{date}."


def sort_parts(names: list[str], prefix: str, date: str) -> list[str]:
    """Keep the names that are parts of `date` and order them by part number."""
    pattern = _part_pattern(prefix, date)
    numbered = [(int(m.group(1)), n) for n in names if (m := pattern.match(n))]
    return [n for _, n in sorted(numbered)]


class Appended(NamedTuple):
    """Where an append landed: the part's name and the frame's offset in it."""

    name: str
    offset: int


@runtime_checkable
class Store(Protocol):
    """The few operations the writer and reader need from storage; each raises only StoreError."""

    description: str  # where the store is, for messages (never a credential)

    async def open(self) -> None:
        """Prepare for writing (create the container or directory if missing)."""

    async def close(self) -> None:
        """Release connections."""

    async def append(self, date: str, frame: bytes) -> Appended:
        """Append one whole frame to the current part of `date`; say where it landed."""

    async def parts(self, date: str) -> list[str]:
        """The names of `date`'s parts, in order."""

    def read(self, name: str) -> AsyncIterator[bytes]:
        """Stream one part's bytes in pieces of bounded size."""

    async def check(self) -> None:
        """Raise StoreError if storage cannot be reached."""


def open_store(settings: Settings) -> Store:
    """The store `settings.storage` selects (not yet opened)."""
    storage = settings.require("storage")
    if settings.storage_kind == "directory":
        return DirectoryStore(Path(storage), prefix=settings.blob_prefix)
    from .blob_store import AppendBlobStore

    return AppendBlobStore(settings)


@contextmanager
def _os_errors(what: str) -> Iterator[None]:
    """The directory store's error boundary: OSError becomes StoreError."""
    try:
        yield
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0)
        raise StoreError(f"{what} failed: {exc.strerror or exc}", code=code) from exc


class DirectoryStore:
    """The same date-named parts as files under a local or network directory."""

    def __init__(self, root: Path, prefix: str = "") -> None:
        self._root = root
        self._prefix = prefix
        self.description = str(root)

    def _path(self, name: str) -> Path:
        return self._root / name

    async def open(self) -> None:
        with _os_errors(f"creating directory {self._root / self._prefix}"):
            await asyncio.to_thread((self._root / self._prefix).mkdir, parents=True, exist_ok=True)

    async def close(self) -> None:
        return None

    async def append(self, date: str, frame: bytes) -> Appended:
        name = blob_name(self._prefix, date, 0)
        with _os_errors(f"appending to {self._path(name)}"):
            return Appended(name, await asyncio.to_thread(self._append_sync, self._path(name), frame))

    @staticmethod
    def _append_sync(path: Path, frame: bytes) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            # The lock keeps frames of several processes whole on filesystems where
            # O_APPEND alone does not (network drives).
            fcntl.flock(fd, fcntl.LOCK_EX)
            offset = os.lseek(fd, 0, os.SEEK_END)  # where O_APPEND writes, fixed while we hold the lock
            view = memoryview(frame)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the lock
        return offset

    async def parts(self, date: str) -> list[str]:
        def scan() -> list[str]:
            folder = self._root / self._prefix
            if not folder.is_dir():
                return []
            return [self._prefix + p.name for p in folder.iterdir() if p.is_file()]

        with _os_errors(f"listing {self._root / self._prefix}"):
            return sort_parts(await asyncio.to_thread(scan), self._prefix, date)

    async def read(self, name: str) -> AsyncIterator[bytes]:
        with _os_errors(f"reading {self._path(name)}"):
            handle = await asyncio.to_thread(open, self._path(name), "rb")
        try:
            while True:
                with _os_errors(f"reading {self._path(name)}"):
                    chunk = await asyncio.to_thread(handle.read, READ_RANGE_BYTES)
                if not chunk:
                    return
                yield chunk
        finally:
            handle.close()

    async def check(self) -> None:
        if not await asyncio.to_thread(os.access, self._root, os.W_OK):
            raise StoreError(f"directory {self._root} is missing or not writable")
