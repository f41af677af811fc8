"""Sending dead-lettered records through again, once the cause is fixed.

:func:`redrive` appends each letter's record again to the topic it came from, so its stage
reads it again.  The record appended is the original, read back by its offset: key, value,
headers and partition exactly as they were, plus a ``vigil.redriven_from`` header naming the
letter.  The record found there must be the one dead-lettered (its key, and its bytes when the
letter has them).  Headers whose names are not UTF-8 cannot be read by the client: such a record
is sent without them to a canonical topic (an event is read by its bytes alone), and not at all
to a raw one (a raw record's headers are its kind and time).  A record the topic no longer
holds for retention is rebuilt from its letter (:class:`Rebuilt`), when asked (``rebuild``: the
letter's bytes are then trusted as the record), if the letter holds it whole: its bytes (not
those of a record of several MB) and its headers (a raw record's kind and time are in them;
letters of earlier versions have none).  Other records
the topic no longer holds (a topic made again) and a letter not from Kafka (the ingest API's
rejected lines, which the calling service resends) are reported, not sent.

Only stages' inputs are written: ``raw.<source>``, ``events.<domain>`` and ``detect.routed``
(under any topic prefix, but none of Vigil's own topics a prefix makes look like one: see
:data:`INPUT_TOPIC`), and topics named with ``allow_topics``.  A letter's topic is data,
written by whoever may write the dead-letter topic, and an old record appended again elsewhere
does harm: to ``vigil.cursors.<source id>`` it rewinds a connector, to ``intel.indicators`` it brings back a
withdrawn indicator, to ``decisions`` it repeats an action.

Each letter is sent at most once, whatever the filters and flags of the runs, and a letter
written before its record was sent for another letter is settled by that send (two operators
with a dead-letter policy failing on one record write a letter each, and an at-least-once stage
processing it again writes another: each letter's record was sent, found in review); one written
after is a failure of its own, and sent.  The letters sent are named in a compacted topic beside
the dead-letter topic, ``<dead-letter topic>.redriven`` (key ``<partition>@<offset>``, value a
digest of the letter, the place of the record sent, ``<topic>[<partition>]@<offset>``, and
when, in epoch milliseconds; a letter settled by another's send is named there too, without
sending), written in the same Kafka
transaction as the records they sent: a redrive stopped half-way, or killed between sending and
committing, sent a whole batch and named it, or neither.  A run reads it first, after fencing
any other redrive of the same dead-letter topic (one transactional id per dead-letter topic:
two at once would each send what the other was sending), and sends none of the letters it names.
(The digest tells a letter from another at the same offset of a dead-letter topic made again;
entries of letters the topic no longer holds are deleted.)

A letter held back for a reason a later run may lift stays for that run: one the filter
(``reason_contains``) passed over, one whose topic is no stage's input (``allow_topics``), one
whose record was itself sent again and failed again (``again``: the cause is not fixed, and a
redrive run on a schedule would send it round for ever).  The position in the dead-letter topic
(a consumer group per dead-letter topic, committed in the same transaction) only spares reading
settled letters again: it moves past letters sent, or never to be sent, and stops in each
partition at the first letter held back.  ``from_beginning`` reads again from the first letter
(listing again those that could not be sent), and still sends none sent before.  A record sent
again carries the same event ids; what downstream makes of a repeat is what it makes of any
redelivery.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
import uuid
from collections.abc import Callable, Collection
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial

import msgspec
from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from vigil.config import Settings
from vigil.errors import BrokerError, ConfigError
from vigil.events.records import DeadLetter
from vigil.hub.admin import ensure_topics
from vigil.hub.client import (
    BACKLOG_READER,
    READ_FATAL,
    UnreadableHeaders,
    kafka_error,
    make_admin,
    make_consumer,
    make_producer,
    partition_offsets,
    read_committed,
    read_headers,
)
from vigil.hub.dlq import decoder, letters, open_letters, place
from vigil.hub.topics import DOMAINS, RAW_RECORD_MAX_BYTES, TopicSpec

#: The header a redriven record carries: ``<dead-letter topic>[<partition>]@<offset>``.
REDRIVEN_FROM = "vigil.redriven_from"
#: Letters per transaction, and the bytes of records: a chain block is several MB, and librdkafka
#: queues at most 1 GiB.
BATCH = 200
BATCH_BYTES = 128 << 20
#: Stages' inputs, under any topic prefix (one ending in "." as ``topic_prefix`` makes them), but
#: none of Vigil's own topics that a prefix and a name could make look like one (found in
#: review): a connector's cursors (``vigil.cursors.<source id>``, an id being free text), an
#: application's changelogs and repartition topics (``<app>.changelog.<store>``,
#: ``<app>.repartition.<id>``), its peers' words and late events (``<app>.peers``,
#: ``<app>.late``: an application named ``x.raw``) and a redrive's ledger.
INPUT_TOPIC = re.compile(
    r"(?!(?:.*\.)?(?:vigil\.cursors|changelog|repartition)\.)(?!.*\.(?:peers|late|redriven)\Z)"
    r"(?:[A-Za-z0-9._-]*\.)?(?:raw\.[a-z0-9_-]+|events\.(?:"
    + "|".join(sorted(DOMAINS))
    + r")|detect\.routed)"
)
#: Canonical topics (under any topic prefix): their stages read a record by its bytes alone.
CANONICAL_TOPIC = re.compile(
    r"(?:[A-Za-z0-9._-]*\.)?(?:events\.(?:" + "|".join(sorted(DOMAINS)) + r")|detect\.routed)"
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
    #: Letters sent by an earlier run (under any filter), or written before their record was
    #: sent for another letter (of this run or an earlier one), not sent again.
    sent_before: int = 0
    #: Letters a filter passed over (kept for a run whose filter they match, or one without).
    passed: int = 0
    #: Letters whose topic is no stage's input, each with why (kept for a run allowing it).
    refused: list[str] = field(default_factory=list)
    #: Letters of records that were themselves sent again and failed again (kept for a run with
    #: ``again``: a redrive run on a schedule would otherwise send them round for ever).
    failed_again: list[str] = field(default_factory=list)
    #: Letters whose record is gone but held whole by the letter (kept for a run with ``rebuild``).
    rebuildable: list[str] = field(default_factory=list)
    #: Letters whose record cannot be sent again, each with why (not kept: no run sends them).
    unavailable: list[str] = field(default_factory=list)
    undecodable: list[str] = field(default_factory=list)
    #: Letters whose record is sent without its headers, which cannot be read (canonical topics
    #: only, whose stages read no header), each with why.
    without_headers: list[str] = field(default_factory=list)
    #: Where each redriven record was appended: ``<topic>[<partition>]@<offset>`` (not in a dry run).
    appended: list[str] = field(default_factory=list)


def redrive_group(topic: str) -> str:
    """The consumer group (and transactional id) every redrive of ``topic`` keeps its position
    in, whatever its filter: with one transactional id, a redrive fences any other still
    running on the same ledger."""
    return f"vigil.dlq-redrive.{topic}"


def ledger_topic(topic: str) -> str:
    """The compacted topic naming the letters of ``topic`` sent (see the module)."""
    return f"{topic}.redriven"


def ledger_spec(topic: str) -> TopicSpec:
    # Compacted and never expired by time: an entry deleted while its letter is still in the
    # dead-letter topic would let the letter be sent again.  The redrive deletes the entries of
    # letters gone (see _read_ledger).
    return TopicSpec(
        name=ledger_topic(topic),
        key="<partition>@<offset> of a letter",
        value="raw",
        description=f"Letters of {topic!r} redriven: a digest of each (vigil dlq redrive sends none again)",
        partitions=1,
        retention=None,
        cleanup="compact",
    )


class _Originals:
    """Reads records back by offset (``read_committed``: what the stage was given)."""

    def __init__(self, settings: Settings, allow_topics: Collection[str], rebuild: bool = False) -> None:
        self._settings = settings
        self._allow = set(allow_topics)
        self._rebuild = rebuild
        self._admin = make_admin(settings)
        #: (topic, partition) -> (low, high), or why there is nothing to read there.
        self._marks: dict[tuple[str, int], tuple[int, int] | str] = {}
        #: A reader per partition last read, the least recently used first.
        self._readers: dict[tuple[str, int], _Reader] = {}

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

    def admits(self, topic: str) -> bool:
        """Whether records may be appended to ``topic`` (see the module)."""
        return topic in self._allow or (len(topic) <= _MAX_TOPIC and INPUT_TOPIC.fullmatch(topic) is not None)

    def get(self, letter: DeadLetter) -> Fetched | Rebuilt | Rebuildable | str:
        """The record ``letter`` names, or why it cannot be had; raises :class:`BrokerError` when
        that cannot be told (a read refused or timing out is no reason to pass a letter over for
        good)."""
        topic, partition, offset = letter.topic, letter.partition, letter.offset
        if partition < 0 or offset < 0:
            return f"not from Kafka ({topic[:80]!r}): resend it from where it came"
        marks = self._marks.get((topic, partition)) or self._ask(topic, partition)
        if isinstance(marks, str):
            return marks
        low, high = marks
        if offset >= high:
            return f"{topic}[{partition}]@{offset} is past the end ({high}): the topic was made again since?"
        if offset < low:
            gone = f"{topic}[{partition}]@{offset} is gone (the partition starts at {low}: retention)"
            # The letter may hold the record whole; sent from it only when asked: nothing checks
            # its bytes against the record any more, and a letter is whatever the dead-letter
            # topic's writers wrote.  Never one of the ingest API's (its lines are not from Kafka:
            # a letter of its claiming a place in a topic is forged).
            if letter.headers is not None and letter.raw and letter.stage != "ingest":
                return Rebuilt(letter) if self._rebuild else Rebuildable(gone)
            return gone
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
        try:
            return Fetched(message, read_headers(message))
        except UnreadableHeaders as exc:
            if CANONICAL_TOPIC.fullmatch(topic) is not None:
                # An event is read by its bytes alone (the canonical codec reads no header): sent
                # without the headers no client here can read (a raw record's are its kind and
                # time, and it cannot be sent without them).
                return Fetched(message, [], left_out=str(exc))
            return f"{topic}[{partition}]@{offset}: {exc}: it cannot be sent again as it was"

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
                    answer = partition_offsets(self._settings, [(topic, partition)], deadline)[
                        topic, partition
                    ]
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


class Fetched:
    """A record read back from its topic, its headers read once (see
    :func:`~vigil.hub.client.read_headers`: asked twice of a record they cannot be read from, the
    client crashes the process)."""

    def __init__(
        self, message: Message, headers: list[tuple[str, bytes | None]] | None, left_out: str | None = None
    ) -> None:
        self._message = message
        self._headers = headers
        #: Why its headers are not sent with it (None: they are).
        self.left_out = left_out

    def topic(self) -> str:
        return self._message.topic() or ""

    def partition(self) -> int:
        return self._message.partition() or 0

    def key(self) -> bytes | None:
        key: bytes | None = self._message.key()
        return key

    def value(self) -> bytes | None:
        value: bytes | None = self._message.value()
        return value

    def headers(self) -> list[tuple[str, bytes | None]]:
        return list(self._headers or [])

    def where(self) -> str:
        """``<topic>[<partition>]@<offset>`` of the record (what the ledger names)."""
        return f"{self.topic()}[{self.partition()}]@{self._message.offset()}"


class Rebuilt:
    """A record its topic no longer holds (retention: raw topics keep 3 days, dead-letter topics
    30), rebuilt from its dead letter, which keeps its key, bytes, headers and partition (letters
    written before letters kept headers cannot be rebuilt: a raw record is read by its headers)."""

    def __init__(self, letter: DeadLetter) -> None:
        self._letter = letter

    def topic(self) -> str:
        return self._letter.topic

    def partition(self) -> int:
        return self._letter.partition

    def key(self) -> bytes | None:
        return self._letter.key

    def value(self) -> bytes:
        return self._letter.raw

    def headers(self) -> list[tuple[str, bytes | None]]:
        return list(self._letter.headers or [])

    def where(self) -> str:
        """``<topic>[<partition>]@<offset>`` of the record (what the ledger names)."""
        return f"{self._letter.topic}[{self._letter.partition}]@{self._letter.offset}"


class Rebuildable(str):
    """Why a record is not sent, that a run with ``rebuild`` would send from its letter."""

    __slots__ = ()


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
            **BACKLOG_READER,
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
    rebuild: bool = False,
    idle_s: float = 120.0,
    progress: Callable[[int], None] | None = None,
) -> Redriven:
    """Append the records of ``topic``'s dead letters again to the topics they came from, each
    letter's at most once over every run (see the module).  ``reason_contains``: only letters
    whose reason contains it (case ignored); ``dry_run``: count what would be sent, send nothing
    and move no position; ``allow_topics``: topics to send to besides stages' inputs; ``again``:
    also send records that were sent again before and failed again; ``rebuild``: send from its
    letter a record its topic no longer holds (see :class:`Rebuilt`); ``progress`` is called with
    the number of letters read so far, after each batch is committed (or found to have nothing to
    send: see _commit)."""
    ledger = ledger_topic(topic)
    if len(ledger) > _MAX_TOPIC:
        msg = (
            f"redrive of {topic[:80]!r}: the topic naming its letters sent, {ledger[:80]!r}..., would be "
            f"{len(ledger)} characters long; Kafka takes at most {_MAX_TOPIC}"
        )
        raise ConfigError(msg)
    needle = (reason_contains or "").lower()
    group = redrive_group(topic)
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
            # Before the ledger and the position are read: this fences any other redrive of this
            # topic still running, and makes Kafka settle the last transaction of one that died
            # (until then its entries and offsets are pending, and could not be read).
            producer.init_transactions(30)
        consumer, ends = open_letters(settings, topic, group, from_beginning=from_beginning)
        originals = _Originals(settings, allow_topics, rebuild)
        try:
            if producer is not None:
                ensure_topics(settings, [ledger_spec(topic)], owned=True)
            sent, records, stale = _read_ledger(settings, topic, idle_s)
            batch = _Batch(stale)
            #: Partitions of ``topic`` with a letter held back in this run: their position stays.
            held: set[int] = set()
            read = 0
            for message in letters(consumer, ends, topic, idle_s):
                read += 1
                batch.letters += 1
                partition, offset = message.partition(), message.offset()
                fate = _take(message, originals, needle, again, sent, records, out)
                if isinstance(fate, (Fetched, Rebuilt)):
                    batch.sends.append((message, fate))
                    batch.size += len(fate.value() or b"") + len(fate.key() or b"")
                    records[fate.where()] = math.inf  # (every letter read was written before)
                elif isinstance(fate, _SentFor):
                    # (Named as sent when its record was: a later failure is compared with that.)
                    batch.settled.append((message, fate, records[fate]))
                elif not fate:
                    held.add(partition)
                if partition not in held:
                    batch.past[partition] = offset + 1
                if batch.letters >= BATCH or batch.size >= BATCH_BYTES:
                    batch = _commit(producer, topic, batch, consumer.consumer_group_metadata(), out, records)
                    if progress is not None:
                        progress(read)
            if batch.letters or batch.stale or batch.past:
                _commit(producer, topic, batch, consumer.consumer_group_metadata(), out, records, last=True)
                if progress is not None and batch.letters:
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
            # (A producer fenced by a redrive that took over fails its flush too: raised here, it
            # took the place of the error that says so, a traceback, found in review.)
            with suppress(KafkaException):
                producer.flush(10)
    return out


def _read_ledger(
    settings: Settings, topic: str, idle_s: float
) -> tuple[dict[tuple[int, int], bytes], dict[str, float], list[bytes]]:
    """The letters of ``topic`` sent, ``(partition, offset)`` -> the letter's digest; the records
    sent, ``<topic>[<partition>]@<offset>`` -> when (epoch seconds; entries of earlier versions
    name none); and the keys of entries naming letters the topic no longer holds (retention, or
    the topic made again since), to delete."""
    sent: dict[tuple[int, int], bytes] = {}
    places: dict[tuple[int, int], tuple[str, float]] = {}
    # (Its writer fenced and settled first: read up to the high watermark, nothing is pending.)
    for message in read_committed(settings, ledger_topic(topic), timeout_s=max(idle_s, 30.0)):
        where = _letter_at(message.key() or b"")
        if where is None:
            continue  # (no entry of a redrive's: another writer's; not one a letter can match)
        value = message.value()
        if value is None:
            sent.pop(where, None)
            places.pop(where, None)
        else:
            digest, *named = value.split(b" ")
            sent[where] = digest
            record = named[0].decode(errors="replace") if named else ""
            if _RECORD_PLACE.fullmatch(record) is not None:
                # (An entry naming its record but not when, of a version between: as sent now,
                # so that no letter of that record is sent again.)
                at = int(named[1]) / 1000 if len(named) == 2 and named[1].isdigit() else math.inf
                places[where] = (record, at)
            else:
                places.pop(where, None)
    stale: list[bytes] = []
    if sent:
        admin = make_admin(settings)
        found = admin.list_topics(topic, timeout=10).topics.get(topic)
        if found is None or found.error is not None:
            # Not taken for a topic without partitions: every entry would be deleted, and every
            # letter sent again.
            msg = f"partitions of {topic!r}: {found.error if found is not None else 'not listed'}"
            raise BrokerError(msg)
        asked = sorted({p for p, _ in sent} & set(found.partitions))
        marks = (
            partition_offsets(settings, [(topic, p) for p in asked], time.monotonic() + 30) if asked else {}
        )
        for p, o in list(sent):
            low, high = marks.get((topic, p), (0, 0))
            if not low <= o < high:
                del sent[p, o]
                places.pop((p, o), None)
                stale.append(_entry_key(p, o))
    records: dict[str, float] = {}
    for record, at in places.values():
        records[record] = max(at, records.get(record, at))
    return sent, records, stale


#: A record's place in a ledger entry: ``<topic>[<partition>]@<offset>``.
_RECORD_PLACE = re.compile(r".+\[\d+\]@\d+")


def _entry_key(partition: int, offset: int) -> bytes:
    return f"{partition}@{offset}".encode()


def _letter_at(key: bytes) -> tuple[int, int] | None:
    partition, at, offset = key.partition(b"@")
    if not at or not partition.isdigit() or not offset.isdigit():
        return None
    return int(partition), int(offset)


def _digest(letter: Message) -> bytes:
    """What tells a letter from another at the same offset (of a dead-letter topic made again):
    a digest of its bytes (their failure time, reason and record)."""
    return hashlib.blake2b(letter.value() or b"", digest_size=12).hexdigest().encode()


class _SentFor(str):
    """A letter whose record was sent for another letter: named in the ledger, not sent again
    (its value: the record's place)."""

    __slots__ = ()


def _take(
    message: Message,
    originals: _Originals,
    needle: str,
    again: bool,
    sent: dict[tuple[int, int], bytes],
    records: dict[str, float],
    out: Redriven,
) -> Fetched | Rebuilt | _SentFor | bool:
    """The record to send again for the letter ``message``; when none, whether the letter is
    settled (True: sent before, or never to be sent; the position may move past it; a
    :class:`_SentFor` when it was written before its record was sent for another letter,
    ``records``: when each was) or held back for
    a later run that admits it (False: filtered out, its topic not allowed, failed again).  Why,
    in ``out``."""
    before = sent.get((message.partition(), message.offset()))
    if before is not None and before == _digest(message):
        out.sent_before += 1
        return True
    try:
        letter = decoder.decode(message.value() or b"")
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        out.undecodable.append(f"{place(message)}: {exc}")
        return True
    if letter.partition >= 0 and letter.offset >= 0:
        # Settled whatever the filters (its record sent, nothing is left to do), and before its
        # record is looked for: gone since, with retention, it was held back for a run with
        # --rebuild that would then send nothing (found in review).
        record = f"{letter.topic}[{letter.partition}]@{letter.offset}"
        if letter.failed_at.timestamp() <= records.get(record, -math.inf):
            out.sent_before += 1
            return _SentFor(record)
    if needle and needle not in letter.reason.lower():
        out.passed += 1
        return False
    if letter.partition >= 0 and letter.offset >= 0 and not originals.admits(letter.topic):
        name = letter.topic[:80]
        out.refused.append(
            f"{place(message)}: {name!r} is no stage's input (raw.<source>, events.<domain>, "
            f"detect.routed): kept for a run with --allow-topic {name}"
        )
        return False
    original = originals.get(letter)
    if isinstance(original, Rebuildable):
        out.rebuildable.append(f"{place(message)}: {original}: kept for a run with --rebuild")
        return False
    if isinstance(original, str):
        out.unavailable.append(f"{place(message)}: {original}")
        return True
    earlier = _redriven_from(original)
    if earlier is not None and not again:
        out.failed_again.append(
            f"{place(message)}: sent again from {earlier} before, failed again: kept for a run with --again"
        )
        return False
    if isinstance(original, Fetched) and original.left_out is not None:
        out.without_headers.append(f"{place(message)}: {original.left_out}: sent without them")
    return original


def _redriven_from(message: Fetched | Rebuilt) -> str | None:
    for name, value in message.headers() or []:
        if name == REDRIVEN_FROM:
            return (value or b"").decode(errors="replace")[:200]
    return None


@dataclass
class _Batch:
    """What the next transaction commits: the records to send again, each with its letter; where
    the position may move; entries of the ledger to delete."""

    stale: list[bytes] = field(default_factory=list)
    letters: int = 0
    sends: list[tuple[Message, Fetched | Rebuilt]] = field(default_factory=list)
    #: Letters whose record was sent for another letter, and when (epoch seconds; inf: in this
    #: run): named in the ledger, nothing sent.
    settled: list[tuple[Message, _SentFor, float]] = field(default_factory=list)
    #: Bytes of the records to send.
    size: int = 0
    #: Partition of the dead-letter topic -> the offset past its letters settled since the last
    #: commit (none past a letter held back; not the consumer's position: it may have fetched
    #: further).
    past: dict[int, int] = field(default_factory=dict)


def _commit(
    producer: Producer | None,
    topic: str,
    batch: _Batch,
    group: object,
    out: Redriven,
    records: dict[str, float],
    *,
    last: bool = False,
) -> _Batch:
    """Send a batch's records, name their letters in the ledger and move the position, in one
    transaction (a dry run only counts), ``records`` told when each was sent; the batch to fill
    next.  A batch with nothing to send
    only moves the position, which waits for the next batch that sends, or the ``last``: a
    transaction costs 20-60 ms, and a run over letters sent before would pay it every batch
    for nothing (read again after a crash, they are skipped again)."""
    if not (batch.sends or batch.settled or batch.stale or last):
        return _Batch(past=batch.past)
    if producer is not None and (batch.sends or batch.settled or batch.past or batch.stale):
        at = [TopicPartition(topic, p, o) for p, o in sorted(batch.past.items())]
        now = time.time()
        out.appended += _send(producer, topic, at, batch, group, now)
        for _, original in batch.sends:
            # (A letter of one of these settled in a later batch is named as sent then, not
            # at that batch's time: a letter written between would be taken as settled, found in
            # review.)
            records[original.where()] = now
    out.redriven += len(batch.sends)
    return _Batch()


def _send(
    producer: Producer,
    topic: str,
    at: list[TopicPartition],
    batch: _Batch,
    group: object,
    now: float,
) -> list[str]:
    """One transaction (at ``now``, epoch seconds): the records again, an entry naming each
    one's letter in the ledger, the stale entries deleted, and the redrive's position ``at`` in
    ``topic``; where each record went.  On failure the transaction is aborted (when Kafka lets
    it be) and the error says whether anything of the batch may have been committed."""
    placed: list[str] = []
    refused: list[str] = []
    ledger = ledger_topic(topic)

    def delivered(letter: str, err: KafkaError | None, message: Message) -> None:
        if err is None:
            placed.append(place(message))
        elif err.code() not in _PURGED:  # (purged by an abort: not the record's fault)
            refused.append(f"{letter}: {err.str()}")

    def entry_refused(err: KafkaError | None, message: Message) -> None:
        if err is not None and err.code() not in _PURGED:
            refused.append(f"{ledger} entry {(message.key() or b'').decode(errors='replace')}: {err.str()}")

    def named(letter: Message, record: str, when: float = math.inf) -> None:
        """The ledger's entry for ``letter``, naming the record sent for it and when (epoch
        seconds; inf: now), so that no letter of that record written before is sent again."""
        _produce(
            producer,
            ledger,
            key=_entry_key(letter.partition(), letter.offset()),
            value=_digest(letter) + f" {record} {int((now if math.isinf(when) else when) * 1000)}".encode(),
            on_delivery=entry_refused,
        )

    try:
        producer.begin_transaction()
        for letter, original in batch.sends:
            headers = [(k, v) for k, v in (original.headers() or []) if k != REDRIVEN_FROM]
            _produce(
                producer,
                original.topic(),
                value=original.value(),
                key=original.key(),
                # The partition it was in: its key's, or the one its producer chose.
                partition=original.partition(),
                headers=[*headers, (REDRIVEN_FROM, place(letter).encode())],
                on_delivery=partial(delivered, place(letter)),
            )
            named(letter, original.where())
        for letter, record, when in batch.settled:
            named(letter, record, when)
        for key in batch.stale:
            _produce(producer, ledger, key=key, value=None, on_delivery=entry_refused)
        if at:
            producer.send_offsets_to_transaction(at, group, 30)
        _commit_transaction(producer)
    except KafkaException as exc:
        err = kafka_error(exc)
        if err is not None and err.fatal():
            msg = (
                f"redrive of {topic!r} stopped: {err.str()} (another redrive of this topic took over, "
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


def _produce(producer: Producer, topic: str, **record: object) -> None:
    while True:
        try:
            producer.produce(topic, **record)
            break
        except BufferError:  # librdkafka's queue is full: let it drain, then again
            producer.poll(1)
    producer.poll(0)


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
