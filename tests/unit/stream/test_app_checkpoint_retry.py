"""A checkpoint whose transactional calls fail while the broker is out of reach: retriable
failures are tried again, an abortable one is aborted and processed again from the last
checkpoint, a bounded number of times (with stand-ins for the clients; a real outage:
tests/integration/stream/test_outage.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from tests.unit.stream.offline import Nothing, offline_app

import vigil.stream.app as app_module
from vigil.errors import PipelineError
from vigil.events.base import utcnow
from vigil.events.types import Login
from vigil.stream.app import Application, _boot_clock, _KafkaContext, _PartitionTask
from vigil.stream.base import Context, Record

TRANSPORT = KafkaError(KafkaError._TRANSPORT, "Broker transport failure", retriable=True)
ABORTABLE = KafkaError(
    KafkaError._TIMED_OUT,
    "20 message(s) timed out on a changelog (requires epoch bump)",
    txn_requires_abort=True,
)
REFUSED = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "not authorised")


class Transactional:
    """A transactional producer whose calls fail with what ``failures`` gives, in turn, per call
    name, then succeed; the topics ``list_topics`` knows are ``topics``."""

    def __init__(self, **failures: list[KafkaError]) -> None:
        self.failures = {name: list(errors) for name, errors in failures.items()}
        self.calls: list[str] = []
        self.topics: dict[str, Any] = {"out": SimpleNamespace(error=None)}

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.failures.get(name):
            raise KafkaException(self.failures[name].pop(0))

    def send_offsets_to_transaction(self, offsets: Any, metadata: Any, timeout: float) -> None:
        self._call("send_offsets")

    def commit_transaction(self, timeout: float) -> None:
        self._call("commit")

    def abort_transaction(self, timeout: float) -> None:
        self._call("abort")

    def begin_transaction(self) -> None:
        self._call("begin")

    def list_topics(self, timeout: float) -> Any:
        return SimpleNamespace(topics=self.topics)

    def poll(self, timeout: float) -> int:
        return 0


class Group:
    def consumer_group_metadata(self) -> object:
        return object()


OFFSETS = [TopicPartition("in", 0, 7)]


@pytest.fixture(autouse=True)
def _no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "_RETRY_TXN_PAUSE_S", 0.0)


def in_transaction(tmp_path: Path, producer: Transactional) -> Application:
    app = offline_app(tmp_path)
    app._producer = producer  # type: ignore[assignment]
    app._output_topics.add("out")
    app._in_txn = True
    app._txn_began = _boot_clock()
    return app


def test_retriable_failures_of_the_commit_are_tried_again_until_it_commits(tmp_path: Path) -> None:
    # One try of a call that could not reach the broker stopped the application: an outage of
    # 30 s or more while records flowed took every exactly-once stage down (found in review).
    producer = Transactional(send_offsets=[TRANSPORT], commit=[TRANSPORT, TRANSPORT])
    app = in_transaction(tmp_path, producer)
    assert app._commit_txn(OFFSETS, Group())  # type: ignore[arg-type]
    assert producer.calls == ["send_offsets", "send_offsets", "commit", "commit", "commit"]
    assert not app._lost
    assert not app._in_txn


def test_retriable_failures_past_the_budget_stop_the_application(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    producer = Transactional(commit=[TRANSPORT] * 100)
    app = in_transaction(tmp_path, producer)
    monkeypatch.setattr(app_module, "_RETRY_TXN_CALL_S", 0.0)  # (tried once: the budget is spent)
    with pytest.raises(PipelineError, match=r"checkpoint failed: .*Broker transport failure"):
        app._commit_txn(OFFSETS, Group())  # type: ignore[arg-type]
    assert producer.calls == ["send_offsets", "commit"]


def test_an_abortable_failure_is_aborted_and_processed_again_from_the_last_checkpoint(tmp_path: Path) -> None:
    producer = Transactional(send_offsets=[ABORTABLE])
    app = in_transaction(tmp_path, producer)
    assert not app._commit_txn(OFFSETS, Group())  # type: ignore[arg-type]
    assert producer.calls == ["send_offsets", "abort"]
    assert app._lost  # (the rewind reads the input again from the committed offsets)
    assert not app._in_txn
    assert app._aborted_checkpoints == 1
    # The next checkpoint commits: the count starts again.
    app._lost = False
    app._in_txn = True
    assert app._commit_txn(OFFSETS, Group())  # type: ignore[arg-type]
    assert app._aborted_checkpoints == 0


def test_the_same_abortable_failure_checkpoint_after_checkpoint_stops_the_application(tmp_path: Path) -> None:
    # An output refused each time (say): processing again for ever would commit nothing.
    limit = app_module._MAX_ABORTED_CHECKPOINTS
    producer = Transactional(commit=[ABORTABLE] * (limit + 1))
    app = in_transaction(tmp_path, producer)
    for _ in range(limit):
        assert not app._commit_txn(OFFSETS, Group())  # type: ignore[arg-type]
        app._lost = False
        app._in_txn = True
    with pytest.raises(PipelineError, match=r"checkpoint failed: .*requires epoch bump"):
        app._commit_txn(OFFSETS, Group())  # type: ignore[arg-type]
    assert producer.calls.count("abort") == limit


def test_an_abortable_failure_with_an_output_topic_missing_stops_at_once_naming_it(tmp_path: Path) -> None:
    producer = Transactional(commit=[ABORTABLE])
    producer.topics = {}
    app = in_transaction(tmp_path, producer)
    with pytest.raises(PipelineError, match=r"output topic\(s\) 'out' do not exist: create them first"):
        app._commit_txn(OFFSETS, Group())  # type: ignore[arg-type]
    assert "abort" not in producer.calls


def test_a_failure_neither_retriable_nor_abortable_stops_the_application(tmp_path: Path) -> None:
    producer = Transactional(send_offsets=[REFUSED])
    app = in_transaction(tmp_path, producer)
    with pytest.raises(PipelineError, match=r"checkpoint failed: .*not authorised"):
        app._commit_txn(OFFSETS, Group())  # type: ignore[arg-type]
    assert producer.calls == ["send_offsets"]


def test_an_abort_clears_the_outputs_delivery_failures_of_the_transaction_aborted(tmp_path: Path) -> None:
    # Records of the aborted transaction that had timed out in it were kept, and the first
    # commit after the outage stopped the application on them (found in review).
    producer = Transactional(commit=[ABORTABLE])
    app = in_transaction(tmp_path, producer)
    app._delivery_errors.append("out[0]: Local: Message timed out")
    assert not app._commit_txn(OFFSETS, Group())  # type: ignore[arg-type]
    assert app._delivery_errors == []


def test_stopping_a_checkpoint_the_broker_cannot_take_is_given_up_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A SIGTERM during an outage waited a minute and ended with "checkpoint failed"; nothing is
    # lost: the next start processes it again (its producer aborts the transaction left open).
    producer = Transactional(commit=[TRANSPORT] * 100)
    app = in_transaction(tmp_path, producer)
    app.stop()
    with caplog.at_level("WARNING", logger="vigil.stream.app"):
        assert not app._commit_txn(OFFSETS, Group())  # type: ignore[arg-type]
    assert producer.calls == ["send_offsets", "commit", "abort"]  # (tried once; one short abort)
    assert (app._lost, app._in_txn) == (True, False)
    assert any("stopping with the last checkpoint not committed" in r.getMessage() for r in caplog.records)
    # Not stopping, the same failure is tried again (test_retriable_failures_..._until_it_commits).


def test_stopping_while_the_abort_of_a_failed_checkpoint_waits_for_the_broker_is_not_an_error(
    tmp_path: Path,
) -> None:
    # A SIGTERM during an outage, while the abort waited, ended in "aborting the transaction
    # failed" (found in review); the next start's producer aborts the transaction instead.
    class StopDuringAbort(Transactional):
        def abort_transaction(self, timeout: float) -> None:
            app.stop()  # (arrives while the abort waits)
            super().abort_transaction(timeout)

    producer = StopDuringAbort(commit=[ABORTABLE], abort=[TRANSPORT] * 10)
    app = in_transaction(tmp_path, producer)
    assert not app._commit_txn(OFFSETS, Group())  # type: ignore[arg-type]
    assert producer.calls.count("abort") == 1
    assert (app._lost, app._in_txn, app._abandoned) == (True, False, True)


STATE = KafkaError(KafkaError._STATE, "Unable to produce message: Local: Erroneous state")


class Refusing(Transactional):
    """A transactional producer whose broker has refused a record: ``produce`` fails as the
    client's abortable state makes it ("Erroneous state"), and ``poll`` serves the refused
    record's delivery report once ``reported`` (then not again)."""

    def __init__(self, app: Application, reported: bool = True) -> None:
        super().__init__()
        self.app = app
        self.reported = reported

    def produce(self, *args: Any) -> None:
        self._call("produce")
        raise KafkaException(STATE)

    def poll(self, timeout: float) -> int:
        if self.reported:
            self.reported = False
            refused = SimpleNamespace(topic=lambda: "small", partition=lambda: 2)
            err = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large")
            self.app._on_delivery_error(err, refused)  # type: ignore[arg-type]
        return 0


