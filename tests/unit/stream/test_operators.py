"""Operators and helpers through the in-memory harness (no broker)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from confluent_kafka import KafkaException

from vigil.errors import ConfigError
from vigil.events.base import Entities
from vigil.events.types import ChainTransfer, ChainTransferPayload, Payment, PaymentPayload
from vigil.stream.app import Application, check_output
from vigil.stream.base import Context, Operator, Record, StoreSpec
from vigil.stream.repartition import GroupBy, entity_key, group_by
from vigil.stream.windows import Count, Sum, Window, WindowedAggregate
from vigil.testing import HarnessWarning, run_operators

T0 = datetime(2026, 1, 1, tzinfo=UTC)
STORE = StoreSpec("velocity", 1)
AGG = WindowedAggregate(STORE, Window.sliding("5m", lateness="30s"), {"n": Count(), "total": Sum()})


def payment(i: int, customer: str, at: timedelta, amount: float = 10.0, ip: str | None = None) -> Payment:
    return Payment(
        event_id=f"p{i}",
        source="t",
        occurred_at=T0 + at,
        entities=Entities(customer=customer, ip=ip),
        payload=PaymentPayload(payment_id=f"p{i}", amount=amount, currency="USD"),
    )


class Velocity(Operator[Payment]):
    id = "velocity"
    stores = (STORE,)

    def __init__(self) -> None:
        self.hits: list[tuple[str, int, float]] = []

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        state = ctx.state(STORE)
        for rec in batch:
            res = AGG.update(state, rec.event.key() or "", rec.event.occurred_at, rec.event.payload.amount)
            if res is None:
                ctx.late(rec)
                continue
            self.hits.append((rec.event.event_id, res[0].values["n"], res[0].values["total"]))


def test_window_helper_in_an_operator_counts_and_reports_late_events() -> None:
    op = Velocity()
    events = [
        payment(1, "c1", timedelta(minutes=0), 5),
        payment(2, "c1", timedelta(minutes=2), 7),
        payment(3, "c1", timedelta(minutes=6), 1),  # p1 has left the 5-minute window
        payment(4, "c1", timedelta(minutes=5)),  # 60 s behind: later than the 30 s allowed
        payment(5, "c2", timedelta(minutes=6, seconds=1), 3),
    ]
    result = run_operators([op], events, batch_size=2)
    assert op.hits == [("p1", 1, 5.0), ("p2", 2, 12.0), ("p3", 2, 8.0), ("p5", 1, 3.0)]
    assert [r.event.event_id for r in result.late] == ["p4"]


def test_group_by_rekeys_by_entity_and_skips_events_without_it() -> None:
    op, spec = group_by("detect", "ip", partitions=6)
    assert spec.name == "detect.repartition.by-ip"
    assert spec.partitions == 6
    events = [payment(1, "c1", timedelta(0), ip="1.2.3.4"), payment(2, "c2", timedelta(0))]
    result = run_operators([op], events)
    assert [(e.topic, e.key, e.event.event_id) for e in result.emits] == [
        ("detect.repartition.by-ip", "1.2.3.4", "p1")
    ]
    assert op.skipped == 1


def test_group_by_leaves_records_of_its_own_topic_and_empty_keys_alone() -> None:
    # An application reading its own repartition topic hands those records to the GroupBy too:
    # re-keyed again, each event went round the topic without end.  An empty entity is no key.
    op, spec = group_by("detect", "ip", partitions=6)
    events = [
        payment(1, "c1", timedelta(0), ip="1.2.3.4"),
        payment(2, "c2", timedelta(0), ip="5.6.7.8"),
        payment(3, "c3", timedelta(0), ip=""),
    ]
    result = run_operators(
        [op], events, topic_of=lambda e: spec.name if e.event_id == "p2" else "events.payments"
    )
    assert [(e.topic, e.key, e.event.event_id) for e in result.emits] == [(spec.name, "1.2.3.4", "p1")]
    # The contract refuses an empty entity id, so the runtime dead-letters that payment before any
    # operator sees it; a key function of one's own may still make an empty key.
    assert [(dead.event.event_id, "entities.ip" in why) for dead, why in result.dead_letters] == [
        ("p3", True)
    ]
    assert op.skipped == 0
    blank = GroupBy("blank", spec.name, lambda event: "")
    run_operators([blank], events[:1])
    assert blank.skipped == 1


def test_group_by_dead_letters_an_event_too_large_to_re_key_and_goes_on() -> None:
    # The re-keyed record repeats the entity id as its key: a 600 KB device id made a 1.2 MB
    # record, which the producer refused, stopping the application there (and every restart).
    op, spec = group_by("detect", "device", partitions=6)
    huge = "d" * 600_000
    events = [
        payment(1, "c1", timedelta(0)),
        payment(2, "c2", timedelta(0)),
        payment(3, "c3", timedelta(0)),
    ]
    events[0] = msgspec.structs.replace(events[0], entities=Entities(customer="c1", device=huge))
    events[1] = msgspec.structs.replace(events[1], entities=Entities(customer="c2", device="d2"))
    result = run_operators([op], events)
    assert [(e.topic, e.key, e.event.event_id) for e in result.emits] == [(spec.name, "d2", "p2")]
    assert op.refused == 1
    [(dead, why)] = result.dead_letters
    assert dead.event.event_id == "p1"
    assert "group_by 'group-by-device'" in why
    assert "detect.repartition.by-device" in why
    assert "1,200," in why  # the size said (key and value)


def test_two_group_bys_in_one_application_do_not_pass_events_back_and_forth() -> None:
    # Re-keyed by IP and by device, one application reading both topics: a record of the by-ip
    # topic went on to by-device, came back and went to by-ip again, for ever.  Each event is
    # re-keyed once per entity, from the canonical topic only.
    by_ip, ip_spec = group_by("detect", "ip", partitions=6)
    by_device, device_spec = group_by("detect", "device", partitions=6)
    event = payment(1, "c1", timedelta(0), ip="1.2.3.4")
    event = msgspec.structs.replace(event, entities=Entities(customer="c1", ip="1.2.3.4", device="d1"))
    topics = ["events.payments"]
    emitted: list[tuple[str, str | None]] = []
    for _ in range(3):  # each round reads what the last one published
        read = iter(topics)
        result = run_operators(
            [by_ip, by_device], [event] * len(topics), topic_of=lambda _e, read=read: next(read)
        )
        emitted += [(e.topic, e.key) for e in result.emits]
        topics = [e.topic for e in result.emits]
    assert emitted == [(ip_spec.name, "1.2.3.4"), (device_spec.name, "d1")]


PER_IP = StoreSpec("per-ip", 1)


class PerIp(Operator[Payment]):
    """Counts payments per IP from the repartition topic (where an IP's events share a partition)."""

    id = "per-ip"
    stores = (PER_IP,)

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.seen: list[tuple[str, int, str]] = []  # (event id, partition, the record's key)

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        state = ctx.state(PER_IP)
        for rec in batch:
            if rec.topic != self.topic:
                continue  # the canonical input: re-keyed by the GroupBy first
            ip = rec.event.entities.ip or ""
            state.set(ip, state.get(ip, 0) + 1)
            self.seen.append((rec.event.event_id, rec.partition, (rec.key or b"").decode()))


def test_a_group_by_output_read_back_reaches_every_operator_keyed_by_the_entity() -> None:
    # As the runtime reads an application's repartition topics: customers' payments, re-keyed by
    # IP, come back keyed by their IP, and a per-IP count holds all of one IP's payments in one
    # partition's state.  (Before, the harness only collected what the GroupBy emitted.)
    by_ip, spec = group_by("detect", "ip", partitions=4)
    per_ip = PerIp(spec.name)
    ips = ["10.0.0.1", "10.0.0.2", "10.0.0.3", None]
    events = [payment(i, f"c{i % 7}", timedelta(seconds=i), ip=ips[i % 4]) for i in range(40)]
    result = run_operators(
        [by_ip, per_ip],
        events,
        topic="events.payments",
        partitions=4,
        batch_size=6,
        read_back=[spec.name],
    )
    assert sorted(e for e, _, _ in per_ip.seen) == sorted(e.event_id for e in events if e.entities.ip)
    assert all(key == next(e.entities.ip for e in events if e.event_id == eid) for eid, _, key in per_ip.seen)
    counts: dict[str, int] = {}
    for (store, _part), state in result.states.items():
        if store == PER_IP.id:
            for ip, n in state.items():
                assert ip not in counts, f"{ip} counted in two partitions"
                counts[ip] = n
    assert counts == {ip: 10 for ip in ips if ip}
    # Re-keyed once: the GroupBy leaves records of its own topic alone, so the run ends.
    assert len(result.emitted(spec.name)) == 30
    assert result.offsets[(spec.name, per_ip.seen[0][1])] > 0
    with pytest.raises(TypeError, match="a collection of topic names, got the string"):
        run_operators([by_ip], events, read_back=spec.name)


class NaiveCopy(Operator[Payment]):
    """Emits to ``topic`` a copy of each canonical input with a naive time (the contract refuses it)."""

    id = "naive-copy"

    def __init__(self, topic: str) -> None:
        self.topic = topic

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        for rec in batch:
            if rec.topic != self.topic:
                naive = rec.event.occurred_at.replace(tzinfo=None)
                ctx.emit(self.topic, msgspec.structs.replace(rec.event, occurred_at=naive), rec.event.key())


def test_read_back_decodes_as_the_runtime_and_a_loop_fails_instead_of_hanging() -> None:
    # Read back from the bytes, as the runtime reads a topic: an event the runtime could not
    # decode (a naive time) is a dead letter there, not handed on.
    by_ip, spec = group_by("detect", "ip", partitions=2)
    per_ip = PerIp(spec.name)
    naive_time = datetime(2026, 1, 1)  # noqa: DTZ001 (on purpose)
    naive = msgspec.structs.replace(payment(1, "c1", timedelta(0), ip="10.0.0.9"), occurred_at=naive_time)
    good = payment(2, "c2", timedelta(0), ip="10.0.0.9")
    # An input is decoded as the runtime reads it too: dead-lettered on its own topic.
    result = run_operators([by_ip, per_ip], [naive, good], partitions=2, read_back=[spec.name])
    assert [e for e, _, _ in per_ip.seen] == ["p2"]
    ((dead, reason),) = result.dead_letters
    assert (dead.event.event_id, dead.topic, "timezone" in reason) == ("p1", "in", True)
    # What an operator emits to a read-back topic, likewise (a naive copy of a good input).
    per_ip.seen.clear()
    result = run_operators([NaiveCopy(spec.name), per_ip], [good], partitions=2, read_back=[spec.name])
    assert per_ip.seen == []
    ((dead, reason),) = result.dead_letters
    assert (dead.event.event_id, dead.topic, "timezone" in reason) == ("p2", spec.name, True)
    # Two GroupBys that re-publish each other's topics (no internal_prefix) go round for ever:
    # the harness says so rather than hang.
    a = GroupBy("a", "t.a", entity_key("ip"))
    b = GroupBy("b", "t.b", entity_key("ip"))
    with pytest.raises(RuntimeError, match=r"still going round t\.a, t\.b after 100 read-backs"):
        run_operators([a, b], [good], read_back=["t.a", "t.b"])
    # Three fan out: each record goes to two topics, doubling every round (out of memory long
    # before a hundredth round); the same events read back again and again give it away.
    c = GroupBy("c", "t.c", entity_key("ip"))
    with pytest.raises(RuntimeError, match="still going round"):
        run_operators([a, b, c], [good], read_back=["t.a", "t.b", "t.c"])


def test_many_copies_of_one_event_in_a_batch_are_read_back_once_each() -> None:
    # A source's retries: one payment 150 times in one batch, re-keyed once.  (It was taken for
    # a loop: the harness counted reads by event id.)
    by_ip, spec = group_by("detect", "ip", partitions=2)
    per_ip = PerIp(spec.name)
    copies = [payment(1, "c1", timedelta(0), ip="10.0.0.9")] * 150
    result = run_operators([by_ip, per_ip], copies, partitions=2, read_back=[spec.name])
    assert len(per_ip.seen) == 150
    assert len(result.emitted(spec.name)) == 150


def test_entity_key_rejects_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="unknown entity kind 'walet'; expected one of: customer"):
        entity_key("walet")
    transfer = ChainTransfer(
        event_id="t1",
        source="t",
        occurred_at=T0,
        entities=Entities(wallet="0xabc"),
        payload=ChainTransferPayload(
            chain="ethereum",
            tx_hash="0x1",
            block_number=1,
            from_address="0xabc",
            to_address="0xdef",
            asset="ETH",
            value_raw=1,
            decimals=18,
            amount=1e-18,
        ),
    )
    assert entity_key("wallet")(transfer) == "0xabc"
    assert isinstance(GroupBy("g", "t", entity_key("wallet")), Operator)


