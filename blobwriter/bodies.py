"""Request bodies into values: one JSON document, a JSON array (element by element), or NDJSON (line
by line). Integers are kept exactly or refused: one wider than 64 bits, NaN or infinity raises
EntryError naming the element or line. Other numbers become the nearest 64-bit double, as in any JSON
parser (0.1 is stored as 0.1's double; 1e-400, below the smallest double, as 0.0), and one beyond the
largest double (1e400) is refused, never stored as infinity."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

import orjson

from .entries import NOT_FINITE, TOO_DEEP
from .errors import EntryError

JSON_WHITESPACE = b" \t\n\r"  # RFC 8259's four: not the vertical tab or form feed bytes.strip() also takes
JSON_TYPES = {"application/json", ""}
NDJSON_TYPES = {"application/x-ndjson", "application/jsonl", "application/jsonlines", "application/x-jsonlines"}


def parse_body(body: bytes, content_type: str) -> Iterator[tuple[int, Any]]:
    """The (position, value) pairs of a request body, one at a time: index in a JSON array (0 for a
    lone object), line number for NDJSON. A malformed document or line raises EntryError naming it.

    Values are parsed as they are consumed, so admission can refuse a huge call (more entries or
    bytes than the queue can ever hold) before the whole body is turned into objects.
    """
    if content_type in NDJSON_TYPES:
        return _ndjson_values(body)
    start = len(body) - len(body.lstrip(JSON_WHITESPACE))
    if body[start:start + 1] == b"[":
        return _array_values(body)
    return _single_value(body)


def _single_value(body: bytes) -> Iterator[tuple[int, Any]]:
    yield 0, _loads(body, "")


def _ndjson_values(body: bytes) -> Iterator[tuple[int, Any]]:
    # Whether any line may hold an integer orjson cannot parse exactly, found for the whole body at
    # once (a line's digits never run into the next line's): usually none, and no line is looked at.
    long_runs = _has_long_run(body)
    number, start, end = 0, 0, len(body)
    while start < end:
        stop = body.find(b"\n", start)
        stop = end if stop < 0 else stop
        number += 1
        line = body[start:stop]
        start = stop + 1
        if line.strip():
            yield number, _loads(line, f" on line {number}", number, long_runs=long_runs)


def _has_long_run(text: bytes) -> bool:
    return _LONG_RUN in text.translate(_DIGITS_ONLY)


def _loads(text: bytes, where: str, position: int | None = None, *, long_runs: bool = True) -> Any:
    """orjson, except where it would turn an integer wider than 64 bits into a float: then the exact
    parser, so the entry is refused (it cannot be stored exactly) instead of silently changed.
    `where` names the text in messages (" on line 3"); `long_runs=False` says the caller found no run
    of 19 digits in a text that holds this one."""
    try:
        if not (long_runs and _has_long_run(text)):
            return orjson.loads(text)
        return _EXACT.decode(text.decode("utf-8"))
    except (orjson.JSONDecodeError, ValueError, RecursionError) as exc:
        if _too_deep(exc):
            raise _deep_entry(where, position) from None
        problem = str(exc)
        if "not valid UTF-8" in problem:  # orjson's words for any invalid UTF-8, surrogate or not
            try:
                text.decode("utf-8")
            except UnicodeDecodeError as bad:
                problem = _not_utf8(bad)
        elif "is infinity when parsed as double" in problem:  # orjson's words for 1e400
            problem = f"a number is infinity as a 64-bit double ({problem.split(': ', 1)[-1]}): {NOT_FINITE}"
        elif _NON_FINITE_LITERAL.search(text):  # say why NaN or Infinity is refused, not just where
            try:
                _EXACT.decode(text.decode("utf-8", "replace"))
            except (ValueError, RecursionError) as exact:
                if _too_deep(exact):
                    raise _deep_entry(where, position) from None
                problem = str(exact)
        raise EntryError(f"malformed JSON{where}: {problem}", position) from None


def _array_values(body: bytes) -> Iterator[tuple[int, Any]]:
    """The elements of a top-level JSON array, parsed one by one (json's C scanner, exact integers)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EntryError(f"malformed JSON: {_not_utf8(exc)}") from None
    index, i, end = 0, _skip(text, text.index("[") + 1), len(text)
    if i < end and text[i] == "]":
        i = _skip(text, i + 1)
    else:
        while True:
            try:
                value, i = _EXACT.raw_decode(text, i)
            except (ValueError, RecursionError) as exc:
                if _too_deep(exc):
                    raise _deep_entry(f" in array element {index}", index) from None
                raise EntryError(f"malformed JSON in array element {index}: {exc}", index) from None
            yield index, value
            index += 1
            i = _skip(text, i)
            if i < end and text[i] == ",":
                i = _skip(text, i + 1)
                continue
            if i < end and text[i] == "]":
                i = _skip(text, i + 1)
                break
            raise EntryError(f"malformed JSON: expected ',' or ']' after array element {index - 1} (char {i})")
    if i != end:
        raise EntryError(f"malformed JSON: unexpected data after the array (char {i})")


def _skip(text: str, i: int) -> int:
    return _WHITESPACE.match(text, i).end()  # type: ignore[union-attr]


def _finite(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        raise ValueError(f"number {literal[:40]} is infinity as a 64-bit double: {NOT_FINITE}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON: {NOT_FINITE}")


def _not_utf8(exc: UnicodeDecodeError) -> str:
    return f"not UTF-8 ({exc.reason} at byte {exc.start})"


def _too_deep(exc: BaseException) -> bool:
    """Whether a parser stopped at its own depth limit: orjson's (1,024 levels), or Python's recursion
    limit in the exact parser."""
    return isinstance(exc, RecursionError) or _DEPTH_LIMIT.search(str(exc)) is not None


def _deep_entry(where: str, position: int | None) -> EntryError:
    """Past a parser's depth limit, the entry is past admission's (entries.MAX_DEPTH, far lower): one
    limit, named as admission names it."""
    return EntryError(f"entry{where} has {TOO_DEEP}", position)


_EXACT = json.JSONDecoder(parse_float=_finite, parse_constant=_no_constant)
# orjson holds -2**63 .. 2**64-1 exactly and turns wider integers into floats. 2**64 has 20 digits and
# -2**63 19: integers of 18 digits or fewer fit, longer ones go to the exact parser (and are refused).
# A run of 19 digits may be an integer beyond what orjson parses exactly (it turns such integers into
# floats). Found by mapping every digit to 0 and everything else to a space (one C pass over the
# body) and searching for 19 zeros: ~10x cheaper than a regular expression over a 1.6 KB entry.
_DIGITS_ONLY = bytes(0x30 if 0x30 <= c <= 0x39 else 0x20 for c in range(256))
_LONG_RUN = b"0" * 19
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_NON_FINITE_LITERAL = re.compile(rb"NaN|Infinity")
_DEPTH_LIMIT = re.compile(r"(?i)depth limit|recursion limit")  # orjson's words (3.13: "depth limit exceeded")
