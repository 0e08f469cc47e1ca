"""`blobwriter export`: hive partitions read back with pyarrow and DuckDB, to a directory and to Azurite."""

from __future__ import annotations

import fcntl
import gzip
import io
import os
import pty
import re
import resource
import signal
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

from blobwriter.cli import keygen
from blobwriter.config import Settings
from blobwriter.query.destination import BlobDestination, DirectoryDestination, open_destination
from tests.conftest import connection_string, free_port
from tests.support.azurite import ACCOUNT, ACCOUNT_KEY
from tests.support.proxy import HoldingProxy
from tests.support.query import day_of, store_entries
from tests.support.readback import cli_env, frames_in, run_cli

FIRST, LAST = "2026-11-24", "2026-12-01"


def export(settings: Settings, out: str, *args: str, first: str = FIRST, last: str = LAST, code: int = 0) -> Any:
    result = run_cli("export", "--date", first, "--until", last, "--out", out, *args, env=cli_env(settings))
    assert result.returncode == code, result.stderr
    return result


def by_day(entries: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    days: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        days.setdefault(day_of(e), []).append(e)
    return days


def test_parquet_to_a_directory_reads_back_whole(sample_store: tuple[Settings, list[dict[str, Any]]],
                                                 tmp_path: Path) -> None:
    settings, entries = sample_store
    out = tmp_path / "lake"
    result = export(settings, str(out))
    days = by_day(entries)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("date=")) == [f"date={d}" for d in sorted(days)]
    for day, group in days.items():
        assert f"{day}: {len(group):,} entries -> {out}/date={day} (1 file(s)" in result.stderr
        assert [p.name for p in (out / f"date={day}").iterdir()] == ["part-0000.parquet"]

    # pyarrow, hive partitioning: every entry once, complete in entry_json, in its UTC day's partition.
    table = ds.dataset(out, format="parquet", partitioning="hive", exclude_invalid_files=True).to_table()
    assert table.num_rows == len(entries)
    rows = table.select(["id", "date", "entry_json", "cost_eur", "tokens"]).to_pylist()
    originals = {e["id"]: e for e in entries}
    assert Counter(r["id"] for r in rows) == Counter(list(originals))
    for row in rows:
        assert orjson.loads(row["entry_json"]) == originals[row["id"]]
        assert str(row["date"]) == day_of(originals[row["id"]])
        assert row["cost_eur"] == originals[row["id"]]["cost_eur"] and row["tokens"] == originals[row["id"]]["tokens"]
    assert pa.types.is_struct(table.schema.field("request").type)

    # DuckDB over the same files: counts and sums per day equal the entries'.
    got = duckdb.sql(f"SELECT date::VARCHAR AS day, count(*), sum(cost_eur), sum(tokens.total), "
                     f"count(*) FILTER (WHERE status_code >= 400) FROM read_parquet('{out}/*/*.parquet', "
                     "hive_partitioning = true) GROUP BY day ORDER BY day").fetchall()
    assert [(d, n, pytest.approx(c), t, err) for d, n, c, t, err in got] == [
        (day, len(g), pytest.approx(sum(e["cost_eur"] for e in g)), sum(e["tokens"]["total"] for e in g if e["tokens"]),
         sum(1 for e in g if e["status_code"] >= 400)) for day, g in sorted(days.items())]
    # Typed columns in the entries' field order, then entry_json.
    for path in out.glob("date=*/*.parquet"):
        assert pq.read_schema(path).names[:3] == ["id", "timestamp", "user"]
        assert pq.read_schema(path).names[-1] == "entry_json"
    marker = orjson.loads((out / "_blobwriter" / "exported" / "2026-11-25.json").read_bytes())
    assert marker["entries"] == len(days["2026-11-25"]) and marker["files"] == ["part-0000.parquet"]
    assert marker["format"] == "parquet" and marker["damaged_frames"] == 0


def test_jsonl_holds_the_entries_as_stored(sample_store: tuple[Settings, list[dict[str, Any]]], tmp_path: Path) -> None:
    settings, entries = sample_store
    out = tmp_path / "jsonl"
    export(settings, str(out), "--format", "jsonl", first="2026-11-25", last="2026-11-26")
    for day in ("2026-11-25", "2026-11-26"):
        with gzip.open(out / f"date={day}" / "part-0000.jsonl.gz") as handle:
            got = [orjson.loads(line) for line in handle]
        expected = by_day(entries)[day]
        assert sorted(got, key=lambda e: e["id"]) == sorted(expected, key=lambda e: e["id"])
    count = duckdb.sql(f"SELECT count(*) FROM read_json('{out}/*/*.jsonl.gz')").fetchall()
    assert count == [(len(by_day(entries)["2026-11-25"]) + len(by_day(entries)["2026-11-26"]),)]


