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
    ISOLATION_ROUNDS,
    ISOLATION_SHARE,
    PYTHON,
    ROOT,
    Azurite,
    compile_package,
    connection_string,
    delete_container,
    entry_lines,
    machine,
    new_container,
    padded_lines,
    read_entries,
    sample_dates,
)
from blobwriter.config import Settings

log = logging.getLogger("bench")

DEFAULTS: dict[str, Any] = {}  # blobwriter's own defaults: batch_size 10, max_concurrent_writes 16, ...
# Why these (report.tuned_why says it with the run's figures): appends in flight x 4 MiB per round trip
# must cover 100,000 entries/s (16 cannot at 1.5 s); batch_size 1000 costs the least CPU per entry, and
# CPU is the limit; the queue must hold what is in the system (Little's law: ~100,000 entries/s x ~3 s).
TUNED = {"batch_size": 1000, "max_concurrent_writes": 64, "max_queue_size": 400_000, "max_queue_bytes": 1 << 30}
BULK_HTTP = {"max_concurrent_writes": 32}  # issue 10: the bulk HTTP goal is with 32 appends in flight
OFFERED_RATE = 150_000  # entries/s offered to the LogWriter peers: above what they take on this machine
# ... and to the batch-10 and OTel peers, as before issue 10: far above what they take (more only starves
# OTel's export thread of the GIL and grows the batch-10 queue faster).
OTHERS_RATE = 75_000
SYNC_CALLERS = 64
STORE_LATENCY = 1.5
FLEET_DATE = "2026-11-24"  # a live fleet writes today's date: every writer the same one
PER_BLOB_LIMIT = 500  # requests/s one blob takes before the proxy answers 503 ServerBusy (Azure's target)
FLEET_PROCESSES = 2  # the machine's cores: more writers share these processes, each with its own writer id
MEMORY_ENTRY_BYTES = 20_000  # a chat call with its prompt and response
MEMORY_OVERHEAD = 256 << 20  # the fixed overhead allowed on top of max_queue_bytes (1/8 of a 2 GB instance)
# In-memory Azurite keeps what deleted containers held for a long while; past this it slows down and
# times requests out (seen in full mode, 4.3 GB after the unbounded batch-10 peer), so it is restarted.
AZURITE_RSS_RESTART = int(os.environ.get("BENCH_AZURITE_RESTART_MIB", "1536")) << 20

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "warmup": 10, "measure": 10, "drain": 40,
        "sweep_latencies": [0.0, 0.5], "sweep_peers": ["default", "tuned"],
        "sweep_warmup": 8, "sweep_measure": 4,
        "tuning": {"batch_sizes": [100, 1000], "concurrency": [16, 64], "warmup": 10, "measure": 6},
        "p99_rate": 20_000, "p99_warmup": 8, "p99_measure": 6,
        "http_seconds": 8, "parse_seconds": 1.5, "encode_rounds": 5,
        "outage": {"before": 5, "down": 10, "after": 15},
        "fleet": {"sizes": [1, 2, 4, 8, 16], "latencies": [0.0], "rate": 3000, "warmup": 2, "measure": 4,
                  "stop_timeout": 60},
        "memory_hold": 3,
    },
    "full": {
        "warmup": 15, "measure": 45, "drain": 90,
        "sweep_latencies": [0.0, 0.05, 0.5], "sweep_peers": ["sync", "batch10", "otel", "default", "tuned"],
        "sweep_warmup": 10, "sweep_measure": 20,
        "tuning": {"batch_sizes": [10, 100, 1000], "concurrency": [16, 32, 64, 128], "warmup": 15, "measure": 20},
        "p99_rate": 20_000, "p99_warmup": 10, "p99_measure": 30,
        "http_seconds": 30, "parse_seconds": 5, "encode_rounds": 15,
        "outage": {"before": 10, "down": 60, "after": 60},
        "fleet": {"sizes": [1, 2, 4, 8, 16], "latencies": [0.0, 1.5], "rate": 3000, "warmup": 10, "measure": 20,
                  "stop_timeout": 60},
        "memory_hold": 10,
    },
}

