"""Where an export goes: a local directory or a blob container, one partition swapped in at a time.

A destination is given as one string (`--out`, or the `export_destination` setting):

- a directory path: `./exports`, `/mnt/lake/gateway`;
- a container URL, optionally with a prefix: `https://<account>.blob.core.windows.net/<container>[/<prefix>]`,
  signed in with `DefaultAzureCredential` (or a SAS if the URL carries one);
- a connection string naming the container (and optionally a prefix):
  `UseDevelopmentStorage=true;Container=exports` or `DefaultEndpointsProtocol=https;...;Container=exports;Prefix=gw/`.

A day's partition is replaced as a whole: the new files are written aside (a staging directory;
uncommitted blocks of the final blobs), then swapped in (two directory renames; one Put Block List
per file), then the old partition's other files are deleted. Readers never see a mix for longer
than the swap takes, and a re-export never duplicates a day. The day's marker is removed before
the swap and written after it, so a swap cut short (Ctrl-C, a killed process, a blob that cannot
be deleted) leaves the day without a marker: not claimed complete, and exported again by the next
scheduled run.

One export of a day at a time per destination: an export holds the day's lock from before it reads
the day (a Parquet export reads it twice) until its marker is written, and a second export of the
same day to the same destination fails at once (`ExportBusy`) instead of swapping in while the first
does, which could delete the first one's new files. In a container the lock is a lease on
`_blobwriter/exporting/<day>.lock` (LEASE_SECONDS, renewed while the export runs, so one stopped
without releasing it blocks the day for LEASE_SECONDS at most); in a directory it is a `flock` on the
same file (released by the system when the process ends, however it ends).

Every failure of the destination leaves it as a `StoreError`, through the stores' own error
boundaries (`_os_errors`, `_storage_errors`), so that `blobwriter export` reports it in one line
(exit 2) like a failure of the source; retries are bounded as the source's are (seconds, not minutes).
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import ipaddress
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlsplit, urlunsplit

from .. import casts
from ..blob_store import SDK_RETRIES, _public_url, _storage_errors
from ..casts import storage_kind
from ..config import Settings
from ..errors import ConfigError, StoreError
from ..store import _os_errors

MARKERS: Final = "_blobwriter/exported"  # one small JSON per exported day, outside the partitions
LOCKS: Final = "_blobwriter/exporting"  # <day>.lock while a day is exported
LEASE_SECONDS: Final = 60  # a lock's lease (Azure takes 15 to 60): renewed every quarter of it
BLOCK_BYTES: Final = 8 << 20
CONNECT_SECONDS: Final = 10.0  # as the source's connection_timeout: an unreachable destination fails in seconds


class Partition(Protocol):
    """The files of one new partition, staged until commit()."""

    def path(self, name: str) -> Path:
        """A local path to write the file `name` to."""

    async def add(self, name: str) -> None:
        """The file `name` is complete."""

    async def commit(self) -> None:
        """Swap the staged files in for the partition's old ones."""

    async def abort(self) -> None:
        """Drop what was staged; the old partition stays as it was."""


class ExportBusy(StoreError):
    """Another export of the same day to the same destination holds the day's lock."""


class DayLock(Protocol):
    async def check(self) -> None:
        """Raise if the lock was lost (a lease that could not be renewed in time): no swap without it."""


class Destination(Protocol):
    description: str

    def lock(self, day: str) -> AbstractAsyncContextManager[DayLock]:
        """Hold `day`'s lock at this destination, or raise ExportBusy if another export holds it."""

    async def partition(self, name: str) -> Partition:
        """Stage a new version of the partition `name` (e.g. `date=2026-11-24`)."""

    async def read_marker(self, day: str) -> bytes | None:
        """The marker of an exported day, or None."""

    async def write_marker(self, day: str, data: bytes) -> None:
        """Record that `day` was exported."""

    async def remove_marker(self, day: str) -> None:
        """Forget that `day` was exported (before its partition is swapped: a swap cut short leaves no marker)."""

    async def close(self) -> None:
        """Release connections."""


