"""Read frames back: stream each date's blobs, decrypt, drop duplicates, report damage.

A corrupt, truncated or unauthenticated frame is reported with its blob and offset and
never stops the reader: it scans on to the next valid frame header. Memory stays bounded by
one frame plus one download range, whatever the size of the day (verify also holds each
indexed frame's place; `id_field` holds each entry's id digest).
"""

from __future__ import annotations

import enum
import hashlib
from bisect import bisect_right
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import date as Date
from datetime import timedelta

import orjson

from .codec import Damage, Decoder, FrameHeader, FrameScanner, iter_lines
from .errors import FrameError, UnknownKeyError
from .index import ChainLink, chain_hash, read_index
from .keys import SecretKey
from .store import Store


@dataclass(frozen=True)
class Problem:
    """One damaged stretch of a blob."""

    blob: str
    offset: int
    message: str
    unknown_key: bytes | None = None

    def __str__(self) -> str:
        return f"{self.blob} at offset {self.offset}: {self.message}"


@dataclass
class ReadReport:
    """What a read or verify pass saw."""

    parts: int = 0
    frames: int = 0
    entries: int = 0
    duplicates: int = 0
    bytes: int = 0
    index_frames: int = 0
    unindexed: int = 0  # data frames no index frame vouches for yet (the newest ones), when checked
    open_chains: int = 0  # (writer, date) whose last index frame is not final: crashed, running, or cut
    id_duplicates: int = 0  # entries dropped because an entry with the same id_field value came first
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def only_unknown_keys(self) -> bool:
        """True if every problem is a frame written with a key we do not have, and none decoded."""
        return bool(self.problems) and self.frames == 0 and all(p.unknown_key for p in self.problems)


class Seen(enum.StrEnum):
    """What a frame is, given the frames read before it."""

    NEW = "new"  # its entries are read
    RETRY = "retry"  # another attempt of a frame already read: a retried append that landed twice; dropped
    REPLAY = "replay"  # these very bytes were read before: not something a writer does; reported


class SeenFrames:
    """The frames seen, by (writer id, sequence, attempt); small however many frames.

    First attempts, nearly all frames, are kept as ranges of sequence numbers per writer; the
    few retried frames are kept one by one.
    """

    NEW, RETRY, REPLAY = Seen.NEW, Seen.RETRY, Seen.REPLAY

    def __init__(self) -> None:
        self._first: dict[bytes, tuple[list[int], list[int]]] = {}
        self._retried: dict[tuple[bytes, int], set[int]] = {}

    def add(self, writer_id: bytes, sequence: int, attempt: int = 0) -> Seen:
        """Record a frame: NEW the first time its entries are seen; RETRY if another attempt of
        the same frame was seen (a retried append that landed twice: drop it); REPLAY if this very
        attempt was seen before (identical bytes appended twice: not something a writer does)."""
        retried = self._retried.get((writer_id, sequence))
        if attempt == 0:
            if not self._add_first(writer_id, sequence):
                return self.REPLAY
            return self.NEW if retried is None else self.RETRY
        if retried is None:
            retried = self._retried[(writer_id, sequence)] = set()
        elif attempt in retried:
            return self.REPLAY
        retried.add(attempt)
        seen_before = len(retried) > 1 or self._contains_first(writer_id, sequence)
        return self.RETRY if seen_before else self.NEW

    def _contains_first(self, writer_id: bytes, sequence: int) -> bool:
        starts, ends = self._first.get(writer_id, ([], []))
        i = bisect_right(starts, sequence) - 1
        return i >= 0 and sequence <= ends[i]

    def _add_first(self, writer_id: bytes, sequence: int) -> bool:
        starts, ends = self._first.setdefault(writer_id, ([], []))
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


def date_range(first: Date, last: Date | None = None) -> list[str]:
    """The ISO dates from first to last, inclusive."""
    last = last or first
    if last < first:
        raise ValueError(f"--until {last} is before --date {first}")
    return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


_Landed = tuple[bytes, int, int, str]  # writer id, sequence, attempt, GCM tag (hex)


