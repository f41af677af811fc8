"""Dead letters: what a dead-letter topic holds, and sending its records through again.

A stage that cannot take a record dead-letters it (``dlq.<stage>``: a
:class:`~vigil.events.records.DeadLetter` naming the record's topic, partition and offset, the
reason, and its bytes) and goes on.  :func:`summarize` groups a dead-letter topic's letters by
stage, source topic and the shape of their reason, for triage.

Once the cause is fixed (a normaliser, a rule, a producer's data), :func:`redrive` appends each
dead-lettered record again to the topic it came from, so its stage reads it again.  The record
appended is the original, read back by its offset: key, value and headers exactly as they were
(a dead letter keeps the value, but not the headers a raw record's kind and time are in), plus
a ``vigil.redriven_from`` header naming the letter.  A record the topic no longer holds
(retention, a deleted topic) and a letter not from Kafka (the ingest API's rejected lines,
which the calling service resends) are reported, not redriven.

Each redrive keeps its position in the dead-letter topic in a consumer group of its own, one per
filter (``reason_contains``), committed with the records it appends in one Kafka transaction:
a redrive stopped half-way and run again neither skips nor repeats a letter, and letters a
filter passed over are still there for another filter.  ``from_beginning`` starts again from
the first letter; a record redriven twice is deduplicated downstream as any redelivery is
(event ids are stable).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from vigil.config import Settings
from vigil.errors import BrokerError, ConfigError
from vigil.events.ids import stable_id
from vigil.events.records import DeadLetter
from vigil.hub.client import (
    is_transient,
    kafka_error,
    make_admin,
    make_consumer,
    make_producer,
    partition_offsets,
)

#: The header a redriven record carries: ``<dead-letter topic>[<partition>]@<offset>``.
REDRIVEN_FROM = "vigil.redriven_from"
#: Letters per transaction.
BATCH = 200

_decoder = msgspec.json.Decoder(DeadLetter)


@dataclass
class LetterGroup:
    """Letters of one stage and source topic whose reasons have one shape."""

    stage: str
    topic: str
    reason: str
    count: int = 0
    first: datetime | None = None
    last: datetime | None = None
    #: Where one of them is: ``<dead-letter topic>[<partition>]@<offset>``.
    example: str = ""


@dataclass
class Summary:
    groups: list[LetterGroup] = field(default_factory=list)
    letters: int = 0
    #: Records of the topic that are not dead letters (named where they are).
    undecodable: list[str] = field(default_factory=list)


@dataclass
class Redriven:
    group: str
    redriven: int = 0
    #: Letters a filter passed over.
    passed: int = 0
    #: Letters whose record could not be sent again, each with why.
    unavailable: list[str] = field(default_factory=list)
    undecodable: list[str] = field(default_factory=list)
    #: Where each redriven record was appended: ``<topic>[<partition>]@<offset>`` (not in a dry run).
    appended: list[str] = field(default_factory=list)


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
#: A number not part of a name ("line 3", "offset 12"; not "UTF-8").
_NUMBER = re.compile(r"(?<![A-Za-z]-)(?<![A-Za-z])\d+")


def reason_shape(reason: str) -> str:
    """A reason with its particulars blanked: quoted values and numbers (line numbers, offsets,
    amounts) vary between letters of one cause.  Backquoted text is kept: msgspec names types
    and field paths so (`str`, `$.payload.amount`)."""
    return _NUMBER.sub("#", _QUOTED.sub("…", reason))[:200]


def _place(message: Message) -> str:
    return f"{message.topic()}[{message.partition()}]@{message.offset()}"


def _letters(consumer: Consumer, ends: dict[int, int], topic: str, timeout_s: float) -> Iterator[Message]:
    """The records of ``topic`` from the consumer's assigned positions up to ``ends``."""
    deadline = time.monotonic() + timeout_s
    while ends:
        if time.monotonic() > deadline:
            msg = f"reading {topic!r} did not reach its end within {timeout_s:g}s (partitions {sorted(ends)})"
            raise BrokerError(msg)
        for message in consumer.consume(500, 0.2):
            err = message.error()
            if err is None:
                yield message
            elif err.fatal():  # (others, end-of-partition among them, pass: the loop reads on)
                msg = f"reading {topic!r} failed: {err.str()}"
                raise BrokerError(msg)
        for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
            if tp.offset >= ends[tp.partition]:
                del ends[tp.partition]


