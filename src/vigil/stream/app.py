"""The Kafka-backed stream runtime: micro-batches, keyed state, checkpoints, guarantees.

One :class:`Application` is one consumer-group member.  Its loop:

1. consume up to ``batch_size`` records (without waiting when records are there, so a
   loaded process runs big batches and an idle one answers at once);
2. decode each record (canonical events by default); what cannot be decoded goes to the
   dead-letter topic with the reason, topic/partition/offset and the raw bytes;
3. group records by partition and hand each group to every operator with a
   :class:`~vigil.stream.base.Context` for that partition;
4. every ``checkpoint_interval_s`` (default 0.2 s exactly-once, 5 s at-least-once; see
   ``EXACTLY_ONCE_CHECKPOINT_S``): send pending state writes to the changelog topics, then make
   outputs, changelog writes and input offsets durable together.

Outputs are produced as the operators emit them (``linger.ms`` 5), never held for a
checkpoint; in exactly-once mode ``read_committed`` readers see them when it commits.

Guarantees.  ``exactly_once``: one transactional producer per process
(``transactional.id = <name>-<instance_id>``, by default ``<home id>-<slot>`` with the
lowest slot free in the process's home, so that a process restarted after a crash fences
its predecessor's open transaction at once: :mod:`vigil.stream.instance`); each checkpoint
sends the consumed offsets to the transaction and commits it, so outputs, changelog records and offsets become
visible atomically to ``read_committed`` readers.  ``at_least_once``: outputs go out on an
idempotent producer, visible at once; a checkpoint *seals* the state writes and input offsets
since the last one, and once Kafka has acknowledged every output so far, the offsets are
committed and the state writes go to RocksDB, oldest first.  With state, the changelog
records and the offsets of a seal are committed in one transaction (a second, transactional
producer, named as above, that carries nothing else): so the state restored after a crash is
always the state at the committed offsets, the input after them is processed again from
exactly that state, and the outputs it gives again are the same, with the same ids.  (Without
it, a changelog written ahead of the offsets counted the replayed input twice: a running
count came out shifted, under new ids, and downstream dedup could not tell.)  A seal sets the changed keys
aside and encodes them for the changelog between batches, spread evenly over half the
checkpoint interval (:mod:`vigil.stream.pace`; a key touched before its turn is encoded
first, as it was at the seal): with tens of thousands of keys, doing it at once stalled the
loop for ~100 ms.  Writes to RocksDB, in both modes, are spread the same way.
"Acknowledged" is librdkafka's out-queue running empty; under steady load the loop waits
for a flush at most once per ``max(1 s, 5 checkpoint intervals)`` (at most 4 minutes), and before giving up
partitions.  The state transaction commits on a thread of its own while the loop goes on
(its round trips held the loop 10-30 ms a checkpoint under load); the next seal waits for it.
After a crash the records since the last acknowledged
checkpoint are processed again, so outputs must carry deterministic ids (events do:
``event_id`` is derived from content), and operators must be deterministic given their state
and input, for the outputs processed twice to be the same twice.

RocksDB is written only with what Kafka already has, together with the changelog offset it
reaches; it runs without a write-ahead log (the changelog is the log), so after a crash it
is at a consistent older point and restore catches up from there.

Garbage collection.  While running, Python's automatic collection is off and the loop
collects young objects between batches, every ``gc_young`` allocations, freezing what
survives (:mod:`vigil.stream.collector`; put back on return): with Python's defaults the
collector walked the state values every few records and halved throughput, and rare large
collections paused the loop for 70-160 ms.

Co-partitioned inputs.  With several input topics the group subscribes to the first and
partition ``p`` of every other input follows partition ``p`` of the first (all inputs
must have the same partition count when there is state; a stateless application with
unequal counts reads each input on its own).  Records of partition ``p`` of all inputs share the
state of partition ``p``: a customer's logins and withdrawals, both keyed by customer,
meet in one store.  The assignor (cooperative-sticky, or the broker's under the consumer
group protocol) alone would not keep them together.  State lives in
``<home>/state/<name>/<store id>/<p>``.

Event-time alignment.  With ``max_event_time_skew_s`` (off by default) a replayed backlog
reaches the operators in event-time order, as live traffic would (Kafka Streams' rule of
the lowest timestamp, Flink's watermark alignment; see :mod:`vigil.stream.alignment`).
Decoded records wait in a buffer per input partition until the *floor*, the latest event
time of the slowest partition that still has records to read, has reached them; the
released records are merged by event time and handed over once per release: to operators
with state one call per partition number, to those without one call for all partitions
(see ``Application._release``).  A partition more than
the skew ahead of the floor that also buffers ``alignment_max_buffered`` records is paused
(``consumer.pause``) and resumed once its buffer has drained to half, or, the floor close
enough, to half of four times ``alignment_max_buffered``: memory stays bounded without pausing
a partition for every few records it reads ahead.  A partition past the floor that buffers four
times ``alignment_max_buffered`` is paused even within the skew (a dense partition replayed
beside a slow one), and so is one whose records the other processes hold back (``peer_skew_s``).
A partition at its end (consumer position at its high watermark, or, before it delivered
anything, its committed offset), or that delivered nothing for ``alignment_idle_s``, holds
nobody back, so live traffic is not delayed, but for two cases: while another producer's
transaction is open on a partition that delivered within ``alignment_idle_s``, its position
stops short of the high watermark (read_committed) and it holds the others until that commits,
for ``alignment_idle_s`` at most (a sparse topic written every 0.5 s in transactions held a
live join up to 509 ms); and on a replay (its latest event time over five minutes behind the
wall clock; for one that delivered nothing yet, see :mod:`vigil.stream.alignment`), a partition
with records left to read (or none known: the broker did not answer) holds them up to ten times
``alignment_idle_s`` (on a replay of many partitions, one waiting its turn for a fetch stopped
holding the others, and its backlog came out of event-time order).  At a start (or restart), a
partition with records to read whose stores are still being restored holds the others until it
runs, however long the restore takes (the partitions restored first released their backlog ahead
of it): live traffic waits for it then.  The application's own repartition topics hold nobody
back: their records come from records already released.  Only released records
count as processed and only their offsets are committed (buffered ones are read again after a
restart or rebalance), so both guarantees hold as before.  Decoded records must have
``occurred_at``.  Alignment is each process's own; with ``peer_skew_s`` the processes of one
application also keep within that much event time of each other, catching up on a backlog
(:mod:`vigil.stream.peers`: each publishes where its input partitions stand to
``<app>.peers``; live, nothing waits).

Skipped types.  An application whose operators read only some event types (detection reads
20 of the canonical types; orders and logouts, a third of an exchange's events, no rule reads)
names the others in ``skip_types``.  A record of one of them is told by its first bytes (the
canonical codec writes the type tag first: ``{"type":"order",``), counted as processed and
committed past without being decoded or handed to an operator (nor validated: a skipped
record is the business of the applications that read it).  Bytes laid out otherwise (another
JSON writer's) are decoded as usual, and then handed over whatever their type.

Rebalancing.  Cooperative-sticky (or, with ``kafka_group_protocol = "consumer"``, KIP-848's
assignment by the broker, incremental too): only moved partitions stop.  On revocation the
application checkpoints, then closes the stores; on assignment a stateless application
checkpoints what it has processed (the operators' ``on_assign`` may take longer than the
transaction timeout, and Kafka would abort the open transaction meanwhile) and starts the new
partitions at once, and a stateful one opens the new partitions' stores, asking the broker
nothing, and pauses those partitions: their restores start between batches, where the changelogs'
end offsets are asked (a frozen broker held the callback, and the consumer past its session's
timeout, when they were asked in it), and a store still open in another process of the home (a
member that has not noticed it lost it) is waited for.  Between batches, the loop
tries those stores again (with a back-off, for up to ``store_lock_wait_s``) and restores them,
at most ``_RESTORE_STEP_RECORDS`` changelog records and about ``_RESTORE_STEP_S`` per iteration
(:class:`~vigil.stream.changelog.Restorer`), while the partitions the member already had go on
being processed; a partition is resumed, and its operators' ``on_assign`` called, once all its
stores are open and restored.  (Waiting and restoring inside the rebalance callback stopped
every partition of the member meanwhile, and a restore longer than ``max.poll.interval.ms``
got the member evicted.)  A partition revoked mid-restore keeps what was applied, with the
changelog offset it reaches.  A lost assignment
(session timeout) aborts the open transaction and rewinds the partitions still owned to their
committed offsets (a partition with none yet: to the first offset this member read of it,
whatever ``auto.offset.reset`` says; one lost with nothing committed and assigned back starts
there too; with ``auto.offset.reset`` "latest", a partition with nothing committed starts at
the end it has when assigned, committed before anything read of it is processed, so that a
restart or another member starts there as well, unless that commit is refused or the committed
offsets cannot be read in time, which a warning says); records fetched before the rewind are
dropped (they are read again).  So does an
exactly-once checkpoint the group refuses because it moved on without this member (a stall
past ``max.poll.interval.ms``): the member rejoins on its next poll and processes again
from the last checkpoint, with the state it had there (in batches kept to a quarter of the
interval at the operators' recent cost per record, if theirs was what outlasted it: see
``Application._pace_batches``).  A shorter stall, past the transaction's
timeout (30 s at the default interval), comes first: the broker aborts the transaction and
fences its producer, and the producer's next call fails (an output, a changelog record, the
commit); a new producer of the same transactional id takes over, and the member processes again
from the last checkpoint the same way (with the default instance id only: a given one may be
a newer process's, which the stalled one must not fence, and the application stops).  The same
holds at-least-once with state, whose state producer's transaction (changelog records and
offsets) is open from a seal's first changelog record to its commit: the state producer is
renewed, and outputs since the last checkpoint are sent again, as after any rewind.

Errors.  An operator exception stops the application with a
:class:`~vigil.errors.PipelineError` naming operator, topic, partition and offsets;
nothing of the failing checkpoint is committed.  Operators with
``dead_letter_errors = True`` are run record by record and a failing record is
dead-lettered instead, with nothing of what the operator did for it kept: its state changes
are undone and its outputs dropped (:mod:`vigil.stream.attempt`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import heapq
import logging
import math
import os
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import FrameType
from typing import Any, Literal, TypeVar

import msgspec
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from vigil.config import (
    OWN_CLIENT_OPTIONS,
    Settings,
    classic_group_refusal,
    client_option_name,
    guarantee_of,
)
from vigil.errors import ConfigError, ContractError, PipelineError, TopicError, described
from vigil.events.base import Event, utcnow
from vigil.events.codec import EventCodec, encode, escaped, inert, too_deep
from vigil.events.ids import stable_hash
from vigil.events.records import DeadLetter
from vigil.hub.admin import ensure_topics
from vigil.hub.aside import call_aside
from vigil.hub.client import (
    BACKLOG_READER,
    UnreadableHeaders,
    consumer_config,
    error_text,
    kafka_error,
    make_admin,
    new_consumer,
    new_producer,
    producer_config,
    read_headers,
)
from vigil.hub.topics import DEAD_LETTER_RETENTION, TOPIC_NAME, TOPIC_NAME_MAX, TOPICS, TopicSpec
from vigil.stream.alignment import REPLAY_BEHIND_S, TP, Alignment
from vigil.stream.attempt import Attempt, attempt
from vigil.stream.base import Guarantee, Operator, Record, RecordBatch, State, StoreSpec, shared_stores
from vigil.stream.calls import CallThread
from vigil.stream.changelog import (
    CHANGELOG_MAX_BYTES,
    STATE_RECORD_MAX_BYTES,
    Restorer,
    RestoreTask,
    StateProducerFailed,
    changelog_spec,
    changelog_topic,
    state_too_large,
)
from vigil.stream.collector import YOUNG_OBJECTS, Collector, collecting_young
from vigil.stream.instance import InstanceSlot, slot_directory
from vigil.stream.instance import instance_id as default_instance_id
from vigil.stream.keycount import KeyCounter
from vigil.stream.metrics import AppMetrics, PrometheusMetrics
from vigil.stream.pace import Pace
from vigil.stream.peers import PeerChannel, PeerFloors, peers_topic_spec
from vigil.stream.state import RocksState, StoreLocked

log = logging.getLogger(__name__)

Decoder = Callable[[str, bytes, bytes | None, Any], Any]

_TIMEOUT = 30.0
_T = TypeVar("_T")
#: How long a rewind waits for the committed offsets before trying again on the next pass (see
#: Application._rewind).
_REWIND_ASK_S = 5.0
#: How long a failed checkpoint asks which output topics exist, to name those missing.
_MISSING_ASK_S = 5.0
#: How long the committed offsets of partitions assigned are waited for where the runtime chooses
#: their start (reading from the latest, or lost before their first commit): all together, then
#: each on its own, and in all (see Application._uncommitted).
_START_ASK_S = 2.0
_START_ASK_ONE_S = 0.5
_START_ASK_BUDGET_S = 5.0


def reads_from_the_end(consumer_settings: dict[str, Any]) -> bool:
    """Whether a consumer with these settings starts a partition with nothing committed at its
    end (``auto.offset.reset`` "latest", in any of librdkafka's spellings)."""
    return str(consumer_settings.get("auto.offset.reset", "")).lower() in _FROM_THE_END


def _partitions(count: int) -> str:
    return "1 partition" if count == 1 else f"{count} partitions"


def _committed_asked(
    consumer: Consumer, tps: list[TopicPartition], together_s: float, each_s: float, budget_s: float
) -> tuple[list[TopicPartition], int, object]:
    """Committed offsets of ``tps``, asked together within ``together_s``; when that finds no
    stable answer for one of them (its offsets in another producer's open transaction: read
    committed, no answer comes until the timeout), each on its own, ``each_s`` at most, until
    ``budget_s`` after the start, in all.  The answers, how many partitions were asked (those
    after them were not reached) and the last failure (None: none)."""
    deadline = time.monotonic() + budget_s
    try:
        return consumer.committed(tps, timeout=together_s), len(tps), None
    except KafkaException as exc:
        problem: object = exc.args[0]
    answered: list[TopicPartition] = []
    reached = 0
    for tp in tps:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        reached += 1
        try:
            answered += consumer.committed([tp], timeout=min(each_s, left))
        except KafkaException as one:
            problem = one.args[0]
    return answered, reached, problem


def _offsets_at(
    consumer: Consumer, tps: list[TP], where: int, timeout_s: float
) -> tuple[dict[TP, int], object]:
    """Where ``tps`` end (``OFFSET_END``: the last stable offset, read_committed) or begin
    (``OFFSET_BEGINNING``), in one request: those answered, and why any was not (None: all were)."""
    try:
        answered = consumer.offsets_for_times(
            [TopicPartition(t, p, where) for t, p in tps], timeout=timeout_s
        )
    except KafkaException as exc:
        return {}, exc.args[0]
    found = {(tp.topic, tp.partition): tp.offset for tp in answered if tp.error is None and tp.offset >= 0}
    problem = next((tp.error for tp in answered if tp.error is not None), None)
    return found, problem if problem is not None or len(found) == len(tps) else "no offset given"


def _step(longest: dict[str, float], kind: str, began: float) -> float:
    """Note how long a loop step of ``kind`` took (since ``began``) if it is the longest yet;
    returns now, when the next step begins."""
    now = time.perf_counter()
    if now - began > longest.get(kind, 0.0):
        longest[kind] = now - began
    return now


def _out_of_reach(exc: KafkaException) -> bool:
    """Whether a transactional call failed for want of the broker: retriable, or leaving a
    transaction only an abort clears (records not taken in time), and not fatal."""
    err = kafka_error(exc)
    return err is not None and not err.fatal() and (err.retriable() or err.txn_requires_abort())


def _not_returned(text: str) -> KafkaException:
    """A transactional call's wait given up (see Application._waited), as a timeout: retriable."""
    return KafkaException(KafkaError(KafkaError._TIMED_OUT, text, fatal=False, retriable=True))


def _requires_abort(exc: KafkaException) -> bool:
    """Whether a call failed because the open transaction is one only an abort clears (a record
    the broker refused: see Application._refused), the client not failed."""
    err = kafka_error(exc)
    return err is not None and not err.fatal() and err.txn_requires_abort()


def _is_fatal(exc: KafkaException) -> bool:
    """Whether a client call raised the client's fatal error (it is unusable from then on)."""
    err = kafka_error(exc)
    return err is not None and (err.fatal() or err.code() == KafkaError._FATAL)


def _boot_clock() -> float:
    """Seconds on a clock that counts time the machine was suspended (the broker's clock runs on
    meanwhile; ``time.monotonic`` stops on Linux), for a transaction's age."""
    return time.clock_gettime(_BOOT_CLOCK)


def _forget(gauge: Any, *labels: str) -> None:
    """Remove a gauge's labelled value (prometheus-client before 0.22 raises for one never set)."""
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)


def _check_names(
    name: str,
    inputs: Sequence[str],
    dlq_topic: str | None,
    late_topic: str | None,
    operators: Sequence[Operator[Any]],
) -> None:
    """Refuse, when an application is made, names Kafka would refuse for the topics made of
    them (the broker said so at ``run()``, naming a topic, not the argument; an empty name made
    the consumer's group id empty, and the process aborted inside the client), and dead-letter
    or late topics among the inputs (each letter read back, undecodable again, and dead-lettered
    again without end)."""
    if not isinstance(name, str) or not TOPIC_NAME.fullmatch(name) or name in (".", ".."):
        msg = (
            f"application name {name!r}: expected letters, digits, '.', '_' and '-' (the names of its "
            "topics and its consumer group are made of it)"
        )
        raise ConfigError(msg)
    dlq = dlq_topic or f"dlq.{name}"
    late = late_topic or f"{name}.late"
    made = {"dlq_topic": dlq, "late_topic": late, "its peers topic": f"{name}.peers"}
    for op in operators:
        for spec in op.stores:
            made[f"store {spec.id!r}'s changelog"] = changelog_topic(name, spec.id)
    for what, topic in made.items():
        if not TOPIC_NAME.fullmatch(topic) or len(topic) > TOPIC_NAME_MAX:
            msg = (
                f"application {name!r}: {what} would be {topic[:300]!r}, which Kafka refuses as a topic "
                f"name (letters, digits, '.', '_' and '-', at most {TOPIC_NAME_MAX} characters)"
            )
            raise ConfigError(msg)
    for what, topic in (("dlq_topic", dlq), ("late_topic", late)):
        if topic in inputs:
            msg = (
                f"application {name!r}: {what} {topic!r} is one of its inputs: what it sends there would "
                "be read back and sent there again without end"
            )
            raise ConfigError(msg)
    if dlq == late:
        msg = (
            f"application {name!r}: dlq_topic and late_topic are both {dlq!r}; give them topics of their own"
        )
        raise ConfigError(msg)


def transaction_timeout_s(checkpoint_interval_s: float) -> float:
    """Exactly-once: the producer's ``transaction.timeout.ms`` (in seconds) for a checkpoint
    interval.  A transaction lasts about an interval (plus the checkpoint itself, and a loop
    iteration's work): three intervals, at least librdkafka's usual 30 s and at most Kafka's
    default maximum, 15 minutes.  (A fixed 30 s aborted every transaction of an interval of 30 s
    or more: the next commit failed, and so did every restart.)"""
    return min(max(30.0, 3 * checkpoint_interval_s), 900.0)


def ack_wait_s(checkpoint_interval_s: float) -> float:
    """At-least-once: how long a sealed checkpoint waits for librdkafka's out-queues to run empty
    on their own before the loop flushes them (see ``Application._complete_epochs``)."""
    return min(max(1.0, 5 * checkpoint_interval_s), 240.0)


def state_transaction_timeout_s(checkpoint_interval_s: float) -> float:
    """At-least-once with state: the state producer's ``transaction.timeout.ms`` (in seconds).

    A seal's transaction is open from its first changelog record while its writes are encoded
    (spread over ``_SPREAD`` of an interval), then until every output before it is acknowledged
    (:func:`ack_wait_s`, then a flush of up to 30 s), then while it commits: three waits and the
    encoding, at most Kafka's default maximum, 15 minutes (``MAX_AT_LEAST_ONCE_STATE_CHECKPOINT_S``
    keeps all that under it).  (With three waits alone, an interval of 1,200 s got 720 s, and its
    transaction could be open ~870 s: Kafka aborted it, the commit failed, and so did every
    restart.  Found in review, 2026-12-03.)"""
    return min(max(30.0, 3 * ack_wait_s(checkpoint_interval_s) + _SPREAD * checkpoint_interval_s), 900.0)


