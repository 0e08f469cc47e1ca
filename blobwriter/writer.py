"""LogWriter: accept entries at once, write them in batches in the background, lose none.

`write()` admits an entry (entries.py), puts it on a bounded in-memory queue and returns; a
background task takes up to `batch_size` entries (or what arrived within `batch_timeout`),
groups them by the UTC date of their timestamp and hands each batch to the Appender
(appender.py), which encodes it into frames off the event loop and appends them, up to
`max_concurrent_writes` batches at a time. This module keeps the queue, the batch loop and the
lifecycle; it resolves `wait=True` callers, counts, and keeps the index of where frames landed.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, Final

from .appender import Appender, Frame
from .codec import Encoder, frame_tag
from .config import Settings
from .entries import Prepared, admit
from .errors import EntryError, QueueFullError, StoreError, WriteFailedError, WriterStoppedError
from .index import INDEX_INTERVAL, IndexBook, IndexRecord
from .metrics import WriterMetrics
from .store import Appended, Store, open_store

log = logging.getLogger("blobwriter.writer")

HEALTH_PROBE_SECONDS = 5.0


class WriterState(enum.StrEnum):
    """Where a LogWriter is in its life."""

    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"  # the batch task died; nothing more is accepted


class _Waiter:
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


# One queued entry: (date, line, waiter, enqueued). A plain tuple, not a NamedTuple: the garbage
# collector stops tracking plain tuples of atoms, so 400,000 queued entries add ~3 ms to a full
# collection instead of ~21 ms, a pause every request would otherwise feel while storage is slow.
_Item = tuple[str, bytes, _Waiter | None, float]
_DATE: Final = 0
_LINE: Final = 1
_WAITER: Final = 2
_ENQUEUED: Final = 3


class LogWriter:
    """Batching, encrypting writer of log entries to a Store (append blobs or a directory)."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        key = settings.require("encryption_key")
        self.settings = settings
        self.store = store if store is not None else open_store(settings)
        self.metrics = WriterMetrics(queue_depth=lambda: self._queue_depth, in_flight=lambda: len(self._in_flight))
        self._appender = Appender(self.store, Encoder(key, compression=settings.compression), self.metrics,
                                  max_append_bytes=settings.max_append_bytes,
                                  retry_backoff_max=settings.retry_backoff_max)
        self._pending: deque[_Item] = deque()
        self._queue_depth = 0  # entries accepted and neither written nor reported failed
        self._urgent = 0  # durable entries queued: write them without waiting for batch_timeout
        self._flushing = 0  # flush() calls waiting: likewise
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._slots = asyncio.Semaphore(settings.max_concurrent_writes)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._index = IndexBook()
        self._index_tasks: set[asyncio.Task[None]] = set()
        self._index_timer: asyncio.Task[None] | None = None
        self._opener: asyncio.Task[None] | None = None
        self._state = WriterState.NEW

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def state(self) -> WriterState:
        return self._state

    @property
    def writer_id(self) -> str:
        return self._appender.encoder.writer_id.hex()

    @property
    def queue_depth(self) -> int:
        """Entries accepted and neither written nor reported failed."""
        return self._queue_depth

    async def start(self) -> None:
        """Open the store and start the batch task."""
        if self._state != WriterState.NEW:
            raise WriterStoppedError(f"writer cannot start from state {self._state.value!r}")
        try:
            await self.store.open()
        except StoreError as exc:  # storage may come back: keep opening (creating the container) meanwhile
            log.warning("Storage not ready at start (%s); retrying in the background", exc)
            self._opener = asyncio.create_task(self._open_until_ready(), name="blobwriter-open")
        self._state = WriterState.RUNNING
        self._task = asyncio.create_task(self._run(), name="blobwriter-batches")
        self._task.add_done_callback(self._on_task_done)
        self._index_timer = asyncio.create_task(self._index_periodically(), name="blobwriter-index")
        log.debug("Log writer started (batch_size=%d, timeout=%ss)", self.settings.batch_size,
                  self.settings.batch_timeout)

    async def stop(self, timeout: float | None = None) -> None:
        """Write everything queued and wait for appends in flight; report what could not be written.

        Gives up after `timeout` seconds (default: the `stop_timeout` setting) if storage keeps
        failing; entries still unwritten then are counted as failed and logged as an error.
        """
        if self._state in (WriterState.NEW, WriterState.STOPPED):
            self._state = WriterState.STOPPED
            return
        timeout = self.settings.stop_timeout if timeout is None else timeout
        if self._state == WriterState.RUNNING:
            self._state = WriterState.STOPPING
            if self._pending:
                log.debug("Flushing %d remaining log entries", len(self._pending))
            self._wakeup.set()
        for helper in (self._index_timer, self._opener):
            if helper is not None:
                helper.cancel()
        try:
            async with asyncio.timeout(timeout):
                if self._task is not None:
                    await asyncio.shield(self._task)
                while self._in_flight:
                    await asyncio.gather(*self._in_flight, return_exceptions=True)
                self._write_indexes()
                await asyncio.gather(*self._index_tasks, return_exceptions=True)
        except TimeoutError:
            pass
        except Exception:  # the batch task died; what it held is reported below
            pass
        if self._task is not None and not self._task.done():
            self._task.cancel()
        for task in [*self._in_flight, *self._index_tasks]:
            task.cancel()
        if self._in_flight or self._index_tasks:
            await asyncio.gather(*self._in_flight, *self._index_tasks, return_exceptions=True)
        self._fail_items(list(self._pending), "the writer stopped before storage accepted them")
        self._pending.clear()
        self._state = WriterState.STOPPED
        await self.store.close()

    async def __aenter__(self) -> LogWriter:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _open_until_ready(self) -> None:
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            try:
                await self.store.open()
                log.info("Storage is ready")
                return
            except StoreError as exc:
                log.debug("Storage still not ready: %s", exc)
                delay = min(self.settings.retry_backoff_max, delay * 2)

    # -- accepting entries -----------------------------------------------------------------

    def admit(self, values: Iterable[tuple[int, Any]], *, where: str = "index") -> list[Prepared]:
        """Validate and serialize one call's (position, value) pairs, all or nothing (entries.admit);
        a refused call's entries are counted as rejected, once."""
        seen = 0

        def counted() -> Iterable[tuple[int, Any]]:
            nonlocal seen
            for pair in values:
                seen += 1
                yield pair

        try:
            return admit(counted(), max_entry_bytes=self.settings.max_entry_bytes,
                         max_entries=self.settings.max_queue_size, where=where)
        except EntryError:
            self.metrics.rejected += seen
            raise

    def submit(self, prepared: list[Prepared], *, durable: bool = False) -> asyncio.Future[None] | None:
        """Queue admitted entries, all or none; return a future for durable writes.

        Raises QueueFullError (back-pressure) when they would exceed `max_queue_size`.
        """
        if self._state != WriterState.RUNNING:
            raise WriterStoppedError(f"writer is {self._state.value}; entries are not accepted")
        count = len(prepared)
        if self._queue_depth + count > self.settings.max_queue_size:
            self.metrics.rejected += count
            raise QueueFullError(
                f"queue full: {self._queue_depth} entries waiting for storage (max_queue_size="
                f"{self.settings.max_queue_size})", retry_after=self.retry_after(),
            )
        if count == 0:
            return None
        waiter = _Waiter(count) if durable else None
        now = time.monotonic()
        was_empty = not self._pending
        self._pending.extend((p.date, p.line, waiter, now) for p in prepared)
        self._queue_depth += count
        self.metrics.accepted += count
        self._drained.clear()
        if waiter is not None:
            self._urgent += count
        if was_empty or waiter is not None or len(self._pending) >= self.settings.batch_size:
            self._wakeup.set()
        return waiter.future if waiter is not None else None

    async def write(self, entry: Any, *, wait: bool = False) -> None:
        """Queue one entry and return at once; with wait=True, return once it is appended."""
        await self.write_many((entry,), wait=wait)

    async def write_many(self, entries: Iterable[Any], *, wait: bool = False) -> int:
        """Queue several entries, all or none (one bad entry rejects the call)."""
        prepared = self.admit(enumerate(entries))
        future = self.submit(prepared, durable=wait)
        if future is not None:
            await future
        return len(prepared)

    async def flush(self) -> None:
        """Wait until every entry accepted so far is written (or reported failed)."""
        if self._queue_depth:
            self._flushing += 1
            self._wakeup.set()
            try:
                await self._drained.wait()
            finally:
                self._flushing -= 1

    def retry_after(self) -> int:
        """Seconds a caller turned away by back-pressure should wait before trying again."""
        if self._state != WriterState.RUNNING:
            return 5
        return max(1, round(max(self._appender.backoff, self.settings.batch_timeout)))

    async def health(self, *, probe: bool = True) -> dict[str, Any]:
        """State for health checks: ok is False if the batch task died, appends are failing, or
        (with `probe`) storage does not answer a probe within 5 seconds."""
        storage_error = self._appender.storage_error
        if probe and self._state == WriterState.RUNNING and storage_error is None:
            try:
                async with asyncio.timeout(HEALTH_PROBE_SECONDS):
                    await self.store.check()
            except StoreError as exc:
                storage_error = str(exc)
            except TimeoutError:
                storage_error = f"storage did not answer a probe within {HEALTH_PROBE_SECONDS:.0f}s"
        return {
            "ok": self._state == WriterState.RUNNING and storage_error is None,
            "state": self._state.value,
            "queue_depth": self._queue_depth,
            "max_queue_size": self.settings.max_queue_size,
            "appends_in_flight": len(self._in_flight),
            "storage_error": storage_error,
            "writer_id": self.writer_id,
        }

    # -- the batch task --------------------------------------------------------------------

    async def _run(self) -> None:
        batch_size = self.settings.batch_size
        timeout = self.settings.batch_timeout
        pending = self._pending
        while True:
            if not pending:
                if self._state != WriterState.RUNNING:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if (len(pending) < batch_size and not (self._urgent or self._flushing)
                    and self._state == WriterState.RUNNING):
                delay = pending[0][_ENQUEUED] + timeout - time.monotonic()
                if delay > 0:
                    self._wakeup.clear()
                    try:
                        async with asyncio.timeout(delay):
                            await self._wakeup.wait()
                    except TimeoutError:
                        pass
                    continue
            await self._slots.acquire()
            batch = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
            self._urgent -= sum(1 for i in batch if i[_WAITER] is not None)
            task = asyncio.create_task(self._write_batch(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("Batch task failed unexpectedly", exc_info=task.exception())

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self._state = WriterState.FAILED
        log.error("Log writer batch task died; entries are no longer accepted", exc_info=task.exception())
        self._fail_items(list(self._pending), "the writer's batch task died")
        self._pending.clear()

    async def _write_batch(self, batch: list[_Item]) -> None:
        groups: dict[str, list[_Item]] = {}
        for item in batch:
            groups.setdefault(item[_DATE], []).append(item)
        frames: list[Frame] | None = None
        appended = 0

        def unwritten() -> list[_Item]:
            return batch if frames is None else [i for f in frames[appended:] for i in f.items]

        try:
            frames = await asyncio.to_thread(self._encode, groups)
            for frame in frames:
                self._landed(frame, await self._appender.append(frame))
                appended += 1
        except asyncio.CancelledError:
            self._fail_items(unwritten(), "the writer stopped while storage was failing")
            raise
        except Exception as exc:  # encoding cannot fail for an admitted entry; if it does, say so
            self._fail_items(unwritten(), f"encoding failed: {exc!r}")

    def _encode(self, groups: dict[str, list[_Item]]) -> list[Frame]:
        """Frames for each date's entries (in a worker thread)."""
        return [frame for date, items in groups.items()
                for frame in self._appender.encode(date, [i[_LINE] for i in items], items)]

    def _landed(self, frame: Frame, landed: Appended) -> None:
        """A data frame is stored: index it, count it, resolve its waiters."""
        items = frame.items
        record = IndexRecord(landed.name, landed.offset, len(frame.data), frame.body.sequence, frame.attempt,
                             frame_tag(frame.data).hex())
        if self._index.record(frame.date, record):
            self._write_indexes(landed.name)
        self.metrics.batch_entries.observe(len(items))
        self.metrics.frames += 1
        self.metrics.written += len(items)
        self.metrics.bytes_raw += frame.body.plaintext_length
        self.metrics.bytes_stored += len(frame.data)
        for item in items:
            if item[_WAITER] is not None:
                item[_WAITER].done_one()
        self._settle(len(items))
        log.debug("Wrote %d log entries to %s", len(items), landed.name)

    # -- index frames ----------------------------------------------------------------------

    def _write_indexes(self, part: str | None = None) -> None:
        """Start appending index frames for one part (default: every part with records waiting)."""
        for pending in self._index.take(part):
            frame = self._appender.encode_index(pending.date, pending.lines)
            task = asyncio.create_task(self._append_index(frame))
            self._index_tasks.add(task)
            task.add_done_callback(self._index_tasks.discard)

    async def _append_index(self, frame: Frame) -> None:
        landed = await self._appender.append(frame)
        log.debug("Wrote an index of %d frames to %s", frame.body.entries, landed.name)

    async def _index_periodically(self) -> None:
        while True:
            await asyncio.sleep(INDEX_INTERVAL)
            self._write_indexes()

    def _settle(self, count: int) -> None:
        self._queue_depth -= count
        if self._queue_depth == 0:
            self._drained.set()

    def _fail_items(self, items: list[_Item], reason: str) -> None:
        if not items:
            return
        error = WriteFailedError(f"{len(items)} entries were not written: {reason}")
        for item in items:
            if item[_WAITER] is not None:
                item[_WAITER].fail(error)
        self.metrics.failed += len(items)
        self._settle(len(items))
        log.error("%d accepted log entries were NOT written: %s (last storage error: %s)",
                  len(items), reason, self._appender.storage_error)

