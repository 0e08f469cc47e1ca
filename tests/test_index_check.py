"""verify's index check holds only what is not matched yet: its memory does not grow with the day."""

from __future__ import annotations

import random
from pathlib import Path

from blobwriter.config import Settings
from blobwriter.index import INDEX_MAX_RECORDS, IndexRecord
from blobwriter.index_check import IndexCheck, SequenceRanges
from blobwriter.reader import Reader
from blobwriter.store import DirectoryStore
from blobwriter.writer import LogWriter
from tests.conftest import entry

DAY = "2026-11-24"
FRAMES = 20_000


async def test_a_day_of_20000_frames_is_verified_holding_fewer_than_2000(tmp_path: Path, key: str) -> None:
    settings = Settings.from_values({"storage": str(tmp_path), "encryption_key": key, "batch_size": 1,
                                     "max_queue_size": FRAMES})
    async with LogWriter(settings) as writer:  # one entry a frame: 20,000 frames, an index frame every 1,000
        for _ in range(FRAMES // 500):
            await writer.write_many([entry(timestamp=f"{DAY}T12:00:00Z") for _n in range(500)], wait=True)
    async with Reader(DirectoryStore(tmp_path), settings.keys, check_index=True) as reader:
        assert [line async for line in reader.entries([DAY])] != []
    report, check = reader.report, reader.index_check
    assert report.ok, report.problems[:3]
    assert (report.frames, report.entries, report.unindexed, report.open_chains) == (FRAMES, FRAMES, 0, 0)
    assert report.index_frames >= FRAMES // INDEX_MAX_RECORDS
    assert check is not None
    assert INDEX_MAX_RECORDS <= check.peak < 2_000  # a thousand frames wait for the index frame that records them
    assert check.held == 0


def record(blob: str, offset: int, sequence: int, tag: str = "t") -> IndexRecord:
    return IndexRecord(blob, offset, 10, sequence, 0, tag)


def test_frames_and_records_meet_in_either_order() -> None:
    check = IndexCheck()
    check.landed(("b", 0), (b"w", 1, 0, "t"))  # frame first, then its record
    check.claim(b"w", record("b", 0, 1))
    check.claim(b"w", record("b", 100, 2))  # record first (an index frame in an earlier part), then the frame
    assert check.held == 1
    check.landed(("b", 100), (b"w", 2, 0, "t"))
    assert check.held == 0 and check.peak == 1
    problems: list[tuple[str, int, str]] = []
    assert check.finish(set(), lambda *p: problems.append(p)) == (0, 0)
    assert problems == []


def test_what_is_left_at_the_end_is_reported_in_place_order() -> None:
    check = IndexCheck()
    check.claim(b"w", record("b", 300, 3))  # its frame never comes: missing
    check.landed(("b", 200), (b"v", 9, 0, "t"))  # another writer's frame where the index puts w's sequence 2
    check.claim(b"w", record("b", 200, 2))
    check.landed(("b", 500), (b"w", 5, 0, "t"))  # no record yet: not yet indexed
    check.landed(("b", 600), (b"w", 3, 1, "t"))  # a retried copy of sequence 3, whose record names the other
    check.claim(b"w", record("b", 900, 4))  # a record for a damaged place: not reported again
    problems: list[tuple[str, int, str]] = []
    unindexed, open_chains = check.finish({("b", 900)}, lambda *p: problems.append(p))
    assert (unindexed, open_chains) == (1, 0)
    assert [(blob, offset) for blob, offset, _ in problems] == [("b", 200), ("b", 300)]
    assert "frame out of place: found writer 76 sequence 9" in problems[0][2]
    assert "indexed frame missing: writer 77 sequence 3" in problems[1][2]


def test_sequence_ranges_match_a_set() -> None:
    rng = random.Random(7)
    ranges, model = SequenceRanges(), set()
    for _ in range(5_000):
        writer, sequence = rng.choice([b"a", b"b"]), rng.randint(0, 800)
        assert ranges.add(writer, sequence) == ((writer, sequence) not in model)
        model.add((writer, sequence))
    assert all(((w, s) in ranges) == ((w, s) in model) for w in (b"a", b"b", b"c") for s in range(-1, 802))
    assert len(ranges) < len(model)
