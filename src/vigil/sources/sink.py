"""Where connectors publish: raw records and their checkpoint, together.

:class:`KafkaRawSink` writes a batch of raw records and, when given, the connector's
cursor (to its compacted ``vigil.cursors.<source id>`` topic) in **one Kafka
transaction**.  Either both are visible to ``read_committed`` readers or neither is,
so a connector killed at any point resumes from a cursor that matches exactly what was
published: no gap, no duplicate.  The transactional id is derived from the source id,
so a restarted connector fences its predecessor (a zombie cannot commit stale data).

:class:`MemorySink` has the same interface and keeps everything in lists, for unit tests
of connector parsing that need no broker.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import msgspec
from confluent_kafka import KafkaException

from vigil.config import Settings
from vigil.errors import BrokerError, TopicError
from vigil.hub.admin import ensure_topics
from vigil.hub.client import (
    drop_frame_locals,
    kafka_error,
    make_admin,
    make_producer,
    read_committed,
)
from vigil.hub.raw import RawRecord
from vigil.hub.topics import RAW_RECORD_MAX_BYTES, TOPIC_NAME, TOPIC_NAME_MAX, TopicSpec

log = logging.getLogger(__name__)

#: Each source's cursors go to a compacted topic of its own, ``vigil.cursors.<source id>``:
#: Kafka ACLs cannot scope a write by key, so with one shared topic any connector's principal
#: could rewind or skip another's (and a source's open transaction held every other's start
#: back).  ``vigil.cursors`` is where they all went before: read only while a source's own topic
#: has never been written (see :meth:`KafkaRawSink.last_cursor`).
CURSOR_TOPIC_PREFIX = "vigil.cursors."
LEGACY_CURSOR_TOPIC = "vigil.cursors"

#: What Kafka takes in a topic name, and how long one may be.
_NOT_IN_TOPIC_NAME = re.compile(r"[^A-Za-z0-9._-]+")
#: Hex digits of the SHA-256 of a source id that is no topic name as it is (64 bits: two ids
#: would need to be chosen to collide).
_ID_HASH_CHARS = 16


def cursor_topic(source_id: str) -> str:
    """The compacted topic holding ``source_id``'s cursors.

    A source id is free text (a connector option) and Kafka takes only ``[A-Za-z0-9._-]`` in a
    topic name, at most 249 characters: an id that fits is kept as it is (the names topics made
    by earlier versions have), any other becomes a readable prefix (each run of other characters
    as ``_``) and a hash of the whole id, ``vigil.cursors.eth_node-1a2b3c4d5e6f7a8b`` for
    ``eth node``.  The prefix keeps the id's start, so the source's ACLs (``vigil.cursors.<name>``,
    prefixed) still cover it when the id starts with the source's name.

    Kafka refuses a topic whose name differs from an existing one only by ``.`` and ``_`` (they
    clash in its metric names): ids that fit and differ only so (``eth.a``, ``eth_a``) are not
    renamed (that would move existing topics), so the second to start is refused, naming the
    clash (:meth:`KafkaRawSink._ensure_cursor_topic`)."""
    if TOPIC_NAME.fullmatch(source_id) and len(CURSOR_TOPIC_PREFIX) + len(source_id) <= TOPIC_NAME_MAX:
        return CURSOR_TOPIC_PREFIX + source_id
    # surrogatepass: an id is any str (a lone surrogate from a decoded option included).
    digest = hashlib.sha256(source_id.encode("utf-8", "surrogatepass")).hexdigest()[:_ID_HASH_CHARS]
    room = TOPIC_NAME_MAX - len(CURSOR_TOPIC_PREFIX) - 1 - _ID_HASH_CHARS
    readable = _NOT_IN_TOPIC_NAME.sub("_", source_id)[:room]
    return f"{CURSOR_TOPIC_PREFIX}{readable}-{digest}"


def cursor_spec(source_id: str) -> TopicSpec:
    """The declaration of ``source_id``'s cursor topic (made by its sink: no registry lists the
    sources an operator runs)."""
    return TopicSpec(
        name=cursor_topic(source_id),
        key="source_id",
        value="cursor",
        partitions=1,
        description=f"Checkpoints of connector {source_id!r} (block height, cursor), with its records",
        retention=None,
        cleanup="compact",
        # A deletion is a reset, and the record that the shared topic of earlier versions was
        # read (see KafkaRawSink.last_cursor): kept for good, or compaction would drop it after a
        # day and the next start would take the pre-upgrade cursor again.
        delete_retention=CURSOR_DELETIONS_KEPT,
    )


#: "For good": a hundred years (Kafka takes any long; its own "never" is for retention.ms only).
CURSOR_DELETIONS_KEPT = timedelta(days=36_500)


#: The least a call to Kafka is given when a publish's deadline has passed: the abort that
#: follows a commit out of time is still asked for (librdkafka reads 0 as "do not wait").
_LEAST_STEP_S = 0.5

#: A source's transaction timeout (librdkafka's default, said here because readers of the
#: cursors wait out a dead source's open transaction: see last_cursor).
SOURCE_TXN_TIMEOUT_S = 60.0


def raw_topic(record: RawRecord) -> str:
    return f"raw.{record.source}"


#: Room kept under the raw topics' limit for the record batch's own framing (the limit is on
#: the batch, key, headers and framing included).
_BATCH_OVERHEAD = 16 << 10
#: The largest raw record (value, key and headers) the sink publishes.
RAW_PUBLISH_MAX_BYTES = RAW_RECORD_MAX_BYTES - _BATCH_OVERHEAD


class KafkaRawSink:
    """Transactional publisher of raw records and connector cursors."""

    def __init__(
        self,
        settings: Settings,
        *,
        source_id: str | None = None,
        topic_for: Callable[[RawRecord], str] = raw_topic,
        timeout_s: float = 30.0,
    ) -> None:
        self._settings = settings
        self._source_id = source_id
        self._topic_for = topic_for
        self._timeout = timeout_s
        self._lock = threading.Lock()
        self._producer: Any = None
        self._cursor_topics_ready: set[str] = set()

    def _ensure_producer(self, source_id: str, deadline: float | None = None) -> Any:
        if self._producer is None:
            self._source_id = self._source_id or source_id
            producer = make_producer(
                self._settings,
                **{
                    "transactional.id": f"vigil.source.{self._source_id}",
                    "linger.ms": 1,
                    # As large as a raw topic takes (each topic's own limit still applies).
                    "message.max.bytes": RAW_RECORD_MAX_BYTES + (64 << 10),
                    "transaction.timeout.ms": int(SOURCE_TXN_TIMEOUT_S * 1000),
                },
            )
            try:
                producer.init_transactions(_wait_s(self._timeout, deadline))
            except KafkaException as exc:
                msg = f"source {self._source_id!r}: cannot start a Kafka transaction: {exc.args[0]}"
                # Not kept by the error: its traceback holds this frame, and a caller that keeps
                # the error (a log handler, a retry loop's last failure) kept a client that went
                # on dialling a dead broker for the life of the process.
                producer = None
                raise BrokerError(msg) from None
            self._producer = producer
        return self._producer

    def _ensure_cursor_topic(self, source_id: str) -> str:
        topic = cursor_topic(source_id)
        if topic not in self._cursor_topics_ready:
            try:
                ensure_topics(self._settings, [cursor_spec(source_id)])
            except TopicError as exc:
                if "collides" not in str(exc):
                    raise
                msg = (
                    f"source {source_id!r}: its cursor topic {topic!r} cannot be made, as Kafka "
                    "takes '.' and '_' in topic names for the same character and a topic so named "
                    f"exists (the cursor topic of another source id): {exc}.  Give one of the two "
                    "sources an id that differs by more than '.' and '_'"
                )
                raise TopicError(msg) from None
            self._cursor_topics_ready.add(topic)
        return topic

    def prepare(self) -> bool:
        """Start the transactional producer now, not at the first publish: it fences an older
        instance of the source at once, and a receiver's first delivery does not wait for it (on
        a fresh broker, a start took longer than a webhook's ``publish_timeout_s``, and that
        delivery was answered 503).  Best effort: a broker that cannot start a transaction yet
        is said (a warning) and the first publish tries again, as before, so a connector still
        starts without Kafka (syslog buffers, a webhook answers 503 for a retry).  Whether the
        producer started."""
        try:
            with self._lock:
                self._ensure_producer(self._source_id or "")
        except BrokerError as exc:
            log.warning("%s; the first publish tries again", exc)
            return False
        return True

    def publish(
        self,
        records: Sequence[RawRecord],
        cursor: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """Durably publish ``records`` (and ``cursor``) or raise :class:`BrokerError`; within
        ``timeout`` seconds if given (each of the transaction's steps waits at most
        ``timeout_s`` otherwise: with the broker down, a start, three tries of the commit and an
        abort came to 150 s, and a syslog receiver told to drain for 20 s on its way out took
        that long)."""
        if not records and cursor is None:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        source_id = self._source_id or (records[0].source if records else "unknown")
        with self._lock:
            producer = self._ensure_producer(source_id, deadline)
            if cursor is not None:
                cursors = self._ensure_cursor_topic(self._source_id or source_id)
            try:
                producer.begin_transaction()
                for rec in records:
                    headers = rec.headers()
                    size = rec.size(headers)
                    if size > RAW_PUBLISH_MAX_BYTES:
                        # Named, not retried: the same record would fail again after a restart.
                        msg = (
                            f"record {rec.key!r} of {size:,} bytes (value, key and headers) is larger "
                            f"than a raw record may be ({RAW_PUBLISH_MAX_BYTES:,})"
                        )
                        raise KafkaException(msg)
                    _produce(
                        producer,
                        self._topic_for(rec),
                        deadline,
                        value=rec.value,
                        key=rec.key,
                        headers=headers,
                    )
                    producer.poll(0)
                if cursor is not None:
                    value = msgspec.json.encode(cursor)
                    _produce(producer, cursors, deadline, key=self._source_id, value=value)
                _commit_transaction(producer, self._timeout, deadline)
            except (KafkaException, BufferError) as exc:
                detail = exc.args[0] if exc.args else exc
                aborted = _abort(producer, _wait_s(self._timeout, deadline))
                # Dropped either way: the next publish re-initialises, and Kafka aborts whatever
                # was left open.  After a record the broker refused (too large for its topic) the
                # aborted producer's sequence numbers no longer lined up, and every later publish
                # failed with OUT_OF_ORDER_SEQUENCE_NUMBER.
                self._producer = None
                producer = None  # not kept by the error either (see _ensure_producer),
                drop_frame_locals(exc)  # nor by the frames of the helpers it went through
                # "Nothing committed" only when Kafka took the abort: after a commit that timed out
                # and an abort that failed too, the commit may still have gone through.
                outcome = (
                    "nothing was committed"
                    if aborted
                    else "whether it was committed is not known (Kafka finishes or aborts it when "
                    "this source's next producer starts)"
                )
                msg = (
                    f"source {self._source_id!r}: publishing {len(records)} record(s) "
                    f"to Kafka failed, {outcome}: {detail}"
                )
                raise BrokerError(msg) from None

    def last_cursor(self, source_id: str) -> dict[str, Any] | None:
        """The latest committed cursor of ``source_id`` (None on a first run or after a reset).

        For this sink's own source id the transactional producer is initialised first: that
        fences any older instance and makes Kafka finish (commit or abort) its last
        transaction, so the cursor read here is final rather than racing commit markers.

        The shared ``vigil.cursors`` of earlier versions is read only while the source's own
        topic has no committed record of the source at all, and what it held for the source (or
        a deletion, when nothing) is then written to the own topic at once: read on every start
        that found nothing of its own, a reset (a deletion, which the own topic keeps for good)
        resumed from the cursor of before the upgrade.  A transaction that aborted (or a process
        that died in one) leaves nothing committed, so the next start reads the shared topic
        again, as it should.  A topic deleted and made again has nothing: while ``vigil.cursors``
        still holds the source's cursor, that one is taken again (the README says how to reset
        instead).
        """
        topic = self._ensure_cursor_topic(source_id)
        own = self._source_id in (None, source_id)
        if own:
            with self._lock:
                self._ensure_producer(source_id)
        found, latest = self._read_cursor(topic, source_id)
        if found or not self._legacy_exists():
            return latest
        _, latest = self._read_cursor(LEGACY_CURSOR_TOPIC, source_id)
        if own:
            # Recorded before the connector runs: a connector stopped before its first publish
            # would otherwise find its own topic written by nothing, and take the legacy again
            # next time however old; and once written, it is never read again.
            self._write_cursor(topic, None if latest is None else msgspec.json.encode(latest))
        return latest

    def _write_cursor(self, topic: str, value: bytes | None) -> None:
        """``value`` (None: a deletion) as this source's cursor in ``topic``, in a transaction of
        its own."""
        with self._lock:
            producer = self._ensure_producer(self._source_id or "")
            try:
                producer.begin_transaction()
                _produce(producer, topic, None, key=self._source_id, value=value)
                _commit_transaction(producer, self._timeout)
            except (KafkaException, BufferError) as exc:
                detail = exc.args[0] if exc.args else exc
                aborted = _abort(producer, self._timeout)
                self._producer = None  # re-initialised by the next use (see publish)
                producer = None
                drop_frame_locals(exc)
                outcome = "nothing was written" if aborted else "whether it was written is not known"
                msg = (
                    f"source {self._source_id!r}: recording the cursor taken from {LEGACY_CURSOR_TOPIC!r} "
                    f"in {topic!r} failed, {outcome}: {detail}"
                )
                raise BrokerError(msg) from None

    def _read_cursor(self, topic: str, source_id: str) -> tuple[bool, dict[str, Any] | None]:
        """Whether ``topic`` has a record under ``source_id``, and the last one's cursor (None
        for a deletion).  Read to the end (read_committed, to the high watermark), as
        compaction will leave it; a transaction a dead instance left open holds the reader back
        until Kafka aborts it: waited for, past that transaction's timeout."""
        found, latest = False, None
        wait = max(self._timeout, SOURCE_TXN_TIMEOUT_S + 20.0)
        for msg in read_committed(self._settings, topic, wait):
            key = msg.key()
            if key is not None and key.decode() == source_id:
                value = msg.value()
                found, latest = True, None if value is None else msgspec.json.decode(value)
        return found, latest

    def _legacy_exists(self) -> bool:
        # All topics, not this one by name: a cluster that creates topics on first mention would
        # make it.
        found = make_admin(self._settings).list_topics(timeout=self._timeout).topics.get(LEGACY_CURSOR_TOPIC)
        return found is not None and found.error is None

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.flush(self._timeout)
                self._producer = None


