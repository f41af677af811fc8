"""Windows against a brute-force reference on random event streams (property tests)."""

from __future__ import annotations

import gc
import math
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.stream import vectorised
from vigil.stream.attempt import UndoableState
from vigil.stream.base import StoreSpec
from vigil.stream.windows import (
    AGGREGATIONS,
    DISTINCT_BYTES,
    MAX_TIME_MS,
    Aggregation,
    Count,
    DistinctCount,
    Max,
    Min,
    QuietKeys,
    Sum,
    Window,
    WindowedAggregate,
    duration_ms,
    to_ms,
)
from vigil.testing import MemoryState

STORE = StoreSpec("w", 1)
AGGS = {"n": Count(), "sum": Sum(), "min": Min(), "max": Max(), "distinct": DistinctCount()}

events = st.lists(
    st.tuples(st.sampled_from("abc"), st.integers(0, 400), st.integers(0, 9)), min_size=1, max_size=80
)
windows = st.one_of(
    st.builds(Window.tumbling, st.integers(1, 60), st.integers(0, 50)),
    st.integers(1, 60).flatmap(
        lambda size: st.builds(Window.hopping, st.just(size), st.integers(1, size), st.integers(0, 50))
    ),
    st.builds(Window.sliding, st.integers(1, 60), st.integers(0, 50)),
)


def reference(window: Window, stream: list[tuple[str, int, int]]) -> list[Any]:
    """Recompute every answer from scratch over the accepted events: no state, no expiry."""
    # Each key's accepted events, in arrival order (a key's answers read its own events only;
    # one list for all keys made 20,000 keys 200 million comparisons).
    accepted: dict[str, list[tuple[int, int]]] = {}
    out: list[Any] = []
    max_t: int | None = None
    for key, t, v in stream:
        # The watermark this event is judged against: the largest time so far, this one
        # included, minus the lateness.  A window is closed once the watermark reaches its end
        # (a sliding one ends at its event); an event none of whose windows is open is late.
        wm = (t if max_t is None else max(max_t, t)) - window.lateness_ms
        # (start, end, sliding?): sliding windows are (start, end], the others [start, end).
        if window.kind == "sliding":
            bounds = [(t - window.size_ms, t, True)] if t >= wm else []
        else:
            # Every window holding t: the starts that are multiples of the step in (t - size, t].
            last = t - t % window.step_ms
            bounds = [
                (s, s + window.size_ms, False)
                for s in range(last, t - window.size_ms, -window.step_ms)
                if s + window.size_ms > wm
            ][::-1]
        if not bounds:
            out.append(None)
            continue
        max_t = t if max_t is None else max(max_t, t)
        own = accepted.setdefault(key, [])
        own.append((t, v))
        results = []
        for lo, hi, sliding in bounds:
            vals = [av for at, av in own if ((lo < at <= hi) if sliding else (lo <= at < hi))]
            stats = {"n": len(vals), "sum": float(sum(vals)), "min": min(vals), "max": max(vals)}
            results.append((lo, hi, {**stats, "distinct": len(set(vals))}))
        out.append(results)
    return out


def answers(agg: WindowedAggregate, state: MemoryState, stream: list[tuple[str, int, int]]) -> list[Any]:
    """What ``update`` answers for each event of ``stream``, in the reference's shape."""
    got: list[Any] = []
    for key, t, v in stream:
        res = agg.update(state, key, t, v)
        got.append(None if res is None else [(w.start_ms, w.end_ms, w.values) for w in res])
    return got


@settings(max_examples=150, deadline=None)
@given(window=windows, stream=events)
def test_windows_match_brute_force_reference(window: Window, stream: list[tuple[str, int, int]]) -> None:
    agg = WindowedAggregate(STORE, window, AGGS)
    assert answers(agg, MemoryState(), stream) == reference(window, stream)


@settings(max_examples=150, deadline=None)
@given(window=windows, stream=events)
def test_walking_for_quiet_keys_at_every_update_changes_no_answer(
    window: Window, stream: list[tuple[str, int, int]]
) -> None:
    # Out-of-order events over a few keys, and a walk step (one key) at every update: deleting
    # what could still change an answer would show against the brute-force reference.
    agg = WindowedAggregate(STORE, window, AGGS, quiet=QuietKeys("w:", step_keys=1, every=1))
    assert answers(agg, MemoryState(), stream) == reference(window, stream)


@settings(max_examples=60, deadline=None)
@given(window=windows, stream=events)
def test_expired_state_is_deleted_and_does_not_change_answers(
    window: Window, stream: list[tuple[str, int, int]]
) -> None:
    agg = WindowedAggregate(STORE, window, AGGS)
    swept, plain = MemoryState(), MemoryState()
    for key, t, v in stream:
        assert agg.update(swept, key, t, v) == agg.update(plain, key, t, v)
        agg.expire(swept)
    wm = agg.watermark(swept)
    assert wm is not None
    for skey, stored in swept.items("w:"):
        times = stored[0] if window.kind == "sliding" else [int(s) for s in stored]
        limit = wm - window.size_ms
        assert any(x > limit for x in times), f"{skey} should have expired"


def test_late_event_changes_nothing_and_watermark_survives_in_state() -> None:
    agg = WindowedAggregate(STORE, Window.tumbling("1m", lateness="10s"), {"n": Count()})
    state = MemoryState()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    assert agg.update(state, "a", t0 + timedelta(minutes=5)) is not None
    before = dict(state.data)
    # The watermark is 4:50: the window [3:00, 4:00) has closed, [4:00, 5:00) has not.
    assert agg.update(state, "a", t0 + timedelta(minutes=3, seconds=59)) is None
    assert state.data == before
    assert agg.watermark(state) == to_ms(t0 + timedelta(minutes=4, seconds=50))
    (win,) = agg.update(state, "a", t0 + timedelta(minutes=4, seconds=49)) or []
    assert win.values == {"n": 1}


