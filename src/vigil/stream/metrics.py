"""Runtime metrics: plain counters for tests and Prometheus collectors for operations.

Each application gets its own :class:`~prometheus_client.CollectorRegistry` (several
applications, or several tests, in one process must not collide on metric names);
:class:`MetricsServer` exposes those of a process on an HTTP port (``vigil run``,
``vigil source``, ``vigil normalize`` and ``vigil detect`` with ``--metrics-port`` or
``VIGIL_METRICS_PORT``).
Consumer lag is the metric to alert on: a loop that silently stopped consuming shows as growing
lag (faust#416).  The lag gauge is set by the loop itself, so a loop that stalls outright
freezes it: alert too on ``time() - vigil_stream_loop_timestamp_seconds``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric, start_http_server
from prometheus_client.registry import Collector, RestrictedRegistry


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
    #: Exactly-once: transactions committed; at-least-once: checkpoints set aside (sealed).
    checkpoints: int = 0
    restored_records: int = 0
    rebalances: int = 0
    last_checkpoint_s: float = 0.0
    #: Garbage collections the loop ran between batches, as its Collector counts them
    #: (vigil.stream.collector): how many, the seconds in all, the longest (each pauses the loop).
    gc_collections: int = 0
    gc_seconds: float = 0.0
    gc_longest_s: float = 0.0
    #: The longest single step of each kind the loop took (seconds), by kind: ``process`` (a
    #: batch: decode and operators), and the checkpoint work done between batches: ``checkpoint``,
    #: ``encode`` (state writes for the changelog), ``complete`` (waiting for acknowledgements,
    #: committing offsets), ``write`` (state to RocksDB).  Records that arrive meanwhile wait
    #: for the step to end, so the longest bound what each adds to an event's latency.
    longest_step_s: dict[str, float] = field(default_factory=dict)
    assigned: list[tuple[str, int]] = field(default_factory=list)
    #: Partition numbers assigned whose stores are being restored, or are still open in another
    #: process of the home (not processed until then).
    restoring: list[int] = field(default_factory=list)
    #: Event-time alignment: partitions paused now, and pauses so far.
    paused: list[tuple[str, int]] = field(default_factory=list)
    alignment_pauses: int = 0


#: Seconds a checkpoint may take: under a millisecond at-least-once, up to minutes with the broker
#: out of reach (see PrometheusMetrics.checkpoint).
_CHECKPOINT_BUCKETS = (
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)


class PrometheusMetrics:
    """The exported metrics of one application (labels: ``app``, and ``partition`` where it matters)."""

    def __init__(self, app: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.app = app
        r = self.registry
        # (These three count what the loop did: a checkpoint aborted and processed again, after
        # a lost assignment or a stall, counts its records again, as the dead-letter and late
        # topics hold them again at-least-once; exactly-once, the aborted copies are never read.)
        self.processed = Counter(
            "vigil_stream_records", "Records processed (again, too, after a rewind)", ["app"], registry=r
        )
        self.dead_lettered = Counter(
            "vigil_stream_dead_letters",
            "Records dead-lettered (again, too, after a rewind; exactly-once, those of aborted "
            "checkpoints are not in the topic)",
            ["app"],
            registry=r,
        )
        self.skipped = Counter(
            "vigil_stream_skipped_records",
            "Records of skip_types committed past undecoded (counted as records processed too)",
            ["app"],
            registry=r,
        )
        self.peer_waits = Counter(
            "vigil_stream_peer_waits",
            "Times the application, catching up on a backlog, began holding records back for a "
            "partition its other processes read or have yet to read (peer_skew_s; live, none)",
            ["app"],
            registry=r,
        )
        self.late = Counter(
            "vigil_stream_late_events",
            "Events too late for their window (again, too, after a rewind)",
            ["app"],
            registry=r,
        )
        self.batch_size = Histogram(
            "vigil_stream_batch_size",
            "Records per batch handed to the operators (inputs aligned in event time: per release)",
            ["app"],
            # Up to the largest batch the runtime takes (MAX_BATCH_SIZE): past the top bucket,
            # histogram_quantile answered 50,000 however large the batches were.
            buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10_000, 50_000, 100_000, 250_000, 500_000, 1_000_000),
            registry=r,
        )
        self.processing = Histogram(
            "vigil_stream_batch_processing_seconds",
            "Decode + operators time per batch (inputs aligned in event time: the operators' alone, "
            "records are decoded as consumed)",
            ["app"],
            # Up to the runtime's own bound (a quarter of max.poll.interval.ms, 75 s by default, and
            # more when it is raised): the default buckets stopped at 10 s.
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
            registry=r,
        )
        self.checkpoint = Histogram(
            "vigil_stream_checkpoint_seconds",
            "Time the loop spends on a checkpoint: exactly-once, sending the state writes and "
            "committing the transaction; at-least-once, setting the state writes and offsets aside "
            "(committed later, once Kafka has acknowledged the outputs before them)",
            ["app"],
            # Up to what a checkpoint may take with its broker out of reach: each of its
            # transactional calls is tried for 5 minutes (the default buckets stopped at 10 s, so
            # a quantile read 10 s for checkpoints that took minutes).
            buckets=_CHECKPOINT_BUCKETS,
            registry=r,
        )
        self.gc = Histogram(
            "vigil_stream_gc_seconds",
            "Garbage collections run by the loop between batches (each one pauses it)",
            ["app"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.lag = Gauge(
            "vigil_stream_consumer_lag",
            "Records behind the log end, records read but still waiting for event-time alignment "
            "included (a partition nothing was read from yet: from its committed offset); a partition "
            "paused by alignment (vigil_stream_partition_paused) shows the "
            "log end as of its pause (the client learns it from fetches), so its lag reads low",
            ["app", "topic", "partition"],
            registry=r,
        )
        self.paused = Gauge(
            "vigil_stream_partition_paused",
            "1 while event-time alignment keeps a partition paused (ahead of the slowest, or "
            "buffering too much), else 0",
            ["app", "topic", "partition"],
            registry=r,
        )
        self.loop_time = Gauge(
            "vigil_stream_loop_timestamp_seconds",
            "When the processing loop last went round (alert when it is old: a stalled loop "
            "freezes every other gauge, lag included)",
            ["app"],
            registry=r,
        )
        self.longest_step = Gauge(
            "vigil_stream_longest_loop_step_seconds",
            "The longest single step of each kind the loop has taken since the process started "
            "(process: a batch; checkpoint, encode, complete, write: checkpoint work between "
            "batches); records that arrive meanwhile wait for it, so it bounds what the step adds "
            "to an event's latency.  It only grows: alert on changes(), not on its value",
            ["app", "step"],
            registry=r,
        )
        self.restoring = Gauge(
            "vigil_stream_restoring_partitions",
            "Partitions assigned whose stores are being restored from their changelogs, or are "
            "still open in another process of the home (not processed until then)",
            ["app"],
            registry=r,
        )
        self.restored = Counter(
            "vigil_stream_restored_records", "Changelog records applied restoring stores", ["app"], registry=r
        )
        self.state_keys = Gauge(
            "vigil_stream_state_keys",
            "Operators' keys per store and partition in RocksDB, counted in passes (about once "
            "a second up to 2,000 keys are read, 1,000 at most of a store, the stores in turn, "
            "at most 1% of the loop's time: a count is as of its store's last pass); writes not "
            "checkpointed yet are not in it",
            ["app", "store", "partition"],
            registry=r,
        )
        # Every series of the application at 0 from the start: one first seen at 1 (the first
        # dead letter) is invisible to increase() and rate(), so an alert on them missed it.
        for family in (
            self.processed,
            self.dead_lettered,
            self.skipped,
            self.late,
            self.peer_waits,
            self.restored,
            self.batch_size,
            self.processing,
            self.checkpoint,
            self.gc,
        ):
            family.labels(app)


class _Merged(Collector):
    """The metrics of several applications' registries as one exposition: families of the same
    name (every application has ``vigil_stream_records``) become one family with each
    application's samples, as the text format requires."""

    def __init__(self, registries: Callable[[], Iterable[CollectorRegistry]]) -> None:
        self._registries = registries

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for registry in self._registries():
            for family in registry.collect():
                known = families.get(family.name)
                if known is None:
                    families[family.name] = family  # a fresh object per collect(): ours to extend
                else:
                    known.samples.extend(family.samples)
        yield from families.values()


