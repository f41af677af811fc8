"""Event-time alignment across the processes of one application (``peer_skew_s``).

Alignment (:mod:`vigil.stream.alignment`) keeps one process's partitions within a skew of each
other in event time.  Several processes of one application catching up on a backlog each go at
their own pace, though, and what they write into one topic (a repartition topic, detection's
``detect.routed``) interleaves in each of its partitions as far apart in event time as they are:
on a 200,000-event backlog, two detection processes routed hours apart, and the detect stage took
the slower one's events for late (a true alert lost in 3 runs of 3; a broker test's newcomer
beside a slow member wrote 3,650 s out of order).

So each process publishes, for every input partition it owns, where that partition stands: the event
time from which it has records still to hand its operators (the earliest one waiting, or the latest
one read while the partition has more to read; none when it has nothing to read), to the
application's compacted topic ``<app>.peers``, keyed by the partition (a *word*; at most every
``PUBLISH_EVERY_S`` when it moved, and again every ``HEARTBEAT_S``, ``QUIET_HEARTBEAT_S`` for a
partition with nothing to read).  A partition catching up (its next record older than
``REPLAY_BEHIND_S``, and in order: not older than what it released before) releases records to its
operators only up to the lowest word of the partitions the process does not own plus ``peer_skew_s``
(Flink's watermark alignment across a source's readers, with Kafka as the coordinator); what waits
fills its buffer, which pauses it once it holds ``BUFFER_CAP_FACTOR`` times ``max_buffered``
records (:meth:`~vigil.stream.alignment.Alignment.plan`; the partition that set its process's
floor was never paused, and read its whole backlog into memory: found in review).  Then whatever a process
writes of a backlog is at most ``peer_skew_s`` ahead of what the others will still write (plus what
the others released and still have on their way to Kafka: a process's outputs and its words go
through two producers, and under load the others' records released on a word reached the log before
outputs produced ahead of them, by up to a release's span, 200 s in the broker test; and exactly-once,
what a transaction aborted at a rebalance sends again after what the others wrote meanwhile: a word
waiting for the commit made every lock-step round a checkpoint interval, and detection's catch-up
three times slower).  The partition with the lowest word is never held back by the others (its
owner's cap lies above its word), so they cannot wait on each other for ever.  A process that starts
catching up holds its backlog ``PEER_GRACE_S`` for the others' fresh words (a backlog arriving while
all were live: their words said "nothing to read", and the first to read its share released it all).
Live records never wait: a partition whose next record is recent, or late (older than what it
released: late already), is released as alignment says, whatever the others do (judged by the latest
record read, the tail of every catch-up and a record dated in the future switched peer alignment
off; judged by the process's earliest record waiting, one late record made every live record wait
for the slowest other: found in review).  A partition that released nothing yet (after a start, or
taken over) has reached the present if its latest record read is recent: so a backlog read whole in
its first fetch up to the present goes as live.

Words are the partitions', not the processes': when a partition moves (a process joins, leaves or
is killed), its new owner says its last owner's word again (the last heard since it started; the
beginning of time if none) while it restores the partition's stores or waits for its first
records, so the others do not run ahead of it meanwhile, however long the restore (one with
nothing to read says so: it holds nobody).  A word not renewed for ``TTL_S`` (longer than a killed
member's session timeout and the rebalance after it) stops counting, and so does the whole topic
out of reach: each process then aligns its own partitions alone, as without this.  A process reads
the topic from its end at its start (what an earlier run left there is not where the partitions
stand now: after a replay from the start, it let a process run ahead), and a partition not heard
of counts as not read yet for the first ``TTL_S`` after it starts (every owner says its word within
``QUIET_HEARTBEAT_S``).

Limits: words are renewed between batches, so a process whose operators take longer than
``TTL_S`` over one release is taken for gone meanwhile, and the others run ahead of it; partitions
added to an input while the processes run are left out of the others' view until they restart.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from confluent_kafka import (
    OFFSET_END,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from vigil.hub.client import new_consumer, new_producer
from vigil.hub.topics import TopicSpec
from vigil.stream.alignment import TP

log = logging.getLogger(__name__)

#: A word counts this long after it was heard (seconds; see the module docstring): longer than
#: the runtime's session timeout (10 s; Kafka's default 45 s) and the rebalance that gives a
#: killed member's partitions to another.
TTL_S = 60.0
#: A partition's word is published at most this often while it moves (seconds), and at least
#: this often while it stands (a heartbeat); the word of one with nothing to read less often (a
#: live application's words say so, and need not fill the topic).
PUBLISH_EVERY_S = 0.05
HEARTBEAT_S = 1.0
QUIET_HEARTBEAT_S = 5.0
#: Waiting for another process is logged at most this often (seconds).
_LOG_EVERY_S = 10.0
#: A word below any event time (not read yet): JSON has no infinity.
_BEGINNING = -1e18


def peers_topic(app: str) -> str:
    return f"{app}.peers"


def peers_topic_spec(app: str) -> TopicSpec:
    return TopicSpec(
        name=peers_topic(app),
        key="input topic:partition",
        value="raw",
        description=f"Where each input partition of application {app!r} stands in event time "
        "(vigil.stream.peers)",
        partitions=1,
        retention=None,
        cleanup="compact",
    )


class Word(msgspec.Struct, frozen=True):
    """What a partition's owner publishes: the event time from which it has records still to
    hand over (``None``: none, at its end), and who it is (for the log)."""

    at: float | None
    by: str


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Word).decode


def word_key(tp: TP) -> str:
    return f"{tp[0]}:{tp[1]}"  # (topic names have no colon)


@dataclass
class _Heard:
    word: Word
    #: Monotonic time it was heard.
    heard_at: float


class PeerFloors:
    """The partitions' words as heard, and the cap they put on this process (no Kafka here)."""

    def __init__(
        self, member: str, skew_s: float, partitions: Iterable[TP], now: float, ttl_s: float = TTL_S
    ) -> None:
        if not (skew_s >= 0 and math.isfinite(skew_s)) or not ttl_s > 0:
            msg = f"peer alignment: skew_s >= 0 (finite) and ttl_s > 0 expected; got {skew_s}, {ttl_s}"
            raise ValueError(msg)
        self.member = member
        self.skew_s = skew_s
        self.ttl_s = ttl_s
        #: The application's input partitions, by word key.
        self.partitions = {word_key(tp): tp for tp in partitions}
        self.started_at = now
        self.words: dict[TP, _Heard] = {}

    def heard(self, key: str, word: Word | None, now: float) -> None:
        tp = self.partitions.get(key)
        if tp is None:
            return  # (an input no longer read, or another layout's)
        if word is None:
            self.words.pop(tp, None)
        else:
            self.words[tp] = _Heard(word, now)

    def slowest(self, owned: Iterable[TP], now: float) -> tuple[TP, float, str] | None:
        """The partition owned by another process with the lowest word (``_BEGINNING``: not read
        yet, or never heard of early on), with who said it; ``None``: none holds."""
        mine = set(owned)
        early = now - self.started_at < self.ttl_s
        found: tuple[TP, float, str] | None = None
        for tp in self.partitions.values():
            if tp in mine:
                continue
            heard = self.words.get(tp)
            if heard is None or now - heard.heard_at >= self.ttl_s:
                if not early:
                    continue  # (gone quiet: the topic out of reach, or a partition never read)
                at, by = _BEGINNING, "nobody yet"
            elif heard.word.at is None:
                continue
            else:
                at, by = heard.word.at, heard.word.by
            if found is None or at < found[1]:
                found = (tp, at, by)
        return found

    def cap(self, owned: Iterable[TP], now: float) -> float:
        """The event time up to which this process may release records while it catches up
        (``inf``: no limit): the lowest word of the partitions it does not own plus the skew."""
        slowest = self.slowest(owned, now)
        return math.inf if slowest is None else max(slowest[1], _BEGINNING) + self.skew_s

    def said(self, tp: TP) -> float | None:
        """The word to say for a partition this process owns but has not read yet (restoring its
        stores, or waiting for its first records): its last owner's, as last heard (expired or
        not), or the beginning of time if none was heard since the start."""
        heard = self.words.get(tp)
        return _BEGINNING if heard is None else heard.word.at


