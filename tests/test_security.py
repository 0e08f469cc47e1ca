"""Issue 13, the input and hosting half: what the HTTP API and `blobwriter serve` refuse, and how.

Values and timestamps on both paths in (HTTP and the Python API), the timestamp window and
received_at over HTTP, a body-read deadline and a limit on bodies still arriving (real uvicorn,
raw sockets), large bodies admitted off the event loop, /api/health without the key, and `serve`
refusing to listen beyond loopback without a key.
"""

from __future__ import annotations

import asyncio
import math
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from blobwriter.api import create_app
from blobwriter.config import Settings
from blobwriter.entries import NOT_FINITE, format_timestamp
from blobwriter.errors import EntryError
from blobwriter.keys import keygen
from blobwriter.server import is_loopback
from blobwriter.writer import HEALTH_PROBE_INTERVAL, LogWriter
from tests.conftest import ROOT, connection_string, free_port, wait_for_port
from tests.support.proxy import StorageProxy
from tests.support.readback import read_back
from tests.support.reliability import ServeProcess, read_until_closed, serve_env

TS = "2026-11-24T10:00:00Z"


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> Any:
    apps: list[Any] = []

    async def make(**overrides: Any) -> tuple[httpx.AsyncClient, Settings, Any]:
        settings = make_settings(**overrides)
        app = create_app(settings)
        apps.append(app)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test"), settings, app

    yield make
    for app in apps:
        await app.state.writer_holder.stop()


# -- values: the same refusal on both paths in -----------------------------------------------------

@pytest.mark.parametrize("number", ["123456789012345678901234567890", "18446744073709551616",
                                    "-9223372036854775809", "-123456789012345678901234567890"])
async def test_integers_beyond_64_bits_get_the_same_400_over_http_as_from_python(
        client: Any, make_settings: Callable[..., Settings], number: str) -> None:
    """Main stored -9223372036854775809 sent over HTTP as the float -9.223372036854776e+18 (19 digits went to
    orjson), and called the Python API's refusal 'not JSON-serializable'."""
    http, _, _ = await client()
    body = f'{{"timestamp": "{TS}", "n": {number}}}'.encode()
    answers = [await http.post("/api/logs", content=body, headers={"content-type": ct}) for ct in
               ("application/json", "application/x-ndjson")]
    answers.append(await http.post("/api/logs", content=b"[" + body + b"]",
                                   headers={"content-type": "application/json"}))
    async with LogWriter(make_settings()) as writer:
        with pytest.raises(EntryError) as caught:
            await writer.write({"timestamp": TS, "n": int(number)})
    python_message = str(caught.value).split(": ", 1)[1]  # after "entry index 0"
    assert "does not fit in 64 bits" in python_message
    for answer in answers:
        assert answer.status_code == 400, answer.text
        assert python_message in answer.json()["error"], (answer.json(), python_message)


