"""Blob names (blobwriter/layout.py): each writer's blobs, version 0.1's shared blobs, reading order."""

from __future__ import annotations

from blobwriter.layout import listing_prefix, parse, shared_blob, sort_parts, writer_blob

DAY = "2026-05-17"
A, B = "0a" * 16, "f0" * 16


def test_writer_blob_names() -> None:
    assert writer_blob("", DAY, A, 0) == f"2026-05-17/{A}.0000.log"
    assert writer_blob("gateway/", DAY, A, 12) == f"gateway/2026-05-17/{A}.0012.log"
    assert writer_blob("", DAY, A, 12345) == f"2026-05-17/{A}.12345.log"
    assert parse("gateway/", DAY, f"gateway/2026-05-17/{A}.0012.log") == (A, 12)


def test_version_0_1_names_are_still_recognised() -> None:
    assert shared_blob("gateway/", DAY, 3) == "gateway/2026-05-17.0003.log"
    assert parse("gateway/", DAY, "gateway/2026-05-17.0003.log") == ("", 3)


def test_one_listing_prefix_finds_both_layouts() -> None:
    prefix = listing_prefix("g/", DAY)
    assert writer_blob("g/", DAY, A, 0).startswith(prefix) and shared_blob("g/", DAY, 0).startswith(prefix)
    assert not writer_blob("g/", "2026-05-18", A, 0).startswith(prefix)


def test_reading_order_and_what_is_not_a_blob_of_the_date() -> None:
    names = [
        writer_blob("g/", DAY, B, 0), writer_blob("g/", DAY, A, 10), writer_blob("g/", DAY, A, 2),
        "g/2026-05-17.0010.log", "g/2026-05-17.0002.log", "g/2026-05-17.10000.log", "g/2026-05-17.9999.log",
        # not blobs of the date:
        "g/2026-05-18.0000.log", "2026-05-17.0000.log", "g/2026-05-17.0001.log.tmp", "g/2026-05-17.1.log",
        "g/x/2026-05-17.0000.log", f"g/2026-05-17/{A}.1.log", "g/2026-05-17/ABC.0000.log",
        f"g/2026-05-17/{A[:-1]}.0000.log", f"g/2026-05-17/sub/{A}.0000.log", writer_blob("g/", "2026-05-18", A, 0),
    ]
    assert sort_parts(names, "g/", DAY) == [
        "g/2026-05-17.0002.log", "g/2026-05-17.0010.log", "g/2026-05-17.9999.log", "g/2026-05-17.10000.log",
        writer_blob("g/", DAY, A, 2), writer_blob("g/", DAY, A, 10), writer_blob("g/", DAY, B, 0),
    ]
