"""`blobwriter stats`: requests, errors, tokens, cost and duration percentiles per group.

One pass over the entries, in constant memory per group: the sums, and the durations as a
value -> count table (exact percentiles; its size is the number of distinct durations, not of
entries). Missing or null tokens and cost count as 0; a missing duration is left out of the
percentiles; a value that is not a number is counted as missing and reported, never an error.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from ..entries import parse_timestamp
from ..errors import ConfigError, EntryError
from .fields import (
    ARRAYS,
    BAD,
    FIRSTS,
    OBJECTS,
    SOURCES,
    TIME_KEYS,
    FieldMap,
    Source,
    group_value,
    matches,
    plain,
    simdjson_parser,
    to_number,
)
from .measures import MEASURES, SETTLE_AT, Group

_NUMERIC: Final = ("prompt_tokens", "completion_tokens", "total_tokens", "cost", "duration_ms")


def utc_hour(timestamp: Any) -> str | None:
    """`YYYY-MM-DDTHH` of an ISO-8601 timestamp in UTC (naive means UTC), or None if it is not one. A leap
    second (`:60`) is in the hour the writer stores it under (entries.parse_timestamp: second 59.999999)."""
    if type(timestamp) is not str or len(timestamp) < 13:
        return None
    tail = timestamp[13:]  # after the hour, a '+' or '-' can only start an offset
    if timestamp[10] in "Tt " and "+" not in tail and "-" not in tail:
        # UTC (`Z`) or naive (which means UTC): the text is the UTC hour already.
        if timestamp[4] == "-" and timestamp[7] == "-" and timestamp[11:13].isdigit():
            return timestamp[:10] + "T" + timestamp[11:13]
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        # What fromisoformat refuses and the writer accepts (a leap second, `23:59:60-08:00`): the writer's
        # own parse, so the hour is the one the entry was stored under.
        try:
            moment = parse_timestamp(timestamp)
        except EntryError:
            return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H")


@dataclass(frozen=True)
class Condition:
    """One `--where FIELD=VALUE` (or `FIELD!=VALUE`)."""

    name: str
    value: str
    negate: bool = False

    @classmethod
    def parse(cls, text: str) -> Condition:
        name, op, value = text.partition("=")
        negate = name.endswith("!")
        name = name.rstrip("!").strip()
        if not op or not name:
            raise ConfigError(f"--where {text!r}: expected FIELD=VALUE or FIELD!=VALUE")
        return cls(name, value, negate)


@dataclass
class Ignored:
    """Values that should have been numbers and were not: how many per field, and an example."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, value: Any) -> None:
        self.counts[name] += 1
        if name not in self.examples:
            text = orjson.dumps(plain(value)).decode()
            self.examples[name] = text if len(text) <= 40 else text[:37] + "..."


@dataclass
class StatsPart:
    """What Stats gathered over a run of entries: merged into the whole by Stats.merge()."""

    groups: dict[tuple[Any, ...], Group]
    ignored: Ignored
    unparsable: int
    unseen: frozenset[str] | None = None  # watched fields no entry had a value at (None: no entry read)
    read: int = 0  # entries read (StatsTask.run's lines), counted or not


@dataclass(frozen=True)
class StatsTask:
    """The aggregation of one run of entries, where they are decoded (Reader.results: a worker
    process for large reads). Picklable: the field map's items, the group keys, the conditions."""

    specs: tuple[tuple[str, str], ...]
    by: tuple[str, ...]
    where: tuple[Condition, ...]
    given: tuple[str, ...] = ()

    def run(self, lines: Sequence[bytes]) -> StatsPart:
        stats = _working.get(self)
        if stats is None:
            stats = _working[self] = Stats(FieldMap(dict(self.specs), self.given), self.by, self.where)
        for line in lines:
            stats.add_line(line)
        part = stats.take()
        part.read = len(lines)
        return part


_working: dict[StatsTask, Stats] = {}
Getter = Callable[[Any], Any]


