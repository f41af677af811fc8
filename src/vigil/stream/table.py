"""A global table: every partition of a compacted topic, in a local dict kept up to date.

For slowly changing lookup data every worker needs whole (threat indicators, customer
profiles): each process reads *all* partitions of the topic, from the beginning, in a
background thread, with ``read_committed``.  A record with no value (a tombstone)
deletes its key.  :meth:`GlobalTable.start` returns once the table has caught up with
the topic's end as it was at start, so a detector never runs against a half-loaded list.

Records that cannot be decoded are skipped, counted in ``errors`` and logged with their
topic/partition/offset (their producer, the intel normaliser, has already dead-lettered
what it could not parse; the table only reads).  Such a record's key has no value from then
on, as for a process that reads the topic once compaction has dropped the key's older
records: every process answers alike.

The topic's partitions are looked up again every ``metadata_every_s`` (10 s): partitions
added are read from their beginning (with a warning: a key's records written since may go to
another partition than its older ones, which compaction then never removes, so a process that
reads the topic afresh later, its partitions in no set order, may take a key's older value, or
a deleted key's, as its latest: found in review, a fresh start listed 98 of 200 withdrawn keys.
Recreate such a topic with its new partition count and publish it again; ``vigil topics apply``
does not grow a compacted topic), and a topic deleted stops the reader, so ``ready`` turns
false and ``check()`` raises: librdkafka tells a consumer that assigned its partitions itself
nothing when they disappear (it logs "partition count changed from 1 to 0" and goes on), and
the table would answer from a list nobody maintains any more.  A topic counts as deleted once
the broker has called it unknown for ``deleted_after_s`` (30 s, as librdkafka's own
``topic.metadata.propagation.max.ms``): brokers say so for a while of a topic that exists
(restarts, metadata not yet propagated).  Other errors (authorisation, no leader) are logged
and asked again.  A topic deleted and created again (its topic id changed: even between two
lookups, with as many partitions) stops the reader too: what was read of the old topic is
stale, and the positions reached in it mean nothing in the new one.

Record keys are read as UTF-8 text; bytes that are not UTF-8 are kept apart
(``surrogateescape``).  Replaced by U+FFFD, as they were, keys that differed only in such bytes
were one key, and a tombstone of one deleted the others' values (found in review).  Such a key
holds lone surrogates, which no UTF-8 encoder takes: ``key.encode("utf-8", "surrogateescape")``
gives its bytes back (a caller keeping keys in state or sending them on should check, as
Vigil's own codecs refuse them).

Data kept in a shape of its own (the intel index: by indicator value, across feeds) reads
its topic with the table's reader, :class:`TopicFollower`, and applies each record itself.

Operators read a table through :class:`LookupTable`, which :class:`GlobalTable` is, and so is
the harness's in-memory table (:class:`vigil.testing.MemoryTable`): the same operator runs on
Kafka and in a unit test with no broker, the records applied alike.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from vigil.config import Settings
from vigil.errors import PipelineError, TopicError, VigilError, message_of
from vigil.events.codec import decode_event
from vigil.hub.answers import wait_answered
from vigil.hub.client import BACKLOG_READER, kafka_error, make_admin, make_consumer, partition_offsets

log = logging.getLogger(__name__)

#: A table's values: covariant, so an operator taking a ``LookupTable[Event]`` takes a table of
#: indicators.
V = TypeVar("V", covariant=True)
T = TypeVar("T")

#: How often a follower looks its topic's partitions up again (see the module docstring).
METADATA_EVERY_S = 10.0
#: How long the broker must call a followed topic unknown before it counts as deleted.
DELETED_AFTER_S = 30.0

#: What a follower hands over per record: its key (``None``: a record without one), its value
#: (``None``: a tombstone) and where it was read (``topic[partition]@offset``, for messages).
Apply = Callable[[str | None, bytes | None, str], None]
#: The least a start gives its questions to the broker (the topic's metadata, its ends), whatever
#: its timeout: on a broker that answers they take milliseconds.
SETUP_AT_LEAST_S = 5.0
#: What :meth:`TopicFollower._metadata` returns when asked to stop.
_ABORTED = object()


def _left(deadline: float, cap: float) -> float:
    """Seconds to ``deadline`` (monotonic), at most ``cap``, at least 0."""
    return max(0.0, min(cap, deadline - time.monotonic()))


def decode_canonical(value: bytes) -> Any:
    """A canonical event: what a table's values are unless given a ``decode`` of its own."""
    return decode_event(value)


