"""Admission: turning the values a caller sends into entries the writer may queue.

One function, `admit`, serves both `LogWriter.write_many` and `POST /api/logs`: it checks every
value and refuses the whole call at the first bad one with an `EntryError` that names its
position. Nothing of a refused call is queued. An entry must be:

- a JSON object: a dict, or another Mapping (taken as a dict), whose values must be JSON types
  (dict, list, str, int, float, bool, None): a Mapping that is not a dict, a set or bytes inside
  it is refused, naming its type and where it is;
- dated: its `timestamp`, if present, is an RFC 3339 date-time (`Timestamps` below)
  inside the window `max_past_days` / `max_future_days` around the server's clock, if set;
  without a `timestamp` it gets the current UTC time; `"timestamp": null` is refused;
- JSON that stores exactly: integers within 64 bits, finite numbers (no NaN, no infinity);
- at most `max_entry_bytes` once serialized, after the privacy controls (privacy.py) have
  dropped, masked and truncated what they should, and `received_at_field` is stamped.

A call may span at most `MAX_DATES_PER_CALL` UTC dates.
"""

from __future__ import annotations

import marshal
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NamedTuple

import orjson

from .errors import EntryError, EntryTooLargeError
from .privacy import NO_PRIVACY, Privacy, check_paths

# Each distinct date of a call costs its own frame and blob lane (and, for a new date, storage
# requests to create the blob): a guard against one call fanning out over thousands of dates. Not a
# setting: a live gateway's call spans one or two dates (midnight); a backfill splits by date.
MAX_DATES_PER_CALL = 100

INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # what orjson (and so the stored JSON) holds exactly
INT_RANGE = "JSON integers are stored in 64 bits (-2^63 to 2^64-1); send larger ones as strings"
NOT_FINITE = "JSON numbers must be finite (no NaN or infinity)"
# orjson serializes at most this many levels of objects and arrays (the entry itself is the first).
MAX_DEPTH = 254
TOO_DEEP = f"objects and arrays nested more than {MAX_DEPTH} levels deep (the entry itself counts as one)"
JSON_VALUES = "values must be JSON types (dict, list, str, int, float, bool, None)"
NOT_UNICODE = "a string holds an unpaired UTF-16 surrogate (\\ud800-\\udfff), which is not Unicode text"


class Prepared(NamedTuple):
    """A validated entry: the UTC date it belongs to and its JSON serialization."""

    date: str
    line: bytes


# -- Timestamps -------------------------------------------------------------------------------
#
# RFC 3339 section 5.6 `date-time`: YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM). As the RFC's
# ABNF is case-insensitive, `t` and `z` are accepted too; second 60 (a leap second) is accepted
# and counts as the last instant of second 59. Refused: ISO 8601's other forms (week and ordinal
# dates, the basic format without separators, a bare date, hours without minutes or seconds, a
# comma before the fraction) and the space separator that section 5.6's NOTE lets applications
# choose: entries are stored as sent, and one form keeps stored data readable by any strict
# RFC 3339 parser. One extension, kept for compatibility: a date-time without an offset means UTC.

_RFC3339 = re.compile(
    r"(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})[Tt](?P<h>[0-9]{2}):(?P<mi>[0-9]{2}):(?P<s>[0-9]{2})"
    r"(?:\.(?P<f>[0-9]+))?(?P<z>[Zz]|(?P<sign>[+-])(?P<oh>[0-9]{2}):(?P<om>[0-9]{2}))?")
_BARE_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_SPACED = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:")
_WEEK_OR_ORDINAL = re.compile(r"[0-9]{4}-?(W[0-9]{2}|[0-9]{3}(?![0-9]))")
_SHAPE = "an RFC 3339 date-time, e.g. 2026-11-24T10:00:00.123Z or 2026-11-24T11:00:00+01:00"


def _shown(text: str) -> str:
    return repr(text if len(text) <= 64 else text[:64] + "...")


