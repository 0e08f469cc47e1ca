"""The docs' query commands run as shown: the README's outputs are real, every stats example is right."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from blobwriter.cli import keygen
from blobwriter.config import Settings
from blobwriter.query.cli import SQL_EPILOG, STATS_EPILOG
from tests.conftest import ROOT, connection_string
from tests.support.query import (
    MEASURES,
    assert_rows_equal,
    day_of,
    expected_stats,
    first,
    gateway_measures,
    store_entries,
)
from tests.support.readback import cli_env, run_cli

README = (ROOT / "README.md").read_text()
SCHEMA = (ROOT / "docs" / "SCHEMA.md").read_text()
SHARED = ROOT / "bench" / "data" / "api-calls.jsonl.gz"  # the shared data set the README's outputs come from


def commands(text: str, name: str) -> list[list[str]]:
    """The `blobwriter NAME ...` command lines in a text (a `$ ` prompt, continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip().removeprefix("$ ")
        if line.startswith(f"blobwriter {name} ") and "<" not in line and "YYYY" not in line:
            found.append(shlex.split(line)[1:])
    return found


def option(args: list[str], name: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == name]


@pytest.fixture(scope="module")
def sample(azurite: str, sample_entries: list[dict[str, Any]]) -> Iterator[tuple[Settings, list[dict[str, Any]]]]:
    settings = Settings.from_values({"storage": connection_string(azurite), "encryption_key": keygen(),
                                     "container": f"q{uuid.uuid4().hex[:20]}", "batch_timeout": 0.1})
    asyncio.run(store_entries(settings, sample_entries))
    yield settings, sample_entries


STATS_EXAMPLES = commands(README, "stats") + commands(SCHEMA, "stats") + commands(STATS_EPILOG, "stats")


def test_the_docs_show_stats_examples() -> None:
    assert len(STATS_EXAMPLES) >= 10
    shown = {tuple(option(a, "--format")) for a in STATS_EXAMPLES}
    assert {("csv",), ("json",), ()} <= shown  # table (the default), csv and json all appear


@pytest.mark.parametrize("args", STATS_EXAMPLES, ids=lambda a: " ".join(a[1:]))
def test_every_stats_example_is_right(sample: tuple[Settings, list[dict[str, Any]]], args: list[str]) -> None:
    settings, entries = sample
    maps = option(args, "--map")
    if any("=" not in m for m in maps):
        pytest.skip("a preset for other entry shapes: tests/test_query_stats.py checks it on such entries")
    overrides = dict(m.split("=", 1) for m in maps)
    assert set(overrides) <= {"cost"}, "teach this test the other --map items the docs use"

    def measures(e: dict[str, Any]) -> dict[str, Any]:
        m = gateway_measures(e)
        if "cost" in overrides:
            m["cost"] = first(e, overrides["cost"]) or 0
        return m

    by = [k for k in ",".join(option(args, "--by")).split(",") if k]
    lo, hi = option(args, "--date")[0], (option(args, "--until") or option(args, "--date"))[0]
    in_range = [e for e in entries if lo <= day_of(e) <= hi]
    expected = expected_stats(in_range, by, option(args, "--where"), measures)
    result = run_cli(*args, env=cli_env(settings))
    assert result.returncode == 0, result.stderr
    fmt = (option(args, "--format") or ["table"])[0]
    columns = [*by, *MEASURES]
    if fmt == "json":
        assert_rows_equal(orjson.loads(result.stdout), expected)
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(result.stdout)))
        assert list(rows[0]) == columns if rows else True
        assert_rows_equal([{k: _number(v) for k, v in r.items()} for r in rows],
                          [{k: (None if v is None else v) for k, v in r.items()} for r in expected])
    else:
        lines = result.stdout.splitlines()
        assert lines[0].split() == columns
        body = lines[2:-2] if by else lines[2:]
        assert [line.split()[len(by)] for line in body] == [f"{r['requests']:,}" for r in expected]
        assert [line.split()[:len(by)] for line in body] == [["NULL" if r[k] is None else str(r[k]) for k in by]
                                                             for r in expected]


def _number(text: str) -> Any:
    if text == "":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def test_sql_examples_run(sample: tuple[Settings, list[dict[str, Any]]]) -> None:
    settings, _ = sample
    examples = commands(README, "sql") + commands(SQL_EPILOG, "sql")
    assert len(examples) >= 4
    for args in examples:
        result = run_cli(*args, env=cli_env(settings))
        assert result.returncode == 0, (args, result.stderr)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The 20,000 calls of the shared data set in a directory store: what the README's outputs show."""
    settings = Settings.from_values({"storage": str(tmp_path_factory.mktemp("shared")), "encryption_key": keygen()})
    with gzip.open(SHARED) as handle:
        entries = [orjson.loads(line) for line in handle]
    asyncio.run(store_entries(settings, entries, batch_size=1000))
    return settings


def readme_examples() -> list[tuple[str, str]]:
    """(command, output) of each `$ ` command in the README blocks that start with `$ blobwriter`; a
    command goes on past a line that ends in a backslash or inside an open quote, as in a shell."""
    blocks = re.findall(r"```\n(\$ blobwriter .*?)```", README, flags=re.S)
    examples = []
    for block in blocks:
        for part in re.split(r"^(?=\$ )", block, flags=re.M):
            if part.startswith("$ "):
                lines = re.sub(r"\\\n\s*", " ", part).split("\n")
                end = next(n for n in range(1, len(lines) + 1) if _complete("\n".join(lines[:n])))
                examples.append(("\n".join(lines[:end]).removeprefix("$ "), "\n".join(lines[end:])))
    return examples


def _complete(command: str) -> bool:
    try:
        shlex.split(command)
    except ValueError:  # "No closing quotation": the command goes on
        return False
    return True


def test_readme_outputs_are_real(shared: Settings, tmp_path: Path) -> None:
    examples = readme_examples()
    assert [c.split()[:2] for c, _ in examples] == [["blobwriter", "stats"], ["blobwriter", "stats"],
                                                    ["blobwriter", "sql"], ["blobwriter", "sql"],
                                                    ["blobwriter", "export"], ["python", "-c"]]
    for command, shown in examples:
        args = shlex.split(command)
        if args[0] == "python":  # the export read back, run as written
            result = subprocess.run([sys.executable, *args[1:]], cwd=tmp_path, capture_output=True, text=True,
                                    timeout=120)
            assert result.returncode == 0, result.stderr
            assert result.stdout.rstrip("\n") == shown.rstrip("\n"), command  # .show() ends in a blank line
            continue
        result = run_cli(*args[1:], env=cli_env(shared), cwd=str(tmp_path))
        assert result.returncode == 0, result.stderr
        if command.startswith("blobwriter export"):  # its lines are on stderr; file sizes vary with pyarrow
            strip = re.compile(r", [\d.]+ MB\)")
            # The README shows the week once it is over; run before its last day ends (UTC), the export
            # adds a note for each day not over yet (test_query_export.py checks that note).
            not_over = re.compile(r"^\d{4}-\d\d-\d\d: note: the day is not over \(UTC\).*\n", re.M)
            assert strip.sub(")", not_over.sub("", result.stderr)) == strip.sub(")", shown)
        else:
            assert result.stdout == shown, command
