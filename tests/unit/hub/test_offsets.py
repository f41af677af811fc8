"""Offset queries ask again while a just-created partition elects its leader, and fail naming the
partition on anything else.  librdkafka answers a watermark query of such a partition with
NOT_LEADER_FOR_PARTITION without flagging it retriable (seen in CI), so the code decides.

The broker's transient answer can't be produced on demand, so a stand-in consumer injects it."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from vigil.errors import BrokerError
from vigil.hub.client import is_transient, watermarks


class Answers:
    """A consumer whose get_watermark_offsets raises the given errors, then answers."""

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.calls = 0

    def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
        self.calls += 1
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0)))
        return (3, 42)


def test_not_leader_is_transient_though_not_flagged_retriable() -> None:
    error = KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION)
    assert not error.retriable()
    assert is_transient(KafkaException(error))
    assert not is_transient(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))


def test_a_partition_without_a_leader_yet_is_asked_again() -> None:
    consumer = Answers(KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)
    assert watermarks(consumer, TopicPartition("t", 2)) == (3, 42)  # type: ignore[arg-type]
    assert consumer.calls == 3


def test_other_errors_and_the_deadline_fail_naming_the_partition() -> None:
    with pytest.raises(BrokerError, match=r"offsets of t\[2\]"):
        watermarks(Answers(KafkaError.TOPIC_AUTHORIZATION_FAILED), TopicPartition("t", 2))  # type: ignore[arg-type]
    never = Answers(*[KafkaError.NOT_LEADER_FOR_PARTITION] * 100)
    with pytest.raises(BrokerError, match=r"offsets of t\[2\]"):
        watermarks(never, TopicPartition("t", 2), timeout_s=2.0)  # type: ignore[arg-type]
    assert 1 < never.calls < 100
