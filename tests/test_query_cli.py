"""The query commands' command line: help, the optional extra, progress bars only on a terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from blobwriter.config import Settings
from tests.conftest import ROOT, connection_string
from tests.support.azurite import ACCOUNT
from tests.support.proxy import HoldingProxy
from tests.support.query import store_entries
from tests.support.readback import cli_env, run_cli
from tests.test_query_export import interrupt, is_get_of

DAY = "2026-11-26"


def test_help_lists_the_commands_with_examples() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("stats", "sql", "export"):
        assert command in result.stdout
    stats = run_cli("stats", "--help").stdout
    assert "--by" in stats and "--where" in stats and "--map" in stats and "examples:" in stats
    assert "duration_ms_p95" in stats and "litellm" in stats
    sql = run_cli("sql", "--help").stdout
    assert "SELECT * FROM logs WHERE id" in sql and "--sample-size" in sql and "--memory-limit" in sql
    export = run_cli("export", "--help").stdout
    assert "--out" in export and "parquet" in export and "NOT encrypted" in export
    # stats runs without the query extra (test_without_the_extra); sql and export need it (QA F9).
    assert "Runs without the query extra" in stats and "Needs the query extra" not in stats
    assert "Needs the query extra" in sql and "Needs the query extra" in export


@pytest.mark.parametrize("size", ["0", "-5", "ten", "\u0663"])  # Arabic-Indic 3: ASCII digits only, as settings
def test_sample_size_is_positive_or_minus_one(size: str) -> None:
    result = run_cli("sql", "--date", DAY, "--sample-size", size, "SELECT 1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "argument --sample-size" in result.stderr and "-1 (all)" in result.stderr


WITHOUT = """
import sys
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("No module named " + name)
        return None
