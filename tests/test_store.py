"""Stores against a real Azurite (and a directory): appends to named blobs, listing, reading, races, faults."""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from blobwriter.blob_store import AppendBlobStore
from blobwriter.codec import Encoder
from blobwriter.config import Settings
from blobwriter.errors import StoreError
from blobwriter.layout import shared_blob, writer_blob
from blobwriter.store import DirectoryStore, open_store
from tests.conftest import connection_string, free_port
from tests.support.proxy import FaultPlan, StorageProxy
from tests.support.readback import (
    blob_bytes,
    committed_blocks,
    container_client,
    frames_in,
    list_blobs,
    read_back,
)

DAY = "2026-05-17"
WRITER = "ab" * 16
NAME = writer_blob("", DAY, WRITER, 0)  # 2026-05-17/abab...ab.0000.log


def frame_maker(settings: Settings) -> Callable[..., bytes]:
    """Frames numbered n, sealed for `blob` (NAME unless given): format version 2 binds the name."""
    encoder = Encoder(settings.encryption_key)  # type: ignore[arg-type]

    def make(n: int, blob: str | None = None) -> bytes:
        blob = blob or writer_blob(settings.blob_prefix, DAY, WRITER, 0)
        return encoder.encode([orjson.dumps({"id": f"f{n}", "n": n})], n, blob=blob, date=DAY)[0]

    return make


def proxied(url: str) -> str:
    return connection_string(f"{url}/devstoreaccount1")


