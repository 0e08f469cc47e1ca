"""The writer's counters and histograms, exposed in Prometheus text format.

Counters are plain integers the writer bumps on its hot path; a collector turns them into
metric families only when scraped. Each counter's attribute, Prometheus name and help text are
declared once, on the `WriterMetrics` field. Histograms are prometheus-client's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)


def _counter(name: str, help: str) -> Any:
    return field(default=0, metadata={"kind": "counter", "name": name, "help": help})


def _gauge(name: str, help: str) -> Any:
    return field(default=lambda: 0, repr=False, metadata={"kind": "gauge", "name": name, "help": help})


@dataclass
class WriterMetrics:
    """Counters, gauges and histograms of one LogWriter."""

    accepted: int = _counter("blobwriter_entries_accepted", "Entries accepted into the queue")
    written: int = _counter("blobwriter_entries_written", "Entries durably appended to storage")
    rejected: int = _counter("blobwriter_entries_rejected",
                             "Entries rejected before queueing (invalid, too large, or queue full)")
    shed: int = _counter("blobwriter_requests_shed",
                         "HTTP requests refused (503) before their body was parsed: the queue had no room for it")
    failed: int = _counter("blobwriter_entries_failed",
                           "Accepted entries given up on and reported (never silently dropped)")
    frames: int = _counter("blobwriter_frames", "Data frames appended to storage")
    appends: int = _counter("blobwriter_appends", "Append calls that succeeded (each carries one or more frames)")
    bytes_raw: int = _counter("blobwriter_bytes_raw", "Bytes of JSON Lines before compression")
    bytes_stored: int = _counter("blobwriter_bytes_stored",
                                 "Bytes appended to storage (frames, after compression and encryption)")
    retries: int = _counter("blobwriter_retries", "Append calls that failed (their frames are retried or given up)")
    throttled: int = _counter("blobwriter_throttled",
                              "Append calls refused as throttled (503 ServerBusy, 500 OperationTimedOut) or unanswered")
    queue_depth: Callable[[], int] = _gauge("blobwriter_queue_depth", "Entries accepted and not yet written")
    queue_bytes: Callable[[], int] = _gauge("blobwriter_queue_bytes",
                                            "Serialized bytes of the entries accepted and not yet written")
    in_flight: Callable[[], int] = _gauge("blobwriter_appends_in_flight", "Append calls in progress")
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
        values = {}
        for f in _declared():
            value = getattr(self, f.name)
            values[f.name] = value() if f.metadata["kind"] == "gauge" else value
        return values

    def render(self) -> bytes:
        """Prometheus text exposition of everything above."""
        return generate_latest(self.registry)


def _declared() -> list[Any]:
    return [f for f in fields(WriterMetrics) if "kind" in f.metadata]


class _Collector:
    def __init__(self, metrics: WriterMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for f in _declared():
            meta, value = f.metadata, getattr(self._metrics, f.name)
            if meta["kind"] == "counter":
                yield CounterMetricFamily(meta["name"], meta["help"], value=value)
            else:
                yield GaugeMetricFamily(meta["name"], meta["help"], value=value())
