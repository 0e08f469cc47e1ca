"""An independent reader of blobwriter's storage format, written from docs/FORMAT.md alone.

It imports nothing from blobwriter: only the standard library and `cryptography` (AES-GCM).
It reads a directory store (the blob names as files under a root directory), frame versions 1
and 2, both layouts (the shared blobs of version 0.1 and the one-blob-per-writer layout), and
checks each date's index frames (records and, in version 2, the chain).

    keys = parse_keys(["base64 key", ...])
    result = read_date(root, "2026-11-24", keys, prefix="gateway/")
    result.entries          # the date's log entries, each once
    result.damage           # (blob, offset, reason) of every damaged frame
    report = check_index(result)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"BLWF"
HEADER_SIZE = 68
TAG_SIZE = 16
MAX_FRAME = 4 * 1024 * 1024
MAX_CIPHERTEXT = MAX_FRAME - HEADER_SIZE
FLAG_GZIP = 0x01
FLAG_INDEX = 0x02
KEY_ID_LABEL = b"blobwriter key id v1"
FRAME_KEY_LABEL = b"blobwriter writer key v2"

# magic, version, flags, attempt, key id, writer id, sequence, entries, plaintext length, nonce,
# ciphertext length, header CRC: FORMAT.md "Frame", all big-endian.
_HEADER = struct.Struct(">4sBBH8s16sQII12sII")
assert _HEADER.size == HEADER_SIZE

_DATE = r"\d{4}-\d{2}-\d{2}"
_PART = r"\d{4,}"


class FrameError(Exception):
    """A frame that cannot be read: bad header, failed authentication, bad body."""


class AuthenticationError(FrameError):
    """AES-GCM refused the frame: a changed byte, a wrong blob name or date, a wrong key."""


class UnknownKeyError(FrameError):
    """The frame is intact, but no configured key has its key id."""


# --- keys ------------------------------------------------------------------------------------


def parse_key(text: str) -> bytes:
    """A configured key: base64 of 32 bytes."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("key is not base64") from exc
    if len(raw) != 32:
        raise ValueError(f"key is {len(raw)} bytes, not 32")
    return raw


def key_id(key: bytes) -> bytes:
    """First 8 bytes of SHA-256("blobwriter key id v1" || 0x00 || key)."""
    return hashlib.sha256(KEY_ID_LABEL + b"\x00" + key).digest()[:8]


def parse_keys(texts: Iterable[str]) -> dict[bytes, bytes]:
    """Key id -> key, for the configured key and the previous ones."""
    return {key_id(raw): raw for raw in (parse_key(text) for text in texts)}


def hkdf_sha256(ikm: bytes, info: bytes, length: int = 32, salt: bytes | None = None) -> bytes:
    """RFC 5869 HKDF with SHA-256; no salt means HashLen (32) zero bytes."""
    prk = hmac.new(salt if salt is not None else b"\x00" * 32, ikm, hashlib.sha256).digest()
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def frame_key(key: bytes, writer_id: bytes) -> bytes:
    """Version 2 frame key: HKDF-SHA256(key, no salt, "blobwriter writer key v2" || 0x00 || writer id)."""
    return hkdf_sha256(key, FRAME_KEY_LABEL + b"\x00" + writer_id, 32)


# --- frames ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    raw: bytes
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

    @property
    def writer(self) -> str:
        return self.writer_id.hex()


def parse_header(data: bytes, offset: int = 0) -> Header | None:
    """The header at `offset`, or None if it is not a valid one (FORMAT.md "Reading", step 2)."""
    raw = bytes(data[offset:offset + HEADER_SIZE])
    if len(raw) < HEADER_SIZE or raw[:4] != MAGIC:
        return None
    (_magic, version, flags, attempt, kid, writer_id, sequence, entries, plain_len, nonce, ct_len,
     crc) = _HEADER.unpack(raw)
    if zlib.crc32(raw[:64]) != crc:
        return None
    if version not in (1, 2) or not TAG_SIZE <= ct_len <= MAX_CIPHERTEXT:
        return None
    return Header(raw, version, flags, attempt, kid, writer_id, sequence, entries, plain_len, nonce, ct_len)


def associated_data(header: Header, blob: str) -> bytes:
    """The whole header, then the blob's full name (version 2) or its 10-byte date (version 1)."""
    if header.version == 2:
        return header.raw + blob.encode("utf-8")
    return header.raw + blob_date(blob).encode("ascii")


