"""CPU-only baselines, on one core: orjson.loads of the entries, and the encode path against bare codecs."""

from __future__ import annotations

import gzip
import os
import time
from typing import Any

import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from blobwriter.codec import GZIP_LEVEL, Encoder, _fast_gzip
from blobwriter.config import Settings
from blobwriter.entries import prepare
from blobwriter.keys import SecretKey
from blobwriter.layout import writer_blob


def _best(fn: Any, rounds: int) -> float:
    """The least process CPU time of `rounds` runs of fn (the machine is shared: the minimum is the cost)."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        fn()
        best = min(best, time.process_time() - started)
    return best


def parse_rate(lines: list[bytes], seconds: float) -> dict[str, Any]:
    loads = orjson.loads
    rounds = max(3, int(seconds / 0.08))

    def run() -> None:
        for line in lines:
            loads(line)

    best = _best(run, rounds)
    return {"entries_per_s": len(lines) / best, "us_per_entry": best / len(lines) * 1e6, "rounds": rounds,
            "mean_entry_bytes": sum(map(len, lines)) / len(lines)}


def encode_cost(entries: list[dict[str, Any]], batch: int, rounds: int) -> dict[str, Any]:
    """CPU per entry: the writer's path (entries.prepare, Encoder.body, .seal) vs bare serialize+gzip+AES-GCM."""
    key = os.urandom(32)
    max_entry_bytes = Settings().max_entry_bytes
    encoder = Encoder(SecretKey(key))
    aead = AESGCM(key)
    batches = [entries[i:i + batch] for i in range(0, len(entries) - batch + 1, batch)]
    n = sum(len(b) for b in batches)
    dumps = orjson.dumps

    def body(lines: list[bytes], sequence: int, date: str) -> Any:
        return encoder.body(lines, sequence, date=date)

    def blob(date: str) -> str:  # the name a frame is sealed for (version 2 authenticates it)
        return writer_blob("", date, encoder.writer_id.hex(), 0)

    def writer_path() -> None:
        for i, b in enumerate(batches):
            prepared = [prepare(e, max_entry_bytes) for e in b]
            encoder.seal(body([p.line for p in prepared], i, prepared[0].date), blob=blob(prepared[0].date))

    def bare(compress: Any) -> Any:
        def run() -> None:
            for b in batches:
                plain = b"\n".join([dumps(e) for e in b]) + b"\n"
                aead.encrypt(os.urandom(12), compress(plain), None)
        return run

    def only_dumps() -> None:
        for b in batches:
            b"\n".join([dumps(e) for e in b])

    bares = {
        "stdlib gzip level 6": lambda d: gzip.compress(d, compresslevel=6, mtime=0),
        "stdlib gzip level 1": lambda d: gzip.compress(d, compresslevel=1, mtime=0),
    }
    if _fast_gzip is not None:
        bares["isal igzip level 1 (the codec's own)"] = lambda d: _fast_gzip.compress(d, compresslevel=1, mtime=0)
    result: dict[str, Any] = {"batch": batch, "entries": n, "rounds": rounds, "codec_gzip": (
        f"isal igzip level {GZIP_LEVEL}" if _fast_gzip is not None else f"zlib level {GZIP_LEVEL}")}
    writer_s = _best(writer_path, rounds)
    result["writer_us_per_entry"] = writer_s / n * 1e6
    result["orjson_dumps_us_per_entry"] = _best(only_dumps, rounds) / n * 1e6
    result["bare"] = {}
    for name, fn in bares.items():
        bare_s = _best(bare(fn), rounds)
        result["bare"][name] = {"us_per_entry": bare_s / n * 1e6, "writer_ratio": writer_s / bare_s}
    # Sizes: what one frame of `batch` entries stores.
    raw = stored = 0
    for i, b in enumerate(batches):
        prepared = [prepare(e, max_entry_bytes) for e in b]
        frame = body([p.line for p in prepared], i, prepared[0].date)
        raw += frame.plaintext_length
        stored += len(encoder.seal(frame, blob=blob(prepared[0].date)))
    result["compression_ratio"] = raw / stored
    result["stored_bytes_per_entry"] = stored / n
    result["json_bytes_per_entry"] = raw / n
    return result
