"""Per-key count and sum over an event-time sliding window, a whole batch per call, in numpy.

    velocity = SlidingCountSum(StoreSpec("velocity-batch", 1), "5m", lateness="1m")

    def process(self, batch, ctx):
        events = [rec.event for rec in batch]
        cols = velocity.update(
            ctx.state(velocity.store),
            [e.entities.account or "" for e in events],
            [e.occurred_at for e in events],  # or epoch milliseconds
            [e.payload.amount for e in events],
        )
        for i in np.flatnonzero(~cols.accepted):
            ctx.late(batch[i])
        for i in np.flatnonzero((cols.count >= 10) | (cols.total >= 10_000)):
            ...  # alert on batch[i]

The answers are :class:`vigil.stream.windows.WindowedAggregate`'s with
``Window.sliding(size, lateness)`` and ``{"n": Count(), "total": Sum()}``, event by event:
the window of an event at ``t`` is ``(t - size, t]`` over the events of its key accepted
before it (earlier batches, and earlier in this one) and itself; an event older than the
partition's watermark (largest event time seen minus the lateness) is late, and changes
nothing.  The property tests hold both to the same brute-force reference.

Why a second implementation: the record-by-record one costs about 3 µs an event in Python
(a state read and write, list slicing and a dict of results per event), which caps a
windowed rule at a fifth of what Kafka delivers to one core.  Here a batch costs a few
numpy passes, and Python touches each event only to read its key, time and value.

How it is held
    Per partition, the accepted events of the last ``size + lateness`` of event time, in
    memory as a few arrays sorted by (key, time): each batch adds one sorted run, and runs of
    similar length are merged (as in an LSM tree), dropping what the watermark has passed.
    Counts and sums come from binary searches and running totals over each run.  Durable
    state is one store entry per batch, a *chunk* (the batch's keys, times and values), plus
    the watermark: writes per batch, not per key, into the same RocksDB and changelog as
    every store.  A chunk is deleted once the watermark is past the window of all its events.
    After a restart, a rebalance or a rewound checkpoint (``State.generation``), the arrays
    are rebuilt from the chunks on the first call.

Sums are differences of running totals for whole-number values (amounts in minor units,
whole dollars, counts) while a run's total stays below 2**53: exact, and equal to ``Sum()``'s.
Otherwise each window's values are added up themselves (``np.add.reduceat``), so a sum rounds
relative to the window's own values, as ``Sum()``'s does, though it may differ from a
left-to-right sum in the last bits.  (A difference of running totals over the whole run would
round relative to everything before it: amounts that left the window long ago, 1e18 then 1.0,
made later windows sum to 0.)  Past an average of ``_ADD_UP_AT_MOST`` events a window (a busy
key, where adding up would cost the window's length per event), sums come from running totals
that restart at each key: they round relative to that key's total in the run.
Keys are strings; values finite numbers.

Key codes are issued afresh now and then, so memory follows the keys in the window, not every
key ever seen.

Limits (each a clear error): window plus lateness at most about 4 years; at most 2**23 keys
in one partition's window; keys of at most 131,066 characters (an event fits one chunk).
"""

from __future__ import annotations

import itertools
import operator
from bisect import bisect_right
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from vigil.stream.base import State, StoreSpec
from vigil.stream.windows import EPOCH, duration_ms

Int64s = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]

