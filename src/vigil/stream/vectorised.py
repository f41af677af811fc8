"""Per-key count and sum over an event-time sliding window, a whole batch per call.

    velocity = SlidingCountSum(StoreSpec("velocity-batch", 1), "5m", lateness="1m")

    def process(self, batch, ctx):
        events = events_of(batch)  # (vigil.stream.base: the runtime builds no records for it)
        cols = velocity.update(
            ctx.state(velocity.store),
            [e.entities.account or "" for e in events],
            [e.occurred_at for e in events],  # or epoch milliseconds
            [e.payload.amount for e in events],
        )
        for i in np.flatnonzero(~cols.accepted):
            ctx.late(batch[i])  # (a record: the batch's are built when one is asked for)
        for i in np.flatnonzero((cols.count >= 10) | (cols.total >= 10_000)):
            ...  # alert on events[i]

The answers are :class:`vigil.stream.windows.WindowedAggregate`'s with
``Window.sliding(size, lateness)`` and ``{"n": Count(), "total": Sum()}``, event by event:
the window of an event at ``t`` is ``(t - size, t]`` over the events of its key accepted
before it (earlier batches, and earlier in this one) and itself; an event older than the
partition's watermark (largest event time seen minus the lateness) is late, and changes
nothing.  The property tests hold both to the same brute-force reference.  One difference:
``WindowedAggregate`` keeps at most ``max_events`` (100,000) of a key's events, and answers
a flooded key over its newest; this index keeps every event its windows hold, so past that
the two counts differ, and its memory follows the events in the window (and the lateness):
a source whose clock stands still (every event at one time) never moves the watermark, and
what is held grows with every event until it moves.

Why a second implementation: the record-by-record one costs about 3 µs an event in Python
(a state read and write, list slicing and a dict of results per event), which caps a
windowed rule at a fifth of what Kafka delivers to one core.  Here Python touches each event
only to read its key, time and value; the window itself is one pass in C over the batch.

How it is held
    In memory, per partition, an index of each key's accepted events within the window plus
    lateness (``vigil.stream._slide``, in C; its Python twin ``vigil.stream.slide`` when the C
    module is not built).  Durable state is one store entry per batch, a *chunk* (the
    accepted events' keys, times and values), plus the watermark: writes per batch, not per
    key, into the same RocksDB and changelog as every store.  A chunk is deleted once the
    watermark is past the window of all its events.  After a restart, a rebalance or a rewound
    checkpoint (``State.generation``), the index is rebuilt from the chunks on the first call.

Sums add each window's values up left to right for windows of up to ``_ADD_UP_AT_MOST``
events (``Sum()`` in a sliding ``WindowedAggregate`` rounds the exact sum once, so the two can
differ: in the last bit for amounts of one sign, by far more where a refund cancels a large amount,
999,999,999.99 + 0.01 - 999,999,999.99 adding up to 0.009999990463256836; and as a restart
rebuilds the totals from the chunks, a sum after one may differ from the sum without it in the
last bit).  Longer windows (a busy key, where adding up would cost the
window's length per event) are differences of running totals kept per key, each total with
what rounding lost from it (compensated): they round about as adding the window up would, not
relative to everything the key held before (a plain running total did: once an
amount of 1e17 had left a busy key's window, the sums of its later windows of 1.0s came out
0.0, a threshold on that sum blinded by one event).  The compensation keeps one level of
magnitude: while a key also holds values far larger than its window's (a 1e30, and a thousand
near 7e13, still within the lateness), a window of 1.0s can sum to 0.0; the totals restart once
as many entries have left as are held, and from then on the window is exact again.  Keys are
strings; values finite numbers, values beyond +-2**1000 (about 1e301) counting as +-2**1000,
so that no sum overflows before 2**23 such values in a window.  Keys whose events the watermark
has passed are let go now and then (once as many keys again are held, and once the watermark
has moved a window's size and the lateness), so memory follows the keys in the window, not every key ever
seen, and a key's room follows what its window holds, not its busiest moment (a burst on a key
that then went quiet was held until as many keys again came: with a steady set of keys, for
good; found in review).

A key longer than ``MAX_KEY_CHARS`` (131,066 characters: an event must fit one chunk) is held
as a digest of itself, as is a key that begins as a digest does (so none can pass for another):
its events are counted together as any key's.  (Refused, one such event, its key an entity id
whoever sent it chose, failed the whole batch, and the application stopped at it at every
restart.)  Limits (each a clear error): times, window size and lateness within 2**62 ms (about
146 million years) of zero.
"""

