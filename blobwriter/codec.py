"""The frame format: entries as JSON Lines, gzip-compressed, AES-256-GCM-encrypted behind a header.

The byte layout is specified in docs/FORMAT.md; the constants here are its single source. A frame
is self-delimiting and carries (writer id, sequence) so that a reader can drop a frame that a
retried append wrote twice. This module also finds frames in a stream of stored bytes
(`FrameScanner`, resynchronizing after damage) and walks undamaged ones (`walk_frames`).

Writers seal version 2: each writer's own key (HKDF of the configured key and its writer id), a
nonce made of the frame's sequence and attempt (never random, never repeated: no volume limit),
and the full blob name authenticated with the header. Readers still open version 1 (the
configured key itself, random nonces, the date authenticated).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import FrameError, UnknownKeyError
from .keys import SecretKey, key_id, writer_key
from .limits import APPEND_BLOCK_LIMIT

_fast_gzip: ModuleType | None
try:  # ISA-L's gzip is standard RFC 1952 output, several times faster than zlib.
    from isal import igzip as _fast_gzip
except ImportError:  # pragma: no cover - isal ships wheels for the supported platforms
    _fast_gzip = None

MAGIC = b"BLWF"
VERSION = 2  # what writers seal
VERSIONS = (1, 2)  # what readers open
FLAG_GZIP = 0x01
FLAG_INDEX = 0x02  # an index frame: where its writer's frames landed, not log entries
# magic, version, flags, append attempt, key id, writer id, sequence, entries, plaintext length,
# nonce, ciphertext length (with tag), header CRC-32 (of the bytes before it). Big-endian.
HEADER = struct.Struct(">4sBBH8s16sQII12sII")
HEADER_SIZE = HEADER.size  # 68
MAX_ATTEMPT = 0xFFFF
CRC_OFFSET = HEADER_SIZE - 4
WRITER_ID_SIZE = 16
NONCE_SIZE = 12
TAG_SIZE = 16
MAX_FRAME_BYTES = APPEND_BLOCK_LIMIT  # a frame fits one classic Append Block
GZIP_LEVEL = 1  # isal level 1 (or zlib level 1): the cheap end; logs still compress ~4x.


def new_writer_id() -> bytes:
    """A random 16-byte id for one writer process; with the sequence it makes a frame unique."""
    return os.urandom(WRITER_ID_SIZE)


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """The parsed, CRC-checked header of one frame."""

    version: int
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


def plaintext_of(lines: Sequence[bytes]) -> bytes:
    """JSON Lines: each serialized entry (one JSON object, no newline) followed by a newline."""
    return b"\n".join(lines) + b"\n"


def frame_nonce(sequence: int, attempt: int) -> bytes:
    """A version 2 frame's nonce: its sequence (8 bytes), its attempt (2 bytes), two zero bytes."""
    return struct.pack(">QHH", sequence, attempt, 0)


