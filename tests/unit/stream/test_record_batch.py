"""The records an operator is handed: a RecordBatch whose events are there at once and whose
records are built only when asked for, each as the runtime read it (stand-ins for the clients)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError
from tests.unit.stream.offline import Nothing

from vigil.config import load_settings
from vigil.events.codec import encode
from vigil.events.examples import example_events
from vigil.stream.app import Application, _KafkaContext, _PartitionTask
from vigil.stream.base import Context, Operator, Record, RecordBatch, events_of

EVENTS = example_events(datetime(2026, 1, 1, tzinfo=UTC))


def test_a_record_batch_builds_its_records_once_and_only_when_asked() -> None:
    events = EVENTS[:3]
    built: list[int] = []

    def build() -> list[Record[Any]]:
        built.append(1)
        return [Record(e, "in", 0, i, None, 0, None) for i, e in enumerate(events)]

    batch = RecordBatch(list(events), build)
    assert len(batch) == 3
    assert events_of(batch) is batch.events  # (its own: no record built)
    assert repr(batch) == "RecordBatch(3 records)"
    assert built == []
    assert [r.offset for r in batch] == [0, 1, 2]
    assert batch[1].event is events[1]
    assert [r.offset for r in batch[1:]] == [1, 2]
    assert batch.records() is batch.records()
    assert built == [1]


def test_events_of_any_other_sequence_reads_its_records() -> None:
    records = [Record(e, "in", 0, i, None, 0, None) for i, e in enumerate(EVENTS[:2])]
    assert events_of(records) == [EVENTS[0], EVENTS[1]]
    assert events_of(()) == []


class Message:
    """A consumed record, as the loop reads it."""

    def __init__(
        self, topic: str, partition: int, offset: int, value: bytes, key: bytes | None = None
    ) -> None:
        self._at = (topic, partition, offset)
        self._value = value
        self._key = key

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._at[0]

    def partition(self) -> int:
        return self._at[1]

    def offset(self) -> int:
        return self._at[2]

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def timestamp(self) -> tuple[int, int]:
        return (1, 1000 + self._at[2])

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return [("h", str(self._at[2]).encode())]


class EndOfPartition(Message):
    """What the consumer hands over at a partition's end (enable.partition.eof)."""

    def error(self) -> KafkaError:
        return KafkaError(KafkaError._PARTITION_EOF)


