"""Python's cyclic garbage collector while a stream is processed: young objects, in small steps.

Batches allocate many short-lived containers (records, events, lists of hits), and state
keeps many long-lived ones.  Python's default (a gen-0 collection every 700 allocations, the
older generations every 10 of those) walked the state values over and over: on the Kafka
runtime it halved throughput.  Raising the gen-0 threshold to 200,000, as the runtime did
before, made collections rare but long: each walked every object that had survived since the
last one (a checkpoint's changelog records, new keys' state), and in the runtime benchmark's
latency runs at 100,000 events/s the engine paused for 70-160 ms at a time (the longest
collection of each of 6 runs, through ``gc.callbacks``), which set the tail of alert latency.

So while a stream runs, automatic collection is off and the loop calls :meth:`Collector.step`
between batches.  Once ``young`` objects have been allocated (net) since the last step that
collected, it collects generation 0 only, then *freezes* the survivors (``gc.freeze``): they
move to the permanent generation, which no collection walks, and are still freed by
reference counting when nothing refers to them.  Each object is looked at once, while young;
a collection walks about ``young`` objects plus what one loop iteration left alive (more after
a restore or a large batch).  Measured on the same runs with 20,000: the longest
collection 6-27 ms (8 runs), 26-57 ms collecting in all per run against 71-234 ms; throughput
the same within noise (243-247k events/s against 246-254k, the benchmark's record-by-record
rule, two runs each, side by side).

What that gives up: a reference cycle whose objects survived their young collection is not
reclaimed when it later becomes garbage, until a full collection.  Events, records and state
values hold no cycles (the young collections of the runtime benchmark reclaim nothing), so
:meth:`Collector.step` runs a full one (all objects: some 100 ms with 50,000 keys of state)
only when the loop is idle (an iteration with no records) and ``full_every_s`` has passed
since the last, or after ten times that whatever the load: under steady load that is one
such pause every ten minutes.  On the way out, the frozen objects are handed back to the
collector and automatic collection is restored as it was.  (Process-wide: objects a host
process froze itself before, say to share pages across forks, are unfrozen too; two
applications in one process each run their own full collections.)
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

#: Young objects (allocations net of deallocations) between collections while processing.
#: Pauses grow with it (a collection walks them all) and total collection time shrinks with it
#: (fewer calls, and more of each batch's objects already freed by reference counting): with
#: 20,000, pauses of 6-27 ms at 100,000 events/s (see the module docstring).
YOUNG_OBJECTS = 20_000
#: A full collection at the first idle moment this long after the last one.
FULL_EVERY_S = 60.0

_lock = threading.Lock()
#: Blocks inside :func:`collecting_young` now (all threads).
_depth = 0
#: Whether automatic collection was on before the first of them.
_was_enabled = True


class Collector:
    """Collects young objects in small steps and freezes the survivors (see the module)."""

    def __init__(self, young: int | None = YOUNG_OBJECTS, full_every_s: float = FULL_EVERY_S) -> None:
        if young is not None and young <= 0:
            msg = f"young objects between collections must be positive or None; got {young}"
            raise ValueError(msg)
        self.young = young
        self.full_every_s = full_every_s
        self.last_full = time.monotonic()
        #: Collections made, and seconds spent in them (young and full alike).
        self.collections = 0
        self.seconds = 0.0
        #: The longest single collection, in seconds.
        self.longest_s = 0.0

    def step(self, idle: bool = False, now: float | None = None) -> float:
        """Collect if due (``idle``: no records came in this time); the seconds it took (0.0: not due)."""
        if self.young is None:
            return 0.0
        now = time.monotonic() if now is None else now
        since_full = now - self.last_full
        if (idle and since_full >= self.full_every_s) or since_full >= 10 * self.full_every_s:
            return self._collect(full=True, now=now)
        if gc.get_count()[0] >= self.young:
            return self._collect(full=False, now=now)
        return 0.0

    def _collect(self, *, full: bool, now: float) -> float:
        started = time.perf_counter()
        if full:
            gc.unfreeze()  # into the oldest generation, which a full collection walks
            gc.collect()
            self.last_full = now
        else:
            gc.collect(0)
        gc.freeze()
        took = time.perf_counter() - started
        self.collections += 1
        self.seconds += took
        self.longest_s = max(self.longest_s, took)
        return took


@contextmanager
def collecting_young(
    young: int | None = YOUNG_OBJECTS, full_every_s: float = FULL_EVERY_S
) -> Iterator[Collector]:
    """Turn automatic collection off for the block; the caller steps the :class:`Collector`.

    ``young=None`` leaves the collector alone (automatic, as configured) and the steps do
    nothing.  The setting is process-wide.  Blocks may overlap (two applications on threads of
    one process): automatic collection stays off while any of them runs, and the last one out
    unfreezes and puts back what was there before the first one came in."""
    global _depth, _was_enabled
    collector = Collector(young, full_every_s)
    if young is None:
        yield collector
        return
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
        _depth += 1
        gc.disable()
    try:
        yield collector
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                gc.unfreeze()
                if _was_enabled:
                    gc.enable()
