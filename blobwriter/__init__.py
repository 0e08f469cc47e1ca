"""blobwriter: batched, compressed, encrypted logging to Azure append blobs (or a directory)."""

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
from .reader import Reader
from .store import AppendBlobStore, DirectoryStore, Store, open_store
from .writer import LogWriter

__version__ = "0.1.0"

__all__ = [
    "AppendBlobStore",
    "BlobwriterError",
    "ConfigError",
    "DirectoryStore",
    "EntryError",
    "EntryTooLargeError",
    "FrameError",
    "LogWriter",
    "QueueFullError",
    "Reader",
    "Settings",
    "Store",
    "StoreError",
    "UnknownKeyError",
    "WriteFailedError",
    "WriterStoppedError",
    "__version__",
    "load_settings",
    "open_store",
]