def refusing(tmp_path: Path, reported: bool = True, **kw: Any) -> tuple[Application, Refusing]:
    app = offline_app(tmp_path, **kw)
    producer = Refusing(app, reported)
    app._producer = producer  # type: ignore[assignment]
    app._output_topics.add("out")
    app._in_txn = True
    app._txn_began = _boot_clock()
    return app, producer


def test_a_produce_after_a_refused_record_says_the_transaction_is_to_be_aborted_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client says only "Erroneous state", and that blamed the operator whose output came
    # next, or stopped the stage as a client failure (found in review).
    app, _ = refusing(tmp_path / "1")
    with pytest.raises(KafkaException) as raised:
        app._produce("out", b"v", "k")
    err = raised.value.args[0]
    assert err.txn_requires_abort()
    assert not err.fatal()
    assert err.str() == (
        "the transaction is to be aborted, a record refused: small[2]: Broker: Message size too large"
    )
    # No report served in time: said so, still to be aborted.
    monkeypatch.setattr(app_module, "_REFUSAL_REASON_WAIT_S", 0.0)
    app, _ = refusing(tmp_path / "2", reported=False)
    with pytest.raises(KafkaException) as raised:
        app._produce("out", b"v", "k")
    err = raised.value.args[0]
    assert err.txn_requires_abort()
    assert "Erroneous state (the client reported no record refused)" in err.str()


