"""Privacy controls: what of an entry is kept, applied at admission, before anything is encrypted.

Four controls, configured in settings (`drop_fields`, `mask_fields`, `truncate_bytes`,
`metadata_only`) and applied in this order:

1. `metadata_only` removes the request and response bodies: the top-level fields named in
   `BODY_FIELDS` (`request`, `response`: the bodies as the API Management kit captures them).
   Everything else (user, endpoint, deployment, tokens, cost, duration, status, error) is kept.
2. `drop_fields` removes the fields at the given dotted paths.
3. `mask_fields` replaces the values at the given paths with `MASK` (whatever their type).
4. `truncate_bytes` cuts every string value longer than that many UTF-8 bytes to that many
   bytes (at a character boundary) and appends a marker with the original size.

A path is dot-separated keys; `*` matches every item of a list and every member of an object
(`request.messages.*.content`), a number one item of a list (`request.messages.0.content`). Keys
that themselves contain dots, as OpenTelemetry attributes do, are found as `stats` finds them:
`attributes.gen_ai.input.messages` names the key `gen_ai.input.messages` of `attributes` as well
as nested objects `gen_ai` > `input` > `messages`; a control applies to every match. A path that
does not exist in an entry changes nothing. The caller's objects are never modified: what changes
is copied along the changed paths only.

A request (or a `LogWriter.write` call) may narrow the configured controls, never widen them:
`Privacy.narrowed` adds paths, lowers the truncation limit, or turns `metadata_only` on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

BODY_FIELDS = ("request", "response")
MASK = "[masked]"
WILDCARD = "*"
TIMESTAMP = "timestamp"

Path = tuple[str, ...]
# A path compiled for matching: for each segment position, the segment, and the keys with dots an object may
# hold there (the segment joined by dots with those after it, none with a wildcard in it) and where each leads.
Steps = tuple[tuple[str, tuple[tuple[str, int], ...]], ...]


def parse_path(text: str) -> Path:
    """`a.b.*.c` as its segments; ValueError (with the reason) for an empty segment."""
    segments = tuple(text.strip().split("."))
    if not text.strip() or any(not s.strip() or s != s.strip() for s in segments):
        raise ValueError("a path is dot-separated field names (or '*'), without empty segments or spaces around "
                         "them, e.g. request.messages.*.content")
    return segments


def check_kept(path: str, received_at_field: str | None = None) -> None:
    """ValueError (with the reason) unless `path` may be dropped or masked: the one rule for the settings, a
    request's query parameters and a `write()` call. It may not start with `timestamp` (it decides the
    entry's blob), with the `received_at_field` (the server stamps it after the controls, so a control there
    would only seem to work) or with `*` (every field, those too)."""
    if parse_path(path)[0] in (TIMESTAMP, WILDCARD, received_at_field):
        stamp = f" ({received_at_field!r})" if received_at_field else ""
        raise ValueError(f"'timestamp' (it decides the entry's blob) and received_at_field{stamp} are always kept; "
                         "a path cannot start with them or with '*'")


def check_paths(paths: Iterable[str], received_at_field: str | None = None) -> None:
    """ValueError naming the first of `paths` that `check_kept` refuses."""
    for path in paths:
        try:
            check_kept(path, received_at_field)
        except ValueError as exc:
            raise ValueError(f"path {path!r}: {exc}") from None


def compile_path(path: Path) -> Steps:
    """The keys each position of `path` may match: `a.b.c` at 0 is `a`, `a.b` or `a.b.c`."""
    steps = []
    for start in range(len(path)):
        dotted = []
        for end in range(start + 2, len(path) + 1):
            if WILDCARD in path[start:end]:
                break
            dotted.append((".".join(path[start:end]), end))
        steps.append((path[start], tuple(dotted)))
    return tuple(steps)


def truncation_marker(original_bytes: int) -> str:
    return f"…[truncated: {original_bytes} bytes]"


@dataclass(frozen=True)
class Privacy:
    """Which controls apply: paths to drop and to mask, a truncation limit, metadata only."""

    drop: tuple[str, ...] = ()
    mask: tuple[str, ...] = ()
    truncate_bytes: int | None = None
    metadata_only: bool = False
    _drop: tuple[Steps, ...] = field(init=False, repr=False, compare=False)
    _mask: tuple[Steps, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("drop", "mask"):  # a list is taken as a tuple; one string would be taken letter by letter
            paths = getattr(self, name)
            if isinstance(paths, str):
                raise TypeError(f"Privacy({name}=...) takes a list of paths, e.g. {name}=[{paths!r}], not one string")
            object.__setattr__(self, name, tuple(paths))
        check_paths((*self.drop, *self.mask))
        if self.truncate_bytes is not None and self.truncate_bytes < 1:
            raise ValueError("truncate_bytes must be at least 1")
        object.__setattr__(self, "_drop", tuple(compile_path(parse_path(p)) for p in self.drop))
        object.__setattr__(self, "_mask", tuple(compile_path(parse_path(p)) for p in self.mask))

    @property
    def active(self) -> bool:
        return bool(self.drop or self.mask or self.truncate_bytes is not None or self.metadata_only)

    def narrowed(self, other: Privacy | None) -> Privacy:
        """These controls plus `other`'s: more paths, the lower limit, metadata only if either says so."""
        if other is None:
            return self
        if not isinstance(other, Privacy):
            raise TypeError(f"privacy must be a Privacy, not {type(other).__name__}: from blobwriter import Privacy; "
                            "privacy=Privacy(drop=[...], mask=[...], truncate_bytes=N, metadata_only=True) "
                            "(any of them)")
        if not other.active:
            return self
        limits = [n for n in (self.truncate_bytes, other.truncate_bytes) if n is not None]
        return Privacy(drop=tuple(dict.fromkeys(self.drop + other.drop)),
                       mask=tuple(dict.fromkeys(self.mask + other.mask)),
                       truncate_bytes=min(limits) if limits else None,
                       metadata_only=self.metadata_only or other.metadata_only)

    def apply(self, entry: Mapping[str, Any], keep: str | None = None) -> Mapping[str, Any]:
        """The entry as it may be stored (the same object if nothing changes). `keep` names a top-level
        field that truncation leaves alone besides `timestamp` (the received_at field)."""
        value: Any = entry
        if self.metadata_only and any(field in value for field in BODY_FIELDS):
            value = {k: v for k, v in value.items() if k not in BODY_FIELDS}
        for path in self._drop:
            value = _edit(value, path, 0, drop=True)
        for path in self._mask:
            value = _edit(value, path, 0, drop=False)
        if self.truncate_bytes is not None:
            value = _truncate_entry(value, self.truncate_bytes, keep)
        return value


