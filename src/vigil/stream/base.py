"""The runtime's interfaces: what an operator sees and may do.

An application consumes micro-batches from Kafka, decodes them into typed events and
hands each batch to its operators.  An operator is given a :class:`Context` per batch
and *per input partition*: keyed state lives with the partition that owns the key, so
a rebalance moves the state with it.  Exactly-once, everything an operator emits and every
state write become durable together at the next checkpoint, in one Kafka transaction with
the input offsets; at-least-once, outputs go out at once (with deterministic ids) and state
writes become durable with the offsets at the checkpoint.

Implementations: the Kafka-backed runtime in :mod:`vigil.stream.app`, and the
in-memory harness in :mod:`vigil.testing` for unit tests without a broker.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, SupportsIndex, TypeVar, overload

import msgspec

from vigil.events.base import Event
from vigil.hub.topics import TOPIC_NAME, TOPIC_NAME_MAX

E = TypeVar("E", bound=Event)
Guarantee = Literal["exactly_once", "at_least_once"]


class Record(msgspec.Struct, Generic[E], frozen=True):
    """A decoded input record with where it came from (read-only).

    A msgspec Struct, not a dataclass: the runtime builds one per input record, and a Struct is
    built in C (0.09 µs) where a slotted dataclass runs its ``__init__`` in Python (0.18 µs) and
    a frozen one sets each field through ``object.__setattr__`` (0.8 µs)."""

    event: E
    topic: str
    partition: int
    offset: int
    key: bytes | None
    #: Broker timestamp in ms (arrival); windows use ``event.occurred_at`` instead.
    timestamp_ms: int
    #: The bytes the record was read as (``None`` in memory): dead letters carry them as they
    #: came, and ``Context.forward`` sends them on without encoding the event again.
    value: bytes | None = None


class RecordBatch(Sequence[Record[E]]):
    """One input partition's records of a batch, as the runtime hands them to an operator.

    A sequence of :class:`Record` (not a list: a slice is one), its :attr:`events` there at
    once, the records themselves built the first time one is asked for.  So an operator that
    works on the events alone (vectorised, see :func:`events_of`) never has the records built:
    built with each message read (and an offset read a message), they cost the runtime about a
    quarter of what the bare consume and decode cost an event (0.24 µs against 1.03 on the
    runtime benchmark's input, 2026-12-07)."""

    __slots__ = ("_build", "_records", "events")

    def __init__(self, events: Sequence[E], build: Callable[[], list[Record[E]]]) -> None:
        #: The decoded events, in offset order (one per record; a tuple: the records are built
        #: beside the events they were given, so these cannot be reordered under them).
        self.events: tuple[E, ...] = tuple(events)
        self._build = build
        self._records: list[Record[E]] | None = None

    def records(self) -> list[Record[E]]:
        """The records, built on the first call."""
        records = self._records
        if records is None:
            records = self._records = self._build()
            self._build = _built  # (lets go of what they were built from: the messages)
        return records

    def __len__(self) -> int:
        return len(self.events)

    @overload
    def __getitem__(self, index: SupportsIndex) -> Record[E]: ...
    @overload
    def __getitem__(self, index: slice) -> list[Record[E]]: ...
    def __getitem__(self, index: SupportsIndex | slice) -> Record[E] | list[Record[E]]:
        return self.records()[index]

    def __iter__(self) -> Iterator[Record[E]]:
        return iter(self.records())

    def __repr__(self) -> str:
        return f"RecordBatch({len(self.events)} records)"


def _built() -> list[Any]:
    """A built RecordBatch's builder: its records are kept."""
    return []


def events_of(batch: Sequence[Record[E]]) -> Sequence[E]:
    """The events of ``batch``, in order: a :class:`RecordBatch`'s own (its records not built),
    or a list made from the records of any other sequence."""
    if isinstance(batch, RecordBatch):
        return batch.events
    return [record.event for record in batch]


@dataclass(frozen=True)
class StoreSpec:
    """A named, versioned state store.  Renaming or bumping the version starts empty state,
    on purpose and visibly: the changelog topic is named after both."""

    name: str
    version: int = 1
    #: Type values decode to after a checkpoint (``Any``: msgspec builtins, Structs as dicts).
    value_type: Any = field(default=Any, compare=False)

    def __post_init__(self) -> None:
        # Its changelog topic is named after its id (``<app>.changelog.<id>``): a name Kafka
        # refuses there was taken everywhere else (the in-memory harness ran it) until an
        # application was made of it.
        version = self.version
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            msg = f"store {self.name!r}: version must be a whole number, 0 or more; got {version!r}"
            raise ValueError(msg)
        if not isinstance(self.name, str) or not TOPIC_NAME.fullmatch(self.name):
            msg = (
                f"store name {self.name!r}: expected letters, digits, '.', '_' and '-' (its changelog "
                "topic is named after it)"
            )
            raise ValueError(msg)
        most = TOPIC_NAME_MAX - len("a.changelog.")  # (its application's name one letter at least)
        if len(self.id) > most:
            msg = (
                f"store {self.id[:80]!r}...: its id has {len(self.id)} characters; at most {most}, "
                "its changelog topic's name being made of it"
            )
            raise ValueError(msg)

    @property
    def id(self) -> str:
        return f"{self.name}.v{self.version}"


def lone_surrogate(text: str) -> str | None:
    """Where ``text`` has a lone surrogate (``json.loads`` makes one of ``"\\ud800"``), said, or
    None.  Such text is not UTF-8: state cannot encode it, and kept, it failed every checkpoint,
    and the restart's again."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"a lone surrogate at character {exc.start} ({text[exc.start]!r})"
    return None


def refuse_unencodable_key(key: str) -> None:
    """Refuse a state key that is not UTF-8 text, when it is written: RocksDB-backed state kept
    it until the checkpoint, whose changelog record could not be made, and the application
    stopped there, far from the operator that wrote it (a custom join key, say)."""
    problem = lone_surrogate(key)
    if problem is not None:
        shown = repr(key) if len(key) <= 80 else repr(key[:77]) + "..."
        msg = f"state key {shown} has {problem}; state keys are UTF-8 text"
        raise ValueError(msg)


class State(ABC):
    """Keyed state of one store for one input partition.

    Keys are strings that encode as UTF-8: one with a lone surrogate is refused with a
    ``ValueError`` where it is written (:func:`refuse_unencodable_key`).  Values are
    msgspec-encodable (structs, dicts, lists, numbers, strings, datetimes).  Writes are visible
    to later reads at once; they become durable at checkpoint.
    """

    @abstractmethod
    def get(self, key: str, default: Any = None) -> Any: ...

    @abstractmethod
    def set(self, key: str, value: Any) -> None: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def items(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        """Committed and pending entries whose key starts with ``prefix``, in key order."""

    def walk(self, prefix: str, after: str | None, limit: int) -> list[tuple[str, Any]]:
        """Up to ``limit`` entries whose key starts with ``prefix`` and sorts after ``after``
        (None: from the first), in key order: a bounded, resumable walk for housekeeping, such
        as deleting the windows of keys that went quiet.  Fewer than ``limit``: the walk reached
        the end.  Unlike :meth:`items` it may leave out keys first written since the last
        checkpoint (RocksDB-backed state walks RocksDB, at a cost bounded by ``limit``) or since
        the walk began from the first key (in-memory state sorts its keys then): they are
        fresh, and a later walk finds them."""
        out: list[tuple[str, Any]] = []
        for key, value in self.items(prefix):
            if after is not None and key <= after:
                continue
            out.append((key, value))
            if len(out) >= limit:
                break
        return out

    def generation(self) -> int:
        """Changes when the state goes back to an earlier point (its uncommitted writes thrown
        away after an aborted checkpoint): anything an operator built from it is stale then."""
        return 0

    def __contains__(self, key: str) -> bool:
        return self.get(key, _MISSING) is not _MISSING


_MISSING = object()


class Context(Protocol):
    """What an operator may do while processing one batch of one partition."""

    @property
    def partition(self) -> int: ...

    def state(self, store: StoreSpec) -> State:
        """The store's state for this partition (declared in ``Operator.stores``)."""
        ...

    def emit(self, topic: str, event: Event, key: str | None = None) -> None:
        """Send an event downstream (key defaults to ``event.key()``): exactly-once, visible at
        the checkpoint's commit; at-least-once, sent at once."""
        ...

    def forward(self, topic: str, record: Record[Any], key: str) -> None:
        """Send a record's event on unchanged under ``key`` (re-keying): like ``emit``, but the
        runtime may send the bytes the record was read as instead of encoding it again."""
        ...

    def dead_letter(
        self, record: Record[Any], reason: str, headers: list[tuple[str, bytes | None]] | None = None
    ) -> None:
        """Send the record to this stage's dead-letter topic with the reason, and go on.
        ``headers``: the record's, when what it was read as needs them to be read again (a raw
        record's kind and time); kept in the letter."""
        ...

    def late(self, record: Record[Any]) -> None:
        """Count the record as too late for its window and send it to the late-events topic."""
        ...


class Operator(ABC, Generic[E]):
    """A processing step.  ``id`` is explicit and versioned; duplicates fail at build time.

    ``process`` is called once per batch per partition with records in offset order (with
    several co-partitioned inputs, each input's records in offset order; with event-time
    alignment, ``Application(max_event_time_skew_s=...)`` or asked for by an operator
    (``event_time_skew_s``: a join, a ``GroupBy``), the inputs interleaved by event time;
    an operator that declares no stores then gets the released records of every partition in
    one call, merged by event time, with the context of the lowest partition number).  The
    records are a sequence, not a list: unaligned, a :class:`RecordBatch` (read its events with
    :func:`events_of`); aligned, a list; to a dead-letter operator's attempt, a one-record tuple.
    An exception stops the application loudly with topic/partition/offset, unless
    ``dead_letter_errors`` is set, in which case the failing record is dead-lettered and
    what the operator did for it undone (state put back, outputs dropped).
    """

    id: str
    stores: tuple[StoreSpec, ...] = ()
    dead_letter_errors: bool = False
    #: Set by an operator whose answers need its records in event-time order across input
    #: topics and partitions, not just within each (a join; a re-keying whose output windows
    #: downstream): the application then aligns its inputs in event time with this skew, in
    #: seconds, unless it is given ``max_event_time_skew_s`` itself.  Unaligned, a replayed
    #: backlog reaches operators a fetch at a time per partition, hours of one topic before the
    #: other.
    event_time_skew_s: float | None = None
    #: The input topics this operator reads by name, when it reads particular ones (a join's two
    #: sides); the application refuses to be made without each among its inputs (a side missing
    #: was never read, and the join paired nothing, with no word).  Empty: whatever it is given.
    reads: tuple[str, ...] = ()

    @abstractmethod
    def process(self, batch: Sequence[Record[E]], ctx: Context) -> None: ...

    def input_warnings(self, rekeyed: frozenset[str]) -> list[str]:
        """What the application should warn of, at its start, about how this operator reads its
        inputs, given those of them the application re-keys itself (its own repartition
        topics): none by default (a join of one such topic with a direct input has some)."""
        return []

    def on_assign(self, ctx: Context) -> None:
        """Called when a partition is assigned, after its state is restored."""


def shared_stores(operators: Sequence[Operator[Any]]) -> dict[str, list[str]]:
    """Store ids declared by more than one of ``operators``, with the ids of those operators.

    A store is one operator's: two joins given the same ``StoreSpec`` share their waiting
    events and watermarks, and each emits every pair (found in review), so the application
    and the harness refuse it."""
    users: dict[str, list[str]] = {}
    for op in operators:
        for spec in dict.fromkeys(op.stores):
            users.setdefault(spec.id, []).append(op.id)
    return {store: ids for store, ids in users.items() if len(ids) > 1}
