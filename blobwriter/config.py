"""Settings: read from environment variables, then a YAML file, then defaults; validated once.

Every setting `name` can be given as `BLOBWRITER_<NAME>` in the environment (Azure Functions
app settings are environment variables) or under the `logging:` key of a YAML file found via
`--config PATH` or `BLOBWRITER_CONFIG`. The environment wins over the file. A bad value fails
at start-up with one line naming the setting and what is allowed; secret values never appear
in any message.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError

ENV_PREFIX = "BLOBWRITER_"
CONFIG_ENV = "BLOBWRITER_CONFIG"
FILE_SECTION = "logging"

KEY_BYTES = 32
KiB = 1024
MiB = 1024 * KiB
# The classic Append Block limit and the committed-block limit of one append blob.
APPEND_BLOCK_LIMIT = 4 * MiB
BLOCKS_PER_BLOB_LIMIT = 50_000
# Room a frame needs beyond its entries: header, GCM tag, gzip's worst-case expansion.
FRAME_OVERHEAD_BYTES = 4 * KiB

StorageKind = Literal["connection_string", "account_url", "directory"]
_CONTAINER_RE = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")


class SecretKey:
    """A 32-byte AES key whose repr and str never show the key."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def __repr__(self) -> str:
        return "SecretKey(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)


def parse_key(text: str, setting: str = "encryption_key") -> SecretKey:
    """Decode a base64 (standard or URL-safe) 32-byte key; errors never echo the value."""
    cleaned = text.strip()
    cleaned += "=" * (-len(cleaned) % 4)  # URL-safe base64 usually comes without its padding
    try:
        raw = base64.b64decode(cleaned.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            f"Config '{setting}' is not valid base64; expected base64 of {KEY_BYTES} random bytes "
            "(make one with `blobwriter keygen`)."
        ) from None
    if len(raw) != KEY_BYTES:
        raise ConfigError(
            f"Config '{setting}' decodes to {len(raw)} bytes; expected exactly {KEY_BYTES} "
            "(make one with `blobwriter keygen`)."
        )
    return SecretKey(raw)


def _number(parse: Callable[[str], float], noun: str, low: float, high: float) -> Callable[[str, Any], Any]:
    """A cast to a number in [low, high]; `parse` is int or float, `noun` names it in errors."""

    def cast(name: str, value: Any) -> Any:
        try:
            number = parse(str(value).strip().replace("_", ""))
        except ValueError:
            raise ConfigError(
                f"Config '{name}' has value {value!r}: not {noun} (allowed: {low} to {high})."
            ) from None
        if not low <= number <= high:
            raise ConfigError(f"Config '{name}' has value {number}: out of range (allowed: {low} to {high}).")
        return number

    return cast


def _int(low: int, high: int) -> Callable[[str, Any], int]:
    return _number(int, "an integer", low, high)


def _float(low: float, high: float) -> Callable[[str, Any], float]:
    return _number(float, "a number", low, high)


def _choice(*allowed: str) -> Callable[[str, Any], str]:
    def cast(name: str, value: Any) -> str:
        text = str(value).strip().lower()
        if text not in allowed:
            raise ConfigError(f"Config '{name}' has value {value!r}: allowed values are {', '.join(allowed)}.")
        return text

    return cast


def _text(name: str, value: Any) -> str:
    return str(value).strip()


def _container(name: str, value: Any) -> str:
    text = str(value).strip()
    if not _CONTAINER_RE.match(text):
        raise ConfigError(
            f"Config '{name}' has value {text!r}: a container name is 3-63 lowercase letters, "
            "digits and single hyphens, starting and ending with a letter or digit."
        )
    return text


def _prefix(name: str, value: Any) -> str:
    text = str(value or "").strip().replace("\\", "/")
    if text.startswith("/") or ".." in text.split("/"):
        raise ConfigError(
            f"Config '{name}' has value {text!r}: a blob-name prefix must be relative and must not contain '..'."
        )
    if text and not text.endswith("/"):
        text += "/"
    return text


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


def _optional_secret(name: str, value: Any) -> str | None:
    text = str(value or "").strip()
    return text or None


@dataclass(frozen=True)
class Field:
    """One setting: its cast/validator, default, whether it is secret, and a one-line help text."""

    name: str
    cast: Callable[[str, Any], Any]
    default: Any
    help: str
    secret: bool = False
    required: bool = False

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


