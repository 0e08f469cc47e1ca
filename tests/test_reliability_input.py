"""Hostile input: property-based fuzzing of POST /api/logs on a running `blobwriter serve`, and of
the same ASGI app in-process, plus raw sockets that dribble or overrun a body.

The properties: never a 5xx, the process stays up and healthy, its memory stays bounded, and every
valid entry sent alongside the garbage is stored exactly once (read back with `blobwriter read`).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blobwriter.api import create_app
from blobwriter.config import Settings
from blobwriter.keys import keygen
from tests.support.reliability import (
    Ledger,
    RssSampler,
    ServeProcess,
    make_entries,
    read_ids,
    read_until_closed,
    record_figures,
    rss_bytes,
    serve_env,
)

pytestmark = pytest.mark.reliability

MAX_BODY = 256 * 1024
MAX_QUEUE = 20_000
VALID_DAY = "2026-05-01"
LIMITS = {"BLOBWRITER_MAX_BODY_BYTES": str(MAX_BODY), "BLOBWRITER_MAX_ENTRY_BYTES": "65536",
          "BLOBWRITER_MAX_QUEUE_SIZE": str(MAX_QUEUE), "BLOBWRITER_BATCH_SIZE": "500",
          "BLOBWRITER_BATCH_TIMEOUT": "0.2"}
FUZZ = settings(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

# -- what to send ----------------------------------------------------------------------------------

ODD_TIMESTAMPS = st.one_of(
    st.sampled_from(["", "now", "2026-02-30T00:00:00Z", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00",
                     "2026-05-01T25:00:00Z", "2026-W18-5", "2026-05-01", "20260501T000000Z",
                     "2026-05-01T00:00:00+99:00",
                     "2026-05-01T00:00:00.123456789Z", " 2026-05-01T00:00:00Z", "2026-05-01T00:00:00Z\u0000",
                     "\ud7ff" * 10, "1" * 10_000]),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.text(max_size=40), st.integers(), st.floats(allow_nan=False), st.booleans(), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=50))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                    max_leaves=10)
ENTRY = st.builds(lambda d, t: d if t is None else {**d, "timestamp": t},
                  st.dictionaries(st.text(max_size=10), JSON, max_size=4), st.one_of(st.none(), ODD_TIMESTAMPS))


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


BODIES = st.one_of(
    ENTRY.map(dumps),
    st.lists(ENTRY, max_size=8).map(dumps),
    JSON.map(dumps),  # wrong types: scalars, arrays of scalars, nested arrays
    st.binary(max_size=300),  # garbage, invalid UTF-8
    st.tuples(st.integers(1, 3000), st.sampled_from(["list", "dict"])).map(lambda t: nested(*t)),
    st.builds(lambda n, c: dumps({"blob": c * n}), st.integers(1000, 300_000), st.sampled_from(["x", "é", "\u2603"])),
    st.integers(1, 120_000).map(lambda n: b"[" + b",".join([b"{}"] * n) + b"]"),  # many tiny entries
    st.lists(ENTRY, max_size=5).map(lambda es: b"\n".join(dumps(e) for e in es) + b"\n{not json"),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.just(b'{"a": "\\ud800"}'), st.just(b'{"n": 1e400}'), st.just(b'{"n": NaN}'), st.just(b"\xef\xbb\xbf{}"),
)
CONTENT_TYPES = st.sampled_from(["application/json", "application/x-ndjson", "application/json; charset=latin-1",
                                 "", "text/plain", "APPLICATION/JSON", "application/jsonl", "multipart/form-data"])
QUERIES = st.sampled_from([{}, {}, {}, {"wait": "true"}, {"wait": "1"}, {"wait": "\u00e9"}, {"code": "x"},
                           {"wait": ["true", "false"]}])


# A 503 with Retry-After is back-pressure (the queue is full: bodies of thousands of tiny entries arrive
# faster than a busy machine writes them), which a client honours by sending again; it is a failure only
# if it never clears. The fuzzer waits less than Retry-After's second, and at most this many times.
BACKOFF_TRIES, BACKOFF_SECONDS = 400, 0.05


class Fuzzer:
    """Sends fuzzed requests and, every few, a valid entry with an id whose answer goes in the ledger."""

    def __init__(self, send: Any, ledger: Ledger, name: str) -> None:
        self.send, self.ledger, self.name = send, ledger, name
        self.requests = 0
        self.backed_off = 0  # 503 + Retry-After answers, each followed by the same request again
        self.statuses: dict[int, int] = {}
        self.server_errors: list[tuple[int, bytes, str]] = []

    def _send(self, body: bytes, headers: dict[str, str], query: dict[str, Any]) -> tuple[int, str]:
        for _ in range(BACKOFF_TRIES):
            status, text, retry_after = self.send(body, headers, query)
            if status != 503 or retry_after is None:
                break
            self.backed_off += 1
            time.sleep(BACKOFF_SECONDS)
        return status, text

    def fuzz(self, body: bytes, content_type: str, query: dict[str, Any]) -> None:
        status, text = self._send(body, {"content-type": content_type} if content_type else {}, query)
        self.requests += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status >= 500:
            self.server_errors.append((status, body[:200], text[:300]))
        if self.requests % 4 == 0:
            batch = make_entries(1, self.name, day=VALID_DAY)
            status, text = self._send(dumps(batch), {"content-type": "application/json"}, {})
            self.requests += 1
            self.ledger.record([e["id"] for e in batch], _Answer(status, text))


class _Answer:
    def __init__(self, status: int, text: str) -> None:
        self.status_code, self.text, self.headers = status, text, {}


def run_fuzz(fuzzer: Fuzzer, examples: int) -> None:
    @settings(FUZZ, max_examples=examples)
    @given(body=BODIES, content_type=CONTENT_TYPES, query=QUERIES)
    def check(body: bytes, content_type: str, query: dict[str, Any]) -> None:
        fuzzer.fuzz(body, content_type, query)

    check()


# -- raw sockets -------------------------------------------------------------------------------------

def raw(port: int, data: bytes, *, dribble: float = 0.0, read: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        if dribble:
            for i in range(len(data)):
                sock.sendall(data[i:i + 1])
                time.sleep(dribble)
        else:
            sock.sendall(data)
        if not read:
            return b""
        sock.shutdown(socket.SHUT_WR)
        return read_until_closed(sock)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def socket_attacks(port: int, url: str) -> dict[str, int]:
    """Slow and oversized bodies over raw sockets; returns the status each got (0: connection closed)."""
    body = dumps(make_entries(1, "raw", day="2027-01-01")[0])
    head = (b"POST /api/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % len(body))
    results: dict[str, int] = {}
    healthy_meanwhile: list[int] = []

    def probe() -> None:
        while not done.is_set():
            healthy_meanwhile.append(httpx.get(f"{url}/api/health", timeout=30).status_code)
            time.sleep(0.1)

    done = threading.Event()
    prober = threading.Thread(target=probe)
    prober.start()
    try:
        results["dribbled body (1 byte / 10 ms)"] = status_of(raw(port, head + body, dribble=0.01))
        results["body over max_body_bytes, Content-Length"] = status_of(raw(
            port, head.replace(b"%d" % len(body), b"%d" % (MAX_BODY + 1)) + b"[" + b" " * 1000))
        chunked = (b"POST /api/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b" " * 65536
        over = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(MAX_BODY // len(piece) + 2))
        results["chunked body over max_body_bytes"] = status_of(raw(port, chunked + over + b"0\r\n\r\n"))
        results["body shorter than Content-Length, then close"] = status_of(raw(port, head + body[:10]))
        results["bad chunk size"] = status_of(raw(port, chunked + b"zz\r\n{}\r\n0\r\n\r\n"))
        results["garbage request line"] = status_of(raw(port, b"\x00\xff GARBAGE \r\n\r\n"))
        results["huge header"] = status_of(raw(port, b"POST /api/logs HTTP/1.1\r\nX-A: " + b"a" * 200_000
                                               + b"\r\n\r\n"))
        for _ in range(20):  # connections opened mid-body and abandoned
            raw(port, head + body[:5], read=False)
    finally:
        done.set()
        prober.join(30)
    results["health 200 while dribbling"] = int(bool(healthy_meanwhile) and set(healthy_meanwhile) == {200})
    return results


# -- the tests -----------------------------------------------------------------------------------------

@pytest.fixture
def fuzz_server(tmp_path: Path) -> Iterator[tuple[ServeProcess, dict[str, str]]]:
    env = serve_env(str(tmp_path / "store"), keygen(), **LIMITS)
    server = ServeProcess(env, tmp_path / "serve.log")
    try:
        yield server, env
    finally:
        server.kill()


SERVER_EXAMPLES = 6000
ASGI_EXAMPLES = 4000


def test_fuzzed_requests_to_serve_never_5xx_and_lose_no_valid_entry(fuzz_server: tuple[ServeProcess, dict[str, str]],
                                                                    tmp_path: Path) -> None:
    server, env = fuzz_server
    ledger = Ledger()
    with httpx.Client(base_url=server.url, timeout=60) as client:

        def send(body: bytes, headers: dict[str, str], query: dict[str, Any]) -> tuple[int, str, str | None]:
            response = client.post("/api/logs", content=body, headers=headers, params=query)
            return response.status_code, response.text, response.headers.get("retry-after")

        fuzzer = Fuzzer(send, ledger, "fuzz-serve")
        client.get("/api/health")
        baseline = rss_bytes(server.pid)
        with RssSampler(server.pid) as rss:
            run_fuzz(fuzzer, SERVER_EXAMPLES)
            attacks = socket_attacks(server.port, server.url)
            alive = server.process.poll() is None
            after = client.get("/api/health")
            peak = rss.peak
    code = server.terminate()
    back = read_ids(env, VALID_DAY)
    lost = back.lost(ledger.acked)
    record_figures(
        "6a hostile input, serve", load=f"{fuzzer.requests:,} requests ({SERVER_EXAMPLES:,} fuzzed, hypothesis) "
                                        f"+ {len(attacks) + 19} raw-socket attacks",
        faults="malformed/deeply nested JSON, invalid UTF-8, wrong types, odd timestamps, huge strings, "
               "many tiny entries, dribbled and oversized bodies",
        accepted=len(ledger.acked), read_back=len(back.counts), lost=len(lost), duplicated=back.duplicated,
        notes=f"statuses {dict(sorted(fuzzer.statuses.items()))} ({fuzzer.backed_off} 503 + Retry-After, sent again); "
              f"raw sockets {attacks}; RSS {baseline / 2**20:.0f} "
              f"MiB before, peak {peak / 2**20:.0f} MiB",
    )
    assert not fuzzer.server_errors, fuzzer.server_errors[:5]
    answered = {k: s for k, s in attacks.items() if k not in ("health 200 while dribbling",
                                                              "body shorter than Content-Length, then close")}
    assert all(0 < s < 500 for s in answered.values()) and attacks["body shorter than Content-Length, then close"] \
        < 500, attacks  # a client that hangs up gets no answer (0)
    assert attacks["health 200 while dribbling"] == 1
    assert attacks["body over max_body_bytes, Content-Length"] == 413
    assert alive and after.status_code == 200 and code == 0, server.log_text()[-3000:]
    assert peak - baseline < 256 * 2**20, (baseline, peak)  # bounded by max_body_bytes, not by what is sent
    assert "Traceback" not in server.log_text(), server.log_text()[-5000:]
    assert len(ledger.acked) == ledger.statuses[202] and not lost and back.duplicated == 0
    assert set(back.counts) == ledger.acked


def test_fuzzed_requests_to_the_asgi_app_never_5xx(tmp_path: Path) -> None:
    """The same properties in-process (faster, so more examples), with the writer checked directly."""
    settings_ = Settings.from_values({"storage": str(tmp_path / "store"), "encryption_key": keygen(),
                                      **{k.removeprefix("BLOBWRITER_").lower(): v for k, v in LIMITS.items()}})
    app = create_app(settings_)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")
    ledger = Ledger()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(120)

    def send(body: bytes, headers: dict[str, str], query: dict[str, Any]) -> tuple[int, str, str | None]:
        response = run(client.post("/api/logs", content=body, headers=headers, params=query))
        return response.status_code, response.text, response.headers.get("retry-after")

    fuzzer = Fuzzer(send, ledger, "fuzz-asgi")
    try:
        run_fuzz(fuzzer, ASGI_EXAMPLES)
        health = run(client.get("/api/health"))
        holder = app.state.writer_holder
        run(holder.stop())
        metrics = holder.writer.metrics.snapshot()
    finally:
        run(client.aclose())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    back = read_ids(serve_env(str(tmp_path / "store"), settings_.encryption_key and _b64(settings_)), VALID_DAY)
    lost = back.lost(ledger.acked)
    record_figures(
        "6b hostile input, ASGI app", load=f"{fuzzer.requests:,} requests ({ASGI_EXAMPLES:,} fuzzed) in-process",
        faults="as 6a, without raw sockets", accepted=len(ledger.acked), read_back=len(back.counts), lost=len(lost),
        duplicated=back.duplicated, notes=f"statuses {dict(sorted(fuzzer.statuses.items()))} ({fuzzer.backed_off} "
                                          f"503 + Retry-After, sent again); writer failed "
                                          f"{metrics['failed']}",
    )
    assert not fuzzer.server_errors, fuzzer.server_errors[:5]
    assert health.status_code == 200 and metrics["failed"] == 0
    assert not lost and back.duplicated == 0 and set(back.counts) == ledger.acked


def _b64(settings_: Settings) -> str:
    import base64

    assert settings_.encryption_key is not None
    return base64.b64encode(settings_.encryption_key.raw).decode()


async def test_a_request_with_more_entries_than_the_queue_holds_is_413_not_503(tmp_path: Path) -> None:
    """Regression: such a request got 503 "queue full" with Retry-After, though no retry could ever
    succeed, after every entry had been validated and serialized in memory."""
    settings_ = Settings.from_values({"storage": str(tmp_path), "encryption_key": keygen(), "max_queue_size": 100,
                                      "batch_size": 10})
    app = create_app(settings_)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
        too_many = await client.post("/api/logs", json=[{}] * 101)
        assert too_many.status_code == 413 and "max_queue_size" in too_many.json()["error"]
        assert "retry-after" not in too_many.headers
        assert (await client.post("/api/logs", json=[{}] * 100)).status_code == 202
        await app.state.writer_holder.stop()
