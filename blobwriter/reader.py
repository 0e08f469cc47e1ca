"""Read frames back: stream each date's blobs, decrypt, drop duplicates, report damage.

A corrupt, truncated or unauthenticated frame is reported with its blob and offset and
never stops the reader: it scans on to the next valid frame header. Blobs download a few ranges
ahead, and frames are decrypted, decompressed and split into entries on all cores (decoding.py),
yet everything comes out in one order: blobs in listing order, frames in blob order, entries in
frame order. Memory stays bounded by what is in flight (a few download ranges and batches of
frames), whatever the size of the day; verify's index check holds only frames and records not
matched yet (index_check.py); `id_field` holds each entry's id digest.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date as Date
from datetime import timedelta
from typing import Any, TypeVar

from .codec import Damage, FrameHeader, iter_lines
from .decoding import FAILED, OK, BatchEnd, BlobScan, Decoding, EntryTask, Frame, Prefetch, entry_lines
from .errors import ConfigError, FrameError
from .index import chain_hash, read_index
from .index_check import IndexCheck, SequenceRanges
from .keys import SecretKey
from .store import Store

T = TypeVar("T")


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
    open_chains: int = 0  # (writer, date) with no final index frame: crashed, running, or cut
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
        self._firsts = SequenceRanges()
        self._first = self._firsts.ranges  # writer -> (range starts, range ends)
        self._retried: dict[tuple[bytes, int], set[int]] = {}

    def add(self, writer_id: bytes, sequence: int, attempt: int = 0) -> Seen:
        """Record a frame: NEW the first time its entries are seen; RETRY if another attempt of
        the same frame was seen (a retried append that landed twice: drop it); REPLAY if this very
        attempt was seen before (identical bytes appended twice: not something a writer does)."""
        retried = self._retried.get((writer_id, sequence))
        if attempt == 0:
            if not self._firsts.add(writer_id, sequence):
                return self.REPLAY
            return self.NEW if retried is None else self.RETRY
        if retried is None:
            retried = self._retried[(writer_id, sequence)] = set()
        elif attempt in retried:
            return self.REPLAY
        retried.add(attempt)
        seen_before = len(retried) > 1 or (writer_id, sequence) in self._firsts
        return self.RETRY if seen_before else self.NEW


def nothing_found(dates: Sequence[str], store: Store) -> str:
    """The note for a range in which no blob was found: a date, storage, container or blob_prefix that
    is not the writer's, most likely (a table of zeros or no output could pass for an answer)."""
    span = dates[0] if len(dates) == 1 else f"{dates[0]}..{dates[-1]}"
    prefix = f" under blob_prefix {store.prefix!r}" if store.prefix else ""
    return f"no logs for {span} in {store.description}{prefix}; are the dates (UTC) and the storage settings right?"


def date_range(first: Date, last: Date | None = None) -> list[str]:
    """The ISO dates from first to last, inclusive."""
    last = last or first
    if last < first:
        raise ValueError(f"--until {last} is before --date {first}")
    return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


