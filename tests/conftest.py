"""Shared fixtures: a real Azurite, settings per test, realistic entries.

Azurite comes from $BLOBWRITER_TEST_AZURITE (a blob endpoint URL such as
http://127.0.0.1:10000/devstoreaccount1, which .ci/run and `make test` start) or, if that is
unset, is started here from node_modules/.bin/azurite-blob on a free port.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from blobwriter.config import Settings
from blobwriter.keys import keygen
from tests.support.azurite import (  # noqa: F401 - re-exported for the tests
    Azurite,
    binary,
    connection_string,
    free_port,
    wait_for_port,
)
from tests.support.proxy import StorageProxy

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = Path(__file__).resolve().parent / "data" / "api-calls-sample.jsonl.gz"


@pytest.fixture(scope="session")
def azurite() -> Iterator[str]:
    """The blob endpoint URL of a running Azurite (account devstoreaccount1)."""
    given = os.environ.get("BLOBWRITER_TEST_AZURITE")
    if given:
        yield given.rstrip("/")
        return
    if binary() is None:
        pytest.exit("Azurite is not installed: run `make test` (it runs `npm ci`), or set BLOBWRITER_TEST_AZURITE",
                    returncode=2)
    emulator = Azurite().start()
    try:
        yield emulator.url
    finally:
        emulator.stop()


@pytest.fixture(scope="session")
def azurite_upstream(azurite: str) -> str:
    """Azurite's scheme://host:port, for a proxy to forward to."""
    return azurite.rsplit("/", 1)[0]


@pytest.fixture
def key() -> str:
    return keygen()


@pytest.fixture
def container() -> str:
    return f"t{uuid.uuid4().hex[:20]}"


@pytest.fixture
def make_settings(azurite: str, key: str, container: str) -> Callable[..., Settings]:
    """Settings for this test's own container in Azurite; keyword arguments override."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"storage": connection_string(azurite), "encryption_key": key,
                                  "container": container, "batch_timeout": 0.1}
        values.update(overrides)
        return Settings.from_values(values)

    return make


@pytest.fixture(scope="session")
def sample_entries() -> list[dict[str, Any]]:
    """2,000 realistic API-call entries (a slice of shared/data/api-calls.jsonl.gz)."""
    with gzip.open(SAMPLE) as handle:
        return [orjson.loads(line) for line in handle]


@pytest.fixture(scope="module")
def sample_store(azurite: str, sample_entries: list[dict[str, Any]]) -> tuple[Settings, list[dict[str, Any]]]:
    """The 2,000 sample entries, written once through LogWriter to the test module's own container."""
    from tests.support.query import store_entries

    settings = Settings.from_values({"storage": connection_string(azurite), "encryption_key": keygen(),
                                     "container": f"q{uuid.uuid4().hex[:20]}", "batch_timeout": 0.1})
    asyncio.run(store_entries(settings, sample_entries))
    return settings, sample_entries


_ids = itertools.count()


def entry(**fields: Any) -> dict[str, Any]:
    """A small entry with a unique id."""
    return {"id": f"t{next(_ids)}", "user": "alice@contoso.com", "tokens": 12, **fields}


@pytest.fixture
def proxy(azurite_upstream: str) -> Iterator[StorageProxy]:
    """A fault-injecting proxy in front of Azurite, served from its own thread."""
    proxy = StorageProxy(azurite_upstream).start_in_thread()
    try:
        yield proxy
    finally:
        proxy.stop_thread()
