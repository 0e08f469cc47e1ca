"""LogWriter: accept entries at once, write them in batches in the background, lose none.

`write()` validates and serializes an entry, puts it on a bounded in-memory queue and returns;
a background task takes up to `batch_size` entries (or what arrived within `batch_timeout`),
groups them by the UTC date of their timestamp, encodes each group into frames off the event
loop and appends them, up to `max_concurrent_writes` at a time. A failed append is retried with
backoff, the same frame bytes each time (the reader drops a frame that lands twice).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import signal
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

import orjson

from .codec import TAG_SIZE, Body, Encoder
from .config import Settings
from .errors import EntryError, EntryTooLargeError, QueueFullError, StoreError, WriteFailedError, WriterStoppedError
from .metrics import WriterMetrics
from .store import Appended, Store, open_store

log = logging.getLogger("blobwriter.writer")

FIRST_BACKOFF = 0.5  # seconds before the first batch-level retry; doubles up to retry_backoff_max
# An index frame records where this writer's frames landed (blob, offset, tag), so `verify` can
# tell a swapped, moved or removed frame. One is appended per part every INDEX_INTERVAL seconds
# or INDEX_MAX_RECORDS frames, and at stop().
INDEX_INTERVAL = 30.0
INDEX_MAX_RECORDS = 1000


class Prepared(NamedTuple):
    """A validated entry: the UTC date it belongs to and its JSON serialization."""

    date: str
    line: bytes


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


class _Frame(NamedTuple):
    date: str
    body: Body
    data: bytes  # the sealed frame of the current attempt
    items: list[_Item]


def utc_date(timestamp: Any) -> str:
    """The UTC date (YYYY-MM-DD) of an ISO-8601 timestamp; naive timestamps mean UTC."""
    if not isinstance(timestamp, str):
        raise EntryError(f"'timestamp' must be an ISO-8601 string, got {type(timestamp).__name__}")
    try:
        moment = datetime.fromisoformat(timestamp)
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC)
        return moment.date().isoformat()
    except (ValueError, OverflowError):
        shown = timestamp if len(timestamp) <= 64 else timestamp[:64] + "..."
        raise EntryError(f"'timestamp' is not an ISO-8601 date-time: {shown!r}") from None


def now_timestamp() -> tuple[str, str]:
    """The current UTC time as an ISO-8601 string with `Z`, and its date."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", now.date().isoformat()


