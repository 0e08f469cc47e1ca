"""Test helpers: read entries back through the real Reader, inspect and rewrite stored bytes."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from typing import Any

import orjson

from blobwriter.codec import FrameHeader, walk_frames
from blobwriter.config import Settings
from blobwriter.keys import SecretKey
from blobwriter.reader import Reader, ReadReport
from blobwriter.store import Store, open_store

APPEND_PIECE = 4 * 1024 * 1024


async def read_back(settings: Settings, dates: Iterable[str], keys: Iterable[SecretKey] | None = None,
                    store: Store | None = None, *, verify: bool = False) -> tuple[list[dict[str, Any]], ReadReport]:
    """Every entry of `dates` as read by a fresh Reader (its own store unless one is given);
    verify=True also checks frames against the writers' index frames, as `blobwriter verify` does."""
    own = store is None
    store = open_store(settings) if store is None else store
    reader = Reader(store, settings.keys if keys is None else keys, check_index=verify, id_field=settings.id_field)
    try:
        entries = [orjson.loads(line) async for line in reader.entries(list(dates))]
    finally:
        if own:
            await store.close()
    return entries, reader.report


def assert_each_once(entries: list[dict[str, Any]], expected_ids: Iterable[str]) -> None:
    """Every expected id is present exactly once, and nothing else is."""
    expected = list(expected_ids)
    assert len(set(expected)) == len(expected), "test bug: expected ids are not unique"
    counts = Counter(e["id"] for e in entries)
    repeated = {i: n for i, n in counts.items() if n > 1}
    assert not repeated, f"entries read more than once: {sorted(repeated)[:10]}"
    missing = set(expected) - set(counts)
    extra = set(counts) - set(expected)
    assert not missing, f"{len(missing)} entries missing, e.g. {sorted(missing)[:10]}"
    assert not extra, f"{len(extra)} unexpected entries, e.g. {sorted(extra)[:10]}"


async def blob_bytes(store: Store, name: str) -> bytes:
    return b"".join([chunk async for chunk in store.read(name)])


def frames_in(data: bytes) -> list[tuple[int, FrameHeader]]:
    """(offset, header) of each frame of an undamaged blob, walking the headers."""
    return list(walk_frames(data))


def container_client(settings: Settings) -> Any:
    from azure.storage.blob.aio import ContainerClient

    return ContainerClient.from_connection_string(settings.require("storage"), settings.container)


async def list_blobs(settings: Settings) -> list[str]:
    async with container_client(settings) as container:
        return sorted([b.name async for b in container.list_blobs()])


async def committed_blocks(settings: Settings, name: str) -> int:
    async with container_client(settings) as container:
        properties = await container.get_blob_client(name).get_blob_properties()
        return int(properties.append_blob_committed_block_count)


async def replace_blob(settings: Settings, name: str, data: bytes) -> None:
    """Replace an append blob's content (append blobs cannot be rewritten in place)."""
    async with container_client(settings) as container:
        blob = container.get_blob_client(name)
        await blob.delete_blob()
        await blob.create_append_blob()
        for start in range(0, len(data), APPEND_PIECE):
            piece = data[start:start + APPEND_PIECE]
            await blob.append_block(piece, length=len(piece))


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment for `python -m blobwriter` that selects the same storage and keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOBWRITER_")}
    env.update({
        "BLOBWRITER_STORAGE": settings.require("storage"),
        "BLOBWRITER_CONTAINER": settings.container,
        "BLOBWRITER_BLOB_PREFIX": settings.blob_prefix,
    })
    if settings.encryption_key is not None:
        env["BLOBWRITER_ENCRYPTION_KEY"] = base64.b64encode(settings.encryption_key.raw).decode()
    if settings.previous_keys:
        env["BLOBWRITER_PREVIOUS_KEYS"] = ",".join(base64.b64encode(k.raw).decode() for k in settings.previous_keys)
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m blobwriter ARGS` and capture its output as text."""
    return subprocess.run([sys.executable, "-m", "blobwriter", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)
