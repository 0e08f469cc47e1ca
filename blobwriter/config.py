"""Settings: read from environment variables, then a YAML file, then defaults; validated once.

Every setting `name` can be given as `BLOBWRITER_<NAME>` in the environment (Azure Functions
app settings are environment variables) or under the `logging:` key of a YAML file found via
`--config PATH` or `BLOBWRITER_CONFIG`. The environment wins over the file. A bad value fails
at start-up with one line naming the setting and what is allowed; secret values never appear
in any message.

The `Settings` dataclass is the one source of each setting's default, cast and help text;
`FIELDS` is derived from it for the docs, the Bicep template and the tests.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from . import casts
from .casts import Cast, StorageKind, storage_kind
from .errors import ConfigError
from .keys import SecretKey
from .limits import APPEND_BLOCK_LIMIT, BLOCKS_PER_BLOB_LIMIT, FRAME_OVERHEAD_BYTES, KiB, MiB
from .privacy import check_kept

log = logging.getLogger("blobwriter.config")

ENV_PREFIX = "BLOBWRITER_"
CONFIG_ENV = "BLOBWRITER_CONFIG"
FILE_SECTION = "logging"
# An app setting whose Key Vault reference did not resolve reaches the app as this literal text.
KEY_VAULT_REFERENCE = "@Microsoft.KeyVault("

def _setting(default: Any, cast: Cast, help: str, *, secret: bool = False, required: bool = False,
             hidden: bool = False, alias: str | None = None, serve_only: bool = False) -> Any:
    """A Settings attribute with what load_settings needs to read it. `hidden` keeps a value that holds
    credentials (a connection string) out of repr without calling it a secret; `alias` is an older name
    still accepted, with a deprecation warning; `serve_only` marks a setting only `blobwriter serve` uses
    (under Azure Functions the host does that job), so the Functions app settings leave it out."""
    return field(default=default, repr=not (secret or hidden),
                 metadata={"cast": cast, "help": help, "secret": secret, "required": required, "alias": alias,
                           "serve_only": serve_only})


@dataclass(frozen=True)
class Settings:
    """Validated settings for one writer, reader or server."""

    storage: str | None = _setting(
        None, casts.storage, "connection string, 'UseDevelopmentStorage=true', https://<account>.blob.core.windows.net "
        "(Entra ID auth; or with a SAS token: ...?sv=...&sig=...), or a local directory path", required=True,
        hidden=True)
    container: str = _setting("logs", casts.container, "blob container that holds the log blobs")
    blob_prefix: str = _setting("", casts.prefix, "blob-name prefix inside the container (e.g. 'gateway/')",
                                alias="directory")
    encryption_key: SecretKey | None = _setting(None, casts.key, "base64 of 32 random bytes (AES-256-GCM)",
                                                secret=True, required=True)
    previous_keys: tuple[SecretKey, ...] = _setting(
        (), casts.keys, "comma-separated older keys, for reading after a key rotation", secret=True)
    compression: str = _setting("gzip", casts.choice("gzip", "none"), "gzip or none")
    batch_size: int = _setting(10, casts.integer(1, 1000), "most entries in one batch")
    batch_timeout: float = _setting(1.0, casts.real(0.1, 60.0), "seconds a partial batch waits before it is written")
    max_queue_size: int = _setting(250_000, casts.integer(1, 10_000_000),
                                   "most accepted-but-unwritten entries; past it writes get back-pressure (HTTP 503)")
    max_queue_bytes: int = _setting(
        256 * MiB, casts.integer(MiB, 64 * 1024 * MiB),
        "most serialized bytes of accepted-but-unwritten entries; past it writes get back-pressure (HTTP 503)")
    max_concurrent_writes: int = _setting(16, casts.integer(1, 1024), "most appends in flight at once")
    max_append_bytes: int = _setting(
        APPEND_BLOCK_LIMIT, casts.integer(64 * KiB, APPEND_BLOCK_LIMIT),
        "largest Append Block call, and so the largest frame; bigger batches are split", alias="max_chunk_bytes")
    max_blocks_per_blob: int = _setting(BLOCKS_PER_BLOB_LIMIT, casts.integer(1, BLOCKS_PER_BLOB_LIMIT),
                                        "appends per blob before rolling to the next part")
    max_entry_bytes: int = _setting(MiB, casts.integer(KiB, APPEND_BLOCK_LIMIT - FRAME_OVERHEAD_BYTES),
                                    "largest serialized entry accepted")
    max_body_bytes: int = _setting(10 * MiB, casts.integer(KiB, 1024 * MiB), "largest HTTP request body accepted")
    storage_timeout: float = _setting(30.0, casts.real(1.0, 600.0),
                                      "seconds one storage request may take before it is retried")
    retry_backoff_max: float = _setting(30.0, casts.real(0.1, 300.0),
                                        "longest pause between retries of a failed append")
    give_up_after: float = _setting(
        300.0, casts.real(1.0, 86400.0), "seconds an append error that retrying cannot heal (403, a leased or sealed "
        "blob, ...) is retried before its entries are reported failed")
    stop_timeout: float = _setting(60.0, casts.real(0.0, 3600.0),
                                   "seconds stop() keeps retrying unwritten entries before reporting them as failed "
                                   "(0: one attempt, no retry)")
    id_field: str | None = _setting(
        None, casts.optional_text, "an entry field that identifies a request (e.g. 'id'): read, stats and export keep "
        "the first entry of each value (a client's retry after a lost answer is not counted twice)")
    ack: str = _setting("queued", casts.choice("queued", "written"),
                        "when POST /api/logs answers: 'queued' (202 once queued) or 'written' (200 once appended); "
                        "a request's ?wait=true|false overrides it")
    api_key: str | None = _setting(
        None, casts.optional_secret, "when set, `blobwriter serve` requires it as x-functions-key header or ?code=",
        secret=True, serve_only=True)
    # -- what an entry may be, and what of it is kept (entries.py, privacy.py) --
    max_past_days: int | None = _setting(
        None, casts.optional_integer(0, 36500), "refuse entries whose timestamp is more than this many days before the "
        "server's clock (unset: no bound)")
    max_future_days: int | None = _setting(
        None, casts.optional_integer(0, 36500), "refuse entries whose timestamp is more than this many days after the "
        "server's clock (unset: no bound)")
    received_at_field: str | None = _setting(
        None, casts.field_name, "when set, each entry gets this top-level field with the time the server received it "
        "(RFC 3339, UTC; a value sent by the client is replaced)")
    drop_fields: tuple[str, ...] = _setting(
        (), casts.paths, "comma-separated dotted paths removed from every entry before it is encrypted "
        "('*' matches every list item or object member, e.g. request.messages.*.content)")
    mask_fields: tuple[str, ...] = _setting(
        (), casts.paths, "comma-separated dotted paths whose values are replaced by \"[masked]\" before encryption")
    truncate_bytes: int | None = _setting(
        None, casts.optional_integer(64, 64 * MiB),
        "strings longer than this many UTF-8 bytes are cut to it and marked "
        "\"…[truncated: N bytes]\" (unset: off)")
    metadata_only: bool = _setting(
        False, casts.boolean, "drop the request and response bodies (the top-level 'request' and 'response' fields) "
        "from every entry")
    # -- `blobwriter serve` only (under Functions the host reads the body) --
    body_timeout: float = _setting(
        60.0, casts.real(1.0, 3600.0),
        "seconds `blobwriter serve` waits for a request's whole body before answering 408",
        serve_only=True)
    max_concurrent_bodies: int = _setting(
        32, casts.integer(1, 100_000),
        "most request bodies `blobwriter serve` reads at once (each up to max_body_bytes); "
        "past it 503 with Retry-After", serve_only=True)
    stats_map: str = _setting("", casts.text, "`blobwriter stats` field map: a preset (gateway, otel, litellm) and/or "
                              "measure=path items, comma-separated (docs/SCHEMA.md)")
    export_destination: str | None = _setting(
        None, casts.optional_secret, "where the scheduled export writes each closed day (a directory, an https "
        "container URL, or a connection string with ;Container=NAME); unset: off", secret=True)

    def __post_init__(self) -> None:
        if self.max_entry_bytes > self.max_append_bytes - FRAME_OVERHEAD_BYTES:
            raise ConfigError(
                f"Config 'max_entry_bytes' ({self.max_entry_bytes}) must be at most max_append_bytes "
                f"({self.max_append_bytes}) minus {FRAME_OVERHEAD_BYTES} bytes of frame overhead."
            )
        if self.max_queue_bytes < self.max_entry_bytes:
            raise ConfigError(
                f"Config 'max_queue_bytes' ({self.max_queue_bytes}) must be at least max_entry_bytes "
                f"({self.max_entry_bytes})."
            )
        if self.max_queue_size < self.batch_size:
            raise ConfigError(
                f"Config 'max_queue_size' ({self.max_queue_size}) must be at least batch_size ({self.batch_size})."
            )
        for name in ("drop_fields", "mask_fields"):
            for path in getattr(self, name):
                try:
                    check_kept(path, self.received_at_field)
                except ValueError as why:
                    raise ConfigError(f"Config '{name}' has path {path!r}: {why}.",
                                      public=f"Config '{name}' has an invalid path: {why}.") from None

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Settings:
        """Cast and validate raw values (strings or YAML scalars), e.g. for tests and embedding."""
        values = _resolve_aliases(values)
        unknown = sorted(set(values) - set(FIELDS_BY_NAME))
        if unknown:
            raise ConfigError(
                f"Unknown setting(s) {', '.join(unknown)}; known settings: {', '.join(FIELDS_BY_NAME)}."
            )
        for name, value in values.items():
            if isinstance(value, str) and value.strip().startswith(KEY_VAULT_REFERENCE):
                raise ConfigError(
                    f"Config '{name}' is an unresolved Key Vault reference: the platform could not read the "
                    "secret (the app's identity lacks access to it yet, or it does not exist); its status is "
                    "under the function app's Settings > Environment variables."
                )
        # None (a YAML key left empty) means not set: the default applies, not the text 'None'.
        cast = {name: FIELDS_BY_NAME[name].cast(name, value) for name, value in values.items() if value is not None}
        return cls(**cast)

    @property
    def keys(self) -> tuple[SecretKey, ...]:
        """All keys a reader may use: the current key first, then the previous ones."""
        return ((self.encryption_key,) if self.encryption_key else ()) + self.previous_keys

    @property
    def named_keys(self) -> tuple[tuple[str, SecretKey], ...]:
        """`keys`, each with the setting it comes from (`encryption_key`, `previous_keys[0]`, ...)."""
        current = (("encryption_key", self.encryption_key),) if self.encryption_key else ()
        return current + tuple((f"previous_keys[{n}]", key) for n, key in enumerate(self.previous_keys))

    @property
    def storage_kind(self) -> StorageKind:
        return storage_kind(self.require("storage"))

    def require(self, *names: str) -> Any:
        """Fail with a clear message if a setting needed for this command is not set."""
        for name in names:
            if getattr(self, name) in (None, ""):
                f = FIELDS_BY_NAME[name]
                raise ConfigError(f"Config '{name}' is not set: set {f.env} or '{name}:' under "
                                  f"'{FILE_SECTION}:' in the config file ({f.help}).")
        return getattr(self, names[-1]) if names else None

    def with_overrides(self, **values: Any) -> Settings:
        """A copy with some settings replaced by already-typed values."""
        current = {f.name: getattr(self, f.name) for f in fields(self)}
        current.update(values)
        return Settings(**current)


@dataclass(frozen=True)
class Field:
    """One setting as the docs and tests see it: name, cast, default, help, secrecy, older name, and whether
    only `blobwriter serve` uses it."""

    name: str
    cast: Cast
    default: Any
    help: str
    secret: bool = False
    required: bool = False
    alias: str | None = None
    serve_only: bool = False

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def alias_env(self) -> str | None:
        return ENV_PREFIX + self.alias.upper() if self.alias else None


FIELDS: tuple[Field, ...] = tuple(Field(f.name, default=f.default, **f.metadata) for f in fields(Settings))
FIELDS_BY_NAME = {f.name: f for f in FIELDS}
_ALIASES = {f.alias: f for f in FIELDS if f.alias}


def _resolve_aliases(values: Mapping[str, Any]) -> dict[str, Any]:
    """Map deprecated setting names to their new names, warning once per call; the new name wins."""
    resolved = dict(values)
    for old, f in _ALIASES.items():
        if old in resolved:
            value = resolved.pop(old)
            log.warning("Config '%s' is deprecated: use '%s' (%s) instead.", old, f.name, f.env)
            resolved.setdefault(f.name, value)
    return resolved


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Read settings: environment over the YAML file (path, else $BLOBWRITER_CONFIG) over defaults."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = path or env.get(CONFIG_ENV) or None
    if path:
        values.update(_resolve_aliases(_read_file(Path(path))))
    from_env: dict[str, Any] = {}
    for f in FIELDS:
        if f.alias_env and f.alias_env in env:
            from_env[f.alias] = env[f.alias_env]  # type: ignore[index]
        if f.env in env:
            from_env[f.name] = env[f.env]
    values.update(_resolve_aliases(from_env))
    _warn_misspelt(env)
    return Settings.from_values(values)


def _warn_misspelt(env: Mapping[str, str]) -> None:
    """Log a warning for a variable that looks like a misspelt setting (BLOBWRITER_BATCHSIZE,
    blobwriter_drop_fields): it would be ignored, silently, and for a privacy control that means
    storing what the policy says to drop. Other BLOBWRITER_* variables (the tests', the deploy
    scripts') are not settings and look like none."""
    known = {CONFIG_ENV, *(f.env for f in FIELDS), *(f.alias_env for f in FIELDS if f.alias_env)}
    for name in env:
        if name in known or not name.upper().startswith(ENV_PREFIX):
            continue
        close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.85)
        if close:
            log.warning("Environment variable %s is not a setting and is ignored: did you mean %s?", name, close[0])


def _read_file(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"Config file {str(path)!r} does not exist.") from None
    except OSError as exc:  # a directory, no permission...
        raise ConfigError(f"Config file {str(path)!r} cannot be read: {exc.strerror or exc}.") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"Config file {str(path)!r} is not UTF-8 (byte {exc.start}).") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"Config file {str(path)!r} is not valid YAML{where}.") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"Config file {str(path)!r} must be a mapping with a '{FILE_SECTION}:' section.")
    section = document.get(FILE_SECTION)
    if section is None or section == {}:
        # No settings in the file. Setting names at its top level were meant to be under `logging:`
        # (left out, or a `logging:` with nothing indented under it): they would be ignored without a word.
        stray = [str(k) for k in document if str(k) in FIELDS_BY_NAME or str(k) in _ALIASES]
        if stray:
            what = "is empty" if FILE_SECTION in document else "is missing"
            raise ConfigError(
                f"Config file {str(path)!r}: {', '.join(stray)} at the top level would be ignored; settings go "
                f"under '{FILE_SECTION}:', indented (its '{FILE_SECTION}:' section {what}).")
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"Config file {str(path)!r}: '{FILE_SECTION}:' must be a mapping of settings.")
    return {str(k): v for k, v in section.items()}
