"""HTTP runs: `blobwriter serve` and the bare ASGI app under load from wrk (or a Python fallback)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench.env import BENCH, PYTHON, ROOT, connection_string, free_port, latency_ms, wait_for_port

LUA = BENCH / "wrk" / "post.lua"
WRK = shutil.which("wrk")
HEY = shutil.which("hey")


def body_file(lines: list[bytes]) -> Path:
    """The entries as a JSON Lines file for the load generator."""
    handle = tempfile.NamedTemporaryFile(prefix="bench-entries-", suffix=".jsonl", delete=False)
    with handle:
        handle.write(b"\n".join(lines) + b"\n")
    return Path(handle.name)


class Server:
    """A server process (blobwriter serve or the bare app) on a free port; stopped by SIGTERM."""

    def __init__(self, kind: str, env: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.port = free_port()
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()

    def start(self) -> Server:
        if self.kind == "bare":
            argv = [PYTHON, "-m", "bench.bare_app", str(self.port)]
        else:
            argv = [PYTHON, "-m", "blobwriter", "serve", "--port", str(self.port), "--log-level", "warning"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BLOBWRITER_")}
        env.update(self.env)
        self.process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_port(self.port)
        self.ps = psutil.Process(self.process.pid)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss(self) -> int:
        try:
            return int(self.ps.memory_info().rss)
        except psutil.Error:
            return 0

    def cpu(self) -> float:
        try:
            t = self.ps.cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            return 0.0

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]


def serve_env(storage_url: str, container: str, key: str, settings: dict[str, Any]) -> dict[str, str]:
    env = {"BLOBWRITER_STORAGE": connection_string(storage_url), "BLOBWRITER_CONTAINER": container,
           "BLOBWRITER_ENCRYPTION_KEY": key}
    env.update({f"BLOBWRITER_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def metrics(server: Server) -> dict[str, float]:
    """The writer's counters from GET /api/metrics."""
    with urllib.request.urlopen(server.url + "/api/metrics", timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^blobwriter_(entries_)?(\w+?)(_total)? ([0-9.eE+-]+)$", line)
        if m:
            values[m.group(2)] = float(m.group(4))
    return values


def load(url: str, data: Path, per_request: int, duration: float, connections: int = 32, threads: int = 2,
         count: bool = False) -> dict[str, Any]:
    """POST entries for `duration` seconds; requests/s, latency percentiles (ms), status counts."""
    ctype = "application/x-ndjson" if per_request > 1 else "application/json"
    if WRK:
        argv = [WRK, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "30s",
                "-s", str(LUA), url + "/api/logs", "--", str(data), str(per_request), ctype]
        if count:
            argv.append("count")
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
        line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk failed: {out.stdout[-1000:]} {out.stderr[-1000:]}")
        raw = orjson.loads(line[8:])
        seconds = raw["duration_us"] / 1e6
        errors = raw["err_connect"] + raw["err_read"] + raw["err_write"] + raw["err_timeout"]
        result = {
            "tool": "wrk", "connections": connections, "threads": threads, "seconds": seconds,
            "requests": raw["requests"], "requests_per_s": raw["requests"] / seconds,
            "non_2xx": raw["err_status"], "socket_errors": errors,
            "ok_per_s": (raw["requests"] - raw["err_status"]) / seconds,
            "latency_ms": {"mean": raw["lat_mean_us"] / 1e3, "p50": raw["p50_us"] / 1e3, "p90": raw["p90_us"] / 1e3,
                           "p99": raw["p99_us"] / 1e3, "p99.9": raw["p999_us"] / 1e3, "max": raw["lat_max_us"] / 1e3},
        }
        if count:
            result["status"] = {"202": raw["count_ok"], "503": raw["count_503"],
                                "503_with_retry_after": raw["count_retry_after"], "other": raw["count_other"]}
        return result
    argv = [PYTHON, "-m", "bench.loadgen", url + "/api/logs", str(data), str(per_request), ctype, str(duration),
            str(connections)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("LOADJSON ")), None)
    if line is None:
        raise RuntimeError(f"loadgen failed: {out.stderr[-1000:]}")
    return orjson.loads(line[9:])


