"""In-process peers, each run in a process of its own: `python -m bench.peers '<json config>'`.

Every peer writes real frames through the real azure SDK to Azurite (via the latency proxy):

- sync:      one append per entry, awaited by the caller (the "before" picture); `concurrency` callers.
- batch10:   the earlier design: an unbounded queue and one sequential writer task taking up to
             10 entries or what arrived within 1.0 s.
- otel:      OpenTelemetry SDK's BatchLogRecordProcessor, default settings, with an exporter that
             appends each exported batch (per date) to the blob. It drops records when its queue is full.
- logwriter: blobwriter's LogWriter with the given settings.

Peers 1-3 encode like blobwriter, to be fair: JSON Lines, ISA-L gzip level 1, AES-256-GCM.
The load generator offers `rate` entries/s (0: as fast as it can) from the event loop; a caller
refused by back-pressure (QueueFullError) keeps its entry and offers it again 5 ms later.
The result (one JSON object) is the last line on stdout.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import os
import resource
import struct
import sys
import time
from array import array
from typing import Any

import orjson
import psutil

from bench.env import entry_lines, nearest_rank

PROC = psutil.Process()
RETRY_REFUSED = 0.005


def rss() -> int:
    return int(PROC.memory_info().rss)


def peak_rss() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class SimpleEncoder:
    """gzip (ISA-L level 1, as blobwriter) + AES-256-GCM: length, nonce, ciphertext."""

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        from blobwriter.codec import compress

        self._aead = AESGCM(key)
        self._compress = compress

    def encode(self, lines: list[bytes]) -> tuple[bytes, int]:
        plain = b"\n".join(lines) + b"\n"
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, self._compress(plain), None)
        return struct.pack(">I", len(sealed)) + nonce + sealed, len(plain)


def by_date(lines: list[bytes], dates: list[str]) -> dict[str, list[bytes]]:
    groups: dict[str, list[bytes]] = {}
    for line, date in zip(lines, dates, strict=True):
        groups.setdefault(date, []).append(line)
    return groups


class Counters:
    def __init__(self) -> None:
        self.written = 0
        self.appends = 0  # Append Block calls that succeeded
        self.frames = 0
        self.retries = 0  # Append Block calls that failed (each one is billed too)
        self.throttled = 0
        self.bytes_raw = 0
        self.bytes_stored = 0
        self.dropped = 0


# -- peers --------------------------------------------------------------------------------------


class AsyncBlobPeer:
    """Shared by sync and batch10: the async azure SDK (aiohttp), one append blob per date."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.c = Counters()
        self.encoder = SimpleEncoder(base64.b64decode(cfg["key"]))
        self._blobs: dict[str, Any] = {}

    async def start(self) -> None:
        from azure.storage.blob.aio import BlobServiceClient

        self.service = BlobServiceClient.from_connection_string(self.cfg["storage"])
        self.container = self.service.get_container_client(self.cfg["container"])
        await self.container.create_container()

    async def blob(self, date: str) -> Any:
        blob = self._blobs.get(date)
        if blob is None:
            blob = self.container.get_blob_client(f"{date}.log")
            self._blobs[date] = blob
            try:
                await blob.create_append_blob(if_none_match="*")
            except Exception:
                pass
        return blob

    async def append(self, lines: list[bytes], date: str) -> None:
        frame, raw = self.encoder.encode(lines)
        blob = await self.blob(date)
        await blob.append_block(frame, length=len(frame))
        self.c.appends += 1
        self.c.frames += 1
        self.c.written += len(lines)
        self.c.bytes_raw += raw
        self.c.bytes_stored += len(frame)

    async def stop(self) -> None:
        await self.service.close()


class SyncPeer(AsyncBlobPeer):
    """The caller awaits one append of its one entry."""

    async def write(self, entry: dict[str, Any]) -> None:
        await self.append([bytes(memoryview(orjson.dumps(entry)))], entry["timestamp"][:10])

    def backlog(self) -> int:
        return 0


