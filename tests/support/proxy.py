"""A storage proxy on 127.0.0.1 in front of Azurite that adds latency and injects faults.

Tests and benchmarks point blobwriter's BlobEndpoint at the proxy; the proxy forwards each
request to Azurite unchanged (SharedKey signatures do not cover the host) and, for the
requests a `FaultPlan` picks, answers 500/503, resets the connection, stalls past the client's
timeout after forwarding (so the append lands and the client retries it: a duplicate), answers
409 BlockCountExceedsLimit, or answers bytes that are not HTTP. With `per_blob_limit` it also
throttles the way Azure does: a blob that gets more requests than that in one second is answered
503 ServerBusy.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}
SERVER_BUSY_BODY = (
    '<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code>'
    "<Message>The server is busy.</Message></Error>"
)
BLOCK_COUNT_BODY = (
    '<?xml version="1.0" encoding="utf-8"?><Error><Code>BlockCountExceedsLimit</Code>'
    "<Message>The committed block count cannot exceed the maximum limit of 50,000 blocks.</Message></Error>"
)


def is_append(request: web.BaseRequest) -> bool:
    return request.method == "PUT" and request.query.get("comp") == "appendblock"


@dataclass
class FaultPlan:
    """Which requests fail and how. Shares are probabilities per append request."""

    error_share: float = 0.0  # answered 500 or 503 without forwarding
    reset_share: float = 0.0  # connection reset without forwarding
    stall_share: float = 0.0  # forwarded (lands), then the answer is held for stall_seconds
    stall_seconds: float = 0.0
    block_limit_share: float = 0.0  # answered 409 BlockCountExceedsLimit
    drop_share: float = 0.0  # forwarded (lands), then the connection is reset before any answer
    refuse_share: float = 0.0  # answered refuse_status with x-ms-error-code refuse_code, not forwarded
    refuse_status: int = 403
    refuse_code: str = "AuthorizationPermissionMismatch"
    garbage_share: float = 0.0  # answered with bytes that are not an HTTP response, not forwarded
    down: bool = False  # every request (not only appends) answered 503: an outage
    latency: float = 0.0  # added before forwarding every request
    per_blob_limit: int = 0  # requests per second one blob takes; past it 503 ServerBusy, as Azure's target
    only: Callable[[web.BaseRequest], bool] = is_append
    seed: int | None = None
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def pick(self, request: web.BaseRequest) -> str | None:
        if self.down:
            return "down"
        if not self.only(request):
            return None
        roll = self.rng.random()
        for name, share in (("error", self.error_share), ("reset", self.reset_share),
                            ("stall", self.stall_share), ("block_limit", self.block_limit_share),
                            ("drop", self.drop_share), ("refuse", self.refuse_share),
                            ("garbage", self.garbage_share)):
            if roll < share:
                return name
            roll -= share
        return None


class StorageProxy:
    """Run with `async with StorageProxy(upstream) as proxy:`, or `start_in_thread()`."""

    def __init__(self, upstream: str, plan: FaultPlan | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.plan = plan or FaultPlan()
        self.host, self.port = host, port
        self.counts: Counter[str] = Counter()
        self.per_blob: Counter[str] = Counter()  # requests per blob in the current second
        self.per_blob_peak = 0  # the most requests one blob got in one second
        self._second = 0
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.ServerRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> StorageProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),
        )
        server = web.Server(self._handle)
        self._runner = web.ServerRunner(server, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def start_in_thread(self) -> StorageProxy:
        """Serve from a thread of its own (for tests whose client runs in another loop or process)."""
        started = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.start())
            started.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self.stop())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="storage-proxy", daemon=True)
        self._thread.start()
        started.wait(10)
        return self

    def stop_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _over_blob_limit(self, request: web.BaseRequest) -> bool:
        """Count a request against its blob's budget for this second (account/container/blob paths only)."""
        if request.path.count("/") < 3:
            return False
        second = int(time.monotonic())
        if second != self._second:
            self._second = second
            self.per_blob.clear()
        self.per_blob[request.path] += 1
        count = self.per_blob[request.path]
        self.per_blob_peak = max(self.per_blob_peak, count)
        return count > self.plan.per_blob_limit

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        fault = self.plan.pick(request)
        self.counts["requests"] += 1
        if is_append(request):
            self.counts["appends"] += 1
        if fault:
            self.counts[fault] += 1
        if fault == "down":
            return web.Response(status=503, text="storage down (test proxy)")
        if self.plan.per_blob_limit and self._over_blob_limit(request):
            self.counts["throttled"] += 1
            if is_append(request):
                self.counts["throttled_appends"] += 1
            return web.Response(status=503, text=SERVER_BUSY_BODY, content_type="application/xml",
                                headers={"x-ms-error-code": "ServerBusy"})
        if fault == "error":
            return web.Response(status=self.plan.rng.choice((500, 503)), text="injected fault")
        if fault == "reset":
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        if fault == "refuse":
            body = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{self.plan.refuse_code}</Code>'
                    "<Message>Refused by the test proxy.</Message></Error>")
            return web.Response(status=self.plan.refuse_status, text=body, content_type="application/xml",
                                headers={"x-ms-error-code": self.plan.refuse_code})
        if fault == "garbage":
            if request.transport is not None:
                request.transport.write(b"HTTP/1.1 2x0 Not HTTP\r\n\x00\x01\r\n\r\n")
                request.transport.close()
            return web.Response(status=500)
        if fault == "block_limit":
            return web.Response(status=409, text=BLOCK_COUNT_BODY, content_type="application/xml",
                                headers={"x-ms-error-code": "BlockCountExceedsLimit"})
        if self.plan.latency:
            await asyncio.sleep(self.plan.latency)
        # Not request.read(): it refuses bodies over aiohttp's client_max_size (1 MiB) with a 413, and an
        # Append Block carries up to 4 MiB.
        body = await request.content.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        assert self._session is not None
        async with self._session.request(request.method, self.upstream + request.rel_url.raw_path_qs,
                                         headers=headers, data=body,
                                         # aiohttp would add Content-Type: application/octet-stream to a
                                         # request without one, which breaks the SharedKey signature.
                                         skip_auto_headers=("Content-Type",)) as upstream:
            payload = await upstream.read()
            status = upstream.status
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
        if fault == "drop" and request.transport is not None:
            request.transport.abort()
            return web.Response(status=500)
        if fault == "stall":
            await asyncio.sleep(self.plan.stall_seconds)
        if request.method == "HEAD":
            # A HEAD answer's Content-Length is the blob's size (get_blob_properties reads it), not
            # the length of a body: pass it through and send no body.
            response = web.StreamResponse(status=status, headers=out_headers)
            response.content_length = int(upstream.headers.get("Content-Length", 0))
            await response.prepare(request)  # type: ignore[arg-type]
            return response
        return web.Response(status=status, body=payload, headers=out_headers)


class HoldingProxy(StorageProxy):
    """Forwards to Azurite, but holds each request `hold` picks until `release` is set; `holding` is set
    once one is held. A command caught in the middle of a request, every time, with no timing."""

    def __init__(self, upstream: str, hold: Callable[[web.BaseRequest], bool]) -> None:
        super().__init__(upstream)
        self.hold = hold
        self.holding = threading.Event()
        self.release = threading.Event()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if self.hold(request):
            self.holding.set()
            while not self.release.is_set():
                await asyncio.sleep(0.05)
        return await super()._handle(request)
