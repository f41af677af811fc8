"""A rewind after a lost assignment whose committed offsets have no answer yet (a partition taken
over from a member that died with a transaction open), with stand-ins for the clients."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from tests.unit.stream.offline import Fetched, offline_app

from vigil.errors import PipelineError
from vigil.stream.app import Application

NONE = -1001  # (what committed() gives for a partition with nothing committed)


class Rewinding:
    """A consumer whose committed offsets (5 for partition 0, none for 1) have no answer until
    ``answers``; it notes where it was told to seek."""

    answers = False

    def __init__(self) -> None:
        self.asked = 0
        self.seeks: list[tuple[int, int]] = []

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.asked += 1
        if not self.answers:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "Failed to get committed offsets"))
        return [TopicPartition(tp.topic, tp.partition, 5 if tp.partition == 0 else NONE) for tp in tps]

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.partition, tp.offset))


def lost_app(
    tmp_path: Path, consumer: Rewinding, *partitions: int, read: dict[int, int] | None = None
) -> Application:
    """An application that lost its assignment, still owning ``partitions`` of ``in``, having read
    those in ``read`` (partition: first offset read) since their assignment (all, from 0, if
    not given)."""
    app = offline_app(tmp_path)
    app._producer = object()
    app._consumer = consumer
    app._owned.update(("in", p) for p in partitions)
    app._first_read.update(
        (("in", p), first) for p, first in (dict.fromkeys(partitions, 0) if read is None else read).items()
    )
    app._lost = True
    return app


def test_a_rewind_whose_committed_offsets_have_no_answer_waits_and_processes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Asked with a 30 s timeout, the question failed and the application stopped: the survivor
    # of a failover, its checkpoint refused by the rebalance, died too (found in review).
    caplog.set_level("WARNING", logger="vigil.stream.app")
    consumer = Rewinding()
    app = lost_app(tmp_path, consumer, 0, 1, read={0: 2})
    # Not rewound: nothing of the batch is processed, and where partition 1 (not read before)
    # began is kept, so that it is read again from there.
    assert app._after_rewind([Fetched(0, 7), Fetched(1, 3), Fetched(1, 4)]) == []  # type: ignore[list-item]
    assert app._lost
    assert app._after_rewind([Fetched(1, 5)]) == []  # type: ignore[list-item]
    assert consumer.asked == 2
    assert [rec.getMessage() for rec in caplog.records if "no answer" in rec.getMessage()] != []
    assert len(caplog.records) == 1  # (warned once)
    # Answered: each partition read again from its committed offset, or from where it began.
    consumer.answers = True
    assert app._after_rewind([Fetched(0, 8)]) == []  # type: ignore[list-item]
    assert not app._lost
    assert sorted(consumer.seeks) == [(0, 5), (1, 3)]


def test_a_failure_of_the_rewind_other_than_a_timeout_still_stops_it(tmp_path: Path) -> None:
    class Refusing(Rewinding):
        def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
            raise KafkaException(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED, "not authorised"))

    app = lost_app(tmp_path, Refusing(), 0)
    with pytest.raises(KafkaException, match="not authorised"):
        app._after_rewind([Fetched(0, 7)])  # type: ignore[list-item]


def test_a_fatal_consumer_error_while_the_rewind_waits_still_stops_the_application(tmp_path: Path) -> None:
    class Failed(Fetched):
        def error(self) -> KafkaError:  # type: ignore[override]
            return KafkaError(KafkaError._FATAL, "fenced", fatal=True)

    app = lost_app(tmp_path, Rewinding(), 0)
    with pytest.raises(PipelineError, match="fatal consumer error"):
        app._after_rewind([Failed(0, 1)])  # type: ignore[list-item]


def test_a_partition_not_read_since_its_assignment_is_not_asked_and_holds_no_other_back(
    tmp_path: Path,
) -> None:
    # Taken over from a member that died mid-checkpoint, partition 2's committed offset has no
    # answer until that transaction ends; asked with the others, it held them all back (up to
    # the transaction's timeout).  Nothing of it was processed, so nothing is to be read again.
    class HeldBack(Rewinding):
        answers = True

        def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
            if any(tp.partition == 2 for tp in tps):
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "Failed to get committed offsets"))
            return super().committed(tps, timeout)

    consumer = HeldBack()
    app = lost_app(tmp_path, consumer, 0, 1, 2, read={0: 2, 1: 4})
    fetched = [Fetched(0, 7), Fetched(2, 9)]
    # Partitions 0 and 1 read again from their committed offset, or from where they began; what
    # was fetched of partition 2 is processed (it was fetched from its committed offset).
    assert app._after_rewind(fetched) == [fetched[1]]  # type: ignore[arg-type]
    assert not app._lost
    assert sorted(consumer.seeks) == [(0, 5), (1, 4)]


def test_a_rewind_with_nothing_read_since_the_assignment_asks_nothing(tmp_path: Path) -> None:
    consumer = Rewinding()  # (it would time out if asked)
    app = lost_app(tmp_path, consumer, 0, 1, read={})
    fetched = [Fetched(1, 3)]
    assert app._after_rewind(fetched) == fetched  # type: ignore[arg-type]
    assert not app._lost
    assert consumer.asked == 0
    assert consumer.seeks == []
