"""The changelog restorer against a real broker: a step's time budget with large values."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from tests.integration.stream.apps import payments, read_all
from tests.integration.stream.conftest import Running, make_topics, produce, wait_for

from vigil.config import Settings
from vigil.errors import PipelineError
from vigil.hub.admin import ensure_topics
from vigil.hub.client import make_admin, producer_config
from vigil.stream.app import Application
from vigil.stream.base import Context, Guarantee, Operator, Record, StoreSpec
from vigil.stream.changelog import Restorer, RestoreTask, changelog_spec, restore
from vigil.stream.state import RocksState

CHUNKS = StoreSpec("chunks", 1)
#: 48 records of 256 KB: a restore chunk (4 MB) is 16 of them.
RECORDS, VALUE_BYTES, PER_CHUNK = 48, 256 * 1024, 16


def big_changelog(settings: Settings, app: str) -> tuple[str, dict[str, bytes]]:
    """A changelog partition of ``RECORDS`` large values (keys written twice end with the later
    value); returns its topic and the values a restore must end with."""
    spec = changelog_spec(app, CHUNKS.id, 1)
    ensure_topics(settings, [spec])
    producer = Producer(producer_config(settings))
    final: dict[str, bytes] = {}
    for i in range(RECORDS):
        key = f"c:{i % 40}"  # the last 8 overwrite the first 8
        value = bytes([i]) * VALUE_BYTES
        producer.produce(spec.name, msgspec.msgpack.encode(value), key.encode(), partition=0)
        final[key] = value
    assert producer.flush(30) == 0
    return spec.name, final


@pytest.fixture
def big_restore(
    settings: Settings, tmp_path: Path, names: Callable[[str], str]
) -> Iterator[tuple[str, dict[str, bytes], RocksState, Restorer]]:
    """A changelog of large values, an empty store and a restorer, closed afterwards."""
    topic, final = big_changelog(settings, names("app"))
    state = RocksState(tmp_path / "store", CHUNKS)
    restorer = Restorer(settings, "restorer-test")
    try:
        yield topic, final, state, restorer
    finally:
        restorer.close()
        state.close()


def test_a_step_out_of_time_leaves_what_it_read_to_the_next(
    big_restore: tuple[str, dict[str, bytes], RocksState, Restorer],
) -> None:
    # Large values make a few records a long write: a step stops at the end of the chunk that
    # takes it past its budget (before, it applied everything it read, whatever the time), and
    # the next step goes on with what was read, reading nothing new until that is done.
    topic, final, state, restorer = big_restore
    assert restorer.add([RestoreTask(state, topic, 0)])
    # Waits until all of them are read (or 30 s), then applies one chunk of them.
    finished = restorer.step(RECORDS, 30, budget_s=0)
    assert restorer.applied == PER_CHUNK
    assert state.changelog_offset() == PER_CHUNK  # what was applied is durable with its offset
    steps = [restorer.applied]
    while not finished:
        finished = restorer.step(RECORDS, 1, budget_s=0)
        steps.append(restorer.applied)
    assert [b - a for a, b in zip([0, *steps], steps, strict=False) if b > a] == [PER_CHUNK] * 3
    assert restorer.applied == RECORDS
    assert state.changelog_offset() == RECORDS
    assert {key: state.get(key) for key in final} == final


def test_records_read_for_a_store_given_up_are_dropped_with_it(
    big_restore: tuple[str, dict[str, bytes], RocksState, Restorer],
) -> None:
    # A partition revoked mid-restore keeps what was applied, with its offset; what was read and
    # not applied is dropped (applying it would lengthen the rebalance callback), and the next
    # restore of the store reads it again from that offset, applying each record once.
    topic, final, state, restorer = big_restore
    restorer.add([RestoreTask(state, topic, 0)])
    restorer.step(RECORDS, 30, budget_s=0)
    restorer.remove([state])
    assert not restorer.busy
    assert state.changelog_offset() == PER_CHUNK
    assert restorer.add([RestoreTask(state, topic, 0)])
    while restorer.busy:
        restorer.step(RECORDS, 1)
    assert restorer.applied == RECORDS  # the dropped records are not applied twice
    assert {key: state.get(key) for key in final} == final


class BigState(Operator[Any]):
    """Keeps, per record, one state value of ``BIG`` bytes (a window of many long strings)."""

    id = "big-state"
    stores = (StoreSpec("big", 1),)

    def process(self, batch: Sequence[Record[Any]], ctx: Context) -> None:
        state = ctx.state(self.stores[0])
        for rec in batch:
            # Random (incompressible: compression would hide the size from the broker).
            noise = random.Random(rec.event.event_id).randbytes(BIG // 2).hex()
            state.set("k", rec.event.event_id + noise)


BIG = 3 << 20


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_a_state_value_past_the_brokers_default_record_size_is_checkpointed_and_restored(
    settings: Settings,
    tmp_path: Path,
    names: Callable[[str], str],
    run_app: Callable[[Application], Running],
    guarantee: Guarantee,
) -> None:
    # A key's state of 3 MB (past the broker's 1 MB default): refused by the changelog topic,
    # it failed every checkpoint, and the restarted process again on the same input.
    src, name = names("in"), names("app")
    make_topics(settings, src, partitions=1)
    produce(settings, src, payments(3, 1))
    app = Application(settings, name=name, inputs=[src], operators=[BigState()], guarantee=guarantee)
    running = run_app(app)
    wait_for(lambda: bool(running.errors) or app.metrics.processed >= 3, 60, "3 records processed")
    running.stop()
    assert not running.errors
    restored = RocksState(tmp_path / "restored", BigState.stores[0])
    try:
        restore(settings, name, [RestoreTask(restored, changelog_spec(name, "big.v1", 1).name, 0)])
        value = restored.get("k")
        assert len(value) >= BIG
        assert value.startswith(payments(3, 1)[-1].event_id)
    finally:
        restored.close()


class Oversized(Operator[Any]):
    """Emits, per record, an output larger than the broker takes for every fifth record."""

    id = "oversized"
    dead_letter_errors = True

    def __init__(self, output: str) -> None:
        self.output = output

    def process(self, batch: Sequence[Record[Any]], ctx: Context) -> None:
        for rec in batch:
            big = rec.offset % 5 == 0
            event_id = rec.event.event_id + ("x" * 2_000_000 if big else "")
            ctx.emit(self.output, msgspec.structs.replace(rec.event, event_id=event_id))


def test_an_output_too_large_is_dead_lettered_not_a_failed_checkpoint(
    settings: Settings, names: Callable[[str], str], run_app: Callable[[Application], Running]
) -> None:
    # The producers take changelog records up to 16 MB; an output past the broker's 1 MB is still
    # refused at once, so the operator's dead-letter policy catches it (from the broker, it failed
    # the checkpoint, and the restarted process again).
    src, out, name = names("in"), names("out"), names("app")
    make_topics(settings, src, out, partitions=1)
    produce(settings, src, payments(10, 1))
    app = Application(settings, name=name, inputs=[src], operators=[Oversized(out)])
    running = run_app(app)
    wait_for(lambda: bool(running.errors) or app.metrics.processed >= 10, 60, "10 records processed")
    running.stop()
    assert not running.errors
    assert len(read_all(settings, out, 1)) == 8
    letters = [msgspec.json.decode(v) for _, v in read_all(settings, app.dlq_topic, 1)]
    assert len(letters) == 2
    assert all("at most 1,000,000" in letter["reason"] for letter in letters)


def test_a_restore_reads_past_an_open_transaction_once_it_ends(
    settings: Settings, tmp_path: Path, names: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process died mid-checkpoint (its transaction open), and the next owner committed after
    # it.  The end was the last stable offset, which stands at the open transaction: the restore
    # stopped there and left the later commit out (and a store that had it was judged outside
    # the changelog and wiped).  Now it reads to the high watermark, once Kafka ends the open one.
    spec = changelog_spec(names("app"), CHUNKS.id, 1)
    ensure_topics(settings, [spec])
    dead = Producer(producer_config(settings, **{"transactional.id": names("dead")}))
    dead.init_transactions(30)
    dead.begin_transaction()
    dead.produce(spec.name, msgspec.msgpack.encode(b"aborted"), b"c:0", partition=0)
    dead.flush(30)
    owner = Producer(producer_config(settings, **{"transactional.id": names("owner")}))
    owner.init_transactions(30)
    owner.begin_transaction()
    owner.produce(spec.name, msgspec.msgpack.encode(b"kept"), b"c:1", partition=0)
    owner.commit_transaction(30)
    state = RocksState(tmp_path / "store", CHUNKS)
    # Nothing read for stall_s is a stall, but for a transaction holding the end back: waited
    # for (Kafka aborts it after its timeout, up to 15 minutes), up to MAX_OPEN_TXN_S.
    restorer = Restorer(settings, "restorer-test", stall_s=0.2)
    try:
        assert restorer.add([RestoreTask(state, spec.name, 0)])
        waited = time.monotonic() + 1.0
        while time.monotonic() < waited:  # the end of partition (the last stable offset) comes
            assert restorer.step(100, 0.1) == []
        assert restorer.applied == 0  # (the store is not read before its restore ends)
        monkeypatch.setattr("vigil.stream.changelog.MAX_OPEN_TXN_S", 0.5)

        def step_until_it_fails() -> None:
            for _ in range(100):
                restorer.step(100, 0.1)

        with pytest.raises(PipelineError, match=rf"a transaction open there for over 0.5s: {spec.name}\[0\]"):
            step_until_it_fails()
        dead.abort_transaction(30)  # (Kafka would, after the transaction timeout)
        # The reader comes back to the partition after a fetch's wait (up to 500 ms): more than
        # the stall made short above to reach the wait quickly.
        restorer.stall_s = 30
        finished: list[RestoreTask] = []
        deadline = time.monotonic() + 30
        while not finished and time.monotonic() < deadline:
            finished = restorer.step(100, 0.2)
        assert [t.state for t in finished] == [state]
        assert restorer.applied == 1
        assert state.get("c:1") == b"kept"
        assert state.get("c:0") is None
    finally:
        restorer.close()
        state.close()


def _changelog_with(settings: Settings, names: Callable[[str], str], *keys: str) -> str:
    """A changelog topic of one partition holding ``keys`` (each its own value), at offsets 0..."""
    spec = changelog_spec(names("app"), CHUNKS.id, 1)
    ensure_topics(settings, [spec])
    producer = Producer(producer_config(settings))
    for key in keys:
        producer.produce(spec.name, msgspec.msgpack.encode(key), key.encode(), partition=0)
    assert producer.flush(30) == 0
    return spec.name


def _restored(settings: Settings, state: RocksState, topic: str, seconds_away: float) -> list[str]:
    """Restore ``state`` from ``topic`` as if it came back ``seconds_away`` after it was written;
    the keys of a, b, c, z it has then."""
    restorer = Restorer(settings, "restorer-test")
    restorer.clock = lambda: time.time() + seconds_away
    try:
        restorer.add([RestoreTask(state, topic, 0)])
        deadline = time.monotonic() + 30
        while restorer.busy and time.monotonic() < deadline:
            restorer.step(100, 0.2)
        assert not restorer.busy
    finally:
        restorer.close()
    return sorted(k for k in ("a", "b", "c", "z") if state.get(k) is not None)


def test_a_store_away_longer_than_a_short_retention_of_deletions_is_restored_afresh(
    settings: Settings, tmp_path: Path, names: Callable[[str], str]
) -> None:
    # A changelog keeping deletions 10 minutes (the topic's delete.retention.ms, or the broker's):
    # a store away for less than an hour was never checked, and kept keys deleted meanwhile ("z":
    # the store has it, the changelog, compacted, no longer does).
    topic = _changelog_with(settings, names, "a", "b", "c")
    admin = make_admin(settings)
    change = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("delete.retention.ms", "600000", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    for future in admin.incremental_alter_configs([change]).values():
        future.result(30)
    stores = []
    for name in ("soon", "late"):
        state = RocksState(tmp_path / name, CHUNKS)
        state.write_committed([(k.encode(), msgspec.msgpack.encode(k)) for k in ("a", "b", "z")], 2)
        stores.append(state)
    try:
        # (Away 400 s: within the retention less its margin, a quarter of it; the runtime records
        # every minute that its stores are current, so a crash restart is about that old.)
        assert _restored(settings, stores[0], topic, seconds_away=400) == ["a", "b", "c", "z"]
        assert _restored(settings, stores[1], topic, seconds_away=1800) == ["a", "b", "c"]
    finally:
        for state in stores:
            state.close()


def test_a_store_with_writes_but_no_changelog_offset_is_restored_afresh(
    settings: Settings, tmp_path: Path, names: Callable[[str], str]
) -> None:
    # A new store's first checkpoint applies its first chunks with no offset (final=False); the
    # store closed before the last one, it held keys and no offset, and its restore from the start
    # went onto them: "z", deleted since by another owner (its tombstone compacted away), stayed.
    topic = _changelog_with(settings, names, "a", "b")
    state = RocksState(tmp_path / "cut-short", CHUNKS)
    try:
        state.write_committed(
            [(k.encode(), msgspec.msgpack.encode(k)) for k in ("a", "z")], None, final=False
        )
        assert state.changelog_offset() is None
        assert state.holds_data()
        assert _restored(settings, state, topic, seconds_away=0) == ["a", "b"]
        assert state.changelog_offset() == 2
    finally:
        state.close()
    empty = RocksState(tmp_path / "empty", CHUNKS)
    try:
        empty.touch()  # (the store's own records are not data)
        assert not empty.holds_data()
    finally:
        empty.close()


def test_a_store_back_behind_its_changelog_after_a_long_time_away_is_restored_afresh(
    settings: Settings, tmp_path: Path, names: Callable[[str], str]
) -> None:
    # Compaction removes a tombstone delete.retention.ms (a day) after it was written: a store
    # away longer, catching up from its offset, would keep keys deleted meanwhile.  Here "z"
    # stands for such a key: the store has it, the changelog (compacted) no longer does.
    spec = changelog_spec(names("app"), CHUNKS.id, 1)
    ensure_topics(settings, [spec])
    # Written in transactions, as the runtime writes: each commit marker takes an offset a
    # store's recorded offset leaves out, so a store at the end looks behind it.
    producer = Producer(producer_config(settings, **{"transactional.id": names("owner")}))
    producer.init_transactions(30)

    def commit(*keys: str) -> None:
        producer.begin_transaction()
        for key in keys:
            producer.produce(spec.name, msgspec.msgpack.encode(key), key.encode(), partition=0)
        producer.commit_transaction(30)

    commit("a", "b")  # offsets 0, 1 and the marker at 2

    def store(name: str) -> RocksState:
        state = RocksState(tmp_path / name, CHUNKS)
        state.write_committed([(k.encode(), msgspec.msgpack.encode(k)) for k in ("a", "b", "z")], 2)
        return state

    def restored(state: RocksState, days_away: float) -> list[str]:
        return _restored(settings, state, spec.name, days_away * 86_400)

    # Judged by age alone: a store's offset leaves out commit markers, so "behind" cannot be
    # told from offsets (this one is at the end but for the marker).
    current = store("current")
    assert restored(current, days_away=3) == ["a", "b"]
    commit("c")  # offset 3, marker 4
    recent, old, touched = store("recent"), store("old"), store("touched")
    touched.touch(time.time() + 3 * 86_400)  # its owner kept it current (RocksState.touch)
    was = recent.changelog_written_at()
    assert was is not None
    try:
        assert restored(recent, days_away=0.5) == ["a", "b", "c", "z"]  # caught up from offset 2
        # Caught up, it is as of when it was written before (a restore stopped half way would
        # otherwise make an old store look recent).
        assert recent.changelog_written_at() == was
        assert restored(touched, days_away=3) == ["a", "b", "c", "z"]
        assert restored(old, days_away=3) == ["a", "b", "c"]  # from the start
        assert old.changelog_offset() == 4
        written = old.changelog_written_at()
        assert written is not None
        assert written > time.time() + 2 * 86_400  # as of the restore (its clock)
    finally:
        for state in (current, recent, old, touched):
            state.close()


def test_a_store_restored_from_a_changelog_since_made_again_is_restored_afresh(
    settings: Settings, tmp_path: Path, names: Callable[[str], str]
) -> None:
    # The changelog deleted and made again (state reset, a cluster rebuilt), then grown past the
    # store's offset by a member with an empty store: the offsets say nothing, and catching up
    # from the store's offset kept the old topic's keys and skipped the new one's first records.
    spec = changelog_spec(names("app"), CHUNKS.id, 1)
    producer = Producer(producer_config(settings))

    def write(*keys: str) -> None:
        for key in keys:
            producer.produce(spec.name, msgspec.msgpack.encode(key), key.encode(), partition=0)
        assert producer.flush(30) == 0

    ensure_topics(settings, [spec])
    write(*(f"old{i}" for i in range(5)))
    state = RocksState(tmp_path / "store", CHUNKS)
    try:
        assert restore(settings, "restorer-test", [RestoreTask(state, spec.name, 0)]) == 5
        admin = make_admin(settings)
        admin.delete_topics([spec.name])[spec.name].result(30)
        wait_for(lambda: spec.name not in admin.list_topics(timeout=10).topics, 30, "the topic deleted")
        wait_for(lambda: _made(settings, spec), 60, "the topic made again")
        write(*(f"new{i}" for i in range(10)))
        restore(settings, "restorer-test", [RestoreTask(state, spec.name, 0)])
        assert sorted(k for k, _ in state.items()) == sorted(f"new{i}" for i in range(10))
        assert state.changelog_offset() == 10
    finally:
        state.close()


def _made(settings: Settings, spec: Any) -> bool:
    try:
        ensure_topics(settings, [spec])
    except Exception:  # (the broker may still be deleting the old one)
        return False
    return True
