"""The exceptions blobwriter raises, as one hierarchy users can catch at any level."""

from __future__ import annotations


class BlobwriterError(Exception):
    """Base class of every error blobwriter raises on purpose."""


class ConfigError(BlobwriterError):
    """A setting is missing or has a bad value; the message names it (never a secret's value)."""


class EntryError(BlobwriterError, ValueError):
    """An entry was rejected before it was queued: not a JSON object, bad timestamp, too large."""


class EntryTooLargeError(EntryError):
    """An entry is larger than `max_entry_bytes` once serialized."""


class QueueFullError(BlobwriterError):
    """Back-pressure: the writer already holds `max_queue_size` unwritten entries."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class WriterStoppedError(BlobwriterError):
    """The writer is not running (never started, stopping, or its task died)."""


class WriteFailedError(BlobwriterError):
    """Entries could not be appended before the writer gave up (reported, never silent)."""


class StoreError(BlobwriterError):
    """Storage could not be reached or refused an operation."""


class FrameError(BlobwriterError):
    """A stored frame is corrupt, truncated, tampered with, or encrypted with an unknown key."""


class UnknownKeyError(FrameError):
    """No configured key (`encryption_key` or `previous_keys`) matches a frame's key id."""