# The common forms, checked for their shape and then read by datetime.fromisoformat (C): the slow
# path below only runs for what this refuses (and to say why).
_RFC3339_FAST = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:Z|[+-][0-9]{2}:[0-9]{2})?")


def parse_timestamp(text: Any) -> datetime:
    """The UTC instant of an RFC 3339 date-time (without an offset: UTC); EntryError saying why not."""
    if type(text) is str and _RFC3339_FAST.fullmatch(text) is not None:
        try:
            moment = datetime.fromisoformat(text)
            zone = moment.tzinfo
            if zone is UTC:  # `Z` or +00:00
                return moment
            return moment.astimezone(UTC) if zone is not None else moment.replace(tzinfo=UTC)
        except (ValueError, OverflowError):
            pass  # a leap second, an impossible date or offset: the full parse below says which
    if not isinstance(text, str):
        raise EntryError(f"'timestamp' must be a string ({_SHAPE}), got {json_type(text)}")
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise EntryError(f"'timestamp' {_shown(text)} is not {_SHAPE}{_hint(text)}")
    second = int(m["s"])
    fraction = m["f"] or ""
    if second == 60:  # a leap second: the last instant of the minute
        second, fraction = 59, "999999"
    offset = UTC
    if m["sign"]:
        hours, minutes = int(m["oh"]), int(m["om"])
        if hours > 23 or minutes > 59:
            raise EntryError(f"'timestamp' {_shown(text)} has an offset out of range (-23:59 to +23:59)")
        delta = timedelta(hours=hours, minutes=minutes)
        offset = timezone(-delta if m["sign"] == "-" else delta)
    try:
        moment = datetime(int(m["y"]), int(m["mo"]), int(m["d"]), int(m["h"]), int(m["mi"]), second,
                          int(fraction[:6].ljust(6, "0")), tzinfo=offset)
        return moment.astimezone(UTC)
    except ValueError:
        raise EntryError(f"'timestamp' {_shown(text)} is not a valid date and time") from None
    except OverflowError:
        raise EntryError(f"'timestamp' {_shown(text)} is outside the years 0001-9999 in UTC") from None


def _hint(text: str) -> str:
    if _BARE_DATE.fullmatch(text):
        return " (a date without a time: add one, e.g. T00:00:00Z)"
    if _SPACED.match(text):
        return " (date and time are separated by a space: use 'T')"
    if _WEEK_OR_ORDINAL.match(text):
        return " (ISO 8601 week and ordinal dates are not RFC 3339)"
    return ""


def utc_date(timestamp: Any) -> str:
    """The UTC date (YYYY-MM-DD) of an RFC 3339 timestamp; without an offset it means UTC."""
    return parse_timestamp(timestamp).date().isoformat()


def format_timestamp(moment: datetime) -> str:
    """A UTC instant as RFC 3339 with milliseconds and `Z`: 2026-11-24T10:00:00.123Z."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def now_timestamp() -> tuple[str, str]:
    """The current UTC time as an RFC 3339 string with `Z`, and its date."""
    now = datetime.now(UTC)
    return format_timestamp(now), now.date().isoformat()


# -- Numbers ------------------------------------------------------------------------------------

def _where(path: str) -> str:
    return f"at {path!r}" if path else "at the top level"


def _find(value: Any, wanted: Callable[[Any], bool]) -> tuple[str, Any] | None:
    """The path and value of the first item (in order, the value itself first) that is `wanted`, if any."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if wanted(item):
            return path, item
        if isinstance(item, Mapping):
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in reversed(list(item.items())))
        elif isinstance(item, list | tuple):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(item))))
    return None


def _inexact(item: Any) -> bool:
    """An integer beyond 64 bits or a non-finite float: a number JSON cannot store exactly."""
    if isinstance(item, bool):
        return False
    if isinstance(item, int):
        return not INT_MIN <= item <= INT_MAX
    return isinstance(item, float) and not math.isfinite(item)


