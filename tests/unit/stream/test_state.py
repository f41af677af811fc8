"""RocksDB-backed state: pending writes, committed writes with the changelog offset, reopen."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from vigil.stream.base import StoreSpec
from vigil.stream.state import RocksState


class Velocity(msgspec.Struct):
    n: int
    total: float


def test_pending_writes_are_visible_but_not_durable_until_committed(tmp_path: Path) -> None:
    spec = StoreSpec("s", 1)
    state = RocksState(tmp_path / "db", spec)
    state.set("a", 1)
    state.set("b", {"x": [1, 2]})
    state.delete("a")
    assert state.get("a") is None
    assert state.get("b") == {"x": [1, 2]}
    assert "b" in state
    pending = state.take_pending()
    assert sorted(k for k, _ in pending) == [b"a", b"b"]
    assert dict(pending)[b"a"] is None  # a delete travels as a tombstone
    state.close()
    # Nothing was committed: a reopened store is empty and has no changelog offset.
    again = RocksState(tmp_path / "db", spec)
    assert again.get("b") is None
    assert again.changelog_offset() is None
    again.close()


def test_committed_writes_and_offset_survive_reopen(tmp_path: Path) -> None:
    spec = StoreSpec("s", 1, value_type=Velocity)
    state = RocksState(tmp_path / "db", spec)
    state.set("acct-1", Velocity(3, 12.5))
    state.set("acct-2", Velocity(1, 1.0))
    state.write_committed(state.take_pending(), 42)
    state.delete("acct-2")
    state.write_committed(state.take_pending(), 43)
    state.close()
    again = RocksState(tmp_path / "db", spec)
    assert again.get("acct-1") == Velocity(3, 12.5)  # the declared type comes back
    assert again.get("acct-2") is None
    assert again.changelog_offset() == 43
    assert list(again.items()) == [("acct-1", Velocity(3, 12.5))]
    again.close()


def test_items_merges_committed_and_pending_in_key_order_by_prefix(tmp_path: Path) -> None:
    state = RocksState(tmp_path / "db", StoreSpec("s"))
    for key in ("w:b", "w:d", "x:a"):
        state.set(key, key)
    state.write_committed(state.take_pending(), 1)
    state.set("w:a", "new")
    state.set("w:d", "changed")
    state.delete("w:b")
    assert list(state.items("w:")) == [("w:a", "new"), ("w:d", "changed")]
    assert [k for k, _ in state.items()] == ["w:a", "w:d", "x:a"]
    state.discard_pending()
    assert list(state.items("w:")) == [("w:b", "w:b"), ("w:d", "w:d")]
    state.close()


def test_cache_is_only_dropped_once_rocksdb_has_every_taken_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("vigil.stream.state.CACHE_LIMIT", 3)
    state = RocksState(tmp_path / "db", StoreSpec("s"))
    for i in range(5):
        state.set(f"k{i}", i)
    first = state.take_pending()
    for i in range(5):
        state.set(f"k{i}", i + 100)
    state.delete("k4")
    second = state.take_pending()
    state.set("k0", -1)  # not taken yet
    # The first batch is durable, the second is still on its way to Kafka: nothing may be forgotten.
    state.write_committed(first, 10)
    assert [state.get(f"k{i}") for i in range(5)] == [-1, 101, 102, 103, None]
    state.write_committed(second, 20)
    assert [state.get(f"k{i}") for i in range(5)] == [-1, 101, 102, 103, None]
    assert state.changelog_offset() == 20
    state.close()
