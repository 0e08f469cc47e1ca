"""No credential in any output, for every kind of credential and every error path (issue 13, item 1).

Credentials: an account-key connection string, an account SAS and a container SAS (real ones, made
for Azurite with azure-storage-blob's generate_*_sas, used as `BlobEndpoint=...;SharedAccessSignature=...`),
the API key and the encryption key. Error paths: 4xx answers, 408, 503 with a full queue during an
outage, storage errors of every kind (5xx, resets, answers that are not HTTP, refusals, connections that
time out), config errors, and CLI read/verify errors. Outputs grepped: the server log at DEBUG, CLI
stderr, HTTP bodies and headers, /api/health (with and without the key), /api/metrics, exception
strings and their formatted tracebacks, and an in-process writer's log records at DEBUG.

The SAS tests fail on main: aiohttp's "Connection timeout to host <url>" and ClientResponseError carry
the request URL, query string and `sig=` included, into StoreError messages, /api/health and the logs.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
from azure.storage.blob import (
    AccountSasPermissions,
    ContainerClient,
    ContainerSasPermissions,
    ResourceTypes,
    generate_account_sas,
    generate_container_sas,
)

from blobwriter.config import Settings, load_settings
from blobwriter.errors import BlobwriterError, ConfigError
from blobwriter.keys import keygen
from blobwriter.store import open_store
from blobwriter.writer import LogWriter
from tests.conftest import ROOT
from tests.support.azurite import ACCOUNT, ACCOUNT_KEY, connection_string
from tests.support.proxy import FaultPlan, StorageProxy
from tests.support.reliability import ServeProcess, make_entries, read_until_closed, run_cli, serve_env

pytestmark = pytest.mark.reliability

API_KEY = "api-key-5b1e0c-never-in-output"
KINDS = ("account key", "account SAS", "container SAS")


@dataclass
class Credential:
    """How a store is reached with one kind of credential, and the strings that must never be shown."""

    kind: str
    container: str
    token: str  # the SAS token, or "" for the account key

    def storage(self, blob_endpoint: str) -> str:
        if not self.token:
            return connection_string(blob_endpoint)
        return f"BlobEndpoint={blob_endpoint.rstrip('/')};SharedAccessSignature={self.token}"

    @property
    def secrets(self) -> list[str]:
        if not self.token:
            return [ACCOUNT_KEY, ACCOUNT_KEY[:24]]
        sig = next(p[4:] for p in self.token.split("&") if p.startswith("sig="))
        # The signature as sent (URL-encoded) and decoded, and its first characters, which any
        # leaked prefix of a cut-off message would show.
        return [sig, unquote(sig), sig[:12], unquote(sig)[:12], self.token]


def credential(kind: str, container: str) -> Credential:
    expiry = datetime.now(UTC) + timedelta(hours=2)
    if kind == "account key":
        return Credential(kind, container, "")
    if kind == "account SAS":
        token = generate_account_sas(ACCOUNT, ACCOUNT_KEY, ResourceTypes(service=True, container=True, object=True),
                                     AccountSasPermissions(read=True, write=True, add=True, create=True, list=True),
                                     expiry=expiry)
    else:
        token = generate_container_sas(ACCOUNT, container, ACCOUNT_KEY,
                                       permission=ContainerSasPermissions(read=True, write=True, add=True,
                                                                          create=True, list=True),
                                       expiry=expiry)
    return Credential(kind, container, token)


def key_forms(key: str) -> list[str]:
    raw = base64.b64decode(key)
    return [key, base64.urlsafe_b64encode(raw).decode(), key.rstrip("="), raw.hex(), str(raw), key[:16]]


def assert_clean(what: str, text: str, secrets: list[str]) -> None:
    for secret in secrets:
        at = text.find(secret)
        assert at < 0, f"a secret appears in {what}: ...{text[max(0, at - 300):at + 60]}"


def exception_text(exc: BaseException) -> str:
    """Everything a caller or a log handler could show of an exception: str, repr, formatted traceback."""
    return f"{exc}\n{exc!r}\n{''.join(traceback.format_exception(exc))}"


@pytest.fixture
def container(azurite: str) -> str:
    """This test's container, made with the account key: a container SAS cannot create its container."""
    name = f"s{os.urandom(8).hex()}"
    with ContainerClient.from_connection_string(connection_string(azurite), name) as client:
        client.create_container()
    return name


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A blob endpoint whose TCP connections never complete: the listen queue is full and its SYNs are
    dropped, so every request ends in aiohttp's "Connection timeout to host <url>"."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(filler)
    try:
        yield f"http://127.0.0.1:{port}/{ACCOUNT}"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def _send_raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(data)
        return read_until_closed(sock)


