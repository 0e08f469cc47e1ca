"""The write path that sizes itself (issue 10), against a real Azurite: many frames per append, a
byte budget, throttling as back-pressure, errors that cannot heal, flush under load, a drain that
finishes, and a fleet of writers on the same dates. No test asserts a duration."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from blobwriter.api import create_app
from blobwriter.appender import Frame, Lane, resume_time
from blobwriter.codec import Encoder
from blobwriter.config import Settings
from blobwriter.errors import EntryTooLargeError, QueueFullError, StoreError, WriteFailedError
from blobwriter.layout import writer_blob
from blobwriter.store import Appended, DirectoryStore
from blobwriter.writer import LogWriter
from tests.conftest import connection_string, entry
from tests.support.proxy import FaultPlan, StorageProxy, is_append
from tests.support.readback import assert_each_once, container_client, read_back

DAY = "2026-06-01"
OTHER_DAY = "2026-06-02"
LIVENESS = 60.0  # a generous bound for "eventually", never a performance threshold


def day_entry(day: str = DAY, **fields: Any) -> dict[str, Any]:
    return entry(timestamp=f"{day}T10:00:00Z", **fields)


def through(proxy: StorageProxy) -> str:
    return connection_string(f"{proxy.url}/devstoreaccount1")


async def test_a_backlog_goes_in_few_large_appends(make_settings: Callable[..., Settings],
                                                   azurite_upstream: str) -> None:
    """A backlog of 20,000 entries queued behind a slow store (0.3 s a request) is drained at stop in
    appends that each carry hundreds of frames, never more than batch_size entries a frame."""
    async with StorageProxy(azurite_upstream, FaultPlan(latency=0.3)) as proxy:
        settings = make_settings(storage=through(proxy), batch_size=10, batch_timeout=1.0, max_queue_size=20_000)
        entries = [day_entry(n=n) for n in range(20_000)]
        writer = LogWriter(settings)
        await writer.start()
        for start in range(0, len(entries), 1000):
            await writer.write_many(entries[start:start + 1000])
        await writer.stop()
    m = writer.metrics
    assert (m.accepted, m.written, m.failed) == (20_000, 20_000, 0)
    assert m.frames == 2000  # batch_size 10: a frame never holds more
    # Every append but the last of a round is full: the appends are bounded by the bytes stored.
    assert m.appends <= math.ceil(m.bytes_stored / settings.max_append_bytes) + 2 * settings.max_concurrent_writes
    assert m.appends < m.frames / 50
    found, report = await read_back(make_settings(), [DAY], verify=True)
    assert_each_once(found, [e["id"] for e in entries])
    assert report.ok and report.unindexed == 0


async def test_byte_budget_gives_back_pressure_and_refuses_what_can_never_fit(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(max_queue_bytes=1024 * 1024, max_entry_bytes=100_000, batch_timeout=60)
    big = [day_entry(pad="x" * 90_000) for _ in range(12)]  # ~1.08 MB in all
    writer = LogWriter(settings)
    await writer.start()
    try:
        with pytest.raises(EntryTooLargeError, match="max_queue_bytes"):
            await writer.write_many(big)  # one call over the budget: retrying could never help
        assert writer.metrics.rejected == 12 and writer.queue_depth == 0
        await writer.write_many(big[:11])
        with pytest.raises(QueueFullError, match="max_queue_bytes") as caught:
            await writer.write(big[11])  # fits alone, not on top of what is queued: try later
        assert caught.value.retry_after >= 1
        await writer.flush()
        await writer.write(big[11])
    finally:
        await writer.stop()
    assert writer.metrics.written == 12 and writer.metrics.failed == 0


async def test_a_huge_body_of_tiny_entries_is_413_without_being_read_whole(
        make_settings: Callable[..., Settings]) -> None:
    """9 MB of `{}`: 3 million entries, far more than max_queue_size. Admission stops at the limit."""
    app = create_app(make_settings())
    body = b"[" + b",".join([b"{}"] * 3_000_000) + b"]"
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            response = await client.post("/api/logs", content=body, headers={"content-type": "application/json"})
            ndjson = await client.post("/api/logs", content=b"{}\n" * 3_000_000,
                                       headers={"content-type": "application/x-ndjson"})
    finally:
        writer = await app.state.writer_holder.get()
        await app.state.writer_holder.stop()
    for answer in (response, ndjson):
        assert answer.status_code == 413, answer.text
        assert "max_queue_size" in answer.json()["error"] and "Retry-After" not in answer.headers
    read = writer.settings.max_queue_size + 1
    assert writer.metrics.rejected == 2 * read  # the entries read before the limit, not 6 million
    assert writer.metrics.accepted == 0


async def test_flush_waits_only_for_what_was_accepted_before_it(make_settings: Callable[..., Settings],
                                                               azurite_upstream: str) -> None:
    """Under steady load the queue is never empty, yet flush() returns once the entries accepted
    before the call are written."""
    async with StorageProxy(azurite_upstream, FaultPlan(latency=0.2)) as proxy:
        settings = make_settings(storage=through(proxy), batch_size=10, batch_timeout=0.5)
        writer = LogWriter(settings)
        await writer.start()
        stop = asyncio.Event()
        later: list[str] = []

        async def steady() -> None:
            while not stop.is_set():
                e = day_entry()
                await writer.write(e)
                later.append(e["id"])
                await asyncio.sleep(0.002)

        before = [day_entry() for _ in range(500)]
        await writer.write_many(before)
        producer = asyncio.create_task(steady())
        await asyncio.sleep(0.3)
        try:
            await asyncio.wait_for(writer.flush(), LIVENESS)
            assert writer.queue_depth > 0  # the load goes on: the queue did not have to empty
            found, _ = await read_back(make_settings(), [DAY])
            assert {e["id"] for e in before} <= {e["id"] for e in found}
        finally:
            stop.set()
            await producer
            await writer.stop()
    found, _ = await read_back(make_settings(), [DAY])
    assert_each_once(found, [*(e["id"] for e in before), *later])


async def test_stop_that_times_out_reports_every_entry_and_releases_every_waiter(
        make_settings: Callable[..., Settings], azurite_upstream: str) -> None:
    """Regression: a stop() timing out could cancel a batch before it started; its entries were then
    neither written nor reported, and wait=True callers hung. Now every accepted entry ends written or
    failed, and every durable caller gets an answer."""
    async with StorageProxy(azurite_upstream) as proxy:
        settings = make_settings(storage=through(proxy), batch_size=5, batch_timeout=60, max_concurrent_writes=2)
        writer = LogWriter(settings)
        await writer.start()
        await writer.write(day_entry(), wait=True)
        proxy.plan = FaultPlan(down=True)
        await writer.write_many([day_entry() for _ in range(2000)])
        durable = [asyncio.create_task(writer.write(day_entry(), wait=True)) for _ in range(50)]
        await asyncio.sleep(0.2)
        await writer.stop(timeout=0.5)
        outcomes = await asyncio.wait_for(asyncio.gather(*durable, return_exceptions=True), LIVENESS)
    assert all(isinstance(o, WriteFailedError) for o in outcomes)
    m = writer.metrics
    assert m.accepted == 2051 and m.written + m.failed == m.accepted and m.failed >= 2050
    assert writer.queue_depth == 0


def _appends_to_day(request: web.BaseRequest) -> bool:
    """The appends to DAY's blob (the one date a proxy refuses)."""
    return is_append(request) and f"/{DAY}/" in request.path


