"""The event-time alignment decision (no broker): who is paused, resumed, and what is released."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from vigil.stream.alignment import TP, Alignment

A: TP = ("a", 0)
B: TP = ("b", 0)
C: TP = ("c", 0)


def lags(**left: int | None) -> dict[TP, int | None]:
    return {(name, 0): n for name, n in left.items()}


def aligned(skew: float = 10.0, idle: float = 1.0, now: float = 0.0) -> Alignment:
    al = Alignment(skew, idle)
    al.add([A, B, C], now)
    return al


def plan(
    al: Alignment, now: float, lag: Callable[[TP], int | None], buffered: Callable[[TP], int] | None = None
) -> tuple[list[TP], list[TP], float]:
    """A pass as the application makes it: the limit, then (the release, and) the pauses."""
    release = al.limit(now, lag)
    return (*al.plan(release, buffered), release)


def test_a_partition_ahead_by_more_than_the_skew_is_paused_and_records_wait_for_the_slowest() -> None:
    al = aligned()
    al.observe(A, 100.0, 0.0)
    al.observe(B, 150.0, 0.0)
    al.observe(C, 105.0, 0.0)
    left = lags(a=5, b=5, c=5)
    pause, resume, release = plan(al, 0.1, left.get)
    assert pause == [B]
    assert resume == []
    assert release == 100.0  # only what the slowest partition has reached


def test_a_paused_partition_resumes_when_the_slowest_catches_up() -> None:
    al = aligned()
    al.observe(A, 100.0, 0.0)
    al.observe(B, 150.0, 0.0)
    al.observe(C, 200.0, 0.0)
    left = lags(a=5, b=5, c=5)
    pause, _, _ = plan(al, 0.1, left.get)
    al.paused(pause, 0.1)
    assert sorted(pause) == [B, C]
    al.observe(A, 145.0, 0.2)
    pause, resume, release = plan(al, 0.2, left.get)
    assert (pause, resume, release) == ([], [B], 145.0)


def test_partitions_at_their_end_hold_nobody_back() -> None:
    al = aligned()
    al.observe(A, 100.0, 0.0)
    al.observe(B, 5000.0, 0.0)
    al.observe(C, 5010.0, 0.0)
    pause, _, release = plan(al, 0.1, lags(a=0, b=7, c=7).get)
    assert pause == []
    assert release == 5000.0
    pause, _, release = plan(al, 0.1, lags(a=0, b=0, c=0).get)
    assert (pause, release) == ([], math.inf)


def test_a_partition_that_delivered_nothing_holds_the_others_until_it_goes_idle() -> None:
    al = aligned(idle=1.0, now=0.0)
    al.observe(A, 100.0, 0.5)
    al.observe(B, 100.0, 0.5)
    left = lags(a=5, b=5, c=None)  # C: unknown position and end
    pause, _, release = plan(al, 0.6, left.get)
    assert release == -math.inf
    assert sorted(pause) == [A, B]  # ahead of "the beginning of time"
    al.paused(pause, 0.6)
    # C idle (since the first record any partition delivered, A's at 0.5): its records left
    # unknown (the broker did not answer), it holds on, as a replay's backlog waiting its turn
    # would, up to ten times idle_s.
    assert plan(al, 1.5, left.get)[2] == -math.inf
    left[C] = 0  # nothing left: it holds nobody
    assert plan(al, 1.5, left.get)[2] == 100.0
    left[C] = None
    assert plan(al, 10.4, left.get)[2] == -math.inf
    pause, resume, release = plan(al, 10.5, left.get)
    assert (pause, sorted(resume), release) == ([], [A, B], 100.0)


def test_on_a_replay_a_partition_with_records_left_holds_the_others_past_idle_until_ten_times_it() -> None:
    # On a replay of 120 partitions the consumer fetched some while others wait their turn, up
    # to 1.9 s: a partition waiting stopped holding the others after idle_s, the floor passed
    # its backlog, and its records came out of event-time order (up to two hours behind).
    al = aligned(idle=1.0, now=0.0)
    al.clock = lambda: 100_000.0  # (the events, at 100-300, are a replay: far behind)
    al.observe(A, 100.0, 0.0)
    al.observe(B, 200.0, 0.0)
    al.observe(C, 300.0, 0.0)
    waiting = lags(a=1, b=0, c=5)
    assert plan(al, 0.5, waiting.get)[2] == 100.0
    al.observe(C, 300.0, 1.5)  # C delivers; A and B deliver nothing
    assert plan(al, 2.0, waiting.get)[2] == 100.0  # A: one left, on a replay: holds
    waiting[A] = 0
    assert plan(al, 2.0, waiting.get)[2] == 300.0  # at its end: idle, as before
    waiting[A] = None
    # Unknown (a question without answer): it holds too.  Taken for nothing left, the backlogs of
    # partitions never asked held nobody and came out of order (found in review).
    assert plan(al, 2.0, waiting.get)[2] == 100.0
    waiting[A] = 5_000
    al.observe(C, 300.0, 9.5)
    assert plan(al, 9.9, waiting.get)[2] == 100.0
    assert plan(al, 10.0, waiting.get)[2] == 300.0  # but not past ten times idle_s


def test_live_a_partition_with_records_left_stops_holding_after_idle_as_before() -> None:
    # Its latest event recent: records left are another producer's transaction open on it (or a
    # partition that cannot be fetched).  Held ten times idle_s, a producer that crashed with a
    # transaction of 150 records open delayed live records up to 9.5 s (found in review).
    al = aligned(idle=1.0, now=0.0)
    al.clock = lambda: 1_000.0
    al.observe(A, 990.0, 0.0)
    al.observe(B, 995.0, 1.5)
    al.observe(C, 996.0, 1.5)
    waiting = lags(a=150, b=0, c=0)
    assert plan(al, 0.5, waiting.get)[2] == 990.0
    assert plan(al, 2.0, waiting.get)[2] == math.inf  # idle: holds nobody back
    al.clock = lambda: 990.0 + 301.0  # the same, once its latest event is five minutes old
    assert plan(al, 2.0, waiting.get)[2] == 990.0


def test_a_partition_restoring_at_the_start_holds_the_others_however_long_until_it_runs() -> None:
    # The partitions restored first released their whole backlog while it restored (it was no
    # lane yet), and a GroupBy re-keyed their later records before its earlier ones.
    al = Alignment(10.0, 1.0)
    al.add([A, B], 0.0)
    al.add([C], 0.0, restoring=True)
    al.observe(A, 100.0, 0.5)
    al.observe(B, 100.0, 0.5)
    assert plan(al, 60.0, lags(a=0, b=0, c=5).get)[2] == -math.inf
    # With nothing to read it holds nobody back (live traffic waited for the whole restore).
    assert plan(al, 60.0, lags(a=0, b=0, c=0).get)[2] == math.inf
    al.add([C], 60.0)  # restored: it runs, and holds as any partition does: having delivered
    # nothing, with records left, up to ten times idle_s beside a backlog far behind (a replay) ...
    assert plan(al, 61.5, lags(a=3, b=0, c=5).get)[2] == -math.inf
    assert plan(al, 70.0, lags(a=3, b=0, c=5).get)[2] == math.inf
    # ... and as long beside partitions far behind that have no records left: a restart's first
    # partitions buffer their whole backlog while the last restores (judged by the partitions
    # with records left alone, it stopped holding after idle_s: found in review) ...
    al.add([C], 80.0)
    assert plan(al, 81.5, lags(a=0, b=0, c=5).get)[2] == -math.inf
    assert plan(al, 90.0, lags(a=0, b=0, c=5).get)[2] == math.inf
    # ... but up to idle_s beside live partitions.
    al.clock = lambda: 200.0  # (A's and B's latest events, at 100, are recent)
    al.add([C], 95.0)
    assert plan(al, 95.5, lags(a=0, b=0, c=5).get)[2] == -math.inf
    assert plan(al, 96.5, lags(a=0, b=0, c=5).get)[2] == math.inf


def test_forgotten_partitions_no_longer_count() -> None:
    al = aligned()
    al.observe(A, 0.0, 0.0)
    al.observe(B, 100.0, 0.0)
    al.remove([A, C])
    assert plan(al, 0.1, lags(b=5).get) == ([], [], 100.0)


@pytest.mark.parametrize(("skew", "idle"), [(-1.0, 1.0), (math.inf, 1.0), (math.nan, 1.0), (1.0, 0.0)])
def test_bad_parameters_are_refused(skew: float, idle: float) -> None:
    with pytest.raises(ValueError, match="skew_s >= 0 and idle_s > 0"):
        Alignment(skew, idle)


def test_a_partition_ahead_is_paused_only_once_its_buffer_is_full() -> None:
    al = Alignment(10.0, 1.0, max_buffered=100)
    al.add([A, B], 0.0)
    al.observe(A, 100.0, 0.0)
    al.observe(B, 150.0, 0.0)
    left = lags(a=5, b=5)
    waiting = {A: 0, B: 99}
    pause, _, release = plan(al, 0.1, left.get, waiting.__getitem__)
    assert (pause, release) == ([], 100.0)  # ahead, but few records wait: keep reading
    waiting[B] = 100
    pause, _, _ = plan(al, 0.1, left.get, waiting.__getitem__)
    assert pause == [B]
    al.paused(pause, 0.1)
    waiting[B] = 51
    assert plan(al, 0.2, left.get, waiting.__getitem__)[1] == []  # still ahead and half full
    waiting[B] = 50
    assert plan(al, 0.2, left.get, waiting.__getitem__)[1] == [B]  # drained to half: read on


def test_a_partition_within_the_skew_is_paused_once_it_buffers_four_times_the_bound() -> None:
    # Within the skew it was never paused, however much it buffered: a dense topic replayed
    # beside a slow one buffered its whole skew's worth (60 s of it, at detection's skew).
    al = Alignment(10.0, 1.0, max_buffered=100)
    al.add([A, B], 0.0)
    al.observe(A, 100.0, 0.0)
    al.observe(B, 105.0, 0.0)  # within the skew
    left = lags(a=5, b=5)
    waiting = {A: 0, B: 399}
    pause, _, release = plan(al, 0.1, left.get, waiting.__getitem__)
    assert (pause, release) == ([], 100.0)
    waiting[B] = 400
    pause, _, _ = plan(al, 0.1, left.get, waiting.__getitem__)
    assert pause == [B]
    al.paused(pause, 0.1)
    waiting[B] = 201
    assert plan(al, 0.2, left.get, waiting.__getitem__)[1] == []  # not yet drained to half the cap
    waiting[B] = 200
    assert plan(al, 0.2, left.get, waiting.__getitem__)[1] == [B]


def test_the_partition_that_sets_the_floor_is_never_paused_for_its_buffer() -> None:
    # A release the operators' pace keeps short may leave the floor's own partition a whole fetch
    # (500 records against a cap of 400), all of it to be released next.  (Counted before the
    # release, it was paused, and resumed at the next plan, again and again: the partition the
    # replay waits for.)
    al = Alignment(10.0, 1.0, max_buffered=100)
    al.add([A, B], 0.0)
    al.observe(A, 100.0, 0.0)
    al.observe(B, 105.0, 0.0)
    waiting = {A: 500, B: 0}
    pause, _, release = plan(al, 0.1, lags(a=5, b=5).get, waiting.__getitem__)
    assert (pause, release) == ([], 100.0)


@pytest.mark.parametrize("sizes", [[3000] * 10, [3000] * 10 + [60, 60]], ids=["dense", "dense-and-sparse"])
def test_a_replay_whose_partitions_wait_their_turn_for_a_fetch_is_released_in_order(sizes: list[int]) -> None:
    # The consumer fetches one partition a tick, in turn: each waits about two seconds, four
    # times idle_s.  Each partition stopping to hold the others after idle_s, 20,704 records
    # came out of order, up to 2,843 s behind; the sparse ones' too (found in review).
    rng = random.Random(1)
    data = {("t", p): sorted(rng.uniform(0, 20_000) for _ in range(n)) for p, n in enumerate(sizes)}
    pos = dict.fromkeys(data, 0)
    buffers: dict[TP, list[float]] = {tp: [] for tp in data}
    al = Alignment(60.0, 0.5, 1000)
    al.add(data, 0.0)
    now, turn = 0.0, 0
    released: list[float] = []
    while any(pos[tp] < len(data[tp]) for tp in data) or any(buffers.values()):
        now += 0.2
        assert now < 10_000, "stalled"
        order = [tp for tp in data if not al.lanes[tp].paused and pos[tp] < len(data[tp])]
        if order:
            tp = order[turn % len(order)]
            turn += 1
            got = data[tp][pos[tp] : pos[tp] + 400]
            pos[tp] += len(got)
            buffers[tp].extend(got)
            al.observe(tp, got[-1], now)
        release = al.limit(now, lambda tp: len(data[tp]) - pos[tp])
        out = [t for tp in data for t in buffers[tp] if t <= release]
        for tp in data:
            buffers[tp] = [t for t in buffers[tp] if t > release]
        released += sorted(out)
        pause, resume = al.plan(release, lambda tp: len(buffers[tp]))
        al.paused(pause, now)
        al.resumed(resume, now)
    assert len(released) == sum(sizes)
    assert released == sorted(released)


def test_idle_time_counts_from_the_first_record_any_partition_delivered() -> None:
    # Until then the consumer delivered nothing at all (librdkafka waits for every committed
    # offset to be stable, another producer's transaction open on one: 30 s or more), and counted
    # from the assignment every partition was idle past ten times idle_s by the first record: the
    # replay came out of order (615,768 of 624,780 records on 120 partitions, found in review).
    al = aligned(skew=60.0, idle=1.0, now=0.0)
    al.clock = lambda: 100_000.0  # (a replay)
    left = lags(a=100, b=100, c=100)
    assert plan(al, 30.0, left.get)[2] == math.inf  # (nothing delivered: nothing to release)
    al.observe(A, 100.0, 30.0)
    assert plan(al, 31.0, left.get)[2] == -math.inf  # B and C wait their turn for a fetch
    al.observe(A, 100.0, 39.5)
    assert plan(al, 39.9, left.get)[2] == -math.inf
    assert plan(al, 40.0, left.get)[2] == 100.0  # (ten times idle_s from A's first record)


def test_a_partition_taken_over_while_the_others_run_live_stops_holding_after_idle() -> None:
    # It has delivered nothing yet, and its records left are not known (its committed offset in
    # a crashed member's open transaction): taken for a replay, it held live traffic ten times
    # idle_s (30 s at idle_s 3, found in review).  Beside partitions running live, it is live.
    al = Alignment(60.0, 1.0)
    al.clock = lambda: 1_000.0
    al.add([A, B], 0.0)
    al.observe(A, 999.0, 4.9)
    al.observe(B, 999.5, 4.9)
    al.add([C], 5.0)  # (taken over)
    left = lags(a=0, b=0, c=None)
    assert plan(al, 5.5, left.get)[2] == -math.inf  # within idle_s it holds, as before
    al.observe(A, 999.2, 5.9)
    al.observe(B, 999.7, 5.9)
    assert plan(al, 6.0, left.get)[2] == math.inf  # idle: live, it holds nobody
    # Beside a partition replaying (a backlog far behind), it is a replay, and holds up to ten
    # times idle_s; beside one far behind but caught up (a delayed source, say), it is live.
    al.clock = lambda: 100_000.0
    assert plan(al, 6.0, left.get)[2] == math.inf
    left[A] = 5
    assert plan(al, 6.0, left.get)[2] == -math.inf


def test_a_replay_partition_waiting_its_turn_holds_a_backlog_not_read_yet_beside_live_traffic() -> None:
    # Only the live topic delivering while the replay's partitions wait their turn for a fetch,
    # the replay's partition that had delivered nothing yet was taken for live (found in review).
    wall = 1_000_000.0
    al = Alignment(60.0, 0.2)
    al.clock = lambda: wall
    bench0, bench1, live = ("bench", 0), ("bench", 1), ("live", 0)
    al.add([bench0, bench1, live], 95.0)
    al.observe(bench0, wall - 86_400, 99.5)
    al.observe(live, wall - 0.1, 100.0)
    left = {bench0: 500, bench1: 1000, live: 0}
    assert al.limit(100.0, left.get) == -math.inf  # bench1 holds (it has read nothing yet)


def test_a_replay_started_beside_a_live_partition_still_holds_for_its_backlogs() -> None:
    # Taken for live as soon as one partition delivering was (a live topic read beside a
    # replayed one), the replay's partitions waiting their turn for a fetch stopped holding after
    # idle_s, and their backlogs came out of order (52,003-72,305 records at idle_s 0.2).
    wall = 1_796_450_000.0
    al = Alignment(60.0, 1.0)
    al.clock = lambda: wall
    al.add([A, B, C], 0.0)
    left = lags(a=0, b=100, c=100)
    for now in (0.5, 1.0, 1.6, 5.0, 9.0):
        al.observe(A, wall - 1.0, now)  # live
        al.observe(B, 1_767_225_650.0, now)  # B's backlog, on 2026-01-01
        assert plan(al, now, left.get)[2] == -math.inf  # C (nothing delivered yet) holds
    al.observe(A, wall - 1.0, 10.6)
    al.observe(B, 1_767_225_650.0, 10.6)
    assert plan(al, 10.6, left.get)[2] == 1_767_225_650.0  # (ten times idle_s)
