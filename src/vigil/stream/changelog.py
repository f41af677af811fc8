"""Changelog topics: naming, declaration and restore.

Every store of an application has one compacted topic ``<app>.changelog.<store id>``
with as many partitions as the inputs; partition ``p`` of the changelog holds the state
of input partition ``p``.  Restore starts from the changelog offset RocksDB recorded
with its last write (not from zero) and reads committed records only, up to the high
watermark the partition had when the restore began (so a checkpoint committed a moment before
is in, and a transaction a dead process left open is waited out until Kafka aborts it); a
store whose offset the changelog does not have, or that was last current longer ago than the
changelog keeps its deletions (``delete.retention.ms``), is wiped and restored from the start.
:class:`Restorer` does it a step at a time (the stream runtime restores between batches);
:func:`restore` runs it to the end at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass
from functools import partial

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from vigil.config import Settings
from vigil.errors import BrokerError, BrokerUnanswered, PipelineError
from vigil.events.codec import inert
from vigil.hub.answers import wait_answered
from vigil.hub.aside import call_aside
from vigil.hub.client import (
    BACKLOG_READER,
    make_admin,
    make_consumer,
    offsets_consumer,
    partition_offsets,
    watermarks,
)
from vigil.hub.topics import TopicSpec
from vigil.stream.collector import collecting_young
from vigil.stream.state import RocksState


class StateProducerFailed(KafkaException):  # type: ignore[misc]
    """A call of the at-least-once state producer (changelog records, its transaction) raised.
    Told apart from the producer of outputs' errors, which are not the state transaction's: a
    fatal error of the (idempotent) output producer must not renew the state producer.  (Defined
    here, in a module mypyc does not compile, as a plain subclass of the client's exception.)"""


log = logging.getLogger(__name__)

#: Writes applied to RocksDB in one batch during restore: this many, or this many bytes of keys
#: and values (a vectorised window's chunks are up to 512 KB each), whichever comes first.
_RESTORE_CHUNK = 50_000
_RESTORE_CHUNK_BYTES = 4 << 20


#: The largest changelog record (one key's state): a key's state is bounded by its operator, but
#: a store of many attacker-chosen strings (a window of failed logins) can pass the broker's 1 MB
#: default, and a record the topic refuses fails every checkpoint, and the restarted process the
#: same way on the same input.  The application's producers take records this large too.
CHANGELOG_MAX_BYTES = 16 << 20
#: A key and its encoded state, at most, in one changelog record: the topic's limit less what
#: the broker counts beyond them (the record batch's header, the record's own fields), generously.
#: (The broker measures the batch as sent, compressed: measured before compression, state that
#: compresses well is refused up to about 64 KB short of what librdkafka would have sent.)
STATE_RECORD_MAX_BYTES = CHANGELOG_MAX_BYTES - 1024
#: Kafka's default ``delete.retention.ms`` (a day), in seconds.
DEFAULT_DELETE_RETENTION_S = 86_400.0
#: A store may be away its changelog's ``delete.retention.ms`` less this margin (an hour, or a
#: quarter of the retention if that is shorter) and still catch up (see _horizons).
_HORIZON_MARGIN_S = 3600.0
#: A store last current longer ago than this has its changelog's retention asked (one request):
#: the runtime touches a store it owns every minute (vigil.stream.app._TOUCH_EVERY_S), so a store
#: back from a restart is up to that old.  (An hour before: a store away for less was never
#: checked, and on a changelog keeping deletions ten minutes kept keys deleted meanwhile.)
_ASK_RETENTION_AWAY_S = 60.0
#: How long a restore's start asks for its changelogs' leaders, all together (see
#: Restorer._know_leaders: only a saving; a local broker answers in milliseconds).  No longer
#: than the saving (librdkafka asks where a partition read from its beginning starts again
#: 500 ms after it found no leader): asked on the loop's thread, a broker frozen just then held
#: the loop 2 s for it.
_LEADERS_ASK_S = 0.5
#: How long a restore's start waits for each changelog partition's end offsets, and how long
#: after a round with no answer the next is made (see Restorer._begin: asked on a thread of
#: their own, the runtime's loop going on meanwhile).
_OFFSETS_ASK_S = 5.0
_OFFSETS_RETRY_S = 1.0
#: How many partitions' end offsets a round asks at once (see _ask).
_OFFSETS_ASKED_AT_ONCE = 16
#: How long a restore's start asks for what it can do without (the changelogs' ids, their
#: retention), both questions together: see _ask.
_DESCRIBE_ASK_S = 10.0
_LEAST_ASK_S = 0.1
#: The longest a transaction can stay open (Kafka's transaction.max.timeout.ms default, 15 min,
#: and a minute for the coordinator to abort it): a restore waits that long for one to end.
MAX_OPEN_TXN_S = 960.0


def state_too_large(key: bytes, value: bytes | None) -> str | None:
    """Why a key's encoded state cannot go to the changelog as one record (None: it can).

    Checked before it is sent, so the error names the key: from librdkafka or the broker it
    said only "message size too large", and it failed the checkpoint, then the restart's on the
    same input (the stream testing harness checks its checkpoints the same way)."""
    size = len(key) + (len(value) if value is not None else 0)
    if size <= STATE_RECORD_MAX_BYTES:
        return None
    shown = inert(key[:80].decode("utf-8", "replace")) + ("..." if len(key) > 80 else "")
    return (
        f"the state of key '{shown}' is {size:,} bytes encoded, over the "
        f"{STATE_RECORD_MAX_BYTES:,} a changelog record holds: bound what the "
        "operator keeps per key (windows: max_events; joins: max_waiting_bytes)"
    )


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
        max_message_bytes=CHANGELOG_MAX_BYTES,
        grow_compacted=True,
    )


