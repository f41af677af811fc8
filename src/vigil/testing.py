"""Run operators over events in memory, with no broker (for unit tests of operators and rules).

    result = run_operators([MyRule()], events)
    assert [a.payload.rule_id for a in result.emitted("alerts")] == ["ato-sequence"]

Events are routed to partitions as Vigil's Kafka producers route them (librdkafka's
default partitioner: CRC-32 of the key), processed in micro-batches in the order given, and every
emitted event and dead letter is collected.  State is a plain dict per store and
partition, so a test can also inspect it.

As the Kafka runtime does: every input is encoded as a producer sends it and decoded as the
runtime reads it (what the runtime would dead-letter is dead-lettered, with its reason;
operators see the decoded event, ``5`` as ``5.0``); every operator is told of every partition
(``on_assign``) before the first batch; outputs are encoded and refused over the runtime's size
limit, their keys refused unless text as the runtime's context refuses them, and collected as
their readers decode them (one no reader can decode, such as an event with a naive time,
raises here, naming the operator: on Kafka it is sent, and every stage reading it
dead-letters it); a dead letter's reason names the operator, and is cut as the runtime cuts
it; state keys are text, and a key's state over a changelog record's limit fails the
checkpoint; a restart
(``result=``) reads state back as RocksDB would and carries the offsets on, and after a run
that raised it starts from the last checkpoint.  Topics named in ``read_back`` (an
application's repartition topics, listed among its inputs) are read again, as the runtime reads
them: what operators emit there is handed to every operator, partitioned by the key it was
emitted with, after the batch that emitted it.  Every other input is partitioned by its
event's key (or the key ``key_of`` gives it).  Give an operator that reads a global table a
:class:`MemoryTable` holding the records its topic would.

Records reach operators in the order given, a batch at a time, each partition's in turn, or,
aligned, as an application aligned in event time hands them over (see ``aligned``): a batch's
records of each partition merged by event time, each topic's kept in the order given (so two
topics given one after the other in one batch are interleaved, as the runtime interleaves
them; a side that arrives late is given in a later batch).  Give events in event-time order
to see what the runtime gives; the runtime aligns its inputs when an operator asks (a join, a
``GroupBy``: unaligned, a replayed backlog reaches operators a fetch of one partition at a
time).  Not modelled: the runtime's unaligned order (fetch-sized runs of each partition); broker
timestamps (``Record.timestamp_ms`` is 0);
values given back decoded before any restart (the runtime's cache lets values go past 200,000
keys a store partition, and its ``items()`` decodes those it does not hold: an operator must
expect a set or a tuple it stored back as a list, as after a restart); an application's
``skip_types`` (every record reaches the operators here); an operator's exception is raised as
it is (the runtime raises a ``PipelineError`` naming the operator and the batch's offsets, the
exception chained); the late-events topic is called ``late`` (the runtime's is ``<app>.late``); a
dead letter over the runtime's record limit keeps its reason alone here (the runtime leaves the
record's bytes out of the letter and says so in its reason).
"""

from __future__ import annotations

import functools
import heapq
import warnings
import zlib
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from confluent_kafka import KafkaException

from vigil.errors import PipelineError
from vigil.events.base import Event
from vigil.events.codec import EventCodec, encode
from vigil.events.types import EVENT_TYPES
from vigil.stream.app import (
    DECODE_ERRORS,
    Decoder,
    check_output,
    clipped_reason,
    late_refused,
    undecodable_reason,
)
from vigil.stream.attempt import Attempt, attempt
from vigil.stream.base import (
    Operator,
    Record,
    RecordBatch,
    State,
    StoreSpec,
    refuse_unencodable_key,
    shared_stores,
)
from vigil.stream.changelog import STATE_RECORD_MAX_BYTES, state_too_large
from vigil.stream.collector import collecting_young
from vigil.stream.state import undecodable
from vigil.stream.table import LookupTable, decode_canonical

_encoder = msgspec.msgpack.Encoder()
#: Read-backs of one batch's outputs before the harness calls it a loop (each one a round trip
#: through the repartition topics; a real application needs one or two).
_MAX_READ_BACK_ROUNDS = 100


class HarnessWarning(UserWarning):
    """What the Kafka runtime logs at its start about how an operator reads its inputs
    (:meth:`Operator.input_warnings`): a join of a side the application re-keys itself pairs
    here what it may lose in production.  And, at a restart, a state value changed in place
    with no ``set`` since its checkpoint (:meth:`MemoryState.changed_in_place`): lost on Kafka.
    Expect it in a test with ``pytest.warns``."""


