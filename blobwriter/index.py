"""Index frames: each writer's record of where its frames landed, so `verify` can tell a frame
swapped, moved or removed.

An index frame is an ordinary frame (flag bit 1) whose lines are `IndexRecord`s. The writer keeps
the records of frames not yet indexed in an `IndexBook` (plain data: it never appends anything
itself) and turns them into an index frame per part every INDEX_INTERVAL seconds, every
INDEX_MAX_RECORDS frames, and at stop. The reader decodes the records back (docs/FORMAT.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import orjson

from .codec import iter_lines

INDEX_INTERVAL = 30.0  # seconds between a writer's index frames
INDEX_MAX_RECORDS = 1000  # records in one index frame at most


@dataclass(frozen=True, slots=True)
class IndexRecord:
    """Where one data frame landed: blob name and offset, its length, identity and GCM tag (hex)."""

    blob: str
    offset: int
    length: int
    sequence: int
    attempt: int
    tag: str

    def to_line(self) -> bytes:
        return orjson.dumps({"blob": self.blob, "offset": self.offset, "length": self.length,
                             "sequence": self.sequence, "attempt": self.attempt, "tag": self.tag})


def read_records(plaintext: bytes) -> Iterator[IndexRecord]:
    """The records of a decoded index frame."""
    for line in iter_lines(plaintext):
        r = orjson.loads(line)
        yield IndexRecord(r["blob"], r["offset"], r.get("length", 0), r["sequence"], r["attempt"], r["tag"])


@dataclass(frozen=True, slots=True)
class PendingIndex:
    """The records one index frame will carry, and the date of the part they describe."""

    part: str
    date: str
    lines: list[bytes]


class IndexBook:
    """Records of landed frames not yet covered by an index frame, per part."""

    def __init__(self) -> None:
        self._parts: dict[str, tuple[str, list[bytes]]] = {}  # part name -> (date, record lines)

    def record(self, date: str, record: IndexRecord) -> bool:
        """Note where a frame landed; True once its part has INDEX_MAX_RECORDS waiting (write them)."""
        _, lines = self._parts.setdefault(record.blob, (date, []))
        lines.append(record.to_line())
        return len(lines) >= INDEX_MAX_RECORDS

    def take(self, part: str | None = None) -> list[PendingIndex]:
        """Remove and return the waiting records of one part (or of every part)."""
        names = [part] if part is not None else list(self._parts)
        taken = []
        for name in names:
            if name in self._parts:
                date, lines = self._parts.pop(name)
                taken.append(PendingIndex(name, date, lines))
        return taken

    def __len__(self) -> int:
        return sum(len(lines) for _, lines in self._parts.values())
