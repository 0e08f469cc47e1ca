"""Settings: casting, ranges, secrets kept out of messages, env over YAML file, storage kinds."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

import pytest

from blobwriter.casts import storage_kind
from blobwriter.config import FIELDS, Settings, load_settings
from blobwriter.errors import ConfigError
from blobwriter.keys import SecretKey, parse_key
from blobwriter.limits import BLOCKS_PER_BLOB_LIMIT, FRAME_OVERHEAD_BYTES


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


KEY_A = b64(bytes(range(32)))
KEY_B = b64(bytes(range(100, 132)))


def base(**values: object) -> dict[str, object]:
    return {"storage": "/tmp/logs", "encryption_key": KEY_A, **values}


# -- ranges and messages ---------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("batch_size", 0, "1 to 1000"),
        ("batch_size", 1001, "1 to 1000"),
        ("batch_size", "ten", "1 to 1000"),
        ("batch_size", True, "1 to 1000"),
        ("batch_timeout", 0.05, "0.1 to 60.0"),
        ("batch_timeout", 61, "0.1 to 60.0"),
        ("batch_timeout", "nan", "0.1 to 60.0"),
        ("batch_timeout", "soon", "0.1 to 60.0"),
        ("max_queue_size", 0, "1 to 10000000"),
        ("max_concurrent_writes", 0, "1 to 1024"),
        ("max_concurrent_writes", 1025, "1 to 1024"),
        ("max_append_bytes", 65535, "65536 to 4194304"),
        ("max_append_bytes", 4 * 1024 * 1024 + 1, "65536 to 4194304"),
        ("max_blocks_per_blob", 0, f"1 to {BLOCKS_PER_BLOB_LIMIT}"),
        ("max_blocks_per_blob", BLOCKS_PER_BLOB_LIMIT + 1, f"1 to {BLOCKS_PER_BLOB_LIMIT}"),
        ("max_entry_bytes", 1023, "1024 to"),
        ("max_body_bytes", 10, "1024 to"),
        ("storage_timeout", 0.5, "1.0 to 600.0"),
        ("retry_backoff_max", 0, "0.1 to 300.0"),
        ("stop_timeout", -1, "0.0 to 3600.0"),
        ("compression", "zstd", "gzip, none"),
        ("container", "Bad_Name", "3-63 lowercase"),
        ("container", "ab", "3-63 lowercase"),
        ("container", "a--b", "single hyphens"),
        ("blob_prefix", "../escape", "must not contain '..'"),
        ("blob_prefix", "/absolute", "must be relative"),
        ("max_past_days", -1, "0 to 36500"),
        ("max_future_days", "a week", "0 to 36500"),
        ("body_timeout", 0, "1.0 to 3600.0"),
        ("max_concurrent_bodies", 0, "1 to 100000"),
    ],
)
def test_bad_value_names_setting_and_allowed_range(name: str, value: object, allowed: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_values(base(**{name: value}))
    message = str(caught.value)
    assert f"'{name}'" in message
    assert allowed in message


def test_values_are_cast_from_strings() -> None:
    settings = Settings.from_values(base(batch_size="25", batch_timeout="0.5", max_queue_size="1_000",
                                         compression=" NONE ", blob_prefix="gateway", container=" logs-2 "))
    assert settings.batch_size == 25
    assert settings.batch_timeout == 0.5
    assert settings.max_queue_size == 1000
    assert settings.compression == "none"
    assert settings.blob_prefix == "gateway/"
    assert settings.container == "logs-2"


@pytest.mark.parametrize(("name", "value"), [
    ("batch_size", "\u0663"),  # ARABIC-INDIC DIGIT THREE: int() read it as 3
    ("batch_size", "\uff13"),  # FULLWIDTH DIGIT THREE
    ("max_queue_size", "1\u0660\u0660\u0660"),
    ("max_past_days", "\u0667"),
    ("batch_timeout", "\u0660.\u0665"),  # float() read it as 0.5
    ("stop_timeout", "\u00b2"),
])
def test_numbers_from_strings_take_ascii_digits_only(name: str, value: str) -> None:
    """As the HTTP layer does (?truncate_bytes=), a setting's digits are ASCII: a hands-on review found
    batch_size="\u0663" read as 3. Underscores between digits stay accepted (1_000, as YAML reads it)."""
    with pytest.raises(ConfigError, match=rf"Config '{name}' has value .*: not an? (integer|number) in ASCII digits"):
        Settings.from_values(base(**{name: value}))
    with pytest.raises(ConfigError, match=f"'{name}'"):
        load_settings(env={f"BLOBWRITER_{name.upper()}": value, "BLOBWRITER_STORAGE": "/tmp/logs"})
    assert Settings.from_values(base(max_queue_size="1_000", batch_size="+7", stop_timeout="0")).max_queue_size == 1000


def test_defaults() -> None:
    settings = Settings.from_values(base())
    assert (settings.container, settings.blob_prefix, settings.compression) == ("logs", "", "gzip")
    assert (settings.batch_size, settings.batch_timeout) == (10, 1.0)
    assert settings.max_append_bytes == 4 * 1024 * 1024
    assert settings.max_blocks_per_blob == 50_000


def test_cross_field_rules() -> None:
    with pytest.raises(ConfigError, match="'max_entry_bytes'.*max_append_bytes"):
        Settings.from_values(base(max_append_bytes=64 * 1024))  # default max_entry_bytes (1 MiB) does not fit
    fits = Settings.from_values(base(max_append_bytes=64 * 1024, max_entry_bytes=64 * 1024 - FRAME_OVERHEAD_BYTES))
    assert fits.max_entry_bytes == 64 * 1024 - FRAME_OVERHEAD_BYTES
    with pytest.raises(ConfigError, match="'max_queue_size'.*batch_size"):
        Settings.from_values(base(batch_size=100, max_queue_size=10))


def test_unknown_settings_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_values(base(batchsize=5, colour="red"))
    message = str(caught.value)
    assert "batchsize" in message and "colour" in message
    assert "batch_size" in message  # the known settings are listed


def test_required_setting_message_names_env_var() -> None:
    settings = load_settings(env={})
    assert settings.storage is None and settings.encryption_key is None
    with pytest.raises(ConfigError, match="BLOBWRITER_STORAGE"):
        settings.require("storage")
    with pytest.raises(ConfigError, match="BLOBWRITER_ENCRYPTION_KEY"):
        settings.require("encryption_key")


# -- keys ------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw_length", [16, 31, 33, 64])
def test_wrong_length_key_never_echoed(raw_length: int) -> None:
    bad = b64(os.urandom(raw_length))
    with pytest.raises(ConfigError) as caught:
        Settings.from_values(base(encryption_key=bad))
    message = str(caught.value)
    assert "'encryption_key'" in message
    assert f"{raw_length} bytes" in message and "32" in message
    assert bad not in message
    assert bad[:12] not in message


def test_invalid_base64_key_never_echoed() -> None:
    bad = "this-is-not=base64!!secret"
    with pytest.raises(ConfigError) as caught:
        Settings.from_values(base(encryption_key=bad))
    assert "'encryption_key'" in str(caught.value)
    assert "secret" not in str(caught.value)
    assert bad not in repr(caught.value)


def test_bad_previous_key_named_by_index_not_value() -> None:
    bad = b64(os.urandom(20))
    with pytest.raises(ConfigError) as caught:
        Settings.from_values(base(previous_keys=f"{KEY_B},{bad}"))
    message = str(caught.value)
    assert "previous_keys[1]" in message
    assert bad not in message and KEY_B not in message and KEY_A not in message


def test_key_formats_and_secret_repr() -> None:
    raw = bytes([0xFB, 0xFF] * 16)  # base64 uses '+' and '/', URL-safe '-' and '_'
    standard = base64.b64encode(raw).decode()
    urlsafe = base64.urlsafe_b64encode(raw).decode()
    assert "+" in standard or "/" in standard
    assert parse_key(standard).raw == raw
    assert parse_key(urlsafe).raw == raw
    assert parse_key(f"  {standard}\n").raw == raw
    settings = Settings.from_values(base(encryption_key=standard, api_key="hunter2"))
    for text in (repr(settings), str(settings), repr(settings.encryption_key), str(settings.encryption_key)):
        assert standard not in text and urlsafe not in text and "hunter2" not in text
    assert repr(SecretKey(raw)) == "SecretKey(***)"


def test_unpadded_keys_accepted() -> None:
    """URL-safe base64 usually comes without '=' padding (e.g. Python's secrets.token_urlsafe(32))."""
    for _ in range(20):
        token = secrets.token_urlsafe(32)
        assert "=" not in token
        assert parse_key(token).raw == base64.urlsafe_b64decode(token + "=")
    assert parse_key(KEY_A.rstrip("=")).raw == bytes(range(32))
    with pytest.raises(ConfigError, match="not valid base64"):
        parse_key(KEY_A.rstrip("=") + "AB")  # no padding makes 45 characters valid
    with pytest.raises(ConfigError, match="decodes to 33 bytes"):
        parse_key(KEY_A.rstrip("=") + "A")


def test_previous_keys_comma_separated_env() -> None:
    key_c = b64(os.urandom(32))
    settings = load_settings(env={"BLOBWRITER_STORAGE": "/tmp/x", "BLOBWRITER_ENCRYPTION_KEY": KEY_A,
                                  "BLOBWRITER_PREVIOUS_KEYS": f" {KEY_B} , {key_c},"})
    assert [k.raw for k in settings.previous_keys] == [base64.b64decode(KEY_B), base64.b64decode(key_c)]
    # The reader tries the current key first, then the previous ones in order.
    assert [k.raw for k in settings.keys] == [base64.b64decode(k) for k in (KEY_A, KEY_B, key_c)]


def test_keys_without_current_key() -> None:
    settings = Settings.from_values({"storage": "/tmp/x", "previous_keys": KEY_B})
    assert settings.encryption_key is None
    assert [k.raw for k in settings.keys] == [base64.b64decode(KEY_B)]


# -- file and environment --------------------------------------------------------------------

def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "blobwriter.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_logging_section_and_env_override(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, f"""
other_tool:
  batch_size: 999999   # other sections are not ours
logging:
  storage: /var/log/gateway
  encryption_key: {KEY_A}
  previous_keys: [{KEY_B}]
  batch_size: 5
  batch_timeout: 2.5
  container: from-file
""")
    settings = load_settings(path, env={"BLOBWRITER_BATCH_SIZE": "7", "BLOBWRITER_BLOB_PREFIX": "env/"})
    assert settings.batch_size == 7  # the environment wins
    assert settings.batch_timeout == 2.5  # the file fills in the rest
    assert settings.container == "from-file"
    assert settings.blob_prefix == "env/"
    assert settings.storage == "/var/log/gateway"
    assert [k.raw for k in settings.previous_keys] == [base64.b64decode(KEY_B)]


def test_config_path_from_env(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "logging:\n  batch_size: 3\n  storage: /tmp/y\n")
    settings = load_settings(env={"BLOBWRITER_CONFIG": str(path)})
    assert settings.batch_size == 3
    assert settings.storage == "/tmp/y"


def test_unknown_key_in_file_rejected(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "logging:\n  batch_size: 3\n  bacth_timeout: 1\n")
    with pytest.raises(ConfigError, match="bacth_timeout"):
        load_settings(path, env={})


def test_bad_value_in_file_named(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "logging:\n  batch_size: 5000\n")
    with pytest.raises(ConfigError, match=r"'batch_size'.*1 to 1000"):
        load_settings(path, env={})


def test_bad_value_in_env_named() -> None:
    with pytest.raises(ConfigError, match=r"'max_blocks_per_blob'.*1 to 50000"):
        load_settings(env={"BLOBWRITER_MAX_BLOCKS_PER_BLOB": "60000"})


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("logging: [1, 2]\n", "must be a mapping of settings"),
        ("- just\n- a list\n", "must be a mapping"),
        ("logging:\n  batch_size: [unclosed\n", "not valid YAML at line"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_settings(write_yaml(tmp_path, text), env={})


@pytest.mark.parametrize(("text", "what"), [
    ("batch_size: 0\nstorage: /x\n", "is missing"),  # no `logging:` at all
    ("logging:\nbatch_size: 0\n", "is empty"),  # `logging:` with the settings not indented under it
    ("logging: {}\nbatch_timeout: 0\n", "is empty"),
    ("app: {}\nmax_chunk_bytes: 1\n", "is missing"),  # an older name too
])
def test_settings_outside_the_section_are_an_error(tmp_path: Path, text: str, what: str) -> None:
    """QA: a file of settings without `logging:` (or with them not indented under it) was read as no
    settings at all, silently: `batch_size: 0` passed, and every value in it was ignored."""
    with pytest.raises(ConfigError, match=rf"at the top level would be ignored.*'logging:'.*section {what}"):
        load_settings(write_yaml(tmp_path, text), env={})


def test_a_file_for_other_programs_too_is_read(tmp_path: Path) -> None:
    """Top-level keys that are not settings are another program's (the file is shared): no error, and
    with a `logging:` section, a top-level name that is also a setting's is not blobwriter's either."""
    assert load_settings(write_yaml(tmp_path, "database: {host: x}\n"), env={}).batch_size == 10
    shared = "storage: {kind: s3}\nlogging:\n  batch_size: 7\n"
    assert load_settings(write_yaml(tmp_path, shared), env={}).batch_size == 7


def test_empty_file_and_empty_section(tmp_path: Path) -> None:
    assert load_settings(write_yaml(tmp_path, ""), env={}).batch_size == 10
    assert load_settings(write_yaml(tmp_path, "logging:\n"), env={}).batch_size == 10


def test_empty_yaml_values_mean_not_set(tmp_path: Path) -> None:
    """`storage:` left empty must not become a directory named 'None', nor turn compression off."""
    path = write_yaml(tmp_path, "logging:\n  storage:\n  compression:\n  container:\n  batch_size:\n"
                                "  encryption_key:\n  previous_keys:\n")
    settings = load_settings(path, env={})
    assert settings.storage is None
    assert (settings.compression, settings.container, settings.batch_size) == ("gzip", "logs", 10)
    assert settings.encryption_key is None and settings.previous_keys == ()
    with pytest.raises(ConfigError, match="BLOBWRITER_STORAGE"):
        settings.require("storage")
    assert load_settings(path, env={"BLOBWRITER_STORAGE": "/x"}).storage == "/x"
    assert Settings.from_values({"storage": None, "compression": None}).storage is None


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", env={})


def test_a_config_file_that_cannot_be_read_is_a_config_error(tmp_path: Path) -> None:
    """QA ops: `--config /tmp` (a directory) ended in an IsADirectoryError traceback, exit 1; so did a
    file that is not UTF-8 (UnicodeDecodeError)."""
    with pytest.raises(ConfigError, match=r"cannot be read: Is a directory\.$"):
        load_settings(tmp_path, env={})
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"logging:\n  container: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"is not UTF-8 \(byte 25\)"):
        load_settings(latin1, env={})


def test_key_in_file_never_echoed(tmp_path: Path) -> None:
    bad = b64(os.urandom(24))
    path = write_yaml(tmp_path, f"logging:\n  encryption_key: {bad}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert bad not in str(caught.value)
    assert "'encryption_key'" in str(caught.value)


def test_every_field_has_env_name_and_help() -> None:
    for f in FIELDS:
        assert f.env == "BLOBWRITER_" + f.name.upper()
        assert f.help


# -- storage kinds ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("storage", "kind"),
    [
        ("UseDevelopmentStorage=true", "connection_string"),
        ("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=abc==;EndpointSuffix=core.windows.net",
         "connection_string"),
        ("https://acct.blob.core.windows.net", "account_url"),
        ("HTTPS://acct.blob.core.windows.net", "account_url"),
        ("HTTP://127.0.0.1:10000/devstoreaccount1?sv=2021-08-06&sig=abc%3D", "account_url"),  # http needs a SAS
        ("/var/log/gateway", "directory"),
        ("relative/logs", "directory"),
        (r"C:\logs", "directory"),
        ("/data/a=b", "directory"),
    ],
)
def test_storage_kind(storage: str, kind: str) -> None:
    assert storage_kind(storage) == kind
    assert Settings.from_values(base(storage=storage)).storage_kind == kind


def test_with_overrides_keeps_validation() -> None:
    settings = Settings.from_values(base())
    assert settings.with_overrides(batch_size=3).batch_size == 3
    with pytest.raises(ConfigError, match="max_queue_size"):
        settings.with_overrides(batch_size=50, max_queue_size=20)



# -- issue 13 --------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["a/./b/", "a//b/", "./a/", "a/.", "a/.//", "a\\\\b/", ".", "a/b//"])
def test_prefix_with_dot_or_empty_segments_is_refused(prefix: str) -> None:
    """Main accepted these; the HTTP stack normalizes them away, so blobs landed where readers do not look."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_values(base(blob_prefix=prefix))
    message = str(caught.value)
    assert "'blob_prefix'" in message and "empty ('//') or '.' segments" in message


@pytest.mark.parametrize(("prefix", "normalized"), [("a/b", "a/b/"), ("a/b/", "a/b/"), ("a.b/c.d", "a.b/c.d/"),
                                                    ("", ""), (".hidden/x", ".hidden/x/"), ("a\\b", "a/b/")])
def test_ordinary_prefixes_still_work(prefix: str, normalized: str) -> None:
    assert Settings.from_values(base(blob_prefix=prefix)).blob_prefix == normalized


@pytest.mark.parametrize("storage", [
    "SharedAccessSignature=sv=2026-10-06&ss=b&sig=SECRETSIG%3D",
    "AccountName=acct,AccountKey=SECRETKEY==",
    "/data/logs?sv=2026-10-06&sig=SECRETSIG",
])
def test_a_credential_that_is_not_a_connection_string_is_refused_unseen(storage: str) -> None:
    """Main took these for directory paths: the SAS or key became a directory name, and every message
    naming the store's location (logs, health, errors) showed it."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_values(base(storage=storage))
    message = str(caught.value)
    assert "'storage'" in message and "SECRET" not in message and "not shown" in message


def test_time_window_and_received_at_settings() -> None:
    unset = Settings.from_values(base())
    assert (unset.max_past_days, unset.max_future_days, unset.received_at_field) == (None, None, None)
    env = {"BLOBWRITER_STORAGE": "/tmp/x", "BLOBWRITER_MAX_PAST_DAYS": "7", "BLOBWRITER_MAX_FUTURE_DAYS": "1",
           "BLOBWRITER_RECEIVED_AT_FIELD": "received_at"}
    settings = load_settings(env=env)
    assert (settings.max_past_days, settings.max_future_days, settings.received_at_field) == (7, 1, "received_at")
    empty = load_settings(env={**env, "BLOBWRITER_MAX_PAST_DAYS": "", "BLOBWRITER_MAX_FUTURE_DAYS": " "})
    assert (empty.max_past_days, empty.max_future_days) == (None, None)  # an empty app setting means unset


def test_a_misspelt_setting_variable_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    """BLOBWRITER_BATCHSIZE, or a misspelt privacy control, was ignored without a word: the entries were
    then stored against the policy. Other BLOBWRITER_* variables (tests, deploy scripts) stay quiet."""
    import logging

    caplog.set_level(logging.WARNING, logger="blobwriter.config")
    env = {"BLOBWRITER_STORAGE": "/tmp/unused", "BLOBWRITER_ENCRYPTION_KEY": KEY_A, "BLOBWRITER_BATCHSIZE": "5",
           "blobwriter_drop_fields": "request", "BLOBWRITER_DROP_FIELD": "response",
           "BLOBWRITER_TEST_AZURITE": "x", "BLOBWRITER_HOST": "h", "BLOBWRITER_RBAC_WAIT_SECONDS": "3"}
    settings = load_settings(env=env)
    assert settings.batch_size == 10 and settings.drop_fields == ()  # ignored, as before: but now said
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 3, warned
    assert "BLOBWRITER_BATCHSIZE" in warned[0] and "did you mean BLOBWRITER_BATCH_SIZE" in warned[0]
    assert all("did you mean BLOBWRITER_DROP_FIELDS" in w for w in warned[1:])