async def test_an_unhealable_error_fails_its_entries_in_time_and_never_blocks_another_date(
        make_settings: Callable[..., Settings], azurite_upstream: str) -> None:
    """403 on one date's blob (a role missing): its entries are reported failed after give_up_after;
    the other date's entries are written meanwhile."""
    async with StorageProxy(azurite_upstream, FaultPlan(refuse_share=1.0, only=_appends_to_day)) as proxy:
        settings = make_settings(storage=through(proxy), give_up_after=1.0, retry_backoff_max=0.2)
        async with LogWriter(settings) as writer:
            refused = asyncio.create_task(writer.write_many([day_entry() for _ in range(30)], wait=True))
            other = [day_entry(OTHER_DAY) for _ in range(30)]
            await asyncio.wait_for(writer.write_many(other, wait=True), LIVENESS)
            with pytest.raises(WriteFailedError, match="give_up_after"):
                await asyncio.wait_for(refused, LIVENESS)
    assert proxy.counts["refuse"] >= 2  # retried within give_up_after, then given up
    assert writer.metrics.failed == 30 and writer.metrics.written == 30
    found, report = await read_back(make_settings(), [DAY, OTHER_DAY])
    assert_each_once(found, [e["id"] for e in other])


def _give_up_schedule(give_up_after: float, backoff_max: float, jitter: float, capped: bool) -> tuple[float, int]:
    """When (seconds after the first failure) and at which attempt an unhealable error's frame is given up
    on, if every attempt failed at once (a request that takes no time) and the lane waited resume_time."""
    now, failures, paused = 0.0, 0, 0.0
    while now < give_up_after:  # each failed attempt checks the frame's age, as Appender._give_up_on_old does
        failures += 1
        paused = now = resume_time(now, failures, backoff_max, jitter, paused, give_up_after if capped else None)
    return now, failures + 1