def test_application_rejects_duplicate_operator_ids_and_bad_guarantee(tmp_path: object) -> None:
    from vigil.config import Settings

    settings = Settings(kafka_bootstrap="127.0.0.1:1")
    with pytest.raises(ConfigError, match=r"duplicate operator ids \['velocity'\]"):
        Application(settings, name="a", inputs=["x"], operators=[Velocity(), Velocity()])
    with pytest.raises(ConfigError, match="guarantee must be exactly_once or at_least_once, got 'maybe'"):
        Application(settings, name="a", inputs=["x"], operators=[], guarantee="maybe")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="expected at least one input topic"):
        Application(settings, name="a", inputs=[], operators=[])


def test_a_store_declared_by_two_operators_is_refused_by_the_application_and_the_harness() -> None:
    # Two joins given one StoreSpec shared their waiting events and watermarks, and each emitted
    # every pair: twice in all (found in review).
    from vigil.config import Settings

    class Other(Velocity):
        id = "velocity-other"

    with pytest.raises(
        ConfigError,
        match=r"more than one operator \{'velocity\.v1': \['velocity', 'velocity-other'\]\}",
    ):
        Application(
            Settings(kafka_bootstrap="127.0.0.1:1"), name="a", inputs=["x"], operators=[Velocity(), Other()]
        )
    with pytest.raises(ValueError, match="stores declared by more than one operator"):
        run_operators([Velocity(), Other()], [])

    # Each with its own: accepted.
    class Own(Velocity):
        id = "velocity-own"
        stores = (StoreSpec("own", 1),)

    Application(
        Settings(kafka_bootstrap="127.0.0.1:1"), name="a", inputs=["x"], operators=[Velocity(), Own()]
    )


