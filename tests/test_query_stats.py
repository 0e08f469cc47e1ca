"""`blobwriter stats` over the shared data set in Azurite, against totals computed independently."""

from __future__ import annotations

import asyncio
import csv
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from blobwriter.cli import keygen
from blobwriter.config import Settings
from blobwriter.query.fields import (
    _MISSING,
    FieldMap,
    FieldPath,
    Source,
    _lookup,
    compile_path,
    dotted_get,
    group_value,
    plain,
    simdjson_parser,
)
from blobwriter.query.stats import Condition, Stats
from tests.support.query import (
    MEASURES,
    assert_rows_equal,
    dig,
    expected_stats,
    first,
    store_entries,
)
from tests.support.readback import cli_env, frames_in, run_cli

FIRST, LAST = "2026-11-24", "2026-12-01"


def stats_json(settings: Settings, *args: str, **env: str) -> list[dict[str, Any]]:
    result = run_cli("stats", "--date", FIRST, "--until", LAST, *args, "--format", "json",
                     env=cli_env(settings, **env))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows: list[dict[str, Any]] = orjson.loads(result.stdout)
    return rows


def test_whole_range_is_one_row(sample_store: tuple[Settings, list[dict[str, Any]]]) -> None:
    settings, entries = sample_store
    [row] = stats_json(settings)
    [expected] = expected_stats(entries)
    assert_rows_equal([row], [expected])
    # Independently of the helper: plain sums over the entries.
    assert row["requests"] == 2000
    assert row["total_tokens"] == sum((e["tokens"] or {}).get("total", 0) for e in entries)
    assert row["cost"] == pytest.approx(sum(e["cost_eur"] for e in entries))
    assert row["errors"] == sum(1 for e in entries if e["status_code"] >= 400 or e["error"] is not None) > 0


BYS = ["", "day", "hour", "user", "deployment", "user,deployment", "day,deployment", "request.model",
       "status_code", "error", "response.usage.total_tokens"]
WHERES = [[], ["status_code=429"], ["deployment=gpt-4o", "deployment=gpt-4o-mini"], ["error!=null"],
          ["day=2026-11-25"], ["stream=false", "user!=alice@contoso.com"], ["request.model=null"]]


@pytest.fixture(scope="module")
def stored_lines(sample_store: tuple[Settings, list[dict[str, Any]]]) -> list[bytes]:
    """The entries as the Reader returns them from Azurite (read once for the matrix below)."""
    from blobwriter.reader import Reader, date_range
    from blobwriter.store import open_store

    settings, _ = sample_store

    async def read() -> list[bytes]:
        store = open_store(settings)
        try:
            reader = Reader(store, settings.keys)
            return [line async for line in reader.entries(date_range(*map(_date, (FIRST, LAST))))]
        finally:
            await store.close()

    return asyncio.run(read())


def _date(text: str) -> Any:
    from datetime import date

    return date.fromisoformat(text)


@pytest.mark.parametrize("where", WHERES, ids=lambda w: "&".join(w) or "all")
@pytest.mark.parametrize("by", BYS, ids=lambda b: b or "none")
def test_by_and_where_matrix(sample_store: tuple[Settings, list[dict[str, Any]]], stored_lines: list[bytes],
                             by: str, where: list[str]) -> None:
    _, entries = sample_store
    keys = [k for k in by.split(",") if k]
    stats = Stats(FieldMap.parse([]), keys, [Condition.parse(w) for w in where])
    for line in stored_lines:
        stats.add_line(line)
    expected = expected_stats(entries, keys, where)
    assert_rows_equal(stats.rows(), expected)
    if keys:
        total = stats.totals()
        assert total["requests"] == sum(r["requests"] for r in expected)
        assert total["cost"] == pytest.approx(sum(r["cost"] for r in expected))


def test_where_filters_really_filter(sample_store: tuple[Settings, list[dict[str, Any]]]) -> None:
    settings, entries = sample_store
    [limited] = stats_json(settings, "--where", "status_code=429")
    assert limited["requests"] == sum(1 for e in entries if e["status_code"] == 429) > 0
    assert limited["errors"] == limited["requests"]
    result = run_cli("stats", "--date", FIRST, "--until", LAST, "--where", "user=nobody@example.com", "--format",
                     "json", env=cli_env(settings))
    [none] = orjson.loads(result.stdout)
    assert none["requests"] == 0 and none["duration_ms_p50"] is None and none["cost"] == 0
    assert result.returncode == 0 and result.stderr == (
        f"blobwriter: note: none of the {len(entries):,} entries read met --where user=nobody@example.com\n")


