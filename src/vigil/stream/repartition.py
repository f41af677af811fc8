"""Re-keying through a repartition topic (``group_by``).

Canonical topics are keyed by one entity (payments by customer).  To correlate by
another (wallet, IP, device, employee, vendor) an application re-publishes each event
keyed by that entity to ``<app>.repartition.<id>``; an application reading that topic
(or the same one, listing it as an input) then sees every event of one wallet in one
partition, with that wallet's state.  Events without the entity (or with an empty one) are
not re-published: they cannot belong to any group (they remain on their canonical topic).
An application reading its own repartition topics hands those records to every operator, the
``GroupBy``s too, which leave records of any of the application's repartition topics alone:
re-keyed once, not again and again.  (Skipping only its own topic, a ``GroupBy`` by IP and one
by device, in one application reading both topics, passed every event back and forth between
them for ever.)

At least once, the records a crash left uncommitted are read again and re-keyed again: the
repartition topic then holds them twice, and whatever counts over it (a window's count or sum)
counts them twice; their outputs' deterministic ids do not help there.  An application that
re-keys and then counts runs exactly-once (its re-keyed records are committed with its input
offsets), or dedups by event id.  A ``GroupBy`` leaves alone only its own application's
repartition topics: two applications each re-keying the other's repartition topic would pass
events between them for ever (read each other's outputs only after re-keying is done).

An event whose re-keyed record would be over the largest record an output may be
(``vigil.stream.app.OUTPUT_MAX_BYTES``: the key repeats the entity id, so a 600 KB device id
made a 1.2 MB record) goes to the dead-letter topic with the reason: refused by the producer, it
stopped the application at that event, and every restart at the same one.  The event itself
stays on its canonical topic; detection keys such ids by a digest of their own.

A re-keyed topic's partition takes the events of every input partition, in the order they are
re-keyed, so a window over the re-keyed events needs them re-keyed in event-time order: a
``GroupBy`` asks its application to align its inputs in event time (``event_time_skew_s``,
``REKEY_SKEW_S`` by default, as detection's route stage does; None: not asked), which it does
unless given ``max_event_time_skew_s`` of its own.  Unaligned, a replayed backlog was re-keyed a
fetch of one input partition after another, and a window over three partitions' events saw 414
of 600 late.  Alignment is each process's own: with several processes re-keying into one
topic, their records interleave in each of its partitions out of order by up to a checkpoint
interval and the processes' skew (hours, on a catch-up), so a window over them needs an allowed
lateness that covers it, or the application ``peer_skew_s`` (:mod:`vigil.stream.peers`), which
keeps its processes within that much event time of each other.
(A join of a re-keyed side with a side read directly: see :mod:`vigil.stream.join`.)

Partitioning is librdkafka's default partitioner on the key, the same as every Vigil
producer's, so a repartition topic with the same partition count is co-partitioned with
the canonical topics (JVM producers hash differently: do not mix them on one topic).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from vigil.events.base import Event
from vigil.hub.client import kafka_error
from vigil.hub.topics import TopicSpec
from vigil.stream.base import Context, Operator, Record

#: The event-time skew a ``GroupBy`` asks its application to align its inputs within (seconds;
#: detection's route stage aligns within the same, ``vigil.detect.app``).
REKEY_SKEW_S = 60.0


def repartition_topic(app: str, group_id: str) -> str:
    return f"{app}.repartition.{group_id}"


def repartition_spec(app: str, group_id: str, partitions: int) -> TopicSpec:
    """The topic to pass in ``Application(internal_topics=...)`` so the application creates it."""
    return TopicSpec(
        name=repartition_topic(app, group_id),
        key=f"the entity its events are re-keyed by ({group_id})",
        value="raw",
        description=f"Events of application {app!r} re-keyed by {group_id!r}",
        partitions=partitions,
    )


def entity_key(kind: str) -> Callable[[Event], str | None]:
    """Key function for an entity kind (``"wallet"``, ``"ip"`` ...), validated against ``Entities``."""
    from vigil.events.base import Entities

    if kind not in Entities.KINDS:
        msg = f"unknown entity kind {kind!r}; expected one of: {', '.join(Entities.KINDS)}"
        raise ValueError(msg)
    return lambda event: event.entities.get(kind)


class GroupBy(Operator[Event]):
    """Re-publishes each event to ``topic`` keyed by ``key(event)``; keyless events are skipped,
    and so are records already re-keyed: those of ``topic`` itself and of every topic whose name
    begins with ``internal_prefix`` (the application's repartition topics; see the module
    docstring).  ``topics``: only the records of these inputs are re-keyed (and the application
    refuses to be made without each among its inputs); none, every input's.  An event too large
    to re-key is dead-lettered (``refused`` counts them)."""

    def __init__(
        self,
        id: str,
        topic: str,
        key: Callable[[Event], str | None],
        *,
        internal_prefix: str | None = None,
        event_time_skew_s: float | None = REKEY_SKEW_S,
        topics: Sequence[str] = (),
    ) -> None:
        self.id = id
        #: The inputs it re-keys (empty: all); read by name, so the application checks them.
        self.reads = tuple(topics)
        #: Its application aligns its inputs in event time (see the module docstring).
        self.event_time_skew_s = event_time_skew_s
        self.topic = topic
        self.key = key
        self.internal_prefix = internal_prefix
        self.skipped = 0
        self.refused = 0

    def process(self, batch: Sequence[Record[Any]], ctx: Context) -> None:
        topic, key, prefix, only = self.topic, self.key, self.internal_prefix, self.reads
        for rec in batch:
            if rec.topic == topic or (prefix is not None and rec.topic.startswith(prefix)):
                continue
            if only and rec.topic not in only:
                continue
            k = key(rec.event)
            if not k:  # None, or "": an empty key would land on a random partition
                self.skipped += 1
                continue
            try:
                ctx.forward(topic, rec, k)  # (the bytes as read: not encoded again)
            except KafkaException as exc:
                err = kafka_error(exc)
                if err is None or err.code() != KafkaError.MSG_SIZE_TOO_LARGE:
                    raise
                self.refused += 1
                ctx.dead_letter(
                    rec, f"group_by {self.id!r}: cannot re-key the event to {topic!r}: {err.str()}"
                )


def group_by(
    app: str,
    kind: str,
    partitions: int,
    *,
    event_time_skew_s: float | None = REKEY_SKEW_S,
    topics: Sequence[str] = (),
    name: str | None = None,
) -> tuple[GroupBy, TopicSpec]:
    """``group_by(entity)``: the operator and the topic spec for re-keying events by ``kind``
    into ``<app>.repartition.<name>`` (``by-<kind>`` by default; the operator is
    ``group-<name>``).  ``topics``: only these inputs' events (a join's sides each re-keyed into a
    topic of its own, each ``group_by`` with its own ``name``: one re-keying of both puts both
    sides in one topic).  ``event_time_skew_s``: see the module docstring."""
    group = name if name is not None else f"by-{kind}"
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        msg = f"group_by {group!r}: partitions must be a whole number, at least 1; got {partitions!r}"
        raise ValueError(msg)
    spec = repartition_spec(app, group, partitions)
    op = GroupBy(
        f"group-{group}",
        spec.name,
        entity_key(kind),
        internal_prefix=repartition_topic(app, ""),
        event_time_skew_s=event_time_skew_s,
        topics=topics,
    )
    return op, spec
