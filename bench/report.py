"""docs/BENCHMARKS.md and docs/bench-*.png from the results of one run (bench/results.json)."""

from __future__ import annotations

from typing import Any

from bench.env import ISOLATION_SHARE, ROOT

APPEND_BYTES = 4 * 1024 * 1024  # Azure's Append Block limit, max_append_bytes' default

DOCS = ROOT / "docs"
# records/s: Fluent Bit azure_blob against Azurite behind a 1.5 s proxy (a reference, not re-measured)
FLUENT_BIT = 17_000
FLEET_THROTTLED_GOAL = 0.05  # "a small share" of append requests answered 503, with blobs of their own
FLEET_CPU_BOUND = 0.9  # the machine's CPU is the limit when it was this busy (all processes, both cores)
FLEET_KEEPS_UP = 0.9  # a fleet keeps up when it writes this share of what it is offered
DRAIN_GOAL_SHARE = 0.5  # "well inside stop_timeout": half of it


def _peer(results: dict[str, Any], name: str) -> dict[str, Any]:
    return next((p for p in results.get("peers", []) if p.get("name") == name), {})


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def cost(run: dict[str, Any]) -> float | None:
    """Append Block calls (succeeded and failed: each one is billed) per million entries written."""
    written = run.get("written_total") or run.get("written")
    if not written:
        return None
    return (run.get("appends", 0) + run.get("retries", 0)) / written * 1e6


def _drops(run: dict[str, Any]) -> tuple[bool, str]:
    """Zero drops: nothing lost during the run, and everything accepted written once drained."""
    d = run.get("after_drain", {})
    ok = run.get("dropped", 1) == 0 and bool(d) and d.get("written") == d.get("accepted") and not d.get("failed")
    return ok, (f"{run.get('dropped', 0)} dropped; after the drain written {d.get('written', 0):,} of "
                f"{d.get('accepted', 0):,} accepted, {d.get('failed', 0)} failed")


def fleet_runs(r: dict[str, Any], naming: str, latency: float | None = None) -> list[dict[str, Any]]:
    runs = [x for x in r.get("fleet", {}).get("runs", []) if x.get("naming") == naming and "error" not in x
            and (latency is None or x.get("latency_s") == latency)]
    return sorted(runs, key=lambda x: (x["latency_s"], x["writers"]))


def fleet_scales(run: dict[str, Any]) -> bool:
    """Throughput keeps up with what the writers are offered, unless the machine's CPU is the limit."""
    return run["written_per_s"] >= FLEET_KEEPS_UP * run["offered_per_s"] or run["machine_busy"] >= FLEET_CPU_BOUND