FIELDS: tuple[Field, ...] = (
    Field("storage", _text, None, "connection string, 'UseDevelopmentStorage=true', "
          "https://<account>.blob.core.windows.net (Entra ID auth), or a local directory path", required=True),
    Field("container", _container, "logs", "blob container that holds the log blobs"),
    Field("directory", _prefix, "", "blob-name prefix inside the container (e.g. 'gateway/')"),
    Field("encryption_key", _key, None, "base64 of 32 random bytes (AES-256-GCM)", secret=True, required=True),
    Field("previous_keys", _keys, (), "comma-separated older keys, for reading after a key rotation", secret=True),
    Field("compression", _choice("gzip", "none"), "gzip", "gzip or none"),
    Field("batch_size", _int(1, 1000), 10, "most entries in one batch"),
    Field("batch_timeout", _float(0.1, 60.0), 1.0, "seconds a partial batch waits before it is written"),
    Field("max_queue_size", _int(1, 10_000_000), 100_000,
          "most accepted-but-unwritten entries; past it writes get back-pressure (HTTP 503)"),
    Field("max_concurrent_writes", _int(1, 1024), 16, "most appends in flight at once"),
    Field("max_chunk_bytes", _int(64 * KiB, APPEND_BLOCK_LIMIT), APPEND_BLOCK_LIMIT,
          "largest frame (one Append Block call); bigger batches are split"),
    Field("max_blocks_per_blob", _int(1, BLOCKS_PER_BLOB_LIMIT), BLOCKS_PER_BLOB_LIMIT,
          "frames per blob before rolling to the next part"),
    Field("max_entry_bytes", _int(KiB, APPEND_BLOCK_LIMIT - FRAME_OVERHEAD_BYTES), MiB,
          "largest serialized entry accepted"),
    Field("max_body_bytes", _int(KiB, 1024 * MiB), 10 * MiB, "largest HTTP request body accepted"),
    Field("storage_timeout", _float(1.0, 600.0), 30.0, "seconds one storage request may take before it is retried"),
    Field("retry_backoff_max", _float(0.1, 300.0), 30.0, "longest pause between retries of a failed append"),
    Field("stop_timeout", _float(0.0, 3600.0), 60.0,
          "seconds stop() keeps retrying unwritten entries before reporting them as failed"),
    Field("api_key", _optional_secret, None,
          "when set, `blobwriter serve` requires it as x-functions-key header or ?code=", secret=True),
    Field("stats_map", _text, "", "`blobwriter stats` field map: a preset (gateway, otel, litellm) and/or "
          "measure=path items, comma-separated (docs/SCHEMA.md)"),
    Field("export_destination", _optional_secret, None, "where the scheduled export writes each closed day "
          "(a directory, an https container URL, or a connection string with ;Container=NAME); unset: off",
          secret=True),
)
FIELDS_BY_NAME = {f.name: f for f in FIELDS}


@dataclass(frozen=True)
class Settings:
    """Validated settings for one writer, reader or server."""

    storage: str | None = field(default=None, repr=False)  # a connection string holds the account key
    container: str = "logs"
    directory: str = ""
    encryption_key: SecretKey | None = field(default=None, repr=False)
    previous_keys: tuple[SecretKey, ...] = field(default=(), repr=False)
    compression: str = "gzip"
    batch_size: int = 10
    batch_timeout: float = 1.0
    max_queue_size: int = 100_000
    max_concurrent_writes: int = 16
    max_chunk_bytes: int = APPEND_BLOCK_LIMIT
    max_blocks_per_blob: int = BLOCKS_PER_BLOB_LIMIT
    max_entry_bytes: int = MiB
    max_body_bytes: int = 10 * MiB
    storage_timeout: float = 30.0
    retry_backoff_max: float = 30.0
    stop_timeout: float = 60.0
    api_key: str | None = field(default=None, repr=False)
    stats_map: str = ""
    export_destination: str | None = field(default=None, repr=False)  # a connection string holds a key

    def __post_init__(self) -> None:
        if self.max_entry_bytes > self.max_chunk_bytes - FRAME_OVERHEAD_BYTES:
            raise ConfigError(
                f"Config 'max_entry_bytes' ({self.max_entry_bytes}) must be at most max_chunk_bytes "
                f"({self.max_chunk_bytes}) minus {FRAME_OVERHEAD_BYTES} bytes of frame overhead."
            )
        if self.max_queue_size < self.batch_size:
            raise ConfigError(
                f"Config 'max_queue_size' ({self.max_queue_size}) must be at least batch_size ({self.batch_size})."
            )

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Settings:
        """Cast and validate raw values (strings or YAML scalars), e.g. for tests and embedding."""
        unknown = sorted(set(values) - set(FIELDS_BY_NAME))
        if unknown:
            raise ConfigError(
                f"Unknown setting(s) {', '.join(unknown)}; known settings: {', '.join(FIELDS_BY_NAME)}."
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
        values.update(_read_file(Path(path)))
    for f in FIELDS:
        if f.env in env:
            values[f.name] = env[f.env]
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
