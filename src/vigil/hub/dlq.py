"""Dead-letter topics: reading their letters, and what they hold grouped for triage.

A stage that cannot take a record dead-letters it (``dlq.<stage>``: a
:class:`~vigil.events.records.DeadLetter` naming the record's topic, partition and offset, the
reason, and its bytes) and goes on.  :func:`summarize` groups a dead-letter topic's letters by
stage, source topic and the shape of their reason; :mod:`vigil.hub.redrive` sends letters'
records through again once their cause is fixed.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from vigil.config import Settings
from vigil.errors import BrokerError
from vigil.events.records import DeadLetter
from vigil.hub.acls import DLQ_SUMMARY_GROUP_PREFIX
from vigil.hub.client import (
    BACKLOG_READER,
    READ_FATAL,
    is_transient,
    kafka_error,
    listed_topic,
    make_consumer,
    partition_offsets,
)

log = logging.getLogger(__name__)

decoder = msgspec.json.Decoder(DeadLetter)


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


#: Groups a summary keeps: past them, a smallest group's letters go to one group of their own
#: (OTHER) to make room for a new one.  A reason quotes what a sender chose (an unknown field's
#: name), so a flood of letters could make a group each: 20,000 letters made 19,345 groups, and as
#: many lines to read; and a cause that came after the first thousand must still be named.
MAX_GROUPS = 1_000
#: Records that are not dead letters a summary names (the rest are counted).
MAX_UNDECODABLE = 100
OTHER = f"(letters of smaller groups, of any reason, past the {MAX_GROUPS:,} groups kept)"


@dataclass
class Summary:
    groups: list[LetterGroup] = field(default_factory=list)
    letters: int = 0
    #: Records of the topic that are not dead letters (named where they are; the first
    #: MAX_UNDECODABLE), and how many there were.
    undecodable: list[str] = field(default_factory=list)
    undecodable_count: int = 0


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
#: A number not part of a name ("line 3", "offset 12"; not "UTF-8").
_NUMBER = re.compile(r"(?<![A-Za-z]-)(?<![A-Za-z])\d+")


def reason_shape(reason: str) -> str:
    """A reason with its particulars blanked: quoted values and numbers (line numbers, offsets,
    amounts) vary between letters of one cause.  Backquoted text is kept: msgspec names types
    and field paths so (`str`, `$.payload.amount`)."""
    return _NUMBER.sub("#", _QUOTED.sub("…", reason))[:200]


def place(message: Message) -> str:
    """``<topic>[<partition>]@<offset>``."""
    return f"{message.topic()}[{message.partition()}]@{message.offset()}"


def letters(consumer: Consumer, ends: dict[int, int], topic: str, idle_s: float = 120.0) -> Iterator[Message]:
    """The records of ``topic`` from the consumer's assigned positions up to ``ends``; fails when
    none comes for ``idle_s`` (however long the caller takes with each).  Records written since
    ``ends`` were taken are not given (the next run's): a letter written meanwhile may name a
    record newer than what the run knows of its topic (the redriven copies failing again)."""
    #: Each partition's end as taken: ``ends`` loses the partitions read to their end.
    snapshot = dict(ends)
    deadline = time.monotonic() + idle_s
    while ends:
        if time.monotonic() > deadline:
            msg = f"reading {topic!r}: nothing for {idle_s:g}s short of the end of partitions {sorted(ends)}"
            raise BrokerError(msg)
        for message in consumer.consume(500, 0.2):
            err = message.error()
            if err is None:
                deadline = time.monotonic() + idle_s
                if message.offset() >= snapshot.get(message.partition(), 0):
                    continue  # read on (another partition is not at its end): not this run's
                yield message
            elif err.fatal() or err.code() in READ_FATAL:
                msg = f"reading {topic!r} failed: {err.str()}"
                raise BrokerError(msg)
        for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
            if tp.offset >= ends[tp.partition]:
                del ends[tp.partition]


def open_letters(
    settings: Settings, topic: str, group: str, *, from_beginning: bool
) -> tuple[Consumer, dict[int, int]]:
    """A consumer of ``topic`` under ``group``, at the group's committed positions (the start
    when none, or ``from_beginning``), and each partition's end now."""
    consumer = make_consumer(settings, group, **BACKLOG_READER, **{"fetch.wait.max.ms": 20})
    try:
        found = listed_topic(settings, consumer, topic)
        partitions = sorted(found.partitions)
        marks = partition_offsets(settings, [(topic, p) for p in partitions], time.monotonic() + 30)
        # (From the beginning, a group's positions mean nothing: not asked, which a principal
        # may not do of a throwaway group it was granted to read with.)
        committed = (
            {} if from_beginning else _committed(consumer, [TopicPartition(topic, p) for p in partitions])
        )
        starts, ends = [], {}
        for p in partitions:
            low, high = marks[topic, p]
            at = committed.get(p, -1)
            if at > high and not from_beginning:
                # Past the end: the topic was deleted and made again since.  Its letters are new.
                log.warning(
                    "%s[%d]: position %d of %s is past the end (%d): reading from the start",
                    topic,
                    p,
                    at,
                    group,
                    high,
                )
            if from_beginning or at < 0 or at > high:
                at = low
            at = max(low, at)  # (letters before it gone with retention)
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
            answered = consumer.committed(tps, timeout=30)
        except KafkaException as exc:
            err = kafka_error(exc)
            loading = err is not None and err.code() in _COORDINATOR_LOADING
            if not (loading or is_transient(exc)) or time.monotonic() + pause > deadline:
                msg = f"committed offsets of {tps[0].topic!r}: {err.str() if err is not None else exc}"
                raise BrokerError(msg) from None
        else:
            failed = [tp for tp in answered if tp.error is not None]
            if not failed:
                return {tp.partition: tp.offset for tp in answered}
            if time.monotonic() + pause > deadline:
                # Not read as "none" (start over): that would send every letter again.
                tp = failed[0]
                msg = f"committed offset of {tp.topic}[{tp.partition}]: {tp.error}"
                raise BrokerError(msg)
        time.sleep(pause)  # the coordinator is loading: back off, not a sync point
        pause = min(pause * 2, 2.0)


