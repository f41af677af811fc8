"""Sliding windows record by record: a hot key, with and without running aggregates.

    python -m benchmarks.run windows

:class:`~vigil.stream.windows.WindowedAggregate` answers a sliding update over the key's
window.  Recomputed, that is O(events in the window) per event: one key flooded with events
(a bot on one account, a sweep from one IP) made every one of its events slower.  Running
aggregates (count, exact sum, heaps for min and max, a count per distinct value) answer an
in-order event in O(log n).  Both ways run here side by side, in one process pinned to one
core, interleaved round by round (the best round kept), on in-memory state (the store's cost
is the same for both and is left out):

- *hot key*: one key, an event every millisecond, a window of 1,000 / 5,000 / 20,000 ms, so
  that many events in it; count, sum, max and distinct count;
- *hot keys taking turns*: more of them than the running slots, so most are recomputed;
- *many keys*: the runtime benchmark's shape (50,000 accounts, about 5 events in each one's
  5-minute window; count and sum), where no key is long enough for running aggregates: what
  the check costs where it does not pay.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from vigil.stream.base import StoreSpec
from vigil.stream.windows import Count, DistinctCount, Max, Sum, Window, WindowedAggregate
from vigil.testing import MemoryState

STORE = StoreSpec("bench-windows", 1)
HOT_AGGS = {"n": Count(), "total": Sum(), "max": Max(), "distinct": DistinctCount()}
WINDOW_SIZES = (1_000, 5_000, 20_000)
ROUNDS = 3
#: Hot keys taking turns: more than a windowed aggregate's running slots (64), each with this
#: many events in its window.
TURN_KEYS = 150
TURN_EVENTS = 400
#: Off: never long enough to be aggregated incrementally.
NEVER = 10**12


def _hot(size: int, measured: int, running: bool) -> float:
    """µs per event for ``measured`` events of one key whose window holds ``size`` events."""
    window = Window.sliding(size)
    agg = WindowedAggregate(STORE, window, HOT_AGGS, running_from=128 if running else NEVER)
    state = MemoryState()
    rng = random.Random(size)
    values = [float(rng.randrange(size)) for _ in range(size + measured)]
    # The window filled the fast way (the stored list is the same either way); the timed
    # updates then build the running aggregates, or not, from it.
    fill = WindowedAggregate(STORE, window, HOT_AGGS)
    for t in range(size):
        fill.update(state, "hot", t, values[t])
    del fill  # (a store is one window's at a time: let go, it lets go of the state)
    update = agg.update
    started = time.perf_counter()
    for t in range(size, size + measured):
        update(state, "hot", t, values[t])
    elapsed = time.perf_counter() - started
    if running and agg.running_answers < measured:
        msg = f"hot key, window {size}: {agg.running_answers} of {measured} answered by running aggregates"
        raise RuntimeError(msg)
    return elapsed / measured * 1e6


def _turns(keys: int, per_key: int, measured: int, running: bool) -> float:
    """µs per event for hot keys taking turns, more of them than there are running slots."""
    window = Window.sliding(10**9)
    agg = WindowedAggregate(STORE, window, HOT_AGGS, running_from=128 if running else NEVER)
    state = MemoryState()
    rng = random.Random(keys)
    fill = WindowedAggregate(STORE, window, HOT_AGGS)
    t = 0
    for i in range(keys * per_key):
        t += 1
        fill.update(state, f"k{i % keys}", t, float(rng.randrange(1_000)))
    del fill  # (a store is one window's at a time: let go, it lets go of the state)
    update = agg.update
    started = time.perf_counter()
    for i in range(measured):
        t += 1
        update(state, f"k{i % keys}", t, float(rng.randrange(1_000)))
    return (time.perf_counter() - started) / measured * 1e6


def _many(events: int, running: bool) -> float:
    """µs per event over 50,000 keys with about 5 events each in a 5-minute window."""
    accounts = 50_000
    agg = WindowedAggregate(
        STORE,
        Window.sliding("5m", lateness="1m"),
        {"n": Count(), "total": Sum()},
        running_from=128 if running else NEVER,
    )
    state = MemoryState()
    rng = random.Random(7)
    keys = [f"acct-{rng.randrange(accounts):06d}" for _ in range(events)]
    amounts = [round(rng.uniform(1, 2_000), 2) for _ in range(events)]
    step_ms = 60_000 / accounts  # one event per account per minute on average
    update = agg.update
    started = time.perf_counter()
    for i in range(events):
        update(state, keys[i], int(i * step_ms), amounts[i])
    return (time.perf_counter() - started) / events * 1e6


def run(quick: bool) -> dict[str, Any]:
    cpu = max(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    measured = 300 if quick else 2_000
    many = 50_000 if quick else 300_000
    result: dict[str, Any] = {"cpu": cpu, "measured_events": measured, "many_events": many, "hot": {}}
    try:
        for size in WINDOW_SIZES:
            rounds: dict[str, list[float]] = {"running": [], "recomputed": []}
            for _ in range(ROUNDS):
                rounds["running"].append(_hot(size, measured, running=True))
                rounds["recomputed"].append(_hot(size, measured, running=False))
            result["hot"][str(size)] = rounds
        turns: dict[str, list[float]] = {"running": [], "recomputed": []}
        for _ in range(ROUNDS):
            for running in (True, False):
                turns["running" if running else "recomputed"].append(
                    _turns(TURN_KEYS, TURN_EVENTS, measured * 5, running=running)
                )
        result["turns"] = turns
        many_rounds: dict[str, list[float]] = {"running": [], "recomputed": []}
        for i in range(ROUNDS + 2):
            for running in (True, False) if i % 2 else (False, True):  # either first in turn
                many_rounds["running" if running else "recomputed"].append(_many(many, running=running))
        result["many"] = many_rounds
    finally:
        os.sched_setaffinity(0, before)
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "## Sliding windows: a hot key",
        "",
        f"One process pinned to CPU {result['cpu']}, in-memory state; both ways interleaved, "
        f"{ROUNDS} rounds each ({ROUNDS + 2} for many keys), the best kept. Hot key: "
        f"{result['measured_events']:,} events timed after the window is full (count, sum, max, "
        "distinct count).",
        "",
        "| events in the key's window | recomputed, µs/event | running aggregates, µs/event | speed-up |",
        "|---:|---:|---:|---:|",
    ]
    # (Saved with sorted keys: "20000" before "5000".)
    for size, rounds in sorted(result["hot"].items(), key=lambda item: int(item[0])):
        rec, run_ = min(rounds["recomputed"]), min(rounds["running"])
        lines.append(f"| {int(size):,} | {rec:,.1f} | {run_:,.2f} | {rec / run_:,.0f}x |")
    turns = result.get("turns")
    if turns:
        rec, run_ = min(turns["recomputed"]), min(turns["running"])
        lines += [
            "",
            f"{TURN_KEYS} hot keys taking turns ({TURN_EVENTS} events in each one's window, more keys "
            f"than the 64 held at once; {result['measured_events'] * 5:,} events): {run_:.1f} "
            f"µs/event with running aggregates, {rec:.1f} µs/event recomputing ({rec / run_:.1f}x).",
        ]
    many = result["many"]
    rec, run_ = min(many["recomputed"]), min(many["running"])
    lines += [
        "",
        f"Many keys (the runtime benchmark's shape: 50,000 accounts, about 5 events in each "
        f"window, count and sum; {result['many_events']:,} events): {run_:.2f} µs/event with "
        f"running aggregates allowed, {rec:.2f} µs/event without (ratio {rec / run_:.2f}). No key "
        "there is long enough for them, so both run the same code: the ratio's distance from 1 is "
        "the noise of the measure, and the check costs too little to show.",
    ]
    return "\n".join(lines) + "\n"
