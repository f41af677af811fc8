"""One record's attempt under the dead-letter policy: all or nothing, including its sends."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from vigil.events.base import Event
from vigil.events.types import Login
from vigil.stream.attempt import Attempt, attempt
from vigil.stream.base import Context, Record, State, StoreSpec
from vigil.testing import MemoryState

STORE = StoreSpec("s", 1)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Sink:
    """A context whose second send fails, as producing an event too large for the topic does."""

    def __init__(self) -> None:
        self.state_ = MemoryState()
        self.sent: list[str] = []

    @property
    def partition(self) -> int:
        return 0

    def state(self, store: StoreSpec) -> State:
        return self.state_

    def emit(self, topic: str, event: Event, key: str | None = None) -> None:
        if self.sent:
            raise ValueError("message too large")
        self.sent.append(topic)

    def forward(self, topic: str, record: Record[Any], key: str) -> None:
        self.emit(topic, record.event, key)

    def dead_letter(
        self, record: Record[Any], reason: str, headers: list[tuple[str, bytes | None]] | None = None
    ) -> None: ...

    def late(self, record: Record[Any]) -> None: ...


def test_a_send_that_fails_fails_the_record_and_puts_its_state_back() -> None:
    sink = Sink()
    sink.state_.set("n", 0)

    def process(batch: Sequence[Record[Any]], ctx: Context) -> None:
        state = ctx.state(STORE)
        state.set("n", state.get("n") + 1)
        ctx.emit("a", batch[0].event)
        ctx.emit("b", batch[0].event)

    rec: Record[Any] = Record(Login(event_id="e1", source="t", occurred_at=T0), "in", 0, 0, None, 0)
    error = attempt(process, rec, Attempt(sink))
    assert error == "ValueError: message too large"
    assert sink.state_.get("n") == 0
    assert sink.sent == ["a"]  # sent before the failure: at least once, as when sent at once


def test_a_send_refused_for_the_transaction_is_raised_not_the_records_failure() -> None:
    # An earlier record the broker refused leaves the transaction to be aborted: the runtime
    # aborts and processes again; dead-lettered, the record was lost with the transaction.
    sink = Sink()
    sink.state_.set("n", 0)
    refused = KafkaException(KafkaError(KafkaError._STATE, "to be aborted", txn_requires_abort=True))

    def process(batch: Sequence[Record[Any]], ctx: Context) -> None:
        state = ctx.state(STORE)
        state.set("n", state.get("n") + 1)
        raise refused

    rec: Record[Any] = Record(Login(event_id="e1", source="t", occurred_at=T0), "in", 0, 0, None, 0)
    with pytest.raises(KafkaException) as raised:
        attempt(process, rec, Attempt(sink))
    assert raised.value is refused
    assert sink.state_.get("n") == 0  # (put back first)
    # Any other Kafka error is the record's.
    other = KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "too large"))

    def fails(batch: Sequence[Record[Any]], ctx: Context) -> None:
        raise other

    assert attempt(fails, rec, Attempt(sink)) == f"KafkaException: {other}"


def test_a_value_changed_in_place_in_a_way_equality_misses_is_put_back() -> None:
    # A key only read is put back when it changed in place; "changed" was ``!=``, which a dict
    # reordered (a recency map) and 1 -> 1.0 both pass, so the failed record's change stayed.
    sink = Sink()
    sink.state_.set("recent", {"a": 1, "b": 1, "c": 1})
    sink.state_.set("n", 1)

    def process(batch: Sequence[Record[Any]], ctx: Context) -> None:
        state = ctx.state(STORE)
        recent = state.get("recent")
        recent["a"] = recent.pop("a")  # "a" used: to the back
        raise ValueError("later step failed")

    def touch_n(batch: Sequence[Record[Any]], ctx: Context) -> None:
        state = ctx.state(STORE)
        state.get("n")
        sink.state_.data["n"] = 1.0  # changed without a set, as an update in place is
        raise ValueError("later step failed")

    rec: Record[Any] = Record(Login(event_id="e1", source="t", occurred_at=T0), "in", 0, 0, None, 0)
    trial = Attempt(sink)
    assert attempt(process, rec, trial) == "ValueError: later step failed"
    assert list(sink.state_.get("recent")) == ["a", "b", "c"]
    assert attempt(touch_n, rec, trial) == "ValueError: later step failed"
    assert type(sink.state_.get("n")) is int
