"""The stores' keys counted for their gauge: in turn, by shares, paced by what turns take."""

from __future__ import annotations

from pathlib import Path

from vigil.stream.base import StoreSpec
from vigil.stream.keycount import KEYS_SHARE, KeyCounter
from vigil.stream.state import RocksState


def store(path: Path, keys: int) -> RocksState:
    state = RocksState(path, StoreSpec("s", 1))
    for k in range(keys):
        state.set(f"k{k:06d}", k)
    state.write_committed(state.take_pending(), 0)
    return state


def test_stores_are_counted_in_turn_a_large_one_over_several_turns(tmp_path: Path) -> None:
    small, empty, large = store(tmp_path / "a", 5), store(tmp_path / "b", 0), store(tmp_path / "c", 2_500)
    said: dict[str, int] = {}
    stores = [
        (s, lambda n, name=name: said.__setitem__(name, n))
        for name, s in (("a", small), ("b", empty), ("c", large))
    ]
    counter = KeyCounter(at_most_pct=100)  # (no wait between turns)
    assert counter.turn(stores)
    # The small ones whole; the large one by its share, its gauge not said before its pass ends.
    assert said == {"a": 5, "b": 0}
    while "c" not in said:
        assert counter.turn(stores)
    assert said["c"] == 2_500
    assert large.key_count == 2_500
    for state in (small, empty, large):
        state.close()


def test_turns_are_paced_by_what_they_take(tmp_path: Path) -> None:
    # Keys written and deleted between two checkpoints leave deletions RocksDB steps over, however
    # few keys it holds (a review measured 20 ms a store, each time): the next turn waits.
    state = store(tmp_path / "s", 5)
    for k in range(KEYS_SHARE * 30):
        state.set(f"w{k}", 1)
        state.delete(f"w{k}")
    state.write_committed(state.take_pending(), 1)
    said: list[int] = []
    counter = KeyCounter(at_most_pct=1)
    assert counter.turn([(state, said.append)])
    assert said == [5]
    assert not counter.turn([(state, said.append)])  # (due after 99 times what the turn took)
    assert said == [5]
    state.close()
