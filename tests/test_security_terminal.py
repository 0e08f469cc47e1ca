"""What an entry can do to the terminal of whoever reads the logs (QA round 9, security F1).

Anyone who can post an entry chooses its values and keys. The tables of `stats` and `sql` (the
format for people, and the default) show each control character as an escape, so an entry cannot
move the cursor, erase or hide other rows, set the window title or reorder text. JSON escapes them
by its own rules, and CSV, which is data, keeps every value exactly as stored (a CR quoted).
"""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
from collections.abc import Callable

import orjson

from blobwriter.config import Settings
from tests.support.query import store_entries
from tests.support.readback import cli_env

DAY = "2026-11-26"
# What a terminal acts on: C0 and C1 controls, DEL, bidi controls, line and paragraph separators.
ACTIVE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
HOSTILE = {
    "erase": "mallory\x1b[1A\x1b[2K\rtotal  0",  # cursor up, erase that line, back to its start
    "conceal": "eve\x1b[8m",  # hide the rest of the line (the row's numbers)
    "title": "trudy\x1b]0;pwned\x07",  # OSC: set the window title
    "csi": "oscar\x9b2J",  # the one-byte C1 CSI: clear the screen
    "bidi": "alice\u202egnp.exe",  # right-to-left override
    "lines": "bob\u2028carol\tdave\x7f",
}


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m blobwriter ARGS`, its output decoded as is (text mode would turn a CR into a newline)."""
    result = subprocess.run([sys.executable, "-m", "blobwriter", *args], env=env, capture_output=True, timeout=120)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())


async def stored(make_settings: Callable[..., Settings]) -> dict[str, str]:
    """The hostile entries stored through a real writer; the environment for the CLI to read them."""
    settings = make_settings()
    entries = [{"timestamp": f"{DAY}T10:00:0{i}Z", "user": user, "cost_eur": 0.5, "tokens": {"total": 3},
                "note\x1b[2Jkey": i} for i, user in enumerate(HOSTILE.values())]
    await store_entries(settings, entries)
    return cli_env(settings)


async def test_tables_show_control_characters_as_escapes(make_settings: Callable[..., Settings]) -> None:
    env = await stored(make_settings)
    stats = run_cli("stats", "--date", DAY, "--by", "user", env=env)
    users = run_cli("sql", "--date", DAY, "SELECT user FROM logs ORDER BY timestamp", env=env)
    columns = run_cli("sql", "--date", DAY, "SELECT * FROM logs ORDER BY timestamp", env=env)
    for result in (stats, users, columns):
        assert result.returncode == 0, result.stderr
        found = ACTIVE.findall(result.stdout)
        assert not found, f"control characters reach the terminal: {found!r}"
    assert "mallory\\x1b[1A\\x1b[2K\\rtotal  0" in stats.stdout
    assert "oscar\\x9b2J" in users.stdout and "alice\\u202egnp.exe" in users.stdout
    assert "bob\\u2028carol\\tdave\\x7f" in users.stdout and "trudy\\x1b]0;pwned\\x07" in users.stdout
    assert "note\\x1b[2Jkey" in columns.stdout.splitlines()[0]  # a column named after an entry's key
    assert stats.stdout.count("\n") == len(HOSTILE) + 4  # header, rule, a line per user, rule, total


async def test_json_and_csv_keep_every_value_exactly(make_settings: Callable[..., Settings]) -> None:
    env = await stored(make_settings)
    as_json = run_cli("sql", "--date", DAY, "--format", "json", "SELECT user FROM logs ORDER BY timestamp", env=env)
    assert [row["user"] for row in orjson.loads(as_json.stdout)] == list(HOSTILE.values())
    # A bare CR is quoted (RFC 4180): unquoted, it ends the row for every CSV reader.
    for query in ("SELECT user, cost_eur FROM logs ORDER BY timestamp",
                  "SELECT user AS \"who\rwhat\", cost_eur FROM logs ORDER BY timestamp"):
        as_csv = run_cli("sql", "--date", DAY, "--format", "csv", query, env=env)
        assert as_csv.returncode == 0, as_csv.stderr
        rows = list(csv.reader(io.StringIO(as_csv.stdout, newline="")))
        assert rows[0] in (["user", "cost_eur"], ["who\rwhat", "cost_eur"])
        assert rows[1:] == [[user, "0.5"] for user in HOSTILE.values()]
        assert as_csv.stdout.count("\n") == len(HOSTILE) + 1 + sum(u.count("\n") for u in HOSTILE.values())
    stats = run_cli("stats", "--date", DAY, "--by", "user", "--format", "csv", env=env)
    assert sorted(row[0] for row in csv.reader(io.StringIO(stats.stdout, newline=""))) == sorted(
        ["user", *HOSTILE.values()])


async def test_errors_and_notes_that_quote_entries_show_escapes(make_settings: Callable[..., Settings]) -> None:
    """DuckDB's errors quote the value they could not convert: it reached stderr raw. (stats' notes quote an
    example of a value that is not a number as JSON, escaped already.)"""
    settings = make_settings()
    await store_entries(settings, [{"timestamp": f"{DAY}T10:00:00Z", "user": HOSTILE["erase"],
                                    "tokens": {"total": HOSTILE["title"]}}])
    env = cli_env(settings)
    cast = run_cli("sql", "--date", DAY, "SELECT CAST(user AS INTEGER) FROM logs", env=env)
    assert cast.returncode == 2 and "mallory\\x1b[1A" in cast.stderr, cast.stderr
    stats = run_cli("stats", "--date", DAY, env=env)
    assert stats.returncode == 0 and "trudy\\u001b]0;pwned\\u0007" in stats.stderr, stats.stderr
    for result in (cast, stats):
        assert not ACTIVE.findall(result.stderr), result.stderr


def test_printable_keeps_newlines_only_when_asked_and_escapes_the_rest_alike() -> None:
    """One rule for both modes (output.py had a second regex for `lines`, which could drift from the first):
    every character a terminal acts on is escaped, except that `lines=True` keeps a newline as it is."""
    from blobwriter.query.output import printable

    for code in (c for c in range(0x110000) if not 0xD800 <= c < 0xE000):
        char = chr(code)
        escaped = printable(char)
        assert (escaped != char) == bool(ACTIVE.match(char) or char == "\n"), hex(code)
        assert printable(char, lines=True) == (char if char == "\n" else escaped), hex(code)
    text = "a\x1b[2J\nb\u202ec\r\nd\n"
    assert printable(text) == "a\\x1b[2J\\nb\\u202ec\\r\\nd\\n"
    assert printable(text, lines=True) == "a\\x1b[2J\nb\\u202ec\\r\nd\n"
    assert printable("plain\nlines", lines=True) == "plain\nlines"
