"""Reading from the latest (``auto.offset.reset=latest``): where a partition with nothing
committed starts is taken at its assignment and committed before anything of it is processed
(the runtime against a real broker: tests/integration/stream/test_kill.py)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from tests.unit.stream.offline import Fetched, offline_app

from vigil.events.codec import encode
from vigil.events.examples import example_events
from vigil.stream.app import Application, _PartitionTask, reads_from_the_end
from vigil.stream.collector import Collector

NONE = -1001  # (what committed() gives for a partition with nothing committed)
REBALANCING = KafkaError(KafkaError.REBALANCE_IN_PROGRESS, "rebalance in progress")
UNSTABLE = KafkaError(KafkaError._TIMED_OUT, "timed out waiting for stable offsets")


class Group:
    """A consumer as the start sees it: committed offsets (``None``: in another producer's open
    transaction, so no stable answer), partition ends, and the commits made."""

    def __init__(
        self, committed: dict[int, int | None], ends: dict[int, int], refuse: int = 0, *, waits: bool = False
    ) -> None:
        self.offsets = committed
        self.ends = ends
        self.refuse = refuse
        #: Whether an ask of one partition without a stable offset takes its whole timeout (as
        #: librdkafka's does); else it fails at once.
        self.waits = waits
        self.asked: list[list[int]] = []
        self.commits: list[list[tuple[int, int]]] = []
        self.unassigned: list[int] = []

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.asked.append([tp.partition for tp in tps])
        if any(self.offsets[tp.partition] is None for tp in tps):
            if self.waits and len(tps) == 1:
                time.sleep(timeout)  # (stands for the broker's unanswered ask; nothing waits on it)
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

    def incremental_unassign(self, tps: list[TopicPartition]) -> None:
        self.unassigned += [tp.partition for tp in tps]


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
    assert "committing the start of 1 partition failed; uncommitted until the first checkpoint" in caplog.text
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
    assert "where to start 1 partition assigned is left to the consumer" in caplog.text


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


def test_a_lost_partition_without_a_stable_offset_no_longer_stops_the_application(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Lost with nothing committed, then taken by a member killed mid-checkpoint: its offsets are
    # in that member's open transaction when it comes back.  Asked with the 30 s timeout, the
    # rebalance failed and the application stopped (at the earliest too).
    group = Group({0: None, 1: NONE}, ends={0: 90, 1: 80})
    app = latest_app(tmp_path, group)
    app._from_the_end = False
    app._lost_first_read.update({("in", 0): 12, ("in", 1): 7})
    with caplog.at_level(logging.WARNING, logger="vigil.stream.app"):
        tps = app._resumed(group, assigned(0, 1))  # type: ignore[arg-type]
    assert [(tp.partition, tp.offset) for tp in tps] == [(0, -1001), (1, 7)]
    assert app._lost_first_read == {}
    assert "where to start 1 partition assigned is left to the consumer" in caplog.text


def test_partitions_without_a_stable_offset_hold_the_assignment_a_bounded_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Each such partition asked on its own takes its whole timeout: 24 of them took 2 s, then
    # 12 s, in the rebalance callback, and the group evicts a member that long in it once
    # another joins.  Asking stops at the budget (5 s); the rest is left to the consumer.
    unstable = 24
    group = Group({p: None for p in range(unstable)} | {unstable: NONE}, ends={unstable: 5}, waits=True)
    app = latest_app(tmp_path, group)
    with caplog.at_level(logging.WARNING, logger="vigil.stream.app"):
        tps = app._resumed(group, assigned(*range(unstable + 1)))  # type: ignore[arg-type]
    one_by_one = group.asked[1:]
    assert len(one_by_one) < unstable  # (24 asks of 0.5 s would take 12 s)
    assert [tp.offset for tp in tps] == [-1001] * (unstable + 1)  # (the last one not asked in time)
    assert f"where to start {unstable + 1} partitions assigned is left to the consumer" in caplog.text


def test_a_partition_revoked_before_its_start_is_committed_is_not_committed(tmp_path: Path) -> None:
    # Handed to another member, which may have committed past it by the time this one commits.
    group = Group({0: NONE, 1: NONE}, ends={0: 4, 1: 9})
    app = latest_app(tmp_path, group)
    app._resumed(group, assigned(0, 1))  # type: ignore[arg-type]
    app._owned.update({("in", 0), ("in", 1)})
    app._drop(group, assigned(0))  # type: ignore[arg-type]
    app._commit_new_starts()
    assert group.commits == [[(1, 9)]]


def test_a_partition_whose_end_cannot_be_read_is_left_to_the_consumer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    group = Ending({0: NONE, 1: NONE}, ends={0: 4, 1: 9})
    app = latest_app(tmp_path, group)
    with caplog.at_level(logging.WARNING, logger="vigil.stream.app"):
        tps = app._resumed(group, assigned(0, 1))  # type: ignore[arg-type]
    assert [(tp.partition, tp.offset) for tp in tps] == [(0, 4), (1, -1001)]
    assert app._starts == {("in", 0): 4}
    assert "where to start 1 partition assigned is left to the consumer" in caplog.text
    assert "Broker: Not leader for partition" in caplog.text
    group.fails = True
    with caplog.at_level(logging.WARNING, logger="vigil.stream.app"):
        tps = app._resumed(group, assigned(0, 1))  # type: ignore[arg-type]
    assert [tp.offset for tp in tps] == [-1001, -1001]
    assert "where to start 2 partitions assigned is left to the consumer" in caplog.text


class Ending(Group):
    """Partition 1's end has no answer (its leader moving); ``fails``: the whole lookup fails."""

    fails = False

    def offsets_for_times(self, tps: list[TopicPartition], timeout: float) -> list[Any]:
        if self.fails:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "ends timed out"))
        # (A TopicPartition's error cannot be set from Python: an answer shaped like one.)
        return [
            Answer(tp.topic, tp.partition, -1, KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))
            if tp.partition == 1
            else Answer(tp.topic, tp.partition, self.ends[tp.partition], None)
            for tp in tps
        ]


