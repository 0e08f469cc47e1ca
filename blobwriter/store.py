"""Where frames go: one `Store` interface, two implementations (Azure append blobs, a directory).

A store appends bytes to a named blob (creating it, and its container, when missing), lists a
date's blobs (the container or directory must exist: listing never creates it), and streams a
blob back; which blob a frame goes to is the writer's choice (see layout.py for the names). One
append is one Append Block call (or one locked `write`), so what one append carries is never torn
or interleaved with another's.

Every storage failure leaves a store as a `StoreError` (with the service's error code and HTTP
status where there is one); nothing above this layer sees an SDK or OS exception, and no one
else formats storage errors.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol, runtime_checkable

from . import layout
from .config import Settings
from .errors import StoreError

READ_RANGE_BYTES = 4 * 1024 * 1024  # one download request of a blob being read


class Appended(NamedTuple):
    """What an append reported: where its bytes start in the blob, and the blob's committed
    block count after it (0 where storage keeps no such count, as in a directory)."""

    offset: int
    blocks: int = 0


@runtime_checkable
class Store(Protocol):
    """The few operations the writer and reader need from storage; each raises only StoreError."""

    description: str  # where the store is, for messages (never a credential)
    prefix: str  # the blob-name prefix (blob_prefix) every name of this store starts with

    async def open(self) -> None:
        """Prepare for writing (create the container or directory if missing)."""

    async def close(self) -> None:
        """Release connections."""

    async def append(self, name: str, data: bytes) -> Appended:
        """Append `data` to blob `name` in one call, creating the blob first if it does not exist."""

    async def parts(self, date: str) -> list[str]:
        """The names of `date`'s blobs, in reading order (layout.sort_parts)."""

    async def sizes(self, date: str) -> dict[str, int]:
        """The size in bytes of each of `date`'s blobs now (the scheduled export tells a changed day by them)."""

    def read(self, name: str) -> AsyncIterator[bytes]:
        """Stream one blob's bytes in pieces of bounded size."""

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
    """The same blob names as files under a local or network directory."""

    def __init__(self, root: Path, prefix: str = "") -> None:
        self._root = root
        self.prefix = prefix
        self.description = str(root)

    def _path(self, name: str) -> Path:
        return self._root / name

    async def open(self) -> None:
        with _os_errors(f"creating directory {self._root / self.prefix}"):
            await asyncio.to_thread((self._root / self.prefix).mkdir, parents=True, exist_ok=True)

    async def close(self) -> None:
        return None

    async def append(self, name: str, data: bytes) -> Appended:
        with _os_errors(f"appending to {self._path(name)}"):
            return Appended(await asyncio.to_thread(self._append_sync, self._path(name), data))

    @staticmethod
    def _append_sync(path: Path, data: bytes) -> int:
        created = not path.exists()
        new_dirs: list[Path] = []  # directories this append creates, deepest first
        if created:
            missing = path.parent
            while not missing.exists():
                new_dirs.append(missing)
                missing = missing.parent
            path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            # The lock keeps appends of several processes whole on filesystems where
            # O_APPEND alone does not (network drives).
            fcntl.flock(fd, fcntl.LOCK_EX)
            offset = os.lseek(fd, 0, os.SEEK_END)  # where O_APPEND writes, fixed while we hold the lock
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError:
                # A write that stopped part-way (disk full, quota, file size limit) must not leave a torn
                # frame behind for readers to report as damage: cut the file back to where this append
                # began (we still hold the lock, so nothing else was appended since). The writer retries.
                _truncate_back(fd, offset)
                raise
        finally:
            os.close(fd)  # closing releases the lock
        if created:  # a new name is durable only once its directory is synced, and so on up each new directory
            _fsync_dir(path.parent)
            for directory in new_dirs:
                _fsync_dir(directory.parent)
        return offset

    async def parts(self, date: str) -> list[str]:
        def scan() -> list[str]:
            # Writing creates the directory (open); reading one that is not there is an error, as a missing
            # container is: a typo or an unmounted drive must not read as a store without logs.
            if not self._root.is_dir():
                exists = self._root.exists()
                raise StoreError(f"directory {self._root} " + ("is not a directory" if exists else "does not exist"),
                                 code="ENOTDIR" if exists else "ENOENT")
            names = []
            shared, own = self._root / self.prefix, self._root / self.prefix / date
            if shared.is_dir():  # version 0.1's shared files: {prefix}{date}.{part}.log
                names += [self.prefix + p.name for p in shared.iterdir() if p.is_file()]
            if own.is_dir():  # each writer's: {prefix}{date}/{writer}.{part}.log
                names += [f"{self.prefix}{date}/{p.name}" for p in own.iterdir() if p.is_file()]
            return names

        with _os_errors(f"listing {self._root / self.prefix}"):
            return layout.sort_parts(await asyncio.to_thread(scan), self.prefix, date)

    async def sizes(self, date: str) -> dict[str, int]:
        names = await self.parts(date)
        with _os_errors(f"listing {self._root / self.prefix}"):
            return await asyncio.to_thread(lambda: {name: self._path(name).stat().st_size for name in names})

    async def read(self, name: str) -> AsyncIterator[bytes]:
        # The bytes of the appends done now, as Azure's read (the size in the blob's properties): reading
        # on to the end of the file would take the first bytes of an append still being written (or about
        # to be cut back), which a reader reports as a truncated frame on a healthy blob.
        with _os_errors(f"reading {self._path(name)}"):
            handle, left = await asyncio.to_thread(_open_appended, self._path(name))
        try:
            while left > 0:
                with _os_errors(f"reading {self._path(name)}"):
                    chunk = await asyncio.to_thread(handle.read, min(READ_RANGE_BYTES, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk
        finally:
            handle.close()

    async def check(self) -> None:
        if not await asyncio.to_thread(os.access, self._root, os.W_OK):
            raise StoreError(f"directory {self._root} is missing or not writable")


def _open_appended(path: Path) -> tuple[BinaryIO, int]:
    """A file opened for reading, and its size once no append is in progress: appends hold an
    exclusive lock from their first write to their fsync (or their cut back), so a shared one waits
    for the append in progress, if any, and the size is then the end of a whole append."""
    handle = open(path, "rb")  # the caller closes it
    try:
        fd = handle.fileno()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError as exc:  # a filesystem without locks: appends take none either
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            return handle, os.fstat(fd).st_size
        try:
            return handle, os.fstat(fd).st_size
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    except BaseException:
        handle.close()
        raise


def _truncate_back(fd: int, offset: int) -> None:
    try:
        os.ftruncate(fd, offset)
        os.fsync(fd)
    except OSError:  # cannot even truncate: the torn bytes stay, and readers resynchronize after them
        pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
