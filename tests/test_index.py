"""Index frames: `verify` holds each frame's position against its writer's index.

Frames are authenticated one by one, so swapping two whole frames, or cutting one out, leaves
every frame valid. The index frames a writer appends (where each of its frames landed, and
its GCM tag) are what reveal it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from blobwriter.codec import Encoder, parse_header
from blobwriter.config import Settings
from blobwriter.errors import StoreError
from blobwriter.index import IndexBook, IndexRecord, PendingIndex
from blobwriter.layout import writer_blob
from blobwriter.reader import Reader
from blobwriter.store import DirectoryStore
from blobwriter.writer import LogWriter
from tests.conftest import ROOT, entry
from tests.support.independent_reader import check_index, read_date

DAY = "2026-11-24"


async def write_frames(root: Path, key: str, frames: int) -> Path:
    """Write `frames` frames of 3 entries each to a directory store; return the part's path."""
    settings = Settings.from_values({"storage": str(root), "encryption_key": key, "batch_size": 3,
                                     "max_concurrent_writes": 1})
    writer = LogWriter(settings)
    await writer.start()
    for _ in range(frames):
        await writer.write_many([entry(timestamp=f"{DAY}T12:00:00Z") for _ in range(3)], wait=True)
    await writer.stop()
    return root / writer_blob("", DAY, writer.writer_id, 0)


def frame_spans(data: bytes) -> list[tuple[int, int, bool]]:
    """(offset, length, is_index) of each frame in a part."""
    spans, offset = [], 0
    while offset < len(data):
        header = parse_header(data, offset)
        spans.append((offset, header.frame_length, header.is_index))
        offset += header.frame_length
    return spans


def verify(root: Path, key: str) -> tuple[int, dict[str, Any]]:
    env = {"BLOBWRITER_STORAGE": str(root), "BLOBWRITER_ENCRYPTION_KEY": key, "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "blobwriter", "verify", "--date", DAY, "--json"],
                            env=env, cwd=ROOT, capture_output=True, timeout=60)
    return result.returncode, orjson.loads(result.stdout)


async def test_stop_appends_an_index_that_vouches_for_every_frame(tmp_path: Path, key: str) -> None:
    part = await write_frames(tmp_path, key, 5)
    spans = frame_spans(part.read_bytes())
    assert [is_index for _, _, is_index in spans] == [False] * 5 + [True]
    code, report = verify(tmp_path, key)
    assert code == 0, report
    assert report["index_frames"] == 1 and report["unindexed_frames"] == 0
    assert report["entries"] == 15  # the index frame holds no log entries

    store = DirectoryStore(tmp_path)
    settings = Settings.from_values({"storage": str(tmp_path), "encryption_key": key})
    lines = [line async for line in Reader(store, settings.keys).entries([DAY])]
    assert len(lines) == 15


async def test_swapped_frames_are_flagged_at_both_offsets(tmp_path: Path, key: str) -> None:
    part = await write_frames(tmp_path, key, 4)
    data = part.read_bytes()
    (a, la, _), (b, lb, _) = frame_spans(data)[1:3]
    swapped = data[:a] + data[b:b + lb] + data[a:a + la] + data[b + lb:]
    part.write_bytes(swapped)
    code, report = verify(tmp_path, key)
    assert code == 1
    flagged = {(p["blob"], p["offset"]) for p in report["problems"]}
    assert (str(part.relative_to(tmp_path)), a) in flagged
    assert any("swapped" in p["message"] or "missing" in p["message"] for p in report["problems"])
    assert report["entries"] == 12  # every entry is still readable


async def test_a_frame_cut_out_is_flagged(tmp_path: Path, key: str) -> None:
    part = await write_frames(tmp_path, key, 4)
    data = part.read_bytes()
    offset, length, _ = frame_spans(data)[2]
    part.write_bytes(data[:offset] + data[offset + length:])
    code, report = verify(tmp_path, key)
    assert code == 1
    assert any(p["offset"] == offset for p in report["problems"])
    assert report["entries"] == 9


async def test_frames_after_the_last_index_are_counted_as_unindexed(tmp_path: Path, key: str) -> None:
    """A writer that crashed before its index frame: its data frame is there, unvouched for (not an error)."""
    await write_frames(tmp_path, key, 2)
    settings = Settings.from_values({"storage": str(tmp_path), "encryption_key": key})
    crashed = LogWriter(settings)
    await crashed.start()
    await crashed.write_many([entry(timestamp=f"{DAY}T12:00:00Z") for _ in range(3)], wait=True)
    # no stop(): no index frame for it, as after a crash (the writer object is simply dropped)
    code, report = verify(tmp_path, key)
    assert code == 0, report
    assert report["unindexed_frames"] == 1
    assert report["entries"] == 9