class SeenIps(Operator[Payment]):
    """Keeps each customer's IPs in a ``set``: fine in one process, a list after a restart."""

    id = "seen-ips"
    stores = (StoreSpec("seen-ips", 1),)

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        state = ctx.state(self.stores[0])
        for rec in batch:
            ips = state.get(rec.event.key() or "") or set()
            ips.add(rec.event.entities.ip)
            state.set(rec.event.key() or "", ips)


class Tally(msgspec.Struct):
    n: int
    ips: list[str]


class TypedTally(Operator[Payment]):
    id = "typed"
    stores = (StoreSpec("typed", 1, value_type=Tally),)

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        state = ctx.state(self.stores[0])
        for rec in batch:
            tally = state.get(rec.event.key() or "") or Tally(0, [])
            state.set(rec.event.key() or "", Tally(tally.n + 1, [*tally.ips, rec.event.entities.ip or ""]))


def test_a_harness_restart_reads_state_back_as_a_restarted_process_would() -> None:
    first = [payment(1, "c1", timedelta(0), ip="1.1.1.1")]
    later = [payment(2, "c1", timedelta(minutes=1), ip="2.2.2.2")]
    # A set in state comes back from RocksDB as a list: the harness must fail as Kafka would.
    result = run_operators([SeenIps()], first)
    with pytest.raises(AttributeError, match="'list' object has no attribute 'add'"):
        run_operators([SeenIps()], later, result=result)
    # A store that declares its value type gets it back.
    result = run_operators([TypedTally()], first)
    result = run_operators([TypedTally()], later, result=result)
    assert result.states[("typed.v1", 0)].get("c1") == Tally(2, ["1.1.1.1", "2.2.2.2"])


