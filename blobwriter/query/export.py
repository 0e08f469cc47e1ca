"""`blobwriter export`: each day of a range as a hive-style partition of Parquet or gzip JSON Lines.

Layout: `<out>/date=YYYY-MM-DD/part-0000.parquet` (or `.jsonl.gz`), which Synapse, Fabric, Azure
Data Explorer, Spark and DuckDB read directly
(`read_parquet('<out>/*/*.parquet', hive_partitioning=true, union_by_name=true)`: days can differ in columns).
A Parquet row holds the entry's top-level fields as typed columns (structs and lists for nested
values, JSON for a field whose type varies, for an object of more than 1,000 keys and below 64 levels
of nesting; none if a day has more than 1,000 distinct top-level fields) plus `entry_json`, the
entry's complete JSON, so nothing is ever lost. Parquet types come from the whole day (a first pass
reads the day to infer them, a second converts), so every file of a day has one schema. JSON Lines
files hold the entries as stored.

The export is plaintext: whoever can read the destination can read the logs (docs/DEPLOY.md).
"""

from __future__ import annotations

import datetime as dt
import sys
from collections import Counter
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import orjson

from .. import __version__
from ..store import _os_errors
from .destination import DayLock, Destination, Partition
from .source import RangeSource
from .table import MAX_STRUCT_FIELDS, Conversion, Schema, abatches_of, arrow

FORMATS: Final = ("parquet", "jsonl")
ROWS_PER_FILE: Final = 250_000
ROW_GROUP_BATCHES: Final = 4  # batches of 8,192 entries per Parquet row group
PARQUET_COMPRESSION: Final = "snappy"  # the codec every engine named above reads
GZIP_LEVEL: Final = 2  # ISA-L level 2: close to zlib's default ratio at many times its speed
PARTITION_COLUMN: Final = "date"  # the hive partition key, a column of its own to every engine


@dataclass
class DayExport:
    """What one day's export wrote."""

    day: str
    entries: int = 0
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    misfits: Counter[str] = field(default_factory=Counter)
    unknown: Counter[str] = field(default_factory=Counter)
    damaged_frames: int = 0  # skipped: their entries are missing from the partition
    too_wide: bool = False  # more distinct top-level fields than table.MAX_STRUCT_FIELDS: entry_json only
    renamed: dict[str, str] = field(default_factory=dict)  # field -> its column (it had the partition key's name)
    # How far it went, for what Ctrl-C leaves: "reading" (the destination as it was), "swapping" (the day's marker
    # removed, its partition being replaced), "done".
    stage: str = "reading"

    @property
    def written(self) -> bool:
        return bool(self.files)


def partition_name(day: str) -> str:
    return f"{PARTITION_COLUMN}={day}"


def _free_of_partition_key(names: Sequence[str]) -> dict[str, str]:
    """Columns to rename: a field named as the partition key in any case (DuckDB's names ignore case) would
    meet the partition's own column, which DuckDB and Spark put in its place and pyarrow drops. It becomes
    `date_` (or the first of `date__`, ... that no other field has)."""
    taken = {name.lower() for name in names}
    renamed = {}
    for name in names:
        if name.lower() == PARTITION_COLUMN:
            column = name + "_"
            while column.lower() in taken:
                column += "_"
            taken.add(column.lower())
            renamed[name] = column
    return renamed


def part_name(index: int, fmt: str) -> str:
    return f"part-{index:04d}." + ("parquet" if fmt == "parquet" else "jsonl.gz")


