"""Counting the stores' keys for the ``vigil_stream_state_keys`` gauge.

RocksDB's own estimate was no count: it counts every write still in the memtable (5 keys written
at every checkpoint read 1,700 within a minute) and takes two off for every deletion, also of a
key it never had (a join's keys written and deleted between two checkpoints: 300,000 keys read
4).  So each store counts its keys itself, in passes (:meth:`~vigil.stream.state.RocksState.
count_keys`), and the application's loop has :class:`KeyCounter` count on at each update of its
gauges: a few stores a turn, in turn, each by its share (a large store over many turns), and
turns paced by what they take, since RocksDB steps over the deletions it has not compacted away
yet (300,000 of them took 20 ms a store), which no count of keys bounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

#: Keys read in a turn (about 0.4 µs each), and of one store.
KEYS_A_TURN = 2_000
KEYS_SHARE = 1_000
#: The most of the loop's time counting may take: after a turn, the next waits as long as needed.
AT_MOST_PCT = 1.0


class Counted(Protocol):
    key_count: int | None

    def count_keys(self, budget: int) -> int: ...


class KeyCounter:
    """Whose turn it is, and when the next may be."""

    def __init__(self, at_most_pct: float = AT_MOST_PCT) -> None:
        self._next = 0
        self._due = 0.0
        self._pace = 100 / at_most_pct - 1

    def turn(self, stores: Sequence[tuple[Counted, Callable[[int], None]]]) -> bool:
        """Count on ``stores`` (each with what sets its gauge), if a turn is due; whether one was."""
        if time.monotonic() < self._due or not stores:
            return False
        started = time.perf_counter()
        budget = KEYS_A_TURN
        for _ in range(len(stores)):
            state, said = stores[self._next % len(stores)]
            self._next += 1
            budget -= state.count_keys(min(budget, KEYS_SHARE))
            if state.key_count is not None:
                said(state.key_count)
            if budget <= 0:
                break
        took = time.perf_counter() - started
        self._due = time.monotonic() + took * self._pace
        return True
