"""Shared fixtures: a real Azurite, settings per test, realistic entries.

Azurite comes from $BLOBWRITER_TEST_AZURITE (a blob endpoint URL such as
http://127.0.0.1:10000/devstoreaccount1, which .ci/run and `make test` start) or, if that is
unset, is started here from node_modules/.bin/azurite-blob on a free port.
"""

from __future__ import annotations

import gzip
import itertools
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from blobwriter.cli import keygen
from blobwriter.config import Settings
from tests.support.proxy import StorageProxy

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = Path(__file__).resolve().parent / "data" / "api-calls-sample.jsonl.gz"
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def connection_string(blob_endpoint: str) -> str:
    """An Azurite connection string for a blob endpoint (Azurite itself or a proxy in front)."""
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={blob_endpoint.rstrip('/')};")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="session")
def azurite() -> Iterator[str]:
    """The blob endpoint URL of a running Azurite (account devstoreaccount1)."""
    given = os.environ.get("BLOBWRITER_TEST_AZURITE")
    if given:
        yield given.rstrip("/")
        return
    binary = ROOT / "node_modules" / ".bin" / "azurite-blob"
    if not binary.exists():
        binary_path = shutil.which("azurite-blob")
        if binary_path is None:
            pytest.exit("Azurite is not installed: run `make test` (it runs `npm ci`), or set BLOBWRITER_TEST_AZURITE",
                        returncode=2)
        binary = Path(binary_path)
    port = free_port()
    process = subprocess.Popen(
        [str(binary), "--inMemoryPersistence", "--blobHost", "127.0.0.1", "--blobPort", str(port),
         # Without --disableTelemetry, Azurite takes ~10 s to exit once it has served a request.
         "--skipApiVersionCheck", "--silent", "--disableTelemetry"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    finally:
        process.terminate()
        process.wait(10)


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