class PeerChannel:
    """Publishes this process's partitions' words to ``<app>.peers`` and reads everyone's into
    a :class:`PeerFloors`.  Failures are logged, never raised: without the topic each process
    aligns alone (see the module docstring)."""

    def __init__(
        self,
        floors: PeerFloors,
        topic: str,
        producer_conf: dict[str, Any],
        consumer_conf: dict[str, Any],
    ) -> None:
        self.floors = floors
        self.topic = topic
        self._producer = new_producer(
            {**producer_conf, "error_cb": self._on_error, "on_delivery": self._on_delivery}
        )
        self._consumer = new_consumer(
            {**consumer_conf, "enable.auto.commit": False, "error_cb": self._on_error}
        )
        # From its end: see the module docstring.
        self._consumer.assign([TopicPartition(topic, 0, OFFSET_END)])
        #: Per partition owned: the word last sent and when (monotonic).
        self._sent: dict[TP, tuple[float | None, float]] = {}
        self._published_at = -math.inf
        self._warned_at = -math.inf
        self._logged_at = -math.inf
        #: The partition holding this process back as of the last :meth:`note`, and how many
        #: times one began to (for the log and the metric).
        self.held_by: TP | None = None
        self.waits = 0

    def _on_error(self, err: Any) -> None:
        self._warn(f"{err}")

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._warn(f"publishing: {err.str()}")

    def _warn(self, what: str) -> None:
        now = time.monotonic()
        if now - self._warned_at >= 60.0:  # (an outage would otherwise log every pass)
            self._warned_at = now
            log.warning("peer alignment on %s: %s (aligning alone meanwhile)", self.topic, what)

    def due(self, now: float) -> bool:
        """Whether :meth:`publish` may send now (at most every ``PUBLISH_EVERY_S``)."""
        return now - self._published_at >= PUBLISH_EVERY_S

    def publish(self, words: Mapping[TP, float | None], now: float) -> None:
        """Publish the words of the partitions owned (those left out: nothing known yet, their
        last owner's word stands) that moved, or whose heartbeat is due."""
        self._published_at = now
        member = self.floors.member
        for tp, at in words.items():
            if at is not None and not at > _BEGINNING:
                at = _BEGINNING
            sent = self._sent.get(tp)
            if (
                sent is not None
                and sent[0] == at
                and now - sent[1] < (QUIET_HEARTBEAT_S if at is None else HEARTBEAT_S)
            ):
                continue
            try:
                self._producer.produce(self.topic, _encode(Word(at, member)), word_key(tp))
            except (KafkaException, BufferError) as exc:
                self._warn(f"publishing: {exc}")
                break
            self._sent[tp] = (at, now)
        for tp in [tp for tp in self._sent if tp not in words]:
            del self._sent[tp]  # (given up, or nothing known of it now)
        try:
            self._producer.poll(0)
        except KafkaException as exc:
            self._warn(f"publishing: {exc}")

    def poll(self, now: float) -> None:
        """Take in what was published since the last call (never waits)."""
        try:
            msgs = self._consumer.consume(1000, 0)
        except KafkaException as exc:
            self._warn(f"reading: {exc}")
            return
        self._take(msgs, now)

    def _take(self, msgs: list[Message], now: float) -> None:
        for msg in msgs:
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    self._warn(f"reading: {error.str()}")
                continue
            key, value = msg.key(), msg.value()
            if key is None:
                continue
            name = key.decode("utf-8", "replace")
            try:
                word = None if value is None else _decode(value)
            except msgspec.DecodeError as exc:
                self._warn(f"an unreadable word at offset {msg.offset()} (key {name[:80]!r}): {exc}")
                continue
            self.floors.heard(name, word, now)

    def note(self, held: bool, owned: Iterable[TP], now: float) -> None:
        """Whether the cap held records back on this pass: counted when a wait begins, and logged
        (at most every ``_LOG_EVERY_S``: in step with a slower process, waits begin and end many
        times a second)."""
        slowest = self.floors.slowest(owned, now) if held else None
        tp = None if slowest is None else slowest[0]
        if tp == self.held_by:
            return
        began = self.held_by is None
        self.held_by = tp
        if slowest is None:
            return
        if began:
            self.waits += 1
        if now - self._logged_at >= _LOG_EVERY_S:
            self._logged_at = now
            log.info(
                "peer alignment: %s waits for %s partition %d (at %s, by %s; skew %g s; %d wait(s) so far)",
                self.floors.member,
                slowest[0][0],
                slowest[0][1],
                _when(slowest[1]),
                slowest[2][:80],
                self.floors.skew_s,
                self.waits,
            )

    def close(self) -> None:
        """Send what is queued and close the clients (the words stay: the partitions' next
        owners take over from them)."""
        try:
            self._producer.flush(2.0)
        except KafkaException as exc:
            self._warn(f"publishing: {exc}")
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            self._warn(f"closing: {exc}")


def _when(at: float) -> str:
    if at <= _BEGINNING:
        return "before its first record"
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
    except (OverflowError, OSError, ValueError):
        return f"{at:.0f}"
