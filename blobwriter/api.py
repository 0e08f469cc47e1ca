"""The HTTP API, one ASGI app for both hosts: `blobwriter serve` (uvicorn) and Azure Functions.

POST /api/logs    one JSON object, a JSON array of objects, or NDJSON -> 202 {"accepted": N}
                  with ?wait=true -> 200 {"written": N} once appended
GET  /api/health  200 while the writer runs and storage answers, else 503
GET  /api/metrics Prometheus text exposition of the writer's counters

A request is all or nothing: every entry is parsed and validated before any is queued.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
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

from .config import Settings
from .errors import EntryError, EntryTooLargeError, QueueFullError, WriteFailedError, WriterStoppedError
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .writer import LogWriter

log = logging.getLogger("blobwriter.api")

JSON_TYPES = {"application/json", ""}
NDJSON_TYPES = {"application/x-ndjson", "application/jsonl", "application/jsonlines", "application/x-jsonlines"}
DURABLE_WAIT_SECONDS = 120.0  # below the 230 s limit Azure puts on an HTTP-triggered function
HEALTH_PROBE_SECONDS = 5.0
API_KEY_HEADER = b"x-functions-key"


class BadRequest(Exception):
    """A request answered with a 4xx and a JSON body saying what was wrong, and where."""

    def __init__(self, status: int, message: str, **where: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": message, **where}


def parse_body(body: bytes, content_type: str) -> list[Any]:
    """Decode a request body into a list of JSON values (not yet validated as entries)."""
    if content_type in NDJSON_TYPES:
        values = []
        for number, line in enumerate(body.split(b"\n"), start=1):
            if line.strip():
                try:
                    values.append(orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    raise BadRequest(400, f"malformed JSON on line {number}: {exc}", line=number) from None
        return values
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(400, f"malformed JSON: {exc}") from None
    return value if isinstance(value, list) else [value]


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


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


class IngestEndpoint:
    """POST /api/logs as a bare ASGI endpoint: the hot path, kept free of framework layers."""

    def __init__(self, settings: Settings, writer: Callable[[], Awaitable[LogWriter]], check_key: bool) -> None:
        self._max_body = settings.max_body_bytes
        self._max_entries = settings.max_queue_size
        self._api_key = settings.api_key.encode() if check_key and settings.api_key else None
        self._writer = writer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response: ASGIApp
        if scope["method"] != "POST":
            response = _json(405, {"error": "method not allowed; use POST"}, {"Allow": "POST"})
        else:
            try:
                response = await self._ingest(scope, receive)
            except BadRequest as exc:
                response = _json(exc.status, exc.body)
        await response(scope, receive, send)

    async def _ingest(self, scope: Scope, receive: Receive) -> ASGIApp:
        headers = dict(scope["headers"])
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if self._api_key is not None:
            given = headers.get(API_KEY_HEADER) or query.get("code", [""])[0].encode()
            if not hmac.compare_digest(given, self._api_key):
                raise BadRequest(401, "missing or wrong API key: send it as the x-functions-key header or ?code=")
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower().decode("latin-1")
        if content_type not in JSON_TYPES and content_type not in NDJSON_TYPES:
            raise BadRequest(415, f"unsupported Content-Type {content_type!r}; send application/json "
                                  "(an object or an array of objects) or application/x-ndjson")
        body = await self._read_body(headers, receive)
        values = parse_body(body, content_type)
        if len(values) > self._max_entries:
            # More than the queue can ever hold: a 503 would have the client retry forever.
            raise BadRequest(413, f"{len(values)} entries in one request; at most {self._max_entries} "
                                  "(max_queue_size) fit; split the request")
        writer = await self._writer()
        prepared = []
        where = "line" if content_type in NDJSON_TYPES else "index"
        for index, value in enumerate(values):
            try:
                prepared.append(writer.prepare(value))
            except EntryError as exc:
                writer.metrics.rejected += len(values)
                status = 413 if isinstance(exc, EntryTooLargeError) else 400
                position = index + 1 if where == "line" else index
                raise BadRequest(status, f"entry {where} {position}: {exc}; nothing from this request was queued",
                                 **{where: position}) from None
        wait = query.get("wait", ["false"])[0].lower() in ("true", "1", "yes")
        try:
            future = writer.submit(prepared, durable=wait)
        except QueueFullError as exc:
            return _json(503, {"error": str(exc), "retry_after": exc.retry_after},
                         {"Retry-After": str(exc.retry_after)})
        except WriterStoppedError as exc:
            return _json(503, {"error": str(exc)}, {"Retry-After": "5"})
        if future is None:
            return _Accepted(len(prepared))
        try:
            await asyncio.wait_for(asyncio.shield(future), DURABLE_WAIT_SECONDS)
        except TimeoutError:
            return _json(504, {"error": f"not yet written after {DURABLE_WAIT_SECONDS:.0f}s; the entries stay "
                                        "queued and are written when storage recovers", "accepted": len(prepared)})
        except WriteFailedError as exc:
            return _json(503, {"error": str(exc)})
        return _json(200, {"written": len(prepared)})

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes:
        """Read the body, refusing (413) as soon as it passes max_body_bytes."""
        limit = self._max_body
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BadRequest(413, f"body of {int(declared)} bytes is over the limit of {limit} (max_body_bytes)")
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequest(400, "client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BadRequest(413, f"body is over the limit of {limit} bytes (max_body_bytes)")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class WriterHolder:
    """Starts the LogWriter once: at lifespan startup, or lazily on first use where startup never ran."""

    def __init__(self, settings: Settings, handle_sigterm: bool) -> None:
        self.settings = settings
        self.writer: LogWriter | None = None
        self._handle_sigterm = handle_sigterm
        self._lock = asyncio.Lock()

    async def get(self) -> LogWriter:
        if self.writer is None or self.writer.state == "new":
            async with self._lock:
                if self.writer is None:
                    self.writer = LogWriter(self.settings)
                if self.writer.state == "new":
                    await self.writer.start(handle_sigterm=self._handle_sigterm)
        return self.writer

    async def stop(self) -> None:
        if self.writer is not None:
            await self.writer.stop()


def create_app(settings: Settings, *, check_api_key: bool = True, handle_sigterm: bool = False) -> Starlette:
    """The ASGI app. `check_api_key` is off under Functions, whose host checks function keys."""
    settings.require("storage", "encryption_key")
    holder = WriterHolder(settings, handle_sigterm)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await holder.get()
        try:
            yield
        finally:
            await holder.stop()

    async def health(request: Request) -> Response:
        writer = await holder.get()
        status = writer.health()
        if status["ok"]:
            try:
                await asyncio.wait_for(writer.store.check(), HEALTH_PROBE_SECONDS)
            except Exception as exc:
                status.update(ok=False, storage_error=f"{type(exc).__name__}: {exc}")
        return _json(200 if status["ok"] else 503, status)

    async def metrics(request: Request) -> Response:
        writer = await holder.get()
        return Response(writer.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _json(exc.status_code, {"error": exc.detail}, dict(exc.headers or {}))

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


def serve(settings: Settings, *, host: str = "127.0.0.1", port: int = 7071, log_level: str = "info") -> None:
    """Run the API under uvicorn until SIGINT/SIGTERM; the writer flushes on shutdown."""
    import uvicorn

    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDK logs every request at INFO
    app = create_app(settings, check_api_key=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
                timeout_graceful_shutdown=int(settings.stop_timeout) + 5)
