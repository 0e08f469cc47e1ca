"""Encryption keys: the 32-byte AES-256 key, its text form, its fingerprint, and making new ones.

A key is configured as base64 (standard or URL-safe, padded or not) and never shown: `SecretKey`'s
repr hides it and parse errors never echo the text. The key id names a key inside frames, so a
reader picks the right key among the current and previous ones without a registry of names.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from .errors import ConfigError

KEY_BYTES = 32
KEY_ID_SIZE = 8
KEY_ID_CONTEXT = b"blobwriter key id v1\x00"
WRITER_KEY_CONTEXT = b"blobwriter writer key v2\x00"


class SecretKey:
    """A 32-byte AES key whose repr and str never show the key."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_BYTES:
            raise ValueError(f"a key is {KEY_BYTES} bytes, not {len(raw)}")
        self.raw = raw

    def __repr__(self) -> str:
        return "SecretKey(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    @property
    def id(self) -> bytes:
        """The key's 8-byte fingerprint, as frames name it."""
        return key_id(self)

    def to_text(self) -> str:
        """The key as standard base64, the form settings take."""
        return base64.b64encode(self.raw).decode("ascii")


def generate_key() -> SecretKey:
    """A new random AES-256 key."""
    return SecretKey(os.urandom(KEY_BYTES))


def keygen() -> str:
    """A new random AES-256 key as base64 text (what `blobwriter keygen` prints)."""
    return generate_key().to_text()


def key_id(key: SecretKey) -> bytes:
    """The 8-byte fingerprint that names a key inside frames: SHA-256 of a context string and the key."""
    return hashlib.sha256(KEY_ID_CONTEXT + key.raw).digest()[:KEY_ID_SIZE]


def writer_key(key: SecretKey, writer_id: bytes) -> bytes:
    """The AES-256 key one writer seals its frames with (format version 2): HKDF-SHA256 of the
    configured key, no salt, info = WRITER_KEY_CONTEXT followed by the 16-byte writer id. A key of its
    own per writer is what makes deterministic nonces safe: no two writers share a (key, nonce)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=WRITER_KEY_CONTEXT + writer_id).derive(key.raw)


def parse_key(text: str, setting: str = "encryption_key") -> SecretKey:
    """Decode a base64 (standard or URL-safe) 32-byte key; errors name the setting, never the value."""
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