def test_formats_agree(sample_store: tuple[Settings, list[dict[str, Any]]]) -> None:
    settings, entries = sample_store
    args = ["stats", "--date", FIRST, "--until", LAST, "--by", "deployment"]
    rows = stats_json(settings, "--by", "deployment")
    assert_rows_equal(rows, expected_stats(entries, ["deployment"]))

    as_csv = run_cli(*args, "--format", "csv", env=cli_env(settings))
    assert as_csv.returncode == 0, as_csv.stderr
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert as_csv.stdout.splitlines()[0] == ",".join(["deployment", *MEASURES])
    assert [r["deployment"] for r in parsed] == [r["deployment"] for r in rows]
    for got, want in zip(parsed, rows, strict=True):
        assert int(got["requests"]) == want["requests"] and int(got["total_tokens"]) == want["total_tokens"]
        assert float(got["cost"]) == pytest.approx(want["cost"])
        assert float(got["duration_ms_p95"]) == pytest.approx(want["duration_ms_p95"])

    table = run_cli(*args, env=cli_env(settings))  # the default format
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["deployment", *MEASURES]
    assert set(lines[1]) == {"-", " "} and set(lines[-2]) == {"-", " "}
    widths = {len(line) for line in lines[:2]}
    assert len(widths) == 1, "the header and its rule are aligned"
    for row, line in zip(rows, lines[2:-2], strict=True):
        assert line.split()[0] == row["deployment"]
        assert f"{row['requests']:,}" in line.split() and f"{row['total_tokens']:,}" in line.split()
    total = lines[-1].split()
    assert total[0] == "total"
    assert total[1] == f"{len(entries):,}"
    assert total[6] == f"{sum(e['cost_eur'] for e in entries):,.6f}"


def test_table_without_groups_has_no_totals_line(sample_store: tuple[Settings, list[dict[str, Any]]]) -> None:
    settings, entries = sample_store
    result = run_cli("stats", "--date", FIRST, "--until", LAST, env=cli_env(settings))
    assert result.returncode == 0, result.stderr
    header, rule, row = result.stdout.splitlines()
    assert header.split() == MEASURES and row.split()[0] == f"{len(entries):,}"


def test_map_overrides_and_stats_map_setting(sample_store: tuple[Settings, list[dict[str, Any]]],
                                             tmp_path: Path) -> None:
    settings, entries = sample_store
    cumulative = sum(e["cumulative_cost_eur"] for e in entries)
    [row] = stats_json(settings, "--map", "cost=cumulative_cost_eur")
    assert row["cost"] == pytest.approx(cumulative)
    [row] = stats_json(settings, BLOBWRITER_STATS_MAP="cost=cumulative_cost_eur")
    assert row["cost"] == pytest.approx(cumulative)
    # The command line wins over the setting; a scale factor converts units.
    [row] = stats_json(settings, "--map", "duration_ms=duration_ms*0.001",
                       BLOBWRITER_STATS_MAP="cost=cumulative_cost_eur")
    assert row["cost"] == pytest.approx(cumulative)
    [plain] = stats_json(settings)
    assert row["duration_ms_p50"] == pytest.approx(plain["duration_ms_p50"] / 1000)
    # The same map from the YAML config file.
    config = tmp_path / "blobwriter.yaml"
    config.write_text("logging:\n  stats_map: 'cost=cumulative_cost_eur,prompt_tokens=response.usage.prompt_tokens'\n")
    result = run_cli("--config", str(config), "stats", "--date", FIRST, "--until", LAST, "--format", "json",
                     env=cli_env(settings))
    assert result.returncode == 0, result.stderr
    [row] = orjson.loads(result.stdout)
    assert row["cost"] == pytest.approx(cumulative)
    assert row["prompt_tokens"] == sum(dig(e, "response.usage.prompt_tokens") or 0 for e in entries)
    # An alias names a group key; a measure mapped to a path no entry has is 0, and said so.
    rows = stats_json(settings, "--map", "model=response.model|request.model", "--by", "model")
    assert {r["model"] for r in rows} == {first(e, "response.model", "request.model") for e in entries}
    result = run_cli("stats", "--date", FIRST, "--until", LAST, "--map", "cost=cost_euro", "--format", "json",
                     env=cli_env(settings))
    assert result.returncode == 0 and orjson.loads(result.stdout)[0]["cost"] == 0
    assert result.stderr == ("blobwriter: note: the field map's cost (cost_euro): no entry read has a value there "
                             "(missing or null in every one); is the name right?\n")


