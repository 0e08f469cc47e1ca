"""Secrets stay secret at DEBUG: no encryption key, API key or storage account key in any log line or
error message, from `blobwriter serve`, `blobwriter -v read|verify`, config errors, or an in-process writer."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from blobwriter.config import Settings, load_settings
from blobwriter.errors import ConfigError
from blobwriter.keys import keygen
from blobwriter.writer import LogWriter
from tests.support.azurite import ACCOUNT_KEY as AZURITE_KEY
from tests.support.azurite import connection_string
from tests.support.proxy import FaultPlan, StorageProxy
from tests.support.reliability import ServeProcess, azurite_env, make_entries, record_figures, run_cli

pytestmark = pytest.mark.reliability

API_KEY = "api-key-9f3c1e7a-do-not-log"


def forms(key: str) -> list[str]:
    """The ways a key could leak: as given, URL-safe, unpadded, hex of the raw bytes."""
    raw = base64.b64decode(key)
    return [key, base64.urlsafe_b64encode(raw).decode(), key.rstrip("="), raw.hex(), str(raw)]


def assert_clean(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"a secret appears in: ...{text[max(0, text.find(secret) - 200):][:400]}"


@pytest.fixture
def flaky_proxy(azurite_upstream: str) -> Iterator[StorageProxy]:
    proxy = StorageProxy(azurite_upstream, FaultPlan(error_share=0.3, reset_share=0.1, seed=3)).start_in_thread()
    try:
        yield proxy
    finally:
        proxy.stop_thread()


def test_serve_and_cli_at_debug_never_log_a_key(flaky_proxy: StorageProxy, azurite: str, key: str, container: str,
                                                tmp_path: Path) -> None:
    secrets = [*forms(key), API_KEY, AZURITE_KEY]
    env = azurite_env(f"{flaky_proxy.url}/devstoreaccount1", key, container, BLOBWRITER_API_KEY=API_KEY,
                      BLOBWRITER_BATCH_SIZE="20", BLOBWRITER_BATCH_TIMEOUT="0.1", BLOBWRITER_RETRY_BACKOFF_MAX="0.5",
                      BLOBWRITER_STORAGE_TIMEOUT="2")
    server = ServeProcess(env, tmp_path / "serve.log", log_level="debug")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for _ in range(20):
                batch = make_entries(20, "secret", day="2026-04-10")
                assert client.post("/api/logs", json=batch, headers={"x-functions-key": API_KEY}).status_code == 202
                assert client.post("/api/logs", json=batch, params={"code": API_KEY + "x"}).status_code == 401
                assert client.post("/api/logs", json=batch, headers={"x-functions-key": key}).status_code == 401
                assert client.post("/api/logs", params={"code": API_KEY, "wait": "true"},
                                   json=batch).status_code in (200, 503)
                bad = client.post("/api/logs", content=b"{bad", headers={"x-functions-key": API_KEY})
                assert bad.status_code == 400
            client.get("/api/health")
            client.get("/api/metrics")
        assert server.terminate() == 0
    finally:
        server.kill()
    log_text = server.log_text()
    assert "DEBUG" in log_text and "WARNING" in log_text  # really at debug, and storage errors were logged
    assert_clean(log_text, *secrets)

    cli_outputs = []
    direct = azurite_env(azurite, key, container)
    for args in (["read"], ["verify"], ["verify", "--json"]):
        result = run_cli(direct, "-v", *args, "--date", "2026-04-10")
        assert result.returncode == 0, result.stderr[-2000:]
        cli_outputs.append(result.stderr.decode(errors="replace"))
    wrong = keygen()
    result = run_cli(azurite_env(azurite, wrong, container), "-v", "read", "--date", "2026-04-10")
    assert result.returncode == 2
    cli_outputs.append(result.stderr.decode(errors="replace"))
    assert "DEBUG" in cli_outputs[0]
    assert_clean("\n".join(cli_outputs), *secrets, *forms(wrong))
    record_figures(
        "8 secrets", load="400 entries through serve --log-level debug (plus 401s and a 400 per round)",
        faults="30% of appends 5xx, 10% reset (to log warnings)", accepted="", read_back="", lost="",
        duplicated="",
        notes=f"{len(log_text.splitlines())} server log lines and {sum(len(o.splitlines()) for o in cli_outputs)} "
              "CLI stderr lines at DEBUG: no encryption key, API key or account key",
    )


BAD_KEYS = {
    "not base64": "secret-value-not-base64!!",
    "too short": base64.b64encode(b"secret-16-bytes!").decode(),
    "too long": base64.b64encode(b"s" * 48).decode(),
}


@pytest.mark.parametrize("problem", sorted(BAD_KEYS))
def test_config_errors_for_a_bad_key_do_not_echo_it(problem: str, tmp_path: Path) -> None:
    bad = BAD_KEYS[problem]
    good = keygen()
    cases = [
        {"BLOBWRITER_ENCRYPTION_KEY": bad},
        {"BLOBWRITER_ENCRYPTION_KEY": good, "BLOBWRITER_PREVIOUS_KEYS": f"{keygen()},{bad}"},
    ]
    for extra in cases:
        env = {"BLOBWRITER_STORAGE": str(tmp_path), **extra}
        with pytest.raises(ConfigError) as raised:
            load_settings(env=env)
        assert_clean(str(raised.value), bad, good)
        base = azurite_env("http://127.0.0.1:9/devstoreaccount1", good, "logs")
        for command in (["-v", "read", "--date", "2026-04-10"], ["serve", "--log-level", "debug", "--port", "9"]):
            result = run_cli({**base, "BLOBWRITER_STORAGE": str(tmp_path), **extra}, *command)
            err = result.stderr.decode()
            assert result.returncode == 2 and "Traceback" not in err, err
            assert "encryption_key" in err or "previous_keys" in err, err
            assert_clean(err + result.stdout.decode(), bad, good)
    config = tmp_path / "config.yaml"
    config.write_text(f"logging:\n  storage: {tmp_path}\n  encryption_key: '{bad}'\n  api_key: {API_KEY}\n")
    result = run_cli({"PATH": "/usr/bin:/bin"}, "--config", str(config), "-v", "verify", "--date", "2026-04-10")
    assert result.returncode == 2
    assert_clean(result.stderr.decode(), bad, API_KEY)


async def test_in_process_writer_at_debug_never_logs_a_key(flaky_proxy: StorageProxy, key: str, container: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = Settings.from_values({"storage": connection_string(f"{flaky_proxy.url}/devstoreaccount1"),
                                     "encryption_key": key, "container": container, "api_key": API_KEY,
                                     "batch_size": 10, "batch_timeout": 0.1, "retry_backoff_max": 0.2})
    async with LogWriter(settings) as writer:
        await writer.write_many(make_entries(200, "inproc", day="2026-04-11"), wait=True)
        snapshot = str(await writer.health()) + str(writer.metrics.snapshot()) + writer.metrics.render().decode()
    text = caplog.text + snapshot + repr(settings) + str(settings)
    assert "Append of" in caplog.text  # the retries were logged
    assert_clean(text, *forms(key), API_KEY, AZURITE_KEY)
