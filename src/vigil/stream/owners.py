"""Which window updates which store partition: a store is one window's.

A window's keys (``w:``, a vectorised window's ``c:``) and its watermark are its store's alone:
two windowed aggregates given one ``StoreSpec`` (a 5-minute and an hour's count) each counted
the other's events, and each took the other's watermark, so that events within one's lateness
were late to the other.  The application cannot see which windows an operator updates (they
are its module's), so the second is refused at its first update of a partition, before it
changes anything.

Plain Python, not compiled with the windows.  A compiled ``State`` (``RocksState``) is held
itself, not by a weak reference: mypyc's classes take weak references (their interpreted base
gives them the slot) but do not clear them when they go, and the garbage collector then crashed
on the dangling reference (a segmentation fault in a broker test, in every run).  Such a state is
let go with its window (a weak reference's callback, to the window's hold, a plain object), or
once closed, at the next partition claimed; any other state is held weakly.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

from vigil.stream.base import State, StoreSpec


class StoreUser:
    """A window's hold on the store partitions it updates, held by the window and weakly by the
    registry: a window let go (a test's, a rule's rebuilt) lets go of its stores."""

    def __init__(self, what: str) -> None:
        self.what = what


#: The window updating each store partition, by the identity of its ``State``: the State and the
#: window's hold (weakly).
_STORE_USERS: dict[int, tuple[Callable[[], State | None], weakref.ref[StoreUser]]] = {}


def state_ref(state: State) -> Callable[[], State | None]:
    """``state``, weakly where that is safe (see the module docstring), else held."""
    if hasattr(type(state), "__mypyc_attrs__"):
        return lambda: state
    return weakref.ref(state)


#: Applications in several threads of one process (detection's two stages) claim stores, and a
#: window going lets go of its entry from any thread (``_let_go``).
_LOCK = threading.RLock()
#: Whether a claim is under way, and the entries let go meanwhile.  A window in a reference
#: cycle goes in a garbage collection, which any allocation may start, in the claiming thread
#: itself (the lock is re-entrant): its entry, taken out while the claim went through the
#: registry, raised "dictionary changed size during iteration" or a KeyError at a partition's
#: first update.  Those are taken out once the claim is done.
_claiming = False
_let_go_meanwhile: list[tuple[int, weakref.ref[StoreUser]]] = []


def claim_store(state: State, user: StoreUser, store: StoreSpec) -> None:
    """Refuse ``state`` to ``user`` when another window (still held) updates it."""
    global _claiming
    with _LOCK:
        _claiming = True
        try:
            _claim(state, user, store)
        finally:
            _claiming = False
            while _let_go_meanwhile:
                _forget(*_let_go_meanwhile.pop())


def _claim(state: State, user: StoreUser, store: StoreSpec) -> None:
    sid = id(state)
    held = _STORE_USERS.get(sid)
    if held is not None and held[0]() is state:
        other = held[1]()
        if other is user:
            return
        if other is not None:
            msg = (
                f"store {store.id!r} is updated by two windows, {other.what} and {user.what}: each "
                "would count the other's events and move its watermark; give each a StoreSpec of "
                "its own"
            )
            raise ValueError(msg)
    # A new partition (an assignment): forget those closed, or let go, or whose window was.
    gone = []
    for k, (was, hold) in list(_STORE_USERS.items()):
        then = was()
        if then is None or hold() is None or getattr(then, "closed", False):
            gone.append(k)
    for k in gone:
        _STORE_USERS.pop(k, None)
    _STORE_USERS[sid] = (state_ref(state), weakref.ref(user, lambda hold: _let_go(sid, hold)))


def _let_go(sid: int, hold: weakref.ref[StoreUser]) -> None:
    """A window went: its entry goes, and the state with it (unless claimed again since)."""
    with _LOCK:
        if _claiming:  # (this thread's claim: see _claiming)
            _let_go_meanwhile.append((sid, hold))
        else:
            _forget(sid, hold)


def _forget(sid: int, hold: weakref.ref[StoreUser]) -> None:
    held = _STORE_USERS.get(sid)
    if held is not None and held[1] is hold:
        _STORE_USERS.pop(sid, None)
