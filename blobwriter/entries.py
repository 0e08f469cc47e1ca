"""Admission: turning the values a caller sends into entries the writer may queue.

One function, `admit`, serves both `LogWriter.write_many` and `POST /api/logs`: it checks every
value (a JSON object, an ISO-8601 `timestamp` or none, JSON-serializable, not over
`max_entry_bytes`), serializes it once, and refuses the whole call at the first bad value with an
`EntryError` that names its position. Nothing of a refused call is queued.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from .errors import EntryError, EntryTooLargeError


class Prepared(NamedTuple):
    """A validated entry: the UTC date it belongs to and its JSON serialization."""

    date: str
    line: bytes


def utc_date(timestamp: Any) -> str:
    """The UTC date (YYYY-MM-DD) of an ISO-8601 timestamp; naive timestamps mean UTC."""
    if not isinstance(timestamp, str):
        raise EntryError(f"'timestamp' must be an ISO-8601 string, got {json_type(timestamp)}")
    try:
        moment = datetime.fromisoformat(timestamp)
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC)
        return moment.date().isoformat()
    except (ValueError, OverflowError):
        shown = timestamp if len(timestamp) <= 64 else timestamp[:64] + "..."
        raise EntryError(f"'timestamp' is not an ISO-8601 date-time: {shown!r}") from None


def now_timestamp() -> tuple[str, str]:
    """The current UTC time as an ISO-8601 string with `Z`, and its date."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", now.date().isoformat()


def prepare(entry: Any, max_entry_bytes: int) -> Prepared:
    """Validate and serialize one entry (adding a UTC timestamp if it has none)."""
    if not isinstance(entry, Mapping):
        raise EntryError(f"an entry must be a JSON object, not {json_type(entry)}")
    timestamp = entry.get("timestamp")
    if timestamp is None:
        timestamp, date = now_timestamp()
        entry = {**entry, "timestamp": timestamp}
    else:
        date = utc_date(timestamp)
    try:
        # Copied to an exact-size object: orjson's output keeps its larger working buffer's
        # allocation alive, ~9 KB of memory per queued 1.2 KB entry instead of ~1.7 KB.
        line = bytes(memoryview(orjson.dumps(entry)))
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise EntryError(f"entry is not JSON-serializable: {exc}") from None
    if len(line) > max_entry_bytes:
        raise EntryTooLargeError(
            f"entry is {len(line)} bytes serialized; the limit (max_entry_bytes) is {max_entry_bytes}"
        )
    return Prepared(date, line)


def admit(values: Iterable[tuple[int, Any]], *, max_entry_bytes: int, max_entries: int, max_bytes: int,
          where: str = "index") -> list[Prepared]:
    """Prepare every (position, value) of one call, all or nothing.

    Raises EntryError at the first bad value, naming it as `entry {where} {position}`, and
    EntryTooLargeError as soon as the call holds more than `max_entries` entries or `max_bytes`
    serialized bytes: more than the queue can ever hold, so retrying would not help. The values
    are consumed one by one, so a huge call is refused without being read whole. The iterable
    itself may raise EntryError (a malformed line).
    """
    prepared: list[Prepared] = []
    size = 0
    for position, value in values:
        if len(prepared) >= max_entries:
            raise EntryTooLargeError(f"more than {max_entries} entries in one call; at most max_queue_size="
                                     f"{max_entries} fit in the queue: split the call")
        try:
            entry = prepare(value, max_entry_bytes)
        except EntryError as exc:
            raise type(exc)(f"entry {where} {position}: {exc}", position) from None
        size += len(entry.line)
        if size > max_bytes:
            raise EntryTooLargeError(f"more than {max_bytes} bytes of entries in one call; at most max_queue_bytes="
                                     f"{max_bytes} fit in the queue: split the call")
        prepared.append(entry)
    return prepared


def json_type(value: Any) -> str:
    """How JSON would name a value's type, for messages."""
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
