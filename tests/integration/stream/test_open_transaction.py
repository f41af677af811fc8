"""Readers of what was committed, with a transaction still open at the end of the partition.

Read ``read_committed``, a fetch stops at the last stable offset (where the open transaction
begins), and librdkafka then reports the consumer's position at the high watermark, before any
of the open transaction's records came.  A reader judging "caught up" by that position missed
the transaction once it committed: the previous owner's last checkpoint, committed a moment
before its markers were written, was left out of a restored store for good.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Producer

from vigil.config import Settings
from vigil.errors import PipelineError
from vigil.hub.admin import ensure_topics
from vigil.hub.client import producer_config
from vigil.hub.topics import TopicSpec
from vigil.stream.base import StoreSpec
from vigil.stream.changelog import Restorer, RestoreTask, changelog_spec
from vigil.stream.state import RocksState
from vigil.stream.table import GlobalTable

STORE = StoreSpec("open-txn", 1)


def _transactional(settings: Settings, txn_id: str) -> Producer:
    producer = Producer(producer_config(settings, **{"transactional.id": txn_id}))
    producer.init_transactions(30)
    return producer


def test_a_restore_does_not_end_before_a_transaction_open_at_the_end_commits(
    settings: Settings, tmp_path: Path, names: Callable[[str], str]
) -> None:
    spec = changelog_spec(names("app"), STORE.id, 1)
    ensure_topics(settings, [spec])
    owner = _transactional(settings, names("owner"))
    owner.begin_transaction()
    owner.produce(spec.name, msgspec.msgpack.encode(1), b"a", partition=0)
    owner.commit_transaction(30)
    # The previous owner's last checkpoint: sent, its commit not visible yet.
    owner.begin_transaction()
    owner.produce(spec.name, msgspec.msgpack.encode(2), b"b", partition=0)
    assert owner.flush(30) == 0
    state = RocksState(tmp_path / "store", STORE)
    restorer = Restorer(settings, "open-txn-test")
    try:
        assert restorer.add([RestoreTask(state, spec.name, 0)])
        # Three seconds of steps read what there is (the committed record, then, after a fetch's
        # wait, the end of partition at the open transaction); the restore must still go on.
        until = time.monotonic() + 3.0
        while time.monotonic() < until:
            assert restorer.step(100, 0.1) == []
        owner.commit_transaction(30)
        finished: list[RestoreTask] = []
        deadline = time.monotonic() + 30
        while not finished and time.monotonic() < deadline:
            finished = restorer.step(100, 0.2)
        assert [t.state for t in finished] == [state]
        assert (state.get("a"), state.get("b")) == (1, 2)
        assert state.changelog_offset() == 3  # next to read: past b (at 2, after a and its commit marker)
    finally:
        restorer.close()
        state.close()


def _compacted_topic(settings: Settings, topic: str) -> None:
    ensure_topics(
        settings,
        [TopicSpec(topic, "profile", "raw", "test", partitions=1, retention=None, cleanup="compact")],
    )


def _left_open(writer: Producer, topic: str, value: bytes, key: bytes) -> None:
    """``writer`` sends ``key``: ``value`` in a transaction it leaves open."""
    writer.begin_transaction()
    writer.produce(topic, value, key, partition=0)
    assert writer.flush(30) == 0


def test_a_global_table_is_not_ready_before_a_transaction_open_at_the_end_commits(
    settings: Settings, names: Callable[[str], str]
) -> None:
    topic = names("profiles")
    _compacted_topic(settings, topic)
    writer = _transactional(settings, names("writer"))
    writer.begin_transaction()
    writer.produce(topic, b"gold", b"c1", partition=0)
    writer.commit_transaction(30)
    _left_open(writer, topic, b"silver", b"c2")
    table: GlobalTable[str] = GlobalTable(settings, topic, bytes.decode)
    try:
        with pytest.raises(PipelineError, match="did not catch up"):
            table.start(timeout_s=2.0)
        assert table.get("c1") == "gold"  # read: the reader stands at the open transaction
        writer.commit_transaction(30)
        table.start(timeout_s=30)
        assert table.ready
        assert table.get("c2") == "silver"
    finally:
        table.stop()


def test_a_global_table_still_loading_returns_when_asked_to_stop(
    settings: Settings, names: Callable[[str], str]
) -> None:
    # A SIGTERM while detection loaded its intel waited for the whole list (up to the minute's
    # timeout): a supervisor's grace period ran out first.  Here the table cannot catch up (a
    # transaction open at the end): asked to stop, start returns at once, not ready, no error.
    topic = names("intel")
    _compacted_topic(settings, topic)
    writer = _transactional(settings, names("writer"))
    _left_open(writer, topic, b"listed", b"k1")
    table: GlobalTable[str] = GlobalTable(settings, topic, bytes.decode)
    asked = 0

    def abort() -> bool:
        nonlocal asked
        asked += 1
        return asked >= 3

    try:
        table.start(timeout_s=600, abort=abort)
        assert asked == 3
        assert not table.ready
        table.check()  # stopped waiting is no failure
    finally:
        table.stop()
        writer.abort_transaction(30)
