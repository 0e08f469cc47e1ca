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

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError
from .keys import SecretKey, parse_key
from .limits import APPEND_BLOCK_LIMIT, BLOCKS_PER_BLOB_LIMIT, FRAME_OVERHEAD_BYTES, KiB, MiB
from .privacy import parse_path

log = logging.getLogger("blobwriter.config")

ENV_PREFIX = "BLOBWRITER_"
CONFIG_ENV = "BLOBWRITER_CONFIG"
FILE_SECTION = "logging"
# An app setting whose Key Vault reference did not resolve reaches the app as this literal text.
KEY_VAULT_REFERENCE = "@Microsoft.KeyVault("

StorageKind = Literal["connection_string", "account_url", "directory"]
_CONTAINER_RE = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")

Cast = Callable[[str, Any], Any]


# -- casts: each takes the setting's name (for messages) and the raw value ---------------------


def _bad(name: str, value: Any, why: str) -> ConfigError:
    """A bad value: the message shows it (not a secret's), the public form does not."""
    return ConfigError(f"Config '{name}' has value {value!r}: {why}", public=f"Config '{name}' is invalid: {why}")


def _number(parse: Callable[[str], float], noun: str, low: float, high: float) -> Cast:
    """A cast to a number in [low, high]; `parse` is int or float, `noun` names it in errors."""

    def cast(name: str, value: Any) -> Any:
        try:
            number = parse(str(value).strip().replace("_", ""))
        except ValueError:
            raise _bad(name, value, f"not {noun} (allowed: {low} to {high}).") from None
        if not low <= number <= high:
            raise _bad(name, number, f"out of range (allowed: {low} to {high}).")
        return number

    return cast


def _int(low: int, high: int) -> Cast:
    return _number(int, "an integer", low, high)


def _float(low: float, high: float) -> Cast:
    return _number(float, "a number", low, high)


def _choice(*allowed: str) -> Cast:
    def cast(name: str, value: Any) -> str:
        text = str(value).strip().lower()
        if text not in allowed:
            raise _bad(name, value, f"allowed values are {', '.join(allowed)}.")
        return text

    return cast


def _text(name: str, value: Any) -> str:
    return str(value).strip()


def _container(name: str, value: Any) -> str:
    text = str(value).strip()
    if not _CONTAINER_RE.match(text):
        raise _bad(name, text, "a container name is 3-63 lowercase letters, digits and single hyphens, "
                               "starting and ending with a letter or digit.")
    return text


def _prefix(name: str, value: Any) -> str:
    text = str(value or "").strip().replace("\\", "/")
    if text.startswith("/") or ".." in text.split("/"):
        raise _bad(name, text, "a blob-name prefix must be relative and must not contain '..'.")
    # The HTTP stack (and Azure) collapse '.' and empty segments of a blob's URL path, so such a prefix
    # would put blobs where the reader, listing by the literal prefix, does not look.
    segments = text.removesuffix("/").split("/") if text else []
    if any(segment in ("", ".") for segment in segments):
        raise _bad(name, text, "a blob-name prefix must not have empty ('//') or '.' segments (the HTTP path "
                               "would be normalized and blobs would land where readers do not look).")
    if text and not text.endswith("/"):
        text += "/"
    return text


# A credential inside a value that is not a connection string (so would be taken for a directory path).
_CREDENTIAL_MARKERS = re.compile(r"(?i)(accountkey|sharedaccesssignature|sharedaccesskey|(^|[?&;])sig)=")


def _storage(name: str, value: Any) -> str:
    text = str(value).strip()
    if storage_kind(text) == "directory" and _CREDENTIAL_MARKERS.search(text):
        # Never echoed: the value holds a key or a SAS signature.
        raise ConfigError(
            f"Config '{name}' holds a credential (AccountKey=, SharedAccessSignature= or sig=) but is not a "
            "connection string, so it would be taken for a directory path: write it as "
            "'BlobEndpoint=https://<account>.blob.core.windows.net;SharedAccessSignature=<token>' or "
            "'AccountName=...;AccountKey=...' (the value is not shown)."
        )
    return text


