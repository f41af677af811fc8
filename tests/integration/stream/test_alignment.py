"""Event-time alignment (``max_event_time_skew_s``) against a real broker.

A backlog of two input topics for the same customers: topic A holds each customer's
earlier events, topic B the events a few seconds later, A's records much larger than B's.
Read without alignment, the consumer drains B far ahead of A (more of B's records fit in
each fetch), so an operator sees B's events long before A's earlier ones; with alignment
it sees them interleaved in event-time order.  And partitions at their end, empty or idle
ones do not hold the others back.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from tests.integration.stream.apps import T0
from tests.integration.stream.conftest import (
    Running,
    home_at,
    make_topics,
    produce,
    produce_in_transactions,
    wait_for,
)

from vigil.config import Settings
from vigil.errors import ConfigError
from vigil.events.base import Entities
from vigil.events.codec import encode
from vigil.events.types import Payment, PaymentPayload
from vigil.hub.admin import ensure_topics
from vigil.hub.client import producer_config
from vigil.stream.app import Application, state_path
from vigil.stream.base import Context, Operator, Record, StoreSpec
from vigil.stream.repartition import GroupBy, entity_key, repartition_spec, repartition_topic
from vigil.stream.state import RocksState

Start = Callable[[Application], Running]

SKEW_S = 30.0
#: How a topic's records are published: one by one, or in transactions as sources publish to
#: canonical topics (each commit marker takes an offset no consumer is handed).
PUBLISHERS = pytest.mark.parametrize(
    "publish", [produce, produce_in_transactions], ids=["plain", "transactional"]
)
Publish = Callable[[Settings, str, Sequence[Payment]], None]
#: Small fetches, so that the topic with the larger records falls behind without alignment.
SMALL_FETCHES = {"max.partition.fetch.bytes": 16 * 1024, "fetch.max.bytes": 1024 * 1024}


class Recorder(Operator[Payment]):
    """Records what it is handed, in the order it is handed over (across partitions)."""

    id = "recorder"

    def __init__(self) -> None:
        self.seen: list[tuple[str, float]] = []

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        for rec in batch:
            self.seen.append((rec.topic, rec.event.occurred_at.timestamp()))

    def max_lateness_s(self) -> float:
        """How far, at most, a record's event time lay behind one handed over before it."""
        latest = float("-inf")
        worst = 0.0
        for _, at in self.seen:
            worst = max(worst, latest - at)
            latest = max(latest, at)
        return worst


class CallRecorder(Recorder):
    """A Recorder that also notes which partitions each call held."""

    id = "call-recorder"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[set[int]] = []

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        super().process(batch, ctx)
        self.calls.append({rec.partition for rec in batch})


class StatefulRecorder(Recorder):
    """A Recorder with a store: handed each partition's released records in its own call."""

    id = "stateful-recorder"
    stores = (StoreSpec("recorded", 1),)

    def __init__(self) -> None:
        super().__init__()
        self.partitions: set[int] = set()
        self.by_partition: dict[int, list[float]] = {}
        self.mixed_calls = 0
        self.unordered_calls = 0

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        super().process(batch, ctx)
        state = ctx.state(self.stores[0])
        if any(rec.partition != ctx.partition for rec in batch):
            self.mixed_calls += 1
        times = [rec.event.occurred_at.timestamp() for rec in batch]
        if times != sorted(times):
            self.unordered_calls += 1
        self.partitions.add(ctx.partition)
        for rec in batch:
            state.set(rec.event.key(), rec.offset)
            self.by_partition.setdefault(rec.partition, []).append(rec.event.occurred_at.timestamp())

    def max_lateness_per_partition_s(self) -> float:
        worst = 0.0
        for times in self.by_partition.values():
            latest = float("-inf")
            for at in times:
                worst = max(worst, latest - at)
                latest = max(latest, at)
        return worst


