"""Casts for settings: each takes the setting's name (for messages) and the raw value, and returns
the value validated and converted, or raises ConfigError naming the setting (never a secret's value)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from .errors import ConfigError
from .keys import SecretKey, parse_key
from .privacy import parse_path

StorageKind = Literal["connection_string", "account_url", "directory"]
_CONTAINER_RE = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")

Cast = Callable[[str, Any], Any]
N = TypeVar("N", int, float)


def bad(name: str, value: Any, why: str) -> ConfigError:
    """A bad value: the message shows it (not a secret's), the public form does not."""
    return ConfigError(f"Config '{name}' has value {value!r}: {why}", public=f"Config '{name}' is invalid: {why}")


def ascii_number(text: str, parse: Callable[[str], N]) -> N:
    """`parse` (int or float) of a number in ASCII digits, as in the HTTP layer (int() and float() also
    read other scripts' digits: '\u0663' as 3); underscores between them are ignored (1_000), as YAML
    reads them. Raises ValueError for anything else. The command line's numbers follow the same rule."""
    if not text.isascii():
        raise ValueError(text)
    return parse(text.replace("_", ""))


def number(parse: Callable[[str], float], noun: str, low: float, high: float) -> Cast:
    """A cast to a number in [low, high] (ascii_number); `parse` is int or float, `noun` names it in errors."""

    def cast(name: str, value: Any) -> Any:
        try:
            number = ascii_number(str(value).strip(), parse)
        except ValueError:
            raise bad(name, value, f"not {noun} in ASCII digits (allowed: {low} to {high}).") from None
        if not low <= number <= high:
            raise bad(name, number, f"out of range (allowed: {low} to {high}).")
        return number

    return cast


def integer(low: int, high: int) -> Cast:
    return number(int, "an integer", low, high)


def real(low: float, high: float) -> Cast:
    return number(float, "a number", low, high)


def choice(*allowed: str) -> Cast:
    def cast(name: str, value: Any) -> str:
        text = str(value).strip().lower()
        if text not in allowed:
            raise bad(name, value, f"allowed values are {', '.join(allowed)}.")
        return text

    return cast


def text(name: str, value: Any) -> str:
    return str(value).strip()


def container(name: str, value: Any) -> str:
    text = str(value).strip()
    if not _CONTAINER_RE.match(text):
        raise bad(name, text, "a container name is 3-63 lowercase letters, digits and single hyphens, "
                               "starting and ending with a letter or digit.")
    return text


def prefix(name: str, value: Any) -> str:
    text = str(value or "").strip().replace("\\", "/")
    if text.startswith("/") or ".." in text.split("/"):
        raise bad(name, text, "a blob-name prefix must be relative and must not contain '..'.")
    # The HTTP stack (and Azure) collapse '.' and empty segments of a blob's URL path, so such a prefix
    # would put blobs where the reader, listing by the literal prefix, does not look.
    segments = text.removesuffix("/").split("/") if text else []
    if any(segment in ("", ".") for segment in segments):
        raise bad(name, text, "a blob-name prefix must not have empty ('//') or '.' segments (the HTTP path "
                               "would be normalized and blobs would land where readers do not look).")
    if text and not text.endswith("/"):
        text += "/"
    return text


# A credential inside a value that is not a connection string (so would be taken for a directory path).
_CREDENTIAL_MARKERS = re.compile(r"(?i)(accountkey|sharedaccesssignature|sharedaccesskey|(^|[?&;])sig)=")
_SAS_SIGNATURE = re.compile(r"(?i)(^|&)sig=[^&]")


def storage(name: str, value: Any) -> str:
    text = str(value).strip()
    if storage_kind(text) == "directory" and _CREDENTIAL_MARKERS.search(text):
        # Never echoed: the value holds a key or a SAS signature.
        raise ConfigError(
            f"Config '{name}' holds a credential (AccountKey=, SharedAccessSignature= or sig=) but is not a "
            "connection string, so it would be taken for a directory path: write it as "
            "'BlobEndpoint=https://<account>.blob.core.windows.net;SharedAccessSignature=<token>' or "
            "'AccountName=...;AccountKey=...' (the value is not shown)."
        )
    if storage_kind(text) == "connection_string":
        connection_string(name, text)
    elif storage_kind(text) == "account_url":
        account_url(name, text)
    return text


def account_url(name: str, text: str, *, container: str = "") -> None:
    """An account URL (the `storage` setting's; an export destination's, which names a container too) signs
    in with its SAS token (its query string) or, without one, with Entra ID, which the SDK sends only over
    https: anything else fails at the first request (a traceback at serve's start-up). Never echoed: the
    query may hold a SAS signature. `container`: what a connection string takes besides, in the hint (an
    export destination's ';Container=NAME')."""
    parts = urlsplit(text)
    if not parts.hostname:
        raise ConfigError(f"Config '{name}' is not a valid account URL: it has no host (the value is not shown). "
                          "Expected https://<account>.blob.core.windows.net.")
    if parts.query:
        if not _SAS_SIGNATURE.search(parts.query):
            raise ConfigError(f"Config '{name}' has a query string that is not a SAS token (no 'sig='; the value "
                              "is not shown): an account URL takes a SAS token (?sv=...&sig=...) or nothing "
                              "(Entra ID).")
    elif parts.scheme.lower() != "https":
        raise ConfigError(
            f"Config '{name}' is an http:// account URL without a SAS token: Entra ID (DefaultAzureCredential) "
            "signs requests only over https. Use https://, add a SAS token (?sv=...&sig=...), or a connection "
            f"string (UseDevelopmentStorage=true{container} for Azurite, or 'DefaultEndpointsProtocol=http;"
            f"AccountName=...;AccountKey=...;BlobEndpoint=...{container}').")


def connection_string(name: str, text: str) -> str:
    """A connection string (the `storage` setting's, an export destination's) parsed now, as the SDK will
    parse it (no request is made): a malformed one is a ConfigError at load, not a ValueError from the first
    append (which, under Functions, is a 500 on every route). Returns the blob endpoint URL it names."""
    from azure.storage.blob import BlobServiceClient

    try:
        client = BlobServiceClient.from_connection_string(text)
    except ValueError as exc:  # never echoed: the value may hold an account key
        raise ConfigError(f"Config '{name}' is not a valid connection string: {exc} (the value is not shown). "
                          "Expected 'AccountName=...;AccountKey=...', 'BlobEndpoint=...;SharedAccessSignature=...' "
                          "or 'UseDevelopmentStorage=true'.") from None
    # The SDK decodes the account key only to sign a request: a key that is not base64 failed every request,
    # retried as if storage were down, each entry accepted (202) and never written.
    account_key = getattr(client.credential, "account_key", None)
    endpoint: str = client.url
    client.close()
    if isinstance(account_key, str):
        try:
            base64.b64decode(account_key.encode("utf-8"))  # as the SDK decodes it when it signs
        except (binascii.Error, ValueError):
            raise ConfigError(f"Config '{name}' has an AccountKey that is not base64 (the value is not shown): "
                              "copy the storage account's access key whole (it ends in '==').") from None
    return endpoint


def optional_integer(low: int, high: int) -> Cast:
    """An integer in [low, high], or None when empty (unset: no bound)."""
    inner = integer(low, high)

    def cast(name: str, value: Any) -> int | None:
        return None if str(value).strip() == "" else int(inner(name, value))

    return cast


def boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise bad(name, value, "allowed values are true, false.")


def field_name(name: str, value: Any) -> str | None:
    text = str(value or "").strip()
    if not text:
        return None
    if text == "timestamp" or "." in text:
        raise bad(name, text, "a top-level field name other than 'timestamp', without '.'.")
    return text


def paths(name: str, value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else str(value or "").split(",")
    paths = tuple(str(item).strip() for item in items if str(item).strip())
    for path in paths:
        try:
            parse_path(path)
        except ValueError as exc:
            raise ConfigError(f"Config '{name}' has path {path!r}: {exc}.",
                              public=f"Config '{name}' has an invalid path: {exc}.") from None
    return paths


def key(name: str, value: Any) -> SecretKey | None:
    text = str(value or "").strip()
    return parse_key(text, name) if text else None


def keys(name: str, value: Any) -> tuple[SecretKey, ...]:
    items = value if isinstance(value, list | tuple) else str(value or "").split(",")
    keys = []
    for index, item in enumerate(items):
        text = str(item).strip()
        if text:
            keys.append(parse_key(text, f"{name}[{index}]"))
    return tuple(keys)


def optional_text(name: str, value: Any) -> str | None:
    text = str(value or "").strip()
    return text or None


def optional_secret(name: str, value: Any) -> str | None:
    text = str(value or "").strip()
    return text or None


def storage_kind(storage: str) -> StorageKind:
    """Tell which store a `storage` value selects."""
    lowered = storage.lower()
    if lowered.startswith(("http://", "https://")):
        return "account_url"
    if "=" in storage and (";" in storage or lowered.startswith("usedevelopmentstorage")):
        return "connection_string"
    return "directory"
