"""LogWriter against a real Azurite (and a directory): batching, dates, durability, faults, rollover."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from blobwriter.codec import FrameHeader
from blobwriter.config import Settings
from blobwriter.errors import (
    EntryError,
    QueueFullError,
    WriteFailedError,
    WriterStoppedError,
)
from blobwriter.layout import writer_blob
from blobwriter.limits import FRAME_OVERHEAD_BYTES
from blobwriter.store import Appended, Store, open_store
from blobwriter.writer import LogWriter
from tests.conftest import connection_string, entry
from tests.support.proxy import FaultPlan, StorageProxy
from tests.support.readback import (
    assert_each_once,
    blob_bytes,
    committed_blocks,
    frames_in,
    list_blobs,
    read_back,
)

DAY = "2026-05-17"
TS = f"{DAY}T12:00:00.000Z"
LIVENESS = 30.0  # generous bound for "eventually", never a performance threshold


def day_entry(**fields: Any) -> dict[str, Any]:
    return entry(timestamp=TS, **fields)


def utc_day(timestamp: str) -> str:
    moment = datetime.fromisoformat(timestamp)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.date().isoformat()


def proxied(proxy: StorageProxy) -> str:
    return connection_string(f"{proxy.url}/devstoreaccount1")


async def eventually(condition: Callable[[], Any], what: str) -> None:
    """Wait until condition() is true (polled), failing after a generous liveness bound."""
    deadline = asyncio.get_running_loop().time() + LIVENESS
    while not await _call(condition):
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"not within {LIVENESS}s: {what}")
        await asyncio.sleep(0.05)


async def _call(condition: Callable[[], Any]) -> Any:
    result = condition()
    return await result if asyncio.iscoroutine(result) else result


async def data_frames(settings: Settings, dates: list[str]) -> dict[str, list[FrameHeader]]:
    """The data frames (not index frames) of each part of the dates, from the raw stored bytes."""
    store = open_store(settings)
    try:
        found = {}
        for day in dates:
            for name in await store.parts(day):
                found[name] = [h for _, h in frames_in(await blob_bytes(store, name)) if not h.is_index]
        return found
    finally:
        await store.close()


class GatedStore:
    """The real store with appends held until `gate` is set: storage that hangs, then recovers."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.waiting = 0
        self.description = inner.description
        self.prefix = inner.prefix

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def append(self, name: str, data: bytes) -> Appended:
        self.waiting += 1
        await self.gate.wait()
        return await self.inner.append(name, data)

    async def parts(self, date: str) -> list[str]:
        return await self.inner.parts(date)

    async def sizes(self, date: str) -> dict[str, int]:
        return await self.inner.sizes(date)

    def read(self, name: str) -> AsyncIterator[bytes]:
        return self.inner.read(name)

    async def check(self) -> None:
        await self.inner.check()