def _optional_int(low: int, high: int) -> Cast:
    """An integer in [low, high], or None when empty (unset: no bound)."""
    inner = _int(low, high)

    def cast(name: str, value: Any) -> int | None:
        return None if str(value).strip() == "" else int(inner(name, value))

    return cast


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise _bad(name, value, "allowed values are true, false.")


def _field_name(name: str, value: Any) -> str | None:
    text = str(value or "").strip()
    if not text:
        return None
    if text == "timestamp" or "." in text:
        raise _bad(name, text, "a top-level field name other than 'timestamp', without '.'.")
    return text


def _paths(name: str, value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else str(value or "").split(",")
    paths = tuple(str(item).strip() for item in items if str(item).strip())
    for path in paths:
        try:
            parse_path(path)
        except ValueError as exc:
            raise ConfigError(f"Config '{name}' has path {path!r}: {exc}.",
                              public=f"Config '{name}' has an invalid path: {exc}.") from None
    return paths


def _key(name: str, value: Any) -> SecretKey | None:
    text = str(value or "").strip()
    return parse_key(text, name) if text else None


def _keys(name: str, value: Any) -> tuple[SecretKey, ...]:
    items = value if isinstance(value, list | tuple) else str(value or "").split(",")
    keys = []
    for index, item in enumerate(items):
        text = str(item).strip()
        if text:
            keys.append(parse_key(text, f"{name}[{index}]"))
    return tuple(keys)


def _optional_text(name: str, value: Any) -> str | None:
    text = str(value or "").strip()
    return text or None


def _optional_secret(name: str, value: Any) -> str | None:
    text = str(value or "").strip()
    return text or None


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
        None, _storage, "connection string, 'UseDevelopmentStorage=true', https://<account>.blob.core.windows.net "
        "(Entra ID auth), or a local directory path", required=True, hidden=True)
    container: str = _setting("logs", _container, "blob container that holds the log blobs")
    blob_prefix: str = _setting("", _prefix, "blob-name prefix inside the container (e.g. 'gateway/')",
                                alias="directory")
    encryption_key: SecretKey | None = _setting(None, _key, "base64 of 32 random bytes (AES-256-GCM)",
                                                secret=True, required=True)
    previous_keys: tuple[SecretKey, ...] = _setting(
        (), _keys, "comma-separated older keys, for reading after a key rotation", secret=True)
    compression: str = _setting("gzip", _choice("gzip", "none"), "gzip or none")
    batch_size: int = _setting(10, _int(1, 1000), "most entries in one batch")
    batch_timeout: float = _setting(1.0, _float(0.1, 60.0), "seconds a partial batch waits before it is written")
    max_queue_size: int = _setting(250_000, _int(1, 10_000_000),
                                   "most accepted-but-unwritten entries; past it writes get back-pressure (HTTP 503)")
    max_queue_bytes: int = _setting(
        256 * MiB, _int(MiB, 64 * 1024 * MiB),
        "most serialized bytes of accepted-but-unwritten entries; past it writes get back-pressure (HTTP 503)")
    max_concurrent_writes: int = _setting(16, _int(1, 1024), "most appends in flight at once")
    max_append_bytes: int = _setting(
        APPEND_BLOCK_LIMIT, _int(64 * KiB, APPEND_BLOCK_LIMIT),
        "largest Append Block call, and so the largest frame; bigger batches are split", alias="max_chunk_bytes")
    max_blocks_per_blob: int = _setting(BLOCKS_PER_BLOB_LIMIT, _int(1, BLOCKS_PER_BLOB_LIMIT),
                                        "appends per blob before rolling to the next part")
    max_entry_bytes: int = _setting(MiB, _int(KiB, APPEND_BLOCK_LIMIT - FRAME_OVERHEAD_BYTES),
                                    "largest serialized entry accepted")
    max_body_bytes: int = _setting(10 * MiB, _int(KiB, 1024 * MiB), "largest HTTP request body accepted")
    storage_timeout: float = _setting(30.0, _float(1.0, 600.0),
                                      "seconds one storage request may take before it is retried")
    retry_backoff_max: float = _setting(30.0, _float(0.1, 300.0), "longest pause between retries of a failed append")
    give_up_after: float = _setting(
        300.0, _float(1.0, 86400.0), "seconds an append error that retrying cannot heal (403, a leased or sealed "
        "blob, ...) is retried before its entries are reported failed")
    stop_timeout: float = _setting(60.0, _float(0.0, 3600.0),
                                   "seconds stop() keeps retrying unwritten entries before reporting them as failed")
    id_field: str | None = _setting(
        None, _optional_text, "an entry field that identifies a request (e.g. 'id'): read, stats and export keep "
        "the first entry of each value (a client's retry after a lost answer is not counted twice)")
    ack: str = _setting("queued", _choice("queued", "written"),
                        "when POST /api/logs answers: 'queued' (202 once queued) or 'written' (200 once appended); "
                        "a request's ?wait=true|false overrides it")
    api_key: str | None = _setting(
        None, _optional_secret, "when set, `blobwriter serve` requires it as x-functions-key header or ?code=",
        secret=True, serve_only=True)
    # -- what an entry may be, and what of it is kept (entries.py, privacy.py) --
    max_past_days: int | None = _setting(
        None, _optional_int(0, 36500), "refuse entries whose timestamp is more than this many days before the "
        "server's clock (unset: no bound)")
    max_future_days: int | None = _setting(
        None, _optional_int(0, 36500), "refuse entries whose timestamp is more than this many days after the "
        "server's clock (unset: no bound)")
    received_at_field: str | None = _setting(
        None, _field_name, "when set, each entry gets this top-level field with the time the server received it "
        "(RFC 3339, UTC; a value sent by the client is replaced)")
    drop_fields: tuple[str, ...] = _setting(
        (), _paths, "comma-separated dotted paths removed from every entry before it is encrypted "
        "('*' matches every list item or object member, e.g. request.messages.*.content)")
    mask_fields: tuple[str, ...] = _setting(
        (), _paths, "comma-separated dotted paths whose values are replaced by \"[masked]\" before encryption")
    truncate_bytes: int | None = _setting(
        None, _optional_int(64, 64 * MiB), "strings longer than this many UTF-8 bytes are cut to it and marked "
        "\"…[truncated: N bytes]\" (unset: off)")
    metadata_only: bool = _setting(
        False, _bool, "drop the request and response bodies (the top-level 'request' and 'response' fields) "
        "from every entry")
    # -- `blobwriter serve` only (under Functions the host reads the body) --
    body_timeout: float = _setting(
        60.0, _float(1.0, 3600.0), "seconds `blobwriter serve` waits for a request's whole body before answering 408",
        serve_only=True)
    max_concurrent_bodies: int = _setting(
        32, _int(1, 100_000), "most request bodies `blobwriter serve` reads at once (each up to max_body_bytes); "
        "past it 503 with Retry-After", serve_only=True)
    stats_map: str = _setting("", _text, "`blobwriter stats` field map: a preset (gateway, otel, litellm) and/or "
                              "measure=path items, comma-separated (docs/SCHEMA.md)")
    export_destination: str | None = _setting(
        None, _optional_secret, "where the scheduled export writes each closed day (a directory, an https "
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
        protected = {"timestamp", self.received_at_field} - {None}
        for name in ("drop_fields", "mask_fields"):
            for path in getattr(self, name):
                if parse_path(path)[0] in protected | {"*"}:
                    why = ("'timestamp' (it decides the entry's blob) and received_at_field are kept; a path "
                           "cannot start with them or with '*'.")
                    raise ConfigError(f"Config '{name}' has path {path!r}: {why}",
                                      public=f"Config '{name}' has an invalid path: {why}")

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


def storage_kind(storage: str) -> StorageKind:
    """Tell which store a `storage` value selects."""
    lowered = storage.lower()
    if lowered.startswith(("http://", "https://")):
        return "account_url"
    if "=" in storage and (";" in storage or lowered.startswith("usedevelopmentstorage")):
        return "connection_string"
    return "directory"


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
    return Settings.from_values(values)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"Config file {str(path)!r} does not exist.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"Config file {str(path)!r} is not valid YAML{where}.") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"Config file {str(path)!r} must be a mapping with a '{FILE_SECTION}:' section.")
    section = document.get(FILE_SECTION, {})
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"Config file {str(path)!r}: '{FILE_SECTION}:' must be a mapping of settings.")
    return {str(k): v for k, v in section.items()}
