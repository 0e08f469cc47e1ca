"""Write 10,000 entries through LogWriter to Azurite, then read them back: each present once.

Run with Azurite listening (`make run` starts one on 127.0.0.1:10000):
    .venv/bin/python examples/write_and_read.py
BLOBWRITER_STORAGE overrides the storage (default: UseDevelopmentStorage=true).
"""

import asyncio
import os
import sys
import uuid
from datetime import UTC, datetime

import orjson

from blobwriter import LogWriter, Reader, Settings, StoreError, date_range, keygen, open_store


async def main(count: int = 10_000) -> None:
    settings = Settings.from_values({
        "storage": os.environ.get("BLOBWRITER_STORAGE", "UseDevelopmentStorage=true"),
        "container": f"example-{uuid.uuid4().hex[:8]}",
        "encryption_key": keygen(),
        "batch_size": 500,
    })
    probe = open_store(settings)
    try:
        await probe.open()  # fail fast, and clearly, when storage is not there
    except StoreError as exc:
        sys.exit(f"storage is not reachable ({exc});\nstart Azurite first, e.g. with `make run`")
    finally:
        await probe.close()
    started = datetime.now(UTC).date()
    async with LogWriter(settings) as writer:  # start() ... stop(): stop flushes the queue
        for n in range(count):
            await writer.write({"id": n, "user": "alice@contoso.com", "deployment": "gpt-4o",
                                "tokens": {"prompt": 30, "completion": 70}, "cost_eur": 0.0007})
        print(f"accepted {writer.metrics.accepted} entries")

    store = open_store(settings)
    reader = Reader(store, settings.keys)
    days = date_range(started, datetime.now(UTC).date())  # entries carry the UTC time they were written
    try:
        ids = [orjson.loads(line)["id"] async for line in reader.entries(days)]
    finally:
        await store.close()
    assert sorted(ids) == list(range(count)), "every entry exactly once"
    print(f"read back {len(ids)} entries, each once, from container {settings.container!r} "
          f"({reader.report.frames} frames, {reader.report.bytes} bytes stored)")


if __name__ == "__main__":
    asyncio.run(main())
