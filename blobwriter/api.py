"""The HTTP API, one ASGI app for both hosts: `blobwriter serve` (uvicorn) and Azure Functions.

POST /api/logs    one JSON object, a JSON array of objects, or NDJSON -> 202 {"accepted": N} once
                  queued, or 200 {"written": N} once appended: the `ack` setting chooses, and a
                  request's ?wait=true|false overrides it
GET  /api/health  200 while the writer runs and storage answers, else 503 (details only with the key)
GET  /api/metrics Prometheus text exposition of the writer's counters

A request is all or nothing: every entry is parsed (bodies.py) and admitted before any is queued. Every
failure becomes an answer in one place, `error_response`, which maps blobwriter's exceptions
(and the router's) to status codes.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .bodies import JSON_TYPES, NDJSON_TYPES, parse_body
from .config import Settings
from .errors import (
    ConfigError,
    EntryError,
    EntryTooLargeError,
    QueueFullError,
    StoreError,
    WriteFailedError,
    WriterStoppedError,
)
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .privacy import Privacy, check_paths
from .writer import LogWriter, WriterState

log = logging.getLogger("blobwriter.api")

DURABLE_WAIT_SECONDS = 120.0  # below the 230 s limit Azure puts on an HTTP-triggered function
API_KEY_HEADER = b"x-functions-key"
PARSE_IN_THREAD_BYTES = 256 * 1024  # bodies larger than this are parsed and admitted in a worker thread


class HTTPError(Exception):
    """A failure that is only HTTP's business (auth, content type, body size): status and message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


class DurableWaitTimeout(Exception):
    """?wait=true: the entries are queued but not yet written after DURABLE_WAIT_SECONDS."""

    def __init__(self, accepted: int) -> None:
        super().__init__(f"not yet written after {DURABLE_WAIT_SECONDS:.0f}s; the entries stay queued and are "
                         "written when storage recovers")
        self.accepted = accepted


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def error_response(exc: Exception, where: str = "index") -> Response:
    """The one mapping from a failure to an HTTP answer (JSON `{"error": ...}`)."""
    if isinstance(exc, HTTPError):
        return _json(exc.status, {"error": str(exc)}, exc.headers)
    if isinstance(exc, HTTPException):  # the router: 404, 405
        return _json(exc.status_code, {"error": exc.detail}, dict(exc.headers or {}))
    if isinstance(exc, EntryError):
        body: dict[str, Any] = {"error": f"{exc}; nothing from this request was queued"}
        if exc.position is not None:
            body[where] = exc.position
        return _json(413 if isinstance(exc, EntryTooLargeError) else 400, body)
    if isinstance(exc, QueueFullError | WriterStoppedError):
        retry_after = str(round(exc.retry_after))
        body = {"error": str(exc), "retry_after": round(exc.retry_after)}
        return _json(503, body, {"Retry-After": retry_after})
    if isinstance(exc, WriteFailedError | StoreError):
        return _json(503, {"error": str(exc)})
    if isinstance(exc, DurableWaitTimeout):
        return _json(504, {"error": str(exc), "accepted": exc.accepted})
    raise exc