def test_reexport_replaces_the_partition(sample_store: tuple[Settings, list[dict[str, Any]]], tmp_path: Path) -> None:
    settings, entries = sample_store
    out = tmp_path / "lake"
    day = "2026-11-26"
    expected = len(by_day(entries)[day])
    export(settings, str(out), "--rows-per-file", "100", first=day, last=day)
    parts = sorted((out / f"date={day}").iterdir())
    assert [p.name for p in parts] == [f"part-{i:04d}.parquet" for i in range(-(-expected // 100))]
    assert [pq.read_metadata(p).num_rows for p in parts] == [100] * (expected // 100) + [expected % 100]
    assert len({pq.read_schema(p) for p in parts}) == 1  # one schema for the whole day
    export(settings, str(out), first=day, last=day)  # again, default file size: one file replaces the four
    assert [p.name for p in (out / f"date={day}").iterdir()] == ["part-0000.parquet"]
    for _ in range(2):
        export(settings, str(out), "--rows-per-file", "1000", first=day, last=day)
    assert pq.read_table(out / f"date={day}").num_rows == expected  # never duplicated
    assert sorted(p.name for p in out.iterdir()) == ["_blobwriter", f"date={day}"]  # no staging left behind


async def test_a_day_without_entries_leaves_the_destination_alone(sample_store: tuple[Settings, list[dict[str, Any]]],
                                                                  tmp_path: Path) -> None:
    settings, _ = sample_store
    out = tmp_path / "lake"
    (out / "date=2020-01-01").mkdir(parents=True)
    (out / "date=2020-01-01" / "part-0000.parquet").write_bytes(b"kept")
    result = export(settings, str(out), first="2020-01-01", last="2020-01-01")
    assert "2020-01-01: no entries; nothing written" in result.stderr
    assert (out / "date=2020-01-01" / "part-0000.parquet").read_bytes() == b"kept"


def _list(client: BlobServiceClient, container: str) -> list[str]:
    return sorted(b.name for b in client.get_container_client(container).list_blobs())


def test_parquet_to_a_blob_container(sample_store: tuple[Settings, list[dict[str, Any]]], azurite: str) -> None:
    settings, entries = sample_store
    container = f"x{uuid.uuid4().hex[:20]}"
    out = f"{connection_string(azurite)}Container={container};Prefix=gateway/v1"
    day = "2026-11-27"
    result = export(settings, out, "--rows-per-file", "150", first=day, last=day)
    client = BlobServiceClient.from_connection_string(connection_string(azurite))
    expected = by_day(entries)[day]
    parts = [f"gateway/v1/date={day}/part-{i:04d}.parquet" for i in range(-(-len(expected) // 150))]
    assert _list(client, container) == sorted([f"gateway/v1/_blobwriter/exported/{day}.json", *parts])
    assert f"{day}: {len(expected):,} entries -> " in result.stderr
    assert f"/{container}/gateway/v1/date={day}" in result.stderr

    def read_back() -> list[dict[str, Any]]:
        rows = []
        for name in _list(client, container):
            if name.endswith(".parquet"):
                blob = client.get_blob_client(container, name)
                assert blob.get_blob_properties().content_settings.content_type == "application/vnd.apache.parquet"
                rows += pq.read_table(io.BytesIO(blob.download_blob().readall())).to_pylist()
        return rows

    rows = read_back()
    assert sorted(orjson.loads(r["entry_json"])["id"] for r in rows) == sorted(e["id"] for e in expected)
    marker = client.get_blob_client(container, f"gateway/v1/_blobwriter/exported/{day}.json")
    assert marker.get_blob_properties().content_settings.content_type == "application/json"
    assert orjson.loads(marker.download_blob().readall())["entries"] == len(expected)
    assert sum(r["cost_eur"] for r in rows) == pytest.approx(sum(e["cost_eur"] for e in expected))
    # Re-export with bigger files: the partition is replaced and the stale parts are deleted.
    export(settings, out, first=day, last=day)
    assert _list(client, container) == sorted([f"gateway/v1/_blobwriter/exported/{day}.json",
                                               f"gateway/v1/date={day}/part-0000.parquet"])
    assert len(read_back()) == len(expected)


def test_jsonl_to_a_container_url_with_a_sas(sample_store: tuple[Settings, list[dict[str, Any]]], azurite: str) -> None:
    settings, entries = sample_store
    container = f"x{uuid.uuid4().hex[:20]}"
    client = BlobServiceClient.from_connection_string(connection_string(azurite))
    client.create_container(container)
    sas = generate_container_sas(ACCOUNT, container, account_key=ACCOUNT_KEY,
                                 permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True),
                                 expiry=datetime.now(UTC) + timedelta(hours=1))
    day = "2026-11-28"
    result = export(settings, f"{azurite}/{container}/exports?{sas}", "--format", "jsonl", first=day, last=day)
    # QA round 9: the SAS (a credential) was printed in the day's line, in the middle of the URL.
    where = f"{azurite}/{container}/exports/date={day}"
    assert f"{day}: {len(by_day(entries)[day]):,} entries -> {where} (" in result.stderr
    assert "sig=" not in result.stderr and sas.split("sig=")[1] not in result.stderr
    blob = client.get_blob_client(container, f"exports/date={day}/part-0000.jsonl.gz")
    lines = gzip.decompress(blob.download_blob().readall()).splitlines()
    assert sorted(orjson.loads(line)["id"] for line in lines) == sorted(e["id"] for e in by_day(entries)[day])


VARYING = [
    {"timestamp": "2026-11-25T10:00:00Z", "id": "v1", "x": 1, "meta": {"a": 1}, "tags": ["a"]},
    {"timestamp": "2026-11-25T10:00:01Z", "id": "v2", "x": "one", "meta": {"a": {"b": 2}}, "tags": [1, "b"]},
    {"timestamp": "2026-11-25T10:00:02Z", "id": "v3", "x": None, "meta": "flat", "extra": True},
]


async def test_fields_whose_type_varies_do_not_break_the_export(make_settings: Callable[..., Settings],
                                                                tmp_path: Path) -> None:
    settings = make_settings()
    await store_entries(settings, VARYING)
    out = tmp_path / "lake"
    export(settings, str(out), first="2026-11-25", last="2026-11-25")
    table = pq.read_table(out / "date=2026-11-25")
    kinds = {f.name: f.type for f in table.schema}
    assert kinds["x"] == pa.json_(pa.string()) and kinds["meta"] == pa.json_(pa.string())
    assert kinds["tags"] == pa.list_(pa.json_(pa.string())) and kinds["extra"] == pa.bool_()
    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    assert [orjson.loads(r["entry_json"]) for r in rows] == VARYING
    assert [r["x"] for r in rows] == ["1", '"one"', None]
    got = duckdb.sql(f"SELECT id, x->>'$' AS x, meta->'$.a' AS a FROM read_parquet('{out}/*/*.parquet') "
                     "ORDER BY id").fetchall()
    assert got == [("v1", "1", "1"), ("v2", "one", '{"b":2}'), ("v3", None, None)]


async def test_damaged_frames_reported_like_read(make_settings: Callable[..., Settings],
                                                 sample_entries: list[dict[str, Any]], tmp_path: Path) -> None:
    settings = make_settings(storage=str(tmp_path / "store"))
    day = [e for e in sample_entries if e["timestamp"].startswith("2026-11-29T") and e["timestamp"].endswith("Z")]
    await store_entries(settings, day, batch_size=30)
    [path] = (tmp_path / "store" / "2026-11-29").glob("*.log")  # the one writer's blob of the day
    data = bytearray(path.read_bytes())
    offset, _ = [(o, h) for o, h in frames_in(bytes(data)) if not h.is_index][2]
    data[offset + 100] ^= 0x40
    path.write_bytes(bytes(data))
    read = run_cli("read", "--date", "2026-11-29", env=cli_env(settings))
    survivors = {orjson.loads(line)["id"] for line in read.stdout.splitlines()}
    for fmt in ("parquet", "jsonl"):
        out = tmp_path / fmt
        result = export(settings, str(out), "--format", fmt, first="2026-11-29", last="2026-11-29", code=1)
        assert result.stderr.endswith(read.stderr)  # the day's line, then the same DAMAGED lines and summary
        assert f"DAMAGED 2026-11-29/{path.name}" in result.stderr
        reader = "read_parquet" if fmt == "parquet" else "read_json"
        got = duckdb.sql(f"SELECT id FROM {reader}('{out}/date=*/*')").fetchall()
        assert {i for (i,) in got} == survivors and len(got) == len(survivors) < len(day)
        # The marker records the damage (QA observation: it looked like a whole day's export).
        marker = orjson.loads((out / "_blobwriter" / "exported" / "2026-11-29.json").read_bytes())
        assert (marker["entries"], marker["damaged_frames"]) == (len(survivors), 1)


@pytest.mark.parametrize("out, message", [
    ("UseDevelopmentStorage=true", ";Container=NAME"),
    ("https://account.blob.core.windows.net", "names no container"),
    ("https://account.blob.core.windows.net/", "names no container"),
    # QA round 9: these were directories (./abfss:/exports@acct.dfs.core.windows.net/gw), jsonl exit 0.
    ("abfss://exports@acct.dfs.core.windows.net/gw/v1", "abfss://... is neither a directory, an http(s) container "
     "URL nor a connection string with ;Container=NAME; the same place through the Blob endpoint: "
     "https://acct.blob.core.windows.net/exports/gw/v1"),
    ("s3://bucket/lake", "s3://... is neither a directory"),
    # QA round 9: Azure's 400 named no field, and the HTTP stack normalizes '..' (another container).
    ("UseDevelopmentStorage=true;Container=Bad_Name", "'export destination container' has value 'Bad_Name': a "
     "container name is 3-63 lowercase letters"),
    ("UseDevelopmentStorage=true;Container=exports;Prefix=gw/../logs", "must not contain '..'"),
    ("https://acct.blob.core.windows.net/exports/gw/./v1", "must not have empty ('//') or '.' segments"),
    ("UseDevelopmentStorage=true;Container=exports;Prefix=gw//v1", "must not have empty ('//') or '.' segments"),
])
def test_bad_destinations_exit_2(out: str, message: str, tmp_path: Path) -> None:
    env = cli_env(Settings.from_values({"storage": str(tmp_path / "store"), "encryption_key": keygen()}))
    for fmt in ("parquet", "jsonl"):
        result = run_cli("export", "--date", "2026-11-25", "--out", out, "--format", fmt, env=env, cwd=str(tmp_path))
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing made on the way


def test_a_directory_whose_name_holds_a_colon(sample_store: tuple[Settings, list[dict[str, Any]]],
                                              tmp_path: Path) -> None:
    """QA round 9: pyarrow took the relative part path `lake:2026/...` for a URI and refused it."""
    settings, entries = sample_store
    day = "2026-11-25"
    result = run_cli("export", "--date", day, "--out", "lake:2026", env=cli_env(settings), cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    table = pq.read_table(str(tmp_path / "lake:2026" / f"date={day}" / "part-0000.parquet"))
    assert sorted(table.column("id").to_pylist()) == sorted(e["id"] for e in by_day(entries)[day])


def test_destination_failures_are_one_line_exit_2(sample_store: tuple[Settings, list[dict[str, Any]]], azurite: str,
                                                  tmp_path: Path) -> None:
    """QA F3: an --out that is a file, a directory that cannot be made, storage that refuses or cannot be
    reached were tracebacks with exit 1 ("damage found"), the last after some 80 s of SDK retries."""
    settings, _ = sample_store
    (tmp_path / "file").write_text("not a directory")
    container = f"x{uuid.uuid4().hex[:20]}"
    BlobServiceClient.from_connection_string(connection_string(azurite)).create_container(container)
    read_only = generate_container_sas(ACCOUNT, container, account_key=ACCOUNT_KEY,
                                       permission=ContainerSasPermissions(read=True, list=True),
                                       expiry=datetime.now(UTC) + timedelta(hours=1))
    unreachable = connection_string(azurite).replace(azurite.rsplit("/", 1)[0], f"http://127.0.0.1:{free_port()}")
    day = "2026-11-26"
    for out, needle in ((str(tmp_path / "file"), f"creating the export directory {tmp_path / 'file'} failed"),
                        ("/proc/nope/lake", "creating the export directory /proc/nope/lake failed"),
                        (f"{azurite}/{container}/lake?{read_only}", "403 AuthorizationPermissionMismatch"),
                        (f"{unreachable}Container=exports", "creating the export container at ")):
        started = time.monotonic()
        result = export(settings, out, first=day, last=day, code=2)
        assert result.stderr.splitlines()[-1].startswith("blobwriter: error: "), result.stderr
        assert needle in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert "sig=" not in result.stderr.replace("sig=REDACTED", "")
        assert time.monotonic() - started < 60
    assert (tmp_path / "file").read_text() == "not a directory"


def test_destination_forms() -> None:
    local = open_destination("./lake/gateway")
    assert isinstance(local, DirectoryDestination) and local.root == Path("lake/gateway")
    url = open_destination("https://acct.blob.core.windows.net/exports/gateway/v1")
    assert isinstance(url, BlobDestination)
    assert (url.container_name, url.prefix, url.endpoint, url._sas) == (
        "exports", "gateway/v1/", "https://acct.blob.core.windows.net", None)
    emulator = open_destination("http://127.0.0.1:10000/devstoreaccount1/exports?sv=1&sig=x")
    assert isinstance(emulator, BlobDestination)
    assert (emulator.container_name, emulator.prefix, emulator.endpoint, emulator._sas) == (
        "exports", "", "http://127.0.0.1:10000/devstoreaccount1", "sv=1&sig=x")
    string = open_destination("DefaultEndpointsProtocol=https;AccountName=a;AccountKey=a2V5;Container=exp;Prefix=/p/")
    assert isinstance(string, BlobDestination)
    assert (string.container_name, string.prefix) == ("exp", "p/")
    assert string._connection_string == "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=a2V5;"
    assert string.endpoint == "https://a.blob.core.windows.net/"  # as the SDK reads it, parsed once


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for n in range(depth):
        value = {"a": value} if n % 2 else [value]
    return value


async def test_wide_and_deep_entries_export_readably(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """QA round 9: more than 1,000 distinct top-level fields in a day crashed export (a traceback, exit 1);
    a field nested 200 levels deep (the writer takes 254) made a Parquet file pyarrow refuses to open."""
    settings = make_settings()
    wide = [{"timestamp": "2026-11-25T10:00:00Z", f"k{i}": i} for i in range(1001)]
    deep = [{"timestamp": "2026-11-26T10:00:00Z", "id": "d1", "deep": nested(200), "n": 1},
            {"timestamp": "2026-11-26T10:00:01Z", "id": "d2", "deep": nested(200), "n": 2}]
    await store_entries(settings, wide + deep)
    out = tmp_path / "lake"
    result = export(settings, str(out), first="2026-11-25", last="2026-11-26")
    assert "2026-11-25: note: the entries have more than 1,000 distinct top-level fields" in result.stderr

    table = pq.read_table(out / "date=2026-11-25")
    assert table.schema.names == ["entry_json"]
    assert sorted((orjson.loads(r) for r in table.column("entry_json").to_pylist()),
                  key=lambda e: next(k for k in e if k != "timestamp")) == sorted(
        wide, key=lambda e: next(k for k in e if k != "timestamp"))

    table = pq.read_table(out / "date=2026-11-26")  # opens: the depth past the limit is one JSON value
    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    assert [orjson.loads(r["entry_json"]) for r in rows] == deep and [r["n"] for r in rows] == [1, 2]
    assert "extension<arrow.json>" in str(table.schema.field("deep").type)  # typed down to the cut, JSON below

    def same(typed: Any, original: Any) -> bool:
        if isinstance(typed, str) and not isinstance(original, str):
            return orjson.loads(typed) == original  # the JSON value below the cut
        if isinstance(original, dict):
            return typed.keys() == original.keys() and all(same(typed[k], v) for k, v in original.items())
        if isinstance(original, list):
            return len(typed) == len(original) and all(same(t, o) for t, o in zip(typed, original, strict=True))
        return bool(typed == original)

    assert all(same(r["deep"], e["deep"]) for r, e in zip(rows, deep, strict=True))
    got = duckdb.sql(f"SELECT date::VARCHAR, count(*), sum(n) FROM read_parquet('{out}/*/*.parquet', "
                     "hive_partitioning = true, union_by_name = true) GROUP BY ALL ORDER BY 1").fetchall()
    assert got == [("2026-11-25", 1001, None), ("2026-11-26", 2, 3)]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_full_disk_is_one_line_and_leaves_no_staging(sample_store: tuple[Settings, list[dict[str, Any]]],
                                                       tmp_path: Path, fmt: str) -> None:
    """QA round 9: a jsonl export on a full disk ended in a traceback (closing the gzip stream to discard
    it failed again), exit 1, with its staging directory left. A file-size limit stands in for the disk:
    writing past it fails with EFBIG, as a full disk fails with ENOSPC."""
    settings, entries = sample_store
    out = tmp_path / "lake"
    day = "2026-11-25"
    (out / f"date={day}").mkdir(parents=True)
    (out / f"date={day}" / "part-0000.parquet").write_bytes(b"the old partition")

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # ignored signals stay ignored across exec
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    result = subprocess.run([sys.executable, "-m", "blobwriter", "export", "--date", day, "--format", fmt,
                             "--out", str(out)], env=cli_env(settings), capture_output=True, text=True,
                            timeout=120, preexec_fn=limit)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"blobwriter: error: writing {out}/.staging-")
    assert "File too large" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["_blobwriter", f"date={day}"]  # no staging,
    assert [p.name for p in (out / "_blobwriter").iterdir()] == ["exporting"]  # no marker,
    assert list((out / "_blobwriter" / "exporting").iterdir()) == []  # and the day's lock released
    assert (out / f"date={day}" / "part-0000.parquet").read_bytes() == b"the old partition"


async def test_a_field_named_date_does_not_meet_the_partition_column(make_settings: Callable[..., Settings],
                                                                     tmp_path: Path) -> None:
    """QA round 9: an entry's own `date` field and the hive partition's `date` were one column name: DuckDB
    gave the partition's value (the field's was gone), pyarrow the field's (the partition's was gone)."""
    settings = make_settings()
    entries = [{"timestamp": "2026-11-25T10:00:00Z", "id": "a", "date": "1999-12-31", "Date": 1},
               {"timestamp": "2026-11-25T11:00:00Z", "id": "b", "date": "1999-12-30", "Date": 2}]
    await store_entries(settings, entries)
    out = tmp_path / "lake"
    result = export(settings, str(out), first="2026-11-25", last="2026-11-25")
    assert "2026-11-25: note: field date has the partition column's name: its column is date_ " in result.stderr
    assert "2026-11-25: note: field Date has the partition column's name: its column is Date__ " in result.stderr
    got = duckdb.sql(f"SELECT id, date::VARCHAR, date_, Date__, entry_json->>'$.date' FROM read_parquet("
                     f"'{out}/*/*.parquet', hive_partitioning = true) ORDER BY id").fetchall()
    assert got == [("a", "2026-11-25", "1999-12-31", 1, "1999-12-31"),
                   ("b", "2026-11-25", "1999-12-30", 2, "1999-12-30")]
    table = ds.dataset(out, format="parquet", partitioning="hive").to_table()
    rows = sorted(table.select(["id", "date", "date_", "Date__"]).to_pylist(), key=lambda r: r["id"])
    assert rows == [{"id": "a", "date": "2026-11-25", "date_": "1999-12-31", "Date__": 1},
                    {"id": "b", "date": "2026-11-25", "date_": "1999-12-30", "Date__": 2}]
    assert sorted((orjson.loads(r) for r in table.column("entry_json").to_pylist()), key=lambda e: e["id"]) == entries


def on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, list[str]]:
    """Run `python -m blobwriter ARGS` with stdout and stderr on a pseudo-terminal of 120 columns; its exit
    code and the lines as a terminal shows them (a carriage return starts the line over)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "blobwriter", *args], env=env, stdin=subprocess.DEVNULL,
                               stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    data = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        data += chunk
    os.close(master)
    code = process.wait(timeout=120)
    shown = []
    for line in re.split(r"\r?\n", data.decode()):
        shown += [part for part in line.split("\r") if part.strip()]
    return code, shown


def test_the_progress_bar_counts_each_entry_once_and_keeps_off_the_day_lines(
        sample_store: tuple[Settings, list[dict[str, Any]]], tmp_path: Path) -> None:
    """QA round 9: Parquet's two passes over a day both counted (a day of 300 entries showed 600), and each
    day's line was printed after the bar's text on the bar's line."""
    settings, entries = sample_store
    days = by_day(entries)
    code, shown = on_a_terminal(["export", "--date", FIRST, "--until", "2026-11-27", "--out", str(tmp_path / "lake")],
                                cli_env(settings))
    assert code == 0, shown
    before = 0
    for n, day in enumerate(["2026-11-24", "2026-11-25", "2026-11-26", "2026-11-27"], 1):
        line = f"{day}: {len(days[day]):,} entries -> {tmp_path / 'lake'}/date={day} (1 file(s), "
        assert any(s.startswith(line) for s in shown), shown  # a line of its own, not after the bar's text
        for note in ("pass 1 of 2: column types", "pass 2 of 2: writing"):  # each pass starts at the day's start
            assert f"export {day} ({n}/4): {before:,} entries [" in next(s for s in shown if note in s and day in s)
        before += len(days[day])
    assert not any(s.startswith("export") and "entries ->" in s for s in shown)


async def test_an_integer_beyond_64_bits_is_exact(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """QA round 9: the C++ reader typed 18446744073709551615 (which the writer takes) a DOUBLE,
    1.8446744073709552e19, when the batch was otherwise uniform; typed value by value it was JSON."""
    settings = make_settings()
    entries = [{"timestamp": "2026-11-25T10:00:00Z", "id": f"u{i}", "u": 2**64 - 1 - i, "n": [{"v": 2**63 + i}]}
               for i in range(3)]
    await store_entries(settings, entries)
    out = tmp_path / "lake"
    export(settings, str(out), first="2026-11-25", last="2026-11-25")
    table = pq.read_table(out / "date=2026-11-25")
    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    assert [orjson.loads(r["u"]) for r in rows] == [e["u"] for e in entries]
    assert [[orjson.loads(item["v"]) for item in r["n"]] for r in rows] == [[e["n"][0]["v"]] for e in entries]
    got = duckdb.sql(f"SELECT sum(u::HUGEINT) FROM read_parquet('{out}/*/*.parquet')").fetchall()
    assert got == [(sum(e["u"] for e in entries),)]


def test_a_swap_cut_short_leaves_no_marker(sample_store: tuple[Settings, list[dict[str, Any]]], azurite: str) -> None:
    """QA round 9: Ctrl-C while a re-export swapped a day's blobs (the new part committed, old parts not yet
    deleted) left the day with its rows twice, and the old marker still said the day was whole. A leased old
    part, which cannot be deleted, cuts the swap short here the same way, every time."""
    settings, entries = sample_store
    container = f"x{uuid.uuid4().hex[:20]}"
    out = f"{connection_string(azurite)}Container={container}"
    day = "2026-11-26"
    expected = len(by_day(entries)[day])
    export(settings, out, "--rows-per-file", "100", first=day, last=day)
    client = BlobServiceClient.from_connection_string(connection_string(azurite)).get_container_client(container)
    marker = client.get_blob_client(f"_blobwriter/exported/{day}.json")
    assert orjson.loads(marker.download_blob().readall())["entries"] == expected
    leased = client.get_blob_client(f"date={day}/part-0002.parquet")
    lease = leased.acquire_lease(-1)

    result = export(settings, out, first=day, last=day, code=2)  # one file now: part-0002 must go, and cannot
    assert "blobwriter: error: replacing date=" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()  # the day is not claimed whole: it has part-0000 (all rows) and old parts
    lease.break_lease()
    export(settings, out, first=day, last=day)
    assert sorted(b.name for b in client.list_blobs()) == [f"_blobwriter/exported/{day}.json",
                                                           f"date={day}/part-0000.parquet"]
    assert orjson.loads(marker.download_blob().readall())["entries"] == expected


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
async def test_id_field_drops_a_retry_across_midnight_as_read_does(make_settings: Callable[..., Settings],
                                                                   tmp_path: Path, fmt: str) -> None:
    """QA round 9: with id_field, read, stats and sql over 11-24..11-25 counted a client's retry across
    midnight once, but export read each day with a Reader of its own and put it in both partitions."""
    settings = make_settings(id_field="id")
    await store_entries(settings, [{"id": "x", "timestamp": "2026-11-24T23:59:59Z"},
                                   {"id": "y", "timestamp": "2026-11-24T12:00:00Z"}])
    await store_entries(settings, [{"id": "x", "timestamp": "2026-11-25T00:00:01Z"},  # the retry
                                   {"id": "z", "timestamp": "2026-11-25T12:00:00Z"}])
    env = cli_env(settings, BLOBWRITER_ID_FIELD="id")
    read = run_cli("read", "--date", "2026-11-24", "--until", "2026-11-25", env=env)
    assert read.returncode == 0 and len(read.stdout.splitlines()) == 3
    out = tmp_path / "lake"
    result = run_cli("export", "--date", "2026-11-24", "--until", "2026-11-25", "--format", fmt, "--out", str(out),
                     env=env)
    assert result.returncode == 0, result.stderr
    reader = "read_parquet" if fmt == "parquet" else "read_json"
    got = duckdb.sql(f"SELECT date::VARCHAR, id FROM {reader}('{out}/*/*', hive_partitioning = true) "
                     "ORDER BY ALL").fetchall()
    assert got == [("2026-11-24", "x"), ("2026-11-24", "y"), ("2026-11-25", "z")]
    assert sorted(orjson.loads(line)["id"] for line in read.stdout.splitlines()) == ["x", "y", "z"]


async def test_an_account_key_that_is_not_base64_is_one_line_naming_the_destination(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """An --out whose AccountKey is not base64 failed with the SDK's bare "Incorrect padding"; the
    `storage` setting's check says it at load, and the destination's now says the same, key unshown."""
    settings = make_settings(storage=str(tmp_path / "store"))
    await store_entries(settings, [{"id": "k1", "timestamp": "2026-11-25T10:00:00Z"}])
    key = "not-base64"  # the SDK failed to decode it at the first request: "Incorrect padding"
    bad = f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};BlobEndpoint=http://127.0.0.1:1/x;"
    env = cli_env(settings)
    export = run_cli("export", "--date", "2026-11-25", "--out", bad + "Container=exports", env=env, cwd=str(tmp_path))
    storage = run_cli("read", "--date", "2026-11-25", env={**env, "BLOBWRITER_STORAGE": bad}, cwd=str(tmp_path))
    for result, name in ((export, "export destination"), (storage, "storage")):
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr == (f"blobwriter: error: Config '{name}' has an AccountKey that is not base64 (the value "
                                 "is not shown): copy the storage account's access key whole (it ends in '==').\n")
        assert key not in result.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "store"]


@pytest.mark.parametrize(("url", "why"), [
    ("http://127.0.0.1:1/devstoreaccount1/exports", "is an http:// account URL without a SAS token"),
    ("https://acct.blob.core.windows.net/exports?se=2030&sv=x", "has a query string that is not a SAS token"),
])
async def test_a_url_that_cannot_sign_in_is_one_line_naming_the_destination(
        make_settings: Callable[..., Settings], tmp_path: Path, url: str, why: str) -> None:
    """An http:// --out without a SAS failed at the first request with the SDK's "Token credential is only
    supported with HTTPS", naming neither the setting nor a fix; the `storage` setting's load-time check
    for account URLs now runs on it too (before any request), and the query is never shown."""
    settings = make_settings(storage=str(tmp_path / "store"))
    await store_entries(settings, [{"id": "u1", "timestamp": "2026-11-25T10:00:00Z"}])
    result = run_cli("export", "--date", "2026-11-25", "--out", url, env=cli_env(settings), cwd=str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"blobwriter: error: Config 'export destination' {why}"), result.stderr
    assert "se=2030" not in result.stderr and result.stderr.count("\n") == 1
    if url.startswith("http:"):  # the connection string it suggests instead names the container, as --out needs
        assert "UseDevelopmentStorage=true;Container=NAME for Azurite" in result.stderr, result.stderr
        assert "BlobEndpoint=...;Container=NAME')" in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "store"]


def test_the_logs_own_container_is_refused(sample_store: tuple[Settings, list[dict[str, Any]]], azurite: str,
                                           tmp_path: Path) -> None:
    """DEPLOY.md says never to export into the logs container (plaintext beside the encrypted logs, under
    the same RBAC), and nothing refused it: same account endpoint and container, however either is written."""
    settings, _ = sample_store
    logs = settings.container
    client = BlobServiceClient.from_connection_string(connection_string(azurite))
    before = _list(client, logs)
    sas = generate_container_sas(ACCOUNT, logs, account_key=ACCOUNT_KEY,
                                 permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True),
                                 expiry=datetime.now(UTC) + timedelta(hours=1))
    port = azurite.rsplit(":", 1)[1].split("/")[0]
    day = "2026-11-25"
    for out in (f"{connection_string(azurite)}Container={logs}",
                f"{connection_string(azurite)}Container={logs};Prefix=plain/text",
                f"{azurite}/{logs}/plain?{sas}",
                f"http://LOCALHOST:{port}/{ACCOUNT}/{logs}/?{sas}"):
        result = export(settings, out, first=day, last=day, code=2)
        assert result.stderr.startswith("blobwriter: error: the export destination "), result.stderr
        assert f"/{logs}" in result.stderr and "is the logs' own container" in result.stderr, result.stderr
        assert "sig=" not in result.stderr and ACCOUNT_KEY not in result.stderr
    assert _list(client, logs) == before
    # Another container of the same account is fine (the test above), and so is a directory beside the logs' one.
    local = Settings.from_values({"storage": str(tmp_path / "store"), "encryption_key": keygen()})
    (tmp_path / "store").mkdir()
    for out in (tmp_path / "store", tmp_path / "store" / "lake", tmp_path / "lake" / ".." / "store"):
        result = export(local, str(out), first=day, last=day, code=2)
        assert "is the logs' own directory" in result.stderr, result.stderr
    assert list((tmp_path / "store").iterdir()) == []
    export(local, str(tmp_path / "lake"), first=day, last=day)


def is_commit(request: Any) -> bool:
    """A Put Block List: an export's swap."""
    return bool(request.method == "PUT" and request.query.get("comp") == "blocklist")


def test_a_second_export_of_the_same_day_fails_while_the_first_swaps(
        sample_store: tuple[Settings, list[dict[str, Any]]], azurite: str, azurite_upstream: str) -> None:
    """Two exports of a day to one container raced: one's swap committed over the other's staged blocks, or
    deleted its new parts as stale, so rows went missing (or the day's marker) until the next export. Now
    the first holds a lease on the day's lock blob from staging to marker, and the second says so (exit 2)."""
    settings, entries = sample_store
    container = f"x{uuid.uuid4().hex[:20]}"
    day = "2026-11-27"
    expected = sorted(e["id"] for e in by_day(entries)[day])
    proxy = HoldingProxy(azurite_upstream, is_commit).start_in_thread()
    try:
        first = subprocess.Popen(
            [sys.executable, "-m", "blobwriter", "export", "--date", day, "--rows-per-file", "50",
             "--out", f"{connection_string(proxy.url + '/' + ACCOUNT)}Container={container}"],
            env=cli_env(settings), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            assert proxy.holding.wait(120)  # the first is in its swap, its marker removed
            second = export(settings, f"{connection_string(azurite)}Container={container}", first=day, last=day,
                            code=2)
            client = BlobServiceClient.from_connection_string(connection_string(azurite))
            lock = client.get_blob_client(container, f"_blobwriter/exporting/{day}.lock").get_blob_properties().lease
            assert (lock.state, lock.duration) == ("leased", "fixed")  # a crashed export's runs out
        finally:
            proxy.release.set()
            _, first_err = first.communicate(timeout=120)
    finally:
        proxy.stop_thread()
    assert first.returncode == 0, first_err
    assert second.stderr == (f"blobwriter: error: another export of {day} to {azurite}/{container} is running (it "
                             f"holds the lease on _blobwriter/exporting/{day}.lock): try again when it has finished "
                             "(one that stopped without finishing lets go of it within 60 s)\n")
    names = _list(client, container)
    assert names == sorted([f"_blobwriter/exported/{day}.json",
                            *(f"date={day}/part-{i:04d}.parquet" for i in range(-(-len(expected) // 50)))])
    rows = [row for name in names if name.endswith(".parquet")
            for row in pq.read_table(io.BytesIO(client.get_blob_client(container, name).download_blob().readall()))
            .column("id").to_pylist()]
    assert sorted(rows) == expected  # each row exactly once
    export(settings, f"{connection_string(azurite)}Container={container}", first=day, last=day)  # the lock is gone


def test_a_directory_export_is_refused_while_another_process_holds_the_day(
        sample_store: tuple[Settings, list[dict[str, Any]]], tmp_path: Path) -> None:
    settings, entries = sample_store
    day = "2026-11-27"
    lock = tmp_path / "lake" / "_blobwriter" / "exporting" / f"{day}.lock"
    lock.parent.mkdir(parents=True)
    with lock.open("w") as held:  # what a running export holds (its PID inside)
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242\n")
        held.flush()
        result = export(settings, str(tmp_path / "lake"), first=day, last=day, code=2)
    assert result.stderr == (f"blobwriter: error: another export of {day} to {tmp_path / 'lake'} is running (process "
                             f"4242 holds {lock}): try again when it has finished\n")
    assert not (tmp_path / "lake" / f"date={day}").exists()
    export(settings, str(tmp_path / "lake"), first=day, last=day)  # released: exported, and no lock left behind
    assert sorted(pq.read_table(tmp_path / "lake" / f"date={day}").column("id").to_pylist()) == sorted(
        e["id"] for e in by_day(entries)[day])
    assert list(lock.parent.iterdir()) == []


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_an_export_of_a_busy_day_reads_none_of_it(sample_store: tuple[Settings, list[dict[str, Any]]],
                                                  azurite_upstream: str, tmp_path: Path, fmt: str) -> None:
    """The day's lock is taken before its first read: a Parquet export used to read the whole day once (its
    column types) before it found the day busy, which under Functions is CPU taken from the writer."""
    settings, _ = sample_store
    day = "2026-11-27"
    downloads: list[str] = []

    def count(request: Any) -> bool:
        if request.method == "GET" and request.path.endswith(".log"):
            downloads.append(request.path)
        return False  # holds nothing

    proxy = HoldingProxy(azurite_upstream, count).start_in_thread()
    try:
        through_proxy = settings.with_overrides(storage=connection_string(f"{proxy.url}/{ACCOUNT}"))
        lock = tmp_path / "lake" / "_blobwriter" / "exporting" / f"{day}.lock"
        lock.parent.mkdir(parents=True)
        with lock.open("w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            result = export(through_proxy, str(tmp_path / "lake"), "--format", fmt, first=day, last=day, code=2)
        assert "another export of" in result.stderr, result.stderr
        assert downloads == []
        export(through_proxy, str(tmp_path / "lake"), "--format", fmt, first=day, last=day)
        assert downloads  # the proxy does see the day's blobs being read once the day is free
    finally:
        proxy.stop_thread()


def interrupt(args: list[str], env: dict[str, str], proxy: HoldingProxy) -> subprocess.CompletedProcess[str]:
    """Run `python -m blobwriter ARGS`, send it SIGINT (Ctrl-C) while `proxy` holds one of its requests, then
    let the proxy go on."""
    process = subprocess.Popen([sys.executable, "-m", "blobwriter", *args], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert proxy.holding.wait(120), process.communicate(timeout=120)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        proxy.release.set()
        if process.poll() is None:
            process.kill()
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def is_get_of(day: str) -> Callable[[Any], bool]:
    """A read of one of `day`'s log blobs."""
    return lambda request: bool(request.method == "GET" and f"/{day}/" in request.path)


@pytest.mark.parametrize("stage", ["reading", "swapping"])
def test_ctrl_c_says_what_the_export_left(sample_store: tuple[Settings, list[dict[str, Any]]], azurite: str,
                                          azurite_upstream: str, stage: str) -> None:
    """Ctrl-C stopped an export with exit 130 and nothing said: was the day's partition the old one, half
    swapped, or the new one? Now one line says it, true to where the export was."""
    settings, entries = sample_store
    container = f"x{uuid.uuid4().hex[:20]}"
    out = f"{connection_string(azurite)}Container={container}"
    first, day = "2026-11-25", "2026-11-26"
    export(settings, out, first=first, last=day)  # the partitions an interrupted re-export finds
    client = BlobServiceClient.from_connection_string(connection_string(azurite)).get_container_client(container)
    before = {b.name: b.etag for b in client.list_blobs()}
    env = cli_env(settings)
    if stage == "reading":  # the second day's logs, read through the proxy, are held
        proxy = HoldingProxy(azurite_upstream, is_get_of(day)).start_in_thread()
        env["BLOBWRITER_STORAGE"] = connection_string(f"{proxy.url}/{ACCOUNT}")
    else:  # the second day's swap, at the destination through the proxy, is held
        proxy = HoldingProxy(azurite_upstream,
                             lambda r: is_commit(r) and f"/date={day}/" in r.path).start_in_thread()
        out = f"{connection_string(f'{proxy.url}/{ACCOUNT}')}Container={container}"
    try:
        result = interrupt(["export", "--date", first, "--until", day, "--out", out, "--rows-per-file", "100"], env,
                           proxy)
    finally:
        proxy.stop_thread()
    assert result.returncode == 130, result.stderr
    last = result.stderr.splitlines()[-1]
    after = {b.name: b.etag for b in client.list_blobs()}
    parts = -(-len(by_day(entries)[first]) // 100)  # the first day was exported again, whole
    assert sorted(b for b in after if b.startswith(f"date={first}/")) == [
        f"date={first}/part-{i:04d}.parquet" for i in range(parts)]
    if stage == "reading":
        assert last == f"blobwriter: interrupted; {first} exported; the day being exported, {day}, was left as it was"
        assert {k: v for k, v in after.items() if day in k} == {k: v for k, v in before.items() if day in k}
    else:
        assert last == (f"blobwriter: interrupted; {first} exported; {day} was being swapped in: its marker is "
                        f"removed (not claimed complete), so export {day} again")
        assert f"_blobwriter/exported/{day}.json" not in after
    # The day's lock went with the export: it can be exported again at once, and then it is whole.
    export(settings, f"{connection_string(azurite)}Container={container}", first=day, last=day)
    rows = [row for name in (b.name for b in client.list_blobs()) if name.startswith(f"date={day}/")
            for row in pq.read_table(io.BytesIO(client.get_blob_client(name).download_blob().readall()))
            .column("id").to_pylist()]
    assert sorted(rows) == sorted(e["id"] for e in by_day(entries)[day])


async def test_a_day_not_over_yet_is_exported_with_a_note(make_settings: Callable[..., Settings],
                                                          tmp_path: Path) -> None:
    """An export of today (UTC) holds only what was written so far, and its partition then looks like the
    whole day: the line says so (QA round 13). A past day gets no such note."""
    settings = make_settings()
    today = datetime.now(UTC).date()
    yesterday = (today - timedelta(days=1)).isoformat()
    await store_entries(settings, [{"timestamp": f"{yesterday}T12:00:00Z", "id": "a"},
                                   {"timestamp": f"{today.isoformat()}T00:00:00Z", "id": "b"}])
    result = export(settings, str(tmp_path / "lake"), "--format", "jsonl", first=yesterday, last=today.isoformat())
    if datetime.now(UTC).date() != today:  # midnight passed meanwhile: "today" is over now
        pytest.skip("the UTC date changed during the test")
    notes = [line for line in result.stderr.splitlines() if "the day is not over" in line]
    assert notes == [f"{today.isoformat()}: note: the day is not over (UTC), so this holds only the entries written "
                     "so far; export it again once the day has ended (the scheduled export waits an hour after it)"]
    assert f"{yesterday}: 1 entry -> " in result.stderr