# -- other shapes: OpenTelemetry GenAI attributes and LiteLLM's StandardLoggingPayload ----------

OTEL_ENTRIES = [
    {"timestamp": "2026-11-25T10:00:00Z", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 10,
     "gen_ai.usage.output_tokens": 5, "gen_ai.client.operation.duration": 0.25, "user.id": "alice"},
    {"timestamp": "2026-11-25T10:05:00Z", "attributes": {
        "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 7, "gen_ai.usage.output_tokens": 3,
        "gen_ai.client.operation.duration": 0.75, "user.id": "bob", "error.type": "timeout"}},
    {"timestamp": "2026-11-25T11:00:00Z", "gen_ai": {"request": {"model": "o3-mini"}, "usage": {"input_tokens": 1}},
     "http.response.status_code": 503, "user.id": "alice"},
]
LITELLM_ENTRIES = [
    {"timestamp": "2026-11-25T10:00:00Z", "model": "azure/gpt-4o", "model_group": "gpt-4o", "prompt_tokens": 100,
     "completion_tokens": 20, "total_tokens": 120, "response_cost": 0.0012, "response_time": 1.5, "status": "success",
     "metadata": {"user_api_key_user_id": "u1", "user_api_key_team_alias": "search"}, "error_str": None},
    {"timestamp": "2026-11-25T10:01:00Z", "model": "azure/gpt-4o", "model_group": "gpt-4o", "prompt_tokens": 50,
     "completion_tokens": 0, "total_tokens": 50, "response_cost": 0.0, "response_time": 0.5, "status": "failure",
     "metadata": {"user_api_key_user_id": "u2", "user_api_key_team_alias": "search"}, "error_str": "RateLimitError",
     "error_information": {"error_code": "429", "error_class": "RateLimitError"}},
    {"timestamp": "2026-11-25T12:00:00Z", "model": "o3-mini", "prompt_tokens": 10, "completion_tokens": 10,
     "total_tokens": 20, "response_cost": 0.0001, "response_time": 2.0, "status": "success", "end_user": "u3",
     "metadata": {"user_api_key_team_alias": "chat"}},
]


def run_stats(entries: list[dict[str, Any]], items: list[str], by: list[str]) -> list[dict[str, Any]]:
    stats = Stats(FieldMap.parse(items), by)
    for e in entries:
        stats.add_line(orjson.dumps(e))
    return stats.rows()


def test_otel_preset() -> None:
    rows = run_stats(OTEL_ENTRIES, ["otel"], ["model"])
    assert [r["model"] for r in rows] == ["gpt-4o", "o3-mini"]
    gpt, o3 = rows
    assert (gpt["requests"], gpt["prompt_tokens"], gpt["completion_tokens"], gpt["total_tokens"]) == (2, 17, 8, 25)
    assert gpt["errors"] == 1  # error.type set
    assert gpt["duration_ms_p50"] == pytest.approx(500.0)  # seconds * 1000, interpolated between 250 and 750
    assert (o3["errors"], o3["total_tokens"], o3["duration_ms_p50"]) == (1, 1, None)  # HTTP 503; no duration
    assert [r["user"] for r in run_stats(OTEL_ENTRIES, ["otel"], ["user"])] == ["alice", "bob"]


def test_litellm_preset() -> None:
    rows = run_stats(LITELLM_ENTRIES, ["litellm"], ["team", "deployment"])
    assert [(r["team"], r["deployment"]) for r in rows] == [("chat", "o3-mini"), ("search", "gpt-4o")]
    chat, search = rows
    assert (search["requests"], search["errors"], search["total_tokens"]) == (2, 1, 170)
    assert search["cost"] == pytest.approx(0.0012)
    assert search["duration_ms_p50"] == pytest.approx(1000.0) and search["duration_ms_p95"] == pytest.approx(1450.0)
    assert (chat["requests"], chat["errors"], chat["cost"]) == (1, 0, pytest.approx(0.0001))
    assert [r["user"] for r in run_stats(LITELLM_ENTRIES, ["litellm"], ["user"])] == ["u1", "u2", "u3"]


