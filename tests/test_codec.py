"""The frame format: header layout, encryption, compression, and what a damaged frame raises."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib

import orjson
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from blobwriter import codec
from blobwriter.codec import (
    HEADER_SIZE,
    MAGIC,
    Decoder,
    Encoder,
    iter_lines,
    parse_header,
)
from blobwriter.errors import FrameError, UnknownKeyError
from blobwriter.keys import KEY_ID_CONTEXT, SecretKey, key_id

KEY = SecretKey(bytes(range(32)))
OTHER = SecretKey(bytes(range(1, 33)))
DAY = "2026-11-24"
LINES = [orjson.dumps({"id": f"e{i}", "n": i, "text": "hé ✓ " * i}) for i in range(25)]


def with_crc(head: bytes) -> bytes:
    """Header bytes before the CRC, completed with a correct CRC."""
    return head[: HEADER_SIZE - 4] + struct.pack(">I", zlib.crc32(head[: HEADER_SIZE - 4]))


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_round_trip(compression: str) -> None:
    encoder = Encoder(KEY, compression=compression)
    frame, raw_length = encoder.encode(LINES, 7, date=DAY)
    assert raw_length == len(b"\n".join(LINES) + b"\n")
    header = parse_header(frame)
    assert header.frame_length == len(frame)
    assert (header.sequence, header.entries, header.plaintext_length) == (7, len(LINES), raw_length)
    assert header.writer_id == encoder.writer_id
    plaintext = Decoder([OTHER, KEY]).decode(header, frame, DAY)
    assert list(iter_lines(plaintext)) == LINES


def test_header_layout() -> None:
    writer_id = bytes(range(16))
    frame, raw_length = Encoder(KEY, writer_id=writer_id).encode(LINES, 0x0102030405060708, date=DAY)
    assert HEADER_SIZE == 68
    assert frame[0:4] == MAGIC == b"BLWF"
    assert frame[4] == 1  # version
    assert frame[5] == codec.FLAG_GZIP
    assert frame[6:8] == b"\0\0"  # append attempt: 0 for the first
    assert frame[8:16] == key_id(KEY)
    assert frame[16:32] == writer_id
    assert frame[32:40] == bytes.fromhex("0102030405060708")  # big-endian sequence
    assert int.from_bytes(frame[40:44], "big") == len(LINES)
    assert int.from_bytes(frame[44:48], "big") == raw_length
    nonce = frame[48:60]
    ciphertext_length = int.from_bytes(frame[60:64], "big")
    assert ciphertext_length == len(frame) - HEADER_SIZE
    assert int.from_bytes(frame[64:68], "big") == zlib.crc32(frame[:64])
    # Independently of the Decoder: AES-256-GCM with the header and the ASCII date as associated data,
    # then RFC 1952 gzip.
    body = AESGCM(KEY.raw).decrypt(nonce, frame[HEADER_SIZE:], frame[:HEADER_SIZE] + DAY.encode())
    assert gzip.decompress(body) == b"\n".join(LINES) + b"\n"


def test_uncompressed_flag_and_payload() -> None:
    frame, _ = Encoder(KEY, compression="none").encode(LINES, 1, date=DAY)
    assert frame[5] == 0
    body = AESGCM(KEY.raw).decrypt(frame[48:60], frame[HEADER_SIZE:], frame[:HEADER_SIZE] + DAY.encode())
    assert body == b"\n".join(LINES) + b"\n"


def test_key_id_is_a_fingerprint() -> None:
    assert key_id(KEY) == hashlib.sha256(KEY_ID_CONTEXT + KEY.raw).digest()[:8]
    assert key_id(KEY) != key_id(OTHER)
    assert len(key_id(KEY)) == 8


def test_nonces_and_writer_ids_differ() -> None:
    encoder = Encoder(KEY)
    nonces = {parse_header(encoder.encode(LINES[:1], n, date=DAY)[0]).nonce for n in range(200)}
    assert len(nonces) == 200
    assert Encoder(KEY).writer_id != Encoder(KEY).writer_id


def test_wrong_key_is_unknown_key_error() -> None:
    frame, _ = Encoder(KEY).encode(LINES, 1, date=DAY)
    with pytest.raises(UnknownKeyError, match=key_id(KEY).hex()):
        Decoder([OTHER]).decode(parse_header(frame), frame, DAY)
    assert issubclass(UnknownKeyError, FrameError)


def test_altered_ciphertext_byte_fails_authentication() -> None:
    frame, _ = Encoder(KEY).encode(LINES, 1, date=DAY)
    for position in (HEADER_SIZE, HEADER_SIZE + (len(frame) - HEADER_SIZE) // 2, len(frame) - 1):
        altered = bytearray(frame)
        altered[position] ^= 0x01
        header = parse_header(altered)  # the header itself is intact
        with pytest.raises(FrameError, match="authentication failed"):
            Decoder([KEY]).decode(header, altered, DAY)


def test_altered_header_byte_fails_crc() -> None:
    frame, _ = Encoder(KEY).encode(LINES, 1, date=DAY)
    for position in range(4, HEADER_SIZE):
        altered = bytearray(frame)
        altered[position] ^= 0x80
        with pytest.raises(FrameError):
            parse_header(altered)


def test_header_is_authenticated_even_with_fixed_crc() -> None:
    frame, _ = Encoder(KEY).encode(LINES, 1, date=DAY)
    forged = bytearray(frame)
    forged[40:44] = (len(LINES) + 1).to_bytes(4, "big")  # claim one more entry
    forged[:HEADER_SIZE] = with_crc(bytes(forged[:HEADER_SIZE]))
    header = parse_header(forged)  # passes the CRC
    assert header.entries == len(LINES) + 1
    with pytest.raises(FrameError, match="authentication failed"):
        Decoder([KEY]).decode(header, forged, DAY)


def test_bad_magic_version_length() -> None:
    frame, _ = Encoder(KEY).encode(LINES, 1, date=DAY)
    with pytest.raises(FrameError, match="bad magic"):
        parse_header(b"XXXX" + frame[4:])
    with pytest.raises(FrameError, match="truncated header"):
        parse_header(frame[: HEADER_SIZE - 1])
    version_2 = bytearray(frame[:HEADER_SIZE])
    version_2[4] = 2
    with pytest.raises(FrameError, match="unsupported frame version 2"):
        parse_header(with_crc(bytes(version_2)))
    for length in (codec.TAG_SIZE - 1, codec.MAX_FRAME_BYTES):
        huge = bytearray(frame[:HEADER_SIZE])
        huge[60:64] = length.to_bytes(4, "big")
        with pytest.raises(FrameError, match="implausible ciphertext length"):
            parse_header(with_crc(bytes(huge)))


def test_parse_header_at_offset() -> None:
    first, _ = Encoder(KEY).encode(LINES[:3], 1, date=DAY)
    second, _ = Encoder(KEY).encode(LINES[3:5], 2, date=DAY)
    stream = b"junk" + first + second
    one = parse_header(stream, 4)
    two = parse_header(memoryview(stream), 4 + one.frame_length)
    assert (one.sequence, one.entries, two.sequence, two.entries) == (1, 3, 2, 2)


def test_payload_length_mismatch_detected() -> None:
    """An authentic frame whose plaintext length disagrees with the header is still rejected."""
    nonce = os.urandom(12)
    body = b'{"a":1}\n'
    head = codec._pack_header(0, 0, key_id(KEY), bytes(16), 1, 1, len(body) + 5, nonce, len(body) + 16)
    frame = head + AESGCM(KEY.raw).encrypt(nonce, body, head + DAY.encode())
    with pytest.raises(FrameError, match="length does not match"):
        Decoder([KEY]).decode(parse_header(frame), frame, DAY)


def test_authentic_but_undecompressable_payload() -> None:
    nonce = os.urandom(12)
    body = b"not gzip at all"
    head = codec._pack_header(codec.FLAG_GZIP, 0, key_id(KEY), bytes(16), 1, 1, 10, nonce, len(body) + 16)
    frame = head + AESGCM(KEY.raw).encrypt(nonce, body, head + DAY.encode())
    with pytest.raises(FrameError, match="does not decompress"):
        Decoder([KEY]).decode(parse_header(frame), frame, DAY)


def test_iter_lines() -> None:
    assert list(iter_lines(b"")) == []
    assert list(iter_lines(b"{}\n")) == [b"{}"]
    assert list(iter_lines(b'{"a":1}\n{"b":2}\n')) == [b'{"a":1}', b'{"b":2}']


def test_compression_helpers_are_standard_gzip() -> None:
    data = b"log line\n" * 1000
    compressed = codec.compress(data)
    assert compressed[:2] == b"\x1f\x8b"
    assert gzip.decompress(compressed) == data
    assert codec.decompress(gzip.compress(data)) == data
    assert len(compressed) < len(data) // 4


def test_each_attempt_is_sealed_anew() -> None:
    encoder = Encoder(KEY)
    body = encoder.body(LINES, 5, date=DAY)
    first, retry = encoder.seal(body), encoder.seal(body, 3)
    one, two = parse_header(first), parse_header(retry)
    assert (one.attempt, two.attempt) == (0, 3)
    assert retry[6:8] == (3).to_bytes(2, "big")
    assert one.nonce != two.nonce and first[HEADER_SIZE:] != retry[HEADER_SIZE:]
    assert (one.sequence, one.writer_id) == (two.sequence, two.writer_id)
    decoder = Decoder([KEY])
    assert decoder.decode(one, first, DAY) == decoder.decode(two, retry, DAY) == b"\n".join(LINES) + b"\n"
    assert parse_header(encoder.seal(body, 10**6)).attempt == codec.MAX_ATTEMPT


def test_index_frames_are_flagged() -> None:
    encoder = Encoder(KEY, compression="none")
    data = parse_header(encoder.seal(encoder.body(LINES, 1, date=DAY)))
    index = parse_header(encoder.seal(encoder.body([b'{"blob":"x"}'], 2, date=DAY, index=True)))
    assert not data.is_index
    assert index.is_index and index.flags == codec.FLAG_INDEX
