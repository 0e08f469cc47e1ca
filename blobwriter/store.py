"""Where frames go: one `Store` interface, two implementations (Azure append blobs, a directory).

Blobs and files are named `{directory}{YYYY-MM-DD}.{part:04d}.log` inside the container (or
under the root directory). One frame is one Append Block call (or one locked `write`), so
frames from several writers and several processes interleave whole and never tear.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

from .config import Settings
from .errors import StoreError

log = logging.getLogger("blobwriter.store")

PART_DIGITS = 4
READ_CHUNK_BYTES = 4 * 1024 * 1024
SDK_RETRIES = 3  # quick in-request retries of transient errors; the writer retries batches above this


def blob_name(prefix: str, date: str, part: int) -> str:
    """The name of one part of one date's log: `{prefix}{YYYY-MM-DD}.{part:04d}.log`."""
    return f"{prefix}{date}.{part:0{PART_DIGITS}d}.log"


def _part_pattern(prefix: str, date: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}{re.escape(date)}\.(\d{{{PART_DIGITS},}})\.log$")


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
    """The few operations the writer and reader need from storage."""

    description: str

    async def open(self) -> None:
        """Prepare for writing (create the container or directory if missing)."""

    async def close(self) -> None:
        """Release connections."""

    async def append(self, date: str, frame: bytes) -> Appended:
        """Append one whole frame to the current part of `date`; say where it landed."""

    async def parts(self, date: str) -> list[str]:
        """The names of `date`'s parts, in order."""

    def read(self, name: str) -> AsyncIterator[bytes]:
        """Stream one part's bytes in chunks of bounded size."""

    async def check(self) -> None:
        """Raise StoreError if storage cannot be reached."""


def open_store(settings: Settings) -> Store:
    """The store `settings.storage` selects (not yet opened)."""
    storage = settings.require("storage")
    if settings.storage_kind == "directory":
        return DirectoryStore(Path(storage), prefix=settings.directory)
    return AppendBlobStore(settings)


