"""Helpers for the query tests: store entries, and the expected stats computed independently.

`expected_stats` is a second, deliberately plain implementation of what docs/SCHEMA.md says
`blobwriter stats` computes (statistics.quantiles for the percentiles, datetime for UTC hours),
sharing no code with blobwriter/query, so a test compares two independent answers.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from blobwriter.config import Settings
from blobwriter.writer import LogWriter

MEASURES = ["requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens", "cost",
            "duration_ms_p50", "duration_ms_p95"]


async def store_entries(settings: Settings, entries: Iterable[dict[str, Any]], batch_size: int = 100) -> None:
    """Write entries through a real LogWriter and stop it, so all are stored."""
    async with LogWriter(settings.with_overrides(batch_size=batch_size)) as writer:
        await writer.write_many(list(entries))


def utc(timestamp: str) -> datetime:
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def day_of(entry: dict[str, Any]) -> str:
    return utc(entry["timestamp"]).strftime("%Y-%m-%d")


def dig(entry: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(entry, dict) or part not in entry:
            return None
        entry = entry[part]
    return entry


def first(entry: dict[str, Any], *paths: str) -> Any:
    for path in paths:
        value = dig(entry, path)
        if value is not None:
            return value
    return None


def gateway_measures(e: dict[str, Any]) -> dict[str, Any]:
    """The raw measures of one gateway entry (the default field map, per docs/SCHEMA.md)."""
    prompt = first(e, "tokens.prompt", "response.usage.prompt_tokens", "response.usage.input_tokens")
    completion = first(e, "tokens.completion", "response.usage.completion_tokens", "response.usage.output_tokens")
    total = first(e, "tokens.total", "response.usage.total_tokens")
    if total is None and (prompt is not None or completion is not None):
        total = (prompt or 0) + (completion or 0)
    status = e.get("status_code")
    return {"prompt": prompt or 0, "completion": completion or 0, "total": total or 0,
            "cost": first(e, "cost_eur", "cost") or 0, "duration": e.get("duration_ms"),
            "error": e.get("error") is not None or (status is not None and status >= 400)}


def key_value(entry: dict[str, Any], name: str) -> Any:
    if name == "day":
        return day_of(entry)
    if name == "hour":
        return utc(entry["timestamp"]).strftime("%Y-%m-%dT%H:00:00Z")
    return dig(entry, name)


def matches(value: Any, wanted: str) -> bool:
    if value is None:
        return wanted == "null"
    if isinstance(value, bool):
        return str(value).lower() == wanted.lower()
    if isinstance(value, int | float):
        try:
            return float(wanted) == value
        except ValueError:
            return False
    return str(value) == wanted


def expected_stats(entries: Sequence[dict[str, Any]], by: Sequence[str] = (), where: Sequence[str] = (),
                   measures: Any = gateway_measures) -> list[dict[str, Any]]:
    """The rows `blobwriter stats --by ... --where ...` must print, in its order (keys ascending)."""
    conditions: dict[tuple[str, bool], list[str]] = {}
    for text in where:
        name, _, value = text.partition("=")
        conditions.setdefault((name.rstrip("!"), name.endswith("!")), []).append(value)
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for e in entries:
        keep = all(any(matches(key_value(e, name), v) for v in values) != negate
                   for (name, negate), values in conditions.items())
        if keep:
            groups.setdefault(tuple(key_value(e, name) for name in by), []).append(measures(e))
    rows = []
    for key in sorted(groups, key=lambda k: tuple((v is None, "" if v is None else v) for v in k)):
        rows.append({**dict(zip(by, key, strict=True)), **summarize(groups[key])})
    if not by and not rows:
        rows.append(summarize([]))
    return rows


def summarize(values: list[dict[str, Any]]) -> dict[str, Any]:
    durations = [v["duration"] for v in values if v["duration"] is not None]
    return {
        "requests": len(values),
        "errors": sum(1 for v in values if v["error"]),
        "prompt_tokens": sum(v["prompt"] for v in values),
        "completion_tokens": sum(v["completion"] for v in values),
        "total_tokens": sum(v["total"] for v in values),
        "cost": sum(v["cost"] for v in values),
        "duration_ms_p50": statistics.median(durations) if durations else None,
        "duration_ms_p95": (statistics.quantiles(durations, n=20, method="inclusive")[18] if len(durations) > 1
                            else durations[0] if durations else None),
    }


def assert_rows_equal(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Same rows, same keys, in the same order; floats to 1e-9 relative."""
    import pytest

    assert [list(r) for r in got] == [list(r) for r in expected], "columns differ"
    assert len(got) == len(expected), f"{len(got)} rows, expected {len(expected)}"
    for g, e in zip(got, expected, strict=True):
        for name, value in e.items():
            if isinstance(value, float) or isinstance(g[name], float):
                assert g[name] == pytest.approx(value, rel=1e-9, abs=1e-9), (name, g, e)
            else:
                assert g[name] == value, (name, g, e)


def lines(entries: Iterable[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(e) for e in entries]