def fleet_clean(run: dict[str, Any]) -> bool:
    rb = run.get("read_back", {})
    return (run.get("lost") == 0 and run.get("duplicated") == 0 and run.get("foreign") == 0
            and not rb.get("problem_count") and run.get("failed", 1) == 0)


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target: what was asked, what was measured, met or not (None: a reference without a goal)."""
    out: list[dict[str, Any]] = []

    def add(name: str, goal: str, measured: str, met: bool | None) -> None:
        out.append({"target": name, "goal": goal, "measured": measured, "met": met})

    lat = r["store_latency_s"]
    default, tuned, otel, b10 = _peer(r, "default"), _peer(r, "tuned"), _peer(r, "otel"), _peer(r, "batch10")
    for run, name, goal in ((default, "defaults", 50_000), (tuned, "tuned", 100_000)):
        if not run or "error" in run:
            continue
        clean, text = _drops(run)
        rate = run.get("written_per_s", 0.0)
        add(f"LogWriter {name}, in-process @{lat} s", f">= {goal:,} entries/s written, zero drops",
            f"{rate:,.0f} entries/s; {text}", rate >= goal and clean)
    if default and "error" not in default:
        c = cost(default)
        add(f"cost: LogWriter defaults under load @{lat} s", "<= 500 Append Block calls per million entries written",
            f"{c:,.0f} per million ({default.get('appends', 0):,} appends + {default.get('retries', 0):,} failed, "
            f"{default.get('written_total', 0):,} entries)" if c is not None else "n/a",
            c is not None and c <= 500)
    h = r.get("http", {})
    bulk = h.get("bulk_1.5", {})
    if bulk:
        m, stored = bulk.get("metrics", {}), bulk.get("stored", {})
        ok = (bulk.get("accepted_per_s", 0) >= 50_000 and m.get("written") == m.get("accepted") == stored.get("entries")
              and not stored.get("problem_count") and not m.get("failed"))
        add(f"bulk HTTP (NDJSON x100) @{lat} s, max_concurrent_writes 32",
            ">= 50,000 entries/s accepted, every one written and read back",
            f"{bulk.get('accepted_per_s', 0):,.0f} entries/s; accepted {m.get('accepted', 0):,.0f}, written "
            f"{m.get('written', 0):,.0f}, read back {stored.get('entries', 0):,} ({stored.get('problem_count', 0)} "
            "problems)", ok)
    own, shared = fleet_runs(r, "own", 0.0), fleet_runs(r, "shared", 0.0)
    if own:
        worst = max(x["throttled_share"] for x in own)
        ok = all(fleet_scales(x) and fleet_clean(x) for x in own) and worst <= FLEET_THROTTLED_GOAL
        add(f"fleet, blobs of their own, 0 ms, {r['fleet']['per_blob_limit']} requests/s per blob",
            "throughput grows with writers until the CPU is the limit; <= 5% of append requests throttled; "
            "0 lost, 0 duplicated",
            "; ".join(f"{x['writers']}: {x['written_per_s']:,.0f}/s" for x in own)
            + f" entries/s written (offered {r['fleet']['rate_per_writer']:,}/s per writer; machine CPU busy "
            f"{max(x['machine_busy'] for x in own):.0%} at most); throttled {worst:.1%} at most; lost "
            f"{sum(x['lost'] for x in own)}, duplicated {sum(x['duplicated'] for x in own)}, failed "
            f"{sum(x['failed'] for x in own)}", ok)
    if shared:
        add("fleet baseline, version 0.1's one shared blob, 0 ms", "(reference: no goal)",
            "; ".join(f"{x['writers']}: {x['written_per_s']:,.0f}/s" for x in shared)
            + f" entries/s written; throttled {max(x['throttled_share'] for x in shared):.1%} at most, per-blob "
            f"peak {max(x['per_blob_peak'] for x in shared)} requests/s; lost {sum(x['lost'] for x in shared)}, "
            f"duplicated {sum(x['duplicated'] for x in shared)}", None)
    d = r.get("drain")
    if d:
        m = d.get("metrics_at_sigterm", {})
        goal_s = DRAIN_GOAL_SHARE * d["stop_timeout_s"]
        ok = (d.get("exit_s") is not None and d["exit_s"] <= goal_s and d["stored"]["entries"] == m.get("accepted")
              and not d["stored"].get("problem_count") and not d.get("server_log"))
        add(f"drain: SIGTERM to blobwriter serve (defaults) with a full queue @{d['latency_s']} s",
            f"exits well inside stop_timeout ({d['stop_timeout_s']:.0f} s; goal <= {goal_s:.0f} s), all read back",
            f"{m.get('queue_depth', 0):,.0f} entries queued at SIGTERM; exited after {d.get('exit_s')} s; read back "
            f"{d['stored']['entries']:,} of {m.get('accepted', 0):,.0f} accepted", ok)
    single0, single15 = h.get("single_0.0", {}), h.get(f"single_{lat}", {})
    paced0, paced15 = h.get("paced_0.0", {}), h.get(f"paced_{lat}", {})
    saturated = ""
    if single0 and single15:
        a, b = single0["latency_ms"]["p99"], single15["latency_ms"]["p99"]
        saturated = (f"{b / a:.2f}x at saturation ({b:.1f} vs {a:.1f} ms; wrk's closed loop, where the offered loads "
                     f"differ: {_n(single15['requests_per_s'])} vs {_n(single0['requests_per_s'])} requests/s)")
    if paced0 and paced15:
        a, b = paced0["latency_ms"]["p99"], paced15["latency_ms"]["p99"]
        rounds = ""
        if len(paced0.get("runs", ())) > 1:
            pairs = zip(paced0["runs"], paced15["runs"], strict=True)
            rounds = (f"; {len(paced0['runs'])} interleaved runs each, latencies pooled; the pairs' own ratios "
                      + ", ".join(f"{y['latency_ms']['p99'] / x['latency_ms']['p99']:.2f}x" for x, y in pairs))
        add(f"isolation: POST /api/logs p99 at the same offered load ({_n(paced0['rate_offered'])} requests/s, a "
            f"fixed rate), {lat} s vs 0 ms store", "<= 1.2x",
            f"{b / a:.3f}x ({b:.1f} vs {a:.1f} ms; {_n(paced15['requests_per_s'])} and "
            f"{_n(paced0['requests_per_s'])} requests/s answered{rounds})"
            + (f"; for reference, {saturated}" if saturated else ""),
            b / a <= 1.2)
    elif saturated:  # hey was not installed: no run at a fixed rate, and so no equal offered load
        add(f"isolation: POST /api/logs p99, {lat} s vs 0 ms store (hey not installed: measured at saturation only)",
            "<= 1.2x at the same offered load", saturated, None)
    mem = r.get("memory")
    if mem:
        limit = mem["max_queue_bytes"] + mem["overhead_allowed"]
        add(f"memory: queue full of ~{mem['entry_bytes_mean'] / 1000:.0f} KB entries (blobwriter serve, defaults)",
            f"RSS <= max_queue_bytes ({mem['max_queue_bytes'] >> 20} MiB) + a fixed overhead of "
            f"{mem['overhead_allowed'] >> 20} MiB",
            f"RSS {mem['rss_full'] >> 20} MiB with {mem['queue_bytes_full'] / 2**20:,.0f} MiB queued (overhead "
            f"{mem['overhead_full'] / 2**20:,.0f} MiB; idle server {mem['rss_idle'] >> 20} MiB); peak "
            f"{mem['rss_peak'] >> 20} MiB; read back {mem['stored']['entries']:,} of "
            f"{mem['metrics_after_drain'].get('accepted', 0):,.0f}",
            mem["rss_peak"] <= limit and mem["stored"]["entries"] == mem["metrics_after_drain"].get("accepted"))
    bare = h.get("bare", {})
    if bare and single0:
        share = single0["requests_per_s"] / bare["requests_per_s"]
        p99x = single0["latency_ms"]["p99"] / bare["latency_ms"]["p99"]
        add("single-entry HTTP vs bare ASGI app", ">= 80% of its requests/s, p99 <= 2x",
            f"{share:.0%} ({single0['requests_per_s']:,.0f} vs {bare['requests_per_s']:,.0f} req/s), "
            f"p99 {p99x:.2f}x ({single0['latency_ms']['p99']:.1f} vs {bare['latency_ms']['p99']:.1f} ms)",
            share >= 0.8 and p99x <= 2.0)
    wp = r.get("write_p99", {})
    if wp and all("call_latency" in v for v in wp.values()):
        a = wp["0.0"]["call_latency"]["p99"]
        b = wp[str(lat)]["call_latency"]["p99"]
        add(f"LogWriter.write() p99 (defaults), {lat} s vs 0 ms store", "<= 1.2x",
            f"{b / a:.2f}x ({b * 1e6:.1f} vs {a * 1e6:.1f} us)", b / a <= 1.2)
    enc = r.get("encode", {}).get("1000", {})
    if enc:
        lvl6 = enc["bare"]["stdlib gzip level 6"]
        isal = enc["bare"].get("isal igzip level 1 (the codec's own)")
        text = f"{lvl6['writer_ratio']:.2f}x of stdlib gzip level 6"
        if isal:
            text += f"; {isal['writer_ratio']:.2f}x of the same isal level 1 without the writer's framing"
        add("encode CPU per entry vs bare dumps+gzip+AES-GCM", "<= 1.3x", text, lvl6["writer_ratio"] <= 1.3)
    o = r.get("outage", {})
    if o:
        m = o.get("metrics_after_drain", {})
        st = o.get("load", {}).get("status", {})
        stored = o.get("stored", {})
        ok = (m.get("written") == m.get("accepted") == stored.get("entries") and not stored.get("problem_count")
              and st.get("503", 0) > 0 and st.get("503") == st.get("503_with_retry_after")
              and o.get("queue_peak", 0) <= o["max_queue_size"])
        add(f"{o['phases_s']['down']} s storage outage under load (defaults)",
            "memory bounded by the queue limits, 503 + Retry-After when full, every accepted entry written",
            f"queue peak {o.get('queue_peak', 0):,.0f} entries (max {o['max_queue_size']:,}), RSS peak "
            f"{o.get('rss_peak', 0) >> 20} MiB; {st.get('503', 0):,} 503s, {st.get('503_with_retry_after', 0):,} with "
            f"Retry-After; accepted {m.get('accepted', 0):,.0f}, written {m.get('written', 0):,.0f}, read back "
            f"{stored.get('entries', 0):,}", ok)
    t_rate = tuned.get("written_per_s", 0.0)
    x_otel = _ratio(t_rate, otel.get("written_per_s", 0.0))
    add("tuned vs OTel BatchLogRecordProcessor", ">= 150x", f"{x_otel:,.0f}x" if x_otel else "n/a",
        bool(x_otel and x_otel >= 150))
    x_b10 = _ratio(t_rate, b10.get("written_per_s", 0.0))
    add("tuned vs batch-10 design", ">= 8,000x", f"{x_b10:,.0f}x" if x_b10 else "n/a", bool(x_b10 and x_b10 >= 8000))
    return out


# -- plots ----------------------------------------------------------------------------------------


def plots(r: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    labels = {"sync": "1. sync append per entry", "batch10": "2. batch-10, sequential",
              "otel": "3. OTel BatchLogRecordProcessor",
              "default": "4. LogWriter defaults", "tuned": "5. LogWriter tuned"}
    for name, label in labels.items():
        points = sorted((p["latency_s"], p["written_per_s"]) for p in r.get("latency_sweep", [])
                        if p.get("name") == name and "written_per_s" in p)
        if points:
            ax1.plot([x * 1000 for x, _ in points], [max(y, 0.1) for _, y in points], marker="o", label=label)
    ax1.axhline(FLUENT_BIT, color="grey", linestyle=":", label="Fluent Bit reference @1.5 s (not re-measured)")
    ax1.set_xscale("symlog", linthresh=50)
    ax1.set_xlim(left=0)
    ax1.set_yscale("log")
    ax1.set_xlabel("added store latency per request (ms)")
    ax1.set_ylabel("entries written per second")
    ax1.set_title("Throughput against store latency (in-process)")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    sweep = [p for p in r.get("tuning", []) if "written_per_s" in p]
    for conc in sorted({p["settings"]["max_concurrent_writes"] for p in sweep}):
        points = sorted((p["settings"]["batch_size"], p["written_per_s"]) for p in sweep
                        if p["settings"]["max_concurrent_writes"] == conc)
        ax2.plot([x for x, _ in points], [max(y, 0.1) for _, y in points], marker="o",
                 label=f"max_concurrent_writes={conc}")
    default = _peer(r, "default")
    if default.get("written_per_s"):
        ax2.plot([10], [default["written_per_s"]], marker="*", markersize=14, linestyle="none", color="black",
                 label="defaults (batch_size 10, 16 in flight, 100,000 queue)")
    ax2.set_xscale("log")
    ax2.set_ylim(bottom=0)
    ax2.set_xlabel("batch_size")
    ax2.set_ylabel("entries written per second")
    ax2.set_title(f"LogWriter at {r['store_latency_s']} s store latency: tuning sweep")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(DOCS / "bench-throughput.png", dpi=110)
    plt.close(fig)
    written.append("docs/bench-throughput.png")

    fleet = r.get("fleet", {}).get("runs", [])
    if fleet:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
        for latency in sorted({x["latency_s"] for x in fleet}):
            for naming, style in (("own", "-"), ("shared", "--")):
                runs = fleet_runs(r, naming, latency)
                if not runs:
                    continue
                name = "blobs of their own" if naming == "own" else "one shared blob (0.1)"
                label = f"{name}, {latency * 1000:.0f} ms"
                n = [x["writers"] for x in runs]
                ax1.plot(n, [x["written_per_s"] for x in runs], marker="o", linestyle=style, label=label)
                ax2.plot(n, [100 * x["throttled_share"] for x in runs], marker="o", linestyle=style, label=label)
        sizes = sorted({x["writers"] for x in fleet})
        ax1.plot(sizes, [s * r["fleet"]["rate_per_writer"] for s in sizes], color="grey", linestyle=":",
                 label="offered")
        ax1.set_xscale("log", base=2)
        ax1.set_xlabel("writers")
        ax1.set_ylabel("entries written per second")
        ax1.set_title(f"Fleet on one date, {r['fleet']['per_blob_limit']} requests/s per blob")
        ax2.set_xscale("log", base=2)
        ax2.set_xlabel("writers")
        ax2.set_ylabel("% of append requests answered 503 ServerBusy")
        ax2.set_title("Throttled share of append requests")
        for ax in (ax1, ax2):
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(DOCS / "bench-fleet.png", dpi=110)
        plt.close(fig)
        written.append("docs/bench-fleet.png")

    o = r.get("outage")
    if o and o.get("timeline"):
        tl = o["timeline"]
        fig, ax = plt.subplots(figsize=(10, 4.5))
        t = [p["t"] for p in tl]
        ax.plot(t, [(p["queue_depth"] or 0) for p in tl], label="queue depth (entries)")
        ax.plot(t, [(p["written"] or 0) for p in tl], label="written (entries)")
        ax.axhline(o["max_queue_size"], color="red", linestyle=":", label="max_queue_size")
        down = [p["t"] for p in tl if p["down"]]
        if down:
            ax.axvspan(min(down), max(down), color="grey", alpha=0.2, label="storage down")
        ax.set_xlabel("seconds")
        ax.set_ylabel("entries")
        ax2b = ax.twinx()
        ax2b.plot(t, [p["rss"] / 2**20 for p in tl], color="black", linestyle="--", label="server RSS (MiB)")
        ax2b.set_ylabel("RSS (MiB)")
        lines = ax.get_legend_handles_labels()
        lines2 = ax2b.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper left")
        ax.set_title(f"{o['phases_s']['down']} s storage outage under bulk load (blobwriter serve, defaults)")
        fig.tight_layout()
        fig.savefig(DOCS / "bench-outage.png", dpi=110)
        plt.close(fig)
        written.append("docs/bench-outage.png")
    return written


# -- markdown -------------------------------------------------------------------------------------


def _n(x: Any, digits: int = 0) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return f"{x:,}"


def _mib(x: Any) -> str:
    return "–" if not x else f"{x / 2**20:,.0f}"


def _settings(s: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in s.items()) or "the defaults"


def write(r: dict[str, Any]) -> None:
    DOCS.mkdir(exist_ok=True)
    images = plots(r)
    p = r["profile"]
    lines: list[str] = []
    add = lines.append
    quick = r["mode"] == "quick"
    add("# Benchmarks")
    add("")
    add(f"Generated by `make bench{'' if quick else '-full'}` (`python -m bench --{r['mode']}`) on {r['started']}; "
        f"every figure below is in `bench/results.json`. The run took {r['duration_s'] / 60:.1f} minutes. "
        "Nothing here is edited by hand: re-run to refresh.")
    add("")
    if quick:
        add(f"**Quick mode**: measurement windows of {p['measure']} s after {p['warmup']} s of warm-up "
            f"(sweeps {p['sweep_measure']}-{p['tuning']['measure']} s, fleet {p['fleet']['measure']} s), a "
            f"{p['outage']['down']} s outage, {p['http_seconds']} s HTTP runs. `make bench-full` uses 45 s windows, "
            "a 60 s outage, every peer at every latency and the fleet at 1.5 s too. Short windows make the "
            "figures coarse: at 1.5 s an append of several MB lands every few hundred ms, so a window's count "
            "moves in steps.")
        add("")
    add("## Headline")
    add("")
    for t in r.get("targets", []):
        mark = "reference" if t["met"] is None else "met" if t["met"] else "**missed**"
        add(f"- {t['target']}: goal {t['goal']} — measured {t['measured']} — {mark}")
    add(f"- Reference, not re-measured: Fluent Bit's azure_blob output ~{FLUENT_BIT:,} records/s against Azurite "
        "behind a 1.5 s proxy, without compression or encryption.")
    add("")
    for image in images:
        add(f"![{image}]({image.removeprefix('docs/')})")
        add("")
    _machine(r, add)
    _peers(r, add)
    _tuning(r, add)
    _latency(r, add)
    _fleet(r, add)
    _drain(r, add)
    _memory(r, add)
    _http(r, add)
    _outage(r, add)
    _encode(r, add)
    add("## What this benchmark measures since issue 10, and what it dropped")
    add("")
    for change in BENCH_CHANGES:
        add(f"- {change}")
    add("")
    add("## Changes made to blobwriter while benchmarking (issue 10, second round)")
    add("")
    add(ROUND_TWO_HOW)
    add("")
    for change in ROUND_TWO:
        add(f"- {change}")
    add("")
    add("## Changes made to blobwriter while benchmarking (before issue 10)")
    add("")
    for change in CHANGES:
        add(f"- {change}")
    add("")
    (DOCS / "BENCHMARKS.md").write_text("\n".join(lines))


def _machine(r: dict[str, Any], add: Any) -> None:
    mach = r["machine"]
    add("## The machine")
    add("")
    add(f"- {mach.get('cpu_model', '?')}, {mach.get('cpus')} CPUs ({mach.get('cpu_affinity')} usable), "
        f"{mach.get('memory_gib')} GiB; {mach.get('platform')}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in mach.get('loadavg_at_start') or ())}")
    add("- Shared and noisy: each figure is one run, not a best-of, and other developers' test suites run on "
        "the same 2 cores at the same time. Everything of the bench runs on this machine at once: Azurite "
        "(node), the latency proxy (Python, aiohttp, a thread of the bench process), the process under test "
        "and the load generator.")
    add(f"- Python {mach.get('python')}, node {mach.get('node')}, Azurite {mach.get('azurite')}, "
        f"load generator: {r['load_generator']} ({mach.get('wrk_version') or 'wrk not installed'})"
        + ("; fixed-rate runs: hey" if r.get("http", {}).get("paced_0.0") else ""))
    pk = mach.get("packages", {})
    add("- " + ", ".join(f"{k} {v}" for k, v in pk.items() if v))
    add("")
    add("## How to reproduce")
    add("")
    add("```sh")
    add("make bench        # quick: ~10 minutes")
    add("make bench-full   # full: 20-60 s windows, every peer at every latency, the fleet at 0 ms and 1.5 s (~40 min)")
    add("```")
    add("")
    add("Both install `requirements-bench.txt` into `.venv` and, as root, `wrk` and `hey` via apt-get if they "
        "are missing (without wrk a Python aiohttp load generator is used, which caps lower; without hey the "
        "fixed-rate isolation runs are left out; the report says which). "
        "The bench starts its own in-memory Azurite (`node_modules/.bin/azurite-blob`) on a free port and the "
        "storage proxy of `tests/support/proxy.py` in front of it; the proxy holds every storage request for "
        "the store latency, then forwards it, so the real azure SDK and HTTP path are measured. Every peer "
        "runs in a fresh process (its RSS is its own) and writes real, encrypted frames to real append blobs. "
        "The entries are `bench/data/api-calls.jsonl.gz`: 20,000 realistic API-call log entries, "
        f"{r['parse']['mean_entry_bytes']:,.0f} bytes of JSON each on average, on "
        f"{len(r.get('dates', [])) or 'several'} UTC dates (so an in-process writer appends to that many blobs).")
    add("")
    add("## Baselines on this machine (same run)")
    add("")
    bare = r.get("http", {}).get("bare", {})
    add("| baseline | figure |")
    add("|---|---|")
    add(f"| `orjson.loads` of the entries, one core | {_n(r['parse']['entries_per_s'])} entries/s "
        f"({r['parse']['us_per_entry']:.2f} us each) |")
    if bare:
        add(f"| bare uvicorn ASGI app (reads the body, answers 202), uvloop + httptools, single-entry POSTs, "
            f"{bare['tool']} {bare['threads']} threads / {bare['connections']} connections | "
            f"{_n(bare['requests_per_s'])} requests/s, p50 {bare['latency_ms']['p50']:.2f} ms, "
            f"p99 {bare['latency_ms']['p99']:.2f} ms |")
    add(f"| Fluent Bit azure_blob, Azurite behind a 1.5 s proxy (quoted reference, not measured here) | "
        f"~{FLUENT_BIT:,} records/s |")
    add("")


def _peers(r: dict[str, Any], add: Any) -> None:
    p = r["profile"]
    add(f"## Side by side at {r['store_latency_s']} s store latency (in-process)")
    add("")
    add(f"Offered load: {r['offered_rate']:,} entries/s to the LogWriter peers (4, 5) and {r['others_rate']:,} to "
        "peers 2 and 3 (as before issue 10: far above what they take; more only starves OTel's export thread "
        "of the GIL), from the event loop of the process under test (the generator cannot always reach it, "
        f"the 'offered' column says what it did), {r['sync_callers']} "
        "concurrent callers for the synchronous peer. A caller refused by back-pressure (QueueFullError) "
        "keeps its entry and offers it again 5 ms later: 'refused' counts those refusals, not lost entries. "
        "'Dropped' counts entries accepted and then lost. Throughput is entries written (appended and "
        f"acknowledged) per second over the {p['measure']} s window after {p['warmup']} s of warm-up (at 1.5 s "
        "a writer's first append to a new blob takes three round trips, 4.5 s: not found, create, append). "
        "'Appends per million' is what Azure bills: Append Block calls, failed ones included, per million "
        "entries written. 'CPU us/entry' is the process's CPU time (writer and its load generator) per entry "
        "written.")
    add("")
    add("| peer | written/s | offered | dropped | refused | backlog at end | RSS peak (MiB) | append calls | frames "
        "| appends per million | CPU us/entry | CPU s (process) |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for peer in r.get("peers", []):
        if "error" in peer:
            add(f"| {peer.get('label')} | failed: {peer['error'][:80]} |")
            continue
        note = f" ({peer['stopped_early']})" if peer.get("stopped_early") else ""
        per_entry = peer["cpu_s"] / peer["written_total"] * 1e6 if peer.get("written_total") else None
        add(f"| {peer['label']}{note} | **{_n(peer['written_per_s'], 1)}** | {_n(peer['offered'])} | "
            f"{_n(peer['dropped'])} | {_n(peer['refused'])} | {_n(peer['backlog_end'])} | {_mib(peer['rss_peak'])} | "
            f"{_n(peer['appends'] + peer.get('retries', 0))} | {_n(peer.get('frames'))} | {_n(cost(peer))} | "
            f"{_n(per_entry, 1)} | {_n(peer.get('cpu_s'), 1)} |")
    add("")
    for name in ("default", "tuned"):
        peer = _peer(r, name)
        if peer.get("after_drain"):
            d = peer["after_drain"]
            add(f"After the window the {name} writer drained in {peer.get('drained_s')} s: accepted "
                f"{d['accepted']:,}, written {d['written']:,}, failed {d['failed']:,}.")
    otel = _peer(r, "otel")
    if otel:
        add(f"The OTel processor exported {otel.get('written_total', 0):,} records and dropped "
            f"{otel.get('dropped', 0):,} of {otel.get('emitted', 0):,} emitted: one export thread, batches of 512, "
            "each export waits for its append. Its drop warnings were silenced (each drop logs one).")
    add("")
    default, tuned = _peer(r, "default"), _peer(r, "tuned")
    if default.get("wall_s") and tuned.get("wall_s"):
        add("**What limits the LogWriter here: CPU, then the queue.** A writer no longer waits for appends: "
            "each append carries every frame ready for its blob (up to 4 MiB), so the appends in flight "
            f"cover the latency. In the defaults run an append took {default.get('append_mean_s', 0):.2f} s on "
            f"average and carried {_per_append(default)} entries; in the tuned run "
            f"{tuned.get('append_mean_s', 0):.2f} s and {_per_append(tuned)}. The process under test (writer, "
            f"encoding threads and its load generator) used {default['cpu_s'] / default['wall_s']:.0%} (defaults) and "
            f"{tuned['cpu_s'] / tuned['wall_s']:.0%} (tuned) of one core, and Azurite "
            f"{default.get('azurite_cpu_s', 0):.1f} / {tuned.get('azurite_cpu_s', 0):.1f} CPU s over the "
            f"{default.get('run_s', 0):.0f} / {tuned.get('run_s', 0):.0f} s runs, on 2 cores shared with the "
            "proxy and other developers' tests. Most of Azurite's share is its own: Azurite 3.37 computes a CRC-64 "
            "of every appended block, byte by byte in JavaScript, for the x-ms-content-crc64 it answers (about 60% "
            "of its samples in a `perf` profile of a defaults run, node --perf-basic-prof); Azure does that on its "
            "own machines, not on the writer's cores. Every entry accepted stays counted in the queue until its append "
            "is acknowledged, so at most max_queue_size entries are in the system: by Little's law the "
            "throughput is at most max_queue_size / (time from write() to acknowledgement).")
        if default.get("refused"):
            add(f"The defaults' queue was full during the run (writes refused {default['refused']:,} times), so "
                f"each entry spent about 100,000 / {default['written_per_s']:,.0f} = "
                f"{100_000 / max(1.0, default['written_per_s']):.1f} s from write() to acknowledgement "
                "(an append, plus waiting for a slot and for encoding); the tuned settings raise the queue "
                "limits for that reason.")
        add("")


def _per_append(run: dict[str, Any]) -> str:
    appends = run.get("appends")
    return f"{run['written_total'] / appends:,.0f}" if appends else "–"


def _tuning(r: dict[str, Any], add: Any) -> None:
    sweep = [x for x in r.get("tuning", []) if "written_per_s" in x]
    add(f"## Tuned settings, and the sweep they were chosen from ({r['store_latency_s']} s)")
    add("")
    add(f"Tuned (peer 5): {_settings(r['tuned_settings'])}. {tuned_why(r)}")
    add("")
    if not sweep:
        return
    sizes = sorted({s["settings"]["batch_size"] for s in sweep})
    concs = sorted({s["settings"]["max_concurrent_writes"] for s in sweep})
    queue = {k: v for k, v in sweep[0]["settings"].items() if k.startswith("max_queue")}
    add("| max_concurrent_writes \\ batch_size | " + " | ".join(str(s) for s in sizes) + " |")
    add("|---|" + "---:|" * len(sizes))
    for c in concs:
        row = []
        for s in sizes:
            m = next((x for x in sweep if x["settings"]["batch_size"] == s
                      and x["settings"]["max_concurrent_writes"] == c), None)
            row.append(f"{_n(m['written_per_s'])} ({_n(m['cpu_s'] / m['written_total'] * 1e6, 1)} us, "
                       f"{_n(cost(m))})" if m and m.get("written_total") else "–")
        add(f"| {c} | " + " | ".join(row) + " |")
    add("")
    best = max(sweep, key=lambda x: x["written_per_s"])
    add(f"Entries written per second (CPU us per entry written; appends per million), offered "
        f"{r['offered_rate']:,}/s, with {_settings(queue)}, {r['profile']['tuning']['measure']} s windows after "
        f"{r['profile']['tuning']['warmup']} s. The best cell of this run: batch_size "
        f"{best['settings']['batch_size']}, max_concurrent_writes {best['settings']['max_concurrent_writes']} at "
        f"{best['written_per_s']:,.0f} entries/s. The defaults (batch_size 10, 16 in flight, queue 100,000) are "
        "peer 4 above.")
    add("")


def _latency(r: dict[str, Any], add: Any) -> None:
    add("## Throughput against store latency")
    add("")
    sweep = r.get("latency_sweep", [])
    lat = sorted({x["latency_s"] for x in sweep})
    names = [n for n in ("sync", "batch10", "otel", "default", "tuned") if any(x["name"] == n for x in sweep)]
    add("| peer | " + " | ".join(f"{x * 1000:.0f} ms" for x in lat) + " |")
    add("|---|" + "---:|" * len(lat))
    for n in names:
        row = []
        for x in lat:
            m = next((s for s in sweep if s["name"] == n and s["latency_s"] == x), None)
            row.append(_n(m["written_per_s"], 1) if m and "written_per_s" in m else "–")
        add(f"| {PEER_LABELS.get(n, n)} | " + " | ".join(row) + " |")
    add("")
    add(f"Entries written per second. The {r['store_latency_s']} s column is the side-by-side run above; the "
        f"others use {r['profile']['sweep_measure']} s windows after {r['profile']['sweep_warmup']} s.")
    add("")


def _fleet(r: dict[str, Any], add: Any) -> None:
    f = r.get("fleet")
    if not f:
        return
    add("## Fleet: many writers on the same date, a per-blob request limit")
    add("")
    add(f"The proxy answers 503 ServerBusy to any blob that gets more than {f['per_blob_limit']} requests in one "
        "second (`FaultPlan(per_blob_limit=500)`, Azure's target for one blob). 1 to 16 writers, each a "
        f"LogWriter with the default settings and its own writer id (as Functions instances have), in "
        f"{f['processes']} processes (the machine's cores; a process holds several writers when there are more), "
        f"each writer offered {f['rate_per_writer']:,} entries/s of the sample entries moved to one date, "
        f"{f['date']} (a live fleet writes today's date: every writer the same blob name in version 0.1's "
        "layout). 'Blobs of their own' is this version's naming (`{date}/{writer id}.{part}.log`); 'one shared "
        "blob' gives every writer version 0.1's name (`{date}.{part}.log`), the baseline. After a "
        f"{f['measure_s']} s window (after {f['warmup_s']} s) each writer is stopped (its queue drained) and "
        "everything is read back with blobwriter's Reader and the index check of `blobwriter verify`; each "
        "entry carries its writer and sequence number, so an entry written and not read back is 'lost', one "
        "read twice 'duplicated'. 'Throttled' is the share of Append Block requests the proxy answered 503. "
        "'Machine CPU' is how busy both cores were (everything on the machine) during the measured window.")
    add("")
    add("| naming | latency | writers | offered/s | written/s | append requests | throttled | per-blob peak req/s "
        "| appends per million | blobs | lost | duplicated | failed | drained (s) | writers' CPU s | Azurite CPU s "
        "| proxy CPU s | machine CPU |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for x in sorted(f["runs"], key=lambda x: (x["latency_s"], x["naming"] != "own", x["writers"])):
        if "error" in x:
            add(f"| {x['naming']} | {x['latency_s'] * 1000:.0f} ms | {x['writers']} | failed: {x['error']} |")
            continue
        add(f"| {'own' if x['naming'] == 'own' else 'shared (0.1)'} | {x['latency_s'] * 1000:.0f} ms | "
            f"{x['writers']} | {_n(x['offered_per_s'])} | **{_n(x['written_per_s'])}** | "
            f"{_n(x['proxy_counts'].get('appends', 0))} | {x['throttled_share']:.1%} | {x['per_blob_peak']} | "
            f"{_n(x['appends_per_million'])} | {x['blobs']} | {x['lost']} | {x['duplicated']} | {x['failed']} | "
            f"{x['drained_s']:.1f} | {x['writers_cpu_s']:.1f} | {x['azurite_cpu_s']:.1f} | {x['proxy_cpu_s']:.1f} | "
            f"{x['machine_busy']:.0%} |")
    add("")
    add("Written/s can exceed offered/s in a short window: appends land in bursts. "
        "With blobs of their own, each blob's request rate is one writer's, whatever the fleet's size; with "
        "the shared blob every writer adds to the same blob's rate. The writer's congestion window (halved on "
        "a 503, widened by each success) makes each append carry more frames when throttled, so even the "
        "shared blob settles near the limit instead of failing; the cost is the 503s themselves (billed "
        "requests, retries) and entries waiting longer in memory. Past what 2 cores can encode and store "
        "(Azurite and the proxy run on the same cores), more writers add no throughput: that is the CPU limit, "
        "not the storage's.")
    add("")


def _drain(r: dict[str, Any], add: Any) -> None:
    d = r.get("drain")
    if not d:
        return
    m = d.get("metrics_at_sigterm", {})
    add("## Drain: SIGTERM with a full queue")
    add("")
    add(f"`blobwriter serve` with the default settings behind a {d['latency_s']} s store; "
        f"{d['entries']:,} entries (the default max_queue_size) posted as NDJSON ({d['post']['requests']} "
        f"requests, {d['post']['seconds']} s, answers {d['post']['status']}), then SIGTERM to the server process "
        "(uvicorn's graceful shutdown, then the writer's stop()), timed until the process exits. Everything is "
        "then read back from Azurite with the Reader (index checked).")
    add("")
    add("| figure | value |")
    add("|---|---:|")
    add(f"| entries queued at SIGTERM (written before it) | {_n(m.get('queue_depth'))} ({_n(m.get('written'))}) |")
    add(f"| time from SIGTERM to exit | {_n(d.get('exit_s'), 2)} s (stop_timeout {d['stop_timeout_s']:.0f} s) |")
    add(f"| exit code | {d.get('exit_code')} (0: every accepted entry written; 1: some were not; -15: a version "
        "before serve set its own exit code) |")
    add(f"| read back (entries, frames, retried copies dropped, problems) | {_n(d['stored']['entries'])}, "
        f"{_n(d['stored']['frames'])}, {d['stored']['duplicate_frames']}, {d['stored']['problem_count']} |")
    add(f"| server log lines reporting entries NOT written | {len(d.get('server_log', []))} |")
    add("")


def _memory(r: dict[str, Any], add: Any) -> None:
    mem = r.get("memory")
    if not mem:
        return
    add("## Memory: a queue full of large entries")
    add("")
    add(f"`blobwriter serve` with the default settings (max_queue_bytes {mem['max_queue_bytes'] >> 20} MiB, "
        f"max_queue_size 100,000) while storage is down (every request 503): NDJSON posts of 50 entries of "
        f"~{mem['entry_bytes_mean']:,.0f} bytes (sample entries whose prompt and response are padded with other "
        "entries' texts: they compress like real text) from 4 connections until the server answers 503, then "
        f"{r['profile']['memory_hold']} s held full; then storage comes back, the queue drains and everything is "
        "read back. RSS is the server process's, sampled every 0.2 s.")
    add("")
    add("| figure | value |")
    add("|---|---:|")
    add(f"| idle server RSS (before any entry) | {_mib(mem['rss_idle'])} MiB |")
    add(f"| queue when full: entries / bytes | {_n(mem['queue_depth_full'])} / "
        f"{mem['queue_bytes_full'] / 2**20:,.0f} MiB |")
    add(f"| RSS with the queue full | {_mib(mem['rss_full'])} MiB |")
    add(f"| fixed overhead: RSS minus queue bytes | {mem['overhead_full'] / 2**20:,.0f} MiB |")
    add(f"| RSS peak (while filling) / peak minus the budget | {_mib(mem['rss_peak'])} MiB / "
        f"{(mem['rss_peak'] - mem['max_queue_bytes']) / 2**20:,.0f} MiB |")
    add(f"| answers while filling | {mem['post']['status']} |")
    add(f"| written after storage came back / read back | {_n(mem['metrics_after_drain'].get('written'))} / "
        f"{_n(mem['stored']['entries'])} |")
    add("")
    m = mem["metrics_after_drain"]
    share = m.get("bytes_stored", 0) / m["bytes_raw"] if m.get("bytes_raw") else None
    add("The queue counts an entry's serialized bytes from acceptance until its append is acknowledged; "
        "meanwhile the writer holds it as part of a compressed, encrypted frame"
        + (f" ({share:.0%} of the JSON's size here)" if share else "") + ", so the queue's bytes are an upper "
        "bound of what it holds. The overhead is the interpreter, the libraries and the server (the idle RSS), "
        "the request bodies being parsed, and allocator slack.")
    add("")


def _http(r: dict[str, Any], add: Any) -> None:
    h = r.get("http", {})
    bare = h.get("bare", {})
    add("## HTTP: `blobwriter serve`, one uvicorn worker")
    add("")
    add(f"{h.get('tool')}, {h.get('seconds')} s per run. The single-entry runs use the default settings; the "
        f"bulk run {_settings(r['bulk_http_settings'])} (other settings default). 'entries/s accepted' is the "
        "writer's accepted counter over the run; the written and read-back columns are checked after the load "
        "stops and the queue drains (read back with the Reader, index checked).")
    if h.get("paced_0.0"):
        add("")
        add("The fixed-rate runs measure isolation (does a slow store slow the API down?) at the same offered load, "
            "as issue 10 asks: hey, 32 workers, each sending one single-entry POST per tick of its own clock, "
            f"{_n(h['paced_0.0']['rate_offered'])} requests/s in all ({ISOLATION_SHARE:.0%} of what the server took "
            "at 0 ms in the run above, so that neither run saturates). "
            + (f"The pair runs {len(h['paced_0.0']['runs'])} times, interleaved (0 ms, 1.5 s, 0 ms, ...), and each "
               "store's latencies are pooled: one run's p99 is its slowest 1% (~270 requests), which one hiccup "
               "of this shared machine moves. The table shows the pooled figures. "
               if len(h["paced_0.0"].get("runs", ())) > 1 else "")
            + "wrk's runs are a closed loop: each "
            "connection sends as soon as its last answer came, so the offered load is whatever the server takes, "
            "and it differs between the two stores; their p99s are queueing at saturation. hey's latencies "
            "include its own client (a Go HTTP client), so its p50 is not comparable with wrk's.")
    add("")
    add("| run | requests/s | entries/s accepted | p50 ms | p99 ms | non-2xx | accepted | written | read back "
        "| appends per million | server RSS MiB |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    if bare:
        add(f"| bare ASGI app, single-entry | {_n(bare['requests_per_s'])} | – | {bare['latency_ms']['p50']:.2f} | "
            f"{bare['latency_ms']['p99']:.2f} | {_n(bare['non_2xx'])} | – | – | – | – | – |")
    rate = _n(h.get("paced_0.0", {}).get("rate_offered"))
    for key, label in (("single_0.0", "serve, single-entry, 0 ms store"),
                       ("single_1.5", "serve, single-entry, 1.5 s store"),
                       ("paced_0.0", f"serve, single-entry at a fixed {rate}/s, 0 ms store"),
                       ("paced_1.5", f"serve, single-entry at a fixed {rate}/s, 1.5 s store"),
                       ("bulk_1.5", "serve, NDJSON x100, 1.5 s store")):
        x = h.get(key)
        if not x:
            continue
        m = x.get("metrics", {})
        add(f"| {label} | {_n(x['requests_per_s'])} | {_n(x['accepted_per_s'])} | {x['latency_ms']['p50']:.2f} | "
            f"{x['latency_ms']['p99']:.2f} | {_n(x['non_2xx'])} | {_n(m.get('accepted'))} | {_n(m.get('written'))} | "
            f"{_n(x.get('stored', {}).get('entries'))} | {_n(cost(m))} | {_mib(x.get('rss_end'))} |")
    add("")
    add("What limits the wrk runs: CPU. One worker is one Python thread for HTTP parsing, JSON parsing, validation "
        "and queueing (the encode runs in threads but shares the GIL), and wrk, Azurite and the proxy take the "
        "other core. Per single-entry request the server parses the JSON, validates the timestamp, serializes "
        "the entry and queues it, then (amortized) compresses, encrypts and appends it; the bare app only reads "
        "the body, so the ratio mostly measures that per-entry work against uvicorn's own per-request cost. "
        "The bare app's figure moves a lot between runs on this shared machine (12,000-36,000 requests/s seen "
        "during development), and the ratio with it.")
    add("")


def _outage(r: dict[str, Any], add: Any) -> None:
    o = r.get("outage")
    if not o:
        return
    m = o.get("metrics_after_drain", {})
    st = o["load"].get("status", {})
    add(f"## Storage outage ({o['phases_s']['down']} s) under load")
    add("")
    add(f"`blobwriter serve` (defaults: max_queue_size {o['max_queue_size']:,}, max_queue_bytes "
        f"{o['max_queue_bytes'] >> 20} MiB) under NDJSON x100 POSTs from 8 connections: {o['phases_s']['before']} s "
        f"up, {o['phases_s']['down']} s with the proxy answering 503 to every storage request "
        f"(FaultPlan(down=True)), {o['phases_s']['after']} s up again, then the load stops and the queue drains.")
    add("")
    add("| figure | value |")
    add("|---|---:|")
    add(f"| queue depth peak | {_n(o.get('queue_peak'))} |")
    add(f"| server RSS peak / at end (MiB) | {_mib(o.get('rss_peak'))} / {_mib(o.get('rss_end'))} |")
    add(f"| responses 202 / 503 / 503 with Retry-After / other | {_n(st.get('202'))} / {_n(st.get('503'))} / "
        f"{_n(st.get('503_with_retry_after'))} / {_n(st.get('other'))} |")
    add(f"| accepted / written / failed (writer metrics after drain) | {_n(m.get('accepted'))} / "
        f"{_n(m.get('written'))} / {_n(m.get('failed'))} |")
    add(f"| read back from Azurite (Reader, index checked; retried copies dropped; problems) | "
        f"{_n(o['stored']['entries'])} ({_n(o['stored']['duplicate_frames'])}; {o['stored']['problem_count']}) |")
    add(f"| append calls that failed (retried) | {_n(m.get('retries'))} |")
    add(f"| drained after the load stopped (s) | {_n(o.get('drained_s'), 1)} |")
    add("")


def _encode(r: dict[str, Any], add: Any) -> None:
    add("## Encode cost, compression, stored bytes")
    add("")
    add("CPU per entry (least `time.process_time` of several rounds over the 20,000 entries), the writer's encode "
        "path (`entries.prepare`: timestamp check + `orjson.dumps`; `Encoder.body`: JSON Lines + gzip; "
        "`Encoder.seal`: AES-256-GCM + header) against bare `orjson.dumps` + gzip + AES-GCM. The codec uses "
        "ISA-L igzip level 1 (standard gzip output); the target compares against stdlib gzip level 6 (Python's "
        "default); level 1 and the same isal call are shown too, which isolates the writer's own overhead.")
    add("")
    add("| batch | writer path us/entry | bare, stdlib gzip 6 | bare, stdlib gzip 1 | bare, isal 1 "
        "| compression ratio | stored bytes/entry |")
    add("|---:|---:|---:|---:|---:|---:|---:|")
    for b, e in r.get("encode", {}).items():
        cells = []
        for name in ("stdlib gzip level 6", "stdlib gzip level 1", "isal igzip level 1 (the codec's own)"):
            x = e["bare"].get(name)
            cells.append(f"{x['us_per_entry']:.2f} (writer {x['writer_ratio']:.2f}x)" if x else "–")
        add(f"| {b} | {e['writer_us_per_entry']:.2f} | " + " | ".join(cells)
            + f" | {e['compression_ratio']:.2f} | {e['stored_bytes_per_entry']:.0f} |")
    add("")
    for name in ("default", "tuned"):
        x = _peer(r, name)
        if x.get("bytes_stored"):
            add(f"In the {name} run: {x['bytes_raw'] / x['bytes_stored']:.2f}x compression overall (JSON bytes / "
                "stored frame bytes).")
    add(f"`orjson.dumps` alone is {r['encode']['1000']['orjson_dumps_us_per_entry']:.2f} us/entry; the writer's "
        "`prepare` also parses the timestamp and copies orjson's output to an exact-size object.")
    add("")


PEER_LABELS = {"sync": "1. synchronous append per entry", "batch10": "2. batch-10, sequential writer",
               "otel": "3. OTel BatchLogRecordProcessor", "default": "4. LogWriter, defaults",
               "tuned": "5. LogWriter, tuned"}

def tuned_why(r: dict[str, Any]) -> str:
    """Why the tuned settings, with this run's figures."""
    tuned = _peer(r, "tuned")
    enc = r.get("encode", {})
    if not tuned.get("written_total") or not tuned.get("append_mean_s") or "10" not in enc:
        return ""
    per_entry = tuned["bytes_stored"] / tuned["written_total"]
    latency = r["store_latency_s"]

    def ceiling(conc: int) -> str:
        return f"{conc * APPEND_BYTES / latency / per_entry:,.0f}"

    return (
        "Why: an append carries every frame ready for its blob, so throughput is no longer batch_size x "
        "max_concurrent_writes / latency; it is still at most max_concurrent_writes x 4 MiB per append round "
        f"trip. With {per_entry:,.0f} stored bytes per entry (the tuned run), even if every append were full "
        f"and took only the store's {latency} s, 16 appends in flight would cap it at {ceiling(16)} entries/s, "
        f"32 at {ceiling(32)} and 64 at {ceiling(64)}; appends are full only when frames pile up, and take "
        f"longer than {latency} s (the tuned run's took {tuned['append_mean_s']:.1f} s on average), so 64 "
        "leaves room for 100,000 entries/s. batch_size 1000 costs the least CPU per "
        f"entry ({enc['1000']['writer_us_per_entry']:.1f} against {enc['10']['writer_us_per_entry']:.1f} us at "
        "batch 10, encode table below) and compresses best, and CPU is what limits the writer here. The queue "
        "must hold every entry between write() and its acknowledgement, about 100,000 entries/s x 2-3 s "
        "(Little's law): 400,000 entries and 1 GiB. Within these ranges the sweep's cells differ by about as "
        "much as one cell moves between runs on this shared machine (+-30% seen during development), so the "
        "choice rests on these three reasons more than on the best cell. The memory is the cost: see the "
        "tuned RSS peak above, and size the instance for it (4 GB rather than 2 GB)."
    )