def test_an_out_of_order_event_counts_while_its_window_is_open() -> None:
    # No lateness: an event at 0:30 then one at 0:10 of the same minute.  The minute's window
    # is still open (the watermark, 0:30, has not reached its end), so the second counts.
    agg = WindowedAggregate(STORE, Window.tumbling("1m"), {"n": Count()})
    state = MemoryState()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    agg.update(state, "a", t0 + timedelta(seconds=30))
    (win,) = agg.update(state, "a", t0 + timedelta(seconds=10)) or []
    assert win.values == {"n": 2}
    # Once an event of the next minute moves the watermark to its start, the first is closed.
    agg.update(state, "a", t0 + timedelta(seconds=60))
    assert agg.update(state, "a", t0 + timedelta(seconds=50)) is None
    # Hopping: an event whose older window has closed counts in the open one only.
    hop = WindowedAggregate(STORE, Window.hopping("1m", "30s"), {"n": Count()})
    state = MemoryState()
    hop.update(state, "a", t0 + timedelta(seconds=75))  # watermark 1:15; [0:30, 1:30) open
    got = hop.update(state, "a", t0 + timedelta(seconds=40)) or []
    assert [(w.start_ms - to_ms(t0), w.values["n"]) for w in got] == [(30_000, 2)]


def test_durations_and_bad_inputs_are_explained() -> None:
    assert duration_ms("5m") == 300_000
    assert duration_ms(timedelta(seconds=2)) == 2000
    # Every millisecond count exactly (the float product of total_seconds() lost one in 135).
    assert [duration_ms(timedelta(milliseconds=ms)) for ms in range(100_000)] == list(range(100_000))
    assert duration_ms("250ms") == 250
    with pytest.raises(ValueError, match=r"expected a duration like '10m'.*got '5 minutes'"):
        duration_ms("5 minutes")
    with pytest.raises(ValueError, match="timezone-aware"):
        to_ms(datetime(2026, 1, 1))  # noqa: DTZ001 - the naive datetime is the point of the test
    with pytest.raises(ValueError, match=r"step .* must not exceed size"):
        Window.hopping("1m", "2m")
    assert set(AGGREGATIONS) == {"count", "sum", "min", "max", "distinct_count"}


class _Spread(Aggregation):
    """An aggregation written in plain Python (the module it extends may be compiled)."""

    def initial(self) -> list[float]:
        return []

    def add(self, acc: list[float], value: Any) -> list[float]:
        return [*acc, float(value)]

    def result(self, acc: list[float]) -> float:
        return max(acc) - min(acc) if acc else 0.0


def test_an_aggregation_written_in_plain_python_plugs_in() -> None:
    agg = WindowedAggregate(STORE, Window.tumbling("1m"), {"spread": _Spread(), "n": Count()})
    state = MemoryState()
    out = None
    for when, value in ((1_000, 5), (2_000, 12), (3_000, 7)):
        out = agg.update(state, "k", when, value)
    assert out is not None
    assert out[0].values == {"spread": 7.0, "n": 3}


@pytest.mark.parametrize(
    "window", [Window.sliding("10s", lateness="2s"), Window.tumbling("10s"), Window.hopping("10s", "5s")]
)
def test_keys_that_go_quiet_are_deleted_as_updates_go_on(window: Window) -> None:
    # 20,000 keys, each seen once, a second apart: without the walk every one of them would keep
    # its window forever; with it, the store holds the few live keys plus a bounded tail.
    agg = WindowedAggregate(STORE, window, AGGS)
    state = MemoryState()
    stream = [(f"k{i}", i * 1000, i % 7) for i in range(20_000)]
    assert answers(agg, state, stream) == reference(window, stream)  # deleting quiet keys changes no answer
    kept = [k for k, _ in state.items("w:")]
    assert agg.quiet.deleted > 19_000
    assert len(kept) < 300, f"{len(kept)} keys kept"


@pytest.mark.parametrize("window", [Window.sliding(1000), Window.tumbling(1000)], ids=["sliding", "tumbling"])
def test_an_integer_state_cannot_hold_is_refused_when_it_comes(window: Window) -> None:
    # A wei amount (25 ETH) is past 64 bits: accepted, it failed every checkpoint after (and the
    # restarted process again); refused in the operator, it names what to pass instead.
    agg = WindowedAggregate(STORE, window, {"total": Sum()})
    state = MemoryState()
    agg.update(state, "0xabc", 1, 5)
    before = dict(state.data)
    with pytest.raises(
        ValueError, match=r"25000000000000000000 for key '0xabc' is an integer beyond 64 bits"
    ):
        agg.update(state, "0xabc", 2, 25 * 10**18)
    assert state.data == before
    state.reload()  # what there is still encodes
    assert agg.update(state, "0xabc", 3, 25e18) is not None


@pytest.mark.parametrize(
    "window", [Window.sliding(1000), Window.tumbling(1000), Window.hopping(1000, 500)], ids=str
)
def test_an_event_time_state_cannot_hold_is_refused_when_it_comes(window: Window) -> None:
    # Epoch milliseconds beyond 64 bits (a payload field in ns, or forged) became the watermark:
    # accepted, every checkpoint failed after, and the restarted process the same way.
    agg = WindowedAggregate(STORE, window, {"n": Count()})
    state = MemoryState()
    agg.update(state, "k", 1_000)
    before = dict(state.data)
    for bad in (10**20, -(10**20), MAX_TIME_MS + 1):
        with pytest.raises(ValueError, match=rf"event time {bad} ms for key 'k' is beyond"):
            agg.update(state, "k", bad)
    assert state.data == before
    state.reload()  # what there is still encodes
    assert agg.update(state, "k", MAX_TIME_MS - 10**6) is not None
    state.reload()
    with pytest.raises(ValueError, match=r"size, step and lateness must be at most"):
        Window.tumbling(MAX_TIME_MS + 1)


