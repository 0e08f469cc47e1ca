"""What `make run` (run_local.py) and `make func-azurite` (func_azurite.py) share: ports, the
development key, Azurite's account, and running child processes until Ctrl-C or SIGTERM. The tests
and benchmarks take Azurite's account from here too (tests/support/azurite.py)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Azurite's well-known development account and key (public, the same in every Azurite; written here only,
# and in local.settings.json.example, which tests/test_infra.py checks against this).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def dev_key(key_file: Path) -> tuple[str, bool]:
    """The development key kept in `key_file` (git-ignored), made on first use; and whether it was made now."""
    if key_file.exists():
        return key_file.read_text().strip(), False
    sys.path.insert(0, str(ROOT))
    from blobwriter.keys import keygen

    key = keygen()
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    return key, True


def wait_for_ports(process: subprocess.Popen[bytes], ports: list[int], timeout: float = 30) -> bool:
    """Whether every port opened before `process` exited or `timeout` passed."""
    deadline = time.monotonic() + timeout
    while not all(port_open(port) for port in ports):
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def run_until_interrupted(main: subprocess.Popen[bytes], stopping: str,
                          stops: list[tuple[subprocess.Popen[bytes], Callable[[], None], float]]) -> int:
    """Wait for `main` to exit, or for Ctrl-C / SIGTERM (then print `stopping`); either way stop each
    (process, how to ask it to stop, seconds to wait before killing it) still running, in order."""

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        return main.wait()
    except KeyboardInterrupt:
        print(f"\n{stopping}", flush=True)
        return 0
    finally:
        for process, ask, patience in stops:
            if process.poll() is None:
                ask()
                try:
                    process.wait(patience)
                except subprocess.TimeoutExpired:
                    process.kill()