@pytest.mark.parametrize("give_up_after", [1.0, 5.0, 300.0])
@pytest.mark.parametrize("backoff_max", [0.2, 30.0])
@pytest.mark.parametrize("jitter", [0.5, 0.77, 1.0])
def test_the_last_wait_before_giving_up_ends_at_give_up_after(give_up_after: float, backoff_max: float,
                                                              jitter: float) -> None:
    """The retry that gives an unhealable error's frames up came up to a whole backoff step after
    give_up_after (QA: 10.2 s for 5 s): the wait before it is now cut to the time left, so they are
    given up when give_up_after has passed plus one request's duration, whatever the jitter."""
    at, attempts = _give_up_schedule(give_up_after, backoff_max, jitter, capped=True)
    assert at == give_up_after
    late, late_attempts = _give_up_schedule(give_up_after, backoff_max, jitter, capped=False)  # as before
    assert late >= at and late_attempts == attempts
    if (give_up_after, backoff_max, jitter) == (5.0, 30.0, 1.0):
        assert late == 7.5  # 0.5 + 1 + 2 + 4: the step of 4 s began at 3.5 s


def test_resume_time_keeps_the_backoff_rules() -> None:
    assert [resume_time(0.0, n, 30.0, 1.0) for n in (1, 2, 3, 7, 8)] == [0.5, 1.0, 2.0, 30.0, 30.0]
    assert resume_time(10.0, 1, 30.0, 0.5) == 10.25  # jitter
    assert resume_time(10.0, 1, 30.0, 1.0, paused_until=20.0) == 20.0  # an earlier, longer pause holds
    assert resume_time(10.0, 1, 30.0, 1.0, paused_until=20.0, give_up_at=15.0) == 15.0  # but not past the deadline
    assert resume_time(10.0, 3, 30.0, 1.0, give_up_at=5.0) == 10.0  # a frame past it: at once, to give it up
    assert resume_time(0.0, 5000, 30.0, 1.0) == 30.0  # ~8 hours of 30 s retries: 2 ** 1024 overflowed a float


def test_frames_sealed_again_off_the_loop_count_in_another_appends_deadline(make_settings: Callable[..., Settings],
                                                                             tmp_path: Path) -> None:
    """A failed append's frames over 256 KiB are sealed again in a thread, out of the lane meanwhile. If
    another append of the lane failed then, its wait was capped by its own frames' deadline only, and the
    older frames could be given up a whole backoff step after give_up_after. They are the lane's `away`
    while sealed, and count: here 1 s of give_up_after is left to them, 5 s to the append that failed."""
    writer = LogWriter(make_settings(storage=str(tmp_path / "store"), give_up_after=5.0, retry_backoff_max=30.0))
    appender = writer._appender
    lane = Lane(DAY, 4.0)
    lane.failures, lane.in_flight = 6, 2  # the next backoff step is 15-30 s
    now = time.monotonic()
    older = Frame(DAY, b"", b"sealed", "blob", lambda frame, outcome: None)
    older.failing_since = now - 4.0
    lane.away.append(older)
    failed = Frame(DAY, b"", b"sealed", "blob", lambda frame, outcome: None)
    kept = appender._failed(lane, [failed], 0, StoreError("refused", status=403), now)
    assert kept == [failed] and failed.failing_since is not None
    assert lane.resume_at == older.failing_since + 5.0  # not failed.failing_since + 5.0, nor the backoff step