@pytest.mark.parametrize(
    "window", [Window.sliding(1000), Window.tumbling(1000), Window.hopping(1000, 500)], ids=str
)
def test_distinct_lists_and_dicts_count_in_every_kind_of_window(window: Window) -> None:
    # Sliding windows counted them as tuples; fixed ones stopped the operator (unhashable).
    agg = WindowedAggregate(STORE, window, {"d": DistinctCount()})
    state = MemoryState()
    values: list[Any] = [["a", "b"], {"x": 1}, ["a", "b"], {"x": 1}, ["a", "c"], 3]
    got = []
    for i, value in enumerate(values):
        if i == 3:
            state.reload()  # keys come back as MessagePack gives them
        got.append((agg.update(state, "k", 100 + i, value) or [])[-1].values["d"])
    assert got == [1, 2, 2, 2, 3, 4]


def test_sliding_min_and_max_are_those_of_the_window() -> None:
    agg = WindowedAggregate(STORE, Window.sliding(1000), {"lo": Min(), "hi": Max()})
    state = MemoryState()
    out = [agg.update(state, "k", t, v) for t, v in ((0, 5), (400, 2), (800, 9), (1300, 7), (1900, 8))]
    # Windows (t - 1000, t]: {5}, {5, 2}, {5, 2, 9}, {2, 9, 7} at 1300, {7, 8} at 1900.
    assert [(o[0].values["lo"], o[0].values["hi"]) for o in out if o] == [
        (5.0, 5.0),
        (2.0, 5.0),
        (2.0, 9.0),
        (2.0, 9.0),
        (7.0, 8.0),
    ]
    assert all(type(o[0].values["lo"]) is float for o in out if o)


def test_distinct_tuples_still_count_after_a_restart() -> None:
    # MessagePack gives tuples back as lists, which a set cannot hold.
    agg = WindowedAggregate(STORE, Window.sliding(1000), {"d": DistinctCount()})
    state = MemoryState()
    agg.update(state, "k", 1, (1, 2))
    state.reload()
    (got,) = agg.update(state, "k", 2, (1, 2)) or []
    assert got.values["d"] == 1
    (got,) = agg.update(state, "k", 3, (1, 3)) or []
    assert got.values["d"] == 2


@pytest.mark.parametrize("window", [Window.sliding(1000), Window.tumbling(1000)], ids=["sliding", "tumbling"])
def test_numpy_numbers_are_kept_as_the_python_numbers_they_are(window: Window) -> None:
    # An amount computed with numpy went into state as a numpy scalar, which MessagePack cannot
    # encode: every checkpoint failed, and the restart again.
    agg = WindowedAggregate(STORE, window, {"total": Sum(), "d": DistinctCount()})
    state = MemoryState()
    agg.update(state, "k", 1, np.float64(2.5))
    agg.update(state, "k", 2, np.int64(3))
    state.reload()  # what a checkpoint and a restart do
    (got,) = agg.update(state, "k", 3, np.float64(2.5)) or []
    assert got.values == {"total": 8.0, "d": 2}
    assert type(got.values["total"]) is float
    distinct = WindowedAggregate(STORE, window, {"d": DistinctCount()})
    own = MemoryState()  # (a store is one window's)
    distinct.update(own, "t", 5, (np.int64(1), "a"))
    own.reload()
    (got,) = distinct.update(own, "t", 6, (1, "a")) or []
    assert got.values == {"d": 1}
    with pytest.raises(ValueError, match=r"window value for key 'k' is a numpy array of shape \(2,\)"):
        agg.update(state, "k", 4, np.array([1.0, 2.0]))


def test_event_times_are_exact_milliseconds_for_any_date() -> None:
    # int(timestamp() * 1000) came out a millisecond low for a fifth of the times before
    # 2004-01-10 and for nearly all before 1970; the vectorised window must agree.
    rng = random.Random(3)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    india = timezone(timedelta(hours=5, minutes=30))
    when = [
        datetime(year, 1, 1, tzinfo=UTC)
        + timedelta(microseconds=rng.randrange(365 * 86_400 * 10**6 // step) * step)
        for year in (1850, 1950, 1969, 2003, 2026, 2100, 2300)
        for step in (1, 1000)
        for _ in range(1000)
    ]
    when += [w.astimezone(india) for w in when[::7]]
    exact = [(w - epoch) // timedelta(milliseconds=1) for w in when]
    assert [to_ms(w) for w in when] == exact
    agg = WindowedAggregate(STORE, Window.sliding(1), {"n": Count()})
    for w, ms in zip(when[::100], exact[::100], strict=True):
        (got,) = agg.update(MemoryState(), "k", w) or []
        assert got.end_ms == ms
    assert vectorised._as_ms(when, len(when), "test").tolist() == exact
    # Batches within 1901-2038 take the float path, others the exact one: both give the same.
    recent = [i for i, w in enumerate(when) if 1902 <= w.year <= 2037]
    assert vectorised._as_ms([when[i] for i in recent], len(recent), "test").tolist() == [
        exact[i] for i in recent
    ]
    assert to_ms(np.int64(5)) == 5
    with pytest.raises(TypeError, match=r"event time: expected a UTC-aware datetime or .*got float 1\.5"):
        to_ms(1.5)


# ---------------------------------------------------------------------------- long windows


def _comparable(answer: Any) -> Any:
    """An answer with NaN made equal to itself (two NaN sums are the same answer)."""
    if answer is None:
        return None
    return [(lo, hi, {k: "nan" if v != v else v for k, v in values.items()}) for lo, hi, values in answer]


@settings(max_examples=150, deadline=None)
@given(window=windows, stream=events)
def test_running_aggregates_match_the_brute_force_reference(
    window: Window, stream: list[tuple[str, int, int]]
) -> None:
    # Every key with an event stored goes the incremental way, and only two keys at a time
    # may: the third waits for room, or for one to go idle.
    agg = WindowedAggregate(STORE, window, AGGS, running_from=2, running_keys=2)
    assert answers(agg, MemoryState(), stream) == reference(window, stream)


floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from([0.1, 0.2, 0.3, 1e308, -1e308, 5e-324, float("inf"), float("-inf"), 1e16, -1.0]),
    st.integers(-(2**63), 2**63 - 1),
)


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 60),
    lateness=st.integers(0, 50),
    stream=st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 300), floats), min_size=1, max_size=120),
)
def test_running_sums_minima_and_maxima_of_floats_are_the_recomputed_ones(
    size: int, lateness: int, stream: list[tuple[str, int, Any]]
) -> None:
    # Exact sums (no error piling up as values leave the window), infinities, overflow on the
    # way: the same answer as recomputing over the window, which is math.fsum's.
    window = Window.sliding(size, lateness)
    running = WindowedAggregate(STORE, window, AGGS, running_from=2)
    recomputed = WindowedAggregate(STORE, window, AGGS, running_from=10**9)
    a, b = MemoryState(), MemoryState()
    for key, t, v in stream:
        assert _comparable(answers(running, a, [(key, t, v)])[0]) == _comparable(
            answers(recomputed, b, [(key, t, v)])[0]
        )
    assert recomputed.running_answers == 0


