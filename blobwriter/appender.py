"""What is done with frames: encode batches into frames, and append them to the writer's own blobs.

This is the exporter side of the writer (the queue, batches and lifecycle are in writer.py). It
knows frames, blob names, the store and retries; it knows nothing of entries or waiters: each
frame carries a `settle` callback that it calls once, with where the frame landed or why it
never will.

- **One blob per writer and date** (layout.py): part `p` of `{prefix}{date}/{writer}`, rolled to
  the next part at `max_blocks_per_blob` committed blocks and on `BlockCountExceedsLimit`, so the
  request rate on any blob is one writer's, however many instances run.
- **Many frames per append.** Frames wait in their blob's `Lane`; whenever an append may start,
  it takes every frame ready for that blob, up to `max_append_bytes`, in one Append Block call.
  When storage keeps up, appends are as small and prompt as the frames; under load, or while
  storage is slow, each append carries hundreds of frames.
- **Throttling is back-pressure.** Each lane has a congestion window (how many appends it may
  have in flight), as TCP does: a throttled or unanswered append (503 ServerBusy, 500
  OperationTimedOut, a timeout) halves it and pauses the lane with exponential backoff; each
  success widens it by 1/window, up to `max_concurrent_writes`.
- **Retries are sealed anew.** A failed append's frames go back to the front of their lane,
  each sealed again with the next attempt number: the failed attempt may have landed, and a
  reader drops the second copy as a retry instead of flagging a replay. A frame is sealed for
  the blob it goes to (the name is authenticated), so frames waiting when their lane rolls to a
  new part are sealed again too; each seal uses a new attempt number (and so a new nonce). Errors that retrying
  cannot heal (403, a block blob or leased or sealed blob in the way, ...) roll to a new part
  where that helps, and otherwise fail their frames after `give_up_after` seconds; a failing
  lane never holds up another date's.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from . import layout
from .codec import MAX_ATTEMPT, Body, Encoder
from .errors import StoreError, WriteFailedError
from .limits import FRAME_OVERHEAD_BYTES
from .metrics import WriterMetrics
from .store import Store

log = logging.getLogger("blobwriter.writer")

FIRST_BACKOFF = 0.5  # seconds before the first retry of a failing lane; doubles up to retry_backoff_max
RESEAL_IN_THREAD_BYTES = 256 * 1024  # re-seal retried frames off the event loop above this much
NOT_RETRIED = "stop()'s timeout (stop_timeout) had passed, so they were not retried"

# How an append failure is handled, by the service's error code or the HTTP status.
ROLL_ALWAYS = {"BlockCountExceedsLimit", "MaxBlobSizeConditionNotMet"}  # this part is full: the next one
THROTTLE_CODES = {"ServerBusy", "OperationTimedOut"}


def resume_time(now: float, failures: int, backoff_max: float, jitter: float, paused_until: float = 0.0,
                give_up_at: float | None = None) -> float:
    """When a lane that has failed `failures` times in a row may append again (monotonic time): after
    FIRST_BACKOFF doubled with each failure, up to `backoff_max`, times `jitter` (0.5 to 1, so that writers
    failing together spread out), and not before an earlier pause ends; but never after `give_up_at`, when
    the oldest frame an unhealable error holds reaches give_up_after: the attempt that gives it up then
    comes on time, not up to one whole backoff step late."""
    backoff = min(backoff_max, FIRST_BACKOFF * 2.0 ** min(failures - 1, 64)) * jitter  # 2.0 ** 1024 overflows
    resume = max(paused_until, now + backoff)
    return resume if give_up_at is None else max(now, min(resume, give_up_at))


class Landed(NamedTuple):
    """Where a frame landed: the blob's name and the frame's offset in it."""

    name: str
    offset: int


Settle = Callable[["Frame", "Landed | BaseException"], None]


class Frame:
    """One frame on its way to storage: its body, the sealed bytes of its current attempt, and what
    the writer needs back (`settle`, called once; `carry`, opaque to the appender)."""

    __slots__ = ("attempt", "blob", "body", "carry", "data", "date", "failing_since", "settle")

    def __init__(self, date: str, body: Body, data: bytes, blob: str, settle: Settle, carry: Any = None) -> None:
        self.date = date
        self.body = body
        self.data = data
        self.blob = blob  # the blob `data` is sealed for
        self.attempt = 0
        self.settle = settle
        self.carry = carry
        self.failing_since: float | None = None  # when an error that retrying cannot heal first hit it


class Lane:
    """The frames waiting for one date's blob of this writer, and how that blob is doing."""

    __slots__ = ("away", "date", "failures", "in_flight", "last_cut", "part", "ready", "resume_at",
                 "rolled_for", "timer", "window")

    def __init__(self, date: str, window: float) -> None:
        self.date = date
        self.part = 0
        self.ready: deque[Frame] = deque()
        self.away: list[Frame] = []  # a failed append's frames while they are sealed again (off the loop)
        self.in_flight = 0
        self.window = window  # appends this lane may have in flight (the congestion window)
        self.last_cut = 0.0  # when the window was last halved: once per round trip, as TCP does
        self.failures = 0  # consecutive failed appends; sets the backoff
        self.resume_at = 0.0  # no append starts before this (loop time)
        self.rolled_for: tuple[str, float] | None = None  # the error code of the last roll, and when
        self.timer: asyncio.TimerHandle | None = None