_WATERMARK_KEY = "\x00wm"
_CHUNK_PREFIX = "c:"
#: A run's entries are ``key code << _SHIFT | (time - base)``: one int64 sorts by key, then time.
_SHIFT = 40
_SPAN = 1 << _SHIFT
_MASK = _SPAN - 1
#: Key codes fit in the 23 bits above the time: past this many, codes are issued afresh to the
#: keys still in the window.
_MAX_CODES = 1 << 23
#: Codes are issued afresh (the log rebuilt from its chunks) once more than this many, and more
#: than four times the entries held, were issued: rebuilds are rare, and the table stays within a
#: few times what the window holds.
_REISSUE_AT = 1 << 16
#: Windows of values that are not exact in running totals are added up one by one while they
#: hold at most this many events on average; longer ones use running totals per key (see sums).
_ADD_UP_AT_MOST = 64
#: Window plus lateness at most this (about 4 years), and a batch spanning more event time is
#: taken in halves: then the times a batch needs, held and new, span less than 2**38 ms, and
#: placed 2**38 above the base they stay inside _SPAN (see _place).
_HORIZON = 1 << 37
#: Whole-number values are summed exactly in float64 while running totals stay below this.
_EXACT = float(1 << 53)
#: Before any event: lower than every watermark, and far from int64's edge.
_NO_WATERMARK = -(1 << 62)
#: A run is merged into the one before it while that one is at most this many times longer.  Each
#: run costs every later batch a search and each merge copies both runs; measured on the runtime
#: benchmark (600k events, 125-event batches a partition, two runs each), µs per event: 2 (a binary
#: counter) 3.7-3.9, 4: 3.4, 8: 3.4-4.0, 16: 3.5-3.7.  Little in it, on this machine's noise.
_MERGE_RATIO = 8
#: A chunk is one changelog record: kept well under Kafka's default 1 MB message limit.  An event
#: takes at most 4 bytes a key character (UTF-8), 16 for its time and value, and some framing.
_CHUNK_BYTES = 512 * 1024
_EVENT_BYTES = 24
#: So a key may be this long at most (one event must fit a chunk).
MAX_KEY_CHARS = (_CHUNK_BYTES - _EVENT_BYTES) // 4
_tz = attrgetter("tzinfo")
_MS = timedelta(milliseconds=1)
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
#: Times within this many seconds of the epoch convert through floats exactly (_datetimes_ms).
_FLOAT_EXACT_S = float(1 << 31)


@dataclass(frozen=True, slots=True)
class WindowColumns:
    """The answers for one batch, one row per event in the order given."""

    #: False for a late event (its count and total are 0).
    accepted: Bools
    count: Int64s
    total: Floats


class _Run:
    """Accepted events sorted by (key, time), with running totals of their values."""

    __slots__ = ("abs_total", "cum", "entries", "exact", "key_cum", "max_t", "values")
    abs_total: float
    exact: bool

    def __init__(
        self, entries: Int64s, values: Floats, max_t: int, merged: tuple[_Run, _Run] | None = None
    ) -> None:
        self.entries = entries
        self.values = values
        self.max_t = max_t
        n = len(values)
        # Whole numbers whose running total stays below 2**53 sum exactly in float64 in any
        # order: one running total over the run, a window's sum the difference of two.  (A merge
        # of two runs is whole if both were: only their bound is added up, not checked again.)
        if merged is None:
            self.abs_total = float(np.abs(values).sum())
            whole = bool((values == np.rint(values)).all())
        else:
            self.abs_total = merged[0].abs_total + merged[1].abs_total
            whole = merged[0].exact and merged[1].exact
        self.exact = whole and self.abs_total < _EXACT
        #: Exact: ``cum[i]`` is the sum of ``values[:i]``.  Otherwise the values padded by a 0
        #: (a search may land at the end), for np.add.reduceat.
        self.cum = np.zeros(n + 1)
        #: Running totals restarting at each key (for long windows of values not exact), made
        #: when first needed.
        self.key_cum: Floats | None = None
        if self.exact:
            values.cumsum(out=self.cum[1:])
        else:
            self.cum[:n] = values

    def sums(self, lo: npt.NDArray[np.intp], hi: npt.NDArray[np.intp]) -> Floats:
        """The sum of ``values[lo:hi]`` for each pair."""
        if self.exact:
            return self.cum[hi] - self.cum[lo]
        n = len(self.values)
        if not len(lo) or not n:
            return np.zeros(len(lo))
        if int((hi - lo).sum()) > _ADD_UP_AT_MOST * len(lo):
            # Long windows (a busy key): adding each up would cost its length per event.  Running
            # totals that restart at each key instead: a sum rounds relative to its key's total
            # in the run, not to the window's own values.
            if self.key_cum is None:
                self.key_cum = _key_totals(self.entries >> _SHIFT, self.values)
            excl = self.key_cum - self.values
            # Both sides are computed for every pair, empty windows too: a window past the run's
            # last entry (lo == hi == n, a key that sorts after all of them) must still index
            # inside it.
            top = np.minimum(np.maximum(hi - 1, lo), n - 1)
            return np.where(hi > lo, self.key_cum[top] - excl[np.minimum(lo, n - 1)], 0.0)
        # reduceat over [lo0, hi0, lo1, hi1, ...]: at each even place the sum of values[lo:hi]
        # when lo < hi, else values[lo] (an empty window: 0).
        bounds = np.empty(2 * len(lo), np.intp)
        bounds[0::2] = lo
        bounds[1::2] = hi
        return np.where(hi > lo, np.add.reduceat(self.cum, bounds)[0::2], 0.0)


