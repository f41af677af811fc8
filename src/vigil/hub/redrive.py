"""Sending dead-lettered records through again, once the cause is fixed.

:func:`redrive` appends each letter's record again to the topic it came from, so its stage
reads it again.  The record appended is the original, read back by its offset: key, value,
headers and partition exactly as they were (a dead letter keeps the value, but not the headers
a raw record's kind and time are in), plus a ``vigil.redriven_from`` header naming the letter.
A record the topic no longer holds (retention, a deleted topic) and a letter not from Kafka
(the ingest API's rejected lines, which the calling service resends) are reported, not sent.

Only stages' inputs are written: ``raw.<source>`` and ``events.<domain>`` (under any topic
prefix), and topics named with ``allow_topics``.  A letter's topic is data, written by whoever
may write the dead-letter topic, and an old record appended again elsewhere does harm: to
``vigil.cursors`` it rewinds a connector, to ``intel.indicators`` it brings back a withdrawn
indicator, to ``decisions`` it repeats an action.

Each redrive keeps its position in the dead-letter topic in a consumer group of its own, one per
filter (``reason_contains``), committed with the records it appends in one Kafka transaction:
a redrive stopped half-way and run again neither skips nor repeats a letter, and letters a
filter passed over are still there for another filter.  ``from_beginning`` starts again from
the first letter.  A record sent twice carries the same event ids; what downstream makes of a
repeat is what it makes of any redelivery.
"""

from __future__ import annotations

import contextlib
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
from vigil.hub.client import READ_FATAL, make_admin, make_consumer, make_producer, partition_offsets
from vigil.hub.dlq import decoder, letters, open_letters, place
from vigil.hub.topics import RAW_RECORD_MAX_BYTES

#: The header a redriven record carries: ``<dead-letter topic>[<partition>]@<offset>``.
REDRIVEN_FROM = "vigil.redriven_from"
#: Letters per transaction.
BATCH = 200
#: Stages' inputs, under any topic prefix.
_INPUT = re.compile(r"(?:.*[._-])?(?:raw\.[A-Za-z0-9_-]+|events\.[a-z]+)")


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


def redrive_group(topic: str, reason_contains: str | None) -> str:
    """The consumer group (and transactional id) a redrive of ``topic`` with this filter keeps
    its position in (the filter's case ignored, as the filter ignores it)."""
    return f"vigil.dlq-redrive.{topic}.{stable_id('reason', (reason_contains or '').lower())[:12]}"