class Reader:
    """Streams the entries of a range of dates from a store, each exactly once.

    Order: a date's blobs in listing order (layout.sort_parts), each blob's frames in blob order,
    each frame's entries in frame order; so one writer's entries come in the order it accepted
    them. Decoding runs on `workers` processes (default: every core) once a read is large enough;
    what comes out is the same as with workers=1.

    With check_index (verify), it also holds every frame's position against the index frames
    its writer appended, which reveals frames swapped, moved or removed, and follows each writer's
    chain of index frames, which reveals index frames removed. With `id_field`, an entry whose
    value of that field was seen before, in its date or the day before, is dropped (a client's
    retry after a lost answer). Call close() (or use `async with`) to stop the worker processes.
    """

    def __init__(self, store: Store, keys: Iterable[SecretKey], *, check_index: bool = False,
                 id_field: str | None = None, workers: int | None = None) -> None:
        self.store = store
        self._decoding = Decoding(keys, workers=workers, id_field=id_field)
        self._decoder = self._decoding.decoder
        self._check_index = check_index
        self._id_field = id_field
        self.report = ReadReport()
        self.index_check: IndexCheck | None = None  # the last date's, when check_index
        self._ids_before: set[bytes] = set()
        self._last_date: str | None = None

    def carried_ids(self) -> tuple[str, set[bytes]] | None:
        """The last date read and its id_field digests, for a Reader that reads the next date (follow())."""
        return None if self._last_date is None else (self._last_date, self._ids_before)

    def follow(self, carried: tuple[str, set[bytes]] | None) -> None:
        """Read on where another Reader stopped (its carried_ids()): an entry whose id_field value that
        Reader's last date had is dropped if this one reads the next date first, as one Reader would."""
        if carried is not None:
            self._last_date, self._ids_before = carried

    async def __aenter__(self) -> Reader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the worker processes, if any were started (the store is the caller's to close)."""
        await self._decoding.close()

    async def entries(self, dates: Iterable[str]) -> AsyncIterator[bytes]:
        """Yield each stored entry (a JSON object, without newline) of the dates, in the order above."""
        async for line in self._read(dates, None):
            yield line

    async def results(self, dates: Iterable[str], task: EntryTask[T]) -> AsyncIterator[T]:
        """task.run() over the entries of the dates, each entry once, in runs of consecutive entries, in
        the order above; the task runs where frames are decoded (worker processes for large reads), so
        only its results travel. The entries are the ones entries() yields, in the same order."""
        async for result in self._read(dates, task):
            yield result

    async def _read(self, dates: Iterable[str], task: EntryTask[Any] | None) -> AsyncIterator[Any]:
        # The ids of the date read before: the previous date of this call, or, for the first, of the
        # call before if that ended the day before (a range read one call per day, as the commands do).
        carried = self._last_date is not None
        for day in dates:
            if carried and _next_day(self._last_date or "") != day:
                self._ids_before = set()
            carried = False
            ids_before = self._ids_before
            seen = SeenFrames()  # a frame is duplicated only within its own date's blobs
            check = IndexCheck() if self._check_index else None
            ids: set[bytes] = set()
            blobs = Prefetch(self.store, await self.store.parts(day)).blobs()
            try:
                async for name, chunks in blobs:
                    self.report.parts += 1
                    scan: BlobScan[Any] = BlobScan(self._decoding, name, day, task)
                    kept: list[tuple[Frame, list[bool] | None]] = []  # the batch's data frames read, and entries kept
                    complete = True  # the worker's task result counts exactly the frames and entries kept
                    try:
                        async for item in scan.items(chunks):
                            if isinstance(item, BatchEnd):
                                if task is not None and kept:
                                    if complete and item.complete and item.result is not None:
                                        yield item.result
                                    else:
                                        yield self._run_again(task, name, day, kept)
                                kept, complete = [], True
                                continue
                            if isinstance(item, Damage):
                                self._problem(name, item.offset, item.message)
                                continue
                            found, outcome = item.found, item.outcome
                            if outcome.status != OK:
                                unknown = found.header.key_id if outcome.status != FAILED else None
                                self._problem(name, found.offset, outcome.message, unknown)
                                continue
                            header = found.header
                            self.report.bytes += header.frame_length
                            if check is not None and not header.is_index:
                                check.landed((name, found.offset),
                                             (header.writer_id, header.sequence, header.attempt, found.tag.hex()))
                            seen_as = seen.add(header.writer_id, header.sequence, header.attempt)
                            if seen_as != Seen.NEW:
                                complete = complete and header.is_index
                                if seen_as == Seen.REPLAY:
                                    self._problem(name, found.offset,
                                                  f"replayed frame: writer {header.writer_id.hex()} sequence "
                                                  f"{header.sequence} attempt {header.attempt} appears twice")
                                else:
                                    self.report.duplicates += 1
                                continue
                            if header.is_index:
                                self.report.index_frames += 1
                                if check is not None:
                                    assert outcome.plaintext is not None
                                    self._take_index(name, found.offset, header, outcome.plaintext, check)
                                continue
                            self.report.frames += 1
                            self.report.entries += header.entries
                            keep = None
                            if outcome.ids is not None:
                                keep = [self._first(digest, ids, ids_before) for digest in outcome.ids]
                                complete = complete and all(keep)
                            if task is not None:
                                kept.append((item, keep))
                                continue
                            assert outcome.plaintext is not None
                            if keep is None:
                                for line in iter_lines(outcome.plaintext):
                                    yield line
                            else:
                                for line, wanted in zip(iter_lines(outcome.plaintext), keep, strict=True):
                                    if wanted:
                                        yield line
                    finally:
                        scan.close()
            finally:
                await blobs.aclose()  # at once, not when collected: a read stopped early stops its downloads
            if check is not None:
                unindexed, open_chains = check.finish({(p.blob, p.offset) for p in self.report.problems}, self._report)
                self.report.unindexed += unindexed
                self.report.open_chains += open_chains
                self.index_check = check
            self._ids_before, self._last_date = ids, day

    def _run_again(self, task: EntryTask[T], name: str, day: str, kept: list[tuple[Frame, list[bool] | None]]) -> T:
        """The task over the entries kept of a batch whose worker result counted more (a retried copy, a
        repeated id, frames dropped for a rescan): decode those frames again here."""
        lines: list[bytes] = []
        for frame, keep in kept:
            found = frame.found
            plaintext = self._decoder.decode(found.header, found.data, blob=name, date=day)
            entries = entry_lines(plaintext)
            lines += entries if keep is None else [line for line, wanted in zip(entries, keep, strict=True) if wanted]
        return task.run(lines)

    def _first(self, digest: bytes | None, ids: set[bytes], ids_before: set[bytes]) -> bool:
        """False if an entry with this id_field value was read before (this date or the day before)."""
        if digest is None:
            return True
        if digest in ids or digest in ids_before:
            self.report.id_duplicates += 1
            return False
        ids.add(digest)
        return True

    def _take_index(self, name: str, offset: int, header: FrameHeader, plaintext: bytes, check: IndexCheck) -> None:
        try:
            link, records = read_index(plaintext)
        except FrameError as exc:  # authenticated, yet not what the format says: a writer bug; report it
            self._problem(name, offset, str(exc))
            return
        for r in records:
            check.claim(header.writer_id, r)
        if link is not None:
            check.link(header.writer_id, link, chain_hash(plaintext), len(records), offset, name)

    def _report(self, name: str, offset: int, message: str) -> None:
        self._problem(name, offset, message)

    def _problem(self, name: str, offset: int, message: str, unknown_key: bytes | None = None) -> None:
        self.report.problems.append(Problem(name, offset, message, unknown_key))


def unknown_keys_error(problems: Sequence[Problem], keys: Sequence[tuple[str, SecretKey]]) -> ConfigError:
    """The one error of a read none of whose frames any configured key opens: the key ids the frames use and
    those of the configured keys, by setting (fingerprints, not keys), so a wrong key is told from a missing one."""
    ids = sorted({p.unknown_key.hex() for p in problems if p.unknown_key})
    configured = ", ".join(f"{name} {key.id.hex()}" for name, key in keys)
    return ConfigError(
        f"none of the configured keys can decrypt these logs ({len(problems)} frames use key id(s) {', '.join(ids)}; "
        f"the configured keys have key ids: {configured}); set encryption_key (and previous_keys after a "
        "rotation) to the key that wrote them.")


def _next_day(day: str) -> str:
    return (Date.fromisoformat(day) + timedelta(days=1)).isoformat()
