"""RocksDB-backed state: pending writes, committed writes with the changelog offset, reopen."""

from __future__ import annotations

import re
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any
from unittest.mock import patch

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rocksdict import Options, Rdict

from vigil.errors import PipelineError
from vigil.stream.base import StoreSpec
from vigil.stream.state import RocksState, StoreLocked
from vigil.testing import MemoryState

SPEC = StoreSpec("s", 1)


class Velocity(msgspec.Struct):
    n: int
    total: float


#: Run by another Python process: opens the store named by argv[1] and holds it until stdin closes.
HOLD_STORE = """
import sys
from rocksdict import Rdict
db = Rdict(sys.argv[1])
print("open", flush=True)
sys.stdin.read()
db.close()
"""


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


def test_a_store_open_in_another_process_is_refused_naming_it_and_opens_once_closed(tmp_path: Path) -> None:
    spec = StoreSpec("s", 1)
    first = RocksState(tmp_path / "db", spec)
    first.set("k", 1)
    first.write_committed(first.take_pending(), 1)
    first.close()
    # Another process holds the store until its stdin closes.
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_STORE, str(tmp_path / "db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdin is not None
        assert holder.stdout is not None
        try:
            assert holder.stdout.readline().strip() == "open"
            with pytest.raises(StoreLocked, match=re.escape(str(tmp_path / "db"))):
                RocksState(tmp_path / "db", spec)
        finally:
            holder.stdin.close()
            holder.wait(30)
    again = RocksState(tmp_path / "db", spec)
    assert again.get("k") == 1
    again.close()


def test_a_store_open_twice_in_one_process_is_refused_too(tmp_path: Path) -> None:
    first = RocksState(tmp_path / "db", StoreSpec("s", 1))
    with pytest.raises(StoreLocked, match="is open elsewhere"):
        RocksState(tmp_path / "db", StoreSpec("s", 1))
    first.close()


def test_other_errors_opening_a_store_are_not_taken_for_a_lock(tmp_path: Path) -> None:
    # A path with "lock" in it, and a file where the store's directory should be.
    (tmp_path / "blocked").write_text("not a directory")
    with pytest.raises(Exception) as caught:  # noqa: PT011  # whatever RocksDB raises, but not StoreLocked
        RocksState(tmp_path / "blocked", StoreSpec("s", 1))
    assert not isinstance(caught.value, StoreLocked)


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
    before = state.generation()
    state.discard_pending()
    assert list(state.items("w:")) == [("w:b", "w:b"), ("w:d", "w:d")]
    # Operators that keep something built from the state (vectorised windows) see it went back.
    assert state.generation() != before
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


def test_the_cache_stays_bounded_while_checkpoints_are_always_on_their_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At-least-once under steady load: by the time RocksDB gets a seal's writes the next seal is
    # on its way, so RocksDB never had every batch, and the cache (trimmed only then) kept every
    # key ever read or written.  Now what RocksDB has is forgotten, batches on their way or not.
    monkeypatch.setattr("vigil.stream.state.CACHE_LIMIT", 20)
    state = RocksState(tmp_path / "db", StoreSpec("s"))
    queued: list[list[tuple[bytes, bytes | None]]] = []
    sizes = []
    for round_ in range(40):
        for i in range(5):
            assert state.get(f"new-{round_}-{i}") is None  # a first sighting, remembered as absent
            state.set(f"new-{round_}-{i}", round_)
        state.set("hot", round_)
        if round_ % 7 == 3:
            state.delete(f"new-{round_ - 1}-0")
        state.seal()
        queued.append(state.encode_sealed())
        if len(queued) == 2:  # the older seal reaches RocksDB while the newer one is on its way
            state.write_committed(queued.pop(0), round_)
        sizes.append(len(state._cache))  # (what the cache holds is not part of the State API)
    assert max(sizes) <= 20 + 2 * 6 + 6  # the limit, the batches on their way, one round's misses
    state.write_committed(queued.pop(0), 40)
    for round_ in range(40):
        for i in range(5):
            gone = i == 0 and (round_ + 1) % 7 == 3
            assert state.get(f"new-{round_}-{i}") == (None if gone else round_)
    assert state.get("hot") == 39
    state.close()


def test_a_seal_encodes_values_as_they_were_when_sealed_however_late(tmp_path: Path) -> None:
    state = RocksState(tmp_path / "db", StoreSpec("s"))
    for key in ("a", "b", "c", "d", "e"):
        state.set(key, [1])
    assert state.seal() == 5
    assert state.pending_count == 0
    # After the seal, before encoding: changed in place (get, then set), replaced, deleted, or only read.
    value = state.get("a")
    value.append(2)
    state.set("a", value)
    state.set("b", [9])
    state.delete("c")
    assert state.get("d") == [1]
    first = state.encode_sealed(2)
    rest = state.encode_sealed(None)
    assert state.sealed_count == 0
    decode = msgspec.msgpack.decode
    sealed = {key: None if raw is None else decode(raw) for key, raw in first + rest}
    assert sealed == {b"a": [1], b"b": [1], b"c": [1], b"d": [1], b"e": [1]}  # each once, as at the seal
    # The changes after the seal are the next checkpoint's, and reads see them.
    assert state.pending_count == 3
    assert (state.get("a"), state.get("b"), state.get("c")) == ([1, 2], [9], None)
    pending = {key: None if raw is None else decode(raw) for key, raw in state.take_pending()}
    assert pending == {b"a": [1, 2], b"b": [9], b"c": None}
    state.close()


def test_a_seal_encodes_values_handed_out_by_items_and_walk_as_they_were_when_sealed(tmp_path: Path) -> None:
    # An operator may change a value it walked over in place and set it, as after a get: the
    # change is the next checkpoint's, not the sealed one's (whose input offsets a replay after a
    # crash starts from, which would count it twice).
    state = RocksState(tmp_path / "db", StoreSpec("s"))
    for key in ("a", "b", "c"):
        state.set(key, [1])
    state.write_committed(state.take_pending(), 1)  # b and c in RocksDB: walk reads them there
    state.set("a", [1])
    state.set("b", [1])
    state.set("c", [1])
    state.set("d", [1])  # only in the cache, and sealed
    state.seal()
    for key, value in state.items():
        if key in ("a", "d"):
            value.append(2)
            state.set(key, value)
    for key, value in state.walk("", None, 10):
        if key in ("b", "c"):
            value.append(3)
            state.set(key, value)
    decode = msgspec.msgpack.decode
    sealed = {key: None if raw is None else decode(raw) for key, raw in state.encode_sealed()}
    assert sealed == {b"a": [1], b"b": [1], b"c": [1], b"d": [1]}
    pending = {key: None if raw is None else decode(raw) for key, raw in state.take_pending()}
    assert pending == {b"a": [1, 2], b"b": [1, 3], b"c": [1, 3], b"d": [1, 2]}
    state.close()


class Held(msgspec.Struct, weakref=True):
    n: int


def test_a_closed_store_lets_go_of_its_cached_values(tmp_path: Path) -> None:
    # A closed store may still be held a while (by a window, until it next claims a partition):
    # its cache, up to CACHE_LIMIT values, went with it only once it was let go.
    state = RocksState(tmp_path / "db", StoreSpec("s"))
    value = Held(1)
    held = weakref.ref(value)
    state.set("a", value)
    state.write_committed(state.take_pending(), 1)
    del value
    assert held() is not None  # (cached)
    state.close()
    assert held() is None


def test_the_key_count_leaves_out_the_store_s_own_records(tmp_path: Path) -> None:
    state = RocksState(tmp_path / "db", StoreSpec("s"))
    state.write_committed([], 0)
    state.record_topic_id("abc")
    assert state.key_count is None  # (no pass yet)
    state.count_keys(100)
    assert state.key_count == 0  # the offset, its time and the topic's id are the store's own
    state.set("a", 1)
    state.write_committed(state.take_pending(), 1)
    state.close()
    again = RocksState(tmp_path / "db", StoreSpec("s"))
    again.count_keys(100)
    assert again.key_count == 1
    again.close()


def test_a_seal_waits_for_the_previous_one_and_discard_forgets_it(tmp_path: Path) -> None:
    state = RocksState(tmp_path / "db", StoreSpec("s"))
    state.set("a", 1)
    state.seal()
    state.set("b", 2)
    with pytest.raises(RuntimeError, match="previous seal"):
        state.seal()
    state.discard_pending()
    assert state.sealed_count == 0
    assert state.encode_sealed() == []
    state.close()


def test_chunks_without_an_offset_leave_the_recorded_changelog_offset_alone(tmp_path: Path) -> None:
    state = RocksState(tmp_path / "db", StoreSpec("s"))
    state.write_committed([(b"a", msgspec.msgpack.encode(1))], 5)
    state.write_committed([(b"b", msgspec.msgpack.encode(2))], None, final=False)
    assert state.changelog_offset() == 5
    state.write_committed([(b"c", msgspec.msgpack.encode(3))], 8)
    assert state.changelog_offset() == 8
    assert [state.get(k) for k in "abc"] == [1, 2, 3]
    state.close()


def test_items_include_writes_on_their_way_to_rocksdb(tmp_path: Path) -> None:
    state = RocksState(tmp_path / "db", StoreSpec("s"))
    state.set("w:a", 1)
    state.write_committed(state.take_pending(), 1)
    state.set("w:b", 2)
    taken = state.take_pending()  # sent to the changelog, not acknowledged yet
    state.set("w:c", 3)
    state.seal()  # set aside for the next checkpoint, not even encoded yet
    assert list(state.items("w:")) == [("w:a", 1), ("w:b", 2), ("w:c", 3)]
    state.write_committed(taken, 2)
    state.write_committed(state.encode_sealed(), 3)
    assert list(state.items("w:")) == [("w:a", 1), ("w:b", 2), ("w:c", 3)]
    state.close()


class _CountingDb:
    """RocksDB with its point reads counted."""

    def __init__(self, db: object) -> None:
        self._db = db
        self.gets = 0

    def get(self, key: bytes) -> object:
        self.gets += 1
        return self._db.get(key)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)


