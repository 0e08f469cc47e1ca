"""One frame: entries as JSON Lines, gzip-compressed, AES-256-GCM-encrypted behind a small header.

The byte layout is specified in docs/FORMAT.md; the constants here are its single source.
A frame is self-delimiting and carries (writer id, sequence) so that a reader can drop a frame
that a retried append wrote twice.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .config import APPEND_BLOCK_LIMIT, SecretKey
from .errors import FrameError, UnknownKeyError

_fast_gzip: ModuleType | None
try:  # ISA-L's gzip is standard RFC 1952 output, several times faster than zlib.
    from isal import igzip as _fast_gzip
except ImportError:  # pragma: no cover - isal ships wheels for the supported platforms
    _fast_gzip = None

MAGIC = b"BLWF"
VERSION = 1
FLAG_GZIP = 0x01
FLAG_INDEX = 0x02  # an index frame: where its writer's frames landed, not log entries
# magic, version, flags, append attempt, key id, writer id, sequence, entries, plaintext length,
# nonce, ciphertext length (with tag), header CRC-32 (of the bytes before it). Big-endian.
HEADER = struct.Struct(">4sBBH8s16sQII12sII")
HEADER_SIZE = HEADER.size  # 68
MAX_ATTEMPT = 0xFFFF
CRC_OFFSET = HEADER_SIZE - 4
KEY_ID_SIZE = 8
WRITER_ID_SIZE = 16
NONCE_SIZE = 12
TAG_SIZE = 16
KEY_ID_CONTEXT = b"blobwriter key id v1\x00"
MAX_FRAME_BYTES = APPEND_BLOCK_LIMIT  # version 1 frames fit one classic Append Block
GZIP_LEVEL = 1  # isal level 1 (or zlib level 1): the cheap end; logs still compress ~4x.


def key_id(key: SecretKey) -> bytes:
    """The 8-byte fingerprint that names a key inside frames (no registry of names needed)."""
    return hashlib.sha256(KEY_ID_CONTEXT + key.raw).digest()[:KEY_ID_SIZE]


def new_writer_id() -> bytes:
    """A random 16-byte id for one writer process; with the sequence it makes a frame unique."""
    return os.urandom(WRITER_ID_SIZE)


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """The parsed, CRC-checked header of one frame."""

    flags: int
    attempt: int
    key_id: bytes
    writer_id: bytes
    sequence: int
    entries: int
    plaintext_length: int
    nonce: bytes
    ciphertext_length: int

    @property
    def frame_length(self) -> int:
        return HEADER_SIZE + self.ciphertext_length

    @property
    def is_index(self) -> bool:
        return bool(self.flags & FLAG_INDEX)


def compress(data: bytes) -> bytes:
    if _fast_gzip is not None:
        return _fast_gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)
    return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


def decompress(data: bytes) -> bytes:
    if _fast_gzip is not None:
        return _fast_gzip.decompress(data)
    return gzip.decompress(data)


@dataclass(frozen=True, slots=True)
class Body:
    """A batch's entries as JSON Lines, compressed, not yet encrypted: what a retry re-seals."""

    data: bytes
    entries: int
    plaintext_length: int
    sequence: int
    date: str  # the UTC date of the part it goes to: authenticated, so a frame moved to another date fails
    index: bool = False


class Encoder:
    """Turns serialized entries into frames for one writer (one key, one writer id)."""

    def __init__(self, key: SecretKey, *, compression: str = "gzip", writer_id: bytes | None = None) -> None:
        self._aead = AESGCM(key.raw)
        self._key_id = key_id(key)
        self._flags = FLAG_GZIP if compression == "gzip" else 0
        self.writer_id = writer_id or new_writer_id()

    def body(self, lines: Sequence[bytes], sequence: int, *, date: str, index: bool = False) -> Body:
        """Join serialized entries (each one JSON object, no newline) into JSON Lines and compress."""
        plaintext = b"\n".join(lines) + b"\n"
        data = compress(plaintext) if self._flags & FLAG_GZIP else plaintext
        return Body(data, len(lines), len(plaintext), sequence, date, index)

    def seal(self, body: Body, attempt: int = 0) -> bytes:
        """Encrypt a body into a frame. Each append attempt is sealed anew (fresh nonce, its number
        in the header), so a reader tells a retry that landed twice from a replayed frame."""
        nonce = os.urandom(NONCE_SIZE)
        flags = self._flags | (FLAG_INDEX if body.index else 0)
        header = _pack_header(flags, min(attempt, MAX_ATTEMPT), self._key_id, self.writer_id, body.sequence,
                              body.entries, body.plaintext_length, nonce, len(body.data) + TAG_SIZE)
        return header + self._aead.encrypt(nonce, body.data, associated_data(header, body.date))

    def encode(self, lines: Sequence[bytes], sequence: int, *, date: str, attempt: int = 0) -> tuple[bytes, int]:
        """One frame from serialized entries; returns the frame and the plaintext length."""
        body = self.body(lines, sequence, date=date)
        return self.seal(body, attempt), body.plaintext_length


