"""Tampered storage and secrets: `verify` names each damaged frame by blob and offset, `read` keeps
every intact entry, key problems are one clear line, and no key ever reaches a log or error message.

Tampering edits the bytes of a directory store (BLOBWRITER_STORAGE may be a directory path).
Swapped frames are covered by tests/test_index.py.
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from blobwriter.codec import HEADER_SIZE, MAGIC, Decoder, iter_lines
from blobwriter.config import Settings
from blobwriter.keys import keygen, parse_key
from blobwriter.layout import writer_blob
from blobwriter.writer import LogWriter
from tests.support.readback import frames_in
from tests.support.reliability import (
    make_entries,
    read_ids,
    record_figures,
    run_cli,
    serve_env,
)

pytestmark = pytest.mark.reliability

DAMAGED = re.compile(r"^DAMAGED (\S+) at offset (\d+): (.*)$")
DATES = [f"2026-04-0{n}" for n in range(1, 7)]


async def write_dates(root: Path, key: str, per_date: int = 100) -> tuple[dict[str, list[str]], dict[str, Path]]:
    """Write `per_date` entries to each of DATES (20 to a frame) through a real LogWriter; the ids of
    each date, and the writer's file of each date."""
    settings = Settings.from_values({"storage": str(root), "encryption_key": key, "batch_size": 20,
                                     "batch_timeout": 0.1})
    ids: dict[str, list[str]] = {}
    async with LogWriter(settings) as writer:
        for day in DATES:
            entries = make_entries(per_date, f"tamper{day}", day=day)
            ids[day] = [e["id"] for e in entries]
            await writer.write_many(entries)
            await writer.flush()
    return ids, {day: root / writer_blob("", day, writer.writer_id, 0) for day in DATES}


def frame_ids(data: bytes, key: str, day: str, blob: str) -> list[tuple[int, int, list[str]]]:
    """(offset, length, ids) of each frame of an intact blob (an index frame has no ids)."""
    decoder = Decoder([parse_key(key)])
    out = []
    for offset, header in frames_in(data):
        plaintext = decoder.decode(header, data[offset:offset + header.frame_length], blob=blob, date=day)
        ids = [] if header.is_index else [orjson.loads(line)["id"] for line in iter_lines(plaintext)]
        out.append((offset, header.frame_length, ids))
    return out


def name(path: Path) -> str:
    """A file's blob name: its path under the store's root (`{date}/{writer}.{part}.log`)."""
    return f"{path.parent.name}/{path.name}"


def noise(size: int) -> bytes:
    while MAGIC in (data := os.urandom(size)):
        pass
    return data


def problems(output: bytes) -> dict[str, list[tuple[int, str]]]:
    found: dict[str, list[tuple[int, str]]] = {}
    for line in output.decode().splitlines():
        if m := DAMAGED.match(line):
            found.setdefault(m.group(1), []).append((int(m.group(2)), m.group(3)))
    return found