def test_a_sliding_sum_is_correctly_rounded_whatever_the_order() -> None:
    agg = WindowedAggregate(STORE, Window.sliding(100, lateness=100), {"total": Sum()})
    state = MemoryState()
    # 1e16 + 1.0 + 1.0 summed left to right loses both ones; the window's sum keeps them.
    for t, v in [(1, 1e16), (2, 1.0), (3, 1.0)]:
        res = agg.update(state, "a", t, v)
    assert res is not None
    assert res[0].values["total"] == 1e16 + 2.0
    # The same values in another order: the same sum.
    state = MemoryState()
    for t, v in [(3, 1.0), (1, 1e16), (2, 1.0)]:
        res = agg.update(state, "b", t, v)
    later = agg.update(state, "b", 4, 0.0)
    assert later is not None
    assert later[0].values["total"] == 1e16 + 2.0


def _hot_stream(rng: random.Random, n: int, keys: int, behind: int) -> list[tuple[str, int, Any]]:
    """Hot keys: events a few ms apart, one in ten up to ``behind`` ms out of order."""
    out: list[tuple[str, int, Any]] = []
    t = 0
    for _ in range(n):
        t += rng.randint(0, 3)
        when = t - rng.randint(0, behind) if rng.random() < 0.1 else t
        out.append((f"k{rng.randrange(keys)}", when, rng.choice([rng.randint(0, 99), rng.random() * 1e4])))
    return out


@pytest.mark.parametrize(
    ("keys", "size", "lateness"),
    [
        (1, 1_000, 40),
        (5, 1_000, 40),
        # Out-of-order events older than the newest window (lateness beyond the size).
        (1, 300, 600),
    ],
)
def test_hot_keys_are_answered_by_running_aggregates_and_answers_stay_the_same(
    keys: int, size: int, lateness: int
) -> None:
    rng = random.Random(keys)
    stream = _hot_stream(rng, 6_000, keys, behind=lateness)
    window = Window.sliding(size, lateness=lateness)
    running = WindowedAggregate(STORE, window, AGGS, running_keys=2)
    recomputed = WindowedAggregate(STORE, window, AGGS, running_from=10**9)
    a, b = MemoryState(), MemoryState()
    for i, (key, t, v) in enumerate(stream):
        assert answers(running, a, [(key, t, v)]) == answers(recomputed, b, [(key, t, v)]), i
        if i % 1_500 == 1_499:
            a.reload()  # a restart: every stored list is new, the running aggregates stale
    # Hundreds of events in each key's window: in-order events were answered incrementally
    # (with five keys taking turns, two at a time only, the others recomputed).
    assert running.running_answers > (4_000 if keys == 1 else 1_000)
    assert running.running_answers < len(stream)


def _signed(answer: Any) -> Any:
    """An answer with NaN made equal to itself and the sign of a zero shown."""
    if answer is None:
        return None
    return [
        (lo, hi, {k: "nan" if v != v else (v, math.copysign(1.0, v)) for k, v in values.items()})
        for lo, hi, values in answer
    ]


def test_while_a_nan_is_in_the_window_the_answer_is_recomputed_and_after_it_running_again() -> None:
    window = Window.sliding(10)
    aggs = {"n": Count(), "total": Sum(), "max": Max(), "min": Min()}
    running = WindowedAggregate(STORE, window, aggs, running_from=4)
    recomputed = WindowedAggregate(STORE, window, aggs, running_from=10**9)
    a, b = MemoryState(), MemoryState()
    values: list[Any] = [1.0, 2.0, True, 4, 5.0, float("nan"), 6.0, 7.0, -0.0, 0.0, *range(20)]
    by_time = []
    for t, v in enumerate(values):
        got = answers(running, a, [("k", t, v)])[0]
        assert _signed(got) == _signed(answers(recomputed, b, [("k", t, v)])[0]), t
        by_time.append(running.running_answers)
    # Running before the NaN came (t=5), recomputed while it was in the 10 ms window (to t=14),
    # running again after.
    assert by_time[4] > 0
    assert by_time[14] == by_time[4]
    assert by_time[-1] == by_time[14] + len(values) - 15


def test_distinct_counts_run_over_any_value() -> None:
    distinct = WindowedAggregate(STORE, Window.sliding(1_000), {"d": DistinctCount()}, running_from=4)
    state = MemoryState()
    for t in range(40):
        res = distinct.update(state, "k", t, f"ip-{t % 7}" if t % 2 else [t % 3, "x"])
    assert res is not None
    assert res[0].values["d"] == 7 + 3
    assert distinct.running_answers > 30