def expected_nonce(header: Header) -> bytes:
    return struct.pack(">QH", header.sequence, header.attempt) + b"\x00\x00"


def open_frame(header: Header, ciphertext: bytes, blob: str, keys: dict[bytes, bytes]) -> bytes:
    """Check, decrypt and decompress one frame; returns its plaintext (JSON Lines)."""
    key = keys.get(header.key_id)
    if key is None:
        raise UnknownKeyError(f"unknown key id {header.key_id.hex()}")
    if header.flags & ~(FLAG_GZIP | FLAG_INDEX):
        raise FrameError(f"unknown flags 0x{header.flags:02x}")
    if header.version == 2:
        if header.nonce != expected_nonce(header):
            raise FrameError("nonce is not sequence || attempt || 0000")
        aead_key = frame_key(key, header.writer_id)
    else:
        aead_key = key
    try:
        body = AESGCM(aead_key).decrypt(header.nonce, ciphertext, associated_data(header, blob))
    except InvalidTag as exc:
        raise AuthenticationError("authentication failed") from exc
    if header.flags & FLAG_GZIP:
        body = gunzip_one_member(body)
    if len(body) != header.plaintext_length:
        raise FrameError(f"plaintext is {len(body)} bytes, header says {header.plaintext_length}")
    return body


def gunzip_one_member(body: bytes) -> bytes:
    """Decompress a gzip stream (RFC 1952) of exactly one member."""
    decomp = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = decomp.decompress(body) + decomp.flush()
    except zlib.error as exc:
        raise FrameError(f"bad gzip body: {exc}") from exc
    if not decomp.eof or decomp.unused_data:
        raise FrameError("gzip body is not exactly one whole member")
    return out


def split_lines(plaintext: bytes, entries: int) -> list[Any]:
    """JSON Lines: `entries` JSON objects, each followed by a newline."""
    if plaintext and not plaintext.endswith(b"\n"):
        raise FrameError("plaintext does not end with a newline")
    lines = plaintext.split(b"\n")[:-1] if plaintext else []
    if len(lines) != entries:
        raise FrameError(f"{len(lines)} lines, header says {entries}")
    objects = []
    for line in lines:
        try:
            value = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FrameError(f"a line is not UTF-8 JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise FrameError("a line is not a JSON object")
        objects.append(value)
    return objects


@dataclass
class Frame:
    """One authenticated, decoded frame."""

    blob: str
    offset: int
    header: Header
    tag: bytes
    plaintext: bytes
    lines: list[Any]


@dataclass(frozen=True)
class Damage:
    blob: str
    offset: int
    reason: str


@dataclass(frozen=True)
class Unreadable:
    """An intact frame whose key id matches no configured key."""

    blob: str
    offset: int
    key_id: str


def scan_blob(blob: str, data: bytes, keys: dict[bytes, bytes]) -> Iterator[Frame | Damage | Unreadable]:
    """Every frame of one blob, in order, with damage and resynchronization (steps 2-5)."""
    offset = 0
    end = len(data)
    while offset < end:
        header = parse_header(data, offset)
        if header is None:
            reason = "part ends inside a header" if end - offset < HEADER_SIZE else "invalid header"
            yield Damage(blob, offset, reason)
            offset = resync(data, offset + 1)
            continue
        stop = offset + header.frame_length
        if stop > end:
            yield Damage(blob, offset, "part ends inside a frame")
            offset = resync(data, offset + 1)
            continue
        ciphertext = bytes(data[offset + HEADER_SIZE:stop])
        try:
            plaintext = open_frame(header, ciphertext, blob, keys)
            lines = split_lines(plaintext, header.entries)
        except UnknownKeyError:
            inner = resync(data[:stop], offset + 1)
            if inner < stop:  # a header inside: this one's length is not to be trusted (a CRC is no MAC)
                yield Damage(blob, offset, "unknown key id, and a valid header inside the frame")
                offset = inner
                continue
            if stop != end and parse_header(data, stop) is None:  # it ends inside the next frame, or in noise
                yield Damage(blob, offset, "unknown key id, and no header where the frame ends")
                offset = resync(data, offset + 1)
                continue
            yield Unreadable(blob, offset, header.key_id.hex())
            offset = stop
            continue
        except FrameError as exc:
            yield Damage(blob, offset, f"{type(exc).__name__}: {exc}")
            offset = resync(data, offset + 1)
            continue
        yield Frame(blob, offset, header, ciphertext[-TAG_SIZE:], plaintext, lines)
        offset = stop


def resync(data: bytes, start: int) -> int:
    """The offset of the next valid header at or after `start`, or the end of the data."""
    position = start
    while True:
        position = data.find(MAGIC, position)
        if position < 0:
            return len(data)
        if parse_header(data, position) is not None:
            return position
        position += 1


# --- blobs of a date -------------------------------------------------------------------------


def blob_date(blob: str) -> str:
    """The YYYY-MM-DD of a blob name of either layout."""
    found = re.search(rf"({_DATE})(?:\.{_PART}\.log|/[0-9a-f]{{32}}\.{_PART}\.log)$", blob)
    if found is None:
        raise ValueError(f"not a blob name: {blob!r}")
    return found.group(1)


def list_names(root: Path) -> list[str]:
    """Every file under the directory store's root, as a blob name ("/"-separated, relative)."""
    return [path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()]


def date_blobs(names: Iterable[str], date: str, prefix: str = "") -> list[str]:
    """The date's blobs in reading order: shared (0.1) blobs by part, then writers by id, parts by number."""
    base = prefix + date
    shared = re.compile(re.escape(base) + rf"\.({_PART})\.log")
    per_writer = re.compile(re.escape(base) + rf"/([0-9a-f]{{32}})\.({_PART})\.log")
    ordered: list[tuple[tuple[int, str, int], str]] = []
    for name in names:
        if not name.startswith(base):
            continue
        if match := shared.fullmatch(name):
            ordered.append(((0, "", int(match.group(1))), name))
        elif match := per_writer.fullmatch(name):
            ordered.append(((1, match.group(1), int(match.group(2))), name))
    return [name for _key, name in sorted(ordered)]


# --- reading a date --------------------------------------------------------------------------


@dataclass
class DateRead:
    date: str
    blobs: list[str]
    entries: list[dict[str, Any]] = field(default_factory=list)
    data_frames: list[Frame] = field(default_factory=list)  # kept (first copies), in reading order
    index_frames: list[Frame] = field(default_factory=list)  # kept (first copies), in reading order
    frames_at: dict[tuple[str, int], Frame] = field(default_factory=dict)  # every authenticated frame
    retried: list[Frame] = field(default_factory=list)  # later copies with another attempt: dropped
    replays: list[Frame] = field(default_factory=list)  # later copies with the same attempt: dropped
    damage: list[Damage] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)