class InPlace(Operator[Payment]):
    """Keeps each customer's payment ids in a list it extends in place, without ``set`` after
    the first: the runtime saves a value when it is set, so a restart loses the rest."""

    id = "in-place"
    stores = (StoreSpec("in-place", 1),)

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        state = ctx.state(self.stores[0])
        for rec in batch:
            ids = state.get(rec.event.key() or "")
            if ids is None:
                state.set(rec.event.key() or "", [rec.event.event_id])
            else:
                ids.append(rec.event.event_id)


def test_a_harness_restart_loses_what_was_changed_in_place_without_a_set() -> None:
    payments = [payment(i, "c1", timedelta(seconds=i)) for i in range(3)]
    # One batch: the checkpoint after it saves the list as it then is, all three ids in it.
    result = run_operators([InPlace()], payments)
    result = run_operators([InPlace()], [], result=result)
    assert result.states[("in-place.v1", 0)].get("c1") == ["p0", "p1", "p2"]
    # A batch each: the ids added in place after the first checkpoint are in no later one, and a
    # restart (RocksDB-backed state, as the runtime's) reads back the first alone.  The harness
    # kept them, so a test passed where production lost state.
    result = run_operators([InPlace()], payments, batch_size=1)
    assert result.states[("in-place.v1", 0)].get("c1") == ["p0", "p1", "p2"]  # until the restart
    # The restart says so (the test's author learns of it here, not from production).
    with pytest.warns(
        HarnessWarning, match=r"store 'in-place\.v1', partition 0: the value of 'c1' was changed in place"
    ):
        result = run_operators([InPlace()], [], result=result)
    assert result.states[("in-place.v1", 0)].get("c1") == ["p0"]
    # Read back, then changed in place again: said again (a value read back is compared with
    # what reading back gives, not with its bytes).
    result = run_operators([InPlace()], payments[1:], result=result, batch_size=1)
    with pytest.warns(HarnessWarning, match="'c1' was changed in place"):
        run_operators([InPlace()], [], result=result)