@dataclass
class RestoreTask:
    state: RocksState
    topic: str
    partition: int


class Restorer:
    """Brings stores up to the end of their changelog partitions, a step at a time.

    The stream runtime restores newly assigned partitions between batches of the partitions it
    already processes (Kafka Streams does the same), not inside the rebalance callback: a large
    store then neither stops the member's other partitions nor has to finish within
    ``max.poll.interval.ms``.  :meth:`add` takes stores to restore, asking the broker nothing
    (it is called inside the callback); :meth:`step` starts them off once their changelogs' end
    offsets are answered (asked again while they are not), reads what has arrived, and returns
    the stores that reached the end (those with nothing to read at once);
    :meth:`remove` gives up on stores (a partition revoked mid-restore keeps what it has
    applied so far, with the changelog offset it reaches).  One consumer, outside any group,
    reads the changelog partitions of every store being restored, committed records only."""

    def __init__(self, settings: Settings, app: str, stall_s: float = 120.0) -> None:
        self.settings = settings
        self.app = app
        #: A restore that reads nothing (no record, no end) for this long fails: the broker is
        #: gone or the changelog cannot be read, and waiting on would hide it.
        self.stall_s = stall_s
        self.applied = 0
        self._consumer: Consumer | None = None
        self._tasks: dict[tuple[str, int], RestoreTask] = {}
        self._pending: dict[tuple[str, int], list[tuple[bytes, bytes | None]]] = {}
        self._pending_bytes: dict[tuple[str, int], int] = {}
        self._last: dict[tuple[str, int], int] = {}
        #: Where each changelog partition being read ends: its high watermark when its store was
        #: started off (_begin).
        self._ends: dict[tuple[str, int], int] = {}
        #: The time recorded with each store's restored writes (see _apply).
        self._as_of: dict[tuple[str, int], float] = {}
        #: When the restore last found itself waiting on a transaction left open (monotonic).
        self._waiting_since: float | None = None
        #: Records read and not handled yet: a step out of time leaves them to the next one.
        self._carried: list[Message] = []
        #: Wall clock (epoch seconds), compared with when a store was last written.
        self.clock: Callable[[], float] = time.time
        self._progress_at = time.monotonic()
        #: Stores added and not started yet (their changelogs' end offsets not answered), the
        #: round of questions under way (see _begin), when to ask again, and since when no
        #: round has had an answer.
        self._unbegun: list[RestoreTask] = []
        self._asking: Future[_Asked] | None = None
        #: The stores the round under way is for (held: their ids are compared).
        self._asked: list[RestoreTask] = []
        self._next_begin = 0.0
        self._unanswered_since: float | None = None
        #: Since when each partition still waiting has gone without an answer: its own stall
        #: (see _unanswered; ``_unanswered_since`` says when the first was said).
        self._unanswered_from: dict[tuple[str, int], float] = {}

    @property
    def busy(self) -> bool:
        """Whether any store is still being restored."""
        return bool(self._tasks or self._unbegun)

    def restoring(self) -> list[RestoreTask]:
        return [*self._tasks.values(), *self._unbegun]

    def add(self, tasks: Sequence[RestoreTask]) -> list[RestoreTask]:
        """Take ``tasks`` to restore; returns them, every one to be returned by a :meth:`step` once
        restored.  Asks the broker nothing: called inside the assignment callback, the end
        offsets' question held `consume` 30 s with the broker frozen, past the session's
        timeout (the partitions lost), then failed the stage; the steps ask, and ask again."""
        self._unbegun.extend(tasks)
        return list(tasks)

    def _begin(self) -> list[RestoreTask]:
        """Start off the stores added whose changelogs' end offsets have been answered; returns
        those with nothing to read (restored already).

        The offsets are asked in rounds, on a thread of their own (:func:`_ask`), each
        partition waited for up to ``_OFFSETS_ASK_S``: asked on the loop's thread, one partition
        whose leader was away held the loop, and the partitions the member has, 2 s a try
        (found in review).  A round that has an answer is followed by the next at once, for the
        partitions left; a round with none by the next ``_OFFSETS_RETRY_S`` later, the first
        such round said, and none answered for ``stall_s`` fails the restore, as a restore that
        reads nothing does."""
        now = time.monotonic()
        asking = self._asking
        if asking is None:
            if now >= self._next_begin:
                self._asked = asked = list(self._unbegun)
                tps = list(dict.fromkeys((t.topic, t.partition) for t in asked))
                # Stores back after a long time away (see _too_old): their topics' retention is
                # asked only then (one request), not on every restart.
                away = sorted({t.topic for t in asked if _away(t, self.clock())})
                self._asking = call_aside(
                    lambda: _ask(self.settings, tps, away), f"{self.app}-restore-offsets"
                )
            return []
        if not asking.done():
            return []
        self._asking = None
        try:
            answered, unanswered, ids, horizons = asking.result()
        except BrokerError as exc:
            msg = f"restoring changelogs: could not read their end offsets: {exc}"
            raise PipelineError(msg) from exc
        if answered:
            self._unanswered_since = None
            for tp in answered:  # (those still unanswered keep their own stall)
                self._unanswered_from.pop(tp, None)
            self._next_begin = 0.0
        else:
            # (Of the stores still waiting: one revoked while the round was on its way is not.)
            waiting = {(t.topic, t.partition) for t in self._unbegun}
            left = sorted(tp for tp in unanswered if tp in waiting)
            if left:
                self._unanswered(now, left, unanswered[left[0]])
        # Only the stores the round was for: one revoked and assigned again meanwhile was
        # another owner's for a while, and its changelog may have grown since it was asked.
        for_them = {id(t) for t in self._asked}
        self._asked = []
        ready = [t for t in self._unbegun if id(t) in for_them and (t.topic, t.partition) in answered]
        if not ready:
            return []
        offsets = {(t.topic, t.partition): answered[t.topic, t.partition] for t in ready}
        reading = {id(t) for t in self._start(ready, offsets, ids, horizons)}
        # Out of the line once started (a failure in _start leaves them in it).
        started = {id(t) for t in ready}
        self._unbegun = [t for t in self._unbegun if id(t) not in started]
        return [t for t in ready if id(t) not in reading]

    def _unanswered(self, now: float, asked: list[tuple[str, int]], exc: BrokerUnanswered) -> None:
        """A round of the end offsets' questions with no answer (``asked`` unanswered): said
        once, asked again, failed once one has gone without an answer past ``stall_s`` (each
        partition timed from its own first round without one: a store assigned during a stall,
        or left after the others were revoked, has its own ``stall_s``)."""
        for tp in asked:
            self._unanswered_from.setdefault(tp, now)
        longest = [tp for tp in asked if now - self._unanswered_from[tp] > self.stall_s]
        if longest:
            since = f" (and {len(asked) - len(longest)} asked since)" if len(longest) < len(asked) else ""
            msg = (
                f"restoring {longest}{since}: no answer for their changelogs' end offsets for "
                f"{self.stall_s:g}s ({exc}; is the broker reachable?)"
            )
            raise PipelineError(msg) from exc
        if self._unanswered_since is None:
            self._unanswered_since = now
            log.warning(
                "restoring %s: no answer yet for the end offsets of %s (%s); asking again every "
                "%gs, for up to %gs",
                self.app,
                asked,
                exc,
                _OFFSETS_RETRY_S,
                self.stall_s,
            )
        self._next_begin = time.monotonic() + _OFFSETS_RETRY_S

    def _start(
        self,
        tasks: Sequence[RestoreTask],
        offsets: dict[tuple[str, int], tuple[int, int]],
        ids: dict[str, str],
        horizons: dict[str, float],
    ) -> list[RestoreTask]:
        """Start reading the changelogs of ``tasks``, whose (low, high) offsets are ``offsets``,
        their topics' ids ``ids`` and how long a store may be away from them ``horizons`` (those
        answered: see _ask); returns those with records to read."""
        reading: list[RestoreTask] = []
        assign: list[TopicPartition] = []
        now = self.clock()
        # What each store recorded (two RocksDB reads a store, once).
        recorded = [
            (task, task.state.changelog_offset(), task.state.changelog_written_at()) for task in tasks
        ]
        for task, start, written in recorded:
            low, high = offsets[task.topic, task.partition]
            if start is None and task.state.holds_data():
                # Writes with no offset: a checkpoint's first chunks, applied before its last
                # (RocksState.write_committed, final=False), then the store closed or the process
                # gone.  Its restore is from the start, and onto them it kept keys the changelog
                # no longer has (deleted by another owner, or the topic made again): in review.
                log.warning(
                    "state %s: holds writes but no changelog offset (a checkpoint cut short); "
                    "restoring it from %s[%d]'s start",
                    task.state.path,
                    task.topic,
                    task.partition,
                )
                task.state.wipe()
            topic_id = ids.get(task.topic)
            had = task.state.changelog_topic_id() if topic_id is not None else None
            if start is not None and had is not None and had != topic_id:
                # The changelog was deleted and made again (internal topics deleted to reset
                # state, a cluster rebuilt) and has grown past the store's offset: the offsets
                # say nothing, and catching up would keep the old topic's keys and skip the
                # new one's first records.
                log.warning(
                    "state %s: %s is another topic than the one it was restored from (id %s, now "
                    "%s); restoring it from the start",
                    task.state.path,
                    task.topic,
                    had,
                    topic_id,
                )
                task.state.wipe()
                start = written = None
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
            tp = (task.topic, task.partition)
            if start is not None and task.topic in horizons and now - (written or 0.0) > horizons[task.topic]:
                self._too_old(task, None if written is None else now - written, horizons[task.topic])
                start = written = None
            if topic_id is not None and (had != topic_id or start is None):
                task.state.record_topic_id(topic_id)  # (a wipe took the one recorded)
            begin = start if start is not None else low
            task.state.changelog_next = high
            task.state.changelog_at_marker = False
            if begin >= high:
                continue
            # Restored writes keep the time the store's contents are as of: a store caught up only
            # part of the way is no fresher than before (a crash mid-restore must not make an old
            # store look recent); one restored from the start is as of now.
            self._as_of[tp] = now if start is None else (written or 0.0)
            reading.append(task)
            self._tasks[tp] = task
            self._pending[tp] = []
            self._pending_bytes[tp] = 0
            self._ends[tp] = high
            assign.append(
                TopicPartition(task.topic, task.partition, begin if start is not None else OFFSET_BEGINNING)
            )
        if assign:
            if self._consumer is None:
                self._consumer = make_consumer(
                    self.settings, f"{self.app}.restore", **BACKLOG_READER, **{"enable.partition.eof": True}
                )
            # (Only for changelogs read from their beginning: one resumed at a store's offset
            # is fetched at once, and librdkafka's own metadata finds its leader.)
            self._know_leaders(sorted({tp.topic for tp in assign if tp.offset == OFFSET_BEGINNING}))
            self._consumer.incremental_assign(assign)
            self._progress_at = time.monotonic()
        return reading

    def _know_leaders(self, topics: Sequence[str]) -> None:
        """Have the consumer fetch the metadata of ``topics`` (their partitions' leaders) before
        they are assigned: librdkafka looks up where an assigned partition starts only once it
        knows the leader, and a consumer that did not know it yet tried again 500 ms later.
        Every restore by a new consumer waited that long for its first record (0.56-0.62 s
        against 0.08-0.10 s, 2026-12-03; a changelog read from its beginning: one resumed at a
        store's offset is fetched at once).  Only a saving: if the broker does not answer here,
        librdkafka finds the leaders by itself."""
        consumer = self._consumer
        if consumer is None:
            return
        # One short budget for them all, and none asked after one had no answer: asked inside
        # the assignment callback, a frozen broker held `consume` 10 s a topic, past the
        # session's timeout, and the partitions were lost (found in review, 2026-12-06).
        deadline = time.monotonic() + _LEADERS_ASK_S
        for topic in topics:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                consumer.list_topics(topic, timeout=left)
            except KafkaException as exc:
                log.info(
                    "restoring %s: no metadata for %s yet (%s); librdkafka looks it up itself",
                    self.app,
                    topic,
                    exc,
                )
                return

    @staticmethod
    def _too_old(task: RestoreTask, age: float | None, horizon: float) -> None:
        """Wipe a store away longer than its changelog keeps deletions (``delete.retention.ms``):
        compaction removes a tombstone that long after it was written, so catching up would miss
        deletions made meanwhile and keep keys the changelog no longer has (Kafka Streams deletes
        state not owned for a while, too).  Judged by age alone: whether anything was written
        since cannot be told from offsets (a store's offset may fall short of the changelog's
        end, by another owner's aborted records, say: see Application._queue_writes), and
        a store that is owned is kept current (the runtime touches it, see RocksState.touch)."""
        log.warning(
            "state %s: last current %s, and a store may be away %.0f s (its changelog's "
            "delete.retention.ms less a margin); restoring it from %s[%d]'s start (deletions made "
            "since may be compacted away)",
            task.state.path,
            "at an unknown time" if age is None else f"{age:.0f} s ago",
            horizon,
            task.topic,
            task.partition,
        )
        task.state.wipe()

    def step(self, max_records: int, timeout_s: float, budget_s: float | None = None) -> list[RestoreTask]:
        """Read up to ``max_records`` changelog records (waiting up to ``timeout_s`` for the
        first) and apply them; returns the stores that reached the end of their changelog.

        ``budget_s``: stop once a chunk applied brings the step past this much time (large
        values make a few records a long write); records read and not applied yet are the next
        step's, which reads nothing new until they are done."""
        started = time.monotonic()
        begun = self._begin() if self._unbegun else []
        if self._asking is not None and not self._tasks and timeout_s > 0:
            # Nothing to read yet: the wait a read would have waited is for the round of
            # questions under way, whose stores are then started (and read) in this step.
            wait([self._asking], timeout=timeout_s)
            begun += self._begin()
        consumer = self._consumer
        if consumer is None or not self._tasks:
            if self._unbegun and not begun and self._asking is None and timeout_s > 0:
                # (Until the next round is due, not a spin.)
                time.sleep(max(0.0, min(timeout_s, self._next_begin - time.monotonic())))
            return begun
        if self._carried:
            msgs, self._carried = self._carried, []
        else:
            msgs = consumer.consume(max_records, max(0.0, timeout_s - (time.monotonic() - started)))
        #: Changelog partitions read to their end of partition (a set: it can be reported twice).
        ended: set[tuple[str, int]] = set()
        touched: set[tuple[str, int]] = set()
        progress = False
        for i, msg in enumerate(msgs):
            tp = (msg.topic(), msg.partition())
            err = msg.error()
            if tp not in self._tasks:
                # Fetched before remove() gave the store up, or an error of the client's own
                # (connection lost, all brokers down: it reconnects by itself).
                if err is not None and err.fatal():
                    text = f"restoring changelogs: {err.str()}"
                    raise PipelineError(text)
                if err is not None:
                    log.warning("restoring changelogs of %s: %s", self.app, err.str())
                continue
            progress = True
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if msg.offset() >= self._ends[tp]:
                        ended.add(tp)
                    continue
                text = f"restoring changelog {tp[0]}[{tp[1]}]: {err.str()}"
                raise PipelineError(text)
            key = msg.key()
            if key is None:
                continue
            value = msg.value()
            pending = self._pending[tp]
            pending.append((key, value))
            offset = self._last[tp] = msg.offset()
            touched.add(tp)
            if offset >= self._ends[tp]:
                ended.add(tp)  # (read_committed: everything committed before it came first)
            size = self._pending_bytes[tp] + len(key) + (len(value) if value is not None else 0)
            self._pending_bytes[tp] = size
            if len(pending) >= _RESTORE_CHUNK or size >= _RESTORE_CHUNK_BYTES:
                self._apply(tp)
                if budget_s is not None and time.monotonic() - started >= budget_s:
                    self._carried = msgs[i + 1 :]
                    break
        for tp in touched:
            self._apply(tp)
        # A store is restored once its changelog was read to the high watermark it had at _begin:
        # told by an end of partition there or past it, or by a record past it.  Not by the
        # consumer's position: read_committed, it stands at the high watermark as soon as a fetch
        # stops at the last stable offset, while a transaction is still open, before its records
        # came.  A checkpoint committed a moment before the restore, its markers not yet written,
        # was left out for good (the end of partition reported at the last stable offset comes
        # again, at the end, once they are).
        ended -= {(m.topic(), m.partition()) for m in self._carried}
        now = time.monotonic()
        if progress:
            self._progress_at = now
            self._waiting_since = None
        elif now - self._progress_at > self.stall_s:
            self._stalled(now)
        finished = begun + [self._tasks[tp] for tp in sorted(ended)]
        self._forget(sorted(ended))
        return finished

    def _stalled(self, now: float) -> None:
        """Nothing read for ``stall_s``: wait on while a transaction left open by a process that
        died holds the changelog's end back (Kafka aborts it after its transaction timeout, at
        most ``MAX_OPEN_TXN_S``); fail otherwise, the broker out of reach or the changelog
        unreadable."""
        tps = sorted(self._tasks)
        held: list[str] = []
        try:
            stable = partition_offsets(self.settings, tps, time.monotonic() + 10, committed=True)
            held = [
                f"{t}[{p}] (end {self._ends[t, p]}, stable to {stable[t, p][1]})"
                for t, p in tps
                if stable[t, p][1] < self._ends[t, p]
            ]
        except BrokerError as exc:
            log.warning("restoring %s: %s", tps, exc)
        if held and (self._waiting_since is None or now - self._waiting_since < MAX_OPEN_TXN_S):
            if self._waiting_since is None:
                self._waiting_since = now
                log.warning(
                    "restoring %s: waiting for a transaction left open in %s to end (Kafka aborts it "
                    "after its transaction timeout)",
                    self.app,
                    ", ".join(held),
                )
            self._progress_at = now
            return
        if not held and self._waiting_since is not None:
            # The transaction waited for has just ended: the reader is given a stall's time to
            # read what it held back (a fetch after the end of partition comes after a pause).
            self._waiting_since = None
            self._progress_at = now
            return
        why = (
            f"a transaction open there for over {MAX_OPEN_TXN_S:g}s: {', '.join(held)}"
            if held
            else "is the broker reachable?"
        )
        msg = f"restoring {tps}: nothing read from the changelog for {self.stall_s:g}s ({why})"
        raise PipelineError(msg)

    def remove(self, states: Sequence[RocksState]) -> None:
        """Stop restoring these stores (their partition was revoked); what was read is applied."""
        unbegun = [t for t in self._unbegun if any(t.state is s for s in states)]
        self._unbegun = [t for t in self._unbegun if all(t.state is not s for s in states)]
        for task in unbegun:  # (assigned again, it waits afresh)
            self._unanswered_from.pop((task.topic, task.partition), None)
        if not self._unbegun:
            self._unanswered_since = None
            self._unanswered_from.clear()
            self._asking, self._asked = None, []  # (a round under way ends on its own; unused)
        gone = [tp for tp, task in self._tasks.items() if any(task.state is s for s in states)]
        for tp in gone:
            self._apply(tp)
        self._forget(gone)
        if self._carried and gone:
            # Read but not applied: dropped with the store, whose offset says where to go on.
            dropped = set(gone)
            self._carried = [m for m in self._carried if (m.topic(), m.partition()) not in dropped]

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        self._unbegun.clear()
        self._asking, self._asked = None, []  # (a round under way ends on its own, closing its consumer)
        self._unanswered_since = None
        self._unanswered_from.clear()
        self._tasks.clear()
        self._pending.clear()
        self._pending_bytes.clear()
        self._last.clear()
        self._ends.clear()
        self._as_of.clear()
        self._carried = []
        if consumer is not None:
            consumer.close()

    def _apply(self, tp: tuple[str, int]) -> None:
        pending = self._pending[tp]
        if pending:
            self._tasks[tp].state.write_committed(pending, self._last[tp] + 1, written_at=self._as_of[tp])
            self.applied += len(pending)
            self._pending[tp] = []
            self._pending_bytes[tp] = 0

    def _forget(self, tps: Sequence[tuple[str, int]]) -> None:
        for tp in tps:
            self._tasks.pop(tp, None)
            self._pending.pop(tp, None)
            self._pending_bytes.pop(tp, None)
            self._last.pop(tp, None)
            self._ends.pop(tp, None)
            self._as_of.pop(tp, None)
        if tps and self._consumer is not None:
            self._consumer.incremental_unassign([TopicPartition(t, p) for t, p in tps])


