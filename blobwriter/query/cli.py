"""The `stats`, `sql` and `export` subcommands, wired into `blobwriter` by `add_commands` and `run`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from datetime import date as Date
from typing import Any, Final

from ..casts import ascii_number
from ..config import Settings
from ..reader import date_range
from . import output
from .fields import PRESETS, SOURCES
from .progress import Progress
from .source import EXIT_OK, RangeSource

COMMANDS: Final = ("stats", "sql", "export")

STATS_HELP = "requests, errors, tokens, cost and duration percentiles of a date range, per group"
STATS_EPILOG = f"""\
examples:
  blobwriter stats --date 2026-11-24 --until 2026-11-30 --by user,deployment
  blobwriter stats --date 2026-11-25 --by day,deployment --where status_code=429 --format csv
  blobwriter stats --date 2026-11-25 --by hour --where deployment=gpt-4o --where deployment=gpt-4o-mini
  blobwriter stats --date 2026-11-25 --by team,deployment --map litellm --format json

measures: requests, errors (status_code >= 400 or a non-null error), prompt_tokens, completion_tokens,
total_tokens, cost, duration_ms_p50, duration_ms_p95. A --map item is a preset ({', '.join(PRESETS)}) or
NAME=PATH[|PATH...] with NAME one of {', '.join(SOURCES)} or an alias for --by/--where; a PATH may
end in *FACTOR (response_time*1000). The stats_map setting holds the same items. See docs/SCHEMA.md."""

SQL_HELP = "answer any SQL question over a date range with DuckDB (the table is `logs`)"
SQL_EPILOG = """\
examples:
  blobwriter sql --date 2026-11-24 "SELECT * FROM logs WHERE id = 'e0000042'" --format json
  blobwriter sql --date 2026-11-24 --until 2026-11-30 \\
      "SELECT user, sum(cost_eur) AS cost FROM logs GROUP BY user ORDER BY cost DESC LIMIT 5"
  blobwriter sql --date 2026-11-25 "SELECT response.usage.total_tokens, error FROM logs WHERE status_code >= 400"

`logs` has one column per top-level field, typed as DuckDB's read_json types them (objects are
structs: request.model); a field whose type varies is JSON. The session time zone is UTC, so
naive timestamps read as UTC. timestamp::TIMESTAMPTZ refuses a lower-case t/z and a leap second
(:60), which the writer accepts; this reads every timestamp (docs/SCHEMA.md):
  regexp_replace(upper(timestamp), ':60(\\.[0-9]*)?', ':59.999999')::TIMESTAMPTZ
SQL is one statement, whose answer is printed (several are refused: a WITH clause or subqueries
combine questions)."""

EXPORT_HELP = "write a date range as hive-style Parquet or gzip JSON Lines partitions (plaintext)"
EXPORT_EPILOG = """\
examples:
  blobwriter export --date 2026-11-24 --until 2026-11-30 --format parquet --out ./lake/gateway
  blobwriter export --date 2026-11-25 --format parquet --out https://<account>.blob.core.windows.net/exports/gateway
  blobwriter export --date 2026-11-25 --format jsonl --out 'UseDevelopmentStorage=true;Container=exports'