class Reader:
    """Streams the entries of a range of dates from a store, each exactly once.

    With check_index (verify), it also holds every frame's position against the index frames
    its writer appended, which reveals frames swapped, moved or removed, and follows each writer's
    chain of index frames, which reveals index frames removed. With `id_field`, an entry whose
    value of that field was seen before, in its date or the day before, is dropped (a client's
    retry after a lost answer).
    """

    def __init__(self, store: Store, keys: Iterable[SecretKey], *, check_index: bool = False,
                 id_field: str | None = None) -> None:
        self.store = store
        self._decoder = Decoder(keys)
        self._check_index = check_index
        self._id_field = id_field
        self.report = ReadReport()

    async def entries(self, dates: Iterable[str]) -> AsyncIterator[bytes]:
        """Yield each stored entry (a JSON object, without newline) of the dates, in blob order."""
        ids_before: set[bytes] = set()
        for day in dates:
            seen = SeenFrames()  # a frame is duplicated only within its own date's blobs
            claims: dict[tuple[str, int], _Landed] = {}
            landed: dict[tuple[str, int], _Landed] = {}
            chains: dict[bytes, list[tuple[ChainLink, str, int, int, str]]] = {}
            ids: set[bytes] = set()
            for name in await self.store.parts(day):
                self.report.parts += 1
                async for offset, header, plaintext, tag in self._frames(name, day):
                    if self._check_index and not header.is_index:
                        landed[(name, offset)] = (header.writer_id, header.sequence, header.attempt, tag)
                    seen_as = seen.add(header.writer_id, header.sequence, header.attempt)
                    if seen_as == Seen.REPLAY:
                        self._problem(name, offset, f"replayed frame: writer {header.writer_id.hex()} sequence "
                                                    f"{header.sequence} attempt {header.attempt} appears twice")
                        continue
                    if seen_as == Seen.RETRY:
                        self.report.duplicates += 1
                        continue
                    if header.is_index:
                        self.report.index_frames += 1
                        if self._check_index:
                            self._take_index(name, offset, header, plaintext, claims, chains)
                        continue
                    self.report.frames += 1
                    self.report.entries += header.entries
                    for line in iter_lines(plaintext):
                        if self._id_field is None or self._first(line, ids, ids_before):
                            yield line
            if self._check_index:
                self._check_claims(claims, landed)
                self._check_chains(chains)
            ids_before = ids

    def _first(self, line: bytes, ids: set[bytes], ids_before: set[bytes]) -> bool:
        """False if an entry with this id_field value was read before (this date or the day before)."""
        value = orjson.loads(line).get(self._id_field)
        if value is None:
            return True
        digest = hashlib.blake2b(orjson.dumps(value), digest_size=12).digest()
        if digest in ids or digest in ids_before:
            self.report.id_duplicates += 1
            return False
        ids.add(digest)
        return True

    def _take_index(self, name: str, offset: int, header: FrameHeader, plaintext: bytes,
                    claims: dict[tuple[str, int], _Landed],
                    chains: dict[bytes, list[tuple[ChainLink, str, int, int, str]]]) -> None:
        try:
            link, records = read_index(plaintext)
        except FrameError as exc:  # authenticated, yet not what the format says: a writer bug; report it
            self._problem(name, offset, str(exc))
            return
        for r in records:
            claims[(r.blob, r.offset)] = (header.writer_id, r.sequence, r.attempt, r.tag)
        if link is not None:
            chains.setdefault(header.writer_id, []).append((link, chain_hash(plaintext), len(records), offset, name))

    def _check_chains(self, chains: dict[bytes, list[tuple[ChainLink, str, int, int, str]]]) -> None:
        """Each writer's index frames of a date must be numbered 1, 2, ... with no gap, each naming the
        previous one's hash and counting every data frame indexed so far."""
        for writer, found in chains.items():
            found.sort(key=lambda item: item[0].number)
            expected, previous, frames = 1, "", 0
            for link, digest, records, offset, name in found:
                if link.number != expected:
                    missing = f"{expected}" if link.number == expected + 1 else f"{expected} to {link.number - 1}"
                    self._problem(name, offset, f"index frame(s) {missing} of writer {writer.hex()} missing before "
                                                f"this one (removed, or cut with the frames they indexed)")
                    frames = link.frames  # what the missing ones indexed is unknown: count on from here
                else:
                    if link.previous != previous:
                        self._problem(name, offset, f"index chain of writer {writer.hex()} broken at index frame "
                                                    f"{link.number}: the previous one is not the one it names")
                    frames += records
                    if link.frames != frames:
                        self._problem(name, offset, f"index frame {link.number} of writer {writer.hex()} counts "
                                                    f"{link.frames} frames indexed, its chain holds {frames}")
                        frames = link.frames
                expected, previous = link.number + 1, digest
            if not found[-1][0].final:
                self.report.open_chains += 1

    def _check_claims(self, claims: dict[tuple[str, int], _Landed], landed: dict[tuple[str, int], _Landed]) -> None:
        damaged = {(p.blob, p.offset) for p in self.report.problems}
        for (blob, offset), (writer, sequence, attempt, tag) in sorted(claims.items()):
            found = landed.get((blob, offset))
            if found == (writer, sequence, attempt, tag) or (blob, offset) in damaged:
                continue
            expected = f"writer {writer.hex()} sequence {sequence} attempt {attempt}"
            if found is None:
                self._problem(blob, offset, f"indexed frame missing: {expected} was appended here "
                                            "(removed, moved or cut)")
            else:
                self._problem(blob, offset, f"frame out of place: found writer {found[0].hex()} sequence "
                                            f"{found[1]} attempt {found[2]} where the index puts {expected} "
                                            "(frames swapped or moved)")
        # A retried append's other copy is not in any index: its twin at the indexed offset is.
        claimed = {(writer, sequence) for writer, sequence, _, _ in claims.values()}
        self.report.unindexed += sum(1 for place, (writer, sequence, _, _) in landed.items()
                                     if place not in claims and (writer, sequence) not in claimed)

    async def _frames(self, name: str, date: str) -> AsyncIterator[tuple[int, FrameHeader, bytes, str]]:
        """Each readable frame of one part: offset, header, plaintext, tag (hex); damage is reported."""
        scanner = FrameScanner()
        chunks = self.store.read(name)
        eof = False
        while not eof:
            try:
                scanner.feed(await anext(chunks))
            except StopAsyncIteration:
                scanner.finish()
                eof = True
            for found in scanner:
                if isinstance(found, Damage):
                    self._problem(name, found.offset, found.message)
                    continue
                try:
                    plaintext = self._decoder.decode(found.header, found.data, blob=name, date=date)
                except UnknownKeyError as exc:  # intact but unreadable: skip exactly this frame
                    self._problem(name, found.offset, str(exc), found.header.key_id)
                    continue
                except FrameError as exc:
                    self._problem(name, found.offset, str(exc))
                    scanner.reject()
                    continue
                self.report.bytes += found.header.frame_length
                yield found.offset, found.header, plaintext, found.tag.hex()

    def _problem(self, name: str, offset: int, message: str, unknown_key: bytes | None = None) -> None:
        self.report.problems.append(Problem(name, offset, message, unknown_key))
