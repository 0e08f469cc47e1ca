"""`python -m bench --quick | --full`: every figure in bench/results.json, docs/BENCHMARKS.md, docs/bench-*.png.

One run starts its own Azurite (in memory, free port) and the latency proxy (tests/support/proxy.py)
in front of it, runs each scenario in a fresh process (so RSS is that scenario's own), and stops
everything it started, whatever happens.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import psutil

from bench import http, micro
from bench.env import (
    BENCH,
    PYTHON,
    ROOT,
    Azurite,
    connection_string,
    delete_container,
    entry_lines,
    machine,
    new_container,
)

log = logging.getLogger("bench")

TUNED = {"batch_size": 1000, "max_concurrent_writes": 256, "max_queue_size": 400_000}
OFFERED_RATE = 75_000  # entries/s offered to peers 2-5: well above what all but the tuned writer take
SYNC_CALLERS = 64
STORE_LATENCY = 1.5
# In-memory Azurite keeps what deleted containers held for a long while; past this it slows down and
# times requests out (seen in full mode, 4.3 GB after the unbounded batch-10 peer), so it is restarted.
AZURITE_RSS_RESTART = int(os.environ.get("BENCH_AZURITE_RESTART_MIB", "1536")) << 20

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "warmup": 5, "measure": 8, "drain": 40,
        "sweep_latencies": [0.0, 0.05, 0.5], "sweep_peers": ["otel", "default", "tuned"],
        "sweep_warmup": 4, "sweep_measure": 4,
        "batch_sizes": [10, 100, 1000], "concurrency": [16, 256],
        "p99_rate": 20_000, "p99_warmup": 3, "p99_measure": 6,
        "http_seconds": 8, "parse_seconds": 1.5, "encode_rounds": 5,
        "outage": {"before": 5, "down": 15, "after": 20},
    },
    "full": {
        "warmup": 10, "measure": 45, "drain": 90,
        "sweep_latencies": [0.0, 0.05, 0.5], "sweep_peers": ["sync", "batch10", "otel", "default", "tuned"],
        "sweep_warmup": 5, "sweep_measure": 20,
        "batch_sizes": [10, 100, 500, 1000], "concurrency": [1, 16, 64, 128, 256],
        "p99_rate": 20_000, "p99_warmup": 5, "p99_measure": 30,
        "http_seconds": 30, "parse_seconds": 5, "encode_rounds": 15,
        "outage": {"before": 10, "down": 60, "after": 60},
    },
}

PEERS = {
    "sync": {"kind": "sync", "label": "1. synchronous append per entry", "concurrency": SYNC_CALLERS},
    "batch10": {"kind": "batch10", "label": "2. batch-10, one sequential writer, unbounded queue",
                "rate": OFFERED_RATE},
    "otel": {"kind": "otel", "label": "3. OpenTelemetry BatchLogRecordProcessor (defaults)", "rate": OFFERED_RATE},
    "default": {"kind": "logwriter", "label": "4. blobwriter LogWriter, default settings", "rate": OFFERED_RATE,
                "settings": {}},
    "tuned": {"kind": "logwriter", "label": "5. blobwriter LogWriter, tuned for high latency", "rate": OFFERED_RATE,
              "settings": TUNED},
}


class Bench:
    def __init__(self, mode: str) -> None:
        from blobwriter.keys import keygen
        from tests.support.proxy import FaultPlan, StorageProxy

        self.mode = mode
        self.p = PROFILES[mode]
        self.key = keygen()
        self.azurite = Azurite().start()
        self.proxy = StorageProxy(self.azurite.upstream, FaultPlan()).start_in_thread()
        self.me = psutil.Process()
        self.lines = entry_lines()
        self.entries_file = http.body_file(self.lines)
        self.results: dict[str, Any] = {"mode": mode, "started": datetime.now(UTC).isoformat(timespec="seconds"),
                                        "machine": machine(), "tuned_settings": TUNED, "offered_rate": OFFERED_RATE,
                                        "sync_callers": SYNC_CALLERS, "store_latency_s": STORE_LATENCY,
                                        "profile": {k: v for k, v in self.p.items()},
                                        "load_generator": "wrk" if http.WRK else "python-aiohttp (fallback)"}

    @property
    def storage_url(self) -> str:
        return self.proxy.url + "/devstoreaccount1"

    def close(self) -> None:
        try:
            self.proxy.stop_thread()
        finally:
            self.azurite.stop()
            self.entries_file.unlink(missing_ok=True)

    def keep_azurite_small(self) -> None:
        """Restart Azurite, and point the proxy at the new one, once it holds too much memory."""
        rss = self.azurite.rss()
        if rss > AZURITE_RSS_RESTART:
            log.info("  (restarting Azurite: %d MiB resident)", rss >> 20)
            self.azurite.stop()
            self.azurite = Azurite().start()
            self.proxy.upstream = self.azurite.upstream

    def cpu(self) -> tuple[float, float]:
        mine = self.me.cpu_times()
        try:
            theirs = psutil.Process(self.azurite.process.pid).cpu_times()  # type: ignore[union-attr]
            az = theirs.user + theirs.system
        except psutil.Error:
            az = 0.0
        return mine.user + mine.system, az

    # -- in-process peers ----------------------------------------------------------------------

    def peer(self, name: str, latency: float, warmup: float, measure: float, **extra: Any) -> dict[str, Any]:
        spec = dict(PEERS[name]) if name in PEERS else {"kind": "logwriter", "label": name}
        spec.update(extra)
        self.proxy.plan.latency = latency
        container = new_container()
        cfg = {"storage": connection_string(self.storage_url), "container": container, "key": self.key,
               "warmup": warmup, "measure": measure, "latency": latency, "name": name, **spec}
        cpu0 = self.cpu()
        started = time.monotonic()
        out = subprocess.run([PYTHON, "-m", "bench.peers", orjson.dumps(cfg).decode()], cwd=ROOT,
                             capture_output=True, text=True, timeout=warmup + measure + cfg.get("drain", 0) + 120)
        cpu1 = self.cpu()
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        delete_container(self.azurite.url, container)
        self.keep_azurite_small()
        if line is None:
            log.error("peer %s failed:\n%s", name, out.stderr[-3000:])
            return {"name": name, "label": spec.get("label"), "latency_s": latency, "error": out.stderr[-1500:]}
        result = orjson.loads(line[7:])
        result.update(label=spec.get("label"), proxy_cpu_s=round(cpu1[0] - cpu0[0], 2),
                      azurite_cpu_s=round(cpu1[1] - cpu0[1], 2), run_s=round(time.monotonic() - started, 1))
        log.info("  %-9s @%4.0f ms: %9.1f entries/s written, dropped %d, refused %d, backlog %d, RSS %d MiB",
                 name, latency * 1000, result["written_per_s"], result["dropped"], result["refused"],
                 result["backlog_end"], result["rss_end"] >> 20)
        return result

    def run_peers(self) -> None:
        log.info("Peers side by side at %.1f s store latency", STORE_LATENCY)
        runs = []
        for name in PEERS:
            extra = {"drain": self.p["drain"]} if name == "tuned" else {}
            runs.append(self.peer(name, STORE_LATENCY, self.p["warmup"], self.p["measure"], **extra))
        self.results["peers"] = runs

    def run_latency_sweep(self) -> None:
        log.info("Throughput against store latency")
        runs = list(self.results.get("peers", []))
        for latency in self.p["sweep_latencies"]:
            for name in self.p["sweep_peers"]:
                runs.append(self.peer(name, latency, self.p["sweep_warmup"], self.p["sweep_measure"],
                                      record_latency=False))
        self.results["latency_sweep"] = [_brief(r) for r in runs]

    def run_write_p99(self) -> None:
        log.info("write() latency at %d entries/s offered, 0 ms vs %.1f s store latency", self.p["p99_rate"],
                 STORE_LATENCY)
        out = {}
        for latency in (0.0, STORE_LATENCY):
            out[str(latency)] = self.peer("tuned", latency, self.p["p99_warmup"], self.p["p99_measure"],
                                          rate=self.p["p99_rate"])
        self.results["write_p99"] = {k: _brief(v) for k, v in out.items()}

    def run_batch_sweep(self) -> None:
        log.info("Sweep over batch_size and max_concurrent_writes at %.1f s", STORE_LATENCY)
        runs = []
        for conc in self.p["concurrency"]:
            for size in self.p["batch_sizes"]:
                settings = {"batch_size": size, "max_concurrent_writes": conc, "max_queue_size": 400_000}
                r = self.peer(f"b{size}/c{conc}", STORE_LATENCY, self.p["sweep_warmup"], self.p["sweep_measure"],
                              rate=OFFERED_RATE, settings=settings, record_latency=False)
                runs.append(_brief(r))
        self.results["batch_sweep"] = runs

    # -- baselines ---------------------------------------------------------------------------------

    def run_baselines(self) -> None:
        log.info("Baselines: orjson.loads, encode cost")
        self.results["parse"] = micro.parse_rate(self.lines, self.p["parse_seconds"])
        entries = [orjson.loads(x) for x in self.lines]
        self.results["encode"] = {str(b): micro.encode_cost(entries, b, self.p["encode_rounds"]) for b in (1000, 10)}
        log.info("  orjson.loads %.0f entries/s; encode %.2f us/entry (batch 1000)",
                 self.results["parse"]["entries_per_s"], self.results["encode"]["1000"]["writer_us_per_entry"])

    # -- HTTP ------------------------------------------------------------------------------------

    def serve(self, latency: float, settings: dict[str, Any]) -> tuple[http.Server, str]:
        self.proxy.plan.latency = latency
        container = new_container()
        env = http.serve_env(self.storage_url, container, self.key, settings)
        return http.Server("serve", env).start(), container

    def run_http(self) -> None:
        seconds = self.p["http_seconds"]
        out: dict[str, Any] = {"tool": "wrk" if http.WRK else "python-aiohttp (fallback)", "seconds": seconds}
        log.info("HTTP: bare ASGI app, single-entry POSTs (%s, 32 connections)", out["tool"])
        bare = http.Server("bare").start()
        try:
            time.sleep(0.5)
            out["bare"] = http.load(bare.url, self.entries_file, 1, seconds)
            out["bare"]["server_cpu_s"] = round(bare.cpu(), 2)
        finally:
            bare.stop()
        log.info("  bare: %.0f req/s, p99 %.2f ms", out["bare"]["requests_per_s"], out["bare"]["latency_ms"]["p99"])
        for latency in (0.0, STORE_LATENCY):
            out[f"single_{latency}"] = self.http_run(latency, 1, seconds, TUNED)
        out["bulk_1.5"] = self.http_run(STORE_LATENCY, 100, seconds, TUNED, read_back=True)
        self.results["http"] = out

    def http_run(self, latency: float, per: int, seconds: float, settings: dict[str, Any],
                 read_back: bool = False) -> dict[str, Any]:
        server, container = self.serve(latency, settings)
        cpu0 = self.cpu()
        try:
            time.sleep(0.5)
            result = http.load(server.url, self.entries_file, per, seconds)
            result["rss_end"] = server.rss()
            result["server_cpu_s"] = round(server.cpu(), 2)
            values, drained = http.wait_drained(server, self.p["drain"])
            result["drained_s"] = drained
            result["metrics"] = values
        finally:
            code = server.stop()
        cpu1 = self.cpu()
        result.update(latency_s=latency, per_request=per, settings=settings, exit_code=code,
                      proxy_cpu_s=round(cpu1[0] - cpu0[0], 2), azurite_cpu_s=round(cpu1[1] - cpu0[1], 2))
        m = result["metrics"]
        result["accepted_per_s"] = m.get("accepted", 0) / result["seconds"]
        if read_back:
            result["stored"] = http.count_stored(self.azurite.url, container)
        delete_container(self.azurite.url, container)
        log.info("  serve %s @%4.0f ms: %.0f req/s (%.0f entries/s accepted), p99 %.2f ms, written %d of %d",
                 "bulk" if per > 1 else "single", latency * 1000, result["requests_per_s"], result["accepted_per_s"],
                 result["latency_ms"]["p99"], m.get("written", 0), m.get("accepted", 0))
        return result

    def run_outage(self) -> None:
        phases = self.p["outage"]
        total = phases["before"] + phases["down"] + phases["after"]
        log.info("Outage: %ds up, %ds down, %ds up, bulk POSTs throughout", phases["before"], phases["down"],
                 phases["after"])
        server, container = self.serve(STORE_LATENCY, TUNED)
        timeline: list[dict[str, Any]] = []
        stop = threading.Event()
        t0 = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                try:
                    m = http.metrics(server)
                except Exception:
                    m = {}
                timeline.append({"t": round(time.monotonic() - t0, 2), "rss": server.rss(),
                                 "queue_depth": m.get("queue_depth"), "accepted": m.get("accepted"),
                                 "written": m.get("written"), "rejected": m.get("rejected"),
                                 "down": self.proxy.plan.down})
                stop.wait(0.5)

        def toggle() -> None:
            if not stop.wait(phases["before"]):
                self.proxy.plan.down = True
                if not stop.wait(phases["down"]):
                    self.proxy.plan.down = False

        sampler = threading.Thread(target=sample, daemon=True)
        toggler = threading.Thread(target=toggle, daemon=True)
        out: dict[str, Any] = {"phases_s": phases, "settings": TUNED, "latency_s": STORE_LATENCY}
        try:
            sampler.start()
            toggler.start()
            out["load"] = http.load(server.url, self.entries_file, 100, total, connections=8, threads=1, count=True)
            stop.set()
            toggler.join()
            self.proxy.plan.down = False
            values, drained = http.wait_drained(server, self.p["drain"] + 60)
            out["metrics_after_drain"] = values
            out["drained_s"] = drained
            out["rss_end"] = server.rss()
        finally:
            stop.set()
            self.proxy.plan.down = False
            out["exit_code"] = server.stop()
        out["timeline"] = timeline
        out["stored"] = http.count_stored(self.azurite.url, container)
        delete_container(self.azurite.url, container)
        out["rss_peak"] = max((p["rss"] for p in timeline), default=0)
        out["queue_peak"] = max((p["queue_depth"] or 0 for p in timeline), default=0)
        m = out["metrics_after_drain"]
        log.info("  accepted %d, written %d, stored %d; 503s %s; RSS peak %d MiB; queue peak %d",
                 m.get("accepted", 0), m.get("written", 0), out["stored"]["entries"],
                 out["load"].get("status"), out["rss_peak"] >> 20, out["queue_peak"])
        self.results["outage"] = out


def _brief(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k != "timeline"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="short windows (~5 min), the default")
    group.add_argument("--full", action="store_true", help="30-60 s windows, every peer at every latency")
    parser.add_argument("--only", help="comma-separated sections (debugging): baselines,peers,latency,p99,sweep,"
                                       "http,outage; the report is written only for a complete run")
    args = parser.parse_args(argv)
    mode = "full" if args.full else "quick"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)  # the proxy: peers end with requests in flight
    logging.getLogger("azure").setLevel(logging.ERROR)
    sections = ["baselines", "peers", "latency", "p99", "sweep", "http", "outage"]
    only = args.only.split(",") if args.only else sections
    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop Azurite and servers on the way out
    bench = Bench(mode)
    try:
        for section in sections:
            if section not in only:
                continue
            {"baselines": bench.run_baselines, "peers": bench.run_peers, "latency": bench.run_latency_sweep,
             "p99": bench.run_write_p99, "sweep": bench.run_batch_sweep, "http": bench.run_http,
             "outage": bench.run_outage}[section]()
    finally:
        bench.close()
    results = bench.results
    results["duration_s"] = round(time.monotonic() - started, 1)
    from bench import report

    results["targets"] = report.targets(results) if only == sections else []
    path = BENCH / ("results.json" if only == sections else "results-partial.json")
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    log.info("Wrote %s", path.relative_to(ROOT))
    if only == sections:
        report.write(results)
        log.info("Wrote docs/BENCHMARKS.md and docs/bench-*.png in %.0f s", results["duration_s"])
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
