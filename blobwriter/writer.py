"""LogWriter: accept entries at once, write them in batches in the background, lose none.

`write()` admits an entry (entries.py) and puts it on a queue bounded in entries
(`max_queue_size`) and bytes (`max_queue_bytes`), then returns. A background task takes up to
`batch_size` entries (or what arrived within `batch_timeout`), groups each batch by the UTC
date of its entries and has the Appender (appender.py) encode the groups into frames off the
event loop and append them. This module keeps the queue, the batch loop and the lifecycle; it
resolves `wait=True` callers and `flush()`, counts, and keeps the index of where frames landed.
Every accepted entry ends written or reported failed.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from .appender import Appender, Frame, Landed
from .codec import Encoder, frame_tag
from .config import Settings
from .entries import Admission, Prepared, Rules, admit
from .entry_queue import DATE, ENQUEUED, LINE, EntryQueue, Item, Settled, settled_of
from .errors import EntryError, QueueFullError, StoreError, WriteFailedError, WriterStoppedError
from .index import INDEX_INTERVAL, IndexBook, IndexRecord
from .metrics import WriterMetrics
from .privacy import Privacy
from .store import Store, open_store

log = logging.getLogger("blobwriter.writer")

HEALTH_PROBE_SECONDS = 5.0  # how long a storage probe may take
HEALTH_PROBE_INTERVAL = 5.0  # at most one storage probe this often, however many health checks come
OTHER_LOOP = ("a LogWriter belongs to the event loop that ran start(), and is not thread-safe: call it from that "
              "loop; from another thread, asyncio.run_coroutine_threadsafe(writer.write(entry), that_loop); from "
              "synchronous code, keep one loop running for the writer's life (README, 'Writing from Python')")
ENCODE_JOBS = 2  # encoding jobs (worker threads) at once
ENCODE_ENTRIES = 4096  # entries one encoding job takes at most


class WriterState(enum.StrEnum):
    """Where a LogWriter is in its life."""

    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"  # the batch task died; nothing more is accepted


_date, _line = itemgetter(DATE), itemgetter(LINE)


def _carry_of(group: list[Item]) -> Callable[[int, int], Settled]:
    """What a frame of group[start:end] carries back to the queue."""
    return lambda start, end: settled_of(group[start:end])


class LogWriter:
    """Batching, encrypting writer of log entries to a Store (append blobs or a directory)."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        settings.require("encryption_key")
        self.settings = settings
        self.rules = Rules.from_settings(settings)
        # Without a clock to read or a call's own privacy controls, one Admission serves every call
        # (by whether the values came from JSON text, which cannot hold NaN or infinity).
        self._admissions = None if self.rules.timed else {
            from_json: Admission(self.rules, check_numbers=not from_json) for from_json in (False, True)}
        self.store = store if store is not None else open_store(settings)
        self._queue = EntryQueue(settings.max_queue_size, settings.max_queue_bytes)
        self.metrics = WriterMetrics(queue_depth=lambda: self._queue.depth, queue_bytes=lambda: self._queue.bytes,
                                     in_flight=lambda: self._appender.in_flight)
        self._appender = self._make_appender()
        self._pid = os.getpid()
        self._wakeup = asyncio.Event()
        self._encoders = asyncio.Semaphore(ENCODE_JOBS)
        self._encoding: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop that ran start(): the writer's own
        self._index = IndexBook()
        self._indexed = False  # the final index frames were handed to the appender (stop)
        self._index_timer: asyncio.Task[None] | None = None
        self._opener: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[str | None] | None = None
        self._probed: tuple[float, str | None] | None = None  # (when, error or None) of the last probe
        self._unlogged: dict[str, int] = {}  # why -> entries reported failed and not yet logged (_report_failed)
        self._unlogged_lock = threading.Lock()  # _report_failed may run in an encoding thread
        self._state = WriterState.NEW

    def _make_appender(self) -> Appender:
        s = self.settings
        return Appender(self.store, Encoder(s.require("encryption_key"), compression=s.compression), self.metrics,
                        max_append_bytes=s.max_append_bytes, max_in_flight=s.max_concurrent_writes,
                        max_blocks=s.max_blocks_per_blob, retry_backoff_max=s.retry_backoff_max,
                        give_up_after=s.give_up_after)

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
        return self._queue.depth

    async def start(self) -> None:
        """Open the store and start the batch task."""
        if self._state != WriterState.NEW:
            raise WriterStoppedError(f"writer cannot start from state {self._state.value!r}")
        if os.getpid() != self._pid:  # made before a fork, started in the child: a writer id of its own
            self._appender, self._pid = self._make_appender(), os.getpid()
        try:
            await self.store.open()
        except StoreError as exc:  # storage may come back: keep opening (creating the container) meanwhile
            log.warning("Storage not ready at start (%s); retrying in the background", exc)
            self._opener = asyncio.create_task(self._open_until_ready(), name="blobwriter-open")
        self._state = WriterState.RUNNING
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="blobwriter-batches")
        self._task.add_done_callback(self._on_task_done)
        self._index_timer = asyncio.create_task(self._index_periodically(), name="blobwriter-index")
        log.debug("Log writer started (batch_size=%d, timeout=%ss)", self.settings.batch_size,
                  self.settings.batch_timeout)

    async def stop(self, timeout: float | None = None) -> None:
        """Write everything queued, in full-size appends; report what could not be written.

        Everything queued is encoded and sent; failed appends are retried for `timeout` seconds
        (default: the `stop_timeout` setting). Then nothing is retried: appends in flight are waited
        for and frames never sent are sent once (so 0 means one attempt), for at most storage_timeout
        more; entries still unwritten then are counted as failed and logged as an error.
        """
        if self._state in (WriterState.NEW, WriterState.STOPPED):
            self._state = WriterState.STOPPED
            return
        timeout = self.settings.stop_timeout if timeout is None else timeout
        if self._state == WriterState.RUNNING:
            self._state = WriterState.STOPPING
            if self._queue.pending:
                log.debug("Flushing %d remaining log entries", len(self._queue.pending))
            self._wakeup.set()
        for helper in (self._index_timer, self._opener, self._probe):
            if helper is not None:
                helper.cancel()
        try:
            # Everything queued goes to the appender (encoding only, no storage request: the timeout, how
            # long failed appends are retried, does not cut it short).
            if self._task is not None:  # waited for, never cancelled by this wait, whatever its end
                await asyncio.wait((self._task,))
            await asyncio.gather(*self._encoding)
            try:
                async with asyncio.timeout(timeout):
                    await self._write_out()
            except TimeoutError:  # no time left to retry: one last attempt, bounded too
                self._appender.last_round()
                async with asyncio.timeout(self.settings.storage_timeout):
                    await self._write_out()
        except (TimeoutError, Exception):  # storage kept failing, or the batch task died: reported below
            pass
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._encoding, return_exceptions=True)  # never cancelled: each settles its entries
        reason = "the writer stopped before storage accepted them"
        await self._appender.abort(reason)
        self._fail_items(self._queue.take(len(self._queue.pending)), reason)
        self._log_failed()
        self._state = WriterState.STOPPED
        await self.store.close()

    async def _write_out(self) -> None:
        """Wait until every data frame has landed or failed, then write the final index frames (once)."""
        await self._appender.drain()
        if not self._indexed:
            self._indexed = True
            self._write_indexes(final=True)  # now that every data frame has landed and is recorded
            await self._appender.drain()

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

    def admit(self, values: Iterable[tuple[int, Any]], *, where: str = "index", privacy: Privacy | None = None,
              from_json: bool = False) -> list[Prepared]:
        """Validate and serialize one call's (position, value) pairs, all or nothing (entries.admit);
        a refused call's entries are counted as rejected, once. `privacy` narrows the configured privacy
        controls for this call; `from_json` says the values were parsed from JSON text (which cannot hold
        NaN or infinity, so they need not be looked for)."""
        s = self.settings
        if self._admissions is not None and privacy is None:
            admission = self._admissions[from_json]
        else:
            admission = Admission(self.rules, privacy=privacy, check_numbers=not from_json)
        try:
            return admit(values, max_entry_bytes=s.max_entry_bytes, max_entries=s.max_queue_size,
                         max_bytes=s.max_queue_bytes, where=where, admission=admission)
        except EntryError as exc:
            self.metrics.rejected += exc.consumed
            raise

    def submit(self, prepared: list[Prepared], *, durable: bool = False) -> asyncio.Future[None] | None:
        """Queue admitted entries, all or none; return a future for durable writes.

        Raises QueueFullError (back-pressure) when they would pass `max_queue_size` or `max_queue_bytes`.
        """
        if self._state != WriterState.RUNNING:
            if self._state == WriterState.NEW:
                raise WriterStoppedError("writer is not started: call start() (or use `async with LogWriter(...)`) "
                                         "before writing")
            raise WriterStoppedError(f"writer is {self._state.value}; entries are not accepted")
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not self._loop:
            raise RuntimeError(OTHER_LOOP)
        if not prepared:
            return None
        was_empty = not self._queue.pending
        try:
            waiter = self._queue.put(prepared, durable=durable, retry_after=self.retry_after)
        except QueueFullError:
            self.metrics.rejected += len(prepared)
            raise
        self.metrics.accepted += len(prepared)
        if was_empty or waiter is not None or len(self._queue.pending) >= self.settings.batch_size:
            self._wakeup.set()
        return waiter.future if waiter is not None else None

    async def write(self, entry: Any, *, wait: bool = False, privacy: Privacy | None = None) -> None:
        """Queue one entry and return at once; with wait=True, return once it is appended. `entry` is a dict
        (or another Mapping) whose values are JSON types (entries.py). `privacy` keeps less of this entry
        than the settings say (it can only narrow them)."""
        future = self.submit(self.admit(((0, entry),), privacy=privacy), durable=wait)
        if future is not None:
            await future

    async def write_many(self, entries: Iterable[Any], *, wait: bool = False, privacy: Privacy | None = None) -> int:
        """Queue several entries, all or none (one bad entry rejects the call)."""
        prepared = self.admit(enumerate(entries), privacy=privacy)
        future = self.submit(prepared, durable=wait)
        if future is not None:
            await future
        return len(prepared)

    async def flush(self) -> None:
        """Wait until every entry accepted before this call is written (or reported failed); entries
        accepted meanwhile are not waited for."""
        done = self._queue.flush()
        if done is not None:
            self._wakeup.set()
            await done

    def retry_after(self) -> int:
        """Seconds a caller turned away by back-pressure should wait before trying again."""
        if self._state != WriterState.RUNNING:
            return 5
        return max(1, round(max(self._appender.backoff, self.settings.batch_timeout)))

    async def health(self, *, probe: bool = True) -> dict[str, Any]:
        """State for health checks: ok is False if the batch task died, appends are failing, or
        (with `probe`) storage did not answer a probe within 5 seconds. Storage is probed at most once
        every HEALTH_PROBE_INTERVAL seconds, however many callers ask: the others get the last result."""
        storage_error = self._appender.storage_error
        if probe and self._state == WriterState.RUNNING and storage_error is None:
            storage_error = await self._probe_storage()
        return {
            "ok": self._state == WriterState.RUNNING and storage_error is None,
            "state": self._state.value,
            "queue_depth": self._queue.depth,
            "queue_bytes": self._queue.bytes,
            "max_queue_size": self.settings.max_queue_size,
            "max_queue_bytes": self.settings.max_queue_bytes,
            "appends_in_flight": self._appender.in_flight,
            "storage_error": storage_error,
            "writer_id": self.writer_id,
        }

    def shed(self, body_bytes: int) -> None:
        """Refuse (QueueFullError) a request body that would not fit the queue now: before it is read when
        its size is declared (Content-Length), else before it is parsed. Under overload, a refusal costs
        no reading or parsing (and a client that sent `Expect: 100-continue` does not send the body).
        The body's size stands for its entries' serialized size (JSON Lines from a logger: about the
        same). Only while entries are queued, and only for a body within max_queue_bytes: a body alone
        in an empty queue, or one larger than the whole budget, is parsed and judged by its entries
        (accepted, or 413 if they can never fit, which a retry would not change)."""
        queue = self._queue
        if queue.depth and body_bytes <= queue.max_bytes:
            try:
                queue.make_room(1, body_bytes, self.retry_after, f" leave no room for a body of {body_bytes} bytes")
            except QueueFullError:
                self.metrics.shed += 1
                raise

    async def _probe_storage(self) -> str | None:
        """The error of the last storage probe (None: it answered), probing again if that one is old."""
        if self._probed is not None and time.monotonic() - self._probed[0] < HEALTH_PROBE_INTERVAL:
            return self._probed[1]
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._probe_once(), name="blobwriter-probe")
        probe = self._probe
        try:
            return await asyncio.shield(probe)
        except asyncio.CancelledError:
            if probe.cancelled():  # stop() ended the probe, not our caller
                return "the writer is stopping"
            raise

    async def _probe_once(self) -> str | None:
        error: str | None = None
        try:
            async with asyncio.timeout(HEALTH_PROBE_SECONDS):
                await self.store.check()
        except StoreError as exc:
            error = str(exc)
        except TimeoutError:
            error = f"storage did not answer a probe within {HEALTH_PROBE_SECONDS:.0f}s"
        self._probed = (time.monotonic(), error)
        return error

    # -- the batch task --------------------------------------------------------------------

    async def _run(self) -> None:
        batch_size = self.settings.batch_size
        timeout = self.settings.batch_timeout
        pending = self._queue.pending
        while True:
            if not pending:
                if self._state != WriterState.RUNNING:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if len(pending) < batch_size and not self._rush():
                delay = pending[0][ENQUEUED] + timeout - time.monotonic()
                if delay > 0:
                    self._wakeup.clear()
                    try:
                        async with asyncio.timeout(delay):
                            await self._wakeup.wait()
                    except TimeoutError:
                        pass
                    continue
            await self._encoders.acquire()
            # Whole batches, and the partial one at the end only when it is due: timed out, or wanted now.
            count = min(len(pending), max(batch_size, ENCODE_ENTRIES - ENCODE_ENTRIES % batch_size))
            due = self._rush() or pending[0][ENQUEUED] + timeout <= time.monotonic()
            if count >= batch_size and (count < len(pending) or not due):
                count -= count % batch_size
            items = self._queue.take(count)
            job = asyncio.create_task(self._encode_job(items))
            self._encoding.add(job)
            job.add_done_callback(self._encoding.discard)

    def _rush(self) -> bool:
        """Write what is queued without waiting for batch_timeout: a durable write, a flush, or stopping."""
        return bool(self._queue.urgent or self._queue.flushing or self._state != WriterState.RUNNING)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        """The batch task ended while the writer runs: it died, or something else cancelled it (an
        application's "cancel every other task", or the end of the loop that ran start(): asyncio.run
        cancels what is left). Nothing more can be written: refuse entries, report what is queued."""
        if task.cancelled():
            if self._state != WriterState.RUNNING:  # stop() cancelled it, past its timeout: stop() reports
                return
            error, what = None, ("was cancelled from outside the writer (did the event loop that ran start() "
                                 "end, or was every task cancelled?)")
        else:
            error, what = task.exception(), "died"
            if error is None:
                return
        self._state = WriterState.FAILED
        log.error("Log writer batch task %s; entries are no longer accepted", what, exc_info=error)
        self._fail_items(self._queue.take(len(self._queue.pending)),
                         "the writer's batch task " + ("died" if error else "was cancelled"))

    async def _encode_job(self, items: list[Item]) -> None:
        """Encode taken entries into frames (in a worker thread) and hand them to the appender."""
        try:
            frames = await asyncio.to_thread(self._encode, items)
        except asyncio.CancelledError:  # not done by the writer itself (it waits for these jobs)
            self._fail_items(items, "the writer stopped before storage accepted them")
            raise
        except Exception as exc:  # encoding cannot fail for an admitted entry; if it does, say so
            log.error("Encoding failed", exc_info=exc)
            self._fail_items(items, f"encoding failed: {exc!r}")
            return
        finally:
            self._encoders.release()
        self._appender.submit(frames)

    def _encode(self, items: list[Item]) -> list[Frame]:
        """Frames of `items`: consecutive batches of batch_size entries, each grouped by date."""
        frames: list[Frame] = []
        batch_size = self.settings.batch_size
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            groups: dict[str, list[Item]]
            if len(set(map(_date, batch))) == 1:  # the common case, found in C: one date
                groups = {batch[0][DATE]: batch}
            else:
                groups = {}
                for item in batch:
                    groups.setdefault(item[DATE], []).append(item)
            for date, group in groups.items():
                frames += self._appender.encode(date, list(map(_line, group)), self._frame_settled,
                                                _carry_of(group))
        return frames

    def _frame_settled(self, frame: Frame, outcome: Landed | BaseException) -> None:
        """A data frame landed (index it, count it, resolve its waiters) or was given up on (report it)."""
        carry: Settled = frame.carry
        entries, _, waiters, _ = carry
        if isinstance(outcome, Landed):
            record = IndexRecord(outcome.name, outcome.offset, len(frame.data), frame.body.sequence, frame.attempt,
                                 frame_tag(frame.data).hex())
            if self._index.record(frame.date, record):
                self._write_indexes(frame.date)
            m = self.metrics
            m.batch_entries.observe(entries)
            m.frames += 1
            m.written += entries
            m.bytes_raw += frame.body.plaintext_length
            m.bytes_stored += len(frame.data)
            for waiter in waiters:
                waiter.done_one()
            log.debug("Wrote %d log entries to %s", entries, outcome.name)
        else:
            error = WriteFailedError(f"{entries} entries were not written: {outcome}")
            for waiter in waiters:
                waiter.fail(error)
            self._report_failed(entries, str(outcome))
        self._queue.settle(carry)

    # -- index frames ----------------------------------------------------------------------

    def _write_indexes(self, date: str | None = None, *, final: bool = False, close_before: str | None = None) -> None:
        """Append index frames for one date (default: every date with records waiting; with `final`,
        every date whose chain is open, closing it; with `close_before`, also closing each earlier date
        that had nothing to index since the last time: IndexBook.take)."""
        self._appender.submit([self._appender.encode_index(p.date, p.lines, self._index_settled)
                               for p in self._index.take(date, final=final, close_before=close_before)])

    def _index_settled(self, frame: Frame, outcome: Landed | BaseException) -> None:
        if isinstance(outcome, Landed):
            log.debug("Wrote an index of %d frames to %s", frame.body.entries, outcome.name)
        else:
            log.warning("An index frame of %d records was not written: %s", frame.body.entries, outcome)

    async def _index_periodically(self) -> None:
        while True:
            await asyncio.sleep(INDEX_INTERVAL)
            self._write_indexes(close_before=datetime.now(UTC).date().isoformat())

    def _fail_items(self, items: list[Item], reason: str) -> None:
        if items:
            entries = self._queue.fail(items, reason)[0]
            self._report_failed(entries, f"{reason} (last storage error: {self._appender.storage_error})")

    def _report_failed(self, entries: int, why: str) -> None:
        """Count entries reported failed, and log them: one line per reason and turn of the event loop, so
        frames given up on together (a failed append of many frames, stop()'s last round) are one line,
        not one per frame. (May run in an encoding thread: a frame out of attempt numbers.)"""
        with self._unlogged_lock:
            self.metrics.failed += entries
            first = not self._unlogged
            self._unlogged[why] = self._unlogged.get(why, 0) + entries
        if first:
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._log_failed)
            else:
                self._log_failed()

    def _log_failed(self) -> None:
        with self._unlogged_lock:
            unlogged, self._unlogged = self._unlogged, {}
        for why, entries in unlogged.items():
            log.error("%d accepted log entries were NOT written: %s", entries, why)