class Producing:
    """The producer: what was sent, by topic."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, str | bytes | None]] = []

    def produce(self, topic: str, value: bytes, key: str | bytes | None = None) -> None:
        self.sent.append((topic, value, key))


class Keeping(Nothing):
    """Keeps each batch it is given, by partition."""

    id = "keeping"

    def __init__(self) -> None:
        self.batches: list[tuple[int, Sequence[Record[Any]]]] = []

    def process(self, batch: Sequence[Record[Any]], ctx: Context) -> None:
        self.batches.append((ctx.partition, batch))


def sent(app: Application) -> list[tuple[str, bytes, str | bytes | None]]:
    producer = app._producer
    assert isinstance(producer, Producing)
    return producer.sent


def app_reading(
    tmp_path: Path, inputs: list[str], op: Keeping, *more: Operator[Any], **kw: Any
) -> Application:
    app = Application(
        load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path),
        name="a",
        inputs=inputs,
        operators=[op, *more],
        guarantee="at_least_once",
        **kw,
    )
    app._producer = Producing()
    for part in (0, 1):
        task = app._tasks[part] = _PartitionTask(part)
        task.contexts.extend((each, _KafkaContext(app, task, each)) for each in (op, *more))
    return app


def test_records_are_built_as_they_were_read_from_each_topic_and_partition(tmp_path: Path) -> None:
    # Two inputs, unaligned: one partition's batch holds records of both topics (its records name
    # each one's own topic), and a partition not owned (fetched before a revocation) is passed over.
    op = Keeping()
    app = app_reading(tmp_path, ["in", "other"], op)
    app._owned.update({("in", 0), ("other", 0), ("in", 1)})
    value = [encode(e) for e in EVENTS[:4]]
    msgs = [
        Message("in", 0, 7, value[0], b"k0"),
        Message("in", 0, 8, value[1]),
        Message("other", 0, 3, value[2], b"k2"),
        Message("in", 1, 20, value[3]),
        Message("other", 1, 9, value[0]),  # (not owned)
    ]
    app._process(msgs)
    batches = dict(op.batches)
    assert sorted(batches) == [0, 1]
    zero = batches[0]
    assert isinstance(zero, RecordBatch)
    assert zero._records is None  # (nothing asked for them yet)
    assert [e.event_id for e in events_of(zero)] == [e.event_id for e in EVENTS[:3]]
    assert [(r.topic, r.partition, r.offset, r.key, r.timestamp_ms, r.value) for r in zero] == [
        ("in", 0, 7, b"k0", 1007, value[0]),
        ("in", 0, 8, None, 1008, value[1]),
        ("other", 0, 3, b"k2", 1003, value[2]),
    ]
    assert [r.event.event_id for r in zero] == [e.event_id for e in EVENTS[:3]]
    assert [(r.topic, r.offset) for r in batches[1]] == [("in", 20)]
    assert app._next_offsets == {("in", 0): 9, ("other", 0): 4, ("in", 1): 21}


def test_a_run_ending_in_a_skipped_record_is_read_past_it(tmp_path: Path) -> None:
    # The offset a run leaves is its last record's, whether that one was handed over or skipped.
    op = Keeping()
    skipped = EVENTS[1]
    app = app_reading(tmp_path, ["in"], op, skip_types=[skipped.type])
    app._owned.add(("in", 0))
    kept = next(e for e in EVENTS if e.type != skipped.type)
    app._process([Message("in", 0, 5, encode(kept)), Message("in", 0, 6, encode(skipped))])
    ((_, batch),) = op.batches
    assert [r.offset for r in batch] == [5]
    assert app._next_offsets == {("in", 0): 7}
    assert app.metrics.skipped == 1


def test_undecodable_records_and_partition_ends_leave_the_records_in_step(tmp_path: Path) -> None:
    # A record dead-lettered mid-run and one at a run's end: the events handed over and the
    # records built from them stay paired, and the run is read past its last record.
    op = Keeping()
    app = app_reading(tmp_path, ["in"], op)
    app._owned.update({("in", 0), ("in", 1)})
    good = [encode(e) for e in EVENTS[:3]]
    app._process(
        [
            Message("in", 0, 10, good[0]),
            Message("in", 0, 11, b"{not json"),
            EndOfPartition("in", 1, 0, b""),
            Message("in", 0, 12, good[1], b"k"),
            Message("in", 1, 30, good[2]),
            Message("in", 1, 31, b"[]"),
        ]
    )
    batches = dict(op.batches)
    assert [(r.offset, r.value, r.event.event_id) for r in batches[0]] == [
        (10, good[0], EVENTS[0].event_id),
        (12, good[1], EVENTS[1].event_id),
    ]
    assert [(r.offset, r.event.event_id) for r in batches[1]] == [(30, EVENTS[2].event_id)]
    assert app._next_offsets == {("in", 0): 13, ("in", 1): 32}
    letters = [(topic, key) for topic, _, key in sent(app)]
    assert letters == [(app.dlq_topic, None), (app.dlq_topic, None)]


def test_runs_of_one_partition_apart_make_one_batch_in_offset_order(tmp_path: Path) -> None:
    op = Keeping()
    app = app_reading(tmp_path, ["in"], op)
    app._owned.update({("in", 0), ("in", 1)})
    value = [encode(e) for e in EVENTS[:3]]
    app._process(
        [Message("in", 0, 1, value[0]), Message("in", 1, 5, value[1]), Message("in", 0, 2, value[2])]
    )
    batches = dict(op.batches)
    assert [r.offset for r in batches[0]] == [1, 2]
    assert list(events_of(batches[0])) == [r.event for r in batches[0]]
    assert app._next_offsets == {("in", 0): 3, ("in", 1): 6}


def test_operators_of_a_partition_share_its_records_and_cannot_reorder_its_events(tmp_path: Path) -> None:
    first, second = Keeping(), Keeping()
    second.id = "second"
    app = app_reading(tmp_path, ["in"], first, second)
    app._owned.add(("in", 0))
    app._process([Message("in", 0, i, encode(e)) for i, e in enumerate(EVENTS[:3])])
    ((_, one),), ((_, other),) = first.batches, second.batches
    assert one is other
    assert [id(r) for r in one] == [id(r) for r in other]
    events = events_of(one)
    assert isinstance(events, tuple)  # (a list sorted in place paired events with other records)
    assert [r.offset for r in one] == [0, 1, 2]


def test_a_custom_decoder_is_given_each_record_s_key_and_headers(tmp_path: Path) -> None:
    seen: list[tuple[str, bytes | None, Any]] = []

    def decode(topic: str, value: bytes, key: bytes | None, headers: Any) -> Any:
        seen.append((topic, key, headers))
        return EVENTS[0]

    op = Keeping()
    app = app_reading(tmp_path, ["in"], op, decode=decode)
    app._owned.add(("in", 0))
    app._process([Message("in", 0, 4, b"raw", b"k4")])
    assert seen == [("in", b"k4", [("h", b"4")])]
    ((_, batch),) = op.batches
    assert [(r.offset, r.key, r.value) for r in batch] == [(4, b"k4", b"raw")]


class Failing(Keeping):
    """Fails on the record at offset 1, dead-lettering it."""

    id = "failing"
    dead_letter_errors = True

    def process(self, batch: Sequence[Record[Any]], ctx: Context) -> None:
        for record in batch:
            if record.offset == 1:
                raise ValueError("offset 1")
        super().process(batch, ctx)


def test_a_dead_letter_operator_is_given_each_record_of_the_batch(tmp_path: Path) -> None:
    op = Failing()
    app = app_reading(tmp_path, ["in"], op)
    app._owned.add(("in", 0))
    value = [encode(e) for e in EVENTS[:3]]
    app._process([Message("in", 0, i, v) for i, v in enumerate(value)])
    assert [[r.offset for r in batch] for _, batch in op.batches] == [[0], [2]]
    ((topic, letter, _),) = sent(app)
    assert topic == app.dlq_topic
    assert b"offset 1" in letter
    assert b'"h"' in letter  # (the record's headers, read from its message)
