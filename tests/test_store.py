"""Stores against a real Azurite (and a directory): naming, parts, rollover, races, faults."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import Counter
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from blobwriter.blob_store import AppendBlobStore
from blobwriter.codec import Encoder
from blobwriter.config import Settings
from blobwriter.errors import StoreError
from blobwriter.store import DirectoryStore, blob_name, open_store, sort_parts
from tests.conftest import connection_string
from tests.support.proxy import FaultPlan, StorageProxy, is_append
from tests.support.readback import (
    blob_bytes,
    committed_blocks,
    container_client,
    frames_in,
    list_blobs,
    read_back,
)

DAY = "2026-05-17"


def frame_maker(settings: Settings) -> Callable[[int], bytes]:
    encoder = Encoder(settings.encryption_key)  # type: ignore[arg-type]

    def make(n: int) -> bytes:
        return encoder.encode([orjson.dumps({"id": f"f{n}", "n": n})], n, date=DAY)[0]

    return make


def proxied(url: str) -> str:
    return connection_string(f"{url}/devstoreaccount1")


def test_blob_name_and_part_order() -> None:
    assert blob_name("", DAY, 0) == "2026-05-17.0000.log"
    assert blob_name("gateway/", DAY, 12) == "gateway/2026-05-17.0012.log"
    assert blob_name("", DAY, 12345) == "2026-05-17.12345.log"
    names = ["g/2026-05-17.0010.log", "g/2026-05-17.0002.log", "g/2026-05-17.10000.log", "g/2026-05-17.9999.log",
             "g/2026-05-18.0000.log", "2026-05-17.0000.log", "g/2026-05-17.0001.log.tmp", "g/2026-05-17.1.log",
             "g/x/2026-05-17.0000.log"]
    assert sort_parts(names, "g/", DAY) == [
        "g/2026-05-17.0002.log", "g/2026-05-17.0010.log", "g/2026-05-17.9999.log", "g/2026-05-17.10000.log"]


def test_open_store_selects_kind(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    assert isinstance(open_store(make_settings()), AppendBlobStore)
    directory = open_store(make_settings(storage=str(tmp_path)))
    assert isinstance(directory, DirectoryStore)


async def test_append_creates_container_blob_and_reads_back(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(blob_prefix="gw")
    make = frame_maker(settings)
    store = AppendBlobStore(settings)
    try:
        await store.open()
        await store.open()  # idempotent: the container already exists
        frames = [make(n) for n in range(1, 6)]
        landed = [await store.append(DAY, f) for f in frames]
        names = [a.name for a in landed]
        assert names == ["gw/2026-05-17.0000.log"] * 5
        assert [a.offset for a in landed] == [sum(len(f) for f in frames[:i]) for i in range(5)]
        assert await store.parts(DAY) == ["gw/2026-05-17.0000.log"]
        assert await store.parts("2026-05-18") == []
        assert await blob_bytes(store, names[0]) == b"".join(frames)
        await store.check()
        assert settings.container in store.description
    finally:
        await store.close()
    assert await committed_blocks(settings, names[0]) == 5


async def test_append_recreates_a_deleted_container(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    make = frame_maker(settings)
    store = AppendBlobStore(settings)
    try:
        await store.open()
        await store.append(DAY, make(1))
        async with container_client(settings) as container:
            await container.delete_container()
        assert await store.append(DAY, make(2)) == ("2026-05-17.0000.log", 0)
        assert [h.sequence for _, h in frames_in(await blob_bytes(store, "2026-05-17.0000.log"))] == [2]
    finally:
        await store.close()


async def test_read_while_another_instance_appends(make_settings: Callable[..., Settings]) -> None:
    """Reading today's part while the gateway appends to it: a part past the SDK's 32 MiB
    single-request size must still read (the bytes present when reading began, whole)."""
    settings = make_settings(compression="none")
    encoder = Encoder(settings.encryption_key, compression="none")  # type: ignore[arg-type]
    line = orjson.dumps({"id": "big", "pad": os.urandom(1_500_000).hex()})  # ~3 MiB frames
    writer, reader = AppendBlobStore(settings), AppendBlobStore(settings)
    name = f"{DAY}.0000.log"
    try:
        await writer.open()
        for n in range(1, 13):
            await writer.append(DAY, encoder.encode([line], n, date=DAY)[0])
        before = await blob_bytes(writer, name)
        assert len(before) > 32 * 1024 * 1024
        chunks = []
        async for chunk in reader.read(name):
            chunks.append(chunk)
            await writer.append(DAY, make_small(encoder, 100 + len(chunks)))  # the blob grows meanwhile
    finally:
        await writer.close()
        await reader.close()
    assert b"".join(chunks) == before
    assert len(chunks) > 1
    found, report = await read_back(settings, [DAY])  # frames straddle the read ranges
    assert report.ok and report.frames == 12 + len(chunks)
    assert sum(e["id"] == "big" for e in found) == 12


def make_small(encoder: Encoder, n: int) -> bytes:
    return encoder.encode([orjson.dumps({"id": f"s{n}"})], n, date=DAY)[0]


async def test_check_reports_missing_container(make_settings: Callable[..., Settings]) -> None:
    store = AppendBlobStore(make_settings())
    try:
        with pytest.raises(StoreError, match="unreachable"):
            await store.check()  # never opened: the container does not exist
    finally:
        await store.close()


async def test_rolls_to_next_part_at_max_blocks(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(max_blocks_per_blob=2)
    make = frame_maker(settings)
    store = AppendBlobStore(settings)
    try:
        await store.open()
        names = [(await store.append(DAY, make(n))).name for n in range(1, 6)]
    finally:
        await store.close()
    assert [n.split(".")[1] for n in names] == ["0000", "0000", "0001", "0001", "0002"]
    assert [await committed_blocks(settings, f"2026-05-17.000{p}.log") for p in range(3)] == [2, 2, 1]

    # A new process discovers the newest part and goes on there, never back to a full one.
    later = AppendBlobStore(settings)
    try:
        assert (await later.append(DAY, make(6))).name == "2026-05-17.0002.log"
        assert (await later.append(DAY, make(7))).name == "2026-05-17.0003.log"
    finally:
        await later.close()
    entries, report = await read_back(settings, [DAY])
    assert [e["n"] for e in entries] == [1, 2, 3, 4, 5, 6, 7]
    assert report.parts == 4 and report.ok


async def test_an_append_whose_answer_is_lost_is_not_resent_as_is(make_settings: Callable[..., Settings],
                                                                  azurite_upstream: str) -> None:
    """The connection drops after the append landed: the store must fail (the writer retries with a
    frame sealed anew), not let aiohttp resend the same bytes, which would read as a replayed frame."""
    direct = make_settings()
    make = frame_maker(direct)
    first = AppendBlobStore(direct)
    await first.open()
    await first.append(DAY, make(1))
    await first.close()
    async with StorageProxy(azurite_upstream, FaultPlan(drop_share=1.0)) as proxy:
        store = AppendBlobStore(make_settings(storage=proxied(proxy.url)))
        try:
            await store.check()  # leaves a kept-alive connection in the pool, which the append reuses
            with pytest.raises(Exception):  # noqa: B017 - whichever error the transport raises
                await store.append(DAY, make(2))
        finally:
            await store.close()
        assert proxy.counts["drop"] == 1 and proxy.counts["appends"] == 1
    reader = AppendBlobStore(direct)
    try:
        [name] = await reader.parts(DAY)
        assert len(frames_in(await blob_bytes(reader, name))) == 2  # frame 2 landed once, not twice
    finally:
        await reader.close()


async def test_block_count_exceeds_limit_answer_rolls(make_settings: Callable[..., Settings],
                                                     azurite_upstream: str) -> None:
    """Storage says part 0000 is full (409 BlockCountExceedsLimit): the frame goes to part 0001."""
    direct = make_settings()
    make = frame_maker(direct)
    store = AppendBlobStore(direct)
    await store.open()
    await store.append(DAY, make(1))
    await store.close()

    def to_part_0(request: web.BaseRequest) -> bool:
        return is_append(request) and request.path.endswith(".0000.log")

    async with StorageProxy(azurite_upstream, FaultPlan(block_limit_share=1.0, only=to_part_0)) as proxy:
        settings = make_settings(storage=proxied(proxy.url))
        full = AppendBlobStore(settings)
        try:
            assert (await full.append(DAY, make(2))).name == "2026-05-17.0001.log"
            assert (await full.append(DAY, make(3))).name == "2026-05-17.0001.log"  # remembers the roll
        finally:
            await full.close()
        assert proxy.counts["block_limit"] == 1
    assert await list_blobs(direct) == ["2026-05-17.0000.log", "2026-05-17.0001.log"]
    entries, _ = await read_back(direct, [DAY])
    assert [e["n"] for e in entries] == [1, 2, 3]


async def test_many_dates_in_one_process(make_settings: Callable[..., Settings]) -> None:
    """A backfill over more dates than the store remembers: older dates are discovered again, never fail."""
    settings = make_settings()
    make = frame_maker(settings)
    days = [(date(2026, 1, 1) + timedelta(days=n)).isoformat() for n in range(70)]
    store = AppendBlobStore(settings)
    try:
        await store.open()
        for n, day in enumerate(reversed(days), start=1):  # newest first: each new date is the oldest
            assert await store.append(day, make(n)) == (f"{day}.0000.log", 0)
        assert await store.append(days[-1], make(100)) == (f"{days[-1]}.0000.log", len(make(1)))
    finally:
        await store.close()
    assert len(await list_blobs(settings)) == 70


async def test_racing_stores_never_erase_each_other(make_settings: Callable[..., Settings]) -> None:
    """Several processes create and roll the same parts at once; no frame is lost to a re-create."""
    settings = make_settings(max_blocks_per_blob=4, max_concurrent_writes=8)
    make = frame_maker(settings)
    stores = [AppendBlobStore(settings) for _ in range(4)]
    numbers = itertools.count(1)
    per_store = 40

    async def run(store: AppendBlobStore) -> list[str]:
        async def one() -> str:
            return (await store.append(DAY, make(next(numbers)))).name

        return list(await asyncio.gather(*(one() for _ in range(per_store))))

    try:
        await asyncio.gather(*(s.open() for s in stores))
        names = [n for result in await asyncio.gather(*(run(s) for s in stores)) for n in result]
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    total = per_store * len(stores)
    blobs = await list_blobs(settings)
    assert len(blobs) > 1
    assert set(names) <= set(blobs)
    stored = Counter(names)
    for name in blobs:  # every reported append is really there
        reader = AppendBlobStore(settings)
        try:
            assert len(frames_in(await blob_bytes(reader, name))) == stored[name]
        finally:
            await reader.close()
    entries, report = await read_back(settings, [DAY])
    assert sorted(e["n"] for e in entries) == list(range(1, total + 1))
    assert report.duplicates == 0 and report.ok


async def test_directory_store(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(storage=str(tmp_path / "logs"), blob_prefix="gw/")
    make = frame_maker(settings)
    store = open_store(settings)
    assert isinstance(store, DirectoryStore)
    with pytest.raises(StoreError, match="missing or not writable"):
        await store.check()
    await store.open()
    await store.check()
    frames = [make(n) for n in range(1, 4)]
    landed = [await store.append(DAY, f) for f in frames]
    assert [a.name for a in landed] == ["gw/2026-05-17.0000.log"] * 3
    assert [a.offset for a in landed] == [0, len(frames[0]), len(frames[0]) + len(frames[1])]
    (tmp_path / "logs" / "gw" / "notes.txt").write_text("not a part")
    (tmp_path / "logs" / "gw" / "2026-05-17.0003.log").write_bytes(make(9))
    assert await store.parts(DAY) == ["gw/2026-05-17.0000.log", "gw/2026-05-17.0003.log"]
    assert await store.parts("2026-05-18") == []
    assert (tmp_path / "logs" / "gw" / "2026-05-17.0000.log").read_bytes() == b"".join(frames)
    assert await blob_bytes(store, "gw/2026-05-17.0000.log") == b"".join(frames)
    entries, report = await read_back(settings, [DAY])
    assert [e["n"] for e in entries] == [1, 2, 3, 9]
    assert report.parts == 2 and report.ok


async def test_directory_store_concurrent_appends_stay_whole(tmp_path: Path,
                                                             make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(storage=str(tmp_path))
    make = frame_maker(settings)
    stores = [DirectoryStore(tmp_path), DirectoryStore(tmp_path)]
    await stores[0].open()
    big = [make(n) for n in range(1, 201)]
    await asyncio.gather(*(stores[n % 2].append(DAY, f) for n, f in enumerate(big)))
    data = (tmp_path / "2026-05-17.0000.log").read_bytes()
    assert len(data) == sum(len(f) for f in big)
    assert sorted(h.sequence for _, h in frames_in(data)) == list(range(1, 201))


@pytest.mark.slow
async def test_real_50000_block_limit(make_settings: Callable[..., Settings]) -> None:
    """Azurite enforces the committed-block limit of 50,000: part 0000 fills exactly, then 0001 starts."""
    settings = make_settings(max_concurrent_writes=48, compression="none")
    make = frame_maker(settings)
    store = AppendBlobStore(settings)
    numbers = itertools.count(1)
    landed: dict[int, str] = {}
    rolled = asyncio.Event()

    async def worker() -> None:
        while not rolled.is_set():
            n = next(numbers)
            name = (await store.append(DAY, make(n))).name
            landed[n] = name
            if name.endswith(".0001.log"):
                rolled.set()

    try:
        await store.open()
        await asyncio.gather(*(worker() for _ in range(48)))
    finally:
        await store.close()
    parts = Counter(landed.values())
    assert set(parts) == {"2026-05-17.0000.log", "2026-05-17.0001.log"}
    assert parts["2026-05-17.0000.log"] == 50_000
    assert await committed_blocks(settings, "2026-05-17.0000.log") == 50_000
    assert await committed_blocks(settings, "2026-05-17.0001.log") == parts["2026-05-17.0001.log"]
    entries, report = await read_back(settings, [DAY])
    assert sorted(e["n"] for e in entries) == sorted(landed)
    assert report.frames == len(landed) and report.ok and report.duplicates == 0