def events(prefix: str, n: int, offset_s: float, pad: int = 0, customers: int = 20) -> list[Payment]:
    return [
        Payment(
            event_id=f"{prefix}{i}",
            source="test",
            occurred_at=T0 + timedelta(seconds=10 * i + offset_s),
            entities=Entities(customer=f"c{i % customers}"),
            payload=PaymentPayload(payment_id=f"{prefix}{i}" + "x" * pad, amount=1.0, currency="USD"),
        )
        for i in range(n)
    ]


def backlog(settings: Settings, names: Callable[[str], str], n: int) -> tuple[str, str]:
    """Topic A: a customer's earlier events (4 kB each); topic B: 5 s later (small)."""
    a, b = names("a"), names("b")
    make_topics(settings, a, b, partitions=2)
    produce(settings, a, events("a", n, 0.0, pad=4000))
    produce(settings, b, events("b", n, 5.0))
    return a, b


def app(
    settings: Settings, name: str, inputs: list[str], op: Operator[Any] | list[Operator[Any]], **kw: Any
) -> Application:
    return Application(
        settings,
        name=name,
        inputs=inputs,
        operators=op if isinstance(op, list) else [op],
        instance_id="t1",
        checkpoint_interval_s=0.1,
        consumer_overrides=SMALL_FETCHES,
        **kw,
    )


def processed(running: Running, records: int, timeout_s: float = 60, *, stop: bool = True) -> None:
    """Wait until the application has processed ``records`` (or failed), stop it unless told
    not to, and fail the test if it failed."""
    wait_for(
        lambda: bool(running.errors) or running.app.metrics.processed >= records,
        timeout_s,
        f"{records} records processed",
    )
    if stop:
        running.stop()
    assert not running.errors


def test_backlog_without_alignment_runs_one_topic_far_ahead(
    settings: Settings, names: Callable[[str], str], run_app: Start
) -> None:
    n = 400
    a, b = backlog(settings, names, n)
    rec = Recorder()
    running = run_app(app(settings, names("app"), [a, b], rec))
    processed(running, 2 * n)
    # B (small records) was drained long before A: the test below can fail.
    assert rec.max_lateness_s() > 10 * SKEW_S


@pytest.mark.parametrize("stateful", [False, True], ids=["stateless", "stateful"])
def test_backlog_with_alignment_reaches_the_operator_in_event_time_order(
    settings: Settings, names: Callable[[str], str], run_app: Start, stateful: bool
) -> None:
    n = 400
    a, b = backlog(settings, names, n)
    rec = StatefulRecorder() if stateful else Recorder()
    # A small buffer bound, so that B (far ahead) is paused rather than only buffered; small
    # batches, because the consumer may have prefetched the whole backlog by the first call, and
    # a single batch holding all of it would be merged in order without any pause.
    running = run_app(
        app(
            settings,
            names("app"),
            [a, b],
            rec,
            max_event_time_skew_s=SKEW_S,
            alignment_max_buffered=20,
            batch_size=20,
            # Only "at its end" releases a partition: a loaded machine's slow first fetch of A
            # must not count as A going idle (which would let B through early).
            alignment_idle_s=600,
        )
    )
    processed(running, 2 * n)
    assert len(rec.seen) == 2 * n
    assert {topic for topic, _ in rec.seen} == {a, b}
    if isinstance(rec, StatefulRecorder):
        # Its state is per partition: each call holds one partition's records of both topics,
        # merged by event time (across partitions, calls follow one another per release).
        assert rec.max_lateness_per_partition_s() <= SKEW_S
        assert rec.mixed_calls == 0
        assert rec.unordered_calls == 0
        assert rec.partitions == {0, 1}
    else:
        # Released records are merged by event time across partitions too.
        assert rec.max_lateness_s() <= SKEW_S
    assert running.app.metrics.alignment_pauses > 0  # B was held back by pausing, not only buffered
    assert running.app.metrics.paused == []  # at the end nothing stays paused


