"""Restore asks a just-created changelog partition for its end offsets again while the broker
is still electing its leader, and fails with the partition named on anything else.

The broker's transient answer can't be produced on demand, so a stand-in consumer injects it."""

from __future__ import annotations

import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from vigil.errors import PipelineError
from vigil.stream.changelog import end_offsets


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


def test_a_partition_without_a_leader_yet_is_asked_again() -> None:
    consumer = Answers(KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)
    assert end_offsets(consumer, "app.changelog.s", 2, time.monotonic() + 30) == (3, 42)
    assert consumer.calls == 3


def test_other_errors_and_the_deadline_fail_naming_the_partition() -> None:
    with pytest.raises(PipelineError, match=r"app\.changelog\.s\[2\]"):
        end_offsets(
            Answers(KafkaError.TOPIC_AUTHORIZATION_FAILED), "app.changelog.s", 2, time.monotonic() + 30
        )
    never = Answers(*[KafkaError.NOT_LEADER_FOR_PARTITION] * 100)
    with pytest.raises(PipelineError, match="could not read its end offsets"):
        end_offsets(never, "app.changelog.s", 2, time.monotonic() + 0.3)
    assert 1 < never.calls < 100
