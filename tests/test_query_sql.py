"""`blobwriter sql`: DuckDB over a date range in Azurite, typed like read_json, streamed, damage reported."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from blobwriter.cli import keygen
from blobwriter.config import Settings
from tests.conftest import ROOT
from tests.support.query import store_entries
from tests.support.readback import cli_env, frames_in, run_cli

FIRST, LAST = "2026-11-24", "2026-12-01"


def sql(settings: Settings, query: str, *args: str, fmt: str = "json", first: str = FIRST, last: str = LAST,
        code: int = 0) -> Any:
    result = run_cli("sql", "--date", first, "--until", last, query, "--format", fmt, *args, env=cli_env(settings))
    assert result.returncode == code, result.stderr
    if code == 0:
        assert result.stderr == "", result.stderr
    return orjson.loads(result.stdout) if fmt == "json" and code == 0 else result


def test_one_request_by_id(sample_store: tuple[Settings, list[dict[str, Any]]]) -> None:
    settings, entries = sample_store
    wanted = next(e for e in entries if e["id"] == "e0000040")
    [row] = sql(settings, "SELECT * FROM logs WHERE id = 'e0000040'")
    assert list(row)[:len(wanted)] == list(wanted)  # the columns in the entries' field order
    assert _without_nulls(row) == _without_nulls(wanted)  # struct fields other entries have are null here


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def test_columns_are_typed_as_read_json_types_them(sample_store: tuple[Settings, list[dict[str, Any]]],
                                                   tmp_path: Path) -> None:
    settings, entries = sample_store
    plain = tmp_path / "entries.jsonl.gz"
    with gzip.open(plain, "wb") as handle:
        handle.write(b"".join(orjson.dumps(e) + b"\n" for e in entries))
    expected = duckdb.sql(f"DESCRIBE SELECT * FROM read_json('{plain}')").fetchall()
    described = sql(settings, "DESCRIBE SELECT * FROM logs")
    assert [(c["column_name"], c["column_type"]) for c in described] == [(name, kind) for name, kind, *_ in expected]


def test_aggregates_match_the_entries(sample_store: tuple[Settings, list[dict[str, Any]]]) -> None:
    settings, entries = sample_store
    rows = sql(settings, "SELECT deployment, count(*) AS n, sum(cost_eur) AS cost, sum(tokens.total) AS tokens, "
                         "count(*) FILTER (WHERE status_code >= 400) AS errors, "
                         "max(response.usage.total_tokens) AS top FROM logs GROUP BY deployment ORDER BY deployment")
    by: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by.setdefault(e["deployment"], []).append(e)
    assert [r["deployment"] for r in rows] == sorted(by)
    for row in rows:
        group = by[row["deployment"]]
        assert row["n"] == len(group)
        assert row["cost"] == pytest.approx(sum(e["cost_eur"] for e in group))
        assert row["tokens"] == sum(e["tokens"]["total"] for e in group if e["tokens"])
        assert row["errors"] == sum(1 for e in group if e["status_code"] >= 400)
        assert row["top"] == max(e["response"]["usage"]["total_tokens"] for e in group if e["response"])


def test_timestamps_and_utc_days(sample_store: tuple[Settings, list[dict[str, Any]]]) -> None:
    settings, entries = sample_store
    from tests.support.query import day_of

    rows = sql(settings, "SELECT strftime(timestamp::TIMESTAMPTZ, '%Y-%m-%d') AS day, count(*) AS n "
                         "FROM logs GROUP BY day ORDER BY day")
    assert {r["day"]: r["n"] for r in rows} == dict(Counter(day_of(e) for e in entries))


ODD_TIMESTAMPS = ["2026-11-25T10:00:00z", "2026-11-25t23:30:00-00:30", "2026-11-25T23:59:60.5+01:00",
                  "2026-11-25T15:59:60-08:00", "2026-11-25T23:59:60Z", "2026-11-25T12:59:60",
                  "2026-11-25T10:00:00.123456789Z", "2026-11-25T11:00:00+01:00", "2026-11-25T10:00:00"]


async def test_the_documented_timestamp_expression_reads_every_accepted_form(tmp_path: Path, key: str) -> None:
    """docs/SCHEMA.md's expression (and `sql --help`'s) gives each timestamp the writer accepts the instant
    the writer dated it by; the plain cast refuses lower-case t/z and leap seconds, as the docs say."""
    from datetime import datetime

    from blobwriter.entries import parse_timestamp
    from blobwriter.query.cli import SQL_EPILOG

    [expression] = re.findall(r"```sql\n(.*?)\n```", (ROOT / "docs" / "SCHEMA.md").read_text(), flags=re.S)
    assert expression in SQL_EPILOG
    settings = Settings.from_values({"storage": str(tmp_path), "encryption_key": key})
    await store_entries(settings, [{"id": n, "timestamp": t} for n, t in enumerate(ODD_TIMESTAMPS)])
    rows = sql(settings, f"SELECT id, {expression} AS ts FROM logs ORDER BY id", first="2026-11-25",
               last="2026-11-26")
    assert [r["id"] for r in rows] == list(range(len(ODD_TIMESTAMPS)))
    for row, text in zip(rows, ODD_TIMESTAMPS, strict=True):
        assert datetime.fromisoformat(row["ts"]) == parse_timestamp(text), text
    plain = sql(settings, "SELECT timestamp::TIMESTAMPTZ FROM logs", first="2026-11-25", last="2026-11-26", code=2)
    assert "Conversion Error" in plain.stderr


def test_formats(sample_store: tuple[Settings, list[dict[str, Any]]]) -> None:
    settings, entries = sample_store
    query = "SELECT id, user, tokens, error FROM logs WHERE status_code = 429 ORDER BY id LIMIT 3"
    expected = sorted((e for e in entries if e["status_code"] == 429), key=lambda e: e["id"])[:3]
    rows = sql(settings, query)
    assert rows == [{"id": e["id"], "user": e["user"], "tokens": e["tokens"], "error": e["error"]} for e in expected]
    as_csv = sql(settings, query, fmt="csv")
    parsed = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert parsed[0] == ["id", "user", "tokens", "error"]
    assert parsed[1:] == [[e["id"], e["user"], "" if e["tokens"] is None else orjson.dumps(e["tokens"]).decode(),
                           e["error"]] for e in expected]
    table = sql(settings, query, fmt="table").stdout.splitlines()
    assert table[0].split() == ["id", "user", "tokens", "error"]
    assert [line.split()[0] for line in table[2:]] == [e["id"] for e in expected]
    assert all("rate limited" in line and "NULL" in line for line in table[2:])


def test_a_query_that_scans_logs_twice(sample_store: tuple[Settings, list[dict[str, Any]]]) -> None:
    settings, entries = sample_store
    [row] = sql(settings, "SELECT count(*) AS n FROM logs a JOIN logs b ON a.user = b.user AND a.id < b.id")
    users = Counter(e["user"] for e in entries)
    assert row["n"] == sum(n * (n - 1) // 2 for n in users.values())


def test_limit_stops_reading_and_empty_range(sample_store: tuple[Settings, list[dict[str, Any]]]) -> None:
    settings, _ = sample_store
    assert len(sql(settings, "SELECT id FROM logs LIMIT 2")) == 2
    empty = run_cli("sql", "--date", "2020-01-01", "--until", "2020-01-02", "SELECT count(*) AS n FROM logs",
                    "--format", "json", env=cli_env(settings))
    assert empty.returncode == 0 and orjson.loads(empty.stdout) == [{"n": 0}]
    assert empty.stderr.startswith("blobwriter: note: no logs for 2020-01-01..2020-01-02 in ")  # test_query_cli


def test_sql_errors_exit_2(sample_store: tuple[Settings, list[dict[str, Any]]]) -> None:
    settings, _ = sample_store
    for query, needle in (("SELEC 1", "syntax error"), ("SELECT nope FROM logs", "nope")):
        result = sql(settings, query, code=2)
        assert result.stderr.startswith("blobwriter: error: SQL:") and needle in result.stderr
        assert "Traceback" not in result.stderr
    result = sql(settings, "SELECT 1", "--memory-limit", "lots", code=2)
    assert "--memory-limit 'lots'" in result.stderr
    for size in ("20480", "-1"):  # with the wrong key no answer reaches stdout, as with read and stats (QA F4)
        wrong = run_cli("sql", "--date", FIRST, "--until", LAST, "--sample-size", size, "SELECT count(*) FROM logs",
                        env=cli_env(settings, BLOBWRITER_ENCRYPTION_KEY=keygen()))
        assert wrong.returncode == 2 and "none of the configured keys" in wrong.stderr
        assert wrong.stdout == "" and "Traceback" not in wrong.stderr


@pytest.mark.parametrize("query", ["", "   ", "-- just a comment", "/* a comment */ ;"])
def test_no_statement_is_a_clean_error(sample_store: tuple[Settings, list[dict[str, Any]]], query: str) -> None:
    result = sql(sample_store[0], query, code=2)  # QA F1: was a traceback (DuckDB answers None), exit 1
    assert result.stderr == "blobwriter: error: SQL: the query holds no statement (it is empty, blank or only " \
                            "comments)\n"
    assert result.stdout == ""


def test_several_statements_are_refused(sample_store: tuple[Settings, list[dict[str, Any]]]) -> None:
    result = sql(sample_store[0], "SELECT 1; SELECT 2", code=2)  # QA F12: printed the last answer only
    assert "the query holds 2 statements; give one per command" in result.stderr and result.stdout == ""
    assert "one statement" in run_cli("sql", "--help").stdout
    assert sql(sample_store[0], "SELECT 1 AS one;") == [{"one": 1}]  # a trailing semicolon is one statement


def test_a_field_of_an_empty_range(sample_store: tuple[Settings, list[dict[str, Any]]]) -> None:
    settings, _ = sample_store
    result = sql(settings, "SELECT deployment, sum(cost_eur) FROM logs GROUP BY 1", first="2020-01-01",
                 last="2020-01-02", code=2)  # QA F11: said only "column not found"
    assert result.stderr.startswith("blobwriter: error: SQL: the range 2020-01-01..2020-01-02 holds no entries, so "
                                    "`logs` has no column but timestamp: Binder Error:")
    assert "Traceback" not in result.stderr and result.stdout == ""
    # A field missing from a range with entries is DuckDB's message alone.
    assert "holds no entries" not in sql(settings, "SELECT nope FROM logs", code=2).stderr


# -- fields whose type varies ----------------------------------------------------------------

VARYING = [
    {"timestamp": "2026-11-25T10:00:00Z", "id": "v1", "x": 1, "n": 1, "nested": {"a": 1, "b": "s"}, "nothing": None,
     "list": [1, 2]},
    {"timestamp": "2026-11-25T10:00:01Z", "id": "v2", "x": "one", "n": 2.5, "nested": {"a": "text"}, "nothing": None,
     "list": ["a", {"k": 1}]},
    {"timestamp": "2026-11-25T10:00:02Z", "id": "v3", "x": {"deep": [1]}, "n": 3, "nested": None, "list": []},
]


async def test_fields_whose_type_varies(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    await store_entries(settings, VARYING)
    described = {c["column_name"]: c["column_type"] for c in sql(settings, "DESCRIBE SELECT * FROM logs",
                                                                  first="2026-11-25", last="2026-11-25")}
    assert described["x"] == "JSON"  # number, string, object
    assert described["n"] == "DOUBLE"  # integers and numbers
    assert described["nested"] == "STRUCT(a JSON, b VARCHAR)"
    assert described["nothing"] == "VARCHAR"
    assert described["list"] == "JSON[]"
    rows = sql(settings, "SELECT id, x, n, nested.a AS a, list FROM logs ORDER BY id", first="2026-11-25",
               last="2026-11-25")
    assert rows == [{"id": "v1", "x": 1, "n": 1.0, "a": 1, "list": [1, 2]},
                    {"id": "v2", "x": "one", "n": 2.5, "a": "text", "list": ["a", {"k": 1}]},
                    {"id": "v3", "x": {"deep": [1]}, "n": 3.0, "a": None, "list": []}]
    [row] = sql(settings, "SELECT x->>'$.deep[0]' AS deep FROM logs WHERE id = 'v3'", first="2026-11-25",
                last="2026-11-25")
    assert row == {"deep": "1"}


async def test_values_after_the_sample_that_do_not_fit(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    entries = [{"timestamp": "2026-11-25T10:00:00Z", "id": f"s{i}", "n": i} for i in range(10)]
    entries += [{"timestamp": "2026-11-25T10:00:00Z", "id": "late", "n": "not a number", "new_field": 1}]
    await store_entries(settings, entries, batch_size=1000)
    env = cli_env(settings)
    query = "SELECT id, n FROM logs WHERE id = 'late'"
    sampled = run_cli("sql", "--date", "2026-11-25", query, "--format", "json", "--sample-size", "5", env=env)
    assert sampled.returncode == 0, sampled.stderr
    assert orjson.loads(sampled.stdout) == [{"id": "late", "n": None}]
    assert "values that did not fit their column's type are NULL: n (1)" in sampled.stderr
    assert "fields missing from `logs`: new_field (1)" in sampled.stderr
    assert "--sample-size -1" in sampled.stderr
    exact = run_cli("sql", "--date", "2026-11-25", "SELECT id, n, new_field FROM logs WHERE id = 'late'",
                    "--format", "json", "--sample-size", "-1", env=env)
    assert exact.returncode == 0, exact.stderr
    assert exact.stderr == ""
    assert orjson.loads(exact.stdout) == [{"id": "late", "n": "not a number", "new_field": 1}]


async def test_damaged_frames_reported_like_read(make_settings: Callable[..., Settings],
                                                 sample_entries: list[dict[str, Any]], tmp_path: Path) -> None:
    settings = make_settings(storage=str(tmp_path))
    day = [e for e in sample_entries if e["timestamp"].startswith("2026-11-27T") and e["timestamp"].endswith("Z")]
    await store_entries(settings, day, batch_size=25)
    [path] = (tmp_path / "2026-11-27").glob("*.log")  # the one writer's blob of the day
    data = bytearray(path.read_bytes())
    offset, header = [(o, h) for o, h in frames_in(bytes(data)) if not h.is_index][1]
    data[offset + 70] ^= 0x01
    path.write_bytes(bytes(data))
    read = run_cli("read", "--date", "2026-11-27", env=cli_env(settings))
    result = run_cli("sql", "--date", "2026-11-27", "SELECT count(*) AS n, sum(cost_eur) AS cost FROM logs",
                     "--format", "json", env=cli_env(settings))
    assert read.returncode == result.returncode == 1
    assert result.stderr == read.stderr and f"DAMAGED 2026-11-27/{path.name}" in result.stderr
    survivors = [orjson.loads(line) for line in read.stdout.splitlines()]
    assert orjson.loads(result.stdout) == [{"n": len(survivors),
                                            "cost": pytest.approx(sum(e["cost_eur"] for e in survivors))}]
    assert len(survivors) < len(day)


STREAMING = """
import asyncio, io, sys
import orjson, pyarrow as pa
from blobwriter.config import Settings
from blobwriter.query.source import RangeSource
from blobwriter.query.sql import run_sql