def read_date(root: Path | str, date: str, keys: dict[bytes, bytes] | Sequence[str], prefix: str = "") -> DateRead:
    """Read one date of a directory store: entries each once, duplicates dropped, damage reported."""
    if not isinstance(keys, dict):
        keys = parse_keys(keys)
    root = Path(root)
    blobs = date_blobs(list_names(root), date, prefix)
    result = DateRead(date, blobs)
    first: dict[tuple[bytes, int], Frame] = {}
    attempts: dict[tuple[bytes, int], set[int]] = {}
    for blob in blobs:
        data = (root / blob).read_bytes()
        for item in scan_blob(blob, data, keys):
            if isinstance(item, Damage):
                result.damage.append(item)
                continue
            if isinstance(item, Unreadable):
                result.unreadable.append(item)
                continue
            result.frames_at[(item.blob, item.offset)] = item
            ident = (item.header.writer_id, item.header.sequence)
            if ident in first:
                seen_attempts = attempts[ident]
                (result.replays if item.header.attempt in seen_attempts else result.retried).append(item)
                seen_attempts.add(item.header.attempt)
                continue
            first[ident] = item
            attempts[ident] = {item.header.attempt}
            if item.header.is_index:
                result.index_frames.append(item)
            else:
                result.data_frames.append(item)
                result.entries.extend(item.lines)
    return result


# --- the index -------------------------------------------------------------------------------

_RECORD_FIELDS = {"blob": str, "offset": int, "length": int, "sequence": int, "attempt": int, "tag": str}
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class ChainLink:
    number: int
    previous: str
    frames: int
    final: bool


@dataclass
class Chain:
    writer: str
    links: list[tuple[ChainLink, Frame]] = field(default_factory=list)

    @property
    def final(self) -> bool:
        return bool(self.links) and self.links[-1][0].final


