"""blobwriter: batched, compressed, encrypted logging to Azure append blobs (or a directory).

The names below are loaded when first used (PEP 562), so that `import blobwriter.codec` (a reader's
decoding worker, `blobwriter stats` over a directory) does not load the Azure SDK or the writer.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .blob_store import AppendBlobStore
    from .config import Settings, load_settings
    from .errors import (
        BlobwriterError,
        ConfigError,
        EntryError,
        EntryTooLargeError,
        FrameError,
        QueueFullError,
        StoreError,
        UnknownKeyError,
        WriteFailedError,
        WriterStoppedError,
    )
    from .keys import SecretKey, generate_key, keygen, parse_key
    from .privacy import Privacy
    from .reader import Reader, ReadReport, date_range
    from .store import DirectoryStore, Store, open_store
    from .writer import LogWriter, WriterState

__version__ = "0.1.0"

_WHERE = {
    "AppendBlobStore": "blob_store",
    "Settings": "config", "load_settings": "config",
    "BlobwriterError": "errors", "ConfigError": "errors", "EntryError": "errors", "EntryTooLargeError": "errors",
    "FrameError": "errors", "QueueFullError": "errors", "StoreError": "errors", "UnknownKeyError": "errors",
    "WriteFailedError": "errors", "WriterStoppedError": "errors",
    "SecretKey": "keys", "generate_key": "keys", "keygen": "keys", "parse_key": "keys",
    "Privacy": "privacy",
    "Reader": "reader", "ReadReport": "reader", "date_range": "reader",
    "DirectoryStore": "store", "Store": "store", "open_store": "store",
    "LogWriter": "writer", "WriterState": "writer",
}

__all__ = [
    "AppendBlobStore",
    "BlobwriterError",
    "ConfigError",
    "DirectoryStore",
    "EntryError",
    "EntryTooLargeError",
    "FrameError",
    "LogWriter",
    "Privacy",
    "QueueFullError",
    "ReadReport",
    "Reader",
    "SecretKey",
    "Settings",
    "Store",
    "StoreError",
    "UnknownKeyError",
    "WriteFailedError",
    "WriterState",
    "WriterStoppedError",
    "__version__",
    "date_range",
    "generate_key",
    "keygen",
    "load_settings",
    "open_store",
    "parse_key",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'blobwriter' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return __all__
