"""Where `stats` finds things in an entry: dotted paths, the field map and its presets.

A path is dotted (`request.model`, `response.usage.prompt_tokens`); a list element is a number
(`response.choices.0.finish_reason`); a key that itself contains dots, as OpenTelemetry attribute
names do (`{"gen_ai.usage.input_tokens": 12}`), is found too. The field map says which paths feed
each measure (several alternatives, the first non-null wins, optionally scaled: `response_time*1000`)
and may name aliases for `--by`/`--where` (`user=metadata.user_api_key_user_id`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final

import orjson

from ..errors import ConfigError

# What the measures are computed from (docs/SCHEMA.md explains each).
SOURCES: Final = ("prompt_tokens", "completion_tokens", "total_tokens", "cost", "duration_ms", "status_code", "error")
# Computed from the entry's `timestamp` (UTC), never mapped.
TIME_KEYS: Final = ("day", "hour")

_MISSING: Final = object()

# Entries parsed by pysimdjson (stats, when it is installed: a lazy parser that builds only what is read)
# are Object and Array proxies; they are read like dicts and lists, and made plain (plain()) before
# they are kept or shown.
OBJECTS: tuple[type, ...] = (dict,)
ARRAYS: tuple[type, ...] = (list,)
_simdjson: ModuleType | None
try:
    import simdjson

    _simdjson = simdjson
    OBJECTS, ARRAYS = (dict, simdjson.Object), (list, simdjson.Array)
except ImportError:  # pragma: no cover - part of the query extra; orjson alone gives the same answers
    _simdjson = None


def simdjson_parser() -> Any:
    """A pysimdjson parser, or None without it."""
    return _simdjson.Parser() if _simdjson is not None else None


def plain(value: Any) -> Any:
    """A parsed value as plain Python (dicts and lists), whichever parser made it."""
    kind = type(value)
    if kind is dict or kind is list or (kind not in OBJECTS and kind not in ARRAYS):
        return value
    return value.as_dict() if kind in OBJECTS else value.as_list()
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


class FieldPath:
    """One dotted path, compiled once, looked up in many entries."""

    __slots__ = ("joins", "segments", "text")

    def __init__(self, text: str) -> None:
        text = text.strip()
        segments = tuple(text.split("."))
        if not text or any(not s for s in segments):
            raise ValueError(f"{text!r} is not a dotted field path (e.g. request.model)")
        self.text = text
        self.segments = segments
        # For each start, the keys segments[start:end] joined with dots, end ascending: what _lookup tries.
        self.joins = tuple(tuple((end, ".".join(segments[start:end])) for end in range(start + 1, len(segments) + 1))
                           for start in range(len(segments)))

    def __repr__(self) -> str:
        return f"FieldPath({self.text!r})"

    def get(self, entry: Any) -> Any:
        """The value at this path, or None if any step is missing (what _lookup finds)."""
        current = entry
        for depth, segment in enumerate(self.segments):  # the common case: plain nested objects
            kind = type(current)
            if kind in OBJECTS and segment in current:
                current = current[segment]
            elif kind in ARRAYS and segment.isdigit() and int(segment) < len(current):
                current = current[int(segment)]
            else:
                found = self._after_walk(entry, depth)
                return None if found is _MISSING else found
        return current

    def from_top_keys(self, entry: Any, keys: Any) -> Any:
        """self.get(entry) when the first step leads to no object or list (it is missing, null or a
        scalar): only a key with dots at the top can lead on; `keys` are the entry's (_keys)."""
        found = self._through_dotted_keys(entry, keys, 0)
        return None if found is _MISSING else found

    def _through_dotted_keys(self, value: Any, keys: Any, start: int) -> Any:
        """What the keys with dots of the object `value` (reached at segment `start`; `keys` are its
        _keys) lead to, in _lookup's order; _MISSING if none does."""
        for end, key in self.joins[start][1:]:
            if key in keys:
                found = _lookup(value[key], self, end)
                if found is not _MISSING:
                    return found
        return _MISSING

    def _after_walk(self, entry: Any, depth: int) -> Any:
        """_lookup(entry, self, 0) when the plain walk stopped at segment `depth`. The walk took the steps
        _lookup tries first, so what is left are the keys with dots in the objects it passed, deepest
        first, as _lookup's depth-first order has it. (A null on the way, `"tokens": null` for a
        failed call, costs a few `in` tests here, not a walk again from the top.)"""
        passed = [entry]
        for segment in self.segments[:depth]:
            current = passed[-1]
            passed.append(current[int(segment)] if type(current) in ARRAYS else current[segment])
        found = _lookup(passed[depth], self, depth)
        for start in range(depth - 1, -1, -1):
            if found is not _MISSING:
                return found
            value = passed[start]
            if type(value) in OBJECTS:  # (a list: its index has no alternative)
                found = self._through_dotted_keys(value, _keys(value), start)
        return found