BENCH_CHANGES = [
    "New: the defaults at 1.5 s against their own goal (50,000 entries/s), the tuned settings against "
    "100,000 (chosen from a tuning sweep that replaces the batch-settings sweep: batch_size x "
    "max_concurrent_writes no longer bounds throughput now that an append carries many frames), the cost in "
    "Append Block calls per million entries for every peer, a fleet of 1-16 writers against a per-blob "
    "request limit with version 0.1's shared blob as the baseline, a SIGTERM drain of a full queue, and the "
    "memory of a queue full of 20 KB entries.",
    "Changed: the LogWriter peers are offered 150,000 entries/s (was 75,000, under what the tuned writer now "
    "takes; the batch-10 and OTel peers keep 75,000, and batch-10 now stops at 2 GiB of RSS instead of 4); "
    "the warm-up is 10 s in quick mode and 15 s in full mode (a new blob's first append at 1.5 s takes 4.5 s, "
    "and the first round of appends then writes a whole queue at once, which a short window would count as "
    "throughput); the single-entry HTTP "
    "runs, LogWriter.write() p99 and the outage use the default settings (the defaults are meant to need no "
    "tuning); the bulk HTTP run uses max_concurrent_writes 32; read-backs go through blobwriter's Reader with "
    "the index check, not a walk of frame headers.",
    "Dropped: the target 'tuned LogWriter >= 50,000 entries/s' (replaced by the two above) and the "
    "batch-settings table (replaced by the tuning sweep).",
    "Fixed in the storage proxy (tests/support/proxy.py): it read request bodies with aiohttp's "
    "`request.read()`, which refuses bodies over 1 MiB with its own 413, so every append over 1 MiB failed "
    "before reaching Azurite and was retried until give_up_after (the defaults wrote 830 entries/s). It now "
    "forwards appends of any size up to Azurite's own limit (4 MiB).",
]