#: Errors of a transaction's offset commit that mean the consumer group has moved on without this
#: member (it rejoins on its next poll): the checkpoint is abandoned and its input processed again.
_GROUP_MOVED_ON = frozenset(
    {
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.FENCED_INSTANCE_ID,
        # The consumer protocol's (KIP-848): a commit with the member's epoch behind the group's
        # (STALE); FENCED comes from heartbeats, taken the same way should a call raise it.
        KafkaError.STALE_MEMBER_EPOCH,
        KafkaError.FENCED_MEMBER_EPOCH,
    }
)
_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})
#: A consumer's offset commit that failed for want of the broker (out of reach, frozen, its
#: coordinator moving), or was given up waiting for it: at a stop, its checkpoint is left to the
#: next start.  Any other refusal (not authorised, an unknown topic, offsets refused) still
#: stops the application saying so: commits are asynchronous until the stop, and no one
#: reports theirs.
_COMMIT_OUT_OF_REACH = frozenset(
    {
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._WAIT_COORD,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
    }
)
#: How long to wait for a client's fatal error reason once a call has failed with "fatal".
_FATAL_REASON_WAIT_S = 2.0
#: How long a produce refused for the transaction's abortable state waits for the delivery report
#: of the record the broker refused (see Application._refused): the client marks the transaction
#: and queues the report in the same moment, in either order.
_REFUSAL_REASON_WAIT_S = 1.0
#: Default checkpoint intervals.  Exactly-once outputs become visible when a checkpoint commits,
#: so the interval is their latency: short.  At-least-once outputs go out at once; the interval
#: only bounds what is processed again after a crash, and every checkpoint writes each key changed
#: since the last one to the changelog: long (Kafka Streams: 100 ms and 30 s; quix-streams: 5 s).
EXACTLY_ONCE_CHECKPOINT_S = 0.2
AT_LEAST_ONCE_CHECKPOINT_S = 5.0
#: Exactly-once: a transaction stays open from the first output after a checkpoint to the next
#: checkpoint, so its timeout follows the interval (see :func:`transaction_timeout_s`).  Kafka
#: aborts a transaction open longer than its timeout, and allows 15 minutes at most
#: (``transaction.max.timeout.ms``): hence this longest interval, which leaves 100 s for the
#: checkpoint itself.
MAX_EXACTLY_ONCE_CHECKPOINT_S = 800.0
#: At-least-once with state: a seal's transaction is open half an interval while its writes are
#: encoded, up to 240 s for acknowledgements, a flush and the commit (see
#: :func:`state_transaction_timeout_s`): with this longest interval that is 800 s at most, which
#: leaves 100 s of Kafka's 15 minutes.  Without state, at-least-once has no transaction and no limit.
MAX_AT_LEAST_ONCE_STATE_CHECKPOINT_S = 1000.0
#: Records per micro-batch, at most.  A few hundred, not thousands: a batch's messages, events
#: and records then stay in the core's cache from decode to operators.  Measured on the runtime
#: benchmark's rule (one core, 500k-event backlog, two interleaved rounds): 5,000 gave 158-160k
#: events/s, 300-500 gave 170-189k, 2,000 gave 147-155k; the bare consume + decode floor moves
#: the same way (5,000: 731-748k, 500: 909-914k).  Only a backlog runs full batches: live
#: traffic arrives in batches of a few hundred either way, and cost the same per event at both
#: sizes (8.1-8.6 µs at 87k/s).  Detection (two stages) measured alike at 5,000 and 500: its
#: route stage's batches are bounded by the fetch sizes before this.
DEFAULT_BATCH_SIZE = 500
#: The most records a batch may ask for (librdkafka's limit for one consume call).
MAX_BATCH_SIZE = 1_000_000
#: The headers a record's copy on the late-events topic carries beside its own: the topic,
#: partition and offset it was read at, and the operator that found it late (see
#: :func:`late_headers`).
LATE_HEADERS = ("vigil.late.topic", "vigil.late.partition", "vigil.late.offset", "vigil.late.operator")
_LATE = "vigil.late."
#: On a late record's copy whose own headers would take it over ``OUTPUT_MAX_BYTES``: the names
#: of those left out (they stay where it was read), and the room that note is given.
LATE_HEADERS_LEFT_OUT = "vigil.late.headers-left-out"
_LEFT_OUT_NOTE_BYTES = 512
#: A batch is kept to this share of ``max.poll.interval.ms``, at the operators' recent cost per
#: record: a batch longer than the interval gets the member put out of the group, its work is
#: undone and the same records read again; with batches of the same size, without end (an
#: operator at 25 ms a record, 500-record batches, a 10 s interval: the first batch processed
#: again and again, nothing committed).  Transactional, to this share of the transaction's
#: timeout too, when that is shorter: a transaction is open from a batch's first output to the
#: checkpoint after it, and one open past its timeout is aborted by the broker (see _pace_limit).
_BATCH_SHARE_OF_POLL = 0.25
#: Batches of one record that took longer than ``max.poll.interval.ms``, each within three
#: intervals of the one before, before the application stops: one record alone outlasts it, and
#: would be processed again without end.
_MAX_OVERRUNS = 3
#: No limit on the records a batch or release hands over (see Application._cap).
_NO_CAP = 1 << 62
#: The consumer's fetching, changed from librdkafka's defaults because those trade latency (or
#: throughput) for nothing here.  ``fetch.wait.max.ms``: an idle partition's fetch returns after
#: 10 ms, not 500.  ``fetch.queue.backoff.ms``: once the local queue is over its thresholds,
#: librdkafka waits this long before fetching again; its 1 s default idled a fast consumer that
#: drained the queue sooner (measured on a backlog: bare consume + decode 170-190k events/s with
#: 1 s, ~710k with 10 ms; a stateless pass-through stage 155-186k vs 227-247k).
#: ``socket.nagle.disable``: TCP_NODELAY (Nagle is librdkafka's default; Kafka's Java clients turn
#: it off): librdkafka batches by itself, and Nagle only holds small requests back.
#: ``fetch.min.bytes``: a partition's fetch waits for 64 KB (or the 10 ms above).  With librdkafka's
#: 1 byte, a consumer under steady traffic fetched again the moment anything had arrived, and
#: every small fetch cost CPU in the consumer and the broker, which share the machine.  Measured
#: on the runtime benchmark's live rule (record by record, one core, interleaved runs,
#: 2026-12-03): at 60k events/s, median latency 24-56 ms in 4 of 4 runs against 56-988 ms (3 of 4
#: fell behind), CPU per event 11.0-13.0 µs against 12.5-14.6; at 12k events/s, median 17-18 ms
#: against 11-12 ms (the price: up to the 10 ms wait when traffic is light), CPU per event 16-18
#: µs against 22-24.
FETCH_DEFAULTS: dict[str, Any] = {
    "fetch.wait.max.ms": 10,
    "fetch.min.bytes": 64 * 1024,
    **BACKLOG_READER,  # fetch.queue.backoff.ms
    "socket.nagle.disable": True,
}
#: The largest output record, key and value (librdkafka's default limit, under the broker's 1 MB
#: default).
OUTPUT_MAX_BYTES = 1_000_000
#: The longest reason a dead letter keeps (the rest is cut, and its length said): an analyst
#: reads the start, and the record's bytes, which a long reason would push out of the letter,
#: are what a redrive needs.
REASON_MAX_CHARS = 4_000
#: Restoring between batches (see Application._restore_step): changelog records applied per loop
#: iteration at most (~45 ms at the measured 4.6 s per 1M keys: the partitions already owned
#: wait at most that long for their next batch); the time after which a step stops at the end of
#: a chunk of writes (large values: a vectorised window's chunks are up to 512 KB each, and one
#: read may return the consumer's whole fetch queue, tens of MB of them); and how long the step
#: waits for changelog records when no input arrived either (records of the owned partitions may
#: arrive meanwhile).
_RESTORE_STEP_RECORDS = 10_000
_RESTORE_STEP_S = 0.025
#: How often (seconds) a checkpoint records that the owned stores are current (RocksState.touch):
#: well inside what the restore allows between a store's recorded time and its contents (its
#: changelog's delete.retention.ms less a margin: with a retention of ten minutes, 450 s; every
#: ten minutes, as it was, a store quiet for five was restored afresh after a crash).  A put a
#: store, and idle, a commit of the offsets again, once a minute.
_TOUCH_EVERY_S = 60.0
_RESTORE_WAIT_S = 0.01
#: Aligned: timeout of the broker queries for partitions nothing was consumed from yet (see
#: _start_lag; how often one being restored at the start with nothing left is asked again:
#: _RESTORING_ASK_EVERY_S).
_ALIGN_TIMEOUT = 5.0
#: After a question of records left at the start had no answer, none is asked for this long, twice
#: as long after each further one without an answer, up to the most (see Application._start_lag).
_START_LAG_QUIET_S = 1.0
_START_LAG_QUIET_MAX_S = 30.0
_RESTORING_ASK_EVERY_S = 5.0
#: The lag gauge's questions to the broker about partitions nothing was delivered from yet
#: (see Application._unread_lags): the timeout of each (on the loop: a committed offset in another
#: producer's open transaction has no answer until the timeout), how often the ends of paused
#: partitions are asked (and how long the gauge asks nothing after a question failed), and how
#: long after a committed offset had no answer it is asked again.
_UNREAD_ASK_S = 0.2
_UNREAD_ASK_EVERY_S = 5.0
_UNREAD_RETRY_S = 30.0
#: How often a co-partitioned application looks up its inputs' partition counts (see
#: Application._check_inputs), and the timeout of each lookup.
_INPUTS_EVERY_S = 10.0
_INPUTS_ASK_S = 1.0
#: How long a member of a classic group may go with no assignment at all (not even an empty one,
#: which every member is given when a rebalance ends) before the application says so (see
#: Application._joining_too_long).
_JOINING_SAY_S = 60.0
#: Expired transactions renewed in a row, with no commit between, before the application stops
#: (see Application._renew_expired).
_MAX_RENEWALS = 3
#: Calls of abort_transaction while it fails retriably (each waits up to _TIMEOUT): about 5
#: minutes of a broker out of reach, as a checkpoint's calls are tried (_RETRY_TXN_CALL_S).
_ABORT_ATTEMPTS = 10
#: How long one transactional call of a checkpoint is tried again while it fails retriably (a
#: broker out of reach: past the transaction's timeout, the next try says the transaction is
#: to be aborted, or that the broker aborted it), and the pause between tries.
_RETRY_TXN_CALL_S = 300.0
_RETRY_TXN_PAUSE_S = 0.5
#: How long such a call waits once the application is stopping.
_STOPPING_CALL_S = 10.0
#: A transactional call made on the committer thread (see vigil.stream.calls) is waited for in
#: slices this long; past its own timeout and this margin it is said to wait for the broker,
#: once every so often.
_CALL_SLICE_S = 0.5
_OVERDUE_MARGIN_S = 5.0
_OVERDUE_SAY_EVERY_S = 60.0
#: The one short abort of a checkpoint given up when stopping (see _abandoned_stopping).
_ABANDON_ABORT_S = 2.0
#: At-least-once: a seal's commit on the committer thread, two calls (offsets, then the commit),
#: each of which may wait ``_TIMEOUT``.
_COMMIT_S = 2 * _TIMEOUT
#: Checkpoints aborted in a row (their transaction failed, abortable, see
#: Application._aborted_to_retry), with no commit between, before the application stops.
_MAX_ABORTED_CHECKPOINTS = 3
#: CLOCK_BOOTTIME where there is one (Linux), else the monotonic clock.
_BOOT_CLOCK: int = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
#: How long a newly assigned partition's store may stay open in another process sharing the
#: home (the member that had the partition and has not noticed it lost it) before giving up.
#: Waited for between batches, the partition paused (see Application._open_stores).
STORE_LOCK_WAIT_S = 60.0
#: Aligned apps pause a partition ahead of the others only once it buffers this many records.
ALIGNMENT_MAX_BUFFERED = 5_000
#: Aligned apps re-plan pauses and releases after every batch, and at least this often when
#: nothing arrives (idle partitions stop holding the others back after ``idle_s``, or on a
#: replay ten times that).
_ALIGN_IDLE_EVERY_S = 0.01
#: Peer alignment (see _release): how long a process starting to catch up holds its backlog for
#: the others' fresh words (their words come every PUBLISH_EVERY_S, read within a fetch wait),
#: and how far ahead of the wall clock a record may be dated and still count as where its
#: partition has reached.
PEER_GRACE_S = 0.25
#: ...once after nothing of a backlog waited for this long (seconds).
PEER_LULL_S = 1.0
_FUTURE_TOLERANCE_S = 60.0
#: Guarantee-bearing client settings an application's own overrides may still change (refused in
#: ``kafka_client_options``, which apply to every client): each application bounds its own sends
#: and transactions (a slow takeover, a test's short timeout; the runtime keeps message.timeout.ms
#: under the transaction's), and may start a new group at the end of its inputs (live traffic
#: only).  With "latest", a partition with nothing committed starts at the end it has when
#: assigned, and that start is committed before anything read of it is processed
#: (``Application._resumed``, ``_commit_new_starts``): else a crash, or the partition taken by
#: another member, before the first checkpoint started at the end again, after what had been
#: read, and that was lost.  (So it still is, with a warning, where the broker refuses that
#: commit, or cannot say what is committed: a partition in another producer's open transaction.)
_OVERRIDABLE = frozenset(
    {"transaction.timeout.ms", "message.timeout.ms", "delivery.timeout.ms", "auto.offset.reset"}
)
#: librdkafka's names of "latest" (see _OVERRIDABLE).
_FROM_THE_END = frozenset({"latest", "largest", "end"})
#: Settings of the producer's own that overrides may not replace: the callbacks the runtime learns
#: of failures through, and a queue order that can reorder one key's records.
_OWN_PRODUCER_OPTIONS = {
    "on_delivery": "the application learns of a record Kafka refused through it",
    "error_cb": "the application learns of a failed client (fenced, fatal) through it",
    "queuing.strategy": "records are sent in the order they were produced (lifo reorders one key's)",
}
#: Refused for either client: a dict of topic settings that bypasses the checks by name (a
#: ``partitioner`` in it spread one key over every partition).
_NESTED = {"default.topic.config": "topic settings are checked by name: give each one on its own"}


def refused_override(name: str, client: Literal["consumer", "producer"]) -> str | None:
    """Why an application's ``consumer_overrides``/``producer_overrides`` may not set ``name``
    (None: it may): what undoes a guarantee the runtime depends on, as in ``kafka_client_options``
    (an override of isolation.level read aborted transactions' records; of partitioner, broke
    the co-partitioning of repartition topics), and the connection Vigil's own settings make
    (a producer pointed at another cluster committed offsets to the wrong coordinator)."""
    key = client_option_name(name)
    if key in _OVERRIDABLE:
        return None
    own = OWN_CLIENT_OPTIONS.get(key)
    if own is not None:
        return f"Vigil sets it from {own} (VIGIL_{own.upper()})"
    return (
        guarantee_of(key)
        or _NESTED.get(key)
        or (_OWN_PRODUCER_OPTIONS.get(key) if client == "producer" else None)
    )


#: What decoding a record may raise: the contract's errors (EventCodec, custom decoders) and the
#: default decoder's own (the fast path calls msgspec directly, without EventCodec's wrapping).
#: RecursionError: JSON nested too deep for msgspec (a field before the type tag skipped over,
#: nested 100,000 deep); uncaught, it stopped the stage at that record, and every restart too.
DECODE_ERRORS = (ContractError, msgspec.ValidationError, msgspec.DecodeError, RecursionError)


def _records_of(
    topic: str | None, partition: int, msgs: list[Message], events: list[Any]
) -> list[Record[Any]]:
    """The records of ``events``, each decoded from the message beside it (``topic``: the
    one topic they were all read from, else each message's own): a RecordBatch's records."""
    return [
        Record(
            event,
            msg.topic() if topic is None else topic,
            partition,
            msg.offset(),
            msg.key(),
            msg.timestamp()[1],
            msg.value(),
        )
        for msg, event in zip(msgs, events, strict=True)
    ]


#: How every canonical record begins (see _skip_prefixes).
_TAG_HEAD = b'{"type":"'


def check_output(topic: str, value: bytes, key: str | bytes | None = None) -> None:
    """Refuse a record over ``OUTPUT_MAX_BYTES``, key and value together, naming it.

    Refused here, at once, as librdkafka refused it before its limit was raised for changelog
    records: an operator's dead-letter policy catches it.  From the broker, it failed the
    checkpoint, and the restart again; so did a record of a small value and a large key (a
    600 KB device id, re-keyed by device), when only the value was counted."""
    size = len(value)
    if key is not None:
        size += len(key)
        if type(key) is str and size + 3 * len(key) > OUTPUT_MAX_BYTES:
            size = len(value) + len(key.encode("utf-8", "surrogatepass"))  # (up to 4 bytes a char)
    if size > OUTPUT_MAX_BYTES:
        parts = f" ({size - len(value):,} of them its key)" if size != len(value) else ""
        text = f"a record of {size:,} bytes for {topic!r}{parts}; at most {OUTPUT_MAX_BYTES:,}"
        raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, text))


def _headers_bytes(headers: list[tuple[str, bytes | None]]) -> int:
    """About what ``headers`` add to a record (each name and value, and a few bytes of lengths)."""
    return sum(len(name.encode("utf-8", "surrogatepass")) + len(value or b"") + 8 for name, value in headers)


