"""The HTTP API through httpx against the ASGI app, writing to a real Azurite."""

from __future__ import annotations

import asyncio
import datetime
import gzip
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest

from blobwriter.api import create_app
from blobwriter.config import Settings
from blobwriter.entries import TOO_DEEP
from blobwriter.reader import Reader
from blobwriter.store import open_store
from tests.conftest import connection_string, entry, free_port
from tests.support.proxy import FaultPlan, StorageProxy
from tests.support.serving import served

TODAY = datetime.datetime.now(datetime.UTC).date().isoformat()


async def read_all(settings: Settings, dates: list[str]) -> list[dict[str, Any]]:
    store = open_store(settings)
    try:
        return [orjson.loads(line) async for line in Reader(store, settings.keys).entries(dates)]
    finally:
        await store.close()


@pytest.fixture
async def api(make_settings: Callable[..., Settings]) -> AsyncIterator[Callable[..., Any]]:
    """Make (app, client) pairs; every app's writer is stopped (flushed) at the end."""
    apps = []

    async def make(**overrides: Any) -> tuple[Any, httpx.AsyncClient, Settings]:
        settings = make_settings(**overrides)
        app = create_app(settings)
        apps.append(app)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        return app, client, settings

    yield make
    for app in apps:
        await app.state.writer_holder.stop()


async def stop(app: Any) -> None:
    await app.state.writer_holder.stop()


async def test_single_object_is_accepted_and_written(api: Callable[..., Any]) -> None:
    app, client, settings = await api()
    e = entry(timestamp="2026-11-24T10:00:00Z")
    response = await client.post("/api/logs", json=e)
    assert response.status_code == 202
    assert response.json() == {"accepted": 1}
    await stop(app)
    assert [x["id"] for x in await read_all(settings, ["2026-11-24"])] == [e["id"]]


async def test_array_and_ndjson_bodies(api: Callable[..., Any], sample_entries: list[dict[str, Any]]) -> None:
    app, client, settings = await api(batch_size=100)
    batch = sample_entries[:50]
    response = await client.post("/api/logs", json=batch)
    assert response.status_code == 202 and response.json() == {"accepted": 50}
    ndjson = b"\n".join(orjson.dumps(e) for e in sample_entries[50:120]) + b"\n\n"
    response = await client.post("/api/logs", content=ndjson, headers={"content-type": "application/x-ndjson"})
    assert response.status_code == 202 and response.json() == {"accepted": 70}
    await stop(app)
    dates = sorted({e["timestamp"][:10] for e in sample_entries})
    first = datetime.date.fromisoformat(dates[0]) - datetime.timedelta(days=1)
    days = [(first + datetime.timedelta(days=n)).isoformat() for n in range(10)]
    ids = [x["id"] for x in await read_all(settings, days)]
    assert sorted(ids) == sorted(e["id"] for e in sample_entries[:120])


async def test_wait_true_answers_after_the_append(api: Callable[..., Any]) -> None:
    app, client, settings = await api(batch_timeout=30.0, batch_size=1000)
    e = entry()
    response = await client.post("/api/logs?wait=true", json=e)
    assert response.status_code == 200
    assert response.json() == {"written": 1}
    # Readable now, although batch_timeout is 30 s and the writer was not stopped.
    assert [x["id"] for x in await read_all(settings, [TODAY])] == [e["id"]]


async def test_timestamp_is_added_when_missing(api: Callable[..., Any]) -> None:
    app, client, settings = await api()
    await client.post("/api/logs", json={"user": "no-time"})
    await stop(app)
    [stored] = await read_all(settings, [TODAY])
    assert stored["user"] == "no-time"
    assert stored["timestamp"].endswith("Z") and stored["timestamp"][:10] == TODAY