async def test_tampering_is_reported_by_blob_and_offset_and_intact_entries_survive(tmp_path: Path) -> None:
    key = keygen()
    root = tmp_path / "store"
    ids, blobs = await write_dates(root, key)
    layout = {day: frame_ids(blobs[day].read_bytes(), key, day, name(blobs[day])) for day in DATES}
    for day in DATES:  # 5 data frames of 20 entries, then the writer's index frame
        assert [len(f[2]) for f in layout[day]] == [20] * 5 + [0], layout[day]
    expected: dict[str, tuple[int, str]] = {}
    destroyed: set[str] = set()

    def edit(day: str, change: Any) -> None:
        data = bytearray(blobs[day].read_bytes())
        blobs[day].write_bytes(bytes(change(data)))

    # 1. a flipped byte in a frame's ciphertext: authentication fails
    off, length, lost = layout[DATES[0]][2]
    edit(DATES[0], lambda d: d.__setitem__(off + HEADER_SIZE + 7, d[off + HEADER_SIZE + 7] ^ 0x01) or d)
    expected[DATES[0]], destroyed = (off, "authentication failed"), destroyed | set(lost)
    # 2. a flipped byte in a frame's header: its checksum fails
    off, length, lost = layout[DATES[1]][1]
    edit(DATES[1], lambda d: d.__setitem__(off + 30, d[off + 30] ^ 0x80) or d)
    expected[DATES[1]], destroyed = (off, "header checksum mismatch"), destroyed | set(lost)
    # 3. truncated: the blob ends halfway through its last data frame (the index frame after it is gone)
    off, length, lost = layout[DATES[2]][4]
    edit(DATES[2], lambda d: d[:off + length // 2])
    expected[DATES[2]], destroyed = (off, "truncated frame"), destroyed | set(lost)
    # 4. replayed: a copy of an existing frame appended again
    off, length, _ = layout[DATES[3]][1]
    end = blobs[DATES[3]].stat().st_size
    edit(DATES[3], lambda d: d + d[off:off + length])
    expected[DATES[3]] = (end, "replayed frame")
    # 5. garbage appended at the end
    end = blobs[DATES[4]].stat().st_size
    edit(DATES[4], lambda d: d + noise(1000))
    expected[DATES[4]] = (end, "bad magic")
    # 6. garbage appended, shorter than a frame header
    end = blobs[DATES[5]].stat().st_size
    edit(DATES[5], lambda d: d + noise(HEADER_SIZE - 20))
    expected[DATES[5]] = (end, "shorter than a header")

    env = serve_env(str(root), key)
    verify = run_cli(env, "verify", "--date", DATES[0], "--until", DATES[-1])
    found = problems(verify.stdout)
    back = read_ids(env, DATES[0], DATES[-1])
    everything = {i for day in DATES for i in ids[day]}
    record_figures(
        "7 tampering", load=f"{len(everything)} entries, 6 dates x 5 frames (directory store)",
        faults="byte flipped in a ciphertext and in a header, frame truncated, frame replayed, garbage appended "
               "(long and short)",
        accepted=len(everything), read_back=len(back.counts), lost=len(everything - set(back.counts)),
        duplicated=back.duplicated,
        notes=f"verify exit {verify.returncode}, {sum(map(len, found.values()))} problems reported, each at the "
              f"tampered offset; {len(destroyed)} entries were in the 3 destroyed frames",
    )
    assert verify.returncode == 1
    # exactly one problem per tampered blob, at the tampered offset, saying what is wrong
    assert {name: [o for o, _ in p] for name, p in found.items()} == {
        name(blobs[day]): [off] for day, (off, _) in expected.items()}
    for day, (_, what) in expected.items():
        assert what in found[name(blobs[day])][0][1]
    assert back.returncode == 1  # read reports damage too, on stderr, after printing every intact entry
    assert "verify" in back.stderr and "Traceback" not in back.stderr
    assert set(back.counts) == everything - destroyed and back.duplicated == 0


async def test_cut_and_inserted_bytes_move_later_frames_and_are_reported(tmp_path: Path) -> None:
    """Bytes cut from a middle frame and garbage inserted between frames: the damage is named at its
    offset, the frames it moved are named too (their index no longer matches), every other entry reads."""
    key = keygen()
    root = tmp_path / "store"
    ids, blobs = await write_dates(root, key)
    cut_blob, insert_blob = blobs[DATES[0]], blobs[DATES[1]]
    cut = frame_ids(cut_blob.read_bytes(), key, DATES[0], name(cut_blob))
    inserted = frame_ids(insert_blob.read_bytes(), key, DATES[1], name(insert_blob))
    off, length, lost = cut[2]
    data = cut_blob.read_bytes()
    cut_blob.write_bytes(data[:off + 100] + data[off + 200:])  # 100 bytes cut out of the third frame
    at = inserted[3][0]
    data = insert_blob.read_bytes()
    insert_blob.write_bytes(data[:at] + noise(300) + data[at:])  # garbage between the third and fourth

    env = serve_env(str(root), key)
    verify = run_cli(env, "verify", "--date", DATES[0], "--until", DATES[1])
    found = problems(verify.stdout)
    assert verify.returncode == 1
    assert found[name(cut_blob)][0][0] == off and found[name(cut_blob)][0][1].startswith("authentication failed")
    assert found[name(insert_blob)][0][0] == at and "bad magic" in found[name(insert_blob)][0][1]
    # the frames after the damage sit at other offsets than their index says
    moved_cut = {o for o, _, _ in cut[3:-1]}  # not the index frame itself: no index claims it
    moved_ins = {o for o, _, _ in inserted[4:-1]}  # the fourth frame's offset is the damage already named
    assert {o for o, m in found[name(cut_blob)][1:]} == moved_cut
    assert {o for o, m in found[name(insert_blob)][1:]} == moved_ins
    assert all("indexed frame missing" in m for o, m in found[name(cut_blob)][1:] + found[name(insert_blob)][1:])
    back = read_ids(env, DATES[0], DATES[1])
    assert set(back.counts) == set(ids[DATES[0]] + ids[DATES[1]]) - set(lost) and back.duplicated == 0


async def test_wrong_or_missing_key_is_one_clear_error(tmp_path: Path) -> None:
    key = keygen()
    root = tmp_path / "store"
    ids, _ = await write_dates(root, key, per_date=20)
    wrong = keygen()
    for command in ("read", "verify"):
        result = run_cli(serve_env(str(root), wrong), command, "--date", DATES[0], "--until", DATES[-1])
        err = result.stderr.decode()
        assert result.returncode == 2 and "Traceback" not in err, err
        assert "none of the configured keys can decrypt these logs" in err
        assert wrong not in err and key not in err
        # The ids the frames use and those of the configured keys, by setting: a wrong key told from a missing one.
        assert f"use key id(s) {parse_key(key).id.hex()}" in err
        assert f"the configured keys have key ids: encryption_key {parse_key(wrong).id.hex()})" in err

        env = serve_env(str(root), key)
        del env["BLOBWRITER_ENCRYPTION_KEY"]
        result = run_cli(env, command, "--date", DATES[0])
        err = result.stderr.decode()
        assert result.returncode == 2 and "Traceback" not in err, err
        assert "Config 'encryption_key' is not set" in err
    # after a rotation the old key still reads as a previous key
    back = read_ids(serve_env(str(root), wrong, BLOBWRITER_PREVIOUS_KEYS=key), DATES[0], DATES[-1])
    assert back.returncode == 0 and set(back.counts) == {i for day in DATES for i in ids[day]}


def forged_header(length: int) -> bytes:
    """68 bytes a CRC accepts (no MAC): a key id nobody has, and `length` bytes of ciphertext claimed."""
    from blobwriter.codec import HEADER

    head = HEADER.pack(MAGIC, 2, 1, 0, os.urandom(8), os.urandom(16), 1, 5, 100, bytes(12), length, 0)
    head = head[:HEADER_SIZE - 4]
    return head + zlib.crc32(head).to_bytes(4, "big")


def blob_client(settings: Settings, blob: str) -> Any:
    from azure.storage.blob import BlobClient

    return BlobClient.from_connection_string(settings.require("storage"), settings.container, blob)


def replace_blob(settings: Settings, blob: str, data: bytes) -> None:
    with blob_client(settings, blob) as client:
        client.delete_blob()
        client.create_append_blob()
        client.append_block(data)


async def six_frames(settings: Settings, day: str, name: str = "forged") -> tuple[list[dict[str, Any]], str, bytes]:
    """Thirty entries written as six frames of five to one blob: the entries, the blob and its bytes."""
    entries = make_entries(30, name, day=day)
    async with LogWriter(settings) as writer:
        for start in range(0, 30, 5):
            await writer.write_many(entries[start:start + 5], wait=True)
    blob = writer_blob("", day, writer.writer_id, 0)
    with blob_client(settings, blob) as client:
        return entries, blob, client.download_blob().readall()


def read_back(settings: Settings, day: str, entries: list[dict[str, Any]], blob: str) -> list[tuple[int, str]]:
    """`blobwriter read` of the day (a subprocess): every entry exactly once, and what it reported of `blob`."""
    env = serve_env(settings.require("storage"), settings.encryption_key.to_text(), settings.container)
    back = read_ids(env, day)
    assert back.returncode == 1 and dict(back.counts) == {e["id"]: 1 for e in entries}, back.stderr
    return problems(back.stderr.encode())[blob]


async def test_a_forged_header_with_an_unknown_key_hides_no_genuine_frame(make_settings: Any) -> None:
    """A CRC is no MAC: 68 bytes with a valid CRC, a key id nobody has and a length that claims the frames
    after it made `read` skip those genuine frames as one "no configured key" frame (QA round 9, security
    F10). Its length is trusted only when no frame header lies inside it; a genuine frame of another key
    is still skipped whole and named by its key id. Real Azurite, the CLI reading."""
    from blobwriter.codec import key_id

    day = "2026-04-09"
    settings, other = make_settings(batch_size=5), make_settings(encryption_key=keygen(), batch_size=5)
    entries, blob, data = await six_frames(settings, day)
    _, strange, foreign = await six_frames(other, day, "stranger")
    with blob_client(other, strange) as client:
        client.delete_blob()
    spans = list(frames_in(data))
    genuine = foreign[:next(iter(frames_in(foreign)))[1].frame_length]  # the stranger's first frame, whole
    at, cover_end = spans[2][0], spans[5][0]  # the forged header claims frames 3, 4 and 5 as its ciphertext
    forged = forged_header(cover_end - at)
    replace_blob(settings, blob, data[:at] + forged + data[at:spans[5][0]] + genuine + data[spans[5][0]:])
    reported = read_back(settings, day, entries, blob)
    assert [offset for offset, _ in reported] == [at, spans[5][0] + HEADER_SIZE], reported
    assert "not a frame" in reported[0][1] and "covers another frame's header" in reported[0][1]
    assert reported[1][1] == f"no configured key has key id {key_id(other.encryption_key).hex()}"


@pytest.mark.parametrize("covered", [1, 3, 4, 5, 40, HEADER_SIZE - 1])
async def test_a_forged_header_that_claims_only_the_start_of_the_next_header_hides_no_frame(
        make_settings: Any, covered: int) -> None:
    """The rest of F10 (QA round 9): a forged header whose length ends inside the next genuine frame's
    header (its first `covered` bytes, after random bytes up to the 16 of a tag) held no whole header, so
    its length was trusted and that genuine frame was skipped with it. A frame of a key not configured
    is now found only where a valid header (or the end of the blob) follows it. Real Azurite, the CLI
    reading: every entry comes back; the forged bytes are the one damage."""
    day = "2026-04-10"
    settings = make_settings(batch_size=5)
    entries, blob, data = await six_frames(settings, day)
    at = frames_in(data)[3][0]
    filler = os.urandom(max(0, 16 - covered)).replace(MAGIC[:1], b"\0")
    replace_blob(settings, blob, data[:at] + forged_header(len(filler) + covered) + filler + data[at:])
    reported = read_back(settings, day, entries, blob)
    assert [offset for offset, _ in reported] == [at], reported
    assert "not a frame" in reported[0][1] and "does not end where a frame does" in reported[0][1]


async def test_a_forged_header_at_the_end_of_a_blob_claiming_part_of_it_is_damage(make_settings: Any) -> None:
    """The same forged header as the blob's last bytes but a few: its length leaves bytes after it that
    are not a header. The genuine frames before it all read; the forged bytes are reported."""
    day = "2026-04-11"
    settings = make_settings(batch_size=5)
    entries, blob, data = await six_frames(settings, day)
    replace_blob(settings, blob, data + forged_header(16) + os.urandom(16 + 30).replace(MAGIC[:1], b"\0"))
    reported = read_back(settings, day, entries, blob)
    assert [offset for offset, _ in reported] == [len(data)], reported
    assert "does not end where a frame does" in reported[0][1]
