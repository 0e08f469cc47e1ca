"""Reading on all cores gives what reading in one process gives: the same entries in the same order,
the same duplicates dropped, the same damage at the same offsets with the same messages."""

from __future__ import annotations

import os
import tracemalloc
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from blobwriter import decoding, store
from blobwriter.codec import HEADER, HEADER_SIZE, MAGIC, Damage, Decoder, Encoder, FrameScanner, walk_frames
from blobwriter.config import Settings
from blobwriter.errors import FrameError, UnknownKeyError
from blobwriter.keys import keygen, parse_key
from blobwriter.layout import shared_blob
from blobwriter.reader import Reader, ReadReport
from blobwriter.store import DirectoryStore
from blobwriter.writer import LogWriter
from tests.conftest import entry

DAY, NEXT = "2026-05-17", "2026-05-18"


class CollectIds:
    """A task that answers with the ids of its entries, in order (so the test sees every entry)."""

    def run(self, lines: Sequence[bytes]) -> list[str]:
        return [orjson.loads(line).get("id", "-") for line in lines]


def day_entries(count: int, day: str = DAY, **fields: Any) -> list[dict[str, Any]]:
    return [entry(timestamp=f"{day}T12:00:00.000Z", **fields) for _ in range(count)]


async def damaged_store(root: Path, key: str) -> None:
    """Two writers' blobs (one with a frame altered and one cut short), and a blob in version 0.1's
    shared layout with garbage, a retried copy, a replay, a frame of an unknown key, repeated ids."""
    settings = Settings.from_values({"storage": str(root), "encryption_key": key, "batch_size": 7,
                                     "max_concurrent_writes": 1})
    names = []
    for _ in range(2):
        async with LogWriter(settings) as writer:
            for _ in range(40):
                await writer.write_many(day_entries(7), wait=True)
            await writer.write_many(day_entries(3, NEXT), wait=True)
        names.append(f"{DAY}/{writer.writer_id}.0000.log")
    first = root / names[0]
    data = bytearray(first.read_bytes())
    frames = list(walk_frames(bytes(data)))
    offset, header = frames[10]
    data[offset + HEADER_SIZE + 5] ^= 0x01  # authentication fails: rescan from the byte after its start
    offset, header = frames[20]
    data[offset + 4] = 99  # header checksum mismatch
    (a, _), (b, two) = frames[30], frames[31]  # two whole frames swapped: only verify's index check sees it
    data[a:b + two.frame_length] = data[b:b + two.frame_length] + data[a:b]
    first.write_bytes(bytes(data))
    second = root / names[1]
    second.write_bytes(second.read_bytes()[:-100])  # the final index frame cut: truncated

    encoder, stranger = Encoder(parse_key(key)), Encoder(parse_key(keygen()))
    shared = shared_blob("", DAY, 0)
    repeated = day_entries(5)
    out = bytearray()
    for sequence in range(1, 30):
        group = repeated if sequence in (3, 17) else day_entries(4)
        body = encoder.body([orjson.dumps(e) for e in group], sequence, date=DAY)
        out += encoder.seal(body, 0, blob=shared)
        if sequence == 5:
            out += encoder.seal(body, 1, blob=shared)  # a retry that landed too
        if sequence == 8:
            out += b"\x00garbage BLWF" + bytes(90)
        if sequence == 12:
            out += stranger.encode([b'{"id": "x"}'], 1, blob=shared, date=DAY)[0]
        if sequence == 14:
            out += encoder.seal(body, 0, blob=shared)  # replayed
        if sequence == 22:  # forged: a key id nobody has, a length that ends 10 bytes into the next header
            head = HEADER.pack(MAGIC, 2, 1, 0, bytes(8), bytes(16), 1, 1, 1, bytes(12), 16, 0)[:HEADER_SIZE - 4]
            out += head + zlib.crc32(head).to_bytes(4, "big") + bytes(6)
    (root / shared).write_bytes(bytes(out))


async def read(root: Path, key: str, *, workers: int, task: bool = False, verify: bool = False,
               id_field: str | None = None) -> tuple[list[str], ReadReport, bool]:
    store = DirectoryStore(root)
    settings = Settings.from_values({"storage": str(root), "encryption_key": key})
    async with Reader(store, settings.keys, workers=workers, check_index=verify, id_field=id_field) as reader:
        ids: list[str] = []
        for day in (DAY, NEXT):  # one call per day, as the commands read a range
            if task:
                async for part in reader.results([day], CollectIds()):
                    ids += part
            else:
                ids += [orjson.loads(line).get("id", "-") async for line in reader.entries([day])]
        return ids, reader.report, reader._decoding.parallel