sys.meta_path.insert(0, Missing())
from blobwriter.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_without(blocked: set[str], *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI in a Python where the given packages cannot be imported (a deployment without the extra)."""
    return subprocess.run([sys.executable, "-c", WITHOUT.format(blocked=blocked), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


async def test_without_the_extra(make_settings: Callable[..., Settings], sample_entries: list[dict[str, Any]],
                                 tmp_path: Path) -> None:
    settings = make_settings(storage=str(tmp_path / "store"))
    await store_entries(settings, sample_entries[:50])
    env = cli_env(settings)
    missing = {"duckdb", "pyarrow", "tqdm"}
    for args, needs in ((["sql", "--date", DAY, "SELECT 1"], "duckdb"),
                        (["export", "--date", DAY, "--out", str(tmp_path / "out")], "pyarrow")):
        result = run_without(missing, *args, env=env)
        assert result.returncode == 2, result.stderr
        assert f"needs {needs}: install the query extra: pip install 'blobwriter[query]'" in result.stderr
        assert "Traceback" not in result.stderr
    # stats needs none of them; read and verify neither.
    stats = run_without(missing, "stats", "--date", "2026-11-24", "--until", "2026-12-01", "--format", "json",
                        env=env)
    assert stats.returncode == 0, stats.stderr
    assert orjson.loads(stats.stdout)[0]["requests"] == 50
    assert run_without(missing, "verify", "--date", DAY, env=env).returncode == 0


def run_on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal; what the terminal showed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal has a size
    process = subprocess.Popen([sys.executable, "-m", "blobwriter", *args], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    return process.wait(timeout=120), shown.decode(errors="replace")


@pytest.mark.parametrize("command", [["stats"], ["sql", "SELECT count(*) FROM logs"], ["export", "--out", "{out}"],
                                     ["verify"]])
async def test_progress_bar_only_on_a_terminal(make_settings: Callable[..., Settings],
                                               sample_entries: list[dict[str, Any]], tmp_path: Path,
                                               command: list[str]) -> None:
    settings = make_settings(storage=str(tmp_path / "store"))
    await store_entries(settings, sample_entries[:300])
    env = cli_env(settings)
    args = [command[0], "--date", "2026-11-24", "--until", "2026-11-26",
            *(a.format(out=tmp_path / "out") for a in command[1:])]
    code, shown = run_on_a_terminal(args, env)
    assert code == 0, shown
    assert f"{command[0]} 2026-11-2" in shown and "entries" in shown, shown  # label, day (i/n), count
    assert "/3)" in shown
    # "stats 2026-11-25 (2/3): 1,234 entries [...": one colon, the count as a whole number
    assert re.search(r"\(\d/3\): \d[\d,]* entries \[", shown), shown
    assert ": :" not in shown and ".00 entries" not in shown, shown
    piped = run_cli(*args, env=env)
    assert piped.returncode == 0
    assert "entries/s" not in piped.stderr and "\r" not in piped.stderr


@pytest.mark.parametrize("rows", ["0", "\u0663", "1e3"])
def test_rows_per_file_is_a_positive_number_in_ascii_digits(rows: str) -> None:
    result = run_cli("export", "--date", DAY, "--format", "jsonl", "--out", "unused", "--rows-per-file", rows)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "argument --rows-per-file" in result.stderr and "positive number of rows" in result.stderr


@pytest.mark.parametrize("args, note", [
    (["read", "--date", DAY], "the entries printed are only part of the range"),
    (["verify", "--date", DAY], "the range was not verified to its end: no verdict"),
    (["stats", "--date", DAY], "nothing was printed"),
    (["sql", "--date", DAY, "SELECT count(*) FROM logs"], "the answer is incomplete (any rows printed are only "
                                                          "part of it)"),
])
def test_ctrl_c_is_one_line_and_exit_130(sample_store: tuple[Settings, list[dict[str, Any]]], azurite_upstream: str,
                                         args: list[str], note: str) -> None:
    """Ctrl-C ended these with exit 130 and not a word; now one line says what was left (the export's own
    are in test_query_export)."""
    settings, _ = sample_store
    proxy = HoldingProxy(azurite_upstream, is_get_of(DAY)).start_in_thread()
    try:
        result = interrupt(args, cli_env(settings, BLOBWRITER_STORAGE=connection_string(f"{proxy.url}/{ACCOUNT}")),
                           proxy)
    finally:
        proxy.stop_thread()
    assert (result.returncode, result.stderr.splitlines()[-1:]) == (130, [f"blobwriter: interrupted; {note}"])
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("command", [["read"], ["stats", "--format", "json"],
                                     ["sql", "SELECT count(*) AS n FROM logs"]])
def test_a_range_without_logs_is_noted(sample_store: tuple[Settings, list[dict[str, Any]]],
                                       command: list[str]) -> None:
    """QA: a mistyped year, container or blob_prefix gave a table of zeros (or no output) with exit 0 and
    nothing on stderr, which could pass for an answer. Now one note says that nothing was found, and where."""
    settings, _ = sample_store
    name, *rest = command
    cases = [(cli_env(settings), ["--date", "2025-11-26"], "2025-11-26", ""),  # a year off
             (cli_env(settings, BLOBWRITER_BLOB_PREFIX="gw/"), ["--date", DAY, "--until", "2026-11-27"],
              f"{DAY}..2026-11-27", " under blob_prefix 'gw/'"),  # not the writer's prefix
             (cli_env(settings), ["--date", DAY], None, "")]  # logs found: no note
    for env, dates, span, prefix in cases:
        result = run_cli(name, *dates, *rest, env=env)
        assert result.returncode == 0, result.stderr
        count = (len(result.stdout.splitlines()) if name == "read" else
                 orjson.loads(result.stdout)[0]["requests"] if name == "stats" else int(result.stdout.split()[-1]))
        if span is None:
            assert result.stderr == "" and count > 0
            continue
        assert count == 0
        assert re.fullmatch(rf"blobwriter: note: no logs for {re.escape(span)} in http://\S+/{settings.container}"
                            rf"{re.escape(prefix)}; are the dates \(UTC\) and the storage settings right\?\n",
                            result.stderr), result.stderr
