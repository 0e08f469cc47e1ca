"""Azurite for tests and benchmarks: the emulator from node_modules, in memory, on a free port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from scripts.devlocal import AZURITE_ACCOUNT as ACCOUNT
from scripts.devlocal import AZURITE_ACCOUNT_KEY as ACCOUNT_KEY

ROOT = Path(__file__).resolve().parent.parent.parent


def connection_string(blob_endpoint: str) -> str:
    """An Azurite connection string for a blob endpoint (Azurite itself or a proxy in front)."""
    return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
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
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def binary() -> Path | None:
    """azurite-blob from node_modules (npm ci), else from PATH, else None."""
    local = ROOT / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return local
    found = shutil.which("azurite-blob")
    return Path(found) if found else None


class Azurite:
    """One in-memory azurite-blob process on 127.0.0.1 and a free port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The blob endpoint, account included."""
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def upstream(self) -> str:
        """scheme://host:port, for a proxy to forward to."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Azurite:
        program = binary()
        if program is None:
            raise RuntimeError("Azurite is not installed: run `npm ci` (make install does it)")
        self.process = subprocess.Popen(
            [str(program), "--inMemoryPersistence", "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
             # Without --disableTelemetry, Azurite takes ~10 s to exit once it has served a request.
             "--skipApiVersionCheck", "--silent", "--disableTelemetry"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None