settings = Settings.from_values({"storage": sys.argv[1], "encryption_key": sys.argv[2]})
out = io.BytesIO()
asyncio.run(run_sql(RangeSource(settings, ["2026-11-25"]), sys.argv[3], "json", memory_limit="256MB", out=out))
peak = pa.default_memory_pool().max_memory()
print(orjson.dumps({"answer": orjson.loads(out.getvalue()), "arrow_peak": peak}).decode())
"""


@pytest.mark.slow
async def test_streams_a_range_much_larger_than_what_it_holds(tmp_path: Path, key: str,
                                                              sample_entries: list[dict[str, Any]]) -> None:
    """100,000 entries (~160 MB of JSON) go through DuckDB while the Arrow memory in use stays a few batches."""
    settings = Settings.from_values({"storage": str(tmp_path), "encryption_key": key})
    count = 100_000
    entries = ({**sample_entries[i % len(sample_entries)], "id": f"m{i}", "timestamp": "2026-11-25T12:00:00Z"}
               for i in range(count))
    await store_entries(settings, entries, batch_size=1000)
    raw = sum(len(orjson.dumps({**sample_entries[i % len(sample_entries)], "id": f"m{i}"})) for i in range(count))
    query = "SELECT count(*) AS n, count(DISTINCT id) AS ids, sum(cost_eur) AS cost FROM logs"
    result = subprocess.run([sys.executable, "-c", STREAMING, str(tmp_path), key, query], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    expected_cost = sum(sample_entries[i % len(sample_entries)]["cost_eur"] for i in range(count))
    assert report["answer"] == [{"n": count, "ids": count, "cost": pytest.approx(expected_cost)}]
    # Streaming: what was held at once is a few batches, far from the whole range.
    assert report["arrow_peak"] < raw / 3, (report["arrow_peak"], raw)



@pytest.fixture(scope="module")
def larger(tmp_path_factory: pytest.TempPathFactory, sample_entries: list[dict[str, Any]]) -> Settings:
    """30,000 entries in one day of a directory store: more than DuckDB gets before it starts answering."""
    settings = Settings.from_values({"storage": str(tmp_path_factory.mktemp("larger")), "encryption_key": keygen()})
    entries = [{**sample_entries[i % len(sample_entries)], "id": f"l{i}", "timestamp": "2026-11-25T12:00:00Z"}
               for i in range(30_000)]
    asyncio.run(store_entries(settings, entries, batch_size=1000))
    return settings


@pytest.mark.parametrize("fmt", ["json", "csv", "table"])
def test_into_a_closed_pipe_stops_quietly(larger: Settings, fmt: str) -> None:
    """`| head` closes stdout while entries are still being read: no hang, no traceback, exit 0."""
    env = {**cli_env(larger), "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{sys.executable} -m blobwriter sql --date 2026-11-25 --sample-size 100 "
                                         f"'SELECT * FROM logs' --format {fmt} | head -n 1"],
        env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1 and result.stderr == ""
