"""Reader: each entry once, duplicates dropped, damage reported by blob and offset, key rotation."""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from blobwriter import store as store_module
from blobwriter.codec import HEADER_SIZE, Encoder
from blobwriter.config import Settings
from blobwriter.keys import key_id, keygen, parse_key
from blobwriter.layout import shared_blob, writer_blob
from blobwriter.reader import Reader, SeenFrames, date_range
from blobwriter.store import DirectoryStore, open_store
from blobwriter.writer import LogWriter
from tests.conftest import entry
from tests.support.readback import (
    assert_each_once,
    blob_bytes,
    cli_env,
    frames_in,
    read_back,
    replace_blob,
    run_cli,
)

DAY = "2026-05-17"
OLD = shared_blob("", DAY, 0)  # version 0.1's layout: written here to show it is still read
TS = f"{DAY}T12:00:00.000Z"
NEW, RETRY, REPLAY = SeenFrames.NEW, SeenFrames.RETRY, SeenFrames.REPLAY


def day_entries(count: int, **fields: Any) -> list[dict[str, Any]]:
    return [entry(timestamp=TS, **fields) for _ in range(count)]


# -- SeenFrames ------------------------------------------------------------------------------

def test_seen_frames_first_attempts() -> None:
    seen = SeenFrames()
    assert seen.add(b"w", 5) == NEW
    assert seen.add(b"w", 5) == REPLAY  # the identical attempt again
    assert seen.add(b"v", 5) == NEW  # another writer's sequence 5
    for sequence in (7, 6, 3, 4, 1, 2):  # joins ranges left, right and both ways
        assert seen.add(b"w", sequence) == NEW
    for sequence in range(1, 8):
        assert seen.add(b"w", sequence) == REPLAY
    assert seen.add(b"w", 8) == NEW and seen.add(b"w", 0) == NEW


def test_seen_frames_retries() -> None:
    seen = SeenFrames()
    assert seen.add(b"w", 1, 0) == NEW
    assert seen.add(b"w", 1, 1) == RETRY  # a retry that landed too: drop it
    assert seen.add(b"w", 1, 1) == REPLAY
    assert seen.add(b"w", 2, 2) == NEW  # only a later attempt landed
    assert seen.add(b"w", 2, 0) == RETRY  # the first attempt turns up later (another part)
    assert seen.add(b"w", 2, 1) == RETRY
    assert seen.add(b"w", 2, 0) == REPLAY
    assert seen.add(b"w", 2, 2) == REPLAY


def test_seen_frames_matches_a_plain_set() -> None:
    rng = random.Random(2024)
    for _ in range(300):
        seen, model = SeenFrames(), set()
        for _ in range(rng.randint(1, 120)):
            writer, sequence, attempt = rng.choice([b"a", b"b"]), rng.randint(0, 40), rng.choice([0, 0, 0, 1, 2])
            if (writer, sequence, attempt) in model:
                expected = REPLAY
            elif any((writer, sequence, a) in model for a in range(3)):
                expected = RETRY
            else:
                expected = NEW
            model.add((writer, sequence, attempt))
            assert seen.add(writer, sequence, attempt) == expected
        for writer, (starts, ends) in seen._first.items():  # ranges stay sorted, disjoint, not adjacent
            assert all(s <= e for s, e in zip(starts, ends, strict=True))
            assert all(ends[i] + 1 < starts[i + 1] for i in range(len(starts) - 1))
            covered = {n for s, e in zip(starts, ends, strict=True) for n in range(s, e + 1)}
            assert covered == {q for w, q, a in model if w == writer and a == 0}


def test_seen_frames_stays_small() -> None:
    seen = SeenFrames()
    for sequence in range(1, 100_001):
        assert seen.add(b"w", sequence) == NEW
    starts, ends = seen._first[b"w"]
    assert (starts, ends) == ([1], [100_000])  # one range, not 100,000 entries


def test_date_range() -> None:
    assert date_range(date(2026, 5, 17)) == ["2026-05-17"]
    assert date_range(date(2024, 2, 28), date(2024, 3, 1)) == ["2024-02-28", "2024-02-29", "2024-03-01"]
    assert date_range(date(2026, 12, 31), date(2027, 1, 1)) == ["2026-12-31", "2027-01-01"]
    with pytest.raises(ValueError, match="before"):
        date_range(date(2026, 5, 17), date(2026, 5, 16))


# -- reading frames from a directory store ---------------------------------------------------

