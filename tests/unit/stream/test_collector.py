"""The collector tuning: raised while any stream runs, put back by the last one out."""

from __future__ import annotations

import gc
import threading

from vigil.stream.collector import collecting_rarely


def test_the_threshold_is_raised_inside_and_put_back_after() -> None:
    before = gc.get_threshold()
    with collecting_rarely(12_345):
        assert gc.get_threshold()[0] == 12_345
    assert gc.get_threshold() == before


def test_overlapping_blocks_keep_it_raised_until_the_last_one_leaves() -> None:
    # Two applications on threads of one process: the first to finish must not lower it
    # under the other.
    before = gc.get_threshold()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[int] = []

    def first() -> None:
        with collecting_rarely(40_000):
            first_in.set()
            second_in.wait(5)
        first_out.set()

    worker = threading.Thread(target=first)
    worker.start()
    assert first_in.wait(5)
    with collecting_rarely(40_000):
        second_in.set()
        assert first_out.wait(5)
        seen.append(gc.get_threshold()[0])
    worker.join(5)
    assert seen == [40_000]
    assert gc.get_threshold() == before


def test_none_leaves_the_collector_alone() -> None:
    before = gc.get_threshold()
    with collecting_rarely(None):
        assert gc.get_threshold() == before
