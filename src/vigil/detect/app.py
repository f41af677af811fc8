"""Detection on Kafka: the route and detect applications, and the intel feed beside them.

See :mod:`vigil.detect.engine` for why there are two stages.  ``DetectionService`` runs
both applications (each a consumer group of its own; start more processes with the same
names to scale out: the route stage's processes keep within ``peer_skew_s`` of event time of each
other, :mod:`vigil.stream.peers`, so several catching up on a backlog write ``detect.routed`` in
an order the rules take, see the README's Detection section) and an :class:`IntelFeed` that
reads the compacted ``intel.indicators`` topic from the beginning into the shared index and keeps following
it, so a new list version applies without a restart.  Detection starts once the feed has
caught up with the topic as it was at start, so no event is checked against half a list.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from confluent_kafka import KafkaException

from vigil.config import Settings
from vigil.detect.engine import (
    ALERTS_TOPIC,
    DECISIONS_TOPIC,
    ROUTED_TOPIC,
    DetectOperator,
    RouteOperator,
    RuleSet,
)
from vigil.detect.intel import IntelIndex
from vigil.detect.rules.models import Rule
from vigil.errors import DecodeError, PipelineError, VigilError
from vigil.events.base import Event
from vigil.events.codec import EventCodec
from vigil.events.types import EVENT_CLASSES, EVENT_TYPES, IntelIndicator
from vigil.hub.admin import ensure_topics
from vigil.hub.answers import wait_answered
from vigil.hub.client import EventProducer, make_admin
from vigil.hub.topics import DOMAINS, TOPICS, TopicSpec
from vigil.stream.app import DEFAULT_BATCH_SIZE, Application
from vigil.stream.base import Guarantee
from vigil.stream.table import TopicFollower

log = logging.getLogger(__name__)

#: The end of a STIX indicator's key on the indicator topic: "#indicator--<UUID>".
_STIX_SUFFIX = re.compile(r"#(?P<id>[a-z][a-z0-9-]*--[0-9a-fA-F-]{36})$")

CANONICAL_INPUTS = tuple(f"events.{d}" for d in DOMAINS)
#: Exactly-once checkpoint interval of both stages (see ``DetectionService.checkpoint_interval_s``).
EXACTLY_ONCE_INTERVAL_S = 0.5
_ROUTED_TYPES = tuple(
    c for c in EVENT_CLASSES if c.domain not in ("intel", "alerts", "decisions", "releases")
)


def routed_topic_spec(name: str, partitions: int | None) -> TopicSpec:
    return TopicSpec(
        name=name,
        key="<entity kind>:<id> (the key a rule correlates by)",
        value=_ROUTED_TYPES,
        description="Canonical events re-keyed by detection's correlation keys (internal)",
        partitions=partitions,
    )


@dataclass
class DetectTopology:
    """Names of everything the detection applications read and write (tests use unique ones)."""

    inputs: Sequence[str] = CANONICAL_INPUTS
    routed: str = ROUTED_TOPIC
    alerts: str = ALERTS_TOPIC
    decisions: str = DECISIONS_TOPIC
    intel: str = "intel.indicators"
    dlq: str = "dlq.detect"
    route_app: str = "detect-route"
    detect_app: str = "detect"
    routed_partitions: int | None = None

    @classmethod
    def scoped(cls, prefix: str, partitions: int) -> DetectTopology:
        """Every topic and consumer group named under ``prefix`` (a unique one keeps a run on a
        shared cluster apart from everyone else's), the routed topic with ``partitions``."""
        return cls(
            inputs=tuple(f"{prefix}events.{d}" for d in DOMAINS),
            routed=f"{prefix}detect.routed",
            alerts=f"{prefix}alerts",
            decisions=f"{prefix}decisions",
            intel=f"{prefix}intel.indicators",
            dlq=f"{prefix}dlq.detect",
            route_app=f"{prefix}detect-route",
            detect_app=f"{prefix}detect",
            routed_partitions=partitions,
        )

    def topic_specs(self, partitions: int) -> list[TopicSpec]:
        """The registry's specs of the input, alert, decision, intel and dead-letter topics under
        this topology's names, with ``partitions`` each (the dead-letter topic keeps its one)."""
        specs = [
            replace(TOPICS.get(canonical), name=name, partitions=partitions)
            for canonical, name in zip(CANONICAL_INPUTS, self.inputs, strict=True)
        ]
        specs += [
            replace(TOPICS.get("alerts"), name=self.alerts, partitions=partitions),
            replace(TOPICS.get("decisions"), name=self.decisions, partitions=partitions),
            replace(TOPICS.get("intel.indicators"), name=self.intel, partitions=partitions),
            replace(TOPICS.get("dlq.detect"), name=self.dlq),
        ]
        return specs


def create_topics(
    settings: Settings, topology: DetectTopology, partitions: int, intel: Iterable[Event] = ()
) -> None:
    """Create ``topology``'s topics (:meth:`DetectTopology.topic_specs`) and publish ``intel``
    to its indicator topic, flushed before this returns."""
    ensure_topics(settings, topology.topic_specs(partitions))
    producer = EventProducer(settings)
    for indicator in intel:
        producer.produce(indicator, topic=topology.intel)
    producer.flush()


def delete_scoped_topics(settings: Settings, prefix: str) -> int:
    """Delete every topic named under ``prefix`` (a :meth:`DetectTopology.scoped` run's inputs,
    outputs, routed topic and its applications' changelogs, 40-odd topics); returns how many
    went.  For runs with throwaway topics (evaluations, benchmarks): a shared cluster should
    not keep them.  Best effort: what the broker refuses is logged, not raised, so a run's
    results survive a failed clean-up."""
    if not prefix:
        msg = "delete_scoped_topics needs a non-empty prefix; it would delete every topic"
        raise ValueError(msg)
    admin = make_admin(settings)
    try:
        names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix)]
    except KafkaException as exc:
        log.warning("listing topics to delete under %r: %s", prefix, exc)
        return 0
    deleted = 0
    futures = admin.delete_topics(names, operation_timeout=30) if names else {}
    wait_answered(admin, futures.values(), 60)
    for name, future in futures.items():
        try:
            future.result()  # (answered, or failed at the request's timeout)
            deleted += 1
        except KafkaException as exc:
            log.warning("deleting topic %r: %s", name, exc)
    return deleted