def test_a_miss_is_remembered_until_the_key_is_written(tmp_path: Path) -> None:
    state = RocksState(tmp_path / "db", StoreSpec("s", 1))
    db = _CountingDb(state._db)
    state._db = db  # type: ignore[assignment]
    assert state.get("never") is None
    assert state.get("never", 7) == 7
    assert "never" not in state
    assert db.gets == 1  # asked RocksDB once
    assert list(state.items()) == []
    assert state.take_pending() == []  # a remembered miss is not a write
    state.set("never", 1)
    assert state.get("never") == 1
    state.write_committed(state.take_pending(), 1)
    assert list(state.items()) == [("never", 1)]
    state.delete("never")
    state.write_committed(state.take_pending(), 2)
    assert state.get("never") is None
    state.close()


def _table_property(state: RocksState, name: str) -> int:
    """One number of ``rocksdb.aggregated-table-properties`` (``name=value; ...``)."""
    text = state._db.property_value("rocksdb.aggregated-table-properties") or ""
    fields = dict(part.strip().split("=", 1) for part in text.split(";") if "=" in part)
    return int(fields[name])


def test_table_files_carry_a_bloom_filter_for_misses(tmp_path: Path) -> None:
    # Rules ask for many keys never written; the filter lets a miss skip the table files.
    state = RocksState(tmp_path / "db", StoreSpec("s", 1))
    value = msgspec.msgpack.encode("v")
    state.write_committed([(f"k{i}".encode(), value) for i in range(500)], 1)
    state.close()  # flushes the memtable to a table file
    again = RocksState(tmp_path / "db", StoreSpec("s", 1))
    assert _table_property(again, "# entries for filter") >= 500
    assert again.get("k7") == "v"
    assert again.get("never-written") is None
    again.close()


