"""The scheduled export as the Python worker runs it: function_app.py indexed, the timer invoked."""

from __future__ import annotations

import importlib
import io
import json
import logging
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow.parquet as pq
import pytest
from azure.functions import meta
from azure.functions.timer import TimerRequestConverter
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

from blobwriter.config import Settings
from blobwriter.errors import ConfigError
from blobwriter.query import MissingExtraError
from blobwriter.query.schedule import LOOKBACK_DAYS, SCHEDULE, closed_days, run_scheduled_export
from blobwriter.query.source import RangeSource
from tests.conftest import connection_string
from tests.support.azurite import ACCOUNT, ACCOUNT_KEY
from tests.support.query import store_entries
from tests.support.readback import frames_in


def load_function_app(monkeypatch: pytest.MonkeyPatch, azurite: str, key: str, container: str,
                      **extra: str) -> ModuleType:
    monkeypatch.setenv("BLOBWRITER_STORAGE", connection_string(azurite))
    monkeypatch.setenv("BLOBWRITER_ENCRYPTION_KEY", key)
    monkeypatch.setenv("BLOBWRITER_CONTAINER", container)
    monkeypatch.setenv("BLOBWRITER_BATCH_TIMEOUT", "0.1")
    monkeypatch.delenv("BLOBWRITER_EXPORT_DESTINATION", raising=False)
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    sys.modules.pop("function_app", None)
    return importlib.import_module("function_app")


@pytest.fixture
def function_app(monkeypatch: pytest.MonkeyPatch, azurite: str, key: str,
                 container: str) -> Iterator[Callable[..., ModuleType]]:
    loaded: list[ModuleType] = []

    def load(**extra: str) -> ModuleType:
        module = load_function_app(monkeypatch, azurite, key, container, **extra)
        loaded.append(module)
        return module

    yield load
    for module in loaded:  # see tests/test_functions.py: no second ASGI shutdown from __del__ later
        module.app.startup_task_done = False
    sys.modules.pop("function_app", None)


def timer_function(module: ModuleType) -> Any:
    """The timer function among those the worker indexes (get_functions() may be called once per app)."""
    functions = module.app.get_functions()
    assert len(functions) == 2  # the HTTP function is still there
    timers = [f for f in functions if any(b.type == "timerTrigger" for b in f.get_bindings())]
    assert len(timers) == 1
    return timers[0]


def timer_request() -> Any:
    """What the worker passes: the host's JSON for the trigger, decoded by the SDK's converter."""
    data = meta.Datum(type="json", value=json.dumps({"IsPastDue": False, "ScheduleStatus": None}))
    return TimerRequestConverter.decode(data, trigger_metadata={})


def test_no_destination_no_timer(function_app: Callable[..., ModuleType]) -> None:
    module = function_app()
    functions = module.app.get_functions()
    assert len(functions) == 1
    assert {b.type for b in functions[0].get_bindings()} == {"httpTrigger", "http"}


