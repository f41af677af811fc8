"""The raw sink's failures keep no Kafka client alive (no broker: one that does not answer)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from vigil.config import load_settings
from vigil.errors import BrokerError, chained
from vigil.hub.broker import free_port_block
from vigil.hub.client import drop_frame_locals
from vigil.hub.raw import RawRecord
from vigil.sources.sink import KafkaRawSink

CLIENTS = (Producer, Consumer, AdminClient)


def held_producers(exc: BaseException) -> list[object]:
    """Kafka clients reachable from ``exc``: its frames' locals, and its context's and cause's."""
    found: list[object] = []
    for err in chained(exc):
        tb = err.__traceback__
        while tb is not None:
            found += [v for v in tb.tb_frame.f_locals.values() if isinstance(v, CLIENTS)]
            tb = tb.tb_next
    return found


def test_a_failed_start_keeps_no_producer_alive_in_its_error() -> None:
    # A retry loop that keeps its last failure (the ingest buffer logs it) kept the producer
    # through the error's traceback: a client dialling a dead broker for the life of the process.
    settings = load_settings(kafka_bootstrap=f"127.0.0.1:{free_port_block(1)}")
    sink = KafkaRawSink(settings, source_id="nobody-home", topic_for=lambda _r: "t", timeout_s=1)
    record = RawRecord(source="test", kind="item", value=b"v", received_at=datetime.now(UTC), key=b"k")
    with pytest.raises(BrokerError, match="cannot start a Kafka transaction") as info:
        sink.publish([record])
    assert held_producers(info.value) == []
    sink.close()


def test_a_failed_cursor_read_or_topic_check_keeps_no_client_alive_in_its_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before the producer: the cursor topic is checked (an admin client), the cursor read (a
    # consumer and an admin client).  The admin client lived on in the error, dialling.
    monkeypatch.setattr("vigil.hub.admin._TIMEOUT", 1.0)  # the broker's silence, sooner
    settings = load_settings(kafka_bootstrap=f"127.0.0.1:{free_port_block(1)}")
    sink = KafkaRawSink(settings, source_id="nobody-home", topic_for=lambda _r: "t", timeout_s=1)
    with pytest.raises(BrokerError) as info:
        sink.last_cursor("nobody-home")
    assert held_producers(info.value) == []
    sink.close()


def test_dropping_an_errors_locals_leaves_a_suspended_generator_running() -> None:
    # frame.clear() on a suspended generator's frame closes it: an error a generator caught
    # and kept (its context chain reaching the generator's frame) must not end the generator.
    def counting() -> Iterator[int]:
        n = 0
        while True:
            try:
                raise ValueError(n)
            except ValueError as exc:
                kept.append(exc)
            n += 1
            yield n

    kept: list[BaseException] = []
    numbers = counting()
    assert next(numbers) == 1
    try:
        raise BrokerError("outer")
    except BrokerError as exc:
        exc.__context__ = kept[0]
        drop_frame_locals(exc)
    assert next(numbers) == 2