class TopicFollower:
    """Every partition of ``topic`` from the beginning, record by record to ``apply``, in a
    background thread that keeps following the topic until :meth:`stop`.

    :meth:`start` returns once every partition has been read to its end as it was at start.
    ``apply`` runs in the follower's thread; an exception from it (a bug: bad records are
    ``apply``'s to skip) or a fatal client error stops the follower, and :meth:`check` raises
    it.  ``name`` is what messages call it; ``group`` its consumer group id (it commits
    nothing).  ``missing_ok``: a topic that does not exist yet is an empty one, ready at once,
    and looked for every ``metadata_every_s``: read from its beginning once it is there (a
    broker that has not heard of a topic just created, or a list published later, used to
    leave the table empty until the next start).  An error that is neither "unknown topic" nor
    retriable (not authorised, say) is raised either way, naming it."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        apply: Apply,
        *,
        name: str,
        group: str | None = None,
        missing_ok: bool = False,
        metadata_every_s: float = METADATA_EVERY_S,
        deleted_after_s: float = DELETED_AFTER_S,
    ) -> None:
        self.settings = settings
        self.metadata_every_s = metadata_every_s
        self.deleted_after_s = deleted_after_s
        #: Since when the broker has called the topic unknown (None: it has not).
        self._unknown_since: float | None = None
        #: The followed topic's id when reading began (None: not known), to tell it recreated.
        self._topic_id: str | None = None
        #: missing_ok and the topic not found yet: its absence is not a deletion.
        self._waiting = False
        #: Each partition's end when reading began (what being caught up means).
        self._ends: dict[int, int] = {}
        self._admin: AdminClient | None = None
        self.topic = topic
        self.name = name
        self.group = group or name
        self._apply = apply
        self._missing_ok = missing_ok
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        #: Held while a reader is started and known, and while a stop is asked (see _started).
        self._lock = threading.Lock()
        self._failure: BaseException | None = None
        #: Whether the table had caught up when it failed (``check`` words the failure by it: a
        #: stop clears ``_ready``, and a failure after loading was told as one while loading).
        self._failed_loaded = False
        #: The failure a stop that timed out left (cleared by a later stop that finds the reader
        #: gone); None: none.
        self._stop_failure: PipelineError | None = None

    def start(self, timeout_s: float = 60.0, abort: Callable[[], bool] | None = None) -> None:
        """Start the background reader; return once caught up (raises if not within ``timeout_s``;
        calling again waits again for the same reader), or as soon as ``abort()`` is true (the
        process asked to stop while loading: it should not wait a minute for a list it will not
        use, or a supervisor's grace period runs out and it is killed mid-way)."""
        deadline = time.monotonic() + timeout_s
        thread = self._thread
        if thread is not None and self._stop.is_set() and not thread.is_alive():
            # (Its reader started as a stop came, from another thread, and ended at once.)
            thread = self._thread = None
            self._ready.clear()
        if thread is None and not self._ready.is_set():
            # Started again after a stop: from the beginning of the topic as it is now (it may
            # have been created again meanwhile), the last run's failure gone with it.
            self._stop.clear()
            self._failure = self._stop_failure = None
            self._unknown_since = None
            self._topic_id = None
            self._waiting = False
            # (At least a few seconds for its questions: a start that waits for nothing,
            # timeout 0, still starts its reader.)
            if not self._begin(max(deadline, time.monotonic() + SETUP_AT_LEAST_S), abort):
                if self._stop.is_set() and not (abort is not None and abort()):
                    raise self._stopped()
                return  # asked to stop before the reader started
        while not self._ready.is_set():
            self.check()
            if abort is not None and abort():
                return
            if self._stop.is_set():
                # Stopped from another thread: waiting on, the start took its whole timeout and
                # then blamed the topic (found in review).
                raise self._stopped()
            if time.monotonic() >= deadline:
                msg = f"{self.name} did not catch up with {self.topic!r} in {timeout_s:g}s{self._held_back()}"
                raise PipelineError(msg)
            self._ready.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        self.check()
        if self._stop.is_set():
            raise self._stopped()  # (caught up as it was stopped: it no longer follows the topic)

    def _stopped(self) -> PipelineError:
        return PipelineError(f"{self.name} was stopped before it caught up with {self.topic!r}")

    def _held_back(self) -> str:
        """Why a start timed out, when it can tell: the partitions whose end a transaction left
        open holds back (its producer gone; Kafka aborts it after its transaction timeout).  The
        timeout's message said nothing of it, and every start failed the same way meanwhile."""
        parts = sorted(self._ends)
        if not parts:
            return ""
        try:
            stable = partition_offsets(
                self.settings, [(self.topic, p) for p in parts], time.monotonic() + 5, committed=True
            )
        except VigilError as exc:
            log.debug("%s: last stable offsets of %r: %s", self.name, self.topic, exc)
            return ""
        held = [
            f"{self.topic}[{p}] (end {self._ends[p]}, stable to {stable[self.topic, p][1]})"
            for p in parts
            if stable[self.topic, p][1] < self._ends[p]
        ]
        if not held:
            return ""
        return (
            f": a transaction left open holds back {', '.join(held)}; Kafka aborts it after its "
            "transaction timeout"
        )

    def check(self) -> None:
        """Raise if the background reader has stopped on an error: what it feeds would go stale
        silently otherwise (call it where the application checks its other parts)."""
        if self._failure is not None:
            state = "after loading; the table is stale" if self._failed_loaded else "while loading"
            msg = f"{self.name} failed {state}: {message_of(self._failure)}"
            raise PipelineError(msg) from self._failure

    @property
    def ready(self) -> bool:
        """Caught up, and still reading (False once the reader has failed, see :meth:`check`, or
        once asked to stop: a stop from another thread as the start set "caught up" left it said
        ready with no reader, found in review)."""
        return self._ready.is_set() and self._failure is None and not self._stop.is_set()

    @property
    def running(self) -> bool:
        """Started and not stopped since (the reader may have failed: see :meth:`check`)."""
        thread = self._thread
        # (A reader that ended once asked to stop, after a stop that timed out or one that came
        # as it started, has stopped: said running, a table started again kept what it had read,
        # found in review.)
        return thread is not None and (thread.is_alive() or not self._stop.is_set())

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop reading: no longer ready (what was read stays readable); ``start`` reads the
        topic again from its beginning.  Raises if the reader does not stop within
        ``timeout_s``; the follower is failed then (see :meth:`check`) until a later ``stop``
        finds the reader gone."""
        with self._lock:  # (see _started)
            self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                # Forgotten, it would go on applying records beside the next start's reader.  Not
                # ready, and failed: what it feeds is no longer followed (it said ready, and a
                # start after waited for a reader on its way out, and said ready again).
                msg = f"{self.name}: its reader did not stop within {timeout_s:g} s"
                if self._failure is None:
                    self._failed_loaded = self._ready.is_set()
                    self._failure = self._stop_failure = PipelineError(msg)
                self._ready.clear()
                raise PipelineError(msg)
            self._thread = None
            if self._failure is not None and self._failure is self._stop_failure:
                self._failure = self._stop_failure = None  # (the reader is gone now)
        self._ready.clear()

    def _begin(self, deadline: float, abort: Callable[[], bool] | None) -> bool:
        """Look the topic up and start the reader; False if ``abort()`` said to stop first, or
        :meth:`stop` was called meanwhile (from another thread).
        Within ``deadline`` (``start``'s, or :data:`SETUP_AT_LEAST_S` from now): its questions to
        the broker were 30 s each, so a start with the broker out of reach took 30 s whatever
        its timeout, never asked ``abort``, and raised the client's error naming no topic."""
        # Partitions are assigned, never committed: every process reads the whole topic.
        consumer = make_consumer(
            self.settings, self.group, **BACKLOG_READER, **{"enable.partition.eof": True}
        )
        try:
            meta = self._metadata(consumer, deadline, abort)
            if meta is _ABORTED:
                consumer.close()
                return False
            error = None if meta is None else meta.error
            # (A topic just created may have no leader yet: retriable, so taken as not there yet.)
            if (
                error is not None
                and error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART
                and not error.retriable()
            ):
                msg = f"{self.name}: cannot read topic {self.topic!r}: {error.str()}"
                raise TopicError(msg)
            if meta is None or error is not None or not meta.partitions:
                if not self._missing_ok:
                    msg = f"{self.name}: topic {self.topic!r} does not exist"
                    raise TopicError(msg)
                # Empty, and ready; the reader looks for the topic (_follow_partitions).
                self._waiting = True
                return self._started(
                    threading.Thread(
                        target=self._run, args=(consumer, set(), {}), name=self.name, daemon=True
                    ),
                    consumer,
                    ready=True,
                )
            self._admin = make_admin(self.settings)
            try:
                self._topic_id = self._describe(max(1.0, _left(deadline, 10.0)))[0]
            except KafkaException as exc:  # a broker too old to give topic ids: recreation goes unseen
                log.warning("%s: could not read the topic id of %r: %s", self.name, self.topic, exc)
            # Caught up means: past the high watermark each partition has now (not the last
            # stable offset, which for a moment after a commit leaves that transaction's records
            # out: see partition_offsets).  The end-of-partition event alone never came for a
            # partition written more often than a fetch waits (500 ms): every fetch brought
            # records, none came back empty; a record past the end tells it there (see _run).
            marks = partition_offsets(
                self.settings,
                [(self.topic, p) for p in meta.partitions],
                min(deadline, time.monotonic() + 30),
            )
            ends = {p: marks[self.topic, p][1] for p in meta.partitions}
            self._ends = dict(ends)
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        except BaseException:
            consumer.close()
            raise
        return self._started(
            threading.Thread(
                target=self._run, args=(consumer, set(meta.partitions), ends), name=self.name, daemon=True
            ),
            consumer,
        )

    def _started(self, thread: threading.Thread, consumer: Consumer, ready: bool = False) -> bool:
        """``thread`` started as the reader (``ready``: said caught up first), unless a stop came
        from another thread meanwhile (False, ``consumer`` closed).  Under the lock a stop takes:
        a stop between starting a reader and knowing it missed it, and one before it was started
        joined a thread not started and raised (found in review)."""
        with self._lock:
            if self._stop.is_set():
                consumer.close()
                return False
            try:
                thread.start()
            except BaseException:
                consumer.close()  # (no thread to be had: neither ready nor its consumer left open)
                raise
            if ready:
                self._ready.set()
            self._thread = thread
            return True

    def _metadata(self, consumer: Consumer, deadline: float, abort: Callable[[], bool] | None) -> Any:
        """The topic's metadata (None: the broker does not list it), asked a second at a time
        until ``deadline``, ``abort()`` asked between (``_ABORTED`` when it says stop, or
        :meth:`stop` was called).  A broker that cannot be reached is a :class:`TopicError`
        naming the topic."""
        while True:
            try:
                return consumer.list_topics(self.topic, timeout=_left(deadline, 1.0)).topics.get(self.topic)
            except KafkaException as exc:
                if (abort is not None and abort()) or self._stop.is_set():
                    return _ABORTED
                if time.monotonic() >= deadline:
                    msg = f"{self.name}: cannot read the metadata of topic {self.topic!r}: {message_of(exc)}"
                    raise TopicError(msg) from exc

    def _run(self, consumer: Consumer, partitions: set[int], ends: dict[int, int]) -> None:
        behind = {p for p in partitions if ends.get(p, 1) > 0}
        if not behind and not self._stop.is_set():
            self._ready.set()
        apply, topic = self._apply, self.topic
        looked_up = time.monotonic()
        try:
            while not self._stop.is_set():
                if time.monotonic() - looked_up >= self.metadata_every_s:
                    behind |= self._follow_partitions(consumer, partitions)
                    looked_up = time.monotonic()
                msgs = consumer.consume(1000, 0.2)
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            # (At the last stable offset: short of a known end, a commit's
                            # markers are still on their way.)
                            if msg.offset() >= ends.get(msg.partition(), 0):
                                behind.discard(msg.partition())
                            if not behind:
                                self._ready.set()
                            continue
                        if err.fatal():
                            raise PipelineError(f"{self.name}: {err.str()}")  # noqa: EM102
                        log.warning("%s: %s", self.name, err.str())
                        continue
                    key = msg.key()
                    where = f"{topic}[{msg.partition()}]@{msg.offset()}"
                    try:
                        apply(
                            None if key is None else key.decode("utf-8", "surrogateescape"),
                            msg.value(),
                            where,
                        )
                    except Exception as exc:
                        # Named by where it is: the topic keeps the record, and every start
                        # fails on it again (the message named the table alone).
                        why = f"the record at {where}: {message_of(exc)}"
                        raise PipelineError(why) from exc
                    if behind and msg.offset() >= ends.get(msg.partition(), 0):
                        # A record past the end as it was: read_committed, everything committed
                        # before it came first, so the partition is caught up.  (Not the
                        # consumer's position: it stands at the high watermark as soon as a fetch
                        # stops at an open transaction, before that transaction's records come.)
                        behind.discard(msg.partition())
                        if not behind:
                            self._ready.set()
        except BaseException as exc:
            self._failed_loaded = self._ready.is_set()
            self._failure = exc
            if isinstance(exc, VigilError):
                # Expected (its topic deleted, the broker out of reach): one line, as the command
                # says it again; the traceback at DEBUG (it came whole before the command's line).
                log.error("%s stopped: %s", self.name, exc)
                log.debug("%s stopped", self.name, exc_info=True)
            else:
                log.exception("%s stopped", self.name)
        finally:
            consumer.close()

    def _describe(self, timeout_s: float = 10.0) -> tuple[str, set[int]]:
        """The followed topic's id and partitions, as the broker has them now."""
        if self._admin is None:
            self._admin = make_admin(self.settings)
        futures = self._admin.describe_topics(TopicCollection([self.topic]), request_timeout=timeout_s)
        wait_answered(self._admin, futures.values(), timeout_s)
        found = futures[self.topic].result()  # (answered, or failed at the request's timeout)
        return str(found.topic_id), {part.id for part in found.partitions}

    def _follow_partitions(self, consumer: Consumer, partitions: set[int]) -> set[int]:
        """Look the topic up again: read its added partitions (returned, and added to
        ``partitions``) from their beginning; raise if the topic is gone or was recreated."""
        try:
            topic_id, now_partitions = self._describe()
        except KafkaException as exc:
            err = kafka_error(exc)
            if err is None or err.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                # The broker out of reach for a while, no leader, not authorised: reading waits for
                # it anyway; ask again later.
                log.warning("%s: looking up the partitions of %r: %s", self.name, self.topic, exc)
                return set()
            now = time.monotonic()
            if self._waiting:
                return set()
            if self._unknown_since is None:
                self._unknown_since = now
            if now - self._unknown_since >= self.deleted_after_s:
                msg = (
                    f"topic {self.topic!r} was deleted while followed (unknown to the broker for "
                    f"{now - self._unknown_since:.0f}s): what was read of it is stale"
                )
                raise TopicError(msg) from None
            return set()
        self._unknown_since = None
        self._waiting = False
        if self._topic_id is None:
            self._topic_id = topic_id
        elif topic_id != self._topic_id:
            msg = (
                f"topic {self.topic!r} was deleted and created again while followed (topic id "
                f"{self._topic_id}, now {topic_id}): what was read of it is stale"
            )
            raise TopicError(msg)
        added = now_partitions - partitions
        if added and partitions:
            log.warning(
                "%s: %r was given %d more partitions; reading them.  A key's records written since "
                "may go to another partition than its older ones, and a process reading the topic "
                "afresh may take an older value (or a deleted key's) as the latest: recreate the topic "
                "with %d partitions and publish it again",
                self.name,
                self.topic,
                len(added),
                len(now_partitions),
            )
        elif added:
            log.info("%s: %r has %d partitions; reading them", self.name, self.topic, len(added))
        if added:
            consumer.incremental_assign(
                [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in sorted(added)]
            )
            partitions |= added
        return added


#: What a decode raises on a record it cannot read (skipped, counted, logged): the codec's
#: errors, and the lookup, type and arithmetic errors a caller's decode meets in malformed
#: input (a missing field: before, such a KeyError stopped the reader and every later update
#: was lost; an AttributeError, a null where a caller's decode reads a string; a
#: RecursionError, JSON nested 100,000 deep, which stopped it at every restart too while the
#: topic kept the record; an OverflowError, ``int()`` of JSON's ``1e999``; a ``struct.error``,
#: a value too short to unpack).  Anything else is taken for a bug in the decode, and fails
#: the table loudly.
_BAD_RECORD = (
    VigilError,
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
    ArithmeticError,
    RecursionError,
    struct.error,
)
_ABSENT = object()


class LookupTable(ABC, Generic[V]):
    """What an operator reads a lookup table through: a compacted topic's latest value per key.

    :class:`GlobalTable` follows the topic on Kafka; :class:`vigil.testing.MemoryTable` holds
    records given in memory, for operators under :func:`vigil.testing.run_operators`.  Both apply
    a record alike: a tombstone deletes its key; a value ``decode`` cannot read is skipped,
    counted in ``errors``, and its key has no value from then on."""

    def __init__(self, name: str, decode: Callable[[bytes], V]) -> None:
        self.name = name
        self._decode = decode
        self._data: dict[str, V] = {}
        #: Updates applied (records and tombstones); a cheap "version" to report with a match.
        self.version = 0
        self.errors = 0

    # ------------------------------------------------------------------ reading

    @overload
    def get(self, key: str) -> V | None: ...
    @overload
    def get(self, key: str, default: T) -> V | T: ...
    def get(self, key: str, default: object = None) -> object:
        return self._data.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def items(self) -> Iterator[tuple[str, V]]:
        return iter(list(self._data.items()))

    @property
    @abstractmethod
    def ready(self) -> bool:
        """Caught up with the topic, and still following it."""

    @abstractmethod
    def check(self) -> None:
        """Raise if the table has stopped following its topic (it would go stale silently)."""

    # ------------------------------------------------------------------ writing

    def _apply(self, key: str | None, value: bytes | None, where: str) -> None:
        """One record of the topic, read at ``where`` (for messages): ``value`` ``None`` is a
        tombstone.  A record without a key, or whose value ``decode`` cannot read, is skipped,
        counted in ``errors`` and logged; anything else ``decode`` raises is raised (a bug in
        it).  The table's own to call (its reader's, the harness's): operators only read."""
        if key is None:
            self.errors += 1
            log.warning("global table %s: record without key at %s", self.name, where)
            return
        if value is None:
            self._data.pop(key, None)
        else:
            try:
                self._data[key] = self._decode(value)
            except _BAD_RECORD as exc:
                self.errors += 1
                log.warning(
                    "global table %s: skipped %s (its key now has no value): %s", self.name, where, exc
                )
                # The key's value goes: the topic's latest record for it is this one, and a process
                # reading the topic afresh (once compaction dropped the older record) has none, so
                # every process answers alike.
                if self._data.pop(key, _ABSENT) is _ABSENT:
                    return
        self.version += 1


class GlobalTable(LookupTable[V]):
    """Read-only view of a compacted topic; ``get`` is a dict lookup (thread-safe under the GIL)."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        decode: Callable[[bytes], V] = decode_canonical,
        *,
        name: str | None = None,
        metadata_every_s: float = METADATA_EVERY_S,
        deleted_after_s: float = DELETED_AFTER_S,
    ) -> None:
        super().__init__(name or f"table.{topic}", decode)
        self.settings = settings
        self.topic = topic
        self._reader = TopicFollower(
            settings,
            topic,
            self._apply,
            name=f"global table {self.name!r}",
            group=self.name,
            metadata_every_s=metadata_every_s,
            deleted_after_s=deleted_after_s,
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout_s: float = 60.0, abort: Callable[[], bool] | None = None) -> GlobalTable[V]:
        """Start the background reader; return once caught up (raises if not within ``timeout_s``;
        calling again waits again for the same reader; ``abort``: as the reader's).  Started
        again after :meth:`stop`, the table is read afresh: a key deleted meanwhile is gone even
        if compaction has removed its tombstone since."""
        if not self._reader.running:
            self._data = {}
        self._reader.start(timeout_s, abort)
        return self

    def check(self) -> None:
        """Raise if the background reader has stopped on an error: the table would go stale
        silently otherwise (call it where the application checks its other parts)."""
        self._reader.check()

    def stop(self) -> None:
        """Stop reading (what was read stays readable until the next :meth:`start`)."""
        self._reader.stop()

    @property
    def ready(self) -> bool:
        """Caught up, and still reading (False once the reader has failed: see :meth:`check`)."""
        return self._reader.ready