class IntelFeed:
    """Follows the indicator topic into an :class:`IntelIndex`: a global table (every
    partition, in every process) kept in the index's own shape, by indicator value."""

    def __init__(self, settings: Settings, topic: str, index: IntelIndex) -> None:
        self.topic = topic
        self.index = index
        #: Records skipped: undecodable (the intel normaliser dead-letters what it cannot parse,
        #: so these were written by something else) or a tombstone whose key names no feed.
        self.errors = 0
        self._started = False
        self._codec = EventCodec([IntelIndicator])
        # A group of its own per process (it commits nothing): every process reads the whole list.
        self._reader = TopicFollower(
            settings,
            topic,
            self._apply,
            name=f"intel feed {topic!r}",
            group=f"vigil-intel-{uuid.uuid4().hex[:12]}",
            missing_ok=True,
        )

    def start(self, timeout_s: float = 60.0, abort: Callable[[], bool] | None = None) -> None:
        """Read the list as it stands (raises if not within ``timeout_s``; returns early, not
        loaded, once ``abort()`` is true), then keep following it.

        Started again after a stop, it reads the whole list afresh into an empty index: values
        withdrawn while it was stopped (their tombstones perhaps compacted away) would stay.
        Called again while it runs (after a start that timed out), it waits for the same reader:
        the index is kept (cleared, it lost what the reader had applied, never read again)."""
        if self._started and not self._reader.running:
            self.index.clear()
        self._started = True
        self._reader.start(timeout_s, abort)

    def check(self) -> None:
        """Raise if the feed has stopped (the list would go stale unnoticed)."""
        self._reader.check()

    def stop(self) -> None:
        self._reader.stop()

    def _apply(self, key: str | None, value: bytes | None, where: str) -> None:
        if value is None:
            if not self._withdraw(key):
                self.errors += 1
                log.warning("intel feed: tombstone at %s names no feed (key %r)", where, key)
            return
        try:
            event = self._codec.decode(value, where=where)
        except DecodeError as exc:
            # A bad indicator must not stop detection; it is reported, not applied.  The listing
            # its key had before is withdrawn: the topic's latest record for the key is this one,
            # and a process reading the topic afresh (once compaction dropped the older record)
            # has no listing for it, so every process answers alike.
            self.errors += 1
            self._withdraw(key)
            log.warning("intel feed: %s", exc)
            return
        if isinstance(event, IntelIndicator):  # the codec admits nothing else
            self.index.apply(event)

    def _withdraw(self, key: str | None) -> bool:
        """Withdraw the one listing a record key names (the feed's STIX listings of the value,
        under keys of their own, stay: their records are still on the topic); whether it names
        one.  The key is "<type>:<value>@<feed>", or "...@<feed>#<STIX id>" for one STIX
        indicator's (values never contain "@" except e-mail addresses, hence rpartition)."""
        listed, at, feed = (key or "").partition(":")[2].rpartition("@")
        stix = _STIX_SUFFIX.search(feed)
        if at and stix is not None:
            self.index.withdraw(listed, feed[: stix.start()], stix["id"])
        elif at:
            self.index.withdraw(listed, feed)
        return bool(at)