def _open(
    settings: Settings, topic: str, group: str, *, from_beginning: bool
) -> tuple[Consumer, dict[int, int]]:
    """A consumer of ``topic`` under ``group``, at the group's committed positions (the start
    when none, or ``from_beginning``), and each partition's end now."""
    consumer = make_consumer(
        settings,
        group,
        **{"enable.auto.commit": False, "fetch.wait.max.ms": 20, "auto.offset.reset": "earliest"},
    )
    try:
        found = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if found is None or found.error is not None:
            where = settings.kafka_client_config()["bootstrap.servers"]
            msg = f"no topic {topic!r} on {where}" + (f" ({found.error})" if found else "")
            raise ConfigError(msg)
        partitions = sorted(found.partitions)
        marks = partition_offsets(
            make_admin(settings), [(topic, p) for p in partitions], time.monotonic() + 30
        )
        committed = _committed(consumer, [TopicPartition(topic, p) for p in partitions])
        starts, ends = [], {}
        for p in partitions:
            low, high = marks[topic, p]
            at = low if from_beginning or committed.get(p, -1) < 0 else max(low, committed[p])
            if at < high:
                starts.append(TopicPartition(topic, p, at))
                ends[p] = high
        if starts:
            consumer.assign(starts)
        return consumer, ends
    except BaseException:
        consumer.close()
        raise


_COORDINATOR_LOADING = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
    }
)


def _committed(consumer: Consumer, tps: list[TopicPartition], timeout_s: float = 60.0) -> dict[int, int]:
    """The group's committed offsets (-1: none), asked again while its coordinator is still
    loading (a fresh broker, a moved coordinator)."""
    deadline = time.monotonic() + timeout_s
    pause = 0.1
    while True:
        try:
            return {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=30)}
        except KafkaException as exc:
            err = kafka_error(exc)
            loading = err is not None and err.code() in _COORDINATOR_LOADING
            if not (loading or is_transient(exc)) or time.monotonic() + pause > deadline:
                msg = f"committed offsets of {tps[0].topic!r}: {err.str() if err is not None else exc}"
                raise BrokerError(msg) from None
        time.sleep(pause)  # the coordinator is loading: back off, not a sync point
        pause = min(pause * 2, 2.0)


def summarize(settings: Settings, topic: str, *, timeout_s: float = 120.0) -> Summary:
    """Every letter of a dead-letter topic, grouped by stage, source topic and reason shape
    (the largest group first)."""
    consumer, ends = _open(settings, topic, f"vigil.dlq-summary.{uuid.uuid4().hex[:8]}", from_beginning=True)
    out = Summary()
    groups: dict[tuple[str, str, str], LetterGroup] = {}
    try:
        for message in _letters(consumer, ends, topic, timeout_s):
            try:
                letter = _decoder.decode(message.value() or b"")
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                out.undecodable.append(f"{_place(message)}: {exc}")
                continue
            out.letters += 1
            shape = reason_shape(letter.reason)
            group = groups.setdefault(
                (letter.stage, letter.topic, shape), LetterGroup(letter.stage, letter.topic, shape)
            )
            group.count += 1
            group.first = letter.failed_at if group.first is None else min(group.first, letter.failed_at)
            group.last = letter.failed_at if group.last is None else max(group.last, letter.failed_at)
            group.example = group.example or _place(message)
    finally:
        consumer.close()
    out.groups = sorted(groups.values(), key=lambda g: (-g.count, g.stage, g.topic, g.reason))
    return out


def redrive_group(topic: str, reason_contains: str | None) -> str:
    """The consumer group (and transactional id) a redrive of ``topic`` with this filter keeps
    its position in."""
    return f"vigil.dlq-redrive.{topic}.{stable_id('reason', reason_contains or '')[:12]}"


