"""The exceptions blobwriter raises, as one hierarchy users can catch at any level."""

from __future__ import annotations


class BlobwriterError(Exception):
    """Base class of every error blobwriter raises on purpose."""


class ConfigError(BlobwriterError):
    """A setting is missing or has a bad value; the message names it (never a secret's value).

    `public` says the same without any value at all: what an HTTP answer may show.
    """

    def __init__(self, message: str, *, public: str | None = None) -> None:
        super().__init__(message)
        self.public = public or message


class EntryError(BlobwriterError, ValueError):
    """Entries were rejected before anything was queued: not a JSON object, bad timestamp, malformed.

    `position` is the entry's place in the call (0-based index, or 1-based line for NDJSON) when
    one entry is to blame; `None` when the call as a whole is. `consumed` is how many of the call's
    values were read before it was refused (what the writer counts as rejected).
    """

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position
        self.consumed = 1


class EntryTooLargeError(EntryError):
    """An entry, or a whole call, is larger than can ever be accepted (`max_entry_bytes`, the queue)."""


class QueueFullError(BlobwriterError):
    """Back-pressure: the writer already holds as much unwritten data as it may; retry later."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class WriterStoppedError(BlobwriterError):
    """The writer is not running (never started, stopping, or its task died)."""

    def __init__(self, message: str, retry_after: float = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class WriteFailedError(BlobwriterError):
    """Entries could not be appended before the writer gave up (reported, never silent)."""


class StoreError(BlobwriterError):
    """Storage could not be reached or refused an operation.

    The store raises only this for storage failures (see store.py's error boundary). `code` is the
    service's error code (`ServerBusy`, `BlockCountExceedsLimit`, ...) or None; `status` the HTTP
    status, None when no answer came (timeout, connection reset). Messages never hold credentials.
    """

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class FrameError(BlobwriterError):
    """A stored frame is corrupt, truncated, tampered with, or encrypted with an unknown key."""


class UnknownKeyError(FrameError):
    """No configured key (`encryption_key` or `previous_keys`) matches a frame's key id."""