@pytest.fixture
def dir_settings(tmp_path: Path, make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(storage=str(tmp_path))


def encoder_for(settings: Settings) -> Encoder:
    return Encoder(settings.encryption_key)  # type: ignore[arg-type]


def lines(entries: list[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(e) for e in entries]


@pytest.mark.parametrize("big", [False, True])
async def test_reads_across_tiny_chunks(dir_settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                        sample_entries: list[dict[str, Any]], big: bool) -> None:
    """Frames split across download chunks at every possible place read the same."""
    encoder = encoder_for(dir_settings)
    store = DirectoryStore(Path(dir_settings.require("storage")))
    await store.open()
    if big:
        groups = [sample_entries[n:n + 100] for n in range(0, 2000, 100)]
        chunks: tuple[int, ...] = (999, 64 * 1024 + 1, 4 * 1024 * 1024)
    else:
        groups = [day_entries(n % 3 + 1) for n in range(8)]
        chunks = (1, 7, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 1, 100)
    for sequence, group in enumerate(groups, start=1):
        await store.append(OLD, encoder.encode(lines(group), sequence, blob=OLD, date=DAY)[0])
    expected = [e["id"] for group in groups for e in group]
    for chunk in chunks:
        monkeypatch.setattr(store_module, "READ_RANGE_BYTES", chunk)
        found, report = await read_back(dir_settings, [DAY])
        assert [e["id"] for e in found] == expected, chunk
        assert report.ok and report.frames == len(groups)


async def test_retried_frame_dropped_replayed_frame_reported(dir_settings: Settings) -> None:
    encoder = encoder_for(dir_settings)
    store = DirectoryStore(Path(dir_settings.require("storage")))
    first, second = day_entries(3), day_entries(2)
    body = encoder.body(lines(first), 1, date=DAY)
    landed = [await store.append(OLD, encoder.seal(body, 0, blob=OLD)),  # timed out, but landed
              await store.append(OLD, encoder.seal(body, 1, blob=OLD)),  # the retry landed too
              await store.append(OLD, encoder.encode(lines(second), 2, blob=OLD, date=DAY)[0])]
    found, report = await read_back(dir_settings, [DAY])
    assert_each_once(found, [e["id"] for e in first + second])
    assert report.duplicates == 1 and report.ok

    replay = await blob_bytes(store, OLD)
    await store.append(OLD, replay[landed[2].offset:])  # the very same bytes again: not a writer's retry
    found, report = await read_back(dir_settings, [DAY])
    assert_each_once(found, [e["id"] for e in first + second])
    assert [p.offset for p in report.problems] == [len(replay)]
    assert "replayed frame" in report.problems[0].message


async def test_duplicates_dropped_across_parts_of_a_date_only(dir_settings: Settings) -> None:
    encoder = encoder_for(dir_settings)
    root = Path(dir_settings.require("storage"))
    entries = day_entries(4)
    body = encoder.body(lines(entries), 9, date=DAY)
    (root / f"{DAY}.0000.log").write_bytes(encoder.seal(body, 0, blob=f"{DAY}.0000.log"))
    (root / f"{DAY}.0001.log").write_bytes(encoder.seal(body, 1, blob=f"{DAY}.0001.log"))
    found, report = await read_back(dir_settings, [DAY])
    assert_each_once(found, [e["id"] for e in entries])
    assert (report.parts, report.duplicates, report.ok) == (2, 1, True)
    # A copy moved into another date's part fails authentication there: the date is bound to the frame.
    (root / "2026-05-18.0000.log").write_bytes(encoder.seal(body, 2, blob=f"{DAY}.0002.log"))
    found, report = await read_back(dir_settings, [DAY, "2026-05-18"])
    assert len(found) == 4 and report.duplicates == 1
    [problem] = report.problems
    assert problem.blob == "2026-05-18.0000.log" and "not written for blob 2026-05-18.0000.log" in problem.message


async def test_garbage_between_frames_skipped(dir_settings: Settings) -> None:
    encoder = encoder_for(dir_settings)
    groups = [day_entries(3) for _ in range(3)]
    frames = [encoder.encode(lines(g), n, blob=OLD, date=DAY)[0] for n, g in enumerate(groups, start=1)]
    junk = b"\x00junk BLWF not a header" + bytes(100)
    data = frames[0] + junk + frames[1] + b"BLWF" + frames[2]
    (Path(dir_settings.require("storage")) / f"{DAY}.0000.log").write_bytes(data)
    found, report = await read_back(dir_settings, [DAY])
    assert_each_once(found, [e["id"] for g in groups for e in g])
    offsets = [p.offset for p in report.problems]
    assert offsets == [len(frames[0]), len(frames[0]) + len(junk) + len(frames[1])]
    assert report.frames == 3


async def test_empty_date(dir_settings: Settings) -> None:
    found, report = await read_back(dir_settings, ["2020-01-01"])
    assert found == [] and report.parts == 0 and report.ok


# -- tampering and truncation ----------------------------------------------------------------

async def write_frames(settings: Settings, count: int, per_frame: int) -> tuple[list[dict[str, Any]], str]:
    """`count` frames of `per_frame` entries through a LogWriter; the entries, and the writer's blob."""
    entries = day_entries(count * per_frame)
    async with LogWriter(settings.with_overrides(batch_size=per_frame, max_concurrent_writes=1)) as writer:
        for n in range(count):
            await writer.write_many(entries[n * per_frame:(n + 1) * per_frame], wait=True)
    return entries, writer_blob(settings.blob_prefix, DAY, writer.writer_id, 0)


def ids_in_frame(settings: Settings, data: bytes, offset: int, blob: str) -> set[str]:
    from blobwriter.codec import Decoder, iter_lines, parse_header

    header = parse_header(data, offset)
    plaintext = Decoder(settings.keys).decode(header, data[offset:offset + header.frame_length], blob=blob, date=DAY)
    return {orjson.loads(line)["id"] for line in iter_lines(plaintext)}


@pytest.mark.reliability
@pytest.mark.parametrize("where", ["ciphertext", "header"])
async def test_tampered_byte_in_blob_detected(make_settings: Callable[..., Settings], where: str) -> None:
    settings = make_settings()
    entries, name = await write_frames(settings, 9, 20)
    store = open_store(settings)
    try:
        data = bytearray(await blob_bytes(store, name))
    finally:
        await store.close()
    frames = frames_in(bytes(data))
    offset, header = frames[4]  # a frame in the middle of the blob
    assert not header.is_index
    lost = ids_in_frame(settings, bytes(data), offset, name)
    position = offset + (HEADER_SIZE + header.frame_length // 2 if where == "ciphertext" else 40)
    data[position] ^= 0x10
    await replace_blob(settings, name, bytes(data))

    found, report = await read_back(settings, [DAY])
    assert_each_once(found, [e["id"] for e in entries if e["id"] not in lost])
    assert len(lost) == 20
    assert [(p.blob, p.offset) for p in report.problems] == [(name, offset)]
    expected = "authentication failed" if where == "ciphertext" else "header checksum mismatch"
    assert expected in report.problems[0].message

    result = run_cli("verify", "--date", DAY, env=cli_env(settings))
    assert result.returncode == 1, result.stderr
    assert f"DAMAGED {name} at offset {offset}: {expected}" in result.stdout
    assert "FAILED" in result.stdout and "Traceback" not in result.stderr
    result = run_cli("verify", "--date", DAY, "--json", env=cli_env(settings))
    report_json = orjson.loads(result.stdout)
    assert result.returncode == 1
    assert report_json["ok"] is False and report_json["entries"] == len(entries) - 20
    assert [(p["blob"], p["offset"]) for p in report_json["problems"]] == [(name, offset)]


@pytest.mark.reliability
@pytest.mark.parametrize("keep", ["half a frame", "part of a header"])
async def test_truncated_tail_detected(tmp_path: Path, make_settings: Callable[..., Settings], keep: str) -> None:
    settings = make_settings(storage=str(tmp_path))
    entries, name = await write_frames(settings, 5, 10)
    path = tmp_path / name
    data = path.read_bytes()
    frames = frames_in(data)
    offset, header = [(o, h) for o, h in frames if not h.is_index][-1]  # the last data frame
    lost = ids_in_frame(settings, data, offset, name)
    cut = offset + (header.frame_length // 2 if keep == "half a frame" else HEADER_SIZE // 2)
    path.write_bytes(data[:cut])  # a crash mid-write: the rest of the file never made it

    found, report = await read_back(settings, [DAY])
    assert_each_once(found, [e["id"] for e in entries if e["id"] not in lost])
    assert [(p.blob, p.offset) for p in report.problems] == [(name, offset)]
    assert "truncated frame" in report.problems[0].message

    result = run_cli("verify", "--date", DAY, env=cli_env(settings))
    assert result.returncode == 1
    assert f"DAMAGED {name} at offset {offset}: truncated frame" in result.stdout
    result = run_cli("read", "--date", DAY, env=cli_env(settings))
    assert result.returncode == 1
    assert {orjson.loads(line)["id"] for line in result.stdout.splitlines()} == {e["id"] for e in entries} - lost
    assert "1 damaged frame(s) skipped" in result.stderr


# -- key rotation ----------------------------------------------------------------------------

async def test_key_rotation(make_settings: Callable[..., Settings], key: str) -> None:
    key_a, key_b = key, keygen()
    with_a = make_settings()
    with_b = make_settings(encryption_key=key_b, previous_keys=key_a)
    written_a, written_b = day_entries(30, key="a"), day_entries(30, key="b")
    async with LogWriter(with_a.with_overrides(batch_size=10)) as writer:
        await writer.write_many(written_a)
    async with LogWriter(with_b.with_overrides(batch_size=10)) as writer:
        await writer.write_many(written_b)

    found, report = await read_back(with_b, [DAY])  # the new key plus the previous one read everything
    assert_each_once(found, [e["id"] for e in written_a + written_b])
    assert report.ok

    only_b = make_settings(encryption_key=key_b)
    found, report = await read_back(only_b, [DAY])
    assert_each_once(found, [e["id"] for e in written_b])
    assert report.problems and {p.unknown_key for p in report.problems} == {key_id(parse_key(key_a))}
    assert not report.only_unknown_keys
    assert all(key_id(parse_key(key_a)).hex() in p.message for p in report.problems)
    assert report.problems[0].offset == 0  # A's frames come first in the blob

    result = run_cli("read", "--date", DAY, env=cli_env(with_b))  # BLOBWRITER_PREVIOUS_KEYS
    assert result.returncode == 0, result.stderr
    assert sorted(orjson.loads(x)["id"] for x in result.stdout.splitlines()) == sorted(
        e["id"] for e in written_a + written_b)
    result = run_cli("verify", "--date", DAY, env=cli_env(only_b))
    assert result.returncode == 1
    assert f"no configured key has key id {key_id(parse_key(key_a)).hex()}" in result.stdout

    wrong = make_settings(encryption_key=keygen())
    found, report = await read_back(wrong, [DAY])
    assert found == [] and report.only_unknown_keys
    assert {p.unknown_key for p in report.problems} == {key_id(parse_key(key_a)), key_id(parse_key(key_b))}


def test_reader_with_base64_of_previous_keys_only(tmp_path: Path) -> None:
    """A reader may be given old keys only (encryption_key unset)."""
    old = keygen()
    settings = Settings.from_values({"storage": str(tmp_path), "previous_keys": old})
    reader = Reader(open_store(settings), settings.keys)
    assert reader._decoder.key_ids == [key_id(parse_key(old))]
    assert base64.b64decode(old) == settings.keys[0].raw


# -- format versions and repeated ids ----------------------------------------------------------

V1_STORE = Path(__file__).resolve().parent / "data" / "v1-store"
V1_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


async def test_blobs_written_by_version_0_1_are_read_and_verified(make_settings: Callable[..., Settings]) -> None:
    """tests/data/v1-store: frame format version 1 in the shared layout, written by blobwriter 0.1."""
    settings = make_settings(storage=str(V1_STORE), encryption_key=V1_KEY, blob_prefix="gw/")
    days = ["2026-01-10", "2026-01-11"]
    found, report = await read_back(settings, days, verify=True)
    expected = [f"v1-{day}-{n}-{k}" for day in days for n in range(3) for k in range(4)]
    assert_each_once(found, expected)
    assert report.ok and report.frames == 6 and report.index_frames == 2 and report.unindexed == 0


async def test_id_field_drops_a_clients_retry(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    """A client that lost the answer posts the same entries again: with id_field they are read once."""
    settings = make_settings(storage=str(tmp_path), batch_size=5)
    first = day_entries(5)
    midnight = {**day_entries(1)[0], "id": "late", "timestamp": "2026-05-17T23:59:59Z"}
    async with LogWriter(settings) as writer:
        await writer.write_many([*first, midnight], wait=True)
        await writer.write_many([*first[:3], {**midnight, "timestamp": "2026-05-18T00:00:01Z"}], wait=True)
        await writer.write_many([{"no": "id", "timestamp": TS}] * 2, wait=True)
    found, report = await read_back(settings, [DAY, "2026-05-18"])
    assert len(found) == 12 and report.id_duplicates == 0  # without id_field: as stored
    found, report = await read_back(settings.with_overrides(id_field="id"), [DAY, "2026-05-18"])
    assert sorted(e.get("id", "-") for e in found) == sorted([*(e["id"] for e in first), "late", "-", "-"])
    assert report.id_duplicates == 4  # three repeats of the day, one across midnight