class _Accepted:
    """The 202 answer as two ASGI messages: the same bytes as _json(202, ...), without building a Response."""

    __slots__ = ("body",)

    def __init__(self, count: int) -> None:
        self.body = b'{"accepted":%d}' % count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 202,
                    "headers": [(b"content-length", b"%d" % len(self.body)), (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": self.body})


class _App(Starlette):
    """Starlette, but POST /api/logs goes straight to its endpoint, past the middleware stack and router:
    the endpoint answers every outcome itself, and this is the hot path."""

    ingest: IngestEndpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/api/logs" and not scope.get("root_path"):
            scope["app"] = self
            await self.ingest(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


class KeyCheck:
    """BLOBWRITER_API_KEY as `blobwriter serve` checks it: the x-functions-key header or ?code=."""

    REFUSED = "missing or wrong API key: send it as the x-functions-key header or ?code="

    def __init__(self, settings: Settings, check_key: bool) -> None:
        self._api_key = settings.api_key.encode() if check_key and settings.api_key else None

    def authenticated(self, headers: dict[bytes, bytes], query: dict[str, list[str]]) -> bool | None:
        """True with the right key, or when no key is checked (none set; or Functions, whose host checked
        its function key); None when no key was sent; 401 HTTPError for a wrong one."""
        if self._api_key is None:
            return True
        given = headers.get(API_KEY_HEADER) or query.get("code", [""])[0].encode()
        if not given:
            return None
        if not hmac.compare_digest(given, self._api_key):
            raise HTTPError(401, self.REFUSED)
        return True

    def require(self, headers: dict[bytes, bytes], query: dict[str, list[str]]) -> None:
        """401 HTTPError unless `authenticated` (no key sent counts as a wrong one)."""
        if not self.authenticated(headers, query):
            raise HTTPError(401, self.REFUSED)


def query_of(scope: Scope) -> dict[str, list[str]]:
    """The query string's parameters; a bare `?wait` or `?wait=` is kept, as an empty value."""
    return parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)


def privacy_override(query: dict[str, list[str]], received_at_field: str | None = None) -> Privacy | None:
    """A request's own privacy controls (query parameters), which can only keep less than the settings:
    ?metadata_only=true, ?drop=a.b,c, ?mask=request.messages.*.content, ?truncate_bytes=N. A path is refused
    as the settings refuse it (`privacy.check_kept`; `received_at_field` is the writer's)."""
    if not any(name in query for name in ("metadata_only", "drop", "mask", "truncate_bytes")):
        return None
    metadata_only = False
    if "metadata_only" in query:
        value = query["metadata_only"][-1].strip().lower()
        if value not in ("true", "1", "yes", ""):
            raise HTTPError(400, f"metadata_only={value[:20]!r}: a request can only keep less than the settings "
                                 "say, so the one value is true")
        metadata_only = True
    truncate: int | None = None
    if "truncate_bytes" in query:
        text = query["truncate_bytes"][-1].strip()
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 1 << 30:
            raise HTTPError(400, f"truncate_bytes={text[:20]!r}: a whole number of bytes (1 or more)")
        truncate = int(text)
    paths = {name: tuple(p.strip() for v in query.get(name, []) for p in v.split(",") if p.strip())
             for name in ("drop", "mask")}
    try:
        check_paths((*paths["drop"], *paths["mask"]), received_at_field)
        return Privacy(drop=paths["drop"], mask=paths["mask"], truncate_bytes=truncate, metadata_only=metadata_only)
    except ValueError as exc:
        raise HTTPError(400, f"privacy parameters: {exc}") from None


class IngestEndpoint:
    """POST /api/logs as a bare ASGI endpoint: the hot path, kept free of framework layers."""

    def __init__(self, settings: Settings, writer: Callable[[], Awaitable[LogWriter]], check_key: bool) -> None:
        self._max_body = settings.max_body_bytes
        self._ack_written = settings.ack == "written"
        self._received_at_field = settings.received_at_field
        self._body_timeout = settings.body_timeout
        self._max_bodies = settings.max_concurrent_bodies
        self._reading = 0  # bodies being read now
        self._keys = KeyCheck(settings, check_key)
        self._writer = writer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response: ASGIApp
        where = "index"
        try:
            if scope["method"] != "POST":
                raise HTTPError(405, "method not allowed; use POST", {"Allow": "POST"})
            headers = dict(scope["headers"])
            content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower().decode("latin-1")
            where = "line" if content_type in NDJSON_TYPES else "index"
            response = await self._ingest(scope, receive, headers, content_type, where)
        except Exception as exc:
            response = error_response(exc, where)
        await response(scope, receive, send)

    async def _ingest(self, scope: Scope, receive: Receive, headers: dict[bytes, bytes], content_type: str,
                      where: str) -> ASGIApp:
        query = query_of(scope)
        self._keys.require(headers, query)
        if content_type not in JSON_TYPES and content_type not in NDJSON_TYPES:
            raise HTTPError(415, f"unsupported Content-Type {content_type!r}; send application/json "
                                 "(an object or an array of objects) or application/x-ndjson")
        coding = headers.get(b"content-encoding", b"identity").strip().lower()
        if coding != b"identity":
            raise HTTPError(415, f"unsupported Content-Encoding {coding.decode('latin-1')[:40]!r}; send the body "
                                 "uncompressed", {"Accept-Encoding": "identity"})
        privacy = privacy_override(query, self._received_at_field)
        declared = headers.get(b"content-length")
        size = int(declared) if declared is not None and declared.isdigit() else None
        if size is not None and size > self._max_body:
            raise HTTPError(413, f"body of {size} bytes is over the limit of {self._max_body} (max_body_bytes)",
                            {"Connection": "close"})
        writer = await self._writer()
        if size is not None:  # refused before a byte of the body is read (or, with Expect: 100-continue, sent)
            writer.shed(size)
        body = await self._read_body(receive)
        if size is None:  # chunked: its size is known once it is read
            writer.shed(len(body))
        values = parse_body(body, content_type)
        if len(body) > PARSE_IN_THREAD_BYTES:  # keep the event loop answering other requests meanwhile
            prepared = await asyncio.to_thread(writer.admit, values, where=where, privacy=privacy, from_json=True)
        else:
            prepared = writer.admit(values, where=where, privacy=privacy, from_json=True)
        durable = self._wait(query)
        future = writer.submit(prepared, durable=durable)
        if future is None:
            return _json(200, {"written": 0}) if durable else _Accepted(len(prepared))  # durable: nothing to wait for
        try:
            await asyncio.wait_for(asyncio.shield(future), DURABLE_WAIT_SECONDS)
        except TimeoutError:
            raise DurableWaitTimeout(len(prepared)) from None
        return _json(200, {"written": len(prepared)})

    def _wait(self, query: dict[str, list[str]]) -> bool:
        """Answer once written (200) or once queued (202): ?wait= if given, else the `ack` setting."""
        given = query.get("wait")
        if not given:
            return self._ack_written
        text = given[0].strip().lower()
        if text in ("true", "1", "yes", ""):
            return True
        if text in ("false", "0", "no"):
            return False
        raise HTTPError(400, f"wait must be true or false, not {given[0][:20]!r}")

    async def _read_body(self, receive: Receive) -> bytes:
        """Read the body, refusing (413) as soon as it passes max_body_bytes, (408) if it is not all there
        within body_timeout, and (503) when max_concurrent_bodies bodies are still arriving already.

        A body that arrived whole is read at once and takes no slot: the slots count only the bodies
        still arriving (slow or stalled clients, each holding a connection and up to max_body_bytes)."""
        limit = self._max_body
        try:
            async with asyncio.timeout(self._body_timeout):
                first, more = _chunk(await receive(), 0, limit)
                if not more:
                    return first
                if self._reading >= self._max_bodies:
                    raise HTTPError(503, f"{self._reading} request bodies are arriving already "
                                         "(max_concurrent_bodies): retry later",
                                    {"Retry-After": "1", "Connection": "close"})
                self._reading += 1
                try:
                    chunks, size = [first], len(first)
                    while more:
                        chunk, more = _chunk(await receive(), size, limit)
                        chunks.append(chunk)
                        size += len(chunk)
                finally:
                    self._reading -= 1
                return b"".join(chunks)
        except TimeoutError:
            raise HTTPError(408, f"the request body did not arrive within {self._body_timeout:g} s (body_timeout)",
                            {"Connection": "close"}) from None


def _chunk(message: Any, size: int, limit: int) -> tuple[bytes, bool]:
    """One http.request message's body bytes, and whether more follow; `size` bytes came before them."""
    if message["type"] == "http.disconnect":
        raise HTTPError(400, "client disconnected before sending the whole body")
    chunk: bytes = message.get("body", b"")
    if size + len(chunk) > limit:
        raise HTTPError(413, f"body is over the limit of {limit} bytes (max_body_bytes)", {"Connection": "close"})
    return chunk, bool(message.get("more_body", False))


class WriterHolder:
    """The host's side of the writer: starts it once (at lifespan startup, or lazily on first use where
    startup never ran), stops it, and optionally flushes it on SIGTERM (for hosts that send one)."""

    def __init__(self, settings: Settings, handle_sigterm: bool) -> None:
        self.settings = settings
        self.writer: LogWriter | None = None
        self._handle_sigterm = handle_sigterm
        self._sigterm_installed = False
        self._previous_sigterm: Any = None
        self._lock = asyncio.Lock()
        self._stopping: asyncio.Future[None] | None = None

    async def get(self) -> LogWriter:
        if self.writer is None or self.writer.state == WriterState.NEW:
            async with self._lock:
                if self.writer is None:
                    self.writer = LogWriter(self.settings)
                if self.writer.state == WriterState.NEW:
                    await self.writer.start()
                    if self._handle_sigterm:
                        self._install_sigterm()
        return self.writer

    async def stop(self) -> None:
        """Stop the writer, writing out its queue, once: a second call (serve starts the flush when it
        begins shutting down, the lifespan's end asks again) waits for the first."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        if self.writer is not None:
            await self.writer.stop()
        self._remove_sigterm()

    def _install_sigterm(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._previous_sigterm = signal.getsignal(signal.SIGTERM)
            loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
            self._sigterm_installed = True
        except (ValueError, RuntimeError, NotImplementedError) as exc:  # not the main thread, or no support
            log.debug("Not flushing on SIGTERM: cannot install a handler here (%s)", exc)

    def _remove_sigterm(self) -> None:
        if self._sigterm_installed:
            self._sigterm_installed = False
            asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._previous_sigterm)

    def _on_sigterm(self) -> None:
        writer = self.writer
        log.info("SIGTERM: flushing %d queued log entries before exit", writer.queue_depth if writer else 0)

        async def flush_then_exit() -> None:
            await self.stop()
            signal.raise_signal(signal.SIGTERM)  # the handler in place before ours now runs

        asyncio.get_running_loop().create_task(flush_then_exit())


def create_app(settings: Settings, *, check_api_key: bool = True, handle_sigterm: bool = False) -> Starlette:
    """The ASGI app. `check_api_key` is off under Functions, whose host checks function keys;
    `handle_sigterm` flushes the queue on SIGTERM (Functions; uvicorn handles signals itself)."""
    settings.require("storage", "encryption_key")
    holder = WriterHolder(settings, handle_sigterm)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await holder.get()
        try:
            yield
        finally:
            await holder.stop()

    keys = KeyCheck(settings, check_api_key)

    async def health(request: Request) -> Response:
        # Storage is probed at most every few seconds however often this is called (LogWriter.health).
        # Without the key: whether all is well and the writer's state, no error text, ids or figures.
        try:
            authenticated = keys.authenticated(dict(request.scope["headers"]), query_of(request.scope))
        except HTTPError as exc:
            return error_response(exc)
        status = await (await holder.get()).health()
        if not authenticated:
            status = {"ok": status["ok"], "state": status["state"],
                      "detail": "send the API key (x-functions-key or ?code=) for details"}
        return _json(200 if status["ok"] else 503, status)

    async def metrics(request: Request) -> Response:
        try:  # the counters are not secret, but whoever may not write should not watch either
            keys.require(dict(request.scope["headers"]), query_of(request.scope))
        except HTTPError as exc:
            return error_response(exc)
        writer = await holder.get()
        return Response(writer.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def http_error(request: Request, exc: Exception) -> Response:
        return error_response(exc)

    ingest = IngestEndpoint(settings, holder.get, check_api_key)
    app = _App(
        routes=[
            Route("/api/logs", ingest, methods=None),
            Route("/api/health", health, methods=["GET"]),
            Route("/api/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error},
    )
    app.ingest = ingest
    app.state.writer_holder = holder
    return app


def unavailable_app(error: ConfigError) -> ASGIApp:
    """The app that runs when the settings are bad (under Functions, where failing at import would
    make every route vanish with a 404): every route answers 503 naming the setting and the reason,
    never a value."""
    body = orjson.dumps({"ok": False, "state": "not configured",
                         "error": f"blobwriter is not configured: {error.public}"})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await Response(body, status_code=503, media_type="application/json",
                       headers={"Retry-After": "60"})(scope, receive, send)

    return app