class _MergedRegistry(CollectorRegistry):
    """A registry of one :class:`_Merged` collector that a scrape may filter by name
    (``/metrics?name[]=vigil_stream_consumer_lag``, a scrape config's ``params``): the client's
    own filter looks for collectors registered under those names, found none of the merged
    families, and answered every filtered scrape with an empty page (200): no lag series, and
    no lag alert."""

    def restricted_registry(self, names: Iterable[str]) -> RestrictedRegistry:
        return _Filtered(list(names), self)


class _Filtered(RestrictedRegistry):
    """The samples of the merged families whose names are asked for."""

    def __init__(self, names: list[str], registry: CollectorRegistry) -> None:
        super().__init__(names, registry)
        self._wanted = frozenset(names)
        self._merged = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._merged.collect():
            samples = [sample for sample in family.samples if sample.name in self._wanted]
            if samples:
                kept = Metric(family.name, family.documentation, family.type, family.unit)
                kept.samples = samples
                yield kept


class MetricsServer:
    """``/metrics`` over HTTP for the applications of one process, until :meth:`stop`.

    ``registries`` is asked at each scrape, so applications started later are included."""

    def __init__(self, registries: Callable[[], Iterable[CollectorRegistry]]) -> None:
        self.registry = _MergedRegistry()
        self.registry.register(_Merged(registries))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, port: int, host: str = "127.0.0.1") -> MetricsServer:
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return self

    @property
    def port(self) -> int:
        if self._server is None:
            msg = "the metrics server is not running"
            raise RuntimeError(msg)
        return int(self._server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def serve_metrics(registry: CollectorRegistry, port: int, addr: str = "127.0.0.1") -> MetricsServer:
    """Expose one application's ``registry`` at ``http://addr:port/metrics``; ``stop()`` the result."""
    return MetricsServer(lambda: [registry]).start(port, addr)
