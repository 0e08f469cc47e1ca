"""`blobwriter sql`: any SQL question over a date range, answered by DuckDB.

The range is the table `logs`, one column per top-level field, typed as DuckDB's `read_json` would
type it (inferred from the first `--sample-size` entries, like read_json's sample_size). It is
streamed: the reader decrypts entries, they are converted to Arrow record batches in the event
loop, and DuckDB pulls them from a small queue in its own thread, so a range larger than memory
works (DuckDB spills its own state, e.g. a big GROUP BY or ORDER BY, to a temporary directory).
A stream can be scanned once; a query that scans `logs` twice (a self-join) is run again over a
copy of the range that DuckDB keeps in a temporary table.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import queue
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Final

import orjson

from ..errors import BlobwriterError
from . import require
from .output import write_csv, write_json, write_table
from .source import RangeSource
from .table import BATCH_ENTRIES, Conversion, Schema, abatches_of, arrow

TABLE: Final = "logs"
SAMPLE_SIZE: Final = 20_480  # DuckDB read_json's default sample_size
QUEUE_BATCHES: Final = 4
FETCH_ROWS: Final = 4096
_END: Final = object()


class SqlError(BlobwriterError):
    """DuckDB refused the query (syntax, unknown column, ...): the message is DuckDB's."""


@dataclass
class SqlAnswer:
    """What the answer could not hold: values that did not fit their column, fields it lacked."""

    misfits: dict[str, int]
    unknown: dict[str, int]
    sample: int | None  # entries the schema came from; None: all of them


async def run_sql(source: RangeSource, query: str, fmt: str, *, sample_size: int = SAMPLE_SIZE,
                  memory_limit: str | None = None, out: IO[bytes] | None = None) -> SqlAnswer:
    """Run `query` over the source's range; write the answer to `out` (stdout) as table, json or csv."""
    duckdb = require("duckdb", "blobwriter sql")
    arrow()
    out = out if out is not None else sys.stdout.buffer
    spill = tempfile.mkdtemp(prefix="blobwriter-sql-")
    try:
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")  # naive timestamps mean UTC, as everywhere in blobwriter
        # DuckDB draws its own bar on stdout once a query runs past 2 s, into the answer: ours is on stderr.
        con.execute("SET enable_progress_bar = false")
        con.execute("SET temp_directory = ?", [spill])
        if memory_limit:
            try:
                con.execute("SET memory_limit = ?", [memory_limit])
            except duckdb.Error as exc:
                raise SqlError(f"--memory-limit {memory_limit!r}: {exc}") from None
        _one_statement(con, query)
        try:
            return await _attempt(con, source, query, fmt, out, sample_size, materialize=False)
        except _ScannedTwice:
            source.forget()
            return await _attempt(con, source, query, fmt, out, sample_size, materialize=True)
        finally:
            con.close()
    finally:
        shutil.rmtree(spill, ignore_errors=True)


class _ScannedTwice(Exception):
    pass


def _one_statement(con: Any, query: str) -> None:
    """Refuse, before anything is read, a query that is not exactly one statement: DuckDB answers an
    empty one (blank, only comments) with no result at all, and several with the last one's answer
    only, silently. One statement also keeps the answer one table, JSON array or CSV document."""
    import duckdb

    try:
        count = len(con.extract_statements(query))
    except duckdb.Error as exc:
        raise SqlError(f"SQL: {exc}") from None
    if count == 0:
        raise SqlError("SQL: the query holds no statement (it is empty, blank or only comments)")
    if count > 1:
        raise SqlError(f"SQL: the query holds {count} statements; give one per command (a WITH clause or "
                       "subqueries can combine several questions)")