def test_open_store_selects_kind(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    assert isinstance(open_store(make_settings()), AppendBlobStore)
    directory = open_store(make_settings(storage=str(tmp_path)))
    assert isinstance(directory, DirectoryStore)


async def test_append_creates_container_blob_and_reads_back(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(blob_prefix="gw")
    make = frame_maker(settings)
    store = AppendBlobStore(settings)
    name = writer_blob("gw/", DAY, WRITER, 0)
    try:
        await store.open()
        await store.open()  # idempotent: the container already exists
        frames = [make(n, name) for n in range(1, 6)]
        appended = [await store.append(name, f) for f in frames]
        assert [a.offset for a in appended] == [sum(len(f) for f in frames[:i]) for i in range(5)]
        assert [a.blocks for a in appended] == [1, 2, 3, 4, 5]
        assert await store.parts(DAY) == [name]
        assert await store.parts("2026-05-18") == []
        assert await blob_bytes(store, name) == b"".join(frames)
        await store.check()
        assert settings.container in store.description
    finally:
        await store.close()
    assert await committed_blocks(settings, name) == 5


async def test_one_append_carries_many_frames(make_settings: Callable[..., Settings]) -> None:
    """Frames are self-delimiting: several concatenated in one Append Block read back one by one."""
    settings = make_settings()
    make = frame_maker(settings)
    store = AppendBlobStore(settings)
    try:
        await store.open()
        frames = [make(n) for n in range(1, 101)]
        assert await store.append(NAME, b"".join(frames[:60])) == (0, 1)
        assert await store.append(NAME, b"".join(frames[60:])) == (sum(map(len, frames[:60])), 2)
    finally:
        await store.close()
    entries, report = await read_back(settings, [DAY])
    assert [e["n"] for e in entries] == list(range(1, 101)) and report.ok and report.frames == 100


async def test_parts_lists_both_layouts_in_reading_order(make_settings: Callable[..., Settings]) -> None:
    """Version 0.1's shared blobs and each writer's blobs of a date come from one listing."""
    settings = make_settings(blob_prefix="gw/")
    make = frame_maker(settings)
    store = AppendBlobStore(settings)
    other = "cd" * 16
    names = [writer_blob("gw/", DAY, other, 0), shared_blob("gw/", DAY, 1), writer_blob("gw/", DAY, WRITER, 1),
             shared_blob("gw/", DAY, 0), writer_blob("gw/", DAY, WRITER, 0),
             writer_blob("gw/", "2026-05-18", WRITER, 0), shared_blob("gw/", "2026-05-18", 0),
             "gw/2026-05-17.0000.log.tmp", "gw/2026-05-17/notes.txt"]
    try:
        await store.open()
        for n, name in enumerate(names, start=1):
            await store.append(name, make(n, name))
        assert await store.parts(DAY) == [shared_blob("gw/", DAY, 0), shared_blob("gw/", DAY, 1),
                                          writer_blob("gw/", DAY, WRITER, 0), writer_blob("gw/", DAY, WRITER, 1),
                                          writer_blob("gw/", DAY, other, 0)]
    finally:
        await store.close()
    entries, report = await read_back(settings, [DAY])
    assert [e["n"] for e in entries] == [4, 2, 5, 3, 1] and report.ok


async def test_read_while_another_instance_appends(make_settings: Callable[..., Settings]) -> None:
    """Reading today's part while the gateway appends to it: a part past the SDK's 32 MiB
    single-request size must still read (the bytes present when reading began, whole)."""
    settings = make_settings(compression="none")
    encoder = Encoder(settings.encryption_key, compression="none")  # type: ignore[arg-type]
    line = orjson.dumps({"id": "big", "pad": os.urandom(1_500_000).hex()})  # ~3 MiB frames
    writer, reader = AppendBlobStore(settings), AppendBlobStore(settings)
    name = NAME
    try:
        await writer.open()
        for n in range(1, 13):
            await writer.append(name, encoder.encode([line], n, blob=name, date=DAY)[0])
        before = await blob_bytes(writer, name)
        assert len(before) > 32 * 1024 * 1024
        chunks = []
        async for chunk in reader.read(name):
            chunks.append(chunk)
            await writer.append(name, make_small(encoder, 100 + len(chunks)))  # the blob grows meanwhile
    finally:
        await writer.close()
        await reader.close()
    assert b"".join(chunks) == before
    assert len(chunks) > 1
    found, report = await read_back(settings, [DAY])  # frames straddle the read ranges
    assert report.ok and report.frames == 12 + len(chunks)
    assert sum(e["id"] == "big" for e in found) == 12


async def test_downloads_read_their_body_in_large_blocks(make_settings: Callable[..., Settings],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The store hands the SDK its own transport, which would read a download's body 4 KiB per
    Python step (azure-core's default, not the storage SDK's): a CPU second for a day read."""
    import aiohttp.streams

    from blobwriter import blob_store

    asked: list[int] = []
    original = aiohttp.streams.StreamReader.read

    async def read(self: aiohttp.streams.StreamReader, n: int = -1) -> bytes:
        asked.append(n)
        return await original(self, n)

    settings = make_settings(compression="none")
    encoder = Encoder(settings.encryption_key, compression="none")  # type: ignore[arg-type]
    store = AppendBlobStore(settings)
    try:
        await store.open()
        await store.append(NAME, encoder.encode([orjson.dumps({"pad": os.urandom(600_000).hex()})], 1,
                                                blob=NAME, date=DAY)[0])
        monkeypatch.setattr(aiohttp.streams.StreamReader, "read", read)
        data = b"".join([chunk async for chunk in store.read(NAME)])
    finally:
        await store.close()
    assert len(data) > 1_000_000
    assert asked and set(asked) == {blob_store.DOWNLOAD_BLOCK_BYTES}
    assert blob_store.DOWNLOAD_BLOCK_BYTES >= 64 * 1024


def make_small(encoder: Encoder, n: int) -> bytes:
    return encoder.encode([orjson.dumps({"id": f"s{n}"})], n, blob=NAME, date=DAY)[0]


async def test_check_reports_missing_container(make_settings: Callable[..., Settings]) -> None:
    store = AppendBlobStore(make_settings())
    try:
        with pytest.raises(StoreError, match="unreachable"):
            await store.check()  # never opened: the container does not exist
    finally:
        await store.close()


async def test_an_append_that_never_connected_says_so(make_settings: Callable[..., Settings]) -> None:
    """Nothing listens: no byte was sent, so the error must not call the outcome unknown (which tells
    on-call to look for duplicates); it names the connection that failed."""
    store = AppendBlobStore(make_settings(storage=proxied(f"http://127.0.0.1:{free_port()}")))
    try:
        with pytest.raises(StoreError) as caught:
            await store.append(NAME, frame_maker(make_settings())(1))
        assert "outcome is unknown" not in str(caught.value) and "connect" in str(caught.value).lower()
    finally:
        await store.close()


async def test_an_append_whose_answer_is_lost_is_not_resent_as_is(make_settings: Callable[..., Settings],
                                                                  azurite_upstream: str) -> None:
    """The connection drops after the append landed: the store must fail (the writer retries with a
    frame sealed anew), not let aiohttp resend the same bytes, which would read as a replayed frame."""
    direct = make_settings()
    make = frame_maker(direct)
    first = AppendBlobStore(direct)
    await first.open()
    await first.append(NAME, make(1))
    await first.close()
    async with StorageProxy(azurite_upstream, FaultPlan(drop_share=1.0)) as proxy:
        store = AppendBlobStore(make_settings(storage=proxied(proxy.url)))
        try:
            await store.check()  # leaves a kept-alive connection in the pool, which the append reuses
            with pytest.raises(StoreError, match="not resent") as caught:
                await store.append(NAME, make(2))
            assert caught.value.status is None  # no answer: the outcome is unknown
        finally:
            await store.close()
        assert proxy.counts["drop"] == 1 and proxy.counts["appends"] == 1
    reader = AppendBlobStore(direct)
    try:
        [name] = await reader.parts(DAY)
        assert len(frames_in(await blob_bytes(reader, name))) == 2  # frame 2 landed once, not twice
    finally:
        await reader.close()


async def test_block_count_exceeds_limit_is_a_store_error_with_its_code(make_settings: Callable[..., Settings],
                                                                        azurite_upstream: str) -> None:
    """Storage says the blob is full (409 BlockCountExceedsLimit): the store reports the code, and the
    writer rolls to the next part (test_writer)."""
    make = frame_maker(make_settings())
    async with StorageProxy(azurite_upstream, FaultPlan(block_limit_share=1.0)) as proxy:
        store = AppendBlobStore(make_settings(storage=proxied(proxy.url)))
        try:
            await store.open()
            with pytest.raises(StoreError) as caught:
                await store.append(NAME, make(1))
        finally:
            await store.close()
    assert (caught.value.code, caught.value.status) == ("BlockCountExceedsLimit", 409)


async def test_racing_stores_never_erase_each_other(make_settings: Callable[..., Settings]) -> None:
    """Several stores create the same blobs at once (a writer's concurrent appends to a new part, or
    version 0.1's shared blobs); no frame is lost to a re-create."""
    settings = make_settings(max_concurrent_writes=8)
    make = frame_maker(settings)
    stores = [AppendBlobStore(settings) for _ in range(4)]
    numbers = itertools.count(1)
    per_store = 40

    async def run(store: AppendBlobStore) -> list[str]:
        async def one() -> str:
            n = next(numbers)
            name = shared_blob("", DAY, n % 3)
            await store.append(name, make(n, name))
            return name

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
    name = writer_blob("gw/", DAY, WRITER, 0)
    frames = [make(n, name) for n in range(1, 4)]
    appended = [await store.append(name, f) for f in frames]
    assert [a.offset for a in appended] == [0, len(frames[0]), len(frames[0]) + len(frames[1])]
    (tmp_path / "logs" / "gw" / "notes.txt").write_text("not a part")
    (tmp_path / "logs" / "gw" / DAY / "notes.txt").write_text("not a part")
    (tmp_path / "logs" / "gw" / "2026-05-17.0003.log").write_bytes(make(9, "gw/2026-05-17.0003.log"))  # v0.1 layout
    assert await store.parts(DAY) == ["gw/2026-05-17.0003.log", name]
    assert await store.parts("2026-05-18") == []
    assert (tmp_path / "logs" / name).read_bytes() == b"".join(frames)
    assert await blob_bytes(store, name) == b"".join(frames)
    entries, report = await read_back(settings, [DAY])
    assert [e["n"] for e in entries] == [9, 1, 2, 3]
    assert report.parts == 2 and report.ok


async def test_directory_store_concurrent_appends_stay_whole(tmp_path: Path,
                                                             make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(storage=str(tmp_path))
    make = frame_maker(settings)
    stores = [DirectoryStore(tmp_path), DirectoryStore(tmp_path)]
    await stores[0].open()
    big = [make(n) for n in range(1, 201)]
    await asyncio.gather(*(stores[n % 2].append(NAME, f) for n, f in enumerate(big)))
    data = (tmp_path / NAME).read_bytes()
    assert len(data) == sum(len(f) for f in big)
    assert sorted(h.sequence for _, h in frames_in(data)) == list(range(1, 201))


async def test_a_directory_read_sees_an_append_in_progress_whole_or_not_at_all(tmp_path: Path, key: str) -> None:
    """An append to a directory store is a write (or several) under an exclusive lock; a reader that read
    to the end of the file without it saw the first bytes of a frame still being written, and `read`
    reported a healthy blob as damaged (truncated frame, exit 1): about one read in 40 while a writer
    appended 2 MB frames. A read now takes the blob's size under a shared lock, as Azure's read takes it
    from the blob's properties: the bytes of whole appends only."""
    settings = Settings.from_values({"storage": str(tmp_path), "encryption_key": key})
    make = frame_maker(settings)
    store = DirectoryStore(tmp_path)
    first, second = make(1), make(2)
    await store.append(NAME, first)
    fd = os.open(tmp_path / NAME, os.O_WRONLY | os.O_APPEND)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as DirectoryStore.append holds it from its first write to its fsync
        os.write(fd, second[:100])  # an append half written
        reading = asyncio.ensure_future(blob_bytes(store, NAME))
        await asyncio.sleep(0.3)
        os.write(fd, second[100:])
    finally:
        os.close(fd)  # the append is done: the lock goes with it
    assert await reading in (first, first + second)

@pytest.mark.slow
async def test_real_50000_block_limit(make_settings: Callable[..., Settings]) -> None:
    """Azurite enforces the committed-block limit of 50,000: the 50,001st append is refused with
    BlockCountExceedsLimit (the writer then rolls to the next part) and the blob keeps 50,000 frames."""
    settings = make_settings(max_concurrent_writes=48, compression="none")
    make = frame_maker(settings)
    store = AppendBlobStore(settings)
    numbers = itertools.count(1)
    landed: list[int] = []
    unanswered: list[int] = []  # no answer (a timeout, a dropped connection): the frame may have landed
    refused: list[StoreError] = []

    async def worker() -> None:
        while not refused and len(unanswered) < 1000:
            n = next(numbers)
            try:
                await store.append(NAME, make(n))
                landed.append(n)
            except StoreError as exc:
                if exc.status is None:  # seen on a machine loaded by two test runs at once: go on, as the writer would
                    unanswered.append(n)
                else:
                    refused.append(exc)

    try:
        await store.open()
        await asyncio.gather(*(worker() for _ in range(48)))
    finally:
        await store.close()
    assert {(e.code, e.status) for e in refused} == {("BlockCountExceedsLimit", 409)}
    assert await committed_blocks(settings, NAME) == 50_000
    entries, report = await read_back(settings, [DAY])
    stored = {e["n"] for e in entries}
    assert len(entries) == len(stored) == 50_000  # each frame once
    assert set(landed) <= stored <= set(landed) | set(unanswered)
    assert report.frames == 50_000 and report.ok and report.duplicates == 0


# -- issue 13: a new file's name is durable, and a failed write leaves no torn frame -------------------

async def test_directory_store_syncs_every_new_directory_entry(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A new part's name is durable only once its directory is synced, and a new date directory's name
    only once ITS parent is synced. Main synced the file's directory, not the parent of a new one, so a
    crash could lose a whole day's directory. os.fsync runs for real; this only notes what it synced."""
    synced: list[str] = []
    real_fsync = os.fsync

    def noting_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", noting_fsync)
    store = DirectoryStore(tmp_path / "logs", prefix="gw/")
    await store.open()
    name = writer_blob("gw/", DAY, WRITER, 0)
    await store.append(name, b"first")
    file, day_dir, prefix_dir = tmp_path / "logs" / name, tmp_path / "logs" / "gw" / DAY, tmp_path / "logs" / "gw"
    assert synced == [str(file), str(day_dir), str(prefix_dir)]  # data, then each new name, deepest first
    synced.clear()
    await store.append(name, b"second")
    assert synced == [str(file)]  # nothing new to name: the data only
    synced.clear()
    await store.append(writer_blob("gw/", DAY, WRITER, 1), b"third")
    assert synced == [str(day_dir / f"{WRITER}.0001.log"), str(day_dir)]  # a new file in an existing directory


PARTIAL_WRITE = r"""
import asyncio, json, os, resource, sys
from pathlib import Path
from blobwriter.config import Settings
from blobwriter.errors import StoreError
from blobwriter.store import DirectoryStore
from blobwriter.writer import LogWriter
from tests.support.readback import read_back

root, key = Path(sys.argv[1]), sys.argv[2]

async def main():
    settings = Settings.from_values({"storage": str(root), "encryption_key": key, "compression": "none"})
    async with LogWriter(settings) as writer:
        await writer.write_many([{"timestamp": "2026-05-17T10:00:00Z", "n": n, "pad": "x" * 200}
                                 for n in range(50)], wait=True)
    [name] = [str(p.relative_to(root)) for p in root.rglob("*.log")]
    before = (root / name).stat().st_size
    more = (root / name).read_bytes()
    # The file may grow by half of what this append carries: the write stops part-way (EFBIG; Python
    # ignores SIGXFSZ), as it would on a full disk.
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (before + len(more) // 2, hard))
    try:
        await DirectoryStore(root).append(name, more)
        error = None
    except StoreError as exc:
        error = str(exc)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    after = (root / name).stat().st_size
    entries, report = await read_back(settings, ["2026-05-17"])
    print(json.dumps({"error": error, "before": before, "after": after, "entries": len(entries),
                      "problems": [p.message for p in report.problems]}))

asyncio.run(main())
"""


def test_a_write_that_stops_part_way_leaves_no_torn_frame(tmp_path: Path, key: str) -> None:
    """Disk full in the middle of an append: main left the bytes written so far, which every later read
    reported as a damaged (truncated) frame; now the file is cut back to where the append began. Run in a
    child process, whose file size limit (RLIMIT_FSIZE) makes the write stop part-way for real."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    result = subprocess.run([sys.executable, "-c", PARTIAL_WRITE, str(tmp_path / "logs"), key], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["error"] and "File too large" in outcome["error"], outcome  # the append failed, and said so
    assert outcome["after"] == outcome["before"], outcome  # no byte of it stayed
    assert outcome["entries"] == 50 and outcome["problems"] == [], outcome


async def test_the_probe_passes_for_a_container_sas_and_fails_for_a_wrong_key(
        azurite: str, key: str, container: str, caplog: pytest.LogCaptureFixture) -> None:
    """QA ops: a wrong account key went unnoticed at start (the container's 403 was taken for an identity
    scoped to an existing container): open() now asks the probe, which a container SAS (rwacl, all the
    writer needs, and which may not read the container's properties) still passes."""
    from datetime import UTC, datetime, timedelta

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    from blobwriter.writer import LogWriter
    from tests.support.azurite import ACCOUNT, ACCOUNT_KEY

    values = {"encryption_key": key, "container": container, "batch_timeout": 0.1}
    sas = generate_container_sas(ACCOUNT, container, ACCOUNT_KEY, expiry=datetime.now(UTC) + timedelta(hours=1),
                                 permission=ContainerSasPermissions(read=True, add=True, create=True, write=True,
                                                                    list=True))
    owner = AppendBlobStore(Settings.from_values({**values, "storage": connection_string(azurite)}))
    await owner.open()  # the container exists; the SAS cannot create it
    await owner.close()
    scoped = Settings.from_values({**values, "storage": f"BlobEndpoint={azurite};SharedAccessSignature={sas}"})
    async with LogWriter(scoped) as writer:
        await writer.write({"id": "sas"}, wait=True)
        health = await writer.health()
    assert health["ok"] is True and health["storage_error"] is None, health

    wrong = connection_string(azurite).replace(ACCOUNT_KEY, "A" * 86 + "==")
    store = AppendBlobStore(Settings.from_values({**values, "storage": wrong}))
    try:
        with pytest.raises(StoreError, match="403"):
            await store.open()
    finally:
        await store.close()


async def test_a_container_deleted_while_writing_is_created_again_with_a_warning(
        make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture) -> None:
    """QA ops: the container deleted under a running writer was created again with only an INFO line
    ("Created container"), although everything written before was gone."""
    settings = make_settings()
    store = AppendBlobStore(settings)
    make = frame_maker(settings)
    try:
        with caplog.at_level("INFO", logger="blobwriter.store"):
            await store.append(NAME, make(1))  # never opened (storage was down at start): created, no alarm
            assert not [r for r in caplog.records if r.levelname == "WARNING"]
            await store.open()
            async with container_client(settings) as container:
                await container.delete_container()
            await store.append(NAME, make(2))
    finally:
        await store.close()
    warned = [r for r in caplog.records if r.levelname == "WARNING" and "creating it again" in r.getMessage()]
    assert len(warned) == 1 and "every blob it held is gone" in warned[0].getMessage()