def compile_path(path: FieldPath) -> Callable[[Any], Any]:
    """path.get, faster for one and two segments when the steps are plain objects (nearly always);
    anything else (a list index, a key with dots in it, a missing step) goes to path.get itself."""
    segments, slow = path.segments, path.get
    if len(segments) == 1:
        key = segments[0]

        def get_one(entry: Any) -> Any:
            # A key without dots that is missing is missing: path.get would answer None too.
            return entry.get(key) if type(entry) in OBJECTS else slow(entry)

        return get_one
    if len(segments) == 2:
        first, second = segments
        joined = f"{first}.{second}"

        def get_two(entry: Any) -> Any:
            if type(entry) not in OBJECTS:
                return slow(entry)
            inner = entry.get(first)
            kind = type(inner)
            if kind in OBJECTS:
                if second in inner:
                    return inner[second]
            elif kind in ARRAYS:
                return slow(entry)
            # Neither first.second as nested objects nor a list: what is left is a key with the dot in it.
            return dotted_get(entry, joined)

        return get_two

    def get_many(entry: Any) -> Any:
        current = entry
        for segment in segments:
            if type(current) in OBJECTS and segment in current:
                current = current[segment]
            else:
                return slow(entry)  # a list, a key with dots, or nothing there: the whole walk
        return current

    return get_many


FIRSTS: Final = "__firsts__"  # in generated code's names: first steps read once -> their variables


def _name(names: dict[str, Any], value: Any) -> str:
    """A name for `value` in generated code's namespace."""
    name = f"_n{len(names)}"
    names[name] = value
    return name


# In generated code: the entry's keys (see _keys), made the first time a line needs them, once per entry.
_TOP_KEYS: Final = "(top if top is not None else (top := keys_of(entry)))"


def _inline_path(path: FieldPath, target: str, names: dict[str, Any]) -> list[str]:
    """compile_path(path) written out as statements setting `target` (see Source.inline). When the first
    step leads to no object or list (a failed call's `"tokens": null`), what is left are keys with dots
    at the top, looked up in the entry's keys, taken once per entry however many paths ask."""
    segments = path.segments
    if len(segments) == 1:
        return [f"{target} = get({segments[0]!r})"]
    names.setdefault("keys_of", _keys)
    if len(segments) == 2:
        first, second = segments
        # entry.get(first) is read once, at the top (FIRSTS: the generated code's first lines set them).
        firsts: dict[str, str] = names.setdefault(FIRSTS, {})
        inner = firsts.setdefault(first, f"_first{len(firsts)}")
        dotted = f"entry[{path.text!r}] if {path.text!r} in {_TOP_KEYS} else None"
        return [f"if type({inner}) in OBJECTS:",
                f"    {target} = {inner}[{second!r}] if {second!r} in {inner} else ({dotted})",
                f"elif type({inner}) in ARRAYS:",
                f"    {target} = {_name(names, path.get)}(entry)",
                "else:",
                f"    {target} = {dotted}"]
    return [f"{target} = get({segments[0]!r})",  # the first step, for a moment
            f"if type({target}) in OBJECTS or type({target}) in ARRAYS:",
            f"    {target} = {_name(names, compile_path(path))}(entry)",
            "else:",
            f"    {target} = {_name(names, path.from_top_keys)}(entry, {_TOP_KEYS})"]


def _keys(value: Any) -> Any:
    """What to ask `key in` of an object for a key that is seldom there (one with dots in it): a dict
    itself, a pysimdjson Object's keys as a tuple. pysimdjson answers a missing key slowly (~2 us,
    an exception inside), its keys take ~0.6 us, and a present key is found in either."""
    return value if type(value) is dict else tuple(value)


def dotted_get(entry: Any, key: str) -> Any:
    """entry.get(key) (an object) for a key with dots in it, which entries seldom have (see _keys)."""
    return entry[key] if key in _keys(entry) else None


def _lookup(value: Any, path: FieldPath, start: int) -> Any:
    """Walk path.segments[start:], trying keys that contain dots (`gen_ai.usage.input_tokens`) too."""
    segments = path.segments
    if start == len(segments):
        return value
    if type(value) in ARRAYS:
        segment = segments[start]
        if segment.isdigit() and int(segment) < len(value):
            return _lookup(value[int(segment)], path, start + 1)
        return _MISSING
    if type(value) not in OBJECTS:
        return _MISSING
    keys = _keys(value)
    for end, key in path.joins[start]:
        if key in keys:
            found = _lookup(value[key], path, end)
            if found is not _MISSING:
                return found
    return _MISSING