@pytest.mark.parametrize("running_from", [4, 10**9])
@pytest.mark.parametrize(
    ("aggregation", "poison"),
    [(Sum(), "12.50"), (Min(), None), (DistinctCount(), (1, [2]))],
    ids=["sum-str", "min-none", "distinct-unhashable"],
)
def test_a_value_that_cannot_be_aggregated_is_refused_before_anything_changes(
    running_from: int, aggregation: Aggregation, poison: Any
) -> None:
    # It was stored, then its aggregation raised: every later event of the key raised too, for
    # the window's length, and the watermark had moved (found in review).
    agg = WindowedAggregate(
        STORE, Window.sliding(1_000), {"n": Count(), "x": aggregation}, running_from=running_from
    )
    state = MemoryState()
    for t in range(6):
        agg.update(state, "k", t, 1.0)
    state.checkpoint()
    before = msgspec.msgpack.encode(state.data)
    kind = type(aggregation).__name__
    with pytest.raises(TypeError, match=rf"window value for key 'k': aggregation 'x' \({kind}\)"):
        agg.update(state, "k", 600, poison)
    assert msgspec.msgpack.encode(state.data) == before  # the watermark too
    (got,) = agg.update(state, "k", 6, 1.0) or []
    assert got.values["n"] == 7
    state.reload()
    assert len(state.get("w:k")[1]) == 7


@pytest.mark.parametrize("value", [1j, object(), [1, object()]], ids=["complex", "object", "nested"])
def test_a_value_state_cannot_hold_is_refused_when_it_comes(value: Any) -> None:
    # Kept, it failed every checkpoint (MessagePack), and the restart's again.
    agg = WindowedAggregate(STORE, Window.sliding(1_000), {"d": DistinctCount()})
    state = MemoryState()
    with pytest.raises(ValueError, match=r"window value for key 'k'.* cannot be kept in state"):
        agg.update(state, "k", 1, value)
    assert state.get("w:k") is None
    state.checkpoint()


@pytest.mark.parametrize("window", [Window.sliding(1000), Window.tumbling(1000)], ids=["sliding", "tumbling"])
@pytest.mark.parametrize(
    "value", ["ab\ud800", ("x", "\udfff"), ["\ud800"]], ids=["text", "in-a-tuple", "in-a-list"]
)
def test_text_state_cannot_encode_is_refused_when_it_comes(window: Window, value: Any) -> None:
    # A lone surrogate (json.loads makes one of "\ud800") is not UTF-8: kept, every checkpoint failed.
    agg = WindowedAggregate(STORE, window, {"d": DistinctCount()})
    state = MemoryState()
    with pytest.raises(
        ValueError, match=r"window value for key .k.*(lone surrogate at character|cannot be kept)"
    ):
        agg.update(state, "k", 1, value)
    assert state.get("w:k") is None
    assert agg.update(state, "k", 1, "café") is not None  # UTF-8 text beyond ASCII is kept
    state.checkpoint()
    state.reload()
    assert agg.update(state, "k", 2, "café") is not None


def test_a_sum_refuses_a_string_even_when_it_overflows_on_the_way() -> None:
    with pytest.raises(TypeError, match="must be real number, not str"):
        Sum().over([1e308, 1e308, "1"])
    assert Sum().over([1e308, 1e308, -1e308]) == 1e308


def test_an_undone_attempt_rebuilds_the_running_aggregates() -> None:
    window = Window.sliding(1_000)
    running = WindowedAggregate(STORE, window, AGGS, running_from=4)
    recomputed = WindowedAggregate(STORE, window, AGGS, running_from=10**9)
    a, b = UndoableState(MemoryState()), MemoryState()
    for t in range(20):
        a.begin()
        got = running.update(a, "k", t, t % 5)
        if t % 3 == 0:
            a.undo()  # the record failed after the update: its change is put back
            continue
        assert got == recomputed.update(b, "k", t, t % 5)
    assert running.running_answers > 5


def test_running_aggregate_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_events >= 2"):
        WindowedAggregate(STORE, Window.sliding(10), AGGS, max_events=1)
    with pytest.raises(ValueError, match="running_from >= 2"):
        WindowedAggregate(STORE, Window.sliding(10), AGGS, running_from=1)
    with pytest.raises(ValueError, match="running_keys >= 1"):
        WindowedAggregate(STORE, Window.sliding(10), AGGS, running_keys=0)


def test_running_aggregates_at_the_window_bounds() -> None:
    # Events exactly at the newest window's start (not in it) and at its end, out of order.
    window = Window.sliding(10, lateness=100)
    running = WindowedAggregate(STORE, window, AGGS, running_from=2)
    recomputed = WindowedAggregate(STORE, window, AGGS, running_from=10**9)
    a, b = MemoryState(), MemoryState()
    times = [*range(0, 21), 10, 20, 11, 21, 9, 30, 20, 31, 40, 30]
    for i, t in enumerate(times):
        v = (i * 7) % 5
        assert answers(running, a, [("k", t, v)]) == answers(recomputed, b, [("k", t, v)]), (i, t)
    assert running.running_answers > 20


class _Mean(Aggregation):
    """Written outside the module: no running form, so its keys are always recomputed."""

    def initial(self) -> list[float]:
        return [0.0, 0.0]

    def add(self, acc: list[float], value: Any) -> list[float]:
        return [acc[0] + value, acc[1] + 1]

    def result(self, acc: list[float]) -> float:
        return acc[0] / acc[1]