Each day becomes <out>/date=YYYY-MM-DD/part-NNNN.parquet (or .jsonl.gz); exporting a day again
replaces its partition. Parquet rows have the entry's fields as typed columns plus entry_json, the
complete entry. The files are NOT encrypted: export to a place only the right people can read."""


def _ascii_int(text: str) -> int | None:
    """An integer as the settings take one (casts.ascii_number), or None."""
    try:
        return ascii_number(text, int)
    except ValueError:
        return None


def _rows(text: str) -> int:
    value = _ascii_int(text) or 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of rows")
    return value


def _sample_size(text: str) -> int:
    """--sample-size: a positive number of entries, or -1 for all (0 or -5 would otherwise type no column)."""
    value = _ascii_int(text) or 0
    if value < 1 and value != -1:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a positive number of entries nor -1 (all)")
    return value


def add_commands(commands: Any, date: Callable[[str], Date]) -> None:
    """Add stats, sql and export to the `blobwriter` subcommands (an argparse subparsers object);
    `date` parses --date and --until as `read` does."""

    def command(name: str, text: str, epilog: str, extra: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(
            name, help=text, description=f"{text}. {extra}", epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("--date", required=True, type=date, metavar="YYYY-MM-DD", help="first UTC date")
        sub.add_argument("--until", type=date, metavar="YYYY-MM-DD", help="last UTC date (inclusive)")
        return sub

    needs = "Needs the query extra: pip install 'blobwriter[query]'."
    stats = command("stats", STATS_HELP, STATS_EPILOG,
                    "Runs without the query extra; with it (pip install 'blobwriter[query]') it parses faster.")
    stats.add_argument("--by", default="", metavar="FIELDS",
                       help="comma-separated group keys: day, hour (UTC, from timestamp) or dotted field paths")
    stats.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE",
                       help="keep entries whose FIELD equals VALUE (FIELD!=VALUE: differs); repeat a field for "
                            "any of several values, different fields must all match; null matches missing")
    stats.add_argument("--map", action="append", default=[], metavar="ITEM",
                       help="field map item: a preset or MEASURE=PATH (see below); repeatable")
    stats.add_argument("--format", choices=output.FORMATS, default="table", help="output format (default: table)")

    sql = command("sql", SQL_HELP, SQL_EPILOG, needs)
    sql.add_argument("query", metavar="SQL", help="one SQL statement; the date range is the table `logs`")
    sql.add_argument("--format", choices=output.FORMATS, default="table", help="output format (default: table)")
    sql.add_argument("--sample-size", type=_sample_size, default=20_480, metavar="N",
                     help="entries the column types are inferred from, like read_json's sample_size "
                          "(default: 20480; -1: all, reading the range twice)")
    sql.add_argument("--memory-limit", metavar="SIZE",
                     help="DuckDB's memory_limit, e.g. 1GB (default: 80%% of RAM); past it DuckDB spills to disk")

    export = command("export", EXPORT_HELP, EXPORT_EPILOG, needs)
    export.add_argument("--format", choices=("parquet", "jsonl"), default="parquet",
                        help="parquet (typed columns + entry_json) or jsonl (.jsonl.gz); default: parquet")
    export.add_argument("--out", required=True, metavar="DIR_OR_URL",
                        help="a directory, https://<account>.blob.core.windows.net/<container>[/<prefix>], or a "
                             "connection string with ;Container=NAME[;Prefix=PATH]")
    export.add_argument("--rows-per-file", type=_rows, default=250_000, metavar="N",
                        help="start a new part file after N rows (default: 250000)")


EXIT_INTERRUPTED: Final = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C


class Interrupted:
    """What a command stopped by Ctrl-C leaves behind, said in one line on stderr (exit 130): each command
    keeps `note` true as it goes."""

    def __init__(self, note: str | Callable[[], str]) -> None:
        self.note = note

    def say(self) -> int:
        note = self.note() if callable(self.note) else self.note
        print(f"blobwriter: interrupted; {note}", file=sys.stderr)
        return EXIT_INTERRUPTED


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one of COMMANDS; BlobwriterError/ValueError propagate to `blobwriter`'s handler (exit 2)."""
    dates = date_range(args.date, args.until)
    handlers = {"stats": _stats, "sql": _sql, "export": _export}
    # stats prints only once the whole range is read (no await after it): Ctrl-C stops it before, or not at all.
    notes = {"stats": "nothing was printed",
             "sql": "the answer is incomplete (any rows printed are only part of it)",
             "export": "nothing was exported"}
    interrupted = Interrupted(notes[args.command])
    try:
        return asyncio.run(handlers[args.command](args, settings, dates, interrupted))
    except BrokenPipeError:  # `| head`: the consumer stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return interrupted.say()