def serial_scan(root: Path, key: str, name: str) -> list[tuple[int, str]]:
    """(offset, what) of each frame and damage of one blob, found as a one-process reader does: scan,
    decrypt each frame, and on a failed one rescan from its second byte (FrameScanner.reject)."""
    decoder = Decoder([parse_key(key)])
    scanner = FrameScanner(known=decoder.key_ids)
    scanner.feed((root / name).read_bytes())
    scanner.finish()
    found = []
    for item in scanner:
        if isinstance(item, Damage):
            found.append((item.offset, item.message))
            continue
        try:
            decoder.decode(item.header, item.data, blob=name, date=DAY)
            found.append((item.offset, "frame"))
        except UnknownKeyError as exc:
            found.append((item.offset, str(exc)))
        except FrameError as exc:
            found.append((item.offset, str(exc)))
            scanner.reject()
    return found


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start the pool at once, make batches of a few frames and reads of a few hundred bytes, so that
    every case crosses them (a rescan too: it joins the chunks it kept)."""
    monkeypatch.setattr(decoding, "POOL_AFTER_BYTES", 0)
    monkeypatch.setattr(decoding, "BATCH_BYTES", 2500)
    monkeypatch.setattr(store, "READ_RANGE_BYTES", 333)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores for a pool")
@pytest.mark.parametrize("mode", ["entries", "task", "verify", "id_field"])
async def test_all_cores_read_what_one_process_reads(tmp_path: Path, key: str, small_batches: None,
                                                      mode: str) -> None:
    await damaged_store(tmp_path, key)
    options: dict[str, Any] = {"task": mode == "task", "verify": mode == "verify",
                               "id_field": "id" if mode == "id_field" else None}
    serial_ids, serial, was_parallel = await read(tmp_path, key, workers=1, **options)
    assert not was_parallel
    ids, report, was_parallel = await read(tmp_path, key, workers=2, **options)
    assert was_parallel
    assert ids == serial_ids
    assert report == serial
    damage = {(p.blob, p.offset, p.message) for p in report.problems}
    for name in sorted({p.blob for p in report.problems}):  # the same damage as the plain serial scan finds
        assert {(name, o, m) for o, m in serial_scan(tmp_path, key, name) if m != "frame"} <= damage
    # What the damage is, so that the comparison above compares something.
    messages = [p.message for p in report.problems]
    assert any("authentication failed" in m for m in messages)
    assert any("header checksum mismatch" in m for m in messages)
    assert any("truncated frame" in m for m in messages)
    assert any("replayed frame" in m for m in messages)
    assert any(p.unknown_key for p in report.problems)
    assert any("does not end where a frame does" in m for m in messages)
    assert report.duplicates == 1
    assert len(ids) == report.entries - report.id_duplicates > 500
    if mode == "id_field":
        assert report.id_duplicates == 5
    if mode == "verify":
        assert report.index_frames == 3 and report.unindexed > 0  # writer 2's final index frame of DAY is cut
        assert sum("indexed frame missing" in m or "out of place" in m for m in messages) >= 2


async def test_small_reads_stay_in_process(tmp_path: Path, key: str) -> None:
    await damaged_store(tmp_path, key)
    _, report, was_parallel = await read(tmp_path, key, workers=2)
    assert not was_parallel and report.entries > 500


def test_a_decoding_worker_loads_neither_the_azure_sdk_nor_the_writer() -> None:
    """The package root loads its names when first used: a decoding worker (one per core, started by
    every large read) and `stats` over a directory do not pay for the Azure SDK at start-up. The
    root's names all still resolve."""
    import subprocess
    import sys

    code = ("import sys, blobwriter, blobwriter.decode_worker, blobwriter.query.stats; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('azure', 'aiohttp') "
            "or m in ('blobwriter.writer', 'blobwriter.blob_store')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    import blobwriter

    for name in blobwriter.__all__:  # each loads from its module (AttributeError if _WHERE lacks it)
        assert getattr(blobwriter, name) is not None
    assert blobwriter.LogWriter is LogWriter and blobwriter.AppendBlobStore.__name__ == "AppendBlobStore"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        blobwriter.Nope  # noqa: B018


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("before", ["nothing", "a frame that fails", "frames that fail"])
async def test_a_long_stretch_that_is_not_frames_is_read_in_bounded_memory(tmp_path: Path, key: str, before: str,
                                                                          workers: int,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A blob that is not ours (or a long run of damage) holds no frame to answer: the bytes a rescan
    might need were kept from the last frame answered to the end of the blob, and `verify` of a day
    with a 300 MB blob of noise took 349 MB (1.4 GB with frames that failed before it, on 2 workers).
    Only what a rescan can still need is kept now: from the first frame not yet answered, or from
    where the scanner is; and a scan waits for the answers before a long stretch of damage."""
    if workers > 1:
        if len(os.sched_getaffinity(0)) < 2:
            pytest.skip("needs 2 cores for a pool")
        monkeypatch.setattr(decoding, "POOL_AFTER_BYTES", 0)
    encoder = Encoder(parse_key(key))
    name = shared_blob("", DAY, 0)
    head = b""
    if before != "nothing":  # sealed for another blob: authentication fails, a rescan from its second byte
        count = 1 if before == "a frame that fails" else 20
        head = b"".join(encoder.encode([orjson.dumps({"id": "a", "pad": os.urandom(100_000).hex()})], n,
                                       blob="elsewhere", date=DAY)[0] for n in range(10, 10 + count))
    noise = os.urandom(48 * 1024 * 1024).replace(b"BLWF", b"blwf")
    last = encoder.encode([b'{"id": "z"}'], 2, blob=name, date=DAY)[0]
    (tmp_path / name).write_bytes(head + noise + last)
    del noise
    tracemalloc.start()
    try:
        ids, report, _ = await read(tmp_path, key, workers=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ids == ["z"]
    assert [p.offset for p in report.problems][:1] == [0]
    assert len(report.problems) == (20 if before == "frames that fail" else 1)  # each frame that fails, or the noise
    assert peak < 24 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB"