class Batch10Peer(AsyncBlobPeer):
    """An unbounded queue and one sequential writer: batch_size=10, batch_timeout=1.0."""

    BATCH, TIMEOUT = 10, 1.0

    async def start(self) -> None:
        await super().start()
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def write(self, entry: dict[str, Any]) -> None:
        self.queue.put_nowait((entry["timestamp"][:10], bytes(memoryview(orjson.dumps(entry)))))

    def backlog(self) -> int:
        return self.queue.qsize()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.TIMEOUT
            while len(batch) < self.BATCH:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
            groups = by_date([b[1] for b in batch], [b[0] for b in batch])
            for date, lines in groups.items():
                try:
                    await self.append(lines, date)
                except Exception as exc:
                    self.c.dropped += len(lines)
                    logging.getLogger("bench").warning("batch10 append failed: %s", exc)

    async def stop(self) -> None:
        self.task.cancel()
        await super().stop()


class OtelPeer:
    """BatchLogRecordProcessor (defaults: queue 2048, batch 512, 5 s delay) + a blob-appending exporter."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.c = Counters()
        self.emitted = 0
        self.received = 0

    async def start(self) -> None:
        from azure.storage.blob import BlobServiceClient
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult

        # Every drop logs a warning; a user would silence that too, or the warnings would cost more than the logs.
        logging.getLogger("opentelemetry").setLevel(logging.ERROR)
        service = BlobServiceClient.from_connection_string(self.cfg["storage"])
        container = service.get_container_client(self.cfg["container"])
        container.create_container()
        encoder = SimpleEncoder(base64.b64decode(self.cfg["key"]))
        peer = self
        blobs: dict[str, Any] = {}

        class BlobExporter(LogRecordExporter):
            def export(self, batch: Any) -> LogRecordExportResult:
                peer.received += len(batch)
                lines = [orjson.dumps(r.log_record.body) for r in batch]
                dates = [r.log_record.body["timestamp"][:10] for r in batch]
                try:
                    for date, group in by_date(lines, dates).items():
                        blob = blobs.get(date)
                        if blob is None:
                            blob = blobs[date] = container.get_blob_client(f"{date}.log")
                            try:
                                blob.create_append_blob(if_none_match="*")
                            except Exception:
                                pass
                        frame, raw = encoder.encode(group)
                        blob.append_block(frame, length=len(frame))
                        peer.c.appends += 1
                        peer.c.frames += 1
                        peer.c.written += len(group)
                        peer.c.bytes_raw += raw
                        peer.c.bytes_stored += len(frame)
                except Exception:
                    return LogRecordExportResult.FAILURE
                return LogRecordExportResult.SUCCESS

            def shutdown(self) -> None:
                pass

            def force_flush(self, timeout_millis: int = 30000) -> bool:
                return True

        self.processor = BatchLogRecordProcessor(BlobExporter())
        self.provider = LoggerProvider()
        self.provider.add_log_record_processor(self.processor)
        self.logger = self.provider.get_logger("bench")

    async def write(self, entry: dict[str, Any]) -> None:
        self.emitted += 1
        self.logger.emit(body=entry)

    def backlog(self) -> int:
        return len(self.processor._batch_processor._queue)

    def dropped(self) -> int:
        return self.emitted - self.received - self.backlog()

    async def stop(self) -> None:
        pass  # shutdown() would export the queue at 1.5 s a batch; the process exits instead


class LogWriterPeer:
    def __init__(self, cfg: dict[str, Any]) -> None:
        from blobwriter.config import Settings
        from blobwriter.writer import LogWriter

        values = {"storage": cfg["storage"], "encryption_key": cfg["key"], "container": cfg["container"],
                  **cfg.get("settings", {})}
        self.settings = Settings.from_values(values)
        self.writer = LogWriter(self.settings)
        self.c = Counters()

    async def start(self) -> None:
        await self.writer.start()

    def write(self, entry: dict[str, Any]) -> Any:
        return self.writer.write(entry)

    def backlog(self) -> int:
        return self.writer.metrics.queue_depth()

    def sync_counters(self) -> None:
        m = self.writer.metrics
        self.c.written, self.c.appends, self.c.frames = m.written, m.appends, m.frames
        self.c.retries, self.c.throttled = m.retries, m.throttled
        self.c.bytes_raw, self.c.bytes_stored, self.c.dropped = m.bytes_raw, m.bytes_stored, m.failed

    async def stop(self) -> None:
        pass


PEERS = {"sync": SyncPeer, "batch10": Batch10Peer, "otel": OtelPeer, "logwriter": LogWriterPeer}


# -- the load generator -------------------------------------------------------------------------


async def run(cfg: dict[str, Any]) -> dict[str, Any]:
    from blobwriter.errors import QueueFullError

    entries = [orjson.loads(line) for line in entry_lines()]
    n_entries = len(entries)
    peer = PEERS[cfg["kind"]](cfg)
    await peer.start()
    gc.collect()
    rss_start = rss()
    cpu0 = PROC.cpu_times()
    cpu_start = cpu0.user + cpu0.system
    warmup, measure = float(cfg["warmup"]), float(cfg["measure"])
    rate = float(cfg.get("rate") or 0)
    rss_limit = int(cfg.get("rss_limit", 4 << 30))
    record_latency = bool(cfg.get("record_latency", True))
    latencies = array("d")
    offered = refused = 0
    index = 0
    stopped_early = None
    timeline: list[dict[str, Any]] = []

    def written() -> int:
        if isinstance(peer, LogWriterPeer):
            peer.sync_counters()
        return peer.c.written

    loop = asyncio.get_running_loop()
    t_start = loop.time()
    t_warm = t_start + warmup
    t_end = t_warm + measure
    mark: dict[str, Any] = {}

    async def sampler() -> None:
        while True:
            now = loop.time()
            point = {"t": round(now - t_start, 2), "written": written(), "backlog": peer.backlog(), "rss": rss()}
            if isinstance(peer, LogWriterPeer):
                point["in_flight"] = peer.writer.metrics.in_flight()
            timeline.append(point)
            if "w0" not in mark and now >= t_warm:
                mark["w0"], mark["t0"] = written(), now
            await asyncio.sleep(0.25)

    sample_task = asyncio.create_task(sampler())

    if cfg["kind"] == "sync":
        concurrency = int(cfg.get("concurrency", 64))
        counter = iter(range(1 << 62))

        async def caller() -> None:
            nonlocal offered
            while loop.time() < t_end:
                i = next(counter)
                offered += 1
                started = time.perf_counter()
                await peer.write(entries[i % n_entries])
                if record_latency and loop.time() >= t_warm:
                    latencies.append(time.perf_counter() - started)

        callers = [asyncio.create_task(caller()) for _ in range(concurrency)]
        while loop.time() < t_end:
            await asyncio.sleep(0.1)
        mark["w1"], mark["t1"] = written(), loop.time()
        backlog_end = sum(1 for c in callers if not c.done())  # callers still waiting for their append
        for c in callers:
            c.cancel()
    else:
        chunk = 200
        perf = time.perf_counter
        while True:
            now = loop.time()
            if now >= t_end:
                break
            if rate:
                due = int(rate * (now - t_start)) - offered
                if due <= 0:
                    await asyncio.sleep(0.002)
                    continue
                n = min(due, chunk)
            else:
                n = chunk
            in_window = record_latency and now >= t_warm
            for _ in range(n):
                entry = entries[index % n_entries]
                index += 1
                offered += 1
                while True:
                    started = perf()
                    try:
                        await peer.write(entry)
                    except QueueFullError:
                        refused += 1
                        if in_window:
                            latencies.append(perf() - started)
                        await asyncio.sleep(RETRY_REFUSED)
                        continue
                    if in_window:
                        latencies.append(perf() - started)
                    break
            await asyncio.sleep(0)
            if len(timeline) and timeline[-1]["rss"] > rss_limit:
                stopped_early = f"stopped early: process RSS passed {rss_limit >> 20} MiB"
                break
        mark["w1"], mark["t1"] = written(), loop.time()
        backlog_end = peer.backlog()
    rss_end = rss()
    cpu = PROC.cpu_times()
    sample_task.cancel()
    if "w0" not in mark:
        mark["w0"], mark["t0"] = 0, t_start
    window = mark["t1"] - mark["t0"]
    result: dict[str, Any] = {
        "kind": cfg["kind"], "name": cfg.get("name", cfg["kind"]), "settings": cfg.get("settings", {}),
        "latency_s": cfg.get("latency"), "offered_rate": rate or None,
        "offered": offered, "refused": refused,
        "window_s": round(window, 3), "written_in_window": mark["w1"] - mark["w0"],
        "written_per_s": (mark["w1"] - mark["w0"]) / window if window > 0 else 0.0,
        "written_total": mark["w1"], "backlog_end": backlog_end,
        "rss_start": rss_start, "rss_end": rss_end, "rss_peak": peak_rss(),
        "stopped_early": stopped_early,
        "cpu_s": round(cpu.user + cpu.system - cpu_start, 2), "wall_s": round(mark["t1"] - t_start, 2),
    }
    if isinstance(peer, LogWriterPeer):
        peer.sync_counters()
        result["accepted"] = peer.writer.metrics.accepted
        hist = {s.name: s.value for f in peer.writer.metrics.append_seconds.collect() for s in f.samples}
        if hist.get("blobwriter_append_seconds_count"):
            result["append_mean_s"] = hist["blobwriter_append_seconds_sum"] / hist["blobwriter_append_seconds_count"]
    if isinstance(peer, OtelPeer):
        result["dropped"] = peer.dropped()
        result["emitted"] = peer.emitted
    else:
        result["dropped"] = peer.c.dropped
    result.update(appends=peer.c.appends, frames=peer.c.frames, retries=peer.c.retries, throttled=peer.c.throttled,
                  bytes_raw=peer.c.bytes_raw, bytes_stored=peer.c.bytes_stored)
    if latencies:
        ordered = sorted(latencies)
        result["call_latency"] = {f"p{q}": nearest_rank(ordered, q) for q in (50, 90, 99, 99.9)}
        result["call_latency"]["max"] = ordered[-1]
        result["call_latency"]["count"] = len(ordered)
    result["timeline"] = timeline
    drain = float(cfg.get("drain", 0))
    if isinstance(peer, LogWriterPeer) and drain > 0:
        # Everything accepted is written? Wait for it (bounded), then stop the writer cleanly.
        started = loop.time()
        try:
            await asyncio.wait_for(peer.writer.flush(), drain)
            result["drained_s"] = round(loop.time() - started, 2)
            await peer.writer.stop(timeout=5)
        except TimeoutError:
            result["drained_s"] = None
        peer.sync_counters()
        m = peer.writer.metrics
        result["after_drain"] = {"accepted": m.accepted, "written": m.written, "failed": m.failed,
                                 "backlog": m.queue_depth(), "appends": m.appends, "frames": m.frames,
                                 "retries": m.retries,
                                 "bytes_raw": m.bytes_raw, "bytes_stored": m.bytes_stored}
    return result


def main() -> None:
    cfg = orjson.loads(sys.argv[1])
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    logging.getLogger("azure").setLevel(logging.ERROR)
    if cfg.get("uvloop"):
        import uvloop

        uvloop.install()
    result = asyncio.run(asyncio.wait_for(run(cfg), cfg["warmup"] + cfg["measure"] + cfg.get("drain", 0) + 60))
    sys.stdout.write("\nRESULT " + orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()
    # Peers that are not drained (a backlog the store cannot take) end here, without a flush.
    os._exit(0)


if __name__ == "__main__":
    main()