@pytest.mark.parametrize("aggs", [AGGS, {"n": Count(), "mean": _Mean()}], ids=["built-in", "plain-python"])
def test_a_flooded_key_keeps_its_newest_events_only(aggs: dict[str, Aggregation]) -> None:
    window = Window.sliding(10_000)
    agg = WindowedAggregate(STORE, window, aggs, max_events=50, running_from=4)
    state = MemoryState()
    for t in range(200):
        res = agg.update(state, "flood", t, float(t))
    assert res is not None
    assert res[0].values["n"] == 50  # the newest 50: 150..199
    if "sum" in aggs:
        assert res[0].values["sum"] == float(sum(range(150, 200)))
        assert res[0].values["min"] == 150.0
    else:
        assert res[0].values["mean"] == sum(range(150, 200)) / 50
    assert agg.evicted == 150
    assert len(state.get("w:flood")[0]) == 50


@pytest.mark.parametrize(("size", "lateness"), [(1_000, 40), (300, 600)])
def test_evicting_gives_the_same_answers_running_or_recomputed(size: int, lateness: int) -> None:
    stream = _hot_stream(random.Random(size), 4_000, 3, behind=lateness)
    window = Window.sliding(size, lateness=lateness)
    running = WindowedAggregate(STORE, window, AGGS, max_events=120, running_from=8, running_keys=2)
    recomputed = WindowedAggregate(STORE, window, AGGS, max_events=120, running_from=10**9)
    a, b = MemoryState(), MemoryState()
    for i, (key, t, v) in enumerate(stream):
        assert answers(running, a, [(key, t, v)]) == answers(recomputed, b, [(key, t, v)]), i
    assert running.evicted == recomputed.evicted > 0
    assert running.running_answers > 1_000


def test_running_aggregates_of_deleted_keys_and_closed_partitions_are_let_go() -> None:
    agg = WindowedAggregate(STORE, Window.sliding(1_000), AGGS, running_from=4)
    state, other = MemoryState(), MemoryState()
    for t in range(50):
        agg.update(state, "flood", t, float(t))
        agg.update(other, "flood", t, float(t))
    assert agg.running_now == 2
    # Time moves on past the flood's window: expire deletes it, and its running aggregates go.
    agg.update(state, "late", 100_000, 1.0)
    assert agg.expire(state) == 1
    assert agg.running_now == 1
    # The other partition is dropped (revoked): its entry goes at the next housekeeping.
    del other
    gc.collect()
    agg.expire(state)
    assert agg.running_now == 0


def test_more_hot_keys_than_slots_taking_turns_are_not_built_at_every_turn() -> None:
    agg = WindowedAggregate(STORE, Window.sliding(10**9), AGGS, running_from=8, running_keys=2)
    recomputed = WindowedAggregate(STORE, Window.sliding(10**9), AGGS, running_from=10**9)
    a, b = MemoryState(), MemoryState()
    rng = random.Random(3)
    turns = 0
    for t in range(6_000):
        key = f"k{t % 12}"  # twelve keys in turn, two slots
        v = rng.randrange(100)
        assert answers(agg, a, [(key, t, v)]) == answers(recomputed, b, [(key, t, v)])
        turns += 1
    # A slot changes hands at most once per 4 x 2 long updates: not at every one of the
    # ~5,900 turns of a key without a slot.
    assert agg.built <= 2 + turns // 8
    assert agg.running_answers > 0


@pytest.mark.parametrize("shape", ["a-nan-always-in-the-window", "all-out-of-order"])
def test_running_heaps_stay_bounded_when_no_answer_reads_them(shape: str) -> None:
    # Values taken out wait in the heaps until they reach the top; with no answer read from
    # the heaps (a NaN always in the window, or only out-of-order events, evicted past
    # max_events), they grew by one entry an event, for good.
    window = Window.sliding(1_000, lateness=10**7)
    agg = WindowedAggregate(STORE, window, AGGS, running_from=8, max_events=1_000)
    state = MemoryState()
    if shape == "all-out-of-order":
        for t in range(200):
            agg.update(state, "k", t, float(t))
        agg.update(state, "k", 10**7, 1.0)  # one event ahead: every later one is behind it
    for i in range(1, 20_001):
        if shape == "all-out-of-order":
            t, v = 200 + i, float(i % 97)
        else:
            t, v = i, float("nan") if i % 100 == 0 else float(i % 97)
        agg.update(state, "k", t, v)
    (run,) = agg._runs.values()
    assert run.live() <= 1_000
    assert len(run.mins) <= 2 * run.live() + 32
    assert len(run.maxs) <= 2 * run.live() + 32
    assert len(run.gone_min) <= len(run.mins)


def test_a_flooded_key_takes_a_slot_from_busy_keys_with_short_windows() -> None:
    window = Window.sliding(2_000)
    agg = WindowedAggregate(
        STORE, window, {"n": Count(), "d": DistinctCount()}, running_from=8, running_keys=4
    )
    state = MemoryState()
    busy = [f"busy-{n}" for n in range(4)]
    t = 0
    for i in range(200):  # four busy keys take the four slots
        t += 1
        agg.update(state, busy[i % 4], t, i % 50)
    for i in range(20_000):
        # Then a key floods: six events in ten, against one for each busy key, whose windows
        # stay six times shorter and which are each updated more often than the idle span.
        t += 1
        key = "flood" if i % 10 < 6 else busy[i % 10 - 6]
        agg.update(state, key, t, i % 50)
    assert (id(state), "w:flood") in agg._runs


