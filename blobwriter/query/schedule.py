"""The scheduled export under Azure Functions: every closed day exported once, idempotently.

A timer (function_app.py, registered only when `export_destination` is set) calls
`run_scheduled_export` every hour. It looks at the last LOOKBACK_DAYS closed days (a day is closed
GRACE after its UTC midnight, so late batches are in) and exports, as Parquet, each one that has
entries and no marker yet at the destination, or whose blobs changed since its marker was written
(the marker records each blob's size: entries can be written for a closed day, up to max_past_days
old, by a client's retry, a writer retrying through an outage, or a backfill). The marker is written
after the day's partition is swapped in, so a failed run is simply redone by the next one, and a
re-run replaces the partition. A day that another export is writing at the same time (its lock is
held: destination.py) is left to the next run, with a warning.
A day exported with damaged frames skipped (its marker's `damaged_frames`) is not taken as done:
each run logs an error for it while it is in the look-back, but does not export it again (damage
stays; re-reading the day every hour would not repair it): after repairing or accepting it,
delete its marker to export it once more. Days older than the look-back (a first deployment's
backlog) are for `blobwriter export`.

This module imports no optional package: the Functions app indexes without the `query` extra, and
the function says in its log what to install if it runs without pyarrow.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from ..config import Settings
from ..errors import ConfigError
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
    already: list[str] = field(default_factory=list)  # days with a marker, unchanged since
    again: list[str] = field(default_factory=list)  # days with a marker whose blobs changed since: exported again
    empty: list[str] = field(default_factory=list)  # days without entries (yet)
    busy: list[str] = field(default_factory=list)  # days another export was writing: left to the next run
    damaged: int = 0  # damaged frames this run skipped
    incomplete: dict[str, int] = field(default_factory=dict)  # day -> damaged frames its export skipped


async def run_scheduled_export(settings: Settings, now: datetime | None = None) -> ScheduledRun:
    """Export each closed day not exported yet to settings.export_destination."""
    from .destination import ExportBusy, open_destination
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
    try:
        destination = open_destination(target, settings)
    except ConfigError as exc:
        log.error("Scheduled export failed: BLOBWRITER_EXPORT_DESTINATION is not a destination: %s", exc)
        raise
    # One process: the Functions host's worker is no place to start a pool of processes.
    source = RangeSource(settings, days, Progress("export", days, enabled=False), workers=1)
    done = ScheduledRun()
    try:
        for day in days:
            marker = await destination.read_marker(day)
            now_stored: dict[str, int] | None = None  # listed once: the export records this listing
            if marker is not None:
                recorded = _sources(marker)
                now_stored = await source.sizes(day)
                # Unchanged, or its logs deleted since (retention): the export stays, the only copy left.
                if recorded is None or recorded == now_stored or not now_stored:
                    done.already.append(day)
                    skipped = _damaged_frames(marker)
                    if skipped:
                        done.incomplete[day] = skipped
                    continue
                done.again.append(day)
                log.info("Exporting %s again: its blobs changed since it was exported (entries written for it "
                         "late)", day)
            try:
                result = await export_day(source, destination, day, FORMAT, sources=now_stored)
            except ExportBusy as exc:  # a `blobwriter export` of the day, or a run that overlaps this one
                done.busy.append(day)
                log.warning("Not exporting %s now: %s; the next run looks at it again", day, exc)
                continue
            if result.written:
                done.exported[day] = result.entries
                log.info("Exported %s: %d entries in %d file(s) to %s", day, result.entries, len(result.files),
                         destination.description)
                if result.damaged_frames:
                    done.incomplete[day] = result.damaged_frames
            else:
                done.empty.append(day)
    finally:
        await destination.close()
    source.check_keys()
    for problem in source.problems:
        log.error("Scheduled export skipped a damaged frame: %s", problem)
    done.damaged = len(source.problems)
    for day, skipped in done.incomplete.items():
        log.error("Export of %s to %s is incomplete: %d damaged frame(s) were skipped (`blobwriter verify --date %s` "
                  "tells which); delete its marker _blobwriter/exported/%s.json to export it again", day,
                  destination.description, skipped, day, day)
    return done


def _sources(marker: bytes) -> dict[str, int] | None:
    """The size of each of the day's blobs when it was exported (None for older markers, which do not say:
    such a day counts as unchanged)."""
    try:
        sources = json.loads(marker).get("sources")
    except (ValueError, AttributeError):
        return None
    return sources if isinstance(sources, dict) else None


def _damaged_frames(marker: bytes) -> int:
    """The damaged frames an exported day's marker records (0 for older markers, which do not say)."""
    try:
        return int(json.loads(marker).get("damaged_frames") or 0)
    except (ValueError, AttributeError, TypeError):
        return 0
