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
(`request.messages.*.content`). A path that does not exist in an entry changes nothing. Keys
that contain a dot cannot be named. The caller's objects are never modified: what changes is
copied along the changed paths only.

A request (or a `LogWriter.write` call) may narrow the configured controls, never widen them:
`Privacy.narrowed` adds paths, lowers the truncation limit, or turns `metadata_only` on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

BODY_FIELDS = ("request", "response")
MASK = "[masked]"
WILDCARD = "*"
TIMESTAMP = "timestamp"

Path = tuple[str, ...]


def parse_path(text: str) -> Path:
    """`a.b.*.c` as its segments; ValueError (with the reason) for an empty segment."""
    segments = tuple(text.strip().split("."))
    if not text.strip() or any(not s.strip() or s != s.strip() for s in segments):
        raise ValueError("a path is dot-separated field names (or '*'), without empty segments or spaces around "
                         "them, e.g. request.messages.*.content")
    return segments


def truncation_marker(original_bytes: int) -> str:
    return f"…[truncated: {original_bytes} bytes]"


@dataclass(frozen=True)
class Privacy:
    """Which controls apply: paths to drop and to mask, a truncation limit, metadata only."""

    drop: tuple[str, ...] = ()
    mask: tuple[str, ...] = ()
    truncate_bytes: int | None = None
    metadata_only: bool = False
    _drop: tuple[Path, ...] = field(init=False, repr=False, compare=False)
    _mask: tuple[Path, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("drop", "mask"):  # a list is taken as a tuple; one string would be taken letter by letter
            paths = getattr(self, name)
            if isinstance(paths, str):
                raise TypeError(f"Privacy({name}=...) takes a list of paths, e.g. {name}=[{paths!r}], not one string")
            object.__setattr__(self, name, tuple(paths))
        for path in (*self.drop, *self.mask):
            if parse_path(path)[0] in (TIMESTAMP, WILDCARD):
                raise ValueError(f"path {path!r}: 'timestamp' decides the entry's blob and is always kept")
        if self.truncate_bytes is not None and self.truncate_bytes < 1:
            raise ValueError("truncate_bytes must be at least 1")
        object.__setattr__(self, "_drop", tuple(parse_path(p) for p in self.drop))
        object.__setattr__(self, "_mask", tuple(parse_path(p) for p in self.mask))

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


def _edit(value: Any, path: Path, depth: int, *, drop: bool) -> Any:
    """`value` with the field(s) at path[depth:] dropped or masked; copies only what changes."""
    segment, last = path[depth], depth == len(path) - 1
    if isinstance(value, Mapping):
        keys = list(value) if segment == WILDCARD else ([segment] if segment in value else [])
        if not keys:
            return value
        copy = dict(value)
        for key in keys:
            if last:
                if drop:
                    del copy[key]
                else:
                    copy[key] = MASK
            else:
                copy[key] = _edit(value[key], path, depth + 1, drop=drop)
        return copy
    if isinstance(value, list | tuple) and segment == WILDCARD:
        if last:
            return [] if drop else [MASK] * len(value)
        return [_edit(item, path, depth + 1, drop=drop) for item in value]
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