from __future__ import annotations

import hashlib
import itertools
import operator
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn, SupportsIndex

import numpy as np
import numpy.typing as npt

from vigil.stream.base import State, StoreSpec, lone_surrogate
from vigil.stream.owners import StoreUser, claim_store
from vigil.stream.windows import MAX_TIME_MS, duration_ms

try:  # built by `make compile`; without a C compiler (VIGIL_COMPILE=0) the Python twin runs
    from vigil.stream._slide import Slide, datetimes_ms
except ImportError:  # pragma: no cover - exercised by the uncompiled test runs
    from vigil.stream.slide import Slide, datetimes_ms

Int64s = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]

_WATERMARK_KEY = "\x00wm"
_CHUNK_PREFIX = "c:"
#: Windows of up to this many events are added up one by one; longer ones (a busy key) are
#: differences of running totals per key (see the module).
_ADD_UP_AT_MOST = 64
#: A chunk is one changelog record: kept well under Kafka's default 1 MB message limit.  An event
#: takes at most 4 bytes a key character (UTF-8), 16 for its time and value, and some framing.
_CHUNK_BYTES = 512 * 1024
_EVENT_BYTES = 24
#: So a key may be this long at most (one event must fit a chunk): a longer one is held as a
#: digest (see the module).
MAX_KEY_CHARS = (_CHUNK_BYTES - _EVENT_BYTES) // 4
#: How a key held as a digest begins (NUL: few keys have one, and one that begins so is digested too).
_DIGEST_MARK = "\x00#"
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
#: Before any event: at or below every time accepted (times are within MAX_TIME_MS of 0, as
#: for every window: then no time arithmetic in the index can leave 64 bits).
_NO_WATERMARK = -MAX_TIME_MS


@dataclass(frozen=True, slots=True)
class WindowColumns:
    """The answers for one batch, one row per event in the order given."""

    #: False for a late event (its count and total are 0).
    accepted: Bools
    count: Int64s
    total: Floats


class _Log:
    """One partition's index of the window (in memory), and its chunks."""

    def __init__(self, state: State, slide: Slide) -> None:
        self.state = state
        self.generation = state.generation()
        self.slide = slide
        #: Chunks in write order: (state key, latest event time in it).
        self.chunks: deque[tuple[str, int]] = deque()
        self.next_chunk = 0
        self.watermark: int | None = None


def _as_ms(times: Sequence[Any] | npt.NDArray[Any], n: int, where: str) -> Int64s:
    """Event times as a contiguous int64 array of epoch milliseconds, as ``windows.to_ms`` gives
    them (``where``: what errors name).  Times given as numbers must be within ``MAX_TIME_MS``
    of the epoch (datetimes always are)."""
    if isinstance(times, np.ndarray):
        if times.dtype.kind not in "iu":
            msg = (
                f"{where}: times: expected epoch milliseconds or UTC datetimes, got an array of {times.dtype}"
            )
            raise TypeError(msg)
        if n and times.dtype.kind == "u" and int(times.max()) > MAX_TIME_MS:
            return _in_range(times, where)  # (raises: converting would wrap them)
        return _in_range(np.ascontiguousarray(times, dtype=np.int64), where)
    if n and isinstance(times[0], datetime):
        out = np.empty(n, np.int64)
        listed = times if type(times) is list else list(times)
        problem: Exception | None = None
        try:
            first_bad = datetimes_ms(listed, out)
        except (AttributeError, TypeError, ValueError) as exc:  # a tzinfo whose utcoffset() raised
            first_bad, problem = -2, exc
        if first_bad == -1:
            return out
        found = next(
            ((i, t) for i, t in enumerate(times) if not isinstance(t, datetime) or t.tzinfo is None), None
        )
        if found is None:  # aware datetimes that still do not convert (a tzinfo without an offset)
            why = problem if problem is not None else f"time {first_bad} has no UTC offset"
            msg = f"{where}: times: could not convert the datetimes given: {why}"
            raise TypeError(msg)
        i, bad = found
        if isinstance(bad, datetime):
            msg = f"{where}: time {i} is naive ({bad.isoformat()}); event times must be UTC-aware"
            raise ValueError(msg)
        msg = f"{where}: time {i} is {type(bad).__name__} {bad!r}; expected UTC datetimes, as the first"
        raise TypeError(msg)
    try:
        return _in_range(np.fromiter(map(operator.index, times), np.int64, n), where)
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