class Appender:
    """Encodes batches into frames, and appends frames to the writer's blobs (see the module doc)."""

    def __init__(self, store: Store, encoder: Encoder, metrics: WriterMetrics, *, max_append_bytes: int,
                 max_in_flight: int, max_blocks: int, retry_backoff_max: float, give_up_after: float) -> None:
        self.store = store
        self.encoder = encoder
        self._metrics = metrics
        self._max_append_bytes = max_append_bytes
        self._max_in_flight = max_in_flight
        self._max_blocks = max_blocks
        self._retry_backoff_max = retry_backoff_max
        self._give_up_after = give_up_after
        self._writer = encoder.writer_id.hex()
        self._names: dict[tuple[str, int], str] = {}  # (date, part) -> blob name (read by encoding threads too)
        self._sequence = itertools.count(1)
        self._lanes: dict[str, Lane] = {}
        self._parts: dict[str, int] = {}  # date -> the current part (read by encoding threads too)
        self._waiting: dict[str, Lane] = {}  # lanes with frames ready, in the order they got them
        self._tasks: set[asyncio.Task[None]] = set()
        self._frames = 0  # frames submitted and not yet settled
        self._idle = asyncio.Event()
        self._idle.set()
        self.in_flight = 0
        # The last append failure, until an append succeeds or every failing frame is given up on.
        self.storage_error: str | None = None
        self._last_round = False  # stop() has no time left: nothing is retried (last_round)

    # -- encoding (runs in a worker thread) -----------------------------------------------------

    def encode(self, date: str, lines: Sequence[bytes], settle: Settle, carry: Callable[[int, int], Any]
               ) -> list[Frame]:
        """Frames for one date's entries, split so each fits one append. `carry(start, end)` makes
        what a frame of lines[start:end] carries for the writer. The split is decided from the
        plaintext size before compressing: gzip never grows data by more than FRAME_OVERHEAD_BYTES
        allows for, so nothing is encoded twice."""
        budget = self._max_append_bytes - FRAME_OVERHEAD_BYTES
        if sum(map(len, lines)) + len(lines) <= budget:  # the common case: it all fits one frame
            return [self._frame(date, lines, settle, carry(0, len(lines)))]
        frames: list[Frame] = []
        start = size = 0
        for end, line in enumerate(lines):
            if size and size + len(line) + 1 > budget:
                frames.append(self._frame(date, lines[start:end], settle, carry(start, end)))
                start, size = end, 0
            size += len(line) + 1
        if start < len(lines):
            frames.append(self._frame(date, lines[start:], settle, carry(start, len(lines))))
        return frames

    def encode_index(self, date: str, records: Sequence[bytes], settle: Settle) -> Frame:
        """An index frame for a blob of `date` (see index.py)."""
        body = self.encoder.body(records, next(self._sequence), date=date, index=True)
        blob = self.blob_name(date, self._parts.get(date, 0))
        return Frame(date, body, self.encoder.seal(body, blob=blob), blob, settle)

    def _frame(self, date: str, lines: Sequence[bytes], settle: Settle, carry: Any) -> Frame:
        body = self.encoder.body(lines, next(self._sequence), date=date)
        blob = self.blob_name(date, self._parts.get(date, 0))
        data = self.encoder.seal(body, blob=blob)
        if len(data) > self._max_append_bytes:  # cannot happen: max_entry_bytes leaves room for the overhead
            raise ValueError(f"a frame encodes to {len(data)} bytes, over max_append_bytes={self._max_append_bytes}")
        return Frame(date, body, data, blob, settle, carry)

    # -- appending ------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Frames submitted and not yet landed or failed."""
        return self._frames

    @property
    def backoff(self) -> float:
        """Seconds until the most backed-off lane may append again (0 while appends succeed)."""
        now = time.monotonic()
        return max((lane.resume_at - now for lane in self._lanes.values() if lane.failures), default=0.0)

    def submit(self, frames: Sequence[Frame]) -> None:
        """Queue frames for their blobs; each is settled once, when it lands or is given up on."""
        for frame in frames:
            lane = self._lanes.get(frame.date)
            if lane is None:
                lane = self._lanes[frame.date] = Lane(frame.date, self._max_in_flight)
                lane.part = self._parts.setdefault(frame.date, 0)
            lane.ready.append(frame)
            self._waiting.setdefault(frame.date, lane)
        self._frames += len(frames)
        if self._frames:
            self._idle.clear()
        self._pump()

    async def drain(self) -> None:
        """Wait until every submitted frame is settled."""
        await self._idle.wait()

    async def abort(self, reason: str) -> None:
        """Give up: settle every frame not yet landed with WriteFailedError(reason)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        error = WriteFailedError(reason)
        for lane in self._lanes.values():
            if lane.timer is not None:
                lane.timer.cancel()
                lane.timer = None
            frames, lane.ready = list(lane.ready), deque()
            self._settle(frames, error)
        self._waiting.clear()

    def last_round(self) -> None:
        """Stop retrying (stop() has no time left): frames waiting for a retry fail now, and so does a
        failed append's; frames never sent are sent once, without waiting for their lane's backoff."""
        self._last_round = True
        for lane in self._lanes.values():
            if lane.timer is not None:
                lane.timer.cancel()
                lane.timer = None
            lane.resume_at = 0.0
            retries = [frame for frame in lane.ready if frame.attempt]  # in a lane, only a failed append's
            if retries:
                lane.ready = deque(frame for frame in lane.ready if not frame.attempt)
                self._settle(retries, WriteFailedError(f"{NOT_RETRIED} (last storage error: {self.storage_error})"))
        self._pump()

    def _pump(self) -> None:
        """Start every append that may start now: a free slot, room in the lane's window, not paused."""
        now = time.monotonic()
        for date, lane in list(self._waiting.items()):
            while lane.ready and self.in_flight < self._max_in_flight and lane.in_flight < int(lane.window):
                if now < lane.resume_at:
                    if lane.timer is None:
                        lane.timer = asyncio.get_running_loop().call_later(lane.resume_at - now, self._resume, lane)
                    break
                self._start(lane)
            if not lane.ready:
                del self._waiting[date]
            if self.in_flight >= self._max_in_flight:
                return

    def _resume(self, lane: Lane) -> None:
        lane.timer = None
        self._pump()

    def _start(self, lane: Lane) -> None:
        """Take the lane's ready frames, up to max_append_bytes, into one append. A frame sealed for
        another part (before the lane rolled) is sealed again for this one: the name is authenticated."""
        blob = self.blob_name(lane.date, lane.part)
        frames: list[Frame] = []
        size = 0
        while lane.ready and (not frames or size + len(lane.ready[0].data) <= self._max_append_bytes):
            frame = lane.ready.popleft()
            if frame.blob != blob and not self._reseal_now([frame], blob):
                continue  # no attempt number left: settled as failed
            frames.append(frame)
            size += len(frame.data)
        if not frames:
            return
        lane.in_flight += 1
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._append(lane, frames, lane.part))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def blob_name(self, date: str, part: int) -> str:
        """The name of part `part` of this writer's blob of `date` (layout.py); asked for every frame."""
        name = self._names.get((date, part))
        if name is None:
            if len(self._names) >= 1024:  # dates and parts of long ago
                self._names.clear()
            name = self._names[date, part] = layout.writer_blob(self.store.prefix, date, self._writer, part)
        return name

    async def _append(self, lane: Lane, frames: list[Frame], part: int) -> None:
        name = frames[0].blob
        data = frames[0].data if len(frames) == 1 else b"".join([f.data for f in frames])
        started = time.monotonic()
        try:
            try:
                appended = await self.store.append(name, data)
            except StoreError as exc:
                if self._last_round:
                    self.storage_error = str(exc)
                    self._settle(frames, WriteFailedError(f"{NOT_RETRIED}: {exc}"))
                    return
                frames = self._failed(lane, frames, part, exc, started)
                if frames:  # retried: sealed anew, back to the front of the lane
                    frames = await self._reseal(lane, frames)
                    if self._last_round:  # it began while they were sealed again
                        self._settle(frames, WriteFailedError(f"{NOT_RETRIED}: {exc}"))
                        return
                    lane.ready.extendleft(reversed(frames))
                    self._waiting[lane.date] = lane
            else:
                self._landed(lane, frames, name, part, appended.offset, appended.blocks, started)
        except asyncio.CancelledError:
            self._settle(frames, WriteFailedError("the writer stopped before storage accepted them"))
            raise
        finally:
            lane.in_flight -= 1
            self.in_flight -= 1
            self._pump()

    def _landed(self, lane: Lane, frames: list[Frame], name: str, part: int, offset: int, blocks: int,
                started: float) -> None:
        m = self._metrics
        m.appends += 1
        m.append_seconds.observe(time.monotonic() - started)
        if lane.failures:  # its warnings end here: say so
            log.info("Appending to %s part %d works again, after %d failed attempts", lane.date, part, lane.failures)
            lane.failures = 0
        lane.rolled_for = None
        lane.window = min(float(self._max_in_flight), lane.window + 1 / lane.window)
        if not any(other.failures for other in self._lanes.values()):
            self.storage_error = None
        if blocks >= self._max_blocks and lane.part == part:
            self._roll(lane, part, "max_blocks_per_blob reached")
        for frame in frames:
            frame.settle(frame, Landed(name, offset))
            offset += len(frame.data)
        self._count_settled(len(frames))

    def _failed(self, lane: Lane, frames: list[Frame], part: int, exc: StoreError, started: float) -> list[Frame]:
        """Decide what a failed append's frames do next (a new part, a pause, or giving up); return
        the frames to retry."""
        now = time.monotonic()
        code, status = exc.code or "", exc.status
        self._metrics.retries += 1
        self.storage_error = str(exc)
        if code in ROLL_ALWAYS:  # this part is full
            roll = True
        elif status in (409, 412):  # a block blob, a lease, a seal... in the way: a new part may help, once
            roll = lane.rolled_for is None or lane.rolled_for[0] != code
        else:
            roll = False
        if roll:
            if lane.part == part:
                self._roll(lane, part, code or str(status))
                lane.rolled_for = None if code in ROLL_ALWAYS else (code, now)
            return frames
        throttled = status is None or status in (408, 429, 503) or code in THROTTLE_CODES
        if throttled:
            self._metrics.throttled += 1
            if started >= lane.last_cut:  # halve once per round trip, not once per failed append
                lane.window = max(1.0, lane.window / 2)
                lane.last_cut = now
        lane.failures += 1
        sent = len(frames)
        give_up_at = None
        if not throttled and status is not None and status < 500:  # cannot heal by waiting alone
            frames = self._give_up_on_old(frames, now, exc)
            failing = [f.failing_since for f in (*frames, *lane.ready, *lane.away) if f.failing_since is not None]
            give_up_at = min(failing) + self._give_up_after if failing else None
        lane.resume_at = resume_time(now, lane.failures, self._retry_backoff_max, random.uniform(0.5, 1),
                                     lane.resume_at, give_up_at)
        if not frames and not lane.ready and lane.in_flight == 1:  # the lane's last append, given up: nothing fails
            lane.failures = 0
            if not any(other.failures for other in self._lanes.values()):
                self.storage_error = None
            return frames
        delay = lane.resume_at - now
        log.warning("Append of %d frames to %s part %d failed (%s); retrying in %.1fs", sent, lane.date, part, exc,
                    delay)
        return frames

    def _give_up_on_old(self, frames: list[Frame], now: float, exc: StoreError) -> list[Frame]:
        """Fail the frames an unhealable error has hit for longer than give_up_after; keep the rest."""
        keep: list[Frame] = []
        failed: list[Frame] = []
        for frame in frames:
            if frame.failing_since is None:
                frame.failing_since = now
            (failed if now - frame.failing_since >= self._give_up_after else keep).append(frame)
        if failed:
            self._settle(failed, WriteFailedError(f"storage refused them for over {self._give_up_after:.0f}s "
                                                  f"(give_up_after): {exc}"))
        return keep

    def _roll(self, lane: Lane, full: int, why: str) -> None:
        lane.part = self._parts[lane.date] = full + 1
        log.info("Rolling %s to part %d (%s)", lane.date, lane.part, why)

    async def _reseal(self, lane: Lane, frames: list[Frame]) -> list[Frame]:
        """Seal a failed append's frames again for the lane's blob with their next attempt number (in a
        thread when there is much); return those that can be retried. Meanwhile they are the lane's `away`:
        another append of the lane that fails then still counts them in its give_up_after deadline."""
        blob = self.blob_name(lane.date, lane.part)
        if sum(len(f.data) for f in frames) <= RESEAL_IN_THREAD_BYTES:
            return self._reseal_now(frames, blob)
        lane.away += frames
        try:
            return await asyncio.to_thread(self._reseal_now, frames, blob)
        finally:
            sent = {id(frame) for frame in frames}
            lane.away = [frame for frame in lane.away if id(frame) not in sent]

    def _reseal_now(self, frames: list[Frame], blob: str) -> list[Frame]:
        kept, spent = [], []
        for frame in frames:
            if frame.attempt >= MAX_ATTEMPT:  # a nonce must never repeat: give up instead
                spent.append(frame)
                continue
            frame.attempt += 1
            frame.data = self.encoder.seal(frame.body, frame.attempt, blob=blob)
            frame.blob = blob
            kept.append(frame)
        if spent:
            self._settle(spent, WriteFailedError(f"storage refused them {MAX_ATTEMPT} times"))
        return kept

    def _settle(self, frames: list[Frame], outcome: BaseException) -> None:
        for frame in frames:
            frame.settle(frame, outcome)
        self._count_settled(len(frames))

    def _count_settled(self, count: int) -> None:
        self._frames -= count
        if self._frames == 0:
            self._idle.set()