class Fragile(Operator[Payment]):
    """Counts payments per customer in a list it changes in place, emits, then fails on p3."""

    id = "fragile"
    stores = (StoreSpec("fragile", 1),)
    dead_letter_errors = True

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        state = ctx.state(self.stores[0])
        for rec in batch:
            seen = state.get("c1") or []
            seen.append(rec.event.event_id)
            state.set("c1", seen)
            state.set(rec.event.event_id, True)
            ctx.emit("out", rec.event)
            if rec.event.event_id == "p3":
                raise ValueError("poison")


def test_a_dead_lettered_record_leaves_no_state_change_and_no_output() -> None:
    events = [payment(i, "c1", timedelta(minutes=i)) for i in range(1, 6)]
    result = run_operators([Fragile()], events, batch_size=5)
    # (The reason as the Kafka runtime gives it.)
    assert [(r.event.event_id, reason) for r, reason in result.dead_letters] == [
        ("p3", "operator 'fragile': ValueError: poison")
    ]
    assert [e.event_id for e in result.emitted("out")] == ["p1", "p2", "p4", "p5"]
    state = result.states[("fragile.v1", 0)]
    assert state.get("c1") == ["p1", "p2", "p4", "p5"]  # the in-place append for p3 undone too
    assert state.get("p3") is None


