"""Event-time alignment across the processes of one application (``peer_skew_s``).

Alignment (:mod:`vigil.stream.alignment`) keeps one process's partitions within a skew of each
other in event time.  Several processes of one application catching up on a backlog each go at
their own pace, though, and what they write into one topic (a repartition topic, detection's
``detect.routed``) interleaves in each of its partitions as far apart in event time as they are:
on a 200,000-event backlog, two detection processes routed hours apart, and the detect stage took
the slower one's events for late (133 and 156 alerts where one process gives 139, 27 withdrawal
holds where it gives 8).

So each member publishes its *floor* (the latest event time of its slowest partition that holds
the others back; none when no partition does) to the application's compacted topic
``<app>.peers``, keyed by its instance id, and reads the others'.  It releases records to its
operators only up to the lowest floor of the others plus ``peer_skew_s`` (Flink's watermark
alignment across a source's readers, with Kafka as the coordinator); what waits past that point
fills the partition's buffer, which pauses it as alignment does within a process.  Then whatever
a member writes is at most ``peer_skew_s`` ahead of what the slowest will still write: the slowest
releases everything up to its own floor, and the others nothing past that floor plus the skew.
The slowest member is never held (its cap is above its own floor), so members cannot wait on each
other for ever; each round trip lets the others on by up to the skew of event time.

Live, every floor is near the wall clock and the cap lies ``peer_skew_s`` in the future: it holds
nothing and adds no latency.  A member's word counts for ``TTL_S`` after it was heard (and one
published longer ago than that, by the wall clock, is not taken at all: left by a process that
was killed); one that closes withdraws it (a tombstone).  A member killed mid-backlog stops holding
the others ``TTL_S`` after its last word, before the group gives its partitions to the others (the
session timeout): those partitions are then behind what the others released, as a partition taken
over is within one process.  A member whose operators hold its loop longer than ``TTL_S`` (one
batch) is taken for gone meanwhile.  The topic being out of reach holds nobody: the others' words
go stale, and each member aligns its own partitions alone.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from vigil.hub.topics import TopicSpec

log = logging.getLogger(__name__)

#: A member's word counts this long after it was heard (seconds; see the module docstring).
TTL_S = 15.0
#: A member publishes its floor at most this often while it moves (seconds), and at least this
#: often while it stands (a heartbeat).
PUBLISH_EVERY_S = 0.05
HEARTBEAT_S = 1.0
#: Waiting for another member is logged at most this often (seconds).
_LOG_EVERY_S = 10.0
#: A floor below any event time (a partition that has delivered nothing yet holds the others as
#: if at the beginning of time): JSON has no infinity.
_BEGINNING = -1e18


def peers_topic(app: str) -> str:
    return f"{app}.peers"


def peers_topic_spec(app: str) -> TopicSpec:
    return TopicSpec(
        name=peers_topic(app),
        key="instance id",
        value="raw",
        description=f"Event-time floors of the processes of application {app!r} (vigil.stream.peers)",
        partitions=1,
        retention=None,
        cleanup="compact",
        delete_retention=timedelta(hours=1),
    )


class Word(msgspec.Struct, frozen=True):
    """What a member publishes: its floor (``None``: no partition holds the others back) and
    when, by its wall clock (epoch seconds)."""

    floor: float | None
    at: float


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Word).decode


@dataclass
class _Heard:
    floor: float | None
    #: Monotonic time it was heard.
    heard_at: float


class PeerFloors:
    """The others' floors as heard, and the cap they put on this member (no Kafka here)."""

    def __init__(self, member: str, skew_s: float, ttl_s: float = TTL_S) -> None:
        if not (skew_s >= 0 and math.isfinite(skew_s)) or not ttl_s > 0:
            msg = f"peer alignment: skew_s >= 0 (finite) and ttl_s > 0 expected; got {skew_s}, {ttl_s}"
            raise ValueError(msg)
        self.member = member
        self.skew_s = skew_s
        self.ttl_s = ttl_s
        self.wall: Callable[[], float] = time.time
        self.peers: dict[str, _Heard] = {}

    def heard(self, member: str, word: Word | None, now: float) -> None:
        """``member`` published ``word`` (``None``: it withdrew), heard at monotonic ``now``."""
        if member == self.member:
            return  # (its own floor is the local one; an earlier run's word is stale)
        if word is None or word.at < self.wall() - self.ttl_s:
            self.peers.pop(member, None)
            return
        self.peers[member] = _Heard(word.floor, now)

    def slowest(self, now: float) -> tuple[str, float] | None:
        """The member with the lowest floor among those heard within ``ttl_s`` that hold."""
        found: tuple[str, float] | None = None
        for member, heard in list(self.peers.items()):
            if now - heard.heard_at >= self.ttl_s:
                del self.peers[member]
                continue
            if heard.floor is not None and (found is None or heard.floor < found[1]):
                found = (member, heard.floor)
        return found

    def cap(self, now: float) -> float:
        """The event time up to which this member may release records (``inf``: no limit)."""
        slowest = self.slowest(now)
        return math.inf if slowest is None else slowest[1] + self.skew_s


