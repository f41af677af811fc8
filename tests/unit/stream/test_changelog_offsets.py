"""Restore asks for every changelog partition's end offsets at once, asks again for those whose
just-created topic is still electing its leader, and fails with the partition named on anything else.

The broker's transient answer can't be produced on demand, so a stand-in admin client injects it."""

from __future__ import annotations

import time
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import OffsetSpec

from vigil.errors import PipelineError
from vigil.stream.changelog import end_offsets

OFFSETS = {"earliest": 3, "latest": 42}
LATEST = type(OffsetSpec.latest())


class Answers:
    """An admin client whose list_offsets fails a partition with the errors queued for it, then
    answers (earliest 3, latest 42 + the partition number)."""

    def __init__(self, errors: dict[int, list[int]]) -> None:
        self.errors = errors
        self.requests: list[list[int]] = []

    def list_offsets(self, specs: dict[TopicPartition, Any], **_: Any) -> dict[TopicPartition, Future[Any]]:
        self.requests.append(sorted(tp.partition for tp in specs))
        out: dict[TopicPartition, Future[Any]] = {}
        for tp, spec in specs.items():
            future: Future[Any] = Future()
            queued = self.errors.get(tp.partition, [])
            latest = isinstance(spec, LATEST)
            if queued:
                future.set_exception(KafkaException(KafkaError(queued[0])))
                if latest:  # one error per round (the round asks earliest, then latest)
                    queued.pop(0)
            else:
                offset = OFFSETS["latest"] + tp.partition if latest else OFFSETS["earliest"]
                future.set_result(SimpleNamespace(offset=offset))
            out[tp] = future
        return out


def test_all_partitions_in_one_round_and_those_without_a_leader_again() -> None:
    admin = Answers({2: [KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE]})
    parts = [("app.changelog.s", p) for p in range(4)]
    got = end_offsets(admin, parts, time.monotonic() + 30)  # type: ignore[arg-type]
    assert got == {tp: (3, 42 + tp[1]) for tp in parts}
    # Two requests (earliest, latest) per round: all four, then only the one without a leader.
    assert admin.requests == [[0, 1, 2, 3], [0, 1, 2, 3], [2], [2], [2], [2]]


def test_other_errors_and_the_deadline_fail_naming_the_partition() -> None:
    with pytest.raises(PipelineError, match=r"app\.changelog\.s\[1\]"):
        end_offsets(
            Answers({1: [KafkaError.TOPIC_AUTHORIZATION_FAILED]}),  # type: ignore[arg-type]
            [("app.changelog.s", 0), ("app.changelog.s", 1)],
            time.monotonic() + 30,
        )
    never = Answers({0: [KafkaError.NOT_LEADER_FOR_PARTITION] * 100})
    with pytest.raises(PipelineError, match="could not read their end offsets"):
        end_offsets(never, [("app.changelog.s", 0)], time.monotonic() + 2.0)  # type: ignore[arg-type]
    assert 2 < len(never.requests) < 200