def _produce(producer: Any, topic: str, deadline: float | None, **record: Any) -> None:
    """``producer.produce``, waiting while librdkafka's queue is full (a batch of chain blocks
    can fill it) instead of failing the whole transaction with BufferError; until ``deadline``
    (``time.monotonic``) if given, then the BufferError is raised."""
    while True:
        try:
            producer.produce(topic, **record)
            return
        except BufferError:
            if deadline is not None and time.monotonic() >= deadline:
                raise
            producer.poll(1)  # delivery reports free the queue


def _wait_s(timeout_s: float, deadline: float | None) -> float:
    """How long one call to Kafka may wait: ``timeout_s``, or less to keep ``deadline``
    (``time.monotonic``; a little at least, so that an abort is still asked for once the time is
    up)."""
    if deadline is None:
        return timeout_s
    return min(timeout_s, max(_LEAST_STEP_S, deadline - time.monotonic()))


def _commit_transaction(producer: Any, timeout_s: float, deadline: float | None = None) -> None:
    """Commit, asking again while the error is retriable: a commit that timed out is finished
    by calling commit again, and aborting it instead threw away a batch that may commit.  Each
    try waits at most ``timeout_s``, and none starts past ``deadline`` if given."""
    for attempt in range(3):
        try:
            producer.commit_transaction(_wait_s(timeout_s, deadline))
            return
        except KafkaException as exc:
            err = kafka_error(exc)
            out_of_time = deadline is not None and time.monotonic() >= deadline
            if err is None or not err.retriable() or attempt == 2 or out_of_time:
                raise


def _abort(producer: Any, timeout_s: float) -> bool:
    """Abort the open transaction; whether Kafka did (not after a fatal error, say fenced by a
    newer instance, nor while a commit it could not finish is still pending)."""
    try:
        producer.abort_transaction(timeout_s)
    except KafkaException:
        return False
    return True


class MemorySink:
    """The RawSink interface over lists (unit tests of parsing; no durability)."""

    def __init__(self) -> None:
        self.records: list[RawRecord] = []
        self.cursors: dict[str, dict[str, Any]] = {}
        self.source_id: str | None = None

    def publish(
        self,
        records: Sequence[RawRecord],
        cursor: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        self.records.extend(records)
        if cursor is not None:
            key = self.source_id or (records[0].source if records else "unknown")
            self.cursors[key] = dict(cursor)

    def last_cursor(self, source_id: str) -> dict[str, Any] | None:
        return self.cursors.get(source_id)

    def close(self) -> None:
        return None