class LogWriter:
    """Batching, encrypting writer of log entries to a Store (append blobs or a directory)."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        settings.require("encryption_key")
        self.settings = settings
        self.store = store if store is not None else open_store(settings)
        self._encoder = Encoder(settings.encryption_key, compression=settings.compression)  # type: ignore[arg-type]
        self._sequence = itertools.count(1)
        self._pending: deque[_Item] = deque()
        self._outstanding = 0  # accepted and neither written nor reported failed
        self._urgent = 0  # durable entries queued: write them without waiting for batch_timeout
        self._flushing = 0  # flush() calls waiting: likewise
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._slots = asyncio.Semaphore(settings.max_concurrent_writes)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._index: dict[str, tuple[str, list[bytes]]] = {}  # part name -> (date, unindexed records)
        self._index_tasks: set[asyncio.Task[None]] = set()
        self._index_timer: asyncio.Task[None] | None = None
        self._opener: asyncio.Task[None] | None = None
        self._state = "new"
        self._storage_error: str | None = None
        self._backoff = 0.0
        self._sigterm_installed = False
        self.metrics = WriterMetrics(queue_depth=lambda: self._outstanding, in_flight=lambda: len(self._in_flight))

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """new, running, stopping, stopped, or failed (the batch task died)."""
        return self._state

    @property
    def writer_id(self) -> str:
        return self._encoder.writer_id.hex()

    async def start(self, *, handle_sigterm: bool = False) -> None:
        """Open the store and start the batch task; optionally flush on SIGTERM before exiting."""
        if self._state != "new":
            raise WriterStoppedError(f"writer cannot start from state {self._state!r}")
        try:
            await self.store.open()
        except Exception as exc:  # storage may come back: keep opening (creating the container) meanwhile
            log.warning("Storage not ready at start (%s: %s); retrying in the background", type(exc).__name__, exc)
            self._opener = asyncio.create_task(self._open_until_ready(), name="blobwriter-open")
        self._state = "running"
        self._task = asyncio.create_task(self._run(), name="blobwriter-batches")
        self._task.add_done_callback(self._on_task_done)
        self._index_timer = asyncio.create_task(self._index_periodically(), name="blobwriter-index")
        if handle_sigterm:
            self._install_sigterm()
        log.debug("Log writer started (batch_size=%d, timeout=%ss)", self.settings.batch_size,
                  self.settings.batch_timeout)

    async def stop(self, timeout: float | None = None) -> None:
        """Write everything queued and wait for appends in flight; report what could not be written.

        Gives up after `timeout` seconds (default: the `stop_timeout` setting) if storage keeps
        failing; entries still unwritten then are counted as failed and logged as an error.
        """
        if self._state in ("new", "stopped"):
            self._state = "stopped"
            return
        timeout = self.settings.stop_timeout if timeout is None else timeout
        if self._state == "running":
            self._state = "stopping"
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
        self._state = "stopped"
        self._remove_sigterm()
        await self.store.close()

    async def __aenter__(self) -> LogWriter:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _open_until_ready(self) -> None:
        delay = FIRST_BACKOFF
        while True:
            await asyncio.sleep(delay)
            try:
                await self.store.open()
                log.info("Storage is ready")
                return
            except Exception as exc:
                log.debug("Storage still not ready: %s: %s", type(exc).__name__, exc)
                delay = min(self.settings.retry_backoff_max, delay * 2)

    # -- accepting entries -----------------------------------------------------------------

    def prepare(self, entry: Any) -> Prepared:
        """Validate and serialize one entry (adding a UTC timestamp if it has none)."""
        if not isinstance(entry, Mapping):
            raise EntryError(f"an entry must be a JSON object, not {_json_type(entry)}")
        timestamp = entry.get("timestamp")
        if timestamp is None:
            timestamp, date = now_timestamp()
            entry = {**entry, "timestamp": timestamp}
        else:
            date = utc_date(timestamp)
        try:
            # Copied to an exact-size object: orjson's output keeps its larger working buffer's
            # allocation alive, ~9 KB of memory per queued 1.2 KB entry instead of ~1.7 KB.
            line = bytes(memoryview(orjson.dumps(entry)))
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise EntryError(f"entry is not JSON-serializable: {exc}") from None
        if len(line) > self.settings.max_entry_bytes:
            raise EntryTooLargeError(
                f"entry is {len(line)} bytes serialized; the limit (max_entry_bytes) is {self.settings.max_entry_bytes}"
            )
        return Prepared(date, line)

    def submit(self, prepared: Sequence[Prepared], *, durable: bool = False) -> asyncio.Future[None] | None:
        """Queue validated entries, all or none; return a future for durable writes.

        Raises QueueFullError (back-pressure) when they would exceed `max_queue_size`, and
        EntryError when they are more than the queue can ever hold (retrying would not help).
        """
        if self._state != "running":
            raise WriterStoppedError(f"writer is {self._state}; entries are not accepted")
        count = len(prepared)
        if count > self.settings.max_queue_size:
            self.metrics.rejected += count
            raise EntryError(f"{count} entries in one call; at most max_queue_size="
                             f"{self.settings.max_queue_size} fit in the queue: split the call")
        if self._outstanding + count > self.settings.max_queue_size:
            self.metrics.rejected += count
            raise QueueFullError(
                f"queue full: {self._outstanding} entries waiting for storage (max_queue_size="
                f"{self.settings.max_queue_size})", retry_after=self.retry_after(),
            )
        if count == 0:
            return None
        waiter = _Waiter(count) if durable else None
        now = time.monotonic()
        was_empty = not self._pending
        self._pending.extend((p.date, p.line, waiter, now) for p in prepared)
        self._outstanding += count
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
        try:
            prepared = [self.prepare(e) for e in entries]
        except EntryError:
            self.metrics.rejected += 1
            raise
        future = self.submit(prepared, durable=wait)
        if future is not None:
            await future
        return len(prepared)

    async def flush(self) -> None:
        """Wait until every entry accepted so far is written (or reported failed)."""
        if self._outstanding:
            self._flushing += 1
            self._wakeup.set()
            try:
                await self._drained.wait()
            finally:
                self._flushing -= 1

    def retry_after(self) -> int:
        """Seconds a caller turned away by back-pressure should wait before trying again."""
        return max(1, round(max(self._backoff, self.settings.batch_timeout)))

    def health(self) -> dict[str, Any]:
        """State for health checks: ok is False if the batch task died or appends are failing."""
        ok = self._state == "running" and self._storage_error is None
        return {
            "ok": ok,
            "state": self._state,
            "queue_depth": self._outstanding,
            "max_queue_size": self.settings.max_queue_size,
            "appends_in_flight": len(self._in_flight),
            "storage_error": self._storage_error,
            "writer_id": self.writer_id,
        }

    # -- the batch task --------------------------------------------------------------------

    async def _run(self) -> None:
        batch_size = self.settings.batch_size
        timeout = self.settings.batch_timeout
        pending = self._pending
        while True:
            if not pending:
                if self._state != "running":
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if len(pending) < batch_size and not (self._urgent or self._flushing) and self._state == "running":
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
        self._state = "failed"
        log.error("Log writer batch task died; entries are no longer accepted", exc_info=task.exception())
        self._fail_items(list(self._pending), "the writer's batch task died")
        self._pending.clear()

    async def _write_batch(self, batch: list[_Item]) -> None:
        groups: dict[str, list[_Item]] = {}
        for item in batch:
            groups.setdefault(item[_DATE], []).append(item)
        frames: list[_Frame] | None = None
        appended = 0

        def unwritten() -> list[_Item]:
            return batch if frames is None else [i for f in frames[appended:] for i in f.items]

        try:
            frames = await asyncio.to_thread(self._encode_groups, groups)
            for frame in frames:
                await self._append(frame)
                appended += 1
        except asyncio.CancelledError:
            self._fail_items(unwritten(), "the writer stopped while storage was failing")
            raise
        except Exception as exc:  # encoding cannot fail for a prepared entry; if it does, say so
            self._fail_items(unwritten(), f"encoding failed: {exc!r}")

    def _encode_groups(self, groups: dict[str, list[_Item]]) -> list[_Frame]:
        """Encode each date's entries into frames no larger than max_chunk_bytes (in a thread)."""
        frames: list[_Frame] = []
        limit = self.settings.max_chunk_bytes
        for date, items in groups.items():
            work = [items]
            while work:
                part = work.pop()
                body = self._encoder.body([i[_LINE] for i in part], next(self._sequence), date=date)
                data = self._encoder.seal(body)
                if len(data) > limit and len(part) > 1:
                    half = len(part) // 2
                    work.extend((part[half:], part[:half]))  # first half is encoded next
                    continue
                if len(data) > limit:  # cannot happen: max_entry_bytes leaves room for the overhead
                    raise StoreError(f"one entry encodes to {len(data)} bytes, over max_chunk_bytes={limit}")
                frames.append(_Frame(date, body, data, part))
        return frames

    async def _append(self, frame: _Frame) -> None:
        data, items, attempt = frame.data, frame.items, 0
        while True:
            started = time.monotonic()
            try:
                landed = await self.store.append(frame.date, data)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                self.metrics.retries += 1
                self._storage_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                self._backoff = min(self.settings.retry_backoff_max, FIRST_BACKOFF * 2 ** (attempt - 1))
                delay = self._backoff * random.uniform(0.5, 1.0)
                log.warning("Append of %d entries for %s failed (attempt %d); retrying in %.1fs: %s",
                            len(items), frame.date, attempt, delay, self._storage_error)
                await asyncio.sleep(delay)
                # The failed attempt may still have landed; the retry is sealed with its own attempt
                # number so that readers drop it as a retry, not flag it as a replay.
                data = self._encoder.seal(frame.body, attempt)
        self.metrics.append_seconds.observe(time.monotonic() - started)
        self._storage_error = None
        self._backoff = 0.0
        if frame.body.index:
            log.debug("Wrote an index of %d frames to %s", frame.body.entries, landed.name)
            return
        self._record(frame.date, landed, data, frame.body.sequence, attempt)
        self.metrics.batch_entries.observe(len(items))
        self.metrics.chunks += 1
        self.metrics.written += len(items)
        self.metrics.bytes_raw += frame.body.plaintext_length
        self.metrics.bytes_stored += len(data)
        for item in items:
            if item[_WAITER] is not None:
                item[_WAITER].done_one()
        self._settle(len(items))
        log.debug("Wrote %d log entries to %s", len(items), landed.name)

    # -- index frames ----------------------------------------------------------------------

    def _record(self, date: str, landed: Appended, data: bytes, sequence: int, attempt: int) -> None:
        """Note where a frame landed, for the part's next index frame."""
        _, records = self._index.setdefault(landed.name, (date, []))
        records.append(orjson.dumps({"blob": landed.name, "offset": landed.offset, "length": len(data),
                                     "sequence": sequence, "attempt": attempt, "tag": data[-TAG_SIZE:].hex()}))
        if len(records) >= INDEX_MAX_RECORDS:
            self._write_indexes(landed.name)

    def _write_indexes(self, *names: str) -> None:
        """Start appending index frames for the given parts (default: every part with records)."""
        for name in names or list(self._index):
            date, records = self._index.pop(name)
            body = self._encoder.body(records, next(self._sequence), date=date, index=True)
            task = asyncio.create_task(self._append(_Frame(date, body, self._encoder.seal(body), [])))
            self._index_tasks.add(task)
            task.add_done_callback(self._index_tasks.discard)

    async def _index_periodically(self) -> None:
        while True:
            await asyncio.sleep(INDEX_INTERVAL)
            self._write_indexes()

    def _settle(self, count: int) -> None:
        self._outstanding -= count
        if self._outstanding == 0:
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
                  len(items), reason, self._storage_error)

    # -- SIGTERM ---------------------------------------------------------------------------

    def _install_sigterm(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._previous_sigterm = signal.getsignal(signal.SIGTERM)
            loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
            self._sigterm_installed = True
        except (ValueError, RuntimeError, NotImplementedError) as exc:  # not the main thread, or no support
            log.debug("Not flushing on SIGTERM: cannot install a handler here (%s)", exc)

    def _remove_sigterm(self) -> None:
        if self._sigterm_installed:
            self._sigterm_installed = False
            asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._previous_sigterm)

    def _on_sigterm(self) -> None:
        log.info("SIGTERM: flushing %d queued log entries before exit", self._outstanding)

        async def flush_then_exit() -> None:
            await self.stop()
            os.kill(os.getpid(), signal.SIGTERM)  # the handler in place before ours now runs

        asyncio.get_running_loop().create_task(flush_then_exit())


def _json_type(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "null"
    return type(value).__name__
