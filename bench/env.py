"""The bench's environment: Azurite (in memory, own port), the latency proxy, the entries, the machine."""

from __future__ import annotations

import compileall
import gzip
import os
import platform
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from tests.support.azurite import Azurite as _Azurite
from tests.support.azurite import connection_string, free_port, wait_for_port  # noqa: F401 - used by bench modules

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DATA = BENCH / "data" / "api-calls.jsonl.gz"
PYTHON = sys.executable
ISOLATION_SHARE = 0.4  # the isolation runs' fixed rate: this share of single-entry requests/s at 0 ms
ISOLATION_ROUNDS = 3  # fixed-rate runs per store latency, interleaved (0 ms, 1.5 s, 0 ms, ...), latencies pooled


def nearest_rank(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank) of values sorted ascending, not empty."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def latency_ms(seconds: list[float]) -> dict[str, float]:
    """A load run's latencies (seconds) as every run reports them: mean, percentiles and max, in ms."""
    ordered = sorted(seconds)
    if not ordered:
        return dict.fromkeys(("mean", "p50", "p90", "p99", "p99.9", "max"), 0.0)
    return {"mean": sum(ordered) / len(ordered) * 1e3,
            **{f"p{q:g}": nearest_rank(ordered, q) * 1e3 for q in (50, 90, 99, 99.9)}, "max": ordered[-1] * 1e3}


def compile_package() -> None:
    """Compile blobwriter's modules to bytecode, as installing a package does. The processes measured
    (`blobwriter serve`, the reader's workers, each CLI command) otherwise compile every module they
    import from source at each start when the bytecode is stale or missing: a checkout installed
    editable, in an environment that sets PYTHONDONTWRITEBYTECODE (this one does)."""
    compileall.compile_dir(ROOT / "blobwriter", quiet=1)


def entry_lines() -> list[bytes]:
    """The realistic entries (API-call logs, ~1.6 KB each) as JSON lines without newline."""
    with gzip.open(DATA) as handle:
        return [line.rstrip(b"\n") for line in handle if line.strip()]


def new_container() -> str:
    return f"b{uuid.uuid4().hex[:20]}"


class Azurite(_Azurite):
    """The shared test Azurite, plus its memory use for the report."""

    def rss(self) -> int:
        try:
            import psutil

            return int(psutil.Process(self.process.pid).memory_info().rss) if self.process else 0
        except Exception:
            return 0


def delete_container(blob_endpoint: str, container: str) -> None:
    """Free Azurite's memory between runs."""
    from azure.storage.blob import BlobServiceClient

    try:
        BlobServiceClient.from_connection_string(connection_string(blob_endpoint)).delete_container(container)
    except Exception:
        pass


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    versions = {}
    for name in ("orjson", "isal", "cryptography", "azure-storage-blob", "azure-core", "aiohttp", "uvicorn",
                 "uvloop", "httptools", "starlette", "opentelemetry-sdk", "matplotlib"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:
            versions[name] = None
    info["packages"] = versions
    try:
        info["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        info["azurite"] = _azurite_version()
    except Exception:
        pass
    wrk = shutil.which("wrk")
    info["wrk"] = wrk
    if wrk:
        out = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=10)
        info["wrk_version"] = (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else ""
    return info


def _azurite_version() -> str | None:
    import json

    package = ROOT / "node_modules" / "azurite" / "package.json"
    if package.exists():
        return str(json.loads(package.read_text()).get("version"))
    return None


def read_entries(blob_endpoint: str, container: str, key: str, dates: list[str],
              each: Callable[[bytes], None] | None = None) -> dict[str, Any]:
    """Read every entry of `dates` back with blobwriter's Reader, as `blobwriter verify` does (frames
    checked against the writers' index frames, retried copies dropped), straight from Azurite (not
    through the proxy); `each` sees every entry line. Returns the reader's report."""
    import asyncio

    from blobwriter.config import Settings
    from blobwriter.reader import Reader
    from blobwriter.store import open_store

    settings = Settings.from_values({"storage": connection_string(blob_endpoint), "container": container,
                                     "encryption_key": key})

    async def read() -> dict[str, Any]:
        store = open_store(settings)
        reader = Reader(store, settings.keys, check_index=True)
        try:
            async for line in reader.entries(dates):
                if each is not None:
                    each(line)
        finally:
            await store.close()
        r = reader.report
        return {"parts": r.parts, "frames": r.frames, "entries": r.entries, "duplicate_frames": r.duplicates,
                "index_frames": r.index_frames, "unindexed_frames": r.unindexed, "bytes": r.bytes,
                "problems": [str(p) for p in r.problems[:20]], "problem_count": len(r.problems)}

    return asyncio.run(read())


def sample_dates() -> list[str]:
    """The UTC dates the sample entries fall on."""
    from blobwriter.entries import utc_date

    return sorted({utc_date(orjson.loads(line)["timestamp"]) for line in entry_lines()})


def padded_lines(lines: list[bytes], size: int, count: int) -> list[bytes]:
    """`count` entries of about `size` bytes: sample entries whose request and response texts are
    padded with other entries' texts (picked far apart, so that they compress like real text)."""
    def prompt(e: dict[str, Any]) -> dict[str, Any] | None:
        messages = (e.get("request") or {}).get("messages") or []
        return messages[-1] if messages and isinstance(messages[-1], dict) else None

    def answer(e: dict[str, Any]) -> dict[str, Any] | None:
        choices = (e.get("response") or {}).get("choices") or []
        message = choices[0].get("message") if choices and isinstance(choices[0], dict) else None
        return message if isinstance(message, dict) else None

    entries = [orjson.loads(line) for line in lines]
    texts = [m["content"] for e in entries for m in (prompt(e), answer(e)) if m and isinstance(m.get("content"), str)]
    out = []
    i = 0
    while len(out) < count:
        entry = entries[i % len(entries)]
        i += 1
        first, second = prompt(entry), answer(entry)
        if first is None or second is None:
            continue
        entry = orjson.loads(orjson.dumps(entry))
        first, second = prompt(entry), answer(entry)
        j, pad, have = len(out) * 7919, [], len(orjson.dumps(entry))
        while have < size:
            pad.append(texts[j % len(texts)])
            have += len(orjson.dumps(pad[-1]))
            j += 104_729
        half = len(pad) // 2
        first["content"] += "\n" + "\n".join(pad[:half])  # type: ignore[index]
        second["content"] += "\n" + "\n".join(pad[half:])  # type: ignore[index]
        out.append(orjson.dumps(entry))
    return out
