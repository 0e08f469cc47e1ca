"""The entries of a date range, read through the public Reader, with damage reported as `read` does.

Every pass opens its own store and Reader, so a command may read a day twice (export infers the
day's exact column types first). Damaged frames are skipped and collected; `finish()` prints
them on stderr the way `blobwriter read` does and gives the exit code (1 if any).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator, Sequence
from typing import IO, Any, TypeVar

from ..config import Settings
from ..decoding import EntryTask
from ..errors import BlobwriterError
from ..reader import Problem, Reader, ReadReport, nothing_found, unknown_keys_error
from ..store import open_store
from .progress import Progress, tracked, tracked_results

T = TypeVar("T")
EXIT_OK, EXIT_DAMAGED = 0, 1


class RangeSource:
    """A date range of the configured store: entries day by day, plus what the reads reported."""

    def __init__(self, settings: Settings, dates: Sequence[str], progress: Progress | None = None, *,
                 workers: int | None = None) -> None:
        if not settings.keys:
            settings.require("encryption_key")
        settings.require("storage")
        self.settings = settings
        self.dates = list(dates)
        self.progress = progress or Progress("reading", dates, enabled=False)
        self.problems: list[Problem] = []
        self.last_report: ReadReport | None = None
        self.frames = 0  # frames decoded by the recorded passes
        # Whether any pass (look-ahead ones too) found a blob, and what to say if none did (set by each pass).
        self._found_blobs = False
        self._nothing_found = ""
        self.workers = workers  # processes decoding frames (None: every core, for large reads)
        # The last recorded pass's date and id_field digests: export reads a range one day (and Reader) at a
        # time, and drops a retry across midnight as one Reader over the range (read, stats, sql) does.
        self._carried: tuple[str, set[bytes]] | None = None

    async def lines(self, days: Sequence[str] | None = None, *, record: bool = True) -> AsyncGenerator[bytes, None]:
        """Each entry (a JSON object, no newline) of `days` (default: the whole range), each once.
        record=False: a look-ahead pass whose damage the recorded pass reports again."""
        async for line in self._read(days, None, record=record):
            yield line

    async def results(self, task: EntryTask[T], days: Sequence[str] | None = None) -> AsyncGenerator[T, None]:
        """task.run() over runs of the entries of `days` (default: the whole range), each entry once, on
        every core for large reads (Reader.results)."""
        async for result in self._read(days, task, record=True):
            yield result

    async def _read(self, days: Sequence[str] | None, task: EntryTask[Any] | None, *,
                    record: bool) -> AsyncGenerator[Any, None]:
        store = open_store(self.settings)
        reader = Reader(store, self.settings.keys, id_field=self.settings.id_field, workers=self.workers)
        if record:
            reader.follow(self._carried)
        dates = self.dates if days is None else days
        try:
            if task is None:
                async for line in tracked(reader, dates, progress=self.progress):
                    yield line
            else:
                async for result in tracked_results(reader, dates, task, progress=self.progress):
                    yield result
        except BlobwriterError:
            raise
        except Exception as exc:  # storage errors: say what failed, no traceback
            raise BlobwriterError(f"reading from {store.description} failed: {exc}") from exc
        finally:
            self._found_blobs = self._found_blobs or reader.report.parts > 0
            self._nothing_found = nothing_found(self.dates, store)  # once open, the store says where it is
            await reader.close()
            await store.close()
            self.last_report = reader.report
            if record:
                self._carried = reader.carried_ids()
                self.record_last()

    async def sizes(self, day: str) -> dict[str, int]:
        """The size of each of `day`'s blobs now: an export records them, so that a later run can tell a day
        that changed since (entries written for it late) from one that did not."""
        store = open_store(self.settings)
        try:
            return await store.sizes(day)
        except BlobwriterError:
            raise
        except Exception as exc:
            raise BlobwriterError(f"listing the blobs of {day} in {store.description} failed: {exc}") from exc
        finally:
            await store.close()

    def record_last(self) -> None:
        """Count the damage of the last pass (one read with record=False that no other pass follows)."""
        if self.last_report is not None:
            self.problems.extend(self.last_report.problems)
            self.frames += self.last_report.frames
            self.last_report = None

    def forget(self) -> None:
        """Drop what earlier passes recorded (a pass about to be read again from the start)."""
        self.problems.clear()
        self.frames = 0

    def check_keys(self, report: ReadReport | None = None) -> None:
        """Fail as `read` does when no configured key opens any frame of the recorded passes, or of
        `report` (a look-ahead pass's, so that a command can fail before it prints anything)."""
        problems, frames = (self.problems, self.frames) if report is None else (report.problems, report.frames)
        if problems and frames == 0 and all(p.unknown_key for p in problems):
            raise unknown_keys_error(problems, self.settings.named_keys)

    def note_if_nothing_found(self) -> None:
        """A note on stderr when the range was read and no pass found a blob in it (nothing_found)."""
        if self._nothing_found and not self._found_blobs:
            print(f"blobwriter: note: {self._nothing_found}", file=sys.stderr)

    def finish(self, stream: IO[str] | None = None) -> int:
        """Print the damaged frames skipped (as `read` does) and return the exit code."""
        stream = stream or sys.stderr
        self.progress.close()
        for problem in self.problems:
            print(f"DAMAGED {problem}", file=stream)
        if self.problems:
            print(f"blobwriter: {len(self.problems)} damaged frame(s) skipped; run `blobwriter verify` for details",
                  file=stream)
            return EXIT_DAMAGED
        return EXIT_OK
