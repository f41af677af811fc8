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

Partitioning is librdkafka's default partitioner on the key, the same as every Vigil
producer's, so a repartition topic with the same partition count is co-partitioned with
the canonical topics (JVM producers hash differently: do not mix them on one topic).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from vigil.events.base import Event
from vigil.hub.topics import TopicSpec
from vigil.stream.base import Context, Operator, Record


def repartition_topic(app: str, group_id: str) -> str:
    return f"{app}.repartition.{group_id}"


def repartition_spec(app: str, group_id: str, partitions: int) -> TopicSpec:
    """The topic to pass in ``Application(internal_topics=...)`` so the application creates it."""
    return TopicSpec(
        name=repartition_topic(app, group_id),
        key=f"re-keyed by {group_id}",
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
    docstring)."""

    def __init__(
        self, id: str, topic: str, key: Callable[[Event], str | None], *, internal_prefix: str | None = None
    ) -> None:
        self.id = id
        self.topic = topic
        self.key = key
        self.internal_prefix = internal_prefix
        self.skipped = 0

    def process(self, batch: Sequence[Record[Any]], ctx: Context) -> None:
        topic, key, prefix = self.topic, self.key, self.internal_prefix
        for rec in batch:
            if rec.topic == topic or (prefix is not None and rec.topic.startswith(prefix)):
                continue
            k = key(rec.event)
            if not k:  # None, or "": an empty key would land on a random partition
                self.skipped += 1
                continue
            ctx.emit(topic, rec.event, k)


def group_by(app: str, kind: str, partitions: int) -> tuple[GroupBy, TopicSpec]:
    """``group_by(entity)``: the operator and the topic spec for re-keying events by ``kind``."""
    spec = repartition_spec(app, f"by-{kind}", partitions)
    op = GroupBy(f"group-by-{kind}", spec.name, entity_key(kind), internal_prefix=repartition_topic(app, ""))
    return op, spec