@pytest.mark.parametrize(
    ("body", "content_type", "status", "where"),
    [
        (b'{"user": "a",', "application/json", 400, None),
        (b'{"a": 1}\n{"b": \n{"c": 3}', "application/x-ndjson", 400, ("line", 2)),
        (b'[{"a": 1}, {"b": 2}, 3]', "application/json", 400, ("index", 2)),
        (b'"just a string"', "application/json", 400, ("index", 0)),
        (b'[{"a": 1}, {"timestamp": "yesterday"}]', "application/json", 400, ("index", 1)),
        (b'{"timestamp": 12}', "application/json", 400, ("index", 0)),
        (b'{"a": "\xff\xfe"}', "application/json", 400, None),
        (b"user=alice", "application/x-www-form-urlencoded", 415, None),
        (b"<log/>", "text/xml", 415, None),
    ],
)
async def test_bad_input_gets_a_clear_4xx_and_queues_nothing(
    api: Callable[..., Any], body: bytes, content_type: str, status: int, where: tuple[str, int] | None
) -> None:
    app, client, _ = await api()
    holder = app.state.writer_holder
    response = await client.post("/api/logs", content=body, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["error"]
    if where is not None:
        assert payload[where[0]] == where[1]
    writer = await holder.get()
    assert writer.metrics.accepted == 0


async def test_body_and_entry_limits_answer_413(api: Callable[..., Any]) -> None:
    app, client, _ = await api(max_body_bytes=2048, max_entry_bytes=1024)
    too_big_body = orjson.dumps([entry(pad="x" * 500) for _ in range(5)])
    response = await client.post("/api/logs", content=too_big_body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "max_body_bytes" in response.json()["error"]

    too_big_entry = orjson.dumps([entry(), entry(pad="y" * 1500)])
    response = await client.post("/api/logs", content=too_big_entry, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["index"] == 1
    assert (await app.state.writer_holder.get()).metrics.accepted == 0


async def test_body_limit_stops_reading_a_streamed_body(api: Callable[..., Any]) -> None:
    app, client, _ = await api(max_body_bytes=4096)
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(10_000):
            sent += 1024
            yield b"[" + b" " * 1022 + b"]"

    response = await client.post("/api/logs", content=endless(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert sent < 100 * 1024  # refused after the limit, not after 10 MB


async def test_queue_full_answers_503_with_retry_after(make_settings: Callable[..., Settings]) -> None:
    # Storage is a closed port: appends fail and retry, so entries stay queued.
    dead = connection_string(f"http://127.0.0.1:{free_port()}/devstoreaccount1")
    settings = make_settings(storage=dead, batch_size=5, max_queue_size=10, storage_timeout=1.0, stop_timeout=0.0)
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        assert (await client.post("/api/logs", json=[entry() for _ in range(10)])).status_code == 202
        response = await client.post("/api/logs", json=entry())
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        assert "queue full" in response.json()["error"]
        health = await client.get("/api/health")
        assert health.status_code == 503
        assert health.json()["queue_depth"] == 10
    writer = await app.state.writer_holder.get()
    await stop(app)
    assert writer.metrics.failed == 10  # reported, not silently dropped


async def test_a_body_that_cannot_fit_is_refused_before_it_is_parsed(make_settings: Callable[..., Settings]) -> None:
    """Under overload, parsing bodies only to refuse them took the CPU the encoder needed (bulk HTTP
    answered most requests 503 after parsing them). Now a body larger than the queue's room is
    refused first. A body alone in an empty queue, or one larger than the whole budget (413 if its
    entries are), is still judged by its entries."""
    dead = connection_string(f"http://127.0.0.1:{free_port()}/devstoreaccount1")
    budget = 1 << 20
    settings = make_settings(storage=dead, max_queue_bytes=budget, storage_timeout=1.0, stop_timeout=0.0)
    app = create_app(settings)
    ndjson = {"content-type": "application/x-ndjson"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        spaced = b"{" + b" " * budget + b'"id": "roomy"}\n'  # over the budget as sent, ~60 bytes serialized
        assert (await client.post("/api/logs", content=spaced, headers=ndjson)).status_code == 202
        writer = await app.state.writer_holder.get()
        garbage = b"x" * (budget - 10)  # fits the budget, not the room left: would be a 400 if parsed
        refused = await client.post("/api/logs", content=garbage, headers=ndjson)
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert f"no room for a body of {budget - 10} bytes" in refused.json()["error"]
        assert writer.metrics.shed == 1 and writer.metrics.rejected == 0
        assert (await client.post("/api/logs", content=b"x" * (budget + 1), headers=ndjson)).status_code == 400
        many = b"".join(b'{"id": "e%07d"}\n' % i for i in range(70_000))  # ~1.2 MiB of entries: never fits
        assert (await client.post("/api/logs", content=many, headers=ndjson)).status_code == 413
        assert (await client.post("/api/logs", content=b"not json", headers=ndjson)).status_code == 400  # fits
        assert (await client.post("/api/logs", json=entry())).status_code == 202
        assert writer.metrics.shed == 1 and writer.metrics.accepted == 2
    await stop(app)


async def test_a_declared_body_that_cannot_fit_is_refused_before_it_is_read(
        make_settings: Callable[..., Settings]) -> None:
    """Over real HTTP (uvicorn): with Content-Length, the 503 comes before the body is read, so a client
    that asks `Expect: 100-continue` is never told to send it, and one that sent it anyway keeps its
    connection (the unread body is skipped) for the next request."""
    dead = connection_string(f"http://127.0.0.1:{free_port()}/devstoreaccount1")
    budget = 1 << 20
    settings = make_settings(storage=dead, max_queue_bytes=budget, storage_timeout=1.0, stop_timeout=0.0)
    app = create_app(settings)
    async with served(app) as port:

        def post(body_bytes: int, *extra: bytes) -> bytes:
            return b"".join([b"POST /api/logs HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-ndjson\r\n",
                             b"Content-Length: %d\r\n" % body_bytes, *extra, b"\r\n"])

        async def answer(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, Any]]:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            _, _, fields = head.lower().partition(b"content-length: ")
            if not fields:  # an interim answer (100 Continue) has no body
                return head.split(b"\r\n")[0], {}
            length = int(fields.split(b"\r\n")[0])
            return head.split(b"\r\n")[0], orjson.loads(await reader.readexactly(length))

        one = orjson.dumps(entry()) + b"\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(len(one)) + one)  # queued: storage is down, so it stays
        assert (await answer(reader))[0] == b"HTTP/1.1 202 Accepted"
        big = budget - 10  # within the budget, over the room left
        writer.write(post(big, b"Expect: 100-continue\r\n"))
        status, body = await answer(reader)
        assert status == b"HTTP/1.1 503 Service Unavailable", status  # not "100 Continue": nothing was read
        assert f"no room for a body of {big} bytes" in body["error"]
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(big) + b"x" * big)  # sent whole, without asking: refused, and skipped unread
        assert (await answer(reader))[0] == b"HTTP/1.1 503 Service Unavailable"
        writer.write(post(len(one)) + one)  # the same connection still works
        assert (await answer(reader)) == (b"HTTP/1.1 202 Accepted", {"accepted": 1})
        writer.close()
        queued = await app.state.writer_holder.get()
        assert queued.metrics.shed == 2 and queued.metrics.accepted == 2 and queued.metrics.rejected == 0


async def test_api_key_is_checked_when_set(api: Callable[..., Any]) -> None:
    app, client, _ = await api(api_key="s3cret-key")
    assert (await client.post("/api/logs", json=entry())).status_code == 401
    wrong = await client.post("/api/logs", json=entry(), headers={"x-functions-key": "nope"})
    assert wrong.status_code == 401
    assert "s3cret" not in wrong.text
    assert (await client.post("/api/logs", json=entry(), headers={"x-functions-key": "s3cret-key"})).status_code == 202
    assert (await client.post("/api/logs?code=s3cret-key", json=entry())).status_code == 202
    assert (await client.get("/api/health")).status_code == 200
    # Metrics, like every route under Functions, needs the key: whoever may not write does not watch either.
    assert (await client.get("/api/metrics")).status_code == 401
    assert (await client.get("/api/metrics", headers={"x-functions-key": "nope"})).status_code == 401
    metrics = await client.get("/api/metrics?code=s3cret-key")
    assert metrics.status_code == 200 and "blobwriter_entries_accepted_total 2.0" in metrics.text


async def test_methods_and_paths(api: Callable[..., Any]) -> None:
    _, client, _ = await api()
    assert (await client.get("/api/logs")).status_code == 405
    assert (await client.delete("/api/health")).status_code == 405
    missing = await client.get("/api/nothing")
    assert missing.status_code == 404 and missing.json()["error"]


async def test_health_and_metrics(api: Callable[..., Any]) -> None:
    app, client, _ = await api()
    health = await client.get("/api/health")
    assert health.status_code == 200
    assert health.json()["state"] == "running" and health.json()["ok"] is True
    await client.post("/api/logs?wait=true", json=[entry(), entry()])
    await client.post("/api/logs", content=b"[1]", headers={"content-type": "application/json"})
    metrics = await client.get("/api/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for line in ("blobwriter_entries_accepted_total 2.0", "blobwriter_entries_written_total 2.0",
                 "blobwriter_entries_rejected_total 1.0", "blobwriter_frames_total 1.0",
                 "blobwriter_queue_depth 0.0", "blobwriter_append_seconds_count 1.0",
                 "blobwriter_batch_entries_bucket{le=\"2.0\"} 1.0"):
        assert line in text, line
    for name in ("blobwriter_bytes_raw_total", "blobwriter_bytes_stored_total", "blobwriter_retries_total"):
        assert name in text


async def test_health_is_503_when_storage_is_unreachable(make_settings: Callable[..., Settings]) -> None:
    dead = connection_string(f"http://127.0.0.1:{free_port()}/devstoreaccount1")
    app = create_app(make_settings(storage=dead, storage_timeout=1.0, stop_timeout=0.0))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.get("/api/health")
    await stop(app)
    assert response.status_code == 503
    assert response.json()["storage_error"]


async def test_health_recovers_with_storage_even_without_traffic(make_settings: Callable[..., Settings],
                                                                 azurite_upstream: str) -> None:
    """Storage down when the app starts, back later, no entry posted meanwhile: health follows storage."""
    async with StorageProxy(azurite_upstream, FaultPlan(down=True)) as proxy:
        app = create_app(make_settings(storage=connection_string(f"{proxy.url}/devstoreaccount1"),
                                       storage_timeout=1.0, stop_timeout=0.0))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            assert (await client.get("/api/health")).status_code == 503
            proxy.plan = FaultPlan()
            statuses = []
            for _ in range(100):  # the writer re-opens storage in the background, with backoff
                statuses.append((await client.get("/api/health")).status_code)
                if statuses[-1] == 200:
                    break
                await asyncio.sleep(0.1)
            assert statuses[-1] == 200, statuses
        await stop(app)


async def test_ack_setting_and_wait_override_either_way(api: Callable[..., Any]) -> None:
    """ack: written answers 200 once appended; ?wait=false asks for 202 instead; with ack: queued,
    ?wait=true asks for 200. A wait that is neither true nor false is a 400."""
    app, client, settings = await api(ack="written", batch_timeout=60)
    written = await client.post("/api/logs", json=entry(timestamp="2026-11-24T10:00:00Z"))
    assert (written.status_code, written.json()) == (200, {"written": 1})
    assert [e["id"] for e in await read_all(settings, ["2026-11-24"])]  # readable as soon as answered
    queued = await client.post("/api/logs?wait=false", json=entry(timestamp="2026-11-24T10:00:00Z"))
    assert (queued.status_code, queued.json()) == (202, {"accepted": 1})
    bad = await client.post("/api/logs?wait=maybe", json=entry())
    assert bad.status_code == 400 and "wait" in bad.json()["error"]

    app, client, settings = await api(ack="queued", batch_timeout=60)
    assert (await client.post("/api/logs", json=entry())).status_code == 202
    assert (await client.post("/api/logs?wait=true", json=entry())).status_code == 200


def nested(depth: int, leaf: Any) -> bytes:
    """An entry whose field `x` holds `depth` levels of objects (the entry itself is one more)."""
    return b'{"timestamp":"2026-11-24T10:00:00Z","x":' + b'{"a":' * depth + orjson.dumps(leaf) + b"}" * depth + b"}"


async def test_deep_nesting_is_a_400_naming_the_limit_with_or_without_privacy_controls(
        api: Callable[..., Any]) -> None:
    """orjson writes at most 254 levels; deeper entries are refused with that limit named, also when a
    privacy control walks the entry first (it used to exhaust Python's recursion: a 500)."""
    app, client, settings = await api()
    headers = {"content-type": "application/json"}
    ok = await client.post("/api/logs?wait=true&truncate_bytes=4", content=nested(253, "y" * 20), headers=headers)
    assert ok.status_code == 200, ok.text
    for depth in (254, 990, 1000):
        for query in ("", "?truncate_bytes=10", "?drop=" + ".".join(["x"] + ["a"] * 995)):
            response = await client.post("/api/logs" + query, content=nested(depth, "y" * 20), headers=headers)
            assert response.status_code == 400, (depth, query, response.text)
            error = response.json()["error"]
            assert f"entry has {TOO_DEEP}" in error, error
    stored = await read_all(settings, ["2026-11-24"])
    assert len(stored) == 1 and "truncated" in orjson.dumps(stored[0]).decode()


async def test_a_body_nested_past_the_parsers_own_limit_is_a_400_naming_the_254_level_limit(
        api: Callable[..., Any]) -> None:
    """The body parsers stop at their own depth (orjson: 1,024 levels; Python's json: its recursion limit)
    and said 'depth limit exceeded' or 'nested too deeply', where admission names 254 levels. One limit,
    named the same way, in every body shape."""
    app, client, _ = await api()
    deep = nested(2000, 1)
    bodies = {
        "object": (deep, "application/json"),
        "array": (b"[" + deep + b"]", "application/json"),
        "ndjson": (b"{}\n" + deep + b"\n", "application/x-ndjson"),
        "exact integers": (nested(2000, 12345678901234567890), "application/json"),  # 19 digits: json, not orjson
    }
    for shape, (body, content_type) in bodies.items():
        response = await client.post("/api/logs", content=body, headers={"content-type": content_type})
        assert response.status_code == 400, (shape, response.text)
        error = response.json()["error"]
        assert f"has {TOO_DEEP}" in error and "254 levels" in error, (shape, error)
        assert "line 2" in error if shape == "ndjson" else "line" not in error, (shape, error)


async def test_query_parameters_take_ascii_digits_and_bare_flags(api: Callable[..., Any]) -> None:
    """?truncate_bytes=² (a Unicode digit int() refuses) is a 400, not a 500; a bare ?wait means true,
    and ?wait=true over no entries is 200 {"written": 0} like any other durable answer."""
    app, client, _ = await api(batch_timeout=60)
    for value in ("%C2%B2", "%D9%A1%D9%A2", ""):
        response = await client.post(f"/api/logs?truncate_bytes={value}", json=entry())
        assert response.status_code == 400 and "truncate_bytes" in response.json()["error"], value
    for query in ("?wait", "?wait="):
        response = await client.post("/api/logs" + query, json=entry())
        assert (response.status_code, response.json()) == (200, {"written": 1}), query
    for body, ctype in ((b"[]", "application/json"), (b"", "application/x-ndjson")):
        response = await client.post("/api/logs?wait=true", content=body, headers={"content-type": ctype})
        assert (response.status_code, response.json()) == (200, {"written": 0}), ctype
    assert (await client.post("/api/logs", json=[])).status_code == 202


async def test_a_compressed_body_is_415_naming_content_encoding(api: Callable[..., Any]) -> None:
    """Content-Encoding was ignored: a gzip body got a 400 about UTF-8 surrogates, and a plain body
    labelled gzip was stored."""
    app, client, _ = await api()
    body = orjson.dumps(entry())
    for coding, content in (("gzip", gzip.compress(body)), ("gzip", body), ("br", body), ("deflate", body)):
        response = await client.post("/api/logs", content=content,
                                     headers={"content-type": "application/json", "content-encoding": coding})
        assert response.status_code == 415 and "Content-Encoding" in response.json()["error"], coding
    plain = await client.post("/api/logs", content=body,
                              headers={"content-type": "application/json", "content-encoding": "identity"})
    assert plain.status_code == 202


async def test_encoding_errors_are_named_alike_in_every_body_shape(api: Callable[..., Any]) -> None:
    """Invalid UTF-8 is 'not UTF-8 (... at byte N)' whether the body is an object, NDJSON or an array
    (orjson's words were 'surrogates not allowed'); a lone surrogate escape is refused by name; a form
    feed is not JSON whitespace, before an array as before an object."""
    app, client, _ = await api()
    bad = b'{"timestamp":"2026-11-24T10:00:00Z","k":"\xff\xfe"}'
    for content, ctype in ((bad, "application/json"), (b"[" + bad + b"]", "application/json"),
                           (bad + b"\n", "application/x-ndjson")):
        response = await client.post("/api/logs", content=content, headers={"content-type": ctype})
        error = response.json()["error"]
        assert response.status_code == 400 and "not UTF-8" in error and "at byte" in error, error
        assert "surrogates" not in error
    lone = b'[{"timestamp":"2026-11-24T10:00:00Z","k":"\\ud800"}]'
    response = await client.post("/api/logs", content=lone, headers={"content-type": "application/json"})
    assert response.status_code == 400 and "unpaired UTF-16 surrogate" in response.json()["error"]
    for prefix in (b"\x0c", b"\x0b"):
        for doc in (b'[{"k":1}]', b'{"k":1}'):
            response = await client.post("/api/logs", content=prefix + doc,
                                         headers={"content-type": "application/json"})
            assert response.status_code == 400, (prefix, doc)
