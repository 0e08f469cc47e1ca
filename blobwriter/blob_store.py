"""Azure append blobs through the azure-storage-blob aio SDK.

`_storage_errors` is the one place where azure-core's exceptions become `StoreError`, keeping the
service's error code and HTTP status; it is used around every SDK call. Credentials never cross it:
SDK and aiohttp messages can hold a request's URL, SAS signature included ("Connection timeout to
host https://...&sig=..."), so each message is scrubbed (`redact`) and the SDK exception is not
chained to the StoreError (a logged traceback would show it). An append is never sent
twice by the layers below: the SDK's retries are off for it, and `_never_resend_appends` stops
aiohttp from resending it on a dropped kept-alive connection (the writer retries, sealed anew).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from itertools import islice
from typing import Any
from urllib.parse import urlsplit

from . import layout
from .config import Settings
from .errors import StoreError
from .store import Appended

log = logging.getLogger("blobwriter.store")

SDK_RETRIES = 3  # quick in-request retries of transient errors (not appends: the writer retries those)
# A blob being read downloads RANGES_IN_FLIGHT ranges of DOWNLOAD_BYTES at once. 8 MiB rather than
# the SDK's 4 MiB halves the billed read operations, and Azurite (the stand-in here and in CI) reads
# every range of at most 4 MiB twice to answer it with an MD5 nobody asked for: over it, a read of a
# day cost it half the CPU (docs/BENCHMARKS-QUERY.md). Under 32 MiB, so one GET each. The reader's
# Prefetch (decoding.RANGES_AHEAD) buffers ranges of this size on top of those in flight.
DOWNLOAD_BYTES = 8 * 1024 * 1024
RANGES_IN_FLIGHT = 2
DOWNLOAD_BLOCK_BYTES = 256 * 1024  # what a download's body is read in (the storage SDK's own default)
# A 403 that says the credential is valid but not for this operation (not AuthenticationFailed).
PROBE_NOT_PERMITTED = {"AuthorizationPermissionMismatch", "AuthorizationResourceTypeMismatch"}


# Credentials as they appear in URLs, connection strings and headers: a SAS signature (`sig=`), an
# account or shared access key, a whole SAS token, a SharedKey or Bearer authorization, a function key.
_SECRETS = (
    (re.compile(r"(?i)\b(sig|signature|code)=[^&\s'\"<>;,)]*"), r"\1=REDACTED"),
    (re.compile(r"(?i)\b(AccountKey|SharedAccessKey|SharedAccessSignature)=[^;\s'\"<>]*"), r"\1=REDACTED"),
    (re.compile(r"(?i)\b(SharedKey(?:Lite)?)\s+([^\s:]+):[A-Za-z0-9+/=%]+"), r"\1 \2:REDACTED"),
    (re.compile(r"(?i)\bBearer\s+[A-Za-z0-9._~+/=-]+"), "Bearer REDACTED"),
)


def redact(text: str) -> str:
    """`text` with every credential it may hold (SAS signature, keys, authorization) replaced by REDACTED."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _reason(exc: BaseException) -> str:
    """The first line of an exception's message (its callers redact the whole message they build)."""
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def _storage_errors(what: str, where: str) -> Iterator[None]:
    """Raise StoreError for any failure of the SDK calls inside: `what` failed at `where`."""
    from aiohttp import ClientError
    from azure.core.exceptions import AzureError, HttpResponseError

    try:
        yield
    except HttpResponseError as exc:
        code = getattr(exc, "error_code", None)
        # The service's code as it sent it: the SDK makes most codes a StorageErrorCode, whose str() is
        # "StorageErrorCode.SERVER_BUSY", not "ServerBusy" (the appender's rules compare the service's).
        code = str(getattr(code, "value", code)) if code is not None else None
        status = exc.status_code
        detail = f"{status} {code}" if code else f"{status}"
        raise StoreError(redact(f"{what} at {where} failed: {detail}: {_reason(exc)}"), code=code,
                         status=status) from None
    except AzureError as exc:  # no answer: connection refused or reset, timeout
        raise StoreError(redact(f"{what} at {where} failed: {type(exc).__name__}: {_reason(exc)}")) from None
    except (TimeoutError, ClientError, OSError) as exc:  # transport errors azure-core did not wrap
        raise StoreError(redact(f"{what} at {where} failed: {type(exc).__name__}: {_reason(exc)}")) from None