class _Originals:
    """Reads records back by offset (``read_committed``: what the stage was given)."""

    def __init__(self, settings: Settings, allow_topics: Collection[str]) -> None:
        self._settings = settings
        self._allow = set(allow_topics)
        self._consumer = make_consumer(
            settings,
            f"vigil.dlq-read.{uuid.uuid4().hex[:8]}",
            **{"fetch.wait.max.ms": 20, "enable.partition.eof": True},
        )
        self._marks: dict[tuple[str, int], tuple[int, int]] = {}

    def close(self) -> None:
        self._consumer.close()

    def get(self, topic: str, partition: int, offset: int) -> Message | str:
        """The record, or why it cannot be had; raises :class:`BrokerError` when it cannot be
        told (a read refused or timing out is no reason to pass a letter over for good)."""
        if partition < 0 or offset < 0:
            return f"not from Kafka ({topic[:80]!r}): resend it from where it came"
        if topic not in self._allow and not _INPUT.fullmatch(topic):
            return (
                f"{topic[:80]!r} is no stage's input (raw.<source>, events.<domain>): not sent "
                "(--allow-topic to send there)"
            )
        where = (topic, partition)
        if where not in self._marks:
            found = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
            err = found.error if found is not None else None
            if found is None or (err is not None and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
                return f"{topic} does not exist (any more)"
            if err is not None:
                msg = f"reading {topic!r}: {err.str()}"
                raise BrokerError(msg)
            if partition not in found.partitions:
                return f"{topic}[{partition}] does not exist (any more)"
            self._marks.update(partition_offsets(make_admin(self._settings), [where], time.monotonic() + 30))
        low, high = self._marks[where]
        if not low <= offset < high:
            return f"{topic}[{partition}]@{offset} is gone (the partition holds {low}..{high - 1}: retention)"
        self._consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            message = self._consumer.poll(0.5)
            if message is None:
                continue
            err = message.error()
            if err is None:
                if message.offset() == offset:
                    return message
                break  # a later record: the one asked for was aborted, or compacted away
            if err.code() == KafkaError._PARTITION_EOF:
                break
            if err.fatal() or err.code() in READ_FATAL:
                msg = f"reading {topic}[{partition}]@{offset}: {err.str()}"
                raise BrokerError(msg)
        else:
            msg = f"reading {topic}[{partition}]@{offset}: no answer within 60s"
            raise BrokerError(msg)
        return f"{topic}[{partition}]@{offset} is no committed record"


def redrive(
    settings: Settings,
    topic: str,
    *,
    reason_contains: str | None = None,
    from_beginning: bool = False,
    dry_run: bool = False,
    allow_topics: Collection[str] = (),
    idle_s: float = 120.0,
    progress: Callable[[int], None] | None = None,
) -> Redriven:
    """Append the records of ``topic``'s dead letters again to the topics they came from (see the
    module).  ``reason_contains``: only letters whose reason contains it (case ignored);
    ``dry_run``: count what would be sent, send nothing and move no position; ``allow_topics``:
    topics to send to besides stages' inputs; ``progress`` is called with the number of letters
    read so far, after each batch is committed."""
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
            stream = letters(consumer, ends, topic, idle_s)
            read = 0
            while batch := [m for _, m in zip(range(BATCH), stream, strict=False)]:
                read += len(batch)
                sends: list[tuple[Message, Message]] = []
                for message in batch:
                    try:
                        letter = decoder.decode(message.value() or b"")
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        out.undecodable.append(f"{place(message)}: {exc}")
                        continue
                    if needle and needle not in letter.reason.lower():
                        out.passed += 1
                        continue
                    original = originals.get(letter.topic, letter.partition, letter.offset)
                    if isinstance(original, str):
                        out.unavailable.append(f"{place(message)}: {original}")
                    else:
                        sends.append((message, original))
                if producer is not None:
                    # The position is past this batch's letters, not the consumer's: it may have
                    # fetched further than the batch, and a redrive stopped here resumes after it.
                    past = {m.partition(): m.offset() + 1 for m in batch}
                    at = [TopicPartition(topic, p, o) for p, o in sorted(past.items())]
                    out.appended += _send(producer, topic, at, sends, consumer.consumer_group_metadata())
                out.redriven += len(sends)
                if progress is not None:
                    progress(read)
        finally:
            originals.close()
            consumer.close()
    except KafkaException as exc:
        err = exc.args[0] if exc.args else exc
        msg = f"redrive of {topic!r}: {err.str() if isinstance(err, KafkaError) else err}"
        raise BrokerError(msg) from None
    finally:
        if producer is not None:
            producer.flush(10)
    return out


def _send(
    producer: Producer,
    topic: str,
    at: list[TopicPartition],
    sends: list[tuple[Message, Message]],
    group: object,
) -> list[str]:
    """One transaction: the records again, and the redrive's position ``at`` in ``topic``; where
    each record went.  On any failure the transaction is aborted and the error names the letters."""
    placed: list[str] = []
    refused: list[str] = []

    def delivered(letter: str, err: KafkaError | None, message: Message) -> None:
        if err is None:
            placed.append(place(message))
        else:
            refused.append(f"{letter}: {err.str()}")

    try:
        producer.begin_transaction()
        for letter, original in sends:
            headers = [(k, v) for k, v in (original.headers() or []) if k != REDRIVEN_FROM]
            producer.produce(
                original.topic(),
                value=original.value(),
                key=original.key(),
                # The partition it was in: its key's, or the one its producer chose.
                partition=original.partition(),
                headers=[*headers, (REDRIVEN_FROM, place(letter).encode())],
                on_delivery=partial(delivered, place(letter)),
            )
            producer.poll(0)
        producer.send_offsets_to_transaction(at, group, 30)
        producer.commit_transaction(60)
    except (KafkaException, BufferError) as exc:
        with contextlib.suppress(KafkaException):  # (fatal: fenced by a newer redrive)
            producer.abort_transaction(30)
        producer.poll(0)  # the delivery reports, to name the letters refused
        detail = "; ".join(refused[:3]) or str(exc.args[0] if exc.args else exc)
        msg = f"redrive of {topic!r}: sending failed, nothing of this batch was committed: {detail}"
        raise BrokerError(msg) from None
    return placed