async def test_timer_exports_each_closed_day_once(function_app: Callable[..., ModuleType], azurite: str,
                                                  make_settings: Callable[..., Settings],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    exports = f"x{uuid.uuid4().hex[:20]}"
    module = function_app(BLOBWRITER_EXPORT_DESTINATION=f"{connection_string(azurite)}Container={exports}")
    function = timer_function(module)
    bindings = json.loads(function.get_function_json())["bindings"]
    assert bindings == [{"direction": "IN", "type": "timerTrigger", "name": "timer", "schedule": SCHEDULE,
                         "runOnStartup": False}]

    today = datetime.now(UTC).date()
    days = [today - timedelta(days=3), today - timedelta(days=2), today]
    settings = make_settings()
    written = {d.isoformat(): [{"id": f"{d}-{i}", "timestamp": f"{d}T12:00:00Z", "cost_eur": 0.5} for i in range(n)]
               for d, n in zip(days, (30, 20, 5), strict=True)}
    await store_entries(settings, [e for group in written.values() for e in group])

    handler = function.get_user_function()
    assert await handler(timer_request()) is None
    client = BlobServiceClient.from_connection_string(connection_string(azurite))
    container = client.get_container_client(exports)
    closed = [d.isoformat() for d in days[:2]]
    names = sorted(b.name for b in container.list_blobs())
    assert names == sorted([f"_blobwriter/exported/{d}.json" for d in closed] +
                           [f"date={d}/part-0000.parquet" for d in closed])  # not today: it is not closed
    for day in closed:
        data = container.get_blob_client(f"date={day}/part-0000.parquet").download_blob().readall()
        table = pq.read_table(io.BytesIO(data))
        assert sorted(table.column("id").to_pylist()) == sorted(e["id"] for e in written[day])
    etags = {b.name: b.etag for b in container.list_blobs()}

    # The next run finds the markers and exports nothing again.
    await handler(timer_request())
    assert {b.name: b.etag for b in container.list_blobs()} == etags

    # QA round 9: an entry written for a closed day after its export (a client's retry, a writer retrying
    # through an outage, a backfill: the deployment takes entries up to 7 days old) never reached the lake.
    late = {"id": "late", "timestamp": f"{closed[1]}T23:59:59Z", "cost_eur": 0.25}
    await store_entries(settings, [late])
    await handler(timer_request())
    data = container.get_blob_client(f"date={closed[1]}/part-0000.parquet").download_blob().readall()
    assert sorted(pq.read_table(io.BytesIO(data)).column("id").to_pylist()) == sorted(
        [e["id"] for e in written[closed[1]]] + ["late"])
    changed = {name for name, etag in ((b.name, b.etag) for b in container.list_blobs()) if etags.get(name) != etag}
    assert changed == {f"date={closed[1]}/part-0000.parquet", f"_blobwriter/exported/{closed[1]}.json"}
    etags = {b.name: b.etag for b in container.list_blobs()}
    await handler(timer_request())  # and once is enough: the marker records the day as it is now
    assert {b.name: b.etag for b in container.list_blobs()} == etags

    # A day whose logs are gone since (a retention rule) keeps its export, the only copy left, and is not
    # read again every hour as if it had changed.
    logs = client.get_container_client(settings.container)
    for blob in list(logs.list_blobs(name_starts_with=closed[0])):
        logs.delete_blob(blob.name)
    with caplog.at_level(logging.INFO, logger="blobwriter.export"):
        await handler(timer_request())
    assert {b.name: b.etag for b in container.list_blobs()} == etags
    assert not [r for r in caplog.records if r.name == "blobwriter.export"]


async def test_timer_without_pyarrow_logs_what_to_install(function_app: Callable[..., ModuleType], azurite: str,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    module = function_app(BLOBWRITER_EXPORT_DESTINATION=f"{connection_string(azurite)}Container=exports")
    handler = timer_function(module).get_user_function()
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what a deployment without the extra has: no pyarrow
    with caplog.at_level(logging.ERROR, logger="blobwriter.export"), pytest.raises(MissingExtraError):
        await handler(timer_request())
    [record] = [r for r in caplog.records if r.name == "blobwriter.export"]
    assert "pyarrow is not installed" in record.getMessage() and "requirements.txt" in record.getMessage()


async def test_a_bad_destination_is_logged_when_the_app_is_indexed(function_app: Callable[..., ModuleType],
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """QA round 9: a destination that is no destination (abfss://, a connection string without a container)
    was first reported an hour later, by the first timer run, without naming the setting."""
    bad = "abfss://exports@acct.dfs.core.windows.net/gw"
    with caplog.at_level(logging.ERROR, logger="blobwriter.export"):
        module = function_app(BLOBWRITER_EXPORT_DESTINATION=bad)
    [record] = [r for r in caplog.records if r.name == "blobwriter.export"]
    assert "BLOBWRITER_EXPORT_DESTINATION is not a destination" in record.getMessage()
    assert "https://acct.blob.core.windows.net/exports/gw" in record.getMessage()
    handler = timer_function(module).get_user_function()  # still there: each run says it again
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="blobwriter.export"), pytest.raises(ConfigError):
        await handler(timer_request())
    assert any("Scheduled export failed: BLOBWRITER_EXPORT_DESTINATION" in r.getMessage() for r in caplog.records)


async def test_a_day_exported_with_damage_is_not_taken_as_done(make_settings: Callable[..., Settings],
                                                                 tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The marker records the damaged frames skipped; each run in the look-back logs an error for the
    day instead of counting it as done, until its marker is deleted (and the day exported again)."""
    settings = make_settings(storage=str(tmp_path / "store"), export_destination=str(tmp_path / "lake"))
    day, now = "2026-11-25", datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    await store_entries(settings, [{"id": f"d{i}", "timestamp": f"{day}T10:00:00Z"} for i in range(100)],
                        batch_size=30)
    [path] = (tmp_path / "store" / day).glob("*.log")
    data = bytearray(path.read_bytes())
    offset, _ = [(o, h) for o, h in frames_in(bytes(data)) if not h.is_index][1]
    data[offset + 100] ^= 0x40
    path.write_bytes(bytes(data))
    marker = tmp_path / "lake" / "_blobwriter" / "exported" / f"{day}.json"
    for attempt in range(2):
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="blobwriter.export"):
            run = await run_scheduled_export(settings, now)
        assert run.incomplete == {day: 1}
        assert (day in run.exported) == (attempt == 0) and (day in run.already) == (attempt == 1)
        assert json.loads(marker.read_bytes())["damaged_frames"] == 1
        assert any(f"Export of {day}" in r.getMessage() and "1 damaged frame(s) were skipped" in r.getMessage()
                   for r in caplog.records)
    marker.unlink()  # what the log says to do: the day is exported again
    assert day in (await run_scheduled_export(settings, now)).exported


def test_closed_days() -> None:
    days = closed_days(datetime(2026, 11, 27, 0, 30, tzinfo=UTC))  # 11-26 closes at 01:00 (an hour's grace)
    assert days[-1] == "2026-11-25" and len(days) == LOOKBACK_DAYS
    assert closed_days(datetime(2026, 11, 27, 1, 30, tzinfo=UTC))[-1] == "2026-11-26"
    assert [date.fromisoformat(d) for d in days] == [date(2026, 11, 19) + timedelta(days=n) for n in range(7)]



async def test_the_logs_own_container_is_refused(function_app: Callable[..., ModuleType], azurite: str,
                                                 container: str, caplog: pytest.LogCaptureFixture) -> None:
    """Exporting into the logs' own container (DEPLOY.md: never) is refused when the app is indexed and by
    every run, before anything is written. (With a SAS: an http:// URL without one is refused for that.)"""
    sas = generate_container_sas(ACCOUNT, container, account_key=ACCOUNT_KEY,
                                 permission=ContainerSasPermissions(read=True, write=True, list=True),
                                 expiry=datetime.now(UTC) + timedelta(hours=1))
    with caplog.at_level(logging.ERROR, logger="blobwriter.export"):
        module = function_app(BLOBWRITER_EXPORT_DESTINATION=f"{azurite}/{container}/plain?{sas}")
    [record] = [r for r in caplog.records if r.name == "blobwriter.export"]
    assert "is the logs' own container" in record.getMessage()
    handler = timer_function(module).get_user_function()
    with pytest.raises(ConfigError, match="is the logs' own container"):
        await handler(timer_request())
    client = BlobServiceClient.from_connection_string(connection_string(azurite))
    assert not client.get_container_client(container).exists()  # nothing made: not even the logs' container


async def test_a_day_another_export_is_writing_is_left_to_the_next_run(
        make_settings: Callable[..., Settings], azurite: str, caplog: pytest.LogCaptureFixture) -> None:
    """While another export of a day holds its lock (a `blobwriter export` of it, or an overlapping run), the
    scheduled run does not race it: it warns, exports the other days, and the next run exports that one."""
    exports = f"x{uuid.uuid4().hex[:20]}"
    settings = make_settings(export_destination=f"{connection_string(azurite)}Container={exports}")
    days, now = ["2026-11-24", "2026-11-25"], datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    await store_entries(settings, [{"id": f"{d}-{i}", "timestamp": f"{d}T10:00:00Z"} for d in days for i in range(5)])
    client = BlobServiceClient.from_connection_string(connection_string(azurite)).get_container_client(exports)
    client.create_container()
    lock = client.get_blob_client(f"_blobwriter/exporting/{days[1]}.lock")
    lock.upload_blob(b"")
    lease = lock.acquire_lease(60)  # what the other export holds
    with caplog.at_level(logging.WARNING, logger="blobwriter.export"):
        run = await run_scheduled_export(settings, now)
    assert (run.exported, run.busy) == ({days[0]: 5}, [days[1]])
    assert any(r.getMessage().startswith(f"Not exporting {days[1]} now: another export of {days[1]} to ")
               for r in caplog.records)
    assert not client.get_blob_client(f"date={days[1]}/part-0000.parquet").exists()
    lease.release()
    assert (await run_scheduled_export(settings, now)).exported == {days[1]: 5}


async def test_a_changed_day_is_listed_once(make_settings: Callable[..., Settings], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A day with a marker was listed to compare with it, then again by the export to record its blobs:
    the first listing is the one recorded now, so a run lists each day's blobs once."""
    settings = make_settings(export_destination=str(tmp_path / "lake"))
    day, now = "2026-11-25", datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    await store_entries(settings, [{"id": f"c{i}", "timestamp": f"{day}T10:00:00Z"} for i in range(5)])
    listed: list[str] = []
    real_sizes = RangeSource.sizes

    async def sizes(self: RangeSource, listed_day: str) -> dict[str, int]:
        listed.append(listed_day)
        return await real_sizes(self, listed_day)

    monkeypatch.setattr(RangeSource, "sizes", sizes)
    assert (await run_scheduled_export(settings, now)).exported == {day: 5}
    assert listed.count(day) == 1
    await store_entries(settings, [{"id": "late", "timestamp": f"{day}T23:00:00Z"}])
    listed.clear()
    run = await run_scheduled_export(settings, now)
    assert (run.again, run.exported) == ([day], {day: 6})
    assert listed.count(day) == 1
    marker = json.loads((tmp_path / "lake" / "_blobwriter" / "exported" / f"{day}.json").read_bytes())
    assert marker["sources"] == await real_sizes(RangeSource(settings, [day]), day)  # what was listed is recorded
