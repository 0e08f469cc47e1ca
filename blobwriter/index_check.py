"""`verify`'s check of one date's frames against its writers' index frames, in bounded memory.

Every data frame that decrypted (retried copies included) is held against the records of the
index frames: the frame at a record's (blob, offset) must have the index frame's writer id and the
record's sequence, attempt and tag (docs/FORMAT.md, "Reading"). A writer appends an index frame
after the frames it records (at most INDEX_MAX_RECORDS of them, or what landed within
INDEX_INTERVAL), so the check is streaming: a frame and its record are dropped as soon as they
meet, and only frames not yet claimed by a record, and records whose frame was not seen yet, are
held; the rest is settled at the end of the date. The sequences claimed are kept as ranges per
writer (to tell a retried copy, whose twin is indexed, from a frame not yet indexed).

Chains: each index frame's link (about one per thousand data frames) is kept until the end of the
date, where each writer's chain is checked in number order.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable

from .index import ChainLink, IndexRecord

Landed = tuple[bytes, int, int, str]  # writer id, sequence, attempt, GCM tag (hex)
Place = tuple[str, int]  # blob, offset
Report = Callable[[str, int, str], None]  # blob, offset, message


class SequenceRanges:
    """Sets of sequence numbers per writer, kept as sorted disjoint ranges: small however many."""

    def __init__(self) -> None:
        self.ranges: dict[bytes, tuple[list[int], list[int]]] = {}

    def __contains__(self, item: tuple[bytes, int]) -> bool:
        writer, sequence = item
        starts, ends = self.ranges.get(writer, ([], []))
        i = bisect_right(starts, sequence) - 1
        return i >= 0 and sequence <= ends[i]

    def add(self, writer: bytes, sequence: int) -> bool:
        """Add one; False if it was there already."""
        starts, ends = self.ranges.setdefault(writer, ([], []))
        i = bisect_right(starts, sequence) - 1
        if i >= 0 and sequence <= ends[i]:
            return False
        joins_left = i >= 0 and ends[i] == sequence - 1
        joins_right = i + 1 < len(starts) and starts[i + 1] == sequence + 1
        if joins_left and joins_right:
            ends[i] = ends[i + 1]
            del starts[i + 1], ends[i + 1]
        elif joins_left:
            ends[i] = sequence
        elif joins_right:
            starts[i + 1] = sequence
        else:
            starts.insert(i + 1, sequence)
            ends.insert(i + 1, sequence)
        return True

    def __len__(self) -> int:
        """How many ranges are held."""
        return sum(len(starts) for starts, _ in self.ranges.values())


class IndexCheck:
    """One date's frames and index records, matched as they are read."""

    def __init__(self) -> None:
        self._unclaimed: dict[Place, Landed] = {}  # data frames no record has named yet
        self._unseen: dict[Place, Landed] = {}  # records whose place no frame has been read at yet
        self._wrong: dict[Place, tuple[Landed, Landed]] = {}  # record, frame found there: they differ
        self._claimed = SequenceRanges()  # (writer, sequence) of every record
        self._chains: dict[bytes, list[tuple[ChainLink, str, int, int, str]]] = {}
        self.peak = 0  # the most frames and records held at once (unclaimed + unseen + wrong)

    @property
    def held(self) -> int:
        return len(self._unclaimed) + len(self._unseen) + len(self._wrong)

    def landed(self, place: Place, found: Landed) -> None:
        """A data frame that decrypted, at `place`."""
        claim = self._unseen.pop(place, None)
        if claim is None:
            self._unclaimed[place] = found
            self.peak = max(self.peak, self.held)
        elif claim != found:
            self._wrong[place] = (claim, found)

    def claim(self, writer: bytes, record: IndexRecord) -> None:
        """A record of an index frame of `writer`; a later record for the same place replaces an earlier one."""
        place, claim = (record.blob, record.offset), (writer, record.sequence, record.attempt, record.tag)
        self._claimed.add(writer, record.sequence)
        wrong = self._wrong.pop(place, None)
        found = wrong[1] if wrong is not None else self._unclaimed.pop(place, None)
        if found is None:
            self._unseen[place] = claim
            self.peak = max(self.peak, self.held)
        elif found != claim:
            self._wrong[place] = (claim, found)

    def link(self, writer: bytes, link: ChainLink, digest: str, records: int, offset: int, name: str) -> None:
        """An index frame's chain link (format version 2), with the hash of its plaintext."""
        self._chains.setdefault(writer, []).append((link, digest, records, offset, name))

    def finish(self, damaged: set[Place], report: Report) -> tuple[int, int]:
        """Report what is out of place (in blob and offset order; damaged places excepted) and each
        broken chain; return (data frames not yet indexed, open chains: writers whose last index frame
        of the date is not final, or who have frames of the date and no index frame)."""
        unsettled: list[tuple[Place, Landed, Landed | None]] = [(p, c, None) for p, c in self._unseen.items()]
        unsettled += [(place, claim, found) for place, (claim, found) in self._wrong.items()]
        for (blob, offset), (writer, sequence, attempt, _), found in sorted(unsettled, key=lambda u: u[0]):
            if (blob, offset) in damaged:
                continue
            expected = f"writer {writer.hex()} sequence {sequence} attempt {attempt}"
            if found is None:
                report(blob, offset, f"indexed frame missing: {expected} was appended here (removed, moved or cut)")
            else:
                report(blob, offset, f"frame out of place: found writer {found[0].hex()} sequence {found[1]} "
                                     f"attempt {found[2]} where the index puts {expected} (frames swapped or moved)")
        # A retried append's other copy is not in any index: its twin at the indexed offset is.
        unindexed = [writer for writer, sequence, _, _ in self._unclaimed.values()
                     if (writer, sequence) not in self._claimed]
        # A writer with frames of the date and no index frame at all (a short-lived writer's only one is its
        # final one, so a cut tail takes it along) is open too, like one whose last index frame is not final.
        unindexed_only = set(unindexed) - self._chains.keys() - self._claimed.ranges.keys()
        return len(unindexed), self._check_chains(report) + len(unindexed_only)

    def _check_chains(self, report: Report) -> int:
        """Each writer's index frames of a date must be numbered 1, 2, ... with no gap, each naming the
        previous one's hash and counting every data frame indexed so far; the number of open chains."""
        open_chains = 0
        for writer, found in self._chains.items():
            found.sort(key=lambda item: item[0].number)
            expected, previous, frames = 1, "", 0
            for link, digest, records, offset, name in found:
                if link.number != expected:
                    missing = f"{expected}" if link.number == expected + 1 else f"{expected} to {link.number - 1}"
                    report(name, offset, f"index frame(s) {missing} of writer {writer.hex()} missing before "
                                         f"this one (removed, or cut with the frames they indexed)")
                    frames = link.frames  # what the missing ones indexed is unknown: count on from here
                else:
                    if link.previous != previous:
                        report(name, offset, f"index chain of writer {writer.hex()} broken at index frame "
                                             f"{link.number}: the previous one is not the one it names")
                    frames += records
                    if link.frames != frames:
                        report(name, offset, f"index frame {link.number} of writer {writer.hex()} counts "
                                             f"{link.frames} frames indexed, its chain holds {frames}")
                        frames = link.frames
                expected, previous = link.number + 1, digest
            if not found[-1][0].final:
                open_chains += 1
        return open_chains