class AppendNotResent(Exception):
    """Raised (as an aiohttp ClientError) instead of letting aiohttp resend an Append Block."""


def _never_resend_appends() -> Any:
    """An aiohttp client middleware (public API since aiohttp 3.12) that turns a dropped connection
    during an Append Block into an error aiohttp does not retry.

    aiohttp resends an idempotent request (PUT) once when a kept-alive connection drops before the
    answer. Append Block is not idempotent: the first copy may have landed, and the resend would land
    the same bytes again, which readers must report as a replay. The writer retries appends itself,
    sealed anew, so that a reader can drop the extra copy as a retry.
    """
    from aiohttp import ClientConnectorError, ClientError, ClientOSError, ServerDisconnectedError

    class DroppedAppend(AppendNotResent, ClientError):
        pass

    async def middleware(request: Any, handler: Any) -> Any:
        try:
            return await handler(request)
        except (ClientOSError, ServerDisconnectedError) as exc:
            # A connection that was never made sent nothing (and aiohttp does not resend it): its own error
            # says so. Only a drop after the request went out leaves the outcome unknown.
            if isinstance(exc, ClientConnectorError):
                raise
            if request.method == "PUT" and request.url.query.get("comp") == "appendblock":
                raise DroppedAppend(f"connection dropped during an append ({type(exc).__name__}); "
                                    "not resent, the outcome is unknown") from exc
            raise

    return middleware


