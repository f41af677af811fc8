"""The collector while a stream runs: young objects in steps, survivors frozen, put back after."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Iterator

import pytest

from vigil.stream.collector import Collector, collecting_young


class Node:
    """An object that can sit in a reference cycle (and be watched through a weak reference)."""

    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    """A two-node reference cycle nothing else refers to: only a cyclic collection frees it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture(autouse=True)
def _collector_as_found() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()


def test_automatic_collection_is_off_inside_and_back_after() -> None:
    assert gc.isenabled()
    with collecting_young(1_000):
        assert not gc.isenabled()
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_a_step_collects_young_garbage_and_freezes_the_survivors() -> None:
    with collecting_young(1_000) as collector:
        dead = cycle()
        alive = [Node() for _ in range(1_500)]  # over the young limit
        assert dead() is not None  # automatic collection is off
        took = collector.step()
        assert took > 0
        assert dead() is None
        assert gc.get_count()[0] < 1_000
        assert gc.get_freeze_count() >= len(alive)
        assert collector.collections == 1


def test_a_step_under_the_limit_does_nothing() -> None:
    with collecting_young(1_000_000) as collector:
        dead = cycle()
        assert collector.step() == 0.0
        assert dead() is not None
        assert collector.collections == 0
    gc.collect()
    assert dead() is None


def test_a_cycle_that_survived_young_is_freed_by_the_full_collection_when_idle() -> None:
    with collecting_young(1_000, full_every_s=30.0) as collector:
        a, b = Node(), Node()
        a.other, b.other = b, a
        watch = weakref.ref(a)
        kept = [Node() for _ in range(1_500)]  # alive: the young count passes the limit
        collector.step()  # a and b survive (still referenced here) and are frozen
        assert collector.collections == 1
        del a, b
        kept += [Node() for _ in range(1_500)]
        collector.step()  # young only: the frozen cycle stays (the documented trade-off)
        assert collector.collections == 2
        assert watch() is not None
        now = time.monotonic()
        collector.step(idle=False, now=now + 31)  # busy: no full collection yet
        assert watch() is not None
        collector.step(idle=True, now=now + 31)
        assert watch() is None
        assert gc.get_freeze_count() > 0  # frozen again after the full collection


def test_a_full_collection_comes_after_ten_periods_even_when_busy() -> None:
    with collecting_young(1_000_000, full_every_s=30.0) as collector:
        a, b = Node(), Node()
        a.other, b.other = b, a
        watch = weakref.ref(a)
        gc.freeze()
        del a, b
        collector.step(idle=False, now=collector.last_full + 299)  # from its clock, not now
        assert watch() is not None
        collector.step(idle=False, now=collector.last_full + 301)
        assert watch() is None


def test_overlapping_blocks_keep_it_off_until_the_last_one_leaves() -> None:
    # Two applications on threads of one process: the first to finish must not turn automatic
    # collection back on (nor unfreeze) under the other.
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def first() -> None:
        with collecting_young(1_000):
            first_in.set()
            second_in.wait(5)
        first_out.set()

    worker = threading.Thread(target=first)
    worker.start()
    assert first_in.wait(5)
    with collecting_young(1_000):
        second_in.set()
        assert first_out.wait(5)
        seen.append(gc.isenabled())
    worker.join(5)
    assert seen == [False]
    assert gc.isenabled()


def test_automatic_collection_left_off_stays_off() -> None:
    gc.disable()
    with collecting_young(1_000):
        pass
    assert not gc.isenabled()


def test_none_leaves_the_collector_alone() -> None:
    with collecting_young(None) as collector:
        assert gc.isenabled()
        [Node() for _ in range(2_000)]
        assert collector.step(idle=True, now=time.monotonic() + 10_000) == 0.0
    assert gc.isenabled()


def test_the_young_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive or None; got 0"):
        Collector(0)