@dataclass(frozen=True)
class Source:
    """Alternative paths for one value: the first that is present and not null wins, times its factor."""

    alternatives: tuple[tuple[FieldPath, float | None], ...]

    @classmethod
    def parse(cls, text: str) -> Source:
        alternatives = []
        for part in text.split("|"):
            part = part.strip()
            factor: float | None = None
            if "*" in part:  # PATH*FACTOR: a `*` always starts the factor, which must be a finite number
                path, _, text = part.rpartition("*")
                try:
                    factor = float(text)
                except ValueError:
                    factor = math.nan
                if not math.isfinite(factor):
                    raise ValueError(f"{part!r}: the factor after '*' is not a number")
                part = path
            alternatives.append((FieldPath(part), factor))
        return cls(tuple(alternatives))

    def __str__(self) -> str:
        return "|".join(p.text + (f"*{f:g}" if f is not None else "") for p, f in self.alternatives)

    def compiled(self) -> Callable[[Any], Any]:
        """self.get, as fast as the paths allow (see compile_path)."""
        if any(factor is not None for _, factor in self.alternatives):
            return self.get
        getters = tuple(compile_path(path) for path, _ in self.alternatives)
        if len(getters) == 1:
            return getters[0]

        def first(entry: Any) -> Any:
            for get in getters:
                value = get(entry)
                if value is not None:
                    return value
            return None

        return first

    def inline(self, target: str, names: dict[str, Any]) -> list[str]:
        """Python statements that set `target` to self.get(entry), for code made once per `stats` run
        (Stats): `entry` is an object (a dict, or a pysimdjson Object) and `get` is entry.get. Paths of
        one or two plain steps are written out; anything else is a call, added to `names`."""
        if any(factor is not None for _, factor in self.alternatives):
            return [f"{target} = {_name(names, self.get)}(entry)"]
        lines: list[str] = []
        for number, (path, _) in enumerate(self.alternatives):
            steps = _inline_path(path, target, names)
            lines += steps if number == 0 else [f"if {target} is None:", *("    " + step for step in steps)]
        return lines

    def get(self, entry: Any) -> Any:
        for path, factor in self.alternatives:
            value = path.get(entry)
            if value is not None:
                if factor is not None:
                    number = to_number(value)
                    return number * factor if number is not None and number is not BAD else value
                return value
        return None


# Gateway entries (../shared/data, docs/SCHEMA.md): our own `tokens` object, else the OpenAI usage object.
GATEWAY: Final = {
    "prompt_tokens": "tokens.prompt|response.usage.prompt_tokens|response.usage.input_tokens",
    "completion_tokens": "tokens.completion|response.usage.completion_tokens|response.usage.output_tokens",
    "total_tokens": "tokens.total|response.usage.total_tokens",
    "cost": "cost_eur|cost",
    "duration_ms": "duration_ms",
    "status_code": "status_code",
    "error": "error",
}
# OpenTelemetry GenAI semantic conventions, attributes flat (`"gen_ai.usage.input_tokens": 12`) or nested.
OTEL: Final = {
    "prompt_tokens": "gen_ai.usage.input_tokens|attributes.gen_ai.usage.input_tokens",
    "completion_tokens": "gen_ai.usage.output_tokens|attributes.gen_ai.usage.output_tokens",
    "total_tokens": "gen_ai.usage.total_tokens|attributes.gen_ai.usage.total_tokens",
    "cost": "gen_ai.usage.cost|attributes.gen_ai.usage.cost|cost",
    "duration_ms": "gen_ai.client.operation.duration*1000|attributes.gen_ai.client.operation.duration*1000"
                   "|duration_ms",
    "status_code": "http.response.status_code|attributes.http.response.status_code",
    "error": "error.type|attributes.error.type",
    "model": "gen_ai.request.model|attributes.gen_ai.request.model",
    "response_model": "gen_ai.response.model|attributes.gen_ai.response.model",
    "provider": "gen_ai.provider.name|gen_ai.system|attributes.gen_ai.provider.name|attributes.gen_ai.system",
    "operation": "gen_ai.operation.name|attributes.gen_ai.operation.name",
    "user": "user.id|enduser.id|attributes.user.id|attributes.enduser.id",
}
# LiteLLM's StandardLoggingPayload (its `standard_logging_object`).
LITELLM: Final = {
    "prompt_tokens": "prompt_tokens",
    "completion_tokens": "completion_tokens",
    "total_tokens": "total_tokens",
    "cost": "response_cost",
    "duration_ms": "response_time*1000",
    "status_code": "error_information.error_code",
    "error": "error_str",
    "model": "model",
    "deployment": "model_group|model",
    "user": "metadata.user_api_key_user_id|end_user",
    "team": "metadata.user_api_key_team_alias|metadata.user_api_key_team_id",
    "key": "metadata.user_api_key_alias|metadata.user_api_key_hash",
}
PRESETS: Final[Mapping[str, Mapping[str, str]]] = {"gateway": GATEWAY, "otel": OTEL, "litellm": LITELLM}


