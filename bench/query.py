"""`python -m bench.query --entries 1000000`: the reading tools against DuckDB and jq, side by side.

It makes `--entries` realistic entries (the API calls of bench/data, replicated with fresh ids and
timestamps spread over `--days` UTC days), writes them encrypted through LogWriter to a directory
store and to Azurite (its own, in memory, on a free port), and as one gzip JSON Lines file. Then,
each in a fresh process whose peak RSS is sampled from /proc:

- `blobwriter stats --by user,deployment` over the directory store and over Azurite;
- DuckDB's `read_json` over the .jsonl.gz, the same groups and measures;
- `zcat | jq` reducing the same groups (sums and counts: jq has no streaming percentiles), if jq exists;
- `blobwriter stats` over one day against the whole range (memory should stay flat as the range grows);
- `blobwriter export --format parquet` to a local directory (export throughput).

It prints one JSON object: entries/s per run, peak RSS, and the ratios. Figures vary with the load of
this shared machine: compare ratios measured in one run, never a figure against another run's.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from bench.env import ROOT, Azurite, connection_string, entry_lines, machine, new_container

PYTHON = sys.executable
FIRST_DAY = datetime(2026, 11, 24, tzinfo=UTC)

JQ_PROGRAM = (
    'reduce inputs as $e ({}; ($e.user + "|" + $e.deployment) as $k | .[$k].requests += 1 '
    '| .[$k].cost += ($e.cost_eur // 0) | .[$k].tokens += ($e.tokens.total // 0))'
)
DUCKDB_QUERY = """
SELECT user, deployment, count(*) AS requests,
       count(*) FILTER (WHERE status_code >= 400 OR error IS NOT NULL) AS errors,
       sum(coalesce(tokens.prompt, 0)) AS prompt_tokens, sum(coalesce(tokens.completion, 0)) AS completion_tokens,
       sum(coalesce(tokens.total, 0)) AS total_tokens, sum(coalesce(cost_eur, 0)) AS cost,
       quantile_cont(duration_ms, 0.5) AS p50, quantile_cont(duration_ms, 0.95) AS p95
FROM read_json('{path}', format = 'newline_delimited') GROUP BY ALL
"""


def generate(count: int, days: int) -> list[dict[str, Any]]:
    """`count` entries: the bench data's calls with new ids, timestamps evenly spread over `days` UTC days."""
    base = [orjson.loads(line) for line in entry_lines()]
    step = timedelta(days=days) / count
    out = []
    for i in range(count):
        entry = dict(base[i % len(base)])
        entry["id"] = f"b{i:09d}"
        entry["timestamp"] = (FIRST_DAY + step * i).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        out.append(entry)
    return out


async def write_store(settings: Any, entries: list[dict[str, Any]]) -> float:
    from blobwriter.writer import LogWriter

    tuned = settings.with_overrides(batch_size=1000, max_concurrent_writes=64, max_queue_size=200_000)
    started = time.perf_counter()
    async with LogWriter(tuned) as writer:
        for start in range(0, len(entries), 10_000):
            await writer.write_many(entries[start:start + 10_000], wait=True)
    return time.perf_counter() - started


