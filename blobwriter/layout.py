"""Blob names: where each writer's frames go, and how a reader finds every blob of a date.

Each writer appends to blobs of its own, one per UTC date, rolled into numbered parts:

    {blob_prefix}{YYYY-MM-DD}/{writer id, 32 hex digits}.{part:04d}.log

so the request rate on any one blob is one writer's, however many instances run. Version 0.1
wrote one shared blob per date, `{blob_prefix}{YYYY-MM-DD}.{part:04d}.log`; those are still
read. Both are found with one listing of the prefix `{blob_prefix}{YYYY-MM-DD}` (docs/FORMAT.md).
"""

from __future__ import annotations

import re
from typing import NamedTuple

PART_DIGITS = 4
SUFFIX = ".log"


def writer_blob(prefix: str, date: str, writer_id: str, part: int) -> str:
    """The name of part `part` of one writer's blob for `date` (writer_id in hex)."""
    return f"{prefix}{date}/{writer_id}.{part:0{PART_DIGITS}d}{SUFFIX}"


def shared_blob(prefix: str, date: str, part: int) -> str:
    """The name version 0.1 gave part `part` of the one blob every writer shared for `date`."""
    return f"{prefix}{date}.{part:0{PART_DIGITS}d}{SUFFIX}"


def listing_prefix(prefix: str, date: str) -> str:
    """The name prefix whose listing finds every blob of `date`, in both layouts."""
    return f"{prefix}{date}"


class BlobName(NamedTuple):
    """A parsed blob name: its writer (empty for the shared layout of version 0.1) and part."""

    writer: str
    part: int


def _pattern(prefix: str, date: str) -> re.Pattern[str]:
    head = re.escape(prefix) + re.escape(date)
    return re.compile(rf"^{head}(?:/(?P<writer>[0-9a-f]{{32}}))?\.(?P<part>\d{{{PART_DIGITS},}}){re.escape(SUFFIX)}$")


def parse(prefix: str, date: str, name: str) -> BlobName | None:
    """The writer and part of a blob of `date`, or None if `name` is not one."""
    m = _pattern(prefix, date).match(name)
    return BlobName(m.group("writer") or "", int(m.group("part"))) if m else None


def sort_parts(names: list[str], prefix: str, date: str) -> list[str]:
    """Keep the names that are blobs of `date`, in reading order: the shared blob's parts of version
    0.1 first, then each writer's parts, writers by id, parts by number."""
    pattern = _pattern(prefix, date)
    keyed = []
    for name in names:
        m = pattern.match(name)
        if m:
            keyed.append(((m.group("writer") or "", int(m.group("part"))), name))
    return [name for _, name in sorted(keyed)]