def _public_url(url: str) -> str:
    """An endpoint URL without its query string (a SAS token is a credential) or user info."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}".rstrip("/")


class AppendBlobStore:
    """Date-named Azure append blobs, rolled to a new part before the committed-block limit."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.prefix = settings.blob_prefix
        self._service: Any = None
        self._container: Any = None
        self._credential: Any = None
        self._session: Any = None
        self.description = f"container {settings.container!r}"
        self._container_seen = False  # open() found or made the container: if it goes missing, it was deleted

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
            middlewares=(_never_resend_appends(),),
        )
        # The timeouts go to the transport: given a transport, the client ignores its own timeout options.
        # So does the block size a download is read in: azure-core's own default is 4 KiB, a Python
        # step per 4 KiB (a CPU second a day read); the storage SDK's, for the transport it makes, 256 KiB.
        timeouts = {"connection_timeout": min(10.0, s.storage_timeout), "read_timeout": s.storage_timeout}
        options: dict[str, Any] = {
            "transport": AioHttpTransport(session=self._session, session_owner=False,
                                          connection_data_block_size=DOWNLOAD_BLOCK_BYTES, **timeouts),
            "retry_policy": ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=SDK_RETRIES,
                                             random_jitter_range=1),
            **timeouts,
        }
        storage = s.require("storage")
        url, _, sas = storage.partition("?")
        if s.storage_kind == "connection_string":
            self._service = BlobServiceClient.from_connection_string(storage, **options)
        elif sas:  # an account URL with a SAS token (an account SAS, or one of the container)
            self._service = BlobServiceClient(url, credential=sas, **options)
        else:
            from azure.identity.aio import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
            self._service = BlobServiceClient(storage, credential=self._credential, **options)
        self.description = f"{_public_url(self._service.url)}/{s.container}"
        self._container = self._service.get_container_client(s.container)
        return self._container

    async def open(self) -> None:
        container = self._client()
        try:
            with _storage_errors("creating the container", self.description):
                await container.create_container(retry_total=0)  # start-up must not hang on a dead store
            log.info("Created container %s", self.description)
        except StoreError as exc:
            # Exists already: fine. An identity scoped to one existing container may not create
            # containers (403): fine too, if it exists and storage knows the credentials; a wrong
            # account key or signature is refused the same way, and would go unnoticed until the first
            # append, so the probe tells them apart.
            if exc.status == 403:
                await self.check()
            elif exc.code != "ContainerAlreadyExists" and exc.status != 409:
                raise
        self._container_seen = True

    async def close(self) -> None:
        if self._service is not None:
            await self._service.close()
        if self._credential is not None:
            await self._credential.close()
        if self._session is not None:
            await self._session.close()
        self._service = self._container = self._credential = self._session = None

    async def append(self, name: str, data: bytes) -> Appended:
        blob = self._client().get_blob_client(name)
        for _ in range(3):  # append; if the blob (or the container) is missing, create it and append again
            try:
                with _storage_errors(f"appending to {name}", self.description):
                    # No SDK retries: an append that timed out may have landed, and the SDK would resend
                    # the same bytes (a "replayed frame"); the writer retries with frames sealed anew.
                    result = await blob.append_block(data, length=len(data), retry_total=0)
                return Appended(int(result["blob_append_offset"]), int(result.get("blob_committed_block_count") or 0))
            except StoreError as exc:
                if exc.status != 404:
                    raise
                if exc.code == "ContainerNotFound":
                    if self._container_seen:  # not only "storage was down when open() ran"
                        log.warning("Container %s not found while appending to %s: creating it again (if it "
                                    "was deleted, every blob it held is gone)", self.description, name)
                    await self.open()
                await self._create(blob, name)
        raise StoreError(f"appending to {name} at {self.description} failed: the blob keeps disappearing",
                         code="BlobNotFound", status=404)

    async def _create(self, blob: Any, name: str) -> None:
        try:
            with _storage_errors(f"creating {name}", self.description):
                # If-None-Match: * so that a blob made meanwhile is never replaced (that would erase it).
                await blob.create_append_blob(if_none_match="*")
        except StoreError as exc:
            if exc.status not in (409, 412):  # created meanwhile: fine
                raise

    async def parts(self, date: str) -> list[str]:
        return list(await self.sizes(date))  # one listing gives both: names in reading order, and sizes

    async def sizes(self, date: str) -> dict[str, int]:
        container = self._client()
        with _storage_errors(f"listing the blobs of {date}", self.description):
            found = {b.name: b.size async for b in container.list_blobs(
                name_starts_with=layout.listing_prefix(self.prefix, date))}
        return {name: found[name] for name in layout.sort_parts(list(found), self.prefix, date)}

    async def read(self, name: str) -> AsyncIterator[bytes]:
        # The bytes present now, range by range. One download of a blob past 32 MiB pins its later
        # ranges to the first one's ETag and fails once anyone appends; an append blob only grows,
        # so these ranges never change. RANGES_IN_FLIGHT ranges download at once (a request's
        # latency, not the bandwidth, bounds one range at a time); they are yielded in order.
        blob = self._client().get_blob_client(name)
        with _storage_errors(f"reading {name}", self.description):
            size = (await blob.get_blob_properties()).size

        async def download(offset: int) -> bytes:
            with _storage_errors(f"reading {name}", self.description):
                downloader = await blob.download_blob(offset=offset, length=min(DOWNLOAD_BYTES, size - offset))
                return bytes(await downloader.readall())

        offsets = iter(range(0, size, DOWNLOAD_BYTES))
        in_flight = deque(asyncio.ensure_future(download(offset)) for offset in islice(offsets, RANGES_IN_FLIGHT))
        try:
            while in_flight:
                data = await in_flight.popleft()
                following = next(offsets, None)
                if following is not None:
                    in_flight.append(asyncio.ensure_future(download(following)))
                yield data
        finally:  # stopped early, or a range failed: the others are not wanted (nor their errors)
            for download_task in in_flight:
                download_task.cancel()
                if download_task.done() and not download_task.cancelled():
                    download_task.exception()

    async def check(self) -> None:
        try:
            with _storage_errors("storage unreachable: probe", self.description):
                await self._client().get_container_properties(retry_total=0)
        except StoreError as exc:
            # Storage answered and took the credential, which may not read the container's properties: a
            # SAS of the container never may (a service SAS), an account SAS may lack the permission. What
            # the probe asks is answered; whether it may append, appends tell.
            if exc.status != 403 or exc.code not in PROBE_NOT_PERMITTED:
                raise
