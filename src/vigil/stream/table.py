"""A global table: every partition of a compacted topic, in a local dict kept up to date.

For slowly changing lookup data every worker needs whole (threat indicators, customer
profiles): each process reads *all* partitions of the topic, from the beginning, in a
background thread, with ``read_committed``.  A record with no value (a tombstone)
deletes its key.  :meth:`GlobalTable.start` returns once the table has caught up with
the topic's end as it was at start, so a detector never runs against a half-loaded list.

Records that cannot be decoded are skipped, counted in ``errors`` and logged with their
topic/partition/offset (their producer, the intel normaliser, has already dead-lettered
what it could not parse; the table only reads).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from vigil.config import Settings
from vigil.errors import PipelineError, TopicError, VigilError
from vigil.events.codec import decode_event

log = logging.getLogger(__name__)

V = TypeVar("V")


def _decode_event(value: bytes) -> Any:
    return decode_event(value)


class GlobalTable(Generic[V]):
    """Read-only view of a compacted topic; ``get`` is a dict lookup (thread-safe under the GIL)."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        decode: Callable[[bytes], V] = _decode_event,
        *,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.name = name or f"table.{topic}"
        self._decode = decode
        self._data: dict[str, V] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        #: Updates applied (records and tombstones); a cheap "version" to report with a match.
        self.version = 0
        self.errors = 0

    # ------------------------------------------------------------------ reading

    def get(self, key: str, default: V | None = None) -> V | None:
        return self._data.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def items(self) -> Iterator[tuple[str, V]]:
        return iter(list(self._data.items()))

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout_s: float = 60.0) -> GlobalTable[V]:
        """Start the background reader; return once caught up (raises if not within ``timeout_s``;
        calling again waits again for the same reader)."""
        if self._thread is None:
            self._begin()
        deadline = time.monotonic() + timeout_s
        while not self._ready.is_set():
            self.check()
            if time.monotonic() >= deadline:
                msg = f"global table {self.name!r} did not catch up with {self.topic!r} in {timeout_s:g}s"
                raise PipelineError(msg)
            self._ready.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        self.check()
        return self

    def check(self) -> None:
        """Raise if the background reader has stopped on an error: the table would go stale
        silently otherwise (call it where the application checks its other parts)."""
        if self._failure is not None:
            state = "while loading" if not self._ready.is_set() else "after loading; the table is stale"
            msg = f"global table {self.name!r} failed {state}: {self._failure}"
            raise PipelineError(msg) from self._failure

    def _begin(self) -> None:
        conf = self.settings.kafka_client_config()
        conf.update(
            {
                "group.id": self.name,
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
            }
        )
        consumer = Consumer(conf)
        meta = consumer.list_topics(self.topic, timeout=30).topics.get(self.topic)
        if meta is None or meta.error is not None or not meta.partitions:
            consumer.close()
            msg = f"global table {self.name!r}: topic {self.topic!r} does not exist"
            raise TopicError(msg)
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        self._thread = threading.Thread(
            target=self._run, args=(consumer, set(meta.partitions)), name=self.name, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    @property
    def ready(self) -> bool:
        """Caught up, and still reading (False once the reader has failed: see :meth:`check`)."""
        return self._ready.is_set() and self._failure is None

    def _run(self, consumer: Consumer, partitions: set[int]) -> None:
        behind = set(partitions)
        try:
            while not self._stop.is_set():
                for msg in consumer.consume(1000, 0.2):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            behind.discard(msg.partition())
                            if not behind:
                                self._ready.set()
                            continue
                        if err.fatal():
                            raise PipelineError(f"global table {self.name!r}: {err.str()}")  # noqa: EM102
                        log.warning("global table %s: %s", self.name, err.str())
                        continue
                    self._apply(msg.key(), msg.value(), msg.partition(), msg.offset())
        except BaseException as exc:
            self._failure = exc
            log.exception("global table %s stopped", self.name)
        finally:
            consumer.close()

    def _apply(self, key: bytes | None, value: bytes | None, partition: int, offset: int) -> None:
        if key is None:
            self.errors += 1
            log.warning(
                "global table %s: record without key at %s[%d]@%d", self.name, self.topic, partition, offset
            )
            return
        text = key.decode("utf-8", "replace")
        if value is None:
            self._data.pop(text, None)
        else:
            try:
                self._data[text] = self._decode(value)
            except (VigilError, ValueError) as exc:
                self.errors += 1
                log.warning(
                    "global table %s: skipped %s[%d]@%d: %s", self.name, self.topic, partition, offset, exc
                )
                return
        self.version += 1
