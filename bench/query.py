"""`python -m bench.query --quick|--full`: the reading tools against DuckDB and jq, side by side, in one run.

It makes realistic entries (the API calls of bench/data, replicated with fresh ids and timestamps
spread evenly over the UTC days of the range), writes them encrypted through LogWriter to a
directory store and to Azurite (its own, in memory, on a free port), and as one gzip JSON Lines
file (and one plain, for DuckDB's uncompressed figure). Then, each in a fresh process whose time,
CPU time and peak memory (the process and its worker processes together) are measured:

- `blobwriter stats --by user,deployment` over the directory store and over Azurite, and over the
  directory store in one process (the reader's workers off), against DuckDB's `read_json` over the
  gzip file (the same groups and measures), and `zcat | jq` reducing the same groups;
- `blobwriter stats` over 1, 2 and 4 days (memory as the range grows);
- `blobwriter export --format parquet` over 1, 2 and 4 days, against DuckDB copying the gzip file to
  Parquet (`COPY (SELECT * FROM read_json(...)) TO ... (FORMAT parquet)`).

The answers are compared (blobwriter's rows against DuckDB's and jq's), so that a fast wrong answer
cannot pass. It writes bench/results-query.json and docs/BENCHMARKS-QUERY.md (generated: edit this
file, not that one). Figures vary with the load of this shared machine: compare ratios measured in
one run, never a figure against another run's.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from bench.env import ROOT, Azurite, compile_package, connection_string, entry_lines, machine, new_container

PYTHON = sys.executable
FIRST_DAY = datetime(2026, 11, 24, tzinfo=UTC)
RESULTS = ROOT / "bench" / "results-query.json"
REPORT = ROOT / "docs" / "BENCHMARKS-QUERY.md"
MODES: dict[str, tuple[int, int, list[int]]] = {  # entries, UTC days they spread over, the ranges compared
    "quick": (1_000_000, 4, [1, 2, 4]),
    "full": (3_000_000, 8, [1, 2, 4, 8]),
}
FLAT = 1.25  # "memory flat as the range grows": the longest range's peak within 25% of one day's
CHUNK = 10_000

JQ_PROGRAM = (
    'reduce inputs as $e ({}; ($e.user + "|" + $e.deployment) as $k | .[$k].requests += 1 '
    '| .[$k].cost += ($e.cost_eur // 0) | .[$k].total_tokens += ($e.tokens.total // 0))'
)
DUCKDB_STATS = """
SELECT user, deployment, count(*) AS requests,
       count(*) FILTER (WHERE status_code >= 400 OR error IS NOT NULL) AS errors,
       sum(coalesce(tokens.prompt, 0)) AS prompt_tokens, sum(coalesce(tokens.completion, 0)) AS completion_tokens,
       sum(coalesce(tokens.total, 0)) AS total_tokens, sum(coalesce(cost_eur, 0)) AS cost,
       quantile_cont(duration_ms, 0.5) AS duration_ms_p50, quantile_cont(duration_ms, 0.95) AS duration_ms_p95
FROM read_json('{path}', format = 'newline_delimited') GROUP BY ALL ORDER BY ALL
"""
# No progress bar: DuckDB draws one on stdout for queries past two seconds.
DUCKDB_RUN = ("import duckdb, orjson, sys; con = duckdb.connect(); con.execute('SET enable_progress_bar = false'); "
              "print(orjson.dumps(con.sql(sys.argv[1]).fetchall()).decode())")
DUCKDB_EXECUTE = ("import duckdb, sys; con = duckdb.connect(); con.execute('SET enable_progress_bar = false'); "
                  "con.execute(sys.argv[1])")
DUCKDB_COPY = ("COPY (SELECT * FROM read_json('{path}', format = 'newline_delimited')) "
               "TO '{out}' (FORMAT parquet, COMPRESSION snappy)")


# -- the data ------------------------------------------------------------------------------------


def generate(count: int, days: int) -> Iterator[list[dict[str, Any]]]:
    """`count` entries in chunks: the bench data's calls with new ids, timestamps spread over `days` UTC days."""
    base = [orjson.loads(line) for line in entry_lines()]
    step = timedelta(days=days) / count
    for start in range(0, count, CHUNK):
        chunk = []
        for i in range(start, min(count, start + CHUNK)):
            entry = dict(base[i % len(base)])
            entry["id"] = f"b{i:09d}"
            entry["timestamp"] = (FIRST_DAY + step * i).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            chunk.append(entry)
        yield chunk