async def _stats(args: argparse.Namespace, settings: Settings, dates: list[str], _: Interrupted) -> int:
    from .fields import FieldMap
    from .stats import MEASURES, Condition, Stats

    fields = FieldMap.from_setting(settings.stats_map, args.map)
    by = [name.strip() for name in args.by.split(",") if name.strip()]
    stats = Stats(fields, by, [Condition.parse(w) for w in args.where])
    source = RangeSource(settings, dates, Progress("stats", dates))
    async for part in source.results(stats.task()):  # aggregated where the frames are decoded: every core
        stats.merge(part)
    source.progress.close()
    source.check_keys()
    rows = stats.rows()
    columns = [*stats.by, *MEASURES]
    values = [[row[c] for c in columns] for row in rows]
    if args.format == "json":
        output.write_json(sys.stdout.buffer, columns, values)
    elif args.format == "csv":
        output.write_csv(sys.stdout, columns, values)
    else:
        formats = {"requests": output.grouped_int, "errors": output.grouped_int, "prompt_tokens": output.grouped_int,
                   "completion_tokens": output.grouped_int, "total_tokens": output.grouped_int,
                   "cost": output.money, "duration_ms_p50": output.millis, "duration_ms_p95": output.millis}
        totals = None
        if stats.by:
            total = stats.totals()
            totals = ["total" if i == 0 else "" for i in range(len(stats.by))] + [total[m] for m in MEASURES]
        output.write_table(sys.stdout, columns, values, formats=formats, totals=totals)
    sys.stdout.flush()
    for name, count in stats.ignored.counts.items():
        print(output.printable(f"blobwriter: note: {count} value(s) of {name} were not numbers and counted as missing "
                        f"(e.g. {stats.ignored.examples[name]})"), file=sys.stderr)
    if stats.unparsable:
        print(f"blobwriter: note: {stats.unparsable} entries were not JSON objects and were skipped", file=sys.stderr)
    for note in stats.unseen():
        print(output.printable(f"blobwriter: note: {note}", lines=True), file=sys.stderr)
    if args.where and stats.read and not stats.groups:  # a value mistyped (or a zero table taken for an answer)
        conditions = " ".join(f"--where {w}" for w in args.where)
        read = "the one entry read did not meet" if stats.read == 1 else f"none of the {stats.read:,} entries read met"
        print(output.printable(f"blobwriter: note: {read} {conditions}"), file=sys.stderr)
    source.note_if_nothing_found()
    return source.finish()


async def _sql(args: argparse.Namespace, settings: Settings, dates: list[str], _: Interrupted) -> int:
    from .sql import run_sql

    source = RangeSource(settings, dates, Progress("sql", dates))
    answer = await run_sql(source, args.query, args.format, sample_size=args.sample_size,
                           memory_limit=args.memory_limit)
    sys.stdout.flush()
    source.progress.close()
    source.check_keys()
    hint = ("" if answer.sample is None else
            f" (types came from the first {answer.sample:,} entries; --sample-size -1 types every column from all)")
    for counts, what in ((answer.misfits, "values that did not fit their column's type are NULL"),
                         (answer.unknown, "fields missing from `logs`")):
        if counts:
            fields = ", ".join(f"{path} ({n})" for path, n in sorted(counts.items(), key=lambda x: -x[1])[:5])
            print(output.printable(f"blobwriter: note: {what}: {fields}{hint}"), file=sys.stderr)  # entry keys
    source.note_if_nothing_found()
    return source.finish()


async def _export(args: argparse.Namespace, settings: Settings, dates: list[str], interrupted: Interrupted) -> int:
    from .destination import open_destination
    from .export import DayExport, export_range
    from .export import interrupted as left

    destination = open_destination(args.out, settings)
    source = RangeSource(settings, dates, Progress("export", dates))
    done: list[DayExport] = []
    interrupted.note = lambda: left(done)
    try:
        await export_range(source, destination, args.format, rows_per_file=args.rows_per_file, done=done)
    finally:
        source.progress.close()
        await destination.close()
    source.check_keys()
    return source.finish()