@dataclass
class IndexReport:
    records: int = 0
    errors: list[str] = field(default_factory=list)  # records that do not match, broken chains, bad lines
    chains: dict[str, Chain] = field(default_factory=dict)  # version 2 writers
    open_chains: list[str] = field(default_factory=list)
    not_yet_indexed: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_chain_link(line: Any) -> ChainLink:
    if not isinstance(line, dict) or set(line) != {"chain"} or not isinstance(line["chain"], dict):
        raise ValueError(f"not a chain link: {line!r}")
    link = line["chain"]
    if set(link) != {"number", "previous", "frames", "final"}:
        raise ValueError(f"chain link fields: {sorted(link)}")
    number, previous, frames, final = link["number"], link["previous"], link["frames"], link["final"]
    if not _is_int(number) or number < 1 or not _is_int(frames) or not isinstance(final, bool):
        raise ValueError(f"chain link values: {link!r}")
    if not isinstance(previous, str) or not (previous == "" if number == 1 else _HEX64.fullmatch(previous)):
        raise ValueError(f"chain link previous: {previous!r}")
    return ChainLink(number, previous, frames, final)


def parse_record(line: Any) -> dict[str, Any]:
    if not isinstance(line, dict) or set(line) != set(_RECORD_FIELDS):
        raise ValueError(f"not a record: {line!r}")
    for name, kind in _RECORD_FIELDS.items():
        value = line[name]
        if kind is int and not _is_int(value):
            raise ValueError(f"record {name}: {value!r}")
        if kind is str and not isinstance(value, str):
            raise ValueError(f"record {name}: {value!r}")
    if not _HEX32.fullmatch(line["tag"]):
        raise ValueError(f"record tag: {line['tag']!r}")
    return line


def check_index(read: DateRead) -> IndexReport:
    """FORMAT.md "verify": records point at the frames they name; version 2 chains are whole."""
    report = IndexReport()
    indexed: set[tuple[bytes, int]] = set()
    for frame in read.index_frames:
        header = frame.header
        lines = frame.lines
        if header.version == 2:
            try:
                link = parse_chain_link(lines[0] if lines else None)
            except ValueError as exc:
                report.errors.append(f"{frame.blob}@{frame.offset}: {exc}")
                continue
            report.chains.setdefault(header.writer, Chain(header.writer)).links.append((link, frame))
            lines = lines[1:]
        for line in lines:
            try:
                record = parse_record(line)
            except ValueError as exc:
                report.errors.append(f"{frame.blob}@{frame.offset}: {exc}")
                continue
            report.records += 1
            target = read.frames_at.get((record["blob"], record["offset"]))
            where = f"record {record['blob']}@{record['offset']} (in {frame.blob}@{frame.offset})"
            if target is None:
                report.errors.append(f"{where}: no frame there")
                continue
            found = (target.header.writer_id, target.header.sequence, target.header.attempt, target.tag.hex(),
                     target.header.frame_length, target.header.is_index)
            wanted = (header.writer_id, record["sequence"], record["attempt"], record["tag"], record["length"], False)
            if found != wanted:
                report.errors.append(f"{where}: a different frame is there")
                continue
            indexed.add((target.header.writer_id, target.header.sequence))
    for chain in report.chains.values():
        _check_chain(chain, report)
    report.not_yet_indexed = sum(
        1 for frame in read.data_frames if (frame.header.writer_id, frame.header.sequence) not in indexed)
    return report


def _check_chain(chain: Chain, report: IndexReport) -> None:
    chain.links.sort(key=lambda pair: pair[0].number)
    total = 0
    previous_plaintext: bytes | None = None
    for position, (link, frame) in enumerate(chain.links, start=1):
        where = f"writer {chain.writer} index frame {link.number} ({frame.blob}@{frame.offset})"
        if link.number != position:
            report.errors.append(f"{where}: expected number {position} (gap or repeat)")
            return
        wanted = "" if previous_plaintext is None else hashlib.sha256(previous_plaintext).hexdigest()
        if link.previous != wanted:
            report.errors.append(f"{where}: previous hash does not match index frame {position - 1}")
        total += frame.header.entries - 1
        if link.frames != total:
            report.errors.append(f"{where}: frames {link.frames}, records so far {total}")
        previous_plaintext = frame.plaintext
    if not chain.final:
        report.open_chains.append(chain.writer)