def paced(url: str, body: Path, rate: float, duration: float, workers: int = 32) -> dict[str, Any]:
    """POST the same single-entry body at a fixed rate for `duration` seconds (hey: `workers`
    workers, each sending on its own clock tick, so the offered load is `rate` whatever the server's
    latency, as long as a request takes less than a tick); requests/s, latency percentiles (ms)."""
    if HEY is None:
        raise RuntimeError("a paced load needs hey (apt-get install hey)")
    argv = [HEY, "-z", f"{duration:g}s", "-c", str(workers), "-q", f"{rate / workers:.3f}", "-m", "POST",
            "-T", "application/json", "-D", str(body), "-o", "csv", url + "/api/logs"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    rows = [line.split(",") for line in out.stdout.splitlines()[1:] if line and line[0].isdigit()]
    if not rows:
        raise RuntimeError(f"hey failed: {out.stdout[-1000:]} {out.stderr[-1000:]}")
    seconds = max(float(row[7]) for row in rows)  # offset: when each request started, from the run's start
    statuses = dict(Counter(row[6] for row in rows))
    return {"tool": "hey", "workers": workers, "rate_offered": rate, "seconds": seconds, "requests": len(rows),
            "requests_per_s": len(rows) / seconds, "status": statuses,
            "non_2xx": sum(n for code, n in statuses.items() if not code.startswith("2")),
            "latency_ms": latency_ms(latencies := [float(row[0]) for row in rows]), "latencies_s": latencies}


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Fixed-rate runs of one setup as one: latencies pooled (each run's `latencies_s`, dropped here);
    requests, seconds, statuses, CPU seconds and the writer's counters summed; the slowest drain; each
    run's own figures under `runs`."""
    latencies = [x for run in runs for x in run.pop("latencies_s")]
    out = dict(runs[-1])
    out["requests"] = sum(run["requests"] for run in runs)
    out["seconds"] = sum(run["seconds"] for run in runs)
    out["requests_per_s"] = out["requests"] / out["seconds"]
    out["status"] = dict(sum((Counter(run["status"]) for run in runs), Counter()))
    out["non_2xx"] = sum(run["non_2xx"] for run in runs)
    out["latency_ms"] = latency_ms(latencies)
    out["metrics"] = {k: sum(run["metrics"].get(k, 0) for run in runs) for k in runs[-1]["metrics"]}
    out["accepted_per_s"] = out["metrics"].get("accepted", 0) / out["seconds"]
    out["rss_end"] = max(run.get("rss_end") or 0 for run in runs)
    for key in ("server_cpu_s", "proxy_cpu_s", "azurite_cpu_s"):
        out[key] = round(sum(run.get(key) or 0 for run in runs), 2)
    drained = [run.get("drained_s") for run in runs]
    out["drained_s"] = None if None in drained else max(drained)  # the slowest drain; None: one did not drain
    codes = {run.get("exit_code") for run in runs}
    out["exit_code"] = codes.pop() if len(codes) == 1 else None  # None: the runs ended differently (see `runs`)
    out["runs"] = [{key: run.get(key) for key in ("requests_per_s", "latency_ms", "server_cpu_s", "drained_s",
                                                  "exit_code")} for run in runs]
    return out


class Sampler:
    """A thread that samples a server's RSS and writer metrics every `every` seconds into `timeline`
    (plus what `extra` returns), from start() until stop()."""

    FIELDS = ("queue_depth", "queue_bytes", "accepted", "written", "rejected")

    def __init__(self, server: Server, every: float, extra: Callable[[], dict[str, Any]] | None = None) -> None:
        self.server, self.every, self.extra = server, every, extra
        self.timeline: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def start(self) -> Sampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                m = metrics(self.server)
            except Exception:
                m = {}
            point: dict[str, Any] = {"t": round(time.monotonic() - self._t0, 2), "rss": self.server.rss(),
                                     **{k: m.get(k) for k in self.FIELDS}}
            if self.extra is not None:
                point.update(self.extra())
            self.timeline.append(point)
            self._stop.wait(self.every)


def wait_drained(server: Server, timeout: float) -> tuple[dict[str, float], float | None]:
    """Poll the metrics until nothing is queued; the last metrics and how long it took."""
    started = time.monotonic()
    values = metrics(server)
    while time.monotonic() - started < timeout:
        values = metrics(server)
        if values.get("queue_depth", 1) == 0 and values.get("appends_in_flight", 0) == 0:
            return values, time.monotonic() - started
        time.sleep(0.25)
    return values, None


def post_bodies(url: str, bodies: list[bytes], connections: int = 4, until_full: bool = False,
                ctype: str = "application/x-ndjson", limit: int | None = None) -> dict[str, Any]:
    """POST `bodies` to /api/logs from `connections` concurrent clients: each body once, or (until_full)
    cycling through them until the server first answers 503, or `limit` bodies were sent. Status counts."""
    import asyncio

    import aiohttp

    async def run() -> dict[str, Any]:
        status: dict[str, int] = {}
        sent = 0
        full = asyncio.Event()
        total = limit if limit is not None else (1 << 62 if until_full else len(bodies))
        started = time.monotonic()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections),
                                         timeout=aiohttp.ClientTimeout(total=120)) as session:

            async def client() -> None:
                nonlocal sent
                while sent < total and not full.is_set():
                    body = bodies[sent % len(bodies)]
                    sent += 1
                    async with session.post(url + "/api/logs", data=body, headers={"Content-Type": ctype}) as answer:
                        await answer.read()
                        status[str(answer.status)] = status.get(str(answer.status), 0) + 1
                        if answer.status == 503 and until_full:
                            full.set()

            await asyncio.gather(*(client() for _ in range(connections)))
        return {"status": status, "requests": sent, "seconds": round(time.monotonic() - started, 2)}

    return asyncio.run(run())
