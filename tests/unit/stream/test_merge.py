"""The runtime's merge of co-partitioned runs: exactly what ``heapq.merge`` gives, run order kept."""

from __future__ import annotations

import heapq
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from vigil.stream.app import _merged
from vigil.stream.base import Record

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _run(run: int, seconds: list[int]) -> list[Record[Any]]:
    # Few distinct times, so that ties (across runs and within one) are common.
    return [
        Record(SimpleNamespace(occurred_at=T0 + timedelta(seconds=s)), f"t{run}", 0, offset, None, 0)
        for offset, s in enumerate(seconds)
    ]


def _reference(runs: list[list[Record[Any]]]) -> list[Record[Any]]:
    return list(heapq.merge(*runs, key=lambda r: r.event.occurred_at))


@given(st.lists(st.lists(st.integers(0, 6), max_size=12).map(sorted), min_size=1, max_size=9))
def test_sorted_runs_merge_as_heapq_does(seconds: list[list[int]]) -> None:
    runs = [_run(i, s) for i, s in enumerate(seconds)]
    got = _merged(runs)
    assert [(r.topic, r.offset) for r in got] == [(r.topic, r.offset) for r in _reference(runs)]
    times = [r.event.occurred_at for r in got]
    assert times == sorted(times)


@given(st.lists(st.lists(st.integers(0, 6), max_size=12), min_size=1, max_size=9))
def test_unsorted_runs_keep_their_own_order(seconds: list[list[int]]) -> None:
    """A run out of event-time order (a late record within a partition) is merged, not sorted:
    each run's records come out in the order they came in, as heapq.merge leaves them."""
    runs = [_run(i, s) for i, s in enumerate(seconds)]
    got = _merged(runs)
    assert [(r.topic, r.offset) for r in got] == [(r.topic, r.offset) for r in _reference(runs)]
    for i in range(len(runs)):
        offsets = [r.offset for r in got if r.topic == f"t{i}"]
        assert offsets == sorted(offsets)


def test_one_run_is_returned_as_is_and_none_is_empty() -> None:
    run = _run(0, [3, 1, 2])
    assert _merged([run]) is run
    assert _merged([]) == []
