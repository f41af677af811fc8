"""One record's attempt through an operator that dead-letters its errors: all or nothing.

An operator with ``dead_letter_errors = True`` runs record by record, and a record that
raises is dead-lettered and processing goes on.  What the operator did for that record
before it raised must not stay behind: a half-updated window or sequence would count a
record that was never processed, and an alert emitted before the failure would go out for
it.  So each attempt sees its stores through :class:`UndoableState` and its context through
:class:`Attempt`, which holds the outputs until the record succeeds.  On failure the keys
the attempt changed are put back, the held outputs dropped, and the record dead-lettered.

One :class:`Attempt` serves an operator's context for as long as the context lives (the
runtime and the harness keep it with the context): operators may keep derived data by state
object (the vectorised window does), and a state object per record would defeat that.
After an undo the state's :meth:`~vigil.stream.base.State.generation` changes, so such
derived data is rebuilt.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
from confluent_kafka import KafkaError, KafkaException

from vigil.errors import described
from vigil.events.base import Event
from vigil.stream.base import Context, Record, State, StoreSpec, refuse_unencodable_key

_ABSENT = object()
_encode = msgspec.msgpack.Encoder().encode


def _same(now: Any, before: Any) -> bool:
    """Whether a value only read is as it was: equal, and encoded alike.  ``==`` alone missed a
    dict reordered in place (a recency map: the next eviction dropped the wrong key) and a
    number that became ``1.0`` from ``1``, which a checkpoint then saved."""
    if now != before:
        return False
    try:
        return _encode(now) == _encode(before)
    except (TypeError, ValueError, OverflowError):
        return False  # (not encodable: put back, which cannot be wrong)


class UndoableState(State):
    """A store as attempts see it: reads and writes go through; :meth:`undo` puts back what the
    current attempt changed.  The first time an attempt touches a key, its value is copied
    (``deepcopy``: types kept), since operators change the lists and dicts they read in place;
    a key only read is put back only if it was changed in place.  Values read through
    :meth:`items` or :meth:`walk` are not tracked."""

    def __init__(self, state: State) -> None:
        self._state = state
        self._before: dict[str, Any] = {}
        self._written: set[str] = set()
        self._undos = 0

    def __getattr__(self, name: str) -> Any:
        # closed, path...: what callers read of the real state.
        return getattr(self._state, name)

    def _remember(self, key: str) -> None:
        if key not in self._before:
            value = self._state.get(key, _ABSENT)
            self._before[key] = value if value is _ABSENT else copy.deepcopy(value)

    def get(self, key: str, default: Any = None) -> Any:
        self._remember(key)
        return self._state.get(key, default)

    def set(self, key: str, value: Any) -> None:
        if type(key) is str and not key.isascii():
            refuse_unencodable_key(key)  # (as the store would: then neither remembered nor put back)
        self._remember(key)
        self._written.add(key)
        self._state.set(key, value)

    def delete(self, key: str) -> None:
        if type(key) is str and not key.isascii():
            refuse_unencodable_key(key)  # (see set)
        self._remember(key)
        self._written.add(key)
        self._state.delete(key)

    def items(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        return self._state.items(prefix)

    def walk(self, prefix: str, after: str | None, limit: int) -> list[tuple[str, Any]]:
        return self._state.walk(prefix, after, limit)

    def generation(self) -> int:
        return self._state.generation() * 1_000_003 + self._undos

    def begin(self) -> None:
        """A new attempt: forget the last one's copies."""
        self._before.clear()
        self._written.clear()

    def undo(self) -> None:
        state = self._state
        for key, before in self._before.items():
            if key not in self._written:
                now = state.get(key, _ABSENT)
                if before is _ABSENT or now is _ABSENT or _same(now, before):
                    continue  # only read, and not changed in place
            if before is _ABSENT:
                state.delete(key)
            else:
                state.set(key, before)
        self._undos += 1
        self.begin()


class Attempt:
    """An operator context as attempts see it: stores undoable, outputs held until :meth:`commit`."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._states: dict[str, UndoableState] = {}
        self._held: list[Callable[[], None]] = []

    @property
    def partition(self) -> int:
        return self._ctx.partition

    def state(self, store: StoreSpec) -> State:
        state = self._states.get(store.id)
        if state is None:
            state = self._states[store.id] = UndoableState(self._ctx.state(store))
        return state

    def emit(self, topic: str, event: Event, key: str | None = None) -> None:
        prepare = getattr(self._ctx, "prepare_emit", None)
        if prepare is not None:
            self._held.append(prepare(topic, event, key))  # fails now, if it is to fail
        else:
            self._held.append(lambda: self._ctx.emit(topic, event, key))

    def forward(self, topic: str, record: Record[Any], key: str) -> None:
        prepare = getattr(self._ctx, "prepare_forward", None)
        if prepare is not None:
            self._held.append(prepare(topic, record, key))
        else:
            self._held.append(lambda: self._ctx.forward(topic, record, key))

    def dead_letter(
        self, record: Record[Any], reason: str, headers: list[tuple[str, bytes | None]] | None = None
    ) -> None:
        self._held.append(lambda: self._ctx.dead_letter(record, reason, headers))

    def late(self, record: Record[Any]) -> None:
        prepare = getattr(self._ctx, "prepare_late", None)
        if prepare is not None:
            try:
                self._held.append(prepare(record))
                return
            except KafkaException:
                # Too large for the late-events topic: dead-lettered as late once the record has
                # succeeded (the context's own ``late`` says so), not a failure of the record,
                # which undid its other effects and named no lateness.
                pass
        self._held.append(lambda: self._ctx.late(record))

    def begin(self) -> None:
        self._held.clear()
        for state in self._states.values():
            state.begin()

    def commit(self) -> None:
        held, self._held = self._held, []
        for send in held:
            send()

    def rollback(self) -> None:
        self._held.clear()
        for state in self._states.values():
            state.undo()


def attempt(
    process: Callable[[tuple[Record[Any]], Context], None], rec: Record[Any], trial: Attempt
) -> str | None:
    """Run ``process`` on one record, all or nothing; the error's description if it failed.

    Sending the held outputs is part of the attempt: an output that cannot be sent (it does not
    encode, or is too large) fails the record as it did when it was sent at once.  A context
    that prepares outputs (``prepare_emit``, ``prepare_forward``, ``prepare_late``: the Kafka
    runtime's) encodes and checks each when it is emitted, so a failing one fails the record
    before any is sent.  With a context that does not, outputs sent before the failing one stay
    sent (at least once); the state is put back either way.

    An output the Kafka runtime could not send because the broker refused an earlier record (the
    transaction is to be aborted: ``txn_requires_abort``) is not the record's failure: it is
    raised, after the rollback, for the runtime to abort and process again (dead-lettered, the
    record was lost with the transaction, or its letter failed the same way)."""
    trial.begin()
    try:
        process((rec,), trial)
        trial.commit()
    except Exception as exc:
        trial.rollback()
        if isinstance(exc, KafkaException) and _requires_abort(exc):
            raise
        return described(exc)
    return None


def _requires_abort(exc: KafkaException) -> bool:
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and not err.fatal() and err.txn_requires_abort()