NO_PRIVACY = Privacy()


def _edit(value: Any, path: Steps, depth: int, *, drop: bool) -> Any:
    """`value` with the field(s) at path[depth:] dropped or masked; copies only what changes."""
    segment, dotted = path[depth]
    if isinstance(value, Mapping):
        if segment == WILDCARD:
            found = [(key, depth + 1) for key in value]
        else:
            found = [(segment, depth + 1)] if segment in value else []
            for key, end in dotted:  # keys with dots (OpenTelemetry attributes): rarely there
                if key in value:
                    found.append((key, end))
        if not found:
            return value
        copy = dict(value)
        for key, end in found:
            if end == len(path):
                if drop:
                    copy.pop(key, None)
                else:
                    copy[key] = MASK
            elif key in copy:
                copy[key] = _edit(value[key], path, end, drop=drop)
        return copy
    if isinstance(value, list | tuple):
        if segment == WILDCARD:
            if depth == len(path) - 1:
                return [] if drop else [MASK] * len(value)
            return [_edit(item, path, depth + 1, drop=drop) for item in value]
        if segment.isascii() and segment.isdigit() and int(segment) < len(value):  # one item, as stats reads it
            items, index = list(value), int(segment)
            if depth < len(path) - 1:
                items[index] = _edit(items[index], path, depth + 1, drop=drop)
            elif drop:
                del items[index]
            else:
                items[index] = MASK
            return items
    return value


def _truncate_entry(entry: Any, limit: int, keep: str | None) -> Any:
    changed = False
    copy = {}
    for key, item in entry.items():
        new = item if key == TIMESTAMP or key == keep else _truncate(item, limit)
        changed = changed or new is not item
        copy[key] = new
    return copy if changed else entry


def _truncate(value: Any, limit: int) -> Any:
    """`value` with every string over `limit` UTF-8 bytes cut and marked; the same object if none is."""
    kind = type(value)
    if kind is str or isinstance(value, str):
        if len(value) * 4 <= limit:  # at most 4 bytes a character: certainly short enough
            return value
        encoded = value.encode("utf-8", "surrogatepass")
        if len(encoded) <= limit:
            return value
        return encoded[:limit].decode("utf-8", "ignore") + truncation_marker(len(encoded))
    if kind is dict or isinstance(value, Mapping):
        copy = None
        for key, item in value.items():
            new = _truncate(item, limit)
            if new is not item:
                if copy is None:
                    copy = dict(value)
                copy[key] = new
        return value if copy is None else copy
    if kind is list or kind is tuple:
        items = None
        for index, item in enumerate(value):
            new = _truncate(item, limit)
            if new is not item:
                if items is None:
                    items = list(value)
                items[index] = new
        return value if items is None else items
    return value