def test_a_key_deleted_set_and_deleted_again_in_queued_checkpoints_stays_deleted(tmp_path: Path) -> None:
    # At-least-once checkpoints can queue up behind Kafka's acknowledgements and reach RocksDB
    # oldest first.  Writing the first (a deletion) must not let a read find the second's value.
    state = RocksState(tmp_path / "db", SPEC)
    state.set("k", [0])
    state.seal()
    state.write_committed(state.encode_sealed(), 1)
    queued = []
    for change in (lambda: state.delete("k"), lambda: state.set("k", [1]), lambda: state.delete("k")):
        change()
        state.seal()
        queued.append(state.encode_sealed())
    state.write_committed(queued[0], 2)  # the deletion
    state.write_committed(queued[1], 3)  # the value in between
    assert state.get("k") is None
    state.write_committed(queued[2], 4)
    assert state.get("k") is None
    assert dict(state.items()) == {}
    state.close()


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_reads_match_a_plain_dict_through_queued_checkpoints_and_restarts(
    tmp_path_factory: Any, data: Any
) -> None:
    # Random sets, deletes and reads of a few keys, checkpoints sealed and encoded in pieces,
    # several queued before RocksDB gets them (in order, in chunks), and restarts once
    # everything is written: every read must be what a dict says.
    path = tmp_path_factory.mktemp("db") / "db"
    # A cache limit of 0 to 3 values: what the cache forgets must be what RocksDB has.
    limit = patch("vigil.stream.state.CACHE_LIMIT", data.draw(st.integers(0, 3)))
    limit.start()
    try:
        _reads_match_a_dict(path, data)
    finally:
        limit.stop()


