"""Operators that need their records in event-time order across partitions (a join, a
``GroupBy``) ask their application to align its inputs, and the harness hands them records as
the aligned runtime does (the runtime on a broker: tests/integration/stream/test_alignment.py)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from vigil.config import load_settings
from vigil.errors import ConfigError, PipelineError
from vigil.events.base import Entities, Event
from vigil.events.codec import decode_event
from vigil.events.types import Payment, PaymentPayload
from vigil.stream.app import Application
from vigil.stream.base import Context, Operator, Record, StoreSpec
from vigil.stream.join import IntervalJoin
from vigil.stream.repartition import REKEY_SKEW_S, GroupBy, entity_key, group_by
from vigil.stream.windows import Count, Window, WindowedAggregate
from vigil.testing import run_operators

T0 = datetime(2026, 1, 1, tzinfo=UTC)
REKEYED = "app.repartition.by-ip"


def _join(**kw: Any) -> IntervalJoin:
    return IntervalJoin(
        "j", StoreSpec("j", 1), left="logins", right="payments", within="2m", on_match=lambda *_: None, **kw
    )


def _app(tmp_path: Path, operators: Sequence[Operator[Any]], **kw: Any) -> Application:
    return Application(
        load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path),
        name="a",
        inputs=["logins", "payments"],
        operators=operators,
        **kw,
    )


def test_a_join_turns_alignment_on_within_its_max_skew(tmp_path: Path) -> None:
    app = _app(tmp_path, [_join(max_skew="10m")])
    assert app.max_event_time_skew_s == 600
    assert app.aligned_for == ["j"]


def test_a_group_by_turns_it_on_and_the_smallest_skew_asked_wins(tmp_path: Path) -> None:
    by_ip = GroupBy("by-ip", REKEYED, entity_key("ip"))
    assert _app(tmp_path, [by_ip]).max_event_time_skew_s == REKEY_SKEW_S
    both = _app(tmp_path, [_join(max_skew="2h"), by_ip])
    assert both.max_event_time_skew_s == REKEY_SKEW_S
    assert both.aligned_for == ["by-ip", "j"]


def test_an_application_s_own_skew_is_kept(tmp_path: Path) -> None:
    app = _app(tmp_path, [_join()], max_event_time_skew_s=5)
    assert app.max_event_time_skew_s == 5
    assert app.aligned_for == []


def test_operators_that_ask_nothing_leave_alignment_off(tmp_path: Path) -> None:
    app = _app(tmp_path, [GroupBy("by-ip", REKEYED, entity_key("ip"), event_time_skew_s=None)])
    assert app.max_event_time_skew_s is None


def test_a_skew_an_operator_cannot_ask_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"operator 'by-ip' asks for an event_time_skew_s of -1"):
        _app(tmp_path, [GroupBy("by-ip", REKEYED, entity_key("ip"), event_time_skew_s=-1)])


# ----------------------------------------------------------------- the harness, aligned

PER_IP = StoreSpec("per-ip", 1)
WINDOW = WindowedAggregate(PER_IP, Window.tumbling("1m", lateness="5s"), {"n": Count()})


class PerIp(Operator[Event]):
    """A window over the re-keyed events (the application reads its own repartition topic)."""

    id = "per-ip"
    stores = (PER_IP,)

    def process(self, batch: Sequence[Record[Event]], ctx: Context) -> None:
        state = ctx.state(PER_IP)
        for rec in batch:
            rekeyed = rec.topic == REKEYED and rec.key is not None
            if rekeyed and WINDOW.update(state, rec.key.decode(), rec.event.occurred_at) is None:
                ctx.late(rec)


def _payments(n: int) -> list[Payment]:
    rng = random.Random(3)
    return [
        Payment(
            event_id=f"p{i}",
            source="t",
            occurred_at=T0 + timedelta(seconds=i),
            entities=Entities(customer=f"c{rng.randint(0, 30)}", ip=f"10.0.0.{rng.randint(0, 4)}"),
            payload=PaymentPayload(payment_id=f"p{i}", amount=1.0, currency="USD"),
        )
        for i in range(n)
    ]


def test_the_harness_re_keys_in_event_time_order_as_the_aligned_runtime_does() -> None:
    # Events in time order over three partitions: aligned, the re-keyed topic is written in
    # event-time order and nothing is late; handed over a partition at a time (unaligned, as
    # before), a batch's later partitions re-keyed behind its earlier ones made events late.
    def run(aligned: bool | None) -> int:
        operators = [GroupBy("by-ip", REKEYED, entity_key("ip"), internal_prefix="app.repartition."), PerIp()]
        result = run_operators(
            operators, _payments(600), partitions=3, batch_size=100, read_back=[REKEYED], aligned=aligned
        )
        assert len(result.emitted(REKEYED)) == 600
        return len(result.late)

    assert run(aligned=None) == 0  # (the GroupBy asks for it)
    assert run(aligned=False) > 0


def test_the_harness_hands_operators_with_state_their_partition_first_then_the_rest_merged() -> None:
    calls: list[tuple[str, int, list[str]]] = []

    class Seen(Operator[Event]):
        def __init__(self, id: str, stores: tuple[StoreSpec, ...]) -> None:
            self.id, self.stores = id, stores

        def process(self, batch: Sequence[Record[Event]], ctx: Context) -> None:
            calls.append((self.id, ctx.partition, [rec.event.event_id for rec in batch]))

    events = _payments(6)
    run_operators([Seen("router", ()), Seen("stateful", (PER_IP,))], events, partitions=3, aligned=True)

    by_part: dict[int, list[str]] = {}
    for part, ids in ((p, ids) for op, p, ids in calls if op == "stateful"):
        by_part[part] = ids
    assert [op for op, _, _ in calls] == ["stateful"] * len(by_part) + ["router"]
    assert sorted(by_part) == list(by_part)  # partitions in turn
    router = calls[-1]
    assert router[1] == min(by_part)
    assert router[2] == [e.event_id for e in events]  # every partition's, merged by event time


def test_the_harness_reads_an_empty_key_back_as_kafka_does() -> None:
    class Rekey(Operator[Event]):
        id = "rekey"

        def process(self, batch: Sequence[Record[Event]], ctx: Context) -> None:
            for rec in batch:
                if rec.topic == "in":
                    ctx.emit("again", rec.event, key="")

    keys: list[bytes | None] = []

    class Keys(Operator[Event]):
        id = "keys"

        def process(self, batch: Sequence[Record[Event]], ctx: Context) -> None:
            keys.extend(rec.key for rec in batch if rec.topic == "again")

    run_operators([Rekey(), Keys()], _payments(3), read_back=["again"])
    assert keys == [b"", b"", b""]  # (None before: an operator's rec.key.decode() failed only here)


def test_a_join_or_a_group_by_may_ask_for_no_alignment(tmp_path: Path) -> None:
    # (An input whose records have no occurred_at cannot be aligned.)
    by_ip, _ = group_by("app", "ip", 3, event_time_skew_s=None)
    assert _app(tmp_path, [_join(aligned=False), by_ip]).max_event_time_skew_s is None


def test_aligned_the_harness_stops_at_a_record_without_an_event_time_as_the_runtime_does() -> None:
    def decode(topic: str, value: bytes, key: bytes | None, headers: Any) -> Any:
        return {"control": True} if topic == "control" else decode_event(value)

    events = _payments(4)
    with pytest.raises(
        PipelineError, match=r"\(asked for by 'j'\), records need an `occurred_at`; control\[0\]@0"
    ):
        run_operators(
            [_join()], events, topic_of=lambda e: "control" if e is events[0] else "logins", decode=decode
        )