class AppendBlobStore:
    """Date-named Azure append blobs, rolled to a new part before the committed-block limit."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._prefix = settings.directory
        self._max_blocks = settings.max_blocks_per_blob
        self._current: dict[str, int] = {}
        self._discovering: dict[str, asyncio.Lock] = {}
        self._service: Any = None
        self._container: Any = None
        self._credential: Any = None
        self._session: Any = None
        self.description = f"container {settings.container!r}"

    def _client(self) -> Any:
        if self._container is not None:
            return self._container
        import aiohttp
        from azure.core.pipeline.transport import AioHttpTransport
        from azure.storage.blob.aio import BlobServiceClient, ExponentialRetry

        s = self._settings
        # A pool as wide as the writer's concurrency; aiohttp's default of 100 would cap it.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=s.max_concurrent_writes + 16),
            auto_decompress=False,
        )
        # aiohttp resends an idempotent request (PUT) once when a kept-alive connection drops before
        # the answer. Append Block is not idempotent: the resend could land the same bytes twice,
        # which readers must report as a replay. The writer retries appends itself, sealed anew.
        if hasattr(self._session, "_retry_connection"):
            self._session._retry_connection = False
        # The timeouts go to the transport: given a transport, the client ignores its own timeout options.
        timeouts = {"connection_timeout": min(10.0, s.storage_timeout), "read_timeout": s.storage_timeout}
        options: dict[str, Any] = {
            "transport": AioHttpTransport(session=self._session, session_owner=False, **timeouts),
            "retry_policy": ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=SDK_RETRIES,
                                             random_jitter_range=1),
            **timeouts,
        }
        storage = s.require("storage")
        if s.storage_kind == "connection_string":
            self._service = BlobServiceClient.from_connection_string(storage, **options)
        else:
            from azure.identity.aio import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
            self._service = BlobServiceClient(storage, credential=self._credential, **options)
        self.description = f"{self._service.url.rstrip('/')}/{s.container}"
        self._container = self._service.get_container_client(s.container)
        return self._container

    async def open(self) -> None:
        from azure.core.exceptions import HttpResponseError, ResourceExistsError

        container = self._client()
        try:
            await container.create_container(retry_total=0)  # start-up must not hang on a dead store
            log.info("Created container %s", self.description)
        except ResourceExistsError:
            pass
        except HttpResponseError as exc:
            # An identity scoped to one existing container may not create containers: fine if it exists.
            if exc.status_code != 403:
                raise StoreError(f"cannot create container at {self.description}: {_reason(exc)}") from exc

    async def close(self) -> None:
        if self._service is not None:
            await self._service.close()
        if self._credential is not None:
            await self._credential.close()
        if self._session is not None:
            await self._session.close()
        self._service = self._container = self._credential = self._session = None

    async def append(self, date: str, frame: bytes) -> Appended:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        container = self._client()
        part = self._current.get(date)
        if part is None:
            part = await self._discover(date)
        while True:
            name = blob_name(self._prefix, date, part)
            blob = container.get_blob_client(name)
            try:
                # No SDK retries: an append that timed out may have landed, and the SDK would resend
                # the same bytes (a "replayed frame"); the writer retries with a frame sealed anew.
                result = await blob.append_block(frame, length=len(frame), retry_total=0)
            except ResourceNotFoundError as exc:
                if getattr(exc, "error_code", None) == "ContainerNotFound":
                    await self.open()
                await self._create(blob)
                continue
            except HttpResponseError as exc:
                if getattr(exc, "error_code", None) == "BlockCountExceedsLimit":
                    # Full, perhaps filled by another instance first: move on to the next part.
                    part = self._roll(date, part)
                    continue
                raise
            if int(result.get("blob_committed_block_count") or 0) >= self._max_blocks:
                self._roll(date, part)
            return Appended(name, int(result["blob_append_offset"]))

    def _roll(self, date: str, full_part: int) -> int:
        nxt = max(self._current.get(date, 0), full_part + 1)
        if nxt != self._current.get(date):
            log.info("Rolling %s%s to part %d", self._prefix, date, nxt)
        self._current[date] = nxt
        return nxt

    async def _discover(self, date: str) -> int:
        """Find the newest existing part of `date` (once per date and process)."""
        lock = self._discovering.setdefault(date, asyncio.Lock())
        async with lock:
            if date not in self._current:
                names = await self.parts(date)
                last = names[-1] if names else blob_name(self._prefix, date, 0)
                self._current[date] = int(last.rsplit(".", 2)[-2])
                # Forget dates long past so a long-running process does not collect them (not the
                # date just found, even if it is older than the rest: a backfill).
                if len(self._current) > 64:
                    for old in sorted(self._current)[:-32]:
                        if old != date:
                            self._current.pop(old, None)
                            self._discovering.pop(old, None)
        return self._current[date]

    async def _create(self, blob: Any) -> None:
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

        try:
            # If-None-Match: * so that a racing instance's blob is never replaced (that would erase it).
            await blob.create_append_blob(if_none_match="*")
        except (ResourceExistsError, ResourceModifiedError):
            pass

    async def parts(self, date: str) -> list[str]:
        container = self._client()
        names = [b.name async for b in container.list_blobs(name_starts_with=f"{self._prefix}{date}.")]
        return sort_parts(names, self._prefix, date)

    async def read(self, name: str) -> AsyncIterator[bytes]:
        # The bytes present now, range by range. One download of a blob past 32 MiB pins its later
        # chunks to the first one's ETag and fails once anyone appends; an append blob only grows,
        # so these ranges never change.
        blob = self._client().get_blob_client(name)
        size = (await blob.get_blob_properties()).size
        for offset in range(0, size, READ_CHUNK_BYTES):
            downloader = await blob.download_blob(offset=offset, length=min(READ_CHUNK_BYTES, size - offset))
            yield await downloader.readall()

    async def check(self) -> None:
        from azure.core.exceptions import AzureError

        try:
            await self._client().get_container_properties(retry_total=0)
        except AzureError as exc:
            raise StoreError(f"storage unreachable at {self.description}: {_reason(exc)}") from exc


def _reason(exc: Exception) -> str:
    code = getattr(exc, "error_code", None)
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{code}: {text}" if code else text


class DirectoryStore:
    """The same date-named parts as files under a local or network directory."""

    def __init__(self, root: Path, prefix: str = "") -> None:
        self._root = root
        self._prefix = prefix
        self.description = str(root)

    def _path(self, name: str) -> Path:
        return self._root / name

    async def open(self) -> None:
        await asyncio.to_thread((self._root / self._prefix).mkdir, parents=True, exist_ok=True)

    async def close(self) -> None:
        return None

    async def append(self, date: str, frame: bytes) -> Appended:
        name = blob_name(self._prefix, date, 0)
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

        return sort_parts(await asyncio.to_thread(scan), self._prefix, date)

    async def read(self, name: str) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(open, self._path(name), "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, READ_CHUNK_BYTES):
                yield chunk
        finally:
            handle.close()

    async def check(self) -> None:
        if not await asyncio.to_thread(os.access, self._root, os.W_OK):
            raise StoreError(f"directory {self._root} is missing or not writable")
