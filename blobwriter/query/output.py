"""Rows out: an aligned table for people, a JSON array, or CSV with a header row.

JSON and CSV stream row by row (a large `sql` answer is never held whole); the table needs its
rows to size the columns, so it shows at most TABLE_ROWS of them and says how many it left out.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any, Final

import orjson

from .measures import COST_DECIMALS

FORMATS: Final = ("table", "json", "csv")
TABLE_ROWS: Final = 10_000
CELL_WIDTH: Final = 80  # a table cell longer than this is cut (with an ellipsis); json/csv never cut
MONEY_DECIMALS: Final = 6  # a cost in a table has at least these decimals, and up to COST_DECIMALS

Formatter = Callable[[Any], str]

# What a terminal acts on rather than shows: C0 and C1 controls (ESC starts a sequence that can move the
# cursor, erase lines, hide text or set the title; CR returns to the line's start), DEL, the bidi
# controls that reorder what follows, and the line and paragraph separators. Entries come from
# anyone who can post one, so a table (the format for people) shows each as an escape instead.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def printable(text: str, *, lines: bool = False) -> str:
    """`text` safe to print on a terminal: each control character as an escape (`\\n`, `\\x1b`, `\\u202e`);
    with `lines`, newlines are kept (a message of several lines, such as DuckDB's errors)."""
    if not _UNPRINTABLE.search(text):
        return text
    if lines:
        return "\n".join(_UNPRINTABLE.sub(_escape, line) for line in text.split("\n"))
    return _UNPRINTABLE.sub(_escape, text)


def _default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID | dt.timedelta | dt.time):
        return str(value)
    raise TypeError(f"cannot show a {type(value).__name__} as JSON")


def json_text(value: Any) -> str:
    """A value as JSON text (objects, lists, dates, decimals included)."""
    return orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS).decode()


def plain(value: Any) -> str:
    """A value as one cell of text: null empty, booleans lower-case, nested values as JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return decimal_text(value)
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return json_text(value)


def decimal_text(value: float) -> str:
    """A float's shortest exact digits without an exponent (3.8e-05 -> 0.000038), for CSV and tables,
    which spreadsheets and people read; magnitudes no amount or count has (below 1e-20, from 1e21 on)
    keep the exponent rather than dozens of zeros."""
    text = repr(value)
    if "e" not in text or not 1e-20 <= abs(value) < 1e21:
        return text
    return format(decimal.Decimal(text), "f")


def write_json(out: IO[bytes], columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """A JSON array of objects, one per row, keys in column order; returns the row count."""
    count = 0
    out.write(b"[")
    for row in rows:
        out.write(b",\n  " if count else b"\n  ")
        out.write(orjson.dumps(dict(zip(columns, row, strict=True)), default=_default,
                               option=orjson.OPT_NON_STR_KEYS))
        count += 1
    out.write(b"\n]\n" if count else b"]\n")
    return count


def write_csv(out: IO[str], columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """RFC 4180 CSV with a header row; nested values as JSON text, null as an empty field."""
    writer = csv.writer(out, lineterminator="\n")
    # The csv module quotes a field holding a character of its line terminator, and only "\n" is ours:
    # a bare CR (in a value, or an entry's key as a column name) would go out unquoted and end the row
    # for every reader. A row holding one is written with "\r\n" rows (so the CR is quoted), then ended
    # with "\n" like the others.
    held = io.StringIO()
    carriage = csv.writer(held, lineterminator="\r\n")

    def write(cells: list[str]) -> None:
        if any("\r" in cell for cell in cells):
            carriage.writerow(cells)
            out.write(held.getvalue()[:-2] + "\n")
            held.seek(0)
            held.truncate()
        else:
            writer.writerow(cells)

    write([str(c) for c in columns])
    count = 0
    for row in rows:
        write([plain(v) for v in row])
        count += 1
    return count


def write_table(out: IO[str], columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
                formats: Mapping[str, Formatter] | None = None, totals: Sequence[Any] | None = None,
                limit: int = TABLE_ROWS) -> int:
    """Columns aligned (numbers right, text left), a rule under the header, an optional totals line."""
    formats = formats or {}
    shown: list[list[str]] = []
    numeric = [True] * len(columns)
    count = 0
    cells_of = [formats.get(c, _cell) for c in columns]
    for row in rows:
        count += 1
        if len(shown) < limit:
            shown.append([cell(v) for cell, v in zip(cells_of, row, strict=True)])
            for i, v in enumerate(row):
                if v is not None and (isinstance(v, bool) or not isinstance(v, int | float | decimal.Decimal)):
                    numeric[i] = False
    footer = [cell(v) for cell, v in zip(cells_of, totals, strict=True)] if totals is not None else None
    for i, cell in enumerate(cells_of):
        if cell is money:  # one number of decimals down the column, the most any of its cells needs
            _same_decimals(i, shown + ([footer] if footer else []))
    headers = [printable(c) for c in columns]  # column names can be entry keys (SELECT *)
    widths = [len(c) for c in headers]
    for line in shown + ([footer] if footer else []):
        widths = [max(w, len(text)) for w, text in zip(widths, line, strict=True)]

    def render(line: Sequence[str]) -> str:
        return "  ".join(text.rjust(w) if num else text.ljust(w)
                         for text, w, num in zip(line, widths, numeric, strict=True)).rstrip()

    out.write(render(headers) + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for line in shown:
        out.write(render(line) + "\n")
    if footer is not None:
        out.write("  ".join("-" * w for w in widths) + "\n")
        out.write(render(footer) + "\n")
    if count > len(shown):
        out.write(f"({count - len(shown)} more rows not shown; use --format csv or json for all)\n")
    elif count == 0 and not footer:
        out.write("(no rows)\n")
    return count


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    text = printable(plain(value))
    return text if len(text) <= CELL_WIDTH else text[:CELL_WIDTH - 1] + "…"


def grouped_int(value: Any) -> str:
    """1234567 -> 1,234,567 (tables only)."""
    if value is None:
        return ""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def money(value: Any) -> str:
    """A cost with 6 decimals, or as many more (to 10, what stats rounds costs to) as it needs: 0.1000001."""
    if value is None:
        return ""
    text = f"{value:,.{COST_DECIMALS}f}"
    cut = len(text) - (COST_DECIMALS - MONEY_DECIMALS)  # the decimals past MONEY_DECIMALS: kept if not zeros
    return text[:cut] + text[cut:].rstrip("0")


def _same_decimals(column: int, lines: list[list[str]]) -> None:
    """Pad the column's numbers with zeros to the same number of decimals, so that they line up."""
    decimals = max((len(line[column].partition(".")[2]) for line in lines), default=0)
    for line in lines:
        whole, dot, fraction = line[column].partition(".")
        if dot:
            line[column] = whole + "." + fraction.ljust(decimals, "0")


def millis(value: Any) -> str:
    return "-" if value is None else f"{value:,.1f}"