def open_destination(text: str, logs: Settings | None = None) -> Destination:
    """The destination a `--out` / export_destination value names; given the settings of the `logs` it
    exports, one in the logs' own container (or directory) is refused: plaintext beside the encrypted
    logs, readable by whoever may read them (docs/DEPLOY.md)."""
    destination = _parse_destination(text)
    if logs is not None and logs.storage and _same_place(destination, logs):
        raise ConfigError(f"the export destination {destination.description} is the logs' own "
                          f"{'directory' if isinstance(destination, DirectoryDestination) else 'container'}: "
                          "an export is plaintext, so it goes to a container (better, an account) of its own, "
                          "with its own readers (docs/DEPLOY.md, 'Exports')")
    return destination


def _parse_destination(text: str) -> Destination:
    text = text.strip()
    if not text:
        raise ConfigError("the export destination is empty")
    kind = storage_kind(text)
    scheme = _SCHEME.match(text)
    if kind == "directory" and scheme and scheme.group(1).lower() != "file":
        raise ConfigError(_unsupported_url(text, scheme.group(1)))
    if kind == "directory":
        return DirectoryDestination(Path(text.removeprefix("file://")))
    if kind == "connection_string":
        items = [p for p in text.split(";") if p.strip()]
        extra = {}
        rest = []
        for item in items:
            key, _, value = item.partition("=")
            if key.strip().lower() in ("container", "prefix"):
                extra[key.strip().lower()] = value.strip()
            else:
                rest.append(item)
        if not extra.get("container"):
            raise ConfigError("the export destination is a connection string without ';Container=NAME': "
                              "name the container to export to (e.g. UseDevelopmentStorage=true;Container=exports)")
        connection_string = ";".join(rest) + ";"
        # As the `storage` setting's is checked at load: a malformed one, or an AccountKey that is not base64,
        # is one line naming the destination (not the SDK's "Incorrect padding" at the first request).
        endpoint = casts.connection_string("export destination", connection_string)
        return BlobDestination(container=_container(extra["container"]), prefix=_prefix(extra.get("prefix", "")),
                               endpoint=endpoint, connection_string=connection_string)
    # As the `storage` setting's is checked at load: an http:// URL without a SAS, or a query that is no SAS,
    # is one line naming the destination (not the SDK's "Token credential is only supported with HTTPS").
    casts.account_url("export destination", text, container=";Container=NAME")
    parts = urlsplit(text)
    segments = [s for s in parts.path.split("/") if s]
    host = parts.hostname or ""
    path_style = host == "localhost" or _is_ip(host)  # Azurite-style: /<account>/<container>/...
    account_segments = 1 if path_style else 0
    if len(segments) <= account_segments:
        raise ConfigError(f"the export destination URL {urlunsplit(parts._replace(query=''))!r} names no container "
                          "(https://<account>.blob.core.windows.net/<container>[/<prefix>])")
    container = _container(segments[account_segments])
    prefix = _prefix("/".join(segments[account_segments + 1:]))
    account_url = urlunsplit((parts.scheme, parts.netloc, "/".join([""] + segments[:account_segments]), "", ""))
    return BlobDestination(container=container, prefix=prefix, endpoint=account_url, sas=parts.query or None)


_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def _unsupported_url(text: str, scheme: str) -> str:
    """Why a URL of another scheme is no destination (not a directory named `abfss:`), and what to write."""
    parts = urlsplit(text)
    message = (f"the export destination {scheme}://... is neither a directory, an http(s) container URL nor a "
               "connection string with ;Container=NAME")
    if scheme.lower() in ("abfs", "abfss", "wasb", "wasbs") and "@" in parts.netloc:
        container, _, host = parts.netloc.rpartition("@")
        account = host.split(".")[0]
        message += (f"; the same place through the Blob endpoint: https://{account}.blob.core.windows.net/"
                    f"{container}{parts.path}".rstrip("/"))
    return message


def _container(name: str) -> str:
    """A container name Azure takes, checked before any request (Azure's own answer names no field)."""
    return casts.container("export destination container", name)


def _prefix(prefix: str) -> str:
    """The prefix without its outer slashes, refused as blob_prefix is if the HTTP stack would normalize
    it ('..', '.', '//'): the blobs would land elsewhere, even in another container."""
    prefix = prefix.strip().strip("/")
    return casts.prefix("export destination prefix", prefix) if prefix else ""


