"""Admission (blobwriter/entries.py): what an entry must be to be queued, and how it is serialized."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blobwriter.entries import MAX_DATES_PER_CALL, Admission, Prepared, Rules, admit, format_timestamp, prepare
from blobwriter.errors import EntryError, EntryTooLargeError

DAY = "2026-05-17"
TS = f"{DAY}T12:00:00.000Z"


@pytest.fixture
def idle_writer() -> Callable[[Any], Prepared]:
    """entries.prepare with max_entry_bytes 2048 (admission needs no writer and no storage)."""
    return lambda value: prepare(value, 2048)


@pytest.mark.parametrize("value", [[1, 2], "text", 42, 1.5, True, None])
def test_non_object_rejected(idle_writer: Callable[[Any], Prepared], value: Any) -> None:
    with pytest.raises(EntryError, match="must be a JSON object"):
        idle_writer(value)


@pytest.mark.parametrize("timestamp", ["yesterday", "2026-13-01T00:00:00Z", "2026-02-30T10:00:00Z", "", 1716000000,
                                       ["2026-05-17"], "T" * 500, "0001-01-01T00:30:00+01:00",
                                       "9999-12-31T23:30:00-01:00"])
def test_bad_timestamp_rejected(idle_writer: Callable[[Any], Prepared], timestamp: Any) -> None:
    with pytest.raises(EntryError, match="'timestamp'") as caught:
        idle_writer({"id": "x", "timestamp": timestamp})
    assert len(str(caught.value)) < 200  # a long bad value is shortened, not echoed whole


@pytest.mark.parametrize("value", [{1, 2}, object(), b"bytes"])
def test_non_serializable_rejected(idle_writer: Callable[[Any], Prepared], value: Any) -> None:
    with pytest.raises(EntryError, match="not JSON-serializable"):
        idle_writer({"id": "x", "timestamp": TS, "value": value})


class _Mapped(Mapping[str, Any]):
    """A Mapping that is not a dict (as an application's own record type may be)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


@pytest.mark.parametrize("make", [MappingProxyType, _Mapped], ids=["mappingproxy", "custom Mapping"])
@pytest.mark.parametrize("timestamp", [None, "2026-11-28T01:00:00Z"], ids=["no timestamp", "timestamp"])
def test_an_entry_that_is_a_mapping_is_taken_as_a_dict_with_or_without_a_timestamp(
        idle_writer: Callable[[Any], Prepared], make: Callable[[dict[str, Any]], Any], timestamp: str | None) -> None:
    """A hands-on review: a Mapping entry was accepted without a timestamp (copied into a dict when one
    was added) and refused with one ('Type is not JSON serializable: mappingproxy')."""
    fields: dict[str, Any] = {"id": "m", "n": 1, "nested": {"list": [1, "two", None]}}
    if timestamp is not None:
        fields["timestamp"] = timestamp
    prepared = idle_writer(make(fields))
    stored = orjson.loads(prepared.line)
    assert stored == {**fields, "timestamp": stored["timestamp"]}
    if timestamp is not None:
        assert (stored["timestamp"], prepared.date) == (timestamp, "2026-11-28")


@pytest.mark.parametrize("make", [MappingProxyType, _Mapped], ids=["mappingproxy", "custom Mapping"])
def test_a_nested_mapping_that_is_not_a_dict_is_refused_naming_its_type_and_path(
        idle_writer: Callable[[Any], Prepared], make: Callable[[dict[str, Any]], Any]) -> None:
    """Values inside an entry must be JSON types; the one that is not is named, with where it is."""
    name = type(make({})).__name__
    for timestamp in ({"timestamp": TS}, {}):
        with pytest.raises(EntryError) as caught:
            idle_writer({**timestamp, "a": {"list": [1, make({"b": 1})]}})
        assert str(caught.value) == (f"entry is not JSON-serializable: the value at 'a.list[1]' is of type {name}; "
                                     "values must be JSON types (dict, list, str, int, float, bool, None)")


def test_non_string_keys_rejected(idle_writer: Callable[[Any], Prepared]) -> None:
    with pytest.raises(EntryError):
        idle_writer({"id": "x", "timestamp": TS, 7: "int key"})


def test_too_large_rejected(idle_writer: Callable[[Any], Prepared]) -> None:
    fits = idle_writer({"timestamp": TS, "pad": "x" * 1900})
    assert len(fits.line) <= 2048
    with pytest.raises(EntryTooLargeError, match="max_entry_bytes") as caught:
        idle_writer({"timestamp": TS, "pad": "x" * 2100})
    assert isinstance(caught.value, EntryError)
    assert "2048" in str(caught.value)


@pytest.mark.parametrize("given", [{}])
def test_missing_timestamp_added_as_utc_z(idle_writer: Callable[[Any], Prepared], given: dict[str, Any]) -> None:
    original = {"id": "x", **given}
    prepared = idle_writer(original)
    stored = orjson.loads(prepared.line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stored["timestamp"])
    assert prepared.date == stored["timestamp"][:10]
    assert abs((datetime.fromisoformat(stored["timestamp"]) - datetime.now(UTC)).total_seconds()) < 3600
    assert original == {"id": "x", **given}  # the caller's dict is not modified


def test_entry_serialized_faithfully(idle_writer: Callable[[Any], Prepared]) -> None:
    value = {"id": "x", "timestamp": TS, "nested": {"list": [1, 2.5, None, True], "text": "héllo ✓ \"q\"\n"}}
    assert orjson.loads(idle_writer(value).line) == value


@pytest.mark.parametrize(
    ("timestamp", "date"),
    [
        ("2026-03-01T23:59:59.999Z", "2026-03-01"),
        ("2026-03-02T00:00:00Z", "2026-03-02"),
        ("2026-03-02T08:59:59+09:00", "2026-03-01"),
        ("2026-03-02T09:00:00+09:00", "2026-03-02"),
        ("2026-03-01T19:00:00-05:00", "2026-03-02"),
        ("2026-03-01T23:59:59.999999", "2026-03-01"),  # naive means UTC
        ("2026-03-02T00:00:00", "2026-03-02"),
        ("2026-02-28T23:30:00-01:00", "2026-03-01"),
        ("2024-02-29T23:00:00-02:00", "2024-03-01"),
        ("2026-12-31T23:59:59.999Z", "2026-12-31"),
        ("2027-01-01T00:30:00+01:00", "2026-12-31"),
        ("2026-03-01t23:30:00z", "2026-03-01"),  # RFC 3339 5.6 NOTE: 't' and 'z' may be lower case
        ("2026-12-31T23:59:60Z", "2026-12-31"),  # a leap second (time-second 60) is in its own day
        ("2026-03-01T23:30:00-00:00", "2026-03-01"),  # unknown local offset (RFC 3339 4.3): UTC
        ("2026-03-01T23:30:00.123456789123Z", "2026-03-01"),  # any number of fraction digits
    ],
)
def test_utc_date_of_timestamp(idle_writer: Callable[[Any], Prepared], timestamp: str, date: str) -> None:
    assert idle_writer({"timestamp": timestamp}).date == date


def test_admit_names_the_position_of_the_first_bad_entry() -> None:
    values = [{"timestamp": TS}, {"timestamp": TS}, "not an object", {"timestamp": "bad"}]
    with pytest.raises(EntryError, match="entry line 7: an entry must be a JSON object") as caught:
        admit(zip([5, 6, 7, 8], values, strict=True), max_entry_bytes=2048, max_entries=10, max_bytes=10**6,
              where="line")
    assert caught.value.position == 7


def test_admit_refuses_more_entries_than_the_queue_can_ever_hold() -> None:
    with pytest.raises(EntryTooLargeError, match="max_queue_size=3"):
        admit(enumerate([{"timestamp": TS}] * 4), max_entry_bytes=2048, max_entries=3, max_bytes=10**6)
    assert len(admit(enumerate([{"timestamp": TS}] * 3), max_entry_bytes=2048, max_entries=3, max_bytes=10**6)) == 3


def test_admit_refuses_more_bytes_than_the_queue_can_ever_hold() -> None:
    values = [{"timestamp": TS, "pad": "x" * 900}] * 3
    line = len(prepare(values[0], 2048).line)
    assert len(admit(enumerate(values), max_entry_bytes=2048, max_entries=10, max_bytes=3 * line)) == 3
    with pytest.raises(EntryTooLargeError, match="max_queue_bytes"):
        admit(enumerate(values), max_entry_bytes=2048, max_entries=10, max_bytes=3 * line - 1)


def test_admit_stops_reading_a_huge_call_at_the_limit() -> None:
    """A call of a million entries is refused after max_entries + 1 values, never read whole."""
    consumed = 0

    def values() -> Any:
        nonlocal consumed
        for n in range(1_000_000):
            consumed += 1
            yield n, {}

    with pytest.raises(EntryTooLargeError):
        admit(values(), max_entry_bytes=2048, max_entries=100, max_bytes=10**9)
    assert consumed == 101


# -- issue 13: timestamps are RFC 3339, bounded, never null; numbers are stored exactly ------------------

@pytest.mark.parametrize(("timestamp", "why"), [
    ("2026-03-01", "a date without a time"),
    ("2026-03-01 10:00:00Z", "separated by a space"),
    ("2026-W18-5", "week and ordinal"),
    ("2026-W18-5T10:00:00Z", "week and ordinal"),
    ("2026-060T10:00:00Z", "week and ordinal"),
    ("20260301T100000Z", "not an RFC 3339 date-time"),  # ISO 8601 basic format
    ("2026-03-01T10Z", "not an RFC 3339 date-time"),  # reduced precision
    ("2026-03-01T10:00Z", "not an RFC 3339 date-time"),
    ("2026-03-01T10:00:00,5Z", "not an RFC 3339 date-time"),  # comma before the fraction
    ("2026-03-01T10:00:00+0100", "not an RFC 3339 date-time"),  # offset without a colon
    ("2026-03-01T10:00:00+01", "not an RFC 3339 date-time"),
    ("+2026-03-01T10:00:00Z", "not an RFC 3339 date-time"),  # expanded year
    ("2026-03-01T10:00:00Z ", "not an RFC 3339 date-time"),
    ("٢٠٢٦-03-01T10:00:00Z", "not an RFC 3339 date-time"),  # non-ASCII digits
    ("2026-03-01T10:00:00+24:00", "offset out of range"),
    ("2026-03-01T24:00:00Z", "not a valid date and time"),
    ("0000-03-01T10:00:00Z", "not a valid date and time"),
    ("0001-01-01T00:30:00+01:00", "outside the years 0001-9999"),
])
def test_timestamps_must_be_rfc3339_and_the_error_says_why(idle_writer: Callable[[Any], Prepared],
                                                            timestamp: str, why: str) -> None:
    """Main accepted every form Python's fromisoformat reads (bare dates, week dates, basic format, a space
    separator) and stored it as sent."""
    with pytest.raises(EntryError, match="'timestamp'") as caught:
        idle_writer({"timestamp": timestamp})
    assert why in str(caught.value)
    assert "RFC 3339" in str(caught.value) or why in ("offset out of range", "not a valid date and time",
                                                      "outside the years 0001-9999")


def test_explicit_null_timestamp_is_an_error_not_now(idle_writer: Callable[[Any], Prepared]) -> None:
    """Main replaced "timestamp": null with the current time."""
    with pytest.raises(EntryError, match="'timestamp' is null: leave it out to get the current time"):
        idle_writer({"id": "x", "timestamp": None})
    with pytest.raises(EntryError, match="entry index 1: 'timestamp' is null"):
        admit(enumerate([{"timestamp": TS}, {"timestamp": None}]), max_entry_bytes=2048, max_entries=10,
              max_bytes=10**6)


NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def windowed(past: int | None, future: int | None) -> Admission:
    return Admission(Rules(2048, max_past_days=past, max_future_days=future), now=NOW)


@pytest.mark.parametrize(("moment", "past", "future", "refused"), [
    (NOW - timedelta(days=7, seconds=-1), 7, 1, None),
    # Just past a bound reads as past it (it said "7.0 days in the past", as if inside 7 days).
    (NOW - timedelta(days=7, seconds=1), 7, 1, "is 7 days 00:00:01 in the past"),
    (NOW + timedelta(days=1, seconds=-1), 7, 1, None),
    (NOW + timedelta(days=1, milliseconds=250), 7, 1, "is 1 day 00:00:00.250 in the future"),
    (NOW + timedelta(days=3, hours=4, minutes=5, seconds=6), 7, 1, "is 3 days 04:05:06 in the future"),
    (datetime(1, 1, 1, tzinfo=UTC), 7, None, "in the past"),
    (datetime(9999, 12, 31, tzinfo=UTC), None, 1, "in the future"),
    (datetime(1, 1, 1, tzinfo=UTC), None, 1, None),  # a bound on one side only
    (datetime(9999, 12, 31, tzinfo=UTC), None, None, None),  # unset: no bound (backfills, fixed test dates)
    (NOW, 0, 0, None),
])
def test_timestamp_window(moment: datetime, past: int | None, future: int | None, refused: str | None) -> None:
    """Main accepted any date from 0001 to 9999."""
    admission = windowed(past, future)
    entry = {"timestamp": format_timestamp(moment)}
    if refused is None:
        assert admission.prepare(entry).date == moment.date().isoformat()
        return
    with pytest.raises(EntryError) as caught:
        admission.prepare(entry)
    message = str(caught.value)
    assert refused in message
    assert f"max_past_days={past}, max_future_days={future}" in message  # what the window is
    assert "1 days" not in message  # "to 1 day after the server's clock"
    assert format_timestamp(NOW) in message  # and the clock it is measured from


def test_window_compares_instants_across_offsets() -> None:
    admission = windowed(0, 0)
    assert admission.prepare({"timestamp": "2026-11-24T13:00:00+01:00"}).date == "2026-11-24"
    with pytest.raises(EntryError, match="in the future"):
        admission.prepare({"timestamp": "2026-11-24T13:00:01+01:00"})


def test_received_at_field_is_stamped_by_the_server_and_overrides_the_client() -> None:
    admission = Admission(Rules(2048, received_at_field="received_at"), now=NOW)
    forged = {"timestamp": "2026-11-20T00:00:00Z", "received_at": "1999-01-01T00:00:00Z", "a": 1}
    stored = orjson.loads(admission.prepare(forged).line)
    assert stored == {**forged, "received_at": "2026-11-24T12:00:00.000Z"}
    assert forged["received_at"] == "1999-01-01T00:00:00Z"  # the caller's dict is not modified
    assert "received_at" not in orjson.loads(prepare({"timestamp": TS}, 2048).line)  # off by default


def test_distinct_dates_per_call_are_capped() -> None:
    """Main let one call fan out to any number of dates (each a frame, a lane, and blobs to create)."""
    first = datetime(2026, 1, 1, tzinfo=UTC)

    def call(days: int) -> list[tuple[int, Any]]:
        return list(enumerate({"timestamp": format_timestamp(first + timedelta(days=n))} for n in range(days)))

    assert len(admit(call(MAX_DATES_PER_CALL), max_entry_bytes=2048, max_entries=10**6, max_bytes=10**9)) \
        == MAX_DATES_PER_CALL
    with pytest.raises(EntryError, match=f"more than {MAX_DATES_PER_CALL} distinct UTC dates") as caught:
        admit(call(MAX_DATES_PER_CALL + 1), max_entry_bytes=2048, max_entries=10**6, max_bytes=10**9)
    assert caught.value.position == MAX_DATES_PER_CALL
    many_on_one_day = [(n, {"timestamp": TS}) for n in range(5000)]
    assert len(admit(many_on_one_day, max_entry_bytes=2048, max_entries=10**6, max_bytes=10**9)) == 5000


@pytest.mark.parametrize(("value", "message"), [
    (2**64, "integer 18446744073709551616 at 'n' does not fit in 64 bits"),
    (-(2**63) - 1, "integer -9223372036854775809 at 'n' does not fit in 64 bits"),
    (123456789012345678901234567890, "integer 123456789012345678901234567890 at 'n' does not fit in 64 bits"),
    (math.nan, "number at 'n' is nan: JSON numbers must be finite"),
    (math.inf, "number at 'n' is inf: JSON numbers must be finite"),
    (-math.inf, "number at 'n' is -inf: JSON numbers must be finite"),
])
def test_numbers_json_cannot_store_exactly_are_refused(idle_writer: Callable[[Any], Prepared], value: Any,
                                                        message: str) -> None:
    """Main wrote NaN and infinity from Python as null (and called a >64-bit integer "not serializable")."""
    with pytest.raises(EntryError) as caught:
        idle_writer({"timestamp": TS, "n": value})
    assert message in str(caught.value)
    nested = {"timestamp": TS, "a": {"list": [1, {"ok": None, "n": value}]}}
    with pytest.raises(EntryError, match=re.escape("at 'a.list[1].n'")):
        idle_writer(nested)


def test_numbers_at_the_edges_of_64_bits_are_stored_exactly(idle_writer: Callable[[Any], Prepared]) -> None:
    value = {"timestamp": TS, "min": -(2**63), "max": 2**64 - 1, "big": 1.7976931348623157e308, "null": None}
    assert orjson.loads(idle_writer(value).line) == value


class _Record(dict[str, Any]):
    """A dict subclass: orjson writes it, marshal does not take it."""


@pytest.mark.parametrize("where", ["top", "nested list", "tuple", "dict subclass", "after a ref"])
@pytest.mark.parametrize("value", [math.nan, -math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_found_wherever_they_hide(idle_writer: Callable[[Any], Prepared], value: float,
                                                         where: str) -> None:
    """The marshal prefilter (entries._marshal_scan) decides whether an entry is looked at closer: a miss
    would let NaN through as null. Shapes where marshal refers back to an object, or refuses one."""
    shared = 0.5
    entry: dict[str, Any] = {"timestamp": TS, "none": None, "neg": -1, "text": "\x7f\xff caf\u00e9 \U0001f600"}
    if where == "top":
        entry["n"] = value
    elif where == "nested list":
        entry["a"] = {"list": [1, [shared, {"n": value}]]}
    elif where == "tuple":
        entry["a"] = (1, (value,))
    elif where == "dict subclass":
        entry["a"] = _Record(n=value)
    else:  # the same float object twice: marshal writes it once, then a reference to it
        entry["a"] = [value, value, shared, shared]
    with pytest.raises(EntryError, match="JSON numbers must be finite"):
        idle_writer(entry)


@given(st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
                    max_leaves=20))
@settings(deadline=None, database=None, derandomize=True, max_examples=500)
def test_the_marshal_prefilter_never_misses_a_non_finite_number(value: Any) -> None:
    """Whatever the shape, wherever _find_number (the walk) finds NaN or infinity, the prefilter
    asks to look closer; and admission refuses exactly those entries."""
    from blobwriter.entries import _find_number, _marshal_scan

    bad = _find_number(value) is not None
    if bad:
        assert _marshal_scan(value)
    entry = {"timestamp": TS, "v": value}
    if bad:
        with pytest.raises(EntryError, match="JSON numbers must be finite"):
            prepare(entry, 1 << 20)
    else:
        assert orjson.loads(prepare(entry, 1 << 20).line) == orjson.loads(orjson.dumps(entry))
