"""Index frames: each writer's record of where its frames landed, so `verify` can tell a frame
swapped, moved or removed, and a removed index frame or tail.

An index frame is an ordinary frame (flag bit 1) whose lines are JSON objects. In format version
2 its first line is a `ChainLink`: the frame's number in its writer's chain for that date, the
SHA-256 of the previous index frame's plaintext, the running count of data frames indexed, and
whether it is the writer's last for the date. The other lines are `IndexRecord`s, one per data
frame. The writer keeps what is not yet indexed in an `IndexBook` (plain data: it never appends
anything itself) and turns it into an index frame per date every INDEX_INTERVAL seconds, every
INDEX_MAX_RECORDS frames, and at stop (the final one); a past date it has stopped writing to is
closed early, by the periodic call (`IndexBook.take`). The reader decodes both (docs/FORMAT.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson

from .codec import iter_lines, plaintext_of
from .errors import FrameError

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


@dataclass(frozen=True, slots=True)
class ChainLink:
    """An index frame's place in its writer's chain for one date."""

    number: int  # 1, 2, ... per writer and date
    previous: str  # hex SHA-256 of the previous index frame's plaintext ("" for the first)
    frames: int  # data frames indexed by this and all earlier index frames of the chain
    final: bool  # nothing more to index for the date: at stop, or a past date left idle (IndexBook.take)

    def to_line(self) -> bytes:
        return orjson.dumps({"chain": {"number": self.number, "previous": self.previous, "frames": self.frames,
                                       "final": self.final}})


def chain_hash(plaintext: bytes) -> str:
    """What the next index frame's `previous` holds: SHA-256 of this one's plaintext, hex."""
    return hashlib.sha256(plaintext).hexdigest()


def read_index(plaintext: bytes) -> tuple[ChainLink | None, list[IndexRecord]]:
    """The chain link (None in version 1 index frames) and records of a decoded index frame;
    FrameError if a line is not what the format says."""
    link: ChainLink | None = None
    records = []
    for number, line in enumerate(iter_lines(plaintext), start=1):
        try:
            r = orjson.loads(line)
            if number == 1 and "chain" in r:
                c = r["chain"]
                link = ChainLink(int(c["number"]), str(c["previous"]), int(c["frames"]), bool(c["final"]))
            else:
                records.append(IndexRecord(str(r["blob"]), int(r["offset"]), int(r.get("length", 0)),
                                           int(r["sequence"]), int(r["attempt"]), str(r["tag"])))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise FrameError(
                f"index frame line {number} is not an index record ({type(exc).__name__}: {exc})") from None
    return link, records


@dataclass(frozen=True, slots=True)
class PendingIndex:
    """The lines one index frame will carry (its chain link first), and the date it is for."""

    date: str
    lines: list[bytes]


class IndexBook:
    """Records of landed frames not yet covered by an index frame, and each date's chain so far."""

    def __init__(self) -> None:
        self._records: dict[str, list[bytes]] = {}  # date -> record lines waiting
        # date -> (last number, its hash, frames indexed, whether it was final: the chain closed)
        self._chains: dict[str, tuple[int, str, int, bool]] = {}
        self._recorded: set[str] = set()  # dates with a record since the last periodic take (close_before)

    def record(self, date: str, record: IndexRecord) -> bool:
        """Note where a frame landed; True once its date has INDEX_MAX_RECORDS waiting (write them)."""
        lines = self._records.setdefault(date, [])
        lines.append(record.to_line())
        self._recorded.add(date)
        return len(lines) >= INDEX_MAX_RECORDS

    def take(self, date: str | None = None, *, final: bool = False,
             close_before: str | None = None) -> list[PendingIndex]:
        """Remove the waiting records of one date (or of every date) as index frames to write.

        With `final` (at stop), every date whose chain is open gets one, records or not: its chain's last.
        With `close_before` (the periodic call: the writer's UTC date), so does each earlier date whose
        chain is open and that had no record since the last such call: a day the writer no longer writes to
        is closed then, not at its stop, days later, when the append would grow that day's blobs after
        they were exported (the scheduled export exports a day again when they grow) or make again a
        blob that a retention rule deleted. A frame landing for a closed date after all opens its chain
        again: its next index frame follows the final one, and the chain's last frame is final at the end.
        """
        if date is not None:
            plan = {date: final}
        else:
            plan = dict.fromkeys(self._records, final)
            open_chains = [day for day, (*_, closed) in self._chains.items() if not closed and day not in plan]
            if final:
                plan.update(dict.fromkeys(open_chains, True))
            elif close_before is not None:
                idle = (day for day in open_chains if day < close_before and day not in self._recorded)
                plan.update(dict.fromkeys(idle, True))
                self._recorded.clear()
        taken = []
        for day in sorted(plan):
            closing = plan[day]
            records = self._records.pop(day, [])
            if not records and not closing:
                continue
            number, previous, frames, _ = self._chains.get(day, (0, "", 0, False))
            link = ChainLink(number + 1, previous, frames + len(records), closing)
            lines = [link.to_line(), *records]
            self._chains[day] = (link.number, chain_hash(plaintext_of(lines)), link.frames, closing)
            taken.append(PendingIndex(day, lines))
        return taken

    def __len__(self) -> int:
        return sum(len(lines) for lines in self._records.values())