def measure(command: list[str], env: dict[str, str] | None = None, *, shell: bool = False) -> dict[str, Any]:
    """Run a command to completion; wall time and the peak RSS of the process (VmHWM, sampled)."""
    started = time.perf_counter()
    process = subprocess.Popen(command if not shell else " ".join(command), shell=shell, env=env, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0
    while process.poll() is None:
        peak = max(peak, _hwm(process.pid))
        time.sleep(0.05)
    out, err = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed ({process.returncode}): {err.decode(errors='replace')[-2000:]}")
    return {"seconds": round(seconds, 3), "peak_rss_mib": round(peak / 2**20, 1) if not shell else None,
            "stdout_bytes": len(out)}


def _hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    import asyncio

    from blobwriter.cli import keygen
    from blobwriter.config import Settings

    parser = argparse.ArgumentParser(prog="python -m bench.query", description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="entries to generate (default: 1,000,000)")
    parser.add_argument("--days", type=int, default=7, help="UTC days the timestamps spread over (default: 7)")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary directory)")
    args = parser.parse_args(argv)

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-query-"))
    work.mkdir(parents=True, exist_ok=True)
    key = keygen()
    last_day = (FIRST_DAY + timedelta(days=args.days - 1)).date().isoformat()
    first_day = FIRST_DAY.date().isoformat()
    result: dict[str, Any] = {"entries": args.entries, "days": args.days, "started": datetime.now(UTC).isoformat(),
                              "machine": machine()}
    azurite = Azurite().start()
    try:
        print(f"generating {args.entries:,} entries ...", file=sys.stderr)
        entries = generate(args.entries, args.days)
        jsonl = work / "entries.jsonl.gz"
        with gzip.open(jsonl, "wb", compresslevel=6) as handle:
            for start in range(0, len(entries), 10_000):
                handle.write(b"".join(orjson.dumps(e) + b"\n" for e in entries[start:start + 10_000]))
        result["jsonl_gz_mib"] = round(jsonl.stat().st_size / 2**20, 1)

        directory = Settings.from_values({"storage": str(work / "store"), "encryption_key": key})
        container = new_container()
        blob = Settings.from_values({"storage": connection_string(azurite.url), "encryption_key": key,
                                     "container": container})
        print("writing the directory store and Azurite ...", file=sys.stderr)
        result["write_seconds"] = {"directory": round(asyncio.run(write_store(directory, entries)), 1),
                                   "azurite": round(asyncio.run(write_store(blob, entries)), 1)}
        del entries

        def env(settings: Settings) -> dict[str, str]:
            values = {k: v for k, v in os.environ.items() if not k.startswith("BLOBWRITER_")}
            values.update(BLOBWRITER_STORAGE=settings.require("storage"), BLOBWRITER_ENCRYPTION_KEY=key,
                          BLOBWRITER_CONTAINER=settings.container)
            return values

        stats = [PYTHON, "-m", "blobwriter", "stats", "--date", first_day, "--until", last_day,
                 "--by", "user,deployment", "--format", "json"]
        runs: dict[str, Any] = {}
        print("stats over the directory store ...", file=sys.stderr)
        runs["stats_directory"] = measure(stats, env(directory))
        print("stats over Azurite ...", file=sys.stderr)
        runs["stats_azurite"] = measure(stats, env(blob))
        print("DuckDB read_json over the .jsonl.gz ...", file=sys.stderr)
        runs["duckdb_read_json_gz"] = measure([PYTHON, "-c", "import duckdb, sys; duckdb.sql(sys.argv[1]).fetchall()",
                                               DUCKDB_QUERY.format(path=jsonl)])
        if shutil.which("jq"):
            print("zcat | jq ...", file=sys.stderr)
            runs["zcat_jq"] = measure(["zcat", str(jsonl), "|", "jq", "-n", "-c", f"'{JQ_PROGRAM}'", ">", "/dev/null"],
                                      shell=True)
        else:
            result["zcat_jq_skipped"] = "jq is not installed (apt-get install jq)"
        print("stats over one day (memory against the whole range) ...", file=sys.stderr)
        runs["stats_directory_one_day"] = measure(
            [PYTHON, "-m", "blobwriter", "stats", "--date", first_day, "--by", "user,deployment", "--format", "json"],
            env(directory))
        print("export to Parquet ...", file=sys.stderr)
        runs["export_parquet_directory"] = measure(
            [PYTHON, "-m", "blobwriter", "export", "--date", first_day, "--until", last_day, "--format", "parquet",
             "--out", str(work / "lake")], env(directory))

        per_day = args.entries / args.days
        for name, run in runs.items():
            count = per_day if name.endswith("one_day") else args.entries
            run["entries_per_s"] = round(count / run["seconds"])
        result["runs"] = runs
        duck = runs["duckdb_read_json_gz"]["entries_per_s"]
        result["ratios"] = {
            "stats_directory_vs_duckdb_gz": round(runs["stats_directory"]["entries_per_s"] / duck, 3),
            "stats_azurite_vs_duckdb_gz": round(runs["stats_azurite"]["entries_per_s"] / duck, 3),
            "stats_memory_whole_range_vs_one_day": round(runs["stats_directory"]["peak_rss_mib"]
                                                         / runs["stats_directory_one_day"]["peak_rss_mib"], 3),
        }
        if "zcat_jq" in runs:
            result["ratios"]["stats_directory_vs_zcat_jq"] = round(
                runs["stats_directory"]["entries_per_s"] / runs["zcat_jq"]["entries_per_s"], 3)
        result["goal"] = ("stats over the encrypted store at least as fast as DuckDB read_json on the gzip file "
                          "(ratio >= 1), memory flat as the range grows (whole range / one day close to 1)")
    finally:
        azurite.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