def _find_number(value: Any) -> tuple[str, Any] | None:
    """The path and value of the first integer beyond 64 bits or non-finite float, if any."""
    return _find(value, _inexact)


# A first look for NaN and infinity at C speed: marshal (format version 4) writes every float as the
# byte 'g' (0xE7 when it may be referred to again) and its 8 bytes of IEEE 754 little-endian, and the
# last two bytes of a NaN or an infinity are 0xF0-0xFF then 0x7F or 0xFF (exponent all ones). Where no
# such bytes follow a float's type byte, no float is non-finite. It can only err towards looking closer
# (bytes of a string or an integer that happen to match), and a value marshal does not take (a Mapping
# that is not a dict, a subclass) is looked at closer too.
_FLOAT_TYPES = (ord("g"), ord("g") | 0x80)


def _marshal_scan(value: Any) -> bool:
    """False when `value` surely holds no NaN or infinity; True when it must be looked at closer."""
    try:
        data = marshal.dumps(value, 4)
    except ValueError:
        return True
    for tail in (0x7F, 0xFF):
        i = data.find(tail, 8)
        while i != -1:
            if data[i - 1] >= 0xF0 and data[i - 8] in _FLOAT_TYPES:
                return True
            i = data.find(tail, i + 1)
    return False


def _look_closer(value: Any) -> bool:
    return True


def _marshal_scan_holds() -> bool:
    """Whether this Python's marshal writes floats the way _marshal_scan expects (checked at import)."""
    found = all(_marshal_scan({"a": [1, {"b": x}]}) for x in (math.nan, math.inf, -math.inf, -math.nan))
    return found and not any(_marshal_scan({"a": [x, "\x7f\xff"]}) for x in (0.0, 1.5, -2.5e300, 5e-324))


# Another marshal format (a future Python): every entry is read back and compared, as before the scan.
_may_have_non_finite: Callable[[Any], bool] = _marshal_scan if _marshal_scan_holds() else _look_closer


_NOT_SERIALIZABLE = "Type is not JSON serializable: "  # orjson's words, then the type's name


def _not_json(entry: Any, reason: str) -> str:
    """Why orjson refused an entry: for a value of a type it does not write, which one and where."""
    name = reason.removeprefix(_NOT_SERIALIZABLE) if reason.startswith(_NOT_SERIALIZABLE) else None
    found = _find(entry, lambda item: type(item).__name__ == name) if name else None
    if found is None:
        return reason
    return f"the value {_where(found[0])} is of type {name}; {JSON_VALUES}"


def number_error(path: str, value: Any) -> str:
    """The one message for a number JSON cannot store exactly, the same on every path in."""
    if isinstance(value, float):
        return f"number {_where(path)} is {value!r}: {NOT_FINITE}"
    digits = str(value)
    shown = digits if len(digits) <= 40 else digits[:20] + "..." + digits[-8:]
    return f"integer {shown} {_where(path)} does not fit in 64 bits: {INT_RANGE}"


# -- Admission --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rules:
    """What admission checks and changes, from the settings (one per writer)."""

    max_entry_bytes: int
    max_past_days: int | None = None
    max_future_days: int | None = None
    received_at_field: str | None = None
    privacy: Privacy = NO_PRIVACY

    @property
    def timed(self) -> bool:
        """Whether admission reads the clock (a window, or a received-at stamp): then each call needs its own."""
        return self.max_past_days is not None or self.max_future_days is not None or bool(self.received_at_field)

    @classmethod
    def from_settings(cls, settings: Any) -> Rules:
        return cls(settings.max_entry_bytes, settings.max_past_days, settings.max_future_days,
                   settings.received_at_field,
                   Privacy(drop=settings.drop_fields, mask=settings.mask_fields,
                           truncate_bytes=settings.truncate_bytes, metadata_only=settings.metadata_only))


