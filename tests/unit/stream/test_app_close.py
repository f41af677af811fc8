"""What a partition given up leaves behind: nothing a young collection cannot free (the runtime
collects young objects alone between its rare full collections, see vigil.stream.collector)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from vigil.config import load_settings
from vigil.events.types import Login
from vigil.stream.app import Application, _KafkaContext, _PartitionTask
from vigil.stream.base import Context, Operator, Record, StoreSpec
from vigil.stream.state import RocksState

STORE = StoreSpec("kept", 1)


class Cached:
    """A state value that can be watched through a weak reference."""


class Keeps(Operator[Any]):
    id = "keeps.v1"
    stores = (STORE,)

    def __init__(self, dead_letter: bool) -> None:
        self.dead_letter_errors = dead_letter

    def process(self, batch: Sequence[Record[Any]], ctx: Context) -> None:
        for rec in batch:
            ctx.state(STORE).set(rec.event.event_id, Cached())


@pytest.mark.parametrize("dead_letter", [False, True], ids=["plain", "dead-letter policy"])
def test_a_closed_partitions_state_goes_with_a_young_collection(tmp_path: Path, dead_letter: bool) -> None:
    # A dead-letter operator's context and its attempt referred to each other: the closed
    # partition's task, stores and their caches stayed until a full collection (minutes).
    op = Keeps(dead_letter)
    app = Application(
        load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path), name="a", inputs=["in"], operators=[op]
    )
    task = _PartitionTask(0)
    task.stores[STORE.id] = RocksState(tmp_path / "db", STORE)
    task.contexts.append((op, _KafkaContext(app, task, op)))
    app._tasks[0] = task
    event = Login(event_id="e", source="t", occurred_at=datetime(2026, 1, 1, tzinfo=UTC))
    app._call_operators({0: [Record(event, "in", 0, 0, None, 0)]})
    cached = weakref.ref(task.stores[STORE.id].get("e"))
    del task
    gc.collect()
    gc.disable()
    gc.freeze()  # as the runtime's collector leaves what survived: out of young collections' reach
    try:
        app._close_task(0)  # what a revocation does
        gc.collect(0)
        assert cached() is None, "the closed partition's state is still referred to"
    finally:
        gc.unfreeze()
        gc.enable()