class PeerChannel:
    """Publishes this member's floor to ``<app>.peers`` and reads the others' into a
    :class:`PeerFloors`.  Failures are logged, never raised: without the topic each member
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
        self._producer = Producer({**producer_conf, "error_cb": self._on_error})
        self._consumer = Consumer({**consumer_conf, "enable.auto.commit": False, "error_cb": self._on_error})
        self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        #: The offset after the last word read.
        self._read_to = 0
        self._sent: float | None = None
        self._sent_at = -math.inf
        self._sent_nothing = True
        self._warned_at = -math.inf
        #: The member holding this one back as of the last :meth:`note`, and how many times one
        #: began to (for the log and tests).
        self.held_by: str | None = None
        self.waits = 0
        self._logged_at = -math.inf

    def _on_error(self, err: Any) -> None:
        self._warn(f"{err}")

    def _warn(self, what: str) -> None:
        now = time.monotonic()
        if now - self._warned_at >= 60.0:  # (an outage would otherwise log every pass)
            self._warned_at = now
            log.warning("peer alignment on %s: %s (aligning alone meanwhile)", self.topic, what)

    def due(self, now: float) -> bool:
        """Whether :meth:`publish` may send now (at most every ``PUBLISH_EVERY_S``)."""
        return now - self._sent_at >= PUBLISH_EVERY_S

    def publish(self, floor: float | None, now: float) -> None:
        """Publish ``floor`` if it moved, or a heartbeat is due (call when :meth:`due`)."""
        if floor is not None and not floor > _BEGINNING:
            floor = _BEGINNING
        if not (self._sent_nothing or floor != self._sent or now - self._sent_at >= HEARTBEAT_S):
            return
        try:
            self._producer.produce(self.topic, _encode(Word(floor, self.floors.wall())), self.floors.member)
            self._producer.poll(0)
        except (KafkaException, BufferError) as exc:
            self._warn(f"publishing: {exc}")
            return
        self._sent, self._sent_at, self._sent_nothing = floor, now, False

    def catch_up(self, timeout_s: float) -> None:
        """Read the words already published (up to the topic's end as of now, for at most
        ``timeout_s``): a member that started knowing nobody ran ahead of the others until its
        first fetch of the topic came back."""
        deadline = time.monotonic() + timeout_s
        try:
            _, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, 0), timeout=timeout_s)
        except KafkaException as exc:
            self._warn(f"reading: {exc}")
            return
        while self._read_to < high:
            left = deadline - time.monotonic()
            if left <= 0:
                self._warn(f"read {self._read_to:,} of its {high:,} words in {timeout_s:g} s")
                return
            try:
                msgs = self._consumer.consume(1000, min(left, 0.1))
            except KafkaException as exc:
                self._warn(f"reading: {exc}")
                return
            self._take(msgs, time.monotonic())

    def poll(self, now: float) -> None:
        """Take in what the others published since the last call (never waits)."""
        try:
            msgs = self._consumer.consume(1000, 0)
        except KafkaException as exc:
            self._warn(f"reading: {exc}")
            return
        self._take(msgs, now)

    def _take(self, msgs: list[Any], now: float) -> None:
        for msg in msgs:
            if msg.error() is not None:
                self._warn(f"reading: {msg.error()}")
                continue
            self._read_to = max(self._read_to, msg.offset() + 1)
            key, value = msg.key(), msg.value()
            if key is None:
                continue
            member = key.decode("utf-8", "replace")
            try:
                word = None if value is None else _decode(value)
            except msgspec.DecodeError as exc:
                self._warn(f"an unreadable word at offset {msg.offset()} (key {member[:80]!r}): {exc}")
                continue
            self.floors.heard(member, word, now)

    def cap(self, local: float, now: float) -> float:
        """Take in the others' words and return the release limit: ``local`` (this member's
        alignment's) capped by the slowest other member's floor plus the skew."""
        self.poll(now)
        return min(local, self.floors.cap(now))

    def note(self, held: bool, now: float) -> None:
        """Whether the cap held records back on this pass: counted when it begins, and logged
        (at most every ``_LOG_EVERY_S``: in step with a slower member, it begins and ends many
        times a second)."""
        slowest = self.floors.slowest(now) if held else None
        by = None if slowest is None else slowest[0]
        if by == self.held_by:
            return
        self.held_by = by
        if slowest is None:
            return
        self.waits += 1
        if now - self._logged_at >= _LOG_EVERY_S:
            self._logged_at = now
            log.info(
                "peer alignment: %s waits for %s (its floor %s, skew %g s; %d wait(s) so far)",
                self.floors.member,
                slowest[0][:80],
                _when(slowest[1]),
                self.floors.skew_s,
                self.waits,
            )

    def close(self) -> None:
        """Withdraw this member's word (a tombstone) and close the clients."""
        try:
            self._producer.produce(self.topic, None, self.floors.member)
            self._producer.flush(2.0)
        except (KafkaException, BufferError) as exc:
            self._warn(f"withdrawing: {exc}")
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            self._warn(f"closing: {exc}")


def _when(floor: float) -> str:
    if floor <= _BEGINNING:
        return "before its first record"
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(floor))
    except (OverflowError, OSError, ValueError):
        return f"{floor:.0f}"
