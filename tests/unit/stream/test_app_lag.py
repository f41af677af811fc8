"""The lag of partitions nothing was delivered from since their assignment (a backlog not handed
over yet, a partition paused while its stores are restored): counted from where they start, with
the broker asked as little as the loop can afford (the runtime on a broker:
tests/integration/stream/test_table_metrics.py)."""

from __future__ import annotations

from pathlib import Path

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from tests.unit.stream.offline import offline_app

NONE = -1001  # (what committed() gives for a partition with nothing committed)


class Broker:
    """A consumer as the lag gauge asks it: committed offsets, watermarks; the questions asked."""

    def __init__(self, committed: dict[int, int], marks: dict[int, tuple[int, int]]) -> None:
        self.committed_offsets = committed
        self.marks = marks
        self.unstable = False
        self.asked: list[str] = []

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.asked.append("committed " + ",".join(str(tp.partition) for tp in tps))
        if self.unstable:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "no stable offsets"))
        return [TopicPartition(tp.topic, tp.partition, self.committed_offsets[tp.partition]) for tp in tps]

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        self.asked.append(f"marks {tp.partition}")
        return self.marks[tp.partition]


def test_from_the_committed_offset_else_the_start_to_the_end_the_fetches_brought(tmp_path: Path) -> None:
    app = offline_app(tmp_path)
    broker = Broker({0: 40, 1: NONE}, {1: (10, 90)})
    lags = app._unread_lags(broker, {("in", 0): 100, ("in", 1): 90}, now=1.0)  # type: ignore[arg-type]
    assert lags == {("in", 0): 60, ("in", 1): 80}  # (1: nothing committed, from its first offset)
    assert broker.asked == ["committed 0,1", "marks 1"]
    # Asked once: later updates take the fetches' ends alone.
    assert app._unread_lags(broker, {("in", 0): 140, ("in", 1): 95}, now=2.0) == {
        ("in", 0): 100,
        ("in", 1): 85,
    }  # type: ignore[arg-type]
    assert broker.asked == ["committed 0,1", "marks 1"]


def test_a_paused_partition_s_end_is_asked_at_most_every_five_seconds(tmp_path: Path) -> None:
    app = offline_app(tmp_path)
    broker = Broker({0: 40}, {0: (0, 70)})
    assert app._unread_lags(broker, {("in", 0): -1}, now=1.0) == {("in", 0): 30}  # type: ignore[arg-type]
    broker.marks[0] = (0, 75)
    assert app._unread_lags(broker, {("in", 0): -1}, now=3.0) == {("in", 0): 30}  # type: ignore[arg-type]
    assert app._unread_lags(broker, {("in", 0): -1}, now=6.5) == {("in", 0): 35}  # type: ignore[arg-type]
    assert broker.asked == ["committed 0", "marks 0", "marks 0"]


def test_without_a_stable_committed_offset_it_is_left_out_and_asked_again_much_later(tmp_path: Path) -> None:
    # A committed offset in another producer's open transaction has no answer until the timeout,
    # which the loop waits: not every update.
    app = offline_app(tmp_path)
    broker = Broker({0: 40}, {0: (0, 70)})
    broker.unstable = True
    assert app._unread_lags(broker, {("in", 0): 70}, now=1.0) == {}  # type: ignore[arg-type]
    assert app._unread_lags(broker, {("in", 0): 70}, now=20.0) == {}  # type: ignore[arg-type]
    broker.unstable = False
    assert app._unread_lags(broker, {("in", 0): 70}, now=31.5) == {("in", 0): 30}  # type: ignore[arg-type]
    assert broker.asked == ["committed 0", "committed 0"]


def test_where_reading_begins_when_the_runtime_chose_it_is_asked_nothing(tmp_path: Path) -> None:
    # (From the latest, or a partition lost before its first commit: see _resumed.)
    app = offline_app(tmp_path)
    app._first_read[("in", 0)] = 65
    broker = Broker({}, {})
    assert app._unread_lags(broker, {("in", 0): 70}, now=1.0) == {("in", 0): 5}  # type: ignore[arg-type]
    assert broker.asked == []