def _reads_match_a_dict(path: Path, data: Any) -> None:
    state = RocksState(path, SPEC)
    model: dict[str, list[int]] = {}
    keys = ["a", "b", "c"]
    sealing: list[tuple[bytes, bytes | None]] | None = None
    queued: list[list[tuple[bytes, bytes | None]]] = []
    offset = 0
    for _ in range(data.draw(st.integers(20, 120))):
        op = data.draw(
            st.sampled_from(["set", "delete", "get", "items", "seal", "encode", "write", "restart"])
        )
        key = data.draw(st.sampled_from(keys))
        if op == "set":
            value = [data.draw(st.integers(0, 9))]
            state.set(key, value)
            model[key] = value
        elif op == "delete":
            state.delete(key)
            model.pop(key, None)
        elif op == "get":
            assert state.get(key) == model.get(key)
        elif op == "items":
            assert dict(state.items()) == model
        elif op == "seal" and sealing is None:
            state.seal()
            sealing = []
        elif op == "encode" and sealing is not None:
            sealing.extend(state.encode_sealed(data.draw(st.integers(0, 2))))
            if state.sealed_count == 0:
                queued.append(sealing)
                sealing = None
        elif op == "write" and queued:
            writes = queued.pop(0)
            offset += 1
            cut = data.draw(st.integers(0, len(writes)))
            if cut:
                state.write_committed(writes[:cut], None, final=False)
            state.write_committed(writes[cut:], offset)
        elif op == "restart" and sealing is None and not queued and not state.pending_count:
            state.close()
            state = RocksState(path, SPEC)
            assert dict(state.items()) == model
    state.close()


def test_walk_resumes_through_rocksdb_with_the_cache_s_newer_values(tmp_path: Path) -> None:
    state = RocksState(tmp_path / "db", StoreSpec("s"))
    for i in range(10):
        state.set(f"w:{i}", i)
    state.set("x:other", 0)
    state.write_committed(state.take_pending(), 1)
    state.set("w:3", "changed")
    state.delete("w:5")
    state.set("w:99", "only in the cache")  # first written since the checkpoint: may be left out

    def walk_all(limit: int) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        after = None
        while True:
            step = state.walk("w:", after, limit)
            out += step
            if len(step) < limit:
                return out
            after = step[-1][0]

    expected = [(f"w:{i}", "changed" if i == 3 else i) for i in range(10) if i != 5]
    for limit in (1, 3, 4, 100):
        assert walk_all(limit) == expected
    assert state.walk("w:", "w:8", 5) == [("w:9", 9)]
    assert state.walk("", None, 100)[-1] == ("x:other", 0)
    # Once RocksDB has it, the walk finds it.
    state.write_committed(state.take_pending(), 2)
    assert ("w:99", "only in the cache") in walk_all(4)
    state.close()


def test_in_memory_walk_resumes_in_key_order_and_finds_later_keys_on_the_next_walk() -> None:
    from vigil.testing import MemoryState

    state = MemoryState()
    for i in (5, 1, 9, 3, 7, 0, 8, 2, 6, 4):
        state.set(f"w:{i}", i)
    state.set("x:other", 0)
    first = state.walk("w:", None, 3)
    assert first == [("w:0", 0), ("w:1", 1), ("w:2", 2)]
    state.delete("w:4")
    state.set("w:3", "changed")
    state.set("w:35", "first written during the walk")  # may be left out of this walk
    rest: list[tuple[str, object]] = []
    after = first[-1][0]
    while step := state.walk("w:", after, 3):
        rest += step
        if len(step) < 3:
            break
        after = step[-1][0]
    assert [entry for entry in rest if entry[0] != "w:35"] == [
        ("w:3", "changed"),
        *[(f"w:{i}", i) for i in (5, 6, 7, 8, 9)],
    ]
    assert ("w:35", "first written during the walk") in state.walk("w:", None, 100)