class Encoder:
    """Turns serialized entries into frames for one writer (one key, one writer id).

    An Encoder belongs to the process that made it: sealing in a forked child would reuse the
    parent's writer id, sequences and so its nonces, so it refuses (make a new writer there).
    """

    def __init__(self, key: SecretKey, *, compression: str = "gzip", writer_id: bytes | None = None,
                 version: int = VERSION) -> None:
        if version not in VERSIONS:
            raise ValueError(f"unknown frame version {version}")
        self.writer_id = writer_id or new_writer_id()
        self.version = version
        self._aead = AESGCM(writer_key(key, self.writer_id) if version >= 2 else key.raw)
        self._key_id = key_id(key)
        self._flags = FLAG_GZIP if compression == "gzip" else 0
        self._pid = os.getpid()

    def body(self, lines: Sequence[bytes], sequence: int, *, date: str, index: bool = False) -> Body:
        """Join serialized entries (each one JSON object, no newline) into JSON Lines and compress."""
        plaintext = plaintext_of(lines)
        data = compress(plaintext) if self._flags & FLAG_GZIP else plaintext
        return Body(data, len(lines), len(plaintext), sequence, date, index)

    def seal(self, body: Body, attempt: int = 0, *, blob: str) -> bytes:
        """Encrypt a body into a frame for blob `blob`. Each append attempt is sealed anew, with its
        number in the header (and, in version 2, in the nonce), so a reader tells a retry that landed
        twice from a replayed frame. Raises ValueError past MAX_ATTEMPT: a nonce must never repeat."""
        if os.getpid() != self._pid:
            raise RuntimeError("this writer was created in another process (before a fork): its frames would "
                               "reuse the parent's writer id and nonces; create a new LogWriter in this process")
        if not 0 <= attempt <= MAX_ATTEMPT:
            raise ValueError(f"attempt {attempt} is out of range (0 to {MAX_ATTEMPT})")
        nonce = frame_nonce(body.sequence, attempt) if self.version >= 2 else os.urandom(NONCE_SIZE)
        flags = self._flags | (FLAG_INDEX if body.index else 0)
        header = _pack_header(self.version, flags, attempt, self._key_id, self.writer_id, body.sequence,
                              body.entries, body.plaintext_length, nonce, len(body.data) + TAG_SIZE)
        return header + self._aead.encrypt(nonce, body.data, associated_data(header, blob=blob, date=body.date))

    def encode(self, lines: Sequence[bytes], sequence: int, *, blob: str, date: str,
               attempt: int = 0) -> tuple[bytes, int]:
        """One frame from serialized entries; returns the frame and the plaintext length."""
        body = self.body(lines, sequence, date=date)
        return self.seal(body, attempt, blob=blob), body.plaintext_length


def associated_data(header: bytes | memoryview, *, blob: str, date: str) -> bytes:
    """What GCM authenticates besides the body: the whole header, then (version 2) the full name of
    the blob the frame is written to, or (version 1) the UTC date of that blob."""
    head = bytes(header[:HEADER_SIZE])
    return head + (blob.encode("utf-8") if head[4] >= 2 else date.encode("ascii"))