def _in_range(t: npt.NDArray[Any], where: str) -> Int64s:
    """``t`` if every time is within ``MAX_TIME_MS`` of the epoch, else the first one named."""
    if len(t) and (int(t.min()) < -MAX_TIME_MS or int(t.max()) > MAX_TIME_MS):
        i = int(np.argmax((t < -MAX_TIME_MS) | (t > MAX_TIME_MS)))
        msg = (
            f"{where}: time {i} is {int(t[i])} ms from the epoch; at most {MAX_TIME_MS:,} "
            "(2**62, about 146 million years) either way"
        )
        raise ValueError(msg)
    return t


def _shown(key: str) -> str:
    """``key`` as an error shows it: a long one cut (whoever sent the event chose it: a 200,000
    character key was shown whole)."""
    return repr(key) if len(key) <= 80 else f"{key[:80]!r}... ({len(key):,} characters)"


def _held(keys: list[str]) -> list[str]:
    """``keys`` as the index holds them: one longer than ``MAX_KEY_CHARS``, or beginning as a
    digest does, as a digest of itself (the same key, the same digest)."""
    out = keys
    for i, key in enumerate(keys):
        if len(key) > MAX_KEY_CHARS or key.startswith(_DIGEST_MARK):
            if out is keys:
                out = list(keys)
            raw = key.encode("utf-8", "surrogatepass")
            out[i] = _DIGEST_MARK + hashlib.blake2b(raw, digest_size=16).hexdigest()
    return out


