"""One record's attempt through an operator that dead-letters its errors: all or nothing.

An operator with ``dead_letter_errors = True`` runs record by record, and a record that
raises is dead-lettered and processing goes on.  What the operator did for that record
before it raised must not stay behind: a half-updated window or sequence would count a
record that was never processed, and an alert emitted before the failure would go out for
it.  So each attempt sees its stores through :class:`UndoableState` (the first time a key
is touched, its value is copied, as a restart would read it back) and its context through
:class:`Attempt`, which holds the outputs until the record succeeds.  On failure the
touched keys are put back and the held outputs dropped; the record is dead-lettered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from vigil.events.base import Event
from vigil.stream.base import Context, Record, State, StoreSpec

_ABSENT = object()
_encoder = msgspec.msgpack.Encoder()
_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


def _decoder(value_type: Any) -> msgspec.msgpack.Decoder[Any]:
    found = _decoders.get(value_type)
    if found is None:
        found = _decoders[value_type] = msgspec.msgpack.Decoder(value_type)
    return found


class UndoableState(State):
    """A store as one attempt sees it: reads and writes go through; ``undo()`` puts every key the
    attempt touched back as it was (values are copied on first touch, since operators change
    the lists and dicts they read in place)."""

    def __init__(self, state: State, value_type: Any = Any) -> None:
        self._state = state
        self._decode = _decoder(value_type).decode
        self._before: dict[str, Any] = {}

    def _remember(self, key: str) -> None:
        if key not in self._before:
            value = self._state.get(key, _ABSENT)
            # A copy: what the operator changes in place is the live value, not this one.
            self._before[key] = value if value is _ABSENT else self._decode(_encoder.encode(value))

    def get(self, key: str, default: Any = None) -> Any:
        self._remember(key)
        return self._state.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self._remember(key)
        self._state.set(key, value)

    def delete(self, key: str) -> None:
        self._remember(key)
        self._state.delete(key)

    def items(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        return self._state.items(prefix)

    def generation(self) -> int:
        return self._state.generation()

    def undo(self) -> None:
        for key, value in self._before.items():
            if value is _ABSENT:
                self._state.delete(key)
            else:
                self._state.set(key, value)
        self._before.clear()


class Attempt:
    """The context of one record's attempt: stores undoable, outputs held until :meth:`commit`."""

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
            state = self._states[store.id] = UndoableState(self._ctx.state(store), store.value_type)
        return state

    def emit(self, topic: str, event: Event, key: str | None = None) -> None:
        self._held.append(lambda: self._ctx.emit(topic, event, key))

    def forward(self, topic: str, record: Record[Any], key: str) -> None:
        self._held.append(lambda: self._ctx.forward(topic, record, key))

    def dead_letter(self, record: Record[Any], reason: str) -> None:
        self._held.append(lambda: self._ctx.dead_letter(record, reason))

    def late(self, record: Record[Any]) -> None:
        self._held.append(lambda: self._ctx.late(record))

    def commit(self) -> None:
        for send in self._held:
            send()
        self._held.clear()

    def rollback(self) -> None:
        for state in self._states.values():
            state.undo()
        self._held.clear()


def attempt(
    process: Callable[[tuple[Record[Any]], Context], None], rec: Record[Any], ctx: Context
) -> str | None:
    """Run ``process`` on one record, all or nothing; the error's description if it failed."""
    trial = Attempt(ctx)
    try:
        process((rec,), trial)
    except Exception as exc:
        trial.rollback()
        return f"{type(exc).__name__}: {exc}"
    trial.commit()
    return None