async def _attempt(con: Any, source: RangeSource, query: str, fmt: str, out: IO[bytes], sample_size: int,
                   *, materialize: bool) -> SqlAnswer:
    pa = arrow()
    lines = source.lines()
    schema = Schema()
    sample: list[bytes] = []
    if sample_size < 0:  # type every column from every entry: a first pass over the whole range
        async for batch in abatches_of(source.lines(record=False)):
            schema.observe(batch)
    else:
        async for line in lines:
            sample.append(line)
            if len(sample) >= sample_size:
                break
        for start in range(0, len(sample), BATCH_ENTRIES):
            schema.observe(sample[start:start + BATCH_ENTRIES])
    empty = schema.entries == 0  # then the range has been read whole, and the query sees no entries
    if empty:  # the wrong key reads as no entries: say so before the query prints an answer over them
        source.check_keys(source.last_report if sample_size < 0 else None)
    arrow_schema = schema.arrow_schema()
    if len(arrow_schema) == 0:  # no entries at all: still a table, with the one field every entry has
        arrow_schema = pa.schema([pa.field("timestamp", pa.string())])
    conversion = Conversion(arrow_schema)
    batches: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_BATCHES)
    stopped = False
    failure: list[Exception] = []  # a reading error, which DuckDB would report as its own

    def pull() -> Iterator[Any]:
        while True:
            try:
                item = batches.get(timeout=0.1)
            except queue.Empty:
                if stopped:  # the answer is written (or its reader went away): end the scan
                    return
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def produce() -> None:
        def put(item: Any) -> bool:
            while not stopped:
                try:
                    batches.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        loop = asyncio.get_running_loop()
        try:
            async for batch in abatches_of(_chain(sample, lines)):
                if not await loop.run_in_executor(None, put, conversion.convert(batch)):
                    return
        except Exception as exc:
            failure.append(exc)
            await loop.run_in_executor(None, put, exc)
            return
        finally:
            with contextlib.suppress(Exception):
                await lines.aclose()
        await loop.run_in_executor(None, put, _END)

    stream = pa.RecordBatchReader.from_batches(arrow_schema, pull())
    con.register("_blobwriter_stream", stream)

    def execute() -> None:
        import duckdb

        try:
            if materialize:
                con.execute(f"DROP VIEW IF EXISTS {TABLE}")
                con.execute(f"CREATE OR REPLACE TEMP TABLE {TABLE} AS SELECT * FROM _blobwriter_stream")
            else:
                con.execute(f"CREATE OR REPLACE TEMP VIEW {TABLE} AS SELECT * FROM _blobwriter_stream")
            result = con.execute(query)
            try:
                _write(result, fmt, out)
            except BaseException:  # e.g. `| head` closed stdout: drop the rest of the answer
                if hasattr(con, "abort"):  # DuckDB 2 keeps an unfinished result until told
                    con.abort()
                raise
        except duckdb.InvalidInputException as exc:
            if "already been consumed" in str(exc) and not materialize:
                raise _ScannedTwice() from exc
            raise SqlError(f"SQL: {exc}") from None
        except duckdb.BinderException as exc:
            if empty:  # `logs` has only the column every entry has: a named field is "not found"
                dates = source.dates
                raise SqlError(f"SQL: the range {dates[0]}..{dates[-1]} holds no entries, so `logs` has no column "
                               f"but timestamp: {exc}") from None
            raise SqlError(f"SQL: {exc}") from None
        except duckdb.Error as exc:
            raise SqlError(f"SQL: {exc}") from None

    producer = asyncio.create_task(produce())
    try:
        await asyncio.to_thread(execute)
    except (SqlError, _ScannedTwice):
        if failure:
            raise failure[0] from None
        raise
    finally:
        stopped = True
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await producer
        while not batches.empty():  # let a producer blocked on a full queue go
            batches.get_nowait()
        con.unregister("_blobwriter_stream")
    return SqlAnswer(dict(conversion.misfits), dict(conversion.unknown),
                     None if sample_size < 0 else sample_size)


async def _chain(first: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for line in first:
        yield line
    first.clear()  # the sample is in the stream now: do not hold it twice
    async for line in rest:
        yield line


def _write(result: Any, fmt: str, out: IO[bytes]) -> int:
    """Write DuckDB's answer as it comes (json/csv), or as an aligned table."""
    if result.description is None:  # a statement without rows (COPY, CREATE ...)
        return 0
    names = _unique([d[0] for d in result.description])
    # A JSON value (alone, or inside a list or struct) comes back as its text: output it as JSON.
    fixes = [(i, fix) for i, d in enumerate(result.description) if (fix := _json_values(d[1])) is not None]

    def rows() -> Iterator[tuple[Any, ...]]:
        while chunk := result.fetchmany(FETCH_ROWS):
            for row in chunk:
                if fixes:
                    row = list(row)
                    for i, fix in fixes:
                        if row[i] is not None:
                            row[i] = fix(row[i])
                yield tuple(row)

    if fmt == "json":
        return write_json(out, names, rows())
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    try:
        if fmt == "csv":
            return write_csv(text, names, rows())
        return write_table(text, names, rows())
    finally:
        text.detach()


def _json_values(kind: Any) -> Callable[[Any], Any] | None:
    """For a DuckDB result type that holds JSON somewhere, a function marking those values as raw JSON."""
    if str(kind) == "JSON":
        return orjson.Fragment
    if kind.id in ("list", "array"):
        item = _json_values(kind.children[0][1])
        if item is not None:
            return lambda v: [None if x is None else item(x) for x in v]
    elif kind.id == "struct":
        fields = {name: fix for name, child in kind.children if (fix := _json_values(child)) is not None}
        if fields:
            return lambda v: {k: x if x is None or k not in fields else fields[k](x) for k, x in v.items()}
    return None


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        if name in seen:
            seen[name] += 1
            name = f"{name}_{seen[name]}"
        else:
            seen[name] = 1
        unique.append(name)
    return unique