async def export_day(source: RangeSource, destination: Destination, day: str, fmt: str, *,
                     rows_per_file: int = ROWS_PER_FILE, sources: dict[str, int] | None = None,
                     result: DayExport | None = None) -> DayExport:
    """Replace `day`'s partition at the destination with the day's entries; a day without entries
    leaves the destination as it is (nothing to replace it with). `sources`: the day's blobs and their
    sizes (source.sizes) if the caller has just listed them, as the scheduled export has. `result`: the
    DayExport to fill in (the caller's, to see how far an interrupted export went)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (allowed: {', '.join(FORMATS)})")
    result = result or DayExport(day)
    problems_before = len(source.problems)
    # Listed before reading: whatever is appended meanwhile makes the next scheduled run see a change.
    if sources is None:
        sources = await source.sizes(day)
    conversion: Conversion | None = None
    partition: Partition | None = None
    writer: _PartWriter | None = None
    async with AsyncExitStack() as locked:
        lock: DayLock | None = None

        async def hold() -> DayLock:
            """The day's lock, from before its first read to its marker: another export of the day (ExportBusy)
            would swap in meanwhile, and one that waits to find the day busy reads it for nothing."""
            nonlocal lock
            if lock is None:
                lock = await locked.enter_async_context(destination.lock(day))
            return lock

        if sources:  # (a day with no blobs has nothing to guard; one created since is locked before staging)
            await hold()
        if fmt == "parquet":
            arrow()
            schema = Schema()
            source.progress.note("pass 1 of 2: column types")
            async for batch in abatches_of(source.lines([day], record=False)):
                schema.observe(batch)
            if schema.entries == 0:
                source.record_last()  # no second pass: this one's damage (or unknown keys) is the day's
                result.stage = "done"
                return result
            conversion = Conversion(schema.arrow_schema(raw=True), raw=True)
            result.too_wide = schema.too_wide
            result.renamed = _free_of_partition_key(conversion.schema.names)
            source.progress.note("pass 2 of 2: writing")
        try:
            async for batch in abatches_of(source.lines([day])):
                if partition is None:
                    await hold()
                    partition = await destination.partition(partition_name(day))
                start = 0
                while start < len(batch):
                    if writer is None:
                        name = part_name(len(result.files), fmt)
                        writer = _PartWriter(partition.path(name), fmt, conversion, result.renamed)
                        result.files.append(name)
                    piece = batch[start:start + rows_per_file - writer.rows]
                    writer.write(piece)
                    start += len(piece)
                    result.entries += len(piece)
                    if writer.rows >= rows_per_file:
                        result.bytes += writer.close()
                        await partition.add(writer.path.name)
                        writer = None
            if writer is not None:
                assert partition is not None
                result.bytes += writer.close()
                await partition.add(writer.path.name)
                writer = None
            if partition is not None:
                await (await hold()).check()  # still ours: no other export of the day has swapped in since
                result.stage = "swapping"
                await destination.remove_marker(day)  # a swap cut short must not pass for the old, whole export
                await partition.commit()
        except BaseException:
            try:
                if writer is not None:
                    writer.discard()
            finally:
                if partition is not None:
                    await partition.abort()
            raise
        if conversion is not None:
            result.misfits, result.unknown = conversion.misfits, conversion.unknown
        result.damaged_frames = len(source.problems) - problems_before
        if result.written:
            # The marker says whether the partition is incomplete: whoever reads the lake, and the scheduled
            # export, can tell a day with damaged frames skipped from a whole one. `sources` (each of the day's
            # blobs and its size when the export began) tells the scheduled export whether the day changed since.
            marker = {"date": day, "format": fmt, "entries": result.entries, "damaged_frames": result.damaged_frames,
                      "files": result.files, "bytes": result.bytes,
                      "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                      "blobwriter": __version__, "sources": sources}
            await destination.write_marker(day, orjson.dumps(marker, option=orjson.OPT_INDENT_2))
    result.stage = "done"
    return result


async def export_range(source: RangeSource, destination: Destination, fmt: str, *,
                       rows_per_file: int = ROWS_PER_FILE, log: IO[str] | None = None,
                       done: list[DayExport] | None = None) -> list[DayExport]:
    """Export every day of the source's range, one partition per day; a line per day on `log`. Each day's
    DayExport is added to `done` as the day starts (the caller's list: how far an interrupted export went)."""
    log = log or sys.stderr
    done = [] if done is None else done

    def say(line: str) -> None:
        source.progress.write(line, log)

    for day in source.dates:
        done.append(DayExport(day))
        result = await export_day(source, destination, day, fmt, rows_per_file=rows_per_file, result=done[-1])
        if result.written:
            where = f"{destination.description.rstrip('/')}/{partition_name(day)}"
            say(f"{day}: {result.entries:,} {'entry' if result.entries == 1 else 'entries'} -> {where} "
                f"({len(result.files)} file(s), "
                f"{result.bytes / 1e6:,.1f} MB)")
        else:
            say(f"{day}: no entries; nothing written")
        if result.written and day >= dt.datetime.now(dt.UTC).date().isoformat():
            say(f"{day}: note: the day is not over (UTC), so this holds only the entries written so far; export "
                "it again once the day has ended (the scheduled export waits an hour after it)")
        for name, column in result.renamed.items():
            say(f"{day}: note: field {name} has the partition column's name: its column is {column} "
                "(readers of the lake give the partition's date as date)")
        if result.too_wide:
            say(f"{day}: note: the entries have more than {MAX_STRUCT_FIELDS:,} distinct top-level fields (a map, "
                "not records): the rows have entry_json only")
        for what, counts in (("did not fit their column and are null there (entry_json has them)", result.misfits),
                             ("belong to fields that appeared during the export (entry_json has them)",
                              result.unknown)):
            if counts:
                fields = ", ".join(f"{path} ({n})" for path, n in counts.most_common(5))
                say(f"{day}: note: values of {fields} {what}")
    return done


def interrupted(done: Sequence[DayExport]) -> str:
    """What an export stopped by Ctrl-C left, from its days' DayExports (export_range's `done`)."""
    finished = [d.day for d in done if d.stage == "done"]
    said = []
    if finished:
        said.append(f"{finished[0]} exported" if len(finished) == 1 else f"{finished[0]} to {finished[-1]} exported")
    current = done[-1] if done and done[-1].stage != "done" else None
    if current is None:
        said.append("no day was being exported" if finished else "nothing was exported")
    elif current.stage == "swapping":
        said.append(f"{current.day} was being swapped in: its marker is removed (not claimed complete), so export "
                    f"{current.day} again")
    else:
        said.append(f"the day being exported, {current.day}, was left as it was")
    return "; ".join(said)


class _PartWriter:
    """One file of a partition: Parquet (row groups of a few batches) or gzip JSON Lines. A failure to
    write it (a full disk) is a StoreError, as every failure of the destination is."""

    def __init__(self, path: Path, fmt: str, conversion: Conversion | None, renamed: dict[str, str]) -> None:
        with _os_errors(f"writing {path}"):
            self._open(path, fmt, conversion, renamed)

    def _open(self, path: Path, fmt: str, conversion: Conversion | None, renamed: dict[str, str]) -> None:
        self.path = path
        self.rows = 0
        self._conversion = conversion
        self._names: list[str] | None = None
        self._pending: list[Any] = []
        self._handle: Any = None
        self._parquet: Any = None
        if fmt == "parquet":
            import pyarrow.fs
            import pyarrow.parquet as pq

            assert conversion is not None
            schema = conversion.schema
            if renamed:
                self._names = [renamed.get(name, name) for name in schema.names]
                schema = arrow().schema([f.with_name(n) for f, n in zip(schema, self._names, strict=True)])
            # An absolute path on the local file system: pyarrow takes a relative `lake:2026/...` for a URI.
            self._parquet = pq.ParquetWriter(str(path.absolute()), schema,
                                             compression=PARQUET_COMPRESSION, filesystem=pyarrow.fs.LocalFileSystem())
        else:
            from isal import igzip

            self._handle = igzip.open(path, "wb", compresslevel=GZIP_LEVEL)

    def write(self, lines: Sequence[bytes]) -> None:
        with _os_errors(f"writing {self.path}"):
            self._write(lines)

    def _write(self, lines: Sequence[bytes]) -> None:
        self.rows += len(lines)
        if self._parquet is not None:
            assert self._conversion is not None
            self._pending.append(self._conversion.convert(lines))
            if len(self._pending) >= ROW_GROUP_BATCHES:
                self._flush()
        else:
            self._handle.write(b"\n".join(lines) + b"\n")

    def _flush(self) -> None:
        if self._pending:
            table = arrow().Table.from_batches(self._pending)
            if self._names is not None:
                table = table.rename_columns(self._names)
            self._parquet.write_table(table, row_group_size=table.num_rows)
            self._pending = []

    def close(self) -> int:
        """Finish the file; its size in bytes."""
        with _os_errors(f"writing {self.path}"):
            return self._close()

    def _close(self) -> int:
        if self._parquet is not None:
            self._flush()
            self._parquet.close()
        else:
            self._handle.close()
        return self.path.stat().st_size

    def discard(self) -> None:
        """Drop the file. Closing it flushes what is buffered, which fails again on a full disk: that
        failure is not reported (the one that made us discard is), and the file goes anyway."""
        try:
            if self._parquet is not None:
                self._parquet.close()
            elif self._handle is not None:
                self._handle.close()
        except OSError:  # pyarrow's I/O errors are OSErrors too
            pass
        finally:
            self.path.unlink(missing_ok=True)
