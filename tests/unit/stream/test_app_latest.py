"""Reading from the latest (``auto.offset.reset=latest``): where a partition with nothing
committed starts is taken at its assignment and committed before anything of it is processed
(the runtime against a real broker: tests/integration/stream/test_kill.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from tests.unit.stream.offline import offline_app

from vigil.stream.app import Application

NONE = -1001  # (what committed() gives for a partition with nothing committed)
REBALANCING = KafkaError(KafkaError.REBALANCE_IN_PROGRESS, "rebalance in progress")
UNSTABLE = KafkaError(KafkaError._TIMED_OUT, "timed out waiting for stable offsets")


class Group:
    """A consumer as the start sees it: committed offsets (``None``: in another producer's open
    transaction, so no stable answer), partition ends, and the commits made."""

    def __init__(self, committed: dict[int, int | None], ends: dict[int, int], refuse: int = 0) -> None:
        self.offsets = committed
        self.ends = ends
        self.refuse = refuse
        self.asked: list[list[int]] = []
        self.commits: list[list[tuple[int, int]]] = []

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.asked.append([tp.partition for tp in tps])
        if any(self.offsets[tp.partition] is None for tp in tps):
            raise KafkaException(UNSTABLE)
        return [TopicPartition(tp.topic, tp.partition, self.offsets[tp.partition]) for tp in tps]

    def offsets_for_times(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.ends[tp.partition]) for tp in tps]

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert not asynchronous
        if self.refuse:
            self.refuse -= 1
            raise KafkaException(REBALANCING)
        self.commits.append([(tp.partition, tp.offset) for tp in offsets])


def latest_app(tmp_path: Path, group: Group) -> Application:
    app = offline_app(tmp_path, consumer_overrides={"auto.offset.reset": "latest"})
    app._from_the_end = True  # (run() sets it from the consumer's settings)
    app._consumer = group  # type: ignore[assignment]
    app._producer = object()  # type: ignore[assignment]
    return app


def assigned(*partitions: int) -> list[TopicPartition]:
    return [TopicPartition("in", p) for p in partitions]


def test_a_partition_with_nothing_committed_starts_at_its_end_and_that_is_committed_first(
    tmp_path: Path,
) -> None:
    group = Group({0: NONE, 1: 7}, ends={0: 42, 1: 50})
    app = latest_app(tmp_path, group)
    tps = app._resumed(group, assigned(0, 1))  # type: ignore[arg-type]
    # Partition 1 has a committed offset: the consumer starts there, as it would.
    assert [(tp.partition, tp.offset) for tp in tps] == [(0, 42), (1, -1001)]
    assert app._first_read == {("in", 0): 42}
    app._commit_new_starts()
    assert group.commits == [[(0, 42)]]
    assert app._starts == {}


def test_a_refused_start_is_not_committed_later(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Tried again once records were processed, it could land after a checkpoint's transactional
    # commit past them (the broker refuses a plain commit while a rebalance completes, not a
    # transactional one) and move the committed offset back: processed twice after a restart.
    group = Group({0: NONE}, ends={0: 42}, refuse=1)
    app = latest_app(tmp_path, group)
    app._resumed(group, assigned(0))  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="vigil.stream.app"):
        app._commit_new_starts()
    assert "the start of 1 partitions assigned is uncommitted until their first checkpoint" in caplog.text
    assert "rebalance in progress" in caplog.text
    assert app._starts == {}
    app._commit_new_starts()
    assert group.commits == []


def test_a_partition_without_a_stable_offset_is_left_to_the_consumer_and_holds_no_other_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Partition 1's offsets are in a killed owner's open transaction: asked together, none of
    # the three had an answer, and the start of every one was left to the consumer.
    group = Group({0: NONE, 1: None, 2: 3}, ends={0: 10, 1: 20, 2: 30})
    app = latest_app(tmp_path, group)
    with caplog.at_level(logging.WARNING, logger="vigil.stream.app"):
        tps = app._resumed(group, assigned(0, 1, 2))  # type: ignore[arg-type]
    assert group.asked == [[0, 1, 2], [0], [1], [2]]
    assert [(tp.partition, tp.offset) for tp in tps] == [(0, 10), (1, -1001), (2, -1001)]
    assert app._starts == {("in", 0): 10}
    assert "the start of 1 partitions assigned is uncommitted" in caplog.text


def test_a_partition_lost_with_nothing_committed_starts_where_it_began_and_that_is_committed(
    tmp_path: Path,
) -> None:
    group = Group({0: NONE, 1: NONE}, ends={0: 90, 1: 80})
    app = latest_app(tmp_path, group)
    app._lost_first_read[("in", 0)] = 12
    tps = app._resumed(group, assigned(0, 1))  # type: ignore[arg-type]
    assert [(tp.partition, tp.offset) for tp in tps] == [(0, 12), (1, 80)]
    assert app._starts == {("in", 0): 12, ("in", 1): 80}
    assert app._lost_first_read == {}


def test_from_the_earliest_nothing_more_is_asked(tmp_path: Path) -> None:
    group = Group({0: NONE}, ends={0: 42})
    app = latest_app(tmp_path, group)
    app._from_the_end = False
    tps = app._resumed(group, assigned(0))  # type: ignore[arg-type]
    assert [(tp.partition, tp.offset) for tp in tps] == [(0, -1001)]
    assert group.asked == []
    assert app._starts == {}