def _pack_header(version: int, flags: int, attempt: int, kid: bytes, writer_id: bytes, sequence: int, entries: int,
                 plaintext_length: int, nonce: bytes, ciphertext_length: int) -> bytes:
    head = HEADER.pack(MAGIC, version, flags, attempt, kid, writer_id, sequence, entries,
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
    if version not in VERSIONS:
        raise FrameError(f"unsupported frame version {version}")
    if flags & ~(FLAG_GZIP | FLAG_INDEX):
        raise FrameError(f"unsupported frame flags 0x{flags:02x}")
    if not TAG_SIZE <= ciphertext_length <= MAX_FRAME_BYTES - HEADER_SIZE:
        raise FrameError(f"implausible ciphertext length {ciphertext_length}")
    return FrameHeader(version, flags, attempt, kid, writer_id, sequence, entries, plaintext_length, nonce,
                       ciphertext_length)


class Decoder:
    """Decrypts and decompresses frames with any of the configured keys."""

    def __init__(self, keys: Iterable[SecretKey]) -> None:
        self._keys = {key_id(k): k for k in keys}
        self._aeads: dict[tuple[bytes, bytes], AESGCM] = {}  # (key id, writer id, or b"" for v1) -> cipher

    @property
    def key_ids(self) -> list[bytes]:
        return list(self._keys)

    def _aead(self, header: FrameHeader) -> AESGCM:
        key = self._keys.get(header.key_id)
        if key is None:
            raise UnknownKeyError(f"no configured key has key id {header.key_id.hex()}")
        which = (header.key_id, header.writer_id if header.version >= 2 else b"")
        aead = self._aeads.get(which)
        if aead is None:
            if len(self._aeads) > 65_536:  # a writer's cipher is cheap to make again; keep memory bounded
                self._aeads.clear()
            aead = self._aeads[which] = AESGCM(writer_key(key, header.writer_id) if header.version >= 2 else key.raw)
        return aead

    def decode(self, header: FrameHeader, frame: bytes | memoryview, *, blob: str, date: str) -> bytes:
        """Return the frame's JSON Lines; raise FrameError if it fails authentication (altered, or not
        written for this blob: version 2 binds the blob's full name, version 1 its date)."""
        aead = self._aead(header)
        if header.version >= 2 and header.nonce != frame_nonce(header.sequence, header.attempt):
            raise FrameError("nonce does not match the frame's sequence and attempt")
        frame = bytes(frame)
        try:
            body = aead.decrypt(header.nonce, frame[HEADER_SIZE:header.frame_length],
                                associated_data(frame, blob=blob, date=date))
        except InvalidTag:
            where = f"blob {blob}" if header.version >= 2 else date
            raise FrameError(f"authentication failed (frame altered, or not written for {where})") from None
        try:
            plaintext = decompress(body) if header.flags & FLAG_GZIP else body
        except (OSError, EOFError, zlib.error) as exc:  # authenticated yet undecodable: a writer bug
            raise FrameError(f"payload does not decompress: {exc}") from None
        if len(plaintext) != header.plaintext_length:
            raise FrameError("payload length does not match the header")
        return plaintext


def frame_tag(frame: bytes | bytearray | memoryview) -> bytes:
    """A sealed frame's GCM tag: its last TAG_SIZE bytes (what index records name a frame by)."""
    return bytes(frame[-TAG_SIZE:])


def iter_lines(plaintext: bytes) -> Iterator[bytes]:
    """The entries (JSON objects, without newline) of a decoded frame."""
    start = 0
    end = len(plaintext)
    while start < end:
        stop = plaintext.index(b"\n", start)
        yield plaintext[start:stop]
        start = stop + 1


# -- finding frames in stored bytes --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Found:
    """A frame with a valid header: where it starts in its blob, its header, and its bytes."""

    offset: int
    header: FrameHeader
    data: bytes

    @property
    def tag(self) -> bytes:
        return frame_tag(self.data)


@dataclass(frozen=True, slots=True)
class Damage:
    """A stretch of a blob that is not a frame (bad header, cut off): where it starts, and why."""

    offset: int
    message: str


Scanned: TypeAlias = Found | Damage


class FrameScanner:
    """Finds frames in one blob's bytes as they arrive; after damage, resynchronizes on the next valid header.

    feed() the blob's bytes in order, iterate for what they hold, then finish() and iterate once more.
    A consumer that finds a Found frame bad (authentication failed) calls reject(): scanning goes on
    from the byte after its start, looking for the next valid header. Memory: one frame plus one chunk.

    `offset` is the blob offset of the first byte fed (0: the blob's start); with `damaged`, scanning
    starts by looking for the next valid header, as after reject() (a reader that decoded ahead
    resumes there: the scanner at offset + 1 of a rejected frame, in damaged mode, is that state).

    Given the configured key ids (`known`), a frame of another key is found only if a valid header,
    or the end of the bytes, follows it, and no valid header lies inside it: nothing but its header's
    CRC vouches for its length (a CRC is no MAC), and 68 forged bytes claiming a length that covers
    genuine frames, or ends inside one, would hide them. One that fails either is damage, and scanning
    goes on from its second byte.
    """

    def __init__(self, offset: int = 0, *, damaged: bool = False, known: Iterable[bytes] | None = None) -> None:
        self._known = None if known is None else frozenset(known)
        self._buffer = bytearray()
        self._base = offset  # blob offset of buffer[0]
        self._pos = 0  # next frame boundary in the buffer
        self._damaged = damaged  # looking for the next valid header after a problem
        self._eof = False
        self._last_start: int | None = None  # buffer position of the frame last yielded

    def feed(self, chunk: bytes) -> None:
        if self._pos:
            del self._buffer[:self._pos]
            self._base += self._pos
            self._pos = 0
        self._buffer += chunk

    @property
    def position(self) -> int:
        """The blob offset it goes on from: every frame or damage it reports later starts there or after."""
        return self._base + self._pos

    def finish(self) -> None:
        """No more bytes: what is left is reported as a truncated frame."""
        self._eof = True

    def reject(self) -> None:
        """The frame last yielded is bad: report nothing more of it, and rescan from its second byte."""
        if self._last_start is not None:
            self._pos, self._damaged = self._last_start + 1, True
            self._last_start = None

    def __iter__(self) -> Iterator[Scanned]:
        buffer = self._buffer
        while True:
            self._last_start = None
            pos = self._pos
            if self._damaged:
                found = _find_header(buffer, pos)
                if found is None:  # keep a possible partial header, drop the rest
                    self._pos = max(pos, len(buffer) - (HEADER_SIZE - 1))
                    if self._eof:
                        self._pos = len(buffer)
                    return
                self._pos, self._damaged = found, False
                continue
            available = len(buffer) - pos
            if available < HEADER_SIZE:
                if self._eof and available:
                    self._pos, self._damaged = len(buffer), False
                    yield Damage(self._base + pos, f"truncated frame: {available} bytes, shorter than a header")
                return
            try:
                header = parse_header(buffer, pos)
            except FrameError as exc:
                self._pos, self._damaged = pos + 1, True
                yield Damage(self._base + pos, str(exc))
                continue
            end = pos + header.frame_length
            if len(buffer) < end:
                if self._eof:
                    self._pos, self._damaged = pos + 1, True
                    yield Damage(self._base + pos, f"truncated frame: {available} of {header.frame_length} "
                                                   "bytes present")
                    continue
                return
            if self._known is not None and header.key_id not in self._known:
                follow = len(buffer) - end
                if follow < HEADER_SIZE and not self._eof:
                    return  # what follows it decides: wait for the next header's bytes
                untrusted = _untrusted_length(buffer, pos, end, follow)
                if untrusted:
                    self._pos, self._damaged = pos + 1, True
                    yield Damage(self._base + pos, "not a frame: its header names no configured key and a length "
                                                   f"that {untrusted} (forged or damaged)")
                    continue
            self._pos, self._last_start = end, pos
            with memoryview(buffer) as view:  # one copy, not two (a bytearray slice is a copy already)
                data = bytes(view[pos:end])
            yield Found(self._base + pos, header, data)


def _untrusted_length(buffer: bytes | bytearray, pos: int, end: int, follow: int) -> str:
    """Why the length of the frame at buffer[pos:end], of a key not configured, cannot be trusted ("": it
    can). Nothing but its header's CRC vouches for it (a CRC is no MAC): it must end where a frame does (a
    valid header or the end of the bytes follows it) and hold no valid header after its own. An intact
    frame holds one only by a 2^-64 chance (magic, CRC, version and length all valid in ciphertext)."""
    inner = _find_header(buffer, pos + 1, end)
    if inner is not None:
        return f"covers another frame's header, {inner - pos} bytes on"
    if not (_valid_header_at(buffer, end) if follow >= HEADER_SIZE else follow == 0):
        return "does not end where a frame does"
    return ""


def _valid_header_at(buffer: bytes | bytearray, at: int) -> bool:
    """Whether a valid header (magic, version, CRC) starts at `at`."""
    try:
        parse_header(buffer, at)
    except FrameError:
        return False
    return True


def _find_header(buffer: bytes | bytearray, start: int, end: int | None = None) -> int | None:
    """The offset of the next valid header at or after start, and wholly before `end` (None: the buffer's
    end), or None if none there (yet)."""
    stop = len(buffer) if end is None else end
    while True:
        at = buffer.find(MAGIC, start, stop)
        if at < 0 or stop - at < HEADER_SIZE:
            return None
        if _valid_header_at(buffer, at):
            return at
        start = at + 1


def walk_frames(data: bytes | bytearray | memoryview) -> Iterator[tuple[int, FrameHeader]]:
    """(offset, header) of each frame of an undamaged blob; FrameError at the first damage."""
    offset = 0
    while offset < len(data):
        header = parse_header(data, offset)
        if offset + header.frame_length > len(data):
            raise FrameError(f"truncated frame at offset {offset}")
        yield offset, header
        offset += header.frame_length
