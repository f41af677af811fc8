"""Changelog topics: naming, declaration and restore.

Every store of an application has one compacted topic ``<app>.changelog.<store id>``
with as many partitions as the inputs; partition ``p`` of the changelog holds the state
of input partition ``p``.  Restore starts from the changelog offset RocksDB recorded
with its last write (not from zero) and reads committed records only, up to the end; a
store whose offset the changelog does not have is wiped and restored from the start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from confluent_kafka import (
    OFFSET_BEGINNING,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from vigil.config import Settings
from vigil.errors import PipelineError
from vigil.hub.client import is_transient, kafka_error, make_admin, make_consumer
from vigil.hub.topics import TopicSpec
from vigil.stream.state import RocksState

log = logging.getLogger(__name__)

#: Writes applied to RocksDB in one batch during restore.
_RESTORE_CHUNK = 50_000


def changelog_topic(app: str, store_id: str) -> str:
    return f"{app}.changelog.{store_id}"


def changelog_spec(app: str, store_id: str, partitions: int) -> TopicSpec:
    return TopicSpec(
        name=changelog_topic(app, store_id),
        key="state key",
        value="raw",
        description=f"State store {store_id!r} of stream application {app!r}",
        partitions=partitions,
        retention=None,
        cleanup="compact",
    )


@dataclass
class RestoreTask:
    state: RocksState
    topic: str
    partition: int


def restore(settings: Settings, app: str, tasks: Sequence[RestoreTask], timeout_s: float = 120.0) -> int:
    """Bring each store up to the end of its changelog partition; returns records applied."""
    if not tasks:
        return 0
    # Every partition's offsets in two requests, not two per partition: an application with
    # dozens of stores (detection: one per rule) restores each of them on every assignment.
    offsets = end_offsets(
        make_admin(settings), [(t.topic, t.partition) for t in tasks], time.monotonic() + 30
    )
    consumer = make_consumer(settings, f"{app}.restore", **{"enable.partition.eof": True})
    try:
        assign: list[TopicPartition] = []
        by_tp: dict[tuple[str, int], RestoreTask] = {}
        for task in tasks:
            start = task.state.changelog_offset()
            low, high = offsets[task.topic, task.partition]
            if start is not None and not low <= start <= high:
                # The store reached an offset this changelog does not have (the topic was
                # recreated, the broker reformatted, records deleted): it is not a prefix of
                # the changelog any more, and catching up from here would keep keys the
                # changelog never had, and move the offset backwards.  Restored afresh, as
                # another host would restore it (Kafka Streams wipes such a store too).
                log.warning(
                    "state %s: changelog offset %d is outside %s[%d]'s %d..%d; restoring it from the start",
                    task.state.path,
                    start,
                    task.topic,
                    task.partition,
                    low,
                    high,
                )
                task.state.wipe()
                start = None
            begin = start if start is not None else low
            task.state.changelog_next = high
            if begin >= high:
                continue
            assign.append(
                TopicPartition(task.topic, task.partition, begin if start is not None else OFFSET_BEGINNING)
            )
            by_tp[(task.topic, task.partition)] = task
        if not assign:
            return 0
        consumer.assign(assign)
        pending: dict[tuple[str, int], list[tuple[bytes, bytes | None]]] = {tp: [] for tp in by_tp}
        last: dict[tuple[str, int], int] = {}
        remaining = set(by_tp)
        applied = 0
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                msg = (
                    f"restoring {sorted(remaining)} did not reach the end of the changelog in {timeout_s:g}s"
                )
                raise PipelineError(msg)
            for msg in consumer.consume(10_000, 0.5):
                tp = (msg.topic(), msg.partition())
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        remaining.discard(tp)
                        continue
                    text = f"restoring changelog {tp[0]}[{tp[1]}]: {err.str()}"
                    raise PipelineError(text)
                key = msg.key()
                if key is None:
                    continue
                pending[tp].append((key, msg.value()))
                last[tp] = msg.offset()
                if len(pending[tp]) >= _RESTORE_CHUNK:
                    by_tp[tp].state.write_committed(pending[tp], last[tp] + 1)
                    applied += len(pending[tp])
                    pending[tp] = []
        for tp, writes in pending.items():
            if tp in last:
                by_tp[tp].state.write_committed(writes, last[tp] + 1)
                applied += len(writes)
        return applied
    finally:
        consumer.close()


def end_offsets(
    admin: AdminClient, partitions: Sequence[tuple[str, int]], deadline: float
) -> dict[tuple[str, int], tuple[int, int]]:
    """Low and high offsets of changelog partitions (high: the last stable offset, as a
    ``read_committed`` consumer sees the end), asked for all at once.  Partitions the broker
    answers with a transient error (a just-created topic electing its leader) are asked again,
    with a growing pause, until ``deadline`` (monotonic); anything else fails naming the partition."""
    out: dict[tuple[str, int], tuple[int, int]] = {}
    left = list(dict.fromkeys(partitions))
    pause = 0.05
    while True:
        timeout = max(0.1, deadline - time.monotonic())
        answers = [
            {
                (tp.topic, tp.partition): future
                for tp, future in admin.list_offsets(
                    {TopicPartition(t, p): spec for t, p in left},
                    isolation_level=IsolationLevel.READ_COMMITTED,
                    request_timeout=timeout,
                ).items()
            }
            for spec in (OffsetSpec.earliest(), OffsetSpec.latest())
        ]
        retry: list[tuple[str, int]] = []
        for tp in left:
            try:
                out[tp] = (int(answers[0][tp].result().offset), int(answers[1][tp].result().offset))
            except KafkaException as exc:
                if not is_transient(exc) or time.monotonic() + pause > deadline:
                    err = kafka_error(exc)
                    reason = err.str() if err is not None else str(exc)
                    msg = f"restoring changelog {tp[0]}[{tp[1]}]: could not read its end offsets: {reason}"
                    raise PipelineError(msg) from exc
                retry.append(tp)
        if not retry:
            return out
        left = retry
        time.sleep(pause)  # the broker is electing a leader: back off, not a sync point
        pause = min(pause * 2, 1.0)