ROUND_TWO_HOW = (
    "How they were found: py-spy with `--gil` (only the thread holding the GIL is sampled) on the default "
    "in-process peer at 1.5 s and on `blobwriter serve` under the bulk load, and timings of each encoding job "
    "(wall against thread CPU). The writer process was bound by GIL time, not by storage: a quarter of it went "
    "to the NaN/infinity check, and the encoding threads waited for the GIL (a 3,000-entry job took ~120 ms for "
    "~25 ms of CPU). Before/after figures come from one script alternating runs of a worktree of 2d068ab (before "
    "this round) and of this round's code on the same machine: `bench.peers` behind the 1.5 s proxy with this "
    "benchmark's 10 s warm-up and 10 s window, and `blobwriter serve` under wrk as in the HTTP runs. They move "
    "as much between runs as the figures above do (compare the defaults' figure in this run with theirs).")
ROUND_TWO = [
    "Admission (entries.py) looks for NaN and infinity in marshal's bytes of the entry (C speed: every float is "
    "written as 8 IEEE 754 bytes after a type byte) instead of reading every line back with `orjson.loads` and "
    "comparing; only a possible hit is read back and walked. It is checked at import against this Python's "
    "marshal (otherwise the old path runs), and a hypothesis test holds it against the walk. Admission also "
    "checks a dict without the ABC, reads the timestamp once, takes a UTC timestamp's date from its text, and "
    "reuses one `Admission` per writer when no rule reads the clock. Encoding builds each frame's accounting "
    "with C loops (`map`, `sum`, `itemgetter`) and skips the split loop when a batch fits one frame.",
    "The accounting each frame carries to storage (`Settled`, entry_queue.py) is a plain tuple of atoms, which "
    "the garbage collector stops tracking; it was a slots object with a list and a dict, three tracked objects "
    "for each of the ~60,000 frames waiting at batch_size 10, walked by every full collection (8-10 of ~135 ms "
    "each per 20 s run).",
    "With both: defaults 34,170 / 37,626 -> 46,335 / 46,347 entries/s; tuned 44,659 / 43,135 -> 53,985 / "
    "52,675 entries/s (two runs each).",
    "`blobwriter serve` refuses (503 + Retry-After) a body the queue has no room for before parsing it "
    "(`LogWriter.shed`, counted in `blobwriter_requests_shed_total`), and searches an NDJSON body once for "
    "the long digit runs that need the exact parser instead of once a line. Under the bulk load (wrk does "
    "not honour Retry-After) most requests were answered 503 after every entry had been parsed and admitted. "
    "Bulk HTTP, 100 entries a request, 32 appends in flight: 27,183 / 27,149 -> 42,434 / 38,837 entries/s "
    "accepted.",
]

