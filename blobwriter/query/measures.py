"""The measures of one `blobwriter stats` group: running sums, and the durations as a value -> count
table (exact percentiles in memory that grows with distinct durations, not with entries)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Final

MEASURES: Final = ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens", "cost",
                   "duration_ms_p50", "duration_ms_p95")
COST_DECIMALS: Final = 10


SETTLE_AT: Final = 4096  # durations a group keeps uncounted (Group.recent) at most


class Group:
    """The running measures of one group."""

    __slots__ = ("completion", "cost", "durations", "errors", "prompt", "recent", "requests", "total")

    def __init__(self) -> None:
        self.requests = self.errors = 0
        self.prompt: int | float = 0
        self.completion: int | float = 0
        self.total: int | float = 0
        self.cost: int | float = 0
        self.durations: Counter[int | float] = Counter()  # value -> count: settle() first
        # Durations not counted yet, one per entry: appended as entries come (stats' aggregation) and as a
        # worker's partial groups arrive (merge), counted in bulk, in C, past SETTLE_AT (settle).
        self.recent: list[int | float] = []

    def add_duration(self, value: int | float) -> None:
        recent = self.recent
        recent.append(value)
        if len(recent) >= SETTLE_AT:
            self.settle()

    def settle(self) -> Counter[int | float]:
        """Count the recent durations into the value -> count table, and return it."""
        if self.recent:
            self.durations.update(self.recent)
            self.recent = []
        return self.durations

    def merge(self, other: Group) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.prompt += other.prompt
        self.completion += other.completion
        self.total += other.total
        self.cost += other.cost
        if other.durations:
            self.durations.update(other.durations)
        recent = self.recent
        recent += other.recent  # a worker's partial group: its durations as they came
        if len(recent) >= SETTLE_AT:
            self.settle()

    def __reduce__(self) -> tuple[Any, ...]:
        # As a plain tuple, durations as a list of values, one per entry (a worker's partial group holds
        # a few, never counted): pickled, unpickled and merged at C speed.
        return _group, (self.requests, self.errors, self.prompt, self.completion, self.total, self.cost,
                        self.recent + list(self.durations.elements()))

    def measures(self) -> dict[str, Any]:
        durations = self.settle()
        return {
            "requests": self.requests, "errors": self.errors, "prompt_tokens": whole(self.prompt),
            "completion_tokens": whole(self.completion), "total_tokens": whole(self.total),
            # A sum of binary floats: 0.1 + 0.2 is 0.30000000000000004. Ten decimals keep any currency exact.
            "cost": whole(round(self.cost, COST_DECIMALS)) if isinstance(self.cost, float) else self.cost,
            "duration_ms_p50": percentile(durations, 0.50), "duration_ms_p95": percentile(durations, 0.95),
        }


def whole(value: int | float) -> int | float:
    """A sum that is a whole number as an int, however its terms came (a token count one entry gave as
    12.0): 1001, not 1001.0, and a cost of 0 is 0 whether its entries' costs were 0 or 0.0."""
    return int(value) if type(value) is float and value.is_integer() else value


def _group(requests: int, errors: int, prompt: int | float, completion: int | float, total: int | float,
           cost: int | float, durations: list[int | float]) -> Group:
    """A Group from its pickled tuple (its durations recent, counted when merged past SETTLE_AT)."""
    group = Group()
    group.requests, group.errors, group.prompt, group.completion, group.total, group.cost = (
        requests, errors, prompt, completion, total, cost)
    group.recent = durations
    return group


def percentile(counts: Counter[int | float], q: float) -> int | float | None:
    """The q-quantile by linear interpolation between closest ranks (numpy's default, DuckDB's
    quantile_cont), from a value -> count table; None if it is empty."""
    n = sum(counts.values())
    if n == 0:
        return None
    rank = (n - 1) * q
    low = math.floor(rank)
    fraction = rank - low
    below = 0  # entries with smaller values than the current one
    values = sorted(counts)
    for i, value in enumerate(values):
        below_next = below + counts[value]
        if low < below_next:
            upper = value if low + 1 < below_next or i + 1 == len(values) else values[i + 1]
            # Rounded to a millionth: 1787.25, not the 1787.2499999999995 that binary floats give.
            result = round(value + (upper - value) * fraction, 6)
            return int(result) if float(result).is_integer() else result
        below = below_next
    raise AssertionError("unreachable: rank beyond the counts")