def test_beside_a_stateful_operator_a_stateless_one_gets_every_partition_in_one_call(
    settings: Settings, names: Callable[[str], str], run_app: Start
) -> None:
    # A router beside a detector (detection's local stage): the detector's state is per
    # partition, the router's output is not, so the router gets all partitions merged.
    n = 400
    a, b = backlog(settings, names, n)
    stateful, stateless = StatefulRecorder(), CallRecorder()
    running = run_app(
        app(
            settings,
            names("app"),
            [a, b],
            [stateful, stateless],
            max_event_time_skew_s=SKEW_S,
            alignment_idle_s=600,
        )
    )
    processed(running, 2 * n)
    assert len(stateful.seen) == len(stateless.seen) == 2 * n
    assert stateful.mixed_calls == 0
    assert any(len(parts) == 2 for parts in stateless.calls)
    assert stateless.max_lateness_s() <= SKEW_S


@PUBLISHERS
def test_partitions_at_their_end_and_empty_ones_do_not_stall_the_others(
    settings: Settings, names: Callable[[str], str], run_app: Start, publish: Publish
) -> None:
    # Transactional: a partition at its end is one offset short of its high watermark if its
    # position is taken as the last record handed over plus one (the commit marker's offset).
    old, new, empty = names("old"), names("new"), names("empty")
    make_topics(settings, old, new, empty, partitions=2)
    publish(settings, old, events("o", 4, 0.0))  # an hour behind everything in `new`
    publish(settings, new, events("n", 100, 3600.0))
    rec = Recorder()
    # Idle timeout out of reach: only "at its end" (and "empty") may release the others.
    running = run_app(
        app(
            settings, names("app"), [old, new, empty], rec, max_event_time_skew_s=SKEW_S, alignment_idle_s=600
        )
    )
    processed(running, 104, stop=False)
    assert rec.max_lateness_s() <= SKEW_S
    # Live traffic on one topic only goes through at once.  (Live, partitions at their end do not
    # wait for each other, so records produced together may cross: no order is asserted here.)
    publish(settings, new, events("m", 10, 7200.0))
    processed(running, 114, 30)
    assert sorted(at for _, at in rec.seen)[-10:] == [
        (T0 + timedelta(seconds=7200 + 10 * i)).timestamp() for i in range(10)
    ]


@PUBLISHERS
def test_after_a_restart_a_quiet_topic_at_its_end_does_not_hold_the_others(
    settings: Settings, names: Callable[[str], str], run_app: Start, publish: Publish
) -> None:
    # Transactional: the committed offset of the quiet partition is its last commit marker's,
    # one short of the high watermark: only the consumer's position, past the marker, says so.
    quiet, busy, name = names("quiet"), names("busy"), names("app")
    make_topics(settings, quiet, busy, partitions=2)
    publish(settings, quiet, events("q", 10, 0.0))
    publish(settings, busy, events("b", 10, 0.0))
    first = run_app(app(settings, name, [quiet, busy], Recorder(), max_event_time_skew_s=SKEW_S))
    processed(first, 20)
    # Restarted, nothing is consumed from the quiet topic (its group is at its end), so its
    # consumer position stays unknown: the committed offset tells it has nothing left.  The idle
    # timeout is out of reach, so only that can let the busy topic's later records through.
    publish(settings, busy, events("later", 10, 7200.0))
    rec = Recorder()
    again = run_app(
        app(settings, name, [quiet, busy], rec, max_event_time_skew_s=SKEW_S, alignment_idle_s=600)
    )
    processed(again, 10, 30)
    assert [topic for topic, _ in rec.seen] == [busy] * 10


@pytest.mark.parametrize(("skew", "idle"), [(-1.0, 1.0), (float("inf"), 1.0), (10.0, 0.0)])
def test_alignment_options_are_validated(settings: Settings, skew: float, idle: float) -> None:
    with pytest.raises(ConfigError, match=r"max_event_time_skew_s|alignment_idle_s"):
        Application(
            settings,
            name="bad",
            inputs=["x"],
            operators=[Recorder()],
            max_event_time_skew_s=skew,
            alignment_idle_s=idle,
        )


