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
from vigil.stream.app import Application

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


def test_partitions_not_reached_in_time_are_asked_at_the_next_update(tmp_path: Path) -> None:
    # Several without a stable answer use up the time: the others were marked unanswered with
    # them and had no lag for 30 s or more (a failover, the moment lag matters).
    app = offline_app(tmp_path)
    broker = Broker({**dict.fromkeys(range(6), UNSTABLE), 6: 10, 7: 20}, {})
    marks = dict.fromkeys(range(8), (0, 50))
    assert _lags(app, broker, marks, now=1.0) == {}
    assert _lags(app, broker, marks, now=2.0) == {6: 40, 7: 30}


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
