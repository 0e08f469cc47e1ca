"""The scheduled export under Azure Functions: every closed day exported once, idempotently.

A timer (function_app.py, registered only when `export_destination` is set) calls
`run_scheduled_export` every hour. It looks at the last LOOKBACK_DAYS closed days (a day is closed
GRACE after its UTC midnight, so late batches are in) and exports, as Parquet, each one that has
entries and no marker yet at the destination. The marker is written after the day's partition is
swapped in, so a failed run is simply redone by the next one, and a re-run replaces the partition.
Days older than the look-back (a first deployment's backlog) are for `blobwriter export`.

This module imports no optional package: the Functions app indexes without the `query` extra, and
the function says in its log what to install if it runs without pyarrow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from ..config import Settings
from . import EXTRA_HINT, MissingExtraError, require
from .progress import Progress
from .source import RangeSource

log = logging.getLogger("blobwriter.export")

SCHEDULE: Final = "0 15 * * * *"  # NCRONTAB (UTC): every hour at :15
GRACE: Final = timedelta(hours=1)
LOOKBACK_DAYS: Final = 7
FORMAT: Final = "parquet"


def closed_days(now: datetime, lookback: int = LOOKBACK_DAYS, grace: timedelta = GRACE) -> list[str]:
    """The last `lookback` UTC days that ended at least `grace` before `now`, oldest first."""
    last = (now.astimezone(UTC) - grace).date() - timedelta(days=1)
    return [(last - timedelta(days=n)).isoformat() for n in reversed(range(lookback))]


@dataclass
class ScheduledRun:
    """What one run did."""

    exported: dict[str, int] = field(default_factory=dict)  # day -> entries
    already: list[str] = field(default_factory=list)  # days with a marker
    empty: list[str] = field(default_factory=list)  # days without entries (yet)
    damaged: int = 0


async def run_scheduled_export(settings: Settings, now: datetime | None = None) -> ScheduledRun:
    """Export each closed day not exported yet to settings.export_destination."""
    from .destination import open_destination
    from .export import export_day

    target: str = settings.require("export_destination")
    try:
        require("pyarrow", "the scheduled export")
    except MissingExtraError:
        log.error("Scheduled export failed: pyarrow is not installed in this Functions app. Add "
                  "'blobwriter[query]' (or pyarrow) to requirements.txt and redeploy, or unset "
                  "BLOBWRITER_EXPORT_DESTINATION (%s).", EXTRA_HINT)
        raise
    days = closed_days(now or datetime.now(UTC))
    destination = open_destination(target)
    # One process: the Functions host's worker is no place to start a pool of processes.
    source = RangeSource(settings, days, Progress("export", days, enabled=False), workers=1)
    done = ScheduledRun()
    try:
        for day in days:
            if await destination.read_marker(day) is not None:
                done.already.append(day)
                continue
            result = await export_day(source, destination, day, FORMAT)
            if result.written:
                done.exported[day] = result.entries
                log.info("Exported %s: %d entries in %d file(s) to %s", day, result.entries, len(result.files),
                         destination.description)
            else:
                done.empty.append(day)
    finally:
        await destination.close()
    source.check_keys()
    for problem in source.problems:
        log.error("Scheduled export skipped a damaged frame: %s", problem)
    done.damaged = len(source.problems)
    return done
