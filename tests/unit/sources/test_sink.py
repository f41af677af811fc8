"""The raw sink's failures keep no Kafka client alive (no broker: one that does not answer), and
say what they left committed."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from vigil.config import load_settings
from vigil.errors import BrokerError, chained
from vigil.hub.broker import free_port_block
from vigil.hub.client import drop_frame_locals
from vigil.hub.raw import RawRecord
from vigil.sources.sink import KafkaRawSink, cursor_topic

CLIENTS = (Producer, Consumer, AdminClient)


def held_producers(exc: BaseException) -> list[object]:
    """Kafka clients reachable from ``exc``: its frames' locals, and its context's and cause's."""
    found: list[object] = []
    for err in chained(exc):
        tb = err.__traceback__
        while tb is not None:
            found += [v for v in tb.tb_frame.f_locals.values() if isinstance(v, CLIENTS)]
            tb = tb.tb_next
    return found


def test_a_failed_start_keeps_no_producer_alive_in_its_error() -> None:
    # A retry loop that keeps its last failure (the ingest buffer logs it) kept the producer
    # through the error's traceback: a client dialling a dead broker for the life of the process.
    settings = load_settings(kafka_bootstrap=f"127.0.0.1:{free_port_block(1)}")
    sink = KafkaRawSink(settings, source_id="nobody-home", topic_for=lambda _r: "t", timeout_s=1)
    record = RawRecord(source="test", kind="item", value=b"v", received_at=datetime.now(UTC), key=b"k")
    with pytest.raises(BrokerError, match="cannot start a Kafka transaction") as info:
        sink.publish([record])
    assert held_producers(info.value) == []
    sink.close()


def test_a_publish_given_a_timeout_fails_within_it_with_the_broker_down() -> None:
    # A syslog receiver draining for 20 s on its way out waited for the sink's own timeouts: a
    # start of 30 s here (and with a broker that went away mid-transaction, three commits and an
    # abort of 30 s each).  The sink's timeout is a minute; the publish is given 1 s.
    settings = load_settings(kafka_bootstrap=f"127.0.0.1:{free_port_block(1)}")
    sink = KafkaRawSink(settings, source_id="nobody-home", topic_for=lambda _r: "t", timeout_s=60)
    record = RawRecord(source="test", kind="item", value=b"v", received_at=datetime.now(UTC), key=b"k")
    raised: list[BaseException] = []

    def publish() -> None:
        try:
            sink.publish([record], timeout=1.0)
        except BaseException as exc:  # asserted below
            raised.append(exc)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    thread.join(20)  # a third of the sink's own timeout
    assert not thread.is_alive(), "the publish outlived its timeout"
    assert len(raised) == 1
    assert isinstance(raised[0], BrokerError)
    assert "cannot start a Kafka transaction" in str(raised[0])
    sink.close()