class SlidingCountSum:
    """Per-key count and sum over a sliding event-time window, a batch at a time (see the module)."""

    def __init__(
        self,
        store: StoreSpec,
        size: timedelta | str | SupportsIndex,
        lateness: timedelta | str | SupportsIndex = 0,
    ) -> None:
        self.store = store
        self.size_ms = duration_ms(size, f"sliding window on store {store.id!r}: size")
        self.lateness_ms = duration_ms(lateness, f"sliding window on store {store.id!r}: lateness")
        if self.size_ms <= 0:
            msg = f"sliding window on store {store.id!r}: size must be positive, got {size!r}"
            raise ValueError(msg)
        if self.lateness_ms < 0:
            msg = f"sliding window on store {store.id!r}: lateness must not be negative, got {lateness!r}"
            raise ValueError(msg)
        if max(self.size_ms, self.lateness_ms) > MAX_TIME_MS:
            msg = (
                f"sliding window on store {store.id!r}: size and lateness must be at most "
                f"{MAX_TIME_MS:,} ms (2**62); got {size!r} and {lateness!r}"
            )
            raise ValueError(msg)
        #: In-memory logs by the identity of the partition's state object (see _log).
        self._logs: dict[int, _Log] = {}
        #: Its hold on the store partitions it updates (a store is one window's: see claim_store).
        self._user = StoreUser(
            f"a SlidingCountSum (size {self.size_ms:,} ms, lateness {self.lateness_ms:,} ms)"
        )

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
        if isinstance(times, np.ndarray) and times.ndim != 1:
            self._not_a_column("times", times.shape)
        t = _as_ms(times, n, f"sliding window on store {self.store.id!r}")
        listed = keys if type(keys) is list else list(keys)
        if self._check_text(listed):
            listed = _held(listed)
        v = self._values(values)
        if v.ndim != 1:
            self._not_a_column("values", v.shape)
        accepted = np.empty(n, np.bool_)
        count = np.empty(n, np.int64)
        total = np.empty(n)
        w0 = _NO_WATERMARK if log.watermark is None else log.watermark
        try:
            try:  # the index checks keys and values itself, before it changes anything
                wm, taken, chars = log.slide.update(listed, t, v, w0, accepted, count, total)
            except ValueError:
                # Name what was wrong; or keys that are str subclasses (numpy's, from a column of
                # keys), which MessagePack encodes none of (the chunks holding them failed every
                # checkpoint, and the restart): as plain strings.
                listed = self._checked(keys, values, v)
                wm, taken, chars = log.slide.update(listed, t, v, w0, accepted, count, total)
        except (TypeError, ValueError):
            raise  # (named, and nothing changed)
        except BaseException:
            # Anything else (MemoryError) may have left part of the batch in the index and none
            # of it in the chunks: the next call rebuilds the index from the chunks.
            self._logs.pop(id(state), None)
            raise
        if wm != w0:
            log.watermark = wm
            state.set(_WATERMARK_KEY, wm)
        if taken < n:
            rows = np.flatnonzero(accepted)
            listed = [listed[i] for i in rows.tolist()]
            t, v = t[rows], v[rows]
        if taken:
            self._write_chunks(log, state, listed, t, v, chars)
        self._expire_chunks(log, state, wm)
        return WindowColumns(accepted, count, total)

    # ------------------------------------------------------------------ helpers

    def _not_a_column(self, what: str, shape: tuple[int, ...]) -> NoReturn:
        # (len() counted rows of a column per row; the C index read them flat, its Python twin
        # refused them with a bare TypeError)
        msg = (
            f"sliding window on store {self.store.id!r}: {what} have shape {shape}; expected one "
            "dimension, one per event"
        )
        raise ValueError(msg)

    def _values(self, values: Sequence[float] | npt.NDArray[Any]) -> Floats:
        try:
            return np.ascontiguousarray(values, dtype=np.float64)
        except (TypeError, ValueError, OverflowError) as exc:
            msg = f"sliding window on store {self.store.id!r}: values must be numbers ({exc})"
            raise TypeError(msg) from None

    def _check_text(self, keys: list[str]) -> bool:
        """Refuse a key that is not UTF-8 text (``json.loads`` makes a lone surrogate of
        ``"\\ud800"``): in a chunk, it failed every checkpoint, and the restart's again.  One
        ``isascii`` over the batch's keys joined; each key only when that finds other text.
        True when a key may begin as a digest does (it has a NUL: see :func:`_held`)."""
        try:
            joined = "".join(keys)
        except TypeError:
            return False  # (not all strings: the index names the first that is not)
        if not joined.isascii():
            for i, key in enumerate(keys):
                problem = lone_surrogate(key)
                if problem is not None:
                    msg = (
                        f"sliding window on store {self.store.id!r}: key {i} has {problem}; "
                        "expected UTF-8 text"
                    )
                    raise ValueError(msg)
        return "\x00" in joined

    def _checked(
        self, keys: Sequence[str], values: Sequence[float] | npt.NDArray[Any], v: Floats
    ) -> list[str]:
        """The keys as plain strings, once they and the values are known good (else the
        first problem, named)."""
        found = next(((i, k) for i, k in enumerate(keys) if not isinstance(k, str)), None)
        if found is not None:
            i, key = found
            msg = f"sliding window on store {self.store.id!r}: key {i} is {key!r}; expected a string"
            raise TypeError(msg)
        finite = np.isfinite(v)
        if not finite.all():
            i = int(np.argmin(finite))
            msg = (
                f"sliding window on store {self.store.id!r}: value {i} (key {_shown(keys[i])}) is "
                f"{values[i]!r}; expected a finite number"
            )
            raise ValueError(msg)
        return _held([str.__str__(k) for k in keys])

    def _write_chunks(
        self, log: _Log, state: State, keys: list[str], t: Int64s, v: Floats, chars: int
    ) -> None:
        """The accepted events (``chars``: their keys' characters) as one chunk, or more if
        one changelog record would not hold them."""
        m = len(keys)
        bounds = [0, m]
        if 4 * chars + _EVENT_BYTES * m > _CHUNK_BYTES:
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
        claim_store(state, self._user, self.store)  # (raises if another window updates it)
        for sid, other in list(self._logs.items()):
            if getattr(other.state, "closed", False):
                self._logs.pop(sid, None)
        log = _Log(state, Slide(self.size_ms, self.lateness_ms, _ADD_UP_AT_MOST, MAX_KEY_CHARS))
        log.watermark = state.get(_WATERMARK_KEY)
        self._rebuild(log, state)
        self._logs[id(state)] = log
        return log

    def _rebuild(self, log: _Log, state: State) -> None:
        """The index from the stored chunks, in the order they were written (so ties keep
        their arrival order), without the entries the watermark has passed."""
        keep_after = None if log.watermark is None else log.watermark - self.size_ms
        for name, (chunk_keys, raw_t, raw_v) in state.items(_CHUNK_PREFIX):
            chunk_t = np.frombuffer(raw_t, dtype="<i8").astype(np.int64)
            chunk_v = np.frombuffer(raw_v, dtype="<f8").astype(np.float64)
            log.chunks.append((name, int(chunk_t.max())))
            log.next_chunk = int(name[len(_CHUNK_PREFIX) :]) + 1
            keys = list(chunk_keys)  # (as held: a digest read back is not digested again)
            if keep_after is not None:
                live = chunk_t > keep_after
                if not live.all():
                    kept = np.flatnonzero(live)
                    keys = [keys[i] for i in kept.tolist()]
                    chunk_t, chunk_v = chunk_t[kept], chunk_v[kept]
            log.slide.feed(keys, chunk_t, chunk_v)