async def test_a_genuine_frame_moved_into_another_writers_blob_is_reported(tmp_path: Path, key: str) -> None:
    """Format version 2 authenticates the full blob name: a frame copied between blobs no longer opens."""
    part = await write_frames(tmp_path, key, 2)
    other = await write_frames(tmp_path / "other", key, 1)
    offset, length, _ = frame_spans(other.read_bytes())[0]
    data = part.read_bytes()
    part.write_bytes(data + other.read_bytes()[offset:offset + length])
    code, report = verify(tmp_path, key)
    assert code == 1
    [problem] = report["problems"]
    assert problem["offset"] == len(data) and "not written for blob" in problem["message"]


def write_with_index_every(monkeypatch: Any, records: int) -> None:
    monkeypatch.setattr("blobwriter.index.INDEX_MAX_RECORDS", records)


def index_spans(part: Path) -> list[tuple[int, int]]:
    return [(offset, length) for offset, length, is_index in frame_spans(part.read_bytes()) if is_index]


async def test_index_frames_form_a_chain_and_a_removed_one_is_reported(tmp_path: Path, key: str,
                                                                         monkeypatch: Any) -> None:
    write_with_index_every(monkeypatch, 2)  # an index frame every two data frames
    part = await write_frames(tmp_path, key, 6)
    spans = index_spans(part)
    assert len(spans) == 4  # three on the way, one final at stop
    code, report = verify(tmp_path, key)
    assert code == 0 and report["index_frames"] == 4 and report["open_chains"] == 0, report

    offset, length = spans[1]  # cut the second index frame out: every data frame is still in place
    data = part.read_bytes()
    part.write_bytes(data[:offset] + data[offset + length:])
    code, report = verify(tmp_path, key)
    assert code == 1
    messages = [p["message"] for p in report["problems"]]
    assert any("index frame(s) 2 of writer" in m and "missing" in m for m in messages), messages
    assert report["entries"] == 18


async def test_a_cut_tail_leaves_an_open_chain(tmp_path: Path, key: str, monkeypatch: Any) -> None:
    """Without the final index frame (a crash, or the tail cut together with it), the chain stays open:
    reported, not an error, since a crash looks the same; what was cut before a surviving index is."""
    write_with_index_every(monkeypatch, 2)
    part = await write_frames(tmp_path, key, 6)
    final_offset, _ = index_spans(part)[-1]
    data = part.read_bytes()
    part.write_bytes(data[:final_offset])
    code, report = verify(tmp_path, key)
    assert code == 0 and report["open_chains"] == 1 and report["entries"] == 18, report


async def test_a_cut_tail_that_takes_the_only_index_frame_leaves_the_writer_open(tmp_path: Path, key: str) -> None:
    """A writer of fewer than 1,000 frames in under 30 s has one index frame, its final one; cut with the
    tail, nothing of the writer's index is left. verify said "0 writers without a final index" then, next
    to the frames not yet indexed (QA round 9, security F4); the writer is open, as with a longer chain."""
    part = await write_frames(tmp_path, key, 6)
    spans = frame_spans(part.read_bytes())
    assert [is_index for _, _, is_index in spans] == [False] * 6 + [True]
    part.write_bytes(part.read_bytes()[:spans[4][0]])  # frames 5, 6 and the index frame cut
    code, report = verify(tmp_path, key)
    assert code == 0 and report["problems"] == [], report
    assert report["index_frames"] == 0 and report["unindexed_frames"] == 4 and report["entries"] == 12, report
    assert report["open_chains"] == 1, report


async def test_an_index_record_that_is_not_one_is_reported_not_a_crash(tmp_path: Path, key: str) -> None:
    part = await write_frames(tmp_path, key, 1)
    settings = Settings.from_values({"storage": str(tmp_path), "encryption_key": key})
    encoder = Encoder(settings.encryption_key)  # type: ignore[arg-type]
    name = str(part.relative_to(tmp_path))
    body = encoder.body([b'{"blob": "x", "offset": 0}'], 99, date=DAY, index=True)  # no sequence, attempt, tag
    data = part.read_bytes()
    part.write_bytes(data + encoder.seal(body, blob=name))
    code, report = verify(tmp_path, key)
    assert code == 1
    assert any("not an index record" in p["message"] and p["offset"] == len(data) for p in report["problems"])


class LandsThenTimesOut(DirectoryStore):
    """The first append lands, then fails as a timed-out request would: the writer retries it."""

    failed = False

    async def append(self, name: str, data: bytes) -> Any:
        landed = await super().append(name, data)
        if not self.failed:
            self.failed = True
            raise StoreError("answer lost after the append landed")  # a store raises only StoreError
        return landed


async def test_a_retried_duplicate_is_dropped_and_not_counted_unindexed(tmp_path: Path, key: str) -> None:
    settings = Settings.from_values({"storage": str(tmp_path), "encryption_key": key, "retry_backoff_max": 0.1})
    writer = LogWriter(settings, store=LandsThenTimesOut(tmp_path))
    await writer.start()
    await writer.write_many([entry(timestamp=f"{DAY}T12:00:00Z") for _ in range(3)], wait=True)
    await writer.stop()
    assert writer.metrics.retries == 1
    code, report = verify(tmp_path, key)
    assert code == 0, report
    assert report["duplicates_dropped"] == 1 and report["entries"] == 3
    assert report["unindexed_frames"] == 0  # the first copy's twin is in the index