def test_a_failed_cursor_read_or_topic_check_keeps_no_client_alive_in_its_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before the producer: the cursor topic is checked (an admin client), the cursor read (a
    # consumer and an admin client).  The admin client lived on in the error, dialling.
    monkeypatch.setattr("vigil.hub.admin._TIMEOUT", 1.0)  # the broker's silence, sooner
    settings = load_settings(kafka_bootstrap=f"127.0.0.1:{free_port_block(1)}")
    sink = KafkaRawSink(settings, source_id="nobody-home", topic_for=lambda _r: "t", timeout_s=1)
    with pytest.raises(BrokerError) as info:
        sink.last_cursor("nobody-home")
    assert held_producers(info.value) == []
    sink.close()


def test_dropping_an_errors_locals_leaves_a_suspended_generator_running() -> None:
    # frame.clear() on a suspended generator's frame closes it: an error a generator caught
    # and kept (its context chain reaching the generator's frame) must not end the generator.
    def counting() -> Iterator[int]:
        n = 0
        while True:
            try:
                raise ValueError(n)
            except ValueError as exc:
                kept.append(exc)
            n += 1
            yield n

    kept: list[BaseException] = []
    numbers = counting()
    assert next(numbers) == 1
    try:
        raise BrokerError("outer")
    except BrokerError as exc:
        exc.__context__ = kept[0]
        drop_frame_locals(exc)
    assert next(numbers) == 2


class _Transactions:
    """A transactional producer's calls, answered as a broker that times a commit out would: a
    real broker cannot be made to time out a commit on cue, nor refuse the abort after it (the
    rest of the sink runs against a real one in tests/integration/sources/test_sink.py)."""

    def __init__(self, commit_errors: list[KafkaError], abort_error: KafkaError | None = None) -> None:
        self.commit_errors = commit_errors
        self.abort_error = abort_error
        self.calls: list[str] = []

    def init_transactions(self, timeout: float) -> None:
        self.calls.append("init")

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def produce(self, topic: str, **record: Any) -> None:
        self.calls.append("produce")

    def poll(self, timeout: float) -> int:
        return 0

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append("commit")
        if self.commit_errors:
            raise KafkaException(self.commit_errors.pop(0))

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append("abort")
        if self.abort_error is not None:
            raise KafkaException(self.abort_error)


TIMED_OUT = KafkaError(KafkaError._TIMED_OUT, "Transactional operation timed out", retriable=True)


def _publish_through(producer: _Transactions, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vigil.sources.sink.make_producer", lambda _settings, **_conf: producer)
    settings = load_settings(kafka_bootstrap=f"127.0.0.1:{free_port_block(1)}")
    sink = KafkaRawSink(settings, source_id="txn-test", topic_for=lambda _r: "t")
    sink.publish([RawRecord(source="test", kind="item", value=b"v", received_at=datetime.now(UTC), key=b"k")])


def test_a_commit_that_timed_out_is_asked_again_not_aborted(monkeypatch: pytest.MonkeyPatch) -> None:
    # Calling commit again is how librdkafka finishes a commit that timed out; the sink aborted
    # a batch that may well have committed, and said nothing was.
    producer = _Transactions([TIMED_OUT])
    _publish_through(producer, monkeypatch)
    assert producer.calls == ["init", "begin", "produce", "commit", "commit"]


def test_a_failed_commit_whose_abort_failed_too_says_the_outcome_is_not_known(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    producer = _Transactions(
        [TIMED_OUT] * 3, abort_error=KafkaError(KafkaError._STATE, "Operation not valid in state Commit")
    )
    with pytest.raises(BrokerError, match="whether it was committed is not known") as info:
        _publish_through(producer, monkeypatch)
    assert "nothing was committed" not in str(info.value)
    assert producer.calls[-4:] == ["commit", "commit", "commit", "abort"]


def test_a_failed_commit_that_was_aborted_says_nothing_was_committed(monkeypatch: pytest.MonkeyPatch) -> None:
    producer = _Transactions([KafkaError(KafkaError.INVALID_TXN_STATE, "not retriable")])
    with pytest.raises(BrokerError, match=r"nothing was committed: .*not retriable"):
        _publish_through(producer, monkeypatch)
    assert producer.calls[-2:] == ["commit", "abort"]


@pytest.mark.parametrize("source_id", ["ethereum", "ethereum-a", "intel.lists", "a_b", "x" * 235])
def test_a_source_id_that_is_a_topic_name_keeps_its_cursor_topic_name(source_id: str) -> None:
    # The names earlier versions made: kept, or a connector would lose its cursor on upgrade.
    assert cursor_topic(source_id) == f"vigil.cursors.{source_id}"


@pytest.mark.parametrize(
    "source_id",
    ["eth node", "ethereum/a", "x:y", "caf\u00e9", "", "x" * 236, "ethereum " + "z" * 400, "\ud800"],
)
def test_any_source_id_gets_a_valid_stable_cursor_topic_of_its_own(source_id: str) -> None:
    # The id named the topic as it was: a space, a slash or a long id and the connector failed
    # at start with Kafka's refusal of the name.
    topic = cursor_topic(source_id)
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,249}", topic), topic
    assert topic.startswith("vigil.cursors.")
    assert cursor_topic(source_id) == topic  # the same at every start
    assert cursor_topic(source_id + "!") != topic
    assert topic not in {
        cursor_topic(other) for other in ("eth_node", "eth  node", "eth\tnode") if other != source_id
    }


def test_a_mapped_cursor_topic_starts_with_the_ids_readable_part() -> None:
    # The ACLs grant a source vigil.cursors.<its name>, prefixed: an id starting with the name
    # keeps that prefix.
    assert cursor_topic("ethereum node 2").startswith("vigil.cursors.ethereum_node_2-")
    assert cursor_topic("ethereum " + "z" * 400).startswith("vigil.cursors.ethereum_zzz")


def test_prepare_with_the_broker_down_says_so_and_the_connector_still_starts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepared at a source's start: raised, it stopped the connector before it listened (syslog
    # buffers while Kafka is away, a webhook answers 503 for a retry), and `vigil run` with it.
    from vigil.cli.source import run_connector
    from vigil.sources.syslog import SyslogSource

    settings = load_settings(kafka_bootstrap=f"127.0.0.1:{free_port_block(1)}")
    sink = KafkaRawSink(settings, source_id="syslog-nobody-home", timeout_s=1)
    source = SyslogSource(udp_port=0, tcp_port=None, flush_interval=0.05, drain_timeout=0)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            run_connector(source, sink)
        except BaseException as exc:  # asserted below
            raised.append(exc)

    with caplog.at_level("WARNING", logger="vigil.sources.sink"):
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            assert source.ready.wait(20), f"the connector did not start: {raised}"
        finally:
            source.stop()
            thread.join(30)
    assert not thread.is_alive()
    assert raised == []
    assert any("cannot start a Kafka transaction" in r.getMessage() for r in caplog.records)
    sink.close()
