"""End to end: a real `blobwriter serve` process writing to Azurite, read back with `blobwriter read`."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import ROOT, entry, free_port, wait_for_port
from tests.support.reliability import azurite_env, run_cli


class Server:
    """A `blobwriter serve` subprocess on a free port."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "blobwriter", "serve", "--port", str(self.port), "--log-level", "warning"],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        wait_for_port(self.port)

    def terminate(self, timeout: float = 60, sig: int = signal.SIGTERM) -> tuple[int, str]:
        """Send `sig` (SIGTERM); return the exit code and stderr."""
        self.process.send_signal(sig)
        _, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, err.decode(errors="replace")


@pytest.fixture
def serve(azurite: str, key: str, container: str) -> Iterator[Any]:
    servers: list[Server] = []

    def start(**extra: str) -> tuple[Server, dict[str, str]]:
        env = azurite_env(azurite, key, container, **extra)
        server = Server(env)
        servers.append(server)
        return server, env

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


def test_posted_entries_are_read_back_once_after_sigterm(serve: Any, sample_entries: list[dict[str, Any]]) -> None:
    server, env = serve(BLOBWRITER_BATCH_SIZE="100", BLOBWRITER_BATCH_TIMEOUT="5")
    entries = sample_entries[:1000]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for e in entries[:100]:
            assert client.post("/api/logs", json=e).status_code == 202
        assert client.post("/api/logs", json=entries[100:500]).json() == {"accepted": 400}
        ndjson = b"\n".join(orjson.dumps(e) for e in entries[500:])
        response = client.post("/api/logs", content=ndjson, headers={"content-type": "application/x-ndjson"})
        assert response.json() == {"accepted": 500}
        assert client.get("/api/health").status_code == 200
    # batch_timeout is 5 s: much is still queued; SIGTERM must flush it before the process exits.
    code, err = server.terminate()
    assert code == 0, err
    dates = sorted({e["timestamp"][:10] for e in entries})
    result = run_cli(env, "read", "--date", "2026-11-23", "--until", "2026-12-02", timeout=120)
    assert result.returncode == 0, result.stderr
    ids = [orjson.loads(line)["id"] for line in result.stdout.splitlines()]
    assert len(ids) == len(set(ids)) == 1000
    assert set(ids) == {e["id"] for e in entries}
    assert dates  # the sample spans several days, so several date blobs were read

    verify = run_cli(env, "verify", "--date", "2026-11-23", "--until", "2026-12-02", timeout=120)
    assert verify.returncode == 0, verify.stdout
    assert b"1000 entries" in verify.stdout and b"OK" in verify.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_serve_exits_0_once_every_accepted_entry_is_written(serve: Any, sig: int) -> None:
    """QA ops: uvicorn raised the signal again after its graceful shutdown, so `serve` died of SIGTERM
    (-15, a shell's 143) or exited 130 on Ctrl-C, whether or not the flush wrote everything. A hangup
    (the terminal that started serve closing) killed it at once: every queued entry lost, no word."""
    server, env = serve(BLOBWRITER_BATCH_TIMEOUT="5")
    batch = [entry(timestamp="2026-11-24T10:00:00Z") for _ in range(50)]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post("/api/logs", json=batch).json() == {"accepted": 50}
    code, err = server.terminate(sig=sig)
    assert code == 0, err
    read = run_cli(env, "read", "--date", "2026-11-24", timeout=120)
    assert {orjson.loads(line)["id"] for line in read.stdout.splitlines()} == {e["id"] for e in batch}


def test_serve_exits_1_when_accepted_entries_were_not_written(azurite: str, key: str, container: str) -> None:
    """Storage never answers and stop_timeout passes: the entries are reported failed, frames given up on
    together in one log line, and the exit code says so (before: the same death by SIGTERM as a clean
    flush, and an ERROR line per frame: 25,000 for a full default queue)."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead = unused.getsockname()[1]  # nothing listens here once closed
    env = azurite_env(f"http://127.0.0.1:{dead}/devstoreaccount1", key, container, BLOBWRITER_STOP_TIMEOUT="1",
                      BLOBWRITER_STORAGE_TIMEOUT="1", BLOBWRITER_BATCH_TIMEOUT="0.1")
    server = Server(env)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            batch = [entry() for _ in range(200)]  # 20 frames at batch_size 10
            assert client.post("/api/logs", json=batch).json() == {"accepted": 200}
        code, err = server.terminate()
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert code == 1, err
    lines = err.splitlines()
    assert "200 of the 200 log entries accepted were NOT written" in lines[-1]
    reported = [int(line.split(" ERROR blobwriter.writer: ")[1].split()[0]) for line in lines
                if "accepted log entries were NOT written" in line]
    # Each entry reported once, frames given up on together in one line (before: a line per frame, 20 here).
    assert sum(reported) == 200 and len(reported) < 20, reported
    assert "Traceback" not in err


def test_sigterm_answers_a_caller_waiting_for_its_entries_from_the_flush(key: str, container: str) -> None:
    """QA ops: storage down, a ?wait=true caller waiting, SIGTERM. uvicorn waited for the request until
    timeout_graceful_shutdown, then cancelled it: a 500, a traceback ("Exception in ASGI application")
    and "Future exception was never retrieved", and only then did the writer's flush begin. The flush
    now starts with the shutdown and the caller gets its 503 from it."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead = unused.getsockname()[1]  # nothing listens here once closed
    env = azurite_env(f"http://127.0.0.1:{dead}/devstoreaccount1", key, container, BLOBWRITER_STOP_TIMEOUT="1",
                      BLOBWRITER_STORAGE_TIMEOUT="1")
    server = Server(env)
    answers: list[httpx.Response] = []
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            waiting = threading.Thread(target=lambda: answers.append(
                client.post("/api/logs", params={"wait": "true"}, json=[entry() for _ in range(5)])))
            waiting.start()
            while client.get("/api/health").json()["queue_depth"] < 5:  # the caller's entries are queued
                time.sleep(0.05)
            code, err = server.terminate()
            waiting.join(120)
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert [a.status_code for a in answers] == [503], [a.text for a in answers]
    assert "were not written" in answers[0].json()["error"]
    assert code == 1 and "Traceback" not in err and "never retrieved" not in err, err


