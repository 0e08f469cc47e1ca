"""Reliability of a `blobwriter serve` process that is stopped: SIGTERM flushes, SIGKILL loses only 202s.

Storage is Azurite behind a proxy that adds latency, so that thousands of entries really are queued
when the signal arrives. Entries are read back with `blobwriter read` and checked by id.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.proxy import FaultPlan, StorageProxy
from tests.support.reliability import (
    Ledger,
    ServeProcess,
    azurite_env,
    chunks,
    health,
    make_entries,
    post_batch,
    read_ids,
    record_figures,
)

pytestmark = pytest.mark.reliability


def test_sigterm_writes_every_accepted_entry_before_exit(proxy: StorageProxy, azurite: str, key: str,
                                                         container: str, tmp_path: Path) -> None:
    """SIGTERM while ~5,000 entries are queued behind 1 s storage latency: all are on storage at exit."""
    proxy.plan = FaultPlan(latency=1.0)
    env = azurite_env(f"{proxy.url}/devstoreaccount1", key, container, BLOBWRITER_BATCH_SIZE="100",
                      BLOBWRITER_BATCH_TIMEOUT="0.2", BLOBWRITER_MAX_CONCURRENT_WRITES="4",
                      BLOBWRITER_STORAGE_TIMEOUT="10")
    server = ServeProcess(env, tmp_path / "serve.log")
    ledger = Ledger()
    entries = make_entries(5000, "term", day="2026-03-21", days=2)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for batch in chunks(entries, 500):
                post_batch(client, ledger, batch)
        queued = health(server.url)["queue_depth"]
        code = server.terminate(timeout=180)
    finally:
        server.kill()
    back = read_ids(azurite_env(azurite, key, container), "2026-03-21", "2026-03-22")
    lost = back.lost(ledger.acked)
    record_figures(
        "3 graceful shutdown", load=f"{len(entries):,} entries in 500-entry requests, then SIGTERM",
        faults="1 s latency on every storage request; max_concurrent_writes 4",
        accepted=len(ledger.acked), read_back=len(back.counts), lost=len(lost), duplicated=back.duplicated,
        notes=f"{queued:,} entries still queued when SIGTERM was sent; exit code {code}",
    )
    assert ledger.statuses == {202: 10}
    assert queued > 1000  # the signal really did find a backlog
    assert code == 0, server.log_text()[-3000:]
    assert back.returncode == 0, back.stderr
    assert not lost and back.duplicated == 0 and set(back.counts) == ledger.acked


def test_sigkill_loses_no_durable_entry_and_at_most_the_queue(proxy: StorageProxy, azurite: str, key: str,
                                                              container: str, tmp_path: Path) -> None:
    """SIGKILL under mixed load: every 200 (wait=true) entry is stored; 202-only losses stay within the queue."""
    max_queue = 5000
    proxy.plan = FaultPlan(latency=0.3)
    env = azurite_env(f"{proxy.url}/devstoreaccount1", key, container, BLOBWRITER_BATCH_SIZE="100",
                      BLOBWRITER_BATCH_TIMEOUT="0.2", BLOBWRITER_MAX_CONCURRENT_WRITES="4",
                      BLOBWRITER_MAX_QUEUE_SIZE=str(max_queue), BLOBWRITER_STORAGE_TIMEOUT="10")
    server = ServeProcess(env, tmp_path / "serve.log")
    ledger = Ledger()
    stop = threading.Event()

    def load(worker: int, wait: bool) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            while not stop.is_set():
                batch = make_entries(20 if wait else 50, f"kill{worker}", day="2026-03-23")
                if post_batch(client, ledger, batch, wait=wait) in (503, None):
                    time.sleep(0.2)
                elif not wait:
                    time.sleep(0.1)  # ~1,000 entries/s from the two 202 clients: a backlog, not a full queue

    workers = [threading.Thread(target=load, args=(n, n < 2), daemon=True) for n in range(4)]
    try:
        for w in workers:
            w.start()
        time.sleep(8)
        queued = health(server.url)["queue_depth"]
        server.process.kill()
        server.process.wait(30)
        stop.set()
        for w in workers:
            w.join(60)
    finally:
        stop.set()
        server.kill()

    back = read_ids(azurite_env(azurite, key, container), "2026-03-23")
    lost_durable = back.lost(ledger.durable)
    lost_queued = back.lost(ledger.acked - ledger.durable)
    record_figures(
        "4 crash (SIGKILL)",
        load="2 clients with ?wait=true (20-entry requests) + 2 without (50-entry, every 0.1 s), 8 s",
        faults="0.3 s storage latency; SIGKILL",
        accepted=f"{len(ledger.acked):,} ({len(ledger.durable):,} with wait=true)", read_back=len(back.counts),
        lost=f"{len(lost_durable)} durable, {len(lost_queued)} 202-only", duplicated=back.duplicated,
        notes=f"queue depth {queued:,} just before the kill (max_queue_size {max_queue}); "
              f"{len(ledger.unknown)} entries in requests cut off by the kill",
    )
    assert ledger.durable and ledger.acked - ledger.durable
    assert back.returncode == 0, back.stderr
    assert not lost_durable, sorted(lost_durable)[:10]
    assert back.duplicated == 0
    assert len(lost_queued) <= max_queue  # what was lost had been accepted into the bounded queue
    assert set(back.counts) <= ledger.acked | ledger.unknown