async def test_write_many_is_all_or_none(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(batch_timeout=60)
    writer = LogWriter(settings)
    with pytest.raises(WriterStoppedError):
        await writer.write(day_entry())  # not started
    await writer.start()
    try:
        good = [day_entry() for _ in range(3)]
        with pytest.raises(EntryError):
            await writer.write_many([*good, ["not", "an", "object"]])
        assert writer.metrics.accepted == 0 and writer.queue_depth == 0
        assert writer.metrics.rejected == 4  # every entry of the refused call, as the metric says
        assert await writer.write_many(good) == 3
    finally:
        await writer.stop()
    entries, _ = await read_back(settings, [DAY])
    assert_each_once(entries, [e["id"] for e in good])


async def test_a_write_before_start_says_to_call_start(make_settings: Callable[..., Settings]) -> None:
    """A hands-on review found "writer is new; entries are not accepted": true, but not what to do."""
    writer = LogWriter(make_settings())
    for call in (writer.write(day_entry()), writer.write_many([day_entry()])):
        with pytest.raises(WriterStoppedError, match=r"call start\(\) \(or use `async with LogWriter"):
            await call
    assert writer.metrics.accepted == 0


# -- batching and timing ---------------------------------------------------------------------

async def test_frames_hold_at_most_batch_size(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(batch_size=7, max_concurrent_writes=4)
    entries = [day_entry() for _ in range(100)]
    async with LogWriter(settings) as writer:
        for e in entries:  # queued without yielding: the batch task sees them all at once
            await writer.write(e)
    frames = [h for headers in (await data_frames(settings, [DAY])).values() for h in headers]
    sizes = [h.entries for h in frames]
    assert max(sizes) <= 7
    assert sum(sizes) == 100
    assert len(frames) == math.ceil(100 / 7)  # full batches, one partial
    registry = writer.metrics.registry
    assert registry.get_sample_value("blobwriter_batch_entries_count") == len(frames)
    assert registry.get_sample_value("blobwriter_batch_entries_sum") == 100
    assert registry.get_sample_value("blobwriter_batch_entries_bucket", {"le": "5.0"}) == 1  # only the partial
    assert writer.metrics.frames == len(frames)
    read, report = await read_back(settings, [DAY])
    assert_each_once(read, [e["id"] for e in entries])
    assert [e for e in read if e["id"] == entries[0]["id"]] == [entries[0]]


async def test_partial_batch_written_after_timeout_without_stop(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(batch_size=100, batch_timeout=0.1)
    writer = LogWriter(settings)
    await writer.start()
    try:
        entries = [day_entry() for _ in range(3)]
        await writer.write_many(entries)

        async def readable() -> bool:
            found, _ = await read_back(settings, [DAY])
            return len(found) == 3

        await eventually(readable, "a partial batch is written once batch_timeout passes")
        found, _ = await read_back(settings, [DAY])
        assert_each_once(found, [e["id"] for e in entries])
        assert writer.metrics.frames == 1 and writer.metrics.written == 3
        assert writer.state == "running"
    finally:
        await writer.stop()


async def test_partial_batch_waits_for_timeout(make_settings: Callable[..., Settings]) -> None:
    """With a long batch_timeout, a partial batch stays queued until flush() (or stop)."""
    settings = make_settings(batch_size=100, batch_timeout=60)
    writer = LogWriter(settings)
    await writer.start()
    try:
        await writer.write_many([day_entry() for _ in range(5)])
        await asyncio.sleep(0.3)
        assert writer.metrics.written == 0 and writer.queue_depth == 5
        await writer.write_many([day_entry() for _ in range(95)])  # a full batch goes at once
        await eventually(lambda: writer.metrics.written == 100, "a full batch is written without waiting")
        await writer.write_many([day_entry() for _ in range(4)])
        await asyncio.wait_for(writer.flush(), LIVENESS)
        assert writer.metrics.written == 104 and writer.queue_depth == 0
    finally:
        await writer.stop()


async def test_concurrent_writers_each_entry_once(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(batch_size=25, max_concurrent_writes=8)
    ids: list[str] = []

    async def producer(writer: LogWriter, n: int) -> None:
        for k in range(5):
            e = day_entry(producer=n, k=k)
            ids.append(e["id"])
            await writer.write(e, wait=(n % 10 == 0 and k == 4))
            await asyncio.sleep(0)

    async with LogWriter(settings) as writer:
        await asyncio.gather(*(producer(writer, n) for n in range(400)))
    assert writer.metrics.snapshot()["accepted"] == writer.metrics.written == 2000
    assert writer.metrics.failed == 0
    entries, report = await read_back(settings, [DAY])
    assert_each_once(entries, ids)
    assert report.ok and report.duplicates == 0


async def test_stop_flushes_queue(make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="blobwriter.writer")
    settings = make_settings(batch_size=1000, batch_timeout=60)
    writer = LogWriter(settings)
    await writer.start()
    entries = [day_entry() for _ in range(250)]
    await writer.write_many(entries)
    assert writer.metrics.written == 0
    await writer.stop()
    assert writer.state == "stopped"
    assert writer.metrics.written == 250 and writer.metrics.failed == 0
    with pytest.raises(WriterStoppedError):
        await writer.write(day_entry())
    await writer.stop()  # a second stop is harmless
    found, _ = await read_back(settings, [DAY])
    assert_each_once(found, [e["id"] for e in entries])
    messages = [r.getMessage() for r in caplog.records if r.name == "blobwriter.writer"]
    assert "Log writer started (batch_size=1000, timeout=60.0s)" in messages
    assert "Flushing 250 remaining log entries" in messages
    assert f"Wrote 250 log entries to {writer_blob('', DAY, writer.writer_id, 0)}" in messages
    assert all(r.levelno == logging.DEBUG for r in caplog.records
               if r.name == "blobwriter.writer" and r.getMessage().startswith(("Log writer", "Flushing", "Wrote")))


@pytest.mark.parametrize("how", ["stop(timeout=0)", "stop_timeout: 0"])
async def test_stop_with_no_time_to_retry_still_writes_what_is_queued(make_settings: Callable[..., Settings],
                                                                      how: str) -> None:
    """stop_timeout is how long stop() keeps retrying: 0 means one attempt and no retry. A hands-on review
    found that stop(timeout=0) failed every queued entry without trying one append, storage healthy."""
    by_setting = how == "stop_timeout: 0"
    settings = make_settings(batch_size=10, batch_timeout=60, **({"stop_timeout": 0} if by_setting else {}))
    writer = LogWriter(settings)
    await writer.start()
    entries = [day_entry() for _ in range(100)]
    await writer.write_many(entries)
    assert writer.metrics.written == 0 and writer.queue_depth == 100
    await asyncio.wait_for(writer.stop() if by_setting else writer.stop(timeout=0), LIVENESS)
    assert (writer.metrics.written, writer.metrics.failed, writer.queue_depth) == (100, 0, 0)
    found, report = await read_back(settings, [DAY])
    assert_each_once(found, [e["id"] for e in entries])
    assert report.ok  # the final index frame was written too


async def test_stop_with_no_time_to_retry_makes_one_attempt_and_reports_what_it_did_not_write(
        make_settings: Callable[..., Settings], azurite_upstream: str) -> None:
    """With storage down, stop(timeout=0) sends the queue once (one append here), retries nothing, and
    reports every entry failed, its durable caller included."""
    async with StorageProxy(azurite_upstream) as proxy:
        settings = make_settings(storage=proxied(proxy), batch_size=10, batch_timeout=60)
        writer = LogWriter(settings)
        await writer.start()
        proxy.plan = FaultPlan(down=True)
        durable = asyncio.create_task(writer.write_many([day_entry() for _ in range(100)], wait=True))
        await asyncio.sleep(0)  # queued in one call: one encoding job, one append of its 10 frames
        assert writer.queue_depth == 100
        await asyncio.wait_for(writer.stop(timeout=0), LIVENESS)
        assert proxy.counts["appends"] == proxy.counts["down"] == 1  # sent once, not retried
    with pytest.raises(WriteFailedError, match="10 entries were not written: .*not retried"):
        await durable
    assert (writer.metrics.written, writer.metrics.failed, writer.queue_depth) == (0, 100, 0)


async def test_writer_logs_at_debug(make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="blobwriter.writer")
    settings = make_settings(batch_size=4, batch_timeout=0.1, blob_prefix="gw/")
    async with LogWriter(settings) as writer:
        await writer.write_many([day_entry() for _ in range(6)])
        await writer.flush()
    messages = [r.getMessage() for r in caplog.records if r.name == "blobwriter.writer"]
    assert "Log writer started (batch_size=4, timeout=0.1s)" in messages
    wrote = sorted(m for m in messages if re.match(r"Wrote \d+ log entries", m))
    blob = writer_blob("gw/", DAY, writer.writer_id, 0)
    assert wrote == [f"Wrote 2 log entries to {blob}", f"Wrote 4 log entries to {blob}"]
    assert not any(m.startswith("Flushing") for m in messages)  # nothing was left at stop


# -- dates -----------------------------------------------------------------------------------

async def test_date_grouping_and_midnight(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(blob_prefix="gw/", batch_size=100)
    cases = {
        "2026-03-01": ["2026-03-01T23:59:59.999Z", "2026-03-02T08:59:59+09:00", "2026-03-01T23:59:59.999999",
                       "2026-02-28T23:30:00-01:00"],
        "2026-03-02": ["2026-03-02T00:00:00Z", "2026-03-02T09:00:00+09:00", "2026-03-01T19:00:00-05:00",
                       "2026-03-02T00:00:00"],
        "2026-12-31": ["2026-12-31T23:59:59.999Z", "2027-01-01T00:30:00+01:00"],
        "2027-01-01": ["2027-01-01T00:00:00.000Z"],
    }
    expected = {day: [entry(timestamp=ts) for ts in stamps] for day, stamps in cases.items()}
    everything = [e for group in expected.values() for e in group]
    async with LogWriter(settings) as writer:
        await writer.write_many(everything)  # one batch spanning four dates
    assert writer.metrics.frames == 4  # one frame per date
    assert await list_blobs(settings) == sorted(writer_blob("gw/", day, writer.writer_id, 0) for day in cases)
    for day, group in expected.items():
        found, report = await read_back(settings, [day])
        assert_each_once(found, [e["id"] for e in group])
        assert sorted(found, key=lambda e: e["id"]) == sorted(group, key=lambda e: e["id"])
    assert (await read_back(settings, ["2026-02-28"]))[0] == []


async def test_sample_entries_land_in_their_utc_dates(make_settings: Callable[..., Settings],
                                                      sample_entries: list[dict[str, Any]]) -> None:
    settings = make_settings(batch_size=200, max_concurrent_writes=8)
    by_day: dict[str, list[str]] = {}
    for e in sample_entries:
        by_day.setdefault(utc_day(e["timestamp"]), []).append(e["id"])
    assert len(by_day) > 2
    async with LogWriter(settings) as writer:
        await writer.write_many(sample_entries)
    names = await list_blobs(settings)
    assert names == sorted(writer_blob("", day, writer.writer_id, 0) for day in by_day)
    for day, ids in by_day.items():
        found, report = await read_back(settings, [day])
        assert_each_once(found, ids)
    found, report = await read_back(settings, sorted(by_day))
    assert sorted(found, key=lambda e: e["id"]) == sorted(sample_entries, key=lambda e: e["id"])
    assert report.ok and report.entries == len(sample_entries)


# -- durability ------------------------------------------------------------------------------

async def test_durable_write_readable_on_return(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(batch_size=1000, batch_timeout=60)  # only a durable write goes at once
    async with LogWriter(settings) as writer:
        written = []
        for _ in range(3):
            e = day_entry()
            await asyncio.wait_for(writer.write(e, wait=True), LIVENESS)
            written.append(e["id"])
            found, _ = await read_back(settings, [DAY])
            assert_each_once(found, written)
        assert writer.metrics.frames == 3


async def test_concurrent_durable_writers_share_frames(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(batch_size=50, batch_timeout=60, max_concurrent_writes=4)
    entries = [day_entry() for _ in range(200)]
    async with LogWriter(settings) as writer:
        await asyncio.wait_for(asyncio.gather(*(writer.write(e, wait=True) for e in entries)), LIVENESS)
        found, _ = await read_back(settings, [DAY])
        assert_each_once(found, [e["id"] for e in entries])  # all readable as soon as they returned
        assert writer.metrics.frames < len(entries)
        assert writer.metrics.frames == 4  # 200 writers, 4 frames of batch_size


async def test_durable_write_fails_loudly_when_storage_never_returns(make_settings: Callable[..., Settings],
                                                                    azurite_upstream: str) -> None:
    async with StorageProxy(azurite_upstream) as proxy:
        settings = make_settings(storage=proxied(proxy), batch_timeout=60)
        writer = LogWriter(settings)
        await writer.start()
        proxy.plan = FaultPlan(down=True)
        waiting = asyncio.create_task(writer.write(day_entry(), wait=True))
        await eventually(lambda: proxy.counts["down"] >= 1, "the append reaches the down storage")
        await writer.stop(timeout=0.2)
        with pytest.raises(WriteFailedError, match="1 entries were not written"):
            await waiting
        assert writer.metrics.failed == 1 and writer.metrics.written == 0


# -- back-pressure ---------------------------------------------------------------------------

async def test_back_pressure_when_storage_hangs(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(batch_size=10, max_queue_size=50, max_concurrent_writes=2)
    store = GatedStore(open_store(settings))
    writer = LogWriter(settings, store=store)
    await writer.start()
    accepted: list[str] = []
    try:
        for _ in range(50):
            e = day_entry()
            await writer.write(e)
            accepted.append(e["id"])
        await eventually(lambda: store.waiting >= 1, "appends are stuck in storage")  # one carries all 5 frames
        refused = day_entry()
        with pytest.raises(QueueFullError) as caught:
            await writer.write(refused)
        assert caught.value.retry_after >= 1
        assert "max_queue_size=50" in str(caught.value)
        with pytest.raises(QueueFullError):
            await writer.write_many([day_entry(), day_entry()])
        assert writer.metrics.rejected == 3
        assert writer.queue_depth == 50
        store.gate.set()  # storage answers again
        await asyncio.wait_for(writer.flush(), LIVENESS)
        later = day_entry()
        await writer.write(later)
        accepted.append(later["id"])
    finally:
        store.gate.set()
        await writer.stop()
    assert writer.metrics.failed == 0
    found, report = await read_back(settings, [DAY])
    assert_each_once(found, accepted)
    assert refused["id"] not in {e["id"] for e in found}


async def test_more_entries_than_the_queue_holds_is_an_entry_error(make_settings: Callable[..., Settings]) -> None:
    """Back-pressure means 'try later'; a call that can never fit gets an EntryError instead."""
    writer = LogWriter(make_settings(batch_size=5, max_queue_size=10))
    await writer.start()
    try:
        with pytest.raises(EntryError, match="max_queue_size=10"):
            await writer.write_many([day_entry() for _ in range(11)])
        assert writer.metrics.accepted == 0 and writer.metrics.rejected == 11
        assert await writer.write_many([day_entry() for _ in range(10)]) == 10
    finally:
        await writer.stop()


async def test_back_pressure_during_outage(make_settings: Callable[..., Settings], azurite: str,
                                           azurite_upstream: str) -> None:
    async with StorageProxy(azurite_upstream) as proxy:
        settings = make_settings(storage=proxied(proxy), batch_size=10, max_queue_size=40)
        writer = LogWriter(settings)
        await writer.start()
        accepted = []
        try:
            first = day_entry()
            await writer.write(first, wait=True)  # storage works
            accepted.append(first["id"])
            proxy.plan = FaultPlan(down=True)
            for _ in range(40):
                e = day_entry()
                await writer.write(e)
                accepted.append(e["id"])
            with pytest.raises(QueueFullError) as caught:
                await writer.write(day_entry())
            assert caught.value.retry_after >= 1
            await eventually(lambda: proxy.counts["down"] >= 1, "appends meet the outage")
            proxy.plan = FaultPlan()  # storage is back
            await asyncio.wait_for(writer.flush(), LIVENESS)
            assert writer.queue_depth == 0
        finally:
            await writer.stop()
    assert writer.metrics.failed == 0 and writer.metrics.written == 41
    found, report = await read_back(make_settings(), [DAY])  # straight from Azurite
    assert_each_once(found, accepted)
    assert report.ok


# -- frame size and rollover -----------------------------------------------------------------

@pytest.mark.parametrize("compression", ["gzip", "none"])
async def test_batches_split_at_max_append_bytes(make_settings: Callable[..., Settings], compression: str,
                                                sample_entries: list[dict[str, Any]]) -> None:
    limit = 64 * 1024
    settings = make_settings(batch_size=1000, max_append_bytes=limit, max_entry_bytes=limit - FRAME_OVERHEAD_BYTES,
                             compression=compression, max_concurrent_writes=8)
    # Entries as large as allowed, incompressible: the frame overhead must still fit.
    big = [entry(timestamp=TS) for _ in range(6)]
    for e in big:
        e["blob"] = ""
        room = limit - FRAME_OVERHEAD_BYTES - len(orjson.dumps(e))
        e["blob"] = os.urandom(room // 2 + 1).hex()[:room]  # an odd room too
        assert len(orjson.dumps(e)) == limit - FRAME_OVERHEAD_BYTES
    everything = [*sample_entries, *big]
    days = sorted({utc_day(e["timestamp"]) for e in everything})
    async with LogWriter(settings) as writer:
        await writer.write_many(everything)
    assert writer.metrics.failed == 0
    parts = await data_frames(settings, days)
    frames = [h for headers in parts.values() for h in headers]
    assert all(h.frame_length <= limit for h in frames)  # no frame over the limit, read from the bytes
    assert max(h.frame_length for h in frames) > limit // 2  # and the limit was what split them
    assert sum(h.entries for h in frames) == len(everything)
    assert len(frames) > math.ceil(len(everything) / 1000) + len(days)
    found, report = await read_back(settings, days)
    assert_each_once(found, [e["id"] for e in everything])
    assert {e["id"]: e for e in found}[big[0]["id"]] == big[0]
    assert report.ok


async def test_rollover_at_block_limit(make_settings: Callable[..., Settings]) -> None:
    """Ten appends (durable writes one after another: one append each) into parts of at most three."""
    settings = make_settings(max_blocks_per_blob=3, batch_size=5, max_concurrent_writes=1)
    entries = [day_entry() for _ in range(50)]
    async with LogWriter(settings) as writer:
        for n in range(0, 50, 5):
            await writer.write_many(entries[n:n + 5], wait=True)
    parts = await data_frames(settings, [DAY])
    assert list(parts)[:4] == [writer_blob("", DAY, writer.writer_id, n) for n in range(4)]
    assert [await committed_blocks(settings, name) for name in list(parts)[:3]] == [3, 3, 3]
    assert sum(h.entries for headers in parts.values() for h in headers) == 50
    found, report = await read_back(settings, [DAY], verify=True)
    assert_each_once(found, [e["id"] for e in entries])
    assert report.parts == len(parts) and report.ok and report.unindexed == 0


async def test_rollover_under_concurrency(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(max_blocks_per_blob=3, batch_size=4, max_concurrent_writes=8)
    entries = [day_entry() for _ in range(300)]
    async with LogWriter(settings) as writer:
        for n in range(0, 300, 50):  # rounds of concurrent durable writers: many appends at once
            await asyncio.gather(*(writer.write(e, wait=True) for e in entries[n:n + 50]))
    assert writer.metrics.appends > 3
    found, report = await read_back(settings, [DAY], verify=True)
    assert_each_once(found, [e["id"] for e in entries])
    assert report.parts > 1 and report.ok and report.unindexed == 0


async def test_rollover_on_block_count_exceeds_limit(make_settings: Callable[..., Settings], azurite: str,
                                                     azurite_upstream: str) -> None:
    plan = FaultPlan(block_limit_share=0.25, seed=7)
    async with StorageProxy(azurite_upstream, plan) as proxy:
        settings = make_settings(storage=proxied(proxy), batch_size=10, max_concurrent_writes=4)
        entries = [day_entry() for _ in range(400)]
        async with LogWriter(settings) as writer:
            await writer.write_many(entries)
    assert proxy.counts["block_limit"] > 0
    assert writer.metrics.failed == 0
    found, report = await read_back(make_settings(), [DAY], verify=True)
    assert_each_once(found, [e["id"] for e in entries])
    assert report.parts > 1 and report.ok


async def test_each_writer_appends_to_blobs_of_its_own(make_settings: Callable[..., Settings]) -> None:
    """Two writers (instances) on the same container and dates: each has its own blob per date, so no
    blob's request rate grows with the number of instances; a date's listing finds both."""
    settings = make_settings(batch_size=5, max_concurrent_writes=4)
    writers = [LogWriter(settings), LogWriter(settings)]
    entries = [[day_entry(instance=n) for _ in range(200)] for n in range(2)]
    await asyncio.gather(*(w.start() for w in writers))

    async def feed(writer: LogWriter, batch: list[dict[str, Any]]) -> None:
        for e in batch:
            await writer.write(e)
            await asyncio.sleep(0)

    await asyncio.gather(*(feed(w, b) for w, b in zip(writers, entries, strict=True)))
    await asyncio.gather(*(w.stop() for w in writers))
    parts = await data_frames(settings, [DAY])
    assert sorted(parts) == sorted(writer_blob("", DAY, w.writer_id, 0) for w in writers)
    for w in writers:
        assert {h.writer_id.hex() for h in parts[writer_blob("", DAY, w.writer_id, 0)]} == {w.writer_id}
    found, report = await read_back(settings, [DAY], verify=True)
    assert_each_once(found, [e["id"] for batch in entries for e in batch])
    assert report.ok and report.duplicates == 0 and report.unindexed == 0


# -- storage faults --------------------------------------------------------------------------

@pytest.mark.reliability
async def test_storage_faults_lose_and_duplicate_nothing(make_settings: Callable[..., Settings],
                                                         azurite_upstream: str,
                                                         sample_entries: list[dict[str, Any]]) -> None:
    plan = FaultPlan(error_share=0.2, reset_share=0.05, stall_share=0.05, stall_seconds=1.5, seed=3)
    extra = [entry(timestamp=f"2026-11-2{n % 5 + 5}T{n % 24:02d}:00:00Z") for n in range(1000)]
    everything = [*sample_entries, *extra]
    days = sorted({utc_day(e["timestamp"]) for e in everything})
    async with StorageProxy(azurite_upstream, plan) as proxy:
        # 64 KiB appends, so that there are enough of them to meet every kind of fault (an append
        # carries every frame that is ready: at 4 MiB this run would be a few dozen appends).
        settings = make_settings(storage=proxied(proxy), storage_timeout=1.0, retry_backoff_max=0.5,
                                 batch_size=50, max_concurrent_writes=32, max_append_bytes=65536,
                                 max_entry_bytes=32768)
        async with LogWriter(settings) as writer:
            for start in range(0, len(everything), 100):
                await writer.write_many(everything[start:start + 100])
                await asyncio.sleep(0)
    assert proxy.counts["error"] and proxy.counts["reset"] and proxy.counts["stall"], proxy.counts
    assert writer.metrics.failed == 0 and writer.metrics.written == len(everything)
    found, report = await read_back(make_settings(), days, verify=True)  # straight from Azurite
    assert report.duplicates >= 0
    assert_each_once(found, [e["id"] for e in everything])
    assert report.ok, report.problems[:5]  # retries that landed twice are duplicates, not damage
    assert report.entries == len(everything)
    assert report.index_frames > 0


# -- directory store -------------------------------------------------------------------------

async def test_directory_store_write_and_read(tmp_path: Path, make_settings: Callable[..., Settings],
                                              sample_entries: list[dict[str, Any]]) -> None:
    settings = make_settings(storage=str(tmp_path / "logs"), blob_prefix="gw/", batch_size=100)
    days = sorted({utc_day(e["timestamp"]) for e in sample_entries})
    async with LogWriter(settings) as writer:
        await writer.write_many(sample_entries)
        durable = entry(timestamp=TS)
        await writer.write(durable, wait=True)
        assert (tmp_path / "logs" / writer_blob("gw/", DAY, writer.writer_id, 0)).exists()
    files = sorted(str(p.relative_to(tmp_path / "logs")) for p in (tmp_path / "logs").rglob("*.log"))
    assert files == sorted(writer_blob("gw/", d, writer.writer_id, 0) for d in {*days, DAY})
    found, report = await read_back(settings, sorted({*days, DAY}))
    assert_each_once(found, [*(e["id"] for e in sample_entries), durable["id"]])
    assert report.ok


async def test_many_frames_per_append_and_one_file_per_writer(tmp_path: Path,
                                                                make_settings: Callable[..., Settings]) -> None:
    """Entries queued faster than appends finish: each append carries many frames, back to back, and
    no frame holds more than batch_size entries."""
    settings = make_settings(storage=str(tmp_path), batch_size=3, max_concurrent_writes=2)
    entries = [[day_entry(instance=n) for _ in range(300)] for n in range(2)]
    writers = [LogWriter(settings), LogWriter(settings)]
    await asyncio.gather(*(w.start() for w in writers))
    await asyncio.gather(*(w.write_many(b) for w, b in zip(writers, entries, strict=True)))
    await asyncio.gather(*(w.stop() for w in writers))
    for writer in writers:
        data = (tmp_path / writer_blob("", DAY, writer.writer_id, 0)).read_bytes()
        headers = [h for _, h in frames_in(data) if not h.is_index]  # every frame whole, back to back
        assert {h.writer_id.hex() for h in headers} == {writer.writer_id}
        assert len(headers) == 100 and all(h.entries == 3 for h in headers)
        assert writer.metrics.frames == 100 and writer.metrics.appends < 100 / 2
    found, report = await read_back(settings, [DAY])
    assert_each_once(found, [e["id"] for batch in entries for e in batch])
    assert report.ok


def test_a_writer_made_before_a_fork_gets_its_own_id_in_the_child(tmp_path: Path,
                                                                   make_settings: Callable[..., Settings]) -> None:
    """An app made at import and forked into workers (a preload server): each child that starts the
    writer gets a writer id of its own, so children never share nonces, sequences or blobs."""
    settings = make_settings(storage=str(tmp_path))
    writer = LogWriter(settings)  # made, not started, before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            async def child() -> str:
                async with writer:
                    await writer.write(day_entry(), wait=True)
                return writer.writer_id

            os.write(write, asyncio.run(child()).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child_id = os.read(read, 100).decode()
    os.close(read)
    assert len(child_id) == 32 and child_id != writer.writer_id
    assert (tmp_path / writer_blob("", DAY, child_id, 0)).exists()


async def test_a_batch_task_cancelled_from_outside_fails_its_entries_loudly(
        make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture) -> None:
    """An application's "cancel every other task" (or the end of the loop that ran start()) cancelled the
    batch task: the writer still said running, took entries that were never written, and stop() raised
    CancelledError without reporting them or closing the store. Every accepted entry must end written
    or reported failed."""
    writer = LogWriter(make_settings(batch_timeout=60))
    await writer.start()
    await writer.write(day_entry())
    durable = asyncio.ensure_future(writer.write(day_entry(), wait=True))
    await asyncio.sleep(0)
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task() and task is not durable:
            task.cancel()
    with pytest.raises(WriteFailedError, match="cancelled"):
        await asyncio.wait_for(durable, LIVENESS)
    assert writer.state.value == "failed" and writer.metrics.failed == 2 and writer.queue_depth == 0
    assert not (await writer.health(probe=False))["ok"]
    with pytest.raises(WriterStoppedError):
        await writer.write(day_entry())
    assert "cancelled from outside the writer" in caplog.text
    await writer.stop()  # returns, and closes the store
    assert writer.state.value == "stopped"


def test_a_writer_is_called_from_the_loop_that_started_it(make_settings: Callable[..., Settings]) -> None:
    """From another event loop (another thread, or one asyncio.run per call) a durable write hung
    forever and a plain one was taken by a loop that would not write it: now a clear error; and
    run_coroutine_threadsafe onto the writer's loop, the documented way, works."""
    import threading

    writer = LogWriter(make_settings())
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(writer.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert ready.wait(LIVENESS)
        with pytest.raises(RuntimeError, match="belongs to the event loop that ran start"):
            asyncio.run(writer.write(day_entry(), wait=True))
        with pytest.raises(RuntimeError, match="run_coroutine_threadsafe"):
            writer.submit(writer.admit(((0, day_entry()),)))  # no loop at all
        asyncio.run_coroutine_threadsafe(writer.write(day_entry(id="via-threadsafe"), wait=True), loop).result(
            LIVENESS)
    finally:
        asyncio.run_coroutine_threadsafe(writer.stop(), loop).result(LIVENESS)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
    assert writer.metrics.written == 1 and writer.metrics.failed == 0