def _key_totals(codes: Int64s, values: Floats) -> Floats:
    """Running totals that restart at each key (a segmented scan: log2 of the longest key's
    count of numpy passes, each adding the total ``d`` places back within the same key)."""
    totals = values.copy()
    d = 1
    while d < len(totals):
        same = codes[d:] == codes[:-d]
        if not same.any():
            break
        totals[d:] += np.where(same, totals[:-d], 0.0)
        d *= 2
    return totals


class _Log:
    """One partition's accepted events within window + lateness (in memory), and its chunks."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.generation = state.generation()
        #: Dense codes of the keys (see _SHIFT), issued in order of first sighting.
        self.codes: dict[str, int] = {}
        #: Times are held as ``time - base`` (see _SHIFT and _place).
        self.base: int | None = None
        self.runs: list[_Run] = []
        #: Chunks in write order: (state key, latest event time in it).
        self.chunks: deque[tuple[str, int]] = deque()
        self.next_chunk = 0
        self.watermark: int | None = None


def _as_ms(times: Sequence[Any] | npt.NDArray[Any], n: int, where: str) -> Int64s:
    """Event times as int64 epoch milliseconds, as ``windows.to_ms`` gives them (``where``:
    what errors name)."""
    if isinstance(times, np.ndarray):
        if times.dtype.kind not in "iu":
            msg = (
                f"{where}: times: expected epoch milliseconds or UTC datetimes, got an array of {times.dtype}"
            )
            raise TypeError(msg)
        return times.astype(np.int64, copy=False)
    if n and isinstance(times[0], datetime):
        problem: Exception | None = None
        try:
            if None not in map(_tz, times):
                return _datetimes_ms(times, n)
        except (AttributeError, TypeError, ValueError) as exc:
            problem = exc
        found = next(
            ((i, t) for i, t in enumerate(times) if not isinstance(t, datetime) or t.tzinfo is None), None
        )
        if found is None:  # aware datetimes that still do not convert (a tzinfo without an offset)
            msg = f"{where}: times: could not convert the datetimes given: {problem}"
            raise TypeError(msg)
        i, bad = found
        if isinstance(bad, datetime):
            msg = f"{where}: time {i} is naive ({bad.isoformat()}); event times must be UTC-aware"
            raise ValueError(msg)
        msg = f"{where}: time {i} is {type(bad).__name__} {bad!r}; expected UTC datetimes, as the first"
        raise TypeError(msg)
    try:
        return np.fromiter(map(operator.index, times), np.int64, n)
    except (TypeError, OverflowError):
        pass
    i, bad = next(
        (
            (i, t)
            for i, t in enumerate(times)
            if not hasattr(t, "__index__") or not _INT64_MIN <= t <= _INT64_MAX
        ),
        (0, times[0]),
    )
    msg = (
        f"{where}: time {i} is {type(bad).__name__} {bad!r}; expected epoch milliseconds "
        "(64-bit integers) or UTC datetimes"
    )
    raise TypeError(msg)


def _datetimes_ms(times: Sequence[datetime], n: int) -> Int64s:
    """Aware datetimes as ``(when - epoch) // 1 ms``, exactly, as ``windows.to_ms`` gives them.

    Within 2**31 s of the epoch (1901-2038) from ``timestamp()``: that float is the exact time
    correctly rounded, and it and its product by 10**6 are each within 0.25 µs, so rounding to
    whole microseconds recovers the exact time (as fast as the old, inexact ``int(seconds *
    1000)``).  Further out, exactly, at about 1.5 times the cost."""
    seconds = np.fromiter(map(datetime.timestamp, times), np.float64, n)
    if float(np.abs(seconds).max()) < _FLOAT_EXACT_S:
        return np.floor_divide(np.rint(seconds * 1e6).astype(np.int64), 1000)
    deltas = map(operator.sub, times, itertools.repeat(EPOCH, n))
    return np.fromiter(map(operator.floordiv, deltas, itertools.repeat(_MS, n)), np.int64, n)


class SlidingCountSum:
    """Per-key count and sum over a sliding event-time window, a batch at a time (see the module)."""

    def __init__(
        self, store: StoreSpec, size: timedelta | str | int, lateness: timedelta | str | int = 0
    ) -> None:
        self.store = store
        self.size_ms = duration_ms(size)
        self.lateness_ms = duration_ms(lateness)
        if self.size_ms <= 0:
            msg = f"sliding window on store {store.id!r}: size must be positive, got {size!r}"
            raise ValueError(msg)
        if self.lateness_ms < 0:
            msg = f"sliding window on store {store.id!r}: lateness must not be negative, got {lateness!r}"
            raise ValueError(msg)
        if self.size_ms + self.lateness_ms > _HORIZON:
            msg = (
                f"sliding window on store {store.id!r}: size plus lateness is "
                f"{self.size_ms + self.lateness_ms:,} ms; at most {_HORIZON:,} (about 4 years)"
            )
            raise ValueError(msg)
        #: In-memory logs by the identity of the partition's state object (see _log).
        self._logs: dict[int, _Log] = {}

    def watermark(self, state: State) -> int | None:
        """The partition's watermark in ms (None before the first event)."""
        wm: int | None = state.get(_WATERMARK_KEY)
        return wm

    # ------------------------------------------------------------------ the batch

    def update(
        self,
        state: State,
        keys: Sequence[str],
        times: Sequence[datetime] | Sequence[int] | npt.NDArray[Any],
        values: Sequence[float] | npt.NDArray[Any],
    ) -> WindowColumns:
        """Add a batch of events (in arrival order) and return each one's window count and sum.

        Bad input (a key that is not a string, a value that is not a finite number, a naive
        datetime) raises before anything changes, naming what and where."""
        n = len(keys)
        if len(times) != n or len(values) != n:
            msg = (
                f"sliding window on store {self.store.id!r}: {n} keys, {len(times)} times and "
                f"{len(values)} values; expected one of each per event"
            )
            raise ValueError(msg)
        log = self._log(state)
        if n == 0:
            return WindowColumns(np.ones(0, np.bool_), np.zeros(0, np.int64), np.zeros(0))
        t = _as_ms(times, n, f"sliding window on store {self.store.id!r}")
        keys, v = self._checked(keys, values)
        running = np.maximum.accumulate(t)
        in_order = bool((running == t).all())
        if int(running[-1]) - (int(t[0]) if in_order else int(t.min())) >= _HORIZON:
            # Years of event time in one batch (a bad clock, a backfill): in halves, which give
            # the same answers (a batch answers as its events would one by one).
            half = n // 2
            a = self.update(state, keys[:half], t[:half], v[:half])
            b = self.update(state, keys[half:], t[half:], v[half:])
            return WindowColumns(
                np.concatenate((a.accepted, b.accepted)),
                np.concatenate((a.count, b.count)),
                np.concatenate((a.total, b.total)),
            )
        size, lateness = self.size_ms, self.lateness_ms
        # (Each numpy call costs about a microsecond whatever its length, and a partition's
        # share of a batch is a few hundred events: so as few calls as the answer allows.)

        # Late events: older than the watermark as it stood just before each one.
        w0 = _NO_WATERMARK if log.watermark is None else log.watermark
        if in_order:
            late = t < w0 if w0 > t[0] else None  # each event is its own running maximum
        else:
            before = np.empty(n, np.int64)
            before[0] = w0
            np.maximum(running[:-1] - lateness, w0, out=before[1:])
            late = t < before
        wm = max(w0, int(running[-1]) - lateness)
        rows = None
        if late is not None and late.any():
            rows = np.flatnonzero(~late)
            keys = [keys[i] for i in rows.tolist()]
            t, v = t[rows], v[rows]
            if not in_order and len(t):
                in_order = bool((np.maximum.accumulate(t) == t).all())
        m = len(keys)
        if m == 0:  # all late: nothing changes (a late event cannot move the watermark)
            return WindowColumns(np.zeros(n, np.bool_), np.zeros(n, np.int64), np.zeros(n))

        t_min = int(t[0]) if in_order else int(t.min())
        entries, base = self._place(log, keys, t, (t_min, int(running[-1])), min(t_min, wm) - size)
        # Sorted by (key, time), ties in arrival order: each event's window among this batch's
        # events is the stretch before it down to the first entry inside (t - size, t].
        order = entries.argsort(kind="stable")
        ordered = entries[order]
        starts = ordered - size
        batch = _Run(ordered, v[order], int(running[-1]))
        first = ordered.searchsorted(starts, "right")
        pos = np.arange(1, m + 1)
        got_n = pos - first
        got_sum = batch.sums(first, pos)
        # The stretch holds only events that arrived earlier if, within each key, arrival
        # order is time order (always so when the batch is in time order).  Keys whose events
        # came out of order in this batch are redone one event at a time.
        if not in_order:
            same_key = (ordered[1:] >> _SHIFT) == (ordered[:-1] >> _SHIFT)
            disordered = same_key & (order[1:] < order[:-1])
            if disordered.any():
                self._redo_disordered(ordered, order, batch.values, t, disordered, got_n, got_sum)
        if log.runs:  # earlier batches: every event in them arrived before
            both = np.concatenate((ordered, starts))
            for run in log.runs:
                at = run.entries.searchsorted(both, "right")
                hi, lo = at[:m], at[m:]
                got_n += hi
                got_n -= lo
                got_sum += run.sums(lo, hi)
        count = np.empty(m, np.int64)
        total = np.empty(m)
        count[order] = got_n
        total[order] = got_sum
        if rows is None:
            accepted = np.ones(n, np.bool_)
        else:
            accepted = np.zeros(n, np.bool_)
            accepted[rows] = True
            count_all, total_all = np.zeros(n, np.int64), np.zeros(n)
            count_all[rows], total_all[rows] = count, total
            count, total = count_all, total_all

        # Only now: until this batch's windows are answered, a rebuild (see _place) must keep
        # what the watermark before it (not after) still needs.
        if wm != log.watermark:
            log.watermark = wm
            state.set(_WATERMARK_KEY, wm)
        self._add_run(log, batch, wm - size - base)
        self._write_chunks(log, state, keys, t, v)
        self._expire_chunks(log, state, wm)
        return WindowColumns(accepted, count, total)

    # ------------------------------------------------------------------ helpers

    def _checked(
        self, keys: Sequence[str], values: Sequence[float] | npt.NDArray[Any]
    ) -> tuple[Sequence[str], Floats]:
        """The keys as plain strings and the values as float64, once both are known good."""
        if set(map(type, keys)) != {str}:  # (a C loop)
            found = next(((i, k) for i, k in enumerate(keys) if not isinstance(k, str)), None)
            if found is not None:
                i, key = found
                msg = f"sliding window on store {self.store.id!r}: key {i} is {key!r}; expected a string"
                raise TypeError(msg)
            # Subclasses of str (numpy's, from a column of keys): MessagePack encodes none of
            # them, so the chunks holding them failed every checkpoint, and the restart.
            keys = [str.__str__(k) for k in keys]
        if max(map(len, keys)) > MAX_KEY_CHARS:
            i = next(i for i, k in enumerate(keys) if len(k) > MAX_KEY_CHARS)
            msg = (
                f"sliding window on store {self.store.id!r}: key {i} has {len(keys[i]):,} characters; "
                f"at most {MAX_KEY_CHARS:,}"
            )
            raise ValueError(msg)
        try:
            v = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError, OverflowError) as exc:
            msg = f"sliding window on store {self.store.id!r}: values must be numbers ({exc})"
            raise TypeError(msg) from None
        finite = np.isfinite(v)
        if not finite.all():
            i = int(np.argmin(finite))
            msg = (
                f"sliding window on store {self.store.id!r}: value {i} (key {keys[i]!r}) is "
                f"{values[i]!r}; expected a finite number"
            )
            raise ValueError(msg)
        return keys, v

    def _place(
        self, log: _Log, keys: Sequence[str], t: Int64s, span: tuple[int, int], keep_after: int
    ) -> tuple[Int64s, int]:
        """``code << _SHIFT | (time - base)`` of each event, and the base (``span``: the events'
        earliest and latest time).

        Issues codes to new keys.  When the codes run out, or this batch's times fall outside
        the span the base allows, the log is rebuilt first with fresh codes and a new base,
        keeping only entries after ``keep_after`` (older ones are in no window of this batch
        or any later one).  Raises, before changing anything, when the keys in the window are
        too many for the codes."""
        codes = log.codes
        found: list[int | None] = list(map(codes.get, keys))
        fresh = None in found
        t_min, t_max = span
        base = log.base
        if (
            base is None
            or t_min - base < _HORIZON
            or t_max - base >= _SPAN
            or (fresh and len(codes) + len(keys) > _MAX_CODES)
            # Codes of keys long gone from the window: the table would keep every key ever seen
            # (a million 42-character addresses: 150 MB) until the codes run out.
            or (fresh and len(codes) > _REISSUE_AT and len(codes) > 4 * sum(len(r.entries) for r in log.runs))
        ):
            self._rebuild(log, log.state, keep_after, t_min)
            codes = log.codes
            found = list(map(codes.get, keys))
            fresh = None in found
            base = log.base
            if base is None:  # nothing held: this batch sets the base
                base = log.base = t_min - 2 * _HORIZON
        if fresh:
            new = dict.fromkeys(k for k, code in zip(keys, found, strict=True) if code is None)
            if len(codes) + len(new) > _MAX_CODES:
                msg = (
                    f"sliding window on store {self.store.id!r}: {len(codes) + len(new):,} keys in "
                    f"one partition's window (this batch's included); at most {_MAX_CODES:,} are "
                    "supported (add partitions)"
                )
                raise ValueError(msg)
            for key in new:
                codes[key] = len(codes)
            found = list(map(codes.get, keys))
        return (np.fromiter(found, np.int64, len(found)) << _SHIFT) | (t - base), base

    def _redo_disordered(
        self,
        ordered: Int64s,
        order: npt.NDArray[np.intp],
        vals: Floats,
        t: Int64s,
        disordered: Bools,
        got_n: Int64s,
        got_sum: Floats,
    ) -> None:
        """This batch's share of each window, for the keys whose events came out of time
        order: recomputed in arrival order, as the record-by-record windows do."""
        size = self.size_ms
        codes = ordered >> _SHIFT
        for code in np.unique(codes[1:][disordered]).tolist():
            lo, hi = (int(x) for x in np.searchsorted(codes, [code, code + 1]))
            times: list[int] = []
            values: list[float] = []
            for row in sorted(range(lo, hi), key=lambda r: int(order[r])):
                when = int(t[order[row]])
                at = bisect_right(times, when)
                times.insert(at, when)
                values.insert(at, float(vals[row]))
                start = bisect_right(times, when - size)
                got_n[row] = at + 1 - start
                got_sum[row] = sum(values[start : at + 1], 0.0)

    def _add_run(self, log: _Log, run: _Run, cut: int) -> None:
        """Add a batch's run; merge runs, dropping entries at or before ``cut`` (relative time:
        watermark - size), which are in no later event's window."""
        runs = log.runs
        limit = cut + (log.base or 0)
        runs[:] = [r for r in runs if r.max_t > limit]
        runs.append(run)
        while len(runs) >= 2 and len(runs[-2].entries) <= _MERGE_RATIO * len(runs[-1].entries):
            newer, older = runs.pop(), runs.pop()
            entries = np.concatenate((older.entries, newer.entries))
            values = np.concatenate((older.values, newer.values))
            keep = (entries & _MASK) > cut
            if not keep.all():
                entries, values = entries[keep], values[keep]
            order = entries.argsort(kind="stable")  # two sorted runs: a linear merge
            runs.append(_Run(entries[order], values[order], max(older.max_t, newer.max_t), (older, newer)))

    def _write_chunks(self, log: _Log, state: State, keys: Sequence[str], t: Int64s, v: Floats) -> None:
        m = len(keys)
        bounds = [0, m]
        if 4 * sum(map(len, keys)) + _EVENT_BYTES * m > _CHUNK_BYTES:
            # Cut where the bytes add up (long keys may be bunched anywhere in the batch).
            bounds, used = [0], 0
            for i, key in enumerate(keys):
                cost = 4 * len(key) + _EVENT_BYTES
                if used + cost > _CHUNK_BYTES:
                    bounds.append(i)
                    used = 0
                used += cost
            bounds.append(m)
        for lo, hi in itertools.pairwise(bounds):
            name = f"{_CHUNK_PREFIX}{log.next_chunk:012d}"
            log.next_chunk += 1
            chunk_t = t[lo:hi]
            state.set(
                name,
                [list(keys[lo:hi]), chunk_t.astype("<i8").tobytes(), v[lo:hi].astype("<f8").tobytes()],
            )
            log.chunks.append((name, int(chunk_t.max())))

    def _expire_chunks(self, log: _Log, state: State, wm: int) -> None:
        limit = wm - self.size_ms
        chunks = log.chunks
        while chunks and chunks[0][1] <= limit:
            state.delete(chunks.popleft()[0])

    # ------------------------------------------------------------------ restore

    def _log(self, state: State) -> _Log:
        log = self._logs.get(id(state))
        if log is not None and log.state is state and log.generation == state.generation():
            return log
        # A state object not seen before (a partition assigned, or restarted) or one whose
        # pending writes were thrown away: rebuild from its chunks.  Logs of closed states go.
        for sid, other in list(self._logs.items()):
            if getattr(other.state, "closed", False):
                self._logs.pop(sid, None)
        log = _Log(state)
        log.watermark = state.get(_WATERMARK_KEY)
        self._rebuild(log, state, None, None)
        self._logs[id(state)] = log
        return log

    def _rebuild(self, log: _Log, state: State, keep_after: int | None, low: int | None) -> None:
        """The log from the stored chunks: entries after ``keep_after`` (default: the stored
        watermark less the size), fresh codes, and a base below ``low`` and every entry kept."""
        keys: list[str] = []
        times: list[Int64s] = []
        values: list[Floats] = []
        log.chunks.clear()
        log.next_chunk = 0
        for name, (chunk_keys, raw_t, raw_v) in state.items(_CHUNK_PREFIX):
            chunk_t = np.frombuffer(raw_t, dtype="<i8").astype(np.int64)
            keys.extend(chunk_keys)
            times.append(chunk_t)
            values.append(np.frombuffer(raw_v, dtype="<f8").astype(np.float64))
            log.chunks.append((name, int(chunk_t.max())))
            log.next_chunk = int(name[len(_CHUNK_PREFIX) :]) + 1
        log.codes = {}
        log.runs = []
        log.base = None
        if keep_after is None and log.watermark is not None:
            keep_after = log.watermark - self.size_ms
        if not keys:
            return
        t = np.concatenate(times)
        v = np.concatenate(values)
        if keep_after is not None:
            live = t > keep_after
            if not live.all():
                kept = np.flatnonzero(live)
                keys = [keys[i] for i in kept.tolist()]
                t, v = t[kept], v[kept]
        if not keys:
            return
        oldest = int(t.min())
        base = log.base = (oldest if low is None else min(low, oldest)) - 2 * _HORIZON
        codes = log.codes = dict(zip(dict.fromkeys(keys), itertools.count(), strict=False))
        entries = (np.fromiter(map(codes.__getitem__, keys), np.int64, len(keys)) << _SHIFT) | (t - base)
        order = entries.argsort(kind="stable")
        log.runs = [_Run(entries[order], v[order], int(t.max()))]
