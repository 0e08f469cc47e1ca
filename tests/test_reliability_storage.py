"""Reliability against a misbehaving store: flaky appends, an outage, several instances rolling parts.

Entries go through a fault-injecting proxy in front of Azurite (tests/support/proxy.py) and are
read back with `blobwriter read` (a subprocess), each checked exactly once by id.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from blobwriter.blob_store import AppendBlobStore
from blobwriter.config import Settings
from blobwriter.errors import StoreError
from blobwriter.layout import writer_blob
from blobwriter.writer import LogWriter
from tests.conftest import connection_string
from tests.support.proxy import FaultPlan, StorageProxy
from tests.support.readback import blob_bytes
from tests.support.reliability import (
    Ledger,
    RssSampler,
    ServeProcess,
    azurite_env,
    chunks,
    health,
    make_entries,
    post_batch,
    read_ids,
    record_figures,
    rss_bytes,
    run_cli,
    wait_until_drained,
)

pytestmark = pytest.mark.reliability


def through(proxy: StorageProxy) -> str:
    return f"{proxy.url}/devstoreaccount1"


async def test_flaky_storage_loses_and_duplicates_nothing(proxy: StorageProxy, azurite: str, key: str,
                                                         container: str) -> None:
    """100,000 entries while 20% of appends fail (5xx or reset) and 5% land but answer after the timeout.

    Appends are capped at 64 KiB here so that they are many (an append carries every frame that is
    ready, so at the default 4 MiB the whole run would be a few dozen appends, too few to meet every fault).
    """
    proxy.plan = FaultPlan(error_share=0.10, reset_share=0.10, stall_share=0.05, stall_seconds=1.5, seed=1)
    settings = Settings.from_values({
        "storage": connection_string(through(proxy)), "encryption_key": key, "container": container,
        "batch_size": 500, "batch_timeout": 0.2, "storage_timeout": 1.0, "retry_backoff_max": 0.5,
        "max_concurrent_writes": 16, "max_append_bytes": 65536, "max_entry_bytes": 32768,
    })
    entries = make_entries(100_000, "flaky", day="2026-03-14", days=2)
    writer = LogWriter(settings)
    await writer.start()
    try:
        for batch in chunks(entries, 1000):
            await writer.write_many(batch)
            await asyncio.sleep(0)
    finally:
        await writer.stop(timeout=300)
    metrics = writer.metrics.snapshot()
    assert metrics["failed"] == 0, metrics
    assert proxy.counts["stall"] and proxy.counts["error"] and proxy.counts["reset"], proxy.counts

    env = azurite_env(azurite, key, container)  # read straight from Azurite, not through the proxy
    back = read_ids(env, "2026-03-14", "2026-03-15")
    verify = run_cli(env, "verify", "--date", "2026-03-14", "--until", "2026-03-15")
    expected = [e["id"] for e in entries]
    lost = back.lost(expected)
    record_figures(
        "1 flaky storage", load=f"{len(entries):,} entries, in-process writer, batch_size 500",
        faults=f"{proxy.counts['appends']} append requests: {proxy.counts['error']} 5xx, {proxy.counts['reset']} "
               f"resets, {proxy.counts['stall']} stalled past storage_timeout (landed)",
        accepted=metrics["accepted"], read_back=len(back.counts), lost=len(lost), duplicated=back.duplicated,
        notes=f"{metrics['retries']} writer retries; verify exit {verify.returncode}: "
              + verify.stdout.decode().strip().splitlines()[-2],
    )
    assert back.returncode == 0, back.stderr
    assert not lost and back.duplicated == 0
    assert set(back.counts) == set(expected)
    assert verify.returncode == 0, verify.stdout.decode()[-2000:]


async def test_a_stalled_append_times_out_and_is_not_resent_as_is(proxy: StorageProxy, key: str,
                                                                 container: str) -> None:
    """Regression: storage_timeout reached the SDK client but not the transport we hand it, so a
    stalled append waited 300 s; and the SDK's own retry resent the same bytes, which `verify`
    then flagged as a replayed frame. Now the append gives up and leaves the retry to the writer."""
    settings = Settings.from_values({"storage": connection_string(through(proxy)), "encryption_key": key,
                                     "container": container, "storage_timeout": 1.0})
    store = AppendBlobStore(settings)
    await store.open()
    try:
        name = writer_blob("", "2026-03-20", "ab" * 16, 0)
        await store.append(name, b"first")
        proxy.plan = FaultPlan(stall_share=1.0, stall_seconds=4.0)
        appends_before = proxy.counts["appends"]
        with pytest.raises(StoreError):  # the store's one error type
            await store.append(name, b"stalled")
        assert proxy.counts["appends"] - appends_before == 1  # sent once, not resent by the SDK
        proxy.plan = FaultPlan()
        await asyncio.sleep(4.0)  # let the stalled request finish landing before looking
        assert await blob_bytes(store, name) == b"firststalled"
    finally:
        await store.close()


OUTAGE_SECONDS = 60


def test_outage_back_pressure_bounded_memory_full_recovery(proxy: StorageProxy, azurite: str, key: str,
                                                           container: str, tmp_path: Path) -> None:
    """Storage answers 503 to everything for 60 s under steady load, then comes back."""
    max_queue = 2000
    env = azurite_env(through(proxy), key, container, BLOBWRITER_MAX_QUEUE_SIZE=str(max_queue),
                      BLOBWRITER_BATCH_SIZE="200", BLOBWRITER_BATCH_TIMEOUT="0.2", BLOBWRITER_STORAGE_TIMEOUT="1",
                      BLOBWRITER_RETRY_BACKOFF_MAX="2", BLOBWRITER_STOP_TIMEOUT="60")
    server = ServeProcess(env, tmp_path / "serve.log")
    ledger = Ledger()
    stop = threading.Event()
    phase = {"name": "before"}
    offered: dict[str, int] = {"before": 0, "down": 0, "after": 0}
    depths: list[int] = []
    health_during_outage: list[int] = []

    def load(worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                batch = make_entries(50, f"outage{worker}", day="2026-03-16")
                offered[phase["name"]] += len(batch)
                status = post_batch(client, ledger, batch)
                if status == 503:
                    time.sleep(min(float(ledger_retry_after(ledger)), 2.0))
                else:
                    time.sleep(0.02)

    try:
        workers = [threading.Thread(target=load, args=(n,), daemon=True) for n in range(2)]
        with RssSampler(server.pid) as rss:
            for w in workers:
                w.start()
            time.sleep(5)
            baseline = rss_bytes(server.pid)
            phase["name"] = "down"
            proxy.plan = FaultPlan(down=True)
            deadline = time.monotonic() + OUTAGE_SECONDS
            while time.monotonic() < deadline:
                status = health(server.url)
                depths.append(status["queue_depth"])
                health_during_outage.append(status["status"])
                time.sleep(1)
            proxy.plan = FaultPlan()
            phase["name"] = "after"
            time.sleep(10)
            stop.set()
            for w in workers:
                w.join(30)
            drained = wait_until_drained(server.url)
            peak = rss.peak
        after = health(server.url)
        code = server.terminate()
    finally:
        stop.set()
        server.kill()

    back = read_ids(azurite_env(azurite, key, container), "2026-03-16")
    lost = back.lost(ledger.acked)
    statuses = dict(sorted(ledger.statuses.items()))
    record_figures(
        "2 outage", load=f"2 clients posting 50-entry batches; {sum(offered.values()):,} entries offered "
                         f"({offered['down']:,} during the outage); max_queue_size {max_queue}",
        faults=f"storage answers 503 to every request for {OUTAGE_SECONDS} s",
        accepted=len(ledger.acked), read_back=len(back.counts), lost=len(lost), duplicated=back.duplicated,
        notes=f"API statuses {statuses}; Retry-After values {dict(ledger.retry_after)}; peak queue depth "
              f"{max(depths)}; server RSS {baseline / 2**20:.0f} MiB before, peak {peak / 2**20:.0f} MiB",
    )
    assert code == 0, server.log_text()[-3000:]
    assert back.returncode == 0, back.stderr
    assert ledger.statuses[503] and ledger.retry_after, statuses  # back-pressure, with Retry-After
    assert 503 in health_during_outage and after["status"] == 200 and drained["queue_depth"] == 0
    assert max(depths) <= max_queue
    assert peak - baseline < 64 * 2**20, (baseline, peak)  # a bounded queue, not one that grows with the load
    assert not ledger.unknown and not lost and back.duplicated == 0
    assert set(back.counts) == ledger.acked


def ledger_retry_after(ledger: Ledger) -> str:
    with ledger.lock:
        return max(ledger.retry_after, key=ledger.retry_after.get, default="1")


def test_many_instances_share_dates_across_part_rollover(azurite: str, key: str, container: str,
                                                         tmp_path: Path) -> None:
    """4 serve processes write the same two dates into one container; parts roll every 20 blocks."""
    env = azurite_env(azurite, key, container, BLOBWRITER_MAX_BLOCKS_PER_BLOB="20", BLOBWRITER_BATCH_SIZE="50",
                      BLOBWRITER_BATCH_TIMEOUT="0.1", BLOBWRITER_STORAGE_TIMEOUT="10")
    servers: list[ServeProcess] = []
    ledger = Ledger()
    try:
        servers = [ServeProcess(env, tmp_path / f"serve{n}.log") for n in range(4)]

        def load(server: ServeProcess, worker: int) -> None:
            entries = make_entries(2500, f"inst{worker}", day="2026-03-17", days=2)
            with httpx.Client(base_url=server.url, timeout=60) as client:
                for batch in chunks(entries, 25):
                    post_batch(client, ledger, batch)

        workers = [threading.Thread(target=load, args=(s, n)) for n, s in enumerate(servers)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(300)
        codes = [s.terminate() for s in servers]
    finally:
        for s in servers:
            s.kill()

    back = read_ids(env, "2026-03-17", "2026-03-18")
    verify = run_cli(env, "verify", "--json", "--date", "2026-03-17", "--until", "2026-03-18")
    report = json.loads(verify.stdout)
    lost = back.lost(ledger.acked)
    record_figures(
        "5 many instances", load="4 serve processes x 2,500 entries in 25-entry requests, 2 dates",
        faults="max_blocks_per_blob 20: parts roll while 4 writers append",
        accepted=len(ledger.acked), read_back=len(back.counts), lost=len(lost), duplicated=back.duplicated,
        notes=f"{report['parts']} parts, {report['frames']} frames; verify ok={report['ok']}",
    )
    assert codes == [0, 0, 0, 0], [s.log_text()[-2000:] for s in servers]
    assert len(ledger.acked) == 10_000 and ledger.statuses == {202: 400}
    assert back.returncode == 0, back.stderr
    assert not lost and back.duplicated == 0 and set(back.counts) == ledger.acked
    assert report["parts"] > 2  # more than one part per date
    assert verify.returncode == 0, report["problems"][:5]
