"""The queue of accepted, unwritten entries: bounded in entries and bytes, and its accounting.

An entry is counted from `put` until it is settled (written, or reported failed): that count is
the queue depth (`blobwriter_queue_depth`), whether the entry still waits here or is already
encoded into a frame on its way to storage. `flush()` waits for the entries put before it, by
epoch: each flush starts a new epoch, so entries put meanwhile are not waited for.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, deque
from collections.abc import Callable
from operator import itemgetter
from typing import Final

from .entries import Prepared
from .errors import QueueFullError, WriteFailedError


class Waiter:
    """Resolves when all entries of one durable write call are appended (or fail)."""

    __slots__ = ("future", "remaining")

    def __init__(self, count: int) -> None:
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.remaining = count

    def done_one(self) -> None:
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


# One queued entry: (date, line, waiter, enqueued, epoch). A plain tuple, not a NamedTuple: the
# garbage collector stops tracking plain tuples of atoms, so 400,000 queued entries add ~3 ms to a
# full collection instead of ~21 ms, a pause every request would otherwise feel while storage is slow.
Item = tuple[str, bytes, Waiter | None, float, int]
DATE: Final = 0
LINE: Final = 1
WAITER: Final = 2
ENQUEUED: Final = 3
EPOCH: Final = 4
_line, _waiter, _epoch = itemgetter(LINE), itemgetter(WAITER), itemgetter(EPOCH)


# A group of entries as the queue accounts for them once their lines are gone (encoded): (entries,
# nbytes, waiters, epochs): how many, their serialized bytes, the durable callers' waiters, and their
# flush epochs as (epoch, count, epoch, count, ...). One per frame, waiting with it for storage (tens
# of thousands at once at batch_size 10): a plain tuple of atoms, like Item, so that the garbage
# collector stops tracking it (a dict inside, even of ints, would keep it tracked).
Settled = tuple[int, int, tuple[Waiter, ...], tuple[int, ...]]


def settled_of(items: list[Item]) -> Settled:
    # Made for every frame (in an encoding thread, holding the GIL): loops in C, not Python.
    epochs: tuple[int, ...]
    if items and items[0][EPOCH] == items[-1][EPOCH]:  # epochs only grow along the queue: all one
        epochs = (items[0][EPOCH], len(items))
    else:
        epochs = tuple(itertools.chain.from_iterable(Counter(map(_epoch, items)).items()))
    return len(items), sum(map(len, map(_line, items))), tuple(filter(None, map(_waiter, items))), epochs


class EntryQueue:
    """Accepted entries not yet taken for encoding (`pending`), and all not yet settled (`depth`)."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.pending: deque[Item] = deque()
        self.depth = 0  # entries put and not yet settled
        self.bytes = 0  # their serialized bytes
        self.urgent = 0  # durable entries pending: they should not wait for batch_timeout
        self._epoch = 0
        self._epochs: dict[int, int] = {}  # epoch -> its entries not yet settled
        self._flushes: deque[tuple[int, asyncio.Future[None]]] = deque()  # flush() calls: (epoch, done)

    @property
    def flushing(self) -> bool:
        return bool(self._flushes)

    def put(self, prepared: list[Prepared], *, durable: bool, retry_after: Callable[[], float]) -> Waiter | None:
        """Queue entries, all or none; QueueFullError if they would pass either limit."""
        count = len(prepared)
        nbytes = len(prepared[0].line) if count == 1 else sum([len(p.line) for p in prepared])
        self.make_room(count, nbytes, retry_after)
        waiter = Waiter(count) if durable else None
        now, epoch = time.monotonic(), self._epoch
        if count == 1:  # write() and single-entry POSTs: no comprehensions (their frames are ~0.6 us of a ~10 us write)
            date, line = prepared[0]
            self.pending.append((date, line, waiter, now, epoch))
        else:
            self.pending.extend([(p.date, p.line, waiter, now, epoch) for p in prepared])
        self.depth += count
        self.bytes += nbytes
        self._epochs[epoch] = self._epochs.get(epoch, 0) + count
        if waiter is not None:
            self.urgent += count
        return waiter

    def make_room(self, count: int, nbytes: int, retry_after: Callable[[], float], what: str = "") -> None:
        """QueueFullError (back-pressure) unless `count` more entries of `nbytes` serialized bytes fit now;
        `what` names them in the message."""
        if self.depth + count > self.max_entries or self.bytes + nbytes > self.max_bytes:
            raise QueueFullError(
                f"queue full: {self.depth} entries ({self.bytes} bytes) waiting for storage{what} "
                f"(max_queue_size={self.max_entries}, max_queue_bytes={self.max_bytes})", retry_after=retry_after())

    def take(self, count: int) -> list[Item]:
        """Remove the oldest `count` pending entries (still counted until settled)."""
        items = [self.pending.popleft() for _ in range(count)]
        self.urgent -= sum([1 for i in items if i[WAITER] is not None])
        return items

    def flush(self) -> asyncio.Future[None] | None:
        """A future done once every entry put so far is settled (None if there is none)."""
        epoch = self._epoch
        if not any(e <= epoch for e in self._epochs):
            return None
        self._epoch += 1
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flushes.append((epoch, done))
        return done

    def settle(self, settled: Settled) -> None:
        """Entries are written or reported failed: they no longer count."""
        entries, nbytes, _, epochs = settled
        self.depth -= entries
        self.bytes -= nbytes
        for epoch, n in zip(epochs[::2], epochs[1::2], strict=True):
            left = self._epochs[epoch] - n
            if left:
                self._epochs[epoch] = left
            else:
                del self._epochs[epoch]
        while self._flushes and not any(e <= self._flushes[0][0] for e in self._epochs):
            _, done = self._flushes.popleft()
            if not done.done():
                done.set_result(None)

    def fail(self, items: list[Item], reason: str) -> Settled:
        """Report entries as not written: their durable callers get WriteFailedError."""
        settled = settled_of(items)
        entries, _, waiters, _ = settled
        error = WriteFailedError(f"{entries} entries were not written: {reason}")
        for waiter in waiters:
            waiter.fail(error)
        self.settle(settled)
        return settled
