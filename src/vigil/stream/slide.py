"""The sliding-window index of :mod:`vigil.stream.vectorised` in Python: the twin of the C
module ``vigil.stream._slide`` (``_slide.c``), used when that is not built (``make uncompiled``,
``VIGIL_COMPILE=0``).  Same interface, same algorithm, same answers, to the bit: both add a
short window left to right and restart a key's running totals at the same entries (a fuzz of 3M
events, 370k long sums among them, found no difference, 2026-12-04); held to the same tests.  It
costs about what
the record-by-record window does per event, several times the C one's.
"""

from __future__ import annotations

import itertools
import math
import operator
import sys
from bisect import bisect_right
from collections.abc import Sequence
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt

from vigil.stream.windows import EPOCH

#: Keys are swept (entries the watermark has passed dropped, empty keys let go) once this many
#: more are held than after the last sweep, at least, and once the watermark has moved a
#: window's size and the lateness since the last sweep (as in the C module).
SWEEP_MIN = 1024
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_MS = timedelta(milliseconds=1)
#: Values beyond this count as this (as in the C module: no running total overflows).
VALUE_MAX = 2.0**1000
#: Times within this many seconds of the epoch convert through floats exactly (datetimes_ms).
_FLOAT_EXACT_S = float(1 << 31)


def _sub(a: int, b: int) -> int:
    """``a - b`` clamped to int64, as the C module's saturating subtraction."""
    return min(max(a - b, _INT64_MIN), _INT64_MAX)


class _Key:
    """One key's accepted events in time order (ties in arrival order), with running totals."""

    __slots__ = ("cum", "dropped", "lo", "t", "v")

    def __init__(self) -> None:
        self.t: list[int] = []
        self.v: list[float] = []
        #: ``cum[i] + lo[i]``: the running total up to ``v[i]``, from an origin at or before
        #: ``v[0]`` (entries dropped since are still in it); ``lo`` gathers what rounding ``cum``
        #: lost (compensated, as in the C module's ``Entry``).
        self.cum: list[float] = []
        self.lo: list[float] = []
        #: Entries dropped since the running totals last restarted.
        self.dropped = 0

    def drop(self, cut: int) -> None:
        k = bisect_right(self.t, cut)
        if k:
            del self.t[:k], self.v[:k], self.cum[:k], self.lo[:k]
            # Restart the totals once as many were dropped as are held (amortised; the C module
            # restarts them at the same entries, so the two add alike): a huge value gone stops
            # blurring sums.
            self.dropped += k
            if self.dropped >= len(self.t):
                self.recum(0)
                self.dropped = 0

    def recum(self, start: int) -> None:
        """The running totals from ``start`` on (Neumaier's compensated sum)."""
        t, v, cum, lo = self.t, self.v, self.cum, self.lo
        run, low = (cum[start - 1], lo[start - 1]) if start else (0.0, 0.0)
        for i in range(start, len(t)):
            value = v[i]
            total = run + value
            # What the addition lost: exact, from the larger addend.
            low += (run - total) + value if abs(run) >= abs(value) else (value - total) + run
            run = total
            cum[i], lo[i] = run, low


