"""The lag of partitions the consumer knows no position for (nothing delivered since their
assignment or a rewind: a backlog not handed over yet, a partition paused while its stores are
restored): counted from where they start, with the broker asked as little as the loop can afford
(the runtime on a broker: tests/integration/stream/test_table_metrics.py)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from confluent_kafka import OFFSET_END, KafkaError, KafkaException, TopicPartition
from tests.unit.stream.offline import Nothing, offline_app

from vigil.config import load_settings
from vigil.errors import ConfigError
from vigil.stream.alignment import Alignment
from vigil.stream.app import Application, _committed_asked, _PartitionTask

NONE = -1001  # (what committed() gives for a partition with nothing committed)
UNSTABLE = None  # (a committed offset in another producer's open transaction: no answer)


class Broker:
    """A consumer as the lag gauge asks it: committed offsets, where partitions begin and end;
    the questions asked."""

    def __init__(self, committed: dict[int, int | None], marks: dict[int, tuple[int, int]]) -> None:
        self.committed_offsets = committed
        self.marks = marks
        self.asked: list[str] = []

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.asked.append("committed " + ",".join(str(tp.partition) for tp in tps))
        if any(self.committed_offsets[tp.partition] is UNSTABLE for tp in tps):
            time.sleep(timeout)  # (librdkafka waits for a stable answer until the timeout)
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "no stable offsets"))
        return [TopicPartition(tp.topic, tp.partition, self.committed_offsets[tp.partition]) for tp in tps]  # type: ignore[arg-type]

    def offsets_for_times(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        kind = "ends" if tps[0].offset == OFFSET_END else "starts"
        self.asked.append(f"{kind} " + ",".join(str(tp.partition) for tp in tps))
        side = 1 if kind == "ends" else 0
        return [TopicPartition(tp.topic, tp.partition, self.marks[tp.partition][side]) for tp in tps]


def _lags(app: object, broker: Broker, marks: dict[int, tuple[int, int]], now: float) -> dict[int, int]:
    lags = app._unread_lags(broker, {("in", p): m for p, m in marks.items()}, now)  # type: ignore[attr-defined]
    return {p: lag for (_, p), lag in lags.items()}


def test_from_the_committed_offset_else_the_log_start_to_the_end_the_fetches_brought(tmp_path: Path) -> None:
    app = offline_app(tmp_path)
    broker = Broker({0: 40, 1: NONE}, {})
    assert _lags(app, broker, {0: (0, 100), 1: (10, 90)}, now=1.0) == {0: 60, 1: 80}
    assert broker.asked == ["committed 0,1"]
    # Asked once: later updates take the fetches' ends alone.
    assert _lags(app, broker, {0: (0, 140), 1: (10, 95)}, now=2.0) == {0: 100, 1: 85}
    assert broker.asked == ["committed 0,1"]


def test_a_paused_partition_s_end_is_asked_at_most_every_five_seconds_all_in_one_request(
    tmp_path: Path,
) -> None:
    app = offline_app(tmp_path)
    broker = Broker({0: 40, 1: 50}, {0: (0, 70), 1: (0, 60)})
    assert _lags(app, broker, {0: (-1, -1), 1: (-1, -1)}, now=1.0) == {0: 30, 1: 10}
    broker.marks[0] = (0, 75)
    assert _lags(app, broker, {0: (-1, -1), 1: (-1, -1)}, now=3.0) == {0: 30, 1: 10}
    assert _lags(app, broker, {0: (-1, -1), 1: (-1, -1)}, now=6.5) == {0: 35, 1: 10}
    # (With the log starts: retention may move one past a start known from before.)
    assert broker.asked == ["committed 0,1", "ends 0,1", "starts 0,1", "ends 0,1", "starts 0,1"]


def test_one_partition_without_a_stable_committed_offset_hides_no_other(tmp_path: Path) -> None:
    # Its offsets in another producer's open transaction: no answer until the timeout, which the
    # loop waits, so asked again only much later; the others are asked on their own.
    app = offline_app(tmp_path)
    broker = Broker({0: UNSTABLE, 1: 40}, {})
    assert _lags(app, broker, {0: (0, 70), 1: (0, 70)}, now=1.0) == {1: 30}
    assert _lags(app, broker, {0: (0, 70), 1: (0, 70)}, now=20.0) == {1: 30}
    broker.committed_offsets[0] = 50
    assert _lags(app, broker, {0: (0, 70), 1: (0, 70)}, now=31.5) == {0: 20, 1: 30}
    assert broker.asked == ["committed 0,1", "committed 0", "committed 1", "committed 0"]


def test_after_a_rewind_from_the_committed_offset_not_where_reading_first_began(tmp_path: Path) -> None:
    # Sought back to its committed offset, a partition has no position until a record comes: it
    # counted from where reading began at the assignment, and a quiet partition showed all it had
    # processed since as lag, for hours.
    app = offline_app(tmp_path)
    app._first_read[("in", 0)] = 0
    broker = Broker({0: 500}, {})
    assert _lags(app, broker, {0: (0, 500)}, now=1.0) == {0: 0}


def test_where_the_runtime_chose_to_start_counts_while_nothing_is_committed(tmp_path: Path) -> None:
    # (From the latest, or a partition lost before its first commit: see _resumed.)
    app = offline_app(tmp_path)
    app._first_read[("in", 0)] = 65
    assert _lags(app, Broker({0: NONE}, {}), {0: (0, 70)}, now=1.0) == {0: 5}


def test_a_committed_offset_before_the_log_start_counts_from_where_reading_starts(tmp_path: Path) -> None:
    # Retention deleted what it pointed at: the consumer starts at the log start, or at the end
    # reading from the latest.
    app = offline_app(tmp_path)
    assert _lags(app, Broker({0: 40}, {}), {0: (100, 200)}, now=1.0) == {0: 100}
    latest = offline_app(tmp_path / "latest")
    latest._from_the_end = True
    assert _lags(latest, Broker({0: 40}, {}), {0: (100, 200)}, now=1.0) == {0: 0}


def test_partitions_not_reached_in_time_are_asked_once_the_gauge_asks_again(tmp_path: Path) -> None:
    # Several without a stable answer use up the time: the others were marked unanswered with
    # them and had no lag for 30 s or more (a failover, the moment lag matters).  (A question
    # that failed quiets the gauge for 5 s.)
    app = offline_app(tmp_path)
    broker = Broker({**dict.fromkeys(range(6), UNSTABLE), 6: 10, 7: 20}, {})
    marks = dict.fromkeys(range(8), (0, 50))
    assert _lags(app, broker, marks, now=1.0) == {}
    assert _lags(app, broker, marks, now=2.0) == {}
    assert _lags(app, broker, marks, now=6.5) == {6: 40, 7: 30}


def test_ends_are_asked_for_every_paused_partition_together_on_one_clock(tmp_path: Path) -> None:
    # Each on its own clock, partitions assigned at different times came due at nearly every
    # update (against a broker that did not answer: 0.4-0.6 s of every second on the loop).
    app = offline_app(tmp_path)
    broker = Broker({0: 40, 1: 50, 2: 60}, {0: (0, 70), 1: (0, 80), 2: (0, 90)})
    assert _lags(app, broker, {0: (-1, -1)}, now=1.0) == {0: 30}
    # One assigned later is asked at once, alone; then all together when due.
    assert _lags(app, broker, {0: (-1, -1), 1: (-1, -1)}, now=3.0) == {0: 30, 1: 30}
    assert _lags(app, broker, {0: (-1, -1), 1: (-1, -1), 2: (-1, -1)}, now=4.5) == {0: 30, 1: 30, 2: 30}
    for now in (5.0, 5.5, 6.0):
        _lags(app, broker, {0: (-1, -1), 1: (-1, -1), 2: (-1, -1)}, now=now)
    assert [q for q in broker.asked if q.startswith("ends")] == ["ends 0", "ends 1", "ends 2", "ends 0,1,2"]


class Unreachable:
    """A consumer whose broker does not answer: every question waits out its timeout."""

    def __init__(self) -> None:
        self.waited = 0.0

    def _wait(self, timeout: float) -> None:
        time.sleep(timeout)
        self.waited += timeout
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "no answer"))

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self._wait(timeout)
        return []

    def offsets_for_times(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self._wait(timeout)
        return []


def test_against_a_broker_that_does_not_answer_the_gauge_holds_the_loop_little(tmp_path: Path) -> None:
    # 200 partitions paused (a restore), a gauge update a second for a minute: asked at every
    # update, the questions held the loop 27 s of the 60.
    app = offline_app(tmp_path)
    consumer = Unreachable()
    marks = {("in", p): (-1, -1) for p in range(200)}
    for second in range(60):
        assert app._unread_lags(consumer, marks, 1000.0 + second) == {}
    # (At most one update in five asks, within 0.2 s in all.)
    assert consumer.waited <= 60 / 5 * 0.2 + 0.1


class Reassigned(Broker):
    """A consumer that owned partition 0 before: librdkafka keeps the watermarks it fetched then
    (0, 10), and, the partition paused while its stores restore, fetches no others."""

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, NONE) for tp in tps]

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool) -> tuple[int, int]:
        return (0, 10)


def test_a_partition_restoring_counts_to_its_end_now_not_the_one_fetched_before(tmp_path: Path) -> None:
    # Its lag read 0 for the whole restore, as records piled up (a lost assignment taken back,
    # a partition coming back to a member that had it).
    app = offline_app(tmp_path)
    task = _PartitionTask(0)
    task.partitions = [TopicPartition("in", 0)]
    app._restoring[0] = task
    app._consumer = Reassigned({0: 10}, {0: (0, 100)})
    app._update_gauges()
    assert (
        app.prometheus.registry.get_sample_value(
            "vigil_stream_consumer_lag", {"app": "a", "topic": "in", "partition": "0"}
        )
        == 90
    )


def test_a_start_retention_has_passed_since_counts_from_the_log_start(tmp_path: Path) -> None:
    app = offline_app(tmp_path)
    broker = Broker({0: 40}, {0: (0, 100)})
    assert _lags(app, broker, {0: (-1, -1)}, now=1.0) == {0: 60}
    broker.marks[0] = (500, 600)
    assert _lags(app, broker, {0: (-1, -1)}, now=61.0) == {0: 100}


class Metadata:
    """A consumer's metadata for ``_check_inputs``: partition counts, and topics whose lookup
    fails with a topic-level error."""

    def __init__(self, counts: dict[str, int], failing: frozenset[str] = frozenset()) -> None:
        self.counts, self.failing = counts, failing

    def list_topics(self, topic: str, timeout: float) -> SimpleNamespace:
        error = KafkaError(KafkaError.LEADER_NOT_AVAILABLE) if topic in self.failing else None
        meta = SimpleNamespace(error=error, partitions=dict.fromkeys(range(self.counts[topic])))
        return SimpleNamespace(topics={topic: meta})


def test_a_stateless_application_compares_its_inputs_with_the_first_as_it_is_now(tmp_path: Path) -> None:
    app = Application(
        load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path),
        name="a",
        inputs=["A", "B"],
        operators=[Nothing()],
    )
    app._partitions = 4
    app._check_inputs(Metadata({"A": 8, "B": 8}))  # (both grown alike: the first's are read)
    app._check_inputs(Metadata({"A": 8, "B": 8}, frozenset({"A"})))  # (the first unknown: next time)
    with pytest.raises(ConfigError, match=r"input 'B' has more partitions than the first input 'A' \(8\)"):
        app._check_inputs(Metadata({"A": 8, "B": 12}))


def test_the_committed_offsets_are_asked_within_the_budget_in_all(tmp_path: Path) -> None:
    # Asked together, failing at once (the coordinator moving), then each on its own without
    # an answer: the rebalance callback waited 2 s more than the budget its docstring gives.
    class Moving:
        waited = 0.0

        def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
            if len(tps) > 1:
                raise KafkaException(KafkaError(KafkaError.NOT_COORDINATOR, "moving"))
            time.sleep(timeout)
            self.waited += timeout
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "no stable offset"))

    consumer = Moving()
    answered, reached, problem = _committed_asked(
        consumer,  # type: ignore[arg-type]
        [TopicPartition("in", p) for p in range(50)],
        0.2,
        0.05,
        0.3,
    )
    assert (answered, problem is not None) == ([], True)
    assert 0 < reached < 50
    assert consumer.waited <= 0.3  # (not 0.2 + 0.3)


def test_a_partition_restoring_has_its_records_left_asked_again_each_second(tmp_path: Path) -> None:
    # Aligned, its lane holds the others while it has records to read; the 0 found at its
    # assignment was kept for the whole restore, and records arriving meanwhile held nobody.
    class Ends:
        high = 0

        def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
            return [TopicPartition(tp.topic, tp.partition, 0) for tp in tps]

        def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
            return (0, self.high)

    app = offline_app(tmp_path)
    consumer = Ends()
    assert app._start_lag(consumer, ("in", 0), 1.0, again=True) == 0
    consumer.high = 500
    assert app._start_lag(consumer, ("in", 0), 3.0, again=True) == 0  # (at most every 5 s)
    assert app._start_lag(consumer, ("in", 0), 6.5, again=True) == 500
    # With records left it holds the others anyway, and the answer is kept; so is a running
    # partition's (it delivers, or goes idle).
    consumer.high = 900
    assert app._start_lag(consumer, ("in", 0), 20.0, again=True) == 500
    assert app._start_lag(consumer, ("in", 0), 30.0) == 500


def test_partitions_restoring_are_asked_again_one_a_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each restoring partition asked again on its own, one at a time, held the loop N times the
    # question's timeout a pass against a broker that stopped answering.
    import vigil.stream.app as runtime

    class Paused:
        asked = 0

        def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
            return [TopicPartition(tp.topic, tp.partition, NONE) for tp in tps]

        def __init__(self) -> None:
            self.which: list[int] = []

        def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
            self.asked += 1
            self.which += [tp.partition for tp in tps]
            return [TopicPartition(tp.topic, tp.partition, 0) for tp in tps]

        def get_watermark_offsets(self, tp: TopicPartition, **_: float) -> tuple[int, int]:
            return (0, 0)

        def pause(self, tps: list[TopicPartition]) -> None: ...

        def resume(self, tps: list[TopicPartition]) -> None: ...

    monkeypatch.setattr(runtime, "_RESTORING_ASK_EVERY_S", 0.0)
    app = offline_app(tmp_path)
    app.alignment = Alignment(0.0, 5.0)
    app._consumer = consumer = Paused()
    app.alignment.add([("in", p) for p in range(8)], time.monotonic(), restoring=True)
    app._align()
    assert consumer.asked == 8  # (each once, at the start)
    consumer.which.clear()
    for _ in range(8):
        consumer.asked = 0
        app._align()
        assert consumer.asked == 1
    # Each in turn, the one asked longest ago (the first in order took every turn).
    assert sorted(consumer.which) == list(range(8))


class Unanswering:
    """A consumer of partitions nothing was read from, whose broker does not answer (until
    ``answers``): it notes the partitions whose committed offsets were asked."""

    answers = False

    def __init__(self) -> None:
        self.asked: list[int] = []

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, NONE) for tp in tps]

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.asked += [tp.partition for tp in tps]
        if not self.answers:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "no answer"))
        return [TopicPartition(tp.topic, tp.partition, 0) for tp in tps]

    def get_watermark_offsets(self, tp: TopicPartition, **_: float) -> tuple[int, int]:
        return (0, 0)

    def pause(self, tps: list[TopicPartition]) -> None: ...

    def resume(self, tps: list[TopicPartition]) -> None: ...


def test_a_question_of_records_left_without_answer_quiets_the_others_for_a_second(tmp_path: Path) -> None:
    # Each partition nothing was read from yet was asked in turn, each waiting the question's
    # timeout: against a broker that stopped answering, a pass over N partitions held the loop
    # N times that (5 s each: 64 partitions, over five minutes, past max.poll.interval.ms).
    app = offline_app(tmp_path)
    app.alignment = Alignment(0.0, 60.0)
    app._consumer = consumer = Unanswering()
    app.alignment.add([("in", p) for p in range(20)], time.monotonic())
    app._align()
    assert consumer.asked == [0]  # (the others wait: unknown, they hold as with records left)
    consumer.asked.clear()
    app._align()
    assert consumer.asked == []  # within the second
    app._start_lag_quiet_until = 0.0  # (the second over)
    consumer.answers = True
    for lane in app.alignment.lanes:
        app._start_lags[lane] = (-10.0, None)  # (asked more than a second ago)
    app._align()
    assert sorted(consumer.asked) == list(range(20))  # answered: every one asked in the pass


def test_an_idle_partition_nothing_was_read_from_is_asked_its_records_left_once(tmp_path: Path) -> None:
    # Idle, it is asked its records left only to tell a replay's backlog: each question without
    # an answer held the loop its timeout, ten times as often (250 s of 400 at idle_s 30, found
    # in review).  What was found before is used; a partition never asked is asked once (never
    # asked, it stayed unknown for good once the questions had quieted longer than idle_s, and
    # its backlog held nobody: found in review).
    app = offline_app(tmp_path)
    app.alignment = Alignment(0.0, 1.0)
    app._consumer = consumer = Unanswering()
    app.alignment.add([("in", p) for p in range(8)], time.monotonic() - 5.0)  # idle for 5 s
    for _ in range(12):
        app._align()
        app._start_lag_quiet_until = 0.0  # (the quiet second over)
        for tp, (_at, left) in list(app._start_lags.items()):
            app._start_lags[tp] = (-100.0, left)  # (asked long ago)
    assert consumer.asked == list(range(8))  # one a pass (each failed), each once
    # Never asked again, none is left waiting for an answer: the next question's quiet after a
    # failure is a second (it stayed at its longest for good: found in review).
    assert not app._start_lag_unanswered
    assert app._start_lag_quiet_s == 1.0