def associated_data(header: bytes | memoryview, date: str) -> bytes:
    """What GCM authenticates besides the body: the whole header, then the part's UTC date."""
    return bytes(header[:HEADER_SIZE]) + date.encode("ascii")


def _pack_header(flags: int, attempt: int, kid: bytes, writer_id: bytes, sequence: int, entries: int,
                 plaintext_length: int, nonce: bytes, ciphertext_length: int) -> bytes:
    head = HEADER.pack(MAGIC, VERSION, flags, attempt, kid, writer_id, sequence, entries,
                       plaintext_length, nonce, ciphertext_length, 0)[:CRC_OFFSET]
    return head + struct.pack(">I", zlib.crc32(head))


def parse_header(buffer: bytes | bytearray | memoryview, offset: int = 0) -> FrameHeader:
    """Parse and check the header at `offset`; raise FrameError if it is not a valid header."""
    raw = bytes(buffer[offset:offset + HEADER_SIZE])
    if len(raw) < HEADER_SIZE:
        raise FrameError("truncated header")
    (magic, version, flags, attempt, kid, writer_id, sequence, entries, plaintext_length,
     nonce, ciphertext_length, crc) = HEADER.unpack(raw)
    if magic != MAGIC:
        raise FrameError("bad magic")
    if zlib.crc32(raw[:CRC_OFFSET]) != crc:
        raise FrameError("header checksum mismatch")
    if version != VERSION:
        raise FrameError(f"unsupported frame version {version}")
    if not TAG_SIZE <= ciphertext_length <= MAX_FRAME_BYTES - HEADER_SIZE:
        raise FrameError(f"implausible ciphertext length {ciphertext_length}")
    return FrameHeader(flags, attempt, kid, writer_id, sequence, entries, plaintext_length, nonce, ciphertext_length)


class Decoder:
    """Decrypts and decompresses frames with any of the configured keys."""

    def __init__(self, keys: Iterable[SecretKey]) -> None:
        self._aeads = {key_id(k): AESGCM(k.raw) for k in keys}

    @property
    def key_ids(self) -> list[bytes]:
        return list(self._aeads)

    def decode(self, header: FrameHeader, frame: bytes | memoryview, date: str) -> bytes:
        """Return the frame's JSON Lines; raise FrameError if it fails authentication (altered, or
        not written for a part of `date`)."""
        aead = self._aeads.get(header.key_id)
        if aead is None:
            raise UnknownKeyError(f"no configured key has key id {header.key_id.hex()}")
        frame = bytes(frame)
        try:
            body = aead.decrypt(header.nonce, frame[HEADER_SIZE:header.frame_length], associated_data(frame, date))
        except InvalidTag:
            raise FrameError(f"authentication failed (frame altered, or not written for {date})") from None
        try:
            plaintext = decompress(body) if header.flags & FLAG_GZIP else body
        except (OSError, EOFError, zlib.error) as exc:  # authenticated yet undecodable: a writer bug
            raise FrameError(f"payload does not decompress: {exc}") from None
        if len(plaintext) != header.plaintext_length:
            raise FrameError("payload length does not match the header")
        return plaintext


def iter_lines(plaintext: bytes) -> Iterator[bytes]:
    """The entries (JSON objects, without newline) of a decoded frame."""
    start = 0
    end = len(plaintext)
    while start < end:
        stop = plaintext.index(b"\n", start)
        yield plaintext[start:stop]
        start = stop + 1
