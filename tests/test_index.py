"""Index frames: `verify` holds each frame's position against its writer's index.

Frames are authenticated one by one, so swapping two whole frames, or cutting one out, leaves
every frame valid. The index frames a writer appends (where each of its frames landed, and
its GCM tag) are what reveal it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from blobwriter.codec import parse_header
from blobwriter.config import Settings
from blobwriter.errors import StoreError
from blobwriter.layout import writer_blob
from blobwriter.reader import Reader
from blobwriter.store import DirectoryStore
from blobwriter.writer import LogWriter
from tests.conftest import ROOT, entry

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
    part = await write_frames(tmp_path, key, 2)
    first = part.read_bytes()
    # A writer that crashed before its index frame: its data frame is there, unvouched for.
    other = await write_frames(tmp_path / "other", key, 1)
    extra_offset, extra_length, _ = frame_spans(other.read_bytes())[0]
    part.write_bytes(first + other.read_bytes()[extra_offset:extra_offset + extra_length])
    code, report = verify(tmp_path, key)
    assert code == 0, report
    assert report["unindexed_frames"] == 1
    assert report["entries"] == 9


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
