"""One alignment pass of the runtime (``Application._align``) with a stand-in consumer: what is
paused is decided on what the release left, and partitions whose records left could not be asked
take their turns (the decision itself: tests/unit/stream/test_alignment.py)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from tests.unit.stream.offline import Nothing, offline_app

from vigil.stream.alignment import Alignment
from vigil.stream.app import _KafkaContext, _PartitionTask
from vigil.stream.base import Context, Record

A = ("in", 0)
B = ("in", 1)
NONE = -1001  # (what committed() gives for a partition with nothing committed)


class Reading:
    """A consumer with 1,000 records left in each partition (its position as consumed): it
    notes what it was told to pause and resume, and which partitions' committed offsets it was
    asked (those in ``failing`` give no answer)."""

    def __init__(self, failing: frozenset[int] = frozenset()) -> None:
        self.failing = failing
        self.paused: list[tuple[str, int]] = []
        self.resumed: list[tuple[str, int]] = []
        self.asked: list[int] = []

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, NONE) for tp in tps]

    def get_watermark_offsets(self, tp: TopicPartition, **_: Any) -> tuple[int, int]:
        return (0, 1000)

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.asked += [tp.partition for tp in tps]
        if any(tp.partition in self.failing for tp in tps):
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "no stable offsets"))
        return [TopicPartition(tp.topic, tp.partition, 0) for tp in tps]

    def pause(self, tps: list[TopicPartition]) -> None:
        self.paused += [(tp.topic, tp.partition) for tp in tps]

    def resume(self, tps: list[TopicPartition]) -> None:
        self.resumed += [(tp.topic, tp.partition) for tp in tps]


class Seen(Nothing):
    id = "seen"

    def __init__(self) -> None:
        self.offsets: list[tuple[int, int]] = []

    def process(self, batch: Sequence[Record[Any]], ctx: Context) -> None:
        self.offsets += [(rec.partition, rec.offset) for rec in batch]


def _record(tp: tuple[str, int], offset: int, at: float) -> tuple[float, Record[Any]]:
    event = SimpleNamespace(occurred_at=datetime.fromtimestamp(at, UTC))
    return at, Record(event, tp[0], tp[1], offset, None, 0)


def owning(app: Any, op: Seen, tps: list[tuple[str, int]], now: float) -> None:
    """``app`` owning ``tps`` (aligned from ``now``), ``op`` its operator on each."""
    app.alignment.add(tps, now)
    for _, part in tps:
        task = _PartitionTask(part)
        task.contexts = [(op, _KafkaContext(app, task, op))]
        app._tasks[part] = task
    app._owned.update(tps)


def test_a_partition_is_paused_for_what_it_buffers_after_the_release_not_before(tmp_path: Path) -> None:
    # B is ahead of A by more than the skew, and buffers 30 records against a bound of 10; but
    # 29 of them are at or before A's time, released in this very pass.  Counted before the
    # release, B was paused, and resumed at the next pass: a refetch of all it had prefetched.
    op = Seen()
    app = offline_app(tmp_path, operators=[op])
    app.alignment = alignment = Alignment(10.0, 60.0, max_buffered=10)
    app._consumer = consumer = Reading()
    now = time.monotonic()
    owning(app, op, [A, B], now)
    app._buffers[A] = deque([_record(A, 0, 100.0)])
    app._buffers[B] = deque([_record(B, i, 70.0 + i) for i in range(29)] + [_record(B, 29, 200.0)])
    app._consumed.update({A: 1, B: 30})
    alignment.observe(A, 100.0, now)
    alignment.observe(B, 200.0, now)
    app._align()
    assert len(op.offsets) == 30  # released up to A's 100.0: all of A's, 29 of B's
    assert [at for at, _ in app._buffers[B]] == [200.0]
    assert consumer.paused == []
    # Once it buffers its bound past the release, it is paused.
    app._buffers[B].extend(_record(B, 30 + i, 201.0 + i) for i in range(9))
    app._align()
    assert consumer.paused == [B]


def test_a_partition_whose_records_left_go_unanswered_is_asked_after_the_others(tmp_path: Path) -> None:
    # Partition 0's committed offset has no stable answer (another producer's transaction open
    # on it).  After each quiet second it was asked first again, failed again, and the others
    # were never asked: unknown, they held the others as with records left.
    app = offline_app(tmp_path)
    app.alignment = alignment = Alignment(0.0, 60.0)
    app._consumer = consumer = Reading(failing=frozenset({0}))
    alignment.add([("in", p) for p in range(4)], time.monotonic())
    app._align()
    assert consumer.asked == [0]
    for _ in range(3):
        app._start_lag_quiet_until = 0.0  # (the second over)
        for tp, (_at, left) in list(app._start_lags.items()):
            app._start_lags[tp] = (-10.0, left)  # (asked more than a second ago)
        app._align()
    # The others answered in the pass after the first failure; 0 is asked last, each time.
    assert consumer.asked == [0, 1, 2, 3, 0, 0, 0]
    assert {p: app._start_lags[("in", p)][1] for p in range(4)} == {0: None, 1: 1000, 2: 1000, 3: 1000}


def test_a_backlog_not_asked_while_the_questions_were_quiet_still_holds(tmp_path: Path) -> None:
    # At alignment_idle_s 1 s, partitions not asked during the quiet second after partition 0's
    # question failed were idle by then, and were never asked: unknown, taken for nothing left,
    # their backlogs held nobody, and partition 1's later records went first (on a replay of 120
    # partitions, nearly the whole topic came out of order: found in review).
    op = Seen()
    app = offline_app(tmp_path, operators=[op])
    app.alignment = alignment = Alignment(0.0, 1.0)
    app._consumer = consumer = Reading(failing=frozenset({0}))
    tps = [("in", p) for p in range(4)]
    alignment.add(tps, time.monotonic() - 5.0)  # (assigned 5 s ago: idle)
    for part in range(4):
        task = _PartitionTask(part)
        task.contexts = [(op, _KafkaContext(app, task, op))]
        app._tasks[part] = task
    app._owned.update(tps)
    app._align()
    assert consumer.asked == [0]
    app._buffers[tps[1]] = deque(_record(tps[1], i, 5000.0 + i) for i in range(10))
    app._consumed[tps[1]] = 10
    alignment.observe(tps[1], 5009.0, time.monotonic())
    app._start_lag_quiet_until = 0.0  # (the second over)
    app._align()
    assert consumer.asked == [0, 2, 3]  # (1 delivered: its position tells)
    assert op.offsets == []  # 2 and 3 have 1,000 records left each, from before 5000


def test_questions_that_keep_failing_are_asked_less_and_less_often_however_many_partitions(
    tmp_path: Path,
) -> None:
    # Partitions being restored are asked until they run; with no answer (another producer's
    # transaction open on their committed offsets: each question waits its 5 s timeout), one was
    # asked again every second, and held the loop five seconds in six; so did several, one at a
    # time, each backing off on its own.
    def asked_at(partitions: int) -> list[float]:
        app = offline_app(tmp_path)
        app._consumer = consumer = Reading(failing=frozenset(range(partitions)))
        at: list[float] = []
        for tick in range(400):
            now = tick / 4  # (a pass every 0.25 s, for 100 s)
            for p in range(partitions):
                before = len(consumer.asked)
                assert app._start_lag(consumer, ("in", p), now, again=True) is None  # type: ignore[arg-type]
                if len(consumer.asked) > before:
                    at.append(now)
        return at

    one = asked_at(1)
    assert [int(later - earlier) for earlier, later in pairwise(one)] == [1, 2, 4, 8, 16, 30, 30]
    assert asked_at(8) == one  # (the quiet is the loop's, not a partition's)
    app = offline_app(tmp_path)
    app._consumer = consumer = Reading(failing=frozenset({0}))
    for now in (0.0, 1.5, 4.0):
        app._start_lag(consumer, ("in", 0), now)  # type: ignore[arg-type]
    assert app._start_lag_quiet_s == 8.0
    # Another partition answering does not end it (a restoring one, asked every few seconds,
    # brought it back to a second: five seconds in six again, found in review) ...
    assert app._start_lag(consumer, ("in", 1), 20.0) == 1000  # type: ignore[arg-type]
    assert app._start_lag_quiet_s == 8.0
    # ... the one that had no answer answering does.
    consumer.failing = frozenset()
    assert app._start_lag(consumer, ("in", 0), 30.0) == 1000  # type: ignore[arg-type]
    assert app._start_lag_quiet_s == 1.0


def test_the_quiet_is_a_second_again_once_the_partition_without_an_answer_delivers_or_goes(
    tmp_path: Path,
) -> None:
    # Reset only at that partition's own answer, it stayed at its longest for good: once its
    # transaction ends it delivers, and is never asked again (found in review).
    for gone in (False, True):
        app = offline_app(tmp_path)
        app.alignment = alignment = Alignment(0.0, 60.0)
        app._consumer = consumer = Reading(failing=frozenset({0}))
        alignment.add([("in", 0), ("in", 1)], time.monotonic())
        for now in (0.0, 1.5, 4.0):
            app._start_lag(consumer, ("in", 0), now)  # type: ignore[arg-type]
        assert app._start_lag_quiet_s == 8.0
        assert app._start_lag(consumer, ("in", 1), 20.0) == 1000  # type: ignore[arg-type]
        assert app._start_lag_quiet_s == 8.0  # (another's answer: not yet)
        if gone:
            app._forget_alignment(consumer, [("in", 0)])  # type: ignore[arg-type]
        else:
            app._consumed[("in", 0)] = 1  # it delivers
            app._align()
        assert app._start_lag_quiet_s == 1.0


class Handed(Seen):
    """Notes what its application counts as handed over and unfinished while it runs."""

    id = "handed"
    app: Any = None

    def process(self, batch: Sequence[Record[Any]], ctx: Context) -> None:
        self.offsets.append((-1, self.app._handed))
        super().process(batch, ctx)


def test_a_release_counts_its_records_as_handed_over_until_it_is_measured(tmp_path: Path) -> None:
    # An expired transaction in a release makes batches smaller by the records handed over (see
    # Application._pace_after_expiry); a release that finished has measured its cost itself.
    op = Handed()
    app = op.app = offline_app(tmp_path, operators=[op])
    app.alignment = alignment = Alignment(10.0, 60.0, max_buffered=10)
    app._consumer = Reading()
    now = time.monotonic()
    owning(app, op, [A], now)
    app._buffers[A] = deque([_record(A, i, 70.0 + i) for i in range(5)])
    app._consumed[A] = 5
    alignment.observe(A, 74.0, now)
    app._align()
    assert op.offsets[0] == (-1, 5)
    assert app._handed == 0