#: A round's answers: (low, high) by partition, why each unanswered one is, the answered
#: partitions' topics' ids, and how long a store may be away from those of ``away`` (see _ask).
_Asked = tuple[
    dict[tuple[str, int], tuple[int, int]],
    dict[tuple[str, int], BrokerUnanswered],
    dict[str, str],
    dict[str, float],
]


def _away(task: RestoreTask, now: float) -> bool:
    """Whether ``task``'s store was last current longer ago than ``_ASK_RETENTION_AWAY_S``
    (``now``: the wall clock), so that its changelog's retention is to be asked."""
    if task.state.changelog_offset() is None:
        return False
    return now - (task.state.changelog_written_at() or 0.0) > _ASK_RETENTION_AWAY_S


def _ask(settings: Settings, tps: Sequence[tuple[str, int]], away: Sequence[str]) -> _Asked:
    """One round of a restore's questions (see Restorer._begin), with clients of its own, the
    consumer closed after (so a round left running by a closed Restorer ends on its own): every
    partition's end offsets, ``_OFFSETS_ASKED_AT_ONCE`` asked together, up to ``_OFFSETS_ASK_S``
    each, however the others fare; then, of the partitions answered, their topics' ids and, for
    the topics in ``away``, their retention, in one ``_DESCRIBE_ASK_S`` budget (unanswered,
    each has its fallback: see _topic_ids, _horizons).  Raises the :class:`BrokerError` of a
    refusal (not authorised, no such partition), once the asks under way have ended.  (Made
    on the loop's thread, one frozen partition held the loop 2 s a try, and the optional
    questions up to 10 s more: found in review.)"""
    consumer = offsets_consumer(settings)
    told: dict[tuple[str, int], tuple[int, int] | BrokerUnanswered] = {}
    refused = threading.Event()

    def ask(mine: Sequence[tuple[str, int]]) -> None:
        for tp in mine:
            if refused.is_set():
                return  # (the round fails: the rest need not wait for their answers)
            try:
                told[tp] = watermarks(consumer, TopicPartition(*tp), _OFFSETS_ASK_S)
            except BrokerUnanswered as exc:
                told[tp] = exc
            except BaseException:
                refused.set()
                raise

    try:
        # Asked together, by up to _OFFSETS_ASKED_AT_ONCE threads (the client's calls wait
        # without the GIL): one after another, a round with its broker frozen or its leaders away
        # took _OFFSETS_ASK_S a partition, and with many partitions the restore failed minutes
        # past its stall_s.  Daemon threads (see vigil.hub.aside): a pool's workers held the
        # process's exit for every partition still to be asked.
        n = min(len(tps), _OFFSETS_ASKED_AT_ONCE)
        asks = [call_aside(partial(ask, tps[i::n]), "restore-offsets") for i in range(n)]
        wait(asks)
        for done in asks:
            done.result()  # (a refusal: raised, once the asks under way have ended)
    finally:
        consumer.close()
    answered: dict[tuple[str, int], tuple[int, int]] = {}
    unanswered: dict[tuple[str, int], BrokerUnanswered] = {}
    for tp in tps:  # (in the order asked)
        answer = told[tp]
        if isinstance(answer, BrokerUnanswered):
            unanswered[tp] = answer
        else:
            answered[tp] = answer
    if not answered:
        return answered, unanswered, {}, {}
    topics = sorted({topic for topic, _ in answered})
    admin = make_admin(settings)
    asked_until = time.monotonic() + _DESCRIBE_ASK_S
    horizons = _horizons(admin, [t for t in away if t in topics], asked_until) if away else {}
    ids = _topic_ids(admin, topics, asked_until)
    return answered, unanswered, ids, horizons


