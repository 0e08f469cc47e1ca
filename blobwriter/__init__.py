"""blobwriter: batched, compressed, encrypted logging to Azure append blobs (or a directory)."""

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
