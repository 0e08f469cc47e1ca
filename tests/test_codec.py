"""The frame format: header layout, encryption, compression, and what a damaged frame raises."""

from __future__ import annotations

import gzip
import hashlib
import hmac
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


BLOB = f"gw/{DAY}/{'ab' * 16}.0000.log"


def seal(encoder: Encoder, lines: list[bytes], sequence: int, attempt: int = 0, blob: str = BLOB) -> bytes:
    return encoder.encode(lines, sequence, blob=blob, date=DAY, attempt=attempt)[0]


def decode(decoder: Decoder, frame: bytes | bytearray, blob: str = BLOB, date: str = DAY) -> bytes:
    return decoder.decode(parse_header(frame), frame, blob=blob, date=date)


def writer_key_of(key: SecretKey, writer_id: bytes) -> bytes:
    """HKDF-SHA256 as FORMAT.md states it, computed here independently of blobwriter.keys."""
    prk = hmac.new(b"\0" * 32, key.raw, hashlib.sha256).digest()  # extract, with no salt
    return hmac.new(prk, b"blobwriter writer key v2\0" + writer_id + b"\x01", hashlib.sha256).digest()  # expand


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_round_trip(compression: str, version: int) -> None:
    encoder = Encoder(KEY, compression=compression, version=version)
    frame, raw_length = encoder.encode(LINES, 7, blob=BLOB, date=DAY)
    assert raw_length == len(b"\n".join(LINES) + b"\n")
    header = parse_header(frame)
    assert header.frame_length == len(frame) and header.version == version
    assert (header.sequence, header.entries, header.plaintext_length) == (7, len(LINES), raw_length)
    assert header.writer_id == encoder.writer_id
    assert list(iter_lines(decode(Decoder([OTHER, KEY]), frame))) == LINES


def test_header_layout_and_version_2_crypto() -> None:
    writer_id = bytes(range(16))
    frame, raw_length = Encoder(KEY, writer_id=writer_id).encode(LINES, 0x0102030405060708, blob=BLOB, date=DAY,
                                                                 attempt=0x0304)
    assert HEADER_SIZE == 68
    assert frame[0:4] == MAGIC == b"BLWF"
    assert frame[4] == 2  # version
    assert frame[5] == codec.FLAG_GZIP
    assert frame[6:8] == b"\x03\x04"  # the append attempt
    assert frame[8:16] == key_id(KEY)
    assert frame[16:32] == writer_id
    assert frame[32:40] == bytes.fromhex("0102030405060708")  # big-endian sequence
    assert int.from_bytes(frame[40:44], "big") == len(LINES)
    assert int.from_bytes(frame[44:48], "big") == raw_length
    nonce = frame[48:60]
    assert nonce == bytes.fromhex("0102030405060708") + b"\x03\x04" + b"\0\0"  # sequence, attempt, zeros
    ciphertext_length = int.from_bytes(frame[60:64], "big")
    assert ciphertext_length == len(frame) - HEADER_SIZE
    assert int.from_bytes(frame[64:68], "big") == zlib.crc32(frame[:64])
    # Independently of the Decoder: AES-256-GCM under HKDF(key, writer id), with the header and the
    # UTF-8 blob name as associated data, then RFC 1952 gzip.
    aead = AESGCM(writer_key_of(KEY, writer_id))
    body = aead.decrypt(nonce, frame[HEADER_SIZE:], frame[:HEADER_SIZE] + BLOB.encode())
    assert gzip.decompress(body) == b"\n".join(LINES) + b"\n"


def test_version_1_is_still_read() -> None:
    frame = seal(Encoder(KEY, version=1), LINES, 3)
    assert frame[4] == 1
    body = AESGCM(KEY.raw).decrypt(frame[48:60], frame[HEADER_SIZE:], frame[:HEADER_SIZE] + DAY.encode())
    assert gzip.decompress(body) == b"\n".join(LINES) + b"\n"
    assert list(iter_lines(decode(Decoder([KEY]), frame, blob="anything: v1 binds the date"))) == LINES
    with pytest.raises(FrameError, match="not written for 2026-05-18"):
        decode(Decoder([KEY]), frame, date="2026-05-18")


def test_uncompressed_flag_and_payload() -> None:
    writer_id = os.urandom(16)
    frame = seal(Encoder(KEY, compression="none", writer_id=writer_id), LINES, 1)
    assert frame[5] == 0
    body = AESGCM(writer_key_of(KEY, writer_id)).decrypt(frame[48:60], frame[HEADER_SIZE:],
                                                         frame[:HEADER_SIZE] + BLOB.encode())
    assert body == b"\n".join(LINES) + b"\n"


def test_key_id_is_a_fingerprint() -> None:
    assert key_id(KEY) == hashlib.sha256(KEY_ID_CONTEXT + KEY.raw).digest()[:8]
    assert key_id(KEY) != key_id(OTHER)
    assert len(key_id(KEY)) == 8