PEERS = {
    "sync": {"kind": "sync", "label": "1. synchronous append per entry", "concurrency": SYNC_CALLERS},
    "batch10": {"kind": "batch10", "label": "2. batch-10, one sequential writer, unbounded queue",
                "rate": OTHERS_RATE, "rss_limit": 2 << 30},
    "otel": {"kind": "otel", "label": "3. OpenTelemetry BatchLogRecordProcessor (defaults)", "rate": OTHERS_RATE},
    "default": {"kind": "logwriter", "label": "4. blobwriter LogWriter, default settings", "rate": OFFERED_RATE,
                "settings": DEFAULTS},
    "tuned": {"kind": "logwriter", "label": "5. blobwriter LogWriter, tuned for high volume", "rate": OFFERED_RATE,
              "settings": TUNED},
}
SECTIONS = ["baselines", "peers", "tuning", "latency", "p99", "http", "drain", "memory", "outage", "fleet"]


def _busy_share(before: tuple[float, float], after: tuple[float, float]) -> float:
    """The share of the machine's CPU time (all cores) that was busy between two Bench.machine_busy()."""
    return (after[0] - before[0]) / max(1e-9, after[1] - before[1])


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
        self.dates = sample_dates()
        self.entries_file = http.body_file(self.lines)
        self.one_entry_file = http.body_file(self.lines[:1])  # the body of every fixed-rate request
        self.results: dict[str, Any] = {"mode": mode, "started": datetime.now(UTC).isoformat(timespec="seconds"),
                                        "machine": machine(), "tuned_settings": TUNED, "bulk_http_settings": BULK_HTTP,
                                        "offered_rate": OFFERED_RATE, "others_rate": OTHERS_RATE,
                                        "dates": self.dates,
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
            self.one_entry_file.unlink(missing_ok=True)

    def keep_azurite_small(self) -> None:
        """Restart Azurite, and point the proxy at the new one, once it holds too much memory."""
        rss = self.azurite.rss()
        if rss > AZURITE_RSS_RESTART:
            log.info("  (restarting Azurite: %d MiB resident)", rss >> 20)
            self.azurite.stop()
            self.azurite = Azurite().start()
            self.proxy.upstream = self.azurite.upstream

    @staticmethod
    def machine_busy() -> tuple[float, float]:
        """The whole machine's CPU time: busy and total seconds, summed over cores."""
        t = psutil.cpu_times()
        return t.user + t.nice + t.system + t.irq + t.softirq + t.steal, sum(t)

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
            extra = {"drain": self.p["drain"]} if name in ("default", "tuned") else {}
            runs.append(self.peer(name, STORE_LATENCY, self.p["warmup"], self.p["measure"], **extra))
        self.results["peers"] = runs

    def run_latency(self) -> None:
        log.info("Throughput against store latency")
        runs = list(self.results.get("peers", []))
        for latency in self.p["sweep_latencies"]:
            for name in self.p["sweep_peers"]:
                runs.append(self.peer(name, latency, self.p["sweep_warmup"], self.p["sweep_measure"],
                                      record_latency=False))
        self.results["latency_sweep"] = [_brief(r) for r in runs]

    def run_p99(self) -> None:
        log.info("write() latency at %d entries/s offered, 0 ms vs %.1f s store latency", self.p["p99_rate"],
                 STORE_LATENCY)
        out = {}
        for latency in (0.0, STORE_LATENCY):
            out[str(latency)] = self.peer("default", latency, self.p["p99_warmup"], self.p["p99_measure"],
                                          rate=self.p["p99_rate"])
        self.results["write_p99"] = {k: _brief(v) for k, v in out.items()}

    def run_tuning(self) -> None:
        """The sweep TUNED was chosen from: batch_size x max_concurrent_writes, with TUNED's queue limits."""
        t = self.p["tuning"]
        log.info("Tuning sweep over batch_size and max_concurrent_writes at %.1f s", STORE_LATENCY)
        queue = {k: v for k, v in TUNED.items() if k.startswith("max_queue")}
        runs = []
        for conc in t["concurrency"]:
            for size in t["batch_sizes"]:
                settings = {"batch_size": size, "max_concurrent_writes": conc, **queue}
                r = self.peer(f"b{size}/c{conc}", STORE_LATENCY, t["warmup"], t["measure"], rate=OFFERED_RATE,
                              settings=settings, record_latency=False)
                runs.append(_brief(r))
        self.results["tuning"] = runs

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
            out[f"single_{latency}"] = self.http_run(latency, 1, seconds, DEFAULTS)
        # Isolation (issue 10) compares p99 at the same offered load: a fixed rate, a share of what the server
        # took at 0 ms, so that neither run saturates (wrk's closed loop offers whatever the server takes).
        # One run's p99 is its ~270 slowest requests, so a hiccup of the shared machine moves it: the pair runs
        # ISOLATION_ROUNDS times, interleaved so that drift hits both stores alike, and each store's latencies are
        # pooled.
        if http.HEY:
            rate = round(ISOLATION_SHARE * out["single_0.0"]["requests_per_s"], -2)
            log.info("HTTP: single-entry POSTs at a fixed %.0f requests/s (hey, 32 workers), %d rounds", rate,
                     ISOLATION_ROUNDS)
            rounds: dict[float, list[dict[str, Any]]] = {0.0: [], STORE_LATENCY: []}
            for _ in range(ISOLATION_ROUNDS):
                for latency in rounds:
                    rounds[latency].append(self.http_run(latency, 1, seconds, DEFAULTS, rate=rate))
            for latency, runs in rounds.items():
                out[f"paced_{latency}"] = http.pooled(runs)
        else:
            log.warning("hey is not installed: isolation is measured at saturation only (offered loads differ)")
        out["bulk_1.5"] = self.http_run(STORE_LATENCY, 100, seconds, BULK_HTTP, read_back=True)
        self.results["http"] = out

    def http_run(self, latency: float, per: int, seconds: float, settings: dict[str, Any],
                 read_back: bool = False, rate: float = 0.0) -> dict[str, Any]:
        """`blobwriter serve` under load: as fast as wrk's connections go, or (rate) at a fixed rate."""
        server, container = self.serve(latency, settings)
        cpu0 = self.cpu()
        try:
            time.sleep(0.5)
            if rate:
                result = http.paced(server.url, self.one_entry_file, rate, seconds)
            else:
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
            result["stored"] = read_entries(self.azurite.url, container, self.key, self.dates)
        delete_container(self.azurite.url, container)
        log.info("  serve %s @%4.0f ms: %.0f req/s (%.0f entries/s accepted), p99 %.2f ms, written %d of %d",
                 "bulk" if per > 1 else "single", latency * 1000, result["requests_per_s"], result["accepted_per_s"],
                 result["latency_ms"]["p99"], m.get("written", 0), m.get("accepted", 0))
        return result

    # -- fleet ---------------------------------------------------------------------------------

    def run_fleet(self) -> None:
        f = self.p["fleet"]
        log.info("Fleet: 1-16 writers on one date, proxy limit %d requests/s per blob, %d entries/s per writer",
                 PER_BLOB_LIMIT, f["rate"])
        runs = []
        self.proxy.plan.per_blob_limit = PER_BLOB_LIMIT
        try:
            for latency in f["latencies"]:
                for naming in ("own", "shared"):
                    for n in f["sizes"]:
                        runs.append(self.fleet_run(n, naming, latency))
        finally:
            self.proxy.plan.per_blob_limit = 0
        self.results["fleet"] = {"runs": runs, "rate_per_writer": f["rate"], "per_blob_limit": PER_BLOB_LIMIT,
                                 "date": FLEET_DATE, "processes": FLEET_PROCESSES, "warmup_s": f["warmup"],
                                 "measure_s": f["measure"]}

    def fleet_run(self, n: int, naming: str, latency: float) -> dict[str, Any]:
        from bench import fleet

        f = self.p["fleet"]
        self.proxy.plan.latency = latency
        container = new_container()
        procs = min(n, FLEET_PROCESSES)
        split = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        start_at = time.time() + 2.5  # every process imported and started its writers by then
        self.proxy.counts.clear()
        self.proxy.per_blob_peak = 0
        cpu0, busy0 = self.cpu(), self.machine_busy()
        started = time.monotonic()
        # The machine's busy share while the writers are measured, from the bench's own clock: the run
        # as a whole also holds the start-up and the drain, when it idles.
        window: dict[str, tuple[float, float]] = {}

        def sample_at(moment: float, name: str) -> None:
            time.sleep(max(0.0, moment - time.time()))
            window[name] = self.machine_busy()

        samplers = [threading.Thread(target=sample_at, args=(start_at + f["warmup"] + offset, name), daemon=True)
                    for offset, name in ((0.0, "start"), (f["measure"], "end"))]
        for sampler in samplers:
            sampler.start()
        children = []
        for i, count in enumerate(split):
            cfg = {"storage": connection_string(self.storage_url), "container": container, "key": self.key,
                   "writers": count, "first_writer": sum(split[:i]), "rate": f["rate"], "date": FLEET_DATE,
                   "layout": naming, "warmup": f["warmup"], "measure": f["measure"], "start_at": start_at,
                   "stop_timeout": f["stop_timeout"]}
            children.append(subprocess.Popen([PYTHON, "-m", "bench.fleet", orjson.dumps(cfg).decode()], cwd=ROOT,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        limit = 2.5 + f["warmup"] + f["measure"] + f["stop_timeout"] + 60
        outputs: list[dict[str, Any] | None] = []
        for child in children:
            try:
                out, err = child.communicate(timeout=max(1.0, limit - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                child.kill()
                out, err = child.communicate()
            line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                log.error("fleet process failed:\n%s", err[-3000:])
                outputs.append(None)
            else:
                outputs.append(orjson.loads(line[7:]))
        cpu1, busy1 = self.cpu(), self.machine_busy()
        run_s = time.monotonic() - started
        for sampler in samplers:
            sampler.join()
        counts, peak = dict(self.proxy.counts), self.proxy.per_blob_peak
        result: dict[str, Any] = {"writers": n, "processes": procs, "naming": naming, "latency_s": latency,
                                  "run_s": round(run_s, 1), "proxy_counts": counts, "per_blob_peak": peak,
                                  "proxy_cpu_s": round(cpu1[0] - cpu0[0], 2),
                                  "azurite_cpu_s": round(cpu1[1] - cpu0[1], 2),
                                  "machine_busy": round(_busy_share(window["start"], window["end"]), 3),
                                  "machine_busy_run": round(_busy_share(busy0, busy1), 3)}
        if any(o is None for o in outputs):
            result["error"] = "a fleet process failed"
            delete_container(self.azurite.url, container)
            return result
        done = [o for o in outputs if o is not None]
        writers = [w for o in done for w in o["writers"]]
        total = {k: sum(w[k] for w in writers) for k in ("accepted", "written", "failed", "frames", "appends",
                                                       "retries", "throttled", "refused", "bytes_stored")}
        # Read everything back: each entry's id says which writer accepted it, and in which order.
        seen = {w["writer"]: bytearray(w["accepted"]) for w in writers}
        tally = {"foreign": 0, "duplicated": 0}

        def each(line: bytes) -> None:
            found = fleet.parse_id(line)
            marks = seen.get(found[0]) if found else None
            if found is None or marks is None or found[1] >= len(marks):
                tally["foreign"] += 1
            elif marks[found[1]]:
                tally["duplicated"] += 1
            else:
                marks[found[1]] = 1

        report = read_entries(self.azurite.url, container, self.key, [FLEET_DATE], each)
        unique = sum(sum(m) for m in seen.values())
        delete_container(self.azurite.url, container)
        self.keep_azurite_small()
        appends_req = counts.get("appends", 0)
        result.update(
            total, written_per_s=sum(o["written_per_s"] for o in done),
            offered_per_s=f["rate"] * n, read_back=report, read_unique=unique,
            lost=total["written"] - unique, duplicated=tally["duplicated"], foreign=tally["foreign"],
            throttled_share=counts.get("throttled_appends", 0) / appends_req if appends_req else 0.0,
            appends_per_million=(total["appends"] + total["retries"]) / total["written"] * 1e6
            if total["written"] else None,
            drained_s=max(o["drained_s"] for o in done), backlog_end=sum(o["backlog_end"] for o in done),
            writers_cpu_s=round(sum(o["cpu_s"] for o in done), 2), rss_end=[o["rss_end"] for o in done],
            window_s=min(o["window_s"] for o in done), wall_s=max(o["wall_s"] for o in done),
            blobs=report["parts"])
        log.info("  %-6s %2d writers @%4.0f ms: %8.0f entries/s written, %5.1f%% of %d appends throttled, "
                 "peak %d req/s on a blob, %d appends+retries per million, lost %d, duplicated %d, failed %d, "
                 "drained in %.1f s", naming, n, latency * 1000, result["written_per_s"],
                 100 * result["throttled_share"], appends_req, peak, result["appends_per_million"] or 0,
                 result["lost"], result["duplicated"], total["failed"], result["drained_s"])
        return result

    def run_drain(self) -> None:
        """A full default queue behind 1.5 s storage, then SIGTERM to `blobwriter serve`: time until it exits."""
        queue = Settings().max_queue_size
        per_body = 5000  # ~8 MB of NDJSON: under max_body_bytes (10 MiB)
        log.info("Drain: %d entries posted to blobwriter serve (defaults) at %.1f s, then SIGTERM", queue,
                 STORE_LATENCY)
        bodies = [b"\n".join(self.lines[(i * per_body) % len(self.lines):][:per_body]) + b"\n"
                  for i in range(queue // per_body)]
        server, container = self.serve(STORE_LATENCY, DEFAULTS)
        out: dict[str, Any] = {"settings": DEFAULTS, "latency_s": STORE_LATENCY, "entries": queue,
                               "stop_timeout_s": Settings().stop_timeout}
        try:
            time.sleep(0.5)
            out["post"] = http.post_bodies(server.url, bodies, connections=4)
            out["metrics_at_sigterm"] = http.metrics(server)
            assert server.process is not None
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            try:
                server.process.wait(out["stop_timeout_s"] + 60)
            except subprocess.TimeoutExpired:
                pass
            out["exit_s"] = round(time.monotonic() - started, 2) if server.process.poll() is not None else None
        finally:
            out["exit_code"] = server.stop()
        out["server_log"] = [x for x in server.output().splitlines() if "NOT written" in x or "ERROR" in x][-5:]
        out["stored"] = read_entries(self.azurite.url, container, self.key, self.dates)
        delete_container(self.azurite.url, container)
        m = out["metrics_at_sigterm"]
        log.info("  queue at SIGTERM %d entries (%d written); exited in %s s with code %s; read back %d of %d",
                 m.get("queue_depth", 0), m.get("written", 0), out["exit_s"], out["exit_code"],
                 out["stored"]["entries"], m.get("accepted", 0))
        self.results["drain"] = out

    def run_memory(self) -> None:
        """RSS of `blobwriter serve` (defaults) with its queue full of ~20 KB entries, storage down meanwhile."""
        budget = Settings().max_queue_bytes
        lines = padded_lines(self.lines, MEMORY_ENTRY_BYTES, 2000)
        per_body = 50
        bodies = [b"\n".join(lines[i:i + per_body]) + b"\n" for i in range(0, len(lines), per_body)]
        log.info("Memory: ~%d KB entries into blobwriter serve (defaults) with storage down, until 503",
                 MEMORY_ENTRY_BYTES // 1000)
        self.proxy.plan.down = True
        server, container = self.serve(0.0, DEFAULTS)
        out: dict[str, Any] = {"settings": DEFAULTS, "max_queue_bytes": budget, "overhead_allowed": MEMORY_OVERHEAD,
                               "entry_bytes_mean": sum(map(len, lines)) / len(lines)}
        sampler = http.Sampler(server, 0.2)
        try:
            time.sleep(1.0)
            out["rss_idle"] = server.rss()
            sampler.start()
            out["post"] = http.post_bodies(server.url, bodies, connections=4, until_full=True)
            time.sleep(self.p["memory_hold"])
            full = http.metrics(server)
            out["rss_full"], out["queue_bytes_full"], out["queue_depth_full"] = (
                server.rss(), full.get("queue_bytes", 0), full.get("queue_depth", 0))
            self.proxy.plan.down = False
            values, drained = http.wait_drained(server, self.p["drain"] + 60)
            out["metrics_after_drain"], out["drained_s"] = values, drained
        finally:
            sampler.stop()
            self.proxy.plan.down = False
            out["exit_code"] = server.stop()
        timeline = out["timeline"] = sampler.timeline
        out["rss_peak"] = max((p["rss"] for p in timeline), default=0)
        out["queue_bytes_peak"] = max((p["queue_bytes"] or 0 for p in timeline), default=0)
        out["overhead_full"] = out["rss_full"] - out["queue_bytes_full"]
        out["stored"] = read_entries(self.azurite.url, container, self.key, self.dates)
        delete_container(self.azurite.url, container)
        log.info("  idle RSS %d MiB; queue full at %d MiB (%d entries): RSS %d MiB, peak %d MiB; budget %d MiB; "
                 "written %d, read back %d", out["rss_idle"] >> 20, out["queue_bytes_full"] / 2**20,
                 out["queue_depth_full"], out["rss_full"] >> 20, out["rss_peak"] >> 20, budget >> 20,
                 out["metrics_after_drain"].get("written", 0), out["stored"]["entries"])
        self.results["memory"] = out

    def run_outage(self) -> None:
        phases = self.p["outage"]
        total = phases["before"] + phases["down"] + phases["after"]
        log.info("Outage: %ds up, %ds down, %ds up, bulk POSTs throughout", phases["before"], phases["down"],
                 phases["after"])
        server, container = self.serve(STORE_LATENCY, DEFAULTS)
        sampler = http.Sampler(server, 0.5, extra=lambda: {"down": self.proxy.plan.down})
        stop = threading.Event()

        def toggle() -> None:
            if not stop.wait(phases["before"]):
                self.proxy.plan.down = True
                if not stop.wait(phases["down"]):
                    self.proxy.plan.down = False

        toggler = threading.Thread(target=toggle, daemon=True)
        out: dict[str, Any] = {"phases_s": phases, "settings": DEFAULTS, "latency_s": STORE_LATENCY,
                               "max_queue_size": Settings().max_queue_size,
                               "max_queue_bytes": Settings().max_queue_bytes}
        try:
            sampler.start()
            toggler.start()
            out["load"] = http.load(server.url, self.entries_file, 100, total, connections=8, threads=1, count=True)
            stop.set()
            sampler.stop()
            toggler.join()
            self.proxy.plan.down = False
            values, drained = http.wait_drained(server, self.p["drain"] + 60)
            out["metrics_after_drain"] = values
            out["drained_s"] = drained
            out["rss_end"] = server.rss()
        finally:
            stop.set()
            sampler.stop()
            self.proxy.plan.down = False
            out["exit_code"] = server.stop()
        timeline = out["timeline"] = sampler.timeline
        out["stored"] = read_entries(self.azurite.url, container, self.key, self.dates)
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
    group.add_argument("--quick", action="store_true", help="short windows (~10 min), the default")
    group.add_argument("--full", action="store_true", help="30-60 s windows, every peer at every latency")
    parser.add_argument("--only", help="comma-separated sections (debugging): " + ",".join(SECTIONS)
                        + "; the report is written only for a complete run")
    parser.add_argument("--render", action="store_true",
                        help="only write docs/BENCHMARKS.md and the plots again from bench/results.json")
    args = parser.parse_args(argv)
    if args.render:
        from bench import report

        results = orjson.loads((BENCH / "results.json").read_bytes())
        if results.get("targets"):  # a complete run: its goals judged again, as this report.py words them
            results["targets"] = report.targets(results)
            (BENCH / "results.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
        report.write(results)
        return 0
    mode = "full" if args.full else "quick"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)  # the proxy: peers end with requests in flight
    logging.getLogger("azure").setLevel(logging.ERROR)
    sections = SECTIONS
    only = args.only.split(",") if args.only else sections
    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop Azurite and servers on the way out
    compile_package()
    bench = Bench(mode)
    try:
        for section in sections:
            if section not in only:
                continue
            getattr(bench, f"run_{section}")()
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
