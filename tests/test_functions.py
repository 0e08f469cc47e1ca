"""The Azure Functions entry point, loaded the way the Python worker loads it.

The worker imports function_app.py, indexes `app.get_functions()` and calls the registered
function with an `azure.functions.HttpRequest`. Core Tools (`func`) cannot run here, so this
is the closest real check: the same module, the same binding metadata, the same invocation.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import azure.functions as func
import orjson
import pytest

from blobwriter.config import FIELDS, Settings
from tests.conftest import entry
from tests.test_api import TODAY, read_all

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def function_module(make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch,
                    azurite: str, key: str, container: str) -> Iterator[tuple[ModuleType, Settings]]:
    settings = make_settings()
    from tests.conftest import connection_string

    monkeypatch.setenv("BLOBWRITER_STORAGE", connection_string(azurite))
    monkeypatch.setenv("BLOBWRITER_ENCRYPTION_KEY", key)
    monkeypatch.setenv("BLOBWRITER_CONTAINER", container)
    monkeypatch.setenv("BLOBWRITER_BATCH_TIMEOUT", "0.1")
    sys.modules.pop("function_app", None)
    module = importlib.import_module("function_app")
    yield module, settings
    # AsgiFunctionApp.__del__ runs asyncio.run(shutdown) if startup ran; the tests shut down themselves,
    # and a __del__ that fires later inside another test's event loop would only raise there.
    module.app.startup_task_done = False
    sys.modules.pop("function_app", None)


def http_function(module: ModuleType) -> Any:
    [function] = module.app.get_functions()
    return function


def test_index_exposes_one_http_trigger_with_function_auth(function_module: tuple[ModuleType, Settings]) -> None:
    module, _ = function_module
    function = http_function(module)
    bindings = {b.type: b for b in function.get_bindings()}
    trigger = bindings["httpTrigger"]
    assert trigger.route == "/{*route}"
    assert trigger.auth_level == func.AuthLevel.FUNCTION
    assert {m.value for m in trigger.methods} >= {"GET", "POST"}
    assert bindings["http"].name == "$return"
    # The worker serializes this JSON to the host; it must name the trigger and route.
    metadata = json.loads(function.get_function_json())
    assert metadata["bindings"][0]["route"] == "/{*route}"


def test_host_json_keeps_the_api_route_prefix() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"]["id"] == "Microsoft.Azure.Functions.ExtensionBundle"
    assert host["extensions"]["http"]["routePrefix"] == "api"


def test_local_settings_example_names_every_setting() -> None:
    values = json.loads((ROOT / "local.settings.json.example").read_text())["Values"]
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    expected = {f.env for f in FIELDS if not f.serve_only}  # api_key, body limits: `serve` only
    assert expected <= set(values)


async def test_post_and_health_through_the_registered_function(function_module: tuple[ModuleType, Settings]) -> None:
    module, settings = function_module
    handler = http_function(module).get_user_function()
    entries = [entry(), entry(), entry()]

    health = await handler(func.HttpRequest("GET", "http://localhost:7071/api/health", body=b""), None)
    assert health.status_code == 200
    assert json.loads(health.get_body())["state"] == "running"

    posted = await handler(func.HttpRequest(
        "POST", "http://localhost:7071/api/logs", headers={"content-type": "application/json"},
        body=orjson.dumps(entries[:2])), None)
    assert posted.status_code == 202
    assert json.loads(posted.get_body()) == {"accepted": 2}

    durable = await handler(func.HttpRequest(
        "POST", "http://localhost:7071/api/logs?wait=true", headers={"content-type": "application/json"},
        params={"wait": "true"}, body=orjson.dumps(entries[2])), None)
    assert durable.status_code == 200
    assert json.loads(durable.get_body()) == {"written": 1}

    bad = await handler(func.HttpRequest(
        "POST", "http://localhost:7071/api/logs", headers={"content-type": "application/json"},
        body=b"[{]"), None)
    assert bad.status_code == 400

    # The host would run ASGI lifespan shutdown; do it here so the writer flushes.
    await module.app.middleware.notify_shutdown()
    stored = await read_all(settings, [TODAY])
    assert sorted(e["id"] for e in stored) == sorted(e["id"] for e in entries)


async def test_the_deployed_ack_answers_once_written(function_module: tuple[ModuleType, Settings],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """infra/main.bicep deploys BLOBWRITER_ACK=written (docs/DEPLOY.md: an answered entry survives a deploy or
    restart): through the registered function a plain POST answers 200 once appended, ?wait=false 202."""
    monkeypatch.setenv("BLOBWRITER_ACK", "written")
    sys.modules.pop("function_app", None)
    module = importlib.import_module("function_app")
    try:
        handler = http_function(module).get_user_function()
        first, second = entry(), entry()
        durable = await handler(func.HttpRequest(
            "POST", "http://localhost:7071/api/logs", headers={"content-type": "application/json"},
            body=orjson.dumps(first)), None)
        assert durable.status_code == 200 and json.loads(durable.get_body()) == {"written": 1}
        _, settings = function_module
        assert [e["id"] for e in await read_all(settings, [TODAY])] == [first["id"]], "written before the answer"
        queued = await handler(func.HttpRequest(
            "POST", "http://localhost:7071/api/logs?wait=false", headers={"content-type": "application/json"},
            params={"wait": "false"}, body=orjson.dumps(second)), None)
        assert queued.status_code == 202 and json.loads(queued.get_body()) == {"accepted": 1}
        await module.app.middleware.notify_shutdown()
    finally:
        module.app.startup_task_done = False
        sys.modules.pop("function_app", None)


# -- configuration errors: the app stays indexed and says what is wrong ------------------------------

KEY_VAULT_REFERENCE = ("@Microsoft.KeyVault(SecretUri=https://kv-blobwriter.vault.azure.net/secrets/"
                       "blobwriter-encryption-key/)")


def load_function_app(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> ModuleType:
    """Import function_app.py the way the worker does, with exactly these BLOBWRITER_* settings."""
    import os

    for name in list(os.environ):
        if name.startswith("BLOBWRITER_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    sys.modules.pop("function_app", None)
    return importlib.import_module("function_app")


@pytest.mark.parametrize(("env", "setting", "never_shown"), [
    ({}, "storage", None),
    ({"BLOBWRITER_STORAGE": "UseDevelopmentStorage=true", "BLOBWRITER_ENCRYPTION_KEY": KEY_VAULT_REFERENCE},
     "encryption_key", KEY_VAULT_REFERENCE),
    ({"BLOBWRITER_STORAGE": "UseDevelopmentStorage=true", "BLOBWRITER_ENCRYPTION_KEY": "bm90LWEta2V5"},
     "encryption_key", "bm90LWEta2V5"),
    ({"BLOBWRITER_STORAGE": "UseDevelopmentStorage=true", "BLOBWRITER_ENCRYPTION_KEY": "A" * 43 + "=",
      "BLOBWRITER_BATCH_SIZE": "77777"}, "batch_size", "77777"),
    # Malformed (a ValueError from the SDK at the first request: a 500 on every route); never echoed.
    ({"BLOBWRITER_STORAGE": "AccountKey=c2VjcmV0;baz", "BLOBWRITER_ENCRYPTION_KEY": "A" * 43 + "="},
     "storage", "c2VjcmV0"),
])
async def test_a_configuration_error_answers_503_on_every_route(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, env: dict[str, str], setting: str,
        never_shown: str | None) -> None:
    caplog.set_level(logging.ERROR, logger="blobwriter")
    module = load_function_app(monkeypatch, env)
    try:
        handler = http_function(module).get_user_function()  # indexed as always: no 404 on every route
        answers = [
            await handler(func.HttpRequest("GET", "http://localhost:7071/api/health", body=b""), None),
            await handler(func.HttpRequest("GET", "http://localhost:7071/api/metrics", body=b""), None),
            await handler(func.HttpRequest("POST", "http://localhost:7071/api/logs",
                                           headers={"content-type": "application/json"}, body=b"{}"), None),
        ]
        for answer in answers:
            assert answer.status_code == 503
            body = answer.get_body().decode()
            assert f"Config '{setting}'" in json.loads(body)["error"]
            if never_shown:
                assert never_shown not in body
        if setting == "encryption_key" and never_shown == KEY_VAULT_REFERENCE:
            assert "Key Vault reference" in json.loads(answers[0].get_body())["error"]
        errors = [r for r in caplog.records if r.name == "blobwriter" and r.levelno == logging.ERROR]
        assert len(errors) == 1 and f"Config '{setting}'" in errors[0].getMessage()
        if never_shown and setting != "batch_size":  # a secret's value is never logged either
            assert never_shown not in errors[0].getMessage()
    finally:
        module.app.startup_task_done = False  # no lifespan to shut down (see the fixture above)
        sys.modules.pop("function_app", None)