class _Originals:
    """Reads records back by offset (``read_committed``: what the stage was given)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._consumer = make_consumer(
            settings,
            f"vigil.dlq-read.{uuid.uuid4().hex[:8]}",
            **{"fetch.wait.max.ms": 20, "enable.partition.eof": True},
        )
        self._marks: dict[tuple[str, int], tuple[int, int]] = {}

    def close(self) -> None:
        self._consumer.close()

    def get(self, topic: str, partition: int, offset: int) -> Message | str:
        """The record, or why it cannot be had."""
        if partition < 0 or offset < 0:
            return f"not from Kafka ({topic}): resend it from where it came"
        where = (topic, partition)
        if where not in self._marks:
            found = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
            if found is None or found.error is not None or partition not in found.partitions:
                return f"{topic}[{partition}] does not exist (any more)"
            self._marks.update(partition_offsets(make_admin(self._settings), [where], time.monotonic() + 30))
        low, high = self._marks[where]
        if not low <= offset < high:
            return f"{topic}[{partition}]@{offset} is gone (the partition holds {low}..{high - 1}: retention)"
        self._consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = self._consumer.poll(0.5)
            if message is None:
                continue
            err = message.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    break
                if err.fatal():
                    msg = f"reading {topic}[{partition}]@{offset} failed: {err.str()}"
                    raise BrokerError(msg)
                continue
            if message.offset() == offset:
                return message
            break  # a later record: the one asked for was not committed
        return f"{topic}[{partition}]@{offset} is no committed record"


def redrive(
    settings: Settings,
    topic: str,
    *,
    reason_contains: str | None = None,
    from_beginning: bool = False,
    dry_run: bool = False,
    timeout_s: float = 600.0,
    progress: Callable[[int], None] | None = None,
) -> Redriven:
    """Append the records of ``topic``'s dead letters again to the topics they came from (see the
    module).  ``reason_contains``: only letters whose reason contains it (case ignored);
    ``dry_run``: count what would be sent, send nothing and move no position; ``progress`` is
    called with the number of letters read so far."""
    group = redrive_group(topic, reason_contains)
    out = Redriven(group)
    needle = (reason_contains or "").lower()
    consumer, ends = _open(settings, topic, group, from_beginning=from_beginning)
    originals = _Originals(settings)
    producer: Producer | None = None
    try:
        if not dry_run:
            producer = make_producer(
                settings, **{"transactional.id": group, "transaction.timeout.ms": 60_000}
            )
            producer.init_transactions(30)
        letters = _letters(consumer, ends, topic, timeout_s)
        read = 0
        while batch := [m for _, m in zip(range(BATCH), letters, strict=False)]:
            sends: list[tuple[Message, Message]] = []
            for message in batch:
                read += 1
                try:
                    letter = _decoder.decode(message.value() or b"")
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    out.undecodable.append(f"{_place(message)}: {exc}")
                    continue
                if needle and needle not in letter.reason.lower():
                    out.passed += 1
                    continue
                original = originals.get(letter.topic, letter.partition, letter.offset)
                if isinstance(original, str):
                    out.unavailable.append(f"{_place(message)}: {original}")
                else:
                    sends.append((message, original))
            if producer is not None:
                # The position is past this batch's letters, not the consumer's: it may have
                # fetched further than the batch, and a redrive stopped here resumes after it.
                past = {m.partition(): m.offset() + 1 for m in batch}
                at = [TopicPartition(topic, p, o) for p, o in sorted(past.items())]
                out.appended += _send(producer, consumer, topic, at, sends)
            out.redriven += len(sends)
            if progress is not None:
                progress(read)
    finally:
        originals.close()
        consumer.close()
        if producer is not None:
            producer.flush(10)
    return out


def _send(
    producer: Producer,
    consumer: Consumer,
    topic: str,
    at: list[TopicPartition],
    sends: list[tuple[Message, Message]],
) -> list[str]:
    """One transaction: the records again, and the redrive's position ``at`` in ``topic``; where
    each record went."""
    producer.begin_transaction()
    placed: list[str] = []

    def delivered(err: KafkaError | None, message: Message) -> None:
        if err is None:
            placed.append(_place(message))

    for letter, original in sends:
        headers = [(k, v) for k, v in (original.headers() or []) if k != REDRIVEN_FROM]
        producer.produce(
            original.topic(),
            value=original.value(),
            key=original.key(),
            headers=[*headers, (REDRIVEN_FROM, _place(letter).encode())],
            on_delivery=delivered,
        )
    producer.send_offsets_to_transaction(at, consumer.consumer_group_metadata(), 30)
    producer.commit_transaction(60)
    if len(placed) != len(sends):
        msg = f"redrive of {topic!r}: {len(sends) - len(placed)} of {len(sends)} records were not delivered"
        raise BrokerError(msg)
    return placed