class Reader(Operator[Payment]):
    """Reads a set it never writes, then fails on p2: the set must stay a set."""

    id = "reader"
    stores = (StoreSpec("reader", 1),)
    dead_letter_errors = True

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        state = ctx.state(self.stores[0])
        for rec in batch:
            if rec.event.event_id == "p1":
                state.set("ips", {"1.1.1.1"})
                continue
            assert "1.1.1.1" in state.get("ips")
            state.get("never-written")
            raise ValueError("poison")


def test_a_failed_record_puts_back_only_what_it_changed() -> None:
    events = [payment(i, "c1", timedelta(minutes=i)) for i in (1, 2)]
    result = run_operators([Reader()], events, batch_size=2)
    assert len(result.dead_letters) == 1
    state = result.states[("reader.v1", 0)]
    assert state.get("ips") == {"1.1.1.1"}  # still a set: read, not rewritten
    assert "never-written" not in state.data


def test_a_vectorised_window_under_the_dead_letter_policy_keeps_one_log_per_partition() -> None:
    from vigil.stream.vectorised import SlidingCountSum

    store = StoreSpec("vec", 1)
    window = SlidingCountSum(store, size="5m", lateness="1m")

    class Counting(Operator[Payment]):
        id = "counting"
        stores = (store,)
        dead_letter_errors = True

        def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
            state = ctx.state(store)
            events = [r.event for r in batch]
            window.update(
                state,
                [e.key() or "" for e in events],
                [e.occurred_at for e in events],
                [e.payload.amount for e in events],
            )
            if events[0].event_id == "p5":
                raise ValueError("poison")

    events = [payment(i, "c1", timedelta(seconds=i)) for i in range(1, 200)]
    result = run_operators([Counting()], events, batch_size=50)
    assert [r.event.event_id for r, _ in result.dead_letters] == ["p5"]
    assert len(window._logs) == 1
    # The poison record's entry was undone: the next update counts without it.
    state = next(iter(result.states.values()))
    got = window.update(state, ["c1"], [T0 + timedelta(seconds=200)], [10.0])
    assert int(got.count[0]) == 199  # p1..p199 without p5, plus this one


class Oversized(Operator[Payment]):
    """Emits, for p2, an output larger than the runtime sends (1 MB); records its assignments."""

    id = "oversized"
    stores = ()

    def __init__(self, dead_letter: bool) -> None:
        self.dead_letter_errors = dead_letter
        self.assigned: list[int] = []

    def on_assign(self, ctx: Context) -> None:
        self.assigned.append(ctx.partition)

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        assert self.assigned, "process before on_assign"
        for rec in batch:
            event = rec.event
            if event.event_id == "p2":
                event = msgspec.structs.replace(event, event_id="x" * 1_100_000)
            ctx.emit("out", event)


def test_the_harness_refuses_outputs_the_runtime_refuses_and_assigns_first() -> None:
    # It passed an output over the runtime's limit (the runtime dead-letters the record, or
    # stops), and never called on_assign, which the runtime calls before any batch.
    events = [payment(i, "c1", timedelta(minutes=i)) for i in range(1, 4)]
    lenient = Oversized(dead_letter=True)
    result = run_operators([lenient], events)
    assert lenient.assigned == [0]
    assert [e.event_id for e in result.emitted("out")] == ["p1", "p3"]
    ((record, reason),) = result.dead_letters
    assert record.event.event_id == "p2"
    assert "MSG_SIZE_TOO_LARGE" in reason
    assert "a record of 1,100,1" in reason
    with pytest.raises(KafkaException, match="at most 1,000,000"):
        run_operators([Oversized(dead_letter=False)], events)


class KeyedByDevice(Operator[Payment]):
    """Re-keys every payment by a device id, which one payment has 600 KB of (attacker-chosen)."""

    id = "by-device.v1"
    dead_letter_errors = True

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        for rec in batch:
            device = "d" * 600_000 if rec.event.event_id == "p2" else "d1"
            payload = msgspec.structs.replace(rec.event.payload, payment_id="p" * 500_000)
            ctx.emit("by-device", msgspec.structs.replace(rec.event, payload=payload), key=device)