async def test_an_unhealable_error_waits_no_longer_than_give_up_after_in_all(
        make_settings: Callable[..., Settings], azurite_upstream: str, caplog: pytest.LogCaptureFixture) -> None:
    """Through a proxy that refuses DAY's appends (403), against Azurite: the waits the writer logged
    between its attempts add up to at most give_up_after (each attempt starts no earlier than its wait
    ends, and the last wait ends at the deadline), so the attempt after them gives the entry up. Before,
    the last wait was a whole backoff step whatever time was left (a total of 7.5 s for 2 s here, say)."""
    async with StorageProxy(azurite_upstream, FaultPlan(refuse_share=1.0, only=_appends_to_day)) as proxy:
        settings = make_settings(storage=through(proxy), give_up_after=2.0)
        with caplog.at_level("WARNING", logger="blobwriter.writer"):
            async with LogWriter(settings) as writer:
                with pytest.raises(WriteFailedError, match="give_up_after"):
                    await asyncio.wait_for(writer.write(day_entry(), wait=True), LIVENESS)
    waits = [float(r.args[-1]) for r in caplog.records  # type: ignore[index, arg-type]
             if r.getMessage().startswith("Append of 1 frames") and "retrying in" in r.getMessage()]
    assert proxy.counts["refuse"] == len(waits) + 1 >= 3  # the last attempt gives up instead of waiting
    assert sum(waits) <= 2.0 or math.isclose(sum(waits), 2.0), waits
    assert writer.metrics.failed == 1 and writer.metrics.retries == len(waits) + 1


async def test_health_recovers_once_an_unhealable_errors_entries_are_given_up_on(
        make_settings: Callable[..., Settings], azurite_upstream: str) -> None:
    """403 on one date's blob: health is 503 while its entries are retried, and ok again once they are
    reported failed and nothing else fails (it stayed 503 for the process's life, an idle writer
    whose other dates were written)."""
    async with StorageProxy(azurite_upstream, FaultPlan(refuse_share=1.0, only=_appends_to_day)) as proxy:
        settings = make_settings(storage=through(proxy), give_up_after=1.0, retry_backoff_max=0.2)
        async with LogWriter(settings) as writer:
            refused = asyncio.create_task(writer.write_many([day_entry() for _ in range(5)], wait=True))
            while not writer.metrics.retries:
                await asyncio.sleep(0.01)
            failing = await writer.health()
            with pytest.raises(WriteFailedError, match="give_up_after"):
                await asyncio.wait_for(refused, LIVENESS)
            await writer.write_many([day_entry(OTHER_DAY) for _ in range(5)], wait=True)
            after = await writer.health()
    assert failing["ok"] is False and "403" in failing["storage_error"]
    assert after["ok"] is True and after["storage_error"] is None, after
    assert writer.metrics.failed == 5 and writer.metrics.written == 5


async def test_storage_error_codes_are_the_services_own(make_settings: Callable[..., Settings],
                                                       azurite_upstream: str) -> None:
    """QA ops: the SDK turns most error codes into StorageErrorCode members, and str() of one is
    "StorageErrorCode.OPERATION_TIMED_OUT": 500 OperationTimedOut was not taken for throttling (the
    window stayed wide, the throttled count 0), and messages and health showed the enum's name."""
    plan = FaultPlan(refuse_share=1.0, refuse_status=500, refuse_code="OperationTimedOut")
    async with StorageProxy(azurite_upstream, plan) as proxy:
        writer = LogWriter(make_settings(storage=through(proxy), retry_backoff_max=0.2))
        await writer.start()
        await writer.write(day_entry())
        while not writer.metrics.retries:
            await asyncio.sleep(0.01)
        health = await writer.health()
        await writer.stop(timeout=0)
    assert writer.metrics.throttled >= 1 and writer.metrics.failed == 1
    assert "500 OperationTimedOut: " in health["storage_error"], health