def test_nonces_never_repeat_under_one_key_and_writer_ids_differ() -> None:
    """Version 2: each writer has a key of its own, and within it a (sequence, attempt) is one nonce."""
    encoder = Encoder(KEY)
    nonces = {parse_header(seal(encoder, LINES[:1], n, attempt)).nonce for n in range(100) for attempt in range(3)}
    assert len(nonces) == 300
    a, b = Encoder(KEY), Encoder(KEY)
    assert a.writer_id != b.writer_id
    assert writer_key_of(KEY, a.writer_id) != writer_key_of(KEY, b.writer_id)
    with pytest.raises(ValueError, match="out of range"):
        a.seal(a.body(LINES, 1, date=DAY), codec.MAX_ATTEMPT + 1, blob=BLOB)  # never wraps round to a used nonce


def test_a_frame_moved_to_another_blob_fails_authentication() -> None:
    """Version 2 binds the full blob name (prefix, date, writer, part), not only the date."""
    frame = seal(Encoder(KEY), LINES, 1)
    for elsewhere in (BLOB.replace("gw/", "other/"), BLOB.replace(".0000.", ".0001."),
                      BLOB.replace("ab" * 16, "cd" * 16), "gw/2026-05-17.0000.log"):
        with pytest.raises(FrameError, match="not written for blob"):
            decode(Decoder([KEY]), frame, blob=elsewhere)


def test_a_nonce_that_does_not_match_sequence_and_attempt_is_refused() -> None:
    frame = bytearray(seal(Encoder(KEY), LINES, 1))
    frame[48:60] = os.urandom(12)
    frame[:HEADER_SIZE] = with_crc(bytes(frame[:HEADER_SIZE]))
    with pytest.raises(FrameError, match="nonce does not match"):
        decode(Decoder([KEY]), frame)


def test_wrong_key_is_unknown_key_error() -> None:
    frame = seal(Encoder(KEY), LINES, 1)
    with pytest.raises(UnknownKeyError, match=key_id(KEY).hex()):
        decode(Decoder([OTHER]), frame)
    assert issubclass(UnknownKeyError, FrameError)


