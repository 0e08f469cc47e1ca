"""Helpers of the reliability tests: `blobwriter serve` processes, load, read-back by id, figures.

Every test of tests/test_reliability_*.py records what it measured with `record_figures`; the
figures land in tests/.reliability-figures.json, and `python -m tests.support.reliability`
prints them as the Markdown table of docs/RELIABILITY.md.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.conftest import ROOT, connection_string, free_port, wait_for_port

FIGURES = ROOT / "tests" / ".reliability-figures.json"
PAGE = 4096


def serve_env(storage: str, key: str, container: str = "logs", **extra: str) -> dict[str, str]:
    """The environment of a blobwriter process: this test's storage, key and container only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOBWRITER_")}
    env.update(BLOBWRITER_STORAGE=storage, BLOBWRITER_ENCRYPTION_KEY=key, BLOBWRITER_CONTAINER=container, **extra)
    return env


def azurite_env(blob_endpoint: str, key: str, container: str, **extra: str) -> dict[str, str]:
    return serve_env(connection_string(blob_endpoint), key, container, **extra)


def run_cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "blobwriter", *args], env=env, cwd=ROOT,
                          capture_output=True, timeout=timeout)


@dataclass
class ReadBack:
    """What `blobwriter read` printed: the ids it returned, how often, and its exit status."""

    counts: Counter[str]
    returncode: int
    stderr: str
    others: int = 0  # entries without a string id (e.g. fuzzed ones that happened to be valid)

    @property
    def duplicated(self) -> int:
        return sum(n - 1 for n in self.counts.values() if n > 1)

    def lost(self, expected: Iterable[str]) -> set[str]:
        return {i for i in expected if i not in self.counts}


def read_ids(env: dict[str, str], first: str, last: str | None = None, *, verbose: bool = False) -> ReadBack:
    """Read a date range back through the CLI (a subprocess) and count the entries by id."""
    args = (["-v"] if verbose else []) + ["read", "--date", first, "--until", last or first]
    result = run_cli(env, *args)
    counts: Counter[str] = Counter()
    others = 0
    for line in result.stdout.splitlines():
        entry = orjson.loads(line)
        if isinstance(entry.get("id"), str):
            counts[entry["id"]] += 1
        else:
            others += 1
    return ReadBack(counts, result.returncode, result.stderr.decode(errors="replace"), others)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    with open(f"/proc/{pid}/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


class RssSampler:
    """Samples a process's RSS in a thread until stopped; keeps the peak."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid, self.every = pid, every
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
                self.samples += 1
            except (OSError, ValueError):
                return
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


class ServeProcess:
    """A `blobwriter serve` subprocess on a free port; its stderr goes to a file (a pipe could fill up)."""

    def __init__(self, env: dict[str, str], log_path: Path, log_level: str = "warning") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "blobwriter", "serve", "--port", str(self.port), "--log-level", log_level],
            env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(self.port, timeout=60)
        except RuntimeError:
            self.kill()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 120) -> int:
        """SIGTERM and wait; the exit code (0: every accepted entry written)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)
        self._log.close()


@dataclass
class Ledger:
    """What the server answered for each id sent: the ground truth the read-back is checked against."""

    acked: set[str] = field(default_factory=set)  # 202 (queued) or 200 (durably written)
    durable: set[str] = field(default_factory=set)  # 200 after ?wait=true
    refused: set[str] = field(default_factory=set)  # 4xx/5xx: the server said they were not queued
    unknown: set[str] = field(default_factory=set)  # no answer (connection lost): may or may not be stored
    statuses: Counter[int] = field(default_factory=Counter)
    retry_after: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, ids: list[str], response: httpx.Response | None, *, wait: bool = False) -> None:
        with self.lock:
            if response is None:
                self.unknown.update(ids)
                return
            self.statuses[response.status_code] += 1
            if response.status_code == 503 and "retry-after" in response.headers:
                self.retry_after[response.headers["retry-after"]] += 1
            if response.status_code == 202:
                self.acked.update(ids)
            elif response.status_code == 200:
                self.acked.update(ids)
                if wait:
                    self.durable.update(ids)
            else:
                self.refused.update(ids)


_ids = itertools.count()


def make_entries(count: int, prefix: str, day: str = "2026-03-14", days: int = 1, pad: int = 0) -> list[dict[str, Any]]:
    """Small entries with unique ids, spread over `days` UTC dates starting at `day`."""
    base = datetime.fromisoformat(day).replace(tzinfo=UTC)
    out = []
    for n in range(count):
        stamp = base.replace(day=base.day + n % days, second=n % 60)
        entry = {"id": f"{prefix}-{next(_ids)}", "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                 "route": "/v1/chat", "status": 200, "tokens": n % 977}
        if pad:
            entry["note"] = "x" * pad
        out.append(entry)
    return out


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def post_batch(client: httpx.Client, ledger: Ledger, batch: list[dict[str, Any]], *, wait: bool = False) -> int | None:
    ids = [e["id"] for e in batch]
    try:
        response = client.post("/api/logs", params={"wait": "true"} if wait else None, json=batch)
    except httpx.HTTPError:
        ledger.record(ids, None)
        return None
    ledger.record(ids, response, wait=wait)
    return response.status_code


def health(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/api/health", timeout=30)
    return {"status": response.status_code, **response.json()}


def wait_until_drained(url: str, limit: float = 240) -> dict[str, Any]:
    """Poll health until no entry is queued; a safety limit (not a measured threshold) ends the wait."""
    deadline = time.monotonic() + limit
    while True:
        status = health(url)
        if status["queue_depth"] == 0 or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def record_figures(scenario: str, **figures: Any) -> None:
    """Merge one scenario's figures into tests/.reliability-figures.json."""
    data: dict[str, Any] = {}
    if FIGURES.exists():
        try:
            data = json.loads(FIGURES.read_text())
        except ValueError:
            data = {}
    figures["recorded"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    data[scenario] = figures
    FIGURES.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


COLUMNS = ("scenario", "load", "faults", "accepted", "read_back", "lost", "duplicated", "notes")


def markdown_table(data: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name in sorted(data):
        row = {"scenario": name, **data[name]}
        lines.append("| " + " | ".join(str(row.get(c, "")).replace("|", "/") for c in COLUMNS) + " |")
    return "\n".join(lines)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything a raw HTTP connection answers until the server closes it (or resets it)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    return b"".join(chunks)


if __name__ == "__main__":
    print(markdown_table(json.loads(FIGURES.read_text())))