CHANGES = [
    "`prepare` (entries.py) copies `orjson.dumps` output into an exact-size bytes object. Cause, "
    "found from the tuned run's RSS: orjson's result keeps the allocation of its larger working buffer, so a "
    "queued 1.2 KB entry held ~9 KB. Before/after: 9.0 -> 1.7 KB of RSS per queued entry; tuned in-process run "
    "at 1.5 s, RSS peak 2.4 GB -> 0.7-0.9 GB with a 200,000-entry queue; `dumps` in a loop that keeps its "
    "results 6.4 -> 2.9 us per entry (fewer page faults).",
    "The queue's items (entry_queue.py `Item`) are plain tuples instead of a NamedTuple. Cause, found chasing the "
    "p99 at 1.5 s: CPython only stops tracking *exact* tuples of atoms, so every queued NamedTuple stayed in "
    "the garbage collector's view and each full collection walked the whole queue. Before/after: full "
    "collection with 400,000 queued items 21.4 -> 2.7 ms; POST /api/logs p99 at 1.5 s store latency 16.5 -> "
    "7.7 ms (p99.9 75 -> 22 ms), against 6.6-6.7 ms at 0 ms; LogWriter.write() p99 at 1.5 s 33.0 -> 23.8 us "
    "and its max 165 -> 4 ms (20,000 entries/s offered); bulk HTTP 48,700 -> 54,200 entries/s (one run each).",
    "`create_app` (api.py) returns a Starlette subclass that hands POST /api/logs straight to its endpoint, "
    "past the middleware stack and router (every other path, and any root_path, goes through Starlette as "
    "before), and the 202 answer is sent as two ASGI messages with the same bytes and headers instead of a "
    "Starlette Response. Cause, from py-spy on `blobwriter serve`: ~28% of samples in Starlette's "
    "middleware/router/Response layers. Before/after (same script, two runs each): single-entry POSTs "
    "10,355 / 10,289 -> 12,080 / 13,059 requests/s, p99 12.8 / 10.0 -> 12.2 / 9.5 ms.",
]