def test_altered_ciphertext_byte_fails_authentication() -> None:
    frame = seal(Encoder(KEY), LINES, 1)
    for position in (HEADER_SIZE, HEADER_SIZE + (len(frame) - HEADER_SIZE) // 2, len(frame) - 1):
        altered = bytearray(frame)
        altered[position] ^= 0x01
        with pytest.raises(FrameError, match="authentication failed"):
            decode(Decoder([KEY]), altered)  # the header itself is intact


def test_altered_header_byte_fails_crc() -> None:
    frame = seal(Encoder(KEY), LINES, 1)
    for position in range(4, HEADER_SIZE):
        altered = bytearray(frame)
        altered[position] ^= 0x80
        with pytest.raises(FrameError):
            parse_header(altered)


def test_header_is_authenticated_even_with_fixed_crc() -> None:
    frame = seal(Encoder(KEY), LINES, 1)
    forged = bytearray(frame)
    forged[40:44] = (len(LINES) + 1).to_bytes(4, "big")  # claim one more entry
    forged[:HEADER_SIZE] = with_crc(bytes(forged[:HEADER_SIZE]))
    assert parse_header(forged).entries == len(LINES) + 1  # passes the CRC
    with pytest.raises(FrameError, match="authentication failed"):
        decode(Decoder([KEY]), forged)


def test_bad_magic_version_length() -> None:
    frame = seal(Encoder(KEY), LINES, 1)
    with pytest.raises(FrameError, match="bad magic"):
        parse_header(b"XXXX" + frame[4:])
    with pytest.raises(FrameError, match="truncated header"):
        parse_header(frame[: HEADER_SIZE - 1])
    version_3 = bytearray(frame[:HEADER_SIZE])
    version_3[4] = 3
    with pytest.raises(FrameError, match="unsupported frame version 3"):
        parse_header(with_crc(bytes(version_3)))
    for length in (codec.TAG_SIZE - 1, codec.MAX_FRAME_BYTES):
        huge = bytearray(frame[:HEADER_SIZE])
        huge[60:64] = length.to_bytes(4, "big")
        with pytest.raises(FrameError, match="implausible ciphertext length"):
            parse_header(with_crc(bytes(huge)))


def test_parse_header_at_offset() -> None:
    first, second = seal(Encoder(KEY), LINES[:3], 1), seal(Encoder(KEY), LINES[3:5], 2)
    stream = b"junk" + first + second
    one = parse_header(stream, 4)
    two = parse_header(memoryview(stream), 4 + one.frame_length)
    assert (one.sequence, one.entries, two.sequence, two.entries) == (1, 3, 2, 2)


def test_payload_length_mismatch_detected() -> None:
    """An authentic frame whose plaintext length disagrees with the header is still rejected."""
    nonce = os.urandom(12)
    body = b'{"a":1}\n'
    head = codec._pack_header(1, 0, 0, key_id(KEY), bytes(16), 1, 1, len(body) + 5, nonce, len(body) + 16)
    frame = head + AESGCM(KEY.raw).encrypt(nonce, body, head + DAY.encode())
    with pytest.raises(FrameError, match="length does not match"):
        decode(Decoder([KEY]), frame)


def test_authentic_but_undecompressable_payload() -> None:
    nonce = os.urandom(12)
    body = b"not gzip at all"
    head = codec._pack_header(1, codec.FLAG_GZIP, 0, key_id(KEY), bytes(16), 1, 1, 10, nonce, len(body) + 16)
    frame = head + AESGCM(KEY.raw).encrypt(nonce, body, head + DAY.encode())
    with pytest.raises(FrameError, match="does not decompress"):
        decode(Decoder([KEY]), frame)


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
    first, retry = encoder.seal(body, blob=BLOB), encoder.seal(body, 3, blob=BLOB)
    one, two = parse_header(first), parse_header(retry)
    assert (one.attempt, two.attempt) == (0, 3)
    assert retry[6:8] == (3).to_bytes(2, "big")
    assert one.nonce != two.nonce and first[HEADER_SIZE:] != retry[HEADER_SIZE:]
    assert (one.sequence, one.writer_id) == (two.sequence, two.writer_id)
    decoder = Decoder([KEY])
    assert decode(decoder, first) == decode(decoder, retry) == b"\n".join(LINES) + b"\n"


def test_index_frames_are_flagged() -> None:
    encoder = Encoder(KEY, compression="none")
    data = parse_header(encoder.seal(encoder.body(LINES, 1, date=DAY), blob=BLOB))
    index = parse_header(encoder.seal(encoder.body([b'{"blob":"x"}'], 2, date=DAY, index=True), blob=BLOB))
    assert not data.is_index
    assert index.is_index and index.flags == codec.FLAG_INDEX


def test_an_encoder_refuses_to_seal_in_a_forked_child() -> None:
    """A writer made before a fork would share its writer id, sequences and nonces with the child."""
    encoder = Encoder(KEY)
    body = encoder.body(LINES, 1, date=DAY)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what sealing did, then leave without running pytest's teardown
        try:
            encoder.seal(body, blob=BLOB)
            os.write(write, b"sealed")
        except RuntimeError as exc:
            os.write(write, str(exc).encode()[:200])
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    said = os.read(read, 300).decode()
    os.close(read)
    assert "another process" in said
    assert encoder.seal(body, blob=BLOB)  # the parent goes on


def forged_header(claimed: int) -> bytes:
    """68 bytes a CRC accepts (a CRC is no MAC): a key id nobody has, `claimed` bytes of ciphertext."""
    head = codec.HEADER.pack(MAGIC, 2, 1, 0, os.urandom(8), os.urandom(16), 1, 5, 100, bytes(12), claimed, 0)
    return with_crc(head)


def scan(data: bytes, known: list[SecretKey]) -> list[tuple[str, int, str]]:
    """What a FrameScanner given the keys' ids reports of `data` fed in 100-byte chunks."""
    scanner = codec.FrameScanner(known=[key_id(k) for k in known])
    seen: list[tuple[str, int, str]] = []
    for start in range(0, len(data), 100):
        scanner.feed(data[start:start + 100])
        seen += [(type(item).__name__, item.offset, getattr(item, "message", "")) for item in scanner]
    scanner.finish()
    seen += [(type(item).__name__, item.offset, getattr(item, "message", "")) for item in scanner]
    return seen


def test_the_scanner_trusts_an_unknown_keys_length_only_where_it_is_a_frames() -> None:
    """One rule, in the scanner (FORMAT.md, reading step 4): a frame of a key not configured is found
    only if it ends where a frame does and holds no valid header. A genuine one of another key is found
    whole; 68 forged bytes claiming a genuine frame as their ciphertext are damage, and the frame they
    claimed is found (the rule's second half used to live in the decoding step instead)."""
    encoder, stranger = Encoder(KEY), Encoder(OTHER)
    first, second, third = (seal(encoder, LINES, n) for n in range(3))
    foreign = seal(stranger, LINES, 0)
    genuine = first + foreign + second
    assert scan(genuine, [KEY]) == [("Found", 0, ""), ("Found", len(first), ""),
                                   ("Found", len(first) + len(foreign), "")]
    forged = first + forged_header(len(second)) + second + third  # ends where `third` starts: a frame's end
    at = len(first)
    assert scan(forged, [KEY]) == [
        ("Found", 0, ""),
        ("Damage", at, "not a frame: its header names no configured key and a length that covers another "
                       f"frame's header, {HEADER_SIZE} bytes on (forged or damaged)"),
        ("Found", at + HEADER_SIZE, ""), ("Found", at + HEADER_SIZE + len(second), "")]
    cut = first + forged_header(40) + second  # ends 40 bytes into `second`'s header
    assert scan(cut, [KEY])[1:] == [
        ("Damage", at, "not a frame: its header names no configured key and a length that does not end where "
                       "a frame does (forged or damaged)"), ("Found", at + HEADER_SIZE, "")]
