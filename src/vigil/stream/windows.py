"""Event-time windows over keyed state, for use inside operators.

    per_account = WindowedAggregate(
        StoreSpec("velocity", 1), Window.sliding("5m", lateness="30s"), {"n": Count(), "total": Sum()}
    )

    def process(self, batch, ctx):
        state = ctx.state(per_account.store)
        for rec in batch:
            e = rec.event
            result = per_account.update(state, e.key(), e.occurred_at, e.payload.amount)
            if result is None:
                ctx.late(rec)          # counted and sent to the late-events topic, never dropped silently
                continue
            (window,) = result
            if window.values["n"] >= 10 or window.values["total"] >= 10_000: ...

Semantics (the property tests check them against a brute-force reference):

- times are event times (``occurred_at``) in integer milliseconds;
- **tumbling** windows of size S are ``[kS, (k+1)S)``; **hopping** windows of size S and
  step H are ``[kH, kH+S)``, an event falls in every one that contains it; **sliding**
  windows of size S end at each event: ``(t-S, t]``;
- the **watermark** of a partition is the largest event time seen there minus the
  allowed lateness.  A window closes when the watermark reaches its end (for a sliding
  window, which ends at its event, when the watermark passes the event).  An event whose
  windows have all closed is *late*: ``update`` returns ``None`` and changes nothing.  An
  out-of-order event whose window is still open counts, however old within it (as in Flink
  and Kafka Streams: the window's end plus the lateness decides, not the event's own time);
  a hopping event whose older windows have closed counts in the open ones only.  The
  watermark is the partition's, shared by every input topic the operator reads there: an
  operator windowing more than one topic should ask its application to align them in event
  time (``Operator.event_time_skew_s``), or a backlog read from one topic far ahead of the
  other makes the other's events late;
- ``update`` returns the windows the event fell into with their aggregates over every
  accepted event of the key so far; a sliding window's sum is the exact sum rounded once
  (``math.fsum``), the same in whatever order its events came;
- a sliding window keeps at most ``max_events`` of a key's events (default ``MAX_EVENTS``,
  100,000) and ``MAX_ENTRY_BYTES`` of them (12 MiB, estimated: 18 bytes an event, and the
  encoded length of each value that is not a number): past either, the oldest make room and
  are counted in ``evicted``, so a flooded key's answers are over its newest events, and its
  store entry stays within what a changelog record carries.  A sliding window whose
  aggregations only count and compare values (``Count``, ``DistinctCount``) stores a value
  longer than ``DISTINCT_BYTES`` as a digest, as below, so it reaches ``max_events`` first;
- likewise, a tumbling or hopping window's ``DistinctCount`` keeps at most its share of
  ``max_events`` distinct values: ``max_events`` divided by the windows a key can have open
  at once (``(size + lateness) / step``, rounded up) and by the aggregate's distinct counts
  (33,333 for one-minute windows with two minutes' lateness).  Past that, a value new to the
  window is not kept (counted in ``capped``; the first is logged) and its count stays at the
  share; every window has its own share, so a flooded window leaves the next one its room.
  Many windows open at once make the share small (a day hopping by a minute: 69 values): a
  share under ``DISTINCT_SHARE_LOW`` is warned of when the aggregate is made.  A value whose
  encoding is longer than ``DISTINCT_BYTES`` is held as a digest (distinct values stay
  distinct), so the key's entry stays within a changelog record too;
- values are kept as a restart reads them back: a ``Decimal`` as a float, a UUID as its text
  (see :func:`_plain`); a value an aggregation cannot take (text to a sliding ``Sum``, ``None`` to
  ``Min``) is refused, naming the key and the aggregation, before the update changes anything;
- a store is one window's (its keys and the watermark): a second window updating a store
  partition is refused at that update, naming both (see :func:`claim_store`);
- a key may have at most ``MAX_OPEN_WINDOWS`` tumbling or hopping windows open at once
  (``Window`` refuses more: each event updates ``size / step`` of them);
- state past the window and the lateness is deleted when its key is next touched, and for
  keys that went quiet by a walk over the store that ``update`` takes a step of now and then
  (:class:`QuietKeys`: it looks at two keys for every new key, so a store of keys seen once
  stays bounded), or all at once by :meth:`WindowedAggregate.expire`.

The watermark is kept in the same store (one entry per partition), so it survives restarts
and moves with the partition.  It never moves back: one event dated far ahead (a producer's
clock a day fast) makes every later event of the partition late until event time catches up,
and that persists across restarts.  The normalise stage refuses events dated more than its
``max_ahead`` (5 minutes) after they were received; an application reading other topics has no
such guard of its own.

Cost: a tumbling or hopping update is O(1) per window open for the key, and it rebuilds the
key's entry of open windows: with a lateness much longer than the window, that is every window
within the lateness (a minute's tumbling window with two hours' lateness: 7,201 windows, about
1.6 ms an update, against 8 µs without lateness).  A sliding update recomputes over the
key's window (in C), which is cheapest for the few events a key usually holds; once a key
holds ``RUNNING_FROM`` events, its in-order events are answered by running aggregates kept
in memory beside the stored list (``_Running``): O(log n) instead of O(n), so one flooded
key does not slow every one of its events down (``benchmarks/windows.py``).
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import operator
import re
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, NamedTuple, NoReturn, SupportsIndex

import msgspec
from mypy_extensions import mypyc_attr

from vigil.stream.base import State, StoreSpec, lone_surrogate
from vigil.stream.owners import StoreUser, claim_store, state_ref

log = logging.getLogger(__name__)

WindowKind = Literal["tumbling", "hopping", "sliding"]
_KINDS_OF_WINDOW = ("tumbling", "hopping", "sliding")

_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")
_WATERMARK_KEY = "\x00wm"
_KEY_PREFIX = "w:"
_MS = timedelta(milliseconds=1)
#: Event times are ``(when - EPOCH) // _MS``: exact, floored.  ``int(when.timestamp() * 1000)``,
#: the float product truncated, came out a millisecond low for a fifth of the times before
#: 2004-01-10, and a millisecond high (towards zero) for nearly all before 1970; at the same cost.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The integers MessagePack (state) holds.
_INT_MIN = -(1 << 63)
_UINT_MAX = (1 << 64) - 1
#: Event times, window sizes, steps and lateness at most this far from 0 (2**62 ms, about 146
#: million years): then the watermark and every window bound fit the 64 bits state holds.
MAX_TIME_MS = 1 << 62
#: Tumbling or hopping windows a key may have open at once (``(size + lateness) / step``, rounded
#: up): each event updates ``size / step`` of them and the key's entry holds them all (a day
#: hopping by a second: 86,400 windows, 379 ms an event and a 2.9 MB entry; by a millisecond,
#: 86 million).
MAX_OPEN_WINDOWS = 10_000
#: A tumbling or hopping window's distinct count keeping fewer values than this (its share of
#: ``max_events``) is warned of when the aggregate is made: rules may well count past it.
DISTINCT_SHARE_LOW = 1_000


# (``SupportsIndex``, not ``int``: compiled, the annotation is checked before the code runs, and a
# float or a numpy integer got "str object expected; got float", naming neither the parameter nor
# what to pass.  A protocol is not checked: these reach the code, which names them.)
def duration_ms(value: timedelta | str | SupportsIndex, what: str = "duration") -> int:
    """Milliseconds of a ``timedelta``, an integer (ms; numpy's too) or a string like ``"10m"``,
    ``"30s"``, ``"500ms"``; ``what`` (``"sliding window size"``) is what errors name."""
    # (As an object: narrowed by mypy, what is left after the checks was taken for a bool, which
    # compiled code then checked the float against.)
    given: object = value
    if isinstance(given, timedelta):
        # Integer division, not total_seconds() * 1000: the float product truncated 1.001 s to 1000 ms.
        return given // _MS
    if type(given) is int:
        return given
    if isinstance(given, str):
        match = _DURATION.match(given)
        if not match:
            msg = f"{what}: expected a duration like '10m', '30s', '500ms', '2h' or '1d'; got {given!r}"
            raise ValueError(msg)
        return int(match.group(1)) * _UNITS[match.group(2)]
    if type(given) is not bool and isinstance(given, SupportsIndex):
        return operator.index(given)  # (a numpy integer)
    # A float is refused, not rounded: 1.5 may mean seconds or minutes as well as ms.
    msg = (
        f"{what}: expected a timedelta, a string like '10m' or '500ms', or an integer of "
        f"milliseconds; got {type(given).__name__} {given!r}"
    )
    raise TypeError(msg)


#: Values state keeps as they are; others are tried with the state's encoder when they come.
_KEPT = (int, float, str, bool, type(None))
_state_encode = msgspec.msgpack.Encoder().encode
_state_decode = msgspec.msgpack.Decoder().decode


def _plain(key: str, value: Any) -> Any:
    """``value`` as state gives it back after a restart, so that a window answers the same
    before and after one.

    A numpy scalar (an amount computed with numpy) is the Python number it is, and a ``Decimal``
    a float (MessagePack cannot encode numpy's, and every checkpoint failed; it encodes a Decimal
    as text, which came back a string: a Sum of Decimals raised after a restart).  Any other
    value MessagePack encodes but reads back as another type (a UUID or a naive datetime as its
    text, a set as a list) is what it reads back (the same UUID counted distinct twice across a
    restart).  Tuples (whose items are made plain too) and values that come back equal are kept."""
    if type(value).__module__ == "numpy":
        try:
            return value.item()
        except ValueError:
            msg = f"window value for key {key!r} is a numpy array of shape {value.shape}; expected one value"
            raise ValueError(msg) from None
    if type(value) is tuple:
        return tuple(_plain(key, v) for v in value)
    if type(value) is str:
        return _utf8(key, value)
    if isinstance(value, Decimal):
        try:
            return float(value)
        except ValueError:  # a signalling NaN
            msg = f"window value for key {key!r}: Decimal {value} is not a number; expected an amount"
            raise ValueError(msg) from None
    if not isinstance(value, _KEPT):
        try:
            back = _state_decode(_state_encode(value))
        except (TypeError, ValueError, OverflowError) as exc:
            # Kept, it failed every checkpoint (MessagePack), and the restart's again.
            msg = (
                f"window value for key {key!r}: a {type(value).__name__} cannot be kept in state "
                f"({exc}); pass a number, a string, or a tuple, list or dict of them"
            )
            raise ValueError(msg) from None
        if type(back) is not type(value) or back != value:
            return back
    return value


def _beyond_64_bits(key: str, value: int) -> NoReturn:
    # State is MessagePack, which stops at 64 bits: refused here, in the operator, not at the
    # checkpoint (where it failed every checkpoint, and the restart again).
    msg = (
        f"window value {value} for key {key!r} is an integer beyond 64 bits; pass it as a "
        "float (to sum it) or a string (to count it distinct)"
    )
    raise ValueError(msg)


def _shown(value: Any) -> str:
    """``value`` as errors show it: its repr, cut short (a value may be a long attacker's string)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _utf8(key: str, value: str) -> str:
    """``value`` if state can encode it (see :func:`lone_surrogate`)."""
    problem = lone_surrogate(value)
    if problem is not None:
        msg = f"window value for key {key!r}: the text has {problem}; expected UTF-8 text, which state keeps"
        raise ValueError(msg)
    return value


def to_ms(when: object) -> int:
    """Event time in ms since the epoch, floored (datetimes must be timezone-aware; integers,
    numpy's too, are taken as milliseconds already)."""
    if type(when) is int:
        return when
    if type(when) is bool:
        msg = f"event time: expected a UTC-aware datetime or epoch milliseconds (an integer); got {when!r}"
        raise TypeError(msg)
    if isinstance(when, datetime):
        if when.tzinfo is None:
            msg = f"event times must be timezone-aware (UTC); got naive {when.isoformat()}"
            raise ValueError(msg)
        return (when - EPOCH) // _MS
    if isinstance(when, SupportsIndex):
        return operator.index(when)
    msg = (
        "event time: expected a UTC-aware datetime or epoch milliseconds (an integer); got "
        f"{type(when).__name__} {when!r}"
    )
    raise TypeError(msg)


@dataclass(frozen=True)
class Window:
    kind: WindowKind
    size_ms: int
    step_ms: int
    lateness_ms: int = 0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS_OF_WINDOW:
            # ("Sliding" made a tumbling window, without a word.)
            msg = f"window kind: expected 'tumbling', 'hopping' or 'sliding'; got {self.kind!r}"
            raise ValueError(msg)
        if self.size_ms <= 0 or self.step_ms <= 0 or self.lateness_ms < 0:
            msg = f"{self.kind} window: size and step must be > 0 and lateness >= 0; got {self}"
            raise ValueError(msg)
        if max(self.size_ms, self.step_ms, self.lateness_ms) > MAX_TIME_MS:
            msg = (
                f"{self.kind} window: size, step and lateness must be at most {MAX_TIME_MS:,} ms "
                f"(2**62); got {self}"
            )
            raise ValueError(msg)
        if self.kind == "hopping" and self.step_ms > self.size_ms:
            msg = f"hopping window: step ({self.step_ms} ms) must not exceed size ({self.size_ms} ms)"
            raise ValueError(msg)
        opened = self.open_at_once
        if self.kind != "sliding" and opened > MAX_OPEN_WINDOWS:
            how = (
                "use less lateness, or a longer window"
                if self.kind == "tumbling"
                else "use a longer step or less lateness"
            )
            msg = (
                f"{self.kind} window: a key would have {opened:,} windows open at once ((size + "
                f"lateness) / step), all in its one store entry, each event updating "
                f"{-(-self.size_ms // self.step_ms):,} of them; at most {MAX_OPEN_WINDOWS:,}: {how}, "
                f"or a sliding window; got {self}"
            )
            raise ValueError(msg)

    @property
    def open_at_once(self) -> int:
        """Tumbling or hopping windows a key can have open at once: ``(size + lateness) / step``,
        rounded up."""
        return -(-(self.size_ms + self.lateness_ms) // self.step_ms)

    # (Durations as ``duration_ms`` takes them: see there for SupportsIndex.)
    @classmethod
    def tumbling(
        cls, size: timedelta | str | SupportsIndex, lateness: timedelta | str | SupportsIndex = 0
    ) -> Window:
        ms = duration_ms(size, "tumbling window size")
        return cls("tumbling", ms, ms, duration_ms(lateness, "tumbling window lateness"))

    @classmethod
    def hopping(
        cls,
        size: timedelta | str | SupportsIndex,
        step: timedelta | str | SupportsIndex,
        lateness: timedelta | str | SupportsIndex = 0,
    ) -> Window:
        return cls(
            "hopping",
            duration_ms(size, "hopping window size"),
            duration_ms(step, "hopping window step"),
            duration_ms(lateness, "hopping window lateness"),
        )

    @classmethod
    def sliding(
        cls, size: timedelta | str | SupportsIndex, lateness: timedelta | str | SupportsIndex = 0
    ) -> Window:
        ms = duration_ms(size, "sliding window size")
        return cls("sliding", ms, ms, duration_ms(lateness, "sliding window lateness"))

    def starts(self, t: int) -> list[int]:
        """Starts of the tumbling/hopping windows containing ``t``, oldest first."""
        last = t - t % self.step_ms
        first = last - ((self.size_ms - 1) // self.step_ms) * self.step_ms
        return [s for s in range(first, last + 1, self.step_ms) if s <= t < s + self.size_ms]


# ---------------------------------------------------------------------------- aggregations


# Compiled (see vigil.compiled), yet open to aggregations written in plain Python.
@mypyc_attr(allow_interpreted_subclasses=True)
class Aggregation(ABC):
    """An aggregation: an accumulator built with ``initial``/``add``, read with ``result``.

    Accumulators must be msgspec-encodable (they live in the state store).
    """

    @abstractmethod
    def initial(self) -> Any: ...

    @abstractmethod
    def add(self, acc: Any, value: Any) -> Any: ...

    def result(self, acc: Any) -> Any:
        return acc

    def over(self, values: list[Any]) -> Any:
        """The result over a whole list of values (sliding windows recompute; override when faster)."""
        acc = self.initial()
        for value in values:
            acc = self.add(acc, value)
        return self.result(acc)


class Count(Aggregation):
    def initial(self) -> int:
        return 0

    def add(self, acc: int, value: Any) -> int:
        return acc + 1

    def over(self, values: list[Any]) -> int:
        return len(values)


class Sum(Aggregation):
    def initial(self) -> float:
        return 0.0

    def add(self, acc: Any, value: Any) -> float:
        return float(acc) + float(value)

    def over(self, values: list[Any]) -> float:
        return _fsum(values)


class Min(Aggregation):
    def initial(self) -> float | None:
        return None

    def add(self, acc: float | None, value: Any) -> float:
        return float(value) if acc is None or value < acc else acc

    def over(self, values: list[Any]) -> float:
        # The builtin compares as ``add`` does, in C.  ``+ 0.0``: -0.0 and 0.0 are equal, and
        # which of them came first must not show (running aggregates do not know).
        return float(min(values)) + 0.0


class Max(Aggregation):
    def initial(self) -> float | None:
        return None

    def add(self, acc: float | None, value: Any) -> float:
        return float(value) if acc is None or value > acc else acc

    def over(self, values: list[Any]) -> float:
        return float(max(values)) + 0.0


class DistinctCount(Aggregation):
    """Distinct values (kept as a dict: msgpack has no sets)."""

    def initial(self) -> dict[Any, int]:
        return {}

    def add(self, acc: dict[Any, int], value: Any) -> dict[Any, int]:
        # A list or dict value as the tuple ``over`` counts it as (a dict cannot hold it: the
        # operator failed, and the restart again).  MessagePack keeps tuple keys as tuples.
        acc[_hashable(value)] = 1
        return acc

    def result(self, acc: dict[Any, int]) -> int:
        return len(acc)

    def over(self, values: list[Any]) -> int:
        try:
            return len(set(values))
        except TypeError:  # tuples come back from state as lists (MessagePack has no tuples)
            return len({_hashable(v) for v in values})


def _fsum(values: list[Any]) -> float:
    """The sum of ``values`` as floats, correctly rounded (``math.fsum``): the same in whatever
    order the events came, and the same as a running exact sum (:class:`_Running`), so a
    sliding window's answer does not depend on which of the two computed it.  Where ``fsum``
    gives up (an overflow on the way, or inf plus -inf), the exact sum decides as IEEE
    arithmetic would: an infinity, or NaN."""
    try:
        return math.fsum(values) + 0.0  # (a sum of -0.0s is 0.0, as the exact sum says)
    except (OverflowError, ValueError):
        exact = _ExactSum()
        for value in values:
            if not isinstance(value, (int, float)):  # as fsum refuses it (float() took "1")
                msg = f"must be real number, not {type(value).__name__}"
                raise TypeError(msg) from None
            exact.add(float(value))
        return exact.result()


class _ExactSum:
    """A sum of floats kept exactly, so values can be taken out again without rounding errors
    piling up; infinities and NaNs are counted apart.

    Finite floats are integer multiples of a power of two: the sum is ``total / 2**shift``,
    ``shift`` the largest any value needed so far (about 50 bits for amounts with cents, so
    the integer stays small; at most 1,074)."""

    def __init__(self) -> None:
        self.total = 0
        self.shift = 0
        self.pinf = 0
        self.ninf = 0
        self.nan = 0

    def _scaled(self, x: float) -> int:
        n, d = x.as_integer_ratio()
        bits = d.bit_length() - 1
        if bits > self.shift:
            self.total <<= bits - self.shift
            self.shift = bits
        return n << (self.shift - bits)

    def add(self, x: float) -> None:
        if x - x == 0.0:  # finite
            scaled = self._scaled(x)  # first: it may rescale the total
            self.total += scaled
        elif x != x:
            self.nan += 1
        elif x > 0:
            self.pinf += 1
        else:
            self.ninf += 1

    def remove(self, x: float) -> None:
        if x - x == 0.0:
            scaled = self._scaled(x)
            self.total -= scaled
        elif x != x:
            self.nan -= 1
        elif x > 0:
            self.pinf -= 1
        else:
            self.ninf -= 1

    def result(self) -> float:
        if self.nan or (self.pinf and self.ninf):
            return math.nan
        if self.pinf:
            return math.inf
        if self.ninf:
            return -math.inf
        try:
            return self.total / (1 << self.shift)  # int division rounds correctly, as fsum does
        except OverflowError:
            return math.inf if self.total > 0 else -math.inf


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


#: Aggregations by name, for rules that name them in YAML (explicit: add new ones here).
AGGREGATIONS: dict[str, type[Aggregation]] = {
    "count": Count,
    "sum": Sum,
    "min": Min,
    "max": Max,
    "distinct_count": DistinctCount,
}


# ---------------------------------------------------------------------------- quiet keys

#: Keys a walk looks at for every key seen for the first time: more than one, so the walk
#: outpaces the keys being created and the dead ones (seen once, then quiet) stay fewer than
#: the live ones (with r keys looked at per new key, dead <= live / (r - 1)).
WALK_PER_NEW_KEY = 2
#: And one key per this many updates, so every key is looked at now and then even when no new
#: keys come.
WALK_EVERY_UPDATES = 64
#: Keys per walk step (one RocksDB iterator): a step costs tens of microseconds, rarely.
WALK_STEP = 64


class QuietKeys:
    """Deletes the state of keys that went quiet, a step of a walk over the store at a time.

    Keys are deleted when their owner says they are expired (at the partition's watermark), so
    an operator whose state is touched only when its key comes again (windows, joins) does not
    keep every key it ever saw.  :meth:`counted` is called per update; when it says a step is
    due, :meth:`step` looks at the next ``step_keys`` keys of the store's partition under
    ``prefixes`` (each in turn), resuming where the last step on that partition ended and
    starting over at the end.  Only keys under ``prefixes`` are looked at: they must be the
    owner's alone (one windowed aggregate per store).  ``every`` and ``step_keys`` are for tests
    that want a step at every update."""

    def __init__(self, *prefixes: str, step_keys: int = WALK_STEP, every: int = WALK_EVERY_UPDATES) -> None:
        if not prefixes or step_keys < 1 or every < 1:
            msg = (
                "quiet keys: expected prefixes, step_keys >= 1 and every >= 1; "
                f"got {prefixes}, {step_keys}, {every}"
            )
            raise ValueError(msg)
        self.prefixes = prefixes
        self.step_keys = step_keys
        self.every = every
        #: Keys deleted so far.
        self.deleted = 0
        self._credit = 0
        self._updates = 0
        #: Where the walk is, per store partition (the State objects): the prefix's index and the
        #: last key looked at under it.
        self._cursors: dict[State, tuple[int, str | None]] = {}

    def counted(self, new: bool) -> bool:
        """Count one update (``new``: of a key not in the store); True when a step is due."""
        self._updates += 1
        if new:
            self._credit += WALK_PER_NEW_KEY
        if self._updates >= self.every:
            self._updates = 0
            self._credit += 1
        if self._credit >= self.step_keys:
            self._credit -= self.step_keys
            return True
        return False

    def step(self, state: State, expired: Callable[[Any], bool]) -> int:
        """Look at the next keys of ``state``'s walk; delete those ``expired`` says are (it is
        given the stored value); returns how many went."""
        cursor = self._cursors.get(state)
        if cursor is None:
            # A store partition not seen before (an assignment): forget the closed ones, whose
            # stores (and caches) would otherwise stay in memory.
            self._cursors = {s: c for s, c in self._cursors.items() if not getattr(s, "closed", False)}
            cursor = (0, None)
        index, after = cursor
        entries = state.walk(self.prefixes[index], after, self.step_keys)
        gone = 0
        for key, value in entries:
            if expired(value):
                state.delete(key)
                gone += 1
        if len(entries) >= self.step_keys:
            self._cursors[state] = (index, entries[-1][0])
        else:
            self._cursors[state] = ((index + 1) % len(self.prefixes), None)
        self.deleted += gone
        return gone


# ---------------------------------------------------------------------------- the helper


_Over = Callable[[list[Any]], Any]


def _fast_over(agg: Aggregation) -> _Over:
    """``agg.over``, or for the built-in count and sum the function it amounts to (a Python
    method call per event and aggregation is a tenth of a sliding update)."""
    if type(agg) is Count:
        return len
    if type(agg) is Sum:
        return _fsum
    return agg.over


def _results_of(over: Sequence[tuple[str, _Over]]) -> Callable[[list[Any]], dict[str, Any]]:
    """One function computing every aggregation's result over a list of values.

    Sliding windows call it once per event: for up to three aggregations it is a dict display,
    half the cost of a comprehension over ``(name, over)`` pairs (measured 0.18 vs 0.39 µs)."""
    if len(over) == 1:
        ((n0, o0),) = over
        return lambda v: {n0: o0(v)}
    if len(over) == 2:
        (n0, o0), (n1, o1) = over
        return lambda v: {n0: o0(v), n1: o1(v)}
    if len(over) == 3:
        (n0, o0), (n1, o1), (n2, o2) = over
        return lambda v: {n0: o0(v), n1: o1(v), n2: o2(v)}
    return lambda v: {name: fn(v) for name, fn in over}


# ---------------------------------------------------------------------------- long windows

#: Events a key's sliding window keeps: past that, its oldest make room.  All of a key's
#: events are one store entry, which goes to the changelog whole at a checkpoint; unbounded, a
#: flooded key's entry outgrew the changelog's 16 MB record, and every checkpoint failed, the
#: restart's too.  100,000 events of numbers are under 2 MB; of other values, ``MAX_ENTRY_BYTES``
#: bounds them too.  The same bound holds a key's distinct values in tumbling and hopping
#: windows, a dict per window and ``DistinctCount`` in the same entry (each its share, see the
#: module docstring).
MAX_EVENTS = 100_000
#: A distinct value longer than this, encoded, is held as a digest by a tumbling or hopping
#: window's distinct count, and stored as one by a sliding window whose aggregations only count
#: or compare values (``Count``, ``DistinctCount``): ``MAX_EVENTS`` of them then take under 12 MB.
#: A 66-character transaction hash, an e-mail address or a user agent of up to 96 bytes is kept
#: as it is.
DISTINCT_BYTES = 96
_DIGEST_MARK = "\x00#"
#: A key's sliding window, one store entry, is kept within this many bytes, estimated as
#: ``_EVENT_BYTES`` an event and the encoded length of each value that is not a number: past
#: that, its oldest events make room, as past ``max_events`` (a window summing numbers reaches
#: ``max_events`` first, one counting distinct strings too: long ones are digests).  Under the
#: changelog's record (16 MB, ``changelog.STATE_RECORD_MAX_BYTES``), with room for the key: 180-byte
#: user names sent from one IP, stored as they came, made a 20 MB entry, and every checkpoint
#: failed, the restart's too (found in review).
MAX_ENTRY_BYTES = 12 << 20
#: An event's bytes in a sliding window's entry at most: its time and a number, 9 bytes each in
#: MessagePack (a string's header, up to 5, is within the 9 of the number it replaces).
_EVENT_BYTES = 18


def _value_bytes(value: Any) -> int:
    """What a sliding window's value takes in its entry beyond ``_EVENT_BYTES``: nothing for a
    number, its encoded length for anything else (the same after a restart: text stays text, a
    tuple comes back a list, which encodes alike)."""
    kind = type(value)
    if kind is float or kind is int or kind is bool or value is None:
        return 0
    if kind is str:
        return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    return len(_state_encode(value))


def _distinct_key(value: Any) -> Any:
    """How a tumbling or hopping window's distinct count holds ``value``: as ``DistinctCount``
    does, or a digest of its encoding when that is longer than ``DISTINCT_BYTES`` (an event's
    strings are attacker-controlled: 100,000 distinct 200-character user agents were 19 MB).

    Values equal in Python are held alike: a tuple is encoded with its numbers as the equal
    integer where there is one (``1``, ``1.0`` and ``True`` encode differently).  A string that
    looks like a digest is held as a digest of itself, so that it cannot pass for another value."""
    held = _hashable(value)
    kind = type(held)
    if kind is str:
        if len(held) * 4 <= DISTINCT_BYTES:
            return held  # (at most 4 bytes a character: short, whatever they are; a digest is longer)
        raw = b"s" + held.encode("utf-8", "surrogatepass")
        if len(raw) <= DISTINCT_BYTES + 1 and not held.startswith(_DIGEST_MARK):
            return held
    elif kind is bytes or kind is tuple:
        raw = b"b" + held if kind is bytes else b"t" + _state_encode(_canonical(held))
        if len(raw) <= DISTINCT_BYTES + 1:
            return held
    else:
        return held  # numbers, booleans, None: short
    return _DIGEST_MARK + hashlib.blake2b(raw, digest_size=16).hexdigest()


def _canonical(value: Any) -> Any:
    """``value`` with every number that equals an integer as that integer, and dicts' items in
    order, all the way down (what is equal in Python then encodes alike)."""
    kind = type(value)
    if kind is bool:
        return int(value)
    if kind is float:
        if value.is_integer() and -(1 << 63) <= value < (1 << 63):
            return int(value)
        return value
    if kind is tuple or kind is list:
        return tuple(_canonical(v) for v in value)
    if kind is dict:
        return tuple(sorted((_canonical(k), _canonical(v)) for k, v in value.items()))
    return value


#: A key's sliding window is aggregated incrementally (:class:`_Running`, in memory beside the
#: stored list) once the key holds this many events: below, recomputing over the window's
#: slice in C is cheaper.  It stays so until the key holds fewer than half of them (so a key
#: hovering at the threshold is not built again and again).
RUNNING_FROM = 128
#: Keys aggregated incrementally at once, per windowed aggregate.  One more is let in when the
#: least recently updated has not been updated for four times this many long-window updates:
#: more hot keys than this taking turns would otherwise be built again at every event, ten
#: times the cost of recomputing over a slice.
RUNNING_KEYS = 64

_COUNT, _SUM, _MIN, _MAX, _DISTINCT = range(5)
_KINDS: dict[type, int] = {Count: _COUNT, Sum: _SUM, Min: _MIN, Max: _MAX, DistinctCount: _DISTINCT}


def _orderable(value: Any) -> bool:
    """Whether running sums, minima and maxima take ``value`` (NaN would make min and max depend
    on the order of the values)."""
    t = type(value)
    return t is int or t is bool or (t is float and value == value)


class _Running:
    """The aggregates over a key's newest window, ``(times[-1] - size, times[-1]]``, kept in
    step with the stored ``[times, values]`` as events come: an in-order event's answer in
    O(log n), where recomputing it over the window was O(n) (a key with 20,000 events in its
    window took 9.4 s for those 20,000 events).

    ``lo`` is the index of the window's first event: the aggregates are over ``values[lo:]``.
    Counts are ``len(times) - lo``, sums exact (:class:`_ExactSum`), minima and maxima heaps
    whose removed values are dropped when they reach the top, distinct counts a count per
    value.  Values sums, minima and maxima cannot take (NaN, strings) are counted in ``bad``
    instead: while any is in the window, the answer is recomputed over it, as before.  Built
    from the stored list, not saved: it is rebuilt whenever the list is not the one it was
    built on (a restore, an undo, an eviction from the store's cache) or the state's generation
    moved."""

    def __init__(
        self,
        names: list[tuple[str, int]],
        state: State,
        stored: list[Any],
        generation: int,
        size: int,
    ) -> None:
        self.names = names
        #: The state the list is in, weakly: a closed or dropped partition's entry is let go.
        # (Weakly only where that is safe: a weak reference to a compiled RocksState dangles
        # once it goes, see vigil.stream.owners; held, it is let go when idle or closed.)
        self.owner: Callable[[], State | None] = state_ref(state)
        self.stored = stored
        self.generation = generation
        self.size = size
        kinds = {kind for _, kind in names}
        self.orderable = bool(kinds & {_SUM, _MIN, _MAX})
        self.has_sum = _SUM in kinds
        self.has_min = _MIN in kinds
        self.has_max = _MAX in kinds
        self.has_distinct = _DISTINCT in kinds
        self.sum = _ExactSum()
        self.mins: list[Any] = []
        self.maxs: list[Any] = []
        self.gone_min: dict[Any, int] = {}
        self.gone_max: dict[Any, int] = {}
        self.distinct: dict[Any, int] = {}
        self.bad = 0
        self.used = 0
        times: list[Any] = stored[0]
        values: list[Any] = stored[1]
        #: The stored list's times and values (changed in place, never replaced).
        self.times = times
        self.values = values
        self.lo = bisect_right(times, times[-1] - size)
        inside = values[self.lo :]
        if self.has_distinct:
            counts = self.distinct
            for value in inside:
                h = _hashable(value)
                counts[h] = counts.get(h, 0) + 1
        if not self.orderable:
            return
        good = [v for v in inside if _orderable(v)]
        self.bad = len(inside) - len(good)
        if self.has_sum:
            for value in good:
                self.sum.add(float(value))
        self._heaps(good)

    def add(self, value: Any) -> None:
        if self.has_distinct:
            h = _hashable(value)
            self.distinct[h] = self.distinct.get(h, 0) + 1
        if not self.orderable:
            return
        if not _orderable(value):
            self.bad += 1
            return
        if self.has_sum:
            self.sum.add(float(value))
        if self.has_min:
            heapq.heappush(self.mins, value)
        if self.has_max:
            heapq.heappush(self.maxs, -value)
        # Taken-out values wait in the heaps until they reach the top, which they may never do
        # while answers are not read from them (a NaN in the window, out-of-order events): past
        # twice the window's events, the heaps are built again from it (amortised O(1)).
        limit = 2 * self.live() + 32
        if len(self.mins) > limit or len(self.maxs) > limit:
            self._heaps([v for v in self.values[self.lo :] if _orderable(v)])

    def _heaps(self, good: list[Any]) -> None:
        """The min and max heaps built afresh from the window's orderable values."""
        if self.has_min:
            self.mins = list(good)
            heapq.heapify(self.mins)
            self.gone_min = {}
        if self.has_max:
            self.maxs = [-v for v in good]
            heapq.heapify(self.maxs)
            self.gone_max = {}

    def live(self) -> int:
        """Events in the key's newest window (the aggregates' values)."""
        return len(self.times) - self.lo

    def _remove(self, value: Any) -> None:
        if self.has_distinct:
            h = _hashable(value)
            left = self.distinct[h] - 1
            if left:
                self.distinct[h] = left
            else:
                del self.distinct[h]
        if not self.orderable:
            return
        if not _orderable(value):
            self.bad -= 1
            return
        if self.has_sum:
            self.sum.remove(float(value))
        if self.has_min:
            self.gone_min[value] = self.gone_min.get(value, 0) + 1
        if self.has_max:
            self.gone_max[-value] = self.gone_max.get(-value, 0) + 1

    def drop_front(self, k: int) -> None:
        """The stored list's first ``k`` events are about to go (expired, or evicted)."""
        if k > self.lo:
            values = self.values
            for i in range(self.lo, k):
                self._remove(values[i])
            self.lo = k
        self.lo -= k

    def advance(self, end: int) -> None:
        """Take out the events at or before ``end`` (the window moves to ``(end, end + size]``)."""
        times = self.times
        values = self.values
        lo = self.lo
        n = len(times)
        while lo < n and times[lo] <= end:
            self._remove(values[lo])
            lo += 1
        self.lo = lo

    def results(self) -> dict[str, Any]:
        live = self.live()
        out: dict[str, Any] = {}
        for name, kind in self.names:
            if kind == _COUNT:
                out[name] = live
            elif kind == _SUM:
                out[name] = self.sum.result()
            elif kind == _MIN:
                out[name] = float(_top(self.mins, self.gone_min)) + 0.0
            elif kind == _MAX:
                out[name] = float(-_top(self.maxs, self.gone_max)) + 0.0
            else:
                out[name] = len(self.distinct)
        return out


def _top(heap: list[Any], gone: dict[Any, int]) -> Any:
    """The smallest value in ``heap`` not taken out (``gone`` counts the values taken out)."""
    while gone:
        top = heap[0]
        left = gone.get(top, 0)
        if not left:
            break
        heapq.heappop(heap)
        if left == 1:
            del gone[top]
        else:
            gone[top] = left - 1
    return heap[0]


class WindowValue(NamedTuple):
    """One window's aggregates after an update: ``[start_ms, end_ms)`` (sliding: ``(start, end]``)."""

    start_ms: int
    end_ms: int
    values: dict[str, Any]


#: Builds a WindowValue from a tuple without the NamedTuple's Python-level ``__new__`` (0.2 µs).
_window_value = tuple.__new__


class WindowedAggregate:
    """Keyed event-time window aggregation stored in ``store`` (see the module docstring).

    ``max_events`` bounds a key's sliding window (the oldest make room) and, shared out, the
    distinct values its tumbling or hopping windows hold (new ones are not kept); ``running_from`` and
    ``running_keys`` say from how many events a key's sliding window is aggregated
    incrementally, and for how many keys at once (tests set them low to reach those paths)."""

    def __init__(
        self,
        store: StoreSpec,
        window: Window,
        aggregations: Mapping[str, Aggregation],
        *,
        quiet: QuietKeys | None = None,
        max_events: int = MAX_EVENTS,
        running_from: int = RUNNING_FROM,
        running_keys: int = RUNNING_KEYS,
    ) -> None:
        if max_events < 2 or running_from < 2 or running_keys < 1:
            msg = (
                f"windowed aggregate on store {store.id!r}: expected max_events >= 2, "
                f"running_from >= 2 and running_keys >= 1; got {max_events}, {running_from} and "
                f"{running_keys}"
            )
            raise ValueError(msg)
        if not aggregations:
            msg = f"windowed aggregate on store {store.id!r}: expected at least one aggregation"
            raise ValueError(msg)
        self.store = store
        self.window = window
        self.aggregations = dict(aggregations)
        self._aggs = list(self.aggregations.items())
        self._over = [(name, _fast_over(agg)) for name, agg in self._aggs]
        self._results = _results_of(self._over)
        self._lateness = window.lateness_ms
        self._sliding = window.kind == "sliding"
        self._size = window.size_ms
        #: Deletes the windows of keys that went quiet (see the module docstring); the store holds
        #: one aggregate's windows (the walk takes every ``w:`` key for its own).
        self.quiet = quiet if quiet is not None else QuietKeys(_KEY_PREFIX)
        #: Sliding windows of many events are aggregated incrementally when every aggregation
        #: is a built-in one (an aggregation written elsewhere has no way to take a value out).
        kinds = [(name, _KINDS.get(type(agg), -1)) for name, agg in self._aggs]
        self._running_names = kinds if all(kind >= 0 for _, kind in kinds) else None
        #: The keys aggregated incrementally, least recently updated first, by (id of the
        #: state, key): no reference to the state, whose store and caches a closed partition's
        #: entry would otherwise keep (an entry holds its key's stored list only).
        self._runs: dict[tuple[int, str], _Running] = {}
        self._tick = 0
        self._decided_at = -(1 << 62)
        self._running_from = running_from
        self._running_keep = running_from // 2
        self._running_keys = running_keys
        self._running_idle = 4 * running_keys
        self._max_events = max_events
        #: A sliding window's events at most: ``max_events``, or fewer when that many would not
        #: fit ``MAX_ENTRY_BYTES`` even as numbers.
        self._max_stored = min(max_events, MAX_ENTRY_BYTES // _EVENT_BYTES)
        #: Events let go from flooded keys' sliding windows to keep them within ``max_events``
        #: and ``MAX_ENTRY_BYTES``.
        self.evicted = 0
        #: Aggregations that take numbers only (the rest: any value), and those written elsewhere
        #: (tried on a value before it changes anything, see ``_checked``).
        self._numeric = [(name, agg) for name, agg in self._aggs if type(agg) in (Sum, Min, Max)]
        self._others = [(name, agg) for name, agg in self._aggs if type(agg) not in _KINDS]
        #: A sliding window that only counts and compares values stores a long one as a digest
        #: (as a tumbling window's distinct count holds it, see DISTINCT_BYTES).
        self._digest = self._sliding and all(type(agg) in (Count, DistinctCount) for _, agg in self._aggs)
        #: This aggregate's hold on the store partitions it updates (see ``_claim``), and the
        #: last one it was checked for (held: see ``_claim``).
        steps = f", step {window.step_ms:,} ms" if window.kind == "hopping" else ""
        self._user = StoreUser(
            f"a windowed aggregate ({window.kind}, size {window.size_ms:,} ms{steps}, lateness "
            f"{window.lateness_ms:,} ms: {', '.join(self.aggregations)})"
        )
        self._claimed: State | None = None
        #: The built-in distinct counts, by position, and how many distinct values each keeps
        #: per tumbling or hopping window: its share of ``max_events`` (see the module docstring).
        self._distinct = [i for i, (_, agg) in enumerate(self._aggs) if type(agg) is DistinctCount]
        self._distinct_at = frozenset(self._distinct)
        opened = window.open_at_once
        self.distinct_share = max_events // (opened * max(1, len(self._distinct)))
        if self._distinct and window.kind != "sliding" and self.distinct_share < 1:
            msg = (
                f"windowed aggregate on store {store.id!r}: a key can have {opened:,} windows open "
                f"at once ((size + lateness) / step), each with {len(self._distinct)} distinct "
                f"count(s), more than max_events ({max_events:,}) can share (a key's windows are "
                "one store entry); raise max_events, or use a longer step or less lateness"
            )
            raise ValueError(msg)
        if self._distinct and window.kind != "sliding" and self.distinct_share < DISTINCT_SHARE_LOW:
            # (Capped silently, a rule counting past the share never fired: a day hopping by a
            # minute keeps 69 values a window, found in review.)
            log.warning(
                "windowed aggregate on store %r: each window's distinct count keeps at most %d "
                "values (max_events %d over %d windows open at once and %d distinct count(s)), and "
                "counts no further: raise max_events, or use a longer step or less lateness",
                store.id,
                self.distinct_share,
                max_events,
                opened,
                len(self._distinct),
            )
        #: Values a tumbling or hopping window's distinct count did not keep, being at its share
        #: (once per window and distinct count); the first is warned of.
        self.capped = 0
        #: Sliding answers given by running aggregates rather than by recomputing, and running
        #: aggregates built (figures for tests and benchmarks).
        self.running_answers = 0
        self.built = 0

    @property
    def running_now(self) -> int:
        """Keys whose running aggregates are held now."""
        return len(self._runs)

    # -- watermark

    def watermark(self, state: State) -> int | None:
        """The partition's watermark in ms (None before the first event)."""
        wm: int | None = state.get(_WATERMARK_KEY)
        return wm

    # -- updates

    def update(
        self, state: State, key: str, when: datetime | int, value: Any = 1
    ) -> list[WindowValue] | None:
        """Add one event; the windows it fell into with their aggregates, or ``None`` if it is late."""
        # The hot path of every windowed rule: called once per event, so it avoids helper calls,
        # re-reads of attributes and per-event allocations beyond the result itself.
        if isinstance(when, datetime) and when.tzinfo is not None:
            t = (when - EPOCH) // _MS  # inline to_ms (any datetime is within MAX_TIME_MS)
        else:
            t = to_ms(when)  # raises for naive datetimes, and names what is not a time
            if not -MAX_TIME_MS <= t <= MAX_TIME_MS:
                # Kept as the watermark, it failed every checkpoint (MessagePack stops at 64 bits),
                # and the restarted process the same way on the same input.
                msg = (
                    f"event time {t} ms for key {key!r} is beyond {MAX_TIME_MS:,} ms (2**62, about "
                    "146 million years) from the epoch"
                )
                raise ValueError(msg)
        # Every check of the value comes before anything changes: an update that raised had moved
        # the watermark, and a sliding window had stored the event, so that every later event of
        # the key raised too (found in review).  A number every built-in aggregation takes.
        vtype = type(value)
        weight = 0  # (a sliding window's value: its bytes beyond a number's, see MAX_ENTRY_BYTES)
        if vtype is not float:
            if vtype is not int:
                value, weight = self._entered(key, value)
            elif not _INT_MIN <= value <= _UINT_MAX:
                _beyond_64_bits(key, value)
        if state is not self._claimed:
            self._claim(state)
        get = state.get
        wm: int | None = get(_WATERMARK_KEY)
        if wm is None or t - self._lateness > wm:
            wm = t - self._lateness
            state.set(_WATERMARK_KEY, wm)
        elif t < wm and (self._sliding or self.window.starts(t)[-1] + self._size <= wm):
            # Late: a sliding window ends at its event; a fixed one is open until the watermark
            # reaches its end (the newest window holding t ends last).
            return None
        if not self._sliding:
            return self._update_fixed(state, _KEY_PREFIX + key, t, value, wm)
        # Sliding (inline: a call per event costs as much as a line of it).  Stored as
        # [times, values], sorted by time, and changed in place: expiry and the window are a
        # bisect and a slice each; in-order events (the usual case) append.  A key holding values
        # other than numbers has a third item, their bytes (see MAX_ENTRY_BYTES).
        size = self._size
        skey = _KEY_PREFIX + key
        stored: list[Any] | None = get(skey)
        if self.quiet.counted(stored is None):
            self._walk_step(state, wm)
        if stored is None:
            values: list[Any] = [value]
            state.set(skey, [[t], values, weight] if weight else [[t], values])
            return [_window_value(WindowValue, (t - size, t, self._results(values)))]
        times: list[Any] = stored[0]
        values = stored[1]
        if len(times) >= self._running_keep and self._running_names is not None:
            out = self._update_long(self._running_names, state, skey, stored, t, value, wm, weight)
            return [_window_value(WindowValue, (t - size, t, out))]
        if weight or len(stored) > 2:
            self._make_room(stored, wm, weight)  # (bounded by bytes too)
        else:
            if times and times[0] <= wm - size:  # at or before: never in an accepted event's window
                cut = bisect_right(times, wm - size)
                del times[:cut]
                del values[:cut]
            if len(times) >= self._max_stored:  # (aggregations without running ones only)
                over = len(times) + 1 - self._max_stored
                del times[:over]
                del values[:over]
                self.evicted += over
        if not times or t >= times[-1]:
            times.append(t)
            values.append(value)
            end = len(times)
        else:
            end = bisect_right(times, t)
            times.insert(end, t)
            values.insert(end, value)
            end += 1
        state.set(skey, stored)  # the same object: marks it written
        inside = values[bisect_right(times, t - size) : end] if times[0] <= t - size else values[:end]
        return [_window_value(WindowValue, (t - size, t, self._results(inside)))]

    def _entered(self, key: str, value: Any) -> tuple[Any, int]:
        """A value other than an int or a float as the window keeps it (see :func:`_plain`),
        refused if an aggregation cannot take it; and for a sliding window, its bytes beyond a
        number's (:func:`_value_bytes`), a long one stored as a digest when the aggregations only
        count and compare values."""
        if type(value) is str:
            if not value.isascii():
                _utf8(key, value)
            # (Text every built-in count takes: checked only where a number or an aggregation
            # written elsewhere is asked of it, the distinct user names per IP path kept short.)
            if self._numeric or self._others:
                self._checked(key, value)
        else:
            value = _plain(key, value)
            if type(value) is int and not _INT_MIN <= value <= _UINT_MAX:
                _beyond_64_bits(key, value)
            self._checked(key, value)
        if not self._sliding:
            return value, 0
        if self._digest:
            value = _distinct_key(value)
        weight = _value_bytes(value)
        if weight > MAX_ENTRY_BYTES - _EVENT_BYTES:
            msg = (
                f"window value for key {key!r} is {weight:,} bytes encoded; a key's sliding window is "
                f"one store entry of at most {MAX_ENTRY_BYTES:,} bytes (a changelog record)"
            )
            raise ValueError(msg)
        return value, weight

    def _checked(self, key: str, value: Any) -> None:
        """Refuse ``value`` if an aggregation cannot take it, naming the key and the aggregation:
        before the update changes anything (see ``update``)."""
        kind = type(value)
        number = kind is float or kind is int or kind is bool
        for name, agg in [] if number else self._numeric:
            if not self._sliding and type(agg) is Sum:
                # (A tumbling or hopping sum adds float(value): numeric text is summed.)
                try:
                    float(value)
                except (TypeError, ValueError) as exc:
                    # (Not float()'s own message: it repeats the whole value, an attacker's text.)
                    msg = (
                        f"window value for key {key!r}: aggregation {name!r} (Sum) takes numbers; got "
                        f"{kind.__name__} {_shown(value)}"
                    )
                    raise type(exc)(msg) from None
                continue
            msg = (
                f"window value for key {key!r}: aggregation {name!r} ({type(agg).__name__}) takes "
                f"numbers; got {kind.__name__} {_shown(value)}"
            )
            raise TypeError(msg)
        if self._distinct and not number and kind is not str and value is not None:
            try:
                hash(_distinct_key(value))
            except TypeError as exc:
                name = self._aggs[self._distinct[0]][0]
                msg = (
                    f"window value for key {key!r}: aggregation {name!r} (DistinctCount) cannot "
                    f"count {_shown(value)} ({exc}); pass a number, a string, or a tuple of them"
                )
                raise TypeError(msg) from None
        for name, agg in self._others:
            try:
                if self._sliding:
                    agg.over([value])
                else:
                    agg.add(agg.initial(), value)
            except Exception as exc:
                exc.add_note(f"(window value for key {key!r}, aggregation {name!r})")
                raise

    def _claim(self, state: State) -> None:
        """Refuse to update ``state`` if another window uses it (see :func:`claim_store`)."""
        claim_store(state, self._user, self.store)
        # The state itself, not its identity: a partition's state freed (revoked), the next one
        # made may take its address, and was updated unclaimed, beside another window.
        self._claimed = state

    def _make_room(self, stored: list[Any], wm: int, weight: int) -> None:
        """``update``'s cuts before it adds an event of ``weight`` to a short key holding values
        other than numbers: the expired events, those past ``max_events``, and those past
        ``MAX_ENTRY_BYTES``, oldest first."""
        times: list[Any] = stored[0]
        values: list[Any] = stored[1]
        limit = wm - self._size
        cut = bisect_right(times, limit) if times and times[0] <= limit else 0
        over = len(times) - cut + 1 - self._max_stored
        if over > 0:
            cut += over
            self.evicted += over
        cut = self._fitted(stored, cut, weight, cut)
        if cut:
            del times[:cut]
            del values[:cut]

    def _fitted(self, stored: list[Any], cut: int, weight: int, free: int) -> int:
        """How many of a key's oldest events go so that its entry, with one more event of
        ``weight`` bytes beyond a number's, stays within ``MAX_ENTRY_BYTES``: at least ``cut``.
        Updates the entry's third item (its bytes beyond numbers') for the events going and the
        one coming; those going past ``free`` (the expired) and ``cut`` are counted evicted."""
        values: list[Any] = stored[1]
        n = len(values)
        if len(stored) > 2:
            extra: int = stored[2]
            for i in range(cut):
                extra -= _value_bytes(values[i])
        else:  # (first such value: the key's other values are numbers, or stored before it was counted)
            extra = 0
            for i in range(cut, n):
                extra += _value_bytes(values[i])
        going = cut
        while going < n and (n - going + 1) * _EVENT_BYTES + extra + weight > MAX_ENTRY_BYTES:
            extra -= _value_bytes(values[going])
            going += 1
        self.evicted += max(0, going - max(cut, free))
        extra += weight
        if len(stored) > 2:
            if extra:
                stored[2] = extra
            else:
                del stored[2:]  # (numbers only again: the plain path)
        elif extra:
            stored.append(extra)
        return going

    def _update_long(
        self,
        names: list[tuple[str, int]],
        state: State,
        skey: str,
        stored: list[Any],
        t: int,
        value: Any,
        wm: int,
        weight: int,
    ) -> dict[str, Any]:
        """A sliding update of a key with many events: the same changes to the stored list as
        ``update`` makes (but for expired events, cut a quarter of the list at a time), and the
        answer from the key's :class:`_Running` aggregates when the event is the newest (the
        usual case), or over the event's own window when it is not."""
        times: list[Any] = stored[0]
        values: list[Any] = stored[1]
        size = self._size
        runs = self._runs
        rkey = (id(state), skey)
        self._tick += 1
        run = runs.pop(rkey, None)
        if run is not None and (run.stored is not stored or run.generation != state.generation()):
            run = None
        last = times[-1]
        cut = expired = bisect_right(times, wm - size) if times[0] <= wm - size else 0
        over = len(times) - cut + 1 - self._max_stored
        if over > 0:
            cut += over  # the oldest make room (see max_events)
            self.evicted += over
        elif cut * 4 < len(times):
            # Expired events go a quarter of the list at a time, not one per event: each cut
            # moves the rest of the list (a hot key's every update moved 20,000 pointers).
            # Kept a while, they are in no answer: windows start after the watermark's.
            cut = 0
        if weight or len(stored) > 2:
            cut = self._fitted(stored, cut, weight, expired)
        in_order = t >= last
        if run is not None and in_order:
            run.advance(t - size)
        if run is not None:
            run.drop_front(cut)
        if cut:
            del times[:cut]
            del values[:cut]
        if in_order:
            times.append(t)
            values.append(value)
            end = len(times)
        else:
            # Out of order: the key's newest window stays; the event's own is computed over.
            end = bisect_right(times, t)
            times.insert(end, t)
            values.insert(end, value)
        # Marked written now, before anything that may raise (a value the running aggregates
        # or the answer cannot take): the change to the list is then saved as a restarted
        # process would make it again.  (A running entry that raises is not put back.)
        state.set(skey, stored)
        if run is not None:
            # The aggregates are over values[lo:]: an event placed there joins them (an
            # out-of-order one leaves again at the next in-order event if it is older than that
            # one's window).
            if end >= run.lo:
                run.add(value)
            else:
                run.lo += 1
        elif in_order and end >= self._running_from:
            run = self._admit(names, state, stored)
        if not in_order:
            end += 1
        if run is not None and len(times) >= self._running_keep:
            run.used = self._tick
            runs[rkey] = run  # last: the most recently updated
            if in_order and run.bad == 0:
                self.running_answers += 1
                return run.results()
        start = bisect_right(times, t - size) if times[0] <= t - size else 0
        return self._results(values[start:end])

    def _admit(self, names: list[tuple[str, int]], state: State, stored: list[Any]) -> _Running | None:
        """Running aggregates for a key now holding many events, if there is room.  When every
        slot is taken, at most once per idle span (more hot keys than slots taking turns were
        otherwise each built again at every turn, slower than recomputing over their windows):
        the least recently updated goes if it has been idle that long, or else the one with
        the shortest window if this key's is four times as long (busy short keys shut a
        flooded one out for good)."""
        runs = self._runs
        if len(runs) >= self._running_keys:
            if self._tick - self._decided_at < self._running_idle:
                return None  # a slot was looked at recently: this key is recomputed
            self._decided_at = self._tick
            victim = next(iter(runs))
            if self._tick - runs[victim].used < self._running_idle:
                shortest = min(runs, key=lambda k: runs[k].live())
                if 4 * runs[shortest].live() > len(stored[0]):
                    return None  # as many keys as busy, with windows as long
                victim = shortest
            del runs[victim]
        self.built += 1
        return _Running(names, state, stored, state.generation(), self._size)

    def _forget(self, state: State, wm: int) -> None:
        """Let go of running aggregates of no more use: those of a closed or dropped partition,
        and of this partition's keys past window and lateness (which the walk and ``expire``
        delete).  They held a flooded key's list, heaps and counts until their slot was needed."""
        if not self._runs:
            return
        sid = id(state)
        limit = wm - self._size
        for rkey, run in list(self._runs.items()):
            owner = run.owner()
            if (
                owner is None
                or getattr(owner, "closed", False)
                or (rkey[0] == sid and run.times[-1] <= limit)
            ):
                del self._runs[rkey]

    def _update_fixed(self, state: State, skey: str, t: int, value: Any, wm: int) -> list[WindowValue]:
        size = self.window.size_ms
        found: dict[str, list[Any]] | None = state.get(skey)
        if self.quiet.counted(found is None):
            self._walk_step(state, wm)
        stored = found or {}
        windows = {start: accs for start, accs in stored.items() if int(start) + size > wm}
        distinct = self._distinct
        at = self._distinct_at
        share = self.distinct_share
        held = _distinct_key(value) if distinct else None  # (as the distinct counts hold it)
        out = []
        for start in self.window.starts(t):
            if start + size <= wm:
                continue  # closed (a hopping event's older windows)
            skey_start = str(start)
            accs = windows.get(skey_start)
            if accs is None:
                accs = [agg.initial() for _, agg in self._aggs]
            for i in distinct:
                acc = accs[i]
                if held not in acc:
                    if len(acc) < share:
                        acc[held] = 1
                    else:
                        if not self.capped:
                            log.warning(
                                "windowed aggregate on store %r: a window's distinct count reached "
                                "its share (%d values) and counts no further (capped counts: the "
                                "aggregate's `capped`)",
                                self.store.id,
                                share,
                            )
                        self.capped += 1
            accs = [accs[i] if i in at else agg.add(accs[i], value) for i, (_, agg) in enumerate(self._aggs)]
            windows[skey_start] = accs
            values = {name: agg.result(accs[i]) for i, (name, agg) in enumerate(self._aggs)}
            out.append(WindowValue(start, start + size, values))
        state.set(skey, windows)
        return out

    # -- housekeeping

    def expire(self, state: State) -> int:
        """Delete the state of every key past window + lateness now (``update`` does it a few
        keys at a time); returns how many keys were deleted."""
        wm = self.watermark(state)
        if wm is None:
            return 0
        dead = [skey for skey, stored in state.items(_KEY_PREFIX) if self._expired(stored, wm)]
        for skey in dead:
            state.delete(skey)
        self._forget(state, wm)
        return len(dead)

    def _expired(self, stored: Any, wm: int) -> bool:
        """Whether a key's stored windows can no longer change an answer at watermark ``wm``."""
        size = self._size
        if self._sliding:
            times = stored[0]
            return not times or times[-1] <= wm - size
        return all(int(start) + size <= wm for start in stored)

    def _walk_step(self, state: State, wm: int) -> None:
        self.quiet.step(state, lambda stored: self._expired(stored, wm))
        self._forget(state, wm)
