"""Sending dead-lettered records through again, once the cause is fixed.

:func:`redrive` appends each letter's record again to the topic it came from, so its stage
reads it again.  The record appended is the original, read back by its offset: key, value,
headers and partition exactly as they were (a dead letter keeps the value, but not the headers
a raw record's kind and time are in, and not at all a record of several MB), plus a
``vigil.redriven_from`` header naming the letter.  The record found there must be the one
dead-lettered (its key, and its bytes when the letter has them).  A record the topic no longer
holds (retention, a topic made again) and a letter not from Kafka (the ingest API's rejected
lines, which the calling service resends) are reported, not sent.

Only stages' inputs are written: ``raw.<source>``, ``events.<domain>`` and ``detect.routed``
(under any topic prefix), and topics named with ``allow_topics``.  A letter's topic is data,
written by whoever may write the dead-letter topic, and an old record appended again elsewhere
does harm: to ``vigil.cursors`` it rewinds a connector, to ``intel.indicators`` it brings back a
withdrawn indicator, to ``decisions`` it repeats an action.

Each redrive keeps its position in the dead-letter topic in a consumer group of its own, one per
filter (``reason_contains``), committed with the records it appends in one Kafka transaction:
a redrive stopped half-way and run again neither skips nor repeats a letter, and letters a
filter passed over are still there for another filter.  ``from_beginning`` starts again from
the first letter.  A record sent twice carries the same event ids; what downstream makes of a
repeat is what it makes of any redelivery.  A letter of a record that was itself sent again (it
failed again) is listed, not sent, unless ``again``: the cause is not fixed, and a redrive run on
a schedule would send it round for ever.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from functools import partial

import msgspec
from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from vigil.config import Settings
from vigil.errors import BrokerError
from vigil.events.ids import stable_id
from vigil.events.records import DeadLetter
from vigil.hub.client import (
    READ_FATAL,
    kafka_error,
    make_admin,
    make_consumer,
    make_producer,
    partition_offsets,
)
from vigil.hub.dlq import decoder, letters, open_letters, place
from vigil.hub.topics import DOMAINS, RAW_RECORD_MAX_BYTES

#: The header a redriven record carries: ``<dead-letter topic>[<partition>]@<offset>``.
REDRIVEN_FROM = "vigil.redriven_from"
#: Letters per transaction, and the bytes of records: a chain block is several MB, and librdkafka
#: queues at most 1 GiB.
BATCH = 200
BATCH_BYTES = 128 << 20
#: Stages' inputs, under any topic prefix (one ending in "." as ``topic_prefix`` makes them).
INPUT_TOPIC = re.compile(
    r"(?:[A-Za-z0-9._-]*\.)?(?:raw\.[a-z0-9_-]+|events\.(?:"
    + "|".join(sorted(DOMAINS))
    + r")|detect\.routed)"
)
#: A record at most this many offsets on from where the reader is is read on to (see _read).
READ_ON = 256
#: Partitions read at once, each by a consumer of its own (the least recently used one goes).
READERS = 16
#: Kafka's longest topic name.
_MAX_TOPIC = 249
_GONE = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.TOPIC_EXCEPTION})
_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})


@dataclass
class Redriven:
    group: str
    redriven: int = 0
    #: Letters a filter passed over.
    passed: int = 0
    #: Letters whose record could not be sent again, each with why.
    unavailable: list[str] = field(default_factory=list)
    #: Letters of records that were themselves sent again and failed again (not sent unless
    #: ``again``: a redrive run on a schedule would otherwise send them round for ever).
    failed_again: list[str] = field(default_factory=list)
    undecodable: list[str] = field(default_factory=list)
    #: Where each redriven record was appended: ``<topic>[<partition>]@<offset>`` (not in a dry run).
    appended: list[str] = field(default_factory=list)


def redrive_group(topic: str, reason_contains: str | None) -> str:
    """The consumer group (and transactional id) a redrive of ``topic`` with this filter keeps
    its position in (the filter's case ignored, as the filter ignores it)."""
    return f"vigil.dlq-redrive.{topic}.{stable_id('reason', (reason_contains or '').lower())[:12]}"


class _Originals:
    """Reads records back by offset (``read_committed``: what the stage was given)."""

    def __init__(self, settings: Settings, allow_topics: Collection[str]) -> None:
        self._settings = settings
        self._allow = set(allow_topics)
        self._admin = make_admin(settings)
        #: (topic, partition) -> (low, high), or why there is nothing to read there.
        self._marks: dict[tuple[str, int], tuple[int, int] | str] = {}
        #: A reader per partition last read, the least recently used first.
        self._readers: dict[tuple[str, int], _Reader] = {}

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

    def get(self, letter: DeadLetter) -> Message | str:
        """The record ``letter`` names, or why it cannot be had; raises :class:`BrokerError` when
        that cannot be told (a read refused or timing out is no reason to pass a letter over for
        good)."""
        topic, partition, offset = letter.topic, letter.partition, letter.offset
        if partition < 0 or offset < 0:
            return f"not from Kafka ({topic[:80]!r}): resend it from where it came"
        if topic not in self._allow and not (len(topic) <= _MAX_TOPIC and INPUT_TOPIC.fullmatch(topic)):
            return (
                f"{topic[:80]!r} is no stage's input (raw.<source>, events.<domain>, detect.routed): "
                "not sent (--allow-topic to send there)"
            )
        marks = self._marks.get((topic, partition)) or self._ask(topic, partition)
        if isinstance(marks, str):
            return marks
        low, high = marks
        if offset >= high:
            return f"{topic}[{partition}]@{offset} is past the end ({high}): the topic was made again since?"
        if offset < low:
            return f"{topic}[{partition}]@{offset} is gone (the partition starts at {low}: retention)"
        message = self._reader(topic, partition).read(offset)
        if message is None:
            return f"{topic}[{partition}]@{offset} is no committed record"
        if (letter.key is not None and message.key() != letter.key) or (
            letter.raw and message.value() != letter.raw
        ):
            return (
                f"{topic}[{partition}]@{offset} is another record than the one dead-lettered: "
                "the topic was made again since?"
            )
        return message

    def _ask(self, topic: str, partition: int) -> tuple[int, int] | str:
        deadline = time.monotonic() + 30
        while True:
            found = self._admin.list_topics(topic, timeout=10).topics.get(topic)
            err = found.error if found is not None else None
            if found is None or (err is not None and err.code() in _GONE):
                answer: tuple[int, int] | str = f"{topic[:80]!r} does not exist (any more)"
                break
            if err is None:
                if partition not in found.partitions:
                    answer = f"{topic}[{partition}] does not exist (any more)"
                else:
                    answer = partition_offsets(self._admin, [(topic, partition)], deadline)[topic, partition]
                break
            if not err.retriable() or time.monotonic() > deadline:
                msg = f"reading {topic!r}: {err.str()}"
                raise BrokerError(msg)
            time.sleep(0.2)  # a topic just made, electing its leader: asked again, not a sync point
        self._marks[topic, partition] = answer
        return answer

    def _reader(self, topic: str, partition: int) -> _Reader:
        reader = self._readers.pop((topic, partition), None)
        if reader is None:
            if len(self._readers) >= READERS:
                oldest = next(iter(self._readers))
                self._readers.pop(oldest).close()
            reader = _Reader(self._settings, topic, partition)
        self._readers[topic, partition] = reader
        return reader


class _Reader:
    """Records of one partition by offset.  Letters come mostly in their records' order (a stage
    dead-letters as it reads, a batch from a few partitions at a time): a record a little further
    on from the last one read is read on to, past those between, instead of sending the consumer
    there again (about 20 ms a record here)."""

    def __init__(self, settings: Settings, topic: str, partition: int) -> None:
        self.topic, self.partition = topic, partition
        self._consumer = make_consumer(
            settings,
            f"vigil.dlq-read.{uuid.uuid4().hex[:8]}",
            **{"fetch.wait.max.ms": 20, "enable.partition.eof": True},
        )
        #: The offset the consumer reads next, when it is reading on (None: send it there).
        self._next: int | None = None

    def close(self) -> None:
        self._consumer.close()

    def read(self, offset: int) -> Message | None:
        """The committed record at ``offset``; None if there is none (aborted, compacted away)."""
        topic, partition = self.topic, self.partition
        if self._next is None or not self._next <= offset <= self._next + READ_ON:
            self._consumer.assign([TopicPartition(topic, partition, offset)])
        self._next = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            message = self._consumer.poll(0.5)
            if message is None:
                continue
            err = message.error()
            if err is None:
                found = message.offset() or 0
                self._next = found + 1
                if found < offset:
                    continue
                # A later record: the one asked for was aborted, or compacted away.
                return message if found == offset else None
            if err.code() == KafkaError._PARTITION_EOF:
                return None
            if err.fatal() or err.code() in READ_FATAL:
                msg = f"reading {topic}[{partition}]@{offset}: {err.str()}"
                raise BrokerError(msg)
        msg = f"reading {topic}[{partition}]@{offset}: no answer within 60s"
        raise BrokerError(msg)


def redrive(
    settings: Settings,
    topic: str,
    *,
    reason_contains: str | None = None,
    from_beginning: bool = False,
    dry_run: bool = False,
    allow_topics: Collection[str] = (),
    again: bool = False,
    idle_s: float = 120.0,
    progress: Callable[[int], None] | None = None,
) -> Redriven:
    """Append the records of ``topic``'s dead letters again to the topics they came from (see the
    module).  ``reason_contains``: only letters whose reason contains it (case ignored);
    ``dry_run``: count what would be sent, send nothing and move no position; ``allow_topics``:
    topics to send to besides stages' inputs; ``again``: also send records that were sent again
    before and failed again; ``progress`` is called with the number of letters read so far, after
    each batch is committed."""
    needle = (reason_contains or "").lower()
    group = redrive_group(topic, needle)
    out = Redriven(group)
    producer: Producer | None = None
    try:
        if not dry_run:
            producer = make_producer(
                settings,
                **{
                    "transactional.id": group,
                    "transaction.timeout.ms": 60_000,
                    "message.max.bytes": RAW_RECORD_MAX_BYTES + (64 << 10),
                },
            )
            # Before the position is read: this fences a redrive of the same filter still
            # running, and makes Kafka settle the last transaction of one that died (its
            # offsets pending until then, the position could not be read).
            producer.init_transactions(30)
        consumer, ends = open_letters(settings, topic, group, from_beginning=from_beginning)
        originals = _Originals(settings, allow_topics)
        try:
            read = 0
            batch: list[Message] = []
            sends: list[tuple[Message, Message]] = []
            size = 0
            for message in letters(consumer, ends, topic, idle_s):
                read += 1
                batch.append(message)
                original = _take(message, originals, needle, again, out)
                if original is not None:
                    sends.append((message, original))
                    size += len(original.value() or b"") + len(original.key() or b"")
                if len(batch) >= BATCH or size >= BATCH_BYTES:
                    _commit(producer, topic, batch, sends, consumer.consumer_group_metadata(), out)
                    batch, sends, size = [], [], 0
                    if progress is not None:
                        progress(read)
            if batch:
                _commit(producer, topic, batch, sends, consumer.consumer_group_metadata(), out)
                if progress is not None:
                    progress(read)
        finally:
            originals.close()
            consumer.close()
    except KafkaException as exc:
        err = kafka_error(exc)
        msg = f"redrive of {topic!r}: {err.str() if err is not None else exc}"
        raise BrokerError(msg) from None
    finally:
        if producer is not None:
            producer.flush(10)
    return out


def _take(message: Message, originals: _Originals, needle: str, again: bool, out: Redriven) -> Message | None:
    """The record to send again for the letter ``message``, or None (and why, in ``out``)."""
    try:
        letter = decoder.decode(message.value() or b"")
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        out.undecodable.append(f"{place(message)}: {exc}")
        return None
    if needle and needle not in letter.reason.lower():
        out.passed += 1
        return None
    original = originals.get(letter)
    if isinstance(original, str):
        out.unavailable.append(f"{place(message)}: {original}")
        return None
    before = _redriven_from(original)
    if before is not None and not again:
        out.failed_again.append(f"{place(message)}: sent again from {before} before, failed again")
        return None
    return original


def _redriven_from(message: Message) -> str | None:
    for name, value in message.headers() or []:
        if name == REDRIVEN_FROM:
            return (value or b"").decode(errors="replace")[:200]
    return None


def _commit(
    producer: Producer | None,
    topic: str,
    batch: list[Message],
    sends: list[tuple[Message, Message]],
    group: object,
    out: Redriven,
) -> None:
    """Send a batch's records and move the position past its letters, in one transaction (a dry
    run only counts)."""
    if producer is not None:
        # Past this batch's letters, not the consumer's position: it may have fetched further.
        past = {m.partition(): m.offset() + 1 for m in batch}
        at = [TopicPartition(topic, p, o) for p, o in sorted(past.items())]
        out.appended += _send(producer, topic, at, sends, group)
    out.redriven += len(sends)


def _send(
    producer: Producer,
    topic: str,
    at: list[TopicPartition],
    sends: list[tuple[Message, Message]],
    group: object,
) -> list[str]:
    """One transaction: the records again, and the redrive's position ``at`` in ``topic``; where
    each record went.  On failure the transaction is aborted (when Kafka lets it be) and the
    error says whether anything of the batch may have been committed."""
    placed: list[str] = []
    refused: list[str] = []

    def delivered(letter: str, err: KafkaError | None, message: Message) -> None:
        if err is None:
            placed.append(place(message))
        elif err.code() not in _PURGED:  # (purged by an abort: not the record's fault)
            refused.append(f"{letter}: {err.str()}")

    try:
        producer.begin_transaction()
        for letter, original in sends:
            headers = [(k, v) for k, v in (original.headers() or []) if k != REDRIVEN_FROM]
            record = {
                "value": original.value(),
                "key": original.key(),
                # The partition it was in: its key's, or the one its producer chose.
                "partition": original.partition(),
                "headers": [*headers, (REDRIVEN_FROM, place(letter).encode())],
                "on_delivery": partial(delivered, place(letter)),
            }
            while True:
                try:
                    producer.produce(original.topic(), **record)
                    break
                except BufferError:  # librdkafka's queue is full: let it drain, then again
                    producer.poll(1)
            producer.poll(0)
        producer.send_offsets_to_transaction(at, group, 30)
        _commit_transaction(producer)
    except KafkaException as exc:
        err = kafka_error(exc)
        if err is not None and err.fatal():
            msg = (
                f"redrive of {topic!r} stopped: {err.str()} (another redrive of this filter took over, "
                "or the producer failed); run again: a batch committed is not sent twice"
            )
            raise BrokerError(msg) from None
        aborted = _abort(producer)
        detail = "; ".join(refused[:3]) or (err.str() if err is not None else str(exc))
        outcome = (
            "nothing of this batch was committed"
            if aborted
            else "whether it was committed is not known; run again (a batch committed is not sent twice)"
        )
        msg = f"redrive of {topic!r}: sending failed, {outcome}: {detail}"
        raise BrokerError(msg) from None
    except BaseException:
        _abort(producer)  # (Ctrl-C) not left open: it would hold read_committed readers back
        raise
    return placed


def _commit_transaction(producer: Producer) -> None:
    for attempt in range(3):
        try:
            producer.commit_transaction(60)
            return
        except KafkaException as exc:
            err = kafka_error(exc)
            if err is None or not err.retriable() or attempt == 2:
                raise
            # Retriable (a timeout): asking again is how a commit is finished, not a sync point.


def _abort(producer: Producer) -> bool:
    """Abort the open transaction; whether Kafka did."""
    try:
        producer.abort_transaction(30)
    except KafkaException:
        return False
    producer.poll(0)  # the delivery reports, to name the letters refused
    return True
