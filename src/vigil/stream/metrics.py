"""Runtime metrics: plain counters for tests and Prometheus collectors for operations.

Each application gets its own :class:`~prometheus_client.CollectorRegistry` (several
applications, or several tests, in one process must not collide on metric names);
:func:`serve_metrics` exposes one on an HTTP port.  Consumer lag is the metric to alert
on: a loop that silently stopped consuming shows as growing lag (faust#416).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


@dataclass
class AppMetrics:
    """Counters a test (or a benchmark) can read while the application runs."""

    processed: int = 0
    #: Of those, records of ``skip_types`` committed past undecoded.
    skipped: int = 0
    batches: int = 0
    emitted: int = 0
    dead_lettered: int = 0
    late: int = 0
    checkpoints: int = 0
    restored_records: int = 0
    rebalances: int = 0
    last_checkpoint_s: float = 0.0
    assigned: list[tuple[str, int]] = field(default_factory=list)
    #: Event-time alignment: partitions paused now, and pauses so far.
    paused: list[tuple[str, int]] = field(default_factory=list)
    alignment_pauses: int = 0


class PrometheusMetrics:
    """The exported metrics of one application (labels: ``app``, and ``partition`` where it matters)."""

    def __init__(self, app: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.app = app
        r = self.registry
        self.processed = Counter("vigil_stream_records", "Records processed", ["app"], registry=r)
        self.dead_lettered = Counter(
            "vigil_stream_dead_letters", "Records dead-lettered", ["app"], registry=r
        )
        self.skipped = Counter(
            "vigil_stream_skipped_records",
            "Records of skip_types committed past undecoded (counted as records processed too)",
            ["app"],
            registry=r,
        )
        self.late = Counter(
            "vigil_stream_late_events", "Events too late for their window", ["app"], registry=r
        )
        self.batch_size = Histogram(
            "vigil_stream_batch_size",
            "Records per consumed batch",
            ["app"],
            buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 50000),
            registry=r,
        )
        self.processing = Histogram(
            "vigil_stream_batch_processing_seconds", "Decode + operators time per batch", ["app"], registry=r
        )
        self.checkpoint = Histogram(
            "vigil_stream_checkpoint_seconds", "Checkpoint (flush/commit) duration", ["app"], registry=r
        )
        self.lag = Gauge(
            "vigil_stream_consumer_lag",
            "Records behind the log end",
            ["app", "topic", "partition"],
            registry=r,
        )
        self.state_keys = Gauge(
            "vigil_stream_state_keys",
            "Estimated keys per store and partition",
            ["app", "store", "partition"],
            registry=r,
        )


def serve_metrics(registry: CollectorRegistry, port: int, addr: str = "127.0.0.1") -> None:
    """Expose ``registry`` at ``http://addr:port/metrics`` (a daemon thread)."""
    start_http_server(port, addr=addr, registry=registry)