async def test_missing_null_and_odd_values(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    entries = [
        {"timestamp": "2026-11-25T10:00:00Z", "tokens": None, "cost_eur": None},  # all missing: zeros, no duration
        {"timestamp": "2026-11-25T10:00:00Z", "tokens": {"prompt": "12", "completion": 3}, "cost_eur": "0.5",
         "duration_ms": 10},  # numeric strings count
        {"timestamp": "2026-11-25T10:00:00Z", "tokens": {"prompt": "many"}, "cost_eur": {"eur": 1},
         "duration_ms": True, "status_code": "oops"},  # not numbers: counted as missing, noted
        {"timestamp": "2026-11-25T10:00:00Z", "response": {"usage": {"prompt_tokens": 4, "completion_tokens": 6}},
         "duration_ms": 30, "status_code": "500"},  # no tokens object: the OpenAI usage object; no total: the sum
        {"timestamp": "2026-11-25T10:00:00Z", "status_code": 400, "error": None},  # an error by its status alone
        {"timestamp": "2026-11-25T10:00:00Z", "status_code": 399},  # not an error
        {"timestamp": "2026-11-25T10:00:00Z", "status_code": 200, "error": "content filter"},  # an error by its error
        {"timestamp": "2026-11-25T10:00:00Z", "status_code": "4xx", "error": False},  # an error; its status is noted
    ]
    await store_entries(settings, entries)
    result = run_cli("stats", "--date", "2026-11-25", "--format", "json", env=cli_env(settings))
    assert result.returncode == 0, result.stderr
    [row] = orjson.loads(result.stdout)
    assert row == {"requests": 8, "errors": 4, "prompt_tokens": 16, "completion_tokens": 9, "total_tokens": 25,
                   "cost": 0.5, "duration_ms_p50": 20, "duration_ms_p95": 29}
    notes = result.stderr.splitlines()
    assert any("2 value(s) of status_code were not numbers" in n for n in notes), notes  # "oops" and "4xx"
    assert any("value(s) of prompt_tokens were not numbers" in n and '"many"' in n for n in notes), notes
    assert any("value(s) of cost were not numbers" in n for n in notes)
    assert any("value(s) of duration_ms were not numbers" in n for n in notes)
    assert any("value(s) of status_code were not numbers" in n for n in notes)


async def test_damaged_frames_are_reported_and_skipped_like_read(make_settings: Callable[..., Settings],
                                                                 sample_entries: list[dict[str, Any]],
                                                                 tmp_path: Path) -> None:
    settings = make_settings(storage=str(tmp_path))
    day = [e for e in sample_entries if e["timestamp"].startswith("2026-11-26T") and e["timestamp"].endswith("Z")]
    await store_entries(settings, day, batch_size=20)
    [path] = (tmp_path / "2026-11-26").glob("*.log")  # the one writer's blob of the day
    data = bytearray(path.read_bytes())
    offset, header = next((o, h) for o, h in frames_in(bytes(data)) if not h.is_index)
    data[offset + header.frame_length - 5] ^= 0xFF  # one flipped ciphertext byte: this frame fails to decrypt
    path.write_bytes(bytes(data))

    read = run_cli("read", "--date", "2026-11-26", env=cli_env(settings))
    assert read.returncode == 1
    survivors = [orjson.loads(line) for line in read.stdout.splitlines()]
    assert 0 < len(survivors) < len(day)
    result = run_cli("stats", "--date", "2026-11-26", "--format", "json", env=cli_env(settings))
    assert result.returncode == 1
    assert result.stderr == read.stderr  # the same DAMAGED line(s) and summary as read
    assert f"DAMAGED 2026-11-26/{path.name} at offset {offset}" in result.stderr
    [row] = orjson.loads(result.stdout)  # the answer is still printed, over what could be read
    assert_rows_equal([row], expected_stats(survivors))


async def test_empty_range_and_wrong_key(sample_store: tuple[Settings, list[dict[str, Any]]]) -> None:
    settings, _ = sample_store
    result = run_cli("stats", "--date", "2020-01-01", "--format", "json", env=cli_env(settings))
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout) == [{"requests": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                            "total_tokens": 0, "cost": 0, "duration_ms_p50": None,
                                            "duration_ms_p95": None}]
    wrong = run_cli("stats", "--date", FIRST, env=cli_env(settings, BLOBWRITER_ENCRYPTION_KEY=keygen()))
    assert wrong.returncode == 2
    assert "none of the configured keys can decrypt these logs" in wrong.stderr and wrong.stdout == ""