@pytest.mark.parametrize("kind", KINDS)
def test_serve_at_debug_shows_no_credential_on_any_error_path(kind: str, proxy: StorageProxy, container: str,
                                                               key: str, tmp_path: Path) -> None:
    cred = credential(kind, container)
    secrets = [*cred.secrets, API_KEY, *key_forms(key)]
    env = serve_env(cred.storage(f"{proxy.url}/{ACCOUNT}"), key, container, BLOBWRITER_API_KEY=API_KEY,
                    BLOBWRITER_BATCH_SIZE="20", BLOBWRITER_BATCH_TIMEOUT="0.1", BLOBWRITER_STORAGE_TIMEOUT="1",
                    BLOBWRITER_RETRY_BACKOFF_MAX="0.3", BLOBWRITER_MAX_QUEUE_SIZE="200",
                    BLOBWRITER_MAX_BODY_BYTES="65536", BLOBWRITER_BODY_TIMEOUT="1", BLOBWRITER_STOP_TIMEOUT="30")
    server = ServeProcess(env, tmp_path / "serve.log", log_level="debug")
    answers: list[str] = []
    statuses: set[int] = set()
    auth = {"x-functions-key": API_KEY}

    def record(response: httpx.Response) -> httpx.Response:
        statuses.add(response.status_code)
        answers.append(f"{response.status_code} {dict(response.headers)} {response.text}")
        return response

    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            good = make_entries(20, "sec", day="2026-04-12")
            assert record(http.post("/api/logs", json=good, headers=auth)).status_code == 202
            assert record(http.post("/api/logs", json=good[:5], params={"code": API_KEY, "wait": "true"})
                          ).status_code == 200
            record(http.post("/api/logs", json=good, params={"code": API_KEY + "x"}))  # 401
            record(http.post("/api/logs", json=good, headers={"x-functions-key": key}))  # 401, the encryption key
            record(http.post("/api/logs", content=b"{bad", headers={**auth, "content-type": "application/json"}))
            record(http.post("/api/logs", json={"timestamp": None}, headers=auth))  # 400
            record(http.post("/api/logs", json={"n": 1, "timestamp": "x"}, headers=auth))  # 400
            record(http.post("/api/logs", content=b"x" * 70_000, headers={**auth, "content-type": "application/json"}))
            record(http.post("/api/logs", content=b"a=b", headers={**auth, "content-type": "text/plain"}))  # 415
            partial = _send_raw(server.port, b"POST /api/logs?code=%s HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                b"application/json\r\nContent-Length: 100\r\n\r\n[{" % API_KEY.encode())
            answers.append(partial.decode(errors="replace"))  # 408
            assert partial.startswith(b"HTTP/1.1 408 ")
            # Storage misbehaves in every way the proxy can: the warnings name each failure.
            proxy.plan = FaultPlan(error_share=0.2, reset_share=0.2, garbage_share=0.3, refuse_share=0.2, seed=13)
            for _ in range(6):
                record(http.post("/api/logs", json=make_entries(20, "sec", day="2026-04-12"), headers=auth))
            time.sleep(2)
            record(http.get("/api/health", headers=auth))
            # An outage: the queue fills, callers get 503 with Retry-After, health is 503 with the error.
            proxy.plan = FaultPlan(down=True)
            for _ in range(40):
                if record(http.post("/api/logs", json=make_entries(20, "out", day="2026-04-12"),
                                    headers=auth)).status_code == 503:
                    break
            for _ in range(100):
                if record(http.get("/api/health", headers=auth)).status_code == 503:
                    break
                time.sleep(0.1)
            record(http.get("/api/health"))
            record(http.get("/api/health", params={"code": "wrong"}))
            record(http.get("/api/metrics"))
            proxy.plan = FaultPlan()
        assert server.terminate() == 0
    finally:
        server.kill()
    assert {202, 200, 400, 401, 413, 415, 503} <= statuses, statuses
    log_text = server.log_text()
    assert "DEBUG" in log_text and "WARNING" in log_text, log_text[-2000:]
    assert_clean("the server log", log_text, secrets)
    # The storage errors above did carry a SAS request URL (aiohttp's message for an answer that is not
    # HTTP names it), so the scrubbing was exercised, not merely never needed.
    assert "sig=REDACTED" in log_text or not cred.token, log_text[-3000:]
    assert_clean("the HTTP answers", "\n".join(answers), secrets)


@pytest.mark.parametrize("kind", KINDS)
async def test_storage_errors_and_health_show_no_credential(kind: str, blackhole: str, proxy: StorageProxy,
                                                            container: str, key: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """In-process: a store and a writer whose storage times out on connect, answers garbage, refuses
    (403), or is down; every exception, the health answer, the metrics and every log record at DEBUG."""
    caplog.set_level(logging.DEBUG)
    cred = credential(kind, container)
    secrets = [*cred.secrets, *key_forms(key)]
    texts: list[str] = []
    for endpoint, plan in ((blackhole, None), (f"{proxy.url}/{ACCOUNT}", FaultPlan(garbage_share=1.0, only=all_)),
                           # Refused as a bad credential (a 403 AuthorizationPermissionMismatch, a credential
                           # that may not read container properties, answers the health probe: F8).
                           (f"{proxy.url}/{ACCOUNT}", FaultPlan(refuse_share=1.0, refuse_code="AuthenticationFailed",
                                                                only=all_)),
                           (f"{proxy.url}/{ACCOUNT}", FaultPlan(down=True))):
        if plan is not None:
            proxy.plan = plan
        settings = Settings.from_values({"storage": cred.storage(endpoint), "encryption_key": key,
                                         "container": container, "storage_timeout": 1, "retry_backoff_max": 0.2,
                                         "give_up_after": 1, "stop_timeout": 2})
        store = open_store(settings)
        with pytest.raises(BlobwriterError) as caught:
            await store.check()
        texts.append(exception_text(caught.value))
        for name in ("open", "append"):  # open() takes a 403 for "may not create it, may exist"
            try:
                await (store.open() if name == "open" else store.append(f"2026-04-13/{'ab' * 16}.0000.log", b"x"))
            except BlobwriterError as exc:
                texts.append(exception_text(exc))
        await store.close()
        writer = LogWriter(settings)
        await writer.start()
        await writer.write_many(make_entries(5, "inproc", day="2026-04-13"))
        for _ in range(50):
            health = await writer.health()
            if health["storage_error"]:
                break
            await asyncio.sleep(0.1)
        assert health["ok"] is False and health["storage_error"], health
        texts += [str(health), str(writer.metrics.snapshot()), writer.metrics.render().decode()]
        await writer.stop()
    proxy.plan = FaultPlan()
    # Every record but the test proxy's own server logs (aiohttp.access/aiohttp.server: the proxy logs each
    # request line it receives, SAS included, as any web server would; it is not blobwriter's output).
    handler = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    records = [r for r in caplog.records if not r.name.startswith(("aiohttp.access", "aiohttp.server"))]
    assert any(r.name.startswith("blobwriter") for r in records) and any(r.name.startswith("azure") for r in records)
    texts += [handler.format(r) for r in records]
    assert any("failed" in t for t in texts)
    assert_clean("exceptions, health, metrics or logs", "\n".join(texts), secrets)


def all_(request: object) -> bool:
    return True


@pytest.mark.parametrize("kind", KINDS)
def test_cli_read_and_verify_errors_show_no_credential(kind: str, blackhole: str, azurite_upstream: str,
                                                       container: str, key: str, tmp_path: Path) -> None:
    """`blobwriter -v read|verify` against storage that times out on connect, answers garbage, or refuses
    with 403: exit 2 with one error line, and no secret in anything printed (the three run at once: the
    SDK's retries make each take a while, mostly waiting)."""
    cred = credential(kind, container)
    secrets = [*cred.secrets, *key_forms(key)]
    garbage = StorageProxy(azurite_upstream, FaultPlan(garbage_share=1.0, only=all_)).start_in_thread()
    refusing = StorageProxy(azurite_upstream, FaultPlan(refuse_share=1.0, refuse_status=403,
                                                        refuse_code="AuthenticationFailed", only=all_)
                            ).start_in_thread()
    runs = []
    try:
        for n, (endpoint, command) in enumerate(((blackhole, "read"), (f"{garbage.url}/{ACCOUNT}", "verify"),
                                                  (f"{refusing.url}/{ACCOUNT}", "read"))):
            env = serve_env(cred.storage(endpoint), key, container, BLOBWRITER_STORAGE_TIMEOUT="1")
            err = open(tmp_path / f"cli{n}.err", "wb")
            runs.append((subprocess.Popen([sys.executable, "-m", "blobwriter", "-v", command, "--date", "2026-04-14"],
                                          env=env, cwd=ROOT, stdout=err, stderr=err), err, n))
        outputs = []
        for process, err, n in runs:
            code = process.wait(180)
            err.close()
            text = (tmp_path / f"cli{n}.err").read_text(errors="replace")
            # One error line, last; at -v the SDK's own debug records may hold tracebacks it caught itself.
            assert code == 2 and text.strip().splitlines()[-1].startswith("blobwriter: error:"), text[-3000:]
            outputs.append(text)
    finally:
        for process, err, _ in runs:
            if process.poll() is None:
                process.kill()
            err.close()
        garbage.stop_thread()
        refusing.stop_thread()
    assert "DEBUG" in outputs[0] and "Connection timeout" in outputs[0] and "403" in outputs[2]
    assert_clean("CLI output", "\n".join(outputs), secrets)


@pytest.mark.parametrize("kind", KINDS)
def test_config_and_credential_errors_show_no_credential(kind: str, azurite: str, container: str,
                                                         key: str) -> None:
    """Bad values next to each credential (a bad container name, a key that is not base64, a value out of
    range), a storage value that holds the credential but is no connection string: load_settings, `read`
    and `serve` fail with one line. A forged SAS signature or the wrong account key: `read`
    fails with one line (403). No secret in any of it."""
    cred = credential(kind, container)
    storage = cred.storage(azurite)
    secrets = [*cred.secrets, API_KEY, *key_forms(key)]
    not_a_connection_string = cred.token if cred.token else f"AccountKey={ACCOUNT_KEY}"
    broken = (cred.storage(azurite).replace("sig=", "sig=AAAA") if cred.token  # a forged signature
              else storage.replace(ACCOUNT_KEY, base64.b64encode(b"wrong key " * 6).decode()))  # the wrong key
    cases = [({"BLOBWRITER_CONTAINER": "Bad_Name"}, True), ({"BLOBWRITER_ENCRYPTION_KEY": "not base64!!"}, True),
             ({"BLOBWRITER_BATCH_SIZE": "0"}, True), ({"BLOBWRITER_STORAGE": not_a_connection_string}, True),
             ({"BLOBWRITER_STORAGE": broken}, False)]
    outputs = []
    base = {k: v for k, v in os.environ.items() if not k.startswith("BLOBWRITER_")}
    for extra, at_load in cases:
        env = {**base, "BLOBWRITER_STORAGE": storage, "BLOBWRITER_ENCRYPTION_KEY": key,
               "BLOBWRITER_CONTAINER": container, "BLOBWRITER_API_KEY": API_KEY, "BLOBWRITER_STORAGE_TIMEOUT": "1",
               **extra}
        if at_load:
            with pytest.raises(ConfigError) as caught:
                load_settings(env=env)
            outputs.append(exception_text(caught.value))
        commands = [["-v", "read", "--date", "2026-04-15"]]
        if at_load:  # a config error stops `serve` before it binds; anything else would serve
            commands.append(["serve", "--log-level", "debug", "--port", "9"])
        for command in commands:
            result = run_cli(env, *command, timeout=120)
            err = result.stderr.decode(errors="replace")
            assert result.returncode == 2 and "blobwriter: error:" in err and "Traceback" not in err, err[-3000:]
            outputs.append(err + result.stdout.decode(errors="replace"))
    assert "403" in outputs[-1], outputs[-1][-2000:]
    assert_clean("config and credential errors", "\n".join(outputs), secrets)


def test_the_secrets_in_these_tests_are_real_credentials(azurite: str, container: str) -> None:
    """The SAS tokens above are not made-up strings: they authorize requests to Azurite (so a leak of one
    would be a leak of a working credential), and a wrong signature is refused."""
    async def roundtrip(storage: str) -> list[str]:
        settings = Settings.from_values({"storage": storage, "encryption_key": keygen(), "container": container})
        store = open_store(settings)
        try:
            await store.open()
            await store.append(f"2026-04-16/{'cd' * 16}.0000.log", b"hello")
            return await store.parts("2026-04-16")
        finally:
            await store.close()

    for kind in KINDS:
        cred = credential(kind, container)
        assert asyncio.run(roundtrip(cred.storage(azurite))) == [f"2026-04-16/{'cd' * 16}.0000.log"]
        if cred.token:
            forged = Credential(kind, container, cred.token.replace("sig=", "sig=AAAA"))
            with pytest.raises(BlobwriterError, match="403"):
                asyncio.run(roundtrip(forged.storage(azurite)))



@pytest.mark.parametrize("kind", ["account SAS", "container SAS"])
def test_an_account_url_with_a_sas_token_signs_with_the_sas(kind: str, azurite: str, container: str, key: str,
                                                            tmp_path: Path) -> None:
    """`storage: https://<account>.blob.core.windows.net?sv=...&sig=...` (the form azcopy and the portal hand
    out, and `export --out` takes) is used as that SAS, not sent with a DefaultAzureCredential token (QA
    round 9, security F2): `serve` writes through it, `read` reads back, and the debug log shows no part
    of it."""
    cred = credential(kind, container)
    storage = f"{azurite}?{cred.token}"
    server = ServeProcess(serve_env(storage, key, container, BLOBWRITER_BATCH_TIMEOUT="0.1"), tmp_path / "serve.log",
                          log_level="debug")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            answer = http.post("/api/logs", params={"wait": "true"}, json=make_entries(5, "sas-url", day="2026-04-17"))
            assert answer.status_code == 200 and answer.json() == {"written": 5}, answer.text
            health = http.get("/api/health")
        assert server.terminate() == 0
    finally:
        server.kill()
    read = run_cli(serve_env(storage, key, container), "-v", "read", "--date", "2026-04-17")
    assert read.returncode == 0, read.stderr.decode(errors="replace")[-2000:]
    assert len(read.stdout.splitlines()) == 5
    assert_clean("serve's log and read's output", server.log_text() + read.stderr.decode(errors="replace")
                 + health.text, [*cred.secrets, *key_forms(key)])


def test_an_http_account_url_without_a_sas_is_a_config_error(azurite: str, container: str, key: str) -> None:
    """Entra ID tokens go only over https, so an http:// account URL without a SAS failed at the first
    request (a traceback at `serve`'s start-up): now one line at load, for `serve` and `read` alike, as
    are a query string that is no SAS token and a URL without a host (QA round 9, security F2)."""
    cases = {azurite: "without a SAS token", f"{azurite}?comp=list&secret=hunter2": "not a SAS token",
             "https://?sv=2021&sig=c2VjcmV0": "no host"}
    for storage, why in cases.items():
        with pytest.raises(ConfigError, match=why) as caught:
            load_settings(env={"BLOBWRITER_STORAGE": storage, "BLOBWRITER_ENCRYPTION_KEY": key})
        assert "hunter2" not in exception_text(caught.value) and "c2VjcmV0" not in exception_text(caught.value)
        for command in (["read", "--date", "2026-04-18"], ["serve", "--port", "9"]):
            result = run_cli(serve_env(storage, key, container), *command, timeout=120)
            err = result.stderr.decode(errors="replace")
            assert result.returncode == 2 and "Traceback" not in err, err[-3000:]
            assert err.strip().splitlines() == [f"blobwriter: error: {caught.value}"], err


@pytest.mark.parametrize("kind", KINDS)
async def test_health_is_ok_with_every_kind_of_credential(kind: str, azurite: str, container: str, key: str) -> None:
    """A SAS of the container may append, list and read but not get the container's properties, which
    the health probe asked for: /api/health was 503 for as long as such a writer ran, its appends all
    landing (QA round 9, security F8). A forged signature is still unhealthy."""
    cred = credential(kind, container)
    settings = Settings.from_values({"storage": cred.storage(azurite), "encryption_key": key, "container": container})
    async with LogWriter(settings) as writer:
        await writer.write_many(make_entries(3, "health", day="2026-04-19"), wait=True)
        health = await writer.health()
        assert health["ok"] is True and health["storage_error"] is None, health
    if cred.token:
        forged = Credential(kind, container, cred.token.replace("sig=", "sig=AAAA"))
        store = open_store(Settings.from_values({"storage": forged.storage(azurite), "encryption_key": key,
                                                 "container": container}))
        try:
            with pytest.raises(BlobwriterError, match="403"):
                await store.check()
        finally:
            await store.close()


@pytest.mark.parametrize("account_key", ["not-base64!!", "c2VjcmV0a2V5X"])
def test_an_account_key_that_is_not_base64_is_a_config_error(account_key: str, azurite: str, container: str,
                                                             key: str) -> None:
    """The SDK decodes the account key only when it signs a request: a connection string whose key is not
    base64 passed the settings, then every append failed and was retried as if storage were down, each
    entry answered 202 and never written (QA round 9, security F11). Now one line at load, unseen."""
    storage = connection_string(azurite).replace(ACCOUNT_KEY, account_key)
    with pytest.raises(ConfigError, match="AccountKey that is not base64") as caught:
        load_settings(env={"BLOBWRITER_STORAGE": storage, "BLOBWRITER_ENCRYPTION_KEY": key})
    assert account_key not in exception_text(caught.value)
    for command in (["read", "--date", "2026-04-20"], ["serve", "--port", "9"]):
        result = run_cli(serve_env(storage, key, container), *command, timeout=120)
        err = result.stderr.decode(errors="replace")
        assert result.returncode == 2 and err.strip().splitlines() == [f"blobwriter: error: {caught.value}"], err
    # A key the SDK takes (its decoding ignores characters outside the alphabet) is not refused.
    Settings.from_values({"storage": connection_string(azurite).replace(ACCOUNT_KEY, ACCOUNT_KEY + "\n"),
                          "encryption_key": key})