def test_a_store_mostly_read_keeps_its_cache_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every read, a miss too, stays in the cache; it was cut back only when a checkpoint wrote
    # RocksDB, so a store that looks keys up and seldom writes grew without bound.
    monkeypatch.setattr("vigil.stream.state.CACHE_LIMIT", 3)
    state = RocksState(tmp_path / "db", StoreSpec("s"))
    state.write_committed([(b"kept", msgspec.msgpack.encode(1))], 1)
    for i in range(50):
        assert state.get(f"never-{i}") is None
    assert state.get("kept") == 1
    assert len(state._cache) <= 3  # (what the cache holds is not part of the State API)
    # Pending writes are never dropped: the cache is where they are until a checkpoint.
    state.set("pending", 2)
    taken = state.take_pending()
    for i in range(50):
        state.get(f"again-{i}")
    assert state.get("pending") == 2
    state.write_committed(taken, 2)
    assert state.get("pending") == 2
    state.close()


def test_operator_keys_cannot_overwrite_the_runtimes_own(tmp_path: Path) -> None:
    # The changelog offset lived under "\x00vigil:changelog-offset", a text key like any other:
    # an operator keyed by an attacker's entity id could write it, and after a checkpoint chunk
    # without an offset every restore failed ("invalid literal for int()").
    names = ["\x00vigil:changelog-offset", "\x00vigil:changelog-written-at"]
    state = RocksState(tmp_path / "db", StoreSpec("s"))
    state.write_committed([(b"a", msgspec.msgpack.encode(1))], 4)
    for name in names:
        state.set(name, 5)
    state.write_committed(state.take_pending(), None, final=False)
    state.close()
    state = RocksState(tmp_path / "db", StoreSpec("s"))
    assert state.changelog_offset() == 4
    assert state.changelog_written_at() is not None
    assert dict(state.items()) == {"a": 1, names[0]: 5, names[1]: 5}
    state.close()


def test_a_key_that_is_not_utf8_is_refused_when_written_naming_it_as_in_memory_state_does(
    tmp_path: Path,
) -> None:
    # Taken, it was kept until the checkpoint, whose changelog record could not be made: the
    # application stopped there, away from the operator that wrote it (a join's custom key).
    state = RocksState(tmp_path / "db", SPEC)
    memory = MemoryState()
    try:
        said = re.escape(r"state key 'c\ud800' has a lone surrogate at character 1 ('\ud800')")
        for store in (state, memory):
            with pytest.raises(ValueError, match=said):
                store.set("c\ud800", 1)
            with pytest.raises(ValueError, match=said):
                store.delete("c\ud800")
            store.set("c\u00e9\U0001f600", 2)  # (beyond ASCII, and beyond 16 bits: UTF-8 text)
        with pytest.raises(ValueError, match=said):  # (in memory, only its type is checked)
            state.get("c\ud800")
        assert state.take_pending() == [("c\u00e9\U0001f600".encode(), msgspec.msgpack.encode(2))]
        assert memory.data == {"c\u00e9\U0001f600": 2}
    finally:
        state.close()


def test_a_store_written_by_an_earlier_version_keeps_its_changelog_offset(tmp_path: Path) -> None:
    db = Rdict(str(tmp_path / "db"), options=Options(raw_mode=True))
    db[b"\x00vigil:changelog-offset"] = b"42"
    db[b"\x00vigil:changelog-written-at"] = b"1700000000.5"
    db[b"a"] = msgspec.msgpack.encode(1)
    db.close()
    state = RocksState(tmp_path / "db", StoreSpec("s"))
    assert state.changelog_offset() == 42
    assert state.changelog_written_at() == 1700000000.5
    assert dict(state.items()) == {"a": 1}  # moved, not left behind as keys
    state.close()
    state = RocksState(tmp_path / "db", StoreSpec("s"))
    assert state.changelog_offset() == 42
    state.close()