class Laborious(Operator[Payment]):
    """Takes its time over every batch (a heavy rule), so the slow topic holds the floor a while."""

    id = "laborious"

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        time.sleep(0.05)  # the work, not a synchronisation


def test_lag_counts_records_waiting_for_alignment_and_pauses_are_exported(
    settings: Settings, names: Callable[[str], str], run_app: Start
) -> None:
    # Records read but waiting in the alignment buffer counted as done (lag 1,800 of 2,000
    # unprocessed), and nothing said a partition was paused.
    a, b = names("a"), names("b")
    make_topics(settings, a, b, partitions=1)
    produce(settings, a, events("a", 2000, 0.0))
    produce(settings, b, events("b", 2000, 1e6))  # far ahead: waits for all of A
    application = app(
        settings,
        names("app"),
        [a, b],
        Laborious(),
        batch_size=20,
        max_event_time_skew_s=SKEW_S,
        alignment_max_buffered=200,
    )
    running = run_app(application)

    def gauge(name: str, topic: str) -> float | None:
        labels = {"app": application.name, "topic": topic, "partition": "0"}
        return application.prometheus.registry.get_sample_value(name, labels)

    wait_for(
        lambda: (
            bool(running.errors)
            or (
                gauge("vigil_stream_partition_paused", b) == 1
                and gauge("vigil_stream_consumer_lag", b) is not None
            )
        ),
        60,
        "B paused, and its gauges",
    )
    assert not running.errors
    assert gauge("vigil_stream_consumer_lag", b) == 2000  # none of B processed: all of it behind
    assert gauge("vigil_stream_partition_paused", a) == 0
    assert application.metrics.processed < 2000  # (A still holds the floor: B is still waiting)
    running.stop()


def test_its_own_repartition_topic_holds_no_live_record_back(
    settings: Settings, names: Callable[[str], str], run_app: Start
) -> None:
    # Exactly-once, a transaction of its own is open on its repartition topic from the first
    # record re-keyed until the checkpoint: read_committed, that topic's position stops short of
    # its high watermark, so it held the floor, and every live record waited for the commit (here
    # a minute away, and alignment_idle_s as long).
    src, name = names("payments"), names("app")
    make_topics(settings, src, partitions=1)
    rekeyed = repartition_topic(name, "by-ip")
    seen: list[str] = []

    class Seen(Operator[Payment]):
        id = "seen"

        def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
            seen.extend(rec.event.event_id for rec in batch if rec.topic == src)

    by_ip = GroupBy("by-ip", rekeyed, entity_key("ip"), internal_prefix=repartition_topic(name, ""))
    app = Application(
        settings,
        name=name,
        inputs=[src, rekeyed],
        operators=[by_ip, Seen()],
        internal_topics=[repartition_spec(name, "by-ip", 1)],
        checkpoint_interval_s=60,
        alignment_idle_s=60,
    )

    def payment(i: int) -> Payment:
        return Payment(
            event_id=f"p{i}",
            source="t",
            occurred_at=T0 + timedelta(seconds=i),
            entities=Entities(customer="c1", ip="10.0.0.1"),
            payload=PaymentPayload(payment_id=f"p{i}", amount=1.0, currency="USD"),
        )

    # A record re-keyed by an earlier run, read back first: the topic's position is known from
    # then on (before, the broker is asked where it ends, and it gives the last stable offset).
    ensure_topics(settings, [repartition_spec(name, "by-ip", 1)])
    produce(settings, rekeyed, [payment(0)])
    running = run_app(app)
    wait_for(lambda: app.metrics.processed >= 1, 60, "the re-keyed record read back")
    produce(settings, src, [payment(1)])
    wait_for(lambda: seen == ["p1"], 30, "the first payment")  # (re-keyed in the open transaction)
    produce(settings, src, [payment(2)])
    wait_for(lambda: seen == ["p1", "p2"], 20, "the second payment, before the checkpoint")
    assert app.metrics.checkpoints == 0
    running.stop()
    assert not running.errors


