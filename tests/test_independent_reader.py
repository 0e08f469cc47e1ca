"""docs/FORMAT.md is enough: an independent reader (tests/support/independent_reader.py, written from the
document alone) reads what the real writer wrote, checks its index, and refuses tampered frames.

blobwriter's public API is used here only to produce data.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import shutil
import struct
import zlib
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import blobwriter.index
from blobwriter import LogWriter, Settings, keygen
from tests.support.independent_reader import (
    HEADER_SIZE,
    AuthenticationError,
    DateRead,
    Frame,
    check_index,
    date_blobs,
    frame_key,
    key_id,
    list_names,
    open_frame,
    parse_header,
    parse_key,
    parse_keys,
    read_date,
)

PREFIX = "gw/"
DATES = ("2026-11-23", "2026-11-24", "2026-11-25")
V1_STORE = Path(__file__).resolve().parent / "data" / "v1-store"
V1_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
V1_DATES = ("2026-01-10", "2026-01-11")


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def utc_date(timestamp: str) -> str:
    moment = datetime.fromisoformat(timestamp)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).date().isoformat()


def make_entries(sample: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Realistic entries spread over DATES, with timestamps in several ISO-8601 forms."""
    forms = (
        "{d}T{h:02d}:15:00Z",
        "{d}T{h:02d}:15:00.123+00:00",
        "{d}T{h:02d}:15:00",  # naive: UTC
        "{d}T{h:02d}:15:00+02:00",
    )
    entries = []
    for n in range(count):
        date = DATES[(n // 7) % 2]  # runs of 7 entries, alternating between the first two dates
        entry = dict(sample[n % len(sample)])
        entry["timestamp"] = forms[n % len(forms)].format(d=date, h=5 + n % 12)
        entry["seq_no"] = n
        entry["note"] = f"entrée n°{n} ✓"
        entries.append(entry)
    # 23:30 at UTC-08:00 on the 24th is the 25th in UTC.
    for n in range(count, count + 9):
        entries.append({"seq_no": n, "timestamp": "2026-11-24T23:30:00-08:00", "nested": {"a": [1, 2.5, None, True]}})
    return entries


@dataclass
class Written:
    root: Path
    key: str
    writer_ids: list[str]
    entries: list[dict[str, Any]]
    by_writer: dict[str, list[dict[str, Any]]]

    def expected(self, date: str) -> list[dict[str, Any]]:
        return [entry for entry in self.entries if utc_date(entry["timestamp"]) == date]


@pytest.fixture
async def written(tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch,
                  sample_entries: list[dict[str, Any]]) -> Written:
    """Two writers (one gzip, one uncompressed) writing concurrently to a directory store, then stopped."""
    monkeypatch.setattr(blobwriter.index, "INDEX_MAX_RECORDS", 4)
    root = tmp_path / "store"
    writers = [
        LogWriter(Settings.from_values({"storage": str(root), "encryption_key": key, "blob_prefix": PREFIX,
                                        "batch_size": 5, "batch_timeout": 0.1, "compression": compression}))
        for compression in ("gzip", "none")
    ]
    for writer in writers:
        await writer.start()
    entries = make_entries(sample_entries, 400)
    by_writer: dict[str, list[dict[str, Any]]] = {str(w.writer_id): [] for w in writers}
    for n, entry in enumerate(entries):
        writer = writers[(n // 3) % 2]
        by_writer[str(writer.writer_id)].append(entry)
        await writer.write(dict(entry))
        if n % 50 == 49:
            await asyncio.sleep(0.15)  # let some batches go out on their own
    await asyncio.gather(*(writer.stop() for writer in writers))
    return Written(root, key, [str(w.writer_id) for w in writers], entries, by_writer)


def copy_store(written: Written, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(written.root, target)
    return target


def first_data_frame(read: DateRead, writer: str) -> Frame:
    return next(frame for frame in read.data_frames if frame.header.writer == writer)


def tampering(written: Written, tmp_path: Path, name: str, date: str, writer: int) -> tuple[DateRead, Frame, Path]:
    """What a tampering test starts from: the clean read of `date`, the first data frame of the writer
    `writer` (its index) as the victim, and a copy of the store named `name` to tamper with."""
    clean = read_date(written.root, date, [written.key], prefix=PREFIX)
    return clean, first_data_frame(clean, written.writer_ids[writer]), copy_store(written, tmp_path, name)


def frame_bytes(root: Path, frame: Frame) -> bytes:
    data = (root / frame.blob).read_bytes()
    return data[frame.offset:frame.offset + frame.header.frame_length]


def append(root: Path, blob: str, data: bytes) -> int:
    path = root / blob
    path.parent.mkdir(parents=True, exist_ok=True)
    offset = path.stat().st_size if path.exists() else 0
    with path.open("ab") as handle:
        handle.write(data)
    return offset


def reseal(frame: Frame, key: str, blob: str, attempt: int) -> bytes:
    """The same frame sealed again with another attempt, as FORMAT.md describes a retried append."""
    body = gzip.compress(frame.plaintext) if frame.header.flags & 0x01 else frame.plaintext
    header = bytearray(frame.header.raw)
    struct.pack_into(">H", header, 6, attempt)
    header[48:60] = struct.pack(">QH", frame.header.sequence, attempt) + b"\x00\x00"
    struct.pack_into(">I", header, 60, len(body) + 16)
    struct.pack_into(">I", header, 64, zlib.crc32(bytes(header[:64])))
    aead = AESGCM(frame_key(parse_key(key), frame.header.writer_id))
    return bytes(header) + aead.encrypt(bytes(header[48:60]), body, bytes(header) + blob.encode())


# --- the writer's data, read back -----------------------------------------------------------


async def test_every_entry_read_exactly_once(written: Written) -> None:
    names = list_names(written.root)
    total = 0
    for date in DATES:
        read = read_date(written.root, date, [written.key], prefix=PREFIX)
        # The documented layout and order: {prefix}{date}/{writer id}.{part}.log, writers by id.
        assert read.blobs == [f"{PREFIX}{date}/{w}.0000.log" for w in sorted(written.writer_ids)]
        assert not read.damage and not read.unreadable and not read.retried and not read.replays
        got = Counter(canonical(entry) for entry in read.entries)
        assert got == Counter(canonical(entry) for entry in written.expected(date))
        assert all(count == 1 for count in got.values())
        assert all(utc_date(entry["timestamp"]) == date for entry in read.entries)
        # "Entries of one writer keep their order."
        for writer in written.writer_ids:
            mine = [entry["seq_no"] for frame in read.data_frames if frame.header.writer == writer
                    for entry in frame.lines]
            assert mine == [e["seq_no"] for e in written.by_writer[writer] if utc_date(e["timestamp"]) == date]
        total += len(read.entries)
    assert total == len(written.entries)
    # Every file of the store is a blob of one of these dates.
    assert sorted(names) == sorted(blob for date in DATES for blob in date_blobs(names, date, PREFIX))


async def test_headers_are_as_documented(written: Written) -> None:
    key = parse_key(written.key)
    for date in DATES:
        read = read_date(written.root, date, [written.key], prefix=PREFIX)
        compressed = {written.writer_ids[0]: True, written.writer_ids[1]: False}
        for frame in read.data_frames + read.index_frames:
            header = frame.header
            assert header.version == 2 and header.attempt == 0
            assert header.key_id == key_id(key)
            assert frame.blob == f"{PREFIX}{date}/{header.writer}.0000.log"
            assert header.nonce == struct.pack(">QH", header.sequence, 0) + b"\x00\x00"
            assert bool(header.flags & 0x01) == compressed[header.writer]
            assert header.entries == len(frame.lines) and header.plaintext_length == len(frame.plaintext)
        # The frame key is RFC 5869 HKDF: the hand-written one agrees with cryptography's.
        writer_id = read.data_frames[0].header.writer_id
        info = b"blobwriter writer key v2\x00" + writer_id
        assert len(b"blobwriter writer key v2") == 24
        reference = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)
        assert frame_key(key, writer_id) == reference


async def test_index_chains_are_complete_and_final(written: Written) -> None:
    for date in DATES:
        read = read_date(written.root, date, [written.key], prefix=PREFIX)
        report = check_index(read)
        assert report.ok, report.errors
        assert report.open_chains == []
        assert report.not_yet_indexed == 0
        assert report.records == len(read.data_frames)
        assert sorted(report.chains) == sorted(written.writer_ids)
        for chain in report.chains.values():
            if date != DATES[2]:  # INDEX_MAX_RECORDS = 4: several index frames per date (the 25th has 9 entries)
                assert len(chain.links) >= 3
            assert [link.number for link, _ in chain.links] == list(range(1, len(chain.links) + 1))
            assert chain.final and [link.final for link, _ in chain.links].count(True) == 1
            data_frames = sum(1 for f in read.data_frames if f.header.writer == chain.writer)
            assert chain.links[-1][0].frames == data_frames
            for (link, _frame), (_prev, prev_frame) in zip(chain.links[1:], chain.links, strict=False):
                assert link.previous == hashlib.sha256(prev_frame.plaintext).hexdigest()


# --- tampering ------------------------------------------------------------------------------


async def test_a_flipped_ciphertext_byte_fails_authentication(written: Written, tmp_path: Path) -> None:
    date = DATES[0]
    clean, victim, root = tampering(written, tmp_path, "flipped", date, writer=0)
    path = root / victim.blob
    data = bytearray(path.read_bytes())
    data[victim.offset + HEADER_SIZE + 3] ^= 0x01
    path.write_bytes(bytes(data))

    header = parse_header(bytes(data), victim.offset)
    assert header is not None  # the header is intact, only the ciphertext changed
    ciphertext = bytes(data[victim.offset + HEADER_SIZE:victim.offset + header.frame_length])
    with pytest.raises(AuthenticationError):
        open_frame(header, ciphertext, victim.blob, parse_keys([written.key]))

    read = read_date(root, date, [written.key], prefix=PREFIX)
    assert [(d.blob, d.offset) for d in read.damage] == [(victim.blob, victim.offset)]
    assert "AuthenticationError" in read.damage[0].reason
    # The reader resynchronizes: everything but the victim's entries is still read.
    lost = Counter(canonical(e) for e in victim.lines)
    assert Counter(canonical(e) for e in read.entries) == Counter(canonical(e) for e in clean.entries) - lost
    report = check_index(read)
    assert any(f"{victim.blob}@{victim.offset}" in error for error in report.errors)


async def test_a_changed_header_byte_fails_authentication(written: Written, tmp_path: Path) -> None:
    """The header is associated data: a change with a recomputed CRC is still refused."""
    date = DATES[1]
    clean, victim, root = tampering(written, tmp_path, "header", date, writer=1)
    path = root / victim.blob
    data = bytearray(path.read_bytes())
    data[victim.offset + 5] ^= 0x01  # the gzip flag
    struct.pack_into(">I", data, victim.offset + 64, zlib.crc32(bytes(data[victim.offset:victim.offset + 64])))
    path.write_bytes(bytes(data))
    read = read_date(root, date, [written.key], prefix=PREFIX)
    assert [(d.blob, d.offset) for d in read.damage] == [(victim.blob, victim.offset)]
    assert "AuthenticationError" in read.damage[0].reason


@pytest.mark.parametrize("where", ["another date", "another writer", "another part"])
async def test_a_frame_copied_into_another_blob_fails_authentication(written: Written, tmp_path: Path,
                                                                     where: str) -> None:
    source_date = DATES[0]
    clean = read_date(written.root, source_date, [written.key], prefix=PREFIX)
    writer = written.writer_ids[0]
    victim = first_data_frame(clean, writer)
    root = copy_store(written, tmp_path, "copied")
    target_date = {"another date": DATES[1]}.get(where, source_date)
    target_writer = written.writer_ids[1] if where == "another writer" else writer
    part = "0001" if where == "another part" else "0000"
    target = f"{PREFIX}{target_date}/{target_writer}.{part}.log"
    offset = append(root, target, frame_bytes(root, victim))

    read = read_date(root, target_date, [written.key], prefix=PREFIX)
    assert [(d.blob, d.offset) for d in read.damage] == [(target, offset)]
    assert "AuthenticationError" in read.damage[0].reason
    expected = Counter(canonical(e) for e in written.expected(target_date))
    assert Counter(canonical(e) for e in read.entries) == expected


async def test_a_frame_appended_twice_is_a_replay_and_is_dropped(written: Written, tmp_path: Path) -> None:
    date = DATES[0]
    clean, victim, root = tampering(written, tmp_path, "replayed", date, writer=1)
    append(root, victim.blob, frame_bytes(root, victim))
    read = read_date(root, date, [written.key], prefix=PREFIX)
    assert not read.damage and len(read.replays) == 1 and not read.retried
    assert Counter(canonical(e) for e in read.entries) == Counter(canonical(e) for e in clean.entries)


async def test_a_retried_frame_is_read_once(written: Written, tmp_path: Path) -> None:
    """A copy sealed again with attempt 1 (a retried append that landed twice) is dropped, and not unindexed."""
    date = DATES[1]
    clean, victim, root = tampering(written, tmp_path, "retried", date, writer=0)
    append(root, victim.blob, reseal(victim, written.key, victim.blob, attempt=1))
    read = read_date(root, date, [written.key], prefix=PREFIX)
    assert not read.damage and not read.replays
    assert [(f.header.sequence, f.header.attempt) for f in read.retried] == [(victim.header.sequence, 1)]
    assert Counter(canonical(e) for e in read.entries) == Counter(canonical(e) for e in clean.entries)
    report = check_index(read)
    assert report.ok and report.not_yet_indexed == 0


async def test_a_removed_frame_is_revealed_by_the_index(written: Written, tmp_path: Path) -> None:
    date = DATES[0]
    clean, victim, root = tampering(written, tmp_path, "removed", date, writer=0)
    path = root / victim.blob
    data = path.read_bytes()
    path.write_bytes(data[:victim.offset] + data[victim.offset + victim.header.frame_length:])
    read = read_date(root, date, [written.key], prefix=PREFIX)
    assert not read.damage  # frames are whole: only the index can tell
    report = check_index(read)
    assert not report.ok


async def test_a_cut_tail_leaves_an_open_chain(written: Written, tmp_path: Path) -> None:
    date = DATES[1]
    clean = read_date(written.root, date, [written.key], prefix=PREFIX)
    writer = written.writer_ids[1]
    chain = check_index(clean).chains[writer]
    last = chain.links[-1][1]
    blob = f"{PREFIX}{date}/{writer}.0000.log"
    assert last.blob == blob and last.offset + last.header.frame_length == (written.root / blob).stat().st_size
    root = copy_store(written, tmp_path, "cut")
    path = root / blob
    path.write_bytes(path.read_bytes()[:last.offset + 30])  # ends inside the final index frame
    read = read_date(root, date, [written.key], prefix=PREFIX)
    assert [(d.blob, d.offset) for d in read.damage] == [(blob, last.offset)]
    report = check_index(read)
    assert report.ok and report.open_chains == [writer]


@pytest.mark.parametrize("covered", [1, 4, 40])
async def test_a_forged_length_that_ends_inside_the_next_header_hides_no_frame(written: Written, tmp_path: Path,
                                                                                covered: int) -> None:
    """FORMAT.md "Reading", step 3: 68 bytes with a valid CRC, a key id nobody has and a length that takes
    only the first `covered` bytes of the next genuine header are damage, not an unreadable frame whose
    length is trusted; reading goes on from their second byte and finds the genuine frame."""
    date = DATES[0]
    clean, victim, root = tampering(written, tmp_path, "forged", date, writer=0)
    path = root / victim.blob
    data = path.read_bytes()
    filler = bytes(max(0, 16 - covered))  # a ciphertext has at least the 16 bytes of its tag
    head = struct.pack(">4sBBH8s16sQII12sI", b"BLWF", 2, 1, 0, bytes(8), bytes(16), 1, 5, 100, bytes(12),
                       len(filler) + covered)
    forged = head + struct.pack(">I", zlib.crc32(head))
    path.write_bytes(data[:victim.offset] + forged + filler + data[victim.offset:])
    read = read_date(root, date, [written.key], prefix=PREFIX)
    assert [(d.blob, d.offset) for d in read.damage] == [(victim.blob, victim.offset)], read.damage
    assert "no header where the frame ends" in read.damage[0].reason and not read.unreadable
    assert Counter(canonical(e) for e in read.entries) == Counter(canonical(e) for e in clean.entries)


async def test_another_key_reads_nothing_and_names_the_key(written: Written) -> None:
    read = read_date(written.root, DATES[0], [keygen()], prefix=PREFIX)
    assert read.entries == [] and read.damage == []
    assert {u.key_id for u in read.unreadable} == {key_id(parse_key(written.key)).hex()}
    # With the old key among the keys (a rotation), everything reads again.
    rotated = read_date(written.root, DATES[0], [keygen(), written.key], prefix=PREFIX)
    assert len(rotated.entries) == len(written.expected(DATES[0])) and not rotated.unreadable


# --- listing --------------------------------------------------------------------------------


def test_a_dates_blobs_are_listed_in_the_documented_order() -> None:
    a, b = "a" * 32, "0123456789abcdef" * 2
    names = [
        f"p/2026-01-10/{a}.0001.log", f"p/2026-01-10/{b}.0000.log", "p/2026-01-10.0001.log",
        f"p/2026-01-10/{a}.10000.log", f"p/2026-01-10/{a}.9999.log", "p/2026-01-10.0000.log",
        "p/2026-01-10.0000.log.tmp", "p/2026-01-100.0000.log", f"p/2026-01-10/{a.upper()}.0000.log",
        "p/2026-01-10/x.0000.log", "p/2026-01-11.0000.log", "q/2026-01-10.0000.log", "p/2026-01-10.000.log",
    ]
    assert date_blobs(names, "2026-01-10", "p/") == [
        "p/2026-01-10.0000.log", "p/2026-01-10.0001.log",
        f"p/2026-01-10/{b}.0000.log",
        f"p/2026-01-10/{a}.0001.log", f"p/2026-01-10/{a}.9999.log", f"p/2026-01-10/{a}.10000.log",
    ]


# --- parts (Azure only: the directory store does not roll parts) -----------------------------


async def test_parts_and_index_frames_in_later_parts(make_settings: Any, container: str, azurite: str,
                                                     tmp_path: Path, key: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Blobs written to Azurite with tiny parts, copied under a directory with the same names, read back."""
    from azure.storage.blob.aio import BlobServiceClient

    from tests.support.azurite import connection_string

    monkeypatch.setattr(blobwriter.index, "INDEX_MAX_RECORDS", 3)
    writer = LogWriter(make_settings(blob_prefix=PREFIX, batch_size=3, max_blocks_per_blob=4))
    await writer.start()
    entries: list[dict[str, Any]] = [{"n": n, "timestamp": f"{DATES[n % 2]}T10:00:00Z"} for n in range(72)]
    for n, entry in enumerate(entries):
        await writer.write(dict(entry))
        if n % 6 == 5:
            await asyncio.sleep(0.15)
    await writer.stop()
    root = tmp_path / "copy"
    async with BlobServiceClient.from_connection_string(connection_string(azurite)) as service:
        client = service.get_container_client(container)
        async for item in client.list_blobs():
            target = root / item.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(await (await client.download_blob(item.name)).readall())
    for date in DATES[:2]:
        read = read_date(root, date, [key], prefix=PREFIX)
        assert len(read.blobs) >= 2
        assert read.blobs == [f"{PREFIX}{date}/{writer.writer_id}.{part:04d}.log" for part in range(len(read.blobs))]
        assert not read.damage and not read.retried and not read.replays
        assert Counter(canonical(e) for e in read.entries) == Counter(
            canonical(e) for e in entries if e["timestamp"].startswith(date))
        assert [e["n"] for e in read.entries] == [e["n"] for e in entries if e["timestamp"].startswith(date)]
        report = check_index(read)
        assert report.ok, report.errors
        assert report.open_chains == [] and report.not_yet_indexed == 0
        assert report.records == len(read.data_frames)


# --- version 1 ------------------------------------------------------------------------------


def test_version_1_store() -> None:
    for date in V1_DATES:
        read = read_date(V1_STORE, date, [V1_KEY], prefix="gw/")
        assert read.blobs == [f"gw/{date}.0000.log"]
        assert not read.damage and not read.unreadable and not read.retried and not read.replays
        assert {f.header.version for f in read.data_frames + read.index_frames} == {1}
        assert len(read.data_frames) == 3 and len(read.index_frames) == 1
        ids = [entry["id"] for entry in read.entries]
        assert ids == [f"v1-{date}-{n}-{k}" for n in range(3) for k in range(4)]
        assert all(utc_date(entry["timestamp"]) == date for entry in read.entries)
        report = check_index(read)
        assert report.ok and report.chains == {} and report.not_yet_indexed == 0 and report.records == 3


def test_a_version_1_frame_copied_into_another_date_fails(tmp_path: Path) -> None:
    root = tmp_path / "v1"
    shutil.copytree(V1_STORE, root)
    source = read_date(root, V1_DATES[0], [V1_KEY], prefix="gw/")
    victim = source.data_frames[0]
    offset = append(root, f"gw/{V1_DATES[1]}.0000.log", frame_bytes(root, victim))
    read = read_date(root, V1_DATES[1], [V1_KEY], prefix="gw/")
    assert [(d.blob, d.offset) for d in read.damage] == [(f"gw/{V1_DATES[1]}.0000.log", offset)]
    assert "AuthenticationError" in read.damage[0].reason
    assert len(read.entries) == 12
