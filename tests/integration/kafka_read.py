"""Reading topics back in integration tests, the way the pipeline reads them.

Everything is read under ``read_committed`` (aborted transactions of a killed connector
stay invisible) and up to the end *now*.  Transaction markers take offsets and are never
delivered, so the end is judged by the consumer's position, never by counting messages.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from vigil.config import Settings
from vigil.hub.client import make_consumer
from vigil.hub.raw import RawRecord


def watermarks(consumer: Consumer, tp: TopicPartition, timeout: float = 30.0) -> tuple[int, int]:
    """(low, high) of a partition; retried while a just-created topic elects its leader."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=5)
            return int(low), int(high)
        except KafkaException as exc:
            if not exc.args[0].retriable() or time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # leader election in progress; the loop re-checks the state


def read_raw(settings: Settings, topic: str, source: str, timeout_s: float = 30.0) -> list[RawRecord]:
    """Every committed record of ``topic``, partition by partition in offset order."""
    consumer = make_consumer(settings, group_id=f"test.reader.{uuid.uuid4().hex[:8]}")
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        out: list[RawRecord] = []
        for p in partitions:
            tp = TopicPartition(topic, p)
            low, high = watermarks(consumer, tp)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            deadline = time.monotonic() + timeout_s
            while consumer.position([tp])[0].offset < high:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"reading {topic}[{p}] did not reach offset {high} in {timeout_s}s")
                msg = consumer.poll(0.2)
                if msg is None or msg.error():
                    continue
                out.append(RawRecord.from_headers(source, msg.value(), msg.key(), msg.headers()))
        return out
    finally:
        consumer.close()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate()`` until true, or fail saying what was awaited."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