def test_at_the_start_a_partition_restored_first_waits_for_the_others(
    settings: Settings, tmp_path: Path, names: Callable[[str], str], run_app: Callable[[Application], Running]
) -> None:
    # A partition whose store is still being restored (here: open in another process of the
    # home, which is waited for) was no lane yet: the partition ready first released its whole
    # backlog, its later records before the other's earlier ones (a GroupBy re-keyed them so,
    # and a join after a restart lost up to a third of its pairs: found in review, 2026-12-05).
    src = names("in")
    make_topics(settings, src, partitions=2)
    home = home_at(settings, tmp_path / "home")
    early, late = events("e", 50, 0.0), events("l", 50, 1000.0)
    producer = Producer(settings.kafka_client_config())
    for partition, batch in ((0, early), (1, late)):
        for e in batch:
            producer.produce(src, encode(e), key=e.key(), partition=partition)
    producer.flush()
    stateful, merged = StatefulRecorder(), CallRecorder()
    name = names("app")
    previous_owner = RocksState(state_path(home, name, stateful.stores[0], 0), stateful.stores[0])
    application = app(home, name, [src], [stateful, merged], max_event_time_skew_s=SKEW_S)
    try:
        running = run_app(application)

        def read_and_gone_round() -> bool:
            lanes = application.alignment.lanes if application.alignment is not None else {}
            lane = lanes.get((src, 1))
            return lane is not None and lane.event_time is not None

        wait_for(read_and_gone_round, 60, "partition 1 read")
        round_before = application._last_gauges
        wait_for(lambda: application._last_gauges != round_before, 60, "the loop to go round again")
        assert application.metrics.restoring == [0]
        assert merged.seen == []  # (before: partition 1's 50, all of them later than partition 0's)
    finally:
        previous_owner.close()
    processed(running, 100)
    assert merged.max_lateness_s() == 0.0
    assert [t for _, t in merged.seen] == sorted(t for _, t in merged.seen)


def test_a_replay_of_many_partitions_waiting_their_turn_for_a_fetch_stays_in_event_time_order(
    settings: Settings, names: Callable[[str], str], run_app: Start
) -> None:
    # The consumer fetches some partitions while others wait their turn (1.3-1.9 s on a replay
    # of 120 partitions, 954,104 records).  A partition waiting longer than alignment_idle_s
    # stopped holding the others: the floor passed its backlog, whose records came out of
    # event-time order (here, with idle_s 0.1 s, thousands of seconds behind; it passes on an
    # idle machine with idle_s 0.5, where no partition waits that long: the unit simulation in
    # tests/unit/stream/test_alignment.py is the guard that always fails without the fix).  Now
    # on a replay a partition with records left holds the others up to ten times idle_s.
    topic, partitions = names("many"), 40
    make_topics(settings, topic, partitions=partitions)
    rng = random.Random(7)
    producer = Producer(producer_config(settings, **{"linger.ms": 20, "batch.size": 16384}))
    total = 0
    for part in range(partitions):
        times = sorted(rng.uniform(0, 20_000) for _ in range(int(500 * rng.uniform(0.3, 3.0))))
        for i, at in enumerate(times):
            event = Payment(
                event_id=f"{part}-{i}",
                source="test",
                occurred_at=T0 + timedelta(seconds=at),
                entities=Entities(customer=f"c{i % 50}"),
                payload=PaymentPayload(payment_id=f"{part}-{i}", amount=1.0, currency="USD"),
            )
            producer.produce(topic, encode(event), event.key(), partition=part)
            producer.poll(0)
        total += len(times)
    assert producer.flush(60) == 0
    rec = Recorder()
    running = run_app(
        app(
            settings,
            names("app"),
            [topic],
            rec,
            max_event_time_skew_s=60.0,
            alignment_idle_s=0.1,  # (held up to 1 s with records left: time for its turn)
            batch_size=10_000,
        )
    )
    processed(running, total)
    assert len(rec.seen) == total
    assert rec.max_lateness_s() == 0.0
