"""A progress bar on stderr for the long reading commands, only when stderr is a terminal.

It uses tqdm (part of the `query` extra); without tqdm, or when stderr is a file or a pipe,
nothing is drawn, so logs and CI output stay clean.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Sequence
from typing import IO, Any, TypeVar

from ..decoding import EntryTask
from ..reader import Reader

T = TypeVar("T")

UPDATE_EVERY = 2048  # entries between bar updates: tqdm's own cost stays out of the profile


class Progress:
    """Entries read so far, the day being read (i of n), and the decrypted bytes."""

    def __init__(self, label: str, days: Sequence[str], *, stream: IO[str] | None = None,
                 enabled: bool | None = None) -> None:
        self.label = label
        self.days = list(days)
        stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = _is_terminal(stream)
        self._bar: Any = None
        self._pending = 0
        self._note = ""
        self._day: str | None = None
        self._day_start = 0  # the count when the current day began
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            # The count exact, with thousands separators (unit_scale would write 0.00 and 3.00k); the rate scaled.
            self._bar = tqdm(total=None, unit=" entries", unit_scale=True, file=stream, desc=label, leave=False,
                             dynamic_ncols=True, mininterval=0.25,
                             bar_format="{desc}: {n:,} entries [{elapsed}, {rate_fmt}{postfix}]")

    def day(self, day: str) -> None:
        """A new day starts: show it (and the count so far). The same day again (export's second pass over
        it) counts its entries from the day's start again, so the count stays the range's entries."""
        if self._bar is not None:
            where = f" ({self.days.index(day) + 1}/{len(self.days)})" if day in self.days and len(self.days) > 1 else ""
            # set_description would add its own ": " to the one the bar's format has.
            self._bar.set_description_str(f"{self.label} {day}{where}", refresh=False)
            if day == self._day:
                self._bar.n = self._bar.last_print_n = self._day_start
                self._pending = 0
            else:
                self._bar.update(self._pending)
                self._pending = 0
                self._day, self._day_start = day, self._bar.n
            self._bar.refresh()

    def step(self, stored_bytes: int | None = None) -> None:
        """One more entry."""
        if self._bar is None:
            return
        self._pending += 1
        if self._pending >= UPDATE_EVERY:
            self._flush(stored_bytes)

    def advance(self, entries: int, stored_bytes: int | None = None) -> None:
        """`entries` more entries at once (a run of them, read where they were decoded)."""
        if self._bar is None:
            return
        self._pending += entries
        if self._pending >= UPDATE_EVERY:
            self._flush(stored_bytes)

    def note(self, text: str) -> None:
        """What the command is doing (`pass 2 of 2: writing`), shown until the next note."""
        self._note = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def write(self, line: str, stream: IO[str]) -> None:
        """Print a line on `stream` without printing it over the bar (which is drawn again below it)."""
        if self._bar is not None:
            self._bar.clear()
        print(line, file=stream)
        if self._bar is not None:
            self._bar.refresh()

    def _flush(self, stored_bytes: int | None) -> None:
        if stored_bytes is not None:
            self._bar.set_postfix_str(f"{self._note}, " * bool(self._note) + f"{stored_bytes / 1e6:,.1f} MB read",
                                      refresh=False)
        self._bar.update(self._pending)
        self._pending = 0

    def close(self) -> None:
        if self._bar is not None:
            self._bar.update(self._pending)
            self._bar.close()
            self._bar = None


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


async def tracked_results(reader: Reader, dates: Sequence[str], task: EntryTask[T], *,
                          progress: Progress) -> AsyncIterator[T]:
    """reader.results(dates, task), day by day, drawing the progress bar (entries as the report counts them)."""
    for day in dates:
        progress.day(day)
        counted = reader.report.entries
        async for result in reader.results([day], task):
            progress.advance(reader.report.entries - counted, reader.report.bytes)
            counted = reader.report.entries
            yield result
        progress.advance(reader.report.entries - counted, reader.report.bytes)


async def tracked(reader: Reader, dates: Sequence[str], label: str = "reading", *,
                  progress: Progress | None = None) -> AsyncIterator[bytes]:
    """reader.entries(dates), day by day, drawing a progress bar (for `verify`, and the query commands)."""
    bar = progress or Progress(label, dates)
    try:
        for day in dates:
            bar.day(day)
            async for line in reader.entries([day]):
                bar.step(reader.report.bytes)
                yield line
    finally:
        if progress is None:
            bar.close()