async def test_a_past_day_left_idle_is_closed_then_and_its_writers_stop_appends_nothing_to_it(
        tmp_path: Path, key: str, monkeypatch: Any) -> None:
    """A writer that lives on for days (a Functions instance, `serve`) appended a final index frame at its
    stop to every date it had ever written (QA round 13): days after the day was exported, so the
    scheduled export exported the whole day again (its blobs grew), and into a blob a retention rule
    had deleted, making it again. A past date with nothing new to index at a periodic index time is
    closed then; a late entry opens its chain again, and it closes the same way. The chains are
    read by the independent reader (docs/FORMAT.md), and `verify` passes."""
    monkeypatch.setattr("blobwriter.writer.INDEX_INTERVAL", 0.05)
    settings = Settings.from_values({"storage": str(tmp_path), "encryption_key": key, "batch_size": 3,
                                     "batch_timeout": 0.1})

    def links() -> list[tuple[int, bool]] | None:
        """The writer's chain of DAY as (number, final), or None while an append is half-written."""
        report = check_index(read_date(tmp_path, DAY, [key]))
        if not report.ok:
            return None
        return [(link.number, link.final) for chain in report.chains.values() for link, _ in chain.links]

    async def until(chain: list[tuple[int, bool]]) -> None:
        for _ in range(600):  # a liveness bound, 30 s, not a timing threshold
            if links() == chain:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the chain is {links()}, never {chain}")

    async with LogWriter(settings) as writer:
        part = tmp_path / writer_blob("", DAY, writer.writer_id, 0)
        await writer.write_many([entry(timestamp=f"{DAY}T12:00:00Z") for _ in range(3)], wait=True)
        await until([(1, False), (2, True)])  # its records, then, a period later with nothing new, closed
        await writer.write(entry(timestamp=f"{DAY}T23:59:59Z"), wait=True)  # late: the chain goes on
        await until([(1, False), (2, True), (3, False), (4, True)])
        code, report = verify(tmp_path, key)
        assert code == 0 and report["open_chains"] == 0 and report["entries"] == 4, report
        part.unlink()  # the day's blob deleted by a retention rule
    assert not part.exists(), "the stop appended to a day the writer had closed"


def test_the_periodic_index_closes_only_past_dates_with_nothing_new() -> None:
    """IndexBook.take's rule, step by step: with `close_before` (the writer's UTC date), a date before it
    whose chain is open and that had no records since the last call gets a final frame; a date with
    records, or not past, does not; a closed date is not closed again, and the stop closes the rest."""
    book, record = IndexBook(), IndexRecord("b", 0, 100, 1, 0, "00" * 16)

    def taken(pending: list[PendingIndex]) -> list[tuple[str, int, bool, int]]:
        links = [orjson.loads(p.lines[0])["chain"] for p in pending]
        return [(p.date[-2:], link["number"], link["final"], len(p.lines) - 1) for p, link in zip(pending, links,
                                                                                               strict=True)]

    for day in ("2026-11-23", "2026-11-24", "2026-11-25"):
        book.record(day, record)
    today = "2026-11-25"
    assert taken(book.take(close_before=today)) == [("23", 1, False, 1), ("24", 1, False, 1), ("25", 1, False, 1)]
    book.record("2026-11-24", record)
    assert taken(book.take(close_before=today)) == [("23", 2, True, 0), ("24", 2, False, 1)]
    assert taken(book.take(close_before=today)) == [("24", 3, True, 0)]
    assert book.take(close_before=today) == []
    book.record("2026-11-23", record)  # a late frame for a closed date: its chain goes on, and closes again
    assert taken(book.take(close_before=today)) == [("23", 3, False, 1)]
    assert taken(book.take()) == []  # without close_before (as before): records only
    assert taken(book.take(final=True)) == [("23", 4, True, 0), ("25", 2, True, 0)]  # the stop: open chains only


def test_a_past_date_indexed_between_periodic_calls_is_not_closed_as_idle() -> None:
    """A backfill of a past date fills INDEX_MAX_RECORDS and has its records taken between two periodic
    calls (take(date)): nothing of it is waiting at the next one, yet it was not idle, so it stays open."""
    book, record = IndexBook(), IndexRecord("b", 0, 100, 1, 0, "00" * 16)
    book.record("2026-11-23", record)
    assert len(book.take("2026-11-23")) == 1  # the INDEX_MAX_RECORDS path
    assert book.take(close_before="2026-11-25") == []  # frames landed since the last periodic call
    [closing] = book.take(close_before="2026-11-25")  # none since: idle, closed
    link = orjson.loads(closing.lines[0])["chain"]
    assert (closing.date, link["number"], link["frames"], link["final"]) == ("2026-11-23", 2, 1, True)