def late_headers(
    headers: list[tuple[str, bytes | None]], record: Record[Any], operator_id: str, room: int
) -> list[tuple[str, bytes | None]]:
    """The headers of ``record``'s copy on the late-events topic: its own, ``headers`` (those at
    hand), and ``LATE_HEADERS``: where it was read and which operator found it late (two windows
    may each find one record late: a copy each).  Its own that would take it past ``room`` bytes
    are left out, the largest first, and named in ``LATE_HEADERS_LEFT_OUT``: a raw topic's
    records may be 64 MB, and the broker refused such a copy, stopping the stage at it at every
    restart (they stay where it was read)."""
    own = [(name, value) for name, value in headers if not name.startswith(_LATE)]
    topic, partition, offset, operator = LATE_HEADERS
    where: list[tuple[str, bytes | None]] = [
        (topic, record.topic.encode()),
        (partition, str(record.partition).encode()),
        (offset, str(record.offset).encode()),
        (operator, operator_id.encode()),
    ]
    size = _headers_bytes(own) + _headers_bytes(where)
    if size <= room:
        return [*own, *where]
    # (The note's own size allowed for: _LEFT_OUT_NOTE_BYTES at most.)
    sizes = [_headers_bytes([header]) for header in own]
    left: set[int] = set()
    for i in sorted(range(len(own)), key=sizes.__getitem__, reverse=True):  # (stable: ties in order)
        left.add(i)
        size -= sizes[i]
        if size + _LEFT_OUT_NOTE_BYTES <= room:
            break
    if not left:
        return [*own, *where]  # (none of its own: nothing to leave out; the limit's margin holds it)
    names = ", ".join(name for i, (name, _) in enumerate(own) if i in left).encode("utf-8", "surrogatepass")
    if len(names) > _LEFT_OUT_NOTE_BYTES // 2:
        cut = names[: _LEFT_OUT_NOTE_BYTES // 2].decode("utf-8", "ignore").encode()
        names = cut + f"... ({len(left)} in all)".encode()
    kept = [header for i, header in enumerate(own) if i not in left]
    return [*kept, *where, (LATE_HEADERS_LEFT_OUT, names)]


def late_refused(topic: str, exc: KafkaException) -> str:
    """A dead letter's reason for a late record too large for the late-events topic (an input
    near the limit, encoded again): sent there instead of stopping the stage at it, and at every
    restart."""
    err = kafka_error(exc)
    return f"late, and too large for the late-events topic {topic!r}: {err.str() if err else exc}"


def undecodable_reason(exc: Exception) -> str:
    """A dead letter's reason for a record that could not be decoded (one of ``DECODE_ERRORS``),
    worded as :meth:`EventCodec.decode` words it (the runtime calls msgspec's decoder itself)."""
    if isinstance(exc, RecursionError):
        return too_deep(exc)
    if isinstance(exc, msgspec.ValidationError):  # (a msgspec.DecodeError too: asked first)
        return inert(str(exc))
    if isinstance(exc, msgspec.DecodeError):
        return f"not valid JSON: {inert(str(exc))}"
    return str(exc)


def clipped_reason(reason: str) -> str:
    """A dead letter's reason as it is sent: cut at ``REASON_MAX_CHARS``, its length said.
    Reasons quote what was wrong, and msgspec quotes a bad value whole: a 330 KB field made a
    400 KB reason, which pushed the record's own bytes out of its letter.  Characters that are not
    printable are escaped: a reason may quote what a record or an operator's error held (a
    newline, a terminal escape, a lone surrogate, which stopped the stage: no letter could be
    encoded)."""
    if len(reason) <= REASON_MAX_CHARS and reason.isprintable():
        return reason
    head = reason[:REASON_MAX_CHARS]
    if head.isprintable():
        shown, taken = head, len(head)
    else:
        # Cut between escapes, never inside one (a "\x1" at the end would read as a different
        # character).
        pieces: list[str] = []
        used = taken = 0
        for ch in head:
            piece = escaped(ch)
            if used + len(piece) > REASON_MAX_CHARS:
                break
            pieces.append(piece)
            used += len(piece)
            taken += 1
        shown = "".join(pieces)
    if taken == len(reason):
        return shown
    return f"{shown}... ({len(reason):,} characters in all)"


def _skip_prefixes(tags: Sequence[str]) -> tuple[bytes, ...]:
    """How a canonical record of a type in ``tags`` begins (see the module docstring): the tag,
    then a comma or the object's end.  ``bytes.startswith`` tries them all in one call (slicing
    out the tag and looking it up cost several times that, once per record)."""
    return tuple(_TAG_HEAD + tag.encode() + end for tag in sorted(set(tags)) for end in (b'",', b'"}'))


def _error_kind(exc: Exception) -> str:
    """A dead letter's error kind: the contract error's class, ``DecodeError`` for msgspec's own."""
    return type(exc).__name__ if isinstance(exc, ContractError) else "DecodeError"


_TOMBSTONE = "record has no value (a tombstone); expected an encoded event"


def _undecodable(
    msg: Message, exc: Exception
) -> tuple[str, int, int, bytes | None, bytes, str, str, list[tuple[str, bytes | None]] | None]:
    """The dead letter of a record that could not be decoded (see Application._dead_letter):
    the record whole, its headers too (when the client can read them)."""
    reason = undecodable_reason(exc)
    headers: list[tuple[str, bytes | None]] | None = None
    if not isinstance(exc, UnreadableHeaders):  # (asked once already: never again, see read_headers)
        try:
            headers = read_headers(msg) or []
        except UnreadableHeaders as bad:
            reason = f"{reason}; and {bad}: they are left out of this dead letter"
    return (
        msg.topic() or "",
        msg.partition() or 0,
        msg.offset() or 0,
        msg.key(),
        msg.value() or b"",
        reason,
        _error_kind(exc),
        headers,
    )


def _note_delivery_failure(errors: list[str], err: KafkaError | None, msg: Message) -> None:
    # Purged: the record was in a transaction this process aborted (only aborts purge here),
    # so it was meant to go: it is produced again when its input is processed again.
    if err is not None and err.code() not in _PURGED:
        errors.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")


def _note_fatal(errors: list[str], err: KafkaError) -> None:
    # Non-fatal ones librdkafka retries, and logs itself.
    if err.fatal():
        errors.append(err.str())


def _length(key: bytes | None) -> int:
    return 0 if key is None else len(key)


_Writes = list[tuple[RocksState, list[tuple[bytes, bytes | None]], str, int]]
#: Checkpoint work between batches: a checkpoint's state writes are encoded and sent to the
#: changelog (at-least-once), then written to RocksDB (both guarantees), each spread evenly over
#: this fraction of the checkpoint interval.  All at once, 50,000 keys stalled the loop for
#: ~100 ms; a fixed 2,000 keys per iteration slowed live processing to a sixth while it lasted;
#: a key per record just processed (the previous rule) made a 5,000-record batch take a third
#: longer for about a second, and at 80% load that backlog alone set p99 latency (~230 ms,
#: measured).  Spread by wall time, a checkpoint adds the same small share to every iteration.
_SPREAD = 0.5


class _SealPart:
    """One store partition's writes of an at-least-once checkpoint, encoded and sent so far."""

    def __init__(self, state: RocksState, topic: str, partition: int) -> None:
        self.state = state
        self.topic = topic
        self.partition = partition
        self.writes: list[tuple[bytes, bytes | None]] = []


class _Seal:
    """An at-least-once checkpoint whose state writes are still being encoded and sent."""

    def __init__(self, offsets: list[TopicPartition], parts: list[_SealPart]) -> None:
        self.offsets = offsets
        self.parts = parts


class _Committing:
    """At-least-once with state: a seal's transaction committing on the committer thread
    (``began``: wall time, before the commit; ``asked_at``: monotonic, when it was submitted)."""

    def __init__(
        self, future: Future[None], offsets: list[TopicPartition], writes: _Writes, began: float
    ) -> None:
        self.future = future
        self.offsets = offsets
        self.writes = writes
        self.began = began
        self.asked_at = time.monotonic()


class _PendingWrite:
    """State writes Kafka has, on their way to RocksDB (``done`` of them written)."""

    def __init__(
        self,
        state: RocksState,
        writes: list[tuple[bytes, bytes | None]],
        offset: int | None,
        current_at: float | None,
    ) -> None:
        self.state = state
        self.writes = writes
        self.offset = offset
        #: When the store was last known current (see Application._current_at), recorded with it.
        self.current_at = current_at
        self.done = 0


def _offset_ranges(records: Sequence[Record[Any]]) -> str:
    """Where a batch came from, per input partition: ``in[0] offsets 17..42, other[0] offsets 3..9``
    (a batch of a partition may hold records of several co-partitioned topics)."""
    ranges: dict[tuple[str, int], list[int]] = {}
    for rec in records:
        span = ranges.setdefault((rec.topic, rec.partition), [rec.offset, rec.offset])
        span[0] = min(span[0], rec.offset)
        span[1] = max(span[1], rec.offset)
    return ", ".join(f"{t}[{p}] offsets {lo}..{hi}" for (t, p), (lo, hi) in sorted(ranges.items()))


def _capped_counts(buffers: list[deque[tuple[Any, ...]]], ends: list[int], cap: int) -> list[int]:
    """How many of each buffer's first records to release so that at most ``cap`` go in all,
    the earliest in event time across the buffers, each buffer a prefix of at most ``ends[i]``
    records (what the release may take of it: see _releasable).  Counted, not turned into an
    earlier limit: records with equal times, or many behind one ahead in time, all went at once
    under a limit (6,001 at a cap of 37)."""
    counts = [0] * len(buffers)
    heads = [(buf[0][0], i) for i, buf in enumerate(buffers) if ends[i] > 0]
    heapq.heapify(heads)
    for _ in range(cap):
        if not heads:
            break
        at, i = heapq.heappop(heads)
        counts[i] += 1
        buf = buffers[i]
        j = counts[i]
        if j < ends[i]:
            # (One earlier in time behind a later one is next in its partition's order: it goes
            # at the later one's time.)
            heapq.heappush(heads, (max(buf[j][0], at), i))
    return counts


def _releasable(
    buf: deque[tuple[Any, ...]],
    limit: float,
    live: tuple[float, float],
    peers: tuple[bool, float, float, float],
    reached: float,
) -> tuple[int, bool]:
    """How many of ``buf``'s first records a release may take, as its loop judges them: up to
    ``limit``, live ones (``live``: from, to) further; with the others' cap (``peers``:
    capping, the cap, the backlog's bound and the future's), none of a backlog past the cap
    (then True: the others' cap holds the partition back).
    (Counted for the cap on a release, it counted records the release could not take, older
    than any live one, so live records got none of it and waited for the slower process again:
    found in review.)"""
    live_from, live_limit = live
    capping, cap_at, before, ahead_of = peers
    n = 0
    for entry in buf:
        at = entry[0]
        if at > limit and not live_from <= at <= live_limit:
            break
        if capping and cap_at < at and reached <= at < before:
            return n, True
        if reached < at <= ahead_of:
            reached = at
        n += 1
    return n, False


def _merged(runs: list[list[Record[Any]]]) -> list[Record[Any]]:
    """Runs each in event-time order, merged into one (a merge, not a sort: a run's own
    order is kept even where its event times are not in order).

    The same as ``heapq.merge(*runs, key=lambda r: r.event.occurred_at)``, ties to the earlier
    run, but merged two runs at a time by a loop this module compiles: ``heapq.merge`` is a
    Python generator (measured: 157-246 ns per record merged from 2-8 runs, against 47-156 ns
    here)."""
    while len(runs) > 1:
        # Neighbours pairwise: the next record of merge(a, b) is always the earlier of a's and
        # b's next, so the rounds pick what one k-way merge would, in the same order.
        paired = [_merge_two(runs[i], runs[i + 1]) for i in range(0, len(runs) - 1, 2)]
        if len(runs) % 2:
            paired.append(runs[-1])
        runs = paired
    return runs[0] if runs else []


def _merge_two(left: list[Record[Any]], right: list[Record[Any]]) -> list[Record[Any]]:
    """Two runs merged by event time; ties (and a later run's equal times) to ``left``.

    The two branches mirror each other on purpose: each reads the next event time of the side
    it advanced only (the loop that compared both heads every step measured no faster than
    ``heapq.merge`` over 8 runs)."""
    if not right:
        return left
    if not left:
        return right
    out: list[Record[Any]] = []
    i = j = 0
    n_left, n_right = len(left), len(right)
    t_left = left[0].event.occurred_at
    t_right = right[0].event.occurred_at
    while True:
        if t_right < t_left:
            out.append(right[j])
            j += 1
            if j == n_right:
                out.extend(left[i:])
                return out
            t_right = right[j].event.occurred_at
        else:
            out.append(left[i])
            i += 1
            if i == n_left:
                out.extend(right[j:])
                return out
            t_left = left[i].event.occurred_at


class _PartitionTask:
    """Everything the application keeps for one owned partition number."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.stores: dict[str, RocksState] = {}
        self.contexts: list[tuple[Operator[Any], _KafkaContext]] = []
        #: Its partitions (the inputs' partitions of this number), and while its stores are being
        #: restored, how many are left (the partitions are paused until none is).
        self.partitions: list[TopicPartition] = []
        self.restoring = 0
        #: Stores still open in another process of the home (see Application._open_stores): ids,
        #: until when to wait for them, when to try again, the back-off after that, and the
        #: stores a warning has named.
        self.unopened: list[str] = []
        self.lock_deadline = 0.0
        self.next_try = 0.0
        self.backoff = 0.05
        self.warned: set[str] = set()

    @property
    def waiting(self) -> bool:
        """Whether its stores are not all open and restored yet (its partitions paused)."""
        return bool(self.unopened) or self.restoring > 0

    def close(self) -> None:
        for state in self.stores.values():
            state.close()
        # Its contexts refer back to it: a cycle only a full collection frees, and the runtime
        # collects young objects alone (see collector.py), so a partition given up kept its
        # stores' caches (up to CACHE_LIMIT values each) for minutes.  Broken here; and the
        # cycle of a dead-letter operator's context with its attempt (each refers to the other).
        for _, ctx in self.contexts:
            ctx.trial = None
        self.contexts.clear()


class _KafkaContext:
    def __init__(self, app: Application, task: _PartitionTask, operator: Operator[Any]) -> None:
        self._app = app
        self._task = task
        self._declared = {spec.id for spec in operator.stores}
        self._operator_id = operator.id
        #: This context as a dead-letter operator's attempts see it (made on first use).
        self.trial: Attempt | None = None

    @property
    def partition(self) -> int:
        return self._task.number

    def state(self, store: StoreSpec) -> State:
        if store.id not in self._declared:
            msg = f"operator {self._operator_id!r} used store {store.id!r} it did not declare in `stores`"
            raise KeyError(msg)
        return self._task.stores[store.id]

    def emit(self, topic: str, event: Event, key: str | None = None) -> None:
        self._send(topic, encode(event), key if key is not None else event.key())

    def forward(self, topic: str, record: Record[Any], key: str) -> None:
        self._send(topic, self._forwarded(record), key)

    def _forwarded(self, record: Record[Any]) -> bytes:
        # The bytes read are the event's own encoding only when the default codec decoded them
        # (a custom decoder reads some other format: a source's raw records).
        value = record.value if self._app._decode is None and record.value is not None else None
        return value if value is not None else encode(record.event)

    # Outputs of a dead-letter operator's attempt (vigil.stream.attempt): encoded and checked
    # when emitted, sent when the record has succeeded.  So whatever can fail an output fails
    # the record before any of its outputs is sent: all or nothing, in exactly-once mode too.

    def prepare_emit(
        self, topic: str, event: Event, key: str | None = None, value: bytes | None = None
    ) -> Callable[[], None]:
        encoded = value if value is not None else encode(event)
        return self._prepared(topic, encoded, key if key is not None else event.key())

    def prepare_forward(self, topic: str, record: Record[Any], key: str) -> Callable[[], None]:
        return self._prepared(topic, self._forwarded(record), key)

    def prepare_late(self, record: Record[Any]) -> Callable[[], None]:
        # The record as read (the late-events topic holds raw records, as its declaration says),
        # with its headers, where it was read and which operator found it late: the event encoded
        # again said none of it (after a group_by not even its original key), and one a custom
        # decoder made that does not encode stopped the stage at it, at every restart.
        value = record.value if record.value is not None else encode(record.event)
        check_output(self._app.late_topic, value, record.key)
        room = OUTPUT_MAX_BYTES - len(value) - _length(record.key)
        headers = late_headers(self._app._headers_of(record) or [], record, self._operator_id, room)
        return lambda: self._send_late(value, record.key, headers)

    def _prepared(self, topic: str, value: bytes, key: str | bytes | None) -> Callable[[], None]:
        check_output(topic, value, key)
        return lambda: self._send(topic, value, key)

    def _send(self, topic: str, value: bytes, key: str | bytes | None) -> None:
        self._app._produce(topic, value, key)
        self._app.metrics.emitted += 1

    def _send_late(self, value: bytes, key: bytes | None, headers: list[tuple[str, bytes | None]]) -> None:
        self._app._count_late()
        self._app._produce(self._app.late_topic, value, key, headers)

    def dead_letter(
        self, record: Record[Any], reason: str, headers: list[tuple[str, bytes | None]] | None = None
    ) -> None:
        self._app._dead_letter(
            record.topic,
            record.partition,
            record.offset,
            record.key,
            record.value if record.value is not None else encode(record.event),
            reason,
            "OperatorError",
            headers if headers is not None else self._app._headers_of(record),
        )

    def late(self, record: Record[Any]) -> None:
        try:
            send = self.prepare_late(record)
        except KafkaException as exc:  # too large for the late-events topic
            self._app._count_late()  # (late all the same)
            self.dead_letter(record, late_refused(self._app.late_topic, exc))
            return
        send()


class Application:
    """A stream application; see the module docstring for what it guarantees."""

    def __init__(
        self,
        settings: Settings,
        *,
        name: str,
        inputs: Sequence[str],
        operators: Sequence[Operator[Any]],
        guarantee: Guarantee = "exactly_once",
        dlq_topic: str | None = None,
        late_topic: str | None = None,
        decode: Decoder | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        batch_timeout_s: float = 0.05,
        checkpoint_interval_s: float | None = None,
        instance_id: str | None = None,
        internal_topics: Sequence[TopicSpec] = (),
        output_topics: Sequence[TopicSpec] = (),
        consumer_overrides: dict[str, Any] | None = None,
        producer_overrides: dict[str, Any] | None = None,
        gc_young: int | None = YOUNG_OBJECTS,
        max_event_time_skew_s: float | None = None,
        alignment_idle_s: float = 1.0,
        alignment_max_buffered: int = ALIGNMENT_MAX_BUFFERED,
        skip_types: Sequence[str] = (),
        store_lock_wait_s: float = STORE_LOCK_WAIT_S,
        peer_skew_s: float | None = None,
    ) -> None:
        if not inputs:
            msg = f"application {name!r}: expected at least one input topic, got none"
            raise ConfigError(msg)
        if isinstance(inputs, str):
            # (It read as one topic a letter: "input topic 'e' does not exist", at run().)
            msg = f"application {name!r}: inputs must be a list of topic names; got the string {inputs!r}"
            raise ConfigError(msg)
        _check_names(name, inputs, dlq_topic, late_topic, operators)
        if guarantee not in ("exactly_once", "at_least_once"):
            msg = f"application {name!r}: guarantee must be exactly_once or at_least_once, got {guarantee!r}"
            raise ConfigError(msg)
        ids = [op.id for op in operators]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            msg = f"application {name!r}: duplicate operator ids {dupes}; every operator needs its own id"
            raise ConfigError(msg)
        shared = shared_stores(operators)
        if shared:
            msg = (
                f"application {name!r}: stores declared by more than one operator {shared}; every "
                "operator needs stores of its own (a store's keys are the operator's alone)"
            )
            raise ConfigError(msg)
        if checkpoint_interval_s is None:
            checkpoint_interval_s = (
                EXACTLY_ONCE_CHECKPOINT_S if guarantee == "exactly_once" else AT_LEAST_ONCE_CHECKPOINT_S
            )
        if (
            not 1 <= batch_size <= MAX_BATCH_SIZE
            or not 0 < batch_timeout_s < float("inf")
            or not 0 < checkpoint_interval_s < float("inf")
        ):
            # (NaN and infinity too: either made the idle loop spin a core.)
            msg = (
                f"application {name!r}: batch_size 1-{MAX_BATCH_SIZE:,}, batch_timeout_s > 0 and "
                f"checkpoint_interval_s > 0 (finite) expected; got {batch_size}, {batch_timeout_s}, "
                f"{checkpoint_interval_s}"
            )
            raise ConfigError(msg)
        if guarantee == "exactly_once" and checkpoint_interval_s > MAX_EXACTLY_ONCE_CHECKPOINT_S:
            msg = (
                f"application {name!r}: exactly-once checkpoint_interval_s is at most "
                f"{MAX_EXACTLY_ONCE_CHECKPOINT_S:.0f} s (a transaction stays open an interval, and Kafka "
                f"aborts one open longer than 15 minutes); got {checkpoint_interval_s}"
            )
            raise ConfigError(msg)
        for op in operators:
            missing = [topic for topic in getattr(op, "reads", ()) if topic not in inputs]
            if missing:
                # A join side not read was never read: the join paired nothing, with no word.
                msg = (
                    f"application {name!r}: operator {op.id!r} reads {', '.join(map(repr, missing))}, "
                    f"which is not among its inputs {list(inputs)}; add it (a repartition topic of its "
                    "own too: the application reads only what it is given)"
                )
                raise ConfigError(msg)
        asked = {op.id: skew for op in operators if (skew := op.event_time_skew_s) is not None}
        for op_id, skew in asked.items():
            if not 0 <= skew < float("inf"):
                msg = (
                    f"application {name!r}: operator {op_id!r} asks for an event_time_skew_s of {skew}; "
                    ">= 0 seconds expected"
                )
                raise ConfigError(msg)
        #: The operators that turned alignment on (none when it was given, or is off).
        self.aligned_for: list[str] = []
        #: Its own topics (repartition topics) that it reads too (see _align).
        self._rekeyed_inputs = frozenset(spec.name for spec in internal_topics) & frozenset(inputs)
        if max_event_time_skew_s is None and asked:
            max_event_time_skew_s = min(asked.values())
            self.aligned_for = sorted(asked)
        if max_event_time_skew_s is not None and not 0 <= max_event_time_skew_s < float("inf"):
            msg = (
                f"application {name!r}: max_event_time_skew_s must be >= 0 seconds (or None: off); "
                f"got {max_event_time_skew_s}"
            )
            raise ConfigError(msg)
        if peer_skew_s is not None and (max_event_time_skew_s is None or not 0 <= peer_skew_s < float("inf")):
            msg = (
                f"application {name!r}: peer_skew_s (event-time alignment across its processes) must be "
                ">= 0 seconds, and needs its inputs aligned in event time (max_event_time_skew_s, or an "
                f"operator's event_time_skew_s); got {peer_skew_s}, with max_event_time_skew_s "
                f"{max_event_time_skew_s}"
            )
            raise ConfigError(msg)
        if skip_types and decode is not None:
            msg = (
                f"application {name!r}: skip_types tells canonical records by their type tag; "
                f"with a decoder of its own ({decode!r}) the records are not canonical"
            )
            raise ConfigError(msg)
        if not 0 <= store_lock_wait_s < float("inf"):
            msg = f"application {name!r}: store_lock_wait_s must be >= 0 seconds; got {store_lock_wait_s}"
            raise ConfigError(msg)
        if not 0 < alignment_idle_s < float("inf"):
            msg = (
                f"application {name!r}: alignment_idle_s must be > 0 seconds (finite); got {alignment_idle_s}"
            )
            raise ConfigError(msg)
        if alignment_max_buffered < 1:
            msg = (
                f"application {name!r}: alignment_max_buffered must be at least 1; got "
                f"{alignment_max_buffered}"
            )
            raise ConfigError(msg)
        txn_ms = (producer_overrides or {}).get("transaction.timeout.ms")
        transactional = guarantee == "exactly_once" or any(op.stores for op in operators)
        if txn_ms is not None and transactional and float(txn_ms) < 2000 * checkpoint_interval_s:
            # A checkpoint's transaction is open an interval and more: Kafka aborted every one,
            # and the application processed everything twice, with a warning each time.
            msg = (
                f"application {name!r}: producer_overrides' transaction.timeout.ms ({txn_ms} ms) must "
                f"be at least twice checkpoint_interval_s ({checkpoint_interval_s:g} s): a checkpoint's "
                "transaction is open an interval and more, and Kafka aborts it at its timeout (leave it "
                "out: the runtime sets three intervals, at least 30 s)"
            )
            raise ConfigError(msg)
        clients: tuple[tuple[Literal["consumer", "producer"], dict[str, Any] | None], ...] = (
            ("consumer", consumer_overrides),
            ("producer", producer_overrides),
        )
        for which, overrides in clients:
            for option in overrides or {}:
                why = refused_override(option, which)
                if why is None and which == "consumer" and settings.kafka_group_protocol == "consumer":
                    why = classic_group_refusal(option)
                if why is not None:
                    msg = f"application {name!r}: {which}_overrides may not set {option!r}: {why}"
                    raise ConfigError(msg)
        self.settings = settings
        self.name = name
        self.inputs = list(inputs)
        self.operators = list(operators)
        self.guarantee: Guarantee = guarantee
        self._eos = guarantee == "exactly_once"
        self.dlq_topic = dlq_topic or f"dlq.{name}"
        self.late_topic = late_topic or f"{name}.late"
        self.batch_size = batch_size
        #: How long an idle loop waits for a record (at most until a checkpoint is due).
        self.batch_timeout_s = batch_timeout_s
        #: Records a batch asks for now: ``batch_size``, or fewer while the operators are slow
        #: enough that a full batch would outlast ``max.poll.interval.ms`` (see _pace_batches).
        self._batch_cap = batch_size
        #: The operators' recent cost per record (seconds), rising at once, falling slowly.
        self._record_cost = 0.0
        #: The records and seconds of the batch that last made batches smaller (_pace_batches).
        self._before_shrink = (0, 0.0)
        #: The records handed to the operators whose batch has not finished (0: none; see
        #: _pace_after_expiry).
        self._handed = 0
        #: max.poll.interval.ms, in seconds (read when run() starts), and the batches of one
        #: record that outlasted it, each within three intervals of the one before, the last when.
        self._poll_interval_s = 300.0
        self._overruns = 0
        self._last_overrun_at = -math.inf
        #: The most records a batch (aligned, a release, which may hold many times batch_size)
        #: may hand the operators at their recent cost (_NO_CAP: no limit); _batch_cap is it
        #: within batch_size.
        self._cap = _NO_CAP
        self.checkpoint_interval_s = checkpoint_interval_s
        #: Names the transactional producer (exactly-once, or at-least-once with state: the one
        #: that commits state and offsets).  Unset: ``<home id>-<slot>``, the
        #: lowest slot free in this home when run() starts (:mod:`vigil.stream.instance`), so a process
        #: restarted after a crash fences its predecessor's open transaction at once.
        self.instance_id = instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self._slot = None if instance_id else InstanceSlot(slot_directory(settings.home), name)
        self.internal_topics = list(internal_topics)
        #: Topics it writes that others own too (normalise's canonical topics): created when
        #: missing, their live settings left as they are.
        self.output_topics = list(output_topics)
        if gc_young is not None and gc_young <= 0:
            msg = (
                f"application {name!r}: gc_young must be a positive number of objects or None; got {gc_young}"
            )
            raise ConfigError(msg)
        self.gc_young = gc_young
        #: Event-time alignment (see the module docstring); ``None``: off, unless an operator asks
        #: for it (``Operator.event_time_skew_s``: the smallest asked).  Read when run() starts.
        self.max_event_time_skew_s = max_event_time_skew_s
        self.alignment_max_buffered = alignment_max_buffered
        self.alignment_idle_s = alignment_idle_s
        #: How long an assigned partition's store may stay open in another process of this home
        #: before the application gives up (see _open_stores).
        self.store_lock_wait_s = store_lock_wait_s
        self.alignment: Alignment | None = None
        #: Event-time alignment with the application's other processes (:mod:`vigil.stream.peers`);
        #: ``None``: each aligns alone.
        self.peer_skew_s = peer_skew_s
        self._peers: PeerChannel | None = None
        #: With peer alignment: per partition, the latest event time released (see _release);
        #: since when a partition has had a backlog's records waiting; whether the others' cap
        #: held records back in the last release, and which partitions' (Alignment.plan pauses
        #: them once they buffer its cap).
        self._released_at: dict[TP, float] = {}
        self._catching_up_since = -math.inf
        self._backlog_seen_at = -math.inf
        self._peer_held = False
        self._peer_held_tps: set[TP] = set()
        self._consumer_overrides = dict(consumer_overrides or {})
        self._producer_overrides = dict(producer_overrides or {})
        self.stores: dict[str, StoreSpec] = {}
        for op in self.operators:
            for spec in op.stores:
                self.stores[spec.id] = spec
        if not self._eos and self.stores and checkpoint_interval_s > MAX_AT_LEAST_ONCE_STATE_CHECKPOINT_S:
            msg = (
                f"application {name!r}: at-least-once checkpoint_interval_s is at most "
                f"{MAX_AT_LEAST_ONCE_STATE_CHECKPOINT_S:.0f} s with state (a checkpoint's state "
                "transaction stays open half an interval and up to 4 more minutes, and Kafka aborts one "
                f"open longer than 15 minutes); got {checkpoint_interval_s}"
            )
            raise ConfigError(msg)
        #: Aligned release (see _release): the ids of the operators with state, and without.
        self._stateful = frozenset(op.id for op in self.operators if op.stores)
        self._stateless = frozenset(op.id for op in self.operators if not op.stores)
        self.metrics = AppMetrics()
        self.prometheus = PrometheusMetrics(name)
        self.state_dir = settings.home / "state" / name
        #: Set once an assignment (the first, or a later one) leaves nothing being restored: its
        #: partitions are all ready to process.  Never cleared: a later assignment's restore
        #: shows in ``metrics.restoring`` (and the restoring-partitions gauge).
        self.assigned = threading.Event()

        self._codec = EventCodec()
        self._decode = decode
        #: How the records counted and committed past undecoded begin (``skip_types``; see the
        #: module docstring).
        self._skip = _skip_prefixes(skip_types)
        self._stop = threading.Event()
        self._tasks: dict[int, _PartitionTask] = {}
        #: Partition numbers assigned whose stores are being restored, or are still open in another
        #: process of the home (their partitions paused until they are open and restored).
        self._restoring: dict[int, _PartitionTask] = {}
        self._restorer: Restorer | None = None
        self._owned: set[tuple[str, int]] = set()
        self._next_offsets: dict[tuple[str, int], int] = {}
        #: Aligned: each partition's records waiting for the floor, in offset order, as
        #: ``(event time, Record, its Message)`` (the message for its headers, should an operator
        #: dead-letter it), a skipped record's offset as ``(its predecessor's time, offset)`` and
        #: an undecodable one's letter as ``(-inf, letter)``.
        self._buffers: dict[TP, deque[tuple[Any, ...]]] = {}
        #: Aligned: records left in partitions nothing was consumed from yet (see _start_lag).
        self._start_lags: dict[TP, tuple[float, int | None]] = {}
        #: Until when (monotonic) no such question is asked, after one had no answer, and how long
        #: the next quiet is.
        self._start_lag_quiet_until = 0.0
        self._start_lag_quiet_s = _START_LAG_QUIET_S
        #: A rewind waiting for committed offsets that had no answer (see _rewind): warned once.
        self._rewind_waiting = False
        #: Partitions whose last records-left question had no answer (see _start_lag_settled).
        self._start_lag_unanswered: set[TP] = set()
        #: Partitions whose question had no answer this pass: asked after the others next time.
        self._start_lag_failed: list[TP] = []
        #: The lag gauge's partitions nothing was delivered from since their assignment: where
        #: they start reading (None: not known) and when it was asked, their end and their log
        #: start (see _unread_lags).
        self._unread: dict[TP, tuple[int | None, float, int, int]] = {}
        #: When the lag gauge last asked the ends of those partitions (all together, see
        #: _unread_lags), and until when it asks the broker nothing (a question failed).
        self._unread_ends_at = -_UNREAD_ASK_EVERY_S
        self._unread_quiet_until = 0.0
        #: Aligned: the next offset to consume per partition, as consumed (asking the consumer
        #: for its positions on every plan cost ~1 ms with a few dozen partitions).
        self._consumed: dict[TP, int] = {}
        #: Per partition owned, the first offset read of it since its assignment: where a rewind
        #: starts while nothing is committed (auto.offset.reset may not say where reading began).
        self._first_read: dict[TP, int] = {}
        #: The same for partitions lost (session timeout) before anything of them was committed.
        self._lost_first_read: dict[TP, int] = {}
        #: Reading from the end ("latest"): where partitions assigned with nothing committed
        #: start, to be committed before anything read of them is processed (see _resumed).
        self._starts: dict[TP, int] = {}
        #: Whether ``auto.offset.reset`` is "latest": set when run() makes the consumer.
        self._from_the_end = False
        self._delivery_errors: list[str] = []
        #: Fatal errors the clients reported (a fenced producer), for the message that stops the loop.
        self._fatal_errors: list[str] = []
        #: At-least-once with state: the same of the state producer, kept apart: a changelog
        #: record refused fails its transaction's commit anyway (which says whether the producer
        #: expired and is renewed, see _settle_commit), and a renewal forgets them, not the
        #: producer of outputs'.  (Checked with the outputs', a fenced changelog record stopped
        #: the application before the commit could renew: found in review, 2026-12-04.)
        self._state_delivery_errors: list[str] = []
        #: The topics outputs were sent to, for a failed checkpoint to name those missing.
        self._output_topics: set[str] = set()
        self._state_fatal_errors: list[str] = []
        #: At-least-once checkpoints waiting for Kafka's acknowledgement: (sealed at, offsets, writes).
        self._sealed: deque[tuple[float, list[TopicPartition], _Writes]] = deque()
        #: At-least-once: the checkpoint whose writes are being encoded and sent (see _seal).
        self._sealing: _Seal | None = None
        #: At-least-once with state: the seal whose transaction is committing (see _start_commit).
        self._committing: _Committing | None = None
        #: The thread of the transactional producer's blocking calls (see vigil.stream.calls);
        #: a call given up on it while stopping, maybe still waiting for the broker; when the
        #: wait for one was last said (_say_overdue).
        self._committer: CallThread | None = None
        self._given_up: Future[None] | None = None
        #: The consumer's synchronous offset commit given up when stopping (see _commit_offsets),
        #: maybe still waiting for the broker: the consumer is not closed under it.
        self._commit_given_up: Future[Any] | None = None
        #: Inside a rebalance callback, so inside the consumer's own call (consume, close).
        self._in_callback = False
        self._overdue_said_at = -_OVERDUE_SAY_EVERY_S
        #: A transactional producer's start given up when stopping (see _asked), maybe still
        #: asking the broker for its transactional id.
        self._start_given_up: Future[Any] | None = None
        #: State writes Kafka has, waiting for RocksDB (see _write_step).
        self._writes: deque[_PendingWrite] = deque()
        #: Wall time as of which the owned stores are known current with their changelogs: the
        #: start of the last commit that showed this member still owned its partitions (input
        #: offsets sent with the group's metadata).  Recorded with each store for the restore,
        #: which starts a store afresh when this is older than the changelog keeps deletions.
        #: Not "now": after a pause (a frozen VM) another member may have owned the partitions.
        self._current_at: float | None = None
        #: When the owned stores were last touched, and ownership last shown by a commit while
        #: idle (perf_counter; see _checkpoint, _prove_ownership).
        self._touched_at = -math.inf
        self._proved_at = -math.inf
        #: How often the stores are recorded current, and an idle member shows it still owns its
        #: partitions (seconds; see _checkpoint).
        self.touch_every_s = _TOUCH_EVERY_S
        #: Checkpoint work spread over time (see _SPREAD): encoding a seal, writing to RocksDB.
        self._encode_pace = Pace()
        self._write_pace = Pace()
        #: The messages of the batch (or the aligned release) the operators are processing (see
        #: _headers_of).
        self._batch: list[Message] | None = None
        #: The batch's messages by position, made the first time a letter asks (_headers_of).
        self._batch_index: dict[tuple[str, int, int], Message] | None = None
        #: When the loop last checkpointed and planned alignment (monotonic; see _iterate).
        self._last_checkpoint = 0.0
        self._last_align = 0.0
        self._batch_headers: dict[tuple[str, int, int], list[tuple[str, bytes | None]] | None] = {}
        self._in_txn = False
        #: When the open transaction began (CLOCK_BOOTTIME), its producer's transaction timeout
        #: (seconds), and how to make that producer again (see _renewed_after_timeout): the
        #: producer of outputs exactly-once, the state producer at-least-once with state.
        self._txn_began: float | None = None
        self._txn_timeout_s = math.inf
        self._new_producer: Callable[[], Producer] | None = None
        #: Producers renewed since the last commit once batches could be made no smaller
        #: (counted towards the stop), and every one (see _renew_expired).
        self._renewals = 0
        self._expiries = 0
        #: Checkpoints aborted in a row after an abortable failure (see _aborted_to_retry).
        self._aborted_checkpoints = 0
        self._failed = False
        self._lost = False
        #: What the assignment callback raised, raised again once ``consume`` has returned (see
        #: _assign_callback).
        self._callback_error: BaseException | None = None
        #: Since when the consumer has been joining its group (classic protocol: from its
        #: subscription, or the loss of its partitions, to the next assignment), and whether that
        #: has been said (see _joining_too_long).
        self._joining_since: float | None = None
        self._joining_said = False
        #: Stopping with the broker out of reach, the last checkpoint given up: closing does not
        #: wait for what the producers hold (see _abandoned_stopping).
        self._abandoned = False
        self._partitions = 0
        self._co_partitioned = True
        self._producer: Producer | None = None
        #: At-least-once with state: the transactional producer of changelog records and offsets
        #: (exactly-once: ``_producer`` is transactional and carries them; stateless: none).
        self._state_producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._last_gauges = 0.0
        #: The stores' keys counted for their gauge, a few a turn (see vigil.stream.keycount).
        self._key_counter = KeyCounter()
        self._inputs_checked = 0.0

    # ------------------------------------------------------------------ lifecycle

    @property
    def exactly_once(self) -> bool:
        return self.guarantee == "exactly_once"

    def consumer_settings(self) -> dict[str, Any]:
        """The librdkafka configuration of this application's consumer: the cluster's client
        settings, the runtime's fetch defaults (:data:`FETCH_DEFAULTS`), then the overrides."""
        # A member gone for 10 s loses its partitions (librdkafka's default is 45 s).  The classic
        # protocol's settings: under the consumer protocol the broker holds them (the local broker
        # sets the same, vigil.hub.broker).
        session = (
            {"session.timeout.ms": 10_000, "heartbeat.interval.ms": 1_000}
            if self.settings.kafka_group_protocol == "classic"
            else {}
        )
        return consumer_config(
            self.settings, self.name, **{**session, **FETCH_DEFAULTS, **self._consumer_overrides}
        )

    def stop(self) -> None:
        """Ask the loop to finish: it checkpoints, closes its stores and returns (thread-safe)."""
        self._stop.set()

    def run(self) -> None:
        """Process until :meth:`stop` (or SIGTERM/SIGINT when called from the main thread)."""
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            # (See vigil.stream.collector: process-wide, put back on return.)
            with collecting_young(self.gc_young) as collector:
                try:
                    self._setup()
                except KafkaException as exc:
                    # (Its calls ask the broker: out of reach, a raw client error came out of run().)
                    if self._stop.is_set():
                        log.warning("application %s: stopped while starting: %s", self.name, error_text(exc))
                        return
                    where = self.settings.kafka_bootstrap or (
                        f"{self.settings.broker_host}:{self.settings.broker_port}"
                    )
                    msg = (
                        f"application {self.name!r}: starting: {error_text(exc)} (is the Kafka cluster "
                        f"at {where} up and reachable?)"
                    )
                    raise PipelineError(msg) from exc
                try:
                    self._loop(collector)
                    # Inside: a final checkpoint that fails (deliveries refused) must not be
                    # committed by the revocation that closing the consumer runs.
                    self._checkpoint(sync=True)
                except KafkaException as exc:
                    self._fail()
                    raise self._client_failure(exc) from exc
                except BaseException:
                    self._fail()
                    raise
        finally:
            self._close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _client_failure(self, exc: KafkaException) -> PipelineError:
        """The error to stop with when a client call raised: a client's fatal error (a fenced
        producer, say) surfaces at whichever call comes next, often as a bare "fatal error", so
        the message names the application and adds the fatal error the client reported."""
        err = kafka_error(exc)
        # The client raises "fatal" the moment it marks itself failed and queues the reason (a
        # fenced producer) just after: wait briefly for the reason rather than lose it to the race.
        deadline = time.monotonic() + (_FATAL_REASON_WAIT_S if _is_fatal(exc) else 0.0)
        wait = 0.0
        while True:
            for producer in (self._producer, self._state_producer):
                try:
                    if producer is not None:
                        producer.poll(wait)  # serves the error callback (_on_client_error)
                except KafkaException as raised_exc:  # or raises the fatal error itself
                    raised = kafka_error(raised_exc)
                    self._fatal_errors.append(raised.str() if raised is not None else str(raised_exc))
            reported = self._fatal_errors + self._state_fatal_errors
            if reported or time.monotonic() >= deadline:
                break
            wait = 0.05
        msg = f"application {self.name!r}: Kafka client failed: {exc.args[0]}"
        if reported and (err is None or reported[0] != err.str()):
            msg += f"; its fatal error: {reported[0]}"
        return PipelineError(msg)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("application %s: signal %d, stopping", self.name, signum)
        self.stop()

    def _setup(self) -> None:
        self.alignment = (
            None
            if self.max_event_time_skew_s is None
            else Alignment(self.max_event_time_skew_s, self.alignment_idle_s, self.alignment_max_buffered)
        )
        for op in self.operators:
            for warning in op.input_warnings(self._rekeyed_inputs):
                log.warning("application %s: %s", self.name, warning)
        if self.aligned_for:
            log.info(
                "application %s: inputs aligned in event time (skew %g s), as %s asks",
                self.name,
                self.max_event_time_skew_s,
                ", ".join(map(repr, self.aligned_for)),
            )
        self._poll_interval_s = float(self.consumer_settings().get("max.poll.interval.ms", 300_000)) / 1000
        admin = make_admin(self.settings)
        topics = self._asked("list_topics", lambda: admin.list_topics(timeout=_TIMEOUT).topics)
        internal = {spec.name: spec for spec in self.internal_topics}
        counts: dict[str, int] = {}
        for topic in self.inputs:
            meta = topics.get(topic)
            if meta is None or meta.error is not None:
                if topic in internal:
                    # A topic of its own (its repartition topic) does not exist before the
                    # application's first start: created below, once the counts agree (a wrong
                    # count created first had to be deleted by hand).
                    counts[topic] = internal[topic].partitions or self.settings.default_partitions
                    continue
                msg = f"application {self.name!r}: input topic {topic!r} does not exist (create it first)"
                raise TopicError(msg)
            counts[topic] = len(meta.partitions)
        self._co_partitioned = len(set(counts.values())) == 1
        if not self._co_partitioned and self.stores:
            raise self._uneven_inputs(counts, internal)
        self._partitions = max(counts.values())
        self._inputs_checked = time.monotonic()  # (just looked up: _check_inputs asks again later)
        # Topics only this application uses, kept as declared: a changelog someone had set to
        # cleanup.policy=delete and 7 days' retention kept it, and state not written for a week
        # was missing after a restore.
        owned = [
            *self.internal_topics,
            *(changelog_spec(self.name, sid, self._partitions) for sid in self.stores),
            *([peers_topic_spec(self.name)] if self.peer_skew_s is not None else []),
        ]
        if owned:
            self._asked("creating its own topics", lambda: ensure_topics(self.settings, owned, owned=True))
        specs: list[TopicSpec] = list(self.output_topics)
        # Declared topics (dlq.<stage>) are created as declared; others with one partition.
        kinds: tuple[tuple[str, Literal["dead_letter", "raw"], str], ...] = (
            (self.dlq_topic, "dead_letter", f"Records application {self.name!r} could not process"),
            (self.late_topic, "raw", f"Events too late for the windows of application {self.name!r}"),
        )
        for name, value, description in kinds:
            # A dead-letter topic there already is checked too: one made by an earlier version
            # (7 days) is said, at every start, to lose letters before the month they are kept.
            if name in topics and value != "dead_letter":
                continue
            spec = TOPICS.get(name) if name in TOPICS else None
            if spec is None:
                spec = TopicSpec(
                    name=name, key="original key", value=value, description=description, partitions=1
                )
                if value == "dead_letter":
                    # (A month, as the declared dlq.<stage> topics: the default 7 days, where the
                    # README says 30, found in review.)
                    spec = dataclasses.replace(spec, retention=DEAD_LETTER_RETENTION)
            specs.append(spec)
        if specs:
            self._asked("creating its output topics", lambda: ensure_topics(self.settings, specs))

        # Delivery reports only for failures, to one callback: a Python call per record would cost
        # as much as the record itself.  Changelog offsets are counted instead (see _queue_writes).
        # TCP_NODELAY, as for the consumer (FETCH_DEFAULTS): Nagle would hold a small request (a few
        # alerts) back until the previous segment is acknowledged.
        pconf: dict[str, Any] = {
            # Changelog records up to the changelog topics' limit (with room for the batch framing).
            "message.max.bytes": CHANGELOG_MAX_BYTES + 64 * 1024,
            "linger.ms": 5,
            "socket.nagle.disable": True,
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery_error,
            "error_cb": self._on_client_error,
        }
        transactional = self.exactly_once or bool(self.stores)
        if transactional and self._slot is not None:
            self.instance_id = default_instance_id(self.settings.home, self._slot.acquire())
        if transactional:
            self._committer = CallThread(f"{self.name}-commit")
            self._given_up = None

        def producer(
            timeout_s: float | None = None, message_timeout_s: float | None = None, of_state: bool = False
        ) -> Producer:
            """A producer of this application, transactional when given a transaction timeout
            (``of_state``: the at-least-once state producer, whose reports are kept apart)."""
            conf = dict(pconf)
            if of_state:
                conf["on_delivery"] = self._on_state_delivery_error
                conf["error_cb"] = self._on_state_client_error
            if timeout_s is not None:
                conf["transactional.id"] = f"{self.name}-{self.instance_id}"
                conf["transaction.timeout.ms"] = int(timeout_s * 1000)
            if message_timeout_s is not None:
                # (Unset, librdkafka takes the transaction's timeout for it; it may not exceed
                # that, an overridden one included.)
                txn_ms = self._producer_overrides.get(
                    "transaction.timeout.ms", conf["transaction.timeout.ms"]
                )
                conf["message.timeout.ms"] = min(int(message_timeout_s * 1000), int(txn_ms))
            made = new_producer(producer_config(self.settings, **{**conf, **self._producer_overrides}))
            if timeout_s is not None:
                self._asked("init_transactions", lambda: made.init_transactions(_TIMEOUT), holds_id=True)
            return made

        if self.exactly_once:
            # An output Kafka has not taken in 30 s fails the checkpoint, whatever the interval
            # (as when the transaction's timeout was a fixed 30 s).
            timeout = transaction_timeout_s(self.checkpoint_interval_s)
            self._new_producer = lambda: producer(timeout, min(30.0, timeout))
            self._producer = self._new_producer()
            overridden = self._producer_overrides.get("transaction.timeout.ms")
            self._txn_timeout_s = timeout if overridden is None else float(overridden) / 1000
        else:
            self._producer = producer()
        if not self.exactly_once and self.stores:
            # A state transaction is open while a seal's writes are encoded and until every output
            # before it is acknowledged: see state_transaction_timeout_s.
            state_timeout = state_transaction_timeout_s(self.checkpoint_interval_s)
            self._new_producer = lambda: producer(state_timeout, of_state=True)
            self._state_producer = self._new_producer()
            overridden = self._producer_overrides.get("transaction.timeout.ms")
            self._txn_timeout_s = state_timeout if overridden is None else float(overridden) / 1000
        consumer_settings = self.consumer_settings()
        self._from_the_end = reads_from_the_end(consumer_settings)
        if self.peer_skew_s is not None:
            # Its instance id, stable across restarts in its home when it has one of its own (a
            # transactional producer): a restart after a crash replaces its predecessor's word.
            member = (
                self.instance_id
                if transactional or self._slot is None
                else f"{self.instance_id}-{uuid.uuid4().hex[:8]}"
            )
            self._peers = PeerChannel(
                PeerFloors(
                    member,
                    self.peer_skew_s,
                    [(topic, p) for topic, count in counts.items() for p in range(count)],
                    time.monotonic(),
                ),
                peers_topic_spec(self.name).name,
                producer_config(self.settings, **{"linger.ms": 0, "socket.nagle.disable": True}),
                consumer_config(
                    self.settings,
                    f"{self.name}.peers",
                    **{"fetch.wait.max.ms": 10, "socket.nagle.disable": True},
                ),
            )
        self._consumer = new_consumer(consumer_settings)
        # Co-partitioned: the group assigns the first input; the others follow (see the module docstring).
        # Otherwise (stateless, unequal partition counts) every input is assigned on its own.
        self._consumer.subscribe(
            [self.inputs[0]] if self._co_partitioned else self.inputs,
            on_assign=self._assign_callback,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._joining()

    def _close(self) -> None:
        # One try for all of it: closing the consumer revokes (a checkpoint, the stores closed),
        # and whatever that raises must still shut the committer down and free the slot.
        try:
            self._settle_quietly()
            consumer, self._consumer = self._consumer, None
            pending, self._commit_given_up = self._commit_given_up, None
            if consumer is not None and pending is not None and not pending.done():
                # A commit given up still waits for the broker in the consumer: closed under it,
                # the close waits for it too.  Left to go with its last reference, once the
                # commit returns (the group's session ends its membership meanwhile).
                log.warning(
                    "application %s: the consumer is left to close once the broker answers its last commit",
                    self.name,
                )
                # As a revocation would: the partitions are the next owner's now, those still
                # being restored too (their lag is shown as well).
                for topic, part in self._owned | self._restoring_partitions():
                    _forget(self.prometheus.lag, self.name, topic, str(part))
                    _forget(self.prometheus.paused, self.name, topic, str(part))
                self._owned.clear()
                self.metrics.paused = []
            elif consumer is not None:
                try:
                    consumer.close()  # cooperative: revokes (and so checkpoints) what is left
                except (KafkaException, RuntimeError) as exc:
                    log.warning("application %s: closing the consumer: %s", self.name, exc)
            for number in list(self._tasks):
                self._close_task(number)
            for number in list(self._restoring):
                self._stop_restoring(number, None)  # (the consumer is closed)
            self._assignment_changed()
            if self._restorer is not None:
                self._restorer.close()
                self._restorer = None
            if self._in_txn:
                self._abort_txn(quiet=True)
            for producer in (self._producer, self._state_producer):
                if producer is not None:
                    try:
                        if self._abandoned:  # (processed again at the next start)
                            producer.purge(in_queue=True, in_flight=True, blocking=False)
                        producer.flush(1 if self._abandoned else 10)
                    except KafkaException as exc:  # fatal already (fenced): what stopped us says so
                        log.warning("application %s: flushing a producer: %s", self.name, exc)
        finally:
            self._settle_quietly()  # (a revocation while closing may have started one)
            if self._committer is not None:
                self._committer.close()  # (not waited for: a call given up may wait for the broker)
                self._committer = None
            if self._peers is not None:
                self._peers.close()  # (its words stay: the partitions' next owners say them again)
                self._peers = None
            # Also after a fatal producer error (a refused transactional id): the slot is free again.
            self._producer = self._state_producer = None
            if self._slot is not None:
                self._release_slot(self._slot)

    def _release_slot(self, slot: InstanceSlot) -> None:
        """Free the instance slot, or, while a producer's start given up when stopping still asks
        the broker for the slot's transactional id (see _asked), once it has returned: taken
        before, the id's next producer could be fenced by the one given up, as it got its
        answer (found in review, 2026-12-06).  A restart of this application meanwhile takes
        another slot."""
        pending = self._start_given_up
        self._start_given_up = None
        if pending is None or pending.done():
            slot.release()
            return
        pending.add_done_callback(lambda _: slot.release())
        self._slot = InstanceSlot(slot.directory, slot.name)

    def _fail(self) -> None:
        """After an error: commit nothing of the current checkpoint."""
        self._failed = True
        self._settle_quietly()
        if self._in_txn:
            self._abort_txn(quiet=True)

    # ------------------------------------------------------------------ the loop

    def _running_clients(self) -> tuple[Producer, Consumer]:
        if self._producer is None or self._consumer is None:
            msg = f"application {self.name!r} is not running (call run())"
            raise PipelineError(msg)
        return self._producer, self._consumer

    def _loop(self, collector: Collector) -> None:
        consumer = self._running_clients()[1]  # (not the producer: it may be renewed)
        self._last_checkpoint = time.monotonic()
        self._last_align = 0.0
        while not self._stop.is_set():
            try:
                self._iterate(consumer, collector)
            except KafkaException as exc:
                # After a stall past the transaction's timeout: the fenced producer fails at
                # whichever call comes next (an output, a changelog record, the commit); after a
                # record the broker refused, the next output or changelog record (_refused).
                if not self._renewed_after_timeout(exc) and not self._retried_after_refusal(exc):
                    raise

    def _iterate(self, consumer: Consumer, collector: Collector) -> None:
        """One round of the loop: a batch, then whatever checkpoint work is due."""
        restoring = self._restorer is not None
        cap = self._batch_cap
        msgs = consumer.consume(cap, 0)
        if not msgs and not restoring:  # (restoring: the restore step waits instead)
            # Idle: wait for the first record, then take whatever else is already there.  (Not
            # past the next checkpoint: what was processed would wait for it.)
            due = self._last_checkpoint + self.checkpoint_interval_s - time.monotonic()
            msgs = consumer.consume(1, min(self.batch_timeout_s, max(due, 0.001)))
            if msgs and cap > 1:
                msgs += consumer.consume(cap - 1, 0)
        if self._callback_error is not None:
            self._raise_callback_error()
        if self._lost:
            msgs = self._after_rewind(msgs)
        if self._starts:
            self._commit_new_starts()
            if self._commit_given_up is not None:
                return  # (stopping, its commit still in the consumer: nothing more asks it)
        # (Each step below is timed and the longest of each kind kept, AppMetrics.longest_step_s:
        # the records that arrive meanwhile wait for it, so it bounds what it adds to latency.)
        longest = self.metrics.longest_step_s
        began = time.perf_counter()
        if msgs:
            self._process(msgs)
            began = _step(longest, "process", began)
        if self.alignment is not None and (
            msgs or time.monotonic() - self._last_align >= _ALIGN_IDLE_EVERY_S
        ):
            self._align()  # (aligned, records are processed here as they are released)
            self._last_align = time.monotonic()
            began = _step(longest, "process", began)
        if self._sealing is not None:
            self._encode_step(self._encode_pace.take(time.monotonic()))
            began = _step(longest, "encode", began)
        if self._sealed or self._committing is not None:
            self._complete_epochs()
            began = _step(longest, "complete", began)
        if self._writes:
            self._write_step(self._write_pace.take(time.monotonic()))
            began = _step(longest, "write", began)
        if self._restoring or restoring:
            self._restore_step(consumer, 0.0 if msgs else _RESTORE_WAIT_S)
            began = time.perf_counter()  # (not timed: when idle, it waits for records)
        now = time.monotonic()
        if now - self._last_checkpoint >= self.checkpoint_interval_s:
            self._checkpoint()
            _step(longest, "checkpoint", began)
            self._last_checkpoint = time.monotonic()
        elif now - self._last_gauges >= 1.0:
            # (Checkpoints update them too: with a long interval, "when the loop last went
            # round" aged between them, and an alert on it fired on a healthy loop.)
            self._update_gauges()
        if self._joining_since is not None:
            self._joining_too_long(now)
        if self._co_partitioned and len(self.inputs) > 1 and now - self._inputs_checked >= _INPUTS_EVERY_S:
            self._check_inputs(consumer)
            self._inputs_checked = time.monotonic()  # (after: a broker that does not answer costs a second)
        took = collector.step(not msgs, now)
        if took:
            self.prometheus.gc.labels(self.name).observe(took)
            m = self.metrics
            m.gc_collections, m.gc_seconds, m.gc_longest_s = (
                collector.collections,
                collector.seconds,
                collector.longest_s,
            )

    def _process(self, msgs: list[Message]) -> None:
        if self.alignment is not None:
            self._buffer(msgs, self.alignment)
            return
        started = time.perf_counter()
        #: Per partition, its events and their messages (the records are built from them only
        #: if an operator asks: see RecordBatch).
        groups: dict[int, tuple[list[Any], list[Message]]] = {}
        offsets = self._next_offsets
        owned = self._owned
        decode = self._decode
        codec_decode = self._codec._decoder.decode
        # Dead-lettered after the loop: a send that fails there (a fenced producer, see
        # _renewed_after_timeout) leaves every partition's first offset read known (_rewind).
        letters: list[tuple[str, int, int, bytes | None, bytes, str, str, Any]] = []
        skipped = 0
        skip = self._skip
        only_topic = self.inputs[0] if len(self.inputs) == 1 else None
        first_read = self._first_read
        # The per-record loop is the runtime's own hot path: messages arrive in runs of one
        # partition, so the partition is looked up (and its next offset stored) once per run.
        run_topic: str | None = None
        run_part = -1
        run_owned = False
        #: The run's last message (None: nothing of it owned): its offset is the run's last.
        last: Message | None = None
        events: list[Any] = []
        kept: list[Message] = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                self._consumer_error(err)
                continue
            topic = msg.topic() if only_topic is None else only_topic
            part = msg.partition()
            if part != run_part or topic != run_topic:
                if last is not None:
                    offsets[run_topic, run_part] = last.offset() + 1  # type: ignore[index]
                run_topic, run_part = topic, part
                # Not owned: fetched before a revocation; the new owner reads it from the committed offset.
                run_owned = (topic, part) in owned
                events, kept = groups.setdefault(part, ([], []))
                last = None
                if run_owned and (topic, part) not in first_read:
                    first_read[topic, part] = msg.offset()
            if not run_owned:
                continue
            last = msg
            value = msg.value()
            if skip and value is not None and value.startswith(skip):
                skipped += 1
                continue
            try:
                if value is None:
                    raise ContractError(_TOMBSTONE)
                if decode is None:
                    event = codec_decode(value)
                else:
                    event = decode(topic, value, msg.key(), read_headers(msg))
            except DECODE_ERRORS as exc:
                letters.append(_undecodable(msg, exc))
                continue
            events.append(event)
            kept.append(msg)
        if last is not None:
            offsets[run_topic, run_part] = last.offset() + 1  # type: ignore[index]
        if skipped:
            self._count_skipped(skipped)
        for letter in letters:
            self._dead_letter(*letter)
        batches: dict[int, Sequence[Record[Any]]] = {
            part: RecordBatch(events, functools.partial(_records_of, only_topic, part, kept, events))
            for part, (events, kept) in groups.items()
        }
        count = len(letters) + skipped + sum(len(b) for b in batches.values())
        self._batch = msgs  # (for the headers of a record an operator dead-letters: _headers_of)
        try:
            self._run_operators(batches, count, len(msgs), started)
        finally:
            self._batch = None
            self._batch_headers.clear()
            self._batch_index = None

    def _count_late(self) -> None:
        self.metrics.late += 1
        self.prometheus.late.labels(self.name).inc()

    def _headers_of(self, record: Record[Any]) -> list[tuple[str, bytes | None]] | None:
        """The headers of ``record``, an input of the batch being processed, for its dead letter:
        a letter without them cannot be sent again once its record has left the topic (``redrive
        --rebuild`` needs them; raw records are read by theirs).  ``None`` when they are not at
        hand: a record an operator made, or headers the client cannot read.  (Aligned, a
        record's message waits with it, for its headers: the letters had none, found in review.)"""
        batch = self._batch
        if batch is None:
            return None  # (not cached: nothing clears the cache outside a batch)
        at = (record.topic, record.partition, record.offset)
        if at in self._batch_headers:  # (asked again after a failure, the client crashes)
            return self._batch_headers[at]
        index = self._batch_index
        if index is None:
            # Once a batch: a scan a letter took a release's whole length each (an operator that
            # dead-letters every record of a release of thousands).
            index = self._batch_index = {(m.topic(), m.partition(), m.offset()): m for m in batch}
        found: list[tuple[str, bytes | None]] | None = None
        msg = index.get(at)
        if msg is not None:
            # (A record a custom decoder had could be read, or it was dead-lettered then.)
            try:
                found = read_headers(msg) or []
            except UnreadableHeaders:
                found = None
        self._batch_headers[at] = found
        return found

    def _consumer_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        # (_FATAL as a record's error: the client's fatal error, its fatal() false there.  Logged
        # as a warning, a cluster without the consumer group protocol left the application
        # running, never assigned anything.)
        if err.fatal() or err.code() == KafkaError._FATAL:
            text = f"application {self.name!r}: fatal consumer error: {err.str()}"
            if self.settings.kafka_group_protocol == "consumer" and "ConsumerGroupHeartbeat" in err.str():
                text += (
                    '; kafka_group_protocol is "consumer", which needs Kafka 4.0 or later with '
                    "the consumer group protocol on (the broker's group.coordinator.rebalance."
                    'protocols); set it to "classic" for this cluster'
                )
            raise PipelineError(text)
        log.warning("application %s: consumer error: %s", self.name, err.str())
        if err.code() == KafkaError._MAX_POLL_EXCEEDED:
            # The member left its group and rejoins: a member with no partitions hears of it only
            # here (no partitions to lose, so no on_lost).
            self._joining()

    def _buffer(self, msgs: list[Message], alignment: Alignment) -> None:
        """Aligned: decode into the per-partition buffers that :meth:`_align` releases from."""
        owned = self._owned
        decode = self._decode
        codec_decode = self._codec._decoder.decode
        buffers = self._buffers
        consumed = self._consumed
        first_read = self._first_read
        offsets = self._next_offsets
        skip = self._skip
        done = 0
        buf: deque[tuple[Any, ...]] = deque()
        #: Per partition touched, the latest event time this call buffered (-inf: dead letters only).
        newest: dict[TP, float] = {}
        # As in _process, bookkeeping is per run of messages of one partition, not per message.
        run_topic: str | None = None
        run_part = -1
        run_owned = False
        run_newest = -math.inf
        #: Whether the run buffered a record or a dead letter (skipped records alone tell
        #: alignment nothing: no event time, and the partition delivered nothing).
        run_buffered = False
        offset = -1

        def end_run() -> None:
            if run_owned and offset >= 0 and run_topic is not None:
                tp = (run_topic, run_part)
                consumed[tp] = offset + 1
                if run_buffered:
                    newest[tp] = max(newest.get(tp, -math.inf), run_newest)

        for msg in msgs:
            err = msg.error()
            if err is not None:
                self._consumer_error(err)
                continue
            topic = msg.topic()
            part = msg.partition()
            if part != run_part or topic != run_topic:
                end_run()
                run_topic, run_part = topic, part
                run_owned = (topic, part) in owned
                run_newest = -math.inf
                run_buffered = False
                offset = -1
                if run_owned:
                    buf = buffers.setdefault((topic, part), deque())
                    if (topic, part) not in first_read:
                        first_read[topic, part] = msg.offset()
            if not run_owned:
                continue
            offset = msg.offset()
            value = msg.value()
            if skip and value is not None and value.startswith(skip):
                if buf:
                    # Committed past once what came before it is released, right after that
                    # (and counted then: a revocation drops it, to be read again).
                    buf.append((buf[-1][0], offset))
                else:
                    offsets[topic, part] = offset + 1
                    done += 1
                continue
            run_buffered = True
            try:
                if value is None:
                    raise ContractError(_TOMBSTONE)
                if decode is None:
                    event = codec_decode(value)
                else:
                    event = decode(topic, value, msg.key(), read_headers(msg))
            except DECODE_ERRORS as exc:
                letter = _undecodable(msg, exc)
                buf.append((-math.inf, letter))  # dead-lettered when released, in offset order
                continue
            try:
                occurred = event.occurred_at.timestamp()
            except AttributeError:
                why = (
                    f" (asked for by {', '.join(map(repr, self.aligned_for))}: an operator whose "
                    "event_time_skew_s is None asks for none)"
                    if self.aligned_for
                    else ""
                )
                text = (
                    f"application {self.name!r}: max_event_time_skew_s{why} needs records with an "
                    f"`occurred_at`; {topic}[{part}]@{offset} decoded to {type(event).__name__}"
                )
                raise PipelineError(text) from None
            if occurred > run_newest:
                run_newest = occurred
            record = Record(event, topic, part, offset, msg.key(), msg.timestamp()[1], value)
            buf.append((occurred, record, msg))
        end_run()
        if done:
            # Skipped records with nothing buffered before them are processed now.
            self._count_skipped(done)
            self._count_processed(done)
        now = time.monotonic()
        # The lane keeps the maximum, so what this call buffered is all it needs to see.
        for tp, latest in newest.items():
            alignment.observe(tp, latest, now)

    def _run_operators(
        self, groups: Mapping[int, Sequence[Record[Any]]], count: int, batch: int, started: float
    ) -> None:
        self._handed = count
        self._call_operators(groups)
        self._count_batch(count, batch, started)

    def _call_operators(
        self, groups: Mapping[int, Sequence[Record[Any]]], only: frozenset[str] | None = None
    ) -> None:
        """Hand each partition's records to its operators (``only``: those with these ids)."""
        for part, records in groups.items():
            if not records:
                continue
            task = self._tasks[part]
            for op, ctx in task.contexts:
                if only is not None and op.id not in only:
                    continue
                if op.dead_letter_errors:
                    trial = ctx.trial
                    if trial is None:
                        trial = ctx.trial = Attempt(ctx)
                    for rec in records:
                        error = attempt(op.process, rec, trial)
                        if error is not None:
                            ctx.dead_letter(rec, f"operator {op.id!r}: {error}")
                    continue
                try:
                    op.process(records, ctx)
                except Exception as exc:
                    if isinstance(exc, KafkaException) and _requires_abort(exc):
                        raise  # a record the broker refused, not the operator's (see _refused)
                    if isinstance(exc, KafkaException) and _is_fatal(exc):
                        if self._expired(exc):
                            raise  # (the loop renews the producer and starts over: _loop)
                        # The client failed (a fenced producer, seen at an emit), not the
                        # operator: said as a client failure, with the reason the client gives.
                        raise self._client_failure(exc) from exc
                    msg_text = (
                        f"application {self.name!r}: operator {op.id!r} failed on a batch of "
                        f"{_offset_ranges(records)}: {described(exc)}"
                    )
                    raise PipelineError(msg_text) from exc

    def _count_skipped(self, count: int) -> None:
        self.metrics.skipped += count
        self.prometheus.skipped.labels(self.name).inc(count)

    def _count_processed(self, count: int) -> None:
        self.metrics.processed += count
        self.prometheus.processed.labels(self.name).inc(count)

    def _count_batch(self, count: int, batch: int, started: float) -> None:
        self._handed = 0
        self._count_processed(count)
        self.metrics.batches += 1
        took = time.perf_counter() - started
        prom = self.prometheus
        prom.batch_size.labels(self.name).observe(batch)
        prom.processing.labels(self.name).observe(took)
        if count:
            self._pace_batches(count, took)

    def _pace_limit(self) -> tuple[float, str]:
        """The time a batch must stay well inside, and its setting's name: ``max.poll.interval.ms``,
        or the transaction's timeout when shorter (exactly-once, or at-least-once with state)."""
        if self._txn_timeout_s < self._poll_interval_s:
            return self._txn_timeout_s, "transaction.timeout.ms"
        return self._poll_interval_s, "max.poll.interval.ms"

    def _pace_batches(self, count: int, took: float) -> None:
        """Keep batches (and, aligned, releases, which may hold many times ``batch_size``) to a
        share of ``max.poll.interval.ms``, or of the transaction's timeout when shorter
        (:meth:`_pace_limit`), at the operators' recent cost per record
        (``_BATCH_SHARE_OF_POLL``), once one took more than half of it; stop when one
        record alone outlasts the poll interval ``_MAX_OVERRUNS`` times, none more than three
        intervals after the one before (processed again after each, without end)."""
        cost = took / count
        # At once when slower (the next batch must fit), slowly when faster (one quick batch is
        # no sign the next will be).
        self._record_cost = cost if cost > self._record_cost else 0.9 * self._record_cost + 0.1 * cost
        limit, setting = self._pace_limit()
        fits = int(_BATCH_SHARE_OF_POLL * limit / self._record_cost) if self._record_cost else 0
        proposed = max(1, fits) if self._record_cost else _NO_CAP
        before_count, before_took = self._before_shrink
        if proposed < self._cap and (
            took <= limit / 2 or (took <= limit and before_count > count and before_took <= 1.25 * took)
        ):
            # Well inside the interval, or smaller batches take about as long as the larger ones
            # before the last shrink did (the cost is per batch, not per record): shrinking would
            # not help.  (It shrank batches that fitted down to one record.)
            proposed = self._cap
        if proposed < self._cap:
            self._before_shrink = (count, took)
            log.warning(
                "application %s: batches of at most %d records (operators at %.3g s a record; %s is %g s)",
                self.name,
                proposed,
                self._record_cost,
                setting,
                limit,
            )
        elif proposed >= self.batch_size:
            self._before_shrink = (0, 0.0)  # (a batch long ago must not keep a later one large)
            if self._batch_cap < self.batch_size:
                log.info("application %s: batches of up to %d records again", self.name, self.batch_size)
        self._cap = proposed
        self._batch_cap = min(self.batch_size, proposed)
        if took <= self._poll_interval_s:
            return
        log.warning(
            "application %s: a batch of %d records took %.1f s, longer than max.poll.interval.ms "
            "(%g s): the group goes on without this member, and its records are processed again",
            self.name,
            count,
            took,
            self._poll_interval_s,
        )
        if count > 1:
            return
        # Counted until none comes for three intervals: the records before it since the last
        # commit, processed again after each in time, reset a count kept "in a row", and a
        # record alone too slow, with any before it, was processed again without end.
        now = time.monotonic()
        recent = now - self._last_overrun_at <= 3 * self._poll_interval_s
        self._overruns = self._overruns + 1 if recent else 1
        self._last_overrun_at = now
        if self._overruns >= _MAX_OVERRUNS:
            ids = ", ".join(repr(op.id) for op in self.operators)
            msg = (
                f"application {self.name!r}: one record took {took:.1f} s in the operators ({ids}), "
                f"{self._overruns} times within {3 * self._poll_interval_s:g} s, longer than "
                "max.poll.interval.ms "
                f"({self._poll_interval_s:g} s): the group goes on without this member each time and "
                "the record is processed again, without end; make the operator faster or raise "
                "max.poll.interval.ms (consumer_overrides, or VIGIL_KAFKA_CLIENT_OPTIONS for the "
                "vigil commands)"
            )
            raise PipelineError(msg)

    def _release(self, limit: float, peer_cap: float | None = None, live_limit: float | None = None) -> None:
        """Aligned: hand the buffered records up to event time ``limit`` to the operators (and
        with peer alignment, a partition's records of a backlog up to ``peer_cap``: see below).

        Each partition's records go in offset order (a partition stops at its first record past
        the limit), so the offsets to commit are always those of a released prefix.  The released
        records are merged by event time (a merge, not a sort: each partition keeps its order).
        Operators with state get one call per partition number, its records of every input
        merged: their state is the partition's, so that is all the order they need.  Operators
        without state (a router) get every partition's records in one call, merged: what they
        emit for one key from several partitions (an IP's logins by many customers) goes on in
        event-time order.  Calls are per release, not per slice of event time: a slice holds only
        a record or two when a backlog is replayed (event time racing ahead of the wall clock),
        so per-call costs would dominate.  ``live_limit``: how far live records may go (with peer
        alignment, past ``limit``: see :attr:`~vigil.stream.alignment.Alignment.live_floor`)."""
        started = time.perf_counter()
        if live_limit is None or live_limit < limit:
            live_limit = limit
        owned = self._owned
        offsets = self._next_offsets
        runs: dict[int, list[list[Record[Any]]]] = {}
        #: The released records' messages (their headers, for an operator's dead letter).
        messages: list[Message] = []
        count = skipped = 0
        # Peer alignment (vigil.stream.peers): a partition whose next record belongs to a backlog
        # (older than REPLAY_BEHIND_S, and not older than what the partition released before: a
        # late record is late already) releases only up to the others' cap; the first time it
        # catches up, nothing of its backlog for PEER_GRACE_S (the others' words are of before:
        # "nothing to read", and the first to read its share of a new backlog released it all).
        peers_on = peer_cap is not None
        # (Judged record by record: a record dated ahead of the wall clock in a backlog, or the
        # backlog's tail read up to the present, let the rest of the partition go uncapped.)
        capping, cap_at, before = False, math.inf, -math.inf
        if peer_cap is not None:
            before = time.time() - REPLAY_BEHIND_S
            now = time.monotonic()
            if self._caught_up_pending(before):
                # (A lull between bursts of one catch-up is no new start: the grace once.)
                if now - self._backlog_seen_at > PEER_LULL_S:
                    self._catching_up_since = now
                self._backlog_seen_at = now
            if now - self._catching_up_since < PEER_GRACE_S and self._shares_inputs():
                peer_cap = -math.inf
            capping, cap_at = peer_cap < limit, peer_cap
        self._peer_held = False
        self._peer_held_tps.clear()
        # (A record dated ahead of the wall clock is not where its partition has reached: taken
        # for it, every record after it looked late, and went uncapped.)
        ahead_of = before + REPLAY_BEHIND_S + _FUTURE_TOLERANCE_S
        # Live records (not of a backlog) go up to live_limit: a partition the others' cap holds
        # back holds back a backlog's records alone (see Alignment.live_floor).
        live_from = before if peers_on and live_limit > limit else math.inf
        # The operators slow (see _pace_batches), at most _cap records: a release holds what
        # the buffers have up to the limit, many times a consume's, and outlasted
        # max.poll.interval.ms again and again, as a full batch did unaligned.
        capped: dict[TP, int] | None = None
        cap = self._cap
        if cap < _NO_CAP:
            mine = [tp for tp in self._buffers if tp in owned]
            if sum(len(self._buffers[tp]) for tp in mine) > cap:
                bounds = (capping, cap_at, before, ahead_of)
                ends: list[int] = []
                for tp in mine:
                    reached = self._reached(tp, before) if peers_on else -math.inf
                    end, held = _releasable(
                        self._buffers[tp], limit, (live_from, live_limit), bounds, reached
                    )
                    ends.append(end)
                    if held:  # (its records may take none of the cap: said held here, not below)
                        self._peer_held = True
                        self._peer_held_tps.add(tp)
                counts = _capped_counts([self._buffers[tp] for tp in mine], ends, cap)
                capped = dict(zip(mine, counts, strict=True))
        for tp, buf in self._buffers.items():
            if not buf or tp not in owned:
                continue
            head = buf[0][0]
            if head > limit and not live_from <= head <= live_limit:
                continue
            take = len(buf) if capped is None else capped[tp]
            if not take:
                continue
            reached = self._reached(tp, before) if peers_on else -math.inf
            out: list[Record[Any]] = []
            last = -1
            popped = 0
            while take and buf:
                at = buf[0][0]
                if at > limit and not live_from <= at <= live_limit:
                    break
                if capping and cap_at < at and reached <= at < before:
                    self._peer_held = True  # (a backlog's record, in order, past the others' cap)
                    self._peer_held_tps.add(tp)
                    break
                take -= 1
                popped += 1
                entry = buf.popleft()
                item = entry[1]
                if reached < at <= ahead_of:
                    reached = at
                if isinstance(item, Record):
                    out.append(item)
                    last = item.offset
                    if len(entry) > 2:
                        messages.append(entry[2])
                elif isinstance(item, int):  # a skipped record (see _buffer)
                    last = item
                    skipped += 1
                else:
                    self._dead_letter(*item)
                    last = item[2]
                count += 1
            if not popped:
                continue
            offsets[tp] = last + 1
            if peers_on:
                self._released_at[tp] = reached
            if out:
                runs.setdefault(tp[1], []).append(out)
        if not count:
            return
        if skipped:
            self._count_skipped(skipped)
        merged = {part: _merged(rs) for part, rs in runs.items()}
        self._batch = messages  # (for the headers of a record an operator dead-letters: _headers_of)
        self._handed = count
        try:
            if len(merged) <= 1:
                self._call_operators(merged)
            else:
                if self._stateful:
                    self._call_operators(merged, self._stateful)
                if self._stateless:
                    every = _merged(list(merged.values()))
                    self._call_operators({min(merged): every}, self._stateless)
        finally:
            self._batch = None
            self._batch_headers.clear()
            self._batch_index = None
        self._count_batch(count, count, started)

    def _align(self) -> None:
        """Pause the partitions too far ahead in event time, resume those no longer ahead, and
        release the buffered records the slowest partitions have caught up with."""
        alignment = self.alignment
        consumer = self._consumer
        if alignment is None or consumer is None:
            return
        now = time.monotonic()
        consumed = self._consumed  # none yet: asked of the broker (_start_lag)
        rekeyed = self._rekeyed_inputs
        oldest: list[TP | None] = []  # (looked for once a pass, when a restoring partition asks)

        def reask() -> TP | None:
            """The restoring partition with nothing left whose records left were asked longest ago."""
            if not oldest:
                zero = [
                    (known[0], tp)
                    for tp, lane in alignment.lanes.items()
                    if lane.restoring and (known := self._start_lags.get(tp)) is not None and known[1] == 0
                ]
                oldest.append(min(zero)[1] if zero else None)
            return oldest[0]

        def lag_now(tp: TP) -> int | None:
            if tp[0] in rekeyed:
                # Its own repartition topic holds nobody back: its records come from records
                # already released, so they are never ahead of the floor, and (exactly-once) a
                # transaction of its own is always open on it: read_committed, the position stops
                # short of the high watermark until the next checkpoint, and every live record
                # waited for that commit (median 116 ms against 6, at a 0.2 s interval).
                return 0
            # The consumer's position, not only the last record consumed: a transaction's commit
            # marker takes an offset no record is delivered at, and read_committed, the position
            # moves past it (the high watermark too); a partition at its end of a transactional
            # topic then has 0 left, not 1 forever, and stops holding the others back.
            (at,) = consumer.position([TopicPartition(*tp)])
            pos = max(at.offset, consumed.get(tp, -1))
            if pos < 0:
                lane = alignment.lanes.get(tp)
                known = self._start_lags.get(tp)
                if (
                    known is not None
                    and lane is not None
                    and not lane.restoring
                    and now - lane.active_at >= alignment.idle_s
                ):
                    # Idle (asked only to tell a replay's backlog): what was found, never a new
                    # question (each unanswered one holds the loop its timeout).  Never asked (the
                    # questions quiet after one had no answer, longer than idle_s), it is asked:
                    # unknown, a backlog waiting its turn held nobody, and came out of order.
                    if tp in self._start_lag_unanswered:
                        self._start_lag_settled(tp)  # (not asked again: its question is over)
                    return known[1]
                # (A restoring partition's 0 asked again one a pass, the one asked longest ago:
                # the questions are the loop's, and the first in order took every turn.)
                again = lane is not None and lane.restoring and tp == reask()
                return self._start_lag(consumer, tp, now, again=again)
            if tp in self._start_lag_unanswered:
                self._start_lag_settled(tp)  # (it delivers: its question is not asked again)
            try:
                marks = consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)
            except KafkaException:
                return None
            high = -1 if marks is None else int(marks[1])
            return None if high < 0 else max(0, high - pos)

        memo: dict[TP, int | None] = {}

        def lag(tp: TP) -> int | None:
            """Records left in ``tp``, found once a pass (Alignment.floor asks some twice)."""
            if tp in memo:
                return memo[tp]
            left = memo[tp] = lag_now(tp)
            return left

        limit = alignment.limit(now, lag)
        peers = self._peers
        peer_cap: float | None = None
        if peers is not None:
            peers.poll(now)
            peer_cap = peers.floors.cap(self._owned, now)
        if self._start_lag_failed:
            # Asked again last (see _start_lag): first in order, it took every turn.
            alignment.last(self._start_lag_failed)
            self._start_lag_failed.clear()
        self._release(limit, peer_cap, alignment.live_limit())
        buffers = self._buffers
        if peers is not None and peers.due(now):
            self._publish_words(peers, now)
        # (What is left after the release decides: see Alignment.plan.  Held by the other
        # processes, the partition that sets this one's floor buffered its whole backlog: it is
        # never ahead of its own floor, found in review.)
        held = self._peer_held_tps
        pause, resume = alignment.plan(limit, lambda tp: len(buffers.get(tp, ())), held)
        if pause:
            consumer.pause([TopicPartition(t, p) for t, p in pause])
            alignment.paused(pause, now, held)
        if resume:
            consumer.resume([TopicPartition(t, p) for t, p in resume])
            alignment.resumed(resume, now)
        self.metrics.paused = sorted(tp for tp, lane in alignment.lanes.items() if lane.paused)
        self.metrics.alignment_pauses = alignment.pauses

    def _reached(self, tp: TP, backlog_before: float) -> float:
        """The event time ``tp`` has released up to, as far as peer alignment is concerned: a
        record older is late.  A partition that released nothing yet has reached the present if
        its latest record read is recent (a late record at its head, after a restart, held its
        live records behind the slowest other process: found in review); else nothing."""
        reached = self._released_at.get(tp)
        if reached is not None:
            return reached
        alignment = self.alignment
        lane = None if alignment is None else alignment.lanes.get(tp)
        latest = None if lane is None else lane.event_time
        # (Not one dated ahead of the wall clock: it says nothing of where the partition is.)
        if (
            latest is not None
            and backlog_before <= latest <= backlog_before + REPLAY_BEHIND_S + _FUTURE_TOLERANCE_S
        ):
            return backlog_before
        return -math.inf

    def _shares_inputs(self) -> bool:
        """Whether another process may own some of the input partitions (this one does not own
        them all): alone, it waits for no one's words."""
        peers = self._peers
        return peers is not None and any(tp not in self._owned for tp in peers.floors.partitions.values())

    def _caught_up_pending(self, backlog_before: float) -> bool:
        """Whether a partition owned has a record of a backlog waiting in order (older than
        ``backlog_before``, and not older than what the partition has reached)."""
        owned = self._owned
        for tp, buf in self._buffers.items():
            if buf and tp in owned and self._reached(tp, backlog_before) <= buf[0][0] < backlog_before:
                return True
        return False

    def _peer_words(self, peers: PeerChannel) -> dict[TP, float | None]:
        """Where each partition owned stands (:mod:`vigil.stream.peers`): the event time of its
        earliest record waiting, or of the latest read while it holds the others back (more to
        read); ``None``: neither (nothing to read, an empty partition included).  One being
        restored, or with records to read and none read yet, says its last owner's word again
        (a restore longer than the words' expiry let the others run ahead of it)."""
        alignment = self.alignment
        words: dict[TP, float | None] = {}
        if alignment is None:
            return words
        lanes, holding, buffers = alignment.lanes, alignment.holding, self._buffers
        for tp in self._owned:
            lane = lanes.get(tp)
            if lane is None:
                continue
            buf = buffers.get(tp)
            if lane.restoring or (lane.event_time is None and not buf and tp in holding):
                words[tp] = self._said_again(peers, tp)
                continue
            head = buf[0][0] if buf else math.inf
            at = lane.event_time if tp in holding and lane.event_time is not None else math.inf
            first = min(head, at)
            words[tp] = None if first == math.inf else first
        for task in self._restoring.values():
            for restoring in task.partitions:
                key = (restoring.topic, restoring.partition)
                words[key] = self._said_again(peers, key)
        return words

    def _said_again(self, peers: PeerChannel, tp: TP) -> float | None:
        """The word of a partition not read yet (being restored, or waiting for its first records):
        its last owner's (:meth:`PeerFloors.said`), or ``None`` if it has nothing to read (it
        holds nobody, as in its own alignment; said as not read yet, a restoring partition held
        every process catching up for the whole restore: found in review)."""
        known = self._start_lags.get(tp)
        return None if known is not None and known[1] == 0 else peers.floors.said(tp)

    def _publish_words(self, peers: PeerChannel, now: float) -> None:
        """Publish the partitions' words as they are after the release, and note whether the
        others' cap held records back in it."""
        peers.publish(self._peer_words(peers), now)
        waits = peers.waits
        peers.note(self._peer_held, self._owned, now)
        if peers.waits > waits:
            self.prometheus.peer_waits.labels(self.name).inc()

    def _start_lag(self, consumer: Consumer, tp: TP, now: float, *, again: bool = False) -> int | None:
        """Records left in a partition nothing was consumed from since its assignment: from its
        committed offset (or its start) to its end, asked of the broker at most once a second
        per partition (and less often while questions go unanswered: below).  So an empty
        partition, or one whose group is already at its end (after a restart), holds nobody
        back, and one with a backlog holds the others (until it delivers, or goes idle:
        :meth:`Alignment.holds`).
        An answer is kept, but for a partition being restored (``again``) with nothing left, asked
        again every ``_RESTORING_ASK_EVERY_S``: records arriving during its restore must hold the
        others too (kept, its 0 at the assignment let the others release ahead of them for the
        whole restore).  (Not each second: the questions are the loop's, one partition at a time.)

        After a question with no answer, none is asked for a while, a second at first (the others
        keep what they had, or ``None``: unknown, they hold the others as one with records left
        would): against a broker that stopped answering, each partition's question waited its
        timeout in turn, and a pass over N partitions held the loop N times that.  The partition
        is then asked after the others (:meth:`Alignment.last`): first in order, one that kept
        failing (another producer's transaction open on its committed offset) was asked first
        after each quiet second, and failed again, so the others were never asked.  The quiet
        doubles after each question without an answer, up to ``_START_LAG_QUIET_MAX_S``, and is
        a second again once no partition is left without an answer (see _start_lag_settled):
        partitions being restored (asked until they run) whose questions kept failing held the
        loop their timeout every second, five seconds in six.  (So after the broker is back, the
        next question may wait that long.)"""
        known = self._start_lags.get(tp)
        left_then: int | None = None
        if known is not None:
            asked, left_then = known
            if left_then is None:  # no answer: asked again after a second (and the quiet)
                due = now - asked >= 1.0
            elif left_then == 0 and again:
                due = now - asked >= _RESTORING_ASK_EVERY_S
            else:
                due = False
            if not due:
                return left_then
        if now < self._start_lag_quiet_until:
            return left_then
        left: int | None = None
        asked_at = time.monotonic()
        try:
            (committed,) = consumer.committed([TopicPartition(*tp)], timeout=_ALIGN_TIMEOUT)
            low, high = consumer.get_watermark_offsets(TopicPartition(*tp), timeout=_ALIGN_TIMEOUT)
            start = committed.offset if committed.offset >= 0 else low
            left = max(0, high - max(start, low))
        except (KafkaException, TypeError, ValueError) as exc:
            log.debug("application %s: end offsets of %s[%d]: %s", self.name, tp[0], tp[1], exc)
        # (As of the answer: taken at the pass's start, after a slow pass every partition was due
        # again.)
        answered_at = now + time.monotonic() - asked_at
        self._start_lags[tp] = (answered_at, left)
        if left is None:
            self._start_lag_quiet_until = answered_at + self._start_lag_quiet_s
            self._start_lag_quiet_s = min(2 * self._start_lag_quiet_s, _START_LAG_QUIET_MAX_S)
            self._start_lag_failed.append(tp)
            self._start_lag_unanswered.add(tp)
        elif tp in self._start_lag_unanswered:
            self._start_lag_settled(tp)
        return left

    def _start_lag_settled(self, tp: TP) -> None:
        """``tp``, whose records-left question had no answer, is answered, delivers, is gone, or
        went idle (never asked again then): once none is left so, the quiet after a question
        without an answer is a second again (the broker, or the transaction in the way, is
        back).  Not at any answer: a restoring partition answering every few seconds beside one
        that kept failing brought the quiet back to a second, five seconds in six; and not only
        at that one's own answer: once it delivers it is not asked again, and the quiet stayed at
        its longest (found in review)."""
        self._start_lag_unanswered.discard(tp)
        if not self._start_lag_unanswered:
            self._start_lag_quiet_s = _START_LAG_QUIET_S

    def _commit_offsets(self, consumer: Consumer, offsets: list[TopicPartition], what: str) -> None:
        """The consumer's synchronous offset commit (stateless at-least-once's at a revocation and
        at the stop, and where new partitions start), made on a thread of its own and waited for in
        slices (:meth:`_sliced`).  librdkafka's commit waits for the broker's answer however long
        it takes: made on the loop's thread, with the broker frozen, it held a stop until the
        broker answered (over two minutes; found in review, 2026-12-07).  Once stopping, it is
        given up ``_STOPPING_CALL_S`` after it began and raised as a retriable timeout (the
        checkpoint is then left to the next start, :meth:`_abandoned_stopping`), and the consumer
        is not closed under it (:meth:`_close`).  While one given up still waits, the next fails
        at once.  Inside a rebalance callback it is made there, as before: the callback runs in
        the consumer's own call, and a client that serialises its calls (confluent-kafka's
        free-threaded builds) would hold a call from another thread until that one returned."""
        pending = self._commit_given_up
        if pending is not None and not pending.done():
            msg = f"{what}: an earlier commit given up still waits for the broker"
            raise _not_returned(msg)
        if self._in_callback:
            consumer.commit(offsets=offsets, asynchronous=False)
            return
        # (A partial, not a lambda: a lambda's frame, in the traceback of a commit refused after
        # it was given up, held the consumer past its last reference, uncompiled.)
        commit = functools.partial(consumer.commit, offsets=offsets, asynchronous=False)
        future = call_aside(commit, f"{self.name}-commit-offsets")

        def given_up() -> None:
            self._commit_given_up = future

        self._sliced(future, what, _TIMEOUT, time.monotonic(), _STOPPING_CALL_S, "checkpoint", given_up)

    def _commit_new_starts(self) -> None:
        """Commit where partitions assigned with nothing committed start (see _resumed), before
        anything read of them is processed.  Tried once: the broker refuses a plain commit while
        the group completes a rebalance, but not a checkpoint's transactional one, so a start
        tried again once records were processed could land after a checkpoint past them and move
        the offset back.  Refused, the partition is uncommitted until its first checkpoint, as
        without this commit (a warning says so)."""
        starts = [TopicPartition(t, p, offset) for (t, p), offset in self._starts.items()]
        self._starts.clear()
        if not starts:
            return
        try:
            self._commit_offsets(self._running_clients()[1], starts, "committing where new partitions start")
        except KafkaException as exc:
            log.warning(
                "application %s: committing the start of %s failed; uncommitted until the first "
                "checkpoint, a crash before it starts at the end again, after what was read: %s",
                self.name,
                _partitions(len(starts)),
                exc.args[0],
            )

    # ------------------------------------------------------------------ producing

    def _txn_producer(self) -> Producer | None:
        """The producer whose transactions carry changelog records and offsets (None: stateless
        at-least-once, where offsets are committed by the consumer)."""
        return self._producer if self._eos else self._state_producer

    def _ensure_txn(self) -> None:
        if not self._in_txn:
            producer = self._txn_producer()
            if producer is not None:
                producer.begin_transaction()
                self._in_txn = True
                self._txn_began = _boot_clock()

    def _on_delivery_error(self, err: KafkaError | None, msg: Message) -> None:
        _note_delivery_failure(self._delivery_errors, err, msg)

    def _on_client_error(self, err: KafkaError) -> None:
        _note_fatal(self._fatal_errors, err)

    def _on_state_delivery_error(self, err: KafkaError | None, msg: Message) -> None:
        _note_delivery_failure(self._state_delivery_errors, err, msg)

    def _on_state_client_error(self, err: KafkaError) -> None:
        _note_fatal(self._state_fatal_errors, err)

    def _checkpoint_failed(self, exc: KafkaException) -> PipelineError:
        err = kafka_error(exc)
        # A refusal's own text (_refused), not the KafkaError's repr around it: it names the record.
        detail = err.str() if err is not None and _requires_abort(exc) else exc.args[0]
        msg = f"application {self.name!r}: checkpoint failed: {detail}{self._missing_outputs()}"
        refused = self._state_delivery_errors
        if refused and refused[0] not in msg:  # (named already by a refusal's error: _refused)
            msg += f"; {len(refused)} changelog records refused, the first: {refused[0]}"
        return PipelineError(msg)

    def _uneven_inputs(self, counts: dict[str, int], internal: dict[str, TopicSpec]) -> ConfigError:
        """The error of a stateful application whose inputs' partition counts differ.  When one
        is a topic of its own left with the count of an earlier run (its inputs grown since, and
        ``group_by`` given the new count), that is said with the way out: a topic it made itself
        is not grown for it (its records would move partition), and the remedy was nowhere."""
        declared = {
            topic: internal[topic].partitions or self.settings.default_partitions
            for topic in counts
            if topic in internal
        }
        stale = sorted(t for t, n in declared.items() if counts[t] != n)
        if stale:
            topic = stale[0]
            msg = (
                f"application {self.name!r}: its own topic {topic!r} has {counts[topic]} partitions, "
                f"declared {declared[topic]} (inputs: {counts}). It is not grown for you: its "
                "records would move partition. Run the application as before (with the old count) "
                "until that topic is read to its end (lag 0), stop it, delete the topic, and start "
                "it with the new count, which makes the topic again (deleted before it is read, the "
                "re-keyed records in it are lost)"
            )
            return ConfigError(msg)
        msg = (
            f"application {self.name!r}: stateful applications need co-partitioned inputs "
            f"(equal partition counts); got {counts}"
        )
        return ConfigError(msg)

    def _missing_outputs(self) -> str:
        """Why outputs were not acknowledged, if it is an output topic that does not exist: the
        client only says records remained ("Failed to flush all outstanding messages ..."), and
        a topic not created yet is the usual cause.  Empty when none is missing, or the broker
        does not say."""
        if self._producer is None or not self._output_topics:
            return ""
        try:
            topics = self._producer.list_topics(timeout=_MISSING_ASK_S).topics
        except KafkaException:
            return ""
        missing = sorted(t for t in self._output_topics if t not in topics or topics[t].error is not None)
        if not missing:
            return ""
        return f" (output topic(s) {', '.join(map(repr, missing))} do not exist: create them first)"

    def _produce(
        self,
        topic: str,
        value: bytes | None,
        key: str | bytes | None,
        headers: list[tuple[str, bytes | None]] | None = None,
    ) -> None:
        producer = self._producer
        if producer is None:
            producer = self._running_clients()[0]  # raises: not running
        if self._eos and not self._in_txn:
            self._ensure_txn()
        if value is not None:
            check_output(topic, value, key)
        self._output_topics.add(topic)
        while True:
            try:
                if headers is None:
                    producer.produce(topic, value, key)
                else:
                    producer.produce(topic, value, key, headers=headers)
                return
            except BufferError:
                producer.poll(0.01)  # local queue full: serve deliveries until there is room
            except KafkaException as exc:
                refused = self._refused(producer, exc)
                if refused is None:
                    raise
                raise refused from exc

    def _refused(self, producer: Producer, exc: KafkaException) -> KafkaException | None:
        """What to raise for ``exc``, raised by a produce of the transactional producer (None:
        ``exc`` itself).  A record the broker refused (too large for its topic, not authorised,
        timed out while it was out of reach) leaves the transaction one only an abort clears,
        within milliseconds, and the next produce fails saying only "Erroneous state": raised as
        that, it blamed whichever operator emitted next, or stopped the stage as a client failure
        at the checkpoint's changelog records, before the commit could abort and process again.
        So the delivery reports are served, and the error raised says the transaction is to be
        aborted (handled as a commit that failed so: _retried_after_refusal) and names the first
        record refused."""
        err, txn = kafka_error(exc), self._txn_producer()
        if (
            err is None
            or err.fatal()
            or (err.code() != KafkaError._STATE and not err.txn_requires_abort())
            or txn is None
            or txn is not producer
        ):
            return None
        refused = self._delivery_errors if self._eos else self._state_delivery_errors
        deadline = time.monotonic() + _REFUSAL_REASON_WAIT_S
        wait = 0.0
        while True:
            try:
                txn.poll(wait)  # serves the delivery reports (_on_delivery_error)
            except KafkaException as raised:  # the client failed meanwhile: that is the error
                return raised
            if refused or time.monotonic() >= deadline:
                break
            wait = 0.05
        if refused:
            count = f"{len(refused)} records refused, the first" if len(refused) > 1 else "a record refused"
            why = f"{count}: {refused[0]}"
        else:
            why = f"{err.str()} (the client reported no record refused)"
        text = f"the transaction is to be aborted, {why}"
        return KafkaException(
            KafkaError(err.code(), text, fatal=False, retriable=False, txn_requires_abort=True)
        )

    def _dead_letter(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        raw: bytes,
        reason: str,
        error_type: str,
        headers: list[tuple[str, bytes | None]] | None = None,
    ) -> None:
        reason = clipped_reason(reason)
        letter = DeadLetter(
            stage=self.name,
            reason=reason,
            topic=topic,
            partition=partition,
            offset=offset,
            key=key,
            raw=raw,
            failed_at=utcnow(),
            error_type=error_type,
            headers=headers,
        )
        value = encode(letter)
        # Over the limit, refused, a letter stopped the stage, again after every restart.  What
        # is left out goes so that the record's own bytes stay whenever they fit: its headers
        # first; then its key if the letter fits without it; else its bytes, and then the key if
        # the letter still does not fit (the letter says where they all stay).  Anything left out
        # makes the letter one redrive cannot rebuild the record from (headers None).
        if headers and len(value) + _length(key) > OUTPUT_MAX_BYTES:
            size = sum(len(name) + len(v or b"") for name, v in headers)
            note = (
                f" [its {len(headers):,} headers ({size:,} bytes) are left out of this dead letter "
                f"(over the {OUTPUT_MAX_BYTES:,}-byte limit); they stay at {topic}/{partition} "
                f"offset {offset}]"
            )
            letter = msgspec.structs.replace(letter, headers=None, reason=letter.reason + note)
            value = encode(letter)
        if len(value) + _length(key) > OUTPUT_MAX_BYTES:
            keyless = self._without_key(letter, key) if key is not None else None
            if keyless is not None and len(keyless[0]) + len(keyless[1]) <= OUTPUT_MAX_BYTES:
                value, key = keyless
            else:
                # A record too large to carry (a raw Bitcoin block is several MB, and base64 in
                # the letter makes it a third larger).
                note = (
                    f" [its {len(raw):,} bytes are left out of this dead letter (over the "
                    f"{OUTPUT_MAX_BYTES:,}-byte limit); they stay at {topic}/{partition} offset {offset}]"
                )
                letter = msgspec.structs.replace(letter, raw=b"", headers=None, reason=letter.reason + note)
                value = encode(letter)
                if key is not None and len(value) + len(key) > OUTPUT_MAX_BYTES:
                    value, key = self._without_key(letter, key)
        self._produce(self.dlq_topic, value, key)
        self.metrics.dead_lettered += 1
        self.prometheus.dead_lettered.labels(self.name).inc()

    @staticmethod
    def _without_key(letter: DeadLetter, key: bytes) -> tuple[bytes, bytes]:
        """``letter`` without the record's key, and the key to send it under: the key's hash.
        (The key is in the letter, in base64, and is the letter's key: a key of 760 KB made the
        letter too large.)"""
        hashed = f"{stable_hash(key):016x}".encode()
        note = (
            f" [its {len(key):,}-byte key is left out of this dead letter; this letter's key is "
            f"its stable hash, {hashed.decode()}]"
        )
        keyless = msgspec.structs.replace(letter, key=None, headers=None, reason=letter.reason + note)
        return encode(keyless), hashed

    # ------------------------------------------------------------------ checkpoints

    def _send_changelog(self, topic: str, partition: int, pending: list[tuple[bytes, bytes | None]]) -> None:
        """Produce one store partition's writes (failures come back through the delivery callback)."""
        try:
            self._ensure_txn()
            producer = self._txn_producer() or self._running_clients()[0]
            produce = producer.produce
            for key, value in pending:
                if value is not None and len(key) + len(value) > STATE_RECORD_MAX_BYTES:
                    refused = state_too_large(key, value)
                    msg = f"application {self.name!r}: checkpoint of {topic}[{partition}]: {refused}"
                    raise PipelineError(msg)
                while True:
                    try:
                        produce(topic, value, key, partition)
                        break
                    except BufferError:
                        producer.poll(0.01)  # local queue full: serve deliveries until there is room
                    except KafkaException as exc:
                        # (Not named `refused`: mypyc typed that name str from the line above.)
                        to_abort = self._refused(producer, exc)
                        if to_abort is None:
                            raise
                        raise to_abort from exc
        except KafkaException as exc:
            wrapped = self._state_call_failed(exc)
            if wrapped is exc:
                raise
            raise wrapped from exc

    def _state_call_failed(self, exc: KafkaException) -> KafkaException:
        """``exc`` of a call of the transactional producer, told apart at-least-once (where the
        producer of outputs is another) as the state producer's (see _expired)."""
        if self._eos or isinstance(exc, StateProducerFailed):
            return exc
        return StateProducerFailed(*exc.args)

    def _checkpoint(self, sync: bool = False) -> None:
        """Make outputs, state and offsets durable together (see the module docstring).

        ``sync``: in at-least-once mode, finish everything now and wait for the offset commit
        too (before giving up partitions, so their next owner starts where this one ended)."""
        producer, consumer = self._producer, self._consumer
        if producer is None or consumer is None or self._failed or self._lost:
            return  # lost: nothing since the last checkpoint is this member's to commit (_rewind)
        given_up = self._commit_given_up
        if given_up is not None and not given_up.done():
            # Stopping, a commit still in the consumer: nothing more is asked of either client
            # (a flush would wait its 10 s again; the commit would fail at once).
            self._abandoned_stopping("an earlier offset commit still waits for the broker")
            return
        started = time.perf_counter()
        if started - self._touched_at >= self.touch_every_s and self._current_at is not None:
            # Stores not written for a while are as current as the last commit: said so, or a
            # store owned but not written for a day would look a day old to the next restore.
            self._touched_at = started
            for task in self._tasks.values():
                for state in task.stores.values():
                    state.touch(self._current_at)
        if not self.exactly_once:
            try:
                sealed = self._seal(sync)
                self._complete_epochs(sync)
            except KafkaException as exc:
                # (As exactly-once below: an expired state transaction's error is never raised.)
                if self._renewed_after_timeout(exc) or self._retried_after_refusal(exc):
                    return
                raise
            if sync:
                self._write_step(None)
            if not sealed:
                if not self._sealed and self._sealing is None and self._committing is None:
                    self._prove_ownership(consumer)
                self._update_gauges()
                return
        else:
            writes: _Writes = []
            try:
                for task in self._tasks.values():
                    for store_id, state in task.stores.items():
                        if not state.pending_count:
                            continue
                        topic = changelog_topic(self.name, store_id)
                        pending = state.take_pending()
                        self._send_changelog(topic, task.number, pending)
                        writes.append((state, pending, topic, task.number))
            except KafkaException as exc:
                # (As at the commit: a checkpoint never raises an expired transaction's error, so
                # the rebalance callbacks and the restore step that checkpoint finish their work;
                # nor a refused record's, raised here by the changelog records sent after it.)
                if self._renewed_after_timeout(exc) or self._retried_after_refusal(exc):
                    return
                raise
            offsets = self._offsets_to_commit()
            if not offsets and not writes and not self._in_txn:
                if sync:
                    self._write_step(None)
                self._prove_ownership(consumer)
                self._update_gauges()
                return
            if not self._commit_txn(offsets, consumer):
                return
            producer.poll(0)  # serve failure reports, if any
            if self._delivery_errors:
                errors, self._delivery_errors = self._delivery_errors, []
                msg = f"application {self.name!r}: {len(errors)} deliveries failed; first: {errors[0]}"
                raise PipelineError(msg)
            self._queue_writes(writes)
            if sync:
                self._write_step(None)
        elapsed = time.perf_counter() - started
        self.metrics.checkpoints += 1
        self.metrics.last_checkpoint_s = elapsed
        self.prometheus.checkpoint.labels(self.name).observe(elapsed)
        self._update_gauges()

    def _prove_ownership(self, consumer: Consumer) -> None:
        """Idle for a while, with stores: commit the committed offsets again, which shows the
        group still has this member (the commit carries the group's metadata), so its stores are
        current as of now (_current_at) and the next restore does not start them afresh for
        having been quiet a day."""
        every = self.touch_every_s
        if not self.stores or not self._owned or time.time() - (self._current_at or 0.0) < every:
            return
        now = time.perf_counter()
        if now - self._proved_at < every:
            return  # (asked lately, and nothing committed yet to show)
        self._proved_at = now
        try:
            # (Briefly: asked on the loop, and a partition whose offsets are in another
            # producer's open transaction has no answer until it ends, 30 s or more.)
            committed = consumer.committed(
                [TopicPartition(t, p) for t, p in sorted(self._owned)], _REWIND_ASK_S
            )
        except KafkaException as exc:
            log.debug("application %s: committed offsets: %s", self.name, exc)
            return
        offsets = [tp for tp in committed if tp.offset >= 0]
        if offsets:
            self._commit_txn(offsets, consumer)

    def _offsets_to_commit(self) -> list[TopicPartition]:
        offsets = [TopicPartition(topic, part, off) for (topic, part), off in self._next_offsets.items()]
        self._next_offsets = {}
        return offsets

    def _seal(self, sync: bool) -> bool:
        """At-least-once: set this checkpoint's state writes and offsets aside (False: nothing to).

        The writes are encoded and sent to the changelog spread over the loop's iterations
        (:meth:`_encode_step`; all at once when ``sync``), so a checkpoint of tens of thousands
        of keys does not stall the loop; the state stays as it was at the seal (see
        :mod:`vigil.stream.state`).  Once all are sent, the seal waits for Kafka's acknowledgement
        (:meth:`_complete_epochs`)."""
        if self._sealing is not None:
            self._encode_step(None)  # the previous one first (rare: spread over half an interval)
        if (self._sealed or self._committing is not None) and self._state_producer is not None:
            # One seal per transaction: its changelog records must not share a transaction with
            # the next seal's, or a commit would make state durable ahead of its offsets.  So the
            # previous seal commits first; if its outputs are not all acknowledged yet, or its
            # commit is still on its way, this checkpoint is skipped rather than waited for (its
            # writes and offsets join the next seal), unless ``sync``.
            self._complete_epochs(sync)
            if self._lost:
                return False  # refused: what was processed since is processed again (see _rewind)
            if self._sealed or self._committing is not None:
                return False
        parts: list[_SealPart] = []
        for task in self._tasks.values():
            for store_id, state in task.stores.items():
                if state.pending_count:
                    state.seal()
                    parts.append(_SealPart(state, changelog_topic(self.name, store_id), task.number))
        offsets = self._offsets_to_commit()
        if not offsets and not parts:
            return False
        self._sealing = _Seal(offsets, parts)
        if sync:
            self._encode_step(None)
        else:
            keys = sum(part.state.sealed_count for part in parts)
            self._encode_pace.spread(keys, _SPREAD * self.checkpoint_interval_s, time.monotonic())
        return True

    def _encode_step(self, limit: int | None) -> None:
        """Encode and send up to ``limit`` (None: all) of the open seal's state writes."""
        seal = self._sealing
        if seal is None:
            return
        budget = limit
        for part in seal.parts:
            if not part.state.sealed_count:
                continue
            chunk = part.state.encode_sealed(budget)
            self._send_changelog(part.topic, part.partition, chunk)
            part.writes += chunk
            if budget is not None:
                budget -= len(chunk)
                if budget <= 0 and part.state.sealed_count:
                    return
        if all(not part.state.sealed_count for part in seal.parts):
            self._sealing = None
            writes = [(part.state, part.writes, part.topic, part.partition) for part in seal.parts]
            self._sealed.append((time.monotonic(), seal.offsets, writes))

    def _queue_writes(self, writes: _Writes) -> None:
        """The state writes of one committed transaction: to RocksDB, spread over time (Pace)."""
        moved: set[int] = set()
        for state, pending, _topic, _part in writes:
            if pending and state.changelog_next is not None and id(state) not in moved:
                # The transaction's records, then its commit marker (Kafka writes one to each
                # partition a committed transaction wrote), follow this process's previous
                # marker: the offset becomes this marker's, the changelog's end less one, where a
                # restore finds nothing to re-read.  (Counting records alone fell a marker short
                # per transaction: 432,000 a day exactly-once at 0.2 s, re-read by a restore.)
                # Never past the end: every offset counted is one of this process's records or
                # markers, after the end the restore saw; a marker not written yet when a restore
                # looks is the end itself.  What else lands in between (another owner's aborted
                # records, a late marker of the one before) makes it fall short, which is safe.
                moved.add(id(state))
                state.changelog_next += len(pending) + (1 if state.changelog_at_marker else 0)
                state.changelog_at_marker = True
            self._writes.append(_PendingWrite(state, pending, state.changelog_next, self._current_at))
        waiting = sum(len(item.writes) - item.done for item in self._writes)
        self._write_pace.spread(waiting, _SPREAD * self.checkpoint_interval_s, time.monotonic())

    def _write_step(self, limit: int | None) -> None:
        """Write up to ``limit`` (None: all) queued writes to RocksDB, oldest first.

        A store's writes go in order, and its changelog offset with the last chunk of each
        checkpoint; a store closed meanwhile is skipped (its changelog has the writes: restore
        applies them)."""
        budget = limit
        queue = self._writes
        while queue:
            item = queue[0]
            if item.state.closed:
                queue.popleft()
                continue
            left = len(item.writes) - item.done
            n = left if budget is None else min(budget, left)
            final = n == left
            chunk = item.writes[item.done : item.done + n] if item.done or not final else item.writes
            item.state.write_committed(
                chunk, item.offset if final else None, final=final, written_at=item.current_at
            )
            item.done += n
            if final:
                queue.popleft()
            if budget is not None:
                budget -= n
                if budget <= 0:
                    return

    def _complete_epochs(self, sync: bool = False) -> None:
        """At-least-once: once Kafka has acknowledged every record produced so far, commit the sealed
        checkpoints' offsets and queue their state for RocksDB, oldest first (so both only move
        forward).  "Everything acknowledged" is librdkafka's out-queues (outputs and, with state,
        the changelog records of the state transaction) being empty, which under steady load they
        may not be for long: then, once the oldest sealed checkpoint is older than
        ``max(1 s, 5 checkpoint intervals)`` (:func:`ack_wait_s`), or when ``sync``, the loop waits
        for a flush."""
        committing = self._committing
        if committing is not None:
            if not sync and not committing.future.done():
                waited = time.monotonic() - committing.asked_at
                self._say_overdue("the checkpoint's commit", waited, _COMMIT_S)
                return
            if not self._settle_commit():
                return  # refused: what was processed since is processed again (see _rewind)
        if not self._sealed:
            return
        # The state producer's changelog records too: committing its transaction waits for their
        # acknowledgement, and that wait blocked the loop (the loop spent 12-370 ms in this
        # method under load, measured before this check).
        for producer in (self._running_clients()[0], self._state_producer):
            if producer is None:
                continue
            try:
                producer.poll(0)  # serve failure reports
                if len(producer):
                    waited = time.monotonic() - self._sealed[0][0]
                    if not sync and waited < ack_wait_s(self.checkpoint_interval_s):
                        return
                    remaining, waited = self._flushed(producer, self._txn_call_s())
                    if remaining:
                        # (Stopping, not asked: the checkpoint is given up whatever the answer,
                        # and asking cost a stop during an outage 5 s more; a topic missing is
                        # named at the next start's first checkpoint.)
                        missing = "" if self._stop.is_set() else self._missing_outputs()
                        what = f"{remaining} records not acknowledged in {waited:.0f} s"
                        if not missing and self._abandoned_stopping(what):
                            return
                        if sync or missing:
                            msg = f"application {self.name!r}: {what}{missing}"
                            raise PipelineError(msg)
                        # A broker out of reach: the seal waits on (nothing is committed meanwhile),
                        # as exactly-once's commit does; records Kafka never takes fail at their
                        # message timeout (5 minutes), and that failure stops the application.
                        # (Raised here, an outage of 35 s stopped every at-least-once stage.)
                        log.warning("application %s: %s; waiting for the broker", self.name, what)
                        return
            except KafkaException as exc:
                # The state producer's fatal error (fenced after a stall past its transaction's
                # timeout) comes out of its poll too: told apart as the state producer's, it is
                # renewed (_expired), not raised as the producer of outputs' error (under load, a
                # stall while a seal's changelog records were on their way stopped the
                # application here; found in CI, 2026-12-05).
                if producer is not self._state_producer:
                    raise
                wrapped = self._state_call_failed(exc)
                if wrapped is exc:
                    raise
                raise wrapped from exc
        if self._delivery_errors:
            errors, self._delivery_errors = self._delivery_errors, []
            msg = (
                f"application {self.name!r}: {len(errors)} deliveries failed; first: "
                f"{errors[0]}{self._missing_outputs()}"
            )
            raise PipelineError(msg)
        consumer = self._running_clients()[1]
        sealed = self._sealed
        while sealed:
            _, offsets, writes = sealed.popleft()
            if self._state_producer is not None and (offsets or self._in_txn):
                if not sync:
                    self._start_commit(offsets, writes, consumer)
                    return  # (the writes are queued once it has committed: _settle_commit)
                if not self._commit_txn(offsets, consumer):
                    return
            elif offsets:
                try:
                    if sync and not sealed:
                        self._commit_offsets(consumer, offsets, "committing offsets")
                    else:
                        consumer.commit(offsets=offsets, asynchronous=True)
                except KafkaException as exc:
                    err = kafka_error(exc)
                    moved_on = err is not None and err.code() in _GROUP_MOVED_ON and not err.fatal()
                    if (
                        err is not None
                        and err.code() in _COMMIT_OUT_OF_REACH
                        and self._abandoned_stopping(f"the offsets' commit: {err.str()}")
                    ):
                        return  # (a broker out of reach or frozen: processed again at the next start)
                    if moved_on:
                        # (At-least-once, stateless: the partitions' next owner processes these
                        # records again, as at-least-once allows.  A stop after a long stall
                        # exited with an error here.)
                        log.warning(
                            "application %s: offsets not committed, the group went on without this "
                            "member (%s): their records are processed again",
                            self.name,
                            err,
                        )
                    else:
                        msg = f"application {self.name!r}: committing offsets failed: {exc.args[0]}"
                        raise PipelineError(msg) from exc
            self._queue_writes(writes)

    def _flushed(self, producer: Producer, timeout_s: float) -> tuple[int, float]:
        """``producer.flush(timeout_s)`` in slices, ended ``_STOPPING_CALL_S`` after it began
        once the application is stopping (in one call, a stop during an outage waited for the
        whole timeout, found in review); the records still unacknowledged, and the seconds it
        waited."""
        began = time.monotonic()
        while True:
            limit = _STOPPING_CALL_S if self._stop.is_set() else timeout_s
            left = limit - (time.monotonic() - began)
            remaining = int(producer.flush(max(0.0, min(_CALL_SLICE_S, left))))
            waited = time.monotonic() - began
            if not remaining or waited >= (_STOPPING_CALL_S if self._stop.is_set() else timeout_s):
                return remaining, waited

    def _start_commit(self, offsets: list[TopicPartition], writes: _Writes, consumer: Consumer) -> None:
        """Commit a seal's transaction (its changelog records and input ``offsets``) on the
        committer thread: the commit takes three round trips to the broker (10-30 ms under load),
        which the loop spent waiting, every checkpoint, while records queued behind it.  The
        client releases the GIL while it waits.  Until the commit is settled (_settle_commit) no
        other seal begins (_seal), and whatever would touch the transaction, the stores or the
        offsets settles it first: a revocation, a lost assignment, a rewind, a failure, closing."""
        producer, committer = self._state_producer, self._committer
        if producer is None or committer is None:  # (at-least-once with state has both while running)
            msg = f"application {self.name!r} is not running (call run())"
            raise PipelineError(msg)
        try:
            self._ensure_txn()  # (offsets alone, after a seal with no state writes)
        except KafkaException as exc:
            wrapped = self._state_call_failed(exc)
            if wrapped is exc:
                raise
            raise wrapped from exc
        metadata = consumer.consumer_group_metadata() if offsets else None

        def commit() -> None:
            if offsets:
                self._retrying(
                    lambda: producer.send_offsets_to_transaction(offsets, metadata, self._txn_call_s())
                )
            self._retrying(lambda: producer.commit_transaction(self._txn_call_s()))

        # (The time before the commit starts: it is the checkpoint's "current as of".)
        began = time.time()
        self._committing = _Committing(committer.submit(commit), offsets, writes, began)

    def _settle_commit(self) -> bool:
        """Wait for the commit on its way, if any, and act on it: its writes to RocksDB (True),
        or, refused because the group moved on, back to the last checkpoint (False, as
        _commit_txn); another failure stops the application."""
        committing, self._committing = self._committing, None
        if committing is None:
            return True
        try:
            self._settled(committing)
        except KafkaException as exc:
            if (
                self._group_moved_on(exc)
                or self._renewed_after_timeout(exc, txn_call=True)
                or self._aborted_to_retry(exc)
                or (_out_of_reach(exc) and self._abandoned_stopping(str(kafka_error(exc))))
            ):
                return False
            raise self._checkpoint_failed(exc) from exc
        self._in_txn = False
        self._txn_began = None
        self._renewals = self._expiries = 0
        self._aborted_checkpoints = 0
        if committing.offsets:  # (the group's metadata checked: still this member's partitions)
            self._current_at = committing.began
        self._queue_writes(committing.writes)
        return True

    def _settled(self, committing: _Committing) -> None:
        """Wait for a seal's commit on the committer thread (:meth:`_waited`)."""
        self._waited(committing.future, "the checkpoint's commit", _COMMIT_S, committing.asked_at)

    def _settle_quietly(self) -> None:
        """After a failure or when closing: wait for the commit on its way, if any; committed,
        its writes go to RocksDB, otherwise the transaction is left to be aborted."""
        committing = self._committing
        if committing is None:
            return
        self._committing = None
        error: BaseException | None = None
        try:
            self._settled(committing)
        except Exception as exc:  # (said below)
            error = exc
        if error is None:
            self._in_txn = False
            self._queue_writes(committing.writes)
        else:
            # Said, not raised: what stopped the application (or its closing) is the error to
            # raise; this one would otherwise go unseen.
            log.warning("application %s: the checkpoint being committed failed too: %s", self.name, error)

    def _commit_txn(self, offsets: list[TopicPartition], consumer: Consumer) -> bool:
        """Commit the open transaction with the input ``offsets`` (exactly-once: outputs, changelog
        records and offsets; at-least-once with state: a seal's changelog records and offsets).
        False: the group moved on (the state goes back to the last checkpoint and the input is read
        again from there, as after a lost assignment)."""
        producer = self._txn_producer()
        if producer is None:
            return True
        began = time.time()
        try:
            self._ensure_txn()
            if offsets:
                metadata = consumer.consumer_group_metadata()
                self._retrying(
                    lambda: self._txn_call(
                        "send_offsets_to_transaction",
                        lambda timeout: producer.send_offsets_to_transaction(offsets, metadata, timeout),
                    )
                )
            self._retrying(lambda: self._txn_call("commit_transaction", producer.commit_transaction))
            self._in_txn = False
            self._txn_began = None
            self._renewals = self._expiries = 0
            self._aborted_checkpoints = 0
            if offsets:  # (the group's metadata checked: still this member's partitions)
                self._current_at = began
        except KafkaException as exc:
            if (
                self._group_moved_on(exc)
                or self._renewed_after_timeout(exc, txn_call=True)
                or self._aborted_to_retry(exc)
                or (_out_of_reach(exc) and self._abandoned_stopping(str(kafka_error(exc))))
            ):
                return False
            raise self._checkpoint_failed(exc) from exc
        return True

    def _retrying(self, call: Callable[[], None]) -> None:
        """Make one transactional call of a checkpoint, again while the client calls its failure
        retriable (the broker out of reach or slow, the coordinator moving), as librdkafka asks,
        for up to ``_RETRY_TXN_CALL_S``.  One try of a call that could not reach the broker
        stopped the application: an outage of 30 s or more (found in review)."""
        tried_until = time.monotonic() + _RETRY_TXN_CALL_S
        while True:
            try:
                call()
                return
            except KafkaException as exc:
                err = kafka_error(exc)
                if (
                    err is None
                    or not err.retriable()
                    or err.fatal()
                    or err.txn_requires_abort()
                    or self._stop.is_set()
                    or time.monotonic() >= tried_until
                ):
                    raise
                log.warning("application %s: checkpoint: %s; trying again", self.name, err)
                time.sleep(_RETRY_TXN_PAUSE_S)  # (a failure at once, "after 0ms", is not tried in a spin)

    def _txn_call(self, what: str, call: Callable[[float], None], timeout_s: float | None = None) -> None:
        """Make one blocking call of the transactional producer, ``call`` given its timeout
        (``timeout_s``, else :meth:`_txn_call_s`), on the committer thread (see
        vigil.stream.calls) and wait for it (:meth:`_waited`); here, with no such thread (not
        running).  While a call given up is still waiting for the broker, the next fails at
        once, as one the broker did not answer in time."""
        timeout_s = self._txn_call_s() if timeout_s is None else timeout_s
        committer = self._committer
        if committer is None:
            call(timeout_s)
            return
        given_up = self._given_up
        if given_up is not None and not given_up.done():
            msg = f"{what}: an earlier call given up still waits for the broker"
            raise _not_returned(msg)
        self._waited(committer.submit(lambda: call(timeout_s)), what, timeout_s, time.monotonic())

    def _waited(self, future: Future[None], what: str, timeout_s: float, began: float) -> None:
        """Wait for ``future``, of a call made on the committer thread at ``began`` (monotonic),
        and raise what the call raised.  Past its timeout, ``timeout_s``, and a margin, the
        client waits for the broker whatever the timeout said (see vigil.stream.calls): said
        once a minute, and waited for (the outage ridden out), unless the application is
        stopping: then the call is given up ``_STOPPING_CALL_S`` after it began, raised as a
        retriable timeout, so the checkpoint is left to the next start (_abandoned_stopping)."""

        def given_up() -> None:
            self._given_up = future

        self._sliced(future, what, timeout_s, began, _STOPPING_CALL_S, "checkpoint", given_up)

    def _sliced(
        self,
        future: Future[_T],
        what: str,
        timeout_s: float,
        began: float,
        give_up_s: float,
        doing: str,
        given_up: Callable[[], None],
    ) -> _T:
        """``future``'s outcome, of a call made on another thread at ``began`` (monotonic),
        waited for in slices of ``_CALL_SLICE_S``: past ``timeout_s`` and a margin said once a
        minute (:meth:`_say_overdue`, as ``doing``); once the application is stopping, given up
        ``give_up_s`` after ``began`` (``given_up`` told first) and raised as a retriable
        timeout."""
        while True:
            try:
                return future.result(timeout=_CALL_SLICE_S)
            except TimeoutError:
                pass
            waited = time.monotonic() - began
            if self._stopping() and waited >= give_up_s:
                given_up()
                msg = f"{what} has not returned in {waited:.1f} s; given up, stopping"
                raise _not_returned(msg)
            self._say_overdue(what, waited, timeout_s, doing)

    def _say_overdue(self, what: str, waited: float, timeout_s: float, doing: str = "checkpoint") -> None:
        """Say a call has waited past its timeout and a margin (``waited`` seconds), once a minute."""
        now = time.monotonic()
        if waited < timeout_s + _OVERDUE_MARGIN_S or now - self._overdue_said_at < _OVERDUE_SAY_EVERY_S:
            return
        self._overdue_said_at = now
        log.warning(
            "application %s: %s: %s has not returned in %.0f s, past its %g s timeout: "
            "the client waits for the broker to answer (out of reach?); waiting for the broker",
            self.name,
            doing,
            what,
            waited,
            timeout_s,
        )

    def _asked(self, what: str, call: Callable[[], _T], *, holds_id: bool = False) -> _T:
        """Make ``call``, a blocking call that asks the broker outside a checkpoint (at the start:
        the topics, a transactional producer's ``init_transactions``; a producer renewed), on a
        thread of its own (:func:`vigil.hub.aside.call_aside`), and wait for it in slices.  A
        stop is taken at once, the call given up and raised as a retriable timeout (nothing is
        lost: what it was for is not needed once stopping); made on the loop's thread, each of
        these held a stop up to its 30 s with the broker frozen, one after the other (found in
        review, 2026-12-06).  Waiting past 30 s and a margin is said once a minute, as at a
        checkpoint (the topics' creation makes several calls: maybe each its 30 s).  ``holds_id``:
        a transactional producer's start, given up, keeps the instance slot until it returns
        (:meth:`_release_slot`)."""
        if self._stopping():
            msg = f"{what}: not asked, stopping"
            raise _not_returned(msg)
        doing = "starting" if self._consumer is None else "renewing the producer"
        future = call_aside(call, f"{self.name}-ask")

        def given_up() -> None:
            if holds_id:
                self._start_given_up = future

        return self._sliced(future, what, _TIMEOUT, time.monotonic(), 0.0, doing, given_up)

    def _abandoned_stopping(self, why: str) -> bool:
        """Whether the application is stopping, so a checkpoint the broker could not take (out of
        reach: ``why``) is given up: said, not raised, for nothing is lost.  What it held is
        processed again at the next start, whose producer aborts the transaction left open
        (asked now, the abort would wait for the broker too).  Waiting, a SIGTERM during an
        outage took a minute and ended with "checkpoint failed" (found in review)."""
        if not self._stop.is_set():
            return False
        log.warning(
            "application %s: stopping with the last checkpoint not committed (%s); what it held "
            "is processed again at the next start",
            self.name,
            why,
        )
        self._abandoned = True
        # One short try: a broker that answers (records timed out on one partition alone) lets
        # the transaction go now, not at its timeout, which held up the partitions' next owner.
        # (Short: the broker has just not answered; given _STOPPING_CALL_S, a stop during an
        # outage waited that much longer, found in review.)
        self._abort_txn(quiet=True, timeout_s=_ABANDON_ABORT_S)
        self._start_over()
        return True

    def _txn_call_s(self) -> float:
        """How long one transactional call of a checkpoint waits: briefly once stopping (a
        commit takes milliseconds when the broker answers)."""
        return _STOPPING_CALL_S if self._stopping() else _TIMEOUT

    def _stopping(self) -> bool:
        """Whether the application is on its way out: asked to stop, or failed (a failure while
        a seal's commit waited for a broker out of reach waited for it on the way out, found in
        review, 2026-12-06)."""
        return self._stop.is_set() or self._failed

    def _aborted_to_retry(self, exc: KafkaException) -> bool:
        """Whether a checkpoint's transaction failed in a way that only its abort clears (an
        output or changelog record the broker did not take in time: a broker out of reach; or
        refused, seen at its commit or at the next produce: _retried_after_refusal), and was
        aborted: then, as when the group moved on, the state goes back to the last
        checkpoint and the input is read again from there (the rewind waits for the broker).
        Not when an output topic is missing (said at once: _checkpoint_failed), nor after
        ``_MAX_ABORTED_CHECKPOINTS`` in a row with no commit between (the same failure each
        time, an output refused, say: processing again for ever would commit nothing)."""
        err = kafka_error(exc)
        if err is None or err.fatal() or not err.txn_requires_abort() or self._stop.is_set():
            return False
        if self._aborted_checkpoints >= _MAX_ABORTED_CHECKPOINTS or self._missing_outputs():
            return False
        self._aborted_checkpoints += 1
        log.warning(
            "application %s: checkpoint failed (%s); aborted, processing again from the last "
            "checkpoint (%d of %d in a row)",
            self.name,
            err,
            self._aborted_checkpoints,
            _MAX_ABORTED_CHECKPOINTS,
        )
        self._abort_txn()
        self._start_over()
        return True

    def _retried_after_refusal(self, exc: KafkaException) -> bool:
        """Whether ``exc`` is an output's or a changelog record's failure that only an abort of
        the transaction clears (a record the broker refused, raised at the next produce:
        _refused), handled as the commit handles it: aborted and processed again from the last
        checkpoint (_aborted_to_retry), or, stopping, given up (_abandoned_stopping).  After
        ``_MAX_ABORTED_CHECKPOINTS`` in a row, or with an output topic missing, the checkpoint's
        failure is raised, naming the record refused."""
        if not _requires_abort(exc):
            return False
        if self._aborted_to_retry(exc) or self._abandoned_stopping(str(kafka_error(exc))):
            return True
        raise self._checkpoint_failed(exc) from exc

    def _group_moved_on(self, exc: KafkaException) -> bool:
        """Whether a commit failed because the group moved on while this process was away (a
        stall past max.poll.interval.ms, a pause in the VM): the offsets may no longer be this
        member's to commit.  Then, as after a lost assignment, the transaction is aborted, the
        state goes back to the last checkpoint and the input is read again from there once the
        group has this member back."""
        err = kafka_error(exc)
        if err is None or err.code() not in _GROUP_MOVED_ON or err.fatal():
            return False
        log.warning("application %s: checkpoint refused (%s); processing again", self.name, err)
        self._abort_txn()
        self._start_over()
        return True

    def _renewed_after_timeout(self, exc: KafkaException, txn_call: bool = False) -> bool:
        """Whether a client call (the commit, an output, a changelog record) failed fatally after
        the transaction had been open longer than the producer's transaction timeout.  The broker
        then aborted it and fenced the producer; the loop had stalled (a long batch, a paused
        process or VM), and no other process need be involved.  A new producer of the same
        transactional id takes over (this process alone holds the id: see :meth:`_expired`), and,
        as after a lost assignment, the state goes back to the last checkpoint and the input is
        read again from there.  (Before, every such stall stopped the application: 30 s at the
        default interval, where a stall past ``max.poll.interval.ms``, 300 s, was meant to be
        recovered from.)  A producer fenced sooner, or one whose id was given (``instance_id``),
        stops the application as before.  Exactly-once, the producer of outputs is renewed;
        at-least-once with state, the state producer (of changelog records and offsets), and the
        outputs sent since the last checkpoint are sent again, as after any rewind."""
        if not self._renew_expired(exc, "a transaction failed", txn_call):
            return False
        self._start_over()
        return True

    def _expired(self, exc: KafkaException, txn_call: bool = False) -> bool:
        """Whether ``exc`` is a fatal client error while the open transaction has been open past
        its timeout, with a transactional id this process alone holds (its instance slot in this
        home; an ``instance_id`` given may be another process's too, and a stalled one that took
        the id back would fence the process that has it now).  Not while a commit is on its way
        on the committer thread (at-least-once), which still uses the producer.  At-least-once,
        only an error of the state producer's (``txn_call``: the caller's call was one of its;
        else raised as :class:`StateProducerFailed`): the producer of outputs is another, and its
        fatal error renews nothing."""
        began = self._txn_began
        return (
            (self._eos or txn_call or isinstance(exc, StateProducerFailed))
            and self._new_producer is not None
            and self._slot is not None
            and self._committing is None
            and began is not None
            and not self._failed
            and not self._stop.is_set()  # (stopping: the error is said, nothing renewed)
            and _is_fatal(exc)
            and _boot_clock() - began > self._txn_timeout_s
        )

    def _renew_expired(self, exc: KafkaException, failed: str, txn_call: bool = False) -> bool:
        """Whether ``exc`` (of a commit, an abort, an output) is the fatal error of a transaction
        open past its timeout (:meth:`_expired`), and a new producer has taken over (see
        _renewed_after_timeout)."""
        began, renew = self._txn_began, self._new_producer
        if renew is None or began is None or not self._expired(exc, txn_call):
            return False
        open_s = _boot_clock() - began
        self._expiries += 1
        if not self._pace_after_expiry(open_s):
            # (Batches made smaller, the work is not the same: counted once they cannot be.)
            self._renewals += 1
        if self._renewals > _MAX_RENEWALS:
            # The same work past the timeout each time (a batch, a checkpoint too slow for it):
            # renewed for ever, nothing would ever be committed.
            msg = (
                f"application {self.name!r}: {failed}: {exc.args[0]}; the transaction expired "
                f"{self._expiries} times in a row without a checkpoint between, {self._renewals} of "
                f"them with no batch under way or batches as small as expiries make them (now "
                f"{self._batch_cap} records; open {open_s:.0f} s, timeout {self._txn_timeout_s:.0f} "
                "s): a batch or a checkpoint takes longer than transaction.timeout.ms"
            )
            raise PipelineError(msg)
        log.warning(
            "application %s: the transaction was open %.0f s, past its timeout (%.0f s), and the "
            "broker aborted it (%s): a new producer takes over and the input is processed again "
            "from the last checkpoint",
            self.name,
            open_s,
            self._txn_timeout_s,
            exc.args[0],
        )
        old = self._txn_producer()
        self._set_txn_producer(None)
        if old is not None:
            with contextlib.suppress(KafkaException, RuntimeError):
                old.purge(in_queue=True, in_flight=True, blocking=False)
        try:
            self._set_txn_producer(renew())
        except KafkaException as again:
            if not self._stop.is_set():
                msg = (
                    f"application {self.name!r}: {failed}: {exc.args[0]}; "
                    f"a new producer failed too: {again.args[0]}"
                )
                raise PipelineError(msg) from again
            # Stopped while it started (the broker slow to answer: see _asked): nothing of the
            # expired transaction stands, and the next start's producer takes the id over.
            # (Raised, a SIGTERM then ended the stage with an error.)
            log.warning(
                "application %s: stopping before a new producer could start (%s); the next start's "
                "takes over",
                self.name,
                error_text(again),
            )
            self._abandoned = True
        self._in_txn = False
        self._txn_began = None
        self._forget_reports()
        return True

    def _pace_after_expiry(self, open_s: float) -> bool:
        """Whether batches were made smaller after a transaction expired in a batch: one that
        failed part way (its next output fenced) never reached :meth:`_pace_batches`, and
        processed again at its size it expired again, until the stage stopped (500 records at
        80 ms each, the default 30 s timeout).  The records handed over are taken to have cost
        ``open_s`` together: some were not processed yet, so the cost is understated, and a
        batch still too slow expires again and shrinks again, by at least
        ``_BATCH_SHARE_OF_POLL`` each time.  Not when no batch was under way (the expiry came
        at a checkpoint, after a batch that measured its cost, or in an outage): counted again,
        a batch's cost made them far smaller than they need be."""
        handed, self._handed = self._handed, 0
        if not handed:
            return False
        self._record_cost = max(self._record_cost, open_s / handed)
        limit, setting = self._pace_limit()
        fits = max(1, int(_BATCH_SHARE_OF_POLL * limit / self._record_cost))
        if fits >= self._cap:
            return False
        self._cap = fits
        self._batch_cap = min(self.batch_size, fits)
        self._before_shrink = (0, 0.0)
        log.warning(
            "application %s: batches of at most %d records (a transaction open %.0f s; %s is %g s)",
            self.name,
            fits,
            open_s,
            setting,
            limit,
        )
        return True

    def _forget_reports(self) -> None:
        """A renewed producer's predecessor's reports are never served: its records were in the
        aborted transaction.  (At-least-once, the producer of outputs stays, and its reports.)"""
        if self._eos:
            self._delivery_errors.clear()
            self._fatal_errors.clear()
        else:
            self._state_delivery_errors.clear()
            self._state_fatal_errors.clear()

    def _set_txn_producer(self, producer: Producer | None) -> None:
        if self._eos:
            self._producer = producer
        else:
            self._state_producer = producer

    def _start_over(self) -> None:
        """Nothing since the last checkpoint stands: pending state dropped, and the partitions
        still owned read again from their committed offsets (see _rewind)."""
        self._sealing = None
        self._sealed.clear()
        self._next_offsets = {}
        self._discard_pending()
        self._lost = True

    def _abort_txn(self, *, quiet: bool = False, timeout_s: float | None = None) -> None:
        """Abort the open transaction, trying again while the client calls the failure retriable
        (the broker slow to answer), as librdkafka asks.  Another failure stops the application
        naming it (``quiet``: on the way out after another error, it is logged instead): the
        producer could not begin the next transaction, and that failure had been the one
        reported, inside whichever operator sent the next output (found in review, 2026-12-04)."""
        producer = self._txn_producer()
        if producer is None or not self._in_txn:
            self._in_txn = False
            return
        aborted = False
        try:
            self._try_abort(producer, 1 if quiet else _ABORT_ATTEMPTS, timeout_s)
            aborted = True
        except KafkaException as exc:
            # A lost assignment after a stall past the transaction's timeout: the broker aborted
            # it and fenced the producer (the caller drops the state and rewinds, as it does).
            if not self._renew_expired(exc, "aborting the transaction failed", txn_call=True):
                self._in_txn = False
                self._txn_began = None
                stopping = self._stop.is_set() and _out_of_reach(exc)
                if not quiet and not stopping:
                    msg = f"application {self.name!r}: aborting the transaction failed: {exc.args[0]}"
                    raise PipelineError(msg) from exc
                # (Stopping with the broker out of reach: the next start's producer aborts it.
                # Raised, a SIGTERM during an outage's abort ended in an error; found in review.)
                self._abandoned = self._abandoned or stopping
                log.warning("application %s: abort_transaction: %s", self.name, exc)
        self._in_txn = False
        self._txn_began = None
        self._state_delivery_errors.clear()  # (its records': the transaction is gone)
        current = self._producer
        if aborted and self._eos and current is not None and current is producer:
            # The outputs' too, exactly-once: they were in the transaction aborted, and are sent
            # again with what is processed again.  Kept, the first commit after an outage
            # stopped the application on records that had timed out in it (found in review).
            # (Not after a renewal: the old producer's reports are never served, its fatal
            # error among them, and served here it stopped the new one.  Not after a failed
            # abort either: a fenced producer's poll raises its fatal error, in place of the
            # error the application stops with.)
            current.poll(0)
            self._delivery_errors.clear()

    def _try_abort(self, producer: Producer, attempts: int, timeout_s: float | None = None) -> None:
        for tried in range(1, attempts + 1):
            try:
                self._txn_call("abort_transaction", producer.abort_transaction, timeout_s)
                return
            except KafkaException as exc:
                err = kafka_error(exc)
                if err is None or not err.retriable() or tried == attempts or self._stop.is_set():
                    raise
                log.warning(
                    "application %s: aborting the transaction, attempt %d of %d: %s",
                    self.name,
                    tried,
                    attempts,
                    err,
                )
                if self._abort_renewed(producer):
                    return

    def _abort_renewed(self, producer: Producer) -> bool:
        """Whether, an abort of ``producer`` having failed for want of the broker with the
        transaction open past its timeout (so the broker has aborted it itself), a new producer
        of the same transactional id has taken over: its start ends whatever the old one left
        open.  The old one may never send the abort again: in review, after a 120 s freeze of
        the broker, every later try said "Timed out waiting for operation to finish" with the
        broker back (its coordinator never found again), and the application stopped when
        they ran out.  Not with an ``instance_id`` given (another process's, maybe: the same
        rule as _expired); a new producer that cannot start yet leaves the old one to try
        again."""
        began, renew, current = self._txn_began, self._new_producer, self._txn_producer()
        if (
            renew is None
            or self._slot is None
            or began is None
            or current is not producer  # (already renewed: nothing of the old one to end)
            or self._committing is not None  # (at-least-once: still using it; settled first)
            or _boot_clock() - began <= self._txn_timeout_s
        ):
            return False
        try:
            made = renew()
        except KafkaException as exc:
            log.warning(
                "application %s: a new producer could not start either: %s", self.name, error_text(exc)
            )
            return False
        self._set_txn_producer(made)
        with contextlib.suppress(KafkaException, RuntimeError):
            current.purge(in_queue=True, in_flight=True, blocking=False)
        log.warning(
            "application %s: the transaction was open %.0f s, past its timeout (%.0f s): a new "
            "producer has taken over, which ends it",
            self.name,
            _boot_clock() - began,
            self._txn_timeout_s,
        )
        self._forget_reports()
        return True

    def _update_gauges(self) -> None:
        now = time.monotonic()
        if now - self._last_gauges < 1.0 or self._consumer is None:
            return
        self._last_gauges = now
        self.prometheus.loop_time.labels(self.name).set(time.time())
        for kind, seconds in self.metrics.longest_step_s.items():
            self.prometheus.longest_step.labels(self.name, kind).set(seconds)
        consumer = self._consumer
        # Partitions being restored too: assigned, so behind by what they hold unread.
        restoring = self._restoring_partitions()
        assigned = self._owned | restoring
        tps = [TopicPartition(t, p) for t, p in sorted(assigned)]
        try:
            positions = consumer.position(tps) if tps else []
        except KafkaException:
            return
        buffers = self._buffers
        paused = set(self.metrics.paused)
        lags: dict[TP, int] = {}
        unread: dict[TP, tuple[int, int]] = {}  # (their watermarks as fetched, -1 when none)
        for tp in positions:
            key = (tp.topic, tp.partition)
            if self.alignment is not None and key in self._owned:
                self.prometheus.paused.labels(self.name, tp.topic, str(tp.partition)).set(key in paused)
            if key in restoring:
                # Paused, it fetches nothing: the watermarks librdkafka keeps are from before (a
                # partition owned before and assigned back keeps them), and its lag read 0 for
                # the whole restore while records piled up.  Its end is asked.
                unread[key] = (-1, -1)
                continue
            try:
                low, high = consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if tp.offset < 0:
                unread[key] = (low, high)
                continue
            self._unread.pop(key, None)
            if high >= 0:
                # Read but waiting for alignment is not processed yet: behind too.
                lags[key] = max(0, high - tp.offset) + len(buffers.get(key, ()))
        if unread:
            lags.update(self._unread_lags(consumer, unread, now))
        for (topic, partition), lag in lags.items():
            self.prometheus.lag.labels(self.name, topic, str(partition)).set(lag)
        self._count_keys()

    def _count_keys(self) -> None:
        """Count on the stores' keys for their gauge (see vigil.stream.keycount)."""
        gauge, name = self.prometheus.state_keys, self.name
        self._key_counter.turn(
            [
                (state, gauge.labels(name, store_id, str(task.number)).set)
                for task in self._tasks.values()
                for store_id, state in task.stores.items()
            ]
        )

    def _unread_lags(self, consumer: Consumer, marks: dict[TP, tuple[int, int]], now: float) -> dict[TP, int]:
        """The lag of partitions the consumer knows no position for (nothing delivered since
        their assignment, or since a rewind sought them back), given the watermarks their
        fetches brought (``marks``, -1 when none): a backlog not handed over yet, a partition
        paused while its stores are restored, one at its end.  Left out, the gauge read near 0
        through a catch-up (0-7,540 of 29,000 records behind, over four partitions), so a lag
        alert never fired, and a partition at its end had no series at all.

        From where each starts reading: its committed offset (where a rewind seeks it too), else
        where the runtime chose to start it (``_first_read``: from the latest, or a partition
        lost before its first commit), else where ``auto.offset.reset`` puts it; never before
        the log's start.  To its end: the fetches', else (paused, it fetches nothing) asked for
        all such partitions together, at most every ``_UNREAD_ASK_EVERY_S`` (and at once for one
        whose end is not known yet).  The broker is asked in one request per kind, each within
        ``_UNREAD_ASK_S`` (on the loop): committed offsets once per assignment or rewind (one
        without an answer, in another producer's open transaction, is asked again after
        ``_UNREAD_RETRY_S``, the others on their own within the same budget), ends and log
        starts when the fetches brought none.  After a question that failed, the gauge asks
        nothing for ``_UNREAD_ASK_EVERY_S``: against a broker that did not answer, asked at
        every update, it held the loop 0.4-0.6 s of every second."""
        unread = self._unread
        asking = now >= self._unread_quiet_until
        ask = [
            tp
            for tp in marks
            if asking
            and (tp not in unread or (unread[tp][0] is None and now - unread[tp][1] >= _UNREAD_RETRY_S))
        ]
        committed, failed = self._committed_within(consumer, ask) if ask else ({}, False)
        # Ends (and log starts) the fetches did not bring, of partitions reached: all together
        # when due (one clock for all: asked each on its own clock, they came due at nearly
        # every update), and those with none known yet at once.
        due = asking and not failed and now - self._unread_ends_at >= _UNREAD_ASK_EVERY_S
        want_end = [
            tp
            for tp, (_, high) in marks.items()
            if high < 0
            and asking
            and not failed
            and (tp in unread or tp in committed)
            and (due or tp not in unread or unread[tp][2] < 0)
        ]
        if due and want_end:
            self._unread_ends_at = now
        # (Log starts with the ends: retention may move one past a start known from before.)
        want_low = [
            tp
            for tp, (low, _) in marks.items()
            if low < 0 and not failed and (tp in committed or tp in want_end)
        ]
        ends: dict[TP, int] = {}
        lows: dict[TP, int] = {}
        for wanted, where, found in ((want_end, OFFSET_END, ends), (want_low, OFFSET_BEGINNING, lows)):
            if wanted and not failed:
                answered, problem = _offsets_at(consumer, wanted, where, _UNREAD_ASK_S)
                found.update(answered)
                if problem is not None:
                    failed = True
                    log.debug("application %s: offsets for its lag: %s", self.name, problem)
        if failed:
            self._unread_quiet_until = now + _UNREAD_ASK_EVERY_S
        lags: dict[TP, int] = {}
        for tp, (low, high) in marks.items():
            known = unread.get(tp)
            if known is None and tp not in committed:
                continue  # not reached within the time: asked at a later update
            low = max(low, lows.get(tp, -1), known[3] if known is not None else -1)
            end = max(high, ends.get(tp, -1), known[2] if known is not None else -1)
            start: int | None = known[0] if known is not None else None
            start_asked = known[1] if known is not None else now
            if tp in committed:
                start_asked = now
                offset = committed[tp]
                if offset is None:  # no answer
                    start = None
                elif offset >= 0 and (low < 0 or offset >= low):
                    start = offset
                elif tp in self._first_read and offset < 0:
                    start = self._first_read[tp]
                elif low >= 0 and end >= 0:  # nothing committed, or before the log's start
                    start = end if self._from_the_end else low
                else:
                    start = None
            elif start is not None and 0 <= start < low and end >= 0:  # retention passed it since
                start = end if self._from_the_end else low
            unread[tp] = (start, start_asked, end, low)
            if start is not None and end >= 0:
                lags[tp] = max(0, end - start)
        return lags

    def _committed_within(self, consumer: Consumer, tps: list[TP]) -> tuple[dict[TP, int | None], bool]:
        """Committed offsets of ``tps`` for the lag gauge, within ``_UNREAD_ASK_S`` in all
        (None: no answer; < 0: nothing committed), and whether a question failed.  Asked
        together, then, when that found no stable answer for one of them (its offsets in another
        producer's open transaction), each on its own with what is left; those not reached are
        left out (asked later, where one without an answer waits ``_UNREAD_RETRY_S``)."""
        asked = [TopicPartition(t, p) for t, p in tps]
        answered, reached, problem = _committed_asked(
            consumer, asked, _UNREAD_ASK_S / 2, _UNREAD_ASK_S / 8, _UNREAD_ASK_S
        )
        if problem is not None:
            log.debug("application %s: committed offsets for its lag: %s", self.name, problem)
        out: dict[TP, int | None] = dict.fromkeys(tps[:reached])
        for tp in answered:
            if tp.error is None:
                out[tp.topic, tp.partition] = tp.offset
        return out, problem is not None

    # ------------------------------------------------------------------ rebalancing

    def _open_stores(self, task: _PartitionTask, now: float) -> bool:
        """Open the task's stores not open yet; whether they all are now.

        Processes sharing a home share their stores' directories, so a partition moving between
        them keeps its local state.  A member that lost the partition without noticing yet (it
        has not polled since: stuck in a long batch, paused) still holds the store's lock until
        it does; the new owner tries again, with a back-off, until ``store_lock_wait_s`` after
        the assignment, from the loop (the partitions it has go on meanwhile)."""
        for store_id in list(task.unopened):
            path = self.state_dir / store_id / str(task.number)
            try:
                task.stores[store_id] = RocksState(path, self.stores[store_id])
            except StoreLocked as exc:
                if now >= task.lock_deadline:
                    msg = (
                        f"application {self.name!r}: {exc}; waited {self.store_lock_wait_s:g}s for "
                        f"another process of this home to close it"
                    )
                    raise PipelineError(msg) from exc
                if store_id not in task.warned:
                    task.warned.add(store_id)
                    log.warning(
                        "application %s: store %s is open in another process of this home (a member "
                        "that had the partition?); waiting up to %.1fs more for it",
                        self.name,
                        path,
                        task.lock_deadline - now,
                    )
                # The last try at the deadline itself, so "waited" in the error is what it says.
                task.next_try = min(now + task.backoff, task.lock_deadline)
                task.backoff = min(2 * task.backoff, 1.0)
                return False
            task.unopened.remove(store_id)
        return True

    def _start_restore(self, tasks: Sequence[_PartitionTask]) -> None:
        """Start restoring the stores of ``tasks`` (all open); counts in each task its stores,
        each counted off as a restore step finds it restored (_restore_step)."""
        restore_tasks = [
            RestoreTask(state, changelog_topic(self.name, sid), task.number)
            for task in tasks
            for sid, state in task.stores.items()
        ]
        if not restore_tasks:
            return
        if self._restorer is None:
            self._restorer = Restorer(self.settings, self.name)
        by_number = {task.number: task for task in tasks}
        for t in self._restorer.add(restore_tasks):
            by_number[t.partition].restoring += 1

    def _followers(self, numbers: Sequence[int] | set[int]) -> list[TopicPartition]:
        """Partitions of the other inputs that follow these partition numbers of the first."""
        if not self._co_partitioned:
            return []
        return [TopicPartition(topic, n) for topic in self.inputs[1:] for n in sorted(numbers)]

    def _assign_callback(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """librdkafka's assignment callback: what it raises is kept and raised again by the loop
        once ``consume`` returns.  Raised through librdkafka (which logs through Python's logging
        meanwhile), it came out of ``consume`` as a chain of hundreds of ``SystemError`` lines,
        the cause at the bottom (a broker restarting as a stage started, found in review)."""
        self._in_callback = True
        try:
            self._joined()
            self._on_assign(consumer, partitions)
        except BaseException as exc:
            self._callback_error = exc
        finally:
            self._in_callback = False

    def _joining(self) -> None:
        """The consumer has begun to join its group (subscribed, or its partitions lost): timed
        until its next assignment under the classic protocol, where every member is given one
        when a rebalance ends, empty or not.  (Under KIP-848's a member given nothing hears
        nothing.)"""
        if self.settings.kafka_group_protocol == "classic":
            self._joining_since = time.monotonic()
            self._joining_said = False

    def _joined(self) -> None:
        since, self._joining_since = self._joining_since, None
        if since is not None and self._joining_said:
            log.info("application %s: in its group again, after %.0f s", self.name, time.monotonic() - since)

    def _joining_too_long(self, now: float) -> None:
        """Say once (each time it joins) that the consumer has gone ``_JOINING_SAY_S`` without an
        assignment: it processes nothing meanwhile, and nothing else tells (it has no partitions,
        so no lag).  Once, in a test, a consumer stayed out of its group for over three minutes
        after its broker had been frozen: librdkafka had put off joining until its topics'
        metadata was usable, which it asks again only at its refresh (see
        vigil.hub.client.consumer_config)."""
        since = self._joining_since
        if since is None or self._joining_said or now - since < _JOINING_SAY_S:
            return
        self._joining_said = True
        log.warning(
            "application %s: not in its group for %.0f s (no assignment since it subscribed or "
            "left the group; a member is given one, if empty, when a rebalance ends), so it "
            "processes nothing: a member slow to rejoin holds a rebalance for up to the members' "
            "max.poll.interval.ms (this one's %g s), the group's coordinator does not answer (is "
            "the broker reachable?), or its topics' metadata was not usable when it looked (it "
            "looks again at each refresh)",
            self.name,
            now - since,
            self._poll_interval_s,
        )

    def _raise_callback_error(self) -> None:
        exc, self._callback_error = self._callback_error, None
        if exc is not None:
            raise exc

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.stores:
            self._check_partition_counts(partitions)
        numbers = sorted({tp.partition for tp in partitions} - set(self._tasks) - set(self._restoring))
        if numbers and not self.stores and not self._failed and not self._lost:
            # The operators' on_assign (of partitions with no stores, called here) may take
            # longer than the transaction timeout: Kafka would abort the open transaction
            # meanwhile and the next checkpoint would fail.  What was processed so far becomes
            # durable first.  (Partitions with stores start from the restore step, which does
            # the same: a checkpoint here would only hold the callback on the broker.)
            self._checkpoint(sync=True)
        now = time.monotonic()
        tasks: dict[int, _PartitionTask] = {}
        try:
            for n in numbers:
                task = tasks[n] = _PartitionTask(n)
                task.unopened = list(self.stores)
                task.lock_deadline = now + self.store_lock_wait_s
                self._open_stores(task, now)
            self._start_restore([task for task in tasks.values() if not task.unopened])
            assigned = self._resumed(
                consumer, list(partitions) + self._followers([tp.partition for tp in partitions])
            )
            consumer.incremental_assign(assigned)
            # Stores open elsewhere are waited for, and stores restored, between batches
            # (_restore_step), the partitions paused until then: the partitions this member has go
            # on meanwhile, and a large store need not be restored within max.poll.interval.ms, as
            # it would inside this callback.
            paused = [tp for tp in assigned if tp.partition in tasks and tasks[tp.partition].waiting]
            if paused:
                consumer.pause(paused)
        except BaseException:
            try:
                if self._restorer is not None:
                    self._restorer.remove([st for task in tasks.values() for st in task.stores.values()])
            finally:
                for task in tasks.values():  # their RocksDB locks go with them
                    task.close()
            raise
        for tp in assigned:
            task_of = tasks.get(tp.partition)
            if task_of is not None:
                task_of.partitions.append(tp)
            else:  # a number this member has already (stateless inputs assigned each on its own)
                self._own([(tp.topic, tp.partition)])
        if self.alignment is not None and not self._owned:
            # Nothing runs yet (a start, a restart): the partitions restored first wait for the
            # others, which hold alignment as at the beginning of time until they run (see
            # vigil.stream.alignment).  While others run, a takeover does not stop them.
            self.alignment.add([(tp.topic, tp.partition) for tp in paused], time.monotonic(), restoring=True)
        # Every task filed first, then the ready ones moved to the owned in one step each: if an
        # operator's on_assign fails, closing the application still closes every store.
        self._restoring.update(tasks)
        for n, task in tasks.items():
            if not task.waiting:
                self._activate(self._restoring.pop(n))
        self.metrics.rebalances += 1
        self._assignment_changed()
        if not self._restoring:
            self.assigned.set()

    def _check_partition_counts(self, partitions: list[TopicPartition]) -> None:
        """Stop when an input has grown partitions since the start: a key's events then go to
        another partition than its state (and than the other inputs' events of that key), and
        its changelog has no partition for the new number."""
        grown = sorted({tp.topic for tp in partitions if tp.partition >= self._partitions})
        if grown:
            raise self._grown(grown)

    def _check_inputs(self, consumer: Consumer) -> None:
        """Stop when an input has grown partitions since the start (co-partitioned, looked up
        every ``_INPUTS_EVERY_S``).

        Only the first input is subscribed; the others' partitions follow its by number
        (_followers), so the group's assignment tells of the first input's growth alone
        (_check_partition_counts).  Partitions added to another were never read: their records
        waited with no lag shown and no error, until a restart refused the counts (a join found
        20 of 40 pairs).  Stateless, the first input's new partitions are assigned as any are
        (once the consumer's metadata is refreshed), and their numbers followed in the others:
        only an input with more partitions than the first has now is refused.  A broker that
        does not answer ends the round (asked again next time)."""
        counts: dict[str, int] = {}
        for topic in self.inputs:
            try:
                meta = consumer.list_topics(topic, timeout=_INPUTS_ASK_S).topics.get(topic)
            except KafkaException as exc:
                log.debug("application %s: looking up input %r: %s", self.name, topic, exc.args[0])
                return
            if meta is not None and meta.error is None:
                counts[topic] = len(meta.partitions)
        if not self.stores and self.inputs[0] not in counts:
            return  # (compared with the first input's count now: without it, next time)
        most = self._partitions if self.stores else counts[self.inputs[0]]
        grown = [topic for topic in self.inputs if counts.get(topic, 0) > most]
        if grown:
            raise self._grown(grown, most)

    def _grown(self, topics: list[str], most: int | None = None) -> ConfigError:
        names = ", ".join(map(repr, topics))
        if self.stores:
            return ConfigError(
                f"application {self.name!r}: input {names} has more partitions than the "
                f"{self._partitions} it had when the application started: keys hashed to the new "
                "partitions no longer meet their state or the other inputs' events.  Give every "
                "input the same count and restart (keys that moved start with empty state)"
            )
        return ConfigError(
            f"application {self.name!r}: input {names} has more partitions than the first input "
            f"{self.inputs[0]!r} ({most}): the inputs after the first are read by the first's "
            "partition numbers, so records in the others would not be read.  Restart it (inputs "
            "with unequal partition counts are read each on its own), or give the first as many"
        )

    def _activate(self, task: _PartitionTask) -> None:
        """Start processing a task's partitions (its stores open and restored)."""
        # Owned from here on, so closing the application closes them whatever happens next.
        self._tasks[task.number] = task
        self._own([(tp.topic, tp.partition) for tp in task.partitions])
        for op in self.operators:
            ctx = _KafkaContext(self, task, op)
            task.contexts.append((op, ctx))
            try:
                op.on_assign(ctx)
            except Exception as exc:
                # Named as a failing batch is (it stopped the application as a bare error, and a
                # KafkaException of the operator's own as "Kafka client failed").
                where = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in task.partitions)
                msg = (
                    f"application {self.name!r}: operator {op.id!r} failed when assigned {where}: "
                    f"{described(exc)}"
                )
                raise PipelineError(msg) from exc

    def _own(self, keys: list[TP]) -> None:
        self._owned.update(keys)
        if self.alignment is not None:
            self.alignment.add(keys, time.monotonic())

    def _restoring_partitions(self) -> set[TP]:
        """The input partitions whose stores are still being restored (assigned, not yet owned)."""
        return {(tp.topic, tp.partition) for task in self._restoring.values() for tp in task.partitions}

    def _assignment_changed(self) -> None:
        self.metrics.assigned = sorted(self._owned)
        self.metrics.restoring = sorted(self._restoring)
        self.prometheus.restoring.labels(self.name).set(len(self._restoring))

    def _restore_step(self, consumer: Consumer, wait_s: float) -> None:
        """Open the stores waited for, restore a step further; start processing the partitions
        whose stores are all open and restored."""
        now = time.monotonic()
        opened = [
            task
            for task in self._restoring.values()
            if task.unopened and now >= task.next_try and self._open_stores(task, now)
        ]
        self._start_restore(opened)
        ready = [task.number for task in opened if not task.waiting]
        restorer = self._restorer
        if restorer is not None:
            before = restorer.applied
            finished = restorer.step(_RESTORE_STEP_RECORDS, wait_s, _RESTORE_STEP_S)
            applied = restorer.applied - before
            if applied:
                self.metrics.restored_records += applied
                self.prometheus.restored.labels(self.name).inc(applied)
            for done in finished:
                task = self._restoring.get(done.partition)
                if task is None:
                    continue
                task.restoring -= 1
                if not task.waiting:
                    ready.append(task.number)
            if not restorer.busy:
                restorer.close()
                self._restorer = None
        if not ready:
            return
        if not self._failed and not self._lost:
            # The operators' on_assign may take longer than the transaction timeout (as in the
            # rebalance callback, see _on_assign): what was processed so far becomes durable first.
            self._checkpoint(sync=True)
        for number in ready:
            # Out of _restoring and into _tasks in one step: whatever fails next, closing the
            # application closes its stores.
            task = self._restoring.pop(number)
            self._activate(task)
            # Resumed where the assignment said: nothing was fetched paused.  An offset given
            # with the assignment (_resumed) is sought again: librdkafka may lose it when the
            # partition is paused right after being assigned (librdkafka#2190, open).
            consumer.resume(task.partitions)
            for tp in task.partitions:
                if tp.offset >= 0:
                    consumer.seek(tp)
            log.info(
                "application %s: partition %d ready (%d changelog records restored in all so far)",
                self.name,
                task.number,
                self.metrics.restored_records,
            )
        self._assignment_changed()
        if not self._restoring:
            self.assigned.set()

    def _resumed(self, consumer: Consumer, tps: list[TopicPartition]) -> list[TopicPartition]:
        """``tps`` to assign, with where to start those with nothing committed that would not
        start where they should otherwise.

        A partition this member lost before anything of it was committed starts where this
        member began reading it, not where ``auto.offset.reset`` says: the records it processed
        then were in an aborted transaction and are to be read again.  With "latest", any other
        starts at the end it has now, and that start is committed before anything read of it
        is processed (:meth:`_commit_new_starts`).  Left to the consumer, the end was looked up
        again after a crash, or by the member taking the partition over, before the first
        checkpoint: what had been read meanwhile (processed, its outputs aborted or sent) was
        never read again, nor what had come since the assignment and not been read yet.  One
        whose committed offset cannot be read in time is left to the consumer (_uncommitted)."""
        lost = self._lost_first_read
        asked = [tp for tp in tps if self._from_the_end or (tp.topic, tp.partition) in lost]
        if not asked:
            return tps
        uncommitted = self._uncommitted(consumer, asked)
        begun = {key: lost.pop(key) for key in [(tp.topic, tp.partition) for tp in asked] if key in lost}
        starts = {key: begun[key] for key in uncommitted if key in begun}
        fresh = [key for key in uncommitted if key not in begun]
        if fresh:  # (reading from the latest)
            starts.update(self._ends(consumer, fresh))
        for key, start in starts.items():
            # Where reading begins, as the first record read would say: kept even if the
            # partition is lost again before it is read (its restore is long, say).
            self._first_read[key] = start
            if self._from_the_end:
                self._starts[key] = start
        return [
            TopicPartition(tp.topic, tp.partition, starts[tp.topic, tp.partition])
            if (tp.topic, tp.partition) in starts
            else tp
            for tp in tps
        ]

    def _uncommitted(self, consumer: Consumer, tps: list[TopicPartition]) -> list[TP]:
        """Those of ``tps`` with no offset committed.  A partition whose offsets are in another
        producer's open transaction (its owner killed mid-checkpoint) has no stable answer, and
        holds back the answer for all (read_committed asks for stable offsets, until the
        timeout): then each is asked on its own, within ``_START_ASK_BUDGET_S`` in all (the
        rebalance callback waits meanwhile).  One without an answer is left to the consumer,
        which waits for a stable offset, with a warning.  (Asked with the 30 s timeout, one such
        partition held the callback 30 s and then stopped the application.)"""
        answered, _, problem = _committed_asked(
            consumer, tps, _START_ASK_S, _START_ASK_ONE_S, _START_ASK_BUDGET_S
        )
        known = [tp for tp in answered if tp.error is None]
        self._warn_unstarted(len(tps) - len(known), answered, problem)
        return sorted((tp.topic, tp.partition) for tp in known if tp.offset < 0)

    def _ends(self, consumer: Consumer, tps: list[TP]) -> dict[TP, int]:
        """Where ``tps`` end now, as "latest" would start them (one request for all: the last
        stable offset, under read_committed; those without an answer left to the consumer,
        with a warning)."""
        ends, problem = _offsets_at(consumer, tps, OFFSET_END, _START_ASK_BUDGET_S)
        self._warn_unstarted(len(tps) - len(ends), [], problem)
        return ends

    def _warn_unstarted(self, count: int, answered: list[TopicPartition], problem: object) -> None:
        """Warn that ``count`` partitions (if any) start where the consumer finds: the first error
        among the ``answered`` names why, else ``problem``."""
        if count <= 0:
            return
        problem = next((tp.error for tp in answered if tp.error is not None), problem)
        log.warning(
            "application %s: where to start %s assigned is left to the consumer (the committed "
            "offset once it has a stable one, else auto.offset.reset): reading committed offsets "
            "or ends failed: %s",
            self.name,
            _partitions(count),
            problem,
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._in_callback = True
        try:
            if not self._failed and not self._lost:
                self._checkpoint(sync=True)  # what was processed for these partitions becomes durable first
            self._settle_quietly()  # (none is on its way by now; whatever happens, none outlives its stores)
            self._drop(consumer, partitions)
        finally:
            self._in_callback = False

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning(
            "application %s: lost %d partitions (a session timeout, or a batch or pause longer than "
            "max.poll.interval.ms)",
            self.name,
            len(partitions),
        )
        self._joining()  # (it rejoins)
        try:
            # A commit on its way first: committed before the loss, its writes belong in RocksDB.
            self._settle_commit()
            self._lost = True
            # Queued writes are in Kafka and their offsets committed: RocksDB must have them before
            # the stores forget their pending writes.  Sealed ones are not acknowledged: processed
            # again.
            self._write_step(None)
            self._sealing = None
            self._sealed.clear()
            if self._in_txn:
                self._abort_txn()
        finally:
            # (Also when a failed commit or abort stops the application: the partitions are
            # gone, and their stores close without their pending writes.)
            self._lost = True
            self._discard_pending()
            self._drop(consumer, partitions)

    def _drop(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = list(partitions) + self._followers({tp.partition for tp in partitions})
        for tp in gone:
            key = (tp.topic, tp.partition)
            self._owned.discard(key)
            # Its lag is the next owner's to report: a gauge left here would count it twice.
            _forget(self.prometheus.lag, self.name, tp.topic, str(tp.partition))
            _forget(self.prometheus.paused, self.name, tp.topic, str(tp.partition))
            self._next_offsets.pop(key, None)
            self._starts.pop(key, None)
            self._unread.pop(key, None)
            begun = self._first_read.pop(key, None)
            if self._lost and begun is not None:
                # Lost (or revoked after a refused checkpoint): what this member processed since
                # its last commit was aborted.  If it gets the partition back with nothing
                # committed yet, it reads again from where it began (see _resumed).
                self._lost_first_read[key] = begun
        self._forget_alignment(consumer, [(tp.topic, tp.partition) for tp in gone])
        still = {part for _, part in self._owned}
        for n in {tp.partition for tp in gone} - still:
            self._close_task(n)
            self._stop_restoring(n, consumer)
        consumer.incremental_unassign(gone)
        self.metrics.rebalances += 1
        self._assignment_changed()

    def _forget_alignment(self, consumer: Consumer, tps: list[TP]) -> None:
        """Resume ``tps`` if alignment paused them (a pause must not outlive the assignment) and
        drop what alignment knew of them."""
        alignment = self.alignment
        if alignment is None:
            return
        paused = [tp for tp in tps if tp in alignment.lanes and alignment.lanes[tp].paused]
        if paused:
            consumer.resume([TopicPartition(t, p) for t, p in paused])
        alignment.remove(tps)
        for tp in tps:
            # Not released, so not committed: the next owner (or the rewind) reads them again.
            self._buffers.pop(tp, None)
            # (Read again from the committed offset, its records are not late for having been
            # released before: taken for late, they went past the others' cap.)
            self._released_at.pop(tp, None)
            self._start_lags.pop(tp, None)
            if tp in self._start_lag_unanswered:
                self._start_lag_settled(tp)
            self._consumed.pop(tp, None)

    def _close_task(self, number: int) -> None:
        task = self._tasks.pop(number, None)
        if task is not None:
            if not self._failed and not self._lost and self._current_at is not None:
                for state in task.stores.values():
                    state.touch(self._current_at)  # (given up after a checkpoint: see _current_at)
            for store_id in task.stores:
                _forget(self.prometheus.state_keys, self.name, store_id, str(number))
            task.close()

    def _stop_restoring(self, number: int, consumer: Consumer | None) -> None:
        """Give up a partition revoked before its stores were all open and restored: those open
        keep what was applied so far (with the changelog offset it reaches), for whoever opens
        them next; those still open elsewhere are no longer waited for."""
        task = self._restoring.pop(number, None)
        if task is None:
            return
        if consumer is not None:
            # librdkafka keeps a pause across unassignment: assigned again with nothing to
            # restore, the partition would never be read.
            consumer.resume(task.partitions)
        if self._restorer is not None:
            self._restorer.remove(list(task.stores.values()))
        task.close()

    def _discard_pending(self) -> None:
        """Every store back to its last checkpoint (the writes since thrown away)."""
        for task in self._tasks.values():
            for state in task.stores.values():
                state.discard_pending()

    def _after_rewind(self, msgs: list[Message]) -> list[Message]:
        """After a lost assignment: rewind (:meth:`_rewind`), and keep of ``msgs`` what is still to
        be processed.  Fetched before the rewind, the records of the partitions rewound are read
        again from their committed offsets, and here they would be processed twice.  Not rewound
        yet (the committed offsets had no answer), none is processed: each partition's first
        offset here is kept as where it began if nothing else says (``_first_read``), so the
        rewind, tried again next time, reads them again."""
        rewound = self._rewind()
        if rewound is None:
            owned, first_read = self._owned, self._first_read
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    self._consumer_error(err)  # (a fatal one stops the application, as always)
                    continue
                key = (msg.topic(), msg.partition())
                if key in owned and key not in first_read:
                    first_read[key] = msg.offset()
            return []
        return [m for m in msgs if (m.topic(), m.partition()) not in rewound]

    def _rewind(self) -> set[TP] | None:
        """After a lost assignment: restart the partitions still owned and read since their
        assignment from their committed offsets (those with none yet from the first offset read
        of them since their assignment: whatever ``auto.offset.reset`` says, that is where this
        member began); returns the partitions restarted.

        ``None`` when the committed offsets had no answer in ``_REWIND_ASK_S``: a partition taken
        over from a member that died with a transaction open has none until Kafka aborts that
        transaction (its timeout, 30 s or more), and asked with a 30 s timeout, the application
        stopped on it (a survivor of a failover, found in review).  Still lost, it is tried again
        on the next pass, and nothing is processed meanwhile (:meth:`_after_rewind`)."""
        _, consumer = self._running_clients()
        self._settle_quietly()  # (none is on its way after a loss: _on_lost, _group_moved_on)
        self._lost = False
        self._next_offsets = {}
        self._write_step(None)
        self._sealing = None
        self._discard_pending()
        if self.alignment is not None:
            # The event times seen since the committed offsets are processed again: start afresh.
            self._forget_alignment(consumer, sorted(self._owned))
            self.alignment.add(sorted(self._owned), time.monotonic())
        # Only those read since their assignment are asked: the others' records were never
        # processed, and the consumer reads them from their committed offsets as it would have.
        # A partition just taken over from a member that died mid-checkpoint is one: its
        # committed offset has no answer until that transaction ends, and asked with the others
        # it held them all back meanwhile (its own fetch waits for that answer anyway).
        read = [TopicPartition(t, p) for t, p in sorted(self._owned) if (t, p) in self._first_read]
        rewound: set[TP] = set()
        if not read:
            self._rewind_waiting = False
            return rewound
        try:
            committed = consumer.committed(read, timeout=_REWIND_ASK_S)
        except KafkaException as exc:
            err = kafka_error(exc)
            if err is None or err.code() != KafkaError._TIMED_OUT:
                raise
            if not self._rewind_waiting:
                log.warning(
                    "application %s: the committed offsets to process again from have no answer "
                    "yet (a transaction left open on them, by a member that died?); nothing is "
                    "processed until they have: %s",
                    self.name,
                    exc,
                )
            self._rewind_waiting = True
            self._lost = True
            return None
        self._rewind_waiting = False
        for tp in committed:
            key = (tp.topic, tp.partition)
            if tp.offset >= 0:
                consumer.seek(tp)
            elif key in self._first_read:
                consumer.seek(TopicPartition(tp.topic, tp.partition, self._first_read[key]))
            else:
                continue  # nothing read of it yet: nothing to read again
            rewound.add(key)
        return rewound


def state_path(settings: Settings, app: str, store: StoreSpec, partition: int) -> Path:
    """Where the RocksDB of one store and partition lives."""
    return settings.home / "state" / app / store.id / str(partition)
