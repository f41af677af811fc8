"""Stateless at-least-once's synchronous offset commits (Application._commit_offsets): librdkafka's
commit waits for the broker's answer however long it takes, so with the broker frozen a stop
waited for the whole freeze.  Made on a thread of their own, they are given up once stopping, and
the consumer is not closed under one given up; inside a rebalance callback they are made there.
The consumer here stands in for a frozen broker's (its commit waits until released); the real
one is frozen in tests/integration/stream/test_outage.py."""

from __future__ import annotations

import gc
import logging
import threading
import weakref
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

import vigil.stream.app as runtime
from vigil.config import load_settings
from vigil.stream.app import Application, _PartitionTask
from vigil.stream.base import Context, Operator, Record

OFFSETS = [TopicPartition("in", 0, 42)]


class Idle(Operator[Any]):
    id = "idle"

    def process(self, batch: list[Record[Any]], ctx: Context) -> None:
        return None


class FrozenCommit:
    """A consumer whose synchronous commit waits until :attr:`answer` is set, then raises
    :attr:`refusal` if any (as the broker's late answer: the member expired meanwhile)."""

    def __init__(self) -> None:
        self.answer = threading.Event()
        self.refusal: KafkaException | None = None
        self.threads: list[int] = []
        self.closed = False

    def commit(self, offsets: list[TopicPartition] | None = None, asynchronous: bool = True) -> None:
        self.threads.append(threading.get_ident())
        if not asynchronous:
            assert self.answer.wait(30)
        refusal = self.refusal
        del self  # (as librdkafka's own raise: the frame that raises does not hold the client)
        if refusal is not None:
            raise refusal

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Application:
    monkeypatch.setattr(runtime, "_STOPPING_CALL_S", 0.3)
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path)
    return Application(settings, name="a", inputs=["in"], operators=[Idle()])


def test_stopping_a_commit_the_broker_does_not_answer_is_given_up_and_the_consumer_left_open(
    app: Application, caplog: pytest.LogCaptureFixture
) -> None:
    consumer = FrozenCommit()
    app._consumer = consumer  # type: ignore[assignment]
    # Partition 0 processed (and paused by alignment), partition 1 still being restored.
    app._owned.add(("in", 0))
    restoring = app._restoring[1] = _PartitionTask(1)
    restoring.partitions = [TopicPartition("in", 1)]
    app.metrics.assigned, app.metrics.restoring, app.metrics.paused = [("in", 0)], [1], [("in", 0)]
    for part in ("0", "1"):
        app.prometheus.lag.labels("a", "in", part).set(5)
    app.stop()
    with pytest.raises(KafkaException) as given_up:
        app._commit_offsets(consumer, OFFSETS, "committing offsets")  # type: ignore[arg-type]
    err = given_up.value.args[0]
    assert (err.code(), err.retriable()) == (KafkaError._TIMED_OUT, True)
    assert "committing offsets has not returned" in err.str()
    del given_up, err  # (their traceback holds the frames that held the consumer)
    # While it still waits in the consumer, the next commit is not made: it would wait behind it.
    with pytest.raises(KafkaException, match="an earlier commit given up still waits for the broker"):
        app._commit_offsets(consumer, OFFSETS, "committing offsets")  # type: ignore[arg-type]
    assert len(consumer.threads) == 1
    pending = app._commit_given_up
    assert pending is not None
    with caplog.at_level(logging.WARNING, logger="vigil.stream.app"):
        app._close()
    assert not consumer.closed  # (closed under the commit, the close waits for it too)
    # Its partitions are the next owner's now: none is shown as this one's, nor its lag.
    assert (app.metrics.assigned, app.metrics.restoring, app.metrics.paused) == ([], [], [])
    for part in ("0", "1"):
        labels = {"app": "a", "topic": "in", "partition": part}
        assert app.prometheus.registry.get_sample_value("vigil_stream_consumer_lag", labels) is None
    assert any("left to close once the broker answers" in r.getMessage() for r in caplog.records)
    # Once the broker answers (refused: the member expired meanwhile), nothing holds the
    # consumer: it goes with its last reference, not at a full collection minutes later.
    gone = weakref.ref(consumer)
    consumer.refusal = KafkaException(KafkaError(KafkaError.UNKNOWN_MEMBER_ID))
    consumer.answer.set()
    assert isinstance(pending.exception(timeout=10), KafkaException)
    for thread in threading.enumerate():  # (its arguments are let go once it has returned)
        if thread.name == "a-commit-offsets":
            thread.join(10)
    gc.disable()
    try:
        del consumer
        assert gone() is None, gc.get_referrers(gone())
    finally:
        gc.enable()


def test_not_stopping_a_slow_commit_is_waited_for(app: Application) -> None:
    consumer = FrozenCommit()
    threading.Timer(0.8, consumer.answer.set).start()  # (longer than a stop would wait)
    app._commit_offsets(consumer, OFFSETS, "committing offsets")  # type: ignore[arg-type]
    assert app._commit_given_up is None
    (made_on,) = consumer.threads
    assert made_on != threading.get_ident()  # (made aside)


def test_inside_a_rebalance_callback_the_commit_is_made_there(app: Application) -> None:
    # The callback runs inside the consumer's own call (consume, close): a client serialising
    # its calls per handle would hold another thread's commit until that call returned.
    consumer = FrozenCommit()
    consumer.answer.set()
    app._in_callback = True
    app._commit_offsets(consumer, OFFSETS, "committing offsets")  # type: ignore[arg-type]
    assert consumer.threads == [threading.get_ident()]
