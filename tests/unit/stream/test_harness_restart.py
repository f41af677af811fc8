"""A harness restart (``run_operators(result=...)``) opens each store as a restarted process
opens it: a new object, read back as the operators given now declare it; and it says when a
value was changed in place where the runtime would not save the change."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np
import pytest

from vigil.errors import PipelineError
from vigil.events.base import Entities
from vigil.events.types import Payment, PaymentPayload
from vigil.stream.base import Context, Operator, Record, StoreSpec, events_of
from vigil.stream.vectorised import SlidingCountSum
from vigil.stream.windows import Count, Window, WindowedAggregate
from vigil.testing import HarnessResult, MemoryState, run_operators

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def payment(i: int) -> Payment:
    return Payment(
        event_id=f"p{i}",
        source="t",
        occurred_at=T0 + timedelta(seconds=i),
        entities=Entities(customer="c0"),
        payload=PaymentPayload(payment_id=f"p{i}", amount=1.0, currency="USD"),
    )


class Velocity(Operator[Payment]):
    """Its window made with it, as a rule's is: a restarted process makes it again."""

    id = "velocity.v1"

    def __init__(self) -> None:
        self.window = WindowedAggregate(StoreSpec("velocity", 1), Window.sliding("1m"), {"n": Count()})
        self.stores = (self.window.store,)
        self.seen: list[int] = []

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        state = ctx.state(self.window.store)
        for rec in batch:
            result = self.window.update(state, rec.event.key() or "", rec.event.occurred_at, 1)
            self.seen.append(result[0].values["n"])


class BatchVelocity(Operator[Payment]):
    id = "batch-velocity.v1"

    def __init__(self) -> None:
        self.window = SlidingCountSum(StoreSpec("batch-velocity", 1), "1m")
        self.stores = (self.window.store,)
        self.seen: list[int] = []

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        events = events_of(batch)
        cols = self.window.update(
            ctx.state(self.window.store),
            [e.key() or "" for e in events],
            [e.occurred_at for e in events],
            np.ones(len(events)),
        )
        self.seen.extend(cols.count.tolist())


@pytest.mark.parametrize("kind", [Velocity, BatchVelocity])
def test_a_restart_with_operators_made_again_carries_on_their_windows(kind: type[Velocity]) -> None:
    # The first run's operator still held (a test that checks it after): before, its window
    # still held the store object the restart kept, and the new one was refused ("store
    # 'velocity.v1' is updated by two windows"), where the runtime opens a new store.
    first = kind()
    result = run_operators([first], [payment(0), payment(1)])
    assert first.seen == [1, 2]
    old = next(iter(result.states.values()))
    again = kind()
    run_operators([again], [payment(2), payment(3)], result=result)
    assert again.seen == [3, 4]
    assert old.closed
    assert next(iter(result.states.values())) is not old


class V1(msgspec.Struct):
    n: int


class V2(msgspec.Struct):
    n: int
    total: float = 0.0


class V3(msgspec.Struct):
    n: int
    owner: str


class Profile(Operator[Payment]):
    id = "profile.v1"

    def __init__(self, value_type: type) -> None:
        self.value_type = value_type
        self.stores = (StoreSpec("profile", 1, value_type=value_type),)
        self.types: list[str] = []

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        state = ctx.state(self.stores[0])
        for _ in batch:
            old = state.get("c0")
            self.types.append(type(old).__name__)
            state.set("c0", V1(n=1) if self.value_type is V1 else V2(n=1))


def test_a_restart_reads_state_back_as_the_operators_declare_it_now() -> None:
    result = run_operators([Profile(V1)], [payment(0)])
    # A field added with a default: read back as the new type (it stayed V1 before).
    second = Profile(V2)
    run_operators([second], [payment(1)], result=result)
    assert second.types == ["V2"]
    # A field added without one: refused, naming the store, its key and what to do, as the
    # runtime refuses it (before, the old type was kept and the test passed).
    with pytest.raises(PipelineError) as raised:
        run_operators([Profile(V3)], [payment(2)], result=result)
    text = str(raised.value)
    assert "store 'profile.v1', partition 0: the stored value of key 'c0' does not decode to 'V3'" in text
    assert "bump StoreSpec.version" in text


def test_a_value_read_back_and_left_alone_is_not_taken_for_one_changed_in_place() -> None:
    # Saved as a dict, read back as a struct whose default reading back fills in: the same value.
    state = MemoryState(V2)
    state.set("k", {"n": 1})
    state.reload()
    assert state.get("k") == V2(n=1, total=0.0)
    assert state.changed_in_place() == []
    state.get("k").__setattr__("n", 2)  # (changed in place, no set)
    assert state.changed_in_place() == ["k"]
    state.set("k", state.get("k"))
    assert state.changed_in_place() == []


@pytest.mark.parametrize(
    ("name", "version", "problem"),
    [
        ("velocity per account (5m)", 1, "expected letters, digits"),
        ("", 1, "expected letters, digits"),
        ("ok", -1, "version must be a whole number"),
        ("ok", True, "version must be a whole number"),
        ("x" * 240, 1, "at most 237"),
    ],
)
def test_a_store_kafka_could_not_name_a_changelog_after_is_refused_when_declared(
    name: str, version: int, problem: str
) -> None:
    # The harness ran such a store; the runtime refused the application made of it.
    with pytest.raises(ValueError, match=problem):
        StoreSpec(name, version)


class Tally(Operator[Payment]):
    id = "tally.v1"
    stores = (StoreSpec("tally", 1),)

    def process(self, batch: Sequence[Record[Payment]], ctx: Context) -> None:
        state = ctx.state(self.stores[0])
        for _ in batch:
            state.set("c0", (state.get("c0") or 0) + 1)


def test_a_store_held_from_before_a_restart_is_closed() -> None:
    # It read what it held before (2, where the store now holds 4) and took writes that went
    # nowhere; RocksDB-backed state raises once closed.
    result = run_operators([Tally()], [payment(0), payment(1)])
    kept = result.states["tally.v1", 0]
    run_operators([Tally()], [payment(2), payment(3)], result=result)
    assert result.states["tally.v1", 0].get("c0") == 4
    uses = (
        lambda: kept.get("c0"),
        lambda: kept.set("c0", 100),
        lambda: kept.delete("c0"),
        lambda: list(kept.items()),
        lambda: kept.walk("", None, 10),
        lambda: kept.data,
    )
    for use in uses:
        with pytest.raises(
            PipelineError, match=r"store 'tally\.v1', partition 0 is closed: a restart opened it afresh"
        ):
            use()


def test_a_store_a_test_made_itself_is_named_after_its_place_at_a_restart() -> None:
    seeded = HarnessResult()
    seeded.states["profile.v1", 0] = state = MemoryState()
    state.set("c0", {"n": 1})
    with pytest.raises(
        PipelineError,
        match=r"^store 'profile\.v1', partition 0: the stored value of key 'c0' does not decode to 'V3'",
    ):
        run_operators([Profile(V3)], [payment(0)], result=seeded)


def test_values_replaced_whole_are_not_taken_for_ones_changed_in_place() -> None:
    state = MemoryState(V2)
    state.set("k", {"n": 1})
    state.reload()
    state.data = {"k": {"n": 1}}  # (a test replacing them all: saved as given at the checkpoint)
    state.checkpoint()
    assert state.changed_in_place() == []
