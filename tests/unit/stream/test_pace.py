"""Pace: checkpoint work handed out evenly over wall time."""

from __future__ import annotations

import pytest

from vigil.stream.pace import Pace


def test_items_are_handed_out_at_the_rate_of_the_span() -> None:
    pace = Pace()
    pace.spread(1000, 2.0, now=10.0)  # 500 per second
    assert pace.take(10.5) == 250
    assert pace.take(11.0) == 250
    assert pace.take(12.0) == 500


def test_fractions_carry_over_so_short_iterations_add_up_to_the_same_total() -> None:
    pace = Pace()
    pace.spread(100, 1.0, now=0.0)  # one item every 10 ms
    taken = [pace.take(t / 1000) for t in range(3, 1001, 3)]  # an iteration every 3 ms
    # Each iteration gets at least one; the total is what the rate allows, plus those minimums.
    assert all(n >= 1 for n in taken)
    assert 100 <= sum(taken) <= 100 + len(taken)
    assert sum(n for n in taken if n > 1) == 0  # never more than is due: 0.3 items per iteration


def test_a_backlog_always_moves_even_when_no_time_passed() -> None:
    pace = Pace()
    pace.spread(10, 5.0, now=1.0)
    assert pace.take(1.0) == 1
    assert pace.take(0.5) == 1  # a clock going back adds nothing and takes nothing away


def test_respreading_sets_the_rate_for_everything_waiting() -> None:
    pace = Pace()
    pace.spread(100, 1.0, now=0.0)
    assert pace.take(0.5) == 50
    pace.spread(150, 0.5, now=0.5)  # 50 left and 100 more: 300 per second now
    assert pace.take(0.75) == 75


def test_a_span_must_be_positive() -> None:
    with pytest.raises(ValueError, match="span of time > 0"):
        Pace().spread(10, 0.0, now=0.0)