def _days(count: int) -> str:
    return f"{count} day{'' if count == 1 else 's'}"


def _span(delta: timedelta) -> str:
    """A duration to the second (or millisecond), `7 days 00:00:01`: just past a bound of 7 days must not
    read as 7.0 days, as if inside it."""
    whole, milliseconds = divmod(delta // timedelta(milliseconds=1), 1000)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    text = f"{_days(days)} {hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return text + (f".{milliseconds:03d}" if milliseconds else "")


_NOT_READ = datetime.min.replace(tzinfo=UTC)  # Admission.now when no rule needs the clock
_ABSENT: Any = object()  # an entry without a timestamp


class Admission:
    """One call's admission: its clock reading (for the window and `received_at_field`) and the privacy
    controls in force (the configured ones, narrowed by the call's own)."""

    def __init__(self, rules: Rules, *, privacy: Privacy | None = None, check_numbers: bool = True,
                 now: datetime | None = None) -> None:
        self.rules = rules
        # The clock is read once per call, and only when something needs it.
        self.now = now or (datetime.now(UTC) if rules.timed else _NOT_READ)
        self.privacy = rules.privacy.narrowed(privacy)
        if privacy is not None:  # a call's own paths are refused as the settings' are
            check_paths((*privacy.drop, *privacy.mask), rules.received_at_field)
        # Values parsed from JSON text cannot hold NaN or infinity (the parsers refuse them); values
        # from Python can, and orjson would silently write them as null.
        self.check_numbers = check_numbers
        self.earliest = self.now - timedelta(days=rules.max_past_days) if rules.max_past_days is not None else None
        self.latest = self.now + timedelta(days=rules.max_future_days) if rules.max_future_days is not None else None
        self.received = format_timestamp(self.now) if rules.received_at_field else None

    def _window(self) -> str:
        r = self.rules
        past = f"{_days(r.max_past_days)} before" if r.max_past_days is not None else "any time before"
        future = f"{_days(r.max_future_days)} after" if r.max_future_days is not None else "any time after"
        return (f"entries are accepted from {past} to {future} the server's clock, now {format_timestamp(self.now)} "
                f"(max_past_days={r.max_past_days}, max_future_days={r.max_future_days})")

    def _check_window(self, moment: datetime, text: str) -> None:
        if self.earliest is not None and moment < self.earliest:
            where = f"{_span(self.now - moment)} in the past"
        elif self.latest is not None and moment > self.latest:
            where = f"{_span(moment - self.now)} in the future"
        else:
            return
        raise EntryError(f"'timestamp' {_shown(text)} is {where}: {self._window()}")

    def prepare(self, entry: Any) -> Prepared:
        """Validate, apply the privacy controls to, stamp and serialize one entry."""
        if type(entry) is not dict:
            if not isinstance(entry, Mapping):
                raise EntryError(f"an entry must be a JSON object, not {json_type(entry)}")
            entry = dict(entry)  # one rule for every Mapping, whatever its fields (orjson writes only dicts)
        timestamp = entry.get("timestamp", _ABSENT)
        if timestamp is _ABSENT:
            timestamp, date = now_timestamp()
            entry = {**entry, "timestamp": timestamp}
        else:
            if timestamp is None:
                raise EntryError(f"'timestamp' is null: leave it out to get the current time, or send {_SHAPE}")
            moment = parse_timestamp(timestamp)
            if self.earliest is not None or self.latest is not None:
                self._check_window(moment, timestamp)
            # A valid timestamp in UTC (`Z`) starts with its UTC date.
            date = timestamp[:10] if timestamp[-1] == "Z" else moment.date().isoformat()
        field = self.rules.received_at_field
        if self.privacy.active:
            try:
                entry = self.privacy.apply(entry, keep=field)
            except RecursionError:  # the controls walk the entry; far deeper than orjson would serialize
                raise EntryError(f"entry has {TOO_DEEP}") from None
        if field is not None:
            entry = {**entry, field: self.received}
        try:
            # Copied to an exact-size object: orjson's output keeps its larger working buffer's
            # allocation alive, ~9 KB of memory per queued 1.2 KB entry instead of ~1.7 KB.
            line = bytes(memoryview(orjson.dumps(entry)))
        except (TypeError, orjson.JSONEncodeError) as exc:
            reason = str(exc)
            found = _find_number(entry) if "64-bit" in reason else None
            if found is not None:
                raise EntryError(number_error(*found)) from None
            if "Recursion limit" in reason:
                raise EntryError(f"entry has {TOO_DEEP}") from None
            if "surrogates not allowed" in reason:
                raise EntryError(f"entry is not valid JSON text: {NOT_UNICODE}") from None
            raise EntryError(f"entry is not JSON-serializable: {_not_json(entry, reason)}") from None
        # orjson writes NaN and infinity as null, silently. marshal's bytes (C speed) say whether a float
        # may be one; only then is the line read back and compared (C speed) and, if it differs (also for
        # a tuple, which reads back as a list), the entry walked (Python speed) for the number and its
        # path. (Looking for a null in the line first would cost more than it saves: logged API calls
        # nearly always hold one.) Integers beyond 64 bits never get here: orjson.dumps refused them.
        if self.check_numbers and _may_have_non_finite(entry) and orjson.loads(line) != entry:
            found = _find_number(entry)
            if found is not None:
                raise EntryError(number_error(*found))
        if len(line) > self.rules.max_entry_bytes:
            raise EntryTooLargeError(
                f"entry is {len(line)} bytes serialized; the limit (max_entry_bytes) is {self.rules.max_entry_bytes}"
            )
        return Prepared(date, line)


def prepare(entry: Any, max_entry_bytes: int) -> Prepared:
    """Validate and serialize one entry with no window, stamp or privacy control (see Admission)."""
    return Admission(Rules(max_entry_bytes)).prepare(entry)


def admit(values: Iterable[tuple[int, Any]], *, max_entry_bytes: int, max_entries: int, max_bytes: int,
          where: str = "index", admission: Admission | None = None) -> list[Prepared]:
    """Prepare every (position, value) of one call, all or nothing.

    Raises EntryError at the first bad value, naming it as `entry {where} {position}`, and
    EntryTooLargeError as soon as the call holds more than `max_entries` entries or `max_bytes`
    serialized bytes: more than the queue can ever hold, so retrying would not help. The values
    are consumed one by one, so a huge call is refused without being read whole. The iterable
    itself may raise EntryError (a malformed line). `admission` holds the writer's rules and this call's
    privacy controls and clock (default: only max_entry_bytes is checked).
    """
    if admission is None:
        admission = Admission(Rules(max_entry_bytes))
    prepared: list[Prepared] = []
    dates: set[str] = set()
    size = consumed = 0
    try:
        for position, value in values:
            consumed += 1
            if consumed > max_entries:
                raise EntryTooLargeError(f"more than {max_entries} entries in one call; at most max_queue_size="
                                         f"{max_entries} fit in the queue: split the call")
            try:
                entry = admission.prepare(value)
            except EntryError as exc:
                raise type(exc)(f"entry {where} {position}: {exc}", position) from None
            if entry.date not in dates:
                dates.add(entry.date)
                if len(dates) > MAX_DATES_PER_CALL:
                    raise EntryError(f"entry {where} {position}: more than {MAX_DATES_PER_CALL} distinct UTC dates "
                                     "in one call: split the call by date", position)
            size += len(entry.line)
            if size > max_bytes:
                raise EntryTooLargeError(f"more than {max_bytes} bytes of entries in one call; at most "
                                         f"max_queue_bytes={max_bytes} fit in the queue: split the call")
            prepared.append(entry)
    except EntryError as exc:
        exc.consumed = consumed + (0 if consumed > len(prepared) else 1)  # a malformed value raised while read
        raise
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