def _same_place(destination: Destination, logs: Settings) -> bool:
    """Whether `destination` is in the logs' container (same account endpoint, same container: any prefix), or,
    for logs in a directory, in that directory. Compared as endpoints, never as the (secret) strings."""
    storage = logs.require("storage")
    if isinstance(destination, DirectoryDestination):
        if logs.storage_kind != "directory":
            return False
        root, there = Path(storage).resolve(), destination.root.resolve()
        return there == root or root in there.parents
    if not isinstance(destination, BlobDestination) or logs.storage_kind == "directory":
        return False
    if destination.container_name != logs.container:
        return False
    logs_url = casts.connection_string("storage", storage) if logs.storage_kind == "connection_string" else storage
    return _normalised(destination.endpoint) == _normalised(logs_url)


def _normalised(url: str) -> str:
    """A blob endpoint as compared: lower-case host, explicit port, no query (a SAS), no trailing slash;
    `localhost` as 127.0.0.1 (Azurite's two names)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    host = "127.0.0.1" if host == "localhost" else host
    port = parts.port or (443 if scheme == "https" else 80)
    return f"{host}:{port}/{parts.path.strip('/')}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


# -- a local (or mounted) directory ------------------------------------------------------------

class DirectoryDestination:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = str(root)

    @asynccontextmanager
    async def lock(self, day: str) -> AsyncIterator[DayLock]:
        path = self.root / LOCKS / f"{day}.lock"
        with _os_errors(f"creating the export directory {self.root}"):
            await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        with _os_errors(f"locking {path}"):
            descriptor = await asyncio.to_thread(_flock, path, f"{day} to {self.description}")
        try:
            yield _HeldLock()
        finally:
            with suppress(OSError):
                os.unlink(path)  # still locked: whoever opened it meanwhile sees it gone (_flock) and retries
            os.close(descriptor)

    async def partition(self, name: str) -> Partition:
        with _os_errors(f"creating the export directory {self.root}"):
            await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
            return await asyncio.to_thread(_DirectoryPartition, self.root, name)

    async def read_marker(self, day: str) -> bytes | None:
        path = self.root / MARKERS / f"{day}.json"
        try:
            with _os_errors(f"reading {path}"):
                return await asyncio.to_thread(path.read_bytes)
        except StoreError as exc:
            if exc.code == "ENOENT":
                return None
            raise

    async def write_marker(self, day: str, data: bytes) -> None:
        path = self.root / MARKERS / f"{day}.json"

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
            temporary.write_bytes(data)
            os.replace(temporary, path)

        with _os_errors(f"writing {path}"):
            await asyncio.to_thread(write)

    async def remove_marker(self, day: str) -> None:
        path = self.root / MARKERS / f"{day}.json"
        with _os_errors(f"removing {path}"):
            await asyncio.to_thread(path.unlink, missing_ok=True)

    async def close(self) -> None:
        return None


class _HeldLock:
    """A lock the system holds for as long as the process (a directory's flock): nothing to check."""

    async def check(self) -> None:
        return None


def _flock(path: Path, what: str) -> int:
    """An open descriptor of `path` holding its exclusive flock; ExportBusy if another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 32).decode("ascii", "replace").strip()
            os.close(descriptor)
            raise ExportBusy(f"another export of {what} is running (process {holder or '?'} holds {path}): "
                             "try again when it has finished") from None
        except BaseException:
            os.close(descriptor)
            raise
        try:
            same = os.fstat(descriptor).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its last holder removed after this process opened it
            os.ftruncate(descriptor, 0)
            os.write(descriptor, f"{os.getpid()}\n".encode())
            return descriptor
        os.close(descriptor)


class _DirectoryPartition:
    """Files go to ROOT/.staging-<id>/<partition>/; commit renames the old partition away and this one in."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.run = uuid.uuid4().hex[:12]
        self.staging = root / f".staging-{self.run}"
        self.folder = self.staging / name
        self.folder.mkdir(parents=True)

    def path(self, name: str) -> Path:
        return self.folder / name

    async def add(self, name: str) -> None:
        return None

    async def commit(self) -> None:
        def swap() -> None:
            final = self.root / self.name
            old = self.root / f".replaced-{self.run}"
            if final.exists():
                os.rename(final, old)
            os.rename(self.folder, final)
            shutil.rmtree(old, ignore_errors=True)
            shutil.rmtree(self.staging, ignore_errors=True)

        with _os_errors(f"replacing {self.root / self.name}"):
            await asyncio.to_thread(swap)

    async def abort(self) -> None:
        await asyncio.to_thread(shutil.rmtree, self.staging, True)


# -- a blob container ----------------------------------------------------------------------------

class BlobDestination:
    """Block blobs `<prefix>/<partition>/<file>` in a container (created if missing)."""

    def __init__(self, *, container: str, endpoint: str, prefix: str = "", connection_string: str | None = None,
                 sas: str | None = None) -> None:
        """`endpoint`: the account's blob endpoint URL, the one `connection_string` names if given (signed
        with it), else signed with `sas` or, without one, Entra ID (DefaultAzureCredential)."""
        self.container_name = container
        self.endpoint = endpoint
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._connection_string = connection_string
        self._sas = sas
        self._service: Any = None
        self._container: Any = None
        self._credential: Any = None
        self._ready = False
        self.description = f"{_public_url(endpoint)}/{container}/{self.prefix}".rstrip("/")

    async def _client(self) -> Any:
        if self._container is None:
            from azure.storage.blob.aio import BlobServiceClient, ExponentialRetry

            # The source's retries (blob_store): the SDK's defaults retry an unreachable host for minutes.
            options: dict[str, Any] = {
                "retry_policy": ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=SDK_RETRIES,
                                                 random_jitter_range=1),
                "connection_timeout": CONNECT_SECONDS,
            }
            if self._connection_string is not None:
                self._service = BlobServiceClient.from_connection_string(self._connection_string, **options)
            elif self._sas:
                self._service = BlobServiceClient(self.endpoint, credential=self._sas, **options)
            else:
                from azure.identity.aio import DefaultAzureCredential

                self._credential = DefaultAzureCredential()
                self._service = BlobServiceClient(self.endpoint, credential=self._credential, **options)
            self._container = self._service.get_container_client(self.container_name)
            # The service URL carries a SAS (a credential) when one was given: never in a message or a log.
            self.description = f"{_public_url(self._service.url)}/{self.container_name}/{self.prefix}".rstrip("/")
        if not self._ready:
            from azure.core.exceptions import HttpResponseError, ResourceExistsError

            with _storage_errors("creating the export container", self.description):
                try:
                    await self._container.create_container()
                except ResourceExistsError:
                    pass
                except HttpResponseError as exc:
                    if exc.status_code != 403:  # a writer scoped to one existing container may not create any
                        raise
            self._ready = True
        return self._container

    @asynccontextmanager
    async def lock(self, day: str) -> AsyncIterator[DayLock]:
        container = await self._client()
        name = f"{self.prefix}{LOCKS}/{day}.lock"
        blob = container.get_blob_client(name)
        with _storage_errors(f"locking {name}", self.description):
            lease = await _lease(blob, f"{day} to {self.description}", name)
        held = _Lease(lease, name, self.description)
        try:
            yield held
        finally:
            await held.release(blob)

    async def partition(self, name: str) -> Partition:
        return _BlobPartition(self, await self._client(), self.prefix + name + "/")

    async def read_marker(self, day: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        container = await self._client()
        name = f"{self.prefix}{MARKERS}/{day}.json"
        with _storage_errors(f"reading {name}", self.description):
            try:
                downloader = await container.get_blob_client(name).download_blob()
                return bytes(await downloader.readall())
            except ResourceNotFoundError:
                return None

    async def write_marker(self, day: str, data: bytes) -> None:
        from azure.storage.blob import ContentSettings

        container = await self._client()
        name = f"{self.prefix}{MARKERS}/{day}.json"
        with _storage_errors(f"writing {name}", self.description):
            await container.get_blob_client(name).upload_blob(
                data, overwrite=True, content_settings=ContentSettings(content_type="application/json"))

    async def remove_marker(self, day: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        container = await self._client()
        name = f"{self.prefix}{MARKERS}/{day}.json"
        with _storage_errors(f"removing {name}", self.description):
            try:
                await container.delete_blob(name)
            except ResourceNotFoundError:
                pass

    async def close(self) -> None:
        if self._service is not None:
            await self._service.close()
        if self._credential is not None:
            await self._credential.close()
        self._service = self._container = self._credential = None


async def _lease(blob: Any, what: str, name: str) -> Any:
    """A lease on the lock blob `blob` (created if missing), or ExportBusy if another export holds one."""
    from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

    while True:
        try:
            await blob.upload_blob(b"", overwrite=False)  # If-None-Match: *
        except ResourceExistsError:
            pass
        except HttpResponseError as exc:
            if exc.status_code != 412:  # exists, and leased
                raise
        try:
            return await blob.acquire_lease(lease_duration=LEASE_SECONDS)
        except ResourceNotFoundError:
            continue  # its holder deleted it as it finished: create it again
        except HttpResponseError as exc:
            if exc.status_code == 409:
                raise ExportBusy(f"another export of {what} is running (it holds the lease on {name}): try again "
                                 f"when it has finished (one that stopped without finishing lets go of it within "
                                 f"{LEASE_SECONDS} s)", code="LeaseAlreadyPresent", status=409) from None
            raise


class _Lease:
    """A held lease on a lock blob, renewed in the background every quarter of LEASE_SECONDS."""

    def __init__(self, lease: Any, name: str, where: str) -> None:
        self.lease = lease
        self.name = name
        self.where = where
        self.lost: BaseException | None = None
        self.task = asyncio.create_task(self._renew())

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 4)
            try:
                await self.lease.renew()
            except Exception as exc:
                self.lost = exc
                return

    async def check(self) -> None:
        if self.lost is None:
            try:
                await self.lease.renew()
            except Exception as exc:
                self.lost = exc
        if self.lost is not None:
            with _storage_errors(f"renewing the lease on {self.name}", self.where):
                raise self.lost

    async def release(self, blob: Any) -> None:
        """Delete the lock blob under the lease; if that fails, the lease runs out on its own."""
        self.task.cancel()
        with suppress(asyncio.CancelledError):
            await self.task
        with suppress(Exception):
            await blob.delete_blob(lease=self.lease)


class _BlobPartition:
    """Each file is staged as uncommitted blocks of its final blob (invisible to readers); commit
    puts every block list, then deletes the partition's blobs this export did not write."""

    def __init__(self, destination: BlobDestination, container: Any, folder: str) -> None:
        self.description = destination.description
        self.container = container
        self.folder = folder
        self.run = uuid.uuid4().hex[:16]
        self.local = Path(tempfile.mkdtemp(prefix="blobwriter-export-"))
        self.blocks: dict[str, list[str]] = {}

    def path(self, name: str) -> Path:
        return self.local / name

    async def add(self, name: str) -> None:
        blob = self.container.get_blob_client(self.folder + name)
        ids: list[str] = []
        path = self.path(name)
        with path.open("rb") as handle, _storage_errors(f"uploading {self.folder}{name}", self.description):
            while chunk := await asyncio.to_thread(handle.read, BLOCK_BYTES):
                block_id = base64.b64encode(f"{self.run}-{len(ids):08d}".encode()).decode()
                await blob.stage_block(block_id, chunk, length=len(chunk))
                ids.append(block_id)
        path.unlink()
        self.blocks[name] = ids

    async def commit(self) -> None:
        from azure.storage.blob import BlobBlock, ContentSettings

        kinds = {".parquet": "application/vnd.apache.parquet", ".gz": "application/gzip"}
        with _storage_errors(f"replacing {self.folder}", self.description):
            for name, ids in self.blocks.items():
                blob = self.container.get_blob_client(self.folder + name)
                settings = ContentSettings(content_type=kinds.get(Path(name).suffix, "application/octet-stream"))
                await blob.commit_block_list([BlobBlock(block_id=i) for i in ids], content_settings=settings)
            stale = [b.name async for b in self.container.list_blobs(name_starts_with=self.folder)
                     if b.name[len(self.folder):] not in self.blocks]
            for name in stale:
                await self.container.delete_blob(name)
        shutil.rmtree(self.local, ignore_errors=True)

    async def abort(self) -> None:
        # Uncommitted blocks are dropped by storage within a week, or by the next commit of the blob.
        shutil.rmtree(self.local, ignore_errors=True)