def test_a_flooded_key_keeps_at_most_max_events_distinct_values_in_fixed_windows() -> None:
    # One key's distinct values in a tumbling window are one store entry, written whole at a
    # checkpoint: unbounded, a flood of distinct devices or addresses outgrew a changelog record.
    agg = WindowedAggregate(
        STORE, Window.tumbling(1_000), {"n": Count(), "d": DistinctCount()}, max_events=10
    )
    state = MemoryState()
    for t in range(25):
        res = agg.update(state, "flood", t, f"device-{t}")
    assert res is not None
    assert res[0].values == {"n": 25, "d": 10}  # every event counted; the first 10 values kept
    assert agg.capped == 15
    assert sorted(state.get("w:flood")["0"][1]) == sorted(f"device-{t}" for t in range(10))
    # A value the window holds already is no new one: counted, not capped.
    res = agg.update(state, "flood", 30, "device-3")
    assert res is not None
    assert res[0].values == {"n": 26, "d": 10}
    assert agg.capped == 15
    res = agg.update(state, "flood", 1_000, "device-99")
    assert res is not None
    assert res[0].values == {"n": 1, "d": 1}


def test_a_flooded_window_leaves_the_next_one_its_share() -> None:
    # With two seconds' lateness a key can have three one-second windows open at once: each
    # keeps a third of max_events, so a window flooded first does not take the next one's room.
    agg = WindowedAggregate(
        STORE, Window.tumbling(1_000, lateness=2_000), {"n": Count(), "d": DistinctCount()}, max_events=300
    )
    assert agg.distinct_share == 100
    state = MemoryState()
    for i in range(300):
        agg.update(state, "acct", i * 1_000 // 300, f"ip-{i}")
    for i in range(50):
        res = agg.update(state, "acct", 1_000 + i, f"other-{i}")
    assert res is not None
    assert [w.values for w in res] == [{"n": 50, "d": 50}]
    assert state.get("w:acct")["0"][0] == 300
    assert len(state.get("w:acct")["0"][1]) == 100


def test_hopping_windows_share_the_bound_on_distinct_values() -> None:
    # An event falls in two windows here, and there are two distinct counts: each keeps a
    # quarter of max_events per window, so the key's entry holds at most max_events in all.
    agg = WindowedAggregate(
        STORE, Window.hopping(4_000, 2_000), {"d": DistinctCount(), "e": DistinctCount()}, max_events=12
    )
    assert agg.distinct_share == 3
    state = MemoryState()
    for t in range(0, 20_000, 250):
        res = agg.update(state, "k", t, t)
        assert res is not None
        for w in res:
            assert w.values["d"] == w.values["e"] == min(3, (t - max(0, w.start_ms)) // 250 + 1), t
        held = sum(len(accs[0]) + len(accs[1]) for accs in state.get("w:k").values())
        assert held <= 12, t
    assert agg.capped > 0


def test_long_distinct_values_are_held_as_digests() -> None:
    agg = WindowedAggregate(STORE, Window.tumbling(60_000), {"d": DistinctCount()}, max_events=1_000)
    state = MemoryState()
    long = "x" * 300
    for i in range(2_000):  # differing in their last characters only
        agg.update(state, "k", 1_000, f"{long}{i}")
    res = agg.update(state, "k", 1_000, "short")
    assert res is not None
    assert res[0].values == {"d": 1_000}
    assert agg.capped == 1_001
    held = state.get("w:k")["0"][0]
    assert len(msgspec.msgpack.encode(held)) < 1_000 * 40  # 300 KB and more as the values were
    assert all(len(v) <= DISTINCT_BYTES for v in held)
    # A short value and a long one seen again are the same values, not new ones.
    agg2 = WindowedAggregate(STORE, Window.tumbling(60_000), {"d": DistinctCount()})
    state2 = MemoryState()
    for value in ("short", long, ["a" * 200], "short", long, ["a" * 200], "é" * 40, "€" * 40):
        res = agg2.update(state2, "k", 1_000, value)
    assert res is not None
    assert res[0].values == {"d": 5}
    kept = state2.get("w:k")["0"][0]
    assert "short" in kept
    assert "é" * 40 in kept  # 80 bytes: kept as it is
    assert "€" * 40 not in kept  # 120 bytes: a digest
    assert all(len(msgspec.msgpack.encode(v)) <= DISTINCT_BYTES + 2 for v in kept)
    state2.reload()
    res = agg2.update(state2, "k", 1_000, ["a" * 200])
    assert res is not None
    assert res[0].values == {"d": 5}


def capped_distinct(window: Window, stream: list[tuple[str, int, int]], share: int) -> tuple[list[Any], int]:
    """Each accepted event's windows' distinct counts when each window keeps ``share`` distinct
    values at most, in arrival order; and how many values were not kept."""
    held: dict[str, dict[int, set[int]]] = {}
    max_t: int | None = None
    out: list[Any] = []
    capped = 0
    for key, t, v in stream:
        wm = (t if max_t is None else max(max_t, t)) - window.lateness_ms
        last = t - t % window.step_ms
        starts = [s for s in range(last, t - window.size_ms, -window.step_ms) if s + window.size_ms > wm]
        if not starts:
            out.append(None)
            continue
        max_t = t if max_t is None else max(max_t, t)
        own = held.setdefault(key, {})
        counts = []
        for s in reversed(starts):
            vals = own.setdefault(s, set())
            if v not in vals:
                if len(vals) < share:
                    vals.add(v)
                else:
                    capped += 1
            counts.append(len(vals))
        out.append(counts)
    return out, capped


@settings(max_examples=150, deadline=None)
@given(
    window=st.one_of(
        st.builds(Window.tumbling, st.integers(1, 60), st.integers(0, 50)),
        st.integers(1, 60).flatmap(
            lambda size: st.builds(Window.hopping, st.just(size), st.integers(1, size), st.integers(0, 50))
        ),
    ),
    stream=events,
    share=st.integers(1, 6),
    extra=st.integers(0, 200),
)
def test_capped_distinct_counts_match_a_reference(
    window: Window, stream: list[tuple[str, int, int]], share: int, extra: int
) -> None:
    opened = -(-(window.size_ms + window.lateness_ms) // window.step_ms)
    max_events = max(2, opened * share + extra % opened)  # (at least 2: a sliding window's two events)
    agg = WindowedAggregate(STORE, window, AGGS, max_events=max_events)
    assert agg.distinct_share == max_events // opened
    got = answers(agg, MemoryState(), stream)
    want = reference(window, stream)
    distinct, capped = capped_distinct(window, stream, agg.distinct_share)
    assert [None if g is None else [w[2]["distinct"] for w in g] for g in got] == distinct
    assert agg.capped == capped

    # The other aggregations count every event, capped or not.
    def others(answers: list[Any]) -> list[Any]:
        return [
            None
            if a is None
            else [(lo, hi, {k: x for k, x in v.items() if k != "distinct"}) for lo, hi, v in a]
            for a in answers
        ]

    assert others(got) == others(want)


def test_distinct_counts_in_more_windows_than_max_events_can_share_are_refused() -> None:
    # A key of one-millisecond windows with a second's lateness has 1,000 open at once: 100
    # values cannot be shared out among them, and one each would outgrow the bound anyway.
    with pytest.raises(ValueError, match=r"1,000 windows open at once .* max_events \(100\)"):
        WindowedAggregate(STORE, Window.tumbling(1, lateness=999), {"d": DistinctCount()}, max_events=100)
    with pytest.raises(ValueError, match="2 distinct count"):
        WindowedAggregate(
            STORE, Window.hopping(4, 2), {"d": DistinctCount(), "e": DistinctCount()}, max_events=3
        )
    # Without a distinct count, or sliding, nothing to share.
    WindowedAggregate(STORE, Window.tumbling(1, lateness=999), {"n": Count()}, max_events=100)
    WindowedAggregate(STORE, Window.sliding(1, lateness=999), {"d": DistinctCount()}, max_events=100)


def test_every_distinct_count_keeps_its_own_share() -> None:
    agg = WindowedAggregate(
        STORE, Window.tumbling(1_000), {"d": DistinctCount(), "e": DistinctCount()}, max_events=6
    )
    state = MemoryState()
    for v in range(5):
        res = agg.update(state, "k", 1, v)
    assert res is not None
    assert res[0].values == {"d": 3, "e": 3}
    assert agg.capped == 4  # 2 values not kept, by each


def test_digests_count_what_python_counts_as_distinct() -> None:
    import hashlib

    agg = WindowedAggregate(STORE, Window.tumbling(60_000), {"d": DistinctCount()})
    long = "x" * 300

    def distinct(*values: Any) -> int:
        state = MemoryState()
        res = None
        for value in values:
            res = agg.update(state, f"k{len(values)}-{values!r}"[:50], 1_000, value)
        assert res is not None
        return int(res[0].values["d"])

    # Equal in Python, encoded differently: one value, long or short.
    assert distinct([1] * 100, [1.0] * 100, [True] * 100) == 1
    assert distinct([0.0] * 100, [-0.0] * 100) == 1
    assert distinct({"a": 1, "b": long}, {"b": long, "a": 1}) == 1
    assert distinct([1, {"a": [2.0], "b": long}], [1.0, {"b": long, "a": [True + 1]}]) == 1
    # A string shaped like the digest of another value is not that value.
    forged = "\x00#" + hashlib.blake2b(b"s" + long.encode(), digest_size=16).hexdigest()
    assert distinct(long, forged) == 2
    # Long strings and bytes of the same content are different values; at 96 bytes a value is
    # kept as it is, at 97 a digest.
    assert distinct(long, long.encode()) == 2
    state = MemoryState()
    for value in ("a" * DISTINCT_BYTES, "b" * (DISTINCT_BYTES + 1), b"c" * (DISTINCT_BYTES + 1)):
        agg.update(state, "edge", 1_000, value)
    kept = state.get("w:edge")["0"][0]
    assert "a" * DISTINCT_BYTES in kept
    assert not any(isinstance(v, bytes) or v.startswith("b") for v in kept)
    assert len(kept) == 3


def test_a_distinct_count_with_a_small_share_is_warned_of_and_so_is_its_first_capped_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A day hopping by a minute keeps 69 values a window: capped silently, a rule counting more
    # than 100 distinct IPs a day never fired, and nobody was told (found in review).
    caplog.set_level("WARNING", logger="vigil.stream.windows")
    agg = WindowedAggregate(StoreSpec("d", 1), Window.hopping("1d", "1m"), {"ips": DistinctCount()})
    assert agg.distinct_share == 69
    (made,) = [rec.getMessage() for rec in caplog.records]
    assert "each window's distinct count keeps at most 69 values" in made
    assert "raise max_events, or use a longer step or less lateness" in made
    caplog.clear()
    state = MemoryState()
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    for i in range(100):
        result = agg.update(state, "account-1", t0 + timedelta(milliseconds=30 * i), f"10.0.0.{i}")
    assert result is not None
    assert result[-1].values == {"ips": 69}
    assert agg.capped > 0
    (first,) = [rec.getMessage() for rec in caplog.records]  # (once, not per value)
    assert "reached its share (69 values) and counts no further" in first
    # A share this large is not warned of.
    caplog.clear()
    WindowedAggregate(StoreSpec("d", 1), Window.hopping("1h", "1m"), {"ips": DistinctCount()})
    assert caplog.records == []


@pytest.mark.parametrize(
    ("window", "opened"),
    [(lambda: Window.hopping("1d", "1s"), 86_400), (lambda: Window.tumbling("1s", lateness="1d"), 86_401)],
)
def test_a_window_a_key_would_have_too_many_of_open_at_once_is_refused(window: Any, opened: int) -> None:
    # A day hopping by a second: 86,400 windows updated by every event, 379 ms an event and a
    # 2.9 MB store entry (by a millisecond, 86 million).
    with pytest.raises(ValueError, match=f"would have {opened:,} windows open at once"):
        window()
    assert Window.hopping("1d", "10s").open_at_once == 8_640  # (allowed)