class MemoryState(State):
    """A store as a dict.  Values are kept as set (as RocksDB-backed state keeps them in its
    cache); :meth:`checkpoint` makes the writes since the last one durable, encoded as they are
    then, and :meth:`reload` turns the store into what a restarted process reads back:
    MessagePack, decoded as ``value_type`` (a ``set`` comes back a list, a tuple a list, a
    struct as the declared type or a dict).  As with RocksDB-backed state, a value changed in
    place after the checkpoint that saved it, without a ``set`` since, is not saved again: a
    restart loses the change (and on Kafka, after a restore, ``items()`` and ``walk()`` hand out
    values decoded afresh, so such a change may be lost before any restart): a restart of the
    harness warns of it (:meth:`changed_in_place`).  A restart (``run_operators(result=...)``)
    opens each store afresh, as a restarted process does (:meth:`reopened`)."""

    def __init__(self, value_type: Any = Any, name: str = "in-memory state") -> None:
        self._data: dict[str, Any] = {}
        self.value_type = value_type
        #: What errors call it (its store and partition, when an operator's context made it).
        self.name = name
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(value_type)
        #: Keys whose value is the one read back at the last reload, not set since.
        self._loaded: set[str] = set()
        #: Set when a restart opened the store afresh: what still holds this object holds a
        #: closed store, as a restarted process's operators would (windows let go of it then).
        self.closed = False
        #: What checkpoints made durable, encoded; and the keys written or deleted since.
        self._saved: dict[str, bytes] = {}
        self._dirty: set[str] = set()
        #: Per prefix, its keys in order as they were when a walk last began from the first key.
        self._walks: dict[str, list[str]] = {}
        self._generation = 0

    @property
    def data(self) -> dict[str, Any]:
        """The values as operators see them (a test may read them, or replace them all: that
        counts as writing every one)."""
        self._refuse_closed()
        return self._data

    @data.setter
    def data(self, values: dict[str, Any]) -> None:
        self._refuse_closed()
        for key in values:
            _check_key(key)
        self._dirty.update(self._data, values)
        self._data = values
        self._loaded = set()

    def checkpoint(self) -> None:
        """Make the writes since the last checkpoint durable, encoded as they are now (raises as
        the runtime's checkpoint would, for a value MessagePack cannot encode or one too large
        for a changelog record, and then saves nothing)."""
        self._commit(self._prepare())

    def _prepare(self) -> dict[str, bytes | None]:
        """The writes since the last checkpoint, encoded and checked (None: deleted)."""
        data = self._data
        out: dict[str, bytes | None] = {}
        for key in self._dirty:
            if key in data:
                value = _encoder.encode(data[key])
                # (A character is at most 4 bytes: a key is encoded only when it might count.)
                refused = (
                    state_too_large(key.encode(), value)
                    if len(value) + 4 * len(key) > STATE_RECORD_MAX_BYTES
                    else None
                )
                if refused is not None:
                    msg = f"checkpoint: {refused}"
                    raise PipelineError(msg)
                out[key] = value
            else:
                out[key] = None
        return out

    def _commit(self, prepared: dict[str, bytes | None]) -> None:
        saved = self._saved
        for key, value in prepared.items():
            if value is None:
                saved.pop(key, None)
            else:
                saved[key] = value
        self._dirty.clear()

    def reload(self) -> None:
        """A checkpoint, then every value as RocksDB would return it after a restart.  What
        operators built from the state is stale then, as in a restarted process:
        :meth:`generation` changes."""
        self.checkpoint()
        self._data = {key: self._decoded(key, raw) for key, raw in self._saved.items()}
        self._loaded = set(self._data)
        self._walks = {}
        self._generation += 1

    def _decoded(self, key: str, raw: bytes) -> Any:
        # Named as the runtime names it (which finds it at the key's first read after a restart;
        # here every value is read back at once).
        try:
            return self._decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise undecodable(self.name, key, self.value_type, exc) from exc

    def reopened(self, value_type: Any) -> MemoryState:
        """The store as a restarted process opens it: after a checkpoint, a new object (this one
        closed) holding what checkpoints saved, read back as ``value_type``, the type its
        operators declare now (a store kept its first type across restarts here, so a type
        changed without a new ``StoreSpec`` version passed where the runtime stops at the
        first value that no longer decodes)."""
        self.checkpoint()
        fresh = MemoryState(value_type, self.name)
        fresh._saved = dict(self._saved)
        fresh._generation = self._generation
        fresh.reload()
        self.closed = True
        return fresh

    def changed_in_place(self) -> list[str]:
        """Keys whose value was changed in place since the checkpoint that saved it, with no
        ``set`` since: a checkpoint does not save such a change, on Kafka as here."""
        dirty, loaded, saved, decode = self._dirty, self._loaded, self._saved, self._decoder.decode
        changed = []
        for key, value in self._data.items():
            if key in dirty or key not in saved:
                continue
            # A value read back is compared with what reading back gives (a struct's defaults
            # filled in, say), one set with the bytes it was saved as.
            was = _encoder.encode(decode(saved[key])) if key in loaded else saved[key]
            if _encoder.encode(value) != was:
                changed.append(key)
        return changed

    def generation(self) -> int:
        return self._generation

    # (Checked inline, and a read only for its type: a call per read, or isascii, cost the
    # evaluation a tenth of its rate.  Text that is not UTF-8 is refused when written.)

    def get(self, key: str, default: Any = None) -> Any:
        if type(key) is not str or self.closed:
            self._check_open(key)
        return self._data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        if type(key) is not str or not key.isascii() or self.closed:
            self._check_open(key)
        self._data[key] = value
        self._dirty.add(key)
        self._loaded.discard(key)

    def delete(self, key: str) -> None:
        if type(key) is not str or not key.isascii() or self.closed:
            self._check_open(key)
        self._data.pop(key, None)
        self._dirty.add(key)
        self._loaded.discard(key)

    def _check_open(self, key: object) -> None:
        self._refuse_closed()
        _check_key(key)

    def _refuse_closed(self) -> None:
        # A store a restart opened afresh is closed: read or written, it raises, as RocksDB-backed
        # state does, rather than giving what it held before the restart (found in review).
        if self.closed:
            msg = f"{self.name} is closed: a restart opened it afresh (read HarnessResult.states again)"
            raise PipelineError(msg)

    def discard(self) -> None:
        """Forget what was written since the last checkpoint, as a failed run's restart does: the
        values are read back as :meth:`reload` reads them."""
        self._dirty.clear()
        self.reload()

    def items(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        # Taken whole before the first is yielded, as RocksState does: a caller may delete keys
        # while it iterates.
        self._refuse_closed()
        data = self._data
        found = [(key, data[key]) for key in sorted(data) if key.startswith(prefix)]
        yield from found

    def walk(self, prefix: str, after: str | None, limit: int) -> list[tuple[str, Any]]:
        # Keys are sorted once per walk, when it begins (items() sorts them on every call, and a
        # walk is many calls): keys first written since are left out, as State.walk allows.
        self._refuse_closed()
        keys = self._walks.get(prefix)
        if after is None or keys is None:
            keys = self._walks[prefix] = sorted(k for k in self._data if k.startswith(prefix))
        out: list[tuple[str, Any]] = []
        data = self._data
        for i in range(0 if after is None else bisect_right(keys, after), len(keys)):
            key = keys[i]
            value = data.get(key, _GONE)
            if value is not _GONE:
                out.append((key, value))
                if len(out) >= limit:
                    break
        return out


_GONE = object()


def _check_key(key: object) -> None:
    """Refuse ``key`` as RocksDB-backed state refuses it: state keys are text that encodes as
    UTF-8 (a ``None`` entity id, a number or a tuple was kept here, where the Kafka stage stopped
    at the first record that made one, and again after every restart)."""
    if not isinstance(key, str):
        msg = f"state keys are text (str); got {type(key).__name__} {key!r:.80}"
        raise TypeError(msg)
    refuse_unencodable_key(key)  # (a lone surrogate), as RocksState does


@dataclass
class Emitted:
    topic: str
    key: str | None
    event: Event
    #: The bytes it was sent as (what a read-back decodes).
    value: bytes = b""


@dataclass
class HarnessResult:
    emits: list[Emitted] = field(default_factory=list)
    dead_letters: list[tuple[Record[Any], str]] = field(default_factory=list)
    #: Records operators reported as too late for their window (``ctx.late``) and sent to the
    #: late-events topic (one too large for it is in ``dead_letters``; the runtime's late count,
    #: ``metrics.late``, counts it too).
    late: list[Record[Any]] = field(default_factory=list)
    states: dict[tuple[str, int], MemoryState] = field(default_factory=dict)
    #: The next offset per (topic, partition): a restart carries on from them, as Kafka's do.
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    #: How far into ``emits`` the read-back topics have been read.
    read_to: int = 0

    def emitted(self, topic: str | None = None) -> list[Any]:
        return [e.event for e in self.emits if topic is None or e.topic == topic]


def _check_output_key(operator_id: str, method: str, key: object, *, optional: bool) -> None:
    """Refuse an output's key the runtime's context refuses (its compiled signature takes text
    alone: a ``bytes`` key, ``Record.key`` as read, passed here and stopped the application, or
    dead-lettered every record, on Kafka)."""
    if isinstance(key, str) or (optional and key is None):
        return
    wanted = "text (str) or None" if optional else "text (str)"
    msg = (
        f"operator {operator_id!r}: ctx.{method}'s key must be {wanted}; got {type(key).__name__} {key!r:.80}"
    )
    raise TypeError(msg)


def _check_record(operator_id: str, method: str, record: object) -> None:
    """Refuse a record that is not a :class:`Record` (the event in its place, ``rec.event``):
    passed here, and collected; on Kafka the runtime's context reads the record's ``topic``,
    ``value`` or ``event``, and the AttributeError stopped the stage (or, under the dead-letter
    policy, dead-lettered every record)."""
    if isinstance(record, Record):
        return
    msg = (
        f"operator {operator_id!r}: ctx.{method}'s record must be the Record it was given (rec), "
        f"got {type(record).__name__}"
    )
    raise TypeError(msg)


_canonical_decode = EventCodec()._decoder.decode


def _as_read(operator_id: str, topic: str, event: Event, value: bytes) -> Event:
    """``event`` as a reader of ``topic`` decodes the bytes it was sent as: a canonical event by
    the canonical codec, any other by its own type.  An operator's output that no reader can
    decode (a naive time, a value its type's constraints refuse: a msgspec Struct checks
    nothing when made) raises, naming the operator: on Kafka it is sent, and every stage
    reading it dead-letters it."""
    if not isinstance(event, msgspec.Struct):
        return event  # (nothing to decode it to)
    try:
        if EVENT_TYPES.get(event.__struct_config__.tag) is type(event):  # type: ignore[arg-type]
            decoded: Event = _canonical_decode(value)
        else:
            decoded = msgspec.json.decode(value, type=type(event))
    except DECODE_ERRORS as exc:
        msg = (
            f"operator {operator_id!r} emitted to {topic!r} a {type(event).__name__} its readers cannot "
            f"decode: {clipped_reason(undecodable_reason(exc))}"
        )
        raise ValueError(msg) from exc
    return decoded


class _MemoryContext:
    def __init__(
        self,
        partition: int,
        result: HarnessResult,
        operator: Operator[Any],
        *,
        forwards_read_bytes: bool,
        read_back: Collection[str] = (),
    ) -> None:
        self._partition = partition
        self._forwards_read_bytes = forwards_read_bytes
        self._result = result
        self._declared = {spec.id for spec in operator.stores}
        self._operator_id = operator.id
        self._read_back = read_back

    @property
    def partition(self) -> int:
        return self._partition

    def state(self, store: StoreSpec) -> State:
        if store.id not in self._declared:
            msg = f"operator {self._operator_id!r} used store {store.id!r} it did not declare in `stores`"
            raise KeyError(msg)
        states = self._result.states
        found = states.get((store.id, self._partition))
        if found is None:
            found = states[(store.id, self._partition)] = MemoryState(
                store.value_type, _store_name(store.id, self._partition)
            )
        return found

    # Outputs are encoded and size-checked as the Kafka runtime's are (an output it would refuse
    # passed here), when emitted; an attempt's are prepared so, and sent when it succeeds.

    def emit(self, topic: str, event: Event, key: str | None = None) -> None:
        self.prepare_emit(topic, event, key)()

    def forward(self, topic: str, record: Record[Any], key: str) -> None:
        self.prepare_forward(topic, record, key)()

    def dead_letter(
        self, record: Record[Any], reason: str, headers: list[tuple[str, bytes | None]] | None = None
    ) -> None:
        _check_record(self._operator_id, "dead_letter", record)
        # (As the runtime's compiled signature refuses them.)
        if not isinstance(reason, str):
            msg = (
                f"operator {self._operator_id!r}: ctx.dead_letter's reason must be text (str); got "
                f"{type(reason).__name__}"
            )
            raise TypeError(msg)
        if headers is not None and not isinstance(headers, list):
            msg = (
                f"operator {self._operator_id!r}: ctx.dead_letter's headers must be a list of (name, "
                f"value) pairs or None; got {type(headers).__name__}"
            )
            raise TypeError(msg)
        self._result.dead_letters.append((record, clipped_reason(reason)))

    def late(self, record: Record[Any]) -> None:
        try:
            send = self.prepare_late(record)
        except KafkaException as exc:  # as the runtime does (too large: dead-lettered)
            self.dead_letter(record, late_refused("late", exc))
            return
        send()

    def prepare_emit(
        self, topic: str, event: Event, key: str | None = None, value: bytes | None = None
    ) -> Callable[[], None]:
        _check_output_key(self._operator_id, "emit", key, optional=True)
        return self._prepared(topic, event, key, value)

    def prepare_forward(self, topic: str, record: Record[Any], key: str) -> Callable[[], None]:
        _check_record(self._operator_id, "forward", record)
        _check_output_key(self._operator_id, "forward", key, optional=False)
        # The bytes as read, as the runtime forwards them (re-encoded only for a record that has
        # none: one an operator made).
        value = record.value if self._forwards_read_bytes else None
        return self._prepared(topic, record.event, key, value)

    def _prepared(self, topic: str, event: Event, key: str | None, value: bytes | None) -> Callable[[], None]:
        key = key if key is not None else event.key()
        value = _checked(topic, event, value, key)
        # Collected as its readers will see it; a topic read back is decoded when it is read
        # (what cannot be is dead-lettered there, as the reading stage does).
        if topic not in self._read_back:
            event = _as_read(self._operator_id, topic, event, value)
        emitted = Emitted(topic, key, event, value)
        return lambda: self._result.emits.append(emitted)

    def prepare_late(self, record: Record[Any]) -> Callable[[], None]:
        _check_record(self._operator_id, "late", record)
        _checked("late", record.event, record.value, key=record.key)  # (the record as read, as sent)
        return lambda: self._result.late.append(record)


def _checked(topic: str, event: Event, value: bytes | None = None, key: str | bytes | None = None) -> bytes:
    """Encode ``event`` as the runtime does (unless given its bytes), and refuse it as the runtime
    does when too large, key and value together."""
    if value is None:
        value = encode(event)
    check_output(topic, value, key)
    return value


def _event_time(record: Record[Any]) -> Any:
    return record.event.occurred_at


def _merged_by_topic(records: list[Record[Any]]) -> list[Record[Any]]:
    """One partition's records, a run per topic (in the order given: offset order), merged by
    event time as the aligned runtime merges a partition's runs (``_merged``: ties to the
    earlier run; the topics in the order first given)."""
    runs: dict[str, list[Record[Any]]] = {}
    for rec in records:
        runs.setdefault(rec.topic, []).append(rec)
    if len(runs) == 1:
        return records
    return list(heapq.merge(*runs.values(), key=_event_time))


def partition_for(key: str | bytes | None, partitions: int) -> int:
    """The partition a key lands on: the one librdkafka's default partitioner (``consistent_random``)
    picks, so a run here splits events as the broker does.  (Kafka sends keyless events to a
    random partition; here they all go to 0.)"""
    if not key or partitions == 1:
        return 0
    return zlib.crc32(key.encode() if isinstance(key, str) else key) % partitions


V = TypeVar("V", covariant=True)


class MemoryTable(LookupTable[V]):
    """A global table in memory, for operators that read one (a :class:`LookupTable`) under
    :func:`run_operators`: give it the records its compacted topic would hold, in the order
    written, and give the operator the table, as it would be given a :class:`GlobalTable` on
    Kafka.

    Records are ``(key, value)``.  A key is text, or bytes as a producer may write them (read as
    a :class:`GlobalTable` reads them: UTF-8, bytes that are not UTF-8 kept apart with
    ``surrogateescape``); a compacted topic refuses a record without one, and so does this
    table.  An event is encoded as a producer sends it, bytes are taken as the topic holds them,
    ``None`` is a tombstone; each is applied as a :class:`GlobalTable` applies what it reads
    (``decode`` as its own: by default canonical events), so a value the decode cannot read is
    skipped, counted in ``errors``, and its key has no value, as on Kafka.  :meth:`put` writes
    one more between runs (an indicator published while a process runs).  It is always
    ``ready``: the harness has no start to wait for."""

    def __init__(
        self,
        records: Iterable[tuple[str | bytes, Event | bytes | None]] = (),
        decode: Callable[[bytes], V] = decode_canonical,
        *,
        name: str = "memory",
    ) -> None:
        super().__init__(name, decode)
        self._written = 0
        for key, value in records:
            self.put(key, value)

    def put(self, key: str | bytes, value: Event | bytes | None) -> None:
        """Write one record to the table's topic (see the class): applied at once."""
        if isinstance(key, bytes):
            key = key.decode("utf-8", "surrogateescape")  # as TopicFollower reads a key
        elif not isinstance(key, str):
            msg = (
                f"table {self.name!r}: a record's key must be text or bytes (a compacted topic "
                f"refuses a record without one); got {type(key).__name__} {key!r:.80}"
            )
            raise TypeError(msg)
        if isinstance(value, Event):
            data: bytes | None = encode(value)
        elif value is None or isinstance(value, bytes):
            data = value
        else:
            msg = (
                f"table {self.name!r}: a record's value must be an event, bytes or None (a "
                f"tombstone); got {type(value).__name__}"
            )
            raise TypeError(msg)
        self._written += 1
        self._apply(key, data, f"{self.name}@{self._written - 1}")

    def delete(self, key: str | bytes) -> None:
        """Write a tombstone for ``key``."""
        self.put(key, None)

    @property
    def ready(self) -> bool:
        return True

    def check(self) -> None:
        """Nothing to check: no reader to fail."""


def _input_key(
    event: Event, count: int, key_of: Callable[[Event], str | bytes | None] | None
) -> str | bytes | None:
    """Input event number ``count``'s record key (see run_operators' ``key_of``); what is wrong
    with it named with the event."""
    if key_of is None:
        return event.key()
    try:
        key = key_of(event)
    except Exception as exc:
        msg = f"input event {count} ({type(event).__name__}): key_of raised {type(exc).__name__}: {exc}"
        raise ValueError(msg) from exc
    if key is not None and not isinstance(key, str | bytes):
        msg = (
            f"input event {count} ({type(event).__name__}): key_of must give text, bytes or None; "
            f"got {type(key).__name__} {key!r:.80}"
        )
        raise TypeError(msg)
    return key


def _store_name(store_id: str, partition: int) -> str:
    """What errors and warnings call a store of an operator's (its partition's)."""
    return f"store {store_id!r}, partition {partition}"


def _restart(result: HarnessResult, operators: Sequence[Operator[Any]]) -> None:
    """Each store of ``result`` opened afresh, as a restarted process opens it: a new object
    (windows and operators keyed by the old one let go of it), read back as the store's
    operators declare it now; a value changed in place without a ``set`` is warned of."""
    declared = {spec.id: spec for op in operators for spec in op.stores}
    for (store_id, part), state in list(result.states.items()):
        changed = state.changed_in_place()
        if changed:
            keys = ", ".join(map(repr, changed[:3])) + (
                f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            )
            warnings.warn(
                f"{_store_name(store_id, part)}: the value of {keys} was changed in place "
                "after the checkpoint that saved it, with no `set` since: the Kafka runtime does "
                "not save such a change (a restart reads back the value saved, and after a "
                "restore `items()` and `walk()` hand out copies); `set` a value after changing it",
                category=HarnessWarning,
                stacklevel=3,
            )
        spec = declared.get(store_id)
        state.name = _store_name(store_id, part)  # (one a test made itself, too)
        result.states[store_id, part] = state.reopened(state.value_type if spec is None else spec.value_type)


def run_operators(
    operators: Sequence[Operator[Any]],
    events: Iterable[Event],
    *,
    topic: str = "in",
    partitions: int = 1,
    batch_size: int = 500,
    result: HarnessResult | None = None,
    topic_of: Callable[[Event], str] | None = None,
    key_of: Callable[[Event], str | bytes | None] | None = None,
    read_back: Collection[str] = (),
    checkpoints: bool = True,
    decode: Decoder | None = None,
    aligned: bool | None = None,
) -> HarnessResult:
    """Feed ``events`` through each operator in turn (each sees the same input), in batches.

    Pass the ``result`` of an earlier call to continue with its state (a "restart"): each
    store is opened afresh, its values read back as a restarted process reads them from RocksDB
    (:meth:`MemoryState.reopened`), as the operators given now declare them, so an operator
    that keeps, say, a ``set`` in state and expects a ``set`` back fails here as it would on
    Kafka, and so does a value type changed without a new ``StoreSpec`` version; a value changed
    in place with no ``set`` since its checkpoint is warned of (:class:`HarnessWarning`).
    ``topic_of`` names each event's input topic (default: ``topic`` for all), for operators
    that read several co-partitioned inputs (joins): like the Kafka runtime, records of one
    partition number share state whatever their topic.
    ``key_of`` gives each event's record key (default: its entity's, ``event.key()``, as
    Vigil's canonical topics are keyed), for an input its producer keys otherwise (a topic of
    transfers keyed by wallet): records are partitioned by it and carry it as ``Record.key``
    (text as UTF-8; ``None``, no key: partition 0 here, where Kafka picks one at random).
    ``read_back``: topics whose emitted events come back as input (see the module), such as
    ``group_by``'s: ``run_operators([by_wallet, per_wallet], events, read_back=[spec.name])``.
    Their records come back one batch later, after the batch that emitted them: ``batch_size``
    stands for how far the sides read directly run ahead of those re-keyed (the runtime's
    re-keyed records come back a checkpoint later at best, a whole release later on a
    catch-up: model a catch-up with a large ``batch_size``).  An operator that warns of such a
    side (a join's :meth:`~vigil.stream.join.IntervalJoin.input_warnings`, which the runtime
    logs at its start) is warned of here with a :class:`HarnessWarning`.
    ``checkpoints``: a checkpoint after every batch, as :class:`MemoryState` describes (so a
    restart loses a change made in place without a ``set``, as the runtime's does).  False
    for runs that are not restarted and want speed (encoding the state written in every batch
    cost the evaluation a quarter of its rate): state is then saved at a restart, as it is, and
    a run that raises leaves ``result`` as it was when the run began.
    ``decode``: the application's own decoder (``Application(decode=...)``), called as the runtime
    calls it (topic, bytes, key, headers: here ``None``) for every record, read-backs too;
    without one, records are decoded as canonical events, as the runtime's are, so an
    application's own event types need it here as they do there.
    ``aligned``: operators are handed each batch as an application aligned in event time hands
    them its released records (``Application(max_event_time_skew_s=...)``): each partition's
    records of every topic merged by event time (a merge, not a sort: each topic's records keep
    the order given, and ties go to the topic first given), those with state a call per
    partition, first, then those without one call for every partition's records, merged again
    (with one partition, every operator a call with its records merged).  None (the default):
    aligned when an operator asks for it (``Operator.event_time_skew_s``: a join, a
    ``GroupBy``), as the application does.
    """
    if isinstance(read_back, str):  # ``in`` would match any part of the name
        msg = f"read_back: expected a collection of topic names, got the string {read_back!r}"
        raise TypeError(msg)
    ids = [op.id for op in operators]
    if len(set(ids)) != len(ids):
        msg = f"duplicate operator ids: {ids}"
        raise ValueError(msg)
    shared = shared_stores(operators)
    if shared:
        msg = f"stores declared by more than one operator: {shared}; every operator needs stores of its own"
        raise ValueError(msg)
    if batch_size < 1 or partitions < 1:
        msg = f"batch_size and partitions must be at least 1; got {batch_size} and {partitions}"
        raise ValueError(msg)
    if topic_of is None:
        # Every event is read from ``topic``: a join side named otherwise was never read, and the
        # join paired nothing, with no word (the runtime refuses such an application when made).
        # With topic_of a test may give one side only.
        inputs = [topic, *read_back]
        for op in operators:
            missing = [name for name in getattr(op, "reads", ()) if name not in inputs]
            if missing:
                msg = (
                    f"operator {op.id!r} reads {', '.join(map(repr, missing))}, which is not among its "
                    f"inputs {inputs}; pass topic_of (each event's input topic: with none, every "
                    f"event is read from {topic!r})"
                )
                raise ValueError(msg)
    # What the runtime logs at its start (Application._setup): the author of a test sees it.
    for op in operators:
        for warning in op.input_warnings(frozenset(read_back)):
            warnings.warn(warning, category=HarnessWarning, stacklevel=2)
    if aligned is None:
        aligned = any(op.event_time_skew_s is not None for op in operators)
    stateful = [op for op in operators if op.stores]
    stateless = [op for op in operators if not op.stores]
    if result is None:
        result = HarnessResult()
    else:
        _restart(result, operators)
    offsets = result.offsets
    batch: dict[int, list[Record[Any]]] = defaultdict(list)

    # One context per operator and partition for the whole run, as the runtime keeps one per
    # assigned partition (operators may keep derived data by context or state object).
    contexts: dict[tuple[str, int], _MemoryContext] = {}
    trials: dict[tuple[str, int], Attempt] = {}

    def assign(part: int) -> None:
        # A partition assigned (again, after a restart): the runtime tells every operator, in
        # order, before any batch of it.
        for op in operators:
            ctx = contexts[(op.id, part)] = _MemoryContext(
                part, result, op, forwards_read_bytes=decode is None, read_back=read_back
            )
            op.on_assign(ctx)

    def call(op: Operator[Any], part: int, records: Sequence[Record[Any]]) -> None:
        ctx = contexts[(op.id, part)]
        if op.dead_letter_errors:
            trial = trials.get((op.id, part))
            if trial is None:
                trial = trials[(op.id, part)] = Attempt(ctx)
            for rec in records:
                error = attempt(op.process, rec, trial)
                if error is not None:
                    ctx.dead_letter(rec, f"operator {op.id!r}: {error}")  # as the runtime says
        else:
            op.process(records, ctx)

    def flush() -> None:
        parts = sorted(batch)
        if aligned:
            # As Application._release hands an aligned release over: each partition's records a
            # run per topic (in offset order: as given), merged by event time (ties to the earlier
            # run, as heapq.merge keeps them); with several partitions, operators with state a
            # call per partition, then those without one call for all of them, merged again.
            merged = {part: _merged_by_topic(batch[part]) for part in parts}
            if len(parts) <= 1:
                for part in parts:
                    for op in operators:
                        call(op, part, merged[part])
            else:
                for part in parts:
                    for op in stateful:
                        call(op, part, merged[part])
                if stateless:
                    every = list(heapq.merge(*(merged[part] for part in parts), key=_event_time))
                    for op in stateless:
                        call(op, parts[0], every)
        else:
            for part in parts:
                # As the runtime hands an unaligned batch over: a RecordBatch (events_of reads
                # its events without its records).
                records = batch[part]
                given = RecordBatch([r.event for r in records], functools.partial(list, records))
                for op in operators:
                    call(op, part, given)
        batch.clear()
        if checkpoints:
            # After every batch (the runtime's come after some batches): what a later restart
            # reads back is what was written, not what was changed in place since.  Every store
            # is encoded and checked before any is saved: a checkpoint that fails saves nothing.
            prepared = [(state, state._prepare()) for state in result.states.values()]
            for state, writes in prepared:
                state._commit(writes)
            mark()

    def place(source: str, key: str | bytes | None) -> tuple[int, int, bytes | None]:
        """The partition, offset and key bytes of the next record of ``source`` under ``key``."""
        part = partition_for(key, partitions)
        offset = offsets.get((source, part), 0)
        offsets[(source, part)] = offset + 1
        return part, offset, key.encode() if isinstance(key, str) else key  # ("": b"", as Kafka's)

    #: How far into the emits the read-back topics have been read (by an earlier run too).
    read_to = result.read_to

    canonical = EventCodec()._decoder.decode

    def decoded(sent: Event, source: str, value: bytes, part: int, offset: int, key: bytes | None) -> None:
        """Decode a record as the runtime does (from the bytes it was sent as) into its batch, or
        dead-letter it with the runtime's reason."""
        try:
            event = canonical(value) if decode is None else decode(source, value, key, None)
        except DECODE_ERRORS as exc:
            dead = Record(sent, source, part, offset, key, 0, value=value)
            result.dead_letters.append((dead, clipped_reason(undecodable_reason(exc))))
            return
        if aligned and not hasattr(event, "occurred_at"):
            # As the aligned runtime stops at it (and at every restart).
            asked = [op.id for op in operators if op.event_time_skew_s is not None]
            why = f" (asked for by {', '.join(map(repr, asked))})" if asked else ""
            msg = (
                f"aligned in event time{why}, records need an `occurred_at`; {source}[{part}]@{offset} "
                f"decoded to {type(event).__name__}"
            )
            raise PipelineError(msg)
        batch[part].append(Record(event, source, part, offset, key, 0, value=value))

    # What a failed run leaves for a restart is what the last checkpoint saved: the state then,
    # the offsets then (its records are read again) and the outputs up to then (exactly-once
    # aborts the rest; at-least-once may have sent some, and sends them again).
    saved_offsets = dict(offsets)
    saved_counts = (len(result.emits), len(result.dead_letters), len(result.late), read_to)

    def mark() -> None:
        # (Outputs to read-back topics not read back yet stay unread: a restart reads them, as
        # the runtime reads its committed repartition records.)
        nonlocal saved_offsets, saved_counts
        saved_offsets = dict(offsets)
        saved_counts = (len(result.emits), len(result.dead_letters), len(result.late), read_to)

    def roll_back() -> None:
        offsets.clear()
        offsets.update(saved_offsets)
        emits, letters, late, result.read_to = saved_counts
        del result.emits[emits:], result.dead_letters[letters:], result.late[late:]
        for state in result.states.values():
            state.discard()

    def flush_and_read_back() -> None:
        nonlocal read_to
        flush()
        rounds = read = budget = 0
        while read_back:
            fresh = result.emits[read_to:]
            read_to = len(result.emits)
            records = [e for e in fresh if e.topic in read_back]
            if not records:
                return
            rounds += 1
            read += len(records)
            # A loop that fans out (each record re-published to two topics) grows without
            # bound long before its hundredth round: so is reading back a hundred times what
            # the first round read.  (Not counted by event id: a batch may hold many copies of
            # one event, a source's retries, each read back once.)
            budget = budget or _MAX_READ_BACK_ROUNDS * len(records)
            if rounds > _MAX_READ_BACK_ROUNDS or read > budget:
                topics = sorted({e.topic for e in records})
                msg = (
                    f"events still going round {', '.join(topics)} after {_MAX_READ_BACK_ROUNDS} "
                    "read-backs: operators re-publish what they read there (a GroupBy without "
                    "internal_prefix?)"
                )
                raise RuntimeError(msg)
            for emitted in records:
                part, offset, key = place(emitted.topic, emitted.key)
                decoded(emitted.event, emitted.topic, emitted.value, part, offset, key)
            flush()

    # The collector as the Kafka runtime tunes it (vigil.stream.collector): the same rules cost
    # the same here.
    with collecting_young() as collector:
        try:
            for part in range(partitions):
                assign(part)
            for count, event in enumerate(events, 1):
                source = topic_of(event) if topic_of is not None else topic
                # Each input is encoded as a producer sends it and decoded as the runtime reads
                # it: an event the runtime would dead-letter (an empty id, a naive time) is
                # dead-lettered here too, and operators see what decoding gives (5 as 5.0).
                try:
                    value = encode(event)
                except (TypeError, ValueError) as exc:
                    msg = f"input event {count} ({type(event).__name__}) cannot be encoded: {exc}"
                    raise ValueError(msg) from exc
                part, offset, key_bytes = place(source, _input_key(event, count, key_of))
                decoded(event, source, value, part, offset, key_bytes)
                if count % batch_size == 0:
                    flush_and_read_back()
                    collector.step()
            flush_and_read_back()
        except BaseException:
            roll_back()
            raise
    # Every output so far has been read back, or is not on a topic read back: a later run that
    # reads some topic back starts after them (a restart's were read by its earlier run).
    result.read_to = len(result.emits)
    return result