class FieldMap:
    """The sources of the measures plus aliases for `--by`/`--where`; see docs/SCHEMA.md."""

    def __init__(self, specs: Mapping[str, str], given: Iterable[str] = ()) -> None:
        self.specs = dict(specs)
        self.sources = {name: Source.parse(spec) for name, spec in self.specs.items() if spec}
        # The names a `name=path` item set (not a preset's): `stats` says if no entry has a value there.
        self.given = tuple(given)

    @classmethod
    def parse(cls, items: Iterable[str], origin: str = "--map") -> FieldMap:
        """Start from the gateway preset; a bare word picks a preset, `name=path|path*factor` sets one
        field. Later items win."""
        specs: dict[str, str] = dict(GATEWAY)
        given: dict[str, None] = {}
        for raw in items:
            item = raw.strip()
            if not item:
                continue
            if "=" not in item:
                preset = PRESETS.get(item.lower())
                if preset is None:
                    raise ConfigError(f"{origin} {item!r}: not a preset ({', '.join(PRESETS)}) nor name=path")
                specs = dict(preset)
                given.clear()
                continue
            name, _, spec = (s.strip() for s in item.partition("="))
            if not _NAME_RE.match(name):
                raise ConfigError(f"{origin} {item!r}: {name!r} is not a field name")
            if name in TIME_KEYS:
                raise ConfigError(f"{origin} {item!r}: {name} always comes from the entry's timestamp")
            if not spec:  # `cost=` with nothing after: a variable that expanded to nothing, most likely
                raise ConfigError(f"{origin} {item!r}: no path after '=' (e.g. {name}=cost_eur)")
            try:
                Source.parse(spec)
            except ValueError as exc:
                raise ConfigError(f"{origin} {item!r}: {exc}") from None
            specs[name] = spec
            given[name] = None
        return cls(specs, given)

    @classmethod
    def from_setting(cls, setting: str, items: Iterable[str] = ()) -> FieldMap:
        """The `stats_map` setting (comma-separated items), then the command line's --map items."""
        from_setting = setting.split(",") if setting else []
        cls.parse(from_setting, origin="Config 'stats_map':")  # so that a bad item names the setting
        return cls.parse([*from_setting, *items])

    def source(self, name: str) -> Source | None:
        return self.sources.get(name)

    def field(self, name: str) -> Source:
        """What `--by NAME` or `--where NAME=...` reads: the map's entry for NAME, else the path NAME."""
        return self.sources.get(name) or Source(((FieldPath(name), None),))


class _Bad:
    """A value that should be a number and is not (a string of letters, an object, a boolean)."""

    def __repr__(self) -> str:
        return "BAD"


BAD: Final = _Bad()


def to_number(value: Any) -> Any:
    """int/float as they are; numeric strings converted; None for null; BAD for anything else."""
    kind = type(value)
    if kind is int or kind is float:
        return value
    if value is None:
        return None
    if kind is str:
        try:
            return int(value)
        except ValueError:
            pass
        try:
            number = float(value)
        except ValueError:
            return BAD
        return number if math.isfinite(number) else BAD
    return BAD


def group_value(value: Any) -> Any:
    """A hashable group key: scalars as they are, objects and lists as their JSON text."""
    value = plain(value)
    if isinstance(value, dict | list):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return value


def matches(value: Any, wanted: str) -> bool:
    """Does an entry's value equal the text given on the command line (`--where user=alice`)?"""
    if value is None:
        return wanted == "null"
    if isinstance(value, bool):
        return wanted.lower() == ("true" if value else "false")
    if isinstance(value, int | float):
        number = to_number(wanted)
        return number is not BAD and number is not None and number == value
    if isinstance(value, str):
        return value == wanted
    return group_value(value) == wanted