OTHER_KEY = ("", "", OTHER)


def _make_room(
    groups: dict[tuple[str, str, str], LetterGroup], single: dict[tuple[str, str, str], None]
) -> None:
    """Fold a smallest group into OTHER: the oldest of one letter, else any smallest (a flood of
    new reasons folds its own groups of one, so a cause that keeps coming stays named)."""
    if single:
        key = next(iter(single))
        del single[key]
    else:
        key = min((k for k in groups if k != OTHER_KEY), key=lambda k: groups[k].count)
    folded = groups.pop(key)
    other = groups.setdefault(OTHER_KEY, LetterGroup(*OTHER_KEY))
    other.count += folded.count
    for when in (folded.first, folded.last):
        if when is not None:
            other.first = when if other.first is None else min(other.first, when)
            other.last = when if other.last is None else max(other.last, when)
    other.example = other.example or folded.example


def summarize(settings: Settings, topic: str, *, idle_s: float = 120.0) -> Summary:
    """Every letter of a dead-letter topic, grouped by stage, source topic and reason shape
    (the largest group first)."""
    consumer, ends = open_letters(
        settings, topic, f"{DLQ_SUMMARY_GROUP_PREFIX}{uuid.uuid4().hex[:8]}", from_beginning=True
    )
    out = Summary()
    groups: dict[tuple[str, str, str], LetterGroup] = {}
    #: Groups of one letter, the oldest first: the first to make room (see MAX_GROUPS).
    single: dict[tuple[str, str, str], None] = {}
    try:
        for message in letters(consumer, ends, topic, idle_s):
            try:
                letter = decoder.decode(message.value() or b"")
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                out.undecodable_count += 1
                if len(out.undecodable) < MAX_UNDECODABLE:
                    out.undecodable.append(f"{place(message)}: {exc}")
                continue
            out.letters += 1
            shape = reason_shape(letter.reason)
            key = (letter.stage, letter.topic, shape)
            group = groups.get(key)
            if group is None:
                if len(groups) - (OTHER_KEY in groups) >= MAX_GROUPS:
                    _make_room(groups, single)
                group = groups[key] = LetterGroup(*key)
            group.count += 1
            if group.count == 1:
                single[key] = None
            elif group.count == 2:
                single.pop(key, None)
            group.first = letter.failed_at if group.first is None else min(group.first, letter.failed_at)
            group.last = letter.failed_at if group.last is None else max(group.last, letter.failed_at)
            group.example = group.example or place(message)
    finally:
        consumer.close()
    out.groups = sorted(groups.values(), key=lambda g: (-g.count, g.stage, g.topic, g.reason))
    return out
