"""A blob's frames decoded in batches, on all cores, and taken back in the order they were found.

The reader's FrameScanner finds frames in a blob's bytes as they download. Frames are grouped into
batches of about BATCH_BYTES; `decode_batch` decrypts, decompresses and splits each frame of a batch
into entries and, given an `EntryTask`, runs it over the batch's entries (e.g. `stats`' aggregation),
so only a small partial result comes back. Batches run in this process until a read has decoded
POOL_AFTER_BYTES, then in worker processes (`python -m blobwriter.decode_worker`), one per core, started
once, lazily (small reads never pay for it), a few batches ahead of the reader.

Answers are taken in the order the frames were found, so the reader sees exactly what a serial scan
sees. When a frame fails authentication, FrameScanner.reject() would rescan from the byte after its
start: `BlobScan` does the same, dropping the frames it had found (and sent) after it and scanning
again from that byte, whose bytes it keeps (`window`) until every frame before them is answered.
It keeps no more than that: bytes past the scanner with no frame in flight before them are dropped,
and past DAMAGE_AHEAD_BYTES of damage it waits for the answers, so a blob that is not ours, or a
long run of damage, is read in bounded memory.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import os
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, Protocol, TypeVar

import orjson

from .codec import Damage, Decoder, Found, FrameScanner, iter_lines, parse_header
from .errors import FrameError, UnknownKeyError
from .keys import SecretKey
from .store import Store

if TYPE_CHECKING:
    from .decode_worker import Worker

BATCH_BYTES = 512 * 1024  # stored bytes of frames per batch (sent once past it: a batch fits a widened pipe)
POOL_AFTER_BYTES = 8 * 1024 * 1024  # stored bytes a read decodes in-process before it starts the pool
AHEAD_PER_WORKER = 3  # batches in flight per worker process
BLOBS_AHEAD = 2  # blobs downloading at once (the one being read and the next)
RANGES_AHEAD = 2  # download ranges buffered per blob, besides the one being scanned
DAMAGE_AHEAD_BYTES = 16 * 1024 * 1024  # bytes of damage a scan reads past frames not answered yet (kept for a rescan)
HEAP_PAD_BYTES = 64 * 1024 * 1024  # free heap a reading process keeps (keep_heap)
HEAP_BLOCK_BYTES = 32 * 1024 * 1024  # blocks it takes from that heap, not mmap (glibc's largest threshold)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

OK, UNKNOWN_KEY, FAILED = 0, 1, 2


class EntryTask(Protocol[T_co]):
    """Work on entries that runs where frames are decoded (a worker process): picklable, and its
    answer for a run of entries is small (a partial aggregate), so entries need not travel back."""

    def run(self, lines: Sequence[bytes]) -> T_co:
        """The partial result for these entries (JSON objects without newline, in order)."""
        ...


class CountEntries:
    """A task that only counts: decoding (authentication, decompression) is the work (`verify`)."""

    def run(self, lines: Sequence[bytes]) -> int:
        return len(lines)


class Outcome(NamedTuple):
    """What decoding one frame gave."""

    status: int  # OK, UNKNOWN_KEY (intact, no key for it, its length checked: skip exactly this frame) or FAILED
    # (reject it: rescan from its second byte)
    plaintext: bytes | None  # index frames always; data frames when no task ran over them
    message: str = ""
    ids: list[bytes | None] | None = None  # with id_field: each entry's id digest (None: no id), in order


class Answer(NamedTuple):
    """A batch's outcomes, one per frame, and the task's result over every data frame decoded OK."""

    outcomes: list[Outcome]
    result: Any


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def keep_heap(pad: int = HEAP_PAD_BYTES) -> None:
    """Have glibc keep `pad` bytes of freed heap instead of returning it to the system. Each frame
    decoded is a few MB of short-lived objects (its plaintext, one bytes per entry); by default glibc
    gives that memory back as soon as it is freed and takes it again, zero-filled page by page, for
    the next frame: half a million page faults and a third of a core for 1,000,000 entries. Setting
    the pad also fixes glibc's threshold for mmap'ing a block at 128 KiB, so each 8 MiB download
    range would still be mapped and faulted in afresh (200,000 faults per 1,000,000 entries from
    Azurite): blocks up to HEAP_BLOCK_BYTES come from the kept heap too. Called by the processes that
    only read: the CLI's reading commands and the reader's worker processes, not a host that also
    writes (under Functions, the export timer shares the writer's process). Elsewhere than glibc:
    nothing to do."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc (musl, macOS)
        return
    mallopt(-2, pad)  # M_TOP_PAD (malloc.h): also ends glibc's dynamic trim and mmap thresholds
    mallopt(-3, HEAP_BLOCK_BYTES)  # M_MMAP_THRESHOLD


def entry_lines(plaintext: bytes) -> list[bytes]:
    """A decoded data frame's entries (as codec.iter_lines, at C speed when the frame is well formed)."""
    if plaintext.endswith(b"\n"):
        return plaintext.split(b"\n")[:-1]
    return list(iter_lines(plaintext))  # not JSON Lines: fails exactly as iter_lines does


def id_digest(line: bytes, id_field: str) -> bytes | None:
    """What `id_field` de-duplication compares: a digest of the entry's value of the field (None: none)."""
    value = orjson.loads(line).get(id_field)
    if value is None:
        return None
    return hashlib.blake2b(orjson.dumps(value), digest_size=12).digest()


def decode_batch(decoder: Decoder, blob: str, date: str, frames: Sequence[bytes], task: EntryTask[Any] | None,
                 id_field: str | None) -> Answer:
    """Decode each frame of one blob (their bytes, headers known valid) and run `task` over the entries
    of every data frame that decoded (None if none did, or no task is given)."""
    outcomes = []
    lines: list[bytes] = []
    for data in frames:
        header = parse_header(data)
        try:
            plaintext = decoder.decode(header, data, blob=blob, date=date)
        except UnknownKeyError as exc:  # its length the scanner has checked (FrameScanner's `known`)
            outcomes.append(Outcome(UNKNOWN_KEY, None, str(exc)))
            continue
        except FrameError as exc:
            outcomes.append(Outcome(FAILED, None, str(exc)))
            continue
        if header.is_index:
            outcomes.append(Outcome(OK, plaintext))
            continue
        entries = entry_lines(plaintext)
        ids = [id_digest(line, id_field) for line in entries] if id_field is not None else None
        if task is None:
            outcomes.append(Outcome(OK, plaintext, "", ids))
        else:
            outcomes.append(Outcome(OK, None, "", ids))
            lines += entries
    return Answer(outcomes, task.run(lines) if task is not None and lines else None)


class Decoding:
    """Where batches are decoded: in this process, and past POOL_AFTER_BYTES in worker processes."""

    def __init__(self, keys: Iterable[SecretKey], *, workers: int | None = None, id_field: str | None = None) -> None:
        self.keys = list(keys)
        self.decoder = Decoder(self.keys)
        self.workers = default_workers() if workers is None else workers
        self.id_field = id_field
        self.in_process_bytes = 0
        self._pool: asyncio.Task[list[Worker]] | None = None
        self._next = 0

    @property
    def parallel(self) -> bool:
        return self._pool is not None

    @property
    def ahead(self) -> int:
        """Batches a blob's scan keeps in flight."""
        return self.workers * AHEAD_PER_WORKER if self._pool is not None else 1

    def submit(self, blob: str, date: str, frames: list[bytes], task: EntryTask[Any] | None) -> asyncio.Future[Answer]:
        """Decode a batch: at once in this process, or sent to a worker (its answer comes later)."""
        size = sum(len(data) for data in frames)
        if self._pool is None and self.workers > 1 and self.in_process_bytes + size > POOL_AFTER_BYTES:
            self._pool = asyncio.ensure_future(self._start())
        if self._pool is not None:
            return asyncio.ensure_future(self._run((blob, date, frames, task, self.id_field)))
        self.in_process_bytes += size
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        try:
            future.set_result(decode_batch(self.decoder, blob, date, frames, task, self.id_field))
        except Exception as exc:  # as a worker's would: raised when the answer is taken, in order
            future.set_exception(exc)
        return future

    async def _start(self) -> list[Worker]:
        from .decode_worker import Worker  # the worker side is loaded only by reads large enough to need it

        return list(await asyncio.gather(*(Worker.start(self.keys) for _ in range(self.workers))))

    async def _run(self, args: tuple[Any, ...]) -> Answer:
        assert self._pool is not None
        workers = await asyncio.shield(self._pool)
        worker = workers[self._next % len(workers)]  # batches are alike: take turns
        self._next += 1
        return await worker.run(args)

    async def close(self) -> None:
        """Stop the worker processes, if any were started."""
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        try:
            workers = await pool
        except Exception:
            return
        await asyncio.gather(*(worker.stop() for worker in workers), return_exceptions=True)


# -- one blob, scanned, decoded ahead, taken back in order -----------------------------------------


@dataclass(slots=True)
class Frame:
    """A frame found and decoded: where it is, its header and bytes (found.data), what decoding gave."""

    found: Found
    outcome: Outcome


@dataclass(slots=True)
class BatchEnd:
    """The end of a batch: its task result, valid for every frame of the batch that decoded OK
    (None when no task ran, no frame decoded, or frames of it were dropped for a rescan)."""

    result: Any
    complete: bool


Item = Damage | Frame | BatchEnd


@dataclass
class _Batch:
    items: list[Found | Damage] = field(default_factory=list)
    size: int = 0
    answer: asyncio.Future[Answer] | None = None
    whole: bool | None = None  # answered, and no frame failed (_answered_whole, once known)


def _answered_whole(batch: _Batch) -> bool:
    """True if every frame of the batch has an answer and none failed (so none will be rescanned)."""
    if batch.whole is not None:
        return batch.whole
    answer = batch.answer
    if answer is None or not answer.done():
        return False
    batch.whole = (not answer.cancelled() and answer.exception() is None
                   and all(outcome.status != FAILED for outcome in answer.result().outcomes))
    return batch.whole


def _rescans(batch: _Batch) -> bool:
    """True if the batch is answered and a frame of it failed: take it now, and rescan, rather than keep
    every byte after that frame until the batches behind it are taken."""
    return bool(batch.size) and batch.answer is not None and batch.answer.done() and not _answered_whole(batch)


def _first_frame(batch: _Batch) -> int:
    """The offset of a batch's first frame (it has one: its size counts their bytes)."""
    return next(item.offset for item in batch.items if isinstance(item, Found))


class BlobScan(Generic[T]):
    """The items of one blob, in blob order: Damage, Frame, and a BatchEnd after each batch."""

    def __init__(self, decoding: Decoding, name: str, date: str, task: EntryTask[T] | None) -> None:
        self._decoding = decoding
        self._name, self._date, self._task = name, date, task
        self._scanner = FrameScanner(known=decoding.decoder.key_ids)
        # The chunks fed from _window_base on, as they came (not copied): what a rescan may need.
        self._window: deque[bytes] = deque()
        self._window_base = 0
        self._eof = False
        self._batch = _Batch()
        self._pending: deque[_Batch] = deque()
        self._frames_end = 0  # where the last frame found ends

    async def items(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[Item]:
        async for chunk in chunks:
            self._window.append(chunk)
            self._scanner.feed(chunk)
            self._scan()
            while self._pending and (len(self._pending) > self._decoding.ahead
                                     or any(_rescans(batch) for batch in self._pending)
                                     or self._scanner.position - self._frames_end > DAMAGE_AHEAD_BYTES):
                # (the last: a long stretch that is not frames; wait for the answers before it, not keep it all)
                for item in await self._take():
                    yield item
            self._trim()
        self._eof = True
        self._scanner.finish()
        self._scan()
        while self._pending:
            for item in await self._take():
                yield item

    def close(self) -> None:
        """Stop: forget what is in flight (a worker's answer still on its way is dropped)."""
        for batch in self._pending:
            if batch.answer is not None:
                batch.answer.cancel()
        self._pending.clear()

    def _scan(self) -> None:
        """Batch what the scanner finds; send each full batch, and the last one at the end."""
        batch = self._batch
        for found in self._scanner:
            batch.items.append(found)
            if isinstance(found, Found):
                batch.size += len(found.data)
                self._frames_end = found.offset + len(found.data)
                if batch.size >= BATCH_BYTES:
                    self._send()
                    batch = self._batch
        if self._eof and batch.items:
            self._send()
        elif batch.size and self._scanner.position - _first_frame(batch) >= BATCH_BYTES:
            self._send()  # damage, not frames, since its first frame: a rescan may need all of it, answer it now

    def _send(self) -> None:
        batch, self._batch = self._batch, _Batch()
        frames = [item.data for item in batch.items if isinstance(item, Found)]
        if frames:
            batch.answer = self._decoding.submit(self._name, self._date, frames, self._task)
        self._pending.append(batch)

    async def _take(self) -> list[Item]:
        """The next batch's items, in order; after a frame that failed, rescan from its second byte."""
        batch = self._pending.popleft()
        answer = await batch.answer if batch.answer is not None else Answer([], None)
        items: list[Item] = []
        outcomes = iter(answer.outcomes)
        for found in batch.items:
            if isinstance(found, Damage):
                items.append(found)
                continue
            outcome = next(outcomes)
            items.append(Frame(found, outcome))
            if outcome.status == FAILED:
                items.append(BatchEnd(None, False))
                self._rescan(found.offset + 1)
                return items
        items.append(BatchEnd(answer.result, True))
        self._trim()
        return items

    def _trim(self) -> None:
        """Forget the chunks no rescan can need: a rescan starts in a frame not answered yet, so keep
        from the first one in flight or, with none, from where the scanner goes on (a blob that is
        not ours, or a long run of damage, would otherwise be kept whole). Per chunk and batch."""
        keep = self._scanner.position
        for batch in (*self._pending, self._batch):
            if batch.size and not _answered_whole(batch):
                keep = _first_frame(batch)
                break
        window = self._window
        while window and self._window_base + len(window[0]) <= keep:
            self._window_base += len(window.popleft())

    def _rescan(self, offset: int) -> None:
        """As FrameScanner.reject(): forget the frames found after `offset` and look for the next valid
        header from there, in the bytes fed so far (then in the bytes still to come)."""
        self.close()
        self._batch = _Batch()
        self._scanner = FrameScanner(offset, damaged=True, known=self._decoding.decoder.key_ids)
        rest = b"".join(self._window)[offset - self._window_base:]
        self._scanner.feed(rest)
        self._window = deque([rest])
        self._window_base = offset
        if self._eof:
            self._scanner.finish()
        self._scan()


# -- downloads ahead ----------------------------------------------------------------------------


class Prefetch:
    """The chunks of a list of blobs, downloaded ahead: BLOBS_AHEAD blobs at once, RANGES_AHEAD
    ranges each, taken in the list's order. A download error is raised where its blob is read."""

    _END = object()

    def __init__(self, store: Store, names: Sequence[str]) -> None:
        self._store = store
        self._names = list(names)
        self._queues: dict[int, asyncio.Queue[Any]] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}

    async def blobs(self) -> AsyncGenerator[tuple[str, AsyncIterator[bytes]], None]:
        try:
            for i, name in enumerate(self._names):
                for ahead in range(i, min(i + BLOBS_AHEAD, len(self._names))):
                    self._start(ahead)
                yield name, self._chunks(i)
                self._stop(i)
        finally:
            for i in list(self._tasks):
                self._stop(i)

    def _start(self, i: int) -> None:
        if i not in self._tasks:
            queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=RANGES_AHEAD)
            self._queues[i] = queue
            self._tasks[i] = asyncio.create_task(self._download(self._names[i], queue))

    def _stop(self, i: int) -> None:
        task = self._tasks.pop(i, None)
        if task is not None:
            task.cancel()
        self._queues.pop(i, None)

    async def _download(self, name: str, queue: asyncio.Queue[Any]) -> None:
        chunks = self._store.read(name)
        try:
            async for chunk in chunks:
                await queue.put(chunk)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await queue.put(exc)
            return
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
        await queue.put(self._END)

    async def _chunks(self, i: int) -> AsyncIterator[bytes]:
        queue = self._queues[i]
        while True:
            item = await queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