def test_a_refused_record_is_aborted_and_processed_again_then_stops_the_application_naming_it(
    tmp_path: Path,
) -> None:
    app, producer = refusing(tmp_path)
    for n in range(1, app_module._MAX_ABORTED_CHECKPOINTS + 1):
        producer.reported = True
        with pytest.raises(KafkaException) as raised:
            app._produce("out", b"v", "k")
        assert app._retried_after_refusal(raised.value)
        assert (app._lost, app._in_txn, app._aborted_checkpoints) == (True, False, n)
        assert app._delivery_errors == []  # (the aborted transaction's: forgotten)
        app._lost = False
        app._in_txn = True
    producer.reported = True
    with pytest.raises(KafkaException) as raised:
        app._produce("out", b"v", "k")
    with pytest.raises(
        PipelineError, match=r"checkpoint failed: .*small\[2\]: Broker: Message size too large"
    ):
        app._retried_after_refusal(raised.value)
    assert producer.calls.count("abort") == app_module._MAX_ABORTED_CHECKPOINTS
    # Not a refusal: not this path's.
    assert not app._retried_after_refusal(KafkaException(REFUSED))


class Emitting(Nothing):
    id = "emitting"

    def process(self, batch: Any, ctx: Context) -> None:
        ctx.emit("out", batch[0].event)


class EmittingLettered(Emitting):
    id = "emitting-lettered"
    dead_letter_errors = True


@pytest.mark.parametrize("operator", [Emitting, EmittingLettered])
def test_an_operator_is_not_blamed_for_a_refused_record_nor_its_record_dead_lettered(
    tmp_path: Path, operator: type[Emitting]
) -> None:
    # Blamed, the stage stopped with "operator 'x' failed ... Erroneous state"; an operator that
    # dead-letters its errors took it for the record's failure, and its letter failed the same
    # way (a client failure).  Raised as it is, the loop aborts and processes again.
    op = operator()
    app, producer = refusing(tmp_path, operators=[op])
    task = _PartitionTask(0)
    task.contexts = [(op, _KafkaContext(app, task, op))]
    app._tasks[0] = task
    event = Login(event_id="e1", source="t", occurred_at=utcnow())
    with pytest.raises(KafkaException) as raised:
        app._call_operators({0: [Record(event, "in", 0, 0, None, 0)]})
    assert raised.value.args[0].txn_requires_abort()
    assert producer.calls == ["produce"]  # (no dead letter tried)
    assert app.metrics.dead_lettered == 0
