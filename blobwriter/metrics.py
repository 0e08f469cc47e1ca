"""The writer's counters and histograms, exposed in Prometheus text format.

Counters are plain integers the writer bumps on its hot path; a collector turns them into
metric families only when scraped. Histograms are prometheus-client's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)

# name, help: the counters, in the order they are exposed.
COUNTERS = {
    "accepted": "Entries accepted into the queue",
    "written": "Entries durably appended to storage",
    "rejected": "Entries rejected before queueing (invalid, too large, or queue full)",
    "failed": "Accepted entries given up on at shutdown and reported (never silently dropped)",
    "chunks": "Frames (append calls that succeeded)",
    "bytes_raw": "Bytes of JSON Lines before compression",
    "bytes_stored": "Bytes appended to storage (frames, after compression and encryption)",
    "retries": "Append attempts that failed and were retried",
}


@dataclass
class WriterMetrics:
    """Counters, gauges and histograms of one LogWriter."""

    accepted: int = 0
    written: int = 0
    rejected: int = 0
    failed: int = 0
    chunks: int = 0
    bytes_raw: int = 0
    bytes_stored: int = 0
    retries: int = 0
    queue_depth: Callable[[], int] = field(default=lambda: 0, repr=False)
    in_flight: Callable[[], int] = field(default=lambda: 0, repr=False)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry, repr=False)

    def __post_init__(self) -> None:
        self.append_seconds = Histogram(
            "blobwriter_append_seconds", "Latency of successful append calls", buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_entries = Histogram(
            "blobwriter_batch_entries", "Entries per frame appended", buckets=BATCH_BUCKETS, registry=self.registry,
        )
        self.registry.register(_Collector(self))

    def snapshot(self) -> dict[str, int]:
        """The counters and gauges as a plain dict (for health checks, tests and benchmarks)."""
        values = {name: getattr(self, name) for name in COUNTERS}
        values["queue_depth"] = self.queue_depth()
        values["in_flight"] = self.in_flight()
        return values

    def render(self) -> bytes:
        """Prometheus text exposition of everything above."""
        return generate_latest(self.registry)


class _Collector:
    def __init__(self, metrics: WriterMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        for name, help_text in COUNTERS.items():
            yield CounterMetricFamily(f"blobwriter_entries_{name}" if name in _ENTRY_COUNTERS
                                      else f"blobwriter_{name}", help_text, value=getattr(m, name))
        yield GaugeMetricFamily("blobwriter_queue_depth", "Entries accepted and not yet written", value=m.queue_depth())
        yield GaugeMetricFamily("blobwriter_appends_in_flight", "Append calls in progress", value=m.in_flight())


_ENTRY_COUNTERS = {"accepted", "written", "rejected", "failed"}