async def write_store(settings: Any, count: int, days: int) -> float:
    from blobwriter.writer import LogWriter

    tuned = settings.with_overrides(batch_size=1000, max_concurrent_writes=64, max_queue_size=200_000)
    started = time.perf_counter()
    async with LogWriter(tuned) as writer:
        for chunk in generate(count, days):
            await writer.write_many(chunk, wait=True)
    return time.perf_counter() - started


def write_files(work: Path, count: int, days: int) -> tuple[Path, Path]:
    """The same entries as one gzip JSON Lines file (gzip -6) and one plain one."""
    gz, plain = work / "entries.jsonl.gz", work / "entries.jsonl"
    with gzip.open(gz, "wb", compresslevel=6) as zipped, plain.open("wb") as flat:
        for chunk in generate(count, days):
            data = b"".join(orjson.dumps(e) + b"\n" for e in chunk)
            zipped.write(data)
            flat.write(data)
    return gz, plain


# -- measuring -------------------------------------------------------------------------------------


def _process_stats() -> dict[int, list[str]]:
    """The fields of /proc/PID/stat after the command name, of every process."""
    stats: dict[int, list[str]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                stats[int(entry.name)] = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
    return stats


def _family(root: int, stats: dict[int, list[str]]) -> set[int]:
    """A process and all its descendants (its reader's worker processes, a pipeline, Azurite's node)."""
    parents = {pid: int(fields[1]) for pid, fields in stats.items() if len(fields) > 1}
    family, grew = {root}, True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in family and pid not in family:
                family.add(pid)
                grew = True
    return family


def _tree_rss(root: int) -> int:
    """Resident bytes of a process and all its descendants."""
    stats = _process_stats()
    page = os.sysconf("SC_PAGE_SIZE")
    return sum(int(stats[pid][21]) * page for pid in _family(root, stats) if pid in stats)


def _tree_cpu(root: int) -> float:
    """CPU seconds (user + system) so far of a process and all its descendants."""
    stats = _process_stats()
    ticks = os.sysconf("SC_CLK_TCK")
    return sum((int(stats[pid][11]) + int(stats[pid][12])) / ticks for pid in _family(root, stats) if pid in stats)


def measure(command: list[str] | str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a command to completion: wall time, CPU time (with its children's), peak RSS of its process tree."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(command, shell=isinstance(command, str), env=env, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [threading.Thread(target=lambda s=stream, into=into: into.append(s.read()))
               for stream, into in ((process.stdout, out), (process.stderr, err))]
    for thread in readers:
        thread.start()
    while process.poll() is None:
        peak = max(peak, _tree_rss(process.pid))
        time.sleep(0.05)
    for thread in readers:
        thread.join()
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        shown = command if isinstance(command, str) else " ".join(command[:6])
        raise RuntimeError(f"{shown} failed ({process.returncode}): {b''.join(err).decode(errors='replace')[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 2), "peak_rss_mib": round(peak / 2**20, 1),
            "loadavg_before": round(load, 2), "stdout": b"".join(out)}


def _blobwriter(*args: str, workers: int | None = None) -> list[str]:
    if workers is None:
        return [PYTHON, "-m", "blobwriter", *args]
    # The reader's worker count is no setting: this pins it, as a library caller would with Reader(workers=1).
    code = (f"import sys, blobwriter.decoding as d; d.default_workers = lambda: {workers}; "
            "from blobwriter.cli import main; sys.exit(main(sys.argv[1:]))")
    return [PYTHON, "-c", code, *args]


def _day(offset: int) -> str:
    return (FIRST_DAY + timedelta(days=offset)).date().isoformat()


# -- checking the answers ----------------------------------------------------------------------------


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


def check_answers(stats: list[dict[str, Any]], duck: list[list[Any]], jq: dict[str, Any] | None) -> dict[str, Any]:
    """Do blobwriter's rows equal DuckDB's (every measure) and jq's (requests, cost, total tokens)?"""
    names = ["user", "deployment", "requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens",
             "cost", "duration_ms_p50", "duration_ms_p95"]
    theirs = {(row[0], row[1]): dict(zip(names, row, strict=True)) for row in duck}
    ours = {(row["user"], row["deployment"]): row for row in stats}
    differ = [key for key in ours.keys() | theirs.keys()
              if key not in ours or key not in theirs
              or not all(_close(ours[key][n], theirs[key][n]) if n in ("cost", "duration_ms_p50", "duration_ms_p95")
                         else ours[key][n] == theirs[key][n] for n in names[2:])]
    result: dict[str, Any] = {"groups": len(ours), "duckdb_agrees": not differ, "duckdb_differs": differ[:5]}
    if jq is not None:
        jq_rows = {tuple(k.split("|", 1)): v for k, v in jq.items()}
        jq_differ = [key for key in ours.keys() | jq_rows.keys()
                     if key not in ours or key not in jq_rows or ours[key]["requests"] != jq_rows[key]["requests"]
                     or ours[key]["total_tokens"] != jq_rows[key]["total_tokens"]
                     or not _close(ours[key]["cost"], jq_rows[key]["cost"])]
        result.update(jq_agrees=not jq_differ, jq_differs=jq_differ[:5])
    return result


# -- the run ------------------------------------------------------------------------------------------


def ensure_jq() -> str | None:
    """jq's path; installed with apt-get when missing and this is root; None (skipped, with a note) otherwise."""
    if shutil.which("jq"):
        return shutil.which("jq")
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing jq (apt-get) ...", file=sys.stderr)
        subprocess.run("apt-get update -qq && apt-get install -y -qq jq", shell=True, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return shutil.which("jq")


def versions(jq: str | None) -> dict[str, Any]:
    from importlib.metadata import version

    found: dict[str, Any] = {}
    for name in ("duckdb", "pyarrow", "orjson", "isal", "cryptography", "azure-storage-blob", "aiohttp"):
        try:
            found[name] = version(name)
        except Exception:
            found[name] = None
    if jq:
        found["jq"] = subprocess.run([jq, "--version"], capture_output=True, text=True).stdout.strip()
    found["python"] = platform.python_version()
    try:
        found["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                             text=True).stdout.strip()
    except OSError:
        pass
    return found


def run(mode: str, work: Path, count: int, days: int, ranges: list[int], *, reuse: bool = False) -> dict[str, Any]:
    from blobwriter.cli import keygen
    from blobwriter.config import Settings
    jq = ensure_jq()
    compile_package()
    result: dict[str, Any] = {"mode": mode, "entries": count, "days": days, "entries_per_day": count // days,
                              "started": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
                              "versions": versions(jq),
                              "command": " ".join(["python -m bench.query", *(sys.argv[1:] or [f"--{mode}"])])}
    first, last = _day(0), _day(days - 1)
    made = work / "made.json"  # what --reuse may take again: the files and the directory store of this size
    previous = orjson.loads(made.read_bytes()) if reuse and made.exists() else {}
    reusing = previous.get("entries") == count and previous.get("days") == days
    key = previous["key"] if reusing else keygen()
    azurite = Azurite().start()
    try:
        gz, plain = work / "entries.jsonl.gz", work / "entries.jsonl"
        directory = Settings.from_values({"storage": str(work / "store"), "encryption_key": key})
        blob = Settings.from_values({"storage": connection_string(azurite.url), "encryption_key": key,
                                     "container": new_container()})
        if not reusing:
            made.unlink(missing_ok=True)
            shutil.rmtree(work / "store", ignore_errors=True)
            print(f"writing {count:,} entries as gzip and plain JSON Lines ...", file=sys.stderr)
            write_files(work, count, days)
            print("writing the directory store (encrypted, through LogWriter) ...", file=sys.stderr)
            written = round(asyncio.run(write_store(directory, count, days)), 1)
            made.write_bytes(orjson.dumps({"entries": count, "days": days, "key": key, "directory_seconds": written}))
        result["jsonl_gz_mib"] = round(gz.stat().st_size / 2**20, 1)
        result["jsonl_mib"] = round(plain.stat().st_size / 2**20, 1)
        print("writing Azurite (encrypted, through LogWriter) ...", file=sys.stderr)
        result["write_seconds"] = {"directory": orjson.loads(made.read_bytes())["directory_seconds"],
                                   "azurite": round(asyncio.run(write_store(blob, count, days)), 1)}
        result["store_mib"] = round(sum(f.stat().st_size for f in (work / "store").rglob("*") if f.is_file())
                                    / 2**20, 1)

        def env(settings: Settings) -> dict[str, str]:
            values = {k: v for k, v in os.environ.items() if not k.startswith("BLOBWRITER_")}
            values.update(BLOBWRITER_STORAGE=settings.require("storage"), BLOBWRITER_ENCRYPTION_KEY=key,
                          BLOBWRITER_CONTAINER=settings.container)
            return values

        def stats(until: str, *, workers: int | None = None) -> list[str]:
            return _blobwriter("stats", "--date", first, "--until", until, "--by", "user,deployment",
                               "--format", "json", workers=workers)

        runs: dict[str, Any] = {}

        def step(name: str, what: str, command: list[str] | str, environment: dict[str, str] | None,
                 entries: int) -> bytes:
            print(f"{what} ...", file=sys.stderr)
            measured = measure(command, environment)
            out = measured.pop("stdout")
            measured["entries"] = entries
            measured["entries_per_s"] = round(entries / measured["seconds"])
            cpu = measured["cpu_seconds"]
            measured["entries_per_cpu_s"] = round(entries / cpu) if cpu else None
            runs[name] = measured
            (work / "runs-so-far.json").write_bytes(orjson.dumps(runs, option=orjson.OPT_INDENT_2))
            return bytes(out)

        duck = step("duckdb_read_json_gz", "DuckDB read_json over the .jsonl.gz", [PYTHON, "-c", DUCKDB_RUN,
                    DUCKDB_STATS.format(path=gz)], None, count)
        step("duckdb_read_json_plain", "DuckDB read_json over the plain .jsonl",
             [PYTHON, "-c", DUCKDB_RUN, DUCKDB_STATS.format(path=plain)], None, count)
        ours = step("stats_directory", "blobwriter stats over the directory store", stats(last), env(directory), count)
        server = azurite.process.pid if azurite.process else None
        served_before = _tree_cpu(server) if server else 0.0
        ours_azurite = step("stats_azurite", "blobwriter stats over Azurite", stats(last), env(blob), count)
        if server:  # Azurite runs on the same cores: what it took of them is not in the run's CPU seconds
            runs["stats_azurite"]["azurite_cpu_seconds"] = round(_tree_cpu(server) - served_before, 2)
        ours_one = step("stats_directory_one_process", "blobwriter stats over the directory store, one process",
                        stats(last, workers=1), env(directory), count)
        jq_out = None
        if jq:
            jq_out = step("zcat_jq", "zcat | jq", f"zcat {gz} | {jq} -n -c '{JQ_PROGRAM}'", None, count)
        else:
            result["zcat_jq_skipped"] = "jq is not installed and could not be (not root, or no apt-get)"
        per_day = count // days
        for n in ranges:
            if n != days:
                step(f"stats_directory_{n}_days", f"blobwriter stats over {n} day(s)", stats(_day(n - 1)),
                     env(directory), per_day * n)
        runs[f"stats_directory_{days}_days"] = runs["stats_directory"]
        for n in ranges:
            lake = work / f"lake-{n}"
            step(f"export_parquet_{n}_days", f"blobwriter export --format parquet over {n} day(s)",
                 _blobwriter("export", "--date", first, "--until", _day(n - 1), "--format", "parquet",
                             "--out", str(lake)), env(directory), per_day * n)
            shutil.rmtree(lake, ignore_errors=True)
        step("duckdb_copy_parquet", "DuckDB COPY of the .jsonl.gz to Parquet",
             [PYTHON, "-c", DUCKDB_EXECUTE, DUCKDB_COPY.format(path=gz, out=work / "duck.parquet")], None, count)

        answers = {
            "directory": check_answers(orjson.loads(ours), orjson.loads(duck),
                                       orjson.loads(jq_out) if jq_out else None),
            "azurite": check_answers(orjson.loads(ours_azurite), orjson.loads(duck), None),
            "one_process": check_answers(orjson.loads(ours_one), orjson.loads(duck), None),
        }
        result["runs"] = runs
        result["answers"] = answers
        result["runs"] = runs
        result["goals"] = goals(runs, days, ranges, answers)
    finally:
        azurite.stop()
    result["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    return result


def goals(runs: dict[str, Any], days: int, ranges: list[int], answers: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of issue 12's benchmark: met or missed, with the figures."""
    duck = runs["duckdb_read_json_gz"]["entries_per_s"]
    out = []
    for name, label in (("stats_directory", "directory store"), ("stats_azurite", "Azurite")):
        ratio = runs[name]["entries_per_s"] / duck
        right = answers["directory" if name == "stats_directory" else "azurite"]["duckdb_agrees"]
        out.append({"goal": f"stats over the encrypted {label} at least as fast as DuckDB read_json on the gzip file",
                    "met": ratio >= 1 and right, "ratio": round(ratio, 3),
                    "figures": f"{runs[name]['entries_per_s']:,} vs {duck:,} entries/s"
                               + ("" if right else "; ANSWERS DIFFER")})
    for kind in ("stats_directory", "export_parquet"):
        peaks = {n: runs[f"{kind}_{n}_days"]["peak_rss_mib"] for n in ranges}
        growth = peaks[ranges[-1]] / peaks[ranges[0]]
        what = "stats" if kind == "stats_directory" else "export --format parquet"
        out.append({"goal": f"{what}: memory flat as the range grows (peak RSS over {ranges[-1]} days within "
                            f"{FLAT:g}x of one day's)",
                    "met": growth <= FLAT, "ratio": round(growth, 3),
                    "figures": ", ".join(f"{n} d: {peaks[n]:,.0f} MiB" for n in ranges)})
    export = runs[f"export_parquet_{days}_days"]["entries_per_s"]
    copy = runs["duckdb_copy_parquet"]["entries_per_s"]
    out.append({"goal": "export throughput (reported; issue 12 sets no goal for it)", "met": None,
                "ratio": round(export / copy, 3),
                "figures": f"blobwriter export {export:,} vs DuckDB COPY {copy:,} entries/s"})
    return out


# -- the report --------------------------------------------------------------------------------------


# What the third round changed in reading, how it was found, and its side-by-side figures (by hand:
# alternating runs of a worktree of the commit before and of the new code, outside this benchmark).
ROUND_THREE = [
    "## The third round: what changed in reading (after 2b3ba8b)",
    "",
    "Found with `py-spy record` (the reading process and its workers), `perf stat` and per-process CPU "
    "times; the stats run above was 0.76x-0.92x of DuckDB in the three runs before it.",
    "",
    "- **Page faults.** `perf stat`: 518,000 page faults and 1.4 s of system time for 1,000,000 entries. glibc "
    "returned each frame's few MB of short-lived objects as soon as they were freed and faulted them in "
    "again, zero-filled, for the next. The reading commands and their workers keep 64 MiB of freed heap "
    "(`M_TOP_PAD`): ~40,000 faults, ~0.45 s.",
    "- **Missing keys on pysimdjson objects** cost ~2 us each (an exception inside it). A failed call's entry "
    "(`tokens` and `response` null) met 13 of them in the field map's fallbacks: keys with dots are now "
    "looked up in the object's key tuple, once per entry. `StatsTask.run`: 4.7 -> 3.4 us an entry.",
    "- **Copies** in the reading process: each frame was copied twice out of the scan buffer, and every "
    "downloaded byte once more into a rescan window; now once, and the window keeps the chunks themselves.",
    "- **Start-up**: the package root no longer loads the Azure SDK (~60-70 ms a process, three processes); "
    "this benchmark compiles blobwriter to bytecode first, as an install does (this environment sets "
    "`PYTHONDONTWRITEBYTECODE`, so edited modules were compiled again at each start).",
    "- **Durations** are appended per entry and counted in bulk (`Group.recent`), not counted per entry "
    "and expanded again to be sent.",
    "- **Downloads** (after 1fc340a). The store gives the SDK its own aiohttp transport, which dropped the "
    "storage SDK's 256 KiB read block for azure-core's 4 KiB: a Python step per 4 KiB of every download, about "
    "a CPU second here. Ranges of 8 MiB instead of 4 MiB halve the billed read operations (two in flight "
    "instead of four: the store's 16 MiB in flight a blob stays, but the reader's prefetch, two ranges a blob "
    "for two blobs, now holds 8 MiB ranges: the Azurite run's peak RSS rose from 245 to 285 MiB), and "
    "Azurite reads a range of at most 4 MiB twice to compute an MD5: its CPU for this read fell from "
    "4.1-4.8 s to 1.8-2.7 s. glibc's mmap threshold, pinned at 128 KiB by `M_TOP_PAD`, is raised to 32 MiB "
    "so that the ranges come from the kept heap: 263,000 -> ~67,000 page faults. By hand "
    "against an Azurite filled the same way: 6.8-7.1 s and 8.4-8.7 CPU s before, 5.5-5.9 s and 7.8-7.9 CPU s "
    "after; the run above: 0.67x of DuckDB before (1fc340a), 0.88x now.",
    "",
    "Side by side, by hand, on the bench's 1,000,000 entries in a directory store, alternating runs, both "
    "compiled: 2b3ba8b 5.78 / 5.61 / 5.71 s (10.5-10.7 CPU s); after 4.11 / 4.06 / 4.16 s (7.2-7.4 CPU s); "
    "byte-identical answers. DuckDB on the gzip file took 4.5-4.8 s on the same machine that hour.",
    "",
    "The Azurite run stays below DuckDB on this machine: Azurite serves from the same two cores (most of "
    "its CPU is V8's garbage collector), and its own CPU for the read (in the table's description below) "
    "plus the reader's leaves two cores no room to finish in DuckDB's time.",
]


def render(result: dict[str, Any]) -> str:
    """docs/BENCHMARKS-QUERY.md from the results."""
    runs, m, v = result["runs"], result["machine"], result["versions"]
    duck = runs["duckdb_read_json_gz"]["entries_per_s"]
    lines = [
        "# Benchmarks: answering from the encrypted logs",
        "",
        f"<!-- Generated by `{result['command']}` from bench/results-query.json; do not edit by hand. -->",
        "",
        f"`blobwriter stats --by user,deployment` over {result['entries']:,} realistic entries "
        f"({result['entries_per_day']:,} a day over {result['days']} UTC days; the API calls of "
        "`bench/data`, ~1.6 KB of JSON each), read back from the encrypted store (AES-256-GCM, gzip, "
        "batches of 1,000 entries a frame), against DuckDB's `read_json` over the same entries as one gzip "
        "JSON Lines file, measured side by side in one run. Each figure is one run of a fresh process; "
        "memory is the peak resident size of the process and its worker processes together.",
        "",
        "## Goals",
        "",
        "| goal | result | figures |",
        "|---|---|---|",
    ]
    for g in result["goals"]:
        verdict = "reported" if g["met"] is None else ("**met**" if g["met"] else "**missed**")
        lines.append(f"| {g['goal']} | {verdict} (ratio {g['ratio']:g}) | {g['figures']} |")
    lines += ["", *ROUND_THREE]
    lines += ["", "## Every run", "",
              "| run | entries | seconds | entries/s | vs DuckDB gzip | CPU s | entries per CPU s | peak RSS MiB "
              "| load before |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in runs.items():
        if name == f"stats_directory_{result['days']}_days":
            continue  # the same run as stats_directory
        per_cpu = f"{r['entries_per_cpu_s']:,}" if r.get("entries_per_cpu_s") else "-"
        lines.append(f"| {name} | {r['entries']:,} | {r['seconds']:.1f} | {r['entries_per_s']:,} | "
                     f"{r['entries_per_s'] / duck:.2f} | {r['cpu_seconds']:.1f} | {per_cpu} | "
                     f"{r['peak_rss_mib']:,.0f} | {r['loadavg_before']:.2f} |")
    answers = result["answers"]
    agree = []
    for where, a in answers.items():
        text = f"{where}: {a['groups']} groups, DuckDB {'agrees' if a['duckdb_agrees'] else 'DIFFERS'}"
        if "jq_agrees" in a:
            text += f", jq {'agrees' if a['jq_agrees'] else 'DIFFERS'}"
        agree.append(text)
    lines += [
        "",
        "What the runs are:",
        "",
        "- `duckdb_read_json_gz` / `_plain`: DuckDB's `read_json` over the gzip (gzip -6) / plain JSON Lines file, "
        "the same groups and measures (`count`, sums, `quantile_cont` for the percentiles).",
        "- `stats_directory`, `stats_azurite`: `blobwriter stats --by user,deployment --format json` over the whole "
        "range, from a directory store and from Azurite (in memory, on this machine: its CPU is part of the run's "
        "load but not of its CPU seconds"
        + (f"; serving this run took Azurite {runs['stats_azurite']['azurite_cpu_seconds']:.1f} CPU seconds of "
           f"the machine's {m.get('cpu_affinity') or m.get('cpus')} cores"
           if "azurite_cpu_seconds" in runs.get("stats_azurite", {}) else "")
        + "). `stats_directory_one_process`: the same with the reader's worker processes off.",
        "- `zcat_jq`: `zcat file | jq -n 'reduce inputs ...'`, the same groups, counts and sums only (jq has no "
        "percentiles)." if "zcat_jq" in runs else f"- zcat | jq: skipped ({result.get('zcat_jq_skipped')}).",
        "- `stats_directory_N_days`, `export_parquet_N_days`: the first N days, for memory as the range grows; "
        "export writes hive partitions of Parquet (two passes a day: column types, then rows).",
        "- `duckdb_copy_parquet`: DuckDB copying the whole gzip file to one Parquet file, export's counterpart.",
        "",
        f"Answers checked: {'; '.join(agree)} (every measure equal; costs and percentiles to 1e-6).",
        "",
        "## Machine",
        "",
        f"- {m.get('cpu_model', '?')}, {m.get('cpu_affinity') or m.get('cpus')} cores usable, "
        f"{m.get('memory_gib', '?')} GiB; {m.get('platform', '?')}",
        "- Shared with other developers' work: the load average before each run is in the table; "
        "compare ratios within this run, not figures across runs.",
        f"- Python {v.get('python')}, DuckDB {v.get('duckdb')}, pyarrow {v.get('pyarrow')}, orjson {v.get('orjson')}, "
        f"isal {v.get('isal')}, cryptography {v.get('cryptography')}, azure-storage-blob "
        f"{v.get('azure-storage-blob')}, {v.get('jq', 'no jq')}, Azurite {m.get('azurite')} on Node {m.get('node')}",
        f"- Commit {v.get('git_commit', '?')}; run {result['started']} to {result['finished']}; data: "
        f"{result['jsonl_mib']:,} MiB of JSON Lines, {result['jsonl_gz_mib']:,} MiB gzip, "
        f"{result['store_mib']:,} MiB encrypted store",
        "",
        "## Reproduce",
        "",
        "```sh",
        "make install",
        f"python -m bench.query --{result['mode']}     # --quick: 1,000,000 entries over 4 days (~10 min); "
        "--full: 3,000,000 over 8 days",
        "```",
        "",
        "`make bench` and `make bench-full` run it too. It needs Azurite (`make install`) and jq (installed with "
        "apt-get when missing and run as root; otherwise the jq run is skipped and the report says so). "
        "The raw figures are in `bench/results-query.json`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.query", description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="1,000,000 entries over 4 days (the default)")
    size.add_argument("--full", action="store_const", dest="mode", const="full", help="3,000,000 entries over 8 days")
    parser.add_argument("--entries", type=int, help="override the mode's number of entries (a smoke test)")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary directory)")
    parser.add_argument("--reuse", action="store_true",
                        help="with --keep: take the files and directory store a run of the same size left there")
    parser.add_argument("--report-only", action="store_true",
                        help="regenerate docs/BENCHMARKS-QUERY.md from bench/results-query.json")
    args = parser.parse_args(argv)
    if args.report_only:
        REPORT.write_text(render(orjson.loads(RESULTS.read_bytes())))
        return 0
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-query-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        mode = args.mode or "quick"
        count, days, ranges = MODES[mode]
        result = run(mode, work, args.entries or count, days, ranges, reuse=args.reuse)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    RESULTS.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    REPORT.write_text(render(result))
    print(orjson.dumps(result["goals"], option=orjson.OPT_INDENT_2).decode())
    print(f"wrote {RESULTS.relative_to(ROOT)} and {REPORT.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