def _left(deadline: float) -> float:
    """What is left until ``deadline`` (monotonic) for a request, at least a little."""
    return max(deadline - time.monotonic(), _LEAST_ASK_S)


def _topic_ids(admin: AdminClient, topics: Sequence[str], deadline: float) -> dict[str, str]:
    """Each changelog topic's id (one request, answered by ``deadline``, monotonic; a topic
    that cannot be described is left out: its stores are then judged by offsets alone, as
    before ids were recorded)."""
    out: dict[str, str] = {}
    try:
        futures = admin.describe_topics(TopicCollection(list(topics)), request_timeout=_left(deadline))
        wait_answered(admin, futures.values(), _left(deadline))
        for topic, future in futures.items():
            out[topic] = str(future.result(timeout=_left(deadline)).topic_id)
    except (KafkaException, TimeoutError) as exc:
        log.warning(
            "restoring %s: could not read the topics' ids (%s)", topics, str(exc) or "no answer in time"
        )
    return out


def _horizon(retention_s: float) -> float:
    return retention_s - min(_HORIZON_MARGIN_S, retention_s / 4)


def _horizons(admin: AdminClient, topics: Sequence[str], deadline: float) -> dict[str, float]:
    """Per changelog topic, how long a store may be away and still catch up: the topic's
    ``delete.retention.ms`` less an hour, or less a quarter of it if shorter (a store's time is
    when it applied its writes, a little after Kafka had them).  Kafka's default where the
    configuration cannot be read (an application allowed to read its topics but not to describe
    them), or not in time (answered by ``deadline``, monotonic)."""
    out = dict.fromkeys(topics, _horizon(DEFAULT_DELETE_RETENTION_S))
    try:
        futures = admin.describe_configs(
            [ConfigResource(ResourceType.TOPIC, t) for t in topics], request_timeout=_left(deadline)
        )
        wait_answered(admin, futures.values(), _left(deadline))
        for resource, future in futures.items():
            entry = future.result(timeout=_left(deadline)).get("delete.retention.ms")
            if entry is not None and entry.value is not None:
                out[resource.name] = _horizon(int(entry.value) / 1000)
    except (KafkaException, TimeoutError) as exc:
        log.warning(
            "restoring %s: could not read delete.retention.ms (%s); taking Kafka's default",
            topics,
            str(exc) or "no answer in time",
        )
    return out


def restore(settings: Settings, app: str, tasks: Sequence[RestoreTask], timeout_s: float = 120.0) -> int:
    """Bring each store up to the end of its changelog partition, at once; returns records applied."""
    restorer = Restorer(settings, app)
    deadline = time.monotonic() + timeout_s
    # Garbage collected as the runtime's loop collects while it restores (vigil.stream.collector):
    # left automatic, collections walked the chunks of records waiting to be applied again and
    # again, about a sixth of the CPU of a restore of 1M keys (2026-12-03).
    with collecting_young() as collector:
        try:
            restorer.add(tasks)
            while restorer.busy:
                if time.monotonic() > deadline:
                    left = sorted((t.topic, t.partition) for t in restorer.restoring())
                    msg = f"restoring {left} did not reach the end of the changelog in {timeout_s:g}s"
                    raise PipelineError(msg)
                restorer.step(10_000, 0.5)
                collector.step()
            return restorer.applied
        finally:
            restorer.close()