@dataclass
class Answer:
    topic: str
    partition: int
    offset: int
    error: KafkaError | None


class Consuming(Group):
    """The group's consumer as the loop uses it: one batch, then nothing."""

    def __init__(self, app: Application, batch: list[Fetched], **kw: Any) -> None:
        super().__init__({0: NONE}, ends={0: 40}, **kw)
        self.app = app
        self.batch = batch
        self.processed_at_commit: dict[Any, int] | None = None

    def consume(self, num_messages: int, timeout: float) -> list[Fetched]:
        batch, self.batch = self.batch, []
        return batch

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.processed_at_commit = dict(self.app._next_offsets)
        super().commit(offsets=offsets, asynchronous=asynchronous)


def test_the_start_is_committed_before_the_first_batch_of_the_partition_is_processed(tmp_path: Path) -> None:
    app = offline_app(tmp_path, consumer_overrides={"auto.offset.reset": "latest"}, checkpoint_interval_s=600)
    value = encode(example_events(datetime(2026, 1, 1, tzinfo=UTC))[0])
    consumer = Consuming(app, [Fetched(0, 40, value), Fetched(0, 41, value)])
    app._from_the_end = True
    app._consumer = consumer  # type: ignore[assignment]
    app._producer = object()  # type: ignore[assignment]
    app._resumed(consumer, assigned(0))  # type: ignore[arg-type]
    app._tasks[0] = _PartitionTask(0)
    app._owned.add(("in", 0))
    app._last_checkpoint = app._last_gauges = time.monotonic()
    app._iterate(consumer, Collector(None))  # type: ignore[arg-type]
    assert consumer.commits == [[(0, 40)]]
    assert consumer.processed_at_commit == {}  # (committed before the batch was processed)
    assert app._next_offsets == {("in", 0): 42}


@pytest.mark.parametrize(
    ("setting", "from_the_end"),
    [
        ("latest", True),
        ("LARGEST", True),
        ("end", True),
        ("earliest", False),
        ("smallest", False),
        ("", False),
    ],
)
def test_which_settings_read_from_the_end(setting: str, from_the_end: bool) -> None:
    assert reads_from_the_end({"auto.offset.reset": setting} if setting else {}) is from_the_end