class Slide:
    """One partition's sliding-window index (see the C module's ``Slide``)."""

    def __init__(
        self, size: int, lateness: int, add_up_at_most: int = 64, max_key_chars: int = sys.maxsize
    ) -> None:
        if size <= 0 or lateness < 0:
            msg = "size must be positive and lateness not negative"
            raise ValueError(msg)
        self.size = size
        self.lateness = lateness
        self.add_up_at_most = add_up_at_most
        self.max_key_chars = max_key_chars
        self._keys: dict[str, _Key] = {}
        self._sweep_at = SWEEP_MIN
        #: The watermark at the last sweep (None: none yet; the first update sets it).
        self._swept_wm: int | None = None

    def update(
        self,
        keys: list[str],
        times: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
        watermark: int,
        accepted: npt.NDArray[np.bool_],
        count: npt.NDArray[np.int64],
        total: npt.NDArray[np.float64],
    ) -> tuple[int, int, int]:
        """Add a batch (arrival order); each event's answer into the three outputs.  Returns
        the watermark after the batch, the events accepted and their keys' characters.  A key
        that is not a plain str of at most ``max_key_chars`` characters, or a value that is not
        finite, raises ValueError before anything changes (the caller names it)."""
        for i, (key, value) in enumerate(zip(keys, values.tolist(), strict=True)):
            if type(key) is not str or len(key) > self.max_key_chars or not math.isfinite(value):
                msg = (
                    f"event {i}: expected a str key of at most {self.max_key_chars} characters "
                    "and a finite value"
                )
                raise ValueError(msg)
        wm = watermark
        taken = chars = 0
        size, lateness = self.size, self.lateness
        for i, (key, when, value) in enumerate(zip(keys, times.tolist(), values.tolist(), strict=True)):
            if when < wm:
                accepted[i], count[i], total[i] = False, 0, 0.0
                continue
            wm = max(wm, _sub(when, lateness))
            n, s = self._add(key, when, value, _sub(wm, size))
            accepted[i], count[i], total[i] = True, n, s
            taken += 1
            chars += len(key)
        due = len(self._keys) > self._sweep_at
        if not due and wm != _INT64_MIN:
            if self._swept_wm is None:
                self._swept_wm = wm
            elif _sub(wm, self._swept_wm) >= min(size + lateness, _INT64_MAX):
                due = True
        if due:
            self._sweep(_sub(wm, size))
            self._swept_wm = None if wm == _INT64_MIN else wm  # (as the C module: none yet)
        return wm, taken, chars

    def feed(self, keys: list[str], times: npt.NDArray[np.int64], values: npt.NDArray[np.float64]) -> None:
        """Add events without answering them or lateness (a rebuild, in accepted order)."""
        for key, when, value in zip(keys, times.tolist(), values.tolist(), strict=True):
            self._add(key, when, value, _INT64_MIN)

    def keys(self) -> int:
        """Keys held (with entries the watermark may have passed)."""
        return len(self._keys)

    def entries(self) -> int:
        """Entries held."""
        return sum(len(k.t) for k in self._keys.values())

    def _add(self, key: str, when: int, value: float, cut: int) -> tuple[int, float]:
        value = min(max(value, -VALUE_MAX), VALUE_MAX)  # (clamped as in the C module)
        slot = self._keys.get(key)
        if slot is None:
            slot = self._keys[key] = _Key()
        t, v, cum, lo = slot.t, slot.v, slot.cum, slot.lo
        if t and t[0] <= cut:
            slot.drop(cut)
        at = len(t) if not t or t[-1] <= when else bisect_right(t, when)
        t.insert(at, when)
        v.insert(at, value)
        cum.insert(at, 0.0)
        lo.insert(at, 0.0)
        slot.recum(at)
        start = bisect_right(t, _sub(when, self.size), 0, at)
        n = at + 1 - start
        if n <= self.add_up_at_most:
            # Left to right, as the C module adds (sum() compensates from Python 3.12 on).
            total = 0.0
            for value in v[start : at + 1]:
                total += value
            return n, total
        # (cum runs from before the first entry held: dropped entries are still in it.)  The
        # total up to `at` less the total before `start`, their two parts taken apart.
        before = start - 1 if start else 0
        total = (cum[at] - cum[before]) + (lo[at] - lo[before])
        return n, total if start else total + v[0]

    def _sweep(self, cut: int) -> None:
        for key, slot in list(self._keys.items()):
            slot.drop(cut)
            if not slot.t:
                del self._keys[key]
        self._sweep_at = max(SWEEP_MIN, 2 * len(self._keys))


def datetimes_ms(times: Sequence[object], out: npt.NDArray[np.int64]) -> int:
    """Aware datetimes as epoch milliseconds, floored, into ``out``; -1, or the index of the
    first item that is not an aware datetime (the caller names it).

    Within 2**31 s of the epoch (1901-2038) from ``timestamp()``: that float is the exact time
    correctly rounded, and it and its product by 10**6 are each within 0.25 µs, so rounding to
    whole microseconds recovers the exact time.  Further out, exactly, at about 1.5 times the cost."""
    n = len(times)
    for i, when in enumerate(times):
        if not isinstance(when, datetime) or when.utcoffset() is None:
            return i
    aware: Sequence[datetime] = times  # type: ignore[assignment]  # (checked above)
    seconds = np.fromiter(map(datetime.timestamp, aware), np.float64, n)
    if n and float(np.abs(seconds).max()) < _FLOAT_EXACT_S:
        out[:] = np.floor_divide(np.rint(seconds * 1e6).astype(np.int64), 1000)
    else:
        deltas = map(operator.sub, aware, itertools.repeat(EPOCH, n))
        out[:] = np.fromiter(map(operator.floordiv, deltas, itertools.repeat(_MS, n)), np.int64, n)
    return -1
