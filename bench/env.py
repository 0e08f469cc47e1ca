"""The bench's environment: Azurite (in memory, own port), the latency proxy, the entries, the machine."""

from __future__ import annotations

import gzip
import os
import platform
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from tests.support.azurite import Azurite as _Azurite
from tests.support.azurite import connection_string, free_port, wait_for_port  # noqa: F401 - used by bench modules

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DATA = BENCH / "data" / "api-calls.jsonl.gz"
PYTHON = sys.executable


def entry_lines() -> list[bytes]:
    """The realistic entries (API-call logs, ~1.6 KB each) as JSON lines without newline."""
    with gzip.open(DATA) as handle:
        return [line.rstrip(b"\n") for line in handle if line.strip()]


def new_container() -> str:
    return f"b{uuid.uuid4().hex[:20]}"


class Azurite(_Azurite):
    """The shared test Azurite, plus its memory use for the report."""

    def rss(self) -> int:
        try:
            import psutil

            return int(psutil.Process(self.process.pid).memory_info().rss) if self.process else 0
        except Exception:
            return 0


def delete_container(blob_endpoint: str, container: str) -> None:
    """Free Azurite's memory between runs."""
    from azure.storage.blob import BlobServiceClient

    try:
        BlobServiceClient.from_connection_string(connection_string(blob_endpoint)).delete_container(container)
    except Exception:
        pass


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    versions = {}
    for name in ("orjson", "isal", "cryptography", "azure-storage-blob", "azure-core", "aiohttp", "uvicorn",
                 "uvloop", "httptools", "starlette", "opentelemetry-sdk", "matplotlib"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:
            versions[name] = None
    info["packages"] = versions
    try:
        info["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        info["azurite"] = _azurite_version()
    except Exception:
        pass
    wrk = shutil.which("wrk")
    info["wrk"] = wrk
    if wrk:
        out = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=10)
        info["wrk_version"] = (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else ""
    return info


def _azurite_version() -> str | None:
    import json

    package = ROOT / "node_modules" / "azurite" / "package.json"
    if package.exists():
        return str(json.loads(package.read_text()).get("version"))
    return None