@dataclass
class DetectionService:
    settings: Settings
    rules: Sequence[Rule]
    topology: DetectTopology = field(default_factory=DetectTopology)
    guarantee: Guarantee = "exactly_once"
    batch_size: int = DEFAULT_BATCH_SIZE
    #: Checkpoint interval of both stages.  ``None``: 0.5 s exactly-once (an alert is visible once
    #: both stages have committed, so this bounds its latency); at-least-once the runtime's own
    #: default (outputs go out at once, so the interval only bounds what a crash replays, and a
    #: longer one writes a busy customer's state to the changelog once rather than every second).
    checkpoint_interval_s: float | None = None
    #: Small fetches keep the input topics finely interleaved in each batch, so sorting a
    #: batch by event time restores the cross-topic order sequences depend on.
    route_fetch_bytes: int = 32 * 1024
    #: Both stages ask the broker to hold a fetch until it has ``fetch_min_bytes`` or
    #: ``fetch_linger_ms`` passed.  Live traffic trickles in, and answered at once each fetch
    #: carried a few records: every one a round trip through librdkafka and a turn of the loop.
    #: Measured with the shipped rules and the detect benchmark's paced sender (one core, both
    #: stages): at 8,000 events/s the stages' CPU per event fell from 75 to 54 µs and the median
    #: alert latency rose from 11 to 17 ms; at 16,000 events/s CPU fell from 46 to 37 µs and
    #: p50 / p99 alert latency from 49 / 287 ms to 22 / 55 ms.  (The runtime's default since is
    #: 64 KB or 10 ms, :data:`vigil.stream.app.FETCH_DEFAULTS`.)  ``fetch_linger_ms=0``: answered
    #: at once, whatever arrived (librdkafka's 1-byte minimum), latency first.
    fetch_linger_ms: int = 5
    fetch_min_bytes: int = 64 * 1024
    #: Run rules whose events are already keyed by their group entity (a customer's logins
    #: and withdrawals) in stage 1, on the input topics as aligned, without re-keying: their
    #: alerts take one hop less (measured live at 8,000 and 16,000 events/s: median alert
    #: latency 10 and 13-18 ms against 18-20 and 22-25 ms), 15% fewer records are routed, and
    #: CPU per event is about the same.  Those rules see the inputs in the order the route stage
    #: releases them, with no batch re-sort after a hop: sequence rules judge "first seen" and
    #: "seen that often before" in event time, so a sighting that arrives after a later event
    #: changes nothing (``vigil eval --kafka``, live and ``--backlog``, scores as in memory; the
    #: broker test comparing with the in-memory run passed 8 runs of 8).  Needs co-partitioned
    #: input topics (stage 1 then keeps state); with unequal partition counts ``start`` turns it
    #: off and says so.  Every process of one deployment must run with the same setting.
    local_stage: bool = True
    #: Event-time alignment of the route stage (``Application.max_event_time_skew_s``): records
    #: reach the router in event-time order across the input topics and partitions (each waits
    #: until the slowest partition that still has records to read has reached its time), and no
    #: partition reads more than this many seconds of event time ahead of that one (it is
    #: paused).  So replaying a backlog routes a customer's login and withdrawal (different
    #: topics) in the order they happened, as live traffic does.  The skew bounds the records
    #: held back (memory) against pause/resume churn: on the 200k-event backlog replay 60 s and
    #: 300 s both score as in memory (300 s ran ~15% faster).  Live traffic is not delayed:
    #: partitions at their end, or idle for a second, hold nobody back (but one with a source's
    #: transaction open on it, until that commits: at most a second).  ``None``: off.
    event_time_skew_s: float | None = 60.0
    #: Alignment: a partition that delivered nothing for this long holds nobody back
    #: (``Application.alignment_idle_s``; on a replay, one with records left still does, up to
    #: ten times this: waiting its turn for a fetch).
    alignment_idle_s: float = 1.0
    #: Event-time alignment across the route stage's processes (``Application.peer_skew_s``,
    #: :mod:`vigil.stream.peers`): one catching up releases nothing more than this many seconds
    #: of event time ahead of the slowest input partition the others own, so several processes
    #: catching up on a backlog write ``detect.routed`` at most this far apart, well within the
    #: hour the rules take late (unaligned, hours apart: two processes on the 200,000-event
    #: backlog lost a true alert in 3 runs of 3; aligned, the alerts of one).  Live, nothing
    #: waits.  ``None``: each process aligns alone (needs ``event_time_skew_s``).
    peer_skew_s: float | None = 300.0

    def __post_init__(self) -> None:
        self.index = IntelIndex()
        self.ruleset = RuleSet(self.rules, self.index)
        self.feed = IntelFeed(self.settings, self.topology.intel, self.index)
        self._threads: list[threading.Thread] = []
        self.failures: list[BaseException] = []
        self._build()

    def _build(self) -> None:
        """The operators and both applications, for the current ``local_stage``."""
        interval = self.checkpoint_interval_s
        if interval is None and self.guarantee == "exactly_once":
            interval = EXACTLY_ONCE_INTERVAL_S
        t = self.topology
        # Aligned, the route stage's records come in event-time order across its inputs; the
        # routed topic's, in its log's order (one partition a key): processed as they come, a
        # replay or a restart makes the same alerts under the same ids, however batches are cut.
        aligned = self.event_time_skew_s is not None
        self.router = RouteOperator(
            self.ruleset, topic=t.routed, remote_only=self.local_stage, order_batches=not aligned
        )
        # Rules whose events are already keyed by the entity they group by run in stage 1,
        # where the canonical topics are consumed; the others run on the re-keyed stream.
        self.local_detector = DetectOperator(
            self.ruleset,
            detectors="local",
            dedup=True,
            op_id="detect.local.v1",
            alerts_topic=t.alerts,
            decisions_topic=t.decisions,
            order_batches=not aligned,
        )
        self.detector = DetectOperator(
            self.ruleset,
            routed=True,
            detectors="remote" if self.local_stage else "all",
            alerts_topic=t.alerts,
            decisions_topic=t.decisions,
            order_batches=False,
        )
        linger: dict[str, int] = (
            {"fetch.wait.max.ms": self.fetch_linger_ms, "fetch.min.bytes": self.fetch_min_bytes}
            if self.fetch_linger_ms > 0
            else {"fetch.min.bytes": 1}
        )
        # Records of a type no rule reads (orders, logouts: a third of an exchange's events) are
        # committed past undecoded.  Intel indicators update the index wherever they arrive.
        read = {*self.ruleset.by_type, "intel_indicator"}
        self.route_app = Application(
            self.settings,
            name=t.route_app,
            skip_types=sorted(t for t in EVENT_TYPES if t not in read),
            inputs=list(t.inputs),
            operators=[self.local_detector, self.router] if self.local_stage else [self.router],
            guarantee=self.guarantee,
            dlq_topic=t.dlq,
            batch_size=self.batch_size,
            checkpoint_interval_s=interval,
            internal_topics=[routed_topic_spec(t.routed, t.routed_partitions)],
            max_event_time_skew_s=self.event_time_skew_s,
            alignment_idle_s=self.alignment_idle_s,
            peer_skew_s=self.peer_skew_s if self.event_time_skew_s is not None else None,
            consumer_overrides={
                **linger,
                "max.partition.fetch.bytes": self.route_fetch_bytes,
                "fetch.max.bytes": max(self.route_fetch_bytes * 16, 1024 * 1024),
            },
        )
        self.detect_app = Application(
            self.settings,
            name=t.detect_app,
            inputs=[t.routed],
            operators=[self.detector],
            guarantee=self.guarantee,
            dlq_topic=t.dlq,
            batch_size=self.batch_size,
            checkpoint_interval_s=interval,
            consumer_overrides=linger,
        )

    @property
    def alerts(self) -> int:
        """Alerts emitted by both stages of this process so far."""
        return self.local_detector.alerts + self.detector.alerts

    @property
    def decisions(self) -> int:
        return self.local_detector.decisions + self.detector.decisions

    def start(self, intel_timeout_s: float = 60.0, abort: Callable[[], bool] | None = None) -> None:
        """Load the intel list, then start both applications in background threads; neither
        when ``abort()`` turns true while the list loads (a SIGTERM then waited for the whole
        list, up to a minute)."""
        # The detect stage reads what the route stage writes: the topic must exist first.
        ensure_topics(
            self.settings, [routed_topic_spec(self.topology.routed, self.topology.routed_partitions)]
        )
        if self.local_stage:
            counts = self._input_partitions()
            if len(set(counts.values())) > 1:
                # Stage 1 keeps state per partition number, which needs co-partitioned inputs.
                # Said in full: the customer-keyed rules' state (devices and countries seen,
                # dormancy) is in stage 1's stores, which stage 2 does not read.
                log.warning(
                    "detection: the input topics have unequal partition counts %s; every rule runs "
                    "in the routed stage (local_stage off), and the customer-keyed rules start there "
                    "with empty state (what stage 1 kept of devices, countries and dormancy is not "
                    "read): give the topics equal partition counts (vigil topics apply "
                    "--add-partitions) to keep it",
                    counts,
                )
                self.local_stage = False
                self._build()
        self.feed.start(intel_timeout_s, abort)
        if abort is not None and abort():
            return
        for app in (self.route_app, self.detect_app):
            thread = threading.Thread(target=self._run, args=(app,), name=f"app-{app.name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _input_partitions(self) -> dict[str, int]:
        """Partition counts of the input topics that exist (a missing one fails at start)."""
        topics = make_admin(self.settings).list_topics(timeout=30).topics
        return {
            name: len(topics[name].partitions)
            for name in self.topology.inputs
            if name in topics and topics[name].error is None
        }

    def _run(self, app: Application) -> None:
        try:
            app.run()
        except BaseException as exc:  # surfaced by `check()`: a dead stage must not go unnoticed
            if isinstance(exc, VigilError | OSError):
                # Says what is wrong itself (a topic missing before `vigil topics apply`; a home
                # that is not a directory, which the command line says as one line too): one
                # line, its traceback at DEBUG (check() raises only the first stage's failure).
                log.error("detection application %s failed: %s", app.name, exc)
                log.debug("detection application %s failed", app.name, exc_info=True)
            else:
                log.exception("detection application %s failed", app.name)
            self.failures.append(exc)

    def check(self) -> None:
        """Raise the first failure of a stage or of the intel feed, if any (call it from the
        supervising loop)."""
        if self.failures:
            raise self.failures[0]
        self.feed.check()

    def caught_up(self, records: int) -> bool:
        """Whether the route stage has processed ``records`` input records and the detect stage
        everything routed so far; raises a stage's failure first (:meth:`check`)."""
        self.check()
        return self.route_app.metrics.processed >= records and (
            self.detect_app.metrics.processed >= self.router.routed
        )

    def wait_caught_up(self, records: int, timeout_s: float, poll_s: float = 0.02) -> None:
        """Poll every ``poll_s`` until :meth:`caught_up` holds; ``TimeoutError`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not self.caught_up(records):
            if time.monotonic() > deadline:
                msg = f"detection did not catch up with {records} records within {timeout_s:g}s"
                raise TimeoutError(msg)
            time.sleep(poll_s)

    def stop(self) -> None:
        """Stop both stages and the intel feed; raises if a stage or the feed failed (a stage's
        last checkpoint included) or a stage did not stop within 30 s, so a supervisor hears of it."""
        for app in (self.route_app, self.detect_app):
            app.stop()
        deadline = time.monotonic() + 30
        for thread in self._threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        self.feed.stop()
        running = [thread.name for thread in self._threads if thread.is_alive()]
        if running:
            msg = f"detection: {', '.join(running)} did not stop within 30 s"
            raise PipelineError(msg)
        self.check()
