"""Admission (blobwriter/entries.py): what an entry must be to be queued, and how it is serialized."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from blobwriter.entries import Prepared, admit, prepare
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


@pytest.mark.parametrize("value", [{1, 2}, object(), b"bytes", 2**70])
def test_non_serializable_rejected(idle_writer: Callable[[Any], Prepared], value: Any) -> None:
    with pytest.raises(EntryError, match="not JSON-serializable"):
        idle_writer({"id": "x", "timestamp": TS, "value": value})


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


@pytest.mark.parametrize("given", [{}, {"timestamp": None}])
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
        ("2026-03-01", "2026-03-01"),
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