def test_serve_checks_the_api_key_like_functions(serve: Any) -> None:
    server, _ = serve(BLOBWRITER_API_KEY="local-secret")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post("/api/logs", json=entry()).status_code == 401
        assert client.post("/api/logs", json=entry(), headers={"x-functions-key": "local-secret"}).status_code == 202
        assert client.post("/api/logs", params={"code": "local-secret"}, json=entry()).status_code == 202
        assert client.get("/api/health").status_code == 200
    code, err = server.terminate()
    assert code == 0
    assert "local-secret" not in err


def test_serve_on_a_busy_port_is_a_clean_error(azurite: str, key: str, container: str) -> None:
    """QA F13: uvicorn logged the bind error and exited 3, a code the README did not list."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(azurite_env(azurite, key, container), "serve", "--port", str(port), timeout=120)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert err.startswith(f"blobwriter: error: cannot listen on 127.0.0.1:{port}: ") and "in use" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("port", ["99999", "-1", "7O71"])
def test_serve_with_a_port_that_is_not_one_is_a_usage_error(port: str) -> None:
    """QA ops: a port past 65535 or below 0 was a traceback (OverflowError from bind) and exit 1."""
    result = subprocess.run([sys.executable, "-m", "blobwriter", "serve", "--port", port], cwd=ROOT,
                            capture_output=True, timeout=120)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert f"argument --port: '{port}' is not a port number (0 to 65535)" in err and "Traceback" not in err


@contextmanager
def serving(args: list[str], env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], list[str], str]]:
    """`blobwriter serve ARGS` started, its log lines up to the one saying where it listens, and that URL.
    The caller stops it (SIGTERM) and may read the rest of its lines; it is killed if still running after."""
    process = subprocess.Popen([sys.executable, "-m", "blobwriter", "serve", *args], env=env, cwd=ROOT,
                               stderr=subprocess.PIPE)
    stuck = threading.Timer(120, process.kill)  # a safety bound on the wait for the line, not a measurement
    stuck.start()
    try:
        assert process.stderr is not None
        lines = []
        for raw in process.stderr:
            lines.append(raw.decode())
            if " Serving on " in lines[-1]:
                break
        else:
            pytest.fail("serve exited without saying where it listens")
        yield process, lines, lines[-1].split(" Serving on ")[1].split()[0]
    finally:
        stuck.cancel()
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]"])
def test_serve_logs_where_it_listens_even_on_port_0(azurite: str, key: str, container: str, host: str) -> None:
    """QA ops: uvicorn says where it listens only for sockets it binds itself, and serve binds its own, so
    nothing said it; with --port 0 the port was unknowable. `[::1]`, an address as URLs write it, was
    refused ("Name or service not known"). uvicorn's own lines had another format, without a time."""
    if host == "[::1]":
        try:
            socket.socket(socket.AF_INET6).bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
    with serving(["--host", host, "--port", "0"], azurite_env(azurite, key, container)) as (process, lines, url):
        assert url.startswith(f"http://{host}:") and not url.endswith(":0"), lines[-1]
        assert httpx.get(f"{url}/api/health", timeout=30).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.stderr is not None
        lines += [raw.decode() for raw in process.stderr]
        assert process.wait(60) == 0
    # One format for every line, uvicorn's included (they were "INFO:     ...", with no time).
    logged = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) [a-z.]+: ")
    assert all(logged.match(line) for line in lines), lines
    assert any("uvicorn" in line for line in lines), lines
    assert not any("export_destination" in line for line in lines), lines


def test_serve_says_it_does_not_export(tmp_path: Path, key: str) -> None:
    """export_destination is the Functions app's timer; `serve` ignored it without a word, so a user who set
    it in serve's config waited for exports that never came (QA round 13)."""
    env = {"PATH": os.environ["PATH"], "BLOBWRITER_STORAGE": str(tmp_path / "store"),
           "BLOBWRITER_ENCRYPTION_KEY": key, "BLOBWRITER_EXPORT_DESTINATION": str(tmp_path / "lake")}
    with serving(["--port", "0"], env) as (process, lines, _):
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    assert any("WARNING" in line and "export_destination is set, but `blobwriter serve` exports nothing" in line
               and "`blobwriter export`" in line for line in lines), lines


def test_serve_refuses_to_start_without_a_key(azurite: str, container: str) -> None:
    env = azurite_env(azurite, "", container)
    env.pop("BLOBWRITER_ENCRYPTION_KEY")
    result = run_cli(env, "serve", "--port", str(free_port()), timeout=120)
    assert result.returncode == 2
    assert b"encryption_key" in result.stderr and b"Traceback" not in result.stderr
