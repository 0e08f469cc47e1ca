"""What is done with a batch: encode it into frames and append each to the store until it lands.

This is the exporter side of the writer (the queue, batches and lifecycle are in writer.py). It
knows frames, the store and retries; it knows nothing of entries' waiters or counts. `append`
returns where a frame landed; the writer resolves waiters, counts, and keeps the index.

A failed append is retried with exponential backoff, sealed anew each time with the next attempt
number (fresh nonce, attempt in the header): the failed attempt may still have landed, and a
reader drops the second copy as a retry instead of flagging it as a replay.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Sequence
from typing import Any

from .codec import Body, Encoder
from .errors import StoreError
from .limits import FRAME_OVERHEAD_BYTES
from .metrics import WriterMetrics
from .store import Appended, Store

log = logging.getLogger("blobwriter.writer")

FIRST_BACKOFF = 0.5  # seconds before the first retry of an append; doubles up to retry_backoff_max


class Frame:
    """One sealed frame on its way to storage, and what it carries (opaque to the appender)."""

    __slots__ = ("attempt", "body", "data", "date", "items")

    def __init__(self, date: str, body: Body, data: bytes, items: list[Any]) -> None:
        self.date = date
        self.body = body
        self.data = data  # the sealed bytes of the current attempt
        self.attempt = 0
        self.items = items


class Appender:
    """Encodes batches into frames no larger than one append, and appends frames with retries."""

    def __init__(self, store: Store, encoder: Encoder, metrics: WriterMetrics, *, max_append_bytes: int,
                 retry_backoff_max: float) -> None:
        self.store = store
        self.encoder = encoder
        self._metrics = metrics
        self._max_append_bytes = max_append_bytes
        self._retry_backoff_max = retry_backoff_max
        self._sequence = itertools.count(1)
        self.storage_error: str | None = None  # the last append failure, until an append succeeds
        self.backoff = 0.0  # the current pause between retries (0 while appends succeed)

    # -- encoding (runs in a worker thread) -----------------------------------------------------

    def encode(self, date: str, lines: Sequence[bytes], items: Sequence[Any]) -> list[Frame]:
        """Frames for one date's entries (`lines[i]` is `items[i]` serialized), split so each fits
        one append. The split is decided from the plaintext size before compressing: gzip never
        grows data by more than FRAME_OVERHEAD_BYTES allows for, so nothing is encoded twice."""
        budget = self._max_append_bytes - FRAME_OVERHEAD_BYTES
        frames: list[Frame] = []
        start = size = 0
        for end, line in enumerate(lines):
            if size and size + len(line) + 1 > budget:
                frames.append(self._frame(date, lines[start:end], list(items[start:end])))
                start, size = end, 0
            size += len(line) + 1
        if start < len(lines):
            frames.append(self._frame(date, lines[start:], list(items[start:])))
        return frames

    def encode_index(self, date: str, records: Sequence[bytes]) -> Frame:
        """An index frame for a part of `date` (see index.py)."""
        body = self.encoder.body(records, next(self._sequence), date=date, index=True)
        return Frame(date, body, self.encoder.seal(body), [])

    def _frame(self, date: str, lines: Sequence[bytes], items: list[Any]) -> Frame:
        body = self.encoder.body(lines, next(self._sequence), date=date)
        data = self.encoder.seal(body)
        if len(data) > self._max_append_bytes:  # cannot happen: max_entry_bytes leaves room for the overhead
            raise StoreError(f"a frame encodes to {len(data)} bytes, over max_append_bytes={self._max_append_bytes}")
        return Frame(date, body, data, items)

    # -- appending ------------------------------------------------------------------------------

    async def append(self, frame: Frame) -> Appended:
        """Append a frame, retrying storage failures with backoff until it lands (or is cancelled)."""
        while True:
            started = time.monotonic()
            try:
                landed = await self.store.append(frame.date, frame.data)
                break
            except StoreError as exc:
                frame.attempt += 1
                self._metrics.retries += 1
                self.storage_error = str(exc)
                self.backoff = min(self._retry_backoff_max, FIRST_BACKOFF * 2 ** (frame.attempt - 1))
                delay = self.backoff * random.uniform(0.5, 1.0)
                log.warning("Append of %d entries for %s failed (attempt %d); retrying in %.1fs: %s",
                            frame.body.entries, frame.date, frame.attempt, delay, exc)
                await asyncio.sleep(delay)
                frame.data = self.encoder.seal(frame.body, frame.attempt)
        self._metrics.append_seconds.observe(time.monotonic() - started)
        self.storage_error = None
        self.backoff = 0.0
        return landed