@pytest.mark.parametrize("args, message", [
    (["--by", "cost"], "cannot be named like a measure"),
    (["--by", "user,user"], "named twice"),
    (["--where", "user"], "FIELD=VALUE"),
    (["--map", "nonsense"], "not a preset"),
    (["--map", "cost=a..b"], "not a dotted field path"),
    (["--map", "cost="], "--map 'cost=': no path after '='"),
    (["--map", "cost=cost_eur*abc"], "'cost_eur*abc': the factor after '*' is not a number"),
    (["--map", "duration_ms=response_time*"], "the factor after '*' is not a number"),
    (["--map", "day=x"], "timestamp"),
    (["--format", "xml"], "invalid choice"),
    (["--until", "2026-11-01"], "before"),
])
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    env = cli_env(Settings.from_values({"storage": str(tmp_path), "encryption_key": keygen()}))
    result = run_cli("stats", "--date", "2026-11-25", *args, env=env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_bad_stats_map_setting_is_named(tmp_path: Path) -> None:
    env = cli_env(Settings.from_values({"storage": str(tmp_path), "encryption_key": keygen()}),
                  BLOBWRITER_STATS_MAP="cost")
    result = run_cli("stats", "--date", "2026-11-25", env=env)
    assert result.returncode == 2
    assert "Config 'stats_map'" in result.stderr


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores for worker processes")
async def test_stats_aggregated_in_worker_processes_equal_one_pass(tmp_path: Path, key: str,
                                                                    sample_entries: list[dict[str, Any]],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Stats.task() run where the frames are decoded, in batches, merged in order: the rows of one Stats
    that saw every entry, odd values included (the ignored counts and their first example merge too)."""
    from blobwriter import decoding
    from blobwriter.reader import Reader
    from blobwriter.store import DirectoryStore

    monkeypatch.setattr(decoding, "POOL_AFTER_BYTES", 0)
    monkeypatch.setattr(decoding, "BATCH_BYTES", 20_000)
    odd = [{**e, "cost_eur": "n/a"} if i % 97 == 0 else {**e, "status_code": "oops"} if i % 89 == 0 else e
           for i, e in enumerate(sample_entries)]
    settings = Settings.from_values({"storage": str(tmp_path), "encryption_key": key, "batch_size": 50})
    await store_entries(settings, odd)
    by, where = ["day", "deployment"], [Condition.parse("stream=false")]
    one = Stats(FieldMap.from_setting("", []), by, where)
    for e in odd:
        one.add(orjson.loads(orjson.dumps(e)))
    merged = Stats(FieldMap.from_setting("", []), by, where)
    async with Reader(DirectoryStore(tmp_path), settings.keys, workers=2) as reader:
        async for part in reader.results([f"2026-11-{d}" for d in range(24, 31)] + ["2026-12-01"], merged.task()):
            merged.merge(part)
        assert reader._decoding.parallel and reader.report.entries == len(odd)
    assert_rows_equal(merged.rows(), one.rows())
    assert merged.ignored.counts == one.ignored.counts and merged.ignored.counts["cost"] > 0
    assert merged.ignored.examples == one.ignored.examples


ODD = [  # shapes the field map's fallbacks, dotted keys, lists and bad values go through
    {"timestamp": "2026-11-25T10:00:00+02:00", "user": {"id": 7}, "tokens": [1, 2], "cost_eur": "0.5",
     "response": {"usage": {"prompt_tokens": 3, "completion_tokens": "4", "total_tokens": 7}}, "status_code": "503"},
    {"timestamp": "2026-11-25T23:59:59", "user": None, "tokens": {"prompt": None, "total": "x"}, "cost": 2,
     "tokens.prompt": 11, "duration_ms": "12.5", "status_code": 200, "error": {"type": "timeout"}},
    {"timestamp": 17, "deployment": ["a", "b"], "tokens": "none", "duration_ms": True, "status_code": None,
     "gen_ai.usage.input_tokens": 5, "attributes": {"gen_ai.usage.output_tokens": 6}, "response_time": 0.25},
    {"user": "zed", "tokens": {"prompt": 1, "completion": 2}, "status_code": 404.0, "request": {"model": "m"}},
    {"prompt_tokens": "many", "response_cost": {"eur": 1}, "response_time": "slow", "model_group": 3,
     "error_information": {"error_code": "E42"}, "metadata": {"user_api_key_user_id": ["u"]}, "error_str": "x"},
    {"timestamp": "2026-12-31T15:59:60-08:00", "error": False, "status_code": "4xx", "error.type": "t",
     "http.response.status_code": ["x"]},
]


@pytest.mark.parametrize("maps", [[], ["otel"], ["litellm"], ["cost=cumulative_cost_eur|cost_eur*2",
                                                                "user=request.model|user", "team=tokens.0"]])
def test_the_written_out_aggregation_equals_the_step_by_step_one(sample_entries: list[dict[str, Any]],
                                                                 maps: list[str]) -> None:
    """Stats compiles the field map into one function (what add and add_line run); add_object takes the
    same steps one field read at a time. Every --by and --where of the docs' matrix, odd entries too."""
    entries = sample_entries[:400] + ODD
    fields = FieldMap.from_setting("", maps)
    ignored = 0
    for by in [*BYS, "team", "user,day"]:
        for where in [*WHERES, ["team=1"]]:
            keys = [name for name in by.split(",") if name]
            conditions = [Condition.parse(w) for w in where]
            compiled, dicts, stepwise = (Stats(fields, keys, conditions) for _ in range(3))
            for e in entries:
                compiled.add_line(orjson.dumps(e))  # parsed by pysimdjson where installed
                dicts.add(e)
                stepwise.add_object(e)
            expected = stepwise.rows()
            assert compiled.rows() == expected and dicts.rows() == expected, (maps, by, where)
            assert compiled.ignored == stepwise.ignored == dicts.ignored, (maps, by, where)
            ignored += sum(stepwise.ignored.counts.values())
    assert ignored > 0  # the odd values were met, not filtered out everywhere


_SEGMENT = st.sampled_from(["a", "b", "0", "1"])
_KEY = st.lists(_SEGMENT, min_size=1, max_size=3).map(".".join)  # some keys have dots: "a.b", "b.0.a"
_VALUE = st.recursive(st.none() | st.integers(-3, 3),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEY, inner, max_size=4),
                      max_leaves=12)


@settings(max_examples=400, deadline=None)
@example(entry={"a": {"b": {}, "b.c": {"d": 1}}, "a.b": {"c": {"d": 2}}}, path=["a", "b", "c", "d"])  # deepest first
@example(entry={"a": None, "a.b": 3}, path=["a", "b"])  # a null on the way: the key with the dot
@given(entry=st.dictionaries(_KEY, _VALUE, max_size=5), path=st.lists(_SEGMENT, min_size=1, max_size=4))
def test_a_path_finds_what_the_full_walk_finds(entry: dict[str, Any], path: list[str]) -> None:
    """FieldPath.get walks the plain steps, then tries only the keys with dots it passed (_after_walk);
    compiled and written-out lookups take shortcuts too. Each must find what _lookup, the definition,
    finds from the top, in entries as dicts and as parsed by pysimdjson (whose missing keys are slow)."""
    field = FieldPath(".".join(path))
    found = _lookup(entry, field, 0)
    expected = None if found is _MISSING else found
    parser = simdjson_parser()
    shapes: list[Any] = [entry] + ([parser.parse(orjson.dumps(entry))] if parser is not None else [])
    for shape in shapes:
        assert plain(field.get(shape)) == expected
        assert plain(compile_path(field)(shape)) == expected
        assert plain(Source(((field, None),)).compiled()(shape)) == expected
        if len(path) == 2:
            key = ".".join(path)
            assert plain(dotted_get(shape, key)) == (entry.get(key))
    # The written-out aggregation (Stats._compile) reads --by fields with Source.inline: its one group's key.
    stats = Stats(FieldMap({"k": field.text}), ["k"])
    stats.add_line(orjson.dumps(entry))
    stats.add(entry)
    assert list(stats.groups) == [(group_value(expected),)]


def test_durations_are_counted_in_bulk_and_stay_bounded() -> None:
    """Each group keeps at most SETTLE_AT durations uncounted (one per entry, counted in bulk in C):
    memory per group grows with distinct durations, not entries; the percentiles are exact all the same."""
    import pickle
    import statistics

    from blobwriter.query.measures import SETTLE_AT

    count = 3 * SETTLE_AT + 17
    entries = [{"user": "u", "duration_ms": (i * 7919) % 1000 + 0.5 * (i % 2)} for i in range(count)]
    compiled, stepwise, merged = (Stats(FieldMap.parse([]), ["user"]) for _ in range(3))
    part = Stats(FieldMap.parse([]), ["user"])
    for number, e in enumerate(entries):
        compiled.add_line(orjson.dumps(e))
        stepwise.add_object(e)
        part.add(e)
        if number % 1000 == 999 or number == count - 1:  # parts as the reader's workers send them
            merged.merge(pickle.loads(pickle.dumps(part.take())))
    durations = [e["duration_ms"] for e in entries]
    for stats in (compiled, stepwise, merged):
        group = stats.groups[("u",)]
        assert len(group.recent) < SETTLE_AT and sum(group.durations.values()) > 2 * SETTLE_AT
        row = stats.rows()[0]
        assert row["duration_ms_p50"] == statistics.median(durations)
        assert row["duration_ms_p95"] == round(statistics.quantiles(durations, n=20, method="inclusive")[18], 6)


LEAP_SECONDS = [  # RFC 3339's own example first; each is stored under the UTC date the writer computes
    {"id": "R1", "timestamp": "2026-12-31T15:59:60-08:00", "cost_eur": 1},
    {"id": "R2", "timestamp": "2026-12-31T23:59:60.5Z", "cost_eur": 2},
    {"id": "R3", "timestamp": "2026-06-30T23:59:60+00:00", "cost_eur": 4},
    {"id": "R4", "timestamp": "2026-12-31T23:59:60", "cost_eur": 8},
    {"id": "R5", "timestamp": "2026-06-30t23:59:60.25-00:30", "cost_eur": 16},
]


async def test_leap_seconds_group_under_the_utc_day_and_hour_they_are_stored_under(tmp_path: Path, key: str) -> None:
    from blobwriter.entries import parse_timestamp

    settings = Settings.from_values({"storage": str(tmp_path), "encryption_key": key})
    await store_entries(settings, LEAP_SECONDS)
    result = run_cli("stats", "--date", "2026-06-30", "--until", "2027-01-01", "--by", "day,hour,id",
                     "--where", "hour!=null", "--format", "json", env=cli_env(settings))
    assert result.returncode == 0, result.stderr
    rows = orjson.loads(result.stdout)
    assert [(r["id"], r["day"], r["hour"]) for r in rows] == [
        ("R3", "2026-06-30", "2026-06-30T23:00:00Z"), ("R5", "2026-07-01", "2026-07-01T00:00:00Z"),
        ("R1", "2026-12-31", "2026-12-31T23:00:00Z"), ("R2", "2026-12-31", "2026-12-31T23:00:00Z"),
        ("R4", "2026-12-31", "2026-12-31T23:00:00Z")]
    for row in rows:  # the day each entry is stored under (its blob's date)
        [entry] = [e for e in LEAP_SECONDS if e["id"] == row["id"]]
        assert row["day"] == parse_timestamp(entry["timestamp"]).date().isoformat()
        assert (tmp_path / row["day"]).is_dir()


async def test_a_path_no_entry_has_is_noted(tmp_path: Path, key: str, sample_entries: list[dict[str, Any]]) -> None:
    """A --by, --where or --map path that no entry read has a value at (a typo, most likely) gives one note
    each on stderr; the answer is unchanged and the exit code 0. Fields some entry has are not noted."""
    settings = Settings.from_values({"storage": str(tmp_path), "encryption_key": key})
    day = [e for e in sample_entries if e["timestamp"].startswith("2026-11-26T") and e["timestamp"].endswith("Z")]
    day[-1] = {**day[-1], "rare": 1}  # present in one entry only: seen
    await store_entries(settings, day)

    def stats(*args: str) -> tuple[list[dict[str, Any]], list[str]]:
        result = run_cli("stats", "--date", "2026-11-26", *args, "--format", "json", env=cli_env(settings))
        assert result.returncode == 0, result.stderr
        return orjson.loads(result.stdout), result.stderr.splitlines()

    rows, notes = stats("--by", "deploymnet,day", "--where", "usr!=bob", "--where", "stream=false",
                        "--map", "duration_ms=duration_msec*1000", "--map", "cost=cost_eur")
    noted = [("--by deploymnet", "counted"), ("--where usr", "read"),
             ("the field map's duration_ms (duration_msec*1000)", "read")]
    assert notes == [f"blobwriter: note: {what}: no entry {how} has a value there (missing or null in every one); "
                     "is the name right?" for what, how in noted]
    assert [r["deploymnet"] for r in rows] == [None] and rows[0]["duration_ms_p50"] is None
    assert rows[0]["requests"] == sum(1 for e in day if e["stream"] is False)
    rows, notes = stats("--by", "deployment,rare", "--where", "error=null", "--map", "team=nothing")
    assert notes == [] and len(rows) > 1  # an alias that nothing reads is not watched
    [row], notes = stats("--where", "deployment=nosuch", "--where", "rare!=2")  # each condition's field is read
    assert row["requests"] == 0  # no field is unseen; but a zero table is not left to pass for an answer
    assert notes == [f"blobwriter: note: none of the {len(day):,} entries read met --where deployment=nosuch "
                     "--where rare!=2"]
    [row], notes = stats("--where", "deploymnet=gpt-4o")
    assert row["requests"] == 0 and notes[0].startswith("blobwriter: note: --where deploymnet: no entry read")
    assert notes[1] == f"blobwriter: note: none of the {len(day):,} entries read met --where deploymnet=gpt-4o"
    rows, notes = stats("--by", "deployment", "--where", "deployment=gpt-4o")
    assert notes == [] and [r["deployment"] for r in rows] == ["gpt-4o"]
    [row], notes = stats("--map", "otel")  # a preset's paths are not the user's: not noted
    assert notes == [] and row["requests"] == len(day)


async def test_no_entry_meeting_where_is_noted_in_words(tmp_path: Path, key: str) -> None:
    settings = Settings.from_values({"storage": str(tmp_path), "encryption_key": key})
    await store_entries(settings, [{"id": "w1", "timestamp": "2026-11-26T10:00:00Z", "user": "alice@contoso.com"}])
    result = run_cli("stats", "--date", "2026-11-26", "--where", "user=alice", env=cli_env(settings))
    assert result.returncode == 0
    assert result.stderr == "blobwriter: note: the one entry read did not meet --where user=alice\n"


def test_unseen_fields_merge_over_parts() -> None:
    """Parts from several workers (StatsTask.run, take): a field is seen if any part's entries had it."""
    import pickle

    fields = FieldMap.parse(["cost=price"])
    task = Stats(fields, ["team", "day"], [Condition.parse("region!=eu")]).task()
    whole = Stats(fields, ["team", "day"], [Condition.parse("region!=eu")])
    assert whole.unseen() == []  # no entry read: nothing to say
    for lines in ([b'{"team": "a"}', b'{"x": 1}'], [b'{"price": 2}'], []):
        whole.merge(pickle.loads(pickle.dumps(task.run(lines))))
    assert [note.split(":")[0] for note in whole.unseen()] == ["--where region"]
    assert whole.totals()["cost"] == 2 and whole.totals()["requests"] == 3 and whole.read == 3
    # the worker's Stats starts each run of entries afresh: fields seen before are watched again
    again = Stats(fields, ["team", "day"], [Condition.parse("region!=eu")])
    again.merge(task.run([b'{"region": "us"}']))
    assert [note.split(":")[0] for note in again.unseen()] == ["--by team", "the field map's cost (price)"]


async def test_numbers_print_plainly_in_every_format(tmp_path: Path, key: str) -> None:
    """A whole-number sum is an integer even when an entry's count was a float (1001, not 1001.0); zero
    cost is 0 however it came; CSV never uses an exponent (0.000038, not 3.8e-05); the table shows a cost
    with the decimals it needs (0.1000001, not 0.100000), the same number down the column; JSON is exact."""
    settings = Settings.from_values({"storage": str(tmp_path), "encryption_key": key})
    t = "2026-11-25T10:00:00Z"
    await store_entries(settings, [
        {"timestamp": t, "deployment": "a", "tokens": {"prompt": 1000, "completion": 1}},
        {"timestamp": t, "deployment": "a", "tokens": {"prompt": 1.0, "completion": 0.5}, "cost_eur": 0.0},
        {"timestamp": t, "deployment": "b", "cost_eur": 0.000038},
        {"timestamp": t, "deployment": "c", "cost_eur": 0.1},
        {"timestamp": t, "deployment": "c", "cost_eur": 0.0000001},
    ])

    def run(fmt: str) -> str:
        result = run_cli("stats", "--date", "2026-11-25", "--by", "deployment", "--format", fmt,
                         env=cli_env(settings))
        assert result.returncode == 0 and result.stderr == "", result.stderr
        return result.stdout

    rows = orjson.loads(run("json"))
    assert [(r["prompt_tokens"], r["completion_tokens"], r["cost"]) for r in rows] == [
        (1001, 1.5, 0), (0, 0, 0.000038), (0, 0, 0.1000001)]
    assert type(rows[0]["prompt_tokens"]) is int and type(rows[0]["cost"]) is int
    assert run("csv").splitlines()[1:] == ["a,2,0,1001,1.5,1002.5,0,,", "b,1,0,0,0,0,0.000038,,",
                                           "c,2,0,0,0,0,0.1000001,,"]
    table = run("table").splitlines()
    costs = [line.split()[6] for line in table[2:-2]] + [table[-1].split()[6]]
    assert costs == ["0.0000000", "0.0000380", "0.1000001", "0.1000381"]
    assert table[2].split()[3:6] == ["1,001", "1.5", "1,002.5"]