def _compiled(source: Source | None) -> Getter | None:
    return source.compiled() if source is not None else None  # per process: the Stats each task aggregates with


class Stats:
    """Aggregates entries (JSON lines) into rows of MEASURES per group of `by`."""

    def __init__(self, fields: FieldMap, by: Sequence[str] = (), where: Iterable[Condition] = ()) -> None:
        where = tuple(where)
        self._task = StatsTask(tuple(fields.specs.items()), tuple(by), where, fields.given)
        clash = [name for name in by if name in MEASURES]
        if clash:
            raise ConfigError(f"--by {','.join(clash)}: a group cannot be named like a measure ({', '.join(MEASURES)})")
        if len(set(by)) != len(by):
            raise ConfigError(f"--by {','.join(by)}: a field is named twice")
        self.by = tuple(by)
        # What each group key, condition and measure reads, compiled once (Source.compiled): this runs per entry.
        self._keys: list[tuple[str | None, Getter | None]] = [
            (name, None) if name in TIME_KEYS else (None, fields.field(name).compiled()) for name in by]
        # Conditions on the same field are alternatives (OR); different fields must all hold (AND).
        grouped: dict[tuple[str, bool], list[str]] = {}
        for c in where:
            grouped.setdefault((c.name, c.negate), []).append(c.value)
        self._where_names = {c.name for c in where}
        # (the field's name, day/hour or None, what reads the field or None, negate, the values it may have)
        self._where: list[tuple[str, str | None, Getter | None, bool, list[str]]] = [
            (name, name, None, negate, values) if name in TIME_KEYS
            else (name, None, fields.field(name).compiled(), negate, values)
            for (name, negate), values in grouped.items()]
        self._prompt, self._completion, self._total, self._cost, self._duration, self._status, self._error = (
            _compiled(fields.source(name)) for name in (*_NUMERIC, "status_code", "error"))
        self._needs_hour = any(t is not None for t, _ in self._keys) or any(w[1] is not None for w in self._where)
        self._plain_keys: list[Getter] | None = None
        if all(get is not None for _, get in self._keys):
            self._plain_keys = [get for _, get in self._keys if get is not None]
        self.groups: dict[tuple[Any, ...], Group] = {}
        self.ignored = Ignored()
        self.unparsable = 0
        self.read = 0  # entries read in the parts merged (StatsPart.read)
        self._parser = simdjson_parser()
        self._aggregate = self._compile(fields, [None if name in TIME_KEYS else fields.field(name) for name in by])
        # A name no entry has a value at is a note (a typo, most likely). --where and the map's own items are
        # watched until an entry has a value at each (nearly always the first): only then is an entry read
        # twice. A --by field is not watched: the group keys say whether any entry counted had a value.
        self._fields = fields
        self._watched: dict[str, Getter] = {}
        for name in [*(c.name for c in where), *(n for n in fields.given if n in SOURCES)]:
            if name not in TIME_KEYS and name not in self._watched:
                self._watched[name] = fields.field(name).compiled()
        self._watch()

    def _compile(self, fields: FieldMap, keys: list[Source | None]) -> Callable[[Any], None]:
        """self.add_object for this field map, written out as one function (made once per Stats): the
        same steps, without a call per field read (the part of stats that runs for every entry)."""
        names: dict[str, Any] = {"OBJECTS": OBJECTS, "ARRAYS": ARRAYS, "stats": self, "Group": Group,
                                 "group_value": group_value, "utc_hour": utc_hour}
        lines = ["def add(entry):", "    get = entry.get", "    top = None"]
        body: list[str] = []
        body.append('hour = utc_hour(get("timestamp"))' if self._needs_hour else "hour = None")
        if self._where:
            body += ["if not stats._check(entry, hour):", "    return"]
        if self._plain_keys is not None:
            for number, source in enumerate(keys):
                assert source is not None
                body += source.inline(f"k{number}", names)
                body.append(f"k{number} = k{number} if type(k{number}) is str else group_value(k{number})")
            body.append("key = (" + "".join(f"k{number}, " for number in range(len(keys))) + ")")
        else:
            body.append("key = stats._key(entry, hour)")
        body += ["groups = stats.groups", "group = groups.get(key)", "if group is None:",
                 "    group = groups[key] = Group()", "group.requests += 1"]
        for variable, measure in (("prompt", "prompt_tokens"), ("completion", "completion_tokens"),
                                  ("total", "total_tokens"), ("cost", "cost"), ("duration", "duration_ms")):
            source = fields.source(measure)
            if source is None:
                body.append(f"{variable} = None")
                continue
            body += source.inline(variable, names)
            body += [f"if {variable} is not None and type({variable}) is not int and type({variable}) is not float:",
                     f"    {variable} = stats._odd({measure!r}, {variable})"]
        body += ["if total is None and (prompt is not None or completion is not None):",
                 "    total = (prompt or 0) + (completion or 0)",
                 "if prompt is not None:", "    group.prompt += prompt",
                 "if completion is not None:", "    group.completion += completion",
                 "if total is not None:", "    group.total += total",
                 "if cost is not None:", "    group.cost += cost",
                 "if duration is not None:", "    recent = group.recent", "    recent.append(duration)",
                 f"    if len(recent) >= {SETTLE_AT}:", "        group.settle()"]
        error, status = fields.source("error"), fields.source("status_code")
        if error is not None:
            body += error.inline("error", names)
            body += ["if error is not None:", "    group.errors += 1"]
            if status is not None:  # an error already: its status is only checked for a value to report
                body += ["    " + line for line in status.inline("status", names)]
                body += ["    if status is not None and type(status) is not int:", "        stats._status_odd(status)"]
            body += ["    return"]
        if status is not None:
            body += status.inline("status", names)
            body += ["if type(status) is int:", "    if status >= 400:", "        group.errors += 1",
                     "elif status is not None:", "    stats._status_text(group, status)"]
        lines += [f"    {variable} = get({first!r})" for first, variable in names.pop(FIRSTS, {}).items()]
        # The field map's paths enter the text only as repr() literals.
        text = "\n".join(lines + ["    " + line for line in body])
        exec(compile(text, "<blobwriter stats>", "exec"), names)
        add: Callable[[Any], None] = names["add"]
        return add

    def _watch(self) -> None:
        """Watch every field again, from the next entry on (a new run of entries: see take)."""
        self._unseen = dict(self._watched)
        self._read_any = False
        self._watchers()

    def _watchers(self) -> None:
        """What reads the entries while fields are unseen: --where's fields are watched where the conditions
        read them (_wanted_watching, no second read); the map's own items before the entry is aggregated."""
        unseen = self._unseen
        self._add = self._watching if any(name not in self._where_names for name in unseen) else self._aggregate
        self._check: Callable[[Any, str | None], bool] = (
            self._wanted_watching if any(name in self._where_names for name in unseen) else self._wanted)

    def _see(self, entry: Any, *, where_too: bool = False) -> None:
        """Note which of the fields still unseen (but --where's, unless where_too) the entry has a value at."""
        self._read_any = True
        unseen = self._unseen
        for name, get in list(unseen.items()):
            if (where_too or name not in self._where_names) and get(entry) is not None:
                del unseen[name]
        self._watchers()

    def _watching(self, entry: Any) -> None:
        """self._add while a field of the map's own items is unseen: the entry is looked at, then aggregated."""
        self._see(entry)
        self._aggregate(entry)

    def _wanted(self, entry: Any, hour: str | None) -> bool:
        """Does the entry meet every --where condition?"""
        for _, time_key, get, negate, values in self._where:
            value = self._time(time_key, hour) if get is None else get(entry)
            if any(matches(value, wanted) for wanted in values) == negate:
                return False
        return True

    def _wanted_watching(self, entry: Any, hour: str | None) -> bool:
        """_wanted while a --where field is unseen: every condition's field is read (no early return), and
        those with a value are seen."""
        self._read_any = True
        unseen = self._unseen
        keep, seen = True, False
        for name, time_key, get, negate, values in self._where:
            value = self._time(time_key, hour) if get is None else get(entry)
            if value is not None and name in unseen:
                del unseen[name]
                seen = True
            if keep and any(matches(value, wanted) for wanted in values) == negate:
                keep = False
        if seen:
            self._watchers()
        return keep

    def _key(self, entry: Any, hour: str | None) -> tuple[Any, ...]:
        """The group key, with day or hour among the keys."""
        return tuple([self._time(time_key, hour) if get is None else group_value(get(entry))
                      for time_key, get in self._keys])

    def _status_text(self, group: Group, status: Any) -> None:
        """A status that is not an int: numeric text counts by its number, anything else is ignored."""
        code = to_number(status)
        if code is BAD:
            self.ignored.add("status_code", status)
        elif code is not None and code >= 400:
            group.errors += 1

    def _status_odd(self, status: Any) -> None:
        """The status of an entry that is an error by its `error` field: reported if it is not a number."""
        if to_number(status) is BAD:
            self.ignored.add("status_code", status)

    def task(self) -> StatsTask:
        """This aggregation as a task for Reader.results(); merge() what it answers."""
        return self._task

    def take(self) -> StatsPart:
        """What was gathered so far; this Stats starts again from nothing."""
        part = StatsPart(self.groups, self.ignored, self.unparsable,
                         frozenset(self._unseen) if self._read_any else None)
        self.groups, self.ignored, self.unparsable = {}, Ignored(), 0
        self._watch()
        return part

    def merge(self, part: StatsPart) -> None:
        """Add what another Stats of the same task gathered, over entries that came after these."""
        for key, group in part.groups.items():
            mine = self.groups.get(key)
            if mine is None:
                mine = self.groups[key] = Group()
            mine.merge(group)
        for name, count in part.ignored.counts.items():
            self.ignored.counts[name] += count
            self.ignored.examples.setdefault(name, part.ignored.examples[name])
        self.unparsable += part.unparsable
        self.read += part.read
        if part.unseen is not None:  # what its entries had a value at is seen
            self._read_any = True
            self._unseen = {name: get for name, get in self._unseen.items() if name in part.unseen}
            self._watchers()

    def add_line(self, line: bytes) -> None:
        """Add one entry as stored (JSON). pysimdjson, where installed, parses it lazily: only the fields
        read are made into Python values; what it refuses (a number past 64 bits) orjson decides."""
        if self._parser is not None:
            try:
                entry = self._parser.parse(line)
            except (ValueError, RuntimeError):
                pass
            else:
                try:
                    if type(entry) in OBJECTS:
                        self._add(entry)
                        return
                finally:
                    del entry  # the parser can be used again only once nothing refers to what it parsed
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.unparsable += 1
            return
        if type(entry) is dict:
            self._add(entry)

    def add(self, entry: dict[str, Any]) -> None:
        """Add one parsed entry (an object). add_line runs the same steps written out (_compile)."""
        self._add(entry)

    def add_object(self, entry: dict[str, Any]) -> None:
        """The steps of add, one field read at a time: what _compile writes out (tests hold them equal)."""
        if self._unseen:
            self._see(entry, where_too=True)
        hour = utc_hour(entry.get("timestamp")) if self._needs_hour else None
        for _, time_key, get, negate, values in self._where:
            value = self._time(time_key, hour) if get is None else get(entry)
            if any(matches(value, wanted) for wanted in values) == negate:
                return
        if self._plain_keys is not None:  # fields only (no day/hour): the common case, without the loop
            key = tuple([value if type(value) is str else group_value(value)
                         for value in [get(entry) for get in self._plain_keys]])
        else:
            key = tuple([self._time(time_key, hour) if get is None else group_value(get(entry))
                         for time_key, get in self._keys])
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = Group()
        group.requests += 1
        # The measures: numbers as they are; anything else through _odd (numeric text, or counted as ignored).
        get = self._prompt
        prompt = get(entry) if get is not None else None
        if prompt is not None and type(prompt) is not int and type(prompt) is not float:
            prompt = self._odd("prompt_tokens", prompt)
        get = self._completion
        completion = get(entry) if get is not None else None
        if completion is not None and type(completion) is not int and type(completion) is not float:
            completion = self._odd("completion_tokens", completion)
        get = self._total
        total = get(entry) if get is not None else None
        if total is not None and type(total) is not int and type(total) is not float:
            total = self._odd("total_tokens", total)
        if total is None and (prompt is not None or completion is not None):
            total = (prompt or 0) + (completion or 0)  # no total field (OpenTelemetry has none): their sum
        if prompt is not None:
            group.prompt += prompt
        if completion is not None:
            group.completion += completion
        if total is not None:
            group.total += total
        get = self._cost
        cost = get(entry) if get is not None else None
        if cost is not None and type(cost) is not float and type(cost) is not int:
            cost = self._odd("cost", cost)
        if cost is not None:
            group.cost += cost
        get = self._duration
        duration = get(entry) if get is not None else None
        if duration is not None and type(duration) is not int and type(duration) is not float:
            duration = self._odd("duration_ms", duration)
        if duration is not None:
            group.add_duration(duration)
        get = self._error
        if get is not None and get(entry) is not None:
            group.errors += 1
            get = self._status
            status = get(entry) if get is not None else None
            if status is not None and type(status) is not int:  # counted already: only reported if not a number
                self._status_odd(status)
            return
        get = self._status
        if get is not None:
            status = get(entry)
            if type(status) is int:
                if status >= 400:
                    group.errors += 1
            elif status is not None:
                code = to_number(status)
                if code is BAD:
                    self.ignored.add("status_code", status)
                elif code is not None and code >= 400:
                    group.errors += 1

    def unseen(self) -> list[str]:
        """Notes on the fields --by, --where and the field map's own items read that no entry had a value at
        (each was missing or null in all entries read; for --by, in all entries counted): a misspelt name,
        most likely."""
        notes = []
        unseen = [(name, "counted") for i, name in enumerate(self.by) if name not in TIME_KEYS and self.groups
                  and name not in self._watched and all(key[i] is None for key in self.groups)]
        unseen += [(name, "read") for name in self._unseen] if self._read_any else []
        for name, entries in unseen:
            role = "--by" if name in self.by else "--where" if name in self._where_names else "the field map's"
            source = self._fields.source(name)
            shown = name if source is None else f"{name} ({source})"
            notes.append(f"{role} {shown}: no entry {entries} has a value there (missing or null in every one); "
                         "is the name right?")
        return notes

    @staticmethod
    def _time(name: str | None, hour: str | None) -> str | None:
        if hour is None:
            return None
        return hour[:10] if name == "day" else hour + ":00:00Z"

    def _odd(self, name: str, value: Any) -> int | float | None:
        """A measure's value that is not a plain number: numeric text as its number; else counted as ignored."""
        number = to_number(value)
        if number is BAD:
            self.ignored.add(name, value)
            return None
        return number

    def rows(self) -> list[dict[str, Any]]:
        """One row per group, ordered by the group keys (nulls last)."""
        rows = []
        for key in sorted(self.groups, key=_sort_key):
            rows.append({**dict(zip(self.by, key, strict=True)), **self.groups[key].measures()})
        if not self.by and not rows:  # no group keys: always one row, even for an empty range
            rows.append(Group().measures())
        return rows

    def totals(self) -> dict[str, Any]:
        """The measures over every group (percentiles over all durations, not averaged)."""
        total = Group()
        for group in self.groups.values():
            total.merge(group)
        return total.measures()


def _sort_key(key: tuple[Any, ...]) -> tuple[Any, ...]:
    # Values of one field may be of several JSON types: order by type, then value; nulls last.
    return tuple((0, v) if isinstance(v, int | float) and not isinstance(v, bool) else
                 (1, str(v)) if isinstance(v, str | bool) else (2, "") for v in key)
