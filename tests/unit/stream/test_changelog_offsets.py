"""Restore asks for every changelog partition's end offsets, asks again for those whose
just-created topic is still electing its leader, and fails with the partition named on anything else.

The broker's transient answer can't be produced on demand, so a stand-in consumer injects it
(the real one is used by every integration test that reads a topic to its end)."""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import ConfigResource

from vigil.config import Settings
from vigil.errors import PipelineError
from vigil.hub import client
from vigil.stream import changelog
from vigil.stream.changelog import end_offsets


class Answers:
    """A consumer whose get_watermark_offsets fails a partition with the errors queued for it,
    then answers (low 3, high 42 + the partition number)."""

    def __init__(self, errors: dict[int, list[int]]) -> None:
        self.errors = errors
        self.requests: list[int] = []
        self.closed = False
        self.config: dict[str, Any] = {}

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        assert timeout > 0
        self.requests.append(tp.partition)
        queued = self.errors.get(tp.partition, [])
        if queued:
            raise KafkaException(KafkaError(queued.pop(0)))
        return 3, 42 + tp.partition

    def close(self) -> None:
        self.closed = True


class Consumers:
    """What ``make_consumer`` hands out: the stand-ins queued first, fresh ones after."""

    def __init__(self) -> None:
        self.queued: list[Answers] = []
        self.made: list[Answers] = []

    def make(self, settings: Settings, group_id: str, **overrides: Any) -> Answers:
        stand_in = self.queued.pop(0) if self.queued else Answers({})
        stand_in.config = {"group.id": group_id, **overrides}
        self.made.append(stand_in)
        return stand_in


@pytest.fixture
def consumers(monkeypatch: pytest.MonkeyPatch) -> Consumers:
    out = Consumers()
    monkeypatch.setattr(client, "make_consumer", out.make)
    return out


def test_each_partition_once_and_those_without_a_leader_again(consumers: Consumers) -> None:
    consumers.queued.append(
        Answers({2: [KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE]})
    )
    parts = [("app.changelog.s", p) for p in range(4)]
    got = end_offsets(Settings(), parts, time.monotonic() + 30)
    assert got == {tp: (3, 42 + tp[1]) for tp in parts}
    (consumer,) = consumers.made
    assert consumer.requests == [0, 1, 2, 2, 2, 3]
    # The high watermark (read_uncommitted), by a consumer that is closed after.
    assert consumer.config["isolation.level"] == "read_uncommitted"
    assert consumer.closed


def test_other_errors_and_the_deadline_fail_naming_the_partition(consumers: Consumers) -> None:
    consumers.queued.append(Answers({1: [KafkaError.TOPIC_AUTHORIZATION_FAILED]}))
    with pytest.raises(PipelineError, match=r"app\.changelog\.s\[1\].*[Aa]uthoriz"):
        end_offsets(Settings(), [("app.changelog.s", 0), ("app.changelog.s", 1)], time.monotonic() + 30)
    never = Answers({0: [KafkaError.NOT_LEADER_FOR_PARTITION] * 100})
    consumers.queued.append(never)
    with pytest.raises(PipelineError, match="could not read their end offsets"):
        end_offsets(Settings(), [("app.changelog.s", 0)], time.monotonic() + 2.0)
    assert 2 < len(never.requests) < 100
    assert all(c.closed for c in consumers.made)


class Silent:
    """A consumer whose metadata requests wait out their timeout (a frozen broker), or answer."""

    def __init__(self, answers: bool) -> None:
        self.answers = answers
        self.asked: list[tuple[str, float]] = []

    def list_topics(self, topic: str, timeout: float) -> object:
        self.asked.append((topic, timeout))
        if self.answers:
            return object()
        time.sleep(timeout)
        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Broker transport failure"))


@pytest.mark.parametrize("answers", [True, False])
def test_the_leaders_are_asked_in_one_short_budget(monkeypatch: pytest.MonkeyPatch, answers: bool) -> None:
    # Asked inside the assignment callback, 10 s a topic: a frozen broker held `consume` past
    # the session's timeout and the partitions were lost (found in review).
    monkeypatch.setattr(changelog, "_LEADERS_ASK_S", 0.3)
    restorer = changelog.Restorer(Settings(), "a")
    consumer = Silent(answers)
    restorer._consumer = consumer  # type: ignore[assignment]
    began = time.monotonic()
    restorer._know_leaders(["t1", "t2", "t3"])
    assert time.monotonic() - began < 1.0
    if answers:
        assert [topic for topic, _ in consumer.asked] == ["t1", "t2", "t3"]
    else:
        assert [topic for topic, _ in consumer.asked] == ["t1"]  # (none asked after no answer)
    assert all(0 < timeout <= 0.3 for _, timeout in consumer.asked)


class Unanswered:
    """An admin client whose requests are never answered (a frozen broker)."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def _never(self, names: list[str], request_timeout: float) -> dict[object, Future[object]]:
        self.timeouts.append(request_timeout)
        return {name: Future() for name in names}

    def describe_topics(
        self, topics: TopicCollection, request_timeout: float
    ) -> dict[object, Future[object]]:
        return self._never(list(topics.topic_names), request_timeout)

    def describe_configs(
        self, resources: list[ConfigResource], request_timeout: float
    ) -> dict[object, Future[object]]:
        futures = self._never([r.name for r in resources], request_timeout)
        return {r: futures[r.name] for r in resources}


def test_the_topics_ids_and_retention_are_asked_in_one_short_budget(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Asked inside the assignment callback, 30 s each: a frozen broker held `consume` past the
    # session's timeout (found in review).  Unanswered, each has its fallback.
    monkeypatch.setattr(changelog, "_DESCRIBE_ASK_S", 0.4)
    admin = Unanswered()
    began = time.monotonic()
    deadline = began + changelog._DESCRIBE_ASK_S
    with caplog.at_level("WARNING", logger="vigil.stream.changelog"):
        horizons = changelog._horizons(admin, ["t1", "t2"], deadline)  # type: ignore[arg-type]
        ids = changelog._topic_ids(admin, ["t1", "t2"], deadline)  # type: ignore[arg-type]
    assert time.monotonic() - began < 1.0
    assert ids == {}  # (judged by offsets alone)
    default = changelog._horizon(changelog.DEFAULT_DELETE_RETENTION_S)
    assert horizons == {"t1": default, "t2": default}  # (Kafka's default)
    assert all(0 < timeout <= 0.4 for timeout in admin.timeouts)
    said = [r.getMessage() for r in caplog.records]
    assert any("could not read delete.retention.ms (no answer in time)" in m for m in said)
    assert any("could not read the topics' ids (no answer in time)" in m for m in said)