async def test_appends_that_work_again_after_failures_say_so(make_settings: Callable[..., Settings],
                                                            azurite_upstream: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """QA ops: an outage logs a warning per failed append, and its end logged nothing: the log could not
    tell an operator whether storage had come back. One INFO line now marks it."""
    async with StorageProxy(azurite_upstream, FaultPlan(down=True)) as proxy:
        async with LogWriter(make_settings(storage=through(proxy), retry_backoff_max=0.2)) as writer:
            with caplog.at_level("INFO", logger="blobwriter.writer"):
                waiting = asyncio.create_task(writer.write(day_entry(), wait=True))
                while writer.metrics.retries < 2:
                    await asyncio.sleep(0.01)
                proxy.plan = FaultPlan()
                await asyncio.wait_for(waiting, LIVENESS)
    back = [r.getMessage() for r in caplog.records if "works again" in r.getMessage()]
    assert len(back) == 1 and back[0].startswith(f"Appending to {DAY} part 0 works again, after "), back
    assert int(back[0].split("after ")[1].split()[0]) == writer.metrics.retries


async def test_a_block_blob_in_the_way_rolls_to_the_next_part(make_settings: Callable[..., Settings]) -> None:
    """409 InvalidBlobType (a block blob has the part's name): the writer moves to the next part."""
    settings = make_settings()
    writer = LogWriter(settings)
    async with container_client(settings) as container:
        await container.create_container()
        await container.upload_blob(writer_blob("", DAY, writer.writer_id, 0), b"")  # an empty block blob
    entries = [day_entry() for _ in range(20)]
    async with writer:
        await writer.write_many(entries, wait=True)
    assert writer.metrics.retries >= 1 and writer.metrics.failed == 0
    found, report = await read_back(settings, [DAY], verify=True)
    assert_each_once(found, [e["id"] for e in entries])
    assert report.ok and report.parts == 2


async def test_a_leased_blob_rolls_to_the_next_part(make_settings: Callable[..., Settings]) -> None:
    """Someone holds a lease on the writer's blob (412 LeaseIdMissing): the writer moves on."""
    settings = make_settings()
    first, then = [day_entry() for _ in range(10)], [day_entry() for _ in range(10)]
    async with LogWriter(settings) as writer:
        await writer.write_many(first, wait=True)
        async with container_client(settings) as container:
            await container.get_blob_client(writer_blob("", DAY, writer.writer_id, 0)).acquire_lease()
        await asyncio.wait_for(writer.write_many(then, wait=True), LIVENESS)
    assert writer.metrics.failed == 0
    found, report = await read_back(settings, [DAY], verify=True)
    assert_each_once(found, [e["id"] for e in first + then])
    assert report.ok and report.parts == 2


async def test_throttling_narrows_the_window_instead_of_storming(make_settings: Callable[..., Settings],
                                                                 azurite_upstream: str) -> None:
    """A blob limited to 10 requests a second (Azure's ServerBusy, scaled down) and a writer that would
    send 16 appends at once: it backs off, carries more frames per append, loses and duplicates
    nothing, and most of its append requests are not throttled."""
    async with StorageProxy(azurite_upstream, FaultPlan(per_blob_limit=10)) as proxy:
        settings = make_settings(storage=through(proxy), batch_size=10, max_concurrent_writes=16,
                                 retry_backoff_max=1.0)
        entries = [day_entry() for _ in range(4000)]
        async with LogWriter(settings) as writer:
            for start in range(0, len(entries), 20):  # durable calls: each wants its append now
                await asyncio.gather(*(writer.write(e, wait=True) for e in entries[start:start + 20]))
    m = writer.metrics
    assert proxy.counts["throttled"] > 0 and m.throttled > 0
    assert m.failed == 0 and m.written == len(entries)
    assert m.throttled < (m.appends + m.throttled) / 2, (m.throttled, m.appends)
    found, report = await read_back(make_settings(), [DAY], verify=True)
    assert_each_once(found, [e["id"] for e in entries])
    assert report.ok


async def test_a_fleet_of_writers_on_the_same_dates(make_settings: Callable[..., Settings],
                                                    azurite_upstream: str) -> None:
    """Eight writers (each its own writer id, as instances are) on two dates through a proxy that
    throttles any one blob past 20 requests a second: each writes its own blobs, nothing is lost or
    duplicated, and few requests are throttled. (bench/ runs this at full scale, in processes.)"""
    async with StorageProxy(azurite_upstream, FaultPlan(per_blob_limit=20)) as proxy:
        settings = make_settings(storage=through(proxy), batch_size=10, batch_timeout=0.2)
        writers = [LogWriter(settings) for _ in range(8)]
        entries = [[day_entry(DAY if n % 2 else OTHER_DAY, w=w) for n in range(1500)] for w in range(8)]
        await asyncio.gather(*(w.start() for w in writers))

        async def feed(writer: LogWriter, mine: list[dict[str, Any]]) -> None:
            for start in range(0, len(mine), 50):
                await writer.write_many(mine[start:start + 50])
                await asyncio.sleep(0.01)

        await asyncio.gather(*(feed(w, e) for w, e in zip(writers, entries, strict=True)))
        await asyncio.gather(*(w.stop() for w in writers))
    assert sum(w.metrics.failed for w in writers) == 0
    throttled = sum(w.metrics.throttled for w in writers)
    appends = sum(w.metrics.appends for w in writers)
    assert throttled <= appends / 4, (throttled, appends)
    found, report = await read_back(make_settings(), [DAY, OTHER_DAY], verify=True)
    assert_each_once(found, [e["id"] for mine in entries for e in mine])
    assert report.ok and report.duplicates == 0
    async with container_client(make_settings()) as container:
        names = [b.name async for b in container.list_blobs()]
    assert sorted(names) == sorted(writer_blob("", d, w.writer_id, 0) for w in writers for d in (DAY, OTHER_DAY))


async def test_an_oversize_batch_is_split_before_encoding(make_settings: Callable[..., Settings],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The split is decided from the entries' size: each frame is compressed and sealed once."""
    limit = 64 * 1024
    settings = make_settings(batch_size=1000, max_append_bytes=limit, max_entry_bytes=limit - 4096)
    bodies: list[int] = []
    real_body = Encoder.body

    def counting_body(self: Encoder, lines: Any, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("index"):
            bodies.append(len(lines))
        return real_body(self, lines, *args, **kwargs)

    monkeypatch.setattr(Encoder, "body", counting_body)
    entries = [day_entry(pad="y" * 20_000) for _ in range(30)]
    async with LogWriter(settings) as writer:
        await writer.write_many(entries)
    assert len(bodies) == writer.metrics.frames > 1  # one compressed body per frame: nothing encoded twice
    assert sum(bodies) == 30
    found, _ = await read_back(settings, [DAY])
    assert_each_once(found, [e["id"] for e in entries])
    assert max(len(orjson.dumps(e)) for e in entries) < limit


async def test_frames_waiting_when_the_blob_rolls_are_sealed_for_the_new_part(tmp_path: Path, key: str) -> None:
    """Regression: frames sealed for part 0 while an append to it was failing with BlockCountExceedsLimit
    went into part 1 with part 0's name authenticated, and read as damage. Each is sealed again."""

    class FullPartZero(DirectoryStore):
        def __init__(self, root: Path) -> None:
            super().__init__(root)
            self.gate = asyncio.Event()
            self.waiting = 0

        async def append(self, name: str, data: bytes) -> Appended:
            if name.endswith(".0000.log"):
                self.waiting += 1
                await self.gate.wait()
                raise StoreError("full", code="BlockCountExceedsLimit", status=409)
            return await super().append(name, data)

    settings = Settings.from_values({"storage": str(tmp_path), "encryption_key": key, "batch_size": 5,
                                     "batch_timeout": 0.1, "max_concurrent_writes": 1})
    store = FullPartZero(tmp_path)
    writer = LogWriter(settings, store=store)
    await writer.start()
    batches = [[day_entry(b=b) for _ in range(10)] for b in range(3)]
    await writer.write_many(batches[0])
    for _ in range(200):  # until the first append waits on part 0
        if store.waiting:
            break
        await asyncio.sleep(0.01)
    await writer.write_many(batches[1])  # these frames are sealed for part 0 while it waits
    await writer.write_many(batches[2])
    await asyncio.sleep(0.3)
    store.gate.set()
    await writer.stop()
    assert writer.metrics.failed == 0 and writer.metrics.written == 30
    found, report = await read_back(settings, [DAY], verify=True)
    assert_each_once(found, [e["id"] for batch in batches for e in batch])
    assert report.ok, report.problems
    assert report.parts == 1  # part 0 never got a byte
