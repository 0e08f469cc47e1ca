"""Privacy controls (blobwriter/privacy.py): drop, mask, truncate and metadata-only, applied at admission
before anything is encrypted; configured in settings and narrowed (never widened) per call or request."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from blobwriter.api import create_app
from blobwriter.config import Settings
from blobwriter.entries import Admission, Rules, prepare
from blobwriter.errors import ConfigError, EntryError
from blobwriter.keys import keygen
from blobwriter.privacy import BODY_FIELDS, MASK, Privacy, truncation_marker
from blobwriter.writer import LogWriter
from tests.support.readback import read_back
from tests.support.serving import served

TS = "2026-11-24T21:00:02.919Z"
ENTRY = {
    "id": "e1", "timestamp": TS, "user": "rupert@contoso.com", "deployment": "gpt-4o",
    "request": {"messages": [{"role": "system", "content": "You are helpful."},
                             {"role": "user", "content": "my card is 4111 1111 1111 1111"}],
                "temperature": 1.0},
    "response": {"choices": [{"message": {"role": "assistant", "content": "noted: 4111 1111 1111 1111"}}],
                 "usage": {"total_tokens": 98}},
    "tokens": {"prompt": 33, "completion": 65, "total": 98}, "cost_eur": 0.000733, "status_code": 200,
    "error": None,
}


def stored(entry: dict[str, Any], privacy: Privacy, **rules: Any) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(Admission(Rules(1 << 20, privacy=privacy, **rules)).prepare(entry).line)
    return result


def test_no_control_keeps_the_entry_as_sent() -> None:
    assert stored(ENTRY, Privacy()) == ENTRY


def test_metadata_only_drops_the_request_and_response_bodies() -> None:
    kept = stored(ENTRY, Privacy(metadata_only=True))
    assert BODY_FIELDS == ("request", "response")
    assert kept == {k: v for k, v in ENTRY.items() if k not in ("request", "response")}
    assert kept["tokens"] == ENTRY["tokens"] and kept["cost_eur"] == ENTRY["cost_eur"]  # usage survives


def test_drop_by_dotted_path_with_wildcards() -> None:
    kept = stored(ENTRY, Privacy(drop=("user", "request.messages.*.content", "response.choices.*.message",
                                       "no.such.path")))
    assert "user" not in kept
    assert kept["request"]["messages"] == [{"role": "system"}, {"role": "user"}]
    assert kept["response"]["choices"] == [{}]
    assert kept["response"]["usage"] == ENTRY["response"]["usage"]


def test_mask_replaces_values_of_any_type() -> None:
    kept = stored(ENTRY, Privacy(mask=("request.messages.*.content", "response.choices.*.message.content",
                                       "tokens", "cost_eur")))
    assert [m["content"] for m in kept["request"]["messages"]] == [MASK, MASK]
    assert kept["response"]["choices"][0]["message"] == {"role": "assistant", "content": MASK}
    assert kept["tokens"] == MASK and kept["cost_eur"] == MASK
    assert "4111" not in orjson.dumps(kept).decode()


def test_wildcard_matches_object_members_and_list_items() -> None:
    entry = {"timestamp": TS, "headers": {"authorization": "Bearer x", "cookie": "y"}, "list": [1, 2, 3]}
    assert stored(entry, Privacy(mask=("headers.*",)))["headers"] == {"authorization": MASK, "cookie": MASK}
    assert stored(entry, Privacy(mask=("list.*",)))["list"] == [MASK, MASK, MASK]
    assert stored(entry, Privacy(drop=("list.*",)))["list"] == []


def test_truncate_cuts_long_strings_at_a_character_boundary_with_a_marker() -> None:
    text = "é" * 100  # 200 bytes of UTF-8
    entry = {"timestamp": TS, "short": "x" * 64, "long": text, "nested": [{"deep": "y" * 65}], "n": 5}
    kept = stored(entry, Privacy(truncate_bytes=64))
    assert kept["short"] == "x" * 64
    assert kept["long"] == "é" * 32 + truncation_marker(200) and kept["long"].endswith("…[truncated: 200 bytes]")
    assert kept["nested"] == [{"deep": "y" * 64 + truncation_marker(65)}]
    odd = stored({"timestamp": TS, "s": "a" + "é" * 40}, Privacy(truncate_bytes=64))["s"]
    assert odd == "a" + "é" * 31 + truncation_marker(81)  # 63 bytes: the split character is left out whole
    assert kept["timestamp"] == TS and kept["n"] == 5


def test_truncation_keeps_object_keys_whole() -> None:
    """Cut keys could merge two fields; README says so, and that dropping is what hides a name."""
    key, other = "k" * 300, "k" * 299 + "j"
    kept = stored({"timestamp": TS, key: "v" * 100, "o": {other: 1}}, Privacy(truncate_bytes=64))
    assert kept[key] == "v" * 64 + truncation_marker(100) and kept["o"] == {other: 1}
    assert key not in stored({"timestamp": TS, key: 1}, Privacy(drop=[key]))


def test_truncation_leaves_the_timestamp_and_received_at_alone() -> None:
    long_stamp = "2026-11-24T21:00:02." + "1" * 80 + "Z"
    kept = stored({"timestamp": long_stamp, "text": "z" * 100}, Privacy(truncate_bytes=64),
                  received_at_field="received_at")
    assert kept["timestamp"] == long_stamp and len(kept["received_at"]) == 24


def test_controls_apply_in_order_and_never_modify_the_callers_entry() -> None:
    original = copy.deepcopy(ENTRY)
    kept = stored(ENTRY, Privacy(drop=("user",), mask=("request.messages.*.content",), truncate_bytes=64,
                                 metadata_only=True))
    assert ENTRY == original
    assert set(kept) == set(ENTRY) - {"user", "request", "response"}


def test_controls_apply_before_the_size_limit() -> None:
    """A truncated entry is measured as stored: what would be too large as sent fits once truncated."""
    big = {"timestamp": TS, "body": "x" * 5000}
    with pytest.raises(EntryError, match="max_entry_bytes"):
        prepare(big, 2048)
    fits = Admission(Rules(2048, privacy=Privacy(truncate_bytes=1000))).prepare(big)
    assert len(fits.line) < 2048


def test_a_call_can_only_narrow_the_configured_controls() -> None:
    base = Privacy(drop=("user",), truncate_bytes=100)
    narrowed = base.narrowed(Privacy(drop=("deployment",), mask=("tokens",), truncate_bytes=500,
                                     metadata_only=True))
    assert narrowed == Privacy(drop=("user", "deployment"), mask=("tokens",), truncate_bytes=100, metadata_only=True)
    assert base.narrowed(Privacy(truncate_bytes=50)).truncate_bytes == 50
    assert base.narrowed(None) is base and base.narrowed(Privacy()) is base


@pytest.mark.parametrize("given", [{"drop": ["user"]}, ("user",), "user"])
async def test_a_call_privacy_that_is_not_a_privacy_is_a_type_error_naming_privacy(tmp_path: Any, given: Any) -> None:
    """A hands-on review passed privacy={"drop": ["a"]} and got AttributeError: 'dict' object has no
    attribute 'active', from deep inside admission."""
    writer = LogWriter(Settings.from_values({"storage": str(tmp_path), "encryption_key": keygen()}))
    expected = r"privacy must be a Privacy, not (dict|tuple|str): .*from blobwriter import Privacy.*Privacy\(drop="
    with pytest.raises(TypeError, match=expected):
        await writer.write(dict(ENTRY), privacy=given)
    with pytest.raises(TypeError, match=expected):
        await writer.write_many([dict(ENTRY)], privacy=given)
    with pytest.raises(TypeError, match=expected):
        writer.admit([(0, dict(ENTRY))], privacy=given)


def test_privacy_paths_are_a_list_or_tuple_never_one_string() -> None:
    """Privacy(drop=["user"]) (what the message above suggests) works like a tuple; Privacy(drop="user")
    used to drop the fields 'u', 's', 'e' and 'r' and keep 'user'."""
    assert stored(ENTRY, Privacy(drop=["user"], mask=["tokens"])) == stored(ENTRY, Privacy(drop=("user",),
                                                                                             mask=("tokens",)))
    assert Privacy(drop=("a",)).narrowed(Privacy(drop=["b"])) == Privacy(drop=("a", "b"))
    for name in ("drop", "mask"):
        with pytest.raises(TypeError, match=rf"Privacy\({name}=\.\.\.\) takes a list of paths, e.g. {name}=\['user'\]"):
            Privacy(**{name: "user"})


@pytest.mark.parametrize(("values", "match"), [
    ({"drop_fields": "timestamp"}, "'timestamp'"),
    ({"mask_fields": "a,timestamp.x"}, "'timestamp'"),
    ({"mask_fields": "*.content"}, "'\\*'"),
    ({"drop_fields": "a..b"}, "without empty segments"),
    ({"drop_fields": "received_at", "received_at_field": "received_at"}, "received_at_field"),
    ({"truncate_bytes": "10"}, "out of range"),
    ({"metadata_only": "maybe"}, "allowed values are true, false"),
    ({"received_at_field": "timestamp"}, "other than 'timestamp'"),
])
def test_bad_privacy_settings_are_config_errors(tmp_path: Any, values: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Settings.from_values({"storage": str(tmp_path), **values})


def test_privacy_settings_from_the_environment(tmp_path: Any) -> None:
    settings = Settings.from_values({"storage": str(tmp_path), "drop_fields": " user , request.messages.*.content ",
                                     "mask_fields": "", "truncate_bytes": "4096", "metadata_only": "TRUE"})
    assert settings.drop_fields == ("user", "request.messages.*.content")
    assert (settings.mask_fields, settings.truncate_bytes, settings.metadata_only) == ((), 4096, True)
    defaults = Settings.from_values({"storage": str(tmp_path)})
    assert (defaults.drop_fields, defaults.mask_fields, defaults.truncate_bytes, defaults.metadata_only) == \
        ((), (), None, False)


async def test_what_is_dropped_never_reaches_storage(make_settings: Callable[..., Settings]) -> None:
    """End to end through a real writer and Azurite, read back (decrypted) by the real Reader."""
    settings = make_settings(mask_fields="request.messages.*.content,response.choices.*.message.content",
                             drop_fields="user", compression="none")
    async with LogWriter(settings) as writer:
        await writer.write(ENTRY, wait=True)
        await writer.write({**ENTRY, "id": "e2"}, wait=True, privacy=Privacy(metadata_only=True))
    entries, report = await read_back(settings, ["2026-11-24"])
    assert report.ok
    by_id = {e["id"]: e for e in entries}
    assert "user" not in by_id["e1"] and by_id["e1"]["request"]["messages"][1]["content"] == MASK
    assert "request" not in by_id["e2"] and "response" not in by_id["e2"] and "user" not in by_id["e2"]
    for e in entries:
        assert "4111" not in orjson.dumps(e).decode()


async def test_http_request_can_keep_less_never_more(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(drop_fields="user")
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        sent = [
            ({"metadata_only": "true"}, {**ENTRY, "id": "meta"}),
            ({"mask": "request.messages.*.content", "drop": "deployment,tokens"}, {**ENTRY, "id": "masked"}),
            ({"truncate_bytes": "64"}, {**ENTRY, "id": "short", "long": "q" * 500}),
            ({}, {**ENTRY, "id": "plain"}),
        ]
        for params, entry in sent:
            response = await client.post("/api/logs", params=params, json=entry)
            assert response.status_code == 202, response.text
        for params, match in [({"metadata_only": "false"}, "can only keep less"),
                              ({"truncate_bytes": "x"}, "whole number"),
                              ({"drop": "timestamp"}, "always kept"),
                              ({"mask": "a..b"}, "empty segments")]:
            refused = await client.post("/api/logs", params=params, json={**ENTRY, "id": "refused"})
            assert refused.status_code == 400 and match in refused.json()["error"], refused.text
        await app.state.writer_holder.stop()
    by_id = {e["id"]: e for e in (await read_back(settings, ["2026-11-24"]))[0]}
    assert set(by_id) == {"meta", "masked", "short", "plain"}
    assert all("user" not in e for e in by_id.values())  # the setting holds on every request
    assert "request" not in by_id["meta"] and "response" not in by_id["meta"]
    assert by_id["masked"]["request"]["messages"][0]["content"] == MASK
    assert "deployment" not in by_id["masked"] and "tokens" not in by_id["masked"]
    assert by_id["short"]["long"] == "q" * 64 + truncation_marker(500)
    assert by_id["plain"]["request"] == ENTRY["request"]



async def test_a_request_cannot_drop_or_mask_what_the_settings_keep(make_settings: Callable[..., Settings]) -> None:
    """`?drop=received_at` (with received_at_field: received_at) was a 202 that did nothing: the server
    stamps the field after the controls, so the caller was told it was dropped while it was stored. The
    settings refused that path; a request (over real HTTP, uvicorn) and a write() call now refuse it by
    the same rule (privacy.check_kept), as they refused `timestamp` and `*`, and nothing is queued."""
    settings = make_settings(received_at_field="received_at", compression="none")
    app = create_app(settings)
    try:
        async with served(app) as port:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                sent = {"received_at": {"drop": "received_at"}, "received_at.at": {"mask": "user,received_at.at"},
                        "timestamp": {"drop": "timestamp"}, "*": {"mask": "*"}}
                answers = {path: await client.post("/api/logs", params=params, json={**ENTRY, "id": "refused"})
                           for path, params in sent.items()}
                assert {path: answer.status_code for path, answer in answers.items()} == dict.fromkeys(sent, 400)
                kept = await client.post("/api/logs", params={"drop": "user", "wait": "true"}, json=ENTRY)
                assert kept.status_code == 200, kept.text
            writer = await app.state.writer_holder.get()
            with pytest.raises(ValueError) as called:
                await writer.write({**ENTRY, "id": "refused"}, privacy=Privacy(mask=["received_at"]))
            assert writer.metrics.accepted == 1
            with pytest.raises(ConfigError) as configured:
                make_settings(received_at_field="received_at", mask_fields="user,received_at")
            # one rule, one reason, wherever the path comes from
            reason = ("'timestamp' (it decides the entry's blob) and received_at_field ('received_at') are always "
                      "kept; a path cannot start with them or with '*'")
            for path, answer in answers.items():
                assert answer.json()["error"] == f"privacy parameters: path {path!r}: {reason}", answer.text
            assert str(called.value) == f"path 'received_at': {reason}"
            assert str(configured.value) == f"Config 'mask_fields' has path 'received_at': {reason}."
    finally:
        await app.state.writer_holder.stop()
    (stored_entry,), report = await read_back(settings, ["2026-11-24"])
    assert report.ok and stored_entry["id"] == "e1" and "user" not in stored_entry
    assert stored_entry["received_at"].endswith("Z")



OTEL = {"id": "otel", "timestamp": TS, "gen_ai.output.messages": [{"role": "assistant", "content": "SECRET answer"}],
        "attributes": {"gen_ai.input.messages": [{"role": "user", "content": "my SSN is 078-05-1120"}],
                       "enduser.id": "alice@contoso.com", "gen_ai.usage.input_tokens": 12,
                       "gen_ai": {"input": {"messages": "nested SECRET too"}}}}


def test_paths_find_keys_with_dots_as_opentelemetry_attributes_have_them() -> None:
    """`attributes.gen_ai.input.messages` named nested objects only, so OpenTelemetry's flat attribute keys
    (`gen_ai.input.messages`), which `stats` finds by the same path, were kept (QA round 9, security F12).
    Every match is dropped or masked: the key with dots and the nested objects alike."""
    kept = stored(OTEL, Privacy(drop=["attributes.gen_ai.input.messages", "gen_ai.output.messages"],
                                mask=["attributes.enduser.id"]))
    assert kept == {"id": "otel", "timestamp": TS,
                    "attributes": {"enduser.id": MASK, "gen_ai.usage.input_tokens": 12, "gen_ai": {"input": {}}}}
    partly = stored({"timestamp": TS, "a": {"b.c": {"d": 1, "e": 2}, "b": {"c.d": 3}}}, Privacy(mask=["a.b.c.d"]))
    assert partly["a"] == {"b.c": {"d": MASK, "e": 2}, "b": {"c.d": MASK}}
    wild = stored({"timestamp": TS, "spans": [{"attributes": {"user.email": "x@y.z", "n": 1}}]},
                  Privacy(drop=["spans.*.attributes.user.email"]))
    assert wild["spans"] == [{"attributes": {"n": 1}}]
    assert stored(OTEL, Privacy(drop=["attributes.gen_ai.usage"]))["attributes"]["gen_ai.usage.input_tokens"] == 12


def test_a_number_names_one_item_of_a_list_as_in_stats() -> None:
    """`request.messages.0.content` (how `stats` names a list item) was a path that matched nothing."""
    masked = stored(ENTRY, Privacy(mask=["request.messages.1.content"], drop=["response.choices.0", "tokens.9"]))
    assert [m["content"] for m in masked["request"]["messages"]] == ["You are helpful.", MASK]
    assert masked["response"]["choices"] == [] and masked["tokens"] == ENTRY["tokens"]
    assert stored({"timestamp": TS, "a": {"0": "x"}}, Privacy(mask=["a.0"]))["a"] == {"0": MASK}


async def test_dotted_keys_are_dropped_before_storage_over_http(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(drop_fields="attributes.gen_ai.input.messages", mask_fields="attributes.enduser.id")
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.post("/api/logs", params={"drop": "gen_ai.output.messages", "wait": "true"},
                                     json=OTEL)
        assert response.status_code == 200, response.text
        await app.state.writer_holder.stop()
    (entry,), report = await read_back(settings, ["2026-11-24"])
    assert report.ok and "SECRET" not in orjson.dumps(entry).decode() and "078-05" not in orjson.dumps(entry).decode()
    assert entry["attributes"]["enduser.id"] == MASK and entry["attributes"]["gen_ai.usage.input_tokens"] == 12