def test_an_output_over_the_limit_with_its_key_is_refused_naming_the_keys_share() -> None:
    # Only the value was measured: 500 KB of value and 600 KB of key went to the broker, which
    # refused it, failing the checkpoint, and the restart again on the same record.
    events = [payment(i, "c1", timedelta(minutes=i)) for i in range(1, 4)]
    result = run_operators([KeyedByDevice()], events)
    assert [e.event_id for e in result.emitted("by-device")] == ["p1", "p3"]
    ((record, reason),) = result.dead_letters
    assert record.event.event_id == "p2"
    assert "MSG_SIZE_TOO_LARGE" in reason
    assert "(600,000 of them its key); at most 1,000,000" in reason
    # A key of multi-byte characters counts in bytes, as the broker counts it.
    with pytest.raises(KafkaException, match=r"\(1,000,000 of them its key\)"):
        check_output("t", b"v", "\u00e9" * 500_000)
    check_output("t", b"v" * 500_000, "\u00e9" * 249_999)


def test_harness_restarts_carry_offsets_on_and_state_walks_survive_deletes() -> None:
    first = run_operators([Fragile()], [payment(1, "c1", timedelta(0))])
    later = run_operators([Fragile()], [payment(2, "c1", timedelta(minutes=1))], result=first)
    assert later.offsets[("in", 0)] == 2  # the restart's record is offset 1, not 0 again
    state = later.states[("fragile.v1", 0)]
    seen = []
    for key, _ in state.items("p"):
        seen.append(key)
        state.delete("p2")  # deleting a key still to come, as RocksState allows
    assert seen == ["p1", "p2"]
    with pytest.raises(ValueError, match="batch_size and partitions must be at least 1"):
        run_operators([Fragile()], [], batch_size=0)


def test_a_late_event_too_large_for_the_late_topic_is_dead_lettered_and_the_rest_go_on() -> None:
    # An input near the record limit, late: encoded again for the late-events topic it came to
    # over the output limit, and the stage stopped at it, and at every restart.
    op = Velocity()
    big = msgspec.structs.replace(payment(2, "c1", timedelta(minutes=0)), event_id="p2" + "x" * 1_000_000)
    events = [payment(1, "c1", timedelta(minutes=6)), big, payment(3, "c1", timedelta(minutes=4))]
    result = run_operators([op], events, batch_size=1)
    assert [r.event.event_id for r in result.late] == ["p3"]
    ((record, reason),) = result.dead_letters
    assert record.event.event_id == big.event_id
    assert reason.startswith("late, and too large for the late-events topic 'late': a record of ")
    assert [hit[0] for hit in op.hits] == ["p1"]


class CarefulVelocity(Velocity):
    """Velocity under the dead-letter policy, emitting a small mark of each record it is given."""

    id = "careful-velocity"
    dead_letter_errors = True

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        for rec in batch:
            ctx.emit("seen", payment(0, "c0", timedelta(0)), key=f"seen-{rec.offset}")
        super().process(batch, ctx)


def test_a_late_event_too_large_under_the_dead_letter_policy_is_dead_lettered_as_late() -> None:
    # Under the policy the refusal failed the record's attempt: its letter named the client's
    # error, not lateness, and its other effects (its emit) were undone (found in review,
    # 2026-12-07).
    op = CarefulVelocity()
    big = msgspec.structs.replace(payment(2, "c1", timedelta(minutes=0)), event_id="p2" + "x" * 1_000_000)
    events = [payment(1, "c1", timedelta(minutes=6)), big, payment(3, "c1", timedelta(minutes=4))]
    result = run_operators([op], events, batch_size=1)
    ((record, reason),) = result.dead_letters
    assert record.event.event_id == big.event_id
    assert reason.startswith("late, and too large for the late-events topic 'late': a record of ")
    assert [r.event.event_id for r in result.late] == ["p3"]
    assert len(result.emitted("seen")) == 3  # the big record's mark kept