def test_reads_past_the_cache_limit_with_that_many_writes_pending_do_not_rebuild_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pending writes stay in the cache whatever its size: with the limit's worth of them, every
    # read miss rebuilt a cache it could not shrink (105 ms a miss at 200,000 pending writes).
    monkeypatch.setattr("vigil.stream.state.CACHE_LIMIT", 10)
    state = RocksState(tmp_path / "db", StoreSpec("s"))
    for i in range(10):
        state.set(f"w{i}", i)
    cache = state._cache
    for i in range(3):
        assert state.get(f"missing-{i}") is None
    assert state._cache is cache  # not rebuilt: nothing it could drop
    for i in range(10):
        assert state.get(f"missing-more-{i}") is None
    assert state._cache is not cache  # rebuilt once half the limit could go
    assert [state.get(f"w{i}") for i in range(10)] == list(range(10))
    state.close()


class _CountV1(msgspec.Struct):
    count: int


class _CountV2(msgspec.Struct):
    count: int
    first_seen: float  # (added in a later release, the store's version not bumped)


def test_a_stored_value_that_no_longer_decodes_names_the_store_the_key_and_the_way_out(
    tmp_path: Path,
) -> None:
    # The bare decode error ("Object missing required field `first_seen`") named neither store
    # nor key, and the application stopped on it at every restart.
    path = tmp_path / "velocity" / "0"
    state = RocksState(path, StoreSpec("velocity", 1, value_type=_CountV1))
    state.set("cust-1", _CountV1(3))
    state.write_committed(state.take_pending(), 1)
    state.close()
    state = RocksState(path, StoreSpec("velocity", 1, value_type=_CountV2))
    try:
        expected = (
            rf"state {re.escape(str(path))}: the stored value of key 'cust-1' does not decode to '_CountV2'"
        )
        with pytest.raises(PipelineError, match=expected) as raised:
            state.get("cust-1")
        assert "first_seen" in str(raised.value)
        assert "bump StoreSpec.version" in str(raised.value)
        with pytest.raises(PipelineError, match=expected):
            list(state.items())
    finally:
        state.close()


def _checkpoint(state: RocksState, offset: int) -> None:
    state.write_committed(state.take_pending(), offset)


def test_the_key_count_is_the_keys_held_however_often_they_are_written(tmp_path: Path) -> None:
    # RocksDB's estimate counts every write still in its memtable: five keys written at each of
    # 300 checkpoints read 1,500 and more (a review scraped 1,700 after a minute).
    state = RocksState(tmp_path / "s", StoreSpec("counts", 1))
    for offset in range(300):
        for k in range(5):
            state.set(f"c{k}", offset)
        _checkpoint(state, offset)
    assert int(state._db.property_int_value("rocksdb.estimate-num-keys") or 0) > 1_000  # (the cause)
    assert state.count_keys(1_000) == 5
    assert state.key_count == 5
    state.delete("c0")
    _checkpoint(state, 300)
    state.count_keys(1_000)
    assert state.key_count == 4
    state.close()


def test_a_large_store_is_counted_over_several_passes_whatever_its_deletes(tmp_path: Path) -> None:
    # RocksDB's estimate takes two off for every deletion, of a key it never had too: keys set and
    # deleted within one checkpoint (a join's waiting events) took a 300,000-key store to 4.
    state = RocksState(tmp_path / "s", StoreSpec("join", 1))
    for k in range(30_000):
        state.set(f"live{k:06d}", k)
    _checkpoint(state, 0)
    state._db.flush()
    for k in range(30_000):
        state.set(f"w{k}", 1)
        state.delete(f"w{k}")
    _checkpoint(state, 1)
    assert int(state._db.property_int_value("rocksdb.estimate-num-keys") or 0) < 1_000  # (the cause)
    # A share of 10,000 keys a round: the pass ends in the third.
    assert [state.count_keys(10_000) for _ in range(2)] == [10_000, 10_000]
    assert state.key_count is None
    assert state.count_keys(10_000) == 10_000
    assert state.key_count == 30_000
    # The next pass starts over, and says what the store holds then.
    for k in range(100):
        state.delete(f"live{k:06d}")
    _checkpoint(state, 2)
    assert sum(state.count_keys(25_000) for _ in range(2)) == 29_900
    assert state.key_count == 29_900
    state.close()
