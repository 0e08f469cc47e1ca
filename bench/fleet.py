"""One process of a fleet: `python -m bench.fleet '<json config>'` runs `writers` LogWriters, each with
its own writer id (as Functions instances have), all writing entries of the same UTC date.

Each writer is offered `rate` entries/s by a generator task of its own; a refused entry
(QueueFullError) is offered again 5 ms later. Every entry gets a unique id, `f{writer:02d}{n:09d}`
(writer: its index in the whole fleet; n: 0, 1, 2, ... in the order accepted), as its first key, so
the bench can read everything back and count each entry lost or duplicated. With `layout:
"shared"` every writer appends to version 0.1's one blob per date instead of blobs of its own
(the baseline). The writers start offering at the wall-clock time `start_at`, so that the
fleet's processes run their windows together. After the window each writer is stopped (its
queue drained, at most stop_timeout). The result (one JSON object) is the last line on stdout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

import orjson
import psutil

from bench.env import entry_lines

RETRY_REFUSED = 0.005
PROC = psutil.Process()


def entry_id(writer: int, n: int) -> str:
    return f"f{writer:02d}{n:09d}"


def parse_id(line: bytes) -> tuple[int, int] | None:
    """(writer, n) of an entry line written by this module (its id is the first key), or None."""
    if not line.startswith(b'{"id":"f'):
        return None
    return int(line[8:10]), int(line[10:19])


def templates(date: str) -> list[dict[str, Any]]:
    """The sample entries, moved to `date` (UTC, same time of day), without their ids."""
    out = []
    for line in entry_lines():
        entry = orjson.loads(line)
        entry.pop("id", None)
        entry["timestamp"] = f"{date}T{entry['timestamp'][11:23]}Z"
        out.append(entry)
    return out


async def run(cfg: dict[str, Any]) -> dict[str, Any]:
    from blobwriter import layout
    from blobwriter.config import Settings
    from blobwriter.errors import QueueFullError
    from blobwriter.writer import LogWriter

    values = {"storage": cfg["storage"], "encryption_key": cfg["key"], "container": cfg["container"],
              **cfg.get("settings", {})}
    settings = Settings.from_values(values)
    entries = templates(cfg["date"])
    first = int(cfg["first_writer"])
    writers = [LogWriter(settings) for _ in range(int(cfg["writers"]))]
    if cfg.get("layout") == "shared":  # version 0.1's naming: every writer appends to the date's one blob
        for w in writers:
            w._appender.blob_name = (  # type: ignore[method-assign]
                lambda date, part, store=w.store: layout.shared_blob(store.prefix, date, part))
    await asyncio.gather(*(w.start() for w in writers))
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, float(cfg["start_at"]) - time.time()))
    rate, warmup, measure = float(cfg["rate"]), float(cfg["warmup"]), float(cfg["measure"])
    t_start = loop.time()
    t_warm, t_end = t_start + warmup, t_start + warmup + measure
    cpu0 = PROC.cpu_times()
    refused = [0] * len(writers)
    offered = [0] * len(writers)

    async def generate(k: int, writer: LogWriter) -> None:
        gid, n, i = first + k, 0, k * 7919
        count = len(entries)
        while True:
            now = loop.time()
            if now >= t_end:
                return
            due = int(rate * (now - t_start)) - n
            if due <= 0:
                await asyncio.sleep(0.002)
                continue
            for _ in range(min(due, 200)):
                entry = {"id": entry_id(gid, n), **entries[i % count]}
                i += 1
                offered[k] += 1
                while True:
                    try:
                        await writer.write(entry)
                        break
                    except QueueFullError:
                        refused[k] += 1
                        await asyncio.sleep(RETRY_REFUSED)
                n += 1
            await asyncio.sleep(0)

    def written() -> int:
        return sum(w.metrics.written for w in writers)

    mark: dict[str, float] = {}

    async def at_warm() -> None:
        await asyncio.sleep(max(0.0, t_warm - loop.time()))
        mark["w0"], mark["t0"] = written(), loop.time()

    warm = asyncio.create_task(at_warm())
    await asyncio.gather(*(generate(k, w) for k, w in enumerate(writers)))
    await warm
    mark["w1"], mark["t1"] = written(), loop.time()
    backlog = sum(w.queue_depth for w in writers)
    rss_end = int(PROC.memory_info().rss)
    started = loop.time()
    await asyncio.gather(*(w.stop(timeout=float(cfg.get("stop_timeout", settings.stop_timeout))) for w in writers))
    drained = loop.time() - started
    cpu = PROC.cpu_times()
    window = mark["t1"] - mark["t0"]
    per_writer = []
    for k, w in enumerate(writers):
        s = w.metrics.snapshot()
        per_writer.append({"writer": first + k, "writer_id": w.writer_id, "offered": offered[k], "refused": refused[k],
                           **{x: s[x] for x in ("accepted", "written", "failed", "frames", "appends", "retries",
                                                "throttled", "bytes_stored")}})
    return {"writers": per_writer, "window_s": round(window, 3), "written_in_window": mark["w1"] - mark["w0"],
            "written_per_s": (mark["w1"] - mark["w0"]) / window if window > 0 else 0.0,
            "backlog_end": backlog, "drained_s": round(drained, 2), "rss_end": rss_end,
            "cpu_s": round(cpu.user + cpu.system - cpu0.user - cpu0.system, 2),
            "wall_s": round(loop.time() - t_start, 2)}


def main() -> None:
    cfg = orjson.loads(sys.argv[1])
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    result = asyncio.run(run(cfg))
    sys.stdout.write("\nRESULT " + orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
