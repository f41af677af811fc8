"""Event-time alignment across an application's processes (``peer_skew_s``) on a real broker.

A backlog in two partitions; a slow member of the application starts alone and owns both, then
a fast one joins and takes one over.  Both write what they are handed to one output topic, as
detection's route stage writes ``detect.routed``.  Each member aligns its own partitions; without
peer alignment the newcomer writes the rest of its partition long before the slow member gets
through its own, and the output comes hours of event time out of order.  With it, a member
writes nothing more than the skew ahead of the slowest of the others.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Producer
from tests.integration.stream.apps import T0
from tests.integration.stream.conftest import Running, home_at, make_topics, produce, wait_for

from vigil.config import Settings
from vigil.events.base import Entities
from vigil.events.types import Payment, PaymentPayload
from vigil.hub.admin import ensure_topics
from vigil.hub.client import producer_config, read_committed
from vigil.stream.app import Application
from vigil.stream.base import Context, Guarantee, Operator, Record, StoreSpec
from vigil.stream.changelog import changelog_spec, changelog_topic

PEER_SKEW_S = 60.0
#: Seconds of event time between two events of the backlog.
STEP_S = 10.0


class Forward(Operator[Payment]):
    """Writes each payment on to ``output`` (``per_record_s``: work a slow member does for each)."""

    id = "forward"

    def __init__(self, output: str, per_record_s: float = 0.0) -> None:
        self.output = output
        self.per_record_s = per_record_s
        self.handed = 0
        #: Event ids handed to this member, with how many times (more than once: processed again
        #: after its checkpoint was refused or its transaction aborted).
        self.seen: Counter[str] = Counter()

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        if self.per_record_s:
            time.sleep(self.per_record_s * len(batch))  # (the slow member's work, not a wait)
        for rec in batch:
            ctx.forward(self.output, rec, rec.event.key())
            self.seen[rec.event.event_id] += 1
        self.handed += len(batch)


def processed_again(*members: Forward) -> set[str]:
    """Events handed to an operator more than once, by one member or by both.  Exactly-once, a
    checkpoint refused at a rebalance (a commit racing the group's new generation) is aborted and
    its records processed again, after what the other member wrote meanwhile: those come late by
    up to the aborted transaction's span, past the bound (see vigil.stream.peers)."""
    seen: Counter[str] = Counter()
    for op in members:
        seen.update(op.seen)
    return {event_id for event_id, times in seen.items() if times > 1}


def member(
    settings: Settings,
    name: str,
    source: str,
    op: Forward,
    instance: str,
    peer_skew_s: float | None,
    guarantee: Guarantee = "at_least_once",
    stateful: bool = False,
) -> Application:
    return Application(
        settings,
        name=name,
        inputs=[source],
        operators=[Counting(), op] if stateful else [op],
        guarantee=guarantee,
        instance_id=instance,
        checkpoint_interval_s=0.1,
        batch_size=20,
        max_event_time_skew_s=30.0,
        alignment_max_buffered=20,
        peer_skew_s=peer_skew_s,
        consumer_overrides={"max.partition.fetch.bytes": 16 * 1024},
    )


#: Events of the backlog, in two partitions.
N = 600


def backlog_of(settings: Settings, names: Callable[[str], str], n: int) -> tuple[str, str, str]:
    """The backlog in a topic of two partitions, an output topic of one, and an application name."""
    source, output = names("in"), names("out")
    make_topics(settings, source, partitions=2)
    make_topics(settings, output, partitions=1)
    produce(settings, source, backlog(n))
    return source, output, names("app")


def backlog(n: int) -> list[Payment]:
    return [
        Payment(
            event_id=f"p{i}",
            source="test",
            occurred_at=T0 + timedelta(seconds=STEP_S * i),
            entities=Entities(customer=f"c{i % 20}"),
            payload=PaymentPayload(payment_id=f"p{i}", amount=1.0, currency="USD"),
        )
        for i in range(n)
    ]


def written(settings: Settings, topic: str) -> int:
    """Distinct events in ``topic`` (committed: exactly-once, a transaction aborted at a rebalance
    is processed again, so what the operators were handed is no sign the output is complete)."""
    return len(
        {
            msgspec.json.decode(m.value() or b"", type=Payment).event_id
            for m in read_committed(settings, topic)
        }
    )


#: An output as read back: its create time (ms), its offset, the event.
Output = tuple[int, int, Payment]


def outputs(settings: Settings, topic: str) -> list[Output]:
    """The committed records of ``topic`` (one partition), with their create times."""
    out: list[Output] = []
    for msg in read_committed(settings, topic):
        kind, ms = msg.timestamp()
        assert kind == TIMESTAMP_CREATE_TIME  # (a log-append time would judge the log's order)
        out.append((ms, msg.offset(), msgspec.json.decode(msg.value() or b"", type=Payment)))
    return out


def lateness(records: list[Output], n: int, again: Collection[str] = (), *, produced: bool = True) -> float:
    """How far, at most, an output's event time lay behind one handed to Kafka before it (first
    copies; those of ``again``, processed again, are not judged: see :func:`processed_again`).

    ``produced``: in the order the records were produced, by their create times (one clock: both
    members run here); else in the order they reached the log, as a consumer reads them.  What
    peer alignment orders is what each process hands its producer: a member's outputs
    (``linger.ms`` 5) and its word (``linger.ms`` 0) go through two producers, so the other
    member's records, released on the word, may reach the log before outputs produced ahead of
    them (the bound's "on its way to Kafka").  Under load (two busy processes beside), in log
    order the exactly-once test measured 160 s in one run of six and 260 s in one of 18, with
    nothing processed again; the latter run measured 60 s in produce order."""
    ordered = sorted(records, key=lambda r: (r[0], r[1])) if produced else records  # (read in log order)
    seen: set[str] = set()
    latest, worst = float("-inf"), 0.0
    for _, _, event in ordered:
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        at = event.occurred_at.timestamp()
        if event.event_id not in again:
            worst = max(worst, latest - at)
        latest = max(latest, at)
    assert len(seen) == n
    return worst


@pytest.mark.parametrize("peer_skew_s", [None, PEER_SKEW_S], ids=["alone", "with-peers"])
def test_a_member_writes_no_further_ahead_of_the_slowest_than_the_peer_skew(
    settings: Settings,
    names: Callable[[str], str],
    run_app: Callable[[Application], Running],
    peer_skew_s: float | None,
) -> None:
    source, output, name = backlog_of(settings, names, N)
    slow, fast = Forward(output, per_record_s=0.004), Forward(output)
    first = run_app(member(settings, name, source, slow, "slow", peer_skew_s))
    wait_for(lambda: bool(first.errors) or slow.handed >= 40, 60, "the slow member under way")
    second = run_app(member(settings, name, source, fast, "fast", peer_skew_s))
    wait_for(
        lambda: bool(first.errors or second.errors) or written(settings, output) >= N,
        180,
        "the whole backlog written",
    )
    waits = second.app.prometheus.registry.get_sample_value("vigil_stream_peer_waits_total", {"app": name})
    first.stop()
    second.stop()  # (both flushed: the output is complete)
    assert not first.errors
    assert not second.errors
    assert fast.handed > 0  # (it took a partition over: the test below can fail)
    records = outputs(settings, output)
    worst = lateness(records, N)
    if peer_skew_s is None:
        # The newcomer ran through its partition while the slow member was still far behind.
        assert worst > 10 * PEER_SKEW_S
        assert waits == 0
    else:
        assert worst <= PEER_SKEW_S
        # What a consumer reads: the skew and what was on its way to Kafka (a release's span
        # here), an order of magnitude under the case alone.
        assert lateness(records, N, produced=False) < 10 * PEER_SKEW_S
        assert waits is not None
        assert waits > 0  # the newcomer waited for the slow member


COUNTS = StoreSpec("counts", 1)


class Counting(Operator[Payment]):
    """Counts payments per customer in a store (so a partition taken over is restored first).
    It writes nothing: an operator with a store is handed each partition's release in a call of
    its own, and what it wrote would be a release's span out of order within one process."""

    id = "counting"
    stores = (COUNTS,)

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        state = ctx.state(COUNTS)
        for rec in batch:
            customer = rec.event.entities.customer or "?"
            state.set(customer, state.get(customer, 0) + 1)


@pytest.mark.parametrize("peer_skew_s", [None, PEER_SKEW_S], ids=["alone", "with-peers"])
def test_exactly_once_a_newcomer_restoring_a_store_says_where_its_partition_stands(
    settings: Settings,
    names: Callable[[str], str],
    run_app: Callable[[Application], Running],
    tmp_path: Path,
    peer_skew_s: float | None,
) -> None:
    # The same, exactly-once with a store whose changelog takes a while to restore: while the
    # newcomer restores, it says the partition's last owner's word again (else the slow member
    # ran ahead of it), and its words are made in the restoring partitions' loop (compiled, that
    # loop raised TypeError: found by the unit test).
    source, output, name = backlog_of(settings, names, N)
    ensure_topics(settings, [changelog_spec(name, COUNTS.id, 2)], owned=True)
    junk = Producer(producer_config(settings, **{"linger.ms": 50}))
    for i in range(200_000):  # (keys no customer has: the counts stay right)
        junk.produce(changelog_topic(name, COUNTS.id), b"0", f"junk-{i}", partition=i % 2)
        if i % 10_000 == 0:
            junk.poll(0)
    assert junk.flush(60) == 0
    slow, fast = Forward(output, per_record_s=0.004), Forward(output)
    first = run_app(
        member(
            home_at(settings, tmp_path / "slow"),
            name,
            source,
            slow,
            "slow",
            peer_skew_s,
            "exactly_once",
            True,
        )
    )
    wait_for(lambda: bool(first.errors) or slow.handed >= 40, 120, "the slow member under way")
    second = run_app(
        member(
            home_at(settings, tmp_path / "fast"),
            name,
            source,
            fast,
            "fast",
            peer_skew_s,
            "exactly_once",
            True,
        )
    )
    wait_for(
        lambda: bool(first.errors or second.errors) or written(settings, output) >= N,
        180,
        "the whole backlog written",
    )
    first.stop()
    second.stop()
    assert not first.errors
    assert not second.errors
    assert fast.handed > 0
    assert second.app.metrics.restored_records > 0  # (it restored before it read)
    records = outputs(settings, output)
    if peer_skew_s is None:
        assert lateness(records, N) > 10 * PEER_SKEW_S
    else:
        # What a checkpoint refused at the rebalance held comes again late (seen in CI: 260 s,
        # ILLEGAL_GENERATION logged); everything else is judged.  At most a checkpoint or two of
        # work is processed again (a release holds at most 20 records a partition; 34 seen).
        again = processed_again(slow, fast)
        assert len(again) <= N // 5
        assert lateness(records, N, again) <= PEER_SKEW_S
        assert lateness(records, N, again, produced=False) < 10 * PEER_SKEW_S  # (as above)