async def test_nan_and_infinity_are_refused_on_both_paths_with_one_reason(client: Any,
                                                                          make_settings: Callable[..., Settings],
                                                                          ) -> None:
    """Main wrote NaN and infinity from the Python API as null, silently."""
    http, _, _ = await client()
    for body in (b'{"n": NaN}', b'[{"n": Infinity}]', b'{"n": -Infinity}', b'{"n": 1e400}', b'[{"n": -1e999}]'):
        answer = await http.post("/api/logs", content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 400 and NOT_FINITE in answer.json()["error"], (body, answer.text)
    async with LogWriter(make_settings()) as writer:
        for value in (math.nan, math.inf, -math.inf, float("1e400")):
            with pytest.raises(EntryError, match=r"JSON numbers must be finite"):
                await writer.write({"timestamp": TS, "deep": [{"n": value}]})
        assert writer.metrics.accepted == 0 and writer.metrics.rejected == 4


async def test_null_and_non_rfc3339_timestamps_are_400(client: Any) -> None:
    """Main stored "timestamp": null as the current time and accepted bare dates, week dates and spaces."""
    http, _, _ = await client()
    for timestamp, reason in [(None, "'timestamp' is null"), ("2026-11-24", "a date without a time"),
                              ("2026-W48-2", "week"), ("2026-11-24 10:00:00Z", "separated by a space"),
                              ("20261124T100000Z", "not an RFC 3339 date-time")]:
        answer = await http.post("/api/logs", json=[{"timestamp": TS}, {"timestamp": timestamp}])
        assert answer.status_code == 400, answer.text
        assert reason in answer.json()["error"] and answer.json()["index"] == 1


async def test_timestamp_window_over_http(client: Any) -> None:
    http, settings, app = await client(max_past_days=7, max_future_days=1)
    now = datetime.now(UTC)
    fresh = {"id": "fresh", "timestamp": format_timestamp(now - timedelta(days=6))}
    old = {"id": "old", "timestamp": format_timestamp(now - timedelta(days=30))}
    ahead = {"id": "ahead", "timestamp": format_timestamp(now + timedelta(days=2))}
    assert (await http.post("/api/logs", json=fresh)).status_code == 202
    for entry, why in ((old, " in the past"), (ahead, " in the future")):
        answer = await http.post("/api/logs", json=entry)
        assert answer.status_code == 400, answer.text
        assert why in answer.json()["error"] and "max_past_days=7, max_future_days=1" in answer.json()["error"]
    await app.state.writer_holder.stop()
    entries, _ = await read_back(settings, [fresh["timestamp"][:10]])
    assert [e["id"] for e in entries] == ["fresh"]


async def test_received_at_is_the_servers_time_over_http(client: Any) -> None:
    http, settings, app = await client(received_at_field="received_at")
    before = datetime.now(UTC)
    assert (await http.post("/api/logs", json={"id": "a", "timestamp": TS,
                                               "received_at": "1999-01-01T00:00:00Z"})).status_code == 202
    after = datetime.now(UTC)
    await app.state.writer_holder.stop()
    [stored], _ = await read_back(settings, ["2026-11-24"])
    received = datetime.fromisoformat(stored["received_at"])
    assert stored["received_at"].endswith("Z") and len(stored["received_at"]) == 24
    assert before - timedelta(milliseconds=1) <= received <= after


# -- hostile clients under `blobwriter serve` ------------------------------------------------------

def _partial(port: int, declared: int = 1000, sent: bytes = b'[{"a": 1}') -> socket.socket:
    """A POST whose body is cut short: the headers promise `declared` bytes, `sent` arrive, then nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(b"POST /api/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (declared, sent))
    return sock





@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    servers: list[ServeProcess] = []

    def start(**extra: str) -> ServeProcess:
        env = serve_env(str(tmp_path / "store"), keygen(), **extra)
        server = ServeProcess(env, tmp_path / f"serve{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()


def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_is_closed(
        serve: Callable[..., ServeProcess]) -> None:
    """Main read a body for as long as the client kept the connection open (holding up to max_body_bytes)."""
    server = serve(BLOBWRITER_BODY_TIMEOUT="1")
    sock = _partial(server.port)
    answer = read_until_closed(sock)  # returns when the server closes the connection
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b"body_timeout" in answer and b"connection: close" in answer.lower()
    dribbled = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    body = b'{"timestamp": "2026-11-24T10:00:00Z"}'
    dribbled.sendall(b"POST /api/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
    for byte in body:  # a slow client that keeps sending is cut off all the same: the deadline is for the body
        try:
            dribbled.sendall(bytes([byte]))
        except OSError:
            break
        time.sleep(0.1)
    answer = read_until_closed(dribbled)
    dribbled.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]  # 38 bytes at 10 a second: past the 1 s deadline
    with httpx.Client(base_url=server.url) as http:  # the server is fine
        assert http.post("/api/logs", json={"timestamp": TS}).status_code == 202
    assert server.terminate() == 0


def test_bodies_still_arriving_are_limited_and_whole_ones_never_wait(serve: Callable[..., ServeProcess]) -> None:
    """Main read any number of bodies at once, each up to max_body_bytes."""
    server = serve(BLOBWRITER_MAX_CONCURRENT_BODIES="2")
    held = [_partial(server.port) for _ in range(3)]
    ready, _, _ = select.select(held, [], [], 60)  # one of the three is refused at once; two are being read
    assert len(ready) == 1, "exactly one of three slow bodies is refused"
    refused = read_until_closed(ready[0])
    assert refused.startswith(b"HTTP/1.1 503 "), refused[:300]
    assert b"max_concurrent_bodies" in refused and b"retry-after: 1" in refused.lower()
    with httpx.Client(base_url=server.url) as http:  # a body that arrives whole takes no slot
        assert http.post("/api/logs", json=[{"timestamp": TS}] * 50).status_code == 202
    for sock in held:
        sock.close()
    for _ in range(100):  # the closed connections give their slots back (uvicorn notices the close)
        late = _partial(server.port, declared=12, sent=b"{")
        late.sendall(b'"a": 1}    \n\n')
        answer = read_until_closed(late)
        late.close()
        if answer.startswith(b"HTTP/1.1 202 "):
            break
        time.sleep(0.1)
    assert answer.startswith(b"HTTP/1.1 202 "), answer[:300]
    assert server.terminate() == 0


async def test_large_bodies_are_admitted_off_the_event_loop(client: Any) -> None:
    """Verifies PARSE_IN_THREAD_BYTES (already on main): a body over 256 KiB is parsed and admitted in a
    worker thread, so the event loop keeps answering other requests meanwhile; a small one on the loop."""
    http, _, app = await client(max_body_bytes=16 * 1024 * 1024)
    writer = await app.state.writer_holder.get()
    threads: list[bool] = []
    loop_thread = threading.get_ident()
    real_admit = writer.admit

    def noting_admit(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident() == loop_thread)
        return real_admit(*args, **kwargs)

    writer.admit = noting_admit
    small = [{"timestamp": TS, "i": i} for i in range(10)]
    large = [{"timestamp": TS, "i": i, "pad": "x" * 100} for i in range(5000)]
    assert (await http.post("/api/logs", json=small)).status_code == 202
    assert (await http.post("/api/logs", json=large)).status_code == 202
    assert threads == [True, False]


async def test_health_probes_storage_at_most_every_few_seconds(azurite_upstream: str,
                                                              make_settings: Callable[..., Settings]) -> None:
    """Main probed storage on every /api/health call: anyone could amplify load on storage with it."""
    async with StorageProxy(azurite_upstream) as proxy:
        app = create_app(make_settings(storage=connection_string(f"{proxy.url}/devstoreaccount1")))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            assert (await http.get("/api/health")).status_code == 200
            before, started = proxy.counts["requests"], time.monotonic()
            calls = 30
            for _ in range(calls):
                assert (await http.get("/api/health")).status_code == 200
            together = await asyncio.gather(*(http.get("/api/health") for _ in range(calls)))
            assert {r.status_code for r in together} == {200}
            elapsed = time.monotonic() - started
            probes = proxy.counts["requests"] - before
        await app.state.writer_holder.stop()
    # The only storage requests meanwhile are probes (nothing was posted): at most one per interval begun.
    assert probes <= 1 + elapsed / HEALTH_PROBE_INTERVAL, (probes, elapsed)
    assert probes < 2 * calls


async def test_health_without_the_key_says_only_whether_all_is_well(azurite_upstream: str,
                                                                    make_settings: Callable[..., Settings]) -> None:
    """Main showed every caller of /api/health, key or not, the storage error text and the writer id."""
    key = {"x-functions-key": "k3y-health"}
    async with StorageProxy(azurite_upstream) as proxy:
        settings = make_settings(storage=connection_string(f"{proxy.url}/devstoreaccount1"), api_key="k3y-health")
        app = create_app(settings)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            first = await http.get("/api/health")
            assert first.status_code == 200
            assert set(first.json()) == {"ok", "state", "detail"} and first.json()["ok"] is True
            full = await http.get("/api/health", headers=key)
            assert full.status_code == 200 and {"storage_error", "writer_id", "queue_depth"} <= set(full.json())
            assert (await http.get("/api/health?code=k3y-health")).json()["writer_id"] == full.json()["writer_id"]
            assert (await http.get("/api/health", headers={"x-functions-key": "wrong"})).status_code == 401
            proxy.plan.down = True  # storage fails: the answer without the key says so, without the error text
            assert (await http.post("/api/logs", json={"timestamp": TS}, headers=key)).status_code == 202
            for _ in range(200):
                down = await http.get("/api/health")
                if down.status_code == 503:
                    break
                await asyncio.sleep(0.1)
            assert down.status_code == 503 and set(down.json()) == {"ok", "state", "detail"}, down.text
            detailed = await http.get("/api/health", headers=key)
            assert detailed.status_code == 503 and detailed.json()["storage_error"]
            proxy.plan.down = False
        await app.state.writer_holder.stop()


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.10", False), ("no-such-host.invalid", False)])
def test_which_hosts_are_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_serve_refuses_to_listen_beyond_loopback_without_a_key(tmp_path: Path) -> None:
    """Main served `--host 0.0.0.0` without api_key, accepting writes from anyone, without a warning."""
    env = serve_env(str(tmp_path / "store"), keygen())
    port = free_port()
    refused = subprocess.run([sys.executable, "-m", "blobwriter", "serve", "--host", "0.0.0.0", "--port", str(port)],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2, refused.stderr
    assert "refusing to serve on 0.0.0.0 without an API key" in refused.stderr
    assert "--insecure-no-key" in refused.stderr and "BLOBWRITER_API_KEY" in refused.stderr
    assert "Traceback" not in refused.stderr
    for extra, args in (({}, ["--insecure-no-key"]), ({"BLOBWRITER_API_KEY": "k"}, [])):
        port = free_port()
        log = tmp_path / f"serve-{port}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "blobwriter", "serve", "--host", "0.0.0.0", "--port",
                                        str(port), *args], env={**env, **extra}, cwd=ROOT, stdout=out,
                                       stderr=subprocess.STDOUT)
            try:
                wait_for_port(port, timeout=60)
                assert httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=30).status_code == 200
            finally:
                process.terminate()
                process.wait(60)
        text = log.read_text()
        assert ("WITHOUT an API key" in text) is (not extra), text
    assert "--insecure-no-key" in subprocess.run([sys.executable, "-m", "blobwriter", "serve", "--help"], cwd=ROOT,
                                                 capture_output=True, text=True, timeout=60).stdout



def test_a_wide_integer_on_any_ndjson_line_is_parsed_exactly() -> None:
    """The body is searched once for a run of 19 digits (bodies._ndjson_values); a line holding one
    still goes to the exact parser (so admission refuses the integer instead of storing orjson's
    float), and digits that only touch across a newline do not count as a run."""
    from blobwriter.bodies import parse_body

    line = f'{{"timestamp": "{TS}", "n": 1}}'
    wide = f'{{"timestamp": "{TS}", "n": 18446744073709551616}}'
    values = dict(parse_body("\n".join([line, line, wide, line]).encode(), "application/x-ndjson"))
    assert values[3]["n"] == 2**64 and type(values[3]["n"]) is int
    touching = f'{{"timestamp": "{TS}", "n": 1234567890}}\n1234567890123'.encode()  # 10 + 13 digits, two lines
    assert [v for _, v in parse_body(touching, "application/x-ndjson")][1] == 1234567890123
