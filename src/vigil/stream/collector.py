"""Python's cyclic garbage collector, tuned while a stream is processed.

Batches allocate many short-lived containers (records, events, lists of hits), and state
keeps many long-lived ones.  With the default gen-0 threshold (700) the collector runs every
few records and its older generations walk every state value: measured on the Kafka runtime,
it halved throughput and added tens of milliseconds of pause; on the in-memory harness over
the shipped rules, 15% of the time.  Almost everything here is freed by reference counting
anyway (events and state values hold no cycles), so collecting rarely costs little memory.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: Allocations between gen-0 collections while processing (the default is 700).  Measured with
#: gc callbacks in the detection stages over a 200k-event backlog: 50,000 spent 1.3 µs per event
#: collecting, in pauses of up to 67-104 ms; 200,000 spent 0.4 µs, in pauses of up to 78-84 ms
#: (a gen-0 collection walks what survived since the last one, so rarer ones are not longer in
#: proportion, and the gen-1 collections 50,000 led to were the longest).
GC_THRESHOLD = 200_000

_lock = threading.Lock()
#: Blocks inside :func:`collecting_rarely` now (all threads).
_depth = 0
#: The thresholds from before the first of them.
_before: tuple[int, ...] = ()


@contextmanager
def collecting_rarely(threshold: int | None = GC_THRESHOLD) -> Iterator[None]:
    """Raise the gen-0 threshold to at least ``threshold`` (``None`` or 0: leave it) for the block.

    The setting is process-wide.  Blocks may overlap (two applications on threads of one
    process): the threshold stays raised while any of them runs, and the last one out puts
    back what was there before the first one came in."""
    global _depth, _before
    if not threshold:
        yield
        return
    with _lock:
        if _depth == 0:
            _before = gc.get_threshold()
        _depth += 1
        if gc.get_threshold()[0] < threshold:
            gc.set_threshold(threshold, 20, 50)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                gc.set_threshold(*_before)
